// WebGPU reductions over axis 1 of [outer, n, inner], softmax over the last axis of [R, D] and its
// backward. References: reduce.cpu.ts.
//
// A workgroup of WG threads holds WG / T outputs (softmax: rows) with T threads each, T a power of
// two: each thread folds every T-th element of its output's axis into a private partial, then
// log2(T) barrier steps merge the partials in workgroup memory. On a GPU, T grows with the axis
// (about 8 elements per thread, up to the whole workgroup), so long axes get a workgroup and short
// ones share it. On a CPU adapter (lavapipe: a workgroup is one CPU thread stepping 8 SIMD lanes,
// barriers are expensive) each thread takes a whole output, T = 1: measured on a [4096, 4096] sum,
// 10x faster than the GPU layout there. A unit-stride axis whose length and offset are multiples
// of 4 is read as vec4 (2-3x on lavapipe; 16-byte loads on GPUs). When inner > 1 the threads of a
// warp take adjacent outputs, so their loads are adjacent too.
//
// Variance folds Welford (count, mean, M2) states merged with Chan's formula, on values shifted by
// the axis' first element (stable in float32 when the mean is large against the spread); softmax
// folds online (max, sum of exp(x - max)) pairs, so x is read twice, not three times. x larger than
// one binding is processed in slices of whole [n, inner] slabs or rows.
//
// Limitation: one output is reduced within one workgroup, so a single huge row (outer * inner small,
// n in the millions) occupies one workgroup of the GPU; a two-pass split of n would fix that.
import type { ReduceOp, View } from '../device/device.ts';
import { type GpuContext, gridFor } from '../device/webgpu/context.ts';
import { isContiguous, numel } from '../tensor/shape.ts';
import { type Field, bindSpan, f32, u32, uniformData, uniformWgsl, unitsPerBinding, withHelpers } from './elementwise.ts';
import { isCpuAdapter } from '../device/webgpu/context.ts';
import { type ReduceDims, checkReduceShapes, checkSoftmaxBackwardShapes, checkSoftmaxShapes } from './reduce.cpu.ts';

/** Threads per output (t, a power of two) and per workgroup (wg). */
export interface ReduceLayout { t: number; wg: number }

const pow2AtLeast = (x: number) => 2 ** Math.ceil(Math.log2(Math.max(x, 1)));

/**
 * The layout for an axis of n elements whose outputs lie `inner` apart. A GPU gets about 8 elements
 * per thread, keeping at least min(inner, wg) adjacent outputs in a workgroup so that a warp's loads
 * are adjacent; `tree` false (a CPU adapter's default) gives each thread a whole output.
 */
export function reduceLayout(ctx: GpuContext, n: number, inner = 1, tree = !isCpuAdapter(ctx)): ReduceLayout {
  if (!tree) return { t: 1, wg: 64 };
  const wg = Math.min(256, 2 ** Math.floor(Math.log2(ctx.limits.maxInvocations)));
  const t = Math.min(wg / Math.min(wg, pow2AtLeast(inner)), pow2AtLeast(Math.ceil(n / 8)));
  return { t, wg };
}

/** Loop iterations a thread folds into one block partial before merging it into its total. */
const BLOCK = 64;

/**
 * WGSL of a thread's fold over one axis (first element `k0`, `count` elements `stride` apart) into
 * `s`: `load(index)` reads an element (e.g. \`x[index]\`) and `step(v)` folds it into the block
 * partial `b`. Blocks keep a float32 sum's rounding error growing with BLOCK plus the number of
 * blocks instead of with n (4e-6 relative against 3e-7 for a 20000-element mean). vec4: the axis is
 * dense and 4-aligned, `load` reads a vec4<f32> at a vec4 index.
 */
function foldLoop(load: (index: string) => string, k0: string, count: string, stride: string, t: number, vec4: boolean, init: string, step: (v: string) => string): string {
  const body = vec4
    ? [`let w = ${load(`${k0} / 4u + k`)};`, ...['x', 'y', 'z', 'w'].map((c) => step(`w.${c}`))].join('\n        ')
    : step(load(`${k0} + k * ${stride}`));
  const end = vec4 ? `${count} / 4u` : count;
  return `for (var k = r; k < ${end};) {
      var b = ${init};
      let stop = min(${end}, k + ${BLOCK * t}u);
      for (; k < stop; k += ${t}u) {
        ${body}
      }
      s = merge(s, b);
    }`;
}

/**
 * WGSL that merges each thread's `partial[t]` with the others of its output, T threads apart by
 * `spacing`: afterwards the first thread of each output holds the result. Runs in uniform control
 * flow (every thread of the workgroup takes part in the barriers).
 */
function treeWgsl(t: number, spacing: string): string {
  return `for (var h = ${t >> 1}u; h > 0u; h = h / 2u) {
    workgroupBarrier();
    if (r < h) { partial[i] = merge(partial[i], partial[i + h * ${spacing}]); }
  }`;
}

/** The state a thread folds elements into, how one element enters it, how two merge, the result. */
interface Fold { state: string; init: string; lift: (v: string) => string; merge: string; finish: string }

const FOLDS: Record<ReduceOp, Fold> = {
  sum: { state: 'f32', init: '0.0', lift: (v) => v, merge: 'a + b', finish: 's' },
  mean: { state: 'f32', init: '0.0', lift: (v) => v, merge: 'a + b', finish: 's / f32(p.n)' },
  max: { state: 'f32', init: '-inf_()', lift: (v) => v, merge: 'max(a, b)', finish: 's' },
  min: { state: 'f32', init: 'inf_()', lift: (v) => v, merge: 'min(a, b)', finish: 's' },
  // (count, mean, M2) of v - x0: an element is the state (1, v - x0, 0), so one merge folds and reduces.
  var: { state: 'vec3<f32>', init: 'vec3<f32>(0.0)', lift: (v) => `vec3<f32>(1.0, ${v} - x0, 0.0)`, merge: 'chan(a, b)', finish: 's.z / max(0.0, f32(p.n) - p.corr)' },
};

const CHAN = `fn chan(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
  let n = a.x + b.x;
  if (n == 0.0) { return a; }
  let d = b.y - a.y;
  let f = b.x / n;
  return vec3<f32>(n, a.y + d * f, a.z + b.z + d * d * a.x * f);
}`;

function requireDenseF32(op: string, views: Record<string, View>): void {
  for (const [name, v] of Object.entries(views)) {
    if (v.dtype !== 'f32') throw new Error(`${op} computes on f32; ${name} is ${v.dtype}`);
    if (!isContiguous(v.shape, v.strides)) throw new Error(`${op} wants a dense ${name}; got [${v.shape}] strides [${v.strides}]`);
  }
}

/**
 * out[o, j] = op over k of x[o, k, j] ('var' divides by max(0, n - correction), correction 1 by
 * default).  x: [outer, n, inner] dense f32, out: [outer, inner] dense f32
 */
export function gpuReduce(ctx: GpuContext, op: ReduceOp, x: View, out: View, p: ReduceDims, layout = reduceLayout(ctx, p.n, p.inner)): void {
  checkReduceShapes(x, out, p);
  requireDenseF32(`reduce ${op}`, { x, out });
  const { outer, n, inner } = p;
  if (outer * inner === 0) return;
  const { t, wg } = layout;
  const c = wg / t; // outputs per workgroup
  const vec4 = inner === 1 && n % 4 === 0 && x.offset % 4 === 0;
  const fold = FOLDS[op];
  const fields = (outputs = 0, xo = 0, oo = 0): Field[] => [u32('outputs', outputs), u32('n', n), u32('inner', inner), u32('xo', xo), u32('oo', oo), f32('corr', p.correction ?? 1)];
  // Thread i is (r, q) = (thread r of output q): r-major within an output when the axis is dense
  // (its threads read adjacent elements), output-major otherwise (adjacent outputs are adjacent).
  const [r, q, spacing] = inner === 1 ? [`i % ${t}u`, `i / ${t}u`, '1u'] : [`i / ${c}u`, `i % ${c}u`, `${c}u`];
  const first = inner === 1 ? 'p.xo + q * p.n' : 'p.xo + (q / p.inner) * p.n * p.inner + q % p.inner';
  const pipeline = ctx.pipeline(withHelpers(`${uniformWgsl(fields())}
@group(0) @binding(1) var<storage, read> x: array<${vec4 ? 'vec4<f32>' : 'f32'}>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<workgroup> partial: array<${fold.state}, ${wg}>;
${op === 'var' ? CHAN : ''}
fn merge(a: ${fold.state}, b: ${fold.state}) -> ${fold.state} { return ${fold.merge}; }

@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) i: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = ${r};
  let q = (wid.x + wid.y * nwg.x) * ${c}u + ${q};
  var s: ${fold.state} = ${fold.init};
  if (q < p.outputs) {
    let k0 = ${first};${op === 'var' ? `\n    let x0 = x[k0${vec4 ? ' / 4u].x' : ']'};` : ''}
    ${foldLoop((k) => `x[${k}]`, 'k0', 'p.n', 'p.inner', t, vec4, fold.init, (v) => `b = merge(b, ${fold.lift(v)});`)}
  }
  partial[i] = s;
  ${treeWgsl(t, spacing)}
  if (r == 0u && q < p.outputs) {
    let s = partial[i];
    out[p.oo + q] = ${fold.finish};
  }
}
`));
  const slab = n * inner; // elements of x per outer index
  const per = unitsPerBinding(ctx, slab * 4);
  if (per < 1) throw new Error(`one [n=${n}, inner=${inner}] slab of x exceeds a ${ctx.limits.maxBindingBytes}-byte binding`);
  for (let o0 = 0; o0 < outer; o0 += per) {
    const o1 = Math.min(outer, o0 + per);
    const xb = bindSpan(ctx, x, x.offset + o0 * slab, x.offset + o1 * slab);
    const ob = bindSpan(ctx, out, out.offset + o0 * inner, out.offset + o1 * inner);
    const outputs = (o1 - o0) * inner;
    const params = uniformData(fields(outputs, x.offset + o0 * slab - xb.shift, out.offset + o0 * inner - ob.shift));
    ctx.dispatch(`reduce ${op} [${x.shape}] (outer=${outer}, n=${n}, inner=${inner}) -> [${out.shape}]`, pipeline, params, [xb.binding, ob.binding], gridFor(outputs, c, ctx.limits.maxWorkgroupsPerDim));
  }
}

/**
 * Softmax over the last axis, subtracting the row max.  x, out: [R, D] dense f32
 * (R = all leading dims).
 */
export function gpuSoftmax(ctx: GpuContext, x: View, out: View, layout = reduceLayout(ctx, x.shape.at(-1) ?? 1)): void {
  checkSoftmaxShapes(x, out);
  requireDenseF32('softmax', { x, out });
  if (numel(x.shape) === 0) return;
  const d = x.shape.at(-1)!;
  const rowsTotal = numel(x.shape) / d;
  const { t, wg } = layout;
  const c = wg / t; // rows per workgroup
  const vec4 = d % 4 === 0 && x.offset % 4 === 0 && out.offset % 4 === 0;
  const fields = (rows = 0, xo = 0, oo = 0) => [u32('rows', rows), u32('d', d), u32('xo', xo), u32('oo', oo)];
  const store = vec4
    ? 'out[(p.oo + base) / 4u + k] = exp(x[(p.xo + base) / 4u + k] - top) * inv;'
    : 'out[p.oo + base + k] = exp(x[p.xo + base + k] - top) * inv;';
  // (m, s) = (max so far, sum of exp(x - m)); m starts at the lowest finite float, not -inf, so a
  // -inf entry (a mask) adds exp(-inf) = 0, not NaN; an all -inf row ends as 0 * inf = NaN, as torch.
  const pipeline = ctx.pipeline(`${uniformWgsl(fields())}
@group(0) @binding(1) var<storage, read> x: array<${vec4 ? 'vec4<f32>' : 'f32'}>;
@group(0) @binding(2) var<storage, read_write> out: array<${vec4 ? 'vec4<f32>' : 'f32'}>;
var<workgroup> partial: array<vec2<f32>, ${wg}>;
const LOWEST = bitcast<f32>(0xff7fffffu);

fn online(a: vec2<f32>, v: f32) -> vec2<f32> {
  if (v > a.x) { return vec2<f32>(v, a.y * exp(a.x - v) + 1.0); }
  return vec2<f32>(a.x, a.y + exp(v - a.x));
}

fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) i: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = i % ${t}u;
  let row = (wid.x + wid.y * nwg.x) * ${c}u + i / ${t}u;
  let base = row * p.d;
  var s = vec2<f32>(LOWEST, 0.0);
  if (row < p.rows) {
    let k0 = p.xo + base;
    ${foldLoop((k) => `x[${k}]`, 'k0', 'p.d', '1u', t, vec4, 'vec2<f32>(LOWEST, 0.0)', (v) => `b = online(b, ${v});`)}
  }
  partial[i] = s;
  ${treeWgsl(t, '1u')}
  workgroupBarrier();
  let top = partial[i - r].x;
  let inv = 1.0 / partial[i - r].y;
  if (row < p.rows) {
    for (var k = r; k < p.d${vec4 ? ' / 4u' : ''}; k += ${t}u) {
      ${store}
    }
  }
}
`);
  const per = unitsPerBinding(ctx, d * 4);
  if (per < 1) throw new Error(`one row of ${d} elements exceeds a ${ctx.limits.maxBindingBytes}-byte binding`);
  for (let r0 = 0; r0 < rowsTotal; r0 += per) {
    const r1 = Math.min(rowsTotal, r0 + per);
    const xb = bindSpan(ctx, x, x.offset + r0 * d, x.offset + r1 * d);
    const ob = bindSpan(ctx, out, out.offset + r0 * d, out.offset + r1 * d);
    const params = uniformData(fields(r1 - r0, x.offset + r0 * d - xb.shift, out.offset + r0 * d - ob.shift));
    ctx.dispatch(`softmax [${x.shape}]`, pipeline, params, [xb.binding, ob.binding], gridFor(r1 - r0, c, ctx.limits.maxWorkgroupsPerDim));
  }
}

/**
 * dx = y * (dy - sum(dy * y)) over the last axis, with softmax's row layout: a row's threads fold
 * their share of dy * y (blocked, as the reductions), merge the partials in workgroup memory, then
 * write their share of dx.  y (softmax output), dy, dx: [R, D] dense f32
 */
export function gpuSoftmaxBackward(ctx: GpuContext, y: View, dy: View, dx: View, layout = reduceLayout(ctx, y.shape.at(-1) ?? 1)): void {
  checkSoftmaxBackwardShapes(y, dy, dx);
  requireDenseF32('softmaxBackward', { y, dy, dx });
  if (numel(y.shape) === 0) return;
  const d = y.shape.at(-1)!;
  const rowsTotal = numel(y.shape) / d;
  const { t, wg } = layout;
  const c = wg / t; // rows per workgroup
  const vec4 = d % 4 === 0 && [y, dy, dx].every((v) => v.offset % 4 === 0);
  const fields = (rows = 0, yo = 0, go = 0, xo = 0) => [u32('rows', rows), u32('d', d), u32('yo', yo), u32('go', go), u32('xo', xo)];
  // Offsets are multiples of 4 in vec4 mode, so they convert to vec4 indices exactly.
  const at = (name: string, o: string, k: string) => (vec4 ? `${name}[p.${o} / 4u + ${k}]` : `${name}[p.${o} + ${k}]`);
  const type = vec4 ? 'vec4<f32>' : 'f32';
  const pipeline = ctx.pipeline(`${uniformWgsl(fields())}
@group(0) @binding(1) var<storage, read> y: array<${type}>;
@group(0) @binding(2) var<storage, read> dy: array<${type}>;
@group(0) @binding(3) var<storage, read_write> dx: array<${type}>;
var<workgroup> partial: array<f32, ${wg}>;

fn merge(a: f32, b: f32) -> f32 { return a + b; }

@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) i: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = i % ${t}u;
  let row = (wid.x + wid.y * nwg.x) * ${c}u + i / ${t}u;
  let base = row * p.d;
  var s = 0.0;
  if (row < p.rows) {
    ${foldLoop((k) => `${at('y', 'yo', k)} * ${at('dy', 'go', k)}`, 'base', 'p.d', '1u', t, vec4, '0.0', (v) => `b = b + ${v};`)}
  }
  partial[i] = s;
  ${treeWgsl(t, '1u')}
  workgroupBarrier();
  let total = partial[i - r];
  if (row < p.rows) {
    for (var k = ${vec4 ? 'base / 4u + r' : 'base + r'}; k < ${vec4 ? '(base + p.d) / 4u' : 'base + p.d'}; k += ${t}u) {
      ${at('dx', 'xo', 'k')} = ${at('y', 'yo', 'k')} * (${at('dy', 'go', 'k')} - total);
    }
  }
}
`);
  const per = unitsPerBinding(ctx, d * 4);
  if (per < 1) throw new Error(`one row of ${d} elements exceeds a ${ctx.limits.maxBindingBytes}-byte binding`);
  for (let r0 = 0; r0 < rowsTotal; r0 += per) {
    const r1 = Math.min(rowsTotal, r0 + per);
    const spans = [y, dy, dx].map((v) => bindSpan(ctx, v, v.offset + r0 * d, v.offset + r1 * d));
    const [yo, go, xo] = [y, dy, dx].map((v, j) => v.offset + r0 * d - spans[j]!.shift);
    const params = uniformData(fields(r1 - r0, yo, go, xo));
    ctx.dispatch(`softmaxBackward [${y.shape}]`, pipeline, params, spans.map((sp) => sp.binding), gridFor(r1 - r0, c, ctx.limits.maxWorkgroupsPerDim));
  }
}
