/*
 * samplers/lcm.c -- multistep sampling of a Latent Consistency Model
 * (Luo et al. 2023, "Latent Consistency Models", Algorithm 1 "multistep
 * latent consistency sampling"). A consistency model maps any x_t on a
 * trajectory straight to its end x_0 (Song et al. 2023, "Consistency
 * Models", eq. 5 / 7); LCM parametrises that map with the boundary condition
 * f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t), so that f(x, 0) = x:
 *   x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)          (DDIM eq. 12)
 *   c_skip = sd^2 / ((10 t)^2 + sd^2),  c_out = 10 t / sqrt((10 t)^2 + sd^2)
 *   (sigma_data sd = 0.5, the timestep scaled by 10: LCM's released code)
 * and alternates the jump with fresh noise back to the next timestep:
 *   D      = c_skip x_t + c_out x0_hat                 (the consistency function)
 *   x_prev = sqrt(abar_prev) D + sqrt(1 - abar_prev) z,   z ~ N(0, I)   (DDPM eq. 4)
 * The last step returns D. Timesteps: LDM_SPACING_LCM, n of the 50 the model
 * was distilled on (schedule.h); eta is not used (every step re-noises fully).
 *
 * Mirrors diffusers LCMScheduler.step (eps / v, no clipping or thresholding).
 * For LCM-distilled models and LCM-LoRAs (guidance 1..2; the guidance
 * embedding of fully distilled LCMs is left out: ldm_denoiser's CFG is used).
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_lcm(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 3);
    if (!buf) return LDM_ERR;
    float *eps = buf, *denoised = buf + n, *noise = buf + 2 * n;
    const float *abar = c->dn->sched->alphas_cumprod;
    const float sigma_data = 0.5f, timestep_scaling = 10.0f;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        int t = c->timesteps[i], last = i + 1 == c->n;
        int prev = last ? t : c->timesteps[i + 1];
        if ((rc = ldm_denoiser_eps(c->dn, eps, x, (float)t)) != LDM_OK) break;
        // the boundary condition: c_skip(0) = 1, c_out(0) = 0
        float ts = (float)t * timestep_scaling;
        float c_skip = sigma_data * sigma_data / (ts * ts + sigma_data * sigma_data);
        float c_out = ts / sqrtf(ts * ts + sigma_data * sigma_data);
        float sa = sqrtf(abar[t]), sb = sqrtf(1.0f - abar[t]);
        for (int64_t k = 0; k < n; k++) {
            float x0 = (x[k] - sb * eps[k]) / sa;                 // predicted x_0
            denoised[k] = c_out * x0 + c_skip * x[k];             // f(x_t, t)
        }
        if (!last) {   // back to the next timestep with fresh noise: q(x_prev | D)
            float sp = sqrtf(abar[prev]), sq = sqrtf(1.0f - abar[prev]);
            ldm_sampler_noise(c, noise);
            for (int64_t k = 0; k < n; k++) x[k] = sp * denoised[k] + sq * noise[k];
        } else {
            for (int64_t k = 0; k < n; k++) x[k] = denoised[k];
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
