// matmul: every conformance case on WebGPU (the adapter's tuned variant) and on the CPU backend in
// f32, both against the CPU float64 reference; a layout sweep on every kernel variant, with f32 and
// with bf16 operands; the binding-size splitting under an artificially small binding limit; the
// errors a caller gets; and the tuner's cache, its dropping of failing variants and the
// FLUX_GRPO_MATMUL_VARIANT override.
import { describeConformance, expectPassed } from './conformance.ts';
import { withOverrides } from './override.ts';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import { type CaseResult, type OpCase, runConformance } from '../../src/device/conformance.ts';
import type { Device, MatmulParams, View } from '../../src/device/device.ts';
import type { GpuContext } from '../../src/device/webgpu/context.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { MATMUL_VARIANTS, type MatmulLaunchOptions, type MatmulVariant, chosenVariant, gpuMatmul, sharedBytes } from '../../src/kernels/matmul.ts';
import { type MatmulCase, cases, matmulCase } from '../../src/kernels/matmul.cases.ts';
import { tuneMatmul } from '../../src/kernels/matmul_tuner.ts';
import { contiguousStrides } from '../../src/tensor/shape.ts';

let webgpu: WebGPUDevice;
let cpu: CpuDevice;
let tuned: MatmulVariant;
const results = new Map<string, CaseResult[]>();

/** Each operand's four read paths (contiguous along k or not, vec4 or scalar), K tails, partial tiles. */
const layouts: MatmulCase[] = [
  { m: 7, n: 9, k: 13 },
  { batch: 2, m: 20, n: 24, k: 36, transB: true, bias: true, act: 'gelu_erf' },
  { m: 20, n: 9, k: 13, transA: true, bias: true },
  { m: 7, n: 24, k: 36, transA: true, transB: true },
  { batch: 2, m: 130, n: 136, k: 40, bBatch: 1, bias: true, act: 'silu' },
];
/** The same with every operand bf16: each variant's read paths through the bf16 accessors. */
const layoutCases: OpCase[] = [...layouts, ...layouts.map((c): MatmulCase => ({ ...c, dtypes: ['bf16', 'bf16', 'bf16'] }))].map(matmulCase);

/** Cases whose operands all exceed 4 KiB: split over batch, M, N and K (accumulating). */
const CHUNK_LIMIT = 4096;
const chunkCases: OpCase[] = [
  matmulCase({ batch: 2, m: 40, n: 36, k: 50, bias: true, act: 'gelu_erf' }),
  matmulCase({ batch: 2, m: 40, n: 36, k: 50, transA: true, transB: true, bias: true, act: 'silu' }),
  matmulCase({ batch: 3, m: 30, n: 60, k: 40, bBatch: 1, transB: true, offsets: [3, 5, 1], bias: true }),
  matmulCase({ m: 70, n: 1100, k: 8, transA: true, bias: true }),
  // bf16 (2 bytes an element): split over batch, M, N and K, at odd element offsets too.
  matmulCase({ batch: 2, m: 40, n: 36, k: 50, transA: true, transB: true, bias: true, act: 'silu', dtypes: ['bf16', 'bf16', 'bf16'] }),
  matmulCase({ batch: 3, m: 30, n: 60, k: 40, bBatch: 1, transB: true, offsets: [3, 5, 1], bias: true, dtypes: ['f32', 'bf16', 'bf16'] }),
  matmulCase({ batch: 2, m: 40, n: 72, k: 64, offsets: [4, 8], dtypes: ['bf16', 'bf16'] }),
];

/** The WebGPU device with its matmul launched with these options (a variant, a binding limit). */
function withMatmul(dev: WebGPUDevice, opts: MatmulLaunchOptions, ctx: GpuContext = dev): Device {
  return withOverrides(dev, {
    matmul: (a: View, b: View, out: View, p: MatmulParams = {}) => gpuMatmul(ctx, a, b, out, p, opts),
  });
}

/** A context that counts the dispatches it records, with some limits lowered. */
function counting(dev: WebGPUDevice, limits: Partial<GpuContext['limits']> = {}): GpuContext & { count: number } {
  return {
    count: 0,
    gpu: dev.gpu, features: dev.features, limits: { ...dev.limits, ...limits }, adapterKey: dev.adapterKey,
    pipeline: (wgsl) => dev.pipeline(wgsl),
    bind: (v) => dev.bind(v),
    bindRange: (v, offset, size) => dev.bindRange(v, offset, size),
    dispatch(...args) {
      this.count++;
      dev.dispatch(...args);
    },
  };
}

/** With at most 2 workgroups per grid dimension, this needs splitting over batch, M and N. */
const gridCase = matmulCase({ batch: 3, m: 130, n: 136, k: 20, transB: true, bias: true });
let gridCtx: GpuContext & { count: number };

const others = () => MATMUL_VARIANTS.filter((v) => v !== tuned);

beforeAll(async () => {
  webgpu = await WebGPUDevice.create();
  cpu = new CpuDevice();
  tuned = chosenVariant(webgpu);
  for (const v of MATMUL_VARIANTS) results.set(v.name, await runConformance(withMatmul(webgpu, { variant: v }), cpu, layoutCases));
  results.set('chunked', await runConformance(withMatmul(webgpu, { maxBindingBytes: CHUNK_LIMIT }), cpu, chunkCases));
  gridCtx = counting(webgpu, { maxWorkgroupsPerDim: 2 });
  results.set('grid', await runConformance(withMatmul(webgpu, {}, gridCtx), cpu, [gridCase]));
});

afterAll(() => webgpu?.destroy());

/** The variant, chunked and grid runs above are checked in tests of their own, not one per suite. */
function check(key: string, name: string): void {
  expectPassed(key, results.get(key)!, name);
}

describeConformance([
  ['webgpu', cases, () => webgpu],
  ['cpu', cases, () => cpu],
]);

describe('every variant against the f64 reference', () => {
  const pairs = MATMUL_VARIANTS.flatMap((v) => layoutCases.map((c) => [v.name, c.name] as const));
  test.each(pairs)('%s: %s', (variant, name) => check(variant, name));
});

describe(`operands split into bindings of ${CHUNK_LIMIT} bytes`, () => {
  test.each(chunkCases.map((c) => c.name))('%s', (name) => check('chunked', name));

  test('splits every operand that exceeds the limit, and only then', () => {
    const ctx = counting(webgpu);
    const a = view(webgpu, [2, 40, 50]), b = view(webgpu, [2, 50, 36]), out = view(webgpu, [2, 40, 36]);
    gpuMatmul(ctx, a, b, out, {}, { maxBindingBytes: CHUNK_LIMIT });
    expect(ctx.count).toBeGreaterThanOrEqual(4); // a and b are ~8 KB per batch
    ctx.count = 0;
    gpuMatmul(ctx, a, b, out, {});
    expect(ctx.count).toBe(1);
  });

  test('sizes bf16 operands at 2 bytes an element', () => {
    const ctx = counting(webgpu);
    // a is 4 KiB in bf16 (8 KiB were it counted as f32), b and out 2 KiB: one dispatch.
    const a = view(webgpu, [1, 32, 64], undefined, 0, 'bf16'), b = view(webgpu, [1, 64, 16], undefined, 0, 'bf16'), out = view(webgpu, [1, 32, 16]);
    gpuMatmul(ctx, a, b, out, {}, { maxBindingBytes: CHUNK_LIMIT });
    expect(ctx.count).toBe(1);
  });

  test('names the operand when even one element cannot be bound', () => {
    const a = view(webgpu, [1, 8, 8], undefined, 3), b = view(webgpu, [1, 8, 8]), out = view(webgpu, [1, 8, 8]);
    expect(() => gpuMatmul(webgpu, a, b, out, {}, { maxBindingBytes: 16 })).toThrow(/cannot split (a|b|out)(, (a|b|out))* into bindings of at most 16 bytes/);
  });
});

test('grids over the adapter\'s workgroup limit are split into several dispatches', () => {
  check('grid', gridCase.name);
  expect(gridCtx.count).toBeGreaterThan(3);
});

function view(dev: Device, shape: number[], strides = contiguousStrides(shape), offset = 0, dtype: 'f32' | 'bf16' | 'i32' = 'f32'): View {
  const n = shape.reduce((a, b) => a * b, 1) + offset + 64;
  return { buf: dev.alloc(n * 4), dtype, shape, strides, offset };
}

describe.each(['webgpu', 'cpu'])('%s rejects', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;

  test('inner dimensions that differ', () => {
    expect(() => dev().matmul(view(dev(), [2, 3, 4]), view(dev(), [2, 5, 6]), view(dev(), [2, 3, 6])))
      .toThrow(/matmul \[2,3,4\]:f32 \[2,5,6\]:f32 -> \[2,3,6\]:f32: inner dims differ: a is \[3,4\] but b is \[5,6\]/);
    expect(() => dev().matmul(view(dev(), [1, 4, 3]), view(dev(), [1, 6, 5]), view(dev(), [1, 3, 6]), { transA: true, transB: true }))
      .toThrow(/inner dims differ: a\^T is \[3,4\] but b\^T is \[5,6\]/);
  });

  test('an output of the wrong shape', () => {
    expect(() => dev().matmul(view(dev(), [2, 3, 4]), view(dev(), [2, 4, 5]), view(dev(), [2, 5, 3]))).toThrow(/out \[2,5,3\] must be \[2,3,5\]/);
  });

  test('a batch of b that is neither 1 nor a\'s', () => {
    expect(() => dev().matmul(view(dev(), [3, 3, 4]), view(dev(), [2, 4, 5]), view(dev(), [3, 3, 5]))).toThrow(/b's batch 2 must be 1 or a's batch 3/);
  });

  test('a bias that is not [N]', () => {
    expect(() => dev().matmul(view(dev(), [1, 3, 4]), view(dev(), [1, 4, 5]), view(dev(), [1, 3, 5]), { bias: view(dev(), [4]) })).toThrow(/bias \[4\] must be \[5\]/);
  });

  test('operands that are not 3-D or not contiguous', () => {
    expect(() => dev().matmul(view(dev(), [3, 4]), view(dev(), [1, 4, 5]), view(dev(), [1, 3, 5]))).toThrow(/a \[3,4\] must have 3 dims/);
    expect(() => dev().matmul(view(dev(), [1, 3, 4], [12, 1, 3]), view(dev(), [1, 4, 5]), view(dev(), [1, 3, 5]))).toThrow(/a \[1,3,4\] with strides \[12,1,3\] must be contiguous/);
  });

  test('a bf16 output (bf16 operands accumulate into an f32 one)', () => {
    expect(() => dev().matmul(view(dev(), [1, 3, 4], undefined, 0, 'bf16'), view(dev(), [1, 4, 5]), view(dev(), [1, 3, 5], undefined, 0, 'bf16'))).toThrow(/not supported/);
  });
});

test('the WebGPU launcher names an operand of a dtype it cannot read or write', () => {
  const v = (shape: number[], dtype: 'f32' | 'bf16' | 'i32' = 'f32') => view(webgpu, shape, undefined, 0, dtype);
  expect(() => gpuMatmul(webgpu, v([1, 3, 4]), v([1, 4, 5], 'i32'), v([1, 3, 5]))).toThrow(/b is i32; matmul reads f32 or bf16 only/);
  expect(() => gpuMatmul(webgpu, v([1, 3, 4]), v([1, 4, 5]), v([1, 3, 5]), { bias: v([5], 'i32') })).toThrow(/bias is i32; matmul reads f32 or bf16 only/);
  expect(() => gpuMatmul(webgpu, v([1, 3, 4], 'bf16'), v([1, 4, 5]), v([1, 3, 5], 'bf16'))).toThrow(/out is bf16; matmul writes f32 only/);
});

describe('variant choice', () => {
  const dirs: string[] = [];
  const tmp = () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'matmul-tune-'));
    dirs.push(d);
    return d;
  };
  afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
  const cheap = () => MATMUL_VARIANTS.filter((v) => v.tileK === 0).slice(0, 2);

  test('times the candidates once, then reads the cache', async () => {
    const dir = tmp();
    const first = await tuneMatmul(webgpu, { cacheDir: dir, variants: cheap(), size: 128 });
    expect(first.source).toBe('timed');
    expect(cheap().map((v) => v.name)).toContain(first.variant);
    expect(Object.keys(first.ms).sort()).toEqual(cheap().map((v) => v.name).sort());
    const files = fs.readdirSync(dir);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^matmul-[0-9a-f]{16}\.json$/);
    const again = await tuneMatmul(webgpu, { cacheDir: dir, variants: cheap(), size: 128 });
    expect(again.source).toBe('cache');
    expect(again.variant).toBe(first.variant);
    expect(chosenVariant(webgpu).name).toBe(first.variant);
  });

  test('drops a variant that fails to compile, and never retries it', async () => {
    // Workgroup memory over the adapter's limit: pipeline creation fails.
    const base = cheap()[0]!;
    const tooBig: MatmulVariant = { name: 'too-big', tm: 8, tn: 8, wgX: 8, wgY: 8, tileK: 4 * Math.ceil((webgpu.limits.maxWorkgroupStorageBytes + 1) / (4 * 128 * 4)) };
    expect(sharedBytes(tooBig)).toBeGreaterThan(webgpu.limits.maxWorkgroupStorageBytes);
    const dir = tmp();
    const r = await tuneMatmul(webgpu, { cacheDir: dir, variants: [tooBig, base], size: 64 });
    expect(r.failed).toEqual(['too-big']);
    expect(r.variant).toBe(base.name);
    // The device still works after the failed pipeline.
    const res = await runConformance(webgpu, cpu, [matmulCase({ m: 5, n: 6, k: 7 })]);
    expect(res[0]!.pass).toBe(true);
  });

  test('drops a variant that a dead process was running (a crash inside the driver)', async () => {
    const dir = tmp();
    const [a, b] = cheap() as [MatmulVariant, MatmulVariant];
    const first = await tuneMatmul(webgpu, { cacheDir: dir, variants: [a, b], size: 64 });
    const file = path.join(dir, fs.readdirSync(dir)[0]!);
    // What a process killed while timing `a` leaves behind: no pick yet, `a` pending, a dead pid.
    fs.writeFileSync(file, JSON.stringify({ ...first, variant: null, pending: { variant: a.name, pid: 2 ** 31 - 1 } }));
    const r = await tuneMatmul(webgpu, { cacheDir: dir, variants: [a, b], size: 64 });
    expect(r.source).toBe('timed');
    expect(r.failed).toEqual([a.name]);
    expect(r.variant).toBe(b.name);
    const saved = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(saved.pending).toBeUndefined();
    expect(saved.failed).toEqual([a.name]);
  });

  test('FLUX_GRPO_MATMUL_VARIANT forces a variant, and an unknown name lists the known ones', async () => {
    const saved = tuned.name;
    const other = others()[0]!;
    try {
      process.env.FLUX_GRPO_MATMUL_VARIANT = other.name;
      const r = await tuneMatmul(webgpu, { cacheDir: tmp() });
      expect(r).toMatchObject({ source: 'env', variant: other.name });
      expect(chosenVariant(webgpu)).toBe(other);
      process.env.FLUX_GRPO_MATMUL_VARIANT = 'nope';
      expect(() => webgpu.matmul(view(webgpu, [1, 2, 2]), view(webgpu, [1, 2, 2]), view(webgpu, [1, 2, 2])))
        .toThrow(/unknown matmul variant 'nope' \(known: reg4x4, /);
    } finally {
      delete process.env.FLUX_GRPO_MATMUL_VARIANT;
      await tuneMatmul(webgpu, { cacheDir: tmp(), variants: [tuned], size: 64 });
    }
    expect(chosenVariant(webgpu).name).toBe(saved);
  });
});
