"""Regenerate every committed fixture under tests/fixtures/.

Runs each tools/reference/fixtures_*.py in turn (one per module: ops,
tokenizer, clip, vae, unet, samplers, ...). Each script is deterministic
(fixed seeds) and writes only under tests/fixtures/<module>/.
Run through `make fixtures` (uses .venv-ref).
"""
import glob
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
os.chdir(root)
sys.path.insert(0, here)
only = sys.argv[1:]
for path in sorted(glob.glob(os.path.join(here, "fixtures_*.py"))):
    name = os.path.basename(path)[len("fixtures_"):-3]
    if only and name not in only:
        continue
    print(f"== fixtures: {name}", flush=True)
    runpy.run_path(path, run_name="__main__")
