// The CLIP text transformer, in open_clip's layout (CLIP.encode_text: token_embedding, positional_embedding,
// transformer.resblocks, ln_final, text_projection [D, E]) or Hugging Face's (CLIPTextTransformer:
// text_model.embeddings.*, encoder.layers, final_layer_norm, then CLIPModel's text_projection Linear):
//   x = token_embedding[ids] + pos[:L]; causal blocks; x = ln_final(x); pooled = x[n, eot_n]; features = pooled @ proj
// The end-of-text position is argmax(ids) (open_clip, and HF when eos_token_id == 2: the first maximal id),
// otherwise HF's first position holding eos_token_id.
import type { Device } from '../../device/device.ts';
import * as T from '../../tensor/ops.ts';
import { Tensor } from '../../tensor/tensor.ts';
import { capture, type NormW, type ParamStore, ResidualBlock, type TowerParams } from './layers.ts';
import type { ClipLayout } from './vision.ts';

export interface TextParams extends TowerParams {
  contextLength: number;
  vocabSize: number;
  /** 'argmax': the first position of the largest id; a number: the first position holding that id. */
  pooling: 'argmax' | number;
}

const NAMES = {
  open_clip: { emb: 'token_embedding', blocks: 'transformer', final: 'ln_final' },
  hf: { emb: 'text_model.embeddings.token_embedding', blocks: 'text_model.encoder', final: 'text_model.final_layer_norm' },
} as const;

/** Token ids of N prompts, row-major [N, L]. */
export interface TokenIds {
  ids: Int32Array;
  shape: [number, number];
}

export class TextTower {
  private constructor(
    readonly p: TextParams,
    readonly layout: ClipLayout,
    /** [V, D] */
    readonly tokenEmbedding: Tensor,
    /** [context, D] */
    readonly positionalEmbedding: Tensor,
    readonly blocks: ResidualBlock[],
    readonly lnFinal: NormW,
    /** open_clip text_projection [D, E] (x @ proj), or HF text_projection.weight [E, D] (linear). */
    readonly proj: Tensor,
  ) {}

  static load(store: ParamStore, layout: ClipLayout, p: TextParams, embedDim: number, opts: { layerScale?: boolean } = {}): TextTower {
    const d = p.width;
    if (layout === 'open_clip') {
      return new TextTower(
        p, layout,
        store.get('token_embedding.weight', [p.vocabSize, d]),
        store.get('positional_embedding', [p.contextLength, d]),
        Array.from({ length: p.layers }, (_, i) => ResidualBlock.openClip(store, `transformer.resblocks.${i}`, p, !!opts.layerScale)),
        { w: store.get('ln_final.weight', [d]), b: store.get('ln_final.bias', [d]) },
        store.get('text_projection', [d, embedDim]),
      );
    }
    const pre = 'text_model';
    return new TextTower(
      p, layout,
      store.get(`${pre}.embeddings.token_embedding.weight`, [p.vocabSize, d]),
      store.get(`${pre}.embeddings.position_embedding.weight`, [p.contextLength, d]),
      Array.from({ length: p.layers }, (_, i) => ResidualBlock.hf(store, `${pre}.encoder.layers.${i}`, p)),
      { w: store.get(`${pre}.final_layer_norm.weight`, [d]), b: store.get(`${pre}.final_layer_norm.bias`, [d]) },
      store.get('text_projection.weight', [embedDim, d]),
    );
  }

  /** The pooled (end-of-text) position of each row. */
  poolPositions(tokens: TokenIds): number[] {
    const [n, l] = tokens.shape;
    return Array.from({ length: n }, (_, r) => {
      const row = tokens.ids.subarray(r * l, (r + 1) * l);
      if (this.p.pooling === 'argmax') {
        let best = 0;
        for (let i = 1; i < l; i++) if (row[i]! > row[best]!) best = i;
        return best;
      }
      const at = row.indexOf(this.p.pooling);
      return at < 0 ? 0 : at; // torch's argmax of an all-zero mask is 0
    });
  }

  /**
   * tokens [N, L] (L <= context length) -> [N, E] text features (not normalised).
   * With `trim`, the rows are cut after the last pooled position before the transformer runs: the mask is
   * causal, so the pooled rows do not depend on the positions after them (same result, fewer tokens).
   * `intermediates` receives the token embeddings [N, L, D], the block output [N, L, D] and the ln_final output.
   */
  forward(tokens: TokenIds, opts: { trim?: boolean; intermediates?: Map<string, Tensor> } = {}): Tensor {
    const [n, l0] = tokens.shape;
    if (tokens.ids.length !== n * l0) throw new Error(`text tower: ${tokens.ids.length} ids for shape [${tokens.shape}]`);
    if (l0 > this.p.contextLength) throw new Error(`text tower: ${l0} tokens exceed the context length ${this.p.contextLength}`);
    for (const id of tokens.ids) {
      if (id < 0 || id >= this.p.vocabSize) throw new Error(`text tower: token id ${id} outside the vocabulary (${this.p.vocabSize})`);
    }
    const pos = this.poolPositions(tokens);
    const l = opts.trim ? Math.max(...pos) + 1 : l0;
    const ids = new Int32Array(n * l);
    for (let r = 0; r < n; r++) ids.set(tokens.ids.subarray(r * l0, r * l0 + l), r * l);
    const device: Device = this.tokenEmbedding.device;
    const names = NAMES[this.layout];

    const idT = Tensor.from(device, ids, [n, l], 'i32');
    const emb = T.gather(this.tokenEmbedding, idT); // [N, L, D]
    idT.dispose();
    capture(opts.intermediates, names.emb, emb);
    const posL = this.positionalEmbedding.slice(0, 0, l);
    let x = T.add(emb, posL);
    [emb, posL].forEach((t) => t.dispose());
    for (const block of this.blocks) {
      const next = block.forward(x, true);
      x.dispose();
      x = next;
    }
    capture(opts.intermediates, names.blocks, x);
    const normed = T.layerNorm(x, this.lnFinal.w, this.lnFinal.b, this.p.eps);
    x.dispose();
    capture(opts.intermediates, names.final, normed);
    const d = this.p.width;
    const rows = normed.reshape([n * l, d]);
    const at = Tensor.from(device, Int32Array.from(pos, (p, r) => r * l + p), [n], 'i32');
    const pooled = T.gather(rows, at); // [N, D]
    [normed, rows, at].forEach((t) => t.dispose());
    const feats = this.layout === 'open_clip' ? T.matmul(pooled, this.proj) : T.linear(pooled, this.proj);
    pooled.dispose();
    return feats;
  }

  dispose(): void {
    [this.tokenEmbedding, this.positionalEmbedding, this.lnFinal.w, this.lnFinal.b, this.proj].forEach((t) => t.dispose());
    this.blocks.forEach((b) => b.dispose());
  }
}
