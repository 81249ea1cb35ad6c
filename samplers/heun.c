/*
 * samplers/heun.c -- Heun's second-order method on the probability-flow ODE
 * (Karras et al. 2022, Algorithm 2): an Euler step to sigma_next, a second
 * slope there, then the step with the average slope; the last step (to
 * sigma = 0) is plain Euler. Two model evaluations per step except the last.
 *
 * Mirrors k-diffusion sample_heun, including one randn_like(x) draw every
 * step for the (usually disabled) churn.
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_heun(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 5);
    if (!buf) return LDM_ERR;
    float *denoised = buf, *eps = buf + n, *d = buf + 2 * n, *x2 = buf + 3 * n,
          *denoised2 = buf + 4 * n;
    const float *sig = c->sigmas;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        float sigma_hat = ldm_sampler_churn(c, i, x, eps);   // Karras churn (Algorithm 2)
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sigma_hat)) != LDM_OK) break;
        for (int64_t k = 0; k < n; k++) d[k] = (x[k] - denoised[k]) / sigma_hat;
        float dt = sig[i + 1] - sigma_hat;
        if (sig[i + 1] == 0) {  // Euler method
            for (int64_t k = 0; k < n; k++) x[k] = x[k] + d[k] * dt;
        } else {                // Heun's method
            for (int64_t k = 0; k < n; k++) x2[k] = x[k] + d[k] * dt;
            if ((rc = ldm_denoiser_denoised(c->dn, denoised2, x2, sig[i + 1])) != LDM_OK) break;
            for (int64_t k = 0; k < n; k++) {
                float d2 = (x2[k] - denoised2[k]) / sig[i + 1];
                float d_prime = (d[k] + d2) / 2;
                x[k] = x[k] + d_prime * dt;
            }
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
