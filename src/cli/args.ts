// A small flag parser: `--name value`, `--name=value`, boolean `--flag`, and --help text per command.

export interface FlagSpec {
  /** Shown in --help. */
  help: string;
  /** Boolean flags take no value. */
  boolean?: boolean;
  default?: string;
}

export interface Command {
  name: string;
  summary: string;
  flags: Record<string, FlagSpec>;
  run(flags: Record<string, string | boolean>): Promise<number>;
}

export function usage(cmd: Command): string {
  const lines = [`flux-grpo ${cmd.name}: ${cmd.summary}`, '', 'flags:'];
  for (const [name, f] of Object.entries(cmd.flags)) {
    lines.push(`  --${name}${f.boolean ? '' : ' VALUE'}`.padEnd(28) + f.help + (f.default !== undefined ? ` (default: ${f.default})` : ''));
  }
  lines.push('  --help'.padEnd(28) + 'show this text');
  return lines.join('\n');
}

/** Parses argv against the command's flags; unknown flags and missing values are errors naming the flag. */
export function parseFlags(cmd: Command, argv: string[]): Record<string, string | boolean> {
  const out: Record<string, string | boolean> = {};
  for (const [name, f] of Object.entries(cmd.flags)) if (f.default !== undefined) out[name] = f.default;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) throw new Error(`${cmd.name}: unexpected argument '${arg}' (see --help)`);
    const [name, inline] = arg.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    if (name === 'help') { out.help = true; continue; }
    const spec = cmd.flags[name];
    if (!spec) throw new Error(`${cmd.name}: unknown flag --${name} (see --help)`);
    if (spec.boolean) { out[name] = true; continue; }
    const value = inline ?? argv[++i];
    if (value === undefined) throw new Error(`${cmd.name}: flag --${name} needs a value`);
    out[name] = value;
  }
  return out;
}
