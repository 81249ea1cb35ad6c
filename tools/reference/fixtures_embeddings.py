"""Textual-inversion fixtures for the tiny model (tests/fixtures/embeddings/,
checked by tests/test_embeddings.c).

Embedding files for tools/tiny-model's text encoder (width 64), one per format:
  tinystyle.pt           AUTOMATIC1111 .pt: string_to_param {"*": [2,64]}, name, step, ...
  shapey.safetensors     A1111 safetensors: emb_params [1,64]
  wide.safetensors       one set per text encoder: clip_l [3,64] and clip_g [3,32]
  other.safetensors      emb_params [1,768]: an SD1 embedding, skipped for this model
and the prompt contexts with the embeddings in place ([1,77,64] per prompt):
  <case>_context.npy, <case>_uncond.npy

The vectors are read back by diffusers' own textual-inversion reader
(load_textual_inversion_state_dicts, _retrieve_tokens_and_embeddings) and
appended to the text encoder's token embedding as load_textual_inversion does
(resize_token_embeddings, new rows at the end); a word equal to the file name
becomes the new ids. (load_textual_inversion itself wants an HF tokenizer,
which the tiny model does not ship.) Prompts go through the A1111 weighting of
fixtures_pipeline.py.

SD2 (`python fixtures_embeddings.py sd2` makes only these), in sd2/: embeddings
for the tiny SD2 model of tests/fixtures/ckpt (text width 32, 128 token ids, no
tokenizer vocabulary, so the ids are written out):
  sd2style.pt            A1111 .pt: string_to_param {"*": [2,32]}
  sd2shape.safetensors   A1111 safetensors: emb_params [1,32]
  sd2wide.safetensors    per text encoder: clip_h [2,32] (SD2's OpenCLIP-H slot) and clip_l [2,64]
  sd1only.safetensors    emb_params [1,768]: skipped for this model
  sd2_context.npy        sd2/'s CLIPTextModel output [2,77,32] for SD2_ROWS below, the
                         placeholders of each word taking the new rows (appended in file-name order)
"""
import os

import numpy as np
import torch
from safetensors.torch import save_file

from fixtures_pipeline import encode

MODEL = "tools/tiny-model"
OUT = "tests/fixtures/embeddings"
CASES = {
    "plain": ("a tinystyle circle on the left", "shapey"),
    "weighted": ("(tinystyle:1.3) square, wide, [shapey] triangle", "blurry wide"),
    "break": ("Tinystyle BREAK a blue square next to shapey", ""),
}


def write_files(g):
    os.makedirs(OUT, exist_ok=True)
    v = lambda n, d: torch.randn(n, d, generator=g) * 0.02
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v(2, 64)},
                "name": "tinystyle", "step": 500, "sd_checkpoint": None, "sd_checkpoint_name": None},
               os.path.join(OUT, "tinystyle.pt"))
    save_file({"emb_params": v(1, 64)}, os.path.join(OUT, "shapey.safetensors"))
    save_file({"clip_l": v(3, 64), "clip_g": v(3, 32)}, os.path.join(OUT, "wide.safetensors"))
    save_file({"emb_params": v(1, 768)}, os.path.join(OUT, "other.safetensors"))


def read_vectors(name):
    """the vectors of one file, through diffusers' textual-inversion reader"""
    from diffusers.loaders.textual_inversion import (TextualInversionLoaderMixin,
                                                     load_textual_inversion_state_dicts)
    path = os.path.join(OUT, name)
    sd = load_textual_inversion_state_dicts([path])[0]
    if "clip_l" in sd:   # diffusers reads these per text encoder (SDXL): the width-64 one here
        sd = {"clip_l": sd["clip_l"]}

    class NoVocab:
        def get_vocab(self):
            return {}
    _, emb = TextualInversionLoaderMixin._retrieve_tokens_and_embeddings([None], [sd], NoVocab())
    return emb[0].reshape(-1, 64).float()


class TokenizerWithEmbeddings:
    """SimpleTokenizer whose encode() gives a word equal to an embedding name its new ids"""
    def __init__(self, tok, ids):
        self.tok, self.ids = tok, ids

    def encode(self, text):
        out = []
        import re
        for part in re.split(r"([A-Za-z0-9_\x80-\uffff]+)", text):
            if part.lower() in self.ids:
                out += self.ids[part.lower()]
            elif part:
                out += self.tok.encode(part)
        return out


def main():
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTextModel
    torch.set_num_threads(1)
    write_files(torch.Generator().manual_seed(0))
    text = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder"),
                                         torch_dtype=torch.float32).eval()
    V = text.get_input_embeddings().weight.shape[0]
    vecs = {n: read_vectors(f) for n, f in (("tinystyle", "tinystyle.pt"),
                                            ("shapey", "shapey.safetensors"),
                                            ("wide", "wide.safetensors"))}
    ids, rows = {}, []
    for n, v in vecs.items():
        ids[n] = list(range(V + sum(len(r) for r in rows), V + sum(len(r) for r in rows) + len(v)))
        rows.append(v)
    text.resize_token_embeddings(V + sum(len(r) for r in rows))
    with torch.no_grad():
        text.get_input_embeddings().weight[V:] = torch.cat(rows)
    tok = TokenizerWithEmbeddings(SimpleTokenizer(), ids)
    for name, (prompt, negative) in CASES.items():
        c = encode(text, tok, prompt, 1)
        u = encode(text, tok, negative, 1)
        np.save(os.path.join(OUT, f"{name}_context.npy"), c.numpy().astype(np.float32))
        np.save(os.path.join(OUT, f"{name}_uncond.npy"), u.numpy().astype(np.float32))
        print(f"{name}: context {tuple(c.shape)}")


SD2_MODEL = "tests/fixtures/ckpt/sd2"
SD2_OUT = os.path.join(OUT, "sd2")
# Two id rows (repeated in tests/test_embeddings.c): SOT 126, plain ids, the
# embedding words (all their vectors), EOT 127, then SD2's padding 0.
SD2_ROWS = [[5, "sd2style", 9, "sd2shape", 17, "sd2wide"],
            ["sd2wide", 40, 41, "sd2style", "sd2shape", 60]]


def sd2_vectors(name, width):
    """diffusers' reader as in read_vectors, keeping the one tensor of this width"""
    from diffusers.loaders.textual_inversion import (TextualInversionLoaderMixin,
                                                     load_textual_inversion_state_dicts)
    sd = load_textual_inversion_state_dicts([os.path.join(SD2_OUT, name)])[0]
    if "clip_h" in sd:
        sd = {k: v for k, v in sd.items() if v.shape[-1] == width}

    class NoVocab:
        def get_vocab(self):
            return {}
    _, emb = TextualInversionLoaderMixin._retrieve_tokens_and_embeddings([None], [sd], NoVocab())
    return emb[0].reshape(-1, width).float()


def main_sd2():
    from transformers import CLIPTextModel
    torch.set_num_threads(1)
    os.makedirs(SD2_OUT, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    v = lambda n, d: torch.randn(n, d, generator=g) * 0.5
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": v(2, 32)},
                "name": "sd2style", "step": 100}, os.path.join(SD2_OUT, "sd2style.pt"))
    save_file({"emb_params": v(1, 32)}, os.path.join(SD2_OUT, "sd2shape.safetensors"))
    save_file({"clip_h": v(2, 32), "clip_l": v(2, 64)}, os.path.join(SD2_OUT, "sd2wide.safetensors"))
    save_file({"emb_params": v(1, 768)}, os.path.join(SD2_OUT, "sd1only.safetensors"))
    text = CLIPTextModel.from_pretrained(os.path.join(SD2_MODEL, "text_encoder"),
                                         torch_dtype=torch.float32).eval()
    V, D = text.get_input_embeddings().weight.shape
    ids, rows = {}, []
    for n, f in (("sd2shape", "sd2shape.safetensors"), ("sd2style", "sd2style.pt"),
                 ("sd2wide", "sd2wide.safetensors")):   # file-name order
        vec = sd2_vectors(f, D)
        start = V + sum(len(r) for r in rows)
        ids[n] = list(range(start, start + len(vec)))
        rows.append(vec)
    text.resize_token_embeddings(V + sum(len(r) for r in rows))
    with torch.no_grad():
        text.get_input_embeddings().weight[V:] = torch.cat(rows)
    batch = []
    for row in SD2_ROWS:
        t = [126]
        for item in row:
            t += ids[item] if isinstance(item, str) else [item]
        batch.append(t + [127] + [0] * (77 - len(t) - 1))
    with torch.no_grad():
        c = text(input_ids=torch.tensor(batch)).last_hidden_state
    np.save(os.path.join(OUT, "sd2_context.npy"), c.numpy().astype(np.float32))
    print(f"sd2: context {tuple(c.shape)}, {len(rows)} embeddings")


if __name__ == "__main__":
    import sys
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("all", "sd1"):
        main()
    if which in ("all", "sd2"):
        main_sd2()
