// CLIP token ids against every golden case that holds them: open_clip's SimpleTokenizer (`tokenizer`, and the
// HPS reward's `clip_reward` inputs), FLUX's CLIP-L slow tokenizer and the tokenizers backend (`text_encoders`),
// and PickScore's fast tokenizer (`pickscore_reward`). Ids must be identical.
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ClipTokenizer } from '../../src/io/clip_tokenizer.ts';
import { readSafetensors, stToFloat64, stTensor } from '../../src/io/safetensors.ts';
import { GOLDEN_DIR, goldenCases, readJson } from './golden.ts';

/** An integer tensor of a safetensors file as rows of its last dimension. */
function idRows(path: string, name: string): number[][] {
  const tensor = stTensor(readSafetensors(path), name);
  const values = Array.from(stToFloat64(tensor));
  const width = tensor.shape[tensor.shape.length - 1]!;
  return Array.from({ length: values.length / width }, (_, r) => values.slice(r * width, (r + 1) * width));
}

it('golden cases holding CLIP token ids exist', () => {
  const found = ['tokenizer', 'clip_reward', 'text_encoders', 'pickscore_reward'].flatMap((family) => goldenCases(family));
  expect(found, `no tokenizer cases under ${GOLDEN_DIR}`).not.toEqual([]);
});

const rowsOf = (tok: ClipTokenizer, text: string): number[] => Array.from(tok.tokenize(text).inputIds);

interface OpenClipPrompt {
  index: number; source: string; text: string; cleaned_text: string; bpe_tokens: string[];
  untruncated_length: number; truncated: boolean; ids: number[];
}

for (const dir of goldenCases('tokenizer')) {
  describe(basename(dir), () => {
    const tok = ClipTokenizer.fromOpenClipBpe(join(dir, 'bpe_simple_vocab_16e6.txt.gz'));
    const { special_tokens: special, prompts } = readJson<{ special_tokens: Record<string, number>; prompts: OpenClipPrompt[] }>(join(dir, 'prompts.json'));
    const tensorRows = idRows(join(dir, 'token_ids.safetensors'), 'input_ids');

    it(`${basename(dir)}: special tokens and context length`, () => {
      expect({ sot: tok.sotId, eot: tok.eotId, pad: tok.padId, context_length: tok.contextLength }).toEqual(special);
      expect(tensorRows.length).toBe(prompts.length);
    });

    prompts.forEach((p, i) => {
      it(`${basename(dir)} prompt ${p.index} (${p.source})`, () => {
        expect(tok.clean(p.text)).toEqual(p.cleaned_text === '' ? [] : [p.cleaned_text]);
        expect(tok.bpeTokens(p.text)).toEqual(p.bpe_tokens);
        const length = tok.encode(p.text).length + 2;
        expect(length).toBe(p.untruncated_length);
        expect(length > tok.contextLength).toBe(p.truncated);
        expect(rowsOf(tok, p.text)).toEqual(p.ids);
        expect(rowsOf(tok, p.text)).toEqual(tensorRows[i]);
      });
    });
  });
}

// The HPS reward's inputs carry open_clip ids for their prompts; the vocabulary file lives in the tokenizer case.
const openClipVocab = goldenCases('tokenizer').map((d) => join(d, 'bpe_simple_vocab_16e6.txt.gz')).find(existsSync);
for (const dir of goldenCases('clip_reward')) {
  describe(basename(dir), () => {
    it.skipIf(openClipVocab === undefined)(`${basename(dir)}: prompt ids (case.json and inputs.safetensors)`, () => {
      const tok = ClipTokenizer.fromOpenClipBpe(openClipVocab!);
      const { prompts } = readJson<{ prompts: { text: string; ids: number[] }[] }>(join(dir, 'case.json'));
      const tensorRows = idRows(join(dir, 'inputs.safetensors'), 'input_ids');
      expect(tensorRows.length).toBe(prompts.length);
      prompts.forEach((p, i) => {
        expect(rowsOf(tok, p.text), p.text).toEqual(p.ids);
        expect(rowsOf(tok, p.text), p.text).toEqual(tensorRows[i]);
      });
    });
  });
}

interface FluxPrompt {
  index: string; source: string; text: string;
  clip: { ids: number[]; ids_tokenizers_backend: number[] | null; ftfy_cleaned_chunks: string[]; bpe_tokens: string[]; untruncated_length: number; truncated: boolean };
}

for (const dir of goldenCases('text_encoders')) {
  describe(basename(dir), () => {
    const { clip_tokenizer_files: files } = readJson<{ clip_tokenizer_files: string }>(join(dir, 'case.json'));
    const slow = ClipTokenizer.fromDir(join(dir, files), { variant: 'hf_slow' });
    const fast = ClipTokenizer.fromDir(join(dir, files), { variant: 'hf_fast' });
    const { prompts } = readJson<{ prompts: FluxPrompt[] }>(join(dir, 'prompts.json'));
    const idsFile = join(dir, 'token_ids.safetensors');
    const slowRows = idRows(idsFile, 'clip_input_ids');
    const fastRows = idRows(idsFile, 'clip_input_ids_tokenizers_backend');

    it(`${basename(dir)}: padding and length from the tokenizer config`, () => {
      expect([slow.padId, slow.contextLength, slow.sotId, slow.eotId]).toEqual([49407, 77, 49406, 49407]);
      expect([slowRows.length, fastRows.length]).toEqual([prompts.length, prompts.length]);
    });

    prompts.forEach((p, i) => {
      it(`${basename(dir)} prompt ${p.index} (${p.source}): slow CLIPTokenizer with ftfy`, () => {
        expect(slow.clean(p.text)).toEqual(p.clip.ftfy_cleaned_chunks);
        expect(slow.bpeTokens(p.text)).toEqual(p.clip.bpe_tokens);
        expect(slow.encode(p.text).length + 2).toBe(p.clip.untruncated_length);
        expect(rowsOf(slow, p.text)).toEqual(p.clip.ids);
        expect(rowsOf(slow, p.text)).toEqual(slowRows[i]);
      });
      it(`${basename(dir)} prompt ${p.index} (${p.source}): tokenizers backend`, () => {
        expect(rowsOf(fast, p.text)).toEqual(p.clip.ids_tokenizers_backend ?? p.clip.ids);
        expect(rowsOf(fast, p.text)).toEqual(fastRows[i]);
      });
    });
  });
}

// PickScore: the processor's fast tokenizer, `padding=True` (to the longest row; one prompt per call).
for (const dir of goldenCases('pickscore_reward')) {
  describe(basename(dir), () => {
    it(`${basename(dir)}: prompt ids and attention mask`, () => {
      const tok = ClipTokenizer.fromDir(join(dir, 'processor'), { variant: 'hf_fast', padding: 'longest' });
      const { prompts } = readJson<{ prompts: string[] }>(join(dir, 'case.json'));
      const expected = join(dir, 'expected.safetensors');
      prompts.forEach((text, j) => {
        const batch = tok.tokenize(text);
        const [want] = idRows(expected, `prompt_${j}.input_ids`);
        expect(Array.from(batch.inputIds), text).toEqual(want);
        expect(batch.shape).toEqual([1, want!.length]);
        expect(Array.from(batch.attentionMask).every((m) => m === 1)).toBe(true);
      });
    });
  });
}
