// Differentiable versions of the tensor ops (same names and signatures as src/tensor/ops.ts), each
// its forward call plus its backward rule. Models import this module; under noGrad() it is exactly
// the plain ops. Rules are written with tensor ops so every backend gets them for free; the ones
// whose gradient needs a kernel of its own (norms, attention, activations) call backward device ops.
import type { UnaryOp, UnaryParams } from '../device/device.ts';
import * as T from '../tensor/ops.ts';
import { Tensor } from '../tensor/tensor.ts';
import { needsGrad, record } from './tape.ts';

export { noGrad, backward, checkpoint, isGradEnabled, releaseGraph } from './tape.ts';

/** Sums a broadcast gradient back to `shape` (leading and size-1 axes). */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  let cur = g.view(g.shape, g.strides);
  while (cur.rank > shape.length) {
    const next = T.sum(cur, 0);
    cur.dispose();
    cur = next;
  }
  for (let ax = 0; ax < shape.length; ax++) {
    if (shape[ax] === 1 && cur.shape[ax] !== 1) {
      const next = T.sum(cur, ax, true);
      cur.dispose();
      cur = next;
    }
  }
  return cur;
}

/** Runs a rule body and disposes the temporaries it lists once the result is computed. */
function using<R>(temps: Tensor[], result: R): R {
  temps.forEach((t) => t.dispose());
  return result;
}

// ---- elementwise --------------------------------------------------------------------------------

export function add(a: Tensor, b: Tensor): Tensor {
  return record('add', [a, b], T.add(a, b), (g) => [sumTo(g, a.shape), sumTo(g, b.shape)]);
}

export function sub(a: Tensor, b: Tensor): Tensor {
  return record('sub', [a, b], T.sub(a, b), (g) => {
    const nb = T.neg(g);
    return [sumTo(g, a.shape), using([nb], sumTo(nb, b.shape))];
  });
}

export function mul(a: Tensor, b: Tensor): Tensor {
  return record('mul', [a, b], T.mul(a, b), (g, [sa, sb]) => {
    const ga = T.mul(g, sb!), gb = T.mul(g, sa!);
    return [using([ga], sumTo(ga, a.shape)), using([gb], sumTo(gb, b.shape))];
  }, [a, b]);
}

export function div(a: Tensor, b: Tensor): Tensor {
  const out = T.div(a, b);
  return record('div', [a, b], out, (g, [sb, so]) => {
    const ga = T.div(g, sb!);
    const t = T.mul(ga, so!);
    const gb = T.neg(t);
    return [using([ga], sumTo(ga, a.shape)), using([t, gb], sumTo(gb, b.shape))];
  }, [b, out]);
}

export function neg(x: Tensor): Tensor {
  return record('neg', [x], T.neg(x), (g) => [T.neg(g)]);
}

export function scale(x: Tensor, alpha: number): Tensor {
  return record('scale', [x], T.scale(x, alpha), (g) => [T.scale(g, alpha)]);
}

/** An activation whose gradient is the device's unaryBackward of the same op. */
function activation(op: UnaryOp, x: Tensor, p?: UnaryParams): Tensor {
  return record(op, [x], T.unary(op, x, p), (g, [sx]) => [T.unaryBackward(op, sx!, g, p)], [x]);
}

export const silu = (x: Tensor) => activation('silu', x);
export const gelu = (x: Tensor, approximate: 'none' | 'tanh' = 'none') => activation(approximate === 'tanh' ? 'gelu_tanh' : 'gelu_erf', x);
export const quickGelu = (x: Tensor) => activation('quick_gelu', x);
export const sigmoid = (x: Tensor) => activation('sigmoid', x);
export const rsqrt = (x: Tensor) => activation('rsqrt', x);
export const clamp = (x: Tensor, lo: number, hi: number) => activation('clamp', x, { lo, hi });

export function exp(x: Tensor): Tensor {
  const out = T.exp(x);
  return record('exp', [x], out, (g, [y]) => [T.mul(g, y!)], [out]);
}

export function log(x: Tensor): Tensor {
  return record('log', [x], T.log(x), (g, [sx]) => [T.div(g, sx!)], [x]);
}

export function sqrt(x: Tensor): Tensor {
  const out = T.sqrt(x);
  // d sqrt(x) = g / (2 sqrt(x))
  return record('sqrt', [x], out, (g, [y]) => {
    const h = T.div(g, y!);
    return [using([h], T.scale(h, 0.5))];
  }, [out]);
}

export function tanh(x: Tensor): Tensor {
  const out = T.tanh(x);
  // d tanh = g (1 - y^2)
  return record('tanh', [x], out, (g, [y]) => {
    const y2 = T.mul(y!, y!);
    const gy2 = T.mul(g, y2);
    return [using([y2, gy2], T.sub(g, gy2))];
  }, [out]);
}

/**
 * x converted to `dtype`. `precomputed`, when given, already holds that conversion (a compute copy
 * kept between steps): it is viewed instead of converted again, and still passes gradients to x.
 */
export function cast(x: Tensor, dtype: Tensor['dtype'], precomputed?: Tensor): Tensor {
  if (precomputed && (precomputed.dtype !== dtype || precomputed.shape.join() !== x.shape.join())) {
    throw new Error(`cast: precomputed [${precomputed.shape}]:${precomputed.dtype} is not [${x.shape}] as ${dtype}`);
  }
  const out = precomputed ? precomputed.view(precomputed.shape, precomputed.strides) : T.cast(x, dtype);
  return record('cast', [x], out, (g) => [g.to(x.dtype)]);
}

// ---- reductions -----------------------------------------------------------------------------------

export function sum(x: Tensor, axis: number, keepdim = false): Tensor {
  return record('sum', [x], T.sum(x, axis, keepdim), (g) => [expandBack(g, x.shape, axis, keepdim, 1)]);
}

export function mean(x: Tensor, axis: number, keepdim = false): Tensor {
  const n = x.shape.at(axis)!;
  return record('mean', [x], T.mean(x, axis, keepdim), (g) => [expandBack(g, x.shape, axis, keepdim, 1 / n)]);
}

/** The gradient of a reduction over `axis`: g broadcast back over it, times `factor`. */
function expandBack(g: Tensor, shape: readonly number[], axis: number, keepdim: boolean, factor: number): Tensor {
  const ax = axis < 0 ? axis + shape.length : axis;
  const kept = keepdim ? g.view(g.shape, g.strides) : g.unsqueeze(ax);
  const wide = kept.expand(shape);
  const out = factor === 1 ? wide.contiguous() : T.scale(wide, factor);
  return using([kept, wide], out);
}

// ---- matmul ---------------------------------------------------------------------------------------

export function matmul(a: Tensor, b: Tensor): Tensor {
  return record('matmul', [a, b], T.matmul(a, b), (g, [sa, sb], [needA, needB]) => {
    let ga: Tensor | null = null, gb: Tensor | null = null;
    if (needA) {
      const bt = sb!.transpose(-1, -2), full = T.matmul(g, bt);
      ga = using([bt, full], sumTo(full, a.shape));
    }
    if (needB) {
      const at = sa!.transpose(-1, -2), full = T.matmul(at, g);
      gb = using([at, full], sumTo(full, b.shape));
    }
    return [ga, gb];
  }, [a, b]);
}

/**
 * torch.nn.functional.linear; a fused activation is recorded as its own op so its rule applies.
 * x, w and bias may be bf16 (weights kept as checkpoints ship them, autocast's compute copies):
 * the product accumulates and is returned in f32.
 */
export function linear(x: Tensor, w: Tensor, bias: Tensor | null = null): Tensor {
  return record('linear', [x, w, bias], T.linear(x, w, bias), (g, [sx, sw], [needX, needW, needB]) => {
    const k = x.shape.at(-1)!, n = w.shape[0]!;
    const g2 = g.reshape([-1, n]);
    let gx: Tensor | null = null, gw: Tensor | null = null;
    if (needX) {
      const flat = T.matmul(g2, sw!); // [R, N] @ [N, K]
      gx = using([flat], flat.reshape(x.shape));
    }
    // A frozen weight (LoRA's base) costs no [N, K] product.
    if (needW) {
      const x2 = sx!.reshape([-1, k]), g2t = g2.transpose(0, 1);
      gw = using([x2, g2t], T.matmul(g2t, x2)); // [N, R] @ [R, K]
    }
    const gb = needB ? T.sum(g2, 0) : null;
    return using([g2], [gx, gw, gb]);
  }, [x, w]);
}

// ---- layout ---------------------------------------------------------------------------------------
// Tensor's own view methods (t.reshape, t.slice, ...) do not record: on a tensor that needs a gradient
// use these, or the gradient stops there.

export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  return record('reshape', [x], x.reshape(shape), (g) => [g.reshape(x.shape)]);
}

export function permute(x: Tensor, order: readonly number[]): Tensor {
  const inverse = order.map((_, i) => order.findIndex((a) => (a < 0 ? a + order.length : a) === i));
  return record('permute', [x], x.permute(order), (g) => [g.permute(inverse)]);
}

export function transpose(x: Tensor, a: number, b: number): Tensor {
  return record('transpose', [x], x.transpose(a, b), (g) => [g.transpose(a, b)]);
}

export function slice(x: Tensor, axis: number, start: number, end: number, step = 1): Tensor {
  return record('slice', [x], x.slice(axis, start, end, step), (g) => {
    const full = Tensor.full(g.device, x.shape, 0, g.dtype);
    const dst = full.slice(axis, start, end, step);
    g.device.copy(g, dst);
    return using([dst], [full]);
  });
}

export function expand(x: Tensor, shape: readonly number[]): Tensor {
  return record('expand', [x], x.expand(shape), (g) => [sumTo(g, x.shape)]);
}

export function cat(parts: Tensor[], axis: number): Tensor {
  const ax = axis < 0 ? axis + parts[0]!.rank : axis;
  return record('cat', parts, T.cat(parts, axis), (g) => {
    let at = 0;
    return parts.map((p) => {
      const part = g.slice(ax, at, (at += p.shape[ax]!));
      return using([part], part.contiguous());
    });
  });
}

export function split(x: Tensor, sizes: number[], axis: number): Tensor[] {
  let at = 0;
  return sizes.map((s) => {
    const start = at;
    at += s;
    return slice(x, axis, start, start + s);
  });
}

// ---- normalisation, softmax, attention, rope --------------------------------------------------------

/** Softmax along `axis`; other axes than the last go through recorded transposes. */
export function softmax(x: Tensor, axis = -1): Tensor {
  const ax = axis < 0 ? axis + x.rank : axis;
  if (ax !== x.rank - 1) {
    const moved = transpose(x, ax, -1);
    const s = softmax(moved, -1);
    const back = transpose(s, ax, -1);
    return using([moved, s], back);
  }
  const out = T.softmax(x, -1);
  return record('softmax', [x], out, (g, [y]) => [T.softmaxBackward(y!, g)], [out]);
}

export function layerNorm(x: Tensor, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  const out = T.layerNorm(x, weight, bias, eps);
  return record('layerNorm', [x, weight, bias], out, (g, [sx, sw]) => T.layerNormBackward(sx!, sw ?? null, bias !== null, g, eps), weight ? [x, weight] : [x]);
}

export function rmsNorm(x: Tensor, weight: Tensor | null, eps = 1e-6): Tensor {
  const out = T.rmsNorm(x, weight, eps);
  return record('rmsNorm', [x, weight], out, (g, [sx, sw]) => T.rmsNormBackward(sx!, sw ?? null, g, eps), weight ? [x, weight] : [x]);
}

/** Scaled dot-product attention; when recorded, the forward also keeps its log-sum-exp for backward. */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: { causal?: boolean; scale?: number } = {}): Tensor {
  if (!needsGrad(q, k, v)) return T.attention(q, k, v, opts);
  const [out, lse] = T.attentionWithLse(q, k, v, opts);
  const recorded = record('attention', [q, k, v], out, (g, [sq, sk, sv, so, sl]) => T.attentionBackward(sq!, sk!, sv!, so!, sl!, g, opts), [q, k, v, out, lse]);
  lse.dispose();
  return recorded;
}

/** FLUX rotary embedding; cos/sin are constants (no gradient flows to them). */
export function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  if (needsGrad(cos, sin)) throw new Error('rope: cos/sin tables must not require grad');
  return record('rope', [x], T.rope(x, cos, sin), (g, [c, s]) => [T.ropeBackward(g, c!, s!)], [cos, sin]);
}

// ---- ops whose backward rule is not written yet: they refuse to run where a gradient is needed ----

/** Wraps a forward-only op so that using it under gradient tracking fails loudly, never silently. */
function forwardOnly<A extends unknown[]>(op: string, fn: (...args: A) => Tensor): (...args: A) => Tensor {
  return (...args: A) => {
    if (needsGrad(...args.flatMap((a) => (a instanceof Tensor ? [a] : Array.isArray(a) ? a.filter((x) => x instanceof Tensor) : []))))
      throw new Error(`${op}: no backward rule yet; run it under noGrad() or detach its inputs`);
    return fn(...args);
  };
}

export const maximum = forwardOnly('maximum', T.maximum);
export const minimum = forwardOnly('minimum', T.minimum);
export const pow = forwardOnly('pow', T.pow);
export const where = forwardOnly('where', T.where);
export const amax = forwardOnly('amax', T.amax);
export const variance = forwardOnly('variance', T.variance);
export const groupNorm = forwardOnly('groupNorm', T.groupNorm);
export const conv2d = forwardOnly('conv2d', T.conv2d);
export const upsampleNearest2x = forwardOnly('upsampleNearest2x', T.upsampleNearest2x);
export const gather = forwardOnly('gather', T.gather);
