/*
 * ldm/backend/cpu_f16.c -- linear and conv2d with fp16 / bf16 weights on the
 * `cpu` backend: "widen inside the packing", as llm.c and ggml do.
 *
 * The weight stays 16-bit in memory (often straight in the mmap'ed
 * checkpoint). Per call, a panel of whole weight rows -- rows [n0, n0+nb) of
 * w[N,K] for linear, output channels [c0, c0+nb) of w[Cout,Cin,KH,KW] for
 * conv2d -- is widened to fp32 into a small per-thread scratch (at most
 * PANEL_FLOATS floats, 16 MiB), and the fp32 op of the `cpu` table
 * (ldm_ops_cpu.linear / .conv2d: sgemm, im2col) runs on that panel. Widening
 * is exact, so the only difference from an fp32-resident weight is how the
 * GEMM is split: a weight that fits one panel (every SD weight but the
 * largest UNet ones) gives bit-identical results; a split one changes only
 * the GEMM's blocking over N, never the order of a dot product's terms
 * more than OpenBLAS's kernel choice does.
 *
 * Widening fp16 uses F16C (_mm256_cvtph_ps, 8 halves per instruction) when the
 * CPU has it, else the exact scalar ldm_f16_to_f32; bf16 is a 16-bit shift.
 *
 * Cost: a 3x3 conv split into p panels redoes its im2col p times; panels are
 * only split for weights over 16 MiB of fp32 (the 1280-channel convs, which
 * run at the lowest resolutions, where im2col is cheap).
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/ops.h"
#include "ldm/backend/cpu_f16.h"
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1
#endif

// The largest panel widened at once (floats): 8M = 32 MiB.
#define PANEL_FLOATS ((int64_t)8 << 20)

// ---- widening ---------------------------------------------------------------

#ifdef HAVE_X86
// F16C (CPUID leaf 1, ECX bit 29) with AVX usable: ECX bit 28 (AVX) and bit
// 27 (OSXSAVE: the OS saves the YMM registers). Asked through cpuid because
// not every compiler knows __builtin_cpu_supports("f16c") (clang 14 does not).
static int cpu_has_f16c(void) {
    static int known = -1;
    if (known < 0) {
        unsigned a, b, c, d;
        known = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1) && (c >> 28 & 1) && (c >> 27 & 1);
    }
    return known;
}

__attribute__((target("avx,f16c")))
static void widen_f16c(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = ldm_f16_to_f32(src[i]);
}
#endif

// dst[n] = src[n] widened (exact). One thread: a 16 MiB panel takes about
// 3 ms, less than waking an OpenMP team costs on a busy 2-core machine.
static void widen(float *dst, const uint16_t *src, ldm_dtype wt, int64_t n) {
    if (wt == LDM_DTYPE_BF16) {
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)src[i] << 16;
            memcpy(&dst[i], &bits, 4);
        }
        return;
    }
#ifdef HAVE_X86
    if (cpu_has_f16c()) { widen_f16c(dst, src, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) dst[i] = ldm_f16_to_f32(src[i]);
}

// The calling thread's scratch of at least n floats (grow-only, 64-byte
// aligned; kept for the next call). Bounded by PANEL_FLOATS, so failing to
// get it is as fatal as cpu_conv2d's bounded im2col buffer.
static _Thread_local float *scratch;
static _Thread_local int64_t scratch_n;
static float *scratch_get(int64_t n) {
    if (n <= scratch_n) return scratch;
    free(scratch);
    scratch = NULL;
    scratch_n = 0;
    void *p = NULL;
    if (posix_memalign(&p, 64, (size_t)(n ? n : 1) * sizeof(float)) != 0) abort();
    scratch = p;
    scratch_n = n;
    return scratch;
}

// Rows of `row_len` floats per panel: as many as fit PANEL_FLOATS, at least 1.
static int64_t panel_rows(int64_t row_len, int64_t rows) {
    int64_t r = row_len > 0 ? PANEL_FLOATS / row_len : rows;
    if (r < 1) r = 1;
    return r < rows ? r : rows;
}

// ---- linear -----------------------------------------------------------------

// out[M,N] = x[M,K] @ w[N,K]^T + b[N]; per panel of nb weight rows:
// out[:, n0:n0+nb] (row stride N) = x @ widen(w[n0:n0+nb, :])^T.
void ldm_cpu_linear_half(float *out, const float *x, const uint16_t *w, ldm_dtype wt,
                         const float *b, int64_t M, int64_t K, int64_t N) {
    if (M == 0 || N == 0) return;
    int64_t nb = panel_rows(K, N);
    float *wf = scratch_get(nb * K);
    if (nb == N) {   // one panel: exactly the fp32 op on the widened weight
        widen(wf, w, wt, N * K);
        ldm_ops_cpu.linear(out, x, wf, b, M, K, N);
        return;
    }
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
        int64_t n = N - n0 < nb ? N - n0 : nb;
        widen(wf, w + n0 * K, wt, n * K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)n, (int)K, 1.0f, x,
                    (int)K, wf, (int)K, 0.0f, out + n0, (int)N);
    }
    if (b) {
#pragma omp parallel for if (M * N > 32768)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) out[m * N + n] += b[n];
    }
}

// ---- conv2d -----------------------------------------------------------------

// Per panel of nb output channels: the fp32 conv2d of the cpu table (im2col +
// sgemm, or whatever it does) with Cout = nb into a [B,nb,Ho,Wo] scratch,
// then copied to out[:, c0:c0+nb] (one call per panel: im2col runs once per
// panel and image).
void ldm_cpu_conv2d_half(float *out, const float *x, const uint16_t *w, ldm_dtype wt,
                         const float *bias, int64_t B, int64_t Cin, int64_t H, int64_t W,
                         int64_t Cout, int64_t KH, int64_t KW, int64_t s,
                         int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r) {
    if (B == 0 || Cout == 0) return;
    int64_t R = Cin * KH * KW;   // one output channel's weights
    int64_t Ho = (H + pad_t + pad_b - KH) / s + 1, Wo = (W + pad_l + pad_r - KW) / s + 1;
    int64_t P = Ho * Wo;
    int64_t nb = panel_rows(R, Cout);
    if (nb == Cout) {   // one panel: exactly the fp32 op on the widened weight
        float *wf = scratch_get(Cout * R);
        widen(wf, w, wt, Cout * R);
        ldm_ops_cpu.conv2d(out, x, wf, bias, B, Cin, H, W, Cout, KH, KW, s, pad_t, pad_b,
                           pad_l, pad_r);
        return;
    }
    float *wf = scratch_get(nb * R + B * nb * P), *ob = wf + nb * R;   // panel, its output
    for (int64_t c0 = 0; c0 < Cout; c0 += nb) {
        int64_t n = Cout - c0 < nb ? Cout - c0 : nb;
        widen(wf, w + c0 * R, wt, n * R);
        ldm_ops_cpu.conv2d(ob, x, wf, bias ? bias + c0 : NULL, B, Cin, H, W, n, KH, KW, s,
                           pad_t, pad_b, pad_l, pad_r);
        for (int64_t b = 0; b < B; b++)
            memcpy(out + (b * Cout + c0) * P, ob + b * n * P, (size_t)(n * P) * sizeof(float));
    }
}
