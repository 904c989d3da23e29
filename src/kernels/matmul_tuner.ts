// Picks the fastest matmul variant for an adapter by timing the candidates on a few representative
// problems, and caches the pick in memory (per device) and on disk
// (~/.cache/flux-grpo/matmul-<hash of the adapter>.json) so that later processes skip the timing.
// A candidate that fails to compile or to run is dropped and never retried; one that kills the
// process is found by the marker written before each of its runs, and dropped by the next process.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Device, View } from '../device/device.ts';
import type { GpuContext } from '../device/webgpu/context.ts';
import { MATMUL_VARIANTS, type MatmulVariant, gpuMatmul, matmulWgsl, setMatmulVariant, variantNamed } from './matmul.ts';

export interface TuneRecord {
  adapter: string;
  /** Hash of the candidates' WGSL: a record written for other kernels is stale. */
  kernels: string;
  /** The fastest candidate; null when none ran (then gpuMatmul guesses from the adapter's name). */
  variant: string | null;
  /** Relative cost of each finalist: its median time over the fastest one's, summed over the problems. */
  score: Record<string, number>;
  /** Median ms of each candidate that ran on the square problem. */
  ms: Record<string, number>;
  /** Size of the square problem. */
  size: number;
  /** Candidates that failed to compile or run, or died with the process: never retried. */
  failed: string[];
  /** The candidate a process is running right now; left behind if that process died in it. */
  pending?: { variant: string; pid: number };
  /** Where the pick came from in this process. */
  source?: 'env' | 'cache' | 'timed';
}

export interface TuneOptions {
  /** Folder of the cache (default ~/.cache/flux-grpo). */
  cacheDir?: string;
  /** Candidates (default MATMUL_VARIANTS). */
  variants?: readonly MatmulVariant[];
  /** Square problem size; default: doubled from 256 until the first candidate takes >= 8 ms. */
  size?: number;
}

const hash = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 16);

/** The layout of every tuning problem: nn.Linear's (b transposed), all operands vec4-aligned. */
const TUNED_LAYOUT = { transA: false, transB: true, vecA: true, vecB: true };

function kernelsHash(variants: readonly MatmulVariant[]): string {
  return hash(variants.map((v) => `${v.name}\n${matmulWgsl(v, TUNED_LAYOUT)}`).join('\n'));
}

function readRecord(file: string): TuneRecord | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as TuneRecord;
  } catch {
    return null;
  }
}

/** Written through a rename, so a concurrent reader never sees half a file; the cache is optional. */
function writeRecord(file: string, r: TuneRecord): void {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `${JSON.stringify(r, null, 2)}\n`);
    fs.renameSync(tmp, file);
  } catch {
    // An unwritable cache only means the next process times the candidates again.
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A matmul problem on the device: out [1, M, N] = A [1, M, K] @ B [1, N, K]^T (the nn.Linear layout). */
function problem(dev: GpuContext & Device, m: number, n: number, k: number) {
  const view = (shape: number[]): View => {
    const count = shape.reduce((x, y) => x * y, 1);
    const buf = dev.alloc(count * 4);
    // Small non-zero values: denormals or NaNs would slow a CPU implementation down.
    dev.write(buf, 0, Float32Array.from({ length: count }, (_, i) => ((i * 7919) % 101) / 101 - 0.5));
    return { buf, dtype: 'f32', shape, strides: [shape[1]! * shape[2]!, shape[2]!, 1], offset: 0 };
  };
  const views = { a: view([1, m, k]), b: view([1, n, k]), out: view([1, m, n]) };
  return {
    run: (v: MatmulVariant) => gpuMatmul(dev, views.a, views.b, views.out, { transB: true }, { variant: v }),
    free: () => Object.values(views).forEach((x) => dev.free(x.buf)),
  };
}

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;

/**
 * Sets the matmul variant of this device: FLUX_GRPO_MATMUL_VARIANT when set, else the cached pick
 * for this adapter, else the fastest candidate by measurement (then cached).
 */
export async function tuneMatmul(dev: GpuContext & Device, opts: TuneOptions = {}): Promise<TuneRecord> {
  const variants = opts.variants ?? MATMUL_VARIANTS;
  const kernels = kernelsHash(variants);
  const base: TuneRecord = { adapter: dev.adapterKey, kernels, variant: null, score: {}, ms: {}, size: 0, failed: [] };
  const forced = process.env.FLUX_GRPO_MATMUL_VARIANT;
  if (forced) {
    setMatmulVariant(dev, forced);
    return { ...base, variant: variantNamed(forced).name, source: 'env' };
  }

  const file = path.join(opts.cacheDir ?? path.join(os.homedir(), '.cache', 'flux-grpo'), `matmul-${hash(dev.adapterKey)}.json`);
  const prev = readRecord(file);
  const failed = new Set<string>();
  if (prev && prev.kernels === kernels && prev.adapter === dev.adapterKey && Array.isArray(prev.failed)) {
    prev.failed.forEach((f) => failed.add(f));
    const crashed = prev.pending && !alive(prev.pending.pid) ? prev.pending.variant : null;
    if (crashed) failed.add(crashed);
    else if (prev.variant && !failed.has(prev.variant)) {
      setMatmulVariant(dev, prev.variant);
      return { ...prev, pending: undefined, source: 'cache' };
    }
  }

  const record: TuneRecord = { ...base, failed: [...failed], source: 'timed' };
  const save = (pending?: string) => writeRecord(file, { ...record, failed: [...failed], pending: pending ? { variant: pending, pid: process.pid } : undefined, source: undefined });
  /** Runs fn for candidate v with the crash marker set; a thrown error drops v. */
  const attempt = async <T>(v: MatmulVariant, fn: () => Promise<T>): Promise<T | null> => {
    save(v.name);
    try {
      return await fn();
    } catch {
      failed.add(v.name);
      return null;
    }
  };

  // Compile and run each candidate once (a failure drops it); the first that works sizes the problem.
  const probe = problem(dev, 64, 64, 64);
  const working: MatmulVariant[] = [];
  for (const v of variants.filter((x) => !failed.has(x.name))) {
    const ok = await attempt(v, async () => {
      // Compiled in an error scope of its own: a failure is caught here, not printed by Dawn.
      dev.gpu.pushErrorScope('validation');
      dev.pipeline(matmulWgsl(v, TUNED_LAYOUT));
      const error = await dev.gpu.popErrorScope();
      if (error) throw new Error(error.message);
      probe.run(v);
      await dev.sync();
      return true;
    });
    if (ok) working.push(v);
  }
  probe.free();
  let size = opts.size ?? 256;
  while (working.length > 0 && opts.size === undefined && size < 2048) {
    const p = problem(dev, size, size, size);
    // The faster of two runs: a first run also pays for first-use costs.
    const ms = await attempt(working[0]!, async () => Math.min(await dev.time(() => p.run(working[0]!)), await dev.time(() => p.run(working[0]!))));
    p.free();
    if (ms === null || ms >= 8) break;
    size *= 2;
  }
  const candidates = working.filter((v) => !failed.has(v.name));

  // Time the candidates in alternation (these machines are noisy). The first round doubles as a
  // warm-up; after it, candidates over 3x slower than the fastest on the square problem drop out.
  const problems = [problem(dev, size, size, size), problem(dev, 16, size, size)];
  const times = new Map<string, number[][]>(candidates.map((v) => [v.name, problems.map(() => [])]));
  const timesOf = (v: MatmulVariant, i: number) => times.get(v.name)![i]!;
  /** Median over the rounds after the first, when there were any. */
  const med = (v: MatmulVariant, i: number) => median(timesOf(v, i).length > 1 ? timesOf(v, i).slice(1) : timesOf(v, i));
  let racing = candidates;
  for (let round = 0; round < 4; round++) {
    for (const v of racing) {
      for (const [i, p] of problems.entries()) {
        const ms = await attempt(v, () => dev.time(() => p.run(v)));
        if (ms !== null) timesOf(v, i).push(ms);
      }
    }
    racing = racing.filter((v) => !failed.has(v.name));
    if (round === 0) {
      const fastest = Math.min(...racing.map((v) => med(v, 0)));
      racing = racing.filter((v) => med(v, 0) <= 3 * fastest);
    }
  }
  problems.forEach((p) => p.free());

  for (const v of candidates) if (!failed.has(v.name)) record.ms[v.name] = med(v, 0);
  const best = problems.map((_, i) => Math.min(...racing.map((v) => med(v, i))));
  for (const v of racing) record.score[v.name] = problems.reduce((s, _, i) => s + med(v, i) / best[i]!, 0);
  record.variant = racing.reduce<MatmulVariant | null>((b, v) => (!b || record.score[v.name]! < record.score[b.name]! ? v : b), null)?.name ?? null;
  record.size = size;
  record.failed = [...failed];
  save();
  if (record.variant) setMatmulVariant(dev, record.variant);
  return record;
}
