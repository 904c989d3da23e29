// DanceGRPO's latent-to-image path (train_grpo_flux.py, after sampling): the transformer's packed tokens
// are unpacked with `unpack_latents(latents, h, w, 8)`, un-scaled with `latents / scaling_factor + shift_factor`,
// decoded by the VAE (with enable_tiling()), and turned into 8-bit RGB by VaeImageProcessor.postprocess
// (src/io/image.ts) before being saved as PNG and scored by the reward model.
import { postprocessToUint8 } from '../../io/image.ts';
import { type RgbImage, writePng } from '../../io/png.ts';
import * as ops from '../../tensor/ops.ts';
import { Tensor } from '../../tensor/tensor.ts';
import type { AutoencoderKL } from './autoencoder.ts';
import type { StageHook } from './decoder.ts';
import { consume } from './nn.ts';

/**
 * DanceGRPO / FluxPipeline `unpack_latents`: packed [B, (h/2)*(w/2), 4C] -> [B, C, h, w] with
 * h = 2 * (height // (vaeScaleFactor * 2)), w likewise; `height`, `width` are the nominal image size.
 */
export function unpackLatents(packed: Tensor, height: number, width: number, vaeScaleFactor = 8): Tensor {
  const [b, tokens, channels] = packed.shape as [number, number, number];
  const h = 2 * Math.floor(height / (vaeScaleFactor * 2));
  const w = 2 * Math.floor(width / (vaeScaleFactor * 2));
  if (packed.rank !== 3 || channels % 4 !== 0 || tokens !== (h / 2) * (w / 2)) {
    throw new Error(`unpackLatents: [${packed.shape}] is not [B, ${(h / 2) * (w / 2)}, 4C] for a ${height}x${width} image (vae_scale_factor ${vaeScaleFactor})`);
  }
  const grid = packed.reshape([b, h / 2, w / 2, channels / 4, 2, 2]); // [B, h/2, w/2, C, 2, 2]
  const moved = consume(grid, (g) => g.permute([0, 3, 1, 4, 2, 5])); // [B, C, h/2, 2, w/2, 2]
  return consume(moved, (m) => m.reshape([b, channels / 4, h, w])); // [B, C, h, w]
}

/** FluxPipeline `_pack_latents`, the inverse of unpackLatents: [B, C, h, w] -> [B, (h/2)*(w/2), 4C]. */
export function packLatents(latents: Tensor): Tensor {
  const [b, c, h, w] = latents.shape as [number, number, number, number];
  const grid = latents.reshape([b, c, h / 2, 2, w / 2, 2]);
  const moved = consume(grid, (g) => g.permute([0, 2, 4, 1, 3, 5])); // [B, h/2, w/2, C, 2, 2]
  return consume(moved, (m) => m.reshape([b, (h / 2) * (w / 2), c * 4]));
}

/** `latents / scaling_factor + shift_factor` (no shift when the config has none), as float32 tensor ops. */
export function unscaleLatents(vae: AutoencoderKL, latents: Tensor): Tensor {
  const { scaling_factor: scaling, shift_factor: shift } = vae.config;
  const dev = latents.device;
  const s = Tensor.from(dev, [scaling], [1], latents.dtype);
  const divided = consume(s, (st) => ops.div(latents, st));
  if (shift === null) return divided;
  return consume(Tensor.from(dev, [shift], [1], latents.dtype), (sh) => consume(divided, (d) => ops.add(d, sh)));
}

export interface DecodeOptions {
  /** Nominal image height and width given to unpack_latents (DanceGRPO passes the training resolution). */
  height: number;
  width: number;
  /** unpack_latents' vae_scale_factor; DanceGRPO passes 8. */
  vaeScaleFactor?: number;
  hook?: StageHook;
}

/** Packed transformer latents [B, L, 64] -> decoded image [B, 3, H, W] (float, nominally [-1, 1], not clamped). */
export function decodePackedLatents(vae: AutoencoderKL, packed: Tensor, opts: DecodeOptions): Tensor {
  const unpacked = unpackLatents(packed, opts.height, opts.width, opts.vaeScaleFactor ?? 8); // [B, 16, h, w]
  const z = consume(unpacked, (u) => unscaleLatents(vae, u));
  return consume(z, (zz) => vae.decode(zz, opts.hook));
}

/** VaeImageProcessor.postprocess(output_type='pil') pixels: one HWC RGB image per batch entry. */
export async function toRgbImages(image: Tensor): Promise<RgbImage[]> {
  const [b, c, height, width] = image.shape as [number, number, number, number];
  if (image.rank !== 4 || c !== 3) throw new Error(`toRgbImages: expected [B, 3, H, W], got [${image.shape}]`);
  const host = await image.toHost();
  const f32 = host instanceof Float32Array ? host : Float32Array.from(await image.toFloat64());
  return postprocessToUint8(f32, [b, c, height, width]).map((rgb) => ({ width, height, rgb }));
}

/** Writes each image of the batch as an 8-bit RGB PNG at `pathOf(index)`. */
export async function savePngs(image: Tensor, pathOf: (index: number) => string): Promise<RgbImage[]> {
  const images = await toRgbImages(image);
  images.forEach((im, i) => writePng(pathOf(i), im));
  return images;
}
