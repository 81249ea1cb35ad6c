"""
notebooks/run_notebooks.py -- execute every notebooks/NN-*.ipynb headlessly
(nbclient) and fail on the first cell error. `make notebooks` runs it;
`make notebooks-render` runs it with --render.

    python notebooks/run_notebooks.py [--out DIR] [--render] [NAME ...]

The notebooks are committed WITH their outputs (figures included), so that a
reader sees the pictures on the repository's web page without building
anything. Their cells come from notebooks/make_notebooks.py; this script
refuses a committed notebook whose cells differ from that file's (edited in
one place and not the other) or that carries no outputs (never rendered).

Default: execute each notebook from its committed cells, write the executed
copy to DIR (default build/notebooks); the committed file is not touched.
--render: execute the cells of make_notebooks.py and write the notebook back
in place, outputs included, made small and repeatable: every PNG is reduced to
at most MAX_WIDTH pixels wide and a palette of 256 colours (Pillow), timing
metadata and the kernel's version strings are left out, consecutive prints of
a cell are one output (however the kernel happened to flush them), execution
counts run 1, 2, 3, ...
"""
import argparse
import base64
import glob
import io
import os
import subprocess
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_WIDTH = 720          # pixels: a rendered figure is at most this wide


def generated():
    """{name: the notebook make_notebooks.py writes (cells, no outputs)}."""
    sys.path.insert(0, HERE)
    import make_notebooks
    return {name + ".ipynb": make_notebooks.build(name) for name in make_notebooks.NOTEBOOKS}


def cell_sources(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


def shrink_png(b64):
    """A matplotlib PNG (base64) -> smaller PNG (base64): at most MAX_WIDTH wide,
    a 256-colour palette, no metadata. Same input, same bytes."""
    from PIL import Image
    im = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    if im.width > MAX_WIDTH:
        im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.LANCZOS)
    im = im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def tidy(nb, meta):
    """The executed notebook as committed: small images, no timings or versions."""
    nb.metadata = meta
    for c in nb.cells:
        c.metadata.pop("execution", None)
        merged = []          # consecutive prints: one output however the kernel flushed them
        for o in c.get("outputs", []):
            if (merged and o.output_type == "stream" and merged[-1].output_type == "stream"
                    and merged[-1].name == o.name):
                merged[-1].text += o.text
            else:
                merged.append(o)
        if c.cell_type == "code":
            c.outputs = merged
        for o in c.get("outputs", []):
            o.get("metadata", {}).pop("image/png", None)
            if "data" in o and "image/png" in o["data"]:
                o["data"]["image/png"] = shrink_png(o["data"]["image/png"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "build", "notebooks"))
    ap.add_argument("--render", action="store_true",
                    help="execute make_notebooks.py's cells, write the notebooks in place with outputs")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    ap.add_argument("names", nargs="*", help="notebook names or prefixes, e.g. 05 (default: all)")
    a = ap.parse_args()
    gen = generated()
    paths = sorted(set(glob.glob(os.path.join(HERE, "[0-9][0-9]*.ipynb")))
                   | {os.path.join(HERE, n) for n in gen})
    if a.names:
        paths = [p for p in paths if any(os.path.basename(p).startswith(n) for n in a.names)]
    os.makedirs(a.out, exist_ok=True)
    failed, t_all = [], time.time()
    for p in paths:
        name = os.path.basename(p)
        if name not in gen:
            print(f"FAIL {name}: not written by make_notebooks.py (add it there or remove it)")
            failed.append(name)
            continue
        if a.render:
            nb = gen[name]
        else:
            if not os.path.exists(p):
                print(f"FAIL {name}: in make_notebooks.py but not rendered (make notebooks-render)")
                failed.append(name)
                continue
            nb = nbformat.read(p, as_version=4)
            if cell_sources(nb) != cell_sources(gen[name]):
                print(f"FAIL {name}: its cells differ from make_notebooks.py's "
                      "(edit make_notebooks.py, then make notebooks-render)")
                failed.append(name)
                continue
            if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
                print(f"FAIL {name}: committed without outputs (make notebooks-render)")
                failed.append(name)
                continue
        meta = dict(nb.metadata)
        t0 = time.time()
        client = NotebookClient(nb, timeout=a.timeout, kernel_name="python3", record_timing=False,
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
        tidy(nb, meta)
        nbformat.write(nb, os.path.join(a.out, name))
        if a.render and status == "ok":
            nbformat.write(nb, p)
        size = f"{os.path.getsize(p) / 1024:7.0f} KB" if a.render and status == "ok" else ""
        print(f"{status:4s} {name}  {time.time() - t0:6.1f} s {size}", flush=True)
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(HERE, "[0-9][0-9]*.ipynb")))
    print(f"notebooks: {len(paths) - len(failed)} passed, {len(failed)} failed "
          f"({time.time() - t_all:.0f} s; executed copies in {a.out}; "
          f"committed notebooks {total / 1024:.0f} KB)")
    return 1 if failed or not paths else 0


if __name__ == "__main__":
    sys.exit(main())
