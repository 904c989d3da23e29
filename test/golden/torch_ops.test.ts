// PyTorch's own operators as the second reference: every forward entry of each torch_ops case,
// on the CPU backend and on WebGPU, within the case's tolerance (exact entries bit for bit).
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CpuDevice } from '../../src/device/cpu/device.ts';
import type { Device } from '../../src/device/device.ts';
import { WebGPUDevice } from '../../src/device/webgpu/device.ts';
import { compare } from '../../src/device/conformance.ts';
import { readSafetensors, stToFloat32, type StTensor, stTensor } from '../../src/io/safetensors.ts';
import * as F from '../../src/tensor/ops.ts';
import { Tensor } from '../../src/tensor/tensor.ts';
import { goldenCases, readJson } from './golden.ts';

interface Entry {
  name: string;
  op: string;
  params: Record<string, any>;
  inputs: string[];
  outputs: string[];
  exact?: boolean;
}

type OpFn = (ins: Tensor[], p: Record<string, any>) => Tensor;

const pair = (v: number | number[]): [number, number] => (typeof v === 'number' ? [v, v] : [v[0]!, v[1]!]);
const DTYPES: Record<string, 'bf16' | 'f16' | 'f32'> = { bfloat16: 'bf16', float16: 'f16', float32: 'f32' };

/** PyTorch operator name -> our tensor op, reading its arguments from the entry's params. */
const OPS: Record<string, OpFn> = {
  matmul: ([a, b]) => F.matmul(a!, b!),
  linear: ([x, w, b]) => F.linear(x!, w!, b ?? null),
  add: ([a, b]) => F.add(a!, b!),
  mul: ([a, b]) => F.mul(a!, b!),
  softmax: ([x], p) => F.softmax(x!, p.dim ?? -1),
  layer_norm: ([x, w, b], p) => F.layerNorm(x!, w ?? null, b ?? null, p.eps ?? 1e-5),
  rms_norm: ([x, w], p) => F.rmsNorm(x!, w ?? null, p.eps ?? 1e-6),
  gelu: ([x], p) => F.gelu(x!, p.approximate === 'tanh' ? 'tanh' : 'none'),
  silu: ([x]) => F.silu(x!),
  quick_gelu: ([x]) => F.quickGelu(x!),
  scaled_dot_product_attention: ([q, k, v], p) => F.attention(q!, k!, v!, { causal: !!p.is_causal, scale: p.scale ?? undefined }),
  rope_flux: ([x, c, s]) => F.rope(x!, c!, s!),
  conv2d: ([x, w, b], p) => F.conv2d(x!, w!, b ?? null, pair(p.stride ?? 1), pair(p.padding ?? 0)),
  group_norm: ([x, w, b], p) => F.groupNorm(x!, p.num_groups, w ?? null, b ?? null, p.eps ?? 1e-5),
  interpolate: ([x], p) => {
    if (p.mode !== 'nearest' || p.scale_factor !== 2) throw new Error(`interpolate ${JSON.stringify(p)} not supported`);
    return F.upsampleNearest2x(x!);
  },
  sum: ([x], p) => F.sum(x!, p.dim, !!p.keepdim),
  mean: ([x], p) => F.mean(x!, p.dim, !!p.keepdim),
  var: ([x], p) => F.variance(x!, p.dim, !!p.keepdim, p.correction ?? 1),
  amax: ([x], p) => F.amax(x!, p.dim, !!p.keepdim),
  cast: ([x], p) => F.cast(x!, DTYPES[p.to]!),
};

function upload(dev: Device, t: StTensor): Tensor {
  return Tensor.from(dev, stToFloat32(t), t.shape, 'f32');
}

for (const dir of goldenCases('torch_ops')) {
  const name = dir.split('/').at(-1)!;
  const c = readJson<{ tolerances: { forward_rel_l2: number }; entries: Entry[] }>(join(dir, 'case.json'));
  const file = readSafetensors(join(dir, 'tensors.safetensors'));
  const get = (entry: string, key: string) => stTensor(file, `${entry}/${key}`);

  describe.each(['cpu', 'webgpu'] as const)(`${name} forward on %s`, (kind) => {
    let dev: Device;
    beforeAll(async () => {
      dev = kind === 'cpu' ? new CpuDevice() : await WebGPUDevice.create();
    });
    afterAll(() => dev?.destroy());

    for (const e of c.entries) {
      const fn = OPS[e.op];
      if (!fn) {
        test.skip(`${name} ${e.name}: op '${e.op}' has no mapping in this test yet`, () => {});
        continue;
      }
      test(`${name} ${e.name} (${e.op})`, async () => {
        const ins = e.inputs.map((i) => upload(dev, get(e.name, i)));
        const out = fn(ins, e.params);
        const want = get(e.name, e.outputs[0]!);
        expect(out.shape).toEqual(want.shape);
        if (e.exact) {
          const h = await out.toHost();
          const ours = new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
          expect(Buffer.from(ours).equals(Buffer.from(want.bytes)), `${e.name}: bits differ`).toBe(true);
        } else {
          const { rel } = compare(await out.toFloat64(), stToFloat32(want));
          expect(rel, `${e.name} relative L2 error`).toBeLessThanOrEqual(c.tolerances.forward_rel_l2);
        }
        [...ins, out].forEach((t) => t.dispose());
      });
    }
  });
}
