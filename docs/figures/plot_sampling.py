"""Draw the sampling figures of docs/00b-diffusion-in-one-page.md and docs/04-vae.md
with the committed tiny model (tools/tiny-model, 64x64, latents 4x8x8).

Run by `make docs-figures` (light venv build/venv-nb, the C library through
notebooks/ldm_py.py): every image is computed by libldm -- the text encoder,
the UNet inside the C samplers (samplers/ddim.c), the VAE decoder and encoder.
Writes docs/figures/trajectory.png (x_t and the predicted x_0 of one DDIM run,
decoded), docs/figures/cfg_sweep.png (one seed, guidance scales 1..12, English
and Japanese prompts) and docs/figures/latents.png (the four latent channels of
tiny-model images and their decodes).
"""
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, os.path.join(root, "notebooks"))
import ldm_py as L  # noqa: E402

m = L.Model()                       # the tiny model, cpu backend
tok = L.Tokenizer()
pred = "v" if m.prediction.startswith("v") else "eps"
h, C = m.u.cfg.sample_size, m.u.cfg.in_channels
uncond = m.encode_prompt(tok, "")


def save(fig, name):
    out = os.path.join(here, name)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print("wrote", os.path.relpath(out, root))


def ddim(prompt, seed, scale, steps=20, callback=None):
    noise = L.randn(seed, (1, C, h, h))
    lat, _ = L.sample("ddim", noise, m.model_fn(m.encode_prompt(tok, prompt), uncond),
                      steps=steps, cfg_scale=scale, prediction=pred, eta=0.0,
                      callback=callback)
    return lat


# ---- 1. one DDIM run: x_t and the predicted x_0 after each step, decoded ---------
prompt = "a red circle on the left"
xs, x0s = [], []
ddim(prompt, 3, 5.0, callback=lambda i, x, d: (xs.append(np.array(x)), x0s.append(np.array(d))))
show = [0, 2, 4, 7, 10, 14, 19]
ts = L.Schedule().timesteps(20)
fig, ax = plt.subplots(2, len(show), figsize=(1.9 * len(show), 4.3))
for j, i in enumerate(show):
    after = ts[i + 1] if i + 1 < len(ts) else 0
    ax[0, j].imshow(L.to_rgb(m.vae_decode(xs[i])[0]))
    ax[0, j].set_title(f"step {i + 1}: x at t={after}", fontsize=8)
    ax[1, j].imshow(L.to_rgb(m.vae_decode(x0s[i])[0]))
    ax[1, j].set_title(f"predicted x0 at t={ts[i]}", fontsize=8)
for a in ax.flat:
    a.axis("off")
fig.suptitle(f"DDIM, 20 steps, guidance 5, seed 3: {prompt!r} (tiny model, latents decoded)",
             fontsize=10)
fig.tight_layout()
save(fig, "trajectory.png")

# ---- 2. classifier-free guidance sweep, one seed ---------------------------------
scales = [1.0, 2.0, 3.0, 5.0, 7.5, 12.0]
prompts = ["a blue square above a yellow triangle", "左に赤い丸、背景は黒"]
labels = ["a blue square above a yellow triangle", "(ja) a red circle on the left, black background"]
fig, ax = plt.subplots(len(prompts), len(scales), figsize=(1.9 * len(scales), 4.4))
for r, p in enumerate(prompts):
    for j, s in enumerate(scales):
        ax[r, j].imshow(L.to_rgb(m.vae_decode(ddim(p, 11, s))[0]))
        ax[r, j].set_title((labels[r] if j == 0 else "") + f"\ns = {s}", fontsize=8, loc="left")
        ax[r, j].axis("off")
fig.suptitle("classifier-free guidance eps_u + s (eps_c - eps_u): DDIM 20 steps, seed 11",
             fontsize=10)
fig.tight_layout()
save(fig, "cfg_sweep.png")

# ---- 3. latents: four channels at 8x8 and the decoded 64x64 image ---------------
prompts = ["a red circle on the left", "a blue square above a yellow triangle",
           "a green triangle on the right"]
fig, ax = plt.subplots(len(prompts), C + 1, figsize=(1.9 * (C + 1), 2.0 * len(prompts)))
for r, p in enumerate(prompts):
    lat = ddim(p, 5 + r, 5.0)
    ax[r, 0].imshow(L.to_rgb(m.vae_decode(lat)[0]))
    ax[r, 0].set_title(p, fontsize=7)
    lim = np.abs(lat).max()
    for c in range(C):
        ax[r, c + 1].imshow(lat[0, c], cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax[r, c + 1].set_title(f"latent channel {c}", fontsize=8)
for a in ax.flat:
    a.axis("off")
fig.suptitle("tiny-model latents [4, 8, 8] (scaled, as the UNet sees them) and their decodes",
             fontsize=10)
fig.tight_layout()
save(fig, "latents.png")
