// safetensors_files: valid and malformed files with the reference loader's verdict (safetensors.torch.load).
// Every file listed in a case's expected.json must get the same verdict from both readers; accepted files
// must give the same tensors (dtype, shape, raw bytes) and metadata.
import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readSafetensors, SafetensorsReader, type StDType, type StFile } from '../../src/io/safetensors.ts';
import { expectBothReadersRefuse, goldenCases, readJson } from './golden.ts';

// expected.json speaks torch dtype names.
const TORCH_DTYPE: Record<StDType, string> = {
  F64: 'float64', F32: 'float32', F16: 'float16', BF16: 'bfloat16', I64: 'int64', I32: 'int32', I16: 'int16', I8: 'int8', U8: 'uint8', BOOL: 'bool',
  U16: 'uint16', U32: 'uint32', U64: 'uint64', C64: 'complex64', F8_E5M2: 'float8_e5m2', F8_E4M3: 'float8_e4m3fn', F8_E8M0: 'float8_e8m0fnu',
  F8_E4M3FNUZ: 'float8_e4m3fnuz', F8_E5M2FNUZ: 'float8_e5m2fnuz', F4: 'float4_e2m1fn_x2', F6_E2M3: 'float6_e2m3fn', F6_E3M2: 'float6_e3m2fn',
};

interface ExpectedTensor { dtype: string; shape: number[]; bytes: number; sha256: string; hex?: string }
type Expected = { outcome: 'accept'; tensors: Record<string, ExpectedTensor>; metadata: Record<string, string> | null } | { outcome: 'reject'; reference_error: string };

/** Every tensor through the lazy reader, in the same shape readSafetensors returns. */
function readLazily(path: string): StFile {
  const reader = SafetensorsReader.open(path);
  try {
    return { path, metadata: reader.metadata, tensors: new Map(reader.names().map((name) => [name, reader.read(name)])) };
  } finally {
    reader.close();
  }
}

const cases = goldenCases('safetensors_files');
if (cases.length === 0) it.skip('no safetensors_files case under GOLDEN_DIR', () => {});

for (const caseDir of cases) {
  const caseName = basename(caseDir);
  const expected = readJson<{ files: Record<string, Expected> }>(join(caseDir, 'expected.json')).files;

  describe(caseName, () => {
    it(`${caseName}: expected.json has a verdict for every file in files/`, () => {
      const onDisk = readdirSync(join(caseDir, 'files')).map((f) => `files/${f}`).sort();
      expect(Object.keys(expected).sort()).toEqual(onDisk);
    });

    for (const [file, verdict] of Object.entries(expected)) {
      const path = join(caseDir, file);
      if (verdict.outcome === 'accept') {
        it(`${caseName}: accepts ${file}`, () => {
          for (const read of [readSafetensors, readLazily]) {
            const got = read(path);
            expect(got.metadata).toEqual(verdict.metadata ?? {});
            expect([...got.tensors.keys()].sort()).toEqual(Object.keys(verdict.tensors).sort());
            for (const [name, want] of Object.entries(verdict.tensors)) {
              const t = got.tensors.get(name)!;
              expect(TORCH_DTYPE[t.dtype], name).toBe(want.dtype);
              expect(t.shape, name).toEqual(want.shape);
              expect(t.bytes.byteLength, name).toBe(want.bytes);
              expect(createHash('sha256').update(t.bytes).digest('hex'), name).toBe(want.sha256);
              if (want.hex !== undefined) expect(Buffer.from(t.bytes).toString('hex'), name).toBe(want.hex);
            }
          }
        });
      } else {
        it(`${caseName}: refuses ${file} (reference: ${verdict.reference_error})`, () => expectBothReadersRefuse(path));
      }
    }
  });
}
