// What the CPU reference kernels work on: a strided view over a host array. Every reference kernel
// reads and writes through `get`/`set` with logical (row-major) element indices, so any view works,
// and computes in JS numbers (float64), rounding only when it stores into the output's dtype.
import { type DType, type HostArray, readElement, writeElement } from '../tensor/dtype.ts';
import { numel } from '../tensor/shape.ts';

export interface HostView {
  readonly data: HostArray;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

/** Storage index of the element with row-major logical index i. */
export function storageIndex(v: HostView, i: number): number {
  let off = v.offset;
  for (let d = v.shape.length - 1; d >= 0; d--) {
    const n = v.shape[d]!;
    off += (i % n) * v.strides[d]!;
    i = Math.floor(i / n);
  }
  return off;
}

export function get(v: HostView, i: number): number {
  return readElement(v.dtype, v.data, storageIndex(v, i));
}

export function set(v: HostView, i: number, x: number): void {
  writeElement(v.dtype, v.data, storageIndex(v, i), x);
}

export function size(v: HostView): number {
  return numel(v.shape);
}

/** All elements as float64, in logical order. */
export function toArray(v: HostView): Float64Array {
  const n = size(v);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = get(v, i);
  return out;
}

/** Stores float64 values into the view in logical order (rounding to its dtype). */
export function fromArray(v: HostView, values: ArrayLike<number>): void {
  for (let i = 0; i < values.length; i++) set(v, i, values[i]!);
}
