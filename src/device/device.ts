// The one device interface. Three kinds of backend implement it: WebGPU (WGSL kernels), the CPU
// reference (plain TypeScript), and the Ascend NPU (C shim functions on device pointers, through FFI).
// So it speaks in buffers and typed ops, never in shader source: a backend decides how an op runs.
//
// Ordering: every op and every write is executed in the order it was issued (one stream per device).
// Ops may run asynchronously; `read` and `sync` are the only waits. Ops never allocate their outputs:
// the caller (the tensor layer) passes views of buffers it allocated.
//
// Shapes use the project-wide names: B batch, L sequence, D width, H heads, Dh head width,
// C channels, Hh/Ww spatial height/width, N/M/K matmul sizes.

import type { DType } from '../tensor/dtype.ts';

/** An allocation on a device. Opaque: only its device can use it. */
export interface DeviceBuffer {
  readonly device: Device;
  readonly byteLength: number;
}

/**
 * A strided view of a buffer: element (i0, i1, ...) lives at element index
 * `offset + sum(i_k * strides[k])` of the buffer, in units of `dtype`. A stride of 0 broadcasts.
 */
export interface View {
  readonly buf: DeviceBuffer;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
}

export type UnaryOp =
  | 'neg' | 'abs' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'square' | 'recip' | 'tanh' | 'sigmoid'
  | 'relu' | 'silu' | 'gelu_erf' | 'gelu_tanh' | 'quick_gelu'
  /** alpha * x */
  | 'scale'
  /** min(max(x, lo), hi) */
  | 'clamp';

export type BinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'max' | 'min' | 'pow';

export type ReduceOp = 'sum' | 'mean' | 'max' | 'min' | 'var';

/** Activations a matmul can apply to its result (after the bias). */
export type Activation = 'none' | 'silu' | 'gelu_tanh' | 'gelu_erf';

export interface UnaryParams { alpha?: number; lo?: number; hi?: number }

export interface MatmulParams {
  /** a is stored [Ba, K, M] and used transposed. */
  transA?: boolean;
  /** b is stored [Bb, N, K] and used transposed (the nn.Linear weight layout). */
  transB?: boolean;
  bias?: View | null;
  act?: Activation;
}

export interface AttentionParams {
  /** Multiplies q.k; PyTorch's default is 1/sqrt(Dh). */
  scale: number;
  causal?: boolean;
}

export interface Conv2dParams {
  stride: [number, number];
  padding: [number, number];
}

/** Every op of the interface, for capability queries and error messages. */
export type OpName =
  | 'fill' | 'copy' | 'unary' | 'binary' | 'where' | 'reduce' | 'softmax' | 'layerNorm' | 'rmsNorm'
  | 'groupNorm' | 'matmul' | 'attention' | 'rope' | 'conv2d' | 'upsampleNearest2x' | 'gather'
  | 'unaryBackward' | 'softmaxBackward' | 'layerNormBackward' | 'rmsNormBackward' | 'attentionBackward'
  | 'ropeBackward' | 'adamw';

export interface DeviceCaps {
  /** Optional hardware features, e.g. 'shader-f16', 'subgroups', 'timestamp-query'. */
  readonly features: ReadonlySet<string>;
  /** Element types the device can store and compute with. */
  readonly dtypes: ReadonlySet<DType>;
  /** Largest single allocation, bytes. */
  readonly maxBufferBytes: number;
  /** Largest range one kernel can address in one binding, bytes (ops split bigger tensors). */
  readonly maxBindingBytes: number;
}

export interface MemoryStats {
  /** Bytes in buffers handed out and not yet freed. */
  liveBytes: number;
  liveBuffers: number;
  /** Highest liveBytes since creation or the last resetPeak(). */
  peakBytes: number;
  /** Bytes held by the pooling allocator for reuse (not live). */
  pooledBytes: number;
}

export interface Device {
  readonly kind: 'cpu' | 'webgpu' | 'ascend';
  /** Human-readable adapter name, e.g. "llvmpipe (LLVM 15.0.6)". */
  readonly name: string;
  readonly caps: DeviceCaps;

  // ---- buffers --------------------------------------------------------------------------------
  /** A buffer of at least `byteLength` bytes, from the pool when one is free. Contents undefined. */
  alloc(byteLength: number): DeviceBuffer;
  /** Returns the buffer to the pool. Pending ops that use it still see it. */
  free(buf: DeviceBuffer): void;
  /** Copies host bytes into the buffer, ordered after every op issued before. */
  write(buf: DeviceBuffer, byteOffset: number, data: ArrayBufferView): void;
  /** Copies bytes back to the host once every op issued before has finished. */
  read(buf: DeviceBuffer, byteOffset: number, byteLength: number): Promise<Uint8Array>;
  /** Waits until all issued work is done; throws the first deferred error of that work. */
  sync(): Promise<void>;
  memory(): MemoryStats;
  resetPeak(): void;
  /** Releases every resource; the device is unusable afterwards. */
  destroy(): void;

  // ---- capability queries and timing ----------------------------------------------------------
  /** Whether `op` runs with these element types (inputs then output). */
  supportsOp(op: OpName, dtypes: readonly DType[]): boolean;
  /**
   * Time of the work `fn` issues, in ms: GPU timestamps where the device has them, otherwise wall
   * time until that work is done.
   */
  time(fn: () => void): Promise<number>;

  // ---- ops ------------------------------------------------------------------------------------
  /** out[...] = value */
  fill(out: View, value: number): void;
  /** out = src, element by element over equal shapes; casts when dtypes differ (bf16/f16 round to nearest even). */
  copy(src: View, out: View): void;
  /** out = op(x), equal shapes (x may broadcast through zero strides). */
  unary(op: UnaryOp, x: View, out: View, p?: UnaryParams): void;
  /** out = a op b; a and b already expanded to out's shape (zero strides broadcast). */
  binary(op: BinaryOp, a: View, b: View, out: View): void;
  /** out = cond != 0 ? a : b, all expanded to out's shape. */
  where(cond: View, a: View, b: View, out: View): void;
  /**
   * Reduces axis 1 of x viewed as [outer, n, inner] (x contiguous) into out [outer, inner].
   * 'var' uses `correction` (1 = unbiased, PyTorch's default).
   */
  reduce(op: ReduceOp, x: View, out: View, p: { outer: number; n: number; inner: number; correction?: number }): void;
  /** Softmax over the last axis. x, out: [R, D] contiguous (R = all leading dims). */
  softmax(x: View, out: View): void;
  /** LayerNorm over the last axis. x, out: [R, D]; weight, bias: [D] or null. */
  layerNorm(x: View, weight: View | null, bias: View | null, out: View, p: { eps: number }): void;
  /** RMSNorm over the last axis: x * rsqrt(mean(x^2) + eps) * weight. x, out: [R, D]; weight: [D] or null. */
  rmsNorm(x: View, weight: View | null, out: View, p: { eps: number }): void;
  /** GroupNorm. x, out: [B, C, S] (S = all spatial dims); weight, bias: [C] or null. */
  groupNorm(x: View, weight: View | null, bias: View | null, out: View, p: { groups: number; eps: number }): void;
  /**
   * out[b] = act(A[b] @ B[b or 0] + bias). a: [Ba, M, K] ([Ba, K, M] if transA), b: [Bb, K, N]
   * ([Bb, N, K] if transB) with Bb = Ba or 1, bias: [N], out: [Ba, M, N]. a, b, out contiguous.
   */
  matmul(a: View, b: View, out: View, p?: MatmulParams): void;
  /**
   * Scaled dot-product attention. q: [B, H, Lq, Dh], k, v: [B, H, Lk, Dh], out: [B, H, Lq, Dh],
   * all contiguous. When `lse` is given it receives the log-sum-exp of each score row [B, H, Lq]
   * (what the backward pass needs to recompute probabilities tile by tile).
   */
  attention(q: View, k: View, v: View, out: View, p: AttentionParams, lse?: View | null): void;
  /**
   * FLUX rotary embedding on interleaved pairs (diffusers apply_rotary_emb, use_real_unbind_dim=-1):
   * out[2i] = x[2i] cos[2i] - x[2i+1] sin[2i], out[2i+1] = x[2i+1] cos[2i+1] + x[2i] sin[2i+1].
   * x, out: [B, H, L, Dh]; cos, sin: [L, Dh]. All contiguous.
   */
  rope(x: View, cos: View, sin: View, out: View): void;
  /** 2-D convolution. x: [B, Cin, Hh, Ww], w: [Cout, Cin, kh, kw], bias: [Cout] or null, out: [B, Cout, Ho, Wo]. */
  conv2d(x: View, w: View, bias: View | null, out: View, p: Conv2dParams): void;
  /** Nearest-neighbour 2x upsampling. x: [B, C, Hh, Ww] -> out: [B, C, 2Hh, 2Ww]. */
  upsampleNearest2x(x: View, out: View): void;
  /** Row gather (embedding lookup). table: [V, D], index: [N] (i32), out: [N, D]. */
  gather(table: View, index: View, out: View): void;

  // ---- backward ops (the gradients autograd cannot build from forward ops cheaply) --------------
  // Gradient outputs are overwritten, never accumulated: the tape adds gradients itself.

  /** dx = dy * op'(x), for every UnaryOp (same params as the forward). x, dy, dx: equal shapes. */
  unaryBackward(op: UnaryOp, x: View, dy: View, dx: View, p?: UnaryParams): void;
  /** dx = y * (dy - sum(dy * y)) over the last axis. y (softmax output), dy, dx: [R, D] contiguous. */
  softmaxBackward(y: View, dy: View, dx: View): void;
  /**
   * LayerNorm backward over the last axis. x, dy, dx: [R, D]; weight: [D] or null;
   * dweight, dbias: [D] or null (sums over the R rows).
   */
  layerNormBackward(x: View, weight: View | null, dy: View, dx: View, dweight: View | null, dbias: View | null, p: { eps: number }): void;
  /** RMSNorm backward. x, dy, dx: [R, D]; weight: [D] or null; dweight: [D] or null. */
  rmsNormBackward(x: View, weight: View | null, dy: View, dx: View, dweight: View | null, p: { eps: number }): void;
  /**
   * Attention backward from the forward's out and lse (probabilities are recomputed tile by tile,
   * never stored). Shapes as attention(); dq like q, dk and dv like k.
   */
  attentionBackward(q: View, k: View, v: View, out: View, lse: View, dout: View, dq: View, dk: View, dv: View, p: AttentionParams): void;
  /** The transposed rotation of rope(): dx from dy. dy, dx: [B, H, L, Dh]; cos, sin: [L, Dh]. */
  ropeBackward(dy: View, cos: View, sin: View, dx: View): void;
  /**
   * One AdamW step in place, exactly torch.optim.AdamW's single-tensor path (torch 2.6):
   * param *= 1 - lr*wd; m = m + (1-beta1)*(g - m); v = beta2*v + (1-beta2)*g*g;
   * param -= stepSize * m / (sqrt(v) / bc2Sqrt + eps), with stepSize = lr / (1 - beta1^step) and
   * bc2Sqrt = sqrt(1 - beta2^step) computed on the host in float64. param, grad, m, v: equal shapes, f32.
   */
  adamw(param: View, grad: View, m: View, v: View, p: AdamWParams): void;
}

export interface AdamWParams {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** lr / (1 - beta1^step), host float64. */
  stepSize: number;
  /** sqrt(1 - beta2^step), host float64. */
  bc2Sqrt: number;
}

/** Thrown when a backend lacks an op or a dtype combination: never fall back silently. */
export class UnsupportedOpError extends Error {
  constructor(device: string, op: OpName, detail: string) {
    super(`${device}: op '${op}' is not supported (${detail})`);
    this.name = 'UnsupportedOpError';
  }
}

/** Thrown for a device-side failure (validation error, lost device), naming the op and shapes. */
export class DeviceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeviceError';
  }
}

/** "matmul a[2,7,12]:f32 b[2,12,9]:f32 -> [2,7,9]:f32": how errors name an op and its operands. */
export function describeOp(op: string, inputs: readonly (View | null | undefined)[], out?: View): string {
  const fmt = (v: View) => `[${v.shape.join(',')}]:${v.dtype}`;
  const ins = inputs.filter((v): v is View => !!v).map(fmt).join(' ');
  return `${op} ${ins}${out ? ` -> ${fmt(out)}` : ''}`;
}
