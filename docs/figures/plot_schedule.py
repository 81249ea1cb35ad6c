"""Plot the noise schedules of samplers/schedule.c for docs/06-samplers.md.

Run by `make docs-figures` (light venv build/venv-nb, the C library through
notebooks/ldm_py.py). Every number plotted comes from libldm: alpha-bar_t,
SNR_t = abar/(1-abar), sigma_t = sqrt((1-abar)/abar) for the SD scaled-linear,
linear and cosine betas, and the 20-step sigma schedules (default, Karras,
exponential) the k-diffusion samplers use.
Writes docs/figures/schedule.png.
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
import ldm_py  # noqa: E402

fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
t = np.arange(1000)
for kind, label in [(None, "SD scaled-linear"), ("linear", "linear"), ("cosine", "cosine")]:
    s = ldm_py.Schedule(kind, 0.0001 if kind == "linear" else 0.00085, 0.02 if kind == "linear" else 0.012)
    abar = s.alphas_cumprod.astype(np.float64)
    ax[0].plot(t, abar, label=label)
    ax[1].semilogy(t, abar / (1 - abar), label=label)
ax[0].set(title=r"$\bar\alpha_t$ (DDPM eq. 4: $x_t=\sqrt{\bar\alpha_t}x_0+\sqrt{1-\bar\alpha_t}\epsilon$)",
          xlabel="t")
ax[1].set(title=r"SNR$_t=\bar\alpha_t/(1-\bar\alpha_t)$", xlabel="t")
sd = ldm_py.Schedule()
for kind in ["default", "karras", "exponential"]:
    sig = sd.sigmas_for(20, kind)
    ax[2].semilogy(np.arange(20), sig[:20], "o-", ms=3, label=kind)
ax[2].set(title=r"20-step $\sigma_i$, $\sigma=\sqrt{(1-\bar\alpha)/\bar\alpha}$ (SD)", xlabel="step i")
for a in ax:
    a.legend()
    a.grid(alpha=0.3)
fig.tight_layout()
out = os.path.join(here, "schedule.png")
fig.savefig(out, dpi=90)
print("wrote", os.path.relpath(out, root))
