// The PickScore reward (a transformers CLIPModel) against every pickscore_reward* golden case: the CLIP
// image processor (PIL bicubic resize of the 8-bit image, centre crop, rescale, normalise), the fast
// tokenizer's ids, normalised image/text embeddings and the score matrix, on the CPU reference and on
// WebGPU; then createReward('pickscore') scoring every (prompt, image) pair in one call.
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createReward } from '../../src/grpo/rewards.ts';
import { ClipTokenizer } from '../../src/io/clip_tokenizer.ts';
import { readPng } from '../../src/io/png.ts';
import { readSafetensors } from '../../src/io/safetensors.ts';
import { loadHfClip } from '../../src/models/clip/load.ts';
import type { ClipModel } from '../../src/models/clip/model.ts';
import { clipImageProcessorConfig, clipImageProcessorSteps, stackChw } from '../../src/models/clip/preprocess.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { cpuAndWebGpuDevices, maxAbs, readJson, relL2, requiredGoldenCases, tensorOf } from './golden.ts';

const cases = requiredGoldenCases('pickscore_reward');
const devices = cpuAndWebGpuDevices();

for (const dir of cases) {
  const name = basename(dir);
  const c = readJson(join(dir, 'case.json'));
  const tol = c.tolerances;
  const expected = readSafetensors(join(dir, 'expected.safetensors'));
  const prompts: string[] = c.prompts;
  const imageFiles: string[] = c.images;
  const images = imageFiles.map((f) => readPng(join(dir, f)));
  const procDir = join(dir, 'processor');
  const modelDir = join(dir, 'model');
  const proc = clipImageProcessorConfig(readJson(join(procDir, 'preprocessor_config.json')));
  const tokenizer = ClipTokenizer.fromDir(procDir, { variant: 'hf_fast', padding: 'longest' });
  const processed = images.map((im) => clipImageProcessorSteps(im, proc));

  describe(`${name}: processor (host)`, () => {
    it(`${name}: PIL bicubic resize of the shortest side (uint8)`, () => {
      processed.forEach((p, i) => {
        const want = tensorOf(expected, `image_${i}.resized_uint8`);
        expect([p.resized.height, p.resized.width, 3], `image_${i} resized shape`).toEqual(want.shape);
        const err = maxAbs(p.resized.rgb, want.data);
        console.log(`${name} image_${i}.resized_uint8: max abs ${err} levels (tol ${tol.resized_uint8_max_abs})`);
        expect(err).toBeLessThanOrEqual(tol.resized_uint8_max_abs);
      });
    });

    it(`${name}: pixel_values after crop, rescale and normalise`, () => {
      processed.forEach((p, i) => {
        const want = tensorOf(expected, `image_${i}.pixel_values`);
        const pv = p.pixelValues;
        expect([pv.channels, pv.height, pv.width]).toEqual(want.shape);
        const err = relL2(pv.data, want.data);
        console.log(`${name} image_${i}.pixel_values: rel L2 ${err.toExponential(2)} (tol ${tol.pixel_values})`);
        expect(err).toBeLessThanOrEqual(tol.pixel_values);
      });
    });

    it(`${name}: fast tokenizer ids`, () => {
      prompts.forEach((p, j) => {
        expect(Array.from(tokenizer.tokenize([p]).inputIds), p).toEqual(Array.from(tensorOf(expected, `prompt_${j}.input_ids`).data));
      });
    });
  });

  describe.each(['cpu', 'webgpu'])(`${name} on %s`, (kind) => {
    let model: ClipModel;
    const imageEmbs: Float64Array[] = [];
    const textEmbs: Float64Array[] = [];

    beforeAll(async () => {
      const dev = devices[kind]!;
      model = loadHfClip(dev, modelDir);
      // All images in one batch; each prompt as DanceGRPO tokenizes it (alone, padding=True adds nothing).
      const { data, shape } = stackChw(processed.map((p) => p.pixelValues));
      const pixels = Tensor.from(dev, data, shape);
      const img = model.imageFeatures(pixels);
      const flat = await img.toFloat64();
      const e = img.shape[1]!;
      for (let i = 0; i < images.length; i++) imageEmbs.push(flat.slice(i * e, (i + 1) * e));
      [pixels, img].forEach((t) => t.dispose());
      for (const p of prompts) {
        const b = tokenizer.tokenize([p]);
        const t = model.textFeatures({ ids: b.inputIds, shape: b.shape });
        textEmbs.push(await t.toFloat64());
        t.dispose();
      }
    });

    afterAll(() => model?.dispose());

    it(`${name} ${kind}: normalised image and text embeddings`, () => {
      imageEmbs.forEach((got, i) => {
        const err = relL2(got, tensorOf(expected, `image_${i}.image_embs`).data);
        console.log(`${name} ${kind} image_${i}.image_embs: rel L2 ${err.toExponential(2)} (tol ${tol.float32_outputs})`);
        expect(err).toBeLessThanOrEqual(tol.float32_outputs);
      });
      textEmbs.forEach((got, j) => {
        const err = relL2(got, tensorOf(expected, `prompt_${j}.text_embs`).data);
        console.log(`${name} ${kind} prompt_${j}.text_embs: rel L2 ${err.toExponential(2)} (tol ${tol.float32_outputs})`);
        expect(err).toBeLessThanOrEqual(tol.float32_outputs);
      });
    });

    it(`${name} ${kind}: createReward('pickscore') on every (prompt, image) pair in one call`, async () => {
      const reward = createReward('pickscore', { device: devices[kind], ckpt: modelDir, tokenizer: procDir });
      const pairs = prompts.flatMap((p) => images.map((im) => ({ p, im })));
      const scores = await reward.score(pairs.map((x) => x.im), pairs.map((x) => x.p));
      reward.dispose();
      const want = tensorOf(expected, 'scores'); // [prompts, images]
      expect(want.shape).toEqual([prompts.length, images.length]);
      const err = maxAbs(scores, want.data);
      console.log(`${name} ${kind} scores: max abs ${err.toExponential(2)} (tol ${tol.scores_abs})`);
      expect(err).toBeLessThanOrEqual(tol.scores_abs);
    });
  });
}

