/*
 * ldm/train/clip_train.h -- training the CLIP text encoder (ldm/clip.h): a
 * forward that keeps what the backward needs, and the backward that turns
 * dL/d(last_hidden_state) into dL/dW for every weight of the encoder
 * (docs/14-backpropagation.md, "Backward through the text encoder").
 *
 * The function is transformers' CLIPTextModel as tools/train/train_tiny.py
 * trains it (Radford et al. 2021, sec. 2.4; pre-LN blocks as GPT-2):
 *   x_0 = token_embedding[ids] + position_embedding[0:T]             [B,T,D]
 *   x_{l+1} = y(x_l):  x1 = x + W_o attn(LN1(x)) + b_o                (causal, q/k/v biases)
 *                      y  = x1 + fc2(act(fc1(LN2(x1))))              act: quick_gelu / gelu
 *   out = final_layer_norm(x_L)                                      [B,T,D]
 * and the backward walks it in reverse: the final LN, then per layer the MLP
 * branch and the attention branch, each adding its share to the gradient of
 * the residual stream dx, then the two embedding tables.
 *
 * Activation strategy (block-level recomputation, as diffusers' gradient
 * checkpointing): the forward keeps in tr->tape only the input x_l of every
 * layer and the input x_L of the final LN, (L+1)·B·T·D floats; everything
 * inside a layer is released as soon as the layer is done. The backward, for
 * l = L-1 .. 0, recomputes layer l's internals from x_l into a scratch mark
 * of the tape (LN1, q, k, v, attention, x1, LN2, fc1, act: 7 [B,T,D] and
 * 2 [B,T,F]), backprops through them, and releases the mark. Peak memory:
 * the kept inputs + one layer's internals and their gradients, whatever L.
 *
 * Training is fp32 on a host-memory backend (ref / cpu): init makes every
 * weight of the model an owned fp32 tensor. The forward runs all the layers
 * the model loaded (no clip skip). Gradients ACCUMULATE (+=): the caller
 * zeroes them once per optimizer step (ldm_params_zero_grad).
 *
 *   ldm_clip_trainer tr;  ldm_params list = {0};
 *   ldm_clip_trainer_init(&tr, &clip);
 *   ldm_clip_trainer_params(&tr, &list, "text_encoder.");
 *   ldm_clip_train_forward(&ctx, &tr, ids, B, 77);     // ctx [B,77,D]
 *   ... dctx = dL/dctx (the UNet's backward) ...
 *   ldm_clip_train_backward(&tr, &dctx);               // every gradient += dL/dW
 */
#ifndef LDM_TRAIN_CLIP_TRAIN_H
#define LDM_TRAIN_CLIP_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include "ldm/clip.h"
#include "ldm/core/arena.h"
#include "ldm/core/tensor.h"
#include "ldm/train/params.h"

typedef struct ldm_clip_trainer {
    ldm_clip *model;                  // borrowed (its weights made owned fp32 by init)
    // dL/dW, each the shape of the weight it belongs to (zeroed by init)
    ldm_tensor d_tok_emb;             // [V,D]
    ldm_tensor d_pos_emb;             // [77,D]   rows >= T of a forward get nothing
    ldm_clip_layer *d_layers;         // [n_layers]: field f = gradient of model->layers[l].f
    ldm_tensor d_lnf_w, d_lnf_b;      // [D]
    // the tape: what the last forward kept for the backward
    ldm_arena tape;                   // x_in and the backward's scratch
    ldm_tensor *x_in;                 // [n_layers + 1]: x_in[l] the input of layer l,
                                      // x_in[n_layers] that of the final LN (views into tape)
    int32_t *ids;                     // [B*T] the forward's ids (the embedding backward)
    int B, T;                         // of the last forward (0: none yet)
    size_t tape_kept;                 // tape mark after the kept tensors
} ldm_clip_trainer;

// Makes every weight of `model` an owned, writable fp32 tensor (a loaded
// weight may be fp16/bf16 or a view into a read-only mapped file: it is
// copied and widened), allocates zeroed gradients and the tape. The backend
// must be able to train (ldm_backend_can_train). 0 / LDM_ERR.
int ldm_clip_trainer_init(ldm_clip_trainer *tr, ldm_clip *model);

// Appends every parameter as prefix + its transformers name, in the order of
// CLIPTextModel.named_parameters() (transformers 5 names, without the
// "text_model." of 4.x): "text_encoder.embeddings.token_embedding.weight",
// ..., "text_encoder.encoder.layers.0.self_attn.k_proj.weight", ...,
// "text_encoder.final_layer_norm.bias". 0 / LDM_ERR.
int ldm_clip_trainer_params(ldm_clip_trainer *tr, ldm_params *list, const char *prefix);

// Frees the gradients and the tape (not the model).
void ldm_clip_trainer_free(ldm_clip_trainer *tr);

// ids [B,T] (host) -> out [B,T,D] = last_hidden_state, the same numbers as
// ldm_clip_forward(out, model, ids, B, T, 0); out is a new tensor the caller
// frees. Keeps the layer inputs in tr->tape (reset by each forward).
// 0 / LDM_ERR (bad ids or sizes are user input).
int ldm_clip_train_forward(ldm_tensor *out, ldm_clip_trainer *tr, const int32_t *ids, int B,
                           int T);

// dout [B,T,D] = dL/dout of the last forward -> every gradient += dL/dW
// (the token table gets rows only for the ids used; the position table its
// first T rows). May be called again on the same forward (it adds again).
// 0 / LDM_ERR (no forward yet, dout of another shape, out of memory).
int ldm_clip_train_backward(ldm_clip_trainer *tr, const ldm_tensor *dout);

#endif
