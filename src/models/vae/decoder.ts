// The AutoencoderKL decoder of diffusers (models/autoencoders/vae.py Decoder, unets/unet_2d_blocks.py
// UNetMidBlock2D / UpDecoderBlock2D, resnet.py ResnetBlock2D, upsampling.py Upsample2D, attention_processor.py
// Attention with AttnProcessor2_0), forward only, with diffusers' module and parameter names. Every block
// frees its intermediates as soon as they are used; inputs stay owned by the caller.
import type { VaeConfig } from './config.ts';
import { Conv2d, GroupNorm, Linear, Module, consume } from './nn.ts';
import * as ops from '../../tensor/ops.ts';
import type { Tensor } from '../../tensor/tensor.ts';

/** diffusers builds every decoder norm with eps 1e-6 (resnet_eps, conv_norm_out). */
const EPS = 1e-6;

/** Receives a decoder stage's output by its diffusers module name ('decoder.mid_block'); the tensor is lent, not owned. */
export type StageHook = (name: string, x: Tensor) => void;

/** ResnetBlock2D without time embedding: x + conv2(silu(norm2(conv1(silu(norm1(x)))))), 1x1 shortcut when Cin != Cout. */
export class ResnetBlock2D extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly conv_shortcut: Conv2d | null;

  constructor(cin: number, cout: number, groups: number) {
    super();
    this.norm1 = new GroupNorm(groups, cin, EPS);
    this.conv1 = new Conv2d(cin, cout, 3, 1);
    this.norm2 = new GroupNorm(groups, cout, EPS);
    this.conv2 = new Conv2d(cout, cout, 3, 1);
    this.conv_shortcut = cin !== cout ? new Conv2d(cin, cout, 1, 0) : null;
  }

  /** x: [B, Cin, Hh, Ww] -> [B, Cout, Hh, Ww] */
  forward(x: Tensor): Tensor {
    let h = this.norm1.forward(x); // [B, Cin, Hh, Ww]
    h = consume(h, ops.silu);
    h = consume(h, (t) => this.conv1.forward(t)); // [B, Cout, Hh, Ww]
    h = consume(h, (t) => this.norm2.forward(t));
    h = consume(h, ops.silu);
    h = consume(h, (t) => this.conv2.forward(t));
    if (!this.conv_shortcut) return consume(h, (t) => ops.add(x, t));
    const shortcut = this.conv_shortcut.forward(x); // [B, Cout, Hh, Ww]
    return consume(shortcut, (s) => consume(h, (t) => ops.add(s, t)));
  }
}

/**
 * The mid-block Attention: one head of width C over the Hh*Ww pixels, group norm in front, residual after
 * (heads = C / attention_head_dim = 1, scale 1/sqrt(C), rescale_output_factor 1).
 */
export class Attention extends Module {
  readonly group_norm: GroupNorm;
  readonly to_q: Linear;
  readonly to_k: Linear;
  readonly to_v: Linear;
  /** ModuleList [Linear, Dropout]: only the Linear has weights. */
  readonly to_out: [Linear];

  constructor(channels: number, groups: number) {
    super();
    this.group_norm = new GroupNorm(groups, channels, EPS);
    this.to_q = new Linear(channels, channels);
    this.to_k = new Linear(channels, channels);
    this.to_v = new Linear(channels, channels);
    this.to_out = [new Linear(channels, channels)];
  }

  /** x: [B, C, Hh, Ww] -> [B, C, Hh, Ww] */
  forward(x: Tensor): Tensor {
    const [b, c, hh, ww] = x.shape as [number, number, number, number];
    const normed = this.group_norm.forward(x); // [B, C, Hh, Ww]
    const flat = consume(normed, (t) => t.reshape([b, c, hh * ww]));
    const tokens = consume(flat, (t) => consume(t.transpose(1, 2), (v) => v.contiguous())); // [B, L, C]
    const heads = (lin: Linear) => consume(lin.forward(tokens), (t) => t.unsqueeze(1)); // [B, 1, L, C]
    const q = heads(this.to_q), k = heads(this.to_k), v = heads(this.to_v);
    tokens.dispose();
    let h = ops.attention(q, k, v); // [B, 1, L, C]
    [q, k, v].forEach((t) => t.dispose());
    h = consume(h, (t) => t.reshape([b, hh * ww, c])); // [B, L, C]
    h = consume(h, (t) => this.to_out[0].forward(t));
    h = consume(h, (t) => consume(t.transpose(1, 2), (v) => v.reshape([b, c, hh, ww]))); // [B, C, Hh, Ww]
    return consume(h, (t) => ops.add(t, x));
  }
}

/** UNetMidBlock2D: resnet, (attention, resnet) once. */
export class UNetMidBlock2D extends Module {
  readonly attentions: Attention[];
  readonly resnets: ResnetBlock2D[];

  constructor(channels: number, groups: number, addAttention: boolean) {
    super();
    this.attentions = addAttention ? [new Attention(channels, groups)] : [];
    this.resnets = [new ResnetBlock2D(channels, channels, groups), new ResnetBlock2D(channels, channels, groups)];
  }

  /** x: [B, C, Hh, Ww] -> [B, C, Hh, Ww] */
  forward(x: Tensor): Tensor {
    let h = this.resnets[0]!.forward(x);
    if (this.attentions[0]) h = consume(h, (t) => this.attentions[0]!.forward(t));
    return consume(h, (t) => this.resnets[1]!.forward(t));
  }
}

/** Upsample2D(use_conv): nearest 2x, then a 3x3 conv. */
export class Upsample2D extends Module {
  readonly conv: Conv2d;

  constructor(channels: number) {
    super();
    this.conv = new Conv2d(channels, channels, 3, 1);
  }

  /** x: [B, C, Hh, Ww] -> [B, C, 2Hh, 2Ww] */
  forward(x: Tensor): Tensor {
    return consume(ops.upsampleNearest2x(x), (t) => this.conv.forward(t));
  }
}

/** UpDecoderBlock2D: `layers` resnets (the first Cin -> Cout), then an upsampler except in the last block. */
export class UpDecoderBlock2D extends Module {
  readonly resnets: ResnetBlock2D[];
  readonly upsamplers: Upsample2D[];

  constructor(cin: number, cout: number, layers: number, groups: number, addUpsample: boolean) {
    super();
    this.resnets = Array.from({ length: layers }, (_, i) => new ResnetBlock2D(i === 0 ? cin : cout, cout, groups));
    this.upsamplers = addUpsample ? [new Upsample2D(cout)] : [];
  }

  /** x: [B, Cin, Hh, Ww] -> [B, Cout, 2Hh, 2Ww] ([B, Cout, Hh, Ww] in the last block) */
  forward(x: Tensor): Tensor {
    let h = this.resnets[0]!.forward(x);
    for (const resnet of this.resnets.slice(1)) h = consume(h, (t) => resnet.forward(t));
    for (const up of this.upsamplers) h = consume(h, (t) => up.forward(t));
    return h;
  }
}

/** diffusers' Decoder: conv_in, mid_block, up_blocks (block_out_channels reversed), GroupNorm + SiLU, conv_out. */
export class Decoder extends Module {
  readonly conv_in: Conv2d;
  readonly up_blocks: UpDecoderBlock2D[];
  readonly mid_block: UNetMidBlock2D;
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;

  constructor(c: VaeConfig) {
    super();
    const reversed = [...c.block_out_channels].reverse();
    const groups = c.norm_num_groups;
    this.conv_in = new Conv2d(c.latent_channels, reversed[0]!, 3, 1);
    this.up_blocks = reversed.map((cout, i) => new UpDecoderBlock2D(reversed[Math.max(i - 1, 0)]!, cout, c.layers_per_block + 1, groups, i < reversed.length - 1));
    this.mid_block = new UNetMidBlock2D(reversed[0]!, groups, c.mid_block_add_attention);
    this.conv_norm_out = new GroupNorm(groups, c.block_out_channels[0]!, EPS);
    this.conv_out = new Conv2d(c.block_out_channels[0]!, c.out_channels, 3, 1);
  }

  /**
   * z: [B, latent_channels, Hh, Ww] -> [B, out_channels, Hh * 2^(levels-1), Ww * 2^(levels-1)].
   * `hook` sees the output of each stage the golden vectors record (conv_in, mid_block, up_blocks.i, conv_norm_out, conv_out).
   */
  forward(z: Tensor, hook?: StageHook): Tensor {
    const stage = (name: string, x: Tensor) => {
      hook?.(`decoder.${name}`, x);
      return x;
    };
    let h = stage('conv_in', this.conv_in.forward(z)); // [B, C_last, Hh, Ww]
    h = stage('mid_block', consume(h, (t) => this.mid_block.forward(t)));
    this.up_blocks.forEach((block, i) => {
      h = stage(`up_blocks.${i}`, consume(h, (t) => block.forward(t))); // [B, C_i, Hh * 2^(i+1), ...]
    });
    h = stage('conv_norm_out', consume(h, (t) => this.conv_norm_out.forward(t))); // [B, C_0, H, W]
    h = consume(h, ops.silu); // conv_act
    return stage('conv_out', consume(h, (t) => this.conv_out.forward(t))); // [B, out_channels, H, W]
  }
}
