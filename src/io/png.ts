// PNG files through pngjs. Reading gives what the reward models see after PIL's `Image.open(...).convert('RGB')`:
// 8-bit RGB pixels, grey replicated to three channels, palettes expanded, alpha dropped (not composited).
// Writing stores an RGB image atomically, so a reader never sees a half-written file.
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { PNG } from 'pngjs';

/** An 8-bit RGB image, row-major HWC. */
export interface RgbImage {
  width: number;
  height: number;
  rgb: Uint8Array;
}

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

// pngjs applies a tRNS chunk of a grey or RGB image by zeroing the whole pixel, colour included; PIL keeps the
// colour and only the alpha channel (which convert('RGB') drops) changes. Removing tRNS before decoding keeps
// the colours; for palette images it only carried palette alpha, dropped anyway.
function withoutTransparency(png: Buffer): Buffer {
  const kept = [png.subarray(0, 8)];
  for (let pos = 8; pos + 8 <= png.length;) {
    const end = pos + 12 + png.readUInt32BE(pos);
    if (png.toString('latin1', pos + 4, pos + 8) !== 'tRNS') kept.push(png.subarray(pos, end));
    pos = end;
  }
  return Buffer.concat(kept);
}

/** Decode PNG bytes (bit depth up to 8; grey, grey+alpha, RGB, RGBA or palette) to RGB. */
export function decodePng(bytes: Uint8Array, name = 'PNG data'): RgbImage {
  const png = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (png.length < 8 || !png.subarray(0, 8).equals(SIGNATURE)) throw new Error(`${name}: not a PNG file`);
  const image = PNG.sync.read(withoutTransparency(png));
  // pngjs scales 16-bit samples by rounding where PIL truncates; refuse rather than differ by a level.
  if (image.depth === 16) throw new Error(`${name}: 16-bit PNG, only 8-bit images are supported`);
  const { width, height, data } = image;
  const rgb = new Uint8Array(width * height * 3);
  for (let p = 0; p < width * height; p++) {
    rgb[p * 3] = data[p * 4]!;
    rgb[p * 3 + 1] = data[p * 4 + 1]!;
    rgb[p * 3 + 2] = data[p * 4 + 2]!;
  }
  return { width, height, rgb };
}

export function readPng(path: string): RgbImage {
  return decodePng(readFileSync(path), path);
}

/** Encode an RGB image as an 8-bit RGB PNG. */
export function encodePng(image: RgbImage): Buffer {
  const { width, height, rgb } = image;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0 || rgb.length !== width * height * 3) {
    throw new Error(`encodePng: ${rgb.length} bytes do not make a ${width}x${height} RGB image`);
  }
  const png = new PNG({ width, height, colorType: 2, inputColorType: 2, inputHasAlpha: false, bitDepth: 8 });
  png.data = Buffer.from(rgb.buffer, rgb.byteOffset, rgb.byteLength);
  return PNG.sync.write(png, { colorType: 2, inputColorType: 2, inputHasAlpha: false, bitDepth: 8 });
}

/** Write an RGB image as a PNG file: written and fsynced beside `path` under a temporary name, then renamed over it. */
export function writePng(path: string, image: RgbImage): void {
  const bytes = encodePng(image);
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'w');
  try {
    try {
      for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}
