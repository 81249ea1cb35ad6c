/*
 * tests/cuda/op_cases.h -- every op of struct ldm_ops on a backend under test
 * against `ref`, as in ggml's test-backend-ops: same random inputs on both,
 * compare by normalised mean squared error
 *     nmse = sum (got - ref)^2 / sum ref^2   <=  1e-7
 * (fp32 vs `ref`, which accumulates in double: a correct fp32 kernel lands
 * near 1e-14; an index bug lands near 1). Shapes are deliberately odd (not
 * multiples of the 256 threads of a block, of a warp, of each other), and a
 * few cases shrink the backend's workspace so that im2col and the attention
 * query blocks run in many uneven chunks.
 *
 * Used by tests/test_cuda_emu.c (backend cuda-emu, every `make test`) and
 * tests/cuda/test_cuda.c (backend cuda, `make test-cuda` on a GPU). `ref` is
 * itself checked against PyTorch by tests/test_ops.c.
 *
 * Every output buffer starts as NaN, so an element a kernel forgets to write
 * fails the check.
 */
#ifndef LDM_TEST_OP_CASES_H
#define LDM_TEST_OP_CASES_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "ldm/backend/ops.h"
#include "tests/test.h"

// Why 1e-7: the bar for fp32 (TF32 off). Reductions in a different
// order than `ref` move the result by ~1e-7 relative per element, i.e. nmse
// ~1e-14; 1e-7 leaves room for long dot products and still catches a single
// misplaced element in a few thousand.
#define OC_NMSE_TOL 1e-7

// Buffers of one op call on one backend, freed together.
typedef struct {
    const struct ldm_ops *o;
    void *bufs[16];
    int nbufs;
    uint64_t rng;
} oc_ctx;

static oc_ctx oc_begin(const struct ldm_ops *o, uint64_t seed) {
    oc_ctx c;
    memset(&c, 0, sizeof c);
    c.o = o;
    c.rng = seed * 0x9E3779B97F4A7C15ull + 1;
    return c;
}

// Uniform in [-1, 1) from a 64-bit xorshift (same stream for every backend).
static float oc_uniform(oc_ctx *c) {
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return (float)((c->rng >> 40) * (1.0 / (1 << 23)) - 1.0);
}

static float *oc_track(oc_ctx *c, size_t nbytes) {
    void *p = c->o->alloc(nbytes);
    if (!p || c->nbufs == 16) {
        fprintf(stderr, "op_cases: cannot allocate %zu bytes on %s\n", nbytes, c->o->name);
        exit(1);
    }
    c->bufs[c->nbufs++] = p;
    return (float *)p;
}

// n random floats a*U[-1,1) + shift, in the backend's memory
static float *oc_in(oc_ctx *c, int64_t n, float a, float shift) {
    float *h = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) h[i] = a * oc_uniform(c) + shift;
    float *d = oc_track(c, (size_t)(n ? n : 1) * sizeof(float));
    c->o->upload(d, h, (size_t)n * sizeof(float));
    free(h);
    return d;
}

// n NaNs in the backend's memory (an output buffer)
static float *oc_out(oc_ctx *c, int64_t n) {
    float *h = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) h[i] = NAN;
    float *d = oc_track(c, (size_t)(n ? n : 1) * sizeof(float));
    c->o->upload(d, h, (size_t)n * sizeof(float));
    free(h);
    return d;
}

// Downloads n floats of dev to a new host array, frees every buffer of c.
static float *oc_end(oc_ctx *c, const float *dev, int64_t n) {
    float *h = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
    c->o->download(h, dev, (size_t)n * sizeof(float));
    for (int i = 0; i < c->nbufs; i++) c->o->free(c->bufs[i]);
    c->nbufs = 0;
    return h;
}

// Compares got (backend under test) with exp (ref); frees both.
static void oc_check(const char *name, float *got, float *exp, int64_t n) {
    double num = 0, den = 0, max_abs = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - exp[i];
        num += d * d;
        den += (double)exp[i] * exp[i];
        if (!(fabs(d) <= max_abs)) max_abs = fabs(d);   // NaN sticks
    }
    double nmse = den > 0 ? num / den : num;
    int ok = isfinite(nmse) && nmse <= OC_NMSE_TOL;
    char label[200];
    snprintf(label, sizeof label, "%-52s nmse %.2e  max_abs %.2e  (n %lld)", name, nmse, max_abs,
             (long long)n);
    test_check(ok, label, "nmse above %.0e", OC_NMSE_TOL);
    free(got);
    free(exp);
}

// ---- one function per op: run it on backend o with inputs from `seed` ----------

static float *oc_linear(const struct ldm_ops *o, int64_t M, int64_t K, int64_t N, int bias) {
    oc_ctx c = oc_begin(o, 1);
    float *x = oc_in(&c, M * K, 1, 0), *w = oc_in(&c, N * K, 0.2f, 0);
    float *b = bias ? oc_in(&c, N, 1, 0) : NULL, *out = oc_out(&c, M * N);
    o->linear(out, x, w, b, M, K, N);
    return oc_end(&c, out, M * N);
}

static float *oc_conv2d(const struct ldm_ops *o, int64_t B, int64_t Cin, int64_t H, int64_t W,
                        int64_t Cout, int64_t KH, int64_t KW, int64_t s, int64_t pt, int64_t pb,
                        int64_t pl, int64_t pr, int bias, int64_t *nout) {
    int64_t Ho = (H + pt + pb - KH) / s + 1, Wo = (W + pl + pr - KW) / s + 1;
    *nout = B * Cout * Ho * Wo;
    oc_ctx c = oc_begin(o, 2);
    float *x = oc_in(&c, B * Cin * H * W, 1, 0), *w = oc_in(&c, Cout * Cin * KH * KW, 0.3f, 0);
    float *b = bias ? oc_in(&c, Cout, 1, 0) : NULL, *out = oc_out(&c, *nout);
    o->conv2d(out, x, w, b, B, Cin, H, W, Cout, KH, KW, s, pt, pb, pl, pr);
    return oc_end(&c, out, *nout);
}

static float *oc_group_norm(const struct ldm_ops *o, int64_t B, int64_t C, int64_t S, int64_t G,
                            int affine) {
    oc_ctx c = oc_begin(o, 3);
    float *x = oc_in(&c, B * C * S, 2, 0.5f);
    float *g = affine ? oc_in(&c, C, 1, 1) : NULL, *b = affine ? oc_in(&c, C, 1, 0) : NULL;
    float *out = oc_out(&c, B * C * S);
    o->group_norm(out, x, g, b, B, C, S, G, 1e-5f);
    return oc_end(&c, out, B * C * S);
}

static float *oc_layer_norm(const struct ldm_ops *o, int64_t N, int64_t D, int affine) {
    oc_ctx c = oc_begin(o, 4);
    float *x = oc_in(&c, N * D, 3, -1);
    float *g = affine ? oc_in(&c, D, 1, 1) : NULL, *b = affine ? oc_in(&c, D, 1, 0) : NULL;
    float *out = oc_out(&c, N * D);
    o->layer_norm(out, x, g, b, N, D, 1e-5f);
    return oc_end(&c, out, N * D);
}

// in_place: out == x
static float *oc_softmax(const struct ldm_ops *o, int64_t N, int64_t D, float a, int in_place) {
    oc_ctx c = oc_begin(o, 5);
    float *x = oc_in(&c, N * D, a, 0), *out = in_place ? x : oc_out(&c, N * D);
    o->softmax(out, x, N, D);
    return oc_end(&c, out, N * D);
}

static float *oc_attention(const struct ldm_ops *o, int64_t B, int64_t Tq, int64_t Tk,
                           int64_t NH, int64_t HS, int causal) {
    int64_t D = NH * HS;
    oc_ctx c = oc_begin(o, 6);
    float *q = oc_in(&c, B * Tq * D, 2, 0), *k = oc_in(&c, B * Tk * D, 2, 0);
    float *v = oc_in(&c, B * Tk * D, 1, 0), *out = oc_out(&c, B * Tq * D);
    o->attention(out, q, k, v, B, Tq, Tk, NH, HS, 1.0f / sqrtf((float)HS), causal);
    return oc_end(&c, out, B * Tq * D);
}

// op: 0 silu, 1 gelu, 2 quick_gelu; in_place: out == x
static float *oc_unary(const struct ldm_ops *o, int op, int64_t n, int in_place) {
    oc_ctx c = oc_begin(o, 7);
    float *x = oc_in(&c, n, 6, 0), *out = in_place ? x : oc_out(&c, n);
    if (op == 0) o->silu(out, x, n);
    if (op == 1) o->gelu(out, x, n);
    if (op == 2) o->quick_gelu(out, x, n);
    return oc_end(&c, out, n);
}

// in_place: out is the start of x (what an in-place caller would pass)
static float *oc_geglu(const struct ldm_ops *o, int64_t N, int64_t F, int in_place) {
    oc_ctx c = oc_begin(o, 8);
    float *x = oc_in(&c, N * 2 * F, 3, 0), *out = in_place ? x : oc_out(&c, N * F);
    o->geglu(out, x, N, F);
    return oc_end(&c, out, N * F);
}

// op: 0 add, 1 mul, 2 scale; in_place: out == a
static float *oc_binary(const struct ldm_ops *o, int op, int64_t n, int in_place) {
    oc_ctx c = oc_begin(o, 9);
    float *a = oc_in(&c, n, 1, 0), *b = oc_in(&c, n, 1, 0.5f);
    float *out = in_place ? a : oc_out(&c, n);
    if (op == 0) o->add(out, a, b, n);
    if (op == 1) o->mul(out, a, b, n);
    if (op == 2) o->scale(out, a, -0.18215f, n);
    return oc_end(&c, out, n);
}

static float *oc_add_channel(const struct ldm_ops *o, int64_t B, int64_t C, int64_t S) {
    oc_ctx c = oc_begin(o, 10);
    float *x = oc_in(&c, B * C * S, 1, 0), *y = oc_in(&c, B * C, 1, 0), *out = oc_out(&c, B * C * S);
    o->add_channel(out, x, y, B, C, S);
    return oc_end(&c, out, B * C * S);
}

static float *oc_upsample2x(const struct ldm_ops *o, int64_t B, int64_t C, int64_t H, int64_t W) {
    oc_ctx c = oc_begin(o, 11);
    float *x = oc_in(&c, B * C * H * W, 1, 0), *out = oc_out(&c, B * C * 4 * H * W);
    o->upsample2x(out, x, B, C, H, W);
    return oc_end(&c, out, B * C * 4 * H * W);
}

static float *oc_concat(const struct ldm_ops *o, int64_t B, int64_t Ca, int64_t Cb, int64_t S) {
    oc_ctx c = oc_begin(o, 12);
    float *a = oc_in(&c, B * Ca * S, 1, 0), *b = oc_in(&c, B * Cb * S, 1, 2);
    float *out = oc_out(&c, B * (Ca + Cb) * S);
    o->concat_channels(out, a, b, B, Ca, Cb, S);
    return oc_end(&c, out, B * (Ca + Cb) * S);
}

static float *oc_transpose(const struct ldm_ops *o, int64_t B, int64_t M, int64_t N) {
    oc_ctx c = oc_begin(o, 13);
    float *x = oc_in(&c, B * M * N, 1, 0), *out = oc_out(&c, B * M * N);
    o->transpose(out, x, B, M, N);
    return oc_end(&c, out, B * M * N);
}

static float *oc_embedding(const struct ldm_ops *o, int64_t V, int64_t D, int64_t n) {
    oc_ctx c = oc_begin(o, 14);
    float *table = oc_in(&c, V * D, 1, 0), *out = oc_out(&c, n * D);
    int32_t *ids = (int32_t *)malloc((size_t)n * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)((i * 7 + 3) % V);
    ids[n - 1] = (int32_t)(V - 1);   // the last row of the table
    o->embedding(out, table, ids, n, D);
    free(ids);
    return oc_end(&c, out, n * D);
}

static void oc_copy_check(const struct ldm_ops *be, int64_t n) {
    oc_ctx c = oc_begin(be, 15), r = oc_begin(&ldm_ops_ref, 15);
    float *x = oc_in(&c, n, 1, 0), *y = oc_out(&c, n);
    be->copy(y, x, (size_t)n * sizeof(float));
    float *xr = oc_in(&r, n, 1, 0);
    oc_check("upload / copy / download", oc_end(&c, y, n), oc_end(&r, xr, n), n);
}

// ---- the case list ----------------------------------------------------------------------

// Runs every case on `be` against ref. set_workspace(floats) shrinks be's
// workspace for the chunking cases (NULL: skip them); restore is its default.
static void oc_run_all(const struct ldm_ops *be, void (*set_workspace)(int64_t),
                       int64_t restore) {
    const struct ldm_ops *rf = &ldm_ops_ref;
    int64_t n = 0;
    char name[128];

    oc_copy_check(be, 1000);

    oc_check("linear [7,13]x[5,13]^T + b", oc_linear(be, 7, 13, 5, 1), oc_linear(rf, 7, 13, 5, 1), 35);
    oc_check("linear [33,64]x[48,64]^T", oc_linear(be, 33, 64, 48, 0), oc_linear(rf, 33, 64, 48, 0), 33 * 48);
    oc_check("linear [1,300]x[257,300]^T + b", oc_linear(be, 1, 300, 257, 1),
             oc_linear(rf, 1, 300, 257, 1), 257);

    struct { int64_t B, Cin, H, W, Cout, KH, KW, s, pt, pb, pl, pr; int bias; } cv[] = {
        {2, 3, 9, 11, 5, 3, 3, 1, 1, 1, 1, 1, 1},     // 3x3 same padding
        {2, 4, 9, 10, 6, 3, 3, 2, 0, 1, 0, 1, 1},     // VAE downsample: stride 2, pad (0,1,0,1)
        {1, 5, 8, 8, 3, 3, 3, 2, 1, 1, 1, 1, 0},      // UNet downsample: stride 2, pad 1
        {2, 7, 6, 5, 9, 1, 1, 1, 0, 0, 0, 0, 1},      // 1x1: direct batched GEMM
        {1, 3, 7, 7, 2, 1, 1, 2, 0, 0, 0, 0, 1},      // 1x1 stride 2: through im2col
        {1, 2, 5, 9, 3, 2, 4, 1, 0, 1, 2, 1, 1},      // non-square kernel, odd pads
        {2, 32, 16, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1},  // SD-like channel counts
    };
    for (size_t i = 0; i < sizeof cv / sizeof cv[0]; i++) {
        snprintf(name, sizeof name, "conv2d [%lld,%lld,%lld,%lld] k%lldx%lld s%lld pad %lld%lld%lld%lld",
                 (long long)cv[i].B, (long long)cv[i].Cin, (long long)cv[i].H, (long long)cv[i].W,
                 (long long)cv[i].KH, (long long)cv[i].KW, (long long)cv[i].s, (long long)cv[i].pt,
                 (long long)cv[i].pb, (long long)cv[i].pl, (long long)cv[i].pr);
        float *g = oc_conv2d(be, cv[i].B, cv[i].Cin, cv[i].H, cv[i].W, cv[i].Cout, cv[i].KH,
                             cv[i].KW, cv[i].s, cv[i].pt, cv[i].pb, cv[i].pl, cv[i].pr, cv[i].bias, &n);
        float *e = oc_conv2d(rf, cv[i].B, cv[i].Cin, cv[i].H, cv[i].W, cv[i].Cout, cv[i].KH,
                             cv[i].KW, cv[i].s, cv[i].pt, cv[i].pb, cv[i].pl, cv[i].pr, cv[i].bias, &n);
        oc_check(name, g, e, n);
    }

    oc_check("group_norm [2,12,35] G4 affine", oc_group_norm(be, 2, 12, 35, 4, 1),
             oc_group_norm(rf, 2, 12, 35, 4, 1), 2 * 12 * 35);
    oc_check("group_norm [1,6,1] G6 (one value per group)", oc_group_norm(be, 1, 6, 1, 6, 0),
             oc_group_norm(rf, 1, 6, 1, 6, 0), 6);
    oc_check("group_norm [2,64,81] G32", oc_group_norm(be, 2, 64, 81, 32, 1),
             oc_group_norm(rf, 2, 64, 81, 32, 1), 2 * 64 * 81);
    oc_check("layer_norm [5,300] affine", oc_layer_norm(be, 5, 300, 1), oc_layer_norm(rf, 5, 300, 1), 1500);
    oc_check("layer_norm [4,3]", oc_layer_norm(be, 4, 3, 0), oc_layer_norm(rf, 4, 3, 0), 12);
    oc_check("layer_norm [3,768] affine", oc_layer_norm(be, 3, 768, 1), oc_layer_norm(rf, 3, 768, 1), 3 * 768);
    oc_check("softmax [6,1000]", oc_softmax(be, 6, 1000, 5, 0), oc_softmax(rf, 6, 1000, 5, 0), 6000);
    oc_check("softmax [3,1]", oc_softmax(be, 3, 1, 1, 0), oc_softmax(rf, 3, 1, 1, 0), 3);
    oc_check("softmax [9,77] large logits, in place", oc_softmax(be, 9, 77, 80, 1),
             oc_softmax(rf, 9, 77, 80, 1), 9 * 77);

    oc_check("attention B2 Tq9 Tk7 NH3 HS5", oc_attention(be, 2, 9, 7, 3, 5, 0),
             oc_attention(rf, 2, 9, 7, 3, 5, 0), 2 * 9 * 15);
    oc_check("attention causal B2 T11 NH2 HS8", oc_attention(be, 2, 11, 11, 2, 8, 1),
             oc_attention(rf, 2, 11, 11, 2, 8, 1), 2 * 11 * 16);
    oc_check("attention cross B2 Tq64 Tk77 NH8 HS40", oc_attention(be, 2, 64, 77, 8, 40, 0),
             oc_attention(rf, 2, 64, 77, 8, 40, 0), 2 * 64 * 320);
    oc_check("attention self B1 T300 NH1 HS3", oc_attention(be, 1, 300, 300, 1, 3, 0),
             oc_attention(rf, 1, 300, 300, 1, 3, 0), 900);

    const char *un[3] = {"silu", "gelu", "quick_gelu"};
    for (int op = 0; op < 3; op++)
        for (int ip = 0; ip < 2; ip++) {
            snprintf(name, sizeof name, "%s n1003%s", un[op], ip ? " in place" : "");
            oc_check(name, oc_unary(be, op, 1003, ip), oc_unary(rf, op, 1003, ip), 1003);
        }
    oc_check("geglu [5,2x37]", oc_geglu(be, 5, 37, 0), oc_geglu(rf, 5, 37, 0), 5 * 37);
    oc_check("geglu [70,2x300] out over x", oc_geglu(be, 70, 300, 1), oc_geglu(rf, 70, 300, 1), 70 * 300);
    const char *bn[3] = {"add", "mul", "scale"};
    for (int op = 0; op < 3; op++)
        for (int ip = 0; ip < 2; ip++) {
            snprintf(name, sizeof name, "%s n517%s", bn[op], ip ? " in place" : "");
            oc_check(name, oc_binary(be, op, 517, ip), oc_binary(rf, op, 517, ip), 517);
        }
    oc_check("add_channel [2,3,17]+[2,3]", oc_add_channel(be, 2, 3, 17), oc_add_channel(rf, 2, 3, 17), 102);
    oc_check("upsample2x [2,3,5,7]", oc_upsample2x(be, 2, 3, 5, 7), oc_upsample2x(rf, 2, 3, 5, 7), 2 * 3 * 140);
    oc_check("concat [2,3,13]+[2,5,13]", oc_concat(be, 2, 3, 5, 13), oc_concat(rf, 2, 3, 5, 13), 2 * 8 * 13);
    oc_check("transpose [2,7,9]", oc_transpose(be, 2, 7, 9), oc_transpose(rf, 2, 7, 9), 126);
    oc_check("transpose [1,1,300]", oc_transpose(be, 1, 1, 300), oc_transpose(rf, 1, 1, 300), 300);
    oc_check("transpose [3,40,33]", oc_transpose(be, 3, 40, 33), oc_transpose(rf, 3, 40, 33), 3 * 40 * 33);
    oc_check("transpose [2,320,100]", oc_transpose(be, 2, 320, 100), oc_transpose(rf, 2, 320, 100), 64000);
    oc_check("embedding [10,17] n6", oc_embedding(be, 10, 17, 6), oc_embedding(rf, 10, 17, 6), 6 * 17);
    oc_check("embedding [1000,64] n77", oc_embedding(be, 1000, 64, 77), oc_embedding(rf, 1000, 64, 77), 77 * 64);

    if (!set_workspace) return;
    // Tiny workspace: im2col in chunks of 37 positions (last one shorter),
    // attention in query blocks of 5 (last one shorter).
    set_workspace(32 * 9 * 37);
    float *g = oc_conv2d(be, 2, 32, 16, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, &n);
    float *e = oc_conv2d(rf, 2, 32, 16, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1, &n);
    oc_check("conv2d [2,32,16,16] k3 im2col in chunks of 37", g, e, n);
    set_workspace(3 * 23 * 5);
    oc_check("attention causal T23 NH3 in query blocks of 5", oc_attention(be, 2, 23, 23, 3, 4, 1),
             oc_attention(rf, 2, 23, 23, 3, 4, 1), 2 * 23 * 12);
    oc_check("attention Tq23 Tk23 NH3 in query blocks of 5", oc_attention(be, 2, 23, 23, 3, 4, 0),
             oc_attention(rf, 2, 23, 23, 3, 4, 0), 2 * 23 * 12);
    set_workspace(restore);
}

#endif
