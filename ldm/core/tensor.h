/*
 * ldm/core/tensor.h -- the tensor type every module of ldm.c passes around.
 *
 * A tensor is fp32 (activations always; weights may also be fp16 or bf16,
 * see `dtype` below), in PyTorch order (NCHW for images, [B,T,C] for tokens),
 * row-major and contiguous: element (i0,i1,...,in) lives at
 * data[((i0*s1 + i1)*s2 + ...)]. That is exactly how torch stores a
 * contiguous tensor, so a .npy dumped by PyTorch and a buffer here index
 * the same way.
 *
 * Memory belongs to a backend (struct ldm_ops, ldm/backend/ops.h): on `ref` and `cpu`
 * it is host memory, on `cuda` it is device memory. A view shares the data of
 * another tensor with a different shape (reshape without copy) and never frees.
 *
 * Shape notation, used in comments throughout ldm.c (declared once, here):
 *   B   batch                       C   channels
 *   H,W height, width               T   tokens (sequence length)
 *   D   model width (= NH*HS)       NH  attention heads
 *   HS  head size                   F   feed-forward width
 *   Tq,Tk query and key lengths     G   groups (group norm)
 */
#ifndef LDM_TENSOR_H
#define LDM_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define LDM_MAX_DIMS 8

struct ldm_ops;

// Element types. A tensor is one of the first three; the others are only
// ever stored in checkpoint files (ldm/io/tensorfile.h) and widened on load.
typedef enum ldm_dtype {
    LDM_DTYPE_F32, LDM_DTYPE_F16, LDM_DTYPE_BF16, LDM_DTYPE_F64,
    LDM_DTYPE_I64, LDM_DTYPE_I32, LDM_DTYPE_I16, LDM_DTYPE_I8, LDM_DTYPE_U8,
    LDM_DTYPE_BOOL,
} ldm_dtype;

typedef struct ldm_tensor {
    float *data;                 // numel floats in the memory of `ops`
                                 // (F16/BF16: numel uint16_t, read as (const uint16_t *)data)
    int ndim;                    // 0..LDM_MAX_DIMS
    int64_t shape[LDM_MAX_DIMS]; // shape[0..ndim-1], PyTorch order
    int64_t numel;               // product of shape
    const struct ldm_ops *ops;   // the backend whose memory `data` is in
    int owns;                    // 1: ldm_tensor_free releases data; 0: view (or a
                                 // weight that points into an mmap'ed checkpoint)
    ldm_dtype dtype;             // LDM_DTYPE_F32 (0, every activation); a weight
                                 // matrix may be F16 or BF16 (linear/conv2d only)
} ldm_tensor;

// Shape literal for the constructors: LDM_SHAPE(B, C, H, W).
#define LDM_SHAPE(...) ((const int64_t[]){__VA_ARGS__}), \
    ((int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))

// New tensor in backend `ops` memory, uninitialised. On failure (bad shape,
// out of memory) returns a tensor with data == NULL and sets ldm_error.
//   ldm_tensor x = ldm_tensor_new(ops, LDM_SHAPE(B, C, H, W));
ldm_tensor ldm_tensor_new(const struct ldm_ops *ops, const int64_t *shape, int ndim);
// Same with element type `dtype` (F32, F16 or BF16): numel * 4 or 2 bytes.
ldm_tensor ldm_tensor_new_dtype(const struct ldm_ops *ops, const int64_t *shape, int ndim,
                                ldm_dtype dtype);
// Same, filled with zeros.
ldm_tensor ldm_tensor_zeros(const struct ldm_ops *ops, const int64_t *shape, int ndim);
// Release the data if owned; safe on a zeroed struct and on views.
void ldm_tensor_free(ldm_tensor *t);
// View of t's data with another shape of the same numel (asserts that).
ldm_tensor ldm_tensor_view(const ldm_tensor *t, const int64_t *shape, int ndim);
// View of rows [start, start+count) along dim 0 (contiguous slice).
ldm_tensor ldm_tensor_slice0(const ldm_tensor *t, int64_t start, int64_t count);

// Host <-> tensor copies (through the backend's upload/download). fp32 only.
void ldm_tensor_from_host(ldm_tensor *t, const float *src);   // src has t->numel floats
void ldm_tensor_to_host(float *dst, const ldm_tensor *t);     // dst has t->numel floats

// Product of shape with overflow check; returns -1 on overflow or a negative dim.
int64_t ldm_shape_numel(const int64_t *shape, int ndim);
// "[2,4,64,64]" into buf (always terminated); returns buf.
char *ldm_shape_str(char *buf, size_t n, const int64_t *shape, int ndim);
int ldm_shape_equal(const ldm_tensor *a, const ldm_tensor *b);
// Bytes per element of a tensor dtype: 4 (F32) or 2 (F16, BF16).
size_t ldm_tensor_elem_size(ldm_dtype dtype);

// Half-precision weights. Widening is exact (every fp16/bf16 value is a
// float); narrowing rounds to nearest even (fp16 overflows to inf).
float ldm_f16_to_f32(uint16_t h);
float ldm_bf16_to_f32(uint16_t h);
uint16_t ldm_f32_to_f16(float f);
uint16_t ldm_f32_to_bf16(float f);

// For gdb: `call ldm_tensor_describe(&x, "x")` prints shape, min/max/mean/std
// and the first values. Works for every backend (downloads a host copy).
void ldm_tensor_describe(const ldm_tensor *t, const char *name);

/*
 * Shape contracts between ops. These are internal invariants, not user-input
 * checks: a failure is a bug, so it prints file:line, the expression and the
 * shapes involved, then aborts (gdb stops right there).
 *   LDM_ASSERT(x->ndim == 4, "x", x);
 *   LDM_ASSERT_SHAPE(out, x);   // same shape
 */
void ldm_assert_fail(const char *file, int line, const char *expr, const char *what,
                     const ldm_tensor *a, const ldm_tensor *b);
#define LDM_ASSERT(cond, what, t) \
    do { if (!(cond)) ldm_assert_fail(__FILE__, __LINE__, #cond, what, t, NULL); } while (0)
#define LDM_ASSERT_SHAPE(a, b) \
    do { if (!ldm_shape_equal(a, b)) \
        ldm_assert_fail(__FILE__, __LINE__, "same shape", #a " vs " #b, a, b); } while (0)

#endif
