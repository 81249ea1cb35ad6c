// One pre-LN CLIP encoder layer, in place on x [B,T,D]
// (transformers CLIPEncoderLayer, open_clip ResidualAttentionBlock):
//   h = LN1(x)                      ldm_layer_norm(h, x, &L->ln1_w, &L->ln1_b, eps)
//   q,k,v = h W^T + b               ldm_linear(q, h, &L->q_w, &L->q_b), same for k, v
//   a = causal MHA(q, k, v)         ldm_attention(a, q, k, v, NH, 1/sqrt(HS), 1)
//   x = x + (a W_o^T + b_o)         ldm_linear + ldm_add
//   h = LN2(x); f = act(fc1(h))     quick_gelu (SD1) or gelu (SD2): c->hidden_act
//   x = x + fc2(f)
// Scratch tensors h, q, k, v, a are [B,T,D]; f is [B,T,F]. eps = c->layer_norm_eps,
// NH = c->num_attention_heads, HS = c->hidden_size / NH.
static void clip_layer_forward(ldm_tensor *x, const ldm_clip_layer *L, const ldm_clip_config *c,
                               ldm_tensor *h, ldm_tensor *q, ldm_tensor *k, ldm_tensor *v,
                               ldm_tensor *a, ldm_tensor *f) {
    // TODO: your code here
}
