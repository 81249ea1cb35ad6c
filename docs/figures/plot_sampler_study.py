"""Draw the convergence lab of docs/06-samplers.md from sampler_study's table.

Run by `make sampler-study` (light venv build/venv-nb): reads the tab-separated
rows docs/figures/sampler_study.c wrote (every sampler on the analytic model,
steps 3..1000) and writes docs/figures/sampler-study.png, three panels:
  1. deterministic samplers on the Karras sigmas (DDIM/PLMS: trailing
     timesteps): RMS distance of the final sample to the exact ODE end point
     against model evaluations (NFE);
  2. the same on the default (k-diffusion get_sigmas, linear in t) sigmas;
  3. ancestral / SDE samplers (Karras): their distance to the ODE end point
     (it does not shrink: they sample, they do not solve the ODE) and the
     relative error of their samples' variance, which does;
  4. DPM++ 2M on every sigma schedule (Euler's rows are in the table too).
Also prints the markdown table of docs/06 (final error at 10, 20, 50 steps).
Usage: plot_sampler_study.py TABLE.tsv OUT.png
"""
import csv
import sys
from collections import defaultdict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

DETERMINISTIC = ["ddim", "plms", "euler", "heun", "dpm2", "lms", "dpmpp_2m", "dpmpp_3m", "unipc",
                 "unipc_bh1", "deis", "ipndm", "ipndm_v", "ddim_trailing", "res_multistep"]
STOCHASTIC = ["ddpm", "euler_a", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde",
              "er_sde"]
DISCRETE = ("ddim", "plms", "ddpm", "unipc", "unipc_bh1", "deis", "ddim_trailing")
SCHEDULES = ["default", "karras", "exponential", "sgm_uniform", "simple", "kl_optimal", "ays", "beta",
             "gits", "smoothstep"]

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
data_var = float(rows[0]["var"])
runs = defaultdict(list)  # (sampler, schedule) -> [(steps, nfe, err_last, err_final, var)]
for r in rows[1:]:
    runs[(r["sampler"], r["schedule"])].append(
        (int(r["steps"]), int(r["nfe"]), float(r["err_last"]), float(r["err_final"]), float(r["var"])))


def series(name, sched):
    return runs[(name, "trailing" if name in DISCRETE else sched)]


fig, ax = plt.subplots(1, 4, figsize=(22, 5))
for k, sched in enumerate(["karras", "default"]):
    for name in DETERMINISTIC:
        s = series(name, sched)
        ax[k].loglog([v[1] for v in s], [v[3] for v in s], "o-", ms=3, label=name)
    ax[k].set(title=f"deterministic, {sched} sigmas (DDIM/PLMS/UniPC/DEIS: trailing)", xlabel="model evaluations (NFE)",
              ylabel="RMS distance to the exact ODE end point")
    ax[k].grid(True, which="both", alpha=0.3)
    ax[k].legend(fontsize=7, ncol=2)
for name in STOCHASTIC:
    s = series(name, "karras")
    line, = ax[2].loglog([v[1] for v in s], [v[3] for v in s], "o-", ms=3, label=name + ": distance")
    ax[2].loglog([v[1] for v in s], [abs(v[4] - data_var) / data_var for v in s], "s--", ms=3,
                 color=line.get_color(), label=name + ": |var error| / var")
ax[2].set(title="ancestral / SDE (Karras; DDPM: trailing)", xlabel="model evaluations (NFE)")
ax[2].grid(True, which="both", alpha=0.3)
ax[2].legend(fontsize=7, ncol=2)
for sched in SCHEDULES:
    s = runs[("dpmpp_2m", sched)]
    ax[3].loglog([v[1] for v in s], [v[3] for v in s], "o-", ms=3, label=sched)
ax[3].set(title="DPM++ 2M on every sigma schedule", xlabel="model evaluations (NFE)",
          ylabel="RMS distance to the exact ODE end point")
ax[3].grid(True, which="both", alpha=0.3)
ax[3].legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)

print("| sampler | schedule | NFE at 10 / 20 / 50 steps | error at 10 | at 20 | at 50 | at 1000 |")
print("|---|---|---|---|---|---|---|")
for name in DETERMINISTIC + STOCHASTIC:
    scheds = ["karras", "default"]
    if name == "dpmpp_2m":
        scheds = SCHEDULES
    for sched in (["trailing"] if name in DISCRETE else scheds):
        s = {v[0]: v for v in runs[(name, sched)]}
        if not all(n in s for n in (10, 20, 50, 1000)):
            continue
        print(f"| {name} | {sched} | {s[10][1]} / {s[20][1]} / {s[50][1]} | "
              + " | ".join(f"{s[n][3]:.1e}" for n in (10, 20, 50, 1000)) + " |")
