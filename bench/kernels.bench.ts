// Kernel profiler: every op of the Device interface at representative sizes on one device, timed
// with device.time() (GPU timestamps where the device has them), median of repeated runs after a
// warm-up, as GFLOP/s (matmul, attention, conv2d) or GB/s (the memory-bound ops); then, on WebGPU,
// our matmul against TensorFlow.js's WebGPU backend on the same Dawn device (bench/tfjs_baseline.ts).
// An op that throws (not implemented yet, say) is reported as missing, not fatal.
//
//   npx tsx bench/kernels.bench.ts [--device webgpu|cpu] [--json] [--quick] [--adapter NAME]
//
// Sizes are scaled for lavapipe (FLUX's linear layers at 768 tokens, one attention/conv/norm size
// each); --quick runs fewer matmul sizes and repetitions; the CPU device gets small sizes.
import { pathToFileURL } from 'node:url';
import type { Device, View } from '../src/device/device.ts';
import { createDevice } from '../src/device/registry.ts';
import { WebGPUDevice } from '../src/device/webgpu/device.ts';
import { chosenVariant } from '../src/kernels/matmul.ts';
import { DTYPE_BYTES, type DType, fromNumbers } from '../src/tensor/dtype.ts';
import { contiguousStrides, numel } from '../src/tensor/shape.ts';
import { type BaselineRow, tfjsMatmulBaseline } from './tfjs_baseline.ts';

export interface BenchOptions {
  device: string;
  adapter?: string;
  json?: boolean;
  quick?: boolean;
}

type Tier = 'full' | 'quick' | 'tiny';

interface Spec {
  /** Row name, e.g. "matmul 1024^3". */
  name: string;
  op: string;
  shape: string;
  /** Work of one run: floating-point operations or bytes moved. */
  flops?: number;
  bytes?: number;
  /** Allocates the operands; returns the op issued once. */
  setup(dev: Device, alloc: (shape: number[], dtype?: DType) => View): () => void;
}

export interface KernelResult {
  name: string;
  op: string;
  shape: string;
  ms?: number;
  gflops?: number;
  gbps?: number;
  reps?: number;
  /** Why there is no figure: the op threw (not implemented, unsupported). */
  missing?: string;
}

/** `weights`: the dtype of b and bias (bf16 as FLUX checkpoints ship them; f32 accumulation either way). */
function matmulSpec(name: string, batch: number, m: number, n: number, k: number, opts: { transB?: boolean; bias?: boolean; act?: 'gelu_tanh'; weights?: 'bf16' } = {}): Spec {
  return {
    name,
    op: 'matmul',
    shape: `[${batch},${m},${k}]x[${batch},${opts.transB ? `${n},${k}]^T` : `${k},${n}]`}${opts.bias ? ' +bias' : ''}${opts.act ? ` ${opts.act}` : ''}${opts.weights ? ` ${opts.weights} b` : ''}`,
    flops: 2 * batch * m * n * k,
    setup: (dev, t) => {
      const a = t([batch, m, k]), b = t(opts.transB ? [batch, n, k] : [batch, k, n], opts.weights), out = t([batch, m, n]);
      const bias = opts.bias ? t([n], opts.weights) : null;
      return () => dev.matmul(a, b, out, { transB: opts.transB, bias, act: opts.act });
    },
  };
}

function matmulSpecs(tier: Tier): Spec[] {
  const linear = (m: number, n: number, k: number, act?: 'gelu_tanh', weights?: 'bf16') =>
    matmulSpec(`linear ${m}x${k}->${n}${weights ? ` ${weights} weights` : ''}`, 1, m, n, k, { transB: true, bias: true, act, weights });
  switch (tier) {
    case 'tiny': return [matmulSpec('matmul 64^3', 1, 64, 64, 64), matmulSpec('matmul 128^3', 1, 128, 128, 128), linear(96, 96, 96)];
    case 'quick': return [
      matmulSpec('matmul 256^3', 1, 256, 256, 256),
      matmulSpec('matmul 1024^3', 1, 1024, 1024, 1024),
      // FLUX's [256 + 512 tokens, 3072] x [3072, 3072] linear, width scaled down 4x for lavapipe.
      linear(768, 768, 768),
      linear(768, 768, 768, undefined, 'bf16'),
    ];
    case 'full': return [
      matmulSpec('matmul 256^3', 1, 256, 256, 256),
      matmulSpec('matmul 512^3', 1, 512, 512, 512),
      matmulSpec('matmul 1024^3', 1, 1024, 1024, 1024),
      matmulSpec('matmul batched', 8, 256, 256, 64),
      linear(768, 768, 768),
      linear(768, 3072, 768, 'gelu_tanh'),
      linear(768, 3072, 3072),
      linear(768, 3072, 3072, undefined, 'bf16'),
    ];
  }
}

/** One representative size of every other op (elementwise ones over n elements). */
function opSpecs(tier: Tier): Spec[] {
  const tiny = tier === 'tiny';
  const n = tiny ? 1 << 16 : 1 << 22;
  const f32 = 4;
  const rows = (shape: number[]) => `[${shape}]`;
  const sm = tiny ? [64, 128] : [1536, 1024];
  const ln = tiny ? [32, 256] : [768, 3072];
  const rms = tiny ? [256, 64] : [24 * 768, 128];
  const [ab, ah, al, ad] = tiny ? [1, 2, 64, 32] : [1, 12, 512, 64];
  const rope = tiny ? [1, 2, 64, 32] : [1, 24, 768, 128];
  const [cb, cc, ch, cw] = tiny ? [1, 8, 16, 16] : [1, 64, 64, 64];
  const gn = tiny ? [1, 32, 256] : [1, 128, 64 * 64];
  const up = tiny ? [1, 8, 16, 16] : [1, 128, 64, 64];
  return [
    { name: 'softmax', op: 'softmax', shape: rows(sm), bytes: 2 * f32 * numel(sm), setup: (dev, t) => {
      const x = t(sm), out = t(sm);
      return () => dev.softmax(x, out);
    } },
    { name: 'layerNorm', op: 'layerNorm', shape: `${rows(ln)} +weight +bias`, bytes: 2 * f32 * numel(ln), setup: (dev, t) => {
      const x = t(ln), w = t([ln[1]!]), b = t([ln[1]!]), out = t(ln);
      return () => dev.layerNorm(x, w, b, out, { eps: 1e-6 });
    } },
    { name: 'rmsNorm', op: 'rmsNorm', shape: `${rows(rms)} +weight`, bytes: 2 * f32 * numel(rms), setup: (dev, t) => {
      const x = t(rms), w = t([rms[1]!]), out = t(rms);
      return () => dev.rmsNorm(x, w, out, { eps: 1e-6 });
    } },
    { name: 'attention', op: 'attention', shape: rows([ab, ah, al, ad]), flops: 4 * ab * ah * al * al * ad, setup: (dev, t) => {
      const q = t([ab, ah, al, ad]), k = t([ab, ah, al, ad]), v = t([ab, ah, al, ad]), out = t([ab, ah, al, ad]);
      return () => dev.attention(q, k, v, out, { scale: 1 / Math.sqrt(ad) });
    } },
    { name: 'rope', op: 'rope', shape: rows(rope), bytes: 2 * f32 * numel(rope), setup: (dev, t) => {
      const x = t(rope), cos = t(rope.slice(2)), sin = t(rope.slice(2)), out = t(rope);
      return () => dev.rope(x, cos, sin, out);
    } },
    { name: 'conv2d 3x3', op: 'conv2d', shape: `${rows([cb, cc, ch, cw])} w[${cc},${cc},3,3] +bias`, flops: 2 * cb * cc * ch * cw * cc * 9, setup: (dev, t) => {
      const x = t([cb, cc, ch, cw]), w = t([cc, cc, 3, 3]), bias = t([cc]), out = t([cb, cc, ch, cw]);
      return () => dev.conv2d(x, w, bias, out, { stride: [1, 1], padding: [1, 1] });
    } },
    { name: 'groupNorm', op: 'groupNorm', shape: `${rows(gn)} groups 32`, bytes: 2 * f32 * numel(gn), setup: (dev, t) => {
      const x = t(gn), w = t([gn[1]!]), b = t([gn[1]!]), out = t(gn);
      return () => dev.groupNorm(x, w, b, out, { groups: Math.min(32, gn[1]!), eps: 1e-6 });
    } },
    { name: 'upsample 2x', op: 'upsampleNearest2x', shape: rows(up), bytes: 5 * f32 * numel(up), setup: (dev, t) => {
      const x = t(up), out = t([up[0]!, up[1]!, 2 * up[2]!, 2 * up[3]!]);
      return () => dev.upsampleNearest2x(x, out);
    } },
    { name: 'add', op: 'binary', shape: rows([n]), bytes: 3 * f32 * n, setup: (dev, t) => {
      const a = t([n]), b = t([n]), out = t([n]);
      return () => dev.binary('add', a, b, out);
    } },
    { name: 'gelu_tanh', op: 'unary', shape: rows([n]), bytes: 2 * f32 * n, setup: (dev, t) => {
      const x = t([n]), out = t([n]);
      return () => dev.unary('gelu_tanh', x, out);
    } },
    { name: 'cast f32->bf16', op: 'copy', shape: rows([n]), bytes: (f32 + 2) * n, setup: (dev, t) => {
      const x = t([n]), out = t([n], 'bf16');
      return () => dev.copy(x, out);
    } },
  ];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

/** Deterministic values in [-1, 1) (bf16 views are filled with zero bits). */
function hostValues(count: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  return Float32Array.from({ length: count }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

/** Runs one spec: warm-up, then repetitions until `reps` or about `budgetMs` of measured time. */
async function runSpec(dev: Device, spec: Spec, reps: number, budgetMs: number): Promise<KernelResult> {
  const base = { name: spec.name, op: spec.op, shape: spec.shape };
  const bufs: View[] = [];
  const alloc = (shape: number[], dtype: DType = 'f32'): View => {
    const count = numel(shape);
    const buf = dev.alloc(count * DTYPE_BYTES[dtype]);
    if (dtype === 'f32') dev.write(buf, 0, hostValues(count, bufs.length + 1));
    else if (dtype === 'bf16') dev.write(buf, 0, fromNumbers(dtype, hostValues(count, bufs.length + 1)));
    const v: View = { buf, dtype, shape, strides: contiguousStrides(shape), offset: 0 };
    bufs.push(v);
    return v;
  };
  try {
    const run = spec.setup(dev, alloc);
    run();
    await dev.sync();
    const times: number[] = [];
    let spent = 0;
    while (times.length < reps && (times.length < 3 || spent < budgetMs)) {
      const ms = await dev.time(run);
      times.push(ms);
      spent += ms;
    }
    const ms = median(times);
    return {
      ...base, ms, reps: times.length,
      ...(spec.flops ? { gflops: spec.flops / ms / 1e6 } : {}),
      ...(spec.bytes ? { gbps: spec.bytes / ms / 1e6 } : {}),
    };
  } catch (e) {
    await dev.sync().catch(() => undefined); // drop the failed batch's deferred error
    return { ...base, missing: ((e as Error).message.split('\n')[0] ?? '').slice(0, 160) };
  } finally {
    bufs.forEach((v) => dev.free(v.buf));
  }
}

const fmt = (x: number | undefined, digits = 2) => (x === undefined ? '' : x.toFixed(digits));

function printTable(dev: Device, variant: string | undefined, kernels: KernelResult[]): void {
  console.log(`kernels on ${dev.name}${variant ? ` (matmul variant ${variant})` : ''}; median of repeated runs, device.time()\n`);
  console.log(`${'kernel'.padEnd(22)}${'shape'.padEnd(36)}${'ms'.padStart(10)}${'GFLOP/s'.padStart(10)}${'GB/s'.padStart(9)}  reps`);
  for (const k of kernels) {
    if (k.missing) {
      console.log(`${k.name.padEnd(22)}${k.shape.padEnd(36)}  missing: ${k.missing}`);
      continue;
    }
    console.log(`${k.name.padEnd(22)}${k.shape.padEnd(36)}${fmt(k.ms, 3).padStart(10)}${fmt(k.gflops).padStart(10)}${fmt(k.gbps).padStart(9)}  ${k.reps}`);
  }
}

function printBaseline(rows: BaselineRow[]): void {
  console.log('\nmatmul f32 against TensorFlow.js 4.22 WebGPU on the same device (alternating runs, median wall ms issue-to-done)\n');
  console.log(`${'M x N x K'.padEnd(18)}${'ours ms'.padStart(10)}${'tfjs ms'.padStart(10)}${'ours GF/s'.padStart(11)}${'tfjs GF/s'.padStart(11)}${'ours/tfjs'.padStart(11)}  check (tfjs vs ours; vs f64: ours, tfjs)`);
  for (const r of rows) {
    const wrong = r.tfjsSpotError > 1e-4 || r.oursSpotError > 1e-4 ? '  WRONG RESULTS: figures not comparable' : '';
    console.log(`${`${r.m}x${r.n}x${r.k}`.padEnd(18)}${fmt(r.oursMs, 1).padStart(10)}${fmt(r.tfjsMs, 1).padStart(10)}${fmt(r.oursGflops).padStart(11)}${fmt(r.tfjsGflops).padStart(11)}${`${fmt(r.ratio)}x`.padStart(11)}  ${[r.tfjsVsOurs, r.oursSpotError, r.tfjsSpotError].map((e) => e.toExponential(1)).join(', ')}${wrong}`);
  }
}

export async function runBench(opts: BenchOptions): Promise<void> {
  const dev = await createDevice(opts.device, { adapter: opts.adapter });
  const tier: Tier = dev.kind === 'cpu' ? 'tiny' : opts.quick ? 'quick' : 'full';
  const reps = opts.quick ? 5 : 9;
  const variant = dev instanceof WebGPUDevice ? chosenVariant(dev).name : undefined;
  const log = (s: string) => { if (!opts.json) console.error(s); };

  const kernels: KernelResult[] = [];
  for (const spec of [...matmulSpecs(tier), ...opSpecs(tier)]) {
    log(`  ${spec.name} ${spec.shape} ...`);
    kernels.push(await runSpec(dev, spec, reps, opts.quick ? 1500 : 4000));
  }

  let baseline: { rows: BaselineRow[] } | { skipped: string };
  if (dev instanceof WebGPUDevice) {
    log('  matmul baseline: TensorFlow.js WebGPU ...');
    const sizes: [number, number, number][] = opts.quick ? [[1024, 1024, 1024]] : [[512, 512, 512], [1024, 1024, 1024]];
    try {
      baseline = { rows: await tfjsMatmulBaseline(dev, sizes, opts.quick ? 5 : 9) };
    } catch (e) {
      baseline = { skipped: `tfjs failed: ${(e as Error).message.split('\n')[0]}` };
    }
  } else {
    baseline = { skipped: 'the TensorFlow.js baseline needs --device webgpu' };
  }

  if (opts.json) {
    const at1024 = 'rows' in baseline ? baseline.rows.find((r) => r.m === 1024 && r.n === 1024 && r.k === 1024) : undefined;
    console.log(JSON.stringify({
      device: dev.name,
      kind: dev.kind,
      tier,
      matmulVariant: variant,
      kernels,
      baseline: 'rows' in baseline ? { name: 'TensorFlow.js 4.22 WebGPU matmul, same device', rows: baseline.rows, ratio1024: at1024?.ratio } : baseline,
    }, null, 2));
  } else {
    printTable(dev, variant, kernels);
    if ('rows' in baseline) printBaseline(baseline.rows);
    else console.log(`\nbaseline: skipped (${baseline.skipped})`);
  }
  dev.destroy();
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const args = process.argv.slice(2);
  const value = (name: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  };
  await runBench({ device: value('device') ?? 'webgpu', adapter: value('adapter'), json: args.includes('--json'), quick: args.includes('--quick') });
}
