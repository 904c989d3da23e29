// Loading and saving FLUX transformer weights.
//
// Accepted checkpoints:
//   - diffusers: a folder with config.json and diffusion_pytorch_model.safetensors, or the sharded
//     diffusion_pytorch_model-0000i-of-0000n.safetensors with diffusion_pytorch_model.safetensors.index.json;
//     a model repository root with a transformer/ folder; or the index / safetensors file itself
//     (config.json beside it).
//   - Black Forest Labs' single file (flux1-dev.safetensors): converted on load (bfl.ts). Its config
//     comes from `opts.config`, a config.json beside it, or the tensor shapes (FLUX.1's RoPE axes).
// Every expected tensor is checked before anything is uploaded: missing and unexpected names, shape
// mismatches and unsupported dtypes are reported together, naming the file.
//
// Precision: F32, BF16 (as FLUX checkpoints ship) and F16 tensors load as float32 by default, or
// with `weights: 'bf16'` keep the linear layers' weights and biases in bf16 (half the memory; the
// matmuls read bf16 and accumulate in f32). RMSNorm scales stay f32 either way (tiny, and the
// norm kernels read f32).
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Device } from '../../device/device.ts';
import {
  SafetensorsReader, ShardedSafetensors, type StTensor, type TensorSource, stToFloat32, writeSafetensors,
} from '../../io/safetensors.ts';
import { fromNumbers } from '../../tensor/dtype.ts';
import { Tensor } from '../../tensor/tensor.ts';
import { bflLayout, bflPrefix, fluxParamsFromBflShapes, isBflLayout, splitBflTensor } from './bfl.ts';
import { FluxTransformer } from './model.ts';
import { type FluxConfig, type FluxParams, fluxConfigFromParams, fluxParameterShapes, fluxParamsFromConfig } from './params.ts';

export const DIFFUSERS_WEIGHTS = 'diffusion_pytorch_model.safetensors';
export const DIFFUSERS_INDEX = 'diffusion_pytorch_model.safetensors.index.json';

const LOADABLE_DTYPES = new Set(['F32', 'BF16', 'F16']);

/** A checkpoint whose tensors do not fit the model: every problem, with the file. */
export class FluxCheckpointError extends Error {
  constructor(readonly file: string, readonly problems: string[]) {
    const shown = problems.length > 200 ? [...problems.slice(0, 200), `... and ${problems.length - 200} more`] : problems;
    super(`${file}: the FLUX transformer checkpoint does not fit the model (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n  ${shown.join('\n  ')}`);
    this.name = 'FluxCheckpointError';
  }
}

export interface FluxCheckpointOptions {
  /** A diffusers config.json object or its path; overrides the config found beside the weights. */
  config?: FluxConfig | string;
}

export interface FluxLoadOptions extends FluxCheckpointOptions {
  /**
   * Storage of the linear layers' weights and biases: 'f32' (default; what training updates) or
   * 'bf16' (as checkpoints ship; inference and LoRA on a frozen base). Values already in BF16 are
   * kept bit for bit; F32 and F16 round to nearest even.
   */
  weights?: 'f32' | 'bf16';
}

/** An opened checkpoint: its config and layout, tensors not read yet. */
export interface FluxCheckpoint {
  params: FluxParams;
  layout: 'diffusers' | 'bfl';
  /** The file named in errors: the safetensors file or the shard index. */
  file: string;
  source: TensorSource;
  /** Prefix of every tensor name (BFL files from ComfyUI use `model.diffusion_model.`). */
  prefix: string;
}

function readConfig(c: FluxConfig | string): FluxConfig {
  return typeof c === 'string' ? (JSON.parse(readFileSync(c, 'utf8')) as FluxConfig) : c;
}

/** Finds and opens the weights; nothing is read beyond the safetensors headers. */
export function openFluxCheckpoint(path: string, opts: FluxCheckpointOptions = {}): FluxCheckpoint {
  if (!existsSync(path)) throw new Error(`${path}: no such file or folder`);
  if (statSync(path).isDirectory()) {
    if (!existsSync(join(path, 'config.json')) && existsSync(join(path, 'transformer', 'config.json'))) return openFluxCheckpoint(join(path, 'transformer'), opts);
    if (existsSync(join(path, DIFFUSERS_INDEX))) return openFluxCheckpoint(join(path, DIFFUSERS_INDEX), opts);
    if (existsSync(join(path, DIFFUSERS_WEIGHTS))) return openFluxCheckpoint(join(path, DIFFUSERS_WEIGHTS), opts);
    const found = readdirSync(path).filter((f) => f.endsWith('.safetensors') || f.endsWith('.json'));
    throw new Error(`${path}: no ${DIFFUSERS_WEIGHTS} or ${DIFFUSERS_INDEX} here (found: ${found.join(', ') || 'nothing'})`);
  }
  const source: TensorSource = path.endsWith('.index.json') ? ShardedSafetensors.open(path) : SafetensorsReader.open(path);
  try {
    const names = source.names();
    const besides = join(dirname(path), 'config.json');
    const config = opts.config ? readConfig(opts.config) : existsSync(besides) ? readConfig(besides) : null;
    if (isBflLayout(names)) {
      const prefix = bflPrefix(names);
      const params = config ? fluxParamsFromConfig(config) : fluxParamsFromBflShapes((n) => (source.has(n) ? source.info(n).shape : undefined), names);
      return { params, layout: 'bfl', file: path, source, prefix };
    }
    if (!config) throw new Error(`${path}: diffusers-layout weights need a config.json (none beside the file and none given)`);
    return { params: fluxParamsFromConfig(config), layout: 'diffusers', file: path, source, prefix: '' };
  } catch (err) {
    source.close();
    throw err;
  }
}

/** The tensor names and shapes the checkpoint must hold, in its own naming. */
function expectedTensors(ck: FluxCheckpoint): [string, number[]][] {
  if (ck.layout === 'diffusers') return fluxParameterShapes(ck.params);
  return [...bflLayout(ck.params)].map(([name, e]) => [ck.prefix + name, e.shape]);
}

/** Every missing, unexpected, misshapen or unloadable tensor; throws FluxCheckpointError if any. */
export function checkFluxCheckpoint(ck: FluxCheckpoint): void {
  const problems: string[] = [];
  const want = expectedTensors(ck);
  const wanted = new Set(want.map(([n]) => n));
  for (const [name, shape] of want) {
    if (!ck.source.has(name)) {
      problems.push(`missing ${name} [${shape}]`);
      continue;
    }
    const info = ck.source.info(name);
    if (info.shape.join(',') !== shape.join(',')) problems.push(`${name}: shape [${info.shape}] in ${info.file}, the config needs [${shape}]`);
    if (!LOADABLE_DTYPES.has(info.dtype)) problems.push(`${name}: dtype ${info.dtype} is not loadable (F32, BF16, F16)`);
  }
  for (const name of ck.source.names()) if (!wanted.has(name)) problems.push(`unexpected ${name} [${ck.source.info(name).shape}]`);
  if (problems.length) throw new FluxCheckpointError(ck.file, problems);
}

/** Float32 values of a F32 / BF16 / F16 tensor. */
function toF32(t: StTensor): Float32Array {
  if (t.dtype !== 'BF16') return stToFloat32(t);
  const n = t.bytes.byteLength / 2;
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = (t.bytes[2 * i]! | (t.bytes[2 * i + 1]! << 8)) << 16;
  return new Float32Array(out.buffer);
}

/**
 * Reads the checkpoint's tensors in diffusers naming, one source tensor at a time (a fused BFL
 * tensor is split as it is read), calling `use` with each.
 */
export function forEachFluxTensor(ck: FluxCheckpoint, use: (name: string, t: StTensor) => void): void {
  if (ck.layout === 'diffusers') {
    for (const [name] of fluxParameterShapes(ck.params)) use(name, ck.source.read(name));
    return;
  }
  for (const [key, entry] of bflLayout(ck.params)) {
    for (const [name, part] of splitBflTensor(entry, ck.source.read(ck.prefix + key))) use(name, part);
  }
}

/** bf16 bits of a F32 / BF16 / F16 tensor (BF16 copied as is). */
function toBf16(t: StTensor): Uint16Array {
  if (t.dtype === 'BF16') return new Uint16Array(t.bytes.slice().buffer);
  return fromNumbers('bf16', toF32(t)) as Uint16Array;
}

/** Whether a parameter is an RMSNorm scale (every other 1-D FLUX tensor is a linear bias). */
const isNormScale = (name: string, shape: readonly number[]) => shape.length === 1 && name.endsWith('.weight');

/** Loads a FLUX transformer onto a device (float32 parameters, or bf16 linears: see FluxLoadOptions). */
export function loadFluxTransformer(dev: Device, path: string, opts: FluxLoadOptions = {}): FluxTransformer {
  const ck = openFluxCheckpoint(path, opts);
  const params = new Map<string, Tensor>();
  const bf16 = opts.weights === 'bf16';
  try {
    checkFluxCheckpoint(ck);
    forEachFluxTensor(ck, (name, t) => {
      const tensor = bf16 && !isNormScale(name, t.shape) ? Tensor.from(dev, toBf16(t), t.shape, 'bf16') : Tensor.from(dev, toF32(t), t.shape, 'f32');
      params.set(name, tensor);
    });
    return new FluxTransformer(dev, ck.params, params);
  } catch (err) {
    for (const t of params.values()) t.dispose();
    throw err;
  } finally {
    ck.source.close();
  }
}

// ---- writing ---------------------------------------------------------------------------------------

export type WeightDType = 'F32' | 'BF16';

export interface WriteFluxOptions {
  /** Storage dtype (BF16 rounds to nearest even, as torch's .to(bfloat16)). Default F32. */
  dtype?: WeightDType;
  /** Split into shards of at most this many bytes with an index, as save_pretrained(max_shard_size) does. */
  maxShardBytes?: number;
}

/** Host float32 values -> a safetensors tensor of `dtype`. */
export function stTensorFromF32(values: Float32Array, shape: number[], dtype: WeightDType = 'F32'): StTensor {
  if (dtype === 'F32') return { dtype, shape, bytes: new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength)) };
  const bits = fromNumbers('bf16', values) as Uint16Array;
  return { dtype, shape, bytes: new Uint8Array(bits.buffer) };
}

/** Host float32 weights (diffusers names) -> safetensors tensors, shapes from the params. */
export function fluxStateDict(p: FluxParams, weights: ReadonlyMap<string, Float32Array>, dtype: WeightDType = 'F32'): Map<string, StTensor> {
  const out = new Map<string, StTensor>();
  for (const [name, shape] of fluxParameterShapes(p)) {
    const v = weights.get(name);
    if (!v) throw new Error(`fluxStateDict: no weights for ${name}`);
    if (v.length !== shape.reduce((a, b) => a * b, 1)) throw new Error(`fluxStateDict: ${name} has ${v.length} values for shape [${shape}]`);
    out.set(name, stTensorFromF32(v, shape, dtype));
  }
  return out;
}

/**
 * Writes a diffusers-layout transformer folder: config.json and diffusion_pytorch_model.safetensors
 * (or shards + index). Tensors are diffusers-named safetensors tensors (see fluxStateDict).
 */
export function writeFluxCheckpoint(dir: string, p: FluxParams, tensors: ReadonlyMap<string, StTensor>, opts: WriteFluxOptions = {}): void {
  mkdirSync(dir, { recursive: true });
  const names = fluxParameterShapes(p).map(([n]) => n);
  for (const n of names) if (!tensors.has(n)) throw new Error(`writeFluxCheckpoint: no tensor ${n}`);
  const metadata = { format: 'pt' };
  const max = opts.maxShardBytes ?? Infinity;
  const shards: Map<string, StTensor>[] = [new Map()];
  let size = 0;
  for (const n of names) {
    const t = tensors.get(n)!;
    if (size > 0 && size + t.bytes.byteLength > max) {
      shards.push(new Map());
      size = 0;
    }
    shards.at(-1)!.set(n, t);
    size += t.bytes.byteLength;
  }
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(fluxConfigFromParams(p), null, 2)}\n`);
  if (shards.length === 1) {
    writeSafetensors(join(dir, DIFFUSERS_WEIGHTS), shards[0]!, metadata);
    return;
  }
  const weightMap: Record<string, string> = {};
  let total = 0;
  shards.forEach((shard, i) => {
    const file = `diffusion_pytorch_model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
    writeSafetensors(join(dir, file), shard, metadata);
    for (const [n, t] of shard) {
      weightMap[n] = file;
      total += t.bytes.byteLength;
    }
  });
  writeFileSync(join(dir, DIFFUSERS_INDEX), `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`);
}

/** Reads a model's parameters back to the host (float32, diffusers names). */
export async function fluxWeightsToHost(model: FluxTransformer): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, t] of model.parameters()) out.set(name, Float32Array.from(await t.toFloat64()));
  return out;
}

/** Saves a model as a diffusers-layout folder. */
export async function saveFluxTransformer(model: FluxTransformer, dir: string, opts: WriteFluxOptions = {}): Promise<void> {
  writeFluxCheckpoint(dir, model.p, fluxStateDict(model.p, await fluxWeightsToHost(model), opts.dtype), opts);
}
