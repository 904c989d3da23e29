// Training primitives (src/grpo/optim.ts) on the CPU backend and on WebGPU: AdamW against a plain
// float64 AdamW over several steps (with a parameter that misses a gradient), the LR schedules'
// multipliers, clip_grad_norm_ and the EMA against plain float64 formulas, a state-dict round trip
// that continues bit for bit, and no buffer left behind.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../src/device/cpu/device.ts';
import type { Device } from '../src/device/device.ts';
import { WebGPUDevice } from '../src/device/webgpu/device.ts';
import { AdamW, EMA, LRScheduler, clipGradNorm, getScheduler, lrLambda } from '../src/grpo/optim.ts';
import { Tensor } from '../src/tensor/tensor.ts';
import { numel } from '../src/tensor/shape.ts';

/** Deterministic values in [lo, hi). */
function uniform(n: number, lo: number, hi: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return Math.fround(lo + ((hi - lo) * s) / 4294967296);
  });
}

/** max |a - b| / max |b|: agreement at the scale of the tensor. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0, m = 1e-30;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / m;
}

const SHAPES = [[7, 5], [13], [2, 3, 4]];

describe.each(['cpu', 'webgpu'] as const)('%s', (kind) => {
  let dev: Device;
  beforeAll(async () => {
    dev = kind === 'cpu' ? new CpuDevice() : await WebGPUDevice.create();
  });
  afterAll(() => dev?.destroy());

  const params = (seed = 1) => SHAPES.map((s, k) => Tensor.from(dev, uniform(numel(s), -1, 1, seed + k), s));
  const grads = (step: number) => SHAPES.map((s, k) => uniform(numel(s), -0.5, 0.5, 100 + 10 * step + k));
  const host = async (t: Tensor) => [...(await t.toHost())];

  test('AdamW follows a float64 AdamW over 6 steps; a parameter without a gradient is skipped', async () => {
    const lr = 0.02, betas: [number, number] = [0.8, 0.99], eps = 1e-6, wd = 0.05;
    const ps = params();
    const opt = new AdamW(ps, { lr, betas, eps, weightDecay: wd });
    // The float64 reference: torch's formula, the moments starting at zero, per-parameter steps.
    const ref = await Promise.all(ps.map(async (p) => ({ p: await host(p), m: new Array(p.numel).fill(0), v: new Array(p.numel).fill(0), step: 0 })));
    for (let s = 0; s < 6; s++) {
      const gs = grads(s);
      ps.forEach((p, k) => {
        if (k === 1 && s === 2) return; // no gradient this step
        p.grad = Tensor.from(dev, gs[k]!, p.shape);
      });
      opt.step();
      opt.zeroGrad();
      ref.forEach((r, k) => {
        if (k === 1 && s === 2) return;
        r.step++;
        const bc1 = 1 - betas[0] ** r.step, bc2 = 1 - betas[1] ** r.step;
        r.p.forEach((x, i) => {
          const g = gs[k]![i]!;
          r.m[i] = betas[0] * r.m[i]! + (1 - betas[0]) * g;
          r.v[i] = betas[1] * r.v[i]! + (1 - betas[1]) * g * g;
          r.p[i] = x * (1 - lr * wd) - ((lr / bc1) * r.m[i]!) / (Math.sqrt(r.v[i]!) / Math.sqrt(bc2) + eps);
        });
      });
    }
    const sd = await opt.stateDict();
    for (const [k, r] of ref.entries()) {
      expect(relErr(await host(ps[k]!), r.p), `param ${k}`).toBeLessThan(2e-6);
      expect(relErr(sd.state[k]!.expAvg, r.m), `exp_avg ${k}`).toBeLessThan(2e-6);
      expect(relErr(sd.state[k]!.expAvgSq, r.v), `exp_avg_sq ${k}`).toBeLessThan(2e-6);
      expect(sd.state[k]!.step).toBe(r.step);
    }
    expect(sd.state.map((st) => st!.step)).toEqual([6, 5, 6]);
    opt.dispose();
    ps.forEach((p) => p.dispose());
  });

  test('a state dict round trip continues bit for bit', async () => {
    const a = params(7), b = params(7);
    const optA = new AdamW(a, { lr: 0.01, weightDecay: 1e-4 });
    const stepWith = (opt: AdamW, ps: Tensor[], s: number) => {
      const gs = grads(s);
      ps.forEach((p, k) => (p.grad = Tensor.from(dev, gs[k]!, p.shape)));
      opt.step();
      opt.zeroGrad();
    };
    for (let s = 0; s < 2; s++) stepWith(optA, a, s);
    const sd = await optA.stateDict();
    // b takes a's weights and optimizer state, then both go on.
    for (const [k, p] of b.entries()) dev.write(p.buf, 0, (await a[k]!.toHost()) as Float32Array);
    const optB = new AdamW(b, { lr: 0.5 });
    optB.loadStateDict(structuredClone(sd));
    expect([optB.lr, optB.betas, optB.eps, optB.weightDecay]).toEqual([0.01, [0.9, 0.999], 1e-8, 1e-4]);
    for (let s = 2; s < 5; s++) {
      stepWith(optA, a, s);
      stepWith(optB, b, s);
    }
    for (let k = 0; k < a.length; k++) expect(await host(b[k]!)).toEqual(await host(a[k]!));
    expect(() => optB.loadStateDict({ ...sd, state: sd.state.slice(1) })).toThrow(/2 parameter states for 3 parameters/);
    const bad = { ...sd, state: [{ ...sd.state[0]!, expAvg: new Float32Array(3) }, ...sd.state.slice(1)] };
    expect(() => optB.loadStateDict(bad)).toThrow(/parameter 0 \[7,5\] has 35 elements, its state 3 and 35/);
    [optA, optB].forEach((o) => o.dispose());
    [...a, ...b].forEach((p) => p.dispose());
  });

  test.each([0.05, 100])('clipGradNorm with max norm %f: torch total norm, grads times min(1, max/(total+1e-6))', async (maxNorm) => {
    const ps = params();
    const gs = grads(0).map((g, k) => (k === 0 ? g.map((x) => Math.fround(x * 30)) : g)); // one big tensor dominates
    ps.forEach((p, k) => (p.grad = Tensor.from(dev, gs[k]!, p.shape)));
    const total = await clipGradNorm(ps, maxNorm);
    const want = Math.sqrt(gs.flat().reduce((s, x) => s + x * x, 0));
    expect(Math.abs(total - want) / want).toBeLessThan(1e-6);
    const coef = Math.min(1, maxNorm / (want + 1e-6));
    for (const [k, p] of ps.entries()) {
      const got = await host(p.grad!);
      if (coef === 1) expect(got).toEqual(gs[k]); // multiplied by exactly 1
      else expect(relErr(got, gs[k]!.map((x) => x * coef))).toBeLessThan(1e-6);
    }
    ps.forEach((p) => {
      p.grad?.dispose();
      p.dispose();
    });
  });

  test('clipGradNorm without gradients returns 0', async () => {
    const ps = params();
    expect(await clipGradNorm(ps, 1)).toBe(0);
    ps.forEach((p) => p.dispose());
  });

  test('EMA: ema = decay * ema + (1 - decay) * param over 4 updates', async () => {
    const ps = params();
    const ema = new EMA(ps, 0.9);
    const ref = await Promise.all(ps.map(host));
    for (let s = 0; s < 4; s++) {
      const next = SHAPES.map((sh, k) => uniform(numel(sh), -2, 2, 50 + 10 * s + k));
      const cur = next.map((v, k) => Tensor.from(dev, v, SHAPES[k]!));
      ema.update(cur);
      ref.forEach((r, k) => r.forEach((e, i) => (r[i] = 0.9 * e + 0.1 * next[k]![i]!)));
      cur.forEach((t) => t.dispose());
    }
    for (const [k, r] of ref.entries()) expect(relErr(await host(ema.weights[k]!), r)).toBeLessThan(1e-6);
    expect(() => ema.update(ps.slice(1))).toThrow(/2 parameters for 3 averaged weights/);
    ema.dispose();
    ps.forEach((p) => p.dispose());
  });

  test('AdamW, clipping and EMA leave no buffer behind', async () => {
    await dev.sync();
    const before = dev.memory().liveBuffers;
    const ps = params();
    const opt = new AdamW(ps);
    const ema = new EMA(ps);
    for (let s = 0; s < 2; s++) {
      ps.forEach((p, k) => (p.grad = Tensor.from(dev, grads(s)[k]!, p.shape)));
      await clipGradNorm(ps, 0.1);
      opt.step();
      opt.zeroGrad();
      ema.update(ps);
    }
    opt.loadStateDict(await opt.stateDict());
    opt.dispose();
    ema.dispose();
    ps.forEach((p) => p.dispose());
    await dev.sync();
    expect(dev.memory().liveBuffers).toBe(before);
  });
});

describe('LR schedules (diffusers get_scheduler as LambdaLR)', () => {
  const at = (f: (s: number) => number, steps: number[]) => steps.map(f);

  test('constant and constant_with_warmup: the first step has lr 0', () => {
    expect(at(lrLambda('constant'), [0, 5, 1000])).toEqual([1, 1, 1]);
    expect(at(lrLambda('constant_with_warmup', { warmupSteps: 4 }), [0, 1, 2, 3, 4, 100])).toEqual([0, 0.25, 0.5, 0.75, 1, 1]);
    expect(at(lrLambda('constant_with_warmup', { warmupSteps: 0 }), [0, 1])).toEqual([1, 1]);
  });

  test('linear: warmup, then down to 0 at trainingSteps and no lower', () => {
    expect(at(lrLambda('linear', { warmupSteps: 2, trainingSteps: 10 }), [0, 1, 2, 6, 10, 12])).toEqual([0, 0.5, 1, 0.5, 0, 0]);
  });

  test('cosine: a half cosine after warmup (get_scheduler keeps num_cycles 0.5)', () => {
    const f = lrLambda('cosine', { warmupSteps: 2, trainingSteps: 10 });
    expect(at(f, [0, 1, 2, 10])).toEqual([0, 0.5, 1, 0]);
    expect(f(6)).toBeCloseTo(0.5, 15);
    expect(f(4)).toBeCloseTo(0.5 * (1 + Math.cos(Math.PI / 4)), 15);
  });

  test('schedules that need their step counts say so', () => {
    expect(() => lrLambda('constant_with_warmup')).toThrow(/requires warmupSteps/);
    expect(() => lrLambda('cosine', { warmupSteps: 1 })).toThrow(/requires trainingSteps/);
  });

  test('the scheduler sets the optimizer lr as base_lr * lambda(step), step 0 at construction', () => {
    const opt = { lr: 1e-5 };
    const sched = getScheduler('constant_with_warmup', opt, { warmupSteps: 10 });
    const seen = [opt.lr];
    for (let s = 0; s < 11; s++) {
      sched.step();
      seen.push(opt.lr);
    }
    // Python doubles: 1e-05 * (1 / 10.0) = 1.0000000000000002e-06.
    expect(seen.slice(0, 3)).toEqual([0, 1.0000000000000002e-6, 2.0000000000000003e-6]);
    expect(seen.slice(10)).toEqual([1e-5, 1e-5]);
    const resumed = new LRScheduler({ lr: 1e-5 }, lrLambda('constant_with_warmup', { warmupSteps: 10 }));
    resumed.loadStateDict(sched.stateDict());
    expect(resumed.lr).toBe(sched.lr);
  });
});
