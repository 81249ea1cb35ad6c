/*
 * tools/cmd_vae.c -- `sd vae-decode` and `sd vae-encode`: the autoencoder
 * alone, for experiments and notebooks (ldm/vae.c).
 *
 *   sd vae-decode --ckpt MODEL latent.npy out.png
 *       latent [4,h,w] or [B,4,h,w] (the diffusion latent, i.e. already
 *       multiplied by scaling_factor) -> PNG(s) of 8h x 8w (--npy: also the
 *       float image in [-1,1]); NaN/Inf pixels are refused, with advice
 *   sd vae-encode --ckpt MODEL in.png latent.npy
 *       PNG -> latent [1,4,H/8,W/8] = posterior mean * scaling_factor
 *       (--sample SEED: mean + std * noise, noise = torch.randn with a CPU
 *       generator seeded SEED, as diffusers' latent_dist.sample(generator))
 *
 * MODEL is a CompVis single file (.safetensors/.ckpt with first_stage_model.*),
 * a diffusers model folder (vae/ inside) or a diffusers vae folder
 * (config.json + diffusion_pytorch_model.safetensors). --vae FILE replaces the
 * model's VAE with a standalone one (e.g. vae-ft-mse-840000-ema-pruned.safetensors,
 * CompVis names without prefix; or a diffusers vae folder/file); with --vae,
 * --ckpt may be omitted. The sources are read by ldm_vae_file_open (ldm/model.c).
 *
 * Leaves out: batch encode of several PNGs, resizing (sides must be multiples
 * of 8).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/dump.h"
#include "ldm/io/image.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"
#include "ldm/pipeline.h"
#include "ldm/vae.h"
#include "ldm/io/weights.h"
#include "samplers/rng.h"
#include "tools/cmd.h"

static void vae_usage(FILE *f, int encode) {
    if (encode)
        fprintf(f, "usage: sd vae-encode [--ckpt MODEL] [--vae FILE] [flags] in.png latent.npy\n\n"
                   "Encode a PNG (sides multiples of 8) into a latent [1,4,H/8,W/8] = posterior\n"
                   "mean * scaling_factor (what img2img starts from).\n\n");
    else
        fprintf(f, "usage: sd vae-decode [--ckpt MODEL] [--vae FILE] [flags] latent.npy out.png\n\n"
                   "Decode a latent [4,h,w] or [B,4,h,w] (already multiplied by scaling_factor,\n"
                   "as the samplers produce it) into a PNG of 8w x 8h (B > 1: out_0.png, ...).\n\n");
    fprintf(f,
            "  --ckpt MODEL      CompVis single file, diffusers model folder, or diffusers vae folder\n"
            "                    (default: the tiny model, " LDM_TINY_MODEL_DEFAULT ")\n"
            "  --vae FILE        standalone VAE (file or diffusers vae folder) replacing MODEL's\n"
            "  --vae-tiling      always tile (default: tile only when the estimated working set\n"
            "                    exceeds the budget)\n"
            "  --no-vae-tiling   never tile\n"
            "  --vae-budget-mb N memory budget for automatic tiling (default $LDM_VAE_BUDGET_MB or 4096)\n"
            "  --vae-tile N      tile side in latent pixels (default 64 = 512 px; overlap N/4)\n");
    if (encode)
        fprintf(f, "  --sample SEED     sample the posterior with noise from a CPU generator seeded SEED\n");
    else
        fprintf(f, "  --truncate        CompVis uint8 conversion (truncate) instead of diffusers' rounding\n"
                   "  --npy FILE        also write the decoded float image [B,3,H,W] in [-1,1] as .npy\n");
    fprintf(f, "  --overwrite       replace existing output files (synonym --force)\n"
               "  --dump DIR        write every block's output as DIR/vae.<module>.npy\n"
               "  --backend NAME    ref | cpu | cuda | cuda-emu (default $LDM_BACKEND or cpu)\n"
               "  -v                print the tiling decision\n"
               "  --help            this text\n");
}

// ---------------------------------------------------------------------------

typedef struct vae_args {
    const char *ckpt, *vae, *in, *out, *dump, *npy;
    ldm_vae_options opt;
    int truncate, overwrite, has_seed;
    uint64_t seed;
    sd_env env;             // main's environment, --backend applied
} vae_args;

static int parse_args(vae_args *a, int argc, char **argv, int encode, const sd_env *env) {
    memset(a, 0, sizeof *a);
    a->env = *env;
    a->opt.budget_mb = env->vae_budget_mb;   // $LDM_VAE_BUDGET_MB (0: the default)
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int need = i + 1 < argc;
        int c = sd_common_flag(argc, argv, &i, &a->env);
        if (c < 0) return 2;
        if (c > 0) continue;
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) { vae_usage(stdout, encode); return -1; }
        else if (!strcmp(s, "--ckpt") && need) a->ckpt = argv[++i];
        else if (!strcmp(s, "--vae") && need) a->vae = argv[++i];
        else if (!strcmp(s, "--dump") && need) a->dump = argv[++i];
        else if (!strcmp(s, "--vae-tiling")) a->opt.tiling = LDM_VAE_TILE_ON;
        else if (!strcmp(s, "--no-vae-tiling")) a->opt.tiling = LDM_VAE_TILE_OFF;
        else if (!strcmp(s, "--vae-budget-mb") && need) {
            a->opt.budget_mb = atoll(argv[++i]);
            if (a->opt.budget_mb <= 0) return sd_fail("--vae-budget-mb needs a positive number"), 2;
        } else if (!strcmp(s, "--vae-tile") && need) {
            a->opt.tile_latent = atoi(argv[++i]);
            if (a->opt.tile_latent < 4 || a->opt.tile_latent > 4096)
                return sd_fail("--vae-tile needs a number in 4..4096"), 2;
        } else if (!strcmp(s, "-v")) a->opt.verbose = 1;
        else if (!encode && !strcmp(s, "--truncate")) a->truncate = 1;
        else if (sd_is_overwrite_flag(s)) a->overwrite = 1;
        else if (!encode && !strcmp(s, "--npy") && need) a->npy = argv[++i];
        else if (encode && !strcmp(s, "--sample") && need) {
            char *end;
            a->seed = strtoull(argv[++i], &end, 10);
            if (*end) return sd_fail("--sample needs an integer seed"), 2;
            a->has_seed = 1;
        } else if (s[0] == '-' && s[1]) {
            sd_fail("unknown or incomplete flag '%s' (sd vae-%s --help)", s, encode ? "encode" : "decode");
            return 2;
        } else if (!a->in) a->in = s;
        else if (!a->out) a->out = s;
        else return sd_fail("too many arguments ('%s')", s), 2;
    }
    if (!a->in || !a->out) {
        vae_usage(stderr, encode);
        return 2;
    }
    if (a->dump) ldm_dump_set_dir(a->dump);
    if (!a->ckpt && !a->vae) {
        a->ckpt = sd_tiny_model(env);
        fprintf(stderr, "vae-%s: no --ckpt given: using the tiny model in %s\n",
                encode ? "encode" : "decode", a->ckpt);
    }
    return 0;
}

static int load(ldm_vae *vae, ldm_vae_file *src, const vae_args *a, int parts) {
    const struct ldm_ops *ops = sd_backend(&a->env);
    if (!ops) return sd_fail("%s", ldm_last_error());
    const char *path = a->vae ? a->vae : a->ckpt;
    if (ldm_vae_file_open(src, path, ops) || ldm_vae_load(vae, &src->cfg, &src->w, parts)) {
        sd_fail("%s", ldm_last_error());
        ldm_vae_file_close(src);
        return 1;
    }
    return 0;
}

// out.png -> out_<i>.png for image i of a batch
static void indexed_name(char *buf, size_t n, const char *path, int i) {
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash)) dot = path + strlen(path);
    snprintf(buf, n, "%.*s_%d%s", (int)(dot - path), path, i, dot);
}

int cmd_vae_decode(int argc, char **argv, const sd_env *env) {
    vae_args a;
    int rc = parse_args(&a, argc, argv, 0, env);
    if (rc) return rc < 0 ? 0 : rc;
    ldm_tensor lat = {0}, img = {0};
    if (ldm_npy_read(&lat, sd_backend(&a.env), a.in)) return sd_fail("%s", ldm_last_error());
    if (lat.ndim == 3) {   // [4,h,w] -> [1,4,h,w]
        for (int d = 3; d > 0; d--) lat.shape[d] = lat.shape[d - 1];
        lat.shape[0] = 1;
        lat.ndim = 4;
    }
    if (lat.ndim != 4) {
        ldm_tensor_free(&lat);
        return sd_fail("%s: expected a latent [4,h,w] or [B,4,h,w], found %d dims", a.in, lat.ndim);
    }
    // A non-finite latent cannot decode to anything useful.
    float *h = malloc((size_t)lat.numel * sizeof(float));
    if (!h) return sd_fail("out of memory");
    ldm_tensor_to_host(h, &lat);
    int64_t bad = 0;
    for (int64_t i = 0; i < lat.numel; i++) bad += !isfinite(h[i]);
    free(h);
    if (bad) {
        ldm_tensor_free(&lat);
        return sd_fail("%s: %lld of its values are NaN/Inf -- the sampler diverged (or the UNet "
                       "ran in half precision); nothing decoded", a.in, (long long)bad);
    }
    // every output name, before the model loads
    const char *in[] = {a.in};
    for (int64_t b = 0; b < lat.shape[0]; b++) {
        char name[4096];
        if (lat.shape[0] == 1) snprintf(name, sizeof name, "%s", a.out);
        else indexed_name(name, sizeof name, a.out, (int)b);
        if (sd_check_output(name, a.overwrite, in, 1)) { ldm_tensor_free(&lat); return 1; }
    }
    if (a.npy && sd_check_output(a.npy, a.overwrite, in, 1)) { ldm_tensor_free(&lat); return 1; }
    ldm_vae_file src;
    ldm_vae vae;
    if (load(&vae, &src, &a, LDM_VAE_DECODER)) { ldm_tensor_free(&lat); return 1; }
    if (lat.shape[1] != vae.cfg.latent_channels) {
        rc = sd_fail("%s: latent has %lld channels, this VAE expects %d", a.in,
                     (long long)lat.shape[1], vae.cfg.latent_channels);
        goto done;
    }
    if (ldm_vae_decode(&img, &vae, &lat, &a.opt)) {
        rc = sd_fail("%s", ldm_last_error());
        goto done;
    }
    if (a.npy && ldm_npy_write_tensor(a.npy, &img)) {
        rc = sd_fail("%s", ldm_last_error());
        goto done;
    }
    const int64_t B = img.shape[0], C = img.shape[1], H = img.shape[2], W = img.shape[3];
    if (C != 3) { rc = sd_fail("decoded image has %lld channels, expected 3", (long long)C); goto done; }
    float *x = malloc((size_t)img.numel * sizeof(float));
    ldm_image png = {.width = (int)W, .height = (int)H, .rgb = malloc((size_t)(3 * H * W))};
    if (!x || !png.rgb) { free(x), free(png.rgb); rc = sd_fail("out of memory"); goto done; }
    ldm_tensor_to_host(x, &img);
    const char *keys[2] = {"Software", "Source"};
    const char *vals[2] = {"ldm.c sd vae-decode", a.in};
    for (int64_t b = 0; b < B && rc == 0; b++) {
        char name[4096];
        if (B == 1) snprintf(name, sizeof name, "%s", a.out);
        else indexed_name(name, sizeof name, a.out, (int)b);
        int64_t nf = ldm_unit_to_pixels(png.rgb, x + b * 3 * H * W, H, W, a.truncate);
        if (nf) {
            rc = sd_fail("%s: the decoded image has %lld NaN/Inf values; not written. The VAE "
                         "weights are probably broken (an fp16 VAE that overflowed when it was "
                         "saved, or a corrupt file): use an fp32 VAE, e.g. --vae "
                         "vae-ft-mse-840000-ema-pruned.safetensors", name, (long long)nf);
            break;
        }
        if (ldm_png_write(name, &png, 2, keys, vals, a.overwrite)) rc = sd_fail("%s", ldm_last_error());
        else fprintf(stderr, "wrote %s (%lldx%lld)\n", name, (long long)W, (long long)H);
    }
    free(x), free(png.rgb);
done:
    ldm_tensor_free(&img);
    ldm_tensor_free(&lat);
    ldm_vae_free(&vae);
    ldm_vae_file_close(&src);
    return rc;
}

int cmd_vae_encode(int argc, char **argv, const sd_env *env) {
    vae_args a;
    int rc = parse_args(&a, argc, argv, 1, env);
    if (rc) return rc < 0 ? 0 : rc;
    const char *in[] = {a.in};
    if (sd_check_output(a.out, a.overwrite, in, 1)) return 1;
    ldm_image png;
    memset(&png, 0, sizeof png);
    if (ldm_png_read(&png, a.in)) return sd_fail("%s", ldm_last_error());
    ldm_vae_file src;
    ldm_vae vae;
    if (load(&vae, &src, &a, LDM_VAE_ENCODER)) { ldm_image_free(&png); return 1; }
    const int64_t H = png.height, W = png.width, f = (int64_t)1 << (vae.cfg.n_levels - 1);
    ldm_tensor x = {0}, noise = {0}, lat = {0};
    float *hx = NULL, *hn = NULL;
    if (H % f || W % f) {
        rc = sd_fail("%s: %lldx%lld is not a multiple of %lld in both sides; resize or crop it",
                     a.in, (long long)W, (long long)H, (long long)f);
        goto done;
    }
    hx = malloc((size_t)(3 * H * W) * sizeof(float));
    x = ldm_tensor_new(vae.ops, LDM_SHAPE(1, 3, H, W));
    if (!hx || !x.data) { rc = sd_fail("out of memory for a %lldx%lld image", (long long)W, (long long)H); goto done; }
    ldm_pixels_to_unit(hx, png.rgb, H, W);
    ldm_tensor_from_host(&x, hx);
    if (a.has_seed) {
        const int64_t Z = vae.cfg.latent_channels, n = Z * (H / f) * (W / f);
        ldm_rng rng;
        ldm_rng_init(&rng, LDM_RNG_CPU, a.seed);
        hn = malloc((size_t)n * sizeof(float));
        noise = ldm_tensor_new(vae.ops, LDM_SHAPE(1, Z, H / f, W / f));
        if (!hn || !noise.data) { rc = sd_fail("out of memory"); goto done; }
        ldm_rng_randn(&rng, hn, n);
        ldm_tensor_from_host(&noise, hn);
    }
    if (ldm_vae_encode(&lat, &vae, &x, a.has_seed ? &noise : NULL, &a.opt)) {
        rc = sd_fail("%s", ldm_last_error());
        goto done;
    }
    if (ldm_npy_write_tensor(a.out, &lat)) rc = sd_fail("%s", ldm_last_error());
    else fprintf(stderr, "wrote %s [1,%lld,%lld,%lld]\n", a.out, (long long)lat.shape[1],
                 (long long)lat.shape[2], (long long)lat.shape[3]);
done:
    free(hx), free(hn);
    ldm_tensor_free(&x), ldm_tensor_free(&noise), ldm_tensor_free(&lat);
    ldm_vae_free(&vae);
    ldm_vae_file_close(&src);
    ldm_image_free(&png);
    return rc;
}
