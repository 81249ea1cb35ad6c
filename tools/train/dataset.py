"""
tools/train/dataset.py -- the procedural "shapes" dataset of the tiny model.

Deterministic scenes of flat-coloured shapes on a plain background, each with
an English and a Japanese caption describing exactly what was drawn. Scene i
of seed s is a pure function of (s, i): the same numbers on every machine, no
downloaded data. Used by tools/train/train_tiny.py and by the semantic tests.

Scene contents (all choices uniform unless noted):
  image       64x64 RGB, drawn at 4x and box-filtered down (anti-aliased edges)
  background  white (60%), black (20%), gray (20%)
  objects     1 (60%) or 2 (40%)
  colour      red green blue yellow purple orange
  shape       circle square triangle
              (bar, star: NEW_SHAPES, only in make_new_shape_scene)
  size        small (r=7) | medium (r=10) | big (r=14) px "radius"
              (two-object scenes: small or medium only)
  position    one object: left | right | top | bottom | center
              (+-3 px jitter around x or y = 16 / 48, the other axis 32)
              two objects A,B: A above | below | to the left of | to the right
              of B, at 18 / 46 px along that axis (+-3 px), same other axis;
              A and B differ in colour or shape.

Caption grammar (English, EBNF; medium size is never said):
  caption   = scene [ ", on a " bgname " background" ] ;
  scene     = object " " place | object " " relation " " object ;
  object    = article [ size " " ] colour " " shape ;
  article   = "a " | "an " ;        (* "an" before a vowel: "an orange circle" *)
  size      = "small" | "big" ;
  colour    = "red" | "green" | "blue" | "yellow" | "purple" | "orange" ;
  shape     = "circle" | "square" | "triangle" ;
  place     = "on the left" | "on the right" | "at the top" | "at the bottom"
            | "in the center" ;
  relation  = "above" | "below" | "to the left of" | "to the right of" ;
  bgname    = "white" | "black" | "gray" ;
Japanese (the same scene; the place/relation comes first, as in "左に赤い丸"):
  caption   = scene [ "、背景は" bgname ] ;
  scene     = place "に" object | object "の" relation "に" object ;
              (second form: "<B>の<rel>に<A>" = "A <rel> B")
  object    = [ size ] colour shape ;
  size      = "小さい" | "大きい" ;
  colour    = "赤い" | "緑の" | "青い" | "黄色い" | "紫の" | "オレンジの" ;
  shape     = "丸" | "四角" | "三角" ;
  place     = "左" | "右" | "上" | "下" | "真ん中" ;
  relation  = "上" | "下" | "左" | "右" ;
  bgname    = "白" | "黒" | "灰色" ;
The background is named always when black or gray, and in 30% of white
scenes, so a prompt that does not name one asks for a white background.

Run as a script to write a contact sheet: python tools/train/dataset.py out.png
"""
import math
import sys

import numpy as np

SIZE = 64          # image side (pixels)
SS = 4             # supersampling factor for anti-aliasing

COLOURS = {  # name: (RGB, Japanese)
    "red": ((220, 40, 40), "赤い"),
    "green": ((40, 170, 60), "緑の"),
    "blue": ((40, 80, 220), "青い"),
    "yellow": ((240, 210, 40), "黄色い"),
    "purple": ((150, 60, 190), "紫の"),
    "orange": ((245, 140, 30), "オレンジの"),
}
SHAPES = {"circle": "丸", "square": "四角", "triangle": "三角"}
# Shapes the tiny model never saw: only the LoRA's training set draws them
# (make_new_shape_scene; tools/train/train_lora.py). Kept out of SHAPES so the
# base dataset stays what it was for every seed. The bar is what the LoRA
# teaches; the star is kept as the shape the tiny autoencoder cannot draw (its
# 8x8 latent, trained on convex shapes, fills the points in: see
# tools/train/evaluate_extras.py --calibrate).
NEW_SHAPES = {"bar": "棒", "star": "星"}
BAR_HALF = (1.4, 0.4)  # half length, half thickness of the horizontal bar (x r)
STAR_INNER = 0.45  # inner / outer radius of the five-pointed star
SIZES = {"small": (7, "小さい"), "medium": (10, ""), "big": (14, "大きい")}
BACKGROUNDS = {  # name: (RGB, Japanese, probability)
    "white": ((255, 255, 255), "白", 0.6),
    "black": ((0, 0, 0), "黒", 0.2),
    "gray": ((128, 128, 128), "灰色", 0.2),
}
# single-object places: name -> (centre x, centre y, English, Japanese)
PLACES = {
    "left": (16, 32, "on the left", "左"),
    "right": (48, 32, "on the right", "右"),
    "top": (32, 16, "at the top", "上"),
    "bottom": (32, 48, "at the bottom", "下"),
    "center": (32, 32, "in the center", "真ん中"),
}
# relations "A rel B": name -> (A offset direction (dx, dy), English, Japanese)
RELATIONS = {
    "above": ((0, -1), "above", "上"),
    "below": ((0, 1), "below", "下"),
    "left of": ((-1, 0), "to the left of", "左"),
    "right of": ((1, 0), "to the right of", "右"),
}
JITTER = 3


def _pick(rng, names):
    return names[int(rng.integers(len(names)))]


def make_scene(seed, index):
    """Scene `index` of dataset `seed`: a dict of plain values (JSON-able)."""
    rng = np.random.default_rng([seed, index])
    bgs = list(BACKGROUNDS)
    bg = bgs[int(rng.choice(len(bgs), p=[BACKGROUNDS[b][2] for b in bgs]))]
    say_bg = bg != "white" or rng.random() < 0.3
    two = rng.random() < 0.4
    objs = []
    if not two:
        place = _pick(rng, list(PLACES))
        x, y = PLACES[place][:2]
        x += int(rng.integers(-JITTER, JITTER + 1))
        y += int(rng.integers(-JITTER, JITTER + 1))
        objs.append(dict(colour=_pick(rng, list(COLOURS)), shape=_pick(rng, list(SHAPES)),
                         size=_pick(rng, list(SIZES)), x=x, y=y))
        return dict(bg=bg, say_bg=bool(say_bg), place=place, relation=None, objects=objs)
    rel = _pick(rng, list(RELATIONS))
    (dx, dy) = RELATIONS[rel][0]
    c = 32 + int(rng.integers(-JITTER, JITTER + 1))          # shared coordinate
    a = 18 + int(rng.integers(-JITTER, JITTER + 1))          # first along the axis
    b = 46 + int(rng.integers(-JITTER, JITTER + 1))
    first, second = (a, b) if (dx + dy) < 0 else (b, a)      # A comes first if "above"/"left of"
    while True:
        oa = dict(colour=_pick(rng, list(COLOURS)), shape=_pick(rng, list(SHAPES)),
                  size=_pick(rng, ["small", "medium"]))
        ob = dict(colour=_pick(rng, list(COLOURS)), shape=_pick(rng, list(SHAPES)),
                  size=_pick(rng, ["small", "medium"]))
        if oa["colour"] != ob["colour"] or oa["shape"] != ob["shape"]:
            break
    if dx != 0:
        oa.update(x=first, y=c)
        ob.update(x=second, y=c)
    else:
        oa.update(x=c, y=first)
        ob.update(x=c, y=second)
    return dict(bg=bg, say_bg=bool(say_bg), place=None, relation=rel, objects=[oa, ob])


def make_new_shape_scene(seed, index, shape="bar"):
    """Scene `index` of the new-shape set `seed`: one `shape` (a NEW_SHAPES
    name), with colour, size, place and background drawn as a one-object
    scene of make_scene. Its own generator stream ([seed, index, 1]), so it
    never repeats a base scene."""
    rng = np.random.default_rng([seed, index, 1])
    bgs = list(BACKGROUNDS)
    bg = bgs[int(rng.choice(len(bgs), p=[BACKGROUNDS[b][2] for b in bgs]))]
    say_bg = bg != "white" or rng.random() < 0.3
    place = _pick(rng, list(PLACES))
    x, y = PLACES[place][:2]
    x += int(rng.integers(-JITTER, JITTER + 1))
    y += int(rng.integers(-JITTER, JITTER + 1))
    obj = dict(colour=_pick(rng, list(COLOURS)), shape=shape, size=_pick(rng, list(SIZES)), x=x, y=y)
    return dict(bg=bg, say_bg=bool(say_bg), place=place, relation=None, objects=[obj])


def _object_en(o):
    words = ([] if o["size"] == "medium" else [o["size"]]) + [o["colour"], o["shape"]]
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def _object_ja(o):
    return SIZES[o["size"]][1] + COLOURS[o["colour"]][1] + {**SHAPES, **NEW_SHAPES}[o["shape"]]


def caption_en(s):
    if s["relation"] is None:
        text = f"{_object_en(s['objects'][0])} {PLACES[s['place']][2]}"
    else:
        a, b = s["objects"]
        text = f"{_object_en(a)} {RELATIONS[s['relation']][1]} {_object_en(b)}"
    if s["say_bg"]:
        text += f", on a {s['bg']} background"
    return text


def caption_ja(s):
    if s["relation"] is None:
        text = f"{PLACES[s['place']][3]}に{_object_ja(s['objects'][0])}"
    else:
        a, b = s["objects"]
        text = f"{_object_ja(b)}の{RELATIONS[s['relation']][2]}に{_object_ja(a)}"
    if s["say_bg"]:
        text += f"、背景は{BACKGROUNDS[s['bg']][1]}"
    return text


def _draw_object(draw, o):
    r = SIZES[o["size"]][0] * SS
    cx, cy = o["x"] * SS, o["y"] * SS
    col = COLOURS[o["colour"]][0]
    if o["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    elif o["shape"] == "square":
        h = int(round(0.9 * r))
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=col)
    elif o["shape"] == "triangle":  # upward triangle, centroid at (cx, cy)
        draw.polygon([(cx, cy - 1.15 * r), (cx - 1.15 * r, cy + 0.85 * r),
                      (cx + 1.15 * r, cy + 0.85 * r)], fill=col)
    elif o["shape"] == "bar":  # horizontal bar, 3.5 : 1
        hx, hy = BAR_HALF[0] * r, BAR_HALF[1] * r
        draw.rectangle([cx - hx, cy - hy, cx + hx, cy + hy], fill=col)
    else:  # star: five points, one up, outer radius 1.25 r (as tall as the triangle)
        outer = 1.25 * r
        pts = []
        for k in range(10):
            rad = outer if k % 2 == 0 else STAR_INNER * outer
            ang = math.pi * k / 5
            pts.append((cx + rad * math.sin(ang), cy - rad * math.cos(ang)))
        draw.polygon(pts, fill=col)


def render(s):
    """Scene -> uint8 array [SIZE, SIZE, 3]."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (SIZE * SS, SIZE * SS), BACKGROUNDS[s["bg"]][0])
    draw = ImageDraw.Draw(img)
    for o in s["objects"]:
        _draw_object(draw, o)
    return np.asarray(img.resize((SIZE, SIZE), Image.BOX), dtype=np.uint8)


def make_dataset(seed, n, new_shape=None):
    """n scenes: images uint8 [n,64,64,3], English and Japanese caption lists,
    scenes. new_shape ("bar"): the scenes of make_new_shape_scene instead."""
    scenes = [make_scene(seed, i) if new_shape is None else make_new_shape_scene(seed, i, new_shape)
              for i in range(n)]
    images = np.stack([render(s) for s in scenes])
    return images, [caption_en(s) for s in scenes], [caption_ja(s) for s in scenes], scenes


def contact_sheet(path, seed=0, n=24, cols=6):
    from PIL import Image, ImageDraw
    images, en, ja, _ = make_dataset(seed, n)
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * 2 * SIZE, rows * 2 * SIZE), (255, 255, 255))
    for i in range(n):
        im = Image.fromarray(images[i]).resize((2 * SIZE, 2 * SIZE), Image.NEAREST)
        sheet.paste(im, ((i % cols) * 2 * SIZE, (i // cols) * 2 * SIZE))
    sheet.save(path)
    for i in range(n):
        print(f"{i:2d}  {en[i]}  |  {ja[i]}")


if __name__ == "__main__":
    contact_sheet(sys.argv[1] if len(sys.argv) > 1 else "dataset.png")
