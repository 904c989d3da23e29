// Loading VAE decoder weights from either checkpoint layout:
//  - diffusers `vae/diffusion_pytorch_model.safetensors`: our parameter names (decoder.up_blocks.0.resnets.1.conv1.weight);
//  - Black Forest Labs `ae.safetensors`: decoder.mid.block_1, decoder.up.{level}.block.{j}, 1x1-conv attention.
// One table maps a diffusers key to its BFL key. Keys of the encoder side (encoder.*, quant_conv.*) are ignored;
// any other key the model does not have, any parameter the file lacks, and any shape that differs fail together,
// in one error that names the file and lists every fault.
import type { Device } from '../../device/device.ts';
import { SafetensorsReader, ShardedSafetensors, stToFloat32, type TensorSource } from '../../io/safetensors.ts';
import { sameShape } from '../../tensor/shape.ts';
import { Tensor } from '../../tensor/tensor.ts';
import type { Module, Parameter } from './nn.ts';

export type VaeLayout = 'diffusers' | 'bfl';

/**
 * diffusers key -> BFL key. `levels` is len(block_out_channels): diffusers numbers up blocks from the
 * latent side (up_blocks.0 is the deepest), BFL by resolution level (up.{levels-1} is the deepest).
 */
const BFL_RULES: [RegExp, (m: RegExpMatchArray, levels: number) => string][] = [
  [/^decoder\.mid_block\.resnets\.(\d+)\.(.*)$/, (m) => `decoder.mid.block_${Number(m[1]) + 1}.${resnet(m[2]!)}`],
  [/^decoder\.mid_block\.attentions\.0\.group_norm\.(.*)$/, (m) => `decoder.mid.attn_1.norm.${m[1]}`],
  [/^decoder\.mid_block\.attentions\.0\.to_([qkv])\.(.*)$/, (m) => `decoder.mid.attn_1.${m[1]}.${m[2]}`],
  [/^decoder\.mid_block\.attentions\.0\.to_out\.0\.(.*)$/, (m) => `decoder.mid.attn_1.proj_out.${m[1]}`],
  [/^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$/, (m, n) => `decoder.up.${n - 1 - Number(m[1])}.block.${m[2]}.${resnet(m[3]!)}`],
  [/^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$/, (m, n) => `decoder.up.${n - 1 - Number(m[1])}.upsample.${m[2]}`],
  [/^decoder\.conv_norm_out\.(.*)$/, (m) => `decoder.norm_out.${m[1]}`],
  [/^(decoder\.conv_in|decoder\.conv_out|post_quant_conv)\.(.*)$/, (m) => `${m[1]}.${m[2]}`],
];

/** ResnetBlock2D's conv_shortcut is ResnetBlock's nin_shortcut; norm1/conv1/norm2/conv2 keep their names. */
function resnet(rest: string): string {
  return rest.replace(/^conv_shortcut\./, 'nin_shortcut.');
}

/** The BFL key of a diffusers key. */
export function bflKey(diffusersKey: string, levels: number): string {
  for (const [re, to] of BFL_RULES) {
    const m = diffusersKey.match(re);
    if (m) return to(m, levels);
  }
  throw new Error(`no BFL name for VAE key ${diffusersKey}`);
}

/** BFL stores the attention projections as 1x1 convs: [C, C, 1, 1] where diffusers has Linear [C, C]. */
function fileShape(layout: VaeLayout, key: string, shape: readonly number[]): number[] {
  const isAttnLinear = /^decoder\.mid_block\.attentions\.0\.(to_[qkv]|to_out\.0)\.weight$/.test(key);
  return layout === 'bfl' && isAttnLinear ? [...shape, 1, 1] : [...shape];
}

/** Faults listed per kind before the error says "... and N more" (a wrong file can have thousands). */
const MAX_LISTED = 64;

/** Keys the decoder never reads: the encoder half of a full AutoencoderKL / AutoEncoder checkpoint. */
const ENCODER_SIDE = /^(encoder\.|quant_conv\.)/;

/** BFL's layout has `decoder.mid.` keys; diffusers' has `decoder.mid_block.`. */
export function detectLayout(names: readonly string[]): VaeLayout {
  return names.some((n) => n.startsWith('decoder.mid.') || n.startsWith('decoder.up.')) ? 'bfl' : 'diffusers';
}

export function openWeights(path: string): TensorSource & { path: string } {
  return path.endsWith('.index.json') ? ShardedSafetensors.open(path) : SafetensorsReader.open(path);
}

/**
 * Fills every parameter of `model` (named as diffusers names them, e.g. `decoder.conv_in.weight`) from
 * `source`, uploading as f32. `file` names the checkpoint in errors. Nothing is uploaded unless the
 * whole file matches.
 */
export function loadVaeWeights(device: Device, model: Module, levels: number, source: TensorSource, file: string): VaeLayout {
  const names = source.names();
  const layout = detectLayout(names);
  const expected = new Map<string, { param: Parameter; shape: number[] }>();
  for (const [key, param] of model.namedParameters()) {
    const name = layout === 'bfl' ? bflKey(key, levels) : key;
    expected.set(name, { param, shape: fileShape(layout, key, param.shape) });
  }
  const missing = [...expected.keys()].filter((n) => !source.has(n));
  const unexpected = names.filter((n) => !expected.has(n) && !ENCODER_SIDE.test(n));
  const mismatched: string[] = [];
  for (const n of names) {
    const want = expected.get(n);
    if (!want) continue;
    const info = source.info(n);
    if (!sameShape(info.shape, want.shape)) mismatched.push(`${n}: file has [${info.shape}], the config needs [${want.shape}]`);
    else if (!['F32', 'F16', 'BF16', 'F64'].includes(info.dtype)) mismatched.push(`${n}: dtype ${info.dtype} is not a float type`);
  }
  if (missing.length + unexpected.length + mismatched.length > 0) {
    const list = (what: string, items: string[]) => {
      const shown = items.slice(0, MAX_LISTED).join('\n    ');
      return items.length === 0 ? '' : `${items.length} ${what}:\n    ${shown}${items.length > MAX_LISTED ? `\n    ... and ${items.length - MAX_LISTED} more` : ''}`;
    };
    const parts = [list('missing key(s)', missing), list('unexpected key(s)', unexpected), list('shape/dtype mismatch(es)', mismatched)].filter(Boolean);
    throw new Error(`${file}: VAE decoder weights (${layout} layout) do not match the config:\n  ${parts.join('\n  ')}`);
  }
  for (const [n, { param }] of expected) {
    const t = source.read(n);
    param.value?.dispose();
    param.value = Tensor.from(device, stToFloat32(t), param.shape, 'f32');
  }
  return layout;
}
