/*
 * tests/test_upscale.c -- the x4 upscaler (ldm/upscale.h) against diffusers'
 * StableDiffusionUpscalePipeline.
 *
 * Fixtures: tests/fixtures/upscale/ (tools/reference/fixtures_upscale.py): a
 * tiny random model in the x4 upscaler's layout (7-channel UNet with a
 * 1000-row noise-level class embedding and only_cross_attention, a 3-level
 * VAE with scaling_factor 0.08333, v-prediction, DDIM) and, per case, the
 * low-res input, the final latent and the decoded image of
 *   ddim   16x16 -> 64x64, guidance 9 with a negative prompt, noise level 20
 *   b2     24x16 -> 96x64, 2 images sharing the low-res noise, no guidance,
 *          noise level 150
 * The case parameters below repeat the script's CASES.
 *
 * Tolerances as tests/test_pipeline.c: final latent 1e-3 relative, pixels
 * >= 99.9% identical, the rest off by at most 1.
 *
 * Then the config parsing of the upscaler's UNet fields, the model checks
 * (a text-to-image model is refused by ldm_upscaler_open, the upscaler by
 * ldm_pipeline_open) and the CLI: `sd upscale` writes the library's image.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/image.h"
#include "ldm/upscale.h"
#include "tests/test.h"

#define FIX "tests/fixtures/upscale/"

typedef struct ucase {
    const char *name, *prompt, *negative;
    int W, H, B, steps, noise_level, seed;
    float scale;
} ucase;

static const ucase CASES[] = {
    {"ddim", "a photograph of a cat", "blurry", 16, 16, 1, 5, 20, 42, 9.0f},
    {"b2", "a red brick wall", "", 24, 16, 2, 4, 150, 7, 1.0f},
};

// >= 99.9% identical, the rest within 1 (max_off > 0: every pixel within max_off)
static void check_pixels(const char *name, const uint8_t *got, const uint8_t *exp, int64_t n,
                         int max_off) {
    int64_t same = 0, worst = 0;
    for (int64_t i = 0; i < n; i++) {
        int d = abs((int)got[i] - (int)exp[i]);
        same += d == 0;
        if (d > worst) worst = d;
    }
    double frac = (double)same / n;
    int ok = max_off ? worst <= max_off : (frac >= 0.999 && worst <= 1);
    test_check(ok, name, "%.4f%% identical, max off %lld", 100 * frac, (long long)worst);
    printf("          %s: %.4f%% identical, max off %lld\n", name, 100 * frac, (long long)worst);
}

static int open_upscaler(ldm_upscaler *u) {
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu, .prediction = LDM_PRED_AUTO};
    return test_check(ldm_upscaler_open(u, FIX "model", &po) == 0, "open the upscaler",
                      "%s", ldm_last_error());
}

static void test_case(ldm_upscaler *u, const ucase *c) {
    printf("-- %s\n", c->name);
    char path[256], name[128];
    snprintf(path, sizeof path, FIX "low_%s.png", c->name);
    ldm_image low = {0}, exp = {0};
    int64_t n_lat = 0;
    float *lat = NULL;
    if (!test_check(ldm_png_read(&low, path) == 0, path, "%s", ldm_last_error())) goto done;
    snprintf(path, sizeof path, FIX "%s_image.png", c->name);
    if (!test_check(ldm_png_read(&exp, path) == 0, path, "%s", ldm_last_error())) goto done;
    snprintf(path, sizeof path, FIX "%s_latent.npy", c->name);
    if (!(lat = test_load_npy(path, &n_lat))) goto done;
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    if (ldm_sampler_parse(&si, &sk, "ddim") != 0) goto done;
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, (uint64_t)c->seed);
    ldm_upscale_params g = {
        .prompt = c->prompt, .negative = c->negative, .low_rgb = low.rgb, .width = low.width,
        .height = low.height, .batch = c->B, .noise_level = c->noise_level,
        .sampling = {.sampler = si, .sigma_kind = sk, .steps = c->steps, .eta = 0.0f,
                     .conv = LDM_CONVENTIONS_DIFFUSERS},
        .cfg_scale = c->scale, .rng = &rng,
    };
    const int64_t n_px = (int64_t)c->B * 16 * c->W * c->H * 3;
    test_check(low.width == c->W && low.height == c->H && exp.width == 4 * c->W &&
               exp.height == c->B * 4 * c->H && n_lat == (int64_t)c->B * 4 * c->W * c->H,
               "fixture sizes", "low %dx%d, image %dx%d, latent %lld", low.width, low.height,
               exp.width, exp.height, (long long)n_lat);
    float *got = malloc((size_t)n_lat * sizeof *got);
    uint8_t *rgb = malloc((size_t)n_px);
    if (test_check(got && rgb && n_px == (int64_t)exp.width * exp.height * 3 &&
                   ldm_upscale(u, &g, got, rgb) == 0, "upscale", "%s", ldm_last_error())) {
        snprintf(name, sizeof name, "%s final latent [%d,4,%d,%d]", c->name, c->B, c->H, c->W);
        test_close(name, got, lat, n_lat, 1e-3, 0);
        snprintf(name, sizeof name, "%s pixels [%d,%d,%d,3]", c->name, c->B, 4 * c->H, 4 * c->W);
        check_pixels(name, rgb, exp.rgb, n_px, 0);
    }
    free(got);
    free(rgb);
done:
    free(lat);
    ldm_image_free(&low);
    ldm_image_free(&exp);
}

// A noise level above max_noise_level and a size the UNet cannot halve are
// refused before anything runs.
static void test_checks(ldm_upscaler *u) {
    uint8_t px[16 * 16 * 3] = {0};
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    ldm_sampler_parse(&si, &sk, "ddim");
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, 1);
    ldm_upscale_params g = {.prompt = "", .low_rgb = px, .width = 16, .height = 16, .batch = 1,
                            .noise_level = 351, .sampling = {.sampler = si, .steps = 2},
                            .cfg_scale = 9, .rng = &rng};
    test_check(u->max_noise_level == 350, "max_noise_level from model_index.json", "%d",
               u->max_noise_level);
    test_check(ldm_upscale_check(u, &g) != 0 && strstr(ldm_last_error(), "noise level 351"),
               "noise level 351 > 350 refused", "%s", ldm_last_error());
    g.noise_level = 20, g.width = 12;
    test_check(ldm_upscale_check(u, &g) != 0 && strstr(ldm_last_error(), "multiples of 8"),
               "width 12 refused (not a multiple of 8)", "%s", ldm_last_error());
    g.width = 16;
    test_check(ldm_upscale_check(u, &g) == 0, "16x16 noise level 20 accepted", "%s",
               ldm_last_error());
}

// The upscaler's UNet config fields, from diffusers' rules.
static void test_config(void) {
    ldm_unet_config c;
    const char *base =
        "{\"block_out_channels\": [32, 32], \"down_block_types\": [\"DownBlock2D\", "
        "\"CrossAttnDownBlock2D\"], \"up_block_types\": [\"CrossAttnUpBlock2D\", \"UpBlock2D\"], "
        "\"cross_attention_dim\": 8, \"in_channels\": 7, %s}";
    char js[1024];
    snprintf(js, sizeof js, base, "\"num_class_embeds\": 1000, \"only_cross_attention\": [true, false]");
    int ok = ldm_unet_config_parse(&c, js, "t") == 0 && c.num_class_embeds == 1000 &&
             c.only_cross_attention[0] == 1 && c.only_cross_attention[1] == 0 &&
             c.mid_only_cross_attention == 0 && c.in_channels == 7;
    test_check(ok, "unet config: num_class_embeds, only_cross_attention list (mid: false)", "%s",
               ok ? "" : ldm_last_error());
    snprintf(js, sizeof js, base, "\"only_cross_attention\": true");
    ok = ldm_unet_config_parse(&c, js, "t") == 0 && c.only_cross_attention[0] &&
         c.only_cross_attention[1] && c.mid_only_cross_attention && c.num_class_embeds == 0;
    test_check(ok, "unet config: only_cross_attention true applies to the mid block too", "%s", "");
    snprintf(js, sizeof js, base, "\"num_class_embeds\": 10, \"class_embed_type\": \"timestep\"");
    test_check(ldm_unet_config_parse(&c, js, "t") != 0 &&
               strstr(ldm_last_error(), "class_embed_type"),
               "unet config: class_embed_type timestep refused", "%s", ldm_last_error());
    snprintf(js, sizeof js, base, "\"only_cross_attention\": [true]");
    test_check(ldm_unet_config_parse(&c, js, "t") != 0, "unet config: a list of the wrong length "
               "refused", "%s", "");
}

// Mean |a-b| relative to max|b|: the measure of tests/test_vae.c for tiled
// vs untiled decodes (a smooth, not exact, match).
static double mean_rel(const float *a, const float *b, int64_t n) {
    double s = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        s += fabs((double)a[i] - b[i]);
        if (fabs(b[i]) > m) m = fabs(b[i]);
    }
    return s / (double)n / (m > 0 ? m : 1);
}

// Tiled decoding with the upscaler's f=4 VAE: the ddim fixture latent
// [1,4,16,16] decoded whole and in 8x8-latent tiles (overlap 2: a 3x3 plan,
// 32x32-pixel tiles) agree within tests/test_vae.c's tiled-vs-untiled bound
// (mean |d| / max|ref| <= 0.15: GroupNorm statistics and the mid attention are
// per tile by design); the untiled decode is checked against diffusers through
// the pixels of test_case. AUTO under a budget below the untiled estimate
// takes the same tiles; above it, the untiled decode.
static void test_tiling(ldm_upscaler *u) {
    printf("-- tiled decoding (f=4 VAE)\n");
    int64_t n = 0;
    float *lat = test_load_npy(FIX "ddim_latent.npy", &n);
    if (!test_check(lat && n == 4 * 16 * 16, "ddim latent [1,4,16,16]", "%lld values", (long long)n)) {
        free(lat);
        return;
    }
    ldm_vae *vae = &u->p.vae;
    ldm_tensor z = ldm_tensor_new(vae->ops, LDM_SHAPE(1, 4, 16, 16));
    ldm_tensor_from_host(&z, lat);
    const int64_t n_px = 3 * 64 * 64;
    const int64_t est = ldm_vae_decode_bytes(&vae->cfg, 1, 16, 16);
    ldm_vae_options off = {.tiling = LDM_VAE_TILE_OFF};
    ldm_vae_options on = {.tiling = LDM_VAE_TILE_ON, .tile_latent = 8, .overlap_latent = 2};
    ldm_vae_options low = {.tiling = LDM_VAE_TILE_AUTO, .budget_mb = 1, .tile_latent = 8,
                           .overlap_latent = 2};
    ldm_vae_options high = {.tiling = LDM_VAE_TILE_AUTO, .budget_mb = 4096, .tile_latent = 8,
                            .overlap_latent = 2};
    ldm_tensor img[4];
    const ldm_vae_options *opts[4] = {&off, &on, &low, &high};
    float *h[4] = {0};
    int ok = 1;
    for (int i = 0; i < 4; i++) {
        ok &= ldm_vae_decode(&img[i], vae, &z, opts[i]) == 0 && img[i].numel == n_px;
        if (!ok) break;
        h[i] = malloc((size_t)n_px * sizeof(float));
        ldm_tensor_to_host(h[i], &img[i]);
        ldm_tensor_free(&img[i]);
    }
    if (test_check(ok, "decode [1,4,16,16] -> [1,3,64,64], untiled, tiled, auto", "%s",
                   ldm_last_error())) {
        double e = mean_rel(h[1], h[0], n_px), worst = 0;
        for (int64_t i = 0; i < n_px; i++) worst = fmax(worst, fabs((double)h[1][i] - h[0][i]));
        test_check(e <= 0.15, "tiled vs untiled decode (mean |d| / max|ref| <= 0.15)", "%.4f", e);
        printf("          tiled (3x3 tiles of 8x8 latent) vs untiled: mean |d| / max |ref| = "
               "%.4f, max |d| = %.4f\n", e, worst);
        test_check(e > 0, "tiled decode differs from untiled (the tiles ran)", "%g", e);
        // 1 MiB: below the estimate when it exceeds 1 MiB (then AUTO tiles)
        int tiles_low = est > ((int64_t)1 << 20);
        test_check(!memcmp(h[2], tiles_low ? h[1] : h[0], (size_t)n_px * sizeof(float)),
                   "auto, 1 MiB budget: the decode the estimate asks for", "estimate %lld bytes",
                   (long long)est);
        test_check(!memcmp(h[3], h[0], (size_t)n_px * sizeof(float)),
                   "auto, 4096 MiB budget: untiled", "differs");
        printf("          untiled estimate at 16x16: %.2f MiB\n", est / 1048576.0);
    }
    // The real upscaler's VAE (block_out_channels 128, 256, 512) on a 512x512
    // input: a 2048x2048 output whose untiled decode exceeds the default budget.
    ldm_vae_config big = vae->cfg;
    big.block_out_channels[0] = 128, big.block_out_channels[1] = 256, big.block_out_channels[2] = 512;
    big.layers_per_block = 2, big.norm_num_groups = 32;
    const int64_t est_big = ldm_vae_decode_bytes(&big, 1, 512, 512);
    test_check(est_big > ((int64_t)4096 << 20), "x4 upscaler VAE at 512x512 -> 2048x2048: untiled "
               "estimate above the 4096 MiB default budget (auto tiles)", "%.0f MiB",
               est_big / 1048576.0);
    printf("          x4 upscaler VAE, 2048x2048 output: untiled estimate %.0f MiB\n",
           est_big / 1048576.0);
    for (int i = 0; i < 4; i++) free(h[i]);
    ldm_tensor_free(&z);
    free(lat);
}

// Each pipeline refuses the other's model, saying what it is.
static void test_wrong_models(void) {
    ldm_upscaler u;
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu, .prediction = LDM_PRED_AUTO};
    test_check(ldm_upscaler_open(&u, "tests/fixtures/pipeline/model", &po) != 0 &&
               strstr(ldm_last_error(), "not an x4 upscaler"),
               "a text-to-image model refused by the upscaler", "%s", ldm_last_error());
    ldm_pipeline p;
    test_check(ldm_pipeline_open(&p, FIX "model", &po) != 0 && strstr(ldm_last_error(), "x4 upscaler") &&
               strstr(ldm_last_error(), "sd upscale"),
               "the upscaler refused by txt2img, pointing to sd upscale", "%s", ldm_last_error());
    printf("          %s\n", ldm_last_error());
}

// `sd upscale` writes the library's image (ddim case) to --out.
static void test_cli(void) {
    char sd[512], tmp[256], out_path[600], err_path[600], args[2048], png[600], *err;
    if (!test_cli_setup(sd, tmp, out_path, err_path, "test_upscale")) return;
    snprintf(png, sizeof png, "%s/up.png", tmp);
    snprintf(args, sizeof args,
             "upscale --ckpt " FIX "model --init-img " FIX "low_ddim.png --prompt 'a photograph "
             "of a cat' --negative-prompt blurry --steps 5 --scale 9 --noise_level 20 "
             "--seed 42 --out '%s'", png);
    int rc = test_run_cli(sd, args, out_path, err_path, &err);
    ldm_image got = {0}, exp = {0};
    if (test_check(rc == 0, "sd upscale exits 0", "exit %d: %s", rc, err) &&
        test_check(ldm_png_read(&got, png) == 0 && ldm_png_read(&exp, FIX "ddim_image.png") == 0 &&
                   got.width == exp.width && got.height == exp.height,
                   "sd upscale wrote a 64x64 PNG", "%s", ldm_last_error()))
        check_pixels("sd upscale image = diffusers", got.rgb, exp.rgb,
                     (int64_t)got.width * got.height * 3, 0);
    ldm_image_free(&got);
    ldm_image_free(&exp);
    rc = test_run_cli(sd, args, out_path, err_path, &err);
    test_check(rc == 1 && strstr(err, "already exists"), "sd upscale never overwrites",
               "exit %d: %s", rc, err);
    unlink(png);

    // a 72x72 input (a 72x72 latent, 288x288 output): --vae-tiling decodes in
    // tiles of 64 latent pixels; without it, $LDM_VAE_BUDGET_MB=1 (below the
    // untiled estimate) makes the automatic choice tile too, and the default
    // budget does not
    char low[600];
    snprintf(low, sizeof low, "%s/low72.png", tmp);
    uint8_t *px = malloc(72 * 72 * 3);
    for (int i = 0; i < 72 * 72 * 3; i++) px[i] = (uint8_t)(i * 7 % 251);
    ldm_image li = {.width = 72, .height = 72, .rgb = px};
    test_check(ldm_png_write(low, &li, 0, NULL, NULL, 1) == 0, "write a 72x72 input", "%s",
               ldm_last_error());
    free(px);
    static const struct { const char *flag, *budget, *expect, *name; } T[] = {
        {"--vae-tiling", NULL, "vae: tiled 2x2 tiles", "sd upscale --vae-tiling: 2x2 tiles"},
        {"", "1", "vae: tiled", "sd upscale, $LDM_VAE_BUDGET_MB=1: tiled automatically"},
        {"", NULL, "vae: untiled decode", "sd upscale, default budget: untiled"},
    };
    for (int i = 0; i < 3; i++) {
        if (T[i].budget) setenv("LDM_VAE_BUDGET_MB", T[i].budget, 1);
        else unsetenv("LDM_VAE_BUDGET_MB");
        snprintf(args, sizeof args, "upscale --ckpt " FIX "model --init-img '%s' --steps 1 "
                 "--seed 1 --verbose %s --out '%s'", low, T[i].flag, png);
        rc = test_run_cli(sd, args, out_path, err_path, &err);
        ldm_image big = {0};
        test_check(rc == 0 && strstr(err, T[i].expect) && ldm_png_read(&big, png) == 0 &&
                   big.width == 288 && big.height == 288, T[i].name, "exit %d: %s", rc, err);
        ldm_image_free(&big);
        unlink(png);
    }
    unsetenv("LDM_VAE_BUDGET_MB");
    unlink(low);
    unlink(out_path);
    unlink(err_path);
    rmdir(tmp);
}

int main(void) {
    test_config();
    ldm_upscaler u;
    if (open_upscaler(&u)) {
        printf("   unet %d levels, in %d, class embeds %d; vae %d levels, scale %.5f; %s\n",
               u.p.model.unet.n_levels, u.p.model.unet.in_channels,
               u.p.model.unet.num_class_embeds, u.p.vae.cfg.n_levels,
               u.p.vae.cfg.scaling_factor, ldm_prediction_name(u.p.model.prediction));
        for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) test_case(&u, &CASES[i]);
        test_checks(&u);
        test_tiling(&u);
        ldm_upscaler_close(&u);
    }
    test_wrong_models();
    test_cli();
    return test_summary();
}
