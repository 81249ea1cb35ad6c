"""PLMS at few steps on the tiny model: is it PLMS or ldm.c? (docs/07-pipeline.md)

Draws "a red circle on the left" (seed 1, scale 7.5, CPU generator, B=1) with
the tiny model (tools/tiny-model) through diffusers' StableDiffusionPipeline
with DDIMScheduler and with PNDMScheduler(skip_prk_steps=True) -- the PLMS of
CompVis plms.py: a pseudo improved Euler first step, then the 2-, 3- and
4-step Adams-Bashforth combinations of eps -- at 4, 5, 6, 10, 20 and 50
steps, and prints the final latent's spread and the pixels' mean. Then, if
build/sd exists, runs `sd txt2img --plms --schedule leading` with the same
settings and prints how far its pixels are from diffusers'.

    .venv-ref/bin/python tools/reference/plms_low_steps.py
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from fixtures_pipeline import ddim_scheduler, encode, padded, pndm_scheduler, run_txt2img  # noqa: E402

MODEL, PROMPT, SEED, SCALE = "tools/tiny-model", "a red circle on the left", 1, 7.5


def main():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from open_clip.tokenizer import SimpleTokenizer
    from PIL import Image
    from transformers import CLIPTextModel
    torch.set_num_threads(1)
    kw = dict(torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder"), **kw).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet"), **kw).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(MODEL, "vae"), **kw).eval()
    tok = SimpleTokenizer()
    c, u = padded(encode(text, tok, PROMPT, 1), encode(text, tok, "", 1), encode(text, tok, "", 1))
    tmp = tempfile.mkdtemp()
    print("steps  sampler  latent std  |latent| max  pixels mean   ldm.c --plms: max |diff|")
    for steps in (4, 5, 6, 10, 20, 50):
        for name, sched in (("DDIM", ddim_scheduler("epsilon")), ("PLMS", pndm_scheduler())):
            case = dict(B=1, steps=steps, scale=SCALE, seed=SEED)
            lat = run_txt2img(case, text, unet, vae, sched, c, u)
            with torch.no_grad():
                img = vae.decode(lat / vae.config.scaling_factor).sample
            px = ((img / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1)[0].numpy()
            ours = ""
            if name == "PLMS" and os.path.exists("build/sd"):
                out = os.path.join(tmp, str(steps))
                subprocess.run(["build/sd", "txt2img", "--prompt", PROMPT, "--plms", "--schedule",
                                "leading", "--rng", "cpu", "--seed", str(SEED), "--scale",
                                str(SCALE), "--n_samples", "1", "--n_iter", "1", "--ddim_steps",
                                str(steps), "--skip_grid", "--outdir", out],
                               check=True, stderr=subprocess.DEVNULL)
                o = np.asarray(Image.open(os.path.join(out, "samples", "00000.png")), np.float32)
                ours = f"{np.abs(o - px).max():.0f}"
            print(f"{steps:5d}  {name:7s}  {lat.std():10.3f}  {lat.abs().max():12.3f}  "
                  f"{px.mean():11.1f}   {ours}", flush=True)


if __name__ == "__main__":
    main()
