// LayerNorm and RMSNorm: every conformance case on WebGPU and on the CPU backend in f32, both
// against the CPU float64 reference; then the errors a caller gets for bad shapes and layouts.
import { describeConformance } from './conformance.ts';
import { withOverrides } from './override.ts';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device, View } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { isCpuAdapter } from '../../src/device/webgpu/context.ts';
import { gpuNorm, normLayout } from '../../src/kernels/norm.ts';
import { cases as allCases } from '../../src/kernels/norm.cases.ts';
import { contiguousStrides } from '../../src/tensor/shape.ts';

// The backward ops' cases run in norm_attention_backward.test.ts.
const cases = allCases.filter((c) => !c.op.endsWith('Backward'));

let webgpu: WebGPUDevice;
let cpu: CpuDevice;

/**
 * The WebGPU device with the other norm layout than its adapter picks: lavapipe takes a thread per
 * row, so this runs the tree reduction that real GPUs get (and the other way round on a GPU).
 */
function otherLayout(dev: WebGPUDevice): Device {
  const layout = (x: View) => normLayout(dev, x.shape.at(-1)!, !isCpuAdapter(dev));
  return withOverrides(dev, {
    layerNorm: (x: View, w: View | null, b: View | null, out: View, p: { eps: number }) => gpuNorm(dev, 'layer', x, w, b, out, p.eps, layout(x)),
    rmsNorm: (x: View, w: View | null, out: View, p: { eps: number }) => gpuNorm(dev, 'rms', x, w, null, out, p.eps, layout(x)),
  });
}

beforeAll(async () => {
  webgpu = await WebGPUDevice.create();
  cpu = new CpuDevice();
});

afterAll(() => webgpu?.destroy());

describeConformance([
  ['webgpu', cases, () => webgpu],
  ['webgpu, other layout', cases, () => otherLayout(webgpu)],
  ['cpu', cases, () => cpu],
]);

function view(dev: Device, shape: number[], strides = contiguousStrides(shape), offset = 0): View {
  const n = shape.reduce((a, b) => a * b, 1) + offset + 64;
  return { buf: dev.alloc(n * 4), dtype: 'f32', shape, strides, offset };
}

describe.each(['webgpu', 'cpu'])('%s rejects', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;

  test('an output of another shape', () => {
    expect(() => dev().layerNorm(view(dev(), [3, 8]), null, null, view(dev(), [3, 9]), { eps: 1e-5 }))
      .toThrow(/layerNorm \[3,8\]:f32 -> \[3,9\]:f32: out \[3,9\] must have x's shape \[3,8\]/);
  });

  test('a weight that does not match the last axis', () => {
    expect(() => dev().rmsNorm(view(dev(), [3, 8]), view(dev(), [7]), view(dev(), [3, 8]), { eps: 1e-6 }))
      .toThrow(/rmsNorm .*weight \[7\] must be \[8\]/);
    expect(() => dev().layerNorm(view(dev(), [3, 8]), view(dev(), [8]), view(dev(), [2, 8]), view(dev(), [3, 8]), { eps: 1e-6 }))
      .toThrow(/layerNorm .*bias \[2,8\] must be \[8\]/);
  });
});

describe('webgpu rejects layouts it cannot address', () => {
  test('a normalised axis that is not unit-stride', () => {
    const x = view(webgpu, [8, 3], [1, 8]);
    expect(() => webgpu.layerNorm(x, null, null, view(webgpu, [8, 3]), { eps: 1e-5 })).toThrow(/x \[8,3\] strides \[1,8\]: the normalised axis must have stride 1/);
  });

  test('leading axes that do not collapse into one row axis', () => {
    const x = view(webgpu, [2, 3, 4], [40, 4, 1]);
    expect(() => webgpu.rmsNorm(x, null, view(webgpu, [2, 3, 4]), { eps: 1e-6 })).toThrow(/leading axes must collapse/);
  });
});
