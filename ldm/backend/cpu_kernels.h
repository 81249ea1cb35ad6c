/*
 * ldm/backend/cpu_kernels.h -- the kernels behind the `cpu` backend's conv2d
 * and attention, each callable on its own so that tests/test_ops.c can hold
 * every variant against `ref` and tools/bench can time old against new on
 * the same shapes in one process. Model code never calls these: it goes
 * through the op table (ops.h), whose cpu entries pick a kernel by shape.
 *
 *   conv2d     cpu_conv2d_im2col     im2col + sgemm, any shape (ops_cpu.c)
 *              cpu_conv3x3_winograd  F(4x4,3x3) for 3x3 stride 1 (cpu_winograd.c)
 *   attention  cpu_attention_sgemm   two sgemms per query block (ops_cpu.c)
 *              cpu_attention_flash   online softmax over key blocks (cpu_attention.c)
 */
#ifndef LDM_CPU_KERNELS_H
#define LDM_CPU_KERNELS_H

#include <stdint.h>

// ---- SIMD level of the hand-written micro-kernels -------------------------------
// The build targets one baseline (AVX2 + FMA, -march of the building machine);
// kernels with an AVX-512 variant pick it at run time when the CPU has
// AVX-512F (__builtin_cpu_supports), so one binary runs the AVX2 path on,
// e.g., AMD Zen 3 and the AVX-512 one on a Xeon. Both give the same results
// (tests/test_ops.c runs each against `ref` and against the other).
typedef enum { CPU_SIMD_AUTO, CPU_SIMD_AVX2, CPU_SIMD_AVX512 } cpu_simd;
// CPU_SIMD_AVX512 when this CPU has AVX-512F, else CPU_SIMD_AVX2.
cpu_simd cpu_simd_best(void);

// ---- conv2d: same contract as ldm_ops.conv2d (ops.h) ---------------------------

// im2col + sgemm (1x1 unpadded: sgemm on the input directly), every shape.
// nthreads: threads of OpenMP and OpenBLAS for this call.
void cpu_conv2d_im2col(float *out, const float *x, const float *w, const float *b,
                       int64_t B, int64_t Cin, int64_t H, int64_t W,
                       int64_t Cout, int64_t KH, int64_t KW, int64_t stride,
                       int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r, int nthreads);

// 1 when conv2d(x[B,Cin,H,W], w[Cout,Cin,KH,KW], stride, pads) is a shape the
// Winograd path handles and is faster on: 3x3, stride 1, the same padding
// p <= 1 on all four sides, and enough channels and output tiles for the
// transform GEMMs to pay (thresholds measured by `make bench`).
int cpu_winograd_fits(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout,
                      int64_t KH, int64_t KW, int64_t stride,
                      int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r);

// out[B,Cout,Ho,Wo] = conv3x3(x[B,Cin,H,W], w[Cout,Cin,3,3], zero padding p
// on every side, stride 1) + bias[Cout] (bias may be NULL); Ho = H + 2p - 2.
// nthreads: OpenMP threads for the transforms and the per-point GEMMs
// (OpenBLAS is held at one thread inside them). Returns 0, or -1 when out of
// memory (nothing written).
int cpu_conv3x3_winograd(float *out, const float *x, const float *w, const float *bias,
                         int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout,
                         int64_t pad, int nthreads);

// ---- attention: same contract as ldm_ops.attention (ops.h) -------------------

// Per (batch, head, block of 128 query rows): S = Q K^T (sgemm) over all keys,
// P = exp(S - rowmax), O = P V (sgemm), O /= rowsum. Aborts if a thread's
// [128, Tk] score block cannot be allocated.
void cpu_attention_sgemm(float *out, const float *q, const float *k, const float *v,
                         int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                         float scale, int causal, int nthreads);

// The same fused: an online softmax over blocks of 240 keys (FlashAttention)
// with AVX2/FMA (or AVX-512, see cpu_simd) micro-kernels for Q K^T and P V; per thread only a [4, 240]
// score block and its head's keys transposed ([HS, Tk]). Returns -1, with
// nothing written, when HS is not a multiple of 8 or the build lacks AVX2 +
// FMA; -1 also when a thread's scratch could not be allocated (out then
// incomplete). 0 on success.
int cpu_attention_flash(float *out, const float *q, const float *k, const float *v,
                        int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                        float scale, int causal, int nthreads);
// The same with the micro-kernels named (CPU_SIMD_AUTO: cpu_simd_best()):
// -1, nothing written, also when the CPU lacks the level asked for.
int cpu_attention_flash_simd(float *out, const float *q, const float *k, const float *v,
                             int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                             float scale, int causal, int nthreads, cpu_simd simd);

#endif
