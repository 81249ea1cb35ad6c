/*
 * tools/bench/bench_kernels.c -- the kernel part of `make bench`: each new
 * `cpu` kernel against the one it replaces, on the SD1 512x512 shapes, in
 * one process (ldm/backend/cpu_kernels.h).
 *
 * For every shape the two variants run interleaved (old, new, old, new, ...)
 * and each keeps its best time, so a load that comes and goes on a shared
 * machine hits both alike; the ratio new/old is the figure to read (< 1:
 * the new kernel is faster). Each variant's error is measured against a
 * direct double-precision computation on sampled output elements, as max
 * abs and max abs / max |output| ("rel").
 * Threads: as set by bench.c's main (all cores, or LDM_THREADS=n).
 * LDM_BENCH_KERNELS=0 skips it. Numbers only: nothing is asserted.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include "ldm/backend/cpu_kernels.h"
#include "ldm/backend/ops.h"

void bench_kernels(void);

#define KREPS 5 // interleaved repetitions per variant (best kept)
#define NSAMPLE 256 // sampled output elements for the error

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
    double t_old = 1e30, t_new = 1e30;

    for (int r = 0; r < KREPS + 1; r++) { // r = 0 warms up (not counted)
        double t0 = omp_get_wtime();
        cpu_conv2d_im2col(o_old, x, w, b, B, Cin, H, W, Cout, 3, 3, 1, 1, 1, 1, 1, nthr);
        double t1 = omp_get_wtime();
        cpu_conv3x3_winograd(o_new, x, w, b, B, Cin, H, W, Cout, 1, nthr);
        double t2 = omp_get_wtime();
        if (r && t1 - t0 < t_old) t_old = t1 - t0;
        if (r && t2 - t1 < t_new) t_new = t2 - t1;
    }
    struct conv_ctx c = {x, w, b, B, Cin, H, W, Cout};
    double r_old, r_new, n = (double)(B * Cout * H * W);
    double a_old = sampled_error(o_old, (int64_t)n, conv_exact, &c, &r_old);
    double a_new = sampled_error(o_new, (int64_t)n, conv_exact, &c, &r_new);
    double flops = 2.0 * n * Cin * 9;
    printf("conv3x3 B=%lld %4lld->%-4lld @%3lldx%-3lld im2col %7.1f ms %6.1f GF | winograd %7.1f ms"
           " %6.1f GF | new/old %.2f%s | err im2col %.1e (rel %.1e) winograd %.1e (rel %.1e)\n",
           (long long)B, (long long)Cin, (long long)Cout, (long long)H, (long long)W, t_old * 1e3,
           flops / t_old / 1e9, t_new * 1e3, flops / t_new / 1e9, t_new / t_old,
           cpu_winograd_fits(B, Cin, H, W, Cout, 3, 3, 1, 1, 1, 1, 1) ? " (used)" : " (not used)",
           a_old, r_old, a_new, r_new);
    free(x); free(w); free(b); free(o_old); free(o_new);
}

void bench_kernels(void) {
    const char *env = getenv("LDM_BENCH_KERNELS");
    if (env && !atoi(env)) return;
    int nthr = omp_get_max_threads();
    printf("-- kernels: old vs new, interleaved, best of %d each (ms; GF = GFLOPS counted as the"
           " direct op); err vs double on %d sampled outputs\n", KREPS, NSAMPLE);
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
