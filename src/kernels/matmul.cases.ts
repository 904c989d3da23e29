// Conformance cases for matmul: 1-element and odd sizes (scalar loads, partial tiles, K tails),
// 4-aligned sizes (the vec4 paths), every transA/transB combination, batches with and without a
// broadcast b, bias with each activation, operands at element offsets (aligned and not), and one
// 256^3 case.
import type { Activation } from '../device/device.ts';
import type { InputSpec, OpCase } from '../device/conformance.ts';
import { contiguousStrides, numel } from '../tensor/shape.ts';

export interface MatmulCase {
  batch?: number;
  m: number;
  n: number;
  k: number;
  /** b's batch: 1 broadcasts it (default: batch). */
  bBatch?: number;
  transA?: boolean;
  transB?: boolean;
  bias?: boolean;
  act?: Activation;
  /** Element offsets of a, b and bias inside their buffers. */
  offsets?: [number, number, number?];
  /** Standard deviation of the inputs (default 1). */
  scale?: number;
}

function operand(shape: number[], offset: number | undefined, scale: number): InputSpec {
  const init = { kind: 'normal', scale } as const;
  if (!offset) return { shape, init };
  return { shape, init, strided: { strides: contiguousStrides(shape), offset, storage: numel(shape) + offset } };
}

export function matmulCase(c: MatmulCase): OpCase {
  const batch = c.batch ?? 1, bBatch = c.bBatch ?? batch, scale = c.scale ?? 1;
  const [oa, ob, obias] = c.offsets ?? [0, 0, 0];
  const aShape = c.transA ? [batch, c.k, c.m] : [batch, c.m, c.k];
  const bShape = c.transB ? [bBatch, c.n, c.k] : [bBatch, c.k, c.n];
  const tags = [c.transA && 'transA', c.transB && 'transB', c.bias && 'bias', c.act && c.act !== 'none' && c.act, c.offsets && `offsets ${c.offsets.join(',')}`];
  return {
    op: 'matmul',
    name: `matmul [${aShape}]x[${bShape}] ${tags.filter(Boolean).join(' ')}`.trim(),
    inputs: [operand(aShape, oa, scale), operand(bShape, ob, scale), ...(c.bias ? [operand([c.n], obias, scale)] : [])],
    outputs: [{ shape: [batch, c.m, c.n] }],
    run: (dev, [a, b, bias], [out]) => dev.matmul(a!, b!, out!, { transA: c.transA, transB: c.transB, bias: bias ?? null, act: c.act }),
  };
}

const TRANSPOSES = [[false, false], [false, true], [true, false], [true, true]] as const;

export const cases: OpCase[] = [
  matmulCase({ m: 1, n: 1, k: 1 }),
  matmulCase({ m: 1, n: 29, k: 37, transB: true, bias: true }),
  matmulCase({ m: 13, n: 11, k: 1 }),
  matmulCase({ m: 3, n: 5, k: 0, bias: true, act: 'silu' }),
  ...TRANSPOSES.map(([transA, transB]) => matmulCase({ m: 7, n: 9, k: 13, transA, transB })),
  ...TRANSPOSES.map(([transA, transB]) => matmulCase({ batch: 2, m: 20, n: 24, k: 36, transA, transB, bias: true })),
  matmulCase({ m: 67, n: 130, k: 33, transB: true, bias: true, act: 'gelu_tanh' }),
  matmulCase({ batch: 3, m: 17, n: 20, k: 24, bBatch: 1 }),
  matmulCase({ batch: 3, m: 16, n: 12, k: 20, bBatch: 1, transA: true, transB: true }),
  matmulCase({ batch: 2, m: 16, n: 24, k: 32, bBatch: 1, offsets: [3, 5, 1], bias: true }),
  matmulCase({ batch: 2, m: 16, n: 24, k: 32, transA: true, offsets: [4, 8, 4], bias: true }),
  // Activations over a wide range of pre-activations (scale 2, K = 24: std ~20) to reach erf's tails.
  ...(['silu', 'gelu_tanh', 'gelu_erf'] as const).map((act) => matmulCase({ m: 33, n: 40, k: 24, bias: true, act, scale: 2 })),
  matmulCase({ m: 45, n: 36, k: 24, transB: true, bias: true, act: 'gelu_erf', scale: 0.2 }),
  matmulCase({ m: 256, n: 256, k: 256, transB: true, bias: true, act: 'silu' }),
];
