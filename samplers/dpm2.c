/*
 * samplers/dpm2.c -- "DPM2": the second-order DPM-Solver step (Lu et al.
 * 2022) in Karras' sigma form: a half step to the geometric-mean sigma
 * sigma_mid = exp((log sigma + log sigma_next) / 2), the slope there used for
 * the whole step. The last step (to sigma = 0) is plain Euler.
 *
 * Mirrors k-diffusion sample_dpm_2 (one randn_like(x) per step for churn).
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_dpm2(float *x, ldm_sampler_ctx *c) {
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
        if (sig[i + 1] == 0) {  // Euler method
            float dt = sig[i + 1] - sigma_hat;
            for (int64_t k = 0; k < n; k++) x[k] = x[k] + d[k] * dt;
        } else {                // DPM-Solver-2: midpoint in log sigma
            float lo = logf(sigma_hat), hi = logf(sig[i + 1]);
            float sigma_mid = expf(hi - (hi - lo) * 0.5f);  // torch.lerp(lo, hi, 0.5)
            float dt1 = sigma_mid - sigma_hat, dt2 = sig[i + 1] - sigma_hat;
            for (int64_t k = 0; k < n; k++) x2[k] = x[k] + d[k] * dt1;
            if ((rc = ldm_denoiser_denoised(c->dn, denoised2, x2, sigma_mid)) != LDM_OK) break;
            for (int64_t k = 0; k < n; k++) {
                float d2 = (x2[k] - denoised2[k]) / sigma_mid;
                x[k] = x[k] + d2 * dt2;
            }
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
