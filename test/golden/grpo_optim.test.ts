// The optimiser part of the grpo_math golden case (torch 2.6 float32 on CPU, diffusers 0.32.0): AdamW
// steps (single-tensor, foreach, and driven by the LR schedule), clip_grad_norm_, the LR schedule and
// DanceGRPO's EMA, on the CPU backend and on WebGPU. Every number comes from the case's files. The CPU
// backend must reproduce torch's bits; WebGPU within float32 precision (its division and square root
// need not be correctly rounded, and its fma need not fuse: lavapipe's does not).
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { AdamW, EMA, type ScheduleName, clipGradNorm, getScheduler } from '../../src/grpo/optim.ts';
import { type StTensor, readSafetensors, stToFloat32, stTensor } from '../../src/io/safetensors.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { goldenCases, readJson } from './golden.ts';

/**
 * Largest |got - want| relative to the tensor's largest |want| (a float32 ulp is ~6e-8 of a value):
 * an element that cancels to near zero (m + w*(g - m)) keeps the absolute error of its operands.
 */
function maxRel(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let d = 0, scale = 1e-30;
  for (let i = 0; i < want.length; i++) {
    d = Math.max(d, Math.abs(got[i]! - want[i]!));
    scale = Math.max(scale, Math.abs(want[i]!));
  }
  return d / scale;
}

/** Float32 values equal bit for bit (CPU) or within `rel` (WebGPU); returns the difference found. */
function expectClose(what: string, got: Float32Array, want: Float32Array, exact: boolean, rel = 5e-7): number {
  if (exact) {
    const bad = [...want.keys()].filter((i) => !Object.is(got[i], want[i]));
    expect(bad.map((i) => `${what}[${i}]: ${got[i]} vs ${want[i]}`)).toEqual([]);
  }
  const d = maxRel(got, want);
  expect(d, `${what}: max difference relative to max |value|`).toBeLessThanOrEqual(rel);
  return d;
}

/** The scheduler call of case.json: get_scheduler('<name>', optimizer, num_warmup_steps=.., num_training_steps=..). */
function parseScheduler(call: string): { name: ScheduleName; warmupSteps?: number; trainingSteps?: number } {
  const name = /get_scheduler\('(\w+)'/.exec(call)?.[1];
  if (!name) throw new Error(`cannot read the scheduler name from '${call}'`);
  const int = (key: string) => {
    const m = new RegExp(`${key}=(\\d+)`).exec(call);
    return m ? Number(m[1]) : undefined;
  };
  return { name: name as ScheduleName, warmupSteps: int('num_warmup_steps'), trainingSteps: int('num_training_steps') };
}

for (const dir of goldenCases('grpo_math')) {
  const name = dir.split('/').at(-1)!;
  const c = readJson(join(dir, 'case.json'));
  const optimiser = readSafetensors(join(dir, 'optimiser.safetensors'));
  const get = (key: string): StTensor => stTensor(optimiser, key);
  const hp = c.adamw.hyperparameters;
  const nParams: number = c.adamw.param_shapes.length;
  const steps: number = c.adamw.steps;
  const schedule = parseScheduler(c.lr_schedule.call);

  describe.each(['cpu', 'webgpu'] as const)(`${name} optimiser on %s`, (kind) => {
    let dev: Device;
    beforeAll(async () => {
      dev = kind === 'cpu' ? new CpuDevice() : await WebGPUDevice.create();
    });
    afterAll(() => dev?.destroy());
    const exact = kind === 'cpu';
    const upload = (key: string) => {
      const t = get(key);
      return Tensor.from(dev, stToFloat32(t), t.shape, 'f32');
    };
    const download = async (t: Tensor) => (await t.toHost()) as Float32Array;

    for (const [label, run] of Object.entries<any>(c.adamw.runs)) {
      test(`${name} AdamW ${label}: ${steps} steps, param/exp_avg/exp_avg_sq`, async () => {
        const params = Array.from({ length: nParams }, (_, k) => upload(`adamw.init.p${k}`));
        const opt = new AdamW(params, { lr: hp.lr, betas: hp.betas, eps: hp.eps, weightDecay: hp.weight_decay });
        // A run whose lr varies was driven by the case's LR schedule.
        const lrs: number[] = run.lr_used_per_step;
        const sched = lrs.every((lr) => lr === hp.lr) ? null : getScheduler(schedule.name, opt, schedule);
        let worst = 0;
        for (let s = 0; s < steps; s++) {
          expect(opt.lr, `lr of step ${s}`).toBe(lrs[s]);
          params.forEach((p, k) => (p.grad = upload(`adamw.grad.step${s}.p${k}`)));
          opt.step();
          sched?.step();
          opt.zeroGrad();
          const state = await opt.stateDict();
          for (let k = 0; k < nParams; k++) {
            const key = `adamw.${label}.step${s}.p${k}`;
            worst = Math.max(
              worst,
              expectClose(`${key}.param`, await download(params[k]!), stToFloat32(get(`${key}.param`)), exact),
              expectClose(`${key}.exp_avg`, state.state[k]!.expAvg, stToFloat32(get(`${key}.exp_avg`)), exact),
              expectClose(`${key}.exp_avg_sq`, state.state[k]!.expAvgSq, stToFloat32(get(`${key}.exp_avg_sq`)), exact),
            );
            expect(state.state[k]!.step).toBe(s + 1);
          }
        }
        console.log(`${kind} AdamW ${label}: max difference ${worst.toExponential(2)} of max |value|`);
        expect((await opt.stateDict()).state.every((st) => st!.step === run.state_step)).toBe(true);
        opt.dispose();
        params.forEach((p) => p.dispose());
      });
    }

    test(`${name} clip_grad_norm_: total norm and clipped grads per max_norm`, async () => {
      const nGrads = [...optimiser.tensors.keys()].filter((k) => /^clip\.grad_in\.p\d+$/.test(k)).length;
      const byMaxNorm = new Map([...optimiser.tensors.keys()].flatMap((k) => {
        const m = /^clip\.max_norm_(.+)\.total_norm$/.exec(k);
        return m ? [[Number(m[1]), `clip.max_norm_${m[1]}`] as const] : [];
      }));
      for (const row of c.clip_grad_norm_.rows) {
        const prefix = byMaxNorm.get(row.max_norm);
        if (!prefix) throw new Error(`no clip tensors for max_norm ${row.max_norm}`);
        const params = Array.from({ length: nGrads }, (_, k) => {
          const p = Tensor.full(dev, get(`clip.grad_in.p${k}`).shape, 0);
          p.grad = upload(`clip.grad_in.p${k}`);
          return p;
        });
        const total = await clipGradNorm(params, row.max_norm);
        console.log(`${kind} max_norm ${row.max_norm}: total ${total} (torch ${row.total_norm})`);
        // Our float32 sums may round differently from torch's vectorised ones: an ulp or two.
        expect(Math.abs(total - row.total_norm) / row.total_norm).toBeLessThanOrEqual(3e-7);
        expect(Math.abs(total - stToFloat32(get(`${prefix}.total_norm`))[0]!) / row.total_norm).toBeLessThanOrEqual(3e-7);
        for (let k = 0; k < nGrads; k++) {
          expectClose(`${prefix}.grad_out.p${k}`, await download(params[k]!.grad!), stToFloat32(get(`${prefix}.grad_out.p${k}`)), false, 4e-7);
        }
        params.forEach((p) => {
          p.grad!.dispose();
          p.dispose();
        });
      }
    });

    test(`${name} EMA: decay ${c.ema.decay} over the single-tensor AdamW params`, async () => {
      const init = Array.from({ length: nParams }, (_, k) => upload(`adamw.init.p${k}`));
      const ema = new EMA(init, c.ema.decay);
      for (let s = 0; s < steps; s++) {
        const params = Array.from({ length: nParams }, (_, k) => upload(`adamw.single_tensor.step${s}.p${k}.param`));
        ema.update(params);
        for (let k = 0; k < nParams; k++) expectClose(`ema.step${s}.p${k}`, await download(ema.weights[k]!), stToFloat32(get(`ema.step${s}.p${k}`)), exact);
        params.forEach((p) => p.dispose());
      }
      ema.dispose();
      init.forEach((p) => p.dispose());
    });
  });

  test(`${name} LR schedule: ${c.lr_schedule.call.split(' with ')[0]}`, () => {
    const baseLr = Number(/base lr ([0-9.e+-]+)/.exec(c.lr_schedule.call)?.[1] ?? hp.lr);
    const opt = { lr: baseLr };
    const sched = getScheduler(schedule.name, opt, schedule);
    for (const [s, want] of (c.lr_schedule.lr_before_each_optimizer_step as any[]).entries()) {
      expect(opt.lr, `lr before optimizer step ${s}`).toBe(want.param_group_lr);
      expect(sched.lr, `get_last_lr before optimizer step ${s}`).toBe(want.get_last_lr);
      sched.step();
    }
  });
}
