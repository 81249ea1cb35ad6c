/*
 * ldm/backend/ops.h -- the op table: every piece of arithmetic the models need.
 *
 * A backend is a `struct ldm_ops` of function pointers (the idea of ggml's
 * ggml-backend-impl.h). Three backends implement it:
 *   ref   plain loops, single-threaded: the readable truth (ldm/backend/ops_ref.c)
 *   cpu   OpenBLAS sgemm + OpenMP                          (ldm/backend/ops_cpu.c)
 *   cuda  cuBLAS + kernels, built by `make cuda`           (ldm/backend/ops_cuda.cu)
 * Every backend is tested against `ref`, op by op (tests/test_ops.c).
 *
 * Two layers:
 *   1. The table entries take raw pointers and sizes, llm.c style: output
 *      first, then inputs, then weights, then dimensions. Pointers are in the
 *      backend's memory. All tensors are contiguous fp32 in PyTorch order
 *      (the *_half entries take a 16-bit weight).
 *   2. The checked wrappers below (ldm_linear, ldm_conv2d, ...) take tensors,
 *      assert the shape contract (file:line + shapes on failure), and call the
 *      table. Model code calls only these wrappers, so it never needs an
 *      #ifdef and never depends on which backend runs.
 */
#ifndef LDM_OPS_H
#define LDM_OPS_H

#include <stddef.h>
#include <stdint.h>
#include "ldm/core/tensor.h"

struct ldm_ops {
    const char *name; // "ref", "cpu", "cuda"

    // ---- memory -------------------------------------------------------
    void *(*alloc)(size_t nbytes);                              // NULL on failure
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src_host, size_t nbytes);    // host -> backend
    void (*download)(void *dst_host, const void *src, size_t nbytes);  // backend -> host
    void (*copy)(void *dst, const void *src, size_t nbytes);           // backend -> backend
    void (*set_threads)(int n);                                 // 0 = all cores; may be NULL
    // 1: alloc returns plain host memory, so a weight may also point straight
    // into an mmap'ed checkpoint (ldm/io/weights.c) instead of being copied.
    int host_memory;

    // ---- dense --------------------------------------------------------
    // out[M,N] = x[M,K] @ w[N,K]^T + b[N]   (torch.nn.Linear; b may be NULL)
    void (*linear)(float *out, const float *x, const float *w, const float *b,
                   int64_t M, int64_t K, int64_t N);

    // out[B,Cout,Ho,Wo] = conv(x[B,Cin,H,W], w[Cout,Cin,KH,KW]) + b[Cout]
    // Zero padding pad_t/pad_b/pad_l/pad_r (asymmetric allowed, e.g. the VAE
    // downsample's (0,1,0,1)), stride s in both directions, b may be NULL.
    // Ho = (H + pad_t + pad_b - KH)/s + 1, Wo = (W + pad_l + pad_r - KW)/s + 1.
    void (*conv2d)(float *out, const float *x, const float *w, const float *b,
                   int64_t B, int64_t Cin, int64_t H, int64_t W,
                   int64_t Cout, int64_t KH, int64_t KW, int64_t stride,
                   int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r);

    // ---- dense, half-precision weights ---------------------------------
    // The same two ops with w in fp16 or bf16 (wt = LDM_DTYPE_F16 / BF16),
    // x, b and out fp32: w is widened to fp32 on the fly (exactly) and the
    // arithmetic is the fp32 op's. NULL: the backend takes fp32 weights only,
    // and the loader widens half weights at load (ldm_weights_load).
    void (*linear_half)(float *out, const float *x, const uint16_t *w, ldm_dtype wt,
                        const float *b, int64_t M, int64_t K, int64_t N);
    void (*conv2d_half)(float *out, const float *x, const uint16_t *w, ldm_dtype wt,
                        const float *b, int64_t B, int64_t Cin, int64_t H, int64_t W,
                        int64_t Cout, int64_t KH, int64_t KW, int64_t stride,
                        int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r);

    // ---- normalisation ------------------------------------------------
    // x[B,C,S] (S = H*W) in G groups of C/G channels:
    // out = (x - mean_g) / sqrt(var_g + eps) * gamma[C] + beta[C]
    // (biased variance, torch.nn.GroupNorm; gamma/beta may be NULL)
    void (*group_norm)(float *out, const float *x, const float *gamma, const float *beta,
                       int64_t B, int64_t C, int64_t S, int64_t G, float eps);
    // x[N,D]: out = (x - mean) / sqrt(var + eps) * gamma[D] + beta[D]
    void (*layer_norm)(float *out, const float *x, const float *gamma, const float *beta,
                       int64_t N, int64_t D, float eps);
    // x[N,D]: out = softmax over the last dim (max-subtracted); out may == x
    void (*softmax)(float *out, const float *x, int64_t N, int64_t D);

    // ---- attention ----------------------------------------------------
    // Multi-head scaled dot-product attention, heads interleaved in the last
    // dim as torch's (B, T, NH*HS) before the head split:
    //   q[B,Tq,NH*HS], k[B,Tk,NH*HS], v[B,Tk,NH*HS] -> out[B,Tq,NH*HS]
    //   out_h = softmax(q_h k_h^T * scale [+ causal mask]) v_h
    // causal: query i sees keys j <= i (CLIP). Memory-bounded: a backend never
    // materialises more than a bounded block of the [Tq,Tk] score matrix.
    void (*attention)(float *out, const float *q, const float *k, const float *v,
                      int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                      float scale, int causal);

    // ---- elementwise (n elements; out may alias an input) -------------
    void (*silu)(float *out, const float *x, int64_t n);        // x*sigmoid(x)
    void (*gelu)(float *out, const float *x, int64_t n);        // 0.5x(1+erf(x/sqrt2))
    void (*quick_gelu)(float *out, const float *x, int64_t n);  // x*sigmoid(1.702x)
    // x[N,2F] = [a | gate] along the last dim -> out[N,F] = a * gelu(gate)
    void (*geglu)(float *out, const float *x, int64_t N, int64_t F);
    void (*add)(float *out, const float *a, const float *b, int64_t n);
    void (*mul)(float *out, const float *a, const float *b, int64_t n);
    void (*scale)(float *out, const float *a, float s, int64_t n);
    // out[B,C,S] = x[B,C,S] + y[B,C] broadcast over S (time embedding in a ResBlock)
    void (*add_channel)(float *out, const float *x, const float *y,
                        int64_t B, int64_t C, int64_t S);

    // ---- layout -------------------------------------------------------
    // x[B,C,H,W] -> out[B,C,2H,2W], nearest neighbour
    void (*upsample2x)(float *out, const float *x, int64_t B, int64_t C, int64_t H, int64_t W);
    // a[B,Ca,S], b[B,Cb,S] -> out[B,Ca+Cb,S]   (torch.cat(dim=1))
    void (*concat_channels)(float *out, const float *a, const float *b,
                            int64_t B, int64_t Ca, int64_t Cb, int64_t S);
    // x[B,M,N] -> out[B,N,M]   ([B,C,H*W] <-> [B,H*W,C] around a transformer)
    void (*transpose)(float *out, const float *x, int64_t B, int64_t M, int64_t N);
    // out[n,D] = table[ids[i],:]  (token embedding lookup; ids on the host)
    void (*embedding)(float *out, const float *table, const int32_t *ids, int64_t n, int64_t D);

    // ---- backward (training; docs/14-backpropagation.md) --------------
    // One entry per forward op above, llm.c style: the gradients first
    // (d<name> = dL/d<name>), then the upstream gradient dout = dL/dout, then
    // the forward's inputs (and, where cheaper, its output), then the sizes.
    // Every gradient is ACCUMULATED: d<name> += ..., never overwritten, so a
    // tensor used twice (a residual branch, a shared weight) sums its
    // gradients; the caller zeroes them once per step. A gradient pointer
    // may be NULL: that gradient is not wanted and not computed. Norms and
    // attention recompute their statistics from the inputs (nothing is saved
    // by the forward). NULL entries: the backend cannot train (cuda, so far);
    // the wrappers then stop with "backward ops are not implemented on ...".
    // linear: dx[M,K] += dout[M,N] w[N,K];  dw[N,K] += dout^T x;  db[N] += sum_m dout
    void (*linear_backward)(float *dx, float *dw, float *db, const float *dout,
                            const float *x, const float *w, int64_t M, int64_t K, int64_t N);
    // conv2d (same arguments as the forward): dx += conv_transpose(dout, w),
    // dw[co,ci,ky,kx] += sum dout[b,co,oy,ox] xpad[b,ci,oy*s+ky,ox*s+kx], db[co] += sum dout
    void (*conv2d_backward)(float *dx, float *dw, float *db, const float *dout,
                            const float *x, const float *w,
                            int64_t B, int64_t Cin, int64_t H, int64_t W,
                            int64_t Cout, int64_t KH, int64_t KW, int64_t stride,
                            int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r);
    // group_norm / layer_norm: x, gamma as in the forward (gamma NULL = 1)
    void (*group_norm_backward)(float *dx, float *dgamma, float *dbeta, const float *dout,
                                const float *x, const float *gamma,
                                int64_t B, int64_t C, int64_t S, int64_t G, float eps);
    void (*layer_norm_backward)(float *dx, float *dgamma, float *dbeta, const float *dout,
                                const float *x, const float *gamma, int64_t N, int64_t D,
                                float eps);
    // softmax from its output y[N,D]: dx += y * (dout - sum_j dout_j y_j)
    void (*softmax_backward)(float *dx, const float *dout, const float *y, int64_t N, int64_t D);
    // attention (same arguments as the forward); the probabilities are
    // recomputed one query row at a time (memory-bounded like the forward)
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout,
                               const float *q, const float *k, const float *v,
                               int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                               float scale, int causal);
    // elementwise: dx += dout * f'(x)
    void (*silu_backward)(float *dx, const float *dout, const float *x, int64_t n);
    void (*gelu_backward)(float *dx, const float *dout, const float *x, int64_t n);
    void (*quick_gelu_backward)(float *dx, const float *dout, const float *x, int64_t n);
    // geglu: dx[N,2F] (= [da | dgate]) from dout[N,F] and x[N,2F]
    void (*geglu_backward)(float *dx, const float *dout, const float *x, int64_t N, int64_t F);
    // add: da += dout, db += dout;  mul: da += dout*b, db += dout*a;  scale: da += s*dout
    void (*add_backward)(float *da, float *db, const float *dout, int64_t n);
    void (*mul_backward)(float *da, float *db, const float *dout, const float *a,
                         const float *b, int64_t n);
    void (*scale_backward)(float *da, const float *dout, float s, int64_t n);
    // add_channel: dx[B,C,S] += dout;  dy[B,C] += sum over S of dout
    void (*add_channel_backward)(float *dx, float *dy, const float *dout,
                                 int64_t B, int64_t C, int64_t S);
    // upsample2x: dx[b,c,y,x] += the 2x2 block of dout it was copied to
    void (*upsample2x_backward)(float *dx, const float *dout,
                                int64_t B, int64_t C, int64_t H, int64_t W);
    // concat_channels: da[B,Ca,S], db[B,Cb,S] += their channels of dout[B,Ca+Cb,S]
    void (*concat_channels_backward)(float *da, float *db, const float *dout,
                                     int64_t B, int64_t Ca, int64_t Cb, int64_t S);
    // transpose: dx[b,m,n] += dout[b,n,m]   (x [B,M,N], dout [B,N,M])
    void (*transpose_backward)(float *dx, const float *dout, int64_t B, int64_t M, int64_t N);
    // embedding: dtable[ids[i],:] += dout[i,:]  (a repeated id sums its rows)
    void (*embedding_backward)(float *dtable, const float *dout, const int32_t *ids,
                               int64_t n, int64_t D);
};

// ---- backends ---------------------------------------------------------
extern const struct ldm_ops ldm_ops_ref;
extern const struct ldm_ops ldm_ops_cpu;
// "ref", "cpu" (and "cuda" when built with it). NULL + ldm_error if unknown.
const struct ldm_ops *ldm_backend(const char *name);
// The backend used when a caller names none: "cpu". (The CLI's main reads
// $LDM_BACKEND and passes ldm_backend(name) down; the library reads no environment.)
const struct ldm_ops *ldm_backend_default(void);

// ---- checked wrappers: what model code calls --------------------------
// Each asserts its shape contract, then calls t->ops->op. Shapes as above.
// Every tensor is fp32, except the weight w of ldm_linear / ldm_conv2d, which
// may also be F16 or BF16 (then linear_half / conv2d_half is called).
void ldm_linear(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w, const ldm_tensor *b);
void ldm_conv2d(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *w, const ldm_tensor *b,
                int64_t stride, int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r);
void ldm_group_norm(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *gamma,
                    const ldm_tensor *beta, int64_t groups, float eps);
void ldm_layer_norm(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *gamma,
                    const ldm_tensor *beta, float eps);
void ldm_softmax(ldm_tensor *out, const ldm_tensor *x);
void ldm_attention(ldm_tensor *out, const ldm_tensor *q, const ldm_tensor *k,
                   const ldm_tensor *v, int64_t NH, float scale, int causal);
void ldm_silu(ldm_tensor *out, const ldm_tensor *x);
void ldm_gelu(ldm_tensor *out, const ldm_tensor *x);
void ldm_quick_gelu(ldm_tensor *out, const ldm_tensor *x);
void ldm_geglu(ldm_tensor *out, const ldm_tensor *x);
void ldm_add(ldm_tensor *out, const ldm_tensor *a, const ldm_tensor *b);
void ldm_mul(ldm_tensor *out, const ldm_tensor *a, const ldm_tensor *b);
void ldm_scale(ldm_tensor *out, const ldm_tensor *a, float s);
void ldm_add_channel(ldm_tensor *out, const ldm_tensor *x, const ldm_tensor *y);
void ldm_upsample2x(ldm_tensor *out, const ldm_tensor *x);
void ldm_concat_channels(ldm_tensor *out, const ldm_tensor *a, const ldm_tensor *b);
void ldm_transpose(ldm_tensor *out, const ldm_tensor *x);
void ldm_embedding(ldm_tensor *out, const ldm_tensor *table, const int32_t *ids, int64_t n);
void ldm_copy(ldm_tensor *out, const ldm_tensor *x);

// ---- checked wrappers of the backward ops (training) -------------------
// Gradients first, each ACCUMULATED (+=) and each may be NULL (not wanted);
// then the upstream gradient dout (the shape of the forward's out), then the
// forward's inputs as they were passed to it. A gradient has the shape of
// what it is the gradient of. Weights must be fp32 (training is fp32).
// 1 when `ops` implements every backward entry, else 0 and ldm_error
// ("backward ops are not implemented on cuda yet"): a training program
// checks this once before its first step.
int ldm_backend_can_train(const struct ldm_ops *ops);
void ldm_linear_backward(ldm_tensor *dx, ldm_tensor *dw, ldm_tensor *db, const ldm_tensor *dout,
                         const ldm_tensor *x, const ldm_tensor *w);
void ldm_conv2d_backward(ldm_tensor *dx, ldm_tensor *dw, ldm_tensor *db, const ldm_tensor *dout,
                         const ldm_tensor *x, const ldm_tensor *w, int64_t stride,
                         int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r);
void ldm_group_norm_backward(ldm_tensor *dx, ldm_tensor *dgamma, ldm_tensor *dbeta,
                             const ldm_tensor *dout, const ldm_tensor *x,
                             const ldm_tensor *gamma, int64_t groups, float eps);
void ldm_layer_norm_backward(ldm_tensor *dx, ldm_tensor *dgamma, ldm_tensor *dbeta,
                             const ldm_tensor *dout, const ldm_tensor *x,
                             const ldm_tensor *gamma, float eps);
// y: the forward's output softmax(x)
void ldm_softmax_backward(ldm_tensor *dx, const ldm_tensor *dout, const ldm_tensor *y);
void ldm_attention_backward(ldm_tensor *dq, ldm_tensor *dk, ldm_tensor *dv,
                            const ldm_tensor *dout, const ldm_tensor *q, const ldm_tensor *k,
                            const ldm_tensor *v, int64_t NH, float scale, int causal);
void ldm_silu_backward(ldm_tensor *dx, const ldm_tensor *dout, const ldm_tensor *x);
void ldm_gelu_backward(ldm_tensor *dx, const ldm_tensor *dout, const ldm_tensor *x);
void ldm_quick_gelu_backward(ldm_tensor *dx, const ldm_tensor *dout, const ldm_tensor *x);
void ldm_geglu_backward(ldm_tensor *dx, const ldm_tensor *dout, const ldm_tensor *x);
void ldm_add_backward(ldm_tensor *da, ldm_tensor *db, const ldm_tensor *dout);
void ldm_mul_backward(ldm_tensor *da, ldm_tensor *db, const ldm_tensor *dout,
                      const ldm_tensor *a, const ldm_tensor *b);
void ldm_scale_backward(ldm_tensor *da, const ldm_tensor *dout, float s);
void ldm_add_channel_backward(ldm_tensor *dx, ldm_tensor *dy, const ldm_tensor *dout);
void ldm_upsample2x_backward(ldm_tensor *dx, const ldm_tensor *dout);
void ldm_concat_channels_backward(ldm_tensor *da, ldm_tensor *db, const ldm_tensor *dout);
void ldm_transpose_backward(ldm_tensor *dx, const ldm_tensor *dout);
void ldm_embedding_backward(ldm_tensor *dtable, const ldm_tensor *dout, const int32_t *ids,
                            int64_t n);

#endif
