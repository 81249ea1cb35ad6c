// A v-prediction model (SD2 768-v) outputs v = sqrt(abar) eps - sqrt(1-abar) x0
// for its input x = x_t = sqrt(abar) x0 + sqrt(1-abar) eps. Recover the noise:
//   v [n], x [n] at the same timestep, abar = alphas_cumprod[t] -> eps [n]
void ldm_eps_from_v(float *eps, const float *v, const float *x, double abar, int64_t n) {
    // TODO: your code here
}
