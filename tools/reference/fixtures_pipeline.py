"""Fixtures for the txt2img / img2img pipeline (tests/fixtures/pipeline/).

A tiny random Stable Diffusion model in the diffusers folder layout, and the
outputs of the PyTorch pipelines run on it:

  model/           unet/ vae/ text_encoder/ scheduler/ model_index.json; weights
                   rounded to fp16 and stored as fp16 safetensors (exact in fp32).
                   The text encoder keeps CLIP's full 49,408-token vocabulary
                   (width 8) so real prompts tokenize into it; the VAE has 4
                   levels, so 64x64 pixels are an 8x8 latent as in SD.
  init.png         64x64 RGB init image for img2img
  <case>_context.npy, <case>_uncond.npy   weighted prompt embeddings [1,77k,D]
  <case>_latent.npy                       final latent [B,4,8,8]
  <case>_image.npy                        decoded uint8 pixels [B,64,64,3] (as float32)

Cases (parameters repeated in tests/test_pipeline.c):
  ddim       StableDiffusionPipeline + DDIMScheduler (leading, offset 1, eta 0),
             B=2, 5 steps, scale 7.5, seed 42, negative prompt
  euler_long k-diffusion sample_euler on a CompVisDenoiser, weighted prompt of
             more than 75 tokens (2 chunks) vs a 1-chunk negative (padded with
             the empty prompt), clip skip 2, seed 7, 6 steps
  euler_a_v  k-diffusion sample_euler_ancestral, v-prediction (CompVisVDenoiser),
             noise from the same CPU generator, seed 3, 5 steps
  dpmpp_2m_karras  k-diffusion sample_dpmpp_2m on Karras sigmas, seed 11, 6 steps
  img2img    StableDiffusionImg2ImgPipeline + DDIM, strength 0.75, 8 steps (6 run)
  plms       StableDiffusionPipeline + PNDMScheduler(skip_prk_steps), 5 steps

Prompt tokens come from open_clip's SimpleTokenizer (no vocab.json/merges.txt
is written anywhere), weighted per AUTOMATIC1111's rules as written out below
(parse_attention, chunks, emphasis), and handed to diffusers as prompt_embeds.
Initial noise: torch.Generator("cpu").manual_seed(seed).
"""
import json
import math
import os
import re
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

OUT = "tests/fixtures/pipeline"
torch.manual_seed(2024)

D = 8  # text width = UNet cross_attention_dim
CLIP_CFG = dict(vocab_size=49408, hidden_size=D, intermediate_size=16, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=D, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407)
UNET_CFG = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=[4, 8, 8],
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                cross_attention_dim=D, norm_num_groups=2, attention_head_dim=2)
VAE_CFG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[4, 4, 8, 8],
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
               layers_per_block=1, norm_num_groups=2, sample_size=64, scaling_factor=0.18215)

CASES = {
    "ddim": dict(prompt="a photograph of an astronaut riding a horse",
                 negative="blurry, low quality", B=2, steps=5, scale=7.5, seed=42, sampler="ddim",
                 clip_skip=1, pred="epsilon"),
    "euler_long": dict(
        prompt=("a (very beautiful:1.3) painting of a [quiet] lake at dawn, mist over the water, "
                "((tall pine trees)), distant mountains, soft light, \\(detailed\\) reflections, "
                "a small wooden boat, birds in the sky, golden hour, highly detailed, "
                "oil on canvas, by an old master, museum quality, dramatic clouds, "
                "warm colors, cinematic composition, [[muted greens]], (glowing horizon:0.8), "
                "calm, serene, peaceful, morning"),
        negative="ugly", B=1, steps=6, scale=5.0, seed=7, sampler="euler", clip_skip=2,
        pred="epsilon"),
    "euler_a_v": dict(prompt="a red (cube:1.5) on a table BREAK studio light", negative="", B=1,
                      steps=5, scale=4.0, seed=3, sampler="euler_a", clip_skip=1,
                      pred="v_prediction"),
    "dpmpp_2m_karras": dict(prompt="a cat wearing a hat", negative="dog", B=1, steps=6, scale=7.5,
                            seed=11, sampler="dpmpp_2m_karras", clip_skip=1, pred="epsilon"),
    "img2img": dict(prompt="a watercolor landscape", negative="", B=1, steps=8, scale=7.5, seed=5,
                    sampler="ddim", clip_skip=1, pred="epsilon", strength=0.75),
    "plms": dict(prompt="a bowl of fruit, still life", negative="", B=1, steps=5, scale=7.5,
                 seed=9, sampler="plms", clip_skip=1, pred="epsilon"),
}


# ---------------------------------------------------------------------------
# AUTOMATIC1111 prompt weighting, written out from its documented behaviour:
# ( ) x1.1, [ ] /1.1, (text:w) xw, \( \) \[ \] \\ literal, unclosed brackets
# apply to the rest, BREAK starts a new chunk; 75-token chunks with a comma
# backtrack of 20; emphasis z *= w then rescale to the unweighted mean.

TOKEN_RE = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
BREAK_RE = re.compile(r"\s*\bBREAK\b\s*")


def parse_attention(text):
    out, rounds, squares = [], [], []

    def mul(start, m):
        for p in range(start, len(out)):
            out[p][1] *= m

    for mt in TOKEN_RE.finditer(text):
        tok, w = mt.group(0), mt.group(1)
        if tok.startswith("\\"):
            out.append([tok[1:], 1.0])
        elif tok == "(":
            rounds.append(len(out))
        elif tok == "[":
            squares.append(len(out))
        elif w is not None and rounds:
            mul(rounds.pop(), float(w))
        elif tok == ")" and rounds:
            mul(rounds.pop(), 1.1)
        elif tok == "]" and squares:
            mul(squares.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(BREAK_RE.split(tok)):
                if i > 0:
                    out.append(["BREAK", -1])
                out.append([part, 1.0])
    for pos in rounds:
        mul(pos, 1.1)
    for pos in squares:
        mul(pos, 1 / 1.1)
    if not out:
        out = [["", 1.0]]
    i = 0
    while i + 1 < len(out):
        if out[i][1] == out[i + 1][1] and out[i][1] >= 0:
            out[i][0] += out[i + 1][0]
            out.pop(i + 1)
        else:
            i += 1
    return out


def chunks_of(text, tokenizer, pad):
    SOT, EOT = 49406, 49407
    comma = tokenizer.encode(",")[0]
    chunks, cur, curm, last_comma = [], [], [], -1

    def close():
        nonlocal cur, curm, last_comma
        n = len(cur)
        ids = [SOT] + cur + [EOT] * (75 - n) + [EOT]
        mult = [1.0] + curm + [1.0] * (75 - n) + [1.0]
        first_eot = 1 + n
        ids = ids[:first_eot + 1] + [pad] * (77 - first_eot - 1)
        chunks.append((ids, mult))
        cur, curm, last_comma = [], [], -1

    for piece, w in parse_attention(text):
        if piece == "BREAK" and w == -1:
            close()
            continue
        for t in (tokenizer.encode(piece) if piece else []):
            if t == comma:
                last_comma = len(cur)
            elif len(cur) == 75 and last_comma != -1 and len(cur) - last_comma <= 20:
                at = last_comma + 1
                mv, mvm = cur[at:], curm[at:]
                cur, curm = cur[:at], curm[:at]
                close()
                cur, curm = mv, mvm
            if len(cur) == 75:
                close()
            cur.append(t)
            curm.append(w)
    if cur or not chunks:
        close()
    return chunks


def encode(text_model, tokenizer, text, clip_skip, pad=49407):
    zs = []
    for ids, mult in chunks_of(text, tokenizer, pad):
        with torch.no_grad():
            o = text_model(torch.tensor([ids]), output_hidden_states=True)
            if clip_skip > 1:
                z = getattr(text_model, "text_model", text_model).final_layer_norm(
                    o.hidden_states[-clip_skip])
            else:
                z = o.last_hidden_state
        m = torch.tensor(mult).reshape(1, 77, 1)
        before = z.mean()
        z = z * m
        z = z * (before / z.mean())
        zs.append(z)
    return torch.cat(zs, dim=1)


def padded(c, u, empty):
    """pad the shorter of two contexts with chunks of the empty prompt"""
    while c.shape[1] < u.shape[1]:
        c = torch.cat([c, empty], dim=1)
    while u.shape[1] < c.shape[1]:
        u = torch.cat([u, empty], dim=1)
    return c, u


# ---------------------------------------------------------------------------
def randomise_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3 if p.dim() > 1 else p + 0.1 * torch.randn_like(p))
            p.copy_(p.half().float())
    return module


def save_half(sd, path):
    save_file({k: v.detach().half().contiguous() for k, v in sd.items()}, path)


def build_model():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    text = randomise_(CLIPTextModel(CLIPTextConfig(**CLIP_CFG))).eval()
    unet = randomise_(UNet2DConditionModel(**UNET_CFG)).eval()
    vae = randomise_(AutoencoderKL(**VAE_CFG)).eval()
    m = os.path.join(OUT, "model")
    if os.path.isdir(m):
        shutil.rmtree(m)
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        os.makedirs(os.path.join(m, sub))
    unet.save_config(os.path.join(m, "unet"))
    vae.save_config(os.path.join(m, "vae"))
    text.config.to_json_file(os.path.join(m, "text_encoder", "config.json"))
    save_half(unet.state_dict(), os.path.join(m, "unet", "diffusion_pytorch_model.safetensors"))
    save_half(vae.state_dict(), os.path.join(m, "vae", "diffusion_pytorch_model.safetensors"))
    save_half(text.state_dict(), os.path.join(m, "text_encoder", "model.safetensors"))
    with open(os.path.join(m, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "PNDMScheduler", "prediction_type": "epsilon",
                   "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "steps_offset": 1,
                   "set_alpha_to_one": False, "skip_prk_steps": True}, f)
    with open(os.path.join(m, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline"}, f)
    return text, unet, vae


def compvis_alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class UNetAsCompVis(torch.nn.Module):
    """what k-diffusion's CompVisDenoiser wraps: apply_model(x, t, cond) + alphas_cumprod"""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.alphas_cumprod = compvis_alphas_cumprod()

    def apply_model(self, x, t, cond):
        return self.unet(x, t, encoder_hidden_states=cond).sample


def run_kdiffusion(case, unet, c, u):
    import k_diffusion as K
    wrapper = UNetAsCompVis(unet)
    den = (K.external.CompVisVDenoiser if case["pred"] == "v_prediction"
           else K.external.CompVisDenoiser)(wrapper, quantize=False)
    B, scale = case["B"], case["scale"]
    cond = torch.cat([u.repeat(B, 1, 1), c.repeat(B, 1, 1)])

    def model(x, sigma):
        d = den(torch.cat([x] * 2), torch.cat([sigma] * 2), cond=cond)
        du, dc = d.chunk(2)
        return du + scale * (dc - du)

    n = case["steps"]
    if case["sampler"].endswith("karras"):
        sigmas = K.sampling.get_sigmas_karras(n, float(den.sigma_min), float(den.sigma_max), rho=7.0)
    else:
        sigmas = den.get_sigmas(n)
    g = torch.Generator("cpu").manual_seed(case["seed"])
    x = torch.randn((B, 4, 8, 8), generator=g) * sigmas[0]
    ns = lambda sigma, sigma_next: torch.randn((B, 4, 8, 8), generator=g)
    with torch.no_grad():
        if case["sampler"] == "euler":
            x = K.sampling.sample_euler(model, x, sigmas, disable=True)
        elif case["sampler"] == "euler_a":
            x = K.sampling.sample_euler_ancestral(model, x, sigmas, disable=True, noise_sampler=ns)
        else:
            x = K.sampling.sample_dpmpp_2m(model, x, sigmas, disable=True)
    return x


def ddim_scheduler(pred):
    from diffusers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1, timestep_spacing="leading", prediction_type=pred)


def pndm_scheduler():
    """diffusers' PLMS: PNDM without Runge-Kutta warm-up; its repeated second
    timestep reproduces CompVis PLMS's pseudo improved Euler first step"""
    from diffusers import PNDMScheduler
    return PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", skip_prk_steps=True, set_alpha_to_one=False,
                         steps_offset=1, timestep_spacing="leading")


def run_txt2img(case, text, unet, vae, sched, c, u):
    """diffusers StableDiffusionPipeline, 64x64, CPU generator -> final latent"""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=None, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator("cpu").manual_seed(case["seed"])
    with torch.no_grad():
        return pipe(prompt_embeds=c, negative_prompt_embeds=u, height=64, width=64,
                    num_inference_steps=case["steps"], guidance_scale=case["scale"],
                    num_images_per_prompt=case["B"], eta=0.0, generator=g,
                    output_type="latent").images


def main():
    from open_clip.tokenizer import SimpleTokenizer
    from diffusers import StableDiffusionImg2ImgPipeline
    os.makedirs(OUT, exist_ok=True)
    text, unet, vae = build_model()
    tokenizer = SimpleTokenizer()
    empty = encode(text, tokenizer, "", 1)

    # init image: smooth colours plus a little noise
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    rng = np.random.RandomState(0)
    rgb = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx * yy)], -1) * 220 + rng.rand(64, 64, 3) * 30
    init = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    init.save(os.path.join(OUT, "init.png"))

    for name, case in CASES.items():
        empty_k = encode(text, tokenizer, "", case["clip_skip"])
        c = encode(text, tokenizer, case["prompt"], case["clip_skip"])
        u = encode(text, tokenizer, case["negative"], case["clip_skip"])
        c, u = padded(c, u, empty_k)
        B = case["B"]
        if case["sampler"] in ("ddim", "plms") and name != "img2img":
            sched = ddim_scheduler(case["pred"]) if case["sampler"] == "ddim" else pndm_scheduler()
            lat = run_txt2img(case, text, unet, vae, sched, c, u)
        elif name == "img2img":
            pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=None,
                                                  unet=unet, scheduler=ddim_scheduler(case["pred"]),
                                                  safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            g = torch.Generator("cpu").manual_seed(case["seed"])
            with torch.no_grad():
                lat = pipe(prompt_embeds=c, negative_prompt_embeds=u, image=init,
                           strength=case["strength"], num_inference_steps=case["steps"],
                           guidance_scale=case["scale"], num_images_per_prompt=B, eta=0.0,
                           generator=g, output_type="latent").images
        else:
            lat = run_kdiffusion(case, unet, c, u)
        with torch.no_grad():
            img = vae.decode(lat / VAE_CFG["scaling_factor"]).sample
        px = ((img / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1)
        np.save(os.path.join(OUT, f"{name}_context.npy"), c.numpy().astype(np.float32))
        np.save(os.path.join(OUT, f"{name}_uncond.npy"), u.numpy().astype(np.float32))
        np.save(os.path.join(OUT, f"{name}_latent.npy"), lat.numpy().astype(np.float32))
        np.save(os.path.join(OUT, f"{name}_image.npy"), px.numpy().astype(np.float32))
        print(f"{name}: context {tuple(c.shape)} latent {tuple(lat.shape)} "
              f"|latent| max {lat.abs().max():.3f}  pixels mean {px.mean():.1f} "
              f"std {px.std():.1f} saturated {((px == 0) | (px == 255)).float().mean():.2f}")


if __name__ == "__main__":
    main()
