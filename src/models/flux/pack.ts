// Latent packing as DanceGRPO (train_grpo_flux.py) and diffusers' FluxPipeline do it: 2x2 patches of
// the 16-channel VAE latent become tokens of 64 channels, ordered row-major over the patch grid, and
// each token's RoPE position id is (0, row, col). Differentiable (autograd functional ops).
import * as F from '../../autograd/functional.ts';
import type { Tensor } from '../../tensor/tensor.ts';

/**
 * pack_latents: [B, C, H, W] -> [B, (H/2)*(W/2), C*4]; a token's channels are (c, dy, dx) row-major:
 * view(B, C, H/2, 2, W/2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H/2)*(W/2), C*4).
 */
export function packLatents(latents: Tensor): Tensor {
  const [b, c, h, w] = latents.shape as [number, number, number, number];
  if (latents.rank !== 4 || h % 2 !== 0 || w % 2 !== 0) throw new Error(`packLatents: expected [B, C, H, W] with even H, W, got [${latents.shape}]`);
  const v = F.reshape(latents, [b, c, h / 2, 2, w / 2, 2]);
  const p = F.permute(v, [0, 2, 4, 1, 3, 5]); // [B, H/2, W/2, C, 2, 2]
  const out = F.reshape(p, [b, (h / 2) * (w / 2), c * 4]);
  v.dispose();
  p.dispose();
  return out;
}

/**
 * The inverse of packLatents for a latent grid of latentH x latentW:
 * [B, (h/2)*(w/2), C*4] -> [B, C, h, w].
 */
export function unpackLatentGrid(tokens: Tensor, latentH: number, latentW: number): Tensor {
  const [b, n, ch] = tokens.shape as [number, number, number];
  if (tokens.rank !== 3 || latentH % 2 !== 0 || latentW % 2 !== 0 || n !== (latentH / 2) * (latentW / 2) || ch % 4 !== 0) {
    throw new Error(`unpackLatentGrid: [${tokens.shape}] is not a packed ${latentH}x${latentW} latent`);
  }
  const v = F.reshape(tokens, [b, latentH / 2, latentW / 2, ch / 4, 2, 2]);
  const p = F.permute(v, [0, 3, 1, 4, 2, 5]); // [B, C, h/2, 2, w/2, 2]
  const out = F.reshape(p, [b, ch / 4, latentH, latentW]);
  v.dispose();
  p.dispose();
  return out;
}

/**
 * DanceGRPO unpack_latents(latents, height, width, vae_scale_factor) with the NOMINAL image size:
 * the latent grid is 2 * (size // (vae_scale_factor * 2)) on each side.
 */
export function unpackLatents(tokens: Tensor, height: number, width: number, vaeScaleFactor = 8): Tensor {
  const grid = (s: number) => 2 * Math.floor(s / (vaeScaleFactor * 2));
  return unpackLatentGrid(tokens, grid(height), grid(width));
}

/**
 * prepare_latent_image_ids(B, tokensH, tokensW): [tokensH*tokensW, 3] rows (0, row, col), row-major
 * (tokensH = latent height / 2). The batch size plays no part (the ids are shared).
 */
export function latentImageIds(tokensH: number, tokensW: number): Float32Array {
  const ids = new Float32Array(tokensH * tokensW * 3);
  for (let r = 0; r < tokensH; r++) {
    for (let c = 0; c < tokensW; c++) {
      const at = (r * tokensW + c) * 3;
      ids[at + 1] = r;
      ids[at + 2] = c;
    }
  }
  return ids;
}

/** FLUX.1 text ids: zeros [length, 3]. */
export function textIds(length: number, axes = 3): Float32Array {
  return new Float32Array(length * axes);
}
