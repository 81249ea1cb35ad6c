"""Fixtures for strided tensors in a torch.save checkpoint (tests/fixtures/ckpt/).

torch.save keeps a view as a view: a state dict holding a transpose, a slice
with a step or an expand writes the shared storage once and, per tensor, its
storage offset, shape and strides. torch.load gives each tensor with those
values; ldm/io/ckpt.c must too (it gathers a contiguous copy).

Writes:
  views.ckpt                    torch.save of a dict of views of shared storages
                                (fp32 and fp16: transpose, row slice, column,
                                step slice, expand, a 0-d element, a permuted 3-d)
  views_expected.safetensors    every tensor of views.ckpt as torch.load gives
                                it, made contiguous (names equal), plus
                                "bad_noncontiguous.w": torch.load of
                                bad/noncontiguous.ckpt (written by fixtures_ckpt.py)
  bad/strided_past_storage.ckpt a [2,2] view with strides (1,3) over 4 elements:
                                its last element lies past the storage

Run with the reference venv: .venv-ref/bin/python tools/reference/fixtures_ckpt_views.py
"""
import os
import struct
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from fixtures_ckpt import tensor_pickle, zip_bytes  # noqa: E402

OUT = "tests/fixtures/ckpt"


def main():
    g = torch.Generator().manual_seed(11)
    base = torch.randn(4, 6, generator=g)
    cube = torch.randn(2, 3, 5, generator=g)
    half = torch.randn(3, 4, generator=g).half()
    views = {
        "transpose": base.t(),
        "rows": base[1:3],
        "column": base[:, 4],
        "step": base[:, ::2],
        "step_rows": base[::3, 1:5:2],
        "expand": base[2:3, :].expand(3, 6),
        "element": base[3, 5],
        "permute": cube.permute(2, 0, 1),
        "contiguous": base,
        "half_transpose": half.t(),
        "half_step": half[:, 1::2],
    }
    path = f"{OUT}/views.ckpt"
    torch.save(views, path)
    loaded = torch.load(path, weights_only=True)
    assert not loaded["transpose"].is_contiguous() and loaded["transpose"].untyped_storage().size() == 24 * 4
    expected = {k: v.contiguous().clone() for k, v in loaded.items()}
    bad = torch.load(f"{OUT}/bad/noncontiguous.ckpt", weights_only=True)
    expected["bad_noncontiguous.w"] = bad["w"].contiguous().clone()
    save_file(expected, f"{OUT}/views_expected.safetensors")

    data4 = struct.pack("<4f", 1, 2, 3, 4)
    files = [("archive/data.pkl", tensor_pickle(shape=(2, 2), stride=(1, 3))),
             ("archive/byteorder", b"little"), ("archive/data/0", data4), ("archive/version", b"3\n")]
    with open(f"{OUT}/bad/strided_past_storage.ckpt", "wb") as f:
        f.write(zip_bytes(files))
    print(f"fixtures_ckpt_views: {len(views)} views, "
          f"{os.path.getsize(path) + os.path.getsize(f'{OUT}/views_expected.safetensors')} bytes")


if __name__ == "__main__":
    main()
