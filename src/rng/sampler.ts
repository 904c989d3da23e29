// torch.utils.data.DistributedSampler's index order (torch/utils/data/distributed.py, torch 2.6).
import { randperm } from './distributions.ts';
import { Generator } from './generator.ts';

export interface DistributedSamplerOptions {
  datasetLength: number;
  numReplicas: number;
  rank: number;
  shuffle?: boolean;
  seed?: number | bigint;
  epoch?: number;
  dropLast?: boolean;
}

/**
 * The indices rank `rank` iterates in epoch `epoch`: with shuffle, torch.randperm(len) on its own
 * generator seeded seed + epoch (never the run's generator); otherwise 0..len-1. Without dropLast
 * the list is padded by repeating it from the start up to num_samples * num_replicas, with
 * dropLast it is cut to that length; the rank takes every num_replicas-th index from `rank`.
 */
export function distributedSamplerIndices(options: DistributedSamplerOptions): number[] {
  const { datasetLength: len, numReplicas, rank, shuffle = true, seed = 0, epoch = 0, dropLast = false } = options;
  for (const [name, v] of [['datasetLength', len], ['numReplicas', numReplicas], ['rank', rank], ['epoch', epoch]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${name} must be a non-negative integer, got ${v}`);
  }
  if (numReplicas < 1) throw new RangeError(`numReplicas must be >= 1, got ${numReplicas}`);
  if (rank >= numReplicas) throw new RangeError(`invalid rank ${rank}, rank should be in [0, ${numReplicas - 1}]`);
  const numSamples = dropLast && len % numReplicas !== 0 ? Math.ceil((len - numReplicas) / numReplicas) : Math.ceil(len / numReplicas);
  const totalSize = numSamples * numReplicas;
  const base = shuffle ? Array.from(randperm(new Generator(BigInt(seed) + BigInt(epoch)), len)) : Array.from({ length: len }, (_, i) => i);
  // Padding repeats the whole list as often as needed (distributed.py: indices * ceil(pad / len)).
  const indices = dropLast ? base.slice(0, totalSize) : Array.from({ length: totalSize }, (_, i) => base[i % len]!);
  const out: number[] = [];
  for (let i = rank; i < totalSize; i += numReplicas) out.push(indices[i]!);
  return out;
}
