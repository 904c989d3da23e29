// Finite-difference gradient check (ggml's MODE_GRAD): compares the tape's gradients of a scalar
// function with central differences, in float64 on the CPU reference backend.
import type { Device } from '../device/device.ts';
import { Tensor } from '../tensor/tensor.ts';
import { backward, noGrad } from './tape.ts';

export interface GradcheckResult {
  /** Relative L2 error of each input's analytic gradient against the numeric one. */
  errors: number[];
  analytic: Float64Array[];
  numeric: Float64Array[];
}

/**
 * `fn` maps the input tensors to a scalar tensor. Inputs are given as host values and shapes and
 * live in f64 on `dev` (the CPU device). Each input element is perturbed by ±eps.
 */
export async function gradcheck(
  dev: Device,
  fn: (inputs: Tensor[]) => Tensor,
  inputs: { values: ArrayLike<number>; shape: number[] }[],
  eps = 1e-6,
): Promise<GradcheckResult> {
  const leaves = inputs.map((x) => {
    const t = Tensor.from(dev, x.values, x.shape, 'f64');
    t.requiresGrad = true;
    return t;
  });
  const out = fn(leaves);
  backward(out);
  out.dispose();
  const analytic = await Promise.all(leaves.map(async (t) => (t.grad ? t.grad.toFloat64() : new Float64Array(t.numel))));
  leaves.forEach((t) => { t.grad?.dispose(); t.dispose(); });

  const evalAt = async (values: Float64Array[]) => {
    const ts = values.map((v, i) => Tensor.from(dev, v, inputs[i]!.shape, 'f64'));
    const y = noGrad(() => fn(ts));
    const [v] = await y.toFloat64();
    [...ts, y].forEach((t) => t.dispose());
    return v!;
  };
  const base = inputs.map((x) => Float64Array.from(x.values));
  const numeric: Float64Array[] = [];
  for (let i = 0; i < base.length; i++) {
    const g = new Float64Array(base[i]!.length);
    for (let j = 0; j < g.length; j++) {
      const orig = base[i]![j]!;
      base[i]![j] = orig + eps;
      const plus = await evalAt(base);
      base[i]![j] = orig - eps;
      const minus = await evalAt(base);
      base[i]![j] = orig;
      g[j] = (plus - minus) / (2 * eps);
    }
    numeric.push(g);
  }
  const errors = analytic.map((a, i) => {
    let num = 0, den = 0;
    for (let j = 0; j < a.length; j++) {
      num += (a[j]! - numeric[i]![j]!) ** 2;
      den += numeric[i]![j]! ** 2;
    }
    return Math.sqrt(num / Math.max(den, 1e-300));
  });
  return { errors, analytic, numeric };
}
