// q[B,Tq,NH*HS], k/v[B,Tk,NH*HS] -> out[B,Tq,NH*HS]. Head h of a row is the
// slice [h*HS, (h+1)*HS). For every batch b, head h and query i:
//   scores[j] = scale * q_i . k_j          for j = 0..Tk-1
//   causal: only keys j <= i take part (CLIP's text encoder)
//   p = softmax(scores)                   (subtract the max first)
//   out_i = sum_j p[j] v_j
// Scratch: malloc what you need and free it before returning.
static void ref_attention(float *out, const float *q, const float *k, const float *v,
                          int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                          float scale, int causal) {
    // TODO: your code here
}
