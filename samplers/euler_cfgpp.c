/*
 * samplers/euler_cfgpp.c -- "Euler CFG++": Euler (DDIM) with the guidance of
 * Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance
 * for Diffusion Models" (arXiv 2406.08070, Algorithm 1 / eq. 9).
 *
 * A DDIM / Euler step denoises and renoises with the same prediction:
 *   x' = D + sigma_next (x - D) / sigma.
 * CFG++ denoises with the guided D_l = D_u + l (D_c - D_u) but renoises with
 * the UNCONDITIONAL eps_u = (x - D_u) / sigma:
 *   x' = D_l + sigma_next (x - D_u) / sigma
 * (D_u: dn->uncond, the unconditional rows of the same model call). The
 * guidance scale l (dn->cfg_scale) lives in [0, 1] (the paper uses 0.2..1;
 * l = 0 is the unconditional model): one CFG++ step equals a CFG step of
 * scale w = l / (1 - sigma_next/sigma), so a small l is a large guidance on
 * small steps. Without guidance (D_u = D_c) it is plain Euler.
 * One model evaluation per step (2B rows with guidance); deterministic.
 *
 * As ComfyUI's sample_euler_cfg_pp; no registry reference: tested against
 * an independent implementation in tools/reference/fixtures_samplers_kx.py.
 */
#include <stdlib.h>

#include "ldm/core/error.h"
#include "sampler.h"

int ldm_sample_euler_cfgpp(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *denoised = ldm_sampler_alloc(c, 1);
    if (!denoised) return LDM_ERR;
    const float *sig = c->sigmas, *uncond = c->dn->uncond;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sig[i])) != LDM_OK) break;
        for (int64_t k = 0; k < n; k++) {
            float eps_u = (x[k] - uncond[k]) / sig[i];
            x[k] = denoised[k] + eps_u * sig[i + 1];
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(denoised);
    return rc;
}
