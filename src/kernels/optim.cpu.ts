// Reference optimizer step (the oracle of the WebGPU kernel in optim.ts): torch.optim.AdamW's
// single-tensor path (torch 2.6, foreach=False, the CPU default) in its exact operation order.
//
// f32 views reproduce torch's float32 bits: every tensor op rounds to float32, scalars become
// float32 where they meet a tensor, and the two ops torch's CPU kernels fuse are fused here too
// (exp_avg.lerp_ is an fmadd, addcmul_'s `self + value * t1 * t2` is contracted to one; checked bit
// for bit against the grpo_math golden vectors). f64 views compute the same formula in float64.
import type { AdamWParams } from '../device/device.ts';
import { sameShape } from '../tensor/shape.ts';
import { type HostView, get, set, size } from './reference.ts';

/** AdamW's shape rules (shared with the WebGPU launcher): param, grad, m and v of one shape. */
export function checkAdamWShapes(param: { shape: readonly number[] }, operands: Record<string, { shape: readonly number[] }>): void {
  for (const [name, v] of Object.entries(operands)) {
    if (!sameShape(v.shape, param.shape)) throw new Error(`adamw wants param, grad, m and v of one shape; ${name} is [${v.shape}], param [${param.shape}]`);
  }
}

/**
 * a * b + c rounded once to float32, for float32 a, b, c (a fused multiply-add). The product is
 * exact in float64; TwoSum gives the sum's rounding error e, which decides the only case where
 * rounding the float64 sum again would differ: a sum exactly halfway between two float32 values.
 */
export function fmaF32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const t = s - p;
  const e = (p - (s - t)) + (c - t);
  const r = Math.fround(s);
  if (e === 0 || r === s) return r;
  const other = 2 * s - r; // the other float32 neighbour, when s is halfway between two
  if (Math.fround(other) !== other) return r;
  return e > 0 ? Math.max(r, other) : Math.min(r, other);
}

/**
 * One AdamW step in place (see Device.adamw):
 *   param *= 1 - lr*wd; m = lerp(m, g, 1 - beta1); v = v*beta2 + (1 - beta2)*g*g;
 *   param += -stepSize * m / (sqrt(v) / bc2Sqrt + eps).
 * param, grad, m, v: same shape
 */
export function refAdamW(param: HostView, grad: HostView, m: HostView, v: HostView, p: AdamWParams): void {
  checkAdamWShapes(param, { grad, m, v });
  const f64 = [param, grad, m, v].every((x) => x.dtype === 'f64');
  const r = f64 ? (x: number) => x : Math.fround;
  const fma = f64 ? (a: number, b: number, c: number) => a * b + c : fmaF32;
  // Python floats computed on the host, rounded where torch turns them into float32 scalars.
  const decay = r(1 - p.lr * p.weightDecay);
  const w = r(1 - p.beta1);
  const beta2 = r(p.beta2), oneMinusBeta2 = r(1 - p.beta2);
  const bc2Sqrt = r(p.bc2Sqrt), eps = r(p.eps), negStep = r(-p.stepSize);
  for (let i = 0; i < size(param); i++) {
    const g = r(get(grad, i)), mi = r(get(m, i));
    const x = r(r(get(param, i)) * decay);
    const diff = r(g - mi);
    // torch's lerp: start + w*(end - start) for |w| < 0.5, else end - (1 - w)*(end - start).
    const m1 = w < 0.5 ? fma(w, diff, mi) : fma(r(w - 1), diff, g);
    const v1 = fma(r(oneMinusBeta2 * g), g, r(r(get(v, i)) * beta2));
    const denom = r(r(r(Math.sqrt(v1)) / bc2Sqrt) + eps);
    set(param, i, r(x + r(r(negStep * m1) / denom)));
    set(m, i, m1);
    set(v, i, v1);
  }
}
