/*
 * ldm/backend/cpu_attention.c -- fused multi-head attention with an online
 * softmax over blocks of keys (FlashAttention's loop on a CPU), for the `cpu`
 * backend.
 *
 * Follows Dao et al., "FlashAttention: Fast and Memory-Efficient Exact
 * Attention with IO-Awareness" (NeurIPS 2022), algorithm 1 (in the
 * FlashAttention-2 order: query blocks outside, key blocks inside), whose
 * softmax is the online normaliser of Milakov & Gimelshein, "Online
 * normalizer calculation for softmax" (2018). For one head and a block of
 * query rows, the keys are visited in blocks of KB = 240; each query row i
 * keeps a running maximum m_i, a running sum l_i and an unnormalised output o_i:
 *
 *     s     = scale * q_i K_blk^T                   (score micro-kernel)
 *     m'    = max(m, max_j s_j)
 *     p     = exp(s - m')                           (masked keys: 0)
 *     l     = l * exp(m - m') + sum_j p_j
 *     o     = o * exp(m - m') + p V_blk             (P V micro-kernel)
 *
 * and out_i = o_i / l_i after the last block. Scores exist only for 4 query
 * rows x 240 keys at a time (3.75 KiB, in L1); the score matrix is never
 * written to memory. Per thread: the head's keys transposed once ([HS, Tk],
 * so the score kernel loads 8 keys' values of one dimension in one vector),
 * the block's scaled queries and outputs ([128, HS] each).
 *
 * The micro-kernels are AVX2/FMA intrinsics, register-blocked: scores 4 rows
 * x 24 keys (12 accumulators), P V 2 rows x up to 40 columns (10
 * accumulators, held over a whole key block). exp is exp_vec (cpu_math.h),
 * the max/sum/rescale loops are vectorised by the compiler. One OpenMP
 * thread per (batch, head, chunk of query blocks). Built without AVX2 + FMA,
 * or for a head size that is not a multiple of 8, the entry point declines
 * (returns -1) and ops_cpu.c uses its two-sgemm kernel.
 *
 * Arithmetic: the same sums as the two-pass softmax, regrouped: each block's
 * exponentials are taken against a maximum that may later grow, and are then
 * multiplied by exp(m - m') <= 1, which adds about one rounding per key block
 * to each output; the dot products run in a different order than sgemm's
 * (docs/05-unet.md, "online softmax").
 *
 * Leaves out: AVX-512, fp16 inputs, dropout, masks other than causal, the
 * backward pass, fusing the Q/K/V projections in.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include "ldm/backend/cpu_kernels.h"
#include "ldm/backend/cpu_math.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#define AQ 4      // query rows per score micro-tile
#define AKV 3     // 8-key vectors per score micro-tile: 24 keys
#define AKB 240   // keys per block (10 micro-tiles): the score rows live in L1
#define AQB 128   // query rows per block: their O, m, l stay in L1/L2

// Kt[jb][d][j] = k[jb*AKB + j][d] for the first nkeys keys of one head
// (k rows D floats apart), zero past nkeys: each key block [HS][AKB]
// contiguous, so the score micro-kernel loads 24 keys' values of one d at once.
static void transpose_keys(float *Kt, const float *kh, int64_t nkeys, int64_t D, int64_t HS) {
    int64_t nb = (nkeys + AKB - 1) / AKB;
    for (int64_t jb = 0; jb < nb; jb++) {
        float *dst = Kt + jb * HS * AKB;
        for (int64_t j = 0; j < AKB; j++) {
            int64_t jj = jb * AKB + j;
            for (int64_t d = 0; d < HS; d++) dst[d * AKB + j] = jj < nkeys ? kh[jj * D + d] : 0.0f;
        }
    }
}

// S[r][jt .. jt+24) = Qs[r] . Kt[:, jt .. jt+24) for the AQ rows of Qs (row
// stride HS, already scaled): 12 accumulators, per d 3 loads + 4 broadcasts.
static inline void score_tile(float *S, const float *Qs, int64_t HS, const float *Kt, int64_t jt) {
    __m256 acc[AQ][AKV];
    for (int r = 0; r < AQ; r++)
        for (int v = 0; v < AKV; v++) acc[r][v] = _mm256_setzero_ps();
    for (int64_t d = 0; d < HS; d++) {
        const float *kd = Kt + d * AKB + jt;
        __m256 k0 = _mm256_loadu_ps(kd), k1 = _mm256_loadu_ps(kd + 8), k2 = _mm256_loadu_ps(kd + 16);
        for (int r = 0; r < AQ; r++) {
            __m256 q = _mm256_broadcast_ss(Qs + r * HS + d);
            acc[r][0] = _mm256_fmadd_ps(q, k0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(q, k1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(q, k2, acc[r][2]);
        }
    }
    for (int r = 0; r < AQ; r++)
        for (int v = 0; v < AKV; v++) _mm256_storeu_ps(S + r * AKB + jt + 8 * v, acc[r][v]);
}

// O[0..2)[d0 .. d0+8NV) += P[0..2)[0..n) @ V[0..n)[d0 .. d0+8NV) for two rows
// (P rows AKB apart, O rows HS apart, V rows D apart): 2*NV accumulators in
// registers over all n keys. NV is a constant at each call (pv_rows), so the
// compiler unrolls the v loops and keeps acc in registers.
static inline __attribute__((always_inline)) void pv_tile(float *O, int64_t HS, const float *P,
                                                          const float *V, int64_t D, int64_t n,
                                                          int64_t d0, const int NV) {
    __m256 acc0[5], acc1[5];
    for (int v = 0; v < NV; v++) {
        acc0[v] = _mm256_loadu_ps(O + d0 + 8 * v);
        acc1[v] = _mm256_loadu_ps(O + HS + d0 + 8 * v);
    }
    for (int64_t j = 0; j < n; j++) {
        __m256 p0 = _mm256_broadcast_ss(P + j), p1 = _mm256_broadcast_ss(P + AKB + j);
        const float *vr = V + j * D + d0;
        for (int v = 0; v < NV; v++) {
            __m256 x = _mm256_loadu_ps(vr + 8 * v);
            acc0[v] = _mm256_fmadd_ps(p0, x, acc0[v]);
            acc1[v] = _mm256_fmadd_ps(p1, x, acc1[v]);
        }
    }
    for (int v = 0; v < NV; v++) {
        _mm256_storeu_ps(O + d0 + 8 * v, acc0[v]);
        _mm256_storeu_ps(O + HS + d0 + 8 * v, acc1[v]);
    }
}

// The two rows' full HS in chunks of 8*nv columns (nv = 5, 4, 3, 2 or 1
// vectors, whichever divides HS/8), each chunk one pv_tile.
static void pv_rows(float *O, int64_t HS, const float *P, const float *V, int64_t D, int64_t n, int nv) {
    for (int64_t d0 = 0; d0 < HS; d0 += 8 * nv) {
        switch (nv) {
        case 5: pv_tile(O, HS, P, V, D, n, d0, 5); break;
        case 4: pv_tile(O, HS, P, V, D, n, d0, 4); break;
        case 3: pv_tile(O, HS, P, V, D, n, d0, 3); break;
        case 2: pv_tile(O, HS, P, V, D, n, d0, 2); break;
        default: pv_tile(O, HS, P, V, D, n, d0, 1); break;
        }
    }
}

// One row of the online softmax over this block's scores sr[0..n) (the rest
// of the row, up to nk, is set to 0): update the running max m and sum l,
// rescale the row's output o[HS] by exp(m_old - m_new), leave P in sr.
static void online_softmax_row(float *sr, int64_t n, int64_t nk, float *m, float *l, float *o,
                               int64_t HS) {
    if (n <= 0) { // every key of this block masked (causal, past the diagonal)
        for (int64_t j = 0; j < nk; j++) sr[j] = 0.0f;
        return;
    }
    float mx = *m;
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < n; j++) mx = sr[j] > mx ? sr[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; j++) {
        sr[j] = exp_vec(sr[j] - mx);
        sum += sr[j];
    }
    for (int64_t j = n; j < nk; j++) sr[j] = 0.0f;
    float alpha = *m == -INFINITY ? 0.0f : exp_vec(*m - mx); // first block: nothing to rescale
    *l = *l * alpha + sum;
    *m = mx;
    if (alpha != 1.0f)
#pragma omp simd
        for (int64_t d = 0; d < HS; d++) o[d] *= alpha;
}

// Query rows i0 .. i0+nq-1 (nq <= AQB) of one head against its keys, whose
// transposed blocks are in Kt. qh, vh, oh: the head's columns of row 0.
static void flash_rows(float *oh, const float *qh, const float *Kt, const float *vh,
                       int64_t i0, int64_t nq, int64_t Tk, int64_t D, int64_t HS, float scale,
                       int causal, int nv, float *Qs, float *O, float *S) {
    float m[AQB], l[AQB];
    int64_t nqp = (nq + AQ - 1) / AQ * AQ; // padded to whole micro-tiles (zero rows)
    for (int64_t r = 0; r < nqp; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int64_t d = 0; d < HS; d++) {
            Qs[r * HS + d] = r < nq ? qh[(i0 + r) * D + d] * scale : 0.0f;
            O[r * HS + d] = 0.0f;
        }
    }
    int64_t nkeys = causal ? (i0 + nq < Tk ? i0 + nq : Tk) : Tk;
    for (int64_t j0 = 0; j0 < nkeys; j0 += AKB) {
        int64_t nk = nkeys - j0 < AKB ? nkeys - j0 : AKB;
        int64_t nkt = (nk + 8 * AKV - 1) / (8 * AKV) * (8 * AKV); // whole micro-tiles
        const float *Ktb = Kt + j0 / AKB * HS * AKB;
        for (int64_t r0 = 0; r0 < nqp; r0 += AQ) {
            for (int64_t jt = 0; jt < nkt; jt += 8 * AKV) score_tile(S, Qs + r0 * HS, HS, Ktb, jt);
            int64_t nmax = 0; // keys any of the AQ rows sees in this block
            for (int r = 0; r < AQ; r++) {
                int64_t n = causal ? i0 + r0 + r + 1 - j0 : nk;
                if (n > nk) n = nk;
                online_softmax_row(S + r * AKB, n, nk, &m[r0 + r], &l[r0 + r], O + (r0 + r) * HS, HS);
                if (n > nmax) nmax = n;
            }
            for (int r = 0; r < AQ; r += 2)
                pv_rows(O + (r0 + r) * HS, HS, S + r * AKB, vh + j0 * D, D, nmax, nv);
        }
    }
    for (int64_t r = 0; r < nq; r++) {
        float inv = 1.0f / l[r];
        for (int64_t d = 0; d < HS; d++) oh[(i0 + r) * D + d] = O[r * HS + d] * inv;
    }
}

int cpu_attention_flash(float *out, const float *q, const float *k, const float *v,
                        int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                        float scale, int causal, int nthreads) {
    if (HS % 8 != 0 || Tk < 1) return -1; // the micro-kernels work in 8-float vectors
    if (B * NH * Tq == 0) return 0;
    int64_t D = NH * HS, nqb = (Tq + AQB - 1) / AQB;
    int nv = (HS / 8) % 5 == 0 ? 5 : (HS / 8) % 4 == 0 ? 4 : (HS / 8) % 3 == 0 ? 3 : (HS / 8) % 2 == 0 ? 2 : 1;
    // tasks: (batch, head, chunk of query blocks); each transposes its head's
    // keys once, so chunks are as long as load balance allows (>= 4 per thread)
    int64_t nchunk = (4 * (int64_t)nthreads + B * NH - 1) / (B * NH);
    if (nchunk > nqb) nchunk = nqb;
    if (nchunk < 1) nchunk = 1;
    int64_t qb_per_chunk = (nqb + nchunk - 1) / nchunk;
    nchunk = (nqb + qb_per_chunk - 1) / qb_per_chunk;
    int64_t ntask = B * NH * nchunk;
    if (nthreads > ntask) nthreads = (int)ntask;
    if (nthreads < 1) nthreads = 1;
    int64_t nkb = (Tk + AKB - 1) / AKB;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *Kt = aligned_alloc(64, (size_t)(nkb * AKB * HS) * sizeof(float));
        float *Qs = aligned_alloc(64, (size_t)(AQB * HS) * sizeof(float));
        float *O = aligned_alloc(64, (size_t)(AQB * HS) * sizeof(float));
        float *S = aligned_alloc(64, (size_t)(AQ * AKB) * sizeof(float));
        if (!Kt || !Qs || !O || !S) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp barrier
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntask; t++) {
            if (failed) continue;
            int64_t b = t / (NH * nchunk), h = t / nchunk % NH, c = t % nchunk;
            int64_t r_begin = c * qb_per_chunk * AQB;
            int64_t r_end = r_begin + qb_per_chunk * AQB < Tq ? r_begin + qb_per_chunk * AQB : Tq;
            int64_t nkeys = causal ? (r_end < Tk ? r_end : Tk) : Tk;
            const float *qh = q + b * Tq * D + h * HS, *kh = k + b * Tk * D + h * HS;
            const float *vh = v + b * Tk * D + h * HS;
            float *oh = out + b * Tq * D + h * HS;
            transpose_keys(Kt, kh, nkeys, D, HS);
            for (int64_t i0 = r_begin; i0 < r_end; i0 += AQB) {
                int64_t nq = r_end - i0 < AQB ? r_end - i0 : AQB;
                flash_rows(oh, qh, Kt, vh, i0, nq, Tk, D, HS, scale, causal, nv, Qs, O, S);
            }
        }
        free(Kt); free(Qs); free(O); free(S);
    }
    return failed ? -1 : 0;
}

#else // no AVX2 + FMA: the caller uses the two-sgemm kernel

int cpu_attention_flash(float *out, const float *q, const float *k, const float *v,
                        int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                        float scale, int causal, int nthreads) {
    return -1;
}

#endif
