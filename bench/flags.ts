// Command-line flags of the standalone bench scripts: `--name value`, `--name=value`, or a bare
// `--name` (read as 'true').
export function flag(name: string, fallback?: string): string | undefined {
  const inline = process.argv.find((a) => a.startsWith(`--${name}=`));
  if (inline) return inline.slice(name.length + 3);
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const v = process.argv[i + 1];
  return v === undefined || v.startsWith('--') ? 'true' : v;
}

/** A flag that must be one of `options` (the first is the default); throws naming the flag. */
export function choice<const O extends readonly string[]>(name: string, options: O): O[number] {
  const v = flag(name, options[0])!;
  if (!options.includes(v)) throw new Error(`--${name} ${v}: expected one of ${options.join(', ')}`);
  return v;
}
