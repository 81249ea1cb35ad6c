"""Fixtures for tests/test_ops.c: random inputs and PyTorch outputs per op.

Writes tests/fixtures/ops/<case>.<tensor>.npy (float32) and one manifest,
tests/fixtures/ops/cases.txt, with a line per case:
    <op> <case> key=value ...
naming the op of struct ldm_ops (ldm/backend/ops.h) and its scalar arguments. The C
test reads the manifest, so adding a case here needs no C change.

Every output comes from torch.nn.functional in float32 (F.linear, F.conv2d,
F.group_norm, ...), except attention, computed in float64 from the float32
inputs and then cast (the C backends must match the exact math, and torch's
own float32 SDPA adds its own rounding). Shapes are small and deliberately
odd (7x9 images, 37-wide rows, Tk = 77, 300 tokens crossing block edges).
Run: .venv-ref/bin/python tools/reference/fixtures_ops.py (or `make fixtures`).
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.join("tests", "fixtures", "ops")
os.makedirs(OUT, exist_ok=True)
for f in os.listdir(OUT):
    if f.endswith(".npy") or f == "cases.txt":
        os.remove(os.path.join(OUT, f))
torch.manual_seed(1234)
lines = []


def save(case, **tensors):
    for name, t in tensors.items():
        a = t.detach().to(torch.float32).contiguous().numpy()
        np.save(os.path.join(OUT, f"{case}.{name}.npy"), a)


def case(op, name, params="", **tensors):
    save(name, **tensors)
    lines.append(f"{op} {name} {params}".strip())


def randn(*shape, scale=1.0, offset=0.0):
    return torch.randn(*shape, dtype=torch.float32) * scale + offset


# ---- linear: out = x w^T + b -------------------------------------------------------
for name, xs, n, bias in [("linear_odd", (3, 5, 37), 29, True),
                          ("linear_nobias", (7, 64), 19, False),
                          ("linear_longk", (4, 1280), 12, True)]:
    x, w = randn(*xs), randn(n, xs[-1], scale=1 / math.sqrt(xs[-1]))
    b = randn(n) if bias else None
    t = dict(x=x, w=w, out=F.linear(x, w, b))
    if bias:
        t["b"] = b
    case("linear", name, **t)

# ---- conv2d ------------------------------------------------------------------------
# pads are (top, bottom, left, right); asymmetric ones go through F.pad like
# the VAE encoder's Downsample (pad (0,1,0,1), then conv stride 2 pad 0).
for name, xs, cout, k, stride, pads, bias in [
        ("conv_3x3_pad1", (2, 8, 6, 5), 16, 3, 1, (1, 1, 1, 1), True),
        ("conv_s2_asym", (1, 3, 7, 9), 5, 3, 2, (0, 1, 0, 1), True),
        ("conv_s2_pad1", (2, 4, 9, 7), 6, 3, 2, (1, 1, 1, 1), True),
        ("conv_1x1", (2, 16, 5, 7), 8, 1, 1, (0, 0, 0, 0), True),
        ("conv_wide_nobias", (1, 64, 8, 8), 32, 3, 1, (1, 1, 1, 1), False),
        ("conv_4x4_s2", (1, 5, 10, 11), 3, 4, 2, (2, 1, 0, 3), True)]:
    x = randn(*xs)
    w = randn(cout, xs[1], k, k, scale=1 / math.sqrt(xs[1] * k * k))
    b = randn(cout) if bias else None
    pt, pb, pl, pr = pads
    out = F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride=stride)
    t = dict(x=x, w=w, out=out)
    if bias:
        t["b"] = b
    case("conv2d", name, f"stride={stride} pad={pt},{pb},{pl},{pr}", **t)

# ---- group_norm / layer_norm --------------------------------------------------------
for name, xs, g, eps, offset, affine in [("gn_32", (2, 64, 5, 7), 32, 1e-5, 0.0, True),
                                         ("gn_offset", (1, 32, 4, 4), 8, 1e-6, 100.0, True),
                                         ("gn_noaffine", (2, 12, 3, 3), 3, 1e-5, 0.0, False)]:
    x = randn(*xs, scale=2.0, offset=offset)
    gamma, beta = (randn(xs[1]), randn(xs[1])) if affine else (None, None)
    t = dict(x=x, out=F.group_norm(x, g, gamma, beta, eps))
    if affine:
        t.update(gamma=gamma, beta=beta)
    case("group_norm", name, f"groups={g} eps={eps!r}", **t)

for name, xs, eps, offset in [("ln", (2, 7, 48), 1e-5, 0.0), ("ln_offset", (5, 33), 1e-5, 50.0)]:
    x = randn(*xs, scale=3.0, offset=offset)
    gamma, beta = randn(xs[-1]), randn(xs[-1])
    case("layer_norm", name, f"eps={eps!r}", x=x, gamma=gamma, beta=beta,
         out=F.layer_norm(x, (xs[-1],), gamma, beta, eps))

# ---- softmax -----------------------------------------------------------------------
for name, xs, sc in [("softmax_77", (5, 77), 5.0), ("softmax_wide", (3, 1000), 20.0)]:
    x = randn(*xs, scale=sc)
    case("softmax", name, x=x, out=F.softmax(x, dim=-1))


# ---- attention ---------------------------------------------------------------------
def attention64(q, k, v, nh, scale, causal):
    """softmax(q_h k_h^T * scale [+ mask]) v_h in float64, heads interleaved."""
    B, Tq, D = q.shape
    Tk, hs = k.shape[1], D // nh
    q, k, v = (t.double().view(B, -1, nh, hs).transpose(1, 2) for t in (q, k, v))
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool).tril().logical_not(), -math.inf)
    return (s.softmax(-1) @ v).transpose(1, 2).reshape(B, Tq, D)


for name, B, Tq, Tk, nh, hs, causal in [("attn_cross77", 2, 50, 77, 2, 40, 0),
                                        ("attn_self_hs64", 1, 33, 33, 3, 64, 0),
                                        ("attn_self300", 1, 300, 300, 1, 40, 0),
                                        ("attn_causal", 1, 77, 77, 2, 64, 1),
                                        ("attn_causal150", 1, 150, 150, 2, 40, 1)]:
    D = nh * hs
    q, k, v = randn(B, Tq, D), randn(B, Tk, D), randn(B, Tk, D)
    scale = float(np.float32(1 / math.sqrt(hs)))
    case("attention", name, f"NH={nh} scale={scale!r} causal={causal}", q=q, k=k, v=v,
         out=attention64(q, k, v, nh, scale, causal))

# ---- elementwise -------------------------------------------------------------------
x = randn(1000, scale=4.0)
case("silu", "silu", x=x, out=F.silu(x))
case("gelu", "gelu", x=x, out=F.gelu(x))
case("quick_gelu", "quick_gelu", x=x, out=x * torch.sigmoid(1.702 * x))
x = randn(3, 7, 48, scale=2.0)
a, gate = x.chunk(2, dim=-1)  # diffusers GEGLU: hidden_states, gate = proj(x).chunk(2, -1)
case("geglu", "geglu", x=x, out=a * F.gelu(gate))
a, b = randn(2, 3, 5, 7), randn(2, 3, 5, 7)
case("add", "add", a=a, b=b, out=a + b)
case("mul", "mul", a=a, b=b, out=a * b)
case("scale", "scale", "s=0.18215", a=a, out=a * 0.18215)
x, y = randn(2, 6, 5, 7), randn(2, 6)
case("add_channel", "add_channel", x=x, y=y, out=x + y[:, :, None, None])

# ---- layout ------------------------------------------------------------------------
x = randn(2, 3, 5, 7)
case("upsample2x", "upsample2x", x=x, out=F.interpolate(x, scale_factor=2.0, mode="nearest"))
a, b = randn(2, 3, 5, 7), randn(2, 4, 5, 7)
case("concat_channels", "concat", a=a, b=b, out=torch.cat([a, b], dim=1))
x = randn(2, 37, 45)
case("transpose", "transpose", x=x, out=x.transpose(1, 2))
table, ids = randn(50, 16), torch.randint(0, 50, (10,))
case("embedding", "embedding", table=table, ids=ids.float(), out=F.embedding(ids, table))

with open(os.path.join(OUT, "cases.txt"), "w") as f:
    f.write("# written by tools/reference/fixtures_ops.py: <op> <case> key=value ...\n")
    f.write("\n".join(lines) + "\n")
total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
print(f"ops: {len(lines)} cases, {total / 1024:.0f} KiB in {OUT}")
