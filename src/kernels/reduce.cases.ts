// Conformance cases of the reduce family: sum/mean/max/min/var over axis 1 of [outer, n, inner],
// softmax over the last axis and its backward. Sizes cover both thread layouts (inner = 1: a row's
// threads adjacent; inner > 1: outputs adjacent), n from 1 to 100k, rows sharing a workgroup (small
// n or D) and rows filling one (D = 4097), offsets (4-aligned and not), and inputs that break naive
// formulas (a variance with mean 1000, softmax logits of scale 30).
import type { ReduceOp } from '../device/device.ts';
import type { Init, InputSpec, OpCase } from '../device/conformance.ts';

/** x viewed at an element offset into a bigger buffer (dense strides). */
function input(shape: number[], init?: Init, offset = 0): InputSpec {
  if (offset === 0) return { shape, init };
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  return { shape, init, strided: { strides, offset, storage: offset + shape.reduce((a, b) => a * b, 1) } };
}

function reduce(op: ReduceOp, [outer, n, inner]: [number, number, number], opts: { init?: Init; correction?: number; offset?: number } = {}): OpCase {
  const c = opts.correction;
  return {
    op: 'reduce', name: `${op} [${outer},${n},${inner}]${c !== undefined ? ` correction ${c}` : ''}${opts.offset ? ` offset ${opts.offset}` : ''}`,
    inputs: [input([outer, n, inner], opts.init, opts.offset)], outputs: [{ shape: [outer, inner] }],
    run: (dev, [x], [out]) => dev.reduce(op, x!, out!, { outer, n, inner, correction: c }),
  };
}

function softmax(shape: number[], init?: Init, offset = 0): OpCase {
  return {
    op: 'softmax', name: `softmax [${shape}]${init?.kind === 'normal' && init.scale ? ` scale ${init.scale}` : ''}${offset ? ` offset ${offset}` : ''}`,
    inputs: [input(shape, init, offset)], outputs: [{ shape }],
    run: (dev, [x], [out]) => dev.softmax(x!, out!),
  };
}

/** Softmax backward; y is positive like a softmax output (the op itself accepts any y). */
function softmaxBackward(shape: number[], offset = 0): OpCase {
  return {
    op: 'softmaxBackward', name: `softmaxBackward [${shape}]${offset ? ` offset ${offset}` : ''}`,
    inputs: [input(shape, { kind: 'uniform', lo: 0.001, hi: 1 }, offset), input(shape, undefined, offset)], outputs: [{ shape }],
    run: (dev, [y, dy], [dx]) => dev.softmaxBackward(y!, dy!, dx!),
  };
}

export const cases: OpCase[] = [
  reduce('sum', [1, 100000, 1]),
  reduce('sum', [6, 37, 1]),
  reduce('sum', [3, 50, 17]),
  reduce('sum', [2, 1, 9]),
  reduce('sum', [3, 20, 2], { offset: 7 }),
  reduce('mean', [7, 300, 1]),
  reduce('mean', [4, 9, 130]),
  reduce('mean', [2, 20000, 3]),
  reduce('max', [13, 257, 1]),
  reduce('max', [5, 17, 6]),
  reduce('min', [64, 3, 1]),
  reduce('min', [2, 2000, 3]),
  reduce('var', [9, 1000, 1]),
  reduce('var', [4, 37, 5], { correction: 0 }),
  reduce('var', [3, 1, 4], { correction: 0 }),
  // Mean 1000, spread 0.3: a one-pass sum of squares in float32 loses every digit here.
  reduce('var', [4, 5000, 1], { init: { kind: 'uniform', lo: 1000, hi: 1001 } }),
  reduce('var', [2, 3000, 7], { init: { kind: 'uniform', lo: -500, hi: -499 } }),
  softmax([1, 1]),
  softmax([5, 1]),
  softmax([7, 33]),
  softmax([3, 4097]),
  // Logits of scale 30 overflow exp without the max subtraction.
  softmax([33, 128], { kind: 'normal', scale: 30 }),
  softmax([1000, 10]),
  softmax([2, 3, 50]),
  softmax([4, 100], undefined, 3),
  softmaxBackward([1, 1]),
  softmaxBackward([5, 1]),
  softmaxBackward([7, 33]),
  softmaxBackward([3, 4097]),
  softmaxBackward([33, 128]),
  softmaxBackward([1000, 10]),
  softmaxBackward([2, 3, 50]),
  softmaxBackward([4, 100], 3),
  softmaxBackward([6, 64], 4),
];
