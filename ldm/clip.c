/*
 * ldm/clip.c -- CLIP text encoder forward pass (see clip.h).
 *
 * Mirrors transformers' CLIPTextTransformer (modeling_clip.py) and
 * open_clip's TextTransformer, which compute the same function:
 *   x = token_embedding[ids] + position_embedding[0:T]            [B,T,D]
 *   for each layer (pre-LN, Radford et al. 2019 / CLIP sec. 2.4):
 *     x = x + out_proj(MHA(LN1(x)), causal mask)                  [B,T,D]
 *     x = x + fc2(act(fc1(LN2(x))))                                [B,T,F] -> [B,T,D]
 *   out = final_layer_norm(x)
 * act = quick_gelu x*sigmoid(1.702x) (OpenAI CLIP, SD1) or erf GELU (OpenCLIP, SD2).
 * Attention: softmax(q k^T / sqrt(HS) + causal) v per head, q/k/v with bias.
 * Runs only through the op table (ldm/backend/ops.h), so every backend works.
 * Activations live in the encoder's arena (ldm/core/arena.h), reset by each forward.
 *
 * Leaves out: the pooled output and text_projection (SD never uses them),
 * padding attention masks (SD passes none), prompt weighting.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/clip.h"
#include "ldm/io/dump.h"
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"

// ---------------------------------------------------------------------------
// loading

static int load(ldm_tensor *t, ldm_weights *w, const char *fmt, int layer, const int64_t *shape,
                int ndim) {
    char name[160];
    snprintf(name, sizeof name, fmt, layer);
    return ldm_weights_load(t, w, name, shape, ndim);
}

int ldm_clip_load(ldm_clip *m, ldm_weights *w, const ldm_clip_config *cfg) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->ops = w->ops;
    ldm_arena_init(&m->arena, w->ops, "clip");
    int64_t V = cfg->vocab_size, D = cfg->hidden_size, F = cfg->intermediate_size;
    int64_t T = cfg->max_position_embeddings;
    if (V < 1 || D < 1 || F < 1 || T < 1 || cfg->num_attention_heads < 1 ||
        D % cfg->num_attention_heads != 0)
        return ldm_error("text encoder config: hidden_size %lld must be a positive multiple of "
                         "num_attention_heads %d", (long long)D, cfg->num_attention_heads);
    m->n_layers = cfg->num_hidden_layers - cfg->skip_last_layers;
    if (m->n_layers < 1 || m->n_layers > 1000)
        return ldm_error("text encoder config: %d layers minus %d skipped leaves none to run",
                         cfg->num_hidden_layers, cfg->skip_last_layers);
    m->layers = calloc((size_t)m->n_layers, sizeof *m->layers);
    if (!m->layers) return ldm_error("out of memory");
    int rc = 0;
    // The embedding tables are read by lookup and add, not linear: fp32.
    rc |= ldm_weights_load_f32(&m->tok_emb, w, "embeddings.token_embedding.weight", LDM_SHAPE(V, D));
    if (!rc)
        rc |= ldm_weights_load_f32(&m->pos_emb, w, "embeddings.position_embedding.weight",
                                   LDM_SHAPE(T, D));
    for (int l = 0; l < m->n_layers && !rc; l++) {
        ldm_clip_layer *L = &m->layers[l];
        const char *p = "encoder.layers.%d.";
        char f[128];
#define LW(field, suffix, ...)                                          \
        if (!rc) {                                                      \
            snprintf(f, sizeof f, "%s%s", p, suffix);                   \
            rc |= load(&L->field, w, f, l, LDM_SHAPE(__VA_ARGS__));     \
        }
        LW(ln1_w, "layer_norm1.weight", D) LW(ln1_b, "layer_norm1.bias", D)
        LW(q_w, "self_attn.q_proj.weight", D, D) LW(q_b, "self_attn.q_proj.bias", D)
        LW(k_w, "self_attn.k_proj.weight", D, D) LW(k_b, "self_attn.k_proj.bias", D)
        LW(v_w, "self_attn.v_proj.weight", D, D) LW(v_b, "self_attn.v_proj.bias", D)
        LW(o_w, "self_attn.out_proj.weight", D, D) LW(o_b, "self_attn.out_proj.bias", D)
        LW(ln2_w, "layer_norm2.weight", D) LW(ln2_b, "layer_norm2.bias", D)
        LW(fc1_w, "mlp.fc1.weight", F, D) LW(fc1_b, "mlp.fc1.bias", F)
        LW(fc2_w, "mlp.fc2.weight", D, F) LW(fc2_b, "mlp.fc2.bias", D)
#undef LW
    }
    if (!rc) rc |= load(&m->lnf_w, w, "final_layer_norm.weight", 0, LDM_SHAPE(D));
    if (!rc) rc |= load(&m->lnf_b, w, "final_layer_norm.bias", 0, LDM_SHAPE(D));
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        ldm_clip_free(m);
        return ldm_error("%s", msg);
    }
    return 0;
}

void ldm_clip_free(ldm_clip *m) {
    ldm_tensor_free(&m->tok_emb);
    ldm_tensor_free(&m->pos_emb);
    for (int l = 0; m->layers && l < m->n_layers; l++) {
        ldm_clip_layer *L = &m->layers[l];
        ldm_tensor *all[] = {&L->ln1_w, &L->ln1_b, &L->q_w, &L->k_w, &L->v_w, &L->o_w,
                             &L->q_b, &L->k_b, &L->v_b, &L->o_b, &L->ln2_w, &L->ln2_b,
                             &L->fc1_w, &L->fc1_b, &L->fc2_w, &L->fc2_b};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) ldm_tensor_free(all[i]);
    }
    free(m->layers);
    ldm_tensor_free(&m->lnf_w);
    ldm_tensor_free(&m->lnf_b);
    ldm_arena_free(&m->arena);
    memset(m, 0, sizeof *m);
}

// ---------------------------------------------------------------------------
// forward: activations come from m->arena (ldm/core/arena.h), reset by each
// forward; a layer releases its temporaries to a mark before it returns.

// New activation [dims...] from the encoder's arena: if (ACT(m, &t, B, T, D)) return LDM_ERR;
#define ACT(m, t, ...) ldm_arena_tensor(&(m)->arena, t, LDM_SHAPE(__VA_ARGS__))

// One pre-LN encoder layer, in place on x [B,T,D].
static int clip_layer_forward(ldm_clip *m, ldm_tensor *x, const ldm_clip_layer *L) {
    const ldm_clip_config *c = &m->cfg;
    int64_t B = x->shape[0], T = x->shape[1], D = x->shape[2], F = c->intermediate_size;
    int64_t NH = c->num_attention_heads, HS = D / NH;
    ldm_tensor h, q, k, v, a, f;
    size_t mk = ldm_arena_mark(&m->arena);
    if (ACT(m, &h, B, T, D)) return LDM_ERR;                  // h [B,T,D]
    size_t ma = ldm_arena_mark(&m->arena);
    // --- causal self-attention block: x += W_o MHA(LN1(x)) + b_o
    if (ACT(m, &q, B, T, D) || ACT(m, &k, B, T, D) || ACT(m, &v, B, T, D) || ACT(m, &a, B, T, D))
        return LDM_ERR;
    ldm_layer_norm(&h, x, &L->ln1_w, &L->ln1_b, c->layer_norm_eps);
    ldm_linear(&q, &h, &L->q_w, &L->q_b);                   // [B,T,D]
    ldm_linear(&k, &h, &L->k_w, &L->k_b);
    ldm_linear(&v, &h, &L->v_w, &L->v_b);
    // softmax(q_h k_h^T / sqrt(HS), query i sees keys j <= i) v_h, per head h
    ldm_attention(&a, &q, &k, &v, NH, 1.0f / sqrtf((float)HS), 1);
    ldm_linear(&h, &a, &L->o_w, &L->o_b);
    ldm_add(x, x, &h);
    ldm_arena_release(&m->arena, ma);                        // q, k, v, a
    // --- MLP block: x += fc2(act(fc1(LN2(x))))                 f [B,T,F]
    if (ACT(m, &f, B, T, F)) return LDM_ERR;
    ldm_layer_norm(&h, x, &L->ln2_w, &L->ln2_b, c->layer_norm_eps);
    ldm_linear(&f, &h, &L->fc1_w, &L->fc1_b);               // [B,T,F]
    if (c->hidden_act == LDM_ACT_QUICK_GELU)
        ldm_quick_gelu(&f, &f);                              // x * sigmoid(1.702 x)
    else
        ldm_gelu(&f, &f);                                    // 0.5 x (1 + erf(x / sqrt 2))
    ldm_linear(&h, &f, &L->fc2_w, &L->fc2_b);               // [B,T,D]
    ldm_add(x, x, &h);
    ldm_arena_release(&m->arena, mk);
    return 0;
}

int ldm_clip_check_ids(const ldm_clip_config *c, const int32_t *ids, int B, int T) {
    if (B < 1 || T < 1 || T > c->max_position_embeddings)
        return ldm_error("text encoder: %d x %d ids; expected B >= 1 and 1 <= T <= %d", B, T,
                         c->max_position_embeddings);
    for (int64_t i = 0; i < (int64_t)B * T; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return ldm_error("text encoder: token id %d at position %lld is outside the "
                             "vocabulary [0, %d)", ids[i], (long long)i, c->vocab_size);
    return 0;
}

int ldm_clip_forward(ldm_tensor *out, ldm_clip *m, const int32_t *ids, int B, int T,
                     int extra_skip) {
    memset(out, 0, sizeof *out);
    const ldm_clip_config *c = &m->cfg;
    int64_t D = c->hidden_size;
    if (ldm_clip_check_ids(c, ids, B, T)) return LDM_ERR;
    int n_run = m->n_layers - extra_skip;
    if (extra_skip < 0 || n_run < 1)
        return ldm_error("text encoder: clip skip %d leaves no layer to run (the model runs %d)",
                         extra_skip + 1, m->n_layers);

    ldm_arena_reset(&m->arena);   // every activation of this forward comes from here
    ldm_tensor x;
    if (ACT(m, &x, B, T, D)) return LDM_ERR;                  // x [B,T,D]
    // --- embeddings: x[b,t,:] = token_embedding[ids[b,t]] + position_embedding[t]
    ldm_embedding(&x, &m->tok_emb, ids, (int64_t)B * T);
    ldm_tensor pos = ldm_tensor_slice0(&m->pos_emb, 0, T);  // [T,D]
    for (int b = 0; b < B; b++) {
        ldm_tensor xb = ldm_tensor_slice0(&x, b, 1);
        ldm_tensor xv = ldm_tensor_view(&xb, LDM_SHAPE(T, D));
        ldm_add(&xv, &xv, &pos);
    }
    ldm_dump(&x, "text_model.embeddings");
    // --- transformer layers 0 .. n_run-1 (SD2: the last resblock is never loaded)
    for (int l = 0; l < n_run; l++) {
        if (clip_layer_forward(m, &x, &m->layers[l])) return LDM_ERR;
        ldm_dump(&x, "text_model.encoder.layers.%d", l);
    }
    // --- final LayerNorm, into the caller's new tensor
    *out = ldm_tensor_new(m->ops, LDM_SHAPE(B, T, D));
    if (!out->data) return LDM_ERR;
    ldm_layer_norm(out, &x, &m->lnf_w, &m->lnf_b, c->layer_norm_eps);
    ldm_dump(out, "text_model.final_layer_norm");
    return 0;
}
