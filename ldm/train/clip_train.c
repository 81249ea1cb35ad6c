/*
 * ldm/train/clip_train.c -- forward with a tape and backward of the CLIP text
 * encoder (see clip_train.h; the derivation is in docs/14-backpropagation.md,
 * "Backward through the text encoder").
 *
 * One function per forward block, and its backward beside it mirroring it
 * line by line in reverse:
 *   layer_forward   / layer_backward       one pre-LN transformer layer
 *   ldm_clip_train_forward / _backward     embeddings, the layers, final LN
 * The forward is the same sequence of ops as clip_layer_forward in
 * ldm/clip.c, so it gives the same bytes as the inference forward.
 * Every backward op accumulates (ldm/backend/ops.h), so the gradient of the
 * residual stream is one tensor dx updated in place: a branch x + f(x) adds
 * f's input gradient to the dx that already holds the skip path's share.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/train/clip_train.h"
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"

// The weights of one layer in the order of CLIPEncoderLayer.named_parameters()
// (self_attn k, v, q, out; layer_norm1; mlp fc1, fc2; layer_norm2), as offsets
// into ldm_clip_layer: the same offset finds a weight in model->layers[l] and
// its gradient in tr->d_layers[l].
static const struct { size_t off; const char *name; } layer_params[] = {
    {offsetof(ldm_clip_layer, k_w), "self_attn.k_proj.weight"},
    {offsetof(ldm_clip_layer, k_b), "self_attn.k_proj.bias"},
    {offsetof(ldm_clip_layer, v_w), "self_attn.v_proj.weight"},
    {offsetof(ldm_clip_layer, v_b), "self_attn.v_proj.bias"},
    {offsetof(ldm_clip_layer, q_w), "self_attn.q_proj.weight"},
    {offsetof(ldm_clip_layer, q_b), "self_attn.q_proj.bias"},
    {offsetof(ldm_clip_layer, o_w), "self_attn.out_proj.weight"},
    {offsetof(ldm_clip_layer, o_b), "self_attn.out_proj.bias"},
    {offsetof(ldm_clip_layer, ln1_w), "layer_norm1.weight"},
    {offsetof(ldm_clip_layer, ln1_b), "layer_norm1.bias"},
    {offsetof(ldm_clip_layer, fc1_w), "mlp.fc1.weight"},
    {offsetof(ldm_clip_layer, fc1_b), "mlp.fc1.bias"},
    {offsetof(ldm_clip_layer, fc2_w), "mlp.fc2.weight"},
    {offsetof(ldm_clip_layer, fc2_b), "mlp.fc2.bias"},
    {offsetof(ldm_clip_layer, ln2_w), "layer_norm2.weight"},
    {offsetof(ldm_clip_layer, ln2_b), "layer_norm2.bias"},
};
#define N_LAYER_PARAMS ((int)(sizeof layer_params / sizeof *layer_params))
// Weight i of layer L (an ldm_clip_layer *): LAYER_PARAM(&m->layers[l], i)
#define LAYER_PARAM(L, i) ((ldm_tensor *)((char *)(L) + layer_params[i].off))

// ---------------------------------------------------------------------------
// init / params / free

// *t becomes an owned fp32 tensor with the same values (a fp16/bf16 weight is
// widened exactly; a view into a mapped file is copied). Host memory only.
static int own_f32(ldm_tensor *t) {
    if (t->owns && t->dtype == LDM_DTYPE_F32) return 0;
    ldm_tensor w = ldm_tensor_new(t->ops, t->shape, t->ndim);
    if (!w.data) return LDM_ERR;
    const uint16_t *half = (const uint16_t *)t->data;
    for (int64_t i = 0; i < t->numel; i++)
        w.data[i] = t->dtype == LDM_DTYPE_F32  ? t->data[i]
                  : t->dtype == LDM_DTYPE_F16  ? ldm_f16_to_f32(half[i])
                                               : ldm_bf16_to_f32(half[i]);
    ldm_tensor_free(t);   // a view (mapped file) is left alone
    *t = w;
    return 0;
}

// *g = zeros of w's shape (a gradient).
static int grad_like(ldm_tensor *g, const ldm_tensor *w) {
    *g = ldm_tensor_zeros(w->ops, w->shape, w->ndim);
    return g->data ? 0 : LDM_ERR;
}

int ldm_clip_trainer_init(ldm_clip_trainer *tr, ldm_clip *model) {
    memset(tr, 0, sizeof *tr);
    if (!ldm_backend_can_train(model->ops)) return LDM_ERR;
    if (!model->ops->host_memory)
        return ldm_error("training the text encoder needs a host-memory backend (ref or cpu), "
                         "not %s", model->ops->name);
    tr->model = model;
    ldm_arena_init(&tr->tape, model->ops, "clip training tape");
    tr->d_layers = calloc((size_t)model->n_layers, sizeof *tr->d_layers);
    tr->x_in = calloc((size_t)model->n_layers + 1, sizeof *tr->x_in);
    if (!tr->d_layers || !tr->x_in) {
        ldm_clip_trainer_free(tr);
        return ldm_error("out of memory");
    }
    int rc = own_f32(&model->tok_emb) || grad_like(&tr->d_tok_emb, &model->tok_emb) ||
             own_f32(&model->pos_emb) || grad_like(&tr->d_pos_emb, &model->pos_emb);
    for (int l = 0; l < model->n_layers && !rc; l++)
        for (int i = 0; i < N_LAYER_PARAMS && !rc; i++) {
            ldm_tensor *w = LAYER_PARAM(&model->layers[l], i);
            rc = own_f32(w) || grad_like(LAYER_PARAM(&tr->d_layers[l], i), w);
        }
    if (!rc)
        rc = own_f32(&model->lnf_w) || grad_like(&tr->d_lnf_w, &model->lnf_w) ||
             own_f32(&model->lnf_b) || grad_like(&tr->d_lnf_b, &model->lnf_b);
    if (rc) {
        ldm_clip_trainer_free(tr);
        return LDM_ERR;
    }
    return 0;
}

int ldm_clip_trainer_params(ldm_clip_trainer *tr, ldm_params *list, const char *prefix) {
    ldm_clip *m = tr->model;
    int rc = ldm_params_add(list, &m->tok_emb, &tr->d_tok_emb,
                            "%sembeddings.token_embedding.weight", prefix) ||
             ldm_params_add(list, &m->pos_emb, &tr->d_pos_emb,
                            "%sembeddings.position_embedding.weight", prefix);
    for (int l = 0; l < m->n_layers && !rc; l++)
        for (int i = 0; i < N_LAYER_PARAMS && !rc; i++)
            rc = ldm_params_add(list, LAYER_PARAM(&m->layers[l], i),
                                LAYER_PARAM(&tr->d_layers[l], i), "%sencoder.layers.%d.%s",
                                prefix, l, layer_params[i].name);
    if (!rc)
        rc = ldm_params_add(list, &m->lnf_w, &tr->d_lnf_w, "%sfinal_layer_norm.weight", prefix) ||
             ldm_params_add(list, &m->lnf_b, &tr->d_lnf_b, "%sfinal_layer_norm.bias", prefix);
    return rc ? LDM_ERR : 0;
}

void ldm_clip_trainer_free(ldm_clip_trainer *tr) {
    ldm_tensor_free(&tr->d_tok_emb);
    ldm_tensor_free(&tr->d_pos_emb);
    for (int l = 0; tr->d_layers && l < tr->model->n_layers; l++)
        for (int i = 0; i < N_LAYER_PARAMS; i++) ldm_tensor_free(LAYER_PARAM(&tr->d_layers[l], i));
    free(tr->d_layers);
    ldm_tensor_free(&tr->d_lnf_w);
    ldm_tensor_free(&tr->d_lnf_b);
    ldm_arena_free(&tr->tape);
    free(tr->x_in);
    free(tr->ids);
    memset(tr, 0, sizeof *tr);
}

// ---------------------------------------------------------------------------
// one layer

// New tensor of the tape: if (ACT(tr, &t, B, T, D)) return LDM_ERR;
#define ACT(tr, t, ...) ldm_arena_tensor(&(tr)->tape, t, LDM_SHAPE(__VA_ARGS__))
// The same, filled with zeros (a gradient the backward ops accumulate into;
// training runs on host memory).
#define ZEROS(tr, t, ...) (ACT(tr, t, __VA_ARGS__) || \
                           (memset((t)->data, 0, (size_t)(t)->numel * sizeof(float)), 0))

// The internals of one layer: what its backward reads. All from the tape.
typedef struct layer_acts {
    ldm_tensor h1;        // LN1(x)                              [B,T,D]
    ldm_tensor q, k, v;   // h1 W^T + b                          [B,T,D]
    ldm_tensor a;         // softmax(q k^T / sqrt(HS), causal) v [B,T,D]
    ldm_tensor x1;        // x + a W_o^T + b_o                   [B,T,D]
    ldm_tensor h2;        // LN2(x1)                             [B,T,D]
    ldm_tensor f;         // fc1(h2), before the activation      [B,T,F]
    ldm_tensor g;         // act(f)                              [B,T,F]
} layer_acts;

// One pre-LN layer on x [B,T,D]: fills A (from the tape) and, when y is not
// NULL, writes the layer's output y = x1 + fc2(g) [B,T,D]. The same ops in
// the same order as clip_layer_forward (ldm/clip.c). The backward calls it
// with y = NULL to recompute A.
static int layer_forward(ldm_tensor *y, layer_acts *A, ldm_clip_trainer *tr,
                         const ldm_tensor *x, const ldm_clip_layer *L) {
    const ldm_clip_config *c = &tr->model->cfg;
    int64_t B = x->shape[0], T = x->shape[1], D = x->shape[2], F = c->intermediate_size;
    int64_t NH = c->num_attention_heads, HS = D / NH;
    if (ACT(tr, &A->h1, B, T, D) || ACT(tr, &A->q, B, T, D) || ACT(tr, &A->k, B, T, D) ||
        ACT(tr, &A->v, B, T, D) || ACT(tr, &A->a, B, T, D) || ACT(tr, &A->x1, B, T, D) ||
        ACT(tr, &A->h2, B, T, D) || ACT(tr, &A->f, B, T, F) || ACT(tr, &A->g, B, T, F))
        return LDM_ERR;
    // --- causal self-attention block: x1 = x + W_o MHA(LN1(x)) + b_o
    ldm_layer_norm(&A->h1, x, &L->ln1_w, &L->ln1_b, c->layer_norm_eps);
    ldm_linear(&A->q, &A->h1, &L->q_w, &L->q_b);
    ldm_linear(&A->k, &A->h1, &L->k_w, &L->k_b);
    ldm_linear(&A->v, &A->h1, &L->v_w, &L->v_b);
    ldm_attention(&A->a, &A->q, &A->k, &A->v, NH, 1.0f / sqrtf((float)HS), 1);
    ldm_linear(&A->x1, &A->a, &L->o_w, &L->o_b);
    ldm_add(&A->x1, x, &A->x1);
    // --- MLP block: y = x1 + fc2(act(fc1(LN2(x1))))
    ldm_layer_norm(&A->h2, &A->x1, &L->ln2_w, &L->ln2_b, c->layer_norm_eps);
    ldm_linear(&A->f, &A->h2, &L->fc1_w, &L->fc1_b);
    if (c->hidden_act == LDM_ACT_QUICK_GELU)
        ldm_quick_gelu(&A->g, &A->f);                        // f * sigmoid(1.702 f)
    else
        ldm_gelu(&A->g, &A->f);                              // 0.5 f (1 + erf(f / sqrt 2))
    if (y) {
        ldm_linear(y, &A->g, &L->fc2_w, &L->fc2_b);
        ldm_add(y, &A->x1, y);
    }
    return 0;
}

// The backward of layer_forward. dx [B,T,D]: on entry dL/dy, on return dL/dx
// (in place: each residual adds its branch's input gradient to it). x: the
// layer's input (from the tape); dL: the layer's gradients (+=).
static int layer_backward(ldm_tensor *dx, ldm_clip_trainer *tr, const ldm_tensor *x,
                          const ldm_clip_layer *L, ldm_clip_layer *dL) {
    const ldm_clip_config *c = &tr->model->cfg;
    int64_t B = x->shape[0], T = x->shape[1], D = x->shape[2], F = c->intermediate_size;
    int64_t NH = c->num_attention_heads, HS = D / NH;
    size_t mk = ldm_arena_mark(&tr->tape);
    layer_acts A;
    if (layer_forward(NULL, &A, tr, x, L)) return LDM_ERR;   // recompute the internals
    ldm_tensor dg, df, dh2, da, dq, dk, dv, dh1;
    if (ZEROS(tr, &dg, B, T, F) || ZEROS(tr, &df, B, T, F) || ZEROS(tr, &dh2, B, T, D) ||
        ZEROS(tr, &da, B, T, D) || ZEROS(tr, &dq, B, T, D) || ZEROS(tr, &dk, B, T, D) ||
        ZEROS(tr, &dv, B, T, D) || ZEROS(tr, &dh1, B, T, D))
        return LDM_ERR;
    // --- MLP block, y = x1 + fc2(g): dx holds dy = dL/d(fc2 out) and the skip's dL/dx1
    ldm_linear_backward(&dg, &dL->fc2_w, &dL->fc2_b, dx, &A.g, &L->fc2_w);
    if (c->hidden_act == LDM_ACT_QUICK_GELU)
        ldm_quick_gelu_backward(&df, &dg, &A.f);             // dg * act'(f)
    else
        ldm_gelu_backward(&df, &dg, &A.f);
    ldm_linear_backward(&dh2, &dL->fc1_w, &dL->fc1_b, &df, &A.h2, &L->fc1_w);
    ldm_layer_norm_backward(dx, &dL->ln2_w, &dL->ln2_b, &dh2, &A.x1, &L->ln2_w,
                            c->layer_norm_eps);             // dx = dL/dx1
    // --- attention block, x1 = x + a W_o^T + b_o: dx holds dL/d(out_proj out)
    ldm_linear_backward(&da, &dL->o_w, &dL->o_b, dx, &A.a, &L->o_w);
    ldm_attention_backward(&dq, &dk, &dv, &da, &A.q, &A.k, &A.v, NH, 1.0f / sqrtf((float)HS), 1);
    ldm_linear_backward(&dh1, &dL->q_w, &dL->q_b, &dq, &A.h1, &L->q_w);   // h1 feeds q, k
    ldm_linear_backward(&dh1, &dL->k_w, &dL->k_b, &dk, &A.h1, &L->k_w);   // and v: its
    ldm_linear_backward(&dh1, &dL->v_w, &dL->v_b, &dv, &A.h1, &L->v_w);   // gradients add
    ldm_layer_norm_backward(dx, &dL->ln1_w, &dL->ln1_b, &dh1, x, &L->ln1_w,
                            c->layer_norm_eps);             // dx = dL/dx
    ldm_arena_release(&tr->tape, mk);
    return 0;
}

// ---------------------------------------------------------------------------
// the encoder

int ldm_clip_train_forward(ldm_tensor *out, ldm_clip_trainer *tr, const int32_t *ids, int B,
                           int T) {
    memset(out, 0, sizeof *out);
    ldm_clip *m = tr->model;
    const ldm_clip_config *c = &m->cfg;
    int64_t D = c->hidden_size;
    tr->B = tr->T = 0;                     // no valid tape until this forward succeeds
    if (ldm_clip_check_ids(c, ids, B, T)) return LDM_ERR;
    int32_t *kept = realloc(tr->ids, (size_t)B * T * sizeof *kept);
    if (!kept) return ldm_error("out of memory");
    tr->ids = kept;
    memcpy(tr->ids, ids, (size_t)B * T * sizeof *ids);

    ldm_arena_reset(&tr->tape);
    for (int l = 0; l <= m->n_layers; l++)                   // x_in[l] [B,T,D], kept
        if (ACT(tr, &tr->x_in[l], B, T, D)) return LDM_ERR;
    tr->tape_kept = ldm_arena_mark(&tr->tape);
    // --- embeddings: x_0[b,t,:] = token_embedding[ids[b,t]] + position_embedding[t]
    ldm_tensor *x0 = &tr->x_in[0];
    ldm_embedding(x0, &m->tok_emb, ids, (int64_t)B * T);
    ldm_tensor pos = ldm_tensor_slice0(&m->pos_emb, 0, T);  // [T,D]
    for (int b = 0; b < B; b++) {
        ldm_tensor xb = ldm_tensor_slice0(x0, b, 1);
        ldm_tensor xv = ldm_tensor_view(&xb, LDM_SHAPE(T, D));
        ldm_add(&xv, &xv, &pos);
    }
    // --- the layers: x_in[l+1] = layer_l(x_in[l]); the internals are released
    for (int l = 0; l < m->n_layers; l++) {
        layer_acts A;
        if (layer_forward(&tr->x_in[l + 1], &A, tr, &tr->x_in[l], &m->layers[l])) return LDM_ERR;
        ldm_arena_release(&tr->tape, tr->tape_kept);
    }
    // --- final LayerNorm, into the caller's new tensor
    *out = ldm_tensor_new(m->ops, LDM_SHAPE(B, T, D));
    if (!out->data) return LDM_ERR;
    ldm_layer_norm(out, &tr->x_in[m->n_layers], &m->lnf_w, &m->lnf_b, c->layer_norm_eps);
    tr->B = B, tr->T = T;
    return 0;
}

int ldm_clip_train_backward(ldm_clip_trainer *tr, const ldm_tensor *dout) {
    ldm_clip *m = tr->model;
    const ldm_clip_config *c = &m->cfg;
    int64_t B = tr->B, T = tr->T, D = c->hidden_size;
    if (!tr->B) return ldm_error("text encoder backward: no forward to go back through");
    if (dout->ndim != 3 || dout->shape[0] != B || dout->shape[1] != T || dout->shape[2] != D ||
        dout->ops != m->ops || dout->dtype != LDM_DTYPE_F32)
        return ldm_error("text encoder backward: dout must be fp32 [%lld,%lld,%lld] on %s, as "
                         "the forward's output", (long long)B, (long long)T, (long long)D,
                         m->ops->name);
    ldm_arena_release(&tr->tape, tr->tape_kept);
    ldm_tensor dx;                                           // dL/dx_l, the residual stream
    if (ZEROS(tr, &dx, B, T, D)) return LDM_ERR;
    // --- final LayerNorm: out = LN_f(x_L)
    ldm_layer_norm_backward(&dx, &tr->d_lnf_w, &tr->d_lnf_b, dout, &tr->x_in[m->n_layers],
                            &m->lnf_w, c->layer_norm_eps);
    // --- the layers in reverse, each recomputed from its kept input
    for (int l = m->n_layers - 1; l >= 0; l--)
        if (layer_backward(&dx, tr, &tr->x_in[l], &m->layers[l], &tr->d_layers[l]))
            return LDM_ERR;
    // --- embeddings: a looked-up row gets its position's gradient (a repeated
    // id adds up); the position table gets the sum over the batch
    ldm_embedding_backward(&tr->d_tok_emb, &dx, tr->ids, B * T);
    ldm_tensor dpos = ldm_tensor_slice0(&tr->d_pos_emb, 0, T);   // [T,D]
    for (int64_t b = 0; b < B; b++) {
        ldm_tensor db = ldm_tensor_slice0(&dx, b, 1);
        ldm_tensor dv = ldm_tensor_view(&db, LDM_SHAPE(T, D));
        ldm_add_backward(&dpos, NULL, &dv);                  // dpos += dx[b]
    }
    ldm_arena_release(&tr->tape, tr->tape_kept);
    return 0;
}
