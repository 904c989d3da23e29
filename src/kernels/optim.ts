// WebGPU optimizer step: AdamW in place, one thread per element (vec4 of elements when every
// operand is 4-aligned), in torch's single-tensor operation order with the float32 scalars the host
// prepares (reference: optim.cpu.ts). exp_avg.lerp_ and addcmul_ are WGSL fma as they are fused
// multiply-adds on torch's CPU; a driver may evaluate fma unfused (lavapipe does, measured), which
// moves m and v by an ulp of their operands. Parameters larger than one binding (FLUX's biggest
// weights in f32) are processed in chunks.
import type { AdamWParams, View } from '../device/device.ts';
import { type GpuContext, gridFor } from '../device/webgpu/context.ts';
import { isContiguous, numel } from '../tensor/shape.ts';
import { type Field, bindSpan, f32, u32, uniformData, uniformWgsl, unitsPerBinding } from './elementwise.ts';
import { checkAdamWShapes } from './optim.cpu.ts';

const WG = 256;

/** AdamW's WGSL: `vec4` reads and writes four elements per thread (vec4<f32> bindings). */
function adamwWgsl(vec4: boolean, fields: Field[]): string {
  const t = vec4 ? 'vec4<f32>' : 'f32';
  const at = (name: string, o: string) => (vec4 ? `${name}[p.${o} / 4u + i]` : `${name}[p.${o} + i]`);
  return `${uniformWgsl(fields)}
@group(0) @binding(1) var<storage, read_write> param: array<${t}>;
@group(0) @binding(2) var<storage, read> grad: array<${t}>;
@group(0) @binding(3) var<storage, read_write> m: array<${t}>;
@group(0) @binding(4) var<storage, read_write> v: array<${t}>;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  if (i >= p.count) { return; }
  let g = ${at('grad', 'go')};
  let m0 = ${at('m', 'mo')};
  let x = ${at('param', 'po')} * p.decay;
  // torch's lerp: start + w*(end - start) for w < 0.5, else end - (1 - w)*(end - start).
  let d = g - m0;
  let m1 = select(fma(${t}(p.w - 1.0), d, g), fma(${t}(p.w), d, m0), p.w < 0.5);
  let v1 = fma(p.one_minus_beta2 * g, g, ${at('v', 'vo')} * p.beta2);
  let denom = sqrt(v1) / p.bc2_sqrt + p.eps;
  ${at('param', 'po')} = x + p.neg_step * m1 / denom;
  ${at('m', 'mo')} = m1;
  ${at('v', 'vo')} = v1;
}
`;
}

/**
 * One AdamW step in place (Device.adamw): param *= 1 - lr*wd; m = lerp(m, g, 1 - beta1);
 * v = v*beta2 + (1 - beta2)*g*g; param -= stepSize * m / (sqrt(v) / bc2Sqrt + eps).
 * param, grad, m, v: same shape, dense f32, four distinct buffers
 */
export function gpuAdamW(ctx: GpuContext, param: View, grad: View, m: View, v: View, p: AdamWParams): void {
  checkAdamWShapes(param, { grad, m, v });
  const views = { param, grad, m, v };
  for (const [name, x] of Object.entries(views)) {
    if (x.dtype !== 'f32') throw new Error(`adamw computes on f32; ${name} is ${x.dtype}`);
    if (!isContiguous(x.shape, x.strides)) throw new Error(`adamw wants a dense ${name}; got [${x.shape}] strides [${x.strides}]`);
  }
  if (new Set([param.buf, grad.buf, m.buf, v.buf]).size !== 4) throw new Error('adamw wants param, grad, m and v in four distinct buffers');
  const n = numel(param.shape);
  if (n === 0) return;
  const list = [param, grad, m, v];
  const vec4 = n % 4 === 0 && list.every((x) => x.offset % 4 === 0);
  // The Python scalars of torch's step, as the float32 values its kernels use.
  const scalars = [
    f32('decay', 1 - p.lr * p.weightDecay), f32('w', 1 - p.beta1), f32('beta2', p.beta2), f32('one_minus_beta2', 1 - p.beta2),
    f32('bc2_sqrt', p.bc2Sqrt), f32('eps', p.eps), f32('neg_step', -p.stepSize),
  ];
  const fields = (count = 0, rel = [0, 0, 0, 0]): Field[] => [u32('count', count), ...['po', 'go', 'mo', 'vo'].map((o, i) => u32(o, rel[i]!)), ...scalars];
  const pipeline = ctx.pipeline(adamwWgsl(vec4, fields()));
  const units = unitsPerBinding(ctx, 4);
  const chunk = n <= units ? n : Math.floor(units / 1024) * 1024;
  for (let e0 = 0; e0 < n; e0 += chunk) {
    const e1 = Math.min(n, e0 + chunk);
    const spans = list.map((x) => bindSpan(ctx, x, x.offset + e0, x.offset + e1));
    const rel = spans.map((s, i) => list[i]!.offset + e0 - s.shift);
    const count = vec4 ? (e1 - e0) / 4 : e1 - e0;
    ctx.dispatch(`adamw [${param.shape}]`, pipeline, uniformData(fields(count, rel)), spans.map((s) => s.binding), gridFor(count, WG, ctx.limits.maxWorkgroupsPerDim));
  }
}
