"""
tools/train/train_inpaint.py -- a 9-channel inpainting variant of the tiny
model, fine-tuned from its UNet the way the Stable Diffusion inpainting
models were made from SD 1.x (the UNet's first convolution widened, the new
input channels zero-initialised, then trained on masked images).

The UNet input becomes [z_t (4), m (1), E(x * (1 - M)) * scale (4)] = 9
channels, the layout diffusers' StableDiffusionInpaintPipeline and ldm.c
(ldm/pipeline.c) feed it:
  M         the pixel mask [64,64], 1 = repaint; m = M at the latent grid
            (nearest: M[8i, 8j]), here drawn as rectangles of whole latent
            cells (each side 1 to 8 cells of the 8x8 grid, anywhere) or, in
            10% of the samples, the whole image (then the task is plain
            text-to-image)
  x*(1-M)   the image with the repainted pixels set to 0 (mid-gray in
            [-1,1]), encoded by the frozen tiny VAE (posterior mean)
conv_in.weight [32,4,3,3] -> [32,9,3,3]: the first 4 input channels are the
base model's, the other 5 are zero, so before training the model is exactly
the base model (it ignores the mask). Then every UNet weight is trained with
the base recipe's loss (LDM eq. 2, min-SNR-5, 10% empty captions) on the
whole latent; the text encoder and VAE stay the base model's. Adam,
constant learning rate after warm-up, one CPU process, seeded.

Export (diffusers layout, what ldm.c opens): <out>/unet/ (config with
in_channels 9, fp16 safetensors) and <out>/training.json; the text encoder,
VAE, scheduler and model_index.json are the base model's (relative symlinks
made here: ../tiny-model/...).

  .venv-ref/bin/python tools/train/train_inpaint.py [--out tools/tiny-model-inpaint]
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset  # noqa: E402
import train_tiny  # noqa: E402

GRID = 8        # latent side
FACTOR = 8      # pixels per latent cell


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def random_masks(n, g, full_frac=0.1):
    """n pixel masks [n,1,64,64] (1 = repaint): a rectangle of whole latent
    cells, sides 1..8 cells, anywhere; full_frac of them the whole image."""
    import torch
    M = torch.zeros(n, 1, GRID * FACTOR, GRID * FACTOR)
    full = torch.rand(n, generator=g) < full_frac
    for i in range(n):
        if full[i]:
            M[i] = 1
            continue
        h, w = (int(v) for v in torch.randint(1, GRID + 1, (2,), generator=g))
        y = int(torch.randint(0, GRID - h + 1, (1,), generator=g))
        x = int(torch.randint(0, GRID - w + 1, (1,), generator=g))
        M[i, :, y * FACTOR:(y + h) * FACTOR, x * FACTOR:(x + w) * FACTOR] = 1
    return M


def widen_conv_in(unet):
    """A copy of `unet` whose conv_in takes 9 channels: [z (4), m (1), E(masked) (4)],
    the new 5 zero-initialised."""
    import torch
    from diffusers import UNet2DConditionModel
    cfg = dict(unet.config)
    cfg["in_channels"] = 9
    wide = UNet2DConditionModel.from_config(cfg)
    sd = unet.state_dict()
    w = sd["conv_in.weight"]                                       # [32,4,3,3]
    sd["conv_in.weight"] = torch.cat([w, torch.zeros(w.shape[0], 5, *w.shape[2:])], dim=1)
    wide.load_state_dict(sd)
    return wide


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tools/tiny-model", help="the base model")
    p.add_argument("--out", default="tools/tiny-model-inpaint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-images", type=int, default=3000, help="base scenes (dataset seed 0)")
    p.add_argument("--masks", type=int, default=2, help="masks drawn per image (encoded once)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--min-snr", type=float, default=5.0)
    p.add_argument("--cond-drop", type=float, default=0.1)
    a = p.parse_args()
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel
    torch.set_num_threads(1)
    wall0, cpu0 = time.time(), time.process_time()
    g = torch.Generator().manual_seed(a.seed)

    # data: images, captions, posteriors of the images, masks and masked-image latents
    images, en, ja, _ = dataset.make_dataset(a.seed, a.n_images)
    ids_en = torch.from_numpy(train_tiny.tokenize(en))
    ids_ja = torch.from_numpy(train_tiny.tokenize(ja))
    ids_empty = torch.from_numpy(train_tiny.tokenize([""])[0])
    vae = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae"), torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(os.path.join(a.model, "text_encoder"), torch_dtype=torch.float32)
    base = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet"), torch_dtype=torch.float32)
    scale = float(vae.config.scaling_factor)
    vae.requires_grad_(False); text.requires_grad_(False)
    N, K = a.n_images, a.masks
    mean, std = torch.zeros(N, 4, GRID, GRID), torch.zeros(N, 4, GRID, GRID)
    masks = torch.zeros(N, K, 1, GRID, GRID)                        # m at the latent grid
    masked = torch.zeros(N, K, 4, GRID, GRID)                       # E(x * (1 - M)) * scale
    with torch.no_grad():
        for i in range(0, N, 200):
            x = torch.from_numpy(images[i:i + 200]).permute(0, 3, 1, 2).float() / 127.5 - 1
            post = vae.encode(x).latent_dist
            mean[i:i + len(x)], std[i:i + len(x)] = post.mean, post.std
            for k in range(K):
                M = random_masks(len(x), g)
                masks[i:i + len(x), k] = M[:, :, ::FACTOR, ::FACTOR]
                masked[i:i + len(x), k] = vae.encode(x * (1 - M)).latent_dist.mean * scale
    log(f"data: {N} scenes x {K} masks encoded ({time.process_time() - cpu0:.0f} s CPU)")

    unet = widen_conv_in(base)
    params = list(unet.parameters())
    ema = [q.detach().clone() for q in params]
    opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.99))
    sched = DDPMScheduler(**train_tiny.SCHED_CFG)
    abar = sched.alphas_cumprod.float()
    snr = abar / (1 - abar)
    wt = torch.clamp(snr, max=a.min_snr) / snr
    losses = []
    for step in range(a.steps):
        idx = torch.randint(0, N, (a.batch,), generator=g)
        k = torch.randint(0, K, (a.batch,), generator=g)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        jap = torch.rand(a.batch, generator=g) < 0.5
        ids = torch.where(jap[:, None], ids_ja[idx], ids_en[idx])
        drop = torch.rand(a.batch, generator=g) < a.cond_drop
        ids = torch.where(drop[:, None], ids_empty[None, :], ids)
        t = torch.randint(0, 1000, (a.batch,), generator=g)
        eps = torch.randn(z.shape, generator=g)
        zt = sched.add_noise(z, eps, t)
        x_in = torch.cat([zt, masks[idx, k], masked[idx, k]], dim=1)     # [B,9,8,8]
        for pg in opt.param_groups:
            pg["lr"] = train_tiny.lr_at(step, a.lr, 50)
        with torch.no_grad():
            ctx = text(ids).last_hidden_state
        pred = unet(x_in, t, ctx).sample
        per = (pred - eps).pow(2).mean(dim=(1, 2, 3))
        loss = (wt[t] * per).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for e, q in zip(ema, params):
                e.mul_(a.ema).add_(q.detach(), alpha=1 - a.ema)
        losses.append([step + 1, per.mean().item(), loss.item()])
        if (step + 1) % 25 == 0 or step + 1 == a.steps:
            log(f"inpaint step {step + 1}/{a.steps} eps mse {np.mean([l[1] for l in losses[-25:]]):.4f} "
                f"({(time.time() - wall0) / (step + 1):.2f} s/step so far, wall)")

    out = a.out
    with torch.no_grad():
        for e, q in zip(ema, params):
            q.copy_(e)
    unet.to(torch.float16).save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    base_rel = os.path.relpath(os.path.abspath(a.model), os.path.abspath(out))
    for name in ("text_encoder", "vae", "scheduler", "model_index.json"):
        link = os.path.join(out, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(base_rel, name), link)
    import diffusers
    import transformers
    unet_bytes = sum(os.path.getsize(os.path.join(out, "unet", f)) for f in os.listdir(os.path.join(out, "unet")))
    rec = dict(
        recipe={k: v for k, v in vars(a).items() if k != "out"},
        unet_in_channels=9, parameters=sum(q.numel() for q in params), unet_bytes=unet_bytes,
        final_losses=dict(eps_mse=float(np.mean([l[1] for l in losses[-100:]])),
                          weighted=float(np.mean([l[2] for l in losses[-100:]]))),
        first_losses=dict(eps_mse=float(np.mean([l[1] for l in losses[:25]]))),
        wall_seconds=round(time.time() - wall0, 1), cpu_seconds=round(time.process_time() - cpu0, 1),
        threads=1,
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      diffusers=diffusers.__version__, transformers=transformers.__version__,
                      numpy=np.__version__),
    )
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(rec, f, indent=2)
    log(f"wrote {out} (unet {unet_bytes} bytes); {rec['wall_seconds']} s wall, {rec['cpu_seconds']} s CPU")


if __name__ == "__main__":
    main()
