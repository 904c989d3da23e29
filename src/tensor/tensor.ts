// A tensor is a strided view of a reference-counted storage on one device. Views (reshape of a
// contiguous tensor, permute, slice, expand) share the storage and copy nothing; `contiguous()`
// copies when the layout needs it. Ownership is explicit (jax-js style): every tensor returned to
// you holds one reference to its storage; `dispose()` drops it, and the buffer goes back to the
// device's pool when the last view is gone.
import type { Device, DeviceBuffer, View } from '../device/device.ts';
import { DTYPE_BYTES, type DType, type HostArray, hostArrayFromBytes, toFloat64, writeElement, hostArrayFor } from './dtype.ts';
import { contiguousStrides, isContiguous, normAxis, numel } from './shape.ts';

export class Storage {
  private refs = 1;
  /** Counts in-place updates of the data (see Tensor.markUpdated). */
  version = 0;
  constructor(readonly device: Device, readonly buf: DeviceBuffer) {}
  retain(): this {
    if (this.refs <= 0) throw new Error('use of a disposed tensor');
    this.refs++;
    return this;
  }
  release(): void {
    if (this.refs <= 0) throw new Error('tensor disposed twice');
    if (--this.refs === 0) this.device.free(this.buf);
  }
  get alive(): boolean {
    return this.refs > 0;
  }
}

/**
 * How a tensor was computed, for the autograd tape (src/autograd): the op's inputs and the rule that
 * maps the output's gradient to theirs. Declared here so a tensor can point at it; built only there.
 */
export interface GradNode {
  readonly op: string;
  readonly inputs: readonly (Tensor | null)[];
  /** Gradients of the inputs (null where an input needs none) from the output's gradient. */
  backward(grad: Tensor): (Tensor | null)[];
  /** Releases what the node saved for backward (also called when the graph is dropped unused). */
  release(): void;
}

export class Tensor implements View {
  private disposed = false;
  /** Leaf tensors (parameters, inputs) whose gradient backward() accumulates into `grad`. */
  requiresGrad = false;
  grad: Tensor | null = null;
  /** Set on results of recorded ops while gradients are being tracked. */
  gradFn: GradNode | null = null;

  /** An own field, not a getter, so that `{ ...tensor }` is still a valid View. */
  readonly buf: DeviceBuffer;

  constructor(
    readonly storage: Storage,
    readonly dtype: DType,
    readonly shape: readonly number[],
    readonly strides: readonly number[],
    readonly offset = 0,
  ) {
    this.buf = storage.buf;
  }

  get device(): Device { return this.storage.device; }
  get rank(): number { return this.shape.length; }
  get numel(): number { return numel(this.shape); }
  get isContiguous(): boolean { return isContiguous(this.shape, this.strides); }

  /** How many times the data has been updated in place (shared by every view of the storage). */
  get version(): number { return this.storage.version; }
  /**
   * Called by whatever overwrites a tensor's data in place (optimizer steps, EMA swaps, LoRA
   * merges), so that what was derived from the old values (autocast's bf16 compute copies) is redone.
   */
  markUpdated(): void { this.storage.version++; }

  /** An uninitialised dense tensor. */
  static empty(device: Device, shape: readonly number[], dtype: DType = 'f32'): Tensor {
    const buf = device.alloc(Math.max(numel(shape), 1) * DTYPE_BYTES[dtype]);
    return new Tensor(new Storage(device, buf), dtype, [...shape], contiguousStrides(shape));
  }

  /** Uploads host values: numbers are rounded to `dtype`; a HostArray of that dtype is copied as is. */
  static from(device: Device, values: ArrayLike<number> | HostArray, shape: readonly number[], dtype: DType = 'f32'): Tensor {
    const n = numel(shape);
    if (values.length !== n) throw new Error(`Tensor.from: ${values.length} values for shape [${shape}] (${n} elements)`);
    const t = Tensor.empty(device, shape, dtype);
    let host: HostArray;
    if (isHostArrayOf(values, dtype)) host = values;
    else {
      host = hostArrayFor(dtype, n);
      for (let i = 0; i < n; i++) writeElement(dtype, host, i, values[i]!);
    }
    if (n > 0) device.write(t.buf, 0, host);
    return t;
  }

  static full(device: Device, shape: readonly number[], value: number, dtype: DType = 'f32'): Tensor {
    const t = Tensor.empty(device, shape, dtype);
    if (t.numel > 0) device.fill(t, value);
    return t;
  }

  /** Downloads the elements in logical order as the raw host array of the dtype. */
  async toHost(): Promise<HostArray> {
    const c = this.contiguous();
    try {
      const bytes = await this.device.read(c.buf, c.offset * DTYPE_BYTES[c.dtype], c.numel * DTYPE_BYTES[c.dtype]);
      return hostArrayFromBytes(c.dtype, bytes);
    } finally {
      c.dispose();
    }
  }

  /** Downloads the elements in logical order as float64 numbers (16-bit floats decoded). */
  async toFloat64(): Promise<Float64Array> {
    return toFloat64(this.dtype, await this.toHost());
  }

  /** A new view of the same storage (one more reference). */
  view(shape: readonly number[], strides: readonly number[], offset = this.offset): Tensor {
    this.check();
    return new Tensor(this.storage.retain(), this.dtype, [...shape], [...strides], offset);
  }

  /** Same data, new shape; a view when the layout allows it, else a contiguous copy. One -1 is inferred. */
  reshape(shape: readonly number[]): Tensor {
    const resolved = inferShape(shape, this.numel);
    if (this.isContiguous) return this.view(resolved, contiguousStrides(resolved));
    const c = this.contiguous();
    const r = c.view(resolved, contiguousStrides(resolved));
    c.dispose();
    return r;
  }

  permute(order: readonly number[]): Tensor {
    if (order.length !== this.rank || new Set(order.map((a) => normAxis(a, this.rank))).size !== this.rank) {
      throw new Error(`permute([${order}]) is not a permutation of the ${this.rank} axes of [${this.shape}]`);
    }
    const axes = order.map((a) => normAxis(a, this.rank));
    return this.view(axes.map((a) => this.shape[a]!), axes.map((a) => this.strides[a]!));
  }

  transpose(a: number, b: number): Tensor {
    const order = [...Array(this.rank).keys()];
    const [i, j] = [normAxis(a, this.rank), normAxis(b, this.rank)];
    [order[i], order[j]] = [order[j]!, order[i]!];
    return this.permute(order);
  }

  /** Elements start..end (exclusive) of one axis, with an optional step. */
  slice(axis: number, start: number, end: number, step = 1): Tensor {
    const ax = normAxis(axis, this.rank);
    const dim = this.shape[ax]!;
    if (start < 0 || end > dim || start > end || step < 1) throw new Error(`slice(${axis}, ${start}, ${end}, ${step}) out of range for [${this.shape}]`);
    const shape = [...this.shape];
    const strides = [...this.strides];
    shape[ax] = Math.ceil((end - start) / step);
    strides[ax] = this.strides[ax]! * step;
    return this.view(shape, strides, this.offset + start * this.strides[ax]!);
  }

  /** Broadcasts size-1 (or missing leading) axes to `shape` with zero strides. */
  expand(shape: readonly number[]): Tensor {
    const lead = shape.length - this.rank;
    if (lead < 0) throw new Error(`cannot expand [${this.shape}] to fewer dims [${shape}]`);
    const strides = shape.map((d, i) => {
      if (i < lead) return 0;
      const own = this.shape[i - lead]!;
      if (own === d) return this.strides[i - lead]!;
      if (own === 1) return 0;
      throw new Error(`cannot expand [${this.shape}] to [${shape}]`);
    });
    return this.view(shape, strides);
  }

  unsqueeze(axis: number): Tensor {
    const ax = normAxis(axis, this.rank + 1);
    const shape = [...this.shape];
    const strides = [...this.strides];
    shape.splice(ax, 0, 1);
    strides.splice(ax, 0, ax < this.rank ? this.strides[ax]! * this.shape[ax]! : 1);
    return this.view(shape, strides);
  }

  squeeze(axis: number): Tensor {
    const ax = normAxis(axis, this.rank);
    if (this.shape[ax] !== 1) throw new Error(`squeeze(${axis}) of [${this.shape}]: axis has size ${this.shape[ax]}`);
    return this.view(this.shape.filter((_, i) => i !== ax), this.strides.filter((_, i) => i !== ax));
  }

  /** A dense (row-major) tensor with the same values: a view when already dense, else a copy. */
  contiguous(): Tensor {
    this.check();
    if (this.isContiguous) return this.view(this.shape, contiguousStrides(this.shape));
    return this.to(this.dtype);
  }

  /** A dense copy in `dtype` (casts round to nearest even). */
  to(dtype: DType): Tensor {
    this.check();
    const out = Tensor.empty(this.device, this.shape, dtype);
    if (out.numel > 0) this.device.copy(this, out);
    return out;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.storage.release();
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  toString(): string {
    return `Tensor([${this.shape}], ${this.dtype}, ${this.device.name})`;
  }

  private check(): void {
    if (this.disposed || !this.storage.alive) throw new Error(`use of a disposed tensor [${this.shape}]:${this.dtype}`);
  }
}

function isHostArrayOf(values: ArrayLike<number>, dtype: DType): values is HostArray {
  switch (dtype) {
    case 'f32': return values instanceof Float32Array;
    case 'f64': return values instanceof Float64Array;
    case 'f16': case 'bf16': return values instanceof Uint16Array;
    case 'i32': return values instanceof Int32Array;
    case 'u32': return values instanceof Uint32Array;
  }
}

function inferShape(shape: readonly number[], n: number): number[] {
  const known = shape.filter((d) => d !== -1);
  const free = shape.length - known.length;
  const prod = numel(known);
  if (free > 1) throw new Error(`reshape([${shape}]): more than one -1`);
  const out = shape.map((d) => (d === -1 ? n / prod : d));
  if (!Number.isInteger(numel(out)) || numel(out) !== n) throw new Error(`cannot reshape ${n} elements to [${shape}]`);
  return out;
}
