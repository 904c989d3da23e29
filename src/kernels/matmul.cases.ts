// Conformance cases for matmul: 1-element and odd sizes (scalar loads, partial tiles, K tails),
// 4-aligned sizes (the vec4 paths), every transA/transB combination, batches with and without a
// broadcast b, bias with each activation, operands at element offsets (aligned and not), one
// 256^3 case, and bf16 operands (with f32 ones or alone) over the same paths.
import type { Activation } from '../device/device.ts';
import type { InputSpec, OpCase } from '../device/conformance.ts';
import type { DType } from '../tensor/dtype.ts';
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
  /** Dtypes of a, b and bias (default: the tested dtype, f32). */
  dtypes?: [DType, DType, DType?];
  /** Standard deviation of the inputs (default 1). */
  scale?: number;
}

function operand(shape: number[], offset: number | undefined, scale: number, dtype: DType | undefined): InputSpec {
  const spec: InputSpec = { shape, init: { kind: 'normal', scale }, ...(dtype && { dtype }) };
  if (!offset) return spec;
  return { ...spec, strided: { strides: contiguousStrides(shape), offset, storage: numel(shape) + offset } };
}

export function matmulCase(c: MatmulCase): OpCase {
  const batch = c.batch ?? 1, bBatch = c.bBatch ?? batch, scale = c.scale ?? 1;
  const [oa, ob, obias] = c.offsets ?? [0, 0, 0];
  const [da, db, dbias] = c.dtypes ?? [];
  const aShape = c.transA ? [batch, c.k, c.m] : [batch, c.m, c.k];
  const bShape = c.transB ? [bBatch, c.n, c.k] : [bBatch, c.k, c.n];
  const tags = [c.transA && 'transA', c.transB && 'transB', c.bias && 'bias', c.act && c.act !== 'none' && c.act, c.offsets && `offsets ${c.offsets.join(',')}`, c.dtypes && `dtypes ${c.dtypes.join(',')}`];
  return {
    op: 'matmul',
    name: `matmul [${aShape}]x[${bShape}] ${tags.filter(Boolean).join(' ')}`.trim(),
    inputs: [operand(aShape, oa, scale, da), operand(bShape, ob, scale, db), ...(c.bias ? [operand([c.n], obias, scale, dbias)] : [])],
    outputs: [{ shape: [batch, c.m, c.n] }],
    run: (dev, [a, b, bias], [out]) => dev.matmul(a!, b!, out!, { transA: c.transA, transB: c.transB, bias: bias ?? null, act: c.act }),
  };
}

const TRANSPOSES = [[false, false], [false, true], [true, false], [true, true]] as const;
const BF16: [DType, DType, DType] = ['bf16', 'bf16', 'bf16'];

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
  // bf16 weights as FLUX's Linear reads them (a [M,K] x b [N,K]^T + bias), and b not transposed.
  matmulCase({ batch: 2, m: 20, n: 24, k: 36, transB: true, bias: true, dtypes: ['f32', 'bf16', 'f32'] }),
  matmulCase({ m: 13, n: 29, k: 37, transB: true, bias: true, act: 'gelu_tanh', dtypes: ['f32', 'bf16', 'bf16'] }),
  matmulCase({ m: 7, n: 9, k: 13, dtypes: ['f32', 'bf16'] }),
  // bf16 bias alone, bf16 a alone, and every operand bf16 in each layout (4-aligned: the vec paths).
  matmulCase({ m: 33, n: 40, k: 24, bias: true, act: 'silu', dtypes: ['f32', 'f32', 'bf16'] }),
  matmulCase({ m: 9, n: 7, k: 11, transA: true, dtypes: ['bf16', 'f32'] }),
  ...TRANSPOSES.map(([transA, transB]) => matmulCase({ batch: 2, m: 20, n: 24, k: 36, transA, transB, bias: true, dtypes: BF16 })),
  ...TRANSPOSES.map(([transA, transB]) => matmulCase({ m: 7, n: 9, k: 13, transA, transB, dtypes: BF16 })),
  // Broadcast b, and odd element offsets (words shared with the element before) as well as aligned ones.
  matmulCase({ batch: 3, m: 17, n: 20, k: 24, bBatch: 1, transB: true, dtypes: ['bf16', 'bf16'] }),
  matmulCase({ batch: 2, m: 16, n: 24, k: 32, bBatch: 1, offsets: [3, 5, 1], bias: true, dtypes: BF16 }),
  matmulCase({ batch: 2, m: 16, n: 24, k: 32, transB: true, offsets: [1, 7, 3], bias: true, dtypes: ['f32', 'bf16', 'bf16'] }),
  matmulCase({ batch: 2, m: 16, n: 24, k: 32, transA: true, offsets: [4, 8, 4], bias: true, dtypes: BF16 }),
];
