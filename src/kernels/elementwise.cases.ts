// Conformance cases of the elementwise family: fill, copy/cast, unary and its backward, binary, where,
// gather.
// Shapes mix the kernel's three paths: vec4 (dense 4-byte operands, numel % 4 == 0), one thread per
// element (odd sizes, strided or 16-bit operands) and one thread per output word (dense bf16/f16
// outputs); outputs written through a strided sub-view exercise the atomic half-word stores.
// Casts and moves must be exact (tol 0): both sides round once, the same way.
import type { BinaryOp, UnaryOp, UnaryParams, View } from '../device/device.ts';
import type { DType } from '../tensor/dtype.ts';
import type { Init, InputSpec, OpCase } from '../device/conformance.ts';

const EXACT = { f32: 0 };

/** A dense input. */
const dense = (shape: number[], init?: Init, dtype?: DType): InputSpec => ({ shape, init, dtype });

/** An input seen through arbitrary strides and an offset (zero strides broadcast). */
function strided(shape: number[], strides: number[], offset: number, init?: Init, dtype?: DType): InputSpec {
  const span = shape.reduce((s, d, i) => s + (d - 1) * strides[i]!, 0);
  return { shape, dtype, init, strided: { strides, offset, storage: offset + span + 1 } };
}

/** The transpose of a dense [cols, rows] buffer, seen as [rows, cols]. */
const transposed = ([rows, cols]: [number, number], init?: Init, dtype?: DType) => strided([rows, cols], [1, rows], 0, init, dtype);

/** A [n] vector broadcast to `shape` along its last dim. */
const rowBroadcast = (shape: number[], init?: Init) => strided(shape, shape.map((_, i) => (i === shape.length - 1 ? 1 : 0)), 0, init);

/** A view of `out` (a dense buffer) with another shape, strides and offset: outputs that are slices. */
const sub = (out: View, shape: number[], strides: number[], offset: number): View => ({ ...out, shape, strides, offset });

/** Rank 6 with a zero stride and an offset; no two dims merge. */
const RANK6 = strided([2, 3, 2, 3, 2, 5], [151, 41, 0, 13, 6, 1], 4);

// ---- fill and copy ----------------------------------------------------------------------------------

function fill(shape: number[], value: number, dtype?: DType, view?: (out: View) => View): OpCase {
  return {
    op: 'fill', name: `fill [${shape}]${dtype ? `:${dtype}` : ''}${view ? ' strided' : ''} ${value}`, inputs: [], outputs: [{ shape, dtype }], tol: EXACT,
    run: (dev, _, [out]) => dev.fill(view ? view(out!) : out!, value),
  };
}

/** A copy; the output's dtype is explicit so that the reference rounds into it as the device does. */
function copy(name: string, src: InputSpec, outDtype: DType = 'f32', outShape = src.shape, view?: (out: View) => View): OpCase {
  return {
    op: 'copy', name: `copy ${name} ${src.dtype ?? 'f32'}->${outDtype}`, inputs: [src], outputs: [{ shape: outShape, dtype: outDtype }], tol: EXACT,
    run: (dev, [x], [out]) => dev.copy(x!, view ? view(out!) : out!),
  };
}

const int = (lo: number, hi: number): Init => ({ kind: 'int', lo, hi });
const uniform = (lo: number, hi: number): Init => ({ kind: 'uniform', lo, hi });
const normal = (scale: number): Init => ({ kind: 'normal', scale });

const fillCases: OpCase[] = [
  fill([7, 13], 1.5),
  fill([64, 33], -2.25),
  fill([9, 7], Math.PI, 'bf16'),
  fill([6, 10], -0.7, 'bf16', (o) => sub(o, [6, 5], [10, 2], 1)),
  fill([3, 11], 0.1, 'f16'),
  fill([5, 3], -3.7, 'i32'),
];

const copyCases: OpCase[] = [
  copy('transposed [5,7]', transposed([5, 7])),
  copy('permuted [4,6,8] offset 3', strided([4, 6, 8], [6, 1, 24], 3)),
  copy('rank-6 broadcast offset 4', RANK6),
  copy('dense [512,1024]', dense([512, 1024])),
  copy('into a strided slice [8,4] of [8,9]', dense([8, 4]), undefined, [8, 9], (o) => sub(o, [8, 4], [9, 2], 1)),
  copy('[1000]', dense([1000], normal(3)), 'bf16'),
  copy('[37,3] into offset 1 of [113]', dense([37, 3], normal(3)), 'bf16', [113], (o) => sub(o, [37, 3], [3, 1], 1)),
  copy('into a strided slice [10,5] of [10,12]', dense([10, 5]), 'bf16', [10, 12], (o) => sub(o, [10, 5], [12, 2], 1)),
  copy('[33,5]', dense([33, 5], undefined, 'bf16')),
  copy('transposed [6,9]', transposed([6, 9], undefined, 'bf16')),
  copy('broadcast [4,6]', strided([4, 6], [0, 1], 2, undefined, 'bf16'), 'bf16'),
  copy('[4099]', dense([4099], normal(1000)), 'f16'),
  copy('[300]', dense([300], normal(100), 'f16')),
  copy('[257]', dense([257], normal(10), 'bf16'), 'f16'),
  copy('[130]', dense([130], normal(10), 'f16'), 'bf16'),
  copy('[1003]', dense([1003], normal(100)), 'i32'),
  copy('[1024]', dense([1024], normal(100)), 'i32'),
  copy('[500]', dense([500], int(-1e8, 1e8), 'i32')),
  copy('[77]', dense([77], int(-1e6, 1e6), 'i32'), 'bf16'),
  copy('[64]', dense([64], int(-50, 50), 'i32'), 'u32'),
  copy('[50]', dense([50], int(0, 4e9), 'u32')),
  copy('[40]', dense([40], uniform(0, 1000)), 'u32'),
  copy('transposed [9,11]', transposed([9, 11], int(-2e9, 2e9), 'i32'), 'i32'),
];

// ---- unary, binary, where -----------------------------------------------------------------------------

/** Odd-sized (one thread per element) and vec4-sized dense shapes, alternated across the ops. */
const ODD = [37, 29], VEC4 = [16, 64];

function unary(op: UnaryOp, x: InputSpec, p?: UnaryParams): OpCase {
  return {
    op: 'unary', name: `${op} [${x.shape}]${x.strided ? ' strided' : ''}`, inputs: [x], outputs: [{ shape: x.shape }],
    run: (dev, [a], [out]) => dev.unary(op, a!, out!, p),
  };
}

const unaryCases: OpCase[] = [
  unary('neg', dense(ODD)),
  unary('abs', dense(VEC4)),
  unary('exp', dense(ODD, normal(2))),
  unary('log', dense(VEC4, uniform(0.05, 20))),
  unary('sqrt', dense(ODD, uniform(0.01, 50))),
  unary('rsqrt', dense(VEC4, uniform(0.01, 50))),
  unary('square', dense(ODD)),
  unary('recip', dense(VEC4, uniform(0.1, 10))),
  // |x| up to ~60: a tanh through exp(2x) overflows to inf/inf = NaN there.
  unary('tanh', dense(ODD, normal(15))),
  unary('tanh', dense(VEC4, normal(0.01))),
  unary('sigmoid', dense(VEC4, normal(10))),
  unary('relu', dense(ODD)),
  unary('silu', dense(VEC4, normal(5))),
  unary('gelu_erf', dense(ODD, normal(3))),
  unary('gelu_erf', transposed([40, 24], normal(0.3))),
  unary('gelu_tanh', dense(VEC4, normal(3))),
  unary('quick_gelu', dense(ODD, normal(3))),
  unary('scale', dense(VEC4), { alpha: -2.5 }),
  unary('clamp', dense(ODD), { lo: -0.5, hi: 0.8 }),
  unary('exp', RANK6),
];

function unaryBackward(op: UnaryOp, x: InputSpec, dy: InputSpec = dense(x.shape), p?: UnaryParams): OpCase {
  const tag = x.strided || dy.strided ? ' strided' : x.init?.kind === 'int' ? ' at kinks' : '';
  return {
    op: 'unaryBackward', name: `${op}' [${x.shape}]${tag}`, inputs: [x, dy], outputs: [{ shape: x.shape }],
    run: (dev, [a, g], [out]) => dev.unaryBackward(op, a!, g!, out!, p),
  };
}

/** Integers in [-2, 2]: x lands exactly on relu's, abs' and clamp's kinks. */
const KINKS = int(-2, 3);

const unaryBackwardCases: OpCase[] = [
  unaryBackward('neg', dense(ODD)),
  unaryBackward('abs', dense(VEC4)),
  unaryBackward('abs', dense(ODD, KINKS)),
  unaryBackward('exp', dense(ODD, normal(2))),
  unaryBackward('log', dense(VEC4, uniform(0.05, 20))),
  unaryBackward('sqrt', dense(ODD, uniform(0.01, 50))),
  unaryBackward('rsqrt', dense(VEC4, uniform(0.01, 50))),
  unaryBackward('square', dense(ODD)),
  unaryBackward('recip', dense(VEC4, uniform(0.1, 10))),
  unaryBackward('tanh', dense(ODD, normal(3))),
  unaryBackward('tanh', dense(VEC4, normal(0.01))),
  unaryBackward('sigmoid', dense(VEC4, normal(5))),
  unaryBackward('relu', dense(ODD)),
  unaryBackward('relu', dense(VEC4, KINKS)),
  unaryBackward('silu', dense(VEC4, normal(5))),
  unaryBackward('gelu_erf', dense(ODD, normal(3))),
  unaryBackward('gelu_erf', transposed([40, 24], normal(0.3)), rowBroadcast([40, 24])),
  unaryBackward('gelu_tanh', dense(VEC4, normal(3))),
  unaryBackward('gelu_tanh', dense([512, 513], normal(2))),
  unaryBackward('quick_gelu', dense(ODD, normal(3))),
  unaryBackward('scale', dense(VEC4), undefined, { alpha: -2.5 }),
  unaryBackward('clamp', dense(ODD), undefined, { lo: -0.5, hi: 0.8 }),
  // Both ends pass the gradient (torch's clamp_backward: lo <= x <= hi).
  unaryBackward('clamp', dense(VEC4, KINKS), undefined, { lo: -1, hi: 1 }),
  unaryBackward('exp', RANK6, strided(RANK6.shape, [0, 30, 15, 5, 0, 1], 2)),
];

function binary(op: BinaryOp, a: InputSpec, b: InputSpec): OpCase {
  const tag = (s: InputSpec) => `[${s.shape}]${s.strided ? `/[${s.strided.strides}]` : ''}`;
  return {
    op: 'binary', name: `${op} ${tag(a)} ${tag(b)}`, inputs: [a, b], outputs: [{ shape: a.shape }],
    run: (dev, [x, y], [out]) => dev.binary(op, x!, y!, out!),
  };
}

const binaryCases: OpCase[] = [
  binary('add', dense([8, 64]), dense([8, 64])),
  binary('sub', dense(ODD), dense(ODD)),
  binary('mul', dense([4, 9, 32]), rowBroadcast([4, 9, 32])),
  binary('div', strided([3, 4, 5], [5, 0, 1], 0), strided([3, 4, 5], [0, 1, 0], 0, uniform(0.5, 2))),
  binary('max', transposed([24, 40]), dense([24, 40])),
  binary('min', dense([6, 8]), strided([6, 8], [0, 0], 0)),
  binary('pow', dense([33, 7], uniform(0.2, 3)), dense([33, 7])),
  // Negative bases with integer exponents: the sign comes from the exponent's parity.
  binary('pow', dense([64]), dense([64], int(-3, 4))),
  binary('add', RANK6, dense(RANK6.shape)),
  binary('mul', dense([1 << 18]), dense([1 << 18])),
];

function where(cond: InputSpec, a: InputSpec, b: InputSpec): OpCase {
  return {
    op: 'where', name: `where [${a.shape}]${[cond, a, b].some((s) => s.strided) ? ' broadcast' : ''}`, inputs: [cond, a, b], outputs: [{ shape: a.shape }],
    run: (dev, [c, x, y], [out]) => dev.where(c!, x!, y!, out!),
  };
}

const whereCases: OpCase[] = [
  where(dense([13, 17], int(0, 2)), dense([13, 17]), dense([13, 17])),
  where(strided([13, 17], [0, 1], 0, int(-1, 2)), dense([13, 17]), strided([13, 17], [0, 0], 0)),
  where(dense([8, 16], int(0, 2)), dense([8, 16]), dense([8, 16])),
];

// ---- gather -------------------------------------------------------------------------------------------

function gather(v: number, d: number, n: number): OpCase {
  return {
    op: 'gather', name: `gather [${v},${d}] by [${n}]`, inputs: [dense([v, d]), dense([n], int(0, v), 'i32')], outputs: [{ shape: [n, d] }], tol: EXACT,
    run: (dev, [table, index], [out]) => dev.gather(table!, index!, out!),
  };
}

const gatherCases: OpCase[] = [gather(50, 19, 23), gather(1000, 64, 7), gather(3, 1, 1)];

export const cases: OpCase[] = [...fillCases, ...copyCases, ...unaryCases, ...unaryBackwardCases, ...binaryCases, ...whereCases, ...gatherCases];
