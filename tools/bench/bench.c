/*
 * tools/bench/bench.c -- `make bench`: how fast the `cpu` backend runs its
 * heavy ops on this machine, against what raw OpenBLAS sgemm achieves here.
 *
 * Prints, in one run:
 *   sgemm GFLOPS at 1024^3 and at the GEMM shapes the ops below reduce to;
 *   the cpu backend's linear, conv2d ([2,320,64,64] -> 320, 3x3, pad 1: the
 *   UNet's first level), 1x1 conv, and attention (4096 tokens, 8 heads x 40,
 *   B = 1 and 2: the UNet's first-level self-attention at 512x512) GFLOPS,
 *   each with its ratio to sgemm 1024^3 and to sgemm of its own GEMM shape.
 * Each figure is the best of a few repetitions (wall clock). A second
 * figure divides by the process CPU time instead, per thread: on a shared
 * machine, where the wall clock depends on everyone else's load, it still
 * says how well each core is used (spin-waiting threads count against it).
 * Then the kernel comparison (bench_kernels.c) and the UNet (bench_unet.c).
 * `build/bench kernels` runs the kernel comparison alone.
 * Numbers only: nothing is asserted. Threads: all cores, or LDM_THREADS=n.
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ldm/backend/ops.h"

void openblas_set_num_threads(int num_threads); // OpenBLAS extension

#define REPS 3

static float *buf(int64_t n) {
    float *p = ldm_ops_cpu.alloc((size_t)n * sizeof(float));
    if (!p) { fprintf(stderr, "bench: out of memory\n"); exit(1); }
    for (int64_t i = 0; i < n; i++) p[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    return p;
}

static ldm_tensor tensor(const int64_t *shape, int ndim) {
    ldm_tensor t = ldm_tensor_new(&ldm_ops_cpu, shape, ndim);
    if (!t.data) { fprintf(stderr, "bench: out of memory\n"); exit(1); }
    for (int64_t i = 0; i < t.numel; i++) t.data[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    return t;
}

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int nthreads;
static double best_cpu; // CPU seconds of the fastest (by CPU time) repetition

#define TIME_BEST(best, stmt)                                   \
    do {                                                        \
        best = 1e30;                                            \
        best_cpu = 1e30;                                        \
        for (int r_ = 0; r_ < REPS + 1; r_++) {                 \
            double t0_ = omp_get_wtime(), c0_ = cpu_seconds();  \
            stmt;                                               \
            double t_ = omp_get_wtime() - t0_;                  \
            double c_ = cpu_seconds() - c0_;                    \
            if (r_ && t_ < best) best = t_;                     \
            if (r_ && c_ < best_cpu) best_cpu = c_;             \
        }                                                       \
    } while (0)

// Best time of REPS runs of sgemm C[M,N] = A[M,K] @ B[K,N] (row-major,
// B transposed when tb), as GFLOPS.
// OpenBLAS runs on its own pool of nthreads here (the cpu backend holds it
// at one thread and splits sgemms over OpenMP; this is the raw library).
static double sgemm_gflops(int64_t M, int64_t N, int64_t K, int tb) {
    float *A = buf(M * K), *B = buf(K * N), *C = buf(M * N);
    double best; // the first run (not counted) warms up the thread pool
    openblas_set_num_threads(nthreads);
    TIME_BEST(best, cblas_sgemm(CblasRowMajor, CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                                (int)M, (int)N, (int)K, 1.0f, A, (int)K, B, tb ? (int)K : (int)N,
                                0.0f, C, (int)N));
    openblas_set_num_threads(1);
    free(A); free(B); free(C);
    return 2.0 * M * N * K / best / 1e9;
}

// Prints an sgemm line: wall GFLOPS and per-thread CPU-time GFLOPS.
static double sgemm_line(const char *what, int64_t M, int64_t N, int64_t K, int tb) {
    double g = sgemm_gflops(M, N, K, tb);
    printf("%-52s %8.1f GFLOPS  (%.1f per thread by CPU time)\n", what, g,
           2.0 * M * N * K / best_cpu / 1e9 / nthreads);
    return g;
}

static double ref_gflops; // sgemm 1024^3

static void report(const char *what, double flops, double secs, double own_sgemm) {
    double g = flops / secs / 1e9;
    printf("%-52s %8.1f GFLOPS  %6.1f ms  %4.0f%% of sgemm 1024^3", what, g, secs * 1e3,
           100 * g / ref_gflops);
    if (own_sgemm > 0) printf("  %4.0f%% of sgemm same shape", 100 * g / own_sgemm);
    printf("  (%.1f per thread by CPU time)\n", flops / best_cpu / 1e9 / nthreads);
}

void bench_kernels(void); // tools/bench/bench_kernels.c: new kernels vs old, same shapes
void bench_unet(void);   // tools/bench/bench_unet.c: full-size SD1 UNet evaluation

int main(int argc, char **argv) {
    const char *env = getenv("LDM_THREADS");
    ldm_ops_cpu.set_threads(env ? atoi(env) : 0);
    nthreads = omp_get_max_threads();
    if (argc > 1 && !strcmp(argv[1], "kernels")) { // `build/bench kernels`: that part alone
        bench_kernels();
        return 0;
    }
    printf("ldm.c bench: cpu backend, %d threads (OpenMP; the raw sgemm lines: OpenBLAS's pool), best of %d runs\n",
           nthreads, REPS);

    ref_gflops = sgemm_line("sgemm 1024x1024x1024", 1024, 1024, 1024, 0);
    double g_conv = sgemm_line("sgemm 320x4096x2880 (conv 3x3 320->320 @64x64)", 320, 4096, 2880, 0);
    double g_lin = sgemm_line("sgemm 8192x1280x320, B^T (linear 320->1280)", 8192, 1280, 320, 1);
    double g_1x1 = sgemm_line("sgemm 320x4096x320 (conv 1x1 320->320 @64x64)", 320, 4096, 320, 0);
    double best;

    { // linear: x [2,4096,320] @ w[1280,320]^T + b  (a transformer feed-forward)
        ldm_tensor x = tensor(LDM_SHAPE(2, 4096, 320)), w = tensor(LDM_SHAPE(1280, 320));
        ldm_tensor b = tensor(LDM_SHAPE(1280)), out = tensor(LDM_SHAPE(2, 4096, 1280));
        TIME_BEST(best, ldm_linear(&out, &x, &w, &b));
        report("linear [2,4096,320] -> 1280 (+bias)", 2.0 * 8192 * 1280 * 320, best, g_lin);
        ldm_tensor_free(&x); ldm_tensor_free(&w); ldm_tensor_free(&b); ldm_tensor_free(&out);
    }
    { // conv2d 3x3 pad 1: [2,320,64,64] -> [2,320,64,64]
        ldm_tensor x = tensor(LDM_SHAPE(2, 320, 64, 64)), w = tensor(LDM_SHAPE(320, 320, 3, 3));
        ldm_tensor b = tensor(LDM_SHAPE(320)), out = tensor(LDM_SHAPE(2, 320, 64, 64));
        TIME_BEST(best, ldm_conv2d(&out, &x, &w, &b, 1, 1, 1, 1, 1));
        report("conv2d [2,320,64,64] -> 320, 3x3 pad 1", 2.0 * 2 * 320 * 4096 * 2880, best, g_conv);
        ldm_tensor w1 = tensor(LDM_SHAPE(320, 320, 1, 1));
        TIME_BEST(best, ldm_conv2d(&out, &x, &w1, &b, 1, 0, 0, 0, 0));
        report("conv2d [2,320,64,64] -> 320, 1x1", 2.0 * 2 * 320 * 4096 * 320, best, g_1x1);
        ldm_tensor_free(&x); ldm_tensor_free(&w); ldm_tensor_free(&w1);
        ldm_tensor_free(&b); ldm_tensor_free(&out);
    }
    for (int64_t B = 1; B <= 2; B++) { // self-attention, 4096 tokens, 8 heads x 40
        ldm_tensor q = tensor(LDM_SHAPE(B, 4096, 320)), k = tensor(LDM_SHAPE(B, 4096, 320));
        ldm_tensor v = tensor(LDM_SHAPE(B, 4096, 320)), out = tensor(LDM_SHAPE(B, 4096, 320));
        TIME_BEST(best, ldm_attention(&out, &q, &k, &v, 8, 0.15811388f, 0));
        char what[96];
        snprintf(what, sizeof what, "attention B=%lld T=4096 NH=8 HS=40", (long long)B);
        report(what, 4.0 * B * 8 * 4096.0 * 4096 * 40, best, 0);
        ldm_tensor_free(&q); ldm_tensor_free(&k); ldm_tensor_free(&v); ldm_tensor_free(&out);
    }
    printf("(attention FLOPs = 4*B*NH*T*T*HS: the two GEMMs; the softmax's exp is not counted)\n");
    bench_kernels();
    bench_unet();
    return 0;
}
