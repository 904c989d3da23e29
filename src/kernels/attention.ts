// Scaled dot-product attention (FlashAttention-style) and FLUX's rotary embedding on WebGPU,
// forward and backward (the backward's layout is described at its kernels below).
//
// Attention: T threads (lanes) own one query row, lane c holding the vec4s c, c + T, c + 2T, ...
// of the scaled q and of an output accumulator in registers, while they walk the keys together:
// each lane dots its part of q with the key, subgroup shuffles sum the parts, and every lane
// updates the running max m and sum l of an online softmax: a key's weight is exp(s - m), and when
// a score beats m the accumulator and l are first rescaled by exp(m_old - m_new). For random
// inputs m grows about ln(Lk) times per row, so rescaling per key costs less than the score
// buffer a tile-wise rescale needs. The Lq x Lk score matrix never exists: FLUX's 4096 + 512
// tokens need no more memory than q, k, v and out.
//
// T keeps each thread at 8 vec4s of q and 8 of output or fewer (T = 4 at Dh = 128). With all
// 2 x Dh floats in one thread, lavapipe's compile time grew about 3x per doubling of Dh (2.4 s of
// CPU at Dh = 64 against 0.6 s for T = 4 at Dh = 128), the kernel ran 1.7-2x slower at Dh = 64
// and 128, and a GPU would spill registers. The loops over Dh are unrolled here, in TypeScript,
// into separate variables, which compilers keep in registers.
//
// The rows of a workgroup are consecutive rows of one (batch, head) and walk the same keys: on a
// CPU adapter (a workgroup is one CPU thread, barriers are expensive) straight from global memory,
// on a GPU from K/V tiles staged in workgroup memory. Scores are kept in base 2 (q is pre-scaled
// by scale * log2(e)) so the exponentials are exp2.
import type { View } from '../device/device.ts';
import { type GpuBinding, type GpuContext, Params, gridFor } from '../device/webgpu/context.ts';
import { isContiguous } from '../tensor/shape.ts';
import { attentionBackwardShapes, attentionShapes, ropeShapes } from './attention.cpu.ts';
import { isCpuAdapter } from '../device/webgpu/context.ts';
import { scratchBinding } from './norm.ts';

/** How attention runs on an adapter. */
export interface AttentionVariant {
  /** Query rows per workgroup (each takes lanesPerRow threads). */
  rows: number;
  /** Stage K/V tiles of `bc` keys in workgroup memory (GPUs) instead of reading keys from global memory. */
  shared: boolean;
  bc: number;
}

/** The variant for head width dh on this adapter (`cpu` forces one, for tests). */
export function attentionVariant(ctx: GpuContext, dh: number, cpu = isCpuAdapter(ctx)): AttentionVariant {
  if (cpu) return { rows: 16, shared: false, bc: 64 };
  // Two tiles of bc keys x Dh floats must fit the workgroup memory (32 KiB holds bc = 32 at Dh = 128).
  let bc = 32;
  while (bc > 1 && 2 * bc * dh * 4 > ctx.limits.maxWorkgroupStorageBytes) bc /= 2;
  // 64 rows share each staged tile, as FlashAttention-2's 64-row query blocks.
  return { rows: 64, shared: true, bc };
}

/**
 * Lanes per query row for rows of dv vectors: the fewest (a power of two dividing dv) that leave
 * each lane 8 vectors or fewer, at most 4 (WebGPU subgroups have at least 4 lanes); 1 without subgroups.
 */
function lanesPerRow(dv: number, subgroups: boolean): number {
  let t = 1;
  while (subgroups && t < 4 && dv % (2 * t) === 0 && dv / t > 8) t *= 2;
  return t;
}

/** This lane's vectors e * t + c of a row of dv vectors, unrolled in TypeScript: f(e) for e = 0 .. dv / t - 1. */
function laneVectors(dv: number, t: number, f: (e: number) => string, sep: string): string {
  return Array.from({ length: dv / t }, (_, e) => f(e)).join(sep);
}

/** The offset of this lane's vector e from its first one (an empty string for e = 0). */
const laneOffset = (e: number, t: number) => (e === 0 ? '' : ` + ${e * t}u`);

/** Sums `name` over the t lanes of a row: xor-shuffles stay within each aligned group of t lanes. */
function laneSumWgsl(name: string, t: number): string {
  return Array.from({ length: Math.log2(t) }, (_, k) => `${name} += subgroupShuffleXor(${name}, ${1 << k}u);`).join('\n      ');
}

/**
 * WGSL that copies rows first .. first + n - 1 of operands into workgroup tiles (all threads
 * together), then waits: [tile, source, base index of the (batch, head), row stride] each.
 */
function stageWgsl(dv: number, wg: number, first: string, tiles: [string, string, string, string][]): string {
  return `for (var e = lid; e < n * ${dv}u; e += ${wg}u) {
      let row = ${first} + e / ${dv}u;
      ${tiles.map(([tile, src, base, stride]) => `${tile}[e] = ${src}[${base} + row * ${stride} + e % ${dv}u];`).join('\n      ')}
    }
    workgroupBarrier();`;
}

/**
 * The attention kernel for rows of dv vectors of w floats (w = 4 when every row start is 16-byte
 * aligned), t lanes per row. Binding order: q, k, v, out, then lse when `lse`.
 */
function attentionWgsl(dv: number, w: number, t: number, variant: AttentionVariant, lse: boolean): string {
  const { rows, shared, bc } = variant;
  const wg = rows * t;
  const each = (f: (e: number) => string, sep = '\n      ') => laneVectors(dv, t, f, sep);
  const at = (e: number) => laneOffset(e, t);
  // Where key (value) row j starts for this lane: in the staged tile or in global memory.
  const kRow = shared ? `jj * ${dv}u + c` : 'kb + j * p.k_l + c';
  const vRow = shared ? `jj * ${dv}u + c` : 'vb + j * p.v_l + c';
  const kSrc = shared ? 'k_tile' : 'k', vSrc = shared ? 'v_tile' : 'v';
  const stage = shared ? stageWgsl(dv, wg, 'j0', [['k_tile', 'k', 'kb', 'p.k_l'], ['v_tile', 'v', 'vb', 'p.v_l']]) : '';
  const reduce = laneSumWgsl('s', t);
  return /* wgsl */ `${t > 1 ? 'enable subgroups;' : ''}
alias V = ${w === 4 ? 'vec4<f32>' : 'f32'};

struct P {
  lq: u32, lk: u32, causal: u32, scale: f32,
  q_off: u32, q_b: u32, q_h: u32, q_l: u32,
  k_off: u32, k_b: u32, k_h: u32, k_l: u32,
  v_off: u32, v_b: u32, v_h: u32, v_l: u32,
  o_off: u32, o_b: u32, o_h: u32, o_l: u32,
  s_off: u32, s_b: u32, s_h: u32, s_l: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<V>;
@group(0) @binding(2) var<storage, read> k: array<V>;
@group(0) @binding(3) var<storage, read> v: array<V>;
@group(0) @binding(4) var<storage, read_write> out: array<V>;
${lse ? '@group(0) @binding(5) var<storage, read_write> lse: array<f32>;' : ''}
${shared ? `var<workgroup> k_tile: array<V, ${bc * dv}>;\nvar<workgroup> v_tile: array<V, ${bc * dv}>;` : ''}

fn hsum(x: V) -> f32 { return ${w === 4 ? 'x.x + x.y + x.z + x.w' : 'x'}; }

const ROWS = ${rows}u; // query rows per workgroup

@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let b = wid.z;
  let h = wid.y;
  let i = wid.x * ROWS + lid / ${t}u; // query row; rows past Lq compute row Lq - 1 and store nothing
  let c = lid % ${t}u;                // lane within the row
  let qb = p.q_off + b * p.q_b + h * p.q_h + min(i, p.lq - 1u) * p.q_l + c;
  let kb = p.k_off + b * p.k_b + h * p.k_h;
  let vb = p.v_off + b * p.v_b + h * p.v_h;
  ${each((e) => `let q${e} = q[qb${at(e)}] * p.scale;`, '\n  ')}
  ${each((e) => `var o${e} = V();`, '\n  ')}
  var m = -1e30; // running max of the scores (below any real one; WGSL has no infinity literal)
  var l = 0.0;   // running sum of exp2(score - m)
  // Under causal masking no row of this workgroup sees a key past its last row.
  let keys = select(p.lk, min(p.lk, (wid.x + 1u) * ROWS), p.causal != 0u);
  for (var j0 = 0u; j0 < keys; j0 += ${bc}u) {
    let n = min(${bc}u, keys - j0);
    ${stage}
    for (var jj = 0u; jj < n; jj++) {
      let j = j0 + jj;
      let kr = ${kRow};
      var dots = V();
      ${each((e) => `dots += q${e} * ${kSrc}[kr${at(e)}];`)}
      var s = hsum(dots);
      ${reduce}
      // Masked keys still take part in the shuffles above, which need all lanes of the subgroup.
      let visible = p.causal == 0u || j <= i;
      if (visible && s > m) {
        let rescale = exp2(m - s);
        l *= rescale;
        ${each((e) => `o${e} *= rescale;`, '\n        ')}
        m = s;
      }
      let pj = select(0.0, exp2(s - m), visible);
      l += pj;
      let vr = ${vRow};
      ${each((e) => `o${e} += pj * ${vSrc}[vr${at(e)}];`)}
    }
    ${shared ? 'workgroupBarrier(); // the tile is overwritten next' : ''}
  }
  if (i >= p.lq) { return; }
  let ob = p.o_off + b * p.o_b + h * p.o_h + i * p.o_l + c;
  ${each((e) => `out[ob${at(e)}] = o${e} / l;`, '\n  ')}
  ${lse ? `if (c == 0u) { lse[p.s_off + b * p.s_b + h * p.s_h + i * p.s_l] = (m + log2(l)) * 0.6931471805599453; } // natural log` : ''}
}`;
}

/** Offset and the B, H, L strides of a [B, H, L, Dh] view whose Dh axis is unit-stride. */
function rowLayout(v: View, name: string): number[] {
  if (v.shape[3]! > 1 && v.strides[3] !== 1) throw new Error(`${name} [${v.shape}] strides [${v.strides}]: the Dh axis must have stride 1`);
  return [v.offset, v.strides[0]!, v.strides[1]!, v.strides[2]!];
}

/**
 * The launcher behind gpuAttention; `variant` overrides the adapter's choice (tests run both).
 * q, k, v, out may be any views with a unit-stride Dh axis (e.g. slices of a fused qkv tensor).
 */
export function gpuAttentionVariant(ctx: GpuContext, q: View, k: View, v: View, out: View, p: { scale: number; causal?: boolean }, lse: View | null, variant?: AttentionVariant): void {
  const [nb, nh, lq, , dh] = attentionShapes(q, k, v, out, lse);
  const layouts = [rowLayout(q, 'q'), rowLayout(k, 'k'), rowLayout(v, 'v'), rowLayout(out, 'out')];
  if (nb * nh * lq === 0 || dh === 0) return;
  const w = dh % 4 === 0 && layouts.flat().every((x) => x % 4 === 0) ? 4 : 1;
  const t = lanesPerRow(dh / w, ctx.features.has('subgroups'));
  const chosen = variant ?? attentionVariant(ctx, dh);
  const params = new Params().u32(lq, k.shape[2]!, p.causal ? 1 : 0).f32(p.scale * Math.LOG2E);
  for (const l of layouts) params.u32(...l.map((x) => x / w));
  params.u32(lse?.offset ?? 0, ...(lse?.strides ?? [0, 0, 0]));
  const bindings: GpuBinding[] = [q, k, v, out].map((x) => ctx.bind(x));
  if (lse) bindings.push(ctx.bind(lse));
  const pipeline = ctx.pipeline(attentionWgsl(dh / w, w, t, chosen, !!lse));
  ctx.dispatch(`attention q[${q.shape}] k[${k.shape}]${p.causal ? ' causal' : ''}`, pipeline, params.toBuffer(), bindings, [Math.ceil(lq / chosen.rows), nh, nb]);
}

/** q: [B, H, Lq, Dh], k, v: [B, H, Lk, Dh], out: [B, H, Lq, Dh], lse: [B, H, Lq] or null. */
export function gpuAttention(ctx: GpuContext, q: View, k: View, v: View, out: View, p: { scale: number; causal?: boolean }, lse: View | null): void {
  gpuAttentionVariant(ctx, q, k, v, out, p, lse);
}

// ---- attention backward ------------------------------------------------------------------------
//
// FlashAttention-2's backward without atomics, in two kernels laid out as the forward (t lanes per
// row, `rows` rows per workgroup, keys or queries read from global memory on a CPU adapter and
// staged in workgroup tiles on a GPU). Both recompute P = exp2(s - lse2) from the forward's lse
// (natural log, times log2(e)) for the pairs they visit; the Lq x Lk matrix never exists.
//  dq:  one row per query i: D_i = dout_i . out_i (saved to scratch for the next kernel), then over
//       the keys it sees: dp = dout_i . v_j, dS = P (dp - D_i), dq += dS k_j; dq *= scale.
//  dkv: one row per key j, over the queries that see it: dv += P dout_i, dk += dS q_i; dk *= scale.
// Per (query, key) pair the two kernels do 3 + 4 vector operations of Dh (FA2 with atomic dq adds
// does 5): the price of writing every gradient exactly once, from one thread.

/** The backward's [B, H, L, Dh] operands, in the order of their layout fields in P (the names also appear in errors). */
const BACKWARD_OPERANDS = ['q', 'k', 'v', 'out', 'dout', 'dq', 'dk', 'dv'] as const;

/**
 * One of the backward kernels (`pass`) for rows of dv vectors of w floats, t lanes per row.
 * Bindings: dq pass q, k, v, out, lse, dout, scratch D (written), dq; dkv pass q, k, v, lse,
 * dout, scratch D (read), dk, dv, or dk alone when dk and dv lie in one buffer (`oneBuffer`, e.g. a
 * fused dqkv gradient: WebGPU forbids two writable bindings of overlapping ranges).
 */
function attentionBackwardWgsl(pass: 'dq' | 'dkv', dv: number, w: number, t: number, variant: AttentionVariant, oneBuffer = false): string {
  const { rows, shared, bc } = variant;
  const wg = rows * t;
  const each = (f: (e: number) => string, sep = '\n      ') => laneVectors(dv, t, f, sep);
  const at = (e: number) => laneOffset(e, t);
  const bindings = pass === 'dq'
    ? [['q', 'read'], ['k', 'read'], ['v', 'read'], ['out', 'read'], ['lse', 'read'], ['dout', 'read'], ['dsum', 'read_write'], ['dq', 'read_write']]
    : [['q', 'read'], ['k', 'read'], ['v', 'read'], ['lse', 'read'], ['dout', 'read'], ['dsum', 'read'], ['dk', 'read_write'], ...(oneBuffer ? [] : [['dv', 'read_write']])];
  const header = `${t > 1 ? 'enable subgroups;' : ''}
alias V = ${w === 4 ? 'vec4<f32>' : 'f32'};

struct P {
  lq: u32, lk: u32, causal: u32, scale2: f32, scale: f32,
  ${BACKWARD_OPERANDS.map((n) => `${n}_off: u32, ${n}_b: u32, ${n}_h: u32, ${n}_l: u32,`).join('\n  ')}
  s_off: u32, s_b: u32, s_h: u32, s_l: u32,
}
@group(0) @binding(0) var<uniform> p: P;
${bindings.map(([name, access], k) => `@group(0) @binding(${k + 1}) var<storage, ${access}> ${name}: array<${name === 'lse' || name === 'dsum' ? 'f32' : 'V'}>;`).join('\n')}

fn hsum(x: V) -> f32 { return ${w === 4 ? 'x.x + x.y + x.z + x.w' : 'x'}; }

const ROWS = ${rows}u; // rows per workgroup (queries in the dq pass, keys in the dkv pass)
const LOG2E = 1.4426950408889634;`;
  const start = (n: string) => `p.${n}_off + b * p.${n}_b + h * p.${n}_h`;
  // The pair's score and dout_i . v_j, summed over the row's lanes together.
  const dots = (qv: (e: number) => string, kv: (e: number) => string, gv: (e: number) => string, vv: (e: number) => string) => `var sd = V();
      var pd = V();
      ${each((e) => `sd += ${qv(e)} * ${kv(e)};`)}
      ${each((e) => `pd += ${gv(e)} * ${vv(e)};`)}
      var sp = vec2<f32>(hsum(sd), hsum(pd));
      ${laneSumWgsl('sp', t)}`;

  /**
   * The frame both passes share: row `row` (i or j) of the pass's own operand, of `len` rows, with
   * `<row>c` the row clamped to the last one and c the lane, walks rows `other` from `from` up to
   * `to` of two operands of the other side, [name, source, base index of the (batch, head), row
   * stride] each, staged in `<name>_tile` on a GPU. Per walked row, `<name>r` is where this lane's
   * part of the row starts and read(name, e) reads its vector e. Rows past `len` walk too (for the
   * barriers and shuffles) and return before `post`.
   */
  const kernel = (f: {
    row: string; len: string; other: string; from: string; to: string;
    walk: [string, string, string, string][]; pre: string; body: (read: (name: string, e: number) => string) => string; post: string;
  }) => {
    const o = f.other, oo = `${o}${o}`;
    const src = new Map(f.walk.map(([name, source]) => [name, shared ? `${name}_tile` : source]));
    const read = (name: string, e: number) => `${src.get(name)}[${name}r${at(e)}]`;
    return /* wgsl */ `${header}
${shared ? f.walk.map(([name]) => `var<workgroup> ${name}_tile: array<V, ${bc * dv}>;`).join('\n') : ''}

@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let b = wid.z;
  let h = wid.y;
  let ${f.row} = wid.x * ROWS + lid / ${t}u; // rows past the last compute the last and store nothing
  let c = lid % ${t}u;                // lane within the row
  let ${f.row}c = min(${f.row}, ${f.len} - 1u);
  ${f.pre}
  for (var ${o}0 = ${f.from}; ${o}0 < ${f.to}; ${o}0 += ${bc}u) {
    let n = min(${bc}u, ${f.to} - ${o}0);
    ${shared ? stageWgsl(dv, wg, `${o}0`, f.walk.map(([name, source, base, stride]) => [`${name}_tile`, source, base, stride])) : ''}
    for (var ${oo} = 0u; ${oo} < n; ${oo}++) {
      let ${o} = ${o}0 + ${oo};
      ${f.walk.map(([name, , base, stride]) => `let ${name}r = ${shared ? `${oo} * ${dv}u + c` : `${base} + ${o} * ${stride} + c`};`).join('\n      ')}
      ${f.body(read)}
    }
    ${shared ? 'workgroupBarrier(); // the tile is overwritten next' : ''}
  }
  if (${f.row} >= ${f.len}) { return; }
  ${f.post}
}`;
  };

  if (pass === 'dq') {
    return kernel({
      row: 'i', len: 'p.lq', other: 'j', from: '0u', to: 'keys',
      walk: [['k', 'k', 'kb', 'p.k_l'], ['v', 'v', 'vb', 'p.v_l']],
      pre: `let qb = ${start('q')} + ic * p.q_l + c;
  let ob = ${start('out')} + ic * p.out_l + c;
  let gb = ${start('dout')} + ic * p.dout_l + c;
  let kb = ${start('k')};
  let vb = ${start('v')};
  ${each((e) => `let q${e} = q[qb${at(e)}] * p.scale2;`, '\n  ')}
  ${each((e) => `let g${e} = dout[gb${at(e)}];`, '\n  ')}
  ${each((e) => `var dq${e} = V();`, '\n  ')}
  var od = V();
  ${each((e) => `od += g${e} * out[ob${at(e)}];`, '\n  ')}
  var di = hsum(od); // D_i = dout_i . out_i
  ${laneSumWgsl('di', t)}
  let lse2 = lse[p.s_off + b * p.s_b + h * p.s_h + ic * p.s_l] * LOG2E;
  if (i < p.lq && c == 0u) { dsum[(b * nwg.y + h) * p.lq + i] = di; }
  // Under causal masking no row of this workgroup sees a key past its last row.
  let keys = select(p.lk, min(p.lk, (wid.x + 1u) * ROWS), p.causal != 0u);`,
      body: (read) => `${each((e) => `let k${e} = ${read('k', e)};`)}
      ${dots((e) => `q${e}`, (e) => `k${e}`, (e) => `g${e}`, (e) => read('v', e))}
      // Masked keys still take part in the shuffles above, which need all lanes of the subgroup.
      let pj = select(0.0, exp2(sp.x - lse2), p.causal == 0u || j <= i);
      let ds = pj * (sp.y - di);
      ${each((e) => `dq${e} += ds * k${e};`)}`,
      post: `let db = ${start('dq')} + i * p.dq_l + c;
  ${each((e) => `dq[db${at(e)}] = dq${e} * p.scale;`, '\n  ')}`,
    });
  }

  return kernel({
    row: 'j', len: 'p.lk', other: 'i', from: 'select(0u, wid.x * ROWS, p.causal != 0u)', to: 'p.lq',
    walk: [['q', 'q', 'qb', 'p.q_l'], ['g', 'dout', 'gb', 'p.dout_l']],
    pre: `let kb = ${start('k')} + jc * p.k_l + c;
  let vb = ${start('v')} + jc * p.v_l + c;
  let qb = ${start('q')};
  let gb = ${start('dout')};
  let sb = p.s_off + b * p.s_b + h * p.s_h;
  let dsb = (b * nwg.y + h) * p.lq;
  ${each((e) => `let k${e} = k[kb${at(e)}];`, '\n  ')}
  ${each((e) => `let v${e} = v[vb${at(e)}];`, '\n  ')}
  ${each((e) => `var dk${e} = V();`, '\n  ')}
  ${each((e) => `var dv${e} = V();`, '\n  ')}
  // Under causal masking no query before this workgroup's first key sees any of its keys.`,
    body: (read) => `${each((e) => `let q${e} = ${read('q', e)};`)}
      ${each((e) => `let g${e} = ${read('g', e)};`)}
      ${dots((e) => `q${e}`, (e) => `k${e}`, (e) => `g${e}`, (e) => `v${e}`)}
      // Masked pairs still take part in the shuffles above, which need all lanes of the subgroup.
      let pj = select(0.0, exp2(sp.x * p.scale2 - lse[sb + i * p.s_l] * LOG2E), p.causal == 0u || j <= i);
      let ds = pj * (sp.y - dsum[dsb + i]);
      ${each((e) => `dv${e} += pj * g${e};`)}
      ${each((e) => `dk${e} += ds * q${e};`)}`,
    post: `let kd = ${start('dk')} + j * p.dk_l + c;
  let vd = ${start('dv')} + j * p.dv_l + c;
  ${each((e) => `dk[kd${at(e)}] = dk${e} * p.scale;`, '\n  ')}
  ${each((e) => `${oneBuffer ? 'dk' : 'dv'}[vd${at(e)}] = dv${e};`, '\n  ')}`,
  });
}

/**
 * The launcher behind gpuAttentionBackward; `variant` overrides the adapter's choice (tests run
 * both). Every [B, H, L, Dh] operand may be any view with a unit-stride Dh axis, lse any [B, H, Lq] view.
 */
export function gpuAttentionBackwardVariant(
  ctx: GpuContext, q: View, k: View, v: View, out: View, lse: View, dout: View, dq: View, dk: View, dv: View, p: { scale: number; causal?: boolean },
  variant?: AttentionVariant,
): void {
  const [nb, nh, lq, lk, dh] = attentionBackwardShapes(q, k, v, out, lse, dout, dq, dk, dv);
  const operands = [q, k, v, out, dout, dq, dk, dv];
  const layouts = operands.map((x, i) => rowLayout(x, BACKWARD_OPERANDS[i]!));
  if (nb * nh === 0 || dh === 0) return;
  const w = dh % 4 === 0 && layouts.flat().every((x) => x % 4 === 0) ? 4 : 1;
  const t = lanesPerRow(dh / w, ctx.features.has('subgroups'));
  const chosen = variant ?? attentionVariant(ctx, dh);
  const params = new Params().u32(lq, lk, p.causal ? 1 : 0).f32(p.scale * Math.LOG2E, p.scale);
  for (const l of layouts) params.u32(...l.map((x) => x / w));
  params.u32(lse.offset, ...lse.strides);
  const dsum = scratchBinding(ctx, nb * nh * lq * 4);
  const label = `attentionBackward q[${q.shape}] k[${k.shape}]${p.causal ? ' causal' : ''}`;
  const bind = (...xs: View[]) => xs.map((x) => ctx.bind(x));
  // Each pass over rows of one operand; the dq pass first, as it leaves D in the scratch buffer.
  if (lq > 0) {
    const pipeline = ctx.pipeline(attentionBackwardWgsl('dq', dh / w, w, t, chosen));
    ctx.dispatch(label, pipeline, params.toBuffer(), [...bind(q, k, v, out, lse, dout), dsum, ...bind(dq)], [Math.ceil(lq / chosen.rows), nh, nb]);
  }
  const oneBuffer = dk.buf === dv.buf;
  const pipeline = ctx.pipeline(attentionBackwardWgsl('dkv', dh / w, w, t, chosen, oneBuffer));
  ctx.dispatch(label, pipeline, params.toBuffer(), [...bind(q, k, v, lse, dout), dsum, ...bind(...(oneBuffer ? [dk] : [dk, dv]))], [Math.ceil(lk / chosen.rows), nh, nb]);
}

/** q, out, dout, dq: [B, H, Lq, Dh]; k, v, dk, dv: [B, H, Lk, Dh]; lse: [B, H, Lq] (natural log, from the forward). */
export function gpuAttentionBackward(ctx: GpuContext, q: View, k: View, v: View, out: View, lse: View, dout: View, dq: View, dk: View, dv: View, p: { scale: number; causal?: boolean }): void {
  gpuAttentionBackwardVariant(ctx, q, k, v, out, lse, dout, dq, dk, dv, p);
}

const ROPE_WG = 256;

/** One thread per (re, im) pair; `backward` applies the transposed rotation (rope's gradient). */
function ropeWgsl(backward: boolean): string {
  // Forward: out = (re cos - im sin, im cos' + re sin'); backward: dx = (re cos + im sin', im cos' - re sin),
  // where cos, sin are the pair's first table elements and cos', sin' its second.
  const [first, second] = backward
    ? ['re * cos_t[p.c_off + t] + im * sin_t[p.s_off + t + 1u]', 'im * cos_t[p.c_off + t + 1u] - re * sin_t[p.s_off + t]']
    : ['re * cos_t[p.c_off + t] - im * sin_t[p.s_off + t]', 'im * cos_t[p.c_off + t + 1u] + re * sin_t[p.s_off + t + 1u]'];
  return /* wgsl */ `
struct P { pairs: u32, half_dh: u32, l: u32, x_off: u32, c_off: u32, s_off: u32, o_off: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${ROPE_WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let pair = gid.x + gid.y * nwg.x * ${ROPE_WG}u;
  if (pair >= p.pairs) { return; }
  let e = 2u * pair;                                          // element index in x and out
  let t = 2u * (pair % (p.l * p.half_dh));                    // element index in cos and sin
  let re = x[p.x_off + e];
  let im = x[p.x_off + e + 1u];
  out[p.o_off + e] = ${first};
  out[p.o_off + e + 1u] = ${second};
}`;
}

/** The launcher behind gpuRope and gpuRopeBackward (x and out are dy and dx for the backward). */
function launchRope(ctx: GpuContext, backward: boolean, x: View, cos: View, sin: View, out: View): void {
  const names = backward ? ['dy', 'dx'] as const : ['x', 'out'] as const;
  const [nb, nh, l, dh] = ropeShapes(x, cos, sin, out, names);
  for (const [name, t] of [[names[0], x], ['cos', cos], ['sin', sin], [names[1], out]] as const) {
    if (!isContiguous(t.shape, t.strides)) throw new Error(`${name} [${t.shape}] strides [${t.strides}] must be contiguous`);
  }
  const pairs = (nb * nh * l * dh) / 2;
  if (pairs === 0) return;
  const params = new Params().u32(pairs, dh / 2, l, x.offset, cos.offset, sin.offset, out.offset);
  ctx.dispatch(`rope${backward ? 'Backward' : ''} [${x.shape}]`, ctx.pipeline(ropeWgsl(backward)), params.toBuffer(), [x, cos, sin, out].map((t) => ctx.bind(t)), gridFor(pairs, ROPE_WG, ctx.limits.maxWorkgroupsPerDim));
}

/** One thread per (re, im) pair. x, out: [B, H, L, Dh]; cos, sin: [L, Dh]; all contiguous. */
export function gpuRope(ctx: GpuContext, x: View, cos: View, sin: View, out: View): void {
  launchRope(ctx, false, x, cos, sin, out);
}

/** The transposed rotation: dx from dy. dy, dx: [B, H, L, Dh]; cos, sin: [L, Dh]; all contiguous. */
export function gpuRopeBackward(ctx: GpuContext, dy: View, cos: View, sin: View, dx: View): void {
  launchRope(ctx, true, dy, cos, sin, dx);
}
