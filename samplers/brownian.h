/*
 * samplers/brownian.h -- the Brownian path of the SDE samplers
 * (--sde-noise brownian), bit for bit the one k-diffusion's
 * BrownianTreeNoiseSampler draws through torchsde's BrownianTree.
 *
 * Why a path. On a step from sigma to sigma' the SDE samplers (DPM++ SDE,
 * 2M SDE, 3M SDE) add noise n standing for the Brownian increment over that
 * interval. Drawn fresh per step, n depends on how many steps came before.
 * k-diffusion instead fixes ONE Brownian motion W(t) per seed on
 * [sigma_min, sigma_max] and uses
 *     n = (W(sigma') - W(sigma)) / sqrt|sigma' - sigma|          ~ N(0, I)
 * so a step's noise depends on its interval only: 20 and 40 steps walk the
 * same path and give close images.
 *
 * How W is built (torchsde BrownianInterval with halfway_tree = True, no
 * Levy area; Levy's construction of Brownian motion by midpoint bridges):
 *
 *   times live on a grid: every time is rounded to 6 decimals, as Python's
 *   round(t, 6) (the tree's tolerance 1e-6);
 *   the root is the interval [round(t0), round(t1)] with the whole increment
 *       W_root = sqrt(t1 - t0) z(SeedSequence(entropy).generate_state(3)[0]);
 *   a node [a, b] with increment W splits at m = round((a + b) / 2): with
 *   seed = SeedSequence(entropy, spawn_key = (key, depth)).generate_state(4)[0]
 *   (the root has key 0, depth 0; children key 2 key + 0 (left) / + 1
 *   (right), depth + 1), the left child gets the Brownian bridge sample
 *       W_left  = (m - a)/(b - a) W + sqrt((m - a)(b - m)/(b - a)) z(seed)
 *       W_right = W - W_left;
 *   z(seed) is torch.randn(shape, generator = manual_seed(seed)) on the
 *   tree's device: torch's CPU generator, or its CUDA Philox (rng.h), as
 *   the run's generator kind says.
 *   W(ta, tb) for grid points ta < tb is the sum, left to right, of the
 *   largest tree nodes that tile [ta, tb] (the canonical dyadic cover; the
 *   tree is split, halfway each time, down to ta and tb). torchsde builds the
 *   same nodes lazily and caches them; which nodes exist never changes a
 *   value, so here each query walks down from the root, nothing stored.
 * All arithmetic on W is float32 in torch's order; the times are doubles.
 *
 * The seeds, SeedSequence (numpy.random.SeedSequence, after M. O'Neill's
 * seed_seq_fe): the entropy and spawn key as 32-bit words are hashed into a
 * pool of 24 words (pool_size of torchsde's BrownianTree), then
 * generate_state hashes the pool into output words; ldm_seed_sequence below.
 *
 * Which seed. k-diffusion's samplers, given no noise sampler, seed the tree
 * from torch.randint(0, 2^63 - 1) on the global generator: not reproducible
 * from a user's seed. The UIs pass the seed themselves, and so do we:
 *   per_sample = 0 (ComfyUI, extra_args["seed"]): one tree over the whole
 *                  latent [B, per], entropy = the run's seed;
 *   per_sample = 1 (A1111's create_noise_sampler, seeds = the images' seeds):
 *                  one tree per sample of shape [per], entropy = seed of
 *                  sample b (the run's seed + b).
 * With B = 1 the two are the same path.
 */
#ifndef LDM_BROWNIAN_H
#define LDM_BROWNIAN_H

#include <stdint.h>

#include "rng.h"

typedef struct ldm_brownian {
    int64_t B, per;               // the latent [B, per]
    int per_sample;               // 1: tree b over sample b (seeds[b]); 0: one tree over [B, per]
    uint64_t *seeds;              // [trees] the torchsde entropy of each tree
    ldm_rng proto;                // kind, cpu_math, cuda_threads of the normals' generator
    double t0, t1;                // the interval asked for (sigma_min, sigma_max as given)
    double start, end;            // ... rounded to the grid: the root node
    float *w_root;                // [B*per] each tree's increment over [t0, t1]
    int depth;                    // the deepest a walk goes (the grid's depth + 2)
    float *levels;                // scratch: [2*depth, tree length]
    float *z;                     // scratch: one node's normals [tree length]
} ldm_brownian;


// Trees over [sigma_min, sigma_max] (BrownianTreeNoiseSampler(x, sigma_min,
// sigma_max, seed)): entropy rngs[0].seed (one tree) or rngs[b].seed (one per
// sample); the normals follow rngs[0]'s kind (cpu: torch CPU, cuda: Philox)
// and cpu_math. 0 / LDM_ERR.
int ldm_brownian_init(ldm_brownian *bt, const ldm_rng *rngs, int per_sample, int64_t B,
                      int64_t per, float sigma_min, float sigma_max);
void ldm_brownian_free(ldm_brownian *bt);

// w [B*per] <- W(tb) - W(ta) of every tree (torchsde BrownianTree(ta, tb)),
// ta <= tb, both clamped to the root interval.
void ldm_brownian_increment(ldm_brownian *bt, float *w, double ta, double tb);

// noise [B*per] <- (W(s_to) - W(s_from)) / sqrt|s_to - s_from|, the noise of a
// step from sigma s_from to s_to (BrownianTreeNoiseSampler(s_from, s_to)).
void ldm_brownian_noise(ldm_brownian *bt, float *noise, float s_from, float s_to);

// ---- the primitives, exposed for tests

// numpy.random.SeedSequence(entropy, spawn_key, pool_size).generate_state(n_out):
// entropy and spawn_key as little-endian 32-bit words (an integer < 2^32 is one
// word, 0 included; below 2^64 two), n_entropy >= 1, pool_size <= 64.
void ldm_seed_sequence(uint32_t *out, int n_out, const uint32_t *entropy, int n_entropy,
                       const uint32_t *spawn_key, int n_spawn, int pool_size);
// Python's round(x, 6): the double nearest x rounded to 6 decimals (ties to even).
double ldm_round6(double x);

#endif
