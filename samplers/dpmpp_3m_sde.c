/*
 * samplers/dpmpp_3m_sde.c -- "DPM++ 3M SDE" and, with eta = 0, the
 * deterministic DPM-Solver++(3M): a third-order multistep exponential
 * integrator in t = -log sigma (Lu et al. 2022b, "DPM-Solver++", sec. 4 and
 * appendix; the SDE variant adds noise as DPM++ 2M SDE does).
 * With h = t_next - t, h_eta = h (eta + 1), D, D_1, D_2 the current and the
 * two previous denoised, r0 = h_1/h, r1 = h_2/h:
 *   x  = e^{-h_eta} x + (1 - e^{-h_eta}) D                    (first order)
 *   d1_0 = (D - D_1)/r0,  d1_1 = (D_1 - D_2)/r1
 *   d1 = d1_0 + (d1_0 - d1_1) r0/(r0 + r1),  d2 = (d1_0 - d1_1)/(r0 + r1)
 *   phi_2 = (e^{-h_eta} - 1)/h_eta + 1,  phi_3 = phi_2/h_eta - 1/2
 *   x += phi_2 d1 - phi_3 d2      (from the third step; the second: x += phi_2 d1_0)
 *   x += sigma_next sqrt(1 - e^{-2 h eta}) s_noise n                  (eta > 0)
 * e^{-h_eta} x is (sigma_next/sigma) e^{-eta h} x. The last step (to sigma = 0)
 * returns D. One model evaluation a step.
 *
 * Mirrors k-diffusion sample_dpmpp_3m_sde. The noise: per-step N(0,1) draws
 * from the run's generator (default; tested with the same draws injected into
 * k-diffusion) or, with --sde-noise brownian, k-diffusion's Brownian tree
 * (brownian.h; see dpmpp_sde.c).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_dpmpp_3m_sde(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 4);
    if (!buf) return LDM_ERR;
    float *denoised = buf, *d_1 = buf + n, *d_2 = buf + 2 * n, *noise = buf + 3 * n;
    const float *sig = c->sigmas;
    float h = 0, h_1 = 0, h_2 = 0;  // this step's and the two previous steps' h
    int have = 0;                   // previous denoised kept: 0, 1 or 2
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sig[i])) != LDM_OK) break;
        if (sig[i + 1] == 0) {  // denoising step
            memcpy(x, denoised, (size_t)n * sizeof(float));
        } else {
            float t = -logf(sig[i]), s = -logf(sig[i + 1]);
            h = s - t;
            float h_eta = h * (c->eta + 1);
            float a = expf(-h_eta), b = -expm1f(-h_eta);
            for (int64_t k = 0; k < n; k++) x[k] = a * x[k] + b * denoised[k];  // first order
            float phi_2 = expm1f(-h_eta) / h_eta + 1;
            if (have >= 2) {           // third order: two divided differences
                float r0 = h_1 / h, r1 = h_2 / h, phi_3 = phi_2 / h_eta - 0.5f;
                for (int64_t k = 0; k < n; k++) {
                    float d1_0 = (denoised[k] - d_1[k]) / r0;
                    float d1_1 = (d_1[k] - d_2[k]) / r1;
                    float d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1);
                    float d2 = (d1_0 - d1_1) / (r0 + r1);
                    x[k] = x[k] + phi_2 * d1 - phi_3 * d2;
                }
            } else if (have == 1) {    // second order
                float r = h_1 / h;
                for (int64_t k = 0; k < n; k++) x[k] = x[k] + phi_2 * ((denoised[k] - d_1[k]) / r);
            }
            if (c->eta != 0) {
                float amp = sig[i + 1] * sqrtf(-expm1f(-2 * h * c->eta)) * c->s_noise;
                ldm_sampler_noise_sde(c, noise, sig[i], sig[i + 1]);
                for (int64_t k = 0; k < n; k++) x[k] = x[k] + noise[k] * amp;
            }
        }
        // shift the history: D_2 <- D_1 <- D (h keeps its last value on the final step,
        // as in k-diffusion; it is never used after it)
        float *tmp = d_2;
        d_2 = d_1; d_1 = tmp;
        memcpy(d_1, denoised, (size_t)n * sizeof(float));
        if (have < 2) have++;
        h_2 = h_1; h_1 = h;
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
