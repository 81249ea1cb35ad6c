// DDPM ancestral sampling on the timesteps c->timesteps[0..n) (descending):
// from x_t, draw x_prev from the posterior q(x_prev | x_t, x0_hat), with
// x0_hat predicted from the model's eps; after the last step x_prev is x_0.
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
        // TODO: x0 <- x0_hat; x <- posterior mean; then, when t > 0, add the
        // posterior's standard deviation times noise drawn with
        // ldm_sampler_noise(c, noise)
        (void)a_t, (void)a_prev, (void)noise;
        if (c->callback) c->callback(c->callback_ctx, i, x, x0);
    }
    free(buf);
    return rc;
}
