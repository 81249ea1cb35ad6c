/*
 * ldm/model.h -- open a Stable Diffusion model, whatever its layout, and
 * describe it: family (SD1/SD2), prediction type (eps/v), and one config
 * struct per component mirroring the diffusers config.json fields.
 *
 * Sources (detected by magic bytes / folder contents, never by extension):
 *   - a CompVis single file (.safetensors or torch .ckpt): one tensor file,
 *     keys "model.diffusion_model.*", "first_stage_model.*",
 *     "cond_stage_model.*"; configs are presets picked from tensor shapes.
 *   - a diffusers folder: unet/, vae/, text_encoder/, tokenizer/, each with
 *     config.json (parsed here) and diffusion_pytorch_model.safetensors |
 *     model.safetensors | *.bin.
 * Each component gets an `ldm_weights` (ldm/io/weights.h): model code asks it for
 * tensors by diffusers name, whatever the layout.
 *
 * Left out: SDXL (two text encoders, add_embedding), SD3/Flux (MMDiT),
 * depth UNets (in_channels 5). Each is named in the error. Inpainting UNets
 * (in_channels 9, from conv_in's shape in a single file) load as any other;
 * the x4 upscaler's 7 channels are run by ldm/upscale.h. LoRA
 * files are merged into the loaded weights by ldm/lora.h.
 */
#ifndef LDM_MODEL_H
#define LDM_MODEL_H

#include <stdint.h>
#include "ldm/io/tensorfile.h"
#include "ldm/io/weights.h"

#define LDM_MAX_LEVELS 8   // resolution levels of a UNet / VAE

// ---- UNet: diffusers UNet2DConditionModel config.json ---------------------
typedef struct ldm_unet_config {
    int in_channels;                          // 4
    int out_channels;                         // 4
    int sample_size;                          // latent side: 64 (SD1, SD2-base), 96 (SD2 768-v)
    int n_levels;                             // len(block_out_channels): 4
    int block_out_channels[LDM_MAX_LEVELS];   // [320,640,1280,1280]
    int layers_per_block;                     // 2 (down); up blocks have layers_per_block+1
    // down_block_types[i] == "CrossAttnDownBlock2D" -> 1, "DownBlock2D" -> 0
    int down_attn[LDM_MAX_LEVELS];            // SD: [1,1,1,0]
    // up_block_types[i] == "CrossAttnUpBlock2D" -> 1, "UpBlock2D" -> 0 (up order)
    int up_attn[LDM_MAX_LEVELS];              // SD: [0,1,1,1]
    int mid_attn;                             // mid_block_type UNetMidBlock2DCrossAttn -> 1
    // config "attention_head_dim" (int or list). NB diffusers reads it as the
    // NUMBER OF HEADS per level when num_attention_heads is absent (SD1: 8;
    // SD2: [5,10,20,20] -> head size 64). Resolved per down level here:
    int attention_head_dim[LDM_MAX_LEVELS];   // raw value, expanded to every level
    int num_heads[LDM_MAX_LEVELS];            // heads used by level i (down order)
    int transformer_layers_per_block;         // 1 (only 1 supported)
    int cross_attention_dim;                  // 768 (SD1), 1024 (SD2)
    int use_linear_projection;                // 0: 1x1 conv proj_in/out (SD1); 1: Linear (SD2)
    int upcast_attention;                     // SD2.1: 1 (no effect in fp32)
    int norm_num_groups;                      // 32
    float norm_eps;                           // 1e-5 (resnets; transformers' GN uses 1e-6)
    int flip_sin_to_cos;                      // 1: timestep embedding is [cos, sin]
    int freq_shift;                           // 0
    int time_embed_dim;                       // 4*block_out_channels[0] = 1280
    // x4 upscaler (stabilityai/stable-diffusion-x4-upscaler) extras; 0 in SD1/SD2:
    int num_class_embeds;                     // class_embedding table rows (upscaler: 1000 noise
                                              // levels); 0: no class embedding
    // only_cross_attention[i]: the transformers of level i (down order) attend
    // to the context in attn1 too, no self-attention (upscaler: [1,1,1,0])
    int only_cross_attention[LDM_MAX_LEVELS];
    int mid_only_cross_attention;             // the same for the mid block (upscaler: 0)
} ldm_unet_config;

// ---- VAE: diffusers AutoencoderKL config.json --------------------------------
typedef struct ldm_vae_config {
    int in_channels;                          // 3
    int out_channels;                         // 3
    int n_levels;                             // 4
    int block_out_channels[LDM_MAX_LEVELS];   // [128,256,512,512]
    int layers_per_block;                     // 2 (encoder); decoder uses +1
    int latent_channels;                      // 4
    int norm_num_groups;                      // 32
    float norm_eps;                           // 1e-6 (fixed in diffusers' VAE)
    int sample_size;                          // 512 / 768 (informational)
    float scaling_factor;                     // 0.18215
    int use_quant_conv, use_post_quant_conv;  // 1, 1
    int mid_block_add_attention;              // 1
} ldm_vae_config;

// ---- CLIP text encoder: transformers CLIPTextConfig config.json -------------
typedef enum ldm_clip_act { LDM_ACT_QUICK_GELU, LDM_ACT_GELU } ldm_clip_act;
typedef struct ldm_clip_config {
    int vocab_size;                           // 49408
    int hidden_size;                          // D: 768 (SD1), 1024 (SD2)
    int intermediate_size;                    // F: 3072 / 4096
    int num_hidden_layers;                    // layers present in the weights: 12 / 24 (CompVis) / 23 (diffusers SD2)
    int num_attention_heads;                  // NH: 12 / 16
    int max_position_embeddings;              // T: 77
    ldm_clip_act hidden_act;                  // quick_gelu (SD1) / gelu (SD2)
    float layer_norm_eps;                     // 1e-5
    // How many final layers to skip before the final LN (SD2 CompVis: 1,
    // "penultimate"; a diffusers SD2 folder already stores only 23 layers: 0).
    int skip_last_layers;
    int pad_token_id;                         // prompt padding: 49407 (SD1) / 0 (SD2, open_clip)
} ldm_clip_config;

typedef enum ldm_family { LDM_FAMILY_SD1, LDM_FAMILY_SD2 } ldm_family;
#include "ldm/core/prediction.h"   // ldm_prediction: LDM_PRED_AUTO | LDM_PRED_EPS | LDM_PRED_V

typedef struct ldm_model_options {
    const struct ldm_ops *ops;      // backend the weights are uploaded to (NULL: default)
    ldm_prediction prediction;      // LDM_PRED_AUTO: heuristic; else forced (--prediction)
    // Single files only: a diffusers-style folder whose unet/, vae/,
    // text_encoder/ config.json replace the SD presets (non-standard sizes,
    // e.g. the tiny test models). NULL: presets.
    const char *config_dir;
} ldm_model_options;

typedef struct ldm_model {
    char *path;                     // file or folder given by the user
    ldm_layout layout;              // COMPVIS (single file) or DIFFUSERS (folder)
    ldm_family family;
    ldm_prediction prediction;      // resolved: EPS or V
    char prediction_why[160];       // how it was decided (for `sd info`)
    ldm_unet_config unet;
    ldm_vae_config vae;
    ldm_clip_config clip;
    // Tensor files: a single file uses files[0] for everything; diffusers one each.
    ldm_tensor_file files[3];       // [unet, vae, text_encoder]
    int n_files;
    int has_unet, has_vae, has_text;    // components present (a folder may hold only some)
    ldm_weights unet_w, vae_w, clip_w;  // borrow files[]
    int64_t global_step;            // from a training checkpoint's top level, else -1
    char *tokenizer_dir;            // diffusers "tokenizer/" with vocab.json+merges.txt, or NULL
} ldm_model;

// Open a single-file checkpoint or a diffusers folder. 0 / LDM_ERR (message
// names the file, what was expected and what was found; unsupported
// architectures are named).
int ldm_model_open(ldm_model *m, const char *path, const ldm_model_options *opt);
void ldm_model_close(ldm_model *m);
// Weight residency for every component, set after ldm_model_open and before
// the *_load calls (ldm/io/weights.h). The default after open: weights AUTO
// (as stored: fp16/bf16 matrices stay 16-bit, pointing into the mapped file
// on host backends; fp32 stays fp32), low_memory 0.
//   weights     LDM_WEIGHTS_AUTO / LDM_WEIGHTS_F32 / LDM_WEIGHTS_F16  (--weights)
//   low_memory  1: the UNet drops the file's mapped pages after each block,
//               so about one block's weights are resident (--low-memory)
void ldm_model_set_residency(ldm_model *m, ldm_weights_dtype weights, int low_memory);
// Drop every mapped page of the model's files from this process's memory
// (ldm_tensor_file_release_all): the pipeline calls it when a stage is over
// (text encoder done; UNet done, before the VAE's activation peak). Weights
// that point into the files are read again when next used (same values);
// copied weights are not affected.
void ldm_model_release_pages(const ldm_model *m);

// Presets used for CompVis single files (configs cannot be read from them):
// the diffusers config.json texts of SD1.5 / SD2.1, kept once in ldm/model.c
// and read by the parsers below. 0 / LDM_ERR (never, for these texts: tested).
int ldm_unet_config_sd(ldm_unet_config *c, ldm_family fam);
int ldm_vae_config_sd(ldm_vae_config *c);
int ldm_clip_config_sd(ldm_clip_config *c, ldm_family fam);

// Parse one diffusers config.json (text in memory; `path` for messages).
// Strict (ldm/io/json.h): a field of the wrong type is an error naming the
// file and the key; absent or null fields take the diffusers defaults;
// unknown keys are ignored.
int ldm_unet_config_parse(ldm_unet_config *c, const char *json, const char *path);
int ldm_vae_config_parse(ldm_vae_config *c, const char *json, const char *path);
int ldm_clip_config_parse(ldm_clip_config *c, const char *json, const char *path);

// ---- a VAE on its own (sd --vae FILE) ---------------------------------------
// A VAE source whatever its form: a CompVis checkpoint (first_stage_model.*),
// a standalone CompVis VAE (encoder.down.0.block.0..., e.g. vae-ft-mse-840000),
// a diffusers VAE state dict (encoder.down_blocks.0...), a diffusers vae folder
// (config.json + diffusion_pytorch_model[.fp16].safetensors|.bin) or a diffusers
// model folder (its vae/). Single files get the SD1/SD2 config. Found and
// opened here, next to the model discovery, with the same file rules.
typedef struct ldm_vae_file {
    ldm_tensor_file file;
    ldm_weights w;             // borrows file; pass to ldm_vae_load (ldm/vae.h)
    ldm_vae_config cfg;
} ldm_vae_file;
int ldm_vae_file_open(ldm_vae_file *vf, const char *path, const struct ldm_ops *ops);
void ldm_vae_file_close(ldm_vae_file *vf);   // after ldm_vae_load (weights are copied)

const char *ldm_family_name(ldm_family f);          // "SD1", "SD2"
const char *ldm_prediction_name(ldm_prediction p);  // "epsilon", "v_prediction"

// Print the model summary (`sd info`): family, prediction, layout, per
// component parameter count and dtypes. 0 / LDM_ERR.
int ldm_model_print_summary(const ldm_model *m, void *file /* FILE* */);

#endif
