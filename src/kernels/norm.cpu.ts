// Reference LayerNorm and RMSNorm over the last axis, forward and backward (plain loops in float64,
// rounded on store).
// x and out are [R, D] in any layout the HostView describes (R = all leading dims).
import { numel } from '../tensor/shape.ts';
import { type HostView, get, set } from './reference.ts';

/** Checks x [R, D] against out and the optional per-feature vectors [D]; returns [R, D]. */
export function normShapes(x: { shape: readonly number[] }, out: { shape: readonly number[] }, vectors: Record<string, { shape: readonly number[] } | null>): [number, number] {
  if (x.shape.length === 0) throw new Error('x must have at least one axis (the normalised one)');
  if (x.shape.length !== out.shape.length || x.shape.some((n, i) => n !== out.shape[i])) {
    throw new Error(`out [${out.shape}] must have x's shape [${x.shape}]`);
  }
  const d = x.shape.at(-1)!;
  for (const [name, v] of Object.entries(vectors)) {
    if (v && (v.shape.length !== 1 || v.shape[0] !== d)) throw new Error(`${name} [${v.shape}] must be [${d}] (the last axis of x [${x.shape}])`);
  }
  return [numel(x.shape.slice(0, -1)), d];
}

/** PyTorch layer_norm: (x - mean) / sqrt(var + eps) * weight + bias, biased variance. */
export function refLayerNorm(
  x: HostView, // (R, D)
  weight: HostView | null, // (D) or null
  bias: HostView | null, // (D) or null
  out: HostView, // (R, D)
  p: { eps: number },
): void {
  const [rows, d] = normShapes(x, out, { weight, bias });
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let i = 0; i < d; i++) mean += get(x, r * d + i);
    mean /= d;
    let variance = 0;
    for (let i = 0; i < d; i++) {
      const c = get(x, r * d + i) - mean;
      variance += c * c;
    }
    variance /= d;
    const rstd = 1 / Math.sqrt(variance + p.eps);
    for (let i = 0; i < d; i++) {
      let y = (get(x, r * d + i) - mean) * rstd;
      if (weight) y *= get(weight, i);
      if (bias) y += get(bias, i);
      set(out, r * d + i, y);
    }
  }
}

/** diffusers RMSNorm: x * rsqrt(mean(x^2) + eps) * weight. */
export function refRmsNorm(
  x: HostView, // (R, D)
  weight: HostView | null, // (D) or null
  out: HostView, // (R, D)
  p: { eps: number },
): void {
  const [rows, d] = normShapes(x, out, { weight });
  for (let r = 0; r < rows; r++) {
    let meanSquare = 0;
    for (let i = 0; i < d; i++) meanSquare += get(x, r * d + i) ** 2;
    meanSquare /= d;
    const rstd = 1 / Math.sqrt(meanSquare + p.eps);
    for (let i = 0; i < d; i++) {
      let y = get(x, r * d + i) * rstd;
      if (weight) y *= get(weight, i);
      set(out, r * d + i, y);
    }
  }
}

/** Checks dy and dx against x [R, D] and the optional vectors [D] of a norm backward; returns [R, D]. */
export function normBackwardShapes(
  x: { shape: readonly number[] },
  dy: { shape: readonly number[] },
  dx: { shape: readonly number[] },
  vectors: Record<string, { shape: readonly number[] } | null>,
): [number, number] {
  for (const [name, v] of [['dy', dy], ['dx', dx]] as const) {
    if (v.shape.length !== x.shape.length || v.shape.some((n, i) => n !== x.shape[i])) throw new Error(`${name} [${v.shape}] must have x's shape [${x.shape}]`);
  }
  return normShapes(x, dx, vectors);
}

/**
 * LayerNorm backward, with xhat = (x - mean) * rstd and g = dy * weight:
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) per row; dweight = sum over rows of dy * xhat,
 * dbias = sum over rows of dy (each only when given; dweight is defined without a weight too).
 */
export function refLayerNormBackward(
  x: HostView, // (R, D)
  weight: HostView | null, // (D) or null
  dy: HostView, // (R, D)
  dx: HostView, // (R, D)
  dweight: HostView | null, // (D) or null
  dbias: HostView | null, // (D) or null
  p: { eps: number },
): void {
  const [rows, d] = normBackwardShapes(x, dy, dx, { weight, dweight, dbias });
  const dw = new Float64Array(d), db = new Float64Array(d);
  const xhat = new Float64Array(d), g = new Float64Array(d);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let i = 0; i < d; i++) mean += get(x, r * d + i);
    mean /= d;
    let variance = 0;
    for (let i = 0; i < d; i++) variance += (get(x, r * d + i) - mean) ** 2;
    const rstd = 1 / Math.sqrt(variance / d + p.eps);
    let meanG = 0, meanGX = 0;
    for (let i = 0; i < d; i++) {
      const dyi = get(dy, r * d + i);
      xhat[i] = (get(x, r * d + i) - mean) * rstd;
      g[i] = weight ? dyi * get(weight, i) : dyi;
      meanG += g[i]!;
      meanGX += g[i]! * xhat[i]!;
      dw[i] += dyi * xhat[i]!;
      db[i] += dyi;
    }
    meanG /= d;
    meanGX /= d;
    for (let i = 0; i < d; i++) set(dx, r * d + i, rstd * (g[i]! - meanG - xhat[i]! * meanGX));
  }
  for (let i = 0; i < d; i++) {
    if (dweight) set(dweight, i, dw[i]!);
    if (dbias) set(dbias, i, db[i]!);
  }
}

/**
 * RMSNorm backward, with xhat = x * rstd and g = dy * weight: dx = rstd * (g - xhat * mean(g * xhat))
 * per row; dweight = sum over rows of dy * xhat (when given).
 */
export function refRmsNormBackward(
  x: HostView, // (R, D)
  weight: HostView | null, // (D) or null
  dy: HostView, // (R, D)
  dx: HostView, // (R, D)
  dweight: HostView | null, // (D) or null
  p: { eps: number },
): void {
  const [rows, d] = normBackwardShapes(x, dy, dx, { weight, dweight });
  const dw = new Float64Array(d);
  const xhat = new Float64Array(d), g = new Float64Array(d);
  for (let r = 0; r < rows; r++) {
    let meanSquare = 0;
    for (let i = 0; i < d; i++) meanSquare += get(x, r * d + i) ** 2;
    const rstd = 1 / Math.sqrt(meanSquare / d + p.eps);
    let meanGX = 0;
    for (let i = 0; i < d; i++) {
      const dyi = get(dy, r * d + i);
      xhat[i] = get(x, r * d + i) * rstd;
      g[i] = weight ? dyi * get(weight, i) : dyi;
      meanGX += g[i]! * xhat[i]!;
      dw[i] += dyi * xhat[i]!;
    }
    meanGX /= d;
    for (let i = 0; i < d; i++) set(dx, r * d + i, rstd * (g[i]! - xhat[i]! * meanGX));
  }
  if (dweight) for (let i = 0; i < d; i++) set(dweight, i, dw[i]!);
}
