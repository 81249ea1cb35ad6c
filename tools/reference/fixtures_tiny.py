"""Fixture for tests/test_tiny_model.c: the prompt grid of the semantic test.

Writes tests/fixtures/tiny/grid.tsv from tools/train/dataset.py (the same
caption grammar and palette the tiny model was trained on; no torch needed):
  palette<TAB>name<TAB>R<TAB>G<TAB>B<TAB>background(0|1)
  prompt<TAB>colour<TAB>shape<TAB>place<TAB>lang<TAB>caption
for every colour x shape x place, in English and Japanese. The pixel-statistics
judge in the C test is the one documented in tools/train/evaluate.py.
"""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, os.path.join(root, "tools", "train"))
import dataset  # noqa: E402

out_dir = os.path.join(root, "tests", "fixtures", "tiny")
os.makedirs(out_dir, exist_ok=True)
lines = []
for name, (rgb, _ja, _p) in dataset.BACKGROUNDS.items():
    lines.append(f"palette\t{name}\t{rgb[0]}\t{rgb[1]}\t{rgb[2]}\t1")
for name, (rgb, _ja) in dataset.COLOURS.items():
    lines.append(f"palette\t{name}\t{rgb[0]}\t{rgb[1]}\t{rgb[2]}\t0")
for c in dataset.COLOURS:
    for s in dataset.SHAPES:
        for p in dataset.PLACES:
            sc = dict(bg="white", say_bg=False, place=p, relation=None,
                      objects=[dict(colour=c, shape=s, size="medium", x=0, y=0)])
            lines.append(f"prompt\t{c}\t{s}\t{p}\ten\t{dataset.caption_en(sc)}")
            lines.append(f"prompt\t{c}\t{s}\t{p}\tja\t{dataset.caption_ja(sc)}")
with open(os.path.join(out_dir, "grid.tsv"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
print("wrote tests/fixtures/tiny/grid.tsv:", len(lines), "lines")
