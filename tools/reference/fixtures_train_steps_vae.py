"""
tools/reference/fixtures_train_steps_vae.py -- the first steps of stage 1 in
PyTorch, the reference `sd train --stage vae` must follow step for step.

The loop is tools/train/train_tiny.py's train_vae with one worker (its
vae_batch: crops on the 8-pixel grid, loss weights obj_weight on shape pixels;
the last steps on whole images at a quarter of the batch), on a micro
AutoencoderKL of the tiny model's class (4 levels, so the same 8x downsampling
and crop grid) whose initial weights are saved, so the C run starts from them:

  data      dataset.make_dataset(seed, n_images)
  per step  from one torch.Generator seeded seed*1000+100 (worker 0):
            randint idx [b], randint oy, ox [b] (crop < 64), randn noise [b,4,h,w]
            z = mean + std * noise; y = decode(z)
            L = sum w (|y-x| + (y-x)^2) / (3 sum w) + kl_weight KL
            Adam (0.9, 0.99), lr warm-up 50, clip 1.0

Writes tests/fixtures/train/steps_vae/:
  init/vae/{config.json, diffusion_pytorch_model.safetensors}   fp16 (the run
      starts from these values widened to fp32)
  losses.npy [steps, 3] per step: mean |y-x|, mean (y-x)^2, KL (what train_tiny.py logs)
  recipe.json  the settings
  final_<name>.npy  a few tensors after the last step

  .venv-ref/bin/python tools/reference/fixtures_train_steps_vae.py
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
import dataset  # noqa: E402
import train_tiny  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "train", "steps_vae")

VAE_MICRO = dict(in_channels=3, out_channels=3, latent_channels=4,
                 down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4,
                 block_out_channels=[8, 8, 16, 16], layers_per_block=1,
                 norm_num_groups=4, sample_size=64, act_fn="silu")
FINAL_CHECK = ["encoder.conv_in.weight", "encoder.mid_block.attentions.0.to_q.weight",
               "decoder.up_blocks.3.resnets.1.conv2.weight", "quant_conv.bias"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--full-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-images", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=32)
    a = p.parse_args()

    import torch
    from diffusers import AutoencoderKL
    torch.set_num_threads(1)
    images, _, _, _ = dataset.make_dataset(a.seed, a.n_images)
    torch.manual_seed(a.seed)
    vae = AutoencoderKL(**VAE_MICRO)
    # stored in fp16 (half the bytes); training starts from those values in fp32
    os.makedirs(os.path.join(OUT, "init", "vae"), exist_ok=True)
    vae.half().save_pretrained(os.path.join(OUT, "init", "vae"), safe_serialization=True)
    vae.float()

    # the loop of train_tiny.train_vae, one worker
    params = list(vae.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(a.seed * 1000 + 100)
    N, b = a.n_images, a.batch
    losses = []
    for step in range(a.steps):
        full = step >= a.steps - a.full_steps
        crop, bb = (64, max(1, b // 4)) if full else (a.crop, b)
        idx = torch.randint(0, N, (bb,), generator=g).numpy()
        x, w = train_tiny.vae_batch(images, idx, crop, g, 5.0)
        for pg in opt.param_groups:
            pg["lr"] = train_tiny.lr_at(step, 1e-3, 50)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        y = vae.decode(z).sample
        l1 = (y - x).abs().mean()
        l2 = (y - x).pow(2).mean()
        kl = post.kl().mean()
        err = (w * ((y - x).abs() + (y - x).pow(2))).sum() / (w.sum() * 3)
        loss = err + 1e-6 * kl
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append([l1.item(), l2.item(), kl.item()])
        print(f"step {step + 1}: l1 {losses[-1][0]:.6f} l2 {losses[-1][1]:.6f} kl {losses[-1][2]:.4f}",
              flush=True)
    np.save(os.path.join(OUT, "losses.npy"), np.array(losses, dtype=np.float64))
    sd = vae.state_dict()
    for k in FINAL_CHECK:
        np.save(os.path.join(OUT, "final_vae." + k + ".npy"), sd[k].numpy())
    with open(os.path.join(OUT, "recipe.json"), "w") as f:
        json.dump(dict(seed=a.seed, n_images=a.n_images, batch=a.batch, steps=a.steps,
                       full_steps=a.full_steps, crop=a.crop, lr=1e-3, warmup=50,
                       betas=[0.9, 0.99], clip=1.0, kl_weight=1e-6, obj_weight=5.0,
                       generator_seed=a.seed * 1000 + 100, vae=VAE_MICRO), f, indent=2)


if __name__ == "__main__":
    main()
