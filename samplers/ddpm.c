/*
 * samplers/ddpm.c -- ancestral sampling of DDPM (Ho et al. 2020) on a subset
 * of timesteps: from x_t, the posterior q(x_prev | x_t, x0_hat) with
 *   x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)              (DDPM eq. 15)
 *   mean   = sqrt(abar_prev) beta_t / (1 - abar_t) x0_hat
 *          + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t          (DDPM eq. 7)
 *   var    = (1 - abar_prev) / (1 - abar_t) beta_t  ("fixed_small")   (DDPM eq. 7)
 * where alpha_t = abar_t / abar_prev and beta_t = 1 - alpha_t over the
 * skipped interval, abar_prev = 1 after the last step.
 *
 * Mirrors diffusers DDPMScheduler.step (variance_type "fixed_small",
 * clip_sample off): noise drawn only when t > 0, variance clamped at 1e-20.
 * Leaves out: learned variances, clipping and thresholding of x0_hat.
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_ddpm(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 3);
    if (!buf) return LDM_ERR;
    float *eps = buf, *x0 = buf + n, *noise = buf + 2 * n;
    const float *abar = c->dn->sched->alphas_cumprod;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        int t = c->timesteps[i], prev = i + 1 < c->n ? c->timesteps[i + 1] : -1;
        if ((rc = ldm_denoiser_eps(c->dn, eps, x, (float)t)) != LDM_OK) break;
        double a_t = abar[t], a_prev = prev >= 0 ? abar[prev] : 1.0;
        double b_t = 1 - a_t, b_prev = 1 - a_prev;
        double cur_alpha = a_t / a_prev, cur_beta = 1 - cur_alpha;
        double c_x0 = sqrt(a_prev) * cur_beta / b_t;   // DDPM eq. 7, coefficient of x0_hat
        double c_xt = sqrt(cur_alpha) * b_prev / b_t;  // DDPM eq. 7, coefficient of x_t
        double sa = sqrt(a_t), sb = sqrt(b_t);
        for (int64_t k = 0; k < n; k++) {
            x0[k] = (float)((x[k] - sb * eps[k]) / sa);  // DDPM eq. 15
            x[k] = (float)(c_x0 * x0[k] + c_xt * x[k]);
        }
        if (t > 0) {
            double var = b_prev / b_t * cur_beta;
            if (var < 1e-20) var = 1e-20;
            float sd = (float)sqrt(var);
            ldm_sampler_noise(c, noise);
            for (int64_t k = 0; k < n; k++) x[k] += sd * noise[k];
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, x0);
    }
    free(buf);
    return rc;
}
