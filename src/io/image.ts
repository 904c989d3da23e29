// Decoded images to 8-bit pixels exactly as diffusers' VaeImageProcessor.postprocess(output_type='pil') makes them
// (diffusers 0.32.0 image_processor.py): torch `(x / 2 + 0.5).clamp(0, 1)` in float32, then numpy
// `(x * 255).round().astype('uint8')` on the float32 array (numpy rounds half to even).

/** Round half to even, numpy's `round`, for the non-negative values used here. */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 === 1 ? r - 1 : r;
}

/**
 * `x` is a [B, 3, H, W] float32 decode in [-1, 1] (not clamped); returns one HWC RGB Uint8Array per image.
 * Every step is a float32 operation as in torch/numpy: x / 2 is exact, `+ 0.5` and `* 255` are rounded to float32.
 */
export function postprocessToUint8(x: Float32Array, shape: readonly [number, number, number, number]): Uint8Array[] {
  const [batch, channels, height, width] = shape;
  if (channels !== 3 || x.length !== batch * channels * height * width) {
    throw new Error(`postprocessToUint8: expected [B, 3, H, W] float data, got shape [${shape.join(', ')}] with ${x.length} values`);
  }
  const plane = height * width;
  return Array.from({ length: batch }, (_, b) => {
    const out = new Uint8Array(plane * 3);
    for (let c = 0; c < 3; c++) {
      const base = (b * 3 + c) * plane;
      for (let p = 0; p < plane; p++) {
        const v = Math.fround(x[base + p]! / 2 + 0.5);
        // clamp; NaN (a diverged decode) ends as 0, the value numpy's float -> uint8 cast gives on x86.
        const clamped = v > 1 ? 1 : v > 0 ? v : 0;
        out[p * 3 + c] = roundHalfEven(Math.fround(clamped * 255));
      }
    }
    return out;
  });
}
