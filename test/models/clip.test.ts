// CLIP reward model pieces without the golden vectors: the preprocessing ports on synthetic images, the two
// checkpoint layouts (open_clip and Hugging Face) computing the same model, trimming and batching invariances,
// the patch matmul against the device's conv2d, strict loading, buffer accounting and the reward registry.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { brightness, colorfulness, createReward, rewardNames } from '../../src/grpo/rewards.ts';
import type { RgbImage } from '../../src/io/png.ts';
import type { HostTensor, StateDict } from '../../src/models/clip/layers.ts';
import { hfClipParams, loadClip, openClipParams, stripModulePrefix, VIT_H_14_CONFIG } from '../../src/models/clip/load.ts';
import { type ClipParams, similarity } from '../../src/models/clip/model.ts';
import {
  centerCropHwc, pilResizeBicubic, pyRound, resizeBicubicAA, resizeMaxSize, shortestEdgeSize, toTensor, torchAaCubicTaps,
} from '../../src/models/clip/preprocess.ts';
import * as T from '../../src/tensor/ops.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { compare } from '../../src/device/conformance.ts';

/** Relative L2 error of got against want (the conformance runner's metric). */
const relL2 = (got: ArrayLike<number>, want: ArrayLike<number>) => compare(got, want).rel;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function image(width: number, height: number, f: (x: number, y: number, c: number) => number): RgbImage {
  const rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) for (let c = 0; c < 3; c++) rgb[(y * width + x) * 3 + c] = f(x, y, c);
  return { width, height, rgb };
}

// ---- preprocessing ----------------------------------------------------------------------------------

describe('preprocessing', () => {
  it('pyRound rounds half to even like Python', () => {
    expect([0.5, 1.5, 2.5, 26.5, 26.6666, 3.4999].map(pyRound)).toEqual([0, 2, 2, 26, 27, 3]);
  });

  it('torch antialias bicubic taps sum to one, down- and upscaling', () => {
    for (const [i, o] of [[720, 224], [48, 32], [40, 27], [16, 40], [7, 7]] as const) {
      const t = torchAaCubicTaps(i, o);
      for (let k = 0; k < o; k++) {
        let s = 0;
        for (let j = 0; j < t.count[k]!; j++) s += t.weights[k * t.ksize + j]!;
        expect(s).toBeCloseTo(1, 5);
        expect(t.start[k]! + t.count[k]!).toBeLessThanOrEqual(i);
      }
    }
  });

  it('the bicubic resize keeps a constant image constant and unclamped values pass through', () => {
    const flat = toTensor(image(48, 40, () => 200));
    const r = resizeBicubicAA(flat, 27, 32);
    expect([r.height, r.width]).toEqual([27, 32]);
    for (const v of r.data) expect(v).toBeCloseTo(200 / 255, 5);
    // A hard edge overshoots (bicubic, no clamping): values beyond [0, 1] survive.
    const edge = resizeBicubicAA(toTensor(image(40, 40, (x) => (x < 20 ? 0 : 255))), 40, 17);
    expect(Math.max(...edge.data)).toBeGreaterThan(1);
    expect(Math.min(...edge.data)).toBeLessThan(0);
  });

  it('ResizeMaxSize letterboxes: longest side to the size, pad // 2 on the left/top, zeros', () => {
    const r = resizeMaxSize(toTensor(image(48, 40, () => 255)), 32);
    expect([r.channels, r.height, r.width]).toEqual([3, 32, 32]);
    // 40 * 32/48 = 26.67 -> 27 rows; pad 5 = 2 on top + 3 below.
    const row = (y: number) => Array.from(r.data.subarray(y * 32, (y + 1) * 32));
    expect(row(0).every((v) => v === 0) && row(1).every((v) => v === 0)).toBe(true);
    expect(row(2).every((v) => Math.abs(v - 1) < 1e-5)).toBe(true);
    expect(row(28).every((v) => Math.abs(v - 1) < 1e-5)).toBe(true);
    expect([29, 30, 31].every((y) => row(y).every((v) => v === 0))).toBe(true);
    // Already the size on its longest side: passed through untouched (the reference does not pad it either).
    const same = resizeMaxSize(toTensor(image(32, 32, (x) => x)), 32);
    expect(Array.from(same.data)).toEqual(Array.from(toTensor(image(32, 32, (x) => x)).data));
  });

  it('transformers shortest-edge sizes truncate the long side', () => {
    expect(shortestEdgeSize(40, 48, 32)).toEqual([32, 38]);
    expect(shortestEdgeSize(64, 40, 32)).toEqual([51, 32]);
    expect(shortestEdgeSize(720, 720, 224)).toEqual([224, 224]);
  });

  it('PIL bicubic: identity at the same size, constants stay constant, 8-bit clipping', () => {
    const im = image(13, 9, (x, y, c) => (x * 17 + y * 5 + c * 60) % 256);
    expect(pilResizeBicubic(im, 13, 9).rgb).toEqual(im.rgb);
    const c = pilResizeBicubic(image(50, 30, () => 77), 20, 12);
    expect(c.rgb.every((v) => v === 77)).toBe(true);
    const edge = pilResizeBicubic(image(40, 4, (x) => (x < 20 ? 0 : 255)), 17, 4);
    expect(Math.min(...edge.rgb)).toBe(0);
    expect(Math.max(...edge.rgb)).toBe(255);
  });

  it('centre crop takes the middle and zero-pads an image smaller than the crop', () => {
    const im = image(6, 4, (x, y) => y * 6 + x);
    const c = centerCropHwc(im, 2, 2);
    expect(Array.from(c.rgb.filter((_, i) => i % 3 === 0))).toEqual([8, 9, 14, 15]);
    const p = centerCropHwc(image(2, 2, () => 9), 4, 4);
    expect(Array.from(p.rgb.filter((_, i) => i % 3 === 0))).toEqual([0, 0, 0, 0, 0, 9, 9, 0, 0, 9, 9, 0, 0, 0, 0, 0]);
  });
});

// ---- model -------------------------------------------------------------------------------------------

const TINY = {
  embed_dim: 8,
  vision_cfg: { image_size: 26, layers: 2, width: 32, head_width: 8, patch_size: 6 }, // grid 4, remainder 2 dropped
  text_cfg: { context_length: 16, vocab_size: 100, width: 16, heads: 2, layers: 2 },
};

/** Random open_clip-layout weights for `p` (LayerScale gammas when asked). */
function randomOpenClip(p: ClipParams, seed: number): Map<string, HostTensor> {
  const r = rng(seed);
  const m = new Map<string, HostTensor>();
  const put = (name: string, shape: number[], scale = 0.3, offset = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    m.set(name, { shape, data: Float32Array.from({ length: n }, () => offset + (r() * 2 - 1) * scale) });
  };
  const block = (pre: string, d: number, mlp: number, ls: boolean) => {
    put(`${pre}.ln_1.weight`, [d], 0.2, 1); put(`${pre}.ln_1.bias`, [d], 0.1);
    put(`${pre}.attn.in_proj_weight`, [3 * d, d]); put(`${pre}.attn.in_proj_bias`, [3 * d], 0.1);
    put(`${pre}.attn.out_proj.weight`, [d, d]); put(`${pre}.attn.out_proj.bias`, [d], 0.1);
    put(`${pre}.ln_2.weight`, [d], 0.2, 1); put(`${pre}.ln_2.bias`, [d], 0.1);
    put(`${pre}.mlp.c_fc.weight`, [mlp, d]); put(`${pre}.mlp.c_fc.bias`, [mlp], 0.1);
    put(`${pre}.mlp.c_proj.weight`, [d, mlp]); put(`${pre}.mlp.c_proj.bias`, [d], 0.1);
    if (ls) { put(`${pre}.ls_1.gamma`, [d], 0, 1); put(`${pre}.ls_2.gamma`, [d], 0, 1); }
  };
  const v = p.vision, t = p.text, e = p.embedDim;
  const g = Math.floor(v.imageSize / v.patchSize);
  put('visual.conv1.weight', [v.width, 3, v.patchSize, v.patchSize]);
  put('visual.class_embedding', [v.width]);
  put('visual.positional_embedding', [g * g + 1, v.width]);
  put('visual.ln_pre.weight', [v.width], 0.2, 1); put('visual.ln_pre.bias', [v.width], 0.1);
  for (let i = 0; i < v.layers; i++) block(`visual.transformer.resblocks.${i}`, v.width, v.mlpWidth, !!p.layerScale?.vision);
  put('visual.ln_post.weight', [v.width], 0.2, 1); put('visual.ln_post.bias', [v.width], 0.1);
  put('visual.proj', [v.width, e]);
  put('token_embedding.weight', [t.vocabSize, t.width]);
  put('positional_embedding', [t.contextLength, t.width]);
  for (let i = 0; i < t.layers; i++) block(`transformer.resblocks.${i}`, t.width, t.mlpWidth, !!p.layerScale?.text);
  put('ln_final.weight', [t.width], 0.2, 1); put('ln_final.bias', [t.width], 0.1);
  put('text_projection', [t.width, e]);
  put('logit_scale', [], 0, Math.log(1 / 0.07));
  return m;
}

const transpose = (h: HostTensor): HostTensor => {
  const [a, b] = h.shape as [number, number];
  const out = new Float32Array(a * b);
  for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) out[j * a + i] = h.data[i * b + j]!;
  return { shape: [b, a], data: out };
};

/** The same weights under Hugging Face CLIPModel names (q/k/v split, projections as Linear weights). */
function toHf(oc: Map<string, HostTensor>): Map<string, HostTensor> {
  const hf = new Map<string, HostTensor>();
  const block = (from: string, to: string) => {
    for (const [a, b] of [['ln_1', 'layer_norm1'], ['ln_2', 'layer_norm2'], ['attn.out_proj', 'self_attn.out_proj'], ['mlp.c_fc', 'mlp.fc1'], ['mlp.c_proj', 'mlp.fc2']]) {
      for (const s of ['weight', 'bias']) hf.set(`${to}.${b}.${s}`, oc.get(`${from}.${a}.${s}`)!);
    }
    const w = oc.get(`${from}.attn.in_proj_weight`)!, bias = oc.get(`${from}.attn.in_proj_bias`)!;
    const d = w.shape[1]!;
    ['q_proj', 'k_proj', 'v_proj'].forEach((n, i) => {
      hf.set(`${to}.self_attn.${n}.weight`, { shape: [d, d], data: w.data.slice(i * d * d, (i + 1) * d * d) });
      hf.set(`${to}.self_attn.${n}.bias`, { shape: [d], data: bias.data.slice(i * d, (i + 1) * d) });
    });
  };
  hf.set('vision_model.embeddings.patch_embedding.weight', oc.get('visual.conv1.weight')!);
  hf.set('vision_model.embeddings.class_embedding', oc.get('visual.class_embedding')!);
  hf.set('vision_model.embeddings.position_embedding.weight', oc.get('visual.positional_embedding')!);
  for (const s of ['weight', 'bias']) {
    hf.set(`vision_model.pre_layrnorm.${s}`, oc.get(`visual.ln_pre.${s}`)!);
    hf.set(`vision_model.post_layernorm.${s}`, oc.get(`visual.ln_post.${s}`)!);
    hf.set(`text_model.final_layer_norm.${s}`, oc.get(`ln_final.${s}`)!);
  }
  for (let i = 0; oc.has(`visual.transformer.resblocks.${i}.ln_1.weight`); i++) block(`visual.transformer.resblocks.${i}`, `vision_model.encoder.layers.${i}`);
  for (let i = 0; oc.has(`transformer.resblocks.${i}.ln_1.weight`); i++) block(`transformer.resblocks.${i}`, `text_model.encoder.layers.${i}`);
  hf.set('visual_projection.weight', transpose(oc.get('visual.proj')!));
  hf.set('text_model.embeddings.token_embedding.weight', oc.get('token_embedding.weight')!);
  hf.set('text_model.embeddings.position_embedding.weight', oc.get('positional_embedding')!);
  hf.set('text_projection.weight', transpose(oc.get('text_projection')!));
  hf.set('text_model.embeddings.position_ids', { shape: [1, 16], data: new Float32Array(16) });
  return hf;
}

function source(m: Map<string, HostTensor>): StateDict {
  return { names: () => [...m.keys()], has: (n) => m.has(n), read: (n) => m.get(n)! };
}

/** Token rows [N, context]: start 98, words, end 99 (the largest id, so argmax pooling finds it), padding 0. */
function tokens(rows: number[][], context: number): { ids: Int32Array; shape: [number, number] } {
  const ids = new Int32Array(rows.length * context);
  rows.forEach((r, i) => ids.set([98, ...r, 99], i * context));
  return { ids, shape: [rows.length, context] };
}

function randomPixels(dev: Device, b: number, s: number, seed: number): Tensor {
  const r = rng(seed);
  return Tensor.from(dev, Float32Array.from({ length: b * 3 * s * s }, () => r() * 4 - 2), [b, 3, s, s]);
}

const devices: Record<string, Device> = {};
beforeAll(async () => {
  devices.cpu = new CpuDevice();
  devices.webgpu = await WebGPUDevice.create();
});
afterAll(() => devices.webgpu?.destroy());

describe.each(['cpu', 'webgpu'])('CLIP model on %s', (kind) => {
  const params = openClipParams(TINY);
  const weights = randomOpenClip(params, 7);
  const text = tokens([[5, 6, 7], [11], [3, 4, 5, 6, 7, 8, 9, 10]], params.text.contextLength);

  it('config-driven sizes: ViT-H-14 and the tiny config', () => {
    const h = openClipParams(VIT_H_14_CONFIG);
    expect([h.vision.width, h.vision.layers, h.vision.heads, h.vision.mlpWidth, h.vision.patchSize, h.vision.imageSize]).toEqual([1280, 32, 16, 5120, 14, 224]);
    expect([h.text.width, h.text.layers, h.text.heads, h.text.mlpWidth, h.text.contextLength, h.embedDim]).toEqual([1024, 24, 16, 4096, 77, 1024]);
    expect(h.vision.act).toBe('gelu_erf');
    expect(openClipParams({ ...TINY, quick_gelu: true }).text.act).toBe('quick_gelu');
    expect(params.vision.heads).toBe(4);
  });

  it('the open_clip and Hugging Face layouts of the same weights give the same features', async () => {
    const dev = devices[kind]!;
    const oc = loadClip(dev, source(weights), params, 'open_clip');
    const hfParams = hfClipParams({
      projection_dim: 8,
      vision_config: { image_size: 26, patch_size: 6, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, hidden_act: 'gelu' },
      text_config: { max_position_embeddings: 16, vocab_size: 100, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, hidden_act: 'gelu', eos_token_id: 2 },
    });
    const hf = loadClip(dev, source(toHf(weights)), hfParams, 'hf');
    const px = randomPixels(dev, 2, 26, 3);
    const [a, b] = [oc.imageFeatures(px), hf.imageFeatures(px)];
    expect(relL2(await b.toFloat64(), await a.toFloat64())).toBeLessThan(1e-6);
    const [ta, tb] = [oc.textFeatures(text), hf.textFeatures(text)];
    expect(relL2(await tb.toFloat64(), await ta.toFloat64())).toBeLessThan(1e-6);
    [px, a, b, ta, tb].forEach((t) => t.dispose());
    oc.dispose();
    hf.dispose();
  });

  it('trimming the text after the end token, batching images, and the patch matmul change nothing', async () => {
    const dev = devices[kind]!;
    const m = loadClip(dev, source(weights), params, 'tiny');
    const full = m.textFeatures(text);
    const trimmed = m.textFeatures(text, { trim: true });
    expect(relL2(await trimmed.toFloat64(), await full.toFloat64())).toBeLessThan(1e-6);
    const px = randomPixels(dev, 3, 26, 5);
    const captured = new Map<string, Tensor>();
    const all = await m.encodeImage(px, captured).toFloat64();
    for (let i = 0; i < 3; i++) {
      const one = px.slice(0, i, i + 1);
      const f = m.encodeImage(one);
      expect(relL2(await f.toFloat64(), all.slice(i * 8, (i + 1) * 8))).toBeLessThan(1e-6);
      [one, f].forEach((t) => t.dispose());
    }
    // The patch embedding equals a stride-P convolution (on the CPU reference, which drops the remainder the same way).
    const cpu = devices.cpu!;
    const hostPx = Tensor.from(cpu, Float32Array.from(await px.toFloat64()), px.shape);
    const w = weights.get('visual.conv1.weight')!;
    const hostW = Tensor.from(cpu, w.data, w.shape);
    const conv = T.conv2d(hostPx, hostW, null, 6, 0);
    expect(conv.shape).toEqual(captured.get('visual.conv1')!.shape);
    expect(relL2(await captured.get('visual.conv1')!.toFloat64(), await conv.toFloat64())).toBeLessThan(1e-6);
    [full, trimmed, px, hostPx, hostW, conv, ...captured.values()].forEach((t) => t.dispose());
    m.dispose();
  });

  it('LayerScale with unit gammas equals no LayerScale; quick-GELU runs', async () => {
    const dev = devices[kind]!;
    const lsParams: ClipParams = { ...params, layerScale: { vision: true, text: true } };
    const ls = new Map(weights);
    for (const k of weights.keys()) {
      const m = /^(.*resblocks\.\d+)\.ln_1\.weight$/.exec(k);
      const d = weights.get(k)!.shape[0]!;
      if (m) for (const g of ['ls_1', 'ls_2']) ls.set(`${m[1]}.${g}.gamma`, { shape: [d], data: new Float32Array(d).fill(1) });
    }
    const a = loadClip(dev, source(ls), lsParams, 'ls');
    const b = loadClip(dev, source(weights), params, 'plain');
    const px = randomPixels(dev, 1, 26, 9);
    const [fa, fb] = [a.imageFeatures(px), b.imageFeatures(px)];
    expect(relL2(await fa.toFloat64(), await fb.toFloat64())).toBeLessThan(1e-6);
    const q = loadClip(dev, source(weights), openClipParams({ ...TINY, quick_gelu: true }), 'quick');
    const fq = q.imageFeatures(px);
    const vq = await fq.toFloat64();
    expect(vq.every(Number.isFinite)).toBe(true);
    expect(relL2(vq, await fb.toFloat64())).toBeGreaterThan(1e-4);
    [px, fa, fb, fq].forEach((t) => t.dispose());
    [a, b, q].forEach((m) => m.dispose());
  });

  it('every buffer is released: after a forward pass and after dispose', async () => {
    const dev = devices[kind]!;
    await dev.sync();
    const base = dev.memory().liveBuffers;
    const m = loadClip(dev, source(weights), params, 'tiny');
    const loaded = dev.memory().liveBuffers;
    const px = randomPixels(dev, 2, 26, 1);
    const img = m.imageFeatures(px);
    const txt = m.textFeatures(text, { trim: true });
    const s = similarity(img, txt);
    await s.toFloat64();
    [px, img, txt, s].forEach((t) => t.dispose());
    expect(dev.memory().liveBuffers).toBe(loaded);
    m.dispose();
    expect(dev.memory().liveBuffers).toBe(base);
  });
});

describe('loading', () => {
  const params = openClipParams(TINY);
  const weights = randomOpenClip(params, 7);
  const cpu = new CpuDevice();

  it('refuses missing tensors, wrong shapes and unexpected keys, naming them', () => {
    const missing = new Map(weights);
    missing.delete('visual.ln_post.bias');
    expect(() => loadClip(cpu, source(missing), params, 'ck')).toThrow(/missing tensor 'visual.ln_post.bias'/);
    const wrong = new Map(weights);
    wrong.set('visual.proj', { shape: [32, 9], data: new Float32Array(32 * 9) });
    expect(() => loadClip(cpu, source(wrong), params, 'ck')).toThrow(/'visual.proj' has shape \[32,9\], the config expects \[32,8\]/);
    const extra = new Map(weights);
    extra.set('visual.transformer.resblocks.2.ln_1.weight', { shape: [32], data: new Float32Array(32) });
    expect(() => loadClip(cpu, source(extra), params, 'ck')).toThrow(/resblocks\.2\.ln_1\.weight/);
    expect(cpu.memory().liveBuffers).toBe(0);
  });

  it("drops 'module.' as HPSv2 does: only when the first key starts with 'module'", () => {
    expect(stripModulePrefix([['module.a', 1], ['module.b', 2]])).toEqual([['a', 1], ['b', 2]]);
    expect(stripModulePrefix([['a', 1], ['module.b', 2]])).toEqual([['a', 1], ['module.b', 2]]);
  });

  it('refuses open_clip towers it does not implement', () => {
    expect(() => openClipParams({ ...TINY, vision_cfg: { ...TINY.vision_cfg, attentional_pool: true } })).toThrow(/attentional_pool/);
    expect(() => openClipParams({ ...TINY, text_cfg: { ...TINY.text_cfg, hf_model_name: 'x' } })).toThrow(/hf_model_name/);
    expect(() => hfClipParams({ vision_config: { hidden_act: 'relu' } })).toThrow(/hidden_act 'relu'/);
  });
});

describe('rewards', () => {
  it('registry: names, unknown names, model rewards need a device and weights', () => {
    expect(rewardNames().map((r) => r.name)).toEqual(expect.arrayContaining(['hps', 'pickscore', 'brightness', 'colorfulness']));
    expect(() => createReward('nope')).toThrow(/unknown reward 'nope'/);
    expect(() => createReward('hps')).toThrow(/needs a device/);
    expect(() => createReward('pickscore', { device: new CpuDevice() })).toThrow(/needs the model/);
  });

  it('brightness and colorfulness on synthetic images; one prompt per image', async () => {
    const white = image(4, 4, () => 255), black = image(4, 4, () => 0), grey = image(4, 4, () => 128);
    const red = image(4, 4, (_, __, c) => (c === 0 ? 255 : 0));
    expect(brightness(white)).toBeCloseTo(1, 12);
    expect(brightness(black)).toBe(0);
    expect(colorfulness(grey)).toBe(0);
    expect(colorfulness(red)).toBeGreaterThan(0.3);
    const r = createReward('brightness');
    expect(await r.score([white, black], ['a', 'b'])).toEqual([brightness(white), 0]);
    await expect(r.score([white], ['a', 'b'])).rejects.toThrow(/1 images but 2 prompts/);
  });
});
