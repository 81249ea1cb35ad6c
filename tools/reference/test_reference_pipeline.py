"""Full-size txt2img check (`make test-reference`): `sd txt2img` against
diffusers' StableDiffusionPipeline on randomly initialised SD1 and SD2 models
of the real sizes (CLIP ViT-L/14 text or the 23-layer OpenCLIP ViT-H text,
the 860M UNet, the 84M VAE).

Generated on demand (cached) under build/reference/pipeline/<sd1|sd2>/: a
diffusers folder (unet/ vae/ text_encoder/, fp16 safetensors; PyTorch runs
fp32 on the same rounded values). SD2 is run as a v-prediction model (768-v).
Prompt embeddings use the weighting of fixtures_pipeline.py (the prompt has
one weighted word); noise from torch.Generator("cpu").manual_seed(seed); DDIM
with leading spacing, steps_offset 1, eta 0 (= CompVis DDIM when the step
count divides 1000, which `sd txt2img` runs).

Checks, per model: final latent relative max error <= 1e-3; uint8 pixels
(ours truncate as CompVis, so the reference is floor(255*clamp((x+1)/2)))
identical in >= 99.9% and the rest within 1. Prints both programs' times.

Usage: .venv-ref/bin/python tools/reference/test_reference_pipeline.py
           [--sd build/sd] [--only sd1|sd2] [--size 512] [--steps 2] [--regen]
Slow on a small machine: minutes per model at 512x512.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from fixtures_pipeline import ddim_scheduler, encode, padded  # noqa: E402

UNET_COMMON = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                   block_out_channels=[320, 640, 1280, 1280],
                   down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                   up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                   flip_sin_to_cos=True, freq_shift=0, norm_num_groups=32)
MODELS = {
    "sd1": dict(unet=dict(UNET_COMMON, attention_head_dim=8, cross_attention_dim=768),
                text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                          num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu",
                          max_position_embeddings=77, projection_dim=768),
                pred="epsilon"),
    "sd2": dict(unet=dict(UNET_COMMON, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                          use_linear_projection=True, upcast_attention=True, sample_size=96),
                text=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                          num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu",
                          max_position_embeddings=77, projection_dim=1024),
                pred="v_prediction"),
}
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
           down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
           layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
PROMPT, NEGATIVE, SEED, SCALE = "a (beautiful:1.2) photograph of a lighthouse", "blurry", 42, 7.5


def generate(name, d, regen):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel
    if regen and os.path.isdir(d):
        shutil.rmtree(d)
    torch.manual_seed({"sd1": 1, "sd2": 2}[name])
    cfg = MODELS[name]
    parts = {"unet": lambda: UNet2DConditionModel(**cfg["unet"]),
             "vae": lambda: AutoencoderKL(**VAE),
             "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**cfg["text"]))}
    models = {}
    for sub, make in parts.items():
        fname = "model.safetensors" if sub == "text_encoder" else "diffusion_pytorch_model.safetensors"
        path = os.path.join(d, sub, fname)
        if os.path.exists(path):
            if sub == "text_encoder":
                models[sub] = CLIPTextModel.from_pretrained(os.path.join(d, sub)).float().eval()
            elif sub == "unet":
                models[sub] = UNet2DConditionModel.from_pretrained(d, subfolder=sub).float().eval()
            else:
                models[sub] = AutoencoderKL.from_pretrained(d, subfolder=sub).float().eval()
            continue
        print(f"generating {name}/{sub} ...", flush=True)
        m = make().eval()
        with torch.no_grad():
            # default init leaves norm weights 1 and biases 0: then CLIP's output
            # has mean ~0 and the prompt-weight rescale (mean / mean) is
            # ill-conditioned; random norms and biases make it a realistic model
            for pname, p in m.named_parameters():
                if "norm" in pname and pname.endswith(".weight"):
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                elif pname.endswith(".bias"):
                    p.copy_(0.05 * torch.randn_like(p))
                p.copy_(p.half().float())
        os.makedirs(os.path.join(d, sub), exist_ok=True)
        if sub == "text_encoder":
            m.config.to_json_file(os.path.join(d, sub, "config.json"))
        else:
            m.save_config(os.path.join(d, sub))
        save_file({k: v.detach().half().contiguous() for k, v in m.state_dict().items()}, path)
        models[sub] = m
    os.makedirs(os.path.join(d, "scheduler"), exist_ok=True)
    with open(os.path.join(d, "scheduler", "scheduler_config.json"), "w") as f:
        f.write('{"_class_name": "DDIMScheduler", "prediction_type": "%s"}' % cfg["pred"])
    return models


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", default=os.path.join(ROOT, "build", "sd"))
    ap.add_argument("--only", choices=list(MODELS))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--regen", action="store_true")
    a = ap.parse_args()
    from diffusers import StableDiffusionPipeline
    from open_clip.tokenizer import SimpleTokenizer
    from PIL import Image
    tok = SimpleTokenizer()
    failed = 0
    for name in ([a.only] if a.only else list(MODELS)):
        d = os.path.join(ROOT, "build", "reference", "pipeline", name)
        m = generate(name, d, a.regen)
        pred = MODELS[name]["pred"]
        pad = 0 if name == "sd2" else 49407
        # SD2 prompts pad with 0 after the first EOT (open_clip), SD1 with EOT
        c = encode(m["text_encoder"], tok, PROMPT, 1, pad)
        u = encode(m["text_encoder"], tok, NEGATIVE, 1, pad)
        e = encode(m["text_encoder"], tok, "", 1, pad)
        c, u = padded(c, u, e)
        pipe = StableDiffusionPipeline(vae=m["vae"], text_encoder=m["text_encoder"], tokenizer=None,
                                       unet=m["unet"], scheduler=ddim_scheduler(pred),
                                       safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        t0 = time.time()
        with torch.no_grad():
            lat = pipe(prompt_embeds=c, negative_prompt_embeds=u, height=a.size, width=a.size,
                       num_inference_steps=a.steps, guidance_scale=SCALE, eta=0.0,
                       generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent").images
            img = m["vae"].decode(lat / VAE["scaling_factor"]).sample
        t_torch = time.time() - t0
        ref_px = np.floor(((img[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy() * 255)
        tmp = tempfile.mkdtemp(prefix="ldm_ref_pipeline_")
        cmd = [a.sd, "txt2img", "--ckpt", d, "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
               "--H", str(a.size), "--W", str(a.size), "--n_samples", "1", "--n_iter", "1",
               "--ddim_steps", str(a.steps), "--seed", str(SEED), "--rng", "cpu",
               "--scale", str(SCALE), "--outdir", tmp, "--skip_grid", "--verbose",
               "--prediction", "v" if pred == "v_prediction" else "eps"]
        env = dict(os.environ, LDM_DUMP=os.path.join(tmp, "dump"))
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        t_c = time.time() - t0
        if r.returncode != 0:
            print(f"  NOT OK  {name}: sd txt2img exited {r.returncode}: {r.stderr[-2000:]}")
            failed += 1
            continue
        ours = np.load(os.path.join(tmp, "dump", "latent.npy"))
        ref = lat.numpy()
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        px = np.asarray(Image.open(os.path.join(tmp, "samples", "00000.png"))).astype(np.float64)
        diff = np.abs(px - ref_px)
        same, worst = (diff == 0).mean(), diff.max()
        ok = rel <= 1e-3 and same >= 0.999 and worst <= 1
        failed += not ok
        peak = [l for l in r.stderr.splitlines() if "peak" in l]
        print(f"  {'ok' if ok else 'NOT OK':7s} {name} {a.size}x{a.size} {a.steps} DDIM steps ({pred}): "
              f"latent rel {rel:.3e}, pixels {100 * same:.3f}% identical, max off {worst:.0f}; "
              f"time torch {t_torch:.1f}s, sd {t_c:.1f}s; {peak[-1] if peak else ''}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'all passed' if not failed else f'{failed} failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
