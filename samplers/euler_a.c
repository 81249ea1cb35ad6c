/*
 * samplers/euler_a.c -- "Euler a": Euler ancestral sampling. Each step goes
 * deterministically down to sigma_down, then adds fresh noise of size
 * sigma_up so that the marginal noise level is sigma_next
 * (sigma_down^2 + sigma_up^2 = sigma_next^2).
 *
 * Mirrors k-diffusion sample_euler_ancestral (noise = randn_like(x), drawn
 * only when sigma_next > 0).
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_euler_a(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 2);
    if (!buf) return LDM_ERR;
    float *denoised = buf, *noise = buf + n;  // [B,per] each
    const float *sig = c->sigmas;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sig[i])) != LDM_OK) break;
        double down, up;
        ldm_ancestral_step(&down, &up, sig[i], sig[i + 1], c->eta);
        float dt = (float)down - sig[i];
        for (int64_t k = 0; k < n; k++) x[k] += (x[k] - denoised[k]) / sig[i] * dt;
        if (sig[i + 1] > 0) {
            ldm_sampler_noise(c, noise);
            for (int64_t k = 0; k < n; k++) x[k] += noise[k] * c->s_noise * (float)up;
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
