/*
 * samplers/dpmpp_sde.c -- "DPM++ SDE": the stochastic DPM-Solver++ with a
 * midpoint (r = 1/2) stage; both stages go down to an ancestral sigma_down
 * and add noise of size sigma_up. With t = -log sigma, h = t_next - t,
 * s = t + r h:
 *   stage 1: x_2 = (sigma(s_)/sigma(t)) x - expm1(t - s_) D + su_1 n_1,  s_ = -log sd_1
 *   stage 2: D'  = (1 - 1/(2r)) D + 1/(2r) D(x_2; sigma(s))
 *            x   = (sigma(t_n_)/sigma(t)) x - expm1(t - t_n_) D' + su_2 n_2
 * The last step (to sigma = 0) is Euler.
 *
 * Mirrors k-diffusion sample_dpmpp_sde. Its noise (ldm_sampler_noise_sde):
 * by default plain N(0,1) draws from the run's generator (two per step, in
 * the order k-diffusion calls its noise_sampler; the tests inject the same
 * draws into k-diffusion); with --sde-noise brownian the increments of
 * k-diffusion's own Brownian tree (brownian.h), which keeps the noise between
 * two sigmas the same at any step count. The noise intervals are asked with
 * k-diffusion's sigma_fn(t) = exp(log sigma), as it does.
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_dpmpp_sde(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 4);
    if (!buf) return LDM_ERR;
    float *denoised = buf, *noise = buf + n, *x2 = buf + 2 * n, *denoised2 = buf + 3 * n;
    const float *sig = c->sigmas;
    const float r = 0.5f, fac = 1 / (2 * r);
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sig[i])) != LDM_OK) break;
        if (sig[i + 1] == 0) {  // Euler method
            float dt = sig[i + 1] - sig[i];
            for (int64_t k = 0; k < n; k++) x[k] += (x[k] - denoised[k]) / sig[i] * dt;
        } else {
            float t = -logf(sig[i]), t_next = -logf(sig[i + 1]);
            float h = t_next - t, s = t + h * r;
            // stage 1
            double sd, su;
            ldm_ancestral_step(&sd, &su, expf(-t), expf(-s), c->eta);
            float s_ = -logf((float)sd);
            float a1 = expf(-s_) / expf(-t), b1 = expm1f(t - s_);
            for (int64_t k = 0; k < n; k++) x2[k] = a1 * x[k] - b1 * denoised[k];
            ldm_sampler_noise_sde(c, noise, expf(-t), expf(-s));   // sigma_fn(t), sigma_fn(s)
            for (int64_t k = 0; k < n; k++) x2[k] += noise[k] * c->s_noise * (float)su;
            if ((rc = ldm_denoiser_denoised(c->dn, denoised2, x2, expf(-s))) != LDM_OK) break;
            // stage 2
            ldm_ancestral_step(&sd, &su, expf(-t), expf(-t_next), c->eta);
            float t_next_ = -logf((float)sd);
            float a2 = expf(-t_next_) / expf(-t), b2 = expm1f(t - t_next_);
            for (int64_t k = 0; k < n; k++) {
                float dd = (1 - fac) * denoised[k] + fac * denoised2[k];
                x[k] = a2 * x[k] - b2 * dd;
            }
            ldm_sampler_noise_sde(c, noise, expf(-t), expf(-t_next));
            for (int64_t k = 0; k < n; k++) x[k] += noise[k] * c->s_noise * (float)su;
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
