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
#include "ldm/backend/ops_ref.h"

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

// ---- backward (training) ------------------------------------------------------
// One function per forward op above (ops.h, "backward"): gradients first, each
// ACCUMULATED (+=) so that a tensor used twice sums its two gradients, and
// each may be NULL (not wanted). The derivations are in
// docs/14-backpropagation.md, next to these lines. Sums run in double like the
// forwards'; norms and attention recompute their statistics from the inputs.
// Not static: the `cpu` backend uses those it has no faster version of
// (declared in ldm/backend/ops_ref.h).

// y = x w^T + b:  dx = dy w,  dw = dy^T x,  db = sum over rows of dy
// x[M,K], w[N,K], dout[M,N]
void ldm_ref_linear_backward(float *dx, float *dw, float *db, const float *dout,
                             const float *x, const float *w, int64_t M, int64_t K, int64_t N) {
    if (dx)
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < K; k++) {
                double acc = 0;
                for (int64_t n = 0; n < N; n++) acc += (double)dout[m * N + n] * w[n * K + k];
                dx[m * K + k] += (float)acc;
            }
    if (dw)
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                double acc = 0;
                for (int64_t m = 0; m < M; m++) acc += (double)dout[m * N + n] * x[m * K + k];
                dw[n * K + k] += (float)acc;
            }
    if (db)
        for (int64_t n = 0; n < N; n++) {
            double acc = 0;
            for (int64_t m = 0; m < M; m++) acc += dout[m * N + n];
            db[n] += (float)acc;
        }
}

// conv2d: every output out[b,co,oy,ox] read xpad[b,ci,oy*s+ky,ox*s+kx] through
// w[co,ci,ky,kx], so
//   dw[co,ci,ky,kx] += sum_{b,oy,ox} dout[b,co,oy,ox] * xpad[b,ci,oy*s+ky,ox*s+kx]
//   dx[b,ci,iy,ix]  += sum over the (co,ky,kx) whose window put x[b,ci,iy,ix] under
//                      w[co,ci,ky,kx]: oy = (iy + pad_t - ky)/s when that divides
//                      exactly and lands in [0,Ho) (the transposed convolution)
//   db[co]          += sum_{b,oy,ox} dout[b,co,oy,ox]
// Zero padding has no gradient: padded positions are simply never an x.
void ldm_ref_conv2d_backward(float *dx, float *dw, float *db, const float *dout,
                             const float *x, const float *w,
                             int64_t B, int64_t Cin, int64_t H, int64_t W,
                             int64_t Cout, int64_t KH, int64_t KW, int64_t s,
                             int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r) {
    int64_t Ho = (H + pad_t + pad_b - KH) / s + 1, Wo = (W + pad_l + pad_r - KW) / s + 1;
    if (dw)
        for (int64_t co = 0; co < Cout; co++)
            for (int64_t ci = 0; ci < Cin; ci++)
                for (int64_t ky = 0; ky < KH; ky++)
                    for (int64_t kx = 0; kx < KW; kx++) {
                        double acc = 0;
                        for (int64_t b = 0; b < B; b++)
                            for (int64_t oy = 0; oy < Ho; oy++) {
                                int64_t iy = oy * s - pad_t + ky;
                                if (iy < 0 || iy >= H) continue; // a padding row
                                for (int64_t ox = 0; ox < Wo; ox++) {
                                    int64_t ix = ox * s - pad_l + kx;
                                    if (ix < 0 || ix >= W) continue;
                                    acc += (double)dout[((b * Cout + co) * Ho + oy) * Wo + ox] *
                                           x[((b * Cin + ci) * H + iy) * W + ix];
                                }
                            }
                        dw[((co * Cin + ci) * KH + ky) * KW + kx] += (float)acc;
                    }
    if (dx)
        for (int64_t b = 0; b < B; b++)
            for (int64_t ci = 0; ci < Cin; ci++)
                for (int64_t iy = 0; iy < H; iy++)
                    for (int64_t ix = 0; ix < W; ix++) {
                        double acc = 0;
                        for (int64_t ky = 0; ky < KH; ky++) {
                            int64_t ty = iy + pad_t - ky; // = oy * s for the output that saw it
                            if (ty < 0 || ty % s != 0 || ty / s >= Ho) continue;
                            for (int64_t kx = 0; kx < KW; kx++) {
                                int64_t tx = ix + pad_l - kx;
                                if (tx < 0 || tx % s != 0 || tx / s >= Wo) continue;
                                for (int64_t co = 0; co < Cout; co++)
                                    acc += (double)dout[((b * Cout + co) * Ho + ty / s) * Wo + tx / s] *
                                           w[((co * Cin + ci) * KH + ky) * KW + kx];
                            }
                        }
                        dx[((b * Cin + ci) * H + iy) * W + ix] += (float)acc;
                    }
    if (db)
        for (int64_t co = 0; co < Cout; co++) {
            double acc = 0;
            for (int64_t b = 0; b < B; b++)
                for (int64_t i = 0; i < Ho * Wo; i++) acc += dout[(b * Cout + co) * Ho * Wo + i];
            db[co] += (float)acc;
        }
}

// x[B,C,S] in G groups of n = (C/G)*S values, each normalised by its own
// statistics: xhat = (x - mean) * rstd, rstd = 1/sqrt(var + eps), then
// out = xhat * gamma[c] + beta[c]. Per group, with g_i = dout_i * gamma[c_i]
// (= dL/dxhat_i):
//   dx_i      += rstd * (g_i - mean_j(g_j) - xhat_i * mean_j(g_j xhat_j))
// The two means are what the mean and the variance pass back: every x_j moves
// the mean (which each xhat_i subtracts) and the variance (which each divides by).
// Per channel, over the batch and the positions:
//   dgamma[c] += sum_{b,s} dout[b,c,s] * xhat[b,c,s],   dbeta[c] += sum_{b,s} dout[b,c,s]
void ldm_ref_group_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dout,
                                 const float *x, const float *gamma,
                                 int64_t B, int64_t C, int64_t S, int64_t G, float eps) {
    int64_t cg = C / G, n = cg * S;
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < G; g++) {
            int64_t off = (b * C + g * cg) * S; // the group is contiguous
            const float *xg = x + off, *dg = dout + off;
            // the forward's statistics
            double mean = 0, var = 0;
            for (int64_t i = 0; i < n; i++) mean += xg[i];
            mean /= (double)n;
            for (int64_t i = 0; i < n; i++) var += (xg[i] - mean) * (xg[i] - mean);
            var /= (double)n;
            double rstd = 1.0 / sqrt(var + eps);
            // mean_j(g_j) and mean_j(g_j xhat_j); dgamma, dbeta per channel
            double mean_g = 0, mean_gx = 0;
            for (int64_t c = 0; c < cg; c++) {
                int64_t ch = g * cg + c;
                double ga = gamma ? gamma[ch] : 1.0, sg = 0, sb = 0;
                for (int64_t i = c * S; i < (c + 1) * S; i++) {
                    double xhat = (xg[i] - mean) * rstd;
                    mean_g += dg[i] * ga;
                    mean_gx += dg[i] * ga * xhat;
                    sg += dg[i] * xhat;
                    sb += dg[i];
                }
                if (dgamma) dgamma[ch] += (float)sg;
                if (dbeta) dbeta[ch] += (float)sb;
            }
            mean_g /= (double)n;
            mean_gx /= (double)n;
            if (!dx) continue;
            for (int64_t c = 0; c < cg; c++) {
                double ga = gamma ? gamma[g * cg + c] : 1.0;
                for (int64_t i = c * S; i < (c + 1) * S; i++) {
                    double xhat = (xg[i] - mean) * rstd;
                    dx[off + i] += (float)(rstd * (dg[i] * ga - mean_g - xhat * mean_gx));
                }
            }
        }
}

// x[N,D]: each row normalised by its own statistics, the same backward as
// group norm's with the row as the group and gamma[d] per feature:
//   dx[r,d]   += rstd_r * (g_d - mean_j(g_j) - xhat_d * mean_j(g_j xhat_j)),  g = dout[r] * gamma
//   dgamma[d] += sum_r dout[r,d] * xhat[r,d],   dbeta[d] += sum_r dout[r,d]
void ldm_ref_layer_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dout,
                                 const float *x, const float *gamma, int64_t N, int64_t D,
                                 float eps) {
    double *sg = calloc((size_t)(2 * D), sizeof(double)), *sb = sg + D;
    if (!sg) abort(); // 2 D doubles: only fails when the machine is out of memory
    for (int64_t r = 0; r < N; r++) {
        const float *xr = x + r * D, *gr = dout + r * D;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < D; i++) mean += xr[i];
        mean /= (double)D;
        for (int64_t i = 0; i < D; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= (double)D;
        double rstd = 1.0 / sqrt(var + eps);
        double mean_g = 0, mean_gx = 0;
        for (int64_t d = 0; d < D; d++) {
            double xhat = (xr[d] - mean) * rstd, g = gr[d] * (gamma ? gamma[d] : 1.0);
            mean_g += g;
            mean_gx += g * xhat;
            sg[d] += gr[d] * xhat;
            sb[d] += gr[d];
        }
        mean_g /= (double)D;
        mean_gx /= (double)D;
        if (dx)
            for (int64_t d = 0; d < D; d++) {
                double xhat = (xr[d] - mean) * rstd, g = gr[d] * (gamma ? gamma[d] : 1.0);
                dx[r * D + d] += (float)(rstd * (g - mean_g - xhat * mean_gx));
            }
    }
    for (int64_t d = 0; d < D; d++) {
        if (dgamma) dgamma[d] += (float)sg[d];
        if (dbeta) dbeta[d] += (float)sb[d];
    }
    free(sg);
}

// y = softmax(x) row by row: dy_i/dx_j = y_i (delta_ij - y_j), so
//   dx_j += y_j * (dout_j - sum_i dout_i y_i)
void ldm_ref_softmax_backward(float *dx, const float *dout, const float *y, int64_t N, int64_t D) {
    for (int64_t r = 0; r < N; r++) {
        const float *yr = y + r * D, *gr = dout + r * D;
        double dot = 0;
        for (int64_t i = 0; i < D; i++) dot += (double)gr[i] * yr[i];
        for (int64_t j = 0; j < D; j++) dx[r * D + j] += (float)(yr[j] * (gr[j] - dot));
    }
}

// Attention, one (batch, head, query row i) at a time, as the forward:
//   s_j = scale q_i.k_j,  p = softmax(s) (j < nk when causal),  out_i = sum_j p_j v_j
// backward:
//   dv_j += p_j dout_i              dp_j = dout_i . v_j
//   ds_j = p_j (dp_j - sum_l p_l dp_l)         (the softmax backward)
//   dq_i += scale sum_j ds_j k_j    dk_j += scale ds_j q_i
// Masked keys (j >= nk) have p_j = 0 and receive nothing.
void ldm_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                const float *q, const float *k, const float *v,
                                int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                                float scale, int causal) {
    int64_t D = NH * HS;
    double *p = malloc((size_t)Tk * sizeof(double));
    double *ds = malloc((size_t)Tk * sizeof(double));
    if (!p || !ds) abort(); // 2 Tk doubles: only fails when the machine is out of memory
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < NH; h++)
            for (int64_t i = 0; i < Tq; i++) {
                const float *qi = q + (b * Tq + i) * D + h * HS;
                const float *gi = dout + (b * Tq + i) * D + h * HS;
                int64_t nk = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk; // keys j < nk
                // the forward's probabilities p_j
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
                for (int64_t j = 0; j < nk; j++) p[j] /= sum;
                // dp_j, then the softmax backward ds_j
                double pdp = 0;
                for (int64_t j = 0; j < nk; j++) {
                    const float *vj = v + (b * Tk + j) * D + h * HS;
                    double dp = 0;
                    for (int64_t d = 0; d < HS; d++) dp += (double)gi[d] * vj[d];
                    ds[j] = dp;
                    pdp += p[j] * dp;
                }
                for (int64_t j = 0; j < nk; j++) ds[j] = p[j] * (ds[j] - pdp);
                for (int64_t j = 0; j < nk; j++) {
                    int64_t kj = (b * Tk + j) * D + h * HS;
                    for (int64_t d = 0; d < HS; d++) {
                        if (dv) dv[kj + d] += (float)(p[j] * gi[d]);
                        if (dk) dk[kj + d] += (float)(scale * ds[j] * qi[d]);
                    }
                }
                if (dq)
                    for (int64_t d = 0; d < HS; d++) {
                        double acc = 0;
                        for (int64_t j = 0; j < nk; j++) acc += ds[j] * k[(b * Tk + j) * D + h * HS + d];
                        dq[(b * Tq + i) * D + h * HS + d] += (float)(scale * acc);
                    }
            }
    free(p);
    free(ds);
}

// d/dx [x sigmoid(x)] = s (1 + x (1 - s)),  s = sigmoid(x)
void ldm_ref_silu_backward(float *dx, const float *dout, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double s = 1.0 / (1.0 + exp(-(double)x[i]));
        dx[i] += (float)(dout[i] * s * (1.0 + x[i] * (1.0 - s)));
    }
}

// d/dx [x Phi(x)] = Phi(x) + x phi(x): Phi the standard normal CDF
// 0.5 (1 + erf(x/sqrt2)), phi its density exp(-x^2/2) / sqrt(2 pi)
static double gelu_grad(double x) {
    return 0.5 * (1.0 + erf(x * M_SQRT1_2)) + x * exp(-0.5 * x * x) * 0.5 * M_2_SQRTPI * M_SQRT1_2;
}

void ldm_ref_gelu_backward(float *dx, const float *dout, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) dx[i] += (float)(dout[i] * gelu_grad(x[i]));
}

// d/dx [x sigmoid(a x)] = s (1 + a x (1 - s)),  s = sigmoid(a x),  a = 1.702
void ldm_ref_quick_gelu_backward(float *dx, const float *dout, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double ax = 1.702 * (double)x[i], s = 1.0 / (1.0 + exp(-ax));
        dx[i] += (float)(dout[i] * s * (1.0 + ax * (1.0 - s)));
    }
}

// out = a * gelu(gate):  da += dout gelu(gate),  dgate += dout a gelu'(gate)
// x, dx [N,2F] = [a | gate], dout [N,F]
void ldm_ref_geglu_backward(float *dx, const float *dout, const float *x, int64_t N, int64_t F) {
    for (int64_t r = 0; r < N; r++)
        for (int64_t f = 0; f < F; f++) {
            double a = x[r * 2 * F + f], g = x[r * 2 * F + F + f], d = dout[r * F + f];
            dx[r * 2 * F + f] += (float)(d * 0.5 * g * (1.0 + erf(g * M_SQRT1_2)));
            dx[r * 2 * F + F + f] += (float)(d * a * gelu_grad(g));
        }
}

void ldm_ref_add_backward(float *da, float *db, const float *dout, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (da) da[i] += dout[i];
        if (db) db[i] += dout[i];
    }
}

void ldm_ref_mul_backward(float *da, float *db, const float *dout, const float *a,
                          const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (da) da[i] += dout[i] * b[i];
        if (db) db[i] += dout[i] * a[i];
    }
}

void ldm_ref_scale_backward(float *da, const float *dout, float s, int64_t n) {
    for (int64_t i = 0; i < n; i++) da[i] += dout[i] * s;
}

// out[b,c,:] = x[b,c,:] + y[b,c]: y was broadcast over S, so its gradient sums over S
void ldm_ref_add_channel_backward(float *dx, float *dy, const float *dout,
                                  int64_t B, int64_t C, int64_t S) {
    for (int64_t bc = 0; bc < B * C; bc++) {
        double acc = 0;
        for (int64_t i = 0; i < S; i++) {
            if (dx) dx[bc * S + i] += dout[bc * S + i];
            acc += dout[bc * S + i];
        }
        if (dy) dy[bc] += (float)acc;
    }
}

// each x[b,c,y,x] was copied to the 2x2 block out[b,c,2y..2y+1,2x..2x+1]
void ldm_ref_upsample2x_backward(float *dx, const float *dout,
                                 int64_t B, int64_t C, int64_t H, int64_t W) {
    for (int64_t bc = 0; bc < B * C; bc++)
        for (int64_t iy = 0; iy < H; iy++)
            for (int64_t ix = 0; ix < W; ix++) {
                const float *g = dout + (bc * 2 * H + 2 * iy) * 2 * W + 2 * ix;
                dx[(bc * H + iy) * W + ix] += (g[0] + g[1]) + (g[2 * W] + g[2 * W + 1]);
            }
}

// dout[B,Ca+Cb,S] -> da[B,Ca,S] += its first Ca channels, db[B,Cb,S] += the rest
void ldm_ref_concat_channels_backward(float *da, float *db, const float *dout,
                                      int64_t B, int64_t Ca, int64_t Cb, int64_t S) {
    for (int64_t i = 0; i < B; i++) {
        const float *g = dout + i * (Ca + Cb) * S;
        if (da) for (int64_t j = 0; j < Ca * S; j++) da[i * Ca * S + j] += g[j];
        if (db) for (int64_t j = 0; j < Cb * S; j++) db[i * Cb * S + j] += g[Ca * S + j];
    }
}

// x[B,M,N] -> out[B,N,M]: dx[b,m,n] += dout[b,n,m]
void ldm_ref_transpose_backward(float *dx, const float *dout, int64_t B, int64_t M, int64_t N) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) dx[(b * M + m) * N + n] += dout[(b * N + n) * M + m];
}

// out[i,:] = table[ids[i],:]: row ids[i] of the table gets dout[i,:]; a token
// that occurs twice gets both rows (a scatter-add)
void ldm_ref_embedding_backward(float *dtable, const float *dout, const int32_t *ids,
                                int64_t n, int64_t D) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < D; d++) dtable[(int64_t)ids[i] * D + d] += dout[i * D + d];
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
    // backward (training)
    .linear_backward = ldm_ref_linear_backward,
    .conv2d_backward = ldm_ref_conv2d_backward,
    .group_norm_backward = ldm_ref_group_norm_backward,
    .layer_norm_backward = ldm_ref_layer_norm_backward,
    .softmax_backward = ldm_ref_softmax_backward,
    .attention_backward = ldm_ref_attention_backward,
    .silu_backward = ldm_ref_silu_backward,
    .gelu_backward = ldm_ref_gelu_backward,
    .quick_gelu_backward = ldm_ref_quick_gelu_backward,
    .geglu_backward = ldm_ref_geglu_backward,
    .add_backward = ldm_ref_add_backward,
    .mul_backward = ldm_ref_mul_backward,
    .scale_backward = ldm_ref_scale_backward,
    .add_channel_backward = ldm_ref_add_channel_backward,
    .upsample2x_backward = ldm_ref_upsample2x_backward,
    .concat_channels_backward = ldm_ref_concat_channels_backward,
    .transpose_backward = ldm_ref_transpose_backward,
    .embedding_backward = ldm_ref_embedding_backward,
};
