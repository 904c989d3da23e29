// `flux-grpo score`: scores PNG images against prompts with a reward model, the way the trainer does
// (all images in one batch), e.g.
//   flux-grpo score --reward hps --ckpt weights/HPS_v2.1_compressed.pt --tokenizer weights/bpe_simple_vocab_16e6.txt.gz \
//     --image a.png,b.png --prompt "a red fox in the snow"
import { readFileSync } from 'node:fs';
import { createReward, rewardNames } from '../grpo/rewards.ts';
import { readPng } from '../io/png.ts';
import { createDevice, DEVICE_KINDS } from '../device/registry.ts';
import type { Command } from './args.ts';

export const score: Command = {
  name: 'score',
  summary: 'score PNG images against prompts with a reward (hps, pickscore, brightness, colorfulness)',
  flags: {
    reward: { help: `reward: ${rewardNames().map((r) => r.name).join(' | ')}`, default: 'hps' },
    ckpt: { help: 'hps: checkpoint (.pt or .safetensors); pickscore: transformers CLIPModel folder or weight file' },
    config: { help: 'hps: open_clip model config JSON (default ViT-H-14); pickscore: config.json' },
    tokenizer: { help: "hps: open_clip's bpe_simple_vocab_16e6.txt.gz (default: beside --ckpt); pickscore: processor folder" },
    processor: { help: 'pickscore: preprocessor_config.json or its folder (default: the tokenizer folder)' },
    image: { help: 'PNG file(s), comma-separated' },
    prompt: { help: 'the prompt of every image' },
    prompts: { help: 'a file with one prompt per line, one per image (instead of --prompt)' },
    device: { help: `device: ${DEVICE_KINDS.join(' | ')}`, default: 'webgpu' },
    adapter: { help: 'WebGPU adapter name substring' },
    batch: { help: 'images per forward pass (default: all at once)' },
    json: { help: 'print one JSON object', boolean: true },
  },
  async run(flags) {
    if (!flags.image) throw new Error('score: --image is required (see --help)');
    const files = String(flags.image).split(',').filter((f) => f !== '');
    let prompts: string[];
    if (flags.prompts) {
      prompts = readFileSync(String(flags.prompts), 'utf8').split('\n').filter((l) => l.trim() !== '');
      if (prompts.length !== files.length) throw new Error(`score: ${flags.prompts} has ${prompts.length} prompts for ${files.length} images`);
    } else if (flags.prompt !== undefined) {
      prompts = files.map(() => String(flags.prompt));
    } else {
      throw new Error('score: give --prompt or --prompts (see --help)');
    }
    const name = String(flags.reward);
    const needsDevice = name === 'hps' || name === 'pickscore';
    const device = needsDevice ? await createDevice(String(flags.device), { adapter: flags.adapter as string | undefined }) : undefined;
    try {
      const t0 = performance.now();
      const reward = createReward(name, {
        device,
        ckpt: flags.ckpt as string | undefined,
        config: flags.config as string | undefined,
        tokenizer: flags.tokenizer as string | undefined,
        processor: flags.processor as string | undefined,
        batchSize: flags.batch ? Number(flags.batch) : undefined,
      });
      const t1 = performance.now();
      const images = files.map((f) => readPng(f));
      const scores = await reward.score(images, prompts);
      const t2 = performance.now();
      reward.dispose();
      if (flags.json) {
        console.log(JSON.stringify({
          reward: name, device: device?.name ?? 'host', loadSeconds: (t1 - t0) / 1000, scoreSeconds: (t2 - t1) / 1000,
          scores: files.map((f, i) => ({ image: f, prompt: prompts[i], score: scores[i] })),
        }, null, 2));
      } else {
        console.log(`score: ${name} on ${device?.name ?? 'the host'} (load ${((t1 - t0) / 1000).toFixed(1)} s, ${files.length} images in ${((t2 - t1) / 1000).toFixed(2)} s)`);
        files.forEach((f, i) => console.log(`${scores[i]!.toFixed(6)}  ${f}  "${prompts[i]}"`));
      }
      return 0;
    } finally {
      device?.destroy();
    }
  },
};
