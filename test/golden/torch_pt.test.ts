// torch.save files read without Python, against what torch 2.6 decoded (expected.json structure,
// expected.safetensors values). Every payload, hostile file and dataset item comes from the case's own
// expected.json, so other folders generated the same way run unchanged.
import { join, basename } from 'node:path';
import { describe, expect, it } from 'vitest';
import { latentCollate, LatentDataset, type HostTensor } from '../../src/io/dancegrpo_dataset.ts';
import { readSafetensors, stToFloat64, type StFile } from '../../src/io/safetensors.ts';
import {
  loadTorchFile, PyTuple, safetensorsDType, tensorToContiguousBytes, TorchFileError, TorchOrderedDict,
  torchTensorToFloat64, TorchTensor, type TorchStorage, type TorchValue,
} from '../../src/io/torch_pt.ts';
import { ZipFile } from '../../src/io/zip.ts';
import { goldenCases, readJson } from './golden.ts';

/** Python float.hex() -> number, exact (nan/inf included, which JSON cannot hold). */
function fromHex(h: string): number {
  if (h === 'nan') return NaN;
  if (/^-?inf$/.test(h)) return h.startsWith('-') ? -Infinity : Infinity;
  const m = /^(-?)0x([0-9a-f]+)\.?([0-9a-f]*)p([+-]\d+)$/.exec(h);
  if (!m) throw new Error(`bad float hex ${h}`);
  const mant = BigInt(`0x${m[2]}${m[3]}`);
  const v = Number(mant) * 2 ** (Number(m[4]) - 4 * m[3]!.length);
  return m[1] ? -v : v;
}

/** Python dicts as plain JSON-like objects, for comparing BUILD attributes such as _metadata. */
function plain(v: TorchValue): unknown {
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [String(k), plain(x)]));
  return v;
}

interface Ctx {
  st: StFile;
  /** storage_group -> the storage object its first tensor used, per file. */
  groups: Map<number, TorchStorage>;
}

function checkTensor(t: TorchValue, spec: any, ctx: Ctx, where: string): void {
  expect(t, where).toBeInstanceOf(TorchTensor);
  const tt = t as TorchTensor;
  expect({ dtype: tt.dtype, shape: tt.shape, stride: tt.stride, offset: tt.storageOffset, bytes: tt.storage.bytes.byteLength, grad: tt.requiresGrad }, where).toEqual({
    dtype: spec.dtype, shape: spec.shape, stride: spec.stride, offset: spec.storage_offset, bytes: spec.storage_bytes, grad: spec.requires_grad,
  });
  // Tensors share a storage object exactly when torch put them in one storage group.
  const seen = ctx.groups.get(spec.storage_group);
  if (seen) expect(tt.storage === seen, `${where}: storage group ${spec.storage_group}`).toBe(true);
  else {
    expect([...ctx.groups.values()].includes(tt.storage), `${where}: storage shared with another group`).toBe(false);
    ctx.groups.set(spec.storage_group, tt.storage);
  }
  const want = ctx.st.tensors.get(spec.tensor);
  if (!want) throw new Error(`expected.safetensors lacks ${spec.tensor}`);
  expect(want.dtype).toBe(safetensorsDType(tt.dtype));
  expect(want.shape).toEqual(tt.shape);
  expect(Buffer.from(tensorToContiguousBytes(tt)).equals(Buffer.from(want.bytes)), `${where}: bytes`).toBe(true);
  const got = torchTensorToFloat64(tt), ref = stToFloat64(want);
  expect(got.every((x, i) => Object.is(x, ref[i])), `${where}: float64 values`).toBe(true);
}

function checkValue(v: TorchValue, spec: any, ctx: Ctx, where: string): void {
  if ('tensor' in spec) return checkTensor(v, spec, ctx, where);
  switch (spec.type) {
    case 'dict':
    case 'collections.OrderedDict': {
      expect(v, where).toBeInstanceOf(spec.type === 'dict' ? Map : TorchOrderedDict);
      if (spec.type === 'dict') expect(v).not.toBeInstanceOf(TorchOrderedDict);
      const m = v as Map<unknown, TorchValue>;
      // Order and key types (int keys stay numbers) both matter.
      expect([...m.keys()], where).toEqual(spec.items.map(([k]: [unknown]) => k));
      for (const [k, s] of spec.items) checkValue(m.get(k)!, s, ctx, `${where}.${k}`);
      if ('_metadata' in spec) expect(plain((v as TorchOrderedDict).attributes.get('_metadata')!), `${where}._metadata`).toEqual(spec._metadata);
      return;
    }
    case 'list':
    case 'tuple': {
      if (spec.type === 'list') expect(Array.isArray(v), `${where}: list`).toBe(true);
      else expect(v, where).toBeInstanceOf(PyTuple);
      const items = Array.isArray(v) ? v : (v as PyTuple<TorchValue>).items;
      expect(items.length, where).toBe(spec.items.length);
      spec.items.forEach((s: any, i: number) => checkValue(items[i]!, s, ctx, `${where}.${i}`));
      return;
    }
    case 'int':
      // Beyond 2^53 the reader gives a bigint; JSON's copy of such a value is rounded, so compare rounded.
      if (typeof v === 'bigint') {
        expect(Number.isSafeInteger(Number(v)), where).toBe(false);
        expect(Number(v), where).toBe(spec.value);
      } else expect(Number.isInteger(v) && v === spec.value, where).toBe(true);
      return;
    case 'float':
      expect(Object.is(v, spec.hex !== undefined ? fromHex(spec.hex) : spec.value), `${where}: ${String(v)} vs ${spec.hex}`).toBe(true);
      return;
    case 'str':
    case 'bool':
      expect(v, where).toBe(spec.value);
      return;
    case 'NoneType':
      expect(v, where).toBeNull();
      return;
    default:
      throw new Error(`${where}: unknown expected type ${spec.type}`);
  }
}

function checkZipMembers(path: string, members: any[]): void {
  const zip = ZipFile.open(path);
  try {
    expect(zip.entries.map((e) => ({ name: e.name, bytes: e.size, header_offset: e.localHeaderOffset, compress_type: e.method }))).toEqual(members);
  } finally {
    zip.close();
  }
}

function checkDecodedFile(dir: string, file: string, entry: any, st: StFile): void {
  const path = join(dir, file);
  checkValue(loadTorchFile(path), entry.decoded, { st, groups: new Map() }, file);
  if (entry.zip_members) checkZipMembers(path, entry.zip_members);
}

function expectHost(t: HostTensor, st: StFile, name: string): void {
  const want = st.tensors.get(name);
  if (!want) throw new Error(`expected.safetensors lacks ${name}`);
  expect({ dtype: safetensorsDType(t.dtype), shape: t.shape }, name).toEqual({ dtype: want.dtype, shape: want.shape });
  expect(Buffer.from(t.bytes).equals(Buffer.from(want.bytes)), `${name}: bytes`).toBe(true);
}

const cases = goldenCases('torch_pt_files');
if (cases.length === 0) it.skip('no torch_pt_files cases under GOLDEN_DIR', () => {});

for (const dir of cases) {
  const name = basename(dir);
  const expected = readJson(join(dir, 'expected.json'));
  const st = readSafetensors(join(dir, 'expected.safetensors'));
  const files = Object.entries<any>(expected.files);

  describe(`${name} payloads`, () => {
    for (const [file, entry] of files.filter(([, e]) => 'decoded' in e)) {
      it(`${name}: ${file} (${entry.format})`, () => checkDecodedFile(dir, file, entry, st));
    }
  });

  it(`${name}: every file entry is a payload (decoded) or a hostile file (expected outcome)`, () => {
    for (const [file, e] of files) expect('decoded' in e || 'expected' in e, file).toBe(true);
  });

  describe(`${name} hostile`, () => {
    for (const [file, entry] of files.filter(([, e]) => !('decoded' in e) && 'expected' in e)) {
      it(`${name}: refuses ${file}`, () => {
        const path = join(dir, file);
        let err: unknown;
        try {
          loadTorchFile(path);
        } catch (e) {
          err = e;
        }
        expect(err, `${file} was accepted`).toBeInstanceOf(TorchFileError);
        const { file: f, reason, message } = err as TorchFileError;
        expect(f).toBe(path);
        expect(message).toContain(path);
        expect(reason.length).toBeGreaterThan(0);
        // When the attack is a named global, the refusal names it.
        const g = /GLOBAL '([^']+)'/.exec(entry.description ?? '');
        if (g) expect(reason).toContain(`'${g[1]}'`);
      });
    }
  });

  describe(`${name} dataset`, () => {
    const ds = expected.dataset;
    for (const f of ds?.files ?? []) {
      it(`${name}: ${f.file}`, () => checkDecodedFile(dir, f.file, f, st));
    }
    if (!ds) return;
    it(`${name}: LatentDataset items and latent_collate_function`, () => {
      const dataset = new LatentDataset(join(dir, 'dataset'));
      expect(dataset.length).toBe(ds.index.length);
      const items = ds.index.map((_: unknown, i: number) => dataset.item(i));
      items.forEach((it: ReturnType<LatentDataset['item']>, i: number) => {
        expect(it.caption).toBe(ds.index[i].caption);
        expectHost(it.promptEmbed, st, `LatentDataset[${i}].prompt_embed`);
        expectHost(it.pooledPromptEmbeds, st, `LatentDataset[${i}].pooled_prompt_embeds`);
        expectHost(it.textIds, st, `LatentDataset[${i}].text_ids`);
      });
      const batch = latentCollate(items);
      expect(batch.captions).toEqual(ds.collated_captions);
      expectHost(batch.promptEmbeds, st, 'latent_collate_function.prompt_embeds');
      expectHost(batch.pooledPromptEmbeds, st, 'latent_collate_function.pooled_prompt_embeds');
      expectHost(batch.textIds, st, 'latent_collate_function.text_ids');
    });
  });
}
