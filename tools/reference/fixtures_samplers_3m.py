"""Fixtures for samplers/dpmpp_3m_sde.c: k-diffusion sample_dpmpp_3m_sde
(eta 1, the "DPM++ 3M SDE" of the UIs) and eta 0 (the deterministic
DPM-Solver++(3M)), every intermediate x, on the same stand-in denoiser,
noise and guidance as fixtures_samplers.py (defined identically in
tests/test_samplers.c):
    eps(x, t, c) = tanh(0.5 x) (t/1000) + 0.1 sin(x + t/100) + 0.05 c cos(x)
The SDE noise: plain per-step torch.randn draws from the global generator
seeded RUN_SEED, injected through k-diffusion's noise_sampler argument (the C
sampler draws the same numbers from its generator; k-diffusion's default is
a Brownian tree).

Reads tests/fixtures/samplers/x_T.npy (written by fixtures_samplers.py);
writes tests/fixtures/samplers/k_dpmpp_3m*.npy and sampler_cases_3m.txt
(same line format as sampler_cases.txt).
"""
import os

import numpy as np
import torch

import k_diffusion as K

OUT = "tests/fixtures/samplers"
torch.set_num_threads(1)
B, SHAPE, RUN_SEED, CFG_SCALE = 2, (2, 4, 4, 4), 77, 5.0

betas64 = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2).numpy()
ac = np.cumprod(1.0 - betas64).astype(np.float32)


def standin(x, t, c):
    t = t.to(torch.float32).reshape(-1, 1, 1, 1)
    c = c.to(torch.float32).reshape(-1, 1, 1, 1)
    return torch.tanh(0.5 * x) * (t / 1000) + 0.1 * torch.sin(x + t / 100) + 0.05 * c * torch.cos(x)


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("alphas_cumprod", torch.tensor(ac))

    def apply_model(self, x, t, cond):
        return standin(x, t, cond)


den = K.external.CompVisDenoiser(Inner())
sigma_min, sigma_max = float(den.sigmas[0]), float(den.sigmas[-1])
noise = torch.from_numpy(np.load(os.path.join(OUT, "x_T.npy")))
conds = torch.tensor([1.0 + 0.5 * b for b in range(B)])


def model(x, sigma):  # CFG on D, rows [uncond, cond]
    out = den(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([torch.zeros(B), conds]))
    u, c = out.chunk(2)
    return u + (c - u) * CFG_SCALE


lines = []
for name, eta in [("dpmpp_3m_sde", 1.0), ("dpmpp_3m", 0.0)]:
    for sched, steps in [("default", 10), ("default", 20), ("default", 50), ("karras", 20)]:
        sigmas = (K.sampling.get_sigmas_karras(steps, sigma_min, sigma_max) if sched == "karras"
                  else den.get_sigmas(steps))
        traj = []
        torch.manual_seed(RUN_SEED)
        x = noise * sigmas[0]
        x = K.sampling.sample_dpmpp_3m_sde(
            model, x, sigmas, eta=eta, disable=True,
            callback=lambda d: traj.append(d["x"].clone()) if d["i"] > 0 else None,
            noise_sampler=lambda s, sn: torch.randn(SHAPE))
        traj.append(x.clone())
        file = f"k_{name}_{sched}_{steps}.npy"
        np.save(os.path.join(OUT, file), torch.stack(traj).numpy().astype(np.float32))
        lines.append(f"{file} {name} {sched} {steps} -1 1 eps 0 compvis {RUN_SEED} -")
with open(os.path.join(OUT, "sampler_cases_3m.txt"), "w") as f:
    f.write("# file sampler schedule steps eta cfg pred compvis precision seed extra "
            "(tools/reference/fixtures_samplers_3m.py)\n")
    f.write("\n".join(lines) + "\n")
print("wrote", len(lines), "cases")
