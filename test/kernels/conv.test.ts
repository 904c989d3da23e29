// conv2d and upsampleNearest2x: every conformance case on WebGPU and on the CPU backend in f32, both
// against the CPU float64 reference; the split into several bindings that large tensors take; and
// the errors a caller gets for operands that do not fit together.
import { describeConformance } from './conformance.ts';
import { withOverrides } from './override.ts';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import { compare } from '../../src/device/conformance.ts';
import type { Device, View } from '../../src/device/device.ts';
import type { GpuContext } from '../../src/device/webgpu/context.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { cases } from '../../src/kernels/conv.cases.ts';
import { gpuConv2d, gpuUpsampleNearest2x } from '../../src/kernels/conv.ts';
import { contiguousStrides, numel } from '../../src/tensor/shape.ts';

let webgpu: WebGPUDevice;
let cpu: CpuDevice;

/**
 * The WebGPU device with some of what launchers see replaced (binding limit, adapter), its conv
 * ops launched against that view, and its dispatches counted.
 */
function relaunched(dev: WebGPUDevice, over: { limits?: GpuContext['limits']; adapterKey?: string }) {
  const counter = { dispatches: 0 };
  const ctx: WebGPUDevice = withOverrides(dev, {
    limits: over.limits,
    adapterKey: over.adapterKey,
    dispatch: (...a: Parameters<GpuContext['dispatch']>) => { counter.dispatches++; dev.dispatch(...a); },
    conv2d: (...a: Parameters<Device['conv2d']>) => gpuConv2d(ctx, ...a),
    upsampleNearest2x: (...a: Parameters<Device['upsampleNearest2x']>) => gpuUpsampleNearest2x(ctx, ...a),
  });
  return { ctx, counter };
}

beforeAll(async () => {
  webgpu = await WebGPUDevice.create();
  cpu = new CpuDevice();
});

afterAll(() => webgpu?.destroy());

// 'webgpu' runs the variant this adapter picks; 'gpu variant' the one real GPUs get; 'split' the
// path for tensors larger than one binding (64 KiB here: the 64-channel cases split into 3-5 pieces
// of input and output channels, the large upsampling into 8).
describeConformance([
  ['webgpu', cases, () => webgpu],
  ['gpu variant', cases, () => relaunched(webgpu, { adapterKey: 'test|discrete-gpu' }).ctx],
  ['split', cases, () => relaunched(webgpu, { limits: { ...webgpu.limits, maxBindingBytes: 65536 } }).ctx],
  ['cpu', cases, () => cpu],
]);

function random(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1);
}

/** A dense f32 view holding `values`, or uninitialised ones. */
function tensor(dev: Device, shape: number[], values?: Float32Array): View {
  const buf = dev.alloc(Math.max(numel(shape), 1) * 4);
  if (values) dev.write(buf, 0, values);
  return { buf, dtype: 'f32', shape, strides: contiguousStrides(shape), offset: 0 };
}

describe('webgpu splits tensors larger than one binding', () => {
  test('conv2d over batch, input and output channels', async () => {
    // x [2,6,9,10] is 2160 bytes; under a 1 KiB limit pieces hold 2 channels of one batch element
    // (720 bytes, plus up to 252 for the offset alignment): 2 batches x 3 output x 3 input pieces.
    const { ctx, counter } = relaunched(webgpu, { limits: { ...webgpu.limits, maxBindingBytes: 1024 } });
    const p = { stride: [1, 1] as [number, number], padding: [1, 1] as [number, number] };
    const xs = random(2 * 6 * 9 * 10, 1), ws = random(5 * 6 * 9, 2), bs = random(5, 3);
    const run = async (dev: Device) => {
      const x = tensor(dev, [2, 6, 9, 10], xs), w = tensor(dev, [5, 6, 3, 3], ws), b = tensor(dev, [5], bs), out = tensor(dev, [2, 5, 9, 10]);
      (dev === cpu ? cpu : ctx).conv2d(x, w, b, out, p);
      const got = await dev.read(out.buf, 0, 900 * 4);
      [x, w, b, out].forEach((v) => dev.free(v.buf));
      return new Float32Array(got.buffer, got.byteOffset, 900);
    };
    const [expected, got] = [await run(cpu), await run(webgpu)];
    expect(counter.dispatches).toBe(18);
    expect(compare(got, expected).rel).toBeLessThan(1e-5);
  });

  test('a single channel plane over the limit is refused, naming the shapes', () => {
    const { ctx } = relaunched(webgpu, { limits: { ...webgpu.limits, maxBindingBytes: 256 } });
    const x = tensor(webgpu, [1, 2, 9, 10]), w = tensor(webgpu, [3, 2, 3, 3]), out = tensor(webgpu, [1, 3, 9, 10]), up = tensor(webgpu, [1, 2, 18, 20]);
    expect(() => gpuConv2d(ctx, x, w, null, out, { stride: [1, 1], padding: [1, 1] }))
      .toThrow(/one channel plane of x \[1,2,9,10\] or out \[1,3,9,10\] exceeds the 256-byte binding limit/);
    expect(() => gpuUpsampleNearest2x(ctx, x, up)).toThrow(/one channel plane of out \[1,2,18,20\]/);
    [x, w, out, up].forEach((v) => webgpu.free(v.buf));
  });
});

describe.each(['webgpu', 'cpu'])('%s rejects', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;
  const conv = (x: number[], w: number[], out: number[], bias: number[] | null = null, stride: [number, number] = [1, 1]) =>
    () => dev().conv2d(tensor(dev(), x), tensor(dev(), w), bias && tensor(dev(), bias), tensor(dev(), out), { stride, padding: [1, 1] });

  test('input channels that do not match the weight', () => {
    expect(conv([1, 3, 4, 4], [2, 4, 3, 3], [1, 2, 4, 4])).toThrow(/conv2d \[1,3,4,4\]:f32 \[2,4,3,3\]:f32 -> \[1,2,4,4\]:f32: .*3 input channels but w \[2,4,3,3\] expects 4/);
  });

  test('an output of the wrong size, a bias of the wrong length, a zero stride', () => {
    expect(conv([1, 3, 4, 4], [2, 3, 3, 3], [1, 2, 3, 4])).toThrow(/out \[1,2,3,4\] should be \[1,2,4,4\]/);
    expect(conv([1, 3, 4, 4], [2, 3, 3, 3], [1, 2, 4, 4], [3])).toThrow(/bias \[3\] should be \[2\]/);
    expect(conv([1, 3, 4, 4], [2, 3, 3, 3], [1, 2, 4, 4], null, [0, 1])).toThrow(/stride \[0,1\] must be integers >= 1/);
  });

  test('an upsampling output that is not twice the input', () => {
    expect(() => dev().upsampleNearest2x(tensor(dev(), [1, 2, 3, 4]), tensor(dev(), [1, 2, 6, 9])))
      .toThrow(/upsampleNearest2x .*want out \[1,2,6,8\]/);
  });
});
