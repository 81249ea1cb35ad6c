// The model on x_in/t (the caller writes the first B rows of x_in) with
// guidance: returns the guided output [B,per] (the cond rows of d->out,
// overwritten), and leaves the unconditional rows' raw output at d->out
// (the same pointer without guidance). NULL on a model failure.
static const float *run_model(ldm_denoiser *d, float tval) {
    int64_t B = d->B, per = d->per, N = d->cfg ? 2 * B : B;
    if (d->cfg) memcpy(d->x_in + B * per, d->x_in, (size_t)(B * per) * sizeof(float));
    for (int64_t k = 0; k < N; k++) d->t[k] = tval;
    d->nfe++;
    if (d->fn(d->out, d->x_in, d->t, N, d->ctx) != LDM_OK) return NULL;
    float *guided = d->out;
    if (d->cfg) {
        // TODO: classifier-free guidance. d->out holds 2B rows of `per` values:
        // rows [0, B) the unconditional output, rows [B, 2B) the conditional one.
        // Combine them with the scale d->cfg_scale and return the guided rows.
    }
    return guided;
}
