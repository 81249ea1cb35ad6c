/*
 * ldm/backend/ops_cuda.cu -- backend "cuda": every op of struct ldm_ops on an NVIDIA
 * GPU, fp32 throughout. Built only by `make cuda` (nvcc); the default build
 * does not need CUDA.
 *
 * How it is put together (docs/08-cuda.md):
 *   memory     cudaMalloc / cudaFree / cudaMemcpy; a tensor's data pointer is
 *              a device pointer, the host only ever holds it
 *   GEMMs      cuBLAS cublasSgemmStridedBatched for linear, conv2d (im2col +
 *              GEMM) and the two attention products; math mode
 *              CUBLAS_PEDANTIC_MATH, so no TF32: results stay fp32 like `ref`
 *   the rest   the kernels of ldm/backend/cuda_kernels.h, each wrapped below in a thin
 *              __global__ function that passes the real block/thread indices
 *   op logic   ldm/backend/cuda_host.h (shared with the CPU emulation, `cuda-emu`)
 * Everything runs on the legacy default stream, so every kernel, cuBLAS call
 * and cudaMemcpy is ordered after the previous one; downloads synchronise.
 *
 * A failing CUDA or cuBLAS call (an illegal address, a lost device) is not
 * user input: it prints the call, file:line and CUDA's message and aborts,
 * like LDM_ASSERT. Only cudaMalloc failure is reported softly (alloc returns
 * NULL and the caller reports "out of memory ... on backend cuda").
 * $LDM_CUDA_SYNC=1 synchronises after every launch, so an error is reported
 * at the kernel that caused it.
 *
 * Not here: fp16/bf16, tensor cores, fused flash attention, streams/graphs --
 * the teaching versions of single kernels are in tools/cuda/.
 */
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "ldm/backend/ops.h"
#include "ldm/backend/ops_cuda.h"
}
#include "ldm/backend/cuda_kernels.h"

#define NT LDM_CU_THREADS

// ---- error checks -------------------------------------------------------------------

static void cuda_fail(const char *call, const char *msg, const char *file, int line) {
    fprintf(stderr, "%s:%d: CUDA call failed: %s: %s\n", file, line, call, msg);
    abort();
}
#define CUDA_CHECK(call)                                                          \
    do {                                                                          \
        cudaError_t err_ = (call);                                                \
        if (err_ != cudaSuccess)                                                  \
            cuda_fail(#call, cudaGetErrorString(err_), __FILE__, __LINE__);       \
    } while (0)
#define CUBLAS_CHECK(call)                                                        \
    do {                                                                          \
        cublasStatus_t st_ = (call);                                              \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                         \
            cuda_fail(#call, cublasGetStatusString(st_), __FILE__, __LINE__);     \
    } while (0)

// After each launch: a bad launch configuration shows up here; with
// LDM_CUDA_SYNC=1 so does any fault inside the kernel.
static int sync_each = -1;
static void launch_check(const char *kernel) {
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess) {
        if (sync_each < 0) {
            const char *e = getenv("LDM_CUDA_SYNC");
            sync_each = e && *e == '1';
        }
        if (sync_each) err = cudaDeviceSynchronize();
    }
    if (err != cudaSuccess) cuda_fail(kernel, cudaGetErrorString(err), __FILE__, __LINE__);
}

extern "C" int ldm_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();   // clear the sticky "no device / no driver" error
        return 0;
    }
    return n;
}

extern "C" const char *ldm_cuda_device_name(void) {
    static char name[320];
    cudaDeviceProp prop;
    int dev = 0;
    if (ldm_cuda_device_count() == 0 || cudaGetDevice(&dev) != cudaSuccess ||
        cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        cudaGetLastError();
        return "no CUDA device";
    }
    snprintf(name, sizeof name, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1 << 30));
    return name;
}

// ---- memory -------------------------------------------------------------------------------

static void *cu_alloc(size_t nbytes) {
    void *p = NULL;
    if (cudaMalloc(&p, nbytes ? nbytes : 1) != cudaSuccess) {
        cudaGetLastError();   // not sticky: the caller reports out of memory
        return NULL;
    }
    return p;
}
static void cu_free(void *p) { if (p) CUDA_CHECK(cudaFree(p)); }
static void cu_upload(void *dst, const void *src, size_t n) {
    if (n) CUDA_CHECK(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
}
static void cu_download(void *dst, const void *src, size_t n) {
    if (n) CUDA_CHECK(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
}
static void cu_copy(void *dst, const void *src, size_t n) {
    if (n) CUDA_CHECK(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToDevice));
}
static void cu_copy_in(void *dst, const void *src, size_t n) { cu_upload(dst, src, n); }

// Device scratch for im2col columns, attention scores, embedding ids; grows
// on demand (cudaFree waits for the kernels still using the old one).
static float *ws;
static int64_t ws_cap;       // floats allocated
static int64_t ws_limit;     // floats preferred; 0 = not read from the environment yet

extern "C" void ldm_cuda_set_workspace_limit(int64_t nfloats) { ws_limit = nfloats > 0 ? nfloats : 1; }
static int64_t cu_workspace_limit(void) {
    if (ws_limit == 0) {
        const char *e = getenv("LDM_CUDA_WORKSPACE_MB");
        long mb = e ? atol(e) : 0;
        ws_limit = (mb > 0 ? (int64_t)mb : 256) * (1 << 20) / (int64_t)sizeof(float);
    }
    return ws_limit;
}
static float *cu_workspace(int64_t nfloats) {
    if (nfloats > ws_cap) {
        if (ws) CUDA_CHECK(cudaFree(ws));
        ws = NULL;
        ws_cap = 0;
        CUDA_CHECK(cudaMalloc(&ws, (size_t)nfloats * sizeof(float)));
        ws_cap = nfloats;
    }
    return ws;
}

// ---- cuBLAS --------------------------------------------------------------------------------

static cublasHandle_t cublas(void) {
    static cublasHandle_t h;
    if (!h) {
        CUBLAS_CHECK(cublasCreate(&h));
        // fp32 as written: never TF32 or other reduced-precision shortcuts.
        CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH));
    }
    return h;
}

static void cu_gemm(const ldm_gemm *g) {
    if (g->m == 0 || g->n == 0) return;
    CUBLAS_CHECK(cublasSgemmStridedBatched(
        cublas(), g->transa ? CUBLAS_OP_T : CUBLAS_OP_N, g->transb ? CUBLAS_OP_T : CUBLAS_OP_N,
        (int)g->m, (int)g->n, (int)g->k, &g->alpha, g->A, (int)g->lda, (long long)g->strideA,
        g->B, (int)g->ldb, (long long)g->strideB, &g->beta, g->C, (int)g->ldc,
        (long long)g->strideC, (int)g->batch));
}

// ---- kernels: thin wrappers around the bodies in cuda_kernels.h ---------------------------

#define IDX blockIdx.x, threadIdx.x, blockDim.x

__global__ void k_silu(float *out, const float *x, int64_t n) { ldm_k_silu(IDX, out, x, n); }
__global__ void k_gelu(float *out, const float *x, int64_t n) { ldm_k_gelu(IDX, out, x, n); }
__global__ void k_quick_gelu(float *out, const float *x, int64_t n) {
    ldm_k_quick_gelu(IDX, out, x, n);
}
__global__ void k_geglu(float *out, const float *x, int64_t N, int64_t F) {
    ldm_k_geglu(IDX, out, x, N, F);
}
__global__ void k_add(float *out, const float *a, const float *b, int64_t n) {
    ldm_k_add(IDX, out, a, b, n);
}
__global__ void k_mul(float *out, const float *a, const float *b, int64_t n) {
    ldm_k_mul(IDX, out, a, b, n);
}
__global__ void k_scale(float *out, const float *a, float s, int64_t n) {
    ldm_k_scale(IDX, out, a, s, n);
}
__global__ void k_add_channel(float *out, const float *x, const float *y, int64_t B, int64_t C,
                              int64_t S) {
    ldm_k_add_channel(IDX, out, x, y, B, C, S);
}
__global__ void k_add_bias(float *out, const float *bias, int64_t n, int64_t C, int64_t inner) {
    ldm_k_add_bias(IDX, out, bias, n, C, inner);
}
__global__ void k_upsample2x(float *out, const float *x, int64_t B, int64_t C, int64_t H,
                             int64_t W) {
    ldm_k_upsample2x(IDX, out, x, B, C, H, W);
}
__global__ void k_concat_channels(float *out, const float *a, const float *b, int64_t B,
                                  int64_t Ca, int64_t Cb, int64_t S) {
    ldm_k_concat_channels(IDX, out, a, b, B, Ca, Cb, S);
}
__global__ void k_embedding(float *out, const float *table, const int32_t *ids, int64_t n,
                            int64_t D) {
    ldm_k_embedding(IDX, out, table, ids, n, D);
}
__global__ void k_im2col(float *col, const float *x, int64_t Cin, int64_t H, int64_t W,
                         int64_t KH, int64_t KW, int64_t stride, int64_t pad_t, int64_t pad_l,
                         int64_t Wo, int64_t p0, int64_t np) {
    ldm_k_im2col(IDX, col, x, Cin, H, W, KH, KW, stride, pad_t, pad_l, Wo, p0, np);
}

// Tree reductions inside a block: log2(NT) steps, a barrier after each.
__device__ void block_reduce_sum(int64_t t, ldm_k_smem *sm) {
    for (int64_t s = NT / 2; s > 0; s /= 2) {
        ldm_k_reduce_sum_step(t, s, sm);
        __syncthreads();
    }
}
__device__ void block_reduce_max(int64_t t, ldm_k_smem *sm) {
    for (int64_t s = NT / 2; s > 0; s /= 2) {
        ldm_k_reduce_max_step(t, s, sm);
        __syncthreads();
    }
}

// Block r normalises row r of x[N,D]. Launched with exactly NT threads.
__global__ void k_layer_norm(float *out, const float *x, const float *gamma, const float *beta,
                             int64_t D, float eps) {
    __shared__ ldm_k_smem sm;
    int64_t r = blockIdx.x, t = threadIdx.x;
    ldm_k_moments_sum(t, NT, &sm, x + r * D, D);    __syncthreads();
    block_reduce_sum(t, &sm);
    ldm_k_moments_mean(t, &sm, D);                   __syncthreads();
    ldm_k_moments_var(t, NT, &sm, x + r * D, D);    __syncthreads();
    block_reduce_sum(t, &sm);
    ldm_k_moments_rstd(t, &sm, D, eps);              __syncthreads();
    ldm_k_layer_norm_apply(r, t, NT, &sm, out, x, gamma, beta, D);
}

// Block g normalises group g % G of image g / G of x[B,C,S].
__global__ void k_group_norm(float *out, const float *x, const float *gamma, const float *beta,
                             int64_t C, int64_t S, int64_t G, float eps) {
    __shared__ ldm_k_smem sm;
    int64_t g = blockIdx.x, t = threadIdx.x, n = (C / G) * S;
    ldm_k_moments_sum(t, NT, &sm, x + g * n, n);    __syncthreads();
    block_reduce_sum(t, &sm);
    ldm_k_moments_mean(t, &sm, n);                   __syncthreads();
    ldm_k_moments_var(t, NT, &sm, x + g * n, n);    __syncthreads();
    block_reduce_sum(t, &sm);
    ldm_k_moments_rstd(t, &sm, n, eps);              __syncthreads();
    ldm_k_group_norm_apply(g, t, NT, &sm, out, x, gamma, beta, C, S, G);
}

// Block r: softmax of row r of x[N,D] (causal mask when causal_rows > 0).
__global__ void k_softmax_rows(float *out, const float *x, int64_t D, int64_t causal_rows,
                               int64_t q0) {
    __shared__ ldm_k_smem sm;
    int64_t r = blockIdx.x, t = threadIdx.x;
    ldm_k_softmax_max(r, t, NT, &sm, x, D, causal_rows, q0);       __syncthreads();
    block_reduce_max(t, &sm);
    ldm_k_softmax_publish_max(t, &sm);                              __syncthreads();
    ldm_k_softmax_exp(r, t, NT, &sm, out, x, D, causal_rows, q0);  __syncthreads();
    block_reduce_sum(t, &sm);
    ldm_k_softmax_publish_inv(t, &sm);                              __syncthreads();
    ldm_k_softmax_normalize(r, t, NT, &sm, out, D);
}

// Block g transposes one 32x32 tile of x[B,M,N] (phases in cuda_kernels.h).
__global__ void k_transpose(float *out, const float *x, int64_t M, int64_t N) {
    __shared__ ldm_k_tile_smem sm;
    int64_t g = blockIdx.x, t = threadIdx.x;
    ldm_k_transpose_load(g, t, &sm, x, M, N);      __syncthreads();
    ldm_k_transpose_store(g, t, &sm, out, M, N);
}

// ---- launches (the emulation's twins are in ops_cuda_emu.c) ------------------------------

// Grid for n elements, one thread each. A 1-D grid holds up to 2^31-1 blocks.
static unsigned grid(int64_t nblocks) { return (unsigned)nblocks; }

static void launch_silu(float *out, const float *x, int64_t n) {
    k_silu<<<grid(ldm_cu_blocks(n)), NT>>>(out, x, n);
    launch_check("k_silu");
}
static void launch_gelu(float *out, const float *x, int64_t n) {
    k_gelu<<<grid(ldm_cu_blocks(n)), NT>>>(out, x, n);
    launch_check("k_gelu");
}
static void launch_quick_gelu(float *out, const float *x, int64_t n) {
    k_quick_gelu<<<grid(ldm_cu_blocks(n)), NT>>>(out, x, n);
    launch_check("k_quick_gelu");
}
static void launch_geglu(float *out, const float *x, int64_t N, int64_t F) {
    k_geglu<<<grid(ldm_cu_blocks(N * F)), NT>>>(out, x, N, F);
    launch_check("k_geglu");
}
static void launch_add(float *out, const float *a, const float *b, int64_t n) {
    k_add<<<grid(ldm_cu_blocks(n)), NT>>>(out, a, b, n);
    launch_check("k_add");
}
static void launch_mul(float *out, const float *a, const float *b, int64_t n) {
    k_mul<<<grid(ldm_cu_blocks(n)), NT>>>(out, a, b, n);
    launch_check("k_mul");
}
static void launch_scale(float *out, const float *a, float s, int64_t n) {
    k_scale<<<grid(ldm_cu_blocks(n)), NT>>>(out, a, s, n);
    launch_check("k_scale");
}
static void launch_add_channel(float *out, const float *x, const float *y, int64_t B, int64_t C,
                               int64_t S) {
    k_add_channel<<<grid(ldm_cu_blocks(B * C * S)), NT>>>(out, x, y, B, C, S);
    launch_check("k_add_channel");
}
static void launch_add_bias(float *out, const float *bias, int64_t n, int64_t C, int64_t inner) {
    k_add_bias<<<grid(ldm_cu_blocks(n)), NT>>>(out, bias, n, C, inner);
    launch_check("k_add_bias");
}
static void launch_upsample2x(float *out, const float *x, int64_t B, int64_t C, int64_t H,
                              int64_t W) {
    k_upsample2x<<<grid(ldm_cu_blocks(B * C * 4 * H * W)), NT>>>(out, x, B, C, H, W);
    launch_check("k_upsample2x");
}
static void launch_concat_channels(float *out, const float *a, const float *b, int64_t B,
                                   int64_t Ca, int64_t Cb, int64_t S) {
    k_concat_channels<<<grid(ldm_cu_blocks(B * (Ca + Cb) * S)), NT>>>(out, a, b, B, Ca, Cb, S);
    launch_check("k_concat_channels");
}
static void launch_transpose(float *out, const float *x, int64_t B, int64_t M, int64_t N) {
    k_transpose<<<grid(ldm_cu_transpose_blocks(B, M, N)), NT>>>(out, x, M, N);
    launch_check("k_transpose");
}
static void launch_embedding(float *out, const float *table, const int32_t *ids, int64_t n,
                             int64_t D) {
    k_embedding<<<grid(ldm_cu_blocks(n * D)), NT>>>(out, table, ids, n, D);
    launch_check("k_embedding");
}
static void launch_im2col(float *col, const float *x, int64_t Cin, int64_t H, int64_t W,
                          int64_t KH, int64_t KW, int64_t stride, int64_t pad_t, int64_t pad_l,
                          int64_t Wo, int64_t p0, int64_t np) {
    k_im2col<<<grid(ldm_cu_blocks(Cin * KH * KW * np)), NT>>>(col, x, Cin, H, W, KH, KW, stride,
                                                               pad_t, pad_l, Wo, p0, np);
    launch_check("k_im2col");
}
static void launch_layer_norm(float *out, const float *x, const float *gamma, const float *beta,
                              int64_t N, int64_t D, float eps) {
    k_layer_norm<<<grid(N), NT>>>(out, x, gamma, beta, D, eps);
    launch_check("k_layer_norm");
}
static void launch_group_norm(float *out, const float *x, const float *gamma, const float *beta,
                              int64_t B, int64_t C, int64_t S, int64_t G, float eps) {
    k_group_norm<<<grid(B * G), NT>>>(out, x, gamma, beta, C, S, G, eps);
    launch_check("k_group_norm");
}
static void launch_softmax_rows(float *out, const float *x, int64_t N, int64_t D,
                                int64_t causal_rows, int64_t q0) {
    k_softmax_rows<<<grid(N), NT>>>(out, x, D, causal_rows, q0);
    launch_check("k_softmax_rows");
}

// ---- the op sequences, shared with ops_cuda_emu.c -----------------------------------------
#include "ldm/backend/cuda_host.h"

extern "C" const struct ldm_ops ldm_ops_cuda = {
    .name = "cuda",
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .copy = cu_copy,
    .set_threads = NULL,
    .linear = cuh_linear,
    .conv2d = cuh_conv2d,
    .group_norm = cuh_group_norm,
    .layer_norm = cuh_layer_norm,
    .softmax = cuh_softmax,
    .attention = cuh_attention,
    .silu = cuh_silu,
    .gelu = cuh_gelu,
    .quick_gelu = cuh_quick_gelu,
    .geglu = cuh_geglu,
    .add = cuh_add,
    .mul = cuh_mul,
    .scale = cuh_scale,
    .add_channel = cuh_add_channel,
    .upsample2x = cuh_upsample2x,
    .concat_channels = cuh_concat_channels,
    .transpose = cuh_transpose,
    .embedding = cuh_embedding,
};
