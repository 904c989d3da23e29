// FLUX VAE decode time and peak device memory at the real FLUX.1 config (block_out_channels 128, 256, 512, 512,
// layers_per_block 2, 16 latent channels, 32 groups) with random weights: 256x256 (latent 32x32) always,
// 512x512 (latent 64x64) with --big, or any latent side with --latents 32,64,90.
// Run: npx tsx bench/vae.bench.ts [--device webgpu|cpu] [--big] [--latents 32,64] [--repeat N] [--tiling]
import { createDevice } from '../src/device/registry.ts';
import { Generator, randn } from '../src/rng/index.ts';
import { AutoencoderKL } from '../src/models/vae/autoencoder.ts';
import { FLUX_VAE_CONFIG } from '../src/models/vae/config.ts';
import { initRandomWeights } from '../src/models/vae/init.ts';
import { consume } from '../src/models/vae/nn.ts';
import * as ops from '../src/tensor/ops.ts';
import { Tensor } from '../src/tensor/tensor.ts';
import { flag } from './flags.ts';

const kind = flag('device') ?? 'webgpu';
const sides = flag('latents')?.split(',').map(Number) ?? (flag('big') ? [32, 64] : [32]);
const repeat = Number(flag('repeat') ?? 1);
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
const log = (msg: string) => console.log(`[${(performance.now() / 1000).toFixed(1)}s] ${msg}`);

const dev = await createDevice(kind);
log(`device: ${dev.name}`);
const vae = new AutoencoderKL(FLUX_VAE_CONFIG);
if (flag('tiling')) vae.enableTiling();
const nParams = vae.namedParameters().reduce((s, [, p]) => s + p.shape.reduce((a, b) => a * b, 1), 0);
log(`random weights: ${(nParams / 1e6).toFixed(1)} M decoder parameters ...`);
initRandomWeights(dev, vae, 0);
await dev.sync();
const weightBytes = dev.memory().liveBytes;
log(`weights uploaded: ${mib(weightBytes)} live`);

/**
 * vae.decode without tiling, stage by stage as Decoder.forward runs them, waiting for each stage to finish
 * so progress and per-stage times are real (on WebGPU ops only queue up until the host waits).
 */
async function decodeByStage(z: Tensor): Promise<Tensor> {
  const d = vae.decoder;
  const stages: [string, (x: Tensor) => Tensor][] = [
    ['conv_in', (x) => d.conv_in.forward(x)],
    ['mid_block', (x) => d.mid_block.forward(x)],
    ...d.up_blocks.map((b, i): [string, (x: Tensor) => Tensor] => [`up_blocks.${i}`, (x) => b.forward(x)]),
    ['conv_norm_out + silu + conv_out', (x) => consume(d.conv_norm_out.forward(x), (n) => consume(ops.silu(n), (a) => d.conv_out.forward(a)))],
  ];
  let h = vae.post_quant_conv ? vae.post_quant_conv.forward(z) : z.contiguous();
  for (const [name, f] of stages) {
    const t0 = performance.now();
    h = consume(h, f);
    await dev.sync();
    log(`  ${name}: ${(performance.now() - t0).toFixed(0)} ms -> [${h.shape}]`);
  }
  return h;
}

const results: { image: string; ms: number[]; peak: number }[] = [];
for (const side of sides) {
  const image = `${side * vae.upsampling}x${side * vae.upsampling}`;
  const z = Tensor.from(dev, randn(new Generator(side), [1, 16, side, side], 'f32'), [1, 16, side, side]);
  const ms: number[] = [];
  let peak = 0;
  for (let r = 0; r < repeat; r++) {
    await dev.sync();
    dev.resetPeak();
    log(`decode ${image} (latent ${side}x${side}) run ${r + 1}/${repeat}`);
    const t0 = performance.now();
    const out = vae.tiling ? vae.decode(z) : await decodeByStage(z);
    const first = await out.toHost(); // waits for every issued op
    ms.push(performance.now() - t0);
    peak = Math.max(peak, dev.memory().peakBytes);
    let finite = true;
    for (let i = 0; i < first.length; i++) if (!Number.isFinite(first[i]!)) finite = false;
    log(`decode ${image}: ${ms.at(-1)!.toFixed(0)} ms, peak ${mib(dev.memory().peakBytes)} (${mib(dev.memory().peakBytes - weightBytes)} above weights), output [${out.shape}] ${finite ? 'finite' : 'NOT FINITE'}`);
    out.dispose();
  }
  z.dispose();
  results.push({ image, ms, peak });
}

console.log(`\nFLUX VAE decode on ${dev.name} (${kind}), f32, random weights (${mib(weightBytes)}), tiling ${vae.tiling ? 'on' : 'off'}`);
console.log('image      best ms   median ms   peak device memory (incl. weights)');
for (const r of results) {
  const sorted = [...r.ms].sort((a, b) => a - b);
  console.log(`${r.image.padEnd(10)} ${sorted[0]!.toFixed(0).padStart(8)} ${sorted[Math.floor(sorted.length / 2)]!.toFixed(0).padStart(11)}   ${mib(r.peak)}`);
}
vae.dispose();
dev.destroy();
