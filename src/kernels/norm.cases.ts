// Conformance cases for LayerNorm and RMSNorm and their backward ops: tiny, odd and FLUX-sized rows
// (D = 3072 takes the one-row-per-workgroup path, D = 128 many rows per workgroup, D <= 7 a thread
// per row), optional weight/bias (and their gradients, also a weight gradient without a weight),
// strided rows and vectors (for the backward also strided dx, dweight, dbias), inputs with a large
// mean (100, std 1) that a one-pass or unshifted f32 variance gets wrong, and enough rows for the
// backward's column sums to take several chunks in either layout.
import type { InputSpec, OpCase } from '../device/conformance.ts';
import type { View } from '../device/device.ts';
import { contiguousStrides, numel } from '../tensor/shape.ts';

/** Uniform on [100 - sqrt(3), 100 + sqrt(3)): mean 100, standard deviation 1. */
const LARGE_MEAN = { kind: 'uniform', lo: 100 - Math.sqrt(3), hi: 100 + Math.sqrt(3) } as const;

interface NormCase {
  shape: number[];
  weight?: boolean;
  bias?: boolean;
  eps?: number;
  x?: Partial<InputSpec>;
  /** Weight and bias as every other element of a longer vector (and for the backward dx, dweight, dbias strided too). */
  stridedVectors?: boolean;
  /** Backward only: which parameter gradients to form. */
  dweight?: boolean;
  dbias?: boolean;
  note?: string;
}

function vector(c: NormCase): InputSpec {
  const d = c.shape.at(-1)!;
  return c.stridedVectors ? { shape: [d], strided: { strides: [2], offset: 1, storage: 2 * d + 1 } } : { shape: [d] };
}

function layerNorm(c: NormCase): OpCase {
  const eps = c.eps ?? 1e-5;
  const vectors = [...(c.weight ? [vector(c)] : []), ...(c.bias ? [vector(c)] : [])];
  return {
    op: 'layerNorm',
    name: `layerNorm [${c.shape}]${c.weight ? ' weight' : ''}${c.bias ? ' bias' : ''} eps=${eps}${c.note ? ` ${c.note}` : ''}`,
    inputs: [{ shape: c.shape, ...c.x }, ...vectors],
    outputs: [{ shape: c.shape }],
    run: (dev, [x, ...v], [out]) => {
      const weight = c.weight ? v.shift()! : null;
      const bias = c.bias ? v.shift()! : null;
      dev.layerNorm(x!, weight, bias, out!, { eps });
    },
  };
}

function rmsNorm(c: NormCase): OpCase {
  const eps = c.eps ?? 1e-6;
  return {
    op: 'rmsNorm',
    name: `rmsNorm [${c.shape}]${c.weight ? ' weight' : ''} eps=${eps}${c.note ? ` ${c.note}` : ''}`,
    inputs: [{ shape: c.shape, ...c.x }, ...(c.weight ? [vector(c)] : [])],
    outputs: [{ shape: c.shape }],
    run: (dev, [x, weight], [out]) => dev.rmsNorm(x!, weight ?? null, out!, { eps }),
  };
}

/**
 * A backward case's operands: inputs x, weight?, dy; outputs dx, then the wanted vector gradients.
 * With stridedVectors, dy has x's strided layout and the outputs are strided too: they are
 * allocated wider and the elements between stay NaN on both sides (and so must stay unwritten).
 */
function backwardOperands(c: NormCase, grads: boolean[]): Pick<OpCase, 'inputs' | 'outputs'> & { views(outs: View[]): View[] } {
  const d = c.shape.at(-1)!;
  const lead = c.shape.slice(0, -1);
  const wanted = grads.filter(Boolean).length;
  const xSpec: InputSpec = { shape: c.shape, ...c.x };
  const strided = !!c.stridedVectors;
  return {
    inputs: [xSpec, ...(c.weight ? [vector(c)] : []), strided ? { shape: c.shape, strided: xSpec.strided } : { shape: c.shape }],
    outputs: strided
      ? [{ shape: [numel(lead), d + 6] }, ...Array.from({ length: wanted }, () => ({ shape: [2 * d + 1] }))]
      : [{ shape: c.shape }, ...Array.from({ length: wanted }, () => ({ shape: [d] }))],
    // dx rows d + 6 apart from element 2; gradient vectors at the odd elements.
    views: (outs) => (strided
      ? [{ ...outs[0]!, shape: c.shape, strides: contiguousStrides([...lead, d + 6]), offset: 2 },
        ...outs.slice(1).map((o) => ({ ...o, shape: [d], strides: [2], offset: 1 }))]
      : outs),
  };
}

function caseName(op: string, c: NormCase, eps: number, grads: [string, boolean | undefined][]): string {
  const flags = [c.weight && 'weight', ...grads.filter(([, on]) => on).map(([g]) => g), `eps=${eps}`, c.note];
  return `${op} [${c.shape}] ${flags.filter(Boolean).join(' ')}`;
}

function layerNormBackward(c: NormCase): OpCase {
  const eps = c.eps ?? 1e-5;
  const { inputs, outputs, views } = backwardOperands(c, [!!c.dweight, !!c.dbias]);
  return {
    op: 'layerNormBackward',
    name: caseName('layerNormBackward', c, eps, [['dweight', c.dweight], ['dbias', c.dbias]]),
    inputs,
    outputs,
    run: (dev, ins, outs) => {
      const [x, weight, dy] = c.weight ? ins : [ins[0], null, ins[1]];
      const [dx, ...grads] = views(outs);
      dev.layerNormBackward(x!, weight ?? null, dy!, dx!, c.dweight ? grads.shift()! : null, c.dbias ? grads.shift()! : null, { eps });
    },
  };
}

function rmsNormBackward(c: NormCase): OpCase {
  const eps = c.eps ?? 1e-6;
  const { inputs, outputs, views } = backwardOperands(c, [!!c.dweight]);
  return {
    op: 'rmsNormBackward',
    name: caseName('rmsNormBackward', c, eps, [['dweight', c.dweight]]),
    inputs,
    outputs,
    run: (dev, ins, outs) => {
      const [x, weight, dy] = c.weight ? ins : [ins[0], null, ins[1]];
      const [dx, dweight] = views(outs);
      dev.rmsNormBackward(x!, weight ?? null, dy!, dx!, dweight ?? null, { eps });
    },
  };
}

export const cases: OpCase[] = [
  layerNorm({ shape: [1, 1], weight: true, bias: true }),
  layerNorm({ shape: [5, 7], weight: true, bias: true }),
  layerNorm({ shape: [3, 24], weight: true }),
  layerNorm({ shape: [2, 3, 24] }),
  layerNorm({ shape: [9, 24], weight: true, bias: true, x: { init: LARGE_MEAN }, note: 'mean 100' }),
  layerNorm({ shape: [33, 128], weight: true, bias: true, eps: 1e-6 }),
  layerNorm({ shape: [6, 3072], weight: true, bias: true, eps: 1e-6 }),
  layerNorm({ shape: [3, 3072], x: { init: LARGE_MEAN }, note: 'mean 100' }),
  layerNorm({ shape: [2, 1000], weight: true, eps: 0.5, note: 'large eps' }),
  // Rows 30 elements apart starting at element 3 (a slice of a wider tensor).
  layerNorm({ shape: [5, 24], weight: true, bias: true, x: { strided: { strides: [30, 1], offset: 3, storage: 153 } }, stridedVectors: true, note: 'strided rows and vectors' }),
  rmsNorm({ shape: [1, 1], weight: true }),
  rmsNorm({ shape: [5, 7], weight: true }),
  rmsNorm({ shape: [4, 24] }),
  rmsNorm({ shape: [2, 3, 5, 128], weight: true, note: 'FLUX q/k norm shape' }),
  rmsNorm({ shape: [3, 3072], weight: true, x: { init: LARGE_MEAN }, note: 'mean 100' }),
  rmsNorm({ shape: [4, 3072] }),
  rmsNorm({ shape: [5, 24], weight: true, x: { strided: { strides: [30, 1], offset: 3, storage: 153 } }, stridedVectors: true, note: 'strided rows and vector' }),
  layerNormBackward({ shape: [1, 1], weight: true, dweight: true, dbias: true }),
  layerNormBackward({ shape: [5, 7], weight: true, dweight: true, dbias: true }),
  layerNormBackward({ shape: [3, 24], dweight: true, note: 'dweight without a weight' }),
  layerNormBackward({ shape: [2, 3, 24], weight: true, note: 'frozen weight' }),
  layerNormBackward({ shape: [9, 24], weight: true, dweight: true, dbias: true, x: { init: LARGE_MEAN }, note: 'mean 100' }),
  layerNormBackward({ shape: [33, 128], weight: true, dweight: true, dbias: true, eps: 1e-6 }),
  layerNormBackward({ shape: [6, 3072], weight: true, dweight: true, dbias: true, eps: 1e-6 }),
  layerNormBackward({ shape: [3, 3072], dbias: true, x: { init: LARGE_MEAN }, note: 'mean 100' }),
  layerNormBackward({ shape: [1100, 24], weight: true, dweight: true, dbias: true, note: 'many column chunks' }),
  layerNormBackward({ shape: [3, 5, 24], weight: true, dweight: true, dbias: true, x: { strided: { strides: [150, 30, 1], offset: 3, storage: 453 } }, stridedVectors: true, note: 'strided rows and vectors' }),
  layerNormBackward({ shape: [5, 7], weight: true, dweight: true, dbias: true, x: { strided: { strides: [9, 1], offset: 1, storage: 46 } }, stridedVectors: true, note: 'strided, odd' }),
  // D = 1: dx = rstd * g * eps / (x^2 + eps), a cancellation to eps / x^2 that only a large eps leaves measurable in f32.
  rmsNormBackward({ shape: [1, 1], weight: true, dweight: true, eps: 0.5 }),
  rmsNormBackward({ shape: [5, 7], weight: true, dweight: true }),
  rmsNormBackward({ shape: [4, 24] }),
  rmsNormBackward({ shape: [2, 3, 5, 128], weight: true, dweight: true, note: 'FLUX q/k norm shape' }),
  rmsNormBackward({ shape: [3, 3072], weight: true, dweight: true, x: { init: LARGE_MEAN }, note: 'mean 100' }),
  rmsNormBackward({ shape: [4, 3072], dweight: true, note: 'dweight without a weight' }),
  rmsNormBackward({ shape: [700, 128], weight: true, dweight: true, note: 'many column chunks' }),
  rmsNormBackward({ shape: [5, 24], weight: true, dweight: true, x: { strided: { strides: [30, 1], offset: 3, storage: 153 } }, stridedVectors: true, note: 'strided rows and vector' }),
];
