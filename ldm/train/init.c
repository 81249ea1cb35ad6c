/*
 * ldm/train/init.c -- initial weights as torch gives them, and the tiny
 * configs (ldm/train/init.h).
 *
 * Each ldm_init_*_state walks the component's modules in the order the
 * diffusers / transformers constructor registers them (= the order of
 * named_parameters(); tests/test_train_loop.c checks it against torch's list)
 * and appends one tensor per parameter, drawn from its initial distribution.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/train/init.h"

// ---- the tiny configs (tools/train/train_tiny.py) ---------------------------

static const char *const tiny_vae_json =
    "{\"_class_name\": \"AutoencoderKL\", \"in_channels\": 3, \"out_channels\": 3, "
    "\"latent_channels\": 4, \"block_out_channels\": [16, 32, 64, 64], "
    "\"layers_per_block\": 1, \"norm_num_groups\": 16, \"sample_size\": 64, "
    "\"act_fn\": \"silu\", \"scaling_factor\": 0.18215}";
static const char *const tiny_text_json =
    "{\"architectures\": [\"CLIPTextModel\"], \"vocab_size\": 49408, \"hidden_size\": 64, "
    "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
    "\"max_position_embeddings\": 77, \"hidden_act\": \"quick_gelu\", "
    "\"layer_norm_eps\": 1e-05, \"pad_token_id\": 49407}";
static const char *const tiny_unet_json =
    "{\"_class_name\": \"UNet2DConditionModel\", \"sample_size\": 8, \"in_channels\": 4, "
    "\"out_channels\": 4, \"layers_per_block\": 1, \"block_out_channels\": [32, 64], "
    "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"], "
    "\"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"], "
    "\"cross_attention_dim\": 64, \"attention_head_dim\": 4, \"norm_num_groups\": 8}";

int ldm_train_tiny_configs(ldm_unet_config *unet, ldm_vae_config *vae, ldm_clip_config *clip) {
    if (unet && ldm_unet_config_parse(unet, tiny_unet_json, "train_tiny UNET_CFG")) return LDM_ERR;
    if (vae && ldm_vae_config_parse(vae, tiny_vae_json, "train_tiny VAE_CFG")) return LDM_ERR;
    if (clip && ldm_clip_config_parse(clip, tiny_text_json, "train_tiny TEXT_CFG")) return LDM_ERR;
    return 0;
}

// ---- the generator ------------------------------------------------------------

void ldm_init_uniform(ldm_rng *g, float *out, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) {
        double u = (double)(ldm_mt19937_next(g) & ((1u << 24) - 1)) / (double)(1u << 24);
        out[i] = (float)(u * ((double)hi - lo) + lo);
    }
}

// ---- the state dict under construction -------------------------------------------

typedef struct builder {
    ldm_tensor_file *sd;
    ldm_rng *g;
    int cap;
    int failed;
} builder;

// Append a zero tensor "<fmt...>" of `shape`; its data, or NULL (b->failed set).
static float *add(builder *b, const int64_t *shape, int ndim, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static float *add(builder *b, const int64_t *shape, int ndim, const char *fmt, ...) {
    if (b->failed) return NULL;
    ldm_tensor_file *sd = b->sd;
    if (sd->n_entries == b->cap) {
        int cap = b->cap ? 2 * b->cap : 128;
        ldm_tensor_entry *e = realloc(sd->entries, (size_t)cap * sizeof *e);
        if (!e) { b->failed = 1; ldm_error("state dict: out of memory"); return NULL; }
        sd->entries = e, b->cap = cap;
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    ldm_tensor_entry *e = &sd->entries[sd->n_entries];
    memset(e, 0, sizeof *e);
    e->dtype = LDM_DTYPE_F32;
    e->ndim = ndim;
    memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
    e->numel = ldm_shape_numel(shape, ndim);
    e->nbytes = (uint64_t)e->numel * 4;
    e->name = strdup(name);
    e->owned = calloc((size_t)e->numel ? (size_t)e->numel : 1, 4);
    if (!e->name || !e->owned) {
        free(e->name), free(e->owned);
        b->failed = 1;
        ldm_error("state dict: out of memory for %s", name);
        return NULL;
    }
    e->data = e->owned;
    sd->n_entries++;
    return (float *)e->owned;
}

// torch's nn.Linear / nn.Conv2d reset_parameters: weight and bias both
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = shape[1] * KH * KW.
static void kaiming(builder *b, const char *name, const int64_t *shape, int ndim, int bias) {
    float *w = add(b, shape, ndim, "%s.weight", name);
    int64_t fan_in = 1;
    for (int d = 1; d < ndim; d++) fan_in *= shape[d];
    float bound = (float)(1.0 / sqrt((double)fan_in));
    if (w) ldm_init_uniform(b->g, w, ldm_shape_numel(shape, ndim), -bound, bound);
    if (!bias) return;
    float *bb = add(b, shape, 1, "%s.bias", name);
    if (bb) ldm_init_uniform(b->g, bb, shape[0], -bound, bound);
}
#define LINEAR(b, name, bias, ...) kaiming(b, name, LDM_SHAPE(__VA_ARGS__), bias)

// GroupNorm / LayerNorm: gamma 1, beta 0.
static void norm(builder *b, const char *name, int64_t c) {
    float *w = add(b, LDM_SHAPE(c), "%s.weight", name);
    if (w) for (int64_t i = 0; i < c; i++) w[i] = 1.0f;
    add(b, LDM_SHAPE(c), "%s.bias", name);
}

// transformers: N(0, std) weight, zero bias (bias < 0: none).
static void normal(builder *b, const char *name, const int64_t *shape, int ndim, double std,
                   int bias) {
    float *w = add(b, shape, ndim, "%s.weight", name);
    if (w) {
        int64_t n = ldm_shape_numel(shape, ndim);
        ldm_rng_randn(b->g, w, n);
        for (int64_t i = 0; i < n; i++) w[i] = (float)(w[i] * std);
    }
    if (bias) add(b, shape, 1, "%s.bias", name);
}

static char *cat(char *buf, size_t n, const char *a, const char *s) {
    snprintf(buf, n, "%s.%s", a, s);
    return buf;
}

static int finish(builder *b, const char *what) {
    if (b->failed) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        ldm_tensor_file_close(b->sd);
        return ldm_error("%s: %s", what, msg);
    }
    b->sd->path = strdup(what);
    b->sd->format = "memory";
    return b->sd->path ? 0 : ldm_error("%s: out of memory", what);
}

// ---- UNet2DConditionModel -----------------------------------------------------------

// ResnetBlock2D: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut.
static void unet_resnet(builder *b, const char *p, int64_t cin, int64_t cout, int64_t temb) {
    char n[256];
    norm(b, cat(n, sizeof n, p, "norm1"), cin);
    LINEAR(b, cat(n, sizeof n, p, "conv1"), 1, cout, cin, 3, 3);
    LINEAR(b, cat(n, sizeof n, p, "time_emb_proj"), 1, cout, temb);
    norm(b, cat(n, sizeof n, p, "norm2"), cout);
    LINEAR(b, cat(n, sizeof n, p, "conv2"), 1, cout, cout, 3, 3);
    if (cin != cout) LINEAR(b, cat(n, sizeof n, p, "conv_shortcut"), 1, cout, cin, 1, 1);
}

// diffusers Attention: to_q, to_k, to_v (no bias), to_out.0 (bias).
static void unet_attention(builder *b, const char *p, int64_t d, int64_t dkv) {
    char n[256];
    LINEAR(b, cat(n, sizeof n, p, "to_q"), 0, d, d);
    LINEAR(b, cat(n, sizeof n, p, "to_k"), 0, d, dkv);
    LINEAR(b, cat(n, sizeof n, p, "to_v"), 0, d, dkv);
    LINEAR(b, cat(n, sizeof n, p, "to_out.0"), 1, d, d);
}

// Transformer2DModel with `depth` BasicTransformerBlocks, inner width D = C.
static void unet_transformer(builder *b, const char *p, const ldm_unet_config *cfg, int64_t c,
                             int only_cross) {
    char n[256], q[160];
    int64_t d = c, dc = cfg->cross_attention_dim;
    norm(b, cat(n, sizeof n, p, "norm"), c);
    if (cfg->use_linear_projection) LINEAR(b, cat(n, sizeof n, p, "proj_in"), 1, d, c);
    else LINEAR(b, cat(n, sizeof n, p, "proj_in"), 1, d, c, 1, 1);
    for (int k = 0; k < cfg->transformer_layers_per_block; k++) {
        snprintf(q, sizeof q, "%s.transformer_blocks.%d", p, k);
        norm(b, cat(n, sizeof n, q, "norm1"), d);
        unet_attention(b, cat(n, sizeof n, q, "attn1"), d, only_cross ? dc : d);
        norm(b, cat(n, sizeof n, q, "norm2"), d);
        unet_attention(b, cat(n, sizeof n, q, "attn2"), d, dc);
        norm(b, cat(n, sizeof n, q, "norm3"), d);
        LINEAR(b, cat(n, sizeof n, q, "ff.net.0.proj"), 1, 8 * d, d);   // GEGLU: a | gate
        LINEAR(b, cat(n, sizeof n, q, "ff.net.2"), 1, d, 4 * d);
    }
    if (cfg->use_linear_projection) LINEAR(b, cat(n, sizeof n, p, "proj_out"), 1, c, d);
    else LINEAR(b, cat(n, sizeof n, p, "proj_out"), 1, c, d, 1, 1);
}

int ldm_init_unet_state(ldm_tensor_file *sd, const ldm_unet_config *cfg, ldm_rng *g) {
    memset(sd, 0, sizeof *sd);
    builder b = {sd, g, 0, 0};
    const int L = cfg->layers_per_block, n = cfg->n_levels;
    const int *ch = cfg->block_out_channels;
    int64_t c0 = ch[0], temb = cfg->time_embed_dim ? cfg->time_embed_dim : 4 * c0;
    char p[160];
    LINEAR(&b, "conv_in", 1, c0, cfg->in_channels, 3, 3);
    LINEAR(&b, "time_embedding.linear_1", 1, temb, c0);
    LINEAR(&b, "time_embedding.linear_2", 1, temb, temb);
    if (cfg->num_class_embeds > 0)   // nn.Embedding: N(0, 1)
        normal(&b, "class_embedding", LDM_SHAPE(cfg->num_class_embeds, temb), 1.0, 0);
    // CrossAttnDownBlock2D / DownBlock2D: attentions, resnets, downsamplers
    for (int i = 0; i < n; i++) {
        int64_t cin = i == 0 ? c0 : ch[i - 1], cout = ch[i];
        if (cfg->down_attn[i])
            for (int j = 0; j < L; j++) {
                snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
                unet_transformer(&b, p, cfg, cout, cfg->only_cross_attention[i]);
            }
        for (int j = 0; j < L; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
            unet_resnet(&b, p, j == 0 ? cin : cout, cout, temb);
        }
        if (i < n - 1) {
            snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.conv", i);
            LINEAR(&b, p, 1, cout, cout, 3, 3);
        }
    }
    // CrossAttnUpBlock2D / UpBlock2D (i = 0 the deepest): attentions, resnets
    // (input = previous output + popped skip), upsamplers
    int64_t cout = ch[n - 1];
    for (int i = 0; i < n; i++) {
        int level = n - 1 - i;   // the down level this up block mirrors
        int64_t prev = cout;
        cout = ch[level];
        int64_t cin = ch[level > 0 ? level - 1 : 0];
        if (cfg->up_attn[i])
            for (int j = 0; j <= L; j++) {
                snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
                unet_transformer(&b, p, cfg, cout, cfg->only_cross_attention[level]);
            }
        for (int j = 0; j <= L; j++) {
            int64_t skip = j == L ? cin : cout, res_in = j == 0 ? prev : cout;
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
            unet_resnet(&b, p, res_in + skip, cout, temb);
        }
        if (i < n - 1) {
            snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.conv", i);
            LINEAR(&b, p, 1, cout, cout, 3, 3);
        }
    }
    // UNetMidBlock2DCrossAttn: attentions.0, resnets.0, resnets.1
    int64_t cl = ch[n - 1];
    if (cfg->mid_attn) unet_transformer(&b, "mid_block.attentions.0", cfg, cl,
                                        cfg->mid_only_cross_attention);
    unet_resnet(&b, "mid_block.resnets.0", cl, cl, temb);
    unet_resnet(&b, "mid_block.resnets.1", cl, cl, temb);
    norm(&b, "conv_norm_out", c0);
    LINEAR(&b, "conv_out", 1, cfg->out_channels, c0, 3, 3);
    return finish(&b, "unet (initial weights)");
}

// ---- AutoencoderKL ----------------------------------------------------------------

// ResnetBlock2D without time embedding.
static void vae_resnet(builder *b, const char *p, int64_t cin, int64_t cout) {
    char n[256];
    norm(b, cat(n, sizeof n, p, "norm1"), cin);
    LINEAR(b, cat(n, sizeof n, p, "conv1"), 1, cout, cin, 3, 3);
    norm(b, cat(n, sizeof n, p, "norm2"), cout);
    LINEAR(b, cat(n, sizeof n, p, "conv2"), 1, cout, cout, 3, 3);
    if (cin != cout) LINEAR(b, cat(n, sizeof n, p, "conv_shortcut"), 1, cout, cin, 1, 1);
}

// UNetMidBlock2D: attentions.0 (group_norm, to_q/k/v/out.0 with biases), resnets.0, .1
static void vae_mid(builder *b, const char *p, const ldm_vae_config *cfg, int64_t c) {
    char n[256], q[160];
    if (cfg->mid_block_add_attention) {
        snprintf(q, sizeof q, "%s.attentions.0", p);
        norm(b, cat(n, sizeof n, q, "group_norm"), c);
        LINEAR(b, cat(n, sizeof n, q, "to_q"), 1, c, c);
        LINEAR(b, cat(n, sizeof n, q, "to_k"), 1, c, c);
        LINEAR(b, cat(n, sizeof n, q, "to_v"), 1, c, c);
        LINEAR(b, cat(n, sizeof n, q, "to_out.0"), 1, c, c);
    }
    vae_resnet(b, cat(n, sizeof n, p, "resnets.0"), c, c);
    vae_resnet(b, cat(n, sizeof n, p, "resnets.1"), c, c);
}

int ldm_init_vae_state(ldm_tensor_file *sd, const ldm_vae_config *cfg, ldm_rng *g) {
    memset(sd, 0, sizeof *sd);
    builder b = {sd, g, 0, 0};
    const int L = cfg->layers_per_block, n = cfg->n_levels;
    const int *ch = cfg->block_out_channels;
    int64_t c0 = ch[0], cl = ch[n - 1], z = cfg->latent_channels;
    char p[160];
    // Encoder: conv_in, down_blocks, mid_block, conv_norm_out, conv_out (2Z: mean | logvar)
    LINEAR(&b, "encoder.conv_in", 1, c0, cfg->in_channels, 3, 3);
    for (int i = 0; i < n; i++) {
        int64_t cin = i == 0 ? c0 : ch[i - 1], cout = ch[i];
        for (int j = 0; j < L; j++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.resnets.%d", i, j);
            vae_resnet(&b, p, j == 0 ? cin : cout, cout);
        }
        if (i < n - 1) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            LINEAR(&b, p, 1, cout, cout, 3, 3);
        }
    }
    vae_mid(&b, "encoder.mid_block", cfg, cl);
    norm(&b, "encoder.conv_norm_out", cl);
    LINEAR(&b, "encoder.conv_out", 1, 2 * z, cl, 3, 3);
    // Decoder: conv_in, up_blocks (registered before mid_block), mid_block, out
    LINEAR(&b, "decoder.conv_in", 1, cl, z, 3, 3);
    int64_t cout = cl;
    for (int i = 0; i < n; i++) {
        int64_t prev = cout;
        cout = ch[n - 1 - i];
        for (int j = 0; j <= L; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
            vae_resnet(&b, p, j == 0 ? prev : cout, cout);
        }
        if (i < n - 1) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            LINEAR(&b, p, 1, cout, cout, 3, 3);
        }
    }
    vae_mid(&b, "decoder.mid_block", cfg, cl);
    norm(&b, "decoder.conv_norm_out", c0);
    LINEAR(&b, "decoder.conv_out", 1, cfg->out_channels, c0, 3, 3);
    if (cfg->use_quant_conv) LINEAR(&b, "quant_conv", 1, 2 * z, 2 * z, 1, 1);
    if (cfg->use_post_quant_conv) LINEAR(&b, "post_quant_conv", 1, z, z, 1, 1);
    return finish(&b, "vae (initial weights)");
}

// ---- CLIPTextModel ------------------------------------------------------------------

int ldm_init_clip_state(ldm_tensor_file *sd, const ldm_clip_config *cfg, ldm_rng *g) {
    memset(sd, 0, sizeof *sd);
    builder b = {sd, g, 0, 0};
    const double factor = 1.0;   // initializer_factor (1 in every SD text encoder)
    int64_t D = cfg->hidden_size, F = cfg->intermediate_size, L = cfg->num_hidden_layers;
    double in_std = pow((double)D, -0.5) * pow(2.0 * L, -0.5) * factor;
    double out_std = pow((double)D, -0.5) * factor;
    double fc_std = pow(2.0 * D, -0.5) * factor;
    normal(&b, "embeddings.token_embedding", LDM_SHAPE(cfg->vocab_size, D), 0.02 * factor, 0);
    normal(&b, "embeddings.position_embedding", LDM_SHAPE(cfg->max_position_embeddings, D),
           0.02 * factor, 0);
    char p[160];
    for (int l = 0; l < L; l++) {   // CLIPEncoderLayer: self_attn (k, v, q, out), ln1, mlp, ln2
        static const char *const proj[4] = {"k_proj", "v_proj", "q_proj", "out_proj"};
        for (int k = 0; k < 4; k++) {
            snprintf(p, sizeof p, "encoder.layers.%d.self_attn.%s", l, proj[k]);
            normal(&b, p, LDM_SHAPE(D, D), k == 3 ? out_std : in_std, 1);
        }
        snprintf(p, sizeof p, "encoder.layers.%d.layer_norm1", l);
        norm(&b, p, D);
        snprintf(p, sizeof p, "encoder.layers.%d.mlp.fc1", l);
        normal(&b, p, LDM_SHAPE(F, D), fc_std, 1);
        snprintf(p, sizeof p, "encoder.layers.%d.mlp.fc2", l);
        normal(&b, p, LDM_SHAPE(D, F), in_std, 1);
        snprintf(p, sizeof p, "encoder.layers.%d.layer_norm2", l);
        norm(&b, p, D);
    }
    norm(&b, "final_layer_norm", D);
    return finish(&b, "text_encoder (initial weights)");
}

// ---- models from scratch ----------------------------------------------------------------

void ldm_state_weights(ldm_weights *w, const ldm_tensor_file *sd, ldm_component comp,
                       const struct ldm_ops *ops) {
    memset(w, 0, sizeof *w);
    w->file = sd;
    w->comp = comp;
    w->layout = LDM_LAYOUT_DIFFUSERS;
    w->prefix = "";
    w->ops = ops;
    w->dtype = LDM_WEIGHTS_F32;   // training weights are fp32
    w->map = 0;                   // copied: sd may be closed after the load
}

int ldm_unet_init_torch(ldm_unet *u, const ldm_unet_config *cfg, ldm_rng *g,
                        const struct ldm_ops *ops) {
    ldm_tensor_file sd;
    if (ldm_init_unet_state(&sd, cfg, g)) return LDM_ERR;
    ldm_weights w;
    ldm_state_weights(&w, &sd, LDM_COMP_UNET, ops);
    int rc = ldm_unet_load(u, cfg, &w);
    ldm_tensor_file_close(&sd);
    return rc;
}

int ldm_vae_init_torch(ldm_vae *v, const ldm_vae_config *cfg, ldm_rng *g,
                       const struct ldm_ops *ops) {
    ldm_tensor_file sd;
    if (ldm_init_vae_state(&sd, cfg, g)) return LDM_ERR;
    ldm_weights w;
    ldm_state_weights(&w, &sd, LDM_COMP_VAE, ops);
    int rc = ldm_vae_load(v, cfg, &w, LDM_VAE_ENCODER | LDM_VAE_DECODER);
    ldm_tensor_file_close(&sd);
    return rc;
}

int ldm_clip_init_torch(ldm_clip *c, const ldm_clip_config *cfg, ldm_rng *g,
                        const struct ldm_ops *ops) {
    ldm_tensor_file sd;
    if (ldm_init_clip_state(&sd, cfg, g)) return LDM_ERR;
    ldm_weights w;
    ldm_state_weights(&w, &sd, LDM_COMP_TEXT_SD1, ops);
    int rc = ldm_clip_load(c, &w, cfg);
    ldm_tensor_file_close(&sd);
    return rc;
}
