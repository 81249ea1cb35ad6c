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
diffusers has no sgm_uniform / simple / kl_optimal; these are written here
from the formulas, not copied from any tool.

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


def beta(n):
    sch = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 use_beta_sigmas=True, timestep_spacing="linspace")
    sch.set_timesteps(n)
    return sch.sigmas


with open(os.path.join(OUT, "sigmas_extra.txt"), "w") as f:
    f.write("# kind n sigma_0 .. sigma_n (tools/reference/fixtures_samplers_schedules.py)\n")
    for kind, fn in [("sgm_uniform", sgm_uniform), ("simple", simple), ("kl_optimal", kl_optimal),
                     ("ays", ays), ("beta", beta)]:
        for n in (4, 10, 20, 25, 50):
            s = fn(n).to(torch.float32).numpy()
            f.write(f"{kind} {n} " + " ".join(f"{v:.9g}" for v in s) + "\n")
print("wrote", os.path.join(OUT, "sigmas_extra.txt"))
