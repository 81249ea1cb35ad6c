/*
 * ldm/vae.h -- the autoencoder between pixels and latents (AutoencoderKL).
 *
 * Mirrors diffusers' AutoencoderKL (models/autoencoders/autoencoder_kl.py,
 * vae.py: Encoder, Decoder, DiagonalGaussianDistribution) and the CompVis
 * `ldm/modules/diffusionmodules/model.py` it was ported from (LDM paper,
 * section 3 and appendix G). With the SD config (block_out_channels
 * [128,256,512,512], layers_per_block 2, latent_channels 4):
 *
 *   encode: x [B,3,H,W] in [-1,1] -> Encoder -> quant_conv -> moments
 *           [B,8,H/8,W/8] = (mean, logvar) -> z = mean (or mean + std*noise)
 *           -> latent = z * scaling_factor (0.18215)
 *   decode: latent [B,4,h,w] -> z = latent / scaling_factor -> post_quant_conv
 *           -> Decoder -> x [B,3,8h,8w] in (about) [-1,1]
 *
 * Weights are asked for by their diffusers AutoencoderKL state-dict names
 * ("decoder.up_blocks.0.resnets.0.norm1.weight"); ldm/io/weights.c maps them to
 * the CompVis keys ("first_stage_model.decoder.up.3.block.0.norm1.weight").
 *
 * Large images are decoded/encoded in overlapping tiles whose seams are blended
 * linearly; tiling is chosen automatically when the estimated untiled working
 * set exceeds a memory budget. The mid-block attention is global, so a tiled
 * result differs from the untiled one by design (docs/04-vae.md).
 *
 * Left out: the VQ variants (VQModel), AutoencoderTiny, temporal decoders,
 * shift_factor/latents_mean (SD3, Flux), the fp16 "force_upcast" logic (we
 * compute in fp32).
 */
#ifndef LDM_VAE_H
#define LDM_VAE_H

#include <stdint.h>
#include "ldm/model.h"
#include "ldm/core/arena.h"
#include "ldm/core/tensor.h"
#include "ldm/io/tensorfile.h"
#include "ldm/io/weights.h"

#define LDM_VAE_MAX_LAYERS 8   // resnets per level (decoder: layers_per_block + 1)

// ---- weights ----------------------------------------------------------------
// ResnetBlock2D (temb None): GN -> swish -> conv3x3 -> GN -> swish -> conv3x3,
// plus x (or conv_shortcut(x), 1x1, when Cin != Cout).
typedef struct ldm_vae_resnet {
    int cin, cout;
    ldm_tensor norm1_w, norm1_b;          // [Cin]
    ldm_tensor conv1_w, conv1_b;          // [Cout,Cin,3,3], [Cout]
    ldm_tensor norm2_w, norm2_b;          // [Cout]
    ldm_tensor conv2_w, conv2_b;          // [Cout,Cout,3,3], [Cout]
    ldm_tensor shortcut_w, shortcut_b;    // [Cout,Cin,1,1], [Cout]; data NULL when Cin == Cout
} ldm_vae_resnet;

// Single-head self-attention over the H*W positions (diffusers Attention with
// heads = 1, residual_connection = True; CompVis AttnBlock).
typedef struct ldm_vae_attn {
    int c;
    ldm_tensor norm_w, norm_b;            // group_norm [C]
    ldm_tensor q_w, q_b;                  // to_q [C,C], [C]
    ldm_tensor k_w, k_b;                  // to_k [C,C], [C]
    ldm_tensor v_w, v_b;                  // to_v [C,C], [C]
    ldm_tensor o_w, o_b;                  // to_out.0 [C,C], [C]
} ldm_vae_attn;

// UNetMidBlock2D: resnet, attention (optional), resnet -- all at C channels.
typedef struct ldm_vae_mid {
    ldm_vae_resnet res0, res1;
    ldm_vae_attn attn;
    int has_attn;
} ldm_vae_mid;

// One resolution level: DownEncoderBlock2D / UpDecoderBlock2D.
typedef struct ldm_vae_level {
    int n_resnets;
    ldm_vae_resnet resnets[LDM_VAE_MAX_LAYERS];
    int has_sample;                        // downsampler (encoder) / upsampler (decoder)
    ldm_tensor sample_w, sample_b;         // [C,C,3,3], [C]
} ldm_vae_level;

typedef struct ldm_vae_encoder {
    ldm_tensor conv_in_w, conv_in_b;       // [C0,3,3,3], [C0]
    ldm_vae_level down[LDM_MAX_LEVELS];    // down_blocks.i
    ldm_vae_mid mid;                       // at C_last
    ldm_tensor norm_out_w, norm_out_b;     // conv_norm_out [C_last]
    ldm_tensor conv_out_w, conv_out_b;     // [2*Z,C_last,3,3], [2*Z]
} ldm_vae_encoder;

typedef struct ldm_vae_decoder {
    ldm_tensor conv_in_w, conv_in_b;       // [C_last,Z,3,3], [C_last]
    ldm_vae_mid mid;                       // at C_last
    ldm_vae_level up[LDM_MAX_LEVELS];      // up_blocks.i (i = 0 is the deepest level)
    ldm_tensor norm_out_w, norm_out_b;     // conv_norm_out [C0]
    ldm_tensor conv_out_w, conv_out_b;     // [3,C0,3,3], [3]
} ldm_vae_decoder;

// Which halves to load (the txt2img pipeline needs only the decoder).
#define LDM_VAE_ENCODER 1
#define LDM_VAE_DECODER 2

typedef struct ldm_vae {
    ldm_vae_config cfg;
    const struct ldm_ops *ops;
    int parts;                             // LDM_VAE_ENCODER | LDM_VAE_DECODER
    ldm_vae_encoder enc;
    ldm_vae_decoder dec;
    ldm_tensor quant_w, quant_b;           // quant_conv [2Z,2Z,1,1], [2Z] (if use_quant_conv)
    ldm_tensor post_quant_w, post_quant_b; // post_quant_conv [Z,Z,1,1], [Z] (if use_post_quant_conv)
    int64_t n_params;
    ldm_arena arena;                       // activations; arena.peak = bytes at the peak of the
                                           // last encode/decode (ldm/core/arena.h)
    // Low-memory mode (ldm_weights.low_memory): the file the weights point
    // into; the decoder drops its mapped pages after each level. NULL: kept.
    const ldm_tensor_file *release_file;
} ldm_vae;

// Checks a config for what this implementation supports (levels, groups
// dividing channels, ...). 0 / LDM_ERR naming the field.
int ldm_vae_config_check(const ldm_vae_config *cfg);
// (config.json is parsed by ldm_vae_config_parse, the SD preset is
// ldm_vae_config_sd: ldm/model.h.)

// Load the weights of `parts` through w (diffusers names). 0 / LDM_ERR naming
// the tensor; on failure everything loaded so far is freed.
int ldm_vae_load(ldm_vae *vae, const ldm_vae_config *cfg, ldm_weights *w, int parts);
void ldm_vae_free(ldm_vae *vae);

// A VAE on its own (sd --vae FILE): ldm_vae_file_open, with the model
// discovery in ldm/model.h.

// ---- forward ------------------------------------------------------------------
// Options for the high-level calls. Zeroed struct = defaults.
typedef enum ldm_vae_tiling { LDM_VAE_TILE_AUTO = 0, LDM_VAE_TILE_OFF, LDM_VAE_TILE_ON } ldm_vae_tiling;
typedef struct ldm_vae_options {
    ldm_vae_tiling tiling;    // AUTO: tile when the estimate exceeds budget_mb
    int64_t budget_mb;        // 0: 4096 (the CLI passes --vae-budget-mb or $LDM_VAE_BUDGET_MB)
    int tile_latent;          // tile side in latent pixels (0: 64 = 512 px)
    int overlap_latent;       // overlap between tiles in latent pixels (0: tile/4)
    int verbose;              // 1: print the tiling decision on stderr
} ldm_vae_options;

// Raw encoder + quant_conv: x [B,Cin,H,W] -> moments [B,2Z,H/f,W/f] (f = 2^(L-1)).
// H and W must be multiples of f. `moments` is a new tensor. 0 / LDM_ERR.
int ldm_vae_encoder_forward(ldm_tensor *moments, ldm_vae *vae, const ldm_tensor *x);
// Raw post_quant_conv + decoder: z [B,Z,h,w] (unscaled) -> x [B,Cout,f*h,f*w].
// `x` is a new tensor. 0 / LDM_ERR.
int ldm_vae_decoder_forward(ldm_tensor *x, ldm_vae *vae, const ldm_tensor *z);

// Encode pixels x [B,3,H,W] in [-1,1] -> latent [B,Z,H/f,W/f] already multiplied
// by scaling_factor. noise == NULL: the posterior mean; else noise [B,Z,h,w]
// (standard normal, from the caller's RNG) gives mean + exp(logvar/2) * noise.
// Tiled as `opt` says. 0 / LDM_ERR.
int ldm_vae_encode(ldm_tensor *latent, ldm_vae *vae, const ldm_tensor *x,
                   const ldm_tensor *noise, const ldm_vae_options *opt);
// Decode a (scaled) latent [B,Z,h,w] -> image [B,3,f*h,f*w] in about [-1,1]:
// divides by scaling_factor first. Tiled as `opt` says. 0 / LDM_ERR.
int ldm_vae_decode(ldm_tensor *image, ldm_vae *vae, const ldm_tensor *latent,
                   const ldm_vae_options *opt);

// Diagonal Gaussian posterior (LDM eq. 25 / diffusers DiagonalGaussianDistribution)
// on host floats: moments [B,2Z,S] -> z [B,Z,S] = mean + exp(0.5*clamp(logvar,
// -30,20)) * noise (noise NULL: mean).
void ldm_vae_posterior(float *z, const float *moments, const float *noise, int64_t B, int64_t Z,
                       int64_t S);

// KL(q(z|x) || N(0,I)) = 0.5 * sum(mean^2 + var - 1 - logvar) over [Z,S] per
// sample: moments [B,2Z,S] -> kl [B] (diffusers DiagonalGaussianDistribution.kl()).
void ldm_vae_kl(float *kl, const float *moments, int64_t B, int64_t Z, int64_t S);

// Estimated peak bytes of activations of an untiled decode / encode at this
// size (the largest few live tensors; excludes weights). Used for AUTO tiling.
int64_t ldm_vae_decode_bytes(const ldm_vae_config *cfg, int64_t B, int64_t h, int64_t w);
int64_t ldm_vae_encode_bytes(const ldm_vae_config *cfg, int64_t B, int64_t H, int64_t W);

// ---- pixels <-> [-1,1] ----------------------------------------------------------
// rgb [H][W][3] uint8 -> x [3,H,W] = 2 * (p / 255) - 1 (diffusers and CompVis agree).
void ldm_pixels_to_unit(float *x, const uint8_t *rgb, int64_t H, int64_t W);
// x [3,H,W] -> rgb [H][W][3]. truncate = 0: diffusers, round(clamp(x/2+0.5,0,1)*255);
// truncate = 1: CompVis, (uint8)(clamp((x+1)/2,0,1)*255). Returns the number of
// non-finite values found (written as 0); the caller reports them.
int64_t ldm_unit_to_pixels(uint8_t *rgb, const float *x, int64_t H, int64_t W, int truncate);

#endif
