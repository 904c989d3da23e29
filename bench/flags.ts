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
