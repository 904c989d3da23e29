// The FLUX.1 building blocks as diffusers v0.32.0 computes them (transformer_flux.py, embeddings.py,
// normalization.py, attention_processor.py FluxAttnProcessor2_0), one small class per module. Every
// class takes its parameters by their checkpoint names (`prefix` + local name) from the model's
// parameter map, so a checkpoint loads without a rename table. Shapes: B batch, Lt text tokens,
// Li image tokens, L = Lt + Li, D hidden width, H heads, Dh head width.
//
// Ownership: inputs are never consumed; every intermediate is disposed as soon as it has been used
// (the autograd tape keeps its own views of what backward needs).
import { type ComputeDType, ComputeCopy, linearBf16, roundBf16 } from '../../autograd/autocast.ts';
import * as F from '../../autograd/functional.ts';
import { Tensor } from '../../tensor/tensor.ts';
import { attention } from './math.ts';

/** The model's parameters by checkpoint name. */
export type ParamMap = ReadonlyMap<string, Tensor>;

export function param(params: ParamMap, name: string): Tensor {
  const t = params.get(name);
  if (!t) throw new Error(`flux: missing parameter ${name}`);
  return t;
}

/** Disposes the temporaries and passes `value` through. */
function free<R>(value: R, ...temps: Tensor[]): R {
  drop(...temps);
  return value;
}

function drop(...temps: Tensor[]): void {
  for (const t of temps) t.dispose();
}

/**
 * The result of an elementwise op on bf16 operands under bf16 autocast: torch computes it in f32
 * and rounds it to bf16 (t is consumed). In f32 mode, t itself. Where diffusers' FLUX meets such ops
 * under autocast over f32 weights: activations of linear outputs, 1 + scale, gate products and the
 * residual adds (the residual stream is bf16 from x_embedder on), the temb sums.
 */
function autocastResult(ctx: BlockContext, t: Tensor): Tensor {
  return ctx.compute === 'bf16' ? free(roundBf16(t), t) : t;
}

/**
 * What all blocks of one model share: the constant 1 of the `1 + scale` modulation, and the
 * precision attention computes in (set by FluxTransformer.setComputeDtype).
 */
export interface BlockContext {
  one: Tensor;
  compute: ComputeDType;
}

/** A LoRA adapter on one Linear (see src/models/lora.ts): A [r, in], B [out, r], scale alpha / r. */
export interface LinearAdapter {
  a: Tensor;
  b: Tensor;
  scale: number;
}

export class Linear {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  /** When set: y = x W^T + b + scale * (x A^T) B^T (peft LoRA, dropout 0). */
  lora: LinearAdapter | null = null;
  /** 'bf16': autocast numerics through bf16 compute copies of the weights (see autocast.ts). */
  private copies: { weight: ComputeCopy; bias: ComputeCopy | null } | null = null;
  constructor(params: ParamMap, readonly name: string, bias = true) {
    this.weight = param(params, `${name}.weight`);
    this.bias = bias ? param(params, `${name}.bias`) : null;
  }

  get compute(): ComputeDType {
    return this.copies ? 'bf16' : 'f32';
  }

  set compute(dtype: ComputeDType) {
    if (dtype === this.compute) return;
    if (dtype === 'bf16') this.copies = { weight: new ComputeCopy(this.weight), bias: this.bias && new ComputeCopy(this.bias) };
    else this.releaseCopies();
  }

  /** Frees the bf16 compute copies (they are made again on the next bf16 forward). */
  releaseCopies(): void {
    this.copies?.weight.dispose();
    this.copies?.bias?.dispose();
    this.copies = null;
  }

  forward(x: Tensor): Tensor {
    const c = this.copies;
    const y = c ? linearBf16(x, c.weight, c.bias) : F.linear(x, this.weight, this.bias);
    if (!this.lora) return y;
    const { a, b, scale } = this.lora;
    if (!c) {
      const h = F.linear(x, a);
      const d = F.linear(h, b);
      const ds = F.scale(d, scale);
      return free(F.add(y, ds), y, h, d, ds);
    }
    // peft under autocast: both adapter products, the scaling and the sum are bf16 results.
    const h = linearBf16(x, a, null);
    const d = linearBf16(h, b, null);
    const ds = F.scale(d, scale);
    const dsr = roundBf16(ds);
    const sum = F.add(y, dsr);
    return free(roundBf16(sum), y, h, d, ds, dsr, sum);
  }
}

/** Every Linear reachable from `roots` (modules, arrays of them), by checkpoint name. */
export function findLinears(roots: unknown[]): Map<string, Linear> {
  const out = new Map<string, Linear>();
  const seen = new Set<unknown>();
  const walk = (o: unknown): void => {
    if (!o || typeof o !== 'object' || seen.has(o) || o instanceof Tensor) return;
    seen.add(o);
    if (o instanceof Linear) {
      out.set(o.name, o);
      return;
    }
    for (const v of Array.isArray(o) ? o : Object.values(o)) walk(v);
  };
  roots.forEach(walk);
  return out;
}

/** diffusers TimestepEmbedding / PixArtAlphaTextProjection(act 'silu'): linear_2(silu(linear_1(x))). */
export class MLPEmbedder {
  readonly linear1: Linear;
  readonly linear2: Linear;
  constructor(params: ParamMap, prefix: string, private readonly ctx: BlockContext) {
    this.linear1 = new Linear(params, `${prefix}.linear_1`);
    this.linear2 = new Linear(params, `${prefix}.linear_2`);
  }
  forward(x: Tensor): Tensor {
    const h = this.linear1.forward(x);
    const a = autocastResult(this.ctx, F.silu(h));
    return free(this.linear2.forward(a), h, a);
  }
}

/** x * (1 + scale) + shift; x [B, L, D], shift/scale [B, 1, D]. */
export function modulate(x: Tensor, shift: Tensor, scale: Tensor, ctx: BlockContext): Tensor {
  const s1 = autocastResult(ctx, F.add(scale, ctx.one));
  const xs = F.mul(x, s1);
  return free(F.add(xs, shift), s1, xs);
}

/** linear(silu(emb)) [B, n*D] cut into n chunks [B, 1, D] (views). */
function modulationChunks(lin: Linear, emb: Tensor, n: number, ctx: BlockContext): Tensor[] {
  const a = autocastResult(ctx, F.silu(emb));
  const m = lin.forward(a); // [B, n*D]
  const [b, nd] = m.shape as [number, number];
  const m3 = F.reshape(m, [b, n, nd / n]);
  return free(F.split(m3, new Array<number>(n).fill(1), 1), a, m, m3);
}

/**
 * AdaLayerNormZero (double blocks): 6 modulation vectors from temb; returns the modulated
 * LayerNorm(x) for attention and the other vectors (gate_msa, shift_mlp, scale_mlp, gate_mlp).
 */
export class AdaLayerNormZero {
  readonly linear: Linear;
  constructor(params: ParamMap, prefix: string, private readonly ctx: BlockContext) {
    this.linear = new Linear(params, `${prefix}.linear`);
  }
  forward(x: Tensor, temb: Tensor): { normed: Tensor; gateMsa: Tensor; shiftMlp: Tensor; scaleMlp: Tensor; gateMlp: Tensor } {
    const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp] = modulationChunks(this.linear, temb, 6, this.ctx) as [Tensor, Tensor, Tensor, Tensor, Tensor, Tensor];
    const n = F.layerNorm(x, null, null, 1e-6);
    const normed = modulate(n, shiftMsa, scaleMsa, this.ctx);
    drop(n, shiftMsa, scaleMsa);
    return { normed, gateMsa, shiftMlp, scaleMlp, gateMlp };
  }
}

/** AdaLayerNormZeroSingle (single blocks): shift, scale, gate. */
export class AdaLayerNormZeroSingle {
  readonly linear: Linear;
  constructor(params: ParamMap, prefix: string, private readonly ctx: BlockContext) {
    this.linear = new Linear(params, `${prefix}.linear`);
  }
  forward(x: Tensor, temb: Tensor): { normed: Tensor; gate: Tensor } {
    const [shift, scale, gate] = modulationChunks(this.linear, temb, 3, this.ctx) as [Tensor, Tensor, Tensor];
    const n = F.layerNorm(x, null, null, 1e-6);
    const normed = modulate(n, shift, scale, this.ctx);
    return free({ normed, gate }, n, shift, scale);
  }
}

/** AdaLayerNormContinuous (norm_out): emb -> (scale, shift) -- scale FIRST, unlike BFL's (shift, scale). */
export class AdaLayerNormContinuous {
  readonly linear: Linear;
  constructor(params: ParamMap, prefix: string, private readonly ctx: BlockContext) {
    this.linear = new Linear(params, `${prefix}.linear`);
  }
  forward(x: Tensor, temb: Tensor): Tensor {
    const [scale, shift] = modulationChunks(this.linear, temb, 2, this.ctx) as [Tensor, Tensor];
    const n = F.layerNorm(x, null, null, 1e-6);
    return free(modulate(n, shift, scale, this.ctx), n, scale, shift);
  }
}

/** FeedForward(activation 'gelu-approximate'): net.2(gelu_tanh(net.0.proj(x))), width mlp_ratio * D. */
export class FeedForward {
  readonly proj: Linear;
  readonly out: Linear;
  constructor(params: ParamMap, prefix: string, private readonly ctx: BlockContext) {
    this.proj = new Linear(params, `${prefix}.net.0.proj`);
    this.out = new Linear(params, `${prefix}.net.2`);
  }
  forward(x: Tensor): Tensor {
    const h = this.proj.forward(x);
    const a = autocastResult(this.ctx, F.gelu(h, 'tanh'));
    return free(this.out.forward(a), h, a);
  }
}

/**
 * One stream's q, k, v projections with QK RMSNorm (eps 1e-6, learned scale):
 * x [B, L, D] -> q, k, v [B, H, L, Dh] (q and k normalised).
 */
export class QKV {
  readonly q: Linear;
  readonly k: Linear;
  readonly v: Linear;
  readonly normQ: Tensor;
  readonly normK: Tensor;
  constructor(params: ParamMap, names: { q: string; k: string; v: string; normQ: string; normK: string }, readonly heads: number) {
    this.q = new Linear(params, names.q);
    this.k = new Linear(params, names.k);
    this.v = new Linear(params, names.v);
    this.normQ = param(params, `${names.normQ}.weight`);
    this.normK = param(params, `${names.normK}.weight`);
  }
  forward(x: Tensor): [Tensor, Tensor, Tensor] {
    return [this.project(this.q, x, this.normQ), this.project(this.k, x, this.normK), this.project(this.v, x, null)];
  }
  /** [B, L, D] -> linear -> [B, L, H, Dh] -> (RMSNorm over Dh) -> [B, H, L, Dh] (a view). */
  private project(lin: Linear, x: Tensor, norm: Tensor | null): Tensor {
    const [b, l] = x.shape as [number, number];
    const y = lin.forward(x);
    const y4 = F.reshape(y, [b, l, this.heads, y.shape[2]! / this.heads]);
    const n = norm ? F.rmsNorm(y4, norm, 1e-6) : y4;
    const out = F.permute(n, [0, 2, 1, 3]);
    return free(out, y, y4, ...(norm ? [n] : []));
  }
}

/** FluxTransformerBlock: separate weights per stream, one attention over [text; image]. */
export class DoubleStreamBlock {
  readonly norm1: AdaLayerNormZero;
  readonly norm1Context: AdaLayerNormZero;
  readonly imgQKV: QKV;
  readonly txtQKV: QKV;
  readonly toOut: Linear;
  readonly toAddOut: Linear;
  readonly ff: FeedForward;
  readonly ffContext: FeedForward;

  constructor(params: ParamMap, prefix: string, heads: number, private readonly ctx: BlockContext) {
    const a = `${prefix}.attn`;
    this.norm1 = new AdaLayerNormZero(params, `${prefix}.norm1`, ctx);
    this.norm1Context = new AdaLayerNormZero(params, `${prefix}.norm1_context`, ctx);
    this.imgQKV = new QKV(params, { q: `${a}.to_q`, k: `${a}.to_k`, v: `${a}.to_v`, normQ: `${a}.norm_q`, normK: `${a}.norm_k` }, heads);
    this.txtQKV = new QKV(params, { q: `${a}.add_q_proj`, k: `${a}.add_k_proj`, v: `${a}.add_v_proj`, normQ: `${a}.norm_added_q`, normK: `${a}.norm_added_k` }, heads);
    this.toOut = new Linear(params, `${a}.to_out.0`);
    this.toAddOut = new Linear(params, `${a}.to_add_out`);
    this.ff = new FeedForward(params, `${prefix}.ff`, ctx);
    this.ffContext = new FeedForward(params, `${prefix}.ff_context`, ctx);
  }

  /** img [B, Li, D], txt [B, Lt, D], temb [B, D] -> new [img, txt]. */
  forward(img: Tensor, txt: Tensor, temb: Tensor, pe: { cos: Tensor; sin: Tensor }): [Tensor, Tensor] {
    const lt = txt.shape[1]!, l = lt + img.shape[1]!;
    const imgMod = this.norm1.forward(img, temb);
    const txtMod = this.norm1Context.forward(txt, temb);

    // Joint attention over [text; image] (text first, as the RoPE ids are concatenated).
    const [iq, ik, iv] = this.imgQKV.forward(imgMod.normed);
    const [tq, tk, tv] = this.txtQKV.forward(txtMod.normed);
    drop(imgMod.normed, txtMod.normed);
    const q = F.cat([tq, iq], 2), k = F.cat([tk, ik], 2), v = F.cat([tv, iv], 2); // [B, H, L, Dh]
    drop(iq, ik, iv, tq, tk, tv);
    const attn = attention(q, k, v, pe, this.ctx.compute); // [B, L, D]
    drop(q, k, v);
    const txtAttn = F.slice(attn, 1, 0, lt), imgAttn = F.slice(attn, 1, lt, l);
    attn.dispose();

    const imgOut = this.stream(img, imgAttn, this.toOut, imgMod, this.ff);
    const txtOut = this.stream(txt, txtAttn, this.toAddOut, txtMod, this.ffContext);
    drop(imgAttn, txtAttn);
    return [imgOut, txtOut];
  }

  /** x + gate_msa * proj(attn), then + gate_mlp * ff(modulated LayerNorm) (one stream). */
  private stream(
    x: Tensor, attn: Tensor, proj: Linear,
    mod: { gateMsa: Tensor; shiftMlp: Tensor; scaleMlp: Tensor; gateMlp: Tensor }, ff: FeedForward,
  ): Tensor {
    const o = proj.forward(attn);
    const go = autocastResult(this.ctx, F.mul(mod.gateMsa, o));
    const h = autocastResult(this.ctx, F.add(x, go));
    drop(o, go, mod.gateMsa);
    const n = F.layerNorm(h, null, null, 1e-6);
    const nm = modulate(n, mod.shiftMlp, mod.scaleMlp, this.ctx);
    drop(n, mod.shiftMlp, mod.scaleMlp);
    const f = ff.forward(nm);
    const gf = autocastResult(this.ctx, F.mul(mod.gateMlp, f));
    const out = autocastResult(this.ctx, F.add(h, gf));
    return free(out, nm, f, gf, h, mod.gateMlp);
  }
}

/** FluxSingleTransformerBlock: one stream over [text; image], attention and MLP in parallel. */
export class SingleStreamBlock {
  readonly norm: AdaLayerNormZeroSingle;
  readonly qkv: QKV;
  readonly projMlp: Linear;
  readonly projOut: Linear;

  constructor(params: ParamMap, prefix: string, heads: number, private readonly ctx: BlockContext) {
    const a = `${prefix}.attn`;
    this.norm = new AdaLayerNormZeroSingle(params, `${prefix}.norm`, ctx);
    this.qkv = new QKV(params, { q: `${a}.to_q`, k: `${a}.to_k`, v: `${a}.to_v`, normQ: `${a}.norm_q`, normK: `${a}.norm_k` }, heads);
    this.projMlp = new Linear(params, `${prefix}.proj_mlp`);
    this.projOut = new Linear(params, `${prefix}.proj_out`);
  }

  /** x [B, L, D] -> x + gate * proj_out([attn(x'); gelu_tanh(proj_mlp(x'))]), x' the modulated norm. */
  forward(x: Tensor, temb: Tensor, pe: { cos: Tensor; sin: Tensor }): Tensor {
    const { normed, gate } = this.norm.forward(x, temb);
    const m = this.projMlp.forward(normed);
    const mlp = autocastResult(this.ctx, F.gelu(m, 'tanh')); // [B, L, mlp]
    const [q, k, v] = this.qkv.forward(normed);
    drop(m, normed);
    const attn = attention(q, k, v, pe, this.ctx.compute); // [B, L, D]
    drop(q, k, v);
    const h = F.cat([attn, mlp], 2); // [B, L, D + mlp]
    drop(attn, mlp);
    const o = this.projOut.forward(h);
    const go = autocastResult(this.ctx, F.mul(gate, o));
    return free(autocastResult(this.ctx, F.add(x, go)), h, o, go, gate);
  }
}

/** CombinedTimestep(Guidance)TextProjEmbeddings: temb = t_emb [+ guidance_emb] + text_emb(pooled). */
export class TimeTextEmbed {
  readonly timestepEmbedder: MLPEmbedder;
  readonly guidanceEmbedder: MLPEmbedder | null;
  readonly textEmbedder: MLPEmbedder;
  constructor(params: ParamMap, prefix: string, guidance: boolean, private readonly ctx: BlockContext) {
    this.timestepEmbedder = new MLPEmbedder(params, `${prefix}.timestep_embedder`, ctx);
    this.guidanceEmbedder = guidance ? new MLPEmbedder(params, `${prefix}.guidance_embedder`, ctx) : null;
    this.textEmbedder = new MLPEmbedder(params, `${prefix}.text_embedder`, ctx);
  }
  /** tProj, gProj: sinusoidal projections [B or 1, 256]; pooled [B, vecInDim] -> [B, D]. */
  forward(tProj: Tensor, gProj: Tensor | null, pooled: Tensor): Tensor {
    let temb = this.timestepEmbedder.forward(tProj);
    if (this.guidanceEmbedder && gProj) {
      const g = this.guidanceEmbedder.forward(gProj);
      temb = free(autocastResult(this.ctx, F.add(temb, g)), temb, g);
    }
    const p = this.textEmbedder.forward(pooled);
    return free(autocastResult(this.ctx, F.add(temb, p)), temb, p);
  }
}
