"""Fixtures for checkpoint loading and the CLIP text encoder (tests/fixtures/ckpt/).

Builds tiny random Stable Diffusion models in every layout and format the C
loader reads, plus reference CLIP outputs:

  sd1/            diffusers folder, fp32 .safetensors (unet/ vae/ text_encoder/)
  sd1_bin/        the same model as a diffusers folder of fp16 .bin files
                  (torch.save zips: diffusion_pytorch_model.bin, pytorch_model.bin)
  sd1.safetensors CompVis single file (fp32) with model_ema.* keys (ignored)
  sd1.ckpt        CompVis single file written by torch.save (fp16), Lightning-
                  style top level {epoch, global_step, state_dict}
  sd2/            diffusers folder: 2-layer CLIPTextModel converted from open_clip
  sd2.ckpt        CompVis single file: open_clip text tower (3 resblocks, fused
                  attn.in_proj), linear-projection UNet
  clip_ids.npy              [N,77] token ids (no tokenizer needed)
  clip_sd1_out.npy          transformers CLIPTextModel last_hidden_state [N,77,D]
  clip_sd2_out.npy          open_clip path of SD2: resblocks 0..L-2 then ln_final
  bad/*.ckpt                hostile / broken archives (tests/test_ckpt.c)

Every weight is rounded to fp16 and back, so fp32 and fp16 files hold the same
numbers and every layout must give bit-identical tensors.

The CompVis key names are produced by this script's own mapping
(the table of docs/03-clip-and-checkpoints.md section 3), checked here against diffusers' single-file
converter when it is available, and independently of ldm/io/weights.c.
Never pickles a real callable: the malicious pickles are assembled opcode by
opcode.
"""
import io
import json
import os
import shutil
import struct
import zipfile

import numpy as np
import torch
from safetensors.torch import save_file

OUT = "tests/fixtures/ckpt"
torch.manual_seed(1234)
np.random.seed(1234)

# ---------------------------------------------------------------------------
# tiny configs

VOCAB = 128         # ids in the fixtures stay below this
D1, D2 = 32, 32      # text widths
CLIP_SD1 = dict(vocab_size=VOCAB, hidden_size=D1, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                layer_norm_eps=1e-5, projection_dim=D1, bos_token_id=VOCAB - 2,
                eos_token_id=VOCAB - 1, pad_token_id=1)
SD2_LAYERS = 3      # open_clip resblocks in the CompVis file; diffusers keeps 2
SD2_HEADS = 2


def unet_config(sd2):
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=[4, 8, 8],
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                cross_attention_dim=D2 if sd2 else D1, norm_num_groups=2,
                attention_head_dim=[1, 2, 2] if sd2 else 2,
                use_linear_projection=bool(sd2), upcast_attention=bool(sd2))


VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[4, 8],
                  down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1,
                  norm_num_groups=2, sample_size=16, scaling_factor=0.18215)


def round_fp16_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2 if p.dim() > 1 else p + 0.1 * torch.randn_like(p))
            p.copy_(p.half().float())
    return module


# ---------------------------------------------------------------------------
# the CompVis <-> diffusers key mapping, written from the renaming rules of
# docs/03-clip-and-checkpoints.md section 3

RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
       "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_to_compvis(sd, cfg):
    L = cfg["layers_per_block"]
    up_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        top = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
        if p[0] in top:
            n = top[p[0]] + "." + ".".join(p[1:])
        elif p[0] == "time_embedding":
            n = {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[p[1]] + "." + ".".join(p[2:])
        elif p[0] == "down_blocks":
            i = int(p[1])
            if p[2] == "resnets":
                n = f"input_blocks.{1 + i * (L + 1) + int(p[3])}.0.{RES[p[4]]}." + ".".join(p[5:])
            elif p[2] == "attentions":
                n = f"input_blocks.{1 + i * (L + 1) + int(p[3])}.1." + ".".join(p[4:])
            else:  # downsamplers.0.conv
                n = f"input_blocks.{1 + i * (L + 1) + L}.0.op." + ".".join(p[5:])
        elif p[0] == "mid_block":
            if p[1] == "resnets":
                n = f"middle_block.{0 if p[2] == '0' else 2}.{RES[p[3]]}." + ".".join(p[4:])
            else:
                n = "middle_block.1." + ".".join(p[3:])
        elif p[0] == "up_blocks":
            i = int(p[1])
            if p[2] == "resnets":
                n = f"output_blocks.{i * (L + 1) + int(p[3])}.0.{RES[p[4]]}." + ".".join(p[5:])
            elif p[2] == "attentions":
                n = f"output_blocks.{i * (L + 1) + int(p[3])}.1." + ".".join(p[4:])
            else:  # upsamplers.0.conv
                n = f"output_blocks.{i * (L + 1) + L}.{2 if up_attn[i] else 1}.conv." + ".".join(p[5:])
        else:
            raise KeyError(k)
        out["model.diffusion_model." + n] = v
    return out


def vae_to_compvis(sd, cfg):
    NL = len(cfg["block_out_channels"])
    res = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
           "conv_shortcut": "nin_shortcut"}
    att = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if p[0] in ("quant_conv", "post_quant_conv"):
            n = k
        else:
            c, q = p[0], p[1:]
            if q[0] in ("conv_in", "conv_out"):
                n = f"{c}." + ".".join(q)
            elif q[0] == "conv_norm_out":
                n = f"{c}.norm_out." + ".".join(q[1:])
            elif q[0] == "mid_block" and q[1] == "resnets":
                n = f"{c}.mid.block_{int(q[2]) + 1}.{res[q[3]]}." + ".".join(q[4:])
            elif q[0] == "mid_block":
                rest = q[4:] if q[3] == "to_out" else q[4:]
                if q[3] == "to_out":
                    rest = q[5:]
                n = f"{c}.mid.attn_1.{att[q[3]]}." + ".".join(rest)
                if v.dim() == 2:
                    v = v[:, :, None, None]  # CompVis: 1x1 conv
            elif q[0] in ("down_blocks", "up_blocks"):
                i = int(q[1])
                lvl, name = (i, "down") if q[0] == "down_blocks" else (NL - 1 - i, "up")
                if q[2] == "resnets":
                    n = f"{c}.{name}.{lvl}.block.{q[3]}.{res[q[4]]}." + ".".join(q[5:])
                else:
                    n = f"{c}.{name}.{lvl}.{name}sample.conv." + ".".join(q[5:])
            else:
                raise KeyError(k)
        out["first_stage_model." + n] = v
    return out


def openclip_to_diffusers(sd, layers):
    """open_clip TextTransformer state dict -> transformers CLIPTextModel (first `layers`)."""
    out = {"embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "embeddings.position_embedding.weight": sd["positional_embedding"],
           "final_layer_norm.weight": sd["ln_final.weight"],
           "final_layer_norm.bias": sd["ln_final.bias"]}
    m = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
         "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}
    for i in range(layers):
        pre, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for a, b in m.items():
            for s in ("weight", "bias"):
                out[dst + b + "." + s] = sd[pre + a + "." + s]
        for s in ("weight", "bias"):
            q, k, v = sd[pre + "attn.in_proj_" + s].chunk(3, dim=0)
            out[dst + "self_attn.q_proj." + s] = q
            out[dst + "self_attn.k_proj." + s] = k
            out[dst + "self_attn.v_proj." + s] = v
    return out


# ---------------------------------------------------------------------------
# writers

def contiguous(sd, dtype=None):
    return {k: (v.to(dtype) if dtype else v).detach().contiguous().clone() for k, v in sd.items()}


def write_diffusers(folder, unet, vae, text_sd, text_cfg, pred, bin_fp16=False):
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    parts = {"unet": (unet.state_dict() if unet else None, dict(unet.config) if unet else None,
                      "diffusion_pytorch_model"),
             "vae": (vae.state_dict() if vae else None, dict(vae.config) if vae else None,
                     "diffusion_pytorch_model"),
             "text_encoder": (text_sd, text_cfg, "model")}
    for sub, (sd, cfg, base) in parts.items():
        if sd is None:
            continue
        os.makedirs(f"{folder}/{sub}")
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}
        with open(f"{folder}/{sub}/config.json", "w") as f:
            json.dump(cfg, f, indent=1, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
        if bin_fp16:  # torch.save zips, as diffusers/transformers wrote them before safetensors
            base = "pytorch_model" if sub == "text_encoder" else base
            torch.save(contiguous(sd, torch.float16), f"{folder}/{sub}/{base}.bin")
        else:
            save_file(contiguous(sd), f"{folder}/{sub}/{base}.safetensors")
    os.makedirs(f"{folder}/scheduler")
    with open(f"{folder}/scheduler/scheduler_config.json", "w") as f:
        json.dump({"_class_name": "PNDMScheduler", "prediction_type": pred, "num_train_timesteps": 1000,
                   "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}, f)


# ---------------------------------------------------------------------------
# models and reference outputs

def main():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from open_clip.transformer import TextTransformer
    from transformers import CLIPTextConfig, CLIPTextModel

    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)

    # token ids: SOT, a few words, EOT, then padding (49407-style for SD1: here
    # VAVOCAB-1; 0 for SD2) -- the encoder itself never looks at ids' meaning.
    g = np.random.default_rng(7)
    ids = np.zeros((3, 77), np.int64)
    for r, n in enumerate([5, 12, 75]):
        ids[r, 0] = VOCAB - 2
        ids[r, 1:1 + n] = g.integers(2, VOCAB - 2, n)
        ids[r, 1 + n] = VOCAB - 1
        ids[r, 2 + n:] = VOCAB - 1 if r != 1 else 0
    np.save(f"{OUT}/clip_ids.npy", ids.astype(np.float32))

    # ---- SD1 ---------------------------------------------------------------
    tcfg = CLIPTextConfig(**CLIP_SD1)
    text = round_fp16_(CLIPTextModel(tcfg)).eval()
    with torch.no_grad():
        out1 = text(input_ids=torch.from_numpy(ids)).last_hidden_state
    np.save(f"{OUT}/clip_sd1_out.npy", out1.numpy().astype(np.float32))
    unet1 = round_fp16_(UNet2DConditionModel(**unet_config(False))).eval()
    vae = round_fp16_(AutoencoderKL(**VAE_CONFIG)).eval()
    # transformers 5 names CLIPTextModel weights without the "text_model."
    # prefix that transformers 4 (and every published SD folder) wrote: the
    # SD1 folder uses the prefixed names, the SD2 folder the bare ones.
    text_sd = {k: v for k, v in contiguous(text.state_dict()).items() if "position_ids" not in k}
    text_sd = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in text_sd.items()}
    tcfg_json = {k: v for k, v in tcfg.to_dict().items()
                 if k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "max_position_embeddings", "hidden_act",
                          "layer_norm_eps", "projection_dim", "bos_token_id", "eos_token_id",
                          "pad_token_id", "architectures", "model_type")}
    tcfg_json["architectures"] = ["CLIPTextModel"]
    write_diffusers(f"{OUT}/sd1", unet1, vae, text_sd, tcfg_json, "epsilon")
    write_diffusers(f"{OUT}/sd1_bin", unet1, vae, text_sd, tcfg_json, "epsilon", bin_fp16=True)

    comp1 = {}
    comp1.update(unet_to_compvis(unet1.state_dict(), unet_config(False)))
    comp1.update(vae_to_compvis(vae.state_dict(), VAE_CONFIG))
    for k, v in text_sd.items():
        comp1["cond_stage_model.transformer." + k] = v  # k starts with "text_model."
    check_compvis_with_diffusers(comp1, unet1, vae)
    ema = {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7, dtype=torch.int32).float(),
           "model_ema.diffusion_modelinput_blocks00weight": torch.zeros(4, 4, 3, 3)}
    save_file(contiguous({**comp1, **ema}), f"{OUT}/sd1.safetensors", metadata={"format": "pt"})
    torch.save({"epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2",
                "state_dict": contiguous({**comp1, **ema}, torch.float16)}, f"{OUT}/sd1.ckpt")

    # ---- SD2 ---------------------------------------------------------------
    oc = TextTransformer(context_length=77, vocab_size=VOCAB, width=D2, heads=SD2_HEADS,
                         layers=SD2_LAYERS, output_dim=D2, act_layer=torch.nn.GELU)
    oc = round_fp16_(oc).eval()
    with torch.no_grad():
        # FrozenOpenCLIPEmbedder(layer="penultimate"): all resblocks but the
        # last, then ln_final. open_clip's own modules, not transformers.
        x, mask = oc._embeds(torch.from_numpy(ids))
        if not oc.transformer.batch_first:
            x = x.transpose(0, 1)
        for r in oc.transformer.resblocks[:-1]:
            x = r(x, attn_mask=mask)
        if not oc.transformer.batch_first:
            x = x.transpose(0, 1)
        out2 = oc.ln_final(x)
    np.save(f"{OUT}/clip_sd2_out.npy", out2.numpy().astype(np.float32))
    oc_sd = contiguous(oc.state_dict())
    t2cfg = CLIPTextConfig(vocab_size=VOCAB, hidden_size=D2, intermediate_size=4 * D2,
                           num_hidden_layers=SD2_LAYERS - 1, num_attention_heads=SD2_HEADS,
                           max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                           projection_dim=D2, pad_token_id=0, bos_token_id=VOCAB - 2,
                           eos_token_id=VOCAB - 1)
    text2 = CLIPTextModel(t2cfg).eval()
    t2sd = openclip_to_diffusers(oc_sd, SD2_LAYERS - 1)
    missing = text2.load_state_dict(t2sd, strict=False)
    assert not missing.missing_keys, missing
    with torch.no_grad():
        out2_hf = text2(input_ids=torch.from_numpy(ids)).last_hidden_state
    err = (out2_hf - out2).abs().max().item()
    assert err < 1e-5, f"transformers SD2 conversion differs from open_clip by {err}"
    t2json = {k: v for k, v in t2cfg.to_dict().items() if k in tcfg_json}
    t2json["architectures"] = ["CLIPTextModel"]
    unet2 = round_fp16_(UNet2DConditionModel(**unet_config(True))).eval()
    write_diffusers(f"{OUT}/sd2", unet2, vae, contiguous(t2sd), t2json, "v_prediction")
    comp2 = {}
    comp2.update(unet_to_compvis(unet2.state_dict(), unet_config(True)))
    comp2.update(vae_to_compvis(vae.state_dict(), VAE_CONFIG))
    for k, v in oc_sd.items():
        comp2["cond_stage_model.model." + k] = v
    check_compvis_with_diffusers(comp2, unet2, vae)
    torch.save({"global_step": 110000, "state_dict": contiguous(comp2, torch.float16)},
               f"{OUT}/sd2.ckpt")

    # A training checkpoint's extras around the state dict (numpy scalars and
    # arrays, a torch dtype, a set): allowed data globals, must load.
    torch.save({"state_dict": {"w": torch.arange(4.0)}, "best": np.float64(1.5),
                "arr": np.zeros(3), "dtype": torch.float16, "tags": {1, 2}, "step": np.int64(7),
                "nested": {"a": [1, (2, 3.5)], "b": None}, "global_step": 875000},
               f"{OUT}/lightning_extras.ckpt")
    write_bad(comp1)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"fixtures_ckpt: SD2 transformers vs open_clip max err {err:.2e}; {total / 1e6:.2f} MB")


def check_compvis_with_diffusers(comp, unet, vae):
    """Cross-check this script's mapping with diffusers' own single-file converter."""
    try:
        from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                         convert_ldm_vae_checkpoint)
    except Exception as e:  # pragma: no cover - depends on the diffusers version
        print("  (diffusers single-file converter unavailable, skipped:", e, ")")
        return
    cu = convert_ldm_unet_checkpoint(dict(comp), dict(unet.config))
    cv = convert_ldm_vae_checkpoint(dict(comp), dict(vae.config))
    for ref, conv, what in ((unet.state_dict(), cu, "unet"), (vae.state_dict(), cv, "vae")):
        assert set(ref) == set(conv), (what, set(ref) ^ set(conv))
        for k in ref:
            assert torch.equal(ref[k], conv[k].reshape(ref[k].shape)), (what, k)
    print("  CompVis mapping agrees with diffusers' converter (unet, vae)")


# ---------------------------------------------------------------------------
# hostile and broken files, assembled byte by byte

def pk_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def tensor_pickle(storage_type=b"torch\nFloatStorage\n", key="0", numel=4, shape=(4,),
                  stride=(1,), offset=0, name="w"):
    """A state dict {name: tensor} in protocol 2, as torch.save writes it."""
    def tup(xs):
        return b"(" + b"".join(b"J" + struct.pack("<i", x) for x in xs) + b"t"
    p = b"\x80\x02}(" + pk_str(name)
    p += b"ctorch._utils\n_rebuild_tensor_v2\n("
    p += b"(" + pk_str("storage") + b"c" + storage_type + pk_str(key) + pk_str("cpu")
    p += b"J" + struct.pack("<i", numel) + b"tQ"
    p += b"J" + struct.pack("<i", offset) + tup(shape) + tup(stride) + b"\x89"
    p += b"ccollections\nOrderedDict\n)Rt" + b"R" + b"u."
    return p


def zip_bytes(files, compress=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in files:
            z.writestr(zipfile.ZipInfo(name), data,
                       compress_type=compress if (compress and name.endswith(".pkl")) else zipfile.ZIP_STORED)
    return buf.getvalue()


def write_bad(comp1):
    d = f"{OUT}/bad"
    os.makedirs(d)
    # The payloads would create this file (relative to the working directory,
    # the repository root in `make test`) if anything executed them.
    sentinel = "ldm_pwned_by_ckpt"
    data4 = struct.pack("<4f", 1, 2, 3, 4)

    def ckpt(name, pkl, storages=(("0", data4),), compress=None):
        files = [("archive/data.pkl", pkl), ("archive/byteorder", b"little")]
        files += [(f"archive/data/{k}", v) for k, v in storages]
        files += [("archive/version", b"3\n")]
        with open(f"{d}/{name}.ckpt", "wb") as f:
            f.write(zip_bytes(files, compress))

    good = tensor_pickle()
    ckpt("good", good)  # control: must load
    # Lightning's callbacks state keys a dict by the ModelCheckpoint class
    # (older versions): an allowed data global, must load (written outside bad/).
    ckpt("good_callbacks", good[:-2] + pk_str("callbacks") + b"}" +
         b"cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\n" +
         b"}" + pk_str("best_model_score") + b"Ns" + b"s" + b"u.")
    os.replace(f"{d}/good_callbacks.ckpt", f"{OUT}/lightning_callbacks.ckpt")
    # GLOBAL os.system + REDUCE: torch.load would run the shell command.
    ckpt("os_system", b"\x80\x02cos\nsystem\n" + pk_str("touch " + sentinel) + b"\x85R.")
    ckpt("builtins_eval", b"\x80\x02cbuiltins\neval\n" +
         pk_str("open('%s','w').write('x')" % sentinel) + b"\x85R.")
    ckpt("subprocess", b"\x80\x02csubprocess\ncheck_call\n((" + pk_str("touch") + pk_str(sentinel) +
         b"lt" + b"R.")
    # __reduce__ of an arbitrary class inside an otherwise valid state dict.
    ckpt("reduce_class", good[:-2] + pk_str("evil") + b"c__main__\nPayload\n)R" + b"u.")
    # STACK_GLOBAL (protocol 4) route to the same function.
    ckpt("stack_global", b"\x80\x04" + b"\x8c\x02os\x8c\x06system\x93" + pk_str("touch " + sentinel) +
         b"\x85R.")
    ckpt("inst_opcode", b"(" + pk_str("touch " + sentinel) + b"ios\nsystem\n.")
    ckpt("unknown_opcode", b"\x80\x02\xff.")
    ckpt("no_stop", good[:-1])
    ckpt("deep_marks", b"\x80\x02" + b"(" * 100000 + b".")
    ckpt("memo_huge", b"\x80\x02}r\xff\xff\xff\x7f.")
    ckpt("bad_storage_key", tensor_pickle(key="../../etc/passwd"))
    ckpt("storage_short", tensor_pickle(numel=4), storages=(("0", data4[:12]),))
    ckpt("shape_past_storage", tensor_pickle(shape=(5,)))
    ckpt("offset_past_storage", tensor_pickle(offset=2, shape=(3,)))
    ckpt("huge_shape", tensor_pickle(shape=(2**31 - 1, 2**31 - 1, 2**31 - 1), stride=(1, 1, 1)))
    ckpt("noncontiguous", tensor_pickle(shape=(2, 2), stride=(1, 2)))
    ckpt("deflated", good, compress=zipfile.ZIP_DEFLATED)
    ckpt("unknown_storage_type", tensor_pickle(storage_type=b"torch\nEvilStorage\n"))
    whole = open(f"{d}/good.ckpt", "rb").read()
    open(f"{d}/truncated_half.ckpt", "wb").write(whole[:len(whole) // 2])
    open(f"{d}/truncated_tail.ckpt", "wb").write(whole[:-10])
    # a storage entry whose local header claims data past the end of the file
    b = bytearray(whole)
    i = b.find(b"PK\x01\x02", 0)
    while i >= 0:  # central entries: make the first storage's size enormous
        n = struct.unpack("<H", b[i + 28:i + 30])[0]
        if b[i + 46:i + 46 + n] == b"archive/data/0":
            b[i + 20:i + 28] = struct.pack("<II", 0x7ffffff0, 0x7ffffff0)
        i = b.find(b"PK\x01\x02", i + 4)
    open(f"{d}/entry_past_end.ckpt", "wb").write(bytes(b))
    open(f"{d}/legacy_pickle.ckpt", "wb").write(b"\x80\x02\x8a\x0a" + b"\x00" * 16)

    # Fuzzing seeds (make fuzz): whole archives for fuzz_ckpt, bare pickles
    # (storages named "0".."3", 64 bytes each in the harness) for fuzz_pickle.
    for name, sub in (("fuzz_ckpt", None), ("fuzz_pickle", None)):
        shutil.rmtree(f"tests/fuzz/seeds/{name}", ignore_errors=True)
        os.makedirs(f"tests/fuzz/seeds/{name}")
    for f in sorted(os.listdir(d)):
        shutil.copy(f"{d}/{f}", f"tests/fuzz/seeds/fuzz_ckpt/{f}")
    pickles = {"tensor": tensor_pickle(numel=16), "os_system": b"\x80\x02cos\nsystem\n" +
               pk_str("true") + b"\x85R.", "lightning": lightning_pickle()}
    for name, pkl in pickles.items():
        open(f"tests/fuzz/seeds/fuzz_pickle/{name}.pkl", "wb").write(pkl)


def lightning_pickle():
    """A Lightning-style top level, as torch.save writes it (protocol 2)."""
    buf = io.BytesIO()
    sd = {"a": torch.zeros(16), "b": torch.zeros(4, 8, dtype=torch.float16)}  # 64-byte storages
    torch.save({"epoch": 1, "global_step": 2, "pytorch-lightning_version": "1.4.2",
                "state_dict": sd, "callbacks": {"x": [1.5, None, True]}}, buf)
    z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    name = [n for n in z.namelist() if n.endswith("data.pkl")][0]
    return z.read(name)


if __name__ == "__main__":
    main()
