// The encoder's diagonal Gaussian q(z|x) -> one latent per sample.
//   moments [B,2Z,S]: per sample, Z*S means, then Z*S log-variances
//   noise   [B,Z,S] standard normal draws, or NULL: return the mean
//   z       [B,Z,S] out
// Clamp the log-variance to [-30, 20] first, as the reference does.
void ldm_vae_posterior(float *z, const float *moments, const float *noise, int64_t B, int64_t Z,
                       int64_t S) {
    // TODO: your code here
}
