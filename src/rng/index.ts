// Host random numbers reproducing PyTorch's CPU generator (torch 2.6) bit for bit.
export { DEFAULT_SEED, Generator, STATE_BYTES } from './generator.ts';
export { int64Random, rand, randint, randn, randperm, randpermInsideOut } from './distributions.ts';
export type { RandArray, RandDType, RandnOptions } from './distributions.ts';
export { distributedSamplerIndices } from './sampler.ts';
export type { DistributedSamplerOptions } from './sampler.ts';
