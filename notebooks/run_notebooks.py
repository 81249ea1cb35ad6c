"""
notebooks/run_notebooks.py -- execute every notebooks/NN-*.ipynb headlessly
(nbclient) and fail on the first cell error. `make notebooks` runs it.

    python notebooks/run_notebooks.py [--out DIR] [NAME ...]

The committed notebooks carry no outputs; the executed copies (with figures)
are written to DIR (default build/notebooks) for viewing. Also refuses a
committed notebook that has outputs (they must be stripped before commit:
regenerate with notebooks/make_notebooks.py).
"""
import argparse
import glob
import os
import subprocess
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "build", "notebooks"))
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    ap.add_argument("names", nargs="*", help="notebook names or prefixes, e.g. 05 (default: all)")
    a = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(HERE, "[0-9][0-9]*.ipynb")))
    if a.names:
        paths = [p for p in paths if any(os.path.basename(p).startswith(n) for n in a.names)]
    os.makedirs(a.out, exist_ok=True)
    failed, t_all = [], time.time()
    for p in paths:
        name = os.path.basename(p)
        nb = nbformat.read(p, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells)
                 if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
        if dirty:
            print(f"FAIL {name}: committed with outputs in cells {dirty} (strip them)")
            failed.append(name)
            continue
        t0 = time.time()
        client = NotebookClient(nb, timeout=a.timeout, kernel_name="python3",
                                resources={"metadata": {"path": HERE}})
        try:
            # the kernel's own stderr (transport notices) is not the notebook's output;
            # cell errors arrive through the messaging channel either way
            client.execute(stderr=subprocess.DEVNULL)
            status = "ok"
        except CellExecutionError as e:
            status = "FAIL"
            msg = str(e).strip().splitlines()
            print("\n".join(msg[-25:]))
            failed.append(name)
        nbformat.write(nb, os.path.join(a.out, name))
        print(f"{status:4s} {name}  {time.time() - t0:6.1f} s", flush=True)
    print(f"notebooks: {len(paths) - len(failed)} passed, {len(failed)} failed "
          f"({time.time() - t_all:.0f} s; executed copies in {a.out})")
    return 1 if failed or not paths else 0


if __name__ == "__main__":
    sys.exit(main())
