// Reader for torch.save files, without Python and without running pickle: the zip format (torch >= 1.6)
// and the legacy stream (_use_new_zipfile_serialization=False). Only plain data comes back: containers,
// Python scalars and tensors; any other global is refused by the pickle scan before anything is built.
//
// Representation (TorchValue):
//   dict              -> Map (every dict: a JS object would reorder integer-like keys and lose non-str keys)
//   OrderedDict       -> TorchOrderedDict, a Map whose `attributes` hold what BUILD restored (state_dict _metadata)
//   list / tuple      -> Array / PyTuple
//   int               -> number, or bigint outside +-(2^53 - 1); float -> number (so 2 and 2.0 read the same)
//   str, None, bool   -> string, null, boolean
//   tensor            -> TorchTensor: a view (shape, stride, storage offset in elements) of a TorchStorage;
//                        views of one storage share the same TorchStorage object, as in torch.
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { PyGlobal, PyTuple, unpickle, scanPickle, type PickleHooks } from './pickle.ts';
import { stToFloat64, type StDType } from './safetensors.ts';
import { ZipFile } from './zip.ts';

export { PyTuple } from './pickle.ts';

export type TorchDType = 'float64' | 'float32' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'int16' | 'int8' | 'uint8' | 'bool';

const DTYPES: Record<TorchDType, { size: number; st: StDType; storage: string }> = {
  float64: { size: 8, st: 'F64', storage: 'DoubleStorage' },
  float32: { size: 4, st: 'F32', storage: 'FloatStorage' },
  float16: { size: 2, st: 'F16', storage: 'HalfStorage' },
  bfloat16: { size: 2, st: 'BF16', storage: 'BFloat16Storage' },
  int64: { size: 8, st: 'I64', storage: 'LongStorage' },
  int32: { size: 4, st: 'I32', storage: 'IntStorage' },
  int16: { size: 2, st: 'I16', storage: 'ShortStorage' },
  int8: { size: 1, st: 'I8', storage: 'CharStorage' },
  uint8: { size: 1, st: 'U8', storage: 'ByteStorage' },
  bool: { size: 1, st: 'BOOL', storage: 'BoolStorage' },
};

export function dtypeSize(dtype: TorchDType): number {
  return DTYPES[dtype].size;
}

/** The safetensors spelling of a torch dtype (float32 -> F32). */
export function safetensorsDType(dtype: TorchDType): StDType {
  return DTYPES[dtype].st;
}

/** One storage: raw little-endian bytes, `numel` elements of `dtype`. */
export class TorchStorage {
  constructor(
    readonly key: string,
    readonly dtype: TorchDType,
    readonly numel: number,
    /** Filled when the storage is read (for the legacy format, after the object pickle). */
    public bytes: Uint8Array,
  ) {}
}

export class TorchTensor {
  readonly dtype: TorchDType;
  constructor(
    readonly storage: TorchStorage,
    /** In elements. */
    readonly storageOffset: number,
    readonly shape: readonly number[],
    /** In elements. */
    readonly stride: readonly number[],
    readonly requiresGrad: boolean,
  ) {
    this.dtype = storage.dtype;
  }
}

export type TorchKey = string | number | bigint | boolean | null | PyTuple<TorchKey>;
export type TorchValue =
  | null | boolean | number | bigint | string
  | TorchValue[] | PyTuple<TorchValue> | Map<TorchKey, TorchValue> | TorchTensor;

export class TorchOrderedDict extends Map<TorchKey, TorchValue> {
  /** Instance attributes set by BUILD, e.g. a state_dict's `_metadata`. */
  readonly attributes = new Map<string, TorchValue>();
}

export class TorchFileError extends Error {
  constructor(readonly file: string, readonly reason: string, options?: ErrorOptions) {
    super(`${file}: ${reason}`, options);
  }
}

/** Reads a torch.save file; throws TorchFileError (file + reason) for anything unsafe, unsupported or malformed. */
export function loadTorchFile(path: string): TorchValue {
  try {
    const head = readHead(path, 4);
    // torch tells the formats apart the same way: the zip local-header magic, else a pickle stream.
    if (head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04) return loadZip(path);
    if (head[0] === 0x80) return loadLegacy(path);
    throw new Error('neither a torch.save zip archive nor a legacy pickle stream');
  } catch (e) {
    if (e instanceof TorchFileError) throw e;
    throw new TorchFileError(path, e instanceof Error ? e.message : String(e), { cause: e });
  }
}

/** The tensor's logical values as a fresh row-major little-endian byte buffer. */
export function tensorToContiguousBytes(t: TorchTensor): Uint8Array {
  const es = DTYPES[t.dtype].size;
  const n = t.shape.reduce((a, b) => a * b, 1);
  const src = t.storage.bytes;
  if (isContiguous(t)) return src.slice(t.storageOffset * es, (t.storageOffset + n) * es);
  const out = new Uint8Array(n * es);
  const rank = t.shape.length;
  const idx = new Array<number>(rank).fill(0);
  let off = t.storageOffset;
  for (let i = 0; i < n; i++) {
    for (let b = 0; b < es; b++) out[i * es + b] = src[off * es + b]!;
    // Odometer step over the multi-index, moving the storage offset by the strides.
    for (let d = rank - 1; d >= 0; d--) {
      idx[d]!++;
      off += t.stride[d]!;
      if (idx[d]! < t.shape[d]!) break;
      off -= t.stride[d]! * t.shape[d]!;
      idx[d] = 0;
    }
  }
  return out;
}

/** The tensor's logical values as numbers (int64 beyond 2^53 loses precision: use the bytes for those). */
export function torchTensorToFloat64(t: TorchTensor): Float64Array {
  return stToFloat64({ dtype: DTYPES[t.dtype].st, shape: [...t.shape], bytes: tensorToContiguousBytes(t) });
}

function isContiguous(t: TorchTensor): boolean {
  let expected = 1;
  for (let d = t.shape.length - 1; d >= 0; d--) {
    if (t.shape[d] === 0) return true;
    if (t.shape[d] !== 1 && t.stride[d] !== expected) return false;
    expected *= t.shape[d]!;
  }
  return true;
}

function readHead(path: string, n: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const b = new Uint8Array(n);
    return b.subarray(0, readSync(fd, b, 0, n, 0));
  } finally {
    closeSync(fd);
  }
}

// ---- globals: JS stand-ins for the only Python callables a torch.save of plain data needs ----

function isIndex(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function indexTuple(v: unknown, what: string): number[] {
  if (!(v instanceof PyTuple) || !v.items.every(isIndex)) throw new Error(`tensor ${what} is not a tuple of non-negative ints`);
  return [...(v.items as number[])];
}

/** torch._utils._rebuild_tensor(_v2): a view of `storage`, refused if it reaches outside it. */
function rebuildTensor(storage: unknown, offset: unknown, size: unknown, stride: unknown, requiresGrad: unknown): TorchTensor {
  if (!(storage instanceof TorchStorage)) throw new Error('tensor storage is not a storage');
  if (!isIndex(offset)) throw new Error('tensor storage offset is not a non-negative int');
  const shape = indexTuple(size, 'size'), strides = indexTuple(stride, 'stride');
  if (shape.length !== strides.length) throw new Error('tensor size and stride differ in length');
  if (typeof requiresGrad !== 'boolean') throw new Error('tensor requires_grad is not a bool');
  const empty = shape.includes(0);
  const last = offset + shape.reduce((acc, s, d) => acc + (s - 1) * strides[d]!, 0);
  if (empty ? offset > storage.numel : last >= storage.numel) {
    throw new Error(`tensor view (offset ${offset}, size [${shape}], stride [${strides}]) reaches outside its ${storage.numel}-element storage ${storage.key}`);
  }
  return new TorchTensor(storage, offset, shape, strides, requiresGrad);
}

function noHooks(hooks: unknown): void {
  if (!(hooks instanceof Map) || hooks.size !== 0) throw new Error('tensor backward hooks are not an empty OrderedDict');
}

const GLOBALS = new Map<string, PyGlobal>();
function allow(module: string, name: string, call?: (args: readonly unknown[]) => unknown): void {
  GLOBALS.set(`${module} ${name}`, new PyGlobal(module, name, call));
}
function arity(args: readonly unknown[], min: number, max: number, what: string): void {
  if (args.length < min || args.length > max) throw new Error(`${what} called with ${args.length} arguments`);
}
allow('collections', 'OrderedDict', (args) => {
  arity(args, 0, 0, 'OrderedDict');
  return new TorchOrderedDict();
});
allow('torch._utils', '_rebuild_tensor_v2', (args) => {
  // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  arity(args, 6, 7, '_rebuild_tensor_v2');
  noHooks(args[5]);
  // Metadata carries flags (conj/neg bits, subclass state) this reader cannot honour.
  if (args.length === 7 && args[6] !== null && !(args[6] instanceof Map && args[6].size === 0)) throw new Error('tensor metadata is not supported');
  return rebuildTensor(args[0], args[1], args[2], args[3], args[4]);
});
allow('torch._utils', '_rebuild_tensor', (args) => {
  arity(args, 4, 4, '_rebuild_tensor');
  return rebuildTensor(args[0], args[1], args[2], args[3], false);
});
allow('torch._utils', '_rebuild_parameter', (args) => {
  // (data, requires_grad, backward_hooks): an nn.Parameter is its tensor plus the flag.
  arity(args, 3, 3, '_rebuild_parameter');
  const [t, requiresGrad] = args;
  if (!(t instanceof TorchTensor) || typeof requiresGrad !== 'boolean') throw new Error('bad _rebuild_parameter arguments');
  noHooks(args[2]);
  return new TorchTensor(t.storage, t.storageOffset, t.shape, t.stride, requiresGrad);
});
allow('torch', 'Size', (args) => {
  arity(args, 1, 1, 'torch.Size');
  return new PyTuple(indexTuple(args[0], 'torch.Size'));
});
// Storage classes are data only: they name the dtype inside a persistent id and are never called.
const STORAGE_DTYPE = new Map<string, TorchDType>();
for (const [dtype, { storage }] of Object.entries(DTYPES) as [TorchDType, (typeof DTYPES)[TorchDType]][]) {
  allow('torch', storage);
  STORAGE_DTYPE.set(storage, dtype);
}

/** BUILD is accepted only where torch's state_dict uses it: attributes (a str-keyed dict) on an OrderedDict. */
function build(obj: unknown, state: unknown): void {
  if (!(obj instanceof TorchOrderedDict) || !(state instanceof Map)) throw new Error('BUILD is only supported on an OrderedDict with a dict state');
  for (const [k, v] of state) {
    if (typeof k !== 'string') throw new Error('BUILD state has a non-str key');
    obj.attributes.set(k, v as TorchValue);
  }
}

interface StorageRef {
  dtype: TorchDType;
  key: string;
  numel: number;
  /** Legacy only: view metadata, always None since torch 1.0. */
  view?: unknown;
}

/** ('storage', <dtype>Storage, key, location, numel[, view_metadata]) */
function parseStorageId(pid: unknown, fields: number): StorageRef {
  if (!(pid instanceof PyTuple) || pid.items.length !== fields || pid.items[0] !== 'storage') {
    throw new Error(`persistent id is not a ${fields}-field ('storage', ...) tuple`);
  }
  const [, cls, key, location, numel, view] = pid.items;
  const dtype = cls instanceof PyGlobal && cls.module === 'torch' ? STORAGE_DTYPE.get(cls.name) : undefined;
  if (!dtype) throw new Error('persistent id does not name a storage class');
  if (typeof key !== 'string' || typeof location !== 'string' || !isIndex(numel)) throw new Error(`malformed persistent id for storage ${String(key)}`);
  return { dtype, key, numel, view };
}

/** Same key, same storage object; a key seen again with another dtype or size is refused. */
function sharedStorage(storages: Map<string, TorchStorage>, ref: StorageRef, read: () => Uint8Array): TorchStorage {
  const seen = storages.get(ref.key);
  if (seen) {
    if (seen.dtype !== ref.dtype || seen.numel !== ref.numel) throw new Error(`storage ${ref.key} is referenced with two dtypes or sizes`);
    return seen;
  }
  const s = new TorchStorage(ref.key, ref.dtype, ref.numel, read());
  storages.set(ref.key, s);
  return s;
}

function hooks(persistentLoad: (pid: unknown) => unknown): PickleHooks {
  return { globals: GLOBALS, persistentLoad, build };
}

const noPersistentIds = hooks(() => {
  throw new Error('unexpected persistent id');
});

// ---- zip format: <root>/data.pkl, <root>/data/<key> per storage, <root>/byteorder ----

function loadZip(path: string): TorchValue {
  const zip = ZipFile.open(path);
  try {
    // The root folder is whatever name the file had at save time; torch requires every member under it.
    const root = zip.entries[0]?.name.split('/')[0] ?? '';
    for (const e of zip.entries) {
      if (!e.name.startsWith(`${root}/`)) throw new Error(`zip member ${JSON.stringify(e.name)} is not under the archive folder ${root}/`);
    }
    const pkl = zip.get(`${root}/data.pkl`);
    if (!pkl) throw new Error(`no ${root}/data.pkl in the archive`);
    const order = zip.get(`${root}/byteorder`);
    if (order && new TextDecoder().decode(zip.read(order)) !== 'little') throw new Error('big-endian storages are not supported');
    const storages = new Map<string, TorchStorage>();
    const { value } = unpickle(zip.read(pkl), 0, hooks((pid) => {
      const ref = parseStorageId(pid, 5);
      return sharedStorage(storages, ref, () => {
        const member = zip.get(`${root}/data/${ref.key}`);
        if (!member) throw new Error(`storage ${ref.key} has no member ${root}/data/${ref.key}`);
        const nbytes = ref.numel * DTYPES[ref.dtype].size;
        if (member.size !== nbytes) throw new Error(`storage ${ref.key} holds ${member.size} bytes, its id says ${nbytes}`);
        return zip.read(member);
      });
    }));
    return checkTree(value);
  } finally {
    zip.close();
  }
}

// ---- legacy format: five pickles (magic, protocol, sys_info, object, storage keys), then the storages ----

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;

function loadLegacy(path: string): TorchValue {
  const data = readFileSync(path);
  // All five pickles are scanned before any of them is built.
  const starts = [0];
  for (let i = 0; i < 5; i++) starts.push(scanPickle(data, starts[i]!, new Set(GLOBALS.keys())));
  const magic = unpickle(data, starts[0]!, noPersistentIds).value;
  if (magic !== LEGACY_MAGIC) throw new Error('legacy stream without torch magic number');
  const protocol = unpickle(data, starts[1]!, noPersistentIds).value;
  if (protocol !== LEGACY_PROTOCOL) throw new Error(`legacy protocol version ${String(protocol)} is not supported`);
  const sysInfo = unpickle(data, starts[2]!, noPersistentIds).value;
  if (!(sysInfo instanceof Map) || sysInfo.get('little_endian') !== true) throw new Error('big-endian legacy files are not supported');

  const storages = new Map<string, TorchStorage>();
  const { value } = unpickle(data, starts[3]!, hooks((pid) => {
    const ref = parseStorageId(pid, 6);
    if (ref.view !== null) throw new Error(`storage ${ref.key} is a storage view, not supported`);
    // Bytes come after the last pickle; the storage is filled below once the key order is known.
    return sharedStorage(storages, ref, () => new Uint8Array(0));
  }));
  const keys = unpickle(data, starts[4]!, noPersistentIds).value;
  if (!Array.isArray(keys) || keys.length !== storages.size || !keys.every((k) => typeof k === 'string' && storages.has(k)) || new Set(keys).size !== keys.length) {
    throw new Error('legacy storage key list does not match the storages the object uses');
  }
  // Keys are arbitrary strings (torch's ids): storages are matched by value, in the list's order.
  let pos = starts[5]!;
  for (const key of keys as string[]) {
    const s = storages.get(key)!;
    if (pos + 8 > data.byteLength) throw new Error(`legacy file truncated before storage ${key}`);
    const numel = data.readBigInt64LE(pos);
    if (numel !== BigInt(s.numel)) throw new Error(`legacy storage ${key} has ${numel} elements, its id says ${s.numel}`);
    const end = pos + 8 + s.numel * DTYPES[s.dtype].size;
    if (end > data.byteLength) throw new Error(`legacy file truncated inside storage ${key}`);
    s.bytes = new Uint8Array(data.subarray(pos + 8, end));
    pos = end;
  }
  if (pos !== data.byteLength) throw new Error(`${data.byteLength - pos} trailing bytes after the last storage`);
  return checkTree(value);
}

// ---- result check: only TorchValue kinds, and no cycles (a pickle can make a list contain itself) ----

function checkTree(root: unknown): TorchValue {
  const open = new Set<object>(), done = new Set<object>();
  const visit = (v: unknown): void => {
    if (v === null || ['boolean', 'number', 'bigint', 'string'].includes(typeof v) || v instanceof TorchTensor) return;
    const container = Array.isArray(v) || v instanceof PyTuple || v instanceof Map;
    if (!container) throw new Error(`the file holds an unsupported value: ${describe(v)}`);
    // `done` keeps shared sub-trees to one visit each, so a pickle of nested shared lists stays linear.
    if (done.has(v)) return;
    if (open.has(v)) throw new Error('the file holds a cyclic structure');
    open.add(v);
    if (v instanceof Map) {
      for (const [k, x] of v) { visit(k); visit(x); }
      if (v instanceof TorchOrderedDict) for (const x of v.attributes.values()) visit(x);
    } else {
      for (const x of Array.isArray(v) ? v : v.items) visit(x);
    }
    open.delete(v);
    done.add(v);
  };
  visit(root);
  return root as TorchValue;
}

function describe(v: unknown): string {
  if (v instanceof PyGlobal) return `global '${v.module} ${v.name}'`;
  if (v instanceof TorchStorage) return `a bare storage (${v.key})`;
  return typeof v;
}
