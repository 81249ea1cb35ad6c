/*
 * ldm/io/weights.h -- loading a model component's weights by name.
 *
 * Model code (clip.c, unet.c, vae.c) asks for every weight by its diffusers
 * name (the module path of the diffusers/transformers model, e.g.
 * "down_blocks.0.resnets.0.norm1.weight") and the shape it expects. This file
 * is the one place that knows the other key layouts: for a CompVis single-file
 * checkpoint it maps the diffusers name to the original key
 * ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight").
 * A weight matrix (linear [N,K], conv [Cout,Cin,KH,KW]) stored as fp16 or
 * bf16 stays 16-bit when the backend can compute with it (ops->linear_half):
 * the backend widens it on use. Vectors (biases, norm gammas/betas) and
 * other dtypes are widened to fp32 at load. On a host-memory backend, a
 * tensor kept as stored points straight into the mmap'ed file (no copy).
 * A missing tensor or a wrong shape is an error that names the tensor, the
 * expected and the found shape (user input: never an assert).
 */
#ifndef LDM_WEIGHTS_H
#define LDM_WEIGHTS_H

#include <stdint.h>
#include "ldm/core/tensor.h"
#include "ldm/io/tensorfile.h"

typedef enum ldm_layout { LDM_LAYOUT_DIFFUSERS, LDM_LAYOUT_COMPVIS } ldm_layout;
typedef enum ldm_component {
    LDM_COMP_UNET, LDM_COMP_VAE, LDM_COMP_TEXT_SD1, LDM_COMP_TEXT_SD2
} ldm_component;

// What happens to the dtype of weight matrices at load (--weights).
typedef enum ldm_weights_dtype {
    LDM_WEIGHTS_AUTO,  // as stored: fp16/bf16 stay 16-bit, fp32 stays fp32 (default)
    LDM_WEIGHTS_F32,   // widen every weight to fp32 (exact; twice the memory of fp16)
    LDM_WEIGHTS_F16,   // also narrow fp32 matrices to fp16 (rounds: not bit-exact)
} ldm_weights_dtype;

typedef struct ldm_weights {
    const ldm_tensor_file *file;   // borrowed: the file holding the tensors
    ldm_component comp;
    ldm_layout layout;
    const char *prefix;            // prepended to diffusers names in a diffusers file ("" usually)
    const struct ldm_ops *ops;     // where tensors are uploaded
    int64_t n_params;              // sum of numel of every tensor loaded so far
    int64_t n_loaded;
    // CompVis layout only: the architecture numbers the key mapping depends on
    // (0 = the Stable Diffusion value): UNet layers_per_block (2), VAE levels (4).
    int layers_per_block;
    int n_levels;
    // Residency (ldm_model_open sets these from ldm_model_options; a zeroed
    // struct widens nothing that need not be, and copies every tensor):
    ldm_weights_dtype dtype;       // AUTO / F32 / F16 as above
    int map;                       // 1: a tensor kept as stored may point into file's
                                   //    mapping (needs ops->host_memory and the file to
                                   //    stay open while the tensor is used; read-only)
    int low_memory;                // 1: models drop the file's mapped pages after each
                                   //    block (ldm_tensor_file_release_all)
} ldm_weights;

// Load weight `name` (diffusers naming) expecting `shape`. out is a new tensor
// on w->ops. A [C,C,1,1] stored tensor is accepted for an expected [C,C] (VAE
// attention 1x1 convs). When the CompVis key holds several diffusers tensors
// stacked along dim 0 (open_clip's attn.in_proj_weight [3D,D] = q;k;v), the
// mapping names the rows and only those rows are converted. 0 / LDM_ERR.
int ldm_weights_load(ldm_tensor *out, ldm_weights *w, const char *name,
                     const int64_t *shape, int ndim);
// Same, always widened to fp32 (tensors used by ops other than linear/conv2d,
// e.g. embedding tables).
int ldm_weights_load_f32(ldm_tensor *out, ldm_weights *w, const char *name,
                         const int64_t *shape, int ndim);
// The key `name` maps to in w's file (for messages and `sd info`); buf returned.
const char *ldm_weights_key(char *buf, size_t n, const ldm_weights *w, const char *name);

#endif
