/*
 * ldm/pipeline.h -- text-to-image and image-to-image: the whole latent
 * diffusion loop (LDM paper section 3.3, Fig. 3) over the modules of ldm.c.
 *
 * Four stages, named after the paper's figure (ldm/pipeline.c, one function each):
 *   1. condition       tau_theta(y): prompt, negative --prompt weighting (ldm/prompt.h)-->
 *                      ids in 77-token chunks --CLIP--> context c [1,77k,D], u [1,77k,D]
 *                      (u padded to c's length or back)
 *   2. initial latent  seed --rng--> noise z_T [B,4,h,w]; img2img: z_0 = E(x) (the VAE
 *                      encoder), noised to the start level, q(z_t | z_0); inpainting
 *                      also: mask M -> m [1,1,h,w], E(x * (1 - M)) [B,4,h,w]
 *   3. sample          the reverse process: D(x; t) from one UNet batch
 *                      [u_0..u_B-1, c_0..c_B-1] [2B,4,h,w], guided eps = u + s (c - u);
 *                      inpainting UNet input [z, m, E(x * (1 - M))] [2B,9,h,w]; an
 *                      ordinary UNet gets z back outside the mask after each step
 *   4. decode          D(z_0): latent [B,4,h,w] --VAE decoder--> image [B,3,H,W] in
 *                      [-1,1] --> uint8 RGB
 *
 * Mirrors: CompVis scripts/txt2img.py and scripts/img2img.py (loop, strength,
 * guidance order), diffusers StableDiffusionPipeline / StableDiffusion
 * Img2ImgPipeline / StableDiffusionInpaintPipeline (the test references),
 * AUTOMATIC1111's prompt attention
 * syntax and 75-token chunking (prompt_parser.parse_prompt_attention,
 * sd_hijack_clip), with "pad prompt/negative prompt to the same length".
 * LoRA files (ldm/lora.h) and textual-inversion embeddings (ldm/embeddings.h)
 * come in through the prompt, as in A1111. Leaves out: prompt
 * editing `[from:to:when]` and alternation `[a|b]` (A1111 scheduling syntax),
 * inpainting's mask blur, "only masked" crop and pixel-space overlay,
 * hires fix, the CompVis watermark and safety checker.
 */
#ifndef LDM_PIPELINE_H
#define LDM_PIPELINE_H

#include <stdint.h>
#include "ldm/clip.h"
#include "ldm/lora.h"
#include "ldm/model.h"
#include "ldm/prompt.h"
#include "ldm/core/tensor.h"
#include "ldm/unet.h"
#include "ldm/vae.h"
#include "samplers/rng.h"
#include "samplers/sampler.h"
#include "samplers/schedule.h"

// The tiny text-to-image model the project trained and ships (tools/train/,
// docs/10-tiny-model.md), relative to the repository root like the vocabulary's
// default; `sd txt2img` uses it without --ckpt, $LDM_TINY_MODEL overrides it.
#define LDM_TINY_MODEL_DEFAULT "tools/tiny-model"

struct ldm_tokenizer;

// ---------------------------------------------------------------------------
// The loaded model (weights loaded once, used for every image)

typedef struct ldm_pipeline_options {
    const struct ldm_ops *ops;      // backend (NULL: ldm_backend_default())
    const char *config_dir;         // configs for a single file of non-standard size (or NULL)
    const char *vae_path;           // replace the model's VAE (--vae FILE), or NULL
    const char *vocab;              // BPE vocabulary (--vocab); NULL: the model's tokenizer/,
                                    // else vocab_default
    const char *vocab_default;      // NULL: LDM_VOCAB_DEFAULT (the CLI passes $LDM_VOCAB)
    ldm_prediction prediction;      // LDM_PRED_AUTO or forced (--prediction)
    int need_encoder;               // 1: load the VAE encoder too (img2img)
    const char *embedding_dir;      // textual-inversion embeddings used by name (ldm/embeddings.h), or NULL
    int verbose;                    // stage messages on stderr
    ldm_weights_dtype weights;      // weight residency: AUTO (as stored) / F32 / F16 (--weights)
    int low_memory;                 // 1: weights stay in the mmap, dropped after each block
} ldm_pipeline_options;

typedef struct ldm_pipeline {
    ldm_model model;                // files, configs, family, prediction
    const struct ldm_ops *ops;
    struct ldm_tokenizer *tok;
    ldm_clip clip;
    ldm_embeddings emb;             // textual-inversion words (their vectors are rows of clip.tok_emb)
    ldm_unet unet;
    ldm_vae vae;
    ldm_schedule sched;             // SD schedule (scaled linear, CompVis precision)
    int factor;                     // VAE pixels per latent pixel: 2^(levels-1) (8 for SD)
    int latent_channels;            // 4
    int inpaint_unet;               // 1: the UNet takes [z, mask, E(masked image)], 2C+1 = 9 channels
    int verbose;
    double load_seconds;
} ldm_pipeline;

int ldm_pipeline_open(ldm_pipeline *p, const char *ckpt, const ldm_pipeline_options *o);
void ldm_pipeline_close(ldm_pipeline *p);

// prompt -> context [1, 77*n_chunks, D] on p->ops (allocated here), weighted
// as A1111's "Original" emphasis: per chunk z = clip(ids) [1,77,D];
// m = mean(z); z *= mult (per token); z *= m / mean(z). clip_skip >= 1
// (1 = the model's own output; 2 = one more layer skipped, then final LN).
int ldm_pipeline_encode_prompt(ldm_tensor *ctx, ldm_pipeline *p, const char *prompt, int clip_skip);

// ---------------------------------------------------------------------------
// One generation call: B images (txt2img or img2img)

// Progress: called at each stage start (step -1) and after each sampler step.
typedef void (*ldm_progress_fn)(void *ctx, const char *stage, int step, int n_steps,
                                double seconds_per_step);

typedef struct ldm_generate_params {
    const char *prompt;             // A1111 syntax (weights, BREAK, long prompts: ldm/prompt.h)
    const char *negative;           // "" or NULL: the empty prompt
    int width, height;              // pixels, multiples of 8 (and of the VAE factor)
    int batch;                      // B images per call (--n_samples)
    ldm_sampler_settings sampling;  // sampler, steps, eta, sigmas, conventions (samplers/sampler.h)
    float cfg_scale;                // s (7.5); exactly 1: no unconditional pass (CompVis)
    int clip_skip;                  // >= 1
    ldm_rng *rng;                   // the run's generator (continues across calls)
    // img2img (init_rgb != NULL): init image [init_h][init_w][3] uint8 of the same
    // size as width x height; strength in [0,1]: int(strength*steps) steps run.
    const uint8_t *init_rgb;
    double strength;                // double: int(strength * steps) as Python computes it
    // inpainting (with init_rgb): mask [height][width][3] uint8, white = repaint (its
    // gray binarised at 0.5); strength 1 starts from pure noise (diffusers)
    const uint8_t *mask_rgb;
    ldm_vae_options vae_opt;        // tiling
    // LoRA (ldm/lora.h): <lora:NAME:SCALE> tags in the prompt or the negative prompt
    // (global: they change the whole model) load DIR/NAME.safetensors; loras[n_loras]
    // are merged too. Merged for this call only, then restored.
    const char *lora_dir;
    const ldm_lora_spec *loras;
    int n_loras;
    ldm_progress_fn progress;
    void *progress_ctx;
    const char *const *prompts;     // [batch] one prompt per image (CompVis --from-file
                                    // batches); NULL: `prompt` for every image
    int64_t *nfe;                   // optional out: the model evaluations (UNet calls with
                                    // guidance folded in: ldm_denoiser.nfe) so far, set before
                                    // each progress call and at the end; NULL: not reported
    // DeepCache (ldm/unet.h ldm_unet_deepcache; an approximation, off by default):
    // N >= 2: of each image batch's model calls, call i runs the UNet in full when
    // i % N == 0 and reuses its deep feature otherwise; 0 or 1: every call exact.
    int deepcache;
    int deepcache_branch;           // skip branch of the cached steps (0: conv_in's, the shallowest)
} ldm_generate_params;

// Checks params without running anything (sizes, steps, strength, sampler).
// 0 / LDM_ERR naming the parameter.
int ldm_generate_check(const ldm_pipeline *p, const ldm_generate_params *g);

// Run the four stages of the LDM paper's Fig. 3: condition (tau_theta: prompt
// -> context), initial latent (noise; img2img: q(z_t | z_0 = E(x))), sample
// (the reverse process) and decode (D(z)).
// latent_out [B,C,h,w] (may be NULL), rgb_out [B][H][W][3] (may be NULL).
// The generator is used in this order: (img2img) the VAE posterior noise
// [B,C,h,w], the initial noise [B,C,h,w], then the sampler's own draws.
// Inpainting, as diffusers: (strength < 1 or a 4-channel UNet) the image's
// posterior noise [1,C,h,w], the initial noise [B,C,h,w], the masked image's
// posterior noise [1,C,h,w], then the sampler's.
// Dumps (ldm_dump_set_dir): "prompt/text_model.*", "negative/text_model.*",
// "context", "uncond_context", "init_latent", "noise", "mask", "masked_latent", "stepNNN/unet_in",
// "stepNNN/unet.*" (block dumps of the UNet), "stepNNN/unet_out",
// "stepNNN/latent", "stepNNN/denoised", "latent", "imageK/vae.*", "imageK/image".
int ldm_generate(ldm_pipeline *p, const ldm_generate_params *g, float *latent_out,
                 uint8_t *rgb_out);

// Peak resident set size of this process in bytes (getrusage ru_maxrss).
int64_t ldm_peak_rss_bytes(void);

#endif
