"""Full-size VAE check (`make test-reference`): ldm.c's `sd vae-decode` and
`sd vae-encode` against diffusers' AutoencoderKL with the Stable Diffusion
config (block_out_channels [128,256,512,512], layers_per_block 2, 4 latent
channels, 83.7M parameters), randomly initialised.

Generated on demand (cached) under build/reference/vae/:
  diffusers/vae/        config.json + diffusion_pytorch_model.safetensors
  compvis.safetensors   the same weights under CompVis keys
                        (first_stage_model.encoder.down.0.block.0..., 1x1 convs
                        for the attention), as inside an SD checkpoint
  standalone.safetensors  the same without the prefix, as vae-ft-mse-840000
Checks (relative max error = max|ours - ref| / max|ref|):
  decode 512x512 (latent 64x64), diffusers folder        <= 1e-4
  encode 512x512 PNG -> latent mean * 0.18215            <= 1e-4
  decode through the CompVis file and the standalone VAE <= 1e-4 (skipped with
      the loader's message if the CompVis key mapping is unavailable)
  tiled decode (forced, 256 px tiles) vs untiled: the seam error, reported
On a failure, every block's output (sd --dump vs forward hooks) is compared
and the first divergence printed.

Usage: .venv-ref/bin/python tools/reference/test_reference_vae.py [--sd build/sd] [--size 512]
Exit status 0 when every check passes.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "build", "reference", "vae")
TOL = 1e-4   # issue 5: decoder output relative max error vs diffusers

SD_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4,
                 down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4,
                 block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                 norm_num_groups=32, sample_size=512, scaling_factor=0.18215)


def compvis_name(k):
    """diffusers AutoencoderKL state-dict key -> CompVis first_stage_model key."""
    p = k.split(".")
    res = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
           "conv_shortcut": "nin_shortcut"}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    if p[0] in ("quant_conv", "post_quant_conv"):
        return k
    side, rest = p[0], p[1:]
    if rest[0] == "conv_norm_out":
        return f"{side}.norm_out.{rest[1]}"
    if rest[0] in ("conv_in", "conv_out"):
        return k
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{side}.mid.block_{int(rest[2]) + 1}.{res[rest[3]]}.{rest[-1]}"
        return f"{side}.mid.attn_1.{attn[rest[3]]}.{rest[-1]}"
    i = int(rest[1])
    lvl, name = ("down", i) if rest[0] == "down_blocks" else ("up", 3 - i)
    if rest[2] == "resnets":
        return f"{side}.{lvl}.{name}.block.{rest[3]}.{res[rest[4]]}.{rest[-1]}"
    what = "downsample" if lvl == "down" else "upsample"
    return f"{side}.{lvl}.{name}.{what}.conv.{rest[-1]}"


def make_models():
    os.makedirs(OUT, exist_ok=True)
    ddir = os.path.join(OUT, "diffusers", "vae")
    paths = [os.path.join(ddir, "diffusion_pytorch_model.safetensors"),
             os.path.join(OUT, "compvis.safetensors"), os.path.join(OUT, "standalone.safetensors")]
    torch.manual_seed(0)
    if all(os.path.exists(p) for p in paths):
        return AutoencoderKL.from_pretrained(ddir).eval()
    print("generating the full-size random SD VAE into", OUT, flush=True)
    vae = AutoencoderKL(**SD_CONFIG)
    with torch.no_grad():   # GroupNorm affine terms away from 1/0
        for name, p in vae.named_parameters():
            if p.ndim == 1:
                p.add_(0.05 * torch.randn_like(p))
    vae.eval()
    vae.save_pretrained(ddir, safe_serialization=True)
    sd = {}
    for k, v in vae.state_dict().items():
        ck = compvis_name(k)
        if ".mid.attn_1." in ck and v.ndim == 2:
            v = v[:, :, None, None]   # CompVis AttnBlock uses 1x1 convs
        sd[ck] = v.contiguous()
    save_file(sd, paths[2])
    save_file({"first_stage_model." + k: v for k, v in sd.items()}, paths[1])
    return vae


def rel_err(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def run(cmd):
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, r.stderr.strip(), time.time() - t


def hook_dumps(vae, fn):
    """Every block output from forward hooks, by ldm_dump's names."""
    out, hooks = {}, []
    for name, mod in vae.named_modules():
        if name and (name.count(".") <= 4) and not name.endswith(("conv1", "conv2", "norm1", "norm2",
                                                                   "nonlinearity", "dropout")):
            hooks.append(mod.register_forward_hook(
                lambda m, a, o, name=name: out.__setitem__("vae." + name, o.detach().numpy())
                if torch.is_tensor(o) else None))
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in hooks:
            h.remove()
    return out


def compare_dumps(ours_dir, ref):
    print("  per-block comparison (first divergence marked):")
    first = True
    for name in sorted(ref, key=lambda n: os.path.getmtime(os.path.join(ours_dir, n + ".npy"))
                       if os.path.exists(os.path.join(ours_dir, n + ".npy")) else 0):
        p = os.path.join(ours_dir, name + ".npy")
        if not os.path.exists(p):
            continue
        got = np.load(p)
        if got.shape != ref[name].shape:
            print(f"    {name}: shape {got.shape} vs {ref[name].shape}")
            continue
        e = rel_err(got, ref[name])
        mark = ""
        if e > TOL and first:
            mark, first = "  <-- first divergence", False
        print(f"    {name:55s} rel {e:.2e}{mark}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd", default=os.path.join(ROOT, "build", "sd"))
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    vae = make_models()
    ddir = os.path.join(OUT, "diffusers")
    tmp = os.path.join(OUT, "run")
    os.makedirs(tmp, exist_ok=True)
    S, h = args.size, args.size // 8
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 4, h, h, generator=g)
    np.save(os.path.join(tmp, "latent.npy"), latent.numpy())
    pix = (torch.rand(S, S, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pix).save(os.path.join(tmp, "in.png"))
    failures = 0

    t = time.time()
    with torch.no_grad():
        ref_dec = vae.decode(latent / 0.18215).sample.numpy()
    print(f"diffusers decode {S}x{S}: {time.time() - t:.1f} s")
    x = torch.from_numpy(pix.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
    t = time.time()
    with torch.no_grad():
        ref_lat = (vae.encode(x).latent_dist.mean * 0.18215).numpy()
    print(f"diffusers encode {S}x{S}: {time.time() - t:.1f} s")

    def decode_check(label, src_flags, dump=None):
        nonlocal failures
        npy = os.path.join(tmp, "dec.npy")
        cmd = [args.sd, "vae-decode", *src_flags, "--no-vae-tiling", "--overwrite", "--npy", npy,
               os.path.join(tmp, "latent.npy"), os.path.join(tmp, "dec.png")]
        if dump:
            cmd[2:2] = ["--dump", dump]
        rc, err, dt = run(cmd)
        if rc != 0:
            if "CompVis" in err and "not supported" in err:
                print(f"  SKIP    {label}: {err}")
                return None
            print(f"  NOT OK  {label}: sd exited {rc}: {err}")
            failures += 1
            return None
        got = np.load(npy)
        e = rel_err(got, ref_dec)
        ok = e <= TOL
        failures += not ok
        print(f"  {'ok' if ok else 'NOT OK':7s} {label}: rel max err {e:.2e} (tol {TOL:.0e}), "
              f"max abs {np.abs(got - ref_dec).max():.2e}, {dt:.1f} s")
        return ok

    ok = decode_check(f"decode {S}x{S} (diffusers folder)", ["--ckpt", ddir])
    if ok is False:
        dump = os.path.join(tmp, "dump")
        decode_check("decode again with --dump", ["--ckpt", ddir], dump)
        compare_dumps(dump, hook_dumps(vae, lambda: vae.decode(latent / 0.18215)))
    decode_check(f"decode {S}x{S} (CompVis single file)", ["--ckpt", os.path.join(OUT, "compvis.safetensors")])
    decode_check(f"decode {S}x{S} (--vae standalone CompVis VAE)", ["--vae", os.path.join(OUT, "standalone.safetensors")])

    # encode
    lat_path = os.path.join(tmp, "lat.npy")
    if os.path.exists(lat_path):
        os.remove(lat_path)
    rc, err, dt = run([args.sd, "vae-encode", "--ckpt", ddir, "--no-vae-tiling",
                       os.path.join(tmp, "in.png"), lat_path])
    if rc != 0:
        print(f"  NOT OK  encode: sd exited {rc}: {err}")
        failures += 1
    else:
        got = np.load(lat_path)
        e = rel_err(got, ref_lat)
        failures += e > TOL
        print(f"  {'ok' if e <= TOL else 'NOT OK':7s} encode {S}x{S} -> latent mean * 0.18215: "
              f"rel max err {e:.2e} (tol {TOL:.0e}), {dt:.1f} s")

    # tiling: forced 256 px tiles (overlap 64 px) vs untiled -- the seam error
    untiled = np.load(os.path.join(tmp, "dec.npy")) if os.path.exists(os.path.join(tmp, "dec.npy")) else None
    npy = os.path.join(tmp, "dec_tiled.npy")
    rc, err, dt = run([args.sd, "vae-decode", "--ckpt", ddir, "--vae-tiling", "--vae-tile", str(h // 2),
                       "--overwrite", "--npy", npy, os.path.join(tmp, "latent.npy"),
                       os.path.join(tmp, "dec_tiled.png")])
    if rc != 0 or untiled is None:
        print(f"  NOT OK  tiled decode: {err}")
        failures += 1
    else:
        got = np.load(npy)
        d = np.abs(got - ref_dec)
        to8 = lambda a: np.round(np.clip(a * 0.5 + 0.5, 0, 1) * 255)
        d8 = np.abs(to8(got) - to8(ref_dec))
        print(f"  info    tiled ({h // 2}x{h // 2} latent tiles, overlap {h // 8}) vs untiled {S}x{S}: "
              f"max abs {d.max():.3f}, mean abs {d.mean():.4f} (output range "
              f"[{ref_dec.min():.2f}, {ref_dec.max():.2f}]); uint8: mean {d8.mean():.2f}, "
              f"max {d8.max():.0f}; {dt:.1f} s")
    print(f"test_reference_vae: {'all passed' if failures == 0 else f'{failures} failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
