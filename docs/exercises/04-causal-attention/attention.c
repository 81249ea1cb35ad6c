// Multi-head scaled dot-product attention:
//   q [B,Tq,NH*HS], k, v [B,Tk,NH*HS] -> out [B,Tq,NH*HS];
// head h of a row is its slice [h*HS, (h+1)*HS). For each b, h and query i:
//   out_i = softmax_j(scale * q_i . k_j) v_j
// With causal != 0, query i sees keys j <= i only (CLIP's text encoder).
static void ref_attention(float *out, const float *q, const float *k, const float *v,
                          int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                          float scale, int causal) {
    // TODO: your code here
}
