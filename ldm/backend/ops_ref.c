/*
 * ldm/backend/ops_ref.c -- the `ref` backend: every op of struct ldm_ops (ops.h) as
 * plain single-threaded loops. This is the readable truth the other backends
 * are tested against (tests/test_ops.c), and the one to step through in gdb
 * (`LDM_BACKEND=ref gdb --args build/sd ...`).
 *
 * Mirrors torch.nn.functional: linear, conv2d, group_norm, layer_norm,
 * softmax, scaled_dot_product_attention, silu, gelu (erf form), the CLIP
 * quick_gelu, diffusers' GEGLU, interpolate(mode="nearest", scale 2), cat.
 * Reductions (dot products, means, variances) accumulate in double so that
 * the truth is more accurate than the float32 backends it checks.
 * Leaves out: speed. Memory is plain malloc; tensors of `ref` and `cpu` are
 * both host memory.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/ops.h"

// ---- memory -------------------------------------------------------------------

static void *ref_alloc(size_t nbytes) { return malloc(nbytes ? nbytes : 1); }
static void ref_free(void *p) { free(p); }
static void ref_memcpy(void *dst, const void *src, size_t nbytes) {
    if (nbytes) memmove(dst, src, nbytes);
}

// ---- dense --------------------------------------------------------------------

// out[M,N] = x[M,K] @ w[N,K]^T + b[N]
static void ref_linear(float *out, const float *x, const float *w, const float *b,
                       int64_t M, int64_t K, int64_t N) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = b ? b[n] : 0.0;
            for (int64_t k = 0; k < K; k++) acc += (double)x[m * K + k] * w[n * K + k];
            out[m * N + n] = (float)acc;
        }
}

// out[b,co,oy,ox] = bias[co] + sum_{ci,ky,kx} w[co,ci,ky,kx] * xpad[b,ci,oy*s+ky,ox*s+kx]
// where xpad is x with pad_t/pad_b rows and pad_l/pad_r columns of zeros.
static void ref_conv2d(float *out, const float *x, const float *w, const float *bias,
                       int64_t B, int64_t Cin, int64_t H, int64_t W,
                       int64_t Cout, int64_t KH, int64_t KW, int64_t s,
                       int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r) {
    int64_t Ho = (H + pad_t + pad_b - KH) / s + 1, Wo = (W + pad_l + pad_r - KW) / s + 1;
    for (int64_t b = 0; b < B; b++)
        for (int64_t co = 0; co < Cout; co++)
            for (int64_t oy = 0; oy < Ho; oy++)
                for (int64_t ox = 0; ox < Wo; ox++) {
                    double acc = bias ? bias[co] : 0.0;
                    for (int64_t ci = 0; ci < Cin; ci++)
                        for (int64_t ky = 0; ky < KH; ky++) {
                            int64_t iy = oy * s - pad_t + ky;
                            if (iy < 0 || iy >= H) continue; // zero padding
                            for (int64_t kx = 0; kx < KW; kx++) {
                                int64_t ix = ox * s - pad_l + kx;
                                if (ix < 0 || ix >= W) continue;
                                acc += (double)w[((co * Cin + ci) * KH + ky) * KW + kx] *
                                       x[((b * Cin + ci) * H + iy) * W + ix];
                            }
                        }
                    out[((b * Cout + co) * Ho + oy) * Wo + ox] = (float)acc;
                }
}

// ---- dense, half-precision weights --------------------------------------------
// The same loops, each weight element widened where it is read (exact).

static float widen(const uint16_t *w, ldm_dtype wt, int64_t i) {
    return wt == LDM_DTYPE_F16 ? ldm_f16_to_f32(w[i]) : ldm_bf16_to_f32(w[i]);
}

// out[M,N] = x[M,K] @ w[N,K]^T + b[N], w fp16/bf16
static void ref_linear_half(float *out, const float *x, const uint16_t *w, ldm_dtype wt,
                            const float *b, int64_t M, int64_t K, int64_t N) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = b ? b[n] : 0.0;
            for (int64_t k = 0; k < K; k++) acc += (double)x[m * K + k] * widen(w, wt, n * K + k);
            out[m * N + n] = (float)acc;
        }
}

// ref_conv2d with w[Cout,Cin,KH,KW] fp16/bf16
static void ref_conv2d_half(float *out, const float *x, const uint16_t *w, ldm_dtype wt,
                            const float *bias, int64_t B, int64_t Cin, int64_t H, int64_t W,
                            int64_t Cout, int64_t KH, int64_t KW, int64_t s,
                            int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r) {
    int64_t Ho = (H + pad_t + pad_b - KH) / s + 1, Wo = (W + pad_l + pad_r - KW) / s + 1;
    for (int64_t b = 0; b < B; b++)
        for (int64_t co = 0; co < Cout; co++)
            for (int64_t oy = 0; oy < Ho; oy++)
                for (int64_t ox = 0; ox < Wo; ox++) {
                    double acc = bias ? bias[co] : 0.0;
                    for (int64_t ci = 0; ci < Cin; ci++)
                        for (int64_t ky = 0; ky < KH; ky++) {
                            int64_t iy = oy * s - pad_t + ky;
                            if (iy < 0 || iy >= H) continue; // zero padding
                            for (int64_t kx = 0; kx < KW; kx++) {
                                int64_t ix = ox * s - pad_l + kx;
                                if (ix < 0 || ix >= W) continue;
                                acc += (double)widen(w, wt, ((co * Cin + ci) * KH + ky) * KW + kx) *
                                       x[((b * Cin + ci) * H + iy) * W + ix];
                            }
                        }
                    out[((b * Cout + co) * Ho + oy) * Wo + ox] = (float)acc;
                }
}

// ---- normalisation ------------------------------------------------------------

// x[B,C,S], G groups of C/G channels: each group of (C/G)*S values is
// normalised by its own mean and biased variance, then scaled per channel.
static void ref_group_norm(float *out, const float *x, const float *gamma, const float *beta,
                           int64_t B, int64_t C, int64_t S, int64_t G, float eps) {
    int64_t cg = C / G, n = cg * S;
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < G; g++) {
            const float *xg = x + (b * C + g * cg) * S; // the group is contiguous
            float *og = out + (b * C + g * cg) * S;
            double mean = 0, var = 0;
            for (int64_t i = 0; i < n; i++) mean += xg[i];
            mean /= (double)n;
            for (int64_t i = 0; i < n; i++) var += (xg[i] - mean) * (xg[i] - mean);
            var /= (double)n;
            double rstd = 1.0 / sqrt(var + eps);
            for (int64_t c = 0; c < cg; c++) {
                int64_t ch = g * cg + c;
                double ga = gamma ? gamma[ch] : 1.0, be = beta ? beta[ch] : 0.0;
                for (int64_t i = 0; i < S; i++)
                    og[c * S + i] = (float)((xg[c * S + i] - mean) * rstd * ga + be);
            }
        }
}

// x[N,D]: each row normalised by its mean and biased variance.
static void ref_layer_norm(float *out, const float *x, const float *gamma, const float *beta,
                           int64_t N, int64_t D, float eps) {
    for (int64_t r = 0; r < N; r++) {
        const float *xr = x + r * D;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < D; i++) mean += xr[i];
        mean /= (double)D;
        for (int64_t i = 0; i < D; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= (double)D;
        double rstd = 1.0 / sqrt(var + eps);
        for (int64_t i = 0; i < D; i++)
            out[r * D + i] = (float)((xr[i] - mean) * rstd * (gamma ? gamma[i] : 1.0) +
                                     (beta ? beta[i] : 0.0));
    }
}

// x[N,D]: out = exp(x - max) / sum exp(x - max), row by row (out may == x).
static void ref_softmax(float *out, const float *x, int64_t N, int64_t D) {
    for (int64_t r = 0; r < N; r++) {
        const float *xr = x + r * D;
        float *or = out + r * D;
        float mx = -INFINITY;
        for (int64_t i = 0; i < D; i++) mx = xr[i] > mx ? xr[i] : mx;
        double sum = 0;
        for (int64_t i = 0; i < D; i++) {
            or[i] = expf(xr[i] - mx);
            sum += or[i];
        }
        for (int64_t i = 0; i < D; i++) or[i] = (float)(or[i] / sum);
    }
}

// ---- attention ----------------------------------------------------------------

// q[B,Tq,NH*HS], k/v[B,Tk,NH*HS] -> out[B,Tq,NH*HS]. One query row at a
// time: scores[j] = scale * q_i . k_j (j <= i when causal), softmax, then
// out_i = sum_j p_j v_j. Only one row of Tk scores ever exists (bounded).
static void ref_attention(float *out, const float *q, const float *k, const float *v,
                          int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                          float scale, int causal) {
    int64_t D = NH * HS;
    double *p = malloc((size_t)Tk * sizeof(double));
    double *acc = malloc((size_t)HS * sizeof(double));
    if (!p || !acc) abort(); // Tk + HS doubles: only fails when the machine is out of memory
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < NH; h++)
            for (int64_t i = 0; i < Tq; i++) {
                const float *qi = q + (b * Tq + i) * D + h * HS;
                int64_t nk = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk; // keys j < nk
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < nk; j++) {
                    const float *kj = k + (b * Tk + j) * D + h * HS;
                    double dot = 0;
                    for (int64_t d = 0; d < HS; d++) dot += (double)qi[d] * kj[d];
                    p[j] = dot * scale;
                    if (p[j] > mx) mx = p[j];
                }
                for (int64_t j = 0; j < nk; j++) {
                    p[j] = exp(p[j] - mx);
                    sum += p[j];
                }
                for (int64_t d = 0; d < HS; d++) acc[d] = 0;
                for (int64_t j = 0; j < nk; j++) {
                    const float *vj = v + (b * Tk + j) * D + h * HS;
                    for (int64_t d = 0; d < HS; d++) acc[d] += p[j] / sum * vj[d];
                }
                for (int64_t d = 0; d < HS; d++) out[(b * Tq + i) * D + h * HS + d] = (float)acc[d];
            }
    free(p);
    free(acc);
}

// ---- elementwise --------------------------------------------------------------

static void ref_silu(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + expf(-x[i]));
}

// 0.5 x (1 + erf(x / sqrt 2)), the exact GELU (torch's approximate="none")
static void ref_gelu(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

// x * sigmoid(1.702 x) (OpenAI CLIP's QuickGELU)
static void ref_quick_gelu(float *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

// x[N,2F] = [a | gate] -> out[N,F] = a * gelu(gate)   (diffusers GEGLU)
static void ref_geglu(float *out, const float *x, int64_t N, int64_t F) {
    for (int64_t r = 0; r < N; r++)
        for (int64_t f = 0; f < F; f++) {
            float a = x[r * 2 * F + f], g = x[r * 2 * F + F + f];
            out[r * F + f] = a * (0.5f * g * (1.0f + erff(g * (float)M_SQRT1_2)));
        }
}

static void ref_add(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void ref_mul(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

static void ref_scale(float *out, const float *a, float s, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * s;
}

// out[b,c,:] = x[b,c,:] + y[b,c]
static void ref_add_channel(float *out, const float *x, const float *y,
                            int64_t B, int64_t C, int64_t S) {
    for (int64_t bc = 0; bc < B * C; bc++)
        for (int64_t i = 0; i < S; i++) out[bc * S + i] = x[bc * S + i] + y[bc];
}

// ---- layout -------------------------------------------------------------------

// out[b,c,y,x] = in[b,c,y/2,x/2]
static void ref_upsample2x(float *out, const float *x, int64_t B, int64_t C, int64_t H, int64_t W) {
    for (int64_t bc = 0; bc < B * C; bc++)
        for (int64_t oy = 0; oy < 2 * H; oy++)
            for (int64_t ox = 0; ox < 2 * W; ox++)
                out[(bc * 2 * H + oy) * 2 * W + ox] = x[(bc * H + oy / 2) * W + ox / 2];
}

// out[b] = [a[b] ; b[b]] along channels
static void ref_concat_channels(float *out, const float *a, const float *b,
                                int64_t B, int64_t Ca, int64_t Cb, int64_t S) {
    for (int64_t i = 0; i < B; i++) {
        memmove(out + i * (Ca + Cb) * S, a + i * Ca * S, (size_t)(Ca * S) * sizeof(float));
        memmove(out + (i * (Ca + Cb) + Ca) * S, b + i * Cb * S, (size_t)(Cb * S) * sizeof(float));
    }
}

// out[b,n,m] = x[b,m,n]
static void ref_transpose(float *out, const float *x, int64_t B, int64_t M, int64_t N) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) out[(b * N + n) * M + m] = x[(b * M + m) * N + n];
}

// out[i,:] = table[ids[i],:]
static void ref_embedding(float *out, const float *table, const int32_t *ids, int64_t n, int64_t D) {
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * D, table + (int64_t)ids[i] * D, (size_t)D * sizeof(float));
}

const struct ldm_ops ldm_ops_ref = {
    .name = "ref",
    .alloc = ref_alloc,
    .free = ref_free,
    .upload = ref_memcpy,
    .download = ref_memcpy,
    .copy = ref_memcpy,
    .set_threads = NULL, // single-threaded by design
    .host_memory = 1,
    .linear = ref_linear,
    .conv2d = ref_conv2d,
    .linear_half = ref_linear_half,
    .conv2d_half = ref_conv2d_half,
    .group_norm = ref_group_norm,
    .layer_norm = ref_layer_norm,
    .softmax = ref_softmax,
    .attention = ref_attention,
    .silu = ref_silu,
    .gelu = ref_gelu,
    .quick_gelu = ref_quick_gelu,
    .geglu = ref_geglu,
    .add = ref_add,
    .mul = ref_mul,
    .scale = ref_scale,
    .add_channel = ref_add_channel,
    .upsample2x = ref_upsample2x,
    .concat_channels = ref_concat_channels,
    .transpose = ref_transpose,
    .embedding = ref_embedding,
};
