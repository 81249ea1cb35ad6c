// Sinusoidal embedding of the (possibly fractional) timesteps t[B] -> out[B,dim].
// half = dim/2 frequencies, geometric from 1 down towards 1/10000:
//   freq_i = exp(-ln(10000) * i / (half - freq_shift)),   i = 0..half-1
// out[b] = [sin(t freq) | cos(t freq)], the halves swapped to [cos | sin] when
// flip_sin_to_cos (SD: flip 1, shift 0). An odd dim leaves a last 0.
void ldm_unet_timestep_embedding(float *out, const float *t, int B, int dim, int flip_sin_to_cos,
                                 float freq_shift) {
    // TODO: your code here
}
