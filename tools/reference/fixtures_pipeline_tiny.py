"""Fixtures for the tiny trained model through the PyTorch pipelines
(tests/fixtures/pipeline/tiny_*.npy, checked by tests/test_pipeline.c).

The model is the committed tools/tiny-model (tools/train/train_tiny.py): a
diffusers folder of fp16 safetensors, loaded here in fp32 with the diffusers /
transformers classes. Same files per case as fixtures_pipeline.py:
  tiny_<case>_context.npy, tiny_<case>_uncond.npy   prompt embeddings [1,77,64]
  tiny_<case>_latent.npy                            final latent [B,4,8,8]
  tiny_<case>_image.npy                             decoded uint8 pixels [B,64,64,3]

Cases (parameters repeated in tests/test_pipeline.c):
  ddim_en   StableDiffusionPipeline + DDIMScheduler (leading, offset 1, eta 0),
            "a red circle on the left", B=2, 20 steps, scale 5, seed 1 (make demo)
  ddim_ja   the same with the Japanese prompt of make demo, "右に青い四角"
  euler_a   k-diffusion sample_euler_ancestral, noise from the CPU generator,
            an English two-object prompt with a negative prompt, 15 steps, seed 4
Prompt ids come from open_clip's SimpleTokenizer, as in fixtures_pipeline.py.
"""
import os

import numpy as np
import torch

from fixtures_pipeline import OUT, ddim_scheduler, encode, padded, run_kdiffusion, run_txt2img

MODEL = "tools/tiny-model"

CASES = {
    "ddim_en": dict(prompt="a red circle on the left", negative="", B=2, steps=20, scale=5.0,
                    seed=1, sampler="ddim"),
    "ddim_ja": dict(prompt="右に青い四角", negative="", B=2, steps=20, scale=5.0, seed=1,
                    sampler="ddim"),
    "euler_a": dict(prompt="a small blue square above a yellow triangle", negative="green",
                    B=1, steps=15, scale=5.0, seed=4, sampler="euler_a"),
}


def main():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTextModel
    torch.set_num_threads(1)
    kw = dict(torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(os.path.join(MODEL, "text_encoder"), **kw).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(MODEL, "unet"), **kw).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(MODEL, "vae"), **kw).eval()
    scaling = vae.config.scaling_factor
    tokenizer = SimpleTokenizer()
    empty = encode(text, tokenizer, "", 1)
    os.makedirs(OUT, exist_ok=True)
    for name, case in CASES.items():
        c = encode(text, tokenizer, case["prompt"], 1)
        u = encode(text, tokenizer, case["negative"], 1)
        c, u = padded(c, u, empty)
        if case["sampler"] == "ddim":
            lat = run_txt2img(case, text, unet, vae, ddim_scheduler("epsilon"), c, u)
        else:
            lat = run_kdiffusion(dict(case, pred="epsilon"), unet, c, u)
        with torch.no_grad():
            img = vae.decode(lat / scaling).sample
        px = ((img / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1)
        for suffix, t in (("context", c), ("uncond", u), ("latent", lat), ("image", px)):
            np.save(os.path.join(OUT, f"tiny_{name}_{suffix}.npy"), t.numpy().astype(np.float32))
        print(f"tiny_{name}: context {tuple(c.shape)} latent {tuple(lat.shape)} "
              f"|latent| max {lat.abs().max():.3f}  pixels mean {px.mean():.1f}")


if __name__ == "__main__":
    main()
