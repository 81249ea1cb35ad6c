/*
 * ldm/clip.h -- the CLIP text transformer that turns token ids into the
 * UNet's cross-attention context (Stable Diffusion's "cond_stage_model").
 *
 *   SD1: OpenAI CLIP ViT-L/14 text tower = transformers CLIPTextModel,
 *        quick_gelu, output = last_hidden_state (after the final LayerNorm).
 *   SD2: OpenCLIP ViT-H/14 text tower, exact GELU, "penultimate": the last
 *        resblock is skipped, then ln_final (ldm_clip_config.skip_last_layers).
 * Every width/depth/head count comes from ldm_clip_config (ldm/model.h), so
 * tiny test models run through the same code. Weights are asked for by their
 * transformers names without the "text_model." prefix
 * ("encoder.layers.0.self_attn.q_proj.weight"); ldm/io/weights.c maps them.
 */
#ifndef LDM_CLIP_H
#define LDM_CLIP_H

#include <stdint.h>
#include "ldm/model.h"
#include "ldm/core/arena.h"
#include "ldm/core/tensor.h"
#include "ldm/io/weights.h"

typedef struct ldm_clip_layer {        // one pre-LN transformer block (CLIPEncoderLayer)
    ldm_tensor ln1_w, ln1_b;           // [D]      layer_norm1
    ldm_tensor q_w, k_w, v_w, o_w;     // [D,D]    self_attn.{q,k,v,out}_proj.weight
    ldm_tensor q_b, k_b, v_b, o_b;     // [D]
    ldm_tensor ln2_w, ln2_b;           // [D]      layer_norm2
    ldm_tensor fc1_w, fc1_b;           // [F,D], [F]  mlp.fc1
    ldm_tensor fc2_w, fc2_b;           // [D,F], [D]  mlp.fc2
} ldm_clip_layer;

typedef struct ldm_clip {
    ldm_clip_config cfg;
    int n_layers;                      // layers loaded and run: num_hidden_layers - skip_last_layers
    ldm_tensor tok_emb;                // [V,D]  embeddings.token_embedding.weight
    ldm_tensor pos_emb;                // [T,D]  embeddings.position_embedding.weight (T = 77)
    ldm_clip_layer *layers;            // [n_layers]
    ldm_tensor lnf_w, lnf_b;           // [D]    final_layer_norm
    const struct ldm_ops *ops;
    ldm_arena arena;                   // activations; arena.peak = bytes at the peak of the
                                       // last forward (ldm/core/arena.h)
} ldm_clip;

// Load every weight through w (any layout). 0 / LDM_ERR (names the tensor).
int ldm_clip_load(ldm_clip *m, ldm_weights *w, const ldm_clip_config *cfg);
void ldm_clip_free(ldm_clip *m);

// ids [B,T] are a valid input of this text encoder: B >= 1, 1 <= T <=
// max_position_embeddings, every id inside the vocabulary. 0 / LDM_ERR naming the problem.
int ldm_clip_check_ids(const ldm_clip_config *c, const int32_t *ids, int B, int T);

// ids [B,T] (host, T <= max_position_embeddings) -> out [B,T,D] on m->ops
// (a new tensor the caller frees; the activations stay in m->arena).
// extra_skip: further final layers to skip before the final LN ("clip skip"
// 2 = extra_skip 1); 0 is the model's own setting.
// Dumps (when a dump folder is set, ldm/io/dump.h): text_model.embeddings, text_model.encoder.layers.N,
// text_model.final_layer_norm. 0 / LDM_ERR (bad ids or skip are user input).
int ldm_clip_forward(ldm_tensor *out, ldm_clip *m, const int32_t *ids, int B, int T,
                     int extra_skip);

#endif
