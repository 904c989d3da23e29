// Restricted unpickler: the opcode subset torch.save writes (protocol 2, plus the protocol-4 framing,
// memo and STACK_GLOBAL opcodes in case a file was saved with pickle_protocol=4). Nothing is ever
// imported or executed: a GLOBAL resolves only to a JS stand-in from the caller's whitelist.
// Every pickle is scanned first (opcodes, argument bounds, global names) and refused before any value
// is built; the interpreter then repeats the checks it can make only on real values.

/** A Python tuple (JS arrays stand for lists). */
export class PyTuple<T = unknown> {
  constructor(readonly items: readonly T[]) {}
}

/** A whitelisted global: `call` is what REDUCE runs on it (none: the global is data only, e.g. a storage class). */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
    readonly call?: (args: readonly unknown[]) => unknown,
  ) {}
}

export interface PickleHooks {
  /** Allowed globals, keyed `'<module> <name>'` as GLOBAL spells them (e.g. 'collections OrderedDict'). */
  globals: ReadonlyMap<string, PyGlobal>;
  /** BINPERSID: torch's storage references. */
  persistentLoad(pid: unknown): unknown;
  /** BUILD: apply `state` to `obj` (the object's __setstate__), or throw. */
  build(obj: unknown, state: unknown): void;
}

const OP = {
  PROTO: 0x80, FRAME: 0x95, STOP: 0x2e, MARK: 0x28,
  NONE: 0x4e, NEWTRUE: 0x88, NEWFALSE: 0x89,
  BININT: 0x4a, BININT1: 0x4b, BININT2: 0x4d, LONG1: 0x8a, BINFLOAT: 0x47,
  SHORT_BINUNICODE: 0x8c, BINUNICODE: 0x58,
  EMPTY_TUPLE: 0x29, TUPLE: 0x74, TUPLE1: 0x85, TUPLE2: 0x86, TUPLE3: 0x87,
  EMPTY_LIST: 0x5d, APPEND: 0x61, APPENDS: 0x65,
  EMPTY_DICT: 0x7d, SETITEM: 0x73, SETITEMS: 0x75,
  BINPUT: 0x71, LONG_BINPUT: 0x72, MEMOIZE: 0x94, BINGET: 0x68, LONG_BINGET: 0x6a,
  GLOBAL: 0x63, STACK_GLOBAL: 0x93, REDUCE: 0x52, BUILD: 0x62, BINPERSID: 0x51,
} as const;

type ArgKind = 'none' | 'u1' | 'u2' | 'i4' | 'u4' | 'u8' | 'f8' | 'long1' | 'str1' | 'str4' | 'lines';
const ARG_KIND = new Map<number, ArgKind>([
  [OP.PROTO, 'u1'], [OP.FRAME, 'u8'], [OP.BININT, 'i4'], [OP.BININT1, 'u1'], [OP.BININT2, 'u2'],
  [OP.LONG1, 'long1'], [OP.BINFLOAT, 'f8'], [OP.SHORT_BINUNICODE, 'str1'], [OP.BINUNICODE, 'str4'],
  [OP.BINPUT, 'u1'], [OP.LONG_BINPUT, 'u4'], [OP.BINGET, 'u1'], [OP.LONG_BINGET, 'u4'], [OP.GLOBAL, 'lines'],
]);
for (const code of Object.values(OP)) if (!ARG_KIND.has(code)) ARG_KIND.set(code, 'none');

type Arg = number | bigint | string | null;
interface Op {
  code: number;
  arg: Arg;
  pos: number;
  next: number;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function opName(code: number): string {
  const name = Object.entries(OP).find(([, c]) => c === code)?.[0];
  const ch = code >= 0x20 && code < 0x7f ? ` '${String.fromCharCode(code)}'` : '';
  return name ?? `0x${code.toString(16).padStart(2, '0')}${ch}`;
}

/** Decodes the opcode at `pos` and its argument; refuses opcodes outside the subset and truncation. */
function decode(data: Uint8Array, pos: number): Op {
  if (pos >= data.byteLength) throw new Error(`pickle ends at byte ${pos} without STOP`);
  const code = data[pos]!;
  const kind = ARG_KIND.get(code);
  if (kind === undefined) throw new Error(`pickle opcode ${opName(code)} at byte ${pos} is not allowed`);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let p = pos + 1;
  const need = (n: number) => {
    if (p + n > data.byteLength) throw new Error(`pickle truncated inside ${opName(code)} at byte ${pos}`);
    const at = p;
    p += n;
    return at;
  };
  let arg: Arg = null;
  switch (kind) {
    case 'none': break;
    case 'u1': arg = data[need(1)]!; break;
    case 'u2': arg = dv.getUint16(need(2), true); break;
    case 'i4': arg = dv.getInt32(need(4), true); break;
    case 'u4': arg = dv.getUint32(need(4), true); break;
    case 'u8': {
      const v = dv.getBigUint64(need(8), true);
      if (v > BigInt(data.byteLength)) throw new Error(`pickle ${opName(code)} length beyond the data at byte ${pos}`);
      arg = Number(v);
      break;
    }
    case 'f8': arg = dv.getFloat64(need(8), false); break; // BINFLOAT is big-endian
    case 'long1': {
      const n = data[need(1)]!;
      const at = need(n);
      arg = decodeLong(data.subarray(at, at + n));
      break;
    }
    case 'str1': case 'str4': {
      const n = kind === 'str1' ? data[need(1)]! : dv.getUint32(need(4), true);
      const at = need(n);
      arg = utf8.decode(data.subarray(at, at + n));
      break;
    }
    case 'lines': {
      // GLOBAL: "module\nname\n"; the two lines are joined with a space, the whitelist's key format.
      const parts: string[] = [];
      for (let i = 0; i < 2; i++) {
        const nl = data.indexOf(0x0a, p);
        if (nl < 0) throw new Error(`pickle truncated inside GLOBAL at byte ${pos}`);
        parts.push(utf8.decode(data.subarray(p, nl)));
        p = nl + 1;
      }
      arg = parts.join(' ');
      break;
    }
  }
  return { code, arg, pos, next: p };
}

/** Little-endian two's complement, as LONG1 stores Python ints; a number when it is a safe integer. */
function decodeLong(bytes: Uint8Array): number | bigint {
  let v = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]!);
  if (bytes.length > 0 && bytes[bytes.length - 1]! & 0x80) v -= 1n << BigInt(8 * bytes.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/**
 * Checks a pickle without building anything: every opcode in the subset, every argument inside the
 * data, every global (GLOBAL, or STACK_GLOBAL fed by constant strings) in `allowed`.
 * Returns the offset just past its STOP opcode.
 */
export function scanPickle(data: Uint8Array, start: number, allowed: ReadonlySet<string>): number {
  // STACK_GLOBAL takes its names from the stack; they must be the two latest pushes and be string
  // constants (directly or through the memo), with only memo writes and framing in between.
  let recent: (string | null)[] = [];
  const memo = new Map<number, string | null>();
  const checkGlobal = (name: string, pos: number) => {
    if (!allowed.has(name)) throw new Error(`pickle GLOBAL '${name}' at byte ${pos} is not allowed`);
  };
  for (let pos = start; ; ) {
    const op = decode(data, pos);
    pos = op.next;
    switch (op.code) {
      case OP.STOP: return pos;
      case OP.PROTO:
        if ((op.arg as number) > 5) throw new Error(`pickle protocol ${op.arg} is not supported`);
        break;
      case OP.FRAME: break;
      case OP.SHORT_BINUNICODE: case OP.BINUNICODE: recent.push(op.arg as string); break;
      case OP.BINPUT: case OP.LONG_BINPUT: memo.set(op.arg as number, recent.at(-1) ?? null); break;
      case OP.MEMOIZE: memo.set(memo.size, recent.at(-1) ?? null); break;
      case OP.BINGET: case OP.LONG_BINGET: recent.push(memo.get(op.arg as number) ?? null); break;
      case OP.GLOBAL: checkGlobal(op.arg as string, op.pos); recent = []; break;
      case OP.STACK_GLOBAL: {
        const [mod, name] = recent.slice(-2);
        if (recent.length < 2 || typeof mod !== 'string' || typeof name !== 'string') {
          throw new Error(`pickle STACK_GLOBAL at byte ${op.pos} does not name a constant global`);
        }
        checkGlobal(`${mod} ${name}`, op.pos);
        recent = [];
        break;
      }
      default: recent = [];
    }
  }
}

function isHashable(k: unknown): boolean {
  if (k === null || ['string', 'number', 'bigint', 'boolean'].includes(typeof k)) return true;
  return k instanceof PyTuple && k.items.every(isHashable);
}

/** Scans, then interprets one pickle starting at `start`; returns its value and the offset past STOP. */
export function unpickle(data: Uint8Array, start: number, hooks: PickleHooks): { value: unknown; end: number } {
  scanPickle(data, start, new Set(hooks.globals.keys()));
  const stack: unknown[] = [];
  const marks: number[] = [];
  const memo = new Map<number, unknown>();
  let op: Op;
  const fail = (what: string): never => {
    throw new Error(`pickle ${opName(op.code)} at byte ${op.pos}: ${what}`);
  };
  const pop = () => (stack.length > (marks.at(-1) ?? 0) ? stack.pop() : fail('stack underflow'));
  const top = () => (stack.length > (marks.at(-1) ?? 0) ? stack[stack.length - 1] : fail('stack underflow'));
  const popMark = () => {
    const m = marks.pop() ?? fail('no MARK');
    return stack.splice(m);
  };
  const lookup = (name: string) => hooks.globals.get(name) ?? fail(`global '${name}' is not allowed`);
  const setItems = (dict: unknown, items: unknown[]) => {
    if (!(dict instanceof Map)) fail('target is not a dict');
    for (let i = 0; i + 1 < items.length; i += 2) {
      if (!isHashable(items[i])) fail('unhashable dict key');
      (dict as Map<unknown, unknown>).set(items[i], items[i + 1]);
    }
  };
  for (let pos = start; ; pos = op.next) {
    op = decode(data, pos);
    switch (op.code) {
      case OP.STOP:
        if (stack.length !== 1 || marks.length !== 0) fail(`stack holds ${stack.length} values`);
        return { value: stack[0], end: op.next };
      case OP.PROTO: case OP.FRAME: break;
      case OP.MARK: marks.push(stack.length); break;
      case OP.NONE: stack.push(null); break;
      case OP.NEWTRUE: stack.push(true); break;
      case OP.NEWFALSE: stack.push(false); break;
      case OP.BININT: case OP.BININT1: case OP.BININT2: case OP.LONG1: case OP.BINFLOAT:
      case OP.SHORT_BINUNICODE: case OP.BINUNICODE:
        stack.push(op.arg);
        break;
      case OP.EMPTY_TUPLE: stack.push(new PyTuple([])); break;
      case OP.TUPLE: stack.push(new PyTuple(popMark())); break;
      case OP.TUPLE1: case OP.TUPLE2: case OP.TUPLE3: {
        const n = op.code - OP.TUPLE1 + 1;
        const items = Array.from({ length: n }, pop).reverse();
        stack.push(new PyTuple(items));
        break;
      }
      case OP.EMPTY_LIST: stack.push([]); break;
      case OP.APPEND: {
        const v = pop(), list = top();
        if (!Array.isArray(list)) fail('target is not a list');
        (list as unknown[]).push(v);
        break;
      }
      case OP.APPENDS: {
        const items = popMark(), list = top();
        if (!Array.isArray(list)) fail('target is not a list');
        (list as unknown[]).push(...items);
        break;
      }
      case OP.EMPTY_DICT: stack.push(new Map()); break;
      case OP.SETITEM: {
        const v = pop(), k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case OP.SETITEMS: {
        const items = popMark();
        if (items.length % 2) fail('odd number of items');
        setItems(top(), items);
        break;
      }
      case OP.BINPUT: case OP.LONG_BINPUT: memo.set(op.arg as number, top()); break;
      case OP.MEMOIZE: memo.set(memo.size, top()); break;
      case OP.BINGET: case OP.LONG_BINGET:
        if (!memo.has(op.arg as number)) fail(`memo ${op.arg} is empty`);
        stack.push(memo.get(op.arg as number));
        break;
      case OP.GLOBAL: stack.push(lookup(op.arg as string)); break;
      case OP.STACK_GLOBAL: {
        const name = pop(), mod = pop();
        stack.push(lookup(`${mod} ${name}`));
        break;
      }
      case OP.REDUCE: {
        const args = pop(), f = pop();
        if (!(f instanceof PyGlobal) || !f.call) fail('callee is not callable');
        if (!(args instanceof PyTuple)) fail('arguments are not a tuple');
        stack.push((f as PyGlobal).call!((args as PyTuple).items));
        break;
      }
      case OP.BUILD: {
        const state = pop();
        hooks.build(top(), state);
        break;
      }
      case OP.BINPERSID: stack.push(hooks.persistentLoad(pop())); break;
    }
  }
}
