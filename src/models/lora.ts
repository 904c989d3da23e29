// LoRA adapters as peft/diffusers define them and DanceGRPO trains them (train_grpo_flux_lora.py:
// LoraConfig(r, lora_alpha, init_lora_weights=True, target_modules=[to_k, to_q, to_v, to_out.0]),
// dropout 0). For a target Linear y = x W^T + b the adapted layer computes
//   y = x W^T + b + scale * (x A^T) B^T,   A [r, in], B [out, r], scale = alpha / r.
// File layout: diffusers' save_lora_weights as DanceGRPO calls it, keys
// `transformer.<module>.lora_A.weight` / `.lora_B.weight`, float32, metadata {format: pt}; the
// lora_config.json beside it is DanceGRPO's ({step, lora_params: {lora_rank, lora_alpha, target_modules}}).
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { noGrad } from '../autograd/tape.ts';
import type { Device } from '../device/device.ts';
import { readSafetensors, stToFloat32, writeSafetensors, type StTensor } from '../io/safetensors.ts';
import { type Generator, rand } from '../rng/index.ts';
import * as T from '../tensor/ops.ts';
import { Tensor } from '../tensor/tensor.ts';

export interface LoraConfig {
  rank: number;
  alpha: number;
  /** peft target_modules: a module matches when its name equals one or ends with `.${target}`. */
  targetModules: string[];
}

/** One adapted Linear: A [r, in], B [out, r] (trainable leaves) and its scale alpha / r. */
export interface LoraPair {
  a: Tensor;
  b: Tensor;
  scale: number;
}

export const LORA_FILE = 'pytorch_lora_weights.safetensors';
export const LORA_CONFIG_FILE = 'lora_config.json';
const PREFIX = 'transformer.';

/** peft's string-list target matching (check_target_module_exists). */
export function matchesTarget(name: string, targets: readonly string[]): boolean {
  return targets.some((t) => name === t || name.endsWith(`.${t}`));
}

/** [module name, [out, in]] of every 2-D `<module>.weight` in a parameter map. */
export function linearModuleShapes(params: ReadonlyMap<string, Tensor>): Map<string, [number, number]> {
  const out = new Map<string, [number, number]>();
  for (const [name, t] of params) {
    if (name.endsWith('.weight') && t.rank === 2) out.set(name.slice(0, -'.weight'.length), [t.shape[0]!, t.shape[1]!]);
  }
  return out;
}

export class LoraAdapters {
  private constructor(
    readonly device: Device,
    readonly config: LoraConfig,
    /** Adapted module name (diffusers name, no `transformer.` prefix) -> its A, B. */
    readonly modules: Map<string, LoraPair>,
  ) {}

  get scale(): number {
    return this.config.alpha / this.config.rank;
  }

  /**
   * New adapters for the Linear modules of `moduleShapes` (name -> [out, in], e.g.
   * linearModuleShapes(model.parameters())) that match the targets, in the map's order: peft's
   * init_lora_weights=True, A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)) drawn
   * from `g`, B = 0.
   */
  static create(dev: Device, moduleShapes: Iterable<readonly [string, readonly number[]]>, cfg: LoraConfig, g: Generator): LoraAdapters {
    if (!(Number.isInteger(cfg.rank) && cfg.rank > 0)) throw new Error(`LoRA: rank must be a positive integer, got ${cfg.rank}`);
    const f32 = Math.fround;
    const modules = new Map<string, LoraPair>();
    for (const [name, shape] of moduleShapes) {
      if (!matchesTarget(name, cfg.targetModules)) continue;
      const [out, inp] = shape as [number, number];
      // torch.nn.init.kaiming_uniform_(a=sqrt(5)) computes the bound in double, in this order.
      const gain = Math.sqrt(2 / (1 + Math.sqrt(5) ** 2));
      const bound = f32(Math.sqrt(3) * (gain / Math.sqrt(inp)));
      // peft builds lora_A = nn.Linear(in, r) and lora_B = nn.Linear(r, out) first, whose own
      // reset_parameters draw (kaiming A, then B) before reset_lora_parameters redraws A: same words.
      rand(g, [cfg.rank, inp], 'f32');
      rand(g, [out, cfg.rank], 'f32');
      const u = rand(g, [cfg.rank, inp], 'f32') as Float32Array;
      const width = f32(bound - -bound);
      // torch uniform_real: x * (to - from) + from, accumulated in double, stored as float32.
      const aVals = u.map((v) => f32(v * width + -bound));
      const a = Tensor.from(dev, aVals, [cfg.rank, inp]);
      const b = Tensor.full(dev, [out, cfg.rank], 0);
      a.requiresGrad = b.requiresGrad = true;
      modules.set(name, { a, b, scale: cfg.alpha / cfg.rank });
    }
    if (modules.size === 0) throw new Error(`LoRA: no module matches target_modules ${JSON.stringify(cfg.targetModules)}`);
    return new LoraAdapters(dev, { ...cfg, targetModules: [...cfg.targetModules] }, modules);
  }

  /**
   * Reads a diffusers/peft adapter file (`[transformer.]<module>.lora_A.weight` [r, in],
   * `.lora_B.weight` [out, r]). Rank from the shapes; alpha and target modules from `opts`, else
   * from a DanceGRPO lora_config.json beside the file, else alpha = rank (scale 1) and the file's
   * module names as targets.
   */
  static load(dev: Device, file: string, opts: { alpha?: number; targetModules?: string[] } = {}): LoraAdapters {
    const st = readSafetensors(file).tensors;
    const pairs = new Map<string, { a?: StTensor; b?: StTensor }>();
    for (const [key, t] of st) {
      const m = /^(?:transformer\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$/.exec(key);
      if (!m) throw new Error(`LoRA ${file}: unexpected tensor ${key}`);
      const entry = pairs.get(m[1]!) ?? {};
      if (m[2] === 'A') entry.a = t;
      else entry.b = t;
      pairs.set(m[1]!, entry);
    }
    let rank = 0;
    for (const [name, { a, b }] of pairs) {
      if (!a || !b) throw new Error(`LoRA ${file}: ${name} lacks lora_${a ? 'B' : 'A'}`);
      if (a.shape.length !== 2 || b.shape.length !== 2 || a.shape[0] !== b.shape[1]) throw new Error(`LoRA ${file}: ${name} has A [${a.shape}], B [${b.shape}]`);
      if (rank && a.shape[0] !== rank) throw new Error(`LoRA ${file}: ${name} has rank ${a.shape[0]}, others ${rank}`);
      rank = a.shape[0]!;
    }
    if (!rank) throw new Error(`LoRA ${file}: no adapter tensors`);
    const cfgPath = join(dirname(file), LORA_CONFIG_FILE);
    const saved = existsSync(cfgPath) ? (JSON.parse(readFileSync(cfgPath, 'utf8')).lora_params ?? {}) : {};
    if (saved.lora_rank !== undefined && saved.lora_rank !== rank) throw new Error(`LoRA ${file}: ${cfgPath} says rank ${saved.lora_rank}, the tensors have ${rank}`);
    const alpha: number = opts.alpha ?? saved.lora_alpha ?? rank;
    const targetModules: string[] = opts.targetModules ?? saved.target_modules ?? [...pairs.keys()];
    const modules = new Map<string, LoraPair>();
    for (const [name, { a, b }] of [...pairs].sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0))) {
      const ta = Tensor.from(dev, stToFloat32(a!), a!.shape);
      const tb = Tensor.from(dev, stToFloat32(b!), b!.shape);
      ta.requiresGrad = tb.requiresGrad = true;
      modules.set(name, { a: ta, b: tb, scale: alpha / rank });
    }
    return new LoraAdapters(dev, { rank, alpha, targetModules }, modules);
  }

  get(name: string): LoraPair | undefined {
    return this.modules.get(name);
  }

  moduleNames(): string[] {
    return [...this.modules.keys()];
  }

  /** The trainable tensors by file key (`transformer.<module>.lora_{A,B}.weight`). */
  parameters(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [name, { a, b }] of this.modules) {
      out.set(`${PREFIX}${name}.lora_A.weight`, a);
      out.set(`${PREFIX}${name}.lora_B.weight`, b);
    }
    return out;
  }

  /** The adapter tensors of modules under `prefix` (e.g. `transformer_blocks.3.`). */
  tensorsUnder(prefix: string): Tensor[] {
    return [...this.modules].filter(([n]) => n.startsWith(prefix)).flatMap(([, p]) => [p.a, p.b]);
  }

  /** Writes the adapter file (float32, diffusers key names; metadata defaults to {format: pt}). */
  async save(file: string, metadata: Record<string, string> = { format: 'pt' }): Promise<void> {
    const tensors = new Map<string, StTensor>();
    for (const [key, t] of this.parameters()) {
      const v = new Float32Array(await t.toFloat64());
      tensors.set(key, { dtype: 'F32', shape: [...t.shape], bytes: new Uint8Array(v.buffer) });
    }
    writeSafetensors(file, tensors, metadata);
  }

  /** Writes DanceGRPO's lora_config.json into `dir` (atomically). */
  saveConfig(dir: string, step = 0): void {
    const cfg = { step, lora_params: { lora_rank: this.config.rank, lora_alpha: this.config.alpha, target_modules: this.config.targetModules } };
    const path = join(dir, LORA_CONFIG_FILE);
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(cfg, null, 4));
    renameSync(tmp, path);
  }

  /** W += scale * B @ A for every adapted module, in place on the device (peft merge_and_unload's weights). */
  merge(params: ReadonlyMap<string, Tensor>): void {
    this.applyDelta(params, 1);
  }

  /** W -= scale * B @ A (undoes merge up to float32 rounding). */
  unmerge(params: ReadonlyMap<string, Tensor>): void {
    this.applyDelta(params, -1);
  }

  private applyDelta(params: ReadonlyMap<string, Tensor>, sign: 1 | -1): void {
    noGrad(() => {
      for (const [name, { a, b, scale }] of this.modules) {
        const w = params.get(`${name}.weight`);
        if (!w) throw new Error(`LoRA merge: no parameter ${name}.weight`);
        if (w.shape[0] !== b.shape[0] || w.shape[1] !== a.shape[1]) throw new Error(`LoRA merge: ${name}.weight is [${w.shape}], adapter is [${b.shape[0]}, ${a.shape[1]}]`);
        const ba = T.matmul(b, a);
        const delta = T.scale(ba, sign * scale);
        // A bf16-stored weight is merged in f32 and rounded once when it is written back.
        const wf = w.dtype === 'f32' ? w : w.to('f32');
        const sum = T.add(wf, delta);
        w.device.copy(sum, w);
        w.markUpdated();
        [ba, delta, sum].forEach((t) => t.dispose());
        if (wf !== w) wf.dispose();
      }
    });
  }

  dispose(): void {
    for (const { a, b } of this.modules.values()) {
      a.grad?.dispose();
      b.grad?.dispose();
      a.grad = b.grad = null;
      a.dispose();
      b.dispose();
    }
    this.modules.clear();
  }
}
