/*
 * ldm/backend/cpu_winograd.c -- 3x3 stride-1 convolution by Winograd's minimal
 * filtering algorithm F(4x4, 3x3), for the `cpu` backend.
 *
 * Follows Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"
 * (CVPR 2016), section 4, with better-conditioned interpolation points
 * (0, 1, -1, 1/2, -2, infinity; see below). Each 4x4 block of output pixels (a "tile") of one
 * output channel is
 *
 *     Y = A^T [ sum_ci (G g_{co,ci} G^T) (.) (B^T d_{ci} B) ] A      (eq. 10)
 *
 * where d_ci is the 6x6 input patch under the tile, g the 3x3 filter, (.) the
 * element-wise product. For each of the 36 points p of the 6x6 transformed
 * domain, the sum over input channels is a matrix product:
 *
 *     M[p][Cout, tiles] = U[p][Cout, Cin] @ V[p][Cin, tiles]
 *
 * so the whole convolution is: transform the filters (U = G g G^T), transform
 * the input tiles (V = B^T d B), 36 sgemms, transform back (Y = A^T M A).
 * The sgemms do 36 multiplies per tile where direct convolution does
 * 16 * 9 = 144: a quarter of the arithmetic.
 *
 * The transforms run on 8 tiles (or 8 filters) at once in GCC vector
 * extensions (one AVX2 register holds one value of 8 tiles); the gathers
 * from and scatters to NCHW are scalar. Tiles are processed in chunks and
 * output channels in blocks so that U, V and M stay within a few tens of MiB
 * whatever the image size. Filters are transformed on every call (about 1%
 * of the time at the UNet's shapes, see `make bench`), never cached.
 *
 * Arithmetic: exact in real numbers; in float32 the transforms' constants
 * (up to 5/2 in B, 8 in A) amplify rounding, so results differ from direct
 * convolution by a few 1e-6 of the output's largest value, against a few
 * 1e-7 for im2col + sgemm (docs/01-tensors-and-ops.md, "what Winograd does
 * to the arithmetic").
 *
 * Leaves out: F(6x6,3x3) (less accurate still), strides other than 1, other
 * kernel sizes, asymmetric padding (ops_cpu.c uses im2col + sgemm for those),
 * fp16 transforms, fusing the output transform with the next op.
 */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/cpu_kernels.h"

void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);

// 8 floats in one AVX2 register; lane l is tile (or filter) l of a group
typedef float v8 __attribute__((vector_size(32)));
#define LANES 8

static inline v8 v8_load(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void v8_store(float *p, v8 v) { memcpy(p, &v, sizeof v); }

// Bounds on the transformed input V and the products M (16M floats = 64 MiB:
// all tiles of the UNet's 32x32 and 64x64 levels at batch 2 fit in one chunk,
// so the filters are transformed once per call) and on the transformed
// filters U (8M floats = 32 MiB, at least 180 output channels per block).
#define WINO_V_FLOATS (16 << 20)
#define WINO_U_FLOATS (8 << 20)
// Fewer output tiles than this (whole batch): im2col + sgemm is faster,
// because the GEMMs get too thin to hide reading U (4x the size of w).
#define WINO_MIN_TILES 64
// Fewer channels than this (in or out): the transforms cost more than they save.
#define WINO_MIN_CHANNELS 16

// ---- the three 1-D transforms (Lavin & Gray, F(4x4,3x3)) ------------------------
// Each maps a column (stride s) of a small matrix of v8 to another column;
// applied to the columns and then to the rows it gives the 2-D transform.

// The interpolation points are 0, 1, -1, 1/2, -2 (and infinity) rather than
// Lavin & Gray's 0, +-1, +-2: the same operation count, and about a quarter of
// the rounding error in float32 (Barabasz et al., "Error analysis and
// improving the accuracy of Winograd convolution for deep neural networks",
// ACM TOMS 2020; measured here: max rel error 3.3e-6 against 1.2e-5 at 320
// input channels). Row j of B^T holds the coefficients (x^0 .. x^5) of
// prod_{l != j} (x - p_l), the last row those of prod_l (x - p_l); row j of
// G is (1, p_j, p_j^2) / prod_{l != j} (p_j - p_l); column j of A^T is
// (1, p_j, p_j^2, p_j^3); infinity gives the unit rows/columns.

// B^T (6x6):  [1 -3/2 -2  3/2 1 0;  0 -1  1/2 5/2 1 0;  0 1 -5/2  1/2 1 0;
//              0 -2   -1  2   1 0;  0 1/2 -1 -1/2 1 0;  0 1 -3/2 -2   3/2 1]
static inline void input_1d(v8 *o, int os, const v8 *d, int ds) {
    v8 d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds], d5 = d[5 * ds];
    o[0] = d0 - 1.5f * d1 - 2.0f * d2 + 1.5f * d3 + d4;
    o[os] = -d1 + 0.5f * d2 + 2.5f * d3 + d4;
    o[2 * os] = d1 - 2.5f * d2 + 0.5f * d3 + d4;
    o[3 * os] = -2.0f * d1 - d2 + 2.0f * d3 + d4;
    o[4 * os] = 0.5f * d1 - d2 - 0.5f * d3 + d4;
    o[5 * os] = d1 - 1.5f * d2 - 2.0f * d3 + 1.5f * d4 + d5;
}

// G (6x3): [1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3; -16/15 -8/15 -4/15; 1/15 -2/15 4/15; 0 0 1]
static inline void filter_1d(v8 *o, int os, const v8 *g, int gs) {
    v8 g0 = g[0], g1 = g[gs], g2 = g[2 * gs];
    o[0] = g0;
    o[os] = (1.0f / 3) * (g0 + g1 + g2);
    o[2 * os] = (-1.0f / 3) * (g0 - g1 + g2);
    o[3 * os] = (-4.0f / 15) * (4.0f * g0 + 2.0f * g1 + g2);
    o[4 * os] = (1.0f / 15) * (g0 - 2.0f * g1 + 4.0f * g2);
    o[5 * os] = g2;
}

// A^T (4x6): [1 1 1 1 1 0; 0 1 -1 1/2 -2 0; 0 1 1 1/4 4 0; 0 1 -1 1/8 -8 1]
static inline void output_1d(v8 *o, int os, const v8 *m, int ms) {
    v8 a = m[ms] + m[2 * ms], b = m[ms] - m[2 * ms], m3 = m[3 * ms], m4 = m[4 * ms];
    o[0] = m[0] + a + m3 + m4;
    o[os] = b + 0.5f * m3 - 2.0f * m4;
    o[2 * os] = a + 0.25f * m3 + 4.0f * m4;
    o[3 * os] = b + 0.125f * m3 - 8.0f * m4 + m[5 * ms];
}

// ---- the three 2-D stages ---------------------------------------------------------

// Tile t (global over the batch) -> image b and tile row/column.
struct tiling { int64_t th, tw; }; // tiles per image: th rows x tw columns

// V[p][ci][ntp] for the tiles t0 .. t0+nt-1: B^T d B of each 6x6 input patch.
// Lanes past nt are zero (so the padded GEMM columns are zero too).
static void input_transform(float *V, const float *x, int64_t Cin, int64_t H, int64_t W,
                            int64_t pad, struct tiling tl, int64_t t0, int64_t nt, int64_t ntp) {
    int64_t ngroups = ntp / LANES;
#pragma omp for collapse(2) schedule(static)
    for (int64_t ci = 0; ci < Cin; ci++)
        for (int64_t g = 0; g < ngroups; g++) {
            v8 d[36], tmp[36];
            for (int l = 0; l < LANES; l++) {
                int64_t t = t0 + g * LANES + l;
                if (t >= t0 + nt) {
                    for (int i = 0; i < 36; i++) d[i][l] = 0.0f;
                    continue;
                }
                int64_t b = t / (tl.th * tl.tw), r = t % (tl.th * tl.tw);
                int64_t iy0 = r / tl.tw * 4 - pad, ix0 = r % tl.tw * 4 - pad;
                const float *xc = x + (b * Cin + ci) * H * W;
                for (int i = 0; i < 6; i++)
                    for (int j = 0; j < 6; j++) {
                        int64_t iy = iy0 + i, ix = ix0 + j;
                        d[i * 6 + j][l] = iy >= 0 && iy < H && ix >= 0 && ix < W ? xc[iy * W + ix] : 0.0f;
                    }
            }
            for (int j = 0; j < 6; j++) input_1d(&tmp[j], 6, &d[j], 6);         // columns
            for (int i = 0; i < 6; i++) input_1d(&d[i * 6], 1, &tmp[i * 6], 1); // rows
            for (int p = 0; p < 36; p++) v8_store(V + (p * Cin + ci) * ntp + g * LANES, d[p]);
        }
}

// U[p][co - co0][ci] = G g G^T for the filters of output channels co0 .. co0+cb-1.
static void filter_transform(float *U, const float *w, int64_t Cin, int64_t co0, int64_t cb) {
    int64_t ngroups = (Cin + LANES - 1) / LANES;
#pragma omp for collapse(2) schedule(static)
    for (int64_t c = 0; c < cb; c++)
        for (int64_t g = 0; g < ngroups; g++) {
            v8 f[9], tmp[18], u[36];
            int64_t ci0 = g * LANES, nl = Cin - ci0 < LANES ? Cin - ci0 : LANES;
            for (int l = 0; l < LANES; l++)
                for (int k = 0; k < 9; k++)
                    f[k][l] = l < nl ? w[((co0 + c) * Cin + ci0 + l) * 9 + k] : 0.0f;
            for (int j = 0; j < 3; j++) filter_1d(&tmp[j], 3, &f[j], 3);       // columns
            for (int i = 0; i < 6; i++) filter_1d(&u[i * 6], 1, &tmp[i * 3], 1); // rows
            for (int p = 0; p < 36; p++) {
                float *dst = U + (p * cb + c) * Cin + ci0;
                if (nl == LANES) v8_store(dst, u[p]);
                else for (int l = 0; l < nl; l++) dst[l] = u[p][l];
            }
        }
}

// out[b, co0+c, 4ty+i, 4tx+j] = (A^T M A)[i][j] + bias, for the tiles t0 ..
// t0+nt-1 and the cb output channels of this block; edge tiles are clipped.
static void output_transform(float *out, const float *M, const float *bias, int64_t Cout,
                             int64_t Ho, int64_t Wo, struct tiling tl, int64_t co0, int64_t cb,
                             int64_t t0, int64_t nt, int64_t ntp) {
    int64_t ngroups = ntp / LANES;
#pragma omp for collapse(2) schedule(static)
    for (int64_t c = 0; c < cb; c++)
        for (int64_t g = 0; g < ngroups; g++) {
            v8 m[36], tmp[24], y[16];
            for (int p = 0; p < 36; p++) m[p] = v8_load(M + (p * cb + c) * ntp + g * LANES);
            for (int j = 0; j < 6; j++) output_1d(&tmp[j], 6, &m[j], 6);      // columns
            for (int i = 0; i < 4; i++) output_1d(&y[i * 4], 1, &tmp[i * 6], 1); // rows
            float bv = bias ? bias[co0 + c] : 0.0f;
            for (int l = 0; l < LANES; l++) {
                int64_t t = t0 + g * LANES + l;
                if (t >= t0 + nt) break;
                int64_t b = t / (tl.th * tl.tw), r = t % (tl.th * tl.tw);
                int64_t oy0 = r / tl.tw * 4, ox0 = r % tl.tw * 4;
                float *oc = out + (b * Cout + co0 + c) * Ho * Wo;
                for (int i = 0; i < 4 && oy0 + i < Ho; i++)
                    for (int j = 0; j < 4 && ox0 + j < Wo; j++)
                        oc[(oy0 + i) * Wo + ox0 + j] = y[i * 4 + j][l] + bv;
            }
        }
}

// ---- the convolution ---------------------------------------------------------------

int cpu_winograd_fits(int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout,
                      int64_t KH, int64_t KW, int64_t stride,
                      int64_t pad_t, int64_t pad_b, int64_t pad_l, int64_t pad_r) {
    if (KH != 3 || KW != 3 || stride != 1) return 0;
    if (pad_t != pad_b || pad_t != pad_l || pad_t != pad_r || pad_t < 0 || pad_t > 1) return 0;
    int64_t Ho = H + 2 * pad_t - 2, Wo = W + 2 * pad_t - 2;
    if (Ho < 1 || Wo < 1) return 0;
    if (Cin < WINO_MIN_CHANNELS || Cout < WINO_MIN_CHANNELS) return 0;
    return B * ((Ho + 3) / 4) * ((Wo + 3) / 4) >= WINO_MIN_TILES;
}

int cpu_conv3x3_winograd(float *out, const float *x, const float *w, const float *bias,
                         int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Cout,
                         int64_t pad, int nthreads) {
    int64_t Ho = H + 2 * pad - 2, Wo = W + 2 * pad - 2;
    struct tiling tl = {(Ho + 3) / 4, (Wo + 3) / 4};
    int64_t ntiles = B * tl.th * tl.tw;
    // tile chunk: V[36][Cin][ntc] within the bound, a multiple of the lanes
    int64_t ntc = WINO_V_FLOATS / (36 * Cin) / LANES * LANES;
    if (ntc < LANES) ntc = LANES;
    int64_t ntiles_p = (ntiles + LANES - 1) / LANES * LANES;
    if (ntc > ntiles_p) ntc = ntiles_p;
    // output-channel block: U[36][cb][Cin] and M[36][cb][ntc] within their bounds
    int64_t cb = WINO_U_FLOATS / (36 * Cin);
    if (cb > WINO_V_FLOATS / (36 * ntc)) cb = WINO_V_FLOATS / (36 * ntc);
    if (cb < 1) cb = 1;
    if (cb > Cout) cb = Cout;
    float *V = NULL, *U = NULL, *M = NULL;
    if (posix_memalign((void **)&V, 64, (size_t)(36 * Cin * ntc) * sizeof(float)) ||
        posix_memalign((void **)&U, 64, (size_t)(36 * cb * Cin) * sizeof(float)) ||
        posix_memalign((void **)&M, 64, (size_t)(36 * cb * ntc) * sizeof(float))) {
        free(V); free(U); free(M);
        return -1;
    }
    // One OpenMP team does everything; each thread's sgemms run on one
    // OpenBLAS thread (OpenBLAS's own pool must not start inside the team).
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel num_threads(nthreads)
    for (int64_t t0 = 0; t0 < ntiles; t0 += ntc) {
        int64_t nt = ntiles - t0 < ntc ? ntiles - t0 : ntc;
        int64_t ntp = (nt + LANES - 1) / LANES * LANES; // V's and M's row length
        input_transform(V, x, Cin, H, W, pad, tl, t0, nt, ntp);
        for (int64_t co0 = 0; co0 < Cout; co0 += cb) {
            int64_t n = Cout - co0 < cb ? Cout - co0 : cb;
            filter_transform(U, w, Cin, co0, n); // (omp for: implicit barrier after each stage)
#pragma omp for schedule(dynamic, 1)
            for (int p = 0; p < 36; p++) // M[p][n, ntp] = U[p][n, Cin] @ V[p][Cin, ntp]
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)ntp, (int)Cin,
                            1.0f, U + p * n * Cin, (int)Cin, V + p * Cin * ntp, (int)ntp, 0.0f,
                            M + p * n * ntp, (int)ntp);
            output_transform(out, M, bias, Cout, Ho, Wo, tl, co0, n, t0, nt, ntp);
        }
    }
    openblas_set_num_threads(blas_threads);
    free(V); free(U); free(M);
    return 0;
}
