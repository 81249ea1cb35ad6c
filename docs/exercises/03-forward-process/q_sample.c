// x_t [B,per] = sqrt(abar_t[b]) x0 + sqrt(1 - abar_t[b]) noise        (DDPM eq. 4)
// t [B]: one integer timestep per sample; abar_t is s->alphas_cumprod[t].
void ldm_q_sample(float *xt, const float *x0, const float *noise, const int *t, int64_t B,
                  int64_t per, const ldm_schedule *s) {
    // TODO: your code here
}
