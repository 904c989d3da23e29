// The VAE decoder on small random models: the BFL and diffusers checkpoint layouts load to the same
// decoder, bad checkpoints fail with every fault listed, tiled decoding follows diffusers' tiled_decode
// (checked against a literal host port of its loops), and decodes leave no buffers behind.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { type StTensor, writeSafetensors } from '../../src/io/safetensors.ts';
import { Generator, randn } from '../../src/rng/index.ts';
import { AutoencoderKL } from '../../src/models/vae/autoencoder.ts';
import { type TilingParams, type VaeConfig, tilingFromConfig, vaeConfig } from '../../src/models/vae/config.ts';
import { randomParameters } from '../../src/models/vae/init.ts';
import { packLatents, unpackLatents } from '../../src/models/vae/pipeline.ts';
import { bflKey } from '../../src/models/vae/weights.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { maxAbs } from '../golden/golden.ts';

const scratch = mkdtempSync(join(tmpdir(), 'vae-unit-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Two levels (upsampling 2), channels 8 -> 16 so the first up-block resnet has a shortcut conv. */
const TINY: VaeConfig = vaeConfig({
  block_out_channels: [8, 16],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'],
  layers_per_block: 1,
  latent_channels: 4,
  norm_num_groups: 4,
  sample_size: 8,
  scaling_factor: 0.5,
  shift_factor: 0.25,
  use_post_quant_conv: true,
});

const f32 = (values: Float32Array, shape: readonly number[]): StTensor => ({ dtype: 'F32', shape: [...shape], bytes: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) });

/** Random weights of TINY in diffusers names, plus some encoder keys a full AutoencoderKL file carries. */
function randomStateDict(config: VaeConfig, seed: number): Map<string, StTensor> {
  const model = new AutoencoderKL(config);
  const sd = new Map<string, StTensor>();
  for (const [key, shape, values] of randomParameters(model, new Generator(seed))) sd.set(key, f32(values, shape));
  sd.set('encoder.conv_in.weight', f32(new Float32Array(8 * 3 * 9), [8, 3, 3, 3]));
  sd.set('quant_conv.weight', f32(new Float32Array(64), [8, 8, 1, 1]));
  return sd;
}

/** The same weights in BFL's ae.safetensors layout (1x1-conv attention projections). */
function toBfl(sd: Map<string, StTensor>, levels: number): Map<string, StTensor> {
  const out = new Map<string, StTensor>();
  for (const [key, t] of sd) {
    if (!key.startsWith('decoder.') && !key.startsWith('post_quant_conv.')) {
      out.set(key, t);
      continue;
    }
    const attn = /attentions\.0\.(to_[qkv]|to_out\.0)\.weight$/.test(key);
    out.set(bflKey(key, levels), attn ? { ...t, shape: [...t.shape, 1, 1] } : t);
  }
  return out;
}

function save(name: string, sd: Map<string, StTensor>): string {
  const path = join(scratch, name);
  writeSafetensors(path, sd);
  return path;
}

function randomLatent(dev: Device, shape: number[], seed: number): Tensor {
  return Tensor.from(dev, randn(new Generator(seed), shape, 'f32'), shape);
}

/**
 * diffusers v0.32.0 tiled_decode, line by line on host arrays: every tile decoded alone (plain decode),
 * blend_v / blend_h writing into the tile in place, crops joined. Arithmetic in float32 as torch does.
 */
async function referenceTiledDecode(vae: AutoencoderKL, z: Tensor, t: TilingParams): Promise<{ data: Float32Array; shape: number[] }> {
  interface Img { data: Float32Array; c: number; h: number; w: number }
  const [b, , hh, ww] = z.shape as [number, number, number, number];
  expect(b).toBe(1);
  const at = (im: Img, c: number, y: number, x: number) => (c * im.h + y) * im.w + x;
  const rows: Img[][] = [];
  vae.disableTiling();
  for (let i = 0; i < hh; i += t.latentStride) {
    const row: Img[] = [];
    for (let j = 0; j < ww; j += t.latentStride) {
      const tileZ = z.slice(2, i, Math.min(i + t.tileLatentMinSize, hh)).slice(3, j, Math.min(j + t.tileLatentMinSize, ww));
      const dec = vae.decode(tileZ);
      row.push({ data: new Float32Array(await dec.toFloat64()), c: dec.shape[1]!, h: dec.shape[2]!, w: dec.shape[3]! });
      dec.dispose();
      tileZ.dispose();
    }
    rows.push(row);
  }
  const fr = Math.fround;
  const blendV = (a: Img, bb: Img, extent: number) => {
    const e = Math.min(a.h, bb.h, extent);
    for (let y = 0; y < e; y++) {
      for (let c = 0; c < bb.c; c++) {
        for (let x = 0; x < bb.w; x++) {
          bb.data[at(bb, c, y, x)] = fr(fr(a.data[at(a, c, a.h - e + y, x)]! * fr(1 - y / e)) + fr(bb.data[at(bb, c, y, x)]! * fr(y / e)));
        }
      }
    }
  };
  const blendH = (a: Img, bb: Img, extent: number) => {
    const e = Math.min(a.w, bb.w, extent);
    for (let x = 0; x < e; x++) {
      for (let c = 0; c < bb.c; c++) {
        for (let y = 0; y < bb.h; y++) {
          bb.data[at(bb, c, y, x)] = fr(fr(a.data[at(a, c, y, a.w - e + x)]! * fr(1 - x / e)) + fr(bb.data[at(bb, c, y, x)]! * fr(x / e)));
        }
      }
    }
  };
  // result rows: crops of each blended tile, joined along width, then the rows along height
  const crops: Img[][] = rows.map((row, i) => row.map((tile, j) => {
    if (i > 0) blendV(rows[i - 1]![j]!, tile, t.blendExtent);
    if (j > 0) blendH(row[j - 1]!, tile, t.blendExtent);
    return tile;
  }));
  const channels = crops[0]![0]!.c;
  const rowH = crops.map((row) => Math.min(t.rowLimit, row[0]!.h));
  const colW = crops[0]!.map((tile) => Math.min(t.rowLimit, tile.w));
  const H = rowH.reduce((s, v) => s + v, 0), W = colW.reduce((s, v) => s + v, 0);
  const data = new Float32Array(channels * H * W);
  let y0 = 0;
  crops.forEach((row, i) => {
    let x0 = 0;
    row.forEach((tile, j) => {
      for (let c = 0; c < channels; c++) {
        for (let y = 0; y < rowH[i]!; y++) for (let x = 0; x < colW[j]!; x++) data[(c * H + y0 + y) * W + x0 + x] = tile.data[at(tile, c, y, x)]!;
      }
      x0 += colW[j]!;
    });
    y0 += rowH[i]!;
  });
  return { data, shape: [1, channels, H, W] };
}


describe('config', () => {
  it('derives diffusers tiling sizes from sample_size', () => {
    // FLUX: sample_size 1024, 4 levels -> 128-latent tiles every 96 latents, 256-pixel ramps, 768-pixel crops.
    expect(tilingFromConfig(vaeConfig({ block_out_channels: [128, 256, 512, 512], up_block_types: Array(4).fill('UpDecoderBlock2D'), sample_size: 1024 })))
      .toEqual({ tileLatentMinSize: 128, tileSampleMinSize: 1024, latentStride: 96, blendExtent: 256, rowLimit: 768 });
    expect(tilingFromConfig(TINY)).toEqual({ tileLatentMinSize: 4, tileSampleMinSize: 8, latentStride: 3, blendExtent: 2, rowLimit: 6 });
  });

  it('refuses configs the decoder cannot run, listing each fault', () => {
    expect(() => vaeConfig({ block_out_channels: [8, 12], up_block_types: ['UpDecoderBlock2D'], norm_num_groups: 8, act_fn: 'gelu' }, 'cfg.json'))
      .toThrow(/cfg\.json: unsupported AutoencoderKL config:[\s\S]*up_block_types[\s\S]*act_fn "gelu"[\s\S]*12 is not divisible by norm_num_groups 8/);
  });
});

describe('latent packing', () => {
  it('unpack_latents is the inverse of _pack_latents and follows DanceGRPO indexing', async () => {
    const dev = new CpuDevice();
    // nominal 48x32 image, factor 8 -> latent 6x4, 3x2 tokens of 4*C channels
    const c = 3, h = 6, w = 4;
    const values = Float32Array.from({ length: 2 * c * h * w }, (_, i) => i);
    const latents = Tensor.from(dev, values, [2, c, h, w]);
    const packed = packLatents(latents);
    expect(packed.shape).toEqual([2, (h / 2) * (w / 2), 4 * c]);
    // token (r, q) channel (ch, dy, dx) = latent[ch, 2r + dy, 2q + dx]
    const p = await packed.toFloat64();
    expect(p[(0 * 6 + (1 * 2 + 1)) * 12 + (2 * 4 + 1 * 2 + 0)]).toBe(values[(0 * c + 2) * h * w + (2 * 1 + 1) * w + (2 * 1 + 0)]);
    const back = unpackLatents(packed, 8 * h, 8 * w, 8);
    expect(back.shape).toEqual([2, c, h, w]);
    expect(Array.from(await back.toFloat64())).toEqual(Array.from(values));
    // DanceGRPO rounds the nominal size down to a multiple of 16: 50x39 still means a 6x4 latent
    const again = unpackLatents(packed, 50, 39, 8);
    expect(again.shape).toEqual([2, c, h, w]);
    expect(() => unpackLatents(packed, 64, 64, 8)).toThrow(/is not \[B, 16, 4C\] for a 64x64 image/);
    [latents, packed, back, again].forEach((t) => t.dispose());
    expect(dev.memory().liveBuffers).toBe(0);
  });
});

describe('weights', () => {
  let dev: CpuDevice;
  const sd = randomStateDict(TINY, 1);
  beforeAll(() => {
    dev = new CpuDevice();
  });

  it('maps every diffusers key to its BFL name', () => {
    const n = TINY.block_out_channels.length;
    expect(bflKey('decoder.mid_block.resnets.1.conv2.weight', n)).toBe('decoder.mid.block_2.conv2.weight');
    expect(bflKey('decoder.mid_block.attentions.0.to_out.0.bias', n)).toBe('decoder.mid.attn_1.proj_out.bias');
    expect(bflKey('decoder.mid_block.attentions.0.group_norm.weight', n)).toBe('decoder.mid.attn_1.norm.weight');
    expect(bflKey('decoder.up_blocks.0.resnets.2.norm1.bias', n)).toBe('decoder.up.1.block.2.norm1.bias');
    expect(bflKey('decoder.up_blocks.1.resnets.0.conv_shortcut.weight', n)).toBe('decoder.up.0.block.0.nin_shortcut.weight');
    expect(bflKey('decoder.up_blocks.0.upsamplers.0.conv.weight', n)).toBe('decoder.up.1.upsample.conv.weight');
    expect(bflKey('decoder.conv_norm_out.weight', n)).toBe('decoder.norm_out.weight');
    expect(bflKey('decoder.up_blocks.0.resnets.0.conv1.weight', 4)).toBe('decoder.up.3.block.0.conv1.weight');
  });

  it('BFL and diffusers layouts of the same weights decode identically', async () => {
    const diffusersFile = save('diffusers.safetensors', sd);
    const bflFile = save('ae.safetensors', toBfl(sd, TINY.block_out_channels.length));
    const a = AutoencoderKL.load(dev, TINY, diffusersFile);
    const b = AutoencoderKL.load(dev, TINY, bflFile);
    expect(a.layout).toBe('diffusers');
    expect(b.layout).toBe('bfl');
    const z = randomLatent(dev, [2, 4, 5, 3], 7);
    const ya = a.decode(z), yb = b.decode(z);
    expect(ya.shape).toEqual([2, 3, 10, 6]);
    expect(Array.from(await yb.toFloat64())).toEqual(Array.from(await ya.toFloat64()));
    [a, b, z, ya, yb].forEach((t) => t.dispose());
    expect(dev.memory().liveBuffers).toBe(0);
  });

  it('lists every missing key, with the file name', () => {
    const broken = new Map(sd);
    broken.delete('decoder.mid_block.attentions.0.to_k.bias');
    broken.delete('decoder.up_blocks.1.resnets.0.conv_shortcut.weight');
    const file = save('missing.safetensors', broken);
    let message = '';
    try {
      AutoencoderKL.load(dev, TINY, file);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain(file);
    expect(message).toMatch(/2 missing key\(s\)/);
    expect(message).toContain('decoder.mid_block.attentions.0.to_k.bias');
    expect(message).toContain('decoder.up_blocks.1.resnets.0.conv_shortcut.weight');
    expect(dev.memory().liveBuffers).toBe(0);
  });

  it('lists unexpected keys and shape mismatches (BFL layout too)', () => {
    const bfl = toBfl(sd, 2);
    bfl.set('decoder.mid.attn_2.q.weight', f32(new Float32Array(4), [2, 2]));
    bfl.set('decoder.mid.attn_1.q.weight', f32(new Float32Array(16 * 16), [16, 16])); // diffusers' Linear shape in a BFL file
    bfl.delete('decoder.up.0.block.1.norm2.weight');
    const file = save('bad_ae.safetensors', bfl);
    expect(() => AutoencoderKL.load(dev, TINY, file)).toThrow(new RegExp([
      `${file.replace(/[.]/g, '\\.')}: VAE decoder weights \\(bfl layout\\)`,
      '1 missing key\\(s\\):\\s+decoder\\.up\\.0\\.block\\.1\\.norm2\\.weight',
      '1 unexpected key\\(s\\):\\s+decoder\\.mid\\.attn_2\\.q\\.weight',
      'decoder\\.mid\\.attn_1\\.q\\.weight: file has \\[16,16\\], the config needs \\[16,16,1,1\\]',
    ].join('[\\s\\S]*')));
    // a config that disagrees with the file: 3 up-block resnets each where the file has 2
    const deeper = vaeConfig({ ...TINY, layers_per_block: 2 });
    expect(() => AutoencoderKL.load(dev, deeper, save('diffusers2.safetensors', sd))).toThrow(/\d+ missing key\(s\):[\s\S]*decoder\.up_blocks\.0\.resnets\.2\.conv1\.weight/);
    expect(dev.memory().liveBuffers).toBe(0);
  });
});

describe.each(['cpu', 'webgpu'] as const)('tiled decode (%s)', (kind) => {
  let dev: Device;
  let vae: AutoencoderKL;
  beforeAll(async () => {
    dev = kind === 'cpu' ? new CpuDevice() : await WebGPUDevice.create();
    vae = AutoencoderKL.load(dev, TINY, save(`tiled_${kind}.safetensors`, randomStateDict(TINY, 2)));
  });
  afterAll(() => {
    vae?.dispose();
    dev?.destroy();
  });

  it('equals the plain decode when the latent fits one tile', async () => {
    const t = tilingFromConfig(TINY); // 4-latent tiles
    const z = randomLatent(dev, [1, 4, t.tileLatentMinSize, t.tileLatentMinSize - 1], 3);
    const plain = vae.disableTiling().decode(z);
    const tiled = vae.enableTiling().decode(z);
    expect(Array.from(await tiled.toFloat64())).toEqual(Array.from(await plain.toFloat64()));
    [z, plain, tiled].forEach((x) => x.dispose());
  });

  // 5x11: rows of tiles at 0, 3 (heights 4, 2), columns at 0, 3, 6, 9 (widths 4, 4, 4, 2); 4x5: one wide row
  // then a 1-latent row; 9x4: a single column whose height alone triggers tiling.
  it.each([[5, 11], [4, 5], [9, 4]])('matches a literal port of diffusers tiled_decode on a %ix%i latent', async (h, w) => {
    const t = tilingFromConfig(TINY);
    const z = randomLatent(dev, [1, 4, h, w], 4 + h);
    const baseline = dev.memory().liveBuffers;
    const tiled = vae.enableTiling().decode(z);
    expect(dev.memory().liveBuffers).toBe(baseline + 1);
    const want = await referenceTiledDecode(vae, z, t);
    expect(tiled.shape).toEqual(want.shape);
    expect(maxAbs(await tiled.toFloat64(), want.data)).toBeLessThanOrEqual(kind === 'cpu' ? 0 : 1e-6);
    // and it is not the plain decode: tiles are decoded alone
    const plain = vae.disableTiling().decode(z);
    expect(maxAbs(await tiled.toFloat64(), await plain.toFloat64())).toBeGreaterThan(1e-3);
    [z, tiled, plain].forEach((x) => x.dispose());
  });
});
