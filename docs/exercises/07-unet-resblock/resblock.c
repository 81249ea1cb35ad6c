// ResBlock (diffusers ResnetBlock2D, CompVis ResBlock), the UNet's workhorse:
//   x [B,Cin,H,W], semb = SiLU(emb) [B,Temb] (already activated) -> out [B,Cout,H,W]
//   a   = SiLU(GroupNorm(x))                 ldm_group_norm(&a, x, &r->norm1_w, &r->norm1_b, G, eps)
//                                            ldm_silu(&a, &a)
//   h   = conv3x3(a) + time_emb_proj(semb)   conv(u, &h, &a, &r->conv1_w, &r->conv1_b, 1, 1)
//                                            linear(u, &tp, semb, &r->temb_w, &r->temb_b)   tp [B,Cout]
//                                            ldm_add_channel(&h, &h, &tp)  (over H,W)
//   a2  = SiLU(GroupNorm(h))                 norm2_w / norm2_b, then ldm_silu
//   out = conv3x3(a2) + skip                 conv(u, out, &a2, &r->conv2_w, &r->conv2_b, 1, 1)
//   skip = x, or conv1x1(x) when r->short_w.data != NULL   (conv(..., 1, 0): pad 0)
// G = u->cfg.norm_num_groups, eps = u->cfg.norm_eps. `out` is allocated by the
// caller. Scratch comes from the UNet's arena: take `size_t m =
// ldm_arena_mark(&u->arena);`, make each temporary with ACT(u, &t, dims...)
// (non-zero when out of memory: return LDM_ERR), and give them all back with
// ldm_arena_release(&u->arena, m) before returning 0.
// conv() and linear() are this file's FLOP-counting wrappers of ldm_conv2d and
// ldm_linear. Shapes: a [B,Cin,H,W], h [B,Cout,H,W], tp [B,Cout].
static int resblock_forward(ldm_unet *u, ldm_tensor *out, const ldm_tensor *x,
                            const ldm_tensor *semb, const ldm_unet_resblock *r) {
    // TODO: your code here
    return 0;
}
