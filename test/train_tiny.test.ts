// End to end on the training primitives: a tiny MLP and a tiny attention model learn (loss falls)
// with AdamW on the CPU backend and on WebGPU, and both devices follow the same loss trajectory.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import * as A from '../src/autograd/functional.ts';
import { CpuDevice } from '../src/device/cpu/device.ts';
import type { Device } from '../src/device/device.ts';
import { WebGPUDevice } from '../src/device/webgpu/device.ts';
import { AdamW, clipGradNorm } from '../src/grpo/optim.ts';
import { Generator, randn } from '../src/rng/index.ts';
import { Tensor } from '../src/tensor/tensor.ts';

const STEPS = 25;

interface TinyModel {
  params: Record<string, number[]>;
  shapes: Record<string, number[]>;
  forward(p: Record<string, Tensor>, x: Tensor): Tensor;
  input: number[];
  inputShape: number[];
  target: number[];
  targetShape: number[];
}

/** Weights, data and targets drawn from the project's torch-compatible generator. */
function draw(g: Generator, shape: number[], scale = 1): number[] {
  return Array.from(randn(g, shape) as Float32Array, (v) => v * scale);
}

function mlp(): TinyModel {
  const g = new Generator(7);
  const shapes = { w1: [16, 8], b1: [16], w2: [4, 16], b2: [4] };
  const params = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, draw(g, s, 0.3)]));
  return {
    params, shapes,
    forward: (p, x) => {
      const h = A.linear(x, p.w1!, p.b1!);
      const a = A.gelu(h, 'tanh');
      const y = A.linear(a, p.w2!, p.b2!);
      [h, a].forEach((t) => t.dispose());
      return y;
    },
    input: draw(g, [12, 8]), inputShape: [12, 8],
    target: draw(g, [12, 4]), targetShape: [12, 4],
  };
}

/** One pre-norm self-attention block: x + Wo·attn(LN(x)Wq, LN(x)Wk, LN(x)Wv), 2 heads. */
function attentionModel(): TinyModel {
  const g = new Generator(11);
  const d = 8, heads = 2, l = 6;
  const shapes = { ln: [d], wq: [d, d], wk: [d, d], wv: [d, d], wo: [d, d] };
  const params = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, k === 'ln' ? new Array<number>(s[0]!).fill(1) : draw(g, s, 0.3)]));
  const split = (t: Tensor) => {
    const r = A.reshape(t, [1, l, heads, d / heads]);
    const p = A.permute(r, [0, 2, 1, 3]);
    r.dispose();
    return p;
  };
  return {
    params, shapes,
    forward: (p, x) => {
      const n = A.layerNorm(x, p.ln!, null, 1e-5);
      const [q, k, v] = [p.wq!, p.wk!, p.wv!].map((w) => { const y = A.linear(n, w); const s = split(y); y.dispose(); return s; });
      const o = A.attention(q!, k!, v!, { causal: true });
      const back = A.permute(o, [0, 2, 1, 3]);
      const merged = A.reshape(back, [l, d]);
      const proj = A.linear(merged, p.wo!);
      const out = A.add(x, proj);
      [n, q!, k!, v!, o, back, merged, proj].forEach((t) => t.dispose());
      return out;
    },
    input: draw(g, [l, d]), inputShape: [l, d],
    target: draw(g, [l, d]), targetShape: [l, d],
  };
}

/** Trains for STEPS steps of AdamW (+ grad clipping) on one device; returns the loss per step. */
async function train(dev: Device, model: TinyModel): Promise<number[]> {
  const p = Object.fromEntries(Object.entries(model.params).map(([k, v]) => {
    const t = Tensor.from(dev, v, model.shapes[k]!);
    t.requiresGrad = true;
    return [k, t];
  }));
  const x = Tensor.from(dev, model.input, model.inputShape);
  const target = Tensor.from(dev, model.target, model.targetShape);
  const opt = new AdamW(Object.values(p), { lr: 3e-2, weightDecay: 1e-4 });
  const losses: number[] = [];
  for (let step = 0; step < STEPS; step++) {
    const y = model.forward(p, x);
    const diff = A.sub(y, target);
    const sq = A.mul(diff, diff);
    const flat = A.reshape(sq, [-1]);
    const loss = A.mean(flat, 0);
    A.backward(loss);
    losses.push((await loss.toFloat64())[0]!);
    await clipGradNorm(Object.values(p), 1.0);
    opt.step();
    opt.zeroGrad();
    [y, diff, sq, flat, loss].forEach((t) => t.dispose());
  }
  opt.dispose();
  [x, target, ...Object.values(p)].forEach((t) => t.dispose());
  return losses;
}

describe.each([['mlp', mlp], ['attention', attentionModel]] as const)('tiny %s model', (_, make) => {
  let gpu: WebGPUDevice;
  beforeAll(async () => { gpu = await WebGPUDevice.create(); });
  afterAll(() => gpu?.destroy());

  test('learns on CPU and WebGPU with the same trajectory', async () => {
    const cpu = new CpuDevice();
    const before = cpu.memory().liveBuffers;
    const onCpu = await train(cpu, make());
    const onGpu = await train(gpu, make());
    expect(onCpu.at(-1)!).toBeLessThan(onCpu[0]! * 0.5);
    expect(onGpu.at(-1)!).toBeLessThan(onGpu[0]! * 0.5);
    for (let i = 0; i < STEPS; i++) expect(Math.abs(onGpu[i]! - onCpu[i]!)).toBeLessThanOrEqual(1e-4 * Math.abs(onCpu[i]!));
    // Every parameter, gradient, optimizer state and activation was freed.
    expect(cpu.memory().liveBuffers).toBe(before);
  });
});
