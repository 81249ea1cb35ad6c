"""Fixtures for tests/test_train_unet.c: the gradient of the stage-2 training
loss with respect to every parameter of diffusers' UNet2DConditionModel, and
to the text context, from torch autograd.

The loss is tools/train/train_tiny.py's (LDM eq. 2 with min-SNR weights):
    per_b = mean((eps_theta(x_t, t_b, ctx) - eps)^2 over C,H,W)
    loss  = mean_b( w(t_b) * per_b ),  w = min(SNR, 5) / SNR on DDPMScheduler's
            scaled-linear schedule (0.00085..0.012, 1000 steps)
computed in float64 from the float32 inputs (the exact gradient rounded once
to float32), so the C test's tolerance measures only the C code's rounding.

Two micro configurations (block_out_channels [4,8], 2 groups, 2 heads,
cross_attention_dim 8, both levels with cross-attention), small enough to
commit and together covering every block kind the trainer handles:
  conv/    1x1-conv proj_in/out (SD1), layers_per_block 2 (a 4 -> 8 shortcut
           conv on the down path, three ResBlocks per up block), depth 1
  linear/  Linear proj_in/out (SD2), layers_per_block 1, two transformer
           blocks per Transformer2DModel, only_cross_attention on level 1
           (attn1 attends to the context too)
Per folder: config.json; x.npy [2,4,8,8], t.npy [2] (37 and 812: one
min-SNR weight below 1, one equal to 1), context.npy [2,5,8], eps.npy,
out.npy (the UNet's output), loss.npy, names.txt (named_parameters(), in
order), grads.npy (every d loss / d param flattened and concatenated in that
order: one file, no per-tensor headers), dcontext.npy.

The weights are not stored: every parameter is filled by a formula of its
name and index that tests/test_train_unet.c repeats (fill() below), so only
the gradients take space. Values: u in [-1, 1) on a 2^-15 grid from a 32-bit
hash; norm gammas 1 + u/4, biases u/4, matrices u * 2^-e with 4^e >= fan_in
(about 1/sqrt(fan_in)): all exact in float32.

  .venv-ref/bin/python tools/reference/fixtures_train_unet.py
  .venv-ref/bin/python tools/reference/fixtures_train_unet.py --tiny DIR
The second writes the same files for the real tiny model's UNET_CFG
(tools/train/train_tiny.py, context [2,77,64]) into DIR, for a one-off check:
  build/tests/test_train_unet DIR
(--config unet/config.json with --tiny: that configuration instead, e.g. the
inference fixtures' sd1 / sd2 ones, which have levels without attention.)
"""
import argparse
import importlib.util
import json
import os
import shutil

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

OUT = os.path.join("tests", "fixtures", "train", "unet")
BASE = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[4, 8],
            down_block_types=["CrossAttnDownBlock2D"] * 2,
            up_block_types=["CrossAttnUpBlock2D"] * 2,
            cross_attention_dim=8, attention_head_dim=2, norm_num_groups=2)
CONFIGS = {
    "conv": dict(BASE, layers_per_block=2),
    "linear": dict(BASE, layers_per_block=1, transformer_layers_per_block=2,
                   use_linear_projection=True, only_cross_attention=[False, True]),
}
MIN_SNR = 5.0
TIMESTEPS = [37, 812]


def fnv1a(name):
    h = 2166136261
    for c in name.encode():
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return h


def fill(name, shape):
    """The parameter's values (float32), exactly as the C test computes them."""
    n = int(np.prod(shape))
    x = (np.arange(n, dtype=np.uint64) * 2654435761 + fnv1a(name)) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 2246822519) & 0xFFFFFFFF
    x ^= x >> 13
    u = ((x >> 16).astype(np.int64) - 32768).astype(np.float32) / np.float32(32768)
    if len(shape) == 1:
        v = 1 + u / 4 if name.endswith(".weight") else u / 4
    else:
        fan_in, e = n // shape[0], 0
        while 4 ** e < fan_in:
            e += 1
        v = u * np.float32(2.0 ** -e)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def write(d, cfg, T, Dc, seed):
    os.makedirs(d, exist_ok=True)
    model = UNet2DConditionModel.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(fill(name, tuple(p.shape)))
    model.save_config(d)
    names = [name for name, _ in model.named_parameters()]
    with open(os.path.join(d, "names.txt"), "w") as f:
        f.write("\n".join(names) + "\n")

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, T, Dc, generator=g)
    eps = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor(TIMESTEPS)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", prediction_type="epsilon")
    abar = sched.alphas_cumprod.float()
    snr = abar / (1 - abar)
    wt = torch.clamp(snr, max=MIN_SNR) / snr                     # float32, as train_tiny.py

    results = {}
    for dtype in (torch.float64, torch.float32):
        m = model.to(dtype)
        m.zero_grad()
        c = ctx.to(dtype).clone().requires_grad_(True)
        pred = m(x.to(dtype), t, c).sample
        per = (pred - eps.to(dtype)).pow(2).mean(dim=(1, 2, 3))
        loss = (wt[t].to(dtype) * per).mean()
        loss.backward()
        results[dtype] = (pred.detach().float(), loss.item(), c.grad.float(),
                          {n: p.grad.float().contiguous() for n, p in m.named_parameters()})
    pred, loss, dctx, grads = results[torch.float64]
    for name, a in [("x", x), ("context", ctx), ("eps", eps), ("out", pred), ("dcontext", dctx)]:
        np.save(os.path.join(d, f"{name}.npy"), a.numpy().astype(np.float32))
    np.save(os.path.join(d, "t.npy"), t.numpy().astype(np.float32))
    np.save(os.path.join(d, "loss.npy"), np.array([loss], dtype=np.float32))
    flat = torch.cat([grads[n].reshape(-1) for n in names])      # named_parameters() order
    np.save(os.path.join(d, "grads.npy"), flat.numpy().astype(np.float32))
    # torch's own float32 gradients against the float64 ones, for scale
    worst = max(float((results[torch.float32][3][n] - gr).abs().max() / gr.abs().max())
                for n, gr in grads.items() if gr.abs().max() > 0)
    print(f"{d}: {len(names)} parameters, {sum(v.numel() for v in grads.values())} values, "
          f"loss {loss:.6f}; torch float32 vs float64 worst relative gradient error {worst:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", metavar="DIR", help="the real tiny UNET_CFG into DIR instead")
    ap.add_argument("--config", metavar="JSON", help="with --tiny: this unet/config.json "
                    "instead of UNET_CFG (e.g. tests/fixtures/unet/sd2/config.json)")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.tiny:
        spec = importlib.util.spec_from_file_location("train_tiny", "tools/train/train_tiny.py")
        tiny = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tiny)
        cfg = tiny.UNET_CFG
        if a.config:
            with open(a.config) as f:
                cfg = json.load(f)
        write(a.tiny, cfg, 77, cfg["cross_attention_dim"], 2024)
        return
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        write(os.path.join(OUT, name), cfg, 5, cfg["cross_attention_dim"], 100 + i)


if __name__ == "__main__":
    main()
