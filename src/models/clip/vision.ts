// The CLIP vision transformer (ViT), in open_clip's layout (VisionTransformer: conv1, class_embedding,
// positional_embedding, ln_pre, transformer.resblocks, ln_post, proj) or Hugging Face's
// (CLIPVisionTransformer: embeddings.patch_embedding/class_embedding/position_embedding, pre_layrnorm,
// encoder.layers, post_layernorm, then CLIPModel's visual_projection). Same computation:
//   x = conv(pixels) (patch x patch, stride patch, no bias; run as a matmul over patches) -> [B, G^2, D]; prepend the class token; + pos
//   x = ln_pre(x); blocks (no mask); pooled = ln_post(x[:, 0]); features = pooled @ proj
import * as T from '../../tensor/ops.ts';
import type { Tensor } from '../../tensor/tensor.ts';
import { capture, type NormW, type ParamStore, ResidualBlock, type TowerParams } from './layers.ts';

export interface VisionParams extends TowerParams {
  imageSize: number;
  patchSize: number;
}

export type ClipLayout = 'open_clip' | 'hf';

/** Intermediate names (forward-hook names of the reference modules) per layout. */
const NAMES = {
  open_clip: { conv: 'visual.conv1', pre: 'visual.ln_pre', blocks: 'visual.transformer', post: 'visual.ln_post' },
  hf: { conv: 'vision_model.embeddings.patch_embedding', pre: 'vision_model.pre_layrnorm', blocks: 'vision_model.encoder', post: 'vision_model.post_layernorm' },
} as const;

export class VisionTower {
  private constructor(
    readonly p: VisionParams,
    readonly layout: ClipLayout,
    /** [D, 3, P, P] */
    readonly patchWeight: Tensor,
    /** [D] */
    readonly classEmbedding: Tensor,
    /** [1 + G, D] */
    readonly positionalEmbedding: Tensor,
    readonly lnPre: NormW,
    readonly blocks: ResidualBlock[],
    readonly lnPost: NormW,
    /** open_clip proj [D, E] (x @ proj), or HF visual_projection.weight [E, D] (linear). */
    readonly proj: Tensor,
  ) {}

  get grid(): number {
    return Math.floor(this.p.imageSize / this.p.patchSize);
  }

  static load(store: ParamStore, layout: ClipLayout, p: VisionParams, embedDim: number, opts: { layerScale?: boolean } = {}): VisionTower {
    const d = p.width, ps = p.patchSize;
    const g = Math.floor(p.imageSize / ps);
    const nPos = g * g + 1;
    if (layout === 'open_clip') {
      const pre = 'visual';
      return new VisionTower(
        p, layout,
        store.get(`${pre}.conv1.weight`, [d, 3, ps, ps]),
        store.get(`${pre}.class_embedding`, [d]),
        store.get(`${pre}.positional_embedding`, [nPos, d]),
        { w: store.get(`${pre}.ln_pre.weight`, [d]), b: store.get(`${pre}.ln_pre.bias`, [d]) },
        Array.from({ length: p.layers }, (_, i) => ResidualBlock.openClip(store, `${pre}.transformer.resblocks.${i}`, p, !!opts.layerScale)),
        { w: store.get(`${pre}.ln_post.weight`, [d]), b: store.get(`${pre}.ln_post.bias`, [d]) },
        store.get(`${pre}.proj`, [d, embedDim]),
      );
    }
    const pre = 'vision_model';
    return new VisionTower(
      p, layout,
      store.get(`${pre}.embeddings.patch_embedding.weight`, [d, 3, ps, ps]),
      store.get(`${pre}.embeddings.class_embedding`, [d]),
      store.get(`${pre}.embeddings.position_embedding.weight`, [nPos, d]),
      { w: store.get(`${pre}.pre_layrnorm.weight`, [d]), b: store.get(`${pre}.pre_layrnorm.bias`, [d]) },
      Array.from({ length: p.layers }, (_, i) => ResidualBlock.hf(store, `${pre}.encoder.layers.${i}`, p)),
      { w: store.get(`${pre}.post_layernorm.weight`, [d]), b: store.get(`${pre}.post_layernorm.bias`, [d]) },
      store.get('visual_projection.weight', [embedDim, d]),
    );
  }

  /**
   * pixels: [B, 3, S, S] normalised images (S = imageSize) -> [B, E] image features (not normalised).
   * `intermediates` receives the patch conv output [B, D, G, G], the ln_pre output [B, 1+G^2, D], the block
   * output [B, 1+G^2, D] (batch-first) and the pooled ln_post output [B, D].
   */
  forward(pixels: Tensor, intermediates?: Map<string, Tensor>): Tensor {
    const [b, c, hh, ww] = pixels.shape as [number, number, number, number];
    const { imageSize: s, width: d } = this.p;
    if (pixels.rank !== 4 || c !== 3 || hh !== s || ww !== s) {
      throw new Error(`vision tower: pixels [${pixels.shape}] must be [B, 3, ${s}, ${s}] (the model's image size)`);
    }
    const names = NAMES[this.layout];
    const g = this.grid;
    // The patch convolution (kernel = stride = P, no bias) as one matmul over the patches:
    // [B, 3, G*P, G*P] -> [B, G, G, 3, P, P] -> [B, G^2, 3*P*P] @ w[D, 3*P*P]^T.
    const p = this.p.patchSize;
    const rows = pixels.slice(2, 0, g * p);
    const cropped = rows.slice(3, 0, g * p); // the conv drops a remainder smaller than a patch
    const grid6 = cropped.reshape([b, c, g, p, g, p]);
    const patches6 = grid6.permute([0, 2, 4, 1, 3, 5]);
    const patches = patches6.reshape([b, g * g, c * p * p]); // dense copy
    const w2 = this.patchWeight.reshape([d, c * p * p]);
    const tokens = T.linear(patches, w2); // [B, G^2, D]
    [rows, cropped, grid6, patches6, patches, w2].forEach((t) => t.dispose());
    if (intermediates) {
      const t = tokens.permute([0, 2, 1]);
      const conv = t.reshape([b, d, g, g]); // the conv's [B, D, G, G] layout
      capture(intermediates, names.conv, conv);
      [t, conv].forEach((x) => x.dispose());
    }
    const cls1 = this.classEmbedding.reshape([1, 1, d]);
    const cls = cls1.expand([b, 1, d]);
    const seq = T.cat([cls, tokens], 1); // [B, 1+G^2, D]
    [tokens, cls1, cls].forEach((t) => t.dispose());
    const withPos = T.add(seq, this.positionalEmbedding);
    seq.dispose();
    let x = T.layerNorm(withPos, this.lnPre.w, this.lnPre.b, this.p.eps);
    withPos.dispose();
    capture(intermediates, names.pre, x);
    for (const block of this.blocks) {
      const next = block.forward(x, false);
      x.dispose();
      x = next;
    }
    capture(intermediates, names.blocks, x);
    const first = x.slice(1, 0, 1);
    const clsOut = first.reshape([b, d]);
    const pooled = T.layerNorm(clsOut, this.lnPost.w, this.lnPost.b, this.p.eps); // [B, D]
    [x, first, clsOut].forEach((t) => t.dispose());
    capture(intermediates, names.post, pooled);
    const feats = this.layout === 'open_clip' ? T.matmul(pooled, this.proj) : T.linear(pooled, this.proj);
    pooled.dispose();
    return feats;
  }

  dispose(): void {
    [this.patchWeight, this.classEmbedding, this.positionalEmbedding, this.lnPre.w, this.lnPre.b, this.lnPost.w, this.lnPost.b, this.proj].forEach((t) => t.dispose());
    this.blocks.forEach((b) => b.dispose());
  }
}
