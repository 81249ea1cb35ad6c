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
 * its values packed into rows of HS floats (read with a stride of NH*HS
 * floats, a block's value rows fall into a few L1 sets and evict each other),
 * the block's scaled queries and outputs ([128, HS] each).
 *
 * The micro-kernels are AVX2/FMA intrinsics, register-blocked: scores 4 rows
 * x 24 keys (12 accumulators), P V 2 rows x up to 40 columns (10
 * accumulators, held over a whole key block). exp is exp_vec (cpu_math.h),
 * the max/sum/rescale loops are vectorised by the compiler. Where the CPU
 * has AVX-512F (checked at run time, cpu_simd in cpu_kernels.h) the same
 * loop runs on 16-float vectors: scores 4 rows x 48 keys, P V 4 rows x up to
 * 48 columns (a masked last vector for HS = 40), the softmax compiled for
 * 16-float vectors; every dot product is the same chain of FMAs as in the
 * AVX2 kernels, only the softmax's partial sums are grouped differently
 * (16 lanes instead of 8). One OpenMP
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
 * Leaves out: fp16 inputs, dropout, masks other than causal, the
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
#define AKB 240   // keys per block (kb below; 10 micro-tiles): the score rows live in L1
#define AQB 128   // query rows per block: their O, m, l stay in L1/L2

// Kt[jb][d][j] = k[jb*AKB + j][d] for the first nkeys keys of one head
// (k rows D floats apart), zero past nkeys: each key block [HS][AKB]
// contiguous, so the score micro-kernel loads 24 keys' values of one d at once.
static void transpose_keys(float *Kt, const float *kh, int64_t nkeys, int64_t D, int64_t HS,
                           int64_t kb) {
    int64_t nb = (nkeys + kb - 1) / kb;
    for (int64_t jb = 0; jb < nb; jb++) {
        float *dst = Kt + jb * HS * kb;
        for (int64_t j = 0; j < kb; j++) {
            int64_t jj = jb * kb + j;
            for (int64_t d = 0; d < HS; d++) dst[d * kb + j] = jj < nkeys ? kh[jj * D + d] : 0.0f;
        }
    }
}

// Vp[j][d] = v[j][d] for the first nkeys keys of one head (v rows D floats
// apart): the values packed into rows of HS floats, so that the P V kernel
// reads one block's values from contiguous memory (rows D floats apart all
// fall into a few L1 sets and evict each other).
static void pack_values(float *Vp, const float *vh, int64_t nkeys, int64_t D, int64_t HS) {
    for (int64_t j = 0; j < nkeys; j++)
        for (int64_t d = 0; d < HS; d++) Vp[j * HS + d] = vh[j * D + d];
}

// S[r][jt .. jt+24) = Qs[r] . Kt[:, jt .. jt+24) for the AQ rows of Qs (row
// stride HS, already scaled): 12 accumulators, per d 3 loads + 4 broadcasts.
static inline void score_tile(float *S, const float *Qs, int64_t HS, const float *Kt, int64_t kb,
                              int64_t jt) {
    __m256 acc[AQ][AKV];
    for (int r = 0; r < AQ; r++)
        for (int v = 0; v < AKV; v++) acc[r][v] = _mm256_setzero_ps();
    for (int64_t d = 0; d < HS; d++) {
        const float *kd = Kt + d * kb + jt;
        __m256 k0 = _mm256_loadu_ps(kd), k1 = _mm256_loadu_ps(kd + 8), k2 = _mm256_loadu_ps(kd + 16);
        for (int r = 0; r < AQ; r++) {
            __m256 q = _mm256_broadcast_ss(Qs + r * HS + d);
            acc[r][0] = _mm256_fmadd_ps(q, k0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(q, k1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(q, k2, acc[r][2]);
        }
    }
    for (int r = 0; r < AQ; r++)
        for (int v = 0; v < AKV; v++) _mm256_storeu_ps(S + r * kb + jt + 8 * v, acc[r][v]);
}

// O[0..2)[d0 .. d0+8NV) += P[0..2)[0..n) @ V[0..n)[d0 .. d0+8NV) for two rows
// (P rows AKB apart, O rows HS apart, V rows D apart): 2*NV accumulators in
// registers over all n keys. NV is a constant at each call (pv_rows), so the
// compiler unrolls the v loops and keeps acc in registers.
static inline __attribute__((always_inline)) void pv_tile(float *O, int64_t HS, const float *P,
                                                          int64_t kb, const float *V, int64_t D,
                                                          int64_t n, int64_t d0, const int NV) {
    __m256 acc0[5], acc1[5];
    for (int v = 0; v < NV; v++) {
        acc0[v] = _mm256_loadu_ps(O + d0 + 8 * v);
        acc1[v] = _mm256_loadu_ps(O + HS + d0 + 8 * v);
    }
    for (int64_t j = 0; j < n; j++) {
        __m256 p0 = _mm256_broadcast_ss(P + j), p1 = _mm256_broadcast_ss(P + kb + j);
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
static void pv_rows(float *O, int64_t HS, const float *P, int64_t kb, const float *V, int64_t D,
                    int64_t n, int nv) {
    for (int64_t d0 = 0; d0 < HS; d0 += 8 * nv) {
        switch (nv) {
        case 5: pv_tile(O, HS, P, kb, V, D, n, d0, 5); break;
        case 4: pv_tile(O, HS, P, kb, V, D, n, d0, 4); break;
        case 3: pv_tile(O, HS, P, kb, V, D, n, d0, 3); break;
        case 2: pv_tile(O, HS, P, kb, V, D, n, d0, 2); break;
        default: pv_tile(O, HS, P, kb, V, D, n, d0, 1); break;
        }
    }
}

// ---- AVX-512 micro-kernels (used where the CPU has AVX-512F, checked at run time) ----
// The same two products on 16-float vectors: scores for 4 rows x 48 keys (12
// accumulators), P V for all 4 rows at once over up to 48 columns (12
// accumulators; the last vector masked when HS is not a multiple of 16, e.g.
// HS = 40: 16 + 16 + 8). Each output element is the same chain of FMAs, in the
// same order, as in the AVX2 kernels above.
#define A512 __attribute__((target("avx512f")))
#define AKV16 3 // 16-key vectors per score tile: 48 keys (AKB = 5 tiles)

// S[r][0 .. nk) (rounded up to whole 48-key tiles; Kt is zero past the keys)
// = Qs[r] . Kt[:, j] for the AQ rows of Qs, one key block.
A512 static void score_block16(float *S, const float *Qs, int64_t HS, const float *Kt, int64_t kb,
                               int64_t nk) {
    for (int64_t jt = 0; jt < nk; jt += 16 * AKV16) {
        __m512 acc[AQ][AKV16];
        for (int r = 0; r < AQ; r++)
            for (int v = 0; v < AKV16; v++) acc[r][v] = _mm512_setzero_ps();
        for (int64_t d = 0; d < HS; d++) {
            const float *kd = Kt + d * kb + jt;
            __m512 k0 = _mm512_loadu_ps(kd), k1 = _mm512_loadu_ps(kd + 16);
            __m512 k2 = _mm512_loadu_ps(kd + 32);
            for (int r = 0; r < AQ; r++) {
                __m512 q = _mm512_set1_ps(Qs[r * HS + d]);
                acc[r][0] = _mm512_fmadd_ps(q, k0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(q, k1, acc[r][1]);
                acc[r][2] = _mm512_fmadd_ps(q, k2, acc[r][2]);
            }
        }
        for (int r = 0; r < AQ; r++)
            for (int v = 0; v < AKV16; v++) _mm512_storeu_ps(S + r * kb + jt + 16 * v, acc[r][v]);
    }
}

// O[0..AQ)[d0 .. d0+16NV) += P[0..AQ)[0..n) @ V[0..n)[d0 ..) (P rows AKB apart,
// O rows HS apart, V rows D apart); the last of the NV vectors covers the
// lanes in `last` only. NV is a constant at each call (pv_rows16).
A512 static inline __attribute__((always_inline)) void
pv_tile16(float *O, int64_t HS, const float *P, int64_t kb, const float *V, int64_t D, int64_t n,
          int64_t d0, const int NV, __mmask16 last) {
    __m512 acc[AQ][AKV16];
    for (int r = 0; r < AQ; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, O + r * HS + d0 + 16 * v);
    for (int64_t j = 0; j < n; j++) {
        const float *vr = V + j * D + d0;
        __m512 x[AKV16];
        for (int v = 0; v < NV; v++) x[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : 0xFFFF, vr + 16 * v);
        for (int r = 0; r < AQ; r++) {
            __m512 p = _mm512_set1_ps(P[r * kb + j]);
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(p, x[v], acc[r][v]);
        }
    }
    for (int r = 0; r < AQ; r++)
        for (int v = 0; v < NV; v++)
            _mm512_mask_storeu_ps(O + r * HS + d0 + 16 * v, v == NV - 1 ? last : 0xFFFF, acc[r][v]);
}

// The AQ rows' full HS (a multiple of 8) in chunks of up to 48 columns.
A512 static void pv_rows16(float *O, int64_t HS, const float *P, int64_t kb, const float *V,
                           int64_t D, int64_t n) {
    for (int64_t d0 = 0; d0 < HS; d0 += 16 * AKV16) {
        int64_t w = HS - d0 < 16 * AKV16 ? HS - d0 : 16 * AKV16; // columns in this chunk
        int nv = (int)((w + 15) / 16);
        __mmask16 last = (__mmask16)(w % 16 ? (1u << (w % 16)) - 1 : 0xFFFF);
        switch (nv) {
        case 3: pv_tile16(O, HS, P, kb, V, D, n, d0, 3, last); break;
        case 2: pv_tile16(O, HS, P, kb, V, D, n, d0, 2, last); break;
        default: pv_tile16(O, HS, P, kb, V, D, n, d0, 1, last); break;
        }
    }
}

// One row of the online softmax over this block's scores sr[0..n) (the rest
// of the row, up to nk, is set to 0): update the running max m and sum l,
// rescale the row's output o[HS] by exp(m_old - m_new), leave P in sr.
static inline __attribute__((always_inline)) void
online_softmax_row(float *sr, int64_t n, int64_t nk, float *m, float *l, float *o, int64_t HS) {
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

// The AQ rows of one score tile (rows kb apart, row r sees n[r] keys of nk):
// online_softmax_row compiled for 8-float vectors (the baseline) and, for the
// AVX-512 path, for 16-float ones (the exps of a block in half the instructions).
static void online_softmax_tile(float *S, int64_t kb, const int64_t *n, int64_t nk, float *m,
                                float *l, float *O, int64_t HS) {
    for (int r = 0; r < AQ; r++) online_softmax_row(S + r * kb, n[r], nk, &m[r], &l[r], O + r * HS, HS);
}
__attribute__((target("avx512f,prefer-vector-width=512"), noinline))
static void online_softmax_tile16(float *S, int64_t kb, const int64_t *n, int64_t nk, float *m,
                                  float *l, float *O, int64_t HS) {
    for (int r = 0; r < AQ; r++) online_softmax_row(S + r * kb, n[r], nk, &m[r], &l[r], O + r * HS, HS);
}

// Query rows i0 .. i0+nq-1 (nq <= AQB) of one head against its keys, whose
// transposed blocks are in Kt. qh, vh, oh: the head's columns of row 0.
static void flash_rows(float *oh, const float *qh, const float *Kt, const float *Vp,
                       int64_t i0, int64_t nq, int64_t Tk, int64_t D, int64_t HS, float scale,
                       int causal, int64_t kb, int nv, int wide, float *Qs, float *O, float *S) {
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
    for (int64_t j0 = 0; j0 < nkeys; j0 += kb) {
        int64_t nk = nkeys - j0 < kb ? nkeys - j0 : kb;
        int64_t nkt = (nk + 8 * AKV - 1) / (8 * AKV) * (8 * AKV); // whole micro-tiles
        const float *Ktb = Kt + j0 / kb * HS * kb;
        for (int64_t r0 = 0; r0 < nqp; r0 += AQ) {
            if (wide) score_block16(S, Qs + r0 * HS, HS, Ktb, kb, nk);
            else for (int64_t jt = 0; jt < nkt; jt += 8 * AKV) score_tile(S, Qs + r0 * HS, HS, Ktb, kb, jt);
            int64_t n[AQ], nmax = 0; // keys each row, and any of the AQ rows, sees in this block
            for (int r = 0; r < AQ; r++) {
                n[r] = causal ? i0 + r0 + r + 1 - j0 : nk;
                if (n[r] > nk) n[r] = nk;
                if (n[r] > nmax) nmax = n[r];
            }
            if (wide) online_softmax_tile16(S, kb, n, nk, &m[r0], &l[r0], O + r0 * HS, HS);
            else online_softmax_tile(S, kb, n, nk, &m[r0], &l[r0], O + r0 * HS, HS);
            if (wide) pv_rows16(O + r0 * HS, HS, S, kb, Vp + j0 * HS, HS, nmax);
            else for (int r = 0; r < AQ; r += 2)
                pv_rows(O + (r0 + r) * HS, HS, S + r * kb, kb, Vp + j0 * HS, HS, nmax, nv);
        }
    }
    for (int64_t r = 0; r < nq; r++) {
        float inv = 1.0f / l[r];
        for (int64_t d = 0; d < HS; d++) oh[(i0 + r) * D + d] = O[r * HS + d] * inv;
    }
}

int cpu_attention_flash_simd(float *out, const float *q, const float *k, const float *v,
                             int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                             float scale, int causal, int nthreads, cpu_simd simd) {
    if (HS % 8 != 0 || Tk < 1) return -1; // the micro-kernels work in 8-float vectors
    if (simd == CPU_SIMD_AUTO) simd = cpu_simd_best();
    if (simd == CPU_SIMD_AVX512 && cpu_simd_best() != CPU_SIMD_AVX512) return -1;
    int wide = simd == CPU_SIMD_AVX512;
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
    // keys per block: AKB (240, 96 and 48 measured alike at HS = 40 and 80
    // once the values are packed; the block size only has to be a whole
    // number of 24- and 48-key tiles)
    int64_t kb = AKB, nkb = (Tk + kb - 1) / kb;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *Kt = aligned_alloc(64, (size_t)(nkb * kb * HS) * sizeof(float));
        float *Vp = aligned_alloc(64, (size_t)(Tk * HS) * sizeof(float));
        float *Qs = aligned_alloc(64, (size_t)(AQB * HS) * sizeof(float));
        float *O = aligned_alloc(64, (size_t)(AQB * HS) * sizeof(float));
        float *S = aligned_alloc(64, (size_t)(AQ * kb) * sizeof(float));
        if (!Kt || !Vp || !Qs || !O || !S) {
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
            transpose_keys(Kt, kh, nkeys, D, HS, kb);
            pack_values(Vp, vh, nkeys, D, HS);
            for (int64_t i0 = r_begin; i0 < r_end; i0 += AQB) {
                int64_t nq = r_end - i0 < AQB ? r_end - i0 : AQB;
                flash_rows(oh, qh, Kt, Vp, i0, nq, Tk, D, HS, scale, causal, kb, nv, wide, Qs, O, S);
            }
        }
        free(Kt); free(Vp); free(Qs); free(O); free(S);
    }
    return failed ? -1 : 0;
}

#else // no AVX2 + FMA: the caller uses the two-sgemm kernel

int cpu_attention_flash_simd(float *out, const float *q, const float *k, const float *v,
                             int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                             float scale, int causal, int nthreads, cpu_simd simd) {
    return -1;
}

#endif

int cpu_attention_flash(float *out, const float *q, const float *k, const float *v,
                        int64_t B, int64_t Tq, int64_t Tk, int64_t NH, int64_t HS,
                        float scale, int causal, int nthreads) {
    return cpu_attention_flash_simd(out, q, k, v, B, Tq, Tk, NH, HS, scale, causal, nthreads,
                                    CPU_SIMD_AUTO);
}
