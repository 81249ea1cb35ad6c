/*
 * ldm/train/vae_train.h -- training the autoencoder (ldm/vae.h) in C: its
 * forward with a tape, and the backward of the encoder and of the decoder.
 *
 * Stage 1 of latent diffusion (LDM paper, Rombach et al. 2022, sec. 3.1 and
 * appendix G; tools/train/train_tiny.py train_vae). One step:
 *
 *     ldm_vae_train_encode(&moments, tr, x)            x [B,3,H,W] -> [B,2Z,h,w]
 *     ldm_vae_posterior(z, moments, noise, ...)        z = mean + std * noise (ldm/vae.h)
 *     ldm_vae_train_decode(&image, tr, z)              y [B,3,H,W]
 *     ldm_loss_vae_rec(dimage, ..., image, x, w, ...)  reconstruction term + d/dy
 *     ldm_vae_train_backward_decode(dz, tr, dimage)    dz, decoder gradients
 *     ldm_loss_vae_kl(dmoments, moments, kl_weight, ...)     KL term + d/dmoments
 *     ldm_vae_posterior_backward(dmoments, dz, moments, noise, ...)   through z
 *     ldm_vae_train_backward_encode(tr, dmoments)      encoder gradients
 * (the losses: ldm/train/loss.h, stage 1). The gradients ACCUMULATE (+=): the
 * caller zeroes them once per optimizer step (ldm_params_zero_grad), so
 * micro-batches add up.
 *
 * Every block has a forward and a `_backward` that mirrors it line by line in
 * reverse (ldm/train/vae_train.c): ResnetBlock2D (GN -> swish -> conv3x3,
 * twice, plus the identity or the 1x1 conv_shortcut), the single-head
 * mid-block attention, Downsample2D (pad (0,1,0,1) + 3x3 stride 2),
 * Upsample2D (nearest x2 + 3x3), GN -> swish -> conv_out, the 1x1
 * quant_conv / post_quant_conv. The forward gives the same numbers as
 * ldm_vae_encoder_forward / ldm_vae_decoder_forward (the same ops in the same
 * order).
 *
 * Activations (block-level recomputation, as diffusers' gradient
 * checkpointing): the forward keeps only the activation BETWEEN blocks -- the
 * input of every block -- on its tape; a block's internals (its GroupNorm and
 * swish outputs, q/k/v, the attention output) live in a scratch arena only
 * while the block runs. The backward walks the blocks in reverse: recomputes
 * one block's internals from its taped input, backpropagates through them,
 * and releases them. Memory: the tape (one activation per block) plus one
 * block's internals and the two running gradients (d output, d input).
 *
 * A trainer keeps the tape of one encode and of one decode at a time; each
 * backward consumes its tape (a second backward without a new forward is an
 * error). Host-memory backends only (ref, cpu).
 */
#ifndef LDM_TRAIN_VAE_TRAIN_H
#define LDM_TRAIN_VAE_TRAIN_H

#include "ldm/core/arena.h"
#include "ldm/core/tensor.h"
#include "ldm/train/params.h"
#include "ldm/vae.h"

// Activations one forward keeps: conv_in, the levels' resnets and samplers,
// the three mid-block stages, the output stage and the 1x1 convs, plus the input.
#define LDM_VAE_TAPE (LDM_MAX_LEVELS * (LDM_VAE_MAX_LAYERS + 1) + 8)

// The activations between the blocks of one forward, in order: act[0] is the
// input, act[k + 1] the output of block k. The backward pops them.
typedef struct ldm_vae_tape {
    ldm_arena arena;
    ldm_tensor act[LDM_VAE_TAPE];
    int n;                       // activations on the tape (0: nothing to backpropagate)
} ldm_vae_tape;

typedef struct ldm_vae_trainer {
    ldm_vae *model;              // borrowed; its weights made owned fp32 by _init
    ldm_vae grad;                // the gradients, laid out as the model: grad.enc.conv_in_w
                                 // holds dL/d model->enc.conv_in_w (only the tensors)
    ldm_vae_tape enc, dec;       // the tapes of the last encode / decode
    ldm_arena work;              // one block's recomputed internals and the running
                                 // gradients of a backward (scratch of a forward too)
} ldm_vae_trainer;

// Makes every weight of the loaded parts of `model` an owned, writable fp32
// tensor (a weight loaded as fp16/bf16 or as a view into a mapped file is
// copied and widened), allocates zeroed gradients of the same shapes and the
// arenas. The backend must be able to train (ldm_backend_can_train) and keep
// tensors in host memory. 0 / LDM_ERR (everything allocated here freed).
int ldm_vae_trainer_init(ldm_vae_trainer *tr, ldm_vae *model);
// Appends every parameter as prefix + its diffusers name, in the order of
// torch's AutoencoderKL.named_parameters() ("vae.encoder.conv_in.weight", ...,
// "vae.quant_conv.bias", "vae.post_quant_conv.bias"). 0 / LDM_ERR.
int ldm_vae_trainer_params(ldm_vae_trainer *tr, ldm_params *list, const char *prefix);
// Frees the gradients and the arenas (not the model).
void ldm_vae_trainer_free(ldm_vae_trainer *tr);

// Encoder + quant_conv with a tape: x [B,Cin,H,W] -> moments [B,2Z,H/f,W/f]
// (mean, logvar), a new tensor (ldm_tensor_free). Untiled. 0 / LDM_ERR.
int ldm_vae_train_encode(ldm_tensor *moments, ldm_vae_trainer *tr, const ldm_tensor *x);
// post_quant_conv + decoder with a tape: z [B,Z,h,w] (unscaled) ->
// image [B,Cout,f*h,f*w], a new tensor. Untiled. 0 / LDM_ERR.
int ldm_vae_train_decode(ldm_tensor *image, ldm_vae_trainer *tr, const ldm_tensor *z);
// Backward of the last decode: dimage [B,Cout,H,W] = dL/dimage. Accumulates
// dz [B,Z,h,w] += dL/dz (dz may be NULL) and the decoder's gradients
// (decoder.*, post_quant_conv). 0 / LDM_ERR.
int ldm_vae_train_backward_decode(ldm_tensor *dz, ldm_vae_trainer *tr, const ldm_tensor *dimage);
// Backward of the last encode: dmoments [B,2Z,h,w] = dL/dmoments. Accumulates
// the encoder's gradients (encoder.*, quant_conv); the image gets none. 0 / LDM_ERR.
int ldm_vae_train_backward_encode(ldm_vae_trainer *tr, const ldm_tensor *dmoments);

#endif
