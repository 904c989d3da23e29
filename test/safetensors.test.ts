// safetensors reader/writer: round trips of every dtype, bytes identical to the reference writer,
// sharded checkpoints, atomic writes, and malformed files refused with the file and tensor named.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  readSafetensors, SafetensorsReader, ShardedSafetensors, ST_DTYPE_BYTES, stToFloat32, stToFloat64, writeSafetensors,
  type StDType, type StTensor,
} from '../src/io/safetensors.ts';
import { expectBothReadersRefuse } from './golden/golden.ts';

const dir = mkdtempSync(join(tmpdir(), 'safetensors-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;
const freshPath = () => join(dir, `f${fileCount++}.safetensors`);

// Deterministic non-zero random bytes (mulberry32).
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = rng(20240601);

function randomTensor(dtype: StDType, shape: number[]): StTensor {
  const n = shape.reduce((a, b) => a * b, 1) * ST_DTYPE_BYTES[dtype];
  // BOOL bytes are 0 or 1; others any byte, at least one of them non-zero.
  const bytes = Uint8Array.from({ length: n }, (_, i) => (dtype === 'BOOL' ? (i === 0 ? 1 : Math.floor(random() * 2)) : 1 + Math.floor(random() * 255)));
  return { dtype, shape, bytes };
}

/** A file with this header (object, literal JSON text or raw bytes) and data section, header padded to 8 unless told not to. */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0), pad = true): string {
  let json = header instanceof Uint8Array ? Buffer.from(header) : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  if (pad) json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, ' ')]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const path = freshPath();
  writeFileSync(path, Buffer.concat([len, json, data]));
  return path;
}

const ALL_DTYPES: StDType[] = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL'];

describe('round trips', () => {
  const tensors = new Map<string, StTensor>();
  for (const [i, dtype] of ALL_DTYPES.entries()) {
    tensors.set(`layer.${i}.${dtype.toLowerCase()}`, randomTensor(dtype, [2, i + 1, 3]));
  }
  tensors.set('scalar', randomTensor('F32', []));
  tensors.set('empty', randomTensor('BF16', [0, 5]));
  tensors.set('ünïcode name', randomTensor('I8', [7]));
  const metadata = { format: 'pt', note: 'round trip "quoted" \\ \n ✓' };
  const path = freshPath();
  writeSafetensors(path, tensors, metadata);

  it('readSafetensors gives back every dtype, shape, byte and the metadata', () => {
    const file = readSafetensors(path);
    expect(file.metadata).toEqual(metadata);
    expect([...file.tensors.keys()].sort()).toEqual([...tensors.keys()].sort());
    for (const [name, t] of tensors) expect(file.tensors.get(name), name).toEqual(t);
  });

  it('SafetensorsReader gives back the same, tensor by tensor, each aligned to its element size', () => {
    const reader = SafetensorsReader.open(path);
    try {
      expect(reader.metadata).toEqual(metadata);
      expect(reader.names().sort()).toEqual([...tensors.keys()].sort());
      for (const [name, t] of tensors) {
        expect(reader.read(name), name).toEqual(t);
        const info = reader.info(name);
        expect(info).toMatchObject({ dtype: t.dtype, shape: t.shape, file: path, byteLength: t.bytes.byteLength });
        expect(info.offset % ST_DTYPE_BYTES[t.dtype], name).toBe(0);
        expect(readFileSync(path).subarray(info.offset, info.offset + info.byteLength)).toEqual(Buffer.from(t.bytes));
      }
    } finally {
      reader.close();
    }
  });

  it('a plain object works as input too, and no metadata means no __metadata__ entry', () => {
    const p = freshPath();
    writeSafetensors(p, { a: tensors.get('scalar')! });
    expect(readFileSync(p).toString('latin1')).not.toContain('__metadata__');
    expect(readSafetensors(p).tensors.get('a')).toEqual(tensors.get('scalar'));
  });

  it('reads tensor bytes on demand, not at open', () => {
    const p = freshPath();
    writeSafetensors(p, { a: randomTensor('F32', [4]), b: randomTensor('F32', [4]) });
    const reader = SafetensorsReader.open(p);
    try {
      const b = reader.info('b');
      const replacement = randomTensor('F32', [4]).bytes;
      const fd = openSync(p, 'r+');
      writeSync(fd, replacement, 0, replacement.length, b.offset);
      closeSync(fd);
      expect(reader.read('b').bytes).toEqual(replacement);
    } finally {
      reader.close();
    }
    expect(() => reader.read('a')).toThrow(/read after close/);
  });

  it('converts values to float64 / float32', () => {
    const f16 = Uint8Array.from([0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00, 0x00, 0x7c]); // 1, -2, 65504, 2^-24, inf
    expect([...stToFloat64({ dtype: 'F16', shape: [5], bytes: f16 })]).toEqual([1, -2, 65504, 2 ** -24, Infinity]);
    const bf16 = Uint8Array.from([0x80, 0x3f, 0x49, 0x40]); // 1, 3.140625
    expect([...stToFloat32({ dtype: 'BF16', shape: [2], bytes: bf16 })]).toEqual([1, 3.140625]);
    const f32 = Float32Array.from([0.1, -7.25]);
    expect(stToFloat32({ dtype: 'F32', shape: [2], bytes: new Uint8Array(f32.buffer) })).toEqual(f32);
    const i64 = new BigInt64Array([-3n, 1n << 40n]);
    expect([...stToFloat64({ dtype: 'I64', shape: [2], bytes: new Uint8Array(i64.buffer) })]).toEqual([-3, 2 ** 40]);
  });
});

describe('bytes identical to the reference writer', () => {
  const f32 = (values: number[]) => new Uint8Array(Float32Array.from(values).buffer);
  const written = (tensors: Record<string, StTensor>, metadata?: Record<string, string>) => {
    const p = freshPath();
    writeSafetensors(p, tensors, metadata);
    return [...readFileSync(p)];
  };

  // Byte vectors copied from the reference's own tests (safetensors/src/tensor.rs: test_serialization,
  // test_serialization_forced_alignement, test_empty).
  it('test_serialization', () => {
    expect(written({ 'attn.0': { dtype: 'F32', shape: [1, 2, 3], bytes: f32([0, 1, 2, 3, 4, 5]) } })).toEqual([
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
      116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
      58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
      101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
      0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
    ]);
  });

  it('test_serialization_forced_alignement (space padding)', () => {
    expect(written({ attn0: { dtype: 'F32', shape: [1, 1, 2, 3], bytes: f32([0, 1, 2, 3, 4, 5]) } })).toEqual([
      72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
      121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
      91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102,
      115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
      32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0,
      160, 64,
    ]);
  });

  it('test_empty, without and with metadata', () => {
    expect(written({})).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
    expect(written({}, { framework: 'pt' })).toEqual([
      40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
      95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
      116, 34, 125, 125, 32, 32, 32, 32, 32,
    ]);
  });

  // Derived by hand from the reference's `prepare`: dtype rank descending (I64 > F32 > F16 > U8 > BOOL),
  // then names compared bytewise ("10" < "9"), offsets packed in that order, header padded to 8 with spaces.
  it('sorts by dtype alignment then name, integer-like names included', () => {
    const t = {
      b: randomTensor('F16', [2]), a: randomTensor('F32', [1]), c: randomTensor('F32', [2]), m: randomTensor('BOOL', [3]),
      z: randomTensor('I64', [1]), 9: randomTensor('U8', [1]), 10: randomTensor('U8', [1]),
    };
    const json = '{"__metadata__":{"format":"pt"},'
      + '"z":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},'
      + '"a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},'
      + '"c":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},'
      + '"b":{"dtype":"F16","shape":[2],"data_offsets":[20,24]},'
      + '"10":{"dtype":"U8","shape":[1],"data_offsets":[24,25]},'
      + '"9":{"dtype":"U8","shape":[1],"data_offsets":[25,26]},'
      + '"m":{"dtype":"BOOL","shape":[3],"data_offsets":[26,29]}}';
    const padded = json + ' '.repeat((8 - (json.length % 8)) % 8);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(padded.length));
    const expected = Buffer.concat([len, Buffer.from(padded), ...[t.z, t.a, t.c, t.b, t[10], t[9], t.m].map((x) => x.bytes)]);
    expect(written(t, { format: 'pt' })).toEqual([...expected]);
  });
});

describe('sharded checkpoints', () => {
  const shardDir = join(dir, 'sharded');
  mkdirSync(shardDir);
  const one = { 'blocks.0.w': randomTensor('BF16', [4, 3]), 'blocks.0.b': randomTensor('F32', [4]) };
  const two = { 'blocks.1.w': randomTensor('BF16', [4, 3]), 'norm.scale': randomTensor('F64', []) };
  writeSafetensors(join(shardDir, 'model-00001-of-00002.safetensors'), one, { format: 'pt' });
  writeSafetensors(join(shardDir, 'model-00002-of-00002.safetensors'), two, { format: 'pt' });
  const weightMap: Record<string, string> = {};
  for (const name of Object.keys(one)) weightMap[name] = 'model-00001-of-00002.safetensors';
  for (const name of Object.keys(two)) weightMap[name] = 'model-00002-of-00002.safetensors';
  const index = join(shardDir, 'model.safetensors.index.json');
  writeFileSync(index, JSON.stringify({ metadata: { total_size: 1234 }, weight_map: weightMap }));

  for (const [how, target] of [['index file', index], ['folder', shardDir]] as const) {
    it(`routes every name to its shard (opened by ${how})`, () => {
      const sharded = ShardedSafetensors.open(target);
      try {
        expect(sharded.names()).toEqual(Object.keys(weightMap));
        for (const [name, t] of Object.entries({ ...one, ...two })) {
          expect(sharded.read(name), name).toEqual(t);
          expect(sharded.info(name).file).toBe(join(shardDir, weightMap[name]!));
        }
        expect(() => sharded.read('missing')).toThrow(/model\.safetensors\.index\.json: tensor "missing": no such tensor/);
      } finally {
        sharded.close();
      }
    });
  }

  it('refuses an index that names a tensor its shard lacks, a missing weight_map, and a folder without an index', () => {
    const bad = join(shardDir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ weight_map: { ...weightMap, ghost: 'model-00001-of-00002.safetensors' } }));
    expect(() => ShardedSafetensors.open(bad)).toThrow(/bad\.json: tensor "ghost": weight_map puts it in model-00001-of-00002\.safetensors, which has no such tensor/);
    writeFileSync(bad, JSON.stringify({ metadata: {} }));
    expect(() => ShardedSafetensors.open(bad)).toThrow(/bad\.json: index has no "weight_map" object/);
    const empty = join(dir, 'no-index');
    mkdirSync(empty);
    expect(() => ShardedSafetensors.open(empty)).toThrow(/no-index: no \*\.safetensors\.index\.json in this folder/);
  });
});

describe('atomic writes', () => {
  it('leaves no temporary file behind and replaces the old file', () => {
    const folder = mkdtempSync(join(dir, 'atomic-'));
    const path = join(folder, 'ckpt.safetensors');
    writeSafetensors(path, { w: randomTensor('F32', [3]) });
    const next = randomTensor('F32', [5]);
    writeSafetensors(path, { w: next });
    expect(readdirSync(folder)).toEqual(['ckpt.safetensors']);
    expect(readSafetensors(path).tensors.get('w')).toEqual(next);
  });

  it('keeps the old file intact and cleans up when a write fails half way', () => {
    const folder = mkdtempSync(join(dir, 'atomic-'));
    const path = join(folder, 'ckpt.safetensors');
    writeSafetensors(path, { w: randomTensor('F32', [3]) });
    const before = readFileSync(path);
    // This tensor's bytes become unreadable once a second file (the temporary one) exists in the folder:
    // the failure comes half way through the stream, after the header and the F64 tensor sorted first.
    const bytes = randomTensor('BOOL', [4]).bytes;
    const failing: StTensor = {
      dtype: 'BOOL', shape: [4],
      get bytes() { if (readdirSync(folder).length > 1) throw new Error('disk on fire'); return bytes; },
    };
    expect(() => writeSafetensors(path, { a: randomTensor('F64', [2]), z: failing })).toThrow('disk on fire');
    expect(readdirSync(folder)).toEqual(['ckpt.safetensors']);
    expect(readFileSync(path)).toEqual(before);
  });

  it('cleans up when the final rename fails', () => {
    const folder = mkdtempSync(join(dir, 'atomic-'));
    mkdirSync(join(folder, 'busy.safetensors', 'inside'), { recursive: true });
    expect(() => writeSafetensors(join(folder, 'busy.safetensors'), { w: randomTensor('F32', [3]) })).toThrow();
    expect(readdirSync(folder)).toEqual(['busy.safetensors']);
  });

  it('refuses bad input before touching the disk, naming file and tensor', () => {
    const folder = mkdtempSync(join(dir, 'atomic-'));
    const path = join(folder, 'x.safetensors');
    expect(() => writeSafetensors(path, { w: { dtype: 'F32', shape: [2, 2], bytes: new Uint8Array(12) } }))
      .toThrow(/x\.safetensors: tensor "w": has 12 bytes but F32 x \[2,2\] needs 16/);
    expect(() => writeSafetensors(path, { __metadata__: randomTensor('U8', [1]) })).toThrow(/tensor "__metadata__": the name is reserved/);
    expect(() => writeSafetensors(path, { w: { dtype: 'F4' as StDType, shape: [3], bytes: new Uint8Array(2) } })).toThrow(/tensor "w": has 2 bytes but F4 x \[3\] needs a size that overflows 64 bits or does not fill whole bytes/);
    expect(() => writeSafetensors(path, {}, { step: 3 as unknown as string })).toThrow(/metadata must map strings to strings/);
    expect(readdirSync(folder)).toEqual([]);
  });
});

describe('validation', () => {
  const x16 = randomTensor('F32', [4]).bytes;
  const entry = (dtype: string, shape: number[], offsets: number[]) => ({ dtype, shape, data_offsets: offsets });

  const accepted: [string, () => string][] = [
    ['an unpadded header', () => rawFile({ x: entry('F32', [4], [0, 16]) }, x16, false)],
    ['unknown extra fields in an entry', () => rawFile({ x: { ...entry('F32', [4], [0, 16]), extra: [1, { a: 2 }] } }, x16)],
    ['data stored in another order than the header lists it', () => rawFile({ a: entry('F32', [2], [8, 16]), b: entry('F32', [2], [0, 8]) }, x16)],
    ['zero-element tensors at any boundary, and 0-d tensors', () => rawFile({
      e0: entry('F32', [0, 3], [0, 0]), a: entry('F32', [], [0, 4]), e1: entry('I64', [2, 0], [4, 4]), e2: entry('I64', [0], [4, 4]), b: entry('F32', [3], [4, 16]), e3: entry('U8', [0], [16, 16]),
    }, x16)],
    ['__metadata__ null', () => rawFile({ __metadata__: null, x: entry('F32', [4], [0, 16]) }, x16)],
    ['trailing whitespace in the header', () => rawFile(`${JSON.stringify({ x: entry('F32', [4], [0, 16]) })}\n\t\r `, x16)],
  ];
  for (const [what, make] of accepted) {
    it(`accepts ${what}, lazily and whole`, () => {
      const path = make();
      const whole = readSafetensors(path);
      const reader = SafetensorsReader.open(path);
      for (const name of reader.names()) expect(reader.read(name)).toEqual(whole.tensors.get(name));
      reader.close();
    });
  }

  const refused: [string, () => string, RegExp][] = [
    ['a file shorter than 8 bytes', () => { const p = freshPath(); writeFileSync(p, Buffer.from([16, 0, 0])); return p; }, /file is 3 bytes, shorter than the 8-byte header length/],
    ['a header length beyond the file', () => { const p = freshPath(); const b = Buffer.alloc(40); b.writeBigUInt64LE(64n); writeFileSync(p, b); return p; }, /header length 64 runs past the end of the file \(40 bytes\)/],
    ['a header length beyond the format limit', () => { const p = freshPath(); const b = Buffer.alloc(16); b.writeBigUInt64LE(1n << 62n); writeFileSync(p, b); return p; }, /exceeds the format's limit/],
    ['a header that is not JSON', () => rawFile('this is not json', x16), /header is not valid JSON/],
    ['a header that is not UTF-8', () => rawFile(Buffer.from('{"__metadata__":{"k":"\xff"}}', 'latin1')), /header is not valid UTF-8/],
    ['a header that starts with a BOM', () => rawFile(`\ufeff${JSON.stringify({ x: entry('F32', [4], [0, 16]) })}`, x16), /header is not valid JSON/],
    ['a header that is a JSON array', () => rawFile('[]'), /header is not a JSON object/],
    ['an entry that is not an object', () => rawFile({ x: 3 }), /tensor "x": entry is not a JSON object/],
    ['an unknown dtype', () => rawFile({ x: entry('F33', [4], [0, 16]) }, x16), /tensor "x": unknown dtype "F33"/],
    ['a sub-byte dtype that does not fill whole bytes', () => rawFile({ x: entry('F4', [3], [0, 2]) }, x16.subarray(0, 2)), /tensor "x": shape \[3\] of F4 overflows 64-bit sizes or does not fill whole bytes/],
    ['a missing dtype', () => rawFile({ x: { shape: [4], data_offsets: [0, 16] } }, x16), /tensor "x": dtype undefined is not a string/],
    ['a negative dimension', () => rawFile({ x: entry('F32', [-4], [0, 16]) }, x16), /tensor "x": shape \[-4\] is not a list of non-negative integers/],
    ['a fractional dimension', () => rawFile({ x: entry('F32', [2.5], [0, 16]) }, x16), /tensor "x": shape/],
    ['three data offsets', () => rawFile({ x: entry('F32', [4], [0, 16, 16]) }, x16), /tensor "x": data_offsets \[0,16,16\] is not a pair/],
    ['offsets that end before they begin', () => rawFile({ x: entry('F32', [0], [16, 0]) }, x16), /tensor "x": data_offsets \[16, 0\] end before they begin/],
    ['offsets out of bounds', () => rawFile({ x: entry('F32', [8], [0, 32]) }, x16), /tensor "x": data_offsets \[0, 32\] run past the end of the data section \(16 bytes\)/],
    ['truncated data', () => rawFile({ x: entry('F32', [2], [0, 8]), y: entry('F32', [4], [8, 24]) }, x16), /tensor "y": data_offsets \[8, 24\] run past the end/],
    ['a size mismatch', () => rawFile({ x: entry('F32', [3], [0, 16]) }, x16), /tensor "x": data_offsets \[0, 16\] hold 16 bytes but F32 x \[3\] needs 12/],
    ['a shape whose size overflows 64 bits, even with no elements', () => rawFile({ x: entry('F32', [2 ** 32, 2 ** 32, 0], [0, 0]) }), /tensor "x": shape .* overflows/],
    ['overlapping tensors', () => rawFile({ x: entry('F32', [2], [0, 8]), y: entry('F32', [2], [4, 12]) }, x16), /tensor "y": data_offsets \[4, 12\] overlap tensor "x"/],
    ['a zero-element tensor inside another', () => rawFile({ x: entry('F32', [4], [0, 16]), e: entry('F32', [0], [4, 4]) }, x16), /tensor "e": data_offsets \[4, 4\] overlap tensor "x"/],
    ['a gap between tensors', () => rawFile({ x: entry('F32', [1], [0, 4]), y: entry('F32', [2], [8, 16]) }, x16), /tensor "y": data bytes \[4, 8\) before this tensor belong to no tensor/],
    ['trailing bytes', () => rawFile({ x: entry('F32', [3], [0, 12]) }, x16), /4 trailing bytes after the last tensor/],
    ['data with no tensors at all', () => rawFile({}, x16), /16 trailing bytes/],
    ['non-string metadata', () => rawFile({ __metadata__: { step: 3 }, x: entry('F32', [4], [0, 16]) }, x16), /__metadata__ must map strings to strings, but "step" maps to 3/],
    ['metadata that is not an object', () => rawFile({ __metadata__: 'pt' }), /__metadata__ is not a JSON object/],
  ];
  for (const [what, make, message] of refused) {
    it(`refuses ${what}, naming the file`, () => expectBothReadersRefuse(make(), message));
  }

  it('names file and tensor when asked for a tensor the file lacks', () => {
    const path = rawFile({ x: entry('F32', [4], [0, 16]) }, x16);
    const reader = SafetensorsReader.open(path);
    expect(() => reader.info('y')).toThrow(`${path}: tensor "y": no such tensor`);
    expect(() => reader.read('y')).toThrow(`${path}: tensor "y": no such tensor`);
    reader.close();
  });
});
