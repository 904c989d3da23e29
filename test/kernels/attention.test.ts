// Attention and rope: every conformance case on WebGPU (with the adapter's attention variant and
// with the other one) and on the CPU backend in f32, all against the CPU float64 reference; then
// the errors a caller gets for bad shapes and layouts.
import { describeConformance } from './conformance.ts';
import { withOverrides } from './override.ts';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { AttentionParams, Device, View } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { attentionVariant, gpuAttentionVariant } from '../../src/kernels/attention.ts';
import { cases as allCases } from '../../src/kernels/attention.cases.ts';
import { isCpuAdapter } from '../../src/device/webgpu/context.ts';
import { contiguousStrides } from '../../src/tensor/shape.ts';

// The backward ops' cases run in norm_attention_backward.test.ts.
const cases = allCases.filter((c) => !c.op.endsWith('Backward'));

let webgpu: WebGPUDevice;
let cpu: CpuDevice;
const attentionCases = cases.filter((c) => c.op === 'attention');

/**
 * The WebGPU device running the attention variant its adapter does not pick: on lavapipe this is
 * the workgroup-memory variant real GPUs get (and the register variant on a GPU).
 */
function otherVariant(dev: WebGPUDevice): Device {
  return withOverrides(dev, {
    attention: (q: View, k: View, v: View, out: View, p: AttentionParams, lse: View | null = null) =>
          gpuAttentionVariant(dev, q, k, v, out, p, lse, attentionVariant(dev, q.shape[3]!, !isCpuAdapter(dev))),
  });
}

beforeAll(async () => {
  webgpu = await WebGPUDevice.create();
  cpu = new CpuDevice();
});

afterAll(() => webgpu?.destroy());

describeConformance([
  ['webgpu', cases, () => webgpu],
  ['webgpu, other variant', attentionCases, () => otherVariant(webgpu)],
  ['cpu', cases, () => cpu],
]);

function view(dev: Device, shape: number[], strides = contiguousStrides(shape)): View {
  return { buf: dev.alloc((shape.reduce((a, b) => a * b, 1) + 64) * 4), dtype: 'f32', shape, strides, offset: 0 };
}

describe.each(['webgpu', 'cpu'])('%s rejects', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;
  const p = { scale: 0.25 };

  test('k with another head width than q', () => {
    const d = dev();
    expect(() => d.attention(view(d, [1, 2, 5, 16]), view(d, [1, 2, 6, 8]), view(d, [1, 2, 6, 8]), view(d, [1, 2, 5, 16]), p))
      .toThrow(/attention \[1,2,5,16\]:f32 \[1,2,6,8\]:f32 \[1,2,6,8\]:f32 -> \[1,2,5,16\]:f32: k \[1,2,6,8\] must be \[1, 2, Lk, 16\]/);
  });

  test('v of another length than k, and no keys at all', () => {
    const d = dev();
    expect(() => d.attention(view(d, [1, 2, 5, 16]), view(d, [1, 2, 6, 16]), view(d, [1, 2, 7, 16]), view(d, [1, 2, 5, 16]), p)).toThrow(/v \[1,2,7,16\] must have k's shape/);
    expect(() => d.attention(view(d, [1, 2, 5, 16]), view(d, [1, 2, 0, 16]), view(d, [1, 2, 0, 16]), view(d, [1, 2, 5, 16]), p)).toThrow(/has no keys/);
  });

  test('an lse that is not [B, H, Lq]', () => {
    const d = dev();
    expect(() => d.attention(view(d, [1, 2, 5, 16]), view(d, [1, 2, 6, 16]), view(d, [1, 2, 6, 16]), view(d, [1, 2, 5, 16]), p, view(d, [1, 2, 6])))
      .toThrow(/lse \[1,2,6\] must be \[1, 2, 5\]/);
  });

  test('rope with an odd head width or tables of another length', () => {
    const d = dev();
    expect(() => d.rope(view(d, [1, 1, 4, 5]), view(d, [4, 5]), view(d, [4, 5]), view(d, [1, 1, 4, 5]))).toThrow(/rope .*Dh = 5 must be even/);
    expect(() => d.rope(view(d, [1, 1, 4, 8]), view(d, [3, 8]), view(d, [4, 8]), view(d, [1, 1, 4, 8]))).toThrow(/cos \[3,8\] must be \[4, 8\]/);
  });
});

describe('webgpu rejects layouts it cannot address', () => {
  test('attention with a strided Dh axis', () => {
    const q = view(webgpu, [1, 1, 4, 8], [32, 32, 1, 4]);
    expect(() => webgpu.attention(q, view(webgpu, [1, 1, 4, 8]), view(webgpu, [1, 1, 4, 8]), view(webgpu, [1, 1, 4, 8]), { scale: 1 }))
      .toThrow(/q \[1,1,4,8\] strides \[32,32,1,4\]: the Dh axis must have stride 1/);
  });

  test('rope on a non-contiguous x', () => {
    const x = view(webgpu, [1, 2, 4, 8], [64, 8, 16, 1]);
    expect(() => webgpu.rope(x, view(webgpu, [4, 8]), view(webgpu, [4, 8]), view(webgpu, [1, 2, 4, 8]))).toThrow(/x \[1,2,4,8\] strides \[64,8,16,1\] must be contiguous/);
  });
});
