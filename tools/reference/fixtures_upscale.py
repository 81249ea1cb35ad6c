"""Fixtures for the x4 upscaler (tests/fixtures/upscale/, tests/test_upscale.c).

A tiny random model in the layout of stabilityai/stable-diffusion-x4-upscaler
(a diffusers StableDiffusionUpscalePipeline folder), and what diffusers makes
of it:

  model/           unet/ vae/ scheduler/ low_res_scheduler/ model_index.json;
                   weights rounded to fp16 and stored as fp16 safetensors.
                   The UNet has the upscaler's shape: in_channels 7 (4 latent
                   + 3 image channels), a class embedding of 1000 noise levels,
                   only_cross_attention [true, true, true, false], a first
                   level without attention; the VAE has 3 levels (x4) and
                   scaling_factor 0.08333.
                   text_encoder/ is a symbolic link to the pipeline fixtures'
                   text encoder (tests/fixtures/pipeline/model/text_encoder):
                   it keeps CLIP's full vocabulary and is 800 KB, too big to
                   store twice. Regenerate these fixtures after that one.
  low_<case>.png   the low-resolution input
  <case>_latent.npy   final latent [B,4,h,w] (h,w = the low-res size)
  <case>_image.png    decoded image, B images stacked vertically [B*4h,4w]

Cases (parameters repeated in tests/test_upscale.c):
  ddim    16x16 -> 64x64, B=1, 5 DDIM steps, guidance 9, noise_level 20, seed 42,
          prompt and negative prompt
  b2      24 wide x 16 high -> 96x64, 2 images per prompt (one low-res noise draw
          shared), 4 steps, guidance 1 (no unconditional pass), noise_level 150, seed 7

Prompt embeddings are made as in fixtures_pipeline.py (open_clip's tokenizer,
the text encoder run on the ids) and handed to diffusers as prompt_embeds.
Noise: torch.Generator("cpu").manual_seed(seed).
Run from the repository root: .venv-ref/bin/python tools/reference/fixtures_upscale.py
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixtures_pipeline import encode, randomise_, save_half  # noqa: E402

OUT = "tests/fixtures/upscale"
TEXT = "tests/fixtures/pipeline/model/text_encoder"
D = 8  # the text encoder's width = the UNet's cross_attention_dim

UNET_CFG = dict(sample_size=16, in_channels=7, out_channels=4, layers_per_block=1,
                block_out_channels=[4, 8, 8, 8],
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                "UpBlock2D"],
                only_cross_attention=[True, True, True, False], num_class_embeds=1000,
                cross_attention_dim=D, norm_num_groups=2, attention_head_dim=2,
                use_linear_projection=True)
VAE_CFG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[4, 8, 8],
               down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
               layers_per_block=1, norm_num_groups=2, sample_size=64, scaling_factor=0.08333)
# The schedules of the x4 upscaler's original config (x4-upscaling.yaml):
# CompVis "linear" 1e-4..0.02 over 1000 steps = diffusers "scaled_linear".
SCHED_CFG = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                 beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                 steps_offset=1, timestep_spacing="leading", prediction_type="v_prediction")
LOW_RES_CFG = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                   beta_schedule="scaled_linear", clip_sample=True, variance_type="fixed_small")

CASES = {
    "ddim": dict(prompt="a photograph of a cat", negative="blurry", W=16, H=16, B=1, steps=5,
                 scale=9.0, noise_level=20, seed=42),
    "b2": dict(prompt="a red brick wall", negative="", W=24, H=16, B=2, steps=4, scale=1.0,
               noise_level=150, seed=7),
}


def load_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel
    text = CLIPTextModel(CLIPTextConfig.from_json_file(os.path.join(TEXT, "config.json")))
    sd = {k: v.float() for k, v in load_file(os.path.join(TEXT, "model.safetensors")).items()}
    missing, unexpected = text.load_state_dict(sd, strict=False)
    if any("position_ids" not in k for k in missing + unexpected):
        sd = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in sd.items()}
        text.load_state_dict(sd, strict=False)
    return text.eval()


def build_model():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    torch.manual_seed(4242)
    unet = randomise_(UNet2DConditionModel(**UNET_CFG)).eval()
    vae = randomise_(AutoencoderKL(**VAE_CFG)).eval()
    m = os.path.join(OUT, "model")
    if os.path.isdir(m):
        shutil.rmtree(m)
    for sub in ("unet", "vae", "scheduler", "low_res_scheduler"):
        os.makedirs(os.path.join(m, sub))
    os.symlink(os.path.join("..", "..", "pipeline", "model", "text_encoder"),
               os.path.join(m, "text_encoder"))
    unet.save_config(os.path.join(m, "unet"))
    vae.save_config(os.path.join(m, "vae"))
    save_half(unet.state_dict(), os.path.join(m, "unet", "diffusion_pytorch_model.safetensors"))
    save_half(vae.state_dict(), os.path.join(m, "vae", "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(m, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(dict(_class_name="DDIMScheduler", **SCHED_CFG), f)
    with open(os.path.join(m, "low_res_scheduler", "scheduler_config.json"), "w") as f:
        json.dump(dict(_class_name="DDPMScheduler", **LOW_RES_CFG), f)
    with open(os.path.join(m, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionUpscalePipeline", "max_noise_level": 350}, f)
    return unet, vae


def low_res_image(W, H, seed):
    yy, xx = np.mgrid[0:H, 0:W]
    rng = np.random.RandomState(seed)
    rgb = np.stack([xx / (W - 1), yy / (H - 1), 0.5 + 0.5 * np.sin(0.7 * xx + 0.4 * yy)], -1)
    rgb = rgb * 200 + rng.rand(H, W, 3) * 55
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def main():
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline
    from open_clip.tokenizer import SimpleTokenizer
    os.makedirs(OUT, exist_ok=True)
    unet, vae = build_model()
    text = load_text_encoder()
    tokenizer = SimpleTokenizer()
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=None, unet=unet,
        low_res_scheduler=DDPMScheduler(**LOW_RES_CFG), scheduler=DDIMScheduler(**SCHED_CFG),
        max_noise_level=350)
    pipe.set_progress_bar_config(disable=True)
    for name, case in CASES.items():
        low = low_res_image(case["W"], case["H"], case["seed"])
        low.save(os.path.join(OUT, f"low_{name}.png"))
        c = encode(text, tokenizer, case["prompt"], 1)
        u = encode(text, tokenizer, case["negative"], 1)
        g = torch.Generator("cpu").manual_seed(case["seed"])
        with torch.no_grad():
            lat = pipe(prompt_embeds=c, negative_prompt_embeds=u, image=low,
                       num_inference_steps=case["steps"], guidance_scale=case["scale"],
                       noise_level=case["noise_level"], num_images_per_prompt=case["B"],
                       eta=0.0, generator=g, output_type="latent").images
            img = vae.decode(lat / VAE_CFG["scaling_factor"]).sample
        px = ((img / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy()
        stacked = px.astype(np.uint8).reshape(-1, px.shape[2], 3)   # B images, top to bottom
        Image.fromarray(stacked).save(os.path.join(OUT, f"{name}_image.png"))
        np.save(os.path.join(OUT, f"{name}_latent.npy"), lat.numpy().astype(np.float32))
        print(f"{name}: latent {tuple(lat.shape)} |latent| max {lat.abs().max():.3f} "
              f"image {stacked.shape} mean {px.mean():.1f} std {px.std():.1f} "
              f"saturated {((px == 0) | (px == 255)).mean():.2f}")


if __name__ == "__main__":
    main()
