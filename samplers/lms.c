/*
 * samplers/lms.c -- linear multistep (Adams-Bashforth in sigma, order 4):
 * x_{i+1} = x_i + sum_j c_j d_{i-j}, where c_j is the integral over
 * [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial through the last
 * `order` sigmas (Karras et al. 2022 discuss it; k-diffusion sample_lms).
 *
 * k-diffusion integrates the basis with scipy's adaptive quadrature (quad,
 * epsrel 1e-4). The integrand is a polynomial of degree order-1 <= 3, so a
 * 4-point Gauss-Legendre rule (exact up to degree 7) gives the same integral
 * up to rounding; that is what we do.
 */
#include <math.h>
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

#define LMS_ORDER 4

// Integral over [sig[i], sig[i+1]] of prod_{k != j} (tau - sig[i-k]) / (sig[i-j] - sig[i-k]).
static double lms_coeff(int order, const float *sig, int i, int j) {
    static const double node[4] = {-0.8611363115940526, -0.3399810435848563,
                                   0.3399810435848563, 0.8611363115940526};
    static const double weight[4] = {0.3478548451374538, 0.6521451548625461,
                                     0.6521451548625461, 0.3478548451374538};
    double a = sig[i], b = sig[i + 1], half = (b - a) / 2, mid = (a + b) / 2, sum = 0;
    for (int q = 0; q < 4; q++) {
        double tau = mid + half * node[q], prod = 1;
        for (int k = 0; k < order; k++) {
            if (k == j) continue;
            prod *= (tau - (double)sig[i - k]) / ((double)sig[i - j] - (double)sig[i - k]);
        }
        sum += weight[q] * prod;
    }
    return sum * half;
}

int ldm_sample_lms(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 1 + LMS_ORDER);
    if (!buf) return LDM_ERR;
    float *denoised = buf;
    float *ds[LMS_ORDER];  // ring of the last slopes; ds[(i - j) % ORDER] = d_{i-j}
    for (int j = 0; j < LMS_ORDER; j++) ds[j] = buf + (1 + j) * n;
    const float *sig = c->sigmas;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sig[i])) != LDM_OK) break;
        float *d = ds[i % LMS_ORDER];
        for (int64_t k = 0; k < n; k++) d[k] = (x[k] - denoised[k]) / sig[i];
        int order = i + 1 < LMS_ORDER ? i + 1 : LMS_ORDER;
        float coeff[LMS_ORDER];
        for (int j = 0; j < order; j++) coeff[j] = (float)lms_coeff(order, sig, i, j);
        for (int64_t k = 0; k < n; k++) {
            float acc = 0;  // sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
            for (int j = 0; j < order; j++) acc += coeff[j] * ds[(i - j) % LMS_ORDER][k];
            x[k] = x[k] + acc;
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
