"""Fixtures for ldm/train/shapes.c: the procedural shapes dataset of
tools/train/dataset.py (scenes, English / Japanese captions, images).

References: dataset.make_scene / make_new_shape_scene (numpy's
default_rng([seed, index]) = SeedSequence + PCG64 and its Generator),
caption_en / caption_ja, and render (Pillow's ImageDraw at 4x, then
Image.resize(BOX)); numpy's generator primitives directly.

Writes tests/fixtures/train/shapes/:
  cases.txt (UTF-8), one line each:
    np <seed words...> ; <call> <result> ...   numpy.random.default_rng(words):
        raw <u64>   bit_generator.random_raw()
        random <float64 bits, hex>
        integers <low> <high> <value>
    scene <base|bar|star> <seed> <index> <description> <crc32 of the image>
        <English caption> <Japanese caption>        (tab-separated fields)
        description: bg|say_bg|objects|place|relation|colour,shape,size,x,y|...
        crc32: zlib.crc32 of the 64x64x3 uint8 image (HWC)
  <kind>_s<seed>_<index>.png   the full image of 20 of those scenes
"""
import os
import sys
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
import dataset  # noqa: E402

OUT = "tests/fixtures/train/shapes"
os.makedirs(OUT, exist_ok=True)
lines = []

# numpy's generator: raw PCG64 words, then the calls dataset.py makes, mixed
# with the paths it does not reach (64-bit ranges, the full 32-bit range,
# a range of one value: no draw)
for words in [[0, 0], [0, 5], [1234, 77], [2**32 + 5, 3], [7, 11, 1], [2**63 + 9]]:
    g = np.random.default_rng(words)
    calls = [f"raw {int(v)}" for v in g.bit_generator.random_raw(3)]
    for lo, hi in [(0, 5), (-3, 4), (0, 6), (0, 2**33 + 1), (0, 2**32), (5, 6), (-2**40, 2**40),
                   (0, 3), (0, 1000)]:
        calls.append(f"integers {lo} {hi} {int(g.integers(lo, hi))}")
        calls.append(f"random {np.float64(g.random()).view(np.uint64):016x}")
    lines.append("np " + " ".join(map(str, words)) + " ; " + " ; ".join(calls))


def describe(s):
    return (f"{s['bg']}|{int(s['say_bg'])}|{len(s['objects'])}|{s['place']}|{s['relation']}"
            + "".join(f"|{o['colour']},{o['shape']},{o['size']},{o['x']},{o['y']}"
                      for o in s["objects"]))


def scene_line(kind, seed, i, keep_png):
    s = (dataset.make_scene(seed, i) if kind == "base"
         else dataset.make_new_shape_scene(seed, i, kind))
    img = dataset.render(s)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    crc = zlib.crc32(np.ascontiguousarray(img).tobytes())
    lines.append(f"scene\t{kind}\t{seed}\t{i}\t{describe(s)}\t{crc:08x}\t"
                 f"{dataset.caption_en(s)}\t{dataset.caption_ja(s)}")
    if keep_png:
        Image.fromarray(img).save(os.path.join(OUT, f"{kind}_s{seed}_{i}.png"))


for seed in [0, 2**32 + 5]:
    for i in range(200):
        scene_line("base", seed, i, seed == 0 and i < 14)
for kind in ["bar", "star"]:
    for i in range(30):
        scene_line(kind, 3, i, i < 3)

with open(os.path.join(OUT, "cases.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
