/*
 * ldm/backend/cpu_math.h -- float32 exp in a form GCC vectorises, shared by
 * the `cpu` backend's files (ops_cpu.c: softmax, silu, gelu; cpu_attention.c:
 * the online softmax). Header-only (static inline) so that every loop that
 * calls it can be vectorised in place.
 */
#ifndef LDM_CPU_MATH_H
#define LDM_CPU_MATH_H

#include <stdint.h>
#include <string.h>

// exp(x) for float32 in a form the compiler vectorises (glibc's expf is a
// scalar call, and float compares/floorf are not if-converted under the
// default -ftrapping-math): exp(x) = 2^n * exp(r), n = round(x / ln 2) by
// the 1.5*2^23 trick (n lands in t's low mantissa bits), r = x - n ln 2 with
// ln 2 split in two, exp(r) on |r| <= ln2/2 by Cephes' expf polynomial.
// Measured max relative error 8e-8 on [-87, 0]; below -87.3 (and at -inf)
// it returns ~1e-38 instead of a denormal or 0 (harmless in a softmax).
static inline float exp_vec(float x) {
    // clamp x to [-87.3, 88.3] on its bits (integer selects vectorise; float
    // compares would not): -inf gives ~1e-38, not NaN, so masked -inf
    // entries of a softmax row come out as (almost exactly) 0
    uint32_t u; // as unsigned, floats below -87.3 (0xC2AE999A) are the larger
    memcpy(&u, &x, sizeof u);
    u = u > 0xC2AE999Au ? 0xC2AE999Au : u;
    int32_t i = (int32_t)u; // as signed, only floats above 88.3 exceed 0x42B0999A
    i = i > 0x42B0999A ? 0x42B0999A : i;
    memcpy(&x, &i, sizeof x);
    float t = x * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = x - n * 0.693359375f - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e;
    memcpy(&e, &t, sizeof e);
    e -= 0x4B400000;                           // n as an integer
    e = e < -126 ? -126 : (e > 127 ? 127 : e); // stay a normal float
    int32_t bits = (e + 127) << 23;            // the float 2^n
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

#endif
