// The forward inputs of a flux_transformer golden case (inputs.safetensors), shared by the FLUX and
// the FLUX LoRA golden tests.
import type { Device } from '../../src/device/device.ts';
import { type StFile, type StTensor, stTensor, stToFloat32 } from '../../src/io/safetensors.ts';
import type { FluxInputs } from '../../src/models/flux/model.ts';
import { Tensor } from '../../src/tensor/tensor.ts';

export const uploadF32 = (dev: Device, t: StTensor) => Tensor.from(dev, stToFloat32(t), t.shape, 'f32');

/** [L, 3] ids; a deprecated [1, L, 3] is read as its first row, as diffusers does. */
const ids = (t: StTensor) => stToFloat32(t).subarray(0, t.shape.slice(-2).reduce((a, b) => a * b, 1));

export function fluxCaseInputs(file: StFile) {
  const input = (key: string): StTensor => stTensor(file, key);
  const txtIds = ids(input('txt_ids'));
  const imgIds = ids(input('img_ids'));
  return {
    input,
    txtIds,
    imgIds,
    /** The case's forward inputs on `dev` (dispose them with disposeFluxInputs). */
    modelInputs: (dev: Device): FluxInputs => ({
      hiddenStates: uploadF32(dev, input('hidden_states')),
      encoderHiddenStates: uploadF32(dev, input('encoder_hidden_states')),
      pooledProjections: uploadF32(dev, input('pooled_projections')),
      timestep: stToFloat32(input('timestep')),
      guidance: file.tensors.has('guidance') ? stToFloat32(input('guidance')) : null,
      txtIds,
      imgIds,
    }),
  };
}

export function disposeFluxInputs(x: FluxInputs): void {
  [x.hiddenStates, x.encoderHiddenStates, x.pooledProjections].forEach((t) => t.dispose());
}
