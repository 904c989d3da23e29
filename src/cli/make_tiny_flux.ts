// `flux-grpo make-tiny-flux`: writes a small random FLUX transformer (diffusers layout, config.json +
// safetensors) for demos and tests: the golden case's shape by default, any diffusers config field
// overridden from a JSON file, weights drawn from the torch-compatible host generator.
import { readFileSync } from 'node:fs';
import { TINY_FLUX_DIR, writeTinyFluxCheckpoint } from '../models/flux/tiny.ts';
import type { FluxConfig } from '../models/flux/params.ts';
import type { Command } from './args.ts';

export const makeTinyFlux: Command = {
  name: 'make-tiny-flux',
  summary: 'write a tiny random FLUX transformer checkpoint (diffusers layout) for demos and tests',
  flags: {
    out: { help: 'output folder', default: TINY_FLUX_DIR },
    seed: { help: 'seed of the host generator', default: '1234' },
    dtype: { help: 'storage dtype: f32 | bf16 (bf16 as real FLUX checkpoints ship)', default: 'f32' },
    config: { help: 'JSON file of diffusers config fields overriding the tiny config (e.g. {"num_layers": 4})' },
  },
  async run(flags) {
    const dtype = String(flags.dtype);
    if (dtype !== 'f32' && dtype !== 'bf16') throw new Error(`make-tiny-flux: --dtype ${dtype}: expected f32 or bf16`);
    const seed = Number(flags.seed);
    if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`make-tiny-flux: --seed ${flags.seed}: expected a non-negative integer`);
    let config: Partial<FluxConfig> = {};
    if (flags.config) {
      const file = String(flags.config);
      try {
        config = JSON.parse(readFileSync(file, 'utf8')) as Partial<FluxConfig>;
      } catch (e) {
        throw new Error(`make-tiny-flux: --config ${file}: ${(e as Error).message}`);
      }
    }
    const { dir, params } = writeTinyFluxCheckpoint(String(flags.out), { seed, config, dtype: dtype === 'bf16' ? 'BF16' : 'F32' });
    console.log(`wrote ${dir}: hidden ${params.hiddenSize} (${params.numHeads} heads x ${params.headDim}), ${params.depth} double + ${params.depthSingleBlocks} single blocks, ${dtype}, seed ${seed}`);
    return 0;
  },
};
