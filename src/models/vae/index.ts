// The FLUX VAE decoder: load (diffusers or BFL layout), decode (plain or tiled as diffusers v0.32.0), and
// DanceGRPO's packed-latent -> image path.
export { AutoencoderKL, blendH, blendV } from './autoencoder.ts';
export { FLUX_VAE_CONFIG, type TilingParams, type VaeConfig, readVaeConfig, tilingFromConfig, upsamplingFactor, vaeConfig } from './config.ts';
export { Decoder, type StageHook } from './decoder.ts';
export { type DecodeOptions, decodePackedLatents, packLatents, savePngs, toRgbImages, unpackLatents, unscaleLatents } from './pipeline.ts';
export { type VaeLayout, bflKey, detectLayout, loadVaeWeights } from './weights.ts';
export { initRandomWeights, randomParameters } from './init.ts';
