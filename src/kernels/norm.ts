// LayerNorm and RMSNorm over the last axis on WebGPU. x is viewed as [R, D]; T threads share a row
// (T a power of two, summing through a tree in workgroup memory) and a workgroup holds WG / T rows:
// on a GPU one row per workgroup for FLUX's D = 3072, 16 rows for a head's D = 128, a thread per
// row for tiny D; on a CPU adapter always a thread per row. Each pass re-reads the row from global
// memory (it stays in cache) instead of staging it in workgroup memory, so any D works.
// The backward ops (at the end of this file) add column sums for the weight and bias gradients.
import type { View } from '../device/device.ts';
import { type GpuBinding, type GpuContext, Params, gridFor, isCpuAdapter } from '../device/webgpu/context.ts';
import { normBackwardShapes, normShapes } from './norm.cpu.ts';

export type NormKind = 'layer' | 'rms';

/** Threads per row (a power of two) and threads per workgroup. */
export interface NormLayout { t: number; wg: number }

/**
 * The layout for rows of width d. A GPU splits a row over up to 256 threads (about 8 elements
 * each); a CPU adapter gives each thread a whole row, which on lavapipe measured 5x faster than
 * the GPU layout at D = 3072 and D = 128, and 10x at D = 24.
 */
export function normLayout(ctx: GpuContext, d: number, cpu = isCpuAdapter(ctx)): NormLayout {
  if (cpu) return { t: 1, wg: 64 };
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

/**
 * A row kernel: rowSum and a `main` in which thread t of the T threads of row `row` runs `body`.
 * `r` is the row clamped to the last one: threads past the last row redo it so that the barriers
 * in rowSum see the whole workgroup. The kernel's P must have `rows`.
 */
function rowKernelWgsl(t: number, wg: number, body: string): string {
  return /* wgsl */ `
const T = ${t}u; // threads per row
${rowSumWgsl(t, wg)}

@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let row = (wid.x + wid.y * nwg.x) * (${wg}u / T) + lid / T;
  let t = lid % T;
  let r = min(row, p.rows - 1u);
  ${body}
}`;
}

/** Dispatches a row kernel over `rows` rows, wg / t of them per workgroup. */
function dispatchRows(ctx: GpuContext, label: string, wgsl: string, params: Params, bindings: GpuBinding[], rows: number, { t, wg }: NormLayout): void {
  ctx.dispatch(label, ctx.pipeline(wgsl), params.toBuffer(), bindings, gridFor(rows, wg / t, ctx.limits.maxWorkgroupsPerDim));
}

/**
 * WGSL statements of a row kernel's `main` that compute the statistics of the row starting at
 * x[xb] (threads t = 0 .. T-1 of the row stride over it): `rstd`, and for LayerNorm `shift` and
 * `mean`. Called from uniform control flow (rowSum has barriers).
 */
function rowStatsWgsl(kind: NormKind): string {
  // LayerNorm sums x - x[row, 0] rather than x: with a large mean (say 100, std 1) the f32 sums
  // then hold values of the size of the spread, and x - shift - mean stays exact to a few ulps of
  // the spread instead of the mean's rounding error (4e-6 at 100) showing up in every output.
  return kind === 'layer'
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
}

/** WGSL of element i of the row, centred for LayerNorm: times rstd it is the normalised value. */
function centredWgsl(kind: NormKind): string {
  return kind === 'layer' ? 'x[xb + i] - shift - mean' : 'x[xb + i]';
}

function normWgsl(kind: NormKind, t: number, wg: number, hasWeight: boolean, hasBias: boolean): string {
  const vectors = [...(hasWeight ? ['w'] : []), ...(hasBias ? ['b'] : [])];
  return /* wgsl */ `
struct P { rows: u32, d: u32, x_off: u32, x_row: u32, o_off: u32, o_row: u32, w_off: u32, w_stride: u32, b_off: u32, b_stride: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${vectors.map((v, k) => `@group(0) @binding(${3 + k}) var<storage, read> ${v}: array<f32>;`).join('\n')}
${rowKernelWgsl(t, wg, `let xb = p.x_off + r * p.x_row;
  ${rowStatsWgsl(kind)}
  if (row >= p.rows) { return; }
  let ob = p.o_off + row * p.o_row;
  for (var i = t; i < p.d; i += T) {
    var y = (${centredWgsl(kind)}) * rstd;
    ${hasWeight ? 'y *= w[p.w_off + i * p.w_stride];' : ''}
    ${hasBias ? 'y += b[p.b_off + i * p.b_stride];' : ''}
    out[ob + i] = y;
  }`)}`;
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

/** The launcher behind gpuLayerNorm and gpuRmsNorm; `layout` overrides the adapter's choice (tests run both). */
export function gpuNorm(ctx: GpuContext, kind: NormKind, x: View, weight: View | null, bias: View | null, out: View, eps: number, layout?: NormLayout): void {
  const [rows, d] = normShapes(x, out, { weight, bias });
  const xRow = rowStride(x, 'x'), oRow = rowStride(out, 'out');
  if (rows === 0 || d === 0) return;
  const chosen = layout ?? normLayout(ctx, d);
  const params = new Params()
    .u32(rows, d, x.offset, xRow, out.offset, oRow)
    .u32(weight?.offset ?? 0, weight?.strides[0] ?? 0, bias?.offset ?? 0, bias?.strides[0] ?? 0)
    .f32(eps);
  const bindings: GpuBinding[] = [ctx.bind(x), ctx.bind(out)];
  if (weight) bindings.push(ctx.bind(weight));
  if (bias) bindings.push(ctx.bind(bias));
  dispatchRows(ctx, `${kind}Norm [${x.shape}]`, normWgsl(kind, chosen.t, chosen.wg, !!weight, !!bias), params, bindings, rows, chosen);
}

/** x, out: [R, D] (rows may be strided, D unit-stride); weight, bias: [D] or null. */
export function gpuLayerNorm(ctx: GpuContext, x: View, weight: View | null, bias: View | null, out: View, p: { eps: number }): void {
  gpuNorm(ctx, 'layer', x, weight, bias, out, p.eps);
}

/** x, out: [R, D] (rows may be strided, D unit-stride); weight: [D] or null. */
export function gpuRmsNorm(ctx: GpuContext, x: View, weight: View | null, out: View, p: { eps: number }): void {
  gpuNorm(ctx, 'rms', x, weight, null, out, p.eps);
}

// ---- backward -------------------------------------------------------------------------------------
//
// Three passes, with g = dy * weight and xhat = (x - mean) * rstd (x * rstd for RMSNorm):
//  1. rows (the forward's layout): recompute the row's statistics exactly as the forward does, sum
//     g and g * xhat over the row, write dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (RMSNorm
//     without mean(g)) and, when a weight or bias gradient is wanted, the statistics to a scratch buffer.
//  2. column partials: thread (column, part) sums dy * xhat and dy over one chunk of rows.
//     Neighbouring threads take neighbouring columns (vec4s of 4 columns when rows are 16-byte
//     aligned), so a GPU's loads coalesce and lavapipe's 8 SIMD lanes read 8 adjacent vec4s.
//     On a GPU the chunks are short enough for about 2^17 threads (FLUX's 4608 x 3072: 171 chunks of
//     27 rows); on a CPU adapter 512 rows long (9 chunks), as a CPU wants long runs and few partials.
//  3. column totals: the rows pass's layout again, now over the partials stored transposed
//     ([column][part], each column's parts contiguous), written to the strided dweight/dbias.

/** Rows per column-pass chunk for rows of `cols` column threads. */
function columnChunk(rows: number, cols: number, cpu: boolean): number {
  return cpu ? 512 : Math.max(16, Math.ceil((rows * cols) / 2 ** 17));
}

/** Floats per row of saved statistics: shift, mean, rstd (LayerNorm) or rstd. */
const statsFloats = (kind: NormKind) => (kind === 'layer' ? 3 : 1);

/** Pass 1. Bindings: x, dy, dx, then weight and the scratch statistics when present. */
function normRowsBackwardWgsl(kind: NormKind, t: number, wg: number, hasWeight: boolean, saveStats: boolean): string {
  const g = `dy[gb + i]${hasWeight ? ' * w[p.w_off + i * p.w_stride]' : ''}`;
  const xhat = `(${centredWgsl(kind)}) * rstd`;
  const saved = kind === 'layer' ? ['shift', 'mean', 'rstd'] : ['rstd'];
  return /* wgsl */ `
struct P { rows: u32, d: u32, x_off: u32, x_row: u32, g_off: u32, g_row: u32, o_off: u32, o_row: u32, w_off: u32, w_stride: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
${hasWeight ? '@group(0) @binding(4) var<storage, read> w: array<f32>;' : ''}
${saveStats ? `@group(0) @binding(${hasWeight ? 5 : 4}) var<storage, read_write> stats: array<f32>;` : ''}
${rowKernelWgsl(t, wg, `let xb = p.x_off + r * p.x_row;
  let gb = p.g_off + r * p.g_row;
  ${rowStatsWgsl(kind)}
  ${kind === 'layer' ? 'var sg = 0.0;' : ''}
  var sgx = 0.0;
  for (var i = t; i < p.d; i += T) {
    let g = ${g};
    ${kind === 'layer' ? 'sg += g;' : ''}
    sgx += g * ${xhat};
  }
  ${kind === 'layer' ? 'let mg = rowSum(sg, lid) / f32(p.d);' : ''}
  let mgx = rowSum(sgx, lid) / f32(p.d);
  if (row >= p.rows) { return; }
  ${saveStats ? `if (t == 0u) { ${saved.map((v, k) => `stats[${saved.length}u * row + ${k}u] = ${v};`).join(' ')} }` : ''}
  let ob = p.o_off + row * p.o_row;
  for (var i = t; i < p.d; i += T) {
    dx[ob + i] = rstd * (${g}${kind === 'layer' ? ' - mg' : ''} - ${xhat} * mgx);
  }`)}`;
}

const COLUMN_WG = 64;

/**
 * Pass 2 over rows of vectors of w floats. `sums` lists the partial sums to form, in scratch order:
 * 'dw' (dy * xhat) and/or 'db' (dy). Bindings: dy, scratch (statistics, then partials at p.s_off),
 * then x when 'dw' needs it.
 */
function normColumnsWgsl(kind: NormKind, w: number, sums: readonly ('dw' | 'db')[]): string {
  const xhat = kind === 'layer'
    ? `(x[p.x_off + r * p.x_row + col] - scratch[3u * r] - scratch[3u * r + 1u]) * scratch[3u * r + 2u]`
    : 'x[p.x_off + r * p.x_row + col] * scratch[r]';
  const lanes = w === 4 ? ['.x', '.y', '.z', '.w'] : [''];
  return /* wgsl */ `
alias V = ${w === 4 ? 'vec4<f32>' : 'f32'};
struct P { rows: u32, d: u32, cols: u32, parts: u32, chunk: u32, x_off: u32, x_row: u32, g_off: u32, g_row: u32, s_off: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> dy: array<V>;
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>;
${sums.includes('dw') ? '@group(0) @binding(3) var<storage, read> x: array<V>;' : ''}

@compute @workgroup_size(${COLUMN_WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let id = gid.x + gid.y * nwg.x * ${COLUMN_WG}u;
  let col = id % p.cols; // in vectors
  let part = id / p.cols;
  if (part >= p.parts) { return; }
  ${sums.map((v) => `var ${v} = V();`).join(' ')}
  for (var r = part * p.chunk; r < min(p.rows, (part + 1u) * p.chunk); r++) {
    let g = dy[p.g_off + r * p.g_row + col];
    ${sums.includes('dw') ? `dw += g * ${xhat};` : ''}
    ${sums.includes('db') ? 'db += g;' : ''}
  }
  ${sums.flatMap((v, k) => lanes.map((lane, e) => `scratch[p.s_off + (${k}u * p.d + col * ${w}u + ${e}u) * p.parts + part] = ${v}${lane};`)).join('\n  ')}
}`;
}

/** Pass 3: out[o_off + r * o_stride] = sum of the n partials of row r. Bindings: scratch, out. */
function sumRowsWgsl(t: number, wg: number): string {
  return /* wgsl */ `
struct P { rows: u32, n: u32, s_off: u32, o_off: u32, o_stride: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${rowKernelWgsl(t, wg, `let base = p.s_off + r * p.n;
  var s = 0.0;
  for (var k = t; k < p.n; k += T) { s += partials[base + k]; }
  let total = rowSum(s, lid);
  if (row < p.rows && t == 0u) { out[p.o_off + row * p.o_stride] = total; }`)}`;
}

/** The module's scratch buffer per device, grown on demand (a replaced one lives until its last use). */
const scratchBuffers = new WeakMap<GPUDevice, GPUBuffer>();

/**
 * A storage binding of `bytes` bytes of scratch memory for intermediate results between the
 * dispatches of one op (row statistics, partial sums). Its contents are undefined at the start of
 * each op: dispatches run in issue order, so consecutive ops may share it.
 */
export function scratchBinding(ctx: GpuContext, bytes: number): GpuBinding {
  const size = Math.max(4, Math.ceil(bytes / 4) * 4);
  if (size > ctx.limits.maxBindingBytes) throw new Error(`${size} bytes of intermediate results exceed one ${ctx.limits.maxBindingBytes}-byte binding`);
  let buf = scratchBuffers.get(ctx.gpu);
  if (!buf || buf.size < size) {
    buf = ctx.gpu.createBuffer({ size: Math.max(65536, 2 ** Math.ceil(Math.log2(size))), usage: GPUBufferUsage.STORAGE });
    scratchBuffers.set(ctx.gpu, buf);
  }
  return { buffer: buf, offset: 0, size };
}

/**
 * The launcher behind gpuLayerNormBackward and gpuRmsNormBackward (RMSNorm never has a bias);
 * `cpuLayout` overrides the adapter's choice of layouts (tests run both).
 */
export function gpuNormBackward(
  ctx: GpuContext, kind: NormKind, x: View, weight: View | null, dy: View, dx: View, dweight: View | null, dbias: View | null, eps: number,
  cpuLayout = isCpuAdapter(ctx),
): void {
  const [rows, d] = normBackwardShapes(x, dy, dx, { weight, dweight, dbias });
  const [xRow, gRow, oRow] = [rowStride(x, 'x'), rowStride(dy, 'dy'), rowStride(dx, 'dx')];
  if (d === 0) return;
  const label = `${kind}NormBackward [${x.shape}]`;
  const outs = [...(dweight ? [['dw', dweight] as const] : []), ...(dbias ? [['db', dbias] as const] : [])];
  const statsBytes = rows * statsFloats(kind) * 4;
  // Column pass geometry: vec4s of 4 columns when every row of x and dy starts 16-byte aligned.
  const w = d % 4 === 0 && [x.offset, xRow, dy.offset, gRow].every((n) => n % 4 === 0) ? 4 : 1;
  const cols = d / w;
  const chunk = columnChunk(rows, cols, cpuLayout);
  const parts = Math.max(1, Math.ceil(rows / chunk));
  const scratch = outs.length ? scratchBinding(ctx, statsBytes + outs.length * d * parts * 4) : null;

  if (rows > 0) {
    const layout = normLayout(ctx, d, cpuLayout);
    const params = new Params().u32(rows, d, x.offset, xRow, dy.offset, gRow, dx.offset, oRow, weight?.offset ?? 0, weight?.strides[0] ?? 0).f32(eps);
    const bindings = [ctx.bind(x), ctx.bind(dy), ctx.bind(dx), ...(weight ? [ctx.bind(weight)] : []), ...(scratch ? [scratch] : [])];
    dispatchRows(ctx, label, normRowsBackwardWgsl(kind, layout.t, layout.wg, !!weight, !!scratch), params, bindings, rows, layout);
  }
  if (!scratch) return;

  const sOff = statsBytes / 4;
  const columns = new Params().u32(rows, d, cols, parts, chunk, x.offset / w, xRow / w, dy.offset / w, gRow / w, sOff);
  const pipeline = ctx.pipeline(normColumnsWgsl(kind, w, outs.map(([name]) => name)));
  const bindings = [ctx.bind(dy), scratch, ...(dweight ? [ctx.bind(x)] : [])];
  ctx.dispatch(label, pipeline, columns.toBuffer(), bindings, gridFor(cols * parts, COLUMN_WG, ctx.limits.maxWorkgroupsPerDim));

  const layout = normLayout(ctx, parts, cpuLayout);
  outs.forEach(([, out], k) => {
    const params = new Params().u32(d, parts, sOff + k * d * parts, out.offset, out.strides[0]!);
    dispatchRows(ctx, label, sumRowsWgsl(layout.t, layout.wg), params, [scratch, ctx.bind(out)], d, layout);
  });
}

/**
 * x, dy, dx: [R, D] (rows may be strided, D unit-stride); weight, dweight, dbias: [D] or null
 * (dweight = sum of dy * xhat over rows, dbias = sum of dy).
 */
export function gpuLayerNormBackward(ctx: GpuContext, x: View, weight: View | null, dy: View, dx: View, dweight: View | null, dbias: View | null, p: { eps: number }): void {
  gpuNormBackward(ctx, 'layer', x, weight, dy, dx, dweight, dbias, p.eps);
}

/** x, dy, dx: [R, D] (rows may be strided, D unit-stride); weight, dweight: [D] or null. */
export function gpuRmsNormBackward(ctx: GpuContext, x: View, weight: View | null, dy: View, dx: View, dweight: View | null, p: { eps: number }): void {
  gpuNormBackward(ctx, 'rms', x, weight, dy, dx, dweight, null, p.eps);
}
