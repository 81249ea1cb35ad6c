/*
 * ldm/upscale.h -- the Stable Diffusion x4 upscaler (stabilityai/
 * stable-diffusion-x4-upscaler): a low-resolution image and a prompt -> an
 * image 4 times larger, by latent diffusion conditioned on the image.
 *
 * What differs from text-to-image (ldm/pipeline.h), as diffusers'
 * StableDiffusionUpscalePipeline runs it:
 *   - the latent has the size of the LOW-RES image: its VAE has 3 levels, so
 *     one latent pixel decodes to 4x4 pixels, and scaling_factor is 0.08333;
 *   - the low-res image x in [-1,1] is noised to `noise_level` by its own
 *     schedule (low_res_scheduler): x_n = sqrt(abar_n) x + sqrt(1 - abar_n) e
 *     (DDPM eq. 4: the "noise conditioning augmentation" of Ho et al. 2021,
 *     Cascaded Diffusion Models), and concatenated to the latent
 *     on the channel axis: the UNet takes 4 + 3 = 7 channels;
 *   - the UNet is told n by a class embedding: row n of a [1000,Temb] table is
 *     added to its time embedding (ldm_unet_forward_class);
 *   - its transformers in the upper levels cross-attend twice
 *     (only_cross_attention), and it predicts v (Salimans & Ho 2022).
 * Sampling, guidance (s > 1: rows [u x B, c x B]) and decoding are those of
 * the text-to-image pipeline.
 *
 * Mirrors diffusers StableDiffusionUpscalePipeline (noise draws: the low-res
 * image's [1,3,h,w] first, shared by the B images, then the latent's
 * [B,4,h,w]; the prompt truncated to 77 tokens). Only diffusers folders: the
 * CompVis single file (x4-upscaler-ema) is refused by name in ldm/model.c.
 * Leaves out: the image resizing of diffusers' preprocessing (sides must be
 * multiples of 8), prompts longer than one 75-token chunk (only the first
 * chunk is used, as diffusers' truncation does), LoRA and embeddings.
 */
#ifndef LDM_UPSCALE_H
#define LDM_UPSCALE_H

#include <stdint.h>
#include "ldm/pipeline.h"

typedef struct ldm_upscaler {
    ldm_pipeline p;               // text encoder, UNet (7 channels in), VAE, p.sched (scheduler/)
    ldm_schedule low_res_sched;   // the low-res image's noise schedule (low_res_scheduler/)
    int max_noise_level;          // model_index.json max_noise_level (350)
    int image_channels;           // UNet in_channels - latent channels (3)
} ldm_upscaler;

// Open a diffusers StableDiffusionUpscalePipeline folder. A model without a
// class embedding or whose UNet does not take latent + 3 channels is refused
// (naming what it is). Options as ldm_pipeline_open (need_encoder ignored).
// 0 / LDM_ERR.
int ldm_upscaler_open(ldm_upscaler *u, const char *dir, const ldm_pipeline_options *o);
void ldm_upscaler_close(ldm_upscaler *u);

typedef struct ldm_upscale_params {
    const char *prompt;             // one 75-token chunk (longer: truncated)
    const char *negative;           // "" or NULL: the empty prompt
    const uint8_t *low_rgb;         // the low-res image [height][width][3]
    int width, height;              // its size: multiples of 8 (the UNet's downsampling)
    int batch;                      // B images of the same input (num_images_per_prompt)
    int noise_level;                // 0..max_noise_level (diffusers default 20)
    ldm_sampler_settings sampling;  // sampler, steps (diffusers default: DDIM, 75)
    float cfg_scale;                // s (diffusers default 9); guidance only when s > 1
    ldm_rng *rng;                   // the run's generator
    ldm_vae_options vae_opt;        // tiling of the decode (the output is 4x larger)
    ldm_progress_fn progress;
    void *progress_ctx;
} ldm_upscale_params;

// Checks params before anything runs (sizes, noise level, steps, ...).
// 0 / LDM_ERR naming the parameter.
int ldm_upscale_check(const ldm_upscaler *u, const ldm_upscale_params *g);

// latent_out [B,4,h,w] (may be NULL), rgb_out [B][4h][4w][3] (may be NULL).
// Dumps: "context", "uncond_context", "low_res_noisy", "noise",
// "stepNNN/unet_in" (the 7-channel input), "stepNNN/unet_out", "latent",
// "imageK/image". 0 / LDM_ERR.
int ldm_upscale(ldm_upscaler *u, const ldm_upscale_params *g, float *latent_out,
                uint8_t *rgb_out);

#endif
