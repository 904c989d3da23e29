// The autograd tape. Differentiable ops (src/autograd/functional.ts) run the plain tensor op and,
// when gradients are being tracked and an input needs one, attach a GradNode to the result: its
// inputs, the tensors it saved, and its backward rule. backward() walks the nodes in reverse
// topological order, accumulates leaf gradients into `.grad`, and releases every saved tensor and
// intermediate gradient as soon as it has been consumed.
import { accumulatorDtype } from '../tensor/dtype.ts';
import * as T from '../tensor/ops.ts';
import { type GradNode, Tensor } from '../tensor/tensor.ts';

let enabled = true;

/** Runs fn without recording anything (inference, sampling, reward). */
export function noGrad<R>(fn: () => R): R {
  const prev = enabled;
  enabled = false;
  try {
    return fn();
  } finally {
    enabled = prev;
  }
}

export function isGradEnabled(): boolean {
  return enabled;
}

/** Whether an op on these inputs must be recorded. */
export function needsGrad(...inputs: readonly (Tensor | null | undefined)[]): boolean {
  return enabled && inputs.some((t) => !!t && (t.requiresGrad || t.gradFn !== null));
}

/**
 * Records `out = op(inputs)` when needed. `saved` tensors are retained (as views) until the node
 * has run or the graph is dropped; the backward rule reads them, never the caller's handles.
 * The rule gets `needs[i]`: whether input i wants a gradient, so that it can skip costly ones
 * (a frozen base weight under LoRA); what it returns for other inputs is dropped.
 */
export function record(
  op: string,
  inputs: readonly (Tensor | null)[],
  out: Tensor,
  backward: (grad: Tensor, saved: Tensor[], needs: boolean[]) => (Tensor | null)[],
  saved: readonly Tensor[] = [],
): Tensor {
  if (!needsGrad(...inputs)) return out;
  const needs = inputs.map((t) => !!t && (t.requiresGrad || t.gradFn !== null));
  let held: Tensor[] | null = saved.map((t) => t.view(t.shape, t.strides));
  const node: GradNode = {
    op,
    inputs,
    backward: (grad) => {
      if (!held) throw new Error(`${op}: backward ran twice through the same graph (saved tensors were already released)`);
      return backward(grad, held, needs);
    },
    release: () => {
      held?.forEach((t) => t.dispose());
      held = null;
    },
  };
  out.gradFn = node;
  return out;
}

/** Nodes reachable from root, ordered so that every node comes after all nodes that consume it. */
function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  // Iterative DFS (graphs of a FLUX model are deep enough to overflow recursion).
  const stack: [Tensor, number][] = [[root, 0]];
  seen.add(root);
  while (stack.length) {
    const top = stack[stack.length - 1]!;
    const [t, i] = top;
    const inputs = t.gradFn?.inputs ?? [];
    if (i < inputs.length) {
      top[1]++;
      const child = inputs[i];
      if (child && child.gradFn && !seen.has(child)) {
        seen.add(child);
        stack.push([child, 0]);
      }
    } else {
      stack.pop();
      order.push(t);
    }
  }
  return order.reverse();
}

/** t in `dtype` (t is consumed). */
function convert(t: Tensor, dtype: Tensor['dtype']): Tensor {
  if (t.dtype === dtype) return t;
  const c = t.to(dtype);
  t.dispose();
  return c;
}

/**
 * a + b (both consumed) as a gradient of `dtype`: 16-bit gradients are summed in f32 and rounded
 * once, as torch accumulates a bf16 gradient (and our elementwise kernels add f32).
 */
function addGrads(a: Tensor, b: Tensor, dtype: Tensor['dtype']): Tensor {
  const acc = accumulatorDtype(a.dtype, b.dtype);
  const [x, y] = [convert(a, acc), convert(b, acc)];
  const sum = T.add(x, y);
  x.dispose();
  y.dispose();
  return convert(sum, dtype);
}

/** Adds g into a leaf's .grad (g is consumed), which keeps the leaf's dtype. */
function accumulateLeaf(leaf: Tensor, g: Tensor): void {
  leaf.grad = leaf.grad ? addGrads(leaf.grad, g, leaf.dtype) : convert(g, leaf.dtype);
}

/**
 * Backpropagates from `root`: a scalar (gradient 1) or any tensor with an explicit cotangent
 * `grad` of its shape. Gradients accumulate into `.grad` of every leaf that requires one.
 * The graph is consumed: its saved tensors are released.
 */
export function backward(root: Tensor, grad?: Tensor): void {
  if (!root.gradFn && !root.requiresGrad) throw new Error(`backward: [${root.shape}] does not require grad (was it computed under noGrad?)`);
  if (!grad && root.numel !== 1) throw new Error(`backward: root [${root.shape}] is not a scalar; pass its cotangent`);
  if (grad && grad.numel !== root.numel) throw new Error(`backward: cotangent [${grad.shape}] does not match root [${root.shape}]`);
  const rootGrad = grad ? grad.reshape(root.shape) : Tensor.full(root.device, root.shape, 1, root.dtype);
  if (!root.gradFn) {
    accumulateLeaf(root, rootGrad);
    return;
  }
  const grads = new Map<Tensor, Tensor>([[root, rootGrad]]);
  for (const t of topoOrder(root)) {
    const node = t.gradFn!;
    const g = grads.get(t);
    grads.delete(t);
    if (!g) {
      node.release();
      continue;
    }
    const inputGrads = noGrad(() => node.backward(g));
    node.release();
    g.dispose();
    node.inputs.forEach((input, i) => {
      const gi = inputGrads[i];
      if (!gi) return;
      if (!input || (!input.gradFn && !input.requiresGrad)) return gi.dispose();
      if (!input.gradFn) return accumulateLeaf(input, gi);
      // A gradient has its tensor's dtype, as in torch: the gradient of a bf16 compute copy is
      // rounded to bf16 before it flows on (rules compute in f32 whatever their inputs hold).
      const prev = grads.get(input);
      grads.set(input, prev ? addGrads(prev, gi, input.dtype) : convert(gi, input.dtype));
    });
  }
  for (const g of grads.values()) g.dispose();
}

/** Drops a graph that will not be backpropagated (releases every saved tensor). */
export function releaseGraph(root: Tensor): void {
  for (const t of topoOrder(root)) {
    t.gradFn?.release();
    t.gradFn = null;
  }
}

/** Runs fn with gradient tracking on (inside a backward rule, which otherwise runs under noGrad). */
function withGrad<R>(fn: () => R): R {
  const prev = enabled;
  enabled = true;
  try {
    return fn();
  } finally {
    enabled = prev;
  }
}

/**
 * Gradient checkpointing: runs `fn` without recording, so none of its activations are kept, and
 * recomputes it with recording during backward. `params` are the trainable tensors `fn` reads
 * besides `inputs` (their gradients accumulate directly into `.grad` during the recomputation).
 * fn must be deterministic (no random draws): the recomputation must see the same values.
 */
export function checkpoint(fn: (inputs: Tensor[]) => Tensor, inputs: Tensor[], params: readonly Tensor[]): Tensor {
  if (!needsGrad(...inputs, ...params)) return fn(inputs);
  const out = noGrad(() => fn(inputs));
  const inputNeedsGrad = inputs.map((t) => t.requiresGrad || t.gradFn !== null);
  // The params are listed as inputs too, so the node is recorded when only they need a gradient
  // (LoRA on a frozen base); their gradients accumulate during the recomputation, the rule returns null.
  return record('checkpoint', [...inputs, ...params], out, (g, saved) => {
    // Inputs that need no gradient (constants such as RoPE tables) stay constants in the recomputation.
    const detached = saved.map((t, i) => {
      const d = t.view(t.shape, t.strides);
      d.requiresGrad = inputNeedsGrad[i]!;
      return d;
    });
    const y = withGrad(() => fn(detached));
    withGrad(() => backward(y, g));
    y.dispose();
    const grads: (Tensor | null)[] = detached.map((d) => {
      const grad = d.grad;
      d.grad = null;
      d.dispose();
      return grad;
    });
    return [...grads, ...params.map(() => null)];
  }, inputs);
}
