// Conformance cases for LayerNorm and RMSNorm: tiny, odd and FLUX-sized rows (D = 3072 takes the
// one-row-per-workgroup path, D = 128 many rows per workgroup, D <= 7 a thread per row), optional
// weight/bias, strided rows and vectors, and inputs with a large mean (100, std 1) that a one-pass
// or unshifted f32 variance gets wrong.
import type { InputSpec, OpCase } from '../device/conformance.ts';

/** Uniform on [100 - sqrt(3), 100 + sqrt(3)): mean 100, standard deviation 1. */
const LARGE_MEAN = { kind: 'uniform', lo: 100 - Math.sqrt(3), hi: 100 + Math.sqrt(3) } as const;

interface NormCase {
  shape: number[];
  weight?: boolean;
  bias?: boolean;
  eps?: number;
  x?: Partial<InputSpec>;
  /** Weight and bias as every other element of a longer vector. */
  stridedVectors?: boolean;
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
];
