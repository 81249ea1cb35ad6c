/*
 * ldm/train/train.h -- the training loops of the two stages of latent
 * diffusion (Rombach et al. 2022), as tools/train/train_tiny.py runs them with
 * one worker, on the shapes dataset (ldm/train/shapes.h): `sd train`.
 *
 * Stage 1, the autoencoder (train_vae):
 *   per step, from one generator seeded seed*1000+100:
 *     idx  = randint(0, N, [b])                    images of the batch
 *     crops: oy, ox = randint(0, n, [b]) * 8       (crop < 64: on the latent's 8-pixel grid)
 *     noise = randn(mean.shape)                    z = mean + std * noise (reparameterised)
 *   y = D(z), L = sum m (|y-x| + (y-x)^2) / (3 sum m) + kl_weight KL(q(z|x) || N(0,I))
 *   (m = obj_weight on shape pixels, 1 on the background); the last
 *   vae_full_steps steps use whole 64x64 images, batch b/4.
 *   Adam (0.9, 0.99), lr warm-up 50 steps, gradient clipping at 1.0.
 *   After the last step: the posterior of every image, scale = 1/std(z)
 *   (LDM sec. 4.3.2), written as the VAE's scaling_factor (rounded to 5 decimals).
 * Stage 2, the denoiser and the text encoder (train_unet):
 *   latents: posterior mean and std of every image under the stage-1 VAE (fp32
 *   from its weights), scale = its config's scaling_factor.
 *   per step, from one generator seeded seed*1000+200:
 *     idx = randint(0, N, [b]);  z = (mean + std * randn) * scale
 *     ja = rand([b]) < 0.5 (caption language); drop = rand([b]) < cond_drop (empty caption)
 *     t = randint(0, 1000, [b]);  eps = randn(z.shape)
 *   z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps          (DDPM eq. 4)
 *   L = 1/b sum w(t) |eps - eps_theta(z_t, t, tau(y))|^2 / n   (LDM eq. 2, min-SNR w)
 *   AdamW (0.9, 0.99, weight decay 0), lr warm-up 200, clipping at 1.0,
 *   EMA 0.998 of the weights (exported).
 * Initial weights: the distributions of torch's constructors (ldm/train/init.h)
 * from generators seeded seed (VAE) and seed + 1 (UNet, text encoder), or
 * those of the --init folder.
 *
 * Every save_every steps (and at the end) the run is checkpointed to
 * OUT/train-state (ldm/train/checkpoint.h); resume continues it bit for bit.
 * At the end the model is exported to OUT (ldm/train/export.h) with
 * OUT/loss_curves.png and OUT/losses-<stage>.tsv.
 */
#ifndef LDM_TRAIN_TRAIN_H
#define LDM_TRAIN_TRAIN_H

#include <stdint.h>
#include <stdio.h>

struct ldm_ops;

typedef enum ldm_train_stage { LDM_TRAIN_VAE, LDM_TRAIN_UNET } ldm_train_stage;

typedef struct ldm_train_options {
    ldm_train_stage stage;
    const char *init;         // diffusers folder: stage unet: its vae/ (required), and its
                              // unet/ + text_encoder/ as starting weights when both are there;
                              // stage vae: starting VAE weights (NULL: from scratch)
    const char *out;          // output folder (model + train-state/)
    const char *log;          // losses as TSV, one line per step (NULL: none)
    int resume;               // continue OUT/train-state
    int64_t steps;            // optimizer steps of the whole run (resumed ones included)
    int64_t seed;
    int batch;                // images per step
    double lr;
    int64_t n_images;         // dataset size
    int64_t save_every;       // checkpoint every N steps (0: only at the end)
    int64_t stop_at;          // stop at this step with a checkpoint, no export (0: run to the end)
    // stage 1
    int vae_crop;             // crop side of the first steps (multiple of 8, <= 64)
    int64_t vae_full_steps;   // the last steps on whole images
    double kl_weight, obj_weight;
    // stage 2
    double min_snr;           // gamma of min-SNR (0: plain LDM loss)
    double cond_drop;         // fraction of empty captions
    double ema;               // EMA decay cap
    const char *vocab;        // CLIP BPE vocabulary (NULL: the default)
    const struct ldm_ops *ops;  // NULL: the default backend (must be able to train)
    FILE *progress;           // step, loss, s/step, ETA (NULL: none)
} ldm_train_options;

// The recipe of tools/train/train_tiny.py for `stage` (one worker; steps,
// batch, lr, crops, weights, EMA). Paths NULL.
void ldm_train_defaults(ldm_train_options *o, ldm_train_stage stage);
// "vae" / "unet" -> *stage. 0 / LDM_ERR.
int ldm_train_stage_parse(ldm_train_stage *stage, const char *name);
// Check the options (ranges, the --init folder) before anything runs.
// 0 / LDM_ERR naming the option.
int ldm_train_check(const ldm_train_options *o);
// Run (or resume) a stage and export it. 0 / LDM_ERR.
int ldm_train_run(const ldm_train_options *o);

#endif
