// The min-SNR loss weights of the eps-prediction objective, one per timestep:
//   w[t] = min(SNR(t), gamma) / SNR(t),   SNR(t) = abar[t] / (1 - abar[t])
// for t = 0 .. T-1, from the schedule's abar[T] (alphas_cumprod). gamma <= 0
// turns the weighting off: every w[t] = 1 (the plain LDM objective, eq. 2).
// tools/train/train_tiny.py computes them in float32; so may you.
void ldm_min_snr_weights(float *w, const float *abar, int T, double gamma) {
    // TODO: your code here
}
