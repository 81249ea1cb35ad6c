"""
tools/train/train_tiny.py -- train the tiny text-to-image latent diffusion
model that ships in tools/tiny-model/ (the default model of `sd txt2img`).

The two stages of the LDM paper (Rombach et al. 2022), on the procedural
shapes dataset of tools/train/dataset.py, with the same model classes as
Stable Diffusion 1.x so ldm.c runs the result through exactly the SD paths:

  stage 1  AutoencoderKL (diffusers), 64x64x3 -> 8x8x4 (3 downsamples):
           L = sum_px m (|x - D(z)|_1 + |x - D(z)|_2^2) / sum_px m
               + w_kl KL(q(z|x) || N(0,I)), m = 5 on shapes, 1 on background,
           z ~ q(z|x) (reparameterised). LDM sec. 3.1 with the KL-reg; no
           perceptual or adversarial loss (flat-colour shapes do not need it).
  latents  encode every image once; scaling factor = 1 / std(z) (LDM sec.
           4.3.2 / appendix G: "rescale the latent to unit variance").
  stage 2  UNet2DConditionModel + CLIPTextModel (trained from scratch, real
           CLIP BPE ids, vocabulary 49408) on z * scale, LDM eq. 2:
           L = E_{z,c,eps,t} w(t) |eps - eps_theta(z_t, t, tau(y))|^2,
           z_t = sqrt(abar_t) z + sqrt(1-abar_t) eps (DDPM eq. 4) with SD's
           scaled-linear schedule (1000 steps, beta 0.00085..0.012),
           w(t) = min(SNR(t), 5) / SNR(t) (min-SNR weighting, Hang et al.
           2023; w = 1 gives the plain LDM objective), 10% empty captions
           for classifier-free guidance, EMA of the weights.
  export   fp16 safetensors in a diffusers folder (unet/, vae/,
           text_encoder/, scheduler/, model_index.json; no vocabulary:
           ldm.c uses the standard CLIP BPE file), loss curves PNG,
           training.json (recipe, losses, CPU seconds).
  samples  a few prompts through the diffusers StableDiffusionPipeline
           (fp32, from the exported fp16 weights, DDIM 20 steps, guidance
           5), saved as a PNG grid next to the model (samples.png).

Training runs as W data-parallel worker processes (torch.distributed, gloo,
one thread each: W=2 uses both cores of a 2-core machine), each drawing its
own seeded half of every batch; gradients are averaged. Results are
deterministic for a given seed and W. Every stage checkpoints to --work and
resumes with --resume (the learning rate is constant after warm-up, so a run
stopped and resumed equals one run of the same number of steps).

  .venv-ref/bin/python tools/train/train_tiny.py                 # everything
  .venv-ref/bin/python tools/train/train_tiny.py --stage unet --resume

Left out: perceptual/GAN losses, v-prediction, any data beyond the generator.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset  # noqa: E402

# ---------------------------------------------------------------------------
# Model configurations (diffusers / transformers config fields)

VAE_CFG = dict(in_channels=3, out_channels=3, latent_channels=4,
               down_block_types=["DownEncoderBlock2D"] * 4,
               up_block_types=["UpDecoderBlock2D"] * 4,
               block_out_channels=[16, 32, 64, 64], layers_per_block=1,
               norm_num_groups=16, sample_size=64, act_fn="silu")
TEXT_CFG = dict(vocab_size=49408, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407, projection_dim=64)
UNET_CFG = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=[32, 64],
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                cross_attention_dim=64, attention_head_dim=4, norm_num_groups=8)
SCHED_CFG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", prediction_type="epsilon")

SOT, EOT, CTX = 49406, 49407, 77


def tokenize(texts):
    """SD1 conditioning ids: [SOT] + BPE ids (<= 75) + [EOT], padded with EOT
    (HF padding="max_length", what ldm.c does for a quick_gelu encoder)."""
    from open_clip.tokenizer import _tokenizer
    out = np.full((len(texts), CTX), EOT, dtype=np.int64)
    for i, t in enumerate(texts):
        ids = _tokenizer.encode(t)[:CTX - 2]
        out[i, :len(ids) + 2] = [SOT] + ids + [EOT]
    return out


# ---------------------------------------------------------------------------
# Small helpers: logging, distributed gradient averaging, checkpoints

def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def average_gradients(params, world):
    """All-reduce every gradient as one flat buffer, divide by W."""
    import torch
    import torch.distributed as dist
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    o = 0
    for p, g in zip(params, grads):
        n = g.numel()
        if p.grad is None:
            p.grad = flat[o:o + n].view_as(p).clone()
        else:
            p.grad.copy_(flat[o:o + n].view_as(p))
        o += n


def mean_over_workers(x, world):
    import torch
    import torch.distributed as dist
    t = torch.tensor([float(x)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
    return t.item() / world


def lr_at(step, lr, warmup):
    return lr * min(1.0, (step + 1) / warmup)   # linear warm-up, then constant


def save_ckpt(path, rank, **state):
    import torch
    torch.save(state, path + f".rank{rank}.tmp")
    os.replace(path + f".rank{rank}.tmp", path + f".rank{rank}")


def load_ckpt(path, rank):
    import torch
    p = path + f".rank{rank}"
    return torch.load(p, weights_only=False) if os.path.exists(p) else None


# ---------------------------------------------------------------------------
# Data

def data_path(a):
    return os.path.join(a.work, f"data-s{a.seed}-n{a.n_images}.npz")


def make_data(a):
    p = data_path(a)
    if os.path.exists(p):
        return
    log(f"dataset: rendering {a.n_images} scenes (seed {a.seed})")
    images, en, ja, _ = dataset.make_dataset(a.seed, a.n_images)
    np.savez(p, images=images, ids_en=tokenize(en), ids_ja=tokenize(ja),
             ids_empty=tokenize([""])[0])
    log(f"dataset: wrote {p}")


# ---------------------------------------------------------------------------
# Stage 1: the autoencoder

def vae_batch(images, idx, crop, g, obj_weight):
    """uint8 [N,64,64,3] -> x float [B,3,crop,crop] in [-1,1] and per-pixel loss
    weights w [B,1,crop,crop]: 1 on the background, obj_weight on the shapes
    (pixels that differ from the corner colour; the shapes are a small part of
    each image, and their colours are what the captions are about). Crops lie
    on the 8-pixel grid of the latent (the encoder's stride-2 phase is kept)."""
    import torch
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1
    obj = ((x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.1).float()
    w = 1 + (obj_weight - 1) * obj
    if crop < x.shape[-1]:
        n = (x.shape[-1] - crop) // 8 + 1
        oy = torch.randint(0, n, (len(idx),), generator=g) * 8
        ox = torch.randint(0, n, (len(idx),), generator=g) * 8
        x = torch.stack([x[i, :, oy[i]:oy[i] + crop, ox[i]:ox[i] + crop] for i in range(len(idx))])
        w = torch.stack([w[i, :, oy[i]:oy[i] + crop, ox[i]:ox[i] + crop] for i in range(len(idx))])
    return x, w


def train_vae(rank, world, a):
    import torch
    from diffusers import AutoencoderKL
    torch.manual_seed(a.seed)                     # same initial weights on every worker
    vae = AutoencoderKL(**VAE_CFG)
    params = list(vae.parameters())
    opt = torch.optim.Adam(params, lr=a.vae_lr, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(a.seed * 1000 + 100 + rank)
    ck = os.path.join(a.work, "vae.ckpt")
    step, losses, cpu0 = 0, [], 0.0
    st = load_ckpt(ck, rank) if a.resume else None
    if st:
        vae.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); g.set_state(st["rng"])
        step, losses, cpu0 = st["step"], st["losses"], st["cpu"]
        log(f"vae: resumed at step {step}")
    images = np.load(data_path(a))["images"]
    N = len(images)
    b = a.vae_batch // world
    t0, c0 = time.time(), time.process_time()
    while step < a.vae_steps:
        full = step >= a.vae_steps - a.vae_full_steps
        crop, bb = (64, max(1, b // 4)) if full else (a.vae_crop, b)
        idx = torch.randint(0, N, (bb,), generator=g).numpy()
        x, w = vae_batch(images, idx, crop, g, a.obj_weight)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, a.vae_lr, 50)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        y = vae.decode(z).sample
        l1 = (y - x).abs().mean()                                     # logged: unweighted
        l2 = (y - x).pow(2).mean()
        kl = post.kl().mean()
        err = (w * ((y - x).abs() + (y - x).pow(2))).sum() / (w.sum() * 3)
        loss = err + a.kl_weight * kl
        opt.zero_grad(set_to_none=False)
        loss.backward()
        average_gradients(params, world)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        rec = [mean_over_workers(v.item(), world) for v in (l1, l2, kl)]
        losses.append([step] + rec)
        if rank == 0 and (step % 25 == 0 or step == a.vae_steps):
            sp = (time.time() - t0) / max(1, step - (st["step"] if st else 0))
            log(f"vae step {step}/{a.vae_steps} crop {crop} l1 {rec[0]:.4f} l2 {rec[1]:.5f} "
                f"kl {rec[2]:.1f}  {sp:.2f} s/step")
        if step % 100 == 0 or step == a.vae_steps:
            save_ckpt(ck, rank, model=vae.state_dict(), opt=opt.state_dict(), rng=g.get_state(),
                      step=step, losses=losses, cpu=cpu0 + time.process_time() - c0)


def encode_part(rank, world, a):
    """Worker `rank`: posterior mean/std of its contiguous share of the images."""
    import torch
    from diffusers import AutoencoderKL
    torch.set_num_threads(1)
    st = load_ckpt(os.path.join(a.work, "vae.ckpt"), 0)
    vae = AutoencoderKL(**VAE_CFG)
    vae.load_state_dict(st["model"])
    vae.eval()
    images = np.load(data_path(a))["images"]
    lo, hi = rank * len(images) // world, (rank + 1) * len(images) // world
    mean, std = [], []
    c0 = time.process_time()
    with torch.no_grad():
        for i in range(lo, hi, 250):
            x = torch.from_numpy(images[i:min(i + 250, hi)]).permute(0, 3, 1, 2).float() / 127.5 - 1
            p = vae.encode(x).latent_dist
            mean.append(p.mean.numpy()); std.append(p.std.numpy())
    np.savez(os.path.join(a.work, f"latents.part{rank}.npz"), mean=np.concatenate(mean),
             std=np.concatenate(std), cpu=time.process_time() - c0)


def encode_latents(a):
    """Posterior mean/std of every image with the trained encoder (W worker
    processes); scale = 1/std(z) over one sample z ~ q(z|x) of every image."""
    out = os.path.join(a.work, "latents.npz")
    if a.workers == 1:
        encode_part(0, 1, a)
    else:
        import torch.multiprocessing as mp
        mp.spawn(encode_part, args=(a.workers, a), nprocs=a.workers, join=True)
    parts = [np.load(os.path.join(a.work, f"latents.part{r}.npz")) for r in range(a.workers)]
    mean = np.concatenate([q["mean"] for q in parts])
    std = np.concatenate([q["std"] for q in parts])
    g = np.random.default_rng(a.seed)
    z = mean + std * g.standard_normal(mean.shape).astype(np.float32)
    scale = float(1.0 / z.std())
    np.savez(out, mean=mean, std=std, scale=scale, cpu=sum(float(q["cpu"]) for q in parts))
    log(f"latents: {mean.shape}, std(z) {z.std():.4f} -> scaling_factor {scale:.5f}, "
        f"mean posterior std {std.mean():.4f}")


# ---------------------------------------------------------------------------
# Stage 2: the text-conditioned UNet (and the text encoder, trained jointly)

def train_unet(rank, world, a):
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(a.seed + 1)
    unet = UNet2DConditionModel(**UNET_CFG)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CFG))
    models = [unet, text]
    params = [p for m in models for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=a.unet_lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = DDPMScheduler(**SCHED_CFG)
    abar = sched.alphas_cumprod.float()
    snr = abar / (1 - abar)
    wt = torch.clamp(snr, max=a.min_snr) / snr if a.min_snr > 0 else torch.ones_like(snr)
    g = torch.Generator().manual_seed(a.seed * 1000 + 200 + rank)
    ck = os.path.join(a.work, "unet.ckpt")
    step, losses, cpu0 = 0, [], 0.0
    st = load_ckpt(ck, rank) if a.resume else None
    if st:
        unet.load_state_dict(st["unet"]); text.load_state_dict(st["text"])
        opt.load_state_dict(st["opt"]); g.set_state(st["rng"])
        for e, v in zip(ema, st["ema"]):
            e.copy_(v)
        step, losses, cpu0 = st["step"], st["losses"], st["cpu"]
        log(f"unet: resumed at step {step}")
    lat = np.load(os.path.join(a.work, "latents.npz"))
    mean, std, scale = (torch.from_numpy(lat["mean"]), torch.from_numpy(lat["std"]),
                        float(lat["scale"]))
    d = np.load(data_path(a))
    ids_en, ids_ja = torch.from_numpy(d["ids_en"]), torch.from_numpy(d["ids_ja"])
    ids_empty = torch.from_numpy(d["ids_empty"])
    N = len(mean)
    b = a.unet_batch // world
    t0, c0 = time.time(), time.process_time()
    while step < a.unet_steps:
        idx = torch.randint(0, N, (b,), generator=g)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        ja = torch.rand(b, generator=g) < 0.5                       # caption language
        ids = torch.where(ja[:, None], ids_ja[idx], ids_en[idx])
        drop = torch.rand(b, generator=g) < a.cond_drop               # CFG: empty caption
        ids = torch.where(drop[:, None], ids_empty[None, :], ids)
        t = torch.randint(0, 1000, (b,), generator=g)
        eps = torch.randn(z.shape, generator=g)
        zt = sched.add_noise(z, eps, t)                               # DDPM eq. 4
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, a.unet_lr, 200)
        ctx = text(ids).last_hidden_state                             # tau_theta(y) [B,77,64]
        pred = unet(zt, t, ctx).sample                                # eps_theta(z_t, t, tau)
        per = (pred - eps).pow(2).mean(dim=(1, 2, 3))
        loss = (wt[t] * per).mean()                                   # LDM eq. 2 (+ min-SNR w)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        average_gradients(params, world)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        rec = [mean_over_workers(per.mean().item(), world), mean_over_workers(loss.item(), world)]
        losses.append([step] + rec)
        if rank == 0 and (step % 25 == 0 or step == a.unet_steps):
            sp = (time.time() - t0) / max(1, step - (st["step"] if st else 0))
            log(f"unet step {step}/{a.unet_steps} mse {np.mean([l[1] for l in losses[-25:]]):.4f} "
                f"weighted {np.mean([l[2] for l in losses[-25:]]):.4f}  {sp:.2f} s/step")
        if step % 100 == 0 or step == a.unet_steps:
            save_ckpt(ck, rank, unet=unet.state_dict(), text=text.state_dict(),
                      opt=opt.state_dict(), ema=ema, rng=g.get_state(), step=step,
                      losses=losses, cpu=cpu0 + time.process_time() - c0)


# ---------------------------------------------------------------------------
# Export: fp16 diffusers folder + curves + recipe

def ema_models(a):
    """(unet, text) with the EMA weights, fp32."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    st = load_ckpt(os.path.join(a.work, "unet.ckpt"), 0)
    unet = UNet2DConditionModel(**UNET_CFG)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_CFG))
    unet.load_state_dict(st["unet"]); text.load_state_dict(st["text"])
    with torch.no_grad():
        for p, e in zip([p for m in (unet, text) for p in m.parameters()], st["ema"]):
            p.copy_(e)
    return unet, text, st


def plot_curves(path, vae_losses, unet_losses):
    """Loss curves (log scale, smoothed) as a PNG: matplotlib if present, else Pillow."""
    def smooth(v, k=25):
        v = np.asarray(v, dtype=np.float64)
        c = np.cumsum(np.insert(v, 0, 0.0))
        return np.array([(c[i + 1] - c[max(0, i + 1 - k)]) / (i + 1 - max(0, i + 1 - k))
                         for i in range(len(v))])
    vl = np.asarray(vae_losses); ul = np.asarray(unet_losses)
    panels = [("stage 1: autoencoder", [("L1", vl[:, 0], vl[:, 1]), ("MSE", vl[:, 0], vl[:, 2])]),
              ("stage 2: UNet (noise prediction)", [("eps MSE", ul[:, 0], ul[:, 1]),
                                                   ("min-SNR weighted", ul[:, 0], ul[:, 2])])]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (title, curves) in zip(axes, panels):
            for name, x, y in curves:
                ax.plot(x, smooth(y), label=name)
            ax.set_yscale("log"); ax.set_xlabel("step"); ax.set_title(title); ax.legend()
        fig.tight_layout(); fig.savefig(path, dpi=100)
        return
    except ImportError:
        pass
    from PIL import Image, ImageDraw
    W, H, M = 480, 320, 40
    img = Image.new("RGB", (2 * W, H), "white")
    d = ImageDraw.Draw(img)
    colours = [(31, 119, 180), (255, 127, 14)]
    for k, (title, curves) in enumerate(panels):
        ox = k * W
        ys = np.concatenate([smooth(y) for _, _, y in curves])
        lo, hi = np.log10(max(ys.min(), 1e-8)), np.log10(ys.max())
        xmax = max(c[1].max() for c in curves)
        d.rectangle([ox + M, M, ox + W - 10, H - M], outline="black")
        d.text((ox + M, 10), title, fill="black")
        for e in range(int(math.floor(lo)), int(math.ceil(hi)) + 1):
            for m in (1, 2, 5):
                v = math.log10(m) + e
                if lo <= v <= hi:
                    yy = H - M - (v - lo) / max(hi - lo, 1e-9) * (H - 2 * M)
                    d.line([ox + M - 4, yy, ox + M, yy], fill="black")
                    d.text((ox + 2, yy - 6), f"{m}e{e}", fill="black")
        d.text((ox + W - 60, H - M + 8), f"{int(xmax)} steps", fill="black")
        d.text((ox + M + 4, M + 2), f"{10 ** hi:.3g}", fill="gray")
        d.text((ox + M + 4, H - M - 12), f"{10 ** lo:.3g}", fill="gray")
        for j, (name, x, y) in enumerate(curves):
            s = np.log10(np.maximum(smooth(y), 1e-8))
            pts = [(ox + M + xi / xmax * (W - M - 10), H - M - (v - lo) / max(hi - lo, 1e-9) * (H - 2 * M))
                   for xi, v in zip(x, s)]
            d.line(pts, fill=colours[j], width=2)
            d.text((ox + W - 150, M + 8 + 14 * j), name, fill=colours[j])
    img.save(path)


def export(a):
    import torch
    from diffusers import AutoencoderKL
    out = a.out
    lat = np.load(os.path.join(a.work, "latents.npz"))
    scale = float(lat["scale"])
    vst = load_ckpt(os.path.join(a.work, "vae.ckpt"), 0)
    vae = AutoencoderKL(**VAE_CFG, scaling_factor=round(scale, 5))
    vae.load_state_dict(vst["model"])
    unet, text, ust = ema_models(a)
    os.makedirs(out, exist_ok=True)
    for name, m in (("vae", vae), ("unet", unet), ("text_encoder", text)):
        m.to(torch.float16).save_pretrained(os.path.join(out, name), safe_serialization=True)
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    import diffusers
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(dict(_class_name="PNDMScheduler", _diffusers_version=diffusers.__version__,
                       **SCHED_CFG, set_alpha_to_one=False, skip_prk_steps=True,
                       steps_offset=1, clip_sample=False, trained_betas=None), f, indent=2)
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline",
                   "_diffusers_version": diffusers.__version__,
                   "feature_extractor": [None, None], "safety_checker": [None, None],
                   "requires_safety_checker": False,
                   "scheduler": ["diffusers", "PNDMScheduler"],
                   "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": [None, None],
                   "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    vl = [[l[0], l[1], l[2]] for l in vst["losses"]]
    ul = [[l[0], l[1], l[2]] for l in ust["losses"]]
    plot_curves(os.path.join(out, "loss_curves.png"), vl, ul)
    def tail(v, k):
        return float(np.mean([x[k] for x in v[-100:]]))
    import transformers
    rec = dict(
        recipe={k: v for k, v in vars(a).items() if k not in ("stage", "resume", "out", "work")},
        configs=dict(vae=VAE_CFG, text_encoder=TEXT_CFG, unet=UNET_CFG, scheduler=SCHED_CFG),
        scaling_factor=scale,
        final_losses=dict(vae_l1=tail(vl, 1), vae_mse=tail(vl, 2),
                          unet_eps_mse=tail(ul, 1), unet_weighted=tail(ul, 2)),
        cpu_seconds=dict(vae=vst["cpu"] * a.workers, latents=float(lat["cpu"]),
                         unet=ust["cpu"] * a.workers,
                         note="all workers (vae, unet: worker 0 times the number of workers)"),
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      diffusers=diffusers.__version__, transformers=transformers.__version__,
                      numpy=np.__version__),
    )
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(rec, f, indent=2)
    log(f"export: wrote {out} (scaling_factor {scale:.5f}); losses {rec['final_losses']}")


# ---------------------------------------------------------------------------
# Samples through the diffusers pipeline (fp32 from the exported fp16 weights)

def load_pipeline(model_dir):
    import torch
    from diffusers import (AutoencoderKL, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel
    kw = dict(torch_dtype=torch.float32)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(os.path.join(model_dir, "vae"), **kw),
        text_encoder=CLIPTextModel.from_pretrained(os.path.join(model_dir, "text_encoder"), **kw),
        tokenizer=None,
        unet=UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet"), **kw),
        scheduler=PNDMScheduler.from_pretrained(os.path.join(model_dir, "scheduler")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts, seed=0, steps=20, cfg=5.0, scheduler="ddim"):
    """prompts -> uint8 [n,64,64,3]; ids from open_clip's tokenizer (what ldm.c uses)."""
    import torch
    from diffusers import DDIMScheduler
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    te = pipe.text_encoder
    with torch.no_grad():
        c = te(torch.from_numpy(tokenize(prompts))).last_hidden_state
        u = te(torch.from_numpy(tokenize([""] * len(prompts)))).last_hidden_state
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    out = pipe(prompt_embeds=c, negative_prompt_embeds=u, height=64, width=64,
               num_inference_steps=steps, guidance_scale=cfg, generator=gens, output_type="np")
    return (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)


SAMPLE_PROMPTS = [
    "a red circle on the left", "左に赤い丸",
    "a blue square on the right", "右に青い四角",
    "a big yellow triangle at the top", "上に大きい黄色い三角",
    "a green circle at the bottom, on a black background", "下に緑の丸、背景は黒",
    "a small purple square in the center", "真ん中に小さい紫の四角",
    "a red circle above a blue square", "青い四角の上に赤い丸",
]


def samples(a):
    from PIL import Image
    pipe = load_pipeline(a.out)
    imgs = []
    for s in range(a.sample_seeds):
        imgs.append(generate(pipe, SAMPLE_PROMPTS, seed=1000 * s))
    cols = len(SAMPLE_PROMPTS)
    sheet = Image.new("RGB", (cols * 66, len(imgs) * 66), (200, 200, 200))
    for r, row in enumerate(imgs):
        for c, im in enumerate(row):
            sheet.paste(Image.fromarray(im), (c * 66 + 1, r * 66 + 1))
    p = os.path.join(a.out, "samples.png")              # shown in the model card, 2x
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(p)
    log(f"samples: {p} (columns: {SAMPLE_PROMPTS})")


# ---------------------------------------------------------------------------

def worker(rank, world, a, stage):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{os.path.abspath(a.work)}/dist-{stage}",
                                rank=rank, world_size=world)
    try:
        (train_vae if stage == "vae" else train_unet)(rank, world, a)
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_parallel(a, stage):
    import torch.multiprocessing as mp
    f = os.path.join(os.path.abspath(a.work), f"dist-{stage}")
    if os.path.exists(f):
        os.remove(f)
    if a.workers == 1:
        worker(0, 1, a, stage)
    else:
        mp.spawn(worker, args=(a.workers, a, stage), nprocs=a.workers, join=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="all",
                   choices=["all", "data", "vae", "latents", "unet", "export", "samples"])
    p.add_argument("--work", default="build/tiny-train", help="checkpoints, data, logs")
    p.add_argument("--out", default="tools/tiny-model", help="exported diffusers folder")
    p.add_argument("--resume", action="store_true", help="continue from --work checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="data-parallel processes (1 thread each)")
    p.add_argument("--n-images", type=int, default=10000)
    p.add_argument("--vae-steps", type=int, default=1200)
    p.add_argument("--vae-full-steps", type=int, default=900, help="last steps on full 64x64 images")
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-crop", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--obj-weight", type=float, default=5.0, help="loss weight of shape pixels")
    p.add_argument("--unet-steps", type=int, default=6000)
    p.add_argument("--unet-batch", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--min-snr", type=float, default=5.0, help="0: plain LDM loss")
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--sample-seeds", type=int, default=2)
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    import torch
    torch.set_num_threads(1)
    stages = ["data", "vae", "latents", "unet", "export", "samples"] if a.stage == "all" else [a.stage]
    for s in stages:
        c0 = time.process_time()
        if s == "data":
            make_data(a)
        elif s in ("vae", "unet"):
            make_data(a)
            run_parallel(a, s)
        elif s == "latents":
            encode_latents(a)
        elif s == "export":
            export(a)
        elif s == "samples":
            samples(a)
        if s not in ("vae", "unet"):
            log(f"{s}: {time.process_time() - c0:.1f} s CPU")


if __name__ == "__main__":
    main()
