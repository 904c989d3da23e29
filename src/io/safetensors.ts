// safetensors reader (first cut: whole-file read, header parsed; validation and writer to come).
import { readFileSync } from 'node:fs';

export type StDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

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

export function readSafetensors(path: string): StFile {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const base = 8 + n;
  const tensors = new Map<string, StTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries<any>(header)) {
    if (name === '__metadata__') { metadata = entry; continue; }
    const [b, e] = entry.data_offsets as [number, number];
    tensors.set(name, { dtype: entry.dtype, shape: entry.shape, bytes: new Uint8Array(buf.buffer, buf.byteOffset + base + b, e - b) });
  }
  return { path, metadata, tensors };
}

/** A tensor's values as float64 numbers (any float or integer dtype). */
export function stToFloat64(t: StTensor): Float64Array {
  const dv = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  const size: Record<StDType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };
  const n = t.bytes.byteLength / size[t.dtype];
  const out = new Float64Array(n);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < n; i++) {
    switch (t.dtype) {
      case 'F64': out[i] = dv.getFloat64(i * 8, true); break;
      case 'F32': out[i] = dv.getFloat32(i * 4, true); break;
      case 'BF16': u[0] = dv.getUint16(i * 2, true) << 16; out[i] = f[0]!; break;
      case 'F16': {
        const h = dv.getUint16(i * 2, true), e = (h >> 10) & 31, m = h & 1023, s = h & 0x8000 ? -1 : 1;
        out[i] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
        break;
      }
      case 'I64': out[i] = Number(dv.getBigInt64(i * 8, true)); break;
      case 'I32': out[i] = dv.getInt32(i * 4, true); break;
      case 'I16': out[i] = dv.getInt16(i * 2, true); break;
      case 'I8': out[i] = dv.getInt8(i); break;
      case 'U8': case 'BOOL': out[i] = dv.getUint8(i); break;
    }
  }
  return out;
}

/** A tensor's values as float32 (exact for F32, F16, BF16). */
export function stToFloat32(t: StTensor): Float32Array {
  if (t.dtype === 'F32') return new Float32Array(t.bytes.slice().buffer);
  return Float32Array.from(stToFloat64(t));
}
