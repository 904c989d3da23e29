// Random decoder weights for tests and benchmarks, drawn as the golden generator draws them: norm weights
// 1 + 0.1*N, biases 0.1*N, conv/linear weights N / sqrt(fan_in), so activations keep a sane scale through
// any depth. Drawn from one explicit torch-compatible generator, one parameter at a time.
import type { Device } from '../../device/device.ts';
import { Generator as TorchGenerator, randn } from '../../rng/index.ts';
import { numel } from '../../tensor/shape.ts';
import { Tensor } from '../../tensor/tensor.ts';
import type { Module } from './nn.ts';

/** [state-dict key, shape, values] for every parameter of `model`, in parameter order. */
export function* randomParameters(model: Module, g: TorchGenerator): Generator<[string, readonly number[], Float32Array]> {
  for (const [key, p] of model.namedParameters()) {
    const n = randn(g, [numel(p.shape)], 'f32') as Float32Array;
    const isNorm = /(norm\d?|norm_out|group_norm)\.weight$/.test(key);
    const fanIn = numel(p.shape.slice(1));
    const scale = key.endsWith('.bias') ? 0.1 : isNorm ? 0.1 : 1 / Math.sqrt(fanIn);
    for (let i = 0; i < n.length; i++) n[i] = (isNorm ? 1 : 0) + scale * n[i]!;
    yield [key, p.shape, n];
  }
}

/** Fills every parameter of `model` with random values (see randomParameters). */
export function initRandomWeights(device: Device, model: Module, seed = 0): void {
  const params = new Map(model.namedParameters());
  for (const [key, shape, values] of randomParameters(model, new TorchGenerator(seed))) {
    const p = params.get(key)!;
    p.value?.dispose();
    p.value = Tensor.from(device, values, shape, 'f32');
  }
}
