/*
 * tools/cmd_upscale.c -- `sd upscale`: the Stable Diffusion x4 upscaler
 * (ldm/upscale.h) on a PNG.
 *
 *   sd upscale --ckpt stable-diffusion-x4-upscaler --init-img low.png \
 *              --prompt "a white cat" [--noise_level 20] [--steps 75] [--scale 9] \
 *              [--seed 42] [--out big.png | --outdir DIR]
 *
 * The defaults are those of diffusers' StableDiffusionUpscalePipeline (DDIM,
 * 75 steps, guidance 9, noise level 20) and the noise comes from torch's CPU
 * generator, so the same seed gives diffusers' image (generator on the CPU).
 * --out FILE writes one image there; --outdir DIR (default
 * outputs/upscale-samples) writes DIR/00000.png, 00001.png, ... at the first
 * free numbers. Never overwrites without --overwrite. Every check that needs
 * no model (flags, the input image and its size, the output path) comes
 * before the model is loaded; the model's own limits (noise level) before
 * sampling. Exit codes: 0 done, 1 the run failed (a file, the model), 2 the
 * command line is wrong.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "ldm/core/error.h"
#include "ldm/io/dump.h"
#include "ldm/io/image.h"
#include "ldm/upscale.h"
#include "samplers/rng.h"
#include "samplers/sampler.h"
#include "tools/cmd.h"

enum { F_STR, F_BOOL };
typedef struct flag {
    const char *name, *alias;
    int kind;
    const char *help;
} flag;

static const flag FLAGS[] = {
    {"--ckpt", NULL, F_STR, "the upscaler: a diffusers folder (stabilityai/stable-diffusion-x4-upscaler)"},
    {"--init-img", NULL, F_STR, "the low-resolution PNG (sides multiples of 8)"},
    {"--prompt", NULL, F_STR, "what the image shows (default: the empty prompt)"},
    {"--negative-prompt", NULL, F_STR, "what to steer away from (default: the empty prompt)"},
    {"--noise_level", "--noise-level", F_STR, "noise added to the low-res image, 0..max_noise_level (20)"},
    {"--steps", "--ddim_steps", F_STR, "sampling steps (75)"},
    {"--scale", NULL, F_STR, "classifier-free guidance scale; guidance only above 1 (9)"},
    {"--seed", NULL, F_STR, "seed of torch's CPU generator (42)"},
    {"--n_samples", NULL, F_STR, "images of the same input (1)"},
    {"--sampler", NULL, F_STR, "ddim (default) or any `sd txt2img --sampler` name"},
    {"--ddim_eta", NULL, F_STR, "eta (default: the sampler's, 0 for DDIM)"},
    {"--out", NULL, F_STR, "write the image to FILE (one image)"},
    {"--outdir", NULL, F_STR, "output folder (default outputs/upscale-samples)"},
    {"--overwrite", "--force", F_BOOL, "replace an existing --out file"},
    {"--vae-tiling", NULL, F_BOOL, "decode in tiles (less memory for large outputs)"},
    {"--vocab", NULL, F_STR, "CLIP BPE vocabulary (default: the model's tokenizer/ or build/vocab)"},
    {"--backend", NULL, F_STR, "ref | cpu | cuda | cuda-emu (default $LDM_BACKEND or cpu)"},
    {"--dump", NULL, F_STR, "write every named intermediate as DIR/<name>.npy"},
    {"--verbose", NULL, F_BOOL, "stages on stderr"},
    {"--help", "-h", F_BOOL, "this text"},
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))

static void usage(FILE *f) {
    fprintf(f, "usage: sd upscale --ckpt DIR --init-img LOW.png [--prompt TEXT] [flags]\n\n"
               "The Stable Diffusion x4 upscaler: an image 4 times wider and taller,\n"
               "as diffusers' StableDiffusionUpscalePipeline (same seed, same image).\n\n");
    for (int i = 0; i < N_FLAGS; i++) {
        char names[64];
        snprintf(names, sizeof names, "%s%s%s", FLAGS[i].name, FLAGS[i].alias ? ", " : "",
                 FLAGS[i].alias ? FLAGS[i].alias : "");
        fprintf(f, "  %-30s %s\n", names, FLAGS[i].help);
    }
}

// argv -> val[N_FLAGS] (NULL: absent; "1" for booleans). 0, or 2 after printing why.
static int parse_flags(const char **val, int argc, char **argv, sd_env *env) {
    for (int i = 1; i < argc; i++) {
        int common = sd_common_flag(argc, argv, &i, env);
        if (common < 0) return 2;
        if (common) continue;
        char name[64];
        const char *a = argv[i], *eq = strchr(a, '='), *value = eq ? eq + 1 : NULL;
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        snprintf(name, sizeof name, "%.*s", (int)(n < sizeof name ? n : sizeof name - 1), a);
        int k = 0;
        while (k < N_FLAGS && strcmp(FLAGS[k].name, name) &&
               !(FLAGS[k].alias && !strcmp(FLAGS[k].alias, name)))
            k++;
        if (k == N_FLAGS) {
            if (strncmp(a, "-", 1) != 0)
                return sd_fail("upscale: unexpected argument '%s' (quote the prompt: --prompt "
                               "\"...\")", a), 2;
            return sd_fail("upscale: unknown flag '%s' (sd upscale --help)", name), 2;
        }
        if (FLAGS[k].kind == F_BOOL) {
            if (value) return sd_fail("upscale: %s takes no value", FLAGS[k].name), 2;
            val[k] = "1";
            continue;
        }
        if (!value) {
            if (i + 1 >= argc) return sd_fail("upscale: %s needs a value", FLAGS[k].name), 2;
            value = argv[++i];
        }
        val[k] = value;
    }
    return 0;
}

static const char *get(const char *const *val, const char *name) {
    for (int k = 0; k < N_FLAGS; k++)
        if (!strcmp(FLAGS[k].name, name)) return val[k];
    return NULL;
}

// Integer flag in [lo, hi] (absent: def). 0, or 2 after printing why.
static int get_int(const char *const *val, const char *name, long long def, long long lo,
                   long long hi, long long *out) {
    const char *v = get(val, name);
    *out = def;
    if (!v) return 0;
    char *e;
    errno = 0;
    long long x = strtoll(v, &e, 10);
    if (!*v || *e || errno || x < lo || x > hi)
        return sd_fail("upscale: %s: expected an integer in [%lld, %lld], got '%s'", name, lo,
                       hi, v), 2;
    *out = x;
    return 0;
}

// Number flag in [lo, hi] (absent: def). 0, or 2 after printing why.
static int get_float(const char *const *val, const char *name, double def, double lo, double hi,
                     double *out) {
    const char *v = get(val, name);
    *out = def;
    if (!v) return 0;
    char *e;
    double x = strtod(v, &e);
    if (!*v || *e || !isfinite(x) || x < lo || x > hi)
        return sd_fail("upscale: %s: expected a number in [%g, %g], got '%s'", name, lo, hi, v), 2;
    *out = x;
    return 0;
}

// mkdir -p. 0 / 1 (printed).
static int make_dirs(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1;; s++) {
        int end = *s == '\0';
        if (*s == '/' || end) {
            *s = '\0';
            if (mkdir(p, 0777) != 0 && errno != EEXIST)
                return sd_fail("upscale: cannot create the folder %s: %s", p, strerror(errno));
            if (end) break;
            *s = '/';
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return sd_fail("upscale: %s: is not a folder", dir);
    return 0;
}

int cmd_upscale(int argc, char **argv, const sd_env *env_in) {
    sd_env env = *env_in;
    const char *val[N_FLAGS] = {0};
    if (parse_flags(val, argc, argv, &env)) return SD_EXIT_USAGE;
    if (get(val, "--help")) { usage(stdout); return SD_EXIT_OK; }

    // ---- flags (usage errors, exit 2)
    const char *ckpt = get(val, "--ckpt"), *init = get(val, "--init-img");
    const char *out = get(val, "--out"), *outdir = get(val, "--outdir");
    long long noise_level, steps, seed, n_samples;
    double scale, eta;
    if (!init) return sd_fail("upscale: --init-img LOW.png is required (sd upscale --help)"), 2;
    if (!ckpt)
        return sd_fail("upscale: --ckpt DIR is required: the x4 upscaler's diffusers folder "
                       "(stabilityai/stable-diffusion-x4-upscaler)"), 2;
    if (get_int(val, "--noise_level", 20, 0, 999, &noise_level) ||
        get_int(val, "--steps", 75, 1, 1000, &steps) ||
        get_int(val, "--seed", 42, 0, 0xffffffffLL, &seed) ||
        get_int(val, "--n_samples", 1, 1, 64, &n_samples) ||
        get_float(val, "--scale", 9.0, -1e4, 1e4, &scale) ||
        get_float(val, "--ddim_eta", -1.0, 0.0, 1e3, &eta))
        return SD_EXIT_USAGE;
    if (!get(val, "--ddim_eta")) eta = -1.0;   // the sampler's default
    if (out && outdir) return sd_fail("upscale: give --out FILE or --outdir DIR, not both"), 2;
    if (out && n_samples > 1)
        return sd_fail("upscale: --out names one file; with --n_samples %lld use --outdir",
                       n_samples), 2;
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    const char *sampler = get(val, "--sampler") ? get(val, "--sampler") : "ddim";
    if (ldm_sampler_parse(&si, &sk, sampler) != LDM_OK) return sd_fail("upscale: %s", ldm_last_error()), 2;
    const struct ldm_ops *ops = sd_backend(&env);
    if (!ops) return sd_fail("upscale: %s", ldm_last_error()), 2;

    // ---- the input and the output, before the model (runtime errors, exit 1)
    if (!outdir && !out) outdir = "outputs/upscale-samples";
    if (out && sd_check_output(out, get(val, "--overwrite") != NULL, &init, 1)) return SD_EXIT_FAIL;
    struct stat st;
    if (outdir && (!*outdir || (stat(outdir, &st) == 0 && !S_ISDIR(st.st_mode))))
        return sd_fail("upscale: --outdir '%s' is not a folder", outdir);
    ldm_image low = {0};
    if (ldm_png_read(&low, init) != LDM_OK) return sd_fail("upscale: %s", ldm_last_error());
    int rc = SD_EXIT_FAIL;
    ldm_upscaler u;
    int opened = 0;
    uint8_t *rgb = NULL;
    if (low.width % 8 || low.height % 8 || (int64_t)low.width * 4 > LDM_IMAGE_MAX_SIDE ||
        (int64_t)low.height * 4 > LDM_IMAGE_MAX_SIDE) {
        sd_fail("upscale: %s is %dx%d: the x4 upscaler needs sides that are multiples of 8, at "
                "most %d (the output is 4 times larger)", init, low.width, low.height,
                LDM_IMAGE_MAX_SIDE / 4);
        goto done;
    }
    if (get(val, "--dump")) ldm_dump_set_dir(get(val, "--dump"));

    // ---- the model, its limits, the run
    ldm_pipeline_options po = {.ops = ops, .vocab = get(val, "--vocab") ? get(val, "--vocab") : env.vocab,
                               .prediction = LDM_PRED_AUTO, .verbose = get(val, "--verbose") != NULL};
    if (ldm_upscaler_open(&u, ckpt, &po) != LDM_OK) {
        sd_fail("upscale: %s", ldm_last_error());
        goto done;
    }
    opened = 1;
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, (uint64_t)seed);
    ldm_upscale_params g = {
        .prompt = get(val, "--prompt") ? get(val, "--prompt") : "",
        .negative = get(val, "--negative-prompt"), .low_rgb = low.rgb, .width = low.width,
        .height = low.height, .batch = (int)n_samples, .noise_level = (int)noise_level,
        .sampling = {.sampler = si, .sigma_kind = sk, .steps = (int)steps, .eta = (float)eta,
                     .conv = LDM_CONVENTIONS_DIFFUSERS},
        .cfg_scale = (float)scale, .rng = &rng,
        .vae_opt = {.tiling = get(val, "--vae-tiling") ? LDM_VAE_TILE_ON : LDM_VAE_TILE_AUTO,
                    .budget_mb = env.vae_budget_mb},
    };
    if (ldm_upscale_check(&u, &g) != LDM_OK) {
        sd_fail("upscale: %s", ldm_last_error());
        goto done;
    }
    const int W = low.width * u.p.factor, H = low.height * u.p.factor;
    const int64_t per = (int64_t)W * H * 3;
    rgb = malloc((size_t)(per * n_samples));
    if (!rgb) { sd_fail("upscale: out of memory for the %dx%d output", W, H); goto done; }
    if (ldm_upscale(&u, &g, NULL, rgb) != LDM_OK) {
        sd_fail("upscale: %s", ldm_last_error());
        goto done;
    }

    // ---- the PNGs, with their parameters
    char params[4096];
    snprintf(params, sizeof params, "%s\n%s%s%sSteps: %lld, Sampler: %s, CFG scale: %g, Seed: %lld, "
             "Noise level: %lld, Size: %dx%d, Upscaled from: %dx%d, Model: x4 upscaler",
             g.prompt, g.negative && *g.negative ? "Negative prompt: " : "",
             g.negative && *g.negative ? g.negative : "", g.negative && *g.negative ? "\n" : "",
             steps, si->label, scale, seed, noise_level, W, H, low.width, low.height);
    const char *keys[] = {"parameters"}, *values[] = {params};
    if (outdir && make_dirs(outdir)) goto done;
    int index = 0;
    for (int64_t b = 0; b < n_samples; b++) {
        char path[4096 + 16];
        if (out) {
            snprintf(path, sizeof path, "%s", out);
        } else {
            do snprintf(path, sizeof path, "%s/%05d.png", outdir, index++);
            while (stat(path, &st) == 0);
        }
        ldm_image img = {.width = W, .height = H, .rgb = rgb + b * per};
        if (ldm_png_write(path, &img, 1, keys, values, out && get(val, "--overwrite")) != LDM_OK) {
            sd_fail("upscale: %s", ldm_last_error());
            goto done;
        }
        printf("%s (%dx%d from %dx%d)\n", path, W, H, low.width, low.height);
    }
    rc = SD_EXIT_OK;
done:
    free(rgb);
    if (opened) ldm_upscaler_close(&u);
    ldm_image_free(&low);
    return rc;
}
