"""
tools/train/train_lora.py -- teach the frozen tiny model a shape it never saw
(a horizontal bar, "bar" / "棒") with a LoRA, saved as a kohya-format
safetensors file that ldm.c loads with <lora:bar:1> (ldm/lora.h).

LoRA (Hu et al. 2021, eq. 3): every adapted linear layer W [out,in] gets two
small trainable matrices, down A [r,in] and up B [out,r], and computes
  h = W x + (alpha / r) B A x,
with W frozen, A ~ N(0, 1/r) and B = 0 at the start (so training starts from
the base model exactly). Adapted here, rank r = 4, alpha = r:
  UNet          every attention projection: attn1 / attn2 to_q, to_k, to_v,
                to_out.0 (down, mid and up blocks)
  text encoder  every self-attention projection: q_proj, k_proj, v_proj,
                out_proj (--no-text: the UNet alone)
Everything else (the VAE, all other weights) is the frozen fp32 model.

Data: tools/train/dataset.py, `--n-new` scenes of make_new_shape_scene (one
bar of any colour, size and place, on any background; captions
"a red bar on the left" / "左に赤い棒") and, for `--base-frac` of every
batch, ordinary scenes of the base dataset (seed 1: scenes the base model
was not trained on) so the LoRA keeps circles, squares and triangles apart
from bars. (Why a bar and not a star: the frozen autoencoder, trained on
convex shapes, decodes a 64x64 star as a rounded blob, so no UNet change can
make the model draw one; evaluate_extras.py --calibrate measures it.) Latents: the frozen tiny VAE's posterior, sampled at each step,
times its scaling_factor. Loss: the base recipe's (LDM eq. 2 with min-SNR-5
weighting, SD's scaled-linear schedule, 10% empty captions), on the LoRA
matrices only; Adam, constant learning rate after a short warm-up. One CPU
process, seeded: the same file on the same machine and library versions.

Export: kohya / A1111 names, the ones ldm/lora.c and most UIs read:
  lora_unet_<diffusers path, '.' -> '_'>.lora_down.weight   A [r,in]   fp16
  lora_unet_<...>.lora_up.weight                             B [out,r]  fp16
  lora_unet_<...>.alpha                                      scalar     fp16
  lora_te_<transformers path, '.' -> '_'>...                 (text encoder)
plus <out>.json next to it: recipe, losses, wall and CPU seconds, sizes.

  .venv-ref/bin/python tools/train/train_lora.py [--out tools/tiny-model/lora/bar.safetensors]
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

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lora_layer_class():
    import torch

    class LoRALinear(torch.nn.Module):
        """h = W x + (alpha / r) up(down(x)); W (the wrapped layer) frozen."""

        def __init__(self, base, rank, alpha, g):
            super().__init__()
            self.base = base
            self.scale = alpha / rank
            self.down = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=g) / rank)
            self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank))

        def forward(self, x):
            return self.base(x) + self.scale * ((x @ self.down.t()) @ self.up.t())

    return LoRALinear


def add_lora(model, targets, rank, alpha, g):
    """Replace every nn.Linear whose path ends with a target by a LoRALinear;
    -> {diffusers/transformers path: LoRALinear} in module order."""
    import torch
    LoRALinear = lora_layer_class()
    found = {}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear) and any(name.endswith("." + t) for t in targets):
            parent, _, leaf = name.rpartition(".")
            layer = LoRALinear(mod, rank, alpha, g)
            setattr(model.get_submodule(parent), leaf, layer)
            found[name] = layer
    return found


def kohya_tensors(layers, prefix, alpha, root=""):
    """{path: LoRALinear} -> kohya keys, fp16. root: the part of the path a
    module tree may leave out (transformers >= 5 CLIPTextModel has no
    "text_model." level; kohya's names and ldm.c's table have it)."""
    import torch
    out = {}
    for path, layer in layers.items():
        if root and not path.startswith(root):
            path = root + path
        key = prefix + path.replace(".", "_")
        out[key + ".lora_down.weight"] = layer.down.detach().to(torch.float16).contiguous()
        out[key + ".lora_up.weight"] = layer.up.detach().to(torch.float16).contiguous()
        out[key + ".alpha"] = torch.tensor(float(alpha), dtype=torch.float16)
    return out


def encode_posteriors(vae, images):
    """uint8 [N,64,64,3] -> posterior mean, std [N,4,8,8] (frozen VAE)."""
    import torch
    mean, std = [], []
    with torch.no_grad():
        for i in range(0, len(images), 200):
            x = torch.from_numpy(images[i:i + 200]).permute(0, 3, 1, 2).float() / 127.5 - 1
            p = vae.encode(x).latent_dist
            mean.append(p.mean); std.append(p.std)
    return torch.cat(mean), torch.cat(std)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tools/tiny-model", help="the frozen base model")
    p.add_argument("--out", default="tools/tiny-model/lora/bar.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", default="bar", choices=list(dataset.NEW_SHAPES))
    p.add_argument("--n-new", type=int, default=2000, help="new-shape scenes")
    p.add_argument("--n-base", type=int, default=2000, help="base scenes (dataset seed 1)")
    p.add_argument("--base-frac", type=float, default=0.5, help="share of every batch from the base set")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--no-text", action="store_true", help="adapt the UNet only")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-snr", type=float, default=5.0)
    p.add_argument("--cond-drop", type=float, default=0.1)
    a = p.parse_args()
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel
    torch.set_num_threads(1)
    wall0, cpu0 = time.time(), time.process_time()

    # data: new-shape scenes and base scenes, their captions and latents
    new_img, new_en, new_ja, _ = dataset.make_dataset(a.seed, a.n_new, new_shape=a.shape)
    base_img, base_en, base_ja, _ = dataset.make_dataset(1, a.n_base)
    images = np.concatenate([new_img, base_img])
    ids_en = torch.from_numpy(train_tiny.tokenize(new_en + base_en))
    ids_ja = torch.from_numpy(train_tiny.tokenize(new_ja + base_ja))
    ids_empty = torch.from_numpy(train_tiny.tokenize([""])[0])
    vae = AutoencoderKL.from_pretrained(os.path.join(a.model, "vae"), torch_dtype=torch.float32)
    mean, std = encode_posteriors(vae, images)
    scale = float(vae.config.scaling_factor)
    log(f"data: {a.n_new} {a.shape} + {a.n_base} base scenes encoded "
        f"({time.process_time() - cpu0:.0f} s CPU); e.g. '{new_en[0]}' / '{new_ja[0]}'")

    # the frozen model with LoRA layers
    unet = UNet2DConditionModel.from_pretrained(os.path.join(a.model, "unet"), torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(os.path.join(a.model, "text_encoder"), torch_dtype=torch.float32)
    for m in (unet, text, vae):
        m.requires_grad_(False)
    g = torch.Generator().manual_seed(a.seed)
    unet_layers = add_lora(unet, UNET_TARGETS, a.rank, a.alpha, g)
    text_layers = {} if a.no_text else add_lora(text, TEXT_TARGETS, a.rank, a.alpha, g)
    params = [q for l in list(unet_layers.values()) + list(text_layers.values()) for q in (l.down, l.up)]
    n_params = sum(q.numel() for q in params)
    log(f"lora: {len(unet_layers)} UNet + {len(text_layers)} text-encoder layers, rank {a.rank}, "
        f"{n_params} parameters")
    opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.99))
    sched = DDPMScheduler(**train_tiny.SCHED_CFG)
    abar = sched.alphas_cumprod.float()
    snr = abar / (1 - abar)
    wt = torch.clamp(snr, max=a.min_snr) / snr

    n_base_b = int(round(a.batch * a.base_frac))
    losses = []
    for step in range(a.steps):
        idx = torch.cat([torch.randint(0, a.n_new, (a.batch - n_base_b,), generator=g),
                         a.n_new + torch.randint(0, a.n_base, (n_base_b,), generator=g)])
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        ja = torch.rand(len(idx), generator=g) < 0.5
        ids = torch.where(ja[:, None], ids_ja[idx], ids_en[idx])
        drop = torch.rand(len(idx), generator=g) < a.cond_drop
        ids = torch.where(drop[:, None], ids_empty[None, :], ids)
        t = torch.randint(0, 1000, (len(idx),), generator=g)
        eps = torch.randn(z.shape, generator=g)
        zt = sched.add_noise(z, eps, t)
        for pg in opt.param_groups:
            pg["lr"] = train_tiny.lr_at(step, a.lr, 50)
        pred = unet(zt, t, text(ids).last_hidden_state).sample
        per = (pred - eps).pow(2).mean(dim=(1, 2, 3))
        loss = (wt[t] * per).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        new_mse = per[:a.batch - n_base_b].mean().item()
        losses.append([step + 1, per.mean().item(), loss.item(), new_mse])
        if (step + 1) % 25 == 0 or step + 1 == a.steps:
            tail = np.mean([l[1] for l in losses[-25:]])
            log(f"lora step {step + 1}/{a.steps} eps mse {tail:.4f} "
                f"({(time.time() - wall0) / (step + 1):.2f} s/step so far, wall)")

    tensors = kohya_tensors(unet_layers, "lora_unet_", a.alpha)
    tensors.update(kohya_tensors(text_layers, "lora_te_", a.alpha, root="text_model."))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    save_file(tensors, a.out, metadata={"ss_network_dim": str(a.rank), "ss_network_alpha": str(a.alpha),
                                        "ldm_concept": f"{a.shape} / {dataset.NEW_SHAPES[a.shape]}"})
    import diffusers
    import transformers
    rec = dict(
        recipe={k: v for k, v in vars(a).items() if k != "out"},
        unet_targets=list(UNET_TARGETS), text_targets=[] if a.no_text else list(TEXT_TARGETS),
        layers=dict(unet=len(unet_layers), text_encoder=len(text_layers)),
        parameters=n_params, file_bytes=os.path.getsize(a.out),
        final_losses=dict(eps_mse=float(np.mean([l[1] for l in losses[-100:]])),
                          weighted=float(np.mean([l[2] for l in losses[-100:]])),
                          eps_mse_new_shape=float(np.mean([l[3] for l in losses[-100:]]))),
        first_losses=dict(eps_mse=float(np.mean([l[1] for l in losses[:25]]))),
        wall_seconds=round(time.time() - wall0, 1), cpu_seconds=round(time.process_time() - cpu0, 1),
        threads=1,
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      diffusers=diffusers.__version__, transformers=transformers.__version__,
                      numpy=np.__version__),
    )
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump(rec, f, indent=2)
    log(f"wrote {a.out} ({rec['file_bytes']} bytes, {len(tensors)} tensors); "
        f"{rec['wall_seconds']} s wall, {rec['cpu_seconds']} s CPU")


if __name__ == "__main__":
    main()
