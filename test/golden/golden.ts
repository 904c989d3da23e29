// Where the PyTorch golden vectors live and how a test finds its cases. Every test reads shapes,
// configs, seeds and tolerances from the case's own files, never from constants copied from the
// visible cases: the same tests run on other cases generated the same way.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const GOLDEN_DIR = resolve(process.env.GOLDEN_DIR ?? join(import.meta.dirname, '../../../shared/golden'));

/** Case folders under GOLDEN_DIR whose name starts with `family` (e.g. 'torch_ops', 'torch_ops_big'). */
export function goldenCases(family: string): string[] {
  if (!existsSync(GOLDEN_DIR)) return [];
  return readdirSync(GOLDEN_DIR)
    .filter((name) => name.startsWith(family) && statSync(join(GOLDEN_DIR, name)).isDirectory())
    .sort()
    .map((name) => join(GOLDEN_DIR, name));
}

export function readJson<T = any>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}
