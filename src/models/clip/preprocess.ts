// Image preprocessing of the two CLIP rewards, on the host, as the reference libraries compute it.
//
// HPS (HPSv2's open_clip `preprocess_val` with light_augmentation=True, hpsv2/src/open_clip/transform.py):
//   ToTensor            uint8 HWC -> float32 CHW, x / 255
//   ResizeMaxSize       s = size / max(H, W); if s != 1: torchvision F.resize of the FLOAT tensor to
//                       (round(H s), round(W s)) (Python round), bicubic with antialias (torch's
//                       _upsample_bicubic2d_aa), no clamping; then F.pad with 0: left/top get pad // 2
//   MaskAwareNormalize  (x - mean) / std per channel (OpenAI mean/std)
//
// PickScore (transformers' CLIPImageProcessor on PIL images, as DanceGRPO's calc_probs calls it):
//   resize              shortest side -> size.shortest_edge, the other int(size * long / short), PIL's
//                       bicubic on the 8-bit image (ImagingResample: float64 coefficients, 22-bit
//                       fixed point, clip to 0..255)
//   center_crop         top = (H - h) // 2, left = (W - w) // 2 (zero padding when the image is smaller)
//   rescale, normalize  float64 x * rescale_factor -> float32, then (x - mean) / std in float32
//
// Both are separable two-pass filters that run the horizontal pass first, as their references do.
import type { RgbImage } from '../../io/png.ts';

export const OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073] as const;
export const OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711] as const;

const f32 = Math.fround;

/** Python's round() for non-negative floats: half to even. */
export function pyRound(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** A float32 CHW image. */
export interface ChwImage {
  data: Float32Array;
  channels: number;
  height: number;
  width: number;
}

// ---- HPS: open_clip preprocess_val (light augmentation) --------------------------------------------

/** torchvision ToTensor on an 8-bit RGB image: [3, H, W] float32, x / 255. */
export function toTensor(img: RgbImage): ChwImage {
  const { width, height, rgb } = img;
  if (rgb.length !== width * height * 3) throw new Error(`toTensor: ${rgb.length} bytes do not make a ${width}x${height} RGB image`);
  const plane = width * height;
  const data = new Float32Array(3 * plane);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) data[c * plane + p] = f32(rgb[p * 3 + c]! / 255);
  }
  return { data, channels: 3, height, width };
}

/** Cubic convolution kernel with a = -0.5, in float32 steps as torch's aa_filter<float> evaluates it. */
function torchCubicAA(xIn: number): number {
  const x = Math.abs(xIn);
  const a = -0.5;
  if (x < 1) return f32(f32(f32(f32(f32((a + 2) * x) - (a + 3)) * x) * x) + 1);
  if (x < 2) return f32(f32(f32(f32(f32(f32(a * x) - 5 * a) * x) + 8 * a) * x) - 4 * a);
  return 0;
}

/** Per output index: first input index, tap count and normalised weights (ksize taps per row). */
interface Taps {
  start: Int32Array;
  count: Int32Array;
  weights: Float32Array;
  ksize: number;
}

/**
 * torch's HelperInterpCubic::_compute_index_ranges_weights with antialias and align_corners=False, for a
 * float32 input (scalar_t = float): scale = in / out, support = 2 * scale when downscaling (else 2),
 * window [trunc(center - support + 0.5), trunc(center + support + 0.5)), weights filter((j - center + 0.5) / scale)
 * normalised to sum 1.
 */
export function torchAaCubicTaps(inSize: number, outSize: number): Taps {
  const scale = f32(inSize / outSize);
  const support = f32(scale >= 1 ? 2 * scale : 2);
  const ksize = Math.ceil(support) * 2 + 1;
  const invscale = f32(scale >= 1 ? 1 / scale : 1);
  const start = new Int32Array(outSize), count = new Int32Array(outSize), weights = new Float32Array(outSize * ksize);
  for (let i = 0; i < outSize; i++) {
    const center = f32(scale * (i + 0.5));
    const xmin = Math.max(Math.trunc(f32(center - support) + 0.5), 0);
    const xsize = Math.min(Math.max(Math.min(Math.trunc(f32(center + support) + 0.5), inSize) - xmin, 0), ksize);
    let total = 0;
    for (let j = 0; j < xsize; j++) {
      const w = torchCubicAA(f32((f32(j + xmin - center) + 0.5) * invscale));
      weights[i * ksize + j] = w;
      total = f32(total + w);
    }
    if (total !== 0) for (let j = 0; j < xsize; j++) weights[i * ksize + j] = f32(weights[i * ksize + j]! / total);
    start[i] = xmin;
    count[i] = xsize;
  }
  return { start, count, weights, ksize };
}

/** One separable pass over axis `axis` (1 = rows/height, 2 = columns/width) of a CHW float32 image. */
function resamplePass(img: ChwImage, axis: 1 | 2, taps: Taps, outSize: number): ChwImage {
  const { channels: c, height: h, width: w, data } = img;
  const oh = axis === 1 ? outSize : h, ow = axis === 2 ? outSize : w;
  const out = new Float32Array(c * oh * ow);
  const { start, count, weights, ksize } = taps;
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < oh; y++) {
      for (let x = 0; x < ow; x++) {
        const o = axis === 2 ? x : y;
        const base = axis === 2 ? (ch * h + y) * w + start[o]! : (ch * h + start[o]!) * w + x;
        const stride = axis === 2 ? 1 : w;
        // interpolate_aa_single_dim: float accumulation from the first tap.
        let acc = f32(data[base]! * weights[o * ksize]!);
        for (let j = 1; j < count[o]!; j++) acc = f32(acc + f32(data[base + j * stride]! * weights[o * ksize + j]!));
        out[(ch * oh + y) * ow + x] = count[o]! > 0 ? acc : 0;
      }
    }
  }
  return { data: out, channels: c, height: oh, width: ow };
}

/**
 * torch.nn.functional.interpolate(x, size, mode='bicubic', align_corners=False, antialias=True) on a float32
 * CHW image: width pass first, then height; a pass whose size is unchanged is skipped. Values are not clamped.
 */
export function resizeBicubicAA(img: ChwImage, outHeight: number, outWidth: number): ChwImage {
  let cur = img;
  if (outWidth !== cur.width) cur = resamplePass(cur, 2, torchAaCubicTaps(cur.width, outWidth), outWidth);
  if (outHeight !== cur.height) cur = resamplePass(cur, 1, torchAaCubicTaps(cur.height, outHeight), outHeight);
  return cur === img ? { ...img, data: img.data.slice() } : cur;
}

/** torchvision F.pad(img, [left, top, right, bottom], fill). */
export function padChw(img: ChwImage, left: number, top: number, right: number, bottom: number, fill = 0): ChwImage {
  const oh = img.height + top + bottom, ow = img.width + left + right;
  const out = new Float32Array(img.channels * oh * ow).fill(fill);
  for (let c = 0; c < img.channels; c++) {
    for (let y = 0; y < img.height; y++) {
      const src = (c * img.height + y) * img.width;
      out.set(img.data.subarray(src, src + img.width), (c * oh + y + top) * ow + left);
    }
  }
  return { data: out, channels: img.channels, height: oh, width: ow };
}

/**
 * HPSv2's ResizeMaxSize(max_size, fill=0) on a tensor: longest side to max_size (Python round of the scaled
 * sides), torch bicubic antialias resize, zero padding to a square with pad // 2 on the left/top.
 * With a scale of exactly 1 the image passes unchanged (also unpadded), as in the reference.
 */
export function resizeMaxSize(img: ChwImage, maxSize: number, fill = 0): ChwImage {
  const scale = maxSize / Math.max(img.height, img.width);
  if (scale === 1) return { ...img, data: img.data.slice() };
  const nh = pyRound(img.height * scale), nw = pyRound(img.width * scale);
  // torchvision's F.resize returns the input when the size does not change.
  const resized = nh === img.height && nw === img.width ? img : resizeBicubicAA(img, nh, nw);
  const padH = maxSize - nh, padW = maxSize - nw;
  return padChw(resized, Math.floor(padW / 2), Math.floor(padH / 2), padW - Math.floor(padW / 2), padH - Math.floor(padH / 2), fill);
}

/** torchvision Normalize on float32: (x - mean) / std, per channel, float32 operations. */
export function normalizeChw(img: ChwImage, mean: readonly number[], std: readonly number[]): ChwImage {
  const plane = img.height * img.width;
  const out = new Float32Array(img.data.length);
  for (let c = 0; c < img.channels; c++) {
    const m = f32(mean[c]!), s = f32(std[c]!);
    for (let p = 0; p < plane; p++) out[c * plane + p] = f32(f32(img.data[c * plane + p]! - m) / s);
  }
  return { ...img, data: out };
}

export interface HpsPreprocessSteps {
  toTensor: ChwImage;
  resizeMaxSize: ChwImage;
  normalize: ChwImage;
}

/** preprocess_val of the HPS reward, keeping every step (the last one is the model input). */
export function hpsPreprocessSteps(img: RgbImage, imageSize: number, mean: readonly number[] = OPENAI_CLIP_MEAN, std: readonly number[] = OPENAI_CLIP_STD): HpsPreprocessSteps {
  const t = toTensor(img);
  const r = resizeMaxSize(t, imageSize, 0);
  return { toTensor: t, resizeMaxSize: r, normalize: normalizeChw(r, mean, std) };
}

/** The HPS model input [3, S, S] of one image. */
export function hpsPreprocess(img: RgbImage, imageSize: number, mean: readonly number[] = OPENAI_CLIP_MEAN, std: readonly number[] = OPENAI_CLIP_STD): ChwImage {
  return hpsPreprocessSteps(img, imageSize, mean, std).normalize;
}

// ---- PickScore: transformers' CLIPImageProcessor with PIL -------------------------------------------

/** PIL's bicubic filter (a = -0.5) in float64. */
function pilBicubic(xIn: number): number {
  const x = Math.abs(xIn);
  const a = -0.5;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

const PRECISION_BITS = 32 - 8 - 2;

/** PIL's precompute_coeffs for the whole-image box, then normalize_coeffs_8bpc (22-bit fixed point). */
export function pilBicubicTaps(inSize: number, outSize: number): { start: Int32Array; count: Int32Array; coeffs: Int32Array; ksize: number } {
  const support0 = 2;
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = support0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize), count = new Int32Array(outSize), coeffs = new Int32Array(outSize * ksize);
  const kk = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    kk.fill(0);
    for (let x = 0; x < xmax; x++) {
      const w = pilBicubic((x + xmin - center + 0.5) * ss);
      kk[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0) kk[x] = kk[x]! / ww;
    for (let x = 0; x < ksize; x++) {
      const v = kk[x]! * (1 << PRECISION_BITS);
      coeffs[xx * ksize + x] = kk[x]! < 0 ? Math.trunc(-0.5 + v) : Math.trunc(0.5 + v);
    }
    start[xx] = xmin;
    count[xx] = xmax;
  }
  return { start, count, coeffs, ksize };
}

function clip8(v: number): number {
  if (v >= 1 << (PRECISION_BITS + 8)) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / (1 << PRECISION_BITS));
}

/** PIL Image.resize((width, height), BICUBIC) of an 8-bit RGB image (horizontal pass first). */
export function pilResizeBicubic(img: RgbImage, width: number, height: number): RgbImage {
  let cur = img;
  if (width !== cur.width) {
    const { start, count, coeffs, ksize } = pilBicubicTaps(cur.width, width);
    const out = new Uint8Array(width * cur.height * 3);
    for (let y = 0; y < cur.height; y++) {
      for (let x = 0; x < width; x++) {
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let j = 0; j < count[x]!; j++) ss += cur.rgb[(y * cur.width + start[x]! + j) * 3 + c]! * coeffs[x * ksize + j]!;
          out[(y * width + x) * 3 + c] = clip8(ss);
        }
      }
    }
    cur = { width, height: cur.height, rgb: out };
  }
  if (height !== cur.height) {
    const { start, count, coeffs, ksize } = pilBicubicTaps(cur.height, height);
    const out = new Uint8Array(cur.width * height * 3);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < cur.width; x++) {
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let j = 0; j < count[y]!; j++) ss += cur.rgb[((start[y]! + j) * cur.width + x) * 3 + c]! * coeffs[y * ksize + j]!;
          out[(y * cur.width + x) * 3 + c] = clip8(ss);
        }
      }
    }
    cur = { width: cur.width, height, rgb: out };
  }
  return cur === img ? { ...img, rgb: img.rgb.slice() } : cur;
}

/** transformers' CLIPImageProcessor settings (preprocessor_config.json). */
export interface ClipImageProcessorConfig {
  shortestEdge: number;
  cropHeight: number;
  cropWidth: number;
  rescaleFactor: number;
  mean: readonly number[];
  std: readonly number[];
  doResize: boolean;
  doCenterCrop: boolean;
  doRescale: boolean;
  doNormalize: boolean;
}

/** Reads a preprocessor_config.json object; refuses settings this port does not implement. */
export function clipImageProcessorConfig(json: Record<string, any>): ClipImageProcessorConfig {
  const size = json.size ?? { shortest_edge: 224 };
  const shortestEdge = typeof size === 'number' ? size : size.shortest_edge;
  if (typeof shortestEdge !== 'number') throw new Error(`preprocessor_config: only size.shortest_edge is supported, got ${JSON.stringify(size)}`);
  const crop = json.crop_size ?? { height: 224, width: 224 };
  const [cropHeight, cropWidth] = typeof crop === 'number' ? [crop, crop] : [crop.height, crop.width];
  const resample = json.resample ?? 3;
  if (resample !== 3) throw new Error(`preprocessor_config: resample ${resample} is not supported (only 3 = PIL BICUBIC)`);
  return {
    shortestEdge, cropHeight, cropWidth,
    rescaleFactor: json.rescale_factor ?? 1 / 255,
    mean: json.image_mean ?? OPENAI_CLIP_MEAN,
    std: json.image_std ?? OPENAI_CLIP_STD,
    doResize: json.do_resize ?? true,
    doCenterCrop: json.do_center_crop ?? true,
    doRescale: json.do_rescale ?? true,
    doNormalize: json.do_normalize ?? true,
  };
}

/** transformers' get_resize_output_image_size(default_to_square=False) for a shortest-edge size: [height, width]. */
export function shortestEdgeSize(height: number, width: number, size: number): [number, number] {
  const [short, long] = width <= height ? [width, height] : [height, width];
  const newLong = Math.trunc((size * long) / short);
  return width <= height ? [newLong, size] : [size, newLong];
}

/** transformers' center_crop on an HWC uint8 image (zero padding when the image is smaller than the crop). */
export function centerCropHwc(img: RgbImage, cropHeight: number, cropWidth: number): RgbImage {
  const { width: w, height: h } = img;
  let top = Math.floor((h - cropHeight) / 2), left = Math.floor((w - cropWidth) / 2);
  let src = img;
  if (top < 0 || left < 0 || top + cropHeight > h || left + cropWidth > w) {
    const nh = Math.max(cropHeight, h), nw = Math.max(cropWidth, w);
    const topPad = Math.ceil((nh - h) / 2), leftPad = Math.ceil((nw - w) / 2);
    const rgb = new Uint8Array(nh * nw * 3);
    for (let y = 0; y < h; y++) rgb.set(img.rgb.subarray(y * w * 3, (y + 1) * w * 3), ((y + topPad) * nw + leftPad) * 3);
    src = { width: nw, height: nh, rgb };
    top += topPad;
    left += leftPad;
    // transformers then slices [max(0, top), min(nh, bottom)); with the padding above the window is in range.
    top = Math.max(0, top);
    left = Math.max(0, left);
  }
  const out = new Uint8Array(cropHeight * cropWidth * 3);
  for (let y = 0; y < cropHeight; y++) {
    const s = ((y + top) * src.width + left) * 3;
    out.set(src.rgb.subarray(s, s + cropWidth * 3), y * cropWidth * 3);
  }
  return { width: cropWidth, height: cropHeight, rgb: out };
}

export interface ClipProcessorSteps {
  /** After the resize, before the crop (HWC uint8). */
  resized: RgbImage;
  /** The model input [3, h, w]. */
  pixelValues: ChwImage;
}

/** CLIPImageProcessor on one 8-bit RGB image, keeping the resized uint8 image. */
export function clipImageProcessorSteps(img: RgbImage, cfg: ClipImageProcessorConfig): ClipProcessorSteps {
  let resized = img;
  if (cfg.doResize) {
    const [h, w] = shortestEdgeSize(img.height, img.width, cfg.shortestEdge);
    resized = h === img.height && w === img.width ? img : pilResizeBicubic(img, w, h);
  }
  const cropped = cfg.doCenterCrop ? centerCropHwc(resized, cfg.cropHeight, cfg.cropWidth) : resized;
  const { width, height, rgb } = cropped;
  const plane = width * height;
  const data = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const m = f32(cfg.mean[c]!), s = f32(cfg.std[c]!);
    for (let p = 0; p < plane; p++) {
      // rescale: float64 product, cast to float32; normalize: float32 (x - mean) / std.
      let v = cfg.doRescale ? f32(rgb[p * 3 + c]! * cfg.rescaleFactor) : rgb[p * 3 + c]!;
      if (cfg.doNormalize) v = f32(f32(v - m) / s);
      data[c * plane + p] = v;
    }
  }
  return { resized, pixelValues: { data, channels: 3, height, width } };
}

/** Stacks equal-sized CHW images into one [B, C, H, W] array. */
export function stackChw(images: readonly ChwImage[]): { data: Float32Array; shape: [number, number, number, number] } {
  if (images.length === 0) throw new Error('stackChw: no images');
  const { channels, height, width } = images[0]!;
  const n = channels * height * width;
  const data = new Float32Array(images.length * n);
  images.forEach((im, i) => {
    if (im.channels !== channels || im.height !== height || im.width !== width) {
      throw new Error(`stackChw: image ${i} is [${im.channels}, ${im.height}, ${im.width}], image 0 is [${channels}, ${height}, ${width}]`);
    }
    data.set(im.data, i * n);
  });
  return { data, shape: [images.length, channels, height, width] };
}
