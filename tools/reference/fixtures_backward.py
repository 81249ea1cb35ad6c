"""Fixtures for tests/test_backward.c: the gradients of every op of struct
ldm_ops (ldm/backend/ops.h) from torch autograd, and a few AdamW + clipping +
EMA steps from torch.optim.

Per case, tests/fixtures/backward/<case>.<tensor>.npy (float32):
  inputs      x, w, bias, gamma, beta, a, b, q, k, v, y, table, pos, ids
  dout        a random upstream gradient (the loss is L = sum(out * dout))
  d<input>    dL/d<input> computed by autograd in float64 (the inputs widened
              exactly from their float32 values), then stored as float32
  d<input>.f32  the same gradient from autograd in float32
and one manifest line in cases.txt:  <op> <case> key=value ...
The C test compares against the float64 gradient: it is the exact gradient of
the op at the float32 inputs rounded once, so the tolerance (1e-5 of the
largest |gradient|) measures only the C code's own rounding; torch's float32
gradient carries torch's rounding too (its kernels sum in other orders). The
test also reports the float32 one, which must agree as well.

Shapes are small and odd on purpose: B=1, C=3 with one group, 5x7 images,
T=5 with 2 heads, conv 3x3 stride 2 with the VAE downsample's pad (0,1,0,1),
a repeated token id.

adamw.*: 5 steps of torch.optim.AdamW (lr warm-up as tools/train/train_tiny.py,
clip_grad_norm_ at 1.0, EMA with decay min(max, (1+step)/(10+step))) on two
parameter tensors, with random gradients scaled so clipping acts on some steps.

Run: .venv-ref/bin/python tools/reference/fixtures_backward.py (or `make fixtures`).
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.join("tests", "fixtures", "backward")
os.makedirs(OUT, exist_ok=True)
for f in os.listdir(OUT):
    if f.endswith(".npy") or f == "cases.txt":
        os.remove(os.path.join(OUT, f))
torch.manual_seed(20190101)
lines = []


def save(case, name, t):
    a = t.detach().to(torch.float32).contiguous().numpy()
    np.save(os.path.join(OUT, f"{case}.{name}.npy"), a)


def randn(*shape, scale=1.0, offset=0.0):
    return torch.randn(*shape, dtype=torch.float32) * scale + offset


def case(op, name, fn, params="", const=None, **inputs):
    """out = fn(**inputs, **const); gradients of every input of `inputs`."""
    const = const or {}
    for k, t in {**inputs, **const}.items():
        save(name, k, t)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        leaves = {k: t.to(dtype).clone().requires_grad_(True) for k, t in inputs.items()}
        out = fn(**leaves, **const)
        if dtype == torch.float64:
            dout = randn(*out.shape)
            save(name, "dout", dout)
        got = torch.autograd.grad(out, list(leaves.values()), grad_outputs=dout.to(dtype))
        grads[dtype] = dict(zip(leaves.keys(), got))
    for k in inputs:
        save(name, "d" + k, grads[torch.float64][k])
        save(name, "d" + k + ".f32", grads[torch.float32][k])
    lines.append(f"{op} {name} {params}".strip())


# ---- linear: out = x w^T + bias -------------------------------------------------------
x, w, bias = randn(2, 3, 7), randn(5, 7, scale=0.4), randn(5)
case("linear", "linear", lambda x, w, bias: F.linear(x, w, bias), x=x, w=w, bias=bias)
x, w = randn(1, 4), randn(1, 4)
case("linear", "linear_1", lambda x, w: F.linear(x, w), x=x, w=w)

# ---- conv2d (pads top, bottom, left, right; asymmetric through F.pad) ----------------
for name, xs, cout, k, s, pads, has_bias in [
        ("conv_3x3", (1, 3, 5, 7), 4, 3, 1, (1, 1, 1, 1), True),
        ("conv_s2_asym", (2, 3, 5, 7), 2, 3, 2, (0, 1, 0, 1), True),
        ("conv_s2_pad1", (1, 2, 6, 5), 3, 3, 2, (1, 1, 1, 1), False),
        ("conv_1x1", (2, 3, 3, 4), 5, 1, 1, (0, 0, 0, 0), True)]:
    pt, pb, pl, pr = pads
    t = dict(x=randn(*xs), w=randn(cout, xs[1], k, k, scale=1 / math.sqrt(xs[1] * k * k)))
    if has_bias:
        t["bias"] = randn(cout)
    case("conv2d", name,
         lambda x, w, bias=None, s=s, p=(pl, pr, pt, pb): F.conv2d(F.pad(x, p), w, bias, stride=s),
         f"stride={s} pad={pt},{pb},{pl},{pr}", **t)

# ---- group_norm / layer_norm ------------------------------------------------------------
for name, xs, g, eps, offset in [("gn", (2, 6, 5, 7), 3, 1e-6, 0.0),
                                 ("gn_1group", (1, 3, 5, 7), 1, 1e-5, 0.0),
                                 ("gn_offset", (1, 4, 3, 3), 2, 1e-5, 20.0)]:
    case("group_norm", name, lambda x, gamma, beta, g=g, eps=eps: F.group_norm(x, g, gamma, beta, eps),
         f"groups={g} eps={eps!r}", x=randn(*xs, scale=2.0, offset=offset),
         gamma=randn(xs[1]), beta=randn(xs[1]))
for name, xs, eps in [("ln", (2, 5, 12), 1e-5), ("ln_1", (1, 1, 7), 1e-5)]:
    case("layer_norm", name, lambda x, gamma, beta, eps=eps: F.layer_norm(x, (x.shape[-1],), gamma, beta, eps),
         f"eps={eps!r}", x=randn(*xs, scale=3.0), gamma=randn(xs[-1]), beta=randn(xs[-1]))

# ---- softmax ------------------------------------------------------------------------------
case("softmax", "softmax", lambda x: F.softmax(x, dim=-1), x=randn(3, 11, scale=3.0))


# ---- attention: softmax(q_h k_h^T * scale [+ causal mask]) v_h, heads interleaved ---------
def attention(q, k, v, nh, scale, causal):
    B, Tq, D = q.shape
    Tk, hs = k.shape[1], D // nh
    q, k, v = (t.view(B, -1, nh, hs).transpose(1, 2) for t in (q, k, v))
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool).tril().logical_not(), -math.inf)
    return (s.softmax(-1) @ v).transpose(1, 2).reshape(B, Tq, D)


for name, B, Tq, Tk, nh, hs, causal in [("attn_self", 2, 5, 5, 2, 3, 0),
                                        ("attn_causal", 2, 5, 5, 2, 3, 1),
                                        ("attn_cross", 1, 5, 7, 2, 4, 0)]:
    D = nh * hs
    scale = float(np.float32(1 / math.sqrt(hs)))
    case("attention", name, lambda q, k, v, nh=nh, scale=scale, causal=causal:
         attention(q, k, v, nh, scale, causal), f"NH={nh} scale={scale!r} causal={causal}",
         q=randn(B, Tq, D), k=randn(B, Tk, D), v=randn(B, Tk, D))

# ---- elementwise ----------------------------------------------------------------------------
x = randn(3, 17, scale=3.0)
case("silu", "silu", lambda x: F.silu(x), x=x)
case("gelu", "gelu", lambda x: F.gelu(x), x=x)
case("quick_gelu", "quick_gelu", lambda x: x * torch.sigmoid(1.702 * x), x=x)
case("geglu", "geglu", lambda x: x.chunk(2, dim=-1)[0] * F.gelu(x.chunk(2, dim=-1)[1]),
     x=randn(2, 3, 10, scale=2.0))
a, b = randn(4, 5), randn(4, 5)
case("add", "add", lambda a, b: a + b, a=a, b=b)
case("mul", "mul", lambda a, b: a * b, a=a, b=b)
case("scale", "scale", lambda a: a * 0.18215, "s=0.18215", a=a)
case("add_channel", "add_channel", lambda x, y: x + y[:, :, None, None],
     x=randn(2, 3, 5, 7), y=randn(2, 3))

# ---- layout -------------------------------------------------------------------------------
case("upsample2x", "upsample2x", lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"),
     x=randn(1, 3, 5, 7))
case("concat_channels", "concat", lambda a, b: torch.cat([a, b], dim=1),
     a=randn(2, 3, 5), b=randn(2, 2, 5))
case("transpose", "transpose", lambda x: x.transpose(1, 2), x=randn(2, 3, 5))
# CLIP's embeddings: x[b,t] = token_embedding[ids[b,t]] + position_embedding[t]
ids = torch.tensor([[3, 7, 3, 0, 10], [10, 10, 1, 2, 3]])    # repeated ids on purpose
case("embedding", "embedding", lambda table, pos, ids: F.embedding(ids.long(), table) + pos[:5],
     const=dict(ids=ids.float()), table=randn(11, 6), pos=randn(8, 6))

with open(os.path.join(OUT, "cases.txt"), "w") as f:
    f.write("# written by tools/reference/fixtures_backward.py: <op> <case> key=value ...\n")
    f.write("\n".join(lines) + "\n")

# ---- AdamW + clip_grad_norm_ + EMA, 5 steps ------------------------------------------------
lr, betas, eps, wd, warmup, max_norm, ema_max = 1e-2, (0.9, 0.99), 1e-8, 0.05, 3, 1.0, 0.998
p = [randn(7, 5).requires_grad_(True), randn(3).requires_grad_(True)]
opt = torch.optim.AdamW(p, lr=lr, betas=betas, eps=eps, weight_decay=wd)
ema = [t.detach().clone() for t in p]
flat = lambda ts: torch.cat([t.detach().reshape(-1) for t in ts])
rec = {k: [] for k in ("grad", "lr", "norm", "param", "m", "v", "ema")}
p_init = flat(p)
for step, s in enumerate([0.5, 0.05, 2.0, 0.1, 3.0]):
    for t in p:
        t.grad = randn(*t.shape, scale=s)
    rec["grad"].append(flat([t.grad for t in p]))
    for pg in opt.param_groups:
        pg["lr"] = lr * min(1.0, (step + 1) / warmup)                 # train_tiny.py lr_at
    rec["lr"].append(torch.tensor([opt.param_groups[0]["lr"]]))
    rec["norm"].append(torch.nn.utils.clip_grad_norm_(p, max_norm).reshape(1))
    opt.step()
    decay = min(ema_max, (1 + step + 1) / (10 + step + 1))           # after step+1 steps
    with torch.no_grad():
        for e, t in zip(ema, p):
            e.mul_(decay).add_(t.detach(), alpha=1 - decay)
    rec["param"].append(flat(p))
    rec["m"].append(flat([opt.state[t]["exp_avg"] for t in p]))
    rec["v"].append(flat([opt.state[t]["exp_avg_sq"] for t in p]))
    rec["ema"].append(flat(ema))
save("adamw", "param0", p_init)
for k, v in rec.items():
    save("adamw", k, torch.stack(v))
with open(os.path.join(OUT, "adamw.txt"), "w") as f:
    f.write("# written by tools/reference/fixtures_backward.py\n")
    f.write(f"n0={p[0].numel()} n1={p[1].numel()} steps=5 lr={lr!r} beta1={betas[0]!r} "
            f"beta2={betas[1]!r} eps={eps!r} wd={wd!r} warmup={warmup} max_norm={max_norm!r} "
            f"ema_max={ema_max!r}\n")

total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
print(f"backward: {len(lines)} cases + adamw, {total / 1024:.0f} KiB in {OUT}")
