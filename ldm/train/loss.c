/*
 * ldm/train/loss.c -- the training objectives (equations in ldm/train/loss.h).
 * Sums in double: a loss is one number per step, and its gradient is exact
 * to one float rounding per element.
 */
#include <math.h>
#include "ldm/train/loss.h"

// ---- stage 2: the denoiser ---------------------------------------------------

void ldm_min_snr_weights(float *w, const float *abar, int T, double gamma) {
    for (int t = 0; t < T; t++) {
        // torch computes snr = abar / (1 - abar) and min(snr, gamma) / snr in float32
        float snr = abar[t] / (1.0f - abar[t]);
        w[t] = gamma > 0 ? fminf(snr, (float)gamma) / snr : 1.0f;
    }
}

double ldm_loss_eps(float *dpred, double *mse, const float *pred, const float *eps,
                    const float *wb, int64_t B, int64_t n) {
    double loss = 0, sq_all = 0;
    for (int64_t b = 0; b < B; b++) {
        const float *p = pred + b * n, *e = eps + b * n;
        double w = wb ? wb[b] : 1.0, sq = 0;
        for (int64_t i = 0; i < n; i++) sq += ((double)p[i] - e[i]) * ((double)p[i] - e[i]);
        sq_all += sq;
        loss += w * sq / (double)n;                       // w(t_b) * per-sample MSE
        if (dpred) {
            double g = 2.0 * w / ((double)B * (double)n);  // dL/dpred = 2 w (pred - eps) / (B n)
            for (int64_t i = 0; i < n; i++) dpred[b * n + i] += (float)(g * ((double)p[i] - e[i]));
        }
    }
    if (mse) *mse = sq_all / ((double)B * (double)n);
    return loss / (double)B;
}

// ---- stage 1: the autoencoder ------------------------------------------------

double ldm_loss_vae_rec(float *dy, double *l1, double *l2, const float *y, const float *x,
                        const float *w, int64_t B, int64_t C, int64_t S) {
    double wsum = 0, werr = 0, abs_all = 0, sq_all = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < S; p++) wsum += w ? w[b * S + p] : 1.0;
    const double norm = (double)C * wsum;                     // C sum w
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < S; p++) {
                const int64_t i = (b * C + c) * S + p;
                const double wp = w ? w[b * S + p] : 1.0;
                const double d = (double)y[i] - x[i];
                abs_all += fabs(d);
                sq_all += d * d;
                werr += wp * (fabs(d) + d * d);
                if (dy) {
                    const double sign = d > 0 ? 1.0 : d < 0 ? -1.0 : 0.0;
                    dy[i] += (float)(wp * (sign + 2.0 * d) / norm);   // w (sign(d) + 2d) / (C sum w)
                }
            }
    if (l1) *l1 = abs_all / ((double)B * C * S);
    if (l2) *l2 = sq_all / ((double)B * C * S);
    return werr / norm;
}

// the log-variance as DiagonalGaussianDistribution clamps it
static double clamp_logvar(double lv) { return fmin(fmax(lv, -30.0), 20.0); }
// d clamp / d lv: 1 inside [-30, 20] (bounds included, as torch.clamp), 0 outside
static double clamp_logvar_grad(double lv) { return lv >= -30.0 && lv <= 20.0 ? 1.0 : 0.0; }

double ldm_loss_vae_kl(float *dmoments, const float *moments, double kl_weight, int64_t B,
                       int64_t Z, int64_t S) {
    double kl = 0;
    for (int64_t b = 0; b < B; b++) {
        const float *mean = moments + b * 2 * Z * S, *lv = mean + Z * S;
        for (int64_t i = 0; i < Z * S; i++) {
            const double l = clamp_logvar(lv[i]), var = exp(l);
            kl += 0.5 * ((double)mean[i] * mean[i] + var - 1.0 - l);
            if (dmoments) {
                float *dmean = dmoments + b * 2 * Z * S, *dlv = dmean + Z * S;
                dmean[i] += (float)(kl_weight * mean[i] / (double)B);          // d/dmean: mean
                dlv[i] += (float)(kl_weight * 0.5 * (var - 1.0) / (double)B    // d/dl: (var - 1) / 2
                                  * clamp_logvar_grad(lv[i]));
            }
        }
    }
    return kl / (double)B;
}

void ldm_vae_posterior_backward(float *dmoments, const float *dz, const float *moments,
                                const float *noise, int64_t B, int64_t Z, int64_t S) {
    for (int64_t b = 0; b < B; b++) {
        const float *lv = moments + b * 2 * Z * S + Z * S;
        float *dmean = dmoments + b * 2 * Z * S, *dlv = dmean + Z * S;
        for (int64_t i = 0; i < Z * S; i++) {
            const double g = dz[b * Z * S + i];
            const double std = exp(0.5 * clamp_logvar(lv[i]));
            dmean[i] += (float)g;                                             // dz/dmean = 1
            dlv[i] += (float)(g * noise[b * Z * S + i] * 0.5 * std            // dz/dl = noise std / 2
                              * clamp_logvar_grad(lv[i]));
        }
    }
}
