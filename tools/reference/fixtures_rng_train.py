"""Fixtures for samplers/rng.c's torch.randint / torch.rand: the draws of
tools/train/train_tiny.py on one torch CPU generator, in its order.

Reference: torch.randint(low, high, (n,), generator=g) (int64),
torch.rand(n, generator=g) (float32) and torch.randn(shape, generator=g)
interleaved on one torch.Generator, as train_tiny.py draws them:
  stage 2 (train_unet), per step:
      idx = randint(0, N, (b,)); z noise = randn([b,4,8,8]); rand(b) (language);
      rand(b) (empty caption); t = randint(0, 1000, (b,)); eps = randn([b,4,8,8])
  stage 1 (train_vae), per step:
      idx = randint(0, N, (b,)); oy, ox = randint(0, n, (b,)) twice (crop
      offsets, only when cropping); z = randn([b,4,crop/8,crop/8])
    (crop 8 gives fewer than 16 normals: torch's scalar double path, whose
    cached second value carries over to the next randn call).
Plus edge cases: a range >= 2^32 (torch draws 64 bits a value), negative
bounds, and randn calls below 16 elements between rand calls.

torch's >= 16-element normal has two builds (AVX2 polynomials vs the C
library's logf/sinf/cosf, see samplers/rng.h); each case is written for both
by running this script in child processes with ATEN_CPU_CAPABILITY set.

Writes tests/fixtures/train/rng_train_cases.txt:
  case <name> <avx2|default> <seed>
  randint <low> <high> <n> <values...>
  rand <n> <float32 bit patterns, hex...>
  randn <n> <float32 bit patterns, hex...>
"""
import os
import subprocess
import sys

import numpy as np
import torch

OUT = "tests/fixtures/train"
os.makedirs(OUT, exist_ok=True)
torch.set_num_threads(1)


def hexes(t):
    return " ".join(f"{v:08x}" for v in t.reshape(-1).numpy().view(np.uint32))


def write(variant):
    got = torch.backends.cpu.get_cpu_capability().lower()
    assert got == variant, f"ATEN_CPU_CAPABILITY={variant} not honoured (got {got})"
    lines = []

    class Rec:
        def __init__(self, name, seed):
            self.g = torch.Generator().manual_seed(seed)
            lines.append(f"case {name} {variant} {seed}")

        def randint(self, lo, hi, n):
            v = torch.randint(lo, hi, (n,), generator=self.g)
            assert v.dtype == torch.int64
            lines.append(f"randint {lo} {hi} {n} " + " ".join(str(int(x)) for x in v))

        def rand(self, n):
            lines.append(f"rand {n} " + hexes(torch.rand(n, generator=self.g)))

        def randn(self, shape):
            n = int(np.prod(shape))
            lines.append(f"randn {n} " + hexes(torch.randn(shape, generator=self.g)))

    # stage 2: two steps of train_unet, seed * 1000 + 200 + rank
    for seed, b, N, steps in [(200, 2, 5000, 2), (42201, 3, 20000, 1), (1, 1, 5000, 2),
                              (2**32 + 7, 1, 7, 1)]:
        r = Rec(f"unet_s{seed}_b{b}", seed)
        for _ in range(steps):
            r.randint(0, N, b)
            r.randn((b, 4, 8, 8))
            r.rand(b)
            r.rand(b)
            r.randint(0, 1000, b)
            r.randn((b, 4, 8, 8))
    # stage 1: train_vae steps, seed * 1000 + 100 + rank; crops 32 and 8, then full 64
    for seed, b in [(100, 2), (7101, 3), (5, 1)]:
        r = Rec(f"vae_s{seed}_b{b}", seed)
        for crop in [32, 8, 8, 64]:
            r.randint(0, 5000, b)
            if crop < 64:
                n = (64 - crop) // 8 + 1
                r.randint(0, n, b)
                r.randint(0, n, b)
            r.randn((b, 4, crop // 8, crop // 8))
    # edge cases
    r = Rec("edges_s9", 9)
    r.randint(0, 2**40, 5)                 # range >= 2^32: 64-bit draws
    r.randint(-5, 5, 20)
    r.randn((3,))                          # scalar path, one value cached ...
    r.rand(17)                             # ... kept across rand ...
    r.randn((2,))                          # ... used here
    r.randint(-2**35, 2**35 + 3, 4)
    r.randn((40,))
    r.rand(1)
    r.randint(10, 11, 3)                   # range 1: a draw per value all the same
    r.randn((5,))
    with open(os.path.join(OUT, f"rng_train_cases_{variant}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if os.environ.get("LDM_FIXTURE_RNG_ONLY"):
    write(os.environ["LDM_FIXTURE_RNG_ONLY"])
    raise SystemExit(0)
for cap in ["avx2", "default"]:
    env = dict(os.environ, ATEN_CPU_CAPABILITY=cap, LDM_FIXTURE_RNG_ONLY=cap)
    subprocess.run([sys.executable, os.path.abspath(__file__)], env=env, check=True,
                   cwd=os.getcwd())
with open(os.path.join(OUT, "rng_train_cases.txt"), "w") as f:
    for cap in ["avx2", "default"]:
        p = os.path.join(OUT, f"rng_train_cases_{cap}.txt")
        with open(p) as g:
            f.write(g.read())
        os.remove(p)
