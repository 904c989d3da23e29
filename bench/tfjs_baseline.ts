// The matmul baseline: TensorFlow.js's WebGPU backend (4.22) on the SAME Dawn device as ours, timed in
// alternation with our matmul (tfjs, ours, tfjs, ours, ...) because these machines are noisy.
//
// Timing trap: tfjs records into a compute pass it keeps open and submits only every few dispatches,
// so waiting for the queue alone can time nothing at all. Each tfjs run therefore ends its pass and
// submits (endComputePassEncoder, submitQueue) before awaiting onSubmittedWorkDone. Both sides are
// timed the same way, wall clock from issue to done, and tfjs's result is checked before timing.
import type { View } from '../src/device/device.ts';
import type { WebGPUDevice } from '../src/device/webgpu/device.ts';
import { compare } from '../src/device/conformance.ts';

export interface BaselineRow {
  m: number;
  n: number;
  k: number;
  /** Median wall ms, issue to done. */
  oursMs: number;
  tfjsMs: number;
  oursGflops: number;
  tfjsGflops: number;
  /** Our speed over tfjs's (tfjsMs / oursMs). */
  ratio: number;
  /** Relative L2 distance between tfjs's output and ours. */
  tfjsVsOurs: number;
  /** Relative L2 error of ours and of tfjs on 64 entries recomputed in float64. */
  oursSpotError: number;
  tfjsSpotError: number;
  reps: number;
}

type WebGPUBackendLike = { endComputePassEncoder(): void; ensureCommandEncoderReady(): void; submitQueue(): void };

/** Loads tfjs and registers its WebGPU backend on our GPUDevice. */
async function tfjsOn(dev: WebGPUDevice) {
  // tfjs checks navigator.gpu before it accepts a device: give it the `webgpu` package's GPU object
  // that our device was created from (Node 20 has no navigator).
  const g = globalThis as { navigator?: { gpu?: unknown } };
  if (!g.navigator?.gpu) {
    const gpu = (dev as unknown as { navigatorGpu?: GPU }).navigatorGpu ?? (await import('webgpu')).create([]);
    Object.defineProperty(globalThis, 'navigator', { value: { ...g.navigator, gpu }, configurable: true, writable: true });
  }
  const tf = await import('@tensorflow/tfjs-core');
  const { WebGPUBackend } = await import('@tensorflow/tfjs-backend-webgpu');
  const backend = new WebGPUBackend(dev.gpu);
  // Its kernels are registered under the name 'webgpu': replace the factory that would request an
  // adapter and device of its own with one that returns the backend on our device.
  tf.removeBackend('webgpu');
  tf.registerBackend('webgpu', () => backend);
  if (!(await tf.setBackend('webgpu')) || tf.backend() !== backend) throw new Error('tfjs refused the WebGPU backend on our device');
  const flush = () => {
    const b = backend as unknown as WebGPUBackendLike;
    b.endComputePassEncoder();
    b.ensureCommandEncoderReady();
    b.submitQueue();
  };
  return { tf, flush };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

/** Relative L2 error of got against want (the conformance runner's metric). */
const relL2 = (got: ArrayLike<number>, want: ArrayLike<number>) => compare(got, want).rel;

/** out [M, N] = a [M, K] @ b [K, N] in f32 on both, for each size, reps timed pairs after warm-up. */
export async function tfjsMatmulBaseline(dev: WebGPUDevice, sizes: [number, number, number][], reps: number): Promise<BaselineRow[]> {
  const { tf, flush } = await tfjsOn(dev);
  const rows: BaselineRow[] = [];
  for (const [m, n, k] of sizes) {
    let seed = 42;
    const rand = (count: number) => Float32Array.from({ length: count }, () => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed / 2 ** 32 - 0.5;
    });
    const aHost = rand(m * k), bHost = rand(k * n);
    const view = (shape: number[], data?: Float32Array): View => {
      const buf = dev.alloc(shape.reduce((x, y) => x * y, 1) * 4);
      if (data) dev.write(buf, 0, data);
      return { buf, dtype: 'f32', shape, strides: [shape[1]! * shape[2]!, shape[2]!, 1], offset: 0 };
    };
    const a = view([1, m, k], aHost), b = view([1, k, n], bHost), out = view([1, m, n]);
    const ta = tf.tensor2d(aHost, [m, k]), tb = tf.tensor2d(bHost, [k, n]);

    const runOurs = async () => {
      await dev.sync();
      const t0 = performance.now();
      dev.matmul(a, b, out);
      await dev.sync();
      return performance.now() - t0;
    };
    const runTfjs = async () => {
      await dev.gpu.queue.onSubmittedWorkDone();
      const t0 = performance.now();
      const c = tf.matMul(ta, tb);
      flush();
      await dev.gpu.queue.onSubmittedWorkDone();
      const ms = performance.now() - t0;
      c.dispose();
      return ms;
    };

    // Correctness first: both against each other and against float64 on a few entries.
    await runOurs();
    const ours = new Float32Array((await dev.read(out.buf, 0, m * n * 4)).buffer);
    const c = tf.matMul(ta, tb);
    const theirs = (await c.data()) as Float32Array;
    c.dispose();
    const spots = Array.from({ length: 64 }, (_, t) => [(t * 7919) % m, (t * 104729) % n] as const);
    const exact = spots.map(([i, j]) => {
      let s = 0;
      for (let l = 0; l < k; l++) s += aHost[i * k + l]! * bHost[l * n + j]!;
      return s;
    });
    const oursSpotError = relL2(spots.map(([i, j]) => ours[i * n + j]!), exact);
    const tfjsSpotError = relL2(spots.map(([i, j]) => theirs[i * n + j]!), exact);

    await runTfjs(); // warm-up (tfjs compiles its pipeline on first use)
    await runOurs();
    const tfjsTimes: number[] = [], oursTimes: number[] = [];
    for (let r = 0; r < reps; r++) {
      tfjsTimes.push(await runTfjs());
      oursTimes.push(await runOurs());
    }
    const oursMs = median(oursTimes), tfjsMs = median(tfjsTimes), flops = 2 * m * n * k;
    rows.push({
      m, n, k, oursMs, tfjsMs,
      oursGflops: flops / oursMs / 1e6,
      tfjsGflops: flops / tfjsMs / 1e6,
      ratio: tfjsMs / oursMs,
      tfjsVsOurs: relL2(theirs, ours),
      oursSpotError, tfjsSpotError, reps,
    });
    [a, b, out].forEach((v) => dev.free(v.buf));
    ta.dispose();
    tb.dispose();
  }
  return rows;
}
