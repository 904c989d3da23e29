// Conformance cases of the optim family: one AdamW step in place. Each case copies param, m and v
// into its outputs and steps those, so the runner compares param', m' and v'. Sizes cover the vec4
// path (numel % 4 == 0, aligned offsets), one thread per element (odd sizes, unaligned offsets),
// a single element and a moderately large tensor; hyperparameters cover both branches of torch's
// lerp (1 - beta1 below and above 0.5), a first step (largest bias correction), a warmup step with
// lr 0 (param unchanged, moments updated) and no weight decay. lr is large enough that the update
// shows in param' beyond float32 rounding.
import type { AdamWParams, View } from '../device/device.ts';
import type { InputSpec, OpCase } from '../device/conformance.ts';
import { contiguousStrides, numel } from '../tensor/shape.ts';

interface Hyper { step: number; lr?: number; beta1?: number; beta2?: number; eps?: number; weightDecay?: number }

/** The step's parameters as torch computes them on the host (python doubles). */
function params({ step, lr = 0.05, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 1e-2 }: Hyper): AdamWParams {
  return { lr, beta1, beta2, eps, weightDecay, stepSize: lr / (1 - beta1 ** step), bc2Sqrt: Math.sqrt(1 - beta2 ** step) };
}

/** A dense input at an element offset into a bigger buffer. */
function at(shape: number[], offset: number, init?: InputSpec['init']): InputSpec {
  if (offset === 0) return { shape, init };
  return { shape, init, strided: { strides: contiguousStrides(shape), offset, storage: offset + numel(shape) } };
}

/** `outOffset` places param', m', v' at that element offset of their output buffers (the elements before stay NaN on both sides). */
function adamw(shape: number[], h: Hyper, { offset = 0, outOffset = 0 } = {}): OpCase {
  const p = params(h);
  const tags = [`step ${h.step}`, `lr ${p.lr}`, h.beta1 !== undefined ? `beta1 ${h.beta1}` : '', h.weightDecay !== undefined ? `wd ${h.weightDecay}` : '', offset ? `grad offset ${offset}` : '', outOffset ? `offset ${outOffset}` : ''];
  const n = numel(shape);
  const inner = (o: View): View => ({ ...o, shape, strides: contiguousStrides(shape), offset: outOffset });
  return {
    op: 'adamw', name: `adamw [${shape}] ${tags.filter((t) => t).join(' ')}`,
    inputs: [
      at(shape, 0),
      at(shape, offset, { kind: 'normal', scale: 0.1 }),
      at(shape, 0, { kind: 'normal', scale: 0.05 }),
      at(shape, 0, { kind: 'uniform', lo: 1e-6, hi: 1e-2 }),
    ],
    outputs: [0, 1, 2].map(() => ({ shape: [n + outOffset] })),
    run: (dev, [param, grad, m, v], outs) => {
      const [p1, m1, v1] = outs.map((o) => inner(o!));
      dev.copy(param!, p1!);
      dev.copy(m!, m1!);
      dev.copy(v!, v1!);
      dev.adamw(p1!, grad!, m1!, v1!, p);
    },
  };
}

export const cases: OpCase[] = [
  adamw([37, 29], { step: 1 }),
  adamw([64, 48], { step: 10 }),
  adamw([1], { step: 3 }),
  adamw([129], { step: 2, beta1: 0.6 }),
  adamw([32, 3], { step: 5, beta1: 0.3 }),
  adamw([7, 9], { step: 1, lr: 0 }),
  adamw([100], { step: 7, weightDecay: 0 }),
  adamw([5, 7], { step: 4 }, { offset: 3, outOffset: 1 }),
  adamw([8, 16], { step: 6 }, { offset: 4, outOffset: 4 }),
  adamw([300, 1000], { step: 3, lr: 1e-3 }),
];
