// The tape and its rules: every differentiable op against central finite differences in float64 on
// the CPU reference, plus the tape's own contract (accumulation, noGrad, loud forward-only ops,
// saved tensors released after backward).
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../src/device/cpu/device.ts';
import type { Device } from '../src/device/device.ts';
import { compare } from '../src/device/conformance.ts';
import { WebGPUDevice } from '../src/device/webgpu/device.ts';
import * as A from '../src/autograd/functional.ts';
import { gradcheck } from '../src/autograd/gradcheck.ts';
import { Tensor } from '../src/tensor/tensor.ts';
import { withOverrides } from './kernels/override.ts';

const dev = new CpuDevice();

/** Deterministic non-zero values in about [-1.5, 1.5] (or (0.5, 2) when positive). */
function values(n: number, seed: number, positive = false): number[] {
  let s = seed * 2654435761 >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    const u = s / 4294967296;
    return positive ? 0.5 + 1.5 * u : 3 * u - 1.5 || 0.3;
  });
}
const input = (shape: number[], seed: number, positive = false) => ({ shape, values: values(shape.reduce((a, b) => a * b, 1), seed, positive) });

/** A scalar loss sum(out * w) with fixed random w, so every output element's gradient differs. */
function weightedSum(out: Tensor): Tensor {
  const w = Tensor.from(out.device, values(out.numel, 99), out.shape, out.dtype);
  const prod = A.mul(out, w);
  const flat = A.reshape(prod, [-1]);
  const loss = A.sum(flat, 0);
  [w, prod, flat].forEach((t) => t.dispose());
  return loss;
}

const TOL = 1e-6;

const cases: [string, (xs: Tensor[]) => Tensor, { shape: number[]; values: number[] }[]][] = [
  ['add broadcast', ([a, b]) => A.add(a!, b!), [input([2, 3, 4], 1), input([3, 1], 2)]],
  ['sub broadcast', ([a, b]) => A.sub(a!, b!), [input([4], 3), input([2, 3, 4], 4)]],
  ['mul broadcast', ([a, b]) => A.mul(a!, b!), [input([2, 3, 4], 5), input([1, 3, 1], 6)]],
  ['div broadcast', ([a, b]) => A.div(a!, b!), [input([2, 3], 7), input([3], 8, true)]],
  ['neg', ([a]) => A.neg(a!), [input([5], 9)]],
  ['scale', ([a]) => A.scale(a!, -1.75), [input([2, 5], 10)]],
  ['exp', ([a]) => A.exp(a!), [input([3, 3], 11)]],
  ['log', ([a]) => A.log(a!), [input([7], 12, true)]],
  ['sqrt', ([a]) => A.sqrt(a!), [input([7], 13, true)]],
  ['tanh', ([a]) => A.tanh(a!), [input([2, 4], 14)]],
  ['sum axis 1', ([a]) => A.sum(a!, 1), [input([2, 3, 4], 15)]],
  ['mean axis -1 keepdim', ([a]) => A.mean(a!, -1, true), [input([2, 3, 5], 16)]],
  ['matmul batched', ([a, b]) => A.matmul(a!, b!), [input([2, 3, 4], 17), input([2, 4, 5], 18)]],
  ['matmul shared b', ([a, b]) => A.matmul(a!, b!), [input([2, 3, 4], 19), input([4, 2], 20)]],
  ['linear with bias', ([x, w, b]) => A.linear(x!, w!, b!), [input([2, 3, 4], 21), input([5, 4], 22), input([5], 23)]],
  ['linear without bias', ([x, w]) => A.linear(x!, w!), [input([3, 4], 24), input([2, 4], 25)]],
  ['reshape', ([a]) => A.reshape(a!, [3, 8]), [input([2, 3, 4], 26)]],
  ['permute', ([a]) => A.permute(a!, [2, 0, 1]), [input([2, 3, 4], 27)]],
  ['transpose', ([a]) => A.transpose(a!, 0, 2), [input([2, 3, 4], 28)]],
  ['slice with step', ([a]) => A.slice(a!, 1, 1, 5, 2), [input([3, 6], 29)]],
  ['expand', ([a]) => A.expand(a!, [2, 3, 4]), [input([3, 1], 30)]],
  ['cat', ([a, b]) => A.cat([a!, b!], 1), [input([2, 3], 31), input([2, 2], 32)]],
  ['split', ([a]) => { const [x, y] = A.split(a!, [1, 3], 1); const y0 = A.slice(y!, 1, 0, 1); const r = A.mul(x!, y0); [x!, y!, y0].forEach((t) => t.dispose()); return r; }, [input([2, 4], 33)]],
  ['silu', ([a]) => A.silu(a!), [input([2, 5], 35)]],
  ['gelu erf', ([a]) => A.gelu(a!), [input([2, 5], 36)]],
  ['gelu tanh', ([a]) => A.gelu(a!, 'tanh'), [input([2, 5], 37)]],
  ['quick gelu', ([a]) => A.quickGelu(a!), [input([2, 5], 38)]],
  ['sigmoid', ([a]) => A.sigmoid(a!), [input([6], 39)]],
  ['rsqrt', ([a]) => A.rsqrt(a!), [input([6], 40, true)]],
  ['clamp', ([a]) => A.clamp(a!, -0.7, 0.9), [input([3, 4], 41)]],
  ['softmax last axis', ([a]) => A.softmax(a!), [input([3, 5], 42)]],
  ['softmax axis 0', ([a]) => A.softmax(a!, 0), [input([3, 2, 4], 43)]],
  ['layerNorm affine', ([x, w, b]) => A.layerNorm(x!, w!, b!, 1e-5), [input([3, 6], 44), input([6], 45), input([6], 46)]],
  ['layerNorm plain', ([x]) => A.layerNorm(x!, null, null, 1e-6), [input([2, 2, 5], 47)]],
  ['rmsNorm', ([x, w]) => A.rmsNorm(x!, w!, 1e-6), [input([3, 8], 48), input([8], 49)]],
  ['attention', ([q, k, v]) => A.attention(q!, k!, v!), [input([1, 2, 5, 4], 53), input([1, 2, 7, 4], 54), input([1, 2, 7, 4], 55)]],
  ['attention causal', ([q, k, v]) => A.attention(q!, k!, v!, { causal: true, scale: 0.7 }), [input([2, 1, 6, 4], 56), input([2, 1, 6, 4], 57), input([2, 1, 6, 4], 58)]],
  ['rope', ([x]) => {
    const cos = Tensor.from(x!.device, values(5 * 4, 59), [5, 4], x!.dtype);
    const sin = Tensor.from(x!.device, values(5 * 4, 60), [5, 4], x!.dtype);
    const r = A.rope(x!, cos, sin);
    [cos, sin].forEach((t) => t.dispose());
    return r;
  }, [input([1, 2, 5, 4], 61)]],
  ['a tensor used twice', ([a]) => { const s = A.mul(a!, a!); const r = A.add(s, a!); s.dispose(); return r; }, [input([4], 34)]],
];

describe('finite differences (float64, CPU)', () => {
  for (const [name, fn, inputs] of cases) {
    test(name, async () => {
      const before = dev.memory().liveBuffers;
      const { errors } = await gradcheck(dev, (xs) => { const out = fn(xs); const l = weightedSum(out); out.dispose(); return l; }, inputs);
      for (const e of errors) expect(e).toBeLessThan(TOL);
      // Every saved tensor and intermediate gradient was released.
      expect(dev.memory().liveBuffers).toBe(before);
    });
  }
});

/** The tape's gradients of every input in f32 on `d`. */
async function gradsOn(d: Device, fn: (xs: Tensor[]) => Tensor, inputs: { shape: number[]; values: number[] }[]): Promise<Float64Array[]> {
  const xs = inputs.map((x) => { const t = Tensor.from(d, x.values, x.shape, 'f32'); t.requiresGrad = true; return t; });
  const out = fn(xs);
  const loss = weightedSum(out);
  A.backward(loss);
  const grads = await Promise.all(xs.map((x) => x.grad!.toFloat64()));
  [out, loss, ...xs.flatMap((x) => [x, x.grad!])].forEach((t) => t.dispose());
  return grads;
}

describe('WebGPU gradients match the CPU backend (f32)', () => {
  let gpu: WebGPUDevice;
  beforeAll(async () => { gpu = await WebGPUDevice.create(); });
  afterAll(() => gpu?.destroy());
  for (const [name, fn, inputs] of cases) {
    test(name, async () => {
      const want = await gradsOn(dev, fn, inputs);
      const got = await gradsOn(gpu, fn, inputs);
      got.forEach((g, i) => expect(compare(g, want[i]!).rel).toBeLessThan(1e-5));
    });
  }
});

describe('tape', () => {
  test('gradients accumulate across backward calls', async () => {
    const x = Tensor.from(dev, [1, 2, 3], [3], 'f64');
    x.requiresGrad = true;
    for (let i = 0; i < 2; i++) {
      const y = A.mul(x, x);
      const l = A.sum(y, 0);
      A.backward(l);
      [y, l].forEach((t) => t.dispose());
    }
    expect(Array.from(await x.grad!.toFloat64())).toEqual([4, 8, 12]);
  });

  test('noGrad records nothing', () => {
    const x = Tensor.from(dev, [1, 2], [2], 'f64');
    x.requiresGrad = true;
    const y = A.noGrad(() => A.mul(x, x));
    expect(y.gradFn).toBeNull();
    expect(() => A.backward(A.noGrad(() => A.sum(y, 0)))).toThrow(/does not require grad/);
  });

  test('forward-only ops refuse to run under gradient tracking', () => {
    const x = Tensor.from(dev, [1, 2], [2], 'f64');
    x.requiresGrad = true;
    expect(() => A.conv2d(x, x, null)).toThrow(/conv2d: no backward rule yet/);
    expect(A.noGrad(() => A.silu(x)).shape).toEqual([2]);
  });

  test('a cotangent of the root shape drives non-scalar roots', async () => {
    const x = Tensor.from(dev, [1, 2, 3, 4], [2, 2], 'f64');
    x.requiresGrad = true;
    const y = A.scale(x, 3);
    A.backward(y, Tensor.from(dev, [1, 0, -1, 2], [2, 2], 'f64'));
    expect(Array.from(await x.grad!.toFloat64())).toEqual([3, 0, -3, 6]);
    expect(() => A.backward(A.scale(x, 2))).toThrow(/not a scalar/);
  });

  test('rules skip the gradients no input needs: a frozen weight costs no matmul', async () => {
    let matmuls = 0;
    const counting = withOverrides(dev, {
      matmul: (...args: Parameters<Device['matmul']>) => {
        matmuls++;
        dev.matmul(...args);
      },
    });
    const x = Tensor.from(counting, values(12, 1), [3, 4], 'f64');
    const w = Tensor.from(counting, values(20, 2), [5, 4], 'f64');
    x.requiresGrad = true;
    for (const [trainW, want] of [[false, 1], [true, 2]] as const) {
      w.requiresGrad = trainW;
      const y = A.linear(x, w);
      const l = A.sum(A.reshape(y, [-1]), 0);
      matmuls = 0;
      A.backward(l);
      expect(matmuls, `weight trainable: ${trainW}`).toBe(want);
      expect(w.grad === null).toBe(!trainW);
    }
  });

  test('a gradient takes its tensor\'s dtype: a bf16 intermediate rounds what flows through it', async () => {
    const x = Tensor.from(dev, [1.001, -2.003, 3.007], [3], 'f32');
    x.requiresGrad = true;
    const h = A.cast(x, 'bf16');
    const y = A.cast(h, 'f32');
    A.backward(y, Tensor.from(dev, [1.0001, 1.004, 3.14159], [3], 'f32'));
    expect(x.grad!.dtype).toBe('f32');
    // 1.0001 -> 1, 1.004 -> 1.0078125 (nearest bf16), 3.14159 -> 3.140625
    expect(Array.from(await x.grad!.toFloat64())).toEqual([1, 1.0078125, 3.140625]);
  });

  test('gradients of a bf16 tensor used twice accumulate (in f32, rounded back to bf16)', async () => {
    const x = Tensor.from(dev, [1, 2], [2], 'f32');
    x.requiresGrad = true;
    const h = A.cast(x, 'bf16');
    const [a, b] = [A.cast(h, 'f32'), A.cast(h, 'f32')];
    const y = A.add(a, b);
    // Each branch's gradient is rounded to bf16 on its way into h (1.002, 1.003 -> 1), then summed.
    A.backward(y, Tensor.from(dev, [1.002, 1.003], [2], 'f32'));
    expect(Array.from(await x.grad!.toFloat64())).toEqual([2, 2]);
  });
});

describe('gradient checkpointing', () => {
  test('gives the same gradients as the plain graph and keeps no activations', async () => {
    const run = async (useCheckpoint: boolean) => {
      const w1 = Tensor.from(dev, values(12, 50), [4, 3], 'f64');
      const w2 = Tensor.from(dev, values(8, 51), [2, 4], 'f64');
      const x = Tensor.from(dev, values(15, 52), [5, 3], 'f64');
      [w1, w2, x].forEach((t) => (t.requiresGrad = true));
      const block = ([inp]: Tensor[]) => {
        const h = A.linear(inp!, w1);
        const a = A.gelu(h, 'tanh');
        const y = A.linear(a, w2);
        [h, a].forEach((t) => t.dispose());
        return y;
      };
      const before = dev.memory().liveBuffers;
      const y = useCheckpoint ? A.checkpoint(block, [x], [w1, w2]) : block([x]);
      // Held after the forward: the output, plus the activations the graph saved.
      const held = dev.memory().liveBuffers - before;
      const loss = weightedSum(y);
      A.backward(loss);
      const grads = await Promise.all([w1, w2, x].map((t) => t.grad!.toFloat64()));
      [y, loss, w1, w2, x, w1.grad!, w2.grad!, x.grad!].forEach((t) => t.dispose());
      return { grads, held };
    };
    const plain = await run(false);
    const ckpt = await run(true);
    ckpt.grads.forEach((g, i) => expect(Array.from(g)).toEqual(Array.from(plain.grads[i]!)));
    expect(ckpt.held).toBe(1); // only the output
    expect(plain.held).toBeGreaterThan(1); // h, a saved for backward
  });
});
