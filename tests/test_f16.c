/*
 * tests/test_f16.c -- fp16/bf16-resident weights and the low-memory mode.
 *
 *   1. half <-> float conversions: every fp16 value widens and narrows back to
 *      itself; rounding to nearest even at a tie; bf16 the same way.
 *   2. linear / conv2d with a 16-bit weight, on ref and cpu, against the fp32
 *      op of ref on the widened weight (the widening is exact, so only the
 *      summation order differs): odd shapes, dims of 1, and weights large
 *      enough that cpu splits them into panels.
 *   3. the tiny model (tools/tiny-model, an fp16 diffusers folder) loaded
 *      fp16-resident vs fp32-resident: weights kept as F16 and pointing into
 *      the mapped file; UNet and VAE decoder outputs within 1e-6 relative.
 *   4. low-memory mode vs the default: the same image bytes.
 * No timing is asserted.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/model.h"
#include "ldm/pipeline.h"
#include "ldm/unet.h"
#include "ldm/vae.h"
#include "samplers/sampler.h"
#include "tests/test.h"

extern const struct ldm_ops ldm_ops_cuda_emu;

// Deterministic U(-1,1) values.
static uint64_t lcg = 0x243F6A8885A308D3ull;
static float urand(void) {
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(lcg >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}
static float *rand_vec(int64_t n, float scale) {
    float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = scale * urand();
    return v;
}

// ---- 1. conversions ------------------------------------------------------------

static void test_conversions(void) {
    printf("== half <-> float\n");
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ldm_f16_to_f32((uint16_t)h);
        if (f != f) continue;   // NaN: stays NaN (checked below)
        if (ldm_f32_to_f16(f) != h) bad++;
    }
    test_check(bad == 0, "f16 -> f32 -> f16 is the identity (65536 values)", "%d differ", bad);
    float nan = ldm_f16_to_f32(0x7e00);
    test_check(nan != nan && ldm_f32_to_f16(nan) >= 0x7c01, "NaN stays NaN", "got 0x%04x", ldm_f32_to_f16(nan));
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1.0);
    // 1 + 3*2^-11 is halfway between 1+2^-10 and 1+2^-9: even is 1+2^-9.
    test_check(ldm_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00 &&
                   ldm_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02,
               "f16 rounds to nearest, ties to even", "wrong rounding");
    test_check(ldm_f32_to_f16(65504.0f) == 0x7bff && ldm_f32_to_f16(65520.0f) == 0x7c00 &&
                   ldm_f32_to_f16(0x1p-24f) == 0x0001 && ldm_f32_to_f16(0x1p-26f) == 0,
               "f16 max, overflow to inf, subnormals", "wrong value");
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ldm_bf16_to_f32((uint16_t)h);
        if (f != f) continue;
        if (ldm_f32_to_bf16(f) != h) bad++;
    }
    test_check(bad == 0, "bf16 -> f32 -> bf16 is the identity", "%d differ", bad);
    test_check(ldm_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80 && ldm_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82,
               "bf16 rounds to nearest, ties to even", "wrong rounding");
}

// ---- 2. ops ----------------------------------------------------------------------

// A tensor on ops from host data (fp32) or halves (F16/BF16).
static ldm_tensor put(const struct ldm_ops *ops, const void *src, ldm_dtype dt, const int64_t *shape,
                      int ndim) {
    ldm_tensor t = ldm_tensor_new_dtype(ops, shape, ndim, dt);
    if (t.numel) ops->upload(t.data, src, (size_t)t.numel * ldm_tensor_elem_size(dt));
    return t;
}

// w16[n] = narrow(w[n]) and w[n] = widen(w16[n]): w is then exactly the weight.
static uint16_t *halves(float *w, int64_t n, ldm_dtype dt) {
    uint16_t *h = malloc((size_t)(n ? n : 1) * sizeof *h);
    for (int64_t i = 0; i < n; i++) {
        h[i] = dt == LDM_DTYPE_F16 ? ldm_f32_to_f16(w[i]) : ldm_f32_to_bf16(w[i]);
        w[i] = dt == LDM_DTYPE_F16 ? ldm_f16_to_f32(h[i]) : ldm_bf16_to_f32(h[i]);
    }
    return h;
}

// Single op tolerance: 1e-5 relative (fp32 sums in another order than ref's
// double sums), the project's single-op bar; ref's own half op is exact.
static void check_linear(const struct ldm_ops *ops, int64_t M, int64_t K, int64_t N, ldm_dtype dt,
                         int with_bias) {
    float *x = rand_vec(M * K, 1.0f), *w = rand_vec(N * K, 0.5f), *b = rand_vec(N, 0.1f);
    uint16_t *wh = halves(w, N * K, dt);
    ldm_tensor X = put(&ldm_ops_ref, x, LDM_DTYPE_F32, LDM_SHAPE(M, K));
    ldm_tensor Wf = put(&ldm_ops_ref, w, LDM_DTYPE_F32, LDM_SHAPE(N, K));
    ldm_tensor Bf = put(&ldm_ops_ref, b, LDM_DTYPE_F32, LDM_SHAPE(N));
    ldm_tensor E = ldm_tensor_new(&ldm_ops_ref, LDM_SHAPE(M, N));
    ldm_linear(&E, &X, &Wf, with_bias ? &Bf : NULL);
    ldm_tensor x2 = put(ops, x, LDM_DTYPE_F32, LDM_SHAPE(M, K));
    ldm_tensor w2 = put(ops, wh, dt, LDM_SHAPE(N, K));
    ldm_tensor b2 = put(ops, b, LDM_DTYPE_F32, LDM_SHAPE(N));
    ldm_tensor o2 = ldm_tensor_new(ops, LDM_SHAPE(M, N));
    ldm_linear(&o2, &x2, &w2, with_bias ? &b2 : NULL);
    float *got = malloc((size_t)(M * N + 1) * sizeof *got);
    ldm_tensor_to_host(got, &o2);
    char name[160];
    snprintf(name, sizeof name, "%s linear %s w [%lld,%lld] x [%lld,%lld]%s", ops->name,
             dt == LDM_DTYPE_F16 ? "f16" : "bf16", (long long)N, (long long)K, (long long)M,
             (long long)K, with_bias ? " + b" : "");
    if (ops == &ldm_ops_ref)
        test_check(M * N == 0 || memcmp(got, E.data, (size_t)(M * N) * 4) == 0, name,
                   "not bit-identical to ref fp32");
    else
        test_close(name, got, E.data, M * N, 1e-5, 0);
    free(got); free(x); free(w); free(b); free(wh);
    ldm_tensor_free(&X); ldm_tensor_free(&Wf); ldm_tensor_free(&Bf); ldm_tensor_free(&E);
    ldm_tensor_free(&x2); ldm_tensor_free(&w2); ldm_tensor_free(&b2); ldm_tensor_free(&o2);
}

static void check_conv(const struct ldm_ops *ops, int64_t B, int64_t Cin, int64_t H, int64_t W,
                       int64_t Cout, int64_t KH, int64_t KW, int64_t s, int64_t pt, int64_t pb,
                       int64_t pl, int64_t pr, ldm_dtype dt) {
    int64_t Ho = (H + pt + pb - KH) / s + 1, Wo = (W + pl + pr - KW) / s + 1;
    int64_t nw = Cout * Cin * KH * KW, no = B * Cout * Ho * Wo;
    float *x = rand_vec(B * Cin * H * W, 1.0f), *w = rand_vec(nw, 0.5f), *b = rand_vec(Cout, 0.1f);
    uint16_t *wh = halves(w, nw, dt);
    ldm_tensor X = put(&ldm_ops_ref, x, LDM_DTYPE_F32, LDM_SHAPE(B, Cin, H, W));
    ldm_tensor Wf = put(&ldm_ops_ref, w, LDM_DTYPE_F32, LDM_SHAPE(Cout, Cin, KH, KW));
    ldm_tensor Bf = put(&ldm_ops_ref, b, LDM_DTYPE_F32, LDM_SHAPE(Cout));
    ldm_tensor E = ldm_tensor_new(&ldm_ops_ref, LDM_SHAPE(B, Cout, Ho, Wo));
    ldm_conv2d(&E, &X, &Wf, &Bf, s, pt, pb, pl, pr);
    ldm_tensor x2 = put(ops, x, LDM_DTYPE_F32, LDM_SHAPE(B, Cin, H, W));
    ldm_tensor w2 = put(ops, wh, dt, LDM_SHAPE(Cout, Cin, KH, KW));
    ldm_tensor b2 = put(ops, b, LDM_DTYPE_F32, LDM_SHAPE(Cout));
    ldm_tensor o2 = ldm_tensor_new(ops, LDM_SHAPE(B, Cout, Ho, Wo));
    ldm_conv2d(&o2, &x2, &w2, &b2, s, pt, pb, pl, pr);
    float *got = malloc((size_t)no * sizeof *got);
    ldm_tensor_to_host(got, &o2);
    char name[200];
    snprintf(name, sizeof name, "%s conv2d %s x [%lld,%lld,%lld,%lld] w [%lld,%lld,%lld,%lld] s%lld "
             "pad %lld%lld%lld%lld", ops->name, dt == LDM_DTYPE_F16 ? "f16" : "bf16",
             (long long)B, (long long)Cin, (long long)H, (long long)W, (long long)Cout,
             (long long)Cin, (long long)KH, (long long)KW, (long long)s, (long long)pt,
             (long long)pb, (long long)pl, (long long)pr);
    if (ops == &ldm_ops_ref)
        test_check(memcmp(got, E.data, (size_t)no * 4) == 0, name, "not bit-identical to ref fp32");
    else
        test_close(name, got, E.data, no, 1e-5, 0);
    free(got); free(x); free(w); free(b); free(wh);
    ldm_tensor_free(&X); ldm_tensor_free(&Wf); ldm_tensor_free(&Bf); ldm_tensor_free(&E);
    ldm_tensor_free(&x2); ldm_tensor_free(&w2); ldm_tensor_free(&b2); ldm_tensor_free(&o2);
}

static void test_ops(void) {
    printf("== linear / conv2d with fp16 and bf16 weights\n");
    const struct ldm_ops *backends[] = {&ldm_ops_ref, &ldm_ops_cpu};
    for (int bi = 0; bi < 2; bi++) {
        const struct ldm_ops *ops = backends[bi];
        for (int d = 0; d < 2; d++) {
            ldm_dtype dt = d ? LDM_DTYPE_BF16 : LDM_DTYPE_F16;
            check_linear(ops, 1, 1, 1, dt, 1);
            check_linear(ops, 3, 7, 5, dt, 1);
            check_linear(ops, 2, 33, 17, dt, 0);
            check_linear(ops, 1, 77, 1, dt, 1);
            check_conv(ops, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, dt);
            check_conv(ops, 2, 3, 5, 7, 4, 3, 3, 1, 1, 1, 1, 1, dt);
            check_conv(ops, 1, 5, 6, 6, 3, 3, 3, 2, 0, 1, 0, 1, dt);   // VAE downsample padding
            check_conv(ops, 2, 6, 4, 3, 5, 1, 1, 1, 0, 0, 0, 0, dt);   // 1x1: direct sgemm
        }
    }
    // Weights over cpu_f16.c's 16 MiB panel: split into panels (cpu only;
    // ref is the expectation).
    check_linear(&ldm_ops_cpu, 3, 2048, 2100, LDM_DTYPE_F16, 1);
    check_linear(&ldm_ops_cpu, 1, 4097, 1025, LDM_DTYPE_BF16, 0);
    check_conv(&ldm_ops_cpu, 2, 512, 4, 3, 1000, 3, 3, 1, 1, 1, 1, 1, LDM_DTYPE_F16);
    check_conv(&ldm_ops_cpu, 1, 4200, 2, 2, 1001, 1, 1, 1, 0, 0, 0, 0, LDM_DTYPE_F16);
}

// ---- 3. the tiny model fp16- vs fp32-resident --------------------------------------

#define TINY LDM_TINY_MODEL_DEFAULT

static int open_tiny(ldm_model *m, const struct ldm_ops *ops, ldm_weights_dtype wd, int low) {
    ldm_model_options o = {.ops = ops, .prediction = LDM_PRED_AUTO};
    if (ldm_model_open(m, TINY, &o)) return LDM_ERR;
    ldm_model_set_residency(m, wd, low);
    return 0;
}

static int tensor_in_file(const ldm_tensor *t, const ldm_tensor_file *f) {
    const char *p = (const char *)t->data, *base = f->map;
    return f->map && p >= base && p < base + f->map_size;
}

static void test_tiny_resident(void) {
    printf("== tiny model: fp16-resident vs fp32-resident\n");
    ldm_model mh, mf;
    if (!test_check(open_tiny(&mh, &ldm_ops_cpu, LDM_WEIGHTS_AUTO, 0) == 0, "open " TINY " (auto)",
                    "%s", ldm_last_error()))
        return;
    if (!test_check(open_tiny(&mf, &ldm_ops_cpu, LDM_WEIGHTS_F32, 0) == 0, "open " TINY " (f32)",
                    "%s", ldm_last_error())) {
        ldm_model_close(&mh);
        return;
    }
    ldm_unet uh, uf;
    int ok = test_check(ldm_unet_load(&uh, &mh.unet, &mh.unet_w) == 0, "load UNet fp16-resident", "%s",
                        ldm_last_error());
    ok = ok && test_check(ldm_unet_load(&uf, &mf.unet, &mf.unet_w) == 0, "load UNet fp32-resident",
                          "%s", ldm_last_error());
    if (ok) {
        const ldm_tensor *w = &uh.time_w1, *b = &uh.time_b1;
        test_check(w->dtype == LDM_DTYPE_F16 && w->owns == 0 && tensor_in_file(w, &mh.files[0]),
                   "a linear weight stays F16, in the mapped file", "dtype %d owns %d", (int)w->dtype,
                   w->owns);
        test_check(b->dtype == LDM_DTYPE_F32 && b->owns == 1, "a bias is widened to fp32", "dtype %d",
                   (int)b->dtype);
        test_check(uf.time_w1.dtype == LDM_DTYPE_F32, "--weights f32 widens matrices", "dtype %d", (int)uf.time_w1.dtype);
        int64_t lat = uh.cfg.in_channels;
        int64_t B = 2, S = 8, T = 77, D = uh.cfg.cross_attention_dim;
        float *x = rand_vec(B * lat * S * S, 1.0f), *c = rand_vec(B * T * D, 1.0f);
        float t[2] = {999.0f, 421.0f};
        ldm_tensor X = put(&ldm_ops_cpu, x, LDM_DTYPE_F32, LDM_SHAPE(B, lat, S, S));
        ldm_tensor Cx = put(&ldm_ops_cpu, c, LDM_DTYPE_F32, LDM_SHAPE(B, T, D));
        ldm_tensor oh = ldm_tensor_new(&ldm_ops_cpu, LDM_SHAPE(B, uh.cfg.out_channels, S, S));
        ldm_tensor of = ldm_tensor_new(&ldm_ops_cpu, LDM_SHAPE(B, uh.cfg.out_channels, S, S));
        int rh = ldm_unet_forward(&oh, &uh, &X, t, &Cx), rf = ldm_unet_forward(&of, &uf, &X, t, &Cx);
        // Exact widening + the same GEMMs: only summation order could differ
        // (it does not, when no weight is split into panels).
        if (test_check(rh == 0 && rf == 0, "UNet forward both ways", "%s", ldm_last_error()))
            test_close("UNet eps fp16-resident vs fp32-resident", oh.data, of.data, oh.numel, 1e-6, 0);
        ldm_tensor_free(&X); ldm_tensor_free(&Cx); ldm_tensor_free(&oh); ldm_tensor_free(&of);
        free(x); free(c);
    }
    if (ok) { ldm_unet_free(&uh); ldm_unet_free(&uf); }

    ldm_vae vh, vf;
    ok = test_check(ldm_vae_load(&vh, &mh.vae, &mh.vae_w, LDM_VAE_DECODER) == 0 &&
                        ldm_vae_load(&vf, &mf.vae, &mf.vae_w, LDM_VAE_DECODER) == 0,
                    "load VAE decoder both ways", "%s", ldm_last_error());
    if (ok) {
        int64_t Z = mh.vae.latent_channels, S = 4;
        float *z = rand_vec(Z * S * S, 1.0f);
        ldm_tensor Zt = put(&ldm_ops_cpu, z, LDM_DTYPE_F32, LDM_SHAPE(1, Z, S, S));
        ldm_tensor ih = {0}, iff = {0};   // new tensors made by the decoder
        int rh = ldm_vae_decoder_forward(&ih, &vh, &Zt), rf = ldm_vae_decoder_forward(&iff, &vf, &Zt);
        if (test_check(rh == 0 && rf == 0, "VAE decoder forward both ways", "%s", ldm_last_error()))
            test_close("VAE image fp16-resident vs fp32-resident", ih.data, iff.data, ih.numel, 1e-6, 0);
        ldm_tensor_free(&Zt); ldm_tensor_free(&ih); ldm_tensor_free(&iff);
        free(z);
        ldm_vae_free(&vh);
        ldm_vae_free(&vf);
    }
    // A backend without half ops (cuda-emu) gets fp32 uploads.
    ldm_model me;
    if (test_check(open_tiny(&me, &ldm_ops_cuda_emu, LDM_WEIGHTS_AUTO, 0) == 0, "open on cuda-emu",
                   "%s", ldm_last_error())) {
        ldm_tensor w = {0};
        int64_t T = 4 * mh.unet.block_out_channels[0], C0 = mh.unet.block_out_channels[0];
        int r = ldm_weights_load(&w, &me.unet_w, "time_embedding.linear_1.weight", LDM_SHAPE(T, C0));
        test_check(r == 0 && w.dtype == LDM_DTYPE_F32 && w.owns == 1,
                   "cuda-emu (no linear_half): fp16 weights uploaded as fp32", "%s",
                   r ? ldm_last_error() : "");
        ldm_tensor_free(&w);
        ldm_model_close(&me);
    }
    ldm_model_close(&mh);
    ldm_model_close(&mf);
}

// ---- 4. low-memory mode ---------------------------------------------------------------

static int generate(int low_memory, uint8_t *rgb) {
    ldm_pipeline p;
    ldm_pipeline_options o = {.ops = &ldm_ops_cpu, .prediction = LDM_PRED_AUTO,
                              .low_memory = low_memory};
    if (ldm_pipeline_open(&p, TINY, &o)) return LDM_ERR;
    if (low_memory && !p.unet.release_file) {
        ldm_pipeline_close(&p);
        return ldm_error("low-memory mode set no release_file on the UNet");
    }
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, 7);
    int rc = ldm_sampler_parse(&si, &sk, "ddim");
    ldm_conventions conv = LDM_CONVENTIONS_DIFFUSERS;
    conv.truncate = 1;
    ldm_generate_params g = {
        .prompt = "a red circle", .negative = "", .width = 64, .height = 64, .batch = 1,
        .sampling = {.sampler = si, .sigma_kind = sk, .steps = 3, .eta = 0.0f, .conv = conv},
        .cfg_scale = 5.0f, .clip_skip = 1, .rng = &rng,
    };
    if (rc == 0) rc = ldm_generate(&p, &g, NULL, rgb);
    ldm_pipeline_close(&p);
    return rc;
}

static void test_low_memory(void) {
    printf("== low-memory mode vs default\n");
    size_t n = 64 * 64 * 3;
    uint8_t *a = calloc(n, 1), *b = calloc(n, 1);
    int ra = generate(0, a);
    test_check(ra == 0, "txt2img 64x64, default", "%s", ra ? ldm_last_error() : "");
    int rb = generate(1, b);
    test_check(rb == 0, "txt2img 64x64, low_memory", "%s", rb ? ldm_last_error() : "");
    if (ra == 0 && rb == 0)
        test_check(memcmp(a, b, n) == 0, "low-memory image bytes == default image bytes", "differ");
    free(a);
    free(b);
}

int main(void) {
    test_conversions();
    test_ops();
    test_tiny_resident();
    test_low_memory();
    return test_summary();
}
