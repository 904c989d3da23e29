// Reference scaled dot-product attention and FLUX rotary embedding, forward and backward (plain
// loops in float64, rounded on store). Operands are read through their strides, so any layout works here.
import { readElement, writeElement } from '../tensor/dtype.ts';
import type { HostView } from './reference.ts';

type Shaped = { shape: readonly number[] };

const fmt = (name: string, v: Shaped) => `${name} [${v.shape}]`;

/** Checks q [B,H,Lq,Dh], k, v [B,H,Lk,Dh], out like q, lse [B,H,Lq] or null; returns [B, H, Lq, Lk, Dh]. */
export function attentionShapes(q: Shaped, k: Shaped, v: Shaped, out: Shaped, lse: Shaped | null): [number, number, number, number, number] {
  if (q.shape.length !== 4 || k.shape.length !== 4 || v.shape.length !== 4) {
    throw new Error(`${fmt('q', q)}, ${fmt('k', k)} and ${fmt('v', v)} must all be [B, H, L, Dh]`);
  }
  const [b, h, lq, dh] = q.shape as [number, number, number, number];
  const lk = k.shape[2]!;
  if (k.shape[0] !== b || k.shape[1] !== h || k.shape[3] !== dh) throw new Error(`${fmt('k', k)} must be [${b}, ${h}, Lk, ${dh}] to match ${fmt('q', q)}`);
  if (v.shape.some((n, i) => n !== k.shape[i])) throw new Error(`${fmt('v', v)} must have k's shape [${k.shape}]`);
  if (lk === 0) throw new Error(`${fmt('k', k)} has no keys: softmax over an empty row is undefined`);
  if (out.shape.length !== 4 || out.shape.some((n, i) => n !== q.shape[i])) throw new Error(`${fmt('out', out)} must have q's shape [${q.shape}]`);
  if (lse && (lse.shape.length !== 3 || lse.shape[0] !== b || lse.shape[1] !== h || lse.shape[2] !== lq)) {
    throw new Error(`${fmt('lse', lse)} must be [${b}, ${h}, ${lq}] (one value per query row)`);
  }
  return [b, h, lq, lk, dh];
}

/** Element [a, b, c, d] of a rank-4 view, by its strides. */
function at4(v: HostView, a: number, b: number, c: number, d: number): number {
  const s = v.strides;
  return readElement(v.dtype, v.data, v.offset + a * s[0]! + b * s[1]! + c * s[2]! + d * s[3]!);
}

/** Element [a, b] of a rank-2 view. */
function at2(v: HostView, a: number, b: number): number {
  return readElement(v.dtype, v.data, v.offset + a * v.strides[0]! + b * v.strides[1]!);
}

/** Element [a, b, c] of a rank-3 view. */
function at3(v: HostView, a: number, b: number, c: number): number {
  return readElement(v.dtype, v.data, v.offset + a * v.strides[0]! + b * v.strides[1]! + c * v.strides[2]!);
}

/** Stores x at [a, b, c] of a rank-3 view, or [a, b, c, d] of a rank-4 one. */
function put(v: HostView, x: number, a: number, b: number, c: number, d = 0): void {
  const s = v.strides;
  writeElement(v.dtype, v.data, v.offset + a * s[0]! + b * s[1]! + c * s[2]! + (s.length > 3 ? d * s[3]! : 0), x);
}

/**
 * softmax(scale * q k^T + mask) v per (batch, head). With `causal`, query i sees keys j <= i
 * (top-left aligned when Lq != Lk, as torch's scaled_dot_product_attention with is_causal=True).
 * lse, when given, receives log(sum_j exp(scale * q_i . k_j)) over the keys row i sees.
 */
export function refAttention(
  q: HostView, // (B, H, Lq, Dh)
  k: HostView, // (B, H, Lk, Dh)
  v: HostView, // (B, H, Lk, Dh)
  out: HostView, // (B, H, Lq, Dh)
  p: { scale: number; causal?: boolean },
  lse: HostView | null, // (B, H, Lq) or null
): void {
  const [nb, nh, lq, lk, dh] = attentionShapes(q, k, v, out, lse);
  const scores = new Float64Array(lk);
  for (let b = 0; b < nb; b++) {
    for (let h = 0; h < nh; h++) {
      for (let i = 0; i < lq; i++) {
        const keys = p.causal ? Math.min(i + 1, lk) : lk; // keys j < `keys` are visible
        let max = -Infinity;
        for (let j = 0; j < keys; j++) {
          let s = 0;
          for (let d = 0; d < dh; d++) s += at4(q, b, h, i, d) * at4(k, b, h, j, d);
          scores[j] = s * p.scale;
          max = Math.max(max, scores[j]!);
        }
        let sum = 0;
        for (let j = 0; j < keys; j++) {
          scores[j] = Math.exp(scores[j]! - max);
          sum += scores[j]!;
        }
        for (let d = 0; d < dh; d++) {
          let o = 0;
          for (let j = 0; j < keys; j++) o += scores[j]! * at4(v, b, h, j, d);
          put(out, o / sum, b, h, i, d);
        }
        if (lse) put(lse, max + Math.log(sum), b, h, i);
      }
    }
  }
}

/**
 * Attention backward from the forward's out and lse (FlashAttention-2's formulas): with
 * P = exp(scale * q k^T - lse) over the visible keys and D_i = dout_i . out_i,
 * dv = P^T dout, dS = P * (dout v^T - D), dq = scale * dS k, dk = scale * dS^T q.
 * Keys no query sees (causal, Lk > Lq) get zero gradients.
 */
export function refAttentionBackward(
  q: HostView, // (B, H, Lq, Dh)
  k: HostView, // (B, H, Lk, Dh)
  v: HostView, // (B, H, Lk, Dh)
  out: HostView, // (B, H, Lq, Dh)
  lse: HostView, // (B, H, Lq), natural log
  dout: HostView, // (B, H, Lq, Dh)
  dq: HostView, // (B, H, Lq, Dh)
  dk: HostView, // (B, H, Lk, Dh)
  dv: HostView, // (B, H, Lk, Dh)
  p: { scale: number; causal?: boolean },
): void {
  const [nb, nh, lq, lk, dh] = attentionBackwardShapes(q, k, v, out, lse, dout, dq, dk, dv);
  const gq = new Float64Array(lq * dh), gk = new Float64Array(lk * dh), gv = new Float64Array(lk * dh);
  for (let b = 0; b < nb; b++) {
    for (let h = 0; h < nh; h++) {
      gq.fill(0);
      gk.fill(0);
      gv.fill(0);
      for (let i = 0; i < lq; i++) {
        let di = 0;
        for (let d = 0; d < dh; d++) di += at4(dout, b, h, i, d) * at4(out, b, h, i, d);
        const keys = p.causal ? Math.min(i + 1, lk) : lk;
        for (let j = 0; j < keys; j++) {
          let s = 0, dp = 0;
          for (let d = 0; d < dh; d++) {
            s += at4(q, b, h, i, d) * at4(k, b, h, j, d);
            dp += at4(dout, b, h, i, d) * at4(v, b, h, j, d);
          }
          const pij = Math.exp(s * p.scale - at3(lse, b, h, i));
          const ds = pij * (dp - di);
          for (let d = 0; d < dh; d++) {
            gv[j * dh + d] += pij * at4(dout, b, h, i, d);
            gq[i * dh + d] += p.scale * ds * at4(k, b, h, j, d);
            gk[j * dh + d] += p.scale * ds * at4(q, b, h, i, d);
          }
        }
      }
      for (let i = 0; i < lq; i++) for (let d = 0; d < dh; d++) put(dq, gq[i * dh + d]!, b, h, i, d);
      for (let j = 0; j < lk; j++) {
        for (let d = 0; d < dh; d++) {
          put(dk, gk[j * dh + d]!, b, h, j, d);
          put(dv, gv[j * dh + d]!, b, h, j, d);
        }
      }
    }
  }
}

/** Checks the operands of attentionBackward (shapes as attention's; dq like q, dk and dv like k); returns [B, H, Lq, Lk, Dh]. */
export function attentionBackwardShapes(q: Shaped, k: Shaped, v: Shaped, out: Shaped, lse: Shaped, dout: Shaped, dq: Shaped, dk: Shaped, dv: Shaped): [number, number, number, number, number] {
  const dims = attentionShapes(q, k, v, out, lse);
  for (const [name, t, like, likeName] of [['dout', dout, q, 'q'], ['dq', dq, q, 'q'], ['dk', dk, k, 'k'], ['dv', dv, k, 'k']] as const) {
    if (t.shape.length !== 4 || t.shape.some((n, i) => n !== like.shape[i])) throw new Error(`${fmt(name, t)} must have ${likeName}'s shape [${like.shape}]`);
  }
  return dims;
}

/**
 * FLUX rotary embedding on interleaved pairs (diffusers apply_rotary_emb, use_real_unbind_dim=-1):
 * out[2i] = x[2i] cos[2i] - x[2i+1] sin[2i], out[2i+1] = x[2i+1] cos[2i+1] + x[2i] sin[2i+1].
 */
export function refRope(
  x: HostView, // (B, H, L, Dh)
  cos: HostView, // (L, Dh)
  sin: HostView, // (L, Dh)
  out: HostView, // (B, H, L, Dh)
): void {
  const [nb, nh, l, dh] = ropeShapes(x, cos, sin, out);
  for (let b = 0; b < nb; b++) {
    for (let h = 0; h < nh; h++) {
      for (let t = 0; t < l; t++) {
        for (let d = 0; d < dh; d += 2) {
          const re = at4(x, b, h, t, d), im = at4(x, b, h, t, d + 1);
          put(out, re * at2(cos, t, d) - im * at2(sin, t, d), b, h, t, d);
          put(out, im * at2(cos, t, d + 1) + re * at2(sin, t, d + 1), b, h, t, d + 1);
        }
      }
    }
  }
}

/** Checks x [B,H,L,Dh] (Dh even), cos, sin [L,Dh], out like x; returns [B, H, L, Dh]. `names` names x and out in errors (dy, dx for the backward). */
export function ropeShapes(x: Shaped, cos: Shaped, sin: Shaped, out: Shaped, names: readonly [string, string] = ['x', 'out']): [number, number, number, number] {
  const [xName, outName] = names;
  if (x.shape.length !== 4) throw new Error(`${fmt(xName, x)} must be [B, H, L, Dh]`);
  const [b, h, l, dh] = x.shape as [number, number, number, number];
  if (dh % 2 !== 0) throw new Error(`${fmt(xName, x)}: Dh = ${dh} must be even (rotations act on pairs)`);
  for (const [name, t] of [['cos', cos], ['sin', sin]] as const) {
    if (t.shape.length !== 2 || t.shape[0] !== l || t.shape[1] !== dh) throw new Error(`${fmt(name, t)} must be [${l}, ${dh}] to match ${fmt(xName, x)}`);
  }
  if (out.shape.length !== 4 || out.shape.some((n, i) => n !== x.shape[i])) throw new Error(`${fmt(outName, out)} must have ${xName}'s shape [${x.shape}]`);
  return [b, h, l, dh];
}

/**
 * The transpose of refRope's rotation (its gradient):
 * dx[2i] = dy[2i] cos[2i] + dy[2i+1] sin[2i+1], dx[2i+1] = dy[2i+1] cos[2i+1] - dy[2i] sin[2i].
 */
export function refRopeBackward(
  dy: HostView, // (B, H, L, Dh)
  cos: HostView, // (L, Dh)
  sin: HostView, // (L, Dh)
  dx: HostView, // (B, H, L, Dh)
): void {
  const [nb, nh, l, dh] = ropeShapes(dy, cos, sin, dx, ['dy', 'dx']);
  for (let b = 0; b < nb; b++) {
    for (let h = 0; h < nh; h++) {
      for (let t = 0; t < l; t++) {
        for (let d = 0; d < dh; d += 2) {
          const re = at4(dy, b, h, t, d), im = at4(dy, b, h, t, d + 1);
          put(dx, re * at2(cos, t, d) + im * at2(sin, t, d + 1), b, h, t, d);
          put(dx, im * at2(cos, t, d + 1) - re * at2(sin, t, d), b, h, t, d + 1);
        }
      }
    }
  }
}
