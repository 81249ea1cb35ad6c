"""Full-size UNet check (`make test-reference`): ldm.c's `sd unet` against
diffusers' UNet2DConditionModel with the real SD1 and SD2 configurations
(859.5M and 865.9M parameters), randomly initialised.

Generated on demand (cached) under build/reference/unet/<sd1|sd2>/:
  diffusers/            config.json + diffusion_pytorch_model.safetensors (fp16)
  compvis.safetensors   the same weights under CompVis keys
                        (model.diffusion_model.input_blocks.1.0.in_layers.0...),
                        as inside an SD checkpoint; the key mapping below is
                        written from docs/03-clip-and-checkpoints.md
                        section 3 independently of
                        ldm/io/weights.c, so the two check each other.
Weights are stored as fp16; PyTorch runs fp32 on the same rounded values.
Cases: a 64x64 latent (512x512 image) at batch 2 with two fractional
timesteps (CFG's [uncond, cond] batch) and a non-square 64x96 latent at
batch 1. Check: relative max error max|ours - ref| / max|ref| <= 1e-3
(the whole-model fp32 budget of docs/00-overview.md) through both layouts. On a failure
every block's output (sd unet --dump vs forward hooks) is compared and the
first divergence is marked.

Slow on a small machine: each full-size evaluation takes tens of seconds
(both in PyTorch and in C).

Usage: .venv-ref/bin/python tools/reference/test_reference_unet.py
           [--sd build/sd] [--only sd1|sd2] [--threads N] [--regen]
Exit status 0 when every check passes.
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
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "build", "reference", "unet")
TOL = 1e-3   # issue 6: whole-UNet relative max error vs diffusers

COMMON = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
              block_out_channels=[320, 640, 1280, 1280],
              down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
              up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
              flip_sin_to_cos=True, freq_shift=0, norm_num_groups=32)
CONFIGS = {
    "sd1": dict(COMMON, attention_head_dim=8, cross_attention_dim=768),
    "sd2": dict(COMMON, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
                use_linear_projection=True, upcast_attention=True, sample_size=96),
}
# (name, batch, h, w, timesteps)
CASES = [("64x64_b2", 2, 64, 64, [981.0, 17.25]), ("64x96_b1", 1, 64, 96, [503.6875])]

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def compvis_name(k, L=2):
    """diffusers UNet2DConditionModel key -> CompVis model.diffusion_model key."""
    P = "model.diffusion_model."
    top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0",
           "conv_out": "out.2"}
    for a, b in top.items():
        if k.startswith(a + "."):
            return P + b + k[len(a):]
    p = k.split(".")

    def res(rest):
        return RESNET[rest[0]] + "." + ".".join(rest[1:])

    if p[0] == "down_blocks":
        i = int(p[1])
        if p[2] == "resnets":
            return P + f"input_blocks.{1 + i * (L + 1) + int(p[3])}.0." + res(p[4:])
        if p[2] == "attentions":
            return P + f"input_blocks.{1 + i * (L + 1) + int(p[3])}.1." + ".".join(p[4:])
        if p[2] == "downsamplers":   # downsamplers.0.conv.weight
            return P + f"input_blocks.{(i + 1) * (L + 1)}.0.op." + p[-1]
    if p[0] == "mid_block":
        if p[1] == "resnets":
            return P + f"middle_block.{0 if p[2] == '0' else 2}." + res(p[3:])
        return P + "middle_block.1." + ".".join(p[3:])
    if p[0] == "up_blocks":
        i = int(p[1])
        if p[2] == "resnets":
            return P + f"output_blocks.{i * (L + 1) + int(p[3])}.0." + res(p[4:])
        if p[2] == "attentions":
            return P + f"output_blocks.{i * (L + 1) + int(p[3])}.1." + ".".join(p[4:])
        if p[2] == "upsamplers":     # the Upsample follows the ST when the level has one
            has_attn = i > 0
            return P + f"output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}.conv." + p[-1]
    raise KeyError(k)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    model.half().float()


def block_names(model):
    names = ["time_embedding", "conv_in", "mid_block", "conv_out"]
    for prefix, blocks in (("down_blocks", model.down_blocks), ("up_blocks", model.up_blocks)):
        for i, blk in enumerate(blocks):
            names.append(f"{prefix}.{i}")
            names += [f"{prefix}.{i}.resnets.{j}" for j in range(len(blk.resnets))]
            names += [f"{prefix}.{i}.attentions.{j}" for j in range(len(getattr(blk, "attentions", [])))]
    names += ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"]
    return names


def first_tensor(out):
    while isinstance(out, (tuple, list)) or hasattr(out, "sample"):
        out = out[0] if isinstance(out, (tuple, list)) else out.sample
    return out


def generate(cname, d, regen):
    """Model files and reference outputs for one config; cached in d."""
    stamp = os.path.join(d, "done")
    if os.path.exists(stamp) and not regen:
        return
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(os.path.join(d, "diffusers"))
    t0 = time.time()
    torch.manual_seed(1 if cname == "sd1" else 2)
    model = UNet2DConditionModel(**CONFIGS[cname]).eval()
    randomize(model, 10 if cname == "sd1" else 20)
    print(f"  {cname}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
          f"({time.time() - t0:.0f} s)", flush=True)
    sd = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "diffusers", "diffusion_pytorch_model.safetensors"))
    model.save_config(os.path.join(d, "diffusers"))
    save_file({compvis_name(k): v for k, v in sd.items()}, os.path.join(d, "compvis.safetensors"))
    del sd
    rng = np.random.default_rng(7)
    names = block_names(model)
    mods = dict(model.named_modules())
    for case, B, h, w, ts in CASES:
        x = rng.standard_normal((B, 4, h, w)).astype(np.float32)
        ctx = rng.standard_normal((B, 77, CONFIGS[cname]["cross_attention_dim"])).astype(np.float32)
        t = np.array(ts, dtype=np.float32)
        bdir = os.path.join(d, case + "_blocks")
        os.makedirs(bdir)
        handles = []
        for n in names:
            def hook(mod, inp, out, n=n):
                np.save(os.path.join(bdir, f"unet.{n}.npy"), first_tensor(out).float().numpy())
            handles.append(mods[n].register_forward_hook(hook))
        t1 = time.time()
        with torch.no_grad():
            out = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx),
                        return_dict=False)[0].numpy()
        for hd in handles:
            hd.remove()
        print(f"  {cname}/{case}: PyTorch {time.time() - t1:.1f} s", flush=True)
        for nm, a in (("latent", x), ("t", t), ("context", ctx), ("out", out)):
            np.save(os.path.join(d, f"{case}_{nm}.npy"), a)
    open(stamp, "w").write("ok\n")


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def bisect(ref_dir, our_dir):
    """Per-block errors in forward order; marks the first block above 1e-4."""
    order = sorted(os.listdir(ref_dir), key=lambda f: os.path.getmtime(os.path.join(ref_dir, f)))
    first = None
    for f in order:
        ours = os.path.join(our_dir, f)
        if not os.path.exists(ours):
            print(f"      {f[:-4]:<44} (not dumped by sd)")
            continue
        e = rel_err(np.load(ours), np.load(os.path.join(ref_dir, f)))
        mark = ""
        if e > 1e-4 and first is None:
            first, mark = f, "   <-- first divergence"
        print(f"      {f[:-4]:<44} {e:.3e}{mark}")


def run_sd(sd, model, d, case, threads, dump=None):
    out = os.path.join(d, f"{case}_ours.npy")
    cmd = [sd, "unet", "--model", model, "--latent", os.path.join(d, f"{case}_latent.npy"),
           "--context", os.path.join(d, f"{case}_context.npy"), "--out", out, "--overwrite", "--time",
           "--t", ",".join(repr(float(v)) for v in np.load(os.path.join(d, f"{case}_t.npy")))]
    if threads:
        cmd += ["--threads", str(threads)]
    if dump:
        cmd += ["--dump", dump]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip()
    return np.load(out), r.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", default=os.path.join(ROOT, "build", "sd"))
    ap.add_argument("--only", choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--regen", action="store_true")
    args = ap.parse_args()
    fails = 0
    for cname in CONFIGS:
        if args.only and cname != args.only:
            continue
        d = os.path.join(OUT, cname)
        generate(cname, d, args.regen)
        for case, *_ in CASES:
            ref = np.load(os.path.join(d, f"{case}_out.npy"))
            for layout, model in (("diffusers", os.path.join(d, "diffusers")),
                                  ("compvis", os.path.join(d, "compvis.safetensors"))):
                got, msg = run_sd(args.sd, model, d, case, args.threads)
                name = f"{cname}/{case} [{layout}]"
                if got is None:
                    print(f"  NOT OK  {name}: sd unet failed: {msg}")
                    fails += 1
                    continue
                e = rel_err(got, ref)
                ok = got.shape == ref.shape and e <= TOL
                print(f"  {'ok' if ok else 'NOT OK':7} {name:<34} max_rel {e:.3e} "
                      f"(tol {TOL:.0e})  | {msg}", flush=True)
                if not ok:
                    fails += 1
                    with tempfile.TemporaryDirectory(dir=d) as tmp:
                        run_sd(args.sd, model, d, case, args.threads, dump=tmp)
                        bisect(os.path.join(d, case + "_blocks"), tmp)
    print(f"unet reference: {'all passed' if fails == 0 else f'{fails} failed'}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
