/*
 * docs/figures/unet_shapes.c -- the shapes of docs/05-unet.md's figures, as
 * the library reports them: the UNet block table (ldm_unet_build, ldm/unet.h)
 * walked with its skip stack, and the tensors inside one transformer block.
 *
 * Two models: SD1 (ldm_unet_config_preset "sd1") at 512x512 pixels = a
 * 64x64 latent, and the committed tiny model (tools/tiny-model/unet) at
 * 64x64 pixels = an 8x8 latent (both VAEs downsample by 8). For the tiny
 * model the walk is also checked against a real forward pass: its weights
 * are loaded, ldm_unet_forward runs once on the cpu backend, and every
 * block's output shape seen by the hook (ldm_unet.hook) must equal the
 * walk's; the transformer block's weight shapes are read from the loaded
 * tensors. SD1's 3.4 GB of weights are not loaded: its shapes come from the
 * table alone (the same walk).
 *
 * Writes two tab-separated tables:
 *   blocks: model, row, name, kind, level, cin, cout, H, W, pop (channels of
 *           the skip popped and concatenated, 0: none), push (1: the output
 *           goes on the skip stack), depth (skip stack size after the row),
 *           skip_id (the index of the skip pushed or popped, -1: none),
 *           heads, head size
 *   tblock: model, block, step, tensor, shape (one transformer block at the
 *           first attention row of each model)
 * `make figures-unet` builds and runs it, then draws docs/figures/unet-*.png
 * and transformer-block.png with plot_unet.py.
 * Usage: unet_shapes blocks.tsv tblock.tsv   (run from the repository root)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/tensorfile.h"
#include "ldm/io/weights.h"
#include "ldm/unet.h"
#include "tokenizer/bpe.h"

#define TINY_DIR "tools/tiny-model/unet"

// Output shapes seen by the hook during the tiny model's forward pass.
typedef struct seen {
    int n;
    char name[128][64];
    int64_t shape[128][4];
} seen;

static void on_block(void *ctx, const char *name, const ldm_tensor *t) {
    seen *s = ctx;
    if (s->n >= 128 || t->ndim != 4) return;
    snprintf(s->name[s->n], sizeof s->name[0], "%s", name);
    memcpy(s->shape[s->n], t->shape, sizeof s->shape[0]);
    s->n++;
}

static const char *kind_name(ldm_unet_kind k) {
    switch (k) {
    case LDM_UNET_CONV_IN: return "conv_in";
    case LDM_UNET_RES: return "res";
    case LDM_UNET_ATTN: return "attn";
    case LDM_UNET_DOWN: return "down";
    case LDM_UNET_UP: return "up";
    case LDM_UNET_OUT: return "out";
    }
    return "?";
}

// Walk the table as ldm_unet_forward does: every row at resolution latent /
// 2^level, pushes and pops on a stack of skip ids. With `got` (hook output
// of a real forward), every row's [B,cout,H,W] must match. 0 / 1.
static int walk(FILE *out, const char *model, const ldm_unet *u, int side, const seen *got) {
    int stack[LDM_UNET_MAX_SKIPS], sp = 0, next_id = 0;
    for (int k = 0; k < u->n_blocks; k++) {
        const ldm_unet_block *b = &u->blocks[k];
        int H = side >> b->level, W = side >> b->level, id = -1;
        if (b->skip) id = stack[--sp];
        if (b->push) id = stack[sp++] = next_id++;
        int hs = b->heads ? b->cout / b->heads : 0;
        fprintf(out, "%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", model, k,
                b->name, kind_name(b->kind), b->level, b->cin, b->cout, H, W, b->skip, b->push,
                sp, id, b->heads, hs);
        if (!got) continue;
        char full[80];
        snprintf(full, sizeof full, "unet.%s", b->name);
        int found = 0;
        for (int i = 0; i < got->n; i++)
            if (!strcmp(got->name[i], full)) {
                const int64_t *s = got->shape[i];
                if (s[1] != b->cout || s[2] != H || s[3] != W) {
                    fprintf(stderr, "unet_shapes: %s: forward gave [%lld,%lld,%lld], walk [%d,%d,%d]\n",
                            b->name, (long long)s[1], (long long)s[2], (long long)s[3], b->cout, H, W);
                    return 1;
                }
                found = 1;
            }
        if (!found) { fprintf(stderr, "unet_shapes: no hook output for %s\n", b->name); return 1; }
    }
    return 0;
}

// One transformer block at row b of a latent side x side: every tensor of
// tblock_forward / transformer_forward (ldm/unet.c), batch 1. F is the
// feed-forward width (GEGLU: ff.net.0.proj gives 2F = a | gate).
static void tblock(FILE *out, const char *model, const ldm_unet *u, const ldm_unet_block *b,
                   int side, int F) {
    int H = side >> b->level, W = H, S = H * W, C = b->cout, D = b->tr.d, NH = b->heads;
    int HS = D / NH, T = LDM_CONTEXT, Dc = u->cfg.cross_attention_dim;
#define ROW(step, tensor, ...) do { \
        fprintf(out, "%s\t%s\t%s\t%s\t", model, b->name, step, tensor); \
        fprintf(out, __VA_ARGS__); fputc('\n', out); } while (0)
    ROW("input", "x", "%d,%d,%d", C, H, W);
    ROW("norm", "GroupNorm(x)", "%d,%d,%d", C, H, W);
    ROW("proj_in", "tokens", "%d,%d", S, D);
    ROW("context", "context", "%d,%d", T, Dc);
    ROW("attn1", "Q", "%d,%d", S, D);
    ROW("attn1", "K", "%d,%d", S, D);
    ROW("attn1", "V", "%d,%d", S, D);
    ROW("attn1", "heads", "%d,%d,%d", NH, S, HS);
    ROW("attn1", "scores", "%d,%d,%d", NH, S, S);
    ROW("attn1", "out", "%d,%d", S, D);
    ROW("attn2", "Q", "%d,%d", S, D);
    ROW("attn2", "K", "%d,%d", T, D);
    ROW("attn2", "V", "%d,%d", T, D);
    ROW("attn2", "heads", "%d,%d,%d", NH, S, HS);
    ROW("attn2", "scores", "%d,%d,%d", NH, S, T);
    ROW("attn2", "out", "%d,%d", S, D);
    ROW("ff", "proj", "%d,%d", S, 2 * F);
    ROW("ff", "geglu", "%d,%d", S, F);
    ROW("ff", "out", "%d,%d", S, D);
    ROW("proj_out", "x + proj_out", "%d,%d,%d", C, H, W);
#undef ROW
}

static const ldm_unet_block *first_attn(const ldm_unet *u) {
    for (int k = 0; k < u->n_blocks; k++)
        if (u->blocks[k].kind == LDM_UNET_ATTN) return &u->blocks[k];
    return NULL;
}

static int fail(const char *what) {
    fprintf(stderr, "unet_shapes: %s: %s\n", what, ldm_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: unet_shapes blocks.tsv tblock.tsv  (from the repository root)\n");
        return 2;
    }
    FILE *fb = fopen(argv[1], "w"), *ft = fopen(argv[2], "w");
    if (!fb || !ft) { fprintf(stderr, "unet_shapes: cannot write %s\n", fb ? argv[2] : argv[1]); return 1; }
    fprintf(fb, "model\trow\tname\tkind\tlevel\tcin\tcout\tH\tW\tpop\tpush\tdepth\tskip_id\theads\ths\n");
    fprintf(ft, "model\tblock\tstep\ttensor\tshape\n");

    // SD1 at 512x512: the table only (no weights).
    ldm_unet_config cfg;
    ldm_unet sd1;
    if (ldm_unet_config_preset(&cfg, "sd1") || ldm_unet_build(&sd1, &cfg)) return fail("sd1");
    if (walk(fb, "sd1", &sd1, 512 / 8, NULL)) return 1;
    tblock(ft, "sd1", &sd1, first_attn(&sd1), 512 / 8, 4 * first_attn(&sd1)->tr.d);
    ldm_unet_free(&sd1);

    // The tiny model at 64x64: weights loaded, one forward pass checks the walk.
    FILE *fj = fopen(TINY_DIR "/config.json", "rb");
    static char json[1 << 16];
    size_t nj = fj ? fread(json, 1, sizeof json - 1, fj) : 0;
    if (fj) fclose(fj);
    if (!nj) { fprintf(stderr, "unet_shapes: cannot read %s/config.json\n", TINY_DIR); return 1; }
    json[nj] = 0;
    ldm_tensor_file f;
    ldm_unet tiny;
    const struct ldm_ops *ops = &ldm_ops_cpu;
    ldm_weights w = {.file = &f, .comp = LDM_COMP_UNET, .layout = LDM_LAYOUT_DIFFUSERS,
                     .prefix = "", .ops = ops};
    if (ldm_unet_config_from_json(&cfg, json, TINY_DIR "/config.json") ||
        ldm_tensor_file_open(&f, TINY_DIR "/diffusion_pytorch_model.safetensors") ||
        ldm_unet_load(&tiny, &cfg, &w))
        return fail("tiny model");
    const int side = 64 / 8;
    ldm_tensor x = ldm_tensor_zeros(ops, LDM_SHAPE(1, cfg.in_channels, side, side));
    ldm_tensor ctx = ldm_tensor_zeros(ops, LDM_SHAPE(1, LDM_CONTEXT, cfg.cross_attention_dim));
    ldm_tensor eps = ldm_tensor_zeros(ops, LDM_SHAPE(1, cfg.out_channels, side, side));
    float t = 500;
    static seen got;
    tiny.hook = on_block, tiny.hook_ctx = &got;
    if (ldm_unet_forward(&eps, &tiny, &x, &t, &ctx)) return fail("tiny forward");
    if (walk(fb, "tiny", &tiny, side, &got)) return 1;
    const ldm_unet_block *a = first_attn(&tiny);
    tblock(ft, "tiny", &tiny, a, side, (int)a->tr.blocks[0].ff1_w.shape[0] / 2);
    ldm_tensor_free(&x), ldm_tensor_free(&ctx), ldm_tensor_free(&eps);
    ldm_unet_free(&tiny);
    ldm_tensor_file_close(&f);
    fclose(fb), fclose(ft);
    return 0;
}
