// denoised [n] <- the network output `out` at sigma through the
// CompVisDenoiser / CompVisVDenoiser scalings, float32 as k-diffusion
static void out_to_denoised(float *denoised, const ldm_denoiser *d, const float *out,
                            const float *x, float sigma, int64_t n) {
    // TODO: D(x; sigma) = c_skip x + c_out out, for an eps model
    // (d->prediction == LDM_PRED_EPS) and for a v model (LDM_PRED_V).
    // x is the k-diffusion latent x = x_0 + sigma n (not the network input).
    (void)d, (void)out, (void)sigma;
    for (int64_t i = 0; i < n; i++) denoised[i] = x[i];
}
