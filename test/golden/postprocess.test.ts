// VaeImageProcessor.postprocess(output_type='pil') on the golden float decodes (fed in as they are: the float image
// is the model's output, tested elsewhere) against the golden uint8 images and the PNG files PIL wrote.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { postprocessToUint8 } from '../../src/io/image.ts';
import { readPng, writePng } from '../../src/io/png.ts';
import { readSafetensors, stToFloat32, type StTensor, stTensor } from '../../src/io/safetensors.ts';
import { expectSameUint8Images, GOLDEN_DIR, goldenCases } from './golden.ts';

const scratch = mkdtempSync(join(tmpdir(), 'postprocess-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function tensor(path: string, name: string): StTensor {
  return stTensor(readSafetensors(path), name);
}

/** Check one decode (`image` [B,3,H,W] float32 beside `image_uint8` [B,H,W,3]) and the PNGs named by `pngOf`. */
function checkDecode(file: string, pngOf: (b: number) => string): void {
  const image = tensor(file, 'image');
  const shape = image.shape as [number, number, number, number];
  const x = stToFloat32(image);
  const got = postprocessToUint8(x, shape);
  const want = tensor(file, 'image_uint8').bytes;
  expectSameUint8Images(got, want, x, shape);
  const [, , height, width] = shape;
  got.forEach((rgb, b) => {
    const png = pngOf(b);
    if (existsSync(png)) expectSameUint8Images([readPng(png).rgb], want.subarray(b * rgb.length, (b + 1) * rgb.length), x.subarray(b * rgb.length), [1, 3, height, width]);
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
