"""
notebooks/ldm_py.py -- ctypes bindings to build/libldm.so for the notebooks.

No compiled extension: the C structs the notebooks touch are mirrored here
field by field (ctypes.Structure, same order and types as the headers), and
notebooks/layout_check.c prints the real sizeof/offsetof of each so
`make notebooks` fails when a header changes and this file does not
(check_layout()). Structs the notebooks only pass around (ldm_clip, ldm_vae,
the tokenizer) are opaque buffers.

What it offers (all arrays are float32 NumPy arrays in PyTorch order):
    lib = load()                                  the shared library
    tok = Tokenizer()                             ldm_tokenizer_* (BPE)
    m = Model(path)                               ldm_model_open + CLIP/UNet/VAE
    m.encode_prompt(tok, "a red circle on the left")   ids -> context [1,77,D]
    m.unet(x, t, context, hook=fn)                one UNet call (+ every named block)
    m.vae_encode(x) / m.vae_decode(z)             the autoencoder
    shape_scene(...), dataset_scene(i)            images of the tiny model's domain
                                                  (tools/train/dataset.py)
    Schedule()                                    abar, sigmas, q_sample
    sample(name, noise, model_fn, ...)            any sampler of samplers/ in C,
                                                  the network a Python callback
    sampler_step(name, x, sigma_from, sigma_to, model_fn)  one k-diffusion step
    Pipeline(path).generate(prompt, ...)          ldm_generate: txt2img / img2img
    UNetFolder(dir), VaeFolder(dir)               one component alone (fixtures)
    group_norm(...), attention(...)               single ops of ldm/backend/ops.h
    dumps(fn) / read_dump_dir(dir)                dumped intermediates (ldm_dump_set_dir) as arrays

Leaves out: the CUDA backend (the notebooks run on `cpu`), prompt weighting
outside the pipeline, progress callbacks, freeing on garbage collection (models
live as long as the notebook kernel; Model.close() releases one).
"""
import ctypes as C
import glob
import json
import os
import shutil
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_DIMS = 8
MAX_LEVELS = 8

# ---- the struct mirrors (keep in the order of the headers) -----------------

f32p = C.POINTER(C.c_float)


class Tensor(C.Structure):  # ldm/core/tensor.h ldm_tensor
    _fields_ = [("data", f32p), ("ndim", C.c_int), ("shape", C.c_int64 * MAX_DIMS),
                ("numel", C.c_int64), ("ops", C.c_void_p), ("owns", C.c_int),
                ("dtype", C.c_int)]  # 0 = fp32 (every activation); 1 f16, 2 bf16 weights


class TensorEntry(C.Structure):  # ldm/io/tensorfile.h ldm_tensor_entry
    _fields_ = [("name", C.c_char_p), ("dtype", C.c_int), ("ndim", C.c_int),
                ("shape", C.c_int64 * MAX_DIMS), ("numel", C.c_int64),
                ("data", C.c_void_p), ("nbytes", C.c_uint64), ("owned", C.c_void_p)]


class TensorFile(C.Structure):  # ldm_tensor_file
    _fields_ = [("path", C.c_char_p), ("format", C.c_char_p),
                ("entries", C.POINTER(TensorEntry)), ("n_entries", C.c_int64),
                ("meta_keys", C.c_void_p), ("meta_values", C.c_void_p), ("n_meta", C.c_int),
                ("map", C.c_void_p), ("map_size", C.c_size_t)]


class Weights(C.Structure):  # ldm/io/weights.h ldm_weights
    _fields_ = [("file", C.c_void_p), ("comp", C.c_int), ("layout", C.c_int),
                ("prefix", C.c_char_p), ("ops", C.c_void_p), ("n_params", C.c_int64),
                ("n_loaded", C.c_int64), ("layers_per_block", C.c_int), ("n_levels", C.c_int),
                ("dtype", C.c_int), ("map", C.c_int), ("low_memory", C.c_int)]


LV = C.c_int * MAX_LEVELS


class UnetConfig(C.Structure):  # ldm/model.h ldm_unet_config
    _fields_ = [("in_channels", C.c_int), ("out_channels", C.c_int), ("sample_size", C.c_int),
                ("n_levels", C.c_int), ("block_out_channels", LV), ("layers_per_block", C.c_int),
                ("down_attn", LV), ("up_attn", LV), ("mid_attn", C.c_int),
                ("attention_head_dim", LV), ("num_heads", LV),
                ("transformer_layers_per_block", C.c_int), ("cross_attention_dim", C.c_int),
                ("use_linear_projection", C.c_int), ("upcast_attention", C.c_int),
                ("norm_num_groups", C.c_int), ("norm_eps", C.c_float),
                ("flip_sin_to_cos", C.c_int), ("freq_shift", C.c_int), ("time_embed_dim", C.c_int),
                ("num_class_embeds", C.c_int), ("only_cross_attention", LV),
                ("mid_only_cross_attention", C.c_int)]


class VaeConfig(C.Structure):  # ldm_vae_config
    _fields_ = [("in_channels", C.c_int), ("out_channels", C.c_int), ("n_levels", C.c_int),
                ("block_out_channels", LV), ("layers_per_block", C.c_int),
                ("latent_channels", C.c_int), ("norm_num_groups", C.c_int),
                ("norm_eps", C.c_float), ("sample_size", C.c_int), ("scaling_factor", C.c_float),
                ("use_quant_conv", C.c_int), ("use_post_quant_conv", C.c_int),
                ("mid_block_add_attention", C.c_int)]


class ClipConfig(C.Structure):  # ldm_clip_config
    _fields_ = [("vocab_size", C.c_int), ("hidden_size", C.c_int), ("intermediate_size", C.c_int),
                ("num_hidden_layers", C.c_int), ("num_attention_heads", C.c_int),
                ("max_position_embeddings", C.c_int), ("hidden_act", C.c_int),
                ("layer_norm_eps", C.c_float), ("skip_last_layers", C.c_int),
                ("pad_token_id", C.c_int)]


class ModelOptions(C.Structure):  # ldm_model_options
    _fields_ = [("ops", C.c_void_p), ("prediction", C.c_int), ("config_dir", C.c_char_p)]


class ModelStruct(C.Structure):  # ldm_model
    _fields_ = [("path", C.c_char_p), ("layout", C.c_int), ("family", C.c_int),
                ("prediction", C.c_int), ("prediction_why", C.c_char * 160),
                ("unet", UnetConfig), ("vae", VaeConfig), ("clip", ClipConfig),
                ("files", TensorFile * 3), ("n_files", C.c_int),
                ("has_unet", C.c_int), ("has_vae", C.c_int), ("has_text", C.c_int),
                ("unet_w", Weights), ("vae_w", Weights), ("clip_w", Weights),
                ("global_step", C.c_int64), ("tokenizer_dir", C.c_char_p)]


class Arena(C.Structure):  # ldm/core/arena.h ldm_arena (blocks: opaque to the notebooks)
    _fields_ = [("name", C.c_char_p), ("ops", C.c_void_p), ("raw", C.c_void_p),
                ("base", C.c_void_p), ("size", C.c_size_t), ("blocks", C.c_void_p),
                ("n_blocks", C.c_int), ("cap_blocks", C.c_int), ("used", C.c_size_t),
                ("peak", C.c_size_t), ("peak_ever", C.c_size_t), ("n_allocs", C.c_int64)]


class UnetResblock(C.Structure):  # ldm/unet.h ldm_unet_resblock
    _fields_ = [("cin", C.c_int), ("cout", C.c_int)] + [
        (n, Tensor) for n in ("norm1_w", "norm1_b", "conv1_w", "conv1_b", "temb_w", "temb_b",
                              "norm2_w", "norm2_b", "conv2_w", "conv2_b", "short_w", "short_b")]


class UnetAttn(C.Structure):  # ldm_unet_attn
    _fields_ = [(n, Tensor) for n in ("q_w", "k_w", "v_w", "out_w", "out_b")]


class UnetTBlock(C.Structure):  # ldm_unet_tblock
    _fields_ = [("norm1_w", Tensor), ("norm1_b", Tensor), ("attn1", UnetAttn),
                ("norm2_w", Tensor), ("norm2_b", Tensor), ("attn2", UnetAttn),
                ("norm3_w", Tensor), ("norm3_b", Tensor), ("ff1_w", Tensor), ("ff1_b", Tensor),
                ("ff2_w", Tensor), ("ff2_b", Tensor)]


class UnetTransformer(C.Structure):  # ldm_unet_transformer
    _fields_ = [("c", C.c_int), ("d", C.c_int), ("heads", C.c_int), ("depth", C.c_int),
                ("linear", C.c_int), ("norm_w", Tensor), ("norm_b", Tensor),
                ("proj_in_w", Tensor), ("proj_in_b", Tensor), ("blocks", C.POINTER(UnetTBlock)),
                ("proj_out_w", Tensor), ("proj_out_b", Tensor), ("only_cross", C.c_int)]


UNET_KINDS = ["conv_in", "res", "attn", "down", "up", "out"]  # ldm_unet_kind


class UnetBlock(C.Structure):  # ldm_unet_block
    _fields_ = [("kind", C.c_int), ("name", C.c_char * 48), ("group", C.c_char * 24),
                ("level", C.c_int), ("cin", C.c_int), ("cout", C.c_int), ("skip", C.c_int),
                ("push", C.c_int), ("heads", C.c_int), ("res", UnetResblock),
                ("tr", UnetTransformer), ("conv_w", Tensor), ("conv_b", Tensor),
                ("norm_w", Tensor), ("norm_b", Tensor), ("flops", C.c_double),
                ("secs", C.c_double)]


HOOK_FN = C.CFUNCTYPE(None, C.c_void_p, C.c_char_p, C.POINTER(Tensor))


class UnetDeepcache(C.Structure):  # ldm_unet_deepcache
    _fields_ = [("on", C.c_int), ("branch", C.c_int), ("down_end", C.c_int), ("up_start", C.c_int),
                ("reuse", C.c_int), ("was_cached", C.c_int), ("feat", Tensor)]


class UnetStruct(C.Structure):  # ldm_unet
    _fields_ = [("cfg", UnetConfig), ("ops", C.c_void_p), ("temb", C.c_int),
                ("time_w1", Tensor), ("time_b1", Tensor), ("time_w2", Tensor), ("time_b2", Tensor),
                ("class_w", Tensor), ("blocks", C.POINTER(UnetBlock)), ("n_blocks", C.c_int), ("n_params", C.c_int64),
                ("arena", Arena), ("flops", C.c_double),
                ("hook", HOOK_FN), ("hook_ctx", C.c_void_p), ("release_file", C.c_void_p),
                ("deepcache", UnetDeepcache)]


class ClipLayer(C.Structure):  # ldm/clip.h ldm_clip_layer
    _fields_ = [(n, Tensor) for n in ("ln1_w", "ln1_b", "q_w", "k_w", "v_w", "o_w", "q_b", "k_b",
                                      "v_b", "o_b", "ln2_w", "ln2_b", "fc1_w", "fc1_b", "fc2_w",
                                      "fc2_b")]


class ClipStruct(C.Structure):  # ldm_clip
    _fields_ = [("cfg", ClipConfig), ("n_layers", C.c_int), ("tok_emb", Tensor),
                ("pos_emb", Tensor), ("layers", C.POINTER(ClipLayer)), ("lnf_w", Tensor),
                ("lnf_b", Tensor), ("ops", C.c_void_p), ("arena", Arena)]


class VaeFile(C.Structure):  # ldm/model.h ldm_vae_file
    _fields_ = [("file", TensorFile), ("w", Weights), ("cfg", VaeConfig)]


class PipelineOptions(C.Structure):  # ldm/pipeline.h ldm_pipeline_options
    _fields_ = [("ops", C.c_void_p), ("config_dir", C.c_char_p), ("vae_path", C.c_char_p),
                ("vocab", C.c_char_p), ("vocab_default", C.c_char_p), ("prediction", C.c_int),
                ("need_encoder", C.c_int), ("embedding_dir", C.c_char_p), ("verbose", C.c_int),
                ("weights", C.c_int), ("low_memory", C.c_int)]


class Schedule_(C.Structure):  # samplers/schedule.h ldm_schedule
    _fields_ = [("T", C.c_int), ("alphas_cumprod", C.c_float * 1000),
                ("sigmas", C.c_float * 1000), ("log_sigmas", C.c_float * 1000)]


class Rng(C.Structure):  # samplers/rng.h ldm_rng
    _fields_ = [("kind", C.c_int), ("seed", C.c_uint64), ("cpu_math", C.c_int),
                ("mt", C.c_uint32 * 624), ("mti", C.c_int), ("has_next_normal", C.c_int),
                ("next_normal", C.c_double), ("philox_offset", C.c_uint64),
                ("cuda_threads", C.c_uint64)]


MODEL_FN = C.CFUNCTYPE(C.c_int, f32p, f32p, f32p, C.c_int64, C.c_void_p)
STEP_FN = C.CFUNCTYPE(None, C.c_void_p, C.c_int, f32p, f32p)


class Denoiser(C.Structure):  # samplers/sampler.h ldm_denoiser
    _fields_ = [("fn", MODEL_FN), ("ctx", C.c_void_p), ("prediction", C.c_int), ("cfg", C.c_int),
                ("cfg_scale", C.c_float), ("sched", C.POINTER(Schedule_)),
                ("B", C.c_int64), ("per", C.c_int64), ("x_in", f32p), ("out", f32p),
                ("t", f32p), ("uncond", f32p), ("nfe", C.c_int64)]


class SamplerInfo(C.Structure):  # ldm_sampler_info
    _fields_ = [("name", C.c_char_p), ("label", C.c_char_p), ("fn", C.c_void_p),
                ("uses_sigmas", C.c_int), ("default_eta", C.c_float)]


class SamplerCtx(C.Structure):  # ldm_sampler_ctx
    _fields_ = [("dn", C.POINTER(Denoiser)), ("rng", C.POINTER(Rng)),
                ("per_sample_noise", C.c_int), ("n", C.c_int), ("sigmas", f32p),
                ("timesteps", C.POINTER(C.c_int)), ("eta", C.c_float), ("s_churn", C.c_float),
                ("s_tmin", C.c_float), ("s_tmax", C.c_float), ("s_noise", C.c_float),
                ("compvis", C.c_int), ("set_alpha_to_one", C.c_int), ("callback", STEP_FN),
                ("callback_ctx", C.c_void_p), ("steps", C.c_int), ("brownian", C.c_void_p)]


class Conventions(C.Structure):  # ldm_conventions
    _fields_ = [("spacing", C.c_int), ("steps_offset", C.c_int), ("noise_every_step", C.c_int),
                ("truncate", C.c_int)]


class SamplerSettings(C.Structure):  # ldm_sampler_settings
    _fields_ = [("sampler", C.POINTER(SamplerInfo)), ("sigma_kind", C.c_int), ("steps", C.c_int),
                ("eta", C.c_float), ("s_churn", C.c_float), ("conv", Conventions),
                ("sde_noise", C.c_int)]


class SampleRun(C.Structure):  # ldm_sample_run
    _fields_ = [("noise", f32p), ("init", f32p), ("start_step", C.c_int),
                ("rng", C.POINTER(Rng)), ("per_sample_noise", C.c_int), ("callback", STEP_FN),
                ("callback_ctx", C.c_void_p)]


def conventions(name):
    """The C presets LDM_CONVENTIONS_COMPVIS / LDM_CONVENTIONS_DIFFUSERS (samplers/sampler.c)
    by name: "compvis" | "diffusers"."""
    return Conventions.from_buffer_copy(Conventions.in_dll(load(), "LDM_CONVENTIONS_" + name.upper()))


class VaeOptions(C.Structure):  # ldm/vae.h ldm_vae_options
    _fields_ = [("tiling", C.c_int), ("budget_mb", C.c_int64), ("tile_latent", C.c_int),
                ("overlap_latent", C.c_int), ("verbose", C.c_int)]


class GenerateParams(C.Structure):  # ldm/pipeline.h ldm_generate_params
    _fields_ = [("prompt", C.c_char_p), ("negative", C.c_char_p), ("width", C.c_int),
                ("height", C.c_int), ("batch", C.c_int), ("sampling", SamplerSettings),
                ("cfg_scale", C.c_float), ("clip_skip", C.c_int), ("rng", C.POINTER(Rng)),
                ("init_rgb", C.POINTER(C.c_uint8)), ("strength", C.c_double),
                ("mask_rgb", C.POINTER(C.c_uint8)), ("vae_opt", VaeOptions), ("lora_dir", C.c_char_p), ("loras", C.c_void_p),
                ("n_loras", C.c_int), ("progress", C.c_void_p), ("progress_ctx", C.c_void_p),
                ("prompts", C.c_void_p), ("nfe", C.POINTER(C.c_int64)),
                ("deepcache", C.c_int), ("deepcache_branch", C.c_int)]


# Every mirror, by its C name (layout_check.c prints the same list).
MIRRORS = {
    "ldm_tensor": Tensor, "ldm_tensor_entry": TensorEntry, "ldm_tensor_file": TensorFile,
    "ldm_weights": Weights, "ldm_unet_config": UnetConfig, "ldm_vae_config": VaeConfig,
    "ldm_clip_config": ClipConfig, "ldm_model_options": ModelOptions, "ldm_model": ModelStruct,
    "ldm_arena": Arena,
    "ldm_unet_resblock": UnetResblock, "ldm_unet_attn": UnetAttn, "ldm_unet_tblock": UnetTBlock,
    "ldm_unet_transformer": UnetTransformer, "ldm_unet_block": UnetBlock, "ldm_unet": UnetStruct,
    "ldm_unet_deepcache": UnetDeepcache,
    "ldm_schedule": Schedule_, "ldm_rng": Rng, "ldm_denoiser": Denoiser,
    "ldm_sampler_info": SamplerInfo, "ldm_sampler_ctx": SamplerCtx,
    "ldm_conventions": Conventions, "ldm_sampler_settings": SamplerSettings,
    "ldm_sample_run": SampleRun,
    "ldm_vae_options": VaeOptions, "ldm_clip_layer": ClipLayer, "ldm_clip": ClipStruct,
    "ldm_vae_file": VaeFile, "ldm_pipeline_options": PipelineOptions,
    "ldm_generate_params": GenerateParams,
}
# Opaque structs: a buffer this large is allocated; layout_check verifies it suffices.
OPAQUE_BYTES = 1 << 20


def check_layout(report):
    """report: the JSON layout_check prints ({"struct": {"sizeof": n, "fields":
    {f: [offset, size, kind]}}, "opaque": {"ldm_vae": n, ...}}; kind "f" for a float or
    double, "o" otherwise). Returns a list of mismatches (empty = all good). Offsets
    alone miss a float mirrored as a double (or an int as a float) in the last field."""
    bad = []
    for name, info in report["structs"].items():
        py = MIRRORS[name]
        if C.sizeof(py) != info["sizeof"]:
            bad.append(f"{name}: sizeof C {info['sizeof']} vs ctypes {C.sizeof(py)}")
        types = dict(py._fields_)
        for f, (off, size, kind) in info["fields"].items():
            got = getattr(py, f)
            if got.offset != off:
                bad.append(f"{name}.{f}: offset C {off} vs ctypes {got.offset}")
            if got.size != size:
                bad.append(f"{name}.{f}: size C {size} vs ctypes {got.size}")
            py_kind = "f" if types[f] in (C.c_float, C.c_double) else "o"
            if py_kind != kind:
                bad.append(f"{name}.{f}: C {'floating' if kind == 'f' else 'not floating'}, "
                           f"ctypes {types[f].__name__}")
    for name, size in report["opaque"].items():
        if size > OPAQUE_BYTES:
            bad.append(f"{name}: {size} bytes > OPAQUE_BYTES {OPAQUE_BYTES}")
    return bad


# ---- the library -------------------------------------------------------------

_lib = None


def load(path=None):
    """Load libldm.so once ($LDM_LIB, else build/libldm.so)."""
    global _lib
    if _lib is not None:
        return _lib
    path = path or os.environ.get("LDM_LIB") or os.path.join(ROOT, "build", "libldm.so")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not built -- run `make` in the repository root")
    L = C.CDLL(path)
    sig = {
        "ldm_last_error": (C.c_char_p, []),
        "ldm_backend": (C.c_void_p, [C.c_char_p]),
        "ldm_tensor_new": (Tensor, [C.c_void_p, C.POINTER(C.c_int64), C.c_int]),
        "ldm_tensor_free": (None, [C.POINTER(Tensor)]),
        "ldm_tensor_from_host": (None, [C.POINTER(Tensor), f32p]),
        "ldm_tensor_to_host": (None, [f32p, C.POINTER(Tensor)]),
        "ldm_model_open": (C.c_int, [C.POINTER(ModelStruct), C.c_char_p, C.POINTER(ModelOptions)]),
        "ldm_model_close": (None, [C.POINTER(ModelStruct)]),
        "ldm_family_name": (C.c_char_p, [C.c_int]),
        "ldm_prediction_name": (C.c_char_p, [C.c_int]),
        "ldm_vae_file_open": (C.c_int, [C.POINTER(VaeFile), C.c_char_p, C.c_void_p]),
        "ldm_vae_file_close": (None, [C.POINTER(VaeFile)]),
        "ldm_vae_decoder_forward": (C.c_int, [C.POINTER(Tensor), C.c_void_p, C.POINTER(Tensor)]),
        "ldm_tensor_file_open": (C.c_int, [C.POINTER(TensorFile), C.c_char_p]),
        "ldm_tensor_file_close": (None, [C.POINTER(TensorFile)]),
        "ldm_unet_config_from_json": (C.c_int, [C.POINTER(UnetConfig), C.c_char_p, C.c_char_p]),
        "ldm_clip_load": (C.c_int, [C.c_void_p, C.POINTER(Weights), C.POINTER(ClipConfig)]),
        "ldm_clip_free": (None, [C.c_void_p]),
        "ldm_clip_forward": (C.c_int, [C.POINTER(Tensor), C.c_void_p, C.POINTER(C.c_int32),
                                       C.c_int, C.c_int, C.c_int]),
        "ldm_unet_load": (C.c_int, [C.POINTER(UnetStruct), C.POINTER(UnetConfig),
                                    C.POINTER(Weights)]),
        "ldm_unet_free": (None, [C.POINTER(UnetStruct)]),
        "ldm_unet_forward": (C.c_int, [C.POINTER(Tensor), C.POINTER(UnetStruct),
                                       C.POINTER(Tensor), f32p, C.POINTER(Tensor)]),
        "ldm_unet_timestep_embedding": (None, [f32p, f32p, C.c_int, C.c_int, C.c_int,
                                               C.c_float]),
        "ldm_vae_load": (C.c_int, [C.c_void_p, C.POINTER(VaeConfig), C.POINTER(Weights), C.c_int]),
        "ldm_vae_free": (None, [C.c_void_p]),
        "ldm_vae_encode": (C.c_int, [C.POINTER(Tensor), C.c_void_p, C.POINTER(Tensor),
                                     C.POINTER(Tensor), C.POINTER(VaeOptions)]),
        "ldm_vae_encoder_forward": (C.c_int, [C.POINTER(Tensor), C.c_void_p, C.POINTER(Tensor)]),
        "ldm_vae_decode": (C.c_int, [C.POINTER(Tensor), C.c_void_p, C.POINTER(Tensor),
                                     C.POINTER(VaeOptions)]),
        "ldm_tokenizer_load": (C.c_int, [C.POINTER(C.c_void_p), C.c_char_p]),
        "ldm_tokenizer_free": (None, [C.c_void_p]),
        "ldm_tokenizer_encode": (C.c_int, [C.c_void_p, C.POINTER(C.POINTER(C.c_int)),
                                           C.POINTER(C.c_int), C.c_char_p, C.c_size_t]),
        "ldm_tokenizer_pieces": (C.c_int, [C.c_void_p, C.POINTER(C.c_void_p), C.c_char_p,
                                           C.c_size_t]),
        "ldm_tokenizer_context": (None, [C.POINTER(C.c_int), C.c_int, C.c_int,
                                         C.POINTER(C.c_int), C.c_int]),
        "ldm_tokenizer_vocab_size": (C.c_int, [C.c_void_p]),
        "ldm_tokenizer_piece": (C.c_char_p, [C.c_void_p, C.c_int]),
        "ldm_schedule_init": (C.c_int, [C.POINTER(Schedule_), C.c_int, C.c_int, C.c_double,
                                        C.c_double, C.c_int]),
        "ldm_schedule_init_sd": (None, [C.POINTER(Schedule_)]),
        "ldm_sigma_to_t": (C.c_float, [C.POINTER(Schedule_), C.c_float]),
        "ldm_t_to_sigma": (C.c_float, [C.POINTER(Schedule_), C.c_float]),
        "ldm_timesteps_count": (C.c_int, [C.POINTER(Schedule_), C.c_int, C.c_int]),
        "ldm_timesteps": (C.c_int, [C.POINTER(C.c_int), C.POINTER(Schedule_), C.c_int, C.c_int,
                                    C.c_int]),
        "ldm_sigmas_default": (None, [f32p, C.POINTER(Schedule_), C.c_int]),
        "ldm_sigmas_karras": (None, [f32p, C.c_int, C.c_double, C.c_double, C.c_double]),
        "ldm_sigmas_exponential": (None, [f32p, C.c_int, C.c_double, C.c_double]),
        "ldm_q_sample": (None, [f32p, f32p, f32p, C.POINTER(C.c_int), C.c_int64, C.c_int64,
                                C.POINTER(Schedule_)]),
        "ldm_rng_init": (None, [C.POINTER(Rng), C.c_int, C.c_uint64]),
        "ldm_rng_randn": (None, [C.POINTER(Rng), f32p, C.c_int64]),
        "ldm_denoiser_init": (C.c_int, [C.POINTER(Denoiser)]),
        "ldm_denoiser_free": (None, [C.POINTER(Denoiser)]),
        "ldm_sampler_parse": (C.c_int, [C.POINTER(C.POINTER(SamplerInfo)), C.POINTER(C.c_int),
                                        C.c_char_p]),
        "ldm_sampler_steps": (C.c_int, [C.POINTER(SamplerSettings), C.POINTER(Schedule_)]),
        "ldm_sample": (C.c_int, [f32p, C.POINTER(SamplerSettings), C.POINTER(SampleRun),
                                 C.POINTER(Denoiser)]),
        "ldm_dump_set_dir": (None, [C.c_char_p]),
        "ldm_dump_dir": (C.c_char_p, []),
        "ldm_error": (C.c_int, [C.c_char_p]),
        "ldm_pipeline_open": (C.c_int, [C.c_void_p, C.c_char_p, C.POINTER(PipelineOptions)]),
        "ldm_pipeline_close": (None, [C.c_void_p]),
        "ldm_generate": (C.c_int, [C.c_void_p, C.POINTER(GenerateParams), f32p,
                                   C.POINTER(C.c_uint8)]),
        "ldm_group_norm": (None, [C.POINTER(Tensor)] * 4 + [C.c_int64, C.c_float]),
        "ldm_attention": (None, [C.POINTER(Tensor)] * 4 + [C.c_int64, C.c_float, C.c_int]),
    }
    for name, (res, args) in sig.items():
        if not hasattr(L, name):   # a module not built into this library (yet)
            continue
        fn = getattr(L, name)
        fn.restype, fn.argtypes = res, args
    _lib = L
    return L


def last_error():
    return load().ldm_last_error().decode("utf-8", "replace")


def _check(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what}: {last_error()}")


def backend(name="cpu"):
    ops = load().ldm_backend(name.encode())
    if not ops:
        raise RuntimeError(last_error())
    return ops


def _fp(a):
    return a.ctypes.data_as(f32p)


# ---- tensors <-> NumPy ---------------------------------------------------------

def to_tensor(a, ops):
    """NumPy array -> new ldm_tensor on `ops` (caller frees with free_tensor)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    shape = (C.c_int64 * max(a.ndim, 1))(*a.shape)
    t = load().ldm_tensor_new(ops, shape, a.ndim)
    if not t.data:
        raise MemoryError(last_error())
    load().ldm_tensor_from_host(C.byref(t), _fp(a))
    return t


def to_numpy(t):
    """ldm_tensor (any backend) -> NumPy float32 copy. An fp16/bf16 weight
    (dtype 1/2, only ever on the host backends ref/cpu) is widened exactly."""
    shape = tuple(t.shape[i] for i in range(t.ndim))
    if t.dtype in (1, 2):
        h = np.ctypeslib.as_array(C.cast(t.data, C.POINTER(C.c_uint16)), shape=(t.numel,))
        if t.dtype == 1:
            return h.view(np.float16).astype(np.float32).reshape(shape)
        return (h.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    out = np.empty(shape, dtype=np.float32)
    if t.numel:
        load().ldm_tensor_to_host(_fp(out), C.byref(t))
    return out


def free_tensor(t):
    load().ldm_tensor_free(C.byref(t))


# ---- single ops (ldm/backend/ops.h checked wrappers) -------------------------------------

def group_norm(x, gamma, beta, groups, eps=1e-5, backend_name="cpu"):
    """ldm_group_norm on x [B,C,H,W] (or [B,C,S]) -> NumPy."""
    ops = backend(backend_name)
    ts = [to_tensor(a, ops) for a in (x, x, gamma, beta)]
    load().ldm_group_norm(*[C.byref(t) for t in ts], groups, eps)
    out = to_numpy(ts[0])
    for t in ts:
        free_tensor(t)
    return out


def attention(q, k, v, heads, causal=False, backend_name="cpu"):
    """ldm_attention: q [B,Tq,D], k/v [B,Tk,D] -> [B,Tq,D], scale HS^-1/2."""
    ops = backend(backend_name)
    ts = [to_tensor(a, ops) for a in (q, q, k, v)]
    hs = q.shape[-1] // heads
    load().ldm_attention(*[C.byref(t) for t in ts], heads, hs ** -0.5, int(causal))
    out = to_numpy(ts[0])
    for t in ts:
        free_tensor(t)
    return out


# ---- dumps ----------------------------------------------------------------------

def read_dump_dir(d, order="name"):
    """Every DIR/**/<name>.npy -> {name: array} (names as ldm_dump wrote them),
    sorted by name, or with order="written" in the order the files were written
    (= the order the C forward pass ran the blocks)."""
    out = {}
    paths = glob.glob(os.path.join(d, "**", "*.npy"), recursive=True)
    key = (lambda p: (os.stat(p).st_mtime_ns, p)) if order == "written" else None
    for p in sorted(paths, key=key):
        out[os.path.relpath(p, d)[:-4]] = np.load(p)
    return out


def dumps(fn, *args, **kw):
    """Run fn(*args) with the C dumps going to a temporary folder
    (ldm_dump_set_dir); returns (fn's result, {name: array} of every
    intermediate the C code dumped, in the order it wrote them)."""
    L = load()
    d = tempfile.mkdtemp(prefix="ldm-dump-")
    old = L.ldm_dump_dir()
    L.ldm_dump_set_dir(d.encode())
    try:
        res = fn(*args, **kw)
    finally:
        L.ldm_dump_set_dir(old)
    arrays = read_dump_dir(d, order="written")
    shutil.rmtree(d, ignore_errors=True)
    return res, arrays


# ---- tokenizer ------------------------------------------------------------------

class Tokenizer:
    """The CLIP BPE tokenizer (tokenizer/bpe.h). path None: the default vocabulary."""

    SOT, EOT = 49406, 49407

    def __init__(self, path=None):
        L = load()
        self.h = C.c_void_p()
        if path is None:
            path = os.path.join(ROOT, "build", "vocab", "bpe_simple_vocab_16e6.txt.gz")
        _check(L.ldm_tokenizer_load(C.byref(self.h), path.encode()), "tokenizer")

    def encode(self, text):
        """text -> list of BPE ids (no SOT/EOT, no truncation)."""
        b = text.encode("utf-8")
        ids, n = C.POINTER(C.c_int)(), C.c_int()
        _check(load().ldm_tokenizer_encode(self.h, C.byref(ids), C.byref(n), b, len(b)), "encode")
        out = [ids[i] for i in range(n.value)]
        C.CDLL(None).free(ids)
        return out

    def pieces(self, text):
        """text -> the BPE strings ("a</w>", in byte-table form)."""
        b = text.encode("utf-8")
        s = C.c_void_p()
        _check(load().ldm_tokenizer_pieces(self.h, C.byref(s), b, len(b)), "pieces")
        out = C.string_at(s).decode("utf-8")
        C.CDLL(None).free(s)
        return out.split(" ") if out else []

    def context(self, ids, pad=EOT, length=77):
        """[SOT] + ids[:75] + [EOT] + padding: the 77 ids CLIP sees."""
        src = (C.c_int * max(len(ids), 1))(*ids)
        out = (C.c_int * length)()
        load().ldm_tokenizer_context(out, length, pad, src, len(ids))
        return list(out)

    def piece(self, i):
        p = load().ldm_tokenizer_piece(self.h, i)
        return p.decode("utf-8") if p else None

    def vocab_size(self):
        return load().ldm_tokenizer_vocab_size(self.h)

    def __del__(self):
        if getattr(self, "h", None) and _lib is not None:
            _lib.ldm_tokenizer_free(self.h)
            self.h = None


# ---- the model --------------------------------------------------------------------

# The default model: the tiny model the project trained (tools/tiny-model); else the
# random-weight test models: the pipeline's (full CLIP vocabulary, VAE factor 8 as SD),
# then the checkpoint-layout one (128-token vocabulary).
TINY_MODEL = next((p for p in (os.path.join(ROOT, "tools", "tiny-model"),
                               os.path.join(ROOT, "tests", "fixtures", "pipeline", "model"),
                               os.path.join(ROOT, "tests", "fixtures", "ckpt", "sd1"))
                   if os.path.isdir(p)), None)


class _UNetCalls:
    """The UNet calls shared by Model and UNetFolder (self.u, self.ops)."""

    # -- UNet ------------------------------------------------------------------
    def timestep_embedding(self, t):
        """t [B] -> the sinusoidal embedding [B, C0] the UNet's time MLP reads."""
        t = np.ascontiguousarray(t, np.float32)
        dim = self.u.cfg.block_out_channels[0]
        out = np.empty((len(t), dim), np.float32)
        load().ldm_unet_timestep_embedding(_fp(out), _fp(t), len(t), dim,
                                           self.u.cfg.flip_sin_to_cos, float(self.u.cfg.freq_shift))
        return out

    def blocks(self):
        """The UNet block table: one dict per row (ldm_unet_block)."""
        rows = []
        for i in range(self.u.n_blocks):
            b = self.u.blocks[i]
            rows.append(dict(kind=UNET_KINDS[b.kind], name=b.name.decode(), level=b.level,
                             cin=b.cin, cout=b.cout, skip=b.skip, heads=b.heads,
                             flops=b.flops))
        return rows

    def block(self, name):
        for i in range(self.u.n_blocks):
            if self.u.blocks[i].name.decode() == name:
                return self.u.blocks[i]
        raise KeyError(name)

    def unet(self, x, t, context, hook=None):
        """eps = UNet(x [B,C,h,w], t [B], context [B,T,D]) -> [B,C,h,w].
        hook(name, array) is called with every named block output."""
        L = load()
        x = np.ascontiguousarray(x, dtype=np.float32)
        t = np.ascontiguousarray(np.broadcast_to(np.asarray(t, np.float32), (x.shape[0],)))
        xt, ct = to_tensor(x, self.ops), to_tensor(context, self.ops)
        shape = (C.c_int64 * 4)(*x.shape[:1], self.u.cfg.out_channels, *x.shape[2:])
        out = L.ldm_tensor_new(self.ops, shape, 4)
        cb = None
        if hook is not None:
            def _hook(ctx, name, tp):
                hook(name.decode(), to_numpy(tp.contents))
            cb = HOOK_FN(_hook)
            self.u.hook = cb
        try:
            rc = L.ldm_unet_forward(C.byref(out), C.byref(self.u), C.byref(xt), _fp(t),
                                    C.byref(ct))
        finally:
            self.u.hook = HOOK_FN()
        a = to_numpy(out)
        for tt in (xt, ct, out):
            free_tensor(tt)
        _check(rc, "unet forward")
        return a



class UNetFolder(_UNetCalls):
    """A UNet alone: a diffusers unet/ folder (config.json +
    diffusion_pytorch_model.safetensors), e.g. tests/fixtures/unet/sd1."""

    def __init__(self, path, backend_name="cpu"):
        L = load()
        self.ops = backend(backend_name)
        self.f = TensorFile()
        _check(L.ldm_tensor_file_open(C.byref(self.f), os.path.join(path, "diffusion_pytorch_model.safetensors").encode()), path)
        cfg = UnetConfig()
        js = open(os.path.join(path, "config.json"), "rb").read()
        _check(L.ldm_unet_config_from_json(C.byref(cfg), js, path.encode()), "config")
        self.w = Weights(C.addressof(self.f), 0, 0, b"", self.ops, 0, 0, 0, 0)
        self.u = UnetStruct()
        _check(L.ldm_unet_load(C.byref(self.u), C.byref(cfg), C.byref(self.w)), "unet load")


class VaeFolder:
    """A VAE alone (ldm_vae_file_open: a diffusers vae/ folder or a VAE file)."""

    def __init__(self, path, backend_name="cpu"):
        L = load()
        self.ops = backend(backend_name)
        self.vf = VaeFile()
        _check(L.ldm_vae_file_open(C.byref(self.vf), path.encode(), self.ops), path)
        self.vae_h = C.create_string_buffer(OPAQUE_BYTES)
        _check(L.ldm_vae_load(self.vae_h, C.byref(self.vf.cfg), C.byref(self.vf.w), 3), "vae load")

    def _raw(self, fn, a):
        at = to_tensor(a, self.ops)
        out = Tensor()
        rc = fn(C.byref(out), self.vae_h, C.byref(at))
        free_tensor(at)
        _check(rc, "vae")
        r = to_numpy(out)
        free_tensor(out)
        return r

    def encoder_forward(self, x):
        """pixels [B,3,H,W] -> moments [B,2Z,h,w] (encoder + quant_conv)."""
        return self._raw(load().ldm_vae_encoder_forward, x)

    def decoder_forward(self, z):
        """UNSCALED z [B,Z,h,w] -> pixels (post_quant_conv + decoder)."""
        return self._raw(load().ldm_vae_decoder_forward, z)


class Model(_UNetCalls):
    """A Stable Diffusion model (ldm_model_open): CLIP, UNet and VAE loaded on
    the `cpu` backend. path: a diffusers folder or a single file (config_dir
    for single files of non-standard size)."""

    def __init__(self, path=TINY_MODEL, config_dir=None, backend_name="cpu", vae=True):
        L = load()
        self.ops = backend(backend_name)
        self.m = ModelStruct()
        opt = ModelOptions(self.ops, -1, config_dir.encode() if config_dir else None)
        _check(L.ldm_model_open(C.byref(self.m), os.fspath(path).encode(), C.byref(opt)),
               f"open {path}")
        self.path = os.fspath(path)
        self.family = L.ldm_family_name(self.m.family).decode()
        self.prediction = L.ldm_prediction_name(self.m.prediction).decode()
        self.clip = ClipStruct()
        self.clip_h = C.pointer(self.clip)
        _check(L.ldm_clip_load(self.clip_h, C.byref(self.m.clip_w), C.byref(self.m.clip)),
               "clip load")
        self.u = UnetStruct()
        _check(L.ldm_unet_load(C.byref(self.u), C.byref(self.m.unet), C.byref(self.m.unet_w)),
               "unet load")
        self.vae_h = None
        if vae:
            self.vae_h = C.create_string_buffer(OPAQUE_BYTES)
            _check(L.ldm_vae_load(self.vae_h, C.byref(self.m.vae), C.byref(self.m.vae_w), 3),
                   "vae load")
        self.factor = 2 ** (self.m.vae.n_levels - 1)
        self.latent_channels = self.m.vae.latent_channels
        self.tiny = self.m.clip.vocab_size < 49408

    # -- text ------------------------------------------------------------------
    def context_ids(self, tok, prompt):
        """prompt -> the 77 ids for this model. A tiny test model has a small
        vocabulary: ids are taken modulo vocab_size (SOT/EOT land on its own
        bos/eos ids 126/127), so any prompt runs -- the numbers mean nothing."""
        ids = tok.context(tok.encode(prompt), pad=self.m.clip.pad_token_id
                          if self.m.clip.pad_token_id in (0, 49407) else 49407)
        return [i % self.m.clip.vocab_size for i in ids]

    def encode_ids(self, ids, extra_skip=0):
        """ids [B,T] -> context [B,T,D] (ldm_clip_forward)."""
        ids = np.ascontiguousarray(np.atleast_2d(ids), dtype=np.int32)
        out = Tensor()
        _check(load().ldm_clip_forward(C.byref(out), self.clip_h,
                                       ids.ctypes.data_as(C.POINTER(C.c_int32)),
                                       ids.shape[0], ids.shape[1], extra_skip), "clip forward")
        a = to_numpy(out)
        free_tensor(out)
        return a

    def encode_prompt(self, tok, prompt):
        return self.encode_ids([self.context_ids(tok, prompt)])

    # -- VAE -------------------------------------------------------------------
    def vae_encode(self, x, noise=None):
        """pixels [B,3,H,W] in [-1,1] -> scaled latent [B,Z,H/f,W/f] (mean, or mean+std*noise)."""
        xt = to_tensor(x, self.ops)
        nt = to_tensor(noise, self.ops) if noise is not None else None
        out = Tensor()
        rc = load().ldm_vae_encode(C.byref(out), self.vae_h, C.byref(xt),
                                   C.byref(nt) if nt is not None else None, C.byref(VaeOptions()))
        free_tensor(xt)
        if nt is not None:
            free_tensor(nt)
        _check(rc, "vae encode")
        a = to_numpy(out)
        free_tensor(out)
        return a

    def vae_moments(self, x):
        """pixels -> the posterior moments [B,2Z,h,w] = (mean, logvar)."""
        xt = to_tensor(x, self.ops)
        out = Tensor()
        rc = load().ldm_vae_encoder_forward(C.byref(out), self.vae_h, C.byref(xt))
        free_tensor(xt)
        _check(rc, "vae encoder")
        a = to_numpy(out)
        free_tensor(out)
        return a

    def vae_decode(self, z):
        """scaled latent [B,Z,h,w] -> pixels [B,3,fh,fw] in about [-1,1]."""
        zt = to_tensor(z, self.ops)
        out = Tensor()
        rc = load().ldm_vae_decode(C.byref(out), self.vae_h, C.byref(zt), C.byref(VaeOptions()))
        free_tensor(zt)
        _check(rc, "vae decode")
        a = to_numpy(out)
        free_tensor(out)
        return a

    def model_fn(self, context, uncond=None):
        """A sampler's network callback (ldm_model_fn) from this UNet: rows
        [uncond..., cond...] get `uncond` / `context` when guidance is on."""
        def fn(x, t):
            N = x.shape[0]
            if uncond is not None and N == 2 * context.shape[0]:
                ctx = np.concatenate([uncond, context])
            else:
                ctx = np.broadcast_to(context, (N,) + context.shape[1:])
            return self.unet(x, t, ctx)
        return fn

    def close(self):
        L = load()
        if self.vae_h is not None:
            L.ldm_vae_free(self.vae_h)
            self.vae_h = None
        if self.u.blocks:
            L.ldm_unet_free(C.byref(self.u))
        if self.clip_h is not None:
            L.ldm_clip_free(self.clip_h)
            self.clip_h = None
            L.ldm_model_close(C.byref(self.m))


# ---- the whole pipeline (ldm/pipeline.h) -------------------------------------------

class Pipeline:
    """ldm_pipeline_open + ldm_generate: txt2img / img2img exactly as `sd` runs them
    (A1111 prompt syntax, guidance, any sampler, VAE decode)."""

    def __init__(self, path=None, config_dir=None, backend_name="cpu", need_encoder=True):
        L = load()
        if not hasattr(L, "ldm_generate"):
            raise RuntimeError("this libldm.so has no pipeline (ldm/pipeline.c)")
        self.path = os.fspath(path or TINY_MODEL)
        self.h = C.create_string_buffer(OPAQUE_BYTES)
        vocab = os.path.join(ROOT, "build", "vocab", "bpe_simple_vocab_16e6.txt.gz")
        o = PipelineOptions(backend(backend_name), config_dir.encode() if config_dir else None,
                            None, None, None, -1, int(need_encoder), 0)
        o.vocab = None if os.path.isdir(os.path.join(self.path, "tokenizer")) else vocab.encode()
        _check(L.ldm_pipeline_open(self.h, self.path.encode(), C.byref(o)), f"pipeline {self.path}")
        # latent channels and VAE factor, from the configs (ldm_model_open maps, loads nothing)
        m = ModelStruct()
        _check(L.ldm_model_open(C.byref(m), self.path.encode(), C.byref(ModelOptions(
            backend(backend_name), -1, o.config_dir))), self.path)
        self.latent_channels, self.factor = m.vae.latent_channels, 2 ** (m.vae.n_levels - 1)
        L.ldm_model_close(C.byref(m))

    def generate(self, prompt, negative="", width=64, height=64, batch=1, sampler="euler_a",
                 steps=20, cfg_scale=7.5, seed=0, eta=-1.0, clip_skip=1, init=None,
                 strength=0.75, spacing="leading"):
        """-> (rgb uint8 [B,H,W,3], latent [B,C,H/f,W/f]). init: uint8 [H,W,3] (img2img)."""
        L = load()
        info, kind = C.POINTER(SamplerInfo)(), C.c_int()
        _check(L.ldm_sampler_parse(C.byref(info), C.byref(kind), sampler.encode()), "sampler")
        rng = Rng()
        L.ldm_rng_init(C.byref(rng), 0, seed)
        g = GenerateParams()
        g.prompt, g.negative = prompt.encode(), negative.encode()
        g.width, g.height, g.batch = width, height, batch
        s = g.sampling
        s.sampler, s.sigma_kind, s.steps, s.eta = info, kind.value, steps, eta
        s.conv = conventions("diffusers")
        s.conv.spacing = SPACINGS[spacing]
        g.cfg_scale, g.clip_skip, g.rng = cfg_scale, clip_skip, C.pointer(rng)
        if init is not None:
            init = np.ascontiguousarray(init, np.uint8)
            g.init_rgb, g.strength = init.ctypes.data_as(C.POINTER(C.c_uint8)), strength
        rgb = np.empty((batch, height, width, 3), np.uint8)
        lat = np.empty((batch, self.latent_channels, height // self.factor, width // self.factor),
                       np.float32)
        _check(L.ldm_generate(self.h, C.byref(g), _fp(lat), rgb.ctypes.data_as(C.POINTER(C.c_uint8))),
               "generate")
        return rgb, lat

    def close(self):
        if self.h is not None:
            load().ldm_pipeline_close(self.h)
            self.h = None


# ---- schedule ---------------------------------------------------------------------

SPACINGS = {"leading": 0, "trailing": 1, "linspace": 2, "uniform": 3}


class Schedule:
    """The SD noise schedule (samplers/schedule.h): scaled linear 0.00085..0.012, T = 1000."""

    def __init__(self, kind=None, b0=0.00085, b1=0.012):
        """kind None: the SD schedule; else "scaled_linear" | "linear" | "cosine"."""
        self.s = Schedule_()
        if kind is None:
            load().ldm_schedule_init_sd(C.byref(self.s))
        else:
            k = {"scaled_linear": 0, "linear": 1, "cosine": 2}[kind]
            _check(load().ldm_schedule_init(C.byref(self.s), k, 0, b0, b1, 1000), "schedule")
        self.T = self.s.T
        self.alphas_cumprod = np.ctypeslib.as_array(self.s.alphas_cumprod)[:self.T].copy()
        self.sigmas = np.ctypeslib.as_array(self.s.sigmas)[:self.T].copy()

    def q_sample(self, x0, noise, t):
        """x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) noise, one t per batch row (DDPM eq. 4)."""
        x0 = np.ascontiguousarray(x0, np.float32)
        noise = np.ascontiguousarray(noise, np.float32)
        B = x0.shape[0]
        per = x0.size // B
        ts = (C.c_int * B)(*np.broadcast_to(np.asarray(t, int), (B,)).tolist())
        out = np.empty_like(x0)
        load().ldm_q_sample(_fp(out), _fp(x0), _fp(noise), ts, B, per, C.byref(self.s))
        return out

    def sigma_to_t(self, sigma):
        return load().ldm_sigma_to_t(C.byref(self.s), sigma)

    def t_to_sigma(self, t):
        return load().ldm_t_to_sigma(C.byref(self.s), t)

    def sigmas_for(self, n, kind="default"):
        out = np.empty(n + 1, np.float32)
        L = load()
        smin, smax = float(self.sigmas[0]), float(self.sigmas[-1])
        if kind == "default":
            L.ldm_sigmas_default(_fp(out), C.byref(self.s), n)
        elif kind == "karras":
            L.ldm_sigmas_karras(_fp(out), n, smin, smax, 7.0)
        else:
            L.ldm_sigmas_exponential(_fp(out), n, smin, smax)
        return out

    def timesteps(self, n, spacing="leading", offset=1):
        L = load()
        cnt = L.ldm_timesteps_count(C.byref(self.s), SPACINGS[spacing], n)
        out = (C.c_int * cnt)()
        L.ldm_timesteps(out, C.byref(self.s), SPACINGS[spacing], n, offset)
        return list(out)


def randn(seed, shape):
    """torch.randn(shape, generator=torch.Generator().manual_seed(seed)), from C."""
    r = Rng()
    load().ldm_rng_init(C.byref(r), 0, seed)
    out = np.empty(shape, np.float32)
    load().ldm_rng_randn(C.byref(r), _fp(out), out.size)
    return out


# ---- samplers ----------------------------------------------------------------------

def samplers():
    """[(name, label, uses_sigmas, default_eta)] of samplers/sampler.c's table."""
    L = load()
    n = C.c_int.in_dll(L, "ldm_sampler_count").value
    tab = (SamplerInfo * n).in_dll(L, "ldm_samplers")
    return [(s.name.decode(), s.label.decode(), bool(s.uses_sigmas), s.default_eta) for s in tab]


def _denoiser(model_fn, sched, B, shape, prediction, cfg_scale):
    """An ldm_denoiser whose network is the Python function model_fn(x [N,...], t [N]);
    shape: one sample's shape (C,h,w)."""
    per = int(np.prod(shape))
    def fn(out, x_in, t, N, ctx):
        try:
            x = np.ctypeslib.as_array(x_in, shape=(N, per)).reshape((N,) + tuple(shape)).copy()
            tt = np.ctypeslib.as_array(t, shape=(N,)).copy()
            y = np.ascontiguousarray(model_fn(x, tt), np.float32).reshape(N, per)
            np.ctypeslib.as_array(out, shape=(N, per))[:] = y
            return 0
        except Exception as e:  # report through ldm_error; the sampler stops
            load().ldm_error(f"python model_fn: {e!r}".replace("%", "%%").encode())
            return -1
    cb = MODEL_FN(fn)
    d = Denoiser()
    d.fn, d.prediction = cb, {"eps": 0, "v": 1}[prediction]
    d.cfg = 1 if cfg_scale is not None else 0
    d.cfg_scale = cfg_scale if cfg_scale is not None else 1.0
    d.sched = C.pointer(sched.s)
    d.B, d.per = B, per
    _check(load().ldm_denoiser_init(C.byref(d)), "denoiser")
    return d, cb


def sample(name, noise, model_fn, steps=20, sched=None, eta=-1.0, seed=0, cfg_scale=None,
           prediction="eps", init=None, start_step=0, spacing="leading", callback=None):
    """Run sampler `name` ("euler", "DPM++ 2M Karras", "ddim", ...) in C.
    noise [B,...] ~ N(0,I); model_fn(x [N,...], t [N]) -> eps (or v) [N,...]
    (N = 2B with guidance: rows [uncond..., cond...]). callback(i, x, denoised)
    gets arrays shaped like noise after each step. Returns (x, nfe)."""
    L = load()
    sched = sched or Schedule()
    noise = np.ascontiguousarray(noise, np.float32)
    B = noise.shape[0]
    per = noise.size // B
    info, kind = C.POINTER(SamplerInfo)(), C.c_int()
    _check(L.ldm_sampler_parse(C.byref(info), C.byref(kind), name.encode()), "sampler")
    d, keep = _denoiser(model_fn, sched, B, noise.shape[1:], prediction, cfg_scale)
    o = SamplerSettings()
    o.sampler, o.sigma_kind, o.steps, o.eta = info, kind.value, steps, eta
    o.conv = conventions("diffusers")
    o.conv.spacing = SPACINGS[spacing]
    run = SampleRun()
    run.noise, run.start_step = _fp(noise), start_step
    if init is not None:
        init = np.ascontiguousarray(init, np.float32)
        run.init = _fp(init)
    step_cb = None
    if callback is not None:
        def _step(ctx, i, x, den):
            callback(i, np.ctypeslib.as_array(x, shape=noise.shape).copy(),
                     np.ctypeslib.as_array(den, shape=noise.shape).copy())
        step_cb = STEP_FN(_step)
        run.callback = step_cb
    rng = Rng()
    L.ldm_rng_init(C.byref(rng), 0, seed)
    run.rng = C.pointer(rng)
    x = np.empty_like(noise)
    rc = L.ldm_sample(_fp(x), C.byref(o), C.byref(run), C.byref(d))
    nfe = d.nfe
    L.ldm_denoiser_free(C.byref(d))
    del keep, step_cb
    _check(rc, f"sample {name}")
    return x, nfe


def sampler_step(name, x, sigma_from, sigma_to, model_fn, sched=None, seed=0, eta=None):
    """ONE step of a k-diffusion sampler (euler, heun, dpmpp_2m, ...) from noise
    level sigma_from to sigma_to, in C. x [B,...]. Returns (x_next, denoised)."""
    L = load()
    sched = sched or Schedule()
    x = np.ascontiguousarray(x, np.float32).copy()
    B = x.shape[0]
    per = x.size // B
    info, kind = C.POINTER(SamplerInfo)(), C.c_int()
    _check(L.ldm_sampler_parse(C.byref(info), C.byref(kind), name.encode()), "sampler")
    if not info.contents.uses_sigmas:
        raise ValueError(f"{name}: one-step calls are for the sigma samplers; "
                         "use sample(..., callback=) for DDIM/PLMS/DDPM")
    d, keep = _denoiser(model_fn, sched, B, x.shape[1:], "eps", None)
    sig = np.array([sigma_from, sigma_to], np.float32)
    rng = Rng()
    L.ldm_rng_init(C.byref(rng), 0, seed)
    got = {}

    def _step(ctx, i, xp, den):
        got["den"] = np.ctypeslib.as_array(den, shape=x.shape).copy()
    cb = STEP_FN(_step)
    c = SamplerCtx()
    c.dn, c.rng, c.n, c.sigmas = C.pointer(d), C.pointer(rng), 1, _fp(sig)
    c.eta = info.contents.default_eta if eta is None else eta
    c.s_tmax, c.s_noise = float("inf"), 1.0
    c.callback = cb
    fn = C.CFUNCTYPE(C.c_int, f32p, C.POINTER(SamplerCtx))(info.contents.fn)
    rc = fn(_fp(x), C.byref(c))
    L.ldm_denoiser_free(C.byref(d))
    del keep
    _check(rc, f"{name} step")
    return x, got.get("den")


# ---- small helpers for the figures ----------------------------------------------------

def to_rgb(x):
    """[3,H,W] in [-1,1] -> [H,W,3] in [0,1] (for imshow)."""
    return np.clip((np.asarray(x).transpose(1, 2, 0) + 1) / 2, 0, 1)


def test_image(side=64):
    """A photo when matplotlib ships one (Grace Hopper), else a drawn test card:
    [1,3,side,side] in [-1,1]. Outside the tiny model's domain (flat shapes):
    for its VAE use shape_scene / dataset_scene."""
    try:
        import matplotlib.cbook as cbook
        import matplotlib.image as mpimg
        with cbook.get_sample_data("grace_hopper.jpg") as f:
            im = mpimg.imread(f, format="jpg").astype(np.float32) / 255.0
        h, w = im.shape[:2]
        s = min(h, w)
        im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        idx = (np.arange(side) * s / side).astype(int)
        im = im[idx][:, idx, :3]
    except Exception:
        yy, xx = np.mgrid[0:side, 0:side] / side
        im = np.stack([xx, yy, 0.5 + 0.5 * np.sin(12 * np.hypot(xx - .5, yy - .5))], -1)
    return (im.transpose(2, 0, 1)[None] * 2 - 1).astype(np.float32)


def shapes_dataset():
    """tools/train/dataset.py, the generator of the tiny model's training scenes
    (needs Pillow, which matplotlib brings)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "tiny_dataset", os.path.join(ROOT, "tools", "train", "dataset.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def shape_scene(colour="blue", shape="square", place="right", size="medium", bg="white"):
    """One scene of the tiny model's own domain, drawn by tools/train/dataset.py's
    renderer: (image [1,3,64,64] in [-1,1], its English caption). place: left |
    right | top | bottom | center."""
    D = shapes_dataset()
    x, y = D.PLACES[place][:2]
    s = dict(bg=bg, say_bg=bg != "white", place=place, relation=None,
             objects=[dict(colour=colour, shape=shape, size=size, x=x, y=y)])
    im = D.render(s).astype(np.float32) / 255.0
    return (im.transpose(2, 0, 1)[None] * 2 - 1).astype(np.float32), D.caption_en(s)


def dataset_scene(index, seed=0):
    """Scene `index` of the training set of seed `seed` (tools/train/dataset.py
    make_scene): (image [1,3,64,64] in [-1,1], its English caption)."""
    D = shapes_dataset()
    s = D.make_scene(seed, index)
    im = D.render(s).astype(np.float32) / 255.0
    return (im.transpose(2, 0, 1)[None] * 2 - 1).astype(np.float32), D.caption_en(s)


# Headers that declare the mirrored structs (for layout_c_source).
_HEADERS = ["ldm/core/tensor.h", "ldm/core/arena.h", "ldm/io/tensorfile.h", "ldm/io/weights.h", "ldm/model.h", "ldm/unet.h",
            "ldm/clip.h", "ldm/vae.h", "samplers/schedule.h", "samplers/rng.h",
            "samplers/sampler.h", "tokenizer/bpe.h", "ldm/pipeline.h"]
_OPAQUE = ["ldm_vae", "ldm_pipeline"]


def layout_c_source():
    """A C program printing sizeof/offsetof of every mirrored struct as JSON
    (the input of check_layout)."""
    lines = ["#include <stddef.h>", "#include <stdio.h>"]
    lines += [f'#include "{h}"' for h in _HEADERS]
    lines += ['#define KIND(x) _Generic((x), float: "f", double: "f", default: "o")',
              "#define FIELD(T, f) offsetof(T, f), sizeof(((T *)0)->f), KIND(((T *)0)->f)"]
    lines += ["int main(void) {", '    printf("{\\"structs\\": {");']
    for k, (name, py) in enumerate(MIRRORS.items()):
        sep = "," if k else ""
        lines.append(f'    printf("{sep}\\"{name}\\": {{\\"sizeof\\": %zu, \\"fields\\": {{", sizeof({name}));')
        for j, (f, _) in enumerate(py._fields_):
            fs = "," if j else ""
            lines.append(f'    printf("{fs}\\"{f}\\": [%zu, %zu, \\"%s\\"]", FIELD({name}, {f}));')
        lines.append('    printf("}}");')
    lines.append('    printf("}, \\"opaque\\": {");')
    for k, name in enumerate(_OPAQUE):
        sep = "," if k else ""
        lines.append(f'    printf("{sep}\\"{name}\\": %zu", sizeof({name}));')
    lines += ['    printf("}}\\n");', "    return 0;", "}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    # python3 notebooks/ldm_py.py --layout-c > layout.c   (the checking program)
    # python3 notebooks/ldm_py.py layout.json             (compare with the mirrors)
    import sys
    if sys.argv[1] == "--layout-c":
        sys.stdout.write(layout_c_source())
        sys.exit(0)
    rep = json.load(open(sys.argv[1]))
    bad = check_layout(rep)
    for b in bad:
        print("layout mismatch:", b)
    print(f"ldm_py layout: {len(rep['structs'])} structs, "
          f"{sum(len(v['fields']) for v in rep['structs'].values())} fields checked against "
          f"the C headers, {len(bad)} mismatches")
    sys.exit(1 if bad else 0)
