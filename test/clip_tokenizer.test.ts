import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { ClipTokenizer, fixText, htmlUnescape } from '../src/io/clip_tokenizer.ts';

// Expected values printed by ftfy 6.3.0 (fix_text) and CPython 3.11 (html.unescape).
const FTFY_CASES: [string, string][] = [
  ['The Mona Lisa doesn\u00e2\u20ac\u2122t smile', "The Mona Lisa doesn't smile"],
  ['\u00e2\u0153\u201d No problems', '\u2714 No problems'],
  ['&macr;\\_(\u00e3\u0083\u0084)_/&macr;', '\u00af\\_(\u30c4)_/\u00af'],
  ['Broken text&hellip; it&#x2019;s \ufb02ubberi\ufb01c!', "Broken text\u2026 it's flubberific!"],
  ['\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33', 'LOUD NOISES'],
  ['\uff35\uff80\uff70\uff9d', 'U\u30bf\u30fc\u30f3'],
  ['voil\u00c3 le travail', 'voil\u00e0 le travail'],
  ['Caf\u00e9 doesn\u00e2\u20ac\u2122t', "Caf\u00e9 doesn't"],
  ['\u00e2\u20ac\u0153 like this \u00e2\u20ac\ufffd', '" like this \ufffd'],
  ["\u001b[36;44mI'm blue\u001b[0m", "I'm blue"],
  ['P&EACUTE;REZ', 'P\u00c9REZ'],
  ['BUNDESSTRA&SZLIG;E', 'BUNDESSTRASSE'],
  ['&ntilde; &Ntilde; &NTILDE; &nTILDE;', '\u00f1 \u00d1 \u00d1 &nTILDE;'],
  ['&lt;tag&gt; <b>', '&lt;tag&gt; <b>'],
  ['a\r\nb\u2028c\rd\u0085e', 'a\nb\nc\nd\u2026e'],
  ['\ufeffBOM\u0000x\u007f', 'BOMx'],
  ['e\u0301', '\u00e9'],
  ['&amp;\n<b>&amp;\n&amp;', '&\n<b>&amp;\n&amp;'],
  ['It\u0092s', "It's"],
  ['s\u00c3\u00b3', 's\u00f3'],
  ['\u01c5emal \u0132ssel', 'D\u017eemal IJssel'],
  ['fi\ud83d', 'fi\ufffd'],
  ['just \u201cquotes\u201d and \u2018single\u2019', 'just "quotes" and \'single\''],
  ['\u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3', '\u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3'],
  ['', ''],
];

const UNESCAPE_CASES: [string, string][] = [
  ['&amp;', '&'], ['&amp', '&'], ['&ampfoo', '&foo'], ['&notit;', '\u00acit;'], ['&#x2019;', '\u2019'], ['&#8217', '\u2019'],
  ['&#150;', '\u2013'], ['&#0;', '\ufffd'], ['&#xD800;', '\ufffd'], ['&#x110000;', '\ufffd'], ['&#1;', ''], ['&#13;', '\r'],
  ['&#65', 'A'], ['&unknown;', '&unknown;'], ['&AMP;', '&'], ['&lang;', '\u27e8'], ['&FRAC12;', '&FRAC12;'], ['a & b', 'a & b'],
  ['&#xFFFF;', ''], ['&#xfdd0;', ''], ['&amp;lt;', '&lt;'],
];

describe('ftfy fix_text port', () => {
  it.each(FTFY_CASES)('fixText(%j)', (input, expected) => {
    expect(fixText(input)).toBe(expected);
  });
});

describe('html.unescape port', () => {
  it.each(UNESCAPE_CASES)('htmlUnescape(%j)', (input, expected) => {
    expect(htmlUnescape(input)).toBe(expected);
  });
});

// A tiny CLIP-style vocabulary: the 256 byte symbols (open_clip's order: printable bytes first), the same with
// '</w>', then four merges, then the two special tokens.
const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
const byteSymbols = (() => {
  let n = 0;
  const table = Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : 256 + n++));
  return [...table.filter((_, b) => printable(b)), ...table.filter((_, b) => !printable(b))];
})();
const MERGES = ['h e', 'l l', 'he ll', 'hell o</w>'];
const VOCAB = [...byteSymbols, ...byteSymbols.map((s) => s + '</w>'), ...MERGES.map((m) => m.replace(' ', ''))];
const SOT = VOCAB.length, EOT = VOCAB.length + 1;
const id = (token: string) => VOCAB.indexOf(token);

const dir = mkdtempSync(join(tmpdir(), 'clip-tok-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const hfVocab = Object.fromEntries([...VOCAB.map((t, i) => [t, i] as const), ['<|startoftext|>', SOT], ['<|endoftext|>', EOT]]);
writeFileSync(join(dir, 'vocab.json'), JSON.stringify(hfVocab));
writeFileSync(join(dir, 'merges.txt'), ['#version: 0.2', ...MERGES].join('\n') + '\n');
writeFileSync(join(dir, 'bpe.txt.gz'), gzipSync(Buffer.from(['"bpe_simple_vocab_16e6.txt#version: 0.2', ...MERGES].join('\n'))));
const tokenizerJson = (merges: unknown[]) => JSON.stringify({ model: { type: 'BPE', end_of_word_suffix: '</w>', vocab: hfVocab, merges } });
writeFileSync(join(dir, 'tokenizer_strings.json'), tokenizerJson(MERGES));
writeFileSync(join(dir, 'tokenizer_pairs.json'), tokenizerJson(MERGES.map((m) => m.split(' '))));
writeFileSync(join(dir, 'wordpiece.json'), JSON.stringify({ model: { type: 'WordPiece', vocab: hfVocab } }));

describe('ClipTokenizer BPE machinery', () => {
  const openClip = ClipTokenizer.fromOpenClipBpe(join(dir, 'bpe.txt.gz'));
  const slow = ClipTokenizer.fromVocabMerges(join(dir, 'vocab.json'), join(dir, 'merges.txt'));
  const fast = ClipTokenizer.fromVocabMerges(join(dir, 'vocab.json'), join(dir, 'merges.txt'), { variant: 'hf_fast', padding: 'longest' });

  it('loads the same vocabulary from every file format', () => {
    expect([openClip.sotId, openClip.eotId]).toEqual([SOT, EOT]);
    for (const file of ['tokenizer_strings.json', 'tokenizer_pairs.json']) {
      const t = ClipTokenizer.fromTokenizerJson(join(dir, file));
      expect(t.encode('Hello hell')).toEqual(slow.encode('Hello hell'));
    }
    expect(() => ClipTokenizer.fromTokenizerJson(join(dir, 'wordpiece.json'))).toThrow(/not a CLIP BPE/);
  });

  it('merges the lowest-ranked pair everywhere, left to right, with </w> on the last symbol', () => {
    expect(openClip.bpeTokens('hello')).toEqual(['hello</w>']);
    // 'l l' does not merge 'l' with the word-final 'l</w>'.
    expect(openClip.bpeTokens('hell')).toEqual(['he', 'l', 'l</w>']);
    expect(openClip.bpeTokens('lll')).toEqual(['ll', 'l</w>']);
    expect(openClip.encode('hello hello')).toEqual([id('hello</w>'), id('hello</w>')]);
  });

  it('maps UTF-8 bytes to byte symbols (printable latin-1 as itself, the rest from U+0100)', () => {
    expect(openClip.bpeTokens('é')).toEqual(['\u00c3', '\u00a9</w>']);
    expect(fast.bpeTokens('\u0001')).toEqual(['\u0101</w>']);
    expect(openClip.bpeTokens("don't 42")).toEqual(['d', 'o', 'n</w>', "'", 't</w>', '4</w>', '2</w>']);
  });

  it('reads the special-token text of each variant as the special id', () => {
    expect(openClip.encode('a<end_of_text>b<start_of_text>')).toEqual([id('a</w>'), EOT, id('b</w>'), SOT]);
    expect(slow.encode('a!!<|endoftext|>b')).toEqual([id('a</w>'), id('!'), id('!</w>'), EOT, id('b</w>')]);
    expect(fast.encode('A <|endoftext|>')).toEqual([id('a</w>'), EOT]);
    // open_clip's spelling means nothing to the Hugging Face tokenizers and vice versa.
    expect(slow.encode('<end_of_text>')).not.toContain(EOT);
    expect(openClip.encode('<|endoftext|>')).not.toContain(EOT);
  });

  it('cleans text per variant', () => {
    expect(openClip.clean('  Tom &amp;amp; JERRY\n\tdoesnâ€™t ')).toEqual(["tom & jerry doesn't"]);
    // ftfy decodes only references ending in ';' (repeatedly); open_clip's html.unescape also takes '&amp' alone.
    expect(slow.clean('AT&amp T &amp;amp;<|endoftext|> x ')).toEqual(['at&amp t &', 'x']);
    expect(openClip.clean('AT&amp T')).toEqual(['at& t']);
    expect(fast.clean('doesnâ€™t  &amp;')).toEqual(['doesnâ€™t &amp;']);
    // Python's lower() gives a final sigma; the tokenizers library lower-cases character by character.
    expect(slow.clean('ΟΣ')).toEqual(['ος']);
    expect(fast.clean('ΟΣ')).toEqual(['οσ']);
  });

  it('truncates to the context length with the end token last, and pads', () => {
    const long = openClip.tokenize('hello '.repeat(100));
    expect(long.shape).toEqual([1, 77]);
    expect(long.inputIds[0]).toBe(SOT);
    expect(long.inputIds[76]).toBe(EOT);
    expect(Array.from(long.inputIds.slice(1, 76))).toEqual(new Array(75).fill(id('hello</w>')));
    expect(long.attentionMask.every((m) => m === 1)).toBe(true);

    const short = openClip.tokenize(['hello', '']);
    expect(short.shape).toEqual([2, 77]);
    expect(Array.from(short.inputIds.slice(0, 4))).toEqual([SOT, id('hello</w>'), EOT, 0]);
    expect(Array.from(short.inputIds.slice(77, 80))).toEqual([SOT, EOT, 0]);
    expect(Array.from(short.attentionMask.slice(0, 4))).toEqual([1, 1, 1, 0]);

    expect(slow.padId).toBe(EOT);
    expect(Array.from(slow.tokenize('hello').inputIds.slice(0, 4))).toEqual([SOT, id('hello</w>'), EOT, EOT]);

    const longest = fast.tokenize(['hello hello', 'hello']);
    expect(longest.shape).toEqual([2, 4]);
    expect(Array.from(longest.inputIds)).toEqual([SOT, id('hello</w>'), id('hello</w>'), EOT, SOT, id('hello</w>'), EOT, EOT]);
    expect(Array.from(longest.attentionMask)).toEqual([1, 1, 1, 1, 1, 1, 1, 0]);
  });
});
