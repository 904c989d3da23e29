// GroupNorm: every conformance case on WebGPU and on the CPU backend in f32, both against the CPU
// float64 reference; the split into several bindings that large tensors take; and the errors a
// caller gets for operands that do not fit together.
import { describeConformance } from './conformance.ts';
import { withOverrides } from './override.ts';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import { compare } from '../../src/device/conformance.ts';
import type { Device, View } from '../../src/device/device.ts';
import type { GpuContext } from '../../src/device/webgpu/context.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { cases } from '../../src/kernels/groupnorm.cases.ts';
import { gpuGroupNorm } from '../../src/kernels/groupnorm.ts';
import { contiguousStrides, numel } from '../../src/tensor/shape.ts';

let webgpu: WebGPUDevice;
let cpu: CpuDevice;

/** The WebGPU device with a smaller binding limit, its groupNorm launched against it, dispatches counted. */
function relaunched(dev: WebGPUDevice, maxBindingBytes: number) {
  const counter = { dispatches: 0 };
  const limits = { ...dev.limits, maxBindingBytes };
  const ctx: WebGPUDevice = withOverrides(dev, {
    limits,
    dispatch: (...a: Parameters<GpuContext['dispatch']>) => { counter.dispatches++; dev.dispatch(...a); },
    groupNorm: (...a: Parameters<Device['groupNorm']>) => gpuGroupNorm(ctx, ...a),
  });
  return { ctx, counter };
}

beforeAll(async () => {
  webgpu = await WebGPUDevice.create();
  cpu = new CpuDevice();
});

afterAll(() => webgpu?.destroy());

// 'split': the path for tensors larger than one binding (64 KiB here: the 8100- and 9001-pixel
// cases go one or two channels per dispatch).
describeConformance([
  ['webgpu', cases, () => webgpu],
  ['split', cases, () => relaunched(webgpu, 65536).ctx],
  ['cpu', cases, () => cpu],
]);

function tensor(dev: Device, shape: number[], values?: Float32Array): View {
  const buf = dev.alloc(Math.max(numel(shape), 1) * 4);
  if (values) dev.write(buf, 0, values);
  return { buf, dtype: 'f32', shape, strides: contiguousStrides(shape), offset: 0 };
}

describe('webgpu splits tensors larger than one binding', () => {
  test('over batch and channels, groups straddling the pieces', async () => {
    // x [2,6,100]: under an 800-byte limit each dispatch takes one 400-byte channel (two would not
    // fit, whatever the offset alignment slack), so each group of 3 channels is reduced by 3
    // dispatches before its statistics are merged: 12 stats + 1 finalize + 12 normalize dispatches.
    let s = 7;
    const xs = Float32Array.from({ length: 1200 }, () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648) * 4 + 3);
    const ws = Float32Array.from({ length: 6 }, (_, i) => 0.5 + i / 6), bs = Float32Array.from({ length: 6 }, (_, i) => i - 2);
    const { ctx, counter } = relaunched(webgpu, 800);
    const run = async (dev: Device) => {
      const x = tensor(dev, [2, 6, 100], xs), w = tensor(dev, [6], ws), b = tensor(dev, [6], bs), out = tensor(dev, [2, 6, 100]);
      (dev === cpu ? cpu : ctx).groupNorm(x, w, b, out, { groups: 2, eps: 1e-6 });
      const bytes = await dev.read(out.buf, 0, 4800);
      [x, w, b, out].forEach((v) => dev.free(v.buf));
      return new Float32Array(bytes.buffer, bytes.byteOffset, 1200);
    };
    const [expected, got] = [await run(cpu), await run(webgpu)];
    expect(counter.dispatches).toBe(25);
    expect(compare(got, expected).rel).toBeLessThan(1e-5);
  });

  test('a channel row over the limit is refused, naming the shape', () => {
    const { ctx } = relaunched(webgpu, 256);
    const x = tensor(webgpu, [1, 2, 100]), out = tensor(webgpu, [1, 2, 100]);
    expect(() => gpuGroupNorm(ctx, x, null, null, out, { groups: 1, eps: 1e-6 })).toThrow(/one channel row of x \[1,2,100\] exceeds the 256-byte binding limit/);
    [x, out].forEach((v) => webgpu.free(v.buf));
  });
});

describe.each(['webgpu', 'cpu'])('%s rejects', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;
  const gn = (x: number[], out: number[], groups: number, w: number[] | null = null) =>
    () => dev().groupNorm(tensor(dev(), x), w && tensor(dev(), w), null, tensor(dev(), out), { groups, eps: 1e-6 });

  test('channels that do not split into the groups', () => {
    expect(gn([2, 6, 5], [2, 6, 5], 4)).toThrow(/groupNorm \[2,6,5\]:f32 -> \[2,6,5\]:f32: 6 channels do not split into 4 groups/);
  });

  test('an output of another shape, a weight of the wrong length, x not [B,C,S]', () => {
    expect(gn([2, 6, 5], [2, 6, 4], 3)).toThrow(/out \[2,6,4\] should be \[2,6,5\]/);
    expect(gn([2, 6, 5], [2, 6, 5], 3, [5])).toThrow(/weight \[5\] should be \[6\]/);
    expect(gn([2, 6, 5, 5], [2, 6, 5, 5], 3)).toThrow(/groupNorm \[2,6,5,5\]:f32 -> \[2,6,5,5\]:f32: expected x \[B,C,S\], got \[2,6,5,5\]/);
  });
});
