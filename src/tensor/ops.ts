// The functional tensor API models are written in. Each function validates shapes, allocates its
// output on the inputs' device and issues one device op (plus layout copies when an op needs dense
// operands). Inputs are never consumed: the caller keeps ownership of what it passed in.
import type { Activation, BinaryOp, ReduceOp, UnaryOp, UnaryParams } from '../device/device.ts';
import { type DType, accumulatorDtype } from './dtype.ts';
import { broadcastShapes, normAxis, numel, sameShape } from './shape.ts';
import { Tensor } from './tensor.ts';

/** Runs `fn` with dense versions of the tensors, disposing the temporary copies afterwards. */
function withDense<T>(ts: Tensor[], fn: (...dense: Tensor[]) => T): T {
  const dense = ts.map((t) => t.contiguous());
  try {
    return fn(...dense);
  } finally {
    dense.forEach((t) => t.dispose());
  }
}

function sameDevice(...ts: (Tensor | null | undefined)[]): void {
  const devs = ts.filter((t): t is Tensor => !!t).map((t) => t.device);
  if (devs.some((d) => d !== devs[0])) throw new Error(`tensors on different devices: ${devs.map((d) => d.name).join(', ')}`);
}

// ---- elementwise ----------------------------------------------------------------------------------

export function unary(op: UnaryOp, x: Tensor, p?: UnaryParams): Tensor {
  const out = Tensor.empty(x.device, x.shape, x.dtype);
  if (out.numel > 0) x.device.unary(op, x, out, p);
  return out;
}

export const neg = (x: Tensor) => unary('neg', x);
export const exp = (x: Tensor) => unary('exp', x);
export const log = (x: Tensor) => unary('log', x);
export const sqrt = (x: Tensor) => unary('sqrt', x);
export const rsqrt = (x: Tensor) => unary('rsqrt', x);
export const tanh = (x: Tensor) => unary('tanh', x);
export const sigmoid = (x: Tensor) => unary('sigmoid', x);
export const silu = (x: Tensor) => unary('silu', x);
export const gelu = (x: Tensor, approximate: 'none' | 'tanh' = 'none') => unary(approximate === 'tanh' ? 'gelu_tanh' : 'gelu_erf', x);
export const quickGelu = (x: Tensor) => unary('quick_gelu', x);
export const scale = (x: Tensor, alpha: number) => unary('scale', x, { alpha });
export const clamp = (x: Tensor, lo: number, hi: number) => unary('clamp', x, { lo, hi });

/** a op b with NumPy broadcasting. */
export function binary(op: BinaryOp, a: Tensor, b: Tensor): Tensor {
  sameDevice(a, b);
  if (a.dtype !== b.dtype) throw new Error(`${op}: dtypes differ (${a.dtype} vs ${b.dtype})`);
  const shape = broadcastShapes(a.shape, b.shape);
  const ea = a.expand(shape), eb = b.expand(shape);
  try {
    const out = Tensor.empty(a.device, shape, a.dtype);
    if (out.numel > 0) a.device.binary(op, ea, eb, out);
    return out;
  } finally {
    ea.dispose();
    eb.dispose();
  }
}

export const add = (a: Tensor, b: Tensor) => binary('add', a, b);
export const sub = (a: Tensor, b: Tensor) => binary('sub', a, b);
export const mul = (a: Tensor, b: Tensor) => binary('mul', a, b);
export const div = (a: Tensor, b: Tensor) => binary('div', a, b);
export const maximum = (a: Tensor, b: Tensor) => binary('max', a, b);
export const minimum = (a: Tensor, b: Tensor) => binary('min', a, b);
export const pow = (a: Tensor, b: Tensor) => binary('pow', a, b);

export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  sameDevice(cond, a, b);
  const shape = broadcastShapes(broadcastShapes(cond.shape, a.shape), b.shape);
  const views = [cond, a, b].map((t) => t.expand(shape));
  try {
    const out = Tensor.empty(a.device, shape, a.dtype);
    if (out.numel > 0) a.device.where(views[0]!, views[1]!, views[2]!, out);
    return out;
  } finally {
    views.forEach((v) => v.dispose());
  }
}

export function cast(x: Tensor, dtype: DType): Tensor {
  return x.to(dtype);
}

// ---- reductions and normalisations ----------------------------------------------------------------

/** Reduces one axis ('var' unbiased by default, as torch.var). */
export function reduce(op: ReduceOp, x: Tensor, axis: number, keepdim = false, correction = 1): Tensor {
  const ax = normAxis(axis, x.rank);
  const outer = numel(x.shape.slice(0, ax)), n = x.shape[ax]!, inner = numel(x.shape.slice(ax + 1));
  const shape = keepdim ? x.shape.map((d, i) => (i === ax ? 1 : d)) : x.shape.filter((_, i) => i !== ax);
  return withDense([x], (xd) => {
    const out = Tensor.empty(x.device, shape, x.dtype);
    x.device.reduce(op, xd!, out, { outer, n, inner, correction });
    return out;
  });
}

export const sum = (x: Tensor, axis: number, keepdim = false) => reduce('sum', x, axis, keepdim);
export const mean = (x: Tensor, axis: number, keepdim = false) => reduce('mean', x, axis, keepdim);
export const amax = (x: Tensor, axis: number, keepdim = false) => reduce('max', x, axis, keepdim);
export const variance = (x: Tensor, axis: number, keepdim = false, correction = 1) => reduce('var', x, axis, keepdim, correction);

/** Softmax along `axis` (moved last and back when it is not the last). */
export function softmax(x: Tensor, axis = -1): Tensor {
  const ax = normAxis(axis, x.rank);
  if (ax !== x.rank - 1) {
    const moved = x.transpose(ax, -1);
    const s = softmax(moved, -1);
    const back = s.transpose(ax, -1);
    moved.dispose();
    s.dispose();
    return back;
  }
  return withDense([x], (xd) => {
    const out = Tensor.empty(x.device, x.shape, x.dtype);
    x.device.softmax(xd!, out);
    return out;
  });
}

function checkParam(name: string, t: Tensor | null | undefined, shape: readonly number[]): void {
  if (t && !sameShape(t.shape, shape)) throw new Error(`${name} has shape [${t.shape}], expected [${shape}]`);
}

export function layerNorm(x: Tensor, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  const d = x.shape.at(-1)!;
  checkParam('layerNorm weight', weight, [d]);
  checkParam('layerNorm bias', bias, [d]);
  return withDense([x], (xd) => {
    const out = Tensor.empty(x.device, x.shape, x.dtype);
    x.device.layerNorm(xd!, weight, bias, out, { eps });
    return out;
  });
}

export function rmsNorm(x: Tensor, weight: Tensor | null, eps = 1e-6): Tensor {
  checkParam('rmsNorm weight', weight, [x.shape.at(-1)!]);
  return withDense([x], (xd) => {
    const out = Tensor.empty(x.device, x.shape, x.dtype);
    x.device.rmsNorm(xd!, weight, out, { eps });
    return out;
  });
}

/** GroupNorm over x [B, C, ...spatial]. */
export function groupNorm(x: Tensor, groups: number, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  const [b, c] = x.shape as [number, number];
  checkParam('groupNorm weight', weight, [c]);
  checkParam('groupNorm bias', bias, [c]);
  return withDense([x], (xd) => {
    const flat = xd!.reshape([b, c, numel(x.shape.slice(2))]);
    const out = Tensor.empty(x.device, x.shape, x.dtype);
    const outFlat = out.reshape(flat.shape);
    try {
      x.device.groupNorm(flat, weight, bias, outFlat, { groups, eps });
    } finally {
      flat.dispose();
      outFlat.dispose();
    }
    return out;
  });
}

// ---- matmul family ----------------------------------------------------------------------------------

/**
 * torch.matmul for rank >= 2 operands with broadcast batch dims (b may also be 2-D and shared).
 * Lays both out as [batch, M, K] x [batch|1, K, N].
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  sameDevice(a, b);
  if (a.rank < 2 || b.rank < 2) throw new Error(`matmul needs rank >= 2 operands, got [${a.shape}] and [${b.shape}]`);
  const [m, k] = a.shape.slice(-2) as [number, number];
  const [k2, n] = b.shape.slice(-2) as [number, number];
  if (k !== k2) throw new Error(`matmul: inner dims differ: [${a.shape}] @ [${b.shape}]`);
  const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const nb = numel(batch);
  const bShared = numel(b.shape.slice(0, -2)) === 1;
  const ea = a.expand([...batch, m, k]);
  const eb = bShared ? b.reshape([1, k, n]) : b.expand([...batch, k, n]);
  try {
    return withDense([ea, eb], (ad, bd) => {
      const a3 = ad!.reshape([nb, m, k]), b3 = bd!.reshape([bShared ? 1 : nb, k, n]);
      const out = Tensor.empty(a.device, [...batch, m, n], accumulatorDtype(a.dtype, b.dtype));
      const o3 = out.reshape([nb, m, n]);
      a.device.matmul(a3, b3, o3);
      [a3, b3, o3].forEach((t) => t.dispose());
      return out;
    });
  } finally {
    ea.dispose();
    eb.dispose();
  }
}

/** torch.nn.functional.linear: x [..., K] @ w[N, K]^T + bias, with an optional fused activation. */
export function linear(x: Tensor, w: Tensor, bias: Tensor | null = null, act: Activation = 'none'): Tensor {
  sameDevice(x, w, bias);
  const k = x.shape.at(-1)!;
  const [n, kw] = w.shape as [number, number];
  if (w.rank !== 2 || kw !== k) throw new Error(`linear: weight [${w.shape}] does not fit input [${x.shape}]`);
  checkParam('linear bias', bias, [n]);
  const rows = numel(x.shape.slice(0, -1));
  return withDense([x, w], (xd, wd) => {
    const x3 = xd!.reshape([1, rows, k]), w3 = wd!.reshape([1, n, k]);
    const out = Tensor.empty(x.device, [...x.shape.slice(0, -1), n], accumulatorDtype(x.dtype, w.dtype));
    const o3 = out.reshape([1, rows, n]);
    x.device.matmul(x3, w3, o3, { transB: true, bias, act });
    [x3, w3, o3].forEach((t) => t.dispose());
    return out;
  });
}

/** Scaled dot-product attention on q [B, H, Lq, Dh], k, v [B, H, Lk, Dh]. */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: { causal?: boolean; scale?: number } = {}): Tensor {
  sameDevice(q, k, v);
  const [b, h, , dh] = q.shape as [number, number, number, number];
  if (q.rank !== 4 || k.rank !== 4 || !sameShape(k.shape, v.shape) || k.shape[0] !== b || k.shape[1] !== h || k.shape[3] !== dh) {
    throw new Error(`attention: q [${q.shape}], k [${k.shape}], v [${v.shape}] do not fit [B,H,L,Dh]`);
  }
  return withDense([q, k, v], (qd, kd, vd) => {
    const out = Tensor.empty(q.device, q.shape, q.dtype);
    q.device.attention(qd!, kd!, vd!, out, { scale: opts.scale ?? 1 / Math.sqrt(dh), causal: opts.causal ?? false });
    return out;
  });
}

/** FLUX rotary embedding: x [B, H, L, Dh], cos/sin [L, Dh]. */
export function rope(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const [, , l, dh] = x.shape as [number, number, number, number];
  checkParam('rope cos', cos, [l, dh]);
  checkParam('rope sin', sin, [l, dh]);
  return withDense([x, cos, sin], (xd, cd, sd) => {
    const out = Tensor.empty(x.device, x.shape, x.dtype);
    x.device.rope(xd!, cd!, sd!, out);
    return out;
  });
}

export function conv2d(x: Tensor, w: Tensor, bias: Tensor | null, stride: number | [number, number] = 1, padding: number | [number, number] = 0): Tensor {
  sameDevice(x, w, bias);
  const [sh, sw] = typeof stride === 'number' ? [stride, stride] : stride;
  const [ph, pw] = typeof padding === 'number' ? [padding, padding] : padding;
  const [b, cin, hh, ww] = x.shape as [number, number, number, number];
  const [cout, cin2, kh, kw] = w.shape as [number, number, number, number];
  if (x.rank !== 4 || w.rank !== 4 || cin !== cin2) throw new Error(`conv2d: input [${x.shape}] and weight [${w.shape}] do not fit`);
  checkParam('conv2d bias', bias, [cout]);
  const ho = Math.floor((hh + 2 * ph - kh) / sh) + 1, wo = Math.floor((ww + 2 * pw - kw) / sw) + 1;
  return withDense([x, w], (xd, wd) => {
    const out = Tensor.empty(x.device, [b, cout, ho, wo], x.dtype);
    x.device.conv2d(xd!, wd!, bias, out, { stride: [sh, sw], padding: [ph, pw] });
    return out;
  });
}

export function upsampleNearest2x(x: Tensor): Tensor {
  const [b, c, hh, ww] = x.shape as [number, number, number, number];
  return withDense([x], (xd) => {
    const out = Tensor.empty(x.device, [b, c, 2 * hh, 2 * ww], x.dtype);
    x.device.upsampleNearest2x(xd!, out);
    return out;
  });
}

/** Embedding lookup: rows of table [V, D] at index [...] (i32) -> [..., D]. */
export function gather(table: Tensor, index: Tensor): Tensor {
  sameDevice(table, index);
  if (index.dtype !== 'i32') throw new Error(`gather: index must be i32, got ${index.dtype}`);
  const d = table.shape[1]!;
  return withDense([table, index], (td, id) => {
    const flat = id!.reshape([id!.numel]);
    const out = Tensor.empty(table.device, [...index.shape, d], table.dtype);
    const o2 = out.reshape([flat.numel, d]);
    table.device.gather(td!, flat, o2);
    flat.dispose();
    o2.dispose();
    return out;
  });
}

// ---- layout -------------------------------------------------------------------------------------------

/** Concatenates along `axis` by copying each part into its slice of the output. */
export function cat(parts: Tensor[], axis: number): Tensor {
  if (parts.length === 0) throw new Error('cat of no tensors');
  sameDevice(...parts);
  const first = parts[0]!;
  const ax = normAxis(axis, first.rank);
  for (const p of parts) {
    if (p.rank !== first.rank || p.dtype !== first.dtype || p.shape.some((d, i) => i !== ax && d !== first.shape[i])) {
      throw new Error(`cat along ${axis}: [${p.shape}]:${p.dtype} does not fit [${first.shape}]:${first.dtype}`);
    }
  }
  const shape = [...first.shape];
  shape[ax] = parts.reduce((s, p) => s + p.shape[ax]!, 0);
  const out = Tensor.empty(first.device, shape, first.dtype);
  let at = 0;
  for (const p of parts) {
    const dst = out.slice(ax, at, at + p.shape[ax]!);
    if (p.numel > 0) p.device.copy(p, dst);
    dst.dispose();
    at += p.shape[ax]!;
  }
  return out;
}

/** Splits along `axis` into views of the given sizes (no copies). */
export function split(x: Tensor, sizes: number[], axis: number): Tensor[] {
  const ax = normAxis(axis, x.rank);
  if (sizes.reduce((a, b) => a + b, 0) !== x.shape[ax]) throw new Error(`split [${sizes}] does not add up to dim ${ax} of [${x.shape}]`);
  let at = 0;
  return sizes.map((s) => x.slice(ax, at, (at += s)));
}

// ---- backward ops (used by the autograd rules) --------------------------------------------------------

/** dx = dy * op'(x). */
export function unaryBackward(op: UnaryOp, x: Tensor, dy: Tensor, p?: UnaryParams): Tensor {
  const dx = Tensor.empty(x.device, x.shape, x.dtype);
  if (dx.numel > 0) x.device.unaryBackward(op, x, dy, dx, p);
  return dx;
}

/** Softmax backward over the last axis from the forward's output y. */
export function softmaxBackward(y: Tensor, dy: Tensor): Tensor {
  return withDense([y, dy], (yd, dyd) => {
    const dx = Tensor.empty(y.device, y.shape, y.dtype);
    y.device.softmaxBackward(yd!, dyd!, dx);
    return dx;
  });
}

/** LayerNorm backward over the last axis: [dx, dweight | null, dbias | null]. */
export function layerNormBackward(x: Tensor, weight: Tensor | null, hasBias: boolean, dy: Tensor, eps: number): [Tensor, Tensor | null, Tensor | null] {
  const d = x.shape.at(-1)!;
  return withDense([x, dy], (xd, dyd) => {
    const dx = Tensor.empty(x.device, x.shape, x.dtype);
    const dw = weight ? Tensor.empty(x.device, [d], x.dtype) : null;
    const db = hasBias ? Tensor.empty(x.device, [d], x.dtype) : null;
    x.device.layerNormBackward(xd!, weight, dyd!, dx, dw, db, { eps });
    return [dx, dw, db];
  });
}

/** RMSNorm backward over the last axis: [dx, dweight | null]. */
export function rmsNormBackward(x: Tensor, weight: Tensor | null, dy: Tensor, eps: number): [Tensor, Tensor | null] {
  const d = x.shape.at(-1)!;
  return withDense([x, dy], (xd, dyd) => {
    const dx = Tensor.empty(x.device, x.shape, x.dtype);
    const dw = weight ? Tensor.empty(x.device, [d], x.dtype) : null;
    x.device.rmsNormBackward(xd!, weight, dyd!, dx, dw, { eps });
    return [dx, dw];
  });
}

/** Attention that also returns the row log-sum-exp [B, H, Lq] its backward needs. */
export function attentionWithLse(q: Tensor, k: Tensor, v: Tensor, opts: { causal?: boolean; scale?: number } = {}): [Tensor, Tensor] {
  const [b, h, lq, dh] = q.shape as [number, number, number, number];
  return withDense([q, k, v], (qd, kd, vd) => {
    const out = Tensor.empty(q.device, q.shape, q.dtype);
    const lse = Tensor.empty(q.device, [b, h, lq], q.dtype);
    q.device.attention(qd!, kd!, vd!, out, { scale: opts.scale ?? 1 / Math.sqrt(dh), causal: opts.causal ?? false }, lse);
    return [out, lse];
  });
}

/** Attention backward: [dq, dk, dv]. */
export function attentionBackward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dout: Tensor, opts: { causal?: boolean; scale?: number } = {}): [Tensor, Tensor, Tensor] {
  const dh = q.shape[3]!;
  return withDense([q, k, v, out, lse, dout], (qd, kd, vd, od, ld, dod) => {
    const dq = Tensor.empty(q.device, q.shape, q.dtype);
    const dk = Tensor.empty(q.device, k.shape, q.dtype);
    const dv = Tensor.empty(q.device, v.shape, q.dtype);
    q.device.attentionBackward(qd!, kd!, vd!, od!, ld!, dod!, dq, dk, dv, { scale: opts.scale ?? 1 / Math.sqrt(dh), causal: opts.causal ?? false });
    return [dq, dk, dv];
  });
}

/** The transposed rotation of rope(). */
export function ropeBackward(dy: Tensor, cos: Tensor, sin: Tensor): Tensor {
  return withDense([dy, cos, sin], (dyd, cd, sd) => {
    const dx = Tensor.empty(dy.device, dy.shape, dy.dtype);
    dy.device.ropeBackward(dyd!, cd!, sd!, dx);
    return dx;
  });
}
