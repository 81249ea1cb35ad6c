/*
 * ldm/train/loss.h -- the training objectives of the two stages of latent
 * diffusion, each returning the loss and ACCUMULATING its gradient with
 * respect to the network's output (the start of the backward pass).
 *
 * Stage 2, the denoiser (LDM paper eq. 2, with the min-SNR weighting of
 * Hang et al., "Efficient Diffusion Training via Min-SNR Weighting
 * Strategy", ICCV 2023):
 *     L = 1/B sum_b w(t_b) * 1/n sum_i (pred_bi - eps_bi)^2
 *     w(t) = min(SNR(t), gamma) / SNR(t),   SNR(t) = abar_t / (1 - abar_t)
 * (eps-prediction; w = 1, gamma <= 0, gives the plain LDM objective)
 *     dL/dpred_bi = 2 w(t_b) (pred_bi - eps_bi) / (B n)
 *
 * Stage 1, the autoencoder (LDM sec. 3.1 with the "KL-reg" of appendix G, as
 * tools/train/train_tiny.py train_vae: a per-pixel weighted L1 + L2
 * reconstruction term, no perceptual or adversarial term):
 *     moments = (mean, lv) [B,2Z,S],  l = clamp(lv, -30, 20),  std = e^(l/2)
 *     z   = mean + std * noise                        (reparameterisation)
 *     err = sum_{b,c,p} w_bp (|y - x| + (y - x)^2) / (C sum_{b,p} w_bp)
 *     KL  = 1/B sum_b 0.5 sum_{j,s} (mean^2 + e^l - 1 - l)
 *     L   = err + kl_weight * KL
 * with the gradients (d = y - x; sign(0) = 0 as torch's abs)
 *     dL/dy      = w (sign(d) + 2 d) / (C sum w)
 *     dL/dmean   = dL/dz + kl_weight * mean / B
 *     dL/dlv     = [-30 <= lv <= 20] * (dL/dz * noise * std / 2 + kl_weight * (e^l - 1) / (2B))
 * (the clamp passes no gradient outside its range: a log-variance held at a
 * bound no longer moves z or the KL).
 */
#ifndef LDM_TRAIN_LOSS_H
#define LDM_TRAIN_LOSS_H

#include <stdint.h>

// w[t] = min(SNR(t), gamma) / SNR(t) for t < T from abar[T] (gamma <= 0: all 1).
void ldm_min_snr_weights(float *w, const float *abar, int T, double gamma);

// Stage-2 loss of pred, eps [B, n] with per-sample weights wb[B] (NULL: 1).
// Returns L; *mse (may be NULL) gets the unweighted mean squared error over
// everything; dpred [B, n] (may be NULL) += dL/dpred.
double ldm_loss_eps(float *dpred, double *mse, const float *pred, const float *eps,
                    const float *wb, int64_t B, int64_t n);

// ---- stage 1: the autoencoder ----------------------------------------------

// Reconstruction term of y, x [B, C, S] with per-pixel weights w [B, S]
// (broadcast over the C channels; NULL: 1). Returns err; *l1 and *l2 (may be
// NULL) get the unweighted mean |y - x| and mean (y - x)^2 that train_tiny.py
// logs; dy [B, C, S] (may be NULL) += d err / dy.
double ldm_loss_vae_rec(float *dy, double *l1, double *l2, const float *y, const float *x,
                        const float *w, int64_t B, int64_t C, int64_t S);

// KL term of moments [B, 2Z, S] (the value of ldm_vae_kl, averaged over the
// batch). Returns KL (unweighted); dmoments [B, 2Z, S] (may be NULL) +=
// kl_weight * dKL / dmoments.
double ldm_loss_vae_kl(float *dmoments, const float *moments, double kl_weight, int64_t B,
                       int64_t Z, int64_t S);

// Backward of ldm_vae_posterior (ldm/vae.h) with noise [B, Z, S]:
// dmoments [B, 2Z, S] += the gradient that dz [B, Z, S] = dL/dz sends to
// mean and log-variance through z = mean + exp(clamp(lv)/2) * noise.
void ldm_vae_posterior_backward(float *dmoments, const float *dz, const float *moments,
                                const float *noise, int64_t B, int64_t Z, int64_t S);

#endif
