// torch.nn.GroupNorm(G, C, eps) on a contiguous x [B,C,S] (S = H*W) -> out [B,C,S]:
// each group of C/G consecutive channels of a sample is normalised by its own
// mean and biased variance, then scaled and shifted per channel.
//   out[b,c,s] = (x[b,c,s] - mean_g) / sqrt(var_g + eps) * gamma[c] + beta[c]
// gamma and beta may be NULL (then 1 and 0).
static void ref_group_norm(float *out, const float *x, const float *gamma, const float *beta,
                           int64_t B, int64_t C, int64_t S, int64_t G, float eps) {
    // TODO: your code here
}
