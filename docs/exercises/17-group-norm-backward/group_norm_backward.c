// The backward of torch.nn.GroupNorm(G, C, eps) on a contiguous x [B,C,S]:
// given dout = dL/dout [B,C,S], ADD (+=, never overwrite) to
//   dx [B,C,S]    dL/dx        (may be NULL: not wanted)
//   dgamma [C]    dL/dgamma    (may be NULL)
//   dbeta [C]     dL/dbeta     (may be NULL)
// The forward (ref_group_norm, above in this file): each group of C/G
// consecutive channels of a sample, n = (C/G)*S values, is normalised by its
// own mean and biased variance, xhat = (x - mean) / sqrt(var + eps), then
// out[b,c,s] = xhat[b,c,s] * gamma[c] + beta[c]; gamma NULL means 1.
// Nothing was saved by the forward: recompute the statistics from x.
void ldm_ref_group_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dout,
                                 const float *x, const float *gamma,
                                 int64_t B, int64_t C, int64_t S, int64_t G, float eps) {
    // TODO: your code here
}
