// A CLIP model: a vision tower and a text tower projecting into one embedding space of width E.
// Both reward models are this: HPS v2.1 (open_clip ViT-H-14, open_clip layout) and PickScore (a
// transformers CLIPModel, HF layout). Scores use L2-normalised features and no logit scale.
import * as T from '../../tensor/ops.ts';
import type { Tensor } from '../../tensor/tensor.ts';
import { type ClipActivation, l2Normalize, type ParamStore } from './layers.ts';
import { TextTower, type TextParams, type TokenIds } from './text.ts';
import { type ClipLayout, VisionTower, type VisionParams } from './vision.ts';

export type { ClipActivation, ClipLayout, TextParams, TokenIds, VisionParams };

export interface ClipParams {
  layout: ClipLayout;
  /** E: width of the shared embedding space. */
  embedDim: number;
  vision: VisionParams;
  text: TextParams;
  /** open_clip LayerScale (ls_init_value set): blocks carry ls_1/ls_2 gammas. */
  layerScale?: { vision: boolean; text: boolean };
}

export class ClipModel {
  private constructor(readonly params: ClipParams, readonly vision: VisionTower, readonly text: TextTower) {}

  /**
   * Builds both towers from a parameter store (names as in the checkpoint of `params.layout`). When it
   * throws, what was uploaded so far is released (store.releaseAll).
   */
  static load(store: ParamStore, params: ClipParams): ClipModel {
    try {
      const vision = VisionTower.load(store, params.layout, params.vision, params.embedDim, { layerScale: params.layerScale?.vision });
      const text = TextTower.load(store, params.layout, params.text, params.embedDim, { layerScale: params.layerScale?.text });
      return new ClipModel(params, vision, text);
    } catch (e) {
      store.releaseAll();
      throw e;
    }
  }

  /** pixels [B, 3, S, S] -> [B, E] (not normalised: open_clip encode_image / HF get_image_features). */
  encodeImage(pixels: Tensor, intermediates?: Map<string, Tensor>): Tensor {
    return this.vision.forward(pixels, intermediates);
  }

  /** ids [N, L] -> [N, E] (not normalised: open_clip encode_text / HF get_text_features). */
  encodeText(tokens: TokenIds, opts: { trim?: boolean; intermediates?: Map<string, Tensor> } = {}): Tensor {
    return this.text.forward(tokens, opts);
  }

  /** L2-normalised image features [B, E]. */
  imageFeatures(pixels: Tensor, intermediates?: Map<string, Tensor>): Tensor {
    const f = this.encodeImage(pixels, intermediates);
    const n = l2Normalize(f);
    f.dispose();
    return n;
  }

  /** L2-normalised text features [N, E]. */
  textFeatures(tokens: TokenIds, opts: { trim?: boolean; intermediates?: Map<string, Tensor> } = {}): Tensor {
    const f = this.encodeText(tokens, opts);
    const n = l2Normalize(f);
    f.dispose();
    return n;
  }

  dispose(): void {
    this.vision.dispose();
    this.text.dispose();
  }
}

/** Cosine-similarity matrix of normalised features: image [B, E] @ text [N, E]^T -> [B, N] (no logit scale). */
export function similarity(imageFeatures: Tensor, textFeatures: Tensor): Tensor {
  const tt = textFeatures.transpose(0, 1);
  const out = T.matmul(imageFeatures, tt);
  tt.dispose();
  return out;
}
