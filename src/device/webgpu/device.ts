// The WebGPU backend on Dawn's node bindings (npm `webgpu`). It batches many dispatches into one
// compute pass and submits only when the host needs a result (read, write, sync) or a batch fills
// up; on lavapipe a dispatch costs ~20 us batched against ~70 us with its own submit.
import { create, globals } from 'webgpu';
import type { DType } from '../../tensor/dtype.ts';
import {
  type AdamWParams, type AttentionParams, type BinaryOp, type Conv2dParams, type Device, type DeviceBuffer, type DeviceCaps,
  DeviceError, type MatmulParams, type MemoryStats, type OpName, type ReduceOp, type UnaryOp,
  type UnaryParams, UnsupportedOpError, type View, describeOp,
} from '../device.ts';
import type { GpuBinding, GpuContext } from './context.ts';
import { BufferPool } from './pool.ts';
import * as elementwise from '../../kernels/elementwise.ts';
import * as reduce from '../../kernels/reduce.ts';
import * as norm from '../../kernels/norm.ts';
import * as groupnorm from '../../kernels/groupnorm.ts';
import * as matmul from '../../kernels/matmul.ts';
import { tuneMatmul } from '../../kernels/matmul_tuner.ts';
import * as attention from '../../kernels/attention.ts';
import * as conv from '../../kernels/conv.ts';
import * as optim from '../../kernels/optim.ts';

export interface WebGPUOptions {
  /** Substring of the adapter's name to pick (Dawn's `adapter=` option), e.g. "llvmpipe". */
  adapter?: string;
  /** Dawn backend: 'vulkan', 'opengl', 'null', ... (default: Dawn's choice). */
  backend?: string;
  powerPreference?: GPUPowerPreference;
}

class GpuBuffer implements DeviceBuffer {
  constructor(readonly device: WebGPUDevice, readonly byteLength: number, readonly gpu: GPUBuffer) {}
}

/** Dispatches per batch before a submit; also the number of 256-byte parameter slots in the arena. */
const BATCH_DISPATCHES = 1024;
const PARAM_SLOT = 256;

Object.assign(globalThis, globals);

export class WebGPUDevice implements Device, GpuContext {
  readonly kind = 'webgpu' as const;
  readonly caps: DeviceCaps;
  readonly features: ReadonlySet<string>;
  readonly limits: GpuContext['limits'];
  private readonly pool: BufferPool;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly paramsGpu: GPUBuffer;
  private readonly paramsHost = new Uint8Array(BATCH_DISPATCHES * PARAM_SLOT);
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private batchOps: string[] = [];
  private pendingErrors: Promise<string | null>[] = [];
  private lostReason: string | null = null;
  private timing: { querySet: GPUQuerySet; used: number } | null = null;

  private constructor(readonly gpu: GPUDevice, readonly name: string, readonly adapterKey: string) {
    this.features = new Set([...gpu.features].map(String));
    const l = gpu.limits;
    this.limits = {
      maxBindingBytes: l.maxStorageBufferBindingSize,
      maxWorkgroupsPerDim: l.maxComputeWorkgroupsPerDimension,
      maxWorkgroupStorageBytes: l.maxComputeWorkgroupStorageSize,
      maxInvocations: l.maxComputeInvocationsPerWorkgroup,
    };
    const dtypes = new Set<DType>(['f32', 'bf16', 'i32', 'u32']);
    if (this.features.has('shader-f16')) dtypes.add('f16');
    this.caps = { features: this.features, dtypes, maxBufferBytes: l.maxBufferSize, maxBindingBytes: l.maxStorageBufferBindingSize };
    this.pool = new BufferPool((size) => gpu.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST }));
    this.paramsGpu = gpu.createBuffer({ size: this.paramsHost.byteLength, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    void gpu.lost.then((info) => {
      if (info.reason !== 'destroyed') this.lostReason = `${info.reason}: ${info.message}`;
    });
  }

  static async create(opts: WebGPUOptions = {}): Promise<WebGPUDevice> {
    process.env.XDG_RUNTIME_DIR ??= '/tmp';
    const flags: string[] = [];
    if (opts.adapter) flags.push(`adapter=${opts.adapter}`);
    if (opts.backend) flags.push(`backend=${opts.backend}`);
    const navigatorGpu = create(flags);
    const adapter = await navigatorGpu.requestAdapter({ powerPreference: opts.powerPreference ?? 'high-performance' });
    if (!adapter) {
      throw new DeviceError(`no WebGPU adapter found${opts.adapter ? ` matching "${opts.adapter}"` : ''}${opts.backend ? ` on backend ${opts.backend}` : ''} (on a GPU-less machine run \`npm run setup\` to install Mesa's lavapipe)`);
    }
    // Ask for everything the adapter offers: the defaults (128 MiB bindings, 16 KiB workgroup memory) are lower.
    const requiredLimits: Record<string, number> = {};
    for (const key in adapter.limits) {
      const v = (adapter.limits as unknown as Record<string, unknown>)[key];
      if (typeof v === 'number') requiredLimits[key] = v;
    }
    const wanted: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
    const requiredFeatures = wanted.filter((f) => adapter.features.has(f));
    const gpu = await adapter.requestDevice({ requiredFeatures, requiredLimits });
    const info = adapter.info;
    const name = info.description || `${info.vendor} ${info.device}`.trim() || 'unknown adapter';
    // The navigator object must outlive the device (Dawn tears down with it).
    const dev = new WebGPUDevice(gpu, name, `${info.vendor}|${info.architecture}|${info.device}|${info.description}`);
    (dev as unknown as { navigatorGpu: GPU }).navigatorGpu = navigatorGpu;
    // Picks the matmul kernel variant for this adapter (cached on disk after the first time).
    await tuneMatmul(dev);
    return dev;
  }

  // ---- buffers --------------------------------------------------------------------------------

  alloc(byteLength: number): DeviceBuffer {
    this.checkAlive('alloc');
    if (byteLength > this.caps.maxBufferBytes) {
      throw new DeviceError(`${this.name}: cannot allocate ${byteLength} bytes (maxBufferSize ${this.caps.maxBufferBytes})`);
    }
    return new GpuBuffer(this, byteLength, this.pool.take(byteLength));
  }

  free(buf: DeviceBuffer): void {
    const b = this.own(buf);
    this.pool.give(b.gpu, b.byteLength);
  }

  write(buf: DeviceBuffer, byteOffset: number, data: ArrayBufferView): void {
    this.checkAlive('write');
    const b = this.own(buf);
    if (byteOffset + data.byteLength > b.byteLength) {
      throw new DeviceError(`write of ${data.byteLength} bytes at ${byteOffset} overruns a ${b.byteLength}-byte buffer`);
    }
    this.submit(); // ops issued before must read the old contents
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    // writeBuffer wants 4-byte multiples: pad the tail with the bytes already there is not possible
    // without a read, so odd tails go through a small staging copy of the rounded range.
    const aligned = bytes.byteLength & ~3;
    if (aligned > 0) this.gpu.queue.writeBuffer(b.gpu, byteOffset, bytes, 0, aligned);
    if (aligned < bytes.byteLength) this.writeTail(b.gpu, byteOffset + aligned, bytes.subarray(aligned));
  }

  async read(buf: DeviceBuffer, byteOffset: number, byteLength: number): Promise<Uint8Array> {
    this.checkAlive('read');
    const b = this.own(buf);
    const start = byteOffset & ~3;
    const size = Math.ceil((byteOffset + byteLength - start) / 4) * 4;
    const staging = this.gpu.createBuffer({ size: Math.max(size, 4), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.endPass();
    this.encoderOrNew().copyBufferToBuffer(b.gpu, start, staging, 0, size);
    this.submit();
    try {
      await staging.mapAsync(GPUMapMode.READ);
    } catch (e) {
      // Dawn rejects a failed map with an empty message: say what was being read.
      await this.throwDeferred();
      throw new DeviceError(`read of ${byteLength} bytes at ${byteOffset} failed${this.lostReason ? ` (device lost: ${this.lostReason})` : ''}: ${(e as Error).message || 'mapAsync rejected'}`);
    }
    const out = new Uint8Array(staging.getMappedRange()).slice(byteOffset - start, byteOffset - start + byteLength);
    staging.unmap();
    staging.destroy();
    await this.throwDeferred();
    return out;
  }

  async sync(): Promise<void> {
    this.checkAlive('sync');
    this.submit();
    await this.gpu.queue.onSubmittedWorkDone();
    await this.throwDeferred();
    this.checkAlive('sync');
  }

  memory(): MemoryStats {
    return this.pool.stats();
  }

  resetPeak(): void {
    this.pool.resetPeak();
  }

  destroy(): void {
    this.submit();
    this.pool.destroy();
    this.paramsGpu.destroy();
    this.gpu.destroy();
  }

  // ---- capabilities and timing ----------------------------------------------------------------

  supportsOp(op: OpName, dtypes: readonly DType[]): boolean {
    if (!dtypes.every((d) => this.caps.dtypes.has(d))) return false;
    switch (op) {
      case 'fill': case 'copy': return true;
      case 'gather': return dtypes[1] === 'i32' && dtypes[0] === 'f32' && dtypes[2] === 'f32';
      case 'where': return dtypes.every((d) => d === 'f32');
      // bf16 operands (weights stored as checkpoints ship them, autocast's compute copies), f32 output.
      case 'matmul': return dtypes.at(-1) === 'f32' && dtypes.slice(0, -1).every((d) => d === 'f32' || d === 'bf16');
      default: return dtypes.every((d) => d === 'f32');
    }
  }

  async time(fn: () => void): Promise<number> {
    await this.sync();
    if (!this.features.has('timestamp-query')) {
      const t0 = performance.now();
      fn();
      await this.sync();
      return performance.now() - t0;
    }
    const querySet = this.gpu.createQuerySet({ type: 'timestamp', count: 2 * BATCH_DISPATCHES });
    this.timing = { querySet, used: 0 };
    try {
      fn();
      this.endPass();
    } finally {
      this.timing = null;
    }
    const used = this.timingUsed;
    const resolve = this.gpu.createBuffer({ size: Math.max(used, 1) * 8, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    const staging = this.gpu.createBuffer({ size: Math.max(used, 1) * 8, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = this.encoderOrNew();
    if (used > 0) {
      enc.resolveQuerySet(querySet, 0, used, resolve, 0);
      enc.copyBufferToBuffer(resolve, 0, staging, 0, used * 8);
    }
    this.submit();
    await staging.mapAsync(GPUMapMode.READ);
    const ts = new BigInt64Array(staging.getMappedRange().slice(0));
    staging.unmap();
    [staging, resolve].forEach((b) => b.destroy());
    querySet.destroy();
    await this.throwDeferred();
    let ns = 0n;
    for (let i = 0; i + 1 < used; i += 2) ns += ts[i + 1]! - ts[i]!;
    return Number(ns) / 1e6;
  }
  private timingUsed = 0;

  // ---- GpuContext: what kernel launchers use ----------------------------------------------------

  pipeline(wgsl: string): GPUComputePipeline {
    let p = this.pipelines.get(wgsl);
    if (!p) {
      const module = this.gpu.createShaderModule({ code: wgsl });
      p = this.gpu.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      this.pipelines.set(wgsl, p);
    }
    return p;
  }

  bind(v: View): GpuBinding {
    const b = this.own(v.buf);
    if (b.gpu.size > this.limits.maxBindingBytes) {
      throw new DeviceError(`a [${v.shape}]:${v.dtype} view lives in a ${b.gpu.size}-byte buffer, over this adapter's ${this.limits.maxBindingBytes}-byte binding limit; this op does not split its operands`);
    }
    return { buffer: b.gpu, offset: 0, size: b.gpu.size };
  }

  bindRange(v: View, byteOffset: number, byteLength: number): GpuBinding {
    const b = this.own(v.buf);
    if (byteLength > this.limits.maxBindingBytes) {
      throw new DeviceError(`binding of ${byteLength} bytes exceeds this adapter's ${this.limits.maxBindingBytes}-byte limit`);
    }
    return { buffer: b.gpu, offset: byteOffset, size: Math.min(Math.ceil(byteLength / 4) * 4, b.gpu.size - byteOffset) };
  }

  dispatch(label: string, pipeline: GPUComputePipeline, params: ArrayBuffer | null, bindings: GpuBinding[], groups: [number, number?, number?]): void {
    this.checkAlive(label);
    const [x, y = 1, z = 1] = groups;
    const max = this.limits.maxWorkgroupsPerDim;
    if (x > max || y > max || z > max) throw new DeviceError(`${label}: grid ${x}x${y}x${z} exceeds ${max} workgroups per dimension`);
    if (x * y * z === 0) return;
    if (this.batchOps.length >= BATCH_DISPATCHES) this.submit();
    const pass = this.passOrNew();
    const entries: GPUBindGroupEntry[] = [];
    if (params) {
      const slot = this.batchOps.length * PARAM_SLOT;
      if (params.byteLength > PARAM_SLOT) throw new DeviceError(`${label}: ${params.byteLength}-byte parameter block exceeds ${PARAM_SLOT}`);
      this.paramsHost.set(new Uint8Array(params), slot);
      entries.push({ binding: 0, resource: { buffer: this.paramsGpu, offset: slot, size: params.byteLength } });
    }
    bindings.forEach((b, i) => entries.push({ binding: i + 1, resource: { buffer: b.buffer, offset: b.offset, size: b.size } }));
    const bindGroup = this.gpu.createBindGroup({ label, layout: pipeline.getBindGroupLayout(0), entries });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(x, y, z);
    this.batchOps.push(label);
  }

  // ---- ops ------------------------------------------------------------------------------------

  fill(out: View, value: number): void { this.op('fill', [], out, () => elementwise.gpuFill(this, out, value)); }
  copy(src: View, out: View): void { this.op('copy', [src], out, () => elementwise.gpuCopy(this, src, out)); }
  unary(op: UnaryOp, x: View, out: View, p: UnaryParams = {}): void { this.op('unary', [x], out, () => elementwise.gpuUnary(this, op, x, out, p)); }
  binary(op: BinaryOp, a: View, b: View, out: View): void { this.op('binary', [a, b], out, () => elementwise.gpuBinary(this, op, a, b, out)); }
  where(cond: View, a: View, b: View, out: View): void { this.op('where', [cond, a, b], out, () => elementwise.gpuWhere(this, cond, a, b, out)); }
  gather(table: View, index: View, out: View): void { this.op('gather', [table, index], out, () => elementwise.gpuGather(this, table, index, out)); }
  reduce(op: ReduceOp, x: View, out: View, p: { outer: number; n: number; inner: number; correction?: number }): void {
    this.op('reduce', [x], out, () => reduce.gpuReduce(this, op, x, out, p));
  }
  softmax(x: View, out: View): void { this.op('softmax', [x], out, () => reduce.gpuSoftmax(this, x, out)); }
  layerNorm(x: View, weight: View | null, bias: View | null, out: View, p: { eps: number }): void {
    this.op('layerNorm', [x, weight, bias], out, () => norm.gpuLayerNorm(this, x, weight, bias, out, p));
  }
  rmsNorm(x: View, weight: View | null, out: View, p: { eps: number }): void {
    this.op('rmsNorm', [x, weight], out, () => norm.gpuRmsNorm(this, x, weight, out, p));
  }
  groupNorm(x: View, weight: View | null, bias: View | null, out: View, p: { groups: number; eps: number }): void {
    this.op('groupNorm', [x, weight, bias], out, () => groupnorm.gpuGroupNorm(this, x, weight, bias, out, p));
  }
  matmul(a: View, b: View, out: View, p: MatmulParams = {}): void {
    this.op('matmul', [a, b, p.bias], out, () => matmul.gpuMatmul(this, a, b, out, p));
  }
  attention(q: View, k: View, v: View, out: View, p: AttentionParams, lse: View | null = null): void {
    this.op('attention', [q, k, v], out, () => attention.gpuAttention(this, q, k, v, out, p, lse));
  }
  rope(x: View, cos: View, sin: View, out: View): void { this.op('rope', [x, cos, sin], out, () => attention.gpuRope(this, x, cos, sin, out)); }
  conv2d(x: View, w: View, bias: View | null, out: View, p: Conv2dParams): void {
    this.op('conv2d', [x, w, bias], out, () => conv.gpuConv2d(this, x, w, bias, out, p));
  }
  upsampleNearest2x(x: View, out: View): void { this.op('upsampleNearest2x', [x], out, () => conv.gpuUpsampleNearest2x(this, x, out)); }

  unaryBackward(op: UnaryOp, x: View, dy: View, dx: View, p: UnaryParams = {}): void {
    this.op('unaryBackward', [x, dy], dx, () => elementwise.gpuUnaryBackward(this, op, x, dy, dx, p));
  }
  softmaxBackward(y: View, dy: View, dx: View): void {
    this.op('softmaxBackward', [y, dy], dx, () => reduce.gpuSoftmaxBackward(this, y, dy, dx));
  }
  layerNormBackward(x: View, weight: View | null, dy: View, dx: View, dweight: View | null, dbias: View | null, p: { eps: number }): void {
    this.op('layerNormBackward', [x, weight, dy], dx, () => norm.gpuLayerNormBackward(this, x, weight, dy, dx, dweight, dbias, p));
  }
  rmsNormBackward(x: View, weight: View | null, dy: View, dx: View, dweight: View | null, p: { eps: number }): void {
    this.op('rmsNormBackward', [x, weight, dy], dx, () => norm.gpuRmsNormBackward(this, x, weight, dy, dx, dweight, p));
  }
  attentionBackward(q: View, k: View, v: View, out: View, lse: View, dout: View, dq: View, dk: View, dv: View, p: AttentionParams): void {
    this.op('attentionBackward', [q, k, v, out, lse, dout], dq, () => attention.gpuAttentionBackward(this, q, k, v, out, lse, dout, dq, dk, dv, p));
  }
  ropeBackward(dy: View, cos: View, sin: View, dx: View): void {
    this.op('ropeBackward', [dy, cos, sin], dx, () => attention.gpuRopeBackward(this, dy, cos, sin, dx));
  }
  adamw(param: View, grad: View, m: View, v: View, p: AdamWParams): void {
    this.op('adamw', [grad, m, v], param, () => optim.gpuAdamW(this, param, grad, m, v, p));
  }

  // ---- internals ------------------------------------------------------------------------------

  /** Checks dtypes against supportsOp, then runs the launcher; launcher errors name the op and shapes. */
  private op(name: OpName, inputs: (View | null | undefined)[], out: View, launch: () => void): void {
    const dtypes = [...inputs.filter((v): v is View => !!v).map((v) => v.dtype), out.dtype];
    if (!this.supportsOp(name, dtypes)) throw new UnsupportedOpError(this.name, name, describeOp(name, inputs, out));
    try {
      launch();
    } catch (e) {
      if (e instanceof DeviceError || e instanceof UnsupportedOpError) throw e;
      throw new DeviceError(`${describeOp(name, inputs, out)}: ${(e as Error).message}`);
    }
  }

  private own(buf: DeviceBuffer): GpuBuffer {
    if (!(buf instanceof GpuBuffer) || buf.device !== this) throw new DeviceError(`buffer of another device passed to ${this.name}`);
    return buf;
  }

  private checkAlive(what: string): void {
    if (this.lostReason) throw new DeviceError(`${what}: WebGPU device lost (${this.lostReason})`);
  }

  private encoderOrNew(): GPUCommandEncoder {
    if (!this.encoder) {
      this.gpu.pushErrorScope('validation');
      this.gpu.pushErrorScope('out-of-memory');
      this.encoder = this.gpu.createCommandEncoder();
    }
    return this.encoder;
  }

  private passOrNew(): GPUComputePassEncoder {
    if (!this.pass) {
      const desc: GPUComputePassDescriptor = {};
      if (this.timing && this.timing.used + 2 <= this.timing.querySet.count) {
        desc.timestampWrites = { querySet: this.timing.querySet, beginningOfPassWriteIndex: this.timing.used, endOfPassWriteIndex: this.timing.used + 1 };
        this.timing.used += 2;
        this.timingUsed = this.timing.used;
      }
      this.pass = this.encoderOrNew().beginComputePass(desc);
    }
    return this.pass;
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  /** Submits the open batch: parameter arena first, then the recorded passes. */
  private submit(): void {
    if (!this.encoder) return;
    this.endPass();
    const used = this.batchOps.length * PARAM_SLOT;
    if (used > 0) this.gpu.queue.writeBuffer(this.paramsGpu, 0, this.paramsHost, 0, used);
    const ops = this.batchOps;
    this.gpu.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.batchOps = [];
    const oom = this.gpu.popErrorScope();
    const validation = this.gpu.popErrorScope();
    const describe = (kind: string) => (e: GPUError | null) =>
      e ? `${kind} error in a batch of ${ops.length} ops (${summarise(ops)}): ${e.message}` : null;
    this.pendingErrors.push(oom.then(describe('out-of-memory')), validation.then(describe('validation')));
  }

  private async throwDeferred(): Promise<void> {
    const pending = this.pendingErrors;
    this.pendingErrors = [];
    const messages = (await Promise.all(pending)).filter((m): m is string => !!m);
    if (messages.length) throw new DeviceError(messages.join('\n'));
  }

  private writeTail(buffer: GPUBuffer, byteOffset: number, tail: Uint8Array): void {
    // Rewrites the whole 4-byte word holding the tail after reading nothing back: tails only occur at
    // the end of a tensor, whose remaining bytes in the word belong to no other tensor of this buffer.
    const word = new Uint8Array(4);
    word.set(tail);
    this.gpu.queue.writeBuffer(buffer, byteOffset, word);
  }
}

/** "matmul x12, softmax x3, ...": the ops of a failed batch, counted by kind. */
function summarise(labels: string[]): string {
  const counts = new Map<string, number>();
  for (const l of labels) {
    const k = l.split(' ')[0]!;
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  const last = labels.at(-1);
  return `${[...counts].map(([k, n]) => `${k} x${n}`).join(', ')}; last: ${last}`;
}
