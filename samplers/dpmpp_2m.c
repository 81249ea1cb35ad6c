/*
 * samplers/dpmpp_2m.c -- "DPM++ 2M": DPM-Solver++(2M) (Lu et al. 2022b,
 * Algorithm 2, multistep, data prediction). With t = -log sigma,
 * h = t_next - t, r = h_last / h:
 *   D' = (1 + 1/(2r)) D_i - (1/(2r)) D_{i-1}       (D_i alone on the first and last step)
 *   x  = (sigma_next / sigma) x - expm1(-h) D'
 * One model evaluation per step; deterministic (no noise).
 *
 * Mirrors k-diffusion sample_dpmpp_2m.
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_dpmpp_2m(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 2);
    if (!buf) return LDM_ERR;
    float *denoised = buf, *old = buf + n;
    const float *sig = c->sigmas;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sig[i])) != LDM_OK) break;
        float t = -logf(sig[i]), t_next = -logf(sig[i + 1]);  // t_next = +inf at sigma 0
        float h = t_next - t;
        float a = expf(-t_next) / expf(-t), b = expm1f(-h);
        if (i == 0 || sig[i + 1] == 0) {  // first order
            for (int64_t k = 0; k < n; k++) x[k] = a * x[k] - b * denoised[k];
        } else {                          // second order from the previous D
            float h_last = t - (-logf(sig[i - 1]));
            float r = h_last / h;
            float w1 = 1 + 1 / (2 * r), w0 = 1 / (2 * r);
            for (int64_t k = 0; k < n; k++) {
                float dd = w1 * denoised[k] - w0 * old[k];
                x[k] = a * x[k] - b * dd;
            }
        }
        for (int64_t k = 0; k < n; k++) old[k] = denoised[k];
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
