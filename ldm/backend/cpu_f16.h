/*
 * ldm/backend/cpu_f16.h -- the `cpu` backend's linear and conv2d for fp16 /
 * bf16 weights (struct ldm_ops linear_half / conv2d_half; ldm/backend/cpu_f16.c).
 */
#ifndef LDM_CPU_F16_H
#define LDM_CPU_F16_H

#include <stdint.h>
#include "ldm/core/tensor.h"

// out[M,N] = x[M,K] @ w[N,K]^T + b[N], w fp16/bf16
void ldm_cpu_linear_half(float *out, const float *x, const uint16_t *w, ldm_dtype wt,
                         const float *b, int64_t M, int64_t K, int64_t N);
// out[B,Cout,Ho,Wo] = conv(x[B,Cin,H,W], w[Cout,Cin,KH,KW]) + b[Cout], w fp16/bf16
void ldm_cpu_conv2d_half(float *out, const float *x, const uint16_t *w, ldm_dtype wt,
                         const float *b, int64_t B, int64_t Cin, int64_t H, int64_t W,
                         int64_t Cout, int64_t KH, int64_t KW, int64_t stride,
                         int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r);

#endif
