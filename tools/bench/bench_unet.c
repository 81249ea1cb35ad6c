/*
 * tools/bench/bench_unet.c -- the UNet part of `make bench`: one full-size
 * SD1 UNet evaluation (859.5M parameters, deterministic random weights, no
 * file needed) on the `cpu` backend.
 *
 * Prints:
 *   seconds per evaluation at 512x512 (latent 64x64), batch 2 (the CFG batch
 *   [uncond, cond]); the GFLOP of that evaluation as counted by ldm/unet.c
 *   (GEMM-like ops: 2*M*K*N, convs as GEMMs, attention 4*B*NH*Tq*Tk*HS), the
 *   achieved GFLOPS and its fraction of sgemm 1024^3 measured in this run;
 *   peak resident memory (getrusage) and the UNet's activation peak after the
 *   512x512 and after a 512x1024 (latent 64x128) evaluation.
 * Threads: 2, or LDM_THREADS=n. LDM_BENCH_UNET=0 skips it (each evaluation
 * takes tens of seconds on two cores). Numbers only: nothing is asserted.
 * Called from bench.c's main as bench_unet().
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
#include "ldm/unet.h"

void bench_unet(void);

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;   // Linux: kilobytes
}

void openblas_set_num_threads(int num_threads); // OpenBLAS extension

// Raw OpenBLAS on its own pool of `threads` (the cpu backend holds it at one
// thread and splits sgemms over OpenMP itself).
static double sgemm_1024(int threads) {
    int n = 1024;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
          *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) { free(a); free(b); free(c); return 0; }
    for (int i = 0; i < n * n; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
    double best = 1e30;
    openblas_set_num_threads(threads);
    for (int r = 0; r < 4; r++) {
        double t0 = omp_get_wtime();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double t = omp_get_wtime() - t0;
        if (r && t < best) best = t;
    }
    openblas_set_num_threads(1);
    free(a); free(b); free(c);
    return 2.0 * n * n * n / best / 1e9;
}

// One evaluation at latent h x w, batch B; prints one line. Returns seconds.
static double eval_once(ldm_unet *u, int B, int h, int w, double sgemm) {
    const struct ldm_ops *ops = u->ops;
    ldm_tensor x = ldm_tensor_new(ops, LDM_SHAPE(B, 4, h, w));
    ldm_tensor ctx = ldm_tensor_new(ops, LDM_SHAPE(B, 77, u->cfg.cross_attention_dim));
    ldm_tensor out = ldm_tensor_new(ops, LDM_SHAPE(B, 4, h, w));
    float t[16];
    if (!x.data || !ctx.data || !out.data || B > 16) {
        printf("unet bench: out of memory at %dx%d\n", h, w);
        ldm_tensor_free(&x); ldm_tensor_free(&ctx); ldm_tensor_free(&out);
        return 0;
    }
    float *hx = malloc((size_t)(x.numel > ctx.numel ? x.numel : ctx.numel) * sizeof(float));
    for (int64_t i = 0; i < x.numel; i++) hx[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    ldm_tensor_from_host(&x, hx);
    for (int64_t i = 0; i < ctx.numel; i++) hx[i] = (float)((i * 40503u) % 2001) / 1000.0f - 1.0f;
    ldm_tensor_from_host(&ctx, hx);
    free(hx);
    for (int b = 0; b < B; b++) t[b] = 981.0f;
    double t0 = omp_get_wtime();
    int rc = ldm_unet_forward(&out, u, &x, t, &ctx);
    double secs = omp_get_wtime() - t0;
    if (rc) printf("unet bench: %s\n", ldm_last_error());
    else
        printf("unet SD1 %4dx%-4d (latent %dx%d) batch %d: %7.2f s/eval  %7.1f GFLOP  "
               "%6.1f GFLOPS (%3.0f%% of sgemm)  activations peak %5.0f MB  peak RSS %6.0f MB\n",
               8 * h, 8 * w, h, w, B, secs, u->flops / 1e9, u->flops / secs / 1e9,
               sgemm > 0 ? 100 * u->flops / secs / 1e9 / sgemm : 0, u->arena.peak / 1e6,
               peak_rss_mb());
    fflush(stdout);
    ldm_tensor_free(&x); ldm_tensor_free(&ctx); ldm_tensor_free(&out);
    return rc ? 0 : secs;
}

void bench_unet(void) {
    const char *skip = getenv("LDM_BENCH_UNET");
    if (skip && !strcmp(skip, "0")) { printf("unet bench: skipped (LDM_BENCH_UNET=0)\n"); return; }
    const char *env = getenv("LDM_THREADS");
    int threads = env && atoi(env) > 0 ? atoi(env) : 2;
    ldm_ops_cpu.set_threads(threads);
    double sgemm = sgemm_1024(threads);
    printf("unet bench: cpu backend, %d threads; sgemm 1024^3 %.1f GFLOPS\n", threads, sgemm);
    ldm_unet_config cfg;
    ldm_unet u;
    double t0 = omp_get_wtime();
    if (ldm_unet_config_preset(&cfg, "sd1") || ldm_unet_init_random(&u, &cfg, &ldm_ops_cpu)) {
        printf("unet bench: %s\n", ldm_last_error());
        return;
    }
    printf("unet bench: SD1 UNet, %.1fM random parameters (%.0f MB fp32) in %.1f s, "
           "peak RSS %.0f MB\n", u.n_params / 1e6, u.n_params * 4.0 / 1e6,
           omp_get_wtime() - t0, peak_rss_mb());
    eval_once(&u, 2, 64, 64, sgemm);
    eval_once(&u, 2, 64, 128, sgemm);
    ldm_unet_free(&u);
}
