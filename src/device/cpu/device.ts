// The CPU reference backend: every op is a plain loop (src/kernels/*.cpu.ts) computing in float64
// and rounding once when it stores. It is the oracle every other backend is checked against, holds
// f64 tensors for finite differences, and runs tiny models end to end.
import { DTYPE_BYTES, type DType, hostArrayFromBytes } from '../../tensor/dtype.ts';
import {
  type AdamWParams, type AttentionParams, type BinaryOp, type Conv2dParams, type Device, type DeviceBuffer, type DeviceCaps,
  DeviceError, type MatmulParams, type MemoryStats, type OpName, type ReduceOp, type UnaryOp,
  type UnaryParams, UnsupportedOpError, type View, describeOp,
} from '../device.ts';
import type { HostView } from '../../kernels/reference.ts';
import * as elementwise from '../../kernels/elementwise.cpu.ts';
import * as reduce from '../../kernels/reduce.cpu.ts';
import * as norm from '../../kernels/norm.cpu.ts';
import * as groupnorm from '../../kernels/groupnorm.cpu.ts';
import * as matmul from '../../kernels/matmul.cpu.ts';
import * as attention from '../../kernels/attention.cpu.ts';
import * as conv from '../../kernels/conv.cpu.ts';
import * as optim from '../../kernels/optim.cpu.ts';

class CpuBuffer implements DeviceBuffer {
  freed = false;
  constructor(readonly device: CpuDevice, readonly byteLength: number, readonly bytes: Uint8Array) {}
}

const FLOATS: readonly DType[] = ['f32', 'f64'];

export class CpuDevice implements Device {
  readonly kind = 'cpu' as const;
  readonly name = 'cpu (TypeScript reference)';
  readonly caps: DeviceCaps = {
    features: new Set(),
    dtypes: new Set<DType>(['f32', 'f64', 'f16', 'bf16', 'i32', 'u32']),
    maxBufferBytes: 2 ** 31 - 1,
    maxBindingBytes: 2 ** 31 - 1,
  };
  private live = 0;
  private liveCount = 0;
  private peak = 0;

  alloc(byteLength: number): DeviceBuffer {
    // 8-byte rounding keeps every dtype's typed-array view aligned.
    const buf = new CpuBuffer(this, byteLength, new Uint8Array(Math.ceil(byteLength / 8) * 8));
    this.live += byteLength;
    this.liveCount++;
    this.peak = Math.max(this.peak, this.live);
    return buf;
  }

  free(buf: DeviceBuffer): void {
    const b = this.own(buf);
    if (b.freed) throw new DeviceError('cpu: buffer freed twice');
    b.freed = true;
    this.live -= b.byteLength;
    this.liveCount--;
  }

  write(buf: DeviceBuffer, byteOffset: number, data: ArrayBufferView): void {
    const b = this.own(buf);
    if (byteOffset + data.byteLength > b.byteLength) throw new DeviceError(`write of ${data.byteLength} bytes at ${byteOffset} overruns a ${b.byteLength}-byte buffer`);
    b.bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), byteOffset);
  }

  async read(buf: DeviceBuffer, byteOffset: number, byteLength: number): Promise<Uint8Array> {
    return this.own(buf).bytes.slice(byteOffset, byteOffset + byteLength);
  }

  async sync(): Promise<void> {}

  memory(): MemoryStats {
    return { liveBytes: this.live, liveBuffers: this.liveCount, peakBytes: this.peak, pooledBytes: 0 };
  }

  resetPeak(): void {
    this.peak = this.live;
  }

  destroy(): void {}

  supportsOp(op: OpName, dtypes: readonly DType[]): boolean {
    switch (op) {
      case 'fill': case 'copy': return true;
      case 'gather': return dtypes[1] === 'i32' && FLOATS.includes(dtypes[0]!) && dtypes[2] === dtypes[0];
      // bf16 operands (weights stored as checkpoints ship them, autocast's compute copies) with a float output.
      case 'matmul': return FLOATS.includes(dtypes.at(-1)!) && dtypes.slice(0, -1).every((d) => FLOATS.includes(d) || d === 'bf16');
      default: return dtypes.every((d) => FLOATS.includes(d));
    }
  }

  async time(fn: () => void): Promise<number> {
    const t0 = performance.now();
    fn();
    return performance.now() - t0;
  }

  fill(out: View, value: number): void { this.op('fill', [], out, () => elementwise.refFill(this.host(out), value)); }
  copy(src: View, out: View): void { this.op('copy', [src], out, () => elementwise.refCopy(this.host(src), this.host(out))); }
  unary(op: UnaryOp, x: View, out: View, p: UnaryParams = {}): void {
    this.op('unary', [x], out, () => elementwise.refUnary(op, this.host(x), this.host(out), p));
  }
  binary(op: BinaryOp, a: View, b: View, out: View): void {
    this.op('binary', [a, b], out, () => elementwise.refBinary(op, this.host(a), this.host(b), this.host(out)));
  }
  where(cond: View, a: View, b: View, out: View): void {
    this.op('where', [cond, a, b], out, () => elementwise.refWhere(this.host(cond), this.host(a), this.host(b), this.host(out)));
  }
  gather(table: View, index: View, out: View): void {
    this.op('gather', [table, index], out, () => elementwise.refGather(this.host(table), this.host(index), this.host(out)));
  }
  reduce(op: ReduceOp, x: View, out: View, p: { outer: number; n: number; inner: number; correction?: number }): void {
    this.op('reduce', [x], out, () => reduce.refReduce(op, this.host(x), this.host(out), p));
  }
  softmax(x: View, out: View): void { this.op('softmax', [x], out, () => reduce.refSoftmax(this.host(x), this.host(out))); }
  layerNorm(x: View, weight: View | null, bias: View | null, out: View, p: { eps: number }): void {
    this.op('layerNorm', [x, weight, bias], out, () => norm.refLayerNorm(this.host(x), this.hostOrNull(weight), this.hostOrNull(bias), this.host(out), p));
  }
  rmsNorm(x: View, weight: View | null, out: View, p: { eps: number }): void {
    this.op('rmsNorm', [x, weight], out, () => norm.refRmsNorm(this.host(x), this.hostOrNull(weight), this.host(out), p));
  }
  groupNorm(x: View, weight: View | null, bias: View | null, out: View, p: { groups: number; eps: number }): void {
    this.op('groupNorm', [x, weight, bias], out, () => groupnorm.refGroupNorm(this.host(x), this.hostOrNull(weight), this.hostOrNull(bias), this.host(out), p));
  }
  matmul(a: View, b: View, out: View, p: MatmulParams = {}): void {
    this.op('matmul', [a, b, p.bias], out, () => matmul.refMatmul(this.host(a), this.host(b), this.host(out), { ...p, bias: this.hostOrNull(p.bias ?? null) }));
  }
  attention(q: View, k: View, v: View, out: View, p: AttentionParams, lse: View | null = null): void {
    this.op('attention', [q, k, v], out, () => attention.refAttention(this.host(q), this.host(k), this.host(v), this.host(out), p, this.hostOrNull(lse)));
  }
  rope(x: View, cos: View, sin: View, out: View): void {
    this.op('rope', [x, cos, sin], out, () => attention.refRope(this.host(x), this.host(cos), this.host(sin), this.host(out)));
  }
  conv2d(x: View, w: View, bias: View | null, out: View, p: Conv2dParams): void {
    this.op('conv2d', [x, w, bias], out, () => conv.refConv2d(this.host(x), this.host(w), this.hostOrNull(bias), this.host(out), p));
  }
  upsampleNearest2x(x: View, out: View): void {
    this.op('upsampleNearest2x', [x], out, () => conv.refUpsampleNearest2x(this.host(x), this.host(out)));
  }

  unaryBackward(op: UnaryOp, x: View, dy: View, dx: View, p: UnaryParams = {}): void {
    this.op('unaryBackward', [x, dy], dx, () => elementwise.refUnaryBackward(op, this.host(x), this.host(dy), this.host(dx), p));
  }
  softmaxBackward(y: View, dy: View, dx: View): void {
    this.op('softmaxBackward', [y, dy], dx, () => reduce.refSoftmaxBackward(this.host(y), this.host(dy), this.host(dx)));
  }
  layerNormBackward(x: View, weight: View | null, dy: View, dx: View, dweight: View | null, dbias: View | null, p: { eps: number }): void {
    this.op('layerNormBackward', [x, weight, dy], dx, () =>
      norm.refLayerNormBackward(this.host(x), this.hostOrNull(weight), this.host(dy), this.host(dx), this.hostOrNull(dweight), this.hostOrNull(dbias), p));
  }
  rmsNormBackward(x: View, weight: View | null, dy: View, dx: View, dweight: View | null, p: { eps: number }): void {
    this.op('rmsNormBackward', [x, weight, dy], dx, () =>
      norm.refRmsNormBackward(this.host(x), this.hostOrNull(weight), this.host(dy), this.host(dx), this.hostOrNull(dweight), p));
  }
  attentionBackward(q: View, k: View, v: View, out: View, lse: View, dout: View, dq: View, dk: View, dv: View, p: AttentionParams): void {
    this.op('attentionBackward', [q, k, v, out, lse, dout], dq, () =>
      attention.refAttentionBackward(this.host(q), this.host(k), this.host(v), this.host(out), this.host(lse), this.host(dout), this.host(dq), this.host(dk), this.host(dv), p));
  }
  ropeBackward(dy: View, cos: View, sin: View, dx: View): void {
    this.op('ropeBackward', [dy, cos, sin], dx, () => attention.refRopeBackward(this.host(dy), this.host(cos), this.host(sin), this.host(dx)));
  }
  adamw(param: View, grad: View, m: View, v: View, p: AdamWParams): void {
    this.op('adamw', [grad, m, v], param, () => optim.refAdamW(this.host(param), this.host(grad), this.host(m), this.host(v), p));
  }

  private op(name: OpName, inputs: (View | null | undefined)[], out: View, run: () => void): void {
    const dtypes = [...inputs.filter((v): v is View => !!v).map((v) => v.dtype), out.dtype];
    if (!this.supportsOp(name, dtypes)) throw new UnsupportedOpError(this.name, name, describeOp(name, inputs, out));
    try {
      run();
    } catch (e) {
      if (e instanceof DeviceError) throw e;
      throw new DeviceError(`${describeOp(name, inputs, out)}: ${(e as Error).message}`);
    }
  }

  private own(buf: DeviceBuffer): CpuBuffer {
    if (!(buf instanceof CpuBuffer) || buf.device !== this) throw new DeviceError('cpu: buffer of another device');
    if (buf.freed) throw new DeviceError('cpu: use of a freed buffer');
    return buf;
  }

  private host(v: View): HostView {
    const b = this.own(v.buf);
    const data = hostArrayFromBytes(v.dtype, b.bytes.subarray(0, Math.floor(b.bytes.byteLength / DTYPE_BYTES[v.dtype]) * DTYPE_BYTES[v.dtype]));
    return { data, dtype: v.dtype, shape: v.shape, strides: v.strides, offset: v.offset };
  }

  private hostOrNull(v: View | null): HostView | null {
    return v ? this.host(v) : null;
  }
}
