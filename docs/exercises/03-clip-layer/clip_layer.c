// One pre-LN CLIP encoder layer, in place on x [B,T,D]
// (transformers CLIPEncoderLayer, open_clip ResidualAttentionBlock).
// The layer's weights are in L (ldm/clip.h names them), the model's
// configuration in m->cfg. Use the checked op wrappers of ldm/backend/ops.h;
// temporaries come from the encoder's arena m->arena and go back to it before
// you return. Return 0, or LDM_ERR when out of memory.
static int clip_layer_forward(ldm_clip *m, ldm_tensor *x, const ldm_clip_layer *L) {
    // TODO: your code here
    return 0;
}
