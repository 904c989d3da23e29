// Batched matmul with a fused bias + activation epilogue on WebGPU.
//
// Every variant gives each thread a TM x TN block of outputs, held in registers as vec4s of four
// columns, and walks K reading operands as vec4s along their contiguous axis where alignment
// allows (scalar loads otherwise). Two families:
//  - register-blocked ('reg*'): each thread reads A and B straight from global memory, no shared
//    memory and no barriers. Wins on lavapipe, where a workgroup runs on one CPU thread as 8-lane
//    SIMD and barriers cost a lot (512^3 timed side by side: reg4x8 94 ms, tiled64 338 ms);
//  - shared-memory tiled ('tiled*'): the workgroup stages BM x BK and BK x BN tiles in workgroup
//    memory and every thread reads them from there, the classic layout for real GPUs.
// Workgroups are 2-D (a 1-D-workgroup matmul once aborted the process inside Dawn on lavapipe).
// The variant is chosen per adapter by measurement (tuneMatmul, matmul_tuner.ts) and cached.
//
// Edges: rows and columns past M and N are clamped on load (their results are never stored) and
// masked on store; K needs no multiple of anything (a scalar tail, or zero-padded tiles).
// A, B and bias may be bf16 (weights kept as checkpoints ship them, autocast's compute copies):
// read through accessors that widen them to f32, so every variant accumulates in f32 alike.
// Operands larger than one storage binding are split into chunks over batch, M, N and, as a last
// resort, K (later K chunks accumulate into out; bias and activation run on the last one).
import type { Activation, MatmulParams, View } from '../device/device.ts';
import { describeOp } from '../device/device.ts';
import { type GpuBinding, type GpuContext, isCpuAdapter, Params } from '../device/webgpu/context.ts';
import { DTYPE_BYTES } from '../tensor/dtype.ts';
import { type MatmulDims, matmulDims } from './matmul.cpu.ts';

export interface MatmulVariant {
  name: string;
  /** Outputs per thread, rows x cols; multiples of 4 (loads and stores move vec4s). */
  tm: number;
  tn: number;
  /** Workgroup size, x over columns and y over rows. */
  wgX: number;
  wgY: number;
  /** K depth of the tiles staged in workgroup memory; 0 = none (register-blocked). */
  tileK: number;
}

export const MATMUL_VARIANTS: readonly MatmulVariant[] = [
  { name: 'reg4x4', tm: 4, tn: 4, wgX: 8, wgY: 8, tileK: 0 },
  { name: 'reg4x8', tm: 4, tn: 8, wgX: 8, wgY: 8, tileK: 0 },
  { name: 'tiled64', tm: 4, tn: 4, wgX: 16, wgY: 16, tileK: 8 },
  { name: 'tiled128', tm: 8, tn: 8, wgX: 16, wgY: 16, tileK: 8 },
];

/** The variant called `name`; throws listing the known ones. */
export function variantNamed(name: string): MatmulVariant {
  const v = MATMUL_VARIANTS.find((x) => x.name === name);
  if (!v) throw new Error(`unknown matmul variant '${name}' (known: ${MATMUL_VARIANTS.map((x) => x.name).join(', ')})`);
  return v;
}

/** Per device: the variant tuneMatmul measured (or read from its cache) as the fastest. */
const chosen = new WeakMap<GPUDevice, MatmulVariant>();

export function setMatmulVariant(ctx: GpuContext, name: string): void {
  chosen.set(ctx.gpu, variantNamed(name));
}

/**
 * The variant gpuMatmul runs: FLUX_GRPO_MATMUL_VARIANT when set, else the tuned one, else a guess
 * from the adapter's name (CPU implementations of Vulkan prefer no shared memory).
 */
export function chosenVariant(ctx: GpuContext): MatmulVariant {
  const forced = process.env.FLUX_GRPO_MATMUL_VARIANT;
  if (forced) return variantNamed(forced);
  return chosen.get(ctx.gpu) ?? variantNamed(isCpuAdapter(ctx) ? 'reg4x8' : 'tiled64');
}

/** Workgroup memory a variant needs, bytes (0 for register-blocked ones). */
export function sharedBytes(v: MatmulVariant): number {
  return v.tileK * (v.wgY * v.tm + v.wgX * v.tn) * 4;
}

/** The element types the kernel reads; it always writes f32. */
export type MatmulDType = 'f32' | 'bf16';

/** What a pipeline is specialised on besides the variant: operand layouts, vec4 alignment, dtypes. */
export interface MatmulLayout {
  transA: boolean;
  transB: boolean;
  /** A, B read 4 elements at a time (every offset, row and batch stride a multiple of 4). */
  vecA: boolean;
  vecB: boolean;
  /** Element types of A, B and bias; f32 when left out (and for bias when there is none). */
  dtA?: MatmulDType;
  dtB?: MatmulDType;
  dtBias?: MatmulDType;
}

const ACT_CODE: Record<Activation, number> = { none: 0, silu: 1, gelu_tanh: 2, gelu_erf: 3 };

// ---- WGSL ---------------------------------------------------------------------------------------

const vec4Of = (xs: string[]) => `vec4<f32>(${xs.join(', ')})`;
const J4 = [0, 1, 2, 3];

/**
 * x * Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2, the erf and erfc branches of musl's erff/erfcf
 * (Sun's fdlibm, < 1 ulp): erfc keeps the negative tail accurate where 1 + erf would cancel.
 */
const GELU_ERF_WGSL = /* wgsl */ `
fn erfc_pos(x: f32) -> f32 { // x >= 0.84375
  if (x < 1.25) {
    let s = x - 1.0;
    let pa = -2.3621185683e-03 + s * (4.1485610604e-01 + s * (-3.7220788002e-01 + s * (3.1834661961e-01 + s * (-1.1089469492e-01 + s * (3.5478305072e-02 + s * -2.1663755178e-03)))));
    let qa = 1.0 + s * (1.0642088205e-01 + s * (5.4039794207e-01 + s * (7.1828655899e-02 + s * (1.2617121637e-01 + s * (1.3637083583e-02 + s * 1.1984500103e-02)))));
    return 1.0 - 8.4506291151e-01 - pa / qa;
  }
  let a = min(x, 10.0); // erfc(10) is below f32's smallest normal
  let s = 1.0 / (a * a);
  var r: f32;
  var q: f32;
  if (a < 2.857142857) {
    r = -9.8649440333e-03 + s * (-6.9385856390e-01 + s * (-1.0558626175e+01 + s * (-6.2375331879e+01 + s * (-1.6239666748e+02 + s * (-1.8460508728e+02 + s * (-8.1287437439e+01 + s * -9.8143291473e+00))))));
    q = 1.0 + s * (1.9651271820e+01 + s * (1.3765776062e+02 + s * (4.3456588745e+02 + s * (6.4538726807e+02 + s * (4.2900814819e+02 + s * (1.0863500214e+02 + s * (6.5702495575e+00 + s * -6.0424413532e-02)))))));
  } else {
    r = -9.8649431020e-03 + s * (-7.9928326607e-01 + s * (-1.7757955551e+01 + s * (-1.6063638306e+02 + s * (-6.3756646729e+02 + s * (-1.0250950928e+03 + s * -4.8351919556e+02)))));
    q = 1.0 + s * (3.0338060379e+01 + s * (3.2579251099e+02 + s * (1.5367296143e+03 + s * (3.1998581543e+03 + s * (2.5530502930e+03 + s * (4.7452853394e+02 + s * -2.2440952301e+01))))));
  }
  // z = a with its low mantissa bits cleared, so that z * z is exact.
  let z = bitcast<f32>(bitcast<u32>(a) & 0xffffe000u);
  return exp(-z * z - 0.5625) * exp((z - a) * (z + a) + r / q) / a;
}

fn gelu_erf(x: f32) -> f32 {
  let z = x * 0.70710678118654752;
  if (abs(z) < 0.84375) {
    let t = z * z;
    let pp = 1.2837916613e-01 + t * (-3.2504209876e-01 + t * (-2.8481749818e-02 + t * (-5.7702702470e-03 + t * -2.3763017452e-05)));
    let qq = 1.0 + t * (3.9791721106e-01 + t * (6.5022252500e-02 + t * (5.0813062117e-03 + t * (1.3249473704e-04 + t * -3.9602282413e-06))));
    return 0.5 * x * (1.0 + z + z * (pp / qq));
  }
  let c = erfc_pos(abs(z));
  return select(0.5 * x * c, x - 0.5 * x * c, z > 0.0);
}`;

/** How an operand is bound: f32 as itself, bf16 as raw words (4 elements per vec2<u32>, 2 per u32). */
function arrayType(dt: MatmulDType, vec: boolean): string {
  if (dt === 'f32') return vec ? 'array<vec4<f32>>' : 'array<f32>';
  return vec ? 'array<vec2<u32>>' : 'array<u32>';
}

/**
 * The accessors of binding `buf`, as f32 whatever its dtype: `${buf}1(i)` reads element i and,
 * when bound for vec reads, `${buf}4(i)` elements i .. i+3 (i a multiple of 4). A bf16 is the top
 * half of an f32; element i is the low half of word i / 2 when i is even, the high half when odd.
 */
function accessors(buf: string, dt: MatmulDType, vec: boolean): string {
  if (dt === 'f32') {
    if (!vec) return `fn ${buf}1(i: u32) -> f32 { return ${buf}[i]; }`;
    return `fn ${buf}1(i: u32) -> f32 { return ${buf}[i / 4u][i % 4u]; }
fn ${buf}4(i: u32) -> vec4<f32> { return ${buf}[i / 4u]; }`;
  }
  const word = vec ? `${buf}[i / 4u][(i / 2u) % 2u]` : `${buf}[i / 2u]`;
  const one = `fn ${buf}1(i: u32) -> f32 { return bitcast<f32>((${word} >> ((i & 1u) * 16u)) << 16u); }`;
  if (!vec) return one;
  return `${one}
fn ${buf}4(i: u32) -> vec4<f32> {
  let w = ${buf}[i / 4u];
  return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u));
}`;
}

/** Uniform block, bindings, element accessors and the epilogue; shared by every variant. */
function headerWgsl(l: MatmulLayout): string {
  const { dtA = 'f32', dtB = 'f32', dtBias = 'f32' } = l;
  return /* wgsl */ `
struct P {
  m: u32, n: u32, k: u32,
  lda: u32, ldb: u32, ldo: u32,          // row strides, elements
  a_off: u32, b_off: u32, o_off: u32, bias_off: u32,
  a_batch: u32, b_batch: u32, o_batch: u32, // batch strides (b_batch 0 broadcasts b)
  has_bias: u32, act: u32, accumulate: u32,
  per_thread: u32,                       // outputs per thread, TM * TN
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: ${arrayType(dtA, l.vecA)};
@group(0) @binding(2) var<storage, read> B: ${arrayType(dtB, l.vecB)};
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<storage, read> bias: ${arrayType(dtBias, false)};

${accessors('A', dtA, l.vecA)}
${accessors('B', dtB, l.vecB)}
${accessors('bias', dtBias, false)}
${GELU_ERF_WGSL}

// act(acc + earlier K chunks + bias) for output element o of column n.
fn finish(acc: f32, n: u32, o: u32) -> f32 {
  var x = acc;
  if (p.accumulate != 0u) { x += O[o]; }
  if (p.has_bias != 0u) { x += bias1(p.bias_off + n); }
  switch p.act {
    case 1u: { return x / (1.0 + exp(-x)); }
    // 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): no tanh overflow
    case 2u: { return x / (1.0 + exp(-1.5957691216057308 * (x + 0.044715 * x * x * x))); }
    case 3u: { return gelu_erf(x); }
    default: { return x; }
  }
}`;
}

/**
 * How one operand is read: A over (m, k) or B over (n, k). `kMajor`: contiguous along k (A not
 * transposed, B transposed), otherwise contiguous along its outer axis m or n.
 */
interface Operand {
  buf: 'A' | 'B';
  /** Prefix of the generated names: 'a' or 'b'. */
  id: string;
  /** Uniform size of the outer axis and the row stride. */
  size: string;
  ld: string;
  kMajor: boolean;
  vec: boolean;
  /** Element offset of this workgroup's batch. */
  base: string;
  /** Outer elements per thread (tm or tn) and the thread's first outer index / group stride. */
  per: number;
  first: string;
  groupStride: number;
}

/** The thread's t-th outer index: groups of 4 consecutive ones, interleaved across the workgroup. */
const outerIdx = (o: Operand, t: number) => `${o.first} + ${(t >> 2) * o.groupStride + (t & 3)}u`;

/** The register-blocked variant's reads from global memory. */
function directReads(o: Operand) {
  const x = o.id;
  const groups = Array.from({ length: o.per / 4 }, (_, g) => g);
  const ts = Array.from({ length: o.per }, (_, t) => t);
  // Bases hoisted out of the K loop, outer indices clamped into range.
  const prologue = o.kMajor
    ? ts.map((t) => `let ${x}i${t} = ${o.base} + min(${outerIdx(o, t)}, ${o.size} - 1u) * ${o.ld};`)
    : o.vec
      ? groups.map((g) => `let ${x}i${g * 4} = ${o.base} + min(${outerIdx(o, g * 4)}, ${o.size} - 4u);`)
      : ts.map((t) => `let ${x}i${t} = ${o.base} + min(${outerIdx(o, t)}, ${o.size} - 1u);`);
  /** Loads for k .. k+3 (all < K). */
  const step = o.kMajor
    ? ts.map((t) => `let ${x}${t} = ${o.vec ? `${o.buf}4(${x}i${t} + k)` : vec4Of(J4.map((j) => `${o.buf}1(${x}i${t} + k + ${j}u)`))};`)
    : J4.flatMap((kk) => groups.map((g) => {
      const row = `(k + ${kk}u) * ${o.ld}`;
      const v = o.vec ? `${o.buf}4(${x}i${g * 4} + ${row})` : vec4Of(J4.map((j) => `${o.buf}1(${x}i${g * 4 + j} + ${row})`));
      return `let ${x}${kk}_${g} = ${v};`;
    }));
  /** Element (t, k + kk) after `step`. */
  const elem = (t: number, kk: number) => (o.kMajor ? `${x}${t}[${kk}]` : `${x}${kk}_${t >> 2}[${t & 3}]`);
  /** Element (t, k) read on its own (the K tail). */
  const single = (t: number) => o.kMajor
    ? `${o.buf}1(${x}i${t} + k)`
    : o.vec ? `${o.buf}1(${x}i${t & ~3} + ${t & 3}u + k * ${o.ld})` : `${o.buf}1(${x}i${t} + k * ${o.ld})`;
  return { prologue, step, elem, single };
}

/** acc_r_q += A(r, kk) * B(kk, 4q .. 4q+3) for the thread's whole block. */
function fmas(tm: number, tn: number, a: (r: number) => string, bq: (q: number) => string): string[] {
  const out: string[] = [];
  for (let r = 0; r < tm; r++) for (let q = 0; q < tn / 4; q++) out.push(`acc${r}_${q} = fma(vec4<f32>(${a(r)}), ${bq(q)}, acc${r}_${q});`);
  return out;
}

/** The tiled variant's staging of one operand's BK-deep tile into workgroup memory (zero past K). */
function stageTile(o: Operand, v: MatmulVariant, outerBlock: string, tile: string): string[] {
  const threads = v.wgX * v.wgY;
  const outer = o.per * (o.buf === 'A' ? v.wgY : v.wgX); // BM or BN
  const units = (outer * v.tileK) / 4; // vec4s per tile
  const lines: string[] = [];
  for (let i = 0; i < Math.ceil(units / threads); i++) {
    const u = i === 0 ? 'lid' : `lid + ${i * threads}u`;
    // Threads past the last unit skip it (when the tile has fewer vec4s than the workgroup threads).
    const open = (i + 1) * threads > units ? `if (${u} < ${units}u) {` : '{';
    if (o.kMajor) {
      // A vec4 along k of one outer row, stored transposed: the tile is k-major.
      lines.push(`${open}
      let u = ${u};
      let row = u / ${v.tileK / 4}u;
      let kq = k0 + (u % ${v.tileK / 4}u) * 4u;
      let src = ${o.base} + min(${outerBlock} + row, ${o.size} - 1u) * ${o.ld};
      let x = ${o.vec ? `${o.buf}4(src + min(kq, (p.k - 1u) & ~3u))` : vec4Of(J4.map((j) => `${o.buf}1(src + min(kq + ${j}u, p.k - 1u))`))};
      let keep = (vec4<u32>(kq) + vec4<u32>(0u, 1u, 2u, 3u)) < vec4<u32>(p.k);
      let y = select(vec4<f32>(0.0), x, keep);
      for (var j = 0u; j < 4u; j++) { ${tile}[((u % ${v.tileK / 4}u) * 4u + j) * ${outer / 4}u + row / 4u][row % 4u] = y[j]; }
    }`);
    } else {
      lines.push(`${open}
      let u = ${u};
      let kk = u / ${outer / 4}u;
      let g = (u % ${outer / 4}u) * 4u;
      let src = ${o.base} + min(k0 + kk, p.k - 1u) * ${o.ld};
      let x = ${o.vec ? `${o.buf}4(src + min(${outerBlock} + g, ${o.size} - 4u))` : vec4Of(J4.map((j) => `${o.buf}1(src + min(${outerBlock} + g + ${j}u, ${o.size} - 1u))`))};
      ${tile}[u] = select(vec4<f32>(0.0), x, k0 + kk < p.k);
    }`);
    }
  }
  return lines;
}

/** The WGSL of one variant for one layout. */
export function matmulWgsl(v: MatmulVariant, l: MatmulLayout): string {
  const bm = v.wgY * v.tm, bn = v.wgX * v.tn;
  const a: Operand = {
    buf: 'A', id: 'a', size: 'p.m', ld: 'p.lda', kMajor: !l.transA, vec: l.vecA, base: 'aBase',
    per: v.tm, first: 'row0', groupStride: v.wgY * 4,
  };
  const b: Operand = {
    buf: 'B', id: 'b', size: 'p.n', ld: 'p.ldb', kMajor: l.transB, vec: l.vecB, base: 'bBase',
    per: v.tn, first: 'col0', groupStride: v.wgX * 4,
  };
  const rs = Array.from({ length: v.tm }, (_, r) => r);
  const qs = Array.from({ length: v.tn / 4 }, (_, q) => q);
  const decl = rs.flatMap((r) => qs.map((q) => `var acc${r}_${q} = vec4<f32>(0.0);`));

  let body: string;
  let shared = '';
  if (v.tileK === 0) {
    const ra = directReads(a), rb = directReads(b);
    const bVec = (kk: number) => (q: number) => vec4Of(J4.map((j) => rb.elem(q * 4 + j, kk)));
    body = `
  ${[...ra.prologue, ...rb.prologue].join('\n  ')}
  var k = 0u;
  for (; k + 4u <= p.k; k += 4u) {
    ${[...ra.step, ...rb.step].join('\n    ')}
    ${J4.flatMap((kk) => fmas(v.tm, v.tn, (r) => ra.elem(r, kk), bVec(kk))).join('\n    ')}
  }
  for (; k < p.k; k++) {
    ${fmas(v.tm, v.tn, (r) => ra.single(r), (q) => vec4Of(J4.map((j) => rb.single(q * 4 + j)))).join('\n    ')}
  }`;
  } else {
    shared = `
const BK = ${v.tileK}u;
var<workgroup> As: array<vec4<f32>, ${(v.tileK * bm) / 4}>; // [BK][BM], k-major
var<workgroup> Bs: array<vec4<f32>, ${(v.tileK * bn) / 4}>; // [BK][BN]`;
    const aGroups = Array.from({ length: v.tm / 4 }, (_, g) => g);
    body = `
  let blockRow = wid.y * ${bm}u;
  let blockCol = wid.x * ${bn}u;
  for (var k0 = 0u; k0 < p.k; k0 += BK) {
    ${[...stageTile(a, v, 'blockRow', 'As'), ...stageTile(b, v, 'blockCol', 'Bs')].join('\n    ')}
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      ${aGroups.map((g) => `let a${g} = As[kk * ${bm / 4}u + lxy.y${g ? ` + ${g * v.wgY}u` : ''}];`).join('\n      ')}
      ${qs.map((q) => `let b${q} = Bs[kk * ${bn / 4}u + lxy.x${q ? ` + ${q * v.wgX}u` : ''}];`).join('\n      ')}
      ${fmas(v.tm, v.tn, (r) => `a${r >> 2}[${r & 3}]`, (q) => `b${q}`).join('\n      ')}
    }
    workgroupBarrier();
  }`;
  }

  // The epilogue loops to a bound only the uniform knows (p.per_thread = TM * TN), so that
  // compilers keep one copy of the activation code instead of unrolling it per output (on lavapipe
  // that unrolling made a pipeline take seconds to compile).
  const store = `
  let res = array<vec4<f32>, ${(v.tm * v.tn) / 4}>(${rs.flatMap((r) => qs.map((q) => `acc${r}_${q}`)).join(', ')});
  for (var i = 0u; i < p.per_thread; i++) {
    let r = i / ${v.tn}u;
    let c = i % ${v.tn}u;
    let row = row0 + (r / 4u) * ${a.groupStride}u + r % 4u;
    let col = col0 + (c / 4u) * ${b.groupStride}u + c % 4u;
    if (row < p.m && col < p.n) {
      let o = oBase + row * p.ldo + col;
      O[o] = finish(res[r * ${v.tn / 4}u + c / 4u][c % 4u], col, o);
    }
  }`;

  return /* wgsl */ `// matmul ${v.name} transA=${l.transA} transB=${l.transB}
${headerWgsl(l)}
${shared}

@compute @workgroup_size(${v.wgX}, ${v.wgY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lxy: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let aBase = p.a_off + wid.z * p.a_batch;
  let bBase = p.b_off + wid.z * p.b_batch;
  let oBase = p.o_off + wid.z * p.o_batch;
  let row0 = wid.y * ${bm}u + lxy.y * 4u;
  let col0 = wid.x * ${bn}u + lxy.x * 4u;
  ${decl.join('\n  ')}
  ${body}
  ${store}
}`;
}

// ---- chunking -----------------------------------------------------------------------------------

/** One dispatch's part of the problem: batches, rows, columns and depth. */
interface Chunk {
  b0: number; nb: number;
  m0: number; ms: number;
  n0: number; ns: number;
  k0: number; ks: number;
}

type Axis = 'batch' | 'm' | 'n' | 'k';
type OperandName = 'a' | 'b' | 'out' | 'bias';

/** Element strides of each operand over the axes it spans. */
function axisStrides(d: MatmulDims, transA: boolean, transB: boolean): Record<OperandName, Partial<Record<Axis, number>>> {
  const { m, n, k } = d;
  return {
    a: transA ? { batch: m * k, k: m, m: 1 } : { batch: m * k, m: k, k: 1 },
    b: { batch: d.broadcastB ? 0 : k * n, ...(transB ? { n: k, k: 1 } : { k: n, n: 1 }) },
    out: { batch: m * n, m: n, n: 1 },
    bias: { n: 1 },
  };
}

const START: Record<Axis, keyof Chunk> = { batch: 'b0', m: 'm0', n: 'n0', k: 'k0' };
const COUNT: Record<Axis, keyof Chunk> = { batch: 'nb', m: 'ms', n: 'ns', k: 'ks' };

/** Elements [lo, hi) an operand's part of the chunk spans, relative to its view's offset. */
function span(strides: Partial<Record<Axis, number>>, c: Chunk): [number, number] {
  let lo = 0, hi = 0;
  for (const [axis, s] of Object.entries(strides) as [Axis, number][]) {
    lo += s * c[START[axis]];
    hi += s * (c[START[axis]] + Math.max(c[COUNT[axis]], 1) - 1);
  }
  return [lo, hi + 1];
}

/** The byte range to bind for elements [lo, hi) of a view: start aligned down to 256, size up to 16. */
function byteRange(v: View, [lo, hi]: [number, number]): { start: number; size: number } {
  const bytes = DTYPE_BYTES[v.dtype];
  const start = Math.floor(((v.offset + lo) * bytes) / 256) * 256;
  return { start, size: Math.ceil(((v.offset + hi) * bytes - start) / 16) * 16 };
}

/** The axes to split, best first, when an operand does not fit one binding. */
function splitOrder(op: OperandName, transA: boolean, transB: boolean): Axis[] {
  switch (op) {
    case 'a': return transA ? ['batch', 'k', 'm'] : ['batch', 'm', 'k'];
    case 'b': return transB ? ['batch', 'n', 'k'] : ['batch', 'k', 'n'];
    case 'out': return ['batch', 'm', 'n'];
    case 'bias': return ['n'];
  }
}

/** Splits the problem until every operand's part fits `limit` bytes and every grid fits. */
function planChunks(views: Record<OperandName, View | null>, d: MatmulDims, p: MatmulParams, v: MatmulVariant, limit: number, maxGroups: number): Chunk[] {
  const strides = axisStrides(d, !!p.transA, !!p.transB);
  const bm = v.wgY * v.tm, bn = v.wgX * v.tn;
  const split = (c: Chunk): Chunk[] => {
    const wanted: Axis[] = [];
    if (c.nb > maxGroups) wanted.push('batch');
    if (Math.ceil(c.ms / bm) > maxGroups) wanted.push('m');
    if (Math.ceil(c.ns / bn) > maxGroups) wanted.push('n');
    const tooBig: OperandName[] = [];
    for (const op of ['out', 'a', 'b', 'bias'] as const) {
      const view = views[op];
      if (view && byteRange(view, span(strides[op], c)).size > limit) {
        tooBig.push(op);
        wanted.push(...splitOrder(op, !!p.transA, !!p.transB).filter((axis) => strides[op][axis] !== 0));
      }
    }
    if (wanted.length === 0) return [c];
    const axis = wanted.find((ax) => c[COUNT[ax]] > 1);
    if (!axis) {
      throw new Error(`cannot split ${tooBig.join(', ')} into bindings of at most ${limit} bytes`);
    }
    const count = c[COUNT[axis]];
    // Halves, cut at a multiple of 64 (or 4) so that chunks start vec4-aligned and tile-aligned.
    const unit = axis === 'batch' ? 1 : count > 64 ? 64 : count > 4 ? 4 : 1;
    const first = Math.min(count - unit, Math.max(unit, Math.round(count / 2 / unit) * unit));
    const lo = { ...c, [COUNT[axis]]: first };
    const hi = { ...c, [START[axis]]: c[START[axis]] + first, [COUNT[axis]]: count - first };
    return [...split(lo), ...split(hi)];
  };
  return split({ b0: 0, nb: d.batch, m0: 0, ms: d.m, n0: 0, ns: d.n, k0: 0, ks: d.k });
}

// ---- launch -------------------------------------------------------------------------------------

/** Generated sources by variant and layout: a training step launches thousands of matmuls. */
const sources = new Map<string, string>();

function cachedWgsl(v: MatmulVariant, l: MatmulLayout): string {
  const key = JSON.stringify([v, l]);
  let src = sources.get(key);
  if (src === undefined) sources.set(key, (src = matmulWgsl(v, l)));
  return src;
}

export interface MatmulLaunchOptions {
  /** Run this variant instead of the adapter's choice (tuning and tests). */
  variant?: MatmulVariant;
  /** Bind at most this many bytes per operand (tests of the chunking use a small one). */
  maxBindingBytes?: number;
}

/** The dtype of input `name` as the kernel reads it; throws naming it when it cannot. */
function inputDType(name: string, v: View): MatmulDType {
  if (v.dtype !== 'f32' && v.dtype !== 'bf16') throw new Error(`${name} is ${v.dtype}; matmul reads f32 or bf16 only`);
  return v.dtype;
}

/** out[b] = act(A[b] @ B[b or 0] + bias); shapes as in Device.matmul; a, b, bias f32 or bf16, out f32. */
export function gpuMatmul(ctx: GpuContext, a: View, b: View, out: View, p: MatmulParams = {}, opts: MatmulLaunchOptions = {}): void {
  const d = matmulDims(a, b, out, p);
  const dtA = inputDType('a', a), dtB = inputDType('b', b), dtBias = p.bias ? inputDType('bias', p.bias) : 'f32';
  if (out.dtype !== 'f32') throw new Error(`out is ${out.dtype}; matmul writes f32 only`);
  if (d.batch * d.m * d.n === 0) return;
  const v = opts.variant ?? chosenVariant(ctx);
  const limit = opts.maxBindingBytes ?? ctx.limits.maxBindingBytes;
  const views: Record<OperandName, View | null> = { a, b, out, bias: p.bias ?? null };
  const strides = axisStrides(d, !!p.transA, !!p.transB);
  const label = describeOp('matmul', [a, b, p.bias], out);
  for (const c of planChunks(views, d, p, v, limit, ctx.limits.maxWorkgroupsPerDim)) {
    // Each operand: its bound range, its chunk origin inside it, whether it can be read as vec4s.
    const bound = {} as Record<OperandName, { binding: GpuBinding; off: number; aligned: boolean }>;
    for (const op of ['a', 'b', 'out', 'bias'] as const) {
      const view = views[op];
      if (!view) continue;
      const sp = span(strides[op], c);
      const { start, size } = byteRange(view, sp);
      const binding = ctx.bindRange(view, start, size);
      const off = view.offset + sp[0] - start / DTYPE_BYTES[view.dtype];
      // vec4 reads need the origin and every stride 4-aligned, and the rounded-up range bound.
      const aligned = off % 4 === 0 && binding.size >= size && Object.values(strides[op]).every((s) => s % 4 === 0 || s === 1);
      bound[op] = { binding, off, aligned };
    }
    const lda = p.transA ? d.m : d.k, ldb = p.transB ? d.k : d.n;
    const layout: MatmulLayout = {
      transA: !!p.transA,
      transB: !!p.transB,
      vecA: bound.a.aligned && lda % 4 === 0 && (!p.transA || c.ms % 4 === 0),
      vecB: bound.b.aligned && ldb % 4 === 0 && (p.transB || c.ns % 4 === 0),
      dtA, dtB, dtBias,
    };
    const last = c.k0 + c.ks === d.k;
    const params = new Params()
      .u32(c.ms, c.ns, c.ks, lda, ldb, d.n)
      .u32(bound.a.off, bound.b.off, bound.out.off, bound.bias?.off ?? 0)
      .u32(d.m * d.k, d.broadcastB ? 0 : d.k * d.n, d.m * d.n)
      .u32(p.bias && last ? 1 : 0, last ? ACT_CODE[p.act ?? 'none'] : 0, c.k0 > 0 ? 1 : 0, v.tm * v.tn);
    // Without a bias, A's binding stands in for it (never read).
    const bindings = [bound.a.binding, bound.b.binding, bound.out.binding, (bound.bias ?? bound.a).binding];
    const groups: [number, number, number] = [Math.ceil(c.ns / (v.wgX * v.tn)), Math.ceil(c.ms / (v.wgY * v.tm)), c.nb];
    ctx.dispatch(label, ctx.pipeline(cachedWgsl(v, layout)), params.toBuffer(), bindings, groups);
  }
}
