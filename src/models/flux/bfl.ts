// Black Forest Labs' single-file layout (flux1-dev.safetensors: double_blocks.*, single_blocks.*,
// img_in, txt_in, time_in, vector_in, guidance_in, final_layer) and its mapping onto the diffusers
// names our model uses. Three differences beyond names:
//   - q, k, v are fused (img_attn.qkv / txt_attn.qkv: rows [q; k; v]),
//   - single_blocks.*.linear1 fuses q, k, v and the MLP input projection (rows [q; k; v; mlp]),
//   - final_layer.adaLN_modulation.1 stores (shift, scale), diffusers' norm_out.linear (scale, shift).
// Every width comes from FluxParams (diffusers' own converter hard-codes FLUX.1's 3072).
import type { StTensor } from '../../io/safetensors.ts';
import { type FluxParams, fluxParameterShapes, mlpHidden } from './params.ts';

/** One BFL tensor: its shape and the diffusers tensors stacked along its first axis, in order. */
export interface BflEntry {
  shape: number[];
  parts: { name: string; rows: number }[];
  /** Its two halves (along the first axis) are stored in the opposite order to diffusers'. */
  swapHalves: boolean;
}

/** BFL key -> how it is made of diffusers tensors, for these params. */
export function bflLayout(p: FluxParams): Map<string, BflEntry> {
  const shapes = new Map(fluxParameterShapes(p));
  const layout = new Map<string, BflEntry>();
  const rows = (name: string) => shapes.get(name)![0]!;
  /** BFL name <- diffusers names stacked (weights and, with `bias`, biases). */
  const add = (bfl: string, names: string[], opts: { bias?: boolean; swap?: boolean; suffix?: [string, string] } = {}) => {
    const [from, to] = opts.suffix ?? ['.weight', '.weight'];
    const kinds: [string, string][] = [[from, to]];
    if (opts.bias ?? true) kinds.push(['.bias', '.bias']);
    for (const [diffSuffix, bflSuffix] of kinds) {
      const parts = names.map((n) => ({ name: n + diffSuffix, rows: rows(n + diffSuffix) }));
      const first = shapes.get(parts[0]!.name)!;
      layout.set(bfl + bflSuffix, { shape: [parts.reduce((s, q) => s + q.rows, 0), ...first.slice(1)], parts, swapHalves: !!opts.swap });
    }
  };
  const scale = (bfl: string, diff: string) => add(bfl, [diff], { bias: false, suffix: ['.weight', '.scale'] });

  add('time_in.in_layer', ['time_text_embed.timestep_embedder.linear_1']);
  add('time_in.out_layer', ['time_text_embed.timestep_embedder.linear_2']);
  add('vector_in.in_layer', ['time_text_embed.text_embedder.linear_1']);
  add('vector_in.out_layer', ['time_text_embed.text_embedder.linear_2']);
  if (p.guidanceEmbed) {
    add('guidance_in.in_layer', ['time_text_embed.guidance_embedder.linear_1']);
    add('guidance_in.out_layer', ['time_text_embed.guidance_embedder.linear_2']);
  }
  add('txt_in', ['context_embedder']);
  add('img_in', ['x_embedder']);
  for (let i = 0; i < p.depth; i++) {
    const b = `double_blocks.${i}`, d = `transformer_blocks.${i}`;
    add(`${b}.img_mod.lin`, [`${d}.norm1.linear`]);
    add(`${b}.txt_mod.lin`, [`${d}.norm1_context.linear`]);
    add(`${b}.img_attn.qkv`, [`${d}.attn.to_q`, `${d}.attn.to_k`, `${d}.attn.to_v`]);
    add(`${b}.txt_attn.qkv`, [`${d}.attn.add_q_proj`, `${d}.attn.add_k_proj`, `${d}.attn.add_v_proj`]);
    add(`${b}.img_attn.proj`, [`${d}.attn.to_out.0`]);
    add(`${b}.txt_attn.proj`, [`${d}.attn.to_add_out`]);
    scale(`${b}.img_attn.norm.query_norm`, `${d}.attn.norm_q`);
    scale(`${b}.img_attn.norm.key_norm`, `${d}.attn.norm_k`);
    scale(`${b}.txt_attn.norm.query_norm`, `${d}.attn.norm_added_q`);
    scale(`${b}.txt_attn.norm.key_norm`, `${d}.attn.norm_added_k`);
    add(`${b}.img_mlp.0`, [`${d}.ff.net.0.proj`]);
    add(`${b}.img_mlp.2`, [`${d}.ff.net.2`]);
    add(`${b}.txt_mlp.0`, [`${d}.ff_context.net.0.proj`]);
    add(`${b}.txt_mlp.2`, [`${d}.ff_context.net.2`]);
  }
  for (let i = 0; i < p.depthSingleBlocks; i++) {
    const b = `single_blocks.${i}`, d = `single_transformer_blocks.${i}`;
    add(`${b}.modulation.lin`, [`${d}.norm.linear`]);
    add(`${b}.linear1`, [`${d}.attn.to_q`, `${d}.attn.to_k`, `${d}.attn.to_v`, `${d}.proj_mlp`]);
    add(`${b}.linear2`, [`${d}.proj_out`]);
    scale(`${b}.norm.query_norm`, `${d}.attn.norm_q`);
    scale(`${b}.norm.key_norm`, `${d}.attn.norm_k`);
  }
  add('final_layer.linear', ['proj_out']);
  add('final_layer.adaLN_modulation.1', ['norm_out.linear'], { swap: true });
  return layout;
}

/** Whether tensor names look like BFL's layout (after an optional `model.diffusion_model.` prefix). */
export function isBflLayout(names: readonly string[]): boolean {
  const prefix = bflPrefix(names);
  return names.some((n) => n.startsWith(`${prefix}double_blocks.`) || n.startsWith(`${prefix}single_blocks.`) || n === `${prefix}img_in.weight`);
}

/** ComfyUI-style checkpoints put the BFL names under `model.diffusion_model.`. */
export function bflPrefix(names: readonly string[]): string {
  const p = 'model.diffusion_model.';
  return names.length > 0 && names.every((n) => n.startsWith(p)) ? p : '';
}

function rowBytes(t: StTensor): number {
  return t.shape[0] ? t.bytes.byteLength / t.shape[0] : 0;
}

/** Swaps the two halves along the first axis (its own inverse). */
function swapHalves(t: StTensor): StTensor {
  const half = (t.shape[0]! / 2) * rowBytes(t);
  const bytes = new Uint8Array(t.bytes.byteLength);
  bytes.set(t.bytes.subarray(half), 0);
  bytes.set(t.bytes.subarray(0, half), t.bytes.byteLength - half);
  return { dtype: t.dtype, shape: [...t.shape], bytes };
}

/** The diffusers tensors one BFL tensor holds (byte slices, any dtype). */
export function splitBflTensor(entry: BflEntry, t: StTensor): [string, StTensor][] {
  const src = entry.swapHalves ? swapHalves(t) : t;
  const rb = rowBytes(src);
  let at = 0;
  return entry.parts.map(({ name, rows }) => {
    const bytes = src.bytes.subarray(at * rb, (at + rows) * rb);
    at += rows;
    return [name, { dtype: src.dtype, shape: [rows, ...src.shape.slice(1)], bytes }];
  });
}

/** One BFL tensor from its diffusers parts (all of one dtype). */
export function fuseBflTensor(entry: BflEntry, get: (name: string) => StTensor): StTensor {
  const parts = entry.parts.map(({ name }) => get(name));
  const dtype = parts[0]!.dtype;
  if (parts.some((q) => q.dtype !== dtype)) throw new Error(`cannot fuse ${entry.parts.map((q) => q.name).join(', ')}: dtypes differ`);
  const bytes = new Uint8Array(parts.reduce((s, q) => s + q.bytes.byteLength, 0));
  let at = 0;
  for (const q of parts) {
    bytes.set(q.bytes, at);
    at += q.bytes.byteLength;
  }
  const fused = { dtype, shape: [...entry.shape], bytes };
  return entry.swapHalves ? swapHalves(fused) : fused;
}

/** BFL state dict -> diffusers state dict (names must be exactly the layout's; see load.ts for checks). */
export function bflToDiffusers(bfl: ReadonlyMap<string, StTensor>, p: FluxParams): Map<string, StTensor> {
  const out = new Map<string, StTensor>();
  for (const [key, entry] of bflLayout(p)) {
    const t = bfl.get(key);
    if (!t) throw new Error(`bflToDiffusers: missing ${key}`);
    for (const [name, part] of splitBflTensor(entry, t)) out.set(name, part);
  }
  return out;
}

/** diffusers state dict -> BFL state dict. */
export function diffusersToBfl(diff: ReadonlyMap<string, StTensor>, p: FluxParams): Map<string, StTensor> {
  const out = new Map<string, StTensor>();
  for (const [key, entry] of bflLayout(p)) {
    out.set(key, fuseBflTensor(entry, (name) => {
      const t = diff.get(name);
      if (!t) throw new Error(`diffusersToBfl: missing ${name}`);
      return t;
    }));
  }
  return out;
}

/**
 * FluxParams read off a BFL checkpoint's tensor shapes. The RoPE axes are not stored: FLUX.1's
 * (16, 56, 56) are assumed, and a head width they do not fit asks for a config.json.
 */
export function fluxParamsFromBflShapes(shapeOf: (name: string) => number[] | undefined, names: readonly string[]): FluxParams {
  const prefix = bflPrefix(names);
  const need = (name: string): number[] => {
    const s = shapeOf(prefix + name);
    if (!s) throw new Error(`cannot infer the FLUX config: the checkpoint has no ${prefix + name} (pass a config.json)`);
    return s;
  };
  const count = (block: string) => new Set(names.filter((n) => n.startsWith(prefix + block)).map((n) => n.slice((prefix + block).length).split('.')[0])).size;
  const [hidden, inChannels] = need('img_in.weight') as [number, number];
  const depth = count('double_blocks.'), depthSingle = count('single_blocks.');
  const headDim = need(depth > 0 ? 'double_blocks.0.img_attn.norm.query_norm.scale' : 'single_blocks.0.norm.query_norm.scale')[0]!;
  const axesDim = [16, 56, 56];
  if (axesDim.reduce((a, b) => a + b, 0) !== headDim) {
    throw new Error(`cannot infer the FLUX config: head width ${headDim} does not fit FLUX.1's RoPE axes (16, 56, 56); pass a config.json with axes_dims_rope`);
  }
  const p: FluxParams = {
    inChannels,
    outChannels: need('final_layer.linear.weight')[0]!,
    patchSize: 1,
    hiddenSize: hidden,
    numHeads: hidden / headDim,
    headDim,
    depth,
    depthSingleBlocks: depthSingle,
    contextInDim: need('txt_in.weight')[1]!,
    vecInDim: need('vector_in.in_layer.weight')[1]!,
    mlpRatio: 4,
    axesDim,
    theta: 10000,
    guidanceEmbed: names.includes(`${prefix}guidance_in.in_layer.weight`),
  };
  if (!Number.isInteger(p.numHeads)) throw new Error(`cannot infer the FLUX config: width ${hidden} is not a multiple of the head width ${headDim}`);
  if (depth > 0 && need('double_blocks.0.img_mlp.0.weight')[0] !== mlpHidden(p)) {
    throw new Error(`cannot infer the FLUX config: double_blocks.0.img_mlp.0.weight is not ${mlpHidden(p)} wide (mlp ratio 4)`);
  }
  return p;
}
