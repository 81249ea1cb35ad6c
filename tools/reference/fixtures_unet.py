"""Fixtures for tests/test_unet.c: tiny random UNets and their PyTorch outputs.

Two configurations of diffusers' UNet2DConditionModel, small enough to commit
but with every structural feature of the real ones:

  sd1/  SD1-style: block_out_channels [16,32], 1 layer per block, 2 heads
        (config "attention_head_dim": 2 -- diffusers reads it as the number of
        heads: head size 8, then 16 in the mid block), context width 32,
        1x1-conv proj_in/proj_out, 8 groups.
  sd2/  SD2-style: block_out_channels [16,32,32], 2 layers per block,
        "attention_head_dim": [1,2,2] (heads per level, head size 16),
        context width 48, linear proj_in/proj_out, 4 groups.

Each folder holds the diffusers layout (config.json +
diffusion_pytorch_model.safetensors, weights stored as fp16 to halve the size;
the reference runs in fp32 on exactly those rounded values) and, per case:
  <case>_latent.npy [B,4,h,w], <case>_t.npy [B] (fractional timesteps),
  <case>_context.npy [B,77,Dc], <case>_out.npy [B,4,h,w]
Cases: "b2" (batch 2, 8x8 latent, like classifier-free guidance's
[uncond, cond]) and "ns" (batch 1, non-square 8x12). For "b2" the output of
every block (forward hooks, names = diffusers module paths prefixed "unet.")
is saved under blocks/ so a failing C test can show where it diverges.

Random weights: default torch init for convs/linears, then every norm's
gamma = 1 + 0.1 N(0,1) and every bias 0.05 N(0,1), so a swapped gamma/beta
or a missing bias shows up. Deterministic (fixed seeds).
"""
import json
import os
import shutil

import numpy as np
import torch
from diffusers import UNet2DConditionModel

OUT = os.path.join("tests", "fixtures", "unet")

CONFIGS = {
    "sd1": dict(
        sample_size=8, in_channels=4, out_channels=4,
        block_out_channels=[16, 32], layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        attention_head_dim=2, cross_attention_dim=32, norm_num_groups=8,
        use_linear_projection=False, flip_sin_to_cos=True, freq_shift=0,
    ),
    "sd2": dict(
        sample_size=8, in_channels=4, out_channels=4,
        block_out_channels=[16, 32, 32], layers_per_block=2,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        attention_head_dim=[1, 2, 2], cross_attention_dim=48, norm_num_groups=4,
        use_linear_projection=True, upcast_attention=True,
        flip_sin_to_cos=True, freq_shift=0,
    ),
}
# (name, batch, h, w, timesteps): fractional t as k-diffusion samplers pass them.
CASES = [("b2", 2, 8, 8, [981.0, 17.25]), ("ns", 1, 8, 12, [503.6875])]


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    # Store fp16; the reference runs on the fp16-rounded values in fp32.
    model.half().float()


def hook_names(model):
    """Module paths whose outputs the C side dumps under the same names."""
    names = ["time_embedding", "conv_in", "mid_block", "conv_out"]
    for i, blk in enumerate(model.down_blocks):
        names.append(f"down_blocks.{i}")
        names += [f"down_blocks.{i}.resnets.{j}" for j in range(len(blk.resnets))]
        if hasattr(blk, "attentions"):
            names += [f"down_blocks.{i}.attentions.{j}" for j in range(len(blk.attentions))]
        if blk.downsamplers is not None:
            names.append(f"down_blocks.{i}.downsamplers.0")
    names += [f"mid_block.resnets.{j}" for j in range(len(model.mid_block.resnets))]
    names += [f"mid_block.attentions.{j}" for j in range(len(model.mid_block.attentions))]
    for i, blk in enumerate(model.up_blocks):
        names.append(f"up_blocks.{i}")
        names += [f"up_blocks.{i}.resnets.{j}" for j in range(len(blk.resnets))]
        if hasattr(blk, "attentions"):
            names += [f"up_blocks.{i}.attentions.{j}" for j in range(len(blk.attentions))]
        if blk.upsamplers is not None:
            names.append(f"up_blocks.{i}.upsamplers.0")
    return names


def first_tensor(out):
    while isinstance(out, (tuple, list)) or hasattr(out, "sample"):
        out = out[0] if isinstance(out, (tuple, list)) else out.sample
    return out


def run_with_hooks(model, names, *args):
    got = {}
    mods = dict(model.named_modules())
    handles = []
    for n in names:
        def hook(mod, inp, out, n=n):
            got[n] = first_tensor(out).detach().float().numpy().copy()
        handles.append(mods[n].register_forward_hook(hook))
    with torch.no_grad():
        out = model(*args, return_dict=False)[0]
    for h in handles:
        h.remove()
    return out, got


def main():
    torch.manual_seed(0)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    for ci, (cname, cfg) in enumerate(CONFIGS.items()):
        d = os.path.join(OUT, cname)
        os.makedirs(os.path.join(d, "blocks"), exist_ok=True)
        torch.manual_seed(100 + ci)
        model = UNet2DConditionModel(**cfg).eval()
        randomize(model, 200 + ci)
        model.half().save_pretrained(d, safe_serialization=True)
        model.float()
        # save_pretrained writes every default; keep the file as written.
        nparams = sum(p.numel() for p in model.parameters())
        names = hook_names(model)
        rng = np.random.default_rng(300 + ci)
        for case, B, h, w, ts in CASES:
            x = rng.standard_normal((B, 4, h, w)).astype(np.float32)
            ctx = rng.standard_normal((B, 77, cfg["cross_attention_dim"])).astype(np.float32)
            t = np.array(ts, dtype=np.float32)
            out, blocks = run_with_hooks(model, names if case == "b2" else [],
                                         torch.from_numpy(x), torch.from_numpy(t),
                                         torch.from_numpy(ctx))
            np.save(os.path.join(d, f"{case}_latent.npy"), x)
            np.save(os.path.join(d, f"{case}_t.npy"), t)
            np.save(os.path.join(d, f"{case}_context.npy"), ctx)
            np.save(os.path.join(d, f"{case}_out.npy"), out.numpy().astype(np.float32))
            for n, v in blocks.items():
                np.save(os.path.join(d, "blocks", f"unet.{n}.npy"), v.astype(np.float32))
            print(f"  {cname}/{case}: params {nparams}, out {tuple(out.shape)} "
                  f"|out|max {out.abs().max().item():.3f}, {len(blocks)} block dumps")
        with open(os.path.join(d, "blocks", "order.txt"), "w") as f:
            f.write("\n".join(f"unet.{n}" for n in names) + "\n")
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"  tests/fixtures/unet: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
