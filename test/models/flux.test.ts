// The FLUX transformer's own checks (no golden files): tiny checkpoints written and loaded back,
// BFL <-> diffusers conversion, checkpoint errors, schnell (no guidance), batching, packing, RoPE
// precision at FLUX.1's real size, and buffer ownership. All on the CPU reference device.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { noGrad } from '../../src/autograd/functional.ts';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors.ts';
import { Generator, randn } from '../../src/rng/index.ts';
import { bflLayout, bflToDiffusers, diffusersToBfl } from '../../src/models/flux/bfl.ts';
import {
  DIFFUSERS_INDEX, DIFFUSERS_WEIGHTS, FluxCheckpointError, fluxStateDict, fluxWeightsToHost, loadFluxTransformer, saveFluxTransformer, writeFluxCheckpoint,
} from '../../src/models/flux/load.ts';
import { ropeTables, timestepProjection, torchExpf } from '../../src/models/flux/math.ts';
import type { FluxInputs, FluxTransformer } from '../../src/models/flux/model.ts';
import { latentImageIds, packLatents, textIds, unpackLatentGrid, unpackLatents } from '../../src/models/flux/pack.ts';
import { type FluxParams, fluxParameterShapes, fluxParamsFromConfig } from '../../src/models/flux/params.ts';
import { randomFluxTransformer, randomFluxWeights, tinyFluxConfig, writeTinyFluxCheckpoint } from '../../src/models/flux/tiny.ts';
import { bf16BitsToF32, f32ToBf16Bits } from '../../src/tensor/dtype.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { maxAbs } from '../golden/golden.ts';

const dev = new CpuDevice();
const tmp = mkdtempSync(join(tmpdir(), 'flux-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Random inputs for a model: batch b, a tokensH x tokensW image grid, lt text tokens. */
function randomInputs(p: FluxParams, b: number, tokensH: number, tokensW: number, lt: number, seed = 7): FluxInputs {
  const g = new Generator(seed);
  const li = tokensH * tokensW;
  const t = (shape: number[]) => Tensor.from(dev, randn(g, shape) as Float32Array, shape);
  return {
    hiddenStates: t([b, li, p.inChannels]),
    encoderHiddenStates: t([b, lt, p.contextInDim]),
    pooledProjections: t([b, p.vecInDim]),
    timestep: Array.from({ length: b }, (_, i) => 0.75 - 0.1 * i),
    guidance: p.guidanceEmbed ? [3.5] : null,
    txtIds: textIds(lt),
    imgIds: latentImageIds(tokensH, tokensW),
  };
}

function disposeInputs(x: FluxInputs): void {
  [x.hiddenStates, x.encoderHiddenStates, x.pooledProjections].forEach((t) => t.dispose());
}

async function run(model: FluxTransformer, x: FluxInputs): Promise<Float64Array> {
  const y = noGrad(() => model.forward(x));
  const v = await y.toFloat64();
  y.dispose();
  return v;
}


const tinyParams = fluxParamsFromConfig(tinyFluxConfig());

describe('flux params', () => {
  test('config.json -> FluxParams, with diffusers defaults and checks', () => {
    expect(tinyParams).toMatchObject({ hiddenSize: 32, numHeads: 2, headDim: 16, depth: 2, depthSingleBlocks: 2, outChannels: 64, guidanceEmbed: true });
    const dev1 = fluxParamsFromConfig({ _class_name: 'FluxTransformer2DModel', guidance_embeds: true });
    expect(dev1).toMatchObject({ hiddenSize: 3072, depth: 19, depthSingleBlocks: 38, contextInDim: 4096, vecInDim: 768, axesDim: [16, 56, 56] });
    expect(() => fluxParamsFromConfig(tinyFluxConfig({ axes_dims_rope: [4, 6, 8] }))).toThrow(/add up to 18.*attention_head_dim is 16/);
    expect(() => fluxParamsFromConfig(tinyFluxConfig({ axes_dims_rope: [3, 7, 6] }))).toThrow(/odd/);
  });

  test('FLUX.1-dev has 11.9B parameters in diffusers layout', () => {
    const p = fluxParamsFromConfig({ guidance_embeds: true });
    const n = fluxParameterShapes(p).reduce((s, [, shape]) => s + shape.reduce((a, b) => a * b, 1), 0);
    expect(n).toBe(11_901_408_320);
  });
});

describe('flux tiny checkpoint', () => {
  test('write -> load gives the in-memory model\'s outputs (F32, single file)', async () => {
    const dir = join(tmp, 'tiny-f32');
    const { params } = writeTinyFluxCheckpoint(dir, { seed: 11 });
    const loaded = loadFluxTransformer(dev, dir);
    const direct = randomFluxTransformer(dev, params, new Generator(11));
    const x = randomInputs(params, 1, 4, 4, 8);
    expect(maxAbs(await run(loaded, x), await run(direct, x))).toBe(0);
    disposeInputs(x);
    loaded.dispose();
    direct.dispose();
  });

  test('BF16, sharded with an index: loads as float32 of the bf16-rounded weights', async () => {
    const dir = join(tmp, 'tiny-bf16');
    const { params, weights } = writeTinyFluxCheckpoint(dir, { seed: 12, dtype: 'BF16', maxShardBytes: 40_000 });
    const shards = readdirSync(dir).filter((f) => /^diffusion_pytorch_model-\d{5}-of-\d{5}\.safetensors$/.test(f));
    expect(shards.length).toBeGreaterThan(1);
    expect(existsSync(join(dir, DIFFUSERS_INDEX))).toBe(true);
    expect(readSafetensors(join(dir, shards[0]!)).tensors.get('time_text_embed.timestep_embedder.linear_1.weight')?.dtype).toBe('BF16');
    const loaded = loadFluxTransformer(dev, dir);
    const host = await fluxWeightsToHost(loaded);
    for (const [name, v] of weights) {
      const rounded = Float32Array.from(v, (x) => bf16BitsToF32(f32ToBf16Bits(x)));
      expect(maxAbs(host.get(name)!, rounded), name).toBe(0);
    }
    // Round trip through saveFluxTransformer (float32) reloads identically.
    await saveFluxTransformer(loaded, join(tmp, 'tiny-resaved'));
    const again = loadFluxTransformer(dev, join(tmp, 'tiny-resaved'));
    const x = randomInputs(params, 1, 2, 4, 3);
    expect(maxAbs(await run(again, x), await run(loaded, x))).toBe(0);
    disposeInputs(x);
    loaded.dispose();
    again.dispose();
  });

  test('same seed, same weights; another seed, other weights', () => {
    const a = randomFluxWeights(tinyParams, new Generator(5));
    const b = randomFluxWeights(tinyParams, new Generator(5));
    const c = randomFluxWeights(tinyParams, new Generator(6));
    const w = 'transformer_blocks.0.attn.to_q.weight';
    expect(maxAbs(a.get(w)!, b.get(w)!)).toBe(0);
    expect(maxAbs(a.get(w)!, c.get(w)!)).toBeGreaterThan(0);
  });
});

describe('flux BFL layout', () => {
  test('diffusers -> BFL -> diffusers is the identity, and BFL shapes are fused', () => {
    const sd = fluxStateDict(tinyParams, randomFluxWeights(tinyParams, new Generator(3)));
    const bfl = diffusersToBfl(sd, tinyParams);
    expect(bfl.get('double_blocks.0.img_attn.qkv.weight')!.shape).toEqual([96, 32]);
    expect(bfl.get('single_blocks.1.linear1.weight')!.shape).toEqual([32 * 3 + 128, 32]);
    expect(bfl.get('double_blocks.1.txt_attn.norm.key_norm.scale')!.shape).toEqual([16]);
    const back = bflToDiffusers(bfl, tinyParams);
    expect([...back.keys()].sort()).toEqual([...sd.keys()].sort());
    for (const [k, t] of sd) expect(Buffer.compare(Buffer.from(back.get(k)!.bytes), Buffer.from(t.bytes)), k).toBe(0);
  });

  test('final_layer.adaLN_modulation.1 is (shift, scale): the halves of norm_out.linear swapped', () => {
    const sd = fluxStateDict(tinyParams, randomFluxWeights(tinyParams, new Generator(3)));
    const bfl = diffusersToBfl(sd, tinyParams);
    const d = new Float32Array(sd.get('norm_out.linear.bias')!.bytes.slice().buffer);
    const b = new Float32Array(bfl.get('final_layer.adaLN_modulation.1.bias')!.bytes.slice().buffer);
    const h = d.length / 2;
    expect(Array.from(b.subarray(0, h))).toEqual(Array.from(d.subarray(h))); // shift
    expect(Array.from(b.subarray(h))).toEqual(Array.from(d.subarray(0, h))); // scale
  });

  test('a BFL single file loads with the config beside it, and gives the diffusers output', async () => {
    const dir = join(tmp, 'bfl');
    const { params, weights } = writeTinyFluxCheckpoint(join(dir, 'diffusers'), { seed: 21 });
    const bflFile = join(dir, 'flux1-tiny.safetensors');
    writeSafetensors(bflFile, diffusersToBfl(fluxStateDict(params, weights), params));
    expect(() => loadFluxTransformer(dev, bflFile)).toThrow(/head width 16 does not fit FLUX.1's RoPE axes/);
    const fromBfl = loadFluxTransformer(dev, bflFile, { config: join(dir, 'diffusers', 'config.json') });
    const fromDiff = loadFluxTransformer(dev, join(dir, 'diffusers'));
    const x = randomInputs(params, 2, 2, 2, 5);
    expect(maxAbs(await run(fromBfl, x), await run(fromDiff, x))).toBe(0);
    disposeInputs(x);
    fromBfl.dispose();
    fromDiff.dispose();
  });

  test('config inferred from a BFL file with FLUX.1 head width (128), prefix model.diffusion_model.', () => {
    const p = fluxParamsFromConfig({ num_attention_heads: 1, attention_head_dim: 128, num_layers: 1, num_single_layers: 1, joint_attention_dim: 8, pooled_projection_dim: 8, in_channels: 4, guidance_embeds: false });
    const bfl = diffusersToBfl(fluxStateDict(p, randomFluxWeights(p, new Generator(1))), p);
    const file = join(tmp, 'bfl-infer.safetensors');
    writeSafetensors(file, new Map([...bfl].map(([k, t]) => [`model.diffusion_model.${k}`, t])));
    const model = loadFluxTransformer(dev, file);
    expect(model.p).toEqual(p);
    model.dispose();
  });
});

describe('flux checkpoint errors', () => {
  test('missing, unexpected and misshapen tensors are all listed, naming the file', () => {
    const { params, weights } = writeTinyFluxCheckpoint(join(tmp, 'broken-src'), { seed: 2 });
    const sd = fluxStateDict(params, weights);
    sd.delete('transformer_blocks.1.attn.to_k.weight');
    sd.delete('proj_out.bias');
    sd.set('transformer_blocks.0.attn.norm_q.weight', { dtype: 'F32', shape: [8], bytes: new Uint8Array(32) });
    sd.set('pos_embed.freqs', { dtype: 'F32', shape: [2], bytes: new Uint8Array(8) });
    writeFluxCheckpoint(join(tmp, 'broken-tmp'), params, fluxStateDict(params, weights));
    writeSafetensors(join(tmp, 'broken-tmp', DIFFUSERS_WEIGHTS), sd);
    let err: unknown;
    try {
      loadFluxTransformer(dev, join(tmp, 'broken-tmp'));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FluxCheckpointError);
    const msg = (err as Error).message;
    expect(msg).toContain(join(tmp, 'broken-tmp', DIFFUSERS_WEIGHTS));
    expect(msg).toContain('missing transformer_blocks.1.attn.to_k.weight [32,32]');
    expect(msg).toContain('missing proj_out.bias [64]');
    expect(msg).toMatch(/transformer_blocks\.0\.attn\.norm_q\.weight: shape \[8\].*needs \[16\]/);
    expect(msg).toContain('unexpected pos_embed.freqs [2]');
    expect((err as FluxCheckpointError).problems).toHaveLength(4);
    expect(dev.memory().liveBuffers).toBe(0);
  });

  test('a BFL file missing a fused tensor names the BFL key', () => {
    const p = tinyParams;
    const bfl = diffusersToBfl(fluxStateDict(p, randomFluxWeights(p, new Generator(1))), p);
    bfl.delete('single_blocks.0.linear1.weight');
    const dir = join(tmp, 'bfl-broken');
    writeFluxCheckpoint(dir, p, fluxStateDict(p, randomFluxWeights(p, new Generator(1)))); // for config.json
    const file = join(dir, 'flux.safetensors');
    writeSafetensors(file, bfl);
    expect(() => loadFluxTransformer(dev, file)).toThrow(/flux\.safetensors.*\n.*missing single_blocks\.0\.linear1\.weight \[224,32\]/);
  });
});

describe('flux forward', () => {
  test('schnell config (no guidance embedder) runs without guidance and refuses one', async () => {
    const p = fluxParamsFromConfig(tinyFluxConfig({ guidance_embeds: false }));
    expect(fluxParameterShapes(p).some(([n]) => n.includes('guidance'))).toBe(false);
    expect([...bflLayout(p).keys()].some((n) => n.startsWith('guidance_in'))).toBe(false);
    const model = randomFluxTransformer(dev, p, new Generator(4));
    const x = randomInputs(p, 1, 2, 2, 4);
    const y = await run(model, x);
    expect(y.every(Number.isFinite)).toBe(true);
    expect(() => model.forward({ ...x, guidance: [3.5] })).toThrow(/no guidance embedder/);
    disposeInputs(x);
    model.dispose();
    const devModel = randomFluxTransformer(dev, tinyParams, new Generator(4));
    const xd = randomInputs(tinyParams, 1, 2, 2, 4);
    expect(() => devModel.forward({ ...xd, guidance: null })).toThrow(/guidance is required/);
    disposeInputs(xd);
    devModel.dispose();
  });

  test('a batch of 2 gives each sample\'s own output; guidance [1] is shared', async () => {
    const model = randomFluxTransformer(dev, tinyParams, new Generator(8));
    const x = randomInputs(tinyParams, 2, 2, 3, 4);
    const both = await run(model, x);
    const n = both.length / 2;
    for (let i = 0; i < 2; i++) {
      const pick = (t: Tensor) => {
        const s = t.slice(0, i, i + 1);
        const c = s.contiguous();
        s.dispose();
        return c;
      };
      const xi: FluxInputs = { ...x, hiddenStates: pick(x.hiddenStates), encoderHiddenStates: pick(x.encoderHiddenStates), pooledProjections: pick(x.pooledProjections), timestep: [x.timestep[i]!] };
      const one = await run(model, xi);
      expect(maxAbs(one, both.subarray(i * n, (i + 1) * n))).toBeLessThan(1e-6);
      disposeInputs(xi);
    }
    disposeInputs(x);
    model.dispose();
  });

  test('a forward frees every intermediate', async () => {
    const model = randomFluxTransformer(dev, tinyParams, new Generator(9));
    const before = dev.memory().liveBuffers;
    const x = randomInputs(tinyParams, 1, 2, 2, 3);
    await run(model, x);
    disposeInputs(x);
    expect(dev.memory().liveBuffers).toBe(before);
    model.dispose();
  });
});

describe('flux packing', () => {
  test('pack -> unpack is the identity; tokens hold (c, dy, dx) of a 2x2 patch', async () => {
    const [b, c, h, w] = [2, 3, 4, 6];
    const vals = Float32Array.from({ length: b * c * h * w }, (_, i) => i);
    const lat = Tensor.from(dev, vals, [b, c, h, w]);
    const packed = packLatents(lat);
    expect(packed.shape).toEqual([b, (h / 2) * (w / 2), c * 4]);
    const p = await packed.toFloat64();
    // batch 1, token (row 1, col 2), channel 2, dy 1, dx 0 -> latent [1, 2, 3, 4]
    const tok = 1 * (w / 2) + 2, ch = 2 * 4 + 1 * 2 + 0;
    expect(p[(1 * (h / 2) * (w / 2) + tok) * c * 4 + ch]).toBe(((1 * c + 2) * h + 3) * w + 4);
    const back = unpackLatentGrid(packed, h, w);
    expect(Array.from(await back.toFloat64())).toEqual(Array.from(vals));
    const nominal = unpackLatents(packed, h * 8, w * 8 + 7, 8); // DanceGRPO: 2 * (size // 16)
    expect(nominal.shape).toEqual([b, c, h, w]);
    [lat, packed, back, nominal].forEach((t) => t.dispose());
  });

  test('image ids are (0, row, col) row-major', () => {
    expect(Array.from(latentImageIds(2, 3))).toEqual([0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 1, 0, 0, 1, 1, 0, 1, 2]);
  });
});

describe('flux RoPE and timestep tables', () => {
  test('float32 RoPE against float64 at FLUX.1 size (720x720: 45x45 tokens + 512 text, axes 16/56/56)', () => {
    const ids = new Float32Array([...textIds(512), ...latentImageIds(45, 45)]);
    const a = ropeTables(ids, [16, 56, 56], 10000, 'f32'), b = ropeTables(ids, [16, 56, 56], 10000, 'f64');
    const d = Math.max(maxAbs(a.cos, b.cos), maxAbs(a.sin, b.sin));
    console.log(`RoPE float32 vs float64 tables at 45x45 tokens: max |d| ${d.toExponential(2)}`);
    expect(d).toBeLessThan(45 * 2 ** -23 * 2); // about ulp(max angle), angles up to 44 rad
    const big = ropeTables(new Float32Array([0, 127, 127]), [16, 56, 56], 10000, 'f32');
    expect(big.cos.length).toBe(128);
  });

  test('torch CPU expf (SLEEF) stays within 1 ulp of exp; the projection is [cos | sin]', () => {
    for (let i = 0; i < 1000; i++) {
      const x = Math.fround(-10 + i * 0.0137);
      const e = Math.fround(Math.exp(x));
      expect(Math.abs(torchExpf(x) - e)).toBeLessThanOrEqual(e * 2 ** -23);
    }
    const p = timestepProjection([0], 8);
    expect(Array.from(p)).toEqual([1, 1, 1, 1, 0, 0, 0, 0]);
  });
});

describe('flux safetensors helpers', () => {
  test('fluxStateDict checks sizes', () => {
    const w = randomFluxWeights(tinyParams, new Generator(1));
    w.set('proj_out.bias', new Float32Array(3));
    expect(() => fluxStateDict(tinyParams, w)).toThrow(/proj_out.bias has 3 values/);
  });
});
