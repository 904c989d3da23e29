// `flux-grpo verify-device`: runs every op of a backend against the CPU float64 reference on random
// inputs and prints a table per op (or one JSON object). Exit code 1 when any op fails. This is what
// a user runs to verify a new backend (the NPU) against the reference.
import { CpuDevice } from '../device/cpu/device.ts';
import { type CaseResult, runConformance } from '../device/conformance.ts';
import { createDevice, DEVICE_KINDS } from '../device/registry.ts';
import { ALL_CASES } from '../kernels/cases.ts';
import type { Command } from './args.ts';

interface OpSummary {
  op: string;
  shapes: string[];
  cases: number;
  failed: number;
  skipped: number;
  maxError: number;
  medianError: number;
  pass: boolean;
}

export function summarise(results: CaseResult[]): OpSummary[] {
  const byOp = new Map<string, CaseResult[]>();
  for (const r of results) byOp.set(r.op, [...(byOp.get(r.op) ?? []), r]);
  return [...byOp].map(([op, rs]) => {
    const ran = rs.filter((r) => !r.note?.startsWith('unsupported'));
    const errs = ran.flatMap((r) => r.errors).sort((a, b) => a - b);
    return {
      op,
      shapes: rs.map((r) => `${r.name} ${r.dtype}`),
      cases: rs.length,
      failed: rs.filter((r) => !r.pass).length,
      skipped: rs.length - ran.length,
      maxError: errs.at(-1) ?? 0,
      medianError: errs[Math.floor(errs.length / 2)] ?? 0,
      pass: rs.every((r) => r.pass),
    };
  });
}

const fmt = (x: number) => (Number.isFinite(x) ? x.toExponential(2) : String(x));

export const verifyDevice: Command = {
  name: 'verify-device',
  summary: 'check every op of a device against the CPU float64 reference on random inputs',
  flags: {
    device: { help: `device to verify: ${DEVICE_KINDS.join(' | ')}`, default: 'webgpu' },
    adapter: { help: 'WebGPU adapter name substring (Dawn adapter= option)' },
    backend: { help: 'Dawn backend (vulkan, opengl, ...)' },
    ops: { help: 'comma-separated ops to check (default: all)' },
    seed: { help: 'seed of the random inputs', default: '1' },
    json: { help: 'print one JSON object instead of tables', boolean: true },
    verbose: { help: 'print every case, not only the per-op summary', boolean: true },
  },
  async run(flags) {
    const dev = await createDevice(String(flags.device), { adapter: flags.adapter as string | undefined, backend: flags.backend as string | undefined });
    const only = flags.ops ? new Set(String(flags.ops).split(',')) : null;
    const cases = ALL_CASES.filter((c) => !only || only.has(c.op));
    if (cases.length === 0) throw new Error(`--ops ${flags.ops}: no such ops (known: ${[...new Set(ALL_CASES.map((c) => c.op))].join(', ')})`);
    const t0 = performance.now();
    const results = await runConformance(dev, new CpuDevice(), cases, Number(flags.seed));
    const seconds = (performance.now() - t0) / 1000;
    const ops = summarise(results);
    const pass = ops.every((o) => o.pass);
    if (flags.json) {
      const json = {
        device: dev.name,
        pass,
        seconds,
        ops: Object.fromEntries(ops.map((o) => [o.op, { shapes: o.shapes, maxError: o.maxError, pass: o.pass }])),
        failures: results.filter((r) => !r.pass),
      };
      console.log(JSON.stringify(json, null, 2));
    } else {
      console.log(`verify-device: ${dev.name}, ${results.length} cases against the CPU float64 reference (${seconds.toFixed(1)} s)\n`);
      console.log(`${'op'.padEnd(20)}${'cases'.padStart(6)}${'skipped'.padStart(9)}${'max err'.padStart(11)}${'median'.padStart(11)}  result`);
      for (const o of ops) {
        console.log(`${o.op.padEnd(20)}${String(o.cases).padStart(6)}${String(o.skipped).padStart(9)}${fmt(o.maxError).padStart(11)}${fmt(o.medianError).padStart(11)}  ${o.pass ? 'pass' : `FAIL (${o.failed})`}`);
      }
      const shown = flags.verbose ? results : results.filter((r) => !r.pass);
      if (shown.length) console.log('');
      for (const r of shown) {
        console.log(`${r.pass ? 'ok  ' : 'FAIL'} ${r.name} ${r.dtype}: rel L2 ${r.errors.map(fmt).join(', ')} (tol ${fmt(r.tol)}, max abs ${fmt(r.maxAbsError)})${r.note ? ` ${r.note}` : ''}`);
      }
      console.log(`\n${pass ? 'all ops pass' : 'SOME OPS FAIL'}`);
    }
    dev.destroy();
    return pass ? 0 : 1;
  },
};
