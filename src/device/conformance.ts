// The conformance runner: checks every op of a backend against the CPU reference computing in
// float64, on random non-zero inputs, with a per-dtype tolerance (relative L2 error). Outputs are
// poisoned with NaN before each run, so an unwritten element always fails. Used by the tests
// (test/kernels/*.test.ts) and by `flux-grpo verify-device`.
import { DTYPE_BYTES, type DType, hostArrayFor, hostArrayFromBytes, readElement, writeElement } from '../tensor/dtype.ts';
import { contiguousStrides, numel } from '../tensor/shape.ts';
import type { Device, OpName, View } from './device.ts';

/** How an input is filled: standard normal (default), uniform in [lo, hi), or integers in [lo, hi). */
export type Init = { kind: 'normal'; scale?: number } | { kind: 'uniform'; lo: number; hi: number } | { kind: 'int'; lo: number; hi: number };

export interface InputSpec {
  shape: number[];
  /** Defaults to the case's tested float dtype. */
  dtype?: DType;
  init?: Init;
  /**
   * A non-contiguous view of a bigger buffer: `storage` elements are allocated and the op sees
   * `shape` with these strides and offset (e.g. a transposed or sliced operand).
   */
  strided?: { strides: number[]; offset: number; storage: number };
}

export interface OpCase {
  op: OpName;
  /** Short description with the shapes, e.g. "matmul [2,7,12]x[2,12,9] transB bias". */
  name: string;
  inputs: InputSpec[];
  /** Outputs in order (most ops have one; attention may add lse). */
  outputs: { shape: number[]; dtype?: DType }[];
  /** Float dtypes to test the case in (default ['f32']). */
  dtypes?: DType[];
  /** Calls the op: inputs in order, then outputs in order. */
  run(dev: Device, inputs: View[], outputs: View[]): void;
  /** Relative L2 tolerance per tested dtype, overriding DEFAULT_TOL (0 = exact). */
  tol?: Partial<Record<DType, number>>;
}

/** Relative L2 error allowed per tested dtype when a case does not say otherwise. */
export const DEFAULT_TOL: Record<DType, number> = { f64: 1e-12, f32: 1e-5, f16: 2e-3, bf16: 1.5e-2, i32: 0, u32: 0 };

export interface CaseResult {
  op: OpName;
  name: string;
  dtype: DType;
  /** Relative L2 error of each output (Infinity when NaN or unwritten elements were found). */
  errors: number[];
  maxAbsError: number;
  tol: number;
  pass: boolean;
  /** Why it failed beyond the numbers: unsupported op, thrown error, NaN. */
  note?: string;
}

/** Deterministic inputs (xorshift + Box-Muller): the runner must not consume the run's generator. */
function makeInputs(spec: InputSpec, seed: number): Float64Array {
  const n = spec.strided?.storage ?? numel(spec.shape);
  const init = spec.init ?? { kind: 'normal' };
  let s = (seed * 2654435761) >>> 0 || 1;
  const uni = () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    if (init.kind === 'normal') {
      // Never exactly zero: a zero input can hide a kernel that ignores it.
      out[i] = Math.sqrt(-2 * Math.log(uni())) * Math.cos(2 * Math.PI * uni()) * (init.scale ?? 1) || 1e-3;
    } else if (init.kind === 'uniform') out[i] = init.lo + (init.hi - init.lo) * uni();
    else out[i] = init.lo + Math.floor((init.hi - init.lo) * uni());
  }
  return out;
}

function encode(dtype: DType, values: Float64Array): Uint8Array {
  const arr = hostArrayFor(dtype, values.length);
  for (let i = 0; i < values.length; i++) writeElement(dtype, arr, i, values[i]!);
  return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
}

function decode(dtype: DType, bytes: Uint8Array): Float64Array {
  const arr = hostArrayFromBytes(dtype, bytes);
  const out = new Float64Array(arr.length);
  for (let i = 0; i < arr.length; i++) out[i] = readElement(dtype, arr, i);
  return out;
}

function viewOf(dev: Device, dtype: DType, spec: { shape: number[]; strided?: InputSpec['strided'] }, values?: Float64Array): View {
  const n = spec.strided?.storage ?? numel(spec.shape);
  const buf = dev.alloc(Math.max(n, 1) * DTYPE_BYTES[dtype]);
  if (values) dev.write(buf, 0, encode(dtype, values));
  return { buf, dtype, shape: spec.shape, strides: spec.strided?.strides ?? contiguousStrides(spec.shape), offset: spec.strided?.offset ?? 0 };
}

/** Runs one case with inputs of the tested dtype; returns each output in float64 (NaN where unwritten). */
async function execute(dev: Device, c: OpCase, dtype: DType, inputs: Float64Array[], specs: InputSpec[]): Promise<Float64Array[]> {
  const ins = specs.map((s, i) => viewOf(dev, s.dtype ?? dtype, s, inputs[i]));
  const outs = c.outputs.map((o) => {
    const t = o.dtype ?? dtype;
    const nan = new Float64Array(numel(o.shape)).fill(t === 'i32' || t === 'u32' ? -7 : NaN);
    return viewOf(dev, t, o, nan);
  });
  try {
    c.run(dev, ins, outs);
    const results: Float64Array[] = [];
    for (const o of outs) results.push(decode(o.dtype, await dev.read(o.buf, 0, numel(o.shape) * DTYPE_BYTES[o.dtype])));
    return results;
  } finally {
    [...ins, ...outs].forEach((v) => dev.free(v.buf));
  }
}

/** Relative L2 error, and the largest absolute difference; Infinity when anything is NaN. */
export function compare(ours: ArrayLike<number>, ref: ArrayLike<number>): { rel: number; maxAbs: number } {
  let num = 0, den = 0, maxAbs = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = ours[i]! - ref[i]!;
    if (Number.isNaN(ours[i]!) !== Number.isNaN(ref[i]!)) return { rel: Infinity, maxAbs: Infinity };
    if (Number.isNaN(d)) continue;
    num += d * d;
    den += ref[i]! * ref[i]!;
    maxAbs = Math.max(maxAbs, Math.abs(d));
  }
  return { rel: num === 0 ? 0 : Math.sqrt(num / Math.max(den, 1e-300)), maxAbs };
}

/**
 * Runs every case on `dev` and on `ref` (the CPU device, in f64), for each dtype the case lists
 * that `dev` supports. The reference sees exactly the inputs the device saw (rounded to its dtype).
 */
export async function runConformance(dev: Device, ref: Device, cases: OpCase[], seed = 1): Promise<CaseResult[]> {
  const results: CaseResult[] = [];
  for (const [ci, c] of cases.entries()) {
    for (const dtype of c.dtypes ?? ['f32']) {
      const tol = c.tol?.[dtype] ?? DEFAULT_TOL[dtype];
      const base = { op: c.op, name: c.name, dtype, tol };
      const inDtypes = c.inputs.map((s) => s.dtype ?? dtype);
      const outDtypes = c.outputs.map((o) => o.dtype ?? dtype);
      if (!dev.supportsOp(c.op, [...inDtypes, ...outDtypes])) {
        results.push({ ...base, errors: [], maxAbsError: 0, pass: true, note: 'unsupported (skipped)' });
        continue;
      }
      // Round the inputs to the tested dtypes once, so both sides compute on identical values.
      const inputs = c.inputs.map((s, i) => decode(inDtypes[i]!, encode(inDtypes[i]!, makeInputs(s, seed * 7919 + ci * 104729 + i))));
      // Operands of the tested dtype become f64 on the reference; explicit dtypes (casts, indices) stay.
      const refSpecs = c.inputs.map((s) => ({ ...s, dtype: s.dtype ?? ('f64' as DType) }));
      const refCase: OpCase = { ...c, outputs: c.outputs.map((o) => ({ ...o, dtype: o.dtype ?? 'f64' })) };
      try {
        const expected = await execute(ref, refCase, 'f64', inputs, refSpecs);
        const got = await execute(dev, c, dtype, inputs, c.inputs);
        const cmp = got.map((g, i) => compare(g, expected[i]!));
        const errors = cmp.map((x) => x.rel);
        const maxAbsError = Math.max(...cmp.map((x) => x.maxAbs));
        results.push({ ...base, errors, maxAbsError, pass: errors.every((e) => e <= tol) });
      } catch (e) {
        results.push({ ...base, errors: [Infinity], maxAbsError: Infinity, pass: false, note: (e as Error).message });
      }
    }
  }
  return results;
}
