// safetensors reading and writing, following the reference implementation (huggingface/safetensors,
// safetensors/src/tensor.rs): 8-byte little-endian header length, a JSON header, then the data section.
// Readers validate the whole header before handing out a single tensor and accept exactly what the
// reference accepts; tensor bytes are read on demand, so a 23 GB sharded checkpoint costs only its headers
// until tensors are asked for. The writer produces the bytes the python package writes, atomically.
import {
  closeSync, fstatSync, fsyncSync, openSync, readFileSync, readSync, renameSync, rmSync, statSync, readdirSync, writeSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { bf16BitsToF32, f16BitsToF32 } from '../tensor/dtype.ts';

export type StDType =
  | 'BOOL' | 'F4' | 'F6_E2M3' | 'F6_E3M2' | 'U8' | 'I8' | 'F8_E5M2' | 'F8_E4M3' | 'F8_E8M0' | 'F8_E4M3FNUZ' | 'F8_E5M2FNUZ'
  | 'I16' | 'U16' | 'F16' | 'BF16' | 'I32' | 'U32' | 'F32' | 'C64' | 'F64' | 'I64' | 'U64';

export interface StTensor {
  dtype: StDType;
  shape: number[];
  /** The tensor's raw little-endian bytes. */
  bytes: Uint8Array;
}

export interface StFile {
  path: string;
  metadata: Record<string, string>;
  tensors: Map<string, StTensor>;
}

/** Where a tensor lives: enough to read or stream it without this module. */
export interface StTensorInfo {
  dtype: StDType;
  shape: number[];
  /** The file holding the tensor (the shard, for a sharded checkpoint). */
  file: string;
  /** Absolute byte offset of the tensor's data in `file`. */
  offset: number;
  byteLength: number;
}

/** What a single file and a sharded checkpoint both offer, so loaders can take either. */
export interface TensorSource {
  names(): string[];
  has(name: string): boolean;
  info(name: string): StTensorInfo;
  read(name: string): StTensor;
  close(): void;
}

// Every dtype the format defines, in the order of the reference's `Dtype` enum (increasing alignment),
// with its size in bits. The writer sorts tensors by this order, descending, as the reference's
// `prepare` does. Files with any of them are read (as raw bytes); only numeric conversion is limited.
const ST_DTYPE_BITS: Record<StDType, number> = {
  BOOL: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8, F8_E4M3FNUZ: 8, F8_E5M2FNUZ: 8,
  I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32, C64: 64, F64: 64, I64: 64, U64: 64,
};
const DTYPE_RANK = Object.fromEntries(Object.keys(ST_DTYPE_BITS).map((d, i) => [d, i])) as Record<StDType, number>;

/** Bytes per element (fractional for the sub-byte F4/F6 types). */
export const ST_DTYPE_BYTES = Object.fromEntries(Object.entries(ST_DTYPE_BITS).map(([d, b]) => [d, b / 8])) as Record<StDType, number>;

// The reference refuses headers longer than this (MAX_HEADER_SIZE), whatever the file size.
const MAX_HEADER_BYTES = 100_000_000;

/** A malformed file or a bad request; the message names the file, the tensor where one is involved, and the fault. */
export class SafetensorsError extends Error {
  readonly file: string;
  readonly tensor: string | undefined;
  constructor(file: string, fault: string, tensor?: string) {
    super(`${file}: ${tensor === undefined ? '' : `tensor ${JSON.stringify(tensor)}: `}${fault}`);
    this.name = 'SafetensorsError';
    this.file = file;
    this.tensor = tensor;
  }
}

interface Entry { dtype: StDType; shape: number[]; begin: number; end: number }

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
// The reference parses shapes and offsets as u64 (usize): integers only, no fractions or negatives.
const isU64 = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 64;

/**
 * Bytes a tensor of this dtype and shape needs, or null where the reference's checked u64 arithmetic
 * overflows. It multiplies left to right and fails on the first overflow, so [2^32, 2^32, 0] is refused
 * although it has no elements; we refuse it too.
 */
function byteSize(dtype: StDType, shape: number[]): bigint | null {
  const limit = 1n << 64n;
  // (a sub-byte dtype whose bits do not fill whole bytes also gives null: the reference's MisalignedSlice)
  let elements = 1n;
  for (const d of shape) {
    elements *= BigInt(d);
    if (elements >= limit) return null;
  }
  const bits = elements * BigInt(ST_DTYPE_BITS[dtype]);
  return bits >= limit || bits % 8n !== 0n ? null : bits / 8n;
}

function dtypeFault(dtype: unknown): string {
  if (typeof dtype !== 'string') return `dtype ${JSON.stringify(dtype)} is not a string`;
  return `unknown dtype ${JSON.stringify(dtype)}`;
}

function parseMetadata(file: string, value: unknown): Record<string, string> {
  if (value === null) return {}; // the reference reads `__metadata__` as an Option: null means none
  if (!isObject(value)) throw new SafetensorsError(file, '__metadata__ is not a JSON object');
  for (const [key, v] of Object.entries(value)) {
    if (typeof v !== 'string') {
      throw new SafetensorsError(file, `__metadata__ must map strings to strings, but ${JSON.stringify(key)} maps to ${JSON.stringify(v)}`);
    }
  }
  return value as Record<string, string>;
}

/**
 * Parse and validate a header against a data section of `dataLength` bytes: every entry well formed,
 * size == dtype size x prod(shape), and the tensors tiling the data section exactly (sorted by offsets,
 * each starting where the previous ended, the last ending at the end of the file), as the reference demands.
 */
function parseHeader(file: string, json: Uint8Array, dataLength: number): { metadata: Record<string, string>; entries: Map<string, Entry> } {
  let text: string;
  try {
    // fatal: invalid UTF-8 is refused, not replaced; ignoreBOM: a BOM stays in the text, where JSON.parse refuses it as the reference does.
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(json);
  } catch {
    throw new SafetensorsError(file, 'header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    throw new SafetensorsError(file, `header is not valid JSON (${(err as Error).message})`);
  }
  if (!isObject(header)) throw new SafetensorsError(file, 'header is not a JSON object');

  let metadata: Record<string, string> = {};
  const entries = new Map<string, Entry>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(file, entry);
      continue;
    }
    const fault = (what: string) => new SafetensorsError(file, what, name);
    if (!isObject(entry)) throw fault('entry is not a JSON object');
    // Fields other than these three are ignored, as the reference ignores them.
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== 'string' || !Object.hasOwn(ST_DTYPE_BITS, dtype)) throw fault(dtypeFault(dtype));
    if (!Array.isArray(shape) || !shape.every(isU64)) throw fault(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isU64)) {
      throw fault(`data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    if (end < begin) throw fault(`data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataLength) {
      throw fault(`data_offsets [${begin}, ${end}] run past the end of the data section (${dataLength} bytes): truncated file or corrupt offsets`);
    }
    const size = byteSize(dtype as StDType, shape);
    if (size === null) throw fault(`shape ${JSON.stringify(shape)} of ${dtype} overflows 64-bit sizes or does not fill whole bytes`);
    if (BigInt(end - begin) !== size) {
      throw fault(`data_offsets [${begin}, ${end}] hold ${end - begin} bytes but ${dtype} x ${JSON.stringify(shape)} needs ${size}`);
    }
    entries.set(name, { dtype: dtype as StDType, shape, begin, end });
  }

  // Zero-byte tensors sort before a tensor starting at the same offset, so they fit between neighbours.
  const byOffset = [...entries].sort(([, a], [, b]) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  let previous = '';
  for (const [name, e] of byOffset) {
    if (e.begin > covered) throw new SafetensorsError(file, `data bytes [${covered}, ${e.begin}) before this tensor belong to no tensor`, name);
    if (e.begin < covered) throw new SafetensorsError(file, `data_offsets [${e.begin}, ${e.end}] overlap tensor ${JSON.stringify(previous)}`, name);
    covered = e.end;
    previous = name;
  }
  if (covered !== dataLength) throw new SafetensorsError(file, `${dataLength - covered} trailing bytes after the last tensor belong to no tensor`);
  return { metadata, entries };
}

/** Read exactly `length` bytes at `position`; a short file is an error, not a short tensor. */
function readFully(fd: number, file: string, position: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let done = 0; done < length;) {
    // readSync takes at most 2 GiB per call.
    const n = readSync(fd, out, done, Math.min(length - done, 1 << 30), position + done);
    if (n === 0) throw new SafetensorsError(file, `unexpected end of file at byte ${position + done} (was it truncated while open?)`);
    done += n;
  }
  return out;
}

/** One .safetensors file, header validated on open, tensors read one at a time on demand. */
export class SafetensorsReader implements TensorSource {
  readonly path: string;
  readonly metadata: Record<string, string>;
  private fd: number | undefined;
  private readonly entries: Map<string, Entry>;
  private readonly dataStart: number;

  private constructor(path: string, fd: number, metadata: Record<string, string>, entries: Map<string, Entry>, dataStart: number) {
    this.path = path;
    this.fd = fd;
    this.metadata = metadata;
    this.entries = entries;
    this.dataStart = dataStart;
  }

  static open(path: string): SafetensorsReader {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size < 8) throw new SafetensorsError(path, `file is ${size} bytes, shorter than the 8-byte header length`);
      const n = Buffer.from(readFully(fd, path, 0, 8)).readBigUInt64LE(0);
      if (n > BigInt(MAX_HEADER_BYTES)) throw new SafetensorsError(path, `header length ${n} exceeds the format's limit of ${MAX_HEADER_BYTES} bytes`);
      const dataStart = 8 + Number(n);
      if (dataStart > size) throw new SafetensorsError(path, `header length ${n} runs past the end of the file (${size} bytes)`);
      const { metadata, entries } = parseHeader(path, readFully(fd, path, 8, Number(n)), size - dataStart);
      return new SafetensorsReader(path, fd, metadata, entries, dataStart);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Tensor names in header order. */
  names(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  info(name: string): StTensorInfo {
    const e = this.entry(name);
    return { dtype: e.dtype, shape: [...e.shape], file: this.path, offset: this.dataStart + e.begin, byteLength: e.end - e.begin };
  }

  read(name: string): StTensor {
    const e = this.entry(name);
    if (this.fd === undefined) throw new SafetensorsError(this.path, 'read after close', name);
    return { dtype: e.dtype, shape: [...e.shape], bytes: readFully(this.fd, this.path, this.dataStart + e.begin, e.end - e.begin) };
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (e === undefined) throw new SafetensorsError(this.path, 'no such tensor', name);
    return e;
  }
}

/**
 * A checkpoint split over several files by a `*.safetensors.index.json` ({"weight_map": {name: shard file}},
 * shard files relative to the index), as diffusers and transformers save large models. Every shard's
 * header is validated on open, and every name the index lists must be in the shard it names.
 */
export class ShardedSafetensors implements TensorSource {
  readonly path: string;
  private readonly route: Map<string, SafetensorsReader>;
  private readonly shards: SafetensorsReader[];

  private constructor(path: string, route: Map<string, SafetensorsReader>, shards: SafetensorsReader[]) {
    this.path = path;
    this.route = route;
    this.shards = shards;
  }

  /** Open an index file, or the folder holding exactly one `*.safetensors.index.json`. */
  static open(indexOrDir: string): ShardedSafetensors {
    const path = statSync(indexOrDir).isDirectory() ? findIndex(indexOrDir) : indexOrDir;
    let index: unknown;
    try {
      index = JSON.parse(readFileSync(path, 'utf8'));
    } catch (err) {
      throw new SafetensorsError(path, `index is not valid JSON (${(err as Error).message})`);
    }
    const weightMap = isObject(index) ? index.weight_map : undefined;
    if (!isObject(weightMap)) throw new SafetensorsError(path, 'index has no "weight_map" object');

    const byFile = new Map<string, SafetensorsReader>();
    const route = new Map<string, SafetensorsReader>();
    try {
      for (const [name, file] of Object.entries(weightMap)) {
        if (typeof file !== 'string') throw new SafetensorsError(path, `weight_map entry ${JSON.stringify(file)} is not a file name`, name);
        let shard = byFile.get(file);
        if (shard === undefined) {
          shard = SafetensorsReader.open(join(dirname(path), file));
          byFile.set(file, shard);
        }
        if (!shard.has(name)) throw new SafetensorsError(path, `weight_map puts it in ${file}, which has no such tensor`, name);
        route.set(name, shard);
      }
    } catch (err) {
      for (const shard of byFile.values()) shard.close();
      throw err;
    }
    return new ShardedSafetensors(path, route, [...byFile.values()]);
  }

  /** Tensor names in weight_map order. */
  names(): string[] {
    return [...this.route.keys()];
  }

  has(name: string): boolean {
    return this.route.has(name);
  }

  info(name: string): StTensorInfo {
    return this.shard(name).info(name);
  }

  read(name: string): StTensor {
    return this.shard(name).read(name);
  }

  close(): void {
    for (const shard of this.shards) shard.close();
  }

  private shard(name: string): SafetensorsReader {
    const shard = this.route.get(name);
    if (shard === undefined) throw new SafetensorsError(this.path, 'no such tensor in the weight_map', name);
    return shard;
  }
}

function findIndex(dir: string): string {
  const found = readdirSync(dir).filter((f) => f.endsWith('.safetensors.index.json')).sort();
  if (found.length !== 1) {
    throw new SafetensorsError(dir, found.length === 0 ? 'no *.safetensors.index.json in this folder' : `several index files, pass one: ${found.join(', ')}`);
  }
  return join(dir, found[0]!);
}

/** A whole file in memory, validated exactly as SafetensorsReader validates it. */
export function readSafetensors(path: string): StFile {
  const reader = SafetensorsReader.open(path);
  try {
    return { path, metadata: reader.metadata, tensors: new Map(reader.names().map((name) => [name, reader.read(name)])) };
  } finally {
    reader.close();
  }
}

/** A tensor of a whole-file read, or an error naming the file and the missing tensor. */
export function stTensor(file: StFile, name: string): StTensor {
  const t = file.tensors.get(name);
  if (t === undefined) throw new SafetensorsError(file.path, 'no such tensor', name);
  return t;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.byteLength;) done += writeSync(fd, bytes, done, Math.min(bytes.byteLength - done, 1 << 30));
}

/**
 * Write tensors as the python `safetensors` package writes them: tensors ordered by dtype alignment
 * (descending) then name (bytewise UTF-8), so every tensor starts aligned to its element size; compact
 * JSON header with `__metadata__` first when given, padded with spaces to a multiple of 8. Tensors are
 * streamed one by one into a temporary file beside `path`, which is fsynced and renamed over `path`:
 * a reader sees the old file or the complete new one, never a partial checkpoint.
 */
export function writeSafetensors(path: string, tensors: Record<string, StTensor> | Map<string, StTensor>, metadata?: Record<string, string>): void {
  const list = [...(tensors instanceof Map ? tensors : Object.entries(tensors))].map(([name, tensor]) => ({ name, key: Buffer.from(name), tensor }));
  for (const { name, tensor } of list) {
    const fault = (what: string) => new SafetensorsError(path, what, name);
    if (name === '__metadata__') throw fault('the name is reserved for the metadata');
    if (!Object.hasOwn(ST_DTYPE_BITS, tensor.dtype)) throw fault(dtypeFault(tensor.dtype));
    if (!tensor.shape.every(Number.isSafeInteger) || tensor.shape.some((d) => d < 0)) throw fault(`shape ${JSON.stringify(tensor.shape)} is not a list of non-negative integers`);
    const size = byteSize(tensor.dtype, tensor.shape);
    if (size !== BigInt(tensor.bytes.byteLength)) {
      throw fault(`has ${tensor.bytes.byteLength} bytes but ${tensor.dtype} x ${JSON.stringify(tensor.shape)} needs ${size ?? 'a size that overflows 64 bits or does not fill whole bytes'}`);
    }
  }
  for (const [key, value] of Object.entries(metadata ?? {})) {
    if (typeof value !== 'string') throw new SafetensorsError(path, `metadata must map strings to strings, but ${JSON.stringify(key)} maps to ${JSON.stringify(value)}`);
  }
  list.sort((a, b) => DTYPE_RANK[b.tensor.dtype] - DTYPE_RANK[a.tensor.dtype] || Buffer.compare(a.key, b.key));

  // Built by hand rather than by JSON.stringify of an object, which would move integer-like names first.
  const fields: string[] = [];
  if (metadata !== undefined) {
    fields.push(`"__metadata__":{${Object.entries(metadata).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`);
  }
  let offset = 0;
  for (const { name, tensor } of list) {
    const end = offset + tensor.bytes.byteLength;
    fields.push(`${JSON.stringify(name)}:{"dtype":"${tensor.dtype}","shape":${JSON.stringify(tensor.shape)},"data_offsets":[${offset},${end}]}`);
    offset = end;
  }
  const json = Buffer.from(`{${fields.join(',')}}`);
  const header = Buffer.alloc(8 + Math.ceil(json.length / 8) * 8, ' ');
  if (header.length - 8 > MAX_HEADER_BYTES) throw new SafetensorsError(path, `header of ${header.length - 8} bytes exceeds the format's limit of ${MAX_HEADER_BYTES}`);
  header.writeBigUInt64LE(BigInt(header.length - 8), 0);
  json.copy(header, 8);

  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  let fd: number | undefined = openSync(temp, 'wx');
  try {
    writeAll(fd, header);
    for (const { tensor } of list) writeAll(fd, tensor.bytes);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(temp, path);
  } catch (err) {
    if (fd !== undefined) closeSync(fd);
    rmSync(temp, { force: true });
    throw err;
  }
  // Make the rename itself durable: it lives in the folder's entry, not in the file.
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

/** A tensor's values as float64 numbers (any float or integer dtype). */
export function stToFloat64(t: StTensor): Float64Array {
  const dv = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  const n = t.bytes.byteLength / ST_DTYPE_BYTES[t.dtype];
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    switch (t.dtype) {
      case 'F64': out[i] = dv.getFloat64(i * 8, true); break;
      case 'F32': out[i] = dv.getFloat32(i * 4, true); break;
      case 'BF16': out[i] = bf16BitsToF32(dv.getUint16(i * 2, true)); break;
      case 'F16': out[i] = f16BitsToF32(dv.getUint16(i * 2, true)); break;
      case 'I64': out[i] = Number(dv.getBigInt64(i * 8, true)); break;
      case 'I32': out[i] = dv.getInt32(i * 4, true); break;
      case 'I16': out[i] = dv.getInt16(i * 2, true); break;
      case 'I8': out[i] = dv.getInt8(i); break;
      case 'U8': case 'BOOL': out[i] = dv.getUint8(i); break;
      case 'U16': out[i] = dv.getUint16(i * 2, true); break;
      case 'U32': out[i] = dv.getUint32(i * 4, true); break;
      case 'U64': out[i] = Number(dv.getBigUint64(i * 8, true)); break;
      default: throw new Error(`${t.dtype} tensors are read as raw bytes only; no numeric conversion is implemented`);
    }
  }
  return out;
}

/** A tensor's values as float32 (exact for F32, F16, BF16). */
export function stToFloat32(t: StTensor): Float32Array {
  if (t.dtype === 'F32') return new Float32Array(t.bytes.slice().buffer);
  return Float32Array.from(stToFloat64(t));
}
