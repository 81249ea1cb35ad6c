"""
tools/train/evaluate.py -- does the tiny model draw what it is asked?

A grid of single-object prompts (6 colours x 3 shapes x 5 places, English and
Japanese, several seeds) through the diffusers StableDiffusionPipeline (DDIM
20 steps, guidance 5) from the exported model, judged by pixel statistics
alone (no learned classifier):

  every pixel is given the nearest palette colour (3 backgrounds, 6 object
  colours of dataset.py) in RGB; pixels nearer a background colour are
  background.
  colour ok    the requested colour covers >= 12 pixels and more than any
               other object colour, in the whole image
  place ok     the centroid of the requested colour's pixels lies in the
               requested region (left: x < 26, right: x >= 38, top: y < 26,
               bottom: y >= 38, center: 20 <= x,y < 44)
  both ok      colour ok and place ok ("the requested colour dominates the
               requested region")
Prints the rate per attribute value and per language. Shapes are not judged.

  .venv-ref/bin/python tools/train/evaluate.py [--model tools/tiny-model] [--seeds 2]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset  # noqa: E402

REGIONS = {"left": lambda x, y: x < 26, "right": lambda x, y: x >= 38,
           "top": lambda x, y: y < 26, "bottom": lambda x, y: y >= 38,
           "center": lambda x, y: 20 <= x < 44 and 20 <= y < 44}


def judge(img, colour, place):
    """uint8 [64,64,3] -> (colour ok, place ok)."""
    names = list(dataset.BACKGROUNDS) + list(dataset.COLOURS)
    pal = np.array([dataset.BACKGROUNDS[n][0] for n in dataset.BACKGROUNDS] +
                   [dataset.COLOURS[n][0] for n in dataset.COLOURS], dtype=np.float32)
    d = ((img[:, :, None, :].astype(np.float32) - pal[None, None]) ** 2).sum(-1)
    lab = d.argmin(-1)
    nb = len(dataset.BACKGROUNDS)
    counts = {names[k]: int((lab == k).sum()) for k in range(nb, len(names))}
    want = counts[colour]
    colour_ok = want >= 12 and want > max(v for k, v in counts.items() if k != colour)
    ys, xs = np.nonzero(lab == names.index(colour))
    place_ok = len(xs) > 0 and REGIONS[place](xs.mean(), ys.mean())
    return bool(colour_ok), bool(place_ok)


def prompts():
    out = []
    for c in dataset.COLOURS:
        for s in dataset.SHAPES:
            for p in dataset.PLACES:
                sc = dict(bg="white", say_bg=False, place=p, relation=None,
                          objects=[dict(colour=c, shape=s, size="medium", x=0, y=0)])
                out.append((c, s, p, "en", dataset.caption_en(sc)))
                out.append((c, s, p, "ja", dataset.caption_ja(sc)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tools/tiny-model")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scale", type=float, default=5.0)
    ap.add_argument("--sheet", default="", help="write the images of seed 0 as a PNG grid")
    a = ap.parse_args()
    import torch
    import train_tiny
    torch.set_num_threads(1)
    pipe = train_tiny.load_pipeline(a.model)
    P = prompts()
    res = []
    sheet = []
    for seed in range(a.seeds):
        imgs = []
        for i in range(0, len(P), 60):
            imgs.append(train_tiny.generate(pipe, [p[4] for p in P[i:i + 60]], seed=1000 * seed + i,
                                            steps=a.steps, cfg=a.scale))
        imgs = np.concatenate(imgs)
        if seed == 0:
            sheet = imgs
        for p, im in zip(P, imgs):
            res.append(p[:4] + judge(im, p[0], p[2]))
    def rate(rows, k):
        return 100.0 * np.mean([r[k] for r in rows])
    print(f"{len(res)} images ({len(P)} prompts x {a.seeds} seeds), DDIM {a.steps}, guidance {a.scale}")
    print(f"{'':18s} {'colour':>7s} {'place':>7s} {'both':>7s}")
    groups = [("all", lambda r: True)]
    groups += [(f"lang {l}", (lambda l: lambda r: r[3] == l)(l)) for l in ("en", "ja")]
    groups += [(f"colour {c}", (lambda c: lambda r: r[0] == c)(c)) for c in dataset.COLOURS]
    groups += [(f"shape {s}", (lambda s: lambda r: r[1] == s)(s)) for s in dataset.SHAPES]
    groups += [(f"place {p}", (lambda p: lambda r: r[2] == p)(p)) for p in dataset.PLACES]
    for name, f in groups:
        rows = [r for r in res if f(r)]
        both = 100.0 * np.mean([r[4] and r[5] for r in rows])
        print(f"{name:18s} {rate(rows, 4):6.1f}% {rate(rows, 5):6.1f}% {both:6.1f}%")
    if a.sheet:
        from PIL import Image
        cols = 30
        rows_n = (len(sheet) + cols - 1) // cols
        g = Image.new("RGB", (cols * 65, rows_n * 65), (128, 128, 128))
        for i, im in enumerate(sheet):
            g.paste(Image.fromarray(im), ((i % cols) * 65, (i // cols) * 65))
        g.save(a.sheet)
        print(f"sheet: {a.sheet} (row-major in prompt order: colour, shape, place, en/ja)")


if __name__ == "__main__":
    main()
