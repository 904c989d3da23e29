// Minimal zip reader for torch.save archives: central directory (zip64 records included, torch always
// writes them), stored and deflated members, CRC-32 checked. Members are read on demand through a file
// descriptor, so a checkpoint larger than Node's 2 GiB readFileSync limit still opens.
// Untrusted input: every size and offset is checked against the file before anything is allocated, and
// member names that could escape a folder are refused when the directory is read, before any data.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { crc32, inflateRawSync } from 'node:zlib';

export interface ZipEntry {
  name: string;
  /** 0 stored, 8 deflated. */
  method: number;
  crc32: number;
  compressedSize: number;
  /** Uncompressed size in bytes. */
  size: number;
  localHeaderOffset: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const EOCD_SIZE = 22;
const CENTRAL_SIZE = 46;
const LOCAL_SIZE = 30;
// Deflate cannot expand input by more than about 1032:1, so a declared size above that is a lie
// (or a bomb) and is refused before inflating.
const MAX_DEFLATE_RATIO = 1032;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Refuses names that could point outside the extraction folder or alias another member. */
function checkMemberName(name: string): void {
  const bad =
    name.length === 0 ||
    name.startsWith('/') ||
    name.includes('\\') ||
    name.includes('\0') ||
    /^[A-Za-z]:/.test(name) ||
    name.split('/').some((part) => part === '' || part === '.' || part === '..');
  if (bad) throw new Error(`unsafe zip member name ${JSON.stringify(name)}`);
}

export class ZipFile {
  readonly entries: ZipEntry[];
  private readonly byName = new Map<string, ZipEntry>();

  private constructor(private readonly fd: number, private readonly cdOffset: number, entries: ZipEntry[]) {
    this.entries = entries;
    for (const e of entries) {
      if (this.byName.has(e.name)) throw new Error(`duplicate zip member ${JSON.stringify(e.name)}`);
      this.byName.set(e.name, e);
    }
  }

  /** Opens and reads the central directory; throws on any malformed or unsafe entry. */
  static open(path: string): ZipFile {
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      const { cdOffset, cdSize, count } = readEocd(fd, size);
      const cd = readAt(fd, cdOffset, cdSize);
      return new ZipFile(fd, cdOffset, parseCentralDirectory(cd, count, cdOffset));
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  get(name: string): ZipEntry | undefined {
    return this.byName.get(name);
  }

  /** The member's uncompressed bytes (a fresh buffer). */
  read(entry: ZipEntry): Uint8Array {
    // torch writes sizes and CRC only in the central directory (flag bit 3); the local header is
    // read for its own name and extra-field lengths, which differ from the central copy (torch pads
    // the extra field so that data starts on a 64-byte boundary).
    const h = view(readAt(this.fd, entry.localHeaderOffset, LOCAL_SIZE));
    if (h.getUint32(0, true) !== SIG_LOCAL) throw new Error(`bad local header for ${entry.name}`);
    const nameLen = h.getUint16(26, true), extraLen = h.getUint16(28, true);
    const localName = utf8.decode(readAt(this.fd, entry.localHeaderOffset + LOCAL_SIZE, nameLen));
    if (localName !== entry.name) throw new Error(`local header name ${JSON.stringify(localName)} differs from ${JSON.stringify(entry.name)}`);
    const start = entry.localHeaderOffset + LOCAL_SIZE + nameLen + extraLen;
    if (start + entry.compressedSize > this.cdOffset) throw new Error(`member ${entry.name} runs past the central directory`);
    const raw = readAt(this.fd, start, entry.compressedSize);
    let data: Uint8Array;
    if (entry.method === 0) {
      data = raw;
    } else {
      // maxOutputLength stops a lying size at the declared bound instead of inflating without limit.
      const out = entry.size === 0 ? new Uint8Array(0) : inflateRawSync(raw, { maxOutputLength: entry.size });
      data = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
      if (data.byteLength !== entry.size) throw new Error(`member ${entry.name} inflates to ${data.byteLength} bytes, not ${entry.size}`);
    }
    if (crc32(data) !== entry.crc32) throw new Error(`CRC-32 mismatch in member ${entry.name}`);
    return data;
  }

  close(): void {
    closeSync(this.fd);
  }
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Reads exactly `length` bytes at `position` (in chunks: readSync takes at most 2 GiB per call). */
function readAt(fd: number, position: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, out, done, Math.min(length - done, 1 << 30), position + done);
    if (n === 0) throw new Error(`unexpected end of file at byte ${position + done}`);
    done += n;
  }
  return out;
}

function u64(dv: DataView, at: number): number {
  const v = dv.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error('zip64 field beyond 2^53');
  return Number(v);
}

function readEocd(fd: number, size: number): { cdOffset: number; cdSize: number; count: number } {
  if (size < EOCD_SIZE) throw new Error(`file too short for a zip (${size} bytes)`);
  // The record sits at the end, followed only by a comment of at most 65535 bytes.
  const tailLen = Math.min(size, EOCD_SIZE + 0xffff);
  const tail = readAt(fd, size - tailLen, tailLen);
  const dv = view(tail);
  let at = -1;
  for (let i = tailLen - EOCD_SIZE; i >= 0; i--) {
    if (dv.getUint32(i, true) === SIG_EOCD && i + EOCD_SIZE + dv.getUint16(i + 20, true) === tailLen) { at = i; break; }
  }
  if (at < 0) throw new Error('no zip end-of-central-directory record');
  const eocdPos = size - tailLen + at;
  if (dv.getUint16(at + 4, true) !== 0 || dv.getUint16(at + 6, true) !== 0) throw new Error('multi-disk zip');
  let count = dv.getUint16(at + 10, true), cdSize = dv.getUint32(at + 12, true), cdOffset = dv.getUint32(at + 16, true);
  let cdLimit = eocdPos;
  // A zip64 locator right before the record points at the zip64 record, whose fields replace the
  // 16/32-bit ones (torch writes one whatever the file size).
  if (eocdPos >= 20) {
    const loc = view(readAt(fd, eocdPos - 20, 20));
    if (loc.getUint32(0, true) === SIG_ZIP64_LOCATOR) {
      const z64Pos = u64(loc, 8);
      if (z64Pos + 56 > eocdPos - 20) throw new Error('zip64 end-of-central-directory record out of bounds');
      const z = view(readAt(fd, z64Pos, 56));
      if (z.getUint32(0, true) !== SIG_ZIP64_EOCD) throw new Error('bad zip64 end-of-central-directory record');
      count = u64(z, 32);
      cdSize = u64(z, 40);
      cdOffset = u64(z, 48);
      cdLimit = z64Pos;
    }
  }
  if (cdOffset + cdSize > cdLimit) throw new Error('central directory out of bounds');
  if (count * CENTRAL_SIZE > cdSize) throw new Error(`central directory too small for ${count} entries`);
  return { cdOffset, cdSize, count };
}

function parseCentralDirectory(cd: Uint8Array, count: number, cdOffset: number): ZipEntry[] {
  const dv = view(cd);
  const entries: ZipEntry[] = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + CENTRAL_SIZE > cd.byteLength || dv.getUint32(p, true) !== SIG_CENTRAL) throw new Error(`bad central directory entry ${i}`);
    const flags = dv.getUint16(p + 8, true), method = dv.getUint16(p + 10, true);
    const nameLen = dv.getUint16(p + 28, true), extraLen = dv.getUint16(p + 30, true), commentLen = dv.getUint16(p + 32, true);
    const end = p + CENTRAL_SIZE + nameLen + extraLen + commentLen;
    if (end > cd.byteLength) throw new Error(`central directory entry ${i} out of bounds`);
    const name = utf8.decode(cd.subarray(p + CENTRAL_SIZE, p + CENTRAL_SIZE + nameLen));
    checkMemberName(name);
    if (flags & 1) throw new Error(`encrypted zip member ${name}`);
    if (method !== 0 && method !== 8) throw new Error(`zip member ${name} uses compression method ${method}`);
    let compressedSize = dv.getUint32(p + 20, true), size = dv.getUint32(p + 24, true), offset = dv.getUint32(p + 42, true);
    // Fields saturated at 0xFFFFFFFF live in the zip64 extra field (id 1), in this order, only if saturated.
    if (size === 0xffffffff || compressedSize === 0xffffffff || offset === 0xffffffff) {
      const z = zip64Extra(dv, p + CENTRAL_SIZE + nameLen, extraLen, name);
      let q = 0;
      const next = () => {
        if (q + 8 > z.byteLength) throw new Error(`short zip64 extra field in ${name}`);
        const v = u64(z, q);
        q += 8;
        return v;
      };
      if (size === 0xffffffff) size = next();
      if (compressedSize === 0xffffffff) compressedSize = next();
      if (offset === 0xffffffff) offset = next();
    }
    if (offset + LOCAL_SIZE + compressedSize > cdOffset) throw new Error(`zip member ${name} out of bounds`);
    if (method === 0 && size !== compressedSize) throw new Error(`stored zip member ${name} has two sizes`);
    if (method === 8 && size > compressedSize * MAX_DEFLATE_RATIO) throw new Error(`zip member ${name} claims an impossible inflated size`);
    entries.push({ name, method, crc32: dv.getUint32(p + 16, true), compressedSize, size, localHeaderOffset: offset });
    p = end;
  }
  return entries;
}

function zip64Extra(dv: DataView, start: number, len: number, name: string): DataView {
  for (let p = start; p + 4 <= start + len; ) {
    const id = dv.getUint16(p, true), n = dv.getUint16(p + 2, true);
    if (p + 4 + n > start + len) break;
    if (id === 1) return new DataView(dv.buffer, dv.byteOffset + p + 4, n);
    p += 4 + n;
  }
  throw new Error(`zip member ${name} lacks its zip64 extra field`);
}
