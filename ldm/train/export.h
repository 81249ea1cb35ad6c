/*
 * ldm/train/export.h -- a trained model written as a diffusers folder, the
 * layout `sd txt2img --ckpt DIR` (and diffusers' StableDiffusionPipeline)
 * loads, as tools/train/train_tiny.py's export() writes it:
 *
 *   DIR/model_index.json                         StableDiffusionPipeline, its parts
 *   DIR/scheduler/scheduler_config.json          PNDM, SD's scaled-linear betas
 *   DIR/unet/config.json + diffusion_pytorch_model.safetensors
 *   DIR/vae/config.json + diffusion_pytorch_model.safetensors
 *   DIR/text_encoder/config.json + model.safetensors   (transformers 5 names,
 *                                                       no "text_model." prefix)
 *
 * Weights are fp16 (what train_tiny.py ships: half the bytes; the loaders
 * widen them), taken from a parameter list (ldm/train/params.h) by prefix:
 * "unet.conv_in.weight" is stored as "conv_in.weight" in unet/. The values
 * can be the weights themselves or a parallel array (the EMA of stage 2).
 * Every file is written to a temporary name and renamed.
 */
#ifndef LDM_TRAIN_EXPORT_H
#define LDM_TRAIN_EXPORT_H

#include "ldm/model.h"
#include "ldm/core/tensor.h"
#include "ldm/train/params.h"

// The diffusers release whose file format these folders follow ("_diffusers_version").
#define LDM_EXPORT_DIFFUSERS_VERSION "0.42.1"

// Every parameter of p whose name starts with `prefix`, stored without the
// prefix, as `dtype` (F32 / F16 / BF16), in p's order. values: NULL = the
// weights; else p->numel floats, parameter i at the sum of the sizes before
// it (the layout of ldm/train/checkpoint.h's flat arrays). 0 / LDM_ERR
// (also when no parameter has the prefix).
int ldm_export_weights(const char *path, const ldm_params *p, const char *prefix,
                       const float *values, ldm_dtype dtype);

// config.json texts of the three components (malloc'ed; free()), with the
// fields diffusers / transformers and ldm/model.c read.
char *ldm_export_unet_config(const ldm_unet_config *c);
char *ldm_export_vae_config(const ldm_vae_config *c);
char *ldm_export_clip_config(const ldm_clip_config *c);

// What to write. A component with a config is written from the parameters
// named "<component>." (unet., vae., text_encoder.); vae_from (a diffusers
// folder, or NULL) is copied as it is instead (stage 2 reuses stage 1's VAE).
typedef struct ldm_export_spec {
    const ldm_params *params;
    const float *values;             // NULL: the weights; else the EMA (layout above)
    const ldm_unet_config *unet;     // NULL: no unet/
    const ldm_clip_config *clip;     // NULL: no text_encoder/
    const ldm_vae_config *vae;       // NULL: no vae/ from params
    const char *vae_from;            // folder whose vae/ is copied, or NULL
} ldm_export_spec;

// Write the folder (created if absent; files replaced). model_index.json and
// scheduler/ are written when there is a UNet. 0 / LDM_ERR.
int ldm_export_model(const char *dir, const ldm_export_spec *s);

// Write text to path through path.tmp + rename. 0 / LDM_ERR.
int ldm_write_text_atomic(const char *path, const char *text);

#endif
