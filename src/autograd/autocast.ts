// bf16 compute with f32 master weights, as the reference trains: DanceGRPO keeps the FSDP
// parameters in float32 (MixedPrecision(param_dtype=float32)) and runs the transformer under
// torch.autocast("cuda", torch.bfloat16). What that changes, and so what we emulate:
//   - linear layers: input, weight and bias are rounded to bf16, the product accumulates in f32
//     and its result is rounded to bf16;
//   - attention (sdpa): q, k, v rounded to bf16, the output rounded to bf16;
//   - elementwise ops whose operands are all bf16 (activations of linear outputs, gates, the
//     residual stream): computed in f32 and rounded to bf16 (roundBf16, placed by the model);
//   - layer_norm, softmax and f32-with-bf16 mixes stay f32, as autocast's fp32 list and type
//     promotion keep them;
//   - gradients: the gradient of a bf16 tensor is itself bf16 (the tape rounds it), so the f32
//     masters receive bf16-rounded gradients, accumulated in f32.
// Not reproduced: torch's bf16 kernels round inside some ops where ours keep f32 (the broadcast
// sums of a backward pass, flash attention's bf16 probabilities), so a bf16 run is close to the
// reference, not bit-aligned with it. Activations are stored as f32 holding bf16 values (our
// elementwise and norm kernels read f32); only the weights' compute copies are stored as bf16.
import { Tensor } from '../tensor/tensor.ts';
import * as F from './functional.ts';

/** 'f32': plain float32 (tests, alignment); 'bf16': autocast numerics as above. */
export type ComputeDType = 'f32' | 'bf16';

/** x rounded to bf16 and back: the value a bf16 autocast result carries (its gradient is rounded too). */
export function roundBf16(x: Tensor): Tensor {
  const h = F.cast(x, 'bf16');
  const y = F.cast(h, 'f32');
  h.dispose();
  return y;
}

/**
 * The bf16 copy of an f32 master tensor that autocast computes with, converted again only after
 * the master has been updated in place (Tensor.markUpdated: optimizer steps, LoRA merges). A frozen
 * base under LoRA is converted once; a fully fine-tuned one once per optimizer step.
 */
export class ComputeCopy {
  private copy: Tensor | null = null;
  private version = -1;
  constructor(readonly master: Tensor) {}

  /** The master as bf16, recorded as a cast so that gradients still reach the master. */
  get(): Tensor {
    if (this.master.dtype === 'bf16') return F.cast(this.master, 'bf16', this.master);
    if (!this.copy) this.copy = Tensor.empty(this.master.device, this.master.shape, 'bf16');
    if (this.version !== this.master.version) {
      this.master.device.copy(this.master, this.copy);
      this.version = this.master.version;
    }
    return F.cast(this.master, 'bf16', this.copy);
  }

  /** Frees the copy; a later get() converts the master again. */
  dispose(): void {
    this.copy?.dispose();
    this.copy = null;
    this.version = -1;
  }
}

/**
 * Autocast's linear: bf16 input, weight and bias, f32 accumulation, bf16-rounded output. Weights
 * come from their compute copies, or are cast on this call when given as tensors (small ones
 * trained every step, such as LoRA adapters).
 */
export function linearBf16(x: Tensor, w: ComputeCopy | Tensor, bias: ComputeCopy | Tensor | null): Tensor {
  const bf16 = (t: ComputeCopy | Tensor) => (t instanceof ComputeCopy ? t.get() : F.cast(t, 'bf16'));
  const x16 = F.cast(x, 'bf16');
  const w16 = bf16(w);
  const b16 = bias && bf16(bias);
  const y = F.linear(x16, w16, b16);
  const out = roundBf16(y);
  for (const t of [x16, w16, b16, y]) t?.dispose();
  return out;
}
