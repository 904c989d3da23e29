// WebGPU GroupNorm, f32, in three dispatches (groups are large: 16 channels x 8100 pixels in the
// FLUX VAE, up to 4 x 518400 at 720x720, so one workgroup per group would leave a GPU idle):
//  1. stats:     one workgroup per (batch, channel, chunk of CHUNK_ITEMS*wg pixels) computes the
//                count, mean and sum of squared deviations (M2) of its chunk: Welford per invocation,
//                then Chan's pairwise merge across the workgroup.
//  2. finalize:  one workgroup per (batch, group) merges its Cg*chunks partials the same way and
//                stores the group's mean and 1/sqrt(var + eps).
//  3. normalize: one workgroup per (batch, channel, chunk) applies (x - mean) * rstd * w + b.
// Inputs with a large mean: Welford avoids the cancellation of sum and sum of squares, and every
// mean is kept relative to a pivot, an element of the data (each chunk's first element, then the
// group's first): x - pivot and differences of pivots are of the order of the spread, so nothing
// ever rounds at the magnitude of the mean, and the result is as accurate as for centred data.
// Partials and stats live in a small scratch buffer owned by this module (one per device). x and
// out may be strided; tensors larger than one binding are split over batch and channels.
import type { View } from '../device/device.ts';
import type { GpuContext } from '../device/webgpu/context.ts';
import { Params } from '../device/webgpu/context.ts';
import { numel } from '../tensor/shape.ts';
import { bindView, fitsBinding, narrow } from './conv.ts';
import { groupNormShapes } from './groupnorm.cpu.ts';

/** Elements each invocation reduces or normalises per chunk. */
const CHUNK_ITEMS = 16;

// Declaration order must match the Params built in gpuGroupNorm.
function header(wg: number): string {
  return /* wgsl */ `struct P {
  s: u32, c: u32, cg: u32, groups: u32, chunk: u32, chunks: u32, b0: u32, c0: u32,
  xOff: u32, xsb: u32, xsc: u32, xss: u32,
  oOff: u32, osb: u32, osc: u32, oss: u32,
  wOff: u32, ws: u32, hasW: u32, bOff: u32, bs: u32, hasB: u32,
  eps: f32, statsOff: u32,
}
@group(0) @binding(0) var<uniform> p: P;

const WG = ${wg}u;

// (count, mean, M2) of the union of two disjoint sets (Chan et al.).
fn merge(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
  let n = a.x + b.x;
  if (n == 0.0) { return a; }
  let d = b.y - a.y;
  let f = b.x / n;
  return vec3<f32>(n, a.y + d * f, a.z + b.z + d * d * a.x * f);
}

var<workgroup> red: array<vec3<f32>, WG>;

// Merges every invocation's statistics; call from uniform control flow.
fn mergeWorkgroup(v: vec3<f32>, li: u32) -> vec3<f32> {
  red[li] = v;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st >>= 1u) {
    if (li < st) { red[li] = merge(red[li], red[li + st]); }
    workgroupBarrier();
  }
  return red[0];
}
`;
}

function statsWgsl(wg: number): string {
  return /* wgsl */ `${header(wg)}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> scratch: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row = p.xOff + wid.z * p.xsb + wid.y * p.xsc;
  let end = min((wid.x + 1u) * p.chunk, p.s);
  let pivot = x[row + wid.x * p.chunk * p.xss];
  var st = vec3<f32>(0.0);
  for (var i = wid.x * p.chunk + li; i < end; i += WG) {
    let v = x[row + i * p.xss] - pivot;
    st.x += 1.0;
    let d = v - st.y;
    st.y += d / st.x;
    st.z += d * (v - st.y);
  }
  st = mergeWorkgroup(st, li);
  if (li == 0u) {
    let k = (((p.b0 + wid.z) * p.c + p.c0 + wid.y) * p.chunks + wid.x) * 4u;
    scratch[k] = st.x;
    scratch[k + 1u] = pivot;
    scratch[k + 2u] = st.y;
    scratch[k + 3u] = st.z;
  }
}
`;
}

function finalizeWgsl(wg: number): string {
  return /* wgsl */ `${header(wg)}
@group(0) @binding(1) var<storage, read_write> scratch: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let g = wid.x;
  let b = wid.y;
  let first = (b * p.c + g * p.cg) * p.chunks; // the group's partials are consecutive
  let n = p.cg * p.chunks;
  let pivot = scratch[first * 4u + 1u];
  var st = vec3<f32>(0.0);
  for (var j = li; j < n; j += WG) {
    let k = (first + j) * 4u;
    // The partial's mean moved from its own pivot to the group's.
    st = merge(st, vec3<f32>(scratch[k], (scratch[k + 1u] - pivot) + scratch[k + 2u], scratch[k + 3u]));
  }
  st = mergeWorkgroup(st, li);
  if (li == 0u) {
    let k = p.statsOff + (b * p.groups + g) * 3u;
    scratch[k] = pivot;
    scratch[k + 1u] = st.y;
    scratch[k + 2u] = inverseSqrt(st.z / st.x + p.eps);
  }
}
`;
}

function normalizeWgsl(wg: number): string {
  return /* wgsl */ `${header(wg)}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> scratch: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let b = p.b0 + wid.z;
  let c = p.c0 + wid.y;
  let k = p.statsOff + (b * p.groups + c / p.cg) * 3u;
  let pivot = scratch[k];
  let mean = scratch[k + 1u]; // relative to the pivot
  var scale = scratch[k + 2u];
  if (p.hasW != 0u) { scale *= weight[p.wOff + c * p.ws]; }
  var shift = 0.0;
  if (p.hasB != 0u) { shift = bias[p.bOff + c * p.bs]; }
  let xr = p.xOff + wid.z * p.xsb + wid.y * p.xsc;
  let orow = p.oOff + wid.z * p.osb + wid.y * p.osc;
  let end = min((wid.x + 1u) * p.chunk, p.s);
  for (var i = wid.x * p.chunk + li; i < end; i += WG) {
    out[orow + i * p.oss] = ((x[xr + i * p.xss] - pivot) - mean) * scale + shift;
  }
}
`;
}

/** The module's scratch buffer per device, grown on demand; dropped buffers live on until their last use. */
const scratchBuffers = new WeakMap<GPUDevice, GPUBuffer>();

function scratchFor(ctx: GpuContext, bytes: number): GPUBuffer {
  let buf = scratchBuffers.get(ctx.gpu);
  if (!buf || buf.size < bytes) {
    buf = ctx.gpu.createBuffer({ size: Math.max(65536, 2 ** Math.ceil(Math.log2(bytes))), usage: GPUBufferUsage.STORAGE });
    scratchBuffers.set(ctx.gpu, buf);
  }
  return buf;
}

/**
 * out = (x - mean) / sqrt(var + eps) * weight + bias, mean and biased var per (batch, group).
 * x: [B,C,S], weight: [C] or null, bias: [C] or null, out: [B,C,S].
 */
export function gpuGroupNorm(ctx: GpuContext, x: View, weight: View | null, bias: View | null, out: View, p: { groups: number; eps: number }): void {
  const s = groupNormShapes(x, weight, bias, out, p);
  if (numel(x.shape) === 0) return;
  const wg = Math.min(256, ctx.limits.maxInvocations);
  const chunk = wg * CHUNK_ITEMS;
  const chunks = Math.ceil(s.s / chunk);
  const statsOff = 4 * s.b * s.c * chunks;
  const scratchBytes = (statsOff + 3 * s.b * s.groups) * 4;
  if (scratchBytes > ctx.limits.maxBindingBytes) throw new Error(`${scratchBytes} bytes of partial statistics exceed one binding`);
  const scratch = { buffer: scratchFor(ctx, scratchBytes), offset: 0, size: scratchBytes };

  // Split over batch, then channels, until x and out fit one binding each.
  const limit = ctx.limits.maxBindingBytes;
  let nb = s.b, nc = s.c;
  const fits = () => [x, out].every((v) => fitsBinding(ctx, narrow(v, [0, 0, 0], [nb, nc, s.s])));
  while (!fits()) {
    if (nb > 1) nb = Math.ceil(nb / 2);
    else if (nc > 1) nc = Math.ceil(nc / 2);
    else throw new Error(`one channel row of x [${x.shape.join(',')}] exceeds the ${limit}-byte binding limit`);
  }
  const wb = weight ? bindView(ctx, weight) : null;
  const bb = bias ? bindView(ctx, bias) : null;
  const params = (b0: number, c0: number, xOff: number, oOff: number) => new Params()
    .u32(s.s, s.c, s.cg, s.groups, chunk, chunks, b0, c0)
    .u32(xOff, ...x.strides, oOff, ...out.strides)
    .u32(wb?.offset ?? 0, weight?.strides[0] ?? 0, weight ? 1 : 0, bb?.offset ?? 0, bias?.strides[0] ?? 0, bias ? 1 : 0)
    .f32(p.eps).u32(statsOff)
    .toBuffer();
  const label = `groupNorm [${x.shape.join(',')}] groups ${s.groups}`;
  const blocks = (f: (b0: number, c0: number, bn: number, cn: number) => void) => {
    for (let b0 = 0; b0 < s.b; b0 += nb) for (let c0 = 0; c0 < s.c; c0 += nc) f(b0, c0, Math.min(nb, s.b - b0), Math.min(nc, s.c - c0));
  };

  const stats = ctx.pipeline(statsWgsl(wg));
  blocks((b0, c0, bn, cn) => {
    const xb = bindView(ctx, narrow(x, [b0, c0, 0], [bn, cn, s.s]));
    ctx.dispatch(label, stats, params(b0, c0, xb.offset, 0), [xb.binding, scratch], [chunks, cn, bn]);
  });
  ctx.dispatch(label, ctx.pipeline(finalizeWgsl(wg)), params(0, 0, 0, 0), [scratch], [s.groups, s.b]);
  const normalize = ctx.pipeline(normalizeWgsl(wg));
  blocks((b0, c0, bn, cn) => {
    const xb = bindView(ctx, narrow(x, [b0, c0, 0], [bn, cn, s.s]));
    const ob = bindView(ctx, narrow(out, [b0, c0, 0], [bn, cn, s.s]));
    // Absent affine parameters still need a binding: reuse x, which the shader then never reads there.
    ctx.dispatch(label, normalize, params(b0, c0, xb.offset, ob.offset),
      [xb.binding, scratch, wb?.binding ?? xb.binding, bb?.binding ?? xb.binding, ob.binding], [chunks, cn, bn]);
  });
}
