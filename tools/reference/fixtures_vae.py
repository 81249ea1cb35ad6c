"""Fixtures for tests/test_vae.c: tiny random diffusers AutoencoderKL models.

Writes tests/fixtures/vae/<name>/ for two configs:
  tiny2  block_out_channels [16,32], layers_per_block 1, norm_num_groups 8,
         2 levels (downsampling factor 2), fp32 weights, batch 2
  tiny3  block_out_channels [8,16,16], layers_per_block 2, norm_num_groups 4,
         3 levels (factor 4), scaling_factor 0.5, fp16 weights, batch 1,
         non-square image
Each folder holds the model in diffusers layout (config.json +
diffusion_pytorch_model.safetensors) and float32 .npy tensors:
  x.npy            [B,3,H,W] image in [-1,1]
  moments.npy      [B,8,h,w] encoder + quant_conv output
  latent_mean.npy  [B,4,h,w] posterior mean * scaling_factor
  noise.npy        [B,4,h,w] standard normal
  latent_sample.npy [B,4,h,w] (mean + exp(logvar/2) * noise) * scaling_factor
  latent_in.npy    [B,4,h,w] a random (scaled) latent to decode
  decoded.npy      [B,3,f*h,f*w] vae.decode(latent_in / scaling_factor)
  kl.npy           [B] posterior KL to N(0,I) (the docs' exercise)
tiny2 also holds dump/<module>.npy: every block's output (forward hooks,
names as ldm_dump writes them: "vae.decoder.up_blocks.0.resnets.0") for the
decode of latent_in[:1] and the encode of x[:1], to locate a divergence, and
pixels/ holds uint8 <-> [-1,1] conversions from numpy/torch (diffusers
round, CompVis truncation); tiny2/tiled/: a larger latent/image run through the tile plan and linear blend of
ldm/vae.c with diffusers' encoder/decoder per tile (an independent
reference of the tiling arithmetic), plus the untiled outputs.

Deterministic (fixed seeds). Run: .venv-ref/bin/python tools/reference/fixtures_vae.py
"""
import json
import os

import numpy as np
import torch
from diffusers import AutoencoderKL

OUT = os.path.join("tests", "fixtures", "vae")
torch.set_num_threads(2)


def save(path, t):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = t.detach().cpu().float().numpy() if torch.is_tensor(t) else t
    np.save(path, np.ascontiguousarray(a.astype(np.float32)))


def make_model(seed, fp16, **cfg):
    torch.manual_seed(seed)
    n = len(cfg["block_out_channels"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n, **cfg)
    # Perturb every parameter so GroupNorm affine terms are not 1/0 and the
    # random model is not degenerate.
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
    vae.eval()
    if fp16:  # the test reads fp16 weights: compute with exactly those values
        vae = vae.half().float()
    return vae


# ---- the tiling of ldm/vae.c (tile_plan / tile_weight / run_tiled) ----------
def tile_plan(side, T, O):
    T = min(T, side)
    O = min(O, T // 2)
    count = 1 if side <= T else (side - T + (T - O) - 1) // (T - O) + 1
    starts = [0] if count == 1 else [k * (side - T) // (count - 1) for k in range(count)]
    return starts, T


def tile_weight(starts, T, k, p, f):
    s, e = starts[k] * f, (starts[k] + T) * f
    w = np.float32(1.0)
    if k > 0:
        pe = (starts[k - 1] + T) * f
        if p < pe:
            w = min(w, (np.float32(p - s) + np.float32(0.5)) / np.float32(pe - s))
    if k + 1 < len(starts):
        ns = starts[k + 1] * f
        if p >= ns:
            w = min(w, (np.float32(e - p) - np.float32(0.5)) / np.float32(e - ns))
    return np.float32(w)


def run_tiled(fn, x, fin, fout, cout, h, w, T, O):
    sy, th = tile_plan(h, T, O)
    sx, tw = tile_plan(w, T, O)
    B = x.shape[0]
    out = np.zeros((B, cout, h * fout, w * fout), np.float32)
    wsum = np.zeros((h * fout, w * fout), np.float32)
    for ky in range(len(sy)):
        for kx in range(len(sx)):
            y0, x0 = sy[ky] * fin, sx[kx] * fin
            tile = x[:, :, y0:y0 + th * fin, x0:x0 + tw * fin]
            o = fn(tile).detach().numpy()
            wy = np.array([tile_weight(sy, th, ky, sy[ky] * fout + i, fout) for i in range(th * fout)])
            wx = np.array([tile_weight(sx, tw, kx, sx[kx] * fout + i, fout) for i in range(tw * fout)])
            wt = (wy[:, None] * wx[None, :]).astype(np.float32)
            oy0, ox0 = sy[ky] * fout, sx[kx] * fout
            out[:, :, oy0:oy0 + th * fout, ox0:ox0 + tw * fout] += wt * o
            wsum[oy0:oy0 + th * fout, ox0:ox0 + tw * fout] += wt
    return out / wsum


# ---- dumps --------------------------------------------------------------------
def dump_names(vae):
    cfg = vae.config
    L = len(cfg.block_out_channels)
    names = ["encoder.conv_in"]
    for i in range(L):
        names += [f"encoder.down_blocks.{i}.resnets.{j}" for j in range(cfg.layers_per_block)]
        if i < L - 1:
            names.append(f"encoder.down_blocks.{i}.downsamplers.0")
        names.append(f"encoder.down_blocks.{i}")
    mid = ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1", "mid_block"]
    names += ["encoder." + m for m in mid] + ["encoder", "quant_conv", "post_quant_conv",
                                             "decoder.conv_in"]
    names += ["decoder." + m for m in mid]
    for i in range(L):
        names += [f"decoder.up_blocks.{i}.resnets.{j}" for j in range(cfg.layers_per_block + 1)]
        if i < L - 1:
            names.append(f"decoder.up_blocks.{i}.upsamplers.0")
        names.append(f"decoder.up_blocks.{i}")
    names.append("decoder")
    return names


def with_dumps(vae, outdir, fn):
    hooks = []
    for name in dump_names(vae):
        mod = vae.get_submodule(name)

        def hook(m, args, out, name=name):
            save(os.path.join(outdir, f"vae.{name}.npy"), out)
        hooks.append(mod.register_forward_hook(hook))
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()


# ---- one config -----------------------------------------------------------------
def fixture(name, seed, fp16, B, H, W, cfg, tiled=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    vae = make_model(seed, fp16, **cfg)
    vae.save_pretrained(d, safe_serialization=True)
    if fp16:  # rewrite the weights as fp16 (the values are already fp16-exact)
        vae.half().save_pretrained(d, safe_serialization=True)
        vae = vae.float()
    sf = vae.config.scaling_factor
    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(B, 3, H, W, generator=g) * 2 - 1
    noise = torch.randn(B, 4, H // f, W // f, generator=g)
    latent_in = torch.randn(B, 4, H // f, W // f, generator=g)
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(x))
        post = vae.encode(x).latent_dist
        decoded = vae.decode(latent_in / sf).sample
        mean = post.mean
        sample = post.mean + post.std * noise
        save(os.path.join(d, "x.npy"), x)
        save(os.path.join(d, "moments.npy"), moments)
        save(os.path.join(d, "latent_mean.npy"), mean * sf)
        save(os.path.join(d, "noise.npy"), noise)
        save(os.path.join(d, "latent_sample.npy"), sample * sf)
        save(os.path.join(d, "latent_in.npy"), latent_in)
        save(os.path.join(d, "decoded.npy"), decoded)
        save(os.path.join(d, "kl.npy"), post.kl())
        if name == "tiny2":
            dd = os.path.join(d, "dump")
            with_dumps(vae, dd, lambda: vae.encode(x[:1]))
            with_dumps(vae, dd, lambda: vae.decode(latent_in[:1] / sf))
        if tiled:
            T, O, h, w = tiled
            td = os.path.join(d, "tiled")
            tz = torch.randn(1, 4, h, w, generator=g)
            tx = torch.rand(1, 3, h * f, w * f, generator=g) * 2 - 1
            save(os.path.join(td, "latent_in.npy"), tz)
            save(os.path.join(td, "x.npy"), tx)
            dec = run_tiled(lambda t: vae.decode(torch.from_numpy(np.ascontiguousarray(t)) / sf).sample,
                            tz.numpy(), 1, f, 3, h, w, T, O)
            mom = run_tiled(lambda t: vae.quant_conv(vae.encoder(torch.from_numpy(np.ascontiguousarray(t)))),
                            tx.numpy(), f, 1, 8, h, w, T, O)
            save(os.path.join(td, "decoded_tiled.npy"), dec)
            save(os.path.join(td, "latent_mean_tiled.npy"), mom[:, :4] * sf)
            save(os.path.join(td, "decoded_untiled.npy"), vae.decode(tz / sf).sample)
            save(os.path.join(td, "latent_mean_untiled.npy"), vae.encode(tx).latent_dist.mean * sf)
            with open(os.path.join(td, "plan.json"), "w") as fp:
                json.dump({"tile_latent": T, "overlap_latent": O}, fp)
    print(f"  {name}: {sum(p.numel() for p in vae.parameters())} params, x {list(x.shape)}, "
          f"latent {list(latent_in.shape)}")


if __name__ == "__main__":
    fixture("tiny2", 1234, False, 2, 16, 16,
            dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8),
            tiled=(8, 2, 20, 14))
    fixture("tiny3", 4321, True, 1, 24, 32,
            dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
                 scaling_factor=0.5))
    # pixel conversions: diffusers VaeImageProcessor (round) and CompVis (truncate)
    rng = np.random.default_rng(7)
    u = rng.uniform(-1.2, 1.2, size=(3, 8, 8)).astype(np.float32)
    u.flat[:6] = [0.0, -1.0, 1.0, 2.0 / 255 - 1, -0.5, 0.5]  # exact halves and edges
    t = torch.from_numpy(u)
    dif = ((t * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    cv = (255.0 * torch.clamp((t + 1.0) / 2.0, 0.0, 1.0).permute(1, 2, 0).numpy()).astype(np.uint8)
    pix = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    unit = 2.0 * (pix.astype(np.float32) / 255.0) - 1.0
    save(os.path.join(OUT, "pixels", "unit.npy"), u)
    save(os.path.join(OUT, "pixels", "rgb_round.npy"), dif.astype(np.float32))
    save(os.path.join(OUT, "pixels", "rgb_trunc.npy"), cv.astype(np.float32))
    save(os.path.join(OUT, "pixels", "rgb_in.npy"), pix.astype(np.float32))
    save(os.path.join(OUT, "pixels", "unit_in.npy"), unit.transpose(2, 0, 1))
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"  tests/fixtures/vae: {total / 1024:.0f} KiB")
