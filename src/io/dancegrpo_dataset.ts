// DanceGRPO's preprocessed prompt dataset (fastvideo/dataset/latent_flux_rl_datasets.py, LatentDataset and
// latent_collate_function): `videos2caption.json` lists {prompt_embed_path, pooled_prompt_embeds_path,
// text_ids, caption}; each names a torch.save file in the sibling folders prompt_embed/,
// pooled_prompt_embeds/, text_ids/. The files hold views of their preprocessing batch's storage
// (torch.save(prompt_embeds[idx])); an item is the view's logical values, as torch.load gives them.
// Only cfg_rate 0 is reproduced (every DanceGRPO FLUX script passes --cfg 0.0; its cfg_rate > 0 branch
// leaves pooled_prompt_embeds and text_ids unbound and raises).
import { readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { loadTorchFile, tensorToContiguousBytes, TorchTensor, type TorchDType } from './torch_pt.ts';

/** Host data: row-major little-endian bytes in the file's dtype (bfloat16 words for DanceGRPO's own files). */
export interface HostTensor {
  dtype: TorchDType;
  shape: number[];
  bytes: Uint8Array;
}

/** One LatentDataset item: (prompt_embed [L, C], pooled_prompt_embeds [P], text_ids [3], caption). */
export interface LatentItem {
  promptEmbed: HostTensor;
  pooledPromptEmbeds: HostTensor;
  /** One row of the [L, 3] zeros table; training repeats it (text_ids.repeat(L, 1)). */
  textIds: HostTensor;
  caption: string;
}

/** latent_collate_function: the items stacked on a new leading batch dim; captions as a list. */
export interface LatentBatch {
  promptEmbeds: HostTensor;
  pooledPromptEmbeds: HostTensor;
  textIds: HostTensor;
  captions: string[];
}

interface IndexEntry {
  prompt_embed_path: string;
  pooled_prompt_embeds_path: string;
  text_ids: string;
  caption: string;
}

const FIELDS = ['prompt_embed_path', 'pooled_prompt_embeds_path', 'text_ids', 'caption'] as const;

export class LatentDataset {
  readonly dir: string;
  readonly index: readonly IndexEntry[];

  /** `path`: the dataset folder or its videos2caption.json (DanceGRPO's --data_json_path). */
  constructor(path: string) {
    const json = statSync(path).isDirectory() ? join(path, 'videos2caption.json') : path;
    this.dir = dirname(json);
    const data: unknown = JSON.parse(readFileSync(json, 'utf8'));
    if (!Array.isArray(data)) throw new Error(`${json}: not a JSON list`);
    data.forEach((item, i) => {
      for (const f of FIELDS) {
        const v = item?.[f];
        if (typeof v !== 'string') throw new Error(`${json}: item ${i} has no string "${f}"`);
        // The index is data too: a file name must stay inside its folder.
        if (f !== 'caption' && (isAbsolute(v) || v.split(/[\\/]/).includes('..'))) throw new Error(`${json}: item ${i} "${f}" leaves its folder`);
      }
    });
    this.index = data as IndexEntry[];
  }

  get length(): number {
    return this.index.length;
  }

  /** Reads item i's three files (as __getitem__ does, on each call). */
  item(i: number): LatentItem {
    const e = this.index[i];
    if (!e) throw new RangeError(`dataset index ${i} out of range (${this.length} items)`);
    return {
      promptEmbed: this.load('prompt_embed', e.prompt_embed_path),
      pooledPromptEmbeds: this.load('pooled_prompt_embeds', e.pooled_prompt_embeds_path),
      textIds: this.load('text_ids', e.text_ids),
      caption: e.caption,
    };
  }

  private load(folder: string, name: string): HostTensor {
    const path = join(this.dir, folder, name);
    const t = loadTorchFile(path);
    if (!(t instanceof TorchTensor)) throw new Error(`${path}: does not hold a single tensor`);
    return { dtype: t.dtype, shape: [...t.shape], bytes: tensorToContiguousBytes(t) };
  }
}

export function latentCollate(items: readonly LatentItem[]): LatentBatch {
  return {
    promptEmbeds: stack(items.map((x) => x.promptEmbed)),
    pooledPromptEmbeds: stack(items.map((x) => x.pooledPromptEmbeds)),
    textIds: stack(items.map((x) => x.textIds)),
    captions: items.map((x) => x.caption),
  };
}

/** torch.stack(dim=0): same dtype and shape required. */
function stack(ts: readonly HostTensor[]): HostTensor {
  const first = ts[0];
  if (!first) throw new Error('cannot collate an empty batch');
  for (const t of ts) {
    if (t.dtype !== first.dtype || t.shape.join() !== first.shape.join()) {
      throw new Error(`cannot stack ${t.dtype} [${t.shape}] with ${first.dtype} [${first.shape}]`);
    }
  }
  const bytes = new Uint8Array(first.bytes.byteLength * ts.length);
  ts.forEach((t, i) => bytes.set(t.bytes, i * first.bytes.byteLength));
  return { dtype: first.dtype, shape: [ts.length, ...first.shape], bytes };
}
