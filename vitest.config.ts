import { defineConfig } from 'vitest/config';

// Two projects: `unit` (our own references, finite differences, round trips) and `golden`
// (comparisons with the PyTorch-dumped vectors under GOLDEN_DIR, default ../shared/golden).
// One WebGPU device per test file; files run in forks so a lost device cannot take the others down.
export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    env: { XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' },
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/**/*.test.ts'], exclude: ['test/golden/**'] } },
      { extends: true, test: { name: 'golden', include: ['test/golden/**/*.test.ts'] } },
    ],
  },
});
