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

#endif
