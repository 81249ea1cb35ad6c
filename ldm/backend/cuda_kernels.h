/*
 * ldm/backend/cuda_kernels.h -- the bodies of every CUDA kernel of the `cuda` backend,
 * written once as plain functions that compile both as CUDA (nvcc, on the
 * device) and as C11 (gcc, on the host).
 *
 * Why: most machines that build ldm.c have no GPU. A CUDA kernel is a
 * function run once per (block, thread); its only inputs besides the
 * arguments are blockIdx, threadIdx and blockDim. So each body here takes
 * those indices as explicit arguments:
 *   - ldm/backend/ops_cuda.cu wraps each body in a thin __global__ kernel that passes
 *     the real blockIdx.x / threadIdx.x / blockDim.x;
 *   - ldm/backend/ops_cuda_emu.c (backend "cuda-emu") runs the same body on the CPU in
 *     plain loops over every block and every thread.
 * The index arithmetic (what every thread reads and writes) is therefore
 * tested by the default `make test` on any machine (tests/test_cuda_emu.c).
 *
 * Kernels that cooperate through shared memory (the block reductions of
 * layer/group norm and softmax, the tiled transpose) are split into PHASES:
 * the code between two __syncthreads() barriers is one function. The .cu
 * kernel calls the phases in order with a barrier between them; the
 * emulation runs phase 1 for all threads of a block, then phase 2 for all
 * threads, ... which is exactly the ordering a barrier guarantees. Shared
 * memory is a struct (ldm_k_smem, ldm_k_tile_smem), and nothing is carried
 * in registers across a barrier (everything a later phase needs is in shared
 * memory), so the emulation needs no per-thread state.
 * What this cannot show: races inside one phase (the emulation runs threads
 * one after another), timing, occupancy, or anything about the hardware --
 * see docs/08-cuda.md, "What is verified only on a GPU".
 *
 * Conventions: all kernels are 1-D (grid of blocks along x, LDM_CU_THREADS
 * threads per block). Elementwise kernels use one thread per output element
 * i = block * block_dim + thread. Row kernels (norms, softmax) use one block
 * per row and stride the row by block_dim. All index arithmetic is int64_t.
 * Tensors are contiguous fp32 in PyTorch order (ldm/core/tensor.h).
 *
 * The GEMMs (linear, conv, attention scores) are not kernels here: they are
 * cuBLAS calls described by struct ldm_gemm at the end of this file, which
 * the emulation executes with a plain column-major loop.
 */
#ifndef LDM_CUDA_KERNELS_H
#define LDM_CUDA_KERNELS_H

#include <math.h>
#include <stdint.h>

// Every body is callable from host and device code. In C (gcc) it is a plain
// static inline function.
#ifdef __CUDACC__
#define LDM_HD static inline __host__ __device__
#else
#define LDM_HD static inline
#endif

// Threads per block for every kernel. A power of two: the tree reductions
// below halve it until one value is left.
#define LDM_CU_THREADS 256

// Blocks needed to give each of n elements one thread.
LDM_HD int64_t ldm_cu_blocks(int64_t n) {
    return (n + LDM_CU_THREADS - 1) / LDM_CU_THREADS;
}

// ---- activations (scalar; shared by the kernels below) --------------------

LDM_HD float ldm_k_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
// GELU, exact erf form (torch.nn.functional.gelu, approximate='none')
LDM_HD float ldm_k_gelu1(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// ============================================================================
// Elementwise kernels: one thread per output element.
//   b = block index, t = thread index in the block, nt = threads per block
// ============================================================================

// x[n] -> out[n] = x * sigmoid(x)   (SiLU / swish)
LDM_HD void ldm_k_silu(int64_t b, int64_t t, int64_t nt, float *out, const float *x, int64_t n) {
    int64_t i = b * nt + t;
    if (i < n) out[i] = x[i] * ldm_k_sigmoid(x[i]);
}

// x[n] -> out[n] = 0.5 x (1 + erf(x / sqrt 2))
LDM_HD void ldm_k_gelu(int64_t b, int64_t t, int64_t nt, float *out, const float *x, int64_t n) {
    int64_t i = b * nt + t;
    if (i < n) out[i] = ldm_k_gelu1(x[i]);
}

// x[n] -> out[n] = x * sigmoid(1.702 x)   (CLIP's QuickGELU)
LDM_HD void ldm_k_quick_gelu(int64_t b, int64_t t, int64_t nt, float *out, const float *x,
                             int64_t n) {
    int64_t i = b * nt + t;
    if (i < n) out[i] = x[i] * ldm_k_sigmoid(1.702f * x[i]);
}

// x[N,2F] = [a | gate] -> out[N,F] = a * gelu(gate); thread i = (row r, column f)
// out must not overlap x (threads of one launch run in any order); the host
// code routes an in-place call through a scratch buffer.
LDM_HD void ldm_k_geglu(int64_t b, int64_t t, int64_t nt, float *out, const float *x, int64_t N,
                        int64_t F) {
    int64_t i = b * nt + t;
    if (i >= N * F) return;
    int64_t r = i / F, f = i % F;
    out[i] = x[r * 2 * F + f] * ldm_k_gelu1(x[r * 2 * F + F + f]);
}

// out[n] = a + b
LDM_HD void ldm_k_add(int64_t b, int64_t t, int64_t nt, float *out, const float *x,
                      const float *y, int64_t n) {
    int64_t i = b * nt + t;
    if (i < n) out[i] = x[i] + y[i];
}

// out[n] = a * b
LDM_HD void ldm_k_mul(int64_t b, int64_t t, int64_t nt, float *out, const float *x,
                      const float *y, int64_t n) {
    int64_t i = b * nt + t;
    if (i < n) out[i] = x[i] * y[i];
}

// out[n] = a * s
LDM_HD void ldm_k_scale(int64_t b, int64_t t, int64_t nt, float *out, const float *x, float s,
                        int64_t n) {
    int64_t i = b * nt + t;
    if (i < n) out[i] = x[i] * s;
}

// x[B,C,S] + y[B,C] broadcast over S -> out[B,C,S]; element i belongs to row i / S
LDM_HD void ldm_k_add_channel(int64_t b, int64_t t, int64_t nt, float *out, const float *x,
                              const float *y, int64_t B, int64_t C, int64_t S) {
    int64_t i = b * nt + t;
    if (i < B * C * S) out[i] = x[i] + y[i / S];
}

// In place: out[n] += bias[(i / inner) % C]. The bias of a conv (out [B,C,P]:
// inner = P) or of a linear layer (out [M,N]: inner = 1, C = N).
LDM_HD void ldm_k_add_bias(int64_t b, int64_t t, int64_t nt, float *out, const float *bias,
                           int64_t n, int64_t C, int64_t inner) {
    int64_t i = b * nt + t;
    if (i < n) out[i] += bias[(i / inner) % C];
}

// ============================================================================
// Layout kernels: one thread per OUTPUT element, which works out where it
// reads from (a gather: no two threads write the same place).
// ============================================================================

// x[B,C,H,W] -> out[B,C,2H,2W], nearest: out[.., y, x] = in[.., y/2, x/2]
LDM_HD void ldm_k_upsample2x(int64_t b, int64_t t, int64_t nt, float *out, const float *x,
                             int64_t B, int64_t C, int64_t H, int64_t W) {
    int64_t i = b * nt + t;
    if (i >= B * C * 4 * H * W) return;
    int64_t ox = i % (2 * W), oy = (i / (2 * W)) % (2 * H), bc = i / (4 * H * W);
    out[i] = x[(bc * H + oy / 2) * W + ox / 2];
}

// a[B,Ca,S], b[B,Cb,S] -> out[B,Ca+Cb,S]
LDM_HD void ldm_k_concat_channels(int64_t b, int64_t t, int64_t nt, float *out, const float *xa,
                                  const float *xb, int64_t B, int64_t Ca, int64_t Cb,
                                  int64_t S) {
    int64_t i = b * nt + t, C = Ca + Cb;
    if (i >= B * C * S) return;
    int64_t s = i % S, c = (i / S) % C, bi = i / (S * C);
    out[i] = c < Ca ? xa[(bi * Ca + c) * S + s] : xb[(bi * Cb + (c - Ca)) * S + s];
}

// x[B,M,N] -> out[B,N,M]: out[b,n,m] = x[b,m,n], through a 32x32 tile in
// shared memory so that both the reads (along n) and the writes (along m) are
// coalesced -- the naive one-thread-per-element gather reads with stride N.
// Block g handles tile (tm, tn) of image b; its 256 threads are 8 rows of 32
// (thread t: column t % 32, row t / 32), each moving 4 elements. Two phases:
#define LDM_CU_TILE 32
typedef struct ldm_k_tile_smem {
    float tile[LDM_CU_TILE][LDM_CU_TILE + 1];   // +1 column: no shared-memory bank conflicts
} ldm_k_tile_smem;

// Blocks for x[B,M,N]: one per 32x32 tile.
LDM_HD int64_t ldm_cu_transpose_blocks(int64_t B, int64_t M, int64_t N) {
    return B * ((M + LDM_CU_TILE - 1) / LDM_CU_TILE) * ((N + LDM_CU_TILE - 1) / LDM_CU_TILE);
}
// phase 1: tile[r][c] = x[b, tm*32 + r, tn*32 + c]   (32 threads along n: coalesced)
LDM_HD void ldm_k_transpose_load(int64_t g, int64_t t, ldm_k_tile_smem *sm, const float *x,
                                 int64_t M, int64_t N) {
    int64_t tilesM = (M + LDM_CU_TILE - 1) / LDM_CU_TILE, tilesN = (N + LDM_CU_TILE - 1) / LDM_CU_TILE;
    int64_t tn = g % tilesN, tm = (g / tilesN) % tilesM, b = g / (tilesN * tilesM);
    int64_t c = t % LDM_CU_TILE;
    for (int64_t r = t / LDM_CU_TILE; r < LDM_CU_TILE; r += LDM_CU_THREADS / LDM_CU_TILE) {
        int64_t m = tm * LDM_CU_TILE + r, n = tn * LDM_CU_TILE + c;
        if (m < M && n < N) sm->tile[r][c] = x[(b * M + m) * N + n];
    }
}
// phase 2 (after a barrier): out[b, tn*32 + r, tm*32 + c] = tile[c][r]
// (32 threads along m: coalesced; they read a column of the tile, which
// other threads wrote in phase 1)
LDM_HD void ldm_k_transpose_store(int64_t g, int64_t t, const ldm_k_tile_smem *sm, float *out,
                                  int64_t M, int64_t N) {
    int64_t tilesM = (M + LDM_CU_TILE - 1) / LDM_CU_TILE, tilesN = (N + LDM_CU_TILE - 1) / LDM_CU_TILE;
    int64_t tn = g % tilesN, tm = (g / tilesN) % tilesM, b = g / (tilesN * tilesM);
    int64_t c = t % LDM_CU_TILE;
    for (int64_t r = t / LDM_CU_TILE; r < LDM_CU_TILE; r += LDM_CU_THREADS / LDM_CU_TILE) {
        int64_t n = tn * LDM_CU_TILE + r, m = tm * LDM_CU_TILE + c;
        if (m < M && n < N) out[(b * N + n) * M + m] = sm->tile[c][r];
    }
}

// out[n,D] = table[ids[r], :]; ids already copied to device memory
LDM_HD void ldm_k_embedding(int64_t b, int64_t t, int64_t nt, float *out, const float *table,
                            const int32_t *ids, int64_t n, int64_t D) {
    int64_t i = b * nt + t;
    if (i >= n * D) return;
    int64_t r = i / D, d = i % D;
    out[i] = table[(int64_t)ids[r] * D + d];
}

// im2col for one image: lays out the receptive fields of output positions
// [p0, p0+np) as the columns of a matrix, so the convolution becomes a GEMM:
//   col[Cin*KH*KW, np]:  col[(c*KH + kh)*KW + kw, p - p0] = x[c, iy, ix]
//   with p = oy*Wo + ox, iy = oy*stride - pad_t + kh, ix = ox*stride - pad_l + kw
// and zero where (iy, ix) falls in the padding. x is one image [Cin,H,W].
LDM_HD void ldm_k_im2col(int64_t b, int64_t t, int64_t nt, float *col, const float *x,
                         int64_t Cin, int64_t H, int64_t W, int64_t KH, int64_t KW,
                         int64_t stride, int64_t pad_t, int64_t pad_l, int64_t Wo, int64_t p0,
                         int64_t np) {
    int64_t i = b * nt + t;
    if (i >= Cin * KH * KW * np) return;
    int64_t row = i / np, p = p0 + i % np;
    int64_t kw = row % KW, kh = (row / KW) % KH, c = row / (KW * KH);
    int64_t oy = p / Wo, ox = p % Wo;
    int64_t iy = oy * stride - pad_t + kh, ix = ox * stride - pad_l + kw;
    col[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(c * H + iy) * W + ix] : 0.0f;
}

// ============================================================================
// Row kernels with block reductions: one block per row, phases between
// barriers. Shared memory of one block:
// ============================================================================
typedef struct ldm_k_smem {
    float red[LDM_CU_THREADS]; // one partial value per thread, then the tree
    float stat[2];             // results read by later phases (mean, rstd / max, 1/sum)
} ldm_k_smem;

// Tree reduction step s (s = nt/2, nt/4, ..., 1; barrier after each):
// red[t] += red[t + s] for t < s. After the last step red[0] holds the total.
// Thread t reads red[t+s], which no thread writes in this step (t+s >= s).
LDM_HD void ldm_k_reduce_sum_step(int64_t t, int64_t s, ldm_k_smem *sm) {
    if (t < s) sm->red[t] += sm->red[t + s];
}
LDM_HD void ldm_k_reduce_max_step(int64_t t, int64_t s, ldm_k_smem *sm) {
    if (t < s) sm->red[t] = fmaxf(sm->red[t], sm->red[t + s]);
}

// ---- mean and variance of n contiguous floats (layer norm: a row of D;
//      group norm: the C/G channels x S positions of one group) ----------
// phase 1: red[t] = sum of x[j] for j = t, t+nt, ...
LDM_HD void ldm_k_moments_sum(int64_t t, int64_t nt, ldm_k_smem *sm, const float *x, int64_t n) {
    float acc = 0.0f;
    for (int64_t j = t; j < n; j += nt) acc += x[j];
    sm->red[t] = acc;
}
// phase 2 (after the reduction): thread 0 publishes mean = total / n
LDM_HD void ldm_k_moments_mean(int64_t t, ldm_k_smem *sm, int64_t n) {
    if (t == 0) sm->stat[0] = sm->red[0] / (float)n;
}
// phase 3: red[t] = sum of (x[j] - mean)^2 (two passes: no cancellation)
LDM_HD void ldm_k_moments_var(int64_t t, int64_t nt, ldm_k_smem *sm, const float *x, int64_t n) {
    float mean = sm->stat[0], acc = 0.0f;
    for (int64_t j = t; j < n; j += nt) {
        float d = x[j] - mean;
        acc += d * d;
    }
    sm->red[t] = acc;
}
// phase 4 (after the reduction): rstd = 1 / sqrt(biased var + eps)
LDM_HD void ldm_k_moments_rstd(int64_t t, ldm_k_smem *sm, int64_t n, float eps) {
    if (t == 0) sm->stat[1] = 1.0f / sqrtf(sm->red[0] / (float)n + eps);
}

// layer norm, last phase, row r of x[N,D]:
// out = (x - mean) * rstd * gamma[d] + beta[d]   (gamma/beta may be NULL)
LDM_HD void ldm_k_layer_norm_apply(int64_t r, int64_t t, int64_t nt, const ldm_k_smem *sm,
                                   float *out, const float *x, const float *gamma,
                                   const float *beta, int64_t D) {
    float mean = sm->stat[0], rstd = sm->stat[1];
    for (int64_t d = t; d < D; d += nt) {
        float y = (x[r * D + d] - mean) * rstd;
        if (gamma) y *= gamma[d];
        if (beta) y += beta[d];
        out[r * D + d] = y;
    }
}

// group norm, last phase, block g = (batch b, group gi) of x[B,C,S] with G
// groups of cg = C/G channels; the group's cg*S floats start at g*cg*S and
// element j of it is channel gi*cg + j/S.
LDM_HD void ldm_k_group_norm_apply(int64_t g, int64_t t, int64_t nt, const ldm_k_smem *sm,
                                   float *out, const float *x, const float *gamma,
                                   const float *beta, int64_t C, int64_t S, int64_t G) {
    int64_t cg = C / G, n = cg * S, base = g * n, c0 = (g % G) * cg;
    float mean = sm->stat[0], rstd = sm->stat[1];
    for (int64_t j = t; j < n; j += nt) {
        int64_t c = c0 + j / S;
        float y = (x[base + j] - mean) * rstd;
        if (gamma) y *= gamma[c];
        if (beta) y += beta[c];
        out[base + j] = y;
    }
}

// ---- softmax of row r of x[N,D], optionally causal -------------------------
// Row r keeps its first L entries; the rest get probability 0:
//   L = D                              when causal_rows == 0
//   L = min(D, q0 + r % causal_rows + 1) otherwise
// (attention: rows are [head, query-in-block] with causal_rows queries per
// block starting at query q0; query q sees keys 0..q).
LDM_HD int64_t ldm_k_softmax_len(int64_t r, int64_t D, int64_t causal_rows, int64_t q0) {
    if (causal_rows == 0) return D;
    int64_t L = q0 + r % causal_rows + 1;
    return L < D ? L : D;
}
// phase 1: red[t] = max of the thread's entries (-inf if none)
LDM_HD void ldm_k_softmax_max(int64_t r, int64_t t, int64_t nt, ldm_k_smem *sm, const float *x,
                              int64_t D, int64_t causal_rows, int64_t q0) {
    int64_t L = ldm_k_softmax_len(r, D, causal_rows, q0);
    float m = -INFINITY;
    for (int64_t j = t; j < L; j += nt) m = fmaxf(m, x[r * D + j]);
    sm->red[t] = m;
}
// phase 2 (after the max reduction): thread 0 publishes the row max
LDM_HD void ldm_k_softmax_publish_max(int64_t t, ldm_k_smem *sm) {
    if (t == 0) sm->stat[0] = sm->red[0];
}
// phase 3: out[j] = exp(x[j] - max) (0 beyond L), red[t] = sum of the thread's
// exps. Each j is read and written by the same thread, so out may == x.
LDM_HD void ldm_k_softmax_exp(int64_t r, int64_t t, int64_t nt, ldm_k_smem *sm, float *out,
                              const float *x, int64_t D, int64_t causal_rows, int64_t q0) {
    int64_t L = ldm_k_softmax_len(r, D, causal_rows, q0);
    float m = sm->stat[0], acc = 0.0f;
    for (int64_t j = t; j < D; j += nt) {
        float e = j < L ? expf(x[r * D + j] - m) : 0.0f;
        out[r * D + j] = e;
        acc += e;
    }
    sm->red[t] = acc;
}
// phase 4 (after the sum reduction): thread 0 publishes 1 / sum
LDM_HD void ldm_k_softmax_publish_inv(int64_t t, ldm_k_smem *sm) {
    if (t == 0) sm->stat[1] = 1.0f / sm->red[0];
}
// phase 5: out[j] *= 1 / sum
LDM_HD void ldm_k_softmax_normalize(int64_t r, int64_t t, int64_t nt, const ldm_k_smem *sm,
                                    float *out, int64_t D) {
    float inv = sm->stat[1];
    for (int64_t j = t; j < D; j += nt) out[r * D + j] *= inv;
}

// ============================================================================
// GEMM descriptors: one cuBLAS cublasSgemmStridedBatched call.
// cuBLAS is column-major: a row-major matrix X[R,Cc] (leading dim Cc) is the
// column-major matrix X^T (leading dim Cc). So a row-major C = A @ B is
// computed as the column-major C^T = B^T A^T: every call in cuda_host.h says
// which row-major product it is and how it maps.
//   C[i + j*ldc] (+ batch*strideC) = alpha * sum_l op(A)[i,l] op(B)[l,j] + beta * C
//   op(A) = A (m x k, A[i + l*lda]) or A^T (A stored k x m, A[l + i*lda])
// ============================================================================
typedef struct ldm_gemm {
    int transa, transb;       // 0 = CUBLAS_OP_N, 1 = CUBLAS_OP_T
    int64_t m, n, k;          // C is m x n, the inner dimension is k
    float alpha, beta;
    const float *A;           // op(A) m x k
    int64_t lda, strideA;     // strides in floats between batch entries
    const float *B;           // op(B) k x n
    int64_t ldb, strideB;
    float *C;                 // m x n
    int64_t ldc, strideC;
    int64_t batch;            // number of products
} ldm_gemm;

#endif
