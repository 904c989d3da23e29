// Reference elementwise ops (the oracle of the WebGPU kernels in elementwise.ts): plain loops over
// logical indices, computing in float64 and rounding once when storing into the output's dtype.
// Every view may be strided (zero strides broadcast) and of any rank.
import type { BinaryOp, UnaryOp, UnaryParams } from '../device/device.ts';
import { sameShape } from '../tensor/shape.ts';
import { type HostView, get, set, size } from './reference.ts';

/** Throws unless every named operand has the output's shape (shared with the WebGPU launchers). */
export function checkSameShape(out: { shape: readonly number[] }, operands: Record<string, { shape: readonly number[] }>): void {
  for (const [name, v] of Object.entries(operands)) {
    if (!sameShape(v.shape, out.shape)) throw new Error(`shapes differ: ${name} [${v.shape}] vs out [${out.shape}]`);
  }
}

/** Gather's shape rules: table [V, D], index [N], out [N, D]. */
export function checkGatherShapes(table: { shape: readonly number[] }, index: { shape: readonly number[] }, out: { shape: readonly number[] }): void {
  const [v, d] = table.shape;
  if (table.shape.length !== 2 || index.shape.length !== 1 || v === undefined || d === undefined || !sameShape(out.shape, [index.shape[0]!, d])) {
    throw new Error(`gather wants table [V,D], index [N], out [N,D]; got table [${table.shape}], index [${index.shape}], out [${out.shape}]`);
  }
}

/**
 * erf in float64 from its everywhere-convergent series of positive terms,
 * erf(x) = 2/sqrt(pi) exp(-x^2) sum_k 2^k x^(2k+1) / (1*3*...*(2k+1)): no cancellation, so it is
 * accurate to a few float64 ulps; past |x| = 6, erf is +-1 to float64 precision.
 */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax >= 6) return Math.sign(x);
  let term = ax, sum = ax;
  for (let k = 1; term > sum * 1e-17; k++) {
    term *= (2 * ax * ax) / (2 * k + 1);
    sum += term;
  }
  return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * Math.exp(-ax * ax) * sum;
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/** The scalar function of a unary op (PyTorch's definitions). */
export function unaryFn(op: UnaryOp, p: UnaryParams = {}): (x: number) => number {
  switch (op) {
    case 'neg': return (x) => -x;
    case 'abs': return Math.abs;
    case 'exp': return Math.exp;
    case 'log': return Math.log;
    case 'sqrt': return Math.sqrt;
    case 'rsqrt': return (x) => 1 / Math.sqrt(x);
    case 'square': return (x) => x * x;
    case 'recip': return (x) => 1 / x;
    case 'tanh': return Math.tanh;
    case 'sigmoid': return sigmoid;
    case 'relu': return (x) => Math.max(x, 0);
    case 'silu': return (x) => x * sigmoid(x);
    case 'gelu_erf': return (x) => 0.5 * x * (1 + erf(x * Math.SQRT1_2));
    case 'gelu_tanh': return (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
    case 'quick_gelu': return (x) => x * sigmoid(1.702 * x);
    case 'scale': return (x) => required(p.alpha, 'alpha') * x;
    case 'clamp': {
      const lo = required(p.lo, 'lo'), hi = required(p.hi, 'hi');
      return (x) => Math.min(Math.max(x, lo), hi);
    }
  }
}

/**
 * The scalar function dx = dy * op'(x) of a unary op, as PyTorch's backward formulas write it
 * (the result y = op(x) where torch uses it). relu'(0) = abs'(0) = 0; clamp passes the gradient
 * where lo <= x <= hi, both ends included, and 0 elsewhere (torch's clamp_backward).
 */
export function unaryGradFn(op: UnaryOp, p: UnaryParams = {}): (x: number, dy: number) => number {
  const f = unaryFn(op, p);
  switch (op) {
    case 'neg': return (_, dy) => -dy;
    case 'abs': return (x, dy) => dy * Math.sign(x);
    case 'exp': return (x, dy) => dy * f(x);
    case 'log': return (x, dy) => dy / x;
    case 'sqrt': return (x, dy) => dy / (2 * f(x));
    case 'rsqrt': return (x, dy) => -0.5 * dy * f(x) ** 3;
    case 'square': return (x, dy) => dy * 2 * x;
    case 'recip': return (x, dy) => -dy * f(x) ** 2;
    case 'tanh': return (x, dy) => dy * (1 - f(x) ** 2);
    case 'sigmoid': return (x, dy) => dy * (1 - f(x)) * f(x);
    case 'relu': return (x, dy) => (x > 0 ? dy : 0);
    case 'silu': return (x, dy) => {
      const s = sigmoid(x);
      return dy * s * (1 + x * (1 - s));
    };
    case 'gelu_erf': return (x, dy) => dy * (0.5 * (1 + erf(x * Math.SQRT1_2)) + x * Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI));
    case 'gelu_tanh': return (x, dy) => {
      const beta = Math.sqrt(2 / Math.PI), kappa = 0.044715;
      const t = Math.tanh(beta * (x + kappa * x ** 3));
      return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * beta * (1 + 3 * kappa * x * x));
    };
    case 'quick_gelu': return (x, dy) => {
      const s = sigmoid(1.702 * x);
      return dy * (s + 1.702 * x * s * (1 - s));
    };
    case 'scale': return (_, dy) => dy * required(p.alpha, 'alpha');
    case 'clamp': {
      const lo = required(p.lo, 'lo'), hi = required(p.hi, 'hi');
      return (x, dy) => (x >= lo && x <= hi ? dy : 0);
    }
  }
}

function required(v: number | undefined, name: string): number {
  if (v === undefined) throw new Error(`parameter '${name}' is required`);
  return v;
}

/** The scalar function of a binary op. */
export function binaryFn(op: BinaryOp): (a: number, b: number) => number {
  switch (op) {
    case 'add': return (a, b) => a + b;
    case 'sub': return (a, b) => a - b;
    case 'mul': return (a, b) => a * b;
    case 'div': return (a, b) => a / b;
    case 'max': return Math.max;
    case 'min': return Math.min;
    case 'pow': return Math.pow;
  }
}

/** out[...] = value, rounded to out's dtype.  out: any shape */
export function refFill(out: HostView, value: number): void {
  for (let i = 0; i < size(out); i++) set(out, i, value);
}

/** out = src converted to out's dtype (floats round to nearest even, to integers truncate).  src, out: same shape */
export function refCopy(src: HostView, out: HostView): void {
  checkSameShape(out, { src });
  for (let i = 0; i < size(out); i++) set(out, i, get(src, i));
}

/** out = op(x).  x, out: same shape */
export function refUnary(op: UnaryOp, x: HostView, out: HostView, p: UnaryParams = {}): void {
  checkSameShape(out, { x });
  const f = unaryFn(op, p);
  for (let i = 0; i < size(out); i++) set(out, i, f(get(x, i)));
}

/** dx = dy * op'(x) (the forward's params).  x, dy, dx: same shape */
export function refUnaryBackward(op: UnaryOp, x: HostView, dy: HostView, dx: HostView, p: UnaryParams = {}): void {
  checkSameShape(dx, { x, dy });
  const g = unaryGradFn(op, p);
  for (let i = 0; i < size(dx); i++) set(dx, i, g(get(x, i), get(dy, i)));
}

/** out = a op b.  a, b, out: same shape (a, b already broadcast through zero strides) */
export function refBinary(op: BinaryOp, a: HostView, b: HostView, out: HostView): void {
  checkSameShape(out, { a, b });
  const f = binaryFn(op);
  for (let i = 0; i < size(out); i++) set(out, i, f(get(a, i), get(b, i)));
}

/** out = cond != 0 ? a : b.  cond, a, b, out: same shape */
export function refWhere(cond: HostView, a: HostView, b: HostView, out: HostView): void {
  checkSameShape(out, { cond, a, b });
  for (let i = 0; i < size(out); i++) set(out, i, get(cond, i) !== 0 ? get(a, i) : get(b, i));
}

/** out[r, :] = table[index[r], :].  table: [V, D], index: [N] (i32), out: [N, D] */
export function refGather(table: HostView, index: HostView, out: HostView): void {
  checkGatherShapes(table, index, out);
  const [v, d] = table.shape as [number, number];
  for (let r = 0; r < index.shape[0]!; r++) {
    const row = get(index, r);
    if (row < 0 || row >= v) throw new Error(`gather: index[${r}] = ${row} is outside the table's ${v} rows`);
    for (let j = 0; j < d; j++) set(out, r * d + j, get(table, row * d + j));
  }
}
