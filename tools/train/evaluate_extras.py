"""
tools/train/evaluate_extras.py -- the prompts, images and the shape judge of
the semantic tests of the tiny model's LoRA and inpainting variant
(tests/test_tiny_model.c), all from the training grammar of dataset.py.

  fixtures   tests/fixtures/tiny/extras.tsv: the bar prompts (6 colours x
             5 places x English / Japanese, "a red bar on the left" /
             "左に赤い棒") and the inpainting cases: a two-object scene
             "A <relation> B" of which only B is drawn in the init image
             (inpaint_K_init.png), a mask over the half of the image where
             A belongs (inpaint_K_mask.png, white = repaint), the whole
             scene's caption as the prompt, and A's colour as the colour the
             repainted region must show.
  judge      bar or not, by pixels alone: the largest 4-connected blob of
             the requested colour (nearest palette colour, as the colour
             judge), its second moments var_x, var_y, cov_xy and its
             elongation e = sqrt(l1 / l2) (l1 >= l2 the eigenvalues of the
             covariance). Circles, squares and triangles (regular polygons)
             have isotropic second moments, e = 1; the bar of dataset.py
             (3.5 : 1) has e = 3.5 drawn. Bar: e >= BAR_ELONGATION with the
             long axis horizontal (var_x > var_y), and >= 12 pixels.
             `--calibrate` prints e (and, for the star, the solidity =
             area / convex hull area) of the dataset's own shapes, drawn and
             after the tiny VAE's round trip.
  figures    `--figures`: docs/figures/tiny-lora.png (the bar prompt of
             `make demo` without and with the LoRA) and tiny-inpaint.png
             (init image, mask, inpainted samples), from `make demo`'s
             outputs/demo/ (ldm.c's images).

  .venv-ref/bin/python tools/train/evaluate_extras.py --fixtures
  .venv-ref/bin/python tools/train/evaluate_extras.py --calibrate
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dataset  # noqa: E402

BAR_ELONGATION = 2.0
FIXTURES = "tests/fixtures/tiny"

# inpainting cases: (A, relation, B, background); A is repainted into the mask
INPAINT_CASES = [
    (dict(colour="red", shape="circle", size="medium"), "right of",
     dict(colour="blue", shape="square", size="medium"), "white"),
    (dict(colour="yellow", shape="triangle", size="medium"), "above",
     dict(colour="green", shape="square", size="medium"), "white"),
    (dict(colour="purple", shape="circle", size="medium"), "left of",
     dict(colour="orange", shape="triangle", size="medium"), "black"),
]


def inpaint_scene(case):
    """-> (scene with A and B, scene with B only, pixel mask [64,64] bool over A's half)."""
    oa, rel, ob, bg = case
    (dx, dy) = dataset.RELATIONS[rel][0]
    first, second = (18, 46) if (dx + dy) < 0 else (46, 18)
    a, b = dict(oa), dict(ob)
    if dx != 0:
        a.update(x=first, y=32); b.update(x=second, y=32)
    else:
        a.update(x=32, y=first); b.update(x=32, y=second)
    full = dict(bg=bg, say_bg=bg != "white", place=None, relation=rel, objects=[a, b])
    only_b = dict(full, objects=[b])
    yy, xx = np.mgrid[0:dataset.SIZE, 0:dataset.SIZE]
    half = dataset.SIZE // 2
    mask = {(-1, 0): xx < half, (1, 0): xx >= half, (0, -1): yy < half, (0, 1): yy >= half}[(dx, dy)]
    return full, only_b, mask


def write_fixtures(out=FIXTURES):
    from PIL import Image
    lines = ["# tests/test_tiny_model.c: LoRA and inpainting prompts (tools/train/evaluate_extras.py)"]
    for c in dataset.COLOURS:
        for p in dataset.PLACES:
            sc = dict(bg="white", say_bg=False, place=p, relation=None,
                      objects=[dict(colour=c, shape="bar", size="medium", x=0, y=0)])
            lines.append(f"bar\t{c}\t{p}\ten\t{dataset.caption_en(sc)}")
            lines.append(f"bar\t{c}\t{p}\tja\t{dataset.caption_ja(sc)}")
    for k, case in enumerate(INPAINT_CASES):
        full, only_b, mask = inpaint_scene(case)
        init, mpng = f"inpaint_{k}_init.png", f"inpaint_{k}_mask.png"
        Image.fromarray(dataset.render(only_b)).save(os.path.join(out, init), optimize=True)
        Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB").save(os.path.join(out, mpng), optimize=True)
        colour = full["objects"][0]["colour"]
        lines.append(f"inpaint\t{init}\t{mpng}\t{colour}\ten\t{dataset.caption_en(full)}")
        lines.append(f"inpaint\t{init}\t{mpng}\t{colour}\tja\t{dataset.caption_ja(full)}")
    with open(os.path.join(out, "extras.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}/extras.tsv ({len(lines) - 1} rows) and {2 * len(INPAINT_CASES)} PNGs")


def palette_labels(img):
    names = list(dataset.BACKGROUNDS) + list(dataset.COLOURS)
    pal = np.array([dataset.BACKGROUNDS[n][0] for n in dataset.BACKGROUNDS] +
                   [dataset.COLOURS[n][0] for n in dataset.COLOURS], dtype=np.float32)
    d = ((img[:, :, None, :].astype(np.float32) - pal[None, None]) ** 2).sum(-1)
    return d.argmin(-1), names


def largest_blob(on):
    """bool [H,W] -> bool [H,W]: the largest 4-connected component."""
    H, W = on.shape
    lab = np.zeros((H, W), dtype=np.int32)
    best, best_n, n = 0, 0, 0
    for y0 in range(H):
        for x0 in range(W):
            if not on[y0, x0] or lab[y0, x0]:
                continue
            n += 1
            stack, count = [(y0, x0)], 0
            lab[y0, x0] = n
            while stack:
                y, x = stack.pop()
                count += 1
                for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= yy < H and 0 <= xx < W and on[yy, xx] and not lab[yy, xx]:
                        lab[yy, xx] = n
                        stack.append((yy, xx))
            if count > best_n:
                best, best_n = n, count
    return lab == best if best else np.zeros_like(on)


def hull_area(points):
    """Convex hull area (Andrew's monotone chain, shoelace)."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return 0.0
    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    h = lower[:-1] + upper[:-1]
    return 0.5 * abs(sum(h[i][0] * h[(i + 1) % len(h)][1] - h[(i + 1) % len(h)][0] * h[i][1]
                         for i in range(len(h))))


def solidity(img, colour):
    """uint8 [64,64,3] -> (blob area, solidity) of the requested colour's largest blob."""
    lab, names = palette_labels(img)
    blob = largest_blob(lab == names.index(colour))
    ys, xs = np.nonzero(blob)
    if len(xs) == 0:
        return 0, 1.0
    corners = [(x + dx, y + dy) for x, y in zip(xs, ys) for dx in (0, 1) for dy in (0, 1)]
    return int(len(xs)), float(len(xs) / hull_area(corners))


def elongation(img, colour):
    """uint8 [64,64,3] -> (blob area, e, var_x > var_y) of the requested colour's largest blob."""
    lab, names = palette_labels(img)
    ys, xs = np.nonzero(largest_blob(lab == names.index(colour)))
    if len(xs) < 2:
        return int(len(xs)), 1.0, False
    vx, vy = xs.var(), ys.var()
    cxy = ((xs - xs.mean()) * (ys - ys.mean())).mean()
    half, root = (vx + vy) / 2, np.sqrt(((vx - vy) / 2) ** 2 + cxy ** 2)
    l1, l2 = half + root, max(half - root, 1e-9)
    return int(len(xs)), float(np.sqrt(l1 / l2)), bool(vx > vy)


def is_bar(img, colour):
    n, e, horizontal = elongation(img, colour)
    return n >= 12 and e >= BAR_ELONGATION and horizontal


def calibrate(model):
    import torch
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(os.path.join(model, "vae"), torch_dtype=torch.float32)
    rows = []
    shapes = list(dataset.SHAPES) + list(dataset.NEW_SHAPES)
    for shape in shapes:
        for size in dataset.SIZES:
            for colour in dataset.COLOURS:
                sc = dict(bg="white", say_bg=False, place="center", relation=None,
                          objects=[dict(colour=colour, shape=shape, size=size, x=32, y=32)])
                rows.append((shape, size, colour, dataset.render(sc)))
    imgs = np.stack([r[3] for r in rows])
    with torch.no_grad():
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    rt = (np.clip(y.permute(0, 2, 3, 1).numpy() / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)
    print("min..max over the 6 colours, centred, white background")
    print(f"{'shape':9s} {'size':7s} {'elongation drawn':>17s} {'VAE round trip':>15s}"
          f" {'solidity drawn':>15s} {'VAE round trip':>15s}")
    for shape in shapes:
        for size in dataset.SIZES:
            k = [i for i, r in enumerate(rows) if r[0] == shape and r[1] == size]
            v = [[f(im[i], rows[i][2])[1] for i in k] for f in (elongation, solidity) for im in (imgs, rt)]
            print(f"{shape:9s} {size:7s}" + "".join(f"   {min(x):5.2f}..{max(x):5.2f}" for x in v))


def _row(paths, side=64, pad=2):
    from PIL import Image
    row = Image.new("RGB", (len(paths) * (side + pad) + pad, side + 2 * pad), (200, 200, 200))
    for i, q in enumerate(paths):
        row.paste(Image.open(q).convert("RGB"), (pad + i * (side + pad), pad))
    return row


def figures(demo="outputs/demo", out="docs/figures"):
    """Two small PNGs (2x, nearest) for docs/10 from `make demo`'s samples."""
    from PIL import Image
    def samples(d):
        f = os.path.join(demo, d, "samples")
        return [os.path.join(f, n) for n in sorted(os.listdir(f)) if n.endswith(".png")]
    def stack(rows, path):
        w = max(r.width for r in rows)
        img = Image.new("RGB", (w, sum(r.height for r in rows)), (200, 200, 200))
        y = 0
        for r in rows:
            img.paste(r, (0, y)); y += r.height
        img.resize((2 * img.width, 2 * img.height), Image.NEAREST).save(path, optimize=True)
        print(f"wrote {path}")
    stack([_row(samples("lora-off")), _row(samples("lora-on"))], os.path.join(out, "tiny-lora.png"))
    stack([_row([os.path.join(FIXTURES, "inpaint_0_init.png"), os.path.join(FIXTURES, "inpaint_0_mask.png")]
                + samples("inpaint"))], os.path.join(out, "tiny-inpaint.png"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", action="store_true", help="write " + FIXTURES + "/extras.tsv and PNGs")
    ap.add_argument("--calibrate", action="store_true", help="solidity of the dataset's shapes")
    ap.add_argument("--figures", action="store_true", help="docs PNGs from make demo's outputs")
    ap.add_argument("--model", default="tools/tiny-model")
    a = ap.parse_args()
    if a.fixtures:
        write_fixtures()
    if a.calibrate:
        calibrate(a.model)
    if a.figures:
        figures()


if __name__ == "__main__":
    main()
