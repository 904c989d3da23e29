// Unit tests of the host generator: state save/restore, determinism, word accounting, argument
// errors. Bit-exactness against torch itself is test/golden/rng.test.ts.
import { describe, expect, test } from 'vitest';
import { fma } from '../src/rng/glibc_math.ts';
import {
  DEFAULT_SEED, distributedSamplerIndices, Generator, int64Random, rand, randint, randn, randperm, randpermInsideOut, STATE_BYTES,
} from '../src/rng/index.ts';

/** Engine words consumed by `draw`: how many random() calls take a twin generator's engine (the
 * state bytes before the normal cache) to the same place. */
function wordsUsed(seed: number, draw: (g: Generator) => unknown): number {
  const g = new Generator(seed);
  draw(g);
  const engine = (x: Generator) => x.getState().subarray(0, 24 + 8 * 624);
  const twin = new Generator(seed);
  let n = 0;
  while (n < 10_000 && Buffer.compare(engine(twin), engine(g)) !== 0) {
    twin.random();
    n++;
  }
  return n;
}

describe('Generator', () => {
  test('mt19937 reference words (seed 5489, the classic test vector) and u32 range', () => {
    const g = new Generator(5489);
    expect([g.random(), g.random(), g.random()]).toEqual([3499211612, 581869302, 3890346734]);
    for (let i = 0; i < 2000; i++) {
      const w = g.random();
      expect(Number.isInteger(w) && w >= 0 && w < 2 ** 32).toBe(true);
    }
  });

  test('the engine sees only the low 32 bits of the seed; initialSeed keeps all 64', () => {
    const a = new Generator(2n ** 32n + 5n);
    const b = new Generator(5);
    expect(a.initialSeed()).toBe(2n ** 32n + 5n);
    expect(Array.from({ length: 700 }, () => a.random())).toEqual(Array.from({ length: 700 }, () => b.random()));
    expect(new Generator().initialSeed()).toBe(DEFAULT_SEED);
    expect(new Generator(2n ** 64n - 1n).initialSeed()).toBe(2n ** 64n - 1n);
  });

  test('random64 is the first word high, the second low', () => {
    const a = new Generator(7);
    const b = new Generator(7);
    const hi = BigInt(b.random());
    const lo = BigInt(b.random());
    expect(a.random64()).toBe((hi << 32n) | lo);
  });

  test('same seed, same calls, same bits; generators do not share state', () => {
    const draw = (g: Generator) => [randn(g, [3]), randn(g, [40]), rand(g, [5], 'f64'), randperm(g, 20), randint(g, 0, 9, [4])];
    const a = new Generator(123);
    const other = new Generator(123);
    randn(other, [1000]); // drawing from another generator must not disturb `a`
    expect(draw(a)).toEqual(draw(new Generator(123)));
    expect(draw(new Generator(124))).not.toEqual(draw(new Generator(123)));
  });

  test('manualSeed resets the engine and the cached normal', () => {
    const g = new Generator(3);
    randn(g, [1]); // leaves r*sin cached
    expect(g.nextDoubleNormal).not.toBeNull();
    g.manualSeed(3);
    expect(g.nextDoubleNormal).toBeNull();
    expect(g.getState()).toEqual(new Generator(3).getState());
  });

  test('getState / setState round trip mid-stream, cached normal included', () => {
    const g = new Generator(42);
    randn(g, [5]); // odd count: a cached normal stays behind
    for (let i = 0; i < 1000; i++) g.random(); // past a twist
    const saved = g.getState();
    expect(saved.byteLength).toBe(STATE_BYTES);
    const expected = [randn(g, [3]), randn(g, [33], 'bf16'), randperm(g, 50), int64Random(g)];
    const h = new Generator(0);
    h.setState(saved);
    expect(h.initialSeed()).toBe(42n);
    expect(h.getState()).toEqual(saved);
    expect([randn(h, [3]), randn(h, [33], 'bf16'), randperm(h, 50), int64Random(h)]).toEqual(expected);
  });

  test('the state layout: seed, left, seeded, next, u64 words, normal cache, zero padding', () => {
    const g = new Generator(0x1_0000_0002n);
    randn(g, [1]);
    const s = g.getState();
    const dv = new DataView(s.buffer);
    expect(dv.getBigUint64(0, true)).toBe(0x1_0000_0002n);
    expect([dv.getInt32(8, true), dv.getInt32(12, true), Number(dv.getBigUint64(16, true))]).toEqual([621, 1, 4]);
    for (let j = 0; j < 624; j++) expect(dv.getUint32(24 + 8 * j + 4, true)).toBe(0); // high halves of the u64 words
    expect(dv.getInt32(5040, true)).toBe(1);
    expect(dv.getFloat64(5024, true)).toBe(g.nextDoubleNormal);
    expect([dv.getFloat64(5016, true), dv.getFloat64(5032, true)]).toEqual([0, 0]); // normal_x, normal_rho
    expect(Array.from(s.subarray(5044, 5056))).toEqual(new Array(12).fill(0)); // padding, no float cache
  });

  test('setState rejects bad sizes and invalid engine fields', () => {
    const g = new Generator(1);
    expect(() => g.setState(new Uint8Array(100))).toThrow(/5056 bytes/);
    const bad = (patch: (dv: DataView) => void) => {
      const s = new Generator(1).getState();
      patch(new DataView(s.buffer));
      return () => g.setState(s);
    };
    expect(bad((dv) => dv.setInt32(8, 0, true))).toThrow(/invalid mt19937 state/);
    expect(bad((dv) => dv.setInt32(8, 625, true))).toThrow(/invalid mt19937 state/);
    expect(bad((dv) => dv.setInt32(12, 0, true))).toThrow(/invalid mt19937 state/);
    expect(bad((dv) => dv.setBigUint64(16, 625n, true))).toThrow(/invalid mt19937 state/);
  });

  test('seed argument errors', () => {
    expect(() => new Generator(-1)).toThrow(RangeError);
    expect(() => new Generator(1.5)).toThrow(RangeError);
    expect(() => new Generator(2n ** 64n)).toThrow(RangeError);
  });
});

describe('draw kernels: word accounting and shapes', () => {
  test('randn: scalar path below 16 elements (cache shared), vector path from 16 (+16 on a tail)', () => {
    expect(wordsUsed(0, (g) => randn(g, [1]))).toBe(4);
    expect(wordsUsed(0, (g) => randn(g, [2]))).toBe(4);
    expect(wordsUsed(0, (g) => randn(g, [15]))).toBe(32);
    expect(wordsUsed(0, (g) => randn(g, [4, 4]))).toBe(16);
    expect(wordsUsed(0, (g) => randn(g, [17]))).toBe(33);
    expect(wordsUsed(0, (g) => randn(g, [17], 'bf16'))).toBe(33);
    expect(wordsUsed(0, (g) => randn(g, [40], 'f64'))).toBe(112);
    expect(wordsUsed(0, (g) => randn(g, [16], 'f32', { contiguous: false }))).toBe(32);
    expect(wordsUsed(0, (g) => randn(g, [0]))).toBe(0);
  });

  test('randn: element types, finite values, bf16 words', () => {
    const g = new Generator(9);
    expect(randn(g, [2, 3])).toBeInstanceOf(Float32Array);
    expect(randn(g, [20], 'f64')).toBeInstanceOf(Float64Array);
    const b = randn(g, [1, 16, 4, 4], 'bf16');
    expect(b).toBeInstanceOf(Uint16Array);
    expect(b.length).toBe(256);
    const f = randn(g, [1, 2025, 64]) as Float32Array;
    expect(f.every(Number.isFinite)).toBe(true);
    const mean = f.reduce((s, x) => s + x, 0) / f.length;
    const variance = f.reduce((s, x) => s + (x - mean) ** 2, 0) / f.length;
    expect(Math.abs(mean)).toBeLessThan(0.02);
    expect(Math.abs(variance - 1)).toBeLessThan(0.02);
  });

  test('rand: one word per element (two for f64), values in [0, 1)', () => {
    expect(wordsUsed(0, (g) => rand(g, [10]))).toBe(10);
    expect(wordsUsed(0, (g) => rand(g, [10], 'f64'))).toBe(20);
    const r = rand(new Generator(1), [1000]) as Float32Array;
    expect(r.every((x) => x >= 0 && x < 1)).toBe(true);
  });

  test('randint: 32-bit draws below a 2^32 range, 64-bit draws from it; int64 results', () => {
    expect(wordsUsed(0, (g) => randint(g, 0, 100, [10]))).toBe(10);
    expect(wordsUsed(0, (g) => randint(g, 0, 2n ** 32n, [10]))).toBe(20);
    const r = randint(new Generator(2), -5, 5, [500]);
    expect(r).toBeInstanceOf(BigInt64Array);
    expect(Array.from(r).every((x) => x >= -5n && x < 5n)).toBe(true);
    const g = new Generator(4);
    const twin = new Generator(4);
    expect(randint(g, 10, 11, [3])).toEqual(BigInt64Array.of(10n, 10n, 10n));
    expect(randint(twin, -(2n ** 63n), 2n ** 63n - 1n, [2]).length).toBe(2);
    expect(() => randint(g, 5, 5, [1])).toThrow(/low < high/);
    expect(() => randint(g, 0, 2n ** 64n, [1])).toThrow(RangeError);
    expect(() => randint(g, 0.5, 3, [1])).toThrow(RangeError);
  });

  test('randperm: a permutation from n - 1 words; shape errors', () => {
    expect(wordsUsed(0, (g) => randperm(g, 100))).toBe(99);
    expect(wordsUsed(0, (g) => randperm(g, 1))).toBe(0);
    expect(randperm(new Generator(0), 0)).toEqual(new Int32Array(0));
    const p = Array.from(randperm(new Generator(5), 1000)).sort((a, b) => a - b);
    expect(p).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(() => randperm(new Generator(0), -1)).toThrow(RangeError);
    expect(() => randperm(new Generator(0), 2 ** 31)).toThrow(RangeError);
    expect(() => randn(new Generator(0), [2, -1])).toThrow(/invalid shape/);
    expect(() => randn(new Generator(0), [1.5])).toThrow(/invalid shape/);
  });

  test('randperm for n >= 2^32/20: inside-out shuffle, checked against a BigInt transcription of torch', () => {
    for (const n of [1, 2, 7, 1000]) {
      const g = new Generator(11);
      const ref = new Array<number>(n);
      for (let i = 0; i < n; i++) {
        const z = Number(g.random64() % BigInt(i + 1));
        ref[i] = ref[z]!;
        ref[z] = i;
      }
      expect(Array.from(randpermInsideOut(new Generator(11), n))).toEqual(ref);
    }
  });

  test('int64Random: random64() % 2^63, two words', () => {
    const g = new Generator(0);
    const twin = new Generator(0);
    expect(int64Random(g)).toBe(twin.random64() & (2n ** 63n - 1n));
    expect(wordsUsed(0, int64Random)).toBe(2);
  });
});

describe('glibc fma emulation', () => {
  test('single rounding where a*b + c in doubles rounds twice', () => {
    expect(fma(1 + 2 ** -52, 1 - 2 ** -52, -1)).toBe(-(2 ** -104));
    expect(fma(2 ** 27 + 1, 2 ** 27 + 1, 0)).toBe((2 ** 27 + 1) * (2 ** 27 + 1));
    // Exactly 1 + 2^-53 + 2^-104: just above the midpoint, so it rounds up; the rounded product
    // drops the 2^-104 and the sum then ties down to 1.
    expect(fma(1 + 2 ** -52, 1 + 2 ** -52, -3 * 2 ** -53)).toBe(1 + 2 ** -52);
    expect((1 + 2 ** -52) * (1 + 2 ** -52) - 3 * 2 ** -53).toBe(1);
  });
});

describe('distributedSamplerIndices', () => {
  test('ranks partition the padded list; padding repeats from the start, also several times over', () => {
    const all = [0, 1, 2].map((rank) => distributedSamplerIndices({ datasetLength: 10, numReplicas: 3, rank, shuffle: false }));
    expect(all).toEqual([[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]);
    const small = Array.from({ length: 8 }, (_, rank) => distributedSamplerIndices({ datasetLength: 3, numReplicas: 8, rank, shuffle: false }));
    expect(small.flat()).toEqual([0, 1, 2, 0, 1, 2, 0, 1]);
    const dropped = [0, 1, 2].map((rank) => distributedSamplerIndices({ datasetLength: 10, numReplicas: 3, rank, shuffle: false, dropLast: true }));
    expect(dropped).toEqual([[0, 3, 6], [1, 4, 7], [2, 5, 8]]);
  });

  test('shuffle uses its own generator seeded seed + epoch', () => {
    const opts = { datasetLength: 50, numReplicas: 2, rank: 1, seed: 7, epoch: 3 };
    const perm = Array.from(randperm(new Generator(10), 50));
    expect(distributedSamplerIndices(opts)).toEqual(perm.filter((_, i) => i % 2 === 1));
    expect(distributedSamplerIndices({ ...opts, epoch: 4 })).not.toEqual(distributedSamplerIndices(opts));
  });

  test('argument errors', () => {
    expect(() => distributedSamplerIndices({ datasetLength: 10, numReplicas: 2, rank: 2 })).toThrow(/invalid rank/);
    expect(() => distributedSamplerIndices({ datasetLength: 10, numReplicas: 0, rank: 0 })).toThrow(/numReplicas/);
    expect(() => distributedSamplerIndices({ datasetLength: -1, numReplicas: 1, rank: 0 })).toThrow(/datasetLength/);
    expect(() => distributedSamplerIndices({ datasetLength: 10, numReplicas: 1, rank: 0.5 })).toThrow(/rank/);
  });
});
