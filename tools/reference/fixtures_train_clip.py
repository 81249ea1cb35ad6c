"""Fixtures for tests/test_train_clip.c: the gradient of every parameter of a
transformers CLIPTextModel (the text encoder tools/train/train_tiny.py trains)
from torch autograd, for ldm/train/clip_train.c.

Two micro encoders, each a case folder tests/fixtures/train/clip/<case>/:
  quick   SD1 style: quick_gelu, vocab 1000, D 16, 2 layers, 2 heads, F 32,
          T = 77 ids (the full context, EOT padding as train_tiny.py's tokenize),
          fp32 weights
  gelu    SD2 style: exact GELU, vocab 300, D 16, 2 layers, 4 heads, F 32,
          T = 20 ids (a short context: position rows 20..76 get no gradient),
          weights stored as fp16 (the trainer must widen them)
Per case:
  text_encoder/config.json, model.safetensors   the model (a diffusers folder
                with only a text encoder; names as transformers 5 writes them)
  grads.safetensors   ids [B,T] (int32), dout [B,T,D] (a fixed random upstream
                gradient R: the loss is L = sum(out * R)), out [B,T,D]
                (last_hidden_state), loss [1], and "grad.<name>" = dL/d<name>
                for every parameter
  params.txt    model.named_parameters() names, in order, one a line
Weights are random with sizes that make every part matter (not the init's
0.02): matrices ~ N(0, 1/fan_in) * 1.5, norm gains 1 + 0.2 N, biases 0.2 N,
embeddings N(0, 0.7). Autograd runs in float64 from the float32 (or fp16-
rounded) weights, and the results are stored as float32: the exact gradient
rounded once, so the test's tolerance measures only the C code's rounding.

  .venv-ref/bin/python tools/reference/fixtures_train_clip.py       (or `make fixtures`)
  .venv-ref/bin/python tools/reference/fixtures_train_clip.py --tiny DIR
      writes the same files for the REAL tiny text encoder (tools/tiny-model/
      text_encoder: vocab 49408, D 64, fp16 weights as trained) and two real
      captions to DIR (not committed), then runs build/tests/test_train_clip DIR
      when it exists (it prints the worst relative error of any gradient).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join("tests", "fixtures", "train", "clip")

CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
               "projection_dim", "bos_token_id", "eos_token_id", "pad_token_id")


def micro_config(vocab, heads, act):
    return dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                layer_norm_eps=1e-5, projection_dim=16, bos_token_id=vocab - 2,
                eos_token_id=vocab - 1, pad_token_id=vocab - 1)


def randomize_(model, g):
    """Weights of a size that lets every block matter (see the docstring)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 1.5 / p.shape[1] ** 0.5)


def caption_ids(rows, T, sot, eot):
    """[SOT] + ids + [EOT], padded with EOT to T (train_tiny.py's tokenize)."""
    out = np.full((len(rows), T), eot, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r) + 2] = [sot] + list(r) + [eot]
    return out


def write_case(case_dir, model, cfg, ids, g, fp16):
    """The model folder, the inputs, torch's output and every gradient."""
    from transformers import CLIPTextModel
    os.makedirs(os.path.join(case_dir, "text_encoder"), exist_ok=True)
    if fp16:   # the file holds fp16; torch computes with exactly those values
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    names = [n for n, _ in model.named_parameters()]
    state = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    if fp16:
        state = {n: t.half() for n, t in state.items()}
    save_file(state, os.path.join(case_dir, "text_encoder", "model.safetensors"))
    conf = {k: cfg[k] for k in CONFIG_KEYS}
    conf["architectures"] = ["CLIPTextModel"]
    conf["model_type"] = "clip_text_model"
    with open(os.path.join(case_dir, "text_encoder", "config.json"), "w") as f:
        json.dump(conf, f, indent=1)
    with open(os.path.join(case_dir, "params.txt"), "w") as f:
        f.write("".join(n + "\n" for n in names))

    # float64 autograd from the stored weights: L = sum(out * R)
    m64 = CLIPTextModel(model.config).double().eval()
    m64.load_state_dict({n: t.double() for n, t in state.items()}, strict=False)
    ids_t = torch.from_numpy(ids)
    out = m64(input_ids=ids_t).last_hidden_state                      # [B,T,D]
    R = torch.randn(out.shape, generator=g, dtype=torch.float32)
    loss = (out * R.double()).sum()
    grads = torch.autograd.grad(loss, list(m64.parameters()))
    fixture = {"ids": ids_t.to(torch.int32), "dout": R, "out": out.detach().float(),
               "loss": loss.detach().reshape(1).float()}
    for (n, _), gr in zip(m64.named_parameters(), grads):
        fixture["grad." + n] = gr.float().contiguous()
    save_file(fixture, os.path.join(case_dir, "grads.safetensors"))

    # torch's own float32 gradients, for the record (not stored)
    m32 = CLIPTextModel(model.config).float().eval()
    m32.load_state_dict({n: t.float() for n, t in state.items()}, strict=False)
    out32 = m32(input_ids=ids_t).last_hidden_state
    g32 = torch.autograd.grad((out32 * R).sum(), list(m32.parameters()))
    return worst_relative(g32, grads)


def worst_relative(got, ref):
    """Max-abs error over max |ref| per tensor, the worst of all tensors. The
    key bias has an exactly zero gradient (softmax is shift-invariant along a
    row, and q.b_k shifts the whole row), so each tensor's scale is floored at
    1e-2 of the largest gradient of the model (as tests/test_train_clip.c does)."""
    floor = 1e-2 * max(float(r.abs().max()) for r in ref)
    return max(float((a.double() - r.double()).abs().max()) / max(float(r.abs().max()), floor)
               for a, r in zip(got, ref))


def micro_cases():
    from transformers import CLIPTextConfig, CLIPTextModel
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    g = torch.Generator().manual_seed(20240519)
    for case, vocab, heads, act, T, fp16 in [("quick", 1000, 2, "quick_gelu", 77, False),
                                            ("gelu", 300, 4, "gelu", 20, True)]:
        cfg = micro_config(vocab, heads, act)
        model = CLIPTextModel(CLIPTextConfig(**cfg))
        randomize_(model, g)
        body = torch.randint(0, vocab - 2, (2, 9), generator=g).numpy()
        body[1, 6] = body[1, 2]                      # a repeated token: its rows add up
        ids = caption_ids([body[0, :4], body[1, :9]], T, vocab - 2, vocab - 1)
        worst = write_case(os.path.join(OUT, case), model, cfg, ids, g, fp16)
        print(f"fixtures_train_clip: {case}: torch float32 vs float64 gradients, worst "
              f"relative error {worst:.2e}")
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"fixtures_train_clip: {total / 1024:.0f} KB in {OUT}")


def tiny_case(case_dir):
    """The real tiny text encoder (tools/tiny-model) on two real captions."""
    from transformers import CLIPTextModel
    sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
    import train_tiny
    model = CLIPTextModel.from_pretrained(os.path.join(ROOT, "tools", "tiny-model",
                                                       "text_encoder")).float()
    ids = train_tiny.tokenize(["a red circle", "two blue squares and a green triangle"])
    g = torch.Generator().manual_seed(7)
    worst = write_case(case_dir, model, train_tiny.TEXT_CFG, ids, g, fp16=True)
    print(f"fixtures_train_clip: tiny: torch float32 vs float64 gradients, worst relative "
          f"error {worst:.2e}")
    test = os.path.join(ROOT, "build", "tests", "test_train_clip")
    if os.path.exists(test):
        subprocess.run([test, case_dir], cwd=ROOT, check=False)
    else:
        print(f"fixtures_train_clip: {test} not built: run it on {case_dir} yourself")


if __name__ == "__main__":
    if "--tiny" in sys.argv:
        i = sys.argv.index("--tiny")
        tiny_case(sys.argv[i + 1] if i + 1 < len(sys.argv) else "/tmp/ldm_train_clip_tiny")
    else:
        micro_cases()
