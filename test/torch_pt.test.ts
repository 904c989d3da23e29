// zip reader, restricted unpickler and torch.save reader on files built here byte by byte: every opcode
// of the subset, zip64 and deflate, views, the legacy stream, and the refusals (hostile pickles, unsafe
// member names, lying sizes) with the check that refusal happens before anything is built.
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32, deflateRawSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { latentCollate, LatentDataset } from '../src/io/dancegrpo_dataset.ts';
import { PyGlobal, PyTuple, scanPickle, unpickle, type PickleHooks } from '../src/io/pickle.ts';
import {
  loadTorchFile, tensorToContiguousBytes, TorchFileError, TorchOrderedDict, torchTensorToFloat64, TorchTensor,
  type TorchValue,
} from '../src/io/torch_pt.ts';
import { ZipFile } from '../src/io/zip.ts';

const tmp = mkdtempSync(join(tmpdir(), 'torch-pt-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let fileCount = 0;
function tmpFile(data: Uint8Array, name = `f${fileCount++}.pt`): string {
  const p = join(tmp, name);
  writeFileSync(p, data);
  return p;
}

// ---- pickle builder (the byte layout Python's pickle module writes) ----
type Part = number | readonly number[] | Uint8Array;
function bytes(...parts: Part[]): Uint8Array {
  const out: number[] = [];
  for (const p of parts) typeof p === 'number' ? out.push(p) : out.push(...p);
  return Uint8Array.from(out);
}
const enc = new TextEncoder();
const c = (ch: string) => ch.charCodeAt(0);
const le = (n: number, width: number) => Array.from({ length: width }, (_, i) => Number((BigInt(n) >> BigInt(8 * i)) & 255n));
const MARK = c('('), STOP = c('.'), TUPLE = c('t'), REDUCE = c('R'), BUILD = c('b'), BINPERSID = c('Q');
const EMPTY_TUPLE = c(')'), EMPTY_LIST = c(']'), EMPTY_DICT = c('}'), APPEND = c('a'), APPENDS = c('e');
const SETITEM = c('s'), SETITEMS = c('u'), NONE = c('N'), NEWTRUE = 0x88, NEWFALSE = 0x89;
const TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87, MEMOIZE = 0x94;
const str = (s: string) => { const b = enc.encode(s); return bytes(c('X'), le(b.length, 4), b); };
const sstr = (s: string) => { const b = enc.encode(s); return bytes(0x8c, b.length, b); };
const int = (n: number) => (n >= 0 && n < 256 ? [c('K'), n] : n >= 0 && n < 65536 ? [c('M'), ...le(n, 2)] : [c('J'), ...le(n, 4)]);
function long1(v: bigint): number[] {
  // Python's encode_long: shortest little-endian two's complement (no bytes for 0).
  const out: number[] = [];
  for (let x = v; v !== 0n; ) {
    out.push(Number(x & 255n));
    x >>= 8n;
    const neg = (out.at(-1)! & 0x80) !== 0;
    if ((x === 0n && !neg) || (x === -1n && neg)) break;
  }
  return [0x8a, out.length, ...out];
}
const float = (x: number) => { const b = new Uint8Array(8); new DataView(b.buffer).setFloat64(0, x, false); return bytes(c('G'), b); };
const global = (m: string, n: string) => bytes(c('c'), enc.encode(`${m}\n${n}\n`));
const binput = (i: number) => [c('q'), i];
const binget = (i: number) => [c('h'), i];
const tuple = (...items: Part[]) => bytes(MARK, ...items, TUPLE);
const dict = (...kv: Part[]) => bytes(EMPTY_DICT, MARK, ...kv, SETITEMS);
const list = (...items: Part[]) => bytes(EMPTY_LIST, MARK, ...items, APPENDS);
const pickle = (...parts: Part[]) => bytes(0x80, 2, ...parts, STOP);
const ordered = () => bytes(global('collections', 'OrderedDict'), EMPTY_TUPLE, REDUCE);

interface TensorSpec { key: string; cls: string; numel: number; offset: number; shape: number[]; stride: number[] }
/** What torch pickles for a tensor: _rebuild_tensor_v2 over a persistent storage id (6 fields in the legacy format). */
function tensorP(t: TensorSpec, legacy = false): Uint8Array {
  return bytes(
    global('torch._utils', '_rebuild_tensor_v2'), MARK,
    tuple(str('storage'), global('torch', t.cls), str(t.key), str('cpu'), int(t.numel), legacy ? [NONE] : []), BINPERSID,
    int(t.offset), tuple(...t.shape.map(int)), tuple(...t.stride.map(int)), NEWFALSE, ordered(), TUPLE, REDUCE,
  );
}

// ---- zip builder ----
interface ZMember {
  name: string;
  data: Uint8Array;
  method?: 0 | 8;
  /** Extra-field padding in the local header only (torch aligns data to 64 bytes this way). */
  pad?: number;
  crc?: number;
  /** Declared uncompressed size, if not the real one. */
  size?: number;
  flags?: number;
  localName?: string;
  /** Put sizes and offset in a zip64 extra field. */
  zip64?: boolean;
}
function u16(n: number) { return le(n, 2); }
function u32(n: number) { return le(n, 4); }
function u64(n: number) { return le(n, 8); }
function makeZip(members: ZMember[], opts: { zip64Eocd?: boolean } = {}): Uint8Array {
  const parts: Part[] = [];
  const central: Part[] = [];
  let pos = 0;
  const push = (b: Uint8Array) => { parts.push(b); pos += b.byteLength; };
  for (const m of members) {
    const method = m.method ?? 0;
    const body = method === 8 ? new Uint8Array(deflateRawSync(m.data)) : m.data;
    const crc = m.crc ?? crc32(m.data), size = m.size ?? m.data.byteLength, flags = m.flags ?? 0x808;
    const name = enc.encode(m.name), localName = enc.encode(m.localName ?? m.name);
    const pad = m.pad ? bytes(u16(0x4246), u16(m.pad - 4), new Array(m.pad - 4).fill(0)) : new Uint8Array(0);
    const offset = pos;
    // Flag bit 3 as torch writes it: zeros in the local header, sizes in a trailing descriptor.
    const dd = (flags & 8) !== 0;
    push(bytes(u32(0x04034b50), u16(20), u16(flags), u16(method), u16(0), u16(0), u32(dd ? 0 : crc), u32(dd ? 0 : body.byteLength), u32(dd ? 0 : size), u16(localName.length), u16(pad.length), localName, pad));
    push(body);
    if (dd) push(bytes(u32(0x08074b50), u32(crc), u32(body.byteLength), u32(size)));
    const big = m.zip64 ? bytes(u16(1), u16(24), u64(size), u64(body.byteLength), u64(offset)) : new Uint8Array(0);
    const f = (v: number) => (m.zip64 ? 0xffffffff : v);
    central.push(bytes(u32(0x02014b50), u16(20), u16(20), u16(flags), u16(method), u16(0), u16(0), u32(crc), u32(f(body.byteLength)), u32(f(size)), u16(name.length), u16(big.length), u16(0), u16(0), u16(0), u32(0), u32(f(offset)), name, big));
  }
  const cdOffset = pos;
  const cd = bytes(...central);
  push(cd);
  const n = members.length;
  if (opts.zip64Eocd) {
    const z64 = pos;
    push(bytes(u32(0x06064b50), u64(44), u16(45), u16(45), u32(0), u32(0), u64(n), u64(n), u64(cd.byteLength), u64(cdOffset)));
    push(bytes(u32(0x07064b50), u32(0), u64(z64), u32(1)));
    // Saturated fields: only the zip64 record holds the real values.
    push(bytes(u32(0x06054b50), u16(0), u16(0), u16(0xffff), u16(0xffff), u32(0xffffffff), u32(0xffffffff), u16(0)));
  } else {
    push(bytes(u32(0x06054b50), u16(0), u16(0), u16(n), u16(n), u32(cd.byteLength), u32(cdOffset), u16(0)));
  }
  return bytes(...parts);
}

/** A torch.save zip: <root>/data.pkl, byteorder, data/<key>, version. */
function torchZip(pkl: Uint8Array, storages: Record<string, Uint8Array> = {}, root = 'archive', byteorder = 'little'): Uint8Array {
  return makeZip([
    { name: `${root}/data.pkl`, data: pkl },
    { name: `${root}/byteorder`, data: enc.encode(byteorder) },
    ...Object.entries(storages).map(([k, data]) => ({ name: `${root}/data/${k}`, data, pad: 40 })),
    { name: `${root}/version`, data: enc.encode('3\n') },
  ], { zip64Eocd: true });
}

const f32 = (xs: number[]) => new Uint8Array(Float32Array.from(xs).buffer);
const u16s = (xs: number[]) => new Uint8Array(Uint16Array.from(xs).buffer);
const i64 = (xs: bigint[]) => new Uint8Array(BigInt64Array.from(xs).buffer);
const ramp = (n: number, scale = 1) => Array.from({ length: n }, (_, i) => (i - n / 3) * scale + 0.25);

function refusal(path: string): TorchFileError {
  try {
    loadTorchFile(path);
  } catch (e) {
    expect(e).toBeInstanceOf(TorchFileError);
    expect((e as TorchFileError).file).toBe(path);
    expect((e as Error).message.startsWith(`${path}: `)).toBe(true);
    return e as TorchFileError;
  }
  throw new Error(`${path} was accepted`);
}

describe('zip reader', () => {
  const random = Uint8Array.from({ length: 3000 }, (_, i) => (i * 2654435761) >>> 24);
  const text = enc.encode('torch storage '.repeat(500));

  it('reads stored and deflated members, padded local headers, data descriptors and zip64 records', () => {
    for (const zip64Eocd of [false, true]) {
      const p = tmpFile(makeZip([
        { name: 'r/a.bin', data: random, pad: 60 },
        { name: 'r/b.txt', data: text, method: 8 },
        { name: 'r/empty', data: new Uint8Array(0), method: 8, flags: 0 },
        { name: 'r/big/ü.bin', data: random.subarray(7, 1007), zip64: true },
      ], { zip64Eocd }));
      const z = ZipFile.open(p);
      try {
        expect(z.entries.map((e) => [e.name, e.method, e.size])).toEqual([['r/a.bin', 0, 3000], ['r/b.txt', 8, 7000], ['r/empty', 8, 0], ['r/big/ü.bin', 0, 1000]]);
        expect(z.entries[0]!.localHeaderOffset).toBe(0);
        expect(z.entries[2]!.compressedSize).toBeGreaterThan(0);
        expect(z.read(z.get('r/a.bin')!)).toEqual(random);
        expect(z.read(z.get('r/b.txt')!)).toEqual(text);
        expect(z.read(z.get('r/empty')!)).toEqual(new Uint8Array(0));
        expect(z.read(z.get('r/big/ü.bin')!)).toEqual(random.subarray(7, 1007));
      } finally {
        z.close();
      }
    }
  });

  const unsafe = ['../x', 'a/../../b', '/etc/passwd', 'a\\b', 'C:/x', 'a//b', 'a/./b', 'dir/', 'a\0b'];
  for (const name of unsafe) {
    it(`refuses the member name ${JSON.stringify(name)} when opening`, () => {
      const p = tmpFile(makeZip([{ name: 'r/ok', data: text }, { name, data: text }]));
      expect(() => ZipFile.open(p)).toThrow(/unsafe zip member name/);
    });
  }

  const broken: [string, () => Uint8Array, RegExp, 'open' | 'read'][] = [
    ['duplicate names', () => makeZip([{ name: 'r/a', data: text }, { name: 'r/a', data: random }]), /duplicate/, 'open'],
    ['encryption', () => makeZip([{ name: 'r/a', data: text, flags: 0x809 }]), /encrypted/, 'open'],
    ['an unknown method', () => { const z = makeZip([{ name: 'r/a', data: text }]); z[z.byteLength - 22 - 46 - 3 + 10] = 12; return z; }, /method 12/, 'open'],
    ['a truncated end record', () => makeZip([{ name: 'r/a', data: text }]).subarray(0, -5), /end-of-central-directory/, 'open'],
    ['a central directory past the end', () => { const z = makeZip([{ name: 'r/a', data: text }]); new DataView(z.buffer).setUint32(z.byteLength - 6, 1 << 30, true); return z; }, /out of bounds/, 'open'],
    ['an impossible deflate ratio', () => makeZip([{ name: 'r/a', data: text, method: 8, size: 1 << 30 }]), /impossible/, 'open'],
    ['two sizes on a stored member', () => makeZip([{ name: 'r/a', data: text, size: 10 }]), /two sizes/, 'open'],
    ['a CRC mismatch', () => makeZip([{ name: 'r/a', data: text, crc: 1234 }]), /CRC-32/, 'read'],
    ['a deflate size lie', () => makeZip([{ name: 'r/a', data: text, method: 8, size: 7001 }]), /inflates to/, 'read'],
    ['a local name unlike the central one', () => makeZip([{ name: 'r/a', data: text, localName: 'r/b' }]), /local header name/, 'read'],
  ];
  for (const [what, make, msg, stage] of broken) {
    it(`refuses ${what}`, () => {
      const p = tmpFile(make());
      if (stage === 'open') return expect(() => ZipFile.open(p)).toThrow(msg);
      const z = ZipFile.open(p);
      try {
        expect(() => z.read(z.entries[0]!)).toThrow(msg);
      } finally {
        z.close();
      }
    });
  }
});

describe('restricted unpickler', () => {
  const torchGlobals = new Map([['collections OrderedDict', new PyGlobal('collections', 'OrderedDict', () => new Map())], ['torch FloatStorage', new PyGlobal('torch', 'FloatStorage')]]);
  const hooks = (over: Partial<PickleHooks> = {}): PickleHooks => ({
    globals: torchGlobals,
    persistentLoad: () => { throw new Error('no persistent ids here'); },
    build: () => { throw new Error('no BUILD here'); },
    ...over,
  });
  const load = (data: Uint8Array, h = hooks()) => unpickle(data, 0, h).value;

  it('decodes every opcode of the subset', () => {
    const data = pickle(
      EMPTY_DICT, binput(0), MARK,
      str('ints'), list(int(0), int(255), int(256), int(65535), int(65536), int(-1), int(-(2 ** 31)), long1(0n), long1(2n ** 53n - 1n), long1(2n ** 63n), long1(-(2n ** 70n) - 3n)),
      str('floats'), list(float(-0), float(5e-324), float(NaN), float(-Infinity), float(0.1)),
      str('strs'), list(str(''), str('héllo ✓ 𝄞'), sstr('short')),
      str('tuples'), EMPTY_TUPLE, int(1), TUPLE1, int(1), int(2), TUPLE2, int(1), int(2), int(3), TUPLE3, tuple(int(4), int(5), int(6), int(7)), TUPLE3, TUPLE3,
      str('consts'), NONE, NEWTRUE, NEWFALSE, TUPLE3,
      str('memo'), EMPTY_LIST, c('r'), ...u32(70000), int(9), APPEND, c('j'), ...u32(70000), TUPLE2,
      str('keys'), EMPTY_DICT, int(3), str('int key'), SETITEM, tuple(int(1), str('a')), str('tuple key'), SETITEM, NONE, NEWTRUE, SETITEM,
      SETITEMS,
    );
    const v = load(data) as Map<unknown, unknown>;
    expect([...v.keys()]).toEqual(['ints', 'floats', 'strs', 'tuples', 'consts', 'memo', 'keys']);
    expect(v.get('ints')).toEqual([0, 255, 256, 65535, 65536, -1, -(2 ** 31), 0, 2 ** 53 - 1, 2n ** 63n, -(2n ** 70n) - 3n]);
    const fl = v.get('floats') as number[];
    expect([Object.is(fl[0], -0), fl[1], Number.isNaN(fl[2]), fl[3], fl[4]]).toEqual([true, 5e-324, true, -Infinity, 0.1]);
    expect(v.get('strs')).toEqual(['', 'héllo ✓ 𝄞', 'short']);
    const t = v.get('tuples') as PyTuple;
    expect(t).toEqual(new PyTuple([new PyTuple([]), new PyTuple([1]), new PyTuple([new PyTuple([1, 2]), new PyTuple([1, 2, 3]), new PyTuple([4, 5, 6, 7])])]));
    expect(v.get('consts')).toEqual(new PyTuple([null, true, false]));
    const memo = (v.get('memo') as PyTuple).items;
    expect(memo[0]).toBe(memo[1]); // one list, referenced twice
    expect(memo[0]).toEqual([9]);
    const keys = v.get('keys') as Map<unknown, unknown>;
    expect([...keys.values()]).toEqual(['int key', 'tuple key', true]);
    expect([...keys.keys()][0]).toBe(3);
    expect([...keys.keys()][1]).toEqual(new PyTuple([1, 'a']));
  });

  it('reads protocol 4 framing, MEMOIZE and STACK_GLOBAL with memoized names', () => {
    const body = bytes(
      sstr('collections'), MEMOIZE, sstr('OrderedDict'), MEMOIZE, 0x93, MEMOIZE, EMPTY_TUPLE, REDUCE, MEMOIZE,
      sstr('x'), MEMOIZE, binget(0), binget(1), 0x93, EMPTY_TUPLE, REDUCE, SETITEM, STOP,
    );
    const data = bytes(0x80, 4, 0x95, u64(body.byteLength), body);
    const v = load(data) as Map<unknown, unknown>;
    expect([...v.keys()]).toEqual(['x']);
    expect(v.get('x')).toBeInstanceOf(Map);
  });

  const forbidden = ['os system', 'posix system', 'nt system', 'builtins eval', 'builtins exec', 'builtins getattr', 'subprocess Popen', 'torch load', 'numpy.core.multiarray _reconstruct', 'collections defaultdict'];
  for (const name of forbidden) {
    it(`refuses GLOBAL '${name}' and its STACK_GLOBAL spelling`, () => {
      const [m, n] = name.split(' ') as [string, string];
      expect(() => load(pickle(global(m, n), tuple(str('touch /tmp/x')), REDUCE))).toThrow(`GLOBAL '${name}' at byte 2 is not allowed`);
      expect(() => load(bytes(0x80, 4, sstr(m), MEMOIZE, sstr(n), 0x93, EMPTY_TUPLE, REDUCE, STOP))).toThrow(`GLOBAL '${name}'`);
      expect(() => load(bytes(0x80, 4, sstr(m), MEMOIZE, sstr('x'), MEMOIZE, binget(0), sstr(n), 0x93, STOP))).toThrow(`GLOBAL '${name}'`);
    });
  }

  const bad: [string, Uint8Array, RegExp][] = [
    ['STACK_GLOBAL on computed names', bytes(0x80, 4, sstr('os'), int(1), 0x93, STOP), /does not name a constant global/],
    ['STACK_GLOBAL with names split by another op', bytes(0x80, 4, sstr('os'), MARK, sstr('system'), 0x93, STOP), /does not name a constant global/],
    ['INST', bytes(0x80, 2, c('i'), enc.encode('os\nsystem\n'), STOP), /opcode 0x69 'i'/],
    ['OBJ', pickle(MARK, global('collections', 'OrderedDict'), c('o')), /0x6f 'o'/],
    ['NEWOBJ', pickle(global('collections', 'OrderedDict'), EMPTY_TUPLE, 0x81), /0x81/],
    ['EXT1', pickle(0x82, 1), /0x82/],
    ['text PERSID', pickle(c('P'), enc.encode('0\n')), /0x50 'P'/],
    ['BINBYTES', pickle(c('B'), u32(1), 0), /0x42 'B'/],
    ['DUP', pickle(NONE, c('2')), /0x32 '2'/],
    ['protocol 6', bytes(0x80, 6, NONE, STOP), /protocol 6/],
    ['a string longer than the data', bytes(0x80, 2, c('X'), u32(1000), 0x41, STOP), /truncated inside BINUNICODE/],
    ['a FRAME longer than the data', bytes(0x80, 4, 0x95, u64(1 << 20), NONE, STOP), /length beyond the data/],
    ['a pickle without STOP', bytes(0x80, 2, NONE), /without STOP/],
    ['an empty memo slot', pickle(binget(7)), /memo 7 is empty/],
    ['APPEND on an empty stack', pickle(APPEND), /stack underflow/],
    ['a pop below MARK', pickle(EMPTY_LIST, MARK, APPEND), /stack underflow/],
    ['REDUCE on a storage class', pickle(global('torch', 'FloatStorage'), EMPTY_TUPLE, REDUCE), /not callable/],
    ['REDUCE on a list argument', pickle(global('collections', 'OrderedDict'), EMPTY_LIST, REDUCE), /not a tuple/],
    ['an unhashable key', pickle(EMPTY_DICT, EMPTY_LIST, NONE, SETITEM), /unhashable/],
    ['APPEND to a dict', pickle(EMPTY_DICT, NONE, APPEND), /not a list/],
    ['SETITEMS on a list', pickle(EMPTY_LIST, MARK, NONE, NONE, SETITEMS), /not a dict/],
    ['two values at STOP', pickle(NONE, NONE), /stack holds 2 values/],
    ['invalid UTF-8', bytes(0x80, 2, c('X'), u32(2), 0xc3, 0x28, STOP), /./],
  ];
  for (const [what, data, msg] of bad) it(`refuses ${what}`, () => expect(() => load(data)).toThrow(msg));

  it('refuses before building: nothing is loaded when a forbidden global comes last', () => {
    let calls = 0;
    const h = hooks({ persistentLoad: () => { calls++; return null; } });
    const data = pickle(EMPTY_LIST, MARK, tuple(str('storage')), BINPERSID, global('os', 'system'), APPENDS);
    expect(() => load(data, h)).toThrow(/GLOBAL 'os system'/);
    expect(calls).toBe(0);
  });

  it('scans consecutive pickles and returns where each ends', () => {
    const a = pickle(dict(str('k'), list(int(1)))), b = pickle(NONE);
    const both = bytes(a, b);
    const allowed = new Set(torchGlobals.keys());
    expect(scanPickle(both, 0, allowed)).toBe(a.byteLength);
    expect(scanPickle(both, a.byteLength, allowed)).toBe(both.byteLength);
    expect(unpickle(both, a.byteLength, hooks())).toEqual({ value: null, end: both.byteLength });
  });
});

describe('torch.save zip files', () => {
  // base: a [2, 3, 4] float32 tensor; views: a permuted view with an offset, a stride-0 expand.
  const base = ramp(24, 0.75);
  const spec = (over: Partial<TensorSpec>): TensorSpec => ({ key: '0', cls: 'FloatStorage', numel: 24, offset: 0, shape: [2, 3, 4], stride: [12, 4, 1], ...over });
  /** Reference gather written independently of the reader: explicit loops over a 3-d index. */
  function gather3(src: number[], off: number, shape: number[], stride: number[]): number[] {
    const out: number[] = [];
    for (let i = 0; i < shape[0]!; i++) for (let j = 0; j < shape[1]!; j++) for (let k = 0; k < shape[2]!; k++) out.push(src[off + i * stride[0]! + j * stride[1]! + k * stride[2]!]!);
    return out;
  }

  it('reads views of shared storages, bf16, int64 beyond 2^53 and a state_dict with _metadata', () => {
    const big = [2n ** 62n + 1n, -(2n ** 63n), 7n, -3n];
    const pkl = pickle(
      ordered(), binput(0), MARK,
      str('base'), tensorP(spec({})),
      str('permuted'), tensorP(spec({ offset: 1, shape: [3, 2, 2], stride: [4, 12, 2] })),
      str('expanded'), tensorP(spec({ offset: 5, shape: [2, 3, 3], stride: [0, 1, 0] })),
      str('bf16'), tensorP({ key: 'b', cls: 'BFloat16Storage', numel: 6, offset: 2, shape: [2, 2], stride: [1, 2] }),
      str('long'), tensorP({ key: 'l', cls: 'LongStorage', numel: 4, offset: 0, shape: [2, 2], stride: [2, 1] }),
      str('scalar'), tensorP({ key: 'l', cls: 'LongStorage', numel: 4, offset: 3, shape: [], stride: [] }),
      SETITEMS,
      EMPTY_DICT, str('_metadata'), ordered(), str(''), dict(str('version'), int(1)), SETITEM, SETITEM, BUILD,
    );
    const bf = [0x3f80, 0xc000, 0x7f80, 0x0001, 0x8000, 0x4049];
    const p = tmpFile(torchZip(pkl, { 0: f32(base), b: u16s(bf), l: i64(big) }, 'my_save'));
    const v = loadTorchFile(p) as TorchOrderedDict;
    expect(v).toBeInstanceOf(TorchOrderedDict);
    expect([...v.keys()]).toEqual(['base', 'permuted', 'expanded', 'bf16', 'long', 'scalar']);
    expect((v.attributes.get('_metadata') as Map<string, Map<string, number>>).get('')!.get('version')).toBe(1);
    const t = (k: string) => v.get(k) as TorchTensor;
    expect(t('permuted').storage).toBe(t('base').storage);
    expect(t('expanded').storage).toBe(t('base').storage);
    expect(t('scalar').storage).toBe(t('long').storage);
    expect(Array.from(torchTensorToFloat64(t('base')))).toEqual(Array.from(Float32Array.from(base)));
    expect(Array.from(torchTensorToFloat64(t('permuted')))).toEqual(gather3(Array.from(Float32Array.from(base)), 1, [3, 2, 2], [4, 12, 2]));
    expect(Array.from(torchTensorToFloat64(t('expanded')))).toEqual(gather3(Array.from(Float32Array.from(base)), 5, [2, 3, 3], [0, 1, 0]));
    // bf16 words of a transposed [2, 2] view at offset 2: rows (w2, w4), (w3, w5).
    expect(tensorToContiguousBytes(t('bf16'))).toEqual(u16s([bf[2]!, bf[4]!, bf[3]!, bf[5]!]));
    expect(Array.from(torchTensorToFloat64(t('bf16')))).toEqual([Infinity, -0, 2 ** -133, 3.140625]);
    expect(Array.from(new BigInt64Array(tensorToContiguousBytes(t('long')).buffer))).toEqual(big);
    expect(Array.from(new BigInt64Array(tensorToContiguousBytes(t('scalar')).buffer))).toEqual([-3n]);
  });

  it('converts float16, bool, int8 and uint8 values', () => {
    const cases: [string, Uint8Array, number[]][] = [
      ['HalfStorage', u16s([0x3c00, 0x7c00, 0xfc00, 0x0001, 0x8000, 0x7bff]), [1, Infinity, -Infinity, 2 ** -24, -0, 65504]],
      ['BoolStorage', Uint8Array.from([1, 0, 1, 1, 0, 0]), [1, 0, 1, 1, 0, 0]],
      ['CharStorage', Uint8Array.from([0x80, 0xff, 0, 1, 0x7f, 0x10]), [-128, -1, 0, 1, 127, 16]],
      ['ByteStorage', Uint8Array.from([0x80, 0xff, 0, 1, 0x7f, 0x10]), [128, 255, 0, 1, 127, 16]],
    ];
    for (const [cls, data, want] of cases) {
      const p = tmpFile(torchZip(pickle(tensorP({ key: '0', cls, numel: 6, offset: 0, shape: [3, 2], stride: [2, 1] })), { 0: data }));
      const got = Array.from(torchTensorToFloat64(loadTorchFile(p) as TorchTensor));
      expect(got.every((x, i) => Object.is(x, want[i])), `${cls}: ${got}`).toBe(true);
    }
  });

  it('keeps the DAG of a shared sub-list linear (no exponential walk)', () => {
    // L0 = [], L(k+1) = [Lk, Lk]: 2^60 paths, 61 objects.
    const levels = Array.from({ length: 60 }, (_, k) => bytes(EMPTY_LIST, MARK, binget(k), binget(k), APPENDS, binput(k + 1)));
    const data = pickle(EMPTY_LIST, MARK, EMPTY_LIST, binput(0), ...levels, APPENDS);
    const v = loadTorchFile(tmpFile(torchZip(data))) as TorchValue[][];
    expect(v.length).toBe(61);
    expect(v[60]![0]).toBe(v[59]);
    expect(v[60]![1]).toBe(v[59]);
  });

  const refused: [string, () => Uint8Array, RegExp][] = [
    ['a view past its storage', () => torchZip(pickle(tensorP(spec({ offset: 13 }))), { 0: f32(base) }), /reaches outside its 24-element storage/],
    ['a stride past its storage', () => torchZip(pickle(tensorP(spec({ stride: [12, 4, 2] }))), { 0: f32(base) }), /reaches outside/],
    ['a storage member of the wrong size', () => torchZip(pickle(tensorP(spec({}))), { 0: f32(ramp(23)) }), /holds 92 bytes, its id says 96/],
    ['a missing storage member', () => torchZip(pickle(tensorP(spec({})))), /has no member archive\/data\/0/],
    ['one key with two dtypes', () => torchZip(pickle(list(tensorP(spec({ shape: [24], stride: [1] })), tensorP({ key: '0', cls: 'IntStorage', numel: 24, offset: 0, shape: [24], stride: [1] }))), { 0: f32(base) }), /two dtypes/],
    ['a member outside the root folder', () => makeZip([{ name: 'a/data.pkl', data: pickle(NONE) }, { name: 'b/version', data: enc.encode('3\n') }]), /not under the archive folder a\//],
    ['an archive without data.pkl', () => makeZip([{ name: 'a/version', data: enc.encode('3\n') }]), /no a\/data.pkl/],
    ['big-endian storages', () => torchZip(pickle(NONE), {}, 'archive', 'big'), /big-endian/],
    ['non-empty backward hooks', () => torchZip(pickle(global('torch._utils', '_rebuild_tensor_v2'), MARK, tuple(str('storage'), global('torch', 'FloatStorage'), str('0'), str('cpu'), int(24)), BINPERSID, int(0), tuple(int(24)), tuple(int(1)), NEWFALSE, ordered(), str('h'), NONE, SETITEM, TUPLE, REDUCE), { 0: f32(base) }), /backward hooks/],
    ['a bare storage', () => torchZip(pickle(tuple(str('storage'), global('torch', 'FloatStorage'), str('0'), str('cpu'), int(24)), BINPERSID), { 0: f32(base) }), /bare storage/],
    ['a bare global', () => torchZip(pickle(global('torch', 'FloatStorage'))), /unsupported value: global 'torch FloatStorage'/],
    ['a list that contains itself', () => torchZip(pickle(EMPTY_LIST, binput(0), binget(0), APPEND)), /cyclic/],
    ['a BUILD on a plain dict', () => torchZip(pickle(EMPTY_DICT, EMPTY_DICT, BUILD)), /BUILD is only supported/],
    ['a malformed persistent id', () => torchZip(pickle(tuple(str('module'), str('x')), BINPERSID)), /persistent id/],
    ['a forbidden global after a missing storage (scan comes first)', () => torchZip(pickle(list(tensorP(spec({ key: 'missing' })), global('builtins', 'eval')))), /GLOBAL 'builtins eval'/],
    ['a file that is not torch.save', () => enc.encode('{"not": "a checkpoint"}'), /neither a torch.save zip/],
  ];
  for (const [what, make, msg] of refused) {
    it(`refuses ${what}`, () => expect(refusal(tmpFile(make())).reason).toMatch(msg));
  }
});

describe('legacy torch.save stream', () => {
  const MAGIC = 0x1950a86a20f9469cfc6cn;
  const sysInfo = (little = true) => pickle(dict(str('protocol_version'), int(1001), str('little_endian'), little ? NEWTRUE : NEWFALSE, str('type_sizes'), dict(str('short'), int(2), str('int'), int(4), str('long'), int(4))));
  const storage = (numel: number, data: Uint8Array) => bytes(le(numel, 8), data);
  const w = ramp(12, 1.5), idx = [5n, -1n, 2n ** 60n];
  // Keys are torch's arbitrary ids; the key list is sorted as strings ('7' < '94823').
  const obj = (extra: Part[] = []) => pickle(dict(
    str('w'), tensorP({ key: '94823', cls: 'FloatStorage', numel: 12, offset: 0, shape: [3, 4], stride: [4, 1] }, true),
    str('w_t'), tensorP({ key: '94823', cls: 'FloatStorage', numel: 12, offset: 1, shape: [3, 3], stride: [1, 4] }, true),
    str('idx'), tensorP({ key: '7', cls: 'LongStorage', numel: 3, offset: 0, shape: [3], stride: [1] }, true),
    str('n'), int(3), ...extra,
  ));
  function legacy(over: { magic?: Uint8Array; sys?: Uint8Array; obj?: Uint8Array; keys?: Uint8Array; tail?: Uint8Array } = {}): Uint8Array {
    return bytes(
      over.magic ?? pickle(long1(MAGIC)), pickle(int(1001)), over.sys ?? sysInfo(), over.obj ?? obj(), over.keys ?? pickle(list(str('7'), str('94823'))),
      over.tail ?? bytes(storage(3, i64(idx)), storage(12, f32(w))),
    );
  }

  it('reads the object and matches storages to keys by value', () => {
    const v = loadTorchFile(tmpFile(legacy())) as Map<string, TorchValue>;
    const wt = v.get('w_t') as TorchTensor;
    expect(wt.storage).toBe((v.get('w') as TorchTensor).storage);
    const wf = Array.from(Float32Array.from(w));
    expect(Array.from(torchTensorToFloat64(wt))).toEqual([0, 1, 2].flatMap((i) => [0, 1, 2].map((j) => wf[1 + i + 4 * j])));
    expect(Array.from(new BigInt64Array(tensorToContiguousBytes(v.get('idx') as TorchTensor).buffer))).toEqual(idx);
    expect(v.get('n')).toBe(3);
  });

  const refused: [string, () => Uint8Array, RegExp][] = [
    ['a wrong magic number', () => legacy({ magic: pickle(long1(MAGIC + 1n)) }), /magic number/],
    ['a big-endian writer', () => legacy({ sys: sysInfo(false) }), /big-endian/],
    ['a key list missing a storage', () => legacy({ keys: pickle(list(str('94823'))) }), /key list does not match/],
    ['a key list with an unknown key', () => legacy({ keys: pickle(list(str('7'), str('94824'))) }), /key list does not match/],
    ['an element count unlike the id', () => legacy({ tail: bytes(storage(4, i64([...idx, 0n])), storage(12, f32(w))) }), /has 4 elements, its id says 3/],
    ['a truncated storage', () => legacy().subarray(0, -4), /truncated inside storage 94823/],
    ['trailing bytes', () => bytes(legacy(), 0), /1 trailing bytes/],
    ['a storage view id', () => legacy({ obj: pickle(tuple(str('storage'), global('torch', 'FloatStorage'), str('7'), str('cpu'), int(3), tuple(str('7'), int(0), int(3))), BINPERSID) }), /storage view/],
    ['a forbidden global in the last pickle, before the bad magic is seen', () => legacy({ magic: pickle(long1(1n)), keys: pickle(global('os', 'system'), tuple(str('id')), REDUCE) }), /GLOBAL 'os system'/],
  ];
  for (const [what, make, msg] of refused) {
    it(`refuses ${what}`, () => expect(refusal(tmpFile(make())).reason).toMatch(msg));
  }
});

describe('DanceGRPO LatentDataset', () => {
  // Two samples saved as DanceGRPO does: views at idx*L*C of one batch storage, bf16.
  const L = 3, C = 4, P = 5;
  const words = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (0x3c00 + seed * 97 + i * 13) & 0xffff);
  const embeds = words(2 * L * C, 1), pooled = words(2 * P, 2), ids = new Array(L * 3).fill(0);
  const dir = join(tmp, 'dataset');
  const save = (folder: string, name: string, cls: string, numel: number, offset: number, shape: number[], stride: number[], data: Uint8Array) => {
    mkdirSync(join(dir, folder), { recursive: true });
    writeFileSync(join(dir, folder, name), torchZip(pickle(tensorP({ key: '0', cls, numel, offset, shape, stride })), { 0: data }, name.replace('.pt', '')));
  };
  for (const idx of [0, 1]) {
    save('prompt_embed', `${idx}.pt`, 'BFloat16Storage', 2 * L * C, idx * L * C, [L, C], [C, 1], u16s(embeds));
    save('pooled_prompt_embeds', `${idx}.pt`, 'BFloat16Storage', 2 * P, idx * P, [P], [1], u16s(pooled));
    save('text_ids', `${idx}.pt`, 'BFloat16Storage', L * 3, idx * 3, [3], [1], u16s(ids));
  }
  const entry = (i: number, caption: string) => ({ prompt_embed_path: `${i}.pt`, text_ids: `${i}.pt`, pooled_prompt_embeds_path: `${i}.pt`, caption });
  writeFileSync(join(dir, 'videos2caption.json'), JSON.stringify([entry(1, 'second'), entry(0, 'first')], null, 4));

  it('returns the views as torch.load does, in index order, and collates them', () => {
    const ds = new LatentDataset(dir);
    expect(ds.length).toBe(2);
    const a = ds.item(0), b = ds.item(1);
    expect([a.caption, b.caption]).toEqual(['second', 'first']);
    expect(a.promptEmbed).toEqual({ dtype: 'bfloat16', shape: [L, C], bytes: u16s(embeds.slice(L * C)) });
    expect(b.pooledPromptEmbeds).toEqual({ dtype: 'bfloat16', shape: [P], bytes: u16s(pooled.slice(0, P)) });
    expect(a.textIds.shape).toEqual([3]);
    const batch = latentCollate([a, b]);
    expect(batch.captions).toEqual(['second', 'first']);
    expect(batch.promptEmbeds).toEqual({ dtype: 'bfloat16', shape: [2, L, C], bytes: u16s([...embeds.slice(L * C), ...embeds.slice(0, L * C)]) });
    expect(batch.textIds.shape).toEqual([2, 3]);
    expect(new LatentDataset(join(dir, 'videos2caption.json')).item(1)).toEqual(b);
    expect(() => ds.item(2)).toThrow(RangeError);
  });

  it('refuses index paths that leave their folder, non-tensor files and mismatched batches', () => {
    const bad = join(tmp, 'bad-index');
    mkdirSync(bad, { recursive: true });
    writeFileSync(join(bad, 'videos2caption.json'), JSON.stringify([{ ...entry(0, 'x'), text_ids: '../../etc/passwd' }]));
    expect(() => new LatentDataset(bad)).toThrow(/leaves its folder/);
    writeFileSync(join(bad, 'videos2caption.json'), JSON.stringify([{ ...entry(0, 'x'), caption: 3 }]));
    expect(() => new LatentDataset(bad)).toThrow(/no string "caption"/);
    mkdirSync(join(bad, 'prompt_embed'), { recursive: true });
    writeFileSync(join(bad, 'prompt_embed', '0.pt'), torchZip(pickle(list())));
    writeFileSync(join(bad, 'videos2caption.json'), JSON.stringify([entry(0, 'x')]));
    expect(() => new LatentDataset(bad).item(0)).toThrow(/does not hold a single tensor/);
    const ds = new LatentDataset(dir);
    const a = ds.item(0);
    expect(() => latentCollate([a, { ...a, pooledPromptEmbeds: { ...a.pooledPromptEmbeds, shape: [1, P] } }])).toThrow(/cannot stack/);
  });
});
