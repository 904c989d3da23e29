// Precision modes of the FLUX transformer, on the CPU reference and on WebGPU:
//  - bf16 weight storage (loadFluxTransformer weights: 'bf16'): the linears read bf16 and accumulate
//    in f32, so the output equals that of the f32 load of the same BF16 checkpoint; half the bytes;
//    a BF16 BFL file keeps its bits; LoRA on a bf16 base gets the adapter gradients of the f32 base
//    and merges into it in f32;
//  - bf16 autocast with f32 masters (setComputeDtype('bf16')): linearBf16 against a float64 host
//    model of what torch.autocast computes (rounded operands, rounded result, rounded gradients),
//    the compute copies' refresh after an optimizer step, the whole model near but not equal to
//    f32, equal with and without checkpointing, and a few AdamW steps that lower a loss.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ComputeCopy, linearBf16 } from '../../src/autograd/autocast.ts';
import * as F from '../../src/autograd/functional.ts';
import { backward, noGrad } from '../../src/autograd/functional.ts';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { AdamW } from '../../src/grpo/optim.ts';
import { diffusersToBfl } from '../../src/models/flux/bfl.ts';
import { fluxStateDict, loadFluxTransformer } from '../../src/models/flux/load.ts';
import { writeSafetensors } from '../../src/io/safetensors.ts';
import type { FluxInputs, FluxTransformer } from '../../src/models/flux/model.ts';
import { latentImageIds, textIds } from '../../src/models/flux/pack.ts';
import type { FluxParams } from '../../src/models/flux/params.ts';
import { writeTinyFluxCheckpoint } from '../../src/models/flux/tiny.ts';
import { LoraAdapters, linearModuleShapes } from '../../src/models/lora.ts';
import { Generator, randn } from '../../src/rng/index.ts';
import * as T from '../../src/tensor/ops.ts';
import { bf16BitsToF32, f32ToBf16Bits } from '../../src/tensor/dtype.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { withOverrides } from '../kernels/override.ts';
import { compare } from '../../src/device/conformance.ts';

const tmp = mkdtempSync(join(tmpdir(), 'flux-precision-'));
const devices: Record<'cpu' | 'webgpu', Device> = { cpu: new CpuDevice(), webgpu: null as unknown as Device };
beforeAll(async () => { devices.webgpu = await WebGPUDevice.create(); });
afterAll(() => {
  devices.webgpu.destroy();
  rmSync(tmp, { recursive: true, force: true });
});

/** A BF16 tiny checkpoint (as real FLUX checkpoints ship). */
const ckpt = writeTinyFluxCheckpoint(join(tmp, 'tiny-bf16'), { seed: 5, dtype: 'BF16' });

const bf16 = (x: number) => bf16BitsToF32(f32ToBf16Bits(x));

/** Relative L2 error of got against want (the conformance runner's metric). */
const relL2 = (got: ArrayLike<number>, want: ArrayLike<number>) => compare(got, want).rel;

function inputs(dev: Device, p: FluxParams, seed = 7): FluxInputs {
  const g = new Generator(seed);
  const t = (shape: number[]) => Tensor.from(dev, randn(g, shape) as Float32Array, shape);
  return {
    hiddenStates: t([1, 16, p.inChannels]),
    encoderHiddenStates: t([1, 8, p.contextInDim]),
    pooledProjections: t([1, p.vecInDim]),
    timestep: [0.75],
    guidance: [3.5],
    txtIds: textIds(8),
    imgIds: latentImageIds(4, 4),
  };
}
const disposeInputs = (x: FluxInputs) => [x.hiddenStates, x.encoderHiddenStates, x.pooledProjections].forEach((t) => t.dispose());

/** Output of the model and, with a cotangent, the gradients of `trainable` (cleared afterwards). */
async function forwardBackward(model: FluxTransformer, x: FluxInputs, trainable: Tensor[], ckpt = false) {
  const dev = model.device;
  const shape = [1, 16, 64];
  const cot = Tensor.from(dev, randn(new Generator(11), shape) as Float32Array, shape);
  const out = model.forward(x, { gradientCheckpointing: ckpt });
  backward(out, cot);
  const grads: Float64Array[] = [];
  for (const t of trainable) {
    grads.push(await t.grad!.toFloat64());
    t.grad!.dispose();
    t.grad = null;
  }
  const values = await out.toFloat64();
  out.dispose();
  cot.dispose();
  return { values, grads };
}

const paramBytes = (m: FluxTransformer) => [...m.parameters().values()].reduce((s, t) => s + t.numel * (t.dtype === 'bf16' ? 2 : 4), 0);

describe.each(['cpu', 'webgpu'] as const)('bf16 weight storage (%s)', (kind) => {
  test('linears stay bf16 (half the bytes), norm scales f32; the output is the f32 load\'s', async () => {
    const dev = devices[kind];
    const f32 = loadFluxTransformer(dev, ckpt.dir);
    const b16 = loadFluxTransformer(dev, ckpt.dir, { weights: 'bf16' });
    const ps = b16.parameters();
    expect(ps.get('transformer_blocks.0.attn.to_q.weight')!.dtype).toBe('bf16');
    expect(ps.get('transformer_blocks.0.attn.to_q.bias')!.dtype).toBe('bf16');
    expect(ps.get('transformer_blocks.0.attn.norm_q.weight')!.dtype).toBe('f32');
    expect(paramBytes(b16) / paramBytes(f32)).toBeLessThan(0.51);
    const x = inputs(dev, ckpt.params);
    const [a, b] = await Promise.all([f32, b16].map(async (m) => {
      const y = noGrad(() => m.forward(x));
      const v = await y.toFloat64();
      y.dispose();
      return v;
    }));
    // The same bf16 values accumulate in the same order: equal up to f32 rounding.
    expect(relL2(b!, a!)).toBeLessThan(1e-6);
    disposeInputs(x);
    f32.dispose();
    b16.dispose();
  });

  test('a BF16 BFL single file keeps its bits: the same model as the diffusers folder', async () => {
    const dev = devices[kind];
    const bflFile = join(tmp, 'flux1-tiny-bf16.safetensors');
    writeSafetensors(bflFile, diffusersToBfl(fluxStateDict(ckpt.params, ckpt.weights, 'BF16'), ckpt.params));
    const fromBfl = loadFluxTransformer(dev, bflFile, { config: join(ckpt.dir, 'config.json'), weights: 'bf16' });
    const fromDiff = loadFluxTransformer(dev, ckpt.dir, { weights: 'bf16' });
    for (const [name, t] of fromDiff.parameters()) {
      const other = fromBfl.parameters().get(name)!;
      expect(other.dtype, name).toBe(t.dtype);
      expect(await other.toHost(), name).toEqual(await t.toHost());
    }
    fromBfl.dispose();
    fromDiff.dispose();
  });

  test('LoRA on a bf16 base: the adapter gradients of the f32 base, no base gradient', async () => {
    const dev = devices[kind];
    const results = [];
    for (const weights of ['f32', 'bf16'] as const) {
      const model = loadFluxTransformer(dev, ckpt.dir, { weights });
      const lora = LoraAdapters.create(dev, linearModuleShapes(model.parameters()), { rank: 4, alpha: 8, targetModules: ['to_q', 'to_v', 'proj_mlp'] }, new Generator(3));
      const g = new Generator(4);
      for (const { b } of lora.modules.values()) {
        const v = Tensor.from(dev, Float32Array.from(randn(g, b.shape) as Float32Array, (s) => s * 0.05), b.shape);
        dev.copy(v, b);
        v.dispose();
      }
      model.setLora(lora);
      const x = inputs(dev, model.p);
      const trainable = [...lora.modules.values()].flatMap(({ a, b }) => [a, b]);
      results.push(await forwardBackward(model, x, trainable));
      expect([...model.parameters().values()].every((t) => t.grad === null)).toBe(true);
      disposeInputs(x);
      lora.dispose();
      model.dispose();
    }
    const [f32, b16] = results as [Awaited<ReturnType<typeof forwardBackward>>, Awaited<ReturnType<typeof forwardBackward>>];
    expect(relL2(b16.values, f32.values)).toBeLessThan(1e-6);
    f32.grads.forEach((want, i) => expect(relL2(b16.grads[i]!, want), `adapter tensor ${i}`).toBeLessThan(1e-5));
  });

  test('LoRA merge into a bf16 base: W + scale B A computed in f32, rounded once', async () => {
    const dev = devices[kind];
    const model = loadFluxTransformer(dev, ckpt.dir, { weights: 'bf16' });
    const lora = LoraAdapters.create(dev, linearModuleShapes(model.parameters()), { rank: 2, alpha: 4, targetModules: ['to_k'] }, new Generator(8));
    const { a, b, scale } = lora.modules.get('transformer_blocks.0.attn.to_k')!;
    const bv = Tensor.from(dev, Float32Array.from({ length: b.numel }, (_, i) => 0.01 * ((i % 7) - 3)), b.shape);
    dev.copy(bv, b);
    bv.dispose();
    const w = model.parameters().get('transformer_blocks.0.attn.to_k.weight')!;
    const [w0, av, bh] = await Promise.all([w.toFloat64(), a.toFloat64(), b.toFloat64()]);
    const [n, k] = w.shape as [number, number], r = a.shape[0]!;
    lora.merge(model.parameters());
    const merged = await w.toFloat64();
    expect(w.dtype).toBe('bf16');
    const want = new Float64Array(n * k);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < k; j++) {
        let ba = 0;
        for (let q = 0; q < r; q++) ba += bh[i * r + q]! * av[q * k + j]!;
        want[i * k + j] = bf16(Math.fround(w0[i * k + j]! + Math.fround(scale * Math.fround(ba))));
      }
    }
    expect(relL2(merged, w0)).toBeGreaterThan(1e-2);
    // Exact on the CPU; WebGPU's f32 sums may flip a rare rounding by one bf16 ulp (2^-8).
    expect(relL2(merged, want)).toBeLessThan(kind === 'cpu' ? 1e-12 : 1e-3);
    lora.dispose();
    model.dispose();
  });
});

/** Host float64 model of torch.autocast's bf16 linear, forward and backward, for x [R, K], w [N, K]. */
function autocastLinearReference(x: Float64Array, w: Float64Array, b: Float64Array, g: Float64Array, r: number, k: number, n: number) {
  const [x16, w16, b16, g16] = [x, w, b, g].map((v) => v.map(bf16));
  const round = (v: number) => bf16(Math.fround(v));
  const y = new Float64Array(r * n), gx = new Float64Array(r * k), gw = new Float64Array(n * k), gb = new Float64Array(n);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < n; j++) {
      let acc = b16[j]!;
      for (let q = 0; q < k; q++) acc += x16[i * k + q]! * w16[j * k + q]!;
      y[i * n + j] = round(acc);
    }
  }
  for (let i = 0; i < r; i++) for (let q = 0; q < k; q++) {
    let acc = 0;
    for (let j = 0; j < n; j++) acc += g16[i * n + j]! * w16[j * k + q]!;
    gx[i * k + q] = round(acc);
  }
  for (let j = 0; j < n; j++) {
    for (let q = 0; q < k; q++) {
      let acc = 0;
      for (let i = 0; i < r; i++) acc += g16[i * n + j]! * x16[i * k + q]!;
      gw[j * k + q] = round(acc);
    }
    let acc = 0;
    for (let i = 0; i < r; i++) acc += g16[i * n + j]!;
    gb[j] = round(acc);
  }
  return { y, gx, gw, gb };
}

describe.each(['cpu', 'webgpu'] as const)('bf16 autocast with f32 masters (%s)', (kind) => {
  test('linearBf16: rounded operands, f32 accumulation, rounded result and gradients', async () => {
    const dev = devices[kind];
    const [r, k, n] = [6, 37, 20];
    const gen = new Generator(21);
    const leaf = (shape: number[]) => {
      const t = Tensor.from(dev, randn(gen, shape) as Float32Array, shape);
      t.requiresGrad = true;
      return t;
    };
    const [x, w, b] = [leaf([r, k]), leaf([n, k]), leaf([n])];
    const g = Tensor.from(dev, randn(gen, [r, n]) as Float32Array, [r, n]);
    const [wc, bc] = [new ComputeCopy(w), new ComputeCopy(b)];
    const y = linearBf16(x, wc, bc);
    expect(y.dtype).toBe('f32');
    backward(y, g);
    const want = autocastLinearReference(...(await Promise.all([x, w, b, g].map((t) => t.toFloat64()))) as [Float64Array, Float64Array, Float64Array, Float64Array], r, k, n);
    const got = { y: await y.toFloat64(), gx: await x.grad!.toFloat64(), gw: await w.grad!.toFloat64(), gb: await b.grad!.toFloat64() };
    // Exact on the CPU (float64 sums rounded once, as the host model); WebGPU sums in f32, which
    // can flip a rare bf16 rounding by one ulp (2^-8 relative).
    const tol = kind === 'cpu' ? 0 : 2e-3;
    for (const key of ['y', 'gx', 'gw', 'gb'] as const) {
      expect(got[key].every((v) => v === bf16(v)), `${key} holds bf16 values`).toBe(true);
      expect(relL2(got[key], want[key]), key).toBeLessThanOrEqual(tol);
    }
    // Not the f32 result: the rounding is really applied.
    const plain = noGrad(() => T.linear(x, w, b));
    expect(relL2(got.y, await plain.toFloat64())).toBeGreaterThan(1e-3);
    for (const t of [x, w, b, g, y, plain, x.grad!, w.grad!, b.grad!]) t.dispose();
    wc.dispose();
    bc.dispose();
  });

  test('a compute copy is converted once, and again after the master is updated by AdamW', async () => {
    let conversions = 0;
    const real = devices[kind];
    const dev = withOverrides(real, {
      copy: (src: Tensor, out: Tensor) => {
        if (src.buf === w.buf) conversions++; // conversions of the master
        real.copy(src, out);
      },
    });
    const gen = new Generator(5);
    const w = Tensor.from(dev, randn(gen, [8, 12]) as Float32Array, [8, 12]);
    w.requiresGrad = true;
    const x = Tensor.from(dev, randn(gen, [3, 12]) as Float32Array, [3, 12]);
    const copy = new ComputeCopy(w);
    const opt = new AdamW([w], { lr: 0.1 });
    const step = async () => {
      const y = linearBf16(x, copy, null);
      const values = await y.toFloat64();
      backward(y, Tensor.full(dev, y.shape, 1));
      y.dispose();
      return values;
    };
    const y0 = await step();
    const y1 = await step();
    expect(conversions).toBe(1);
    expect(y1).toEqual(y0);
    opt.step();
    opt.zeroGrad();
    const y2 = await step();
    expect(conversions).toBe(2);
    const fresh = new ComputeCopy(w);
    const y3 = noGrad(() => linearBf16(x, fresh, null));
    expect(y2).toEqual(await y3.toFloat64());
    expect(relL2(y2, y0)).toBeGreaterThan(1e-2);
    // Disposed, the copy is made again from the master on the next call.
    copy.dispose();
    const y4 = noGrad(() => linearBf16(x, copy, null));
    expect(await y4.toFloat64()).toEqual(y2);
    expect(conversions).toBe(4); // 2 by `copy` before, 1 by `fresh`, this one
    y4.dispose();
    for (const t of [w, x, y3]) t.dispose();
    w.grad?.dispose();
    copy.dispose();
    fresh.dispose();
    opt.dispose();
  });

  test('the model under autocast: near the f32 output, not equal; checkpointing changes nothing', async () => {
    const dev = devices[kind];
    const model = loadFluxTransformer(dev, ckpt.dir);
    const trainable = [...model.parameters().values()];
    for (const t of trainable) t.requiresGrad = true;
    const x = inputs(dev, model.p);
    const f32 = await forwardBackward(model, x, trainable);
    model.setComputeDtype('bf16');
    const b16 = await forwardBackward(model, x, trainable);
    const b16ckpt = await forwardBackward(model, x, trainable, true);
    const live = dev.memory().liveBytes; // with the compute copies
    const err = relL2(b16.values, f32.values);
    expect(err).toBeGreaterThan(1e-4);
    expect(err).toBeLessThan(3e-2);
    expect(relL2(b16ckpt.values, b16.values)).toBe(0);
    b16.grads.forEach((g, i) => {
      expect(relL2(g, f32.grads[i]!), `gradient ${i} near f32`).toBeLessThan(0.1);
      expect(relL2(b16ckpt.grads[i]!, g), `gradient ${i} with checkpointing`).toBe(0);
    });
    // Back to f32 frees the compute copies and gives the f32 result again.
    model.setComputeDtype('f32');
    expect(dev.memory().liveBytes).toBeLessThan(live);
    expect(relL2((await forwardBackward(model, x, trainable)).values, f32.values)).toBe(0);
    disposeInputs(x);
    model.dispose();
  });

  test('full fine-tuning under autocast: AdamW on the f32 masters lowers a loss', async () => {
    const dev = devices[kind];
    const model = loadFluxTransformer(dev, ckpt.dir);
    model.setComputeDtype('bf16');
    const params = [...model.parameters().values()];
    for (const t of params) t.requiresGrad = true;
    const opt = new AdamW(params, { lr: 3e-3, weightDecay: 0 });
    const x = inputs(dev, model.p);
    const losses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const out = model.forward(x);
      const sq = F.mul(out, out);
      const flat = F.reshape(sq, [-1]);
      const loss = F.mean(flat, 0);
      losses.push((await loss.toFloat64())[0]!);
      backward(loss);
      opt.step();
      opt.zeroGrad();
      [out, sq, flat, loss].forEach((t) => t.dispose());
    }
    expect(losses.at(-1)!).toBeLessThan(0.9 * losses[0]!);
    expect(params.every((t) => t.dtype === 'f32')).toBe(true);
    opt.dispose();
    disposeInputs(x);
    model.dispose();
  });
});

test('autocast on CPU and WebGPU agree (up to bf16 rounding flips of f32 sums)', async () => {
  const outs = [];
  for (const kind of ['cpu', 'webgpu'] as const) {
    const model = loadFluxTransformer(devices[kind], ckpt.dir);
    model.setComputeDtype('bf16');
    const x = inputs(devices[kind], model.p);
    const y = noGrad(() => model.forward(x));
    outs.push(await y.toFloat64());
    y.dispose();
    disposeInputs(x);
    model.dispose();
  }
  expect(relL2(outs[1]!, outs[0]!)).toBeLessThan(5e-3);
});
