// Reductions (sum, mean, max, min, var) and softmax: every conformance case on WebGPU in the layout
// its adapter picks and in the other one (lavapipe takes a thread per output; this also runs the
// tree reductions real GPUs get), and on the CPU backend in f32, all against the CPU float64
// reference; then the errors a caller gets for bad shapes. (Operands larger than one binding are
// tested with the elementwise family, which owns the splitting.)
import { describeConformance } from './conformance.ts';
import { withOverrides } from './override.ts';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device, ReduceOp, View } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { isCpuAdapter } from '../../src/device/webgpu/context.ts';
import { gpuReduce, gpuSoftmax, reduceLayout } from '../../src/kernels/reduce.ts';
import { cases } from '../../src/kernels/reduce.cases.ts';
import { contiguousStrides, numel } from '../../src/tensor/shape.ts';

let webgpu: WebGPUDevice;
let cpu: CpuDevice;

/** The WebGPU device with the other layout than its adapter picks. */
function otherLayout(dev: WebGPUDevice): Device {
  const tree = isCpuAdapter(dev);
  return withOverrides(dev, {
    reduce: (op: ReduceOp, x: View, out: View, p: { outer: number; n: number; inner: number; correction?: number }) =>
          gpuReduce(dev, op, x, out, p, reduceLayout(dev, p.n, p.inner, tree)),
    softmax: (x: View, out: View) => gpuSoftmax(dev, x, out, reduceLayout(dev, x.shape.at(-1)!, 1, tree)),
  });
}

beforeAll(async () => {
  webgpu = await WebGPUDevice.create();
  cpu = new CpuDevice();
});

afterAll(() => webgpu?.destroy());

test('case names are unique', () => {
  expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
});

describeConformance([
  ['webgpu', cases, () => webgpu],
  ['webgpu, other layout', cases, () => otherLayout(webgpu)],
  ['cpu', cases, () => cpu],
]);

function view(dev: Device, shape: number[], strides = contiguousStrides(shape), offset = 0): View {
  return { buf: dev.alloc((numel(shape) + offset + 16) * 4), dtype: 'f32', shape, strides, offset };
}

// ---- errors -------------------------------------------------------------------------------------------

describe.each(['webgpu', 'cpu'])('%s rejects', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;

  test('dims that do not match x or out, naming the shapes', () => {
    expect(() => dev().reduce('sum', view(dev(), [4, 5]), view(dev(), [4]), { outer: 4, n: 6, inner: 1 }))
      .toThrow(/reduce \[4,5\]:f32 -> \[4\]:f32: x \[4,5\] does not hold \[outer=4, n=6, inner=1\]/);
    expect(() => dev().reduce('mean', view(dev(), [4, 5]), view(dev(), [5]), { outer: 4, n: 5, inner: 1 }))
      .toThrow(/out \[5\] does not hold \[outer=4, inner=1\]/);
    expect(() => dev().reduce('max', view(dev(), [3, 0]), view(dev(), [3]), { outer: 3, n: 0, inner: 1 }))
      .toThrow(/cannot reduce an empty axis \(x \[3,0\]\)/);
  });

  test('a softmax output of another shape', () => {
    expect(() => dev().softmax(view(dev(), [3, 8]), view(dev(), [8, 3])))
      .toThrow(/softmax \[3,8\]:f32 -> \[8,3\]:f32: softmax wants x and out of one shape \[\.\.\., D\]; got x \[3,8\], out \[8,3\]/);
  });
});

test('webgpu rejects a strided x, naming its strides', () => {
  expect(() => webgpu.reduce('sum', view(webgpu, [4, 5], [1, 4]), view(webgpu, [4]), { outer: 4, n: 5, inner: 1 }))
    .toThrow(/reduce sum wants a dense x; got \[4,5\] strides \[1,4\]/);
  expect(() => webgpu.softmax(view(webgpu, [4, 5], [1, 4]), view(webgpu, [4, 5]))).toThrow(/softmax wants a dense x/);
});
