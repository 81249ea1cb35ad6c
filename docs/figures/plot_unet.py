"""Draw the UNet and transformer-block figures of docs/05-unet.md.

Run by `make figures-unet` (light venv build/venv-nb) on the two tables
docs/figures/unet_shapes.c wrote from the library (ldm_unet_build's block
table walked with its skip stack; the tiny model's walk checked against a
real forward pass):
  unet-sd1.png, unet-tiny.png   the UNet as a U: the down path on the left
      (top to bottom, the order it runs), the middle block at the bottom, the
      up path on the right (bottom to top); every row with its output shape
      [C, H, W] at batch 1; a line for every skip, from the row that pushes it
      to the up-path ResBlock that pops it and concatenates it (they nest:
      the stack is last in, first out).
  transformer-block.png   one BasicTransformerBlock inside its
      SpatialTransformer at SD1's first attention row (512x512, level 0),
      the tiny model's shapes in brackets.
Usage: plot_unet.py BLOCKS.tsv TBLOCK.tsv OUTDIR
"""
import csv
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

blocks = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
tblock = list(csv.DictReader(open(sys.argv[2]), delimiter="\t"))
outdir = sys.argv[3]

KIND_COLOR = {"conv_in": "#d9d9d9", "res": "#cfe2f3", "attn": "#fde9c9", "down": "#d9ead3",
              "up": "#d9ead3", "out": "#d9d9d9"}
LEVEL_COLOR = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]


def short(name):
    return (name.replace("down_blocks.", "down.").replace("up_blocks.", "up.")
            .replace("resnets.", "res").replace("attentions.", "attn")
            .replace("downsamplers.0", "downsample").replace("upsamplers.0", "upsample")
            .replace("mid_block.", "mid."))


def box(ax, x, y, w, h, r, fontsize):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02",
                                fc=KIND_COLOR[r["kind"]], ec="#555555", lw=0.6))
    what = f"{short(r['name'])}"
    if r["kind"] == "attn":
        what += f"  ({r['heads']} heads x {r['hs']})"
    if int(r["pop"]):
        what += f"  cat +{r['pop']} -> {r['cin']} in"
    shape = f"{r['cout']} x {r['H']} x {r['W']}"
    ax.text(x - w / 2 + 0.08, y, what, va="center", ha="left", fontsize=fontsize)
    ax.text(x + w / 2 - 0.08, y, shape, va="center", ha="right", fontsize=fontsize,
            family="monospace", fontweight="bold")


def draw_unet(model, title, path, fontsize, inch_per_row):
    rows = [r for r in blocks if r["model"] == model]
    down = [r for r in rows if r["name"] == "conv_in" or r["name"].startswith("down_blocks")]
    mid = [r for r in rows if r["name"].startswith("mid_block")]
    up = [r for r in rows if r["name"].startswith("up_blocks") or r["name"] == "conv_out"]
    nlev = max(int(r["level"]) for r in rows) + 1
    W, indent, XR = 6.2, 0.55, 13.0   # box width, indent per level, right column centre
    pos = {}
    for i, r in enumerate(down):
        pos[r["row"]] = (int(r["level"]) * indent, -i)
    bottom = -(len(down) - 1)
    step = max((len(down) - 1) / max(len(up) - 1, 1), 0.75)
    for j, r in enumerate(up):
        pos[r["row"]] = (XR - int(r["level"]) * indent, bottom + j * step)
    ymid = bottom - 1.6
    for k, r in enumerate(mid):
        pos[r["row"]] = ((XR / 2) + (k - (len(mid) - 1) / 2) * 0.0, ymid - k * 0.9)

    nrows = max(len(down), (len(up) - 1) * step + 1) + len(mid) * 0.9 + 2.5
    fig, ax = plt.subplots(figsize=(11.5, max(4.5, nrows * inch_per_row)))
    # data flow: consecutive rows
    order = down + mid + up
    for a, b in zip(order, order[1:]):
        (xa, ya), (xb, yb) = pos[a["row"]], pos[b["row"]]
        ax.annotate("", xy=(xb, yb), xytext=(xa, ya),
                    arrowprops=dict(arrowstyle="-|>", color="#999999", lw=0.7,
                                    shrinkA=6, shrinkB=6), zorder=0)
    # skips: push row -> pop row with the same skip id
    push = {r["skip_id"]: r for r in down if int(r["push"])}
    for r in up:
        if not int(r["pop"]):
            continue
        p = push[r["skip_id"]]
        (xa, ya), (xb, yb) = pos[p["row"]], pos[r["row"]]
        c = LEVEL_COLOR[int(r["level"]) % len(LEVEL_COLOR)]
        ax.annotate("", xy=(xb - W / 2, yb), xytext=(xa + W / 2, ya),
                    arrowprops=dict(arrowstyle="-|>", color=c, lw=1.0, shrinkA=1, shrinkB=1))
        ax.text((xa + xb) / 2, (ya + yb) / 2 + 0.12, f"skip {p['skip_id']}: {p['cout']} x {p['H']} x {p['W']}",
                ha="center", va="bottom", fontsize=fontsize - 1, color=c)
    for r in rows:
        x, y = pos[r["row"]]
        box(ax, x, y, W, 0.55, r, fontsize)
    top = max(y for _, y in pos.values())
    ax.text(-W / 2, top + 1.0, title, fontsize=fontsize + 3, ha="left", va="bottom")
    ax.text(-W / 2, top + 0.6,
            "down path (push skips) top to bottom  |  middle  |  up path (pop skips) bottom to top;"
            "  shapes: channels x height x width of each row's output, batch 1",
            fontsize=fontsize, ha="left", va="bottom", color="#444444")
    legend = [("ResBlock", "res"), ("SpatialTransformer", "attn"), ("down/upsample", "down"),
              ("conv_in / conv_out", "out")]
    for k, (lab, kind) in enumerate(legend):
        x, y = -W / 2, ymid - 0.55 * k
        ax.add_patch(FancyBboxPatch((x, y - 0.2), 0.3, 0.4, boxstyle="round,pad=0.02",
                                    fc=KIND_COLOR[kind], ec="#555555", lw=0.6))
        ax.text(x + 0.45, y, lab, fontsize=fontsize, va="center")
    ax.set_xlim(-W / 2 - 0.3, XR + W / 2 + 0.3)
    ax.set_ylim(min(ymid - (len(mid) - 1) * 0.9, ymid - 0.55 * (len(legend) - 1)) - 0.8, top + 1.6)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=88)
    plt.close(fig)
    print(f"wrote {path} ({len(rows)} rows, {nlev} levels)")


def shapes(model):
    return {(r["step"], r["tensor"]): r["shape"].replace(",", " x ")
            for r in tblock if r["model"] == model}


def draw_tblock(path):
    s, t = shapes("sd1"), shapes("tiny")
    blk = next(r["block"] for r in tblock if r["model"] == "sd1")

    def sh(step, tensor):
        return f"{s[(step, tensor)]}  [{t[(step, tensor)]}]"

    fig, ax = plt.subplots(figsize=(11, 10.5))
    X0, X1 = 3.2, 8.6   # main column, context column
    items = []          # (x, y, text, shape, color)

    def node(x, y, text, shape, color="#cfe2f3", w=4.6):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - 0.32), w, 0.64, boxstyle="round,pad=0.03",
                                    fc=color, ec="#555555", lw=0.6))
        ax.text(x, y + 0.1, text, ha="center", va="center", fontsize=8.5)
        ax.text(x, y - 0.16, shape, ha="center", va="center", fontsize=8, family="monospace")
        items.append((x, y))

    H = 0.32   # half a box's height

    def down(y0, y1, x=X0):   # from the box at y0 down to the box at y1
        ax.annotate("", xy=(x, y1 + H), xytext=(x, y0 - H),
                    arrowprops=dict(arrowstyle="-|>", color="#777777", lw=0.9, shrinkA=0, shrinkB=0))

    def residual(y0, y1):     # x += f(x): from above the box at y0 to below the box at y1
        xl = X0 - 2.6
        ax.plot([X0, xl, xl], [y0 + H + 0.25, y0 + H + 0.25, y1 - H - 0.2], color="#999999", lw=0.9)
        ax.annotate("", xy=(X0 - 0.12, y1 - H - 0.2), xytext=(xl, y1 - H - 0.2),
                    arrowprops=dict(arrowstyle="-|>", color="#999999", lw=0.9, shrinkA=0, shrinkB=0))
        ax.text(X0, y1 - H - 0.2, "+", ha="center", va="center", fontsize=11, color="#555555")
        ax.text(xl - 0.08, (y0 + y1) / 2, "+ residual", rotation=90, va="center", ha="right",
                fontsize=8, color="#777777")

    y = 0
    node(X0, y, "x: input of the SpatialTransformer", sh("input", "x"), "#eeeeee")
    node(X0, y - 1, "GroupNorm, proj_in (1x1 conv), flatten: tokens", sh("proj_in", "tokens"))
    down(y, y - 1)
    # self-attention
    y = -2.3
    node(X0, y, "LayerNorm 1 -> Q, K, V = x Wq, x Wk, x Wv", sh("attn1", "Q") + " each", "#fde9c9")
    node(X0, y - 1, "per head: softmax(Q K^T / sqrt(hs)) V", "scores " + sh("attn1", "scores"), "#fde9c9")
    node(X0, y - 2, "self-attention out (heads joined, to_out)", sh("attn1", "out"), "#fde9c9")
    down(-1, y), down(y, y - 1), down(y - 1, y - 2)
    residual(y, y - 2)
    # cross-attention
    y = -5.6
    node(X0, y, "LayerNorm 2 -> Q = x Wq  (image tokens)", sh("attn2", "Q"), "#f4cccc")
    node(X1, y, "K = c Wk, V = c Wv  (text tokens)", sh("attn2", "K") + " each", "#f4cccc")
    node(X1, y + 2.0, "context c = CLIP(prompt)", sh("context", "context"), "#eeeeee")
    down(y + 2.0, y, X1)
    node(X0, y - 1, "per head: softmax(Q K^T / sqrt(hs)) V", "scores " + sh("attn2", "scores"), "#f4cccc")
    node(X0, y - 2, "cross-attention out (to_out)", sh("attn2", "out"), "#f4cccc")
    down(-4.3, y), down(y, y - 1), down(y - 1, y - 2)
    ax.annotate("", xy=(X0 + 2.3, y - 1), xytext=(X1, y - H),
                arrowprops=dict(arrowstyle="-|>", color="#777777", lw=0.9, shrinkA=0, shrinkB=0))
    residual(y, y - 2)
    # feed-forward
    y = -8.9
    node(X0, y, "LayerNorm 3 -> ff.net.0.proj: [a | gate]", sh("ff", "proj"), "#d9ead3")
    node(X0, y - 1, "GEGLU: a * GELU(gate)", sh("ff", "geglu"), "#d9ead3")
    node(X0, y - 2, "ff.net.2", sh("ff", "out"), "#d9ead3")
    down(-7.6, y), down(y, y - 1), down(y - 1, y - 2)
    residual(y, y - 2)
    node(X0, -12.2, "unflatten, proj_out (1x1 conv), + x", sh("proj_out", "x + proj_out"), "#eeeeee")
    down(-10.9, -12.2)
    # notes on the right
    notes = [
        f"SD1, {blk} (level 0), 512 x 512 pixels = 64 x 64 latent",
        "[in brackets: the tiny model, same row, 64 x 64 pixels]",
        "",
        "tokens: one per latent pixel (S = H x W), width D",
        "Q, K, V split into heads: D = heads x hs",
        "self-attention: every pixel attends to every pixel (S x S)",
        "cross-attention: Q from the image tokens, K and V from",
        "  the 77 text tokens (S x 77): where the prompt enters",
        "GEGLU: the projection gives 2F = 8D columns, half gate",
        "batch 1 shown; classifier-free guidance runs batch 2",
    ]
    for k, line in enumerate(notes):
        ax.text(X1 - 2.4, -8.0 - 0.38 * k, line, fontsize=8.5, va="top")
    ax.text(0.6, 1.0, "Inside one transformer block (BasicTransformerBlock), with the shapes of every tensor",
            fontsize=11, ha="left")
    ax.set_xlim(0.2, 11.3)
    ax.set_ylim(-12.8, 1.5)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=88)
    plt.close(fig)
    print(f"wrote {path}")


draw_unet("sd1", "SD1 UNet at 512 x 512 (latent 4 x 64 x 64): the block table and its skip stack",
          os.path.join(outdir, "unet-sd1.png"), 7.5, 0.36)
draw_unet("tiny", "The tiny model's UNet at 64 x 64 (latent 4 x 8 x 8)",
          os.path.join(outdir, "unet-tiny.png"), 8, 0.36)
draw_tblock(os.path.join(outdir, "transformer-block.png"))
