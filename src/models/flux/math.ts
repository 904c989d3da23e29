// FLUX attention and the host-side tables it needs: the 3-axis RoPE cos/sin tables and the sinusoidal
// timestep projection, both computed as diffusers v0.32.0 computes them (embeddings.py
// get_1d_rotary_pos_embed / FluxPosEmbed and get_timestep_embedding).
//
// RoPE precision. diffusers builds the frequencies in float64 (FluxPosEmbed passes
// freqs_dtype=float64 except on MPS) and casts cos/sin to float32. Devices without float64 (Ascend,
// WebGPU) cannot do that, so the default here is the float32 recipe torch runs on MPS: every step
// rounded to float32 (Math.fround) as a float32 tensor op would round it. 'f64' reproduces the
// reference tables; the golden test measures the difference between the two.
import { type ComputeDType, roundBf16 } from '../../autograd/autocast.ts';
import * as F from '../../autograd/functional.ts';
import type { Device } from '../../device/device.ts';
import { Tensor } from '../../tensor/tensor.ts';

const f32 = Math.fround;

export type RopePrecision = 'f32' | 'f64';

/** cos/sin tables [L, headDim] for the rope op: each frequency repeated twice (interleaved pairs). */
export interface RopeTables {
  cos: Float32Array;
  sin: Float32Array;
  /** Positions (rows). */
  length: number;
  /** Columns: sum of axesDim. */
  dim: number;
}

/**
 * FluxPosEmbed(theta, axesDim)(ids): ids are [L, axes] rows (txt ids then image ids). For axis i of
 * width d: freqs_j = 1 / theta^(2j/d) (j < d/2), angle = pos * freqs_j, and columns 2j, 2j+1 of the
 * axis' slice hold cos/sin(angle); the axes' slices are concatenated in order.
 */
export function ropeTables(ids: ArrayLike<number>, axesDim: readonly number[], theta: number, precision: RopePrecision = 'f32'): RopeTables {
  const axes = axesDim.length;
  if (ids.length % axes !== 0) throw new Error(`ropeTables: ${ids.length} id values are not rows of ${axes} axes`);
  const length = ids.length / axes;
  const dim = axesDim.reduce((a, b) => a + b, 0);
  const cos = new Float32Array(length * dim), sin = new Float32Array(length * dim);
  let col0 = 0;
  for (let a = 0; a < axes; a++) {
    const d = axesDim[a]!;
    const freqs = ropeFrequencies(d, theta, precision);
    for (let l = 0; l < length; l++) {
      // pos = ids.float(): positions are float32 in both recipes.
      const pos = f32(ids[l * axes + a]!);
      for (let j = 0; j < d / 2; j++) {
        // torch.outer(pos, freqs): float64 when freqs are float64, else a float32 product.
        const angle = precision === 'f64' ? pos * freqs[j]! : f32(pos * freqs[j]!);
        const c = Math.cos(angle), s = Math.sin(angle);
        const at = l * dim + col0 + 2 * j;
        cos[at] = cos[at + 1] = c; // Float32Array stores round to float32: the final `.float()`
        sin[at] = sin[at + 1] = s;
      }
    }
    col0 += d;
  }
  return { cos, sin, length, dim };
}

/** freqs = 1.0 / (theta ** (arange(0, d, 2)[: d // 2] / d)), in float64 or step-by-step float32. */
function ropeFrequencies(d: number, theta: number, precision: RopePrecision): number[] {
  const freqs: number[] = [];
  for (let j = 0; j < d / 2; j++) {
    if (precision === 'f64') freqs.push(1.0 / theta ** ((2 * j) / d));
    else freqs.push(f32(1 / f32(f32(theta) ** f32((2 * j) / d))));
  }
  return freqs;
}

/**
 * diffusers get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0), in float32
 * step by step as torch computes it: exponent_i = -ln(10000) * i / half (float32), freq = exp(exponent),
 * arg = t * freq, result [cos(arg) | sin(arg)]. `values` are the timesteps already scaled (t * 1000).
 * Returns [values.length, dim] row-major.
 *
 * The frequencies use torch's CPU float32 exp (torchExpf below), not a correctly rounded one: it is
 * 1 ulp off on 15 of FLUX's 128 frequencies, and at arguments t*1000 ~ 10^3 that ulp moves the
 * golden temb by 5e-6 relative (2e-7 with torch's exp).
 */
export function timestepProjection(values: ArrayLike<number>, dim: number, maxPeriod = 10000): Float32Array {
  const half = Math.floor(dim / 2);
  const freqs = new Float32Array(half);
  const negLog = f32(-Math.log(maxPeriod)); // a python float scalar meets a float32 tensor: cast to float32
  for (let i = 0; i < half; i++) freqs[i] = torchExpf(f32(f32(negLog * i) / half)); // (half - downscale_freq_shift)
  const out = new Float32Array(values.length * dim); // odd dim: the last column stays zero (zero pad)
  for (let b = 0; b < values.length; b++) {
    const t = f32(values[b]!);
    for (let i = 0; i < half; i++) {
      const arg = f32(t * freqs[i]!);
      out[b * dim + i] = Math.cos(arg); // flip_sin_to_cos: cos first
      out[b * dim + half + i] = Math.sin(arg);
    }
  }
  return out;
}

/** fma on float32 operands rounded to float32 (the product of two floats is exact in a double). */
const fmaf = (a: number, b: number, c: number) => f32(a * b + c);

/** Round half to even, as vrint / _mm256_cvtps_epi32 do. */
function rint(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * float32 exp as torch's CPU kernel computes it (Vectorized<float>::exp = Sleef_expf8_u10, SLEEF's
 * xexpf with FMA): Cody-Waite reduction by ln 2 and a degree-6 polynomial, every step in float32.
 */
export function torchExpf(d: number): number {
  d = f32(d);
  if (d > 88.72283935546875) return Infinity;
  if (d < -104) return 0;
  const q = rint(f32(d * f32(1.442695040888963407359924681001892137426645954152985934135449406931)));
  let s = fmaf(q, f32(-0.693145751953125), d);
  s = fmaf(q, f32(-1.428606765330187045e-6), s);
  let u = f32(0.000198527617612853646278381);
  u = fmaf(u, s, f32(0.00139304355252534151077271));
  u = fmaf(u, s, f32(0.00833336077630519866943359));
  u = fmaf(u, s, f32(0.0416664853692054748535156));
  u = fmaf(u, s, f32(0.166666671633720397949219));
  u = fmaf(u, s, 0.5);
  u = f32(1 + fmaf(f32(s * s), u, s));
  return f32(u * 2 ** q); // vldexp2: exact scaling (no subnormal results in this range matter here)
}

/** Device tensors of the RoPE tables. */
export function ropeTensors(dev: Device, t: RopeTables): { cos: Tensor; sin: Tensor } {
  return { cos: Tensor.from(dev, t.cos, [t.length, t.dim]), sin: Tensor.from(dev, t.sin, [t.length, t.dim]) };
}

/**
 * Joint attention with RoPE (BFL math.attention): q, k, v [B, H, L, Dh], pe = cos/sin [L, Dh];
 * returns [B, L, H*Dh]. Under bf16 autocast, sdpa sees q, k, v rounded to bf16 and returns bf16.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, pe: { cos: Tensor; sin: Tensor }, compute: ComputeDType = 'f32'): Tensor {
  const [b, h, l, dh] = q.shape as [number, number, number, number];
  const qr = F.rope(q, pe.cos, pe.sin);
  const kr = F.rope(k, pe.cos, pe.sin);
  let o: Tensor;
  if (compute === 'bf16') {
    const [q16, k16, v16] = [roundBf16(qr), roundBf16(kr), roundBf16(v)];
    const full = F.attention(q16, k16, v16);
    o = roundBf16(full);
    [q16, k16, v16, full].forEach((t) => t.dispose());
  } else o = F.attention(qr, kr, v); // scale 1/sqrt(Dh), not causal: torch sdpa defaults
  qr.dispose();
  kr.dispose();
  const ot = F.permute(o, [0, 2, 1, 3]); // [B, L, H, Dh]
  const out = F.reshape(ot, [b, l, h * dh]); // "B H L D -> B L (H D)"
  o.dispose();
  ot.dispose();
  return out;
}
