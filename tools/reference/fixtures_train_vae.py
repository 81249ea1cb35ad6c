"""Fixtures for tests/test_train_vae.c: one step of the stage-1 loss of
tools/train/train_tiny.py (train_vae) through diffusers' AutoencoderKL, with
the gradient of the loss with respect to every parameter.

The step (LDM sec. 3.1 with the KL regulariser, no perceptual/GAN term):
    moments = quant_conv(Encoder(x))                 [B,2Z,h,w] = (mean, logvar)
    logvar  = clamp(logvar, -30, 20)                 (DiagonalGaussianDistribution)
    z       = mean + exp(logvar/2) * noise           (reparameterised sample)
    y       = Decoder(post_quant_conv(z))            [B,3,H,W]
    err     = sum(w * (|y-x| + (y-x)^2)) / (sum(w) * 3)      w [B,1,H,W]
    kl      = mean_b 0.5 * sum(mean^2 + var - 1 - logvar)
    loss    = err + kl_weight * kl
(l1 = mean|y-x| and l2 = mean (y-x)^2 are logged, not trained.)

Configs (tests/fixtures/train/vae/<name>/):
  micro   block_out_channels (8,12), layers_per_block 1, norm_num_groups 4,
          latent 4, mid-block attention, quant_conv and post_quant_conv,
          batch 2, 16x16: every block kind of the tiny model (resnets with and
          without the 1x1 shortcut, the (0,1,0,1)-padded stride-2 downsample,
          nearest upsample + conv, single-head attention). One logvar channel
          is pushed below -30 (quant_conv bias) so part of it is clamped and
          its gradient must be zero there; kl_weight 1e-2 so the KL path counts.
  plain   block_out_channels (4,4), layers_per_block 2, norm_num_groups 2,
          latent 4, no mid-block attention, no quant_conv / post_quant_conv,
          batch 1, 8x8 (the optional parts of the config switched off).
Each folder:
  config.json + diffusion_pytorch_model.safetensors  the model, fp16 weights
          (the step is computed from exactly those values widened)
  x.npy [B,3,H,W], w.npy [B,1,H,W], noise.npy [B,Z,h,w]  inputs
  loss.npy [6]    loss, err, kl, l1, l2, kl_weight
  moments.npy, image.npy   the forward's moments and y
  dimage.npy, dz.npy, dmoments.npy   d loss / d y, d z, d moments
  grads.safetensors   d loss / d parameter for every parameter (torch names, fp32)
  names.txt       model.named_parameters() order, one name a line
Values are computed by autograd in float64 from the float32 inputs (the exact
gradient rounded once); the script prints how far torch's own float32 step is
from it (the scale of rounding any float32 implementation carries).

  .venv-ref/bin/python tools/reference/fixtures_train_vae.py          # the fixtures
  .venv-ref/bin/python tools/reference/fixtures_train_vae.py --tiny DIR
      the real tiny config (tools/train/train_tiny.py VAE_CFG, the trained
      weights of tools/tiny-model/vae, batch 2, 64x64, kl_weight 1e-6) into DIR
      (not committed; build/tests/test_train_vae DIR checks it)
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.utils import logging
from safetensors.torch import save_file

OUT = os.path.join("tests", "fixtures", "train", "vae")
torch.set_num_threads(2)
logging.set_verbosity_error()


def save(path, t):
    a = t.detach().cpu().to(torch.float32).numpy() if torch.is_tensor(t) else t
    np.save(path, np.ascontiguousarray(np.asarray(a, dtype=np.float32)))


def make_model(seed, levels, **cfg):
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels, **cfg)
    # Perturb every parameter: GroupNorm affine terms away from 1/0, biases
    # non-zero, so no gradient is trivially zero.
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
    return vae


def step(vae, x, w, noise, kl_weight, dtype):
    """The stage-1 loss of train_tiny.py in `dtype`; returns values and gradients."""
    vae = vae.to(dtype)
    vae.zero_grad(set_to_none=True)
    x, w, noise = x.to(dtype), w.to(dtype), noise.to(dtype)
    h = vae.encoder(x)
    moments = vae.quant_conv(h) if vae.quant_conv is not None else h
    moments.retain_grad()
    mean, logvar = torch.chunk(moments, 2, dim=1)
    logvar = torch.clamp(logvar, -30.0, 20.0)
    std, var = torch.exp(0.5 * logvar), torch.exp(logvar)
    z = mean + std * noise
    z.retain_grad()
    y = vae.decode(z).sample
    y.retain_grad()
    l1 = (y - x).abs().mean()
    l2 = (y - x).pow(2).mean()
    kl = (0.5 * torch.sum(mean.pow(2) + var - 1.0 - logvar, dim=[1, 2, 3])).mean()
    err = (w * ((y - x).abs() + (y - x).pow(2))).sum() / (w.sum() * 3)
    loss = err + kl_weight * kl
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in vae.named_parameters()}
    vals = [loss.item(), err.item(), kl.item(), l1.item(), l2.item(), kl_weight]
    return dict(vals=vals, moments=moments.detach(), image=y.detach(), dimage=y.grad,
                dz=z.grad, dmoments=moments.grad, grads=grads)


def write(out, vae, x, w, noise, kl_weight):
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    vae = vae.half().float()   # the C side reads fp16 weights: compute with exactly those
    vae.save_pretrained(out, safe_serialization=True)
    sd = {k: v.half().contiguous() for k, v in vae.state_dict().items()}
    save_file(sd, os.path.join(out, "diffusion_pytorch_model.safetensors"))
    r64 = step(vae, x, w, noise, kl_weight, torch.float64)
    r32 = step(vae, x, w, noise, kl_weight, torch.float32)
    for k in ("x", "w", "noise"):
        save(os.path.join(out, f"{k}.npy"), {"x": x, "w": w, "noise": noise}[k])
    save(os.path.join(out, "loss.npy"), np.array(r64["vals"]))
    for k in ("moments", "image", "dimage", "dz", "dmoments"):
        save(os.path.join(out, f"{k}.npy"), r64[k])
    save_file({n: g.to(torch.float32).contiguous() for n, g in r64["grads"].items()},
              os.path.join(out, "grads.safetensors"))
    with open(os.path.join(out, "names.txt"), "w") as f:
        f.write("".join(n + "\n" for n in r64["grads"]))
    # report: torch float32 vs float64, and the clamp margin
    worst = max(((g32 - r64["grads"][n]).abs().max() / r64["grads"][n].abs().max().clamp_min(1e-30)).item()
                for n, g32 in r32["grads"].items())
    Z = noise.shape[1]
    lv = r64["moments"][:, Z:]
    clamped = ((lv < -30) | (lv > 20)).double().mean().item()
    margin = torch.minimum((lv + 30).abs(), (lv - 20).abs()).min().item()
    n = sum(g.numel() for g in r64["grads"].values())
    print(f"{out}: {len(r64['grads'])} tensors, {n} parameters; loss {r64['vals'][0]:.6f} "
          f"(err {r64['vals'][1]:.6f}, kl {r64['vals'][2]:.4f}); logvar clamped {clamped:.1%}, "
          f"closest to a clamp bound {margin:.3g}; torch f32 vs f64: loss "
          f"{abs(r32['vals'][0] - r64['vals'][0]):.2e}, worst gradient {worst:.2e}")


def inputs(g, B, H, W, Z, f):
    x = torch.rand(B, 3, H, W, generator=g) * 2 - 1
    w = 1 + 4 * (torch.rand(B, 1, H, W, generator=g) < 0.3).float()   # 5 on "shapes", 1 elsewhere
    noise = torch.randn(B, Z, H // f, W // f, generator=g)
    return x, w, noise


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", metavar="DIR", help="the real tiny config into DIR instead")
    a, _ = p.parse_known_args()
    if a.tiny:
        vae = AutoencoderKL.from_pretrained("tools/tiny-model/vae", torch_dtype=torch.float32)
        g = torch.Generator().manual_seed(64)
        x, w, noise = inputs(g, 2, 64, 64, 4, 8)
        write(a.tiny, vae, x, w, noise, 1e-6)
        return
    vae = make_model(1, 2, block_out_channels=(8, 12), layers_per_block=1, norm_num_groups=4,
                     latent_channels=4)
    with torch.no_grad():   # logvar channel 0 spread around -30: partly clamped
        vae.quant_conv.weight[4] *= 20.0
        vae.quant_conv.bias[4] = -30.0
    g = torch.Generator().manual_seed(16)
    x, w, noise = inputs(g, 2, 16, 16, 4, 2)
    write(os.path.join(OUT, "micro"), vae, x, w, noise, 1e-2)

    vae = make_model(2, 2, block_out_channels=(4, 4), layers_per_block=2, norm_num_groups=2,
                     latent_channels=4, use_quant_conv=False, use_post_quant_conv=False,
                     mid_block_add_attention=False)
    g = torch.Generator().manual_seed(8)
    x, w, noise = inputs(g, 1, 8, 8, 4, 2)
    write(os.path.join(OUT, "plain"), vae, x, w, noise, 1e-2)


if __name__ == "__main__":
    main()
