// DanceGRPO's LoRA (peft LoraConfig on the FLUX attention projections, diffusers v0.32.0
// save_lora_weights) against our LoraAdapters on FluxTransformer, for every `flux_lora*` golden case:
// the adapter file's layout and a save/reload round trip, the output with the adapter, the gradient
// of every adapter weight (with and without per-block gradient checkpointing), the merged weights
// and the merged model's output, on the CPU reference and on WebGPU. The base model is the sibling
// `flux_transformer` case of the same variant; ranks, alpha, targets and tolerances come from the files.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { backward, noGrad } from '../../src/autograd/functional.ts';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { readSafetensors, stToFloat32, stToFloat64, stTensor } from '../../src/io/safetensors.ts';
import { loadFluxTransformer } from '../../src/models/flux/load.ts';
import type { FluxTransformer } from '../../src/models/flux/model.ts';
import { fluxParameterShapes, fluxParamsFromConfig } from '../../src/models/flux/params.ts';
import { LORA_CONFIG_FILE, LORA_FILE, LoraAdapters } from '../../src/models/lora.ts';
import { Generator, randn } from '../../src/rng/index.ts';
import { disposeFluxInputs, fluxCaseInputs, uploadF32 } from './flux_inputs.ts';
import { goldenCases, readJson, relL2 } from './golden.ts';

interface LoraCase {
  variant?: string;
  seed?: number;
  lora: { rank: number; alpha: number; scale: number; target_modules: string[]; init?: string };
  tolerances: { float32_outputs: number; float32_grads: number };
}

const fmt = (e: Record<string, number>, n = 4) => Object.entries(e).sort((p, q) => q[1] - p[1]).slice(0, n).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', ');

/** The flux_transformer case this LoRA case was made on: the same suffix, else the same variant. */
function baseCase(dir: string, variant: string | undefined): string {
  const byName = join(dirname(dir), basename(dir).replace(/^flux_lora/, 'flux_transformer'));
  const variantOf = (d: string) => (existsSync(join(d, 'case.json')) ? readJson(join(d, 'case.json')).variant : undefined);
  if (existsSync(join(byName, 'config.json')) && variantOf(byName) === variant) return byName;
  const match = goldenCases('flux_transformer').find((d) => variantOf(d) === variant && existsSync(join(d, 'config.json')));
  if (!match) throw new Error(`${dir}: no flux_transformer case of variant ${variant} beside it`);
  return match;
}

for (const dir of goldenCases('flux_lora')) {
  const name = basename(dir);
  const c = readJson<LoraCase>(join(dir, 'case.json'));
  const tol = c.tolerances;
  const base = baseCase(dir, c.variant);
  const loraFile = join(dir, LORA_FILE);
  const golden = readSafetensors(loraFile);
  const outputFile = readSafetensors(join(dir, 'outputs.safetensors'));
  const grads = readSafetensors(join(dir, 'grads.safetensors')).tensors;
  const mergedWeights = readSafetensors(join(dir, 'merged_weights.safetensors')).tensors;
  const expected = (k: string) => stTensor(outputFile, k);
  const { input, modelInputs } = fluxCaseInputs(readSafetensors(join(base, 'inputs.safetensors')));

  describe(`${name} host-side`, () => {
    const tmp = mkdtempSync(join(tmpdir(), `${name}-`));
    afterAll(() => rmSync(tmp, { recursive: true, force: true }));

    test(`${name}: the adapter file loads with the case's rank, alpha, scale and targets`, () => {
      const dev = new CpuDevice();
      const lora = LoraAdapters.load(dev, loraFile);
      expect(lora.config.rank).toBe(c.lora.rank);
      expect(lora.config.alpha).toBe(c.lora.alpha);
      expect(lora.scale).toBe(c.lora.scale);
      expect([...lora.config.targetModules].sort()).toEqual([...c.lora.target_modules].sort());
      expect(lora.parameters().size).toBe(golden.tensors.size);
      lora.dispose();
      dev.destroy();
    });

    test(`${name}: LoraAdapters.create reproduces peft's lora_A init and the case's lora_B draws bit for bit`, async (ctx) => {
      if (typeof c.seed !== 'number' || !/kaiming-uniform/.test(String(c.lora.init)) || !/randn \* 0\.05/.test(String(c.lora.init))) {
        ctx.skip(`${name}: the case does not state the peft + randn*0.05 init`);
      }
      const dev = new CpuDevice();
      // Linear modules in the model's named_modules order (= fluxParameterShapes' order).
      const p = fluxParamsFromConfig(readJson(join(base, 'config.json')));
      const shapes = fluxParameterShapes(p).filter(([n, s]) => n.endsWith('.weight') && s.length === 2).map(([n, s]) => [n.slice(0, -'.weight'.length), s] as const);
      const lora = LoraAdapters.create(dev, shapes, { rank: c.lora.rank, alpha: c.lora.alpha, targetModules: c.lora.target_modules }, new Generator(c.seed!));
      expect([...lora.parameters().keys()].sort()).toEqual([...golden.tensors.keys()].sort());
      const gB = new Generator(c.seed!);
      const f32 = Math.fround;
      let worstA = 0, worstB = 0;
      for (const [m, { a, b }] of lora.modules) {
        const refA = stToFloat32(golden.tensors.get(`transformer.${m}.lora_A.weight`)!);
        (await a.toFloat64()).forEach((v, i) => (worstA = Math.max(worstA, Math.abs(v - refA[i]!))));
        expect((await b.toFloat64()).every((v) => v === 0), `${m} lora_B starts at zero`).toBe(true);
        const refB = stToFloat32(golden.tensors.get(`transformer.${m}.lora_B.weight`)!);
        (randn(gB, b.shape) as Float32Array).forEach((v, i) => (worstB = Math.max(worstB, Math.abs(f32(v * f32(0.05)) - refB[i]!))));
      }
      console.log(`${name} init: lora_A max|d| ${worstA}, lora_B (randn*0.05) max|d| ${worstB}`);
      expect(worstA).toBe(0);
      expect(worstB).toBe(0);
      lora.dispose();
      dev.destroy();
    });

    test(`${name}: save writes the golden file's keys, shapes, metadata and values; reload is identical; lora_config.json is DanceGRPO's`, async () => {
      const dev = new CpuDevice();
      const lora = LoraAdapters.load(dev, loraFile);
      const out = join(tmp, LORA_FILE);
      await lora.save(out);
      lora.saveConfig(tmp);
      const written = readSafetensors(out);
      expect(written.metadata).toEqual(golden.metadata);
      expect([...written.tensors.keys()].sort()).toEqual([...golden.tensors.keys()].sort());
      for (const [k, t] of golden.tensors) {
        const w = written.tensors.get(k)!;
        expect(w.shape, k).toEqual(t.shape);
        expect(Buffer.compare(Buffer.from(w.bytes), Buffer.from(stToFloat32(t).buffer)), k).toBe(0);
      }
      expect(readJson(join(tmp, LORA_CONFIG_FILE))).toEqual(readJson(join(dir, LORA_CONFIG_FILE)));
      expect(readFileSync(join(tmp, LORA_CONFIG_FILE), 'utf8')).toBe(readFileSync(join(dir, LORA_CONFIG_FILE), 'utf8'));
      const back = LoraAdapters.load(dev, out);
      expect(back.config).toEqual(lora.config);
      for (const [k, t] of lora.parameters()) {
        const u = back.parameters().get(k)!;
        expect(u.shape, k).toEqual(t.shape);
        expect(Array.from(await u.toFloat64()), k).toEqual(Array.from(await t.toFloat64()));
      }
      back.dispose();
      lora.dispose();
      dev.destroy();
    });
  });

  describe.each(['cpu', 'webgpu'] as const)(`${name} on %s`, (kind) => {
    let dev: Device;
    let model: FluxTransformer;
    let lora: LoraAdapters;
    beforeAll(async () => {
      dev = kind === 'cpu' ? new CpuDevice() : await WebGPUDevice.create();
      model = loadFluxTransformer(dev, base);
      lora = LoraAdapters.load(dev, loraFile);
    });
    afterAll(() => {
      lora?.dispose();
      model?.dispose();
      dev?.destroy();
    });

    test(`${name}: output with the adapter (${kind})`, async () => {
      model.setLora(lora);
      const x = modelInputs(dev);
      const sample = noGrad(() => model.forward(x));
      const err = relL2(await sample.toFloat64(), stToFloat64(expected('sample')));
      console.log(`${name} ${kind} sample with adapter relL2 ${err.toExponential(2)}`);
      expect(err).toBeLessThanOrEqual(tol.float32_outputs);
      sample.dispose();
      disposeFluxInputs(x);
      model.setLora(null);
    });

    test.each([false, true])(`${name}: gradient of every adapter weight, gradient checkpointing %s (${kind})`, async (ckpt) => {
      model.setLora(lora);
      const live = dev.memory().liveBuffers;
      const x = modelInputs(dev);
      try {
        const sample = model.forward(x, { gradientCheckpointing: ckpt });
        const cot = uploadF32(dev, input('cotangent'));
        backward(sample, cot);
        sample.dispose();
        cot.dispose();
        for (const t of model.parameters().values()) expect(t.grad, 'a base parameter got a gradient').toBeNull();
        const params = lora.parameters();
        expect(grads.size).toBe(params.size);
        const errors: Record<string, number> = {};
        for (const [key, ref] of grads) {
          const t = params.get(key.replace(/^grad\./, ''));
          if (!t) throw new Error(`${key}: no such adapter weight`);
          if (!t.grad) throw new Error(`${key}: no gradient was computed`);
          errors[key] = relL2(await t.grad.toFloat64(), stToFloat64(ref));
        }
        console.log(`${name} ${kind} checkpointing ${ckpt} adapter gradient relL2 worst: ${fmt(errors)}`);
        for (const [k, e] of Object.entries(errors)) expect(e, k).toBeLessThanOrEqual(tol.float32_grads);
        expect(dev.memory().liveBuffers - params.size, 'buffers left after backward besides .grad').toBe(live + 3);
      } finally {
        for (const t of lora.parameters().values()) {
          t.grad?.dispose();
          t.grad = null;
        }
        disposeFluxInputs(x);
        model.setLora(null);
      }
    });

    test(`${name}: merged weights and merged output; unmerge restores the base (${kind})`, async () => {
      const params = model.parameters();
      const before = new Map<string, Float64Array>();
      for (const k of mergedWeights.keys()) before.set(k, await params.get(k)!.toFloat64());
      lora.merge(params);
      const errors: Record<string, number> = {};
      try {
        for (const [k, ref] of mergedWeights) errors[k] = relL2(await params.get(k)!.toFloat64(), stToFloat64(ref));
        const x = modelInputs(dev);
        const merged = noGrad(() => model.forward(x));
        errors.merged_sample = relL2(await merged.toFloat64(), stToFloat64(expected('merged_sample')));
        merged.dispose();
        disposeFluxInputs(x);
      } finally {
        lora.unmerge(params);
      }
      console.log(`${name} ${kind} merged relL2 worst: ${fmt(errors)}`);
      for (const [k, e] of Object.entries(errors)) expect(e, k).toBeLessThanOrEqual(tol.float32_outputs);
      let restored = 0;
      for (const [k, v] of before) restored = Math.max(restored, relL2(await params.get(k)!.toFloat64(), v));
      console.log(`${name} ${kind} unmerge restores the base weights to relL2 ${restored.toExponential(2)}`);
      expect(restored).toBeLessThanOrEqual(1e-6);
    });
  });
}
