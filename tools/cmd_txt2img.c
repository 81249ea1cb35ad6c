/*
 * tools/cmd_txt2img.c -- `sd txt2img` and `sd img2img`: the command lines of
 * CompVis scripts/txt2img.py and scripts/img2img.py over ldm/pipeline.c.
 *
 *   sd txt2img --ckpt MODEL --prompt "a painting of a virus monster playing guitar"
 *   sd img2img --ckpt MODEL --init-img in.png --strength 0.75 --prompt "..."
 *
 * Same flags, defaults and output names as the Python scripts
 * (OUTDIR/samples/00000.png numbered from the count of files already there,
 * OUTDIR/grid-0000.png, n_samples columns), flags may be abbreviated to any
 * unambiguous prefix and given as --flag=value, as argparse allows. Never
 * overwrites: a taken name moves to the next free number.
 * Each PNG carries an AUTOMATIC1111-style "parameters" text chunk.
 * Without --ckpt both use the tiny model the project trained and ships
 * (LDM_TINY_MODEL_DEFAULT, or $LDM_TINY_MODEL) at 64x64, and say so on stderr.
 * Leaves out: --laion400m, the invisible watermark and the safety checker;
 * --precision is accepted and ignored (everything is fp32).
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/dump.h"
#include "ldm/io/image.h"
#include "ldm/backend/ops.h"
#include "ldm/pipeline.h"
#include "samplers/rng.h"
#include "samplers/sampler.h"
#include "tools/cmd.h"
#include "tools/sha256.h"

// ---------------------------------------------------------------------------
// flags: name, kind, help. Parsed argparse-style (unique prefixes, --a=b).

enum { F_STR, F_INT, F_FLOAT, F_BOOL };
typedef struct flag {
    const char *name;
    int kind;
    int img2img;            // 0 both, 1 img2img only, -1 txt2img only
    const char *help;
} flag;

static const flag FLAGS[] = {
    {"--prompt", F_STR, 0, "the prompt (A1111 weights: (word:1.2) (word) [word] \\( BREAK)"},
    {"--negative-prompt", F_STR, 0, "what to steer away from (default: the empty prompt)"},
    {"--outdir", F_STR, 0, "output folder (default outputs/txt2img-samples | outputs/img2img-samples)"},
    {"--skip_grid", F_BOOL, 0, "do not write the grid"},
    {"--skip_save", F_BOOL, 0, "do not write the individual samples"},
    {"--ddim_steps", F_INT, 0, "sampling steps (50)"},
    {"--plms", F_BOOL, 0, "use the PLMS sampler (CompVis)"},
    {"--fixed_code", F_BOOL, -1, "same starting noise for every iteration"},
    {"--ddim_eta", F_FLOAT, 0, "DDIM eta (0.0: deterministic)"},
    {"--n_iter", F_INT, 0, "iterations (2 txt2img, 1 img2img)"},
    {"--H", F_INT, -1, "image height in pixels, multiple of 8 (512; 64 with the tiny model)"},
    {"--W", F_INT, -1, "image width in pixels, multiple of 8 (512; 64 with the tiny model)"},
    {"--C", F_INT, 0, "latent channels (4; must match the model)"},
    {"--f", F_INT, 0, "downsampling factor (8; must match the model's VAE)"},
    {"--n_samples", F_INT, 0, "images per iteration = batch size (3 txt2img, 2 img2img)"},
    {"--n_rows", F_INT, 0, "grid columns (default n_samples)"},
    {"--scale", F_FLOAT, 0, "classifier-free guidance scale (7.5 txt2img, 5.0 img2img)"},
    {"--from-file", F_STR, 0, "one prompt per line; each gets n_samples images"},
    {"--config", F_STR, 0, "diffusers-style folder of configs for a non-standard single file"},
    {"--ckpt", F_STR, 0, "model: .safetensors/.ckpt single file or diffusers folder "
                         "(default: the tiny model, " LDM_TINY_MODEL_DEFAULT ")"},
    {"--seed", F_INT, 0, "seed (42)"},
    {"--precision", F_STR, 0, "accepted for compatibility; ldm.c computes in fp32"},
    {"--init-img", F_STR, 1, "img2img: the initial image (PNG; sides multiples of 8)"},
    {"--strength", F_FLOAT, 1, "img2img: 0 keeps the image, 1 ignores it (0.75)"},
    {"--sampler", F_STR, 0, "ddim (default), plms, euler, euler_a, heun, dpm2, dpm2_a, lms, "
                            "dpmpp_2s_a, dpmpp_2m, dpmpp_sde, dpmpp_2m_sde, ddpm; "
                            "\"DPM++ 2M Karras\" style names work"},
    {"--schedule", F_STR, 0, "k samplers: default|karras|exponential; ddim/plms: "
                             "uniform (CompVis, default)|leading|trailing|linspace"},
    {"--rng", F_STR, 0, "cuda (torch CUDA Philox, as CompVis; default) | cpu (torch CPU)"},
    {"--vae", F_STR, 0, "replace the model's VAE (file or diffusers folder)"},
    {"--vae-tiling", F_BOOL, 0, "decode/encode in tiles (less memory)"},
    {"--backend", F_STR, 0, "ref | cpu | cuda (default $LDM_BACKEND or cpu)"},
    {"--threads", F_INT, 0, "CPU threads (default: all)"},
    {"--dump", F_STR, 0, "write every named intermediate as DIR/<name>.npy (sd compare)"},
    {"--verbose", F_BOOL, 0, "stages, timings, peak memory"},
    {"--progress", F_BOOL, 0, "progress on stderr even when it is not a terminal"},
    {"--prediction", F_STR, 0, "eps | v (default: from the checkpoint)"},
    {"--clip-skip", F_INT, 0, "stop the text encoder N-1 layers early (1)"},
    {"--vocab", F_STR, 0, "CLIP BPE vocabulary file (default: model tokenizer/ or build/vocab)"},
    {"--help", F_BOOL, 0, "this text"},
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))

typedef struct opts {
    const char *val[N_FLAGS];   // value as given (NULL: absent); "1" for booleans
} opts;

static void usage(FILE *f, int img2img) {
    fprintf(f, "usage: sd %s [--ckpt MODEL] [flags]\n\n", img2img ? "img2img" : "txt2img");
    fprintf(f, img2img ? "Image-to-image (SDEdit) as CompVis scripts/img2img.py.\n\n"
                       : "Text-to-image as CompVis scripts/txt2img.py.\n\n");
    for (int i = 0; i < N_FLAGS; i++) {
        if ((FLAGS[i].img2img == 1 && !img2img) || (FLAGS[i].img2img == -1 && img2img)) continue;
        fprintf(f, "  %-18s %-2s %s\n", FLAGS[i].name, FLAGS[i].kind == F_BOOL ? "" : "X",
                FLAGS[i].help);
    }
    fprintf(f, "\nFlags may be abbreviated (--n_sample) and written --flag=value.\n");
}

// argv -> o. 0, or 2 after printing the problem (exit code of a usage error).
static int parse_flags(opts *o, int argc, char **argv, int img2img) {
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            sd_fail("%s: unexpected argument '%s' (quote the prompt: --prompt \"...\")", argv[0], a);
            return 2;
        }
        char name[128];
        const char *eq = strchr(a, '='), *value = NULL;
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        if (n >= sizeof name) n = sizeof name - 1;
        memcpy(name, a, n);
        name[n] = '\0';
        if (eq) value = eq + 1;
        int hit = -1, nhit = 0;
        for (int k = 0; k < N_FLAGS; k++) {
            if ((FLAGS[k].img2img == 1 && !img2img) || (FLAGS[k].img2img == -1 && img2img)) continue;
            if (!strcmp(FLAGS[k].name, name)) { hit = k; nhit = 1; break; }
            if (!strncmp(FLAGS[k].name, name, strlen(name))) { hit = k; nhit++; }
        }
        if (nhit == 0) {
            sd_fail("%s: unknown flag '%s' (sd %s --help)", argv[0], name, argv[0]);
            return 2;
        }
        if (nhit > 1) {
            char list[512] = "";
            for (int k = 0; k < N_FLAGS; k++)
                if (!strncmp(FLAGS[k].name, name, strlen(name)) && strlen(list) + 40 < sizeof list)
                    strcat(list, " "), strcat(list, FLAGS[k].name);
            sd_fail("%s: ambiguous flag '%s' could be:%s", argv[0], name, list);
            return 2;
        }
        if (FLAGS[hit].kind == F_BOOL) {
            if (value) { sd_fail("%s: %s takes no value", argv[0], FLAGS[hit].name); return 2; }
            o->val[hit] = "1";
            continue;
        }
        if (!value) {
            if (i + 1 >= argc) { sd_fail("%s: %s needs a value", argv[0], FLAGS[hit].name); return 2; }
            value = argv[++i];
        }
        o->val[hit] = value;
    }
    return 0;
}

static const char *get(const opts *o, const char *name) {
    for (int k = 0; k < N_FLAGS; k++)
        if (!strcmp(FLAGS[k].name, name)) return o->val[k];
    return NULL;
}

// Integer flag with range; 0 ok, 2 on a bad value.
static int get_int(const opts *o, const char *name, long long def, long long lo, long long hi,
                   long long *out) {
    const char *v = get(o, name);
    *out = def;
    if (!v) return 0;
    char *e;
    errno = 0;
    long long x = strtoll(v, &e, 10);
    if (!*v || *e || errno || x < lo || x > hi) {
        sd_fail("%s: expected an integer in [%lld, %lld], got '%s'", name, lo, hi, v);
        return 2;
    }
    *out = x;
    return 0;
}

static int get_float(const opts *o, const char *name, double def, double *out) {
    const char *v = get(o, name);
    *out = def;
    if (!v) return 0;
    char *e;
    double x = strtod(v, &e);
    if (!*v || *e || !isfinite(x)) {
        sd_fail("%s: expected a number, got '%s'", name, v);
        return 2;
    }
    *out = x;
    return 0;
}

// ---------------------------------------------------------------------------
// A1111's legacy model hash: sha256 (tools/sha256.c) of the 64 KiB at offset
// 1 MiB, first 8 hex digits.

static void model_hash(char out[16], const char *path) {
    snprintf(out, 16, "unknown");
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return;
    uint8_t *buf = malloc(0x10000);
    size_t n = 0;
    if (buf && fseek(f, 0x100000, SEEK_SET) == 0) n = fread(buf, 1, 0x10000, f);
    fclose(f);
    if (!buf) return;
    sd_sha256 s;
    char hex[65];
    sd_sha256_init(&s);
    sd_sha256_update(&s, buf, n);
    sd_sha256_hex(&s, hex);
    free(buf);
    snprintf(out, 16, "%.8s", hex);
}

// ---------------------------------------------------------------------------
// output files

static int mkdir_p(const char *dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s", dir);
    for (char *c = p + 1; ; c++) {
        if (*c == '/' || *c == '\0') {
            char keep = *c;
            *c = '\0';
            if (mkdir(p, 0777) != 0 && errno != EEXIST)
                return ldm_error("cannot create output folder %s: %s", p, strerror(errno));
            *c = keep;
            if (!keep) break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return ldm_error("output folder %s: not a folder", dir);
    if (access(dir, W_OK) != 0) return ldm_error("output folder %s is not writable", dir);
    return LDM_OK;
}

// Number of entries in dir (what CompVis' len(os.listdir(dir)) counts).
static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

// path <- dir/fmt(index) with the first index >= *index whose file does not exist.
static void next_free(char *path, size_t size, const char *dir, const char *fmt, int *index) {
    char name[64];
    for (;; (*index)++) {
        snprintf(name, sizeof name, fmt, *index);
        snprintf(path, size, "%s/%s", dir, name);
        if (access(path, F_OK) != 0) return;
    }
}

// torchvision make_grid(padding=2, pad_value=0) of n images [H][W][3] in
// rows of ncol: ((H+2)*rows + 2) x ((W+2)*ncol + 2).
static uint8_t *make_grid(int *gw, int *gh, uint8_t *const *imgs, int n, int ncol, int H, int W) {
    int xm = ncol < n ? ncol : n, ym = (n + xm - 1) / xm;
    *gw = (W + 2) * xm + 2;
    *gh = (H + 2) * ym + 2;
    uint8_t *g = calloc((size_t)*gw * *gh * 3, 1);
    if (!g) return NULL;
    for (int k = 0; k < n; k++) {
        int x0 = (k % xm) * (W + 2) + 2, y0 = (k / xm) * (H + 2) + 2;
        for (int y = 0; y < H; y++)
            memcpy(g + ((size_t)(y0 + y) * *gw + x0) * 3, imgs[k] + (size_t)y * W * 3, (size_t)W * 3);
    }
    return g;
}

// ---------------------------------------------------------------------------
// progress on stderr

typedef struct progress {
    int on, tty;
} progress;

static void on_progress(void *ctx, const char *stage, int step, int n, double sps) {
    progress *p = ctx;
    if (!p->on) return;
    if (step < 0 || (step == 0 && n > 0)) {
        if (p->tty) fprintf(stderr, "\r\033[K");
        fprintf(stderr, "%s%s", stage, p->tty && step == 0 ? "" : "\n");
        return;
    }
    double eta = sps * (n - step);
    if (p->tty) {
        fprintf(stderr, "\r\033[K%s: step %d/%d  %.2f s/step  ETA %.0fs", stage, step, n, sps, eta);
        if (step == n) fprintf(stderr, "\n");
    } else {
        fprintf(stderr, "%s: step %d/%d  %.2f s/step  ETA %.0fs\n", stage, step, n, sps, eta);
    }
}

// ---------------------------------------------------------------------------
// the command

static int run(int argc, char **argv, int img2img, const sd_env *env) {
    opts o;
    int e = parse_flags(&o, argc, argv, img2img);
    if (e) return e;
    if (get(&o, "--help")) { usage(stdout, img2img); return 0; }
    const char *cmd = img2img ? "img2img" : "txt2img";

    // ---- values, checked before anything is loaded
    // no --ckpt: the tiny model the project trained (tools/tiny-model, or
    // $LDM_TINY_MODEL), drawn at the 64x64 it was trained at unless --H/--W say otherwise
    const char *ckpt = get(&o, "--ckpt");
    int tiny = ckpt == NULL;
    if (tiny) ckpt = env->tiny_model ? env->tiny_model : LDM_TINY_MODEL_DEFAULT;
    long long side = tiny ? 64 : 512;
    long long steps, n_iter, H, W, C, f, n_samples, n_rows, seed, threads, clip_skip;
    double eta, scale, strength;
    if (get_int(&o, "--ddim_steps", 50, 1, 1000, &steps) ||
        get_int(&o, "--n_iter", img2img ? 1 : 2, 1, 100000, &n_iter) ||
        get_int(&o, "--H", side, -1000000, 1000000, &H) ||
        get_int(&o, "--W", side, -1000000, 1000000, &W) ||
        get_int(&o, "--C", 4, 1, 64, &C) || get_int(&o, "--f", 8, 1, 64, &f) ||
        get_int(&o, "--n_samples", img2img ? 2 : 3, 1, 64, &n_samples) ||
        get_int(&o, "--n_rows", 0, 0, 1000, &n_rows) ||
        get_int(&o, "--seed", 42, 0, INT64_MAX, &seed) ||
        get_int(&o, "--threads", 0, 0, 4096, &threads) ||
        get_int(&o, "--clip-skip", 1, 1, 64, &clip_skip) ||
        get_float(&o, "--ddim_eta", 0.0, &eta) ||
        get_float(&o, "--scale", img2img ? 5.0 : 7.5, &scale) ||
        get_float(&o, "--strength", 0.75, &strength))
        return 2;
    if (!img2img && (H % 8 || W % 8 || H < 8 || W < 8))
        return sd_fail("%s: --H %lld --W %lld: height and width must be positive multiples of 8",
                       cmd, H, W), 2;
    if (img2img && !(strength >= 0 && strength <= 1))
        return sd_fail("%s: --strength %g: must be in [0, 1]", cmd, strength), 2;
    if (eta < 0) return sd_fail("%s: --ddim_eta must be >= 0", cmd), 2;
    if (tiny) {
        struct stat st;
        if (stat(ckpt, &st) != 0 || !S_ISDIR(st.st_mode))
            return sd_fail("%s: no --ckpt given, and the tiny model folder %s is not here (run from "
                           "the repository root, set LDM_TINY_MODEL=DIR, or pass --ckpt FILE|DIR)",
                           cmd, ckpt), 2;
        fprintf(stderr, "%s: no --ckpt given: using the tiny model in %s (64x64 coloured shapes, "
                "English or Japanese prompts; pass --ckpt for a Stable Diffusion checkpoint)\n",
                cmd, ckpt);
    }
    const char *init_path = get(&o, "--init-img");
    if (img2img && !init_path) return sd_fail("img2img: --init-img FILE is required"), 2;

    // sampler: DDIM (CompVis) unless --plms or --sampler
    const ldm_sampler_info *sampler;
    ldm_sigma_kind sigma_kind = LDM_SIGMAS_DEFAULT;
    const char *sname = get(&o, "--sampler");
    if (sname && get(&o, "--plms")) return sd_fail("%s: give --plms or --sampler, not both", cmd), 2;
    if (ldm_sampler_parse(&sampler, &sigma_kind, sname ? sname : get(&o, "--plms") ? "plms" : "ddim"))
        return sd_fail("%s: --sampler: %s", cmd, ldm_last_error()), 2;
    int discrete = !sampler->uses_sigmas;
    ldm_conventions conv = LDM_CONVENTIONS_COMPVIS;   // the CLI mimics CompVis scripts/txt2img.py
    const char *sched = get(&o, "--schedule");
    if (sched) {
        if (!discrete) {
            if (!strcmp(sched, "karras")) sigma_kind = LDM_SIGMAS_KARRAS;
            else if (!strcmp(sched, "exponential")) sigma_kind = LDM_SIGMAS_EXPONENTIAL;
            else if (!strcmp(sched, "default")) sigma_kind = LDM_SIGMAS_DEFAULT;
            else return sd_fail("%s: --schedule '%s': %s takes default|karras|exponential", cmd,
                                sched, sampler->label), 2;
        } else if (ldm_spacing_parse(&conv.spacing, sched)) {   // overrides the preset
            return sd_fail("%s: --schedule: %s", cmd, ldm_last_error()), 2;
        }
    }
    if (!strcmp(sampler->name, "plms") && eta != 0)
        return sd_fail("%s: PLMS needs --ddim_eta 0", cmd), 2;
    ldm_rng_kind rng_kind = LDM_RNG_CUDA;
    if (get(&o, "--rng") && ldm_rng_parse(&rng_kind, get(&o, "--rng")))
        return sd_fail("%s: --rng: %s", cmd, ldm_last_error()), 2;
    ldm_prediction pred = LDM_PRED_AUTO;
    const char *ps = get(&o, "--prediction");
    if (ps) {
        if (!strcmp(ps, "eps") || !strcmp(ps, "epsilon")) pred = LDM_PRED_EPS;
        else if (!strcmp(ps, "v") || !strcmp(ps, "v_prediction")) pred = LDM_PRED_V;
        else return sd_fail("%s: --prediction '%s': expected eps or v", cmd, ps), 2;
    }
    // backend: --backend, else main's $LDM_BACKEND, else cpu
    sd_env e_flags = *env;
    if (get(&o, "--backend")) {
        e_flags.backend = get(&o, "--backend");
        if (!ldm_backend(e_flags.backend)) return sd_fail("%s", ldm_last_error()), 2;
    }
    const struct ldm_ops *ops = sd_backend(&e_flags);
    if (!ops) return sd_fail("%s", ldm_last_error());
    if (threads > 0 && ops->set_threads) ops->set_threads((int)threads);
    if (get(&o, "--dump")) ldm_dump_set_dir(get(&o, "--dump"));
    int verbose = get(&o, "--verbose") != NULL;
    progress prog = {.tty = isatty(2)};
    prog.on = prog.tty || verbose || get(&o, "--progress");

    // prompts: --from-file lines, or --prompt (CompVis default prompt)
    char **prompts = NULL;
    int n_prompts = 0;
    const char *from = get(&o, "--from-file");
    if (from) {
        FILE *pf = fopen(from, "r");
        if (!pf) return sd_fail("%s: --from-file %s: %s", cmd, from, strerror(errno));
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        while ((len = getline(&line, &cap, pf)) >= 0) {
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
            char **np = realloc(prompts, (size_t)(n_prompts + 1) * sizeof *np);
            if (!np) break;
            prompts = np;
            prompts[n_prompts++] = strdup(line);
        }
        free(line);
        fclose(pf);
        if (n_prompts == 0) return sd_fail("%s: --from-file %s: no prompts in it", cmd, from);
    } else {
        prompts = malloc(sizeof *prompts);
        prompts[0] = strdup(get(&o, "--prompt") ? get(&o, "--prompt")
                                                 : "a painting of a virus monster playing guitar");
        n_prompts = 1;
    }
    const char *negative = get(&o, "--negative-prompt") ? get(&o, "--negative-prompt") : "";

    // init image (img2img): its own size, as CompVis load_img (which also
    // resizes to multiples of 64; here the sides must already be multiples of 8)
    ldm_image init = {0};
    int rc = 1;
    ldm_pipeline p;
    int opened = 0;
    uint8_t **all = NULL;
    int n_all = 0;
    if (img2img) {
        if (ldm_png_read(&init, init_path) != LDM_OK) {
            sd_fail("img2img: --init-img %s: %s", init_path, ldm_last_error());
            goto out;
        }
        if (init.width % 8 || init.height % 8) {
            sd_fail("img2img: --init-img %s is %dx%d: width and height must be multiples of 8 "
                    "(crop or resize it)", init_path, init.width, init.height);
            goto out;
        }
        H = init.height;
        W = init.width;
    }

    // output folders, before the model is loaded
    const char *outdir = get(&o, "--outdir") ? get(&o, "--outdir")
                       : img2img ? "outputs/img2img-samples" : "outputs/txt2img-samples";
    char sample_dir[4096];
    snprintf(sample_dir, sizeof sample_dir, "%s/samples", outdir);
    if (mkdir_p(outdir) != LDM_OK || mkdir_p(sample_dir) != LDM_OK) {
        sd_fail("%s: %s", cmd, ldm_last_error());
        goto out;
    }

    // ---- model
    if (prog.on) fprintf(stderr, "load model %s\n", ckpt);
    ldm_pipeline_options po = {.ops = ops, .config_dir = get(&o, "--config"),
                               .vae_path = get(&o, "--vae"), .vocab = get(&o, "--vocab"),
                               .vocab_default = env->vocab, .prediction = pred, .need_encoder = img2img, .verbose = verbose};
    if (ldm_pipeline_open(&p, ckpt, &po) != LDM_OK) {
        sd_fail("%s", ldm_last_error());
        goto out;
    }
    opened = 1;
    if (C != p.latent_channels)
        { sd_fail("%s: --C %lld: this model's latents have %d channels", cmd, C, p.latent_channels); goto out; }
    if (get(&o, "--f") && f != p.factor)
        { sd_fail("%s: --f %lld: this model's VAE downsamples by %d", cmd, f, p.factor); goto out; }
    if (verbose)
        fprintf(stderr, "model: %s, %s, loaded in %.1f s\n", ldm_family_name(p.model.family),
                ldm_prediction_name(p.model.prediction), p.load_seconds);

    ldm_rng rng;
    ldm_rng_init(&rng, rng_kind, (uint64_t)seed);
    char hash[16], label[64], params[8192];
    model_hash(hash, p.model.files[0].path);
    snprintf(label, sizeof label, "%s%s", sampler->label,
             sigma_kind == LDM_SIGMAS_KARRAS ? " Karras" : sigma_kind == LDM_SIGMAS_EXPONENTIAL ? " Exponential" : "");
    const char *mname = strrchr(ckpt, '/');
    mname = mname && mname[1] ? mname + 1 : ckpt;
    char model_name[256];
    snprintf(model_name, sizeof model_name, "%s", mname);
    char *dot = strrchr(model_name, '.');
    if (dot && dot != model_name) *dot = '\0';

    int64_t B = n_samples, per_img = H * W * 3;
    int base_count = count_entries(sample_dir), grid_count = count_entries(outdir) - 1;
    if (grid_count < 0) grid_count = 0;
    uint8_t *rgb = malloc((size_t)(B * per_img));
    all = calloc((size_t)(n_iter * n_prompts * B), sizeof *all);
    if (!rgb || !all) { sd_fail("out of memory"); free(rgb); goto out; }
    ldm_rng fixed_rng = rng;   // --fixed_code: every iteration restarts the stream
    for (long long it = 0; it < n_iter; it++) {
        for (int pi = 0; pi < n_prompts; pi++) {
            if (get(&o, "--fixed_code")) rng = fixed_rng;
            ldm_generate_params g = {
                .prompt = prompts[pi], .negative = negative, .width = (int)W, .height = (int)H,
                .batch = (int)B,
                .sampling = {.sampler = sampler, .sigma_kind = sigma_kind, .steps = (int)steps,
                             .eta = discrete ? (float)eta : -1.0f, .conv = conv},
                .cfg_scale = (float)scale,
                .clip_skip = (int)clip_skip, .rng = &rng,
                .init_rgb = img2img ? init.rgb : NULL, .strength = strength,
                .vae_opt = {.tiling = get(&o, "--vae-tiling") ? LDM_VAE_TILE_ON : LDM_VAE_TILE_AUTO,
                            .budget_mb = env->vae_budget_mb, .verbose = verbose},
                .progress = on_progress, .progress_ctx = &prog,
            };
            if (ldm_generate(&p, &g, NULL, rgb) != LDM_OK) {
                sd_fail("%s", ldm_last_error());
                free(rgb);
                goto out;
            }
            for (int64_t b = 0; b < B; b++) {
                uint8_t *img = malloc((size_t)per_img);
                if (!img) { sd_fail("out of memory"); free(rgb); goto out; }
                memcpy(img, rgb + b * per_img, (size_t)per_img);
                all[n_all++] = img;
                if (get(&o, "--skip_save")) continue;
                int n = snprintf(params, sizeof params,
                    "%s\n%s%s%sSteps: %lld, Sampler: %s, CFG scale: %g, Seed: %lld, "
                    "Size: %lldx%lld, Model hash: %s, Model: %s, RNG: %s",
                    prompts[pi], *negative ? "Negative prompt: " : "", negative, *negative ? "\n" : "",
                    steps, label, scale, seed, W, H, hash, model_name,
                    rng_kind == LDM_RNG_CPU ? "CPU" : "NV");
                if (clip_skip > 1) n += snprintf(params + n, sizeof params - n, ", Clip skip: %lld", clip_skip);
                if (discrete && eta != 0) n += snprintf(params + n, sizeof params - n, ", Eta: %g", eta);
                if (img2img) n += snprintf(params + n, sizeof params - n, ", Denoising strength: %g", strength);
                snprintf(params + n, sizeof params - n, ", Batch size: %lld, Batch pos: %lld, Iteration: %lld",
                         (long long)B, (long long)b, it);
                char path[8192];
                next_free(path, sizeof path, sample_dir, "%05d.png", &base_count);
                ldm_image out = {.width = (int)W, .height = (int)H, .rgb = img};
                const char *keys[] = {"parameters"}, *vals[] = {params};
                if (ldm_png_write(path, &out, 1, keys, vals, 0) != LDM_OK) {
                    sd_fail("%s", ldm_last_error());
                    free(rgb);
                    goto out;
                }
                base_count++;
                if (verbose) fprintf(stderr, "wrote %s\n", path);
            }
        }
    }
    free(rgb);
    if (!get(&o, "--skip_grid")) {
        int gw, gh;
        uint8_t *grid = make_grid(&gw, &gh, all, n_all, n_rows > 0 ? (int)n_rows : (int)B, (int)H, (int)W);
        if (!grid) { sd_fail("out of memory for the grid"); goto out; }
        char path[8192];
        next_free(path, sizeof path, outdir, "grid-%04d.png", &grid_count);
        snprintf(params, sizeof params,
                 "%s\n%s%s%sSteps: %lld, Sampler: %s, CFG scale: %g, Seed: %lld, "
                 "Size: %lldx%lld, Model hash: %s, Model: %s, RNG: %s",
                 prompts[0], *negative ? "Negative prompt: " : "", negative, *negative ? "\n" : "",
                 steps, label, scale, seed, W, H, hash, model_name,
                 rng_kind == LDM_RNG_CPU ? "CPU" : "NV");
        ldm_image out = {.width = gw, .height = gh, .rgb = grid};
        const char *keys[] = {"parameters"}, *vals[] = {params};
        int w = ldm_png_write(path, &out, 1, keys, vals, 0);
        free(grid);
        if (w != LDM_OK) { sd_fail("%s", ldm_last_error()); goto out; }
        if (verbose) fprintf(stderr, "wrote %s\n", path);
    }
    fprintf(stderr, "Your samples are ready and waiting for you here: \n%s \n\nEnjoy.\n", outdir);
    if (verbose)
        fprintf(stderr, "peak resident memory: %.1f MiB\n", ldm_peak_rss_bytes() / 1048576.0);
    rc = 0;
out:
    for (int i = 0; i < n_all; i++) free(all[i]);
    free(all);
    if (opened) ldm_pipeline_close(&p);
    ldm_image_free(&init);
    for (int i = 0; i < n_prompts; i++) free(prompts[i]);
    free(prompts);
    return rc;
}

int cmd_txt2img(int argc, char **argv, const sd_env *env) { return run(argc, argv, 0, env); }
int cmd_img2img(int argc, char **argv, const sd_env *env) { return run(argc, argv, 1, env); }

// `sd png-info FILE`: print the text chunks of a PNG (the "parameters" first).
int cmd_png_info(int argc, char **argv, const sd_env *env) {
    if (argc != 2 || !strcmp(argv[1], "--help")) {
        fprintf(argc == 2 ? stdout : stderr, "usage: sd png-info FILE.png\n\n"
                "Print the generation parameters (A1111 \"parameters\" text chunk) and other text.\n");
        return argc == 2 ? 0 : 2;
    }
    ldm_image img = {0};
    if (ldm_png_read(&img, argv[1]) != LDM_OK) return sd_fail("%s", ldm_last_error());
    int found = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < img.n_text; i++) {
            int is_params = !strcmp(img.text_keys[i], "parameters");
            if (pass == 0 && is_params) { printf("%s\n", img.text_values[i]); found = 1; }
            if (pass == 1 && !is_params) printf("%s: %s\n", img.text_keys[i], img.text_values[i]);
        }
    if (!found && img.n_text == 0) fprintf(stderr, "sd: %s: no text chunks\n", argv[1]);
    ldm_image_free(&img);
    return 0;
}
