// Backward ops of the norm and attention families: the references against central differences of
// their forward references (float64); every conformance case of layerNormBackward, rmsNormBackward,
// attentionBackward and ropeBackward on WebGPU (in both row layouts / attention variants: the
// adapter's and the other one) and on the CPU backend in f32, all against the CPU float64
// reference; errors naming the op and shapes.
import { describeConformance } from './conformance.ts';
import { withOverrides } from './override.ts';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { AttentionParams, Device, View } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { attentionVariant, gpuAttentionBackwardVariant } from '../../src/kernels/attention.ts';
import { cases as attentionCases } from '../../src/kernels/attention.cases.ts';
import { refAttention, refAttentionBackward, refRope, refRopeBackward } from '../../src/kernels/attention.cpu.ts';
import { isCpuAdapter } from '../../src/device/webgpu/context.ts';
import { gpuNormBackward } from '../../src/kernels/norm.ts';
import { cases as normCases } from '../../src/kernels/norm.cases.ts';
import { refLayerNorm, refLayerNormBackward, refRmsNorm, refRmsNormBackward } from '../../src/kernels/norm.cpu.ts';
import type { HostView } from '../../src/kernels/reference.ts';
import { contiguousStrides, numel } from '../../src/tensor/shape.ts';

// ---- finite differences -------------------------------------------------------------------------------

/** A dense float64 host view. */
function host(shape: number[], data: ArrayLike<number> = new Float64Array(numel(shape))): HostView {
  return { data: Float64Array.from(data), dtype: 'f64', shape, strides: contiguousStrides(shape), offset: 0 };
}

/** Deterministic values in [lo, hi), never zero. */
function uniform(n: number, lo: number, hi: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return lo + ((hi - lo) * s) / 4294967296 || 0.25;
  });
}

/**
 * Checks analytic gradients against central differences (step 1e-6) of loss(inputs) = sum(dy * f(inputs)),
 * by relative L2 over all elements of each input.
 */
function checkGradients(inputs: number[][], forward: (xs: number[][]) => Float64Array, dy: number[], grads: Float64Array[]): void {
  const loss = (xs: number[][]) => forward(xs).reduce((s, y, i) => s + y * dy[i]!, 0);
  const h = 1e-6;
  inputs.forEach((x, k) => {
    const fd = x.map((_, j) => {
      const shifted = (delta: number) => inputs.map((a, kk) => (kk === k ? a.map((v, jj) => (jj === j ? v + delta : v)) : a));
      return (loss(shifted(h)) - loss(shifted(-h))) / (2 * h);
    });
    let num = 0, den = 0;
    fd.forEach((f, j) => {
      num += (grads[k]![j]! - f) ** 2;
      den += f * f;
    });
    expect(den, `input ${k}: gradient is zero`).toBeGreaterThan(0);
    console.log(`input ${k}: rel L2 against central differences ${Math.sqrt(num / den).toExponential(2)}`);
    expect(Math.sqrt(num / den), `input ${k}`).toBeLessThan(1e-6);
  });
}

describe('references against central differences of their forward references (float64)', () => {
  test.each([
    { shape: [3, 7], weight: true, bias: true },
    { shape: [2, 5], weight: false, bias: true },
    { shape: [4, 1, 6], weight: true, bias: false },
  ])('layerNormBackward $shape weight=$weight bias=$bias', ({ shape, weight, bias }) => {
    const d = shape.at(-1)!, n = numel(shape), eps = 1e-5;
    const inputs = [uniform(n, -2, 2, 3), ...(weight ? [uniform(d, 0.5, 1.5, 4)] : []), ...(bias ? [uniform(d, -1, 1, 5)] : [])];
    const dy = uniform(n, -1, 1, 6);
    const split = (xs: number[][]) => ({ x: host(shape, xs[0]), w: weight ? host([d], xs[1]) : null, b: bias ? host([d], xs[weight ? 2 : 1]) : null });
    const forward = (xs: number[][]) => {
      const { x, w, b } = split(xs);
      const out = host(shape);
      refLayerNorm(x, w, b, out, { eps });
      return out.data as Float64Array;
    };
    const { x, w } = split(inputs);
    const [dx, dw, db] = [host(shape), host([d]), host([d])];
    refLayerNormBackward(x, w, host(shape, dy), dx, weight ? dw : null, bias ? db : null, { eps });
    checkGradients(inputs, forward, dy, [dx, ...(weight ? [dw] : []), ...(bias ? [db] : [])].map((v) => v.data as Float64Array));
  });

  test.each([
    { shape: [3, 7], weight: true },
    { shape: [2, 1, 5], weight: false },
  ])('rmsNormBackward $shape weight=$weight', ({ shape, weight }) => {
    const d = shape.at(-1)!, n = numel(shape), eps = 1e-6;
    const inputs = [uniform(n, -2, 2, 7), ...(weight ? [uniform(d, 0.5, 1.5, 8)] : [])];
    const dy = uniform(n, -1, 1, 9);
    const forward = (xs: number[][]) => {
      const out = host(shape);
      refRmsNorm(host(shape, xs[0]), weight ? host([d], xs[1]) : null, out, { eps });
      return out.data as Float64Array;
    };
    const [dx, dw] = [host(shape), host([d])];
    refRmsNormBackward(host(shape, inputs[0]), weight ? host([d], inputs[1]) : null, host(shape, dy), dx, weight ? dw : null, { eps });
    checkGradients(inputs, forward, dy, [dx, ...(weight ? [dw] : [])].map((v) => v.data as Float64Array));
  });

  test.each([
    { lq: 5, lk: 5, causal: false },
    { lq: 5, lk: 5, causal: true },
    { lq: 3, lk: 6, causal: true },
    { lq: 6, lk: 4, causal: true },
    { lq: 4, lk: 7, causal: false },
  ])('attentionBackward Lq=$lq Lk=$lk causal=$causal', ({ lq, lk, causal }) => {
    const [b, h, dh] = [1, 2, 3];
    const qShape = [b, h, lq, dh], kShape = [b, h, lk, dh];
    const p = { scale: 0.7, causal };
    const inputs = [uniform(numel(qShape), -1.5, 1.5, 11), uniform(numel(kShape), -1.5, 1.5, 12), uniform(numel(kShape), -1.5, 1.5, 13)];
    const dy = uniform(numel(qShape), -1, 1, 14);
    const forward = (xs: number[][], lse: HostView | null = null) => {
      const out = host(qShape);
      refAttention(host(qShape, xs[0]), host(kShape, xs[1]), host(kShape, xs[2]), out, p, lse);
      return out.data as Float64Array;
    };
    const lse = host([b, h, lq]);
    const out = host(qShape, forward(inputs, lse));
    const [dq, dk, dv] = [host(qShape), host(kShape), host(kShape)];
    refAttentionBackward(host(qShape, inputs[0]), host(kShape, inputs[1]), host(kShape, inputs[2]), out, lse, host(qShape, dy), dq, dk, dv, p);
    checkGradients(inputs, (xs) => forward(xs), dy, [dq, dk, dv].map((v) => v.data as Float64Array));
  });

  test('ropeBackward [2, 1, 3, 4] with tables that are not rotations', () => {
    const shape = [2, 1, 3, 4];
    const [cos, sin] = [host([3, 4], uniform(12, -1, 1, 15)), host([3, 4], uniform(12, -1, 1, 16))];
    const inputs = [uniform(numel(shape), -1, 1, 17)];
    const dy = uniform(numel(shape), -1, 1, 18);
    const forward = (xs: number[][]) => {
      const out = host(shape);
      refRope(host(shape, xs[0]), cos, sin, out);
      return out.data as Float64Array;
    };
    const dx = host(shape);
    refRopeBackward(host(shape, dy), cos, sin, dx);
    checkGradients(inputs, forward, dy, [dx.data as Float64Array]);
  });
});

// ---- conformance ------------------------------------------------------------------------------------

const BACKWARD_OPS = new Set(['layerNormBackward', 'rmsNormBackward', 'attentionBackward', 'ropeBackward']);
const cases = [...normCases, ...attentionCases].filter((c) => BACKWARD_OPS.has(c.op));
/** The ops with a second layout (norms) or variant (attention). */
const twoLayouts = cases.filter((c) => c.op !== 'ropeBackward');

let webgpu: WebGPUDevice;
let cpu: CpuDevice;

/**
 * The WebGPU device running the layouts its adapter does not pick: on lavapipe the tree reductions
 * and short column chunks of GPUs for the norms and attention's workgroup-memory variant (and the
 * CPU layouts on a GPU).
 */
function otherLayout(dev: WebGPUDevice): Device {
  const cpuLayout = !isCpuAdapter(dev);
  return withOverrides(dev, {
    layerNormBackward: (x: View, w: View | null, dy: View, dx: View, dw: View | null, db: View | null, p: { eps: number }) => gpuNormBackward(dev, 'layer', x, w, dy, dx, dw, db, p.eps, cpuLayout),
    rmsNormBackward: (x: View, w: View | null, dy: View, dx: View, dw: View | null, p: { eps: number }) => gpuNormBackward(dev, 'rms', x, w, dy, dx, dw, null, p.eps, cpuLayout),
    attentionBackward: (q: View, k: View, v: View, out: View, lse: View, dout: View, dq: View, dk: View, dv: View, p: AttentionParams) =>
          gpuAttentionBackwardVariant(dev, q, k, v, out, lse, dout, dq, dk, dv, p, attentionVariant(dev, q.shape[3]!, cpuLayout)),
  });
}

beforeAll(async () => {
  webgpu = await WebGPUDevice.create();
  cpu = new CpuDevice();
});

afterAll(() => webgpu?.destroy());

test('every backward op has cases, case names are unique', () => {
  for (const op of BACKWARD_OPS) expect(cases.some((c) => c.op === op), op).toBe(true);
  expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
});

describeConformance([
  ['webgpu', cases, () => webgpu],
  ['webgpu, other layout', twoLayouts, () => otherLayout(webgpu)],
  ['cpu', cases, () => cpu],
]);

// ---- errors -----------------------------------------------------------------------------------------

function view(dev: Device, shape: number[], strides = contiguousStrides(shape)): View {
  return { buf: dev.alloc((numel(shape) + 64) * 4), dtype: 'f32', shape, strides, offset: 0 };
}

describe.each(['webgpu', 'cpu'])('%s rejects', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;
  const f = (shape: number[]) => view(dev(), shape);

  test('norm gradients of another shape, naming the op and shapes', () => {
    expect(() => dev().layerNormBackward(f([3, 8]), null, f([3, 9]), f([3, 8]), null, null, { eps: 1e-5 }))
      .toThrow(/layerNormBackward \[3,8\]:f32 \[3,9\]:f32 -> \[3,8\]:f32: dy \[3,9\] must have x's shape \[3,8\]/);
    expect(() => dev().rmsNormBackward(f([3, 8]), f([8]), f([3, 8]), f([8, 3]), null, { eps: 1e-6 })).toThrow(/rmsNormBackward .*dx \[8,3\] must have x's shape \[3,8\]/);
    expect(() => dev().layerNormBackward(f([3, 8]), f([8]), f([3, 8]), f([3, 8]), f([8]), f([7]), { eps: 1e-5 })).toThrow(/dbias \[7\] must be \[8\]/);
    expect(() => dev().rmsNormBackward(f([3, 8]), null, f([3, 8]), f([3, 8]), f([1, 8]), { eps: 1e-6 })).toThrow(/dweight \[1,8\] must be \[8\]/);
  });

  test('attention gradients of another shape, and an lse that is not [B, H, Lq]', () => {
    const [q, k] = [[1, 2, 5, 16], [1, 2, 6, 16]];
    const p = { scale: 0.25 };
    expect(() => dev().attentionBackward(f(q), f(k), f(k), f(q), f([1, 2, 5]), f(q), f(q), f(q), f(k), p))
      .toThrow(/attentionBackward \[1,2,5,16\]:f32 .* -> \[1,2,5,16\]:f32: dk \[1,2,5,16\] must have k's shape \[1,2,6,16\]/);
    expect(() => dev().attentionBackward(f(q), f(k), f(k), f(q), f([1, 2, 5]), f(k), f(q), f(k), f(k), p)).toThrow(/dout \[1,2,6,16\] must have q's shape/);
    expect(() => dev().attentionBackward(f(q), f(k), f(k), f(q), f([1, 2, 6]), f(q), f(q), f(k), f(k), p)).toThrow(/lse \[1,2,6\] must be \[1, 2, 5\]/);
  });

  test('ropeBackward with an odd head width or a dx of another shape', () => {
    expect(() => dev().ropeBackward(f([1, 1, 4, 5]), f([4, 5]), f([4, 5]), f([1, 1, 4, 5]))).toThrow(/ropeBackward .*dy \[1,1,4,5\]: Dh = 5 must be even/);
    expect(() => dev().ropeBackward(f([1, 1, 4, 8]), f([4, 8]), f([4, 8]), f([1, 2, 4, 8]))).toThrow(/dx \[1,2,4,8\] must have dy's shape \[1,1,4,8\]/);
  });
});

describe('webgpu rejects layouts it cannot address', () => {
  test('norm backward with a dx whose normalised axis is not unit-stride', () => {
    expect(() => webgpu.layerNormBackward(view(webgpu, [8, 3]), null, view(webgpu, [8, 3]), view(webgpu, [8, 3], [1, 8]), null, null, { eps: 1e-5 }))
      .toThrow(/dx \[8,3\] strides \[1,8\]: the normalised axis must have stride 1/);
  });

  test('attention backward with a strided Dh axis', () => {
    const q = [1, 1, 4, 8];
    const dout = view(webgpu, q, [32, 32, 1, 4]);
    expect(() => webgpu.attentionBackward(view(webgpu, q), view(webgpu, q), view(webgpu, q), view(webgpu, q), view(webgpu, [1, 1, 4]), dout, view(webgpu, q), view(webgpu, q), view(webgpu, q), { scale: 1 }))
      .toThrow(/dout \[1,1,4,8\] strides \[32,32,1,4\]: the Dh axis must have stride 1/);
  });

  test('ropeBackward on a non-contiguous dy', () => {
    const dy = view(webgpu, [1, 2, 4, 8], [64, 8, 16, 1]);
    expect(() => webgpu.ropeBackward(dy, view(webgpu, [4, 8]), view(webgpu, [4, 8]), view(webgpu, [1, 2, 4, 8]))).toThrow(/dy \[1,2,4,8\] strides \[64,8,16,1\] must be contiguous/);
  });
});
