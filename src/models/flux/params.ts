// FLUX.1 transformer hyper-parameters (BFL's `FluxParams`), read from a diffusers
// `transformer/config.json` (FluxTransformer2DModel), and the full list of parameter names and shapes
// in the diffusers checkpoint layout, which is also the naming of our model (no rename table).

/** A diffusers FluxTransformer2DModel config.json (only the fields the model reads). */
export interface FluxConfig {
  _class_name?: string;
  patch_size?: number;
  in_channels?: number;
  out_channels?: number | null;
  num_layers?: number;
  num_single_layers?: number;
  attention_head_dim?: number;
  num_attention_heads?: number;
  joint_attention_dim?: number;
  pooled_projection_dim?: number;
  guidance_embeds?: boolean;
  axes_dims_rope?: number[];
  [key: string]: unknown;
}

export interface FluxParams {
  /** Channels of a packed latent token (16 latent channels x 2x2 patch = 64). */
  inChannels: number;
  /** Channels the model predicts per token (before patch_size^2). */
  outChannels: number;
  patchSize: number;
  /** Width of both streams, numHeads * headDim (3072 for FLUX.1). */
  hiddenSize: number;
  numHeads: number;
  headDim: number;
  /** Double-stream blocks (diffusers `num_layers`, 19 for FLUX.1). */
  depth: number;
  /** Single-stream blocks (diffusers `num_single_layers`, 38 for FLUX.1). */
  depthSingleBlocks: number;
  /** Width of the T5 sequence embedding (diffusers `joint_attention_dim`, 4096). */
  contextInDim: number;
  /** Width of the pooled CLIP embedding (diffusers `pooled_projection_dim`, 768). */
  vecInDim: number;
  /** MLP width / hidden width (fixed at 4 in diffusers' FeedForward and single blocks). */
  mlpRatio: number;
  /** RoPE dimensions per position axis; they add up to headDim. */
  axesDim: number[];
  theta: number;
  /** FLUX.1-dev is guidance-distilled (guidance embedder); schnell is not. */
  guidanceEmbed: boolean;
}

/** diffusers' FluxTransformer2DModel defaults: what `from_pretrained` fills in for missing keys. */
const DIFFUSERS_DEFAULTS = {
  patch_size: 1,
  in_channels: 64,
  num_layers: 19,
  num_single_layers: 38,
  attention_head_dim: 128,
  num_attention_heads: 24,
  joint_attention_dim: 4096,
  pooled_projection_dim: 768,
  guidance_embeds: false,
  axes_dims_rope: [16, 56, 56],
};

function positiveInt(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new Error(`flux config: ${name} must be a positive integer, got ${JSON.stringify(v)}`);
  return v;
}

/** FluxParams from a diffusers config.json object (missing keys take diffusers' defaults). */
export function fluxParamsFromConfig(config: FluxConfig): FluxParams {
  const c = { ...DIFFUSERS_DEFAULTS, ...config };
  if (c._class_name !== undefined && c._class_name !== 'FluxTransformer2DModel') {
    throw new Error(`flux config: _class_name is ${JSON.stringify(c._class_name)}, expected "FluxTransformer2DModel"`);
  }
  const numHeads = positiveInt('num_attention_heads', c.num_attention_heads);
  const headDim = positiveInt('attention_head_dim', c.attention_head_dim);
  const inChannels = positiveInt('in_channels', c.in_channels);
  const axesDim = c.axes_dims_rope;
  if (!Array.isArray(axesDim) || axesDim.length === 0) throw new Error(`flux config: axes_dims_rope must be a list, got ${JSON.stringify(axesDim)}`);
  axesDim.forEach((d, i) => {
    if (positiveInt(`axes_dims_rope[${i}]`, d) % 2 !== 0) throw new Error(`flux config: axes_dims_rope[${i}] = ${d} is odd (RoPE rotates pairs)`);
  });
  const ropeDim = axesDim.reduce((a, b) => a + b, 0);
  if (ropeDim !== headDim) throw new Error(`flux config: axes_dims_rope ${JSON.stringify(axesDim)} add up to ${ropeDim}, but attention_head_dim is ${headDim}`);
  if (typeof c.guidance_embeds !== 'boolean') throw new Error(`flux config: guidance_embeds must be true or false, got ${JSON.stringify(c.guidance_embeds)}`);
  return {
    inChannels,
    outChannels: c.out_channels == null ? inChannels : positiveInt('out_channels', c.out_channels),
    patchSize: positiveInt('patch_size', c.patch_size),
    hiddenSize: numHeads * headDim,
    numHeads,
    headDim,
    depth: c.num_layers === 0 ? 0 : positiveInt('num_layers', c.num_layers),
    depthSingleBlocks: c.num_single_layers === 0 ? 0 : positiveInt('num_single_layers', c.num_single_layers),
    contextInDim: positiveInt('joint_attention_dim', c.joint_attention_dim),
    vecInDim: positiveInt('pooled_projection_dim', c.pooled_projection_dim),
    mlpRatio: 4,
    axesDim: [...axesDim],
    theta: 10000,
    guidanceEmbed: c.guidance_embeds,
  };
}

/** The diffusers config.json for these params (as `save_config` writes it). */
export function fluxConfigFromParams(p: FluxParams): FluxConfig {
  return {
    _class_name: 'FluxTransformer2DModel',
    _diffusers_version: '0.32.0',
    attention_head_dim: p.headDim,
    axes_dims_rope: [...p.axesDim],
    guidance_embeds: p.guidanceEmbed,
    in_channels: p.inChannels,
    joint_attention_dim: p.contextInDim,
    num_attention_heads: p.numHeads,
    num_layers: p.depth,
    num_single_layers: p.depthSingleBlocks,
    out_channels: p.outChannels,
    patch_size: p.patchSize,
    pooled_projection_dim: p.vecInDim,
  };
}

/** Width of the MLPs (int(dim * mlp_ratio), as diffusers computes it). */
export function mlpHidden(p: FluxParams): number {
  return Math.trunc(p.hiddenSize * p.mlpRatio);
}

/** Input width of the sinusoidal timestep / guidance projection (diffusers `Timesteps(256, ...)`). */
export const TIME_PROJ_DIM = 256;

/**
 * Every parameter of FluxTransformer2DModel with its shape, in `named_parameters()` order, named
 * exactly as the diffusers checkpoint keys (our model's parameter names).
 */
export function fluxParameterShapes(p: FluxParams): [string, number[]][] {
  const d = p.hiddenSize, mlp = mlpHidden(p), dh = p.headDim;
  const out: [string, number[]][] = [];
  const linear = (name: string, inF: number, outF: number) => out.push([`${name}.weight`, [outF, inF]], [`${name}.bias`, [outF]]);
  const norm = (name: string) => out.push([`${name}.weight`, [dh]]);

  linear('time_text_embed.timestep_embedder.linear_1', TIME_PROJ_DIM, d);
  linear('time_text_embed.timestep_embedder.linear_2', d, d);
  if (p.guidanceEmbed) {
    linear('time_text_embed.guidance_embedder.linear_1', TIME_PROJ_DIM, d);
    linear('time_text_embed.guidance_embedder.linear_2', d, d);
  }
  linear('time_text_embed.text_embedder.linear_1', p.vecInDim, d);
  linear('time_text_embed.text_embedder.linear_2', d, d);
  linear('context_embedder', p.contextInDim, d);
  linear('x_embedder', p.inChannels, d);

  for (let i = 0; i < p.depth; i++) {
    const b = `transformer_blocks.${i}`;
    linear(`${b}.norm1.linear`, d, 6 * d);
    linear(`${b}.norm1_context.linear`, d, 6 * d);
    norm(`${b}.attn.norm_q`);
    norm(`${b}.attn.norm_k`);
    linear(`${b}.attn.to_q`, d, d);
    linear(`${b}.attn.to_k`, d, d);
    linear(`${b}.attn.to_v`, d, d);
    linear(`${b}.attn.add_k_proj`, d, d);
    linear(`${b}.attn.add_v_proj`, d, d);
    linear(`${b}.attn.add_q_proj`, d, d);
    linear(`${b}.attn.to_out.0`, d, d);
    linear(`${b}.attn.to_add_out`, d, d);
    norm(`${b}.attn.norm_added_q`);
    norm(`${b}.attn.norm_added_k`);
    linear(`${b}.ff.net.0.proj`, d, mlp);
    linear(`${b}.ff.net.2`, mlp, d);
    linear(`${b}.ff_context.net.0.proj`, d, mlp);
    linear(`${b}.ff_context.net.2`, mlp, d);
  }
  for (let i = 0; i < p.depthSingleBlocks; i++) {
    const b = `single_transformer_blocks.${i}`;
    linear(`${b}.norm.linear`, d, 3 * d);
    linear(`${b}.proj_mlp`, d, mlp);
    linear(`${b}.proj_out`, d + mlp, d);
    norm(`${b}.attn.norm_q`);
    norm(`${b}.attn.norm_k`);
    linear(`${b}.attn.to_q`, d, d);
    linear(`${b}.attn.to_k`, d, d);
    linear(`${b}.attn.to_v`, d, d);
  }
  linear('norm_out.linear', d, 2 * d);
  linear('proj_out', d, p.patchSize * p.patchSize * p.outChannels);
  return out;
}

/** Number of parameters of the model. */
export function fluxParameterCount(p: FluxParams): number {
  return fluxParameterShapes(p).reduce((s, [, shape]) => s + shape.reduce((a, b) => a * b, 1), 0);
}
