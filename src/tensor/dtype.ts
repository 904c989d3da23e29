// Element types of device tensors and their host encodings.
// bf16 and f16 have no JS array type: they live as raw 16-bit words (Uint16Array) on the host,
// and bf16 as two words per u32 in WGSL (WebGPU has no bf16 type). f64 exists on the CPU
// backend only: it is the reference precision of the conformance runner and of finite differences.

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u32' | 'f64';

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u32: 4, f64: 8 };

export type HostArray = Float32Array | Float64Array | Uint16Array | Int32Array | Uint32Array;

export function isFloat(dtype: DType): boolean {
  return dtype === 'f32' || dtype === 'f16' || dtype === 'bf16' || dtype === 'f64';
}

/** The host array type that holds `dtype` elements (16-bit floats as raw words). */
export function hostArrayFor(dtype: DType, length: number): HostArray {
  switch (dtype) {
    case 'f32': return new Float32Array(length);
    case 'f64': return new Float64Array(length);
    case 'f16': case 'bf16': return new Uint16Array(length);
    case 'i32': return new Int32Array(length);
    case 'u32': return new Uint32Array(length);
  }
}

/** Views raw bytes as the host array of `dtype` (copies when the offset is misaligned). */
export function hostArrayFromBytes(dtype: DType, bytes: Uint8Array): HostArray {
  const size = DTYPE_BYTES[dtype];
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const n = aligned.byteLength / size;
  switch (dtype) {
    case 'f32': return new Float32Array(aligned.buffer, aligned.byteOffset, n);
    case 'f64': return new Float64Array(aligned.buffer, aligned.byteOffset, n);
    case 'f16': case 'bf16': return new Uint16Array(aligned.buffer, aligned.byteOffset, n);
    case 'i32': return new Int32Array(aligned.buffer, aligned.byteOffset, n);
    case 'u32': return new Uint32Array(aligned.buffer, aligned.byteOffset, n);
  }
}

/**
 * The dtype a matmul of these operands writes: f64 if any is f64, else f32. 16-bit operands
 * (bf16 weights, autocast copies) accumulate in f32 and stay there; rounding the result down is
 * the caller's choice, as torch's autocast rounds a bf16 matmul's output.
 */
export function accumulatorDtype(...dtypes: DType[]): DType {
  return dtypes.includes('f64') ? 'f64' : 'f32';
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> bfloat16 bits, round to nearest even, NaN kept quiet (as torch's c10::BFloat16). */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7fffffff) > 0x7f800000) return 0x7fc0;
  const lsb = (bits >>> 16) & 1;
  return ((bits + 0x7fff + lsb) >>> 16) & 0xffff;
}

export function bf16BitsToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

/** float32 -> IEEE half bits, round to nearest even, with subnormals, infinities and NaN. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let m = mant >>> shift;
    if (rest > half || (rest === half && (m & 1))) m += 1;
    return sign | m;
  }
  let m = mant >>> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (m & 1))) {
    m += 1;
    if (m === 0x400) { m = 0; e += 1; if (e >= 0x1f) return sign | 0x7c00; }
  }
  return sign | (e << 10) | m;
}

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Reads element i of a host array as a JS number (16-bit floats decoded). */
export function readElement(dtype: DType, data: HostArray, i: number): number {
  const v = data[i]!;
  if (dtype === 'bf16') return bf16BitsToF32(v);
  if (dtype === 'f16') return f16BitsToF32(v);
  return v;
}

/** Writes a JS number as element i, rounding to the dtype as torch's casts do. */
export function writeElement(dtype: DType, data: HostArray, i: number, v: number): void {
  if (dtype === 'bf16') data[i] = f32ToBf16Bits(Math.fround(v));
  else if (dtype === 'f16') data[i] = f32ToF16Bits(Math.fround(v));
  else if (dtype === 'i32' || dtype === 'u32') data[i] = Math.trunc(v);
  else data[i] = v;
}

/** Converts a whole host array to float64 numbers, for comparisons and references. */
export function toFloat64(dtype: DType, data: HostArray): Float64Array {
  const out = new Float64Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = readElement(dtype, data, i);
  return out;
}

/** Encodes float numbers into a host array of `dtype`. */
export function fromNumbers(dtype: DType, values: ArrayLike<number>): HostArray {
  const out = hostArrayFor(dtype, values.length);
  for (let i = 0; i < values.length; i++) writeElement(dtype, out, i, values[i]!);
  return out;
}
