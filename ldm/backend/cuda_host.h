/*
 * ldm/backend/cuda_host.h -- the host side of the `cuda` backend: how each op of
 * struct ldm_ops becomes kernel launches and cuBLAS calls. Shared, word for
 * word, by the real backend (ldm/backend/ops_cuda.cu) and its CPU emulation
 * (ldm/backend/ops_cuda_emu.c), so the emulated tests also cover every launch
 * (kernel, grid, arguments), the GEMM arguments (transposes, leading
 * dimensions, batch strides), the bias passes, the im2col chunking and the
 * attention query blocks.
 *
 * This file is included (once) by a backend after the kernels
 * (ldm/backend/cuda_kernels.h) and after it has defined
 *   LAUNCH(kernel, blocks, threads, args...)   kernel<<<blocks, threads>>>(args...)
 *       -- the real launch plus an error check in ops_cuda.cu, loops over the
 *       blocks and threads in ops_cuda_emu.c;
 * and it defines the functions declared just below (the backend's memory and
 * cuBLAS). It defines the static functions cuh_<op>, which the backend puts
 * in its struct ldm_ops. It must compile as C11 and as C++ (nvcc).
 *
 * Memory bound: the only large temporaries are the im2col columns and the
 * attention scores; both are produced in chunks that fit the workspace
 * (cu_workspace_limit: ldm_cuda_options.workspace_mb, default 256 MiB), so
 * the [Tq,Tk] score matrix of a 64x64 latent (4096 x 4096 per head) is never
 * held whole.
 */
#ifndef LDM_CUDA_HOST_H
#define LDM_CUDA_HOST_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/ops_cuda.h"
#include "ldm/backend/cuda_kernels.h"

// ============================================================================
// GEMM descriptors: one cuBLAS cublasSgemmStridedBatched call.
// cuBLAS is column-major: a row-major matrix X[R,Cc] (leading dim Cc) is the
// column-major matrix X^T (leading dim Cc). So a row-major C = A @ B is
// computed as the column-major C^T = B^T A^T: every call below says which
// row-major product it is and how it maps.
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

// ---- what each backend defines ---------------------------------------------------
static void cu_gemm(const ldm_gemm *g);            // one strided-batched SGEMM
static float *cu_workspace(int64_t nfloats);       // scratch of >= nfloats floats
static int64_t cu_workspace_limit(void);           // preferred scratch size (floats)
static void cu_copy_in(void *dst, const void *src_host, size_t nbytes);
static void cu_copy(void *dst, const void *src, size_t nbytes);

// Workspace size in floats for ldm_cuda_options.workspace_mb (0: 256 MiB).
static int64_t cuh_workspace_floats(int64_t mb) {
    return (mb > 0 ? mb : 256) * (1 << 20) / (int64_t)sizeof(float);
}

// Blocks needed to give each of n elements one thread.
static int64_t cuh_blocks(int64_t n) { return (n + LDM_CU_THREADS - 1) / LDM_CU_THREADS; }

static int64_t cuh_min(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t cuh_max(int64_t a, int64_t b) { return a > b ? a : b; }

// One GEMM, not batched. Row-major reading of the arguments in the callers.
static void cuh_gemm1(int transa, int transb, int64_t m, int64_t n, int64_t k, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                      float *C, int64_t ldc) {
    ldm_gemm g;
    memset(&g, 0, sizeof g);
    g.transa = transa; g.transb = transb;
    g.m = m; g.n = n; g.k = k;
    g.alpha = alpha; g.beta = beta;
    g.A = A; g.lda = lda;
    g.B = B; g.ldb = ldb;
    g.C = C; g.ldc = ldc;
    g.batch = 1;
    cu_gemm(&g);
}

// ---- dense ------------------------------------------------------------------

// x[M,K] @ w[N,K]^T + b[N] -> out[M,N]
// Row-major out = x w^T  <=>  column-major out^T (N x M, ld N) = w (as stored:
// column-major K x N, so OP_T) times x^T (column-major K x M, OP_N).
static void cuh_linear(float *out, const float *x, const float *w, const float *b, int64_t M,
                       int64_t K, int64_t N) {
    if (M == 0 || N == 0) return;
    cuh_gemm1(1, 0, N, M, K, 1.0f, w, K, x, K, 0.0f, out, N);
    if (b)   // out[m,n] += b[n]
        LAUNCH(add_bias_kernel, cuh_blocks(M * N), LDM_CU_THREADS, out, b, M * N, N, 1);
}

// x[B,Cin,H,W] (*) w[Cout,Cin,KH,KW] + b[Cout] -> out[B,Cout,Ho,Wo]
// As a GEMM per image: out_b[Cout, P] = w[Cout, CKK] @ col[CKK, P], with
// P = Ho*Wo output positions and CKK = Cin*KH*KW (im2col in cuda_kernels.h).
// Column-major: out_b^T (P x Cout, ld P) = col^T (P x CKK, ld P, OP_N) times
// w^T (CKK x Cout, ld CKK, OP_N). The columns are built for at most `chunk`
// positions at a time so the col buffer stays within the workspace.
static void cuh_conv2d(float *out, const float *x, const float *w, const float *b, int64_t B,
                       int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t KH, int64_t KW,
                       int64_t stride, int64_t pad_t, int64_t pad_b, int64_t pad_l,
                       int64_t pad_r) {
    int64_t Ho = (H + pad_t + pad_b - KH) / stride + 1, Wo = (W + pad_l + pad_r - KW) / stride + 1;
    int64_t P = Ho * Wo, CKK = Cin * KH * KW;
    if (B == 0 || Cout == 0 || P == 0) return;
    if (KH == 1 && KW == 1 && stride == 1 && pad_t + pad_b + pad_l + pad_r == 0) {
        // 1x1 convolution: image b is already the [Cin, P] matrix; one batched
        // GEMM over the images (w shared: strideB = 0).
        ldm_gemm g;
        memset(&g, 0, sizeof g);
        g.transa = 0; g.transb = 0;
        g.m = P; g.n = Cout; g.k = Cin;
        g.alpha = 1.0f; g.beta = 0.0f;
        g.A = x; g.lda = P; g.strideA = Cin * H * W;
        g.B = w; g.ldb = Cin; g.strideB = 0;
        g.C = out; g.ldc = P; g.strideC = Cout * P;
        g.batch = B;
        cu_gemm(&g);
    } else {
        int64_t chunk = cuh_max(1, cuh_min(P, cu_workspace_limit() / cuh_max(CKK, 1)));
        float *col = cu_workspace(CKK * chunk);
        for (int64_t bi = 0; bi < B; bi++) {
            const float *xb = x + bi * Cin * H * W;
            float *ob = out + bi * Cout * P;
            for (int64_t p0 = 0; p0 < P; p0 += chunk) {
                int64_t np = cuh_min(chunk, P - p0);
                // col[CKK, np] for positions p0..p0+np-1
                LAUNCH(im2col_kernel, cuh_blocks(CKK * np), LDM_CU_THREADS, col, xb, Cin, H, W, KH,
                       KW, stride, pad_t, pad_l, Wo, p0, np);
                // out_b[:, p0:p0+np] = w @ col  (column-major: rows p0.. of out_b^T)
                cuh_gemm1(0, 0, np, Cout, CKK, 1.0f, col, np, w, CKK, 0.0f, ob + p0, P);
            }
        }
    }
    if (b)   // out[b,c,p] += bias[c]
        LAUNCH(add_bias_kernel, cuh_blocks(B * Cout * P), LDM_CU_THREADS, out, b, B * Cout * P,
               Cout, P);
}

// ---- normalisation (one block per row / group) ---------------------------------

static void cuh_group_norm(float *out, const float *x, const float *gamma, const float *beta,
                           int64_t B, int64_t C, int64_t S, int64_t G, float eps) {
    if (B * C * S == 0) return;
    LAUNCH(group_norm_kernel, B * G, LDM_CU_THREADS, out, x, gamma, beta, C, S, G, eps);
}

static void cuh_layer_norm(float *out, const float *x, const float *gamma, const float *beta,
                           int64_t N, int64_t D, float eps) {
    if (N * D == 0) return;
    LAUNCH(layer_norm_kernel, N, LDM_CU_THREADS, out, x, gamma, beta, D, eps);
}

static void cuh_softmax(float *out, const float *x, int64_t N, int64_t D) {
    if (N * D == 0) return;
    LAUNCH(softmax_rows_kernel, N, LDM_CU_THREADS, out, x, D, 0, 0);
}

// ---- attention ------------------------------------------------------------------

// q[B,Tq,NH*HS], k/v[B,Tk,NH*HS] -> out[B,Tq,NH*HS]; per image b and per block
// of nq queries starting at q0, for all NH heads at once (batched GEMMs whose
// batch stride HS steps from one head's columns to the next):
//   S_h[nq,Tk] = scale * Q_h[nq,HS] K_h[Tk,HS]^T      (cuBLAS, alpha = scale)
//     column-major S_h^T (Tk x nq, ld Tk) = K_h (stored HS x Tk, ld D, OP_T)
//                                          x Q_h^T (HS x nq, ld D, OP_N)
//   P_h = softmax over each row of S_h (causal: query q0+i sees keys 0..q0+i)
//   O_h[nq,HS] = P_h[nq,Tk] V_h[Tk,HS]
//     column-major O_h^T (HS x nq, ld D) = V_h^T (HS x Tk, ld D, OP_N)
//                                          x P_h^T (Tk x nq, ld Tk, OP_N)
// The score block [NH, nq, Tk] lives in the workspace: nq is chosen so that it
// fits, so memory is bounded however long the sequence.
static void cuh_attention(float *out, const float *q, const float *k, const float *v, int64_t B,
                          int64_t Tq, int64_t Tk, int64_t NH, int64_t HS, float scale,
                          int causal) {
    int64_t D = NH * HS;
    if (B == 0 || Tq == 0 || Tk == 0 || D == 0) return;
    int64_t qblock = cuh_max(1, cuh_min(Tq, cu_workspace_limit() / (NH * Tk)));
    float *S = cu_workspace(NH * qblock * Tk);
    for (int64_t bi = 0; bi < B; bi++) {
        for (int64_t q0 = 0; q0 < Tq; q0 += qblock) {
            int64_t nq = cuh_min(qblock, Tq - q0);
            ldm_gemm g;
            memset(&g, 0, sizeof g);
            g.transa = 1; g.transb = 0;
            g.m = Tk; g.n = nq; g.k = HS;
            g.alpha = scale; g.beta = 0.0f;
            g.A = k + bi * Tk * D; g.lda = D; g.strideA = HS;
            g.B = q + (bi * Tq + q0) * D; g.ldb = D; g.strideB = HS;
            g.C = S; g.ldc = Tk; g.strideC = nq * Tk;
            g.batch = NH;
            cu_gemm(&g);

            // rows of S are (head, query in block): NH*nq rows of Tk scores
            LAUNCH(softmax_rows_kernel, NH * nq, LDM_CU_THREADS, S, S, Tk, causal ? nq : 0, q0);

            memset(&g, 0, sizeof g);
            g.transa = 0; g.transb = 0;
            g.m = HS; g.n = nq; g.k = Tk;
            g.alpha = 1.0f; g.beta = 0.0f;
            g.A = v + bi * Tk * D; g.lda = D; g.strideA = HS;
            g.B = S; g.ldb = Tk; g.strideB = nq * Tk;
            g.C = out + (bi * Tq + q0) * D; g.ldc = D; g.strideC = HS;
            g.batch = NH;
            cu_gemm(&g);
        }
    }
}

// ---- elementwise ----------------------------------------------------------------

static void cuh_silu(float *out, const float *x, int64_t n) {
    if (n) LAUNCH(silu_kernel, cuh_blocks(n), LDM_CU_THREADS, out, x, n);
}
static void cuh_gelu(float *out, const float *x, int64_t n) {
    if (n) LAUNCH(gelu_kernel, cuh_blocks(n), LDM_CU_THREADS, out, x, n);
}
static void cuh_quick_gelu(float *out, const float *x, int64_t n) {
    if (n) LAUNCH(quick_gelu_kernel, cuh_blocks(n), LDM_CU_THREADS, out, x, n);
}

// x[N,2F] -> out[N,F]. The kernel needs out apart from x: an in-place call
// (out overlapping x) goes through the workspace.
static void cuh_geglu(float *out, const float *x, int64_t N, int64_t F) {
    if (N * F == 0) return;
    uintptr_t o0 = (uintptr_t)out, o1 = (uintptr_t)(out + N * F);
    uintptr_t x0 = (uintptr_t)x, x1 = (uintptr_t)(x + N * 2 * F);
    if (o0 < x1 && x0 < o1) {
        float *tmp = cu_workspace(N * F);
        LAUNCH(geglu_kernel, cuh_blocks(N * F), LDM_CU_THREADS, tmp, x, N, F);
        cu_copy(out, tmp, (size_t)(N * F) * sizeof(float));
    } else {
        LAUNCH(geglu_kernel, cuh_blocks(N * F), LDM_CU_THREADS, out, x, N, F);
    }
}

static void cuh_add(float *out, const float *a, const float *b, int64_t n) {
    if (n) LAUNCH(add_kernel, cuh_blocks(n), LDM_CU_THREADS, out, a, b, n);
}
static void cuh_mul(float *out, const float *a, const float *b, int64_t n) {
    if (n) LAUNCH(mul_kernel, cuh_blocks(n), LDM_CU_THREADS, out, a, b, n);
}
static void cuh_scale(float *out, const float *a, float s, int64_t n) {
    if (n) LAUNCH(scale_kernel, cuh_blocks(n), LDM_CU_THREADS, out, a, s, n);
}
static void cuh_add_channel(float *out, const float *x, const float *y, int64_t B, int64_t C,
                            int64_t S) {
    if (B * C * S != 0)
        LAUNCH(add_channel_kernel, cuh_blocks(B * C * S), LDM_CU_THREADS, out, x, y, B, C, S);
}

// ---- layout -----------------------------------------------------------------------

static void cuh_upsample2x(float *out, const float *x, int64_t B, int64_t C, int64_t H,
                           int64_t W) {
    if (B * C * H * W != 0)
        LAUNCH(upsample2x_kernel, cuh_blocks(B * C * 4 * H * W), LDM_CU_THREADS, out, x, B, C, H,
               W);
}
static void cuh_concat_channels(float *out, const float *a, const float *b, int64_t B,
                                int64_t Ca, int64_t Cb, int64_t S) {
    if (B * (Ca + Cb) * S != 0)
        LAUNCH(concat_channels_kernel, cuh_blocks(B * (Ca + Cb) * S), LDM_CU_THREADS, out, a, b, B,
               Ca, Cb, S);
}
// One block per 32x32 tile of each image.
static void cuh_transpose(float *out, const float *x, int64_t B, int64_t M, int64_t N) {
    int64_t tiles = ((M + LDM_CU_TILE - 1) / LDM_CU_TILE) * ((N + LDM_CU_TILE - 1) / LDM_CU_TILE);
    if (B * M * N != 0) LAUNCH(transpose_kernel, B * tiles, LDM_CU_THREADS, out, x, M, N);
}

// ids[n] are on the host: copy them into the workspace (int32 has the size of
// a float), then gather the rows on the device.
static void cuh_embedding(float *out, const float *table, const int32_t *ids, int64_t n,
                          int64_t D) {
    if (n * D == 0) return;
    int32_t *dev_ids = (int32_t *)cu_workspace(n);
    cu_copy_in(dev_ids, ids, (size_t)n * sizeof(int32_t));
    LAUNCH(embedding_kernel, cuh_blocks(n * D), LDM_CU_THREADS, out, table, dev_ids, n, D);
}

#endif
