// Loading CLIP reward models: configs (open_clip model configs, transformers' CLIPConfig) to ClipParams,
// and checkpoints (torch.save files read without pickle, safetensors) to a strict parameter store.
//
// HPS v2.1: `HPS_v2.1_compressed.pt` is torch.save({'state_dict': ...}) of open_clip's ViT-H-14 CLIP. As
// HPSv2's factory.load_state_dict does, a 'state_dict' entry is unwrapped and, when the first key starts
// with 'module', the first 7 characters of every key are dropped (DistributedDataParallel's 'module.').
// PickScore: a transformers CLIPModel folder (config.json + model.safetensors / pytorch_model.bin).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Device } from '../../device/device.ts';
import { SafetensorsReader, ShardedSafetensors, stToFloat32, type TensorSource } from '../../io/safetensors.ts';
import { loadTorchFile, tensorToContiguousBytes, torchTensorToFloat64, TorchTensor, type TorchValue } from '../../io/torch_pt.ts';
import { type ClipActivation, type HostTensor, ParamStore, type StateDict } from './layers.ts';
import { ClipModel, type ClipParams } from './model.ts';

/** open_clip's model_configs/ViT-H-14.json: the architecture HPS v2.1 fine-tunes. */
export const VIT_H_14_CONFIG = {
  embed_dim: 1024,
  vision_cfg: { image_size: 224, layers: 32, width: 1280, head_width: 80, patch_size: 14 },
  text_cfg: { context_length: 77, vocab_size: 49408, width: 1024, heads: 16, layers: 24 },
} as const;

// ---- configs ----------------------------------------------------------------------------------------

/**
 * An open_clip model config (model_configs/*.json keys, or an open_clip_config.json holding `model_cfg`) as
 * ClipParams, with open_clip's defaults (CLIPVisionCfg / CLIPTextCfg). Towers this port does not implement
 * (timm, ResNet, HF text, attentional pooling, ...) are refused by name.
 */
export function openClipParams(json: Record<string, any>): ClipParams {
  const cfg = json.model_cfg ?? json;
  const v = cfg.vision_cfg ?? {}, t = cfg.text_cfg ?? {};
  const refuse = (where: string, keys: string[], obj: Record<string, any>) => {
    for (const k of keys) if (obj[k]) throw new Error(`open_clip config: ${where}.${k} = ${JSON.stringify(obj[k])} is not supported`);
  };
  refuse('vision_cfg', ['timm_model_name', 'input_patchnorm', 'global_average_pool', 'attentional_pool'], v);
  refuse('text_cfg', ['hf_model_name', 'embed_cls'], t);
  refuse('model', ['custom_text'], cfg);
  if (Array.isArray(v.layers)) throw new Error('open_clip config: ResNet vision towers (vision_cfg.layers is a list) are not supported');
  if (Array.isArray(v.image_size) && v.image_size[0] !== v.image_size[1]) throw new Error(`open_clip config: non-square image_size ${JSON.stringify(v.image_size)}`);
  if (Array.isArray(v.patch_size) && v.patch_size[0] !== v.patch_size[1]) throw new Error(`open_clip config: non-square patch_size ${JSON.stringify(v.patch_size)}`);
  const act: ClipActivation = cfg.quick_gelu ? 'quick_gelu' : 'gelu_erf';
  const vWidth = v.width ?? 768, headWidth = v.head_width ?? 64;
  const tWidth = t.width ?? 512;
  if (typeof cfg.embed_dim !== 'number') throw new Error('open_clip config: embed_dim is missing');
  return {
    layout: 'open_clip',
    embedDim: cfg.embed_dim,
    vision: {
      imageSize: Array.isArray(v.image_size) ? v.image_size[0] : v.image_size ?? 224,
      patchSize: Array.isArray(v.patch_size) ? v.patch_size[0] : v.patch_size ?? 16,
      width: vWidth,
      layers: v.layers ?? 12,
      heads: Math.floor(vWidth / headWidth),
      mlpWidth: Math.floor(vWidth * (v.mlp_ratio ?? 4.0)),
      act,
      eps: 1e-5,
    },
    text: {
      contextLength: t.context_length ?? 77,
      vocabSize: t.vocab_size ?? 49408,
      width: tWidth,
      layers: t.layers ?? 12,
      heads: t.heads ?? 8,
      mlpWidth: Math.floor(tWidth * (t.mlp_ratio ?? 4.0)),
      act,
      eps: 1e-5,
      pooling: 'argmax',
    },
    layerScale: { vision: v.ls_init_value != null, text: t.ls_init_value != null },
  };
}

const HF_ACT: Record<string, ClipActivation> = {
  gelu: 'gelu_erf', quick_gelu: 'quick_gelu', gelu_new: 'gelu_tanh', gelu_pytorch_tanh: 'gelu_tanh', gelu_fast: 'gelu_tanh',
};

function hfAct(name: unknown): ClipActivation {
  const act = HF_ACT[String(name)];
  if (!act) throw new Error(`CLIP config: hidden_act '${name}' is not supported (known: ${Object.keys(HF_ACT).join(', ')})`);
  return act;
}

/** The transformer fields that CLIPVisionConfig and CLIPTextConfig share, with defaults that differ per tower. */
interface HfTowerDefaults { hidden_size: number; num_hidden_layers: number; num_attention_heads: number; intermediate_size: number }

/** A transformers tower config's transformer fields; both config classes default to quick_gelu and eps 1e-5. */
function hfTower(cfg: Record<string, any>, defaults: HfTowerDefaults) {
  return {
    width: cfg.hidden_size ?? defaults.hidden_size,
    layers: cfg.num_hidden_layers ?? defaults.num_hidden_layers,
    heads: cfg.num_attention_heads ?? defaults.num_attention_heads,
    mlpWidth: cfg.intermediate_size ?? defaults.intermediate_size,
    act: hfAct(cfg.hidden_act ?? 'quick_gelu'),
    eps: cfg.layer_norm_eps ?? 1e-5,
  };
}

/** A transformers CLIPConfig (config.json of a CLIPModel) as ClipParams, with transformers' defaults. */
export function hfClipParams(json: Record<string, any>): ClipParams {
  const v = json.vision_config ?? {}, t = json.text_config ?? {};
  const eos = t.eos_token_id ?? 2;
  return {
    layout: 'hf',
    embedDim: json.projection_dim ?? 512,
    vision: {
      imageSize: v.image_size ?? 224,
      patchSize: v.patch_size ?? 32,
      ...hfTower(v, { hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, intermediate_size: 3072 }),
    },
    text: {
      contextLength: t.max_position_embeddings ?? 77,
      vocabSize: t.vocab_size ?? 49408,
      ...hfTower(t, { hidden_size: 512, num_hidden_layers: 12, num_attention_heads: 8, intermediate_size: 2048 }),
      // transformers' CLIPTextTransformer: the legacy eos_token_id 2 means "argmax of the ids".
      pooling: eos === 2 ? 'argmax' : eos,
    },
  };
}

// ---- checkpoints --------------------------------------------------------------------------------------

function torchToHost(name: string, t: TorchTensor): HostTensor {
  const n = t.shape.reduce((a, b) => a * b, 1);
  let data: Float32Array;
  if (t.dtype === 'float32') {
    const bytes = tensorToContiguousBytes(t);
    data = bytes.byteOffset % 4 === 0 ? new Float32Array(bytes.buffer, bytes.byteOffset, n) : new Float32Array(bytes.slice().buffer, 0, n);
  }
  else if (t.dtype === 'float16' || t.dtype === 'bfloat16' || t.dtype === 'float64') data = Float32Array.from(torchTensorToFloat64(t));
  else throw new Error(`tensor '${name}' is ${t.dtype}, not a floating-point parameter`);
  return { shape: [...t.shape], data };
}

/**
 * hpsv2/src/open_clip/factory.py load_state_dict: when the FIRST key starts with 'module', every key loses
 * its first 7 characters (`{k[7:]: v ...}`), as a DistributedDataParallel checkpoint needs.
 */
export function stripModulePrefix<V>(entries: [string, V][]): [string, V][] {
  const strip = entries.length > 0 && entries[0]![0].startsWith('module');
  return strip ? entries.map(([k, v]) => [k.slice(7), v]) : entries;
}

/** A state_dict from a torch.save file: the 'state_dict' entry when there is one, 'module' prefixes dropped as HPSv2 does. */
export function torchStateDict(path: string): StateDict {
  let value: TorchValue = loadTorchFile(path);
  if (value instanceof Map && value.has('state_dict')) value = value.get('state_dict')!;
  if (!(value instanceof Map)) throw new Error(`${path}: expected a dict of tensors (or {'state_dict': ...})`);
  const entries: [string, TorchTensor][] = [];
  for (const [k, v] of value) {
    if (typeof k !== 'string') throw new Error(`${path}: state_dict key ${String(k)} is not a string`);
    if (v instanceof TorchTensor) entries.push([k, v]);
  }
  const map = new Map(stripModulePrefix(entries));
  return {
    names: () => [...map.keys()],
    has: (n) => map.has(n),
    read: (n) => {
      const t = map.get(n);
      if (!t) throw new Error(`${path}: no tensor '${n}'`);
      return torchToHost(n, t);
    },
  };
}

/** A state_dict from a .safetensors file, a sharded index, or a folder holding one index. */
export function safetensorsStateDict(path: string): StateDict & { close(): void } {
  const src: TensorSource = path.endsWith('.safetensors') ? SafetensorsReader.open(path) : ShardedSafetensors.open(path);
  return {
    names: () => src.names(),
    has: (n) => src.has(n),
    read: (n) => {
      const t = src.read(n);
      return { shape: t.shape, data: stToFloat32(t) };
    },
    close: () => src.close(),
  };
}

/** Any supported checkpoint file: .safetensors (or a .safetensors.index.json), else a torch.save file (.pt, .bin). */
export function openStateDict(path: string): StateDict & { close?(): void } {
  if (path.endsWith('.safetensors') || path.endsWith('.safetensors.index.json')) return safetensorsStateDict(path);
  return torchStateDict(path);
}

/** Keys a checkpoint may hold that the forward pass does not use. */
const IGNORED_KEYS = (name: string) => name === 'logit_scale' || name.endsWith('.position_ids') || name === 'attn_mask';

/** Builds the model and refuses a checkpoint with keys the model does not take (torch's strict loading). */
export function loadClip(device: Device, source: StateDict, params: ClipParams, label: string): ClipModel {
  const store = new ParamStore(device, source, label);
  const model = ClipModel.load(store, params);
  const extra = store.unused(IGNORED_KEYS);
  if (extra.length > 0) {
    model.dispose();
    throw new Error(`${label}: ${extra.length} tensors the ${params.layout} config does not use (wrong config?): ${extra.slice(0, 8).join(', ')}${extra.length > 8 ? ', ...' : ''}`);
  }
  return model;
}

/** An open_clip model config file (or ViT-H-14's when none is given) as ClipParams. */
export function readOpenClipConfig(path?: string): ClipParams {
  return openClipParams(path ? JSON.parse(readFileSync(path, 'utf8')) : VIT_H_14_CONFIG);
}

/** HPS v2.1 (or any open_clip CLIP): checkpoint + open_clip config (default ViT-H-14). */
export function loadOpenClip(device: Device, ckptPath: string, configPath?: string): ClipModel {
  const params = readOpenClipConfig(configPath);
  const sd = openStateDict(ckptPath);
  try {
    return loadClip(device, sd, params, ckptPath);
  } finally {
    sd.close?.();
  }
}

/** The weight file of a transformers model folder. */
export function hfWeightsFile(dir: string): string {
  for (const f of ['model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin']) if (existsSync(join(dir, f))) return join(dir, f);
  throw new Error(`${dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin`);
}

/** A transformers CLIPModel (PickScore): a folder with config.json and weights, or a weights file plus a config path. */
export function loadHfClip(device: Device, modelPath: string, configPath?: string): ClipModel {
  const isDir = statSync(modelPath).isDirectory();
  const cfgPath = configPath ?? join(isDir ? modelPath : dirname(modelPath), 'config.json');
  const params = hfClipParams(JSON.parse(readFileSync(cfgPath, 'utf8')));
  const file = isDir ? hfWeightsFile(modelPath) : modelPath;
  const sd = openStateDict(file);
  try {
    return loadClip(device, sd, params, file);
  } finally {
    sd.close?.();
  }
}
