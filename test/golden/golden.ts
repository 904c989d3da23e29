// Where the PyTorch golden vectors live and how a test finds its cases. Every test reads shapes,
// configs, seeds and tolerances from the case's own files, never from constants copied from the
// visible cases: the same tests run on other cases generated the same way. Also the setup and
// checks the golden tests share (test/safetensors.test.ts reuses the readers' refusal check).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device } from '../../src/device/device.ts';
import { readSafetensors, SafetensorsError, SafetensorsReader, stToFloat64, type StFile, stTensor } from '../../src/io/safetensors.ts';

export const GOLDEN_DIR = resolve(process.env.GOLDEN_DIR ?? join(import.meta.dirname, '../../../shared/golden'));

/** Case folders under GOLDEN_DIR whose name starts with `family` (e.g. 'torch_ops', 'torch_ops_big'). */
export function goldenCases(family: string): string[] {
  if (!existsSync(GOLDEN_DIR)) return [];
  return readdirSync(GOLDEN_DIR)
    .filter((name) => name.startsWith(family) && statSync(join(GOLDEN_DIR, name)).isDirectory())
    .sort()
    .map((name) => join(GOLDEN_DIR, name));
}

/** goldenCases(family), with a test that fails when there are none (a missing GOLDEN_DIR must not pass silently). */
export function requiredGoldenCases(family: string): string[] {
  const cases = goldenCases(family);
  it(`golden ${family} cases exist`, () => {
    expect(cases, `no ${family} cases under ${GOLDEN_DIR}`).not.toEqual([]);
  });
  return cases;
}

/**
 * A CPU reference and a WebGPU device under the keys 'cpu' and 'webgpu', created before the calling
 * file's tests and the WebGPU one destroyed after them. WebGPU is imported here, not at the top,
 * so that the golden tests that need no device do not load Dawn's native module.
 */
export function cpuAndWebGpuDevices(): Record<string, Device> {
  const devices: Record<string, Device> = {};
  beforeAll(async () => {
    const { WebGPUDevice } = await import('../../src/device/webgpu/device.ts');
    devices.cpu = new CpuDevice();
    devices.webgpu = await WebGPUDevice.create();
  });
  afterAll(() => devices.webgpu?.destroy());
  return devices;
}

/** A safetensors tensor's shape and values as float64. */
export function tensorOf(st: StFile, name: string): { shape: number[]; data: Float64Array } {
  const t = stTensor(st, name);
  return { shape: t.shape, data: stToFloat64(t) };
}

export function readJson<T = any>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

/**
 * Our uint8 images (HWC each) equal the reference bytes [B, H, W, 3]; a level may differ by one only
 * where the float value before rounding, clamp(x / 2 + 0.5, 0, 1) * 255 with x [B, 3, H, W], lies
 * within 1e-4 of a .5 boundary.
 */
export function expectSameUint8Images(got: Uint8Array[], want: Uint8Array, x: Float32Array, shape: readonly number[]): void {
  const [, , height, width] = shape as [number, number, number, number];
  const plane = height * width;
  const unexplained: string[] = [];
  got.forEach((image, b) => {
    for (let p = 0; p < plane; p++) {
      for (let c = 0; c < 3; c++) {
        const ours = image[p * 3 + c]!, theirs = want[(b * plane + p) * 3 + c]!;
        if (ours === theirs) continue;
        const scaled = Math.min(1, Math.max(0, x[(b * 3 + c) * plane + p]! / 2 + 0.5)) * 255;
        const nearHalf = Math.abs(scaled - Math.floor(scaled) - 0.5) < 1e-4;
        if (!nearHalf || Math.abs(ours - theirs) > 1) unexplained.push(`image ${b} pixel ${p} channel ${c}: ${ours} vs ${theirs} (${scaled})`);
      }
    }
  });
  expect(unexplained).toEqual([]);
}

/** ||got - want|| / ||want|| (the absolute L2 norm when want is all zeros); lengths must agree. */
export function relL2(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} vs ${want.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i]! - want[i]!) ** 2;
    den += want[i]! ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** The largest |got - want|; lengths must agree. */
export function maxAbs(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} vs ${want.length}`);
  let m = 0;
  for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(got[i]! - want[i]!));
  return m;
}

/**
 * Both safetensors readers, the eager readSafetensors and the lazy SafetensorsReader.open, refuse
 * `path` with a SafetensorsError whose message starts with the path (and matches `message` when
 * given: the golden cases' reference errors are worded by another implementation).
 */
export function expectBothReadersRefuse(path: string, message?: RegExp): void {
  for (const open of [readSafetensors, SafetensorsReader.open]) {
    let error: unknown;
    try {
      open(path);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(SafetensorsError);
    expect((error as Error).message.startsWith(`${path}: `)).toBe(true);
    if (message) expect((error as Error).message).toMatch(message);
  }
}
