// DDIM (Song et al. 2021) on the timesteps c->timesteps[0..n) (descending),
// eta = c->eta; the model call, the loop and the callback are given.
int ldm_sample_ddim(float *x, ldm_sampler_ctx *c) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 3);
    if (!buf) return LDM_ERR;
    float *eps = buf, *x0 = buf + n, *noise = buf + 2 * n;
    const float *abar = c->dn->sched->alphas_cumprod;
    double final_abar = c->set_alpha_to_one ? 1.0 : abar[0];
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        int t = c->timesteps[i];   // prev: diffusers' t - T/steps, else the next entry
        int prev = c->steps > 0 ? t - c->dn->sched->T / c->steps
                                : i + 1 < c->n ? c->timesteps[i + 1] : -1;
        if ((rc = ldm_denoiser_eps(c->dn, eps, x, (float)t)) != LDM_OK) break;
        double a_t = abar[t], a_prev = prev >= 0 ? abar[prev] : final_abar;
        // TODO: the step from t to prev: x0 <- predicted x_0, x <- x_prev.
        // Random numbers: ldm_sampler_noise(c, noise), exactly once per step,
        // and only when c->compvis || c->eta > 0 (the reference RNG streams).
        (void)a_t, (void)a_prev, (void)noise;
        if (c->callback) c->callback(c->callback_ctx, i, x, x0);
    }
    free(buf);
    return rc;
}
