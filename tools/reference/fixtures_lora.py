"""LoRA fixtures for the tiny model (tests/fixtures/lora/, checked by tests/test_lora.c).

Two random LoRA files for tools/tiny-model, in the formats users bring:
  tiny_kohya.safetensors  kohya/A1111: every linear and conv layer of the UNet
                          (LoCon: 3x3 down, 1x1 up on the convs) and of the text
                          encoder, "lora_unet_*" / "lora_te_*" + .lora_down.weight /
                          .lora_up.weight / .alpha, fp16, ranks 2..4, alpha != rank
  tiny_peft.safetensors   diffusers/PEFT: "unet.*.lora_A.weight" / ".lora_B.weight" on
                          the attention projections, "text_encoder.*" on self_attn, fp32,
                          no alpha (alpha = r)
and the reference run with each merged, made with torch/diffusers:
  <name>_context.npy, <name>_uncond.npy, <name>_latent.npy   (as fixtures_pipeline_tiny.py)
  tiny_peft_alpha.safetensors  the PEFT layers again with diffusers' "lora_adapter_metadata"
                          (unet.lora_alpha 8, text_encoder.lora_alpha 2, r 4): alpha from there
Cases: kohya at scale 0.8, peft at scale 1, both together (kohya 0.5 + peft 0.7), and
peft_alpha at scale 1.

SD2 (`python fixtures_lora.py sd2` makes only these): the tiny SD2 model of
tests/fixtures/ckpt (sd2/: a 2-layer CLIPTextModel converted from open_clip, the
penultimate-layer path of sd2.ckpt's 3 resblocks; a UNet with linear proj_in/out,
as SD2's), which has no tokenizer vocabulary, so the runs are module calls:
  sd2_kohya.safetensors, sd2_peft.safetensors   the same two kinds of LoRA for it
  sd2_<name>_context.npy   text encoder output [3,77,32] for ckpt/clip_ids.npy, merged
  sd2_x.npy                a UNet input [1,4,8,8] (t = 500 for every run)
  sd2_<name>_unet.npy      the merged UNet's output for sd2_x, t, the first context row
  sd2_none_unet.npy        the same without a LoRA
Runs: kohya at 0.8, peft at 1.

The merge W += scale * alpha/r * up @ down is done here in torch on the fp32 model.
The kohya key -> module mapping is diffusers' own converter
(diffusers.loaders.lora_conversion_utils, then the PEFT renaming of
diffusers.utils.state_dict_utils), so the C mapping is checked against an
independent one. (diffusers' load_lora_weights needs the peft package, which the
reference environment does not have; this is the same arithmetic PEFT's merge does.)
"""
import json
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fixtures_pipeline import ddim_scheduler, encode, padded, run_txt2img

MODEL = "tools/tiny-model"
OUT = "tests/fixtures/lora"
PROMPT = "a red circle on the left"
CASE = dict(B=1, steps=8, scale=5.0, seed=3)
RUNS = {"kohya": [("tiny_kohya", 0.8)], "peft": [("tiny_peft", 1.0)],
        "both": [("tiny_kohya", 0.5), ("tiny_peft", 0.7)], "peft_alpha": [("tiny_peft_alpha", 1.0)]}
PEFT_META = {"unet.r": 4, "unet.lora_alpha": 8, "text_encoder.r": 4, "text_encoder.lora_alpha": 2}


def layers(model, types=(torch.nn.Linear, torch.nn.Conv2d)):
    """(module path as the LoRA file names it, module); text encoder paths start "text_model."
    as in transformers' CLIPTextModel state dict, whatever this transformers version nests"""
    te = not hasattr(model, "down_blocks")
    fix = (lambda n: n if n.startswith("text_model.") else "text_model." + n) if te else (lambda n: n)
    return [(fix(n), m) for n, m in model.named_modules() if isinstance(m, types)]


def submodule(model, path):
    try:
        return model.get_submodule(path)
    except AttributeError:   # a CLIPTextModel without the text_model level
        return model.get_submodule(path.removeprefix("text_model."))


def make_kohya(unet, text, g):
    sd = {}
    for prefix, model in (("lora_unet_", unet), ("lora_te_", text)):
        for i, (name, m) in enumerate(layers(model)):
            r = 2 + i % 3
            w = m.weight
            if w.dim() == 4:   # LoCon: down carries the kernel, up is 1x1
                down = torch.randn(r, w.shape[1], w.shape[2], w.shape[3], generator=g)
                up = torch.randn(w.shape[0], r, 1, 1, generator=g)
            else:
                down = torch.randn(r, w.shape[1], generator=g)
                up = torch.randn(w.shape[0], r, generator=g)
            k = prefix + name.replace(".", "_")
            fan = down[0].numel()
            sd[k + ".lora_down.weight"] = (down / fan ** 0.5).half()
            sd[k + ".lora_up.weight"] = (up * 0.2 * w.std() * fan ** 0.5 / r ** 0.5).half()
            sd[k + ".alpha"] = torch.tensor(float(r) / 2 + 0.5).half()
    return sd


def make_peft(unet, text, g):
    sd = {}
    for prefix, model, keep in (("unet.", unet, ("to_q", "to_k", "to_v", "to_out.0")),
                                ("text_encoder.", text, ("q_proj", "k_proj", "v_proj", "out_proj"))):
        for name, m in layers(model, torch.nn.Linear):
            if not name.endswith(keep):
                continue
            w, r = m.weight, 4
            sd[prefix + name + ".lora_A.weight"] = torch.randn(r, w.shape[1], generator=g) / w.shape[1] ** 0.5
            sd[prefix + name + ".lora_B.weight"] = torch.randn(w.shape[0], r, generator=g) * 0.3 * w.std()
    return sd


def kohya_to_modules(sd):
    """kohya file -> {('unet'|'text_encoder', module path): (down, up, alpha)} via diffusers' converters"""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft, convert_state_dict_to_peft
    alphas_kohya = {k[:-len(".alpha")]: v.float().item() for k, v in sd.items() if k.endswith(".alpha")}
    downs = {k[:-len(".lora_down.weight")]: v for k, v in sd.items() if k.endswith(".lora_down.weight")}
    conv, _ = _convert_non_diffusers_lora_to_diffusers(dict(sd))
    unet_sd = convert_unet_state_dict_to_peft({k[5:]: v for k, v in conv.items() if k.startswith("unet.")})
    te_sd = convert_state_dict_to_peft({k[13:]: v for k, v in conv.items() if k.startswith("text_encoder.")})
    out = {}
    for comp, csd in (("unet", unet_sd), ("text_encoder", te_sd)):
        for k, down in csd.items():
            if not k.endswith(".lora_A.weight"):
                continue
            mod = k[:-len(".lora_A.weight")]
            up = csd[mod + ".lora_B.weight"]
            # alpha: that of the kohya key whose down is this very tensor object
            kname = next(n for n, d in downs.items() if d is down)
            out[(comp, mod)] = (down, up, alphas_kohya[kname])
    assert len(out) == len(downs), (len(out), len(downs))
    return out


def peft_to_modules(sd, meta=None):
    """PEFT keys -> modules; alpha = r, or the component's lora_alpha of the metadata"""
    out = {}
    for k, down in sd.items():
        if k.endswith(".lora_A.weight"):
            comp, mod = k.split(".", 1)
            mod = mod[:-len(".lora_A.weight")]
            alpha = float(meta[comp + ".lora_alpha"]) if meta else float(down.shape[0])
            out[(comp, mod)] = (down, sd[k.replace("lora_A", "lora_B")], alpha)
    return out


def merge_(models, mods, scale):
    with torch.no_grad():
        for (comp, mod), (down, up, alpha) in mods.items():
            w = submodule(models[comp], mod).weight
            r = down.shape[0]
            delta = up.float().reshape(up.shape[0], r) @ down.float().reshape(r, -1)
            w += (scale * alpha / r) * delta.reshape(w.shape)


SD2 = "tests/fixtures/ckpt/sd2"
SD2_RUNS = {"kohya": ("sd2_kohya", 0.8), "peft": ("sd2_peft", 1.0)}


def main_sd2():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    torch.set_num_threads(1)
    kw = dict(torch_dtype=torch.float32)

    def load():
        text = CLIPTextModel.from_pretrained(os.path.join(SD2, "text_encoder"), **kw).eval()
        unet = UNet2DConditionModel.from_pretrained(os.path.join(SD2, "unet"), **kw).eval()
        return text, unet
    text, unet = load()
    g = torch.Generator().manual_seed(2)
    save_file(make_kohya(unet, text, g), os.path.join(OUT, "sd2_kohya.safetensors"))
    save_file(make_peft(unet, text, g), os.path.join(OUT, "sd2_peft.safetensors"))
    mods = {"sd2_kohya": kohya_to_modules(load_file(os.path.join(OUT, "sd2_kohya.safetensors"))),
            "sd2_peft": peft_to_modules(load_file(os.path.join(OUT, "sd2_peft.safetensors")))}
    ids = torch.from_numpy(np.load("tests/fixtures/ckpt/clip_ids.npy").astype(np.int64))
    x = torch.randn(1, 4, 8, 8, generator=g)
    np.save(os.path.join(OUT, "sd2_x.npy"), x.numpy())

    def run(text, unet):
        with torch.no_grad():
            c = text(input_ids=ids).last_hidden_state
            return c, unet(x, torch.tensor([500.0]), encoder_hidden_states=c[:1]).sample
    _, eps = run(text, unet)
    np.save(os.path.join(OUT, "sd2_none_unet.npy"), eps.numpy().astype(np.float32))
    for name, (lora, scale) in SD2_RUNS.items():
        text, unet = load()
        merge_(dict(unet=unet, text_encoder=text), mods[lora], scale)
        c, eps = run(text, unet)
        np.save(os.path.join(OUT, f"sd2_{name}_context.npy"), c.numpy().astype(np.float32))
        np.save(os.path.join(OUT, f"sd2_{name}_unet.npy"), eps.numpy().astype(np.float32))
        print(f"sd2_{name}: {len(mods[lora])} layers, |eps| max {eps.abs().max():.3f}")


def main():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTextModel
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    kw = dict(torch_dtype=torch.float32)

    def load():
        text = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder"), **kw).eval()
        unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet"), **kw).eval()
        return text, unet
    text, unet = load()
    vae = AutoencoderKL.from_pretrained(os.path.join(MODEL, "vae"), **kw).eval()
    g = torch.Generator().manual_seed(0)
    save_file(make_kohya(unet, text, g), os.path.join(OUT, "tiny_kohya.safetensors"))
    peft = make_peft(unet, text, g)
    save_file(peft, os.path.join(OUT, "tiny_peft.safetensors"))
    save_file({k: v * 0.5 for k, v in peft.items()}, os.path.join(OUT, "tiny_peft_alpha.safetensors"),
              metadata={"format": "pt", "lora_adapter_metadata": json.dumps(PEFT_META, indent=2)})
    mods = {"tiny_kohya": kohya_to_modules(load_file(os.path.join(OUT, "tiny_kohya.safetensors"))),
            "tiny_peft": peft_to_modules(load_file(os.path.join(OUT, "tiny_peft.safetensors"))),
            "tiny_peft_alpha": peft_to_modules(load_file(os.path.join(OUT, "tiny_peft_alpha.safetensors")),
                                               PEFT_META)}
    tokenizer = SimpleTokenizer()
    for run, loras in RUNS.items():
        text, unet = load()
        models = {"unet": unet, "text_encoder": text}
        for name, scale in loras:
            merge_(models, mods[name], scale)
        empty = encode(text, tokenizer, "", 1)
        c = encode(text, tokenizer, PROMPT, 1)
        c, u = padded(c, empty, empty)
        lat = run_txt2img(CASE, text, unet, vae, ddim_scheduler("epsilon"), c, u)
        for suffix, t in (("context", c), ("uncond", u), ("latent", lat)):
            np.save(os.path.join(OUT, f"{run}_{suffix}.npy"), t.numpy().astype(np.float32))
        print(f"{run}: {len(loras)} LoRA, |latent| max {lat.abs().max():.3f}")
    # the run without LoRA, to show the LoRA changes the result
    text, unet = load()
    c = encode(text, tokenizer, PROMPT, 1)
    np.save(os.path.join(OUT, "none_context.npy"), c.numpy().astype(np.float32))


if __name__ == "__main__":
    import sys
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("all", "sd1"):
        main()
    if which in ("all", "sd2"):
        main_sd2()
