// LoRA on the tiny random FLUX transformer and per-block gradient checkpointing (no golden files):
// checkpointing on and off give the same output and gradients with a lower peak, adapters train
// while the base is frozen, merge/unmerge round trip, create/save/load round trip. CPU reference.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { backward, noGrad } from '../../src/autograd/functional.ts';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import { readSafetensors } from '../../src/io/safetensors.ts';
import { Generator, randn } from '../../src/rng/index.ts';
import type { FluxInputs, FluxTransformer } from '../../src/models/flux/model.ts';
import { latentImageIds, textIds } from '../../src/models/flux/pack.ts';
import { type FluxParams, fluxParamsFromConfig } from '../../src/models/flux/params.ts';
import { randomFluxTransformer, tinyFluxConfig } from '../../src/models/flux/tiny.ts';
import { LoraAdapters, linearModuleShapes, matchesTarget } from '../../src/models/lora.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { maxAbs } from '../golden/golden.ts';

const dev = new CpuDevice();
const tmp = mkdtempSync(join(tmpdir(), 'flux-lora-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const TARGETS = ['to_k', 'to_q', 'to_v', 'to_out.0'];

function inputs(p: FluxParams, side = 4, seed = 7): FluxInputs {
  const g = new Generator(seed);
  const t = (shape: number[]) => Tensor.from(dev, randn(g, shape) as Float32Array, shape);
  return {
    hiddenStates: t([1, side * side, p.inChannels]),
    encoderHiddenStates: t([1, 8, p.contextInDim]),
    pooledProjections: t([1, p.vecInDim]),
    timestep: [0.75],
    guidance: p.guidanceEmbed ? [3.5] : null,
    txtIds: textIds(8),
    imgIds: latentImageIds(side, side),
  };
}
const disposeInputs = (x: FluxInputs) => [x.hiddenStates, x.encoderHiddenStates, x.pooledProjections].forEach((t) => t.dispose());


/** Adapters with non-zero B (so the LoRA path and the gradients of A are not trivially zero). */
function adapters(model: FluxTransformer, seed = 3): LoraAdapters {
  const lora = LoraAdapters.create(dev, linearModuleShapes(model.parameters()), { rank: 4, alpha: 8, targetModules: TARGETS }, new Generator(seed));
  const g = new Generator(seed + 1);
  for (const { b } of lora.modules.values()) {
    const v = Tensor.from(dev, Float32Array.from(randn(g, b.shape) as Float32Array, (x) => x * 0.05), b.shape);
    dev.copy(v, b);
    v.dispose();
  }
  return lora;
}

/** Output, loss gradients of every trainable tensor, and the peak bytes of forward + backward. */
async function run(model: FluxTransformer, x: FluxInputs, trainable: Map<string, Tensor>, ckpt: boolean) {
  const shape = [1, x.hiddenStates.shape[1]!, 64];
  const cot = Tensor.from(dev, randn(new Generator(11), shape) as Float32Array, shape);
  dev.resetPeak();
  const base = dev.memory().liveBytes;
  const out = model.forward(x, { gradientCheckpointing: ckpt });
  backward(out, cot);
  const peak = dev.memory().peakBytes - base;
  const grads = new Map<string, Float64Array>();
  for (const [k, t] of trainable) {
    expect(t.grad, k).not.toBeNull();
    grads.set(k, await t.grad!.toFloat64());
    t.grad!.dispose();
    t.grad = null;
  }
  const values = await out.toFloat64();
  out.dispose();
  cot.dispose();
  return { values, grads, peak };
}

describe('flux LoRA and gradient checkpointing (cpu)', () => {
  const p = fluxParamsFromConfig(tinyFluxConfig());

  test('peft target matching', () => {
    expect(matchesTarget('transformer_blocks.0.attn.to_out.0', TARGETS)).toBe(true);
    expect(matchesTarget('transformer_blocks.0.attn.to_add_out', TARGETS)).toBe(false);
    expect(matchesTarget('transformer_blocks.0.attn.add_k_proj', TARGETS)).toBe(false);
    expect(matchesTarget('single_transformer_blocks.1.attn.to_k', TARGETS)).toBe(true);
  });

  test('create: peft init (A uniform within 1/sqrt(in), B zero), 14 modules of the tiny model', async () => {
    const model = randomFluxTransformer(dev, p, new Generator(1));
    const lora = LoraAdapters.create(dev, linearModuleShapes(model.parameters()), { rank: 4, alpha: 8, targetModules: TARGETS }, new Generator(5));
    expect(lora.modules.size).toBe(14);
    expect(lora.scale).toBe(2);
    for (const { a, b } of lora.modules.values()) {
      const av = await a.toFloat64(), bv = await b.toFloat64();
      expect(Math.max(...av.map(Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(a.shape[1]!));
      expect(new Set(av).size).toBeGreaterThan(1);
      expect(bv.every((v) => v === 0)).toBe(true);
      expect(a.requiresGrad && b.requiresGrad).toBe(true);
    }
    // B = 0: the adapted model computes the base model's output.
    const x = inputs(p);
    const y0 = noGrad(() => model.forward(x));
    model.setLora(lora);
    const y1 = noGrad(() => model.forward(x));
    expect(maxAbs(await y1.toFloat64(), await y0.toFloat64())).toBe(0);
    [y0, y1].forEach((t) => t.dispose());
    disposeInputs(x);
    lora.dispose();
    model.dispose();
  });

  test('adapters for modules the model lacks are refused, naming them', () => {
    const model = randomFluxTransformer(dev, p, new Generator(1));
    const shapes = new Map<string, [number, number]>([['transformer_blocks.7.attn.to_q', [8, 8]]]);
    const lora = LoraAdapters.create(dev, shapes, { rank: 2, alpha: 2, targetModules: TARGETS }, new Generator(5));
    expect(() => model.setLora(lora)).toThrow(/does not have: transformer_blocks\.7\.attn\.to_q/);
    lora.dispose();
    model.dispose();
  });

  test('checkpointing on vs off: same output and gradients, lower peak memory (full fine-tune and LoRA)', async () => {
    const model = randomFluxTransformer(dev, p, new Generator(1));
    // 12 x 12 image tokens: enough activations that keeping them outweighs one block's recomputation.
    const x = inputs(p, 12);
    // Full fine-tune: every base parameter trains.
    for (const t of model.parameters().values()) t.requiresGrad = true;
    const full = new Map(model.parameters());
    const off = await run(model, x, full, false);
    const on = await run(model, x, full, true);
    expect(maxAbs(on.values, off.values)).toBe(0);
    let worst = 0;
    for (const [k, g] of off.grads) worst = Math.max(worst, maxAbs(on.grads.get(k)!, g) / Math.max(1e-30, Math.max(...g.map(Math.abs))));
    console.log(`full fine-tune: peak ${off.peak} B without checkpointing, ${on.peak} B with; worst grad max|d|/max|g| ${worst.toExponential(2)}`);
    expect(worst).toBeLessThanOrEqual(1e-6);
    expect(on.peak).toBeLessThan(off.peak);
    for (const t of model.parameters().values()) t.requiresGrad = false;

    // LoRA: only the adapters train, the base stays frozen.
    const lora = adapters(model);
    model.setLora(lora);
    const live = dev.memory().liveBuffers;
    const loff = await run(model, x, lora.parameters(), false);
    const lon = await run(model, x, lora.parameters(), true);
    expect(dev.memory().liveBuffers, 'buffers leaked by forward + backward').toBe(live);
    for (const t of model.parameters().values()) expect(t.grad).toBeNull();
    expect(maxAbs(lon.values, loff.values)).toBe(0);
    let lworst = 0;
    for (const [k, g] of loff.grads) {
      expect(g.some((v) => v !== 0), `${k} gradient is zero`).toBe(true);
      lworst = Math.max(lworst, maxAbs(lon.grads.get(k)!, g) / Math.max(...g.map(Math.abs)));
    }
    console.log(`LoRA: peak ${loff.peak} B without checkpointing, ${lon.peak} B with; worst grad max|d|/max|g| ${lworst.toExponential(2)}`);
    expect(lworst).toBeLessThanOrEqual(1e-6);
    expect(lon.peak).toBeLessThan(loff.peak);
    model.setLora(null);
    disposeInputs(x);
    lora.dispose();
    model.dispose();
  });

  test('merge gives the adapted output without the adapter; unmerge restores the weights', async () => {
    const model = randomFluxTransformer(dev, p, new Generator(1));
    const lora = adapters(model);
    const x = inputs(p);
    const before = new Map<string, Float64Array>();
    for (const [k, t] of model.parameters()) before.set(k, await t.toFloat64());
    model.setLora(lora);
    const adapted = noGrad(() => model.forward(x));
    model.setLora(null);
    lora.merge(model.parameters());
    const merged = noGrad(() => model.forward(x));
    const [av, mv] = [await adapted.toFloat64(), await merged.toFloat64()];
    const scale = Math.max(...av.map(Math.abs));
    expect(maxAbs(mv, av) / scale).toBeLessThanOrEqual(1e-5);
    let changed = 0;
    for (const [k, t] of model.parameters()) if (maxAbs(await t.toFloat64(), before.get(k)!) > 0) changed++;
    expect(changed).toBe(14);
    lora.unmerge(model.parameters());
    let worst = 0;
    for (const [k, t] of model.parameters()) worst = Math.max(worst, maxAbs(await t.toFloat64(), before.get(k)!));
    console.log(`merge/unmerge: merged vs adapted output max|d|/max ${(maxAbs(mv, av) / scale).toExponential(2)}; weights restored to max|d| ${worst.toExponential(2)}`);
    expect(worst).toBeLessThanOrEqual(1e-6);
    [adapted, merged].forEach((t) => t.dispose());
    disposeInputs(x);
    lora.dispose();
    model.dispose();
  });

  test('save/load round trip: same keys, shapes, values, config', async () => {
    const model = randomFluxTransformer(dev, p, new Generator(1));
    const lora = adapters(model);
    const file = join(tmp, 'pytorch_lora_weights.safetensors');
    await lora.save(file);
    lora.saveConfig(tmp);
    const st = readSafetensors(file);
    expect(st.metadata).toEqual({ format: 'pt' });
    expect([...st.tensors.keys()].sort()).toEqual([...lora.parameters().keys()].sort());
    expect(JSON.parse(readFileSync(join(tmp, 'lora_config.json'), 'utf8'))).toEqual({ step: 0, lora_params: { lora_rank: 4, lora_alpha: 8, target_modules: TARGETS } });
    const back = LoraAdapters.load(dev, file);
    expect(back.config).toEqual(lora.config);
    for (const [k, t] of lora.parameters()) {
      const u = back.parameters().get(k)!;
      expect(u.shape, k).toEqual(t.shape);
      expect(maxAbs(await u.toFloat64(), await t.toFloat64()), k).toBe(0);
    }
    back.dispose();
    lora.dispose();
    model.dispose();
  });
});
