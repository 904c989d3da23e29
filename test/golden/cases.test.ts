// Reports every case folder under GOLDEN_DIR: which test file checks it, or why none does yet.
// A folder nobody understands is reported as skipped with its reason, never silently passed.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { GOLDEN_DIR } from './golden.ts';

/** Case family (folder name prefix) -> the test that checks it, or the reason it is not checked yet. */
const COVERAGE: Record<string, { test: string } | { pending: string }> = {
  torch_ops: { test: 'torch_ops.test.ts (forward entries; gradients are checked op by op in test/autograd.test.ts)' },
  rng_torch_cpu: { test: 'rng.test.ts' },
  safetensors_files: { test: 'safetensors.test.ts' },
  torch_pt_files: { test: 'torch_pt.test.ts' },
  tokenizer: { test: 'tokenizer.test.ts' },
  vae_decoder: { test: 'vae.test.ts (and postprocess.test.ts for the 8-bit images)' },
  vae_tiled: { test: 'vae.test.ts' },
  flux_transformer: { test: 'flux.test.ts' },
  clip_reward: { test: 'clip_reward.test.ts' },
  pickscore_reward: { test: 'pickscore.test.ts' },
  grpo_math: { test: 'grpo_optim.test.ts (optimiser, clipping, lr schedule, EMA; flux_step, advantages/loss and perms come with the trainer)' },
  flux_lora: { test: 'flux_lora.test.ts' },
  grpo_step: { pending: 'the GRPO trainer step is not built yet' },
  text_encoders: { pending: 'the T5/CLIP-L prompt encoders are not built yet (their token ids are checked in tokenizer.test.ts)' },
};

const folders = existsSync(GOLDEN_DIR) ? readdirSync(GOLDEN_DIR).filter((f) => statSync(join(GOLDEN_DIR, f)).isDirectory()).sort() : [];

test(`GOLDEN_DIR ${GOLDEN_DIR} exists and holds case folders`, () => {
  expect(folders.length).toBeGreaterThan(0);
});

for (const folder of folders) {
  const family = Object.keys(COVERAGE).filter((k) => folder.startsWith(k)).sort((a, b) => b.length - a.length)[0];
  const entry = family ? COVERAGE[family]! : { pending: 'no test understands this case folder' };
  if ('test' in entry) test(`${folder}: checked by ${entry.test}`, () => expect(existsSync(join(import.meta.dirname, entry.test.split(' ')[0]!))).toBe(true));
  else test.skip(`${folder}: ${entry.pending}`, () => {});
}
