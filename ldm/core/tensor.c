/*
 * ldm/core/tensor.c -- construction, views, host copies and inspection of
 * ldm_tensor (see tensor.h for the layout and the shape notation).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
#include "ldm/core/tensor.h"

int64_t ldm_shape_numel(const int64_t *shape, int ndim) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

char *ldm_shape_str(char *buf, size_t n, const int64_t *shape, int ndim) {
    size_t used = 0;
    if (n == 0) return buf;
    buf[0] = '\0';
    used += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

int ldm_shape_equal(const ldm_tensor *a, const ldm_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

size_t ldm_tensor_elem_size(ldm_dtype dtype) {
    return dtype == LDM_DTYPE_F16 || dtype == LDM_DTYPE_BF16 ? 2 : 4;
}

ldm_tensor ldm_tensor_new_dtype(const struct ldm_ops *ops, const int64_t *shape, int ndim,
                                ldm_dtype dtype) {
    ldm_tensor t;
    memset(&t, 0, sizeof t);
    int64_t n = ldm_shape_numel(shape, ndim);
    size_t es = ldm_tensor_elem_size(dtype);
    if (ndim < 0 || ndim > LDM_MAX_DIMS || n < 0 || (uint64_t)n > SIZE_MAX / es ||
        (dtype != LDM_DTYPE_F32 && dtype != LDM_DTYPE_F16 && dtype != LDM_DTYPE_BF16)) {
        char s[128];
        ldm_error("invalid tensor shape %s or dtype %d",
                  ldm_shape_str(s, sizeof s, shape, ndim < 0 ? 0 : ndim), (int)dtype);
        return t;
    }
    t.ndim = ndim;
    memcpy(t.shape, shape, (size_t)ndim * sizeof(int64_t));
    t.numel = n;
    t.ops = ops;
    t.owns = 1;
    t.dtype = dtype;
    t.data = ops->alloc((size_t)(n ? n : 1) * es);
    if (!t.data) {
        char s[128];
        ldm_error("out of memory allocating a %s tensor (%.1f MiB) on backend %s",
                  ldm_shape_str(s, sizeof s, shape, ndim), (double)n * (double)es / (1 << 20),
                  ops->name);
        t.owns = 0;
    }
    return t;
}

ldm_tensor ldm_tensor_new(const struct ldm_ops *ops, const int64_t *shape, int ndim) {
    return ldm_tensor_new_dtype(ops, shape, ndim, LDM_DTYPE_F32);
}

ldm_tensor ldm_tensor_zeros(const struct ldm_ops *ops, const int64_t *shape, int ndim) {
    ldm_tensor t = ldm_tensor_new(ops, shape, ndim);
    if (t.data && t.numel > 0) {
        float *zeros = calloc((size_t)t.numel, sizeof(float));
        if (!zeros) { ldm_tensor_free(&t); ldm_error("out of memory"); return t; }
        ops->upload(t.data, zeros, (size_t)t.numel * sizeof(float));
        free(zeros);
    }
    return t;
}

void ldm_tensor_free(ldm_tensor *t) {
    if (t->owns && t->data && t->ops) t->ops->free(t->data);
    memset(t, 0, sizeof *t);
}

ldm_tensor ldm_tensor_view(const ldm_tensor *t, const int64_t *shape, int ndim) {
    LDM_ASSERT(ndim >= 0 && ndim <= LDM_MAX_DIMS, "view rank in 0..LDM_MAX_DIMS", t);
    ldm_tensor v = *t;
    v.owns = 0;
    v.ndim = ndim;
    memcpy(v.shape, shape, (size_t)ndim * sizeof(int64_t));
    v.numel = ldm_shape_numel(shape, ndim);
    LDM_ASSERT(ndim <= LDM_MAX_DIMS && v.numel == t->numel, "view must keep numel", t);
    return v;
}

ldm_tensor ldm_tensor_slice0(const ldm_tensor *t, int64_t start, int64_t count) {
    LDM_ASSERT(t->ndim >= 1 && start >= 0 && count >= 0 && start + count <= t->shape[0],
               "slice0 in range", t);
    ldm_tensor v = *t;
    v.owns = 0;
    int64_t row = t->shape[0] ? t->numel / t->shape[0] : 0;
    v.shape[0] = count;
    v.numel = row * count;
    v.data = (float *)((char *)t->data + start * row * (int64_t)ldm_tensor_elem_size(t->dtype));
    return v;
}

void ldm_tensor_from_host(ldm_tensor *t, const float *src) {
    LDM_ASSERT(t->dtype == LDM_DTYPE_F32, "from_host: fp32 tensor", t);
    t->ops->upload(t->data, src, (size_t)t->numel * sizeof(float));
}

void ldm_tensor_to_host(float *dst, const ldm_tensor *t) {
    LDM_ASSERT(t->dtype == LDM_DTYPE_F32, "to_host: fp32 tensor", t);
    t->ops->download(dst, t->data, (size_t)t->numel * sizeof(float));
}

void ldm_tensor_describe(const ldm_tensor *t, const char *name) {
    char s[160];
    ldm_shape_str(s, sizeof s, t->shape, t->ndim);
    printf("%s %s%s on %s%s\n", name ? name : "tensor", s,
           t->dtype == LDM_DTYPE_F16 ? " f16" : t->dtype == LDM_DTYPE_BF16 ? " bf16" : "",
           t->ops ? t->ops->name : "?", t->owns ? "" : " (view)");
    if (!t->data || t->numel == 0) { printf("  (empty)\n"); return; }
    float *h = malloc((size_t)t->numel * sizeof(float));
    if (!h) { printf("  (cannot allocate a host copy)\n"); return; }
    if (t->dtype == LDM_DTYPE_F32) {
        ldm_tensor_to_host(h, t);
    } else {   // half weight: download the halves, widen on the host
        uint16_t *hh = (uint16_t *)h + t->numel;   // the upper half of h
        t->ops->download(hh, t->data, (size_t)t->numel * 2);
        for (int64_t i = 0; i < t->numel; i++)
            h[i] = t->dtype == LDM_DTYPE_F16 ? ldm_f16_to_f32(hh[i]) : ldm_bf16_to_f32(hh[i]);
    }
    double mn = h[0], mx = h[0], sum = 0, sq = 0;
    int64_t nonfinite = 0;
    for (int64_t i = 0; i < t->numel; i++) {
        double x = h[i];
        if (!isfinite(x)) { nonfinite++; continue; }
        if (x < mn) mn = x;
        if (x > mx) mx = x;
        sum += x;
        sq += x * x;
    }
    double n = (double)(t->numel - nonfinite), mean = n ? sum / n : 0;
    double var = n > 1 ? (sq - n * mean * mean) / (n - 1) : 0;
    printf("  min %.6g  max %.6g  mean %.6g  std %.6g", mn, mx, mean, sqrt(var > 0 ? var : 0));
    if (nonfinite) printf("  NON-FINITE %lld", (long long)nonfinite);
    printf("\n  first:");
    for (int64_t i = 0; i < t->numel && i < 8; i++) printf(" %.6g", h[i]);
    printf("\n");
    free(h);
}

// ---- half precision ------------------------------------------------------------

// IEEE 754 binary16 -> binary32, exact for every input.
//   bits: s eeeee mmmmmmmmmm ; value = (-1)^s * 2^(e-15) * 1.m  (e in 1..30)
//   e == 0: subnormal 2^-14 * 0.m ; e == 31: inf (m == 0) or NaN (payload kept)
float ldm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);               // inf / NaN
    } else if (exp != 0) {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);  // normal: rebias 15 -> 127
    } else if (man == 0) {
        bits = sign;                                            // +-0
    } else {
        // Subnormal half: normalise the mantissa (the result is a normal float).
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// bfloat16 is the top half of a float32: widening is a shift.
float ldm_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

// binary32 -> binary16, round to nearest even (what torch's .half() does).
uint16_t ldm_f32_to_f16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t a = bits & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x3ffu);  // NaN
    if (a >= 0x477ff000u) return sign | 0x7c00u;       // >= 65520 rounds to inf
    if (a < 0x38800000u)                               // below 2^-14: subnormal half
        return sign | (uint16_t)nearbyintf(fabsf(f) * 16777216.0f);   // units of 2^-24
    uint32_t h = ((a >> 23) - 127 + 15) << 10 | (a & 0x7fffffu) >> 13;
    uint32_t rest = a & 0x1fffu;                       // the 13 bits dropped
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;  // nearest, ties to even
    return sign | (uint16_t)h;
}

// binary32 -> bfloat16, round to nearest even (NaN stays NaN).
uint16_t ldm_f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

// ---------------------------------------------------------------------------------

void ldm_assert_fail(const char *file, int line, const char *expr, const char *what,
                     const ldm_tensor *a, const ldm_tensor *b) {
    char sa[160] = "", sb[160] = "";
    if (a) ldm_shape_str(sa, sizeof sa, a->shape, a->ndim);
    if (b) ldm_shape_str(sb, sizeof sb, b->shape, b->ndim);
    fprintf(stderr, "%s:%d: shape contract failed: %s (%s)%s%s%s%s\n", file, line, expr, what,
            a ? " " : "", sa, b ? " vs " : "", sb);
    abort();
}
