// Host RNG timing for a 720x720 FLUX run: the initial latent noise (1x16x90x90 bf16) and the
// per-step SDE noise (float32 [1, 2025, 64]). Run: npx tsx bench/rng.bench.ts
// Prints the median wall time and the median CPU time (the latter is stable on a busy machine).
import { Generator, randn, type RandDType } from '../src/rng/index.ts';

function medians(fn: () => void, reps: number): { wall: number; cpu: number } {
  fn(); // warm-up: JIT
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < reps; i++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    fn();
    wall.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  const mid = (a: number[]) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
  return { wall: mid(wall), cpu: mid(cpu) };
}

const g = new Generator(0);
const cases: [string, number[], RandDType][] = [
  ['initial noise 1x16x90x90 bf16', [1, 16, 90, 90], 'bf16'],
  ['step noise [1, 2025, 64] f32', [1, 2025, 64], 'f32'],
];
for (const [name, shape, dtype] of cases) {
  const { wall, cpu } = medians(() => randn(g, shape, dtype), 21);
  const n = shape.reduce((a, b) => a * b, 1);
  console.log(`randn ${name}: median ${wall.toFixed(2)} ms wall, ${cpu.toFixed(2)} ms CPU (${((n / cpu) * 1e-3).toFixed(1)} M elements/s of CPU)`);
}
