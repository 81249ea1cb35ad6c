/*
 * ldm/model.c -- open a Stable Diffusion model from a single file or a
 * diffusers folder, detect what it is, and hand each component its weights
 * and config (see model.h).
 *
 * Detection, single file (keys and shapes; docs/03-clip-and-checkpoints.md
 * section 4):
 *   SD1  cond_stage_model.transformer.text_model.*  (OpenAI CLIP, 768 wide)
 *   SD2  cond_stage_model.model.*                    (OpenCLIP, 1024 wide)
 *   refused, by name: SDXL (conditioner.embedders.*, label_emb), SD3
 *   (joint_blocks), Flux (double_blocks), inpainting (UNet in_channels 9),
 *   depth (5), the x4 upscaler's single file (its diffusers folder is
 *   ldm/upscale.h's).
 * Prediction type: SD1 is epsilon. SD2: the 512 "base" model (global_step
 * 875000) is epsilon and the 768 model is v; without a step, the
 * heuristic of ComfyUI's SD2 detection is used: the std of
 * output_blocks.11.1.transformer_blocks.0.norm1.bias is > 0.09 in the
 * v-models. The caller can always override (--prediction eps|v).
 * Diffusers folders: configs from config.json, prediction_type from
 * scheduler/scheduler_config.json.
 *
 * File order: the SD presets (the one copy of each: diffusers config.json
 * text), the config parsers (strict, ldm/io/json.h), finding config and
 * weights files in folders, the prediction type, opening a model, opening a
 * VAE on its own (sd --vae), the `sd info` summary.
 *
 * Leaves out: sharded weights (*.index.json), LoRA, textual inversion.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/fs.h"
#include "ldm/io/json.h"
#include "ldm/model.h"
#include "ldm/backend/ops.h"
#include "ldm/unet.h"

// ---------------------------------------------------------------------------
// presets: the one source of the SD1/SD2 configs
//
// A CompVis single file holds no config, so its components get the config of
// the model it comes from. Each preset is kept once, as the text of the
// config.json that diffusers / transformers publish for it (runwayml
// stable-diffusion-v1-5 and stabilityai stable-diffusion-2-1; bookkeeping
// keys such as _diffusers_version, dropout and initializer fields left out),
// and read by the same parsers as a user's config.json. So a reader can diff
// a preset against the hub file, and a preset cannot hold a value the parser
// would refuse. What a single file differs in (the text encoder) is derived
// in ldm_clip_config_sd below.

#define SD_DOWN_BLOCKS                                                                   \
    "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", "        \
    "\"CrossAttnDownBlock2D\", \"DownBlock2D\"]"
#define SD_UP_BLOCKS                                                                     \
    "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", " \
    "\"CrossAttnUpBlock2D\"]"

// unet/config.json, SD1.x: 8 heads per level (the diffusers "attention_head_dim"
// quirk), 768-wide CLIP context, 1x1 conv projections in the transformers.
static const char *const unet_sd1_json =
    "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", "
    "\"attention_head_dim\": 8, \"block_out_channels\": [320, 640, 1280, 1280], "
    "\"center_input_sample\": false, \"cross_attention_dim\": 768, " SD_DOWN_BLOCKS
    ", \"downsample_padding\": 1, \"flip_sin_to_cos\": true, \"freq_shift\": 0, "
    "\"in_channels\": 4, \"layers_per_block\": 2, \"mid_block_scale_factor\": 1, "
    "\"norm_eps\": 1e-05, \"norm_num_groups\": 32, \"out_channels\": 4, \"sample_size\": 64, "
    SD_UP_BLOCKS "}";

// unet/config.json, SD2.x (768-v; the 512-base differs only in sample_size
// 64): heads of size 64, 1024-wide OpenCLIP context, linear projections.
static const char *const unet_sd2_json =
    "{\"_class_name\": \"UNet2DConditionModel\", \"act_fn\": \"silu\", "
    "\"attention_head_dim\": [5, 10, 20, 20], \"block_out_channels\": [320, 640, 1280, 1280], "
    "\"center_input_sample\": false, \"cross_attention_dim\": 1024, " SD_DOWN_BLOCKS
    ", \"downsample_padding\": 1, \"dual_cross_attention\": false, \"flip_sin_to_cos\": true, "
    "\"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": 2, "
    "\"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05, \"norm_num_groups\": 32, "
    "\"num_class_embeds\": null, \"only_cross_attention\": false, \"out_channels\": 4, "
    "\"resnet_time_scale_shift\": \"default\", \"sample_size\": 96, " SD_UP_BLOCKS
    ", \"upcast_attention\": true, \"use_linear_projection\": true}";

// vae/config.json: one autoencoder for SD1 and SD2 (SD2.1's file differs only
// in the informational sample_size 768); scaling_factor is the diffusers
// default 0.18215.
static const char *const vae_sd_json =
    "{\"_class_name\": \"AutoencoderKL\", \"act_fn\": \"silu\", "
    "\"block_out_channels\": [128, 256, 512, 512], \"down_block_types\": "
    "[\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", "
    "\"DownEncoderBlock2D\"], \"in_channels\": 3, \"latent_channels\": 4, "
    "\"layers_per_block\": 2, \"norm_num_groups\": 32, \"out_channels\": 3, "
    "\"sample_size\": 512, \"up_block_types\": [\"UpDecoderBlock2D\", \"UpDecoderBlock2D\", "
    "\"UpDecoderBlock2D\", \"UpDecoderBlock2D\"]}";

// text_encoder/config.json: OpenAI CLIP ViT-L/14 (SD1) and OpenCLIP ViT-H/14
// (SD2, saved by diffusers with 23 of its 24 layers).
static const char *const clip_sd1_json =
    "{\"architectures\": [\"CLIPTextModel\"], \"hidden_act\": \"quick_gelu\", "
    "\"hidden_size\": 768, \"intermediate_size\": 3072, \"layer_norm_eps\": 1e-05, "
    "\"max_position_embeddings\": 77, \"model_type\": \"clip_text_model\", "
    "\"num_attention_heads\": 12, \"num_hidden_layers\": 12, \"pad_token_id\": 1, "
    "\"projection_dim\": 768, \"vocab_size\": 49408}";
static const char *const clip_sd2_json =
    "{\"architectures\": [\"CLIPTextModel\"], \"hidden_act\": \"gelu\", "
    "\"hidden_size\": 1024, \"intermediate_size\": 4096, \"layer_norm_eps\": 1e-05, "
    "\"max_position_embeddings\": 77, \"model_type\": \"clip_text_model\", "
    "\"num_attention_heads\": 16, \"num_hidden_layers\": 23, \"pad_token_id\": 1, "
    "\"projection_dim\": 512, \"vocab_size\": 49408}";

int ldm_unet_config_sd(ldm_unet_config *c, ldm_family fam) {
    return fam == LDM_FAMILY_SD2 ? ldm_unet_config_parse(c, unet_sd2_json, "SD2 UNet preset")
                                 : ldm_unet_config_parse(c, unet_sd1_json, "SD1 UNet preset");
}

int ldm_vae_config_sd(ldm_vae_config *c) {
    return ldm_vae_config_parse(c, vae_sd_json, "SD VAE preset");
}

// The text encoder of a CompVis single file, from its diffusers config: the
// file holds every layer of the encoder (SD2: all 24, of which the
// penultimate's output is used, CompVis' "penultimate" layer = diffusers'
// last of 23), and prompts are padded the way the original pipelines pad.
int ldm_clip_config_sd(ldm_clip_config *c, ldm_family fam) {
    int sd2 = fam == LDM_FAMILY_SD2;
    if (ldm_clip_config_parse(c, sd2 ? clip_sd2_json : clip_sd1_json,
                              sd2 ? "SD2 text encoder preset" : "SD1 text encoder preset"))
        return LDM_ERR;
    c->skip_last_layers = sd2;                                  // penultimate layer
    c->num_hidden_layers += c->skip_last_layers;                // 24 in the file
    c->pad_token_id = sd2 ? 0 : 49407;                          // open_clip 0 / <|endoftext|>
    return 0;
}

const char *ldm_family_name(ldm_family f) { return f == LDM_FAMILY_SD2 ? "SD2" : "SD1"; }
const char *ldm_prediction_name(ldm_prediction p) {
    return p == LDM_PRED_V ? "v_prediction" : p == LDM_PRED_EPS ? "epsilon" : "auto";
}

// ---------------------------------------------------------------------------
// config.json parsing: the strict field readers of ldm/io/json.h (absent or
// null -> the diffusers/transformers default, wrong type -> error naming the
// key); the VAE and text encoder configs here, the UNet one in ldm/unet.c.

// The UNet config has one parser, in ldm/unet.c next to the code that reads
// it (it also names unsupported architectures: SDXL, inpainting, ...).
int ldm_unet_config_parse(ldm_unet_config *c, const char *json, const char *path) {
    return ldm_unet_config_from_json(c, json, path);
}

static int parse_vae_fields(ldm_vae_config *c, const cJSON *o, const char *path) {
    memset(c, 0, sizeof *c);
    c->norm_eps = 1e-6f;   // fixed in diffusers' VAE (not a config field)
    const char *cls = NULL;
    if (ldm_json_string(o, "_class_name", &cls, path)) return LDM_ERR;
    if (cls && strcmp(cls, "AutoencoderKL") != 0)
        return ldm_error("%s: VAE class '%s' is not supported (expected AutoencoderKL)", path, cls);
    if (ldm_json_int(o, "in_channels", 3, &c->in_channels, path) ||
        ldm_json_int(o, "out_channels", 3, &c->out_channels, path) ||
        ldm_json_int_list(o, "block_out_channels", LDM_MAX_LEVELS, c->block_out_channels,
                          &c->n_levels, path) ||
        ldm_json_int(o, "layers_per_block", 2, &c->layers_per_block, path) ||
        ldm_json_int(o, "latent_channels", 4, &c->latent_channels, path) ||
        ldm_json_int(o, "norm_num_groups", 32, &c->norm_num_groups, path) ||
        ldm_json_int(o, "sample_size", 512, &c->sample_size, path) ||
        ldm_json_float(o, "scaling_factor", 0.18215f, &c->scaling_factor, path) ||
        ldm_json_bool(o, "use_quant_conv", 1, &c->use_quant_conv, path) ||
        ldm_json_bool(o, "use_post_quant_conv", 1, &c->use_post_quant_conv, path) ||
        ldm_json_bool(o, "mid_block_add_attention", 1, &c->mid_block_add_attention, path))
        return LDM_ERR;
    if (c->latent_channels != 4)
        return ldm_error("%s: a VAE with %d latent channels (SD3/Flux use 16) is not supported",
                         path, c->latent_channels);
    for (int i = 0; i < c->n_levels; i++)
        if (c->norm_num_groups < 1 || c->block_out_channels[i] < 1 ||
            c->block_out_channels[i] % c->norm_num_groups)
            return ldm_error("%s: %d channels not a multiple of %d groups", path,
                             c->block_out_channels[i], c->norm_num_groups);
    return 0;
}

int ldm_vae_config_parse(ldm_vae_config *c, const char *json, const char *path) {
    cJSON *o = ldm_json_parse_object(json, path);
    if (!o) return LDM_ERR;
    int rc = parse_vae_fields(c, o, path);
    cJSON_Delete(o);
    return rc;
}

// transformers CLIPTextConfig; defaults are transformers' (hidden 512, 8 heads, ...).
static int parse_clip_fields(ldm_clip_config *c, const cJSON *o, const char *path) {
    memset(c, 0, sizeof *c);
    // A full CLIPConfig nests the text part in "text_config".
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text_config");
    if (!cJSON_IsObject(t)) t = o;
    const char *act = NULL;
    if (ldm_json_int(t, "vocab_size", 49408, &c->vocab_size, path) ||
        ldm_json_int(t, "hidden_size", 512, &c->hidden_size, path) ||
        ldm_json_int(t, "intermediate_size", 2048, &c->intermediate_size, path) ||
        ldm_json_int(t, "num_hidden_layers", 12, &c->num_hidden_layers, path) ||
        ldm_json_int(t, "num_attention_heads", 8, &c->num_attention_heads, path) ||
        ldm_json_int(t, "max_position_embeddings", 77, &c->max_position_embeddings, path) ||
        ldm_json_float(t, "layer_norm_eps", 1e-5f, &c->layer_norm_eps, path) ||
        ldm_json_int(t, "pad_token_id", 1, &c->pad_token_id, path) ||
        ldm_json_string(t, "hidden_act", &act, path))
        return LDM_ERR;
    c->skip_last_layers = 0;  // a diffusers SD2 text encoder already stops at layer 23
    if (!act || !strcmp(act, "quick_gelu")) c->hidden_act = LDM_ACT_QUICK_GELU;
    else if (!strcmp(act, "gelu")) c->hidden_act = LDM_ACT_GELU;
    else return ldm_error("%s: hidden_act '%s' is not supported (quick_gelu or gelu)", path, act);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(o, "architectures");
    const cJSON *a0 = cJSON_GetArrayItem(arch, 0);
    if (cJSON_IsString(a0) && strcmp(a0->valuestring, "CLIPTextModel") != 0)
        return ldm_error("%s: text encoder '%s' is not supported (SDXL's second encoder is "
                         "CLIPTextModelWithProjection; SD3/Flux use T5): expected CLIPTextModel",
                         path, a0->valuestring);
    if (c->hidden_size < 1 || c->num_attention_heads < 1 ||
        c->hidden_size % c->num_attention_heads || c->num_hidden_layers < 1 ||
        c->vocab_size < 1 || c->intermediate_size < 1 || c->max_position_embeddings < 1)
        return ldm_error("%s: inconsistent text encoder sizes (hidden %d, heads %d, layers %d)",
                         path, c->hidden_size, c->num_attention_heads, c->num_hidden_layers);
    return 0;
}

int ldm_clip_config_parse(ldm_clip_config *c, const char *json, const char *path) {
    cJSON *o = ldm_json_parse_object(json, path);
    if (!o) return LDM_ERR;
    int rc = parse_clip_fields(c, o, path);
    cJSON_Delete(o);
    return rc;
}

// ---------------------------------------------------------------------------
// files and folders (ldm/io/fs.h), shared by ldm_model_open and ldm_vae_file_open

// Parse <dir>/config.json with `parse`. 1 = parsed, 0 = absent, LDM_ERR.
static int read_config(const char *dir, void *cfg,
                       int (*parse)(void *, const char *, const char *)) {
    char p[4096 + 16];   // dir (at most 4095) + "/config.json"
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (!ldm_is_file(p)) return 0;
    char *json = ldm_read_text(p, LDM_MAX_CONFIG_BYTES);
    if (!json) return LDM_ERR;
    int rc = parse(cfg, json, p);
    free(json);
    return rc ? LDM_ERR : 1;
}
static int parse_unet(void *c, const char *j, const char *p) { return ldm_unet_config_parse(c, j, p); }
static int parse_vae(void *c, const char *j, const char *p) { return ldm_vae_config_parse(c, j, p); }
static int parse_clip(void *c, const char *j, const char *p) { return ldm_clip_config_parse(c, j, p); }

// <dir>/<sub>/config.json (see read_config).
static int read_sub_config(const char *dir, const char *sub, void *cfg,
                           int (*parse)(void *, const char *, const char *)) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    return read_config(p, cfg, parse);
}

// A small JSON file beside the components (model_index.json,
// scheduler_config.json): the string field `key` into out[cap]. 1 = found,
// 0 = the file or the field is absent (out = ""), LDM_ERR = unreadable, not
// JSON, or the field is not a string.
static int read_json_string(const char *path, const char *key, char *out, size_t cap) {
    out[0] = 0;
    if (!ldm_is_file(path)) return 0;
    char *text = ldm_read_text(path, LDM_MAX_CONFIG_BYTES);
    if (!text) return LDM_ERR;
    cJSON *o = ldm_json_parse_object(text, path);
    free(text);
    if (!o) return LDM_ERR;
    const char *s = NULL;
    int rc = ldm_json_string(o, key, &s, path);
    if (s) snprintf(out, cap, "%s", s);
    cJSON_Delete(o);
    return rc ? LDM_ERR : s != NULL;
}

// Open the weights file of one diffusers component folder, trying the names
// diffusers and transformers save under. 1 = opened, 0 = no weights file.
static int open_weights(ldm_tensor_file *f, const char *dir) {
    static const char *const names[] = {
        "diffusion_pytorch_model.safetensors", "model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
        "diffusion_pytorch_model.bin", "pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin",
    };
    char p[4096];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        if (ldm_is_file(p)) return ldm_tensor_file_open(f, p) ? LDM_ERR : 1;
    }
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors.index.json", dir);
    char q[4096];
    snprintf(q, sizeof q, "%s/model.safetensors.index.json", dir);
    if (ldm_is_file(p) || ldm_is_file(q))
        return ldm_error("%s: sharded weights (*.index.json) are not supported: merge the "
                         "shards into one .safetensors file", dir);
    return 0;
}

static int64_t count_prefix(const ldm_tensor_file *f, const char *prefix) {
    size_t n = strlen(prefix);
    int64_t c = 0;
    for (int64_t i = 0; i < f->n_entries; i++) c += strncmp(f->entries[i].name, prefix, n) == 0;
    return c;
}

// Layers of a text encoder in file f: the count of distinct "<pre>N." indices.
static int count_layers(const ldm_tensor_file *f, const char *pre) {
    int n = 0;
    char key[300];
    while (n < 1000) {
        snprintf(key, sizeof key, "%.200s%d.", pre, n);
        if (!count_prefix(f, key)) break;
        n++;
    }
    return n;
}

static void weights_init(ldm_weights *w, const ldm_tensor_file *f, ldm_component comp,
                         ldm_layout layout, const struct ldm_ops *ops) {
    memset(w, 0, sizeof *w);
    w->file = f;
    w->comp = comp;
    w->layout = layout;
    w->prefix = "";
    w->ops = ops;
}

// ---------------------------------------------------------------------------
// prediction type

static void decide_prediction(ldm_model *m, const ldm_model_options *opt, const char *sched_pred) {
    if (opt && opt->prediction != LDM_PRED_AUTO) {
        m->prediction = opt->prediction;
        snprintf(m->prediction_why, sizeof m->prediction_why, "forced by the caller (--prediction)");
        return;
    }
    if (sched_pred) {
        m->prediction = !strcmp(sched_pred, "v_prediction") ? LDM_PRED_V : LDM_PRED_EPS;
        snprintf(m->prediction_why, sizeof m->prediction_why,
                 "scheduler_config.json prediction_type \"%.60s\"", sched_pred);
        return;
    }
    if (m->family == LDM_FAMILY_SD1) {
        m->prediction = LDM_PRED_EPS;
        snprintf(m->prediction_why, sizeof m->prediction_why, "SD1 models predict epsilon");
        return;
    }
    if (m->global_step == 875000) {
        m->prediction = LDM_PRED_EPS;
        snprintf(m->prediction_why, sizeof m->prediction_why,
                 "global_step 875000: the SD2 512-base model (epsilon)");
        return;
    }
    const ldm_tensor_entry *e = m->layout == LDM_LAYOUT_COMPVIS && m->n_files
        ? ldm_tensor_file_find(&m->files[0],
                               "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias")
        : NULL;
    float *v = e && e->numel > 0 && e->numel < (1 << 20) ? malloc((size_t)e->numel * sizeof *v) : NULL;
    if (v && ldm_entry_to_f32(v, e) == 0) {
        double s = 0, s2 = 0;
        for (int64_t i = 0; i < e->numel; i++) s += v[i], s2 += (double)v[i] * v[i];
        double mean = s / e->numel, std = sqrt(fmax(s2 / e->numel - mean * mean, 0));
        m->prediction = std > 0.09 ? LDM_PRED_V : LDM_PRED_EPS;
        snprintf(m->prediction_why, sizeof m->prediction_why,
                 "SD2 heuristic: std of output_blocks.11.1...norm1.bias = %.3f %s 0.09", std,
                 std > 0.09 ? ">" : "<=");
        free(v);
        return;
    }
    free(v);
    m->prediction = LDM_PRED_V;
    snprintf(m->prediction_why, sizeof m->prediction_why,
             "SD2 without evidence: v (the 768 model); override with --prediction eps");
}

// ---------------------------------------------------------------------------
// open

static int open_diffusers(ldm_model *m, const char *dir, const ldm_model_options *opt,
                          const struct ldm_ops *ops) {
    char p[4096];
    static const char *const foreign[][2] = {
        {"text_encoder_2", "SDXL (two text encoders)"}, {"transformer", "SD3/Flux (a DiT, no UNet)"},
        {"text_encoder_3", "SD3 (T5 text encoder)"}, {"prior", "a prior/unCLIP pipeline"},
    };
    for (size_t i = 0; i < sizeof foreign / sizeof *foreign; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, foreign[i][0]);
        if (ldm_is_dir(p))
            return ldm_error("%s: has a %s/ folder: %s is not supported (ldm.c runs SD1/SD2)",
                             dir, foreign[i][0], foreign[i][1]);
    }
    // model_index.json names the pipeline class: anything but SD text-to-image
    // and the x4 upscaler (StableDiffusionUpscalePipeline, ldm/upscale.h) is refused.
    char cls[128];
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    int named = read_json_string(p, "_class_name", cls, sizeof cls);
    if (named < 0) return LDM_ERR;
    if (named && (strstr(cls, "StableDiffusion") == NULL || strstr(cls, "XL") ||
                   strstr(cls, "3") || strstr(cls, "Inpaint") || strstr(cls, "Depth") ||
                   strstr(cls, "LatentUpscale")))
        return ldm_error("%s: model_index.json names the pipeline '%s': not supported "
                         "(ldm.c runs SD1/SD2 text-to-image and the x4 upscaler)", dir, cls);
    int r;
    if ((r = read_sub_config(dir, "unet", &m->unet, parse_unet)) < 0) return LDM_ERR;
    m->has_unet = r;
    if ((r = read_sub_config(dir, "vae", &m->vae, parse_vae)) < 0) return LDM_ERR;
    m->has_vae = r;
    if ((r = read_sub_config(dir, "text_encoder", &m->clip, parse_clip)) < 0) return LDM_ERR;
    m->has_text = r;
    if (!m->has_unet && !m->has_vae && !m->has_text)
        return ldm_error("%s: not a diffusers model folder: no unet/, vae/ or text_encoder/ "
                         "config.json", dir);
    static const char *const subs[3] = {"unet", "vae", "text_encoder"};
    int *has[3] = {&m->has_unet, &m->has_vae, &m->has_text};
    for (int i = 0; i < 3; i++) {
        if (!*has[i]) continue;
        snprintf(p, sizeof p, "%s/%s", dir, subs[i]);
        r = open_weights(&m->files[i], p);
        if (r < 0) return LDM_ERR;
        if (r == 0)
            return ldm_error("%s/%s: config.json but no weights (expected "
                             "diffusion_pytorch_model.safetensors, model.safetensors or *.bin)",
                             dir, subs[i]);
    }
    m->n_files = 3;
    // Family: OpenCLIP (SD2) uses exact GELU, OpenAI CLIP (SD1) quick_gelu;
    // without a text encoder, the UNet's context width decides.
    if (m->has_text) m->family = m->clip.hidden_act == LDM_ACT_GELU ? LDM_FAMILY_SD2 : LDM_FAMILY_SD1;
    else m->family = m->has_unet && m->unet.cross_attention_dim == 1024 ? LDM_FAMILY_SD2 : LDM_FAMILY_SD1;
    // Prompts are padded with <|endoftext|> (SD1, HF tokenizer) or 0 (SD2,
    // open_clip); config.json's pad_token_id (1) is not what the pipelines use.
    m->clip.pad_token_id = m->family == LDM_FAMILY_SD2 ? 0 : 49407;
    weights_init(&m->unet_w, &m->files[0], LDM_COMP_UNET, LDM_LAYOUT_DIFFUSERS, ops);
    weights_init(&m->vae_w, &m->files[1], LDM_COMP_VAE, LDM_LAYOUT_DIFFUSERS, ops);
    weights_init(&m->clip_w, &m->files[2],
                 m->family == LDM_FAMILY_SD2 ? LDM_COMP_TEXT_SD2 : LDM_COMP_TEXT_SD1,
                 LDM_LAYOUT_DIFFUSERS, ops);
    // transformers < 5 saved CLIPTextModel weights as "text_model.*", 5.x without.
    if (m->has_text &&
        ldm_tensor_file_find(&m->files[2], "text_model.embeddings.token_embedding.weight"))
        m->clip_w.prefix = "text_model.";
    char pred[64];
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);
    if (read_json_string(p, "prediction_type", pred, sizeof pred) < 0) return LDM_ERR;
    decide_prediction(m, opt, pred[0] ? pred : NULL);
    return 0;
}

// A single file of another architecture is refused by name, by the key
// prefixes only it has: SDXL, SD3, Flux.
static int refuse_foreign_keys(const ldm_tensor_file *f, const char *path) {
    static const char *const foreign[][2] = {
        {"conditioner.embedders.", "SDXL (conditioner.embedders.*)"},
        // before label_emb, which it has too: diffusers' own test for this model
        {"model.diffusion_model.input_blocks.10.0.skip_connection.",
         "the x4 upscaler as a single file (`sd upscale` reads its diffusers folder)"},
        {"model.diffusion_model.label_emb.", "SDXL / unCLIP (label_emb)"},
        {"model.diffusion_model.joint_blocks.", "SD3 (MMDiT joint_blocks)"},
        {"joint_blocks.", "SD3 (MMDiT joint_blocks)"},
        {"model.diffusion_model.double_blocks.", "Flux (double_blocks)"},
        {"double_blocks.", "Flux (double_blocks)"},
    };
    for (size_t i = 0; i < sizeof foreign / sizeof *foreign; i++)
        if (count_prefix(f, foreign[i][0]))
            return ldm_error("%s: %s is not supported: ldm.c runs SD1/SD2 checkpoints", path,
                             foreign[i][1]);
    return 0;
}

// Which components a single file holds and its family, from its keys: the
// text encoder's names (OpenAI CLIP: SD1, OpenCLIP: SD2), else the UNet's
// context width. A UNet must take 4 input channels, or 9 (inpainting:
// [z, mask, E(masked image)]); depth's 5 and others are named. -> m->has_*, m->family, *sd2_text (an OpenCLIP encoder), *cin
// (the UNet's first conv, or NULL).
static int detect_single(ldm_model *m, const ldm_tensor_file *f, const char *path,
                         int *sd2_text, const ldm_tensor_entry **cin) {
    int sd1 = ldm_tensor_file_find(f, "cond_stage_model.transformer.text_model.embeddings."
                                      "token_embedding.weight") != NULL;
    int sd2 = ldm_tensor_file_find(f, "cond_stage_model.model.token_embedding.weight") != NULL;
    *cin = ldm_tensor_file_find(f, "model.diffusion_model.input_blocks.0.0.weight");
    if (!sd1 && !sd2 && !*cin) {
        if (ldm_tensor_file_find(f, "conv_in.weight") || count_prefix(f, "text_model.") ||
            ldm_tensor_file_find(f, "embeddings.token_embedding.weight") ||
            ldm_tensor_file_find(f, "encoder.conv_in.weight"))
            return ldm_error("%s: a single diffusers component (diffusers key names); pass the "
                             "model folder that holds unet/, vae/ and text_encoder/", path);
        return ldm_error("%s: not a Stable Diffusion checkpoint: no model.diffusion_model.* UNet "
                         "and no cond_stage_model.* text encoder keys", path);
    }
    const ldm_tensor_entry *c = *cin;
    if (c && c->ndim == 4 && c->shape[1] != 4 && c->shape[1] != 9)
        return ldm_error("%s: UNet with %lld input channels: %s is not supported (SD1/SD2 "
                         "UNets have 4, inpainting UNets 9)", path, (long long)c->shape[1],
                         c->shape[1] == 5 ? "a depth-conditioned model" : "this architecture");
    const ldm_tensor_entry *ctx = ldm_tensor_file_find(
        f, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight");
    m->family = sd2 || (!sd1 && ctx && ctx->ndim == 2 && ctx->shape[1] == 1024) ? LDM_FAMILY_SD2
                                                                                : LDM_FAMILY_SD1;
    m->has_unet = c != NULL;
    m->has_vae = count_prefix(f, "first_stage_model.") > 0;
    m->has_text = sd1 || sd2;
    *sd2_text = sd2;
    return 0;
}

// A single file's text encoder sizes come from its tensors (embedding and
// MLP shapes, layer count); the rest is the CompVis convention of its family:
// SD2 runs to the penultimate layer, prompts are padded with 0 (SD2) or
// <|endoftext|> (SD1). With a --config folder, its head count is kept.
static int clip_from_tensors(ldm_clip_config *c, const ldm_tensor_file *f, int sd2,
                             int has_config, const char *path) {
    const char *tp = sd2 ? "cond_stage_model.model." : "cond_stage_model.transformer.text_model.";
    char k[256];
    snprintf(k, sizeof k, "%s%s", tp, sd2 ? "token_embedding.weight" : "embeddings.token_embedding.weight");
    const ldm_tensor_entry *te = ldm_tensor_file_find(f, k);
    snprintf(k, sizeof k, "%s%s", tp, sd2 ? "positional_embedding" : "embeddings.position_embedding.weight");
    const ldm_tensor_entry *pe = ldm_tensor_file_find(f, k);
    snprintf(k, sizeof k, "%s%s", tp, sd2 ? "transformer.resblocks.0.mlp.c_fc.weight"
                                            : "encoder.layers.0.mlp.fc1.weight");
    const ldm_tensor_entry *fc = ldm_tensor_file_find(f, k);
    if (te && te->ndim == 2 && pe && pe->ndim == 2 && fc && fc->ndim == 2) {
        int D = (int)te->shape[1];
        if (D != c->hidden_size && !has_config)
            c->num_attention_heads = D / 64 > 0 ? D / 64 : 1;  // head size 64 in SD1/SD2
        c->vocab_size = (int)te->shape[0];
        c->hidden_size = D;
        c->max_position_embeddings = (int)pe->shape[0];
        c->intermediate_size = (int)fc->shape[0];
    }
    snprintf(k, sizeof k, "%s%s", tp, sd2 ? "transformer.resblocks." : "encoder.layers.");
    c->num_hidden_layers = count_layers(f, k);
    c->skip_last_layers = sd2;  // SD2: penultimate layer
    c->hidden_act = sd2 ? LDM_ACT_GELU : LDM_ACT_QUICK_GELU;
    c->pad_token_id = sd2 ? 0 : 49407;
    if (c->num_hidden_layers <= c->skip_last_layers)
        return ldm_error("%s: text encoder has %d layers: truncated checkpoint?", path,
                         c->num_hidden_layers);
    return 0;
}

// A CompVis single file: refuse other architectures, detect the family, take
// the presets (or --config DIR's configs), size the text encoder from its
// tensors, and give each component its view of the one file.
static int open_single(ldm_model *m, const char *path, const ldm_model_options *opt,
                       const struct ldm_ops *ops) {
    ldm_tensor_file *f = &m->files[0];
    if (ldm_tensor_file_open(f, path)) return LDM_ERR;
    m->n_files = 1;
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], "global_step")) m->global_step = strtoll(f->meta_values[i], NULL, 10);
    int sd2 = 0;
    const ldm_tensor_entry *cin = NULL;
    if (refuse_foreign_keys(f, path) || detect_single(m, f, path, &sd2, &cin)) return LDM_ERR;
    if (ldm_unet_config_sd(&m->unet, m->family) || ldm_vae_config_sd(&m->vae) ||
        ldm_clip_config_sd(&m->clip, m->family))
        return LDM_ERR;
    const char *cfg = opt ? opt->config_dir : NULL;
    if (cfg && (read_sub_config(cfg, "unet", &m->unet, parse_unet) < 0 ||
                read_sub_config(cfg, "vae", &m->vae, parse_vae) < 0 ||
                read_sub_config(cfg, "text_encoder", &m->clip, parse_clip) < 0))
        return LDM_ERR;
    if (m->has_text && clip_from_tensors(&m->clip, f, sd2, cfg != NULL, path)) return LDM_ERR;
    if (cin && cin->ndim == 4) m->unet.in_channels = (int)cin->shape[1];   // 4, inpainting 9
    if (cin && cin->ndim == 4 && cin->shape[0] != m->unet.block_out_channels[0])
        return ldm_error("%s: UNet width %lld differs from the SD preset %d: pass a diffusers "
                         "config folder for this model (--config DIR)", path,
                         (long long)cin->shape[0], m->unet.block_out_channels[0]);
    weights_init(&m->unet_w, f, LDM_COMP_UNET, LDM_LAYOUT_COMPVIS, ops);
    m->unet_w.layers_per_block = m->unet.layers_per_block;
    m->unet_w.n_levels = m->unet.n_levels;
    weights_init(&m->vae_w, f, LDM_COMP_VAE, LDM_LAYOUT_COMPVIS, ops);
    m->vae_w.layers_per_block = m->vae.layers_per_block;
    m->vae_w.n_levels = m->vae.n_levels;
    weights_init(&m->clip_w, f, sd2 ? LDM_COMP_TEXT_SD2 : LDM_COMP_TEXT_SD1, LDM_LAYOUT_COMPVIS, ops);
    decide_prediction(m, opt, NULL);
    return 0;
}

int ldm_model_open(ldm_model *m, const char *path, const ldm_model_options *opt) {
    memset(m, 0, sizeof *m);
    m->global_step = -1;
    const struct ldm_ops *ops = opt && opt->ops ? opt->ops : ldm_backend_default();
    if (!ops) return LDM_ERR;
    m->path = strdup(path);
    if (!m->path) return ldm_error("out of memory");
    int rc;
    if (ldm_is_dir(path)) {
        m->layout = LDM_LAYOUT_DIFFUSERS;
        rc = open_diffusers(m, path, opt, ops);
        char p[4096];
        snprintf(p, sizeof p, "%s/tokenizer/vocab.json", path);
        if (rc == 0 && ldm_is_file(p)) {
            snprintf(p, sizeof p, "%s/tokenizer", path);
            m->tokenizer_dir = strdup(p);
        }
    } else {
        m->layout = LDM_LAYOUT_COMPVIS;
        rc = open_single(m, path, opt, ops);
    }
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        ldm_model_close(m);
        return ldm_error("%s", msg);
    }
    ldm_model_set_residency(m, LDM_WEIGHTS_AUTO, 0);
    return 0;
}

void ldm_model_release_pages(const ldm_model *m) {
    for (int i = 0; i < m->n_files; i++) ldm_tensor_file_release_all(&m->files[i]);
}

// The files stay open (mapped) until ldm_model_close, so weights kept as
// stored may point into them (map = 1).
void ldm_model_set_residency(ldm_model *m, ldm_weights_dtype weights, int low_memory) {
    ldm_weights *ws[] = {&m->unet_w, &m->vae_w, &m->clip_w};
    for (int i = 0; i < 3; i++) {
        ws[i]->dtype = weights;
        ws[i]->map = 1;
        ws[i]->low_memory = low_memory;
    }
}

void ldm_model_close(ldm_model *m) {
    for (int i = 0; i < 3; i++) ldm_tensor_file_close(&m->files[i]);
    free(m->path);
    free(m->tokenizer_dir);
    memset(m, 0, sizeof *m);
}

// ---------------------------------------------------------------------------
// a VAE on its own (ldm_vae_file_open): the same folder and file rules

// A diffusers vae folder: config.json + weights.
static int open_vae_folder(ldm_vae_file *vf, const char *dir) {
    int r = read_config(dir, &vf->cfg, parse_vae);
    if (r < 0) return LDM_ERR;
    if (r == 0) return ldm_error("%s: no config.json (expected a diffusers vae folder)", dir);
    r = open_weights(&vf->file, dir);
    if (r < 0) return LDM_ERR;
    if (r == 0)
        return ldm_error("%s: config.json but no weights (expected "
                         "diffusion_pytorch_model.safetensors, .fp16.safetensors or .bin)", dir);
    vf->w.layout = LDM_LAYOUT_DIFFUSERS;
    vf->w.prefix = "";
    return LDM_OK;
}

// A single tensor file; the layout is told by which keys exist.
static int open_vae_single(ldm_vae_file *vf, const char *path) {
    if (ldm_tensor_file_open(&vf->file, path)) return LDM_ERR;
    ldm_tensor_file *f = &vf->file;
    // single files hold no config: the SD1/SD2 VAE
    if (ldm_vae_config_sd(&vf->cfg)) return LDM_ERR;
    if (ldm_tensor_file_find(f, "decoder.up_blocks.0.resnets.0.norm1.weight")) {
        vf->w.layout = LDM_LAYOUT_DIFFUSERS;
        vf->w.prefix = "";
        return LDM_OK;
    }
    if (ldm_tensor_file_find(f, "first_stage_model.decoder.conv_in.weight")) {
        vf->w.layout = LDM_LAYOUT_COMPVIS;
        return LDM_OK;
    }
    if (ldm_tensor_file_find(f, "decoder.up.0.block.0.norm1.weight")) {
        // Standalone CompVis VAE: give its keys the prefix they have inside a
        // full checkpoint, so ldm/io/weights.c's one CompVis mapping applies.
        const char *p = "first_stage_model.";
        for (int64_t i = 0; i < f->n_entries; i++) {
            char *n = malloc(strlen(p) + strlen(f->entries[i].name) + 1);
            if (!n) return ldm_error("%s: out of memory", path);
            strcpy(n, p);
            strcat(n, f->entries[i].name);
            free(f->entries[i].name);
            f->entries[i].name = n;
        }
        vf->w.layout = LDM_LAYOUT_COMPVIS;
        return LDM_OK;
    }
    return ldm_error("%s: no VAE tensors found (expected first_stage_model.decoder.*, "
                     "decoder.up.* or decoder.up_blocks.*) -- is this a Stable Diffusion "
                     "checkpoint or VAE?", path);
}

int ldm_vae_file_open(ldm_vae_file *vf, const char *path, const struct ldm_ops *ops) {
    memset(vf, 0, sizeof *vf);
    int rc;
    if (ldm_is_dir(path)) {
        // A model folder (its vae/) or the vae folder itself.
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/vae/config.json", path);
        if (ldm_is_file(sub)) {
            snprintf(sub, sizeof sub, "%s/vae", path);
            rc = open_vae_folder(vf, sub);
        } else {
            rc = open_vae_folder(vf, path);
        }
    } else {
        rc = open_vae_single(vf, path);
    }
    vf->w.file = &vf->file;
    vf->w.comp = LDM_COMP_VAE;
    vf->w.ops = ops;
    vf->w.n_levels = vf->cfg.n_levels;                // the CompVis key mapping needs them
    vf->w.layers_per_block = vf->cfg.layers_per_block;
    if (rc) ldm_vae_file_close(vf);
    return rc;
}

void ldm_vae_file_close(ldm_vae_file *vf) {
    ldm_tensor_file_close(&vf->file);
    memset(vf, 0, sizeof *vf);
}

// ---------------------------------------------------------------------------
// summary (`sd info`)

// Parameters and dtypes of the entries of f under prefix (NULL: all);
// `ignore` counts skipped EMA copies.
static void tally(const ldm_tensor_file *f, const char *prefix, int64_t *params, int64_t *count,
                  char *dtypes, size_t n) {
    int seen[16] = {0};
    *params = *count = 0;
    size_t pl = prefix ? strlen(prefix) : 0;
    for (int64_t i = 0; i < f->n_entries; i++) {
        const ldm_tensor_entry *e = &f->entries[i];
        if (prefix && strncmp(e->name, prefix, pl) != 0) continue;
        *params += e->numel;
        (*count)++;
        if ((int)e->dtype < 16) seen[e->dtype] = 1;
    }
    dtypes[0] = 0;
    for (int d = 0; d < 16; d++)
        if (seen[d]) {
            size_t u = strlen(dtypes);
            snprintf(dtypes + u, n - u, "%s%s", u ? "," : "", ldm_dtype_name((ldm_dtype)d));
        }
}

int ldm_model_print_summary(const ldm_model *m, void *file) {
    FILE *out = file ? file : stdout;
    fprintf(out, "model       %s\n", m->path);
    fprintf(out, "layout      %s\n", m->layout == LDM_LAYOUT_COMPVIS
                                        ? "CompVis single file (model.diffusion_model.*, "
                                          "first_stage_model.*, cond_stage_model.*)"
                                        : "diffusers folder (unet/, vae/, text_encoder/)");
    fprintf(out, "family      %s (text encoder: %s)\n", ldm_family_name(m->family),
            m->family == LDM_FAMILY_SD2 ? "OpenCLIP ViT-H/14 style, penultimate layer"
                                        : "OpenAI CLIP ViT-L/14 style, last layer");
    fprintf(out, "prediction  %s (%s)\n", ldm_prediction_name(m->prediction), m->prediction_why);
    if (m->global_step >= 0) fprintf(out, "global_step %lld\n", (long long)m->global_step);
    const char *names[3] = {"unet", "vae", "text"};
    const char *prefixes[3] = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model."};
    const int has[3] = {m->has_unet, m->has_vae, m->has_text};
    int64_t total = 0;
    for (int i = 0; i < 3; i++) {
        const ldm_tensor_file *f = m->layout == LDM_LAYOUT_COMPVIS ? &m->files[0] : &m->files[i];
        if (!has[i]) {
            fprintf(out, "%-11s absent\n", names[i]);
            continue;
        }
        int64_t params, count;
        char dt[64];
        tally(f, m->layout == LDM_LAYOUT_COMPVIS ? prefixes[i] : NULL, &params, &count, dt, sizeof dt);
        total += params;
        fprintf(out, "%-11s %lld tensors, %.2fM parameters, %s, %s (%s)\n", names[i],
                (long long)count, params / 1e6, dt, f->format ? f->format : "?", f->path);
    }
    if (m->layout == LDM_LAYOUT_COMPVIS) {
        int64_t p, c;
        char dt[64];
        tally(&m->files[0], "model_ema.", &p, &c, dt, sizeof dt);
        if (c) fprintf(out, "ema         %lld tensors ignored (model_ema.*)\n", (long long)c);
    }
    fprintf(out, "total       %.2fM parameters\n", total / 1e6);
    const ldm_unet_config *u = &m->unet;
    if (m->has_unet) {
        fprintf(out, "unet config channels [");
        for (int i = 0; i < u->n_levels; i++) fprintf(out, "%s%d", i ? "," : "", u->block_out_channels[i]);
        fprintf(out, "], heads [");
        for (int i = 0; i < u->n_levels; i++) fprintf(out, "%s%d", i ? "," : "", u->num_heads[i]);
        fprintf(out, "], %d res/level, context %d, %s proj, sample %d\n", u->layers_per_block,
                u->cross_attention_dim, u->use_linear_projection ? "linear" : "conv", u->sample_size);
        if (u->num_class_embeds > 0)   // the x4 upscaler's noise level (ldm/upscale.h)
            fprintf(out, "unet extras in_channels %d, class embedding of %d labels: an x4 upscaler "
                    "(sd upscale)\n", u->in_channels, u->num_class_embeds);
    }
    if (m->has_vae)
        fprintf(out, "vae config  channels [%d..%d] x %d levels, latent %d, scale %.5f\n",
                m->vae.block_out_channels[0], m->vae.block_out_channels[m->vae.n_levels - 1],
                m->vae.n_levels, m->vae.latent_channels, m->vae.scaling_factor);
    if (m->has_text)
        fprintf(out, "text config width %d, %d layers (%d run), %d heads, mlp %d, vocab %d, %s\n",
                m->clip.hidden_size, m->clip.num_hidden_layers,
                m->clip.num_hidden_layers - m->clip.skip_last_layers, m->clip.num_attention_heads,
                m->clip.intermediate_size, m->clip.vocab_size,
                m->clip.hidden_act == LDM_ACT_GELU ? "gelu" : "quick_gelu");
    return 0;
}
