/*
 * ldm/backend/ops.c -- backend selection and the checked op wrappers (see ops.h).
 *
 * The wrappers are the only way model code reaches arithmetic: each one
 * asserts its shape contract (LDM_ASSERT prints file:line and the shapes,
 * then aborts -- a failure here is a bug in the caller, never bad user
 * input) and then calls the table entry of the backend that owns `out`.
 * The wrappers never look at data, so they cost nothing measurable.
 *
 * Backends: `ref` (ops_ref.c), `cpu` (ops_cpu.c), and `cuda` when the CUDA
 * object is linked in (`make cuda`): ldm_ops_cuda is a weak symbol here, so a
 * build without CUDA simply reports that the backend is not available.
 * `cuda-emu` (ldm/backend/ops_cuda_emu.c) is the CUDA backend's code run on the CPU,
 * for testing it anywhere.
 */
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"

// ---- backend selection ------------------------------------------------------

// Defined in ldm/backend/ops_cuda.cu when built with `make cuda`; NULL address otherwise.
extern const struct ldm_ops ldm_ops_cuda __attribute__((weak));
// The CUDA backend's host code and kernels run on the CPU (ldm/backend/ops_cuda_emu.c,
// in every build).
extern const struct ldm_ops ldm_ops_cuda_emu;
// ldm/backend/ops_cuda.cu: number of usable GPUs (0 without a device or driver).
extern int ldm_cuda_device_count(void) __attribute__((weak));

const struct ldm_ops *ldm_backend(const char *name) {
    if (!name) name = "";
    if (strcmp(name, "ref") == 0) return &ldm_ops_ref;
    if (strcmp(name, "cpu") == 0) return &ldm_ops_cpu;
    if (strcmp(name, "cuda") == 0) {
        if (&ldm_ops_cuda != NULL && ldm_cuda_device_count && ldm_cuda_device_count() == 0) {
            ldm_error("backend 'cuda': this build has it, but no CUDA device is usable here "
                      "(no GPU, or no NVIDIA driver) -- use --backend cpu");
            return NULL;
        }
        if (&ldm_ops_cuda != NULL) return &ldm_ops_cuda;
        ldm_error("backend 'cuda' is not built into this binary -- rebuild with `make cuda`, "
                  "or use --backend cpu");
        return NULL;
    }
    if (strcmp(name, "cuda-emu") == 0) return &ldm_ops_cuda_emu;
    ldm_error("unknown backend '%s': expected ref, cpu, cuda or cuda-emu", name);
    return NULL;
}

const struct ldm_ops *ldm_backend_default(void) { return &ldm_ops_cpu; }

// ---- helpers for the contracts -----------------------------------------------

// Product of dims [from, ndim): the "S" of [B,C,S] or the "M" of [..., K].
static int64_t dims_product(const ldm_tensor *t, int from, int to) {
    int64_t n = 1;
    for (int i = from; i < to; i++) n *= t->shape[i];
    return n;
}

// Every tensor of one op call must live in the memory of the same backend.
#define SAME_BACKEND(a, b) LDM_ASSERT((a)->ops == (b)->ops, "same backend as " #b, a)
#define HAS_WEIGHT(t) LDM_ASSERT((t)->data != NULL && (t)->ops != NULL, #t " allocated", t)
// Every tensor but a linear/conv2d weight is fp32 (activations are never half).
#define HAS_DATA(t) do { HAS_WEIGHT(t); \
    LDM_ASSERT((t)->dtype == LDM_DTYPE_F32, #t " fp32", t); } while (0)

// ---- dense -------------------------------------------------------------------

// x [..., K], w [N,K], b [N] or NULL -> out [..., N]
void ldm_linear(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w, const ldm_tensor *b) {
    HAS_DATA(out); HAS_DATA(x); HAS_WEIGHT(w);
    SAME_BACKEND(x, out); SAME_BACKEND(w, out);
    LDM_ASSERT(x->ndim >= 1 && w->ndim == 2, "x [...,K], w [N,K]", x);
    int64_t K = x->shape[x->ndim - 1], N = w->shape[0];
    LDM_ASSERT(w->shape[1] == K, "w [N,K] with K = x's last dim", w);
    int64_t M = dims_product(x, 0, x->ndim - 1);
    // out [..., N] with M rows: x's leading dims, or any shape of M*N ending in N
    LDM_ASSERT(out->ndim >= 1 && out->shape[out->ndim - 1] == N && out->numel == M * N,
               "out [...,N] with x's rows", out);
    if (b) {
        HAS_DATA(b); SAME_BACKEND(b, out);
        LDM_ASSERT(b->numel == N, "bias [N]", b);
    }
    if (w->dtype == LDM_DTYPE_F32) {
        out->ops->linear(out->data, x->data, w->data, b ? b->data : NULL, M, K, N);
    } else {   // fp16/bf16 weight: widened inside the op
        LDM_ASSERT(out->ops->linear_half && (w->dtype == LDM_DTYPE_F16 || w->dtype == LDM_DTYPE_BF16),
                   "half weight on a backend with linear_half", w);
        out->ops->linear_half(out->data, x->data, (const uint16_t *)w->data, w->dtype,
                              b ? b->data : NULL, M, K, N);
    }
}

// x [B,Cin,H,W], w [Cout,Cin,KH,KW], b [Cout] or NULL -> out [B,Cout,Ho,Wo]
void ldm_conv2d(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w, const ldm_tensor *b,
                int64_t stride, int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r) {
    HAS_DATA(out); HAS_DATA(x); HAS_WEIGHT(w);
    SAME_BACKEND(x, out); SAME_BACKEND(w, out);
    LDM_ASSERT(x->ndim == 4 && w->ndim == 4, "x [B,Cin,H,W], w [Cout,Cin,KH,KW]", x);
    LDM_ASSERT(w->shape[1] == x->shape[1], "w's Cin == x's C", w);
    LDM_ASSERT(stride >= 1 && pad_t >= 0 && pad_b >= 0 && pad_l >= 0 && pad_r >= 0,
               "stride >= 1, pads >= 0", x);
    int64_t B = x->shape[0], Cin = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t Cout = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    LDM_ASSERT(H + pad_t + pad_b >= KH && W + pad_l + pad_r >= KW, "kernel fits padded x", x);
    int64_t Ho = (H + pad_t + pad_b - KH) / stride + 1;
    int64_t Wo = (W + pad_l + pad_r - KW) / stride + 1;
    LDM_ASSERT(out->ndim == 4 && out->shape[0] == B && out->shape[1] == Cout &&
               out->shape[2] == Ho && out->shape[3] == Wo, "out [B,Cout,Ho,Wo]", out);
    if (b) {
        HAS_DATA(b); SAME_BACKEND(b, out);
        LDM_ASSERT(b->numel == Cout, "bias [Cout]", b);
    }
    if (w->dtype == LDM_DTYPE_F32) {
        out->ops->conv2d(out->data, x->data, w->data, b ? b->data : NULL, B, Cin, H, W, Cout, KH,
                         KW, stride, pad_t, pad_b, pad_l, pad_r);
    } else {   // fp16/bf16 weight: widened inside the op
        LDM_ASSERT(out->ops->conv2d_half && (w->dtype == LDM_DTYPE_F16 || w->dtype == LDM_DTYPE_BF16),
                   "half weight on a backend with conv2d_half", w);
        out->ops->conv2d_half(out->data, x->data, (const uint16_t *)w->data, w->dtype,
                              b ? b->data : NULL, B, Cin, H, W, Cout, KH, KW, stride, pad_t,
                              pad_b, pad_l, pad_r);
    }
}

// ---- normalisation -----------------------------------------------------------

// x [B,C,...] (S = product of the rest), gamma/beta [C] or NULL -> out like x
void ldm_group_norm(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *gamma,
                    const ldm_tensor *beta, int64_t groups, float eps) {
    HAS_DATA(out); HAS_DATA(x);
    SAME_BACKEND(x, out);
    LDM_ASSERT_SHAPE(out, x);
    LDM_ASSERT(x->ndim >= 2, "x [B,C,...]", x);
    int64_t B = x->shape[0], C = x->shape[1], S = dims_product(x, 2, x->ndim);
    LDM_ASSERT(groups >= 1 && C % groups == 0, "C divisible by groups", x);
    if (gamma) { HAS_DATA(gamma); SAME_BACKEND(gamma, out); LDM_ASSERT(gamma->numel == C, "gamma [C]", gamma); }
    if (beta) { HAS_DATA(beta); SAME_BACKEND(beta, out); LDM_ASSERT(beta->numel == C, "beta [C]", beta); }
    out->ops->group_norm(out->data, x->data, gamma ? gamma->data : NULL,
                         beta ? beta->data : NULL, B, C, S, groups, eps);
}

// x [..., D], gamma/beta [D] or NULL -> out like x
void ldm_layer_norm(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *gamma,
                    const ldm_tensor *beta, float eps) {
    HAS_DATA(out); HAS_DATA(x);
    SAME_BACKEND(x, out);
    LDM_ASSERT_SHAPE(out, x);
    LDM_ASSERT(x->ndim >= 1, "x [...,D]", x);
    int64_t D = x->shape[x->ndim - 1], N = dims_product(x, 0, x->ndim - 1);
    if (gamma) { HAS_DATA(gamma); SAME_BACKEND(gamma, out); LDM_ASSERT(gamma->numel == D, "gamma [D]", gamma); }
    if (beta) { HAS_DATA(beta); SAME_BACKEND(beta, out); LDM_ASSERT(beta->numel == D, "beta [D]", beta); }
    out->ops->layer_norm(out->data, x->data, gamma ? gamma->data : NULL,
                         beta ? beta->data : NULL, N, D, eps);
}

// x [..., D] -> out like x, softmax over the last dim
void ldm_softmax(ldm_tensor *out, const ldm_tensor *x) {
    HAS_DATA(out); HAS_DATA(x);
    SAME_BACKEND(x, out);
    LDM_ASSERT_SHAPE(out, x);
    LDM_ASSERT(x->ndim >= 1, "x [...,D]", x);
    int64_t D = x->shape[x->ndim - 1], N = dims_product(x, 0, x->ndim - 1);
    out->ops->softmax(out->data, x->data, N, D);
}

// ---- attention ---------------------------------------------------------------

// q [B,Tq,NH*HS], k [B,Tk,NH*HS], v [B,Tk,NH*HS] -> out [B,Tq,NH*HS]
void ldm_attention(ldm_tensor *out, const ldm_tensor *q, const ldm_tensor *k,
                   const ldm_tensor *v, int64_t NH, float scale, int causal) {
    HAS_DATA(out); HAS_DATA(q); HAS_DATA(k); HAS_DATA(v);
    SAME_BACKEND(q, out); SAME_BACKEND(k, out); SAME_BACKEND(v, out);
    LDM_ASSERT(q->ndim == 3 && k->ndim == 3, "q [B,Tq,D], k [B,Tk,D]", q);
    LDM_ASSERT_SHAPE(out, q);
    LDM_ASSERT_SHAPE(v, k);
    int64_t B = q->shape[0], Tq = q->shape[1], D = q->shape[2], Tk = k->shape[1];
    LDM_ASSERT(k->shape[0] == B && k->shape[2] == D, "k [B,Tk,D] with q's B and D", k);
    LDM_ASSERT(NH >= 1 && D % NH == 0, "D = NH*HS", q);
    LDM_ASSERT(Tk >= 1, "at least one key", k);
    out->ops->attention(out->data, q->data, k->data, v->data, B, Tq, Tk, NH, D / NH, scale,
                        causal);
}

// ---- elementwise -------------------------------------------------------------

// Unary ops: x [any] -> out [same shape]
#define UNARY_WRAPPER(fn, op)                                        \
    void fn(ldm_tensor *out, const ldm_tensor *x) {                  \
        HAS_DATA(out); HAS_DATA(x);                                  \
        SAME_BACKEND(x, out);                                        \
        LDM_ASSERT_SHAPE(out, x);                                    \
        out->ops->op(out->data, x->data, x->numel);                  \
    }
UNARY_WRAPPER(ldm_silu, silu)
UNARY_WRAPPER(ldm_gelu, gelu)
UNARY_WRAPPER(ldm_quick_gelu, quick_gelu)

// x [..., 2F] -> out [..., F]   (a = first half, gate = second half)
void ldm_geglu(ldm_tensor *out, const ldm_tensor *x) {
    HAS_DATA(out); HAS_DATA(x);
    SAME_BACKEND(x, out);
    LDM_ASSERT(x->ndim >= 1 && x->shape[x->ndim - 1] % 2 == 0, "x [...,2F]", x);
    int64_t F = x->shape[x->ndim - 1] / 2, N = dims_product(x, 0, x->ndim - 1);
    LDM_ASSERT(out->ndim >= 1 && out->shape[out->ndim - 1] == F && out->numel == N * F,
               "out [...,F] with x's rows", out);
    out->ops->geglu(out->data, x->data, N, F);
}

// a, b [same shape] -> out [same shape]
void ldm_add(ldm_tensor *out, const ldm_tensor *a, const ldm_tensor *b) {
    HAS_DATA(out); HAS_DATA(a); HAS_DATA(b);
    SAME_BACKEND(a, out); SAME_BACKEND(b, out);
    LDM_ASSERT_SHAPE(out, a);
    LDM_ASSERT_SHAPE(b, a);
    out->ops->add(out->data, a->data, b->data, a->numel);
}

void ldm_mul(ldm_tensor *out, const ldm_tensor *a, const ldm_tensor *b) {
    HAS_DATA(out); HAS_DATA(a); HAS_DATA(b);
    SAME_BACKEND(a, out); SAME_BACKEND(b, out);
    LDM_ASSERT_SHAPE(out, a);
    LDM_ASSERT_SHAPE(b, a);
    out->ops->mul(out->data, a->data, b->data, a->numel);
}

void ldm_scale(ldm_tensor *out, const ldm_tensor *a, float s) {
    HAS_DATA(out); HAS_DATA(a);
    SAME_BACKEND(a, out);
    LDM_ASSERT_SHAPE(out, a);
    out->ops->scale(out->data, a->data, s, a->numel);
}

// x [B,C,...], y [B,C] (any shape of B*C elements) -> out like x
void ldm_add_channel(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *y) {
    HAS_DATA(out); HAS_DATA(x); HAS_DATA(y);
    SAME_BACKEND(x, out); SAME_BACKEND(y, out);
    LDM_ASSERT_SHAPE(out, x);
    LDM_ASSERT(x->ndim >= 2, "x [B,C,...]", x);
    int64_t B = x->shape[0], C = x->shape[1], S = dims_product(x, 2, x->ndim);
    LDM_ASSERT(y->numel == B * C, "y [B,C] matching x's B and C", y);
    out->ops->add_channel(out->data, x->data, y->data, B, C, S);
}

// ---- layout ------------------------------------------------------------------

// x [B,C,H,W] -> out [B,C,2H,2W]
void ldm_upsample2x(ldm_tensor *out, const ldm_tensor *x) {
    HAS_DATA(out); HAS_DATA(x);
    SAME_BACKEND(x, out);
    LDM_ASSERT(x->ndim == 4, "x [B,C,H,W]", x);
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    LDM_ASSERT(out->ndim == 4 && out->shape[0] == B && out->shape[1] == C &&
               out->shape[2] == 2 * H && out->shape[3] == 2 * W, "out [B,C,2H,2W]", out);
    out->ops->upsample2x(out->data, x->data, B, C, H, W);
}

// a [B,Ca,...], b [B,Cb,...] -> out [B,Ca+Cb,...]
void ldm_concat_channels(ldm_tensor *out, const ldm_tensor *a, const ldm_tensor *b) {
    HAS_DATA(out); HAS_DATA(a); HAS_DATA(b);
    SAME_BACKEND(a, out); SAME_BACKEND(b, out);
    LDM_ASSERT(a->ndim >= 2 && b->ndim == a->ndim && out->ndim == a->ndim,
               "a, b, out all [B,C,...]", a);
    LDM_ASSERT(b->shape[0] == a->shape[0] && out->shape[0] == a->shape[0], "same B", b);
    for (int i = 2; i < a->ndim; i++)
        LDM_ASSERT(b->shape[i] == a->shape[i] && out->shape[i] == a->shape[i],
                   "same trailing dims", b);
    LDM_ASSERT(out->shape[1] == a->shape[1] + b->shape[1], "out C = Ca + Cb", out);
    out->ops->concat_channels(out->data, a->data, b->data, a->shape[0], a->shape[1],
                              b->shape[1], dims_product(a, 2, a->ndim));
}

// x [B,M,N] -> out [B,N,M]  (a 2-D x [M,N] is taken as B = 1)
void ldm_transpose(ldm_tensor *out, const ldm_tensor *x) {
    HAS_DATA(out); HAS_DATA(x);
    SAME_BACKEND(x, out);
    LDM_ASSERT((x->ndim == 3 || x->ndim == 2) && out->ndim == x->ndim, "x [B,M,N] or [M,N]", x);
    int o = x->ndim - 2;
    int64_t B = o ? x->shape[0] : 1, M = x->shape[o], N = x->shape[o + 1];
    LDM_ASSERT((!o || out->shape[0] == B) && out->shape[o] == N && out->shape[o + 1] == M,
               "out [B,N,M]", out);
    out->ops->transpose(out->data, x->data, B, M, N);
}

// table [V,D], ids[n] (host, each in [0,V)) -> out [..., D] with n rows
void ldm_embedding(ldm_tensor *out, const ldm_tensor *table, const int32_t *ids, int64_t n) {
    HAS_DATA(out); HAS_DATA(table);
    SAME_BACKEND(table, out);
    LDM_ASSERT(table->ndim == 2, "table [V,D]", table);
    int64_t V = table->shape[0], D = table->shape[1];
    LDM_ASSERT(out->numel == n * D && out->shape[out->ndim - 1] == D, "out [n,D]", out);
    for (int64_t i = 0; i < n; i++)
        LDM_ASSERT(ids[i] >= 0 && ids[i] < V, "every id in [0, V)", table);
    out->ops->embedding(out->data, table->data, ids, n, D);
}

// x -> out, same number of elements (shapes may differ: a copy into a view)
void ldm_copy(ldm_tensor *out, const ldm_tensor *x) {
    HAS_DATA(out); HAS_DATA(x);
    SAME_BACKEND(x, out);
    LDM_ASSERT(out->numel == x->numel, "same numel", out);
    if (out->data != x->data) out->ops->copy(out->data, x->data, (size_t)x->numel * sizeof(float));
}

// ---- backward (training) -------------------------------------------------------
// Each wrapper asserts that every gradient has the shape of what it is the
// gradient of (and lives with dout), then calls the backward entry. Gradients
// may be NULL; the table entries accumulate (+=). A backend without backward
// entries (cuda, so far) stops here with a message naming it.

// The backward entries, in the table's order: ldm_backend_can_train checks them all.
#define BACKWARD_ENTRIES(X) X(linear_backward) X(conv2d_backward) X(group_norm_backward) \
    X(layer_norm_backward) X(softmax_backward) X(attention_backward) X(silu_backward)    \
    X(gelu_backward) X(quick_gelu_backward) X(geglu_backward) X(add_backward)            \
    X(mul_backward) X(scale_backward) X(add_channel_backward) X(upsample2x_backward)     \
    X(concat_channels_backward) X(transpose_backward) X(embedding_backward)

int ldm_backend_can_train(const struct ldm_ops *ops) {
#define HAS_ENTRY(e) if (!ops->e) {                                                   \
        ldm_error("backward ops are not implemented on %s yet (no " #e "): train with " \
                  "--backend cpu or ref", ops->name);                                   \
        return 0;                                                                       \
    }
    BACKWARD_ENTRIES(HAS_ENTRY)
#undef HAS_ENTRY
    return 1;
}

// The backend of dout must have the entry; else a clear stop (a caller that
// checked ldm_backend_can_train never reaches it).
#define HAS_BACKWARD(dout, e) do {                                                     \
    if (!(dout)->ops->e) {                                                             \
        ldm_error("backward ops are not implemented on %s yet (no " #e ")", (dout)->ops->name); \
        LDM_ASSERT((dout)->ops->e != NULL, ldm_last_error(), dout);                    \
    } } while (0)
// A gradient (may be NULL): fp32, with dout's backend and the shape of `of`.
#define GRAD_OF(g, of, dout) do { if (g) {                                             \
    HAS_DATA(g); SAME_BACKEND(g, dout); LDM_ASSERT_SHAPE(g, of); } } while (0)
#define DATA_OR_NULL(g) ((g) ? (g)->data : NULL)

// dout [..., N]; x [..., K], w [N,K] as in ldm_linear; dx like x, dw like w, db [N]
void ldm_linear_backward(ldm_tensor *dx, ldm_tensor *dw, ldm_tensor *db, const ldm_tensor *dout,
                         const ldm_tensor *x, const ldm_tensor *w) {
    HAS_DATA(dout); HAS_DATA(x); HAS_DATA(w);
    SAME_BACKEND(x, dout); SAME_BACKEND(w, dout);
    HAS_BACKWARD(dout, linear_backward);
    LDM_ASSERT(x->ndim >= 1 && w->ndim == 2, "x [...,K], w [N,K]", x);
    int64_t K = x->shape[x->ndim - 1], N = w->shape[0], M = dims_product(x, 0, x->ndim - 1);
    LDM_ASSERT(w->shape[1] == K, "w [N,K] with K = x's last dim", w);
    LDM_ASSERT(dout->ndim >= 1 && dout->shape[dout->ndim - 1] == N && dout->numel == M * N,
               "dout [...,N] with x's rows", dout);
    GRAD_OF(dx, x, dout); GRAD_OF(dw, w, dout);
    if (db) { HAS_DATA(db); SAME_BACKEND(db, dout); LDM_ASSERT(db->numel == N, "db [N]", db); }
    dout->ops->linear_backward(DATA_OR_NULL(dx), DATA_OR_NULL(dw), DATA_OR_NULL(db), dout->data,
                               x->data, w->data, M, K, N);
}

// dout [B,Cout,Ho,Wo]; x, w, stride, pads as in ldm_conv2d; db [Cout]
void ldm_conv2d_backward(ldm_tensor *dx, ldm_tensor *dw, ldm_tensor *db, const ldm_tensor *dout,
                         const ldm_tensor *x, const ldm_tensor *w, int64_t stride,
                         int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r) {
    HAS_DATA(dout); HAS_DATA(x); HAS_DATA(w);
    SAME_BACKEND(x, dout); SAME_BACKEND(w, dout);
    HAS_BACKWARD(dout, conv2d_backward);
    LDM_ASSERT(x->ndim == 4 && w->ndim == 4, "x [B,Cin,H,W], w [Cout,Cin,KH,KW]", x);
    LDM_ASSERT(w->shape[1] == x->shape[1], "w's Cin == x's C", w);
    LDM_ASSERT(stride >= 1 && pad_t >= 0 && pad_b >= 0 && pad_l >= 0 && pad_r >= 0,
               "stride >= 1, pads >= 0", x);
    int64_t B = x->shape[0], Cin = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t Cout = w->shape[0], KH = w->shape[2], KW = w->shape[3];
    LDM_ASSERT(H + pad_t + pad_b >= KH && W + pad_l + pad_r >= KW, "kernel fits padded x", x);
    int64_t Ho = (H + pad_t + pad_b - KH) / stride + 1;
    int64_t Wo = (W + pad_l + pad_r - KW) / stride + 1;
    LDM_ASSERT(dout->ndim == 4 && dout->shape[0] == B && dout->shape[1] == Cout &&
               dout->shape[2] == Ho && dout->shape[3] == Wo, "dout [B,Cout,Ho,Wo]", dout);
    GRAD_OF(dx, x, dout); GRAD_OF(dw, w, dout);
    if (db) { HAS_DATA(db); SAME_BACKEND(db, dout); LDM_ASSERT(db->numel == Cout, "db [Cout]", db); }
    dout->ops->conv2d_backward(DATA_OR_NULL(dx), DATA_OR_NULL(dw), DATA_OR_NULL(db), dout->data,
                               x->data, w->data, B, Cin, H, W, Cout, KH, KW, stride, pad_t,
                               pad_b, pad_l, pad_r);
}

// dout, x [B,C,...]; gamma [C] or NULL; dgamma, dbeta [C]
void ldm_group_norm_backward(ldm_tensor *dx, ldm_tensor *dgamma, ldm_tensor *dbeta,
                             const ldm_tensor *dout, const ldm_tensor *x,
                             const ldm_tensor *gamma, int64_t groups, float eps) {
    HAS_DATA(dout); HAS_DATA(x);
    SAME_BACKEND(x, dout);
    HAS_BACKWARD(dout, group_norm_backward);
    LDM_ASSERT_SHAPE(dout, x);
    LDM_ASSERT(x->ndim >= 2, "x [B,C,...]", x);
    int64_t B = x->shape[0], C = x->shape[1], S = dims_product(x, 2, x->ndim);
    LDM_ASSERT(groups >= 1 && C % groups == 0, "C divisible by groups", x);
    if (gamma) { HAS_DATA(gamma); SAME_BACKEND(gamma, dout); LDM_ASSERT(gamma->numel == C, "gamma [C]", gamma); }
    GRAD_OF(dx, x, dout);
    if (dgamma) { HAS_DATA(dgamma); SAME_BACKEND(dgamma, dout); LDM_ASSERT(dgamma->numel == C, "dgamma [C]", dgamma); }
    if (dbeta) { HAS_DATA(dbeta); SAME_BACKEND(dbeta, dout); LDM_ASSERT(dbeta->numel == C, "dbeta [C]", dbeta); }
    dout->ops->group_norm_backward(DATA_OR_NULL(dx), DATA_OR_NULL(dgamma), DATA_OR_NULL(dbeta),
                                   dout->data, x->data, gamma ? gamma->data : NULL, B, C, S,
                                   groups, eps);
}

// dout, x [..., D]; gamma [D] or NULL; dgamma, dbeta [D]
void ldm_layer_norm_backward(ldm_tensor *dx, ldm_tensor *dgamma, ldm_tensor *dbeta,
                             const ldm_tensor *dout, const ldm_tensor *x,
                             const ldm_tensor *gamma, float eps) {
    HAS_DATA(dout); HAS_DATA(x);
    SAME_BACKEND(x, dout);
    HAS_BACKWARD(dout, layer_norm_backward);
    LDM_ASSERT_SHAPE(dout, x);
    LDM_ASSERT(x->ndim >= 1, "x [...,D]", x);
    int64_t D = x->shape[x->ndim - 1], N = dims_product(x, 0, x->ndim - 1);
    if (gamma) { HAS_DATA(gamma); SAME_BACKEND(gamma, dout); LDM_ASSERT(gamma->numel == D, "gamma [D]", gamma); }
    GRAD_OF(dx, x, dout);
    if (dgamma) { HAS_DATA(dgamma); SAME_BACKEND(dgamma, dout); LDM_ASSERT(dgamma->numel == D, "dgamma [D]", dgamma); }
    if (dbeta) { HAS_DATA(dbeta); SAME_BACKEND(dbeta, dout); LDM_ASSERT(dbeta->numel == D, "dbeta [D]", dbeta); }
    dout->ops->layer_norm_backward(DATA_OR_NULL(dx), DATA_OR_NULL(dgamma), DATA_OR_NULL(dbeta),
                                   dout->data, x->data, gamma ? gamma->data : NULL, N, D, eps);
}

// dout, y [..., D] (y = the forward's output) -> dx like y
void ldm_softmax_backward(ldm_tensor *dx, const ldm_tensor *dout, const ldm_tensor *y) {
    HAS_DATA(dx); HAS_DATA(dout); HAS_DATA(y);
    SAME_BACKEND(y, dout); SAME_BACKEND(dx, dout);
    HAS_BACKWARD(dout, softmax_backward);
    LDM_ASSERT_SHAPE(dout, y);
    LDM_ASSERT_SHAPE(dx, y);
    LDM_ASSERT(y->ndim >= 1, "y [...,D]", y);
    int64_t D = y->shape[y->ndim - 1], N = dims_product(y, 0, y->ndim - 1);
    dout->ops->softmax_backward(dx->data, dout->data, y->data, N, D);
}

// dout like q; q, k, v as in ldm_attention; dq like q, dk like k, dv like v
void ldm_attention_backward(ldm_tensor *dq, ldm_tensor *dk, ldm_tensor *dv,
                            const ldm_tensor *dout, const ldm_tensor *q, const ldm_tensor *k,
                            const ldm_tensor *v, int64_t NH, float scale, int causal) {
    HAS_DATA(dout); HAS_DATA(q); HAS_DATA(k); HAS_DATA(v);
    SAME_BACKEND(q, dout); SAME_BACKEND(k, dout); SAME_BACKEND(v, dout);
    HAS_BACKWARD(dout, attention_backward);
    LDM_ASSERT(q->ndim == 3 && k->ndim == 3, "q [B,Tq,D], k [B,Tk,D]", q);
    LDM_ASSERT_SHAPE(dout, q);
    LDM_ASSERT_SHAPE(v, k);
    int64_t B = q->shape[0], Tq = q->shape[1], D = q->shape[2], Tk = k->shape[1];
    LDM_ASSERT(k->shape[0] == B && k->shape[2] == D, "k [B,Tk,D] with q's B and D", k);
    LDM_ASSERT(NH >= 1 && D % NH == 0, "D = NH*HS", q);
    LDM_ASSERT(Tk >= 1, "at least one key", k);
    GRAD_OF(dq, q, dout); GRAD_OF(dk, k, dout); GRAD_OF(dv, v, dout);
    dout->ops->attention_backward(DATA_OR_NULL(dq), DATA_OR_NULL(dk), DATA_OR_NULL(dv),
                                  dout->data, q->data, k->data, v->data, B, Tq, Tk, NH, D / NH,
                                  scale, causal);
}

// Unary ops: dout, x [any] -> dx [same shape]
#define UNARY_BACKWARD_WRAPPER(fn, op)                                        \
    void fn(ldm_tensor *dx, const ldm_tensor *dout, const ldm_tensor *x) {    \
        HAS_DATA(dx); HAS_DATA(dout); HAS_DATA(x);                            \
        SAME_BACKEND(x, dout); SAME_BACKEND(dx, dout);                        \
        HAS_BACKWARD(dout, op);                                               \
        LDM_ASSERT_SHAPE(dout, x);                                            \
        LDM_ASSERT_SHAPE(dx, x);                                              \
        dout->ops->op(dx->data, dout->data, x->data, x->numel);               \
    }
UNARY_BACKWARD_WRAPPER(ldm_silu_backward, silu_backward)
UNARY_BACKWARD_WRAPPER(ldm_gelu_backward, gelu_backward)
UNARY_BACKWARD_WRAPPER(ldm_quick_gelu_backward, quick_gelu_backward)

// dout [..., F], x [..., 2F] -> dx like x
void ldm_geglu_backward(ldm_tensor *dx, const ldm_tensor *dout, const ldm_tensor *x) {
    HAS_DATA(dx); HAS_DATA(dout); HAS_DATA(x);
    SAME_BACKEND(x, dout); SAME_BACKEND(dx, dout);
    HAS_BACKWARD(dout, geglu_backward);
    LDM_ASSERT(x->ndim >= 1 && x->shape[x->ndim - 1] % 2 == 0, "x [...,2F]", x);
    int64_t F = x->shape[x->ndim - 1] / 2, N = dims_product(x, 0, x->ndim - 1);
    LDM_ASSERT(dout->ndim >= 1 && dout->shape[dout->ndim - 1] == F && dout->numel == N * F,
               "dout [...,F] with x's rows", dout);
    LDM_ASSERT_SHAPE(dx, x);
    dout->ops->geglu_backward(dx->data, dout->data, x->data, N, F);
}

// dout [any] -> da, db [same shape]
void ldm_add_backward(ldm_tensor *da, ldm_tensor *db, const ldm_tensor *dout) {
    HAS_DATA(dout);
    HAS_BACKWARD(dout, add_backward);
    GRAD_OF(da, dout, dout); GRAD_OF(db, dout, dout);
    dout->ops->add_backward(DATA_OR_NULL(da), DATA_OR_NULL(db), dout->data, dout->numel);
}

// dout, a, b [same shape] -> da, db [same shape]
void ldm_mul_backward(ldm_tensor *da, ldm_tensor *db, const ldm_tensor *dout,
                      const ldm_tensor *a, const ldm_tensor *b) {
    HAS_DATA(dout); HAS_DATA(a); HAS_DATA(b);
    SAME_BACKEND(a, dout); SAME_BACKEND(b, dout);
    HAS_BACKWARD(dout, mul_backward);
    LDM_ASSERT_SHAPE(a, dout);
    LDM_ASSERT_SHAPE(b, dout);
    GRAD_OF(da, a, dout); GRAD_OF(db, b, dout);
    dout->ops->mul_backward(DATA_OR_NULL(da), DATA_OR_NULL(db), dout->data, a->data, b->data,
                            dout->numel);
}

void ldm_scale_backward(ldm_tensor *da, const ldm_tensor *dout, float s) {
    HAS_DATA(da); HAS_DATA(dout);
    HAS_BACKWARD(dout, scale_backward);
    GRAD_OF(da, dout, dout);
    dout->ops->scale_backward(da->data, dout->data, s, dout->numel);
}

// dout [B,C,...] -> dx like dout, dy [B,C] (any shape of B*C elements)
void ldm_add_channel_backward(ldm_tensor *dx, ldm_tensor *dy, const ldm_tensor *dout) {
    HAS_DATA(dout);
    HAS_BACKWARD(dout, add_channel_backward);
    LDM_ASSERT(dout->ndim >= 2, "dout [B,C,...]", dout);
    int64_t B = dout->shape[0], C = dout->shape[1], S = dims_product(dout, 2, dout->ndim);
    GRAD_OF(dx, dout, dout);
    if (dy) { HAS_DATA(dy); SAME_BACKEND(dy, dout); LDM_ASSERT(dy->numel == B * C, "dy [B,C]", dy); }
    dout->ops->add_channel_backward(DATA_OR_NULL(dx), DATA_OR_NULL(dy), dout->data, B, C, S);
}

// dout [B,C,2H,2W] -> dx [B,C,H,W]
void ldm_upsample2x_backward(ldm_tensor *dx, const ldm_tensor *dout) {
    HAS_DATA(dx); HAS_DATA(dout);
    SAME_BACKEND(dx, dout);
    HAS_BACKWARD(dout, upsample2x_backward);
    LDM_ASSERT(dx->ndim == 4, "dx [B,C,H,W]", dx);
    int64_t B = dx->shape[0], C = dx->shape[1], H = dx->shape[2], W = dx->shape[3];
    LDM_ASSERT(dout->ndim == 4 && dout->shape[0] == B && dout->shape[1] == C &&
               dout->shape[2] == 2 * H && dout->shape[3] == 2 * W, "dout [B,C,2H,2W]", dout);
    dout->ops->upsample2x_backward(dx->data, dout->data, B, C, H, W);
}

// dout [B,Ca+Cb,...] -> da [B,Ca,...], db [B,Cb,...] (both given: their C split dout's)
void ldm_concat_channels_backward(ldm_tensor *da, ldm_tensor *db, const ldm_tensor *dout) {
    HAS_DATA(da); HAS_DATA(db); HAS_DATA(dout);
    SAME_BACKEND(da, dout); SAME_BACKEND(db, dout);
    HAS_BACKWARD(dout, concat_channels_backward);
    LDM_ASSERT(da->ndim >= 2 && db->ndim == da->ndim && dout->ndim == da->ndim,
               "da, db, dout all [B,C,...]", da);
    LDM_ASSERT(db->shape[0] == da->shape[0] && dout->shape[0] == da->shape[0], "same B", db);
    for (int i = 2; i < da->ndim; i++)
        LDM_ASSERT(db->shape[i] == da->shape[i] && dout->shape[i] == da->shape[i],
                   "same trailing dims", db);
    LDM_ASSERT(dout->shape[1] == da->shape[1] + db->shape[1], "dout C = Ca + Cb", dout);
    dout->ops->concat_channels_backward(da->data, db->data, dout->data, da->shape[0],
                                        da->shape[1], db->shape[1], dims_product(da, 2, da->ndim));
}

// dout [B,N,M] -> dx [B,M,N]  (2-D: B = 1)
void ldm_transpose_backward(ldm_tensor *dx, const ldm_tensor *dout) {
    HAS_DATA(dx); HAS_DATA(dout);
    SAME_BACKEND(dx, dout);
    HAS_BACKWARD(dout, transpose_backward);
    LDM_ASSERT((dx->ndim == 3 || dx->ndim == 2) && dout->ndim == dx->ndim, "dx [B,M,N] or [M,N]", dx);
    int o = dx->ndim - 2;
    int64_t B = o ? dx->shape[0] : 1, M = dx->shape[o], N = dx->shape[o + 1];
    LDM_ASSERT((!o || dout->shape[0] == B) && dout->shape[o] == N && dout->shape[o + 1] == M,
               "dout [B,N,M]", dout);
    dout->ops->transpose_backward(dx->data, dout->data, B, M, N);
}

// dout [..., D] with n rows, ids[n] (host, each in [0,V)) -> dtable [V,D]
void ldm_embedding_backward(ldm_tensor *dtable, const ldm_tensor *dout, const int32_t *ids,
                            int64_t n) {
    HAS_DATA(dtable); HAS_DATA(dout);
    SAME_BACKEND(dtable, dout);
    HAS_BACKWARD(dout, embedding_backward);
    LDM_ASSERT(dtable->ndim == 2, "dtable [V,D]", dtable);
    int64_t V = dtable->shape[0], D = dtable->shape[1];
    LDM_ASSERT(dout->numel == n * D && dout->shape[dout->ndim - 1] == D, "dout [n,D]", dout);
    for (int64_t i = 0; i < n; i++)
        LDM_ASSERT(ids[i] >= 0 && ids[i] < V, "every id in [0, V)", dtable);
    dout->ops->embedding_backward(dtable->data, dout->data, ids, n, D);
}
