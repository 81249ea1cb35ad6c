/*
 * ldm/train/params.h -- the list of trainable parameters of a model: for each,
 * its diffusers / transformers name, the weight tensor and the tensor that
 * holds its gradient dL/dW.
 *
 * The optimizer (ldm/train/optim.h), gradient clipping, the EMA, checkpoints
 * and the export all walk this one list, so none of them needs to know which
 * model a tensor belongs to. A model's trainer (ldm/train/unet_train.h,
 * clip_train.h, vae_train.h) appends its parameters in the order of torch's
 * model.named_parameters(), prefixed as the diffusers folder names them
 * ("unet.", "text_encoder.", "vae."), so a list prints and saves like a
 * PyTorch state dict.
 *
 * Training is fp32 on a host-memory backend (ref / cpu): weights and
 * gradients are owned fp32 tensors; w->data and g->data are plain float arrays.
 */
#ifndef LDM_TRAIN_PARAMS_H
#define LDM_TRAIN_PARAMS_H

#include <stdint.h>
#include "ldm/core/tensor.h"

#define LDM_PARAM_NAME 160

typedef struct ldm_param {
    char name[LDM_PARAM_NAME];   // "unet.down_blocks.0.resnets.0.conv1.weight"
    ldm_tensor *w;               // the weight (owned fp32, updated in place by the optimizer)
    ldm_tensor *g;               // its gradient, same shape (accumulated by the backward)
} ldm_param;

typedef struct ldm_params {
    ldm_param *p;                // [n]
    int n, cap;
    int64_t numel;               // sum of p[i].w->numel
} ldm_params;

// Append one parameter; name is printf-style. 0 / LDM_ERR (out of memory,
// name too long, w and g of different shapes or not fp32).
int ldm_params_add(ldm_params *l, ldm_tensor *w, ldm_tensor *g, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
// Every gradient <- 0 (once per optimizer step, before the backward).
void ldm_params_zero_grad(const ldm_params *l);
// The parameter of that exact name, or NULL.
ldm_param *ldm_params_find(const ldm_params *l, const char *name);
// Release the list (not the tensors: the trainers own them).
void ldm_params_free(ldm_params *l);

#endif
