// Conformance cases for attention and rope, forward and backward: odd and unequal lengths (Lq < Lk
// and Lq > Lk under the top-left causal mask), the head widths in use (16 in tests, 64, 80 for CLIP
// ViT-H, 128 for FLUX; 1, 2 and 4 lanes per row), widths that are not a multiple of 4 (the scalar
// path), sequences long enough for many workgroups and key tiles, peaked softmaxes, and q/k/v
// sliced out of a fused qkv tensor with the output (for the backward also dout, and dq/dk/dv in one
// fused gradient) in a [B, L, H, Dh] layout. Each forward head width but 16 is tested with lse
// only, and the backward skips Dh = 80, to keep the number of pipelines (and compile time) down.
import type { Init, InputSpec, OpCase } from '../device/conformance.ts';
import type { View } from '../device/device.ts';
import { DTYPE_BYTES } from '../tensor/dtype.ts';
import { contiguousStrides, numel } from '../tensor/shape.ts';

interface AttentionCase {
  b: number;
  h: number;
  lq: number;
  lk: number;
  dh: number;
  causal?: boolean;
  /** Defaults to 1/sqrt(Dh), as PyTorch. */
  scale?: number;
  lse?: boolean;
  init?: Init;
  /** q, k, v are slices of one [B, L, 3, H, Dh] tensor and out is stored [B, L, H, Dh] (needs lq = lk). */
  fusedQkv?: boolean;
  tol?: OpCase['tol'];
  note?: string;
}

/** The strides of B, H, L, Dh of a slice of a fused [B, L, n, H, Dh] tensor. */
const fusedStrides = (c: AttentionCase, n: number) => [c.lk * n * c.h * c.dh, c.dh, n * c.h * c.dh, 1];

/** q, k, v: separate tensors, or the slices of one fused [B, L, 3, H, Dh] tensor. */
function qkvInputs(c: AttentionCase): InputSpec[] {
  const { b, h, lq, lk, dh } = c;
  if (!c.fusedQkv) return [{ shape: [b, h, lq, dh], init: c.init }, { shape: [b, h, lk, dh], init: c.init }, { shape: [b, h, lk, dh], init: c.init }];
  return [0, 1, 2].map((which) => ({
    shape: [b, h, lk, dh], init: c.init,
    strided: { strides: fusedStrides(c, 3), offset: which * h * dh, storage: b * lk * 3 * h * dh },
  }));
}

function attention(c: AttentionCase): OpCase {
  const { b, h, lq, lk, dh } = c;
  const scale = c.scale ?? 1 / Math.sqrt(dh);
  const qShape = [b, h, lq, dh], kShape = [b, h, lk, dh];
  const inputs = qkvInputs(c);
  const outputs = [{ shape: c.fusedQkv ? [b, lq, h, dh] : qShape }, ...(c.lse ? [{ shape: [b, h, lq] }] : [])];
  const flags = [c.causal && 'causal', c.scale !== undefined && `scale=${scale}`, c.lse && 'lse', c.fusedQkv && 'fused qkv, out [B,L,H,Dh]', c.note];
  return {
    op: 'attention',
    name: `attention q[${qShape}] k[${kShape}] ${flags.filter(Boolean).join(' ')}`.trim(),
    inputs,
    outputs,
    tol: c.tol,
    run: (dev, [q, k, v], [out, lse]) => {
      // A [B, L, H, Dh] buffer seen as [B, H, L, Dh].
      const o = c.fusedQkv ? { ...out!, shape: qShape, strides: [lq * h * dh, dh, h * dh, 1] } : out!;
      dev.attention(q!, k!, v!, o, { scale, causal: c.causal }, lse ?? null);
    },
  };
}

/**
 * attentionBackward on the device's own forward: inputs q, k, v, dout; the case runs attention for
 * out and lse (realistic ones: random lse values would make P meaningless), then the backward;
 * outputs dq, dk, dv. With fusedQkv, dout and out are [B, L, H, Dh] and dq, dk, dv are written
 * into one fused [B, L, 3, H, Dh] gradient (one output).
 */
function attentionBackward(c: AttentionCase): OpCase {
  const { b, h, lq, lk, dh } = c;
  const scale = c.scale ?? 1 / Math.sqrt(dh);
  const qShape = [b, h, lq, dh], kShape = [b, h, lk, dh];
  const blhd = { strides: fusedStrides(c, 1), offset: 0, storage: b * lq * h * dh };
  const flags = [c.causal && 'causal', c.scale !== undefined && `scale=${scale}`, c.fusedQkv && 'fused qkv and dqkv, out and dout [B,L,H,Dh]', c.note];
  return {
    op: 'attentionBackward',
    name: `attentionBackward q[${qShape}] k[${kShape}] ${flags.filter(Boolean).join(' ')}`.trim(),
    inputs: [...qkvInputs(c), c.fusedQkv ? { shape: qShape, strided: blhd } : { shape: qShape }],
    outputs: c.fusedQkv ? [{ shape: [b, lk, 3, h, dh] }] : [{ shape: qShape }, { shape: kShape }, { shape: kShape }],
    tol: c.tol,
    run: (dev, [q, k, v, dout], outs) => {
      const temp = (shape: number[], strides = contiguousStrides(shape)): View => ({ buf: dev.alloc(numel(shape) * DTYPE_BYTES[q!.dtype]), dtype: q!.dtype, shape, strides, offset: 0 });
      const out = c.fusedQkv ? temp(qShape, blhd.strides) : temp(qShape);
      const lse = temp([b, h, lq]);
      const p = { scale, causal: c.causal };
      dev.attention(q!, k!, v!, out, p, lse);
      const [dq, dk, dv] = c.fusedQkv ? [0, 1, 2].map((which) => ({ ...outs[0]!, shape: kShape, strides: fusedStrides(c, 3), offset: which * h * dh })) : outs;
      dev.attentionBackward(q!, k!, v!, out, lse, dout!, dq!, dk!, dv!, p);
      dev.free(out.buf);
      dev.free(lse.buf);
    },
  };
}

function rope(b: number, h: number, l: number, dh: number, backward = false): OpCase {
  const op = backward ? 'ropeBackward' : 'rope';
  return {
    op,
    name: `${op} ${backward ? 'dy' : 'x'}[${b},${h},${l},${dh}]`,
    // Random cos and sin: the op does not need them to form rotations, and random ones catch swaps.
    inputs: [{ shape: [b, h, l, dh] }, { shape: [l, dh] }, { shape: [l, dh] }],
    outputs: [{ shape: [b, h, l, dh] }],
    run: (dev, [x, cos, sin], [out]) => (backward ? dev.ropeBackward(x!, cos!, sin!, out!) : dev.rope(x!, cos!, sin!, out!)),
  };
}

export const cases: OpCase[] = [
  attention({ b: 1, h: 1, lq: 7, lk: 7, dh: 16 }),
  attention({ b: 1, h: 1, lq: 7, lk: 7, dh: 16, causal: true, lse: true }),
  attention({ b: 2, h: 3, lq: 7, lk: 33, dh: 16, causal: true, lse: true, note: 'Lq < Lk' }),
  attention({ b: 1, h: 2, lq: 33, lk: 7, dh: 16, causal: true, lse: true, note: 'Lq > Lk' }),
  attention({ b: 2, h: 1, lq: 1, lk: 1, dh: 16, lse: true }),
  attention({ b: 1, h: 2, lq: 20, lk: 45, dh: 80, scale: 0.3, lse: true }),
  attention({ b: 1, h: 2, lq: 37, lk: 37, dh: 128, causal: true, lse: true }),
  attention({ b: 1, h: 2, lq: 130, lk: 300, dh: 64, lse: true }),
  attention({ b: 1, h: 1, lq: 600, lk: 600, dh: 64, causal: true, lse: true }),
  attention({ b: 1, h: 2, lq: 9, lk: 11, dh: 6, causal: true, lse: true, note: 'Dh not a multiple of 4' }),
  attention({ b: 2, h: 3, lq: 17, lk: 17, dh: 16, lse: true, fusedQkv: true }),
  attention({ b: 2, h: 3, lq: 17, lk: 17, dh: 18, causal: true, lse: true, fusedQkv: true, note: 'Dh not a multiple of 4' }),
  // Scores spread over about +-100: exp overflows f32 without the running max.
  attention({ b: 1, h: 1, lq: 40, lk: 70, dh: 16, scale: 1, init: { kind: 'normal', scale: 3 }, lse: true, note: 'peaked' }),
  rope(1, 1, 1, 2),
  rope(2, 3, 7, 16),
  rope(1, 4, 33, 128),
  rope(2, 24, 50, 128),
  attentionBackward({ b: 1, h: 1, lq: 7, lk: 7, dh: 16 }),
  attentionBackward({ b: 1, h: 1, lq: 7, lk: 7, dh: 16, causal: true }),
  attentionBackward({ b: 2, h: 3, lq: 7, lk: 33, dh: 16, causal: true, note: 'Lq < Lk: keys no query sees' }),
  attentionBackward({ b: 1, h: 2, lq: 33, lk: 7, dh: 16, causal: true, note: 'Lq > Lk' }),
  attentionBackward({ b: 2, h: 1, lq: 1, lk: 1, dh: 16 }),
  attentionBackward({ b: 1, h: 2, lq: 20, lk: 45, dh: 64, scale: 0.3 }),
  attentionBackward({ b: 1, h: 2, lq: 37, lk: 37, dh: 128, causal: true }),
  attentionBackward({ b: 1, h: 2, lq: 45, lk: 21, dh: 128 }),
  attentionBackward({ b: 1, h: 1, lq: 300, lk: 300, dh: 64, causal: true }),
  attentionBackward({ b: 1, h: 1, lq: 150, lk: 310, dh: 64 }),
  attentionBackward({ b: 1, h: 2, lq: 9, lk: 11, dh: 6, causal: true, note: 'Dh not a multiple of 4' }),
  attentionBackward({ b: 2, h: 3, lq: 17, lk: 17, dh: 16, fusedQkv: true }),
  attentionBackward({ b: 2, h: 3, lq: 17, lk: 17, dh: 18, causal: true, fusedQkv: true, note: 'Dh not a multiple of 4' }),
  // Scores of up to ~100 (~144 in the kernels' base 2): P = exp2(s - lse) inherits their f32 rounding
  // (ulp(144) = 1.5e-5) as a relative error; the CPU backend in f32 measured 1.9e-6 from rounding
  // out and lse alone, WebGPU 7.5e-6.
  attentionBackward({ b: 1, h: 1, lq: 40, lk: 70, dh: 16, scale: 1, init: { kind: 'normal', scale: 3 }, tol: { f32: 3e-5 }, note: 'peaked' }),
  rope(1, 1, 1, 2, true),
  rope(2, 3, 7, 16, true),
  rope(2, 24, 50, 128, true),
];
