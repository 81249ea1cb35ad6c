/*
 * samplers/ipndm.c -- iPNDM, the improved pseudo numerical method of Zhang &
 * Chen 2022 ("Fast Sampling of Diffusion Models with Exponential
 * Integrator", sec. 5 and appendix: PNDM's linear multistep part without
 * its Runge-Kutta warm-up, lower orders instead), on the probability-flow
 * ODE dx/dsigma = d = (x - D(x; sigma))/sigma of the k-diffusion family:
 *   x_next = x_i + (sigma_next - sigma_i) sum_k w_k d_{i-k},  order q = min(4, i+1)
 *
 * ipndm:   the Adams-Bashforth weights of EQUAL steps,
 *          1, (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24,
 *          used whatever the sigma spacing (ComfyUI's sample_ipndm).
 * ipndm_v: the variable-step Adams-Bashforth method (the "variable-step"
 *          iPNDM of Zhou et al. 2024, "Fast ODE-based Sampling for Diffusion
 *          Models in Around 5 Steps"): w_k = (1/h) integral over
 *          [sigma_i, sigma_next] of the Lagrange basis polynomial of node
 *          sigma_{i-k} on the nodes sigma_i .. sigma_{i-q+1}, h = sigma_next - sigma_i.
 *          On equal steps these are the weights above.
 * Both: the step to sigma = 0 returns D (a denoising step). One model
 * evaluation a step.
 *
 * ComfyUI's sample_ipndm_v (from zju-pi/diff-sampler) writes its order 3 and
 * 4 weights in closed form and misplaces a parenthesis: its order-3 weights
 * are exact only for equal steps and its order-4 weights are not
 * Adams-Bashforth even then (on equal steps (57, -65, 43, -11)/24). We
 * integrate the Lagrange polynomials, so ipndm_v here differs from
 * ComfyUI's from its third step on; tests/test_analytic.c measures the order.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "sampler.h"

// w [q] <- the variable-step Adams-Bashforth weights for the step from
// nodes[0] to next, nodes [q] = sigma_i, sigma_{i-1}, ... (q <= 4):
// w_k = (1/h) int_0^h prod_{j != k} (u - a_j)/(a_k - a_j) du, a_j = nodes[j] - nodes[0].
static void ab_weights(double *w, const double *nodes, int q, double next) {
    double h = next - nodes[0];
    for (int k = 0; k < q; k++) {
        double poly[4] = {1, 0, 0, 0};   // coefficients of u^0..u^3, built one factor at a time
        double denom = 1;
        int deg = 0;
        for (int j = 0; j < q; j++) {
            if (j == k) continue;
            double a_j = nodes[j] - nodes[0];
            for (int p = ++deg; p >= 0; p--)   // poly *= (u - a_j)
                poly[p] = (p > 0 ? poly[p - 1] : 0) - a_j * poly[p];
            denom *= (nodes[k] - nodes[0]) - a_j;
        }
        double integral = 0;             // int_0^h sum_p poly[p] u^p du
        for (int p = 0; p <= deg; p++) integral += poly[p] * pow(h, p + 1) / (p + 1);
        w[k] = integral / (h * denom);
    }
}

static int ipndm(float *x, ldm_sampler_ctx *c, int variable) {
    static const double FIXED[4][4] = {{1, 0, 0, 0},
                                       {3.0 / 2, -1.0 / 2, 0, 0},
                                       {23.0 / 12, -16.0 / 12, 5.0 / 12, 0},
                                       {55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24}};
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 5);
    if (!buf) return LDM_ERR;
    float *denoised = buf;
    float *d[4] = {buf + n, buf + 2 * n, buf + 3 * n, buf + 4 * n};  // d[0] = d_i, d[1] = d_{i-1}, ...
    const float *sig = c->sigmas;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sig[i])) != LDM_OK) break;
        float *oldest = d[3];            // history: d[3] <- d[2] <- d[1] <- d[0] <- the new slope
        d[3] = d[2]; d[2] = d[1]; d[1] = d[0]; d[0] = oldest;
        for (int64_t k = 0; k < n; k++) d[0][k] = (x[k] - denoised[k]) / sig[i];
        if (sig[i + 1] == 0) {           // denoising step
            memcpy(x, denoised, (size_t)n * sizeof(float));
        } else {
            int q = i + 1 < 4 ? i + 1 : 4;
            double w[4], nodes[4];
            for (int j = 0; j < q; j++) nodes[j] = sig[i - j];
            if (variable) ab_weights(w, nodes, q, sig[i + 1]);
            else memcpy(w, FIXED[q - 1], sizeof w);
            double h = (double)sig[i + 1] - sig[i];
            for (int64_t k = 0; k < n; k++) {
                double slope = 0;
                for (int j = 0; j < q; j++) slope += w[j] * d[j][k];
                x[k] = (float)(x[k] + h * slope);
            }
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}

int ldm_sample_ipndm(float *x, ldm_sampler_ctx *c) { return ipndm(x, c, 0); }
int ldm_sample_ipndm_v(float *x, ldm_sampler_ctx *c) { return ipndm(x, c, 1); }
