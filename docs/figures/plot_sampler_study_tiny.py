"""Draw the tiny-model convergence lab of docs/06-samplers.md.

Run by `make sampler-study-tiny` (light venv build/venv-nb): reads the rows
docs/figures/sampler_study_tiny.c wrote (every sampler on the trained tiny
model, 3..200 steps, distance of the final latent to a 1000-step DPM++ 2M
solve of the same prompts and noise) and writes one PNG, two panels:
  1. deterministic samplers: latent RMS distance against model evaluations;
  2. ancestral / SDE samplers: the same distance, which stays large: they
     draw fresh noise, so they do not converge to the ODE's image.
Also prints the markdown table of docs/06 (distance at 10, 20, 50 and 200 steps).
Usage: plot_sampler_study_tiny.py TABLE.tsv OUT.png
"""
import csv
import sys
from collections import defaultdict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
runs = defaultdict(list)   # sampler -> [(steps, nfe, latent_rms, pixel_rms)]
stochastic, checks = {}, []
for r in rows:
    if r["sampler"].startswith("check_"):
        checks.append(r)
        continue
    runs[r["sampler"]].append((int(r["steps"]), int(r["nfe"]), float(r["latent_rms"]),
                               float(r["pixel_rms"])))
    stochastic[r["sampler"]] = r["stochastic"] == "1"

fig, ax = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
for k, want in enumerate([False, True]):
    for name, s in runs.items():
        if stochastic[name] != want:
            continue
        ax[k].loglog([v[1] for v in s], [v[2] for v in s], "o-", ms=3, label=name)
    ax[k].set(title=("ancestral / SDE samplers" if want else "deterministic (ODE) samplers")
              + ": tiny model, 2 prompts, seed 7",
              xlabel="model evaluations (NFE)")
    ax[k].grid(True, which="both", alpha=0.3)
    ax[k].legend(fontsize=7, ncol=2)
ax[0].set_ylabel("RMS distance of the final latent to a 1000-step DPM++ 2M solve")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=80)

for c in checks:
    print(f"{c['sampler'][6:]} at 1000 steps: latent RMS {float(c['latent_rms']):.1e}, "
          f"pixel RMS {float(c['pixel_rms']):.2f} (of 255)")
print("| sampler | NFE at 10 / 20 / 50 steps | latent RMS at 10 | 20 | 50 | 200 |")
print("|---|---|---|---|---|---|")
for name, s in runs.items():
    d = {v[0]: v for v in s}
    if not all(n in d for n in (10, 20, 50, 200)):
        continue
    print(f"| {name}{' (stochastic)' if stochastic[name] else ''} | {d[10][1]} / {d[20][1]} / {d[50][1]} | "
          + " | ".join(f"{d[n][2]:.1e}" for n in (10, 20, 50, 200)) + " |")
