// Conformance cases for groupNorm: 1, 2 and 32 groups, odd spatial sizes, groups spanning several
// stats chunks, strided x, optional affine parameters, and inputs whose mean dwarfs their spread.
import type { Init, InputSpec, OpCase } from '../device/conformance.ts';

interface GnSpec {
  shape: [number, number, number];
  groups: number;
  weight?: boolean;
  bias?: boolean;
  eps?: number;
  init?: Init;
  x?: InputSpec['strided'];
  note?: string;
}

function gn(s: GnSpec): OpCase {
  const c = s.shape[1];
  const eps = s.eps ?? 1e-6;
  const inputs: InputSpec[] = [{ shape: s.shape, init: s.init, strided: s.x }];
  if (s.weight) inputs.push({ shape: [c], init: { kind: 'uniform', lo: 0.5, hi: 1.5 } });
  if (s.bias) inputs.push({ shape: [c] });
  return {
    op: 'groupNorm',
    name: `groupNorm [${s.shape}] groups ${s.groups}${s.weight ? ' weight' : ''}${s.bias ? ' bias' : ''}${s.x ? ' x strided' : ''}${s.note ? ` ${s.note}` : ''}`,
    inputs,
    outputs: [{ shape: s.shape }],
    run: (dev, ins, [out]) => {
      const [x, ...rest] = ins;
      const weight = s.weight ? rest.shift()! : null;
      const bias = s.bias ? rest.shift()! : null;
      dev.groupNorm(x!, weight, bias, out!, { groups: s.groups, eps });
    },
  };
}

export const cases: OpCase[] = [
  gn({ shape: [2, 64, 15], groups: 32, weight: true, bias: true }),
  gn({ shape: [1, 64, 63], groups: 1, weight: true, bias: true }),
  gn({ shape: [2, 64, 35], groups: 2 }),
  gn({ shape: [1, 6, 7], groups: 3, weight: true, eps: 1e-5 }),
  gn({ shape: [3, 5, 1], groups: 5, bias: true }),
  gn({ shape: [2, 8, 1], groups: 4, weight: true, bias: true }),
  // x is channels 1, 3, 5, 7 of a [2,8,10] tensor.
  gn({ shape: [2, 4, 10], groups: 2, weight: true, bias: true, x: { strides: [80, 20, 1], offset: 10, storage: 160 } }),
  // The VAE's shape at its smallest resolution, fewer channels: rows span 2 stats chunks.
  gn({ shape: [1, 64, 8100], groups: 32, weight: true, bias: true }),
  gn({ shape: [1, 4, 9001], groups: 1, weight: true, bias: true }),
  // Means that dwarf the spread: sum and sum of squares would cancel to garbage in f32, and even a
  // mean merely rounded to f32 would cost 5e-5 here (half an ulp of 1000 against a spread of 0.6).
  gn({ shape: [2, 32, 300], groups: 8, weight: true, bias: true, init: { kind: 'uniform', lo: 999, hi: 1001 }, note: 'mean 1000' }),
  gn({ shape: [1, 4, 9001], groups: 2, init: { kind: 'uniform', lo: -30001, hi: -29999 }, note: 'mean -30000' }),
];
