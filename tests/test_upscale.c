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

// Each pipeline refuses the other's model, saying what it is.
static void test_wrong_models(void) {
    ldm_upscaler u;
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu, .prediction = LDM_PRED_AUTO};
    test_check(ldm_upscaler_open(&u, "tests/fixtures/pipeline/model", &po) != 0 &&
               strstr(ldm_last_error(), "not an x4 upscaler"),
               "a text-to-image model refused by the upscaler", "%s", ldm_last_error());
    ldm_pipeline p;
    test_check(ldm_pipeline_open(&p, FIX "model", &po) != 0, "the upscaler refused by txt2img",
               "%s", ldm_last_error());
    printf("          %s\n", ldm_last_error());
}

// `sd upscale` writes the library's image (ddim case) to --out.
static void test_cli(void) {
    char sd[512], tmp[256], out_path[600], err_path[600], args[2048], png[600], *err;
    const char *b = getenv("LDM_SD");
    if (b) snprintf(sd, sizeof sd, "%s", b);
    else snprintf(sd, sizeof sd, "%s/sd", getenv("LDM_BUILD") ? getenv("LDM_BUILD") : "build");
    if (!test_check(access(sd, X_OK) == 0, "sd binary present", "%s not found (make first)", sd))
        return;
    snprintf(tmp, sizeof tmp, "/tmp/ldm_test_upscale_XXXXXX");
    if (!mkdtemp(tmp)) { test_check(0, "mkdtemp", "%s", ""); return; }
    snprintf(out_path, sizeof out_path, "%s/stdout", tmp);
    snprintf(err_path, sizeof err_path, "%s/stderr", tmp);
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
        ldm_upscaler_close(&u);
    }
    test_wrong_models();
    test_cli();
    return test_summary();
}
