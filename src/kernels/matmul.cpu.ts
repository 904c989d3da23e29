// Reference batched matmul with the fused bias and activation (plain loops in float64, rounded on
// store), and the shape checks the WebGPU launcher shares.
import type { Activation } from '../device/device.ts';
import { isContiguous } from '../tensor/shape.ts';
import { unaryFn } from './elementwise.cpu.ts';
import { type HostView, get, set } from './reference.ts';

/** The sizes of one matmul: out[b] = A[b] @ B[b or 0], A [M, K], B [K, N]. */
export interface MatmulDims {
  batch: number;
  m: number;
  n: number;
  k: number;
  /** b has a batch of 1 and is shared by every batch of a. */
  broadcastB: boolean;
}

type Shaped = { shape: readonly number[]; strides: readonly number[] };

/**
 * Checks a [Ba, M, K] ([Ba, K, M] if transA), b [Bb, K, N] ([Bb, N, K] if transB) with Bb = Ba
 * or 1, bias [N] and out [Ba, M, N]; all contiguous. Throws naming the first mismatch.
 */
export function matmulDims(a: Shaped, b: Shaped, out: Shaped, p: { transA?: boolean; transB?: boolean; bias?: Shaped | null }): MatmulDims {
  for (const [name, v] of [['a', a], ['b', b], ['out', out]] as const) {
    if (v.shape.length !== 3) throw new Error(`${name} [${v.shape}] must have 3 dims [batch, rows, cols]`);
    if (!isContiguous(v.shape, v.strides)) throw new Error(`${name} [${v.shape}] with strides [${v.strides}] must be contiguous`);
  }
  const [batch, ar, ac] = a.shape as [number, number, number];
  const [bb, br, bc] = b.shape as [number, number, number];
  const [m, k] = p.transA ? [ac, ar] : [ar, ac];
  const [kb, n] = p.transB ? [bc, br] : [br, bc];
  const la = p.transA ? 'a^T' : 'a', lb = p.transB ? 'b^T' : 'b';
  if (kb !== k) throw new Error(`inner dims differ: ${la} is [${m},${k}] but ${lb} is [${kb},${n}]`);
  if (bb !== batch && bb !== 1) throw new Error(`b's batch ${bb} must be 1 or a's batch ${batch}`);
  if (out.shape[0] !== batch || out.shape[1] !== m || out.shape[2] !== n) throw new Error(`out [${out.shape}] must be [${batch},${m},${n}]`);
  if (p.bias) {
    if (p.bias.shape.length !== 1 || p.bias.shape[0] !== n) throw new Error(`bias [${p.bias.shape}] must be [${n}]`);
    if (n > 1 && p.bias.strides[0] !== 1) throw new Error(`bias with stride ${p.bias.strides[0]} must be contiguous`);
  }
  return { batch, m, n, k, broadcastB: bb === 1 && batch > 1 };
}

/** out[b] = act(A[b] @ B[b or 0] + bias). */
export function refMatmul(
  a: HostView, // (Ba, M, K), or (Ba, K, M) if transA
  b: HostView, // (Bb, K, N), or (Bb, N, K) if transB; Bb = Ba or 1
  out: HostView, // (Ba, M, N)
  p: { transA?: boolean; transB?: boolean; bias?: HostView | null; act?: Activation }, // bias: (N) or null
): void {
  const { batch, m, n, k } = matmulDims(a, b, out, p);
  const act = !p.act || p.act === 'none' ? (x: number) => x : unaryFn(p.act);
  const bBatch = b.shape[0]!;
  for (let bi = 0; bi < batch; bi++) {
    const ab = bi * m * k, bb = (bBatch === 1 ? 0 : bi) * k * n;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let l = 0; l < k; l++) {
          const av = get(a, ab + (p.transA ? l * m + i : i * k + l));
          const bv = get(b, bb + (p.transB ? j * k + l : l * n + j));
          acc += av * bv;
        }
        if (p.bias) acc += get(p.bias, j);
        set(out, (bi * m + i) * n + j, act(acc));
      }
    }
  }
}
