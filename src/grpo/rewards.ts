// Rewards by name. A reward scores 8-bit RGB images against their prompts (image i with prompt i), all
// images of a call in one batched forward pass (a GRPO group at once), and returns one number per image.
//
//   hps          DanceGRPO's --use_hpsv2: HPS v2.1 = open_clip ViT-H-14 CLIP with the HPS weights;
//                preprocess_val (light augmentation: longest side, letterbox), open_clip tokenizer;
//                score = <image_features, text_features> of the L2-normalised features (no logit scale)
//   pickscore    DanceGRPO's --use_pickscore: transformers CLIPModel (PickScore_v1); CLIPImageProcessor
//                (PIL bicubic, shortest side, centre crop), fast CLIP tokenizer; score = cosine (no logit scale)
//   brightness   weight-free demo: mean luma (0.299 R + 0.587 G + 0.114 B) / 255, in [0, 1]; ignores the prompt
//   colorfulness weight-free demo: Hasler & Suesstrunk's colourfulness / 255; ignores the prompt
//
// New rewards join with registerReward(name, summary, factory).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Device } from '../device/device.ts';
import { ClipTokenizer } from '../io/clip_tokenizer.ts';
import type { RgbImage } from '../io/png.ts';
import { loadHfClip, loadOpenClip } from '../models/clip/load.ts';
import { type ClipModel, similarity } from '../models/clip/model.ts';
import {
  type ChwImage, clipImageProcessorConfig, clipImageProcessorSteps, type ClipImageProcessorConfig, hpsPreprocess, stackChw,
} from '../models/clip/preprocess.ts';
import { Tensor } from '../tensor/tensor.ts';

export type RewardImage = RgbImage;

export interface Reward {
  readonly name: string;
  /** One score per image; images[i] is scored against prompts[i]. */
  score(images: RewardImage[], prompts: string[]): Promise<number[]>;
  /** Frees the model's device memory. */
  dispose(): void;
}

export interface RewardConfig {
  /** Where model rewards run (required by 'hps' and 'pickscore'). */
  device?: Device;
  /** hps: the checkpoint (HPS_v2.1_compressed.pt, or safetensors); pickscore: the model folder or its weight file. */
  ckpt?: string;
  /** hps: an open_clip model config JSON (default: open_clip's ViT-H-14); pickscore: config.json (default: beside the weights). */
  config?: string;
  /** hps: open_clip's bpe_simple_vocab_16e6.txt.gz (or a folder holding it; default: beside the checkpoint);
   * pickscore: the processor folder (tokenizer.json or vocab.json + merges.txt; default: the model folder). */
  tokenizer?: string;
  /** pickscore: preprocessor_config.json or its folder (default: the tokenizer folder). */
  processor?: string;
  /** Images per forward pass (default: all images of the call at once). */
  batchSize?: number;
}

export type RewardFactory = (config: RewardConfig) => Reward;

const REGISTRY = new Map<string, { summary: string; create: RewardFactory }>();

export function registerReward(name: string, summary: string, create: RewardFactory): void {
  if (REGISTRY.has(name)) throw new Error(`reward '${name}' is already registered`);
  REGISTRY.set(name, { summary, create });
}

/** Registered reward names with their one-line summaries. */
export function rewardNames(): { name: string; summary: string }[] {
  return [...REGISTRY].map(([name, r]) => ({ name, summary: r.summary }));
}

export function createReward(name: string, config: RewardConfig = {}): Reward {
  const r = REGISTRY.get(name);
  if (!r) throw new Error(`unknown reward '${name}' (known: ${[...REGISTRY.keys()].join(', ')})`);
  return r.create(config);
}

function checkCall(name: string, images: RewardImage[], prompts: string[]): void {
  if (images.length !== prompts.length) throw new Error(`${name}: ${images.length} images but ${prompts.length} prompts (one prompt per image)`);
  images.forEach((im, i) => {
    if (im.rgb.length !== im.width * im.height * 3) throw new Error(`${name}: image ${i} has ${im.rgb.length} bytes, not ${im.width}x${im.height} RGB`);
  });
}

function need<T>(value: T | undefined, what: string): T {
  if (value === undefined) throw new Error(what);
  return value;
}

/**
 * The CLIP scoring both model rewards share: images preprocessed on the host, batched through the vision
 * tower, unique prompts through the text tower once, then cosine similarities of the pairs.
 */
class ClipReward implements Reward {
  constructor(
    readonly name: string,
    private readonly model: ClipModel,
    private readonly tokenizer: ClipTokenizer,
    private readonly preprocess: (img: RewardImage) => ChwImage,
    private readonly batchSize: number | undefined,
  ) {}

  async score(images: RewardImage[], prompts: string[]): Promise<number[]> {
    checkCall(this.name, images, prompts);
    if (images.length === 0) return [];
    const device = this.model.vision.patchWeight.device;
    const unique = [...new Set(prompts)];
    const batch = this.tokenizer.tokenize(unique);
    const text = this.model.textFeatures({ ids: batch.inputIds, shape: batch.shape }, { trim: true }); // [U, E]
    const out: number[] = [];
    try {
      const step = this.batchSize ?? images.length;
      for (let at = 0; at < images.length; at += step) {
        const part = images.slice(at, at + step);
        const { data, shape } = stackChw(part.map((im) => this.preprocess(im)));
        const pixels = Tensor.from(device, data, shape);
        const feats = this.model.imageFeatures(pixels); // [b, E]
        const sims = similarity(feats, text); // [b, U]
        [pixels, feats].forEach((t) => t.dispose());
        const host = await sims.toFloat64();
        sims.dispose();
        part.forEach((_, i) => out.push(host[i * unique.length + unique.indexOf(prompts[at + i]!)]!));
      }
    } finally {
      text.dispose();
    }
    return out;
  }

  dispose(): void {
    this.model.dispose();
  }
}

function hpsReward(config: RewardConfig): Reward {
  const device = need(config.device, 'hps: needs a device');
  const ckpt = need(config.ckpt, 'hps: needs the checkpoint (HPS_v2.1_compressed.pt): set ckpt (--ckpt)');
  let vocab = config.tokenizer ?? join(dirname(ckpt), 'bpe_simple_vocab_16e6.txt.gz');
  if (existsSync(vocab) && statSync(vocab).isDirectory()) vocab = join(vocab, 'bpe_simple_vocab_16e6.txt.gz');
  if (!existsSync(vocab)) throw new Error(`hps: open_clip's tokenizer vocabulary ${vocab} not found: set tokenizer (--tokenizer) to bpe_simple_vocab_16e6.txt.gz`);
  const model = loadOpenClip(device, ckpt, config.config);
  const tokenizer = ClipTokenizer.fromOpenClipBpe(vocab, { contextLength: model.params.text.contextLength });
  const size = model.params.vision.imageSize;
  const preprocess = (img: RewardImage): ChwImage => {
    const x = hpsPreprocess(img, size);
    if (x.height !== size || x.width !== size) {
      // ResizeMaxSize leaves an image whose longest side already equals the size unpadded; open_clip then fails.
      throw new Error(`hps: a ${img.width}x${img.height} image is not square and already ${size} on its longest side: the reference preprocess_val passes it unpadded and the model cannot take it`);
    }
    return x;
  };
  return new ClipReward('hps', model, tokenizer, preprocess, config.batchSize);
}

function readProcessorConfig(path: string | undefined, imageSize: number): ClipImageProcessorConfig {
  // transformers' CLIPImageProcessor defaults are 224/224; without a config file the model's image size is used.
  if (path === undefined) return clipImageProcessorConfig({ size: { shortest_edge: imageSize }, crop_size: { height: imageSize, width: imageSize } });
  const file = existsSync(path) && statSync(path).isDirectory() ? join(path, 'preprocessor_config.json') : path;
  if (!existsSync(file)) throw new Error(`pickscore: ${file} not found`);
  return clipImageProcessorConfig(JSON.parse(readFileSync(file, 'utf8')));
}

function pickscoreReward(config: RewardConfig): Reward {
  const device = need(config.device, 'pickscore: needs a device');
  const ckpt = need(config.ckpt, 'pickscore: needs the model (a transformers CLIPModel folder, e.g. PickScore_v1): set ckpt (--ckpt)');
  const modelDir = statSync(ckpt).isDirectory() ? ckpt : dirname(ckpt);
  const tokDir = config.tokenizer ?? modelDir;
  const model = loadHfClip(device, ckpt, config.config);
  try {
    // DanceGRPO: processor(text=prompt, padding=True, truncation=True, max_length=77); the fast tokenizer.
    const tokenizer = ClipTokenizer.fromDir(tokDir, { variant: 'hf_fast', padding: 'longest', contextLength: Math.min(77, model.params.text.contextLength) });
    const proc = readProcessorConfig(config.processor ?? (existsSync(join(tokDir, 'preprocessor_config.json')) ? tokDir : undefined), model.params.vision.imageSize);
    return new ClipReward('pickscore', model, tokenizer, (img) => clipImageProcessorSteps(img, proc).pixelValues, config.batchSize);
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/** Mean luma / 255 of an 8-bit RGB image. */
export function brightness(img: RewardImage): number {
  let s = 0;
  for (let p = 0; p < img.width * img.height; p++) s += 0.299 * img.rgb[p * 3]! + 0.587 * img.rgb[p * 3 + 1]! + 0.114 * img.rgb[p * 3 + 2]!;
  return s / (img.width * img.height) / 255;
}

/** Hasler & Suesstrunk (2003) colourfulness: sqrt(var(rg) + var(yb)) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2), / 255. */
export function colorfulness(img: RewardImage): number {
  const n = img.width * img.height;
  let mrg = 0, myb = 0, srg = 0, syb = 0;
  for (let p = 0; p < n; p++) {
    const r = img.rgb[p * 3]!, g = img.rgb[p * 3 + 1]!, b = img.rgb[p * 3 + 2]!;
    const rg = r - g, yb = 0.5 * (r + g) - b;
    mrg += rg; myb += yb; srg += rg * rg; syb += yb * yb;
  }
  mrg /= n; myb /= n;
  const vrg = Math.max(srg / n - mrg * mrg, 0), vyb = Math.max(syb / n - myb * myb, 0);
  return (Math.sqrt(vrg + vyb) + 0.3 * Math.sqrt(mrg * mrg + myb * myb)) / 255;
}

function hostReward(name: string, fn: (img: RewardImage) => number): RewardFactory {
  return () => ({
    name,
    async score(images, prompts) {
      checkCall(name, images, prompts);
      return images.map(fn);
    },
    dispose() {},
  });
}

registerReward('hps', 'HPS v2.1 (open_clip ViT-H-14 + HPS weights), as DanceGRPO --use_hpsv2', hpsReward);
registerReward('pickscore', 'PickScore (transformers CLIPModel), as DanceGRPO --use_pickscore', pickscoreReward);
registerReward('brightness', 'demo, no weights: mean luma in [0, 1] (ignores the prompt)', hostReward('brightness', brightness));
registerReward('colorfulness', 'demo, no weights: Hasler-Suesstrunk colourfulness / 255 (ignores the prompt)', hostReward('colorfulness', colorfulness));
