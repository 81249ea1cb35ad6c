/*
 * ldm/unet.c -- the conditional UNet eps_theta(x_t, t, y) of latent diffusion
 * (Rombach et al. 2022, section 3.3), SD1 and SD2 family.
 *
 * Mirrors diffusers UNet2DConditionModel (unets/unet_2d_condition.py with
 * ResnetBlock2D, Transformer2DModel, BasicTransformerBlock, Attention, GEGLU,
 * Downsample2D, Upsample2D) = CompVis openaimodel.py UNetModel +
 * attention.py SpatialTransformer. Weights are asked for by diffusers name;
 * ldm/io/weights.c maps them for CompVis single files.
 *
 * Teaching order of this file:
 *   1. activations (from the UNet's arena) and the FLOP counting wrappers
 *      around the GEMM-like ops
 *   2. the timestep embedding (DDPM's sinusoidal position encoding)
 *   3. ResBlock, attention, transformer block, spatial transformer
 *   4. the block table (built from the config: read it next to the paper's
 *      figure) and the forward pass that walks it with a skip stack
 *   5. weight loading by diffusers name (or deterministic random weights)
 *   6. config.json parsing (with the diffusers head-count quirk) and presets
 *   7. printing the table
 *
 * Memory: weights are resident; activations live in the UNet's arena
 * (ldm/core/arena.h), reset at each forward. A block releases its temporaries
 * to a mark before it returns; a row's output then moves down over the inputs
 * it consumed (ldm_arena_release_keep), so only the skips, the running
 * activation and one block's temporaries are ever held. Attention goes through
 * the op table's memory-bounded attention; the GEGLU feed-forward runs in row
 * chunks of at most 32 MiB, so no temporary grows with the square of the
 * image size.
 *
 * The x4 upscaler's two extras are here too: the class embedding (a table
 * row per noise level, added to the time embedding) and only_cross_attention
 * (attn1 attends to the context instead of the image tokens).
 *
 * Left out: SDXL added conditioning, class embeddings other than a table
 * (class_embed_type "timestep"/"projection"/...), dual cross-attention,
 * "scale_shift" time embedding norm, per-block lists of transformer depth,
 * latents whose sides are not multiples of 2^(levels-1) (diffusers then
 * passes an explicit upsample size; CompVis fails).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ldm/io/json.h"   // cJSON and the strict field readers (section 6)
#include "ldm/io/dump.h"
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
#include "ldm/unet.h"

// ---- 1. activations and FLOP counting -----------------------------------------
//
// Every activation comes from the UNet's arena u->arena (ldm/core/arena.h).
// ldm_unet_forward resets it; each block takes its temporaries after a mark
// and releases them to that mark before it returns, leaving only its output.
// A failed allocation returns LDM_ERR straight up: the next reset frees it all.

// New activation [dims...] from the UNet's arena: if (ACT(u, &q, B, T, D)) return LDM_ERR;
#define ACT(u, t, ...) ldm_arena_tensor(&(u)->arena, t, LDM_SHAPE(__VA_ARGS__))
// x [..., K], w [N,K] -> out [..., N]; 2*M*K*N FLOPs
static void linear(ldm_unet *u, ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w,
                   const ldm_tensor *b) {
    u->flops += 2.0 * (double)(x->numel / w->shape[1]) * (double)w->shape[1] * (double)w->shape[0];
    ldm_linear(out, x, w, b);
}

// x [B,Cin,H,W], w [Cout,Cin,k,k] -> out [B,Cout,Ho,Wo], pad on every side;
// as a GEMM: 2 * (B*Cout*Ho*Wo) * (Cin*k*k) FLOPs
static void conv(ldm_unet *u, ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w,
                 const ldm_tensor *b, int64_t stride, int64_t pad) {
    u->flops += 2.0 * (double)out->numel * (double)(w->shape[1] * w->shape[2] * w->shape[3]);
    ldm_conv2d(out, x, w, b, stride, pad, pad, pad, pad);
}

// q [B,Tq,D], k,v [B,Tk,D] -> out [B,Tq,D], NH heads of HS = D/NH, scale HS^-0.5;
// QK^T and PV: 4*B*NH*Tq*Tk*HS FLOPs
static void attention(ldm_unet *u, ldm_tensor *out, const ldm_tensor *q, const ldm_tensor *k,
                      const ldm_tensor *v, int64_t NH) {
    int64_t B = q->shape[0], Tq = q->shape[1], D = q->shape[2], Tk = k->shape[1];
    u->flops += 4.0 * (double)B * (double)Tq * (double)Tk * (double)D;
    ldm_attention(out, q, k, v, NH, 1.0f / sqrtf((float)(D / NH)), 0);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Every named output goes to ldm_dump ("unet.<name>") and the optional hook.
static void emit(ldm_unet *u, const ldm_tensor *t, const char *name) {
    char full[96];
    snprintf(full, sizeof full, "unet.%s", name);
    ldm_dump(t, "%s", full);
    if (u->hook) u->hook(u->hook_ctx, full, t);
}

// ---- 2. timestep embedding ------------------------------------------------------

// t[B] -> out[B,dim]: freq_i = exp(-ln(10000) * i / (half - shift)), i < half,
// out = [sin(t freq) | cos(t freq)], swapped to [cos | sin] when flip_sin_to_cos
// (SD: flip, shift 0 = CompVis timestep_embedding). Computed in float32 step by
// step like diffusers get_timestep_embedding, so fractional t match bit-closely.
void ldm_unet_timestep_embedding(float *out, const float *t, int B, int dim, int flip_sin_to_cos,
                                 float freq_shift) {
    int half = dim / 2;
    for (int b = 0; b < B; b++) {
        float *o = out + (int64_t)b * dim;
        for (int i = 0; i < half; i++) {
            float e = (float)(-log(10000.0)) * (float)i;
            e = e / ((float)half - freq_shift);
            float arg = t[b] * expf(e);
            float s = (float)sin((double)arg), c = (float)cos((double)arg);
            o[flip_sin_to_cos ? half + i : i] = s;
            o[flip_sin_to_cos ? i : half + i] = c;
        }
        if (dim % 2) o[dim - 1] = 0.0f;
    }
}

// ---- 3. blocks -----------------------------------------------------------------

// ResBlock (ResnetBlock2D): x [B,Cin,H,W], semb = SiLU(emb) [B,Temb] -> out [B,Cout,H,W]
//   h = conv1(SiLU(GN(x))) + time_emb_proj(semb)[:, :, None, None]
//   out = conv2(SiLU(GN(h))) + shortcut(x)       (shortcut: identity or 1x1 conv)
static int resblock_forward(ldm_unet *u, ldm_tensor *out, const ldm_tensor *x,
                            const ldm_tensor *semb, const ldm_unet_resblock *r) {
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    int64_t G = u->cfg.norm_num_groups;
    float eps = u->cfg.norm_eps;
    ldm_tensor h, a, tp;
    size_t m = ldm_arena_mark(&u->arena);
    if (ACT(u, &h, B, r->cout, H, W)) return LDM_ERR;                 // h [B,Cout,H,W]
    size_t ma = ldm_arena_mark(&u->arena);                            // a: one at a time
    // in_layers: GroupNorm -> SiLU -> conv3x3                         a [B,Cin,H,W]
    if (ACT(u, &a, B, r->cin, H, W)) return LDM_ERR;
    ldm_group_norm(&a, x, &r->norm1_w, &r->norm1_b, G, eps);
    ldm_silu(&a, &a);
    conv(u, &h, &a, &r->conv1_w, &r->conv1_b, 1, 1);
    ldm_arena_release(&u->arena, ma);
    // emb_layers: Linear(SiLU(emb)), broadcast over H,W               tp [B,Cout]
    if (ACT(u, &tp, B, r->cout)) return LDM_ERR;
    linear(u, &tp, semb, &r->temb_w, &r->temb_b);
    ldm_add_channel(&h, &h, &tp);
    ldm_arena_release(&u->arena, ma);
    // out_layers: GroupNorm -> SiLU -> dropout (identity) -> conv3x3  a [B,Cout,H,W]
    if (ACT(u, &a, B, r->cout, H, W)) return LDM_ERR;
    ldm_group_norm(&a, &h, &r->norm2_w, &r->norm2_b, G, eps);
    ldm_silu(&a, &a);
    conv(u, out, &a, &r->conv2_w, &r->conv2_b, 1, 1);
    // skip connection: 1x1 conv when the channel count changes (into h's memory)
    if (r->short_w.data) {
        conv(u, &h, x, &r->short_w, &r->short_b, 1, 0);
        ldm_add(out, out, &h);
    } else {
        ldm_add(out, out, x);
    }
    ldm_arena_release(&u->arena, m);
    return 0;
}

// Attention: xq [B,Tq,D], xkv [B,Tk,Dkv] -> out [B,Tq,D]
//   softmax(Q K^T / sqrt(HS)) V per head, Q = xq Wq, K = xkv Wk, V = xkv Wv,
//   then to_out.0. Self-attention: xkv = xq. Cross-attention: xkv = context
//   (LDM sec. 3.3: Q from the image tokens, K and V from the text tokens).
static int attn_forward(ldm_unet *u, ldm_tensor *out, const ldm_tensor *xq,
                        const ldm_tensor *xkv, const ldm_unet_attn *at, int heads) {
    int64_t B = xq->shape[0], Tq = xq->shape[1], Tk = xkv->shape[1], D = at->q_w.shape[0];
    ldm_tensor q, k, v, o;
    size_t m = ldm_arena_mark(&u->arena);
    if (ACT(u, &q, B, Tq, D) || ACT(u, &k, B, Tk, D) || ACT(u, &v, B, Tk, D) ||
        ACT(u, &o, B, Tq, D))
        return LDM_ERR;
    linear(u, &q, xq, &at->q_w, NULL);
    linear(u, &k, xkv, &at->k_w, NULL);
    linear(u, &v, xkv, &at->v_w, NULL);
    attention(u, &o, &q, &k, &v, heads);
    linear(u, out, &o, &at->out_w, &at->out_b);
    ldm_arena_release(&u->arena, m);
    return 0;
}

// Floats of the feed-forward's [rows, 8D] temporary: it runs FF_CHUNK_FLOATS/8D
// token rows at a time (32 MiB, plus 16 MiB for the [rows, 4D] GEGLU output),
// whatever the image size; >= 800 rows per GEMM even at D = 1280.
#define FF_CHUNK_FLOATS ((int64_t)8 << 20)

// BasicTransformerBlock, in place on the tokens x [B,S,D]; context [B,T,Dc]:
//   x += attn1(LN1(x));  x += attn2(LN2(x), context);  x += FF(LN3(x))
//   only_cross (x4 upscaler): x += attn1(LN1(x), context) -- two cross-attentions
//   FF(y) = ff.net.2( a * GELU(gate) ),  [a | gate] = ff.net.0.proj(y)   (GEGLU)
static int tblock_forward(ldm_unet *u, ldm_tensor *x, const ldm_tensor *ctx,
                          const ldm_unet_tblock *tb, int heads, int only_cross) {
    int64_t B = x->shape[0], S = x->shape[1], D = x->shape[2], N = B * S;
    int64_t F2 = tb->ff1_w.shape[0], F = F2 / 2;
    int64_t R = FF_CHUNK_FLOATS / F2 < 1 ? 1 : FF_CHUNK_FLOATS / F2;   // FF rows per chunk
    if (R > N) R = N;
    ldm_tensor n, a, f2, f;
    size_t m = ldm_arena_mark(&u->arena);
    if (ACT(u, &n, B, S, D) || ACT(u, &a, B, S, D)) return LDM_ERR;
    // self-attention (only_cross: a first cross-attention to the context)
    ldm_layer_norm(&n, x, &tb->norm1_w, &tb->norm1_b, 1e-5f);
    if (attn_forward(u, &a, &n, only_cross ? ctx : &n, &tb->attn1, heads)) return LDM_ERR;
    ldm_add(x, x, &a);
    // cross-attention to the context
    ldm_layer_norm(&n, x, &tb->norm2_w, &tb->norm2_b, 1e-5f);
    if (attn_forward(u, &a, &n, ctx, &tb->attn2, heads)) return LDM_ERR;
    ldm_add(x, x, &a);
    // GEGLU feed-forward, R token rows at a time                     f2 [R,8D], f [R,4D]
    ldm_layer_norm(&n, x, &tb->norm3_w, &tb->norm3_b, 1e-5f);
    if (ACT(u, &f2, R, F2) || ACT(u, &f, R, F)) return LDM_ERR;
    ldm_tensor n2 = ldm_tensor_view(&n, LDM_SHAPE(N, D)), a2 = ldm_tensor_view(&a, LDM_SHAPE(N, D));
    for (int64_t r0 = 0; r0 < N; r0 += R) {
        int64_t r = N - r0 < R ? N - r0 : R;
        ldm_tensor nr = ldm_tensor_slice0(&n2, r0, r), ar = ldm_tensor_slice0(&a2, r0, r);
        ldm_tensor f2r = ldm_tensor_slice0(&f2, 0, r), fr = ldm_tensor_slice0(&f, 0, r);
        linear(u, &f2r, &nr, &tb->ff1_w, &tb->ff1_b);   // [r,8D]
        ldm_geglu(&fr, &f2r);                           // [r,4D]
        linear(u, &ar, &fr, &tb->ff2_w, &tb->ff2_b);    // [r,D]
    }
    ldm_add(x, x, &a);
    ldm_arena_release(&u->arena, m);
    return 0;
}

// SpatialTransformer (Transformer2DModel), in place on x [B,C,H,W]; context [B,T,Dc]:
//   SD1: tokens = [B,S,D] of proj_in(GN(x)) (1x1 conv), x += proj_out(blocks(tokens))
//   SD2: tokens = proj_in(flatten(GN(x))) (Linear),     x += unflatten(proj_out(blocks(tokens)))
// (in place: the residual x + ... is the block's output, in x's memory)
static int transformer_forward(ldm_unet *u, ldm_tensor *x, const ldm_tensor *ctx,
                               const ldm_unet_transformer *tr) {
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], S = H * W;
    int64_t D = tr->d;
    ldm_tensor tok, g, p, o;
    size_t m = ldm_arena_mark(&u->arena);
    if (ACT(u, &tok, B, S, D)) return LDM_ERR;                         // tok [B,S,D]
    size_t mg = ldm_arena_mark(&u->arena);
    // GroupNorm, eps 1e-6 (Transformer2DModel / CompVis Normalize)     g [B,C,H,W]
    if (ACT(u, &g, B, C, H, W)) return LDM_ERR;
    ldm_group_norm(&g, x, &tr->norm_w, &tr->norm_b, u->cfg.norm_num_groups, 1e-6f);
    if (!tr->linear) {
        // proj_in 1x1 conv [B,C,H,W] -> [B,D,H,W], then [B,D,S] -> [B,S,D]
        if (ACT(u, &p, B, D, H, W)) return LDM_ERR;
        conv(u, &p, &g, &tr->proj_in_w, &tr->proj_in_b, 1, 0);
        ldm_tensor pv = ldm_tensor_view(&p, LDM_SHAPE(B, D, S));
        ldm_transpose(&tok, &pv);
    } else {
        // [B,C,S] -> [B,S,C], then proj_in Linear C -> D
        if (ACT(u, &p, B, S, C)) return LDM_ERR;
        ldm_tensor gv = ldm_tensor_view(&g, LDM_SHAPE(B, C, S));
        ldm_transpose(&p, &gv);
        linear(u, &tok, &p, &tr->proj_in_w, &tr->proj_in_b);
    }
    ldm_arena_release(&u->arena, mg);                                  // g, p
    for (int k = 0; k < tr->depth; k++)
        if (tblock_forward(u, &tok, ctx, &tr->blocks[k], tr->heads, tr->only_cross))
            return LDM_ERR;
    if (ACT(u, &o, B, C, H, W)) return LDM_ERR;                        // o [B,C,H,W]
    if (!tr->linear) {
        // [B,S,D] -> [B,D,S] = [B,D,H,W], then proj_out 1x1 conv D -> C
        if (ACT(u, &p, B, D, S)) return LDM_ERR;
        ldm_transpose(&p, &tok);
        ldm_tensor pv = ldm_tensor_view(&p, LDM_SHAPE(B, D, H, W));
        conv(u, &o, &pv, &tr->proj_out_w, &tr->proj_out_b, 1, 0);
    } else {
        // proj_out Linear D -> C, then [B,S,C] -> [B,C,S]
        if (ACT(u, &p, B, S, C)) return LDM_ERR;
        linear(u, &p, &tok, &tr->proj_out_w, &tr->proj_out_b);
        ldm_tensor ov = ldm_tensor_view(&o, LDM_SHAPE(B, C, S));
        ldm_transpose(&ov, &p);
    }
    ldm_add(x, x, &o);   // residual
    ldm_arena_release(&u->arena, m);
    return 0;
}
// ---- 4. the block table and the forward pass --------------------------------------

// Append one row; name is printf-style. Returns the row.
static ldm_unet_block *row(ldm_unet *u, ldm_unet_kind kind, int level, int cin, int cout,
                           const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static ldm_unet_block *row(ldm_unet *u, ldm_unet_kind kind, int level, int cin, int cout,
                           const char *fmt, ...) {
    ldm_unet_block *b = &u->blocks[u->n_blocks++];
    memset(b, 0, sizeof *b);
    b->kind = kind;
    b->level = level;
    b->cin = cin;
    b->cout = cout;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->name, sizeof b->name, fmt, ap);
    va_end(ap);
    return b;
}

static int check_config(const ldm_unet_config *c) {
    int n = c->n_levels;
    if (n < 1 || n > LDM_MAX_LEVELS)
        return ldm_error("unet config: %d levels (block_out_channels), expected 1..%d", n,
                         LDM_MAX_LEVELS);
    if (c->in_channels < 1 || c->out_channels < 1 || c->layers_per_block < 1 ||
        c->cross_attention_dim < 1 || c->norm_num_groups < 1 || c->time_embed_dim < 1 ||
        c->transformer_layers_per_block < 1)
        return ldm_error("unet config: in/out channels, layers_per_block, cross_attention_dim, "
                         "norm_num_groups, time embedding width and transformer depth must "
                         "all be >= 1");
    if (n * (c->layers_per_block + 1) > LDM_UNET_MAX_SKIPS)   // conv_in + L per level + downsamplers
        return ldm_error("unet config: %d levels of %d layers_per_block push %d skips, at most "
                         "%d supported", n, c->layers_per_block, n * (c->layers_per_block + 1),
                         LDM_UNET_MAX_SKIPS);
    if (c->block_out_channels[0] < 2)
        return ldm_error("unet config: block_out_channels[0] = %d, expected >= 2",
                         c->block_out_channels[0]);
    for (int i = 0; i < n; i++) {
        int ch = c->block_out_channels[i];
        if (ch < 1 || ch > (1 << 16) || ch % c->norm_num_groups)
            return ldm_error("unet config: block_out_channels[%d] = %d must be positive and "
                             "divisible by norm_num_groups = %d", i, ch, c->norm_num_groups);
        int att = c->down_attn[i] || c->up_attn[n - 1 - i] || (i == n - 1 && c->mid_attn);
        if (att && (c->num_heads[i] < 1 || ch / c->num_heads[i] < 1))
            return ldm_error("unet config: level %d has %d channels and %d attention heads "
                             "(attention_head_dim = number of heads in diffusers): need "
                             "1 <= heads <= channels", i, ch, c->num_heads[i]);
    }
    return 0;
}

// The table, read top to bottom = the order the forward pass runs. Channels
// follow the skip stack exactly as in diffusers: every row marked push adds
// its output; every up-path ResBlock pops one and concatenates it.
int ldm_unet_build(ldm_unet *u, const ldm_unet_config *cfg) {
    memset(u, 0, sizeof *u);
    if (check_config(cfg)) return LDM_ERR;
    u->cfg = *cfg;
    u->temb = cfg->time_embed_dim;
    const int n = cfg->n_levels, L = cfg->layers_per_block;
    const int *C = cfg->block_out_channels;
    int max_rows = 2 + 2 * n * (2 * L + 3) + 3;
    u->blocks = calloc((size_t)max_rows, sizeof *u->blocks);
    if (!u->blocks) return ldm_error("unet: out of memory for the block table");
    int skips[LDM_UNET_MAX_SKIPS], sp = 0;   // channels of the skip stack
    ldm_unet_block *b;

    // conv_in: in_channels -> C0 at full latent resolution
    b = row(u, LDM_UNET_CONV_IN, 0, cfg->in_channels, C[0], "conv_in");
    b->push = 1, skips[sp++] = C[0];
    int ch = C[0];
    // down path: level i = latent / 2^i
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < L; j++) {
            b = row(u, LDM_UNET_RES, i, ch, C[i], "down_blocks.%d.resnets.%d", i, j);
            ch = C[i];
            if (cfg->down_attn[i]) {
                b = row(u, LDM_UNET_ATTN, i, ch, ch, "down_blocks.%d.attentions.%d", i, j);
                b->heads = cfg->num_heads[i];
                b->tr.only_cross = cfg->only_cross_attention[i];
            }
            b->push = 1, skips[sp++] = ch;
        }
        if (i < n - 1) {
            b = row(u, LDM_UNET_DOWN, i + 1, ch, ch, "down_blocks.%d.downsamplers.0", i);
            b->push = 1, skips[sp++] = ch;
        }
        snprintf(b->group, sizeof b->group, "down_blocks.%d", i);
    }
    // middle: ResBlock, SpatialTransformer, ResBlock at the lowest resolution
    b = row(u, LDM_UNET_RES, n - 1, ch, ch, "mid_block.resnets.0");
    if (cfg->mid_attn) {
        b = row(u, LDM_UNET_ATTN, n - 1, ch, ch, "mid_block.attentions.0");
        b->heads = cfg->num_heads[n - 1];
        b->tr.only_cross = cfg->mid_only_cross_attention;
    }
    b = row(u, LDM_UNET_RES, n - 1, ch, ch, "mid_block.resnets.1");
    snprintf(b->group, sizeof b->group, "mid_block");
    // up path: up block i works at level n-1-i, L+1 ResBlocks each taking a skip
    for (int i = 0; i < n; i++) {
        int lvl = n - 1 - i;
        for (int j = 0; j <= L; j++) {
            int s = skips[--sp];
            b = row(u, LDM_UNET_RES, lvl, ch + s, C[lvl], "up_blocks.%d.resnets.%d", i, j);
            b->skip = s;
            ch = C[lvl];
            if (cfg->up_attn[i]) {
                b = row(u, LDM_UNET_ATTN, lvl, ch, ch, "up_blocks.%d.attentions.%d", i, j);
                b->heads = cfg->num_heads[lvl];
                b->tr.only_cross = cfg->only_cross_attention[lvl];   // diffusers: the reversed list
            }
        }
        if (i < n - 1)
            b = row(u, LDM_UNET_UP, lvl - 1, ch, ch, "up_blocks.%d.upsamplers.0", i);
        snprintf(b->group, sizeof b->group, "up_blocks.%d", i);
    }
    // out: GroupNorm -> SiLU -> conv3x3 C0 -> out_channels
    row(u, LDM_UNET_OUT, 0, ch, cfg->out_channels, "conv_out");
    LDM_ASSERT(sp == 0 && u->n_blocks <= max_rows, "skip stack balanced", NULL);
    for (int k = 0; k < u->n_blocks; k++) {
        b = &u->blocks[k];
        if ((b->kind == LDM_UNET_RES || b->kind == LDM_UNET_OUT) &&
            b->cin % cfg->norm_num_groups)
            return ldm_error("unet config: %s takes %d channels, not divisible by "
                             "norm_num_groups = %d", b->name, b->cin, cfg->norm_num_groups);
        if (b->kind == LDM_UNET_ATTN) {
            b->tr.c = b->cout;
            b->tr.heads = b->heads;
            b->tr.d = b->heads * (b->cout / b->heads);   // inner dim = NH * (C // NH)
            b->tr.depth = cfg->transformer_layers_per_block;
            b->tr.linear = cfg->use_linear_projection;
        }
        if (b->kind == LDM_UNET_RES) b->res.cin = b->cin, b->res.cout = b->cout;
    }
    return 0;
}

// Runs one row: in [B,cin,H,W] -> y [B,cout,H',W'], y new in the arena after
// in (ATTN: y is in itself, updated in place; OUT: y is the caller's out).
static int block_forward(ldm_unet *u, ldm_unet_block *b, ldm_tensor *y, ldm_tensor *in,
                         const ldm_tensor *semb, const ldm_tensor *ctx, ldm_tensor *out) {
    int64_t B = in->shape[0], H = in->shape[2], W = in->shape[3];
    size_t m = ldm_arena_mark(&u->arena);
    ldm_tensor t;
    switch (b->kind) {
    case LDM_UNET_CONV_IN:
        if (ACT(u, y, B, b->cout, H, W)) return LDM_ERR;
        conv(u, y, in, &b->conv_w, &b->conv_b, 1, 1);
        return 0;
    case LDM_UNET_RES:
        if (ACT(u, y, B, b->cout, H, W)) return LDM_ERR;
        return resblock_forward(u, y, in, semb, &b->res);
    case LDM_UNET_ATTN:
        *y = *in;
        return transformer_forward(u, y, ctx, &b->tr);
    case LDM_UNET_DOWN:   // conv3x3 stride 2 pad 1: [B,C,H,W] -> [B,C,H/2,W/2]
        if (ACT(u, y, B, b->cout, (H + 1) / 2, (W + 1) / 2)) return LDM_ERR;
        conv(u, y, in, &b->conv_w, &b->conv_b, 2, 1);
        return 0;
    case LDM_UNET_UP:     // nearest x2 then conv3x3: [B,C,H,W] -> t [B,C,2H,2W] -> y
        if (ACT(u, y, B, b->cout, 2 * H, 2 * W)) return LDM_ERR;
        m = ldm_arena_mark(&u->arena);
        if (ACT(u, &t, B, b->cin, 2 * H, 2 * W)) return LDM_ERR;
        ldm_upsample2x(&t, in);
        conv(u, y, &t, &b->conv_w, &b->conv_b, 1, 1);
        ldm_arena_release(&u->arena, m);
        return 0;
    case LDM_UNET_OUT:    // GroupNorm -> SiLU -> conv3x3 into the caller's out
        if (ACT(u, &t, B, b->cin, H, W)) return LDM_ERR;
        ldm_group_norm(&t, in, &b->norm_w, &b->norm_b, u->cfg.norm_num_groups,
                       u->cfg.norm_eps);
        ldm_silu(&t, &t);
        conv(u, out, &t, &b->conv_w, &b->conv_b, 1, 1);
        ldm_arena_release(&u->arena, m);
        *y = *out;
        y->owns = 0;   // a view of out
        return 0;
    }
    return ldm_error("unet: unknown block kind %d", (int)b->kind);
}

// ---- 4b. DeepCache: caching deep features across steps ----------------------------
//
// Ma, Fang, Wang, "DeepCache: Accelerating Diffusion Models for Free" (CVPR
// 2024), uniform caching with interval N. The paper's observation: between
// adjacent denoising steps the high-level features (the deep part of the
// UNet: everything below a skip branch) barely change, while the skips of the
// shallow layers carry the details that do. Number the skips as the down path
// pushes them: branch m = 0 is conv_in's skip (popped by the last up-path
// ResBlock), 1 the first ResBlock (+ transformer) of down_blocks.0, ...
// (the numbering of the paper's reference implementation, cache_branch_id).
// For branch m:
//   full step   (every N-th model call): the whole table runs, and h as it
//               enters row up_start (the up-path ResBlock that pops skip m,
//               before the concatenation) is kept:  F  [B,C,h',w']
//   cached step (the N-1 calls after it): rows 0..down_end run (conv_in and
//               the down path up to the row that pushes skip m: skips 0..m),
//               then rows up_start..end run from h = F; the rows between
//               (deeper down path, middle, deeper up path) are skipped.
// With m = 0 on SD1 a cached step runs conv_in, up_blocks.3.resnets.2 +
// attentions.2 and conv_out; with m = 1 also down_blocks.0.resnets.0 +
// attentions.0 and up_blocks.3.resnets.1 + attentions.1.
// The kept feature is an owned tensor (the arena is reset every forward);
// it is only used when its shape is the one this input would produce, so a
// new size or batch runs in full and keeps a new one.

int ldm_unet_deepcache_branches(const ldm_unet *u) {
    int pushes = 0;
    for (int k = 0; k < u->n_blocks; k++) pushes += u->blocks[k].push;
    return pushes;
}

int ldm_unet_deepcache_on(ldm_unet *u, int branch) {
    ldm_unet_deepcache *dc = &u->deepcache;
    int n = ldm_unet_deepcache_branches(u);
    if (branch < 0 || branch >= n)
        return ldm_error("deepcache: branch %d: this UNet has skip branches 0..%d (0 = the "
                         "shallowest)", branch, n - 1);
    ldm_unet_deepcache_off(u);
    // down_end pushes skip `branch`; up_start is the up-path row that pops it
    int pushed = 0, sp = 0;
    for (int k = 0; k < u->n_blocks; k++) {
        const ldm_unet_block *b = &u->blocks[k];
        if (b->skip && --sp == branch) dc->up_start = k;
        if (b->push) {
            if (pushed == branch) dc->down_end = k;
            pushed++, sp++;
        }
    }
    dc->branch = branch;
    dc->on = 1;
    return 0;
}

void ldm_unet_deepcache_off(ldm_unet *u) {
    ldm_tensor_free(&u->deepcache.feat);
    memset(&u->deepcache, 0, sizeof u->deepcache);
}

// The kept feature fits x [B,Cin,H,W]: [B, cin - skip of row up_start, H/2^lvl, W/2^lvl].
static int deepcache_fits(const ldm_unet *u, const ldm_tensor *x) {
    const ldm_unet_deepcache *dc = &u->deepcache;
    const ldm_unet_block *b = &u->blocks[dc->up_start];
    const ldm_tensor *f = &dc->feat;
    return f->data && f->ndim == 4 && f->ops == u->ops && f->shape[0] == x->shape[0] &&
           f->shape[1] == b->cin - b->skip && f->shape[2] == x->shape[2] >> b->level &&
           f->shape[3] == x->shape[3] >> b->level;
}

// Full step: keep a copy of h (arena memory) in the owned feature.
static int deepcache_keep(ldm_unet *u, const ldm_tensor *h) {
    ldm_tensor *f = &u->deepcache.feat;
    int same = f->data && f->ndim == h->ndim && f->numel == h->numel &&
               !memcmp(f->shape, h->shape, sizeof(int64_t) * (size_t)h->ndim);
    if (!same) {
        ldm_tensor_free(f);
        *f = ldm_tensor_new(u->ops, h->shape, h->ndim);
        if (!f->data) return ldm_error("deepcache: out of memory for the kept feature");
    }
    ldm_copy(f, h);
    return 0;
}

int ldm_unet_forward(ldm_tensor *out, ldm_unet *u, const ldm_tensor *x, const float *t,
                     const ldm_tensor *ctx) {
    return ldm_unet_forward_class(out, u, x, t, NULL, ctx);
}

int ldm_unet_forward_class(ldm_tensor *out, ldm_unet *u, const ldm_tensor *x, const float *t,
                           const int *labels, const ldm_tensor *ctx) {
    const ldm_unet_config *c = &u->cfg;
    char s1[96], s2[96];
    if (!u->blocks || !u->time_w1.data)
        return ldm_error("unet: forward on a UNet without weights (call ldm_unet_load)");
    if (x->ndim != 4 || x->shape[1] != c->in_channels || x->shape[0] < 1)
        return ldm_error("unet: latent %s, expected [B,%d,h,w]",
                         ldm_shape_str(s1, sizeof s1, x->shape, x->ndim), c->in_channels);
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    int64_t f = (int64_t)1 << (c->n_levels - 1);
    if (H < f || W < f || H % f || W % f)
        return ldm_error("unet: latent %lldx%lld: both sides must be multiples of %lld "
                         "(image sides multiples of %lld pixels)", (long long)H, (long long)W,
                         (long long)f, (long long)(8 * f));
    if (ctx->ndim != 3 || ctx->shape[0] != B || ctx->shape[2] != c->cross_attention_dim ||
        ctx->shape[1] < 1)
        return ldm_error("unet: context %s, expected [%lld,T,%d] (batch of the latent, "
                         "cross_attention_dim of the model: SD1 768, SD2 1024)",
                         ldm_shape_str(s1, sizeof s1, ctx->shape, ctx->ndim), (long long)B,
                         c->cross_attention_dim);
    if (out->ndim != 4 || out->shape[0] != B || out->shape[1] != c->out_channels ||
        out->shape[2] != H || out->shape[3] != W)
        return ldm_error("unet: output %s, expected [%lld,%d,%lld,%lld]",
                         ldm_shape_str(s2, sizeof s2, out->shape, out->ndim), (long long)B,
                         c->out_channels, (long long)H, (long long)W);
    if (x->ops != u->ops || ctx->ops != u->ops || out->ops != u->ops)
        return ldm_error("unet: latent, context and output must live on the UNet's backend "
                         "'%s'", u->ops->name);
    for (int64_t b = 0; b < B; b++)
        if (!isfinite(t[b])) return ldm_error("unet: timestep %lld is not finite", (long long)b);
    if (c->num_class_embeds > 0 && !labels)
        return ldm_error("unet: this UNet has a class embedding (num_class_embeds %d, e.g. the "
                         "x4 upscaler's noise level): class labels are required",
                         c->num_class_embeds);
    for (int64_t b = 0; labels && b < B; b++)
        if (labels[b] < 0 || labels[b] >= c->num_class_embeds)
            return ldm_error("unet: class label %d outside [0, %d)", labels[b], c->num_class_embeds);

    u->flops = 0;
    ldm_arena *A = &u->arena;
    ldm_arena_reset(A);   // every activation of this forward comes from here
    int64_t C0 = c->block_out_channels[0];
    ldm_tensor te, emb, semb;

    // time embedding: emb = linear_2(SiLU(linear_1(sinusoid(t))))      [B,Temb]
    if (ACT(u, &semb, B, u->temb)) return LDM_ERR;   // SiLU(emb): what every ResBlock projects
    size_t m = ldm_arena_mark(A);
    if (ACT(u, &te, B, C0) || ACT(u, &emb, B, u->temb)) return LDM_ERR;
    float *host = malloc((size_t)(B * C0) * sizeof(float));
    if (!host) return ldm_error("unet: out of memory");
    ldm_unet_timestep_embedding(host, t, (int)B, (int)C0, c->flip_sin_to_cos,
                                (float)c->freq_shift);
    ldm_tensor_from_host(&te, host);
    free(host);
    linear(u, &semb, &te, &u->time_w1, &u->time_b1);
    ldm_silu(&semb, &semb);
    linear(u, &emb, &semb, &u->time_w2, &u->time_b2);
    emit(u, &emb, "time_embedding");
    if (labels && c->num_class_embeds > 0) {
        // emb += class_embedding[label]: one table row per batch element  [B,Temb]
        ldm_tensor cemb;
        int32_t *ids = malloc((size_t)B * sizeof *ids);
        if (!ids || ACT(u, &cemb, B, u->temb)) {
            free(ids);
            return ldm_error("unet: out of memory");
        }
        for (int64_t b = 0; b < B; b++) ids[b] = labels[b];
        ldm_embedding(&cemb, &u->class_w, ids, B);
        free(ids);
        ldm_add(&emb, &emb, &cemb);
        emit(u, &cemb, "class_embedding");
    }
    ldm_silu(&semb, &emb);
    ldm_arena_release(A, m);

    // Walk the table with h, the running activation. The skips pushed on the
    // down path stay in the arena in push order, skip[i] starting at position
    // skip_at[i]; the up path pops them last-in first-out. A row's output
    // replaces, from position `base` on, whatever it consumed: its input
    // (unless that is a skip or the caller's x) and the skip it pops.
    //
    // DeepCache (section 4b): a cached step skips rows down_end+1 .. up_start-1
    // and enters row up_start with the kept feature as h; a full step with
    // DeepCache on keeps h as it enters row up_start.
    ldm_unet_deepcache *dc = &u->deepcache;
    const int cached = dc->on && dc->reuse && deepcache_fits(u, x);
    dc->was_cached = cached;
    ldm_tensor h = *x, skip[LDM_UNET_MAX_SKIPS];
    size_t skip_at[LDM_UNET_MAX_SKIPS], h_at = ldm_arena_mark(A);
    int sp = 0, h_stays = 1;   // x is the caller's
    for (int k = 0; k < u->n_blocks; k++) {
        ldm_unet_block *b = &u->blocks[k];
        if (cached && k > dc->down_end && k < dc->up_start) {   // the deep part: not run
            b->flops = 0, b->secs = 0;
            continue;
        }
        if (cached && k == dc->up_start) h = dc->feat, h_stays = 1;   // the kept feature, owned
        if (dc->on && !cached && k == dc->up_start && deepcache_keep(u, &h)) return LDM_ERR;
        double flops0 = u->flops, t0 = now_seconds();
        size_t base = h_stays ? ldm_arena_mark(A) : h_at;
        ldm_tensor in = h, y;
        if (b->skip) {   // up path: in = torch.cat([h, skip], dim=1), moved down over both
            ldm_tensor s = skip[--sp];
            LDM_ASSERT(s.shape[1] == b->skip && s.shape[2] == h.shape[2], "skip", &s);
            base = skip_at[sp];
            if (ACT(u, &in, B, h.shape[1] + s.shape[1], h.shape[2], h.shape[3])) return LDM_ERR;
            ldm_concat_channels(&in, &h, &s);
            ldm_arena_release_keep(A, base, &in);
        }
        if (block_forward(u, b, &y, &in, &semb, ctx, out)) return LDM_ERR;
        if (b->kind != LDM_UNET_OUT) ldm_arena_release_keep(A, base, &y);
        h = y, h_at = base, h_stays = b->push;
        if (b->push) skip[sp] = h, skip_at[sp++] = base;
        b->flops = u->flops - flops0;
        b->secs = now_seconds() - t0;
        emit(u, &h, b->name);
        if (b->group[0]) emit(u, &h, b->group);
        ldm_tensor_file_release_all(u->release_file);   // low-memory mode (section 5)
    }
    return 0;
}

// ---- 5. weights ------------------------------------------------------------------

// Random weights for benchmarks (w == NULL in load1): norm gammas 1, biases
// 0.02 U(-1,1), matrices U(-1,1)/sqrt(fan_in) (torch's default bound), from a
// 64-bit LCG seeded by u->n_params so every tensor differs.
static int random_tensor(ldm_unet *u, ldm_tensor *t, const char *name, const int64_t *shape,
                         int ndim) {
    *t = ldm_tensor_new(u->ops, shape, ndim);
    float *h = t->data ? malloc((size_t)t->numel * sizeof(float)) : NULL;
    if (!h) {
        ldm_tensor_free(t);
        return ldm_error("unet: out of memory for random weight %s", name);
    }
    int is_norm_w = strstr(name, "norm") && strstr(name, ".weight");
    int is_bias = strstr(name, ".bias") != NULL;
    double bound = ndim >= 2 ? 1.0 / sqrt((double)(t->numel / shape[0])) : 0.02;
    uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)(u->n_params + 1) * 0xBF58476D1CE4E5B9ull;
    for (int64_t i = 0; i < t->numel; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        double r = (double)(x >> 11) * (2.0 / 9007199254740992.0) - 1.0;   // U(-1,1)
        h[i] = is_norm_w ? 1.0f : (float)(r * (is_bias ? 0.02 : bound));
    }
    ldm_tensor_from_host(t, h);
    free(h);
    return 0;
}

// Load "<prefix>.<leaf>" with the expected shape (random when w is NULL);
// counts parameters.
static int load1(ldm_unet *u, ldm_weights *w, ldm_tensor *t, const char *prefix, const char *leaf,
                 const int64_t *shape, int ndim) {
    char name[256];
    snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", leaf);
    if (w ? ldm_weights_load(t, w, name, shape, ndim) : random_tensor(u, t, name, shape, ndim))
        return LDM_ERR;
    u->n_params += t->numel;
    return 0;
}
#define LOAD(t, prefix, leaf, ...) \
    do { if (load1(u, w, t, prefix, leaf, LDM_SHAPE(__VA_ARGS__))) return LDM_ERR; } while (0)

static int load_attn(ldm_unet *u, ldm_weights *w, ldm_unet_attn *a, const char *p, int64_t D,
                     int64_t Dkv) {
    char q[160];
    snprintf(q, sizeof q, "%s.to_q", p);    LOAD(&a->q_w, q, "weight", D, D);
    snprintf(q, sizeof q, "%s.to_k", p);    LOAD(&a->k_w, q, "weight", D, Dkv);
    snprintf(q, sizeof q, "%s.to_v", p);    LOAD(&a->v_w, q, "weight", D, Dkv);
    snprintf(q, sizeof q, "%s.to_out.0", p);
    LOAD(&a->out_w, q, "weight", D, D);
    LOAD(&a->out_b, q, "bias", D);
    return 0;
}

static int load_block(ldm_unet *u, ldm_weights *w, ldm_unet_block *b) {
    const char *p = b->name;
    char q[128];
    int64_t ci = b->cin, co = b->cout;
    switch (b->kind) {
    case LDM_UNET_CONV_IN:
        LOAD(&b->conv_w, p, "weight", co, ci, 3, 3);
        LOAD(&b->conv_b, p, "bias", co);
        return 0;
    case LDM_UNET_DOWN: case LDM_UNET_UP:
        snprintf(q, sizeof q, "%s.conv", p);
        LOAD(&b->conv_w, q, "weight", co, ci, 3, 3);
        LOAD(&b->conv_b, q, "bias", co);
        return 0;
    case LDM_UNET_OUT:
        LOAD(&b->norm_w, "conv_norm_out", "weight", ci);
        LOAD(&b->norm_b, "conv_norm_out", "bias", ci);
        LOAD(&b->conv_w, p, "weight", co, ci, 3, 3);
        LOAD(&b->conv_b, p, "bias", co);
        return 0;
    case LDM_UNET_RES: {
        ldm_unet_resblock *r = &b->res;
        int64_t T = u->temb;
        LOAD(&r->norm1_w, p, "norm1.weight", ci);
        LOAD(&r->norm1_b, p, "norm1.bias", ci);
        LOAD(&r->conv1_w, p, "conv1.weight", co, ci, 3, 3);
        LOAD(&r->conv1_b, p, "conv1.bias", co);
        LOAD(&r->temb_w, p, "time_emb_proj.weight", co, T);
        LOAD(&r->temb_b, p, "time_emb_proj.bias", co);
        LOAD(&r->norm2_w, p, "norm2.weight", co);
        LOAD(&r->norm2_b, p, "norm2.bias", co);
        LOAD(&r->conv2_w, p, "conv2.weight", co, co, 3, 3);
        LOAD(&r->conv2_b, p, "conv2.bias", co);
        if (ci != co) {
            LOAD(&r->short_w, p, "conv_shortcut.weight", co, ci, 1, 1);
            LOAD(&r->short_b, p, "conv_shortcut.bias", co);
        }
        return 0;
    }
    case LDM_UNET_ATTN: {
        ldm_unet_transformer *tr = &b->tr;
        int64_t C = tr->c, D = tr->d, Dc = u->cfg.cross_attention_dim;
        LOAD(&tr->norm_w, p, "norm.weight", C);
        LOAD(&tr->norm_b, p, "norm.bias", C);
        if (tr->linear) {
            LOAD(&tr->proj_in_w, p, "proj_in.weight", D, C);
            LOAD(&tr->proj_out_w, p, "proj_out.weight", C, D);
        } else {
            LOAD(&tr->proj_in_w, p, "proj_in.weight", D, C, 1, 1);
            LOAD(&tr->proj_out_w, p, "proj_out.weight", C, D, 1, 1);
        }
        LOAD(&tr->proj_in_b, p, "proj_in.bias", D);
        LOAD(&tr->proj_out_b, p, "proj_out.bias", C);
        tr->blocks = calloc((size_t)tr->depth, sizeof *tr->blocks);
        if (!tr->blocks) return ldm_error("unet: out of memory");
        for (int k = 0; k < tr->depth; k++) {
            ldm_unet_tblock *tb = &tr->blocks[k];
            char tp[96];
            snprintf(tp, sizeof tp, "%s.transformer_blocks.%d", p, k);
            LOAD(&tb->norm1_w, tp, "norm1.weight", D);
            LOAD(&tb->norm1_b, tp, "norm1.bias", D);
            LOAD(&tb->norm2_w, tp, "norm2.weight", D);
            LOAD(&tb->norm2_b, tp, "norm2.bias", D);
            LOAD(&tb->norm3_w, tp, "norm3.weight", D);
            LOAD(&tb->norm3_b, tp, "norm3.bias", D);
            snprintf(q, sizeof q, "%s.attn1", tp);
            if (load_attn(u, w, &tb->attn1, q, D, tr->only_cross ? Dc : D)) return LDM_ERR;
            snprintf(q, sizeof q, "%s.attn2", tp);
            if (load_attn(u, w, &tb->attn2, q, D, Dc)) return LDM_ERR;
            LOAD(&tb->ff1_w, tp, "ff.net.0.proj.weight", 8 * D, D);
            LOAD(&tb->ff1_b, tp, "ff.net.0.proj.bias", 8 * D);
            LOAD(&tb->ff2_w, tp, "ff.net.2.weight", D, 4 * D);
            LOAD(&tb->ff2_b, tp, "ff.net.2.bias", D);
        }
        return 0;
    }
    }
    return ldm_error("unet: unknown block kind %d", (int)b->kind);
}

static int load_all(ldm_unet *u, const ldm_unet_config *cfg, ldm_weights *w,
                    const struct ldm_ops *ops) {
    if (ldm_unet_build(u, cfg)) return LDM_ERR;
    u->ops = ops;
    ldm_arena_init(&u->arena, ops, "unet");
    int64_t C0 = cfg->block_out_channels[0], T = u->temb;
    int rc = LDM_ERR;
    do {
        if (load1(u, w, &u->time_w1, "time_embedding.linear_1", "weight", LDM_SHAPE(T, C0)) ||
            load1(u, w, &u->time_b1, "time_embedding.linear_1", "bias", LDM_SHAPE(T)) ||
            load1(u, w, &u->time_w2, "time_embedding.linear_2", "weight", LDM_SHAPE(T, T)) ||
            load1(u, w, &u->time_b2, "time_embedding.linear_2", "bias", LDM_SHAPE(T)))
            break;
        // a lookup table, so fp32 whatever the file stores (like CLIP's token embedding)
        int64_t NC = cfg->num_class_embeds;
        if (NC > 0 && (w ? ldm_weights_load_f32(&u->class_w, w, "class_embedding.weight",
                                                 LDM_SHAPE(NC, T))
                         : random_tensor(u, &u->class_w, "class_embedding.weight",
                                         LDM_SHAPE(NC, T))))
            break;
        u->n_params += u->class_w.numel;
        int k = 0;
        while (k < u->n_blocks && load_block(u, w, &u->blocks[k]) == 0) k++;
        if (k == u->n_blocks) rc = 0;
    } while (0);
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        ldm_unet_free(u);
        return ldm_error("%s", msg);
    }
    return 0;
}

int ldm_unet_load(ldm_unet *u, const ldm_unet_config *cfg, ldm_weights *w) {
    if (w->layers_per_block == 0) w->layers_per_block = cfg->layers_per_block;  // CompVis keys
    if (load_all(u, cfg, w, w->ops)) return LDM_ERR;
    // Low-memory mode: the forward drops the file's mapped pages after each
    // block; the weights that point there are read again when next used.
    u->release_file = w->low_memory && w->map ? w->file : NULL;
    return 0;
}

int ldm_unet_init_random(ldm_unet *u, const ldm_unet_config *cfg, const struct ldm_ops *ops) {
    return load_all(u, cfg, NULL, ops);
}

static void free_attn(ldm_unet_attn *a) {
    ldm_tensor_free(&a->q_w); ldm_tensor_free(&a->k_w); ldm_tensor_free(&a->v_w);
    ldm_tensor_free(&a->out_w); ldm_tensor_free(&a->out_b);
}

void ldm_unet_free(ldm_unet *u) {
    ldm_tensor *top[] = {&u->time_w1, &u->time_b1, &u->time_w2, &u->time_b2, &u->class_w};
    for (int i = 0; i < 5; i++) ldm_tensor_free(top[i]);
    for (int k = 0; k < u->n_blocks; k++) {
        ldm_unet_block *b = &u->blocks[k];
        ldm_unet_resblock *r = &b->res;
        ldm_tensor *ts[] = {&b->conv_w, &b->conv_b, &b->norm_w, &b->norm_b,
                            &r->norm1_w, &r->norm1_b, &r->conv1_w, &r->conv1_b, &r->temb_w,
                            &r->temb_b, &r->norm2_w, &r->norm2_b, &r->conv2_w, &r->conv2_b,
                            &r->short_w, &r->short_b, &b->tr.norm_w, &b->tr.norm_b,
                            &b->tr.proj_in_w, &b->tr.proj_in_b, &b->tr.proj_out_w,
                            &b->tr.proj_out_b};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ldm_tensor_free(ts[i]);
        if (b->tr.blocks) {
            for (int j = 0; j < b->tr.depth; j++) {
                ldm_unet_tblock *tb = &b->tr.blocks[j];
                ldm_tensor *tt[] = {&tb->norm1_w, &tb->norm1_b, &tb->norm2_w, &tb->norm2_b,
                                    &tb->norm3_w, &tb->norm3_b, &tb->ff1_w, &tb->ff1_b,
                                    &tb->ff2_w, &tb->ff2_b};
                for (size_t i = 0; i < sizeof tt / sizeof tt[0]; i++) ldm_tensor_free(tt[i]);
                free_attn(&tb->attn1);
                free_attn(&tb->attn2);
            }
            free(b->tr.blocks);
        }
    }
    free(u->blocks);
    ldm_unet_deepcache_off(u);
    ldm_arena_free(&u->arena);
    memset(u, 0, sizeof *u);
}

// ---- 6. config.json ----------------------------------------------------------------
// The field readers (absent/null -> default, wrong type -> error naming the
// key) are ldm/io/json.h, shared with the VAE and text encoder configs.

// Features of UNet2DConditionModel outside the SD1/SD2 family must be off:
// null (or absent) for the optional embeddings, false for the switches, and
// the one value SD uses for the fixed kernel sizes and scales.
static int check_sd_family(const cJSON *o, const char *path) {
    static const char *must_be_null[] = {
        "class_embed_type", "addition_embed_type", "encoder_hid_dim", "encoder_hid_dim_type",
        "time_cond_proj_dim", "time_embedding_act_fn", "timestep_post_act",
        "reverse_transformer_layers_per_block", "cross_attention_norm", "num_attention_heads",
        "projection_class_embeddings_input_dim", "addition_time_embed_dim"};
    for (size_t i = 0; i < sizeof must_be_null / sizeof *must_be_null; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, must_be_null[i]);
        if (v && !cJSON_IsNull(v))
            return ldm_error("%s: \"%s\" is set; this UNet (SD1/SD2 family) does not "
                             "implement it (SDXL and other variants are not supported)", path,
                             must_be_null[i]);
    }
    static const char *must_be_false[] = {"dual_cross_attention", "center_input_sample",
                                          "class_embeddings_concat", "resnet_skip_time_act"};
    for (size_t i = 0; i < sizeof must_be_false / sizeof *must_be_false; i++) {
        int b = 0;
        if (ldm_json_bool(o, must_be_false[i], 0, &b, path)) return LDM_ERR;
        if (b) return ldm_error("%s: \"%s\" = true is not supported", path, must_be_false[i]);
    }
    if (ldm_json_string_is(o, "act_fn", "silu", 1, path) ||
        ldm_json_string_is(o, "time_embedding_type", "positional", 1, path) ||
        ldm_json_string_is(o, "resnet_time_scale_shift", "default", 1, path) ||
        ldm_json_string_is(o, "attention_type", "default", 1, path) ||
        ldm_json_string_is(o, "mid_block_type", "UNetMidBlock2DCrossAttn", 1, path))
        return LDM_ERR;
    struct { const char *key; int def, want; } fixed[] = {
        {"conv_in_kernel", 3, 3}, {"conv_out_kernel", 3, 3}, {"downsample_padding", 1, 1},
        {"mid_block_scale_factor", 1, 1}};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        int v = 0;
        if (ldm_json_int(o, fixed[i].key, fixed[i].def, &v, path)) return LDM_ERR;
        if (v != fixed[i].want)
            return ldm_error("%s: \"%s\" = %d is not supported (expected %d)", path,
                             fixed[i].key, v, fixed[i].want);
    }
    float ros = 1;
    if (ldm_json_float(o, "resnet_out_scale_factor", 1, &ros, path)) return LDM_ERR;
    if (ros != 1.0f)
        return ldm_error("%s: \"resnet_out_scale_factor\" = %g is not supported (expected 1)",
                         path, ros);
    return 0;
}

// block_out_channels and the block types fix the number of levels and which
// levels have cross-attention.
static int parse_levels(ldm_unet_config *c, const cJSON *o, const char *path) {
    const cJSON *boc = cJSON_GetObjectItemCaseSensitive(o, "block_out_channels");
    const cJSON *dbt = cJSON_GetObjectItemCaseSensitive(o, "down_block_types");
    const cJSON *ubt = cJSON_GetObjectItemCaseSensitive(o, "up_block_types");
    if (!cJSON_IsArray(boc) || !cJSON_IsArray(dbt) || !cJSON_IsArray(ubt))
        return ldm_error("%s: \"block_out_channels\", \"down_block_types\" and "
                         "\"up_block_types\" must be lists -- is this a unet/config.json?", path);
    int n = cJSON_GetArraySize(boc);
    if (n < 1 || n > LDM_MAX_LEVELS)
        return ldm_error("%s: %d block_out_channels, expected 1..%d", path, n, LDM_MAX_LEVELS);
    if (cJSON_GetArraySize(dbt) != n || cJSON_GetArraySize(ubt) != n)
        return ldm_error("%s: %d block_out_channels but %d down and %d up block types", path, n,
                         cJSON_GetArraySize(dbt), cJSON_GetArraySize(ubt));
    c->n_levels = n;
    if (ldm_json_int_or_list(o, "block_out_channels", 0, n, c->block_out_channels, path))
        return LDM_ERR;
    for (int i = 0; i < n; i++) {
        const cJSON *d = cJSON_GetArrayItem(dbt, i), *u = cJSON_GetArrayItem(ubt, i);
        const char *ds = cJSON_IsString(d) ? d->valuestring : "", *us = cJSON_IsString(u) ? u->valuestring : "";
        if (!strcmp(ds, "CrossAttnDownBlock2D")) c->down_attn[i] = 1;
        else if (!strcmp(ds, "DownBlock2D")) c->down_attn[i] = 0;
        else return ldm_error("%s: down_block_types[%d] = \"%s\", expected CrossAttnDownBlock2D "
                              "or DownBlock2D", path, i, ds);
        if (!strcmp(us, "CrossAttnUpBlock2D")) c->up_attn[i] = 1;
        else if (!strcmp(us, "UpBlock2D")) c->up_attn[i] = 0;
        else return ldm_error("%s: up_block_types[%d] = \"%s\", expected CrossAttnUpBlock2D "
                              "or UpBlock2D", path, i, us);
    }
    return 0;
}

// The x4 upscaler's fields: "num_class_embeds" (null or an int: a table of
// that many class embeddings, class_embed_type being null), and
// "only_cross_attention" (a bool or one per level; the mid block follows a
// bool unless "mid_block_only_cross_attention" says otherwise, as diffusers).
static int parse_upscaler_fields(ldm_unet_config *c, const cJSON *o, const char *path) {
    const int n = c->n_levels;
    const cJSON *nce = cJSON_GetObjectItemCaseSensitive(o, "num_class_embeds");
    if (nce && !cJSON_IsNull(nce) &&
        (ldm_json_int(o, "num_class_embeds", 0, &c->num_class_embeds, path) ||
         c->num_class_embeds < 1 || c->num_class_embeds > 100000))
        return ldm_error("%s: \"num_class_embeds\" must be null or an int in 1..100000", path);
    const cJSON *oca = cJSON_GetObjectItemCaseSensitive(o, "only_cross_attention");
    int all = 0;
    if (cJSON_IsArray(oca)) {
        if (cJSON_GetArraySize(oca) != n)
            return ldm_error("%s: \"only_cross_attention\" has %d entries for %d levels", path,
                             cJSON_GetArraySize(oca), n);
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(oca, i);
            if (!cJSON_IsBool(e))
                return ldm_error("%s: \"only_cross_attention\"[%d] must be true or false", path, i);
            c->only_cross_attention[i] = cJSON_IsTrue(e);
        }
    } else {
        if (ldm_json_bool(o, "only_cross_attention", 0, &all, path)) return LDM_ERR;
        for (int i = 0; i < n; i++) c->only_cross_attention[i] = all;
    }
    return ldm_json_bool(o, "mid_block_only_cross_attention", all, &c->mid_only_cross_attention,
                         path);
}

static int parse(ldm_unet_config *c, const cJSON *o, const char *path) {
    memset(c, 0, sizeof *c);
    if (check_sd_family(o, path) || parse_levels(c, o, path)) return LDM_ERR;
    int n = c->n_levels;
    c->mid_attn = 1;   // mid_block_type UNetMidBlock2DCrossAttn (checked above)
    if (ldm_json_int(o, "in_channels", 4, &c->in_channels, path) ||
        ldm_json_int(o, "out_channels", 4, &c->out_channels, path) ||
        ldm_json_int(o, "sample_size", 64, &c->sample_size, path) ||
        ldm_json_uniform(o, "layers_per_block", 2, n, &c->layers_per_block, path) ||
        ldm_json_uniform(o, "transformer_layers_per_block", 1, n,
                         &c->transformer_layers_per_block, path) ||
        ldm_json_uniform(o, "cross_attention_dim", 1280, n, &c->cross_attention_dim, path) ||
        ldm_json_int_or_list(o, "attention_head_dim", 8, n, c->attention_head_dim, path) ||
        ldm_json_bool(o, "use_linear_projection", 0, &c->use_linear_projection, path) ||
        ldm_json_bool(o, "upcast_attention", 0, &c->upcast_attention, path) ||
        ldm_json_int(o, "norm_num_groups", 32, &c->norm_num_groups, path) ||
        ldm_json_bool(o, "flip_sin_to_cos", 1, &c->flip_sin_to_cos, path) ||
        ldm_json_int(o, "freq_shift", 0, &c->freq_shift, path))
        return LDM_ERR;
    const cJSON *ng = cJSON_GetObjectItemCaseSensitive(o, "norm_num_groups");
    if (ng && cJSON_IsNull(ng))
        return ldm_error("%s: \"norm_num_groups\" = null (no output norm) is not supported", path);
    if (ldm_json_float(o, "norm_eps", 1e-5f, &c->norm_eps, path)) return LDM_ERR;
    if (!(c->norm_eps > 0)) return ldm_error("%s: \"norm_eps\" must be a positive number", path);
    if (ldm_json_int(o, "time_embedding_dim", 4 * c->block_out_channels[0], &c->time_embed_dim,
                     path) ||
        parse_upscaler_fields(c, o, path))
        return LDM_ERR;
    // The diffusers naming quirk: without num_attention_heads (always absent in
    // SD configs), "attention_head_dim" is the NUMBER OF HEADS of each level
    // (SD1: 8 heads of 40/80/160; SD2: [5,10,20,20] heads of 64).
    for (int i = 0; i < n; i++) c->num_heads[i] = c->attention_head_dim[i];
    return check_config(c);
}

int ldm_unet_config_from_json(ldm_unet_config *c, const char *json, const char *path) {
    if (!path) path = "unet config";
    cJSON *o = ldm_json_parse_object(json, path);
    if (!o) return LDM_ERR;
    int rc = parse(c, o, path);
    cJSON_Delete(o);
    return rc;
}

// The presets are the diffusers unet/config.json texts of SD1.5 and SD2.1,
// kept once, in ldm/model.c (ldm_unet_config_sd), with the VAE and text
// encoder ones; this is the lookup by name for the CLI (`sd unet --random`).
int ldm_unet_config_preset(ldm_unet_config *c, const char *name) {
    if (name && !strcmp(name, "sd1")) return ldm_unet_config_sd(c, LDM_FAMILY_SD1);
    if (name && !strcmp(name, "sd2")) return ldm_unet_config_sd(c, LDM_FAMILY_SD2);
    return ldm_error("unknown UNet preset '%s': expected sd1 or sd2", name ? name : "");
}

// ---- 7. printing the table ----------------------------------------------------------

static const char *kind_name(ldm_unet_kind k) {
    switch (k) {
    case LDM_UNET_CONV_IN: return "conv_in";
    case LDM_UNET_RES: return "ResBlock";
    case LDM_UNET_ATTN: return "Transformer";
    case LDM_UNET_DOWN: return "Downsample";
    case LDM_UNET_UP: return "Upsample";
    case LDM_UNET_OUT: return "norm+conv_out";
    }
    return "?";
}

void ldm_unet_print_table(const ldm_unet *u, void *file) {
    FILE *f = file ? (FILE *)file : stdout;
    fprintf(f, "  #  %-30s %-13s lvl  res   cin  cout  skip  heads x hs  push    GFLOP       s  GFLOPS\n",
            "diffusers module", "kind");
    double tf = 0, ts = 0;
    for (int k = 0; k < u->n_blocks; k++) {
        const ldm_unet_block *b = &u->blocks[k];
        char hs[16] = "", sk[16] = "";
        if (b->kind == LDM_UNET_ATTN) snprintf(hs, sizeof hs, "%d x %d", b->heads, b->tr.d / b->heads);
        if (b->skip) snprintf(sk, sizeof sk, "+%d", b->skip);
        fprintf(f, "%3d  %-30s %-13s %3d  1/%-2d %5d %5d %5s %10s  %4s  %7.3f %7.3f %7.1f\n", k,
                b->name, kind_name(b->kind), b->level, 1 << b->level, b->cin, b->cout, sk, hs,
                b->push ? "yes" : "", b->flops / 1e9, b->secs,
                b->secs > 0 ? b->flops / b->secs / 1e9 : 0.0);
        tf += b->flops, ts += b->secs;
    }
    fprintf(f, "     %-30s %-13s %39s  %7.3f %7.3f %7.1f\n", "total (rows)", "", "", tf / 1e9, ts,
            ts > 0 ? tf / ts / 1e9 : 0.0);
}
