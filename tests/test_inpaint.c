/*
 * tests/test_inpaint.c -- inpainting end to end against diffusers'
 * StableDiffusionInpaintPipeline.
 *
 * Fixtures: tests/fixtures/inpaint/ (tools/reference/fixtures_inpaint.py):
 * a tiny random inpainting model (its UNet's conv_in takes 9 channels: latent,
 * mask, masked-image latent), the ordinary tiny model of tests/fixtures/pipeline
 * (4 channels: the pipeline blends the known region back after each step), a
 * 64x64 RGB mask whose blocks sit on both sides of the 0.5 gray threshold, and
 * per case the final latent and the decoded pixels of
 *   unet9            9-channel UNet, strength 1 (pure noise), B=2, DDIM 6 steps
 *   unet9_strength   9-channel UNet, strength 0.6 of 10 DDIM steps, eta 0.5, B=1
 *   blend4           4-channel UNet, strength 1, B=2, DDIM 6 steps
 *   blend4_strength  4-channel UNet, strength 0.75 of 8 DDIM steps, eta 1, B=1
 * The case parameters below repeat the script's CASES. Tolerances as
 * tests/test_pipeline.c: final latent 1e-3 relative, pixels >= 99.9%
 * identical and the rest off by at most 1 (the CLI truncates where diffusers
 * rounds: within 1 everywhere).
 *
 * Then the CLI: `sd inpaint` writes the unet9_strength image; a missing mask,
 * a mask of another size, an unreadable mask, a mask without an image, and an
 * inpainting model used for txt2img fail with a clear message and no output.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/image.h"
#include "ldm/io/tensorfile.h"
#include "ldm/model.h"
#include "ldm/pipeline.h"
#include "tests/test.h"

#define FIX "tests/fixtures/inpaint/"
#define PIPE "tests/fixtures/pipeline/"

typedef struct icase {
    const char *name, *model, *prompt, *negative;
    int B, steps, seed;
    float scale;
    double strength;
    float eta;              // DDIM eta (> 0: a draw every step, which checks the generator's order)
} icase;

static const icase CASES[] = {
    {"unet9", FIX "model", "a red apple on a table", "blurry", 2, 6, 21, 7.5f, 1.0, 0},
    {"unet9_strength", FIX "model", "a blue door", "", 1, 10, 22, 5.0f, 0.6, 0.5f},
    {"blend4", PIPE "model", "a watercolor landscape", "ugly", 2, 6, 23, 7.5f, 1.0, 0},
    {"blend4_strength", PIPE "model", "a bowl of fruit", "", 1, 8, 24, 7.5f, 0.75, 1.0f},
};

// got [n][64][64][3] vs the reference PNG of the n images side by side:
// >= 99.9% identical and the rest within 1 (max_off 0), or all within max_off.
static void check_pixels(const char *label, const uint8_t *got, int n, const char *ref_png,
                         int max_off) {
    ldm_image ref = {0};
    if (!test_check(ldm_png_read(&ref, ref_png) == 0, ref_png, "%s", ldm_last_error())) return;
    if (!test_check(ref.width == 64 * n && ref.height == 64, ref_png, "reference is %dx%d",
                    ref.width, ref.height)) {
        ldm_image_free(&ref);
        return;
    }
    int64_t same = 0, total = (int64_t)n * 64 * 64 * 3;
    int worst = 0;
    for (int b = 0; b < n; b++)
        for (int y = 0; y < 64; y++)
            for (int x = 0; x < 64 * 3; x++) {
                int g = got[((int64_t)b * 64 + y) * 64 * 3 + x];
                int e = ref.rgb[(int64_t)y * ref.width * 3 + b * 64 * 3 + x];
                int d = abs(g - e);
                same += d == 0;
                if (d > worst) worst = d;
            }
    double frac = (double)same / total;
    int ok = max_off ? worst <= max_off : (frac >= 0.999 && worst <= 1);
    test_check(ok, label, "%.4f%% identical, max off %d", 100 * frac, worst);
    printf("          %s: %.4f%% identical, max off %d\n", label, 100 * frac, worst);
    ldm_image_free(&ref);
}

static void test_case(const icase *c, const ldm_image *init, const ldm_image *mask) {
    printf("-- %s\n", c->name);
    ldm_pipeline p;
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu, .need_encoder = 1};
    if (!test_check(ldm_pipeline_open(&p, c->model, &po) == 0, c->model, "open: %s", ldm_last_error()))
        return;
    char name[160], path[256];
    test_check(p.inpaint_unet == !strncmp(c->name, "unet9", 5), "UNet kind detected",
               "inpaint_unet %d, UNet in_channels %d", p.inpaint_unet, p.model.unet.in_channels);
    snprintf(path, sizeof path, FIX "%s_latent.npy", c->name);
    int64_t n_lat = 0;
    float *lat = test_load_npy(path, &n_lat);
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    if (!lat || !test_check(ldm_sampler_parse(&si, &sk, "ddim") == 0, "ddim", "%s", ldm_last_error()))
        goto done;
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, (uint64_t)c->seed);
    ldm_generate_params g = {
        .prompt = c->prompt, .negative = c->negative, .width = 64, .height = 64, .batch = c->B,
        .sampling = {.sampler = si, .sigma_kind = sk, .steps = c->steps, .eta = c->eta,
                     .conv = LDM_CONVENTIONS_DIFFUSERS},
        .cfg_scale = c->scale, .clip_skip = 1, .rng = &rng,
        .init_rgb = init->rgb, .strength = c->strength, .mask_rgb = mask->rgb,
    };
    float *got = malloc((size_t)n_lat * sizeof *got);
    uint8_t *rgb = malloc((size_t)c->B * 64 * 64 * 3);
    if (test_check(n_lat == (int64_t)c->B * 4 * 8 * 8, "reference latent size", "%lld", (long long)n_lat) &&
        test_check(ldm_generate(&p, &g, got, rgb) == 0, "generate", "%s", ldm_last_error())) {
        snprintf(name, sizeof name, "%s final latent [%d,4,8,8]", c->name, c->B);
        test_close(name, got, lat, n_lat, 1e-3, 0);
        snprintf(name, sizeof name, "%s pixels", c->name);
        snprintf(path, sizeof path, FIX "%s_image.png", c->name);
        check_pixels(name, rgb, c->B, path, 0);
    }
    free(got);
    free(rgb);
done:
    free(lat);
    ldm_pipeline_close(&p);
}

// A CompVis single file: the UNet's input channels come from conv_in's shape
// (input_blocks.0.0.weight [320, 9, 3, 3]), whatever the SD preset says.
static void test_single_file_channels(void) {
    printf("-- single file: in_channels from conv_in\n");
    char path[256];
    snprintf(path, sizeof path, "/tmp/ldm_test_inpaint_cin_%d.safetensors", (int)getpid());
    const struct ldm_ops *ops = ldm_backend("ref");
    ldm_tensor t = ldm_tensor_zeros(ops, LDM_SHAPE(320, 9, 3, 3));
    const ldm_tensor *tp = &t;
    const char *names[1] = {"model.diffusion_model.input_blocks.0.0.weight"};
    int wrc = ldm_safetensors_write(path, 1, names, &tp);
    ldm_tensor_free(&t);
    if (!test_check(wrc == 0, "write a single file with a 9-channel conv_in", "%s", ldm_last_error()))
        return;
    ldm_model m;
    ldm_model_options o = {ops, LDM_PRED_AUTO, NULL};
    int rc = ldm_model_open(&m, path, &o);
    test_check(rc == 0 && m.unet.in_channels == 9, "single file: UNet in_channels 9",
               "rc %d, in_channels %d: %s", rc, rc == 0 ? m.unet.in_channels : -1,
               rc ? ldm_last_error() : "");
    if (rc == 0) ldm_model_close(&m);
    unlink(path);
}

// ---------------------------------------------------------------------------
// the CLI

static char sd[512], tmp[256], out_path[600], err_path[600];

static int run(const char *args, char **err) {
    return test_run_cli(sd, args, out_path, err_path, err);
}

static void test_cli(void) {
    printf("-- CLI\n");
    if (!test_cli_setup(sd, tmp, out_path, err_path, "test_inpaint")) return;
    char args[4096], outdir[512], png[700], *err;
    snprintf(outdir, sizeof outdir, "%s/out", tmp);

    // the unet9_strength case through `sd inpaint` (CompVis conventions: the
    // same DDIM timesteps for 10 steps, pixels truncated: within 1)
    const icase *c = &CASES[1];
    snprintf(args, sizeof args, "inpaint --ckpt %s --backend cpu --rng cpu --init-img " PIPE
             "init.png --mask " FIX "mask.png --prompt '%s' --n_samples 1 --ddim_steps %d "
             "--seed %d --scale %g --strength %g --ddim_eta %g --outdir %s", c->model, c->prompt,
             c->steps, c->seed, c->scale, c->strength, c->eta, outdir);
    int rc = run(args, &err);
    if (test_check(rc == 0, "sd inpaint (unet9_strength case)", "exit %d: %s", rc, err)) {
        snprintf(png, sizeof png, "%s/samples/00000.png", outdir);
        ldm_image im = {0};
        if (test_check(ldm_png_read(&im, png) == 0, "sd inpaint wrote 00000.png", "%s", ldm_last_error())) {
            check_pixels("CLI inpaint 00000.png vs diffusers (within 1)", im.rgb, 1,
                         FIX "unet9_strength_image.png", 1);
            int has = 0;
            for (int i = 0; i < im.n_text; i++)
                has |= !strcmp(im.text_keys[i], "parameters") &&
                       strstr(im.text_values[i], "Denoising strength: 0.6") != NULL;
            test_check(has, "inpaint PNG parameters name the strength", "%s", "");
        }
        ldm_image_free(&im);
    }


    // bad inputs: a clear message, the exit code, no output folder
    static const struct { const char *args, *expect; int code; } bad[] = {
        {"inpaint --ckpt " FIX "model --init-img " PIPE "init.png --outdir %s", "--mask", 2},
        {"inpaint --ckpt " FIX "model --init-img " PIPE "init.png --mask /nonexistent.png "
         "--outdir %s", "nonexistent.png", 1},
        {"inpaint --ckpt " FIX "model --init-img " PIPE "init.png --mask " FIX
         "model/unet/config.json --outdir %s", "config.json", 1},
        {"inpaint --ckpt " FIX "model --init-img " PIPE "init.png --mask "
         "tests/fixtures/io/png_rgb8.png --outdir %s", "mask", 1},
        {"inpaint --ckpt " FIX "model --mask " FIX "mask.png --outdir %s", "--init-img", 2},
        {"inpaint --ckpt " FIX "model --init-img " PIPE "init.png --mask " FIX "mask.png "
         "--strength 2 --outdir %s", "strength", 2},
        {"txt2img --ckpt " FIX "model --H 64 --W 64 --n_samples 1 --n_iter 1 --outdir %s",
         "inpainting model", 1},
        {"img2img --ckpt " FIX "model --init-img " PIPE "init.png --n_samples 1 --outdir %s",
         "inpainting model", 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char dir[600];
        snprintf(dir, sizeof dir, "%s/bad%zu", tmp, i);
        snprintf(args, sizeof args, bad[i].args, dir);
        rc = run(args, &err);
        struct stat st;
        char label[160];
        snprintf(label, sizeof label, "bad input %zu: exit %d, names '%s', no output", i,
                 bad[i].code, bad[i].expect);
        test_check(rc == bad[i].code && err && strstr(err, bad[i].expect) && stat(dir, &st) != 0,
                   label, "exit %d: %s", rc, err ? err : "");

    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
}

int main(void) {
    ldm_image init = {0}, mask = {0};
    if (test_check(ldm_png_read(&init, PIPE "init.png") == 0, "read init.png", "%s", ldm_last_error()) &&
        test_check(ldm_png_read(&mask, FIX "mask.png") == 0, "read mask.png", "%s", ldm_last_error()))
        for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) test_case(&CASES[i], &init, &mask);
    ldm_image_free(&init);
    ldm_image_free(&mask);
    test_single_file_channels();
    test_cli();
    return test_summary();
}
