/*
 * tests/test_ops.c -- every op of struct ldm_ops (ldm/backend/ops.h), in both the
 * `ref` and `cpu` backends, checked three ways:
 *
 *   1. against PyTorch: the cases listed in tests/fixtures/ops/cases.txt,
 *      written by tools/reference/fixtures_ops.py (inputs + torch outputs);
 *   2. `cpu` against `ref` on random shapes, odd sizes included, plus the
 *      aliasing the table allows (out == x for elementwise ops and softmax);
 *   3. the attention memory bound: 4096-token self-attention with 8 heads on
 *      `cpu` must not grow the process's peak RSS by anything near the size
 *      of a full score matrix, and must match a direct double-precision
 *      computation on sampled rows.
 * Plus the small contracts of ldm/core/tensor.c (views, slices, overflow) and the
 * backend selection. Each comparison prints max-abs / max-rel / worst index.
 *
 * Tolerance: 1e-5 of max|expected| (single op, docs/00-overview.md) unless a comment
 * at the check says why a case needs more.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <omp.h>
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "ldm/backend/cpu_kernels.h"
#include "ldm/backend/ops.h"
#include "tests/test.h"

#define FIX "tests/fixtures/ops/"
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif
#define RTOL 1e-5

// ---- small helpers --------------------------------------------------------------

// Deterministic uniform/normal numbers for the random-shape tests (xorshift64*).
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) {
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}
static float nrand(void) {
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}

// Host tensor of the given shape filled with N(0, s^2) + offset.
static ldm_tensor randt(const int64_t *shape, int ndim, float s, float offset) {
    ldm_tensor t = ldm_tensor_new(&ldm_ops_ref, shape, ndim);
    if (!t.data) exit(2);
    for (int64_t i = 0; i < t.numel; i++) t.data[i] = nrand() * s + offset;
    return t;
}

// ---- 1. PyTorch fixtures ----------------------------------------------------------

// Value of key=... in a manifest line (NULL if absent).
static const char *param(const char *line, const char *key) {
    size_t n = strlen(key);
    for (const char *p = line; (p = strstr(p, key)); p += n)
        if ((p == line || p[-1] == ' ') && p[n] == '=') return p + n + 1;
    return NULL;
}

static int load(ldm_tensor *t, const char *cname, const char *tname) {
    char path[512];
    snprintf(path, sizeof path, FIX "%s.%s.npy", cname, tname);
    FILE *f = fopen(path, "rb");
    if (!f) { memset(t, 0, sizeof *t); return 0; } // optional tensor (bias, gamma) absent
    fclose(f);
    if (ldm_npy_read(t, &ldm_ops_ref, path) != 0) {
        test_check(0, path, "%s", ldm_last_error());
        return 0;
    }
    return 1;
}

#define MAXT 6
static void run_fixture(const char *op, const char *cname, const char *line,
                        const struct ldm_ops *ops) {
    static const char *names[MAXT] = {"x", "w", "b", "gamma", "beta", "y"};
    ldm_tensor h[MAXT], a, b, q, k, v, ids, expect, d[MAXT], da, db, dq, dk, dv;
    ldm_tensor *opt[MAXT];
    for (int i = 0; i < MAXT; i++) {
        opt[i] = NULL;
        memset(&d[i], 0, sizeof d[i]);
        if (load(&h[i], cname, names[i])) { d[i] = test_tensor_on(ops, &h[i]); opt[i] = &d[i]; }
    }
    load(&a, cname, "a"); load(&b, cname, "b"); load(&q, cname, "q"); load(&k, cname, "k");
    load(&v, cname, "v"); load(&ids, cname, "ids");
    if (!load(&expect, cname, "out")) { test_check(0, cname, "missing %s.out.npy", cname); return; }
    memset(&da, 0, sizeof da); memset(&db, 0, sizeof db); memset(&dq, 0, sizeof dq);
    memset(&dk, 0, sizeof dk); memset(&dv, 0, sizeof dv);
    if (a.data) da = test_tensor_on(ops, &a);
    if (b.data) db = test_tensor_on(ops, &b);
    if (q.data) { dq = test_tensor_on(ops, &q); dk = test_tensor_on(ops, &k); dv = test_tensor_on(ops, &v); }
    ldm_tensor out = test_tensor_zeros_like(ops, &expect);
    ldm_tensor *x = opt[0], *w = opt[1], *bias = opt[2], *gamma = opt[3], *beta = opt[4];
    double rtol = RTOL;
    const char *p;

    if (!strcmp(op, "linear")) {
        ldm_linear(&out, x, w, bias);
    } else if (!strcmp(op, "conv2d")) {
        long long pt, pb, pl, pr;
        sscanf(param(line, "pad"), "%lld,%lld,%lld,%lld", &pt, &pb, &pl, &pr);
        ldm_conv2d(&out, x, w, bias, atoll(param(line, "stride")), pt, pb, pl, pr);
    } else if (!strcmp(op, "group_norm")) {
        ldm_group_norm(&out, x, gamma, beta, atoll(param(line, "groups")),
                       strtof(param(line, "eps"), NULL));
    } else if (!strcmp(op, "layer_norm")) {
        ldm_layer_norm(&out, x, gamma, beta, strtof(param(line, "eps"), NULL));
    } else if (!strcmp(op, "softmax")) {
        ldm_softmax(&out, x);
    } else if (!strcmp(op, "attention")) {
        ldm_attention(&out, &dq, &dk, &dv, atoll(param(line, "NH")),
                      strtof(param(line, "scale"), NULL), atoi(param(line, "causal")));
    } else if (!strcmp(op, "silu")) {
        ldm_silu(&out, x);
    } else if (!strcmp(op, "gelu")) {
        ldm_gelu(&out, x);
    } else if (!strcmp(op, "quick_gelu")) {
        ldm_quick_gelu(&out, x);
    } else if (!strcmp(op, "geglu")) {
        ldm_geglu(&out, x);
    } else if (!strcmp(op, "add")) {
        ldm_add(&out, &da, &db);
    } else if (!strcmp(op, "mul")) {
        ldm_mul(&out, &da, &db);
    } else if (!strcmp(op, "scale") && (p = param(line, "s"))) {
        ldm_scale(&out, &da, strtof(p, NULL));
    } else if (!strcmp(op, "add_channel")) {
        ldm_add_channel(&out, x, opt[5]);
    } else if (!strcmp(op, "upsample2x")) {
        ldm_upsample2x(&out, x);
    } else if (!strcmp(op, "concat_channels")) {
        ldm_concat_channels(&out, &da, &db);
    } else if (!strcmp(op, "transpose")) {
        ldm_transpose(&out, x);
    } else if (!strcmp(op, "embedding")) {
        int32_t id32[64];
        ldm_tensor th;
        load(&th, cname, "table");
        ldm_tensor table = test_tensor_on(ops, &th);
        for (int64_t i = 0; i < ids.numel && i < 64; i++) id32[i] = (int32_t)ids.data[i];
        ldm_embedding(&out, &table, id32, ids.numel);
        ldm_tensor_free(&table);
        ldm_tensor_free(&th);
    } else {
        test_check(0, cname, "unknown op '%s' in cases.txt", op);
    }
    char name[128];
    snprintf(name, sizeof name, "%s %s %s", ops->name, op, cname);
    float *got = test_tensor_host(&out);
    test_close(name, got, expect.data, expect.numel, rtol, 0);
    free(got);
    for (int i = 0; i < MAXT; i++) { ldm_tensor_free(&h[i]); ldm_tensor_free(&d[i]); }
    ldm_tensor *all[] = {&a, &b, &q, &k, &v, &ids, &expect, &da, &db, &dq, &dk, &dv, &out};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) ldm_tensor_free(all[i]);
}

static void test_fixtures(void) {
    FILE *f = fopen(FIX "cases.txt", "r");
    if (!test_check(f != NULL, FIX "cases.txt", "missing: run `make fixtures`")) return;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] == '#' || !line[0]) continue;
        char op[64], cname[128];
        if (sscanf(line, "%63s %127s", op, cname) != 2) continue;
        run_fixture(op, cname, line, &ldm_ops_ref);
        run_fixture(op, cname, line, &ldm_ops_cpu);
        n++;
    }
    fclose(f);
    test_check(n >= 30, "fixture cases read", "only %d cases in cases.txt", n);
}

// ---- 2. cpu against ref on random shapes -----------------------------------------

// Runs `call` on both backends with copies of the same host inputs and compares.
typedef void (*op_call)(const struct ldm_ops *ops, ldm_tensor *out, ldm_tensor *in, void *arg);

static void versus(const char *name, ldm_tensor *in, int nin, const int64_t *oshape, int ondim,
                   op_call call, void *arg, double rtol) {
    ldm_tensor res[2];
    const struct ldm_ops *be[2] = {&ldm_ops_ref, &ldm_ops_cpu};
    for (int i = 0; i < 2; i++) {
        ldm_tensor d[8];
        for (int j = 0; j < nin; j++) {
            if (in[j].data) d[j] = test_tensor_on(be[i], &in[j]);
            else memset(&d[j], 0, sizeof d[j]);
        }
        ldm_tensor out = ldm_tensor_zeros(be[i], oshape, ondim);
        call(be[i], &out, d, arg);
        res[i] = ldm_tensor_new(&ldm_ops_ref, oshape, ondim);
        ldm_tensor_to_host(res[i].data, &out);
        ldm_tensor_free(&out);
        for (int j = 0; j < nin; j++) ldm_tensor_free(&d[j]);
    }
    char full[160];
    snprintf(full, sizeof full, "cpu vs ref %s", name);
    test_close(full, res[1].data, res[0].data, res[0].numel, rtol, 0);
    ldm_tensor_free(&res[0]);
    ldm_tensor_free(&res[1]);
}

static void call_linear(const struct ldm_ops *o, ldm_tensor *out, ldm_tensor *in, void *arg) {
    ldm_linear(out, &in[0], &in[1], in[2].data ? &in[2] : NULL);
}
struct conv_arg { int64_t s, pt, pb, pl, pr; };
static void call_conv(const struct ldm_ops *o, ldm_tensor *out, ldm_tensor *in, void *arg) {
    struct conv_arg *c = arg;
    ldm_conv2d(out, &in[0], &in[1], in[2].data ? &in[2] : NULL, c->s, c->pt, c->pb, c->pl, c->pr);
}
static void call_gn(const struct ldm_ops *o, ldm_tensor *out, ldm_tensor *in, void *arg) {
    ldm_group_norm(out, &in[0], &in[1], &in[2], *(int64_t *)arg, 1e-6f);
}
static void call_ln(const struct ldm_ops *o, ldm_tensor *out, ldm_tensor *in, void *arg) {
    ldm_layer_norm(out, &in[0], &in[1], &in[2], 1e-5f);
}
static void call_softmax_inplace(const struct ldm_ops *o, ldm_tensor *out, ldm_tensor *in, void *arg) {
    ldm_softmax(&in[0], &in[0]); // out == x is allowed
    ldm_copy(out, &in[0]);
}
struct attn_arg { int64_t NH; int causal; };
static void call_attn(const struct ldm_ops *o, ldm_tensor *out, ldm_tensor *in, void *arg) {
    struct attn_arg *a = arg;
    ldm_attention(out, &in[0], &in[1], &in[2], a->NH, 1.0f / sqrtf((float)(in[0].shape[2] / a->NH)),
                  a->causal);
}
// all the elementwise ops chained, each in place on in[0] (aliasing allowed)
static void call_elementwise(const struct ldm_ops *o, ldm_tensor *out, ldm_tensor *in, void *arg) {
    ldm_tensor *x = &in[0], *y = &in[1], t = ldm_tensor_new(o, x->shape, x->ndim);
    ldm_silu(&t, x);
    ldm_gelu(x, x);
    ldm_add(x, x, &t);
    ldm_quick_gelu(&t, y);
    ldm_mul(x, x, &t);
    ldm_scale(out, x, -0.75f);
    ldm_tensor_free(&t);
}
static void call_geglu(const struct ldm_ops *o, ldm_tensor *out, ldm_tensor *in, void *arg) {
    ldm_geglu(out, &in[0]);
}
static void call_layout(const struct ldm_ops *o, ldm_tensor *out, ldm_tensor *in, void *arg) {
    // x [B,C,H,W] -> up [B,C,2H,2W] -> cat with y [B,C2,2H,2W] -> +emb[B,C+C2]
    // -> transpose [B,(C+C2),4HW] -> [B,4HW,C+C2] into out
    ldm_tensor *x = &in[0], *y = &in[1], *e = &in[2];
    int64_t B = x->shape[0], C = x->shape[1], H2 = 2 * x->shape[2], W2 = 2 * x->shape[3];
    int64_t C2 = y->shape[1];
    ldm_tensor up = ldm_tensor_new(o, LDM_SHAPE(B, C, H2, W2));
    ldm_tensor cat = ldm_tensor_new(o, LDM_SHAPE(B, C + C2, H2, W2));
    ldm_upsample2x(&up, x);
    ldm_concat_channels(&cat, &up, y);
    ldm_add_channel(&cat, &cat, e);
    ldm_tensor flat = ldm_tensor_view(&cat, LDM_SHAPE(B, C + C2, H2 * W2));
    ldm_transpose(out, &flat);
    ldm_tensor_free(&up);
    ldm_tensor_free(&cat);
}

static void test_random(void) {
    char name[128];
    // linear: M, K, N odd and tiny, and one bigger than any blocking
    const int64_t lin[][3] = {{1, 1, 1}, {17, 33, 9}, {130, 70, 257}, {64, 320, 96}};
    for (size_t i = 0; i < sizeof lin / sizeof *lin; i++) {
        int64_t M = lin[i][0], K = lin[i][1], N = lin[i][2];
        ldm_tensor in[3] = {randt(LDM_SHAPE(M, K), 1, 0), randt(LDM_SHAPE(N, K), 1, 0),
                            randt(LDM_SHAPE(N), 1, 0)};
        if (i == 1) ldm_tensor_free(&in[2]); // one case without bias
        snprintf(name, sizeof name, "linear M=%lld K=%lld N=%lld", (long long)M, (long long)K,
                 (long long)N);
        versus(name, in, 3, LDM_SHAPE(M, N), call_linear, NULL, RTOL);
        for (int j = 0; j < 3; j++) ldm_tensor_free(&in[j]);
    }
    // conv2d: {B, Cin, H, W, Cout, K, stride, pt, pb, pl, pr, bias}
    const int64_t conv[][12] = {
        {1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},    {2, 5, 11, 13, 7, 3, 1, 1, 1, 1, 1, 1},
        {3, 4, 8, 8, 6, 1, 1, 0, 0, 0, 0, 1},    {1, 6, 9, 12, 5, 3, 2, 0, 1, 0, 1, 1},
        {2, 3, 10, 7, 4, 3, 2, 1, 1, 1, 1, 0},   {1, 8, 6, 6, 3, 1, 2, 0, 0, 0, 0, 1},
        {1, 2, 5, 4, 3, 5, 1, 2, 2, 2, 2, 1},    {1, 3, 12, 9, 2, 3, 3, 0, 2, 1, 0, 1},
        // R*Ho*Wo = 288*200*200 > 8M floats: im2col in more than one chunk
        {1, 32, 200, 200, 3, 3, 1, 1, 1, 1, 1, 1}};
    for (size_t i = 0; i < sizeof conv / sizeof *conv; i++) {
        const int64_t *c = conv[i];
        int64_t B = c[0], Cin = c[1], H = c[2], W = c[3], Co = c[4], Kk = c[5];
        struct conv_arg a = {c[6], c[7], c[8], c[9], c[10]};
        int64_t Ho = (H + a.pt + a.pb - Kk) / a.s + 1, Wo = (W + a.pl + a.pr - Kk) / a.s + 1;
        ldm_tensor in[3] = {randt(LDM_SHAPE(B, Cin, H, W), 1, 0),
                            randt(LDM_SHAPE(Co, Cin, Kk, Kk), 0.3f, 0), randt(LDM_SHAPE(Co), 1, 0)};
        if (!c[11]) ldm_tensor_free(&in[2]);
        snprintf(name, sizeof name, "conv2d [%lld,%lld,%lld,%lld]->%lld k%lld s%lld pad %lld,%lld,%lld,%lld",
                 (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Co,
                 (long long)Kk, (long long)a.s, (long long)a.pt, (long long)a.pb, (long long)a.pl,
                 (long long)a.pr);
        versus(name, in, 3, LDM_SHAPE(B, Co, Ho, Wo), call_conv, &a, RTOL);
        for (int j = 0; j < 3; j++) ldm_tensor_free(&in[j]);
    }
    // group_norm / layer_norm, with a large mean offset to test the accumulation
    // {B, C, S, G, std, mean}: the last case has mean 1000 with std 0.1
    const int64_t gn[][6] = {{1, 4, 1, 1, 3, 20}, {2, 64, 13, 32, 3, 20}, {3, 30, 77, 5, 3, 20},
                             {2, 32, 50, 8, 0, 1000}};
    for (size_t i = 0; i < sizeof gn / sizeof *gn; i++) {
        int64_t B = gn[i][0], C = gn[i][1], S = gn[i][2], G = gn[i][3];
        float sd = gn[i][4] ? (float)gn[i][4] : 0.1f;
        ldm_tensor in[3] = {randt(LDM_SHAPE(B, C, S), sd, (float)gn[i][5]),
                            randt(LDM_SHAPE(C), 1, 1), randt(LDM_SHAPE(C), 1, 0)};
        snprintf(name, sizeof name, "group_norm [%lld,%lld,%lld] G=%lld mean %lld", (long long)B,
                 (long long)C, (long long)S, (long long)G, (long long)gn[i][5]);
        versus(name, in, 3, LDM_SHAPE(B, C, S), call_gn, &G, RTOL);
        for (int j = 0; j < 3; j++) ldm_tensor_free(&in[j]);
    }
    const int64_t ln[][3] = {{1, 1, -7}, {77, 768, -7}, {9, 1025, -7}, {5, 320, 1000}};
    for (size_t i = 0; i < sizeof ln / sizeof *ln; i++) {
        int64_t N = ln[i][0], D = ln[i][1];
        ldm_tensor in[3] = {randt(LDM_SHAPE(N, D), ln[i][2] > 0 ? 0.1f : 2, (float)ln[i][2]),
                            randt(LDM_SHAPE(D), 1, 1),
                            randt(LDM_SHAPE(D), 1, 0)};
        snprintf(name, sizeof name, "layer_norm [%lld,%lld] mean %lld", (long long)N, (long long)D,
                 (long long)ln[i][2]);
        // D=1: var 0, out = beta exactly in both; fine at RTOL
        versus(name, in, 3, LDM_SHAPE(N, D), call_ln, NULL, RTOL);
        for (int j = 0; j < 3; j++) ldm_tensor_free(&in[j]);
    }
    // softmax in place
    const int64_t sm[][2] = {{1, 1}, {7, 4096}, {300, 77}};
    for (size_t i = 0; i < sizeof sm / sizeof *sm; i++) {
        int64_t N = sm[i][0], D = sm[i][1];
        ldm_tensor in[1] = {randt(LDM_SHAPE(N, D), 8, 3)};
        snprintf(name, sizeof name, "softmax in place [%lld,%lld]", (long long)N, (long long)D);
        versus(name, in, 1, LDM_SHAPE(N, D), call_softmax_inplace, NULL, RTOL);
        ldm_tensor_free(&in[0]);
    }
    { // softmax over rows holding -inf (an explicit mask): those entries -> 0
        ldm_tensor in[1] = {randt(LDM_SHAPE(3, 50), 4, 0)};
        for (int64_t i = 0; i < 150; i += 3) in[0].data[i] = -INFINITY;
        versus("softmax with -inf entries [3,50]", in, 1, LDM_SHAPE(3, 50), call_softmax_inplace,
               NULL, RTOL);
        ldm_tensor_free(&in[0]);
    }
    // attention: {B, Tq, Tk, NH, HS, causal}; Tq crossing the 128-row blocks
    const int64_t at[][6] = {{1, 1, 1, 1, 1, 0},    {2, 1, 77, 8, 40, 0},  {1, 129, 77, 4, 16, 0},
                             {1, 257, 257, 2, 40, 0}, {2, 77, 77, 3, 64, 1}, {1, 200, 200, 1, 24, 1},
                             {1, 9, 300, 5, 8, 1}};
    for (size_t i = 0; i < sizeof at / sizeof *at; i++) {
        int64_t B = at[i][0], Tq = at[i][1], Tk = at[i][2], D = at[i][3] * at[i][4];
        struct attn_arg a = {at[i][3], (int)at[i][5]};
        ldm_tensor in[3] = {randt(LDM_SHAPE(B, Tq, D), 1, 0), randt(LDM_SHAPE(B, Tk, D), 1, 0),
                            randt(LDM_SHAPE(B, Tk, D), 1, 0)};
        snprintf(name, sizeof name, "attention B=%lld Tq=%lld Tk=%lld NH=%lld HS=%lld%s",
                 (long long)B, (long long)Tq, (long long)Tk, (long long)at[i][3],
                 (long long)at[i][4], a.causal ? " causal" : "");
        versus(name, in, 3, LDM_SHAPE(B, Tq, D), call_attn, &a, RTOL);
        for (int j = 0; j < 3; j++) ldm_tensor_free(&in[j]);
    }
    // elementwise chain, in place (n = 1, odd, and above the threading threshold)
    const int64_t ew[] = {1, 1001, 100003};
    for (size_t i = 0; i < sizeof ew / sizeof *ew; i++) {
        ldm_tensor in[2] = {randt(LDM_SHAPE(ew[i]), 3, 0), randt(LDM_SHAPE(ew[i]), 3, 0)};
        snprintf(name, sizeof name, "silu/gelu/quick_gelu/add/mul/scale n=%lld", (long long)ew[i]);
        versus(name, in, 2, LDM_SHAPE(ew[i]), call_elementwise, NULL, RTOL);
        ldm_tensor_free(&in[0]); ldm_tensor_free(&in[1]);
    }
    {
        ldm_tensor in[1] = {randt(LDM_SHAPE(5, 33, 2 * 1280), 2, 0)};
        versus("geglu [5,33,2560]", in, 1, LDM_SHAPE(5, 33, 1280), call_geglu, NULL, RTOL);
        ldm_tensor_free(&in[0]);
    }
    // layout chain: upsample2x, concat_channels, add_channel, transpose
    const int64_t lay[][5] = {{1, 1, 1, 1, 1}, {2, 3, 5, 7, 4}, {1, 40, 33, 17, 24}};
    for (size_t i = 0; i < sizeof lay / sizeof *lay; i++) {
        int64_t B = lay[i][0], C = lay[i][1], H = lay[i][2], W = lay[i][3], C2 = lay[i][4];
        ldm_tensor in[3] = {randt(LDM_SHAPE(B, C, H, W), 1, 0),
                            randt(LDM_SHAPE(B, C2, 2 * H, 2 * W), 1, 0),
                            randt(LDM_SHAPE(B, C + C2), 1, 0)};
        snprintf(name, sizeof name, "upsample/concat/add_channel/transpose [%lld,%lld,%lld,%lld]+%lld",
                 (long long)B, (long long)C, (long long)H, (long long)W, (long long)C2);
        versus(name, in, 3, LDM_SHAPE(B, 4 * H * W, C + C2), call_layout, NULL, 0);
        for (int j = 0; j < 3; j++) ldm_tensor_free(&in[j]);
    }
}

// ---- 3. attention memory bound -----------------------------------------------------

static long peak_rss_kib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss; // KiB on Linux
}

// Self-attention over T tokens (NH heads of 40) on `cpu`; checks sampled rows
// against a direct double-precision computation and the peak-RSS growth
// against the size of the full [NH, T, T] score matrix.
static void attention_big(int64_t T, int64_t NH, int causal) {
    const int64_t HS = 40, D = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    ldm_tensor q = ldm_tensor_new(&ldm_ops_cpu, LDM_SHAPE(1, T, D));
    ldm_tensor k = ldm_tensor_new(&ldm_ops_cpu, LDM_SHAPE(1, T, D));
    ldm_tensor v = ldm_tensor_new(&ldm_ops_cpu, LDM_SHAPE(1, T, D));
    ldm_tensor out = ldm_tensor_zeros(&ldm_ops_cpu, LDM_SHAPE(1, T, D));
    // host memory: fill directly (cpu tensors are host memory)
    for (int64_t i = 0; i < q.numel; i++) {
        q.data[i] = nrand();
        k.data[i] = nrand();
        v.data[i] = nrand();
    }
    long before = peak_rss_kib();
    double t0 = omp_get_wtime();
    ldm_attention(&out, &q, &k, &v, NH, scale, causal);
    double secs = omp_get_wtime() - t0;
    long grew = peak_rss_kib() - before;
    double full_mib = (double)NH * T * T * 4 / (1 << 20);
    char name[160];
    snprintf(name, sizeof name, "attention T=%lld NH=%lld%s: peak RSS grew %.1f MiB (full scores %.0f MiB), %.2f s",
             (long long)T, (long long)NH, causal ? " causal" : "", grew / 1024.0, full_mib, secs);
    // bound: each thread may hold one block of at most 256 query rows x T
    // scores, plus 16 MiB of slack for the allocator and thread stacks; with
    // few threads that is far below the full score matrix
    int nthr = omp_get_max_threads();
    double bound_mib = nthr * 256.0 * T * 4 / (1 << 20) + 16;
    test_check(grew / 1024.0 < bound_mib && (nthr > 8 || grew / 1024.0 < full_mib / 4), name,
               "peak grew past %.0f MiB: score matrix materialised?", bound_mib);
    // sampled rows (first, block edges, last) in every head, in double
    const int64_t rows[] = {0, 1, 127, 128, T / 2 + 3, T - 1};
    int nr = sizeof rows / sizeof *rows;
    float *got = malloc((size_t)(nr * D) * sizeof(float)), *want = malloc((size_t)(nr * D) * sizeof(float));
    double *p = malloc((size_t)T * sizeof(double));
    for (int r = 0; r < nr; r++) {
        int64_t i = rows[r], nk = causal ? i + 1 : T;
        for (int64_t h = 0; h < NH; h++) {
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < nk; j++) {
                double dot = 0;
                for (int64_t d = 0; d < HS; d++) dot += (double)q.data[i * D + h * HS + d] * k.data[j * D + h * HS + d];
                p[j] = dot * scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (int64_t j = 0; j < nk; j++) sum += (p[j] = exp(p[j] - mx));
            for (int64_t d = 0; d < HS; d++) {
                double acc = 0;
                for (int64_t j = 0; j < nk; j++) acc += p[j] * v.data[j * D + h * HS + d];
                want[r * D + h * HS + d] = (float)(acc / sum);
                got[r * D + h * HS + d] = out.data[i * D + h * HS + d];
            }
        }
    }
    snprintf(name, sizeof name, "attention T=%lld NH=%lld%s sampled rows vs double", (long long)T,
             (long long)NH, causal ? " causal" : "");
    test_close(name, got, want, nr * D, RTOL, 0);
    free(got); free(want); free(p);
    ldm_tensor_free(&q); ldm_tensor_free(&k); ldm_tensor_free(&v); ldm_tensor_free(&out);
}

// ---- 4. the cpu kernels on their own (ldm/backend/cpu_kernels.h) ------------------
// The op table's cpu entries pick a kernel by shape; here each kernel runs
// directly against `ref` on the shapes where it is most likely to be wrong.

// Winograd F(4x4,3x3) against ref conv2d on x[B,Cin,H,W], w[Cout,Cin,3,3], pad p.
static void winograd_case(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t p,
                          int bias, int nthreads) {
    int64_t Ho = H + 2 * p - 2, Wo = W + 2 * p - 2;
    ldm_tensor x = randt(LDM_SHAPE(B, Cin, H, W), 1, 0);
    ldm_tensor w = randt(LDM_SHAPE(Cout, Cin, 3, 3), 1.0f / sqrtf(9.0f * Cin), 0);
    ldm_tensor b = randt(LDM_SHAPE(Cout), 1, 0);
    ldm_tensor want = ldm_tensor_zeros(&ldm_ops_ref, LDM_SHAPE(B, Cout, Ho, Wo));
    ldm_tensor got = ldm_tensor_zeros(&ldm_ops_ref, LDM_SHAPE(B, Cout, Ho, Wo));
    if (!x.data || !w.data || !b.data || !want.data || !got.data) exit(2);
    ldm_conv2d(&want, &x, &w, bias ? &b : NULL, 1, p, p, p, p);
    int rc = cpu_conv3x3_winograd(got.data, x.data, w.data, bias ? b.data : NULL, B, Cin, H, W,
                                  Cout, p, nthreads);
    char name[160];
    snprintf(name, sizeof name, "winograd vs ref [%lld,%lld,%lld,%lld]->%lld pad %lld%s, %d thr",
             (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Cout,
             (long long)p, bias ? " +bias" : "", nthreads);
    // RTOL: the Winograd transforms add rounding (measured max rel 2-4e-6 at
    // 320-1280 input channels, docs/01-tensors-and-ops.md), within 1e-5.
    if (rc == 0) test_close(name, got.data, want.data, want.numel, RTOL, 0);
    else test_check(0, name, "returned %d", rc);
    ldm_tensor_free(&x); ldm_tensor_free(&w); ldm_tensor_free(&b);
    ldm_tensor_free(&want); ldm_tensor_free(&got);
}

// The fused attention kernel against ref attention on q[B,Tq,NH*HS], k/v[B,Tk,NH*HS],
// with the micro-kernels the CPU picks (CPU_SIMD_AUTO, as the backend calls it)
// or one SIMD level named: the AVX2 ones (the path of CPUs without AVX-512,
// e.g. AMD Zen 3) and the AVX-512 ones; a level the CPU lacks is declined.
static void flash_case(int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS, int causal,
                       int nthreads, cpu_simd simd) {
    int64_t D = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    // std 1.5: scores of std ~2.2, a peaked softmax whose running max moves
    ldm_tensor q = randt(LDM_SHAPE(B, Tq, D), 1.5f, 0), k = randt(LDM_SHAPE(B, Tk, D), 1.5f, 0);
    ldm_tensor v = randt(LDM_SHAPE(B, Tk, D), 1, 0);
    ldm_tensor want = ldm_tensor_zeros(&ldm_ops_ref, LDM_SHAPE(B, Tq, D));
    ldm_tensor got = ldm_tensor_zeros(&ldm_ops_ref, LDM_SHAPE(B, Tq, D));
    if (!q.data || !k.data || !v.data || !want.data || !got.data) exit(2);
    ldm_attention(&want, &q, &k, &v, NH, scale, causal);
    int rc = cpu_attention_flash_simd(got.data, q.data, k.data, v.data, B, Tq, Tk, NH, HS, scale,
                                      causal, nthreads, simd);
    char name[128], threads[32] = "";
    if (simd == CPU_SIMD_AUTO) snprintf(threads, sizeof threads, ", %d thr", nthreads);
    snprintf(name, sizeof name, "flash %svs ref B=%lld Tq=%lld Tk=%lld NH=%lld HS=%lld%s%s",
             simd == CPU_SIMD_AUTO ? "" : simd == CPU_SIMD_AVX512 ? "avx512 " : "avx2 ",
             (long long)B, (long long)Tq, (long long)Tk, (long long)NH, (long long)HS,
             causal ? " causal" : "", threads);
#if defined(__AVX2__) && defined(__FMA__) // the library is built with the same flags
    if (simd == CPU_SIMD_AVX512 && cpu_simd_best() != CPU_SIMD_AVX512)
        test_check(rc == -1, name, "no AVX-512 on this CPU: expected -1 (declined), got %d", rc);
    else if (rc == 0) test_close(name, got.data, want.data, want.numel, RTOL, 0);
    else test_check(0, name, "returned %d", rc);
#else // e.g. `make check` (-O0, no -march): the kernel declines, attention uses two sgemms
    test_check(rc == -1, name, "built without AVX2/FMA: expected -1 (declined), got %d", rc);
#endif
    ldm_tensor_free(&q); ldm_tensor_free(&k); ldm_tensor_free(&v);
    ldm_tensor_free(&want); ldm_tensor_free(&got);
}

static void test_kernels(void) {
    // {B, Cin, H, W, Cout, pad, bias}: every dimension at 1; H, W not
    // multiples of the 4x4 tile; channels not multiples of the 8 lanes;
    // tile counts not multiples of 8; pad 0 (Ho = H - 2)
    const int64_t wc[][7] = {{1, 1, 1, 1, 1, 1, 1},   {1, 1, 3, 3, 1, 0, 0},  {2, 3, 5, 7, 2, 1, 1},
                             {1, 9, 13, 6, 17, 1, 1}, {3, 16, 4, 4, 8, 1, 0}, {1, 8, 11, 9, 1, 0, 1},
                             {2, 33, 19, 21, 35, 1, 1}, {1, 64, 32, 32, 64, 1, 1}};
    for (size_t i = 0; i < sizeof wc / sizeof *wc; i++)
        for (int nt = 1; nt <= 2; nt++)
            winograd_case(wc[i][0], wc[i][1], wc[i][2], wc[i][3], wc[i][4], wc[i][5], (int)wc[i][6], nt);
    // the dispatch: Winograd only for 3x3, stride 1, equal padding <= 1, enough channels and tiles
    test_check(cpu_winograd_fits(2, 320, 64, 64, 320, 3, 3, 1, 1, 1, 1, 1), "winograd taken: UNet conv 320 @64x64", "%s", "");
    test_check(!cpu_winograd_fits(2, 320, 64, 64, 320, 3, 3, 2, 1, 1, 1, 1), "winograd not taken: stride 2", "%s", "");
    test_check(!cpu_winograd_fits(2, 320, 64, 64, 320, 3, 3, 1, 0, 1, 0, 1), "winograd not taken: asymmetric pad", "%s", "");
    test_check(!cpu_winograd_fits(2, 320, 64, 64, 320, 1, 1, 1, 0, 0, 0, 0), "winograd not taken: 1x1", "%s", "");
    test_check(!cpu_winograd_fits(2, 4, 64, 64, 320, 3, 3, 1, 1, 1, 1, 1), "winograd not taken: 4 input channels", "%s", "");
    test_check(!cpu_winograd_fits(2, 1280, 8, 8, 1280, 3, 3, 1, 1, 1, 1, 1), "winograd not taken: 8x8 map", "%s", "");
    // through the op table: shapes that take Winograd, and their asymmetric /
    // stride-2 neighbours that must fall back to im2col, all against ref
    const int64_t tc[][12] = {{1, 17, 33, 35, 19, 3, 1, 1, 1, 1, 1, 1},
                              {2, 32, 30, 30, 16, 3, 1, 0, 0, 0, 0, 0},
                              {1, 17, 33, 35, 19, 3, 1, 0, 1, 0, 1, 1},
                              {1, 17, 33, 35, 19, 3, 2, 1, 1, 1, 1, 1}};
    for (size_t i = 0; i < sizeof tc / sizeof *tc; i++) {
        const int64_t *c = tc[i];
        int64_t B = c[0], Cin = c[1], H = c[2], W = c[3], Co = c[4], Kk = c[5];
        struct conv_arg a = {c[6], c[7], c[8], c[9], c[10]};
        int64_t Ho = (H + a.pt + a.pb - Kk) / a.s + 1, Wo = (W + a.pl + a.pr - Kk) / a.s + 1;
        ldm_tensor in[3] = {randt(LDM_SHAPE(B, Cin, H, W), 1, 0),
                            randt(LDM_SHAPE(Co, Cin, Kk, Kk), 0.1f, 0), randt(LDM_SHAPE(Co), 1, 0)};
        if (!c[11]) ldm_tensor_free(&in[2]);
        int wino = cpu_winograd_fits(B, Cin, H, W, Co, Kk, Kk, a.s, a.pt, a.pb, a.pl, a.pr);
        char name[128];
        snprintf(name, sizeof name, "conv2d [%lld,%lld,%lld,%lld]->%lld s%lld pad %lld,%lld,%lld,%lld (%s)",
                 (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Co,
                 (long long)a.s, (long long)a.pt, (long long)a.pb, (long long)a.pl, (long long)a.pr,
                 wino ? "winograd" : "im2col");
        test_check(wino == (i < 2), name, "expected %s", i < 2 ? "winograd" : "im2col");
        versus(name, in, 3, LDM_SHAPE(B, Co, Ho, Wo), call_conv, &a, RTOL);
        for (int j = 0; j < 3; j++) ldm_tensor_free(&in[j]);
    }
    // fused attention {B, Tq, Tk, NH, HS, causal}: HS = 8..80 (every P V tile
    // width 1..5 vectors), one query or one key, Tq/Tk not multiples of the
    // 4-row / 24-key micro-tiles, the 240-key blocks or the 128-row blocks,
    // causal blocks past the diagonal, and the UNet's 77-token cross-attention
    const int64_t fc[][6] = {{1, 1, 1, 1, 8, 0},     {1, 1, 1, 1, 8, 1},     {2, 5, 7, 3, 16, 0},
                             {1, 131, 250, 2, 24, 0}, {1, 300, 300, 2, 32, 1}, {2, 77, 77, 3, 64, 1},
                             {1, 129, 77, 4, 40, 0},  {1, 33, 500, 1, 80, 0},  {2, 257, 257, 2, 40, 1},
                             {1, 1, 481, 2, 48, 0}};
    for (size_t i = 0; i < sizeof fc / sizeof *fc; i++)
        for (int nt = 1; nt <= 2; nt++)
            flash_case(fc[i][0], fc[i][1], fc[i][2], fc[i][3], fc[i][4], (int)fc[i][5], nt,
                       CPU_SIMD_AUTO);
    // each SIMD level on the shapes that stress its tiles: HS = 8..160 (the
    // AVX-512 P V kernel's 1-3 vectors, masked last vector at HS = 40, 8, 24),
    // keys not a multiple of its 48-key tile, causal, the UNet's head sizes
    const int64_t sc[][6] = {{1, 1, 1, 1, 8, 0},     {2, 5, 7, 3, 16, 1},   {1, 131, 250, 2, 24, 0},
                             {1, 129, 500, 2, 40, 0}, {2, 257, 257, 2, 40, 1}, {1, 33, 290, 1, 80, 0},
                             {1, 70, 100, 1, 160, 1}, {1, 9, 481, 2, 112, 0}};
    for (size_t i = 0; i < sizeof sc / sizeof *sc; i++)
        for (int simd = CPU_SIMD_AVX2; simd <= CPU_SIMD_AVX512; simd++)
            flash_case(sc[i][0], sc[i][1], sc[i][2], sc[i][3], sc[i][4], (int)sc[i][5], 2,
                       (cpu_simd)simd);
    {   // a head size that is not a multiple of 8: declined, nothing written
        float o = 7.0f, x = 1.0f;
        int rc = cpu_attention_flash(&o, &x, &x, &x, 1, 1, 1, 1, 1, 1.0f, 0, 1);
        test_check(rc == -1 && o == 7.0f, "flash declines HS=1", "rc %d, out %g", rc, o);
    }
}

// ---- tensor.c and backend selection ------------------------------------------------

static void test_tensor_basics(void) {
    const int64_t big[] = {INT64_MAX / 2, 4};
    test_check(ldm_shape_numel(big, 2) == -1, "shape numel overflow detected", "got %lld",
               (long long)ldm_shape_numel(big, 2));
    ldm_tensor bad = ldm_tensor_new(&ldm_ops_cpu, big, 2);
    test_check(bad.data == NULL && *ldm_last_error(), "tensor_new refuses an overflowing shape", "%s", "");
    ldm_tensor z = ldm_tensor_zeros(&ldm_ops_cpu, LDM_SHAPE(3, 4, 5));
    int zero = z.numel == 60;
    for (int64_t i = 0; i < z.numel; i++) zero &= z.data[i] == 0.0f;
    test_check(zero && ((uintptr_t)z.data & 63) == 0, "zeros: 60 zeros, 64-byte aligned on cpu", "%s", "");
    ldm_tensor vw = ldm_tensor_view(&z, LDM_SHAPE(12, 5));
    ldm_tensor sl = ldm_tensor_slice0(&z, 1, 2);
    test_check(vw.data == z.data && !vw.owns && vw.shape[0] == 12 && vw.numel == 60, "view", "%s", "");
    test_check(sl.data == z.data + 20 && sl.numel == 40 && sl.shape[0] == 2 && !sl.owns, "slice0", "%s", "");
    ldm_tensor_free(&vw); // a view never frees
    ldm_tensor_free(&z);
    test_check(z.data == NULL, "free clears the struct", "%s", "");
    test_check(ldm_backend("ref") == &ldm_ops_ref && ldm_backend("cpu") == &ldm_ops_cpu,
               "ldm_backend(ref|cpu)", "%s", "");
    ldm_clear_error();
    test_check(ldm_backend("gpu0") == NULL && strstr(ldm_last_error(), "gpu0"),
               "ldm_backend rejects an unknown name, naming it", "%s", ldm_last_error());
    // the library reads no environment: $LDM_BACKEND is main's to read (tools/sd.c)
    setenv("LDM_BACKEND", "ref", 1);
    test_check(ldm_backend_default() == &ldm_ops_cpu, "LDM_BACKEND is not read by the library",
               "%s", "");
    unsetenv("LDM_BACKEND");
    test_check(ldm_backend_default() == &ldm_ops_cpu, "default backend is cpu", "%s", "");
}

int main(void) {
    // First, while the process is still small: the attention memory bound.
    printf("-- attention memory bound (cpu)\n");
    // Under ASan (make check, -O0) the exp loops run ~30x slower: 2 heads
    // there, 8 in the optimised build.
    attention_big(4096, SANITIZED ? 2 : 8, 0);
    attention_big(4096, 2, 1);
    attention_big(8192, 1, SANITIZED); // causal (half the work) under ASan
    printf("-- tensor and backend basics\n");
    test_tensor_basics();
    printf("-- PyTorch fixtures, ref and cpu\n");
    test_fixtures();
    printf("-- cpu vs ref, random shapes\n");
    test_random();
    printf("-- cpu kernels vs ref\n");
    test_kernels();
    return test_summary();
}
