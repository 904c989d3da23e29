// The host generator against torch 2.6's CPU generator, raw bits: every call of calls.json replayed
// after manual_seed for every seed_<s>.safetensors of each rng_torch_cpu case (the expressions are
// parsed, not listed here), the generator state after each call, randn_like streams, the
// DistributedSampler orders and the DataLoader's base-seed draw.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { readSafetensors, type StDType, type StFile, type StTensor } from '../../src/io/safetensors.ts';
import { distributedSamplerIndices, Generator, int64Random, rand, randint, randn, randperm, type RandDType } from '../../src/rng/index.ts';
import { goldenCases, readJson } from './golden.ts';

// ---- a parser for the call expressions of calls.json: torch.fn(args, key=value), with integer
// arithmetic (+ - * **), tuples and torch.<dtype> names.

type Value = bigint | Value[] | { dtype: string };

function tokenize(src: string): string[] {
  return src.match(/\*\*|[A-Za-z_][A-Za-z0-9_.]*|\d+|[-+*(),=]|\S/g) ?? [];
}

class Parser {
  private pos = 0;
  constructor(private readonly tokens: string[], private readonly src: string) {}
  private peek(): string | undefined { return this.tokens[this.pos]; }
  private take(expected?: string): string {
    const t = this.tokens[this.pos++];
    if (t === undefined || (expected !== undefined && t !== expected)) throw new Error(`cannot parse '${this.src}' at token ${this.pos}`);
    return t;
  }
  call(): { fn: string; args: Value[]; kwargs: Record<string, Value> } {
    const name = this.take();
    if (!name.startsWith('torch.')) throw new Error(`not a torch call: ${this.src}`);
    this.take('(');
    const args: Value[] = [];
    const kwargs: Record<string, Value> = {};
    while (this.peek() !== ')') {
      if (this.tokens[this.pos + 1] === '=') {
        const key = this.take();
        this.take('=');
        kwargs[key] = this.value();
      } else {
        args.push(this.value());
      }
      if (this.peek() !== ')') this.take(',');
    }
    this.take(')');
    if (this.pos !== this.tokens.length) throw new Error(`trailing tokens in ${this.src}`);
    return { fn: name.slice('torch.'.length), args, kwargs };
  }
  private value(): Value {
    const t = this.peek();
    if (t !== undefined && t.startsWith('torch.')) return { dtype: this.take().slice('torch.'.length) };
    return this.sum();
  }
  private sum(): Value {
    let v = this.product();
    while (this.peek() === '+' || this.peek() === '-') {
      const op = this.take();
      const r = asInt(this.product());
      v = op === '+' ? asInt(v) + r : asInt(v) - r;
    }
    return v;
  }
  private product(): Value {
    let v = this.unary();
    while (this.peek() === '*') {
      this.take();
      v = asInt(v) * asInt(this.unary());
    }
    return v;
  }
  /** Python's precedence: -2**40 is -(2**40), and 2**-1 is not an integer. */
  private unary(): Value {
    if (this.peek() !== '-') return this.power();
    this.take();
    return -asInt(this.unary());
  }
  private power(): Value {
    const base = this.atom();
    if (this.peek() !== '**') return base;
    this.take();
    const exp = asInt(this.unary());
    if (exp < 0n) throw new Error(`negative power in ${this.src}`);
    return asInt(base) ** exp;
  }
  private atom(): Value {
    const t = this.take();
    if (/^\d+$/.test(t)) return BigInt(t);
    if (t !== '(') throw new Error(`unexpected '${t}' in ${this.src}`);
    // A parenthesised list is a tuple when it has a comma (or is empty), else a grouped value.
    const items: Value[] = [];
    let comma = false;
    while (this.peek() !== ')') {
      items.push(this.value());
      if (this.peek() !== ')') { this.take(','); comma = true; }
    }
    this.take(')');
    return comma || items.length !== 1 ? items : items[0]!;
  }
}

function asInt(v: Value): bigint {
  if (typeof v !== 'bigint') throw new Error(`expected an integer, got ${JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}` : x))}`);
  return v;
}

/** Sizes given as one tuple or as several integers (torch.randn(2, 3) == torch.randn((2, 3))). */
function shapeOf(args: Value[]): number[] {
  const dims = args.length === 1 && Array.isArray(args[0]) ? args[0] : args;
  return dims.map((d) => Number(asInt(d)));
}

const TORCH_FLOAT: Record<string, RandDType> = {
  float32: 'f32', float: 'f32', bfloat16: 'bf16', float16: 'f16', half: 'f16', float64: 'f64', double: 'f64',
};

function floatDType(kwargs: Record<string, Value>): RandDType {
  const d = kwargs.dtype;
  if (d === undefined) return 'f32';
  const name = typeof d === 'object' && 'dtype' in d ? d.dtype : undefined;
  const t = name !== undefined ? TORCH_FLOAT[name] : undefined;
  if (t === undefined) throw new Error(`unsupported dtype ${JSON.stringify(d)}`);
  return t;
}

function int64Only(kwargs: Record<string, Value>): void {
  const d = kwargs.dtype;
  if (d !== undefined && !(typeof d === 'object' && 'dtype' in d && (d.dtype === 'int64' || d.dtype === 'long'))) {
    throw new Error(`unsupported integer dtype ${JSON.stringify(d)}`);
  }
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

const ST_OF: Record<RandDType, StDType> = { f32: 'F32', bf16: 'BF16', f16: 'F16', f64: 'F64' };

/** Runs one call expression on g; returns the result's safetensors dtype and raw bytes. */
function replay(g: Generator, expr: string): { dtype: StDType; bytes: Uint8Array } {
  const { fn, args, kwargs } = new Parser(tokenize(expr), expr).call();
  switch (fn) {
    case 'randn':
    case 'rand': {
      const dtype = floatDType(kwargs);
      const shape = shapeOf(kwargs.size !== undefined ? [kwargs.size] : args);
      return { dtype: ST_OF[dtype], bytes: bytesOf((fn === 'randn' ? randn : rand)(g, shape, dtype)) };
    }
    case 'randint': {
      int64Only(kwargs);
      const pos = [...args];
      const size = kwargs.size ?? pos.pop();
      if (size === undefined) throw new Error(`randint without a size: ${expr}`);
      const high = kwargs.high ?? pos.pop();
      const low = kwargs.low ?? pos.pop() ?? 0n;
      if (high === undefined || pos.length > 0) throw new Error(`cannot read randint arguments: ${expr}`);
      return { dtype: 'I64', bytes: bytesOf(randint(g, asInt(low), asInt(high), shapeOf([size]))) };
    }
    case 'randperm': {
      int64Only(kwargs);
      if (args.length !== 1) throw new Error(`cannot read randperm arguments: ${expr}`);
      const perm = randperm(g, Number(asInt(args[0]!)));
      return { dtype: 'I64', bytes: bytesOf(BigInt64Array.from(perm, (v) => BigInt(v))) };
    }
    default:
      throw new Error(`unsupported call ${expr}`);
  }
}

// ---- comparisons

const ELEMENT_BYTES: Partial<Record<StDType, number>> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8 };

function expectBits(what: string, golden: StTensor | undefined, dtype: StDType, bytes: Uint8Array): void {
  expect(golden, `${what}: missing in the golden file`).toBeDefined();
  expect(dtype, `${what}: dtype`).toBe(golden!.dtype);
  expect(bytes.byteLength, `${what}: byte length`).toBe(golden!.bytes.byteLength);
  const size = ELEMENT_BYTES[dtype] ?? 1;
  let bad = 0;
  let first = -1;
  for (let i = 0; i < bytes.byteLength; i += size) {
    for (let k = 0; k < size; k++) {
      if (bytes[i + k] !== golden!.bytes[i + k]) {
        if (first < 0) first = i / size;
        bad++;
        break;
      }
    }
  }
  expect(bad === 0 ? 'bit-identical' : `${bad} of ${bytes.byteLength / size} elements differ, first at ${first}`, what).toBe('bit-identical');
}

/** The fields of a 5056-byte CPUGeneratorImplState that calls.json records after each call. */
function stateSummary(state: Uint8Array) {
  const dv = new DataView(state.buffer, state.byteOffset, state.byteLength);
  const normalValid = dv.getInt32(5040, true) !== 0;
  const floatValid = state[5052] !== 0;
  return {
    bytes: state.byteLength,
    the_initial_seed: dv.getBigUint64(0, true),
    left: dv.getInt32(8, true),
    seeded: dv.getInt32(12, true),
    next: Number(dv.getBigUint64(16, true)),
    state_words_first4: [0, 1, 2, 3].map((j) => Number(dv.getBigUint64(24 + 8 * j, true))),
    cached_double_normal_valid: normalValid,
    cached_double_normal: normalValid ? dv.getFloat64(5024, true) : 0,
    cached_float_normal_valid: floatValid,
    cached_float_normal: floatValid ? dv.getFloat32(5048, true) : 0,
  };
}

/** The recorded summary, with the initial seed read exactly from the raw JSON digits. */
function expectState(what: string, g: Generator, recorded: Record<string, unknown>, seed: bigint): void {
  const ours = stateSummary(g.getState());
  const fields = Object.keys(recorded).filter((k) => k in ours) as (keyof typeof ours)[];
  expect(fields.length, `${what}: no comparable state fields`).toBeGreaterThan(0);
  for (const k of fields) {
    const want = k === 'the_initial_seed' ? seed : recorded[k];
    expect(ours[k], `${what}: ${k}`).toEqual(want);
  }
}

const SEED_FILE = /^seed_(\d+)\.safetensors$/;

for (const dir of goldenCases('rng_torch_cpu')) {
  const name = basename(dir);
  const calls = readJson<{ calls: { index: number; tensor: string; expr: string }[]; per_seed?: Record<string, any> }>(join(dir, 'calls.json'));
  const seedFiles = readdirSync(dir).filter((f) => SEED_FILE.test(f)).sort();

  describe(`rng golden ${name}`, () => {
    test(`${name}: has seed files and calls`, () => {
      expect(seedFiles.length).toBeGreaterThan(0);
      expect(calls.calls.length).toBeGreaterThan(0);
    });

    for (const file of seedFiles) {
      const seed = BigInt(SEED_FILE.exec(file)![1]!);
      const recorded = calls.per_seed?.[seed.toString()];
      let st: StFile;
      const load = () => (st ??= readSafetensors(join(dir, file)));

      test(`${name} seed ${seed}: first engine words and get_state() after manual_seed`, () => {
        const g = new Generator(seed);
        expect(g.initialSeed()).toBe(seed);
        const words = load().tensors.get('mt19937_first10_words');
        if (words) expectBits(`${name} seed ${seed} mt19937 words`, words, 'I64', bytesOf(BigInt64Array.from({ length: words.shape[0]! }, () => BigInt(g.random()))));
        const state = load().tensors.get('get_state_after_manual_seed');
        if (state) expectBits(`${name} seed ${seed} get_state`, state, 'U8', new Generator(seed).getState());
        expect(words ?? state, 'neither engine words nor state recorded').toBeDefined();
      });

      test(`${name} seed ${seed}: every call of calls.json, in order, bit for bit`, () => {
        const g = new Generator(seed);
        for (const call of calls.calls) {
          const what = `${name} seed ${seed} call ${call.index} ${call.expr}`;
          const out = replay(g, call.expr);
          expectBits(what, load().tensors.get(call.tensor), out.dtype, out.bytes);
          const after = recorded?.per_call?.[call.index];
          if (after) {
            expect(after.name).toBe(call.tensor);
            expectState(what, g, after.state_after, seed);
          }
        }
      });

      test(`${name} seed ${seed}: state restored mid-sequence replays the rest`, () => {
        const g = new Generator(seed);
        const half = Math.floor(calls.calls.length / 2);
        for (const call of calls.calls.slice(0, half)) replay(g, call.expr);
        const resumed = new Generator(12345);
        resumed.setState(g.getState());
        for (const call of calls.calls.slice(half)) {
          const out = replay(resumed, call.expr);
          expectBits(`${name} seed ${seed} resumed call ${call.index}`, load().tensors.get(call.tensor), out.dtype, out.bytes);
        }
      });
    }

    const likePath = join(dir, 'randn_like.safetensors');
    if (existsSync(likePath)) {
      test(`${name}: randn_like draws and DanceGRPO-like noise streams`, () => {
        const like = readSafetensors(likePath);
        const covered = new Set<string>();
        const dtypeOf = (t: StTensor): RandDType => {
          const d = (Object.keys(ST_OF) as RandDType[]).find((k) => ST_OF[k] === t.dtype);
          if (!d) throw new Error(`unexpected dtype ${t.dtype}`);
          return d;
        };
        for (const [key, t] of like.tensors) {
          let m = /^randn_like_transposed_.*_seed(\d+)$/.exec(key);
          if (m) {
            // randn_like(zeros(C, R).t()): strides (1, R), not contiguous, filled in memory order;
            // the golden tensor is stored in logical order.
            const [rows, cols] = t.shape as [number, number];
            const mem = randn(new Generator(BigInt(m[1]!)), t.shape, dtypeOf(t), { contiguous: false });
            const logical = mem.slice();
            for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) logical[i * cols + j] = mem[i + j * rows]!;
            expectBits(`${name} ${key}`, t, t.dtype, bytesOf(logical));
            covered.add(key);
            continue;
          }
          m = /^randn_like_.*_seed(\d+)$/.exec(key);
          if (m) {
            expectBits(`${name} ${key}`, t, t.dtype, bytesOf(randn(new Generator(BigInt(m[1]!)), t.shape, dtypeOf(t))));
            covered.add(key);
            continue;
          }
          m = /^stream_seed(\d+)_init_noise$/.exec(key);
          if (m) {
            // manual_seed; the initial noise; then randn_like per image and step, in that order.
            const seed = m[1]!;
            const g = new Generator(BigInt(seed));
            expectBits(`${name} ${key}`, t, t.dtype, bytesOf(randn(g, t.shape, dtypeOf(t))));
            covered.add(key);
            const steps = [...like.tensors.keys()]
              .map((k) => /^stream_seed(\d+)_img(\d+)_step(\d+)$/.exec(k))
              .filter((s): s is RegExpExecArray => s !== null && s[1] === seed)
              .sort((a, b) => Number(a[2]) - Number(b[2]) || Number(a[3]) - Number(b[3]));
            for (const s of steps) {
              const st = like.tensors.get(s[0])!;
              expectBits(`${name} ${s[0]}`, st, st.dtype, bytesOf(randn(g, st.shape, dtypeOf(st))));
              covered.add(s[0]);
            }
          }
        }
        expect([...like.tensors.keys()].filter((k) => !covered.has(k)), 'tensors this test does not know how to replay').toEqual([]);
      });
    }

    const defaultPath = join(dir, 'cpu_capability_default.safetensors');
    if (existsSync(defaultPath)) {
      // Our float32 vector path is the AVX2 kernel's (what AVX2 and AVX512 machines produce);
      // this file holds the non-AVX (ATEN_CPU_CAPABILITY=default, e.g. aarch64) bits we do not
      // reproduce. Each of its tensors must be a same-shaped draw that differs from the AVX2 one.
      test(`${name}: DEFAULT-capability draws differ from the AVX2 ones we reproduce`, () => {
        const other = readSafetensors(defaultPath);
        const files = new Map<string, StFile>();
        const file = (f: string) => files.get(f) ?? files.set(f, readSafetensors(join(dir, f))).get(f)!;
        for (const [key, t] of other.tensors) {
          // 'seed0__c03_randn_16' is c03_randn_16 of seed_0.safetensors; other names are randn_like's.
          const m = /^seed(\d+)__(.+)$/.exec(key);
          const avx2 = m ? file(`seed_${m[1]}.safetensors`).tensors.get(m[2]!) : file('randn_like.safetensors').tensors.get(key);
          expect(avx2, `${key}: no AVX2 counterpart`).toBeDefined();
          expect(avx2!.shape).toEqual(t.shape);
          expect(Buffer.compare(avx2!.bytes, t.bytes), `${key} should differ`).not.toBe(0);
        }
      });
    }

    const samplerPath = join(dir, 'distributed_sampler.json');
    if (existsSync(samplerPath)) {
      test(`${name}: DistributedSampler orders`, () => {
        const { cases } = readJson<{ cases: any[] }>(samplerPath);
        expect(cases.length).toBeGreaterThan(0);
        for (const c of cases) {
          const what = `${name} sampler ${JSON.stringify({ ...c, indices_per_rank: undefined, randperm_with_generator_seeded_seed_plus_epoch: undefined })}`;
          if (c.shuffle && c.randperm_with_generator_seeded_seed_plus_epoch) {
            expect(Array.from(randperm(new Generator(BigInt(c.seed) + BigInt(c.epoch)), c.dataset_len)), what).toEqual(c.randperm_with_generator_seeded_seed_plus_epoch);
          }
          expect(c.indices_per_rank.length, what).toBe(c.num_replicas);
          c.indices_per_rank.forEach((want: number[], rank: number) => {
            const got = distributedSamplerIndices({
              datasetLength: c.dataset_len, numReplicas: c.num_replicas, rank, shuffle: c.shuffle, seed: c.seed, epoch: c.epoch, dropLast: c.drop_last,
            });
            expect(got.length, what).toBe(c.num_samples_per_rank);
            expect(got, `${what} rank ${rank}`).toEqual(want);
          });
        }
      });
    }

    const loaderPath = join(dir, 'dataloader_base_seed.json');
    if (existsSync(loaderPath)) {
      test(`${name}: DataLoader base seed = int64 random_() on the run's generator`, () => {
        const raw = readFileSync(loaderPath, 'utf8');
        const { rows } = JSON.parse(raw) as { rows: any[] };
        // base_seed exceeds 2^53: read its digits from the text, in row order.
        const seeds = [...raw.matchAll(/"base_seed"\s*:\s*(\d+)/g)].map((m) => BigInt(m[1]!));
        const rowSeeds = [...raw.matchAll(/"seed"\s*:\s*(\d+)/g)].map((m) => BigInt(m[1]!));
        expect(seeds.length).toBe(rows.length);
        rows.forEach((row, i) => {
          const what = `${name} dataloader seed ${rowSeeds[i]}`;
          const g = new Generator(rowSeeds[i]!);
          expect(int64Random(g), what).toBe(seeds[i]);
          // Words consumed: how many engine words take a fresh generator to the same state.
          const probe = new Generator(rowSeeds[i]!);
          let used = 0;
          while (used < 64 && Buffer.compare(probe.getState(), g.getState()) !== 0) { probe.random(); used++; }
          expect(used, `${what}: words consumed`).toBe(row['mt_words_consumed_by_iter()']);
          const after4 = row['randn(4)_drawn_after_iter'];
          if (after4) expect(Array.from(randn(g, [after4.length]) as Float32Array), what).toEqual(after4);
        });
      });
    }
  });
}
