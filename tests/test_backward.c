/*
 * tests/test_backward.c -- the backward ops of struct ldm_ops (ldm/backend/ops.h)
 * and the optimizer of ldm/train/optim.h, checked four ways:
 *
 *   1. against torch autograd: the cases of tests/fixtures/backward/cases.txt
 *      (tools/reference/fixtures_backward.py), every gradient of every input
 *      on `ref` and `cpu`, within 1e-5 of max|gradient| of the float64
 *      reference (and of torch's float32 gradient, printed beside it);
 *   2. accumulate semantics: each gradient prefilled with the reference,
 *      then one more backward must give twice the reference, and a gradient
 *      passed as NULL must be left alone (the first one of every op that
 *      allows NULL);
 *   3. finite differences of the project's own forward ops (`ref`, sums in
 *      double) on a few elements of each input: a truth independent of torch;
 *   4. `cpu` against `ref` on larger shapes (the sgemm paths of linear and
 *      conv2d: several 64-row blocks, 1x1 direct, stride 2), the NULL-entry
 *      message of a backend that cannot train, and AdamW + clip_grad_norm_ +
 *      EMA against torch.optim over 5 steps (1e-6).
 */
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/train/optim.h"
#include "tests/test.h"

#define FIX "tests/fixtures/backward/"
#define RTOL 1e-5

// ---- helpers ------------------------------------------------------------------------

static const char *param(const char *line, const char *key) {
    size_t n = strlen(key);
    for (const char *p = line; (p = strstr(p, key)); p += n)
        if ((p == line || p[-1] == ' ') && p[n] == '=') return p + n + 1;
    return NULL;
}

// FIX<case>.<name>.npy into *t (ref memory); 0 (and *t zeroed) when absent.
static int load(ldm_tensor *t, const char *cname, const char *tname) {
    char path[512];
    snprintf(path, sizeof path, FIX "%s.%s.npy", cname, tname);
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    if (ldm_npy_read(t, &ldm_ops_ref, path) != 0) {
        test_check(0, path, "%s", ldm_last_error());
        return 0;
    }
    return 1;
}

// The inputs a case may have; gradient i is d<name i>.
enum { X, W, BIAS, GAMMA, BETA, A, B_, Q, K, V, Y, TABLE, POS, NIN };
static const char *in_names[NIN] = {"x", "w", "bias", "gamma", "beta", "a", "b", "q", "k", "v",
                                    "y", "table", "pos"};

typedef struct {
    const char *op, *line;
    ldm_tensor in[NIN];      // inputs on the backend (data NULL when absent)
    ldm_tensor grad[NIN];    // gradients on the backend (data NULL when not a gradient here)
    ldm_tensor dout;         // upstream gradient on the backend
    int32_t ids[64];         // embedding ids (host)
    int64_t nids;
    int skip;                // index of a gradient passed as NULL (-1: none)
} bcase;

#define IN(i) (c->in[i].data ? &c->in[i] : NULL)
#define G(i) (c->grad[i].data && c->skip != (i) ? &c->grad[i] : NULL)

// Ops whose wrapper takes a NULL gradient (the accumulate pass skips the first).
static int first_may_be_null(const char *op) {
    static const char *ops[] = {"linear", "conv2d", "group_norm", "layer_norm", "attention",
                                "add", "mul", "add_channel", "embedding"};
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
        if (!strcmp(op, ops[i])) return 1;
    return 0;
}

// The backward of case c's op, through the checked wrappers.
static void run_backward(bcase *c, const struct ldm_ops *ops) {
    const char *op = c->op, *line = c->line;
    if (!strcmp(op, "linear")) {
        ldm_linear_backward(G(X), G(W), G(BIAS), &c->dout, IN(X), IN(W));
    } else if (!strcmp(op, "conv2d")) {
        long long pt, pb, pl, pr;
        sscanf(param(line, "pad"), "%lld,%lld,%lld,%lld", &pt, &pb, &pl, &pr);
        ldm_conv2d_backward(G(X), G(W), G(BIAS), &c->dout, IN(X), IN(W),
                            atoll(param(line, "stride")), pt, pb, pl, pr);
    } else if (!strcmp(op, "group_norm")) {
        ldm_group_norm_backward(G(X), G(GAMMA), G(BETA), &c->dout, IN(X), IN(GAMMA),
                                atoll(param(line, "groups")), strtof(param(line, "eps"), NULL));
    } else if (!strcmp(op, "layer_norm")) {
        ldm_layer_norm_backward(G(X), G(GAMMA), G(BETA), &c->dout, IN(X), IN(GAMMA),
                                strtof(param(line, "eps"), NULL));
    } else if (!strcmp(op, "softmax")) {
        ldm_tensor y = test_tensor_zeros_like(ops, IN(X));
        ldm_softmax(&y, IN(X));                       // the forward's output
        ldm_softmax_backward(G(X), &c->dout, &y);
        ldm_tensor_free(&y);
    } else if (!strcmp(op, "attention")) {
        ldm_attention_backward(G(Q), G(K), G(V), &c->dout, IN(Q), IN(K), IN(V),
                               atoll(param(line, "NH")), strtof(param(line, "scale"), NULL),
                               atoi(param(line, "causal")));
    } else if (!strcmp(op, "silu")) {
        ldm_silu_backward(G(X), &c->dout, IN(X));
    } else if (!strcmp(op, "gelu")) {
        ldm_gelu_backward(G(X), &c->dout, IN(X));
    } else if (!strcmp(op, "quick_gelu")) {
        ldm_quick_gelu_backward(G(X), &c->dout, IN(X));
    } else if (!strcmp(op, "geglu")) {
        ldm_geglu_backward(G(X), &c->dout, IN(X));
    } else if (!strcmp(op, "add")) {
        ldm_add_backward(G(A), G(B_), &c->dout);
    } else if (!strcmp(op, "mul")) {
        ldm_mul_backward(G(A), G(B_), &c->dout, IN(A), IN(B_));
    } else if (!strcmp(op, "scale")) {
        ldm_scale_backward(G(A), &c->dout, strtof(param(line, "s"), NULL));
    } else if (!strcmp(op, "add_channel")) {
        ldm_add_channel_backward(G(X), G(Y), &c->dout);
    } else if (!strcmp(op, "upsample2x")) {
        ldm_upsample2x_backward(G(X), &c->dout);
    } else if (!strcmp(op, "concat_channels")) {
        ldm_concat_channels_backward(G(A), G(B_), &c->dout);
    } else if (!strcmp(op, "transpose")) {
        ldm_transpose_backward(G(X), &c->dout);
    } else if (!strcmp(op, "embedding")) {
        // x[b,t] = table[ids[b,t]] + pos[t]: the lookup's backward for the
        // table, and per sample the add's backward into the rows of pos used
        int64_t Bn = c->dout.shape[0], T = c->dout.shape[1], D = c->dout.shape[2];
        if (G(TABLE)) ldm_embedding_backward(G(TABLE), &c->dout, c->ids, c->nids);
        if (G(POS)) {
            ldm_tensor dpos = ldm_tensor_slice0(G(POS), 0, T);            // [T,D]
            for (int64_t b = 0; b < Bn; b++) {
                ldm_tensor db = ldm_tensor_slice0(&c->dout, b, 1);
                ldm_tensor dbv = ldm_tensor_view(&db, LDM_SHAPE(T, D));
                ldm_add_backward(NULL, &dpos, &dbv);
            }
        }
    } else {
        test_check(0, c->line, "unknown op '%s' in cases.txt", op);
    }
}

// Loads case `cname` onto `ops`. Gradients: zeros, or the float64 reference
// when `prefill` (the accumulate pass).
static void case_load(bcase *c, const char *op, const char *cname, const char *line,
                      const struct ldm_ops *ops, int prefill) {
    memset(c, 0, sizeof *c);
    c->op = op; c->line = line; c->skip = -1;
    for (int i = 0; i < NIN; i++) {
        ldm_tensor h, e;
        char dname[64];
        if (load(&h, cname, in_names[i])) { c->in[i] = test_tensor_on(ops, &h); ldm_tensor_free(&h); }
        snprintf(dname, sizeof dname, "d%s", in_names[i]);
        if (load(&e, cname, dname)) {
            c->grad[i] = prefill ? test_tensor_on(ops, &e) : test_tensor_zeros_like(ops, &e);
            ldm_tensor_free(&e);
        }
    }
    ldm_tensor h;
    if (load(&h, cname, "dout")) { c->dout = test_tensor_on(ops, &h); ldm_tensor_free(&h); }
    if (load(&h, cname, "ids")) {
        c->nids = h.numel < 64 ? h.numel : 64;
        for (int64_t i = 0; i < c->nids; i++) c->ids[i] = (int32_t)h.data[i];
        ldm_tensor_free(&h);
    }
}

static void case_free(bcase *c) {
    for (int i = 0; i < NIN; i++) { ldm_tensor_free(&c->in[i]); ldm_tensor_free(&c->grad[i]); }
    ldm_tensor_free(&c->dout);
}

// ---- 1 + 2. torch fixtures, and accumulate semantics -------------------------------------

static void run_fixture(const char *op, const char *cname, const char *line,
                        const struct ldm_ops *ops) {
    bcase c;
    case_load(&c, op, cname, line, ops, 0);
    if (!c.dout.data) { test_check(0, cname, "missing %s.dout.npy", cname); case_free(&c); return; }
    run_backward(&c, ops);
    for (int i = 0; i < NIN; i++) {
        if (!c.grad[i].data) continue;
        char name[160], dname[64];
        ldm_tensor e64, e32;
        snprintf(dname, sizeof dname, "d%s", in_names[i]);
        load(&e64, cname, dname);
        snprintf(dname, sizeof dname, "d%s.f32", in_names[i]);
        load(&e32, cname, dname);
        float *got = test_tensor_host(&c.grad[i]);
        snprintf(name, sizeof name, "%s %s d%s vs torch f64", ops->name, cname, in_names[i]);
        test_close(name, got, e64.data, e64.numel, RTOL, 0);
        snprintf(name, sizeof name, "%s %s d%s vs torch f32", ops->name, cname, in_names[i]);
        test_close(name, got, e32.data, e32.numel, RTOL, 0);
        free(got);
        ldm_tensor_free(&e64);
        ldm_tensor_free(&e32);
    }
    case_free(&c);

    // accumulate: gradients start at the reference E; one backward more gives
    // 2E; the skipped (NULL) gradient stays E
    case_load(&c, op, cname, line, ops, 1);
    if (first_may_be_null(op))
        for (int i = 0; i < NIN && c.skip < 0; i++)
            if (c.grad[i].data) c.skip = i;
    run_backward(&c, ops);
    for (int i = 0; i < NIN; i++) {
        if (!c.grad[i].data) continue;
        char name[160], dname[64];
        ldm_tensor e;
        snprintf(dname, sizeof dname, "d%s", in_names[i]);
        load(&e, cname, dname);
        if (i != c.skip)
            for (int64_t j = 0; j < e.numel; j++) e.data[j] *= 2.0f;
        float *got = test_tensor_host(&c.grad[i]);
        snprintf(name, sizeof name, "%s %s d%s %s", ops->name, cname, in_names[i],
                 i == c.skip ? "NULL: untouched" : "accumulates (+=)");
        test_close(name, got, e.data, e.numel, RTOL, 0);
        free(got);
        ldm_tensor_free(&e);
    }
    case_free(&c);
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
    test_check(n >= 27, "fixture cases read", "only %d cases in cases.txt", n);
}

// ---- 3. finite differences of the project's forward ----------------------------------------

// L = sum(out * dout) with out from the `ref` forward of case c (sum in double).
static double forward_loss(bcase *c) {
    const char *op = c->op, *line = c->line;
    ldm_tensor out = test_tensor_zeros_like(&ldm_ops_ref, &c->dout);
    if (!strcmp(op, "linear")) {
        ldm_linear(&out, IN(X), IN(W), IN(BIAS));
    } else if (!strcmp(op, "conv2d")) {
        long long pt, pb, pl, pr;
        sscanf(param(line, "pad"), "%lld,%lld,%lld,%lld", &pt, &pb, &pl, &pr);
        ldm_conv2d(&out, IN(X), IN(W), IN(BIAS), atoll(param(line, "stride")), pt, pb, pl, pr);
    } else if (!strcmp(op, "group_norm")) {
        ldm_group_norm(&out, IN(X), IN(GAMMA), IN(BETA), atoll(param(line, "groups")),
                       strtof(param(line, "eps"), NULL));
    } else if (!strcmp(op, "layer_norm")) {
        ldm_layer_norm(&out, IN(X), IN(GAMMA), IN(BETA), strtof(param(line, "eps"), NULL));
    } else if (!strcmp(op, "softmax")) {
        ldm_softmax(&out, IN(X));
    } else if (!strcmp(op, "attention")) {
        ldm_attention(&out, IN(Q), IN(K), IN(V), atoll(param(line, "NH")),
                      strtof(param(line, "scale"), NULL), atoi(param(line, "causal")));
    } else if (!strcmp(op, "silu")) {
        ldm_silu(&out, IN(X));
    } else if (!strcmp(op, "gelu")) {
        ldm_gelu(&out, IN(X));
    } else if (!strcmp(op, "quick_gelu")) {
        ldm_quick_gelu(&out, IN(X));
    } else if (!strcmp(op, "geglu")) {
        ldm_geglu(&out, IN(X));
    } else if (!strcmp(op, "mul")) {
        ldm_mul(&out, IN(A), IN(B_));
    } else if (!strcmp(op, "upsample2x")) {
        ldm_upsample2x(&out, IN(X));
    } else if (!strcmp(op, "add_channel")) {
        ldm_add_channel(&out, IN(X), IN(Y));
    }
    double L = 0;
    for (int64_t i = 0; i < out.numel; i++) L += (double)out.data[i] * c->dout.data[i];
    ldm_tensor_free(&out);
    return L;
}

// Central differences on 5 elements spread over each input with a gradient:
// (L(x+h) - L(x-h)) / (2h), h = 1e-2 (the step actually taken after rounding
// x +- h to float). Tolerance 2e-4 of max|gradient|: the forward rounds its
// outputs to float (~6e-8 relative), which the division by 2h magnifies
// ~50x, and the O(h^2) truncation term is ~1e-5 for these smooth ops.
static void test_finite_differences(void) {
    static const char *cases[][2] = {
        {"linear", "linear"}, {"conv2d", "conv_s2_asym"}, {"group_norm", "gn"},
        {"group_norm", "gn_1group"}, {"layer_norm", "ln"}, {"softmax", "softmax"},
        {"attention", "attn_causal"}, {"attention", "attn_cross"}, {"silu", "silu"},
        {"gelu", "gelu"}, {"quick_gelu", "quick_gelu"}, {"geglu", "geglu"}, {"mul", "mul"},
        {"upsample2x", "upsample2x"}, {"add_channel", "add_channel"}};
    char line[512];
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const char *op = cases[ci][0], *cname = cases[ci][1];
        // the manifest line (for the op's parameters)
        FILE *f = fopen(FIX "cases.txt", "r");
        if (!f) return;
        int found = 0;
        while (!found && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = '\0';
            char o[64], n[128];
            found = sscanf(line, "%63s %127s", o, n) == 2 && !strcmp(n, cname);
        }
        fclose(f);
        if (!test_check(found, cname, "not in cases.txt")) continue;
        bcase c;
        case_load(&c, op, cname, line, &ldm_ops_ref, 0);
        run_backward(&c, &ldm_ops_ref);                 // the analytic gradients
        for (int i = 0; i < NIN; i++) {
            if (!c.grad[i].data || !c.in[i].data) continue;
            float *xs = c.in[i].data, *g = c.grad[i].data;
            int64_t n = c.in[i].numel;
            double gmax = 0, err = 0;
            for (int64_t j = 0; j < n; j++) gmax = fabs(g[j]) > gmax ? fabs(g[j]) : gmax;
            for (int s = 0; s < 5; s++) {
                int64_t j = s * (n - 1) / 4;
                float x0 = xs[j];
                xs[j] = x0 + 1e-2f;
                float xp = xs[j];
                double Lp = forward_loss(&c);
                xs[j] = x0 - 1e-2f;
                float xm = xs[j];
                double Lm = forward_loss(&c);
                xs[j] = x0;
                double fd = (Lp - Lm) / ((double)xp - (double)xm);
                if (fabs(fd - g[j]) > err) err = fabs(fd - g[j]);
            }
            char name[160];
            snprintf(name, sizeof name, "finite differences %s d%s", cname, in_names[i]);
            test_check(err <= 2e-4 * gmax, name, "max |fd - grad| %.3e, max |grad| %.3e", err, gmax);
            printf("          (max |fd - grad| %.2e = %.2e of max |grad|)\n", err, err / gmax);
        }
        case_free(&c);
    }
}

// ---- 4. cpu against ref on larger shapes; a backend that cannot train --------------------

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static float urand(void) {
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (float)((double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0) * 2 - 1;
}
static ldm_tensor rand_on(const struct ldm_ops *ops, const int64_t *shape, int ndim) {
    ldm_tensor t = ldm_tensor_new(ops, shape, ndim);
    if (!t.data) exit(2);
    for (int64_t i = 0; i < t.numel; i++) t.data[i] = urand();
    return t;
}

// linear (M, K, N) or conv2d (the rest) on ref and cpu from the same data; gradients
// start nonzero (accumulation) and are compared cpu vs ref.
static void versus(const char *name, int conv, int64_t B, int64_t Cin, int64_t H, int64_t W,
                   int64_t Cout, int64_t k, int64_t s, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
    int64_t Ho = conv ? (H + pt + pb - k) / s + 1 : 0, Wo = conv ? (W + pl + pr - k) / s + 1 : 0;
    ldm_tensor x = conv ? rand_on(&ldm_ops_ref, LDM_SHAPE(B, Cin, H, W))
                        : rand_on(&ldm_ops_ref, LDM_SHAPE(B, Cin));          // [M,K]
    ldm_tensor w = conv ? rand_on(&ldm_ops_ref, LDM_SHAPE(Cout, Cin, k, k))
                        : rand_on(&ldm_ops_ref, LDM_SHAPE(Cout, Cin));       // [N,K]
    ldm_tensor dout = conv ? rand_on(&ldm_ops_ref, LDM_SHAPE(B, Cout, Ho, Wo))
                           : rand_on(&ldm_ops_ref, LDM_SHAPE(B, Cout));      // [M,N]
    ldm_tensor g0[3] = {rand_on(&ldm_ops_ref, x.shape, x.ndim), rand_on(&ldm_ops_ref, w.shape, w.ndim),
                        rand_on(&ldm_ops_ref, LDM_SHAPE(Cout))};
    float *res[2][3];
    const struct ldm_ops *be[2] = {&ldm_ops_ref, &ldm_ops_cpu};
    for (int b = 0; b < 2; b++) {
        ldm_tensor xb = test_tensor_on(be[b], &x), wb = test_tensor_on(be[b], &w), gb = test_tensor_on(be[b], &dout);
        ldm_tensor d[3] = {test_tensor_on(be[b], &g0[0]), test_tensor_on(be[b], &g0[1]), test_tensor_on(be[b], &g0[2])};
        if (conv) ldm_conv2d_backward(&d[0], &d[1], &d[2], &gb, &xb, &wb, s, pt, pb, pl, pr);
        else ldm_linear_backward(&d[0], &d[1], &d[2], &gb, &xb, &wb);
        for (int i = 0; i < 3; i++) { res[b][i] = test_tensor_host(&d[i]); ldm_tensor_free(&d[i]); }
        ldm_tensor_free(&xb); ldm_tensor_free(&wb); ldm_tensor_free(&gb);
    }
    static const char *gn[3] = {"dx", "dw", "db"};
    for (int i = 0; i < 3; i++) {
        char full[160];
        snprintf(full, sizeof full, "cpu vs ref %s %s", name, gn[i]);
        test_close(full, res[1][i], res[0][i], g0[i].numel, RTOL, 0);
        free(res[0][i]); free(res[1][i]);
        ldm_tensor_free(&g0[i]);
    }
    ldm_tensor_free(&x); ldm_tensor_free(&w); ldm_tensor_free(&dout);
}

// attention q[B,Tq,NH*HS], k/v[B,Tk,NH*HS] on ref and cpu from the same data;
// gradients start nonzero (accumulation) and are compared cpu vs ref.
static void versus_attn(int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS, int causal) {
    int64_t D = NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
    ldm_tensor in[4] = {rand_on(&ldm_ops_ref, LDM_SHAPE(B, Tq, D)), rand_on(&ldm_ops_ref, LDM_SHAPE(B, Tk, D)),
                        rand_on(&ldm_ops_ref, LDM_SHAPE(B, Tk, D)), rand_on(&ldm_ops_ref, LDM_SHAPE(B, Tq, D))};
    ldm_tensor g0[3] = {rand_on(&ldm_ops_ref, in[0].shape, 3), rand_on(&ldm_ops_ref, in[1].shape, 3),
                        rand_on(&ldm_ops_ref, in[2].shape, 3)};
    float *res[2][3];
    const struct ldm_ops *be[2] = {&ldm_ops_ref, &ldm_ops_cpu};
    for (int b = 0; b < 2; b++) {
        ldm_tensor t[4], d[3];
        for (int i = 0; i < 4; i++) t[i] = test_tensor_on(be[b], &in[i]);
        for (int i = 0; i < 3; i++) d[i] = test_tensor_on(be[b], &g0[i]);
        ldm_attention_backward(&d[0], &d[1], &d[2], &t[3], &t[0], &t[1], &t[2], NH, scale, causal);
        for (int i = 0; i < 3; i++) { res[b][i] = test_tensor_host(&d[i]); ldm_tensor_free(&d[i]); }
        for (int i = 0; i < 4; i++) ldm_tensor_free(&t[i]);
    }
    static const char *gn[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        char full[160];
        snprintf(full, sizeof full, "cpu vs ref attention B=%lld Tq=%lld Tk=%lld NH=%lld HS=%lld%s %s",
                 (long long)B, (long long)Tq, (long long)Tk, (long long)NH, (long long)HS,
                 causal ? " causal" : "", gn[i]);
        test_close(full, res[1][i], res[0][i], g0[i].numel, RTOL, 0);
        free(res[0][i]); free(res[1][i]);
        ldm_tensor_free(&g0[i]);
    }
    for (int i = 0; i < 4; i++) ldm_tensor_free(&in[i]);
}

static void test_cpu_vs_ref(void) {
    versus("linear M=67 K=130 N=150", 0, 67, 130, 0, 0, 150, 0, 0, 0, 0, 0, 0);
    versus("linear M=1 K=1 N=1", 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0);
    versus("conv 3x3 s1 p1 [2,8,17,13]->16", 1, 2, 8, 17, 13, 16, 3, 1, 1, 1, 1, 1);
    versus("conv 3x3 s2 pad(0,1,0,1) [2,8,17,16]->6", 1, 2, 8, 17, 16, 6, 3, 2, 0, 1, 0, 1);
    versus("conv 1x1 [2,16,9,7]->8", 1, 2, 16, 9, 7, 8, 1, 1, 0, 0, 0, 0);
    versus("conv 4x4 s2 pad(2,1,0,3) [1,5,10,11]->3", 1, 1, 5, 10, 11, 3, 4, 2, 2, 1, 0, 3);
    // attention: query blocks of 128 (300 = 2 full + 1 partial), causal across
    // blocks, cross-attention with 77 keys, odd head sizes, every size at 1
    versus_attn(2, 300, 300, 2, 5, 0);
    versus_attn(1, 300, 300, 3, 8, 1);
    versus_attn(3, 129, 77, 2, 7, 0);
    versus_attn(1, 1, 1, 1, 1, 0);
    versus_attn(1, 1, 1, 1, 1, 1);
    versus_attn(2, 5, 9, 1, 1, 1);
}

static void test_can_train(void) {
    test_check(ldm_backend_can_train(&ldm_ops_ref), "ref can train", "%s", ldm_last_error());
    test_check(ldm_backend_can_train(&ldm_ops_cpu), "cpu can train", "%s", ldm_last_error());
    extern const struct ldm_ops ldm_ops_cuda_emu; // the CUDA backend's table, run on the CPU
    int ok = !ldm_backend_can_train(&ldm_ops_cuda_emu) &&
             strstr(ldm_last_error(), "backward ops are not implemented on cuda-emu yet");
    test_check(ok, "cuda-emu: backward ops are not implemented yet (clear error)",
               "got '%s'", ldm_last_error());
}

// ---- AdamW + clip_grad_norm_ + EMA against torch -------------------------------------------

static void test_adamw(void) {
    char *conf = test_read_file(FIX "adamw.txt", NULL);
    if (!test_check(conf != NULL, FIX "adamw.txt", "missing: run `make fixtures`")) return;
    const char *l = strchr(conf, '\n') + 1;
    int64_t n0 = atoll(param(l, "n0")), n1 = atoll(param(l, "n1")), n = n0 + n1;
    int steps = atoi(param(l, "steps"));
    ldm_adamw_config c = {.beta1 = atof(param(l, "beta1")), .beta2 = atof(param(l, "beta2")),
                          .eps = atof(param(l, "eps")), .weight_decay = atof(param(l, "wd"))};
    double lr = atof(param(l, "lr")), max_norm = atof(param(l, "max_norm"));
    double ema_max = atof(param(l, "ema_max"));
    int64_t warmup = atoll(param(l, "warmup"));
    ldm_tensor p0, grad, lrs, norm, param_t, m_t, v_t, ema_t;
    load(&p0, "adamw", "param0"); load(&grad, "adamw", "grad"); load(&lrs, "adamw", "lr");
    load(&norm, "adamw", "norm"); load(&param_t, "adamw", "param"); load(&m_t, "adamw", "m");
    load(&v_t, "adamw", "v"); load(&ema_t, "adamw", "ema");
    float *p = calloc((size_t)n, sizeof(float)), *m = calloc((size_t)n, sizeof(float));
    float *v = calloc((size_t)n, sizeof(float)), *e = calloc((size_t)n, sizeof(float));
    float *g = calloc((size_t)n, sizeof(float));
    memcpy(p, p0.data, (size_t)n * sizeof(float));
    memcpy(e, p0.data, (size_t)n * sizeof(float));
    for (int t = 0; t < steps; t++) {
        char name[128];
        memcpy(g, grad.data + t * n, (size_t)n * sizeof(float));
        float *grads[2] = {g, g + n0};          // two parameter tensors, one global norm
        int64_t sizes[2] = {n0, n1};
        double lr_t = ldm_lr_warmup(lr, t, warmup);
        snprintf(name, sizeof name, "step %d lr warm-up", t + 1);
        test_check(fabs(lr_t - lrs.data[t]) <= 1e-6 * lr, name, "%g vs torch %g", lr_t, lrs.data[t]);
        double nm = ldm_clip_grad_norm(grads, sizes, 2, max_norm);
        snprintf(name, sizeof name, "step %d clip_grad_norm_ total norm %.4f", t + 1, nm);
        test_check(fabs(nm - norm.data[t]) <= 1e-6 * norm.data[t], name, "torch %g", norm.data[t]);
        ldm_adamw_update(p, m, v, g, n0, &c, lr_t, t + 1);
        ldm_adamw_update(p + n0, m + n0, v + n0, g + n0, n1, &c, lr_t, t + 1);
        ldm_ema_update(e, p, n, ldm_ema_decay(t + 1, ema_max));
        snprintf(name, sizeof name, "step %d AdamW param", t + 1);
        test_close(name, p, param_t.data + t * n, n, 1e-6, 0);
        snprintf(name, sizeof name, "step %d AdamW exp_avg", t + 1);
        test_close(name, m, m_t.data + t * n, n, 1e-6, 0);
        snprintf(name, sizeof name, "step %d AdamW exp_avg_sq", t + 1);
        test_close(name, v, v_t.data + t * n, n, 1e-6, 0);
        snprintf(name, sizeof name, "step %d EMA", t + 1);
        test_close(name, e, ema_t.data + t * n, n, 1e-6, 0);
    }
    free(p); free(m); free(v); free(e); free(g); free(conf);
    ldm_tensor *all[] = {&p0, &grad, &lrs, &norm, &param_t, &m_t, &v_t, &ema_t};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) ldm_tensor_free(all[i]);
}

int main(void) {
    printf("backward ops against torch autograd (f64 and f32), accumulate semantics:\n");
    test_fixtures();
    printf("finite differences of the forward ops:\n");
    test_finite_differences();
    printf("cpu against ref:\n");
    test_cpu_vs_ref();
    test_can_train();
    printf("AdamW + clip_grad_norm_ + EMA against torch.optim:\n");
    test_adamw();
    return test_summary();
}
