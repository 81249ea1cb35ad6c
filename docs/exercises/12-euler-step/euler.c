// Euler's method on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma,
// from sigma_0 = c->sigmas[0] to c->sigmas[c->n] = 0, in c->n steps; x [B,per]
// holds x at sigma_0 on entry and the result on return.
int ldm_sample_euler(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 2);
    if (!buf) return LDM_ERR;
    float *denoised = buf, *eps = buf + n;  // [B,per] each
    const float *sig = c->sigmas;
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        float sigma_hat = ldm_sampler_churn(c, i, x, eps);   // sig[i], raised when churn is on
        if ((rc = ldm_denoiser_denoised(c->dn, denoised, x, sigma_hat)) != LDM_OK) break;
        // TODO: one Euler step of the ODE from sigma_hat to sig[i + 1]
        (void)sig;
        if (c->callback) c->callback(c->callback_ctx, i, x, denoised);
    }
    free(buf);
    return rc;
}
