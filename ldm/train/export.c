/*
 * ldm/train/export.c -- a trained model as a diffusers folder (ldm/train/export.h).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/fs.h"
#include "ldm/io/tensorfile.h"
#include "ldm/train/export.h"

// ---- files ------------------------------------------------------------------------

int ldm_write_text_atomic(const char *path, const char *text) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return ldm_error("%s: path too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return ldm_error("%s: cannot create: %s", tmp, strerror(errno));
    int bad = fputs(text, f) == EOF;
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return ldm_error("%s: write failed: %s", path, strerror(err));
    }
    return 0;
}

static int make_dir(const char *path) {
    if (mkdir(path, 0777) == 0 || (errno == EEXIST && ldm_is_dir(path))) return 0;
    return ldm_error("%s: cannot create the folder: %s", path, strerror(errno));
}

static int copy_file(const char *dst, const char *src) {
    FILE *in = fopen(src, "rb");
    if (!in) return ldm_error("%s: cannot open: %s", src, strerror(errno));
    char tmp[4096 + 8];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", dst) >= (int)sizeof tmp) {
        fclose(in);
        return ldm_error("%s: path too long", dst);
    }
    FILE *out = fopen(tmp, "wb");
    if (!out) {
        fclose(in);
        return ldm_error("%s: cannot create: %s", tmp, strerror(errno));
    }
    char buf[1 << 16];
    size_t n;
    int bad = 0;
    while (!bad && (n = fread(buf, 1, sizeof buf, in)) > 0) bad = fwrite(buf, 1, n, out) != n;
    bad |= ferror(in);
    fclose(in);
    if (fclose(out) != 0) bad = 1;
    if (bad || rename(tmp, dst) != 0) {
        unlink(tmp);
        return ldm_error("%s: copy from %s failed", dst, src);
    }
    return 0;
}

// ---- weights ----------------------------------------------------------------------

int ldm_export_weights(const char *path, const ldm_params *p, const char *prefix,
                       const float *values, ldm_dtype dtype) {
    size_t plen = strlen(prefix);
    int n = 0;
    for (int i = 0; i < p->n; i++) n += strncmp(p->p[i].name, prefix, plen) == 0;
    if (n == 0) return ldm_error("%s: no parameter named %s*", path, prefix);
    const char **names = calloc((size_t)n, sizeof *names);
    ldm_tensor *ts = calloc((size_t)n, sizeof *ts);
    const ldm_tensor **tp = calloc((size_t)n, sizeof *tp);
    int rc = names && ts && tp ? 0 : ldm_error("%s: out of memory", path);
    int64_t off = 0;
    for (int i = 0, k = 0; i < p->n && !rc; off += p->p[i].w->numel, i++) {
        const ldm_param *q = &p->p[i];
        if (strncmp(q->name, prefix, plen) != 0) continue;
        const float *src = values ? values + off : q->w->data;
        ldm_tensor *t = &ts[k];
        t->ndim = q->w->ndim;
        memcpy(t->shape, q->w->shape, sizeof t->shape);
        t->numel = q->w->numel;
        t->dtype = dtype;
        t->data = malloc((size_t)t->numel * ldm_tensor_elem_size(dtype) + 1);
        if (!t->data) { rc = ldm_error("%s: out of memory", path); break; }
        uint16_t *h = (uint16_t *)t->data;
        for (int64_t j = 0; j < t->numel; j++) {
            if (dtype == LDM_DTYPE_F16) h[j] = ldm_f32_to_f16(src[j]);
            else if (dtype == LDM_DTYPE_BF16) h[j] = ldm_f32_to_bf16(src[j]);
            else t->data[j] = src[j];
        }
        names[k] = q->name + plen;
        tp[k] = t;
        k++;
    }
    if (!rc) rc = ldm_safetensors_write(path, n, names, tp);
    for (int k = 0; ts && k < n; k++) free(ts[k].data);
    free(names), free(ts), free(tp);
    return rc;
}

// ---- config.json texts ----------------------------------------------------------------

// A float field as its shortest decimal (1e-05, not 9.99999974737875e-06).
static cJSON *num_f(float v) {
    char b[32];
    snprintf(b, sizeof b, "%.7g", (double)v);
    return cJSON_CreateNumber(strtod(b, NULL));
}

static void add_ints(cJSON *o, const char *key, const int *v, int n) {
    cJSON *a = cJSON_AddArrayToObject(o, key);
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
}

static void add_strs(cJSON *o, const char *key, const char *const *v, int n) {
    cJSON *a = cJSON_AddArrayToObject(o, key);
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateString(v[i]));
}

static char *print(cJSON *o) {
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    if (!s) ldm_error("config.json: out of memory");
    return s;
}

char *ldm_export_unet_config(const ldm_unet_config *c) {
    cJSON *o = cJSON_CreateObject();
    const char *down[LDM_MAX_LEVELS], *up[LDM_MAX_LEVELS];
    int uniform = 1;
    for (int i = 0; i < c->n_levels; i++) {
        down[i] = c->down_attn[i] ? "CrossAttnDownBlock2D" : "DownBlock2D";
        up[i] = c->up_attn[i] ? "CrossAttnUpBlock2D" : "UpBlock2D";
        uniform &= c->attention_head_dim[i] == c->attention_head_dim[0];
    }
    cJSON_AddStringToObject(o, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(o, "_diffusers_version", LDM_EXPORT_DIFFUSERS_VERSION);
    cJSON_AddStringToObject(o, "act_fn", "silu");
    if (uniform) cJSON_AddNumberToObject(o, "attention_head_dim", c->attention_head_dim[0]);
    else add_ints(o, "attention_head_dim", c->attention_head_dim, c->n_levels);
    add_ints(o, "block_out_channels", c->block_out_channels, c->n_levels);
    cJSON_AddBoolToObject(o, "center_input_sample", 0);
    cJSON_AddNumberToObject(o, "cross_attention_dim", c->cross_attention_dim);
    add_strs(o, "down_block_types", down, c->n_levels);
    cJSON_AddNumberToObject(o, "downsample_padding", 1);
    cJSON_AddBoolToObject(o, "flip_sin_to_cos", c->flip_sin_to_cos);
    cJSON_AddNumberToObject(o, "freq_shift", c->freq_shift);
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(o, "layers_per_block", c->layers_per_block);
    cJSON_AddNumberToObject(o, "mid_block_scale_factor", 1);
    if (c->mid_attn) cJSON_AddStringToObject(o, "mid_block_type", "UNetMidBlock2DCrossAttn");
    cJSON_AddItemToObject(o, "norm_eps", num_f(c->norm_eps));
    cJSON_AddNumberToObject(o, "norm_num_groups", c->norm_num_groups);
    cJSON_AddNumberToObject(o, "out_channels", c->out_channels);
    cJSON_AddNumberToObject(o, "sample_size", c->sample_size);
    if (c->time_embed_dim != 4 * c->block_out_channels[0])
        cJSON_AddNumberToObject(o, "time_embedding_dim", c->time_embed_dim);
    cJSON_AddNumberToObject(o, "transformer_layers_per_block", c->transformer_layers_per_block);
    add_strs(o, "up_block_types", up, c->n_levels);
    cJSON_AddBoolToObject(o, "upcast_attention", c->upcast_attention);
    cJSON_AddBoolToObject(o, "use_linear_projection", c->use_linear_projection);
    return print(o);
}

char *ldm_export_vae_config(const ldm_vae_config *c) {
    cJSON *o = cJSON_CreateObject();
    const char *down[LDM_MAX_LEVELS], *up[LDM_MAX_LEVELS];
    for (int i = 0; i < c->n_levels; i++) down[i] = "DownEncoderBlock2D", up[i] = "UpDecoderBlock2D";
    cJSON_AddStringToObject(o, "_class_name", "AutoencoderKL");
    cJSON_AddStringToObject(o, "_diffusers_version", LDM_EXPORT_DIFFUSERS_VERSION);
    cJSON_AddStringToObject(o, "act_fn", "silu");
    add_ints(o, "block_out_channels", c->block_out_channels, c->n_levels);
    add_strs(o, "down_block_types", down, c->n_levels);
    cJSON_AddBoolToObject(o, "force_upcast", 1);
    cJSON_AddNumberToObject(o, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(o, "latent_channels", c->latent_channels);
    cJSON_AddNumberToObject(o, "layers_per_block", c->layers_per_block);
    cJSON_AddBoolToObject(o, "mid_block_add_attention", c->mid_block_add_attention);
    cJSON_AddNumberToObject(o, "norm_num_groups", c->norm_num_groups);
    cJSON_AddNumberToObject(o, "out_channels", c->out_channels);
    cJSON_AddNumberToObject(o, "sample_size", c->sample_size);
    // train_tiny.py: round(1 / std(z), 5)
    cJSON_AddNumberToObject(o, "scaling_factor", round((double)c->scaling_factor * 1e5) / 1e5);
    add_strs(o, "up_block_types", up, c->n_levels);
    cJSON_AddBoolToObject(o, "use_post_quant_conv", c->use_post_quant_conv);
    cJSON_AddBoolToObject(o, "use_quant_conv", c->use_quant_conv);
    return print(o);
}

char *ldm_export_clip_config(const ldm_clip_config *c) {
    cJSON *o = cJSON_CreateObject();
    const char *arch = "CLIPTextModel";
    add_strs(o, "architectures", &arch, 1);
    cJSON_AddNumberToObject(o, "attention_dropout", 0);
    cJSON_AddNumberToObject(o, "bos_token_id", 49406);
    cJSON_AddStringToObject(o, "dtype", "float16");
    cJSON_AddNumberToObject(o, "eos_token_id", 49407);
    cJSON_AddStringToObject(o, "hidden_act", c->hidden_act == LDM_ACT_GELU ? "gelu" : "quick_gelu");
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(o, "initializer_factor", 1.0);
    cJSON_AddNumberToObject(o, "initializer_range", 0.02);
    cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate_size);
    cJSON_AddItemToObject(o, "layer_norm_eps", num_f(c->layer_norm_eps));
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_position_embeddings);
    cJSON_AddStringToObject(o, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(o, "num_attention_heads", c->num_attention_heads);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->num_hidden_layers);
    cJSON_AddNumberToObject(o, "pad_token_id", c->pad_token_id);
    cJSON_AddNumberToObject(o, "projection_dim", c->hidden_size);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    return print(o);
}

// The pipeline's own files: which class each part is (model_index.json) and
// the sampler train_tiny.py ships (PNDM over SD's scaled-linear schedule).
static const char *const model_index_json =
    "{\n  \"_class_name\": \"StableDiffusionPipeline\",\n"
    "  \"_diffusers_version\": \"" LDM_EXPORT_DIFFUSERS_VERSION "\",\n"
    "  \"feature_extractor\": [null, null],\n  \"safety_checker\": [null, null],\n"
    "  \"requires_safety_checker\": false,\n  \"scheduler\": [\"diffusers\", \"PNDMScheduler\"],\n"
    "  \"text_encoder\": [\"transformers\", \"CLIPTextModel\"],\n  \"tokenizer\": [null, null],\n"
    "  \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],\n"
    "  \"vae\": [\"diffusers\", \"AutoencoderKL\"]\n}\n";
static const char *const scheduler_json =
    "{\n  \"_class_name\": \"PNDMScheduler\",\n"
    "  \"_diffusers_version\": \"" LDM_EXPORT_DIFFUSERS_VERSION "\",\n"
    "  \"num_train_timesteps\": 1000,\n  \"beta_start\": 0.00085,\n  \"beta_end\": 0.012,\n"
    "  \"beta_schedule\": \"scaled_linear\",\n  \"prediction_type\": \"epsilon\",\n"
    "  \"set_alpha_to_one\": false,\n  \"skip_prk_steps\": true,\n  \"steps_offset\": 1,\n"
    "  \"clip_sample\": false,\n  \"trained_betas\": null\n}\n";

// ---- the folder ---------------------------------------------------------------------

// DIR/SUB/config.json + DIR/SUB/WEIGHTS from the parameters named "SUB.".
static int write_component(const char *dir, const char *sub, const char *weights, char *config,
                           const ldm_export_spec *s) {
    char p[4096], prefix[64];
    if (!config) return LDM_ERR;
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    int rc = make_dir(p);
    snprintf(p, sizeof p, "%s/%s/config.json", dir, sub);
    if (!rc) rc = ldm_write_text_atomic(p, config);
    free(config);
    snprintf(p, sizeof p, "%s/%s/%s", dir, sub, weights);
    snprintf(prefix, sizeof prefix, "%s.", sub);
    return rc ? rc : ldm_export_weights(p, s->params, prefix, s->values, LDM_DTYPE_F16);
}

int ldm_export_model(const char *dir, const ldm_export_spec *s) {
    char p[4096], q[4096];
    if (make_dir(dir)) return LDM_ERR;
    if (s->unet && write_component(dir, "unet", "diffusion_pytorch_model.safetensors",
                                   ldm_export_unet_config(s->unet), s))
        return LDM_ERR;
    if (s->clip && write_component(dir, "text_encoder", "model.safetensors",
                                   ldm_export_clip_config(s->clip), s))
        return LDM_ERR;
    if (s->vae && write_component(dir, "vae", "diffusion_pytorch_model.safetensors",
                                  ldm_export_vae_config(s->vae), s))
        return LDM_ERR;
    if (!s->vae && s->vae_from) {
        static const char *const files[2] = {"config.json", "diffusion_pytorch_model.safetensors"};
        snprintf(p, sizeof p, "%s/vae", dir);
        if (make_dir(p)) return LDM_ERR;
        for (int i = 0; i < 2; i++) {
            snprintf(p, sizeof p, "%s/vae/%s", dir, files[i]);
            snprintf(q, sizeof q, "%s/vae/%s", s->vae_from, files[i]);
            if (copy_file(p, q)) return LDM_ERR;
        }
    }
    if (s->unet) {
        snprintf(p, sizeof p, "%s/scheduler", dir);
        if (make_dir(p)) return LDM_ERR;
        snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);
        if (ldm_write_text_atomic(p, scheduler_json)) return LDM_ERR;
        snprintf(p, sizeof p, "%s/model_index.json", dir);
        if (ldm_write_text_atomic(p, model_index_json)) return LDM_ERR;
    }
    return 0;
}
