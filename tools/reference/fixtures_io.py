"""Fixtures for the file-format readers: safetensors, .npy and PNG.

Writes tests/fixtures/io/:
  st_f32.safetensors, st_f16.safetensors, st_bf16.safetensors, st_ints.safetensors
      written by the `safetensors` package (torch API), with __metadata__;
      values include +-0, +-inf, NaN, half/bfloat16 subnormals and extremes.
  st_<file>__<tensor>.npy   the same tensors as float32, converted by torch
      (tensor.float()): the independent reference for our F16/BF16 widening.
  np_f32.npy, np_f64.npy, np_f16.npy, np_scalar.npy   written by numpy (np.save)
  np_expected.npy           float32 values of all three (np_f16 converted by numpy)
  png_*.png                 written by Pillow (and by a minimal encoder below for
                            16-bit RGB/RGBA and 2-bit gray, which Pillow cannot write)
  png_*.rgb.npy             the expected 8-bit RGB as float32 [H,W,3], computed
                            from the source arrays (alpha dropped, 16-bit >> 8,
                            gray replicated, palette looked up, low depths scaled)
  expected.json             per safetensors file: tensor names/dtypes/shapes and
                            metadata; per PNG: expected text chunks
  bad/                      hand-made bad files; bad/MANIFEST.tsv lists
                            kind, file and a substring the error must contain
Also copies a few small valid and bad files to tests/fuzz/seeds/fuzz_safetensors/.
Deterministic (fixed seed). Run: .venv-ref/bin/python tools/reference/fixtures_io.py
"""
import json
import os
import shutil
import struct
import zlib

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

OUT = "tests/fixtures/io"
BAD = os.path.join(OUT, "bad")
SEEDS = "tests/fuzz/seeds/fuzz_safetensors"
rng = np.random.default_rng(1234)

if os.path.isdir(OUT):
    shutil.rmtree(OUT)
os.makedirs(BAD)
os.makedirs(SEEDS, exist_ok=True)
for f in os.listdir(SEEDS):
    os.remove(os.path.join(SEEDS, f))

expected = {"safetensors": {}, "png_text": {}}

# ---------------------------------------------------------------------------
# safetensors, written by the safetensors package

SPECIAL = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan"), 65504.0,
           5.960464477539063e-08, 6.097555160522461e-05, 6.103515625e-05, 1.0 / 3.0, 1e-3,
           -2.5, 1e4, 0.1, 3.0e38, 1.0e-40, 9.2e-41, 2.0 ** -133]


def float_tensors(dtype):
    return {
        "a.weight": torch.tensor(rng.standard_normal((3, 5)), dtype=torch.float32).to(dtype),
        "special": torch.tensor(SPECIAL, dtype=torch.float32).to(dtype),
        "scalar": torch.tensor(0.75, dtype=torch.float32).to(dtype),
        "empty": torch.zeros((0, 3), dtype=torch.float32).to(dtype),
        "conv.weight": torch.tensor(rng.standard_normal((4, 3, 3, 3)), dtype=torch.float32).to(dtype),
        "attn.to_q.weight": torch.tensor(rng.standard_normal((6, 6, 1, 1)), dtype=torch.float32).to(dtype),
        "name with spaces/and-üñïcödé": torch.tensor(rng.standard_normal((2,)), dtype=torch.float32).to(dtype),
    }


files = {
    "st_f32": float_tensors(torch.float32),
    "st_f16": float_tensors(torch.float16),
    "st_bf16": float_tensors(torch.bfloat16),
    "st_ints": {
        "i64": torch.tensor([-(2 ** 40), -1, 0, 7, 2 ** 24], dtype=torch.int64),
        "i32": torch.tensor([-(2 ** 31), -5, 0, 2 ** 31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-32768, -2, 0, 32767], dtype=torch.int16),
        "i8": torch.tensor([-128, -1, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 128, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True], dtype=torch.bool),
        "f64": torch.tensor([1.0 / 3.0, -1e300, 1e-300, 2.5], dtype=torch.float64),
    },
}
META = {"format": "pt", "comment": "héllo wörld ✓", "empty": ""}
DTYPE_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
              torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


def canonical_metadata_order(path):
    """The package writes __metadata__ in hash-map order, which changes from
    run to run. Re-spell the header with the metadata keys sorted (same
    bytes otherwise, same length) so the committed fixtures are reproducible."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    text = raw[8:8 + n].decode("utf-8")
    header = json.loads(text, object_pairs_hook=dict)
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    out = json.dumps(header, ensure_ascii=False, separators=(",", ":"))
    out = out.encode("utf-8") + b" " * (n - len(out.encode("utf-8")))
    assert len(out) == n and sorted(out.rstrip()) == sorted(text.encode("utf-8").rstrip()), path
    open(path, "wb").write(raw[:8] + out + raw[8 + n:])


def npy_name(tensor):
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in tensor)


for fname, tensors in files.items():
    path = os.path.join(OUT, fname + ".safetensors")
    save_file(tensors, path, metadata=META)
    canonical_metadata_order(path)
    entries = []
    for name, t in tensors.items():
        ref = t.float().numpy().astype(np.float32)   # torch's own widening
        npy = f"{fname}__{npy_name(name)}.npy"
        np.save(os.path.join(OUT, npy), ref)
        entries.append({"name": name, "dtype": DTYPE_NAME[t.dtype], "shape": list(t.shape),
                        "npy": npy})
    expected["safetensors"][fname + ".safetensors"] = {"tensors": entries, "metadata": META}

# ---------------------------------------------------------------------------
# .npy written by numpy

a = rng.standard_normal((3, 4, 5))
np.save(os.path.join(OUT, "np_f32.npy"), a.astype(np.float32))
np.save(os.path.join(OUT, "np_f64.npy"), a.astype(np.float64))
np.save(os.path.join(OUT, "np_f16.npy"), a.astype(np.float16))
np.save(os.path.join(OUT, "np_scalar.npy"), np.float32(2.5))
np.save(os.path.join(OUT, "np_expected_f32.npy"), a.astype(np.float32))
np.save(os.path.join(OUT, "np_expected_f64.npy"), a.astype(np.float64).astype(np.float32))
np.save(os.path.join(OUT, "np_expected_f16.npy"), a.astype(np.float16).astype(np.float32))

# ---------------------------------------------------------------------------
# PNG


def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))


def png_encode(width, height, bit_depth, color_type, rows):
    """Minimal PNG encoder (filter 0 on every row) for what Pillow cannot write."""
    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
            png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def save_expected(name, rgb):
    np.save(os.path.join(OUT, name + ".rgb.npy"), np.asarray(rgb, dtype=np.float32))


W, H = 7, 5
rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
gray = rng.integers(0, 256, (H, W), dtype=np.uint8)

Image.fromarray(rgb, "RGB").save(os.path.join(OUT, "png_rgb8.png"))
save_expected("png_rgb8", rgb)
Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(os.path.join(OUT, "png_rgba8.png"))
save_expected("png_rgba8", rgb)                               # alpha dropped
Image.fromarray(gray, "L").save(os.path.join(OUT, "png_gray8.png"))
save_expected("png_gray8", np.repeat(gray[:, :, None], 3, axis=2))
Image.fromarray(np.dstack([gray, alpha]), "LA").save(os.path.join(OUT, "png_graya8.png"))
save_expected("png_graya8", np.repeat(gray[:, :, None], 3, axis=2))

palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
idx = rng.integers(0, 16, (H, W), dtype=np.uint8)
p = Image.fromarray(idx, "P")
p.putpalette(palette.flatten().tolist())
p.save(os.path.join(OUT, "png_palette4.png"), bits=4)        # 4-bit palette
save_expected("png_palette4", palette[idx])
p.save(os.path.join(OUT, "png_palette8_trns.png"), transparency=3)   # tRNS: alpha dropped
save_expected("png_palette8_trns", palette[idx])

bits = rng.integers(0, 2, (H, W), dtype=np.uint8)
Image.fromarray(bits.astype(bool)).save(os.path.join(OUT, "png_gray1.png"))   # mode "1"
save_expected("png_gray1", np.repeat((bits * 255)[:, :, None], 3, axis=2))

g16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
Image.fromarray(g16).save(os.path.join(OUT, "png_gray16.png"))
save_expected("png_gray16", np.repeat((g16 >> 8)[:, :, None], 3, axis=2))   # strip_16: high byte

rgb16 = rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)
with open(os.path.join(OUT, "png_rgb16.png"), "wb") as fp:
    fp.write(png_encode(W, H, 16, 2, [rgb16[y].astype(">u2").tobytes() for y in range(H)]))
save_expected("png_rgb16", rgb16 >> 8)
rgba16 = rng.integers(0, 65536, (H, W, 4), dtype=np.uint16)
with open(os.path.join(OUT, "png_rgba16.png"), "wb") as fp:
    fp.write(png_encode(W, H, 16, 6, [rgba16[y].astype(">u2").tobytes() for y in range(H)]))
save_expected("png_rgba16", rgba16[:, :, :3] >> 8)

g2 = rng.integers(0, 4, (H, W), dtype=np.uint8)              # 2-bit gray, packed MSB first


def pack2(row):
    row = list(row) + [0] * (-len(row) % 4)
    return bytes((row[i] << 6) | (row[i + 1] << 4) | (row[i + 2] << 2) | row[i + 3]
                 for i in range(0, len(row), 4))


with open(os.path.join(OUT, "png_gray2.png"), "wb") as fp:
    fp.write(png_encode(W, H, 2, 0, [pack2(g2[y]) for y in range(H)]))
save_expected("png_gray2", np.repeat((g2 * 85)[:, :, None], 3, axis=2))

# text chunks: tEXt (Latin-1), zTXt (compressed Latin-1), iTXt (UTF-8)
TEXT = {"Title": "café crème", "Comment": "long " * 40 + "end", "Prompt": "a cat 猫 🐱, ünïcode"}
info = PngImagePlugin.PngInfo()
info.add_text("Title", TEXT["Title"])
info.add_text("Comment", TEXT["Comment"], zip=True)
info.add_itxt("Prompt", TEXT["Prompt"])
Image.fromarray(rgb, "RGB").save(os.path.join(OUT, "png_text.png"), pnginfo=info)
save_expected("png_text", rgb)
expected["png_text"]["png_text.png"] = TEXT

with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as fp:
    json.dump(expected, fp, ensure_ascii=False, indent=1)

# ---------------------------------------------------------------------------
# bad files: (kind, name, bytes, substring the error message must contain)

bad = []


def st(header, data=b"", n=None):
    """A safetensors file from a raw header (str or bytes) and data bytes."""
    h = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(h) if n is None else n) + h + data


good = open(os.path.join(OUT, "st_f32.safetensors"), "rb").read()
d16 = bytes(range(16))
one = '{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}'

bad += [
    ("st", "empty.safetensors", b"", "empty"),
    ("st", "seven_bytes.safetensors", b"\x10\0\0\0\0\0\0", "7 bytes"),
    ("st", "truncated.safetensors", good[: len(good) - 10], "past the end"),
    ("st", "truncated_header.safetensors", good[:40], "past the end of the file"),
    ("st", "header_past_eof.safetensors", st(one, d16, n=1000), "past the end of the file"),
    ("st", "header_over_100mb.safetensors", st(one, d16, n=200_000_000), "100 MB"),
    ("st", "header_len_max.safetensors", st(one, d16, n=2 ** 64 - 1), "100 MB"),
    ("st", "overlap.safetensors",
     st('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
        '"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}', bytes(24)), "overlap"),
    ("st", "gap.safetensors",
     st('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},'
        '"b":{"dtype":"F32","shape":[4],"data_offsets":[20,36]}}', bytes(36)), "gap"),
    ("st", "gap_at_start.safetensors",
     st('{"a":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}}', bytes(20)), "gap"),
    ("st", "trailing.safetensors", st(one, d16 + b"xxxx"), "trailing"),
    ("st", "trailing_no_tensors.safetensors", st("{}", b"abc"), "trailing"),
    ("st", "unknown_dtype.safetensors",
     st('{"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}', bytes(4)), "dtype"),
    ("st", "dtype_not_string.safetensors",
     st('{"a":{"dtype":4,"shape":[4],"data_offsets":[0,16]}}', bytes(16)), "dtype"),
    ("st", "size_mismatch.safetensors",
     st('{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}', bytes(12)), "needs 16"),
    ("st", "duplicate_names.safetensors",
     st('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        '"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', d16), "duplicate key 'a'"),
    ("st", "duplicate_field.safetensors",
     st('{"a":{"dtype":"F32","dtype":"F16","shape":[4],"data_offsets":[0,16]}}', d16),
     "duplicate field"),
    ("st", "invalid_utf8.safetensors",
     st(b'{"a\xff":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', d16), "UTF-8"),
    ("st", "overlong_utf8.safetensors",
     st(b'{"a\xc0\xaf":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', d16), "UTF-8"),
    ("st", "nul_in_header.safetensors",
     st(b'{"a\x00":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', d16), "NUL"),
    ("st", "invalid_json.safetensors", st('{"a":{"dtype":"F32",', d16), "JSON"),
    ("st", "json_then_garbage.safetensors", st(one + " x", d16), "after the JSON"),
    ("st", "header_not_object.safetensors", st('{"a":[1,2]}', b""), "not an object"),
    ("st", "dims_overflow_numel.safetensors",
     st('{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}', d16),
     "64-bit"),
    ("st", "dims_overflow_bytes.safetensors",
     st('{"a":{"dtype":"F64","shape":[2147483648,2147483648,2],"data_offsets":[0,16]}}', d16),
     "64-bit"),
    ("st", "dim_too_large.safetensors",
     st('{"a":{"dtype":"F32","shape":[1e300],"data_offsets":[0,16]}}', d16), "integer"),
    ("st", "negative_dim.safetensors",
     st('{"a":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,16]}}', d16), "non-negative"),
    ("st", "fractional_dim.safetensors",
     st('{"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,16]}}', d16), "integer"),
    ("st", "offsets_not_numbers.safetensors",
     st('{"a":{"dtype":"F32","shape":[4],"data_offsets":["0","16"]}}', d16), "data_offsets"),
    ("st", "offsets_three.safetensors",
     st('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16,32]}}', d16), "data_offsets"),
    ("st", "offsets_reversed.safetensors",
     st('{"a":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}', d16), "end before"),
    ("st", "offset_past_buffer.safetensors",
     st('{"a":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}', d16), "past the end"),
    ("st", "too_many_dims.safetensors",
     st('{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,4],"data_offsets":[0,16]}}', d16),
     "dims"),
    ("st", "missing_shape.safetensors",
     st('{"a":{"dtype":"F32","data_offsets":[0,16]}}', d16), "shape"),
    ("st", "entry_not_object.safetensors", st('{"a":3}', b""), "not an object"),
    ("st", "metadata_not_string.safetensors",
     st('{"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', d16),
     "not a string"),
    ("st", "metadata_not_object.safetensors", st('{"__metadata__":"x"}', b""), "__metadata__"),
    ("st", "not_safetensors.safetensors", b"hello world, this is text\n", "unknown format"),
    ("st", "zip_garbage.ckpt", b"PK\x03\x04" + bytes(60), ""),   # rejected by the ckpt reader
]

# PNG
good_png = open(os.path.join(OUT, "png_rgb8.png"), "rb").read()
bad_crc = bytearray(good_png)
bad_crc[29] ^= 0xff                      # IHDR CRC (bytes 29..32)
huge = (b"\x89PNG\r\n\x1a\n" +
        png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)) +
        png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))
zero_w = (b"\x89PNG\r\n\x1a\n" +
          png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)) +
          png_chunk(b"IEND", b""))
bad_idat = bytearray(good_png)
i = bad_idat.find(b"IDAT")
bad_idat[i + 6:i + 10] = b"\xde\xad\xbe\xef"   # corrupt the zlib stream (CRC then fails too)
bad += [
    ("png", "truncated.png", good_png[: len(good_png) // 2], "truncated"),
    ("png", "bad_crc.png", bytes(bad_crc), "CRC"),
    ("png", "huge_100000x100000.png", huge, "exceeds user limit"),
    ("png", "zero_width.png", zero_w, "zero"),
    ("png", "corrupt_idat.png", bytes(bad_idat), ""),
    ("png", "not_a_png.png", b"GIF89a this is not a png file at all", "not a PNG"),
    ("png", "empty.png", b"", ""),
    ("png", "signature_only.png", b"\x89PNG\r\n\x1a\n", "truncated"),
]


# NPY
def npy_bytes(arr, fortran=False):
    import io
    b = io.BytesIO()
    np.save(b, np.asfortranarray(arr) if fortran else arr)
    return b.getvalue()


m = rng.standard_normal((3, 4)).astype(np.float32)
full = npy_bytes(m)
bad += [
    ("npy", "fortran_order.npy", npy_bytes(m, fortran=True), "Fortran"),
    ("npy", "big_endian.npy", npy_bytes(m.astype(">f4")), "big-endian"),
    ("npy", "int32.npy", npy_bytes(m.astype(np.int32)), "not supported"),
    ("npy", "truncated.npy", full[:-8], "needs"),
    ("npy", "trailing.npy", full + b"1234", "needs"),
    ("npy", "bad_magic.npy", b"\x93NUMPX" + full[6:], "not a .npy"),
    ("npy", "empty.npy", b"", "not a .npy"),
]

with open(os.path.join(BAD, "MANIFEST.tsv"), "w", encoding="utf-8") as man:
    man.write("# kind\tfile\tsubstring the error message must contain (empty: any message)\n")
    for kind, name, data, sub in bad:
        with open(os.path.join(BAD, name), "wb") as fp:
            fp.write(data)
        man.write(f"{kind}\t{name}\t{sub}\n")

# fuzz seeds: the small valid files and the safetensors bad files
for f in ["st_f16.safetensors", "st_bf16.safetensors", "st_ints.safetensors"]:
    shutil.copy(os.path.join(OUT, f), os.path.join(SEEDS, f))
for kind, name, data, sub in bad:
    if kind == "st" and len(data) < 4096:
        shutil.copy(os.path.join(BAD, name), os.path.join(SEEDS, name))

total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
print(f"wrote {OUT}: {total} bytes, {len(bad)} bad files")
