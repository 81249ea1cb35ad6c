/*
 * samplers/dpmpp_2s_a.c -- "DPM++ 2S a": DPM-Solver++(2S) (Lu et al. 2022b,
 * Algorithm 1, single-step, data prediction) down to sigma_down, with
 * ancestral noise sigma_up. In t = -log sigma with h = t_next - t:
 *   x_2 = (sigma(s)/sigma(t)) x - expm1(-h/2) D(x; sigma),   s = t + h/2
 *   x   = (sigma(t_next)/sigma(t)) x - expm1(-h) D(x_2; sigma(s))
 * The last step (sigma_down = 0) is Euler.
 *
 * Mirrors k-diffusion sample_dpmpp_2s_ancestral (noise when sigma_next > 0).
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_dpmpp_2s_a(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 4);
    if (!buf) return LDM_ERR;
    float *denoised = buf, *noise = buf + n, *x2 = buf + 2 * n, *denoised2 = buf + 3 * n;
    const float *sig = c->sigmas;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sig[i])) != LDM_OK) break;
        double down_d, up_d;
        ldm_ancestral_step(&down_d, &up_d, sig[i], sig[i + 1], c->eta);
        float down = (float)down_d, up = (float)up_d;
        if (down == 0) {  // Euler method
            float dt = down - sig[i];
            for (int64_t k = 0; k < n; k++) x[k] += (x[k] - denoised[k]) / sig[i] * dt;
        } else {          // DPM-Solver++(2S)
            float t = -logf(sig[i]), t_next = -logf(down);
            float h = t_next - t, s = t + 0.5f * h;
            float a1 = expf(-s) / expf(-t), b1 = expm1f(-h * 0.5f);
            for (int64_t k = 0; k < n; k++) x2[k] = a1 * x[k] - b1 * denoised[k];
            if ((rc = ldm_denoiser_denoised(c->dn, denoised2, x2, expf(-s))) != LDM_OK) break;
            float a2 = expf(-t_next) / expf(-t), b2 = expm1f(-h);
            for (int64_t k = 0; k < n; k++) x[k] = a2 * x[k] - b2 * denoised2[k];
        }
        if (sig[i + 1] > 0) {  // noise
            ldm_sampler_noise(c, noise);
            for (int64_t k = 0; k < n; k++) x[k] += noise[k] * c->s_noise * up;
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
