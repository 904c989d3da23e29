// The tensor layer: views share storage and copy nothing, contiguous() and cat() move the right
// elements, storage is freed exactly when the last view goes, and bad shapes fail with clear errors.
import { describe, expect, test } from 'vitest';
import { CpuDevice } from '../src/device/cpu/device.ts';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../src/tensor/dtype.ts';
import * as F from '../src/tensor/ops.ts';
import { Tensor } from '../src/tensor/tensor.ts';

const dev = new CpuDevice();
const iota = (n: number, start = 1) => Array.from({ length: n }, (_, i) => i + start);

describe('views', () => {
  const t = Tensor.from(dev, iota(24), [2, 3, 4]);

  test('permute then contiguous reorders the elements', async () => {
    const p = t.permute([2, 0, 1]);
    expect(p.shape).toEqual([4, 2, 3]);
    expect(p.isContiguous).toBe(false);
    const c = p.contiguous();
    const v = await c.toFloat64();
    // element [k, i, j] = t[i, j, k] = 1 + 12i + 4j + k
    for (let k = 0; k < 4; k++) for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) expect(v[k * 6 + i * 3 + j]).toBe(1 + 12 * i + 4 * j + k);
    [p, c].forEach((x) => x.dispose());
  });

  test('slice with a step and expand share the storage', async () => {
    const s = t.slice(2, 1, 4, 2); // k = 1, 3
    expect(s.storage).toBe(t.storage);
    expect(Array.from(await s.toFloat64())).toEqual([2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]);
    const row = Tensor.from(dev, [5, 6, 7], [3, 1]);
    const e = row.expand([2, 3, 2]);
    expect(e.strides).toEqual([0, 1, 0]);
    expect(Array.from(await e.toFloat64())).toEqual([5, 5, 6, 6, 7, 7, 5, 5, 6, 6, 7, 7]);
    [s, row, e].forEach((x) => x.dispose());
  });

  test('reshape of a non-contiguous view copies; unsqueeze/squeeze round-trip', async () => {
    const tr = t.transpose(0, 2); // [4,3,2]
    const r = tr.reshape([4, -1]);
    expect(r.shape).toEqual([4, 6]);
    expect(r.storage).not.toBe(t.storage);
    expect(Array.from((await r.toFloat64()).slice(0, 6))).toEqual([1, 13, 5, 17, 9, 21]);
    const u = t.unsqueeze(1);
    expect(u.shape).toEqual([2, 1, 3, 4]);
    const sq = u.squeeze(1);
    expect(Array.from(await sq.toFloat64())).toEqual(iota(24));
    [tr, r, u, sq].forEach((x) => x.dispose());
  });

  test('cat copies parts into slices; split returns views', async () => {
    const a = Tensor.from(dev, iota(6), [2, 3]);
    const b = Tensor.from(dev, iota(4, 100), [2, 2]);
    const c = F.cat([a, b], 1);
    expect(Array.from(await c.toFloat64())).toEqual([1, 2, 3, 100, 101, 4, 5, 6, 102, 103]);
    const [x, y] = F.split(c, [3, 2], 1);
    expect(Array.from(await y!.toFloat64())).toEqual([100, 101, 102, 103]);
    [a, b, c, x!, y!].forEach((z) => z.dispose());
  });

  test('errors name the shapes', () => {
    expect(() => t.reshape([5, 5])).toThrow(/24 elements to \[5,5\]/);
    expect(() => t.permute([0, 0, 1])).toThrow(/not a permutation/);
    expect(() => t.expand([2, 5, 4])).toThrow(/cannot expand \[2,3,4\] to \[2,5,4\]/);
    expect(() => t.slice(1, 0, 4)).toThrow(/out of range/);
    const b = Tensor.from(dev, iota(5), [5]);
    expect(() => F.add(t, b)).toThrow(/\[2,3,4\] and \[5\] do not broadcast/);
    expect(() => Tensor.from(dev, [1, 2, 3], [2, 2])).toThrow(/3 values for shape \[2,2\]/);
    b.dispose();
  });
});

describe('ownership', () => {
  test('storage is freed when the last view is disposed, and only then', () => {
    const before = dev.memory().liveBuffers;
    const t = Tensor.from(dev, iota(12), [3, 4]);
    const v1 = t.transpose(0, 1);
    const v2 = v1.slice(0, 1, 3);
    t.dispose();
    v1.dispose();
    expect(dev.memory().liveBuffers).toBe(before + 1);
    v2.dispose();
    expect(dev.memory().liveBuffers).toBe(before);
    expect(() => v2.contiguous()).toThrow(/disposed/);
  });

  test('ops free their temporaries', () => {
    const before = dev.memory().liveBuffers;
    const a = Tensor.from(dev, iota(12), [3, 4]);
    const at = a.transpose(0, 1);
    const out = F.softmax(at, 0); // moves the axis last and back: two layout copies inside
    [out, at, a].forEach((t) => t.dispose());
    expect(dev.memory().liveBuffers).toBe(before);
  });
});

describe('dtype encodings', () => {
  test('bf16 rounds to nearest even like torch', () => {
    // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa.
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80);
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(f32ToBf16Bits(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(f32ToBf16Bits(Infinity)).toBe(0x7f80);
    expect(f32ToBf16Bits(-Infinity)).toBe(0xff80);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN)))).toBe(true);
    expect(f32ToBf16Bits(3.4e38)).toBe(0x7f80); // rounds up past the largest finite bf16
    expect(bf16BitsToF32(f32ToBf16Bits(-2.5))).toBe(-2.5);
  });

  test('f16 rounds to nearest even with subnormals and overflow', () => {
    expect(f32ToF16Bits(1)).toBe(0x3c00);
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00);
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001);
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // tie to even (zero)
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(0x0002);
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00);
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    for (const x of [0.1, -3.75, 7e-5, 12345.678]) expect(Math.abs(f16BitsToF32(f32ToF16Bits(x)) - x)).toBeLessThanOrEqual(Math.abs(x) * 2 ** -11);
  });

  test('casts through the device round like the host encoders', async () => {
    const values = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -0.1, 3.14159, 1e-40, 65519];
    const t = Tensor.from(dev, values, [values.length]);
    const b = t.to('bf16');
    expect(Array.from(await b.toHost())).toEqual(values.map((v) => f32ToBf16Bits(Math.fround(v))));
    const h = t.to('f16');
    expect(Array.from(await h.toHost())).toEqual(values.map((v) => f32ToF16Bits(Math.fround(v))));
    [t, b, h].forEach((x) => x.dispose());
  });
});
