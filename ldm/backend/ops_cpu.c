/*
 * ldm/backend/ops_cpu.c -- the `cpu` backend: struct ldm_ops (ops.h) on OpenBLAS
 * sgemm + OpenMP. Same math as ops_ref.c, arranged for speed:
 *
 *   linear     one sgemm (x @ w^T), bias added after
 *   conv2d     im2col + sgemm per image, in bounded column chunks; a 1x1
 *              stride-1 unpadded conv is a direct sgemm on the input
 *   conv2d     3x3 stride 1 on large maps: Winograd F(4x4,3x3), cpu_winograd.c
 *   attention  per (batch, head, block of QB query rows): S = Q K^T by
 *              sgemm, P = exp(S - rowmax) (masked), O = P V by sgemm, O /=
 *              rowsum. Only a [QB, Tk] score block exists per thread
 *              (memory-bounded). exp is a vectorisable polynomial (exp_vec).
 *              From 2048 keys on: the fused online-softmax kernel of
 *              cpu_attention.c (no [QB, Tk] block at all).
 *   norms      group/layer norm statistics in double, two passes
 *   the rest   OpenMP loops over independent rows / groups / elements;
 *              silu, gelu, geglu use vectorisable exp_vec / erf_vec
 *
 * Threads: OpenMP owns them (set_threads(n), 0 = all cores, the default);
 * OpenBLAS is held at one thread and large sgemms are split across OpenMP
 * threads by cpu_sgemm, so OpenBLAS's own pool never competes with OpenMP's.
 * Small ops run on fewer threads: elementwise loops under PAR_MIN elements
 * on one, GEMM-like ops on one per GEMM_FLOPS_PER_THREAD flops.
 * Memory: host memory, 64-byte aligned (one cache line, one AVX-512 vector).
 * fp16/bf16 weights: ldm/backend/cpu_f16.c (widen a panel, then these ops).
 * Leaves out: FFT convolution, fusing ops across the table.
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/cpu_kernels.h"
#include "ldm/backend/cpu_math.h"
#include "ldm/backend/ops.h"
#include "ldm/backend/cpu_f16.h"
#include "ldm/backend/ops_ref.h"

// OpenBLAS extensions (declared in OpenBLAS's cblas.h; repeated so that any
// cblas.h works).
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);

// Loops shorter than this (elements) run on one thread: forking costs more
// than it saves, and on a busy machine a second thread that waits for a core
// stalls the first at the join. 256Ki floats = 1 MiB, about 50-100 us of a
// memory-bound loop.
#define PAR_MIN (1 << 20)
// Flops per extra thread for GEMM-like ops (sgemm, conv, attention): 50
// MFLOP, about 1 ms of one core, so that a thread that waits for a core (a
// scheduler time slice) costs less than it brings. The tiny model's ops stay
// on one thread; the full-size UNet's all use every core.
#define GEMM_FLOPS_PER_THREAD 5e7
// Threads for an op of `flops`: one per GEMM_FLOPS_PER_THREAD, at least 1,
// at most the backend's count.
static int threads_for(int nthreads, double flops) {
    double n = flops / GEMM_FLOPS_PER_THREAD;
    return n < 1 ? 1 : n < nthreads ? (int)n : nthreads;
}

// ---- SIMD level (cpu_kernels.h) ------------------------------------------------

cpu_simd cpu_simd_best(void) {
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx512f")) return CPU_SIMD_AVX512;
#endif
    return CPU_SIMD_AVX2;
}

// ---- memory -------------------------------------------------------------------

static void *cpu_alloc(size_t nbytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, nbytes ? nbytes : 1) != 0) return NULL;
    return p;
}
static void cpu_free(void *p) { free(p); }
static void cpu_memcpy(void *dst, const void *src, size_t nbytes) {
    if (nbytes) memmove(dst, src, nbytes);
}

// Threads: OpenMP owns them all. OpenBLAS (the pthread build, with a pool
// of its own) is held at one thread, and every sgemm that is worth splitting
// is split by cpu_sgemm below across OpenMP threads, each calling a
// one-thread sgemm on its part. So the two pools never run (or spin-wait)
// at the same time: with both, 2 OpenMP + 2 OpenBLAS threads on 2 busy cores
// made the tiny model 15-20x slower on 2 threads than on 1.
// Until set_threads is called, OpenMP's own default (all cores, or
// $OMP_NUM_THREADS) holds.
static int cpu_threads_n = 0;
static int cpu_blas_single = 0; // OpenBLAS held at one thread yet?
static int cpu_threads(void) {
    if (!cpu_blas_single) { // first op: take OpenBLAS's pool out of play
        openblas_set_num_threads(1);
        cpu_blas_single = 1;
    }
    return cpu_threads_n > 0 ? cpu_threads_n : omp_get_max_threads();
}
static void cpu_set_threads(int n) { // n = 0: all cores
    cpu_threads_n = n > 0 ? n : omp_get_num_procs();
    omp_set_num_threads(cpu_threads_n);
    openblas_set_num_threads(1);
    cpu_blas_single = 1;
}

// C[M,N] = A[M,K] @ B (B [K,N], or [N,K] transposed when tb), row-major, on up to
// nthreads OpenMP threads (threads_for): the larger of M and N is cut into blocks
// (a power of two, at most 16, of >= 128 rows, or of columns in multiples of
// 16), each a one-thread sgemm. Each block's sgemm packs the whole other
// operand again, so blocks are no smaller than that: with blocks of 64 rows,
// the 1280-channel im2col convs and the 256-token linears spent a fifth of
// their time re-packing (`make bench` kernels: 0.68-0.87 of the time with
// blocks of >= 128-256, no change on the large GEMMs).
// The blocks depend on the matrix, never on the thread count, so every element
// comes from the same sgemm call whatever --threads says: bit-identical results
// on any number of threads (an OpenBLAS sgemm's rounding may depend on its sizes).
static void cpu_sgemm(int nthreads, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *Bm, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
    if (M == 0 || N == 0) return;
    nthreads = threads_for(nthreads, 2.0 * M * N * K);
    CBLAS_TRANSPOSE tB = tb ? CblasTrans : CblasNoTrans;
    const int rows = M >= N; // blocks of rows (A and C), else of columns (B and C)
    const int64_t L = rows ? M : N;
    int64_t nb0 = 1;
    while (nb0 < 16 && 2 * nb0 * 128 <= L) nb0 *= 2;
    const int64_t bs = rows ? (L + nb0 - 1) / nb0 : ((L + nb0 - 1) / nb0 + 15) / 16 * 16;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t l0 = 0; l0 < L; l0 += bs) {
        int64_t n = L - l0 < bs ? L - l0 : bs;
        if (rows)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tB, (int)n, (int)N, (int)K, alpha,
                        A + l0 * lda, (int)lda, Bm, (int)ldb, beta, C + l0 * ldc, (int)ldc);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tB, (int)M, (int)n, (int)K, alpha, A,
                        (int)lda, tb ? Bm + l0 * ldb : Bm + l0, (int)ldb, beta, C + l0, (int)ldc);
    }
}

// ---- dense --------------------------------------------------------------------

// out[M,N] = x[M,K] @ w[N,K]^T + b[N]
static void cpu_linear(float *out, const float *x, const float *w, const float *b,
                       int64_t M, int64_t K, int64_t N) {
    if (M == 0 || N == 0) return;
    int nthreads = cpu_threads();
    cpu_sgemm(nthreads, 1, M, N, K, 1.0f, x, K, w, K, 0.0f, out, N);
    if (b) {
#pragma omp parallel for num_threads(nthreads) if (M * N > PAR_MIN)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) out[m * N + n] += b[n];
    }
}

// Columns of the im2col matrix built per chunk (floats): 8M floats = 32 MiB,
// so a 1024x1024 VAE layer never needs a multi-GiB im2col buffer.
#define IM2COL_MAX_FLOATS (8 << 20)

// im2col for output rows [oy0, oy0+ny): cols[Cin*KH*KW, ny*Wo] (row stride
// ld >= ny*Wo), row r = (ci*KH + ky)*KW + kx holds, for each output pixel
// (oy, ox), the input value under kernel tap (ky, kx) of channel ci, or 0 in
// the padding.
static void im2col_rows(float *cols, int64_t ld, const float *x, int64_t Cin, int64_t H,
                        int64_t W, int64_t KH, int64_t KW, int64_t s, int64_t pad_t,
                        int64_t pad_l, int64_t Wo, int64_t oy0, int64_t ny, int nthreads) {
    int64_t R = Cin * KH * KW, n = ny * Wo;
#pragma omp parallel for num_threads(nthreads) if (R * n > PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        int64_t ci = r / (KH * KW), ky = (r / KW) % KH, kx = r % KW;
        const float *xc = x + ci * H * W;
        float *dst = cols + r * ld;
        for (int64_t j = 0; j < ny; j++) {
            int64_t iy = (oy0 + j) * s - pad_t + ky;
            float *d = dst + j * Wo;
            if (iy < 0 || iy >= H) { memset(d, 0, (size_t)Wo * sizeof(float)); continue; }
            const float *xr = xc + iy * W;
            // ox where ix = ox*s - pad_l + kx lies in [0, W): [ox_lo, ox_hi)
            int64_t ox_lo = pad_l - kx > 0 ? (pad_l - kx + s - 1) / s : 0;
            int64_t ox_hi = W - 1 + pad_l - kx >= 0 ? (W - 1 + pad_l - kx) / s + 1 : 0;
            if (ox_hi > Wo) ox_hi = Wo;
            if (ox_lo > ox_hi) ox_lo = ox_hi;
            for (int64_t ox = 0; ox < ox_lo; ox++) d[ox] = 0.0f;
            if (s == 1) {
                memcpy(d + ox_lo, xr + ox_lo - pad_l + kx, (size_t)(ox_hi - ox_lo) * sizeof(float));
            } else {
                for (int64_t ox = ox_lo; ox < ox_hi; ox++) d[ox] = xr[ox * s - pad_l + kx];
            }
            for (int64_t ox = ox_hi; ox < Wo; ox++) d[ox] = 0.0f;
        }
    }
}

// out[b, co, :] += bias[co] (bias may be NULL)
static void add_bias(float *out, const float *bias, int64_t B, int64_t Cout, int64_t P,
                     int nthreads) {
    if (!bias) return;
#pragma omp parallel for collapse(2) num_threads(nthreads) if (B * Cout * P > PAR_MIN)
    for (int64_t b = 0; b < B; b++)
        for (int64_t co = 0; co < Cout; co++) {
            float *o = out + (b * Cout + co) * P;
            float bv = bias[co];
            for (int64_t i = 0; i < P; i++) o[i] += bv;
        }
}

// The whole batch as one GEMM (no bias): cols[R, B*P] holds image b's
// columns at [:, b*P, (b+1)*P), prod[Cout, B*P] = w[Cout, R] @ cols, then
// out[b, co, :] = prod[co, b*P .. (b+1)*P). On small maps (the UNet's 16x16
// and 8x8 levels at batch 2) a per-image GEMM is thin and packs the whole
// weight for a few columns; one GEMM packs it once (`make bench` kernels:
// 0.76-0.79 of the time at 8x8, 0.90-0.93 at 16x16, 1280 channels).
static void conv2d_im2col_batched(float *out, const float *x, const float *w, int64_t B,
                                  int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t KH,
                                  int64_t KW, int64_t s, int64_t pad_t, int64_t pad_l,
                                  int64_t Ho, int64_t Wo, int nthreads) {
    int64_t P = Ho * Wo, R = Cin * KH * KW, N = B * P;
    float *cols = cpu_alloc((size_t)((R + Cout) * N) * sizeof(float)), *prod = cols + R * N;
    if (!cols) abort(); // bounded by IM2COL_MAX_FLOATS, as the per-image buffer
    for (int64_t b = 0; b < B; b++)
        im2col_rows(cols + b * P, N, x + b * Cin * H * W, Cin, H, W, KH, KW, s, pad_t, pad_l, Wo,
                    0, Ho, nthreads);
    cpu_sgemm(nthreads, 0, Cout, N, R, 1.0f, w, R, cols, N, 0.0f, prod, N);
#pragma omp parallel for collapse(2) num_threads(nthreads) if (Cout * N > PAR_MIN)
    for (int64_t b = 0; b < B; b++)
        for (int64_t co = 0; co < Cout; co++)
            memcpy(out + (b * Cout + co) * P, prod + co * N + b * P, (size_t)P * sizeof(float));
    free(cols);
}

// out[B,Cout,Ho,Wo] = conv(x[B,Cin,H,W], w[Cout,Cin,KH,KW]) + b[Cout], as GEMM:
// per image, out_b[Cout, Ho*Wo] = w[Cout, Cin*KH*KW] @ cols[Cin*KH*KW, Ho*Wo].
// The readable path and the fallback for every shape Winograd does not take.
// Small maps: the images' columns side by side, one GEMM for the batch.
void cpu_conv2d_im2col(float *out, const float *x, const float *w, const float *bias,
                       int64_t B, int64_t Cin, int64_t H, int64_t W,
                       int64_t Cout, int64_t KH, int64_t KW, int64_t s,
                       int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r, int nthreads) {
    int64_t Ho = (H + pad_t + pad_b - KH) / s + 1, Wo = (W + pad_l + pad_r - KW) / s + 1;
    int64_t P = Ho * Wo, R = Cin * KH * KW;
    int direct = KH == 1 && KW == 1 && s == 1 && pad_t == 0 && pad_b == 0 && pad_l == 0 &&
                 pad_r == 0;
    if (!direct && B > 1 && (R + Cout) * B * P <= IM2COL_MAX_FLOATS) {
        conv2d_im2col_batched(out, x, w, B, Cin, H, W, Cout, KH, KW, s, pad_t, pad_l, Ho, Wo,
                              nthreads);
        add_bias(out, bias, B, Cout, P, nthreads);
        return;
    }
    float *cols = NULL;
    int64_t rows_per_chunk = Ho;
    if (!direct) {
        rows_per_chunk = IM2COL_MAX_FLOATS / (R * Wo);
        if (rows_per_chunk < 1) rows_per_chunk = 1;
        if (rows_per_chunk > Ho) rows_per_chunk = Ho;
        cols = cpu_alloc((size_t)(R * rows_per_chunk * Wo) * sizeof(float));
        if (!cols) abort(); // bounded (<= 32 MiB unless one output row is larger)
    }
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * Cin * H * W;
        float *ob = out + b * Cout * P;
        if (direct) {
            // 1x1 conv: out_b[Cout, HW] = w[Cout, Cin] @ x_b[Cin, HW], no copy
            cpu_sgemm(nthreads, 0, Cout, P, Cin, 1.0f, w, Cin, xb, P, 0.0f, ob, P);
        } else {
            for (int64_t oy0 = 0; oy0 < Ho; oy0 += rows_per_chunk) {
                int64_t ny = Ho - oy0 < rows_per_chunk ? Ho - oy0 : rows_per_chunk;
                int64_t n = ny * Wo;
                im2col_rows(cols, n, xb, Cin, H, W, KH, KW, s, pad_t, pad_l, Wo, oy0, ny, nthreads);
                // out_b[:, oy0*Wo : oy0*Wo+n] (row stride P) = w @ cols
                cpu_sgemm(nthreads, 0, Cout, n, R, 1.0f, w, R, cols, n, 0.0f, ob + oy0 * Wo, P);
            }
        }
    }
    free(cols);
    add_bias(out, bias, B, Cout, P, nthreads);
}

// Winograd F(4x4,3x3) where it fits and pays (cpu_winograd.c), else im2col.
static void cpu_conv2d(float *out, const float *x, const float *w, const float *bias,
                       int64_t B, int64_t Cin, int64_t H, int64_t W,
                       int64_t Cout, int64_t KH, int64_t KW, int64_t s,
                       int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r) {
    int64_t Ho = (H + pad_t + pad_b - KH) / s + 1, Wo = (W + pad_l + pad_r - KW) / s + 1;
    int nthreads = threads_for(cpu_threads(), 2.0 * B * Cout * Ho * Wo * Cin * KH * KW);
    if (cpu_winograd_fits(B, Cin, H, W, Cout, KH, KW, s, pad_t, pad_b, pad_l, pad_r) &&
        cpu_conv3x3_winograd(out, x, w, bias, B, Cin, H, W, Cout, pad_t, nthreads) == 0)
        return;
    cpu_conv2d_im2col(out, x, w, bias, B, Cin, H, W, Cout, KH, KW, s, pad_t, pad_b, pad_l, pad_r,
                      nthreads);
}

// ---- normalisation ------------------------------------------------------------

// mean and biased variance of n floats, two passes in double (the simd
// reductions let the compiler keep several partial sums: still double)
static void mean_var(const float *x, int64_t n, double *mean, double *var) {
    double m = 0, v = 0;
#pragma omp simd reduction(+ : m)
    for (int64_t i = 0; i < n; i++) m += x[i];
    m /= (double)n;
#pragma omp simd reduction(+ : v)
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - m;
        v += d * d;
    }
    *mean = m;
    *var = v / (double)n;
}

// x[B,C,S] in G groups: out = (x - mean_g) * rstd_g * gamma[c] + beta[c]
static void cpu_group_norm(float *out, const float *x, const float *gamma, const float *beta,
                           int64_t B, int64_t C, int64_t S, int64_t G, float eps) {
    int64_t cg = C / G;
#pragma omp parallel for if (B * C * S > PAR_MIN)
    for (int64_t bg = 0; bg < B * G; bg++) {
        int64_t b = bg / G, g = bg % G;
        const float *xg = x + (b * C + g * cg) * S;
        float *og = out + (b * C + g * cg) * S;
        double mean, var;
        mean_var(xg, cg * S, &mean, &var);
        double rstd = 1.0 / sqrt(var + eps);
        for (int64_t c = 0; c < cg; c++) {
            int64_t ch = g * cg + c;
            // x - mean in double: with |mean| >> std, a float mean (or the
            // folded x*a + (beta - mean*a)) would lose the low digits
            double a = rstd * (gamma ? gamma[ch] : 1.0f);
            float be = beta ? beta[ch] : 0.0f;
            const float *xc = xg + c * S;
            float *oc = og + c * S;
#pragma omp simd
            for (int64_t i = 0; i < S; i++) oc[i] = (float)((xc[i] - mean) * a) + be;
        }
    }
}

// x[N,D], each row by its own mean and biased variance
static void cpu_layer_norm(float *out, const float *x, const float *gamma, const float *beta,
                           int64_t N, int64_t D, float eps) {
#pragma omp parallel for if (N * D > PAR_MIN)
    for (int64_t r = 0; r < N; r++) {
        double mean, var;
        mean_var(x + r * D, D, &mean, &var);
        double rstd = 1.0 / sqrt(var + eps);
        const float *xr = x + r * D;
        float *o = out + r * D;
        for (int64_t i = 0; i < D; i++) // x - mean in double, as in group_norm
            o[i] = (float)((xr[i] - mean) * rstd) * (gamma ? gamma[i] : 1.0f) + (beta ? beta[i] : 0.0f);
    }
}

// one row, unnormalised: o = exp(x - max(x)) over n values (o may == x);
// returns the sum of o, so the caller can divide wherever it is cheapest
static float exp_row(float *o, const float *x, int64_t n) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; i++) {
        o[i] = exp_vec(x[i] - mx);
        sum += o[i];
    }
    return sum;
}

// one row: o = softmax(x) over n values (o may == x), max-subtracted
static void softmax_row(float *o, const float *x, int64_t n) {
    float inv = 1.0f / exp_row(o, x, n);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) o[i] *= inv;
}

static void cpu_softmax(float *out, const float *x, int64_t N, int64_t D) {
#pragma omp parallel for if (N * D > PAR_MIN)
    for (int64_t r = 0; r < N; r++) softmax_row(out + r * D, x + r * D, D);
}

// ---- attention ----------------------------------------------------------------

// Query rows per block: the score block is QB x Tk floats per thread
// (128 x 8192 x 4 B = 4 MiB at 8192 tokens).
#define ATTN_QB 128

// q[B,Tq,NH*HS], k/v[B,Tk,NH*HS] -> out[B,Tq,NH*HS]. Head h of token t is
// the HS floats at row t, column h*HS: a strided matrix with leading
// dimension D, which sgemm reads directly (no head split copies).
void cpu_attention_sgemm(float *out, const float *q, const float *k, const float *v,
                         int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                         float scale, int causal, int nthreads) {
    int64_t D = NH * HS, nqb = (Tq + ATTN_QB - 1) / ATTN_QB, ntask = B * NH * nqb;
    int nthr = nthreads;
    if (nthr > ntask) nthr = (int)ntask;
    if (nthr < 1) nthr = 1;
    // OpenBLAS (pthread build) must not spawn its pool from inside OpenMP:
    // one thread per sgemm while the OpenMP threads share the blocks.
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    int failed = 0;
#pragma omp parallel num_threads(nthr)
    {
        float *S = cpu_alloc((size_t)(ATTN_QB * Tk) * sizeof(float)); // scores [QB, Tk]
        if (!S) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntask; t++) {
            if (!S) continue;
            int64_t b = t / (NH * nqb), h = (t / nqb) % NH, i0 = (t % nqb) * ATTN_QB;
            int64_t nq = Tq - i0 < ATTN_QB ? Tq - i0 : ATTN_QB;
            // causal: rows i0..i0+nq-1 see keys j <= i, so only the first
            // min(Tk, i0+nq) keys matter for this block
            int64_t nk = causal ? (i0 + nq < Tk ? i0 + nq : Tk) : Tk;
            const float *qb = q + (b * Tq + i0) * D + h * HS;
            const float *kb = k + b * Tk * D + h * HS;
            const float *vb = v + b * Tk * D + h * HS;
            float *ob = out + (b * Tq + i0) * D + h * HS;
            // S[nq, nk] = scale * Q[nq, HS] @ K[nk, HS]^T
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)HS,
                        scale, qb, (int)D, kb, (int)D, 0.0f, S, (int)nk);
            // P = exp(S - rowmax), unnormalised; masked keys get 0
            float inv_sum[ATTN_QB];
            for (int64_t r = 0; r < nq; r++) {
                float *sr = S + r * nk;
                int64_t n = causal ? (i0 + r + 1 < nk ? i0 + r + 1 : nk) : nk;
                inv_sum[r] = 1.0f / exp_row(sr, sr, n);
                for (int64_t j = n; j < nk; j++) sr[j] = 0.0f;
            }
            // O[nq, HS] = P[nq, nk] @ V[nk, HS], then each row / its sum
            // (dividing the [nq,HS] output is cheaper than the [nq,nk] P)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)HS, (int)nk,
                        1.0f, S, (int)nk, vb, (int)D, 0.0f, ob, (int)D);
            for (int64_t r = 0; r < nq; r++)
                for (int64_t d = 0; d < HS; d++) ob[r * D + d] *= inv_sum[r];
        }
        free(S);
    }
    openblas_set_num_threads(blas_threads);
    if (failed) abort(); // a few MiB per thread: only when the machine is out of memory
}

// Keys from which the fused kernel (cpu_attention.c) is faster than two
// sgemms per query block: there a [128, Tk] score block no longer fits a
// core's L2 (measured by `build/bench kernels`: 0.75-0.79 of the time at the
// UNet's 4096-token self-attention; at 1024, 256 and 77 keys 0.74-1.85 over
// four runs, no consistent gain, so those stay on the sgemms).
#define ATTN_FLASH_MIN_KEYS 2048

// The fused kernel for long key sequences (when HS is a multiple of 8 and
// AVX2 + FMA are there), the two-sgemm kernel for everything else.
static void cpu_attention(float *out, const float *q, const float *k, const float *v,
                          int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                          float scale, int causal) {
    int nthreads = cpu_threads();
    nthreads = threads_for(nthreads, 4.0 * B * NH * Tq * Tk * HS);
    if (Tk >= ATTN_FLASH_MIN_KEYS &&
        cpu_attention_flash(out, q, k, v, B, Tq, Tk, NH, HS, scale, causal, nthreads) == 0)
        return;
    cpu_attention_sgemm(out, q, k, v, B, Tq, Tk, NH, HS, scale, causal, nthreads);
}

// ---- elementwise --------------------------------------------------------------

// erf(x) in vectorisable form: Abramowitz & Stegun 7.1.26,
// erf|x| = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-x^2), t = 1/(1 + p|x|),
// absolute error <= 1.5e-7 (measured 1.3e-7); odd symmetry by copysign.
static inline float erf_vec(float x) {
    float ax = fabsf(x);
    float t = 1.0f / (1.0f + 0.3275911f * ax);
    float poly = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
                  0.254829592f) * t;
    return copysignf(1.0f - poly * exp_vec(-ax * ax), x);
}

// 0.5 x (1 + erf(x / sqrt 2))
static inline float gelu_vec(float x) { return 0.5f * x * (1.0f + erf_vec(x * (float)M_SQRT1_2)); }

static void cpu_silu(float *out, const float *x, int64_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + exp_vec(-x[i]));
}

static void cpu_gelu(float *out, const float *x, int64_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = gelu_vec(x[i]);
}

static void cpu_quick_gelu(float *out, const float *x, int64_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + exp_vec(-1.702f * x[i]));
}

static void cpu_geglu(float *out, const float *x, int64_t N, int64_t F) {
#pragma omp parallel for if (N * F > PAR_MIN)
    for (int64_t r = 0; r < N; r++) {
        const float *a = x + r * 2 * F, *g = a + F;
        float *o = out + r * F;
#pragma omp simd
        for (int64_t f = 0; f < F; f++) o[f] = a[f] * gelu_vec(g[f]);
    }
}

static void cpu_add(float *out, const float *a, const float *b, int64_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void cpu_mul(float *out, const float *a, const float *b, int64_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * b[i];
}

static void cpu_scale(float *out, const float *a, float s, int64_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] * s;
}

static void cpu_add_channel(float *out, const float *x, const float *y,
                            int64_t B, int64_t C, int64_t S) {
#pragma omp parallel for if (B * C * S > PAR_MIN)
    for (int64_t bc = 0; bc < B * C; bc++) {
        float yv = y[bc];
        for (int64_t i = 0; i < S; i++) out[bc * S + i] = x[bc * S + i] + yv;
    }
}

// ---- layout -------------------------------------------------------------------

static void cpu_upsample2x(float *out, const float *x, int64_t B, int64_t C, int64_t H, int64_t W) {
#pragma omp parallel for if (B * C * H * W > PAR_MIN)
    for (int64_t r = 0; r < B * C * H; r++) { // one input row -> two output rows
        const float *xr = x + r * W;
        float *o = out + r * 4 * W;
        for (int64_t ox = 0; ox < 2 * W; ox++) o[ox] = xr[ox / 2];
        memcpy(o + 2 * W, o, (size_t)(2 * W) * sizeof(float));
    }
}

static void cpu_concat_channels(float *out, const float *a, const float *b,
                                int64_t B, int64_t Ca, int64_t Cb, int64_t S) {
    for (int64_t i = 0; i < B; i++) {
        memmove(out + i * (Ca + Cb) * S, a + i * Ca * S, (size_t)(Ca * S) * sizeof(float));
        memmove(out + (i * (Ca + Cb) + Ca) * S, b + i * Cb * S, (size_t)(Cb * S) * sizeof(float));
    }
}

// out[b,n,m] = x[b,m,n], in 32x32 tiles so both sides stay in cache
#define TT 32
static void cpu_transpose(float *out, const float *x, int64_t B, int64_t M, int64_t N) {
    int64_t tm = (M + TT - 1) / TT, tn = (N + TT - 1) / TT;
#pragma omp parallel for if (B * M * N > PAR_MIN)
    for (int64_t t = 0; t < B * tm * tn; t++) {
        int64_t b = t / (tm * tn), m0 = (t / tn) % tm * TT, n0 = t % tn * TT;
        int64_t m1 = m0 + TT < M ? m0 + TT : M, n1 = n0 + TT < N ? n0 + TT : N;
        const float *xb = x + b * M * N;
        float *ob = out + b * M * N;
        for (int64_t m = m0; m < m1; m++)
            for (int64_t n = n0; n < n1; n++) ob[n * M + m] = xb[m * N + n];
    }
}

static void cpu_embedding(float *out, const float *table, const int32_t *ids, int64_t n, int64_t D) {
    for (int64_t i = 0; i < n; i++)
        memcpy(out + i * D, table + (int64_t)ids[i] * D, (size_t)D * sizeof(float));
}

// ---- backward (training) --------------------------------------------------------
// linear, conv2d and attention as GEMMs (the rest of the backward entries are
// the `ref` loops, ldm/backend/ops_ref.h). Every gradient accumulates (+=, sgemm beta = 1);
// a NULL gradient is skipped. Derivations: docs/14-backpropagation.md.

// dx[M,K] += dout[M,N] @ w[N,K];  dw[N,K] += dout^T @ x[M,K];  db[N] += column sums of dout
static void cpu_linear_backward(float *dx, float *dw, float *db, const float *dout,
                                const float *x, const float *w, int64_t M, int64_t K, int64_t N) {
    if (M == 0 || N == 0 || K == 0) return;
    int nthreads = cpu_threads();
    if (dx) cpu_sgemm(nthreads, 0, M, K, N, 1.0f, dout, N, w, K, 1.0f, dx, K);
    if (dw) {
        // rows [n0, n0+nb) of dw = (columns [n0, n0+nb) of dout)^T @ x, one
        // one-thread sgemm per block of 64 rows (blocks independent of the thread count)
        int nt = threads_for(nthreads, 2.0 * M * N * K);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int64_t n0 = 0; n0 < N; n0 += 64) {
            int64_t nb = N - n0 < 64 ? N - n0 : 64;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nb, (int)K, (int)M, 1.0f,
                        dout + n0, (int)N, x, (int)K, 1.0f, dw + n0 * K, (int)K);
        }
    }
    if (db) {
#pragma omp parallel for num_threads(nthreads) if (M * N > PAR_MIN)
        for (int64_t n = 0; n < N; n++) {
            double acc = 0;
            for (int64_t m = 0; m < M; m++) acc += dout[m * N + n];
            db[n] += (float)acc;
        }
    }
}

// col2im, the transpose of im2col_rows: dx_b[ci,iy,ix] += every dcols entry that
// im2col_rows copied from x_b[ci,iy,ix] (output rows [oy0, oy0+ny)). Threads
// split the channels, so no two write the same dx element.
static void col2im_rows_add(float *dx, const float *dcols, int64_t Cin, int64_t H, int64_t W,
                            int64_t KH, int64_t KW, int64_t s, int64_t pad_t, int64_t pad_l,
                            int64_t Wo, int64_t oy0, int64_t ny, int nthreads) {
    int64_t n = ny * Wo;
#pragma omp parallel for num_threads(nthreads) if (Cin * KH * KW * n > PAR_MIN)
    for (int64_t ci = 0; ci < Cin; ci++)
        for (int64_t ky = 0; ky < KH; ky++)
            for (int64_t kx = 0; kx < KW; kx++) {
                const float *src = dcols + ((ci * KH + ky) * KW + kx) * n;
                for (int64_t j = 0; j < ny; j++) {
                    int64_t iy = (oy0 + j) * s - pad_t + ky;
                    if (iy < 0 || iy >= H) continue; // a padding row: no x there
                    float *dr = dx + (ci * H + iy) * W;
                    for (int64_t ox = 0; ox < Wo; ox++) {
                        int64_t ix = ox * s - pad_l + kx;
                        if (ix >= 0 && ix < W) dr[ix] += src[j * Wo + ox];
                    }
                }
            }
}

// conv2d backward as GEMMs per image b, with cols = im2col(x_b) [R = Cin*KH*KW, P = Ho*Wo]
// (in the forward's bounded chunks of output rows):
//   dw[Cout,R] += dout_b[Cout,P] @ cols^T        dcols[R,P] = w^T[R,Cout] @ dout_b
//   dx_b += col2im(dcols)                          db[co] += sum of dout_b[co,:]
static void cpu_conv2d_backward(float *dx, float *dw, float *db, const float *dout,
                                const float *x, const float *w,
                                int64_t B, int64_t Cin, int64_t H, int64_t W,
                                int64_t Cout, int64_t KH, int64_t KW, int64_t s,
                                int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r) {
    int64_t Ho = (H + pad_t + pad_b - KH) / s + 1, Wo = (W + pad_l + pad_r - KW) / s + 1;
    int64_t P = Ho * Wo, R = Cin * KH * KW;
    int nthreads = threads_for(cpu_threads(), 2.0 * B * Cout * P * R);
    int direct = KH == 1 && KW == 1 && s == 1 && pad_t == 0 && pad_b == 0 && pad_l == 0 &&
                 pad_r == 0;
    int64_t rows_per_chunk = IM2COL_MAX_FLOATS / (R * Wo);
    if (rows_per_chunk < 1) rows_per_chunk = 1;
    if (rows_per_chunk > Ho) rows_per_chunk = Ho;
    float *wt = NULL, *cols = NULL, *dcols = NULL;
    if (dx) { // w^T [R, Cout]
        wt = cpu_alloc((size_t)(R * Cout) * sizeof(float));
        if (!wt) abort(); // the size of the weight
        for (int64_t co = 0; co < Cout; co++)
            for (int64_t r = 0; r < R; r++) wt[r * Cout + co] = w[co * R + r];
    }
    if (!direct) {
        cols = cpu_alloc((size_t)(R * rows_per_chunk * Wo) * sizeof(float));
        dcols = cpu_alloc((size_t)(R * rows_per_chunk * Wo) * sizeof(float));
        if (!cols || !dcols) abort(); // bounded like the forward's im2col buffer
    }
    for (int64_t b = 0; b < B; b++) {
        const float *xb = x + b * Cin * H * W, *gb = dout + b * Cout * P;
        float *dxb = dx ? dx + b * Cin * H * W : NULL;
        if (direct) { // 1x1: cols is x_b itself [Cin, P]
            if (dw) cpu_sgemm(nthreads, 1, Cout, Cin, P, 1.0f, gb, P, xb, P, 1.0f, dw, Cin);
            if (dxb) cpu_sgemm(nthreads, 0, Cin, P, Cout, 1.0f, wt, Cout, gb, P, 1.0f, dxb, P);
            continue;
        }
        for (int64_t oy0 = 0; oy0 < Ho; oy0 += rows_per_chunk) {
            int64_t ny = Ho - oy0 < rows_per_chunk ? Ho - oy0 : rows_per_chunk;
            int64_t n = ny * Wo;
            const float *gc = gb + oy0 * Wo; // dout_b[:, oy0*Wo : oy0*Wo+n], row stride P
            if (dw) {
                im2col_rows(cols, n, xb, Cin, H, W, KH, KW, s, pad_t, pad_l, Wo, oy0, ny, nthreads);
                cpu_sgemm(nthreads, 1, Cout, R, n, 1.0f, gc, P, cols, n, 1.0f, dw, R);
            }
            if (dxb) {
                cpu_sgemm(nthreads, 0, R, n, Cout, 1.0f, wt, Cout, gc, P, 0.0f, dcols, n);
                col2im_rows_add(dxb, dcols, Cin, H, W, KH, KW, s, pad_t, pad_l, Wo, oy0, ny,
                                nthreads);
            }
        }
    }
    if (db) {
        for (int64_t co = 0; co < Cout; co++) {
            double acc = 0;
            for (int64_t b = 0; b < B; b++)
                for (int64_t i = 0; i < P; i++) acc += dout[(b * Cout + co) * P + i];
            db[co] += (float)acc;
        }
    }
    free(wt);
    free(cols);
    free(dcols);
}

// Attention backward as GEMMs, one (batch, head) per task and its query rows
// in blocks of ATTN_QB (the forward's blocks), with the probabilities
// recomputed as in the forward (cpu_attention_sgemm):
//   S  = scale Q Kᵀ,  P = softmax(S) (masked keys 0)       [nq, nk]
//   dP = dO Vᵀ                                             [nq, nk]
//   dS = P ∘ (dP − rowsum(P ∘ dP))                         the softmax backward
//   dQ += scale dS K,  dK += scale dSᵀ Q,  dV += Pᵀ dO
// A task owns its head's dK and dV rows (every query block of the head adds to
// them), so no two threads write the same gradient. The readable per-row loop
// is ldm_ref_attention_backward (ops_ref.c); docs/14 derives both.
static void cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                   const float *q, const float *k, const float *v,
                                   int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                                   float scale, int causal) {
    if (B == 0 || Tq == 0 || Tk == 0 || NH == 0 || HS == 0) return;
    int64_t D = NH * HS, ntask = B * NH;
    int nthr = threads_for(cpu_threads(), 8.0 * B * NH * Tq * Tk * HS);
    if (nthr > ntask) nthr = (int)ntask;
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);   // one thread per sgemm inside the OpenMP tasks
    int failed = 0;
#pragma omp parallel num_threads(nthr) if (nthr > 1)
    {
        float *P = cpu_alloc((size_t)(2 * ATTN_QB * Tk) * sizeof(float)), *dP = P + ATTN_QB * Tk;
        if (!P) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntask; t++) {
            if (!P) continue;
            int64_t b = t / NH, h = t % NH;
            const float *kb = k + b * Tk * D + h * HS, *vb = v + b * Tk * D + h * HS;
            float *dkb = dk ? dk + b * Tk * D + h * HS : NULL;
            float *dvb = dv ? dv + b * Tk * D + h * HS : NULL;
            for (int64_t i0 = 0; i0 < Tq; i0 += ATTN_QB) {
                int64_t nq = Tq - i0 < ATTN_QB ? Tq - i0 : ATTN_QB;
                int64_t nk = causal ? (i0 + nq < Tk ? i0 + nq : Tk) : Tk;
                const float *qb = q + (b * Tq + i0) * D + h * HS;
                const float *gb = dout + (b * Tq + i0) * D + h * HS;
                // P[nq, nk] = softmax(scale Q Kᵀ), dP[nq, nk] = dO Vᵀ
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)HS,
                            scale, qb, (int)D, kb, (int)D, 0.0f, P, (int)nk);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)HS,
                            1.0f, gb, (int)D, vb, (int)D, 0.0f, dP, (int)nk);
                for (int64_t r = 0; r < nq; r++) {
                    float *pr = P + r * nk, *gr = dP + r * nk;
                    int64_t n = causal ? (i0 + r + 1 < nk ? i0 + r + 1 : nk) : nk;
                    softmax_row(pr, pr, n);
                    for (int64_t j = n; j < nk; j++) pr[j] = 0.0f;
                    float pdp = 0.0f;   // rowsum(P ∘ dP)
                    for (int64_t j = 0; j < n; j++) pdp += pr[j] * gr[j];
                    for (int64_t j = 0; j < nk; j++) gr[j] = pr[j] * (gr[j] - pdp);   // dS
                }
                if (dvb) // dV[nk, HS] += Pᵀ dO
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)HS, (int)nq,
                                1.0f, P, (int)nk, gb, (int)D, 1.0f, dvb, (int)D);
                if (dq) // dQ[nq, HS] += scale dS K
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)HS, (int)nk,
                                scale, dP, (int)nk, kb, (int)D, 1.0f, dq + (b * Tq + i0) * D + h * HS,
                                (int)D);
                if (dkb) // dK[nk, HS] += scale dSᵀ Q
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)HS, (int)nq,
                                scale, dP, (int)nk, qb, (int)D, 1.0f, dkb, (int)D);
            }
        }
        free(P);
    }
    openblas_set_num_threads(blas_threads);
    if (failed) abort(); // 2 x 128 x Tk floats per thread: only when out of memory
}

const struct ldm_ops ldm_ops_cpu = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .copy = cpu_memcpy,
    .set_threads = cpu_set_threads,
    .host_memory = 1,
    .linear = cpu_linear,
    .conv2d = cpu_conv2d,
    .linear_half = ldm_cpu_linear_half,   // ldm/backend/cpu_f16.c
    .conv2d_half = ldm_cpu_conv2d_half,
    .group_norm = cpu_group_norm,
    .layer_norm = cpu_layer_norm,
    .softmax = cpu_softmax,
    .attention = cpu_attention,
    .silu = cpu_silu,
    .gelu = cpu_gelu,
    .quick_gelu = cpu_quick_gelu,
    .geglu = cpu_geglu,
    .add = cpu_add,
    .mul = cpu_mul,
    .scale = cpu_scale,
    .add_channel = cpu_add_channel,
    .upsample2x = cpu_upsample2x,
    .concat_channels = cpu_concat_channels,
    .transpose = cpu_transpose,
    .embedding = cpu_embedding,
    // backward (training): the readable `ref` loops (ldm/backend/ops_ref.h)
    // until a faster version is written; linear and conv2d are sgemm-based
    // ("backward" above).
    .linear_backward = cpu_linear_backward,
    .conv2d_backward = cpu_conv2d_backward,
    .group_norm_backward = ldm_ref_group_norm_backward,
    .layer_norm_backward = ldm_ref_layer_norm_backward,
    .softmax_backward = ldm_ref_softmax_backward,
    .attention_backward = cpu_attention_backward,
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
