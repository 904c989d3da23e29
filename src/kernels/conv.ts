// WebGPU 2-D convolution (implicit GEMM) and nearest-neighbour 2x upsampling, f32.
//
// conv2d: each invocation computes a CO x PX block of outputs: CO output channels times PX adjacent
// output pixels of one row, accumulated in registers (no shared memory, which lavapipe, with one CPU
// thread per workgroup and costly barriers, does not want). For every input channel and kernel row
// it loads the input window those PX pixels need once ((PX-1)*stride + kw values, reused across
// kx) and the CO*kw weights of that row. All invocations of a workgroup share the output channels,
// so weight addresses are uniform across lanes: real GPUs serve them as broadcasts, while lavapipe
// still issues a gather per load inside a loop, so on CPU adapters the lanes of a subgroup load the
// row's weights once between them and pass them round with shuffles (3-4x faster there). The kernel
// is specialised by string templating on the kernel width, the horizontal stride and the block
// shape, so the window and block loops have constant bounds and unroll; kernel height, vertical
// stride and padding are parameters. A 1x1 stride-1 unpadded conv over spatially dense operands runs
// the same kernel on the pixels flattened into one row: a plain [Cout,Cin] x [Cin,Hh*Ww] matmul
// without padding masks.
//
// Tensors larger than one binding are split: over batch and input channels for x (partial sums
// accumulate in out), over batch and output channels for out. Only a single channel plane larger than
// a binding is refused, with an error naming the shapes.
import type { Conv2dParams, View } from '../device/device.ts';
import type { GpuBinding, GpuContext } from '../device/webgpu/context.ts';
import { Params } from '../device/webgpu/context.ts';
import { numel } from '../tensor/shape.ts';
import { conv2dShapes, upsampleShapes } from './conv.cpu.ts';
import { bindSpan, unitsPerBinding } from './elementwise.ts';
import { isCpuAdapter } from '../device/webgpu/context.ts';

// ---- binding views by the span they occupy --------------------------------------------------------

/** The sub-view of v with index d ranging over [lo[d], lo[d] + len[d]). */
export function narrow(v: View, lo: readonly number[], len: readonly number[]): View {
  return { ...v, shape: [...len], offset: v.offset + lo.reduce((o, l, d) => o + l * v.strides[d]!, 0) };
}

/** One past the last buffer element a view touches (strides are never negative). */
function end(v: View): number {
  return v.shape.reduce((o, n, d) => o + (n - 1) * v.strides[d]!, v.offset) + 1;
}

/** Whether a view of this size and layout fits one binding wherever it starts (with alignment slack). */
export function fitsBinding(ctx: GpuContext, v: View): boolean {
  return unitsPerBinding(ctx, (end(v) - v.offset) * 4) >= 1;
}

/** Binds just the part of the buffer a f32 view touches; `offset` is the view's origin within it, in elements. */
export function bindView(ctx: GpuContext, v: View): { binding: GpuBinding; offset: number } {
  const { binding, shift } = bindSpan(ctx, v, v.offset, end(v));
  return { binding, offset: v.offset - shift };
}

/** Halves `n` (rounding up), or throws `why` when it is already 1. */
function halve(n: number, why: () => string): number {
  if (n === 1) throw new Error(why());
  return Math.ceil(n / 2);
}

// ---- conv2d ------------------------------------------------------------------------------------

interface ConvVariant {
  /** Kernel width and horizontal stride fix the input window's layout; kh and sh are parameters. */
  kw: number; sw: number;
  /** Output channels and output pixels per invocation. */
  co: number; px: number;
  wg: number;
  /**
   * Share weights through subgroup shuffles: for each input row, the lanes of a subgroup load the
   * CO*kw weights once between them instead of each lane loading all of them. Pays on lavapipe,
   * where a load at an address uniform across lanes still costs a gather inside loops.
   */
  shuffle: boolean;
}

// Declaration order must match the Params built in gpuConv2d.
const CONV_PARAMS = `struct P {
  cin: u32, h: u32, w: u32, cout: u32, ho: u32, wo: u32, kh: u32,
  sh: u32, ph: i32, pw: i32, tilesPerRow: u32, tiles: u32,
  xOff: u32, xsb: u32, xsc: u32, xsy: u32, xsx: u32,
  wOff: u32, wso: u32, wsi: u32, wsy: u32, wsx: u32,
  bOff: u32, bs: u32, hasBias: u32, accumulate: u32,
  oOff: u32, osb: u32, osc: u32, osy: u32, osx: u32,
}`;

/** WGSL fragments that fetch weight (c, ky, kx) of input channel ci, per weight-sharing scheme. */
function weightFetch(shuffle: boolean) {
  if (!shuffle) return { setup: '', perRow: '', get: 'wt[wRow[c] + wk + kx * p.wsx]' };
  // Lane l holds weights l, l + sgs, ... of the row's CO*KW (subgroups have at least 4 lanes).
  return {
    setup: `
  var wOffL: array<u32, NR>;
  for (var r = 0u; r < NR; r++) {
    let q = min(lane + r * sgs, NW - 1u);
    wOffL[r] = wRow[q / KW] + (q % KW) * p.wsx;
  }`,
    perRow: `
      var wl: array<f32, NR>;
      for (var r = 0u; r < NR; r++) {
        if (r * sgs >= NW) { break; }
        wl[r] = wt[wOffL[r] + wk];
      }`,
    get: 'subgroupShuffle(wl[(c * KW + kx) / sgs], (c * KW + kx) % sgs)',
  };
}

function conv2dWgsl(k: ConvVariant): string {
  const wf = weightFetch(k.shuffle);
  return /* wgsl */ `${k.shuffle ? 'enable subgroups;' : ''}
${CONV_PARAMS}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const KW = ${k.kw}u;
const SW = ${k.sw}u;
const CO = ${k.co}u;
const PX = ${k.px}u;
const WIN = ${(k.px - 1) * k.sw + k.kw}u; // input columns the PX outputs read
const NW = ${k.co * k.kw}u;
const NR = ${Math.ceil((k.co * k.kw) / 4)}u;

@compute @workgroup_size(${k.wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32${k.shuffle ? ',\n        @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sgs: u32' : ''}) {
  // Invocations past the last tile redo it and store nothing: all lanes stay active for shuffles.
  let tile = min(wid.x * ${k.wg}u + li, p.tiles - 1u);
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
  for (var c = 0u; c < CO; c++) { wRow[c] = p.wOff + min(co0 + c, p.cout - 1u) * p.wso; }${wf.setup}

  var acc: array<array<f32, PX>, CO>;
  let xb = p.xOff + b * p.xsb;
  for (var ci = 0u; ci < p.cin; ci++) {
    for (var ky = 0u; ky < p.kh; ky++) {
      let wk = ci * p.wsi + ky * p.wsy;${wf.perRow}
      let iy = i32(oy * p.sh + ky) - p.ph;
      let rowOk = iy >= 0 && iy < i32(p.h);
      let rowBase = xb + ci * p.xsc + u32(clamp(iy, 0, i32(p.h) - 1)) * p.xsy;
      var xw: array<f32, WIN>;
      for (var i = 0u; i < WIN; i++) { xw[i] = select(0.0, x[rowBase + colOff[i]], rowOk && colOk[i]); }
      for (var kx = 0u; kx < KW; kx++) {
        for (var c = 0u; c < CO; c++) {
          let wv = ${wf.get};
          for (var j = 0u; j < PX; j++) { acc[c][j] = fma(wv, xw[j * SW + kx], acc[c][j]); }
        }
      }
    }
  }

  if (wid.x * ${k.wg}u + li >= p.tiles) { return; }
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

/**
 * 8 output channels x 8 pixels per invocation. On lavapipe (2 Zen 4 cores; best of 5 runs
 * alternated in one process, other work on the machine): 3x3 64->64 at 64x64 runs at 18-28
 * GFLOP/s, against 13-20 for 4x16 or 4x8 blocks and 2.4 for 8x4 without shuffles; 1x1 256->128 at
 * 32x32 at 11-12 GFLOP/s. Bigger blocks (16x8) spill there, and compile times grow with the block
 * (8x8: 1-3 s, 8x16: several times more). Shuffles only on CPU adapters: on a GPU a uniform load is
 * a broadcast already, and a runtime subgroup size would make the shuffle source a dynamically
 * indexed (spilled) array. GPU block shapes are not measured yet.
 */
function convVariant(ctx: GpuContext, kw: number, sw: number): ConvVariant {
  return { kw, sw, co: 8, px: 8, wg: Math.min(64, ctx.limits.maxInvocations), shuffle: isCpuAdapter(ctx) && ctx.features.has('subgroups') };
}

/** out = conv2d(x, w) + bias. x: [B,Cin,Hh,Ww], w: [Cout,Cin,kh,kw], bias: [Cout] or null, out: [B,Cout,Ho,Wo]. */
export function gpuConv2d(ctx: GpuContext, x: View, w: View, bias: View | null, out: View, p: Conv2dParams): void {
  const s = conv2dShapes(x, w, bias, out, p);
  if (numel(out.shape) === 0) return;
  if (s.cin === 0) throw new Error('x has no input channels');
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
  const k = convVariant(ctx, s.kw, flat ? 1 : s.sw);
  const pipeline = ctx.pipeline(conv2dWgsl(k));

  // Split batch and channels until every operand's span fits one binding.
  const limit = ctx.limits.maxBindingBytes;
  const shape = (v: View) => `[${v.shape.join(',')}]`;
  let nb = s.b, nci = s.cin, nco = s.cout;
  for (;;) {
    const plane = () => `one channel plane of x ${shape(x)} or out ${shape(out)} exceeds the ${limit}-byte binding limit`;
    if (!fitsBinding(ctx, narrow(xv, [0, 0, 0, 0], [nb, nci, h, wd]))) {
      if (nb > 1) nb = halve(nb, plane); else nci = halve(nci, plane);
    } else if (!fitsBinding(ctx, narrow(ov, [0, 0, 0, 0], [nb, nco, ho, wo]))) {
      if (nb > 1) nb = halve(nb, plane); else nco = halve(nco, plane);
    } else if (!fitsBinding(ctx, narrow(w, [0, 0, 0, 0], [nco, nci, s.kh, s.kw]))) {
      if (nco > 1) nco = halve(nco, plane); else nci = halve(nci, () => `w ${shape(w)} has a kernel slice over the binding limit`);
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
          .u32(cin, h, wd, con, ho, wo, s.kh)
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

// One invocation per input element writes its 2x2 output block; the grid is (pixels of a plane,
// channels, batch), so an invocation divides only once. x and out may be any strided views.
const UPSAMPLE_WGSL = /* wgsl */ `struct P {
  h: u32, w: u32,
  xOff: u32, xsb: u32, xsc: u32, xsy: u32, xsx: u32,
  oOff: u32, osb: u32, osc: u32, osy: u32, osx: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${UPSAMPLE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = wid.x * ${UPSAMPLE_WG}u + li;
  if (i >= p.h * p.w) { return; }
  let iy = i / p.w;
  let ix = i - iy * p.w;
  let v = x[p.xOff + wid.z * p.xsb + wid.y * p.xsc + iy * p.xsy + ix * p.xsx];
  let o = p.oOff + wid.z * p.osb + wid.y * p.osc + 2u * iy * p.osy + 2u * ix * p.osx;
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
    .every((v) => fitsBinding(ctx, v));
  while (!fits()) {
    const why = () => `one channel plane of out [${out.shape.join(',')}] exceeds the ${limit}-byte binding limit`;
    if (nb > 1) nb = halve(nb, why); else nc = halve(nc, why);
  }
  const label = `upsampleNearest2x [${x.shape.join(',')}] -> [${out.shape.join(',')}]`;
  for (let b0 = 0; b0 < s.b; b0 += nb) {
    for (let c0 = 0; c0 < s.c; c0 += nc) {
      const bn = Math.min(nb, s.b - b0), cn = Math.min(nc, s.c - c0);
      const xb = bindView(ctx, narrow(x, [b0, c0, 0, 0], [bn, cn, s.h, s.w]));
      const ob = bindView(ctx, narrow(out, [b0, c0, 0, 0], [bn, cn, 2 * s.h, 2 * s.w]));
      const params = new Params().u32(s.h, s.w, xb.offset, ...x.strides, ob.offset, ...out.strides);
      ctx.dispatch(label, pipeline, params.toBuffer(), [xb.binding, ob.binding], [Math.ceil((s.h * s.w) / UPSAMPLE_WG), cn, bn]);
    }
  }
}
