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

#endif
