// The float32 Box-Muller block of torch's AVX2 CPU kernel, one lane at a time, bit for bit:
// normal_fill_16_AVX2 (aten/src/ATen/native/cpu/DistributionTemplates.h) with log256_ps and
// sincos256_ps from aten/src/ATen/native/cpu/avx_mathfun.h (Cephes polynomials in float).
//
// GCC builds the AVX2 kernels with -mfma and its default -ffp-contract=fast, and its
// _mm256_mul_ps/_mm256_add_ps are plain vector `*` and `+`, so a multiply whose uses are all adds
// or subtracts becomes a fused multiply-add (tree-ssa-math-opts; of two products added together
// the first in program order is fused). fmaf() marks those places; everything else rounds to
// float after each op. Where the contracted product is exact (z*0.5, e*Q2, j*DP1, j*DP2) fused
// and unfused agree, so those stay plain. Checked bit for bit against avx_mathfun.h built by GCC
// (-O2 and -O3, -mavx2 -mfma) on 6.4 million random pairs, and against every float32 vector-path
// draw of the golden data (where unfusing the polynomial steps, the e*Q1 term, the cosine tail or
// the sine tail breaks some draws).

const fr = Math.fround;

/** float fma(a, b, c) with one rounding. a*b is exact in double (24+24 bits), so only the
 * rounding of the double sum s to float can go wrong, and only when s is exactly halfway between
 * two floats while a*b + c is not. (A float +, -, * or sqrt done in double and then rounded to
 * float is correctly rounded, which the plain ops below rely on.) */
function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const r = fr(s);
  const d = s - r;
  // s is a float midpoint exactly when r + 2d is the neighbouring float; only then can the
  // second rounding be wrong, and the sign of the TwoSum error of p + c picks the neighbour.
  if (d === 0 || fr(r + 2 * d) !== r + 2 * d) return r;
  const bv = s - p;
  const err = p - (s - bv) + (c - bv);
  return err !== 0 && err > 0 === d > 0 ? r + 2 * d : r;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

const SQRTHF = fr(0.707106781186547524);
const LOG_P0 = fr(7.0376836292e-2);
const LOG_P1 = fr(-1.151461031e-1);
const LOG_P2 = fr(1.167699874e-1);
const LOG_P3 = fr(-1.2420140846e-1);
const LOG_P4 = fr(1.4249322787e-1);
const LOG_P5 = fr(-1.6668057665e-1);
const LOG_P6 = fr(2.0000714765e-1);
const LOG_P7 = fr(-2.4999993993e-1);
const LOG_P8 = fr(3.3333331174e-1);
const LOG_Q1 = fr(-2.1219444e-4);
const LOG_Q2 = fr(0.693359375);

/** log256_ps for one positive normal float (the block only feeds it u1 in (0, 1]). */
function log256(v: number): number {
  f32[0] = v;
  const bits = u32[0]!;
  let e = (bits >>> 23) - 0x7f + 1;
  u32[0] = (bits & 0x807fffff) | 0x3f000000; // mantissa as a value in [0.5, 1)
  let x = f32[0]!;
  if (x < SQRTHF) {
    e -= 1;
    x = fr(fr(x - 1) + x);
  } else {
    x = fr(x - 1);
  }
  const z = fr(x * x);
  let y = fmaf(LOG_P0, x, LOG_P1);
  y = fmaf(y, x, LOG_P2);
  y = fmaf(y, x, LOG_P3);
  y = fmaf(y, x, LOG_P4);
  y = fmaf(y, x, LOG_P5);
  y = fmaf(y, x, LOG_P6);
  y = fmaf(y, x, LOG_P7);
  y = fmaf(y, x, LOG_P8);
  y = fr(y * x);
  y = fmaf(y, z, fr(e * LOG_Q1));
  y = fr(y - z * 0.5);
  x = fr(x + y);
  return fr(x + e * LOG_Q2);
}

const DP1 = fr(-0.78515625);
const DP2 = fr(-2.4187564849853515625e-4);
const DP3 = fr(-3.77489497744594108e-8);
const SIN_P0 = fr(-1.9515295891e-4);
const SIN_P1 = fr(8.3321608736e-3);
const SIN_P2 = fr(-1.6666654611e-1);
const COS_P0 = fr(2.443315711809948e-5);
const COS_P1 = fr(-1.388731625493765e-3);
const COS_P2 = fr(4.166664568298827e-2);
const FOPI = fr(1.27323954473516);

let sinOut = 0;
let cosOut = 0;

/** sincos256_ps for one lane; the results land in sinOut / cosOut. */
function sincos256(v: number): void {
  const x0 = Math.abs(v);
  let j = Math.trunc(fr(x0 * FOPI)); // _mm256_cvttps_epi32
  j = (j + 1) & ~1;
  const swapSin = (j & 4) !== 0;
  const sinFromSinPoly = (j & 2) === 0;
  const negCos = (~(j - 2) & 4) !== 0;
  let x = fr(x0 + j * DP1);
  x = fr(x + j * DP2);
  x = fmaf(j, DP3, x);
  const z = fr(x * x);
  let c = fmaf(COS_P0, z, COS_P1);
  c = fmaf(c, z, COS_P2);
  c = fr(c * z);
  c = fmaf(c, z, -fr(z * 0.5));
  c = fr(c + 1);
  let s = fmaf(SIN_P0, z, SIN_P1);
  s = fmaf(s, z, SIN_P2);
  s = fr(s * z);
  s = fmaf(s, x, x);
  const sv = sinFromSinPoly ? s : c;
  const cv = sinFromSinPoly ? c : s;
  sinOut = (v < 0) !== swapSin ? -sv : sv;
  cosOut = negCos ? -cv : cv;
}

const TWO_PI = fr(2 * Math.PI); // _mm256_set1_ps(2.0f * c10::pi<double>)

/**
 * normal_fill_16_AVX2 with mean 0 and std 1 on data[o .. o+16): u1 = 1 - data[j],
 * u2 = data[j+8], radius = sqrt(-2 log u1), theta = 2 pi u2. The final
 * _mm256_fmadd_ps(n, 1, 0) is exact except that it turns -0 into +0, hence the `+ 0`.
 */
export function normalFill16Avx2(data: Float32Array, o: number): void {
  for (let j = 0; j < 8; j++) {
    const u1 = fr(1 - data[o + j]!);
    const radius = fr(Math.sqrt(fr(-2 * log256(u1))));
    sincos256(fr(TWO_PI * data[o + j + 8]!));
    data[o + j] = fr(radius * cosOut) + 0;
    data[o + j + 8] = fr(radius * sinOut) + 0;
  }
}
