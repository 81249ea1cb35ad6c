/*
 * samplers/rng.c -- torch-compatible random normals (see rng.h).
 *
 * Mirrors, by algorithm (not code):
 *   cpu:  ATen CPUGeneratorImpl (mt19937, Matsumoto & Nishimura 1998) and the
 *         CPU normal kernel (normal_fill / normal_fill_16 for >= 16 float32
 *         elements, normal_distribution<double> below 16).
 *   cuda: ATen's CUDA distribution kernel (grid-stride over threads, one
 *         curand_normal4 per thread and loop turn) over curand's
 *         Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
 *         1, 2, 3", SC 2011) and curand's Box-Muller.
 * Both builds of torch's >= 16-element CPU normal are reproduced bit for bit
 * (see ldm_cpu_math in rng.h). Leaves out: half/bfloat16 outputs; the CUDA
 * path uses libm in double where the GPU uses its own float32 logf/sinf/cosf
 * (a few ulp).
 */
#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"

// ---------------------------------------------------------------------------
// mt19937 (the 32-bit Mersenne Twister)

#define MT_N 624
#define MT_M 397

static void mt_seed(ldm_rng *r, uint32_t s) {
    r->mt[0] = s;
    for (int i = 1; i < MT_N; i++)
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->mti = MT_N;
}

uint32_t ldm_mt19937_next(ldm_rng *r) {
    if (r->mti >= MT_N) {  // regenerate the whole state vector ("twist")
        for (int i = 0; i < MT_N; i++) {
            uint32_t y = (r->mt[i] & 0x80000000u) | (r->mt[(i + 1) % MT_N] & 0x7fffffffu);
            uint32_t v = r->mt[(i + MT_M) % MT_N] ^ (y >> 1);
            if (y & 1u) v ^= 0x9908b0dfu;
            r->mt[i] = v;
        }
        r->mti = 0;
    }
    uint32_t y = r->mt[r->mti++];
    // tempering
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

// float32 uniform in [0,1): the low 24 bits of one draw times 2^-24.
static float cpu_uniform_f32(ldm_rng *r) {
    return (float)(ldm_mt19937_next(r) & ((1u << 24) - 1)) * (1.0f / 16777216.0f);
}

// float64 uniform in [0,1): the low 53 bits of a 64-bit draw (first 32-bit
// draw = high word) times 2^-53.
static double cpu_uniform_f64(ldm_rng *r) {
    uint64_t hi = ldm_mt19937_next(r), lo = ldm_mt19937_next(r);
    uint64_t v = (hi << 32) | lo;
    return (double)(v & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// ---- torch's AVX2 build: avx_mathfun's Cephes polynomials, reproduced in
// scalar float32. torch's build fuses every multiply that feeds an add into
// one fma (GCC contraction of the intrinsics), so we write fmaf exactly there;
// this file is compiled with -std=c11, which does no contraction of its own.

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// natural log for x in (0,1]: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log x = P(m-1) + e ln 2 (ln 2 split as 0.693359375 - 2.12194440e-4).
static float avx2_logf(float x) {
    static const float p[9] = {7.0376836292E-2f, -1.1514610310E-1f, 1.1676998740E-1f,
                               -1.2420140846E-1f, 1.4249322787E-1f, -1.6668057665E-1f,
                               2.0000714765E-1f, -2.4999993993E-1f, 3.3333331174E-1f};
    if (x < u2f(0x00800000u)) x = u2f(0x00800000u);        // smallest normal
    int32_t ex = (int32_t)(f2u(x) >> 23) - 0x7f;
    x = u2f((f2u(x) & ~0x7f800000u) | f2u(0.5f));          // mantissa in [0.5, 1)
    float e = (float)ex + 1.0f;
    float tmp = x < 0.707106781186547524f ? x : 0.0f;      // below sqrt(1/2): use 2m
    x = x - 1.0f;
    e = e - (tmp != 0.0f ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = p[0];
    for (int i = 1; i < 9; i++) y = fmaf(y, x, p[i]);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    return fmaf(e, 0.693359375f, x);
}

// sin and cos for x >= 0: reduce by multiples of pi/4 (pi/4 split in three
// parts), then the Cephes sin / cos polynomials on [-pi/4, pi/4].
static void avx2_sincosf(float x, float *s, float *c) {
    uint32_t sign_sin = f2u(x) & 0x80000000u;
    x = fabsf(x);
    int32_t j = (int32_t)(x * 1.27323954473516f);          // x * 4/pi, truncated
    j = (j + 1) & ~1;
    float y = (float)j;
    uint32_t swap_sin = (uint32_t)(j & 4) << 29;
    int use_sin_poly = (j & 2) == 0;
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    sign_sin ^= swap_sin;
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float yc = 2.443315711809948E-005f;
    yc = fmaf(yc, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = -1.9515295891E-4f;
    ys = fmaf(ys, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    *s = u2f(f2u(use_sin_poly ? ys : yc) ^ sign_sin);
    *c = u2f(f2u(use_sin_poly ? yc : ys) ^ sign_cos);
}

// Box-Muller on 16 uniforms in place: pairs (j, j+8) for j < 8.
// d[j] = r cos(th), d[j+8] = r sin(th), r = sqrt(-2 ln(1-d[j])), th = 2 pi d[j+8].
static void cpu_normal_fill_16(float *d, ldm_cpu_math math) {
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];                   // [0,1) -> (0,1] for the log
        float u2 = d[j + 8];
        if (math == LDM_CPU_MATH_AVX2) {
            float radius = sqrtf(-2.0f * avx2_logf(u1));
            float theta = 6.2831855f * u2;        // (float)(2 pi) * u2 in float32
            float s, c;
            avx2_sincosf(theta, &s, &c);
            d[j] = radius * c;
            d[j + 8] = radius * s;
        } else {
            float radius = sqrtf(-2.0f * logf(u1));
            float theta = (float)(2.0 * M_PI * (double)u2);  // product in double, as torch
            d[j] = radius * cosf(theta);
            d[j + 8] = radius * sinf(theta);
        }
    }
}

// torch's normal_distribution<double>: one value per call, the second value
// of each Box-Muller pair cached in the generator for the next call.
static double cpu_normal_f64(ldm_rng *r) {
    if (r->has_next_normal) {
        r->has_next_normal = 0;
        return r->next_normal;
    }
    double u1 = cpu_uniform_f64(r);
    double u2 = cpu_uniform_f64(r);
    double radius = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * M_PI * u1;
    r->next_normal = radius * sin(theta);
    r->has_next_normal = 1;
    return radius * cos(theta);
}

static void cpu_randn(ldm_rng *r, float *out, int64_t n) {
    if (n < 16) {  // scalar path
        for (int64_t i = 0; i < n; i++) out[i] = (float)cpu_normal_f64(r);
        return;
    }
    // vectorised path: all uniforms first, then blocks of 16 ...
    for (int64_t i = 0; i < n; i++) out[i] = cpu_uniform_f32(r);
    for (int64_t i = 0; i + 16 <= n; i += 16) cpu_normal_fill_16(out + i, r->cpu_math);
    // ... and when n % 16 != 0 the LAST 16 values are redrawn from 16 fresh
    // uniforms (overlapping the last full block).
    if (n % 16 != 0) {
        float *d = out + n - 16;
        for (int j = 0; j < 16; j++) d[j] = cpu_uniform_f32(r);
        cpu_normal_fill_16(d, r->cpu_math);
    }
}

// ---------------------------------------------------------------------------
// Philox4x32-10 and torch's CUDA normal

void ldm_philox4x32_10(uint32_t out[4], const uint32_t counter[4], const uint32_t key[2]) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) {  // key schedule: Weyl sequence
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;  // mulhilo
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// curand's Box-Muller on two 32-bit draws, in float32 as on the device:
// u = x 2^-32 + 2^-33, v = y 2pi 2^-32 + pi 2^-32 (nvcc fuses each into one
// fma), s = sqrt(-2 ln u); returns (s sin v, s cos v). On the GPU, curand
// takes sin/cos from the __sincosf hardware approximation (absolute error
// ~2^-21.4); we use libm in double, so values agree to ~1e-6, not bit for bit.
static void cuda_box_muller(float *a, float *b, uint32_t x, uint32_t y) {
    const float two_pow32_inv = 2.3283064e-10f;              // 2^-32
    const float two_pow32_inv_2pi = 2.3283064e-10f * 6.2831855f;
    float u = fmaf((float)x, two_pow32_inv, two_pow32_inv / 2.0f);
    float v = fmaf((float)y, two_pow32_inv_2pi, two_pow32_inv_2pi / 2.0f);
    float s = sqrtf(-2.0f * logf(u));
    *a = (float)((double)s * sin((double)v));
    *b = (float)((double)s * cos((double)v));
}

static void cuda_randn(ldm_rng *r, float *out, int64_t n) {
    if (n <= 0) return;
    // launch shape: 256 threads a block, as many blocks as needed up to the cap
    const uint64_t block = 256, unroll = 4;
    uint64_t blocks = ((uint64_t)n + block - 1) / block;
    if (r->cuda_threads) {
        uint64_t cap = r->cuda_threads / block;
        if (cap < 1) cap = 1;
        if (blocks > cap) blocks = cap;
    }
    uint64_t stride = blocks * block;                       // threads in the launch
    uint64_t calls = ((uint64_t)n - 1) / (stride * unroll) + 1;  // normal4 calls a thread
    uint32_t key[2] = {(uint32_t)r->seed, (uint32_t)(r->seed >> 32)};
    uint64_t base = r->philox_offset / 4;                   // curand skipahead(offset)
    for (uint64_t tid = 0; tid < stride; tid++) {
        for (uint64_t k = 0; k < calls; k++) {
            uint64_t c = base + k;                          // counter.xy = offset/4 + call
            uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), (uint32_t)tid,
                               (uint32_t)(tid >> 32)};      // counter.zw = subsequence = thread
            uint32_t x[4];
            ldm_philox4x32_10(x, ctr, key);
            float v[4];
            cuda_box_muller(&v[0], &v[1], x[0], x[1]);
            cuda_box_muller(&v[2], &v[3], x[2], x[3]);
            for (uint64_t ii = 0; ii < unroll; ii++) {      // grid-stride element of value ii
                uint64_t li = tid + stride * (k * unroll + ii);
                if (li < (uint64_t)n) out[li] = v[ii];
            }
        }
    }
    r->philox_offset += calls * unroll;                     // torch's counter_offset
}

// ---------------------------------------------------------------------------
// public interface

void ldm_rng_init(ldm_rng *r, ldm_rng_kind kind, uint64_t seed) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->seed = seed;
    mt_seed(r, (uint32_t)(seed & 0xffffffffu));
}

void ldm_rng_set_cuda_threads(ldm_rng *r, uint64_t threads) { r->cuda_threads = threads; }

void ldm_rng_randn(ldm_rng *r, float *out, int64_t n) {
    if (r->kind == LDM_RNG_CUDA) cuda_randn(r, out, n);
    else cpu_randn(r, out, n);
}

void ldm_rng_randn_batch(ldm_rng *rngs, int per_sample, float *out, int64_t B, int64_t per) {
    if (!per_sample) {
        ldm_rng_randn(&rngs[0], out, B * per);
        return;
    }
    for (int64_t i = 0; i < B; i++) ldm_rng_randn(&rngs[i], out + i * per, per);
}

// torch's CPU random_from_to kernel: one draw a value, serially, reduced
// modulo the range (uniform_int_from_to); 64-bit draws once the range needs them.
int ldm_rng_randint(ldm_rng *r, int64_t *out, int64_t n, int64_t low, int64_t high) {
    if (r->kind != LDM_RNG_CPU)
        return ldm_error("randint: only the cpu generator (torch's mt19937) draws integers");
    if (low >= high)
        return ldm_error("randint: expected low < high, found low %lld, high %lld",
                         (long long)low, (long long)high);
    uint64_t range = (uint64_t)high - (uint64_t)low;
    for (int64_t i = 0; i < n; i++) {
        uint64_t word;
        if (range >= (1ull << 32)) {
            uint64_t hi = ldm_mt19937_next(r), lo = ldm_mt19937_next(r);
            word = (hi << 32) | lo;
        } else {
            word = ldm_mt19937_next(r);
        }
        out[i] = (int64_t)((uint64_t)low + word % range);
    }
    return LDM_OK;
}

// torch's CPU uniform kernel for float32: one 24-bit uniform a value.
int ldm_rng_rand(ldm_rng *r, float *out, int64_t n) {
    if (r->kind != LDM_RNG_CPU)
        return ldm_error("rand: only the cpu generator (torch's mt19937) draws uniforms");
    for (int64_t i = 0; i < n; i++) out[i] = cpu_uniform_f32(r);
    return LDM_OK;
}

int ldm_rng_parse(ldm_rng_kind *kind, const char *name) {
    if (name && strcmp(name, "cpu") == 0) { *kind = LDM_RNG_CPU; return LDM_OK; }
    if (name && (strcmp(name, "cuda") == 0 || strcmp(name, "philox") == 0)) {
        *kind = LDM_RNG_CUDA;
        return LDM_OK;
    }
    return ldm_error("expected \"cpu\" (torch CPU generator) or \"cuda\" (torch CUDA "
                     "Philox), found \"%s\"", name ? name : "(null)");
}
