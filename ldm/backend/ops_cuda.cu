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
 *   the rest   the kernels of ldm/backend/cuda_kernels.h (plain CUDA, also run on
 *              the CPU by the emulation `cuda-emu`)
 *   op logic   ldm/backend/cuda_host.h (shared with `cuda-emu`): every launch is
 *              LAUNCH(kernel, blocks, threads, args...), defined below as
 *              kernel<<<blocks, threads>>>(args...) plus an error check
 * Everything runs on the legacy default stream, so every kernel, cuBLAS call
 * and cudaMemcpy is ordered after the previous one; downloads synchronise.
 *
 * A failing CUDA or cuBLAS call (an illegal address, a lost device) is not
 * user input: it prints the call, file:line and CUDA's message and aborts,
 * like LDM_ASSERT. Only cudaMalloc failure is reported softly (alloc returns
 * NULL and the caller reports "out of memory ... on backend cuda").
 * With ldm_cuda_options.sync (ldm_cuda_set_options, from the program's main)
 * every launch is followed by a synchronisation, so an error is reported at
 * the kernel that caused it.
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
// ldm_cuda_opts.sync so does any fault inside the kernel.
static void launch_check(const char *kernel, const char *file, int line) {
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess && ldm_cuda_opts.sync) err = cudaDeviceSynchronize();
    if (err != cudaSuccess) cuda_fail(kernel, cudaGetErrorString(err), file, line);
}

// ---- launches ----------------------------------------------------------------------
// Every launch in cuda_host.h. A 1-D grid holds up to 2^31-1 blocks.
#define LAUNCH(kernel, blocks, threads, ...)                                   \
    do {                                                                       \
        kernel<<<(unsigned)(blocks), (threads)>>>(__VA_ARGS__);                \
        launch_check(#kernel, __FILE__, __LINE__);                             \
    } while (0)

// ---- the op sequences, shared with ops_cuda_emu.c -----------------------------------------
// (they call the memory, workspace and cuBLAS functions defined below)
#include "ldm/backend/cuda_host.h"

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
static int64_t ws_limit;     // floats preferred; 0: ldm_cuda_opts.workspace_mb

extern "C" void ldm_cuda_set_workspace_limit(int64_t nfloats) { ws_limit = nfloats > 0 ? nfloats : 1; }
static int64_t cu_workspace_limit(void) {
    return ws_limit ? ws_limit : cuh_workspace_floats(ldm_cuda_opts.workspace_mb);
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

extern "C" const struct ldm_ops ldm_ops_cuda = {
    .name = "cuda",
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .copy = cu_copy,
    .set_threads = NULL,
    .host_memory = 0,       // device memory: weights are uploaded, never mapped
    .linear = cuh_linear,
    .conv2d = cuh_conv2d,
    .linear_half = NULL,    // no fp16 weights on the GPU yet: the loader widens to fp32
    .conv2d_half = NULL,
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
    // backward (training): not on the GPU yet. NULL entries make the wrappers
    // stop with "backward ops are not implemented on cuda yet" and
    // ldm_backend_can_train return 0 (ldm/backend/ops.c).
    .linear_backward = NULL,
    .conv2d_backward = NULL,
    .group_norm_backward = NULL,
    .layer_norm_backward = NULL,
    .softmax_backward = NULL,
    .attention_backward = NULL,
    .silu_backward = NULL,
    .gelu_backward = NULL,
    .quick_gelu_backward = NULL,
    .geglu_backward = NULL,
    .add_backward = NULL,
    .mul_backward = NULL,
    .scale_backward = NULL,
    .add_channel_backward = NULL,
    .upsample2x_backward = NULL,
    .concat_channels_backward = NULL,
    .transpose_backward = NULL,
    .embedding_backward = NULL,
};
