"""Full-size text encoder and checkpoint check (`make test-reference`).

1. SD1: a randomly initialised transformers CLIPTextModel with the ViT-L/14
   text configuration (768 wide, 12 layers, 12 heads, quick_gelu, 123M
   parameters) saved as CompVis single files (fp16 .safetensors and a
   torch.save .ckpt, keys cond_stage_model.transformer.text_model.*).
   `sd encode-prompt --ids` must match last_hidden_state.
2. SD2: a randomly initialised open_clip TextTransformer with the ViT-H/14
   text configuration (1024 wide, 24 layers, 16 heads, GELU, 354M
   parameters) saved as a CompVis .ckpt (cond_stage_model.model.*, fused
   attn.in_proj). `sd encode-prompt` must match SD2's "penultimate" path
   (resblocks 0..22, then ln_final), computed with open_clip's own modules.
   Check for both: relative max error max|ours - ref| / max|ref| <= 1e-4.
3. Load time and resident memory of a full-size random SD1 checkpoint
   (UNet + VAE + text encoder, 1.07B parameters) as fp16 .safetensors and as
   fp16 .ckpt: `sd check-model` (open + convert every weight to fp32).
   Reported, not asserted (skip with --no-load).

Weights are rounded to fp16 before the PyTorch reference runs, so the files
and the reference hold the same numbers. Files are generated on demand under
build/reference/clip/ (never committed; reused unless --regen).

Usage: .venv-ref/bin/python tools/reference/test_reference_clip.py
           [--sd build/sd] [--only sd1|sd2] [--no-load] [--regen]
"""
import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "build", "reference", "clip")
TOL = 1e-4
sys.path.insert(0, HERE)


def ids_rows():
    """Four 77-token rows: SOT, random words, EOT, padding (SD1: EOT, SD2: 0)."""
    g = np.random.default_rng(3)
    rows = np.zeros((4, 77), np.int64)
    for r, n in enumerate([3, 20, 40, 75]):
        rows[r, 0] = 49406
        rows[r, 1:1 + n] = g.integers(0, 49406, n)
        rows[r, 1 + n] = 49407
        rows[r, 2 + n:] = 49407 if r % 2 == 0 else 0
    return rows


def fp16_exact_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


def run(cmd):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return p.stdout + p.stderr, time.time() - t


def compare(label, got, ref):
    err = np.abs(got - ref).max() / np.abs(ref).max()
    ok = err <= TOL
    print(f"  {'ok' if ok else 'NOT OK':7s} {label:48s} max_abs {np.abs(got - ref).max():.3e}  "
          f"max_rel {err:.3e}  (tol {TOL:.0e})", flush=True)
    return ok


def sd1_text(regen):
    from transformers import CLIPTextConfig, CLIPTextModel
    d = os.path.join(OUT, "sd1")
    os.makedirs(d, exist_ok=True)
    st, ck, ref = (os.path.join(d, n) for n in ("text.safetensors", "text.ckpt", "ref.npy"))
    ids = ids_rows()
    np.save(os.path.join(d, "ids.npy"), ids.astype(np.float32))
    if regen or not all(map(os.path.exists, (st, ck, ref))):
        torch.manual_seed(0)
        cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                             num_hidden_layers=12, num_attention_heads=12,
                             max_position_embeddings=77, hidden_act="quick_gelu")
        m = fp16_exact_(CLIPTextModel(cfg)).eval()
        with torch.no_grad():
            np.save(ref, m(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy())
        sd = {}
        for k, v in m.state_dict().items():
            if "position_ids" in k:
                continue
            k = k if k.startswith("text_model.") else "text_model." + k
            sd["cond_stage_model.transformer." + k] = v.half().contiguous()
        save_file(sd, st)
        torch.save({"state_dict": sd}, ck)
    return d, [("CompVis fp16 .safetensors", st), ("CompVis fp16 .ckpt", ck)], ref


def sd2_text(regen):
    from open_clip.transformer import TextTransformer
    d = os.path.join(OUT, "sd2")
    os.makedirs(d, exist_ok=True)
    ck, ref = os.path.join(d, "text.ckpt"), os.path.join(d, "ref.npy")
    ids = ids_rows()
    np.save(os.path.join(d, "ids.npy"), ids.astype(np.float32))
    if regen or not all(map(os.path.exists, (ck, ref))):
        torch.manual_seed(0)
        m = TextTransformer(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24,
                            output_dim=1024, act_layer=torch.nn.GELU)
        fp16_exact_(m).eval()
        with torch.no_grad():
            x, mask = m._embeds(torch.from_numpy(ids))
            if not m.transformer.batch_first:
                x = x.transpose(0, 1)
            for r in m.transformer.resblocks[:-1]:  # FrozenOpenCLIPEmbedder layer="penultimate"
                x = r(x, attn_mask=mask)
            if not m.transformer.batch_first:
                x = x.transpose(0, 1)
            np.save(ref, m.ln_final(x).numpy())
        sd = {"cond_stage_model.model." + k: v.half().contiguous() for k, v in m.state_dict().items()}
        torch.save({"global_step": 0, "state_dict": sd}, ck)
    return d, [("CompVis fp16 .ckpt (open_clip, in_proj)", ck)], ref


def check_text(sd_bin, which, regen):
    d, files, ref_path = (sd1_text if which == "sd1" else sd2_text)(regen)
    ref = np.load(ref_path)
    ok = True
    for label, path in files:
        out = os.path.join(d, "out.npy")
        _, dt = run([sd_bin, "encode-prompt", "--ckpt", path, "--ids", os.path.join(d, "ids.npy"),
                     "--out", out, "--overwrite"])
        ok &= compare(f"{which} {label} ({dt:.1f} s)", np.load(out), ref)
    return ok


def full_sd1(regen):
    """A full-size random SD1 checkpoint under CompVis keys (fp16)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from fixtures_ckpt import unet_to_compvis, vae_to_compvis
    st, ck = os.path.join(OUT, "sd1_full.safetensors"), os.path.join(OUT, "sd1_full.ckpt")
    if not regen and os.path.exists(st) and os.path.exists(ck):
        return st, ck
    torch.manual_seed(0)
    ucfg = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=[320, 640, 1280, 1280],
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
                attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32)
    vcfg = dict(in_channels=3, out_channels=3, latent_channels=4,
                block_out_channels=[128, 256, 512, 512],
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
                norm_num_groups=32, sample_size=512)
    sd = {}
    with torch.no_grad():
        unet = UNet2DConditionModel(**ucfg)
        sd.update({k: v.half().contiguous() for k, v in unet_to_compvis(unet.state_dict(), ucfg).items()})
        del unet
        vae = AutoencoderKL(**vcfg)
        sd.update({k: v.half().contiguous() for k, v in vae_to_compvis(vae.state_dict(), vcfg).items()})
        del vae
    from safetensors import safe_open
    with safe_open(os.path.join(OUT, "sd1", "text.safetensors"), "pt") as f:
        for k in f.keys():
            sd[k] = f.get_tensor(k)
    save_file(sd, st)
    torch.save({"epoch": 0, "global_step": 0, "state_dict": sd}, ck)
    return st, ck


def load_times(sd_bin, regen):
    st, ck = full_sd1(regen)
    for label, path in (("fp16 .safetensors", st), ("fp16 .ckpt (torch.save zip)", ck)):
        size = os.path.getsize(path) / 2**30
        out, dt = run(["/usr/bin/time", "-v", sd_bin, "check-model", path])
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
        lines = [l for l in out.splitlines() if l.startswith(("open+parse", "load ", "ok:"))]
        print(f"  full SD1 {label}, {size:.2f} GiB: wall {dt:.2f} s, peak RSS "
              f"{int(rss.group(1)) / 2**20 if rss else float('nan'):.2f} GiB")
        for l in lines:
            print("     " + l)
        t = time.time()
        torch.load(path, map_location="cpu", weights_only=True) if path.endswith(".ckpt") else None
        if path.endswith(".ckpt"):
            print(f"     (torch.load weights_only of the same file: {time.time() - t:.2f} s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", default=os.path.join(ROOT, "build", "sd"))
    ap.add_argument("--only", choices=["sd1", "sd2"])
    ap.add_argument("--no-load", action="store_true")
    ap.add_argument("--regen", action="store_true")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    ok = True
    for which in ("sd1", "sd2"):
        if a.only in (None, which):
            ok &= check_text(a.sd, which, a.regen)
    if not a.no_load and a.only in (None, "sd1"):
        load_times(a.sd, a.regen)
    print("test_reference_clip:", "all passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
