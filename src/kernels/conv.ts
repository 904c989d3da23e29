// WebGPU 2-D convolution (implicit GEMM) and nearest-neighbour 2x upsampling, f32.
//
// conv2d: each invocation computes a CO x PX block of outputs: CO output channels times PX adjacent
// output pixels of one row. For every input channel and kernel row it loads the input window those PX
// pixels need once ((PX-1)*stride + kw values, reused across kx) and CO*kw weights. All invocations of
// a workgroup share the output channels, so weight addresses are uniform: lavapipe turns them into
// scalar loads and real GPUs into broadcasts; only the window loads differ per invocation. No shared
// memory, which lavapipe (one CPU thread per workgroup, costly barriers) prefers. The kernel is
// specialised by string templating on the kernel size, the horizontal stride and the block shape,
// so its loops have constant bounds and unroll. A 1x1 stride-1 unpadded conv over spatially dense
// operands is the same kernel on the pixels flattened into one row, a plain [Cout,Cin] x [Cin,Hh*Ww]
// matmul without padding masks.
//
// Tensors larger than one binding are split: over batch and input channels for x (partial sums
// accumulate in out), over batch and output channels for out. Only a single channel plane larger than
// a binding is refused.
import type { Conv2dParams, View } from '../device/device.ts';
import type { GpuBinding, GpuContext } from '../device/webgpu/context.ts';
import { Params, gridFor } from '../device/webgpu/context.ts';
import { numel } from '../tensor/shape.ts';
import { conv2dShapes, upsampleShapes } from './conv.cpu.ts';

// ---- binding views by the span they occupy --------------------------------------------------------

/** The sub-view of v with index d ranging over [lo[d], lo[d] + len[d]). */
export function narrow(v: View, lo: readonly number[], len: readonly number[]): View {
  return { ...v, shape: [...len], offset: v.offset + lo.reduce((o, l, d) => o + l * v.strides[d]!, 0) };
}

/**
 * The buffer elements a view touches (strides are never negative): its offset, aligned down for a
 * binding offset, to one past its last element.
 */
function span(ctx: GpuContext, v: View): { start: number; end: number } {
  const last = v.shape.reduce((o, n, d) => o + (n - 1) * v.strides[d]!, v.offset);
  const align = ctx.gpu.limits.minStorageBufferOffsetAlignment / 4;
  return { start: Math.floor(v.offset / align) * align, end: last + 1 };
}

/** Bytes a binding of this view must cover. */
export function spanBytes(ctx: GpuContext, v: View): number {
  const s = span(ctx, v);
  return (s.end - s.start) * 4;
}

/** Binds just the part of the buffer a f32 view touches; `offset` is the view's origin within it, in elements. */
export function bindView(ctx: GpuContext, v: View): { binding: GpuBinding; offset: number } {
  const s = span(ctx, v);
  return { binding: ctx.bindRange(v, s.start * 4, (s.end - s.start) * 4), offset: v.offset - s.start };
}

/** Halves `n` (rounding up), or throws `why` when it is already 1. */
function halve(n: number, why: () => string): number {
  if (n === 1) throw new Error(why());
  return Math.ceil(n / 2);
}

// ---- conv2d ------------------------------------------------------------------------------------

interface ConvVariant {
  kh: number; kw: number;
  /** Horizontal stride (the window layout depends on it); the vertical stride is a parameter. */
  sw: number;
  /** Output channels and output pixels per invocation. */
  co: number; px: number;
  wg: number;
}

// Declaration order must match the Params built in gpuConv2d.
const CONV_PARAMS = `struct P {
  cin: u32, h: u32, w: u32, cout: u32, ho: u32, wo: u32,
  sh: u32, ph: i32, pw: i32, tilesPerRow: u32, tiles: u32,
  xOff: u32, xsb: u32, xsc: u32, xsy: u32, xsx: u32,
  wOff: u32, wso: u32, wsi: u32, wsy: u32, wsx: u32,
  bOff: u32, bs: u32, hasBias: u32, accumulate: u32,
  oOff: u32, osb: u32, osc: u32, osy: u32, osx: u32,
}`;

function conv2dWgsl(k: ConvVariant): string {
  const win = (k.px - 1) * k.sw + k.kw;
  return /* wgsl */ `${CONV_PARAMS}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const KH = ${k.kh}u;
const KW = ${k.kw}u;
const SW = ${k.sw}u;
const CO = ${k.co}u;
const PX = ${k.px}u;
const WIN = ${win}u;

@compute @workgroup_size(${k.wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let tile = wid.x * ${k.wg}u + li;
  if (tile >= p.tiles) { return; }
  let b = wid.z;
  let co0 = wid.y * CO;
  let oy = tile / p.tilesPerRow;
  let ox0 = (tile % p.tilesPerRow) * PX;

  // Input columns of the window; out-of-range ones read a clamped address and are zeroed (padding).
  var colOff: array<u32, WIN>;
  var colOk: array<bool, WIN>;
  for (var i = 0u; i < WIN; i++) {
    let ix = i32(ox0 * SW + i) - p.pw;
    colOk[i] = ix >= 0 && ix < i32(p.w);
    colOff[i] = u32(clamp(ix, 0, i32(p.w) - 1)) * p.xsx;
  }
  // Channels past Cout (the last block) compute a duplicate of the last channel and are not stored.
  var wRow: array<u32, CO>;
  for (var c = 0u; c < CO; c++) { wRow[c] = p.wOff + min(co0 + c, p.cout - 1u) * p.wso; }

  var acc: array<array<f32, PX>, CO>;
  let xb = p.xOff + b * p.xsb;
  for (var ci = 0u; ci < p.cin; ci++) {
    for (var ky = 0u; ky < KH; ky++) {
      let iy = i32(oy * p.sh + ky) - p.ph;
      let rowOk = iy >= 0 && iy < i32(p.h);
      let rowBase = xb + ci * p.xsc + u32(clamp(iy, 0, i32(p.h) - 1)) * p.xsy;
      var xw: array<f32, WIN>;
      for (var i = 0u; i < WIN; i++) { xw[i] = select(0.0, x[rowBase + colOff[i]], rowOk && colOk[i]); }
      let wk = ci * p.wsi + ky * p.wsy;
      for (var kx = 0u; kx < KW; kx++) {
        for (var c = 0u; c < CO; c++) {
          let wv = wt[wRow[c] + wk + kx * p.wsx];
          for (var j = 0u; j < PX; j++) { acc[c][j] = fma(wv, xw[j * SW + kx], acc[c][j]); }
        }
      }
    }
  }

  let ob = p.oOff + b * p.osb + oy * p.osy;
  for (var c = 0u; c < CO; c++) {
    let co = co0 + c;
    if (co >= p.cout) { break; }
    let base = ob + co * p.osc;
    var init = 0.0;
    if (p.hasBias != 0u) { init = bias[p.bOff + co * p.bs]; }
    for (var j = 0u; j < PX; j++) {
      let ox = ox0 + j;
      if (ox < p.wo) {
        let o = base + ox * p.osx;
        out[o] = acc[c][j] + select(init, out[o], p.accumulate != 0u);
      }
    }
  }
}
`;
}

/** The block shape per invocation; one choice for now (see the report in the tests for timings). */
function convVariant(ctx: GpuContext, kh: number, kw: number, sw: number): ConvVariant {
  return { kh, kw, sw, co: 8, px: 4, wg: Math.min(64, ctx.limits.maxInvocations) };
}

/** out = conv2d(x, w) + bias. x: [B,Cin,Hh,Ww], w: [Cout,Cin,kh,kw], bias: [Cout] or null, out: [B,Cout,Ho,Wo]. */
export function gpuConv2d(ctx: GpuContext, x: View, w: View, bias: View | null, out: View, p: Conv2dParams): void {
  const s = conv2dShapes(x, w, bias, out, p);
  if (numel(out.shape) === 0) return;
  if (s.cin === 0) throw new Error('conv2d: x has no input channels');
  let [h, wd, ho, wo] = [s.h, s.w, s.ho, s.wo];
  let xv = x, ov = out;
  // A 1x1, stride-1, unpadded conv maps pixels one to one: over dense planes, treat them as one row.
  const flat = s.kh === 1 && s.kw === 1 && s.sh === 1 && s.sw === 1 && s.ph === 0 && s.pw === 0
    && x.strides[2] === s.w * x.strides[3]! && out.strides[2] === s.wo * out.strides[3]!;
  if (flat) {
    [h, wd, ho, wo] = [1, s.h * s.w, 1, s.ho * s.wo];
    xv = { ...x, shape: [s.b, s.cin, 1, wd], strides: [x.strides[0]!, x.strides[1]!, 0, x.strides[3]!] };
    ov = { ...out, shape: [s.b, s.cout, 1, wo], strides: [out.strides[0]!, out.strides[1]!, 0, out.strides[3]!] };
  }
  const k = convVariant(ctx, s.kh, s.kw, flat ? 1 : s.sw);
  const pipeline = ctx.pipeline(conv2dWgsl(k));

  // Split batch and channels until every operand's span fits one binding.
  const limit = ctx.limits.maxBindingBytes;
  const shape = (v: View) => `[${v.shape.join(',')}]`;
  let nb = s.b, nci = s.cin, nco = s.cout;
  for (;;) {
    const plane = () => `conv2d: one channel plane of x ${shape(x)} or out ${shape(out)} exceeds the ${limit}-byte binding limit`;
    if (spanBytes(ctx, narrow(xv, [0, 0, 0, 0], [nb, nci, h, wd])) > limit) {
      if (nb > 1) nb = halve(nb, plane); else nci = halve(nci, plane);
    } else if (spanBytes(ctx, narrow(ov, [0, 0, 0, 0], [nb, nco, ho, wo])) > limit) {
      if (nb > 1) nb = halve(nb, plane); else nco = halve(nco, plane);
    } else if (spanBytes(ctx, narrow(w, [0, 0, 0, 0], [nco, nci, s.kh, s.kw])) > limit) {
      if (nco > 1) nco = halve(nco, plane); else nci = halve(nci, () => `conv2d: w ${shape(w)} has a kernel slice over the binding limit`);
    } else break;
  }

  const tilesPerRow = Math.ceil(wo / k.px);
  const tiles = ho * tilesPerRow;
  const label = `conv2d x${shape(x)} w${shape(w)} -> ${shape(out)}`;
  for (let b0 = 0; b0 < s.b; b0 += nb) {
    const bn = Math.min(nb, s.b - b0);
    for (let co0 = 0; co0 < s.cout; co0 += nco) {
      const con = Math.min(nco, s.cout - co0);
      const ob = bindView(ctx, narrow(ov, [b0, co0, 0, 0], [bn, con, ho, wo]));
      for (let ci0 = 0; ci0 < s.cin; ci0 += nci) {
        const cin = Math.min(nci, s.cin - ci0);
        const xb = bindView(ctx, narrow(xv, [b0, ci0, 0, 0], [bn, cin, h, wd]));
        const wb = bindView(ctx, narrow(w, [co0, ci0, 0, 0], [con, cin, s.kh, s.kw]));
        // Without a bias the shader still declares the binding: give it the weights.
        const bb = bias ? bindView(ctx, narrow(bias, [co0], [con])) : wb;
        const params = new Params()
          .u32(cin, h, wd, con, ho, wo)
          .u32(s.sh).i32(s.ph, s.pw).u32(tilesPerRow, tiles)
          .u32(xb.offset, ...xv.strides)
          .u32(wb.offset, ...w.strides)
          .u32(bias ? bb.offset : 0, bias ? bias.strides[0]! : 0, bias ? 1 : 0, ci0 > 0 ? 1 : 0)
          .u32(ob.offset, ...ov.strides);
        ctx.dispatch(label, pipeline, params.toBuffer(), [xb.binding, wb.binding, bb.binding, ob.binding],
          [Math.ceil(tiles / k.wg), Math.ceil(con / k.co), bn]);
      }
    }
  }
}

// ---- upsampleNearest2x ----------------------------------------------------------------------------

const UPSAMPLE_WG = 64;

// One invocation per input element writes its 2x2 output block. x and out may be any strided views.
const UPSAMPLE_WGSL = /* wgsl */ `struct P {
  n: u32, c: u32, h: u32, w: u32, gridX: u32,
  xOff: u32, xsb: u32, xsc: u32, xsy: u32, xsx: u32,
  oOff: u32, osb: u32, osc: u32, osy: u32, osx: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${UPSAMPLE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = (wid.y * p.gridX + wid.x) * ${UPSAMPLE_WG}u + li;
  if (i >= p.n) { return; }
  let ix = i % p.w;
  let iy = (i / p.w) % p.h;
  let bc = i / (p.w * p.h);
  let c = bc % p.c;
  let b = bc / p.c;
  let v = x[p.xOff + b * p.xsb + c * p.xsc + iy * p.xsy + ix * p.xsx];
  let o = p.oOff + b * p.osb + c * p.osc + 2u * iy * p.osy + 2u * ix * p.osx;
  out[o] = v;
  out[o + p.osx] = v;
  out[o + p.osy] = v;
  out[o + p.osy + p.osx] = v;
}
`;

/** out[b,c,y,x] = x[b,c,floor(y/2),floor(x/2)]. x: [B,C,Hh,Ww], out: [B,C,2Hh,2Ww]. */
export function gpuUpsampleNearest2x(ctx: GpuContext, x: View, out: View): void {
  const s = upsampleShapes(x, out);
  if (numel(x.shape) === 0) return;
  const pipeline = ctx.pipeline(UPSAMPLE_WGSL);
  const limit = ctx.limits.maxBindingBytes;
  // Split over batch, then channels, until both spans fit one binding.
  let nb = s.b, nc = s.c;
  const fits = () => [narrow(x, [0, 0, 0, 0], [nb, nc, s.h, s.w]), narrow(out, [0, 0, 0, 0], [nb, nc, 2 * s.h, 2 * s.w])]
    .every((v) => spanBytes(ctx, v) <= limit);
  while (!fits()) {
    const why = () => `upsampleNearest2x: one channel plane of out [${out.shape.join(',')}] exceeds the ${limit}-byte binding limit`;
    if (nb > 1) nb = halve(nb, why); else nc = halve(nc, why);
  }
  const label = `upsampleNearest2x [${x.shape.join(',')}] -> [${out.shape.join(',')}]`;
  for (let b0 = 0; b0 < s.b; b0 += nb) {
    for (let c0 = 0; c0 < s.c; c0 += nc) {
      const bn = Math.min(nb, s.b - b0), cn = Math.min(nc, s.c - c0);
      const xb = bindView(ctx, narrow(x, [b0, c0, 0, 0], [bn, cn, s.h, s.w]));
      const ob = bindView(ctx, narrow(out, [b0, c0, 0, 0], [bn, cn, 2 * s.h, 2 * s.w]));
      const n = bn * cn * s.h * s.w;
      const [gx, gy] = gridFor(n, UPSAMPLE_WG, ctx.limits.maxWorkgroupsPerDim);
      const params = new Params().u32(n, cn, s.h, s.w, gx, xb.offset, ...x.strides, ob.offset, ...out.strides);
      ctx.dispatch(label, pipeline, params.toBuffer(), [xb.binding, ob.binding], [gx, gy]);
    }
  }
}
