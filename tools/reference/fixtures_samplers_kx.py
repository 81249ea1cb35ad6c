"""Fixtures for samplers/dpm_solver.c, euler_cfgpp.c and dpmpp_2m_cfgpp.c, on
the same stand-in denoiser, start noise and guidance rows as
fixtures_samplers.py (defined identically in tests/test_samplers.c):
    eps(x, t, c) = tanh(0.5 x) (t/1000) + 0.1 sin(x + t/100) + 0.05 c cos(x)

  - dpm_fast / dpm_adaptive: k-diffusion sample_dpm_fast and
    sample_dpm_adaptive (DPM-Solver, Lu et al. 2022), called as ComfyUI does:
    sigma_max = sigmas[0], sigma_min = the last sigma > 0, n = the number of
    steps (dpm_fast: model evaluations). Every step's x: dpm_fast's callback
    sees x before each step, so the trajectory is those from step 1 on plus
    the result; dpm_adaptive's callback runs after every attempt, and the
    trajectory keeps the accepted ones. The manifest records the number of
    steps (traj=) and of model evaluations (nfe=) k-diffusion took. eta > 0:
    plain torch.randn draws seeded RUN_SEED through noise_sampler (the C
    sampler draws the same numbers from its generator).
  - euler_cfgpp / dpmpp_2m_cfgpp: CFG++ (Chung et al. 2024) written here
    from the paper's update (no registry package has it): denoise with the
    guided D_l = D_u + l (D_c - D_u), renoise with the unconditional D_u, on
    k-diffusion's CompVisDenoiser and sigmas. Guidance scale l = 0.6 (scale=).
  - res_multistep / er_sde: written here from the papers' updates (Zhang et
    al. 2023; Cui et al. 2023, phi(sigma) = sigma (e^{sigma^0.3} + 10), S_1
    and S_2 by the 200-point left sum); er_sde's noise: torch.randn draws
    seeded RUN_SEED. A second transcription, not a registry reference:
    tests/test_analytic.c checks them against mathematics.

Reads tests/fixtures/samplers/x_T.npy (written by fixtures_samplers.py);
writes tests/fixtures/samplers/kx_*.npy and sampler_cases_kx.txt (the line
format of sampler_cases.txt; extra: traj=STEPS,nfe=CALLS[,rtol=R] or scale=S).
"""
import os

import numpy as np
import torch

import k_diffusion as K

OUT = "tests/fixtures/samplers"
torch.set_num_threads(1)
B, SHAPE, RUN_SEED, CFG_SCALE, CFGPP_SCALE = 2, (2, 4, 4, 4), 77, 5.0, 0.6

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
vden = K.external.CompVisVDenoiser(Inner())   # the stand-in's output read as v
noise = torch.from_numpy(np.load(os.path.join(OUT, "x_T.npy")))
conds = torch.tensor([1.0 + 0.5 * b for b in range(B)])


def both(x, sigma, scale, d=den):
    """(guided D, unconditional D): rows [uncond, cond], D_u + scale (D_c - D_u)."""
    out = d(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([torch.zeros(B), conds]))
    u, c = out.chunk(2)
    return u + (c - u) * scale, u


def model(x, sigma, d=den):
    return both(x, sigma, CFG_SCALE, d)[0]


def sigmas_for(sched, steps):
    return (K.sampling.get_sigmas_karras(steps, float(den.sigmas[0]), float(den.sigmas[-1]))
            if sched == "karras" else den.get_sigmas(steps))


lines = []
# dpm_adaptive's step ends come from its error estimate E, the size of x_low -
# x_high: on the first steps E ~ 1e-5, the float32 rounding noise of |x| ~ 30,
# so two float32 implementations place those step ends ~1e-4 of h apart and x
# there differs by its slope (sigma eps ~ 30) times that: measured up to
# 1.1e-5 of |x| (v prediction), 3e-6 (eps), where the other samplers stay below
# 1.3e-6. Its trajectories are held to 3e-5 instead of 1e-5.
ADAPTIVE_RTOL = 3e-5


def save(file, traj):
    np.save(os.path.join(OUT, file), torch.stack(traj).numpy().astype(np.float32))


# --- DPM-Solver: k-diffusion
for name, sched, steps, eta, pred in [
        ("dpm_fast", "default", 10, 0.0, "eps"), ("dpm_fast", "default", 12, 0.0, "eps"),
        ("dpm_fast", "karras", 20, 0.0, "eps"), ("dpm_fast", "default", 11, 1.0, "eps"),
        ("dpm_adaptive", "default", 10, 0.0, "eps"),
        ("dpm_adaptive", "default", 10, 0.0, "v"),       # one rejected attempt
        ("dpm_adaptive", "karras", 20, 1.0, "eps")]:      # four rejected attempts
    sigmas = sigmas_for(sched, steps)
    smin = float(sigmas[-1]) if sigmas[-1] > 0 else float(sigmas[-2])
    smax = float(sigmas[0])
    calls = [0]

    def counted(x, sigma):
        calls[0] += 1
        return model(x, sigma, vden if pred == "v" else den)

    torch.manual_seed(RUN_SEED)
    ns = lambda s, sn: torch.randn(SHAPE)
    x = noise * sigmas[0]
    traj = []
    if name == "dpm_fast":
        x = K.sampling.sample_dpm_fast(
            counted, x, smin, smax, steps, eta=eta, disable=True, noise_sampler=ns,
            callback=lambda d: traj.append(d["x"].clone()) if d["i"] > 0 else None)
        traj.append(x.clone())
    else:
        last = {"n_accept": 0}

        def keep(d):  # after every attempt: keep x when the attempt was accepted
            if d["n_accept"] > last["n_accept"]:
                traj.append(d["x"].clone())
            last["n_accept"] = d["n_accept"]

        x, info = K.sampling.sample_dpm_adaptive(counted, x, smin, smax, eta=eta, disable=True,
                                                 noise_sampler=ns, callback=keep, return_info=True)
        assert info["nfe"] == calls[0] and info["n_accept"] == len(traj), info
        print(name, sched, steps, "eta", eta, info)
    assert torch.equal(traj[-1], x)
    file = f"kx_{name}_{sched}_{steps}{'_eta1' if eta else ''}{'_v' if pred == 'v' else ''}.npy"
    save(file, traj)
    lines.append(f"{file} {name} {sched} {steps} {eta:g} 1 {pred} 0 compvis {RUN_SEED} "
                 f"traj={len(traj)},nfe={calls[0]}" + (f",rtol={ADAPTIVE_RTOL:g}" if name == "dpm_adaptive" else ""))


# --- CFG++ (Chung et al. 2024), from the paper's update
def euler_cfgpp(x, sigmas, scale, traj):
    for i in range(len(sigmas) - 1):
        s = sigmas[i] * torch.ones(B)
        d_l, d_u = both(x, s, scale)
        x = d_l + (x - d_u) / sigmas[i] * sigmas[i + 1]   # renoise with eps_u
        traj.append(x.clone())
    return x


def dpmpp_2m_cfgpp(x, sigmas, scale, traj):
    old_u = None
    for i in range(len(sigmas) - 1):
        s = sigmas[i] * torch.ones(B)
        d_l, d_u = both(x, s, scale)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        x_new = d_l + torch.exp(-h) * (x - d_u)
        if old_u is not None and sigmas[i + 1] > 0:
            r = (t - (-sigmas[i - 1].log())) / h
            x_new = x_new - torch.expm1(-h) / (2 * r) * (d_l - old_u)
        x, old_u = x_new, d_u
        traj.append(x.clone())
    return x


for name, fn in [("euler_cfgpp", euler_cfgpp), ("dpmpp_2m_cfgpp", dpmpp_2m_cfgpp)]:
    for sched, steps in [("default", 10), ("karras", 20)]:
        traj = []
        fn(noise * sigmas_for(sched, steps)[0], sigmas_for(sched, steps), CFGPP_SCALE, traj)
        file = f"kx_{name}_{sched}_{steps}.npy"
        save(file, traj)
        lines.append(f"{file} {name} {sched} {steps} -1 1 eps 0 compvis {RUN_SEED} "
                     f"scale={CFGPP_SCALE:g}")



# --- RES multistep (Zhang et al. 2023) and ER-SDE (Cui et al. 2023), from the
# papers' updates (samplers/res_multistep.c, er_sde.c say them); guidance 5
def res_multistep(x, sigmas, traj):
    old = None
    for i in range(len(sigmas) - 1):
        d = model(x, sigmas[i] * torch.ones(B))
        if old is None or sigmas[i + 1] == 0:
            x = d + sigmas[i + 1] / sigmas[i] * (x - d)    # e^-h x + (1 - e^-h) D
        else:
            h = (sigmas[i] / sigmas[i + 1]).double().log()
            r = (sigmas[i - 1] / sigmas[i]).double().log() / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            x = torch.exp(-h).float() * x + (h * phi1).float() * d + (h * phi2 / r).float() * (d - old)
        old = d
        traj.append(x.clone())
    return x


def er_sde(x, sigmas, traj, eta=1.0):
    phi = lambda s: s * (torch.exp(s ** 0.3) + 10)   # the paper's noise scale function
    sg = sigmas.double()
    old = old_d1 = None
    for i in range(len(sigmas) - 1):
        d = model(x, sigmas[i] * torch.ones(B))
        if sigmas[i + 1] == 0:
            x = d
        else:
            s, t = sg[i], sg[i + 1]
            r = phi(t) / phi(s)
            x = r.float() * x + (1 - r).float() * d
            if i >= 1:
                step = (s - t) / 200
                at = t + torch.arange(200, dtype=torch.float64) * step   # left Riemann sum
                s1, s2 = (step / phi(at)).sum(), (step * (at - s) / phi(at)).sum()
                d1 = (d - old) / (s - sg[i - 1]).float()
                x = x + (t - s + s1 * phi(t)).float() * d1
                if i >= 2:
                    d2 = (d1 - old_d1) / ((s - sg[i - 2]) / 2).float()
                    x = x + ((t - s) ** 2 / 2 + s2 * phi(t)).float() * d2
                old_d1 = d1
            x = x + (eta * (t * t - r * r * s * s).clamp(min=0).sqrt()).float() * torch.randn(SHAPE)
        old = d
        traj.append(x.clone())
    return x


for name, fn in [("res_multistep", res_multistep), ("er_sde", er_sde)]:
    for sched, steps in [("default", 10), ("karras", 20)]:
        traj = []
        torch.manual_seed(RUN_SEED)
        sig = sigmas_for(sched, steps)
        fn(noise * sig[0], sig, traj)
        file = f"kx_{name}_{sched}_{steps}.npy"
        save(file, traj)
        lines.append(f"{file} {name} {sched} {steps} -1 1 eps 0 compvis {RUN_SEED} -")

with open(os.path.join(OUT, "sampler_cases_kx.txt"), "w") as f:
    f.write("# file sampler schedule steps eta cfg pred compvis precision seed extra "
            "(tools/reference/fixtures_samplers_kx.py; extra: traj=STEPS,nfe=CALLS[,rtol=R] or scale=S)\n")
    f.write("\n".join(lines) + "\n")
print("wrote", len(lines), "cases")
