/*
 * samplers/deis.c -- DEIS, the diffusion exponential integrator sampler of
 * Zhang & Chen 2022 ("Fast Sampling of Diffusion Models with Exponential
 * Integrator"), its multistep form "rhoAB" with the noise prediction
 * interpolated in log rho (diffusers' solver_type "logrho"), order 2
 * (diffusers DEISMultistepScheduler's default solver_order).
 *
 * With alpha = sqrt(abar) and rho = sqrt((1 - abar)/abar) (the k-diffusion
 * sigma), y = x/alpha obeys dy/drho = eps (DEIS eq. 13 after the change of
 * variables of sec. 4). A step from level i to the next integrates a
 * polynomial through the last noise predictions, in u = log rho:
 *   x_next = alpha_next (x_i/alpha_i + sum_k C_k eps_{i-k})
 *   C_k = integral over [rho_i, rho_next] of l_k(log tau) d tau
 * l_k the Lagrange basis on the nodes log rho_i, log rho_{i-1}. With
 * F_0(tau) = tau, F_1(tau) = tau (log tau - 1) the primitives of 1 and log tau:
 *   order 1: C_0 = rho_next - rho_i (this is DDIM, eta 0)
 *   order 2: C_0 = [F_1 - u_1 F_0] / (u_0 - u_1),  C_1 = [F_1 - u_0 F_0] / (u_1 - u_0)
 *            between rho_i and rho_next, u_k = log rho_{i-k}
 * First order on the first step, and on the last when there are fewer than
 * 15 steps (diffusers' lower_order_final). One model evaluation a step.
 * The last step ends at abar_0 (diffusers' final sigma), or at rho = 0 with
 * set_alpha_to_one, where F_1(0) = 0 (its limit).
 *
 * Mirrors diffusers DEISMultistepScheduler (solver_order 2) on the timesteps
 * it is given: with "trailing" spacing those are diffusers' own.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "sampler.h"

// rho of abar, as diffusers: the float32 sigma, then alpha = 1/sqrt(sigma^2 + 1)
static void level_of(double abar, double *alpha, double *rho) {
    if (abar >= 1) { *alpha = 1; *rho = 0; return; }
    float sigma = (float)sqrt((1 - abar) / abar);
    *alpha = 1 / sqrt((double)sigma * sigma + 1);
    *rho = sigma;
}

// the primitive of log tau: tau (log tau - 1), 0 at tau = 0
static double prim_log(double tau) { return tau > 0 ? tau * (log(tau) - 1) : 0; }

int ldm_sample_deis(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 3);
    if (!buf) return LDM_ERR;
    float *eps = buf, *eps_1 = buf + n, *x0 = buf + 2 * n;   // eps_i, eps_{i-1}
    const float *abar = c->dn->sched->alphas_cumprod;
    double final_abar = c->set_alpha_to_one ? 1.0 : abar[0];
    double rho_1 = 0;   // rho_{i-1}
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        int t = c->timesteps[i];
        double a_i, rho_i, a_next, rho_next;
        level_of(abar[t], &a_i, &rho_i);
        level_of(i + 1 < c->n ? abar[c->timesteps[i + 1]] : final_abar, &a_next, &rho_next);
        float *tmp = eps_1;
        eps_1 = eps; eps = tmp;
        if ((rc = ldm_denoiser_eps(c->dn, eps, x, (float)t)) != LDM_OK) break;
        int total = c->steps > 0 ? c->steps : c->n;   // the whole schedule's length (img2img)
        int order = (i == 0 || (i + 1 == c->n && total < 15)) ? 1 : 2;
        double C0, C1 = 0;
        if (order == 1) {
            C0 = rho_next - rho_i;
        } else {
            double u0 = log(rho_i), u1 = log(rho_1);
            double F1 = prim_log(rho_next) - prim_log(rho_i), F0 = rho_next - rho_i;
            C0 = (F1 - u1 * F0) / (u0 - u1);
            C1 = (F1 - u0 * F0) / (u1 - u0);
        }
        double s_i = rho_i * a_i;   // sqrt(1 - abar_i)
        for (int64_t k = 0; k < n; k++) {
            double y = x[k] / a_i + C0 * eps[k];
            if (order == 2) y += C1 * eps_1[k];
            x0[k] = (float)((x[k] - s_i * eps[k]) / a_i);
            x[k] = (float)(a_next * y);
        }
        rho_1 = rho_i;
        if (c->callback) c->callback(c->callback_ctx, i, x, x0);
    }
    free(buf);
    return rc;
}
