// The `flux-grpo` executable: one command per job (train, sample, score, report, align join later).
import { type Command, parseFlags, usage } from './args.ts';
import { bench } from './bench.ts';
import { makeTinyFlux } from './make_tiny_flux.ts';
import { score } from './score.ts';
import { verifyDevice } from './verify_device.ts';

const COMMANDS: Command[] = [verifyDevice, bench, score, makeTinyFlux];

function help(): string {
  return [
    'flux-grpo: FLUX GRPO (DanceGRPO) fine-tuning on WebGPU, with a CPU reference',
    '',
    'usage: flux-grpo <command> [flags]     (flux-grpo <command> --help for its flags)',
    '',
    'commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(16)}${c.summary}`),
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(help());
    return name ? 0 : 2;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    console.error(`flux-grpo: unknown command '${name}'\n\n${help()}`);
    return 2;
  }
  const flags = parseFlags(cmd, rest);
  if (flags.help) {
    console.log(usage(cmd));
    return 0;
  }
  return cmd.run(flags);
}
