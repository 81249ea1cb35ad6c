/*
 * ldm/train/vae_train.c -- the autoencoder's forward with a tape and its
 * backward (contract and memory strategy in ldm/train/vae_train.h; the
 * derivations in docs/14-backpropagation.md, "Backward through the autoencoder").
 *
 * File order: the parameter walk (init, params, free), the tape, the blocks
 * (each one's internals, forward and backward next to each other), the
 * encoder, the decoder.
 *
 * Notation: x a block's input, out its output, d<name> = dL/d<name>.
 * Every backward op ACCUMULATES into its gradients (ldm/backend/ops.h), so a
 * tensor used twice (a resnet's input feeds the norm and the skip) simply
 * receives both contributions, and the weight gradients add up over steps.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/train/vae_train.h"

// ---------------------------------------------------------------------------
// the parameters: every (weight, gradient) pair with its diffusers name, in the
// order of torch's AutoencoderKL.named_parameters(): the encoder (conv_in,
// down_blocks, mid_block with its attention before its resnets, conv_norm_out,
// conv_out), the decoder (conv_in, up_blocks -- registered before the mid
// block in diffusers' Decoder -- mid_block, conv_norm_out, conv_out), then
// quant_conv and post_quant_conv.

typedef int (*pair_fn)(ldm_tensor *w, ldm_tensor *g, const char *name, void *ctx);

typedef struct walker {
    pair_fn fn;
    void *ctx;
} walker;

// weight + bias under prefix: "<p>.weight", "<p>.bias"
static int pair2(const walker *k, ldm_tensor *w, ldm_tensor *gw, ldm_tensor *b, ldm_tensor *gb,
                 const char *p) {
    char s[LDM_PARAM_NAME + 16];   // room for the suffix; ldm_params_add checks the length
    snprintf(s, sizeof s, "%s.weight", p);
    if (k->fn(w, gw, s, k->ctx)) return LDM_ERR;
    snprintf(s, sizeof s, "%s.bias", p);
    return k->fn(b, gb, s, k->ctx);
}

static int walk_resnet(const walker *k, ldm_vae_resnet *r, ldm_vae_resnet *g, const char *p) {
    char s[LDM_PARAM_NAME];
    int e = 0;
    snprintf(s, sizeof s, "%s.norm1", p);
    e = e || pair2(k, &r->norm1_w, &g->norm1_w, &r->norm1_b, &g->norm1_b, s);
    snprintf(s, sizeof s, "%s.conv1", p);
    e = e || pair2(k, &r->conv1_w, &g->conv1_w, &r->conv1_b, &g->conv1_b, s);
    snprintf(s, sizeof s, "%s.norm2", p);
    e = e || pair2(k, &r->norm2_w, &g->norm2_w, &r->norm2_b, &g->norm2_b, s);
    snprintf(s, sizeof s, "%s.conv2", p);
    e = e || pair2(k, &r->conv2_w, &g->conv2_w, &r->conv2_b, &g->conv2_b, s);
    if (r->cin != r->cout) {
        snprintf(s, sizeof s, "%s.conv_shortcut", p);
        e = e || pair2(k, &r->shortcut_w, &g->shortcut_w, &r->shortcut_b, &g->shortcut_b, s);
    }
    return e ? LDM_ERR : LDM_OK;
}

static int walk_mid(const walker *k, ldm_vae_mid *m, ldm_vae_mid *g, const char *p) {
    char s[LDM_PARAM_NAME];
    int e = 0;
    if (m->has_attn) {
        ldm_vae_attn *a = &m->attn, *ga = &g->attn;
        snprintf(s, sizeof s, "%s.attentions.0.group_norm", p);
        e = e || pair2(k, &a->norm_w, &ga->norm_w, &a->norm_b, &ga->norm_b, s);
        snprintf(s, sizeof s, "%s.attentions.0.to_q", p);
        e = e || pair2(k, &a->q_w, &ga->q_w, &a->q_b, &ga->q_b, s);
        snprintf(s, sizeof s, "%s.attentions.0.to_k", p);
        e = e || pair2(k, &a->k_w, &ga->k_w, &a->k_b, &ga->k_b, s);
        snprintf(s, sizeof s, "%s.attentions.0.to_v", p);
        e = e || pair2(k, &a->v_w, &ga->v_w, &a->v_b, &ga->v_b, s);
        snprintf(s, sizeof s, "%s.attentions.0.to_out.0", p);
        e = e || pair2(k, &a->o_w, &ga->o_w, &a->o_b, &ga->o_b, s);
    }
    snprintf(s, sizeof s, "%s.resnets.0", p);
    e = e || walk_resnet(k, &m->res0, &g->res0, s);
    snprintf(s, sizeof s, "%s.resnets.1", p);
    e = e || walk_resnet(k, &m->res1, &g->res1, s);
    return e ? LDM_ERR : LDM_OK;
}

// One level of the encoder ("down_blocks", "downsamplers") or decoder ("up_blocks", "upsamplers").
static int walk_level(const walker *k, ldm_vae_level *lv, ldm_vae_level *g, const char *blocks,
                      int i, const char *samplers) {
    char s[LDM_PARAM_NAME];
    for (int j = 0; j < lv->n_resnets; j++) {
        snprintf(s, sizeof s, "%s.%d.resnets.%d", blocks, i, j);
        if (walk_resnet(k, &lv->resnets[j], &g->resnets[j], s)) return LDM_ERR;
    }
    if (!lv->has_sample) return LDM_OK;
    snprintf(s, sizeof s, "%s.%d.%s.0.conv", blocks, i, samplers);
    return pair2(k, &lv->sample_w, &g->sample_w, &lv->sample_b, &g->sample_b, s);
}

static int walk_all(ldm_vae *m, ldm_vae *g, pair_fn fn, void *ctx) {
    const walker k = {fn, ctx};
    const int L = m->cfg.n_levels;
    if (m->parts & LDM_VAE_ENCODER) {
        ldm_vae_encoder *e = &m->enc, *ge = &g->enc;
        if (pair2(&k, &e->conv_in_w, &ge->conv_in_w, &e->conv_in_b, &ge->conv_in_b,
                  "encoder.conv_in"))
            return LDM_ERR;
        for (int i = 0; i < L; i++)
            if (walk_level(&k, &e->down[i], &ge->down[i], "encoder.down_blocks", i, "downsamplers"))
                return LDM_ERR;
        if (walk_mid(&k, &e->mid, &ge->mid, "encoder.mid_block") ||
            pair2(&k, &e->norm_out_w, &ge->norm_out_w, &e->norm_out_b, &ge->norm_out_b,
                  "encoder.conv_norm_out") ||
            pair2(&k, &e->conv_out_w, &ge->conv_out_w, &e->conv_out_b, &ge->conv_out_b,
                  "encoder.conv_out"))
            return LDM_ERR;
    }
    if (m->parts & LDM_VAE_DECODER) {
        ldm_vae_decoder *d = &m->dec, *gd = &g->dec;
        if (pair2(&k, &d->conv_in_w, &gd->conv_in_w, &d->conv_in_b, &gd->conv_in_b,
                  "decoder.conv_in"))
            return LDM_ERR;
        for (int i = 0; i < L; i++)
            if (walk_level(&k, &d->up[i], &gd->up[i], "decoder.up_blocks", i, "upsamplers"))
                return LDM_ERR;
        if (walk_mid(&k, &d->mid, &gd->mid, "decoder.mid_block") ||
            pair2(&k, &d->norm_out_w, &gd->norm_out_w, &d->norm_out_b, &gd->norm_out_b,
                  "decoder.conv_norm_out") ||
            pair2(&k, &d->conv_out_w, &gd->conv_out_w, &d->conv_out_b, &gd->conv_out_b,
                  "decoder.conv_out"))
            return LDM_ERR;
    }
    if ((m->parts & LDM_VAE_ENCODER) && m->cfg.use_quant_conv &&
        pair2(&k, &m->quant_w, &g->quant_w, &m->quant_b, &g->quant_b, "quant_conv"))
        return LDM_ERR;
    if ((m->parts & LDM_VAE_DECODER) && m->cfg.use_post_quant_conv &&
        pair2(&k, &m->post_quant_w, &g->post_quant_w, &m->post_quant_b, &g->post_quant_b,
              "post_quant_conv"))
        return LDM_ERR;
    return LDM_OK;
}

// The weight becomes an owned fp32 tensor (widened from fp16/bf16, or copied
// out of a read-only mapping); its gradient a zeroed tensor of the same shape.
static int init_fn(ldm_tensor *w, ldm_tensor *g, const char *name, void *ctx) {
    if (!w->data) return ldm_error("vae trainer: weight %s is not loaded", name);
    if (!(w->owns && w->dtype == LDM_DTYPE_F32)) {
        ldm_tensor t = ldm_tensor_new(w->ops, w->shape, w->ndim);
        if (!t.data) return LDM_ERR;
        const uint16_t *h = (const uint16_t *)w->data;   // host memory (checked by _init)
        for (int64_t i = 0; i < w->numel; i++)
            t.data[i] = w->dtype == LDM_DTYPE_F32    ? w->data[i]
                        : w->dtype == LDM_DTYPE_F16 ? ldm_f16_to_f32(h[i])
                                                    : ldm_bf16_to_f32(h[i]);
        ldm_tensor_free(w);   // an owned half tensor; nothing for a view
        *w = t;
    }
    *g = ldm_tensor_zeros(w->ops, w->shape, w->ndim);
    return g->data ? LDM_OK : LDM_ERR;
}

static int free_fn(ldm_tensor *w, ldm_tensor *g, const char *name, void *ctx) {
    ldm_tensor_free(g);
    return LDM_OK;
}

static int params_fn(ldm_tensor *w, ldm_tensor *g, const char *name, void *ctx) {
    const void **c = ctx;   // {list, prefix}
    return ldm_params_add((ldm_params *)c[0], w, g, "%s%s", (const char *)c[1], name);
}

int ldm_vae_trainer_init(ldm_vae_trainer *tr, ldm_vae *model) {
    memset(tr, 0, sizeof *tr);
    if (!ldm_backend_can_train(model->ops)) return LDM_ERR;
    if (!model->ops->host_memory)
        return ldm_error("vae trainer: backend %s does not keep tensors in host memory: "
                         "train with --backend cpu or ref", model->ops->name);
    tr->model = model;
    tr->grad.cfg = model->cfg;
    tr->grad.ops = model->ops;
    tr->grad.parts = model->parts;
    ldm_arena_init(&tr->enc.arena, model->ops, "vae train (encoder tape)");
    ldm_arena_init(&tr->dec.arena, model->ops, "vae train (decoder tape)");
    ldm_arena_init(&tr->work, model->ops, "vae train (work)");
    if (walk_all(model, &tr->grad, init_fn, NULL)) {
        ldm_vae_trainer_free(tr);
        return LDM_ERR;
    }
    model->release_file = NULL;   // the weights no longer point into a mapped file
    return LDM_OK;
}

int ldm_vae_trainer_params(ldm_vae_trainer *tr, ldm_params *list, const char *prefix) {
    const void *ctx[2] = {list, prefix ? prefix : ""};
    return walk_all(tr->model, &tr->grad, params_fn, ctx);
}

void ldm_vae_trainer_free(ldm_vae_trainer *tr) {
    if (tr->model) walk_all(tr->model, &tr->grad, free_fn, NULL);
    ldm_arena_free(&tr->enc.arena);
    ldm_arena_free(&tr->dec.arena);
    ldm_arena_free(&tr->work);
    memset(tr, 0, sizeof *tr);
}

// ---------------------------------------------------------------------------
// the tape and the scratch tensors

// New activation [dims...] in arena A: if (ACT(A, &t, B, C, H, W)) return LDM_ERR;
#define ACT(A, t, ...) ldm_arena_tensor(A, t, LDM_SHAPE(__VA_ARGS__))

// A new zeroed tensor of x's shape in the work arena (a gradient to accumulate into).
static int zeros_like(ldm_vae_trainer *tr, ldm_tensor *t, const ldm_tensor *x) {
    if (ldm_arena_tensor(&tr->work, t, x->shape, x->ndim)) return LDM_ERR;
    memset(t->data, 0, (size_t)t->numel * sizeof(float));   // host memory (_init)
    return LDM_OK;
}

static void tape_reset(ldm_vae_tape *t) {
    ldm_arena_reset(&t->arena);
    t->n = 0;
}

// The next activation of the forward: a new tensor [B,C,H,W] on top of the tape.
static int tape_push(ldm_vae_tape *t, ldm_tensor **out, int64_t B, int64_t C, int64_t H,
                     int64_t W) {
    LDM_ASSERT(t->n < LDM_VAE_TAPE, "tape full", NULL);
    if (ACT(&t->arena, &t->act[t->n], B, C, H, W)) return LDM_ERR;
    *out = &t->act[t->n++];
    return LDM_OK;
}

// One block back: drops the top activation (that block's output) and returns
// the one below it, the block's input.
static const ldm_tensor *tape_back(ldm_vae_tape *t) {
    LDM_ASSERT(t->n >= 2, "tape: a block's input", NULL);
    t->n--;
    return &t->act[t->n - 1];
}

// The running gradient dh (at position dh_at of the work arena) is replaced by
// dx, made after it: what the "x = block(x)" of the forward is in reverse.
static void grad_step(ldm_vae_trainer *tr, ldm_tensor *dh, size_t dh_at, ldm_tensor *dx) {
    ldm_arena_release_keep(&tr->work, dh_at, dx);
    *dh = *dx;
}

// ---------------------------------------------------------------------------
// blocks. G groups and eps of every GroupNorm come from the config.

#define GROUPS(tr) ((tr)->model->cfg.norm_num_groups)
#define EPS(tr) ((tr)->model->cfg.norm_eps)

// ---- ResnetBlock2D (temb None): ldm/vae.c resnet_forward ------------------
//   a1 = GN1(x)   s1 = swish(a1)   h1 = conv1(s1)
//   a2 = GN2(h1)  s2 = swish(a2)   out = skip(x) + conv2(s2)
//   skip = identity (Cin == Cout) or the 1x1 conv_shortcut

typedef struct resnet_acts {
    ldm_tensor a1, s1;           // [B,Cin,H,W]
    ldm_tensor h1, a2, s2;       // [B,Cout,H,W]
} resnet_acts;

// The internals from x, in the work arena.
static int resnet_inside(ldm_vae_trainer *tr, resnet_acts *r, const ldm_tensor *x,
                         const ldm_vae_resnet *w) {
    ldm_arena *A = &tr->work;
    const int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    if (ACT(A, &r->a1, B, w->cin, H, W) || ACT(A, &r->s1, B, w->cin, H, W) ||
        ACT(A, &r->h1, B, w->cout, H, W) || ACT(A, &r->a2, B, w->cout, H, W) ||
        ACT(A, &r->s2, B, w->cout, H, W))
        return LDM_ERR;
    ldm_group_norm(&r->a1, x, &w->norm1_w, &w->norm1_b, GROUPS(tr), EPS(tr));
    ldm_silu(&r->s1, &r->a1);
    ldm_conv2d(&r->h1, &r->s1, &w->conv1_w, &w->conv1_b, 1, 1, 1, 1, 1);
    ldm_group_norm(&r->a2, &r->h1, &w->norm2_w, &w->norm2_b, GROUPS(tr), EPS(tr));
    ldm_silu(&r->s2, &r->a2);
    return LDM_OK;
}

// x [B,Cin,H,W] -> out [B,Cout,H,W] (made by the caller)
static int resnet_forward(ldm_vae_trainer *tr, ldm_tensor *out, const ldm_tensor *x,
                          const ldm_vae_resnet *w) {
    size_t m = ldm_arena_mark(&tr->work);
    resnet_acts r;
    if (resnet_inside(tr, &r, x, w)) return LDM_ERR;
    ldm_conv2d(out, &r.s2, &w->conv2_w, &w->conv2_b, 1, 1, 1, 1, 1);
    if (w->cin == w->cout) {
        ldm_add(out, x, out);                                // x + h
    } else {
        ldm_tensor sc;
        if (ACT(&tr->work, &sc, x->shape[0], w->cout, x->shape[2], x->shape[3])) return LDM_ERR;
        ldm_conv2d(&sc, x, &w->shortcut_w, &w->shortcut_b, 1, 0, 0, 0, 0);
        ldm_add(out, out, &sc);                              // h + conv_shortcut(x)
    }
    ldm_arena_release(&tr->work, m);
    return LDM_OK;
}

// dx += dL/dx, dw += dL/dweights from dout [B,Cout,H,W]; recomputes the internals.
static int resnet_backward(ldm_vae_trainer *tr, ldm_tensor *dx, const ldm_tensor *dout,
                           const ldm_tensor *x, const ldm_vae_resnet *w, ldm_vae_resnet *dw) {
    size_t m = ldm_arena_mark(&tr->work);
    resnet_acts r;
    ldm_tensor ds2, da2, dh1, ds1, da1;
    if (resnet_inside(tr, &r, x, w) || zeros_like(tr, &ds2, &r.s2) ||
        zeros_like(tr, &da2, &r.a2) || zeros_like(tr, &dh1, &r.h1) ||
        zeros_like(tr, &ds1, &r.s1) || zeros_like(tr, &da1, &r.a1))
        return LDM_ERR;
    // out = skip(x) + conv2(s2): dout reaches both terms
    if (w->cin == w->cout)
        ldm_add_backward(dx, NULL, dout);                    // dx += dout
    else
        ldm_conv2d_backward(dx, &dw->shortcut_w, &dw->shortcut_b, dout, x, &w->shortcut_w,
                            1, 0, 0, 0, 0);
    ldm_conv2d_backward(&ds2, &dw->conv2_w, &dw->conv2_b, dout, &r.s2, &w->conv2_w, 1, 1, 1, 1, 1);
    ldm_silu_backward(&da2, &ds2, &r.a2);
    ldm_group_norm_backward(&dh1, &dw->norm2_w, &dw->norm2_b, &da2, &r.h1, &w->norm2_w,
                            GROUPS(tr), EPS(tr));
    ldm_conv2d_backward(&ds1, &dw->conv1_w, &dw->conv1_b, &dh1, &r.s1, &w->conv1_w, 1, 1, 1, 1, 1);
    ldm_silu_backward(&da1, &ds1, &r.a1);
    ldm_group_norm_backward(dx, &dw->norm1_w, &dw->norm1_b, &da1, x, &w->norm1_w,
                            GROUPS(tr), EPS(tr));
    ldm_arena_release(&tr->work, m);
    return LDM_OK;
}

// ---- mid-block attention (single head): ldm/vae.c attn_forward -------------
//   hn = GN(x) [B,C,S]     t = hn^T [B,S,C]     (S = H*W)
//   q = t Wq^T + bq, k = t Wk^T + bk, v = t Wv^T + bv             [B,S,C]
//   o = softmax(q k^T / sqrt(C)) v     p = o Wo^T + bo     out = x + p^T

typedef struct attn_acts {
    ldm_tensor hn;               // [B,C,H,W]
    ldm_tensor t, q, k, v, o;    // [B,S,C]
} attn_acts;

// 2-D view [B*S, C] of a token tensor [B,S,C] (what ldm_linear multiplies)
static ldm_tensor rows(const ldm_tensor *t) {
    return ldm_tensor_view(t, LDM_SHAPE(t->shape[0] * t->shape[1], t->shape[2]));
}

static int attn_inside(ldm_vae_trainer *tr, attn_acts *a, const ldm_tensor *x,
                       const ldm_vae_attn *w) {
    ldm_arena *A = &tr->work;
    const int64_t B = x->shape[0], C = x->shape[1], S = x->shape[2] * x->shape[3];
    if (ldm_arena_tensor(A, &a->hn, x->shape, x->ndim) || ACT(A, &a->t, B, S, C) ||
        ACT(A, &a->q, B, S, C) || ACT(A, &a->k, B, S, C) || ACT(A, &a->v, B, S, C) ||
        ACT(A, &a->o, B, S, C))
        return LDM_ERR;
    ldm_group_norm(&a->hn, x, &w->norm_w, &w->norm_b, GROUPS(tr), EPS(tr));
    ldm_tensor hn3 = ldm_tensor_view(&a->hn, LDM_SHAPE(B, C, S));
    ldm_transpose(&a->t, &hn3);
    ldm_tensor t2 = rows(&a->t), q2 = rows(&a->q), k2 = rows(&a->k), v2 = rows(&a->v);
    ldm_linear(&q2, &t2, &w->q_w, &w->q_b);
    ldm_linear(&k2, &t2, &w->k_w, &w->k_b);
    ldm_linear(&v2, &t2, &w->v_w, &w->v_b);
    ldm_attention(&a->o, &a->q, &a->k, &a->v, 1, 1.0f / sqrtf((float)C), 0);
    return LDM_OK;
}

// x [B,C,H,W] -> out [B,C,H,W] (made by the caller)
static int attn_forward(ldm_vae_trainer *tr, ldm_tensor *out, const ldm_tensor *x,
                        const ldm_vae_attn *w) {
    const int64_t B = x->shape[0], C = x->shape[1], S = x->shape[2] * x->shape[3];
    size_t m = ldm_arena_mark(&tr->work);
    attn_acts a;
    ldm_tensor p;
    if (attn_inside(tr, &a, x, w) || ACT(&tr->work, &p, B, S, C)) return LDM_ERR;
    ldm_tensor o2 = rows(&a.o), p2 = rows(&p);
    ldm_linear(&p2, &o2, &w->o_w, &w->o_b);                  // to_out.0
    ldm_tensor out3 = ldm_tensor_view(out, LDM_SHAPE(B, C, S));
    ldm_transpose(&out3, &p);                                // back to [B,C,S]
    ldm_add(out, x, out);                                    // residual_connection
    ldm_arena_release(&tr->work, m);
    return LDM_OK;
}

static int attn_backward(ldm_vae_trainer *tr, ldm_tensor *dx, const ldm_tensor *dout,
                         const ldm_tensor *x, const ldm_vae_attn *w, ldm_vae_attn *dw) {
    const int64_t B = x->shape[0], C = x->shape[1], S = x->shape[2] * x->shape[3];
    size_t m = ldm_arena_mark(&tr->work);
    attn_acts a;
    ldm_tensor dp, dto, dq, dk, dv, dt, dhn;
    if (attn_inside(tr, &a, x, w) || zeros_like(tr, &dp, &a.o) || zeros_like(tr, &dto, &a.o) ||
        zeros_like(tr, &dq, &a.q) || zeros_like(tr, &dk, &a.k) || zeros_like(tr, &dv, &a.v) ||
        zeros_like(tr, &dt, &a.t) || zeros_like(tr, &dhn, &a.hn))
        return LDM_ERR;
    ldm_add_backward(dx, NULL, dout);                        // out = x + ...: dx += dout
    ldm_tensor dout3 = ldm_tensor_view(dout, LDM_SHAPE(B, C, S));
    ldm_transpose_backward(&dp, &dout3);                     // p^T: dp = dout^T [B,S,C]
    ldm_tensor dp2 = rows(&dp), do2 = rows(&dto), o2 = rows(&a.o);
    ldm_linear_backward(&do2, &dw->o_w, &dw->o_b, &dp2, &o2, &w->o_w);
    ldm_attention_backward(&dq, &dk, &dv, &dto, &a.q, &a.k, &a.v, 1, 1.0f / sqrtf((float)C), 0);
    ldm_tensor t2 = rows(&a.t), dt2 = rows(&dt);
    ldm_tensor dq2 = rows(&dq), dk2 = rows(&dk), dv2 = rows(&dv);
    ldm_linear_backward(&dt2, &dw->q_w, &dw->q_b, &dq2, &t2, &w->q_w);   // t feeds q, k and v:
    ldm_linear_backward(&dt2, &dw->k_w, &dw->k_b, &dk2, &t2, &w->k_w);   // dt sums the three
    ldm_linear_backward(&dt2, &dw->v_w, &dw->v_b, &dv2, &t2, &w->v_w);
    ldm_tensor dhn3 = ldm_tensor_view(&dhn, LDM_SHAPE(B, C, S));
    ldm_transpose_backward(&dhn3, &dt);                      // t = hn^T
    ldm_group_norm_backward(dx, &dw->norm_w, &dw->norm_b, &dhn, x, &w->norm_w, GROUPS(tr), EPS(tr));
    ldm_arena_release(&tr->work, m);
    return LDM_OK;
}

// ---- UNetMidBlock2D: resnets.0 -> attentions.0 (optional) -> resnets.1 ------
// Each stage's output goes on the tape.

static int mid_forward(ldm_vae_trainer *tr, ldm_vae_tape *tape, ldm_tensor **h,
                       const ldm_vae_mid *w) {
    const ldm_tensor *x = *h;
    const int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    if (tape_push(tape, h, B, C, H, W) || resnet_forward(tr, *h, x, &w->res0)) return LDM_ERR;
    if (w->has_attn) {
        x = *h;
        if (tape_push(tape, h, B, C, H, W) || attn_forward(tr, *h, x, &w->attn)) return LDM_ERR;
    }
    x = *h;
    if (tape_push(tape, h, B, C, H, W) || resnet_forward(tr, *h, x, &w->res1)) return LDM_ERR;
    return LDM_OK;
}

// The running gradient dh (at dh_at) of the mid block's output becomes that of its input.
static int mid_backward(ldm_vae_trainer *tr, ldm_vae_tape *tape, ldm_tensor *dh, size_t dh_at,
                        const ldm_vae_mid *w, ldm_vae_mid *dw) {
    ldm_tensor dx;
    const ldm_tensor *x = tape_back(tape);
    if (zeros_like(tr, &dx, x) || resnet_backward(tr, &dx, dh, x, &w->res1, &dw->res1))
        return LDM_ERR;
    grad_step(tr, dh, dh_at, &dx);
    if (w->has_attn) {
        x = tape_back(tape);
        if (zeros_like(tr, &dx, x) || attn_backward(tr, &dx, dh, x, &w->attn, &dw->attn))
            return LDM_ERR;
        grad_step(tr, dh, dh_at, &dx);
    }
    x = tape_back(tape);
    if (zeros_like(tr, &dx, x) || resnet_backward(tr, &dx, dh, x, &w->res0, &dw->res0))
        return LDM_ERR;
    grad_step(tr, dh, dh_at, &dx);
    return LDM_OK;
}

// ---- conv_norm_out -> swish -> conv_out ------------------------------------
//   a = GN(x)   s = swish(a)   out = conv3x3(s)

static int out_inside(ldm_vae_trainer *tr, ldm_tensor *a, ldm_tensor *s, const ldm_tensor *x,
                      const ldm_tensor *nw, const ldm_tensor *nb) {
    if (ldm_arena_tensor(&tr->work, a, x->shape, x->ndim) ||
        ldm_arena_tensor(&tr->work, s, x->shape, x->ndim))
        return LDM_ERR;
    ldm_group_norm(a, x, nw, nb, GROUPS(tr), EPS(tr));
    ldm_silu(s, a);
    return LDM_OK;
}

static int out_forward(ldm_vae_trainer *tr, ldm_tensor *out, const ldm_tensor *x,
                       const ldm_tensor *nw, const ldm_tensor *nb, const ldm_tensor *cw,
                       const ldm_tensor *cb) {
    size_t m = ldm_arena_mark(&tr->work);
    ldm_tensor a, s;
    if (out_inside(tr, &a, &s, x, nw, nb)) return LDM_ERR;
    ldm_conv2d(out, &s, cw, cb, 1, 1, 1, 1, 1);
    ldm_arena_release(&tr->work, m);
    return LDM_OK;
}

static int out_backward(ldm_vae_trainer *tr, ldm_tensor *dx, const ldm_tensor *dout,
                        const ldm_tensor *x, const ldm_tensor *nw, const ldm_tensor *nb,
                        const ldm_tensor *cw, ldm_tensor *dnw, ldm_tensor *dnb, ldm_tensor *dcw,
                        ldm_tensor *dcb) {
    size_t m = ldm_arena_mark(&tr->work);
    ldm_tensor a, s, ds, da;
    if (out_inside(tr, &a, &s, x, nw, nb) || zeros_like(tr, &ds, &s) || zeros_like(tr, &da, &a))
        return LDM_ERR;
    ldm_conv2d_backward(&ds, dcw, dcb, dout, &s, cw, 1, 1, 1, 1, 1);
    ldm_silu_backward(&da, &ds, &a);
    ldm_group_norm_backward(dx, dnw, dnb, &da, x, nw, GROUPS(tr), EPS(tr));
    ldm_arena_release(&tr->work, m);
    return LDM_OK;
}

// ---- Upsample2D: up = nearest x2 (x), out = conv3x3(up) ----------------------

static int up_inside(ldm_vae_trainer *tr, ldm_tensor *up, const ldm_tensor *x) {
    if (ACT(&tr->work, up, x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]))
        return LDM_ERR;
    ldm_upsample2x(up, x);
    return LDM_OK;
}

static int up_forward(ldm_vae_trainer *tr, ldm_tensor *out, const ldm_tensor *x,
                      const ldm_vae_level *w) {
    size_t m = ldm_arena_mark(&tr->work);
    ldm_tensor up;
    if (up_inside(tr, &up, x)) return LDM_ERR;
    ldm_conv2d(out, &up, &w->sample_w, &w->sample_b, 1, 1, 1, 1, 1);
    ldm_arena_release(&tr->work, m);
    return LDM_OK;
}

static int up_backward(ldm_vae_trainer *tr, ldm_tensor *dx, const ldm_tensor *dout,
                       const ldm_tensor *x, const ldm_vae_level *w, ldm_vae_level *dw) {
    size_t m = ldm_arena_mark(&tr->work);
    ldm_tensor up, dup;
    if (up_inside(tr, &up, x) || zeros_like(tr, &dup, &up)) return LDM_ERR;
    ldm_conv2d_backward(&dup, &dw->sample_w, &dw->sample_b, dout, &up, &w->sample_w, 1, 1, 1, 1, 1);
    ldm_upsample2x_backward(dx, &dup);                       // each x sums its 2x2 block
    ldm_arena_release(&tr->work, m);
    return LDM_OK;
}

// Downsample2D is one conv: F.pad(x, (0,1,0,1)) then 3x3 stride 2, no padding
// (ldm/vae.c encoder); its backward is ldm_conv2d_backward with the same pads.
#define DOWN_PADS 2, 0, 1, 0, 1

// ---------------------------------------------------------------------------
// encoder: x [B,Cin,H,W] -> moments [B,2Z,H/f,W/f] (ldm/vae.c encoder)

int ldm_vae_train_encode(ldm_tensor *moments, ldm_vae_trainer *tr, const ldm_tensor *x) {
    ldm_vae *v = tr->model;
    const ldm_vae_config *c = &v->cfg;
    const ldm_vae_encoder *e = &v->enc;
    ldm_vae_tape *tape = &tr->enc;
    memset(moments, 0, sizeof *moments);
    if (!(v->parts & LDM_VAE_ENCODER))
        return ldm_error("vae train: the encoder was not loaded (ldm_vae_load parts)");
    const int64_t f = (int64_t)1 << (c->n_levels - 1);
    if (x->ndim != 4 || x->shape[1] != c->in_channels || x->shape[2] < f || x->shape[3] < f ||
        x->shape[2] % f || x->shape[3] % f)
        return ldm_error("vae train encode: input must be [B,%d,H,W] with H and W non-zero "
                         "multiples of %lld", c->in_channels, (long long)f);
    tape_reset(tape);
    ldm_arena_reset(&tr->work);
    const int64_t B = x->shape[0];
    int64_t H = x->shape[2], W = x->shape[3];
    ldm_tensor *in, *h;
    if (tape_push(tape, &in, B, c->in_channels, H, W)) goto fail;
    ldm_copy(in, x);                                         // conv_in's dW needs x
    if (tape_push(tape, &h, B, c->block_out_channels[0], H, W)) goto fail;
    ldm_conv2d(h, in, &e->conv_in_w, &e->conv_in_b, 1, 1, 1, 1, 1);
    for (int i = 0; i < c->n_levels; i++) {
        const ldm_vae_level *lv = &e->down[i];
        for (int j = 0; j < lv->n_resnets; j++) {
            const ldm_tensor *hx = h;
            if (tape_push(tape, &h, B, lv->resnets[j].cout, H, W) ||
                resnet_forward(tr, h, hx, &lv->resnets[j]))
                goto fail;
        }
        if (lv->has_sample) {
            const ldm_tensor *hx = h;
            H /= 2, W /= 2;
            if (tape_push(tape, &h, B, hx->shape[1], H, W)) goto fail;
            ldm_conv2d(h, hx, &lv->sample_w, &lv->sample_b, DOWN_PADS);
        }
    }
    if (mid_forward(tr, tape, &h, &e->mid)) goto fail;
    const ldm_tensor *hx = h;
    if (tape_push(tape, &h, B, 2 * c->latent_channels, H, W) ||
        out_forward(tr, h, hx, &e->norm_out_w, &e->norm_out_b, &e->conv_out_w, &e->conv_out_b))
        goto fail;
    if (c->use_quant_conv) {
        hx = h;
        if (tape_push(tape, &h, B, 2 * c->latent_channels, H, W)) goto fail;
        ldm_conv2d(h, hx, &v->quant_w, &v->quant_b, 1, 0, 0, 0, 0);
    }
    *moments = ldm_tensor_new(v->ops, h->shape, h->ndim);
    if (!moments->data) goto fail;
    ldm_copy(moments, h);
    return LDM_OK;
fail:
    tape->n = 0;
    return LDM_ERR;
}

int ldm_vae_train_backward_encode(ldm_vae_trainer *tr, const ldm_tensor *dmoments) {
    ldm_vae *v = tr->model;
    const ldm_vae_config *c = &v->cfg;
    const ldm_vae_encoder *e = &v->enc;
    ldm_vae_encoder *de = &tr->grad.enc;
    ldm_vae_tape *tape = &tr->enc;
    if (tape->n < 2)
        return ldm_error("vae train: backward_encode without an encode to backpropagate "
                         "(each encode is backpropagated once)");
    if (!ldm_shape_equal(dmoments, &tape->act[tape->n - 1]))
        return ldm_error("vae train backward_encode: dmoments must have the shape of the moments");
    ldm_arena_reset(&tr->work);
    const size_t dh_at = ldm_arena_mark(&tr->work);          // the running gradient lives here
    ldm_tensor dh, dx;
    if (zeros_like(tr, &dh, dmoments)) goto fail;
    ldm_copy(&dh, dmoments);
    const ldm_tensor *x;
    if (c->use_quant_conv) {
        x = tape_back(tape);
        if (zeros_like(tr, &dx, x)) goto fail;
        ldm_conv2d_backward(&dx, &tr->grad.quant_w, &tr->grad.quant_b, &dh, x, &v->quant_w,
                            1, 0, 0, 0, 0);
        grad_step(tr, &dh, dh_at, &dx);
    }
    x = tape_back(tape);
    if (zeros_like(tr, &dx, x) ||
        out_backward(tr, &dx, &dh, x, &e->norm_out_w, &e->norm_out_b, &e->conv_out_w,
                     &de->norm_out_w, &de->norm_out_b, &de->conv_out_w, &de->conv_out_b))
        goto fail;
    grad_step(tr, &dh, dh_at, &dx);
    if (mid_backward(tr, tape, &dh, dh_at, &e->mid, &de->mid)) goto fail;
    for (int i = c->n_levels - 1; i >= 0; i--) {
        const ldm_vae_level *lv = &e->down[i];
        ldm_vae_level *dlv = &de->down[i];
        if (lv->has_sample) {
            x = tape_back(tape);
            if (zeros_like(tr, &dx, x)) goto fail;
            ldm_conv2d_backward(&dx, &dlv->sample_w, &dlv->sample_b, &dh, x, &lv->sample_w,
                                DOWN_PADS);
            grad_step(tr, &dh, dh_at, &dx);
        }
        for (int j = lv->n_resnets - 1; j >= 0; j--) {
            x = tape_back(tape);
            if (zeros_like(tr, &dx, x) ||
                resnet_backward(tr, &dx, &dh, x, &lv->resnets[j], &dlv->resnets[j]))
                goto fail;
            grad_step(tr, &dh, dh_at, &dx);
        }
    }
    x = tape_back(tape);                                     // the image: no gradient wanted
    ldm_conv2d_backward(NULL, &de->conv_in_w, &de->conv_in_b, &dh, x, &e->conv_in_w, 1, 1, 1, 1, 1);
    tape->n = 0;
    ldm_arena_release(&tr->work, dh_at);
    return LDM_OK;
fail:
    tape->n = 0;
    return LDM_ERR;
}

// ---------------------------------------------------------------------------
// decoder: z [B,Z,h,w] -> image [B,Cout,f*h,f*w] (ldm/vae.c decoder)

int ldm_vae_train_decode(ldm_tensor *image, ldm_vae_trainer *tr, const ldm_tensor *z) {
    ldm_vae *v = tr->model;
    const ldm_vae_config *c = &v->cfg;
    const ldm_vae_decoder *d = &v->dec;
    ldm_vae_tape *tape = &tr->dec;
    memset(image, 0, sizeof *image);
    if (!(v->parts & LDM_VAE_DECODER))
        return ldm_error("vae train: the decoder was not loaded (ldm_vae_load parts)");
    if (z->ndim != 4 || z->shape[1] != c->latent_channels || z->shape[2] < 1 || z->shape[3] < 1)
        return ldm_error("vae train decode: latent must be [B,%d,h,w]", c->latent_channels);
    tape_reset(tape);
    ldm_arena_reset(&tr->work);
    const int64_t B = z->shape[0], L = c->n_levels, Cl = c->block_out_channels[L - 1];
    int64_t H = z->shape[2], W = z->shape[3];
    ldm_tensor *h, *hx;
    if (tape_push(tape, &h, B, c->latent_channels, H, W)) goto fail;
    ldm_copy(h, z);                                          // the weight gradients need z
    if (c->use_post_quant_conv) {
        hx = h;
        if (tape_push(tape, &h, B, c->latent_channels, H, W)) goto fail;
        ldm_conv2d(h, hx, &v->post_quant_w, &v->post_quant_b, 1, 0, 0, 0, 0);
    }
    hx = h;
    if (tape_push(tape, &h, B, Cl, H, W)) goto fail;
    ldm_conv2d(h, hx, &d->conv_in_w, &d->conv_in_b, 1, 1, 1, 1, 1);
    if (mid_forward(tr, tape, &h, &d->mid)) goto fail;
    for (int i = 0; i < L; i++) {
        const ldm_vae_level *lv = &d->up[i];
        for (int j = 0; j < lv->n_resnets; j++) {
            hx = h;
            if (tape_push(tape, &h, B, lv->resnets[j].cout, H, W) ||
                resnet_forward(tr, h, hx, &lv->resnets[j]))
                goto fail;
        }
        if (lv->has_sample) {
            hx = h;
            H *= 2, W *= 2;
            if (tape_push(tape, &h, B, hx->shape[1], H, W) || up_forward(tr, h, hx, lv))
                goto fail;
        }
    }
    hx = h;
    if (tape_push(tape, &h, B, c->out_channels, H, W) ||
        out_forward(tr, h, hx, &d->norm_out_w, &d->norm_out_b, &d->conv_out_w, &d->conv_out_b))
        goto fail;
    *image = ldm_tensor_new(v->ops, h->shape, h->ndim);
    if (!image->data) goto fail;
    ldm_copy(image, h);
    return LDM_OK;
fail:
    tape->n = 0;
    return LDM_ERR;
}

int ldm_vae_train_backward_decode(ldm_tensor *dz, ldm_vae_trainer *tr, const ldm_tensor *dimage) {
    ldm_vae *v = tr->model;
    const ldm_vae_config *c = &v->cfg;
    const ldm_vae_decoder *d = &v->dec;
    ldm_vae_decoder *dd = &tr->grad.dec;
    ldm_vae_tape *tape = &tr->dec;
    if (tape->n < 2)
        return ldm_error("vae train: backward_decode without a decode to backpropagate "
                         "(each decode is backpropagated once)");
    if (!ldm_shape_equal(dimage, &tape->act[tape->n - 1]))
        return ldm_error("vae train backward_decode: dimage must have the shape of the image");
    if (dz && !ldm_shape_equal(dz, &tape->act[0]))
        return ldm_error("vae train backward_decode: dz must have the shape of z");
    ldm_arena_reset(&tr->work);
    const size_t dh_at = ldm_arena_mark(&tr->work);
    ldm_tensor dh, dx;
    if (zeros_like(tr, &dh, dimage)) goto fail;
    ldm_copy(&dh, dimage);
    const ldm_tensor *x = tape_back(tape);
    if (zeros_like(tr, &dx, x) ||
        out_backward(tr, &dx, &dh, x, &d->norm_out_w, &d->norm_out_b, &d->conv_out_w,
                     &dd->norm_out_w, &dd->norm_out_b, &dd->conv_out_w, &dd->conv_out_b))
        goto fail;
    grad_step(tr, &dh, dh_at, &dx);
    for (int i = c->n_levels - 1; i >= 0; i--) {
        const ldm_vae_level *lv = &d->up[i];
        ldm_vae_level *dlv = &dd->up[i];
        if (lv->has_sample) {
            x = tape_back(tape);
            if (zeros_like(tr, &dx, x) || up_backward(tr, &dx, &dh, x, lv, dlv)) goto fail;
            grad_step(tr, &dh, dh_at, &dx);
        }
        for (int j = lv->n_resnets - 1; j >= 0; j--) {
            x = tape_back(tape);
            if (zeros_like(tr, &dx, x) ||
                resnet_backward(tr, &dx, &dh, x, &lv->resnets[j], &dlv->resnets[j]))
                goto fail;
            grad_step(tr, &dh, dh_at, &dx);
        }
    }
    if (mid_backward(tr, tape, &dh, dh_at, &d->mid, &dd->mid)) goto fail;
    x = tape_back(tape);                                     // conv_in's input
    if (zeros_like(tr, &dx, x)) goto fail;
    ldm_conv2d_backward(&dx, &dd->conv_in_w, &dd->conv_in_b, &dh, x, &d->conv_in_w, 1, 1, 1, 1, 1);
    grad_step(tr, &dh, dh_at, &dx);
    if (c->use_post_quant_conv) {
        x = tape_back(tape);                                 // z
        ldm_conv2d_backward(dz, &tr->grad.post_quant_w, &tr->grad.post_quant_b, &dh, x,
                            &v->post_quant_w, 1, 0, 0, 0, 0);
    } else if (dz) {
        ldm_add_backward(dz, NULL, &dh);                     // z went straight into conv_in
    }
    tape->n = 0;
    ldm_arena_release(&tr->work, dh_at);
    return LDM_OK;
fail:
    tape->n = 0;
    return LDM_ERR;
}
