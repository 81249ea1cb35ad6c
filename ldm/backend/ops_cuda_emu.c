/*
 * ldm/backend/ops_cuda_emu.c -- backend "cuda-emu": the `cuda` backend run on the CPU.
 *
 * It executes exactly what ldm/backend/ops_cuda.cu executes on a GPU -- the same
 * kernels (ldm/backend/cuda_kernels.h, plain CUDA compiled here as C) and the same
 * host code (ldm/backend/cuda_host.h: launches, GEMM arguments, chunking, bias
 * passes) -- with three substitutions:
 *   - LAUNCH(kernel, blocks, threads, args...), <<<blocks, threads>>> on a
 *     GPU, becomes loops over every block and every thread of the block, with
 *     blockIdx/threadIdx/blockDim/gridDim as C variables
 *     (ldm/backend/cuda_emu.h);
 *   - a block-cooperative kernel runs phase by phase: each for_each_thread
 *     phase for all threads of the block, then the next (what __syncthreads()
 *     guarantees; why and how in cuda_emu.h);
 *   - cublasSgemmStridedBatched becomes a plain column-major loop that first
 *     checks the arguments the way cuBLAS does (leading dimensions, int range).
 * Memory is host memory (malloc), so it runs anywhere, under ASan too (an
 * out-of-bounds index in a kernel is then reported with its line). In
 * strict mode it is fenced off from the host outside the backend's ops, as
 * device memory is (see below).
 *
 * Slow (plain loops, naive GEMM): a test backend, not for images. Each
 * block's shared memory starts filled with a huge value (a GPU's is
 * uninitialised), and the launch order can be reversed
 * (ldm_cuda_emu_set_reverse) to expose threads that depend on each other.
 *
 * Also defined here, because this file is in every build: the options of
 * both CUDA backends (ldm_cuda_set_options), which ops_cuda.cu reads too.
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

// ---- options (both backends) ----------------------------------------------------

// The options in force for `cuda` and `cuda-emu`, all 0 (defaults) until a
// program's main calls ldm_cuda_set_options. Read by ldm/backend/ops_cuda.cu
// too; defined here because this file is built in every build.
ldm_cuda_options ldm_cuda_opts;

void ldm_cuda_set_options(const ldm_cuda_options *o) {
    if (o) {
        ldm_cuda_opts = *o;
    } else {
        ldm_cuda_options defaults = {0};
        ldm_cuda_opts = defaults;
    }
}

// ---- memory: host memory, optionally fenced off from the host -----------------
//
// On a GPU, model code that reads or writes a tensor's data pointer directly
// (instead of through the ops or upload/download) crashes, because the
// pointer is device memory. Plain host memory would hide that bug, so in
// strict mode (ldm_cuda_options.emu_strict) every allocation comes from one
// arena that is PROT_NONE except while an op of this backend runs: a host
// access from outside the backend is a SIGSEGV at the faulting line.
// (Allocations are page-rounded and never reused: strict mode is for tests.)

static unsigned char *arena;         // reserved, PROT_NONE outside ops
static size_t arena_size = (size_t)16 << 30, arena_used;   // 16 GiB of address space
static size_t page_size;

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
    if (!ldm_cuda_opts.emu_strict) return malloc(nbytes ? nbytes : 1);
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

void ldm_cuda_emu_set_reverse(int reverse) { emu.reverse = reverse != 0; }

// ---- kernel launches: every block, every thread ---------------------------------

// kernel<<<blocks, threads>>>(args...): the blocks one after another; in each,
// the kernel is called for every thread -- or once, if it runs its threads
// itself in for_each_thread phases (ldm/backend/cuda_emu.h).
#define LAUNCH(kernel, blocks, threads, ...)                                   \
    do {                                                                       \
        for (emu_grid(#kernel, (blocks), (threads)); emu_next_block();)        \
            while (emu_next_thread()) kernel(__VA_ARGS__);                     \
    } while (0)

// ---- the op sequences, shared with ops_cuda.cu -------------------------------------------
// (they call the workspace and GEMM functions defined below)
#include "ldm/backend/cuda_host.h"

// ---- workspace -----------------------------------------------------------------------

static float *emu_ws;
static int64_t emu_ws_cap;                          // floats allocated
static int64_t emu_ws_limit;   // floats preferred; 0: ldm_cuda_opts.workspace_mb

void ldm_cuda_emu_set_workspace_limit(int64_t nfloats) { emu_ws_limit = nfloats > 0 ? nfloats : 1; }
static int64_t cu_workspace_limit(void) {
    return emu_ws_limit ? emu_ws_limit : cuh_workspace_floats(ldm_cuda_opts.workspace_mb);
}
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

// ---- the ops: each opens the fence for its duration (strict mode; a no-op otherwise) --

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
