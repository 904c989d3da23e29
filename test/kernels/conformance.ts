// The conformance part every kernel test file shares: run the family's cases on a device (the
// adapter's kernels, a variant or layout forced with withOverrides, the CPU backend) against the
// CPU float64 reference, then one test per case asserting that it passed.
import { beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import { type CaseResult, type OpCase, runConformance } from '../../src/device/conformance.ts';
import type { Device } from '../../src/device/device.ts';

/**
 * One device under test: its name in the titles, its cases, and a function that returns it. A
 * function because the devices are made in the file's beforeAll, after the tests are registered.
 */
export type Suite = readonly [name: string, cases: OpCase[], device: () => Device];

/**
 * Asserts that case `name` passed on `device`, in every dtype it ran in (one result each). The
 * message names the device, op, case, dtype and the error against the tolerance, so a failure says
 * what broke and by how much; a case with no result fails too, rather than passing silently.
 */
export function expectPassed(device: string, results: CaseResult[], name: string): void {
  const mine = results.filter((r) => r.name === name);
  expect(mine.length, `${device} "${name}": no conformance result`).toBeGreaterThan(0);
  for (const r of mine) {
    const what = `${device} ${r.op} "${r.name}" ${r.dtype}: rel L2 ${r.errors.map((e) => e.toExponential(2)).join(', ')} `
      + `(tol ${r.tol}), max abs ${r.maxAbsError.toExponential(2)}`;
    console.log(what);
    expect(r.note, what).toBeUndefined();
    expect(r.pass, what).toBe(true);
  }
}

/**
 * Registers `<name> against the f64 reference > <case name>` for each suite. Each suite runs its
 * cases once, in its describe's beforeAll (so after the file's beforeAll has made the devices), and
 * each test checks its case's results.
 */
export function describeConformance(suites: Suite[]): void {
  for (const [name, cases, device] of suites) {
    describe(`${name} against the f64 reference`, () => {
      let results: CaseResult[] = [];
      beforeAll(async () => {
        // The reference is the CPU backend, which runConformance has compute in float64.
        results = await runConformance(device(), new CpuDevice(), cases);
      });
      test.each(cases.map((c) => c.name))('%s', (caseName) => expectPassed(name, results, caseName));
    });
  }
}
