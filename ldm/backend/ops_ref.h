/*
 * ldm/backend/ops_ref.h -- the `ref` backend's backward functions
 * (ldm/backend/ops_ref.c, "backward"), by name, for the backends that have no
 * faster version of one yet and put the readable one in their table.
 * Arguments and accumulate (+=) semantics: struct ldm_ops, ldm/backend/ops.h.
 */
#ifndef LDM_OPS_REF_H
#define LDM_OPS_REF_H

#include <stdint.h>

void ldm_ref_linear_backward(float *dx, float *dw, float *db, const float *dout,
                             const float *x, const float *w, int64_t M, int64_t K, int64_t N);
void ldm_ref_conv2d_backward(float *dx, float *dw, float *db, const float *dout,
                             const float *x, const float *w,
                             int64_t B, int64_t Cin, int64_t H, int64_t W,
                             int64_t Cout, int64_t KH, int64_t KW, int64_t s,
                             int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r);
void ldm_ref_group_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dout,
                                 const float *x, const float *gamma,
                                 int64_t B, int64_t C, int64_t S, int64_t G, float eps);
void ldm_ref_layer_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dout,
                                 const float *x, const float *gamma, int64_t N, int64_t D,
                                 float eps);
void ldm_ref_softmax_backward(float *dx, const float *dout, const float *y, int64_t N, int64_t D);
void ldm_ref_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                const float *q, const float *k, const float *v,
                                int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                                float scale, int causal);
void ldm_ref_silu_backward(float *dx, const float *dout, const float *x, int64_t n);
void ldm_ref_gelu_backward(float *dx, const float *dout, const float *x, int64_t n);
void ldm_ref_quick_gelu_backward(float *dx, const float *dout, const float *x, int64_t n);
void ldm_ref_geglu_backward(float *dx, const float *dout, const float *x, int64_t N, int64_t F);
void ldm_ref_add_backward(float *da, float *db, const float *dout, int64_t n);
void ldm_ref_mul_backward(float *da, float *db, const float *dout, const float *a,
                          const float *b, int64_t n);
void ldm_ref_scale_backward(float *da, const float *dout, float s, int64_t n);
void ldm_ref_add_channel_backward(float *dx, float *dy, const float *dout,
                                  int64_t B, int64_t C, int64_t S);
void ldm_ref_upsample2x_backward(float *dx, const float *dout,
                                 int64_t B, int64_t C, int64_t H, int64_t W);
void ldm_ref_concat_channels_backward(float *da, float *db, const float *dout,
                                      int64_t B, int64_t Ca, int64_t Cb, int64_t S);
void ldm_ref_transpose_backward(float *dx, const float *dout, int64_t B, int64_t M, int64_t N);
void ldm_ref_embedding_backward(float *dtable, const float *dout, const int32_t *ids,
                                int64_t n, int64_t D);

#endif
