"""Run the PyTorch (diffusers) pipeline and dump the intermediates that
`sd txt2img --dump DIR` writes, under the same names, so `sd compare` can
line the two folders up and name the first tensor that diverges.

  .venv-ref/bin/python tools/reference/dump_torch.py --ckpt MODEL_DIR \
      --prompt "a cat" --H 64 --W 64 --n_samples 1 --ddim_steps 5 --seed 42 --out dumps/torch
  build/sd txt2img --ckpt MODEL_DIR --prompt "a cat" --H 64 --W 64 --n_samples 1 --n_iter 1 \
      --ddim_steps 5 --seed 42 --rng cpu --dump dumps/c
  build/sd compare dumps/c dumps/torch

Names written (the same as ldm/pipeline.c and the modules' ldm_dump calls):
  prompt/text_model.*, negative/text_model.*   CLIP layers of each prompt's chunks
  context, uncond_context                      [1,77k,D] weighted prompt embeddings
  noise                                        [B,4,h,w] initial noise (CPU generator)
  stepNNN/unet_in, stepNNN/unet.<module>, stepNNN/unet_out   UNet call of step NNN
  stepNNN/latent                               latent after step NNN
  latent                                       final latent
  imageK/vae.<module>, imageK/image            VAE decoder of image K (one at a time)

Sampler: DDIM only (diffusers DDIMScheduler, leading spacing, steps_offset 1,
eta 0), which equals the CompVis DDIM of `sd txt2img` when the step count
divides 1000; --plms maps to PNDMScheduler(skip_prk_steps) whose first step
differs from CompVis PLMS (a known difference, not a bug). Model: a diffusers
folder (unet/ vae/ text_encoder/); prompts are tokenized with open_clip's
tokenizer and weighted like A1111 (see fixtures_pipeline.py). Only the CPU
generator (--rng cpu on our side).
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_pipeline import chunks_of, ddim_scheduler  # noqa: E402

STATE = {"prefix": "", "out": None}


def save(name, t):
    path = os.path.join(STATE["out"], STATE["prefix"] + name + ".npy")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(t, (tuple, list)):
        t = t[0]
    if hasattr(t, "sample"):
        t = t.sample
    np.save(path, t.detach().float().cpu().numpy())


def hook_all(module, root, names):
    """forward hooks writing <root>.<module path> for every module in `names`"""
    handles = []
    for path, m in module.named_modules():
        if path in names:
            full = f"{root}.{path}"
            handles.append(m.register_forward_hook(lambda mod, i, o, full=full: save(full, o)))
    return handles


def unet_names(unet):
    names = {"conv_in", "time_embedding", "conv_out", "mid_block"}
    for path, _ in unet.named_modules():
        parts = path.split(".")
        if parts[0] in ("down_blocks", "up_blocks") and len(parts) == 2:
            names.add(path)
        if parts[0] in ("down_blocks", "up_blocks", "mid_block") and len(parts) in (3, 4) and \
                parts[-2] in ("resnets", "attentions", "downsamplers", "upsamplers"):
            names.add(path)
    return names


def vae_decoder_names(vae):
    names = {"post_quant_conv", "decoder", "decoder.conv_in", "decoder.mid_block"}
    for path, _ in vae.named_modules():
        p = path.split(".")
        if p[0] != "decoder" or len(p) < 3:
            continue
        if p[1] == "up_blocks" and (len(p) == 3 or (len(p) == 5 and p[3] in ("resnets", "upsamplers"))):
            names.add(path)   # decoder.up_blocks.i[.resnets.j | .upsamplers.0]
        if p[1] == "mid_block" and len(p) == 4 and p[2] in ("resnets", "attentions"):
            names.add(path)   # decoder.mid_block.resnets.j / attentions.0
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="diffusers model folder")
    ap.add_argument("--prompt", default="a painting of a virus monster playing guitar")
    ap.add_argument("--negative-prompt", default="")
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--W", type=int, default=512)
    ap.add_argument("--n_samples", type=int, default=1)
    ap.add_argument("--ddim_steps", type=int, default=50)
    ap.add_argument("--scale", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--clip-skip", type=int, default=1)
    ap.add_argument("--prediction", choices=["epsilon", "v_prediction"], default="epsilon")
    ap.add_argument("--out", required=True, help="dump folder")
    a = ap.parse_args()

    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTextModel

    STATE["out"] = a.out
    os.makedirs(a.out, exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(a.ckpt, subfolder="unet").float().eval()
    vae = AutoencoderKL.from_pretrained(a.ckpt, subfolder="vae").float().eval()
    text = CLIPTextModel.from_pretrained(a.ckpt, subfolder="text_encoder").float().eval()
    sd2 = text.config.hidden_act == "gelu"
    pad = 0 if sd2 else 49407
    tok = SimpleTokenizer()
    inner = getattr(text, "text_model", text)
    clip_names = {"embeddings", "final_layer_norm"} | {
        f"encoder.layers.{i}" for i in range(len(inner.encoder.layers))}
    for path, m in inner.named_modules():
        if path in clip_names:
            m.register_forward_hook(lambda mod, i, o, n=f"text_model.{path}": save(n, o))

    def encode(prompt, role):
        STATE["prefix"] = role
        ch = chunks_of(prompt, tok, pad)
        ids = torch.tensor([c[0] for c in ch])
        mult = torch.tensor([c[1] for c in ch]).unsqueeze(-1)
        with torch.no_grad():
            o = text(ids, output_hidden_states=True)
            z = inner.final_layer_norm(o.hidden_states[-a.clip_skip]) if a.clip_skip > 1 \
                else o.last_hidden_state
        STATE["prefix"] = ""
        out = []
        for k in range(len(ch)):   # A1111 "Original" emphasis per chunk
            zk = z[k:k + 1]
            before = zk.mean()
            zk = zk * mult[k:k + 1]
            out.append(zk * (before / zk.mean()))
        return torch.cat(out, dim=1)

    c = encode(a.prompt, "prompt/")
    u = encode(a.negative_prompt, "negative/")
    if c.shape[1] != u.shape[1]:
        e = encode("", "empty/")
        while c.shape[1] < u.shape[1]:
            c = torch.cat([c, e], 1)
        while u.shape[1] < c.shape[1]:
            u = torch.cat([u, e], 1)
    save("context", c)
    save("uncond_context", u)

    B, f = a.n_samples, 2 ** (len(vae.config.block_out_channels) - 1)
    g = torch.Generator("cpu").manual_seed(a.seed)
    noise = torch.randn((B, unet.config.in_channels, a.H // f, a.W // f), generator=g)
    save("noise", noise)

    hook_all(unet, "unet", unet_names(unet))
    unet.register_forward_pre_hook(lambda m, args, kw: save("unet_in", args[0] if args else kw["sample"]),
                                   with_kwargs=True)
    unet.register_forward_hook(lambda m, i, o: save("unet_out", o))
    STATE["prefix"] = "step000/"

    def on_step(pipe, i, t, kw):
        STATE["prefix"] = f"step{i:03d}/"
        save("latent", kw["latents"])
        STATE["prefix"] = f"step{i + 1:03d}/"
        return kw

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet,
                                   scheduler=ddim_scheduler(a.prediction), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        lat = pipe(prompt_embeds=c, negative_prompt_embeds=u, height=a.H, width=a.W,
                   num_inference_steps=a.ddim_steps, guidance_scale=a.scale,
                   num_images_per_prompt=B, eta=0.0, latents=noise, output_type="latent",
                   callback_on_step_end=on_step).images
    STATE["prefix"] = ""
    save("latent", lat)
    hook_all(vae, "vae", vae_decoder_names(vae))
    with torch.no_grad():
        for b in range(B):
            STATE["prefix"] = f"image{b}/"
            img = vae.decode(lat[b:b + 1] / vae.config.scaling_factor).sample
            save("image", img)
    STATE["prefix"] = ""
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
