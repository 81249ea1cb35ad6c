/*
 * tools/bench/bench_kernels.c -- the kernel part of `make bench`: each new
 * `cpu` kernel against the one it replaces, on the SD1 512x512 shapes, in
 * one process (ldm/backend/cpu_kernels.h).
 *
 * For every shape the two variants run interleaved (old, new, old, new, ...)
 * and each keeps its best time, so a load that comes and goes on a shared
 * machine hits both alike; the ratio new/old is the figure to read (< 1:
 * the new kernel is faster), by wall clock and by process CPU time (the
 * second is steadier on a busy machine, where a thread waiting for a core
 * does not count). Each variant's error is measured against a
 * direct double-precision computation on sampled output elements, as max
 * abs and max abs / max |output| ("rel").
 * Threads: as set by bench.c's main (all cores, or LDM_THREADS=n).
 * LDM_BENCH_KERNELS=0 skips it, =2 runs the attention cases only, =3 only the
 * kernels' AVX2 against their AVX-512 micro-kernels, =4 only cpu_sgemm's
 * old and new blocking. Numbers only: nothing is asserted.
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "ldm/backend/cpu_kernels.h"
#include "ldm/backend/ops.h"

void bench_kernels(void);

#define KREPS 5 // interleaved repetitions per variant (best kept)
#define NSAMPLE 256 // sampled output elements for the error

static double cpu_now(void) { // process CPU seconds, all threads
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Best wall and CPU seconds of the two variants, run interleaved.
struct pair_time { double wall[2], cpu[2]; };
static void pair_update(struct pair_time *pt, int which, double w0, double c0) {
    double w = omp_get_wtime() - w0, c = cpu_now() - c0;
    if (w < pt->wall[which]) pt->wall[which] = w;
    if (c < pt->cpu[which]) pt->cpu[which] = c;
}
static void pair_print(const struct pair_time *pt, const char *old, const char *new, double flops) {
    printf("%s %7.1f ms %6.1f GF | %s %7.1f ms %6.1f GF | new/old wall %.2f cpu %.2f", old,
           pt->wall[0] * 1e3, flops / pt->wall[0] / 1e9, new, pt->wall[1] * 1e3,
           flops / pt->wall[1] / 1e9, pt->wall[1] / pt->wall[0], pt->cpu[1] / pt->cpu[0]);
}

static float *kbuf(int64_t n, float s) {
    float *p = ldm_ops_cpu.alloc((size_t)n * sizeof(float));
    if (!p) { fprintf(stderr, "bench: out of memory\n"); exit(1); }
    uint64_t st = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    for (int64_t i = 0; i < n; i++) {
        st ^= st >> 12; st ^= st << 25; st ^= st >> 27;
        p[i] = s * ((float)((st * 2685821657736338717ull) >> 40) / 16777216.0f - 0.5f);
    }
    return p;
}

// Error of got[] against a double-precision value computed by exact(i) on
// NSAMPLE spread-out indices; *rel = max abs / max |exact| over the samples.
typedef double (*exact_fn)(int64_t i, const void *ctx);
static double sampled_error(const float *got, int64_t n, exact_fn exact, const void *ctx, double *rel) {
    double max_abs = 0, scale = 0;
    for (int s = 0; s < NSAMPLE; s++) {
        int64_t i = (int64_t)((s * 0.61803398875 - (int64_t)(s * 0.61803398875)) * n);
        double e = exact(i, ctx);
        if (fabs(e) > scale) scale = fabs(e);
        if (fabs(got[i] - e) > max_abs) max_abs = fabs(got[i] - e);
    }
    *rel = scale > 0 ? max_abs / scale : max_abs;
    return max_abs;
}

// ---- conv2d 3x3 pad 1: im2col + sgemm vs Winograd F(4x4,3x3) ------------------------

struct conv_ctx { const float *x, *w, *b; int64_t B, Cin, H, W, Cout; };

static double conv_exact(int64_t i, const void *vctx) {
    const struct conv_ctx *c = vctx;
    int64_t ox = i % c->W, oy = i / c->W % c->H, co = i / (c->W * c->H) % c->Cout;
    int64_t b = i / (c->W * c->H * c->Cout);
    double acc = c->b[co];
    for (int64_t ci = 0; ci < c->Cin; ci++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                int64_t iy = oy + ky - 1, ix = ox + kx - 1;
                if (iy < 0 || iy >= c->H || ix < 0 || ix >= c->W) continue;
                acc += (double)c->x[((b * c->Cin + ci) * c->H + iy) * c->W + ix] *
                       c->w[((co * c->Cin + ci) * 3 + ky) * 3 + kx];
            }
    return acc;
}

static void conv_case(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int nthr) {
    float *x = kbuf(B * Cin * H * W, 2.0f), *w = kbuf(Cout * Cin * 9, 2.0f / sqrtf(9.0f * Cin));
    float *b = kbuf(Cout, 0.2f);
    float *o_old = kbuf(B * Cout * H * W, 0), *o_new = kbuf(B * Cout * H * W, 0);
    struct pair_time pt = {{1e30, 1e30}, {1e30, 1e30}};
    for (int r = 0; r < KREPS + 1; r++) { // r = 0 warms up (not counted)
        double w0 = omp_get_wtime(), c0 = cpu_now();
        cpu_conv2d_im2col(o_old, x, w, b, B, Cin, H, W, Cout, 3, 3, 1, 1, 1, 1, 1, nthr);
        if (r) pair_update(&pt, 0, w0, c0);
        w0 = omp_get_wtime(), c0 = cpu_now();
        cpu_conv3x3_winograd(o_new, x, w, b, B, Cin, H, W, Cout, 1, nthr);
        if (r) pair_update(&pt, 1, w0, c0);
    }
    struct conv_ctx c = {x, w, b, B, Cin, H, W, Cout};
    double r_old, r_new, n = (double)(B * Cout * H * W);
    double a_old = sampled_error(o_old, (int64_t)n, conv_exact, &c, &r_old);
    double a_new = sampled_error(o_new, (int64_t)n, conv_exact, &c, &r_new);
    double flops = 2.0 * n * Cin * 9;
    printf("conv3x3 B=%lld %4lld->%-4lld @%3lldx%-3lld ", (long long)B, (long long)Cin,
           (long long)Cout, (long long)H, (long long)W);
    pair_print(&pt, "im2col", "winograd", flops);
    printf("%s | err im2col %.1e (rel %.1e) winograd %.1e (rel %.1e)\n",
           cpu_winograd_fits(B, Cin, H, W, Cout, 3, 3, 1, 1, 1, 1, 1) ? " (used)" : " (not used)",
           a_old, r_old, a_new, r_new);
    free(x); free(w); free(b); free(o_old); free(o_new);
}

// ---- attention: two sgemms per query block vs flash (online softmax) ---------------

struct attn_ctx { const float *q, *k, *v; int64_t Tq, Tk, NH, HS; float scale; };

static double attn_exact(int64_t i, const void *vctx) {
    const struct attn_ctx *c = vctx;
    int64_t D = c->NH * c->HS, d = i % c->HS, h = i % D / c->HS, t = i / D % c->Tq, b = i / (D * c->Tq);
    const float *qr = c->q + (b * c->Tq + t) * D + h * c->HS;
    double mx = -1e300, sum = 0, acc = 0;
    double *s = malloc((size_t)c->Tk * sizeof(double));
    for (int64_t j = 0; j < c->Tk; j++) {
        const float *kr = c->k + (b * c->Tk + j) * D + h * c->HS;
        double dot = 0;
        for (int64_t e = 0; e < c->HS; e++) dot += (double)qr[e] * kr[e];
        s[j] = dot * c->scale;
        if (s[j] > mx) mx = s[j];
    }
    for (int64_t j = 0; j < c->Tk; j++) {
        double p = exp(s[j] - mx);
        sum += p;
        acc += p * c->v[(b * c->Tk + j) * D + h * c->HS + d];
    }
    free(s);
    return acc / sum;
}

static void attn_case(int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS, int nthr) {
    int64_t D = NH * HS;
    // q, k of std ~1.2: scores of std ~ HS^0.5 * 1.4 * scale, a peaked softmax
    float *q = kbuf(B * Tq * D, 4.0f), *k = kbuf(B * Tk * D, 4.0f), *v = kbuf(B * Tk * D, 2.0f);
    float *o_old = kbuf(B * Tq * D, 0), *o_new = kbuf(B * Tq * D, 0);
    float scale = 1.0f / sqrtf((float)HS);
    struct pair_time pt = {{1e30, 1e30}, {1e30, 1e30}};
    for (int r = 0; r < KREPS + 1; r++) {
        double w0 = omp_get_wtime(), c0 = cpu_now();
        cpu_attention_sgemm(o_old, q, k, v, B, Tq, Tk, NH, HS, scale, 0, nthr);
        if (r) pair_update(&pt, 0, w0, c0);
        w0 = omp_get_wtime(), c0 = cpu_now();
        cpu_attention_flash(o_new, q, k, v, B, Tq, Tk, NH, HS, scale, 0, nthr);
        if (r) pair_update(&pt, 1, w0, c0);
    }
    struct attn_ctx c = {q, k, v, Tq, Tk, NH, HS, scale};
    double r_old, r_new, n = (double)(B * Tq * D);
    double a_old = sampled_error(o_old, (int64_t)n, attn_exact, &c, &r_old);
    double a_new = sampled_error(o_new, (int64_t)n, attn_exact, &c, &r_new);
    double flops = 4.0 * B * NH * Tq * Tk * HS;
    printf("attention B=%lld NH=%lld HS=%-3lld Tq=%-4lld Tk=%-4lld ", (long long)B, (long long)NH,
           (long long)HS, (long long)Tq, (long long)Tk);
    pair_print(&pt, "2-sgemm", "flash", flops);
    printf(" | err 2-sgemm %.1e (rel %.1e) flash %.1e (rel %.1e)\n", a_old, r_old, a_new, r_new);
    free(q); free(k); free(v); free(o_old); free(o_new);
}

// ---- the same kernel on its AVX2 and its AVX-512 micro-kernels ----------------------

// Flash attention, AVX2 ("old") against AVX-512 ("new"), and the largest
// difference between their outputs relative to the largest output (the
// dot products are the same FMA chains; the softmax sums are grouped by 8
// or by 16 lanes).
static void attn_simd_case(int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS, int nthr) {
    int64_t D = NH * HS;
    float *q = kbuf(B * Tq * D, 4.0f), *k = kbuf(B * Tk * D, 4.0f), *v = kbuf(B * Tk * D, 2.0f);
    float *o_old = kbuf(B * Tq * D, 0), *o_new = kbuf(B * Tq * D, 0);
    float scale = 1.0f / sqrtf((float)HS);
    struct pair_time pt = {{1e30, 1e30}, {1e30, 1e30}};
    for (int r = 0; r < KREPS + 1; r++) {
        double w0 = omp_get_wtime(), c0 = cpu_now();
        cpu_attention_flash_simd(o_old, q, k, v, B, Tq, Tk, NH, HS, scale, 0, nthr, CPU_SIMD_AVX2);
        if (r) pair_update(&pt, 0, w0, c0);
        w0 = omp_get_wtime(), c0 = cpu_now();
        cpu_attention_flash_simd(o_new, q, k, v, B, Tq, Tk, NH, HS, scale, 0, nthr, CPU_SIMD_AVX512);
        if (r) pair_update(&pt, 1, w0, c0);
    }
    int64_t n = B * Tq * D;
    double diff = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        if (fabs(o_new[i] - o_old[i]) > diff) diff = fabs(o_new[i] - o_old[i]);
        if (fabs(o_old[i]) > mx) mx = fabs(o_old[i]);
    }
    printf("flash B=%lld NH=%lld HS=%-3lld Tq=%-4lld Tk=%-4lld ", (long long)B, (long long)NH,
           (long long)HS, (long long)Tq, (long long)Tk);
    pair_print(&pt, "avx2", "avx512", 4.0 * B * NH * Tq * Tk * HS);
    printf(" | max diff %.1e (rel)\n", mx > 0 ? diff / mx : diff);
    free(q); free(k); free(v); free(o_old); free(o_new);
}

// ---- cpu_sgemm's blocking: blocks of >= 64 rows (old) vs >= 128 (new) --------------

// One-thread sgemm per block over the larger of M and N, as cpu_sgemm
// (ops_cpu.c) cuts it: old = ceil(L/64) blocks (at most 16), new = the
// largest power of two <= 16 with blocks of >= 128. A copy of the two rules,
// so both run in this process.
static void sgemm_blocked(int newrule, int nthr, int tb, int64_t M, int64_t N, int64_t K,
                          const float *A, const float *Bm, float *C) {
    int64_t lda = K, ldb = tb ? K : N, ldc = N;
    const int rows = M >= N;
    const int64_t L = rows ? M : N;
    int64_t nb0 = 1;
    if (newrule) while (nb0 < 16 && 2 * nb0 * 128 <= L) nb0 *= 2;
    else nb0 = (L + 63) / 64 < 16 ? (L + 63) / 64 : 16;
    const int64_t bs = rows ? (L + nb0 - 1) / nb0 : ((L + nb0 - 1) / nb0 + 15) / 16 * 16;
    CBLAS_TRANSPOSE tB = tb ? CblasTrans : CblasNoTrans;
#pragma omp parallel for schedule(static) num_threads(nthr)
    for (int64_t l0 = 0; l0 < L; l0 += bs) {
        int64_t n = L - l0 < bs ? L - l0 : bs;
        if (rows)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tB, (int)n, (int)N, (int)K, 1.0f, A + l0 * lda,
                        (int)lda, Bm, (int)ldb, 0.0f, C + l0 * ldc, (int)ldc);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, tB, (int)M, (int)n, (int)K, 1.0f, A, (int)lda,
                        tb ? Bm + l0 * ldb : Bm + l0, (int)ldb, 0.0f, C + l0, (int)ldc);
    }
}

static void blocking_case(int64_t M, int64_t N, int64_t K, int tb, const char *what, int nthr) {
    float *A = kbuf(M * K, 1.0f), *Bm = kbuf(N * K, 1.0f), *C = kbuf(M * N, 0);
    struct pair_time pt = {{1e30, 1e30}, {1e30, 1e30}};
    for (int r = 0; r < KREPS + 1; r++)
        for (int v = 0; v < 2; v++) {
            double w0 = omp_get_wtime(), c0 = cpu_now();
            sgemm_blocked(v, nthr, tb, M, N, K, A, Bm, C);
            if (r) pair_update(&pt, v, w0, c0);
        }
    printf("sgemm %5lld x %5lld x %5lld%s %-26s ", (long long)M, (long long)N, (long long)K,
           tb ? " B^T" : "    ", what);
    pair_print(&pt, ">=64", ">=128", 2.0 * M * N * K);
    printf("\n");
    free(A); free(Bm); free(C);
}

void bench_kernels(void) {
    const char *env = getenv("LDM_BENCH_KERNELS");
    if (env && !atoi(env)) return;
    int nthr = omp_get_max_threads();
    if (env && atoi(env) == 4) { // LDM_BENCH_KERNELS=4: cpu_sgemm's blocking only
        printf("-- cpu_sgemm blocking: blocks of >= 64 vs >= 128 rows/columns, interleaved, best of %d\n",
               KREPS);
        blocking_case(1280, 64, 11520, 0, "(conv 1280 @8x8, 1 image)", nthr);
        blocking_case(1280, 256, 11520, 0, "(conv 1280 @16x16)", nthr);
        blocking_case(640, 1024, 5760, 0, "(conv 640 @32x32)", nthr);
        blocking_case(512, 1280, 1280, 1, "(linear, 256 tokens)", nthr);
        blocking_case(512, 10240, 1280, 1, "(GEGLU proj, 256 tokens)", nthr);
        blocking_case(8192, 1280, 320, 1, "(linear, 4096 tokens)", nthr);
        return;
    }
    if (env && atoi(env) == 3) { // LDM_BENCH_KERNELS=3: AVX2 against AVX-512 only
        if (cpu_simd_best() != CPU_SIMD_AVX512) { printf("-- no AVX-512 on this CPU\n"); return; }
        printf("-- kernels: AVX2 vs AVX-512 micro-kernels, interleaved, best of %d each\n", KREPS);
        const int64_t fa[][3] = {{4096, 4096, 40}, {1024, 1024, 80}, {256, 256, 160}};
        for (size_t i = 0; i < sizeof fa / sizeof *fa; i++)
            attn_simd_case(2, fa[i][0], fa[i][1], 8, fa[i][2], nthr);
        return;
    }
    printf("-- kernels: old vs new, interleaved, best of %d each (ms; GF = GFLOPS counted as the"
           " direct op); err vs double on %d sampled outputs\n", KREPS, NSAMPLE);
    if (!env || atoi(env) != 2) { // LDM_BENCH_KERNELS=2: attention only
    // the SD1 UNet's 3x3 convs at 512x512 (CFG batch 2): ResNet convs per level,
    // the upsamplers' convs (1280 @16x16 and @32x32, 640 @64x64)
    // {B, Cin, Cout, H=W}
    const int64_t conv[][4] = {{2, 320, 320, 64},   {2, 640, 640, 32},  {2, 1280, 1280, 16},
                               {2, 1280, 1280, 8},  {2, 1280, 1280, 32}, {2, 640, 640, 64},
                               {2, 2560, 1280, 16}, {2, 960, 320, 64},  {1, 640, 640, 32},
                               {1, 1280, 1280, 16}};
    for (size_t i = 0; i < sizeof conv / sizeof *conv; i++)
        conv_case(conv[i][0], conv[i][1], conv[i][3], conv[i][3], conv[i][2], nthr);
    }
    // the SD1 UNet's attentions at 512x512, batch 2, 8 heads: self-attention per
    // level (4096, 1024, 256 tokens) and cross-attention over the 77 tokens
    const int64_t at[][4] = {{4096, 4096, 40}, {1024, 1024, 80}, {256, 256, 160},
                             {4096, 77, 40},   {1024, 77, 80},   {256, 77, 160}};
    for (size_t i = 0; i < sizeof at / sizeof *at; i++)
        attn_case(2, at[i][0], at[i][1], 8, at[i][2], nthr);
}
