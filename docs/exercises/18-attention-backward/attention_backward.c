// The backward of multi-head attention (ref_attention, above in this file):
//   q [B,Tq,NH*HS], k, v [B,Tk,NH*HS], dout = dL/dout [B,Tq,NH*HS]
// ADD (+=, never overwrite) dL/dq to dq, dL/dk to dk, dL/dv to dv (each the
// shape of what it differentiates; any of the three may be NULL: skip it).
// Per batch b, head h (the slice [h*HS, (h+1)*HS) of a row) and query i the
// forward computed
//   s_j = scale * q_i . k_j     p = softmax(s)     out_i = sum_j p_j v_j
// over the keys j < nk (nk = i + 1 with the causal mask, else Tk). Nothing
// was saved: recompute p for the row, then go back through PV, the softmax
// and QK^T. The loops over b, h, i are written; the row is yours.
void ldm_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                const float *q, const float *k, const float *v,
                                int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                                float scale, int causal) {
    int64_t D = NH * HS;
    double *p = malloc((size_t)Tk * sizeof(double));    // p_j of one query row
    double *ds = malloc((size_t)Tk * sizeof(double));   // dL/ds_j of that row
    if (!p || !ds) abort();
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < NH; h++)
            for (int64_t i = 0; i < Tq; i++) {
                const float *qi = q + (b * Tq + i) * D + h * HS;     // q_i of head h
                const float *gi = dout + (b * Tq + i) * D + h * HS;  // dL/dout_i of head h
                int64_t nk = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk; // keys j < nk
                // key j of head h: k + (b * Tk + j) * D + h * HS  (the same offset in v, dk, dv)
                // TODO: your code here
                //   1. p_j = softmax_j(scale * q_i . k_j)          (subtract the max first)
                //   2. dv_j += p_j dout_i;   dp_j = dout_i . v_j
                //   3. ds_j = p_j (dp_j - sum_l p_l dp_l)
                //   4. dk_j += scale ds_j q_i;   dq_i += scale sum_j ds_j k_j
                (void)qi, (void)gi, (void)nk;
            }
    free(p);
    free(ds);
}
