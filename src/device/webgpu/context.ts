// What a WebGPU kernel launcher (src/kernels/*.ts) sees of the device: pipelines, bindings of views,
// a uniform-parameter writer, and one call that records a dispatch. Launchers never submit or wait.
import type { View } from '../device.ts';

/** A range of a GPU buffer bound to one kernel binding. */
export interface GpuBinding {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

export interface GpuContext {
  readonly gpu: GPUDevice;
  readonly features: ReadonlySet<string>;
  readonly limits: { maxBindingBytes: number; maxWorkgroupsPerDim: number; maxWorkgroupStorageBytes: number; maxInvocations: number };
  /** Adapter description, used to key measured kernel choices (e.g. the matmul tuner's cache). */
  readonly adapterKey: string;
  /** A compute pipeline for this WGSL (entry point `main`), compiled once and cached by source. */
  pipeline(wgsl: string): GPUComputePipeline;
  /** The whole buffer behind a view (views address it by `offset` + strides in elements). */
  bind(v: View): GpuBinding;
  /** A byte range of a view's buffer (for ops that split tensors larger than one binding). */
  bindRange(v: View, byteOffset: number, byteLength: number): GpuBinding;
  /**
   * Records one dispatch. `params` is the uniform block (binding 0, group 0); `bindings` follow as
   * bindings 1, 2, ... `label` names the op and shapes in any error the dispatch causes.
   */
  dispatch(label: string, pipeline: GPUComputePipeline, params: ArrayBuffer | null, bindings: GpuBinding[], groups: [number, number?, number?]): void;
}

/**
 * Builds a uniform block of 32-bit scalars in declaration order; the WGSL struct must declare the
 * same fields in the same order (u32/i32/f32 only, so no padding rules apply until the end).
 */
export class Params {
  private words: number[] = [];
  private kinds: ('u' | 'i' | 'f')[] = [];
  u32(...xs: number[]): this { for (const x of xs) { this.words.push(x); this.kinds.push('u'); } return this; }
  i32(...xs: number[]): this { for (const x of xs) { this.words.push(x); this.kinds.push('i'); } return this; }
  f32(...xs: number[]): this { for (const x of xs) { this.words.push(x); this.kinds.push('f'); } return this; }
  /** Uniform blocks are sized in 16-byte units. */
  toBuffer(): ArrayBuffer {
    const n = Math.max(4, Math.ceil(this.words.length / 4) * 4);
    const buf = new ArrayBuffer(n * 4);
    const u = new Uint32Array(buf), i = new Int32Array(buf), f = new Float32Array(buf);
    this.words.forEach((w, k) => {
      const kind = this.kinds[k];
      if (kind === 'f') f[k] = w;
      else if (kind === 'i') i[k] = w;
      else u[k] = w >>> 0;
    });
    return buf;
  }
}

/** Workgroup counts for `n` threads in groups of `size`, folded into 2-D past the 65535 limit. */
export function gridFor(n: number, size: number, maxPerDim = 65535): [number, number] {
  const groups = Math.ceil(n / size);
  if (groups <= maxPerDim) return [Math.max(groups, 1), 1];
  const y = Math.ceil(groups / maxPerDim);
  return [Math.ceil(groups / y), y];
}

/**
 * Whether the adapter is a CPU implementation (lavapipe/llvmpipe, SwiftShader): there each workgroup
 * runs on one CPU thread, so kernels prefer one thread per row and no shared-memory tiling.
 */
export function isCpuAdapter(ctx: GpuContext): boolean {
  return /llvmpipe|lavapipe|swiftshader|\|software\|/i.test(ctx.adapterKey);
}
