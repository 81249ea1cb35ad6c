/*
 * samplers/plms.c -- PLMS, the pseudo linear multistep method of PNDM
 * (Liu et al. 2022) as CompVis implements it (PLMSSampler.p_sample_plms):
 * each step is a deterministic DDIM step (ddim.c with eta = 0) taken with a
 * combination e' of the current and previous noise predictions:
 *   first step:  e' = (e_t + e(x_tmp, t_next)) / 2, x_tmp = DDIM(x, e_t)
 *                ("pseudo improved Euler": two model evaluations)
 *   then Adams-Bashforth on the stored raw e_t (PNDM eq. 12):
 *     (3 e_t - e_1) / 2,  (23 e_t - 16 e_1 + 5 e_2) / 12,
 *     (55 e_t - 59 e_1 + 37 e_2 - 9 e_3) / 24
 *
 * diffusers PNDMScheduler(skip_prk_steps=True) computes the same sequence by
 * repeating the second timestep; the tests hold us to both. c->compvis = 1
 * reproduces CompVis' RNG use: every DDIM sub-step draws (and multiplies by
 * sigma_t = 0) one noise tensor, two on the first step.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "sampler.h"

// x_prev [n] <- DDIM eta=0 step of x [n] from abar a_t to a_prev with eps e;
// x0 [n] <- predicted x_0.
static void ddim_step(ldm_sampler_ctx *c, float *x_prev, float *x0, const float *x,
                      const float *e, double a_t, double a_prev, float *noise, int64_t n) {
    if (c->compvis) ldm_sampler_noise(c, noise);  // sigma_t * noise_like(x), sigma_t = 0
    double sa = sqrt(a_t), sb = sqrt(1 - a_t), sp = sqrt(a_prev), dir = sqrt(1 - a_prev);
    for (int64_t k = 0; k < n; k++) {
        double x0k = (x[k] - sb * e[k]) / sa;
        x0[k] = (float)x0k;
        x_prev[k] = (float)(sp * x0k + dir * e[k]);
    }
}

int ldm_sample_plms(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 8);
    if (!buf) return LDM_ERR;
    float *e_t = buf, *e_prime = buf + n, *x0 = buf + 2 * n, *noise = buf + 3 * n,
          *x_tmp = buf + 4 * n;
    float *old[3] = {buf + 5 * n, buf + 6 * n, buf + 7 * n};  // old[0] newest
    int n_old = 0;
    const float *abar = c->dn->sched->alphas_cumprod;
    double final_abar = c->set_alpha_to_one ? 1.0 : abar[0];
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        int t = c->timesteps[i], prev = i + 1 < c->n ? c->timesteps[i + 1] : -1;
        int t_next = c->timesteps[i + 1 < c->n ? i + 1 : c->n - 1];
        double a_t = abar[t], a_prev = prev >= 0 ? abar[prev] : final_abar;
        if ((rc = ldm_denoiser_eps(c->dn, e_t, x, (float)t)) != LDM_OK) break;
        if (n_old == 0) {  // pseudo improved Euler
            ddim_step(c, x_tmp, x0, x, e_t, a_t, a_prev, noise, n);
            if ((rc = ldm_denoiser_eps(c->dn, e_prime, x_tmp, (float)t_next)) != LDM_OK) break;
            for (int64_t k = 0; k < n; k++) e_prime[k] = (e_t[k] + e_prime[k]) / 2;
        } else if (n_old == 1) {
            for (int64_t k = 0; k < n; k++) e_prime[k] = (3 * e_t[k] - old[0][k]) / 2;
        } else if (n_old == 2) {
            for (int64_t k = 0; k < n; k++)
                e_prime[k] = (23 * e_t[k] - 16 * old[0][k] + 5 * old[1][k]) / 12;
        } else {
            for (int64_t k = 0; k < n; k++)
                e_prime[k] = (55 * e_t[k] - 59 * old[0][k] + 37 * old[1][k] - 9 * old[2][k]) / 24;
        }
        ddim_step(c, x, x0, x, e_prime, a_t, a_prev, noise, n);
        // remember the raw e_t: rotate the history, newest first, at most 3
        float *oldest = old[2];
        old[2] = old[1]; old[1] = old[0]; old[0] = oldest;
        memcpy(old[0], e_t, (size_t)n * sizeof(float));
        if (n_old < 3) n_old++;
        if (c->callback) c->callback(c->callback_ctx, i, x, x0);
    }
    free(buf);
    return rc;
}
