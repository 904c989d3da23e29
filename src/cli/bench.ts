// `flux-grpo bench`: the kernel profiler of bench/kernels.bench.ts as a subcommand.
import { runBench } from '../../bench/kernels.bench.ts';
import { DEVICE_KINDS } from '../device/registry.ts';
import type { Command } from './args.ts';

export const bench: Command = {
  name: 'bench',
  summary: 'profile every kernel on a device (median ms, GFLOP/s or GB/s) and matmul against TensorFlow.js',
  flags: {
    device: { help: `device to profile: ${DEVICE_KINDS.join(' | ')}`, default: 'webgpu' },
    adapter: { help: 'WebGPU adapter name substring' },
    json: { help: 'print one JSON object instead of tables', boolean: true },
    quick: { help: 'fewer sizes and repetitions', boolean: true },
  },
  async run(flags) {
    await runBench({ device: String(flags.device), adapter: flags.adapter as string | undefined, json: !!flags.json, quick: !!flags.quick });
    return 0;
  },
};
