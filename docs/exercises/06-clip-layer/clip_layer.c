// One pre-LN CLIP encoder layer, in place on x [B,T,D]
// (transformers CLIPEncoderLayer, open_clip ResidualAttentionBlock):
//   h = LN1(x)                      ldm_layer_norm(&h, x, &L->ln1_w, &L->ln1_b, eps)
//   q,k,v = h W^T + b               ldm_linear(&q, &h, &L->q_w, &L->q_b), same for k, v
//   a = causal MHA(q, k, v)         ldm_attention(&a, &q, &k, &v, NH, 1/sqrt(HS), 1)
//   x = x + (a W_o^T + b_o)         ldm_linear + ldm_add
//   h = LN2(x); f = act(fc1(h))     quick_gelu (SD1) or gelu (SD2): c->hidden_act
//   x = x + fc2(f)
// c = &m->cfg; eps = c->layer_norm_eps, NH = c->num_attention_heads, HS = D / NH,
// F = c->intermediate_size. Temporaries come from the encoder's arena: take
// `size_t mk = ldm_arena_mark(&m->arena);`, make h, q, k, v, a [B,T,D] and
// f [B,T,F] with ACT(m, &h, B, T, D) (non-zero when out of memory: return
// LDM_ERR), and give them all back with ldm_arena_release(&m->arena, mk)
// before returning 0.
static int clip_layer_forward(ldm_clip *m, ldm_tensor *x, const ldm_clip_layer *L) {
    // TODO: your code here
    return 0;
}
