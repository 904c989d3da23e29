// torch.randn / rand / randint / randperm on the CPU generator, reproducing torch 2.6's kernels
// bit for bit as x86-64 machines with AVX2 run them (AVX512 machines too: normal_stub registers no
// AVX512 kernel, so they fall back to AVX2), with x86-64 glibc's libm. Each function cites the
// torch source it follows.
//
// Not reproduced: torch at the DEFAULT CPU capability (no AVX2: ATEN_CPU_CAPABILITY=default, and
// non-x86 hosts such as aarch64) fills float32 tensors of >= 16 contiguous elements with
// normal_fill<float> (logf / cosf / sinf) instead of normal_fill_AVX2, which changes the last bits
// of about 40% of those draws (the golden case's cpu_capability_default.safetensors). The engine
// words each call consumes, and on x86-64 every other path, are the same there.
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../tensor/dtype.ts';
import { normalFill16Avx2 } from './avx2_normal.ts';
import * as glibc from './glibc_math.ts';
import type { Generator } from './generator.ts';

export type RandDType = 'f32' | 'bf16' | 'f16' | 'f64';
/** f32 -> Float32Array, f64 -> Float64Array, bf16 / f16 -> raw 16-bit words in a Uint16Array. */
export type RandArray = Float32Array | Uint16Array | Float64Array;

export interface RandnOptions {
  /**
   * false: reproduce normal_() on a non-contiguous tensor (e.g. torch.randn_like of a transposed
   * view). torch then skips the vector path and draws element by element with the scalar double
   * Box-Muller; the returned values are in the tensor's memory order. Default true.
   */
  contiguous?: boolean;
}

function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new RangeError(`invalid shape [${shape.join(', ')}]`);
    n *= d;
  }
  if (n > 2 ** 31 - 1) throw new RangeError(`too many elements: ${n}`);
  return n;
}

/** uniform_real_distribution<double>(0, 1) (TransformationHelper.h uniform_real): the low 53 bits
 * of random64() times 2^-53, assembled from the two words without BigInt. */
function uniform53(g: Generator): number {
  const hi = g.random();
  const lo = g.random();
  return ((hi & 0x1fffff) * 4294967296 + lo) * 2 ** -53;
}

/** Low `digits` bits of one word times 2^-digits: uniform_real_distribution<float|Half|BFloat16>
 * (24, 11 and 8 digits), exact in the element type. */
function uniformDigits(g: Generator, digits: number): number {
  return (g.random() & ((1 << digits) - 1)) * 2 ** -digits;
}

/**
 * at::normal_distribution<double> (core/DistributionsHelper.h): returns the cached r*sin half of
 * the previous pair if there is one (no words), otherwise draws u1, u2 (random64() each),
 * r = sqrt(-2 log1p(-u2)), theta = 2 pi u1, caches r*sin(theta) and returns r*cos(theta), with
 * glibc's log1p and sincos. transformation::normal(x, 0, 1) = x*1 + 0 turns -0 into +0.
 */
function normalDouble(g: Generator): number {
  const cached = g.nextDoubleNormal;
  if (cached !== null) {
    g.nextDoubleNormal = null;
    return cached + 0;
  }
  const u1 = uniform53(g);
  const u2 = uniform53(g);
  const r = Math.sqrt(-2 * glibc.log1p(-u2));
  glibc.sincos(2 * Math.PI * u1);
  g.nextDoubleNormal = r * glibc.sinOut;
  return r * glibc.cosOut + 0;
}

/** normal_fill_16<double> (native/cpu/DistributionTemplates.h) with glibc's log and sincos:
 * u1 = 1 - data[j], u2 = data[j+8], radius = sqrt(-2 log u1), theta = 2 pi u2. */
function normalFill16F64(data: Float64Array, o: number): void {
  for (let j = 0; j < 8; j++) {
    const radius = Math.sqrt(-2 * glibc.log(1 - data[o + j]!));
    glibc.sincos(2 * Math.PI * data[o + j + 8]!);
    data[o + j] = radius * glibc.cosOut + 0;
    data[o + j + 8] = radius * glibc.sinOut + 0;
  }
}

interface HalfTables {
  radius: Float64Array;
  cos: Float64Array;
  sin: Float64Array;
}
const halfTables = new Map<'bf16' | 'f16', HalfTables>();

/**
 * normal_fill_16<BFloat16 | Half> (native/cpu/DistributionTemplates.h), tabulated: a bf16 / f16
 * uniform is k * 2^-digits, so radius = sqrt(-2 log(1 - u)) and cos / sin(2 pi u) take only 2^8 /
 * 2^11 values. Every c10::BFloat16 / Half operation computes in float and rounds to the 16-bit type
 * (c10/util/BFloat16-inl.h, Half-inl.h), through float first as torch's conversions do; std::log /
 * cos / sin / sqrt of a BFloat16 / Half evaluate the float function and round
 * (c10/util/BFloat16-math.h). Math.* rounded to float then to 16 bits gives the same bits as
 * glibc's logf / sinf / cosf then that rounding for every positive bf16 and f16 input below 8
 * (checked exhaustively against glibc). theta = 2.0f * pi<double> * u2 is a double product
 * converted to the element type.
 */
function tablesFor(dtype: 'bf16' | 'f16'): HalfTables {
  let t = halfTables.get(dtype);
  if (t) return t;
  const digits = dtype === 'bf16' ? 8 : 11;
  const round = dtype === 'bf16' ? (x: number) => bf16BitsToF32(f32ToBf16Bits(x)) : (x: number) => f16BitsToF32(f32ToF16Bits(x));
  const size = 1 << digits;
  t = { radius: new Float64Array(size), cos: new Float64Array(size), sin: new Float64Array(size) };
  for (let k = 0; k < size; k++) {
    const u = k * 2 ** -digits;
    t.radius[k] = round(Math.sqrt(round(-2 * round(Math.log(round(1 - u))))));
    const theta = round(2 * Math.PI * u);
    t.cos[k] = round(Math.cos(theta));
    t.sin[k] = round(Math.sin(theta));
  }
  halfTables.set(dtype, t);
  return t;
}

/**
 * normal_fill / normal_fill_AVX2 (native/cpu/DistributionTemplates.h): one uniform per element,
 * then Box-Muller on each full block of 16 (u1 = 1 - data[j], u2 = data[j+8]); if numel % 16 != 0
 * the last 16 elements are redrawn with 16 fresh uniforms and transformed again (numel + 16 words,
 * twice that for float64). The 16-bit types keep the uniforms as their integers k.
 */
function normalVector(g: Generator, n: number, dtype: RandDType): RandArray {
  if (dtype === 'f32') {
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = uniformDigits(g, 24);
    for (let i = 0; i + 16 <= n; i += 16) normalFill16Avx2(data, i);
    if (n % 16 !== 0) {
      for (let i = n - 16; i < n; i++) data[i] = uniformDigits(g, 24);
      normalFill16Avx2(data, n - 16);
    }
    return data;
  }
  if (dtype === 'f64') {
    const data = new Float64Array(n);
    for (let i = 0; i < n; i++) data[i] = uniform53(g);
    for (let i = 0; i + 16 <= n; i += 16) normalFill16F64(data, i);
    if (n % 16 !== 0) {
      for (let i = n - 16; i < n; i++) data[i] = uniform53(g);
      normalFill16F64(data, n - 16);
    }
    return data;
  }
  const mask = dtype === 'bf16' ? 0xff : 0x7ff;
  const toBits = dtype === 'bf16' ? f32ToBf16Bits : f32ToF16Bits;
  const { radius, cos, sin } = tablesFor(dtype);
  const k = new Uint16Array(n);
  const out = new Uint16Array(n);
  // radius * cos is exact in double (two 16-bit significands), so toBits rounds once, via float,
  // as the BFloat16 / Half product does; `+ 0` is x*std + mean turning -0 into +0.
  const fill16 = (o: number) => {
    for (let j = 0; j < 8; j++) {
      const r = radius[k[o + j]!]!;
      out[o + j] = toBits(r * cos[k[o + j + 8]!]! + 0);
      out[o + j + 8] = toBits(r * sin[k[o + j + 8]!]! + 0);
    }
  };
  for (let i = 0; i < n; i++) k[i] = g.random() & mask;
  for (let i = 0; i + 16 <= n; i += 16) fill16(i);
  if (n % 16 !== 0) {
    for (let i = n - 16; i < n; i++) k[i] = g.random() & mask;
    fill16(n - 16);
  }
  return out;
}

/** static_cast<scalar_t>(double): double -> float -> 16-bit type, as torch's casts do. */
function encode(values: Float64Array, dtype: RandDType): RandArray {
  switch (dtype) {
    case 'f64': return values;
    case 'f32': return Float32Array.from(values);
    case 'bf16': return Uint16Array.from(values, f32ToBf16Bits);
    case 'f16': return Uint16Array.from(values, f32ToF16Bits);
  }
}

/**
 * torch.randn(shape, dtype) = empty(shape).normal_(0, 1) (native/cpu/DistributionTemplates.h
 * normal_kernel): contiguous tensors of >= 16 elements take the vector path, everything else the
 * scalar double path (cast to the dtype), which shares the generator's cached normal.
 * torch.randn_like(x) on a dense x is randn(x.shape, x.dtype).
 */
export function randn(g: Generator, shape: readonly number[], dtype: RandDType = 'f32', options: RandnOptions = {}): RandArray {
  const n = numelOf(shape);
  if (n >= 16 && options.contiguous !== false) return normalVector(g, n, dtype);
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = normalDouble(g);
  return encode(values, dtype);
}

/** torch.rand(shape, dtype) = uniform_(0, 1) (uniform_kernel): one word per element
 * (random64() for float64), no cache involved. */
export function rand(g: Generator, shape: readonly number[], dtype: RandDType = 'f32'): RandArray {
  const n = numelOf(shape);
  switch (dtype) {
    case 'f64': return Float64Array.from({ length: n }, () => uniform53(g));
    case 'f32': return Float32Array.from({ length: n }, () => uniformDigits(g, 24));
    case 'bf16': return Uint16Array.from({ length: n }, () => f32ToBf16Bits(uniformDigits(g, 8)));
    case 'f16': return Uint16Array.from({ length: n }, () => f32ToF16Bits(uniformDigits(g, 11)));
  }
}

const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;

/**
 * torch.randint(low, high, shape) (int64 result, as torch's default dtype): random_(low, high)
 * via uniform_int_from_to_distribution (core/DistributionsHelper.h): range = high - low;
 * random64() % range when range >= 2^32, else random() % range; plus low.
 */
export function randint(g: Generator, low: number | bigint, high: number | bigint, shape: readonly number[]): BigInt64Array {
  const lo = BigInt(low);
  const hi = BigInt(high);
  if (lo < INT64_MIN || hi > INT64_MAX + 1n) throw new RangeError('randint bounds must fit in int64');
  if (lo >= hi) throw new RangeError(`randint expects low < high, got low=${lo}, high=${hi}`);
  const n = numelOf(shape);
  const range = hi - lo;
  const out = new BigInt64Array(n);
  if (range >= 1n << 32n) {
    for (let i = 0; i < n; i++) out[i] = BigInt.asIntN(64, (g.random64() % range) + lo);
  } else {
    const r = Number(range);
    for (let i = 0; i < n; i++) out[i] = BigInt.asIntN(64, BigInt(g.random() % r) + lo);
  }
  return out;
}

/** (hi * 2^32 + lo) mod m for m <= 2^31, in doubles: every intermediate stays below 2^53. */
function mod64(hi: number, lo: number, m: number): number {
  let x = hi % m;
  x = (x * 65536) % m;
  x = (x * 65536) % m;
  return (x + lo) % m;
}

/** randperm_cpu's path for n >= 2^32/20 (TensorFactories.cpp): the inside-out Fisher-Yates
 * shuffle, z = random64() % (i + 1). Exported so tests can check it at small n. */
export function randpermInsideOut(g: Generator, n: number): Int32Array {
  const r = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const z = mod64(g.random(), g.random(), i + 1);
    r[i] = r[z]!;
    r[z] = i;
  }
  return r;
}

/** randperm_cpu's bound: below it torch keeps the old swap shuffle with 32-bit draws. */
const RANDPERM_SMALL = Math.floor(0xffffffff / 20);

/**
 * torch.randperm(n) (TensorFactories.cpp randperm_cpu): for n < 2^32/20, r = 0..n-1 and for
 * i in 0..n-2 swap r[i] with r[i + random() % (n - i)] (n - 1 words); larger n take
 * randpermInsideOut. Int32Array: n is limited to 2^31 - 1.
 */
export function randperm(g: Generator, n: number): Int32Array {
  if (!Number.isSafeInteger(n) || n < 0 || n > 2 ** 31 - 1) throw new RangeError(`randperm needs 0 <= n < 2^31, got ${n}`);
  if (n >= RANDPERM_SMALL) return randpermInsideOut(g, n);
  const r = new Int32Array(n);
  for (let i = 0; i < n; i++) r[i] = i;
  for (let i = 0; i < n - 1; i++) {
    const z = i + (g.random() % (n - i));
    const t = r[i]!;
    r[i] = r[z]!;
    r[z] = t;
  }
  return r;
}

/**
 * torch.empty((), dtype=torch.int64).random_(): uniform_int_distribution<int64_t>
 * (TransformationHelper.h uniform_int) = random64() % 2^63. The DataLoader draws one as its
 * base seed each time an iterator is created (_BaseDataLoaderIter.__init__).
 */
export function int64Random(g: Generator): bigint {
  const hi = g.random();
  const lo = g.random();
  return (BigInt(hi & 0x7fffffff) << 32n) | BigInt(lo);
}
