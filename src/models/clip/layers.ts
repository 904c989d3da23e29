// The pieces both CLIP towers share: the pre-norm residual attention block (open_clip's
// ResidualAttentionBlock, transformers' CLIPEncoderLayer), L2 normalisation, and the parameter store
// that uploads checkpoint tensors under their checkpoint names.
//
// Forward only: the rewards never need gradients, so these call the plain tensor ops (src/tensor/ops.ts),
// which also gives them the matmul's fused GELU epilogue. Every function disposes its temporaries and
// returns one new tensor the caller owns.
import type { Device } from '../../device/device.ts';
import * as T from '../../tensor/ops.ts';
import { Tensor } from '../../tensor/tensor.ts';

/** GELU (erf) is nn.GELU / HF "gelu"; tanh is HF "gelu_new" / "gelu_pytorch_tanh"; quick_gelu is x * sigmoid(1.702 x). */
export type ClipActivation = 'gelu_erf' | 'gelu_tanh' | 'quick_gelu';

/** The sizes every transformer tower has. */
export interface TowerParams {
  /** D */
  width: number;
  layers: number;
  /** H; Dh = D / H */
  heads: number;
  /** hidden width of the MLP */
  mlpWidth: number;
  act: ClipActivation;
  /** LayerNorm epsilon */
  eps: number;
}

/** A float32 tensor with its shape, read from a checkpoint. */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}

/** Named float32 tensors (a state_dict), read one at a time. */
export interface StateDict {
  names(): string[];
  has(name: string): boolean;
  /** `expectShape` is what the model wants; a synthetic source (random weights) may use it, a file ignores it. */
  read(name: string, expectShape?: readonly number[]): HostTensor;
}

/**
 * Uploads checkpoint tensors by name, checking shapes, and remembers which were used so that a loader can
 * refuse a checkpoint with missing or unexpected keys (torch's strict load_state_dict).
 */
export class ParamStore {
  readonly used = new Set<string>();
  /** Every tensor handed out, so that a load that fails half-way can release them all. */
  private readonly uploaded: Tensor[] = [];
  constructor(readonly device: Device, readonly source: StateDict, readonly label = 'checkpoint') {}

  /** Registers a tensor derived from loaded ones (a fused weight) for releaseAll. */
  track(t: Tensor): Tensor {
    this.uploaded.push(t);
    return t;
  }

  /** Disposes every tensor this store handed out (after a failed load; disposing twice is harmless). */
  releaseAll(): void {
    this.uploaded.forEach((t) => t.dispose());
    this.uploaded.length = 0;
  }

  /** The tensor `name` of shape `shape`, uploaded as float32. */
  get(name: string, shape: readonly number[]): Tensor {
    if (!this.source.has(name)) throw new Error(`${this.label}: missing tensor '${name}' (expected shape [${shape}])`);
    const t = this.source.read(name, shape);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`${this.label}: tensor '${name}' has shape [${t.shape}], the config expects [${shape}]`);
    }
    this.used.add(name);
    return this.track(Tensor.from(this.device, t.data, t.shape, 'f32'));
  }

  /** Checkpoint names that no parameter took, except those matching `ignore`. */
  unused(ignore: (name: string) => boolean = () => false): string[] {
    return this.source.names().filter((n) => !this.used.has(n) && !ignore(n));
  }
}

/** x / max(||x||_2, eps) over the last axis (torch.nn.functional.normalize). x: [N, E] -> [N, E]. */
export function l2Normalize(x: Tensor, eps = 1e-12): Tensor {
  const sq = T.mul(x, x);
  const ss = T.sum(sq, -1, true); // [N, 1]
  const norm = T.sqrt(ss);
  const denom = T.clamp(norm, eps, 3.4028234663852886e38);
  const out = T.div(x, denom);
  [sq, ss, norm, denom].forEach((t) => t.dispose());
  return out;
}

/** Linear layer weights in nn.Linear layout: w [N, K], b [N] or null. */
export interface LinearW {
  w: Tensor;
  b: Tensor | null;
}

export interface NormW {
  w: Tensor;
  b: Tensor;
}

function disposeAll(...ts: (Tensor | null | undefined)[]): void {
  ts.forEach((t) => t?.dispose());
}

/**
 * A pre-norm residual block:
 *   x = x + ls_1 * out_proj(attention(qkv(ln_1(x))))
 *   x = x + ls_2 * c_proj(act(c_fc(ln_2(x))))
 * q, k, v are one fused projection [3D, D] (open_clip's in_proj_weight; Hugging Face's q/k/v_proj
 * concatenated at load time), attention scale 1/sqrt(Dh).
 */
export class ResidualBlock {
  constructor(
    readonly p: TowerParams,
    readonly ln1: NormW,
    /** [3D, D], [3D] */
    readonly qkv: LinearW,
    /** [D, D], [D] */
    readonly out: LinearW,
    readonly ln2: NormW,
    /** [mlp, D], [mlp] */
    readonly fc1: LinearW,
    /** [D, mlp], [D] */
    readonly fc2: LinearW,
    /** LayerScale gammas [D] (open_clip ls_init_value), or null. */
    readonly gamma1: Tensor | null = null,
    readonly gamma2: Tensor | null = null,
  ) {}

  /** open_clip `<prefix>.ln_1`, `.attn.in_proj_weight`, `.attn.out_proj`, `.ln_2`, `.mlp.c_fc`, `.mlp.c_proj`, `.ls_1.gamma`, `.ls_2.gamma`. */
  static openClip(store: ParamStore, prefix: string, p: TowerParams, layerScale: boolean): ResidualBlock {
    const d = p.width, m = p.mlpWidth;
    const lin = (name: string, n: number, k: number): LinearW => ({ w: store.get(`${prefix}.${name}.weight`, [n, k]), b: store.get(`${prefix}.${name}.bias`, [n]) });
    const norm = (name: string): NormW => ({ w: store.get(`${prefix}.${name}.weight`, [d]), b: store.get(`${prefix}.${name}.bias`, [d]) });
    return new ResidualBlock(
      p,
      norm('ln_1'),
      { w: store.get(`${prefix}.attn.in_proj_weight`, [3 * d, d]), b: store.get(`${prefix}.attn.in_proj_bias`, [3 * d]) },
      lin('attn.out_proj', d, d),
      norm('ln_2'),
      lin('mlp.c_fc', m, d),
      lin('mlp.c_proj', d, m),
      layerScale ? store.get(`${prefix}.ls_1.gamma`, [d]) : null,
      layerScale ? store.get(`${prefix}.ls_2.gamma`, [d]) : null,
    );
  }

  /** Hugging Face CLIPEncoderLayer `<prefix>.layer_norm1`, `.self_attn.{q,k,v,out}_proj`, `.layer_norm2`, `.mlp.fc1`, `.mlp.fc2`. */
  static hf(store: ParamStore, prefix: string, p: TowerParams): ResidualBlock {
    const d = p.width, m = p.mlpWidth;
    const lin = (name: string, n: number, k: number): LinearW => ({ w: store.get(`${prefix}.${name}.weight`, [n, k]), b: store.get(`${prefix}.${name}.bias`, [n]) });
    const norm = (name: string): NormW => ({ w: store.get(`${prefix}.${name}.weight`, [d]), b: store.get(`${prefix}.${name}.bias`, [d]) });
    const [q, k, v] = ['q_proj', 'k_proj', 'v_proj'].map((n) => lin(`self_attn.${n}`, d, d)) as [LinearW, LinearW, LinearW];
    const qkv: LinearW = { w: store.track(T.cat([q.w, k.w, v.w], 0)), b: store.track(T.cat([q.b!, k.b!, v.b!], 0)) };
    disposeAll(q.w, q.b, k.w, k.b, v.w, v.b);
    return new ResidualBlock(p, norm('layer_norm1'), qkv, lin('self_attn.out_proj', d, d), norm('layer_norm2'), lin('mlp.fc1', m, d), lin('mlp.fc2', d, m));
  }

  /** x: [B, L, D] -> [B, L, D]. */
  forward(x: Tensor, causal: boolean): Tensor {
    const h = T.layerNorm(x, this.ln1.w, this.ln1.b, this.p.eps);
    const a = selfAttention(h, this.qkv, this.out, this.p.heads, causal);
    h.dispose();
    const x1 = residual(x, a, this.gamma1);
    a.dispose();
    const h2 = T.layerNorm(x1, this.ln2.w, this.ln2.b, this.p.eps);
    const m = mlp(h2, this.fc1, this.fc2, this.p.act);
    h2.dispose();
    const x2 = residual(x1, m, this.gamma2);
    disposeAll(x1, m);
    return x2;
  }

  dispose(): void {
    disposeAll(this.ln1.w, this.ln1.b, this.qkv.w, this.qkv.b, this.out.w, this.out.b, this.ln2.w, this.ln2.b,
      this.fc1.w, this.fc1.b, this.fc2.w, this.fc2.b, this.gamma1, this.gamma2);
  }
}

/** x + gamma * y (gamma null: x + y). */
function residual(x: Tensor, y: Tensor, gamma: Tensor | null): Tensor {
  if (!gamma) return T.add(x, y);
  const s = T.mul(y, gamma);
  const out = T.add(x, s);
  s.dispose();
  return out;
}

/** Multi-head self-attention with a fused qkv projection. x: [B, L, D] -> [B, L, D]. */
export function selfAttention(x: Tensor, qkvW: LinearW, outW: LinearW, heads: number, causal: boolean): Tensor {
  const [b, l, d] = x.shape as [number, number, number];
  if (d % heads !== 0) throw new Error(`attention: width ${d} is not a multiple of ${heads} heads`);
  const dh = d / heads;
  const qkv = T.linear(x, qkvW.w, qkvW.b); // [B, L, 3D]
  const r = qkv.reshape([b, l, 3, heads, dh]);
  const split = r.permute([2, 0, 3, 1, 4]); // [3, B, H, L, Dh] view
  const parts = [0, 1, 2].map((i) => {
    const s = split.slice(0, i, i + 1);
    const q = s.squeeze(0);
    s.dispose();
    return q;
  }) as [Tensor, Tensor, Tensor];
  const att = T.attention(parts[0], parts[1], parts[2], { causal, scale: 1 / Math.sqrt(dh) }); // [B, H, L, Dh]
  disposeAll(qkv, r, split, ...parts);
  const perm = att.permute([0, 2, 1, 3]); // [B, L, H, Dh] view
  const merged = perm.reshape([b, l, d]); // dense copy
  disposeAll(att, perm);
  const out = T.linear(merged, outW.w, outW.b);
  merged.dispose();
  return out;
}

/** c_proj(act(c_fc(x))); GELU is fused into the first matmul, quick-GELU runs as its own op. */
export function mlp(x: Tensor, fc1: LinearW, fc2: LinearW, act: ClipActivation): Tensor {
  let h: Tensor;
  if (act === 'quick_gelu') {
    const pre = T.linear(x, fc1.w, fc1.b);
    h = T.quickGelu(pre);
    pre.dispose();
  } else {
    h = T.linear(x, fc1.w, fc1.b, act);
  }
  const out = T.linear(h, fc2.w, fc2.b);
  h.dispose();
  return out;
}

/** Stores a retained view of `t` under `name` when a capture map is given (the caller disposes it). */
export function capture(map: Map<string, Tensor> | undefined, name: string, t: Tensor): void {
  if (map) {
    map.get(name)?.dispose();
    map.set(name, t.view(t.shape, t.strides));
  }
}
