// glibc 2.41's double-precision log, log1p and sincos on x86-64, bit for bit. torch's double
// Box-Muller paths call them (std::log, ::log1p, and GCC merges sin(t) and cos(t) into sincos), and
// V8's Math.log / Math.sin / Math.cos (fdlibm) differ from them in the last bit for a few percent
// of inputs, which float64 draws would show.
//
// x86-64 glibc picks its "-fma" builds of these functions (compiled with -mfma -mavx2) on FMA
// machines, so GCC has contracted each multiply whose every use is an add or subtract in the same
// basic block into a fused multiply-add; fma() marks those places (where the product is exact,
// e.g. k*Ln2hi, fused and plain agree; log1p's one exception is noted there). Checked bit for bit
// against glibc 2.41's sources built that way (4e6 random inputs of each function over the ranges
// torch feeds them, plus edge values), those builds against the system libm (glibc 2.36, same
// sources) on 2e7 inputs, and against the golden draws.
import { LOG_TAB, SINCOS_TAB } from './glibc_tables.ts';

const f64 = new Float64Array(1);
const u32 = new Uint32Array(f64.buffer); // little-endian: u32[0] low word, u32[1] high word

const highWord = (x: number): number => {
  f64[0] = x;
  return u32[1]! | 0;
};

const SPLIT = 134217729; // 2^27 + 1, Veltkamp's splitter

/**
 * fma(a, b, c) with one rounding (Boldo & Melquiond, "Emulation of FMA and correctly rounded sums:
 * proved algorithms using rounding to odd", 2008): a*b = ph + pl exactly (Dekker), c + ph = sh + sl
 * exactly (TwoSum), then RN(sh + RO(sl + pl)). Valid without overflow or underflow, which holds
 * for every operand these functions see.
 */
export function fma(a: number, b: number, c: number): number {
  const ph = a * b;
  let t = SPLIT * a;
  const ah = t - (t - a);
  const al = a - ah;
  t = SPLIT * b;
  const bh = t - (t - b);
  const bl = b - bh;
  const pl = ah * bh - ph + ah * bl + al * bh + al * bl;
  const sh = c + ph;
  const bv = sh - c;
  const sl = c - (sh - bv) + (ph - bv);
  return sh + addRoundToOdd(sl, pl);
}

/** x + y rounded to odd: the exact sum if representable, else whichever neighbour has an odd
 * last mantissa bit. */
function addRoundToOdd(x: number, y: number): number {
  const s = x + y;
  const bv = s - x;
  const err = x - (s - bv) + (y - bv);
  f64[0] = s;
  if (err === 0 || u32[0]! & 1) return s;
  // Step one ulp towards the exact sum (s != 0 here: an inexact sum never rounds to zero).
  if (err > 0 === s > 0) {
    u32[0] = u32[0]! + 1;
    if (u32[0] === 0) u32[1] = u32[1]! + 1;
  } else {
    if (u32[0] === 0) u32[1] = u32[1]! - 1;
    u32[0] = u32[0]! - 1;
  }
  return f64[0]!;
}

// ---- log: sysdeps/ieee754/dbl-64/e_log.c (__FP_FAST_FMA variant), data from e_log_data.c.

const LN2HI = 0.6931471805598903;
const LN2LO = 5.497923018708371e-14;
const A0 = -0.5000000000000001;
const A1 = 0.33333333331825593;
const A2 = -0.2499999999622955;
const A3 = 0.20000304511814496;
const A4 = -0.16667054827627667;
const B0 = -0.5;
const B1 = 0.3333333333333352;
const B2 = -0.24999999999998432;
const B3 = 0.19999999999320328;
const B4 = -0.16666666669929706;
const B5 = 0.14285715076560868;
const B6 = -0.12499997863982555;
const B7 = 0.11110712032936046;
const B8 = -0.10000486757818193;
const B9 = 0.09181994006195467;
const B10 = -0.08328363062289341;
const OFF_HI = 0x3fe60000; // high word of OFF = 0x3fe6000000000000 (its low word is 0)

/** glibc log for positive normal finite x (torch feeds it 1 - u, u uniform in [0, 1)). */
export function log(x: number): number {
  if (x >= 1 - 2 ** -4 && x < 1 + 0x109 * 2 ** -12) {
    // Close to 1: log1p(r) by a degree-12 polynomial plus a split r*r/2 term.
    if (x === 1) return 0;
    const r = x - 1;
    const r2 = r * r;
    const r3 = r * r2;
    const q3 = fma(r3, B10, fma(r2, B9, fma(r, B8, B7)));
    const q2 = fma(r3, q3, fma(r2, B6, fma(r, B5, B4)));
    const q1 = fma(r3, q2, fma(r2, B3, fma(r, B2, B1)));
    const w = r * 2 ** 27;
    const rhi = r + w - w;
    const rlo = r - rhi;
    const w2 = rhi * rhi * B0;
    const hi = r + w2;
    let lo = r - hi + w2;
    lo = fma(B0 * rlo, rhi + r, lo);
    return fma(r3, q1, lo) + hi;
  }
  // x = 2^k z with z in [0x1.6p-1, 0x1.6p0); i picks the subinterval whose centre c has 1/c and
  // log(c) in the table: log(x) = k ln2 + log(c) + log1p(z/c - 1).
  f64[0] = x;
  const lo32 = u32[0]!;
  const hi32 = u32[1]!;
  const tmp = (hi32 - OFF_HI) | 0;
  const i = (tmp >>> 13) & 127;
  const k = tmp >> 20;
  u32[0] = lo32;
  u32[1] = hi32 - (tmp & 0xfff00000);
  const z = f64[0]!;
  const invc = LOG_TAB[2 * i]!;
  const logc = LOG_TAB[2 * i + 1]!;
  const r = fma(z, invc, -1);
  const w = fma(k, LN2HI, logc);
  const hi = w + r;
  const lo = fma(k, LN2LO, w - hi + r);
  const r2 = r * r;
  return fma(r * r2, fma(r2, fma(r, A4, A3), fma(r, A2, A1)), fma(r2, A0, lo)) + hi;
}

// ---- log1p: sysdeps/ieee754/dbl-64/s_log1p.c (fdlibm's algorithm, built with -mfma).

const LN2_HI = 0.6931471803691238;
const LN2_LO = 1.9082149292705877e-10;
const LP1 = 0.6666666666666735;
const LP2 = 0.3999999999940942;
const LP3 = 0.2857142874366239;
const LP4 = 0.22222198432149784;
const LP5 = 0.1818357216161805;
const LP6 = 0.15313837699209373;
const LP7 = 0.14798198605116586;

/** Replaces the high word of x. */
function withHighWord(x: number, hi: number): number {
  f64[0] = x;
  u32[1] = hi;
  return f64[0]!;
}

/** glibc log1p for finite -1 <= x < 2^53 (torch feeds it -u, u uniform in [0, 1)). */
export function log1p(x: number): number {
  const hx = highWord(x);
  const ax = hx & 0x7fffffff;
  let k = 1;
  let f = 0;
  let c = 0;
  let hu = 0;
  if (hx < 0x3fda827a) {
    if (ax >= 0x3ff00000) return x === -1 ? -Infinity : NaN; // x <= -1
    if (ax < 0x3e200000) return ax < 0x3c900000 ? x : fma(-(x * x), 0.5, x); // |x| < 2^-29
    if (hx > 0 || hx <= (0xbfd2bec3 | 0)) {
      k = 0; // -0.2929 < x < 0.41422
      f = x;
      hu = 1;
    }
  }
  if (k !== 0) {
    const u0 = 1 + x;
    hu = highWord(u0);
    k = (hu >> 20) - 1023;
    c = (k > 0 ? 1 - (u0 - x) : x - (u0 - 1)) / u0; // the rounding error of 1 + x, relative
    hu &= 0x000fffff;
    let u: number;
    if (hu < 0x6a09e) {
      u = withHighWord(u0, hu | 0x3ff00000); // u in [1, sqrt2)
    } else {
      k += 1;
      u = withHighWord(u0, hu | 0x3fe00000); // u/2 in [sqrt2/2, 1)
      hu = (0x00100000 - hu) >> 2;
    }
    f = u - 1;
  }
  const hfsq = 0.5 * f * f;
  if (hu === 0) {
    // |f| < 2^-20
    if (f === 0) return k === 0 ? 0 : fma(k, LN2_HI, fma(k, LN2_LO, c));
    const R = hfsq * fma(-0.6666666666666666, f, 1);
    return k === 0 ? f - R : fma(k, LN2_HI, -(R - fma(k, LN2_LO, c) - f));
  }
  const s = f / (2 + f);
  const z = s * s;
  const z2 = z * z;
  const z4 = z2 * z2;
  const z6 = z4 * z2;
  const R = fma(z6, fma(z, LP7, LP6), fma(z4, fma(z, LP5, LP4), fma(z, LP1, z2 * fma(z, LP3, LP2))));
  // GCC computes s * (hfsq + R) once before the k test, so that product is not fused.
  const sr = s * (hfsq + R);
  if (k === 0) return f - (hfsq - sr);
  return fma(k, LN2_HI, -(hfsq - (sr + fma(k, LN2_LO, c)) - f));
}

// ---- sincos: sysdeps/ieee754/dbl-64/s_sincos.c with do_sin / do_cos / reduce_sincos of s_sin.c
// (IBM Accurate Mathematical Library), constants from usncs.h.

const S1 = -0.16666666666666666;
const S2 = 0.008333333333332329;
const S3 = -0.00019841269834414642;
const S4 = 2.755729806860771e-6;
const S5 = -2.5022014848318398e-8;
const SN3 = -0.16666666666666488;
const SN5 = 0.008333332142857223;
const CS2 = 0.5;
const CS4 = -0.04166666666666644;
const CS6 = 0.001388888740079376;
const BIG = 52776558133248; // 0x1.8p45: BIG + |x| rounds |x| to a multiple of 1/128
const HP0 = 1.5707963267948966;
const HP1 = 6.123233995736766e-17;
const MP1 = 1.5707963407039642;
const MP2 = -1.3909067564377153e-8;
const PP3 = -4.97899623147991e-17;
const PP4 = -1.9034889620193266e-25;
const HPINV = 0.6366197723675814;
const TOINT = 6755399441055744; // 0x1.8p52

/** TAYLOR_SIN: sin(x + dx) for |x| < 0.126. */
function taylorSin(x: number, dx: number): number {
  const xx = x * x;
  const p = fma(fma(fma(fma(S5, xx, S4), xx, S3), xx, S2), xx, S1);
  return x + fma(fma(p, x, -(0.5 * dx)), xx, dx);
}

/** do_sin: sin(x + dx) from the table entry nearest |x| and short Taylor series around it. */
function doSin(x: number, dx: number): number {
  if (Math.abs(x) < 0.126) return taylorSin(x, dx);
  const xold = x;
  if (x <= 0) dx = -dx;
  const ax = Math.abs(x);
  const rounded = BIG + ax - BIG;
  const e = 4 * rounded * 128;
  const sn = SINCOS_TAB[e]!;
  const ssn = SINCOS_TAB[e + 1]!;
  const cs = SINCOS_TAB[e + 2]!;
  const ccs = SINCOS_TAB[e + 3]!;
  const y = ax - rounded;
  const yy = y * y;
  const s = y + fma(y * yy, fma(yy, SN5, SN3), dx);
  const c = fma(y, dx, yy * fma(yy, fma(yy, CS6, CS4), CS2));
  const cor = fma(cs, s, fma(-sn, c, fma(s, ccs, ssn)));
  const r = sn + cor;
  return xold < 0 || Object.is(xold, -0) ? -Math.abs(r) : Math.abs(r); // copysign(r, xold)
}

/** do_cos: cos(x + dx), same table scheme. */
function doCos(x: number, dx: number): number {
  if (x < 0) dx = -dx;
  const ax = Math.abs(x);
  const rounded = BIG + ax - BIG;
  const e = 4 * rounded * 128;
  const sn = SINCOS_TAB[e]!;
  const ssn = SINCOS_TAB[e + 1]!;
  const cs = SINCOS_TAB[e + 2]!;
  const ccs = SINCOS_TAB[e + 3]!;
  const y = ax - rounded + dx;
  const yy = y * y;
  const s = fma(y * yy, fma(yy, SN5, SN3), y);
  const c = yy * fma(yy, fma(yy, CS6, CS4), CS2);
  const cor = fma(-sn, s, fma(-cs, c, fma(-s, ssn, ccs)));
  return cs + cor;
}

/** sin and cos of the last sincos() call. */
export let sinOut = 0;
export let cosOut = 0;

/** glibc sincos for finite |x| < 105414350 (torch feeds it 2 pi u, u uniform in [0, 1));
 * the results land in sinOut / cosOut. */
export function sincos(x: number): void {
  const k = highWord(x) & 0x7fffffff;
  if (k < 0x400368fd) {
    if (k < 0x3e400000) {
      // |x| < 2^-27
      sinOut = x;
      cosOut = 1;
    } else if (k < 0x3feb6000) {
      // |x| < 0.855469
      sinOut = doSin(x, 0);
      cosOut = doCos(x, 0);
    } else {
      // |x| < 2.426265: around pi/2
      const y = HP0 - Math.abs(x);
      const a = y + HP1;
      const da = y - a + HP1;
      const c = doCos(a, da);
      sinOut = x < 0 ? -Math.abs(c) : Math.abs(c);
      cosOut = doSin(a, da);
    }
    return;
  }
  if (k >= 0x419921fb || !Number.isFinite(x)) throw new RangeError(`sincos: |x| >= 105414350 is not supported, got ${x}`);
  // reduce_sincos: x = n pi/2 + (a + da), pi/2 split in four parts.
  const t = fma(x, HPINV, TOINT);
  const xn = t - TOINT;
  f64[0] = t;
  let n = u32[0]! & 3;
  const y = fma(-xn, MP2, fma(-xn, MP1, x));
  const t2 = fma(-xn, PP3, y);
  let db = fma(-xn, PP3, y - t2);
  let a = fma(-xn, PP4, t2);
  db += fma(-xn, PP4, t2 - a);
  n &= 3;
  if (n === 1 || n === 2) {
    a = -a;
    db = -db;
  }
  const s = doSin(a, db);
  const c = n & 2 ? -doCos(a, db) : doCos(a, db);
  sinOut = n & 1 ? c : s;
  cosOut = n & 1 ? s : c;
}
