"""
tools/reference/fixtures_train_steps.py -- the first steps of stage 2 in
PyTorch, the reference `sd train --stage unet` must follow step for step.

The loop is tools/train/train_tiny.py's train_unet with one worker, on a
micro UNet + text encoder (so the initial weights fit in a fixture) and the
shipped tiny model's autoencoder:

  data      dataset.make_dataset(seed, n_images); captions tokenised as
            train_tiny.tokenize does (SOT + BPE + EOT, padded with EOT)
  latents   posterior mean and std of every image under tools/tiny-model/vae
            (fp16 weights widened to fp32); z = (mean + std * noise) * scale,
            scale = the VAE's config scaling_factor
  per step  from one torch.Generator seeded seed*1000+200 (worker 0):
            randint idx [b], randn noise [b,4,8,8], rand language [b],
            rand caption drop [b], randint t [b], randn eps [b,4,8,8]
            pred = unet(q_sample(z, eps, t), t, text(ids)); LDM eq. 2 with
            min-SNR-5 weights; AdamW (0.9, 0.99), lr warm-up 200, clip 1.0,
            EMA 0.998 (the EMA does not change the losses; it is saved)

The initial weights come from torch.manual_seed(seed + 1) as in train_tiny.py,
except the token embedding: only the rows of ids that occur in the captions
are kept (drawn N(0, 0.02) by torch's init), the others are set to zero. Rows
of ids that never occur get no gradient, and AdamW leaves a parameter with zero
gradient, zero weight decay and zero moments unchanged, so those rows do not
influence training; storing only the used rows keeps the fixture small.

Writes tests/fixtures/train/steps/:
  init/unet/{config.json, diffusion_pytorch_model.safetensors}   fp32
  init/text_encoder/{config.json, model.safetensors}             fp32, without
      embeddings.token_embedding.weight
  token_rows.npy [R] int64 ids, token_embedding.npy [R, D] their rows
  losses.npy [steps, 2] per step: unweighted eps MSE, min-SNR weighted loss
  recipe.json  the settings above
  final_<name>.npy  a few tensors after the last step, so a test checks the
      weights the optimizer wrote, not only the losses

  .venv-ref/bin/python tools/reference/fixtures_train_steps.py [--steps 50]

With --losses-only FILE the same run (same initial weights, same draws) writes
only its losses.npy [steps, 2] to FILE and nothing under steps/: the longer
curve notebooks/14-training-in-c.ipynb plots beside `sd train`'s,

  .venv-ref/bin/python tools/reference/fixtures_train_steps.py --steps 400 \
      --losses-only tests/fixtures/train/curve/losses.npy
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

OUT = os.path.join(ROOT, "tests", "fixtures", "train", "steps")
TINY = os.path.join(ROOT, "tools", "tiny-model")

UNET_MICRO = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=[8, 16],
                  down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                  cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
TEXT_MICRO = dict(vocab_size=49408, hidden_size=16, intermediate_size=32,
                  num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=77, hidden_act="quick_gelu",
                  layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407,
                  pad_token_id=49407, projection_dim=16)
FINAL_CHECK = ["conv_in.weight", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
               "conv_out.bias"]
FINAL_CHECK_TEXT = ["encoder.layers.0.self_attn.q_proj.weight",
                    "final_layer_norm.weight"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--losses-only", metavar="FILE",
                   help="write only the losses [steps, 2] to FILE (steps/ is left untouched)")
    a = p.parse_args()
    full = a.losses_only is None

    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.set_num_threads(1)

    # data and latents
    images, en, ja, _ = dataset.make_dataset(a.seed, a.n_images)
    ids_en = torch.from_numpy(train_tiny.tokenize(en))
    ids_ja = torch.from_numpy(train_tiny.tokenize(ja))
    ids_empty = torch.from_numpy(train_tiny.tokenize([""])[0])
    vae = AutoencoderKL.from_pretrained(os.path.join(TINY, "vae"), torch_dtype=torch.float32).eval()
    scale = float(vae.config.scaling_factor)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        post = vae.encode(x).latent_dist
        mean, std = post.mean, post.std

    # initial weights (train_tiny.py), token rows of unused ids zeroed
    torch.manual_seed(a.seed + 1)
    unet = UNet2DConditionModel(**UNET_MICRO)
    text = CLIPTextModel(CLIPTextConfig(**TEXT_MICRO))
    used = torch.unique(torch.cat([ids_en.reshape(-1), ids_ja.reshape(-1), ids_empty]))
    emb = text.embeddings.token_embedding.weight
    with torch.no_grad():
        keep = emb[used].clone()
        emb.zero_()
        emb[used] = keep
    if full:
        os.makedirs(os.path.join(OUT, "init", "unet"), exist_ok=True)
        os.makedirs(os.path.join(OUT, "init", "text_encoder"), exist_ok=True)
        unet.save_pretrained(os.path.join(OUT, "init", "unet"), safe_serialization=True)
        text.config.to_json_file(os.path.join(OUT, "init", "text_encoder", "config.json"))
        sd = {k: v.contiguous() for k, v in text.state_dict().items()
              if k != "embeddings.token_embedding.weight" and "position_ids" not in k}
        save_file(sd, os.path.join(OUT, "init", "text_encoder", "model.safetensors"))
        np.save(os.path.join(OUT, "token_rows.npy"), used.numpy().astype(np.int64))
        np.save(os.path.join(OUT, "token_embedding.npy"), keep.numpy().astype(np.float32))

    # the loop of train_tiny.train_unet, one worker
    models = [unet, text]
    params = [q for m in models for q in m.parameters()]
    ema = [q.detach().clone() for q in params]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    sched = DDPMScheduler(**train_tiny.SCHED_CFG)
    abar = sched.alphas_cumprod.float()
    snr = abar / (1 - abar)
    wt = torch.clamp(snr, max=5.0) / snr
    g = torch.Generator().manual_seed(a.seed * 1000 + 200)
    N, b = a.n_images, a.batch
    losses = []
    for step in range(a.steps):
        idx = torch.randint(0, N, (b,), generator=g)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        lang_ja = torch.rand(b, generator=g) < 0.5
        ids = torch.where(lang_ja[:, None], ids_ja[idx], ids_en[idx])
        drop = torch.rand(b, generator=g) < 0.1
        ids = torch.where(drop[:, None], ids_empty[None, :], ids)
        t = torch.randint(0, 1000, (b,), generator=g)
        eps = torch.randn(z.shape, generator=g)
        zt = sched.add_noise(z, eps, t)
        for pg in opt.param_groups:
            pg["lr"] = train_tiny.lr_at(step, 1e-3, 200)
        ctx = text(ids).last_hidden_state
        pred = unet(zt, t, ctx).sample
        per = (pred - eps).pow(2).mean(dim=(1, 2, 3))
        loss = (wt[t] * per).mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.998, (2 + step) / (11 + step))
        with torch.no_grad():
            for e, q in zip(ema, params):
                e.mul_(decay).add_(q.detach(), alpha=1 - decay)
        losses.append([per.mean().item(), loss.item()])
        print(f"step {step + 1}: mse {losses[-1][0]:.6f} loss {losses[-1][1]:.6f}", flush=True)
    if not full:
        os.makedirs(os.path.dirname(os.path.abspath(a.losses_only)), exist_ok=True)
        np.save(a.losses_only, np.array(losses, dtype=np.float64))
        return
    np.save(os.path.join(OUT, "losses.npy"), np.array(losses, dtype=np.float64))
    usd, tsd = unet.state_dict(), text.state_dict()
    for k in FINAL_CHECK:
        np.save(os.path.join(OUT, "final_unet." + k + ".npy"), usd[k].numpy())
    for k in FINAL_CHECK_TEXT:
        np.save(os.path.join(OUT, "final_text_encoder." + k + ".npy"), tsd[k].numpy())
    with open(os.path.join(OUT, "recipe.json"), "w") as f:
        json.dump(dict(seed=a.seed, n_images=a.n_images, batch=a.batch, steps=a.steps,
                       lr=1e-3, warmup=200, betas=[0.9, 0.99], weight_decay=0.0, clip=1.0,
                       min_snr=5.0, cond_drop=0.1, ema=0.998, scaling_factor=scale,
                       vae="tools/tiny-model/vae", generator_seed=a.seed * 1000 + 200,
                       unet=UNET_MICRO, text_encoder=TEXT_MICRO), f, indent=2)


if __name__ == "__main__":
    main()
