/*
 * ldm/backend/ops_cuda_emu.c -- backend "cuda-emu": the `cuda` backend run on the CPU.
 *
 * It executes exactly what ldm/backend/ops_cuda.cu executes on a GPU -- the same
 * kernel bodies (ldm/backend/cuda_kernels.h) and the same host code (ldm/backend/cuda_host.h:
 * GEMM arguments, chunking, bias passes) -- with three substitutions:
 *   - a kernel launch <<<blocks, LDM_CU_THREADS>>> becomes two loops, over
 *     every block and every thread of the block;
 *   - a kernel with barriers runs phase by phase: one phase for all threads
 *     of the block, then the next (what __syncthreads() guarantees);
 *   - cublasSgemmStridedBatched becomes a plain column-major loop that first
 *     checks the arguments the way cuBLAS does (leading dimensions, int range).
 * Memory is host memory (malloc), so it runs anywhere, under ASan too (an
 * out-of-bounds index in a kernel body is then reported with its line). In
 * strict mode it is fenced off from the host outside the backend's ops, as
 * device memory is (see below).
 *
 * Slow (plain loops, naive GEMM): a test backend, not for images. Shared
 * memory starts filled with NaN at each block (a GPU's is uninitialised), and
 * the launch order can be reversed (ldm_cuda_emu_set_reverse) to expose
 * threads that depend on each other.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <math.h>
#include <sys/mman.h>
#include <unistd.h>
#include "ldm/backend/ops.h"
#include "ldm/backend/ops_cuda.h"
#include "ldm/backend/cuda_kernels.h"

#define NT LDM_CU_THREADS

// ---- memory: host memory, optionally fenced off from the host -----------------
//
// On a GPU, model code that reads or writes a tensor's data pointer directly
// (instead of through the ops or upload/download) crashes, because the
// pointer is device memory. Plain host memory would hide that bug, so in
// strict mode (ldm_cuda_emu_set_strict, or LDM_CUDA_EMU_STRICT=1) every
// allocation comes from one arena that is PROT_NONE except while an op of
// this backend runs: a host access from outside the backend is a SIGSEGV at
// the faulting line. (Allocations are page-rounded and never reused: strict
// mode is for tests.)

static int emu_strict = -1;          // -1: not read from the environment yet
static unsigned char *arena;         // reserved, PROT_NONE outside ops
static size_t arena_size = (size_t)16 << 30, arena_used;   // 16 GiB of address space
static size_t page_size;

void ldm_cuda_emu_set_strict(int strict) {
    emu_strict = strict != 0;
}
static int strict_on(void) {
    if (emu_strict < 0) {
        const char *e = getenv("LDM_CUDA_EMU_STRICT");
        emu_strict = e && *e == '1';
    }
    return emu_strict;
}
static int in_arena(const void *p) {
    return arena && (const unsigned char *)p >= arena &&
           (const unsigned char *)p < arena + arena_size;
}
// An op begins: its memory becomes accessible; it ends: fenced again.
static void emu_enter(void) {
    if (arena && arena_used && mprotect(arena, arena_used, PROT_READ | PROT_WRITE)) abort();
}
static void emu_leave(void) {
    if (arena && arena_used && mprotect(arena, arena_used, PROT_NONE)) abort();
}

static void *emu_alloc(size_t nbytes) {
    if (!strict_on()) return malloc(nbytes ? nbytes : 1);
    if (!arena) {
        page_size = (size_t)sysconf(_SC_PAGESIZE);
        void *a = mmap(NULL, arena_size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (a == MAP_FAILED) return NULL;
        arena = (unsigned char *)a;
    }
    size_t n = ((nbytes ? nbytes : 1) + page_size - 1) / page_size * page_size;
    if (n > arena_size - arena_used) return NULL;
    void *p = arena + arena_used;
    arena_used += n;
    return p;
}
static void emu_free(void *p) {
    // Arena blocks are neither reused nor returned (strict mode is for tests).
    if (!in_arena(p)) free(p);
}
static void emu_upload(void *dst, const void *src, size_t n) {
    emu_enter();
    if (n) memcpy(dst, src, n);
    emu_leave();
}
static void emu_download(void *dst, const void *src, size_t n) {
    emu_enter();
    if (n) memcpy(dst, src, n);
    emu_leave();
}
static void emu_copy(void *dst, const void *src, size_t n) {
    emu_enter();
    if (n) memmove(dst, src, n);
    emu_leave();
}

// ---- launch order ------------------------------------------------------------------

static int emu_reverse;
void ldm_cuda_emu_set_reverse(int reverse) { emu_reverse = reverse != 0; }
// The i-th block or thread to run, of n.
static int64_t emu_at(int64_t i, int64_t n) { return emu_reverse ? n - 1 - i : i; }

// ---- workspace -----------------------------------------------------------------------

static float *emu_ws;
static int64_t emu_ws_cap;                          // floats allocated
static int64_t emu_ws_limit = (int64_t)64 << 20;    // floats preferred (256 MiB)

void ldm_cuda_emu_set_workspace_limit(int64_t nfloats) { emu_ws_limit = nfloats > 0 ? nfloats : 1; }
static int64_t cu_workspace_limit(void) { return emu_ws_limit; }
static float *cu_workspace(int64_t nfloats) {
    if (nfloats > emu_ws_cap) {
        free(emu_ws);
        emu_ws = malloc((size_t)nfloats * sizeof(float));
        if (!emu_ws) {
            fprintf(stderr, "cuda-emu: out of memory for a %lld-float workspace\n",
                    (long long)nfloats);
            abort();
        }
        emu_ws_cap = nfloats;
    }
    return emu_ws;
}
// Inside an op (memory already accessible).
static void cu_copy_in(void *dst, const void *src_host, size_t n) { if (n) memcpy(dst, src_host, n); }
static void cu_copy(void *dst, const void *src, size_t n) { if (n) memmove(dst, src, n); }

// ---- cuBLAS stand-in -------------------------------------------------------------------

// cuBLAS rejects (CUBLAS_STATUS_INVALID_VALUE) what this rejects; the real
// backend treats that as fatal, so the emulation aborts on it too.
static void emu_gemm_check(int ok, const char *what, const ldm_gemm *g) {
    if (ok) return;
    fprintf(stderr, "cuda-emu: cublasSgemmStridedBatched would reject %s (m %lld n %lld k %lld "
            "lda %lld ldb %lld ldc %lld transa %d transb %d)\n", what, (long long)g->m,
            (long long)g->n, (long long)g->k, (long long)g->lda, (long long)g->ldb,
            (long long)g->ldc, g->transa, g->transb);
    abort();
}

static int64_t emu_max1(int64_t a) { return a > 1 ? a : 1; }

// C = alpha op(A) op(B) + beta C, column-major, for each of g->batch products.
static void cu_gemm(const ldm_gemm *g) {
    emu_gemm_check(g->m >= 0 && g->n >= 0 && g->k >= 0 && g->batch >= 1, "negative sizes", g);
    emu_gemm_check(g->m <= INT_MAX && g->n <= INT_MAX && g->k <= INT_MAX && g->lda <= INT_MAX &&
                   g->ldb <= INT_MAX && g->ldc <= INT_MAX && g->batch <= INT_MAX,
                   "sizes beyond int", g);
    emu_gemm_check(g->lda >= emu_max1(g->transa ? g->k : g->m), "lda", g);
    emu_gemm_check(g->ldb >= emu_max1(g->transb ? g->n : g->k), "ldb", g);
    emu_gemm_check(g->ldc >= emu_max1(g->m), "ldc", g);
    for (int64_t p = 0; p < g->batch; p++) {
        const float *A = g->A + p * g->strideA, *B = g->B + p * g->strideB;
        float *C = g->C + p * g->strideC;
        #pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < g->n; j++) {
            for (int64_t i = 0; i < g->m; i++) {
                double acc = 0.0;
                for (int64_t l = 0; l < g->k; l++) {
                    float a = g->transa ? A[l + i * g->lda] : A[i + l * g->lda];
                    float b = g->transb ? B[j + l * g->ldb] : B[l + j * g->ldb];
                    acc += (double)a * b;
                }
                float *c = &C[i + j * g->ldc];
                *c = (float)(g->alpha * acc + (g->beta != 0.0f ? g->beta * *c : 0.0f));
            }
        }
    }
}

// ---- kernel launches: every block, every thread ---------------------------------

// A 1-D elementwise launch <<<ldm_cu_blocks(n), NT>>> of kernel body K.
// (Written out per kernel below so each reads like its <<<>>> twin in
// ops_cuda.cu; nb = number of blocks.)
static void launch_silu(float *out, const float *x, int64_t n) {
    int64_t nb = ldm_cu_blocks(n);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++) ldm_k_silu(emu_at(b, nb), emu_at(t, NT), NT, out, x, n);
}
static void launch_gelu(float *out, const float *x, int64_t n) {
    int64_t nb = ldm_cu_blocks(n);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++) ldm_k_gelu(emu_at(b, nb), emu_at(t, NT), NT, out, x, n);
}
static void launch_quick_gelu(float *out, const float *x, int64_t n) {
    int64_t nb = ldm_cu_blocks(n);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++)
            ldm_k_quick_gelu(emu_at(b, nb), emu_at(t, NT), NT, out, x, n);
}
static void launch_geglu(float *out, const float *x, int64_t N, int64_t F) {
    int64_t nb = ldm_cu_blocks(N * F);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++)
            ldm_k_geglu(emu_at(b, nb), emu_at(t, NT), NT, out, x, N, F);
}
static void launch_add(float *out, const float *a, const float *c, int64_t n) {
    int64_t nb = ldm_cu_blocks(n);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++) ldm_k_add(emu_at(b, nb), emu_at(t, NT), NT, out, a, c, n);
}
static void launch_mul(float *out, const float *a, const float *c, int64_t n) {
    int64_t nb = ldm_cu_blocks(n);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++) ldm_k_mul(emu_at(b, nb), emu_at(t, NT), NT, out, a, c, n);
}
static void launch_scale(float *out, const float *a, float s, int64_t n) {
    int64_t nb = ldm_cu_blocks(n);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++)
            ldm_k_scale(emu_at(b, nb), emu_at(t, NT), NT, out, a, s, n);
}
static void launch_add_channel(float *out, const float *x, const float *y, int64_t B, int64_t C,
                               int64_t S) {
    int64_t nb = ldm_cu_blocks(B * C * S);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++)
            ldm_k_add_channel(emu_at(b, nb), emu_at(t, NT), NT, out, x, y, B, C, S);
}
static void launch_add_bias(float *out, const float *bias, int64_t n, int64_t C, int64_t inner) {
    int64_t nb = ldm_cu_blocks(n);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++)
            ldm_k_add_bias(emu_at(b, nb), emu_at(t, NT), NT, out, bias, n, C, inner);
}
static void launch_upsample2x(float *out, const float *x, int64_t B, int64_t C, int64_t H,
                              int64_t W) {
    int64_t nb = ldm_cu_blocks(B * C * 4 * H * W);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++)
            ldm_k_upsample2x(emu_at(b, nb), emu_at(t, NT), NT, out, x, B, C, H, W);
}
static void launch_concat_channels(float *out, const float *a, const float *c, int64_t B,
                                   int64_t Ca, int64_t Cb, int64_t S) {
    int64_t nb = ldm_cu_blocks(B * (Ca + Cb) * S);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++)
            ldm_k_concat_channels(emu_at(b, nb), emu_at(t, NT), NT, out, a, c, B, Ca, Cb, S);
}
static void launch_embedding(float *out, const float *table, const int32_t *ids, int64_t n,
                             int64_t D) {
    int64_t nb = ldm_cu_blocks(n * D);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++)
            ldm_k_embedding(emu_at(b, nb), emu_at(t, NT), NT, out, table, ids, n, D);
}
static void launch_im2col(float *col, const float *x, int64_t Cin, int64_t H, int64_t W,
                          int64_t KH, int64_t KW, int64_t stride, int64_t pad_t, int64_t pad_l,
                          int64_t Wo, int64_t p0, int64_t np) {
    int64_t nb = ldm_cu_blocks(Cin * KH * KW * np);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < NT; t++)
            ldm_k_im2col(emu_at(b, nb), emu_at(t, NT), NT, col, x, Cin, H, W, KH, KW, stride,
                         pad_t, pad_l, Wo, p0, np);
}

// ---- kernels with barriers: phase by phase ------------------------------------------

// Shared memory as a fresh block finds it: garbage. NaN makes a read of a
// slot nobody wrote visible in the result.
static void emu_smem_fresh(ldm_k_smem *sm) {
    for (int i = 0; i < NT; i++) sm->red[i] = NAN;
    sm->stat[0] = sm->stat[1] = NAN;
}
// The tree reduction: log2(NT) phases, a barrier after each.
static void emu_reduce_sum(ldm_k_smem *sm) {
    for (int64_t s = NT / 2; s > 0; s /= 2)
        for (int64_t t = 0; t < NT; t++) ldm_k_reduce_sum_step(emu_at(t, NT), s, sm);
}
static void emu_reduce_max(ldm_k_smem *sm) {
    for (int64_t s = NT / 2; s > 0; s /= 2)
        for (int64_t t = 0; t < NT; t++) ldm_k_reduce_max_step(emu_at(t, NT), s, sm);
}

// One block per row r of x[N,D] (k_layer_norm in ops_cuda.cu).
static void launch_layer_norm(float *out, const float *x, const float *gamma, const float *beta,
                              int64_t N, int64_t D, float eps) {
    ldm_k_smem sm;
    for (int64_t b = 0; b < N; b++) {
        int64_t r = emu_at(b, N);
        emu_smem_fresh(&sm);
        for (int64_t t = 0; t < NT; t++) ldm_k_moments_sum(emu_at(t, NT), NT, &sm, x + r * D, D);
        emu_reduce_sum(&sm);
        for (int64_t t = 0; t < NT; t++) ldm_k_moments_mean(emu_at(t, NT), &sm, D);
        for (int64_t t = 0; t < NT; t++) ldm_k_moments_var(emu_at(t, NT), NT, &sm, x + r * D, D);
        emu_reduce_sum(&sm);
        for (int64_t t = 0; t < NT; t++) ldm_k_moments_rstd(emu_at(t, NT), &sm, D, eps);
        for (int64_t t = 0; t < NT; t++)
            ldm_k_layer_norm_apply(r, emu_at(t, NT), NT, &sm, out, x, gamma, beta, D);
    }
}

// One block per (image, group) of x[B,C,S] (k_group_norm in ops_cuda.cu).
static void launch_group_norm(float *out, const float *x, const float *gamma, const float *beta,
                              int64_t B, int64_t C, int64_t S, int64_t G, float eps) {
    int64_t n = (C / G) * S;
    ldm_k_smem sm;
    for (int64_t b = 0; b < B * G; b++) {
        int64_t g = emu_at(b, B * G);
        emu_smem_fresh(&sm);
        for (int64_t t = 0; t < NT; t++) ldm_k_moments_sum(emu_at(t, NT), NT, &sm, x + g * n, n);
        emu_reduce_sum(&sm);
        for (int64_t t = 0; t < NT; t++) ldm_k_moments_mean(emu_at(t, NT), &sm, n);
        for (int64_t t = 0; t < NT; t++) ldm_k_moments_var(emu_at(t, NT), NT, &sm, x + g * n, n);
        emu_reduce_sum(&sm);
        for (int64_t t = 0; t < NT; t++) ldm_k_moments_rstd(emu_at(t, NT), &sm, n, eps);
        for (int64_t t = 0; t < NT; t++)
            ldm_k_group_norm_apply(g, emu_at(t, NT), NT, &sm, out, x, gamma, beta, C, S, G);
    }
}

// One block per row of x[N,D] (k_softmax_rows in ops_cuda.cu).
static void launch_softmax_rows(float *out, const float *x, int64_t N, int64_t D,
                                int64_t causal_rows, int64_t q0) {
    ldm_k_smem sm;
    for (int64_t b = 0; b < N; b++) {
        int64_t r = emu_at(b, N);
        emu_smem_fresh(&sm);
        for (int64_t t = 0; t < NT; t++)
            ldm_k_softmax_max(r, emu_at(t, NT), NT, &sm, x, D, causal_rows, q0);
        emu_reduce_max(&sm);
        for (int64_t t = 0; t < NT; t++) ldm_k_softmax_publish_max(emu_at(t, NT), &sm);
        for (int64_t t = 0; t < NT; t++)
            ldm_k_softmax_exp(r, emu_at(t, NT), NT, &sm, out, x, D, causal_rows, q0);
        emu_reduce_sum(&sm);
        for (int64_t t = 0; t < NT; t++) ldm_k_softmax_publish_inv(emu_at(t, NT), &sm);
        for (int64_t t = 0; t < NT; t++) ldm_k_softmax_normalize(r, emu_at(t, NT), NT, &sm, out, D);
    }
}

// One block per 32x32 tile of x[B,M,N] (k_transpose in ops_cuda.cu).
static void launch_transpose(float *out, const float *x, int64_t B, int64_t M, int64_t N) {
    int64_t nb = ldm_cu_transpose_blocks(B, M, N);
    ldm_k_tile_smem sm;
    for (int64_t b = 0; b < nb; b++) {
        int64_t g = emu_at(b, nb);
        for (int64_t r = 0; r < LDM_CU_TILE; r++)
            for (int64_t c = 0; c <= LDM_CU_TILE; c++) sm.tile[r][c] = NAN;
        for (int64_t t = 0; t < NT; t++) ldm_k_transpose_load(g, emu_at(t, NT), &sm, x, M, N);
        for (int64_t t = 0; t < NT; t++) ldm_k_transpose_store(g, emu_at(t, NT), &sm, out, M, N);
    }
}

// ---- the op sequences, shared with ops_cuda.cu -------------------------------------------
#include "ldm/backend/cuda_host.h"

// Each op opens the fence for its duration (strict mode; a no-op otherwise).
static void emu_linear(float *out, const float *x, const float *w, const float *b, int64_t M,
                       int64_t K, int64_t N) {
    emu_enter(); cuh_linear(out, x, w, b, M, K, N); emu_leave();
}
static void emu_conv2d(float *out, const float *x, const float *w, const float *b, int64_t B,
                       int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t KH, int64_t KW,
                       int64_t s, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
    emu_enter(); cuh_conv2d(out, x, w, b, B, Cin, H, W, Cout, KH, KW, s, pt, pb, pl, pr); emu_leave();
}
static void emu_group_norm(float *out, const float *x, const float *g, const float *b, int64_t B,
                           int64_t C, int64_t S, int64_t G, float eps) {
    emu_enter(); cuh_group_norm(out, x, g, b, B, C, S, G, eps); emu_leave();
}
static void emu_layer_norm(float *out, const float *x, const float *g, const float *b, int64_t N,
                           int64_t D, float eps) {
    emu_enter(); cuh_layer_norm(out, x, g, b, N, D, eps); emu_leave();
}
static void emu_softmax(float *out, const float *x, int64_t N, int64_t D) {
    emu_enter(); cuh_softmax(out, x, N, D); emu_leave();
}
static void emu_attention(float *out, const float *q, const float *k, const float *v, int64_t B,
                          int64_t Tq, int64_t Tk, int64_t NH, int64_t HS, float scale, int causal) {
    emu_enter(); cuh_attention(out, q, k, v, B, Tq, Tk, NH, HS, scale, causal); emu_leave();
}
static void emu_silu(float *out, const float *x, int64_t n) { emu_enter(); cuh_silu(out, x, n); emu_leave(); }
static void emu_gelu(float *out, const float *x, int64_t n) { emu_enter(); cuh_gelu(out, x, n); emu_leave(); }
static void emu_quick_gelu(float *out, const float *x, int64_t n) {
    emu_enter(); cuh_quick_gelu(out, x, n); emu_leave();
}
static void emu_geglu(float *out, const float *x, int64_t N, int64_t F) {
    emu_enter(); cuh_geglu(out, x, N, F); emu_leave();
}
static void emu_add(float *out, const float *a, const float *b, int64_t n) {
    emu_enter(); cuh_add(out, a, b, n); emu_leave();
}
static void emu_mul(float *out, const float *a, const float *b, int64_t n) {
    emu_enter(); cuh_mul(out, a, b, n); emu_leave();
}
static void emu_scale(float *out, const float *a, float s, int64_t n) {
    emu_enter(); cuh_scale(out, a, s, n); emu_leave();
}
static void emu_add_channel(float *out, const float *x, const float *y, int64_t B, int64_t C,
                            int64_t S) {
    emu_enter(); cuh_add_channel(out, x, y, B, C, S); emu_leave();
}
static void emu_upsample2x(float *out, const float *x, int64_t B, int64_t C, int64_t H, int64_t W) {
    emu_enter(); cuh_upsample2x(out, x, B, C, H, W); emu_leave();
}
static void emu_concat_channels(float *out, const float *a, const float *b, int64_t B, int64_t Ca,
                                int64_t Cb, int64_t S) {
    emu_enter(); cuh_concat_channels(out, a, b, B, Ca, Cb, S); emu_leave();
}
static void emu_transpose(float *out, const float *x, int64_t B, int64_t M, int64_t N) {
    emu_enter(); cuh_transpose(out, x, B, M, N); emu_leave();
}
static void emu_embedding(float *out, const float *table, const int32_t *ids, int64_t n, int64_t D) {
    emu_enter(); cuh_embedding(out, table, ids, n, D); emu_leave();
}

const struct ldm_ops ldm_ops_cuda_emu = {
    .name = "cuda-emu",
    .alloc = emu_alloc,
    .free = emu_free,
    .upload = emu_upload,
    .download = emu_download,
    .copy = emu_copy,
    .set_threads = NULL,
    .linear = emu_linear,
    .conv2d = emu_conv2d,
    .group_norm = emu_group_norm,
    .layer_norm = emu_layer_norm,
    .softmax = emu_softmax,
    .attention = emu_attention,
    .silu = emu_silu,
    .gelu = emu_gelu,
    .quick_gelu = emu_quick_gelu,
    .geglu = emu_geglu,
    .add = emu_add,
    .mul = emu_mul,
    .scale = emu_scale,
    .add_channel = emu_add_channel,
    .upsample2x = emu_upsample2x,
    .concat_channels = emu_concat_channels,
    .transpose = emu_transpose,
    .embedding = emu_embedding,
};
