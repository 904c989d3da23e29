// Reference 2-D convolution and nearest-neighbour upsampling: plain loops in float64 over any strided
// views (torch.nn.functional.conv2d with zero padding, and F.interpolate(scale_factor=2, 'nearest')).
import type { Conv2dParams } from '../device/device.ts';
import { type HostView, set, size, toArray } from './reference.ts';

/** Output size of one spatial dim: floor((n + 2 pad - k) / stride) + 1. */
export function convOutSize(n: number, k: number, stride: number, pad: number): number {
  return Math.floor((n + 2 * pad - k) / stride) + 1;
}

/**
 * Checks conv2d operand shapes and parameters; returns the sizes. Shared by the reference and the
 * WebGPU launcher so both reject the same calls with the same message.
 */
export function conv2dShapes(x: { shape: readonly number[] }, w: { shape: readonly number[] }, bias: { shape: readonly number[] } | null,
  out: { shape: readonly number[] }, p: Conv2dParams) {
  const str = (s: readonly number[]) => `[${s.join(',')}]`;
  if (x.shape.length !== 4 || w.shape.length !== 4 || out.shape.length !== 4) {
    throw new Error(`expected x [B,Cin,Hh,Ww], w [Cout,Cin,kh,kw], out [B,Cout,Ho,Wo]; got x ${str(x.shape)}, w ${str(w.shape)}, out ${str(out.shape)}`);
  }
  const [b, cin, h, wd] = x.shape as [number, number, number, number];
  const [cout, cin2, kh, kw] = w.shape as [number, number, number, number];
  const [sh, sw] = p.stride;
  const [ph, pw] = p.padding;
  if (![sh, sw].every((s) => Number.isInteger(s) && s >= 1) || ![ph, pw].every((q) => Number.isInteger(q) && q >= 0)) {
    throw new Error(`stride [${p.stride}] must be integers >= 1 and padding [${p.padding}] integers >= 0`);
  }
  if (cin !== cin2) throw new Error(`x ${str(x.shape)} has ${cin} input channels but w ${str(w.shape)} expects ${cin2}`);
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== cout)) throw new Error(`bias ${str(bias.shape)} should be [${cout}]`);
  const ho = convOutSize(h, kh, sh, ph), wo = convOutSize(wd, kw, sw, pw);
  if (ho < 1 || wo < 1) throw new Error(`kernel ${kh}x${kw} does not fit x ${str(x.shape)} with padding [${p.padding}]`);
  const want = [b, cout, ho, wo];
  if (!want.every((d, i) => d === out.shape[i])) throw new Error(`out ${str(out.shape)} should be ${str(want)}`);
  return { b, cin, h, w: wd, cout, kh, kw, ho, wo, sh, sw, ph, pw };
}

/** out = conv2d(x, w) + bias. x: [B,Cin,Hh,Ww], w: [Cout,Cin,kh,kw], bias: [Cout] or null, out: [B,Cout,Ho,Wo]. */
export function refConv2d(x: HostView, w: HostView, bias: HostView | null, out: HostView, p: Conv2dParams): void {
  const s = conv2dShapes(x, w, bias, out, p);
  const xs = toArray(x), ws = toArray(w); // logical row-major copies, so the loops can index directly
  const bs = bias ? toArray(bias) : null;
  for (let b = 0; b < s.b; b++) {
    for (let co = 0; co < s.cout; co++) {
      for (let oy = 0; oy < s.ho; oy++) {
        for (let ox = 0; ox < s.wo; ox++) {
          let acc = bs ? bs[co]! : 0;
          for (let ci = 0; ci < s.cin; ci++) {
            for (let ky = 0; ky < s.kh; ky++) {
              const iy = oy * s.sh - s.ph + ky;
              if (iy < 0 || iy >= s.h) continue; // zero padding
              for (let kx = 0; kx < s.kw; kx++) {
                const ix = ox * s.sw - s.pw + kx;
                if (ix < 0 || ix >= s.w) continue;
                acc += xs[((b * s.cin + ci) * s.h + iy) * s.w + ix]! * ws[((co * s.cin + ci) * s.kh + ky) * s.kw + kx]!;
              }
            }
          }
          set(out, ((b * s.cout + co) * s.ho + oy) * s.wo + ox, acc);
        }
      }
    }
  }
}

/** Checks upsampleNearest2x shapes: x [B,C,Hh,Ww] -> out [B,C,2Hh,2Ww]. */
export function upsampleShapes(x: { shape: readonly number[] }, out: { shape: readonly number[] }) {
  const [b, c, h, w] = x.shape as [number, number, number, number];
  if (x.shape.length !== 4 || out.shape.length !== 4 || out.shape[0] !== b || out.shape[1] !== c || out.shape[2] !== 2 * h || out.shape[3] !== 2 * w) {
    throw new Error(`x [${x.shape.join(',')}] -> out [${out.shape.join(',')}], want out [${b},${c},${2 * h},${2 * w}]`);
  }
  return { b, c, h, w };
}

/** out[b,c,y,x] = x[b,c,floor(y/2),floor(x/2)]. x: [B,C,Hh,Ww], out: [B,C,2Hh,2Ww]. */
export function refUpsampleNearest2x(x: HostView, out: HostView): void {
  const s = upsampleShapes(x, out);
  const xs = toArray(x);
  const n = size(out);
  for (let i = 0; i < n; i++) {
    const ox = i % (2 * s.w), oy = Math.floor(i / (2 * s.w)) % (2 * s.h), bc = Math.floor(i / (4 * s.w * s.h));
    set(out, i, xs[(bc * s.h + (oy >> 1)) * s.w + (ox >> 1)]!);
  }
}
