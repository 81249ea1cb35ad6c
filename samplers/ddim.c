/*
 * samplers/ddim.c -- DDIM (Song et al. 2021), eq. 12:
 *   x_prev = sqrt(abar_prev) x0_hat                      ("predicted x_0")
 *          + sqrt(1 - abar_prev - sigma_t^2) eps          ("direction pointing to x_t")
 *          + sigma_t z                                    ("random noise")
 *   x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
 *   sigma_t = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)   (eq. 16)
 * eta = 0 is the deterministic DDIM; eta = 1 is DDPM's posterior variance.
 * abar_prev after the last step is abar_0 (SD: set_alpha_to_one = False) or 1.
 *
 * Mirrors CompVis DDIMSampler.p_sample_ddim and diffusers DDIMScheduler.step.
 * They differ only in the RNG: CompVis draws z every step, even at eta = 0
 * (c->compvis = 1); diffusers draws only when eta > 0. With the SD spacing
 * ("leading", offset 1 = CompVis "uniform") their timesteps coincide.
 * The previous timestep is t - T/steps (integer division) as in diffusers
 * when c->steps is known, else the next entry of c->timesteps. For "leading"
 * and CompVis "uniform" spacing the two are the same; for "trailing" (the
 * ddim_trailing name) and "linspace" t - T/steps can lie a timestep above the
 * next entry when steps does not divide T, and the next step then starts from
 * that level (diffusers' DDIMScheduler.step, kept to give its image).
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_ddim(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 3);
    if (!buf) return LDM_ERR;
    float *eps = buf, *x0 = buf + n, *noise = buf + 2 * n;
    const float *abar = c->dn->sched->alphas_cumprod;
    double final_abar = c->set_alpha_to_one ? 1.0 : abar[0];
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        int t = c->timesteps[i];
        int prev = c->steps > 0 ? t - c->dn->sched->T / c->steps
                                : i + 1 < c->n ? c->timesteps[i + 1] : -1;
        if ((rc = ldm_denoiser_eps(c->dn, eps, x, (float)t)) != LDM_OK) break;
        double a_t = abar[t], a_prev = prev >= 0 ? abar[prev] : final_abar;
        double sigma_t = c->eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)); // eq. 16
        double dir = sqrt(1 - a_prev - sigma_t * sigma_t);
        double sa = sqrt(a_t), sb = sqrt(1 - a_t), sp = sqrt(a_prev);
        int draw = c->compvis || c->eta > 0;
        if (draw) ldm_sampler_noise(c, noise);
        for (int64_t k = 0; k < n; k++) {
            double x0k = (x[k] - sb * eps[k]) / sa;                 // predicted x_0
            double xp = sp * x0k + dir * eps[k];                    // + direction pointing to x_t
            if (draw) xp += sigma_t * noise[k];                     // + random noise
            x0[k] = (float)x0k;
            x[k] = (float)xp;
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, x0);
    }
    free(buf);
    return rc;
}
