// The flux-grpo commands that need no weights: make-tiny-flux writes a checkpoint that loads back
// (its weights are the generator's, rounded to the storage dtype; config overrides apply), and bad
// flags fail naming the flag.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { CpuDevice } from '../src/device/cpu/device.ts';
import { loadFluxTransformer } from '../src/models/flux/load.ts';
import { randomFluxWeights } from '../src/models/flux/tiny.ts';
import { Generator } from '../src/rng/index.ts';
import { bf16BitsToF32, f32ToBf16Bits } from '../src/tensor/dtype.ts';

const tmp = mkdtempSync(join(tmpdir(), 'flux-cli-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const dev = new CpuDevice();

test('make-tiny-flux: a loadable bf16 checkpoint of the generator\'s weights, with config overrides', async () => {
  const out = join(tmp, 'tiny');
  const config = join(tmp, 'overrides.json');
  writeFileSync(config, JSON.stringify({ num_layers: 1, num_single_layers: 3 }));
  const log = vi.spyOn(console, 'log').mockImplementation(() => {});
  expect(await main(['make-tiny-flux', '--out', out, '--dtype', 'bf16', '--seed', '9', '--config', config])).toBe(0);
  expect(log.mock.calls.flat().join(' ')).toMatch(/1 double \+ 3 single blocks, bf16, seed 9/);
  log.mockRestore();
  const model = loadFluxTransformer(dev, out, { weights: 'bf16' });
  expect([model.p.depth, model.p.depthSingleBlocks]).toEqual([1, 3]);
  const want = randomFluxWeights(model.p, new Generator(9));
  for (const [name, t] of model.parameters()) {
    const rounded = Array.from(want.get(name)!, (v) => bf16BitsToF32(f32ToBf16Bits(v)));
    expect(Array.from(await t.toFloat64()), name).toEqual(rounded);
  }
  model.dispose();
});

test('make-tiny-flux: bad flags are named', async () => {
  await expect(main(['make-tiny-flux', '--dtype', 'f16'])).rejects.toThrow(/--dtype f16: expected f32 or bf16/);
  await expect(main(['make-tiny-flux', '--seed', '-1'])).rejects.toThrow(/--seed -1/);
  await expect(main(['make-tiny-flux', '--config', join(tmp, 'missing.json')])).rejects.toThrow(/--config .*missing.json/);
  await expect(main(['make-tiny-flux', '--layers', '3'])).rejects.toThrow(/unknown flag --layers/);
});
