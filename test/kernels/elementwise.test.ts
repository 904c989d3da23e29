// Elementwise ops (fill, copy/cast, unary, binary, where, gather): every conformance case on WebGPU
// and on the CPU backend in f32, both against the CPU float64 reference; then what the runner
// cannot reach: bit-exact bf16/f16 rounding of tricky and random floats, exhaustive decoding,
// tanh and friends at large |x|, gather's out-of-range rows, operands split over bindings (for this
// family and for reduce/softmax, which share the splitting), errors.
import { describeConformance } from './conformance.ts';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device, UnaryOp, View } from '../../src/device/device.ts';
import type { GpuContext } from '../../src/device/webgpu/context.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { gpuBinary, gpuCopy, gpuGather, gpuUnary } from '../../src/kernels/elementwise.ts';
import { cases } from '../../src/kernels/elementwise.cases.ts';
import { refBinary, refUnary, unaryFn } from '../../src/kernels/elementwise.cpu.ts';
import { type HostView } from '../../src/kernels/reference.ts';
import { gpuReduce, gpuSoftmax } from '../../src/kernels/reduce.ts';
import { refReduce, refSoftmax } from '../../src/kernels/reduce.cpu.ts';
import { DTYPE_BYTES, type DType, bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../src/tensor/dtype.ts';
import { contiguousStrides, numel } from '../../src/tensor/shape.ts';

let webgpu: WebGPUDevice;
let cpu: CpuDevice;

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
  ['cpu', cases, () => cpu],
]);

// ---- helpers ----------------------------------------------------------------------------------------

function view(dev: Device, dtype: DType, shape: readonly number[], strides = contiguousStrides(shape), offset = 0): View {
  return { buf: dev.alloc(Math.max(numel(shape) + offset, 1) * DTYPE_BYTES[dtype] + 8), dtype, shape, strides, offset };
}

function upload(dev: Device, dtype: DType, data: ArrayBufferView, shape = [data.byteLength / DTYPE_BYTES[dtype]]): View {
  const v = view(dev, dtype, shape);
  dev.write(v.buf, 0, data);
  return v;
}

async function download(dev: Device, v: View, elements = numel(v.shape) + v.offset): Promise<Uint8Array> {
  return dev.read(v.buf, 0, elements * DTYPE_BYTES[v.dtype]);
}

const u16 = (b: Uint8Array) => new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
const f32 = (b: Uint8Array) => new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);

/** Float32 bit patterns that probe round-to-nearest-even: ties, carries, subnormals, overflow, NaN. */
const TRICKY = [
  0x3f808000, 0x3f818000, 0x3f80c000, 0x3f807fff, 0x3f801000, 0x3f803000, 0x3f800fff, // ties and neighbours at 1
  0x00000001, 0x00008000, 0x00018000, 0x00017fff, 0x807fffff, 0x00800000, // f32 subnormals, smallest normal
  0x7f7fffff, 0x7f7f7fff, 0x7f7f8000, 0xff7fffff, // largest floats: bf16 overflows to inf on the tie
  0x477fe000, 0x477fefff, 0x477ff000, 0xc77ff000, // 65504 (f16 max), just below the tie, the tie (-> inf)
  0x33800000, 0x33000000, 0x33000001, 0x33400000, 0x38800000, 0x387fc000, 0x387fe000, 0x38801000, // f16 subnormal edges
  0x7f800000, 0xff800000, 0x80000000, 0, 0x7fc00000, 0x7f800001, 0xffc00000, 0xffffffff, // inf, -0, NaNs
];

// ---- rounding and decoding --------------------------------------------------------------------------

describe('webgpu casts round like torch, bit for bit', () => {
  async function castBits(bits: Uint32Array, to: 'bf16' | 'f16'): Promise<Uint16Array> {
    const src = upload(webgpu, 'f32', bits);
    const out = view(webgpu, to, src.shape);
    webgpu.copy(src, out);
    const got = u16(await download(webgpu, out));
    [src, out].forEach((v) => webgpu.free(v.buf));
    return got;
  }

  function expectLikeTorch(bits: Uint32Array, got: Uint16Array, to: 'bf16' | 'f16'): void {
    const x = new Float32Array(bits.buffer);
    for (let i = 0; i < bits.length; i++) {
      const hex = `0x${bits[i]!.toString(16)}`;
      if (Number.isNaN(x[i]!) && to === 'f16') {
        // torch keeps a NaN's sign in f16; any quiet NaN pattern is a NaN.
        expect((got[i]! & 0x7c00) === 0x7c00 && (got[i]! & 0x3ff) !== 0, `${hex} -> NaN`).toBe(true);
        expect(got[i]! >>> 15, `${hex} keeps its sign`).toBe(bits[i]! >>> 31);
      } else {
        const want = to === 'bf16' ? f32ToBf16Bits(x[i]!) : f32ToF16Bits(x[i]!);
        if (got[i] !== want) expect(`${hex} -> 0x${got[i]!.toString(16)}`).toBe(`${hex} -> 0x${want.toString(16)}`);
      }
    }
  }

  test('ties, subnormals, infinities and NaN', async () => {
    const bits = new Uint32Array(TRICKY);
    const bf = await castBits(bits, 'bf16');
    const h = await castBits(bits, 'f16');
    expectLikeTorch(bits, bf, 'bf16');
    expectLikeTorch(bits, h, 'f16');
    // A few anchors that do not depend on dtype.ts: ties to even, overflow on a tie, subnormals.
    const at = (b: number) => TRICKY.indexOf(b);
    expect([bf[at(0x3f808000)], bf[at(0x3f818000)], bf[at(0x7f7fffff)], bf[at(0x00018000)], bf[at(0x7f800001)]]).toEqual([0x3f80, 0x3f82, 0x7f80, 0x0002, 0x7fc0]);
    expect([h[at(0x477ff000)], h[at(0x477fefff)], h[at(0x33000000)], h[at(0x33000001)], h[at(0x3f801000)], h[at(0x3f803000)]]).toEqual([0x7c00, 0x7bff, 0, 1, 0x3c00, 0x3c02]);
  });

  test('a million random float32 bit patterns', async () => {
    const bits = new Uint32Array(1 << 20);
    let s = 0x9e3779b9;
    for (let i = 0; i < bits.length; i++) {
      s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
      bits[i] = s;
    }
    for (const to of ['bf16', 'f16'] as const) expectLikeTorch(bits, await castBits(bits, to), to);
  });

  test('every bf16 and f16 value decodes exactly', async () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    for (const [from, decode] of [['bf16', bf16BitsToF32], ['f16', f16BitsToF32]] as const) {
      const src = upload(webgpu, from, all);
      const out = view(webgpu, 'f32', src.shape);
      webgpu.copy(src, out);
      const got = f32(await download(webgpu, out));
      const bad = [...all].filter((h) => !Object.is(got[h], decode(h)) && !(Number.isNaN(got[h]!) && Number.isNaN(decode(h))));
      expect(bad.map((h) => `${from} 0x${h.toString(16)}: ${got[h]} vs ${decode(h)}`)).toEqual([]);
      [src, out].forEach((v) => webgpu.free(v.buf));
    }
  });
});

// ---- activations at large |x| -------------------------------------------------------------------

test('webgpu activations stay finite and accurate for |x| up to 1e4 and near 0', async () => {
  const xs = new Float32Array([0, 1e-7, -1e-6, 1e-3, 0.3, 0.62, 0.63, -1, 5, 9, 10, 20, 44, -50, 50, 89, -100, 100, 1e4, -1e4]);
  const ops: UnaryOp[] = ['tanh', 'sigmoid', 'silu', 'gelu_erf', 'gelu_tanh', 'quick_gelu'];
  const x = upload(webgpu, 'f32', xs);
  for (const op of ops) {
    const out = view(webgpu, 'f32', x.shape);
    webgpu.unary(op, x, out);
    const got = f32(await download(webgpu, out));
    const f = unaryFn(op);
    xs.forEach((v, i) => {
      const want = Math.fround(f(v));
      // tanh keeps float32's relative precision everywhere; the others go through exp(|x|), whose
      // WGSL error grows with |x| (1e-6 relative at 50), and may flush results below 1e-30 to 0.
      const tol = op === 'tanh' ? 4e-7 * Math.abs(want) : 2e-6 * Math.abs(want) + 1e-30;
      expect(Math.abs(got[i]! - want), `${op}(${v}) = ${got[i]}, want ${want}`).toBeLessThanOrEqual(tol);
    });
    webgpu.free(out.buf);
  }
  webgpu.free(x.buf);
});

// The device's supportsOp admits only f32 for unary/binary/where today; the launchers already take
// bf16/f16 operands (decoded to f32, computed, rounded once), which this pins down.
test('webgpu unary and binary launchers on bf16 and f16 operands compute in f32 and round once', async () => {
  const n = 301;
  const xs = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.7) * 4);
  for (const [dt, enc, dec, ulp] of [['bf16', f32ToBf16Bits, bf16BitsToF32, 2 ** -8], ['f16', f32ToF16Bits, f16BitsToF32, 2 ** -11]] as const) {
    const bits = Uint16Array.from(xs, enc);
    const [x, y] = [upload(webgpu, dt, bits), upload(webgpu, dt, bits.slice().reverse())];
    const [u, b] = [view(webgpu, dt, [n]), view(webgpu, dt, [n])];
    gpuUnary(webgpu, 'gelu_erf', x, u);
    gpuBinary(webgpu, 'mul', x, y, b);
    const host = (data: Uint16Array) => ({ data, dtype: dt, shape: [n], strides: [1], offset: 0 });
    const [wantU, wantB] = [host(new Uint16Array(n)), host(new Uint16Array(n))];
    refUnary('gelu_erf', host(bits), wantU);
    refBinary('mul', host(bits), host(bits.slice().reverse()), wantB);
    for (const [got, want] of [[u16(await download(webgpu, u)), wantU.data], [u16(await download(webgpu, b)), wantB.data]] as const) {
      // Within one unit in the last place: float32 compute then one rounding, against float64 then one.
      got.forEach((g, i) => expect(Math.abs(dec(g) - dec(want[i]!)), `${dt} element ${i}`).toBeLessThanOrEqual(Math.abs(dec(want[i]!)) * 2 * ulp + 1e-7));
    }
    [x, y, u, b].forEach((v) => webgpu.free(v.buf));
  }
});

// ---- gather ---------------------------------------------------------------------------------------

test('gather out of range: NaN rows on webgpu, an error naming the index on the CPU', async () => {
  const table = new Float32Array(5 * 3).map((_, i) => i + 1);
  const index = new Int32Array([4, 7, -1, 0]);
  const t = upload(webgpu, 'f32', table, [5, 3]), ix = upload(webgpu, 'i32', index);
  const out = view(webgpu, 'f32', [4, 3]);
  webgpu.gather(t, ix, out);
  const got = [...f32(await download(webgpu, out))];
  expect(got.slice(0, 3)).toEqual([13, 14, 15]);
  expect(got.slice(3, 9).every(Number.isNaN)).toBe(true);
  expect(got.slice(9)).toEqual([1, 2, 3]);

  const ct = upload(cpu, 'f32', table, [5, 3]), ci = upload(cpu, 'i32', index);
  expect(() => cpu.gather(ct, ci, view(cpu, 'f32', [4, 3]))).toThrow(/gather \[5,3\]:f32 \[4\]:i32 -> \[4,3\]:f32: gather: index\[1\] = 7 is outside the table's 5 rows/);
});

// ---- operands over one binding ---------------------------------------------------------------------

/** The WebGPU device seen through a tiny binding limit, counting dispatches and checking every range. */
function smallBindings(dev: WebGPUDevice, maxBindingBytes: number): GpuContext & { dispatches: number } {
  const ctx = {
    gpu: dev.gpu, features: dev.features, adapterKey: dev.adapterKey, limits: { ...dev.limits, maxBindingBytes }, dispatches: 0,
    pipeline: (wgsl: string) => dev.pipeline(wgsl),
    bind: (v: View) => {
      const b = dev.bind(v);
      if (b.size > maxBindingBytes) throw new Error(`whole-buffer binding of ${b.size} bytes`);
      return b;
    },
    bindRange: (v: View, offset: number, length: number) => {
      const b = dev.bindRange(v, offset, length);
      if (b.size > maxBindingBytes) throw new Error(`binding of ${b.size} bytes over the ${maxBindingBytes}-byte limit`);
      return b;
    },
    dispatch: (...args: Parameters<GpuContext['dispatch']>) => {
      ctx.dispatches++;
      dev.dispatch(...args);
    },
  };
  return ctx;
}

describe('webgpu splits dense operands larger than one binding', () => {
  const LIMIT = 16384;
  const ramp = (n: number) => new Float32Array(n).map((_, i) => Math.sin(i) * 100);

  test('a cast into an odd offset of a bf16 buffer (chunk edges share words)', async () => {
    const ctx = smallBindings(webgpu, LIMIT);
    const n = 50001;
    const src = upload(webgpu, 'f32', ramp(n));
    const out = view(webgpu, 'bf16', [n], [1], 1);
    webgpu.write(out.buf, 0, new Uint16Array(n + 2).fill(0xabcd));
    gpuCopy(ctx, src, out);
    expect(ctx.dispatches).toBeGreaterThan(10);
    const got = u16(await download(webgpu, out, n + 2));
    const want = [0xabcd, ...[...f32(await download(webgpu, src))].map(f32ToBf16Bits), 0xabcd];
    expect([...got]).toEqual(want);
  });

  test('a product with a broadcast row that fits', async () => {
    const ctx = smallBindings(webgpu, LIMIT);
    const a = upload(webgpu, 'f32', ramp(100 * 500), [100, 500]);
    const row = upload(webgpu, 'f32', ramp(500).map((v) => v / 7));
    const out = view(webgpu, 'f32', [100, 500]);
    gpuBinary(ctx, 'mul', a, { ...row, shape: [100, 500], strides: [0, 1] }, out);
    expect(ctx.dispatches).toBeGreaterThan(10);
    const [av, rv, got] = [f32(await download(webgpu, a)), f32(await download(webgpu, row)), f32(await download(webgpu, out))];
    expect([...got].every((v, i) => v === Math.fround(av[i]! * rv[i % 500]!))).toBe(true);
  });

  test('a gather from a table sliced by rows', async () => {
    const ctx = smallBindings(webgpu, LIMIT);
    const t = upload(webgpu, 'f32', ramp(300 * 40), [300, 40]);
    const ix = upload(webgpu, 'i32', new Int32Array([299, 0, 150, 300, 101]));
    const out = view(webgpu, 'f32', [5, 40]);
    gpuGather(ctx, t, ix, out);
    expect(ctx.dispatches).toBe(3);
    const [tv, got] = [f32(await download(webgpu, t)), f32(await download(webgpu, out))];
    [299, 0, 150, -1, 101].forEach((row, r) => {
      const want = row < 0 ? new Array(40).fill(NaN) : [...tv.slice(row * 40, row * 40 + 40)];
      expect([...got.slice(r * 40, r * 40 + 40)]).toEqual(want);
    });
  });

  test('a reduction and a softmax in slices of whole rows', async () => {
    const ctx = smallBindings(webgpu, LIMIT);
    const data = ramp(64 * 1000).map((v) => v / 20);
    const x = view(webgpu, 'f32', [64, 1000], undefined, 3);
    webgpu.write(x.buf, 12, data);
    const x3 = { ...x, shape: [32, 1000, 2], strides: [2000, 2, 1] };
    const sums = view(webgpu, 'f32', [32, 2]), soft = view(webgpu, 'f32', [64, 1000]);
    gpuReduce(ctx, 'sum', x3, sums, { outer: 32, n: 1000, inner: 2 });
    gpuSoftmax(ctx, x, soft);
    expect(ctx.dispatches).toBe(32);

    const host = (shape: number[], d = new Float32Array(numel(shape))): HostView => ({ data: d, dtype: 'f32', shape, strides: contiguousStrides(shape), offset: 0 });
    const [wantSums, wantSoft] = [host([32, 2]), host([64, 1000])];
    refReduce('sum', host(x3.shape, data), wantSums, { outer: 32, n: 1000, inner: 2 });
    refSoftmax(host([64, 1000], data), wantSoft);
    const [gotSums, gotSoft] = [f32(await download(webgpu, sums)), f32(await download(webgpu, soft))];
    gotSums.forEach((v, i) => expect(Math.abs(v - wantSums.data[i]!)).toBeLessThan(1e-5 * Math.abs(wantSums.data[i]!) + 1e-4));
    gotSoft.forEach((v, i) => expect(Math.abs(v - wantSoft.data[i]!)).toBeLessThan(1e-5 * wantSoft.data[i]! + 1e-9));
  });
});

// ---- errors -------------------------------------------------------------------------------------------

describe.each(['webgpu', 'cpu'])('%s rejects', (device) => {
  const dev = () => (device === 'webgpu' ? webgpu : cpu) as Device;
  const f = (shape: number[]) => view(dev(), 'f32', shape);

  test('operands of another shape, naming both shapes', () => {
    expect(() => dev().copy(f([2, 3]), f([3, 2]))).toThrow(/copy \[2,3\]:f32 -> \[3,2\]:f32: shapes differ: src \[2,3\] vs out \[3,2\]/);
    expect(() => dev().unary('exp', f([4]), f([5]))).toThrow(/shapes differ: x \[4\] vs out \[5\]/);
    expect(() => dev().binary('add', f([2, 3]), f([3, 2]), f([2, 3]))).toThrow(/binary \[2,3\]:f32 \[3,2\]:f32 -> \[2,3\]:f32: shapes differ: b \[3,2\] vs out \[2,3\]/);
    expect(() => dev().where(f([2, 1]), f([2, 2]), f([2, 2]), f([2, 2]))).toThrow(/shapes differ: cond \[2,1\] vs out \[2,2\]/);
    expect(() => dev().gather(f([5, 3]), view(dev(), 'i32', [4]), f([4, 2]))).toThrow(/gather wants table \[V,D\], index \[N\], out \[N,D\]; got table \[5,3\], index \[4\], out \[4,2\]/);
  });

  test('a scale or clamp without its parameters', () => {
    expect(() => dev().unary('scale', f([4]), f([4]))).toThrow(/alpha/);
    expect(() => dev().unary('clamp', f([4]), f([4]), { lo: 0 })).toThrow(/hi/);
  });
});

test('webgpu refuses an output in an input buffer (one kernel cannot read and write it)', () => {
  const x = view(webgpu, 'f32', [4]);
  expect(() => webgpu.unary('neg', x, { ...x, offset: 4 })).toThrow(/unary \[4\]:f32 -> \[4\]:f32: an input shares the output's buffer/);
});
