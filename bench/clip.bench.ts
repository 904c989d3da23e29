// CLIP reward encode time at the real HPS v2.1 size (open_clip ViT-H-14: vision width 1280, 32 layers,
// 16 heads, patch 14, image 224; text width 1024, 24 layers, 16 heads, context 77; embed 1024), random
// weights, on one device:
//
//   npx tsx bench/clip.bench.ts [--device webgpu|cpu] [--layers N] [--batch B] [--reps R] [--adapter NAME]
//
// Reports per-image vision time (batch of B images, one forward), per-prompt text time (77 tokens as the
// reference runs it, and trimmed after the end token as the reward runs it), and peak memory.
// With --layers N < 32 (24 for text) the towers are built with N blocks (at most the full count) and with
// 0 blocks; the full time is extrapolated as t(0) + (full / N) * (t(N) - t(0)), and the output says so.
import type { Device } from '../src/device/device.ts';
import { createDevice } from '../src/device/registry.ts';
import type { HostTensor, StateDict } from '../src/models/clip/layers.ts';
import { loadClip, openClipParams, VIT_H_14_CONFIG } from '../src/models/clip/load.ts';
import type { ClipModel, ClipParams } from '../src/models/clip/model.ts';
import { Tensor } from '../src/tensor/tensor.ts';
import { flag } from './flags.ts';

const log = (s: string) => console.log(`[clip.bench] ${s}`);

/** Random weights of any requested shape: a repeated block of uniform values, cheap to produce at 1e9 elements. */
function randomSource(): StateDict {
  const pattern = new Float32Array(1 << 20);
  let s = 12345;
  for (let i = 0; i < pattern.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    pattern[i] = (s / 2 ** 32 - 0.5) * 0.04;
  }
  return {
    names: () => [],
    has: () => true,
    read: (name: string, shape?: readonly number[]): HostTensor => {
      if (!shape) throw new Error(`random source: no shape for ${name}`);
      const n = shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(n);
      // LayerNorm weights 1 (keeps activations in range); everything else the random pattern.
      if (/(ln_\w+|ln_1|ln_2)\.weight$/.test(name)) data.fill(1);
      else for (let at = 0; at < n; at += pattern.length) data.set(pattern.subarray(0, Math.min(pattern.length, n - at)), at);
      return { shape: [...shape], data };
    },
  };
}

function withLayers(p: ClipParams, vision: number, text: number): ClipParams {
  return { ...p, vision: { ...p.vision, layers: vision }, text: { ...p.text, layers: text } };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

interface Timings { image: number; text77: number; textTrim: number }

async function timeModel(dev: Device, model: ClipModel, batch: number, reps: number, label: string): Promise<Timings> {
  const { imageSize } = model.params.vision;
  const ctx = model.params.text.contextLength;
  const px = new Float32Array(batch * 3 * imageSize * imageSize);
  for (let i = 0; i < px.length; i++) px[i] = Math.sin(i * 0.37) * 1.5;
  // A typical prompt: 18 tokens + start/end, padded with 0 to the context (open_clip's tokenizer).
  const ids = new Int32Array(ctx);
  ids.set([49406, ...Array.from({ length: 18 }, (_, i) => 320 + i * 97), 49407]);
  const tokens = { ids, shape: [1, ctx] as [number, number] };
  const run = async (what: 'image' | 'text77' | 'textTrim') => {
    const t0 = performance.now();
    let out: Tensor;
    if (what === 'image') {
      const pixels = Tensor.from(dev, px, [batch, 3, imageSize, imageSize]);
      out = model.encodeImage(pixels);
      pixels.dispose();
    } else {
      out = model.encodeText(tokens, { trim: what === 'textTrim' });
    }
    await out.toFloat64();
    out.dispose();
    return performance.now() - t0;
  };
  const res: Partial<Timings> = {};
  for (const what of ['image', 'text77', 'textTrim'] as const) {
    log(`${label}: ${what} warm-up`);
    await run(what);
    const ts: number[] = [];
    for (let r = 0; r < reps; r++) {
      ts.push(await run(what));
      log(`${label}: ${what} rep ${r + 1}/${reps}: ${ts.at(-1)!.toFixed(0)} ms`);
    }
    res[what] = median(ts);
  }
  return res as Timings;
}

async function main(): Promise<void> {
  const kind = flag('device', 'webgpu')!;
  const full = openClipParams(VIT_H_14_CONFIG);
  const fullV = full.vision.layers, fullT = full.text.layers;
  const n = Math.max(1, Number(flag('layers', String(kind === 'cpu' ? 1 : fullV))));
  const batch = Number(flag('batch', '1'));
  const reps = Number(flag('reps', '3'));
  const nV = Math.min(n, fullV), nT = Math.min(n, fullT);
  const extrapolate = nV < fullV || nT < fullT;
  const dev = await createDevice(kind, { adapter: flag('adapter') });
  log(`device ${dev.name}; ViT-H-14 (vision ${full.vision.width}x${fullV} layers, text ${full.text.width}x${fullT}, embed ${full.embedDim}), batch ${batch}, ${reps} reps`);
  log(extrapolate ? `building ${nV} vision / ${nT} text blocks (and 0) and extrapolating to ${fullV} / ${fullT}` : 'building the full model');

  const src = randomSource();
  const measure = async (lv: number, lt: number) => {
    await dev.sync();
    dev.resetPeak();
    const rss0 = process.memoryUsage().rss;
    const t0 = performance.now();
    const model = loadClip(dev, src, withLayers(full, lv, lt), 'random ViT-H-14');
    await dev.sync();
    const weightBytes = dev.memory().liveBytes;
    log(`${lv}/${lt} blocks: weights uploaded in ${((performance.now() - t0) / 1000).toFixed(1)} s, ${(weightBytes / 2 ** 30).toFixed(2)} GiB on the device`);
    let peakRss = process.memoryUsage().rss;
    const timer = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 50);
    const t = await timeModel(dev, model, batch, reps, `${lv}/${lt} blocks`);
    clearInterval(timer);
    const peak = dev.memory().peakBytes;
    model.dispose();
    return { t, weightBytes, peak, peakRss: Math.max(peakRss, process.memoryUsage().rss), rss0 };
  };

  const a = await measure(nV, nT);
  let image = a.t.image, text77 = a.t.text77, textTrim = a.t.textTrim;
  let weightBytes = a.weightBytes;
  if (extrapolate) {
    const z = await measure(0, 0);
    const ext = (tn: number, t0: number, fullL: number, nl: number) => t0 + (fullL / nl) * Math.max(tn - t0, 0);
    image = ext(a.t.image, z.t.image, fullV, nV);
    text77 = ext(a.t.text77, z.t.text77, fullT, nT);
    textTrim = ext(a.t.textTrim, z.t.textTrim, fullT, nT);
    // A block holds 12 D^2 + 13 D floats (in_proj, out_proj, two LayerNorms, the 4x MLP).
    const block = (d: number) => 4 * (12 * d * d + 13 * d);
    weightBytes = z.weightBytes + fullV * block(full.vision.width) + fullT * block(full.text.width);
    log(`0 blocks (embeddings, heads, patch matmul): image ${z.t.image.toFixed(0)} ms, text77 ${z.t.text77.toFixed(0)} ms`);
  }
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
  console.log('');
  console.log(`CLIP ViT-H-14 (HPS v2.1 size) on ${dev.name}${extrapolate ? ` -- EXTRAPOLATED from ${nV} vision / ${nT} text blocks` : ''}`);
  console.log(`  image encode : ${(image / batch / 1000).toFixed(2)} s per image (batch ${batch}: ${(image / 1000).toFixed(2)} s per forward)`);
  console.log(`  text encode  : ${(text77 / 1000).toFixed(2)} s per prompt at 77 tokens, ${(textTrim / 1000).toFixed(2)} s trimmed to 20 tokens`);
  console.log(`  per image with its prompt (trimmed text): ${((image / batch + textTrim) / 1000).toFixed(2)} s`);
  console.log(`  weights on the device: ${gib(weightBytes)}${extrapolate ? ' (full model, extrapolated)' : ''}`);
  console.log(`  peak device memory while timing (${nV}/${nT} blocks): ${gib(a.peak)} (of which weights ${gib(a.weightBytes)}); activations ${gib(a.peak - a.weightBytes)}`);
  console.log(`  peak process RSS: ${gib(a.peakRss)}`);
  dev.destroy();
}

await main();
