// The HPS reward (HPSv2's open_clip CLIP) against every clip_reward* golden case: each preprocess_val step,
// the model's intermediates, unnormalised and normalised features, logits and the HPS score, on the CPU
// reference and on WebGPU; then the whole reward (PNG + prompt text -> score) through createReward('hps').
// Configs, files, prompts and tolerances come from each case's own case.json / MANIFEST.json.
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createReward } from '../../src/grpo/rewards.ts';
import { readPng } from '../../src/io/png.ts';
import { readSafetensors } from '../../src/io/safetensors.ts';
import { loadClip, openClipParams, openStateDict } from '../../src/models/clip/load.ts';
import { type ClipModel, similarity } from '../../src/models/clip/model.ts';
import {
  type ChwImage, hpsPreprocessSteps, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resizeBicubicAA, stackChw,
} from '../../src/models/clip/preprocess.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { cpuAndWebGpuDevices, goldenCases, maxAbs, readJson, relL2, requiredGoldenCases, tensorOf } from './golden.ts';

/** Checks shape and relative L2 error, logging the error so runs report what they measured. */
function expectClose(label: string, got: { shape: readonly number[]; data: ArrayLike<number> }, want: { shape: number[]; data: Float64Array }, tol: number): void {
  expect(got.shape, `${label} shape`).toEqual(want.shape);
  const err = relL2(got.data, want.data);
  console.log(`${label}: rel L2 ${err.toExponential(2)} (tol ${tol})`);
  expect(err, label).toBeLessThanOrEqual(tol);
}

/** mean/std of the Normalize step as printed in case.json preprocess_val, else OpenAI's. */
function normalizeStats(c: any): { mean: number[]; std: number[] } {
  const text = (c.preprocess_val ?? []).join(' ');
  const m = /mean=\(([^)]*)\), std=\(([^)]*)\)/.exec(text);
  if (!m) return { mean: [...OPENAI_CLIP_MEAN], std: [...OPENAI_CLIP_STD] };
  return { mean: m[1]!.split(',').map(Number), std: m[2]!.split(',').map(Number) };
}

const STEP_OF: Record<string, keyof ReturnType<typeof hpsPreprocessSteps>> = {
  ToTensor: 'toTensor', ResizeMaxSize: 'resizeMaxSize', MaskAwareNormalize: 'normalize', Normalize: 'normalize',
};

/** Intermediates the reference hooks record sequence-first ([L, B, D]); ours are batch-first. */
const SEQUENCE_FIRST = new Set(['visual.transformer', 'transformer']);

const chw = (im: ChwImage) => ({ shape: [im.channels, im.height, im.width], data: im.data });

const cases = requiredGoldenCases('clip_reward');
const devices = cpuAndWebGpuDevices();

const openClipVocab = goldenCases('tokenizer').map((d) => join(d, 'bpe_simple_vocab_16e6.txt.gz')).find(existsSync);

for (const dir of cases) {
  const name = basename(dir);
  const c = readJson(join(dir, 'case.json'));
  const manifest = readJson(join(dir, 'MANIFEST.json'));
  const tol = c.tolerances;
  const configFile = join(dir, `${c.model_name}.json`);
  const config = existsSync(configFile) ? readJson(configFile) : c.model_config;
  const params = openClipParams(config);
  const imageSize: number = c.resize_max_size?.max_size ?? params.vision.imageSize;
  const { mean, std } = normalizeStats(c);
  const weightFiles = Object.entries(manifest.files as Record<string, { role: string }>).filter(([, f]) => f.role === 'weights').map(([f]) => join(dir, f));
  const images = (c.images as { file: string }[]).map((im) => readPng(join(dir, im.file)));

  describe(`${name}: preprocess_val (host)`, () => {
    const steps = readSafetensors(join(dir, 'preprocess_steps.safetensors'));
    const ours = images.map((im) => hpsPreprocessSteps(im, imageSize, mean, std));
    const keys = [...steps.tensors.keys()].map((k) => /^image(\d+)\.step(\d+)\.(\w+)$/.exec(k)).filter((m): m is RegExpExecArray => !!m);

    it(`${name}: every stored step of every image`, () => {
      expect(keys.length).toBeGreaterThan(0);
      for (const [key, i, , cls] of keys) {
        const step = STEP_OF[cls!];
        if (!step) throw new Error(`${key}: unknown transform ${cls}`);
        expectClose(`${name} ${key}`, chw(ours[Number(i)]![step]), tensorOf(steps, key), tol.preprocess_steps);
      }
    });

    it(`${name}: the bicubic antialias resize on the shortest-side variant (reference-only steps)`, () => {
      const variant = [...steps.tensors.keys()].map((k) => /^centercrop_variant\.image(\d+)\.step\d+\.Resize$/.exec(k)).filter((m): m is RegExpExecArray => !!m);
      for (const [key, i] of variant) {
        const want = tensorOf(steps, key);
        const got = resizeBicubicAA(ours[Number(i)]!.toTensor, want.shape[1]!, want.shape[2]!);
        expectClose(`${name} ${key}`, chw(got), want, tol.preprocess_steps);
      }
    });

    it(`${name}: pixel_values (the stacked model input)`, () => {
      const { data, shape } = stackChw(ours.map((s) => s.normalize));
      expectClose(`${name} pixel_values`, { shape, data }, tensorOf(readSafetensors(join(dir, 'inputs.safetensors')), 'pixel_values'), tol.preprocess_steps);
    });
  });

  describe.each(['cpu', 'webgpu'])(`${name} on %s`, (kind) => {
    const inputs = readSafetensors(join(dir, 'inputs.safetensors'));
    const outputs = readSafetensors(join(dir, 'outputs.safetensors'));
    const inter = readSafetensors(join(dir, 'intermediates.safetensors'));
    const pv = tensorOf(inputs, 'pixel_values');
    const ids = tensorOf(inputs, 'input_ids');
    const got = new Map<string, { shape: number[]; data: Float64Array }>();
    const models: ClipModel[] = [];

    beforeAll(async () => {
      const dev = devices[kind]!;
      for (const file of weightFiles) {
        const sd = openStateDict(file);
        models.push(loadClip(dev, sd, params, file));
        sd.close?.();
      }
      const model = models[0]!;
      const captured = new Map<string, Tensor>();
      const pixels = Tensor.from(dev, Float32Array.from(pv.data), pv.shape);
      const tokens = { ids: Int32Array.from(ids.data), shape: ids.shape as [number, number] };
      const imgRaw = model.encodeImage(pixels, captured);
      const txtRaw = model.encodeText(tokens, { intermediates: captured });
      const img = model.imageFeatures(pixels);
      const txt = model.textFeatures(tokens);
      const logits = similarity(img, txt);
      const read = async (t: Tensor, shape: readonly number[] = t.shape) => ({ shape: [...shape], data: await t.toFloat64() });
      for (const [k, t] of captured) {
        const v = SEQUENCE_FIRST.has(k) ? t.permute([1, 0, 2]) : t.view(t.shape, t.strides);
        got.set(`intermediate ${k}`, await read(v));
        [v, t].forEach((x) => x.dispose());
      }
      got.set('image_embeds_unnormalized', await read(imgRaw));
      got.set('text_embeds_unnormalized', await read(txtRaw));
      got.set('image_features', await read(img));
      got.set('text_features', await read(txt));
      got.set('logits_per_image', await read(logits));
      // Every other checkpoint file of the case (safetensors next to the .pt) must give the same features.
      for (const [i, m] of models.entries()) {
        if (i === 0) continue;
        const f = m.imageFeatures(pixels);
        got.set(`image_features via ${basename(weightFiles[i]!)}`, await read(f));
        f.dispose();
      }
      [pixels, imgRaw, txtRaw, img, txt, logits].forEach((t) => t.dispose());
    });

    afterAll(() => models.forEach((m) => m.dispose()));

    it(`${name} ${kind}: intermediates`, () => {
      expect(inter.tensors.size).toBeGreaterThan(0);
      for (const key of inter.tensors.keys()) {
        const ours = got.get(`intermediate ${key}`);
        if (!ours) throw new Error(`no intermediate '${key}' captured`);
        expectClose(`${name} ${kind} ${key}`, ours, tensorOf(inter, key), tol.float32_intermediates);
      }
    });

    it(`${name} ${kind}: features (unnormalised and normalised) and logits`, () => {
      for (const key of ['image_embeds_unnormalized', 'text_embeds_unnormalized', 'image_features', 'text_features', 'logits_per_image']) {
        expectClose(`${name} ${kind} ${key}`, got.get(key)!, tensorOf(outputs, key), tol.float32_outputs);
      }
      for (const file of weightFiles.slice(1)) {
        expectClose(`${name} ${kind} image_features via ${basename(file)}`, got.get(`image_features via ${basename(file)}`)!, tensorOf(outputs, 'image_features'), tol.float32_outputs);
      }
    });

    it(`${name} ${kind}: HPS score = diag(image_features @ text_features^T)`, () => {
      const want = tensorOf(outputs, 'hps_score');
      const logits = got.get('logits_per_image')!;
      const n = logits.shape[1]!;
      const diag = Array.from({ length: want.data.length }, (_, i) => logits.data[i * n + i]!);
      const err = maxAbs(diag, want.data);
      console.log(`${name} ${kind} hps_score: max abs ${err.toExponential(2)} (tol ${tol.hps_score_abs})`);
      expect(err).toBeLessThanOrEqual(tol.hps_score_abs);
    });

    it.skipIf(openClipVocab === undefined)(`${name} ${kind}: createReward('hps') from the PNGs and prompt texts`, async () => {
      const weights = weightFiles.find((f) => f.endsWith('.pt')) ?? weightFiles[0]!;
      let cfgPath = configFile;
      if (!existsSync(cfgPath)) {
        cfgPath = join(mkdtempSync(join(tmpdir(), 'clip-reward-')), 'config.json');
        writeFileSync(cfgPath, JSON.stringify(config));
      }
      const reward = createReward('hps', { device: devices[kind], ckpt: weights, config: cfgPath, tokenizer: openClipVocab });
      const prompts = (c.prompts as { text: string }[]).map((p) => p.text);
      // Every image against every prompt, in one call (one batch): the reference's logits_per_image.
      const pairs = images.flatMap((im) => prompts.map((p) => ({ im, p })));
      const scores = await reward.score(pairs.map((x) => x.im), pairs.map((x) => x.p));
      reward.dispose();
      const want = tensorOf(outputs, 'logits_per_image');
      const err = maxAbs(scores, want.data);
      console.log(`${name} ${kind} reward scores: max abs ${err.toExponential(2)} (tol ${tol.hps_score_abs})`);
      expect(scores.length).toBe(want.data.length);
      expect(err).toBeLessThanOrEqual(tol.hps_score_abs);
    });
  });
}
