/*
 * samplers/rng.h -- the random number generators whose streams match PyTorch.
 *
 * The same seed must give the same initial noise as the reference programs:
 *   LDM_RNG_CPU   torch's CPU generator: mt19937 seeded with seed & 0xffffffff
 *                 and torch's normal algorithm (vectorised Box-Muller over
 *                 float32 uniforms for >= 16 elements, scalar double
 *                 Box-Muller with a cached second value for fewer). Equals
 *                 torch.randn(shape, generator=torch.Generator().manual_seed(S))
 *                 and the diffusers pipelines given a CPU generator.
 *   LDM_RNG_CUDA  torch's CUDA generator: Philox4x32-10 counter-based
 *                 (curand_init(seed, thread, offset) + curand_normal4), as the
 *                 CompVis txt2img.py draws torch.randn(..., device="cuda").
 * Consecutive calls on one generator continue the stream exactly as
 * consecutive torch.randn calls on one torch generator do.
 *
 * Per-sample streams (diffusers with a list of generators): ldm_rng_randn_batch
 * with per_sample = 1 gives sample i its own generator seeded seed + i, so the
 * batch size does not change an image.
 *
 * The CPU generator also draws what a training loop needs besides normals
 * (ldm_rng_randint, ldm_rng_rand: torch.randint / torch.rand), from the same
 * mt19937 stream, so any interleaving of the three continues exactly as the
 * same calls on one torch.Generator do (tools/train/train_tiny.py's order).
 *
 * Leaves out: torch.rand / randint on the CUDA generator, non-float32 /
 * int64 dtypes, CUDA generators of devices whose thread count is below the
 * tensor size unless told (see ldm_rng_set_cuda_threads).
 */
#ifndef LDM_RNG_H
#define LDM_RNG_H

#include <stdint.h>

typedef enum { LDM_RNG_CPU = 0, LDM_RNG_CUDA = 1 } ldm_rng_kind;

// torch's CPU normal kernel for >= 16 float32 elements exists in two builds
// whose float32 results differ in the last bit for ~40% of values:
//   AVX2:   x86 machines whose best ISA is AVX2 (torch.backends.cpu.
//           get_cpu_capability() == "AVX2"): Cephes-style polynomial log and
//           sincos (avx_mathfun) with fused multiply-adds.
//   SCALAR: every other build (AVX512 x86, ARM, ATEN_CPU_CAPABILITY=default):
//           the C library's logf / cosf / sinf.
// Both are reproduced bit for bit; AVX2 is the default.
typedef enum { LDM_CPU_MATH_AVX2 = 0, LDM_CPU_MATH_SCALAR = 1 } ldm_cpu_math;

typedef struct ldm_rng {
    ldm_rng_kind kind;
    uint64_t seed;            // as given to manual_seed
    ldm_cpu_math cpu_math;    // cpu: which torch build's normal to reproduce (default AVX2)
    // ---- cpu: mt19937 state
    uint32_t mt[624];         // the Mersenne Twister state vector
    int mti;                  // next index into mt (624: regenerate)
    int has_next_normal;      // scalar path: a cached second Box-Muller value
    double next_normal;       //   ... and its value
    // ---- cuda: Philox counter offset
    uint64_t philox_offset;   // torch's generator offset (advances by 4 per call for small tensors)
    uint64_t cuda_threads;    // cap on threads of one launch (0: as many as the tensor needs)
} ldm_rng;

// Seed a generator (torch.Generator().manual_seed(seed) / torch.cuda.manual_seed).
void ldm_rng_init(ldm_rng *r, ldm_rng_kind kind, uint64_t seed);

// out [n] <- the next n standard normals, exactly as one torch.randn call with
// numel n (any shape: the order is the contiguous order) would produce them.
void ldm_rng_randn(ldm_rng *r, float *out, int64_t n);

// out [B, per] <- noise for a batch of B samples of `per` elements each.
// per_sample = 0: one call ldm_rng_randn(rngs[0], out, B*per).
// per_sample = 1: sample i from rngs[i] (B generators, e.g. seeded seed+i),
//                 as diffusers' randn_tensor with a list of generators.
void ldm_rng_randn_batch(ldm_rng *rngs, int per_sample, float *out, int64_t B, int64_t per);

// CUDA only: the number of threads torch launches for a tensor is
// min(ceil(n/256), SMs * maxThreadsPerSM/256) * 256. Elements are spread over
// threads grid-stride, so for tensors larger than the device's thread count
// the values depend on the device. threads = SMs * maxThreadsPerSM (e.g.
// 82*1536 for an RTX 3090); 0 = unlimited (every tensor below the cap).
void ldm_rng_set_cuda_threads(ldm_rng *r, uint64_t threads);

// ---- uniform draws (CPU generator only; LDM_ERR on a CUDA generator)
// out [n] <- torch.randint(low, high, (n,), generator=g): int64 in [low, high).
// Each value is low + (w mod (high - low)), w one 32-bit mt19937 word, or, when
// high - low >= 2^32, one 64-bit value made of two words (first = high half).
// The modulo leaves a bias of at most range / 2^32 (range / 2^64): torch's.
// LDM_ERR (message names the bounds) unless low < high.
int ldm_rng_randint(ldm_rng *r, int64_t *out, int64_t n, int64_t low, int64_t high);
// out [n] <- torch.rand(n, generator=g): float32 in [0, 1), each the low 24
// bits of one 32-bit word times 2^-24 (the uniforms torch's normal uses too).
int ldm_rng_rand(ldm_rng *r, float *out, int64_t n);

// Parse "cpu" / "cuda" into *kind. 0 / LDM_ERR (message names the value).
int ldm_rng_parse(ldm_rng_kind *kind, const char *name);

// ---- the primitives, exposed for tests and notebooks
uint32_t ldm_mt19937_next(ldm_rng *r);                       // one 32-bit draw
// Philox4x32-10: out[4] = philox(counter[4], key[2])
void ldm_philox4x32_10(uint32_t out[4], const uint32_t counter[4], const uint32_t key[2]);

#endif
