"""Fixtures for samplers/unipc.c, samplers/deis.c and the ddim_trailing name:
diffusers UniPCMultistepScheduler (solver_type bh2 and bh1), DEISMultistepScheduler
and DDIMScheduler, all with timestep_spacing="trailing", every intermediate x,
on the same stand-in denoiser, noise and guidance as fixtures_samplers.py
(defined identically in tests/test_samplers.c):
    eps(x, t, c) = tanh(0.5 x) (t/1000) + 0.1 sin(x + t/100) + 0.05 c cos(x)
The SD schedule in diffusers' float32 betas ("precision diffusers" in the manifest).
Scheduler settings are diffusers' defaults (UniPC: solver_order 2, predict_x0,
lower_order_final, final_sigmas_type "zero"; DEIS: solver_order 2, logrho) and
the SD config's set_alpha_to_one = False for DDIM.

UniPC bh1 ends in NaN in diffusers: its last step goes to sigma = 0, where
B(h) = -h is -inf and the scheduler multiplies it by a zero correction. The
limit of that step is the last x_0 prediction, which the scheduler holds in
model_outputs[-1]; the fixture stores that as the final x.

Reads tests/fixtures/samplers/x_T.npy (written by fixtures_samplers.py);
writes tests/fixtures/samplers/d_{unipc,unipc_bh1,deis,ddim_trailing}_*.npy and
sampler_cases_multistep.txt (same line format as sampler_cases.txt).
"""
import os

import numpy as np
import torch

from diffusers import DDIMScheduler, DEISMultistepScheduler, UniPCMultistepScheduler

OUT = "tests/fixtures/samplers"
torch.set_num_threads(1)
B, RUN_SEED, CFG_SCALE = 2, 77, 5.0
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          num_train_timesteps=1000)


def standin(x, t, c):
    t = t.to(torch.float32).reshape(-1, 1, 1, 1)
    c = c.to(torch.float32).reshape(-1, 1, 1, 1)
    return torch.tanh(0.5 * x) * (t / 1000) + 0.1 * torch.sin(x + t / 100) + 0.05 * c * torch.cos(x)


noise = torch.from_numpy(np.load(os.path.join(OUT, "x_T.npy")))
conds = torch.tensor([1.0 + 0.5 * b for b in range(B)])


def model(x, t):  # guided stand-in output (eps or v), rows [uncond, cond]
    tt = torch.full((2 * B,), float(t))
    out = standin(torch.cat([x, x]), tt, torch.cat([torch.zeros(B), conds]))
    u, c = out.chunk(2)
    return u + CFG_SCALE * (c - u)


def make(name, pred):
    ptype = "epsilon" if pred == "eps" else "v_prediction"
    if name == "unipc":
        return UniPCMultistepScheduler(**SD, timestep_spacing="trailing", prediction_type=ptype)
    if name == "unipc_bh1":
        return UniPCMultistepScheduler(**SD, timestep_spacing="trailing", solver_type="bh1",
                                       prediction_type=ptype)
    if name == "deis":
        return DEISMultistepScheduler(**SD, timestep_spacing="trailing", prediction_type=ptype)
    return DDIMScheduler(**SD, timestep_spacing="trailing", set_alpha_to_one=False,
                         clip_sample=False, prediction_type=ptype)


def run(name, steps, pred="eps"):
    s = make(name, pred)
    s.set_timesteps(steps)
    x = noise.clone()
    traj = []
    for t in s.timesteps:
        x = s.step(model(x, t), t, x).prev_sample
        traj.append(x.clone())
    if name == "unipc_bh1":
        assert torch.isnan(traj[-1]).all(), "diffusers' bh1 last step is no longer NaN"
        traj[-1] = s.model_outputs[-1].clone()
    assert all(torch.isfinite(v).all() for v in traj)
    return traj


lines = []
for name, steps, pred in [("unipc", 10, "eps"), ("unipc", 20, "eps"), ("unipc", 20, "v"),
                          ("unipc_bh1", 10, "eps"), ("unipc_bh1", 20, "eps"),
                          ("deis", 10, "eps"), ("deis", 20, "eps"), ("deis", 20, "v"),
                          ("ddim_trailing", 10, "eps"), ("ddim_trailing", 15, "eps"),
                          ("ddim_trailing", 20, "v")]:
    traj = run(name, steps, pred)
    file = f"d_{name}_{steps}{'_v' if pred == 'v' else ''}.npy"
    np.save(os.path.join(OUT, file), torch.stack(traj).numpy().astype(np.float32))
    # ddim_trailing: its name selects the spacing, so the column is "-"
    lines.append(f"{file} {name} {'-' if name == 'ddim_trailing' else 'trailing'} {steps} -1 1 "
                 f"{pred} 0 diffusers {RUN_SEED} -")

with open(os.path.join(OUT, "sampler_cases_multistep.txt"), "w") as f:
    f.write("# file sampler schedule|spacing steps eta cfg pred compvis precision seed extra "
            "(tools/reference/fixtures_samplers_multistep.py)\n")
    f.write("\n".join(lines) + "\n")
print("wrote", len(lines), "cases")
