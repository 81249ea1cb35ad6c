/*
 * ldm/backend/cuda_kernels.h -- every CUDA kernel of the `cuda` backend, as
 * plain CUDA: __global__ functions that read blockIdx, threadIdx, blockDim.
 * Compiled twice:
 *   - by nvcc, in ldm/backend/ops_cuda.cu (`make cuda`), for the GPU;
 *   - by the C compiler, in ldm/backend/ops_cuda_emu.c (backend `cuda-emu`, every
 *     build), with ldm/backend/cuda_emu.h standing in for what nvcc provides:
 *     the same kernels run on the CPU, block after block, thread after thread.
 * Both backends launch them from the same host code (ldm/backend/cuda_host.h,
 * LAUNCH(kernel, blocks, threads, args...)), so what every thread reads and
 * writes is tested by the default `make test` on any machine
 * (tests/test_cuda_emu.c).
 *
 * Two kinds of kernel:
 *   - ordinary kernels, one thread per output element,
 *     i = blockIdx.x * blockDim.x + threadIdx.x: as in any CUDA course;
 *   - block-cooperative kernels (layer/group norm, softmax rows, the tiled
 *     transpose), whose threads share memory and wait at __syncthreads().
 *     Their per-thread code between barriers sits in `for_each_thread { }`
 *     PHASES. On a GPU `for_each_thread` expands to nothing: every thread runs
 *     the block, as usual. The emulator runs such a kernel once per block and
 *     loops over the threads inside each phase, so a phase is finished by all
 *     threads before the next begins -- what the barrier guarantees. The code
 *     between phases must therefore be the same for every thread (the rules
 *     are in ldm/backend/cuda_emu.h; the emulator checks the ones it can).
 * Why phases rather than running each CUDA thread as an OS thread or
 * coroutine that blocks at __syncthreads(): the test suite runs ~17 000
 * reduction blocks of 256 threads with ~20 barriers each; per-thread context
 * switches would turn a 0.3 s test into ~20 s. The phase loops cost nothing,
 * keep the emulation in one thread, readable in gdb and clean under
 * AddressSanitizer, and C's scoping keeps a thread's locals inside its phase.
 *
 * What the emulation cannot show: races inside one phase (its threads run one
 * after another; reverse order catches most), timing, occupancy, anything of
 * the hardware -- see docs/08-cuda.md, "What is verified only on a GPU".
 *
 * Conventions: 1-D grids, LDM_CU_THREADS threads per block. Row kernels use
 * one block per row and stride the row by blockDim.x. Index arithmetic is
 * int64_t (blockIdx.x * blockDim.x alone is a 32-bit product). Tensors are
 * contiguous fp32 in PyTorch order (ldm/core/tensor.h). The GEMMs are not
 * kernels here: cuBLAS calls, described in cuda_host.h.
 */
#ifndef LDM_CUDA_KERNELS_H
#define LDM_CUDA_KERNELS_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define for_each_thread   // on a GPU every thread runs the phase: nothing to add
#else
#include "ldm/backend/cuda_emu.h"
#endif

// Threads per block for every kernel. A power of two: the tree reductions
// below halve it until one value is left.
#define LDM_CU_THREADS 256

// ---- activations (scalar; used by the kernels below) -----------------------

__device__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
// GELU, exact erf form (torch.nn.functional.gelu, approximate='none')
__device__ float gelu1(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// ============================================================================
// Elementwise kernels: one thread per output element.
// ============================================================================

// x[n] -> out[n] = x * sigmoid(x)   (SiLU / swish)
__global__ void silu_kernel(float *out, const float *x, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] * sigmoid(x[i]);
}

// x[n] -> out[n] = 0.5 x (1 + erf(x / sqrt 2))
__global__ void gelu_kernel(float *out, const float *x, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = gelu1(x[i]);
}

// x[n] -> out[n] = x * sigmoid(1.702 x)   (CLIP's QuickGELU)
__global__ void quick_gelu_kernel(float *out, const float *x, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i] * sigmoid(1.702f * x[i]);
}

// x[N,2F] = [a | gate] -> out[N,F] = a * gelu(gate); thread i = (row r, column f)
// out must not overlap x (threads of one launch run in any order); the host
// code routes an in-place call through a scratch buffer.
__global__ void geglu_kernel(float *out, const float *x, int64_t N, int64_t F) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * F) return;
    int64_t r = i / F, f = i % F;
    out[i] = x[r * 2 * F + f] * gelu1(x[r * 2 * F + F + f]);
}

// out[n] = a + b
__global__ void add_kernel(float *out, const float *a, const float *b, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

// out[n] = a * b
__global__ void mul_kernel(float *out, const float *a, const float *b, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] * b[i];
}

// out[n] = a * s
__global__ void scale_kernel(float *out, const float *a, float s, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] * s;
}

// x[B,C,S] + y[B,C] broadcast over S -> out[B,C,S]; element i belongs to row i / S
__global__ void add_channel_kernel(float *out, const float *x, const float *y, int64_t B,
                                   int64_t C, int64_t S) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < B * C * S) out[i] = x[i] + y[i / S];
}

// In place: out[n] += bias[(i / inner) % C]. The bias of a conv (out [B,C,P]:
// inner = P) or of a linear layer (out [M,N]: inner = 1, C = N).
__global__ void add_bias_kernel(float *out, const float *bias, int64_t n, int64_t C,
                                int64_t inner) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] += bias[(i / inner) % C];
}

// ============================================================================
// Layout kernels: one thread per OUTPUT element, which works out where it
// reads from (a gather: no two threads write the same place).
// ============================================================================

// x[B,C,H,W] -> out[B,C,2H,2W], nearest: out[.., y, x] = in[.., y/2, x/2]
__global__ void upsample2x_kernel(float *out, const float *x, int64_t B, int64_t C, int64_t H,
                                  int64_t W) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * C * 4 * H * W) return;
    int64_t ox = i % (2 * W), oy = (i / (2 * W)) % (2 * H), bc = i / (4 * H * W);
    out[i] = x[(bc * H + oy / 2) * W + ox / 2];
}

// a[B,Ca,S], b[B,Cb,S] -> out[B,Ca+Cb,S]
__global__ void concat_channels_kernel(float *out, const float *a, const float *b, int64_t B,
                                       int64_t Ca, int64_t Cb, int64_t S) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, C = Ca + Cb;
    if (i >= B * C * S) return;
    int64_t s = i % S, c = (i / S) % C, bi = i / (S * C);
    out[i] = c < Ca ? a[(bi * Ca + c) * S + s] : b[(bi * Cb + (c - Ca)) * S + s];
}

// out[n,D] = table[ids[r], :]; ids already copied to device memory
__global__ void embedding_kernel(float *out, const float *table, const int32_t *ids, int64_t n,
                                 int64_t D) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * D) return;
    int64_t r = i / D, d = i % D;
    out[i] = table[(int64_t)ids[r] * D + d];
}

// im2col for one image: lays out the receptive fields of output positions
// [p0, p0+np) as the columns of a matrix, so the convolution becomes a GEMM:
//   col[Cin*KH*KW, np]:  col[(c*KH + kh)*KW + kw, p - p0] = x[c, iy, ix]
//   with p = oy*Wo + ox, iy = oy*stride - pad_t + kh, ix = ox*stride - pad_l + kw
// and zero where (iy, ix) falls in the padding. x is one image [Cin,H,W].
__global__ void im2col_kernel(float *col, const float *x, int64_t Cin, int64_t H, int64_t W,
                              int64_t KH, int64_t KW, int64_t stride, int64_t pad_t,
                              int64_t pad_l, int64_t Wo, int64_t p0, int64_t np) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= Cin * KH * KW * np) return;
    int64_t row = i / np, p = p0 + i % np;
    int64_t kw = row % KW, kh = (row / KW) % KH, c = row / (KW * KH);
    int64_t oy = p / Wo, ox = p % Wo;
    int64_t iy = oy * stride - pad_t + kh, ix = ox * stride - pad_l + kw;
    col[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(c * H + iy) * W + ix] : 0.0f;
}

// ============================================================================
// Block-cooperative kernels: shared memory, barriers, for_each_thread phases.
// ============================================================================

// x[B,M,N] -> out[B,N,M]: out[b,n,m] = x[b,m,n], through a 32x32 tile in
// shared memory so that both the reads (along n) and the writes (along m) are
// coalesced -- the naive one-thread-per-element gather reads with stride N.
// Block g handles tile (tm, tn) of image b; its 256 threads are 8 rows of 32
// (thread t: column t % 32, rows t / 32, t / 32 + 8, ...), each moving 4 elements.
#define LDM_CU_TILE 32
__global__ void transpose_kernel(float *out, const float *x, int64_t M, int64_t N) {
    __shared__ float tile[LDM_CU_TILE][LDM_CU_TILE + 1];   // +1 column: no bank conflicts
    int64_t tilesM = (M + LDM_CU_TILE - 1) / LDM_CU_TILE;
    int64_t tilesN = (N + LDM_CU_TILE - 1) / LDM_CU_TILE;
    int64_t tn = blockIdx.x % tilesN, tm = (blockIdx.x / tilesN) % tilesM;
    int64_t b = blockIdx.x / (tilesN * tilesM);
    // tile[r][c] = x[b, tm*32 + r, tn*32 + c]   (32 threads along n: coalesced)
    for_each_thread {
        int64_t c = threadIdx.x % LDM_CU_TILE;
        for (int64_t r = threadIdx.x / LDM_CU_TILE; r < LDM_CU_TILE;
             r += blockDim.x / LDM_CU_TILE) {
            int64_t m = tm * LDM_CU_TILE + r, n = tn * LDM_CU_TILE + c;
            if (m < M && n < N) tile[r][c] = x[(b * M + m) * N + n];
        }
    }
    __syncthreads();
    // out[b, tn*32 + r, tm*32 + c] = tile[c][r]   (32 threads along m: coalesced;
    // they read a column of the tile, which other threads wrote)
    for_each_thread {
        int64_t c = threadIdx.x % LDM_CU_TILE;
        for (int64_t r = threadIdx.x / LDM_CU_TILE; r < LDM_CU_TILE;
             r += blockDim.x / LDM_CU_TILE) {
            int64_t n = tn * LDM_CU_TILE + r, m = tm * LDM_CU_TILE + c;
            if (m < M && n < N) out[(b * N + n) * M + m] = tile[c][r];
        }
    }
}

// ---- block reductions ---------------------------------------------------------
// partial[0..blockDim.x) -> partial[0] = their sum (max), by a tree: at step s
// (blockDim.x/2, ..., 2, 1) thread t < s folds in partial[t + s], which no
// thread writes in that step; a barrier after each step. Called by every
// thread of the block between phases (blockDim.x a power of two).
__device__ void block_sum(float *partial) {
    for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
        for_each_thread {
            if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        }
        __syncthreads();
    }
}
__device__ void block_max(float *partial) {
    for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
        for_each_thread {
            if (threadIdx.x < s)
                partial[threadIdx.x] = fmaxf(partial[threadIdx.x], partial[threadIdx.x + s]);
        }
        __syncthreads();
    }
}

// Mean and 1/sqrt(biased variance + eps) of the n floats at x, by one block,
// in two passes as in `ref` (mean, then the mean of (x - mean)^2: no
// cancellation). Called by every thread between phases; every thread gets
// the same *mean, *rstd. partial: shared, blockDim.x floats.
__device__ void block_moments(float *partial, const float *x, int64_t n, float eps, float *mean,
                              float *rstd) {
    for_each_thread {
        float acc = 0.0f;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) acc += x[j];
        partial[threadIdx.x] = acc;
    }
    __syncthreads();
    block_sum(partial);
    float m = partial[0] / (float)n;   // every thread reads the total...
    __syncthreads();                   // ...before any overwrites it
    for_each_thread {
        float acc = 0.0f;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            float d = x[j] - m;
            acc += d * d;
        }
        partial[threadIdx.x] = acc;
    }
    __syncthreads();
    block_sum(partial);
    *mean = m;
    *rstd = 1.0f / sqrtf(partial[0] / (float)n + eps);
}

// ---- layer norm: block r normalises row r of x[N,D] ------------------------------
// out = (x - mean) * rstd * gamma[d] + beta[d]   (gamma/beta may be NULL)
__global__ void layer_norm_kernel(float *out, const float *x, const float *gamma,
                                  const float *beta, int64_t D, float eps) {
    __shared__ float partial[LDM_CU_THREADS];
    const float *xr = x + (int64_t)blockIdx.x * D;
    float *outr = out + (int64_t)blockIdx.x * D;
    float mean, rstd;
    block_moments(partial, xr, D, eps, &mean, &rstd);
    for_each_thread {
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
            float y = (xr[d] - mean) * rstd;
            if (gamma) y *= gamma[d];
            if (beta) y += beta[d];
            outr[d] = y;
        }
    }
}

// ---- group norm: block g = (image g / G, group g % G) of x[B,C,S] ----------------
// G groups of cg = C/G channels; the group's cg*S floats are contiguous, and
// element j of it is channel (g % G)*cg + j/S.
__global__ void group_norm_kernel(float *out, const float *x, const float *gamma,
                                  const float *beta, int64_t C, int64_t S, int64_t G, float eps) {
    __shared__ float partial[LDM_CU_THREADS];
    int64_t cg = C / G, n = cg * S, c0 = (blockIdx.x % G) * cg;
    const float *xg = x + (int64_t)blockIdx.x * n;
    float *outg = out + (int64_t)blockIdx.x * n;
    float mean, rstd;
    block_moments(partial, xg, n, eps, &mean, &rstd);
    for_each_thread {
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
            int64_t c = c0 + j / S;
            float y = (xg[j] - mean) * rstd;
            if (gamma) y *= gamma[c];
            if (beta) y += beta[c];
            outg[j] = y;
        }
    }
}

// ---- softmax: block r takes row r of x[N,D], optionally causal ----------------------
// Row r keeps its first L entries; the rest get probability 0:
//   L = D                                 when causal_rows == 0
//   L = min(D, q0 + r % causal_rows + 1)  otherwise
// (attention: rows are [head, query-in-block] with causal_rows queries per
// block starting at query q0; query q sees keys 0..q).
// out may be x: every element is read and written by the same thread.
__global__ void softmax_rows_kernel(float *out, const float *x, int64_t D, int64_t causal_rows,
                                    int64_t q0) {
    __shared__ float partial[LDM_CU_THREADS];
    int64_t r = blockIdx.x;
    int64_t L = causal_rows == 0 ? D : q0 + r % causal_rows + 1;
    if (L > D) L = D;
    const float *xr = x + r * D;
    float *outr = out + r * D;
    // the row max (-inf for a thread without entries)
    for_each_thread {
        float m = -INFINITY;
        for (int64_t j = threadIdx.x; j < L; j += blockDim.x) m = fmaxf(m, xr[j]);
        partial[threadIdx.x] = m;
    }
    __syncthreads();
    block_max(partial);
    float maxval = partial[0];
    __syncthreads();
    // out[j] = exp(x[j] - max) (0 beyond L), and their sum
    for_each_thread {
        float acc = 0.0f;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
            float e = j < L ? expf(xr[j] - maxval) : 0.0f;
            outr[j] = e;
            acc += e;
        }
        partial[threadIdx.x] = acc;
    }
    __syncthreads();
    block_sum(partial);
    float inv = 1.0f / partial[0];
    // out[j] /= sum
    for_each_thread {
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) outr[j] *= inv;
    }
}

#endif
