/*
 * samplers/tcd.c -- Strategic Stochastic Sampling of Trajectory Consistency
 * Distillation (Zheng et al. 2024, "Trajectory Consistency Distillation",
 * sec. 4.2 and Algorithm 4). TCD's model predicts, from x_t, the point x_s
 * of the same probability-flow trajectory at an earlier time s (a
 * "semi-linear" consistency function, the DDIM step of eq. 12 with eta = 0).
 * With gamma in [0, 1] (c->eta; default 0.3) and the next timestep t':
 *   s      = floor((1 - gamma) t')                     (gamma = 0: s = t', DDIM;
 *                                                       gamma = 1: s = 0, like LCM)
 *   x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
 *   x_s    = sqrt(abar_s) x0_hat + sqrt(1 - abar_s) eps            (to time s)
 *   x_t'   = sqrt(abar_t'/abar_s) x_s + sqrt(1 - abar_t'/abar_s) z (forward s -> t')
 * The last step (t' = 0) returns x_s without noise. Timesteps:
 * LDM_SPACING_LCM (schedule.h), as TCD is distilled on the same 50 steps.
 *
 * Mirrors diffusers TCDScheduler.step (its eta is gamma), eps / v prediction.
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_tcd(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    if (!(c->eta >= 0 && c->eta <= 1))
        return ldm_error("TCD: gamma (eta) must be in [0, 1], found %g", c->eta);
    float *buf = ldm_sampler_alloc(c, 3);
    if (!buf) return LDM_ERR;
    float *eps = buf, *x0 = buf + n, *noise = buf + 2 * n;
    const float *abar = c->dn->sched->alphas_cumprod;
    const float gamma = c->eta;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        int t = c->timesteps[i], last = i + 1 == c->n;
        int prev = last ? 0 : c->timesteps[i + 1];
        int s = (int)floorf((1.0f - gamma) * (float)prev);
        if ((rc = ldm_denoiser_eps(c->dn, eps, x, (float)t)) != LDM_OK) break;
        float sa = sqrtf(abar[t]), sb = sqrtf(1.0f - abar[t]);
        float ssa = sqrtf(abar[s]), ssb = sqrtf(1.0f - abar[s]);
        int renoise = gamma > 0 && !last;
        float keep = sqrtf(abar[prev] / abar[s]), add = sqrtf(1.0f - abar[prev] / abar[s]);
        if (renoise) ldm_sampler_noise(c, noise);
        for (int64_t k = 0; k < n; k++) {
            float x0k = (x[k] - sb * eps[k]) / sa;               // predicted x_0
            float xs = ssa * x0k + ssb * eps[k];                 // along the trajectory to s
            x0[k] = x0k;
            x[k] = renoise ? keep * xs + add * noise[k] : xs;    // forward from s to t'
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, x0);
    }
    free(buf);
    return rc;
}
