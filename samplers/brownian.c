/*
 * samplers/brownian.c -- the Brownian tree of k-diffusion / torchsde
 * (brownian.h explains the construction).
 */
#include "brownian.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"

// ---------------------------------------------------------------------------
// SeedSequence (numpy.random.bit_generator): 32-bit multiply-xorshift hashes.
// Every operation is modulo 2^32 (uint32_t arithmetic).

#define SS_INIT_A 0x43b0d7e5u   // hash constant start (mixing the entropy in)
#define SS_MULT_A 0x931e8875u   // ... and its multiplier
#define SS_INIT_B 0x8b51f9ddu   // hash constant start (generating the output)
#define SS_MULT_B 0x58f38dedu   // ... and its multiplier
#define SS_MIX_L 0xca01f9ddu    // mix(x, y) = L x - R y, then xorshift
#define SS_MIX_R 0x4973f715u
#define SS_SHIFT 16

// value hashed with the running constant, which advances on every use
static uint32_t ss_hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= SS_MULT_A;
    value *= *hash_const;
    return value ^ (value >> SS_SHIFT);
}

static uint32_t ss_mix(uint32_t x, uint32_t y) {
    uint32_t r = SS_MIX_L * x - SS_MIX_R * y;
    return r ^ (r >> SS_SHIFT);
}

void ldm_seed_sequence(uint32_t *out, int n_out, const uint32_t *entropy, int n_entropy,
                       const uint32_t *spawn_key, int n_spawn, int pool_size) {
    // the assembled entropy: the run's words, zero-padded to the pool size when a
    // spawn key follows (so that a spawn key never reads as more run entropy)
    uint32_t words[128] = {0};
    int n = 0;
    for (int i = 0; i < n_entropy && n < 128; i++) words[n++] = entropy[i];
    if (n_spawn > 0 && n < pool_size) n = pool_size;
    for (int i = 0; i < n_spawn && n < 128; i++) words[n++] = spawn_key[i];
    // mix the entropy into the pool
    uint32_t pool[64], hc = SS_INIT_A;
    for (int i = 0; i < pool_size; i++) pool[i] = ss_hashmix(i < n ? words[i] : 0, &hc);
    for (int src = 0; src < pool_size; src++)           // every word into every other
        for (int dst = 0; dst < pool_size; dst++)
            if (src != dst) pool[dst] = ss_mix(pool[dst], ss_hashmix(pool[src], &hc));
    for (int src = pool_size; src < n; src++)           // words beyond the pool
        for (int dst = 0; dst < pool_size; dst++)
            pool[dst] = ss_mix(pool[dst], ss_hashmix(words[src], &hc));
    // generate_state: cycle through the pool, one hash per output word
    uint32_t hb = SS_INIT_B;
    for (int i = 0; i < n_out; i++) {
        uint32_t v = pool[i % pool_size] ^ hb;
        hb *= SS_MULT_B;
        v *= hb;
        out[i] = v ^ (v >> SS_SHIFT);
    }
}

// an integer as SeedSequence reads it: little-endian 32-bit words, 0 as one word
static int int_words(uint32_t *w, uint64_t v) {
    int n = 0;
    do { w[n++] = (uint32_t)v; v >>= 32; } while (v);
    return n;
}

// ---------------------------------------------------------------------------
// the grid: Python's round(x, 6) is correctly rounded (the decimal nearest the
// double's exact value, ties to even), then read back; printf's %.6f rounds the
// exact binary value the same way.

double ldm_round6(double x) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.6f", x);
    return strtod(buf, NULL);
}

// ---------------------------------------------------------------------------
// the tree

// z [len] <- torch.randn(len, generator = manual_seed(seed)) on the tree's device
static void node_normals(const ldm_brownian *bt, float *z, int64_t len, uint32_t seed) {
    ldm_rng g;
    ldm_rng_init(&g, bt->proto.kind, seed);
    g.cpu_math = bt->proto.cpu_math;
    g.cuda_threads = bt->proto.cuda_threads;
    ldm_rng_randn(&g, z, len);
}

// the first of SeedSequence(entropy, [spawn_key = (key, depth)], pool 24).generate_state(k)
static uint32_t node_seed(uint64_t entropy, int spawned, uint64_t key, int depth, int k) {
    uint32_t ent[2], spawn[4], out[4];
    int ne = int_words(ent, entropy), ns = 0;
    if (spawned) {
        ns = int_words(spawn, key);
        ns += int_words(spawn + ns, (uint64_t)depth);
    }
    ldm_seed_sequence(out, k, ent, ne, spawn, ns, 24);
    return out[0];
}

int ldm_brownian_init(ldm_brownian *bt, const ldm_rng *rngs, int per_sample, int64_t B,
                      int64_t per, float sigma_min, float sigma_max) {
    memset(bt, 0, sizeof *bt);
    if (B < 1 || per < 1 || !(sigma_min > 0) || !(sigma_max >= sigma_min) || !isfinite(sigma_max))
        return ldm_error("brownian tree: needs B >= 1, per >= 1, 0 < sigma_min <= sigma_max "
                         "(found %lld, %lld, %g, %g)", (long long)B, (long long)per,
                         (double)sigma_min, (double)sigma_max);
    int64_t trees = per_sample ? B : 1, len = per_sample ? per : B * per;
    bt->B = B, bt->per = per, bt->per_sample = per_sample;
    bt->proto = rngs[0];
    bt->t0 = sigma_min, bt->t1 = sigma_max;
    bt->start = ldm_round6(bt->t0), bt->end = ldm_round6(bt->t1);
    // halving [start, end] reaches cells of one grid step (1e-6) after
    // log2((end - start) 1e6) levels (SD's [0.029, 14.6]: 24)
    bt->depth = 2 + (int)ceil(log2(fmax(bt->end - bt->start, 1e-6) * 1e6));
    bt->seeds = malloc((size_t)trees * sizeof *bt->seeds);
    bt->w_root = malloc((size_t)(B * per) * sizeof(float));
    bt->levels = malloc((size_t)(2 * bt->depth * len) * sizeof(float));
    bt->z = malloc((size_t)len * sizeof(float));
    if (!bt->seeds || !bt->w_root || !bt->levels || !bt->z) {
        ldm_brownian_free(bt);
        return ldm_error("brownian tree: out of memory for %lld values", (long long)(B * per));
    }
    // W_root = sqrt(t1 - t0) z, z seeded by SeedSequence(entropy).generate_state(3)[0]
    const float scale = (float)sqrt(bt->t1 - bt->t0);
    for (int64_t b = 0; b < trees; b++) {
        bt->seeds[b] = rngs[per_sample ? b : 0].seed;
        float *w = bt->w_root + b * len;
        node_normals(bt, w, len, node_seed(bt->seeds[b], 0, 0, 0, 3));
        for (int64_t e = 0; e < len; e++) w[e] = w[e] * scale;
    }
    return LDM_OK;
}

void ldm_brownian_free(ldm_brownian *bt) {
    free(bt->seeds); free(bt->w_root); free(bt->levels); free(bt->z);
    memset(bt, 0, sizeof *bt);
}

// One tree's query: the node [a, b] (spawn key `key`, `depth`) has increment
// w [len]; add to acc [len] the increments of the nodes tiling [qa, qb], a
// sub-interval of [a, b] on the grid, left to right. *first: acc not yet set.
typedef struct walk {
    const ldm_brownian *bt;
    uint64_t entropy;
    int64_t len;
    float *acc;
    int first;
} walk;

static void walk_node(walk *wk, const float *w, double a, double b, uint64_t key, int depth,
                      double qa, double qb) {
    const int64_t len = wk->len;
    if ((qa == a && qb == b) || depth >= wk->bt->depth) {   // a node of the cover
        for (int64_t e = 0; e < len; e++) wk->acc[e] = wk->first ? w[e] : wk->acc[e] + w[e];
        wk->first = 0;
        return;
    }
    // split halfway: the left child is a Brownian bridge sample, the right the rest
    const double m = ldm_round6(0.5 * (b + a));
    const double h_rec = 1 / (b - a), left = m - a, right = b - m;
    const float f_left = (float)left, f_h_rec = (float)h_rec;
    const float f_std = (float)sqrt(left * right * h_rec);
    float *z = wk->bt->z;
    float *w_left = wk->bt->levels + (int64_t)(2 * depth) * len, *w_right = w_left + len;
    node_normals(wk->bt, z, len, node_seed(wk->entropy, 1, key, depth, 1));
    for (int64_t e = 0; e < len; e++) {
        float mean = f_left * w[e] * f_h_rec;   // (m - a)/(b - a) W, in torch's order
        w_left[e] = mean + f_std * z[e];
        w_right[e] = w[e] - w_left[e];
    }
    if (qb <= m) {
        walk_node(wk, w_left, a, m, 2 * key, depth + 1, qa, qb);
    } else if (qa >= m) {
        walk_node(wk, w_right, m, b, 2 * key + 1, depth + 1, qa, qb);
    } else {
        walk_node(wk, w_left, a, m, 2 * key, depth + 1, qa, m);
        walk_node(wk, w_right, m, b, 2 * key + 1, depth + 1, m, qb);
    }
}

void ldm_brownian_increment(ldm_brownian *bt, float *w, double ta, double tb) {
    const int64_t trees = bt->per_sample ? bt->B : 1, len = bt->per_sample ? bt->per : bt->B * bt->per;
    // torchsde's query: clamp to [start, end], then onto the grid
    if (ta < bt->start) ta = bt->start;
    if (tb < bt->start) tb = bt->start;
    if (ta > bt->end) ta = bt->end;
    if (tb > bt->end) tb = bt->end;
    double qa = ldm_round6(ta), qb = ldm_round6(tb);
    if (!(qa < qb)) {   // an empty interval (or a NaN time): no increment
        memset(w, 0, (size_t)(bt->B * bt->per) * sizeof(float));
        return;
    }
    for (int64_t b = 0; b < trees; b++) {
        walk wk = {bt, bt->seeds[b], len, w + b * len, 1};
        walk_node(&wk, bt->w_root + b * len, bt->start, bt->end, 0, 0, qa, qb);
    }
}

void ldm_brownian_noise(ldm_brownian *bt, float *noise, float s_from, float s_to) {
    const int64_t n = bt->B * bt->per;
    // BatchedBrownianTree: W over the sorted interval, negated when going down
    float lo = s_from < s_to ? s_from : s_to, hi = s_from < s_to ? s_to : s_from;
    float sign = s_from < s_to ? 1.0f : -1.0f;
    ldm_brownian_increment(bt, noise, lo, hi);
    const float len = sqrtf(fabsf(s_to - s_from));
    if (!(len > 0)) { memset(noise, 0, (size_t)n * sizeof(float)); return; }   // no step
    for (int64_t e = 0; e < n; e++) noise[e] = noise[e] * sign / len;
}
