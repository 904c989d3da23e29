// Reference GroupNorm (torch.nn.functional.group_norm): per (batch, group) mean and biased variance
// over the group's channels and all spatial positions, computed in float64 with two passes.
import { type HostView, set, toArray } from './reference.ts';

/** Checks groupNorm operand shapes; shared with the WebGPU launcher. x, out: [B,C,S]; weight, bias: [C]. */
export function groupNormShapes(x: { shape: readonly number[] }, weight: { shape: readonly number[] } | null, bias: { shape: readonly number[] } | null,
  out: { shape: readonly number[] }, p: { groups: number; eps: number }) {
  const str = (s: readonly number[]) => `[${s.join(',')}]`;
  if (x.shape.length !== 3) throw new Error(`expected x [B,C,S], got ${str(x.shape)}`);
  const [b, c, s] = x.shape as [number, number, number];
  if (out.shape.length !== 3 || out.shape.some((d, i) => d !== x.shape[i])) throw new Error(`out ${str(out.shape)} should be ${str(x.shape)}`);
  if (!Number.isInteger(p.groups) || p.groups < 1 || c % p.groups !== 0) throw new Error(`${c} channels do not split into ${p.groups} groups`);
  for (const [name, v] of [['weight', weight], ['bias', bias]] as const) {
    if (v && (v.shape.length !== 1 || v.shape[0] !== c)) throw new Error(`${name} ${str(v.shape)} should be [${c}]`);
  }
  return { b, c, s, groups: p.groups, cg: c / p.groups };
}

/**
 * out = (x - mean) / sqrt(var + eps) * weight + bias, mean and biased var per (batch, group).
 * x: [B,C,S], weight: [C] or null, bias: [C] or null, out: [B,C,S].
 */
export function refGroupNorm(x: HostView, weight: HostView | null, bias: HostView | null, out: HostView, p: { groups: number; eps: number }): void {
  const { b: nb, c: nc, s: ns, groups, cg } = groupNormShapes(x, weight, bias, out, p);
  const xs = toArray(x);
  const ws = weight ? toArray(weight) : null, bs = bias ? toArray(bias) : null;
  const n = cg * ns; // elements per group, contiguous in the logical order
  for (let b = 0; b < nb; b++) {
    for (let g = 0; g < groups; g++) {
      const start = (b * nc + g * cg) * ns;
      let sum = 0;
      for (let i = 0; i < n; i++) sum += xs[start + i]!;
      const mean = sum / n;
      let sq = 0;
      for (let i = 0; i < n; i++) sq += (xs[start + i]! - mean) ** 2;
      const rstd = 1 / Math.sqrt(sq / n + p.eps);
      for (let i = 0; i < n; i++) {
        const c = g * cg + Math.floor(i / ns);
        set(out, start + i, (xs[start + i]! - mean) * rstd * (ws ? ws[c]! : 1) + (bs ? bs[c]! : 0));
      }
    }
  }
}
