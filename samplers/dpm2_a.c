/*
 * samplers/dpm2_a.c -- "DPM2 a": the DPM2 step down to sigma_down followed
 * by fresh noise of size sigma_up (ancestral sampling, as euler_a.c).
 *
 * Mirrors k-diffusion sample_dpm_2_ancestral (noise drawn only when
 * sigma_down > 0).
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_dpm2_a(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 5);
    if (!buf) return LDM_ERR;
    float *denoised = buf, *noise = buf + n, *d = buf + 2 * n, *x2 = buf + 3 * n,
          *denoised2 = buf + 4 * n;
    const float *sig = c->sigmas;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sig[i])) != LDM_OK) break;
        double down_d, up_d;
        ldm_ancestral_step(&down_d, &up_d, sig[i], sig[i + 1], c->eta);
        float down = (float)down_d, up = (float)up_d;
        for (int64_t k = 0; k < n; k++) d[k] = (x[k] - denoised[k]) / sig[i];
        if (down == 0) {  // Euler method
            float dt = down - sig[i];
            for (int64_t k = 0; k < n; k++) x[k] = x[k] + d[k] * dt;
        } else {          // DPM-Solver-2 to sigma_down, then noise
            float lo = logf(sig[i]), hi = logf(down);
            float sigma_mid = expf(hi - (hi - lo) * 0.5f);  // torch.lerp(lo, hi, 0.5)
            float dt1 = sigma_mid - sig[i], dt2 = down - sig[i];
            for (int64_t k = 0; k < n; k++) x2[k] = x[k] + d[k] * dt1;
            if ((rc = ldm_denoiser_denoised(c->dn, denoised2, x2, sigma_mid)) != LDM_OK) break;
            for (int64_t k = 0; k < n; k++) {
                float d2 = (x2[k] - denoised2[k]) / sigma_mid;
                x[k] = x[k] + d2 * dt2;
            }
            ldm_sampler_noise(c, noise);
            for (int64_t k = 0; k < n; k++) x[k] += noise[k] * c->s_noise * up;
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
