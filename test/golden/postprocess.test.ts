// VaeImageProcessor.postprocess(output_type='pil') on the golden float decodes (fed in as they are: the float image
// is the model's output, tested elsewhere) against the golden uint8 images and the PNG files PIL wrote.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { postprocessToUint8 } from '../../src/io/image.ts';
import { readPng, writePng } from '../../src/io/png.ts';
import { readSafetensors, stToFloat32, type StTensor } from '../../src/io/safetensors.ts';
import { GOLDEN_DIR, goldenCases } from './golden.ts';

const scratch = mkdtempSync(join(tmpdir(), 'postprocess-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function tensor(path: string, name: string): StTensor {
  const t = readSafetensors(path).tensors.get(name);
  if (!t) throw new Error(`${path}: no tensor ${name}`);
  return t;
}

/**
 * Our uint8 images equal the reference bytes ([B, H, W, 3]); a level may differ by one only where the float
 * value before rounding, clamp(x / 2 + 0.5, 0, 1) * 255, lies within 1e-4 of a .5 boundary.
 */
function expectSameImages(got: Uint8Array[], want: Uint8Array, x: Float32Array, shape: [number, number, number, number]): void {
  const [, , height, width] = shape;
  const plane = height * width;
  const unexplained: string[] = [];
  got.forEach((image, b) => {
    for (let p = 0; p < plane; p++) {
      for (let c = 0; c < 3; c++) {
        const ours = image[p * 3 + c]!, theirs = want[(b * plane + p) * 3 + c]!;
        if (ours === theirs) continue;
        const scaled = Math.min(1, Math.max(0, x[(b * 3 + c) * plane + p]! / 2 + 0.5)) * 255;
        const nearHalf = Math.abs(scaled - Math.floor(scaled) - 0.5) < 1e-4;
        if (!nearHalf || Math.abs(ours - theirs) > 1) unexplained.push(`image ${b} pixel ${p} channel ${c}: ${ours} vs ${theirs} (${scaled})`);
      }
    }
  });
  expect(unexplained).toEqual([]);
}

/** Check one decode (`image` [B,3,H,W] float32 beside `image_uint8` [B,H,W,3]) and the PNGs named by `pngOf`. */
function checkDecode(file: string, pngOf: (b: number) => string): void {
  const image = tensor(file, 'image');
  const shape = image.shape as [number, number, number, number];
  const x = stToFloat32(image);
  const got = postprocessToUint8(x, shape);
  const want = tensor(file, 'image_uint8').bytes;
  expectSameImages(got, want, x, shape);
  const [, , height, width] = shape;
  got.forEach((rgb, b) => {
    const png = pngOf(b);
    if (existsSync(png)) expectSameImages([readPng(png).rgb], want.subarray(b * rgb.length, (b + 1) * rgb.length), x.subarray(b * rgb.length), [1, 3, height, width]);
    const ours = join(scratch, `${basename(file, '.safetensors')}_${b}.png`);
    writePng(ours, { width, height, rgb });
    expect(readPng(ours)).toEqual({ width, height, rgb });
  });
}

it('golden cases holding decoded images exist', () => {
  expect([...goldenCases('vae_decoder'), ...goldenCases('grpo_step')], `no decode cases under ${GOLDEN_DIR}`).not.toEqual([]);
});

for (const dir of goldenCases('vae_decoder')) {
  describe(basename(dir), () => {
    it(`${basename(dir)}: postprocess uint8 and image_<b>.png`, () => {
      checkDecode(join(dir, 'outputs.safetensors'), (b) => join(dir, `image_${b}.png`));
    });
  });
}

// grpo_step's decode_reward files hold each iteration's decodes and the PNGs DanceGRPO wrote for them.
for (const dir of goldenCases('grpo_step')) {
  describe(basename(dir), () => {
    const iterations = readdirSync(dir).filter((name) => /^iter\d+$/.test(name) && existsSync(join(dir, name, 'decode_reward.safetensors')));
    for (const iter of iterations) {
      it(`${basename(dir)} ${iter}: postprocess uint8 and images/flux_${iter.slice(4)}_0_<b>.png`, () => {
        checkDecode(join(dir, iter, 'decode_reward.safetensors'), (b) => join(dir, 'images', `flux_${iter.slice(4)}_0_${b}.png`));
      });
    }
  });
}
