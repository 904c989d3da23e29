// WebGPU elementwise kernels: fill, copy (strided copy and dtype cast), unary, unaryBackward, binary
// and where come from one WGSL generator; gather has its own small kernel. References: elementwise.cpu.ts.
//
// Every buffer is bound as u32 words, whatever its dtype: f32 travels as its bit pattern (so copies
// and casts between floats are pure integer work, exact even for subnormals and NaN on drivers that
// flush them), i32/u32 as themselves, and bf16/f16 two per word (WebGPU has no bf16; f16 is stored
// the same way so no shader-f16 is needed to move it). Rounding to bf16/f16 is done in integer
// arithmetic, round to nearest even exactly as torch (src/tensor/dtype.ts), never by the driver.
//
// A kernel is specialised (as WGSL text, cached by the device) on the dtypes, on which operands are
// dense and on the rank of the strided ones after merging dims; shapes, strides and offsets travel
// in the uniform block. One thread per output element, except:
//   - vec4:  all operands dense or with a unit/zero innermost stride, 4-byte dtypes, 4-aligned:
//            one thread per 4 elements with 16-byte loads (2.2x the scalar kernel on lavapipe);
//   - pair:  a dense bf16/f16 output: one thread per output word, so no two threads share a word;
//   - otherwise a strided bf16/f16 output is written with atomicAnd/atomicOr on its half of a word
//     (the halves are disjoint, so two threads sharing a word cannot race).
// Operands larger than one binding (128 MiB on lavapipe) are processed in chunks when they are
// dense; a strided operand must fit in one binding.
import { type BinaryOp, type UnaryOp, type UnaryParams, type View, describeOp } from '../device/device.ts';
import { type GpuBinding, type GpuContext, Params, gridFor } from '../device/webgpu/context.ts';
import { DTYPE_BYTES, type DType, f32ToBf16Bits, f32ToF16Bits } from '../tensor/dtype.ts';
import { isContiguous, numel } from '../tensor/shape.ts';
import { checkGatherShapes, checkSameShape } from './elementwise.cpu.ts';

const WG = 256;

// ---- shared with reduce.ts: uniforms, bindings, helper WGSL ---------------------------------------

/** One 32-bit scalar of a uniform block: a single list makes both the WGSL struct and the data. */
export interface Field { name: string; type: 'u32' | 'i32' | 'f32'; value: number }

export function uniformWgsl(fields: Field[]): string {
  return `struct P {\n${fields.map((f) => `  ${f.name}: ${f.type},`).join('\n')}\n}\n@group(0) @binding(0) var<uniform> p: P;\n`;
}

export function uniformData(fields: Field[]): ArrayBuffer {
  const params = new Params();
  for (const f of fields) params[f.type](f.value);
  return params.toBuffer();
}

export const u32 = (name: string, value: number): Field => ({ name, type: 'u32', value: value >>> 0 });
export const f32 = (name: string, value: number): Field => ({ name, type: 'f32', value });

/**
 * Binds elements [first, end) of a view's buffer from an offset the adapter accepts; `shift` is the
 * element index the binding starts at, so the kernel addresses element e as e - shift.
 */
export function bindSpan(ctx: GpuContext, v: View, first: number, end: number): { binding: GpuBinding; shift: number } {
  const b = DTYPE_BYTES[v.dtype];
  const align = ctx.gpu.limits.minStorageBufferOffsetAlignment;
  const start = Math.floor((first * b) / align) * align;
  return { binding: ctx.bindRange(v, start, Math.max(end * b - start, 4)), shift: start / b };
}

/** How many units of `unitBytes` (rows, elements) one binding holds with room for alignment. */
export function unitsPerBinding(ctx: GpuContext, unitBytes: number): number {
  return Math.floor((ctx.limits.maxBindingBytes - ctx.gpu.limits.minStorageBufferOffsetAlignment) / unitBytes);
}

/** Flat index of the thread over a grid folded into 2-D by gridFor. */
const threadIndex = (wg: number) => `gid.x + gid.y * nwg.x * ${wg}u`;

/** WGSL helpers, included in a kernel only when it names them (dependents before dependencies). */
const HELPERS: { name: string; code: string }[] = [
  // Derivatives of the activations, as PyTorch's backward kernels compute them (silu_backward,
  // GeluBackward with approximate 'none' / 'tanh'; quick_gelu is autograd through x * sigmoid(1.702 x)).
  { name: 'silu_grad_', code: 'fn silu_grad_(x: f32) -> f32 { let s = sigmoid_(x); return s * (1.0 + x * (1.0 - s)); }' },
  { name: 'quick_gelu_grad_', code: 'fn quick_gelu_grad_(x: f32) -> f32 { let s = sigmoid_(1.702 * x); return s + 1.702 * x * s * (1.0 - s); }' },
  {
    name: 'gelu_erf_grad_',
    // cdf + x * pdf, pdf = exp(-x^2 / 2) / sqrt(2 pi)
    code: 'fn gelu_erf_grad_(x: f32) -> f32 { return 0.5 * (1.0 + erf_(x * 0.70710678118654752)) + x * 0.39894228040143268 * exp(-0.5 * x * x); }',
  },
  {
    name: 'gelu_tanh_grad_',
    code: `fn gelu_tanh_grad_(x: f32) -> f32 {
  let x2 = x * x;
  let t = tanh_(0.79788456080286536 * (x + 0.044715 * x2 * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * (0.79788456080286536 * (1.0 + 3.0 * 0.044715 * x2));
}`,
  },
  {
    name: 'pow_',
    // pow of a negative base is defined for integer exponents (sign from the exponent's parity),
    // and x^0 = 1 for every x, as in torch; WGSL's pow covers only positive bases.
    code: `fn pow_(a: f32, b: f32) -> f32 {
  if (b == 0.0) { return 1.0; }
  let r = pow(abs(a), b);
  if (a >= 0.0) { return r; }
  if (b != trunc(b)) { return nan_(); }
  return select(r, -r, trunc(b * 0.5) != b * 0.5);
}`,
  },
  {
    name: 'gelu_erf_',
    code: 'fn gelu_erf_(x: f32) -> f32 { return 0.5 * x * (1.0 + erf_(x * 0.70710678118654752)); }',
  },
  {
    name: 'erf_',
    // WGSL has no erf. fdlibm's erff (Sun Microsystems, freely redistributable): rational
    // approximations on four ranges of |x|, within 1 ulp of float32 (Abramowitz-Stegun 7.1.26
    // is only good to 1e-7 absolute, not enough for GELU's small values).
    code: `fn erf_(x: f32) -> f32 {
  let ax = abs(x);
  if (ax < 0.84375) {
    let z = x * x;
    let r = 1.2837916613e-1 + z * (-3.2504209876e-1 + z * (-2.8481749818e-2 + z * (-5.7702702470e-3 + z * -2.3763017452e-5)));
    let s = 1.0 + z * (3.9791721106e-1 + z * (6.5022252500e-2 + z * (5.0813062117e-3 + z * (1.3249473704e-4 + z * -3.9602282413e-6))));
    return x + x * (r / s);
  }
  if (ax < 1.25) {
    let s = ax - 1.0;
    let r = -2.3621185683e-3 + s * (4.1485610604e-1 + s * (-3.7220788002e-1 + s * (3.1834661961e-1 + s * (-1.1089469492e-1 + s * (3.5478305072e-2 + s * -2.1663755178e-3)))));
    let q = 1.0 + s * (1.0642088205e-1 + s * (5.4039794207e-1 + s * (7.1828655899e-2 + s * (1.2617121637e-1 + s * (1.3637083583e-2 + s * 1.1984500103e-2)))));
    return sign(x) * (8.4506291151e-1 + r / q);
  }
  if (ax >= 6.0) { return sign(x); }
  let s = 1.0 / (ax * ax);
  var r: f32;
  var q: f32;
  if (ax < 2.857142857) {
    r = -9.8649440333e-3 + s * (-6.9385856390e-1 + s * (-1.0558626175e1 + s * (-6.2375331879e1 + s * (-1.6239666748e2 + s * (-1.8460508728e2 + s * (-8.1287437439e1 + s * -9.8143291473e0))))));
    q = 1.0 + s * (1.9651271820e1 + s * (1.3765776062e2 + s * (4.3456588745e2 + s * (6.4538726807e2 + s * (4.2900814819e2 + s * (1.0863500214e2 + s * (6.5702495575e0 + s * -6.0424413532e-2)))))));
  } else {
    r = -9.8649431020e-3 + s * (-7.9928326607e-1 + s * (-1.7757955551e1 + s * (-1.6063638306e2 + s * (-6.3756646729e2 + s * (-1.0250950928e3 + s * -4.8351919556e2)))));
    q = 1.0 + s * (3.0338060379e1 + s * (3.2579251099e2 + s * (1.5367296143e3 + s * (3.1998581543e3 + s * (2.5530502930e3 + s * (4.7452853394e2 + s * -2.2440952301e1))))));
  }
  // exp(-x^2) as exp(-z^2) exp((z - x)(z + x)) with z = x cut to 12 mantissa bits: z^2 is exact.
  let z = bitcast<f32>(bitcast<u32>(ax) & 0xfffff000u);
  let e = exp(-z * z - 0.5625) * exp((z - ax) * (z + ax) + r / q);
  return sign(x) * (1.0 - e / ax);
}`,
  },
  {
    name: 'gelu_tanh_',
    code: 'fn gelu_tanh_(x: f32) -> f32 { return 0.5 * x * (1.0 + tanh_(0.79788456080286536 * (x + 0.044715 * x * x * x))); }',
  },
  {
    name: 'tanh_',
    // The builtin loses all relative precision near 0 on lavapipe (1e-2 at x = 1e-6) and some
    // drivers overflow exp for large |x|. Cephes' tanhf: an odd polynomial below 0.625 (1.4e-7
    // relative), 1 - 2/(exp(2|x|) + 1) above, with |x| capped at 20 where tanh is 1 in float32.
    code: `fn tanh_(x: f32) -> f32 {
  let z = min(abs(x), 20.0);
  let s = z * z;
  let small = ((((-5.70498872745e-3 * s + 2.06390887954e-2) * s - 5.37397155531e-2) * s + 1.33314422036e-1) * s - 3.33332819422e-1) * s * z + z;
  let large = 1.0 - 2.0 / (exp(2.0 * z) + 1.0);
  return sign(x) * select(large, small, z < 0.625);
}`,
  },
  { name: 'sigmoid_', code: 'fn sigmoid_(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }' },
  {
    name: 'inf_',
    // Infinity and NaN the compiler cannot fold at shader creation (constant ones are WGSL errors).
    code: 'var<private> INF_BITS: u32 = 0x7f800000u;\nfn inf_() -> f32 { return bitcast<f32>(INF_BITS); }',
  },
  {
    name: 'nan_',
    code: 'var<private> NAN_BITS: u32 = 0x7fc00000u;\nfn nan_() -> f32 { return bitcast<f32>(NAN_BITS); }',
  },
  { name: 'half_of', code: 'fn half_of(w: u32, e: u32) -> u32 { return (w >> ((e & 1u) * 16u)) & 0xffffu; }' },
  {
    name: 'f32_to_bf16',
    // Round to nearest even on the bits; every NaN becomes 0x7fc0, as in torch's c10::BFloat16.
    code: `fn f32_to_bf16(b: u32) -> u32 {
  if ((b & 0x7fffffffu) > 0x7f800000u) { return 0x7fc0u; }
  return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}`,
  },
  {
    name: 'f32_to_f16',
    // Round to nearest even, with subnormals, overflow to infinity and NaN kept (sign too).
    code: `fn f32_to_f16(b: u32) -> u32 {
  let sign = (b >> 16u) & 0x8000u;
  let ex = (b >> 23u) & 0xffu;
  let mant = b & 0x7fffffu;
  if (ex == 0xffu) { return sign | 0x7c00u | select(0u, 0x200u, mant != 0u); }
  let e = i32(ex) - 112;
  if (e >= 31) { return sign | 0x7c00u; }
  var m = mant;
  var shift = 13u;
  var base = u32(max(e, 0)) << 10u;
  if (e <= 0) {
    if (e < -10) { return sign; }
    m = mant | 0x800000u;
    shift = u32(14 - e);
    base = 0u;
  }
  let q = m >> shift;
  let rest = m & ((1u << shift) - 1u);
  let halfway = 1u << (shift - 1u);
  let up = rest > halfway || (rest == halfway && (q & 1u) == 1u);
  // A carry out of the mantissa correctly bumps the exponent (up to infinity).
  return sign | (base + q + select(0u, 1u, up));
}`,
  },
  {
    name: 'f16_to_f32',
    code: `fn f16_to_f32(h: u32) -> u32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) { return sign | 0x7f800000u | (m << 13u); }
  if (e != 0u) { return sign | ((e + 112u) << 23u) | (m << 13u); }
  if (m == 0u) { return sign; }
  let top = 31u - countLeadingZeros(m);
  return sign | ((top + 103u) << 23u) | ((m << (23u - top)) & 0x7fffffu);
}`,
  },
];

/** `code` preceded by the helpers it uses. */
export function withHelpers(code: string): string {
  let used = '';
  for (const h of HELPERS) {
    if (new RegExp(`\\b${h.name}\\(`).test(code + used)) used = `${h.code}\n${used}`;
  }
  return `${used}\n${code}`;
}

// ---- dtypes as seen by the generated code ---------------------------------------------------------

type GpuDType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u32';
const GPU_DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'u32'];
const is16 = (d: DType) => DTYPE_BYTES[d] === 2;
const isFloatGpu = (d: DType) => d === 'f32' || d === 'f16' || d === 'bf16';

/** WGSL type of a decoded element: floats as their float32 bit pattern. */
const valueType = (d: DType) => (d === 'i32' ? 'i32' : 'u32');

/** Decodes a stored element (a whole word, or the low 16 bits holding a half). */
function decode(d: DType, w: string): string {
  switch (d as GpuDType) {
    case 'i32': return `bitcast<i32>(${w})`;
    case 'bf16': return `(${w} << 16u)`;
    case 'f16': return `f16_to_f32(${w})`;
    default: return w;
  }
}

/** Encodes a value of `d`'s value type into the bits stored for it. */
function encode(d: DType, v: string): string {
  switch (d as GpuDType) {
    case 'i32': return `bitcast<u32>(${v})`;
    case 'bf16': return `f32_to_bf16(${v})`;
    case 'f16': return `f32_to_f16(${v})`;
    default: return v;
  }
}

/** Value conversion between dtypes as torch casts: floats to integers truncate toward zero. */
function convert(from: DType, to: DType, v: string): string {
  const kind = (d: DType) => (isFloatGpu(d) ? 'f' : d);
  const [a, b] = [kind(from), kind(to)];
  if (a === b) return v;
  if (b === 'f') return `bitcast<u32>(f32(${v}))`;
  if (a === 'f') return `${b}(bitcast<f32>(${v}))`;
  return `bitcast<${b}>(${v})`;
}

/** The float32 value of a decoded float element, for arithmetic. */
const asF32 = (d: DType, v: string) => (d === 'i32' || d === 'u32' ? `f32(${v})` : `bitcast<f32>(${v})`);

// ---- the generator --------------------------------------------------------------------------------

type Mode = 'scalar' | 'vec4' | 'pair';

/** How the kernel addresses one operand: dense (offset + logical index) or through strides. */
interface Operand {
  v: View;
  dense: boolean;
  /** Strides over the merged dims (strided operands only). */
  strides: number[];
  /** In vec4 mode: a strided operand whose innermost stride is 0, loaded once per 4 elements. */
  splat: boolean;
}

interface Layout { mode: Mode; dims: number[]; ops: Operand[] }

/**
 * Merges dims across the strided operands (dense ones index by the flat position), dropping
 * size-1 dims: a [B, L, D] bias broadcast of a [D] vector becomes [B*L, D] with strides [0, 1].
 */
function layout(views: View[]): Layout {
  const out = views.at(-1)!;
  for (const v of views) {
    if (!GPU_DTYPES.includes(v.dtype)) throw new Error(`dtype ${v.dtype} has no WebGPU kernel`);
    if (v.strides.some((s, d) => s < 0 && v.shape[d] !== 1) || v.offset < 0) throw new Error(`negative strides or offset are not supported ([${v.shape}] strides [${v.strides}] offset ${v.offset})`);
  }
  const ops: Operand[] = views.map((v) => ({ v, dense: isContiguous(v.shape, v.strides), strides: [], splat: false }));
  const strided = ops.filter((o) => !o.dense);
  const dims: number[] = [];
  out.shape.forEach((n, d) => {
    if (n === 1) return;
    if (dims.length > 0 && strided.every((o) => o.strides.at(-1) === o.v.strides[d]! * n)) {
      dims[dims.length - 1]! *= n;
      strided.forEach((o) => (o.strides[o.strides.length - 1] = o.v.strides[d]!));
    } else {
      dims.push(n);
      strided.forEach((o) => o.strides.push(o.v.strides[d]!));
    }
  });
  if (strided.length === 0) dims.length = 0;

  const n = numel(out.shape);
  const word = (o: Operand) => DTYPE_BYTES[o.v.dtype] === 4;
  const vec4Ok = (o: Operand) => {
    if (o.dense) return word(o) && o.v.offset % 4 === 0;
    const inner = o.strides.at(-1)!;
    if (inner === 0) return o !== ops.at(-1);
    return inner === 1 && word(o) && o.v.offset % 4 === 0 && o.strides.every((s, d) => d === o.strides.length - 1 || s % 4 === 0);
  };
  if (n % 4 === 0 && ops.at(-1)!.dense && (dims.length === 0 || dims.at(-1)! % 4 === 0) && ops.every(vec4Ok)) {
    ops.forEach((o) => (o.splat = !o.dense && o.strides.at(-1) === 0));
    return { mode: 'vec4', dims, ops };
  }
  return { mode: is16(out.dtype) && ops.at(-1)!.dense ? 'pair' : 'scalar', dims, ops };
}

/**
 * The uniform block: the chunk's thread count and logical range [base, end), the op's scalars, the
 * merged dims, then each operand's offset (relative to its binding) and strides.
 */
function ewFields(lay: Layout, extra: Field[], count = 0, base = 0, end = 0, rel: number[] = []): Field[] {
  const fields = [u32('count', count), u32('base', base), u32('end', end), ...extra, ...lay.dims.map((d, i) => u32(`d${i}`, d))];
  lay.ops.forEach((o, i) => fields.push(u32(`o${i}`, rel[i] ?? 0), ...o.strides.map((s, d) => u32(`s${i}_${d}`, s))));
  return fields;
}

/**
 * The kernel's WGSL. `body` is the body of `fn value(v0, v1, ...) -> u32`: it receives the decoded
 * inputs (floats as float32 bits) and returns the output's stored bits.
 */
function shader(lay: Layout, body: string, extra: Field[]): string {
  const { mode, dims, ops } = lay;
  const ins = ops.slice(0, -1), out = ops.at(-1)!;
  const k = ops.length - 1; // the output's operand number

  const vecIn = (o: Operand) => mode === 'vec4' && !o.splat;
  const decls = ins.map((o, i) => `@group(0) @binding(${i + 1}) var<storage, read> in${i}: array<${vecIn(o) ? 'vec4<u32>' : 'u32'}>;`);
  const outElem = mode === 'vec4' ? 'vec4<u32>' : mode === 'scalar' && is16(out.v.dtype) ? 'atomic<u32>' : 'u32';
  decls.push(`@group(0) @binding(${k + 1}) var<storage, read_write> out: array<${outElem}>;`);

  // Coordinates of logical index g over the merged dims, and each operand's element index.
  const coords = dims.length === 0 ? '' : [
    '  var r = g;',
    ...dims.slice(1).map((_, j) => {
      const d = dims.length - 1 - j;
      return `  let c${d} = r % p.d${d};\n  r = r / p.d${d};`;
    }),
    '  let c0 = r;',
  ].join('\n');
  const elem = (o: Operand, i: number) => (o.dense ? `p.o${i} + g` : [`p.o${i}`, ...o.strides.map((_, d) => `c${d} * p.s${i}_${d}`)].join(' + '));

  // Scalar loads, decoded: ld0(e), ld1(e), ...
  const loaders = ins.map((o, i) => {
    const w = is16(o.v.dtype) ? `half_of(in${i}[e >> 1u], e)` : `in${i}[e]`;
    return vecIn(o) ? '' : `fn ld${i}(e: u32) -> ${valueType(o.v.dtype)} { return ${decode(o.v.dtype, w)}; }`;
  });
  const params = ins.map((o, i) => `v${i}: ${valueType(o.v.dtype)}`).join(', ');
  const fn = (signature: string, ...lines: string[]) => `fn ${signature} {\n${lines.filter((l) => l).join('\n')}\n}\n`;
  let fns = loaders.filter((l) => l).map((l) => `${l}\n`).join('') + fn(`value(${params}) -> u32`, body);

  let main: string;
  if (mode === 'vec4') {
    const lanes = ['x', 'y', 'z', 'w'].map((c) => `value(${ins.map((o, i) => (o.splat ? `s${i}` : decode(o.v.dtype, `w${i}.${c}`))).join(', ')})`);
    const loads = ins.map((o, i) => (o.splat ? `  let s${i} = ld${i}(${elem(o, i)});` : `  let w${i} = in${i}[(${elem(o, i)}) >> 2u];`));
    fns += fn('at4(g: u32) -> vec4<u32>', coords, ...loads, `  return vec4<u32>(${lanes.join(', ')});`);
    main = `  let g = p.base + 4u * i;\n  out[(p.o${k} + g) >> 2u] = at4(g);`;
  } else {
    fns += fn('at(g: u32) -> u32', ins.every((o) => o.dense) ? '' : coords, `  return value(${ins.map((o, i) => `ld${i}(${elem(o, i)})`).join(', ')});`);
    if (mode === 'pair') {
      // g - base < end - base in wrapping u32 arithmetic: is g in [base, end)?
      main = `  let w = ((p.o${k} + p.base) >> 1u) + i;
  let g = 2u * w - p.o${k};
  let lo = g - p.base < p.end - p.base;
  let hi = g + 1u - p.base < p.end - p.base;
  var word = 0u;
  if (!(lo && hi)) { word = out[w]; }
  if (lo) { word = (word & 0xffff0000u) | at(g); }
  if (hi) { word = (word & 0xffffu) | (at(g + 1u) << 16u); }
  out[w] = word;`;
    } else {
      fns += fn('out_elem(g: u32) -> u32', out.dense ? '' : coords, `  return ${elem(out, k)};`);
      main = is16(out.v.dtype)
        ? `  let g = p.base + i;
  let e = out_elem(g);
  let sh = (e & 1u) * 16u;
  atomicAnd(&out[e >> 1u], ~(0xffffu << sh));
  atomicOr(&out[e >> 1u], at(g) << sh);`
        : '  let g = p.base + i;\n  out[out_elem(g)] = at(g);';
    }
  }
  return withHelpers(`${uniformWgsl(ewFields(lay, extra))}${decls.join('\n')}
${fns}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = ${threadIndex(WG)};
  if (i >= p.count) { return; }
${main}
}
`);
}

/**
 * Records an elementwise kernel over out's shape: out = value(inputs) (see `shader`). Dense
 * operands larger than one binding are processed in chunks of the flat index.
 */
function elementwise(ctx: GpuContext, label: string, inputs: View[], out: View, body: string, extra: Field[] = []): void {
  const n = numel(out.shape);
  if (n === 0) return;
  for (const v of inputs) {
    if (v.buf === out.buf) throw new Error(`an input shares the output's buffer; WebGPU cannot bind one buffer for reading and writing in one kernel`);
  }
  const lay = layout([...inputs, out]);
  const pipeline = ctx.pipeline(shader(lay, body, extra));
  const span = (o: Operand) => o.v.shape.reduce((s, d, i) => s + (d - 1) * o.v.strides[i]!, 0) + 1;
  for (const o of lay.ops.filter((x) => !x.dense)) {
    if (span(o) * DTYPE_BYTES[o.v.dtype] > unitsPerBinding(ctx, 1)) throw new Error(`a strided [${o.v.shape}]:${o.v.dtype} operand spans more than one binding (${ctx.limits.maxBindingBytes} bytes)`);
  }
  const maxBytes = Math.max(...lay.ops.filter((o) => o.dense).map((o) => DTYPE_BYTES[o.v.dtype]), 1);
  const chunk = n <= unitsPerBinding(ctx, maxBytes) ? n : Math.floor(unitsPerBinding(ctx, maxBytes) / 1024) * 1024;
  for (let g0 = 0; g0 < n; g0 += chunk) {
    const g1 = Math.min(n, g0 + chunk);
    const spans = lay.ops.map((o) => (o.dense ? bindSpan(ctx, o.v, o.v.offset + g0, o.v.offset + g1) : bindSpan(ctx, o.v, o.v.offset, o.v.offset + span(o))));
    const rel = spans.map((s, i) => lay.ops[i]!.v.offset - s.shift);
    const outRel = rel.at(-1)!;
    const count = lay.mode === 'vec4' ? (g1 - g0) / 4 : lay.mode === 'pair' ? Math.floor((outRel + g1 - 1) / 2) - Math.floor((outRel + g0) / 2) + 1 : g1 - g0;
    const fields = ewFields(lay, extra, count, g0, g1, rel);
    ctx.dispatch(label, pipeline, uniformData(fields), spans.map((s) => s.binding), gridFor(count, WG, ctx.limits.maxWorkgroupsPerDim));
  }
}

function requireFloat(op: string, views: View[]): void {
  const bad = views.find((v) => !isFloatGpu(v.dtype));
  if (bad) throw new Error(`${op} computes on floats; got ${bad.dtype}`);
}

// ---- launchers ------------------------------------------------------------------------------------

/** out[...] = value, rounded to out's dtype as the CPU reference does.  out: any shape */
export function gpuFill(ctx: GpuContext, out: View, value: number): void {
  const bits = new Uint32Array(1);
  switch (out.dtype) {
    case 'f32': new Float32Array(bits.buffer)[0] = value; break;
    case 'bf16': bits[0] = f32ToBf16Bits(Math.fround(value)); break;
    case 'f16': bits[0] = f32ToF16Bits(Math.fround(value)); break;
    default: bits[0] = Math.trunc(value) >>> 0;
  }
  elementwise(ctx, describeOp('fill', [], out), [], out, '  return p.value;', [u32('value', bits[0]!)]);
}

/** out = src cast to out's dtype (bf16/f16 round to nearest even, floats to integers truncate).  src, out: same shape */
export function gpuCopy(ctx: GpuContext, src: View, out: View): void {
  checkSameShape(out, { src });
  elementwise(ctx, describeOp('copy', [src], out), [src], out, `  return ${encode(out.dtype, convert(src.dtype, out.dtype, 'v0'))};`);
}

/** WGSL of each unary op on the float32 `x`. */
const UNARY: Record<UnaryOp, string> = {
  neg: '-x', abs: 'abs(x)', exp: 'exp(x)', log: 'log(x)', sqrt: 'sqrt(x)', rsqrt: 'inverseSqrt(x)',
  square: 'x * x', recip: '1.0 / x', tanh: 'tanh_(x)', sigmoid: 'sigmoid_(x)', relu: 'max(x, 0.0)',
  silu: 'x * sigmoid_(x)', gelu_erf: 'gelu_erf_(x)', gelu_tanh: 'gelu_tanh_(x)', quick_gelu: 'x * sigmoid_(1.702 * x)',
  scale: 'p.alpha * x', clamp: 'min(max(x, p.lo), p.hi)',
};

/** out = op(x), computed in float32.  x, out: same shape, float dtypes */
export function gpuUnary(ctx: GpuContext, op: UnaryOp, x: View, out: View, p: UnaryParams = {}): void {
  checkSameShape(out, { x });
  requireFloat(op, [x, out]);
  const body = `  let x = ${asF32(x.dtype, 'v0')};\n  return ${encode(out.dtype, `bitcast<u32>(${UNARY[op]})`)};`;
  elementwise(ctx, describeOp(`unary ${op}`, [x], out), [x], out, body, unaryExtra(op, p));
}

/** The uniform scalars of a unary op (forward and backward): scale's alpha, clamp's lo and hi. */
function unaryExtra(op: UnaryOp, p: UnaryParams): Field[] {
  const need = (name: 'alpha' | 'lo' | 'hi') => {
    const v = p[name];
    if (v === undefined) throw new Error(`${op} needs parameter '${name}'`);
    return f32(name, v);
  };
  return op === 'scale' ? [need('alpha')] : op === 'clamp' ? [need('lo'), need('hi')] : [];
}

/**
 * WGSL of dx = dy * op'(x) for each unary op, from the float32 `x` and `dy`; `y` is the forward
 * value op(x) where PyTorch's backward formula uses the result (exp, sqrt, tanh, ...). relu'(0) and
 * abs'(0) are 0; clamp passes the gradient where lo <= x <= hi, both ends included (torch's
 * clamp_backward), and 0 elsewhere even for an infinite dy.
 */
const UNARY_GRAD: Record<UnaryOp, string> = {
  neg: '-dy', abs: 'dy * sign(x)', exp: 'dy * y', log: 'dy / x', sqrt: 'dy / (2.0 * y)', rsqrt: '-0.5 * dy * (y * y * y)',
  square: 'dy * (2.0 * x)', recip: '-dy * (y * y)', tanh: 'dy * (1.0 - y * y)', sigmoid: 'dy * (1.0 - y) * y',
  relu: 'select(0.0, dy, x > 0.0)', silu: 'dy * silu_grad_(x)', gelu_erf: 'dy * gelu_erf_grad_(x)',
  gelu_tanh: 'dy * gelu_tanh_grad_(x)', quick_gelu: 'dy * quick_gelu_grad_(x)', scale: 'dy * p.alpha',
  clamp: 'select(0.0, dy, x >= p.lo && x <= p.hi)',
};

/** dx = dy * op'(x), computed in float32 (same params as the forward).  x, dy, dx: same shape, float dtypes (zero strides broadcast) */
export function gpuUnaryBackward(ctx: GpuContext, op: UnaryOp, x: View, dy: View, dx: View, p: UnaryParams = {}): void {
  checkSameShape(dx, { x, dy });
  requireFloat(op, [x, dy, dx]);
  const grad = UNARY_GRAD[op];
  const body = [
    `  let x = ${asF32(x.dtype, 'v0')};`,
    `  let dy = ${asF32(dy.dtype, 'v1')};`,
    ...(/\by\b/.test(grad) ? [`  let y = ${UNARY[op]};`] : []),
    `  return ${encode(dx.dtype, `bitcast<u32>(${grad})`)};`,
  ].join('\n');
  elementwise(ctx, describeOp(`unaryBackward ${op}`, [x, dy], dx), [x, dy], dx, body, unaryExtra(op, p));
}

const BINARY: Record<BinaryOp, string> = { add: 'a + b', sub: 'a - b', mul: 'a * b', div: 'a / b', max: 'max(a, b)', min: 'min(a, b)', pow: 'pow_(a, b)' };

/** out = a op b, computed in float32.  a, b, out: same shape (zero strides broadcast) */
export function gpuBinary(ctx: GpuContext, op: BinaryOp, a: View, b: View, out: View): void {
  checkSameShape(out, { a, b });
  requireFloat(op, [a, b, out]);
  const body = `  let a = ${asF32(a.dtype, 'v0')};\n  let b = ${asF32(b.dtype, 'v1')};\n  return ${encode(out.dtype, `bitcast<u32>(${BINARY[op]})`)};`;
  elementwise(ctx, describeOp(`binary ${op}`, [a, b], out), [a, b], out, body);
}

/** out = cond != 0 ? a : b.  cond, a, b, out: same shape (zero strides broadcast) */
export function gpuWhere(ctx: GpuContext, cond: View, a: View, b: View, out: View): void {
  checkSameShape(out, { cond, a, b });
  requireFloat('where', [cond, a, b, out]);
  const pick = `select(${convert(b.dtype, out.dtype, 'v2')}, ${convert(a.dtype, out.dtype, 'v1')}, ${asF32(cond.dtype, 'v0')} != 0.0)`;
  elementwise(ctx, describeOp('where', [cond, a, b], out), [cond, a, b], out, `  return ${encode(out.dtype, pick)};`);
}

/**
 * out[r, :] = table[index[r], :]. An index outside [0, V) writes a row of NaN (the CPU reference
 * throws): a kernel cannot throw, and clamping would hide the bug. Tables larger than one binding
 * are bound in slices of rows, one dispatch each.  table: [V, D] f32, index: [N] i32, out: [N, D] f32
 */
export function gpuGather(ctx: GpuContext, table: View, index: View, out: View): void {
  checkGatherShapes(table, index, out);
  if (table.dtype !== 'f32' || index.dtype !== 'i32' || out.dtype !== 'f32') throw new Error(`gather wants an f32 table, i32 index and f32 out; got ${table.dtype}, ${index.dtype}, ${out.dtype}`);
  for (const [name, v] of Object.entries({ table, index, out })) {
    if (!isContiguous(v.shape, v.strides)) throw new Error(`gather wants a dense ${name}; got strides [${v.strides}]`);
  }
  const [rows, d] = table.shape as [number, number];
  const total = numel(out.shape);
  if (total === 0) return;
  const fields = ['total', 'd', 'rows', 'v0', 'v1', 'first', 'to', 'io', 'oo'].map((n) => u32(n, 0));
  const pipeline = ctx.pipeline(withHelpers(`${uniformWgsl(fields)}
@group(0) @binding(1) var<storage, read> tbl: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = ${threadIndex(WG)};
  if (i >= p.total) { return; }
  let row = idx[p.io + i / p.d];
  if (row < 0 || u32(row) >= p.rows) {
    if (p.first == 1u) { out[p.oo + i] = nan_(); }
  } else if (u32(row) >= p.v0 && u32(row) < p.v1) {
    out[p.oo + i] = tbl[p.to + (u32(row) - p.v0) * p.d + i % p.d];
  }
}
`));
  const ib = bindSpan(ctx, index, index.offset, index.offset + index.shape[0]!);
  const ob = bindSpan(ctx, out, out.offset, out.offset + total);
  const slice = Math.max(1, unitsPerBinding(ctx, Math.max(d, 1) * 4));
  for (let v0 = 0; v0 < Math.max(rows, 1); v0 += slice) {
    const v1 = Math.min(rows, v0 + slice);
    const tb = bindSpan(ctx, table, table.offset + v0 * d, table.offset + v1 * d);
    const values = [total, d, rows, v0, v1, v0 === 0 ? 1 : 0, table.offset + v0 * d - tb.shift, index.offset - ib.shift, out.offset - ob.shift];
    ctx.dispatch(describeOp('gather', [table, index], out), pipeline, uniformData(fields.map((f, i) => u32(f.name, values[i]!))), [tb.binding, ib.binding, ob.binding], gridFor(total, WG, ctx.limits.maxWorkgroupsPerDim));
  }
}
