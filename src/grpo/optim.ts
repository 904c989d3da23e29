// Training primitives as DanceGRPO's train_grpo_flux.py uses them, each reproducing its PyTorch /
// diffusers counterpart's float32 arithmetic:
//   AdamW         torch.optim.AdamW (torch 2.6, single-tensor path): one device.adamw dispatch per
//                 parameter tensor (a flat multi-tensor buffer would cut dispatches; a later step)
//   clipGradNorm  torch.nn.utils.clip_grad_norm_ (2-norm)
//   getScheduler  diffusers.optimization.get_scheduler: constant, constant_with_warmup, linear, cosine
//                 as torch's LambdaLR (lr = base_lr * lambda(step), the first step at lambda(0))
//   EMA           DanceGRPO's FSDP_EMA: ema = decay * ema + (1 - decay) * param
// Host scalars are python doubles in the reference; where torch turns one into a float32 operand of a
// tensor op we pass Math.fround of it, so the CPU backend (which computes in float64 and rounds once)
// gives torch's bits too.
import * as T from '../tensor/ops.ts';
import { Tensor } from '../tensor/tensor.ts';

// ---- AdamW ------------------------------------------------------------------------------------------

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  /** torch's default 1e-2; DanceGRPO passes 1e-4. */
  weightDecay?: number;
}

/** A parameter's optimizer state on the host, as torch's state_dict holds it. */
export interface AdamWParamState { step: number; expAvg: Float32Array; expAvgSq: Float32Array }

export interface AdamWStateDict {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  /** One entry per parameter, in order; null for a parameter that has not been stepped yet. */
  state: (AdamWParamState | null)[];
}

interface ParamState { step: number; m: Tensor; v: Tensor }

export class AdamW {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  private state: (ParamState | null)[];

  /** params: dense f32 tensors, updated in place; their `.grad` is read by step(). */
  constructor(readonly params: readonly Tensor[], opts: AdamWOptions = {}) {
    this.lr = opts.lr ?? 1e-3;
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 1e-2;
    this.state = params.map(() => null);
  }

  /**
   * One step of every parameter that has a gradient; as in torch, a parameter without one is
   * skipped and its step count does not advance. m and v start as zeros at a parameter's first step.
   */
  step(): void {
    const [beta1, beta2] = this.betas;
    this.params.forEach((p, i) => {
      if (!p.grad) return;
      if (p.dtype !== 'f32') throw new Error(`AdamW: parameter ${i} [${p.shape}] is ${p.dtype}; AdamW updates f32 parameters (train bf16-stored weights through f32 masters: load them as f32 and compute in bf16)`);
      const s = (this.state[i] ??= { step: 0, m: Tensor.full(p.device, p.shape, 0), v: Tensor.full(p.device, p.shape, 0) });
      s.step++;
      const g = p.grad.contiguous();
      try {
        // Bias corrections in float64 on the host, as torch's python floats.
        p.device.adamw(p, g, s.m, s.v, {
          lr: this.lr, beta1, beta2, eps: this.eps, weightDecay: this.weightDecay,
          stepSize: this.lr / (1 - beta1 ** s.step), bc2Sqrt: Math.sqrt(1 - beta2 ** s.step),
        });
        p.markUpdated();
      } finally {
        g.dispose();
      }
    });
  }

  /** Drops every gradient (torch's zero_grad(set_to_none=True)). */
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Hyperparameters and per-parameter state as host arrays, for checkpoints. */
  async stateDict(): Promise<AdamWStateDict> {
    const state: (AdamWParamState | null)[] = [];
    for (const s of this.state) {
      state.push(s && { step: s.step, expAvg: (await s.m.toHost()) as Float32Array, expAvgSq: (await s.v.toHost()) as Float32Array });
    }
    return { lr: this.lr, betas: [this.betas[0], this.betas[1]], eps: this.eps, weightDecay: this.weightDecay, state };
  }

  /** Restores what stateDict() returned (for the same parameters, in the same order). */
  loadStateDict(sd: AdamWStateDict): void {
    if (sd.state.length !== this.params.length) throw new Error(`AdamW.loadStateDict: ${sd.state.length} parameter states for ${this.params.length} parameters`);
    sd.state.forEach((s, i) => {
      const n = this.params[i]!.numel;
      if (s && (s.expAvg.length !== n || s.expAvgSq.length !== n)) {
        throw new Error(`AdamW.loadStateDict: parameter ${i} [${this.params[i]!.shape}] has ${n} elements, its state ${s.expAvg.length} and ${s.expAvgSq.length}`);
      }
    });
    this.disposeState();
    this.state = sd.state.map((s, i) => {
      if (!s) return null;
      const p = this.params[i]!;
      return { step: s.step, m: Tensor.from(p.device, s.expAvg, p.shape, 'f32'), v: Tensor.from(p.device, s.expAvgSq, p.shape, 'f32') };
    });
    this.lr = sd.lr;
    this.betas = [sd.betas[0], sd.betas[1]];
    this.eps = sd.eps;
    this.weightDecay = sd.weightDecay;
  }

  /** Frees the moment buffers (the parameters and their gradients stay the caller's). */
  dispose(): void {
    this.disposeState();
    this.state = this.params.map(() => null);
  }

  private disposeState(): void {
    for (const s of this.state) {
      s?.m.dispose();
      s?.v.dispose();
    }
  }
}

// ---- gradient clipping ------------------------------------------------------------------------------

/** sqrt(sum(g^2)) as a [1] tensor, summed over rows first so a big tensor spreads over the device. */
function norm2(g: Tensor): Tensor {
  const sq = T.mul(g, g);
  const rows = sq.reshape(g.rank >= 2 ? [g.shape[0]!, -1] : [1, -1]);
  const partial = T.sum(rows, 1);
  const total = T.sum(partial, 0, true);
  const out = T.sqrt(total);
  [sq, rows, partial, total].forEach((t) => t.dispose());
  return out;
}

/**
 * torch.nn.utils.clip_grad_norm_(params, maxNorm) with the 2-norm: the total norm is the norm of the
 * per-tensor norms; every gradient is then multiplied by min(1, maxNorm / (total + 1e-6)) (always,
 * no branch: a coefficient of 1 leaves it unchanged). Returns the total norm before clipping, read
 * back once. The coefficient follows torch's float32 ops: (total + 1e-6).reciprocal() * maxNorm.
 */
export async function clipGradNorm(params: readonly Tensor[], maxNorm: number): Promise<number> {
  const withGrad = params.filter((p) => p.grad && p.grad.numel > 0);
  if (withGrad.length === 0) return 0;
  const norms = withGrad.map((p) => norm2(p.grad!));
  const stacked = T.cat(norms, 0);
  const total = norm2(stacked);
  [...norms, stacked].forEach((t) => t.dispose());
  const value = (await total.toFloat64())[0]!;
  total.dispose();
  const f = Math.fround;
  const coef = Math.min(f(f(1 / f(value + f(1e-6))) * f(maxNorm)), 1);
  for (const p of withGrad) {
    const clipped = T.scale(p.grad!, coef);
    p.grad!.dispose();
    p.grad = clipped;
  }
  return value;
}

// ---- learning-rate schedules ------------------------------------------------------------------------

export type ScheduleName = 'constant' | 'constant_with_warmup' | 'linear' | 'cosine';

export interface ScheduleOptions { warmupSteps?: number; trainingSteps?: number }

/** diffusers' LambdaLR multipliers of the base lr after `step` scheduler steps. */
export function lrLambda(name: ScheduleName, { warmupSteps, trainingSteps }: ScheduleOptions = {}): (step: number) => number {
  if (name === 'constant') return () => 1;
  if (warmupSteps === undefined) throw new Error(`${name} requires warmupSteps`);
  const warm = (step: number) => step / Math.max(1, warmupSteps);
  if (name === 'constant_with_warmup') return (step) => (step < warmupSteps ? warm(step) : 1);
  if (trainingSteps === undefined) throw new Error(`${name} requires trainingSteps`);
  const progress = (step: number) => (step - warmupSteps) / Math.max(1, trainingSteps - warmupSteps);
  if (name === 'linear') return (step) => (step < warmupSteps ? warm(step) : Math.max(0, (trainingSteps - step) / Math.max(1, trainingSteps - warmupSteps)));
  // get_scheduler does not pass num_cycles to the cosine schedule: its default 0.5 (a half cosine) holds.
  const numCycles = 0.5;
  if (name === 'cosine') return (step) => (step < warmupSteps ? warm(step) : Math.max(0, 0.5 * (1 + Math.cos(Math.PI * numCycles * 2 * progress(step)))));
  throw new Error(`unknown lr schedule '${name}'`);
}

/** torch's LambdaLR: sets optimizer.lr = baseLr * lambda(step); construction is step 0. */
export class LRScheduler {
  baseLr: number;
  lastStep = 0;

  constructor(readonly optimizer: { lr: number }, readonly lambda: (step: number) => number) {
    this.baseLr = optimizer.lr;
    optimizer.lr = this.baseLr * lambda(0);
  }

  /** Call after each optimizer step. */
  step(): void {
    this.lastStep++;
    this.optimizer.lr = this.baseLr * this.lambda(this.lastStep);
  }

  get lr(): number {
    return this.optimizer.lr;
  }

  stateDict(): { lastStep: number; baseLr: number } {
    return { lastStep: this.lastStep, baseLr: this.baseLr };
  }

  loadStateDict(sd: { lastStep: number; baseLr: number }): void {
    this.baseLr = sd.baseLr;
    this.lastStep = sd.lastStep;
    this.optimizer.lr = this.baseLr * this.lambda(this.lastStep);
  }
}

/** diffusers.optimization.get_scheduler(name, optimizer, num_warmup_steps, num_training_steps). */
export function getScheduler(name: ScheduleName, optimizer: { lr: number }, opts: ScheduleOptions = {}): LRScheduler {
  return new LRScheduler(optimizer, lrLambda(name, opts));
}

// ---- EMA --------------------------------------------------------------------------------------------

/** DanceGRPO's FSDP_EMA over parameter tensors: copies of the weights, moved toward them by update(). */
export class EMA {
  private shadow: Tensor[];

  constructor(params: readonly Tensor[], readonly decay = 0.995) {
    this.shadow = params.map((p) => p.to(p.dtype));
  }

  /** The averaged weights, in the parameters' order (owned by the EMA). */
  get weights(): readonly Tensor[] {
    return this.shadow;
  }

  /** ema = decay * ema + (1 - decay) * param, in float32 as torch (both factors rounded to float32). */
  update(params: readonly Tensor[]): void {
    if (params.length !== this.shadow.length) throw new Error(`EMA.update: ${params.length} parameters for ${this.shadow.length} averaged weights`);
    this.shadow = this.shadow.map((e, i) => {
      const a = T.scale(e, Math.fround(this.decay));
      const b = T.scale(params[i]!, Math.fround(1 - this.decay));
      const next = T.add(a, b);
      [e, a, b].forEach((t) => t.dispose());
      return next;
    });
  }

  dispose(): void {
    this.shadow.forEach((t) => t.dispose());
    this.shadow = [];
  }
}
