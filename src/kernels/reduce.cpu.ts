// Reference reductions, softmax and its backward (the oracle of the WebGPU kernels in reduce.ts):
// plain loops in float64, rounding once when storing.
import type { ReduceOp } from '../device/device.ts';
import { numel, sameShape } from '../tensor/shape.ts';
import { type HostView, get, set } from './reference.ts';

export interface ReduceDims { outer: number; n: number; inner: number; correction?: number }

/** Reduce's shape rules (shared with the WebGPU launcher): x holds [outer, n, inner], out [outer, inner]. */
export function checkReduceShapes(x: { shape: readonly number[] }, out: { shape: readonly number[] }, p: ReduceDims): void {
  const { outer, n, inner } = p;
  if (![outer, n, inner].every((d) => Number.isInteger(d) && d >= 0)) throw new Error(`bad reduce dims outer=${outer} n=${n} inner=${inner}`);
  if (numel(x.shape) !== outer * n * inner) throw new Error(`x [${x.shape}] does not hold [outer=${outer}, n=${n}, inner=${inner}]`);
  if (numel(out.shape) !== outer * inner) throw new Error(`out [${out.shape}] does not hold [outer=${outer}, inner=${inner}]`);
  if (n === 0 && outer * inner > 0) throw new Error(`cannot reduce an empty axis (x [${x.shape}])`);
}

/** Softmax's shape rules: x and out of one shape, at least one dim. */
export function checkSoftmaxShapes(x: { shape: readonly number[] }, out: { shape: readonly number[] }): void {
  if (x.shape.length === 0 || !sameShape(x.shape, out.shape)) throw new Error(`softmax wants x and out of one shape [..., D]; got x [${x.shape}], out [${out.shape}]`);
}

/** Softmax backward's shape rules: y, dy and dx of one shape, at least one dim. */
export function checkSoftmaxBackwardShapes(y: { shape: readonly number[] }, dy: { shape: readonly number[] }, dx: { shape: readonly number[] }): void {
  if (y.shape.length === 0 || !sameShape(y.shape, dy.shape) || !sameShape(y.shape, dx.shape)) {
    throw new Error(`softmaxBackward wants y, dy and dx of one shape [..., D]; got y [${y.shape}], dy [${dy.shape}], dx [${dx.shape}]`);
  }
}

/**
 * out[o, j] = op over k of x[o, k, j]; 'var' divides by max(0, n - correction) (correction 1 by
 * default, PyTorch's unbiased variance).  x: [outer, n, inner], out: [outer, inner]
 */
export function refReduce(op: ReduceOp, x: HostView, out: HostView, p: ReduceDims): void {
  checkReduceShapes(x, out, p);
  const { outer, n, inner } = p;
  const row = new Float64Array(n);
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < inner; j++) {
      for (let k = 0; k < n; k++) row[k] = get(x, (o * n + k) * inner + j);
      set(out, o * inner + j, reduceRow(op, row, p.correction ?? 1));
    }
  }
}

function reduceRow(op: ReduceOp, row: Float64Array, correction: number): number {
  let sum = 0;
  for (const v of row) sum += v;
  switch (op) {
    case 'sum': return sum;
    case 'mean': return sum / row.length;
    case 'max': return row.reduce((a, b) => Math.max(a, b));
    case 'min': return row.reduce((a, b) => Math.min(a, b));
    case 'var': {
      const mean = sum / row.length;
      let ss = 0;
      for (const v of row) ss += (v - mean) ** 2;
      return ss / Math.max(0, row.length - correction);
    }
  }
}

/** out[r, :] = exp(x[r, :] - max) / sum(exp(x[r, :] - max)) over the last axis.  x, out: [R, D] */
export function refSoftmax(x: HostView, out: HostView): void {
  checkSoftmaxShapes(x, out);
  const d = x.shape.at(-1)!;
  const rows = numel(x.shape) / d;
  for (let r = 0; r < rows; r++) {
    let max = -Infinity, sum = 0;
    for (let k = 0; k < d; k++) max = Math.max(max, get(x, r * d + k));
    for (let k = 0; k < d; k++) sum += Math.exp(get(x, r * d + k) - max);
    for (let k = 0; k < d; k++) set(out, r * d + k, Math.exp(get(x, r * d + k) - max) / sum);
  }
}

/** dx[r, :] = y[r, :] * (dy[r, :] - sum(dy[r, :] * y[r, :])) over the last axis.  y (softmax output), dy, dx: [R, D] */
export function refSoftmaxBackward(y: HostView, dy: HostView, dx: HostView): void {
  checkSoftmaxBackwardShapes(y, dy, dx);
  const d = y.shape.at(-1)!;
  const rows = numel(y.shape) / d;
  for (let r = 0; r < rows; r++) {
    let dot = 0;
    for (let k = 0; k < d; k++) dot += get(dy, r * d + k) * get(y, r * d + k);
    for (let k = 0; k < d; k++) set(dx, r * d + k, get(y, r * d + k) * (get(dy, r * d + k) - dot));
  }
}
