// The few torch.nn layers the VAE decoder is built from, as in PyTorch: a module's parameters and
// submodules are its fields, named as the checkpoint names them, so `namedParameters()` yields exactly
// the state-dict keys (`decoder.up_blocks.0.resnets.1.conv1.weight`). Arrays are ModuleLists (`.0`),
// null fields are absent modules. Parameters start empty and are filled by the loader.
import * as ops from '../../tensor/ops.ts';
import type { Tensor } from '../../tensor/tensor.ts';

export class Parameter {
  value: Tensor | null = null;
  constructor(readonly shape: readonly number[]) {}

  get tensor(): Tensor {
    if (!this.value) throw new Error(`parameter of shape [${this.shape}] was never loaded`);
    return this.value;
  }
}

export abstract class Module {
  /** [state-dict key, parameter] for every parameter below this module, in field order. */
  namedParameters(prefix = ''): [string, Parameter][] {
    const out: [string, Parameter][] = [];
    const visit = (name: string, v: unknown) => {
      if (v instanceof Parameter) out.push([name, v]);
      else if (v instanceof Module) out.push(...v.namedParameters(`${name}.`));
      else if (Array.isArray(v)) v.forEach((item, i) => visit(`${name}.${i}`, item));
    };
    for (const [key, v] of Object.entries(this)) visit(`${prefix}${key}`, v);
    return out;
  }

  /** Frees every loaded parameter. */
  dispose(): void {
    for (const [, p] of this.namedParameters()) {
      p.value?.dispose();
      p.value = null;
    }
  }
}

/** nn.Conv2d(cin, cout, k, stride 1, padding). weight: [Cout, Cin, k, k], bias: [Cout]. */
export class Conv2d extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter;
  private readonly padding: number;

  constructor(cin: number, cout: number, kernel: number, padding = 0) {
    super();
    this.weight = new Parameter([cout, cin, kernel, kernel]);
    this.bias = new Parameter([cout]);
    this.padding = padding;
  }

  /** x: [B, Cin, Hh, Ww] -> [B, Cout, Hh + 2p - k + 1, Ww + 2p - k + 1] */
  forward(x: Tensor): Tensor {
    return ops.conv2d(x, this.weight.tensor, this.bias.tensor, 1, this.padding);
  }
}

/** nn.GroupNorm(groups, C, eps, affine). weight, bias: [C]. */
export class GroupNorm extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter;
  private readonly groups: number;
  private readonly eps: number;

  constructor(groups: number, channels: number, eps: number) {
    super();
    this.weight = new Parameter([channels]);
    this.bias = new Parameter([channels]);
    this.groups = groups;
    this.eps = eps;
  }

  /** x: [B, C, ...] -> same shape */
  forward(x: Tensor): Tensor {
    return ops.groupNorm(x, this.groups, this.weight.tensor, this.bias.tensor, this.eps);
  }
}

/** nn.Linear(in, out). weight: [out, in], bias: [out]. */
export class Linear extends Module {
  readonly weight: Parameter;
  readonly bias: Parameter;

  constructor(inFeatures: number, outFeatures: number) {
    super();
    this.weight = new Parameter([outFeatures, inFeatures]);
    this.bias = new Parameter([outFeatures]);
  }

  /** x: [..., in] -> [..., out] */
  forward(x: Tensor): Tensor {
    return ops.linear(x, this.weight.tensor, this.bias.tensor);
  }
}

/** f(x), then x.dispose(): chains ops over intermediates the caller owns, freeing each as soon as it is used. */
export function consume(x: Tensor, f: (x: Tensor) => Tensor): Tensor {
  try {
    return f(x);
  } finally {
    x.dispose();
  }
}
