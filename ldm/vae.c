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
 * Memory: activations live in the VAE's arena (ldm/core/arena.h), reset by
 * each public encode/decode. Blocks of unchanged shape update the running
 * activation in place; a block that changes its shape moves its output down
 * over its input (replace), so a block holds at most ~3 activations of its
 * own size at once. The mid-block attention goes through ldm_attention,
 * whose backends never materialise the full [T,T] score matrix (T = h*w =
 * 16384 at 1024x1024). Tiles run one after another in the same arena.
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
    ldm_arena_init(&vae->arena, w->ops, "vae");
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
    ldm_arena_free(&vae->arena);
    memset(vae, 0, sizeof *vae);
}

// ---------------------------------------------------------------------------
// activations: every intermediate comes from vae->arena (ldm/core/arena.h).
// The public entry points reset it; each block releases its temporaries to a
// mark before it returns. The running activation h starts at a position
// h_at; a step whose output has another shape (a conv changing channels or
// resolution) moves that output down over h with replace(). A failed
// allocation returns LDM_ERR straight up: the next reset frees it all.

// New activation [dims...] from the VAE's arena: if (ACT(v, &t, B, C, H, W)) return LDM_ERR;
#define ACT(v, t, ...) ldm_arena_tensor(&(v)->arena, t, LDM_SHAPE(__VA_ARGS__))

// The "h = f(h)" of the PyTorch code: y, made after h (which starts at
// position h_at), takes h's place in the arena.
static void replace(ldm_vae *v, ldm_tensor *h, size_t h_at, ldm_tensor *y) {
    ldm_arena_release_keep(&v->arena, h_at, y);
    *h = *y;
}

// out = conv(x, w, b), a new activation: x [B,Cin,H,W], w [Cout,Cin,K,K] -> out [B,Cout,Ho,Wo]
static int conv(ldm_vae *v, ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w,
                const ldm_tensor *b, int64_t stride, int64_t pt, int64_t pb, int64_t pl,
                int64_t pr) {
    int64_t K = w->shape[2];
    int64_t Ho = (x->shape[2] + pt + pb - K) / stride + 1;
    int64_t Wo = (x->shape[3] + pl + pr - K) / stride + 1;
    if (ACT(v, out, x->shape[0], w->shape[0], Ho, Wo)) return LDM_ERR;
    ldm_conv2d(out, x, w, b, stride, pt, pb, pl, pr);
    return LDM_OK;
}
// 3x3, stride 1, pad 1 (shape preserving) / 1x1
static int conv3(ldm_vae *v, ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w,
                 const ldm_tensor *b) {
    return conv(v, out, x, w, b, 1, 1, 1, 1, 1);
}
static int conv1(ldm_vae *v, ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w,
                 const ldm_tensor *b) {
    return conv(v, out, x, w, b, 1, 0, 0, 0, 0);
}

// out = swish(GroupNorm(x)), a new activation [B,C,H,W]; G groups, eps from the config (1e-6)
static int gnorm_swish(ldm_vae *v, ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *g,
                       const ldm_tensor *b) {
    if (ldm_arena_tensor(&v->arena, out, x->shape, x->ndim)) return LDM_ERR;
    ldm_group_norm(out, x, g, b, v->cfg.norm_num_groups, v->cfg.norm_eps);
    ldm_silu(out, out);
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// blocks

// ResnetBlock2D (temb None, output_scale_factor 1), CompVis ResnetBlock:
//   h = conv1(swish(GN(x)));  h = conv2(swish(GN(h)))   (dropout: eval, none)
//   out = shortcut(x) + h,  shortcut = 1x1 conv when Cin != Cout
// x [B,Cin,H,W] -> out [B,Cout,H,W]. Cin == Cout: out is x, updated in place;
// else out is h, a new activation after x (x is consumed: replace() it).
static int resnet_forward(ldm_vae *v, ldm_tensor *out, ldm_tensor *x, const ldm_vae_resnet *r) {
    ldm_tensor h, a, sc;
    size_t m = ldm_arena_mark(&v->arena);
    if (ACT(v, &h, x->shape[0], r->cout, x->shape[2], x->shape[3])) return LDM_ERR;
    size_t ma = ldm_arena_mark(&v->arena);                   // a: one at a time
    if (gnorm_swish(v, &a, x, &r->norm1_w, &r->norm1_b)) return LDM_ERR;
    ldm_conv2d(&h, &a, &r->conv1_w, &r->conv1_b, 1, 1, 1, 1, 1);
    ldm_arena_release(&v->arena, ma);
    if (gnorm_swish(v, &a, &h, &r->norm2_w, &r->norm2_b)) return LDM_ERR;
    ldm_conv2d(&h, &a, &r->conv2_w, &r->conv2_b, 1, 1, 1, 1, 1);
    ldm_arena_release(&v->arena, ma);
    if (r->cin == r->cout) {
        ldm_add(x, x, &h);                                   // x + h, in x's memory
        ldm_arena_release(&v->arena, m);
        *out = *x;
        return LDM_OK;
    }
    if (conv1(v, &sc, x, &r->shortcut_w, &r->shortcut_b)) return LDM_ERR;
    ldm_add(&h, &h, &sc);                                    // h + conv_shortcut(x)
    ldm_arena_release(&v->arena, ma);
    *out = h;
    return LDM_OK;
}

// Single-head self-attention over positions (diffusers Attention, heads 1,
// residual_connection; CompVis AttnBlock), in place on x [B,C,H,W]:
//   h = GN(x) as tokens [B,S,C] (S = H*W)
//   q,k,v = h Wq^T + bq, ...   x += (softmax(q k^T / sqrt(C)) v) Wo^T + bo
static int attn_forward(ldm_vae *v, ldm_tensor *x, const ldm_vae_attn *a) {
    const int64_t B = x->shape[0], C = x->shape[1], S = x->shape[2] * x->shape[3];
    ldm_tensor t, h, q, k, val;
    size_t m = ldm_arena_mark(&v->arena);
    // GN(x) [B,C,S] -> tokens t [B,S,C]
    if (ACT(v, &t, B, S, C)) return LDM_ERR;
    size_t mh = ldm_arena_mark(&v->arena);
    if (ldm_arena_tensor(&v->arena, &h, x->shape, x->ndim)) return LDM_ERR;
    ldm_group_norm(&h, x, &a->norm_w, &a->norm_b, v->cfg.norm_num_groups, v->cfg.norm_eps);
    ldm_tensor h3 = ldm_tensor_view(&h, LDM_SHAPE(B, C, S));
    ldm_transpose(&t, &h3);
    ldm_arena_release(&v->arena, mh);
    if (ACT(v, &q, B, S, C) || ACT(v, &k, B, S, C) || ACT(v, &val, B, S, C)) return LDM_ERR;
    ldm_tensor t2 = ldm_tensor_view(&t, LDM_SHAPE(B * S, C));
    ldm_tensor q2 = ldm_tensor_view(&q, LDM_SHAPE(B * S, C));
    ldm_tensor k2 = ldm_tensor_view(&k, LDM_SHAPE(B * S, C));
    ldm_tensor v2 = ldm_tensor_view(&val, LDM_SHAPE(B * S, C));
    ldm_linear(&q2, &t2, &a->q_w, &a->q_b);
    ldm_linear(&k2, &t2, &a->k_w, &a->k_b);
    ldm_linear(&v2, &t2, &a->v_w, &a->v_b);
    // attention output into t's memory (t is no longer needed), to_out.0 into
    // v's, then back to [B,C,S] into q's
    ldm_attention(&t, &q, &k, &val, 1, 1.0f / sqrtf((float)C), 0);
    ldm_linear(&v2, &t2, &a->o_w, &a->o_b);
    ldm_tensor o3 = ldm_tensor_view(&q, LDM_SHAPE(B, C, S));
    ldm_transpose(&o3, &val);
    ldm_tensor o = ldm_tensor_view(&q, x->shape, x->ndim);
    ldm_add(x, x, &o);   // residual_connection
    ldm_arena_release(&v->arena, m);
    return LDM_OK;
}

// UNetMidBlock2D: resnets.0 -> attentions.0 -> resnets.1, in place on *x (all at C channels).
static int mid_forward(ldm_vae *v, ldm_tensor *x, const ldm_vae_mid *m, const char *name) {
    if (resnet_forward(v, x, x, &m->res0)) return LDM_ERR;
    ldm_dump(x, "%s.resnets.0", name);
    if (m->has_attn) {
        if (attn_forward(v, x, &m->attn)) return LDM_ERR;
        ldm_dump(x, "%s.attentions.0", name);
    }
    if (resnet_forward(v, x, x, &m->res1)) return LDM_ERR;
    ldm_dump(x, "%s.resnets.1", name);
    ldm_dump(x, "%s", name);
    return LDM_OK;
}

// conv_norm_out -> swish -> conv_out: x [B,C,H,W] -> out [B,Cout,H,W] (out allocated by the caller).
static int out_forward(ldm_vae *v, ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *nw,
                       const ldm_tensor *nb, const ldm_tensor *cw, const ldm_tensor *cb) {
    ldm_tensor g;
    size_t m = ldm_arena_mark(&v->arena);
    if (gnorm_swish(v, &g, x, nw, nb)) return LDM_ERR;
    ldm_conv2d(out, &g, cw, cb, 1, 1, 1, 1, 1);
    ldm_arena_release(&v->arena, m);
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// encoder: x [B,Cin,H,W] -> moments [B,2Z,H/f,W/f], f = 2^(L-1)
//   conv_in; per level: resnets, then (not last level) pad (0,1,0,1) + conv
//   stride 2 (CompVis Downsample with_conv: asymmetric pad); mid block;
//   GN -> swish -> conv_out; quant_conv (1x1).

// Checks x against the config. 0 / LDM_ERR.
static int check_image(const ldm_vae *vae, const ldm_tensor *x) {
    const ldm_vae_config *c = &vae->cfg;
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
    return LDM_OK;
}

// The encoder into moments [B,2Z,H/f,W/f] (allocated by the caller), on the
// arena as it is (no reset: a tile runs after its input).
static int encoder(ldm_vae *v, ldm_tensor *moments, const ldm_tensor *x) {
    const ldm_vae_config *c = &v->cfg;
    const ldm_vae_encoder *e = &v->enc;
    ldm_tensor h, y;
    size_t h_at = ldm_arena_mark(&v->arena);   // the running activation h lives from here
    if (conv3(v, &h, x, &e->conv_in_w, &e->conv_in_b)) return LDM_ERR;
    ldm_dump(&h, "vae.encoder.conv_in");
    for (int i = 0; i < c->n_levels; i++) {
        const ldm_vae_level *lv = &e->down[i];
        for (int j = 0; j < lv->n_resnets; j++) {
            if (resnet_forward(v, &y, &h, &lv->resnets[j])) return LDM_ERR;
            replace(v, &h, h_at, &y);
            ldm_dump(&h, "vae.encoder.down_blocks.%d.resnets.%d", i, j);
        }
        if (lv->has_sample) {
            // Downsample2D(padding=0): F.pad(x, (0,1,0,1)) then 3x3 stride 2, no pad
            if (conv(v, &y, &h, &lv->sample_w, &lv->sample_b, 2, 0, 1, 0, 1)) return LDM_ERR;
            replace(v, &h, h_at, &y);
            ldm_dump(&h, "vae.encoder.down_blocks.%d.downsamplers.0", i);
        }
        ldm_dump(&h, "vae.encoder.down_blocks.%d", i);
    }
    if (mid_forward(v, &h, &e->mid, "vae.encoder.mid_block")) return LDM_ERR;
    // conv_norm_out -> swish -> conv_out, then quant_conv (1x1) into moments
    ldm_tensor *eo = moments;
    if (c->use_quant_conv) {
        if (ACT(v, &y, h.shape[0], 2 * c->latent_channels, h.shape[2], h.shape[3])) return LDM_ERR;
        eo = &y;
    }
    if (out_forward(v, eo, &h, &e->norm_out_w, &e->norm_out_b, &e->conv_out_w, &e->conv_out_b))
        return LDM_ERR;
    ldm_dump(eo, "vae.encoder");
    if (c->use_quant_conv) {
        ldm_conv2d(moments, &y, &v->quant_w, &v->quant_b, 1, 0, 0, 0, 0);
        ldm_dump(moments, "vae.quant_conv");
    }
    ldm_arena_release(&v->arena, h_at);
    return LDM_OK;
}

int ldm_vae_encoder_forward(ldm_tensor *moments, ldm_vae *vae, const ldm_tensor *x) {
    memset(moments, 0, sizeof *moments);
    if (check_image(vae, x)) return LDM_ERR;
    const int64_t f = (int64_t)1 << (vae->cfg.n_levels - 1);
    ldm_arena_reset(&vae->arena);
    *moments = ldm_tensor_new(vae->ops, LDM_SHAPE(x->shape[0], 2 * vae->cfg.latent_channels,
                                                  x->shape[2] / f, x->shape[3] / f));
    if (!moments->data) return LDM_ERR;
    if (encoder(vae, moments, x)) {
        ldm_tensor_free(moments);
        return LDM_ERR;
    }
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// decoder: z [B,Z,h,w] -> x [B,Cout,f*h,f*w]
//   post_quant_conv (1x1); conv_in; mid block; per level (deepest first):
//   layers_per_block+1 resnets, then (not last) nearest x2 + conv3x3;
//   GN -> swish -> conv_out.

static int check_latent(const ldm_vae *vae, const ldm_tensor *z) {
    const ldm_vae_config *c = &vae->cfg;
    if (!(vae->parts & LDM_VAE_DECODER))
        return ldm_error("vae: the decoder was not loaded (ldm_vae_load parts)");
    if (z->ndim != 4 || z->shape[1] != c->latent_channels || z->shape[2] < 1 || z->shape[3] < 1)
        return ldm_error("vae decode: latent must be [B,%d,h,w], found ndim %d, %lld channels",
                         c->latent_channels, z->ndim,
                         (long long)(z->ndim > 1 ? z->shape[1] : 0));
    return LDM_OK;
}

// The decoder into x [B,Cout,f*h,f*w] (allocated by the caller), on the arena as it is.
static int decoder(ldm_vae *v, ldm_tensor *x, const ldm_tensor *z) {
    const ldm_vae_config *c = &v->cfg;
    const ldm_vae_decoder *d = &v->dec;
    ldm_tensor h, y, up;
    size_t h_at = ldm_arena_mark(&v->arena);   // the running activation h lives from here
    h = *z;
    if (c->use_post_quant_conv) {
        if (conv1(v, &h, z, &v->post_quant_w, &v->post_quant_b)) return LDM_ERR;
        ldm_dump(&h, "vae.post_quant_conv");
    }
    if (conv3(v, &y, &h, &d->conv_in_w, &d->conv_in_b)) return LDM_ERR;
    replace(v, &h, h_at, &y);
    ldm_dump(&h, "vae.decoder.conv_in");
    if (mid_forward(v, &h, &d->mid, "vae.decoder.mid_block")) return LDM_ERR;
    for (int i = 0; i < c->n_levels; i++) {
        const ldm_vae_level *lv = &d->up[i];
        for (int j = 0; j < lv->n_resnets; j++) {
            if (resnet_forward(v, &y, &h, &lv->resnets[j])) return LDM_ERR;
            replace(v, &h, h_at, &y);
            ldm_dump(&h, "vae.decoder.up_blocks.%d.resnets.%d", i, j);
        }
        if (lv->has_sample) {
            // Upsample2D: F.interpolate(scale 2, nearest) then conv3x3 pad 1
            if (ACT(v, &up, h.shape[0], h.shape[1], 2 * h.shape[2], 2 * h.shape[3])) return LDM_ERR;
            ldm_upsample2x(&up, &h);
            if (conv3(v, &y, &up, &lv->sample_w, &lv->sample_b)) return LDM_ERR;
            replace(v, &h, h_at, &y);
            ldm_dump(&h, "vae.decoder.up_blocks.%d.upsamplers.0", i);
        }
        ldm_dump(&h, "vae.decoder.up_blocks.%d", i);
        ldm_tensor_file_release_all(v->release_file);   // low-memory mode (ldm_vae_load)
    }
    if (out_forward(v, x, &h, &d->norm_out_w, &d->norm_out_b, &d->conv_out_w, &d->conv_out_b))
        return LDM_ERR;
    ldm_dump(x, "vae.decoder");
    ldm_arena_release(&v->arena, h_at);
    return LDM_OK;
}

int ldm_vae_decoder_forward(ldm_tensor *x, ldm_vae *vae, const ldm_tensor *z) {
    memset(x, 0, sizeof *x);
    if (check_latent(vae, z)) return LDM_ERR;
    const int64_t f = (int64_t)1 << (vae->cfg.n_levels - 1);
    ldm_arena_reset(&vae->arena);
    *x = ldm_tensor_new(vae->ops, LDM_SHAPE(z->shape[0], vae->cfg.out_channels,
                                            f * z->shape[2], f * z->shape[3]));
    if (!x->data) return LDM_ERR;
    if (decoder(vae, x, z)) {
        ldm_tensor_free(x);
        return LDM_ERR;
    }
    return LDM_OK;
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
// fn writes a tile's output into `out` (made by run_tiled); tiles come and go
// in the VAE's arena, so after the first tile no memory is allocated.
typedef int (*tile_fn)(ldm_vae *vae, ldm_tensor *out, const ldm_tensor *in);

static int run_tiled(float *out_host, int64_t Cout, int64_t fout, const float *in_host,
                     int64_t B, int64_t Cin, int64_t fin, int64_t h, int64_t w, int64_t T,
                     int64_t O, tile_fn fn, ldm_vae *vae, int verbose) {
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
            const int64_t oH = th * fout, oW = tw * fout;
            size_t m = ldm_arena_mark(&vae->arena);
            ldm_tensor t, o;   // the tile in [B,Cin,tH,tW] and out [B,Cout,oH,oW]
            if (ACT(vae, &t, B, Cin, tH, tW) || ACT(vae, &o, B, Cout, oH, oW)) { rc = LDM_ERR; break; }
            ldm_tensor_from_host(&t, tin);
            if ((rc = fn(vae, &o, &t))) break;
            ldm_tensor_to_host(tout, &o);
            ldm_arena_release(&vae->arena, m);
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
    if (mb <= 0) mb = 4096;
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

// z = latent / scaling_factor (LDM section 4.3.2: latents are rescaled to
// unit variance for the diffusion model; undo it before decoding), then the
// decoder: latent [B,Z,h,w] -> image [B,Cout,f*h,f*w] (made by the caller).
static int decode_scaled(ldm_vae *vae, ldm_tensor *image, const ldm_tensor *latent) {
    ldm_tensor z;
    size_t m = ldm_arena_mark(&vae->arena);
    if (ldm_arena_tensor(&vae->arena, &z, latent->shape, latent->ndim)) return LDM_ERR;
    ldm_scale(&z, latent, 1.0f / vae->cfg.scaling_factor);
    if (decoder(vae, image, &z)) return LDM_ERR;
    ldm_arena_release(&vae->arena, m);
    return LDM_OK;
}

int ldm_vae_decode(ldm_tensor *image, ldm_vae *vae, const ldm_tensor *latent,
                   const ldm_vae_options *opt) {
    const ldm_vae_config *c = &vae->cfg;
    memset(image, 0, sizeof *image);
    if (check_latent(vae, latent)) return LDM_ERR;
    ldm_arena_reset(&vae->arena);
    const int64_t B = latent->shape[0], h = latent->shape[2], w = latent->shape[3];
    const int64_t f = (int64_t)1 << (c->n_levels - 1);
    int64_t T = pick_tile(opt, c, B, 0);
    int64_t O = opt && opt->overlap_latent > 0 ? opt->overlap_latent : T / 4;
    int64_t est = ldm_vae_decode_bytes(c, B, h, w);
    if (!want_tiles(opt, est, T, h, w)) {
        if (opt && opt->verbose)
            fprintf(stderr, "vae: untiled decode, estimated %.0f MiB of activations\n",
                    est / 1048576.0);
        *image = ldm_tensor_new(vae->ops, LDM_SHAPE(B, c->out_channels, h * f, w * f));
        if (!image->data) return LDM_ERR;
        if (decode_scaled(vae, image, latent)) {
            ldm_tensor_free(image);
            return LDM_ERR;
        }
        return LDM_OK;
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

int ldm_vae_encode(ldm_tensor *latent, ldm_vae *vae, const ldm_tensor *x,
                   const ldm_tensor *noise, const ldm_vae_options *opt) {
    const ldm_vae_config *c = &vae->cfg;
    memset(latent, 0, sizeof *latent);
    if (check_image(vae, x)) return LDM_ERR;
    ldm_arena_reset(&vae->arena);
    const int64_t f = (int64_t)1 << (c->n_levels - 1);
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3], Z = c->latent_channels;
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
        ldm_tensor m;   // moments [B,2Z,h,w]
        if ((rc = ACT(vae, &m, B, 2 * Z, h, w)) || (rc = encoder(vae, &m, x))) goto done;
        ldm_tensor_to_host(mom, &m);
    } else {
        float *xin = malloc((size_t)x->numel * sizeof(float));
        if (!xin) {
            rc = ldm_error("vae encode: out of memory");
            goto done;
        }
        ldm_tensor_to_host(xin, x);
        rc = run_tiled(mom, 2 * Z, 1, xin, B, c->in_channels, f, h, w, T, O,
                       encoder, vae, opt && opt->verbose);
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
