// The AutoencoderKL configuration as diffusers writes it to `vae/config.json` (the decoder's fields), the
// FLUX.1 values for Black Forest Labs' `ae.safetensors` (which ships without a config), and the tiling
// sizes diffusers v0.32.0 derives from `sample_size` (AutoencoderKL.__init__ and tiled_decode).
import { readFileSync } from 'node:fs';

/** Decoder-relevant fields of diffusers' AutoencoderKL config, with diffusers' names. */
export interface VaeConfig {
  in_channels: number;
  /** Image channels the decoder produces. */
  out_channels: number;
  up_block_types: string[];
  /** Per resolution level, from the image side: (128, 256, 512, 512) for FLUX. */
  block_out_channels: number[];
  layers_per_block: number;
  act_fn: string;
  latent_channels: number;
  norm_num_groups: number;
  /** Tile size in image pixels when tiling (a number, or [h, w] of which diffusers uses h). */
  sample_size: number | number[];
  scaling_factor: number;
  shift_factor: number | null;
  use_post_quant_conv: boolean;
  mid_block_add_attention: boolean;
}

/** diffusers' AutoencoderKL.__init__ defaults, used for fields a config.json leaves out (as from_config does). */
const DIFFUSERS_DEFAULTS: VaeConfig = {
  in_channels: 3,
  out_channels: 3,
  up_block_types: ['UpDecoderBlock2D'],
  block_out_channels: [64],
  layers_per_block: 1,
  act_fn: 'silu',
  latent_channels: 4,
  norm_num_groups: 32,
  sample_size: 32,
  scaling_factor: 0.18215,
  shift_factor: null,
  use_post_quant_conv: true,
  mid_block_add_attention: true,
};

/**
 * FLUX.1's VAE: black-forest-labs/FLUX.1-dev `vae/config.json`, equal to BFL's AutoEncoderParams
 * (ch 128, ch_mult [1, 2, 4, 4], num_res_blocks 2, z_channels 16, scale 0.3611, shift 0.1159).
 */
export const FLUX_VAE_CONFIG: Readonly<VaeConfig> = Object.freeze({
  in_channels: 3,
  out_channels: 3,
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
  block_out_channels: [128, 256, 512, 512],
  layers_per_block: 2,
  act_fn: 'silu',
  latent_channels: 16,
  norm_num_groups: 32,
  sample_size: 1024,
  scaling_factor: 0.3611,
  shift_factor: 0.1159,
  use_post_quant_conv: false,
  mid_block_add_attention: true,
});

/** Fills diffusers' defaults and checks that this decoder can run the config; `where` names the source in errors. */
export function vaeConfig(raw: Partial<VaeConfig> | Record<string, unknown>, where = 'VAE config'): VaeConfig {
  const c: VaeConfig = { ...DIFFUSERS_DEFAULTS };
  for (const key of Object.keys(DIFFUSERS_DEFAULTS)) {
    const v = (raw as Record<string, unknown>)[key];
    if (v !== undefined) (c as unknown as Record<string, unknown>)[key] = v;
  }
  const faults: string[] = [];
  const posInt = (v: unknown) => Number.isInteger(v) && (v as number) > 0;
  if (!Array.isArray(c.block_out_channels) || c.block_out_channels.length === 0 || !c.block_out_channels.every(posInt)) {
    faults.push(`block_out_channels must be a non-empty list of positive integers, got ${JSON.stringify(c.block_out_channels)}`);
  }
  if (!Array.isArray(c.up_block_types) || c.up_block_types.length !== c.block_out_channels.length) {
    faults.push(`up_block_types ${JSON.stringify(c.up_block_types)} must have one entry per block_out_channels entry`);
  } else if (c.up_block_types.some((t) => t !== 'UpDecoderBlock2D')) {
    faults.push(`only UpDecoderBlock2D up blocks are implemented, got ${JSON.stringify(c.up_block_types)}`);
  }
  for (const key of ['out_channels', 'latent_channels', 'norm_num_groups', 'layers_per_block'] as const) {
    if (!posInt(c[key])) faults.push(`${key} must be a positive integer, got ${JSON.stringify(c[key])}`);
  }
  if (c.act_fn !== 'silu' && c.act_fn !== 'swish') faults.push(`act_fn ${JSON.stringify(c.act_fn)} is not implemented (silu only)`);
  if (Array.isArray(c.block_out_channels)) {
    for (const ch of c.block_out_channels) {
      if (ch % c.norm_num_groups !== 0) faults.push(`block_out_channels entry ${ch} is not divisible by norm_num_groups ${c.norm_num_groups}`);
    }
  }
  if (typeof c.scaling_factor !== 'number' || c.scaling_factor === 0) faults.push(`scaling_factor must be a non-zero number, got ${JSON.stringify(c.scaling_factor)}`);
  if (c.shift_factor !== null && typeof c.shift_factor !== 'number') faults.push(`shift_factor must be a number or null, got ${JSON.stringify(c.shift_factor)}`);
  if (!posInt(sampleSize(c))) faults.push(`sample_size must be a positive integer (or a list of them), got ${JSON.stringify(c.sample_size)}`);
  if (faults.length > 0) throw new Error(`${where}: unsupported AutoencoderKL config:\n  ${faults.join('\n  ')}`);
  return c;
}

/** Reads a diffusers `config.json` (e.g. `<model>/vae/config.json`). */
export function readVaeConfig(path: string): VaeConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`${path}: cannot read the VAE config (${(err as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${path}: the VAE config is not a JSON object`);
  const cls = (raw as Record<string, unknown>)._class_name;
  if (cls !== undefined && cls !== 'AutoencoderKL') throw new Error(`${path}: _class_name is ${JSON.stringify(cls)}, expected "AutoencoderKL"`);
  return vaeConfig(raw, path);
}

/** Image pixels per latent pixel: 2^(levels - 1) (8 for FLUX). */
export function upsamplingFactor(c: VaeConfig): number {
  return 2 ** (c.block_out_channels.length - 1);
}

function sampleSize(c: VaeConfig): number {
  return Array.isArray(c.sample_size) ? c.sample_size[0]! : c.sample_size;
}

/** The sizes of diffusers' tiled decode (AutoencoderKL v0.32.0), all in the units its code uses. */
export interface TilingParams {
  /** Latent pixels per tile side (`tile_latent_min_size`); decoding tiles only when z is larger. */
  tileLatentMinSize: number;
  /** Image pixels per tile side (`tile_sample_min_size`). */
  tileSampleMinSize: number;
  /** Latent pixels from one tile's origin to the next (`overlap_size` in tiled_decode). */
  latentStride: number;
  /** Image pixels over which a tile is ramped into the one above / to the left. */
  blendExtent: number;
  /** Image pixels kept of each tile per side after blending. */
  rowLimit: number;
}

/**
 * diffusers' derivation: tile_sample_min_size = sample_size, tile_latent_min_size =
 * int(sample_size / 2^(levels-1)), tile_overlap_factor 0.25, overlap_size = int(latent * 0.75),
 * blend_extent = int(sample * 0.25), row_limit = sample - blend_extent (python float arithmetic).
 */
export function tilingFromConfig(c: VaeConfig, tileOverlapFactor = 0.25): TilingParams {
  const tileSampleMinSize = sampleSize(c);
  const tileLatentMinSize = Math.trunc(tileSampleMinSize / upsamplingFactor(c));
  const blendExtent = Math.trunc(tileSampleMinSize * tileOverlapFactor);
  return {
    tileLatentMinSize,
    tileSampleMinSize,
    latentStride: Math.trunc(tileLatentMinSize * (1 - tileOverlapFactor)),
    blendExtent,
    rowLimit: tileSampleMinSize - blendExtent,
  };
}
