// Tiny random FLUX transformers for demos and tests: a small diffusers config, reproducible random
// weights from the project's torch-compatible host generator, and a loadable diffusers-layout
// checkpoint folder (config.json + safetensors) under weights/.
import { join } from 'node:path';
import type { Device } from '../../device/device.ts';
import { Generator, randn } from '../../rng/index.ts';
import { Tensor } from '../../tensor/tensor.ts';
import { type WeightDType, fluxStateDict, writeFluxCheckpoint } from './load.ts';
import { FluxTransformer } from './model.ts';
import { type FluxConfig, type FluxParams, fluxParameterShapes, fluxParamsFromConfig } from './params.ts';

/** The golden `flux_transformer` case's shape: 2 double + 2 single blocks, 2 heads x 16, axes (4, 6, 6). */
export function tinyFluxConfig(overrides: Partial<FluxConfig> = {}): FluxConfig {
  return {
    _class_name: 'FluxTransformer2DModel',
    _diffusers_version: '0.32.0',
    attention_head_dim: 16,
    axes_dims_rope: [4, 6, 6],
    guidance_embeds: true,
    in_channels: 64,
    joint_attention_dim: 32,
    num_attention_heads: 2,
    num_layers: 2,
    num_single_layers: 2,
    out_channels: 64,
    patch_size: 1,
    pooled_projection_dim: 32,
    ...overrides,
  };
}

/**
 * Random weights in named_parameters order, one randn draw per parameter (the golden case's rule):
 * weights N / sqrt(fan_in), biases 0.1 N, RMSNorm scales 1 + 0.1 N, all rounded to float32.
 */
export function randomFluxWeights(p: FluxParams, gen: Generator): Map<string, Float32Array> {
  const f32 = Math.fround;
  const out = new Map<string, Float32Array>();
  for (const [name, shape] of fluxParameterShapes(p)) {
    const n = randn(gen, shape, 'f32') as Float32Array;
    if (name.endsWith('.bias')) n.forEach((v, i) => (n[i] = f32(v * f32(0.1))));
    else if (shape.length === 1) n.forEach((v, i) => (n[i] = f32(1 + f32(v * f32(0.1)))));
    else {
      const s = f32(1 / Math.sqrt(shape[1]!));
      n.forEach((v, i) => (n[i] = f32(v * s)));
    }
    out.set(name, n);
  }
  return out;
}

/** A random FluxTransformer on `dev` (float32). */
export function randomFluxTransformer(dev: Device, p: FluxParams, gen: Generator): FluxTransformer {
  const params = new Map<string, Tensor>();
  const shapes = new Map(fluxParameterShapes(p));
  for (const [name, values] of randomFluxWeights(p, gen)) params.set(name, Tensor.from(dev, values, shapes.get(name)!));
  return new FluxTransformer(dev, p, params);
}

export interface TinyCheckpointOptions {
  /** Changes to tinyFluxConfig(). */
  config?: Partial<FluxConfig>;
  /** Seed of the host generator (default 1234). */
  seed?: number;
  /** Storage dtype (default F32; BF16 as real FLUX checkpoints ship). */
  dtype?: WeightDType;
  /** Shard the weights (with an index) at this many bytes. */
  maxShardBytes?: number;
}

/** Default folder of the tiny checkpoint. */
export const TINY_FLUX_DIR = join('weights', 'flux-tiny', 'transformer');

/** Writes a loadable diffusers-layout tiny checkpoint folder; returns its params and weights. */
export function writeTinyFluxCheckpoint(dir: string = TINY_FLUX_DIR, opts: TinyCheckpointOptions = {}): { dir: string; params: FluxParams; weights: Map<string, Float32Array> } {
  const params = fluxParamsFromConfig(tinyFluxConfig(opts.config));
  const weights = randomFluxWeights(params, new Generator(opts.seed ?? 1234));
  writeFluxCheckpoint(dir, params, fluxStateDict(params, weights, opts.dtype), { maxShardBytes: opts.maxShardBytes });
  return { dir, params, weights };
}
