/*
 * tools/cuda/softmax_forward.cu -- row softmax, four ways, for learning how a
 * reduction kernel gets fast (in the manner of llm.c's dev/cuda/). Each
 * version is checked against a CPU reference, then timed.
 *
 *   build:  make cuda            (-> build/cuda/tools/softmax_forward)
 *   run:    build/cuda/tools/softmax_forward [version] [N] [D]
 *           version 0 = all (default), N rows (default 8192), D columns (4096)
 *
 * The workload is the attention score block of the UNet's first level at
 * 512x512: rows of Tk = 4096 scores (ldm/backend/cuda_host.h, cuh_attention).
 *
 *   v1  one thread per row: three serial passes (max, sum of exp, scale).
 *       Simple, and slow: a warp's 32 threads read 32 different rows, so no
 *       load is coalesced, and N threads are too few to fill the GPU.
 *   v2  one block per row, shared-memory tree reduction with a barrier per
 *       step -- the version in the backend (ldm/backend/cuda_kernels.h,
 *       softmax_rows_kernel), chosen there because its barrier phases can be
 *       emulated on the CPU. Loads are coalesced (neighbouring threads,
 *       neighbouring columns).
 *   v3  one warp per row, reductions with __shfl_down_sync: no shared memory,
 *       no block barriers; 8 rows per 256-thread block.
 *   v4  v3 with the online softmax (Milakov & Gimelshein 2018, "Online
 *       normalizer calculation for softmax", alg. 3): max and sum in ONE pass
 *       over the row, m' = max(m, x), s' = s * exp(m - m') + exp(x - m'), so
 *       the row is read twice instead of three times.
 * Expect v1 << v2 < v3 <= v4 in GB/s; the backend keeps v2 for its
 * readability and emulation (the score GEMMs dominate attention time anyway).
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                                \
    do {                                                                           \
        cudaError_t e_ = (call);                                                   \
        if (e_ != cudaSuccess) {                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,          \
                    cudaGetErrorString(e_));                                       \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

// ---- CPU reference: x[N,D] -> out[N,D], double accumulation -------------------
static void softmax_cpu(float *out, const float *x, int N, int D) {
    for (int r = 0; r < N; r++) {
        const float *xr = x + (size_t)r * D;
        float m = -INFINITY;
        for (int j = 0; j < D; j++) m = fmaxf(m, xr[j]);
        double s = 0;
        for (int j = 0; j < D; j++) s += exp((double)xr[j] - m);
        for (int j = 0; j < D; j++) out[(size_t)r * D + j] = (float)(exp((double)xr[j] - m) / s);
    }
}

// ---- v1: one thread per row -----------------------------------------------------
__global__ void softmax_v1(float *out, const float *x, int N, int D) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= N) return;
    const float *xr = x + (size_t)r * D;
    float *o = out + (size_t)r * D;
    float m = -INFINITY, s = 0.0f;
    for (int j = 0; j < D; j++) m = fmaxf(m, xr[j]);
    for (int j = 0; j < D; j++) { o[j] = expf(xr[j] - m); s += o[j]; }
    for (int j = 0; j < D; j++) o[j] /= s;
}

// ---- v2: one block per row, shared-memory tree reduction ------------------------
// blockDim.x must be a power of two (256).
__global__ void softmax_v2(float *out, const float *x, int N, int D) {
    __shared__ float red[256];
    __shared__ float stat;
    int r = blockIdx.x, t = threadIdx.x, nt = blockDim.x;
    const float *xr = x + (size_t)r * D;
    float *o = out + (size_t)r * D;
    float m = -INFINITY;
    for (int j = t; j < D; j += nt) m = fmaxf(m, xr[j]);
    red[t] = m;
    __syncthreads();
    for (int s = nt / 2; s > 0; s /= 2) {
        if (t < s) red[t] = fmaxf(red[t], red[t + s]);
        __syncthreads();
    }
    if (t == 0) stat = red[0];
    __syncthreads();
    m = stat;
    float sum = 0.0f;
    for (int j = t; j < D; j += nt) { float e = expf(xr[j] - m); o[j] = e; sum += e; }
    red[t] = sum;
    __syncthreads();
    for (int s = nt / 2; s > 0; s /= 2) {
        if (t < s) red[t] += red[t + s];
        __syncthreads();
    }
    if (t == 0) stat = 1.0f / red[0];
    __syncthreads();
    float inv = stat;
    for (int j = t; j < D; j += nt) o[j] *= inv;
}

// ---- v3: one warp per row, shuffle reductions -------------------------------------
__device__ float warp_max(float v) {
    for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, off));
    return __shfl_sync(0xffffffffu, v, 0);   // lane 0 holds the result: broadcast it
}
__device__ float warp_sum(float v) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    return __shfl_sync(0xffffffffu, v, 0);
}
__global__ void softmax_v3(float *out, const float *x, int N, int D) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int r = blockIdx.x * (blockDim.x / 32) + warp;
    if (r >= N) return;   // the whole warp leaves together: the shuffles stay full
    const float *xr = x + (size_t)r * D;
    float *o = out + (size_t)r * D;
    float m = -INFINITY;
    for (int j = lane; j < D; j += 32) m = fmaxf(m, xr[j]);
    m = warp_max(m);
    float s = 0.0f;
    for (int j = lane; j < D; j += 32) s += expf(xr[j] - m);
    float inv = 1.0f / warp_sum(s);
    for (int j = lane; j < D; j += 32) o[j] = expf(xr[j] - m) * inv;
}

// ---- v4: one warp per row, online max+sum in a single pass ---------------------------
__global__ void softmax_v4(float *out, const float *x, int N, int D) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int r = blockIdx.x * (blockDim.x / 32) + warp;
    if (r >= N) return;
    const float *xr = x + (size_t)r * D;
    float *o = out + (size_t)r * D;
    // per lane: running max m and sum s of exp(x - m) over its columns
    float m = -INFINITY, s = 0.0f;
    for (int j = lane; j < D; j += 32) {
        float v = xr[j], mn = fmaxf(m, v);
        s = s * expf(m - mn) + expf(v - mn);
        m = mn;
    }
    // combine lanes: rescale each lane's sum to the row max
    float M = warp_max(m);
    float S = warp_sum(s * expf(m - M));
    float inv = 1.0f / S;
    for (int j = lane; j < D; j += 32) o[j] = expf(xr[j] - M) * inv;
}

// ---- driver ---------------------------------------------------------------------------
static void launch(int v, float *out, const float *x, int N, int D) {
    switch (v) {
    case 1: softmax_v1<<<(N + 255) / 256, 256>>>(out, x, N, D); break;
    case 2: softmax_v2<<<N, 256>>>(out, x, N, D); break;
    case 3: softmax_v3<<<(N + 7) / 8, 256>>>(out, x, N, D); break;
    case 4: softmax_v4<<<(N + 7) / 8, 256>>>(out, x, N, D); break;
    }
    CHECK(cudaGetLastError());
}

int main(int argc, char **argv) {
    int version = argc > 1 ? atoi(argv[1]) : 0;
    int N = argc > 2 ? atoi(argv[2]) : 8192, D = argc > 3 ? atoi(argv[3]) : 4096;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("no CUDA device: nothing to run\n");
        return 0;
    }
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("softmax [%d,%d] on %s\n", N, D, prop.name);

    size_t n = (size_t)N * D;
    float *x = (float *)malloc(n * sizeof(float)), *ref = (float *)malloc(n * sizeof(float));
    float *got = (float *)malloc(n * sizeof(float));
    unsigned long long st = 42;
    for (size_t i = 0; i < n; i++) {   // scores of a few units, like q.k/sqrt(HS)
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((st >> 40) / (double)(1 << 24)) * 8.0f - 4.0f;
    }
    softmax_cpu(ref, x, N, D);
    float *dx, *dout;
    CHECK(cudaMalloc(&dx, n * sizeof(float)));
    CHECK(cudaMalloc(&dout, n * sizeof(float)));
    CHECK(cudaMemcpy(dx, x, n * sizeof(float), cudaMemcpyHostToDevice));

    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    int bad = 0;
    for (int v = 1; v <= 4; v++) {
        if (version && v != version) continue;
        CHECK(cudaMemset(dout, 0, n * sizeof(float)));
        launch(v, dout, dx, N, D);
        CHECK(cudaMemcpy(got, dout, n * sizeof(float), cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (size_t i = 0; i < n; i++) {
            double d = (double)got[i] - ref[i];
            num += d * d;
            den += (double)ref[i] * ref[i];
        }
        double nmse = num / den;
        int ok = nmse <= 1e-7;
        bad |= !ok;
        int reps = 20;
        CHECK(cudaEventRecord(t0));
        for (int k = 0; k < reps; k++) launch(v, dout, dx, N, D);
        CHECK(cudaEventRecord(t1));
        CHECK(cudaEventSynchronize(t1));
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, t0, t1));
        ms /= reps;
        // bytes that must move at least: read x once, write out once
        double gbs = 2.0 * n * sizeof(float) / (ms * 1e-3) / 1e9;
        printf("v%d  %8.3f ms  %7.1f GB/s (read+write once)  nmse %.2e  %s\n", v, ms, gbs, nmse,
               ok ? "OK" : "NOT OK");
    }
    cudaFree(dx);
    cudaFree(dout);
    free(x), free(ref), free(got);
    return bad;
}
