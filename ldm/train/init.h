/*
 * ldm/train/init.h -- models from scratch: the initial weights PyTorch gives
 * a freshly constructed diffusers / transformers model, and the configs of
 * the tiny model that tools/train/train_tiny.py trains.
 *
 * Initial weights are produced as a STATE DICT: an in-memory tensor file
 * (ldm/io/tensorfile.h) of fp32 tensors named as the component's own
 * state-dict keys ("down_blocks.0.resnets.0.conv1.weight"), in the order of
 * torch's model.named_parameters(). The existing loaders (ldm_unet_load,
 * ldm_vae_load, ldm_clip_load) read it through an ldm_weights like any file,
 * so a model from scratch and a model from disk take the same path.
 *
 * The distributions are torch's (the values come from our own generator, so
 * they are not torch's numbers):
 *   UNet, VAE (diffusers: no init of its own; torch's module defaults)
 *     nn.Linear / nn.Conv2d weight  kaiming_uniform(a = sqrt(5)):
 *         bound = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)) = sqrt(1/3)
 *         -> U(-1/sqrt(fan_in), 1/sqrt(fan_in)),  fan_in = Cin * KH * KW
 *     their bias                    U(-1/sqrt(fan_in), 1/sqrt(fan_in))
 *     GroupNorm / LayerNorm         weight 1, bias 0
 *     nn.Embedding (class labels)   N(0, 1)
 *   CLIP text encoder (transformers CLIPPreTrainedModel._init_weights,
 *   factor = initializer_factor = 1, L layers, width D)
 *     token / position embedding    N(0, 0.02 factor)
 *     q, k, v projections           N(0, D^-1/2 (2L)^-1/2 factor)
 *     out projection                N(0, D^-1/2 factor)
 *     mlp.fc1                       N(0, (2D)^-1/2 factor)
 *     mlp.fc2                       N(0, D^-1/2 (2L)^-1/2 factor)
 *     every Linear bias 0; LayerNorm weight 1, bias 0
 * The generator is torch's CPU one (samplers/rng.h, mt19937): normals as
 * torch.randn, uniforms as torch's float uniform_ (24 random bits).
 */
#ifndef LDM_TRAIN_INIT_H
#define LDM_TRAIN_INIT_H

#include "ldm/model.h"
#include "ldm/clip.h"
#include "ldm/unet.h"
#include "ldm/vae.h"
#include "ldm/io/tensorfile.h"
#include "ldm/io/weights.h"
#include "samplers/rng.h"

// The configs of tools/train/train_tiny.py (VAE_CFG, UNET_CFG, TEXT_CFG) as
// ldm config structs, read from the same diffusers / transformers config.json
// fields by the model parsers. Any pointer may be NULL. 0 / LDM_ERR (never).
int ldm_train_tiny_configs(ldm_unet_config *unet, ldm_vae_config *vae, ldm_clip_config *clip);

// A fresh state dict (the tensors of a newly constructed model) into *sd:
// an in-memory tensor file the caller closes with ldm_tensor_file_close.
// Draws from g. 0 / LDM_ERR (out of memory, a config the model does not take).
int ldm_init_unet_state(ldm_tensor_file *sd, const ldm_unet_config *cfg, ldm_rng *g);
int ldm_init_vae_state(ldm_tensor_file *sd, const ldm_vae_config *cfg, ldm_rng *g);
int ldm_init_clip_state(ldm_tensor_file *sd, const ldm_clip_config *cfg, ldm_rng *g);

// A weights source over a state dict (diffusers names, widened to fp32 and
// copied: the model does not keep pointers into sd).
void ldm_state_weights(ldm_weights *w, const ldm_tensor_file *sd, ldm_component comp,
                       const struct ldm_ops *ops);

// Models from scratch on `ops`: the state dict above, loaded and released.
// The VAE gets both halves. 0 / LDM_ERR.
int ldm_unet_init_torch(ldm_unet *u, const ldm_unet_config *cfg, ldm_rng *g,
                        const struct ldm_ops *ops);
int ldm_vae_init_torch(ldm_vae *v, const ldm_vae_config *cfg, ldm_rng *g,
                       const struct ldm_ops *ops);
int ldm_clip_init_torch(ldm_clip *c, const ldm_clip_config *cfg, ldm_rng *g,
                        const struct ldm_ops *ops);

// torch's float uniform_(lo, hi) on the CPU generator: 24 random bits of one
// mt19937 draw, u = bits * 2^-24, lo + u * (hi - lo).
void ldm_init_uniform(ldm_rng *g, float *out, int64_t n, float lo, float hi);

#endif
