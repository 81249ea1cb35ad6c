/*
 * ldm/unet.h -- the conditional UNet denoiser eps_theta(x_t, t, context) of
 * latent diffusion (LDM paper section 3.3, eq. 3), SD1 and SD2 family.
 *
 * Mirrors diffusers' UNet2DConditionModel (and CompVis openaimodel.py
 * UNetModel) for the configurations a diffusers unet/config.json of this
 * family describes (see ldm/model.h, ldm_unet_config). The network is built
 * as a literal TABLE of blocks (ldm_unet_block, top to bottom = the order the
 * forward pass runs them, = the paper's figure read left to right):
 *
 *   conv_in -> [ResBlock (+ SpatialTransformer)] x L, Downsample  per level
 *           -> mid: ResBlock, SpatialTransformer, ResBlock
 *           -> [concat skip, ResBlock (+ SpatialTransformer)] x (L+1), Upsample
 *           -> GroupNorm, SiLU, conv_out
 *
 * `sd unet --table` prints the table of a model. Block names are the diffusers
 * module paths ("down_blocks.0.resnets.1"): weights are loaded by those names
 * (ldm/io/weights.c maps them for CompVis files) and dumps (ldm/io/dump.h) are
 * written as "unet.<name>".
 *
 * Class labels: a config with num_class_embeds (the x4 upscaler) has a table
 * class_embedding [num_class_embeds,Temb]; row label[b] is added to the time
 * embedding before the ResBlocks see it (ldm_unet_forward_class).
 *
 * DeepCache (off by default; ldm_unet_deepcache below): a forward may reuse
 * the deep feature a full forward kept, running only the shallow rows.
 *
 * Left out: SDXL's added conditioning, other class embedding types, inpainting-specific
 * handling beyond in_channels, transformer depth per block given as a list,
 * latents whose sides are not a multiple of 2^(levels-1).
 */
#ifndef LDM_UNET_H
#define LDM_UNET_H

#include <stdint.h>
#include "ldm/model.h"
#include "ldm/core/arena.h"
#include "ldm/core/tensor.h"
#include "ldm/io/weights.h"

// ResnetBlock2D (CompVis ResBlock). Cin may include a concatenated skip.
typedef struct ldm_unet_resblock {
    int cin, cout;
    ldm_tensor norm1_w, norm1_b;   // [Cin]
    ldm_tensor conv1_w, conv1_b;   // [Cout,Cin,3,3], [Cout]
    ldm_tensor temb_w, temb_b;     // time_emb_proj: [Cout,Temb], [Cout]
    ldm_tensor norm2_w, norm2_b;   // [Cout]
    ldm_tensor conv2_w, conv2_b;   // [Cout,Cout,3,3], [Cout]
    ldm_tensor short_w, short_b;   // conv_shortcut [Cout,Cin,1,1], [Cout]; data NULL if Cin == Cout
} ldm_unet_resblock;

// diffusers Attention (CompVis CrossAttention): D = NH*HS, Dkv = D (self) or Dc (cross).
typedef struct ldm_unet_attn {
    ldm_tensor q_w;                // to_q [D,D] (no bias)
    ldm_tensor k_w, v_w;           // to_k, to_v [D,Dkv] (no bias)
    ldm_tensor out_w, out_b;       // to_out.0 [D,D], [D]
} ldm_unet_attn;

// BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward.
typedef struct ldm_unet_tblock {
    ldm_tensor norm1_w, norm1_b;   // [D]
    ldm_unet_attn attn1;           // self
    ldm_tensor norm2_w, norm2_b;   // [D]
    ldm_unet_attn attn2;           // cross, keys/values from the context [B,T,Dc]
    ldm_tensor norm3_w, norm3_b;   // [D]
    ldm_tensor ff1_w, ff1_b;       // ff.net.0.proj [8D,D], [8D]  (GEGLU: a | gate, F = 4D)
    ldm_tensor ff2_w, ff2_b;       // ff.net.2 [D,4D], [D]
} ldm_unet_tblock;

// Transformer2DModel (CompVis SpatialTransformer).
typedef struct ldm_unet_transformer {
    int c, d, heads, depth;        // C channels in/out, D = heads*HS inner width
    int linear;                    // 1: proj_in/out are Linear after flattening (SD2); 0: 1x1 conv (SD1)
    ldm_tensor norm_w, norm_b;     // GroupNorm [C], eps 1e-6
    ldm_tensor proj_in_w, proj_in_b;   // [D,C,1,1] or [D,C]; [D]
    ldm_unet_tblock *blocks;           // [depth] transformer_blocks.k
    ldm_tensor proj_out_w, proj_out_b; // [C,D,1,1] or [C,D]; [C]
    int only_cross;                    // 1: attn1 takes keys/values from the context too
                                       // (diffusers only_cross_attention; the x4 upscaler)
} ldm_unet_transformer;

// Skips pushed on the down path: conv_in, each level's ResBlocks and its downsampler.
#define LDM_UNET_MAX_SKIPS (LDM_MAX_LEVELS * 16)

typedef enum ldm_unet_kind {
    LDM_UNET_CONV_IN,   // conv3x3 in_channels -> C0
    LDM_UNET_RES,       // ResnetBlock2D (up path: concat the popped skip first)
    LDM_UNET_ATTN,      // Transformer2DModel
    LDM_UNET_DOWN,      // Downsample2D: conv3x3 stride 2 pad 1
    LDM_UNET_UP,        // Upsample2D: nearest x2, conv3x3
    LDM_UNET_OUT,       // conv_norm_out (GroupNorm), SiLU, conv_out
} ldm_unet_kind;

// One row of the block table.
typedef struct ldm_unet_block {
    ldm_unet_kind kind;
    char name[48];        // diffusers module path, e.g. "up_blocks.1.attentions.2"
    char group[24];       // non-empty on the last row of a diffusers block ("down_blocks.0", "mid_block")
    int level;            // resolution level: the latent is downsampled by 2^level here
    int cin, cout;        // channels in (including a concatenated skip) and out
    int skip;             // RES on the up path: channels of the skip popped and concatenated (0: none)
    int push;             // 1: output is pushed on the skip stack (down path)
    int heads;            // ATTN: number of heads NH (HS = cout / NH)
    ldm_unet_resblock res;        // kind RES
    ldm_unet_transformer tr;      // kind ATTN
    ldm_tensor conv_w, conv_b;    // CONV_IN/DOWN/UP/OUT: [Cout,Cin,3,3], [Cout]
    ldm_tensor norm_w, norm_b;    // OUT: conv_norm_out [C0]
    double flops;                 // FLOPs of this row in the last forward (GEMM-like ops)
    double secs;                  // wall-clock seconds of this row in the last forward (host
                                  // clock: on an asynchronous backend, only indicative)
} ldm_unet_block;

// DeepCache (Ma, Fang, Wang, "DeepCache: Accelerating Diffusion Models for
// Free", CVPR 2024): the deep part of the UNet changes little from one step
// to the next, so a full forward keeps the feature entering the up-path row of
// skip branch m, and the following "cached" forwards run only the rows that
// feed skips 0..m (the shallow down path) and the up path from that row on,
// with the kept feature in place of everything deeper. An approximation: off
// by default; the caller picks which forwards are cached (ldm/pipeline.c:
// every N-th model call of an image runs in full).
typedef struct ldm_unet_deepcache {
    int on;              // 0: off (every forward is exact)
    int branch;          // skip branch m: the skip stack index (0 = conv_in's, the shallowest;
                         // the reference implementation's cache_branch_id)
    int down_end;        // rows [0, down_end] feed skips 0..m (down_end pushes skip m)
    int up_start;        // rows [up_start, n_blocks) run from the kept feature (up_start pops skip m)
    int reuse;           // set before a forward: 1 = a cached step (when the kept feature fits
                         // the input's shape; else the forward runs in full and keeps a new one)
    int was_cached;      // out: 1 when the last forward was a cached step
    ldm_tensor feat;     // owned: input of row up_start at the last full forward
                         // [B,C_up,h',w']; data NULL: nothing kept
} ldm_unet_deepcache;

typedef struct ldm_unet {
    ldm_unet_config cfg;
    const struct ldm_ops *ops;
    int temb;                      // time embedding width: 4*C0 (1280 for SD)
    ldm_tensor time_w1, time_b1;   // time_embedding.linear_1 [Temb,C0], [Temb]
    ldm_tensor time_w2, time_b2;   // time_embedding.linear_2 [Temb,Temb], [Temb]
    ldm_tensor class_w;            // class_embedding.weight [num_class_embeds,Temb]; data NULL
                                   // without one (the x4 upscaler's noise-level embedding)
    ldm_unet_block *blocks;        // [n_blocks], the table
    int n_blocks;
    int64_t n_params;
    ldm_arena arena;               // activations of a forward; arena.peak = bytes at the peak
                                   // of the last ldm_unet_forward (ldm/core/arena.h)
    // Measured by the last ldm_unet_forward:
    double flops;                  // GEMM-like FLOPs (2*M*K*N, conv as GEMM, attention 4*B*NH*Tq*Tk*HS)
    // Optional observer of every named output (tests): called with the dump
    // name ("unet.down_blocks.0.resnets.0") and the tensor, after ldm_dump.
    // The tensor is arena memory, valid during the call only (an attention
    // row updates its input in place): copy what you keep.
    void (*hook)(void *ctx, const char *name, const ldm_tensor *t);
    void *hook_ctx;
    // Low-memory mode (ldm_weights.low_memory): the file the weights point
    // into; its mapped pages are dropped after every block, so about one
    // block's weights are resident at a time. NULL: weights stay resident.
    const ldm_tensor_file *release_file;
    // DeepCache (section 4b of ldm/unet.c; off unless deepcache.on).
    ldm_unet_deepcache deepcache;
} ldm_unet;

// Fill the block table from cfg without weights (for printing and FLOP
// estimates). 0 / LDM_ERR when cfg is not a supported configuration.
int ldm_unet_build(ldm_unet *u, const ldm_unet_config *cfg);
// Build and load every weight by diffusers name from w (uploaded to w->ops).
// 0 / LDM_ERR (missing tensor or wrong shape: named in the message).
int ldm_unet_load(ldm_unet *u, const ldm_unet_config *cfg, ldm_weights *w);
// Same table with deterministic random weights (benchmarks; no file needed).
int ldm_unet_init_random(ldm_unet *u, const ldm_unet_config *cfg, const struct ldm_ops *ops);
void ldm_unet_free(ldm_unet *u);

// eps = UNet(x, t, context)        (LDM eq. 3's eps_theta; context enters by cross-attention, sec. 3.3)
//   x [B,Cin,h,w], t[B] host floats (fractional allowed, one per batch element),
//   context [B,T,Dc] -> out [B,Cout,h,w] (allocated by the caller on u->ops).
// 0 / LDM_ERR on shapes that do not fit the model or out of memory.
int ldm_unet_forward(ldm_tensor *out, ldm_unet *u, const ldm_tensor *x, const float *t,
                     const ldm_tensor *context);
// The same with class labels [B] (host ints in [0, num_class_embeds)): the time
// embedding becomes emb(t) + class_embedding[labels[b]] (diffusers
// class_embed_type None). Required when the config has num_class_embeds
// (labels NULL is then an error); ldm_unet_forward passes NULL.
int ldm_unet_forward_class(ldm_tensor *out, ldm_unet *u, const ldm_tensor *x, const float *t,
                           const int *labels, const ldm_tensor *context);

// DeepCache (ldm_unet_deepcache): number of skip branches this UNet has
// (branches 0..n-1: one per skip the down path pushes).
int ldm_unet_deepcache_branches(const ldm_unet *u);
// Turn DeepCache on for skip branch m (0..ldm_unet_deepcache_branches-1) with
// nothing kept: the next forward runs in full. 0 / LDM_ERR (a branch this UNet
// lacks, named with the range).
int ldm_unet_deepcache_on(ldm_unet *u, int branch);
// Turn it off and free the kept feature: every forward exact again.
void ldm_unet_deepcache_off(ldm_unet *u);

// Sinusoidal timestep embedding on the host, as diffusers get_timestep_embedding
// in float32: t[B] -> out[B,dim]; flip_sin_to_cos gives [cos | sin].
void ldm_unet_timestep_embedding(float *out, const float *t, int B, int dim, int flip_sin_to_cos,
                                 float freq_shift);

// Parse a diffusers unet/config.json (text in memory; path for messages).
// Rejects features this UNet does not implement, naming the field.
int ldm_unet_config_from_json(ldm_unet_config *c, const char *json, const char *path);

// The SD1.x ("sd1") or SD2.x ("sd2") UNet config, as their diffusers
// config.json describe them. 0 / LDM_ERR on an unknown name.
int ldm_unet_config_preset(ldm_unet_config *c, const char *name);

// Print the block table (level, resolution, channels, heads, skip; GFLOP,
// seconds and GFLOPS of the last forward) to a FILE* (NULL: stdout).
void ldm_unet_print_table(const ldm_unet *u, void *file);

#endif
