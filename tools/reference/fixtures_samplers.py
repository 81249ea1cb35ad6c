"""Fixtures for samplers/: RNG streams, schedules, spacings, sigma schedules,
the forward process and full sampler trajectories.

References:
  - torch.randn on torch.Generator (CPU) for the cpu RNG; diffusers'
    randn_tensor with a list of generators for per-sample streams.
  - diffusers DDPMScheduler / DDIMScheduler / PNDMScheduler (SD config).
  - k-diffusion CompVisDenoiser / CompVisVDenoiser + sample_* functions.
  - CompVis DDIM and PLMS: the `ldm` package is not installable, so both are
    re-derived here from the CompVis sampler code's equations (see
    compvis_ddim / compvis_plms below) and cross-checked against diffusers where
    the two coincide (eta = 0 DDIM, PLMS vs PNDM(skip_prk_steps)).

Every sampler run uses the same deterministic stand-in for the UNet, defined
identically in tests/test_samplers.c:
    eps(x, t, c) = tanh(0.5 x) * (t / 1000) + 0.1 sin(x + t / 100) + 0.05 c cos(x)
with c = 0 for the unconditional rows and c = 1 + 0.5 b for sample b.

Writes tests/fixtures/samplers/*.npy plus two manifests (rng_cases.txt,
sampler_cases.txt) that the C test reads.
"""
import math
import os

import numpy as np
import torch

from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler
from diffusers.utils.torch_utils import randn_tensor
import k_diffusion as K

OUT = "tests/fixtures/samplers"
os.makedirs(OUT, exist_ok=True)
torch.set_num_threads(1)

B, C, H, W = 2, 4, 4, 4
SHAPE = (B, C, H, W)
NOISE_SEED = 1234   # the stored initial noise
RUN_SEED = 77       # generator used for the per-step noise of every run
CFG_SCALE = 5.0
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          num_train_timesteps=1000)


def save(name, arr):
    np.save(os.path.join(OUT, name), np.ascontiguousarray(np.asarray(arr, dtype=np.float32)))


# ---------------------------------------------------------------------------
# RNG. torch's CPU normal for >= 16 elements has two builds (AVX2 polynomial
# log/sincos vs the C library's logf/sinf/cosf) selected by the machine's
# CPU capability; we write fixtures for both by running this part in child
# processes with ATEN_CPU_CAPABILITY set (the variable is read once, at
# torch import).
import subprocess
import sys


def write_rng(variant):
    got = torch.backends.cpu.get_cpu_capability().lower()
    assert got == variant, f"ATEN_CPU_CAPABILITY={variant} not honoured (got {got})"
    lines = []

    def case(name, seed, numels):
        g = torch.Generator().manual_seed(seed)
        outs = [torch.randn(n, generator=g).reshape(-1) for n in numels]
        save(name, torch.cat(outs).numpy())
        lines.append(f"{name} {variant} {seed} 0 {len(numels)} " + " ".join(map(str, numels)))

    v = variant
    for seed in [0, 1, 42, 12345, 2**32 + 7]:
        for n in [1, 2, 3, 15, 16, 17, 31, 32, 33, 100, 255]:
            if n < 16 and v != "avx2":
                continue   # below 16 elements both builds share the scalar double path
            case(f"rng_{v}_s{seed}_n{n}.npy", seed, [n])
    case(f"rng_{v}_s3_latent64.npy", 3, [4 * 64 * 64])
    if v == "avx2":
        x = torch.randn([2, 4, 64, 64], generator=torch.Generator().manual_seed(5))
        save(f"rng_{v}_s5_b2_latent64.npy", x.numpy())
        lines.append(f"rng_{v}_s5_b2_latent64.npy {v} 5 0 1 {2 * 4 * 64 * 64}")
    # consecutive calls on one generator: scalar cache carried, mixed paths
    case(f"rng_{v}_s9_consecutive.npy", 9, [3, 5, 20, 1, 17, 3, 16, 7])
    # per-sample streams: diffusers randn_tensor with a list of generators
    gens = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    x = randn_tensor((3, 4, 8, 8), generator=gens)
    save(f"rng_{v}_persample_s100.npy", x.numpy())
    lines.append(f"rng_{v}_persample_s100.npy {v} 100 1 3 256 256 256")
    with open(os.path.join(OUT, f"rng_cases_{v}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if os.environ.get("LDM_FIXTURE_RNG_ONLY"):
    write_rng(os.environ["LDM_FIXTURE_RNG_ONLY"])
    raise SystemExit(0)
for cap in ["avx2", "default"]:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, LDM_FIXTURE_RNG_ONLY=cap)
    subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, check=True,
                   cwd=os.getcwd())
with open(os.path.join(OUT, "rng_cases.txt"), "w") as f:
    for cap in ["avx2", "default"]:
        with open(os.path.join(OUT, f"rng_cases_{cap}.txt")) as g:
            f.write(g.read())
        os.remove(os.path.join(OUT, f"rng_cases_{cap}.txt"))
rng_lines = open(os.path.join(OUT, "rng_cases.txt")).read().splitlines()

# ---------------------------------------------------------------------------
# Schedules
# CompVis make_beta_schedule("linear"): torch.linspace float64, squared,
# cumprod in numpy float64, stored float32 (to_torch).
betas64 = (torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2).numpy()
ac_compvis = np.cumprod(1.0 - betas64).astype(np.float32)
save("sched_ac_compvis.npy", ac_compvis)
save("sched_ac_diffusers.npy", DDPMScheduler(**SD).alphas_cumprod.numpy())
save("sched_ac_linear.npy", DDPMScheduler(beta_start=1e-4, beta_end=0.02,
                                          beta_schedule="linear").alphas_cumprod.numpy())
save("sched_ac_cosine.npy", DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.numpy())


class Inner(torch.nn.Module):
    """The CompVis-model face k-diffusion's CompVisDenoiser wraps."""

    def __init__(self, ac):
        super().__init__()
        self.register_buffer("alphas_cumprod", torch.tensor(ac))

    def apply_model(self, x, t, cond):
        return standin(x, t, cond)


def standin(x, t, c):
    t = t.to(torch.float32).reshape(-1, 1, 1, 1)
    c = c.to(torch.float32).reshape(-1, 1, 1, 1)
    return torch.tanh(0.5 * x) * (t / 1000) + 0.1 * torch.sin(x + t / 100) + 0.05 * c * torch.cos(x)


inner = Inner(ac_compvis)
den = K.external.CompVisDenoiser(inner)
vden = K.external.CompVisVDenoiser(inner)
save("sched_sigmas.npy", den.sigmas.numpy())
sigma_min, sigma_max = float(den.sigmas[0]), float(den.sigmas[-1])
for n in [10, 20, 50]:
    save(f"sched_sigmas_default_{n}.npy", den.get_sigmas(n).numpy())
    save(f"sched_sigmas_karras_{n}.npy", K.sampling.get_sigmas_karras(n, sigma_min, sigma_max).numpy())
    save(f"sched_sigmas_exponential_{n}.npy",
         K.sampling.get_sigmas_exponential(n, sigma_min, sigma_max).numpy())
# sigma -> t: training levels, values between them, outside the range
gq = torch.Generator().manual_seed(11)
probe = torch.cat([den.sigmas[::37], torch.exp(torch.rand(200, generator=gq) * 
                   (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)),
                   torch.tensor([0.01, 0.02, 20.0, 100.0])])
save("sched_sigma_probe.npy", probe.numpy())
save("sched_sigma_to_t.npy", den.sigma_to_t(probe).numpy())
tprobe = torch.cat([torch.arange(0, 1000, 37, dtype=torch.float32), torch.rand(200, generator=gq) * 999])
save("sched_t_probe.npy", tprobe.numpy())
save("sched_t_to_sigma.npy", den.t_to_sigma(tprobe).numpy())

# timestep spacings (diffusers set_timesteps), CompVis "uniform" re-derived
ts_lines = []
for spacing in ["leading", "trailing", "linspace"]:
    for n in [1, 7, 10, 20, 30, 50, 999]:
        s = DDIMScheduler(**SD, steps_offset=1 if spacing == "leading" else 0,
                          timestep_spacing=spacing, clip_sample=False, set_alpha_to_one=False)
        s.set_timesteps(n)
        name = f"ts_{spacing}_{n}.npy"
        save(name, s.timesteps.numpy())
        ts_lines.append(f"{name} {spacing} {n} {1 if spacing == 'leading' else 0}")
for n in [7, 10, 20, 30, 50]:
    c = 1000 // n   # CompVis make_ddim_timesteps(ddim_discr_method="uniform")
    ts = (np.asarray(list(range(0, 1000, c))) + 1)[::-1]
    name = f"ts_uniform_{n}.npy"
    save(name, ts)
    ts_lines.append(f"{name} uniform {n} 1")
with open(os.path.join(OUT, "ts_cases.txt"), "w") as f:
    f.write("\n".join(ts_lines) + "\n")

# forward process and v (diffusers add_noise / get_velocity)
g = torch.Generator().manual_seed(21)
x0 = torch.randn(SHAPE, generator=g)
nz = torch.randn(SHAPE, generator=g)
tt = torch.tensor([999, 3], dtype=torch.long)
dd = DDPMScheduler(**SD)
save("q_x0.npy", x0.numpy())
save("q_noise.npy", nz.numpy())
save("q_xt.npy", dd.add_noise(x0, nz, tt).numpy())
save("q_v.npy", dd.get_velocity(x0, nz, tt).numpy())

# ---------------------------------------------------------------------------
# Samplers
noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(NOISE_SEED))
save("x_T.npy", noise.numpy())
conds = torch.tensor([1.0 + 0.5 * b for b in range(B)])
case_lines = []


def eps_cfg(x, t, cfg):
    """Guided stand-in eps for the discrete samplers, rows [uncond, cond]."""
    tt = torch.full((x.shape[0],), float(t))
    if not cfg:
        return standin(x, tt, conds)
    out = standin(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([torch.zeros(B), conds]))
    u, c = out.chunk(2)
    return u + CFG_SCALE * (c - u)


class CFGDenoiser(torch.nn.Module):
    def __init__(self, d, cfg):
        super().__init__()
        self.d, self.cfg = d, cfg

    def forward(self, x, sigma):
        if not self.cfg:
            return self.d(x, sigma, cond=conds)
        out = self.d(torch.cat([x, x]), torch.cat([sigma, sigma]),
                     cond=torch.cat([torch.zeros(B), conds]))
        u, c = out.chunk(2)
        return u + (c - u) * CFG_SCALE


def record(name, traj, sampler, sched, steps, eta, cfg, pred, compvis, prec, extra="-"):
    save(name, torch.stack(traj).numpy())
    case_lines.append(f"{name} {sampler} {sched} {steps} {eta} {int(cfg)} {pred} {compvis} "
                      f"{prec} {RUN_SEED} {extra}")


KSAMPLERS = {
    "euler": K.sampling.sample_euler,
    "euler_a": K.sampling.sample_euler_ancestral,
    "heun": K.sampling.sample_heun,
    "dpm2": K.sampling.sample_dpm_2,
    "dpm2_a": K.sampling.sample_dpm_2_ancestral,
    "lms": K.sampling.sample_lms,
    "dpmpp_2s_a": K.sampling.sample_dpmpp_2s_ancestral,
    "dpmpp_2m": K.sampling.sample_dpmpp_2m,
    "dpmpp_sde": K.sampling.sample_dpmpp_sde,
    "dpmpp_2m_sde": K.sampling.sample_dpmpp_2m_sde,
}


def run_k(name, steps, sched="default", cfg=True, pred="eps", churn=0.0):
    if sched == "karras":
        sigmas = K.sampling.get_sigmas_karras(steps, sigma_min, sigma_max)
    elif sched == "exponential":
        sigmas = K.sampling.get_sigmas_exponential(steps, sigma_min, sigma_max)
    else:
        sigmas = den.get_sigmas(steps)
    model = CFGDenoiser(vden if pred == "v" else den, cfg)
    traj = []
    kw = {"s_churn": churn} if churn else {}
    if name in ("dpmpp_sde", "dpmpp_2m_sde"):
        # plain per-step noise from the global generator instead of the
        # Brownian tree (what samplers/dpmpp_sde.c does)
        kw["noise_sampler"] = lambda s, sn: torch.randn(SHAPE)
    torch.manual_seed(RUN_SEED)   # randn_like / the noise sampler draw from here
    x = noise * sigmas[0]
    cb = lambda d: traj.append(d["x"].clone()) if d["i"] > 0 else None
    x = KSAMPLERS[name](model, x, sigmas, callback=cb, disable=True, **kw)
    traj.append(x.clone())
    if churn:   # k-diffusion's callback sees x after the next step's churn: keep the final x only
        traj = traj[-1:]
    record(f"k_{name}_{sched}_{steps}{'_v' if pred == 'v' else ''}{'' if cfg else '_nocfg'}"
           f"{'_churn' if churn else ''}.npy",
           traj, name, sched, steps, -1, cfg, pred, 0, "compvis", f"churn={churn},final" if churn else "-")


for name in KSAMPLERS:
    for steps in [10, 20, 50]:
        run_k(name, steps)
for name in ["euler_a", "dpmpp_2m", "dpmpp_2m_sde", "heun"]:
    run_k(name, 20, "karras")
for name in ["dpmpp_sde", "euler"]:
    run_k(name, 10, "exponential")
run_k("euler", 20, pred="v")
run_k("dpmpp_2m", 10, pred="v")
run_k("euler", 10, cfg=False)
for name in ["euler", "heun", "dpm2"]:
    run_k(name, 10, churn=1.0)   # gamma = min(1/10, sqrt(2)-1): noise added every step


def run_diffusers(kind, steps, eta=0.0, pred="eps"):
    common = dict(**SD, steps_offset=1, set_alpha_to_one=False, clip_sample=False,
                  prediction_type="epsilon" if pred == "eps" else "v_prediction")
    if kind == "ddpm":
        s = DDPMScheduler(**SD, steps_offset=1, clip_sample=False)
    elif kind == "ddim":
        s = DDIMScheduler(**common)
    else:
        s = PNDMScheduler(**SD, steps_offset=1, skip_prk_steps=True, set_alpha_to_one=False,
                          prediction_type="epsilon")
    s.set_timesteps(steps)
    g = torch.Generator().manual_seed(RUN_SEED)
    x = noise.clone()
    traj = []
    for t in s.timesteps:
        e = eps_cfg(x, t, True)
        kw = {"generator": g}
        if kind == "ddim":
            kw["eta"] = eta
        if kind == "plms":
            kw = {}
        x = s.step(e, t, x, **kw).prev_sample
        traj.append(x.clone())
    if kind == "plms":
        traj = traj[1:]   # the repeated second timestep completes CompVis' first step
    return traj


def compvis_ddim(steps, eta, pred="eps"):
    """CompVis DDIMSampler.ddim_sampling / p_sample_ddim, re-derived.
    Timesteps: make_ddim_timesteps("uniform") + 1; alphas_prev[0] = abar[0];
    sigma_t = eta sqrt((1-a_prev)/(1-a) (1 - a/a_prev)); z ~ randn drawn every step."""
    ac = torch.tensor(ac_compvis)
    c = 1000 // steps
    ts = np.asarray(list(range(0, 1000, c))) + 1
    alphas = ac[ts].double().numpy()
    alphas_prev = np.asarray([ac[0].item()] + ac[ts[:-1]].tolist())
    sig = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    torch.manual_seed(RUN_SEED)
    x = noise.clone()
    traj = []
    for i, step in enumerate(np.flip(ts)):
        index = len(ts) - i - 1
        out = eps_cfg(x, int(step), True)
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        if pred == "v":   # predict_eps_from_z_and_v
            out = math.sqrt(a_t) * out + math.sqrt(1 - a_t) * x
        pred_x0 = (x - math.sqrt(1 - a_t) * out) / math.sqrt(a_t)
        dir_xt = math.sqrt(1 - a_prev - sig[index] ** 2) * out
        z = float(sig[index]) * torch.randn(x.shape)     # noise_like: drawn even at eta 0
        x = math.sqrt(a_prev) * pred_x0 + dir_xt + z
        traj.append(x.clone())
    return traj


def compvis_plms(steps):
    """CompVis PLMSSampler.plms_sampling / p_sample_plms, re-derived (eta = 0)."""
    ac = torch.tensor(ac_compvis)
    c = 1000 // steps
    ts = np.asarray(list(range(0, 1000, c))) + 1
    alphas = ac[ts].double().numpy()
    alphas_prev = np.asarray([ac[0].item()] + ac[ts[:-1]].tolist())
    torch.manual_seed(RUN_SEED)
    time_range = np.flip(ts)
    x = noise.clone()
    old_eps, traj = [], []

    def x_prev_of(x, e, index):
        a_t, a_prev = float(alphas[index]), float(alphas_prev[index])
        pred_x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        dir_xt = math.sqrt(1 - a_prev) * e
        _ = 0.0 * torch.randn(x.shape)   # sigma_t * noise_like: advances the generator
        return math.sqrt(a_prev) * pred_x0 + dir_xt

    for i, step in enumerate(time_range):
        index = len(ts) - i - 1
        t_next = int(time_range[min(i + 1, len(time_range) - 1)])
        e_t = eps_cfg(x, int(step), True)
        if len(old_eps) == 0:
            x_tmp = x_prev_of(x, e_t, index)
            e_next = eps_cfg(x_tmp, t_next, True)
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = x_prev_of(x, e_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        traj.append(x.clone())
    return traj


def maxdiff(a, b):
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


for steps in [10, 20, 50]:
    record(f"d_ddpm_{steps}.npy", run_diffusers("ddpm", steps), "ddpm", "leading", steps, 1.0,
           True, "eps", 0, "diffusers")
    d0 = run_diffusers("ddim", steps, 0.0)
    record(f"d_ddim_eta0_{steps}.npy", d0, "ddim", "leading", steps, 0.0, True, "eps", 0, "diffusers")
    record(f"d_ddim_eta05_{steps}.npy", run_diffusers("ddim", steps, 0.5), "ddim", "leading",
           steps, 0.5, True, "eps", 0, "diffusers")
    dp = run_diffusers("plms", steps)
    record(f"d_plms_{steps}.npy", dp, "plms", "leading", steps, 0.0, True, "eps", 0, "diffusers")
    c0 = compvis_ddim(steps, 0.0)
    record(f"c_ddim_eta0_{steps}.npy", c0, "ddim", "uniform", steps, 0.0, True, "eps", 1, "compvis")
    record(f"c_ddim_eta05_{steps}.npy", compvis_ddim(steps, 0.5), "ddim", "uniform", steps, 0.5,
           True, "eps", 1, "compvis")
    cp = compvis_plms(steps)
    record(f"c_plms_{steps}.npy", cp, "plms", "uniform", steps, 0.0, True, "eps", 1, "compvis")
    # where CompVis and diffusers coincide (same timesteps; float32 vs float64 betas)
    print(f"  steps {steps}: CompVis DDIM vs diffusers DDIM (eta 0) max diff {maxdiff(c0, d0):.2e}; "
          f"CompVis PLMS vs diffusers PNDM max diff {maxdiff(cp, dp):.2e}")
    assert maxdiff(c0, d0) < 1e-3 and maxdiff(cp, dp) < 1e-3
record("c_ddim_eta05_30.npy", compvis_ddim(30, 0.5), "ddim", "uniform", 30, 0.5, True, "eps", 1,
       "compvis")   # 1000 // 30 = 33: 31 steps, more than asked
record("d_ddim_v_20.npy", run_diffusers("ddim", 20, 0.0, "v"), "ddim", "leading", 20, 0.0, True,
       "v", 0, "diffusers")
record("c_ddim_v_20.npy", compvis_ddim(20, 0.0, "v"), "ddim", "uniform", 20, 0.0, True, "v", 1,
       "compvis")

# img2img: strength 0.6 of 20 steps -> start at step 20 - int(0.6 * 20) = 8
init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4321)) * 0.8
save("init.npy", init.numpy())
s = DDIMScheduler(**SD, steps_offset=1, set_alpha_to_one=False, clip_sample=False)
s.set_timesteps(20)
ts = s.timesteps[8:]
x = s.add_noise(init, noise, ts[:1].repeat(B))
traj = []
for t in ts:
    x = s.step(eps_cfg(x, t, True), t, x).prev_sample
    traj.append(x.clone())
record("d_ddim_img2img_20.npy", traj, "ddim", "leading", 20, 0.0, True, "eps", 0, "diffusers",
       "start=8")
sigmas = den.get_sigmas(20)[8:]
torch.manual_seed(RUN_SEED)
traj = []
x = init + noise * sigmas[0]
x = K.sampling.sample_euler_ancestral(CFGDenoiser(den, True), x, sigmas, disable=True,
                                      callback=lambda d: traj.append(d["x"].clone()) if d["i"] > 0 else None)
traj.append(x.clone())
record("k_euler_a_img2img_20.npy", traj, "euler_a", "default", 20, -1, True, "eps", 0, "compvis",
       "start=8")

with open(os.path.join(OUT, "sampler_cases.txt"), "w") as f:
    f.write("# file sampler schedule|spacing steps eta(-1 default) cfg prediction compvis "
            "precision seed\n")
    f.write("\n".join(case_lines) + "\n")
print(f"  wrote {len(rng_lines)} rng, {len(ts_lines)} spacing and {len(case_lines)} sampler cases")
