"""Fixtures for samplers/brownian.c: the Brownian tree of --sde-noise brownian
against numpy, torchsde and k-diffusion.

  (a) numpy.random.SeedSequence(entropy, spawn_key, pool_size).generate_state(n)
      for many entropies (one to seven 32-bit words), spawn keys and pool
      sizes -> brownian_seedseq.txt (plain numbers).
  (b) torchsde.BrownianTree(t0, zeros, t1, entropy=seed) increments W(ta, tb)
      for sequences of queries as the SDE samplers make them (descending
      sigmas, DPM++ SDE's midpoints, arbitrary and clamped intervals), shape
      [2,4,4,4]; k-diffusion's BatchedBrownianTree with a list of seeds (one
      tree per sample, as A1111 passes the images' seeds). Written for both
      builds of torch's CPU normal (ATEN_CPU_CAPABILITY avx2 / default, see
      fixtures_samplers.py) -> brownian_w_*.npy + brownian_cases.txt.
  (c) whole trajectories of sample_dpmpp_sde, sample_dpmpp_2m_sde and
      sample_dpmpp_3m_sde with k-diffusion's BrownianTreeNoiseSampler, on the
      stand-in denoiser, noise and guidance of fixtures_samplers.py:
      seed = RUN_SEED passed to the sampler (as ComfyUI does), a list of seeds
      (as A1111 does), img2img (the tree spans the sigmas left), and one run
      with no noise sampler at all, k-diffusion's
      own default, whose seed is torch.randint(0, 2**63 - 1) on the global
      generator after torch.manual_seed(RUN_SEED) (recorded in the manifest as
      the run's seed) -> k_brownian_*.npy + sampler_cases_brownian.txt.

Reads tests/fixtures/samplers/x_T.npy (fixtures_samplers.py). Run from the
repository root with the reference environment.
"""
import os
import subprocess
import sys

OUT = "tests/fixtures/samplers"
SHAPE, B, RUN_SEED, CFG_SCALE = (2, 4, 4, 4), 2, 77, 5.0

if not os.environ.get("LDM_FIXTURE_CAP"):
    # torch reads ATEN_CPU_CAPABILITY once, at import: one child process per build
    for cap in ["avx2", "default"]:
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, LDM_FIXTURE_CAP=cap)
        subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, check=True)
    with open(os.path.join(OUT, "brownian_cases.txt"), "w") as f:
        f.write("# W file math per_sample t0 t1 seed queries (ta tb)... "
                "(tools/reference/fixtures_brownian.py)\n")
        for cap in ["avx2", "default"]:
            part = os.path.join(OUT, f"brownian_cases_{cap}.txt")
            f.write(open(part).read())
            os.remove(part)
    raise SystemExit(0)

import numpy as np
import torch
import torchsde

import k_diffusion as K

CAP = os.environ["LDM_FIXTURE_CAP"]
assert torch.backends.cpu.get_cpu_capability().lower() == CAP, "ATEN_CPU_CAPABILITY not honoured"
torch.set_num_threads(1)

# ---------------------------------------------------------------------------
# (a) SeedSequence
if CAP == "avx2":
    def words(v):
        out = []
        while True:
            out.append(v & 0xffffffff)
            v >>= 32
            if not v:
                return out

    lines = ["# pool n_entropy entropy... n_spawn spawn... n_out out... "
             "(tools/reference/fixtures_brownian.py)"]
    entropies = [0, 1, 42, 77, 2**32 - 1, 2**32, 2**32 + 7, 123456789012345, 2**63 - 2,
                 3**100, 0xdeadbeef]
    spawns = [(), (0,), (0, 0), (1, 1), (2, 1), (5, 3), (2**24 + 3, 25), (2**32 + 1, 2),
              (7, 0, 9)]
    for pool in [4, 8, 24]:
        for e in entropies:
            for sk in spawns:
                for n_out in [3, 4, 30]:
                    if pool != 24 and n_out != 4:
                        continue
                    state = np.random.SeedSequence(entropy=e, spawn_key=sk, pool_size=pool) \
                        .generate_state(n_out)
                    ew = words(e)
                    sw = [w for k in sk for w in words(k)]
                    lines.append(" ".join(map(str, [pool, len(ew), *ew, len(sw), *sw, n_out,
                                                    *state.tolist()])))
    with open(os.path.join(OUT, "brownian_seedseq.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")

# ---------------------------------------------------------------------------
# the stand-in model and sigmas (as fixtures_samplers_3m.py)
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
smin, smax = float(den.sigmas[0]), float(den.sigmas[-1])


def sigmas_of(sched, steps):
    return K.sampling.get_sigmas_karras(steps, smin, smax) if sched == "karras" else den.get_sigmas(steps)


def f64(v):
    return repr(float(v))   # the exact double (a float32 widened) as text


# ---------------------------------------------------------------------------
# (b) W increments
def queries_2m(sig):  # (sigma_next, sigma) of every noisy step, as sorted by the wrapper
    return [(sig[i + 1], sig[i]) for i in range(len(sig) - 2)]


def queries_sde(sig):  # DPM++ SDE: sigma_fn(t) -> sigma_fn(s) and -> sigma_fn(t_next)
    out, sigma_fn, t_fn = [], (lambda t: t.neg().exp()), (lambda s: s.log().neg())
    for i in range(len(sig) - 2):
        t, t_next = t_fn(sig[i]), t_fn(sig[i + 1])
        s = t + (t_next - t) * 0.5
        out.append((sigma_fn(s), sigma_fn(t)))
        out.append((sigma_fn(t_next), sigma_fn(t)))
    return out


case_lines = []
for tag, sched, steps, kind, seeds in [
        ("2m_default10", "default", 10, "2m", [0, 77]),
        ("sde_karras8", "karras", 8, "sde", [1, 2**32 + 5]),
        ("2m_karras30", "karras", 30, "2m", [123456789012345]),
        ("mixed", "default", 12, "mixed", [42]),
        ("persample", "karras", 6, "sde", [[77, 78]])]:
    if CAP != "avx2" and tag not in ("2m_default10", "persample"):
        continue
    sig = sigmas_of(sched, steps)
    t0, t1 = sig[sig > 0].min(), sig.max()
    if kind == "2m":
        qs = queries_2m(sig)
    elif kind == "sde":
        qs = queries_sde(sig)
    else:  # arbitrary: the whole span, outside it (clamped), nested, repeated, 3e-6 long
        # (two times that round to the same 1e-6 grid point make torchsde recurse forever)
        qs = [(t0, t1), (torch.tensor(0.01), torch.tensor(0.5)), (torch.tensor(3.0), torch.tensor(99.0)),
              (torch.tensor(1.25), torch.tensor(1.2500031)),
              (torch.tensor(0.7), torch.tensor(9.1)), (torch.tensor(2.0), torch.tensor(2.5)),
              (torch.tensor(0.7), torch.tensor(9.1)), (sig[3], sig[1])] + queries_2m(sig)[::-1]
    qs = [(min(a, b), max(a, b)) for a, b in qs]
    for seed in seeds:
        if isinstance(seed, list):   # k-diffusion's wrapper, one tree per sample
            tree = K.sampling.BatchedBrownianTree(torch.zeros(SHAPE), t0, t1, seed=seed)
            ws = [tree(a, b) for a, b in qs]
            per_sample, seed_txt = 1, seed[0]
        else:
            tree = torchsde.BrownianTree(t0, torch.zeros(SHAPE), t1, entropy=seed)
            ws = [tree(a, b) for a, b in qs]
            per_sample, seed_txt = 0, seed
        file = f"brownian_w_{CAP}_{tag}_s{seed_txt}.npy"
        np.save(os.path.join(OUT, file), torch.stack(ws).numpy().astype(np.float32))
        case_lines.append(" ".join([file, CAP, str(per_sample), f64(t0), f64(t1), str(seed_txt),
                                    str(len(qs))] + [f64(v) for q in qs for v in q]))
with open(os.path.join(OUT, f"brownian_cases_{CAP}.txt"), "w") as f:
    f.write("\n".join(case_lines) + "\n")

# ---------------------------------------------------------------------------
# (c) trajectories (the C harness's generator is the AVX2 build's)
if CAP == "avx2":
    noise = torch.from_numpy(np.load(os.path.join(OUT, "x_T.npy")))
    conds = torch.tensor([1.0 + 0.5 * b for b in range(B)])

    def model(x, sigma):  # CFG on D, rows [uncond, cond]
        out = den(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([torch.zeros(B), conds]))
        u, c = out.chunk(2)
        return u + (c - u) * CFG_SCALE

    # The tree puts every time on a 1e-6 grid, so a sigma one float32 ulp away from
    # k-diffusion's can land on the next grid point and change that step's noise by
    # ~1e-3: the cases below use schedules whose sigmas the C computes on the same
    # grid points (samplers/schedule.c's Karras sigmas differ from torch's in a few
    # ulps for some step counts, e.g. karras 40, torch's vectorised linspace and pow).
    samplers = {"dpmpp_sde": K.sampling.sample_dpmpp_sde, "dpmpp_2m_sde": K.sampling.sample_dpmpp_2m_sde,
                "dpmpp_3m_sde": K.sampling.sample_dpmpp_3m_sde}
    lines = []
    for name, sched, steps, mode in [
            ("dpmpp_sde", "default", 10, "seed"), ("dpmpp_sde", "karras", 20, "seed"),
            ("dpmpp_2m_sde", "default", 10, "seed"), ("dpmpp_2m_sde", "karras", 20, "seed"),
            ("dpmpp_3m_sde", "default", 10, "seed"), ("dpmpp_3m_sde", "karras", 20, "seed"),
            ("dpmpp_2m_sde", "karras", 12, "persample"), ("dpmpp_sde", "karras", 8, "persample"),
            ("dpmpp_2m_sde", "default", 10, "default"), ("dpmpp_sde", "default", 20, "img2img")]:
        sigmas = sigmas_of(sched, steps)
        x = noise * sigmas[0]
        if mode == "img2img":   # strength 0.6 of 20 steps: the last 12 sigmas, the tree over them
            init = torch.from_numpy(np.load(os.path.join(OUT, "init.npy")))
            sigmas = sigmas[8:]
            x = init + noise * sigmas[0]
        traj = []
        cb = lambda d: traj.append(d["x"].clone()) if d["i"] > 0 else None
        sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
        extra = "brownian"
        if mode == "default":   # no noise sampler: k-diffusion seeds its tree itself
            torch.manual_seed(RUN_SEED)
            seed = torch.randint(0, 2 ** 63 - 1, []).item()   # what the sampler will draw
            torch.manual_seed(RUN_SEED)
            x = samplers[name](model, x, sigmas, disable=True, callback=cb)
        else:
            seed = RUN_SEED
            ns = K.sampling.BrownianTreeNoiseSampler(
                x, sigma_min, sigma_max, seed=[RUN_SEED + b for b in range(B)] if mode == "persample" else RUN_SEED)
            x = samplers[name](model, x, sigmas, disable=True, callback=cb, noise_sampler=ns)
            if mode == "persample":
                extra = "brownian,persample"
            if mode == "img2img":
                extra = "start=8,brownian"
        traj.append(x.clone())
        file = f"k_brownian_{name}_{sched}_{steps}" + ("" if mode == "seed" else "_" + mode) + ".npy"
        np.save(os.path.join(OUT, file), torch.stack(traj).numpy().astype(np.float32))
        lines.append(f"{file} {name} {sched} {steps} -1 1 eps 0 compvis {seed} {extra}")
    with open(os.path.join(OUT, "sampler_cases_brownian.txt"), "w") as f:
        f.write("# file sampler schedule steps eta cfg pred compvis precision seed extra "
                "(tools/reference/fixtures_brownian.py; extra: brownian = --sde-noise brownian, "
                "persample = one tree per sample seeded seed + b)\n")
        f.write("\n".join(lines) + "\n")
print(CAP, "done")
