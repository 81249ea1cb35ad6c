/*
 * ldm/train/unet_train.h -- training the UNet: the forward that keeps what
 * the backward needs, and the backward of the whole network, row by row of
 * its block table (ldm/unet.h).
 *
 * The denoiser is trained on LDM eq. 2 (Rombach et al. 2022, sec. 3.3):
 *     L = E || eps - eps_theta(z_t, t, tau_theta(y)) ||^2
 * (with the min-SNR weights of ldm/train/loss.h). The loss gives
 * dL/d eps_theta; ldm_unet_train_backward turns it into dL/dW for every UNet
 * weight W and dL/dcontext, the gradient that flows on into the text encoder
 * tau_theta through the keys and values of every cross-attention.
 *
 * Activation strategy -- block-level recomputation (Chen et al. 2016,
 * "Training Deep Nets with Sublinear Memory Cost"; diffusers' gradient
 * checkpointing does the same per block):
 *   forward   runs the rows of the table in order and keeps, in the trainer's
 *             arena `tape`, only each row's OUTPUT (= the next row's input;
 *             the skips are the outputs of the rows that pushed them), plus
 *             copies of x, t's embedding and the context. A row's internals
 *             (norms, activations, q/k/v, the feed-forward's hidden layer) are
 *             released as soon as the row is done.
 *   backward  walks the rows in reverse. For each row it recomputes the row's
 *             internals from its kept input into a scratch mark of the arena,
 *             backpropagates through them, and releases them; the gradient of
 *             the row's input becomes the next upstream gradient. An up-path
 *             ResBlock's input is concat(h, skip): its gradient splits, and
 *             the skip's part waits (one buffer per skip) until the backward
 *             reaches the row that pushed that skip.
 * So the memory is the outputs of the rows (what the inference forward holds
 * at its peak, the skips, plus the rest of the rows) and ONE row's internals
 * at a time, instead of every intermediate of the network. A transformer row
 * recomputes one level deeper: its blocks' inputs are kept during its
 * recomputation, each block's internals are rebuilt once more in its own
 * backward. The price is one more forward per step.
 *
 * Gradients ACCUMULATE (+=): the caller zeroes them once per optimizer step
 * (ldm_params_zero_grad), so micro-batches can be summed.
 *
 * Left out: the class embedding (the x4 upscaler: the trainer refuses it);
 * fp16 training (weights and gradients are fp32); non-host backends (cuda has
 * no backward ops: ldm_backend_can_train).
 */
#ifndef LDM_TRAIN_UNET_TRAIN_H
#define LDM_TRAIN_UNET_TRAIN_H

#include "ldm/core/arena.h"
#include "ldm/core/tensor.h"
#include "ldm/train/params.h"
#include "ldm/unet.h"

typedef struct ldm_unet_trainer {
    ldm_unet *model;               // borrowed; its weights become owned fp32 tensors
    // Gradients, laid out as the model: dL/dW of a weight W of row k is the
    // same field of grad[k] (grad[k].res.conv1_w is dL/d blocks[k].res.conv1_w;
    // an ATTN row's grad[k].tr.blocks is its own array of `depth`).
    ldm_tensor d_time_w1, d_time_b1, d_time_w2, d_time_b2;
    ldm_unet_block *grad;          // [model->n_blocks]
    ldm_arena tape;                // what the forward keeps, then the backward's scratch
    // Kept by the last ldm_unet_train_forward (views into tape):
    int ready;                     // 1 after a forward, until the next forward fails
    ldm_tensor x, ctx;             // copies of the latent [B,Cin,h,w] and context [B,T,Dc]
    ldm_tensor te;                 // sinusoidal embedding of t [B,C0]
    ldm_tensor h1;                 // time_embedding.linear_1 output, before SiLU [B,Temb]
    ldm_tensor emb;                // linear_2 output, before SiLU [B,Temb]
    ldm_tensor semb;               // SiLU(emb): what every ResBlock's time_emb_proj reads
    ldm_tensor *outs;              // [n_blocks] each row's output (the last: the caller's out)
    int *skip_row;                 // [n_blocks] up-path ResBlock: the row whose output it
                                   // concatenates (its pushed skip); -1 otherwise
    ldm_tensor *dskip;             // [n_blocks] backward scratch: dL/d(skip) of a row that pushes
    size_t kept;                   // arena position after the kept tensors
} ldm_unet_trainer;

// Make every weight of `model` an owned, writable fp32 tensor (widening fp16 /
// bf16 weights, copying views into a mapped file), allocate zeroed gradients
// of the same shapes and the tape arena. 0 / LDM_ERR: a backend that cannot
// train (ldm_backend_can_train's message), a class embedding, out of memory.
int ldm_unet_trainer_init(ldm_unet_trainer *tr, ldm_unet *model);

// Append every parameter as prefix + its diffusers name ("unet.conv_in.weight"),
// in the order of torch's UNet2DConditionModel.named_parameters(): conv_in,
// time_embedding, down_blocks (per block: attentions, resnets, downsamplers),
// up_blocks (attentions, resnets, upsamplers), mid_block (attentions,
// resnets), conv_norm_out, conv_out. 0 / LDM_ERR.
int ldm_unet_trainer_params(ldm_unet_trainer *tr, ldm_params *list, const char *prefix);

// Frees the gradients and the tape (not the model).
void ldm_unet_trainer_free(ldm_unet_trainer *tr);

// eps_theta(x_t, t, context) as ldm_unet_forward computes it (the same ops in
// the same order: the same numbers), keeping the tape for the backward.
//   x [B,Cin,h,w], t[B] host floats, context [B,T,Dc] -> out [B,Cout,h,w]
// (out allocated by the caller on the model's backend). 0 / LDM_ERR.
int ldm_unet_train_forward(ldm_tensor *out, ldm_unet_trainer *tr, const ldm_tensor *x,
                           const float *t, const ldm_tensor *context);

// From dout = dL/d out [B,Cout,h,w] of the last forward: every parameter's
// gradient += dL/dW, and dcontext [B,T,Dc] += dL/dcontext (NULL: not wanted,
// e.g. a frozen text encoder). The latent x gets no gradient. 0 / LDM_ERR
// (no forward before it, shapes).
int ldm_unet_train_backward(ldm_tensor *dcontext, ldm_unet_trainer *tr, const ldm_tensor *dout);

#endif
