"""Fixtures for the extra sigma schedules of samplers/schedule.c: sgm_uniform,
simple, kl_optimal (as ComfyUI defines them) and ays (Align Your Steps).

References:
  - ays: diffusers' published list, AysSchedules["StableDiffusionSigmas"]
    (10 steps, taken from diffusers itself); other step counts by log-linear
    interpolation of its nonzero entries (np.interp of log sigma, the scheme
    ComfyUI's loglinear_interp uses), then a final 0.
  - sgm_uniform, simple: k-diffusion's CompVisDenoiser (its sigmas and its
    t_to_sigma, the same log-sigma interpolation ComfyUI's model_sampling
    uses) on the SD schedule, with the timesteps ComfyUI picks:
    torch.linspace(999, 0, n+1)[:-1], and sigmas[-(1 + int(i * 1000/n))].
  - kl_optimal: tan(u atan(sigma_min) + (1-u) atan(sigma_max)), u = arange(n)/(n-1),
    in torch float32.
  - beta: diffusers EulerDiscreteScheduler(use_beta_sigmas=True) with the SD
    betas in diffusers' own float32 precision and timestep_spacing "linspace"
    (so that its sigma_min / sigma_max are the training ones); the C test
    builds that schedule with LDM_SCHED_DIFFUSERS.
  - gits (Chen et al. 2024, GITS): the published SD 1.5 sigma lists for 2..20
    steps at coefficient 1.20 (the numbers ComfyUI's GITSScheduler carries,
    GITS_SD15 below); n outside 2..20: the 20-step list log-linearly
    interpolated to n+1 points (np.interp of log sigma); the last point set
    to 0. The C code stores these lists as indices of the grid
    t = linspace(999, 0, 101); this script also checks that every published
    value is sigma(t) of that grid (to 1e-5), which is what lets it.
  - smoothstep (stable-diffusion.cpp's SmoothStepScheduler, from its
    definition): u = 1 - i/n in float32, t = round-half-away(999 u^2 (3 - 2u)),
    sigma = t_to_sigma(t) (k-diffusion's), n = 1: [sigma_max, 0].
diffusers has no sgm_uniform / simple / kl_optimal / gits / smoothstep; these
are written here from the formulas, not copied from any tool.
"normal" (ComfyUI) is the same formula as k-diffusion's get_sigmas (our
default); ComfyUI computes its training sigmas in float64 before rounding to
float32, k-diffusion from float32 alphas_cumprod: this script prints the
largest relative difference between the two (at sigma_min, about 1e-5).

Writes tests/fixtures/samplers/sigmas_extra.txt: one line per case,
"kind n sigma_0 ... sigma_n" (%.9g).
"""
import os

import numpy as np
import torch

from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import AysSchedules
import k_diffusion as K

OUT = "tests/fixtures/samplers"
os.makedirs(OUT, exist_ok=True)

betas64 = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2).numpy()
ac = np.cumprod(1.0 - betas64).astype(np.float32)


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("alphas_cumprod", torch.tensor(ac))


den = K.external.CompVisDenoiser(Inner())
sigma_min, sigma_max = float(den.sigmas[0]), float(den.sigmas[-1])


def sgm_uniform(n):
    t = torch.linspace(999, 0, n + 1)[:-1]
    return torch.cat([den.t_to_sigma(t), torch.zeros(1)])


def simple(n):
    ss = len(den.sigmas) / n
    return torch.tensor([float(den.sigmas[-(1 + int(i * ss))]) for i in range(n)] + [0.0])


def kl_optimal(n):
    u = torch.arange(n, dtype=torch.float32) / (n - 1)
    s = (u * torch.atan(torch.tensor(sigma_min)) + (1 - u) * torch.atan(torch.tensor(sigma_max))).tan()
    return torch.cat([s, torch.zeros(1)])


def ays(n):
    base = np.array(AysSchedules["StableDiffusionSigmas"][:-1], dtype=np.float64)
    if n == len(base):
        return torch.tensor(AysSchedules["StableDiffusionSigmas"])
    xs = np.linspace(0, 1, len(base))
    s = np.exp(np.interp(np.linspace(0, 1, n), xs, np.log(base)))
    return torch.tensor(list(s) + [0.0])


GITS_SD15 = [  # coefficient 1.20, n = 2..20 steps: n+1 sigmas each
    [14.61464119, 0.803307, 0.02916753],
    [14.61464119, 1.56271636, 0.52423614, 0.02916753],
    [14.61464119, 2.36326075, 0.92192322, 0.36617002, 0.02916753],
    [14.61464119, 2.84484982, 1.24153244, 0.59516323, 0.25053367, 0.02916753],
    [14.61464119, 5.85520077, 2.05039096, 0.95350921, 0.45573691, 0.17026083, 0.02916753],
    [14.61464119, 5.85520077, 2.45070267, 1.24153244, 0.64427125, 0.29807833, 0.09824532, 0.02916753],
    [14.61464119, 5.85520077, 2.45070267, 1.36964464, 0.803307, 0.45573691, 0.25053367, 0.09824532, 0.02916753],
    [14.61464119, 5.85520077, 2.84484982, 1.61558151, 0.95350921, 0.59516323, 0.36617002, 0.19894916, 0.09824532, 0.02916753],
    [14.61464119, 5.85520077, 2.84484982, 1.67050016, 1.08895338, 0.74807048, 0.50118381, 0.32104823, 0.19894916, 0.09824532, 0.02916753],
    [14.61464119, 5.85520077, 2.95596409, 1.84880662, 1.24153244, 0.83188516, 0.59516323, 0.41087446, 0.27464288, 0.17026083, 0.09824532, 0.02916753],
    [14.61464119, 5.85520077, 3.07277966, 1.98035145, 1.36964464, 0.95350921, 0.69515091, 0.50118381, 0.36617002, 0.25053367, 0.17026083, 0.09824532, 0.02916753],
    [14.61464119, 6.77309084, 3.46139455, 2.36326075, 1.56271636, 1.08895338, 0.803307, 0.59516323, 0.45573691, 0.34370604, 0.25053367, 0.17026083, 0.09824532, 0.02916753],
    [14.61464119, 6.77309084, 3.46139455, 2.45070267, 1.61558151, 1.162866, 0.86115354, 0.64427125, 0.50118381, 0.38853383, 0.29807833, 0.22545385, 0.17026083, 0.09824532, 0.02916753],
    [14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.12350607, 1.51179266, 1.08895338, 0.83188516, 0.64427125, 0.50118381, 0.38853383, 0.29807833, 0.22545385, 0.17026083, 0.09824532, 0.02916753],
    [14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.12350607, 1.51179266, 1.08895338, 0.83188516, 0.64427125, 0.50118381, 0.41087446, 0.32104823, 0.25053367, 0.19894916, 0.13792117, 0.09824532, 0.02916753],
    [14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.12350607, 1.51179266, 1.08895338, 0.83188516, 0.64427125, 0.50118381, 0.41087446, 0.34370604, 0.27464288, 0.22545385, 0.17026083, 0.13792117, 0.09824532, 0.02916753],
    [14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.20157266, 0.92192322, 0.72133851, 0.57119018, 0.45573691, 0.36617002, 0.29807833, 0.25053367, 0.19894916, 0.17026083, 0.13792117, 0.09824532, 0.02916753],
    [14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.24153244, 0.95350921, 0.74807048, 0.59516323, 0.4783645, 0.38853383, 0.32104823, 0.27464288, 0.22545385, 0.19894916, 0.17026083, 0.13792117, 0.09824532, 0.02916753],
    [14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.24153244, 0.95350921, 0.74807048, 0.59516323, 0.50118381, 0.41087446, 0.34370604, 0.29807833, 0.25053367, 0.22545385, 0.19894916, 0.17026083, 0.13792117, 0.09824532, 0.02916753],
]


def gits(n):
    if 2 <= n <= 20:
        s = list(GITS_SD15[n - 2])
    else:
        base = np.array(GITS_SD15[-1], dtype=np.float64)
        xs = np.linspace(0, 1, len(base))
        s = list(np.exp(np.interp(np.linspace(0, 1, n + 1), xs, np.log(base[::-1])))[::-1])
    s[-1] = 0.0
    return torch.tensor(s, dtype=torch.float64)


def smoothstep(n):
    if n == 1:
        return torch.tensor([float(den.t_to_sigma(torch.tensor(999.0))), 0.0])
    out = []
    for i in range(n):
        u = np.float32(1) - np.float32(i) / np.float32(n)
        sm = u * u * (np.float32(3) - np.float32(2) * u)
        t = float(np.floor(np.float32(sm * np.float32(999)) + 0.5))   # round half away (t >= 0)
        out.append(float(den.t_to_sigma(torch.tensor(t, dtype=torch.float32))))
    return torch.tensor(out + [0.0])


# the published GITS values are sigma(t) of the 101-point grid t = 9.99 k
grid = den.t_to_sigma(torch.linspace(999, 0, 101)).numpy()
worst = max(float(np.min(np.abs(grid - v))) for row in GITS_SD15 for v in row)
assert worst < 1e-5, worst
print(f"gits: every published sigma is on the grid t = linspace(999, 0, 101) (to {worst:.1e})")

# ComfyUI "normal" vs k-diffusion get_sigmas: the same formula, sigmas from float64
ac64 = np.cumprod(1.0 - betas64)
sig_comfy = torch.tensor(((1 - ac64) / ac64) ** 0.5).float()
rel = float(((den.sigmas - sig_comfy).abs() / sig_comfy).max())
print(f"normal: ComfyUI's float64-derived training sigmas vs k-diffusion's: max rel {rel:.1e}")


def beta(n):
    sch = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 use_beta_sigmas=True, timestep_spacing="linspace")
    sch.set_timesteps(n)
    return sch.sigmas


with open(os.path.join(OUT, "sigmas_extra.txt"), "w") as f:
    f.write("# kind n sigma_0 .. sigma_n (tools/reference/fixtures_samplers_schedules.py)\n")
    for kind, fn in [("sgm_uniform", sgm_uniform), ("simple", simple), ("kl_optimal", kl_optimal),
                     ("ays", ays), ("beta", beta), ("gits", gits), ("smoothstep", smoothstep)]:
        for n in (tuple(range(1, 26)) + (50,) if kind == "gits" else
                  (1, 3, 4, 10, 20, 25, 50, 100) if kind == "smoothstep" else (4, 10, 20, 25, 50)):
            s = fn(n).to(torch.float32).numpy()
            f.write(f"{kind} {n} " + " ".join(f"{v:.9g}" for v in s) + "\n")
print("wrote", os.path.join(OUT, "sigmas_extra.txt"))
