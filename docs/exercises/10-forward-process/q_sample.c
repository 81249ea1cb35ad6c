// Noise a batch of clean samples x0 [B,per] to the timesteps t[b] of the
// forward process, with the standard normal draws noise [B,per] -> xt [B,per].
// s->alphas_cumprod[t] is the schedule's abar_t = (1 - beta_1) ... (1 - beta_t).
void ldm_q_sample(float *xt, const float *x0, const float *noise, const int *t, int64_t B,
                  int64_t per, const ldm_schedule *s) {
    // TODO: your code here
}
