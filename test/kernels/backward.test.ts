// Backward ops and the optimizer step: the conformance cases of unaryBackward, softmaxBackward and
// adamw on WebGPU (softmaxBackward in both row layouts: one thread per row as on lavapipe, tree
// reductions as on GPUs) and on the CPU backend in f32, all against the CPU float64 reference; the
// references themselves against finite differences of their forward references (float64); torch's
// conventions at the kinks; the exact float32 fused multiply-add of the AdamW reference; AdamW and
// softmax backward split over bindings; errors naming the op and shapes.
import { describeConformance } from './conformance.ts';
import { withOverrides } from './override.ts';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { AdamWParams, Device, UnaryOp, UnaryParams, View } from '../../src/device/device.ts';
import type { GpuContext } from '../../src/device/webgpu/context.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { cases as elementwiseCases } from '../../src/kernels/elementwise.cases.ts';
import { refUnary, refUnaryBackward } from '../../src/kernels/elementwise.cpu.ts';
import { gpuAdamW } from '../../src/kernels/optim.ts';
import { cases as optimCases } from '../../src/kernels/optim.cases.ts';
import { fmaF32, refAdamW } from '../../src/kernels/optim.cpu.ts';
import { isCpuAdapter } from '../../src/device/webgpu/context.ts';
import { gpuSoftmaxBackward, reduceLayout } from '../../src/kernels/reduce.ts';
import { cases as reduceCases } from '../../src/kernels/reduce.cases.ts';
import { refSoftmax, refSoftmaxBackward } from '../../src/kernels/reduce.cpu.ts';
import type { HostView } from '../../src/kernels/reference.ts';
import { contiguousStrides, numel } from '../../src/tensor/shape.ts';

const BACKWARD_OPS = new Set(['unaryBackward', 'softmaxBackward', 'adamw']);
const cases = [...elementwiseCases, ...reduceCases, ...optimCases].filter((c) => BACKWARD_OPS.has(c.op));
const softmaxCases = cases.filter((c) => c.op === 'softmaxBackward');

let webgpu: WebGPUDevice;
let cpu: CpuDevice;

/** The WebGPU device running softmaxBackward in the other row layout than its adapter picks. */
function otherLayout(dev: WebGPUDevice): Device {
  const tree = isCpuAdapter(dev);
  return withOverrides(dev, {
    softmaxBackward: (y: View, dy: View, dx: View) => gpuSoftmaxBackward(dev, y, dy, dx, reduceLayout(dev, y.shape.at(-1)!, 1, tree)),
  });
}

beforeAll(async () => {
  webgpu = await WebGPUDevice.create();
  cpu = new CpuDevice();
});

afterAll(() => webgpu?.destroy());

test('every unary op has backward cases, case names are unique', () => {
  const ops: UnaryOp[] = ['neg', 'abs', 'exp', 'log', 'sqrt', 'rsqrt', 'square', 'recip', 'tanh', 'sigmoid', 'relu', 'silu', 'gelu_erf', 'gelu_tanh', 'quick_gelu', 'scale', 'clamp'];
  for (const op of ops) expect(cases.some((c) => c.name.startsWith(`${op}' `)), op).toBe(true);
  expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
});

describeConformance([
  ['webgpu', cases, () => webgpu],
  ['webgpu, other layout', softmaxCases, () => otherLayout(webgpu)],
  ['cpu', cases, () => cpu],
]);

// ---- helpers ----------------------------------------------------------------------------------------

/** A dense host view. */
function host(shape: number[], data: ArrayLike<number> = new Float64Array(numel(shape)), dtype: 'f64' | 'f32' = 'f64'): HostView {
  const arr = dtype === 'f64' ? Float64Array.from(data) : Float32Array.from(data);
  return { data: arr, dtype, shape, strides: contiguousStrides(shape), offset: 0 };
}

/** Deterministic values in [lo, hi). */
function uniform(n: number, lo: number, hi: number, seed = 1): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return lo + ((hi - lo) * s) / 4294967296;
  });
}

function view(dev: Device, shape: number[], values?: ArrayLike<number>): View {
  const v: View = { buf: dev.alloc(Math.max(numel(shape), 1) * 4), dtype: 'f32', shape, strides: contiguousStrides(shape), offset: 0 };
  if (values) dev.write(v.buf, 0, Float32Array.from(values));
  return v;
}

async function download(dev: Device, v: View): Promise<Float32Array> {
  return new Float32Array((await dev.read(v.buf, 0, numel(v.shape) * 4)).slice().buffer);
}

// ---- finite differences -------------------------------------------------------------------------------

describe('references against central differences of their forward references (float64)', () => {
  /** Inputs inside each op's domain, kept off its kinks (0 for relu/abs, lo/hi for clamp). */
  const DOMAIN: Record<UnaryOp, { lo: number; hi: number; p?: UnaryParams }> = {
    neg: { lo: -3, hi: 3 }, abs: { lo: -3, hi: 3 }, exp: { lo: -3, hi: 3 }, log: { lo: 0.1, hi: 5 }, sqrt: { lo: 0.1, hi: 5 },
    rsqrt: { lo: 0.1, hi: 5 }, square: { lo: -3, hi: 3 }, recip: { lo: 0.2, hi: 5 }, tanh: { lo: -3, hi: 3 }, sigmoid: { lo: -6, hi: 6 },
    relu: { lo: -3, hi: 3 }, silu: { lo: -6, hi: 6 }, gelu_erf: { lo: -5, hi: 5 }, gelu_tanh: { lo: -5, hi: 5 }, quick_gelu: { lo: -5, hi: 5 },
    scale: { lo: -3, hi: 3, p: { alpha: -1.7 } }, clamp: { lo: -3, hi: 3, p: { lo: -0.9, hi: 1.3 } },
  };
  const kinks = (op: UnaryOp, p: UnaryParams = {}) => (op === 'relu' || op === 'abs' ? [0] : op === 'clamp' ? [p.lo!, p.hi!] : []);

  test.each(Object.keys(DOMAIN) as UnaryOp[])('unaryBackward %s', (op) => {
    const { lo, hi, p } = DOMAIN[op];
    const xs = uniform(200, lo, hi, op.length * 7919).filter((x) => x !== 0 && kinks(op, p).every((k) => Math.abs(x - k) > 1e-3));
    const dys = uniform(xs.length, -2, 2, 17).map((d) => d || 0.5);
    const dx = host([xs.length]);
    refUnaryBackward(op, host([xs.length], xs), host([xs.length], dys), dx, p);
    const f = (x: number) => {
      const out = host([1]);
      refUnary(op, host([1], [x]), out, p);
      return out.data[0]!;
    };
    xs.forEach((x, i) => {
      const h = 1e-5 * Math.max(1, Math.abs(x));
      const fd = (dys[i]! * (f(x + h) - f(x - h))) / (2 * h);
      expect(Math.abs(dx.data[i]! - fd), `${op}'(${x}) * ${dys[i]}: ${dx.data[i]} vs ${fd}`).toBeLessThanOrEqual(1e-7 * Math.max(1, Math.abs(fd)));
    });
  });

  test('softmaxBackward: the gradient of sum(dy * softmax(x)) over [3, 7]', () => {
    const shape = [3, 7];
    const x = uniform(21, -3, 3, 5), dy = uniform(21, -1, 1, 9);
    const y = host(shape);
    refSoftmax(host(shape, x), y);
    const dx = host(shape);
    refSoftmaxBackward(y, host(shape, dy), dx);
    const loss = (xs: number[]) => {
      const out = host(shape);
      refSoftmax(host(shape, xs), out);
      return Array.from(out.data).reduce((s, v, i) => s + v * dy[i]!, 0);
    };
    x.forEach((_, j) => {
      const h = 1e-5;
      const fd = (loss(x.map((v, i) => (i === j ? v + h : v))) - loss(x.map((v, i) => (i === j ? v - h : v)))) / (2 * h);
      expect(Math.abs(dx.data[j]! - fd), `dx[${j}]`).toBeLessThanOrEqual(1e-9);
    });
  });
});

// ---- torch's conventions --------------------------------------------------------------------------------

describe.each(['webgpu', 'cpu'])('%s unaryBackward at the kinks (torch)', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;
  async function grad(op: UnaryOp, xs: number[], dys: number[], p?: UnaryParams): Promise<number[]> {
    const [x, dy, dx] = [view(dev(), [xs.length], xs), view(dev(), [xs.length], dys), view(dev(), [xs.length])];
    dev().unaryBackward(op, x, dy, dx, p);
    const got = [...(await download(dev(), dx))];
    [x, dy, dx].forEach((v) => dev().free(v.buf));
    return got;
  }

  test("relu'(0) = 0, abs'(0) = 0", async () => {
    expect(await grad('relu', [-1, 0, 2], [3, 3, 3])).toEqual([0, 0, 3]);
    expect(await grad('abs', [-1, 0, 2], [3, 3, 3])).toEqual([-3, 0, 3]);
  });

  test('clamp passes the gradient on [lo, hi] inclusive, and nothing outside even for an infinite dy', async () => {
    expect(await grad('clamp', [-2, -1, 0.5, 1, 2, 3], [5, 5, 5, 5, Infinity, -Infinity], { lo: -1, hi: 1 })).toEqual([0, 5, 5, 5, 0, 0]);
  });
});

// ---- AdamW's float32 arithmetic -------------------------------------------------------------------------

describe('fmaF32', () => {
  test('rounds a*b + c once, also where the float64 sum lands exactly halfway between two floats', () => {
    // a*b = 2^-24 - 2^-60; c = 1 + 2^-23. The float64 sum rounds to the float32 midpoint
    // 1 + 2^-23 + 2^-24 (whose even neighbour is 1 + 2^-22); the exact sum lies below it.
    const a = 2 ** -24 * (1 + 2 ** -18), b = 1 - 2 ** -18, c = 1 + 2 ** -23;
    expect(Math.fround(Math.fround(a * b + c))).toBe(1 + 2 ** -22);
    expect(fmaF32(a, b, c)).toBe(1 + 2 ** -23);
    expect(fmaF32(-a, b, -c)).toBe(-(1 + 2 ** -23));
    // Unfused, the product's rounding would lose the result entirely.
    const u = 1 + 2 ** -12;
    expect(fmaF32(u, u, -(1 + 2 ** -11))).toBe(2 ** -24);
    expect(Math.fround(Math.fround(u * u) - (1 + 2 ** -11))).toBe(0);
  });

  test('agrees with the float64 sum rounded once away from midpoints', () => {
    const xs = uniform(3000, -4, 4, 3).map(Math.fround);
    for (let i = 0; i + 2 < xs.length; i += 3) {
      const [a, b, c] = [xs[i]!, xs[i + 1]!, xs[i + 2]!];
      expect(fmaF32(a, b, c)).toBe(Math.fround(a * b + c));
    }
  });
});

test('refAdamW on f64 views is the float64 formula; on f32 views within float32 rounding of it', () => {
  const n = 50;
  const p: AdamWParams = { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, stepSize: 0.01 / (1 - 0.9 ** 3), bc2Sqrt: Math.sqrt(1 - 0.999 ** 3) };
  const [x, g, m, v] = [uniform(n, -1, 1, 1), uniform(n, -1, 1, 2), uniform(n, -0.1, 0.1, 3), uniform(n, 0, 0.01, 4)].map((a) => a.map(Math.fround));
  const want = x.map((xi, i) => {
    const mi = 0.9 * m[i]! + 0.1 * g[i]!;
    const vi = 0.999 * v[i]! + 0.001 * g[i]! ** 2;
    return { p: xi * (1 - p.lr * p.weightDecay) - (p.stepSize * mi) / (Math.sqrt(vi) / p.bc2Sqrt + p.eps), m: mi, v: vi };
  });
  for (const dtype of ['f64', 'f32'] as const) {
    const [P, G, M, V] = [x, g, m, v].map((a) => host([n], a, dtype));
    refAdamW(P!, G!, M!, V!, p);
    const tol = dtype === 'f64' ? 1e-15 : 1e-6;
    want.forEach((w, i) => {
      expect(Math.abs(P!.data[i]! - w.p)).toBeLessThanOrEqual(tol * Math.abs(w.p) + 1e-12);
      expect(Math.abs(M!.data[i]! - w.m)).toBeLessThanOrEqual(tol * 0.2);
      expect(Math.abs(V!.data[i]! - w.v)).toBeLessThanOrEqual(tol * 0.01);
    });
  }
});

// ---- operands over one binding ---------------------------------------------------------------------------

/** The WebGPU device seen through a small binding limit, counting dispatches. */
function smallBindings(dev: WebGPUDevice, maxBindingBytes: number): GpuContext & { dispatches: number } {
  const ctx = {
    gpu: dev.gpu, features: dev.features, adapterKey: dev.adapterKey, limits: { ...dev.limits, maxBindingBytes }, dispatches: 0,
    pipeline: (wgsl: string) => dev.pipeline(wgsl),
    bind: (v: View) => dev.bind(v),
    bindRange: (v: View, offset: number, length: number) => {
      if (length > maxBindingBytes) throw new Error(`binding of ${length} bytes over the ${maxBindingBytes}-byte limit`);
      return dev.bindRange(v, offset, length);
    },
    dispatch: (...args: Parameters<GpuContext['dispatch']>) => {
      ctx.dispatches++;
      dev.dispatch(...args);
    },
  };
  return ctx;
}

describe('webgpu splits operands larger than one binding', () => {
  const LIMIT = 16384;

  test.each([[20000, 0], [30001, 1]])('adamw over %i elements at offset %i', async (n, offset) => {
    const ctx = smallBindings(webgpu, LIMIT);
    const init = [uniform(n, -1, 1, 1), uniform(n, -1, 1, 2), uniform(n, -0.1, 0.1, 3), uniform(n, 0, 0.01, 4)];
    const views = init.map((a) => {
      const v = view(webgpu, [n + offset]);
      webgpu.write(v.buf, 0, Float32Array.from([...new Array(offset).fill(7), ...a]));
      return { ...v, shape: [n], offset };
    });
    const p: AdamWParams = { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, stepSize: 0.1, bc2Sqrt: 0.05 };
    gpuAdamW(ctx, views[0]!, views[1]!, views[2]!, views[3]!, p);
    expect(ctx.dispatches).toBeGreaterThan(4);
    const hosts = init.map((a) => host([n], a, 'f32'));
    refAdamW(hosts[0]!, hosts[1]!, hosts[2]!, hosts[3]!, p);
    for (const j of [0, 2, 3]) {
      const all = await download(webgpu, { ...views[j]!, shape: [n + offset], offset: 0 });
      expect([...all.slice(0, offset)]).toEqual(new Array(offset).fill(7));
      const want = hosts[j]!.data;
      // Within float32 rounding of the tensor's scale (param' cancels to near 0 in places).
      const scale = Math.max(...Array.from(want, Math.abs));
      all.slice(offset).forEach((g, i) => expect(Math.abs(g - want[i]!), `operand ${j} element ${i}`).toBeLessThanOrEqual(1e-6 * scale));
    }
    views.forEach((v) => webgpu.free(v.buf));
  });

  test('softmaxBackward in slices of whole rows', async () => {
    const ctx = smallBindings(webgpu, LIMIT);
    const shape = [40, 1000];
    const [yv, dyv] = [uniform(40000, 0, 0.01, 5), uniform(40000, -1, 1, 6)];
    const [y, dy, dx] = [view(webgpu, shape, yv), view(webgpu, shape, dyv), view(webgpu, shape)];
    gpuSoftmaxBackward(ctx, y, dy, dx);
    expect(ctx.dispatches).toBe(10);
    const want = host(shape, undefined, 'f32');
    refSoftmaxBackward(host(shape, yv, 'f32'), host(shape, dyv, 'f32'), want);
    const got = await download(webgpu, dx);
    got.forEach((g, i) => expect(Math.abs(g - want.data[i]!)).toBeLessThanOrEqual(1e-5 * Math.abs(want.data[i]!) + 1e-7));
    [y, dy, dx].forEach((v) => webgpu.free(v.buf));
  });
});

// ---- errors ---------------------------------------------------------------------------------------------

describe.each(['webgpu', 'cpu'])('%s rejects', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;
  const f = (shape: number[]) => view(dev(), shape);
  const p: AdamWParams = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, stepSize: 1e-2, bc2Sqrt: 0.03 };

  test('operands of another shape, naming the op and both shapes', () => {
    expect(() => dev().unaryBackward('silu', f([4]), f([5]), f([4]))).toThrow(/unaryBackward \[4\]:f32 \[5\]:f32 -> \[4\]:f32: shapes differ: dy \[5\] vs out \[4\]/);
    expect(() => dev().softmaxBackward(f([2, 3]), f([2, 3]), f([3, 2]))).toThrow(/softmaxBackward \[2,3\]:f32 \[2,3\]:f32 -> \[3,2\]:f32: softmaxBackward wants y, dy and dx of one shape/);
    expect(() => dev().adamw(f([6]), f([6]), f([6]), f([2, 3]), p)).toThrow(/adamw .*: adamw wants param, grad, m and v of one shape; v is \[2,3\], param \[6\]/);
  });

  test('a scale or clamp backward without its parameters', () => {
    expect(() => dev().unaryBackward('scale', f([4]), f([4]), f([4]))).toThrow(/alpha/);
    expect(() => dev().unaryBackward('clamp', f([4]), f([4]), f([4]), { hi: 1 })).toThrow(/'lo'/);
  });
});

test('webgpu adamw refuses strided operands and a shared buffer', () => {
  const a = view(webgpu, [4, 4]), b = view(webgpu, [4, 4]), c = view(webgpu, [4, 4]);
  const p: AdamWParams = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, stepSize: 1e-2, bc2Sqrt: 0.03 };
  const t = { ...a, strides: [1, 4] };
  expect(() => webgpu.adamw(t, b, c, view(webgpu, [4, 4]), p)).toThrow(/adamw wants a dense param; got \[4,4\] strides \[1,4\]/);
  expect(() => webgpu.adamw(a, b, c, { ...c }, p)).toThrow(/four distinct buffers/);
});
