// Conformance cases for conv2d and upsampleNearest2x: the VAE's 3x3/1x1 convs, even and
// non-square kernels, strides, odd sizes, channel counts off the 8x4 block, strided views.
import type { InputSpec, OpCase } from '../device/conformance.ts';
import type { Conv2dParams } from '../device/device.ts';
import { convOutSize } from './conv.cpu.ts';

interface ConvSpec {
  b: number; cin: number; cout: number; h: number; w: number;
  k: [number, number];
  stride?: [number, number];
  padding?: [number, number];
  bias?: boolean;
  /** Non-contiguous operands instead of dense ones. */
  x?: InputSpec['strided'];
  biasStride?: number;
}

function conv(s: ConvSpec): OpCase {
  const p: Conv2dParams = { stride: s.stride ?? [1, 1], padding: s.padding ?? [0, 0] };
  const ho = convOutSize(s.h, s.k[0], p.stride[0], p.padding[0]);
  const wo = convOutSize(s.w, s.k[1], p.stride[1], p.padding[1]);
  const inputs: InputSpec[] = [
    { shape: [s.b, s.cin, s.h, s.w], strided: s.x },
    // Kaiming-like scale keeps outputs O(1) whatever the fan-in.
    { shape: [s.cout, s.cin, ...s.k], init: { kind: 'normal', scale: 1 / Math.sqrt(s.cin * s.k[0] * s.k[1]) } },
  ];
  if (s.bias) {
    const bs = s.biasStride ?? 1;
    inputs.push({ shape: [s.cout], strided: bs === 1 ? undefined : { strides: [bs], offset: 1, storage: s.cout * bs + 1 } });
  }
  const name = `conv2d x[${s.b},${s.cin},${s.h},${s.w}] w[${s.cout},${s.cin},${s.k}] stride ${p.stride} pad ${p.padding}`
    + `${s.bias ? ' bias' : ''}${s.biasStride ? ' (strided)' : ''}${s.x ? ' x strided' : ''}`;
  return {
    op: 'conv2d',
    name,
    inputs,
    outputs: [{ shape: [s.b, s.cout, ho, wo] }],
    run: (dev, [x, w, bias], [out]) => dev.conv2d(x!, w!, bias ?? null, out!, p),
  };
}

function upsample(shape: [number, number, number, number], strided?: InputSpec['strided']): OpCase {
  const [b, c, h, w] = shape;
  return {
    op: 'upsampleNearest2x',
    name: `upsampleNearest2x [${shape}]${strided ? ' strided' : ''}`,
    inputs: [{ shape, strided }],
    outputs: [{ shape: [b, c, 2 * h, 2 * w] }],
    run: (dev, [x], [out]) => dev.upsampleNearest2x(x!, out!),
  };
}

export const cases: OpCase[] = [
  // The VAE's workhorse: 3x3, stride 1, padding 1.
  conv({ b: 1, cin: 4, cout: 8, h: 8, w: 8, k: [3, 3], padding: [1, 1], bias: true }),
  conv({ b: 2, cin: 3, cout: 5, h: 7, w: 9, k: [3, 3], padding: [1, 1], bias: true }),
  conv({ b: 1, cin: 5, cout: 3, h: 1, w: 1, k: [3, 3], padding: [1, 1] }),
  conv({ b: 1, cin: 2, cout: 9, h: 13, w: 5, k: [3, 3], padding: [1, 1], bias: true, biasStride: 3 }),
  // 1x1: the flattened matmul path, and the general path when the planes are not dense.
  conv({ b: 2, cin: 5, cout: 7, h: 6, w: 10, k: [1, 1], bias: true }),
  conv({ b: 1, cin: 3, cout: 70, h: 3, w: 5, k: [1, 1], bias: true }),
  // x is every other channel of a [2,6,5,6] tensor, starting at channel 1.
  conv({ b: 2, cin: 3, cout: 4, h: 5, w: 6, k: [1, 1], x: { strides: [180, 60, 6, 1], offset: 30, storage: 360 } }),
  // x is a [1,3,6,5] tensor with its last two axes swapped (planes not dense).
  conv({ b: 1, cin: 3, cout: 4, h: 5, w: 6, k: [1, 1], bias: true, x: { strides: [90, 30, 1, 5], offset: 0, storage: 90 } }),
  conv({ b: 1, cin: 3, cout: 5, h: 5, w: 6, k: [3, 3], padding: [1, 1], x: { strides: [90, 30, 1, 5], offset: 0, storage: 90 } }),
  conv({ b: 1, cin: 3, cout: 2, h: 4, w: 5, k: [1, 1], padding: [1, 1], bias: true }),
  conv({ b: 1, cin: 4, cout: 3, h: 7, w: 8, k: [1, 1], stride: [2, 2] }),
  // Even and non-square kernels, strides, asymmetric parameters.
  conv({ b: 1, cin: 3, cout: 5, h: 9, w: 10, k: [4, 4], bias: true }),
  conv({ b: 2, cin: 3, cout: 5, h: 9, w: 11, k: [4, 4], stride: [2, 2], padding: [1, 1], bias: true }),
  conv({ b: 1, cin: 3, cout: 4, h: 7, w: 9, k: [5, 3], padding: [2, 1], bias: true }),
  conv({ b: 1, cin: 4, cout: 6, h: 9, w: 9, k: [3, 3], stride: [2, 2] }),
  conv({ b: 2, cin: 5, cout: 3, h: 8, w: 8, k: [3, 3], stride: [2, 2], padding: [1, 1], bias: true }),
  conv({ b: 1, cin: 3, cout: 4, h: 6, w: 11, k: [3, 3], stride: [1, 2], padding: [0, 1] }),
  // Moderately large: many workgroups and a long input-channel loop.
  conv({ b: 1, cin: 64, cout: 64, h: 32, w: 32, k: [3, 3], padding: [1, 1], bias: true }),
  conv({ b: 1, cin: 64, cout: 32, h: 24, w: 24, k: [1, 1], bias: true }),

  upsample([1, 1, 1, 1]),
  upsample([2, 3, 5, 7]),
  upsample([1, 16, 45, 45]),
  // A [1,2,7,4] tensor with its last two axes swapped.
  upsample([1, 2, 4, 7], { strides: [28, 14, 1, 4], offset: 0, storage: 56 }),
];
