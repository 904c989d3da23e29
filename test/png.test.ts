import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32, deflateSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { decodePng, encodePng, readPng, writePng } from '../src/io/png.ts';

const dir = mkdtempSync(join(tmpdir(), 'png-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function chunk(type: string, data: Uint8Array): Buffer {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const out = Buffer.alloc(body.length + 8);
  out.writeUInt32BE(data.length, 0);
  body.copy(out, 4);
  out.writeUInt32BE(crc32(body), body.length + 4);
  return out;
}

/** A PNG built by hand, so colour types, bit depths and chunks pngjs cannot write can be tested. */
function makePng(width: number, height: number, colorType: number, bitDepth: number, rows: number[][], extra: Buffer[] = []): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([bitDepth, colorType, 0, 0, 0], 8);
  const raw = Buffer.from(rows.flatMap((row) => [0, ...row])); // filter type 0 on every row
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), ...extra, chunk('IDAT', deflateSync(raw)), chunk('IEND', new Uint8Array(0)),
  ]);
}

describe('png', () => {
  it('writes an RGB image atomically and reads it back', () => {
    const width = 5, height = 3;
    const rgb = Uint8Array.from({ length: width * height * 3 }, (_, i) => (i * 37) % 256);
    const path = join(dir, 'a.png');
    writeFileSync(path, 'old contents');
    writePng(path, { width, height, rgb });
    expect(readPng(path)).toEqual({ width, height, rgb });
    expect(readdirSync(dir)).toEqual(['a.png']);
  });

  it('reads grey, grey+alpha, palette and RGBA images as RGB, alpha dropped', () => {
    expect(decodePng(makePng(2, 1, 0, 8, [[10, 200]])).rgb).toEqual(Uint8Array.from([10, 10, 10, 200, 200, 200]));
    expect(decodePng(makePng(2, 1, 4, 8, [[10, 0, 200, 255]])).rgb).toEqual(Uint8Array.from([10, 10, 10, 200, 200, 200]));
    // 4-bit grey scales by 17, as PIL does.
    expect(decodePng(makePng(2, 1, 0, 4, [[0x3f]])).rgb).toEqual(Uint8Array.from([51, 51, 51, 255, 255, 255]));
    const palette = chunk('PLTE', Uint8Array.from([1, 2, 3, 250, 251, 252]));
    const paletteAlpha = chunk('tRNS', Uint8Array.from([0, 128]));
    expect(decodePng(makePng(2, 1, 3, 8, [[1, 0]], [palette, paletteAlpha])).rgb).toEqual(Uint8Array.from([250, 251, 252, 1, 2, 3]));
    expect(decodePng(makePng(1, 2, 6, 8, [[1, 2, 3, 0], [4, 5, 6, 255]])).rgb).toEqual(Uint8Array.from([1, 2, 3, 4, 5, 6]));
  });

  it('keeps the colour of pixels a tRNS chunk marks transparent', () => {
    const transparentRed = chunk('tRNS', Uint8Array.from([0, 255, 0, 0, 0, 0]));
    expect(decodePng(makePng(2, 1, 2, 8, [[255, 0, 0, 0, 9, 9]], [transparentRed])).rgb).toEqual(Uint8Array.from([255, 0, 0, 0, 9, 9]));
  });

  it('refuses 16-bit images, non-PNG data and mis-sized RGB buffers', () => {
    expect(() => decodePng(makePng(1, 1, 2, 16, [[0, 1, 0, 2, 0, 3]]))).toThrow(/16-bit/);
    expect(() => decodePng(Buffer.from('GIF89a....'))).toThrow(/not a PNG/);
    expect(() => encodePng({ width: 2, height: 2, rgb: new Uint8Array(11) })).toThrow(/2x2 RGB/);
  });
});
