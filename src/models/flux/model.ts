// FLUX.1 MMDiT, computing what diffusers v0.32.0 FluxTransformer2DModel.forward computes:
//
//   img = x_embedder(hidden_states)                     [B, Li, D]
//   temb = time_text_embed(t*1000, [g*1000,] pooled)    [B, D]
//   txt = context_embedder(encoder_hidden_states)       [B, Lt, D]
//   pe = RoPE(cat(txt_ids, img_ids))                    [Lt+Li, Dh]
//   img, txt = double_block_i(img, txt, temb, pe)       (num_layers)
//   x = cat(txt, img); x = single_block_i(x, temb, pe)  (num_single_layers)
//   out = proj_out(norm_out(x[:, Lt:], temb))           [B, Li, patch^2 * out_channels]
import type { ComputeDType } from '../../autograd/autocast.ts';
import * as F from '../../autograd/functional.ts';
import { checkpoint } from '../../autograd/tape.ts';
import type { Device } from '../../device/device.ts';
import { Tensor } from '../../tensor/tensor.ts';
import {
  AdaLayerNormContinuous, type BlockContext, DoubleStreamBlock, Linear, type LinearAdapter, findLinears, type ParamMap, SingleStreamBlock, TimeTextEmbed,
} from './layers.ts';
import { type RopePrecision, ropeTables, ropeTensors, timestepProjection } from './math.ts';
import { type FluxParams, TIME_PROJ_DIM, fluxParameterShapes } from './params.ts';

export interface FluxInputs {
  /** Packed latents [B, Li, inChannels] (see pack.ts). */
  hiddenStates: Tensor;
  /** T5 embeddings [B, Lt, contextInDim]. */
  encoderHiddenStates: Tensor;
  /** Pooled CLIP embedding [B, vecInDim]. */
  pooledProjections: Tensor;
  /** sigma per sample (length B, or 1 shared), as DanceGRPO passes `timesteps / 1000`; the model multiplies by 1000. */
  timestep: ArrayLike<number>;
  /** Guidance scale (length B or 1), required exactly when the model has a guidance embedder (dev). */
  guidance?: ArrayLike<number> | null;
  /** Text position ids [Lt, axes] row-major (zeros for FLUX.1). */
  txtIds: ArrayLike<number>;
  /** Image position ids [Li, axes] row-major, rows (0, row, col) (see pack.ts latentImageIds). */
  imgIds: ArrayLike<number>;
}

export interface FluxForwardOptions {
  /** Precomputed RoPE tables for cat(txtIds, imgIds) ([Lt+Li, Dh]); built from the ids when absent. */
  rope?: { cos: Tensor; sin: Tensor };
  /** Precision of the RoPE frequencies when built here (default 'f32', see math.ts). */
  ropePrecision?: RopePrecision;
  /**
   * Called with intermediate activations under the names of the golden `intermediates` file
   * (x_embedder, time_text_embed, context_embedder, transformer_blocks.i.{hidden_states,
   * encoder_hidden_states}, single_transformer_blocks.i, norm_out). The tensor is disposed after the
   * call returns: keep a view (`t.contiguous()`) to use it later.
   */
  capture?: (name: string, t: Tensor) => void;
  /** Overrides the model's gradientCheckpointing for this call. */
  gradientCheckpointing?: boolean;
}

/** What FluxTransformer.setLora takes (LoraAdapters in src/models/lora.ts fits). */
export interface FluxLora {
  get(moduleName: string): LinearAdapter | undefined;
  /** Every module name the adapters are for. */
  moduleNames(): string[];
  /** The adapter tensors of modules whose name starts with `prefix`. */
  tensorsUnder(prefix: string): Tensor[];
}

export class FluxTransformer {
  readonly timeTextEmbed: TimeTextEmbed;
  readonly contextEmbedder: Linear;
  readonly xEmbedder: Linear;
  readonly transformerBlocks: DoubleStreamBlock[];
  readonly singleTransformerBlocks: SingleStreamBlock[];
  readonly normOut: AdaLayerNormContinuous;
  readonly projOut: Linear;
  private readonly ctx: BlockContext;
  /**
   * Recompute each transformer block in backward instead of keeping its activations (autograd
   * checkpoint per block; diffusers' gradient_checkpointing).
   */
  gradientCheckpointing = false;
  private lora: FluxLora | null = null;
  private baseRequiresGrad: Map<Tensor, boolean> | null = null;

  /** Takes ownership of `params` (diffusers names, see fluxParameterShapes); dispose() frees them. */
  constructor(readonly device: Device, readonly p: FluxParams, readonly params: ParamMap) {
    const want = fluxParameterShapes(p);
    const problems: string[] = [];
    for (const [name, shape] of want) {
      const t = params.get(name);
      if (!t) problems.push(`missing ${name} [${shape}]`);
      else if (t.shape.join(',') !== shape.join(',')) problems.push(`${name}: shape [${t.shape}], expected [${shape}]`);
      else if (t.device !== device) problems.push(`${name}: on device ${t.device.name}, expected ${device.name}`);
    }
    const known = new Set(want.map(([n]) => n));
    for (const name of params.keys()) if (!known.has(name)) problems.push(`unexpected ${name}`);
    if (problems.length) throw new Error(`FluxTransformer: parameters do not fit the config:\n  ${problems.join('\n  ')}`);

    this.ctx = { one: Tensor.full(device, [1], 1), compute: 'f32' };
    this.timeTextEmbed = new TimeTextEmbed(params, 'time_text_embed', p.guidanceEmbed, this.ctx);
    this.contextEmbedder = new Linear(params, 'context_embedder');
    this.xEmbedder = new Linear(params, 'x_embedder');
    this.transformerBlocks = Array.from({ length: p.depth }, (_, i) => new DoubleStreamBlock(params, `transformer_blocks.${i}`, p.numHeads, this.ctx));
    this.singleTransformerBlocks = Array.from({ length: p.depthSingleBlocks }, (_, i) => new SingleStreamBlock(params, `single_transformer_blocks.${i}`, p.numHeads, this.ctx));
    this.normOut = new AdaLayerNormContinuous(params, 'norm_out', this.ctx);
    this.projOut = new Linear(params, 'proj_out');
  }

  /** Every Linear module of the model, by its checkpoint name. */
  linears(): Map<string, Linear> {
    return findLinears([this.timeTextEmbed, this.contextEmbedder, this.xEmbedder, this.transformerBlocks, this.singleTransformerBlocks, this.normOut, this.projOut]);
  }

  /**
   * Attaches LoRA adapters (null detaches them): every Linear with an adapter adds
   * scale * (x A^T) B^T. While attached, the base parameters have requiresGrad false (only the
   * adapters train); detaching restores their previous flags.
   */
  setLora(lora: FluxLora | null): void {
    const linears = this.linears();
    const unknown = lora?.moduleNames().filter((name) => !linears.has(name)) ?? [];
    if (unknown.length) throw new Error(`LoRA adapters for modules this model does not have: ${unknown.slice(0, 10).join(', ')}${unknown.length > 10 ? ` (+${unknown.length - 10} more)` : ''}`);
    for (const lin of linears.values()) lin.lora = lora?.get(lin.name) ?? null;
    if (lora && !this.baseRequiresGrad) {
      this.baseRequiresGrad = new Map([...this.params.values()].map((t) => [t, t.requiresGrad]));
      for (const t of this.params.values()) t.requiresGrad = false;
    } else if (!lora && this.baseRequiresGrad) {
      for (const [t, r] of this.baseRequiresGrad) t.requiresGrad = r;
      this.baseRequiresGrad = null;
    }
    this.lora = lora;
  }

  /**
   * 'bf16': compute as torch.autocast(bfloat16) does around f32 master weights: linears and
   * attention round their operands and results to bf16 (see src/autograd/autocast.ts), through
   * bf16 compute copies of the weights (2 bytes per parameter, kept until set back to 'f32').
   * 'f32' (the default): everything in float32.
   */
  setComputeDtype(dtype: ComputeDType): void {
    this.ctx.compute = dtype;
    for (const lin of this.linears().values()) lin.compute = dtype;
  }

  get computeDtype(): ComputeDType {
    return this.ctx.compute;
  }

  /** The block's trainable tensors (its parameters and adapters), for checkpoint(). */
  private blockTensors(prefix: string): Tensor[] {
    const out = [...this.params].filter(([n]) => n.startsWith(prefix)).map(([, t]) => t);
    return this.lora ? [...out, ...this.lora.tensorsUnder(prefix)] : out;
  }

  /** RoPE tables of cat(txtIds, imgIds) on this model's device (the caller disposes them). */
  rope(txtIds: ArrayLike<number>, imgIds: ArrayLike<number>, precision: RopePrecision = 'f32'): { cos: Tensor; sin: Tensor } {
    const ids = new Float64Array(txtIds.length + imgIds.length);
    ids.set(Array.from(txtIds), 0);
    ids.set(Array.from(imgIds), txtIds.length);
    return ropeTensors(this.device, ropeTables(ids, this.p.axesDim, this.p.theta, precision));
  }

  /** The velocity prediction [B, Li, patch^2 * outChannels]. */
  forward(x: FluxInputs, opts: FluxForwardOptions = {}): Tensor {
    const [b, li] = x.hiddenStates.shape as [number, number];
    const lt = x.encoderHiddenStates.shape[1]!;
    this.checkInputs(x, b, li, lt);
    const capture = opts.capture ?? (() => {});

    const img = this.xEmbedder.forward(x.hiddenStates);
    capture('x_embedder', img);
    const temb = this.timeEmbedding(x);
    capture('time_text_embed', temb);
    const txt = this.contextEmbedder.forward(x.encoderHiddenStates);
    capture('context_embedder', txt);
    const pe = opts.rope ?? this.rope(x.txtIds, x.imgIds, opts.ropePrecision);

    const ckpt = opts.gradientCheckpointing ?? this.gradientCheckpointing;
    let [imgH, txtH] = [img, txt];
    this.transformerBlocks.forEach((block, i) => {
      let ni: Tensor, nt: Tensor;
      if (ckpt) {
        // checkpoint() takes one output: [txt; img] along the sequence, split by recorded slices.
        // The RoPE tables go in as (constant) inputs so the tape keeps them alive until backward.
        const joint = checkpoint(([im, tx, te, cos, sin]) => {
          const [a, b] = block.forward(im!, tx!, te!, { cos: cos!, sin: sin! });
          const c = F.cat([b, a], 1);
          a.dispose();
          b.dispose();
          return c;
        }, [imgH, txtH, temb, pe.cos, pe.sin], this.blockTensors(`transformer_blocks.${i}.`));
        nt = F.slice(joint, 1, 0, lt);
        ni = F.slice(joint, 1, lt, lt + li);
        joint.dispose();
      } else [ni, nt] = block.forward(imgH, txtH, temb, pe);
      imgH.dispose();
      txtH.dispose();
      [imgH, txtH] = [ni, nt];
      capture(`transformer_blocks.${i}.encoder_hidden_states`, txtH);
      capture(`transformer_blocks.${i}.hidden_states`, imgH);
    });

    let h = F.cat([txtH, imgH], 1); // [B, Lt+Li, D]
    imgH.dispose();
    txtH.dispose();
    this.singleTransformerBlocks.forEach((block, i) => {
      const next = ckpt
        ? checkpoint(([x, te, cos, sin]) => block.forward(x!, te!, { cos: cos!, sin: sin! }), [h, temb, pe.cos, pe.sin], this.blockTensors(`single_transformer_blocks.${i}.`))
        : block.forward(h, temb, pe);
      h.dispose();
      h = next;
      capture(`single_transformer_blocks.${i}`, h);
    });

    const imgOut = F.slice(h, 1, lt, lt + li); // image tokens
    h.dispose();
    const n = this.normOut.forward(imgOut, temb);
    capture('norm_out', n);
    const out = this.projOut.forward(n);
    for (const t of [imgOut, n, temb]) t.dispose();
    if (!opts.rope) {
      pe.cos.dispose();
      pe.sin.dispose();
    }
    return out;
  }

  /** temb [B, D] from timestep*1000, guidance*1000 (dev) and the pooled text embedding. */
  private timeEmbedding(x: FluxInputs): Tensor {
    // timestep.to(float32) * 1000, then the float32 sinusoidal projection (host, see math.ts).
    const scaled = (v: ArrayLike<number>) => Array.from(v, (t) => Math.fround(Math.fround(t) * 1000));
    const tProj = Tensor.from(this.device, timestepProjection(scaled(x.timestep), TIME_PROJ_DIM), [x.timestep.length, TIME_PROJ_DIM]);
    const g = x.guidance;
    const gProj = g ? Tensor.from(this.device, timestepProjection(scaled(g), TIME_PROJ_DIM), [g.length, TIME_PROJ_DIM]) : null;
    const temb = this.timeTextEmbed.forward(tProj, gProj, x.pooledProjections);
    tProj.dispose();
    gProj?.dispose();
    return temb;
  }

  private checkInputs(x: FluxInputs, b: number, li: number, lt: number): void {
    const p = this.p, axes = p.axesDim.length;
    const bad: string[] = [];
    const shape = (t: Tensor, want: number[], name: string) => {
      if (t.shape.join(',') !== want.join(',')) bad.push(`${name} is [${t.shape}], expected [${want}]`);
    };
    if (x.hiddenStates.rank !== 3) bad.push(`hidden_states is [${x.hiddenStates.shape}], expected [B, tokens, ${p.inChannels}]`);
    else shape(x.hiddenStates, [b, li, p.inChannels], 'hidden_states');
    shape(x.encoderHiddenStates, [b, lt, p.contextInDim], 'encoder_hidden_states');
    shape(x.pooledProjections, [b, p.vecInDim], 'pooled_projections');
    if (x.timestep.length !== b && x.timestep.length !== 1) bad.push(`timestep has ${x.timestep.length} values for batch ${b}`);
    if (p.guidanceEmbed && !x.guidance) bad.push('guidance is required: the model has a guidance embedder (guidance_embeds)');
    if (!p.guidanceEmbed && x.guidance) bad.push('guidance was given, but the model has no guidance embedder (guidance_embeds false)');
    if (x.guidance && x.guidance.length !== b && x.guidance.length !== 1) bad.push(`guidance has ${x.guidance.length} values for batch ${b}`);
    if (x.txtIds.length !== lt * axes) bad.push(`txt_ids has ${x.txtIds.length} values, expected ${lt} x ${axes}`);
    if (x.imgIds.length !== li * axes) bad.push(`img_ids has ${x.imgIds.length} values, expected ${li} x ${axes}`);
    if (bad.length) throw new Error(`FluxTransformer.forward: ${bad.join('; ')}`);
  }

  /** Parameters by checkpoint name (for the optimiser and checkpoint writers). */
  parameters(): ParamMap {
    return this.params;
  }

  /** Frees every parameter and the model's constants. */
  dispose(): void {
    for (const lin of this.linears().values()) lin.releaseCopies();
    for (const t of this.params.values()) t.dispose();
    this.ctx.one.dispose();
  }
}
