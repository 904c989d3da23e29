// FLUX transformer block forward cost: one double-stream and one single-stream block with random
// weights, timed at a stated width and token count, with its FLOP count, achieved GFLOP/s, peak device
// memory, and the GFLOP/s of the block's own matmuls (the same linear layers timed alone) for the
// ratio block / matmul. The real FLUX.1 block is hidden 3072 / 24 heads x 128 with 256 image + 512
// text tokens (a 256x256 image with DanceGRPO's 512 T5 tokens); --small runs a quick 512 / 4 heads
// config.
// Run: npx tsx bench/flux.bench.ts [--device webgpu|cpu] [--small] [--hidden D --heads H --img Li --txt Lt]
//      [--repeat N] [--json] [--backward] [--weights f32|bf16] [--compute f32|bf16]
// --weights bf16 stores the linears' weights and biases in bf16 (as loadFluxTransformer's
// weights: 'bf16'; the matmuls-alone baseline then reads bf16 weights too); --compute bf16 runs the
// blocks under bf16 autocast (f32 masters, bf16 compute copies, see src/autograd/autocast.ts).
// --backward adds forward+backward through a stack of --blocks N (default 4) applications of the
// single block (full fine-tuning: every weight gets a gradient) with and without gradient
// checkpointing, and the peak memory of each (activations grow with N only without checkpointing).
import * as A from '../src/autograd/functional.ts';
import { noGrad } from '../src/autograd/functional.ts';
import type { Device } from '../src/device/device.ts';
import { createDevice } from '../src/device/registry.ts';
import { DoubleStreamBlock, SingleStreamBlock, findLinears } from '../src/models/flux/layers.ts';
import { ropeTables, ropeTensors } from '../src/models/flux/math.ts';
import { latentImageIds, textIds } from '../src/models/flux/pack.ts';
import { type FluxParams, fluxParameterShapes, fluxParamsFromConfig, mlpHidden } from '../src/models/flux/params.ts';
import * as T from '../src/tensor/ops.ts';
import { Tensor } from '../src/tensor/tensor.ts';
import { choice, flag } from './flags.ts';

const kind = flag('device') ?? 'webgpu';
const small = flag('small') === 'true' || (kind === 'cpu' && flag('real') !== 'true');
const hidden = Number(flag('hidden') ?? (small ? 512 : 3072));
const heads = Number(flag('heads') ?? (small ? 4 : 24));
const li = Number(flag('img') ?? (small ? 64 : 256));
const lt = Number(flag('txt') ?? (small ? 128 : 512));
const repeat = Number(flag('repeat') ?? 2);
const json = flag('json') === 'true';
const weightDtype = choice('weights', ['f32', 'bf16']);
const compute = choice('compute', ['f32', 'bf16']);
const log = (msg: string) => { if (!json) console.log(`[${(performance.now() / 1000).toFixed(1)}s] ${msg}`); };
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

const headDim = hidden / heads;
if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new Error(`--hidden ${hidden} / --heads ${heads} must give an even head width`);
// RoPE axes as FLUX.1 splits 128 (16, 56, 56), scaled to other head widths.
const a0 = 2 * Math.round(headDim / 16);
const a1 = 2 * Math.floor((headDim - a0) / 4);
const p: FluxParams = fluxParamsFromConfig({
  num_attention_heads: heads, attention_head_dim: headDim, num_layers: 1, num_single_layers: 1,
  axes_dims_rope: [a0, a1, headDim - a0 - a1], guidance_embeds: true,
});
const mlp = mlpHidden(p);

/** Deterministic uniform(-s, s) host values without the torch generator (fast for 10^8 values). */
function uniform(n: number, s: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out[i] = ((x / 4294967296) * 2 - 1) * s;
  }
  return out;
}

/** Random parameters of block 0 of each kind (checkpoint names). */
function blockParams(dev: Device): Map<string, Tensor> {
  const params = new Map<string, Tensor>();
  let seed = 1;
  for (const [name, shape] of fluxParameterShapes(p)) {
    if (!name.startsWith('transformer_blocks.0.') && !name.startsWith('single_transformer_blocks.0.')) continue;
    const n = shape.reduce((a, b) => a * b, 1);
    const values = shape.length === 2 ? uniform(n, Math.sqrt(3 / shape[1]!), seed++) : name.endsWith('.bias') ? uniform(n, 0.1, seed++) : new Float32Array(n).fill(1);
    const linear = shape.length === 2 || name.endsWith('.bias');
    params.set(name, Tensor.from(dev, values, shape, linear ? weightDtype : 'f32'));
  }
  return params;
}

/** FLOPs of the linear layers [rows, in, out, count] and the attention of one block. */
function blockWork(kind: 'double' | 'single'): { linears: [number, number, number, number][]; attention: number } {
  const d = hidden, l = li + lt;
  const attention = 4 * heads * l * l * headDim; // QK^T and PV, 2 flops per multiply-add
  if (kind === 'double') {
    return {
      linears: [
        [1, d, 6 * d, 2], // norm1 / norm1_context modulation
        [li, d, d, 4], [lt, d, d, 4], // q, k, v, out per stream
        [li, d, mlp, 1], [li, mlp, d, 1], [lt, d, mlp, 1], [lt, mlp, d, 1],
      ],
      attention,
    };
  }
  return { linears: [[1, d, 3 * d, 1], [l, d, d, 3], [l, d, mlp, 1], [l, d + mlp, d, 1]], attention };
}

const linearFlops = (ls: [number, number, number, number][]) => ls.reduce((s, [r, i, o, c]) => s + 2 * r * i * o * c, 0);

async function timeIt(dev: Device, fn: () => Tensor[]): Promise<number> {
  await dev.sync();
  let outs: Tensor[] = [];
  const ms = await dev.time(() => { outs = fn(); });
  await dev.sync();
  outs.forEach((t) => t.dispose());
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const dev = await createDevice(kind);
log(`device: ${dev.name}`);
const precision = `${weightDtype} weights, ${compute} compute`;
log(`config: hidden ${hidden}, ${heads} heads x ${headDim}, mlp ${mlp}, ${li} image + ${lt} text tokens, batch 1, ${precision}`);
const params = blockParams(dev);
await dev.sync();
const weightBytes = dev.memory().liveBytes;
log(`random weights of one double + one single block: ${mib(weightBytes)}`);

const one = Tensor.full(dev, [1], 1);
const ctx = { one, compute };
const double = new DoubleStreamBlock(params, 'transformer_blocks.0', heads, ctx);
const single = new SingleStreamBlock(params, 'single_transformer_blocks.0', heads, ctx);
const linears = [...findLinears([double, single]).values()];
for (const l of linears) l.compute = compute;
const img = Tensor.from(dev, uniform(li * hidden, 1, 101), [1, li, hidden]);
const txt = Tensor.from(dev, uniform(lt * hidden, 1, 102), [1, lt, hidden]);
const joint = Tensor.from(dev, uniform((li + lt) * hidden, 1, 103), [1, li + lt, hidden]);
const temb = Tensor.from(dev, uniform(hidden, 1, 104), [1, hidden]);
const side = Math.round(Math.sqrt(li));
const ids = new Float32Array([...textIds(lt), ...(side * side === li ? latentImageIds(side, side) : latentImageIds(1, li))]);
const pe = ropeTensors(dev, ropeTables(ids, p.axesDim, p.theta));

interface Row { block: string; ms: number; gflop: number; gflops: number; peakBytes: number; peakAboveInputs: number; matmulMs: number; matmulGflops: number; ratio: number }
const rows: Row[] = [];

for (const kindOfBlock of ['double', 'single'] as const) {
  const run = () => noGrad(() => (kindOfBlock === 'double' ? double.forward(img, txt, temb, pe) : [single.forward(joint, temb, pe)]));
  log(`${kindOfBlock} block: warm-up run (pipeline compilation) ...`);
  await timeIt(dev, run);
  const times: number[] = [];
  let peak = 0, peakBytes = 0;
  for (let r = 0; r < repeat; r++) {
    await dev.sync();
    const base = dev.memory().liveBytes;
    dev.resetPeak();
    times.push(await timeIt(dev, run));
    peak = Math.max(peak, dev.memory().peakBytes - base);
    peakBytes = Math.max(peakBytes, dev.memory().peakBytes);
    log(`${kindOfBlock} block run ${r + 1}/${repeat}: ${times.at(-1)!.toFixed(1)} ms, peak ${mib(dev.memory().peakBytes)} (${mib(dev.memory().peakBytes - base)} above weights and inputs)`);
  }

  // The same linear layers alone, on inputs of the same sizes and dtypes (under bf16 compute the
  // blocks' matmuls read bf16 inputs and bf16 weight copies).
  const work = blockWork(kindOfBlock);
  const matmulW = compute === 'bf16' ? 'bf16' : weightDtype;
  let matmulMs = 0;
  for (const [r, i, o, c] of work.linears) {
    const x = Tensor.from(dev, uniform(r * i, 1, 7), [1, r, i], compute);
    const w = Tensor.from(dev, uniform(o * i, 0.01, 8), [o, i], matmulW);
    const b = Tensor.full(dev, [o], 0.5, matmulW);
    await timeIt(dev, () => [T.linear(x, w, b)]); // warm-up
    const ts: number[] = [];
    for (let k = 0; k < repeat; k++) ts.push(await timeIt(dev, () => [T.linear(x, w, b)]));
    matmulMs += median(ts) * c;
    [x, w, b].forEach((t) => t.dispose());
  }
  const flops = linearFlops(work.linears) + work.attention;
  const ms = median(times);
  const row: Row = {
    block: kindOfBlock, ms, gflop: flops / 1e9, gflops: flops / 1e6 / ms, peakBytes, peakAboveInputs: peak,
    matmulMs, matmulGflops: linearFlops(work.linears) / 1e6 / matmulMs, ratio: 0,
  };
  row.ratio = row.gflops / row.matmulGflops;
  rows.push(row);
}

if (json) {
  console.log(JSON.stringify({ device: dev.name, kind, hidden, heads, headDim, mlp, imageTokens: li, textTokens: lt, weights: weightDtype, compute, weightBytes, rows }, null, 2));
} else {
  console.log(`\nFLUX block forward on ${dev.name} (${kind}), ${precision}, batch 1, hidden ${hidden} = ${heads} heads x ${headDim}, ${li} image + ${lt} text tokens`);
  console.log('FLOPs: linear layers 2*rows*in*out + attention 4*H*L^2*Dh (norms, RoPE, elementwise not counted)');
  console.log('block    median ms    GFLOP   GFLOP/s   peak memory   peak above inputs   matmuls alone ms  matmul GFLOP/s  block/matmul');
  for (const r of rows) {
    console.log(`${r.block.padEnd(8)} ${r.ms.toFixed(1).padStart(10)} ${r.gflop.toFixed(2).padStart(8)} ${r.gflops.toFixed(2).padStart(9)} ${mib(r.peakBytes).padStart(13)} ${mib(r.peakAboveInputs).padStart(19)} ${r.matmulMs.toFixed(1).padStart(18)} ${r.matmulGflops.toFixed(2).padStart(15)} ${r.ratio.toFixed(2).padStart(13)}`);
  }
  console.log(`weights of the two blocks: ${mib(weightBytes)}; peak memory = device.memory().peakBytes during one forward (weights, inputs, activations, output)`);
}
if (flag('backward')) {
  // bf16 weights are a frozen base (LoRA's): only the input gets a gradient then.
  const singleParams = weightDtype === 'f32' ? [...params].filter(([k]) => k.startsWith('single_transformer_blocks.0')).map(([, t]) => t) : [];
  if (weightDtype === 'bf16') log('bf16 weights are frozen: backward computes the input gradient only');
  const cot = Tensor.from(dev, uniform((li + lt) * hidden, 1, 105), [1, li + lt, hidden]);
  singleParams.forEach((t) => (t.requiresGrad = true));
  joint.requiresGrad = true;
  const depth = Number(flag('blocks') ?? 4);
  const step = (ckpt: boolean) => {
    let x = joint;
    for (let i = 0; i < depth; i++) {
      const y = ckpt ? A.checkpoint(([h]) => single.forward(h!, temb, pe), [x], singleParams) : single.forward(x, temb, pe);
      if (x !== joint) x.dispose();
      x = y;
    }
    const weighted = A.mul(x, cot);
    const flat = A.reshape(weighted, [-1]);
    const loss = A.sum(flat, 0);
    A.backward(loss);
    return [x, weighted, flat, loss];
  };
  const clearGrads = () => [...singleParams, joint].forEach((t) => { t.grad?.dispose(); t.grad = null; });
  for (const ckpt of [false, true]) {
    log(`${depth} single blocks forward+backward, checkpointing ${ckpt ? 'on' : 'off'}: warm-up ...`);
    await timeIt(dev, () => step(ckpt));
    clearGrads();
    await dev.sync();
    const base = dev.memory().liveBytes;
    dev.resetPeak();
    const ms = await timeIt(dev, () => step(ckpt));
    const peakAbove = dev.memory().peakBytes - base;
    clearGrads();
    console.log(`${depth} single blocks forward+backward, checkpointing ${ckpt ? 'on ' : 'off'}: ${ms.toFixed(1)} ms, peak ${mib(peakAbove)} above weights and inputs (gradients included)`);
  }
  cot.dispose();
}
for (const l of linears) l.releaseCopies();
for (const t of [...params.values(), one, img, txt, joint, temb, pe.cos, pe.sin]) t.dispose();
dev.destroy();
