// The FLUX VAE decoder against diffusers 0.32.0 on every `vae_decoder*` and `vae_tiled*` case, on the CPU
// reference and on WebGPU. Everything (config, nominal image size, tiling sizes, tolerances) comes from
// the case's own files.
//  vae_decoder: packed latents -> unpack_latents -> / scaling + shift -> decode (intermediates per stage)
//               -> float image -> VaeImageProcessor.postprocess uint8 -> PNG.
//  vae_tiled:   the same weights through tiled_decode (sizes from case.json, checked against the config's
//               derivation) and through the plain decode.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { readPng } from '../../src/io/png.ts';
import { readSafetensors, stToFloat32, type StTensor, stTensor } from '../../src/io/safetensors.ts';
import { AutoencoderKL } from '../../src/models/vae/autoencoder.ts';
import { type TilingParams, readVaeConfig, tilingFromConfig } from '../../src/models/vae/config.ts';
import { savePngs, unpackLatents, unscaleLatents } from '../../src/models/vae/pipeline.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { expectSameUint8Images, GOLDEN_DIR, goldenCases, readJson } from './golden.ts';

const decoderCases = goldenCases('vae_decoder');
const tiledCases = goldenCases('vae_tiled');
const scratch = mkdtempSync(join(tmpdir(), 'vae-golden-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function upload(dev: Device, t: StTensor): Tensor {
  return Tensor.from(dev, stToFloat32(t), t.shape, 'f32');
}

/** ||got - want|| / ||want||, with the shapes checked first. */
async function relL2(got: Tensor, want: StTensor): Promise<number> {
  expect(got.shape).toEqual(want.shape);
  const a = await got.toFloat64(), b = stToFloat32(want);
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-300));
}

async function expectClose(label: string, got: Tensor, want: StTensor, tol: number): Promise<void> {
  const err = await relL2(got, want);
  console.log(`${label}: rel L2 ${err.toExponential(2)} (tolerance ${tol})`);
  expect(err, label).toBeLessThanOrEqual(tol);
}

interface DecoderCase {
  nominal_image_hw_for_unpack: [number, number];
  vae_scale_factor_for_unpack?: number;
  tolerances: { float32_outputs: number; float32_intermediates?: number };
}

interface TiledCase {
  variant?: string;
  tiling: { tile_sample_min_size: number; tile_latent_min_size: number; latent_stride: number; blend_extent_pixels: number; row_limit_pixels: number; upsampling?: number };
  tolerances: { float32_outputs: number };
}

/** The weights of a vae_tiled case: its own file, else the vae_decoder case of the same variant (or folder suffix). */
function tiledWeights(dir: string, c: TiledCase): string {
  const own = join(dir, 'diffusion_pytorch_model.safetensors');
  if (existsSync(own)) return own;
  const byVariant = decoderCases.find((d) => readJson(join(d, 'case.json')).variant === c.variant);
  const bySuffix = join(GOLDEN_DIR, basename(dir).replace(/^vae_tiled/, 'vae_decoder'));
  const dec = byVariant ?? (existsSync(bySuffix) ? bySuffix : undefined);
  if (!dec) throw new Error(`${dir}: no weights and no vae_decoder case of variant ${c.variant}`);
  return join(dec, 'diffusion_pytorch_model.safetensors');
}

it('golden VAE cases exist', () => {
  expect(decoderCases, `no vae_decoder cases under ${GOLDEN_DIR}`).not.toEqual([]);
  expect(tiledCases, `no vae_tiled cases under ${GOLDEN_DIR}`).not.toEqual([]);
});

describe.each(['cpu', 'webgpu'] as const)('%s', (kind) => {
  let dev: Device;
  beforeAll(async () => {
    dev = kind === 'cpu' ? new CpuDevice() : await WebGPUDevice.create();
  });
  afterAll(() => dev?.destroy());

  for (const dir of decoderCases) {
    const name = basename(dir);
    describe(name, () => {
      const c = readJson<DecoderCase>(join(dir, 'case.json'));
      const outputs = readSafetensors(join(dir, 'outputs.safetensors'));
      const [height, width] = c.nominal_image_hw_for_unpack;
      let vae: AutoencoderKL;
      let packed: Tensor;
      beforeAll(() => {
        // DanceGRPO calls vae.enable_tiling(); tiling engages only for latents larger than a tile.
        vae = AutoencoderKL.fromPretrained(dev, dir).enableTiling();
        packed = upload(dev, stTensor(readSafetensors(join(dir, 'inputs.safetensors')), 'packed_latents'));
      });
      afterAll(() => {
        vae?.dispose();
        packed?.dispose();
      });

      it(`${name} (${kind}): unpack_latents and latents / scaling_factor + shift_factor`, async () => {
        const unpacked = unpackLatents(packed, height, width, c.vae_scale_factor_for_unpack ?? 8);
        const z = unscaleLatents(vae, unpacked);
        if (outputs.tensors.has('unpacked_latents')) await expectClose(`${name} ${kind} unpacked_latents`, unpacked, stTensor(outputs, 'unpacked_latents'), c.tolerances.float32_outputs);
        if (outputs.tensors.has('decoder_input')) await expectClose(`${name} ${kind} decoder_input`, z, stTensor(outputs, 'decoder_input'), c.tolerances.float32_outputs);
        unpacked.dispose();
        z.dispose();
      });

      it(`${name} (${kind}): decoder stages, float image, uint8 image and PNG`, async () => {
        const baseline = dev.memory().liveBuffers;
        const stages = new Map<string, Tensor>();
        const unpacked = unpackLatents(packed, height, width, c.vae_scale_factor_for_unpack ?? 8);
        const z = unscaleLatents(vae, unpacked);
        unpacked.dispose();
        const image = vae.decode(z, (stage, x) => stages.set(stage, x.contiguous()));
        const intermediatesFile = join(dir, 'intermediates.safetensors');
        // a tiled decode runs the decoder once per tile: the reference's hooks then saw tiles, not the image
        const tiled = vae.tiling !== null && Math.max(z.shape[2]!, z.shape[3]!) > vae.tiling.tileLatentMinSize;
        if (existsSync(intermediatesFile) && !tiled) {
          const want = readSafetensors(intermediatesFile).tensors;
          const tol = c.tolerances.float32_intermediates ?? c.tolerances.float32_outputs;
          for (const [stage, t] of want) {
            expect(stages.has(stage), `no decoder stage ${stage}`).toBe(true);
            await expectClose(`${name} ${kind} ${stage}`, stages.get(stage)!, t, tol);
          }
        }
        stages.forEach((t) => t.dispose());
        z.dispose();

        const wantImage = stTensor(outputs, 'image');
        await expectClose(`${name} ${kind} image`, image, wantImage, c.tolerances.float32_outputs);

        const images = await savePngs(image, (b) => join(scratch, `${name}_${kind}_${b}.png`));
        const ref = stToFloat32(wantImage);
        expectSameUint8Images(images.map((im) => im.rgb), stTensor(outputs, 'image_uint8').bytes, ref, wantImage.shape);
        images.forEach((im, b) => {
          expect(readPng(join(scratch, `${name}_${kind}_${b}.png`))).toEqual(im);
          const png = join(dir, `image_${b}.png`);
          if (existsSync(png)) {
            const plane = im.rgb.length;
            expectSameUint8Images([im.rgb], readPng(png).rgb, ref.subarray(b * plane, (b + 1) * plane), [1, 3, im.height, im.width]);
          }
        });
        image.dispose();
        expect(dev.memory().liveBuffers, 'buffers left after a decode').toBe(baseline);
      });
    });
  }

  for (const dir of tiledCases) {
    const name = basename(dir);
    describe(name, () => {
      const c = readJson<TiledCase>(join(dir, 'case.json'));
      const outputs = readSafetensors(join(dir, 'outputs.safetensors'));
      const tol = c.tolerances.float32_outputs;
      const tiling: TilingParams = {
        tileSampleMinSize: c.tiling.tile_sample_min_size,
        tileLatentMinSize: c.tiling.tile_latent_min_size,
        latentStride: c.tiling.latent_stride,
        blendExtent: c.tiling.blend_extent_pixels,
        rowLimit: c.tiling.row_limit_pixels,
      };
      let vae: AutoencoderKL;
      let z: Tensor;
      beforeAll(() => {
        vae = AutoencoderKL.load(dev, readVaeConfig(join(dir, 'config.json')), tiledWeights(dir, c));
        z = upload(dev, stTensor(readSafetensors(join(dir, 'inputs.safetensors')), 'latents'));
      });
      afterAll(() => {
        vae?.dispose();
        z?.dispose();
      });

      it(`${name} (${kind}): tiling sizes derived from config.json equal case.json`, () => {
        expect(tilingFromConfig(vae.config)).toEqual(tiling);
        if (c.tiling.upsampling !== undefined) expect(vae.upsampling).toBe(c.tiling.upsampling);
      });

      it(`${name} (${kind}): untiled decode`, async () => {
        const image = vae.disableTiling().decode(z);
        await expectClose(`${name} ${kind} image_untiled`, image, stTensor(outputs, 'image_untiled'), tol);
        image.dispose();
      });

      it(`${name} (${kind}): tiled decode (enable_tiling)`, async () => {
        const baseline = dev.memory().liveBuffers;
        const image = vae.enableTiling(tiling).decode(z);
        await expectClose(`${name} ${kind} image_tiled`, image, stTensor(outputs, 'image_tiled'), tol);
        image.dispose();
        expect(dev.memory().liveBuffers, 'buffers left after a tiled decode').toBe(baseline);
      });
    });
  }
});
