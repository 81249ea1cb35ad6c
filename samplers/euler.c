/*
 * samplers/euler.c -- Euler steps on the probability-flow ODE
 * dx/dsigma = (x - D(x; sigma)) / sigma  (Karras et al. 2022, Algorithm 2,
 * with the optional "churn" that adds noise to raise sigma to sigma_hat).
 *
 * Mirrors k-diffusion sample_euler, including its RNG use: one randn_like(x)
 * is drawn every step even when churn is off (s_churn = 0), so the generator
 * advances exactly as in k-diffusion.
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_euler(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 2);
    if (!buf) return LDM_ERR;
    float *denoised = buf, *eps = buf + n;  // [B,per] each
    const float *sig = c->sigmas;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        float sigma_hat = ldm_sampler_churn(c, i, x, eps);   // Karras churn (Algorithm 2)
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sigma_hat)) != LDM_OK) break;
        float dt = sig[i + 1] - sigma_hat;
        for (int64_t k = 0; k < n; k++) {
            float d = (x[k] - denoised[k]) / sigma_hat;  // to_d: the ODE's slope
            x[k] = x[k] + d * dt;                        // Euler step
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
