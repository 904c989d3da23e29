// LayerNorm and RMSNorm over the last axis on WebGPU. x is viewed as [R, D]; T threads share a row
// (T a power of two, summing through a tree in workgroup memory) and a workgroup holds WG / T rows:
// one row per workgroup for FLUX's D = 3072, many rows for a head's D = 128, a thread per row for
// tiny D. The row is read from global memory once per pass (it stays in cache) instead of being
// staged in workgroup memory, so any D works with the same kernel.
import type { View } from '../device/device.ts';
import { type GpuBinding, type GpuContext, Params, gridFor } from '../device/webgpu/context.ts';
import { normShapes } from './norm.cpu.ts';

type NormKind = 'layer' | 'rms';

/**
 * Whether the adapter runs shaders on the CPU (lavapipe, SwiftShader): a workgroup is then one CPU
 * thread stepping 8 SIMD lanes, and workgroup barriers and memory cost more than they save.
 */
export function isCpuAdapter(ctx: GpuContext): boolean {
  return /llvmpipe|swiftshader|\|software\|/i.test(ctx.adapterKey);
}

/**
 * Threads per row and workgroup size for rows of width d. A GPU splits a row over up to 256
 * threads (about 8 elements each); a CPU adapter gives each thread a whole row, which measured
 * 4.5x faster than 256 threads per row at D = 3072 and 100x at D = 128 on lavapipe.
 */
function normLayout(ctx: GpuContext, d: number): { t: number; wg: number } {
  if (isCpuAdapter(ctx)) return { t: 1, wg: 64 };
  const wg = Math.min(256, ctx.limits.maxInvocations);
  let t = 1;
  while (t < wg && t * 8 < d) t *= 2;
  return { t, wg };
}

/**
 * Sum of v over the T threads of this thread's row, returned to all of them. Called from uniform
 * control flow: every thread of the workgroup (padding ones too) takes part in the barriers.
 */
function rowSumWgsl(t: number, wg: number): string {
  if (t === 1) return 'fn rowSum(v: f32, lid: u32) -> f32 { return v; }';
  return /* wgsl */ `
var<workgroup> partial: array<f32, ${wg}>;

fn rowSum(v: f32, lid: u32) -> f32 {
  partial[lid] = v;
  workgroupBarrier();
  for (var s = T / 2u; s > 0u; s >>= 1u) {
    if (lid % T < s) { partial[lid] += partial[lid + s]; }
    workgroupBarrier();
  }
  let total = partial[lid - lid % T];
  workgroupBarrier(); // partial is reused by the next call
  return total;
}`;
}

function normWgsl(kind: NormKind, t: number, wg: number, hasWeight: boolean, hasBias: boolean): string {
  const vectors = [...(hasWeight ? ['w'] : []), ...(hasBias ? ['b'] : [])];
  // LayerNorm sums x - x[row, 0] rather than x: with a large mean (say 100, std 1) the f32 sums
  // then hold values of the size of the spread, and x - shift - mean stays exact to a few ulps of
  // the spread instead of the mean's rounding error (4e-6 at 100) showing up in every output.
  const stats = kind === 'layer'
    ? `let shift = x[xb];
  var s = 0.0;
  for (var i = t; i < p.d; i += T) { s += x[xb + i] - shift; }
  let mean = rowSum(s, lid) / f32(p.d);
  var ss = 0.0;
  for (var i = t; i < p.d; i += T) { let c = x[xb + i] - shift - mean; ss += c * c; }
  let rstd = inverseSqrt(rowSum(ss, lid) / f32(p.d) + p.eps);`
    : `var ss = 0.0;
  for (var i = t; i < p.d; i += T) { let xi = x[xb + i]; ss += xi * xi; }
  let rstd = inverseSqrt(rowSum(ss, lid) / f32(p.d) + p.eps);`;
  const centred = kind === 'layer' ? 'x[xb + i] - shift - mean' : 'x[xb + i]';
  return /* wgsl */ `
struct P { rows: u32, d: u32, x_off: u32, x_row: u32, o_off: u32, o_row: u32, w_off: u32, w_stride: u32, b_off: u32, b_stride: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${vectors.map((v, k) => `@group(0) @binding(${3 + k}) var<storage, read> ${v}: array<f32>;`).join('\n')}

const T = ${t}u; // threads per row
${rowSumWgsl(t, wg)}

@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = (wid.x + wid.y * nwg.x) * (${wg}u / T) + lid / T;
  let t = lid % T;
  // Threads past the last row redo it so that the barriers in rowSum see the whole workgroup.
  let xb = p.x_off + min(row, p.rows - 1u) * p.x_row;
  ${stats}
  if (row >= p.rows) { return; }
  let ob = p.o_off + row * p.o_row;
  for (var i = t; i < p.d; i += T) {
    var y = (${centred}) * rstd;
    ${hasWeight ? 'y *= w[p.w_off + i * p.w_stride];' : ''}
    ${hasBias ? 'y += b[p.b_off + i * p.b_stride];' : ''}
    out[ob + i] = y;
  }
}`;
}

/** Element stride between consecutive rows of v seen as [R, D]; D must be unit-stride and the leading axes must collapse into one. */
function rowStride(v: View, name: string): number {
  const n = v.shape.length;
  const d = v.shape[n - 1]!;
  if (d > 1 && v.strides[n - 1] !== 1) throw new Error(`${name} [${v.shape}] strides [${v.strides}]: the normalised axis must have stride 1`);
  let stride = d;
  let next: number | null = null; // the stride the next outer axis must have
  for (let k = n - 2; k >= 0; k--) {
    if (v.shape[k] === 1) continue;
    if (next === null) stride = v.strides[k]!;
    else if (v.strides[k] !== next) throw new Error(`${name} [${v.shape}] strides [${v.strides}]: the leading axes must collapse into one row axis`);
    next = v.strides[k]! * v.shape[k]!;
  }
  return stride;
}

function launchNorm(ctx: GpuContext, kind: NormKind, x: View, weight: View | null, bias: View | null, out: View, eps: number): void {
  const [rows, d] = normShapes(x, out, { weight, bias });
  const xRow = rowStride(x, 'x'), oRow = rowStride(out, 'out');
  if (rows === 0 || d === 0) return;
  const { t, wg } = normLayout(ctx, d);
  const params = new Params()
    .u32(rows, d, x.offset, xRow, out.offset, oRow)
    .u32(weight?.offset ?? 0, weight?.strides[0] ?? 0, bias?.offset ?? 0, bias?.strides[0] ?? 0)
    .f32(eps);
  const bindings: GpuBinding[] = [ctx.bind(x), ctx.bind(out)];
  if (weight) bindings.push(ctx.bind(weight));
  if (bias) bindings.push(ctx.bind(bias));
  const pipeline = ctx.pipeline(normWgsl(kind, t, wg, !!weight, !!bias));
  ctx.dispatch(`${kind}Norm [${x.shape}]`, pipeline, params.toBuffer(), bindings, gridFor(rows, wg / t, ctx.limits.maxWorkgroupsPerDim));
}

/** x, out: [R, D] (rows may be strided, D unit-stride); weight, bias: [D] or null. */
export function gpuLayerNorm(ctx: GpuContext, x: View, weight: View | null, bias: View | null, out: View, p: { eps: number }): void {
  launchNorm(ctx, 'layer', x, weight, bias, out, p.eps);
}

/** x, out: [R, D] (rows may be strided, D unit-stride); weight: [D] or null. */
export function gpuRmsNorm(ctx: GpuContext, x: View, weight: View | null, out: View, p: { eps: number }): void {
  launchNorm(ctx, 'rms', x, weight, null, out, p.eps);
}
