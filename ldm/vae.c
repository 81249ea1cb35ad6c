/*
 * ldm/vae.c -- AutoencoderKL: encoder, decoder, diagonal Gaussian posterior,
 * tiled encode/decode, and the pixel <-> [-1,1] conversions.
 *
 * Mirrors diffusers AutoencoderKL (autoencoder_kl.py; Encoder, Decoder,
 * DiagonalGaussianDistribution in vae.py; ResnetBlock2D, UNetMidBlock2D,
 * Downsample2D, Upsample2D) and CompVis ldm/modules/diffusionmodules/model.py
 * (Encoder, Decoder, ResnetBlock, AttnBlock). LDM paper (Rombach et al. 2022)
 * section 3 "Perceptual Image Compression" and appendix G.
 *
 * File order (teaching order): config check (config.json itself is parsed by
 * ldm/model.c, ldm_vae_config_parse; a standalone VAE is found by
 * ldm_vae_file_open, also there), weight table (one visitor that names
 * every tensor, used to load and to free), the blocks (resnet, attention,
 * mid block), encoder, decoder, posterior, memory estimate, tiling,
 * high-level encode/decode, pixels.
 *
 * Memory: every activation is freed as soon as the next one exists, so a
 * block holds at most ~3 activations of its own size at once. The mid-block
 * attention goes through ldm_attention, whose backends never materialise the
 * full [T,T] score matrix (T = h*w = 16384 at 1024x1024).
 *
 * Left out: VQ models, shift_factor / latents_mean (SD3, Flux), slicing.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "ldm/io/dump.h"
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
#include "ldm/vae.h"

// ---------------------------------------------------------------------------
// config

int ldm_vae_config_check(const ldm_vae_config *c) {
    if (c->n_levels < 1 || c->n_levels > LDM_MAX_LEVELS)
        return ldm_error("vae config: block_out_channels has %d entries, expected 1..%d",
                         c->n_levels, LDM_MAX_LEVELS);
    if (c->layers_per_block < 1 || c->layers_per_block + 1 > LDM_VAE_MAX_LAYERS)
        return ldm_error("vae config: layers_per_block = %d, expected 1..%d", c->layers_per_block,
                         LDM_VAE_MAX_LAYERS - 1);
    if (c->latent_channels < 1 || c->latent_channels > 4096)
        return ldm_error("vae config: latent_channels = %d, expected 1..4096", c->latent_channels);
    if (c->in_channels < 1 || c->in_channels > 64 || c->out_channels < 1 || c->out_channels > 64)
        return ldm_error("vae config: in_channels %d / out_channels %d, expected 1..64",
                         c->in_channels, c->out_channels);
    if (c->norm_num_groups < 1)
        return ldm_error("vae config: norm_num_groups = %d, expected >= 1", c->norm_num_groups);
    for (int i = 0; i < c->n_levels; i++) {
        int ch = c->block_out_channels[i];
        if (ch < 1 || ch > 65536)
            return ldm_error("vae config: block_out_channels[%d] = %d, expected 1..65536", i, ch);
        if (ch % c->norm_num_groups)
            return ldm_error("vae config: block_out_channels[%d] = %d is not a multiple of "
                             "norm_num_groups = %d", i, ch, c->norm_num_groups);
    }
    if (!(c->scaling_factor > 0) || !isfinite(c->scaling_factor))
        return ldm_error("vae config: scaling_factor = %g, expected > 0", c->scaling_factor);
    if (!(c->norm_eps > 0)) return ldm_error("vae config: norm_eps = %g, expected > 0", c->norm_eps);
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// weight table: every tensor of the model, by diffusers name and shape

typedef int (*tensor_fn)(ldm_tensor *t, const char *name, const int64_t *shape, int ndim,
                         void *ctx);

// Applies fn to one tensor named printf(fmt, ...) + suffix.
static int one(tensor_fn fn, void *ctx, ldm_tensor *t, const char *prefix, const char *suffix,
               int64_t d0, int64_t d1, int64_t d2, int64_t d3, int ndim) {
    char name[256];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    const int64_t shape[4] = {d0, d1, d2, d3};
    return fn(t, name, shape, ndim, ctx);
}

// conv: weight [cout,cin,k,k] + bias [cout] under prefix (e.g. "decoder.conv_in")
static int visit_conv(tensor_fn fn, void *ctx, ldm_tensor *w, ldm_tensor *b, const char *prefix,
                      int cout, int cin, int k) {
    if (one(fn, ctx, w, prefix, ".weight", cout, cin, k, k, 4)) return LDM_ERR;
    return one(fn, ctx, b, prefix, ".bias", cout, 0, 0, 0, 1);
}
static int visit_vec(tensor_fn fn, void *ctx, ldm_tensor *w, ldm_tensor *b, const char *prefix,
                     int c) {
    if (one(fn, ctx, w, prefix, ".weight", c, 0, 0, 0, 1)) return LDM_ERR;
    return one(fn, ctx, b, prefix, ".bias", c, 0, 0, 0, 1);
}

static int visit_resnet(tensor_fn fn, void *ctx, ldm_vae_resnet *r, const char *p, int cin,
                        int cout) {
    char s[192];
    r->cin = cin;
    r->cout = cout;
    int e = 0;
    snprintf(s, sizeof s, "%s.norm1", p);
    e = e || visit_vec(fn, ctx, &r->norm1_w, &r->norm1_b, s, cin);
    snprintf(s, sizeof s, "%s.conv1", p);
    e = e || visit_conv(fn, ctx, &r->conv1_w, &r->conv1_b, s, cout, cin, 3);
    snprintf(s, sizeof s, "%s.norm2", p);
    e = e || visit_vec(fn, ctx, &r->norm2_w, &r->norm2_b, s, cout);
    snprintf(s, sizeof s, "%s.conv2", p);
    e = e || visit_conv(fn, ctx, &r->conv2_w, &r->conv2_b, s, cout, cout, 3);
    if (cin != cout) {
        snprintf(s, sizeof s, "%s.conv_shortcut", p);
        e = e || visit_conv(fn, ctx, &r->shortcut_w, &r->shortcut_b, s, cout, cin, 1);
    }
    return e ? LDM_ERR : LDM_OK;
}

static int visit_attn(tensor_fn fn, void *ctx, ldm_vae_attn *a, const char *p, int c) {
    char s[192];
    a->c = c;
    int e = 0;
    snprintf(s, sizeof s, "%s.group_norm", p);
    e = e || visit_vec(fn, ctx, &a->norm_w, &a->norm_b, s, c);
    // to_q/to_k/to_v/to_out.0: Linear [C,C] (CompVis stores 1x1 convs [C,C,1,1];
    // ldm_weights_load accepts those for an expected [C,C]).
    const char *names[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    ldm_tensor *ws[4] = {&a->q_w, &a->k_w, &a->v_w, &a->o_w};
    ldm_tensor *bs[4] = {&a->q_b, &a->k_b, &a->v_b, &a->o_b};
    for (int i = 0; i < 4 && !e; i++) {
        snprintf(s, sizeof s, "%s.%s", p, names[i]);
        e = e || one(fn, ctx, ws[i], s, ".weight", c, c, 0, 0, 2);
        e = e || one(fn, ctx, bs[i], s, ".bias", c, 0, 0, 0, 1);
    }
    return e ? LDM_ERR : LDM_OK;
}

static int visit_mid(tensor_fn fn, void *ctx, ldm_vae_mid *m, const char *p, int c, int attn) {
    char s[128];
    m->has_attn = attn;
    snprintf(s, sizeof s, "%s.resnets.0", p);
    if (visit_resnet(fn, ctx, &m->res0, s, c, c)) return LDM_ERR;
    if (attn) {
        snprintf(s, sizeof s, "%s.attentions.0", p);
        if (visit_attn(fn, ctx, &m->attn, s, c)) return LDM_ERR;
    }
    snprintf(s, sizeof s, "%s.resnets.1", p);
    return visit_resnet(fn, ctx, &m->res1, s, c, c);
}

// Every tensor of `parts`, in state-dict order. Channel bookkeeping follows
// diffusers Encoder.__init__ / Decoder.__init__.
static int visit_all(ldm_vae *v, int parts, tensor_fn fn, void *ctx) {
    const ldm_vae_config *c = &v->cfg;
    const int L = c->n_levels, Z = c->latent_channels, *ch = c->block_out_channels;
    char s[96];
    if (parts & LDM_VAE_ENCODER) {
        ldm_vae_encoder *e = &v->enc;
        if (visit_conv(fn, ctx, &e->conv_in_w, &e->conv_in_b, "encoder.conv_in", ch[0],
                       c->in_channels, 3))
            return LDM_ERR;
        int cin = ch[0];
        for (int i = 0; i < L; i++) {
            ldm_vae_level *lv = &e->down[i];
            lv->n_resnets = c->layers_per_block;
            for (int j = 0; j < lv->n_resnets; j++) {
                snprintf(s, sizeof s, "encoder.down_blocks.%d.resnets.%d", i, j);
                if (visit_resnet(fn, ctx, &lv->resnets[j], s, j == 0 ? cin : ch[i], ch[i]))
                    return LDM_ERR;
            }
            lv->has_sample = i < L - 1;
            if (lv->has_sample) {
                snprintf(s, sizeof s, "encoder.down_blocks.%d.downsamplers.0.conv", i);
                if (visit_conv(fn, ctx, &lv->sample_w, &lv->sample_b, s, ch[i], ch[i], 3))
                    return LDM_ERR;
            }
            cin = ch[i];
        }
        if (visit_mid(fn, ctx, &e->mid, "encoder.mid_block", ch[L - 1],
                      c->mid_block_add_attention))
            return LDM_ERR;
        if (visit_vec(fn, ctx, &e->norm_out_w, &e->norm_out_b, "encoder.conv_norm_out",
                      ch[L - 1]))
            return LDM_ERR;
        if (visit_conv(fn, ctx, &e->conv_out_w, &e->conv_out_b, "encoder.conv_out", 2 * Z,
                       ch[L - 1], 3))
            return LDM_ERR;
        if (c->use_quant_conv &&
            visit_conv(fn, ctx, &v->quant_w, &v->quant_b, "quant_conv", 2 * Z, 2 * Z, 1))
            return LDM_ERR;
    }
    if (parts & LDM_VAE_DECODER) {
        ldm_vae_decoder *d = &v->dec;
        if (visit_conv(fn, ctx, &d->conv_in_w, &d->conv_in_b, "decoder.conv_in", ch[L - 1], Z, 3))
            return LDM_ERR;
        if (visit_mid(fn, ctx, &d->mid, "decoder.mid_block", ch[L - 1],
                      c->mid_block_add_attention))
            return LDM_ERR;
        // up_blocks.i works at reversed channels: up_blocks.0 is the deepest level.
        int cin = ch[L - 1];
        for (int i = 0; i < L; i++) {
            int cout = ch[L - 1 - i];
            ldm_vae_level *lv = &d->up[i];
            lv->n_resnets = c->layers_per_block + 1;
            for (int j = 0; j < lv->n_resnets; j++) {
                snprintf(s, sizeof s, "decoder.up_blocks.%d.resnets.%d", i, j);
                if (visit_resnet(fn, ctx, &lv->resnets[j], s, j == 0 ? cin : cout, cout))
                    return LDM_ERR;
            }
            lv->has_sample = i < L - 1;
            if (lv->has_sample) {
                snprintf(s, sizeof s, "decoder.up_blocks.%d.upsamplers.0.conv", i);
                if (visit_conv(fn, ctx, &lv->sample_w, &lv->sample_b, s, cout, cout, 3))
                    return LDM_ERR;
            }
            cin = cout;
        }
        if (visit_vec(fn, ctx, &d->norm_out_w, &d->norm_out_b, "decoder.conv_norm_out", ch[0]))
            return LDM_ERR;
        if (visit_conv(fn, ctx, &d->conv_out_w, &d->conv_out_b, "decoder.conv_out",
                       c->out_channels, ch[0], 3))
            return LDM_ERR;
        if (c->use_post_quant_conv &&
            visit_conv(fn, ctx, &v->post_quant_w, &v->post_quant_b, "post_quant_conv", Z, Z, 1))
            return LDM_ERR;
    }
    return LDM_OK;
}

static int load_fn(ldm_tensor *t, const char *name, const int64_t *shape, int ndim, void *ctx) {
    ldm_weights *w = ctx;
    return ldm_weights_load(t, w, name, shape, ndim);
}
static int free_fn(ldm_tensor *t, const char *name, const int64_t *shape, int ndim, void *ctx) {
    ldm_tensor_free(t);
    return LDM_OK;
}
static int count_fn(ldm_tensor *t, const char *name, const int64_t *shape, int ndim, void *ctx) {
    *(int64_t *)ctx += ldm_shape_numel(shape, ndim);
    return LDM_OK;
}

int ldm_vae_load(ldm_vae *vae, const ldm_vae_config *cfg, ldm_weights *w, int parts) {
    memset(vae, 0, sizeof *vae);
    if (ldm_vae_config_check(cfg)) return LDM_ERR;
    if (!(parts & (LDM_VAE_ENCODER | LDM_VAE_DECODER)))
        return ldm_error("ldm_vae_load: parts must include LDM_VAE_ENCODER or LDM_VAE_DECODER");
    vae->cfg = *cfg;
    vae->ops = w->ops;
    vae->parts = parts;
    if (visit_all(vae, parts, load_fn, w)) {
        visit_all(vae, parts, free_fn, NULL);
        return LDM_ERR;
    }
    visit_all(vae, parts, count_fn, &vae->n_params);
    vae->release_file = w->low_memory && w->map ? w->file : NULL;   // low-memory mode
    return LDM_OK;
}

void ldm_vae_free(ldm_vae *vae) {
    if (vae->parts) visit_all(vae, vae->parts, free_fn, NULL);
    memset(vae, 0, sizeof *vae);
}

// ---------------------------------------------------------------------------
// small helpers: allocate the output of an op, then call its checked wrapper

static int new4(ldm_tensor *t, const struct ldm_ops *ops, int64_t B, int64_t C, int64_t H,
                int64_t W) {
    *t = ldm_tensor_new(ops, LDM_SHAPE(B, C, H, W));
    return t->data ? LDM_OK : LDM_ERR;
}

// out = conv(x, w, b): x [B,Cin,H,W], w [Cout,Cin,K,K] -> out [B,Cout,Ho,Wo]
static int conv(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w, const ldm_tensor *b,
                int64_t stride, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
    int64_t K = w->shape[2];
    int64_t Ho = (x->shape[2] + pt + pb - K) / stride + 1;
    int64_t Wo = (x->shape[3] + pl + pr - K) / stride + 1;
    if (new4(out, x->ops, x->shape[0], w->shape[0], Ho, Wo)) return LDM_ERR;
    ldm_conv2d(out, x, w, b, stride, pt, pb, pl, pr);
    return LDM_OK;
}
// 3x3, stride 1, pad 1 (shape preserving) / 1x1
static int conv3(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w, const ldm_tensor *b) {
    return conv(out, x, w, b, 1, 1, 1, 1, 1);
}
static int conv1(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w, const ldm_tensor *b) {
    return conv(out, x, w, b, 1, 0, 0, 0, 0);
}

// out = GroupNorm(x) [B,C,H,W], G groups, eps from the config (1e-6)
static int gnorm(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *g, const ldm_tensor *b,
                 const ldm_vae_config *c) {
    *out = ldm_tensor_new(x->ops, x->shape, x->ndim);
    if (!out->data) return LDM_ERR;
    ldm_group_norm(out, x, g, b, c->norm_num_groups, c->norm_eps);
    return LDM_OK;
}

// Replace *x by *y (frees the old *x): the "x = f(x)" of the PyTorch code.
static void replace(ldm_tensor *x, ldm_tensor *y) {
    ldm_tensor_free(x);
    *x = *y;
    memset(y, 0, sizeof *y);
}

// ---------------------------------------------------------------------------
// blocks

// ResnetBlock2D (temb None, output_scale_factor 1), CompVis ResnetBlock:
//   h = conv1(swish(GN(x)));  h = conv2(swish(GN(h)))   (dropout: eval, none)
//   out = shortcut(x) + h,  shortcut = 1x1 conv when Cin != Cout
// x [B,Cin,H,W] -> out [B,Cout,H,W] (new tensor)
static int resnet_forward(ldm_tensor *out, const ldm_tensor *x, const ldm_vae_resnet *r,
                          const ldm_vae_config *c) {
    ldm_tensor h = {0}, h2 = {0}, sc = {0};
    memset(out, 0, sizeof *out);
    if (gnorm(&h, x, &r->norm1_w, &r->norm1_b, c)) goto fail;
    ldm_silu(&h, &h);
    if (conv3(&h2, &h, &r->conv1_w, &r->conv1_b)) goto fail;
    ldm_tensor_free(&h);
    if (gnorm(&h, &h2, &r->norm2_w, &r->norm2_b, c)) goto fail;
    ldm_tensor_free(&h2);
    ldm_silu(&h, &h);
    if (conv3(out, &h, &r->conv2_w, &r->conv2_b)) goto fail;
    ldm_tensor_free(&h);
    if (r->cin != r->cout) {
        if (conv1(&sc, x, &r->shortcut_w, &r->shortcut_b)) goto fail;
        ldm_add(out, out, &sc);
        ldm_tensor_free(&sc);
    } else {
        ldm_add(out, out, x);
    }
    return LDM_OK;
fail:
    ldm_tensor_free(&h);
    ldm_tensor_free(&h2);
    ldm_tensor_free(&sc);
    ldm_tensor_free(out);
    return LDM_ERR;
}

// Single-head self-attention over positions (diffusers Attention, heads 1,
// residual_connection; CompVis AttnBlock):
//   h = GN(x) as tokens [B,S,C] (S = H*W)
//   q,k,v = h Wq^T + bq, ...   out = x + (softmax(q k^T / sqrt(C)) v) Wo^T + bo
// x [B,C,H,W] -> out [B,C,H,W] (new tensor)
static int attn_forward(ldm_tensor *out, const ldm_tensor *x, const ldm_vae_attn *a,
                        const ldm_vae_config *c) {
    const struct ldm_ops *ops = x->ops;
    const int64_t B = x->shape[0], C = x->shape[1], S = x->shape[2] * x->shape[3];
    ldm_tensor h = {0}, t = {0}, q = {0}, k = {0}, v = {0}, o = {0};
    memset(out, 0, sizeof *out);
    if (gnorm(&h, x, &a->norm_w, &a->norm_b, c)) goto fail;
    // [B,C,S] -> tokens [B,S,C]
    ldm_tensor h3 = ldm_tensor_view(&h, LDM_SHAPE(B, C, S));
    t = ldm_tensor_new(ops, LDM_SHAPE(B, S, C));
    if (!t.data) goto fail;
    ldm_transpose(&t, &h3);
    ldm_tensor_free(&h);
    ldm_tensor t2 = ldm_tensor_view(&t, LDM_SHAPE(B * S, C));
    q = ldm_tensor_new(ops, LDM_SHAPE(B, S, C));
    k = ldm_tensor_new(ops, LDM_SHAPE(B, S, C));
    v = ldm_tensor_new(ops, LDM_SHAPE(B, S, C));
    if (!q.data || !k.data || !v.data) goto fail;
    ldm_tensor q2 = ldm_tensor_view(&q, LDM_SHAPE(B * S, C));
    ldm_tensor k2 = ldm_tensor_view(&k, LDM_SHAPE(B * S, C));
    ldm_tensor v2 = ldm_tensor_view(&v, LDM_SHAPE(B * S, C));
    ldm_linear(&q2, &t2, &a->q_w, &a->q_b);
    ldm_linear(&k2, &t2, &a->k_w, &a->k_b);
    ldm_linear(&v2, &t2, &a->v_w, &a->v_b);
    // attention output reuses t's memory: t is no longer needed
    ldm_attention(&t, &q, &k, &v, 1, 1.0f / sqrtf((float)C), 0);
    ldm_tensor_free(&q);
    ldm_tensor_free(&k);
    // to_out.0 into v's memory, then back to [B,C,S]
    ldm_linear(&v2, &t2, &a->o_w, &a->o_b);
    ldm_tensor_free(&t);
    o = ldm_tensor_new(ops, x->shape, x->ndim);
    if (!o.data) goto fail;
    ldm_tensor o3 = ldm_tensor_view(&o, LDM_SHAPE(B, C, S));
    ldm_transpose(&o3, &v);
    ldm_tensor_free(&v);
    ldm_add(&o, &o, x);   // residual_connection
    *out = o;
    return LDM_OK;
fail:
    ldm_tensor_free(&h);
    ldm_tensor_free(&t);
    ldm_tensor_free(&q);
    ldm_tensor_free(&k);
    ldm_tensor_free(&v);
    ldm_tensor_free(&o);
    return LDM_ERR;
}

// UNetMidBlock2D: resnets.0 -> attentions.0 -> resnets.1, in place on *x.
static int mid_forward(ldm_tensor *x, const ldm_vae_mid *m, const ldm_vae_config *c,
                       const char *name) {
    ldm_tensor y = {0};
    if (resnet_forward(&y, x, &m->res0, c)) return LDM_ERR;
    replace(x, &y);
    ldm_dump(x, "%s.resnets.0", name);
    if (m->has_attn) {
        if (attn_forward(&y, x, &m->attn, c)) return LDM_ERR;
        replace(x, &y);
        ldm_dump(x, "%s.attentions.0", name);
    }
    if (resnet_forward(&y, x, &m->res1, c)) return LDM_ERR;
    replace(x, &y);
    ldm_dump(x, "%s.resnets.1", name);
    ldm_dump(x, "%s", name);
    return LDM_OK;
}

// conv_norm_out -> swish -> conv_out, in place on *x.
static int out_forward(ldm_tensor *x, const ldm_tensor *nw, const ldm_tensor *nb,
                       const ldm_tensor *cw, const ldm_tensor *cb, const ldm_vae_config *c) {
    ldm_tensor y = {0};
    if (gnorm(&y, x, nw, nb, c)) return LDM_ERR;
    replace(x, &y);
    ldm_silu(x, x);
    if (conv3(&y, x, cw, cb)) return LDM_ERR;
    replace(x, &y);
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// encoder: x [B,Cin,H,W] -> moments [B,2Z,H/f,W/f], f = 2^(L-1)
//   conv_in; per level: resnets, then (not last level) pad (0,1,0,1) + conv
//   stride 2 (CompVis Downsample with_conv: asymmetric pad); mid block;
//   GN -> swish -> conv_out; quant_conv (1x1).

int ldm_vae_encoder_forward(ldm_tensor *moments, const ldm_vae *vae, const ldm_tensor *x) {
    const ldm_vae_config *c = &vae->cfg;
    const ldm_vae_encoder *e = &vae->enc;
    ldm_tensor h = {0}, y = {0};
    memset(moments, 0, sizeof *moments);
    if (!(vae->parts & LDM_VAE_ENCODER))
        return ldm_error("vae: the encoder was not loaded (ldm_vae_load parts)");
    if (x->ndim != 4 || x->shape[1] != c->in_channels)
        return ldm_error("vae encode: input must be [B,%d,H,W], found ndim %d, %lld channels",
                         c->in_channels, x->ndim, (long long)(x->ndim > 1 ? x->shape[1] : 0));
    int64_t f = (int64_t)1 << (c->n_levels - 1);
    if (x->shape[2] % f || x->shape[3] % f || x->shape[2] < f || x->shape[3] < f)
        return ldm_error("vae encode: image %lldx%lld must be a (non-zero) multiple of %lld "
                         "in both sides", (long long)x->shape[3], (long long)x->shape[2],
                         (long long)f);
    if (conv3(&h, x, &e->conv_in_w, &e->conv_in_b)) goto fail;
    ldm_dump(&h, "vae.encoder.conv_in");
    for (int i = 0; i < c->n_levels; i++) {
        const ldm_vae_level *lv = &e->down[i];
        for (int j = 0; j < lv->n_resnets; j++) {
            if (resnet_forward(&y, &h, &lv->resnets[j], c)) goto fail;
            replace(&h, &y);
            ldm_dump(&h, "vae.encoder.down_blocks.%d.resnets.%d", i, j);
        }
        if (lv->has_sample) {
            // Downsample2D(padding=0): F.pad(x, (0,1,0,1)) then 3x3 stride 2, no pad
            if (conv(&y, &h, &lv->sample_w, &lv->sample_b, 2, 0, 1, 0, 1)) goto fail;
            replace(&h, &y);
            ldm_dump(&h, "vae.encoder.down_blocks.%d.downsamplers.0", i);
        }
        ldm_dump(&h, "vae.encoder.down_blocks.%d", i);
    }
    if (mid_forward(&h, &e->mid, c, "vae.encoder.mid_block")) goto fail;
    if (out_forward(&h, &e->norm_out_w, &e->norm_out_b, &e->conv_out_w, &e->conv_out_b, c))
        goto fail;
    ldm_dump(&h, "vae.encoder");
    if (c->use_quant_conv) {
        if (conv1(&y, &h, &vae->quant_w, &vae->quant_b)) goto fail;
        replace(&h, &y);
        ldm_dump(&h, "vae.quant_conv");
    }
    *moments = h;
    return LDM_OK;
fail:
    ldm_tensor_free(&h);
    ldm_tensor_free(&y);
    return LDM_ERR;
}

// ---------------------------------------------------------------------------
// decoder: z [B,Z,h,w] -> x [B,Cout,f*h,f*w]
//   post_quant_conv (1x1); conv_in; mid block; per level (deepest first):
//   layers_per_block+1 resnets, then (not last) nearest x2 + conv3x3;
//   GN -> swish -> conv_out.

int ldm_vae_decoder_forward(ldm_tensor *x, const ldm_vae *vae, const ldm_tensor *z) {
    const ldm_vae_config *c = &vae->cfg;
    const ldm_vae_decoder *d = &vae->dec;
    ldm_tensor h = {0}, y = {0};
    memset(x, 0, sizeof *x);
    if (!(vae->parts & LDM_VAE_DECODER))
        return ldm_error("vae: the decoder was not loaded (ldm_vae_load parts)");
    if (z->ndim != 4 || z->shape[1] != c->latent_channels || z->shape[2] < 1 || z->shape[3] < 1)
        return ldm_error("vae decode: latent must be [B,%d,h,w], found ndim %d, %lld channels",
                         c->latent_channels, z->ndim,
                         (long long)(z->ndim > 1 ? z->shape[1] : 0));
    const ldm_tensor *in = z;
    if (c->use_post_quant_conv) {
        if (conv1(&h, z, &vae->post_quant_w, &vae->post_quant_b)) goto fail;
        ldm_dump(&h, "vae.post_quant_conv");
        in = &h;
    }
    if (conv3(&y, in, &d->conv_in_w, &d->conv_in_b)) goto fail;
    replace(&h, &y);
    ldm_dump(&h, "vae.decoder.conv_in");
    if (mid_forward(&h, &d->mid, c, "vae.decoder.mid_block")) goto fail;
    for (int i = 0; i < c->n_levels; i++) {
        const ldm_vae_level *lv = &d->up[i];
        for (int j = 0; j < lv->n_resnets; j++) {
            if (resnet_forward(&y, &h, &lv->resnets[j], c)) goto fail;
            replace(&h, &y);
            ldm_dump(&h, "vae.decoder.up_blocks.%d.resnets.%d", i, j);
        }
        if (lv->has_sample) {
            // Upsample2D: F.interpolate(scale 2, nearest) then conv3x3 pad 1
            if (new4(&y, h.ops, h.shape[0], h.shape[1], 2 * h.shape[2], 2 * h.shape[3]))
                goto fail;
            ldm_upsample2x(&y, &h);
            replace(&h, &y);
            if (conv3(&y, &h, &lv->sample_w, &lv->sample_b)) goto fail;
            replace(&h, &y);
            ldm_dump(&h, "vae.decoder.up_blocks.%d.upsamplers.0", i);
        }
        ldm_dump(&h, "vae.decoder.up_blocks.%d", i);
        ldm_tensor_file_release_all(vae->release_file);   // low-memory mode (ldm_vae_load)
    }
    if (out_forward(&h, &d->norm_out_w, &d->norm_out_b, &d->conv_out_w, &d->conv_out_b, c))
        goto fail;
    ldm_dump(&h, "vae.decoder");
    *x = h;
    return LDM_OK;
fail:
    ldm_tensor_free(&h);
    ldm_tensor_free(&y);
    return LDM_ERR;
}

// ---------------------------------------------------------------------------
// posterior: DiagonalGaussianDistribution (LDM appendix G: the encoder
// predicts a diagonal Gaussian q(z|x) = N(mean, exp(logvar)); the KL term
// regularises it towards N(0, I) during training).

void ldm_vae_posterior(float *z, const float *moments, const float *noise, int64_t B, int64_t Z,
                       int64_t S) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < Z * S; i++) {
            float mean = moments[b * 2 * Z * S + i];
            float out = mean;
            if (noise) {
                float logvar = moments[b * 2 * Z * S + Z * S + i];
                logvar = fminf(fmaxf(logvar, -30.0f), 20.0f);
                out = mean + expf(0.5f * logvar) * noise[b * Z * S + i];
            }
            z[b * Z * S + i] = out;
        }
}

// KL(q(z|x) || N(0,I)) per sample (LDM appendix G: the "KL-reg" term of the
// autoencoder's training loss, weighted ~1e-6 there):
//   KL = 0.5 * sum_i (mean_i^2 + var_i - 1 - logvar_i),  logvar clamped to [-30,20]
void ldm_vae_kl(float *kl, const float *moments, int64_t B, int64_t Z, int64_t S) {
    for (int64_t b = 0; b < B; b++) {
        double sum = 0;
        for (int64_t i = 0; i < Z * S; i++) {
            double mean = moments[b * 2 * Z * S + i];
            double logvar = fmin(fmax(moments[b * 2 * Z * S + Z * S + i], -30.0), 20.0);
            sum += mean * mean + exp(logvar) - 1.0 - logvar;
        }
        kl[b] = (float)(0.5 * sum);
    }
}

// ---------------------------------------------------------------------------
// working-set estimate (bytes of activations alive at once, untiled)
//
// Walks the decoder/encoder stage by stage. A resnet holds x, GN(x) and
// conv1(.) (then x, GN and conv2, then x, conv2 and the shortcut); an upsample
// holds its input and the x4 output, then the output and its conv. The cpu
// backend's conv needs at most IM2COL_BYTES more (bounded im2col chunks).

#define IM2COL_BYTES ((int64_t)32 << 20)

static int64_t resnet_bytes(int64_t B, int64_t cin, int64_t cout, int64_t S) {
    int64_t a = 2 * cin + cout, b = cin + 2 * cout;
    return 4 * B * S * (a > b ? a : b) + IM2COL_BYTES;
}

int64_t ldm_vae_decode_bytes(const ldm_vae_config *c, int64_t B, int64_t h, int64_t w) {
    int64_t best = 0, S = h * w, cin = c->block_out_channels[c->n_levels - 1];
    int64_t m = resnet_bytes(B, cin, cin, S);
    if (m > best) best = m;
    for (int i = 0; i < c->n_levels; i++) {
        int64_t cout = c->block_out_channels[c->n_levels - 1 - i];
        m = resnet_bytes(B, cin, cout, S);
        if (m > best) best = m;
        if (i < c->n_levels - 1) {
            m = 4 * B * cout * (S + 4 * S);             // upsample in + out
            if (m > best) best = m;
            S *= 4;
            m = 4 * B * cout * 2 * S + IM2COL_BYTES;     // upsampled, conv out
            if (m > best) best = m;
        }
        cin = cout;
    }
    return best;
}

int64_t ldm_vae_encode_bytes(const ldm_vae_config *c, int64_t B, int64_t H, int64_t W) {
    int64_t best = 4 * B * (c->in_channels + 2 * c->block_out_channels[0]) * H * W;
    int64_t S = H * W, cin = c->block_out_channels[0];
    for (int i = 0; i < c->n_levels; i++) {
        int64_t cout = c->block_out_channels[i];
        int64_t m = resnet_bytes(B, cin, cout, S);
        if (m > best) best = m;
        cin = cout;
        if (i < c->n_levels - 1) S = ((H >> i) / 2) * ((W >> i) / 2);
    }
    return best;
}

// ---------------------------------------------------------------------------
// tiling
//
// A side of n latent pixels is covered by tiles of T with at least O overlap,
// spread evenly: count = ceil((n - T) / (T - O)) + 1 tiles starting at
// start_k = k (n - T) / (count - 1). Each tile's output is accumulated with a
// weight that ramps linearly from 0 to 1 across every overlap it shares with
// a neighbour (and is 1 elsewhere); the sum is divided by the total weight,
// so two overlapping tiles cross-fade linearly. Weights are separable in x and y.

typedef struct tile_axis {
    int n;              // tiles along this axis
    int64_t start[64];  // latent start of tile k
    int64_t len;        // latent tile length (= min(T, side))
} tile_axis;

static int tile_plan(tile_axis *a, int64_t side, int64_t T, int64_t O) {
    if (T > side) T = side;
    if (O > T / 2) O = T / 2;
    a->len = T;
    int64_t count = side <= T ? 1 : (side - T + (T - O) - 1) / (T - O) + 1;
    if (count > 64) return ldm_error("vae tiling: %lld tiles along one side (max 64): "
                                     "increase the tile size", (long long)count);
    a->n = (int)count;
    for (int k = 0; k < count; k++) a->start[k] = count == 1 ? 0 : k * (side - T) / (count - 1);
    return LDM_OK;
}

// Weight of output pixel p (in output units, scale f) of tile k along axis a.
static float tile_weight(const tile_axis *a, int k, int64_t p, int64_t f) {
    int64_t s = a->start[k] * f, e = (a->start[k] + a->len) * f;
    float w = 1.0f;
    if (k > 0) {                      // overlap with the previous tile: [s, prev_end)
        int64_t pe = (a->start[k - 1] + a->len) * f;
        if (p < pe) w = fminf(w, ((float)(p - s) + 0.5f) / (float)(pe - s));
    }
    if (k + 1 < a->n) {               // overlap with the next tile: [next_start, e)
        int64_t ns = a->start[k + 1] * f;
        if (p >= ns) w = fminf(w, ((float)(e - p) - 0.5f) / (float)(e - ns));
    }
    return w;
}

// Runs fn on overlapping tiles of in_host [B,Cin,Hi,Wi] (input units: scale
// fin per latent pixel) and blends outputs [B,Cout,Ho,Wo] (scale fout) into
// out_host. Tile plan in latent units.
typedef int (*tile_fn)(ldm_tensor *out, const ldm_vae *vae, const ldm_tensor *in);

static int run_tiled(float *out_host, int64_t Cout, int64_t fout, const float *in_host,
                     int64_t B, int64_t Cin, int64_t fin, int64_t h, int64_t w, int64_t T,
                     int64_t O, tile_fn fn, const ldm_vae *vae, int verbose) {
    tile_axis ay, ax;
    if (tile_plan(&ay, h, T, O) || tile_plan(&ax, w, T, O)) return LDM_ERR;
    const int64_t Hi = h * fin, Wi = w * fin, Ho = h * fout, Wo = w * fout;
    const int64_t th = ay.len, tw = ax.len;
    if (verbose)
        fprintf(stderr, "vae: tiled %dx%d tiles of %lldx%lld latent pixels\n", ay.n, ax.n,
                (long long)th, (long long)tw);
    float *wsum = calloc((size_t)(Ho * Wo), sizeof(float));
    float *tin = malloc((size_t)(B * Cin * th * fin * tw * fin) * sizeof(float));
    float *tout = malloc((size_t)(B * Cout * th * fout * tw * fout) * sizeof(float));
    if (!wsum || !tin || !tout) {
        free(wsum), free(tin), free(tout);
        return ldm_error("vae tiling: out of memory for the tile buffers");
    }
    memset(out_host, 0, (size_t)(B * Cout * Ho * Wo) * sizeof(float));
    int rc = LDM_OK;
    for (int ky = 0; ky < ay.n && rc == LDM_OK; ky++)
        for (int kx = 0; kx < ax.n && rc == LDM_OK; kx++) {
            // cut the tile out of the input
            const int64_t y0 = ay.start[ky] * fin, x0 = ax.start[kx] * fin;
            const int64_t tH = th * fin, tW = tw * fin;
            for (int64_t bc = 0; bc < B * Cin; bc++)
                for (int64_t y = 0; y < tH; y++)
                    memcpy(tin + (bc * tH + y) * tW, in_host + (bc * Hi + y0 + y) * Wi + x0,
                           (size_t)tW * sizeof(float));
            ldm_tensor t = ldm_tensor_new(vae->ops, LDM_SHAPE(B, Cin, tH, tW));
            if (!t.data) { rc = LDM_ERR; break; }
            ldm_tensor_from_host(&t, tin);
            ldm_tensor o;
            rc = fn(&o, vae, &t);
            ldm_tensor_free(&t);
            if (rc) break;
            const int64_t oH = th * fout, oW = tw * fout;
            LDM_ASSERT(o.shape[1] == Cout && o.shape[2] == oH && o.shape[3] == oW, "tile out", &o);
            ldm_tensor_to_host(tout, &o);
            ldm_tensor_free(&o);
            // blend it in
            const int64_t oy0 = ay.start[ky] * fout, ox0 = ax.start[kx] * fout;
            for (int64_t y = 0; y < oH; y++) {
                float wy = tile_weight(&ay, ky, oy0 + y, fout);
                for (int64_t xx = 0; xx < oW; xx++) {
                    float wt = wy * tile_weight(&ax, kx, ox0 + xx, fout);
                    wsum[(oy0 + y) * Wo + ox0 + xx] += wt;
                    for (int64_t bc = 0; bc < B * Cout; bc++)
                        out_host[(bc * Ho + oy0 + y) * Wo + ox0 + xx] +=
                            wt * tout[(bc * oH + y) * oW + xx];
                }
            }
        }
    if (rc == LDM_OK)
        for (int64_t bc = 0; bc < B * Cout; bc++)
            for (int64_t p = 0; p < Ho * Wo; p++) out_host[bc * Ho * Wo + p] /= wsum[p];
    free(wsum), free(tin), free(tout);
    return rc;
}

static int64_t budget_bytes(const ldm_vae_options *o) {
    int64_t mb = o ? o->budget_mb : 0;
    if (mb <= 0) {
        const char *e = getenv("LDM_VAE_BUDGET_MB");
        mb = e && atoll(e) > 0 ? atoll(e) : 4096;
    }
    if (mb > ((int64_t)1 << 30)) mb = (int64_t)1 << 30;   // 1 PiB: no overflow below
    return mb << 20;
}

// Tile side for a tiled run: the option, else 64 latent pixels (512 px), halved
// while one tile's estimate still exceeds the budget (down to 16).
static int64_t pick_tile(const ldm_vae_options *o, const ldm_vae_config *c, int64_t B, int enc) {
    if (o && o->tile_latent > 0) return o->tile_latent;
    int64_t f = (int64_t)1 << (c->n_levels - 1), T = 64, budget = budget_bytes(o);
    while (T > 16 && (enc ? ldm_vae_encode_bytes(c, B, T * f, T * f)
                          : ldm_vae_decode_bytes(c, B, T, T)) > budget)
        T /= 2;
    return T;
}

static int want_tiles(const ldm_vae_options *o, int64_t est, int64_t T, int64_t h, int64_t w) {
    ldm_vae_tiling m = o ? o->tiling : LDM_VAE_TILE_AUTO;
    if (m == LDM_VAE_TILE_OFF) return 0;
    if (h <= T && w <= T) return 0;   // one tile is the untiled run
    if (m == LDM_VAE_TILE_ON) return 1;
    return est > budget_bytes(o);
}

// ---------------------------------------------------------------------------
// high level

static int decode_scaled(ldm_tensor *x, const ldm_vae *vae, const ldm_tensor *latent) {
    // z = latent / scaling_factor (LDM section 4.3.2: latents are rescaled to
    // unit variance for the diffusion model; undo it before decoding)
    ldm_tensor z = ldm_tensor_new(latent->ops, latent->shape, latent->ndim);
    if (!z.data) return LDM_ERR;
    ldm_scale(&z, latent, 1.0f / vae->cfg.scaling_factor);
    int rc = ldm_vae_decoder_forward(x, vae, &z);
    ldm_tensor_free(&z);
    return rc;
}

int ldm_vae_decode(ldm_tensor *image, const ldm_vae *vae, const ldm_tensor *latent,
                   const ldm_vae_options *opt) {
    const ldm_vae_config *c = &vae->cfg;
    memset(image, 0, sizeof *image);
    if (latent->ndim != 4 || latent->shape[1] != c->latent_channels)
        return ldm_error("vae decode: latent must be [B,%d,h,w], found ndim %d",
                         c->latent_channels, latent->ndim);
    const int64_t B = latent->shape[0], h = latent->shape[2], w = latent->shape[3];
    const int64_t f = (int64_t)1 << (c->n_levels - 1);
    int64_t T = pick_tile(opt, c, B, 0);
    int64_t O = opt && opt->overlap_latent > 0 ? opt->overlap_latent : T / 4;
    int64_t est = ldm_vae_decode_bytes(c, B, h, w);
    if (!want_tiles(opt, est, T, h, w)) {
        if (opt && opt->verbose)
            fprintf(stderr, "vae: untiled decode, estimated %.0f MiB of activations\n",
                    est / 1048576.0);
        return decode_scaled(image, vae, latent);
    }
    if (opt && opt->verbose)
        fprintf(stderr, "vae: estimated %.0f MiB untiled (budget %.0f MiB)\n", est / 1048576.0,
                budget_bytes(opt) / 1048576.0);
    float *zin = malloc((size_t)latent->numel * sizeof(float));
    float *out = malloc((size_t)(B * c->out_channels * h * f * w * f) * sizeof(float));
    if (!zin || !out) {
        free(zin), free(out);
        return ldm_error("vae decode: out of memory for a %lldx%lld image",
                         (long long)(w * f), (long long)(h * f));
    }
    ldm_tensor_to_host(zin, latent);
    int rc = run_tiled(out, c->out_channels, f, zin, B, c->latent_channels, 1, h, w, T, O,
                       decode_scaled, vae, opt && opt->verbose);
    if (rc == LDM_OK) {
        *image = ldm_tensor_new(vae->ops, LDM_SHAPE(B, c->out_channels, h * f, w * f));
        if (!image->data) rc = LDM_ERR;
        else ldm_tensor_from_host(image, out);
    }
    free(zin), free(out);
    return rc;
}

int ldm_vae_encode(ldm_tensor *latent, const ldm_vae *vae, const ldm_tensor *x,
                   const ldm_tensor *noise, const ldm_vae_options *opt) {
    const ldm_vae_config *c = &vae->cfg;
    memset(latent, 0, sizeof *latent);
    if (x->ndim != 4 || x->shape[1] != c->in_channels)
        return ldm_error("vae encode: image must be [B,%d,H,W], found ndim %d", c->in_channels,
                         x->ndim);
    const int64_t f = (int64_t)1 << (c->n_levels - 1);
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3], Z = c->latent_channels;
    if (H % f || W % f || H < f || W < f)
        return ldm_error("vae encode: image %lldx%lld must be a (non-zero) multiple of %lld "
                         "in both sides", (long long)W, (long long)H, (long long)f);
    const int64_t h = H / f, w = W / f, S = h * w;
    if (noise && (noise->ndim != 4 || noise->shape[0] != B || noise->shape[1] != Z ||
                  noise->shape[2] != h || noise->shape[3] != w))
        return ldm_error("vae encode: noise must be [%lld,%lld,%lld,%lld]", (long long)B,
                         (long long)Z, (long long)h, (long long)w);
    int64_t T = pick_tile(opt, c, B, 1);
    int64_t O = opt && opt->overlap_latent > 0 ? opt->overlap_latent : T / 4;
    int64_t est = ldm_vae_encode_bytes(c, B, H, W);
    float *mom = malloc((size_t)(B * 2 * Z * S) * sizeof(float));
    float *nz = noise ? malloc((size_t)(B * Z * S) * sizeof(float)) : NULL;
    float *zh = malloc((size_t)(B * Z * S) * sizeof(float));
    int rc = LDM_OK;
    if (!mom || !zh || (noise && !nz)) {
        rc = ldm_error("vae encode: out of memory");
        goto done;
    }
    if (!want_tiles(opt, est, T, h, w)) {
        if (opt && opt->verbose)
            fprintf(stderr, "vae: untiled encode, estimated %.0f MiB of activations\n",
                    est / 1048576.0);
        ldm_tensor m;
        if ((rc = ldm_vae_encoder_forward(&m, vae, x))) goto done;
        ldm_tensor_to_host(mom, &m);
        ldm_tensor_free(&m);
    } else {
        float *xin = malloc((size_t)x->numel * sizeof(float));
        if (!xin) {
            rc = ldm_error("vae encode: out of memory");
            goto done;
        }
        ldm_tensor_to_host(xin, x);
        rc = run_tiled(mom, 2 * Z, 1, xin, B, c->in_channels, f, h, w, T, O,
                       ldm_vae_encoder_forward, vae, opt && opt->verbose);
        free(xin);
        if (rc) goto done;
    }
    // z = mean (+ std * noise), then latent = z * scaling_factor
    if (noise) ldm_tensor_to_host(nz, noise);
    ldm_vae_posterior(zh, mom, nz, B, Z, S);
    for (int64_t i = 0; i < B * Z * S; i++) zh[i] *= c->scaling_factor;
    *latent = ldm_tensor_new(vae->ops, LDM_SHAPE(B, Z, h, w));
    if (!latent->data) rc = LDM_ERR;
    else ldm_tensor_from_host(latent, zh);
done:
    free(mom), free(nz), free(zh);
    return rc;
}

// ---------------------------------------------------------------------------
// pixels <-> [-1,1]

void ldm_pixels_to_unit(float *x, const uint8_t *rgb, int64_t H, int64_t W) {
    // diffusers VaeImageProcessor: p / 255 (float32), then 2 * x - 1
    for (int64_t c = 0; c < 3; c++)
        for (int64_t i = 0; i < H * W; i++) {
            float v = (float)rgb[i * 3 + c] / 255.0f;
            x[c * H * W + i] = 2.0f * v - 1.0f;
        }
}

int64_t ldm_unit_to_pixels(uint8_t *rgb, const float *x, int64_t H, int64_t W, int truncate) {
    int64_t bad = 0;
    for (int64_t c = 0; c < 3; c++)
        for (int64_t i = 0; i < H * W; i++) {
            float v = x[c * H * W + i];
            if (!isfinite(v)) {
                bad++;
                rgb[i * 3 + c] = 0;
                continue;
            }
            if (truncate) {
                // CompVis: clamp((x + 1) / 2, 0, 1) * 255, astype(uint8)
                v = fminf(fmaxf((v + 1.0f) / 2.0f, 0.0f), 1.0f) * 255.0f;
                rgb[i * 3 + c] = (uint8_t)v;
            } else {
                // diffusers: clamp(x * 0.5 + 0.5, 0, 1) * 255, round half to even
                v = fminf(fmaxf(v * 0.5f + 0.5f, 0.0f), 1.0f) * 255.0f;
                rgb[i * 3 + c] = (uint8_t)rintf(v);
            }
        }
    return bad;
}
