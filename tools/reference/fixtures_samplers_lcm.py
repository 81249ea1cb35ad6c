"""Fixtures for samplers/lcm.c and samplers/tcd.c: diffusers LCMScheduler
and TCDScheduler (original_inference_steps 50, the SD betas in diffusers'
float32 precision), every intermediate x, on the stand-in denoiser, noise
and guidance of fixtures_samplers.py (defined identically in
tests/test_samplers.c):
    eps(x, t, c) = tanh(0.5 x) (t/1000) + 0.1 sin(x + t/100) + 0.05 c cos(x)
Two cases use T = 100 training timesteps (extra column "T=100"), where the
LCM grid reaches t = 1 and the boundary condition c_skip is visible.
The schedulers' noise comes from a torch.Generator seeded RUN_SEED, passed
to step() (the C sampler draws the same numbers from its generator).

Also writes the LCM/TCD timesteps for every step count 1..50
(lcm_timesteps.txt: "n t_0 .. t_{n-1}", from LCMScheduler.set_timesteps,
checked equal to TCDScheduler's).

Reads tests/fixtures/samplers/x_T.npy (written by fixtures_samplers.py);
writes tests/fixtures/samplers/d_lcm_*.npy, d_tcd_*.npy, lcm_timesteps.txt
and sampler_cases_lcm.txt (same line format as sampler_cases.txt).
"""
import os

import numpy as np
import torch

from diffusers import LCMScheduler, TCDScheduler

OUT = "tests/fixtures/samplers"
torch.set_num_threads(1)
B, SHAPE, RUN_SEED, CFG_SCALE = 2, (2, 4, 4, 4), 77, 5.0
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          num_train_timesteps=1000)


def standin(x, t, c):
    t = t.to(torch.float32).reshape(-1, 1, 1, 1)
    c = c.to(torch.float32).reshape(-1, 1, 1, 1)
    return torch.tanh(0.5 * x) * (t / 1000) + 0.1 * torch.sin(x + t / 100) + 0.05 * c * torch.cos(x)


noise = torch.from_numpy(np.load(os.path.join(OUT, "x_T.npy")))
conds = torch.tensor([1.0 + 0.5 * b for b in range(B)])


def model_out(x, t, cfg):
    """Guided stand-in output (eps or v), rows [uncond, cond]."""
    tt = torch.full((x.shape[0],), float(t))
    if not cfg:
        return standin(x, tt, conds)
    out = standin(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([torch.zeros(B), conds]))
    u, c = out.chunk(2)
    return u + CFG_SCALE * (c - u)


lines = []


def run(kind, steps, eta=None, cfg=True, pred="eps", T=1000):
    cls = LCMScheduler if kind == "lcm" else TCDScheduler
    s = cls(**dict(SD, num_train_timesteps=T),
            prediction_type="epsilon" if pred == "eps" else "v_prediction")
    s.set_timesteps(steps)
    g = torch.Generator().manual_seed(RUN_SEED)
    x = noise.clone()   # init_noise_sigma = 1
    traj = []
    for t in s.timesteps:
        kw = {"generator": g}
        if kind == "tcd":
            kw["eta"] = 0.3 if eta is None else eta
        x = s.step(model_out(x, t, cfg), t, x, **kw).prev_sample
        traj.append(x.clone())
    tag = "" if eta is None else f"_g{eta:g}".replace(".", "")
    file = (f"d_{kind}_{steps}{tag}{'_v' if pred == 'v' else ''}{'' if cfg else '_nocfg'}"
            f"{'' if T == 1000 else f'_T{T}'}.npy")
    np.save(os.path.join(OUT, file), torch.stack(traj).numpy().astype(np.float32))
    lines.append(f"{file} {kind} lcm {steps} {-1 if eta is None else eta} {int(cfg)} {pred} 0 "
                 f"diffusers {RUN_SEED} {'-' if T == 1000 else f'T={T}'}")


for steps in [1, 2, 4, 8, 50]:
    run("lcm", steps)
run("lcm", 4, cfg=False)
run("lcm", 6, pred="v")
for steps in [1, 4, 8, 50]:
    run("tcd", steps)
for eta in [0.0, 1.0]:
    run("tcd", 8, eta=eta)
run("tcd", 6, pred="v")
run("tcd", 4, eta=0.5, cfg=False)
# T = 100 training steps: the grid is 2*(1..50) - 1, down to t = 1, where the
# boundary condition c_skip(t) = 0.25 / ((10 t)^2 + 0.25) is no longer ~0
run("lcm", 50, T=100)
run("tcd", 10, T=100)
with open(os.path.join(OUT, "sampler_cases_lcm.txt"), "w") as f:
    f.write("# file sampler schedule steps eta cfg pred compvis precision seed extra "
            "(tools/reference/fixtures_samplers_lcm.py)\n")
    f.write("\n".join(lines) + "\n")

with open(os.path.join(OUT, "lcm_timesteps.txt"), "w") as f:
    f.write("# n t_0 .. t_{n-1}: diffusers LCMScheduler.set_timesteps(n), "
            "original_inference_steps 50 (tools/reference/fixtures_samplers_lcm.py)\n")
    for n in range(1, 51):
        a, b = LCMScheduler(**SD), TCDScheduler(**SD)
        a.set_timesteps(n)
        b.set_timesteps(n)
        assert a.timesteps.tolist() == b.timesteps.tolist()
        f.write(f"{n} " + " ".join(str(int(t)) for t in a.timesteps) + "\n")
print("wrote", len(lines), "cases")
