// The UNet's ResBlock (diffusers ResnetBlock2D, CompVis ResBlock):
//   x [B,Cin,H,W], semb = SiLU(emb) [B,Temb] -> out [B,Cout,H,W] (allocated by
//   the caller). The block's weights are in r (ldm/unet.h names them), the
//   group count and epsilon in u->cfg. Use the checked op wrappers and this
//   file's conv() and linear() (they count FLOPs); temporaries come from the
//   UNet's arena u->arena and go back to it before you return.
//   Return 0, or LDM_ERR when out of memory.
static int resblock_forward(ldm_unet *u, ldm_tensor *out, const ldm_tensor *x,
                            const ldm_tensor *semb, const ldm_unet_resblock *r) {
    // TODO: your code here
    return 0;
}
