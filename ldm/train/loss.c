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
