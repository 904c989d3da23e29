// CLIP's byte-level BPE tokenizer, ported so that each variant yields exactly the ids of its Python reference:
//   'open_clip': open_clip's SimpleTokenizer (HPSv2's copy, hpsv2/src/open_clip/tokenizer.py), what DanceGRPO's
//                HPS reward calls: ftfy.fix_text, html.unescape twice, strip, whitespace collapse, lower(); the
//                literal texts `<start_of_text>` / `<end_of_text>` become the special ids; pad 0.
//   'hf_slow':   transformers' slow CLIPTokenizer with ftfy installed (4.46.1, FLUX's CLIP-L text encoder in
//                DanceGRPO's preprocessing): the text is first split on the literal special tokens
//                (`<|startoftext|>`, `<|endoftext|>`), then each chunk gets ftfy.fix_text, whitespace collapse
//                and lower(); no html.unescape of its own; pad = the config's pad token (49407).
//   'hf_fast':   CLIPTokenizerFast / the tokenizers library (PickScore's processor): NFC, whitespace collapse,
//                per-character lower-casing (Rust's char::to_lowercase: a final 'Σ' becomes 'σ', not 'ς'), no ftfy.
// All three share bytes_to_unicode, the pre-tokenizer regex and the merge loop, so one class serves them.
// @huggingface/tokenizers is not used: it lower-cases with JS toLowerCase (final 'ς') and its \s counts U+FEFF.
//
// ftfy: fix_text (6.3.0) is ported step by step (unescape_html, fix_encoding, fix_c1_controls,
// fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks, fix_surrogates,
// remove_terminal_escapes, remove_control_chars, NFC; line-by-line segments with the "auto" HTML rule), with the
// badness heuristic (badness.py) and the inconsistent-UTF-8 detector (chardata.py) copied as data. NOT implemented:
//   - mojibake from single-byte encodings other than latin-1 and sloppy-windows-1252 (windows-1250/1251/1253/1254/1257,
//     iso-8859-2, macroman, cp437): such text is left as it is where ftfy would re-decode it;
//   - HTML entities outside HTML 4's 252 names plus `&apos;` (the rest of the 2,231 HTML5 names), for ftfy's
//     unescape_html and for Python's html.unescape alike;
//   - max_decode_length (segments over 1,000,000 characters).
// Python's and Node's Unicode tables (NFC, \p{L}/\p{N}, lower()) may disagree on characters newer than Node's ICU.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';

// ---------------------------------------------------------------------------------------------------------------
// Python whitespace. The `regex` module's \s (open_clip, transformers) and Oniguruma's \s (tokenizers) are Unicode
// White_Space; JS's \s adds U+FEFF and lacks U+0085, so the class is spelled out. str.strip() (str.isspace) and the
// `re` module's \s also count U+001C..U+001F.
const WS = '\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000';
const PY_SPACE = WS + '\u001c-\u001f';
const WS_RUN_RE = new RegExp(`[${WS}]+`, 'gu');
const PY_STRIP_RE = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, 'gu');

const pyStrip = (s: string): string => s.replace(PY_STRIP_RE, '');
/** open_clip's / transformers' whitespace_clean: `regex.sub(r'\s+', ' ', text).strip()`. */
const whitespaceClean = (s: string): string => pyStrip(s.replace(WS_RUN_RE, ' '));

// Windows-1252 for bytes 0x80..0x9F; the five undefined bytes stand for themselves, as in ftfy's
// "sloppy-windows-1252" and in Python's html.unescape table of invalid character references.
const CP1252_C1 = '\u20ac\u0081\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u008d\u017d\u008f'
  + '\u0090\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u009d\u017e\u0178';

// ---------------------------------------------------------------------------------------------------------------
// Python's html.unescape (Lib/html/__init__.py), with HTML 4's entity names (values as in the HTML5 table).

// U+00A0..U+00FF in order; HTML5 also accepts these without the semicolon (its "legacy" names).
const LATIN1_NAMES = 'nbsp iexcl cent pound curren yen brvbar sect uml copy ordf laquo not shy reg macr deg plusmn '
  + 'sup2 sup3 acute micro para middot cedil sup1 ordm raquo frac14 frac12 frac34 iquest Agrave Aacute Acirc Atilde '
  + 'Auml Aring AElig Ccedil Egrave Eacute Ecirc Euml Igrave Iacute Icirc Iuml ETH Ntilde Ograve Oacute Ocirc Otilde '
  + 'Ouml times Oslash Ugrave Uacute Ucirc Uuml Yacute THORN szlig agrave aacute acirc atilde auml aring aelig ccedil '
  + 'egrave eacute ecirc euml igrave iacute icirc iuml eth ntilde ograve oacute ocirc otilde ouml divide oslash '
  + 'ugrave uacute ucirc uuml yacute thorn yuml';
// The other legacy names (also valid without the semicolon), then name/code point pairs needing the semicolon.
const LEGACY_NAMES = 'quot 22 amp 26 lt 3c gt 3e QUOT 22 AMP 26 LT 3c GT 3e COPY a9 REG ae';
const OTHER_NAMES = 'apos 27 OElig 152 oelig 153 Scaron 160 scaron 161 Yuml 178 fnof 192 circ 2c6 tilde 2dc '
  + 'Alpha 391 Beta 392 Gamma 393 Delta 394 Epsilon 395 Zeta 396 Eta 397 Theta 398 Iota 399 Kappa 39a Lambda 39b '
  + 'Mu 39c Nu 39d Xi 39e Omicron 39f Pi 3a0 Rho 3a1 Sigma 3a3 Tau 3a4 Upsilon 3a5 Phi 3a6 Chi 3a7 Psi 3a8 Omega 3a9 '
  + 'alpha 3b1 beta 3b2 gamma 3b3 delta 3b4 epsilon 3b5 zeta 3b6 eta 3b7 theta 3b8 iota 3b9 kappa 3ba lambda 3bb '
  + 'mu 3bc nu 3bd xi 3be omicron 3bf pi 3c0 rho 3c1 sigmaf 3c2 sigma 3c3 tau 3c4 upsilon 3c5 phi 3c6 chi 3c7 '
  + 'psi 3c8 omega 3c9 thetasym 3d1 upsih 3d2 piv 3d6 ensp 2002 emsp 2003 thinsp 2009 zwnj 200c zwj 200d lrm 200e '
  + 'rlm 200f ndash 2013 mdash 2014 lsquo 2018 rsquo 2019 sbquo 201a ldquo 201c rdquo 201d bdquo 201e dagger 2020 '
  + 'Dagger 2021 bull 2022 hellip 2026 permil 2030 prime 2032 Prime 2033 lsaquo 2039 rsaquo 203a oline 203e '
  + 'frasl 2044 euro 20ac image 2111 weierp 2118 real 211c trade 2122 alefsym 2135 larr 2190 uarr 2191 rarr 2192 '
  + 'darr 2193 harr 2194 crarr 21b5 lArr 21d0 uArr 21d1 rArr 21d2 dArr 21d3 hArr 21d4 forall 2200 part 2202 '
  + 'exist 2203 empty 2205 nabla 2207 isin 2208 notin 2209 ni 220b prod 220f sum 2211 minus 2212 lowast 2217 '
  + 'radic 221a prop 221d infin 221e ang 2220 and 2227 or 2228 cap 2229 cup 222a int 222b there4 2234 sim 223c '
  + 'cong 2245 asymp 2248 ne 2260 equiv 2261 le 2264 ge 2265 sub 2282 sup 2283 nsub 2284 sube 2286 supe 2287 '
  + 'oplus 2295 otimes 2297 perp 22a5 sdot 22c5 lceil 2308 rceil 2309 lfloor 230a rfloor 230b loz 25ca '
  + 'spades 2660 clubs 2663 hearts 2665 diams 2666 lang 27e8 rang 27e9';

/** Keys as in Python's html.entities.html5: 'name;' always, bare 'name' for the legacy names. */
const ENTITIES = (() => {
  const map = new Map<string, string>();
  const add = (name: string, cp: number, legacy: boolean) => {
    map.set(name + ';', String.fromCodePoint(cp));
    if (legacy) map.set(name, String.fromCodePoint(cp));
  };
  LATIN1_NAMES.split(' ').forEach((name, i) => add(name, 0xa0 + i, true));
  const pairs = (list: string, legacy: boolean) => {
    const words = list.split(' ');
    for (let i = 0; i < words.length; i += 2) add(words[i]!, parseInt(words[i + 1]!, 16), legacy);
  };
  pairs(LEGACY_NAMES, true);
  pairs(OTHER_NAMES, false);
  return map;
})();

const CHARREF_RE = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/gu;

function numericCharref(ref: string): string {
  const hex = ref[1] === 'x' || ref[1] === 'X';
  const num = parseInt(ref.slice(hex ? 2 : 1).replace(/;$/, ''), hex ? 16 : 10);
  if (num === 0) return '\ufffd';
  if (num === 0x0d) return '\r';
  if (num >= 0x80 && num <= 0x9f) return CP1252_C1[num - 0x80]!;
  if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff) return '\ufffd';
  // Python's _invalid_codepoints: C0 controls but tab/LF/FF/CR, DEL, the non-characters.
  const invalid = (num >= 0x1 && num <= 0x8) || num === 0xb || (num >= 0xe && num <= 0x1f) || num === 0x7f
    || (num >= 0xfdd0 && num <= 0xfdef) || (num & 0xfffe) === 0xfffe;
  return invalid ? '' : String.fromCodePoint(num);
}

/** Python's html.unescape. */
export function htmlUnescape(s: string): string {
  if (!s.includes('&')) return s;
  return s.replace(CHARREF_RE, (_m, ref: string) => {
    if (ref[0] === '#') return numericCharref(ref);
    const hit = ENTITIES.get(ref);
    if (hit !== undefined) return hit;
    // The longest legacy name the reference starts with ("&notit;" -> "¬it;").
    for (let x = ref.length - 1; x > 1; x--) {
      const prefix = ENTITIES.get(ref.slice(0, x));
      if (prefix !== undefined) return prefix + ref.slice(x);
    }
    return '&' + ref;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// ftfy 6.3.0 fix_text.

// badness.py MOJIBAKE_CATEGORIES: the characters UTF-8 mojibake is made of, by kind (ranges included).
const M = {
  common: '\u00a0\u00ad·´–—―…’',
  c1: '\u0080-\u009f',
  bad: '¦¤¨¬¯¸ƒˆˇ˘˛˜†‡‰⌐◊�ªº',
  law: '¶§',
  currency: '¢£¥₧€',
  startPunctuation: '¡«¿©΄΅‘‚“„•‹\uf8ff',
  endPunctuation: '®»˝”›™',
  numeric: '²³¹±¼½¾×µ÷⁄∂∆∏∑√∞∩∫≈≠≡≤≥№',
  kaomoji: 'Ò-ÖÙ-Üò-öø-üŐŌŪŲ°',
  upperAccented: 'À-ÑØÜÝĂĀĄĆČĎĐĘĚĒĖĞĢİĪĶĹĽŁĻŃŇŅŒŘŚŞŠŢŤŮŰŸŹŻŽҐ',
  lowerAccented: 'ßà-ñăąāćčďđęěēėğģįīķĺľłļœŕśşšťüźżžґﬁﬂ',
  upperCommon: 'ÞΑ-ΩΆΈΉΊΌΎΏΪΫЁ-Я',
  lowerCommon: 'α-ωάέήίΰа-џ',
  box: '│┌┐┘├┤┬┼═-╬▀▄█▌▐░▒▓',
};
const cls = (...parts: string[]) => `[${parts.join('')}]`;
const PY_S = cls(PY_SPACE);
const PY_W = '[\\p{L}\\p{N}_]';

// badness.py BADNESS_RE, alternative by alternative (\s and \w with Python's meaning, '.' without newline).
const BADNESS_RE = new RegExp([
  cls(M.c1),
  cls(M.bad, M.lowerAccented, M.upperAccented, M.box, M.startPunctuation, M.endPunctuation, M.currency, M.numeric, M.law) + cls(M.bad),
  '[a-zA-Z]' + cls(M.lowerCommon, M.upperCommon) + cls(M.bad),
  cls(M.bad) + cls(M.lowerAccented, M.upperAccented, M.box, M.startPunctuation, M.endPunctuation, M.currency, M.numeric, M.law),
  cls(M.lowerAccented, M.lowerCommon, M.box, M.endPunctuation, M.currency, M.numeric) + cls(M.upperAccented),
  cls(M.box, M.endPunctuation, M.currency, M.numeric) + cls(M.lowerAccented),
  cls(M.lowerAccented, M.box, M.endPunctuation) + cls(M.currency),
  PY_S + cls(M.upperAccented) + cls(M.currency),
  cls(M.upperAccented, M.box) + cls(M.numeric, M.law),
  cls(M.lowerAccented, M.upperAccented, M.box, M.currency, M.endPunctuation) + cls(M.startPunctuation) + cls(M.numeric),
  cls(M.lowerAccented, M.upperAccented, M.currency, M.numeric, M.box, M.law) + cls(M.endPunctuation) + cls(M.startPunctuation),
  cls(M.currency, M.numeric, M.box) + cls(M.startPunctuation),
  '[a-z]' + cls(M.upperAccented) + cls(M.startPunctuation, M.currency),
  cls(M.box) + cls(M.kaomoji),
  cls(M.lowerAccented, M.upperAccented, M.currency, M.numeric, M.startPunctuation, M.endPunctuation, M.law) + cls(M.box),
  cls(M.box) + cls(M.endPunctuation),
  cls(M.lowerAccented, M.upperAccented) + cls(M.startPunctuation, M.endPunctuation) + PY_W,
  '[Œœ][^A-Za-z]',
  cls(M.upperAccented) + '°',
  '[ÂÃÎÐ]' + cls('€œŠš¢£Ÿž\u00a0\u00ad®©°·»', M.startPunctuation, M.endPunctuation, '–—´'),
  '×[²³]',
  ('[ØÙ]' + cls(M.common, M.currency, M.bad, M.numeric, M.startPunctuation, 'ŸŠ®°µ»')).repeat(2),
  'à[²µ¹¼½¾]',
  '√[±∂†≠®™´≤≥¥µø]',
  '≈[°¢]',
  '‚Ä[ìîïòôúùû†°¢π]',
  '‚[âó][àä°ê]',
  'вЂ',
  '[ВГРС]' + cls(M.c1, M.bad, M.startPunctuation, M.endPunctuation, M.currency, '°µ') + '[ВГРС]',
  'ГўВЂВ[^\\n][A-Za-z ]',
  'Ã[\u00a0¡]',
  '[a-z]' + PY_S + '?[ÃÂ][ ]',
  '^[ÃÂ][ ]',
  cls('a-z.,?!', M.endPunctuation) + 'Â' + cls(' ', M.startPunctuation, M.endPunctuation),
  'β€[™\u00a0Ά\u00ad®°]',
  '[ΒΓΞΟ]' + cls(M.c1, M.bad, M.startPunctuation, M.endPunctuation, M.currency, '°') + '[ΒΓΞΟ]',
  'ā€',
].join('|'), 'u');

/** ftfy's is_bad: does the text look like it contains mojibake? */
const isBad = (text: string): boolean => BADNESS_RE.test(text);

// chardata.py UTF8_CLUES: characters that single-byte encodings decode UTF-8 lead and continuation bytes to.
const U = {
  firstOf2: 'ĂÂÄĀÅÃÆĆČÇĎĐÉĚÊËĖÈĒĘÐĞĢÍÎÏİÌĪĶĹĻŁŃŇŅÑÓÔÖŐÒŌØÕŘŚŠŞŢÞÚÛÜŰÙŪŲŮÝŹŽŻß×ΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩΪΫάέήίВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ',
  firstOf3: 'áăâäàāąåãæćčçďéěêëėèēęęģíîïìīįķĺļŕźΰαβγδεζηθικλμνξοабвгдежзийклмноп',
  firstOf4: 'đðğóšπσру',
  continuation: '\u0080-¿ ĄÆĽŁØŖŚŠŞŤŸŹŽŻŒąæƒľłøŗśšşťźžżœˆˇ˘˛˜˝΄΅ΆΈΉΊΌΎΏЁЂЃЄЅІЇЈЉЊЋЌЎЏёђѓєѕіїјљњћќўџҐґ–—―‘’‚“”„†‡•…‰‹›€№™',
  continuationStrict: '\u0080-¿ĄÆĽŁØŖŚŠŞŤŸŹŽŻŒąæƒľłøŗśšşťźžżœˆˇ˘˛˜˝΄΅ΆΈΉΊΌΎΏЁЂЃЄЅІЇЈЉЊЋЌЎЏёђѓєѕіїјљњћќўџҐґ†‡‰‹›€№™',
};
const UTF8_DETECTOR_RE = new RegExp(
  `(?<!${cls(U.continuationStrict)})(?:${cls(U.firstOf2)}${cls(U.continuation)}`
  + `|${cls(U.firstOf3)}${cls(U.continuation)}{2}|${cls(U.firstOf4)}${cls(U.continuation)}{3})+`, 'gu');

// Byte strings are handled as "binary" JS strings (one char per byte, U+0000..U+00FF) so ftfy's byte regexes port as is.
const ALTERED_UTF8_RE = /[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]/g;
const A_GRAVE_WORD_RE = /\xc3 (?! |quele|quela|quilo|s )/g;
const LOSSY_UTF8_RE = /[\xc2-\xdf][\x1a]|[\xc2-\xc3][?]|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]|\x1a/g;
const CESU8_RE = /\xed[\xa0-\xaf][\x80-\xbf]\xed[\xb0-\xbf][\x80-\xbf]/g;
const UTF8_FFFD = '\xef\xbf\xbd';

/** ftfy's restore_byte_a0: put back the 0xA0 bytes some program turned into spaces inside UTF-8 sequences. */
const restoreByteA0 = (bytes: string): string =>
  bytes.replace(A_GRAVE_WORD_RE, '\xc3\xa0 ').replace(ALTERED_UTF8_RE, (m) => m.replace(/ /g, '\xa0'));

const SLOPPY_1252_BYTE = new Map<string, number>([...CP1252_C1].map((ch, i) => [ch, 0x80 + i]));

/** Text -> bytes in latin-1 or ftfy's sloppy-windows-1252 (U+FFFD as 0x1A), or null where it cannot be encoded. */
function encodeSingleByte(text: string, sloppy1252: boolean): string | null {
  let out = '';
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    if (!sloppy1252) {
      if (c > 0xff) return null;
      out += ch;
    } else if ((c < 0x80 && c !== 0x1a) || (c >= 0xa0 && c <= 0xff)) out += ch;
    else if (c === 0xfffd) out += '\x1a';
    else {
      const byte = SLOPPY_1252_BYTE.get(ch);
      if (byte === undefined) return null;
      out += String.fromCharCode(byte);
    }
  }
  return out;
}

const UTF8_STRICT = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** ftfy's "utf-8-variants" decoding (CESU-8 surrogate pairs, Java's C0 80 null), else strict UTF-8; null on error. */
function decodeUtf8Variants(bytes: string): string | null {
  const fixed = bytes.replace(/\xc0\x80/g, '\x00').replace(CESU8_RE, (m) => {
    const cp = 0x10000 + ((m.charCodeAt(1) & 0x0f) << 16) + ((m.charCodeAt(2) & 0x3f) << 10)
      + ((m.charCodeAt(4) & 0x0f) << 6) + (m.charCodeAt(5) & 0x3f);
    return String.fromCharCode(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  });
  try {
    return UTF8_STRICT.decode(Uint8Array.from(fixed, (ch) => ch.charCodeAt(0)));
  } catch {
    return null;
  }
}

const fixC1Controls = (text: string): string => text.replace(/[\x80-\x9f]/g, (ch) => CP1252_C1[ch.charCodeAt(0) - 0x80]!);

/** One step of ftfy's fix_encoding_and_explain, for the latin-1 and sloppy-windows-1252 cases. */
function fixEncodingStep(text: string): string {
  if (/^[\x00-\x7f]*$/.test(text) || !isBad(text)) return text;
  for (const sloppy of [false, true]) {
    let bytes = encodeSingleByte(text, sloppy);
    if (bytes === null) continue;
    if (bytes.search(ALTERED_UTF8_RE) >= 0) bytes = restoreByteA0(bytes);
    if (sloppy) bytes = bytes.replace(LOSSY_UTF8_RE, UTF8_FFFD);
    const fixed = decodeUtf8Variants(bytes);
    if (fixed !== null) return fixed;
  }
  // decode_inconsistent_utf8: mojibake embedded in otherwise sound text, fixed piece by piece.
  const embedded = text.replace(UTF8_DETECTOR_RE, (piece) => (piece.length < text.length && isBad(piece) ? fixEncoding(piece) : piece));
  if (embedded !== text) return embedded;
  // What is left of ftfy's step: latin-1 text whose strict windows-1252 reading differs, and C1 controls anywhere,
  // both come down to reading each C1 control as its windows-1252 character.
  return fixC1Controls(text);
}

/** ftfy's fix_encoding: repeat single steps until nothing changes. */
function fixEncoding(text: string): string {
  for (;;) {
    const next = fixEncodingStep(text);
    if (next === text) return text;
    text = next;
  }
}

/** ftfy's unescape_html: only references ending in ';', plus all-caps spellings of lower-case names ("&EACUTE;" -> "É"). */
function unescapeHtmlFtfy(text: string): string {
  return text.replace(/&#?[0-9A-Za-z]{1,24};/g, (ref) => {
    const name = ref.slice(1, -1);
    const hit = ENTITIES.get(name + ';');
    if (hit !== undefined) return hit;
    if (ref[1] === '#') {
      const decoded = htmlUnescape(ref);
      return decoded.includes(';') ? ref : decoded;
    }
    const lower = name.toLowerCase();
    const lowerHit = ENTITIES.get(lower + ';');
    // ftfy adds the upper-case spelling only where html.unescape does not already read it otherwise.
    if (lowerHit !== undefined && lower.toUpperCase() === name && htmlUnescape(ref) === ref) return lowerHit.toUpperCase();
    return ref;
  });
}

const LIGATURES: Record<string, string> = {
  'Ĳ': 'IJ', 'ĳ': 'ij', 'ŉ': 'ʼn', 'Ǳ': 'DZ', 'ǲ': 'Dz', 'ǳ': 'dz', 'Ǆ': 'DŽ', 'ǅ': 'Dž', 'ǆ': 'dž', 'Ǉ': 'LJ', 'ǈ': 'Lj',
  'ǉ': 'lj', 'Ǌ': 'NJ', 'ǋ': 'Nj', 'ǌ': 'nj', 'ﬀ': 'ff', 'ﬁ': 'fi', 'ﬂ': 'fl', 'ﬃ': 'ffi', 'ﬄ': 'ffl', 'ﬅ': 'ſt', 'ﬆ': 'st',
};
const LIGATURE_RE = new RegExp(`[${Object.keys(LIGATURES).join('')}]`, 'gu');

/** ftfy's fix_and_explain loop on one segment: every fixer, then NFC, until the text stops changing. */
function fixSegment(text: string, unescapeHtml: boolean): string {
  for (;;) {
    const original = text;
    if (unescapeHtml) text = unescapeHtmlFtfy(text);
    text = fixEncoding(text);
    text = fixC1Controls(text);
    text = text.replace(LIGATURE_RE, (ch) => LIGATURES[ch]!);
    // fix_character_width: full-width ASCII, half-width katakana and the ideographic space, by NFKC.
    text = text.replace(/[\u3000\uff01-\uffef]/g, (ch) => ch.normalize('NFKC'));
    text = text.replace(/[\u201c-\u201f]/g, '"').replace(/[\u02bc\u2018-\u201b]/g, "'");
    text = text.replace(/\r\n|[\r\u2028\u2029\u0085]/g, '\n');
    // fix_surrogates: JS already joins valid pairs; lone surrogates become U+FFFD.
    text = text.replace(/\p{Cs}/gu, '\ufffd');
    text = text.replace(/\x1b\[((?:\p{Nd}|;)*)([a-zA-Z])/gu, '');
    text = text.replace(/[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g, '');
    text = text.normalize('NFC');
    if (text === original) return text;
  }
}

/**
 * ftfy.fix_text (6.3.0, default configuration) as far as this module ports it (see the header). The text is fixed
 * line by line; HTML entities are decoded ("auto") until a line contains '<', and from then on not at all,
 * as ftfy keeps the changed setting for the following lines.
 */
export function fixText(text: string): string {
  let unescapeHtml = true;
  let out = '';
  for (const segment of text.match(/[^\n]*\n|[^\n]+/g) ?? []) {
    if (segment.includes('<')) unescapeHtml = false;
    out += fixSegment(segment, unescapeHtml);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Byte-level BPE.

// bytes_to_unicode: printable latin-1 bytes stand for themselves, the others map to U+0100 onwards in byte order.
const isPrintableByte = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
const BYTE_CHARS: string[] = (() => {
  let n = 0;
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(isPrintableByte(b) ? b : 256 + n++));
})();
/** The 256 byte symbols in open_clip's vocabulary order (the printable bytes first). */
const BYTE_VOCAB_ORDER = [...BYTE_CHARS.filter((_, b) => isPrintableByte(b)), ...BYTE_CHARS.filter((_, b) => !isPrintableByte(b))];
const UTF8 = new TextEncoder();

// open_clip and transformers' slow tokenizer keep merges[1 : 49152 - 256 - 2 + 1] of the merges file.
const CLIP_MERGES = 49152 - 256 - 2;
const WORD_PATTERN = `'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^${WS}\\p{L}\\p{N}]+`;
const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export type ClipVariant = 'open_clip' | 'hf_slow' | 'hf_fast';

export interface ClipTokenizerOptions {
  /** Text cleaning and special-token spelling (see the module header). Default: 'open_clip' for open_clip's
   * `bpe_simple_vocab_16e6.txt.gz`, 'hf_slow' for Hugging Face files. */
  variant?: ClipVariant;
  /** Rows are cut to this many ids (last one forced to the end token) and padded to it. Default 77, or the
   * tokenizer_config.json model_max_length. */
  contextLength?: number;
  /** Padding id. Default: 0 for open_clip, the config's pad_token (else the end token) for Hugging Face variants. */
  padId?: number;
  /** 'max_length' (default) pads every row to contextLength; 'longest' pads to the longest row of the call,
   * as transformers' `padding=True` (PickScore's processor call) does. */
  padding?: 'max_length' | 'longest';
}

/** A tokenized batch: row-major [rows, length] ids and attention mask (1 on tokens, 0 on padding). */
export interface ClipBatch {
  inputIds: Int32Array;
  attentionMask: Int32Array;
  shape: [number, number];
}

type Chunk = { text: string } | { special: string };

/** The special-token texts of a Hugging Face tokenizer folder and its configured length. */
export interface ClipSpecialTokens { bos: string; eos: string; pad?: string | undefined; maxLength?: number | undefined }

/** tokenizer_config.json / special_tokens_map.json entries are strings or {content: ...}. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  const content = (v as { content?: unknown } | null | undefined)?.content;
  return typeof content === 'string' ? content : undefined;
}

function readHfSpecials(dir: string): ClipSpecialTokens {
  const config: Record<string, unknown> = {};
  for (const file of ['special_tokens_map.json', 'tokenizer_config.json']) {
    if (existsSync(join(dir, file))) Object.assign(config, JSON.parse(readFileSync(join(dir, file), 'utf8')));
  }
  const maxLength = typeof config.model_max_length === 'number' && config.model_max_length < 1e6 ? config.model_max_length : undefined;
  return {
    bos: tokenText(config.bos_token) ?? '<|startoftext|>',
    eos: tokenText(config.eos_token) ?? '<|endoftext|>',
    pad: tokenText(config.pad_token),
    maxLength,
  };
}

export class ClipTokenizer {
  readonly variant: ClipVariant;
  readonly contextLength: number;
  readonly sotId: number;
  readonly eotId: number;
  readonly padId: number;
  readonly padding: 'max_length' | 'longest';
  private readonly encoder: Map<string, number>;
  private readonly ranks: Map<string, number>;
  /** The literal texts that stand for the start/end tokens in this variant. */
  private readonly specials: Map<string, number>;
  private readonly specialSplitRe: RegExp;
  private readonly pattern: RegExp;
  private readonly cache = new Map<string, string[]>();

  private constructor(
    encoder: Map<string, number>, merges: [string, string][], sotId: number, eotId: number,
    hf: ClipSpecialTokens | undefined, options: ClipTokenizerOptions,
  ) {
    this.variant = options.variant ?? (hf ? 'hf_slow' : 'open_clip');
    this.encoder = encoder;
    this.ranks = new Map(merges.map(([a, b], i) => [`${a} ${b}`, i]));
    this.sotId = sotId;
    this.eotId = eotId;
    this.contextLength = options.contextLength ?? hf?.maxLength ?? 77;
    const hfPad = hf?.pad === undefined ? undefined : encoder.get(hf.pad);
    this.padId = options.padId ?? (this.variant === 'open_clip' ? 0 : hfPad ?? eotId);
    this.padding = options.padding ?? 'max_length';
    const names = this.variant === 'open_clip' ? ['<start_of_text>', '<end_of_text>'] : [hf?.bos ?? '<|startoftext|>', hf?.eos ?? '<|endoftext|>'];
    this.specials = new Map([[names[0]!, sotId], [names[1]!, eotId]]);
    const alternatives = names.map(escapeRegExp).join('|');
    this.specialSplitRe = new RegExp(`(${alternatives})`, 'u');
    // The Python patterns put the special texts first and are case-insensitive; the fast tokenizer's Split
    // pattern has neither (it extracts the special tokens before).
    this.pattern = this.variant === 'hf_fast' ? new RegExp(WORD_PATTERN, 'gu') : new RegExp(`${alternatives}|${WORD_PATTERN}`, 'giu');
  }

  /** open_clip's `bpe_simple_vocab_16e6.txt.gz`: vocabulary = 256 byte symbols, the same + '</w>', the merges, then
   * `<start_of_text>` and `<end_of_text>` (49406, 49407). */
  static fromOpenClipBpe(path: string, options: ClipTokenizerOptions = {}): ClipTokenizer {
    const lines = gunzipSync(readFileSync(path)).toString('utf8').split('\n');
    const merges = parseMerges(lines.slice(1, CLIP_MERGES + 1));
    const vocab = [...BYTE_VOCAB_ORDER, ...BYTE_VOCAB_ORDER.map((c) => c + '</w>'), ...merges.map(([a, b]) => a + b)];
    const encoder = new Map(vocab.map((token, id) => [token, id]));
    return new ClipTokenizer(encoder, merges, vocab.length, vocab.length + 1, undefined, options);
  }

  /** Hugging Face `vocab.json` + `merges.txt` (first line '#version...', merges cut as the slow tokenizer does). */
  static fromVocabMerges(vocabPath: string, mergesPath: string, options: ClipTokenizerOptions = {}, specials?: ClipSpecialTokens): ClipTokenizer {
    const vocab = JSON.parse(readFileSync(vocabPath, 'utf8')) as Record<string, number>;
    const lines = readFileSync(mergesPath, 'utf8').trim().split('\n');
    return ClipTokenizer.fromHf(new Map(Object.entries(vocab)), parseMerges(lines.slice(1, CLIP_MERGES + 1)), specials, options);
  }

  /** A tokenizers-library `tokenizer.json` holding a CLIP BPE model (end_of_word_suffix '</w>'). */
  static fromTokenizerJson(path: string, options: ClipTokenizerOptions = {}, specials?: ClipSpecialTokens): ClipTokenizer {
    const json = JSON.parse(readFileSync(path, 'utf8')) as {
      model: { type?: string; end_of_word_suffix?: string | null; vocab: Record<string, number>; merges: (string | [string, string])[] };
    };
    if (json.model.type !== 'BPE' || json.model.end_of_word_suffix !== '</w>') {
      throw new Error(`${path}: not a CLIP BPE tokenizer (model ${json.model.type}, end_of_word_suffix ${json.model.end_of_word_suffix})`);
    }
    const merges = json.model.merges.map((m) => (typeof m === 'string' ? m : m.join(' ')));
    return ClipTokenizer.fromHf(new Map(Object.entries(json.model.vocab)), parseMerges(merges), specials, options);
  }

  /** A tokenizer folder: `tokenizer.json`, or `vocab.json` + `merges.txt` (with tokenizer_config.json /
   * special_tokens_map.json for the special tokens, padding and length), or open_clip's `bpe_simple_vocab_16e6.txt.gz`. */
  static fromDir(dir: string, options: ClipTokenizerOptions = {}): ClipTokenizer {
    const specials = readHfSpecials(dir);
    if (existsSync(join(dir, 'tokenizer.json'))) return ClipTokenizer.fromTokenizerJson(join(dir, 'tokenizer.json'), options, specials);
    if (existsSync(join(dir, 'vocab.json')) && existsSync(join(dir, 'merges.txt'))) {
      return ClipTokenizer.fromVocabMerges(join(dir, 'vocab.json'), join(dir, 'merges.txt'), options, specials);
    }
    if (existsSync(join(dir, 'bpe_simple_vocab_16e6.txt.gz'))) return ClipTokenizer.fromOpenClipBpe(join(dir, 'bpe_simple_vocab_16e6.txt.gz'), options);
    throw new Error(`${dir}: no tokenizer.json, vocab.json + merges.txt or bpe_simple_vocab_16e6.txt.gz`);
  }

  private static fromHf(encoder: Map<string, number>, merges: [string, string][], specials: ClipSpecialTokens | undefined, options: ClipTokenizerOptions): ClipTokenizer {
    const names: ClipSpecialTokens = specials ?? { bos: '<|startoftext|>', eos: '<|endoftext|>', pad: '<|endoftext|>' };
    const sot = encoder.get(names.bos), eot = encoder.get(names.eos);
    if (sot === undefined || eot === undefined) throw new Error(`vocabulary lacks ${names.bos} or ${names.eos}`);
    return new ClipTokenizer(encoder, merges, sot, eot, names, options);
  }

  /** The cleaned text the BPE sees, as chunks between literal special tokens (one chunk for open_clip); empty chunks dropped. */
  clean(text: string): string[] {
    return this.chunks(text).flatMap((c) => ('text' in c && c.text !== '' ? [c.text] : []));
  }

  /** BPE pieces ('</w>' ends a word), special tokens as their literal text; no start/end tokens added. */
  bpeTokens(text: string): string[] {
    return this.pieces(text).map(([piece]) => piece);
  }

  /** Ids without start/end tokens, untruncated. */
  encode(text: string): number[] {
    return this.pieces(text).map(([, id]) => id);
  }

  /** [start, ...ids, end] per text, cut to contextLength with the last id forced to the end token, then padded. */
  tokenize(texts: string | string[]): ClipBatch {
    const list = typeof texts === 'string' ? [texts] : texts;
    const rows = list.map((text) => {
      const ids = [this.sotId, ...this.encode(text), this.eotId];
      if (ids.length > this.contextLength) {
        ids.length = this.contextLength;
        ids[ids.length - 1] = this.eotId;
      }
      return ids;
    });
    const width = this.padding === 'max_length' ? this.contextLength : Math.max(0, ...rows.map((r) => r.length));
    const inputIds = new Int32Array(rows.length * width).fill(this.padId);
    const attentionMask = new Int32Array(rows.length * width);
    rows.forEach((ids, r) => {
      inputIds.set(ids, r * width);
      attentionMask.fill(1, r * width, r * width + ids.length);
    });
    return { inputIds, attentionMask, shape: [rows.length, width] };
  }

  private chunks(text: string): Chunk[] {
    switch (this.variant) {
      case 'open_clip':
        return [{ text: whitespaceClean(pyStrip(htmlUnescape(htmlUnescape(fixText(text))))).toLowerCase() }];
      case 'hf_slow':
        return this.splitSpecials(text).map((c) => ('text' in c ? { text: whitespaceClean(fixText(c.text)).toLowerCase() } : c));
      case 'hf_fast': {
        // The normalizer (NFC, \s+ -> ' ', Lowercase per character) runs before the special tokens are matched.
        const normalized = Array.from(text.normalize('NFC').replace(WS_RUN_RE, ' '), (ch) => ch.toLowerCase()).join('');
        return this.splitSpecials(normalized);
      }
    }
  }

  /** Split on the literal special tokens, as the Hugging Face tokenizers do before anything else. */
  private splitSpecials(text: string): Chunk[] {
    return text.split(this.specialSplitRe).map((part, i) => (i % 2 === 1 ? { special: part } : { text: part }));
  }

  private pieces(text: string): [string, number][] {
    const out: [string, number][] = [];
    for (const chunk of this.chunks(text)) {
      if ('special' in chunk) {
        out.push([chunk.special, this.specials.get(chunk.special)!]);
        continue;
      }
      for (const [word] of chunk.text.matchAll(this.pattern)) {
        const special = this.specials.get(word);
        if (special !== undefined) {
          out.push([word, special]);
          continue;
        }
        const symbols = Array.from(UTF8.encode(word), (b) => BYTE_CHARS[b]!).join('');
        // Unknown pieces cannot occur with a complete byte vocabulary; the Hugging Face tokenizers map them to unk (<|endoftext|>).
        for (const piece of this.bpe(symbols)) out.push([piece, this.encoder.get(piece) ?? this.eotId]);
      }
    }
    return out;
  }

  /** simple_tokenizer.py bpe(): merge the lowest-ranked adjacent pair everywhere, left to right, until none is known. */
  private bpe(token: string): string[] {
    const cached = this.cache.get(token);
    if (cached) return cached;
    let word = Array.from(token);
    word[word.length - 1] += '</w>';
    while (word.length > 1) {
      let best: string | undefined;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < word.length; i++) {
        const rank = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (rank !== undefined && rank < bestRank) [best, bestRank] = [`${word[i]} ${word[i + 1]}`, rank];
      }
      if (best === undefined) break;
      const [first, second] = best.split(' ') as [string, string];
      const merged: string[] = [];
      for (let i = 0; i < word.length;) {
        if (i + 1 < word.length && word[i] === first && word[i + 1] === second) {
          merged.push(first + second);
          i += 2;
        } else merged.push(word[i++]!);
      }
      word = merged;
    }
    this.cache.set(token, word);
    return word;
  }
}

/** Python's `tuple(line.split())` per merges line. */
function parseMerges(lines: string[]): [string, string][] {
  return lines.map((line) => {
    const [a, b] = line.trim().split(/\s+/);
    return [a ?? '', b ?? ''];
  });
}
