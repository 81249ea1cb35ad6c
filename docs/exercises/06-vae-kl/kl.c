// KL( q(z|x) || N(0, I) ) of each sample, summed over its Z*S latent values.
//   moments [B,2Z,S]: per sample, Z*S means, then Z*S log-variances
//   (log-variance clamped to [-30, 20], as in ldm_vae_posterior)
//   kl [B] out
void ldm_vae_kl(float *kl, const float *moments, int64_t B, int64_t Z, int64_t S) {
    // TODO: your code here
}
