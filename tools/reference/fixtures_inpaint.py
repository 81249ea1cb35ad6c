"""Fixtures for inpainting (tests/fixtures/inpaint/, checked by tests/test_inpaint.c).

diffusers' StableDiffusionInpaintPipeline run on two tiny random models:

  model/           an inpainting model: a UNet of the same tiny size as
                   tests/fixtures/pipeline/model's but with conv_in taking 9
                   channels ([latent 4, mask 1, masked-image latent 4], the
                   SD 1.5-inpainting / SD2-inpainting layout), random weights
                   rounded to fp16, stored as fp16 safetensors (unet/ only: the
                   text encoder, VAE and scheduler are links to the pipeline
                   fixture's, so the files exist once)
  (the 4-channel model is tests/fixtures/pipeline/model itself: the pipeline
  blends the known region back after each step)
  mask.png         64x64 RGB mask, white = repaint: 8x8 blocks of colours whose
                   gray (PIL "L") falls on either side of 0.5 (127 vs 128 gray,
                   pure red / green / blue), with single pixels of other colours
                   inside the blocks, so that the full-size binarised mask (the
                   masked image) and its nearest-sampled latent mask differ
  <case>_latent.npy   final latent [B,4,8,8] (float32)
  <case>_image.png    decoded pixels (diffusers rounding), B images side by side

The init image is tests/fixtures/pipeline/init.png. Cases (repeated in
tests/test_inpaint.c): DDIM (leading, offset 1, eta 0 unless given), torch CPU generator.
Prompt embeddings come from fixtures_pipeline.encode (A1111 weighting, open_clip
tokenizer) and are handed to the pipeline as prompt_embeds.
"""
import os

import numpy as np
import torch
from PIL import Image

from fixtures_pipeline import OUT as PIPE, UNET_CFG, ddim_scheduler, encode, padded, randomise_, save_half

OUT = "tests/fixtures/inpaint"

CASES = {
    # 9-channel UNet, strength 1 (pure noise start), two images
    "unet9": dict(unet=9, prompt="a red apple on a table", negative="blurry", B=2, steps=6,
                  scale=7.5, seed=21, strength=1.0),
    # 9-channel UNet, strength 0.6: the image noised to the 4th of 10 steps; DDIM eta 0.5
    # draws noise each step: the generator must be where diffusers leaves it
    "unet9_strength": dict(unet=9, prompt="a blue door", negative="", B=1, steps=10, scale=5.0,
                           seed=22, strength=0.6, eta=0.5),
    # 4-channel UNet: latent blending, strength 1, two images
    "blend4": dict(unet=4, prompt="a watercolor landscape", negative="ugly", B=2, steps=6,
                   scale=7.5, seed=23, strength=1.0),
    # 4-channel UNet, strength 0.75, DDIM eta 1
    "blend4_strength": dict(unet=4, prompt="a bowl of fruit", negative="", B=1, steps=8,
                            scale=7.5, seed=24, strength=0.75, eta=1.0),
}


def make_mask():
    rng = np.random.RandomState(3)
    palette = np.array([[0, 0, 0], [255, 255, 255], [127, 127, 127], [128, 128, 128],
                        [255, 0, 0], [0, 255, 0], [0, 0, 255], [200, 100, 50]], np.uint8)
    blocks = rng.randint(0, len(palette), size=(8, 8))
    m = palette[np.kron(blocks, np.ones((8, 8), int))]
    stray = rng.rand(64, 64) < 0.15
    m[stray] = palette[rng.randint(0, len(palette), size=stray.sum())]
    return Image.fromarray(m, "RGB")


def build_unet9():
    from diffusers import UNet2DConditionModel
    torch.manual_seed(77)
    unet = randomise_(UNet2DConditionModel(**dict(UNET_CFG, in_channels=9))).eval()
    m = os.path.join(OUT, "model")
    os.makedirs(os.path.join(m, "unet"), exist_ok=True)
    unet.save_config(os.path.join(m, "unet"))
    save_half(unet.state_dict(), os.path.join(m, "unet", "diffusion_pytorch_model.safetensors"))
    for sub in ("text_encoder", "vae", "scheduler", "model_index.json"):
        link = os.path.join(m, sub)
        if not os.path.lexists(link):
            os.symlink(os.path.join("..", "..", "pipeline", "model", sub), link)
    return unet


def main():
    from diffusers import AutoencoderKL, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTextModel
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    unet9 = build_unet9()
    kw = dict(torch_dtype=torch.float32)
    model = os.path.join(PIPE, "model")
    text = CLIPTextModel.from_pretrained(os.path.join(model, "text_encoder"), **kw).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(model, "vae"), **kw).eval()
    unet4 = UNet2DConditionModel.from_pretrained(os.path.join(model, "unet"), **kw).eval()
    unet9 = unet9.float().eval()
    tokenizer = SimpleTokenizer()
    empty = encode(text, tokenizer, "", 1)
    init = Image.open(os.path.join(PIPE, "init.png")).convert("RGB")
    mask = make_mask()
    mask.save(os.path.join(OUT, "mask.png"))
    for name, case in CASES.items():
        c = encode(text, tokenizer, case["prompt"], 1)
        u = encode(text, tokenizer, case["negative"], 1)
        c, u = padded(c, u, empty)
        pipe = StableDiffusionInpaintPipeline(
            vae=vae, text_encoder=text, tokenizer=None, unet=unet9 if case["unet"] == 9 else unet4,
            scheduler=ddim_scheduler("epsilon"), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator("cpu").manual_seed(case["seed"])
        with torch.no_grad():
            lat = pipe(prompt_embeds=c, negative_prompt_embeds=u, image=init, mask_image=mask,
                       height=64, width=64, strength=case["strength"],
                       num_inference_steps=case["steps"], guidance_scale=case["scale"],
                       num_images_per_prompt=case["B"], eta=case.get("eta", 0.0), generator=g,
                       output_type="latent").images
            img = vae.decode(lat / vae.config.scaling_factor).sample
        px = ((img / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
        np.save(os.path.join(OUT, f"{name}_latent.npy"), lat.numpy().astype(np.float32))
        Image.fromarray(np.concatenate(list(px), axis=1)).save(os.path.join(OUT, f"{name}_image.png"))
        print(f"{name}: latent {tuple(lat.shape)} |latent| max {lat.abs().max():.3f} "
              f"pixels mean {px.mean():.1f}")


if __name__ == "__main__":
    main()
