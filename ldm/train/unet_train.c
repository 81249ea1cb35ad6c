/*
 * ldm/train/unet_train.c -- the UNet's training forward and backward
 * (contract and activation strategy in ldm/train/unet_train.h; the backward
 * of each op in docs/14-backpropagation.md).
 *
 * Teaching order of this file:
 *   1. the parameters: owned fp32 weights, their gradients, and the walk
 *      over both in torch's named_parameters() order
 *   2. each block's forward, keeping its internals in a small struct (the
 *      "row tape"): the training forward runs it and drops the internals,
 *      the backward runs it again to get them back (recomputation)
 *   3. each block's backward, mirroring its forward line by line in reverse
 *   4. the forward over the table, keeping each row's output, and the
 *      backward over the table in reverse, with the skips' gradients
 *
 * Every forward here calls the same ops in the same order as ldm/unet.c, so
 * the training forward gives the inference forward's numbers. Gradients
 * flow through the ldm_*_backward wrappers (ldm/backend/ops.h), which ADD to
 * their outputs: a tensor used twice (a residual, self-attention's q/k/v
 * input, SiLU(emb) read by every ResBlock) simply receives both shares.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/train/unet_train.h"

// Transformer blocks per Transformer2DModel the trainer handles (SD: 1).
#define MAX_DEPTH 16

// New activation from the trainer's tape: if (ACT(tr, &q, B, T, D)) return LDM_ERR;
#define ACT(tr, t, ...) ldm_arena_tensor(&(tr)->tape, t, LDM_SHAPE(__VA_ARGS__))

// A zeroed gradient from the tape (training runs on host memory: plain floats).
static int zeros(ldm_unet_trainer *tr, ldm_tensor *t, const int64_t *shape, int ndim) {
    if (ldm_arena_tensor(&tr->tape, t, shape, ndim)) return LDM_ERR;
    memset(t->data, 0, (size_t)t->numel * sizeof(float));
    return 0;
}
#define ZEROS(tr, t, ...) zeros(tr, t, LDM_SHAPE(__VA_ARGS__))
// A zeroed gradient of x's shape.
static int zeros_like(ldm_unet_trainer *tr, ldm_tensor *t, const ldm_tensor *x) {
    return zeros(tr, t, x->shape, x->ndim);
}

// ---- 1. parameters -----------------------------------------------------------------

// Called once per parameter with its weight, its gradient and its diffusers name.
typedef int (*param_fn)(void *ctx, ldm_tensor *w, ldm_tensor *g, const char *name);

#define PARAM(w, g, ...) do {                                          \
        char name_[LDM_PARAM_NAME];                                    \
        snprintf(name_, sizeof name_, __VA_ARGS__);                    \
        if (fn(ctx, w, g, name_)) return LDM_ERR;                      \
    } while (0)

// diffusers Attention: to_q, to_k, to_v, to_out.0 (d holds the gradients).
static int walk_attn(ldm_unet_attn *a, ldm_unet_attn *d, const char *p, param_fn fn, void *ctx) {
    PARAM(&a->q_w, &d->q_w, "%s.to_q.weight", p);
    PARAM(&a->k_w, &d->k_w, "%s.to_k.weight", p);
    PARAM(&a->v_w, &d->v_w, "%s.to_v.weight", p);
    PARAM(&a->out_w, &d->out_w, "%s.to_out.0.weight", p);
    PARAM(&a->out_b, &d->out_b, "%s.to_out.0.bias", p);
    return 0;
}

// One row of the table and its twin of gradients, in torch's module order.
static int walk_row(ldm_unet_block *b, ldm_unet_block *d, param_fn fn, void *ctx) {
    const char *p = b->name;
    switch (b->kind) {
    case LDM_UNET_CONV_IN:
        PARAM(&b->conv_w, &d->conv_w, "%s.weight", p);
        PARAM(&b->conv_b, &d->conv_b, "%s.bias", p);
        return 0;
    case LDM_UNET_DOWN: case LDM_UNET_UP:
        PARAM(&b->conv_w, &d->conv_w, "%s.conv.weight", p);
        PARAM(&b->conv_b, &d->conv_b, "%s.conv.bias", p);
        return 0;
    case LDM_UNET_OUT:
        PARAM(&b->norm_w, &d->norm_w, "conv_norm_out.weight");
        PARAM(&b->norm_b, &d->norm_b, "conv_norm_out.bias");
        PARAM(&b->conv_w, &d->conv_w, "%s.weight", p);
        PARAM(&b->conv_b, &d->conv_b, "%s.bias", p);
        return 0;
    case LDM_UNET_RES: {
        ldm_unet_resblock *r = &b->res, *g = &d->res;
        PARAM(&r->norm1_w, &g->norm1_w, "%s.norm1.weight", p);
        PARAM(&r->norm1_b, &g->norm1_b, "%s.norm1.bias", p);
        PARAM(&r->conv1_w, &g->conv1_w, "%s.conv1.weight", p);
        PARAM(&r->conv1_b, &g->conv1_b, "%s.conv1.bias", p);
        PARAM(&r->temb_w, &g->temb_w, "%s.time_emb_proj.weight", p);
        PARAM(&r->temb_b, &g->temb_b, "%s.time_emb_proj.bias", p);
        PARAM(&r->norm2_w, &g->norm2_w, "%s.norm2.weight", p);
        PARAM(&r->norm2_b, &g->norm2_b, "%s.norm2.bias", p);
        PARAM(&r->conv2_w, &g->conv2_w, "%s.conv2.weight", p);
        PARAM(&r->conv2_b, &g->conv2_b, "%s.conv2.bias", p);
        if (r->short_w.data) {
            PARAM(&r->short_w, &g->short_w, "%s.conv_shortcut.weight", p);
            PARAM(&r->short_b, &g->short_b, "%s.conv_shortcut.bias", p);
        }
        return 0;
    }
    case LDM_UNET_ATTN: {
        ldm_unet_transformer *t = &b->tr, *g = &d->tr;
        PARAM(&t->norm_w, &g->norm_w, "%s.norm.weight", p);
        PARAM(&t->norm_b, &g->norm_b, "%s.norm.bias", p);
        PARAM(&t->proj_in_w, &g->proj_in_w, "%s.proj_in.weight", p);
        PARAM(&t->proj_in_b, &g->proj_in_b, "%s.proj_in.bias", p);
        for (int j = 0; j < t->depth; j++) {
            ldm_unet_tblock *tb = &t->blocks[j], *gb = &g->blocks[j];
            char q[LDM_PARAM_NAME];
            PARAM(&tb->norm1_w, &gb->norm1_w, "%s.transformer_blocks.%d.norm1.weight", p, j);
            PARAM(&tb->norm1_b, &gb->norm1_b, "%s.transformer_blocks.%d.norm1.bias", p, j);
            snprintf(q, sizeof q, "%s.transformer_blocks.%d.attn1", p, j);
            if (walk_attn(&tb->attn1, &gb->attn1, q, fn, ctx)) return LDM_ERR;
            PARAM(&tb->norm2_w, &gb->norm2_w, "%s.transformer_blocks.%d.norm2.weight", p, j);
            PARAM(&tb->norm2_b, &gb->norm2_b, "%s.transformer_blocks.%d.norm2.bias", p, j);
            snprintf(q, sizeof q, "%s.transformer_blocks.%d.attn2", p, j);
            if (walk_attn(&tb->attn2, &gb->attn2, q, fn, ctx)) return LDM_ERR;
            PARAM(&tb->norm3_w, &gb->norm3_w, "%s.transformer_blocks.%d.norm3.weight", p, j);
            PARAM(&tb->norm3_b, &gb->norm3_b, "%s.transformer_blocks.%d.norm3.bias", p, j);
            PARAM(&tb->ff1_w, &gb->ff1_w, "%s.transformer_blocks.%d.ff.net.0.proj.weight", p, j);
            PARAM(&tb->ff1_b, &gb->ff1_b, "%s.transformer_blocks.%d.ff.net.0.proj.bias", p, j);
            PARAM(&tb->ff2_w, &gb->ff2_w, "%s.transformer_blocks.%d.ff.net.2.weight", p, j);
            PARAM(&tb->ff2_b, &gb->ff2_b, "%s.transformer_blocks.%d.ff.net.2.bias", p, j);
        }
        PARAM(&t->proj_out_w, &g->proj_out_w, "%s.proj_out.weight", p);
        PARAM(&t->proj_out_b, &g->proj_out_b, "%s.proj_out.bias", p);
        return 0;
    }
    }
    return ldm_error("unet trainer: unknown block kind %d", (int)b->kind);
}

// Every parameter in the order of UNet2DConditionModel.named_parameters():
// conv_in, time_embedding, then the diffusers blocks -- down_blocks, up_blocks,
// mid_block (the order their modules are registered) -- each listing its
// attentions, then resnets, then its down/upsampler; last conv_norm_out, conv_out.
// The table's rows run in forward order, so the rows of one diffusers block
// (the rows whose name starts with its group name) are picked out by kind.
static int walk(ldm_unet_trainer *tr, param_fn fn, void *ctx) {
    ldm_unet *u = tr->model;
    ldm_unet_block *rows = u->blocks, *grad = tr->grad;
    int n = u->n_blocks;
    if (walk_row(&rows[0], &grad[0], fn, ctx)) return LDM_ERR;   // conv_in
    PARAM(&u->time_w1, &tr->d_time_w1, "time_embedding.linear_1.weight");
    PARAM(&u->time_b1, &tr->d_time_b1, "time_embedding.linear_1.bias");
    PARAM(&u->time_w2, &tr->d_time_w2, "time_embedding.linear_2.weight");
    PARAM(&u->time_b2, &tr->d_time_b2, "time_embedding.linear_2.bias");
    static const char *const families[] = {"down_blocks.", "up_blocks.", "mid_block"};
    static const ldm_unet_kind kinds[] = {LDM_UNET_ATTN, LDM_UNET_RES, LDM_UNET_DOWN, LDM_UNET_UP};
    for (int f = 0; f < 3; f++)
        for (int gi = 0; gi < n; gi++) {
            const char *group = rows[gi].group;
            size_t len = strlen(group);
            if (!len || strncmp(group, families[f], strlen(families[f]))) continue;
            for (int ki = 0; ki < 4; ki++)
                for (int k = 0; k < n; k++)
                    if (rows[k].kind == kinds[ki] && !strncmp(rows[k].name, group, len) &&
                        rows[k].name[len] == '.' && walk_row(&rows[k], &grad[k], fn, ctx))
                        return LDM_ERR;
        }
    return walk_row(&rows[n - 1], &grad[n - 1], fn, ctx);   // conv_norm_out, conv_out
}

// w becomes an owned fp32 tensor: a half weight is widened (exactly), a view
// into a mapped file is copied; an owned fp32 one stays as it is.
static int own_f32(ldm_tensor *w) {
    if (w->owns && w->dtype == LDM_DTYPE_F32) return 0;
    ldm_tensor f = ldm_tensor_new(w->ops, w->shape, w->ndim);
    if (!f.data) return LDM_ERR;
    const uint16_t *h = (const uint16_t *)w->data;
    for (int64_t i = 0; i < w->numel; i++)
        f.data[i] = w->dtype == LDM_DTYPE_F32  ? w->data[i]
                    : w->dtype == LDM_DTYPE_F16 ? ldm_f16_to_f32(h[i])
                                                : ldm_bf16_to_f32(h[i]);
    ldm_tensor_free(w);
    *w = f;
    return 0;
}

static int init_param(void *ctx, ldm_tensor *w, ldm_tensor *g, const char *name) {
    (void)ctx;
    if (own_f32(w)) return ldm_error("unet trainer: %s: %s", name, ldm_last_error());
    *g = ldm_tensor_zeros(w->ops, w->shape, w->ndim);
    if (!g->data) return ldm_error("unet trainer: no memory for the gradient of %s", name);
    return 0;
}

static int free_param(void *ctx, ldm_tensor *w, ldm_tensor *g, const char *name) {
    (void)ctx, (void)w, (void)name;
    ldm_tensor_free(g);
    return 0;
}

typedef struct add_ctx { ldm_params *list; const char *prefix; } add_ctx;
static int add_param(void *ctx, ldm_tensor *w, ldm_tensor *g, const char *name) {
    add_ctx *a = ctx;
    return ldm_params_add(a->list, w, g, "%s%s", a->prefix, name);
}

void ldm_unet_trainer_free(ldm_unet_trainer *tr) {
    if (tr->grad) {
        walk(tr, free_param, NULL);
        for (int k = 0; k < tr->model->n_blocks; k++) free(tr->grad[k].tr.blocks);
        free(tr->grad);
    }
    free(tr->outs);
    free(tr->skip_row);
    free(tr->dskip);
    ldm_arena_free(&tr->tape);
    memset(tr, 0, sizeof *tr);
}

int ldm_unet_trainer_init(ldm_unet_trainer *tr, ldm_unet *model) {
    memset(tr, 0, sizeof *tr);
    if (!model->blocks || !model->time_w1.data)
        return ldm_error("unet trainer: the UNet has no weights (ldm_unet_load first)");
    if (!ldm_backend_can_train(model->ops)) return LDM_ERR;
    if (!model->ops->host_memory)
        return ldm_error("unet trainer: backend %s does not keep tensors in host memory: "
                         "train with --backend cpu or ref", model->ops->name);
    if (model->cfg.num_class_embeds > 0)
        return ldm_error("unet trainer: a UNet with a class embedding (num_class_embeds %d, "
                         "the x4 upscaler) cannot be trained yet", model->cfg.num_class_embeds);
    if (model->cfg.transformer_layers_per_block > MAX_DEPTH)
        return ldm_error("unet trainer: transformer_layers_per_block %d, at most %d supported",
                         model->cfg.transformer_layers_per_block, MAX_DEPTH);
    int n = model->n_blocks;
    tr->model = model;
    ldm_arena_init(&tr->tape, model->ops, "unet tape");
    tr->grad = calloc((size_t)n, sizeof *tr->grad);
    tr->outs = calloc((size_t)n, sizeof *tr->outs);
    tr->skip_row = calloc((size_t)n, sizeof *tr->skip_row);
    tr->dskip = calloc((size_t)n, sizeof *tr->dskip);
    int ok = tr->grad && tr->outs && tr->skip_row && tr->dskip;
    for (int k = 0; ok && k < n; k++) {   // the twin table of gradients
        tr->grad[k].kind = model->blocks[k].kind;
        if (model->blocks[k].kind == LDM_UNET_ATTN) {
            tr->grad[k].tr.blocks = calloc((size_t)model->blocks[k].tr.depth,
                                           sizeof *tr->grad[k].tr.blocks);
            ok = tr->grad[k].tr.blocks != NULL;
        }
    }
    if (!ok) {
        ldm_unet_trainer_free(tr);
        return ldm_error("unet trainer: out of memory");
    }
    if (walk(tr, init_param, NULL)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        ldm_unet_trainer_free(tr);
        return ldm_error("%s", msg);
    }
    model->release_file = NULL;   // the weights are owned now, none points into a file
    return 0;
}

int ldm_unet_trainer_params(ldm_unet_trainer *tr, ldm_params *list, const char *prefix) {
    add_ctx a = {list, prefix ? prefix : ""};
    return walk(tr, add_param, &a);
}

// ---- 2. block forwards that keep their internals -----------------------------------
//
// Each takes its output tensor from the caller and its internals from the
// tape after it; the caller releases them (training forward) or reads them
// (backward).

// ResBlock: x [B,Cin,H,W] -> out [B,Cout,H,W]    (ldm/unet.c resblock_forward)
//   h = conv1(SiLU(GN1(x))) + time_emb_proj(SiLU(emb))[:, :, None, None]
//   out = conv2(SiLU(GN2(h))) + shortcut(x)
typedef struct res_tape {
    ldm_tensor n1, a1;   // GN1(x), SiLU(n1)                          [B,Cin,H,W]
    ldm_tensor h;        // conv1(a1) + time_emb_proj(semb)            [B,Cout,H,W]
    ldm_tensor n2, a2;   // GN2(h), SiLU(n2)                          [B,Cout,H,W]
} res_tape;

static int res_forward(ldm_unet_trainer *tr, ldm_tensor *out, res_tape *k, const ldm_tensor *x,
                       const ldm_unet_resblock *r) {
    const ldm_unet_config *c = &tr->model->cfg;
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    ldm_tensor tp, sc;
    if (ACT(tr, &k->n1, B, r->cin, H, W) || ACT(tr, &k->a1, B, r->cin, H, W) ||
        ACT(tr, &k->h, B, r->cout, H, W) || ACT(tr, &tp, B, r->cout) ||
        ACT(tr, &k->n2, B, r->cout, H, W) || ACT(tr, &k->a2, B, r->cout, H, W))
        return LDM_ERR;
    ldm_group_norm(&k->n1, x, &r->norm1_w, &r->norm1_b, c->norm_num_groups, c->norm_eps);
    ldm_silu(&k->a1, &k->n1);
    ldm_conv2d(&k->h, &k->a1, &r->conv1_w, &r->conv1_b, 1, 1, 1, 1, 1);
    ldm_linear(&tp, &tr->semb, &r->temb_w, &r->temb_b);
    ldm_add_channel(&k->h, &k->h, &tp);
    ldm_group_norm(&k->n2, &k->h, &r->norm2_w, &r->norm2_b, c->norm_num_groups, c->norm_eps);
    ldm_silu(&k->a2, &k->n2);
    ldm_conv2d(out, &k->a2, &r->conv2_w, &r->conv2_b, 1, 1, 1, 1, 1);
    if (r->short_w.data) {   // 1x1 conv when the channel count changes
        if (ACT(tr, &sc, B, r->cout, H, W)) return LDM_ERR;
        ldm_conv2d(&sc, x, &r->short_w, &r->short_b, 1, 0, 0, 0, 0);
        ldm_add(out, out, &sc);
    } else {
        ldm_add(out, out, x);
    }
    return 0;
}

// Attention: xq [B,Tq,D], xkv [B,Tk,Dkv] -> out [B,Tq,D]   (ldm/unet.c attn_forward)
//   out = to_out(softmax(Q K^T / sqrt(HS)) V),  Q = xq Wq, K = xkv Wk, V = xkv Wv
typedef struct attn_tape {
    ldm_tensor q, k, v;  // [B,Tq,D], [B,Tk,D], [B,Tk,D]
    ldm_tensor o;        // the heads' outputs before to_out          [B,Tq,D]
} attn_tape;

static float attn_scale(const ldm_unet_attn *at, int heads) {
    return 1.0f / sqrtf((float)(at->q_w.shape[0] / heads));
}

static int attn_forward(ldm_unet_trainer *tr, ldm_tensor *out, attn_tape *k,
                        const ldm_tensor *xq, const ldm_tensor *xkv, const ldm_unet_attn *at,
                        int heads) {
    int64_t B = xq->shape[0], Tq = xq->shape[1], Tk = xkv->shape[1], D = at->q_w.shape[0];
    if (ACT(tr, &k->q, B, Tq, D) || ACT(tr, &k->k, B, Tk, D) || ACT(tr, &k->v, B, Tk, D) ||
        ACT(tr, &k->o, B, Tq, D))
        return LDM_ERR;
    ldm_linear(&k->q, xq, &at->q_w, NULL);
    ldm_linear(&k->k, xkv, &at->k_w, NULL);
    ldm_linear(&k->v, xkv, &at->v_w, NULL);
    ldm_attention(&k->o, &k->q, &k->k, &k->v, heads, attn_scale(at, heads), 0);
    ldm_linear(out, &k->o, &at->out_w, &at->out_b);
    return 0;
}

// BasicTransformerBlock: x0 [B,S,D] -> x3        (ldm/unet.c tblock_forward)
//   x1 = x0 + attn1(LN1(x0))          (only_cross: keys/values from the context)
//   x2 = x1 + attn2(LN2(x1), context)
//   x3 = x2 + ff.net.2(GEGLU(ff.net.0.proj(LN3(x2))))
typedef struct tblock_tape {
    ldm_tensor n1, x1, n2, x2, n3;   // [B,S,D]
    attn_tape at1, at2;
    ldm_tensor f2;                   // ff.net.0.proj(n3) = [a | gate]  [B,S,8D]
    ldm_tensor f;                    // GEGLU: a * GELU(gate)            [B,S,4D]
} tblock_tape;

static int tblock_forward(ldm_unet_trainer *tr, ldm_tensor *x3, tblock_tape *k,
                          const ldm_tensor *x0, const ldm_unet_tblock *tb, int heads,
                          int only_cross) {
    int64_t B = x0->shape[0], S = x0->shape[1], D = x0->shape[2], F2 = tb->ff1_w.shape[0];
    const ldm_tensor *ctx = &tr->ctx;
    ldm_tensor a;
    if (ACT(tr, &k->n1, B, S, D) || ACT(tr, &k->x1, B, S, D) || ACT(tr, &k->n2, B, S, D) ||
        ACT(tr, &k->x2, B, S, D) || ACT(tr, &k->n3, B, S, D) || ACT(tr, &a, B, S, D) ||
        ACT(tr, &k->f2, B, S, F2) || ACT(tr, &k->f, B, S, F2 / 2))
        return LDM_ERR;
    ldm_layer_norm(&k->n1, x0, &tb->norm1_w, &tb->norm1_b, 1e-5f);
    if (attn_forward(tr, &a, &k->at1, &k->n1, only_cross ? ctx : &k->n1, &tb->attn1, heads))
        return LDM_ERR;
    ldm_add(&k->x1, x0, &a);
    ldm_layer_norm(&k->n2, &k->x1, &tb->norm2_w, &tb->norm2_b, 1e-5f);
    if (attn_forward(tr, &a, &k->at2, &k->n2, ctx, &tb->attn2, heads)) return LDM_ERR;
    ldm_add(&k->x2, &k->x1, &a);
    ldm_layer_norm(&k->n3, &k->x2, &tb->norm3_w, &tb->norm3_b, 1e-5f);
    ldm_linear(&k->f2, &k->n3, &tb->ff1_w, &tb->ff1_b);
    ldm_geglu(&k->f, &k->f2);
    ldm_linear(&a, &k->f, &tb->ff2_w, &tb->ff2_b);
    ldm_add(x3, &k->x2, &a);
    return 0;
}

// Transformer2DModel: x [B,C,H,W] -> y = x + proj_out(blocks(proj_in(GN(x))))
// (ldm/unet.c transformer_forward; proj_in/out 1x1 convs or, SD2, Linears)
typedef struct xf_tape {
    ldm_tensor g;                  // GN(x), eps 1e-6                     [B,C,H,W]
    ldm_tensor p;                  // conv: proj_in(g) [B,D,H,W]; linear: g as tokens [B,S,C]
    ldm_tensor tok[MAX_DEPTH + 1]; // tok[0] the blocks' input, tok[j+1] block j's output [B,S,D]
    ldm_tensor q;                  // conv: tok[depth] as [B,D,S]; linear: proj_out(tok) [B,S,C]
    ldm_tensor o;                  // the residual branch                 [B,C,H,W]
} xf_tape;

static int transformer_forward(ldm_unet_trainer *tr, ldm_tensor *y, xf_tape *k,
                               const ldm_tensor *x, const ldm_unet_transformer *t) {
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], S = H * W;
    int64_t D = t->d;
    if (ACT(tr, &k->g, B, C, H, W) || ACT(tr, &k->o, B, C, H, W)) return LDM_ERR;
    for (int j = 0; j <= t->depth; j++)
        if (ACT(tr, &k->tok[j], B, S, D)) return LDM_ERR;
    ldm_group_norm(&k->g, x, &t->norm_w, &t->norm_b, tr->model->cfg.norm_num_groups, 1e-6f);
    if (!t->linear) {   // proj_in 1x1 conv, then [B,D,S] -> [B,S,D]
        if (ACT(tr, &k->p, B, D, H, W) || ACT(tr, &k->q, B, D, S)) return LDM_ERR;
        ldm_conv2d(&k->p, &k->g, &t->proj_in_w, &t->proj_in_b, 1, 0, 0, 0, 0);
        ldm_tensor pv = ldm_tensor_view(&k->p, LDM_SHAPE(B, D, S));
        ldm_transpose(&k->tok[0], &pv);
    } else {            // [B,C,S] -> [B,S,C], then proj_in Linear C -> D
        if (ACT(tr, &k->p, B, S, C) || ACT(tr, &k->q, B, S, C)) return LDM_ERR;
        ldm_tensor gv = ldm_tensor_view(&k->g, LDM_SHAPE(B, C, S));
        ldm_transpose(&k->p, &gv);
        ldm_linear(&k->tok[0], &k->p, &t->proj_in_w, &t->proj_in_b);
    }
    for (int j = 0; j < t->depth; j++) {   // each block's internals dropped at once
        size_t m = ldm_arena_mark(&tr->tape);
        tblock_tape kb;
        if (tblock_forward(tr, &k->tok[j + 1], &kb, &k->tok[j], &t->blocks[j], t->heads,
                           t->only_cross))
            return LDM_ERR;
        ldm_arena_release(&tr->tape, m);
    }
    if (!t->linear) {   // [B,S,D] -> [B,D,S] = [B,D,H,W], then proj_out 1x1 conv D -> C
        ldm_transpose(&k->q, &k->tok[t->depth]);
        ldm_tensor qv = ldm_tensor_view(&k->q, LDM_SHAPE(B, D, H, W));
        ldm_conv2d(&k->o, &qv, &t->proj_out_w, &t->proj_out_b, 1, 0, 0, 0, 0);
    } else {            // proj_out Linear D -> C, then [B,S,C] -> [B,C,S]
        ldm_linear(&k->q, &k->tok[t->depth], &t->proj_out_w, &t->proj_out_b);
        ldm_tensor ov = ldm_tensor_view(&k->o, LDM_SHAPE(B, C, S));
        ldm_transpose(&ov, &k->q);
    }
    ldm_add(y, x, &k->o);   // residual
    return 0;
}

// Upsample2D: t = nearest x2 (in), y = conv3x3(t).   conv_out: a = SiLU(GN(in)), y = conv3x3(a).
typedef struct out_tape {
    ldm_tensor n, a;     // conv_out row: GN(in), SiLU(n); Upsample row: a = the upsampled input
} out_tape;

static int up_forward(ldm_unet_trainer *tr, ldm_tensor *y, out_tape *k, const ldm_tensor *in,
                      const ldm_unet_block *b) {
    if (ACT(tr, &k->a, in->shape[0], in->shape[1], 2 * in->shape[2], 2 * in->shape[3]))
        return LDM_ERR;
    ldm_upsample2x(&k->a, in);
    ldm_conv2d(y, &k->a, &b->conv_w, &b->conv_b, 1, 1, 1, 1, 1);
    return 0;
}

static int out_forward(ldm_unet_trainer *tr, ldm_tensor *y, out_tape *k, const ldm_tensor *in,
                       const ldm_unet_block *b) {
    const ldm_unet_config *c = &tr->model->cfg;
    if (ACT(tr, &k->n, in->shape[0], in->shape[1], in->shape[2], in->shape[3]) ||
        ACT(tr, &k->a, in->shape[0], in->shape[1], in->shape[2], in->shape[3]))
        return LDM_ERR;
    ldm_group_norm(&k->n, in, &b->norm_w, &b->norm_b, c->norm_num_groups, c->norm_eps);
    ldm_silu(&k->a, &k->n);
    ldm_conv2d(y, &k->a, &b->conv_w, &b->conv_b, 1, 1, 1, 1, 1);
    return 0;
}

// One row: in -> y (y allocated by the caller; internals after it, dropped by the caller).
static int row_forward(ldm_unet_trainer *tr, const ldm_unet_block *b, ldm_tensor *y,
                       const ldm_tensor *in) {
    res_tape kr;
    xf_tape kx;
    out_tape ko;
    switch (b->kind) {
    case LDM_UNET_CONV_IN: ldm_conv2d(y, in, &b->conv_w, &b->conv_b, 1, 1, 1, 1, 1); return 0;
    case LDM_UNET_DOWN:    ldm_conv2d(y, in, &b->conv_w, &b->conv_b, 2, 1, 1, 1, 1); return 0;
    case LDM_UNET_RES:     return res_forward(tr, y, &kr, in, &b->res);
    case LDM_UNET_ATTN:    return transformer_forward(tr, y, &kx, in, &b->tr);
    case LDM_UNET_UP:      return up_forward(tr, y, &ko, in, b);
    case LDM_UNET_OUT:     return out_forward(tr, y, &ko, in, b);
    }
    return ldm_error("unet trainer: unknown block kind %d", (int)b->kind);
}

// ---- 3. block backwards ------------------------------------------------------------
//
// Each recomputes its block's internals from the kept input into a scratch
// mark of the tape, walks the forward's lines in reverse, and releases the
// scratch. dx (the input's gradient) and every weight gradient are added to.

static int res_backward(ldm_unet_trainer *tr, ldm_tensor *dx, ldm_tensor *dsemb,
                        const ldm_tensor *dout, const ldm_tensor *x, const ldm_unet_resblock *r,
                        ldm_unet_resblock *d) {
    const ldm_unet_config *c = &tr->model->cfg;
    int64_t G = c->norm_num_groups;
    size_t m = ldm_arena_mark(&tr->tape);
    res_tape k;
    ldm_tensor out, da2, dn2, dh, dtp, da1, dn1;
    if (zeros_like(tr, &out, dout) || res_forward(tr, &out, &k, x, r)) return LDM_ERR;
    if (zeros_like(tr, &da2, &k.a2) || zeros_like(tr, &dn2, &k.n2) || zeros_like(tr, &dh, &k.h) ||
        ZEROS(tr, &dtp, x->shape[0], r->cout) || zeros_like(tr, &da1, &k.a1) ||
        zeros_like(tr, &dn1, &k.n1))
        return LDM_ERR;
    // out = conv2(a2) + shortcut(x)
    if (r->short_w.data)
        ldm_conv2d_backward(dx, &d->short_w, &d->short_b, dout, x, &r->short_w, 1, 0, 0, 0, 0);
    else
        ldm_add_backward(dx, NULL, dout);
    ldm_conv2d_backward(&da2, &d->conv2_w, &d->conv2_b, dout, &k.a2, &r->conv2_w, 1, 1, 1, 1, 1);
    // a2 = SiLU(n2), n2 = GN2(h)
    ldm_silu_backward(&dn2, &da2, &k.n2);
    ldm_group_norm_backward(&dh, &d->norm2_w, &d->norm2_b, &dn2, &k.h, &r->norm2_w, G, c->norm_eps);
    // h = conv1(a1) + tp[:, :, None, None], tp = time_emb_proj(semb): dh reaches conv1 unchanged
    ldm_add_channel_backward(NULL, &dtp, &dh);
    ldm_linear_backward(dsemb, &d->temb_w, &d->temb_b, &dtp, &tr->semb, &r->temb_w);
    ldm_conv2d_backward(&da1, &d->conv1_w, &d->conv1_b, &dh, &k.a1, &r->conv1_w, 1, 1, 1, 1, 1);
    // a1 = SiLU(n1), n1 = GN1(x)
    ldm_silu_backward(&dn1, &da1, &k.n1);
    ldm_group_norm_backward(dx, &d->norm1_w, &d->norm1_b, &dn1, x, &r->norm1_w, G, c->norm_eps);
    ldm_arena_release(&tr->tape, m);
    return 0;
}

// Attention backward from the tape k of its forward: dxq += dL/dxq, dxkv += dL/dxkv
// (self-attention: dxq == dxkv, the two shares add up; dxkv may be NULL).
static int attn_backward(ldm_unet_trainer *tr, ldm_tensor *dxq, ldm_tensor *dxkv,
                         const ldm_tensor *dout, const attn_tape *k, const ldm_tensor *xq,
                         const ldm_tensor *xkv, const ldm_unet_attn *at, ldm_unet_attn *d,
                         int heads) {
    ldm_tensor dO, dq, dk, dv;
    if (zeros_like(tr, &dO, &k->o) || zeros_like(tr, &dq, &k->q) || zeros_like(tr, &dk, &k->k) ||
        zeros_like(tr, &dv, &k->v))
        return LDM_ERR;
    ldm_linear_backward(&dO, &d->out_w, &d->out_b, dout, &k->o, &at->out_w);
    ldm_attention_backward(&dq, &dk, &dv, &dO, &k->q, &k->k, &k->v, heads, attn_scale(at, heads), 0);
    ldm_linear_backward(dxq, &d->q_w, NULL, &dq, xq, &at->q_w);
    ldm_linear_backward(dxkv, &d->k_w, NULL, &dk, xkv, &at->k_w);
    ldm_linear_backward(dxkv, &d->v_w, NULL, &dv, xkv, &at->v_w);
    return 0;
}

// dx holds dL/dx3 on entry and dL/dx0 on return: each residual x_{i+1} = x_i + f(x_i)
// passes the gradient through unchanged, and every branch's backward adds its share.
static int tblock_backward(ldm_unet_trainer *tr, ldm_tensor *dx, ldm_tensor *dctx,
                           const ldm_tensor *x0, const ldm_unet_tblock *tb, ldm_unet_tblock *d,
                           int heads, int only_cross) {
    const ldm_tensor *ctx = &tr->ctx;
    size_t m = ldm_arena_mark(&tr->tape);
    tblock_tape k;
    ldm_tensor x3, df, df2, dn3, dn2, dn1;
    if (zeros_like(tr, &x3, x0) || tblock_forward(tr, &x3, &k, x0, tb, heads, only_cross))
        return LDM_ERR;
    if (zeros_like(tr, &df, &k.f) || zeros_like(tr, &df2, &k.f2) || zeros_like(tr, &dn3, x0) ||
        zeros_like(tr, &dn2, x0) || zeros_like(tr, &dn1, x0))
        return LDM_ERR;
    // x3 = x2 + ff.net.2(f), f = GEGLU(f2), f2 = ff.net.0.proj(n3), n3 = LN3(x2)
    ldm_linear_backward(&df, &d->ff2_w, &d->ff2_b, dx, &k.f, &tb->ff2_w);
    ldm_geglu_backward(&df2, &df, &k.f2);
    ldm_linear_backward(&dn3, &d->ff1_w, &d->ff1_b, &df2, &k.n3, &tb->ff1_w);
    ldm_layer_norm_backward(dx, &d->norm3_w, &d->norm3_b, &dn3, &k.x2, &tb->norm3_w, 1e-5f);
    // x2 = x1 + attn2(n2, context), n2 = LN2(x1)
    if (attn_backward(tr, &dn2, dctx, dx, &k.at2, &k.n2, ctx, &tb->attn2, &d->attn2, heads))
        return LDM_ERR;
    ldm_layer_norm_backward(dx, &d->norm2_w, &d->norm2_b, &dn2, &k.x1, &tb->norm2_w, 1e-5f);
    // x1 = x0 + attn1(n1, n1 or context), n1 = LN1(x0)
    if (attn_backward(tr, &dn1, only_cross ? dctx : &dn1, dx, &k.at1, &k.n1,
                      only_cross ? ctx : &k.n1, &tb->attn1, &d->attn1, heads))
        return LDM_ERR;
    ldm_layer_norm_backward(dx, &d->norm1_w, &d->norm1_b, &dn1, x0, &tb->norm1_w, 1e-5f);
    ldm_arena_release(&tr->tape, m);
    return 0;
}

static int transformer_backward(ldm_unet_trainer *tr, ldm_tensor *dx, ldm_tensor *dctx,
                                const ldm_tensor *dy, const ldm_tensor *x,
                                const ldm_unet_transformer *t, ldm_unet_transformer *d) {
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], S = H * W;
    int64_t D = t->d;
    size_t m = ldm_arena_mark(&tr->tape);
    xf_tape k;
    ldm_tensor y, dq, dtok, dp, dg;
    if (zeros_like(tr, &y, x) || transformer_forward(tr, &y, &k, x, t)) return LDM_ERR;
    if (zeros_like(tr, &dq, &k.q) || zeros_like(tr, &dtok, &k.tok[0]) ||
        zeros_like(tr, &dp, &k.p) || zeros_like(tr, &dg, &k.g))
        return LDM_ERR;
    // y = x + o: dx += dy, and do = dy
    ldm_add_backward(dx, NULL, dy);
    if (!t->linear) {   // o = proj_out(q as [B,D,H,W]), q = tok^T
        ldm_tensor qv = ldm_tensor_view(&k.q, LDM_SHAPE(B, D, H, W));
        ldm_tensor dqv = ldm_tensor_view(&dq, LDM_SHAPE(B, D, H, W));
        ldm_conv2d_backward(&dqv, &d->proj_out_w, &d->proj_out_b, dy, &qv, &t->proj_out_w, 1,
                            0, 0, 0, 0);
        ldm_transpose_backward(&dtok, &dq);
    } else {            // o = q^T as [B,C,S], q = proj_out(tok)
        ldm_tensor dyv = ldm_tensor_view(dy, LDM_SHAPE(B, C, S));
        ldm_transpose_backward(&dq, &dyv);
        ldm_linear_backward(&dtok, &d->proj_out_w, &d->proj_out_b, &dq, &k.tok[t->depth],
                            &t->proj_out_w);
    }
    // the transformer blocks in reverse: dtok goes from d tok[j+1] to d tok[j]
    for (int j = t->depth - 1; j >= 0; j--)
        if (tblock_backward(tr, &dtok, dctx, &k.tok[j], &t->blocks[j], &d->blocks[j], t->heads,
                            t->only_cross))
            return LDM_ERR;
    if (!t->linear) {   // tok[0] = p^T as [B,D,S], p = proj_in(g)
        ldm_tensor dpv = ldm_tensor_view(&dp, LDM_SHAPE(B, D, S));
        ldm_transpose_backward(&dpv, &dtok);
        ldm_conv2d_backward(&dg, &d->proj_in_w, &d->proj_in_b, &dp, &k.g, &t->proj_in_w, 1,
                            0, 0, 0, 0);
    } else {            // tok[0] = proj_in(p), p = g^T as [B,S,C]
        ldm_linear_backward(&dp, &d->proj_in_w, &d->proj_in_b, &dtok, &k.p, &t->proj_in_w);
        ldm_tensor dgv = ldm_tensor_view(&dg, LDM_SHAPE(B, C, S));
        ldm_transpose_backward(&dgv, &dp);
    }
    // g = GN(x)
    ldm_group_norm_backward(dx, &d->norm_w, &d->norm_b, &dg, x, &t->norm_w,
                            tr->model->cfg.norm_num_groups, 1e-6f);
    ldm_arena_release(&tr->tape, m);
    return 0;
}

// One row's backward: dx += dL/d in (dx NULL: the latent, no gradient wanted).
static int row_backward(ldm_unet_trainer *tr, const ldm_unet_block *b, ldm_unet_block *d,
                        ldm_tensor *dx, ldm_tensor *dsemb, ldm_tensor *dctx,
                        const ldm_tensor *dy, const ldm_tensor *in) {
    const ldm_unet_config *c = &tr->model->cfg;
    size_t m = ldm_arena_mark(&tr->tape);
    out_tape k;
    ldm_tensor y, dn, da;
    switch (b->kind) {
    case LDM_UNET_CONV_IN:   // y = conv3x3(x)
        ldm_conv2d_backward(dx, &d->conv_w, &d->conv_b, dy, in, &b->conv_w, 1, 1, 1, 1, 1);
        return 0;
    case LDM_UNET_DOWN:      // y = conv3x3 stride 2 (in)
        ldm_conv2d_backward(dx, &d->conv_w, &d->conv_b, dy, in, &b->conv_w, 2, 1, 1, 1, 1);
        return 0;
    case LDM_UNET_RES:
        return res_backward(tr, dx, dsemb, dy, in, &b->res, &d->res);
    case LDM_UNET_ATTN:
        return transformer_backward(tr, dx, dctx, dy, in, &b->tr, &d->tr);
    case LDM_UNET_UP:        // y = conv3x3(a), a = nearest x2 (in)
        if (zeros_like(tr, &y, dy) || up_forward(tr, &y, &k, in, b) ||
            zeros_like(tr, &da, &k.a))
            return LDM_ERR;
        ldm_conv2d_backward(&da, &d->conv_w, &d->conv_b, dy, &k.a, &b->conv_w, 1, 1, 1, 1, 1);
        ldm_upsample2x_backward(dx, &da);
        ldm_arena_release(&tr->tape, m);
        return 0;
    case LDM_UNET_OUT:       // y = conv3x3(a), a = SiLU(n), n = GN(in)
        if (zeros_like(tr, &y, dy) || out_forward(tr, &y, &k, in, b) ||
            zeros_like(tr, &da, &k.a) || zeros_like(tr, &dn, &k.n))
            return LDM_ERR;
        ldm_conv2d_backward(&da, &d->conv_w, &d->conv_b, dy, &k.a, &b->conv_w, 1, 1, 1, 1, 1);
        ldm_silu_backward(&dn, &da, &k.n);
        ldm_group_norm_backward(dx, &d->norm_w, &d->norm_b, &dn, in, &b->norm_w,
                                c->norm_num_groups, c->norm_eps);
        ldm_arena_release(&tr->tape, m);
        return 0;
    }
    return ldm_error("unet trainer: unknown block kind %d", (int)b->kind);
}

// The time embedding, from dsemb = dL/dSiLU(emb) summed over every ResBlock:
//   semb = SiLU(emb), emb = linear_2(s1), s1 = SiLU(h1), h1 = linear_1(sinusoid(t))
// (t is data: the sinusoid has no parameters and gets no gradient)
static int time_embedding_backward(ldm_unet_trainer *tr, const ldm_tensor *dsemb) {
    ldm_unet *u = tr->model;
    size_t m = ldm_arena_mark(&tr->tape);
    ldm_tensor s1, demb, ds1, dh1;
    if (zeros_like(tr, &s1, &tr->h1) || zeros_like(tr, &demb, &tr->emb) ||
        zeros_like(tr, &ds1, &tr->h1) || zeros_like(tr, &dh1, &tr->h1))
        return LDM_ERR;
    ldm_silu(&s1, &tr->h1);   // recomputed
    ldm_silu_backward(&demb, dsemb, &tr->emb);
    ldm_linear_backward(&ds1, &tr->d_time_w2, &tr->d_time_b2, &demb, &s1, &u->time_w2);
    ldm_silu_backward(&dh1, &ds1, &tr->h1);
    ldm_linear_backward(NULL, &tr->d_time_w1, &tr->d_time_b1, &dh1, &tr->te, &u->time_w1);
    ldm_arena_release(&tr->tape, m);
    return 0;
}

// ---- 4. the forward and the backward over the table --------------------------------

static int check_inputs(const ldm_unet *u, const ldm_tensor *x, const float *t,
                        const ldm_tensor *ctx, const ldm_tensor *out) {
    const ldm_unet_config *c = &u->cfg;
    char s[96];
    if (x->ndim != 4 || x->shape[0] < 1 || x->shape[1] != c->in_channels)
        return ldm_error("unet trainer: latent %s, expected [B,%d,h,w]",
                         ldm_shape_str(s, sizeof s, x->shape, x->ndim), c->in_channels);
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    int64_t f = (int64_t)1 << (c->n_levels - 1);
    if (H < f || W < f || H % f || W % f)
        return ldm_error("unet trainer: latent %lldx%lld: both sides must be multiples of %lld",
                         (long long)H, (long long)W, (long long)f);
    if (ctx->ndim != 3 || ctx->shape[0] != B || ctx->shape[1] < 1 ||
        ctx->shape[2] != c->cross_attention_dim)
        return ldm_error("unet trainer: context %s, expected [%lld,T,%d]",
                         ldm_shape_str(s, sizeof s, ctx->shape, ctx->ndim), (long long)B,
                         c->cross_attention_dim);
    if (out->ndim != 4 || out->shape[0] != B || out->shape[1] != c->out_channels ||
        out->shape[2] != H || out->shape[3] != W)
        return ldm_error("unet trainer: output %s, expected [%lld,%d,%lld,%lld]",
                         ldm_shape_str(s, sizeof s, out->shape, out->ndim), (long long)B,
                         c->out_channels, (long long)H, (long long)W);
    if (x->ops != u->ops || ctx->ops != u->ops || out->ops != u->ops)
        return ldm_error("unet trainer: latent, context and output must live on the UNet's "
                         "backend '%s'", u->ops->name);
    for (int64_t b = 0; b < B; b++)
        if (!isfinite(t[b])) return ldm_error("unet trainer: timestep %lld is not finite", (long long)b);
    return 0;
}

int ldm_unet_train_forward(ldm_tensor *out, ldm_unet_trainer *tr, const ldm_tensor *x,
                           const float *t, const ldm_tensor *context) {
    ldm_unet *u = tr->model;
    tr->ready = 0;
    if (!u) return ldm_error("unet trainer: not initialised (ldm_unet_trainer_init)");
    if (check_inputs(u, x, t, context, out)) return LDM_ERR;
    const ldm_unet_config *c = &u->cfg;
    ldm_arena *A = &tr->tape;
    ldm_arena_reset(A);
    int64_t B = x->shape[0], C0 = c->block_out_channels[0];

    // copies of the inputs the backward reads again
    if (ACT(tr, &tr->x, x->shape[0], x->shape[1], x->shape[2], x->shape[3]) ||
        ACT(tr, &tr->ctx, context->shape[0], context->shape[1], context->shape[2]))
        return LDM_ERR;
    ldm_copy(&tr->x, x);
    ldm_copy(&tr->ctx, context);

    // time embedding: h1 = linear_1(sinusoid(t)), emb = linear_2(SiLU(h1)), semb = SiLU(emb)
    if (ACT(tr, &tr->te, B, C0) || ACT(tr, &tr->h1, B, u->temb) || ACT(tr, &tr->emb, B, u->temb) ||
        ACT(tr, &tr->semb, B, u->temb))
        return LDM_ERR;
    ldm_unet_timestep_embedding(tr->te.data, t, (int)B, (int)C0, c->flip_sin_to_cos,
                                (float)c->freq_shift);   // host memory
    ldm_linear(&tr->h1, &tr->te, &u->time_w1, &u->time_b1);
    size_t m = ldm_arena_mark(A);
    ldm_tensor s1;
    if (ACT(tr, &s1, B, u->temb)) return LDM_ERR;
    ldm_silu(&s1, &tr->h1);
    ldm_linear(&tr->emb, &s1, &u->time_w2, &u->time_b2);
    ldm_arena_release(A, m);
    ldm_silu(&tr->semb, &tr->emb);

    // The rows, keeping each one's output (the next row's input). The skip
    // stack holds row numbers: a popped skip is the output of the row that pushed it.
    int stack[LDM_UNET_MAX_SKIPS], sp = 0;
    ldm_tensor h = tr->x;
    for (int k = 0; k < u->n_blocks; k++) {
        ldm_unet_block *b = &u->blocks[k];
        int64_t H = h.shape[2], W = h.shape[3];
        ldm_tensor y, in = h;
        if (b->kind == LDM_UNET_OUT) {
            y = *out;
            y.owns = 0;   // a view of the caller's out
        } else {
            if (b->kind == LDM_UNET_DOWN) H = (H + 1) / 2, W = (W + 1) / 2;
            if (b->kind == LDM_UNET_UP) H *= 2, W *= 2;
            if (ACT(tr, &y, B, b->cout, H, W)) return LDM_ERR;
        }
        m = ldm_arena_mark(A);
        tr->skip_row[k] = -1;
        if (b->skip) {   // up path: in = torch.cat([h, skip], dim=1)
            int s = stack[--sp];
            tr->skip_row[k] = s;
            if (ACT(tr, &in, B, h.shape[1] + b->skip, h.shape[2], h.shape[3])) return LDM_ERR;
            ldm_concat_channels(&in, &h, &tr->outs[s]);
        }
        if (row_forward(tr, b, &y, &in)) return LDM_ERR;
        ldm_arena_release(A, m);   // the row's internals (and the concatenation)
        tr->outs[k] = h = y;
        if (b->push) stack[sp++] = k;
    }
    tr->kept = ldm_arena_mark(A);
    tr->ready = 1;
    return 0;
}

int ldm_unet_train_backward(ldm_tensor *dcontext, ldm_unet_trainer *tr, const ldm_tensor *dout) {
    ldm_unet *u = tr->model;
    if (!u || !tr->ready)
        return ldm_error("unet trainer: backward without a forward (ldm_unet_train_forward first)");
    int n = u->n_blocks;
    if (!ldm_shape_equal(dout, &tr->outs[n - 1]) || dout->ops != u->ops)
        return ldm_error("unet trainer: dout must have the shape of the last forward's output "
                         "and live on its backend");
    if (dcontext && (!ldm_shape_equal(dcontext, &tr->ctx) || dcontext->ops != u->ops))
        return ldm_error("unet trainer: dcontext must have the shape of the context");
    ldm_arena *A = &tr->tape;
    ldm_arena_release(A, tr->kept);   // the backward's scratch starts here
    int64_t B = tr->x.shape[0];

    // dL/dSiLU(emb), summed over every ResBlock; one gradient per pushed skip
    // (the rows marked push), added to by the up-path row that pops it
    ldm_tensor dsemb;
    if (ZEROS(tr, &dsemb, B, u->temb)) return LDM_ERR;
    for (int k = 0; k < n; k++)
        if (u->blocks[k].push && zeros_like(tr, &tr->dskip[k], &tr->outs[k])) return LDM_ERR;

    // The rows in reverse. dh = dL/d(row k's output); the row's backward gives
    // din = dL/d(its input), which becomes dh of row k-1 (moved down to `base`).
    size_t base = ldm_arena_mark(A);
    ldm_tensor dh = *dout;
    for (int k = n - 1; k >= 0; k--) {
        ldm_unet_block *b = &u->blocks[k];
        if (b->push) ldm_add(&dh, &dh, &tr->dskip[k]);   // the output was also a skip
        ldm_tensor in = k > 0 ? tr->outs[k - 1] : tr->x, din;
        int s = tr->skip_row[k];
        if (s >= 0) {   // recompute in = cat(h, skip)
            ldm_tensor h = in;
            if (ACT(tr, &in, B, h.shape[1] + tr->outs[s].shape[1], h.shape[2], h.shape[3]))
                return LDM_ERR;
            ldm_concat_channels(&in, &h, &tr->outs[s]);
        }
        if (k == 0) {   // conv_in: the latent needs no gradient
            if (row_backward(tr, b, &tr->grad[k], NULL, &dsemb, dcontext, &dh, &in))
                return LDM_ERR;
            break;
        }
        if (zeros_like(tr, &din, &in) ||
            row_backward(tr, b, &tr->grad[k], &din, &dsemb, dcontext, &dh, &in))
            return LDM_ERR;
        if (s >= 0) {   // din = [dh of row k-1 | the skip's share]
            ldm_tensor dprev;
            if (zeros_like(tr, &dprev, &tr->outs[k - 1])) return LDM_ERR;
            ldm_concat_channels_backward(&dprev, &tr->dskip[s], &din);
            din = dprev;
        }
        ldm_arena_release_keep(A, base, &din);
        dh = din;
    }
    if (time_embedding_backward(tr, &dsemb)) return LDM_ERR;
    ldm_arena_release(A, tr->kept);
    return 0;
}
