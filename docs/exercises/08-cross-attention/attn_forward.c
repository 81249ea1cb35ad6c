// The UNet's attention layer (diffusers Attention, CompVis CrossAttention):
//   xq [B,Tq,D] the image tokens, xkv [B,Tk,Dkv] the tokens attended to
//   (xq itself for attn1, the prompt's context for attn2) -> out [B,Tq,D],
//   out allocated by the caller.
//   Q = xq Wq^T, K = xkv Wk^T, V = xkv Wv^T   (no bias)
//   out = MultiHead(Q, K, V) Wo^T + bo         (`heads` heads of D/heads)
// at holds q_w, k_w, v_w, out_w, out_b. Return 0, or LDM_ERR when out of memory.
static int attn_forward(ldm_unet *u, ldm_tensor *out, const ldm_tensor *xq,
                        const ldm_tensor *xkv, const ldm_unet_attn *at, int heads) {
    // TODO: your code here
    return 0;
}
