// diffusers' AutoencoderKL (v0.32.0, models/autoencoders/autoencoder_kl.py), decoding half: `decode` with
// the optional post-quant conv and `enable_tiling()`'s tiled_decode (overlapping latent tiles decoded one by
// one, blended into their upper and left neighbours over a linear ramp, cropped and joined).
//
//   const vae = AutoencoderKL.fromPretrained(device, 'FLUX.1-dev/vae');          // config.json + safetensors
//   const vae = AutoencoderKL.load(device, FLUX_VAE_CONFIG, 'FLUX.1-dev/ae.safetensors'); // BFL layout
//   vae.enableTiling();
//   const image = vae.decode(z);   // z: [B, 16, h, w] already scaled -> [B, 3, 8h, 8w]
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Device } from '../../device/device.ts';
import type { TensorSource } from '../../io/safetensors.ts';
import * as ops from '../../tensor/ops.ts';
import { Tensor } from '../../tensor/tensor.ts';
import { type TilingParams, type VaeConfig, readVaeConfig, tilingFromConfig, upsamplingFactor, vaeConfig } from './config.ts';
import { Decoder, type StageHook } from './decoder.ts';
import { Conv2d, Module, consume } from './nn.ts';
import { type VaeLayout, loadVaeWeights, openWeights } from './weights.ts';

export class AutoencoderKL extends Module {
  readonly decoder: Decoder;
  readonly post_quant_conv: Conv2d | null;
  /** The sizes tiled_decode uses once tiling is enabled; null while it is off (diffusers' default). */
  tiling: TilingParams | null = null;
  /** Which checkpoint layout the weights came from. */
  layout: VaeLayout | null = null;

  constructor(readonly config: VaeConfig) {
    super();
    this.decoder = new Decoder(config);
    this.post_quant_conv = config.use_post_quant_conv ? new Conv2d(config.latent_channels, config.latent_channels, 1, 0) : null;
  }

  /**
   * A decoder from a checkpoint, in either layout (diffusers or BFL `ae.safetensors`): `weights` is a
   * .safetensors file, a sharded `*.safetensors.index.json`, or an open TensorSource (`file` names it in errors).
   */
  static load(device: Device, config: VaeConfig, weights: string | TensorSource, file = typeof weights === 'string' ? weights : 'VAE weights'): AutoencoderKL {
    const vae = new AutoencoderKL(vaeConfig(config, file));
    const source = typeof weights === 'string' ? openWeights(weights) : weights;
    try {
      vae.layout = loadVaeWeights(device, vae, config.block_out_channels.length, source, file);
    } catch (err) {
      vae.dispose();
      throw err;
    } finally {
      if (typeof weights === 'string') source.close();
    }
    return vae;
  }

  /** A diffusers folder (`<model>/vae`): config.json and diffusion_pytorch_model.safetensors (or its sharded index). */
  static fromPretrained(device: Device, dir: string): AutoencoderKL {
    const single = join(dir, 'diffusion_pytorch_model.safetensors');
    const weights = existsSync(single) ? single : join(dir, 'diffusion_pytorch_model.safetensors.index.json');
    return AutoencoderKL.load(device, readVaeConfig(join(dir, 'config.json')), weights);
  }

  /** diffusers enable_tiling(): sizes from the config's sample_size unless given. */
  enableTiling(params: TilingParams = tilingFromConfig(this.config)): this {
    if (params.latentStride < 1) throw new Error(`tiling: latent stride ${params.latentStride} must be at least 1 (tile_latent_min_size ${params.tileLatentMinSize})`);
    this.tiling = params;
    return this;
  }

  disableTiling(): this {
    this.tiling = null;
    return this;
  }

  /** Image pixels per latent pixel (8 for FLUX). */
  get upsampling(): number {
    return upsamplingFactor(this.config);
  }

  /**
   * AutoencoderKL._decode: z [B, latent_channels, h, w] (already `z / scaling_factor + shift_factor`) ->
   * image [B, out_channels, h * up, w * up], nominally in [-1, 1]. Tiled when tiling is on and z is larger
   * than one tile. `hook` sees the decoder's stage outputs (untiled decodes only).
   */
  decode(z: Tensor, hook?: StageHook): Tensor {
    if (z.rank !== 4 || z.shape[1] !== this.config.latent_channels) {
      throw new Error(`VAE decode: z must be [B, ${this.config.latent_channels}, h, w], got [${z.shape}]`);
    }
    const t = this.tiling;
    if (t && (z.shape[3]! > t.tileLatentMinSize || z.shape[2]! > t.tileLatentMinSize)) return this.tiledDecode(z, t);
    return this.decodeTile(z, hook);
  }

  /**
   * AutoencoderKL.tiled_decode: tiles of tileLatentMinSize latents every latentStride, each decoded alone;
   * each decoded tile is blended with the (already blended) tile above and to its left, cropped to rowLimit
   * and the crops joined. Only the previous row of tiles is kept; each tile's activations are freed by the decoder.
   */
  tiledDecode(z: Tensor, t: TilingParams = this.tiling ?? tilingFromConfig(this.config)): Tensor {
    const [, , hh, ww] = z.shape as [number, number, number, number];
    const size = t.tileLatentMinSize;
    if (t.latentStride < 1) throw new Error(`tiled decode: latent stride ${t.latentStride} must be at least 1`);
    let above: Tensor[] = []; // rows[i - 1], blended
    const resultRows: Tensor[] = [];
    try {
      for (let i = 0; i < hh; i += t.latentStride) {
        const row: Tensor[] = [];
        const crops: Tensor[] = [];
        try {
          for (let j = 0, col = 0; j < ww; j += t.latentStride, col++) {
            const zTile = consume(z.slice(2, i, Math.min(i + size, hh)), (r) => r.slice(3, j, Math.min(j + size, ww))); // [B, C, <=size, <=size]
            let tile = consume(zTile, (x) => this.decodeTile(x)); // [B, 3, <=size*up, <=size*up]
            if (i > 0) tile = consume(tile, (b) => blendV(above[col]!, b, t.blendExtent));
            if (j > 0) tile = consume(tile, (b) => blendH(row[col - 1]!, b, t.blendExtent));
            row.push(tile);
            const [, , th, tw] = tile.shape as [number, number, number, number];
            crops.push(consume(tile.slice(2, 0, Math.min(t.rowLimit, th)), (r) => r.slice(3, 0, Math.min(t.rowLimit, tw))));
          }
          resultRows.push(ops.cat(crops, 3)); // [B, 3, rowLimit-ish, W]
        } finally {
          crops.forEach((c) => c.dispose());
          above.forEach((a) => a.dispose());
          above = row;
        }
      }
      return ops.cat(resultRows, 2); // [B, 3, H, W]
    } finally {
      above.forEach((a) => a.dispose());
      resultRows.forEach((r) => r.dispose());
    }
  }

  /** One tile (or the whole latent) through the post-quant conv and the decoder. */
  private decodeTile(z: Tensor, hook?: StageHook): Tensor {
    if (!this.post_quant_conv) return this.decoder.forward(z, hook);
    return consume(this.post_quant_conv.forward(z), (q) => this.decoder.forward(q, hook));
  }
}

/** a * (1 - r) + b * r with r = y / e for the e leading rows (axis 2) or columns (axis 3) of b, ramping in from a's last e. */
function blend(a: Tensor, b: Tensor, extent: number, axis: 2 | 3): Tensor {
  const e = Math.min(a.shape[axis]!, b.shape[axis]!, extent);
  if (e <= 0) return b.contiguous();
  const ramp = Array.from({ length: e }, (_, y) => y / e); // python doubles, rounded to f32 as torch rounds the scalar
  const shape = axis === 2 ? [1, 1, e, 1] : [1, 1, 1, e];
  const wb = Tensor.from(b.device, ramp, shape);
  const wa = Tensor.from(b.device, ramp.map((r) => 1 - r), shape);
  const aEnd = a.slice(axis, a.shape[axis]! - e, a.shape[axis]!);
  const bHead = b.slice(axis, 0, e);
  const bRest = b.slice(axis, e, b.shape[axis]!);
  try {
    const mixed = consume(ops.mul(aEnd, wa), (x) => consume(ops.mul(bHead, wb), (y) => ops.add(x, y)));
    return consume(mixed, (m) => ops.cat([m, bRest], axis));
  } finally {
    [wa, wb, aEnd, bHead, bRest].forEach((x) => x.dispose());
  }
}

/** diffusers blend_v: the top rows of b ramp in from the bottom rows of a (the tile above). */
export function blendV(a: Tensor, b: Tensor, extent: number): Tensor {
  return blend(a, b, extent, 2);
}

/** diffusers blend_h: the left columns of b ramp in from the right columns of a (the tile to the left). */
export function blendH(a: Tensor, b: Tensor, extent: number): Tensor {
  return blend(a, b, extent, 3);
}
