/*
 * tools/cmd_txt2img.c -- `sd txt2img`, `sd img2img` and `sd inpaint`: the
 * command lines of CompVis scripts/txt2img.py and scripts/img2img.py over
 * ldm/pipeline.c, and inpainting with the same flags plus a mask.
 *
 *   sd txt2img --ckpt MODEL --prompt "a painting of a virus monster playing guitar"
 *   sd img2img --ckpt MODEL --init-img in.png --strength 0.75 --prompt "..."
 *   sd inpaint --ckpt MODEL --init-img in.png --mask mask.png --prompt "..."
 *
 * Same flags, defaults and output names as the Python scripts
 * (OUTDIR/samples/00000.png numbered from the count of files already there,
 * OUTDIR/grid-0000.png, n_samples columns), flags may be abbreviated to any
 * unambiguous prefix and given as --flag=value, as argparse allows. Never
 * overwrites: a taken name moves to the next free number.
 * Each PNG carries an AUTOMATIC1111-style "parameters" text chunk.
 * Without --ckpt both use the tiny model the project trained and ships
 * (LDM_TINY_MODEL_DEFAULT, or $LDM_TINY_MODEL) at 64x64, and say so on stderr.
 * Batches as CompVis (--from-file: n_samples lines per batch), batch k seeded
 * seed + k so any image reruns alone (--from-png); --shard I/N splits a run.
 * Leaves out: the invisible watermark and the safety checker; --precision and
 * --laion400m are accepted and change nothing (fp32; the model is --ckpt).
 *
 * Order of this file: the flags table and its parser, the model hash, output
 * files and the grid, progress, flags -> run_settings (settings_from_flags,
 * checked before anything loads), the A1111 "parameters" text, then the
 * command: run = settings, init image, folders, model, generate_all, grid.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
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
// every ldm_sigma_kind by the name ldm_sigma_kind_parse reads (tests/test_cli_ux.c checks)
#define SIGMA_SCHEDULES "default (normal)|karras|exponential|sgm_uniform|simple|kl_optimal|" \
                        "ays|beta|gits|smoothstep"
typedef struct flag {
    const char *name;
    int kind;
    int img2img;            // 0 all, 1 img2img and inpaint, -1 txt2img only, 2 inpaint only
    const char *help;
} flag;

enum { MODE_TXT2IMG, MODE_IMG2IMG, MODE_INPAINT };   // the subcommand

static int flag_applies(const flag *f, int mode) {
    return f->img2img == 0 || (f->img2img == -1 && mode == MODE_TXT2IMG) ||
           (f->img2img == 1 && mode != MODE_TXT2IMG) || (f->img2img == 2 && mode == MODE_INPAINT);
}

static const flag FLAGS[] = {
    {"--prompt", F_STR, 0, "the prompt (A1111 weights: (word:1.2) (word) [word] \\( BREAK)"},
    {"--negative-prompt", F_STR, 0, "what to steer away from (default: the empty prompt)"},
    {"--outdir", F_STR, 0, "output folder (default outputs/txt2img-samples | img2img-samples | inpaint-samples)"},
    {"--skip_grid", F_BOOL, 0, "do not write the grid"},
    {"--skip_save", F_BOOL, 0, "do not write the individual samples"},
    {"--ddim_steps", F_INT, 0, "sampling steps (50)"},
    {"--plms", F_BOOL, 0, "use the PLMS sampler (CompVis)"},
    {"--fixed_code", F_BOOL, -1, "every batch starts from the same noise (seed, not seed + k)"},
    {"--ddim_eta", F_FLOAT, 0, "DDIM eta (0.0: deterministic)"},
    {"--n_iter", F_INT, 0, "iterations (2 txt2img, 1 img2img and inpaint)"},
    {"--H", F_INT, -1, "image height in pixels, multiple of 8 (512; 64 with the tiny model)"},
    {"--W", F_INT, -1, "image width in pixels, multiple of 8 (512; 64 with the tiny model)"},
    {"--C", F_INT, 0, "latent channels (4; must match the model)"},
    {"--f", F_INT, 0, "downsampling factor (8; must match the model's VAE)"},
    {"--n_samples", F_INT, 0, "images per iteration = batch size (3 txt2img, 2 img2img and inpaint)"},
    {"--n_rows", F_INT, 0, "grid columns (default n_samples)"},
    {"--scale", F_FLOAT, 0, "classifier-free guidance scale (7.5 txt2img and inpaint, 5.0 img2img)"},
    {"--from-file", F_STR, 0, "one prompt per line; n_samples consecutive lines make one batch "
                              "(CompVis)"},
    {"--per-line", F_BOOL, 0, "with --from-file: each line gets a batch of n_samples images"},
    {"--shard", F_STR, 0, "I/N: run batches k with k % N == I only (N copies = one run; no grid)"},
    {"--from-png", F_STR, 0, "rerun the image a PNG's parameters describe (other flags override; "
                             "img2img: give the same --init-img)"},
    {"--dpm_solver", F_BOOL, 0, "CompVis: the DPM-Solver sampler = --sampler dpmpp_2m"},
    {"--laion400m", F_BOOL, 0, "CompVis: the LAION-400M model; here only a --ckpt says which model"},
    {"--config", F_STR, 0, "diffusers-style folder of configs for a non-standard single file"},
    {"--ckpt", F_STR, 0, "model: .safetensors/.ckpt single file or diffusers folder "
                         "(default: the tiny model, " LDM_TINY_MODEL_DEFAULT ")"},
    {"--seed", F_INT, 0, "seed (42)"},
    {"--precision", F_STR, 0, "accepted for compatibility; ldm.c computes in fp32"},
    {"--init-img", F_STR, 1, "img2img, inpaint: the initial image (PNG; sides multiples of 8)"},
    {"--strength", F_FLOAT, 1, "img2img, inpaint: 0 keeps the image, 1 ignores it (0.75; inpaint 1.0)"},
    {"--mask", F_STR, 2, "inpaint: the mask (PNG of the image's size; white = repaint, gray >= 50%)"},
    {"--sampler", F_STR, 0, "ddim (default), plms, euler, euler_a, heun, dpm2, dpm2_a, lms, "
                            "dpmpp_2s_a, dpmpp_2m, dpmpp_sde, dpmpp_2m_sde, ddpm, lcm, tcd, "
                            "unipc, unipc_bh1, deis, ipndm, ipndm_v, ddim_trailing, dpm_fast, "
                            "dpm_adaptive, res_multistep, er_sde, euler_cfgpp, dpmpp_2m_cfgpp; "
                            "\"DPM++ 2M Karras\" style names work"},
    {"--schedule", F_STR, 0, "k samplers: " SIGMA_SCHEDULES "; ddim/plms/ddpm/unipc/deis: "
                             "uniform (CompVis, default)|leading|trailing|linspace"},
    {"--rng", F_STR, 0, "cuda (torch CUDA Philox, as CompVis; default) | cpu (torch CPU)"},
    {"--sde-noise", F_STR, 0, "SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde): per-step "
                              "(default) | brownian (one Brownian path per seed: close images "
                              "at different step counts)"},
    {"--vae", F_STR, 0, "replace the model's VAE (file or diffusers folder)"},
    {"--vae-tiling", F_BOOL, 0, "decode/encode in tiles (less memory)"},
    {"--weights", F_STR, 0, "auto (as stored: fp16 stays fp16; default) | f32 | f16 (narrow fp32 matrices)"},
    {"--low-memory", F_BOOL, 0, "weights stay in the mapped file, dropped after each block (same image)"},
    {"--backend", F_STR, 0, "ref | cpu | cuda | cuda-emu (default $LDM_BACKEND or cpu)"},
    {"--threads", F_INT, 0, "CPU threads (default: all)"},
    {"--dump", F_STR, 0, "write every named intermediate as DIR/<name>.npy (sd compare)"},
    {"--verbose", F_BOOL, 0, "stages, timings, peak memory"},
    {"--progress", F_BOOL, 0, "progress on stderr even when it is not a terminal"},
    {"--prediction", F_STR, 0, "eps | v (default: from the checkpoint)"},
    {"--lora", F_STR, 0, "FILE:SCALE: merge a LoRA (kohya or PEFT) for this run; repeatable"},
    {"--lora-dir", F_STR, 0, "folder of the LoRAs named in the prompt: <lora:NAME:SCALE>"},
    {"--embedding-dir", F_STR, 0, "textual-inversion embeddings: a prompt word equal to a file name uses its vectors"},
    {"--clip-skip", F_INT, 0, "stop the text encoder N-1 layers early (1)"},
    {"--deepcache", F_INT, 0, "N: DeepCache, an approximation (off by default; 1 = exact): every "
                              "N-th UNet call runs in full, the others reuse its deep features"},
    {"--deepcache-branch", F_INT, 0, "K: DeepCache's skip branch, 0..11 on SD1 (0: the shallowest, "
                                     "fastest; deeper: slower, closer to exact)"},
    {"--vocab", F_STR, 0, "CLIP BPE vocabulary file (default: model tokenizer/ or build/vocab)"},
    {"--help", F_BOOL, 0, "this text (also -h)"},
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))

typedef struct opts {
    const char *val[N_FLAGS];   // value as given (NULL: absent); "1" for booleans
    const char *loras[LDM_LORA_MAX_SPECS + 1]; int n_loras;   // every --lora, in order
} opts;

static const char *const MODE_NAMES[] = {"txt2img", "img2img", "inpaint"};

static void usage(FILE *f, int mode) {
    fprintf(f, "usage: sd %s [--ckpt MODEL] [flags]\n\n", MODE_NAMES[mode]);
    fprintf(f, mode == MODE_IMG2IMG ? "Image-to-image (SDEdit) as CompVis scripts/img2img.py.\n\n"
               : mode == MODE_INPAINT
               ? "Inpainting: repaint the white part of --mask in --init-img, as diffusers'\n"
                 "StableDiffusionInpaintPipeline: an inpainting model (UNet of 9 input channels)\n"
                 "sees the mask and the masked image; an ordinary model gets the kept part\n"
                 "back after every step.\n\n"
               : "Text-to-image as CompVis scripts/txt2img.py.\n\n");
    for (int i = 0; i < N_FLAGS; i++) {
        if (!flag_applies(&FLAGS[i], mode)) continue;
        fprintf(f, "  %-18s %-2s %s\n", FLAGS[i].name, FLAGS[i].kind == F_BOOL ? "" : "X",
                FLAGS[i].help);
    }
    fprintf(f, "\nFlags may be abbreviated (--n_sample) and written --flag=value.\n");
}

// argv -> o. 0, or 2 after printing the problem (exit code of a usage error).
static int parse_flags(opts *o, int argc, char **argv, int mode) {
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        const char *a = !strcmp(argv[i], "-h") ? "--help" : argv[i];
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
            if (!flag_applies(&FLAGS[k], mode)) continue;
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
        if (!strcmp(FLAGS[hit].name, "--lora") && o->n_loras <= LDM_LORA_MAX_SPECS) o->loras[o->n_loras++] = value;
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

// Folders mkdir_p created in this run, so that a run that fails removes them
// again (rmdir: only while empty) and leaves no empty output folder behind.
static char created[16][4096];
static int n_created;

static int mkdir_p(const char *dir) {
    if (!*dir) return ldm_error("the output folder name is empty (--outdir \"\")");
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return ldm_error("output folder name too long (%zu bytes)", strlen(dir));
    for (char *c = p + 1; ; c++) {
        if (*c == '/' || *c == '\0') {
            char keep = *c;
            *c = '\0';
            if (mkdir(p, 0777) == 0) {
                if (n_created < 16) snprintf(created[n_created++], sizeof created[0], "%s", p);
            } else if (errno != EEXIST) {
                return ldm_error("cannot create output folder %s: %s", p, strerror(errno));
            }
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

// After a failed run: the folders this run created, deepest first, if empty.
static void remove_created_folders(void) {
    while (n_created > 0) rmdir(created[--n_created]);
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

// The grid's columns for n images of HxW: n_rows (default n_samples), widened
// when the grid would be taller than a PNG may be (LDM_IMAGE_MAX_SIDE), so
// that it wraps into more columns. 0 when no layout fits one PNG.
static int grid_columns(int n, int ncol, int H, int W) {
    const int max = LDM_IMAGE_MAX_SIDE, max_rows = (max - 2) / (H + 2), max_cols = (max - 2) / (W + 2);
    if (max_rows < 1 || max_cols < 1) return 0;
    if (ncol > n) ncol = n;
    if (ncol > max_cols) ncol = max_cols;
    if ((n + ncol - 1) / ncol > max_rows) ncol = (n + max_rows - 1) / max_rows;
    return ncol <= max_cols ? ncol : 0;
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
    double t0;              // when the current stage's first step started
    int64_t nfe;            // model evaluations of the sampling so far (ldm_generate_params.nfe)
} progress;

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Stage names (step -1) and sampler steps "step k/n" with the steps that
// really run (ldm_sampler_steps), the model evaluations so far (NFE: what a
// step costs depends on the sampler, docs/06-samplers.md), the mean time per
// step so far and the time left at that pace; on a terminal one line redrawn
// as a bar, which stays on screen when the stage is done.
static void on_progress(void *ctx, const char *stage, int step, int n, double sps) {
    progress *p = ctx;
    if (!p->on) return;
    if (step < 0 || (step == 0 && n > 0)) {
        p->t0 = seconds_now();
        if (p->tty) fprintf(stderr, "\r\033[K");
        fprintf(stderr, "%s%s", stage, p->tty && step == 0 ? "" : "\n");
        return;
    }
    double mean = (seconds_now() - p->t0) / (step > 0 ? step : 1);
    double eta = step < n ? mean * (n - step) : 0;
    if (p->tty) {
        char bar[21];
        int full = n > 0 ? (int)(20LL * step / n) : 20;
        for (int i = 0; i < 20; i++) bar[i] = i < full ? '#' : '.';
        bar[20] = '\0';
        fprintf(stderr, "\r\033[K%s [%s] step %d/%d  NFE %lld  %.2f s/step  ETA %.0fs", stage, bar,
                step, n, (long long)p->nfe, mean, eta);
        if (step >= n) fprintf(stderr, "\n");
    } else {
        fprintf(stderr, "%s: step %d/%d  NFE %lld  %.2f s/step  ETA %.0fs\n", stage, step, n,
                (long long)p->nfe, mean, eta);
    }
    (void)sps;
}

// ---------------------------------------------------------------------------
// flags -> one run's settings, checked before anything is loaded

typedef struct run_settings {
    int img2img;                    // 1: an init image (img2img, inpaint)
    int inpaint;                    // 1: and a mask (inpaint)
    const char *cmd;                // "txt2img" | "img2img" | "inpaint"
    const char *ckpt;               // --ckpt, or the tiny model
    int tiny;                       // 1: no --ckpt given
    long long n_iter, H, W, C, f, n_samples, n_rows, seed, threads, clip_skip;
    long long deepcache, deepcache_branch;   // --deepcache N (1: off), --deepcache-branch K (0)
    double eta, scale, strength;    // as given (the A1111 parameters print them)
    ldm_sampler_settings sampling;  // sampler, steps, eta, sigmas, CompVis conventions
    ldm_rng_kind rng_kind;
    ldm_pipeline_options po;        // backend, --config, --vae, --vocab, --prediction
    ldm_vae_options vae_opt;        // --vae-tiling, $LDM_VAE_BUDGET_MB
    const char *dump_dir;           // --dump, else main's $LDM_DUMP (NULL: no dumps); with
                                    // more than one batch, batch k dumps into DIR/batchKKK/
    const char *init_path, *mask_path, *negative, *outdir;
    char **prompts;                 // --from-file lines, or --prompt (read_prompts)
    int n_prompts;
    int verbose, fixed_code, skip_save, skip_grid;
    ldm_lora_spec loras[LDM_LORA_MAX_SPECS]; int n_loras; const char *lora_dir;   // --lora, --lora-dir
    int per_line;                   // each prompt its own batch (always for --prompt)
    long long shard_i, shard_n;     // --shard I/N (N = 1: every batch)
    long long only_pos;             // --from-png: write only this batch position (-1: all)
} run_settings;

// The sampler: DDIM (CompVis) unless --plms or --sampler; --schedule picks
// the sigmas (k samplers: every ldm_sigma_kind by name) or overrides the
// conventions' spacing (ddim/plms/ddpm). A sampler name that already names a
// schedule ("DPM++ 2M Karras") and a different --schedule conflict; LCM and
// TCD walk their own 50 distillation timesteps and take no --schedule.
// 0, or 2 after printing the problem.
static int sampler_from_flags(ldm_sampler_settings *s, const opts *o, const char *cmd, double eta) {
    const char *sname = get(o, "--sampler"), *sched = get(o, "--schedule");
    if (get(o, "--dpm_solver")) {   // CompVis DPMSolverSampler: DPM-Solver++ 2M multistep
        if (sname || get(o, "--plms"))
            return sd_fail("%s: give one of --dpm_solver, --plms, --sampler", cmd), 2;
        sname = "dpmpp_2m";
    }
    if (sname && get(o, "--plms")) return sd_fail("%s: give --plms or --sampler, not both", cmd), 2;
    if (ldm_sampler_parse(&s->sampler, &s->sigma_kind, sname ? sname : get(o, "--plms") ? "plms" : "ddim"))
        return sd_fail("%s: --sampler: %s", cmd, ldm_last_error()), 2;
    int discrete = !s->sampler->uses_sigmas;
    s->conv = LDM_CONVENTIONS_COMPVIS;   // the CLI mimics CompVis scripts/txt2img.py
    ldm_sigma_kind kind;
    ldm_spacing spacing;
    int is_kind = sched && ldm_sigma_kind_parse(&kind, sched) == LDM_OK;
    int is_spacing = sched && !is_kind && ldm_spacing_parse(&spacing, sched) == LDM_OK;
    if (sched && !is_kind && !is_spacing)
        return sd_fail("%s: --schedule '%s': expected a sigma schedule (%s) for the k samplers "
                       "or a timestep spacing (%s) for ddim/plms/ddpm", cmd, sched,
                       SIGMA_SCHEDULES, "uniform, leading, trailing, linspace"), 2;
    if (sched && !discrete) {   // a sigma schedule
        if (!is_kind)
            return sd_fail("%s: --schedule '%s' is a timestep spacing (ddim/plms/ddpm); %s takes "
                           "a sigma schedule: %s", cmd, sched, s->sampler->label, SIGMA_SCHEDULES), 2;
        if (s->sigma_kind != LDM_SIGMAS_DEFAULT && kind != s->sigma_kind)
            return sd_fail("%s: --sampler \"%s\" already names its schedule; it conflicts with "
                           "--schedule %s (give one of them)", cmd, sname, sched), 2;
        s->sigma_kind = kind;
    }
    if (!discrete) {   // a repeated sigma (smoothstep above 77 steps) fails in ldm_sample: say it now
        static ldm_schedule sd_sched;   // the repeats depend on the timesteps, not on the betas
        static float sig[1001];
        ldm_schedule_init_sd(&sd_sched);
        ldm_sigmas_make(sig, s->sigma_kind, &sd_sched, s->steps);
        for (int i = 0; i + 1 < s->steps; i++)
            if (!(sig[i + 1] < sig[i]))
                return sd_fail("%s: --ddim_steps %d: the %s schedule repeats a sigma at this many "
                               "steps (a step of zero length); use fewer steps", cmd, s->steps,
                               ldm_sigma_kind_name(s->sigma_kind)), 2;
    }
    int lcm = !strcmp(s->sampler->name, "lcm") || !strcmp(s->sampler->name, "tcd");
    if (lcm && s->steps > LDM_LCM_ORIGINAL_STEPS)
        return sd_fail("%s: --ddim_steps %d: %s samples from the %d timesteps it was distilled on, "
                       "so at most %d steps (4-8 is typical)", cmd, s->steps, s->sampler->label,
                       LDM_LCM_ORIGINAL_STEPS, LDM_LCM_ORIGINAL_STEPS), 2;
    if (sched && discrete) {
        if (lcm)
            return sd_fail("%s: --schedule '%s': %s samples from the %d timesteps it was "
                           "distilled on and takes no --schedule", cmd, sched, s->sampler->label,
                           LDM_LCM_ORIGINAL_STEPS), 2;
        if (!is_spacing || spacing == LDM_SPACING_LCM)
            return sd_fail("%s: --schedule '%s': %s takes a timestep spacing: uniform (CompVis, "
                           "default), leading, trailing or linspace (sigma schedules are for the "
                           "k samplers)", cmd, sched, s->sampler->label), 2;
        s->conv.spacing = spacing;
    }
    if (!strcmp(s->sampler->name, "plms") && eta != 0) return sd_fail("%s: PLMS needs --ddim_eta 0", cmd), 2;
    if (!strcmp(s->sampler->name, "tcd") && eta > 1)
        return sd_fail("%s: --ddim_eta %g: TCD's gamma must be in [0, 1]", cmd, eta), 2;
    if (get(o, "--sde-noise") && ldm_sde_noise_parse(&s->sde_noise, get(o, "--sde-noise")))
        return sd_fail("%s: --sde-noise: %s", cmd, ldm_last_error()), 2;
    // --ddim_eta is for the discrete samplers; without it, each one's default
    // (TCD: gamma 0.3; DDIM, PLMS: 0)
    s->eta = discrete && get(o, "--ddim_eta") ? (float)eta : -1.0f;
    return 0;
}

// The generator, the model's loading options (backend: --backend, else main's
// $LDM_BACKEND, else cpu), the VAE's and the outputs'. 0, or the exit code.
static int options_from_flags(run_settings *r, const opts *o, const sd_env *env) {
    const char *cmd = r->cmd;
    r->rng_kind = LDM_RNG_CUDA;
    if (get(o, "--rng") && ldm_rng_parse(&r->rng_kind, get(o, "--rng")))
        return sd_fail("%s: --rng: %s", cmd, ldm_last_error()), 2;
    ldm_prediction pred = LDM_PRED_AUTO;
    const char *ps = get(o, "--prediction");
    if (ps) {
        if (!strcmp(ps, "eps") || !strcmp(ps, "epsilon")) pred = LDM_PRED_EPS;
        else if (!strcmp(ps, "v") || !strcmp(ps, "v_prediction")) pred = LDM_PRED_V;
        else return sd_fail("%s: --prediction '%s': expected eps or v", cmd, ps), 2;
    }
    sd_env e = *env;
    if (get(o, "--backend")) {
        e.backend = get(o, "--backend");
        if (!ldm_backend(e.backend)) return sd_fail("%s", ldm_last_error()), 2;
    }
    const struct ldm_ops *ops = sd_backend(&e);
    if (!ops) return sd_fail("%s", ldm_last_error());
    r->verbose = get(o, "--verbose") != NULL;
    ldm_weights_dtype wd = LDM_WEIGHTS_AUTO;
    const char *ws = get(o, "--weights");
    if (ws) {
        if (!strcmp(ws, "auto")) wd = LDM_WEIGHTS_AUTO;
        else if (!strcmp(ws, "f32") || !strcmp(ws, "fp32")) wd = LDM_WEIGHTS_F32;
        else if (!strcmp(ws, "f16") || !strcmp(ws, "fp16")) wd = LDM_WEIGHTS_F16;
        else return sd_fail("%s: --weights '%s': expected auto, f32 or f16", cmd, ws), 2;
    }
    r->po = (ldm_pipeline_options){.ops = ops, .config_dir = get(o, "--config"),
                                   .vae_path = get(o, "--vae"), .vocab = get(o, "--vocab"),
                                   .vocab_default = env->vocab, .prediction = pred,
                                   .need_encoder = r->img2img, .verbose = r->verbose,
                                   .embedding_dir = get(o, "--embedding-dir"), .weights = wd,
                                   .low_memory = get(o, "--low-memory") != NULL};
    r->vae_opt = (ldm_vae_options){.tiling = get(o, "--vae-tiling") ? LDM_VAE_TILE_ON : LDM_VAE_TILE_AUTO,
                                   .budget_mb = env->vae_budget_mb, .verbose = r->verbose};
    r->dump_dir = get(o, "--dump") ? get(o, "--dump") : env->dump_dir;
    r->fixed_code = get(o, "--fixed_code") != NULL;
    r->per_line = get(o, "--per-line") != NULL || !get(o, "--from-file");
    r->only_pos = -1;
    r->shard_i = 0, r->shard_n = 1;
    const char *sh = get(o, "--shard");
    if (sh) {
        char tail;
        if (sscanf(sh, "%lld/%lld%c", &r->shard_i, &r->shard_n, &tail) != 2 || r->shard_n < 1 ||
            r->shard_n > 100000 || r->shard_i < 0 || r->shard_i >= r->shard_n)
            return sd_fail("%s: --shard '%s': expected I/N with 0 <= I < N", cmd, sh), 2;
        r->skip_grid = 1;
    }
    r->skip_save = get(o, "--skip_save") != NULL;
    r->skip_grid = get(o, "--skip_grid") != NULL || r->skip_grid;
    r->negative = get(o, "--negative-prompt") ? get(o, "--negative-prompt") : "";
    r->outdir = get(o, "--outdir") ? get(o, "--outdir")
              : r->inpaint ? "outputs/inpaint-samples"
              : r->img2img ? "outputs/img2img-samples" : "outputs/txt2img-samples";
    return 0;
}

// argv flags + main's environment -> r. 0, or the exit code after printing the problem.
static int settings_from_flags(run_settings *r, const opts *o, int mode, const sd_env *env) {
    memset(r, 0, sizeof *r);
    const int img2img = r->img2img = mode != MODE_TXT2IMG;
    r->inpaint = mode == MODE_INPAINT;
    const char *cmd = r->cmd = MODE_NAMES[mode];
    // no --ckpt: the tiny model the project trained (tools/tiny-model, or
    // $LDM_TINY_MODEL), drawn at the 64x64 it was trained at unless --H/--W say otherwise
    r->ckpt = get(o, "--ckpt");
    r->tiny = r->ckpt == NULL;
    if (r->tiny) r->ckpt = sd_tiny_model(env);
    long long side = r->tiny ? 64 : 512, steps;
    if (get_int(o, "--ddim_steps", 50, 1, 1000, &steps) ||
        get_int(o, "--n_iter", img2img ? 1 : 2, 1, 100000, &r->n_iter) ||
        get_int(o, "--H", side, -1000000, 1000000, &r->H) ||
        get_int(o, "--W", side, -1000000, 1000000, &r->W) ||
        get_int(o, "--C", 4, 1, 64, &r->C) || get_int(o, "--f", 8, 1, 64, &r->f) ||
        get_int(o, "--n_samples", img2img ? 2 : 3, 1, 64, &r->n_samples) ||
        get_int(o, "--n_rows", 0, 0, 1000, &r->n_rows) ||
        get_int(o, "--seed", 42, 0, INT64_MAX, &r->seed) ||
        get_int(o, "--threads", 0, 0, 4096, &r->threads) ||
        get_int(o, "--clip-skip", 1, 1, 64, &r->clip_skip) ||
        get_int(o, "--deepcache", 1, 1, 1000, &r->deepcache) ||
        get_int(o, "--deepcache-branch", 0, 0, LDM_UNET_MAX_SKIPS - 1, &r->deepcache_branch) ||
        get_float(o, "--ddim_eta", 0.0, &r->eta) ||
        get_float(o, "--scale", mode == MODE_IMG2IMG ? 5.0 : 7.5, &r->scale) ||
        get_float(o, "--strength", r->inpaint ? 1.0 : 0.75, &r->strength))
        return 2;
    r->sampling.steps = (int)steps;
    if (!img2img && (r->H % 8 || r->W % 8 || r->H < 8 || r->W < 8))
        return sd_fail("%s: --H %lld --W %lld: height and width must be positive multiples of 8",
                       cmd, r->H, r->W), 2;
    if (r->H > LDM_IMAGE_MAX_SIDE || r->W > LDM_IMAGE_MAX_SIDE)
        return sd_fail("%s: --H %lld --W %lld: a PNG side can be at most %d pixels", cmd, r->H,
                       r->W, LDM_IMAGE_MAX_SIDE), 2;
    if (img2img && !(r->strength >= 0 && r->strength <= 1))
        return sd_fail("%s: --strength %g: must be in [0, 1]", cmd, r->strength), 2;
    if (r->eta < 0) return sd_fail("%s: --ddim_eta must be >= 0", cmd), 2;
    if (!(fabs(r->scale) <= 1e4) || !(r->eta <= 1e4))
        return sd_fail("%s: --scale %g / --ddim_eta %g: expected numbers within +-10000", cmd,
                       r->scale, r->eta), 2;
    if (r->tiny) {
        struct stat st;
        if (stat(r->ckpt, &st) != 0 || !S_ISDIR(st.st_mode))
            return sd_fail("%s: no --ckpt given, and the tiny model folder %s is not here (run from "
                           "the repository root, set LDM_TINY_MODEL=DIR, or pass --ckpt FILE|DIR)",
                           cmd, r->ckpt), 2;
        fprintf(stderr, "%s: no --ckpt given: using the tiny model in %s (64x64 coloured shapes, "
                "English or Japanese prompts; pass --ckpt for a Stable Diffusion checkpoint)\n",
                cmd, r->ckpt);
    }
    r->init_path = get(o, "--init-img");
    if (img2img && !r->init_path) return sd_fail("%s: --init-img FILE is required", cmd), 2;
    r->mask_path = get(o, "--mask");
    if (r->inpaint && !r->mask_path)
        return sd_fail("inpaint: --mask FILE is required (a PNG of the image's size, white = "
                       "repaint)"), 2;
    if (sampler_from_flags(&r->sampling, o, cmd, r->eta)) return 2;
    if (o->n_loras > LDM_LORA_MAX_SPECS) return sd_fail("%s: at most %d --lora", cmd, LDM_LORA_MAX_SPECS), 2;
    for (r->lora_dir = get(o, "--lora-dir"); r->n_loras < o->n_loras; r->n_loras++)
        if (ldm_lora_spec_parse(&r->loras[r->n_loras], o->loras[r->n_loras])) return sd_fail("%s: %s", cmd, ldm_last_error()), 2;
    return options_from_flags(r, o, env);
}

// --from-file lines, or --prompt (CompVis' default prompt). 0 / 1 (printed).
static int read_prompts(char ***prompts, int *n, const opts *o, const char *cmd) {
    *prompts = NULL;
    *n = 0;
    const char *from = get(o, "--from-file");
    if (!from) {
        *prompts = malloc(sizeof **prompts);
        if (!*prompts) return sd_fail("out of memory");
        (*prompts)[0] = strdup(get(o, "--prompt") ? get(o, "--prompt")
                                                  : "a painting of a virus monster playing guitar");
        *n = 1;
        return 0;
    }
    FILE *pf = fopen(from, "r");
    if (!pf) return sd_fail("%s: --from-file %s: %s", cmd, from, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, pf)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        char **np = realloc(*prompts, (size_t)(*n + 1) * sizeof *np);
        if (!np) break;
        *prompts = np;
        (*prompts)[(*n)++] = strdup(line);
    }
    free(line);
    fclose(pf);
    if (*n == 0) return sd_fail("%s: --from-file %s: no prompts in it", cmd, from);
    return 0;
}

// ---------------------------------------------------------------------------
// the A1111 "parameters" text of a PNG

typedef struct run_info {           // what every PNG of the run says about it
    char hash[16];                  // A1111 legacy model hash
    char model_name[256];           // the checkpoint's file name without extension
    char label[64];                 // "DPM++ 2M Karras"
} run_info;

static void run_info_fill(run_info *ri, const run_settings *r, const ldm_pipeline *p) {
    const ldm_sampler_settings *s = &r->sampling;
    model_hash(ri->hash, p->model.files[0].path);
    snprintf(ri->label, sizeof ri->label, "%s%s", s->sampler->label,   // "DPM++ 2M Karras"
             s->sampler->uses_sigmas ? ldm_sigma_kind_label(s->sigma_kind) : "");
    // the last path component, trailing slashes dropped ("tools/tiny-model/"
    // -> tiny-model); a checkpoint file loses its format's extension only
    // (v1-5-pruned.safetensors -> v1-5-pruned; the folder sd-v1.5 stays sd-v1.5)
    char path[4096];
    snprintf(path, sizeof path, "%s", r->ckpt);
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') path[--len] = '\0';
    const char *mname = strrchr(path, '/');
    mname = mname ? mname + 1 : path;
    snprintf(ri->model_name, sizeof ri->model_name, "%s", mname);
    static const char *exts[] = {".safetensors", ".ckpt", ".pt", ".pth", ".bin"};
    len = strlen(ri->model_name);
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++) {
        size_t n = strlen(exts[i]);
        if (len > n && !strcmp(ri->model_name + len - n, exts[i])) ri->model_name[len - n] = '\0';
    }
}

// "PROMPT\n[Negative prompt: N\n]Steps: S, NFE: E, ..., RNG: NV" (NFE: the
// model evaluations the sampler spent; a reader that does not know the key,
// --from-png included, skips it) then, for a sample
// (batch_pos >= 0), everything else that changes its pixels when it is not
// the default (clip skip, eta, strength, DDIM/PLMS timestep spacing) and its
// place in its batch: with the batch's seed, size and this position, the
// parameters rerun this image alone (sd txt2img --from-png). The grid gets
// the first part only.
static void parameters(char *buf, size_t size, const run_settings *r, const run_info *ri,
                       const char *prompt, long long seed, long long nfe, long long batch_size,
                       long long batch_pos, long long iteration) {
    const char *neg = r->negative;
    int n = snprintf(buf, size,
        "%s\n%s%s%sSteps: %d, NFE: %lld, Sampler: %s, CFG scale: %g, Seed: %lld, "
        "Size: %lldx%lld, Model hash: %s, Model: %s, RNG: %s",
        prompt, *neg ? "Negative prompt: " : "", neg, *neg ? "\n" : "",
        r->sampling.steps, nfe, ri->label, r->scale, seed, r->W, r->H, ri->hash, ri->model_name,
        r->rng_kind == LDM_RNG_CPU ? "CPU" : "NV");
    if (batch_pos < 0 || n < 0 || (size_t)n >= size) return;
    if (!r->sampling.sampler->uses_sigmas && r->sampling.conv.spacing != LDM_SPACING_UNIFORM) {
        static const char *names[] = {"leading", "trailing", "linspace", "uniform", "lcm"};
        n += snprintf(buf + n, size - n, ", Schedule type: %s", names[r->sampling.conv.spacing]);
    }
    if (r->clip_skip > 1) n += snprintf(buf + n, size - n, ", Clip skip: %lld", r->clip_skip);
    if (r->deepcache > 1) {   // an approximation: the pixels depend on it
        n += snprintf(buf + n, size - n, ", DeepCache: %lld", r->deepcache);
        if (r->deepcache_branch != 0)
            n += snprintf(buf + n, size - n, ", DeepCache branch: %lld", r->deepcache_branch);
    }
    if (r->sampling.sde_noise == LDM_SDE_NOISE_BROWNIAN)
        n += snprintf(buf + n, size - n, ", SDE noise: brownian");
    const ldm_sampler_info *si = r->sampling.sampler;   // eta: recorded when not the sampler's default
    if (!si->uses_sigmas && r->sampling.eta >= 0 && r->sampling.eta != si->default_eta)
        n += snprintf(buf + n, size - n, ", Eta: %g", r->eta);
    if (r->img2img) n += snprintf(buf + n, size - n, ", Denoising strength: %g", r->strength);
    if (r->po.weights == LDM_WEIGHTS_F16)   // fp32 weights rounded to fp16 change the pixels
        n += snprintf(buf + n, size - n, ", Weights: f16");
    if ((size_t)n < size)
        snprintf(buf + n, size - n, ", Batch size: %lld, Batch pos: %lld", batch_size, batch_pos);
    (void)iteration;   // implied by the seed (seed + batch index): a rerun writes the same text
}

// One PNG with its parameters, at the next free name of dir/fmt. 0 / 1 (printed).
static int write_png(const char *dir, const char *fmt, int *index, const uint8_t *rgb, int w,
                     int h, const char *params, int verbose) {
    char path[8192];
    next_free(path, sizeof path, dir, fmt, index);
    ldm_image out = {.width = w, .height = h, .rgb = (uint8_t *)rgb};
    const char *keys[] = {"parameters"}, *vals[] = {params};
    if (ldm_png_write(path, &out, 1, keys, vals, 0) != LDM_OK) return sd_fail("%s", ldm_last_error());
    if (verbose) fprintf(stderr, "wrote %s\n", path);
    return 0;
}

// The grid of every image of the run (torchvision make_grid), n_rows columns
// (default n_samples; more when it would be too tall, grid_columns), with
// the run's parameters. 0 / 1.
static int write_grid(const run_settings *r, const run_info *ri, uint8_t *const *all, int n_all,
                      const char *first_prompt, long long nfe, int *grid_count) {
    int gw, gh;
    int ncol = grid_columns(n_all, r->n_rows > 0 ? (int)r->n_rows : (int)r->n_samples, (int)r->H, (int)r->W);
    if (ncol == 0) return 0;   // warned before sampling (run)
    uint8_t *grid = make_grid(&gw, &gh, all, n_all, ncol, (int)r->H, (int)r->W);
    if (!grid) return sd_fail("out of memory for the grid");
    // every prompt of the run, " | " between them (each sample's PNG has its own)
    char prompts[4096], params[8192];
    int np = snprintf(prompts, sizeof prompts, "%s", first_prompt);
    for (int i = 1; i < r->n_prompts && np > 0 && (size_t)np < sizeof prompts; i++)
        np += snprintf(prompts + np, sizeof prompts - np, " | %s", r->prompts[i]);
    parameters(params, sizeof params, r, ri, prompts, r->seed, nfe, r->n_samples, -1, 0);
    int rc = write_png(r->outdir, "grid-%04d.png", grid_count, grid, gw, gh, params, r->verbose);
    free(grid);
    return rc;
}

// ---------------------------------------------------------------------------
// the command

typedef struct outputs {
    char sample_dir[4096];          // OUTDIR/samples
    int base_count, grid_count;     // next numbers: as CompVis, the count of files already there
    uint8_t **all;                  // every image of the run [H][W][3], for the grid
    int n_all;
    long long nfe;                  // the last batch's model evaluations (the grid's NFE)
} outputs;

// The output folders, before the model is loaded. 0 / 1.
static int outputs_open(outputs *out, const run_settings *r) {
    memset(out, 0, sizeof *out);
    snprintf(out->sample_dir, sizeof out->sample_dir, "%s/samples", r->outdir);
    if (mkdir_p(r->outdir) != LDM_OK || mkdir_p(out->sample_dir) != LDM_OK)
        return sd_fail("%s: %s", r->cmd, ldm_last_error());
    return 0;
}

// The run as batches, k = 0, 1, ... in order (iteration-major): with
// --from-file, n_samples consecutive lines make one batch (CompVis
// `chunk(data, batch_size)`; the last may be shorter); --per-line and
// --prompt: each prompt its own batch of n_samples. Batch k draws from a
// generator seeded seed + k (--fixed_code: seed), so any batch, and any image
// with its batch size and position, reruns alone.
static long long n_chunks(const run_settings *r) {
    return r->per_line ? r->n_prompts : (r->n_prompts + r->n_samples - 1) / r->n_samples;
}
static long long images_per_iteration(const run_settings *r) {
    return r->per_line ? r->n_prompts * r->n_samples : r->n_prompts;
}

// The folder's next numbers (as CompVis: the count of entries there), or,
// with --shard, fixed names 00000 + image index that must all be free so that
// the shards together write exactly the files of one run. 0 / 1 (printed).
static int plan_names(outputs *out, const run_settings *r) {
    out->base_count = count_entries(out->sample_dir);
    out->grid_count = count_entries(r->outdir) - 1;
    if (out->grid_count < 0) out->grid_count = 0;
    if (r->shard_n == 1 || r->skip_save) return 0;
    out->base_count = 0;
    const long long per_it = images_per_iteration(r), nc = n_chunks(r);
    for (long long it = 0; it < r->n_iter; it++)
        for (long long ci = 0; ci < nc; ci++) {
            if ((it * nc + ci) % r->shard_n != r->shard_i) continue;
            long long first = it * per_it + ci * r->n_samples;
            long long size = r->per_line ? r->n_samples
                           : (r->n_prompts - ci * r->n_samples < r->n_samples
                                  ? r->n_prompts - ci * r->n_samples : r->n_samples);
            for (long long j = 0; j < size; j++) {
                char path[8192];
                snprintf(path, sizeof path, "%s/%05lld.png", out->sample_dir, first + j);
                if (access(path, F_OK) == 0)
                    return sd_fail("%s: --shard: %s already exists (shards write fixed names: "
                                   "give them an empty --outdir)", r->cmd, path);
            }
        }
    return 0;
}

// Every batch of the run (this shard's): each image saved (unless
// --skip_save) with its parameters and kept for the grid. 0 / 1.
static int generate_all(outputs *out, const run_settings *r, ldm_pipeline *p,
                        const uint8_t *init_rgb, const uint8_t *mask_rgb, const run_info *ri,
                        progress *prog) {
    const int64_t B = r->n_samples, per_img = r->H * r->W * 3;
    const long long per_it = images_per_iteration(r), nc = n_chunks(r);
    uint8_t *rgb = malloc((size_t)(B * per_img));
    const char **batch_prompts = malloc((size_t)B * sizeof *batch_prompts);
    out->all = calloc((size_t)(r->n_iter * per_it), sizeof *out->all);
    if (!rgb || !out->all || !batch_prompts) {
        free(rgb), free(batch_prompts);
        return sd_fail("out of memory");
    }
    int rc = 0;
    for (long long it = 0; it < r->n_iter && !rc; it++) {
        for (long long ci = 0; ci < nc && !rc; ci++) {
            const long long k = it * nc + ci, seed = r->fixed_code ? r->seed : r->seed + k;
            if (k % r->shard_n != r->shard_i) continue;
            long long n = B;
            for (long long j = 0; j < B; j++) {
                long long line = r->per_line ? ci : ci * B + j;
                if (line >= r->n_prompts) { n = j; break; }
                batch_prompts[j] = r->prompts[line];
            }
            if (r->dump_dir && r->n_iter * nc > 1) {   // one folder per batch: none overwrites another
                char dir[4096];
                snprintf(dir, sizeof dir, "%s/batch%03lld", r->dump_dir, k);
                ldm_dump_set_dir(dir);
            }
            ldm_rng rng;
            ldm_rng_init(&rng, r->rng_kind, (uint64_t)seed);
            ldm_generate_params g = {
                .prompt = batch_prompts[0], .prompts = r->per_line ? NULL : batch_prompts,
                .negative = r->negative, .width = (int)r->W, .height = (int)r->H, .batch = (int)n,
                .sampling = r->sampling, .cfg_scale = (float)r->scale,
                .clip_skip = (int)r->clip_skip, .rng = &rng, .init_rgb = init_rgb,
                .strength = r->strength, .mask_rgb = mask_rgb, .vae_opt = r->vae_opt,
                .progress = on_progress, .progress_ctx = prog,
                .lora_dir = r->lora_dir, .loras = r->loras, .n_loras = r->n_loras,
                .nfe = &prog->nfe, .deepcache = (int)r->deepcache,
                .deepcache_branch = (int)r->deepcache_branch,
            };
            if (ldm_generate(p, &g, NULL, rgb) != LDM_OK) { rc = sd_fail("%s", ldm_last_error()); break; }
            out->nfe = prog->nfe;
            for (int64_t b = 0; b < n && !rc; b++) {
                if (r->only_pos >= 0 && b != r->only_pos) continue;
                uint8_t *img = malloc((size_t)per_img);
                if (!img) { rc = sd_fail("out of memory"); break; }
                memcpy(img, rgb + b * per_img, (size_t)per_img);
                out->all[out->n_all++] = img;
                if (r->skip_save) continue;
                char params[8192];
                parameters(params, sizeof params, r, ri, batch_prompts[b], seed, out->nfe, n,
                           (long long)b, it);
                if (r->shard_n > 1) {   // fixed names (plan_names checked them)
                    int index = (int)(it * per_it + ci * B + b);
                    rc = write_png(out->sample_dir, "%05d.png", &index, img, (int)r->W, (int)r->H,
                                   params, r->verbose);
                    continue;
                }
                rc = write_png(out->sample_dir, "%05d.png", &out->base_count, img, (int)r->W,
                               (int)r->H, params, r->verbose);
                out->base_count++;
            }
        }
    }
    free(rgb);
    free(batch_prompts);
    return rc;
}

// Every limit known before the model runs, so that a run never computes for
// minutes and then fails: the grid's size (too big for one PNG: said now, and
// skipped), the disk space for the PNGs. 0 / 1 (printed).
static int check_before_sampling(const run_settings *r) {
    const long long n_all = r->only_pos >= 0 ? 1 : r->n_iter * images_per_iteration(r);
    if (!r->skip_grid && n_all > 0 &&
        grid_columns((int)(n_all < INT32_MAX ? n_all : INT32_MAX),
                     r->n_rows > 0 ? (int)r->n_rows : (int)r->n_samples, (int)r->H, (int)r->W) == 0)
        fprintf(stderr, "%s: warning: %lld images of %lldx%lld do not fit one PNG grid (sides up "
                "to %d); no grid will be written (--skip_grid silences this)\n", r->cmd, n_all,
                r->W, r->H, LDM_IMAGE_MAX_SIDE);
    // disk: a PNG is rarely under a tenth of its raw pixels; refuse when even
    // that cannot fit, warn when the raw size does not
    struct statvfs fs;
    if (statvfs(r->outdir, &fs) == 0) {
        double avail = (double)fs.f_bavail * fs.f_frsize;
        double raw = (double)(r->skip_save ? 0 : n_all) * r->H * r->W * 3 +
                     (r->skip_grid ? 0 : (double)n_all * (r->H + 2) * (r->W + 2) * 3);
        if (raw / 10 > avail)
            return sd_fail("%s: %s has %.1f MiB free; %lld images of %lldx%lld need about %.1f MiB "
                           "or more", r->cmd, r->outdir, avail / 1048576, n_all, r->W, r->H,
                           raw / 10 / 1048576);
        if (raw > avail)
            fprintf(stderr, "%s: warning: %s has %.1f MiB free; the images may need up to %.1f MiB\n",
                    r->cmd, r->outdir, avail / 1048576, raw / 1048576);
    }
    return 0;
}

// --from-png FILE: the flags its "parameters" text names (parameters()), for
// every flag not given on the command line; *pos <- its Batch pos. The values
// live in `store` until the run ends. 0, or the exit code after printing.
typedef struct png_flags {
    char v[24][8192]; int n;
    char hash[16], model[256];      // the PNG's "Model hash" and "Model" ("" when absent)
    long long W, H;                 // its "Size" (0 when absent): img2img checks the init image
} png_flags;

static void set_flag(opts *o, png_flags *st, const char *name, const char *value, int len) {
    for (int k = 0; k < N_FLAGS; k++)
        if (!strcmp(FLAGS[k].name, name) && !o->val[k] && st->n < 24) {
            snprintf(st->v[st->n], sizeof st->v[0], "%.*s", len < 0 ? (int)strlen(value) : len, value);
            o->val[k] = st->v[st->n++];
        }
}

static int flags_from_png(opts *o, png_flags *st, long long *pos, int img2img) {
    const char *path = get(o, "--from-png"), *cmd = img2img ? "img2img" : "txt2img";
    if (get(o, "--from-file")) return sd_fail("%s: give --from-png or --from-file, not both", cmd), 2;
    ldm_image img = {0};
    if (ldm_png_read(&img, path) != LDM_OK) return sd_fail("--from-png %s", ldm_last_error()), 1;
    const char *text = NULL;
    for (int i = 0; i < img.n_text; i++)
        if (!strcmp(img.text_keys[i], "parameters")) text = img.text_values[i];
    const char *kv = text ? strstr(text, "\nSteps: ") : NULL;
    if (!kv) {
        ldm_image_free(&img);
        return sd_fail("--from-png %s: no A1111 \"parameters\" text with Steps: in it", path), 1;
    }
    const char *neg = strstr(text, "\nNegative prompt: ");
    if (neg && neg > kv) neg = NULL;
    set_flag(o, st, "--prompt", text, (int)((neg ? neg : kv) - text));
    if (neg) set_flag(o, st, "--negative-prompt", neg + 18, (int)(kv - neg - 18));
    static const struct { const char *key, *flag; } map[] = {
        {"Steps", "--ddim_steps"}, {"Sampler", "--sampler"}, {"Schedule type", "--schedule"},
        {"CFG scale", "--scale"}, {"Seed", "--seed"}, {"Clip skip", "--clip-skip"},
        {"Eta", "--ddim_eta"}, {"Batch size", "--n_samples"}, {"Weights", "--weights"},
        {"SDE noise", "--sde-noise"}, {"Denoising strength", "--strength"},
        {"DeepCache", "--deepcache"}, {"DeepCache branch", "--deepcache-branch"},
    };
    *pos = 0;
    int from_img2img = 0;
    for (const char *c = kv + 1; *c;) {
        const char *end = strstr(c, ", ");
        if (!end) end = c + strcspn(c, "\n");
        const char *colon = memchr(c, ':', (size_t)(end - c));
        if (colon && colon[1] == ' ') {
            int klen = (int)(colon - c), vlen = (int)(end - colon - 2);
            const char *v = colon + 2;
            for (size_t m = 0; m < sizeof map / sizeof map[0]; m++)
                if ((int)strlen(map[m].key) == klen && !strncmp(c, map[m].key, klen))
                    set_flag(o, st, map[m].flag, v, vlen);
            if (klen == 4 && !strncmp(c, "Size", 4)) {
                const char *x = memchr(v, 'x', (size_t)vlen);
                if (x) {
                    st->W = atoll(v), st->H = atoll(x + 1);
                    if (!img2img)   // img2img: the size is the init image's
                        set_flag(o, st, "--W", v, (int)(x - v)), set_flag(o, st, "--H", x + 1, (int)(v + vlen - x - 1));
                }
            }
            if (klen == 10 && !strncmp(c, "Model hash", 10))
                snprintf(st->hash, sizeof st->hash, "%.*s", vlen, v);
            if (klen == 5 && !strncmp(c, "Model", 5))
                snprintf(st->model, sizeof st->model, "%.*s", vlen, v);
            if (klen == 18 && !strncmp(c, "Denoising strength", 18)) from_img2img = 1;
            if (klen == 3 && !strncmp(c, "RNG", 3)) set_flag(o, st, "--rng", vlen == 3 && !strncmp(v, "CPU", 3) ? "cpu" : "cuda", -1);
            if (klen == 9 && !strncmp(c, "Batch pos", 9)) *pos = atoll(v);
        }
        if (!*end || *end == '\n') break;
        c = end + 2;
    }
    ldm_image_free(&img);
    if (from_img2img != img2img)   // the text says which command made it
        return sd_fail("%s: --from-png %s was made by %s: rerun it with `sd %s --from-png %s%s`",
                       cmd, path, from_img2img ? "img2img" : "txt2img",
                       from_img2img ? "img2img" : "txt2img", path,
                       from_img2img ? " --init-img THE_SAME_INIT.png" : ""), 2;
    set_flag(o, st, "--n_iter", "1", -1);
    return 0;
}

// --from-png: what can still make the rerun differ, said before the sampling.
// A different init image size is an error (the parameters cannot describe
// this run); a different model (its A1111 hash) is a warning: the rerun is
// then a new image, which may be what the user wants.
static int check_png_size(const png_flags *st, const run_settings *r, const char *path) {
    if (r->img2img && st->W > 0 && (st->W != r->W || st->H != r->H))
        return sd_fail("img2img: --from-png %s: its image was %lldx%lld but --init-img %s is "
                       "%lldx%lld (give the init image it was made from)", path, st->W, st->H,
                       r->init_path, r->W, r->H), 2;
    return 0;
}

static void check_png_model(const png_flags *st, const run_settings *r, const run_info *ri,
                            const char *path) {
    if (st->hash[0] && strcmp(st->hash, ri->hash))
        fprintf(stderr, "%s: warning: --from-png %s was made with model hash %s (Model: %s); "
                "this model's hash is %s (%s): the image will not be the same\n", r->cmd, path,
                st->hash, st->model[0] ? st->model : "?", ri->hash, ri->model_name);
}

static int run(int argc, char **argv, int mode, const sd_env *env) {
    opts o;
    int e = parse_flags(&o, argc, argv, mode);
    if (e) return e;
    if (get(&o, "--help")) { usage(stdout, mode); return 0; }
    static png_flags from_png;
    long long png_pos = -1;
    if (get(&o, "--from-png") && (e = flags_from_png(&o, &from_png, &png_pos, mode != MODE_TXT2IMG))) return e;
    run_settings r;
    if ((e = settings_from_flags(&r, &o, mode, env))) return e;
    const int img2img = r.img2img;
    if (png_pos >= 0) {
        if (png_pos >= r.n_samples)
            return sd_fail("%s: --from-png: Batch pos %lld is outside the batch of %lld",
                           r.cmd, png_pos, r.n_samples), 2;
        r.only_pos = png_pos;
        r.skip_grid = 1;
        r.n_iter = 1;
    }
    if (r.threads > 0 && r.po.ops->set_threads) r.po.ops->set_threads((int)r.threads);
    if (r.dump_dir) ldm_dump_set_dir(r.dump_dir);
    progress prog = {.tty = isatty(2)};
    prog.on = prog.tty || r.verbose || get(&o, "--progress");
    if (read_prompts(&r.prompts, &r.n_prompts, &o, r.cmd)) return 1;

    // init image (img2img): its own size, as CompVis load_img (which also
    // resizes to multiples of 64; here the sides must already be multiples of 8)
    ldm_image init = {0}, mask = {0};
    outputs out = {0};
    ldm_pipeline p;
    int rc = 1, opened = 0;
    if (img2img) {
        if (ldm_png_read(&init, r.init_path) != LDM_OK) {
            sd_fail("%s: --init-img %s", r.cmd, ldm_last_error());   // the message names the file
            goto done;
        }
        if (init.width % 8 || init.height % 8) {
            sd_fail("%s: --init-img %s is %dx%d: width and height must be multiples of 8 "
                    "(crop or resize it)", r.cmd, r.init_path, init.width, init.height);
            goto done;
        }
        r.H = init.height;
        r.W = init.width;
        if (png_pos >= 0 && check_png_size(&from_png, &r, get(&o, "--from-png"))) {
            rc = 2;
            goto done;
        }
    }
    // the mask (inpaint): any PNG mode, exactly the image's size (never resized)
    if (r.inpaint && ldm_png_read(&mask, r.mask_path) != LDM_OK) {
        sd_fail("inpaint: --mask %s", ldm_last_error());
        goto done;
    }
    if (r.inpaint && (mask.width != init.width || mask.height != init.height)) {
        sd_fail("inpaint: --mask %s is %dx%d but --init-img %s is %dx%d: the mask must have the "
                "image's size", r.mask_path, mask.width, mask.height, r.init_path, init.width,
                init.height);
        goto done;
    }
    if (outputs_open(&out, &r) || check_before_sampling(&r) || plan_names(&out, &r)) goto done;

    // ---- model
    if (prog.on) fprintf(stderr, "load model %s\n", r.ckpt);
    if (ldm_pipeline_open(&p, r.ckpt, &r.po) != LDM_OK) { sd_fail("%s", ldm_last_error()); goto done; }
    opened = 1;
    if (r.C != p.latent_channels)
        { sd_fail("%s: --C %lld: this model's latents have %d channels", r.cmd, r.C, p.latent_channels); goto done; }
    if (get(&o, "--f") && r.f != p.factor)
        { sd_fail("%s: --f %lld: this model's VAE downsamples by %d", r.cmd, r.f, p.factor); goto done; }
    if (r.deepcache_branch >= ldm_unet_deepcache_branches(&p.unet)) {
        sd_fail("%s: --deepcache-branch %lld: this model's UNet has skip branches 0..%d", r.cmd,
                r.deepcache_branch, ldm_unet_deepcache_branches(&p.unet) - 1);
        rc = 2;
        goto done;
    }
    if (r.verbose)
        fprintf(stderr, "model: %s, %s, loaded in %.1f s\n", ldm_family_name(p.model.family),
                ldm_prediction_name(p.model.prediction), p.load_seconds);

    // ---- the images, then the grid
    run_info ri;
    run_info_fill(&ri, &r, &p);
    if (png_pos >= 0) check_png_model(&from_png, &r, &ri, get(&o, "--from-png"));
    if (generate_all(&out, &r, &p, img2img ? init.rgb : NULL, r.inpaint ? mask.rgb : NULL, &ri, &prog))
        goto done;
    if (!r.skip_grid && write_grid(&r, &ri, out.all, out.n_all, r.prompts[0], out.nfe, &out.grid_count))
        goto done;
    fprintf(stderr, "Your samples are ready and waiting for you here: \n%s \n\nEnjoy.\n", r.outdir);
    if (r.verbose)
        fprintf(stderr, "peak resident memory: %.1f MiB\n", ldm_peak_rss_bytes() / 1048576.0);
    rc = 0;
done:
    if (rc) remove_created_folders();
    for (int i = 0; i < out.n_all; i++) free(out.all[i]);
    free(out.all);
    if (opened) ldm_pipeline_close(&p);
    ldm_image_free(&init);
    ldm_image_free(&mask);
    for (int i = 0; i < r.n_prompts; i++) free(r.prompts[i]);
    free(r.prompts);
    return rc;
}

int cmd_txt2img(int argc, char **argv, const sd_env *env) { return run(argc, argv, MODE_TXT2IMG, env); }
int cmd_img2img(int argc, char **argv, const sd_env *env) { return run(argc, argv, MODE_IMG2IMG, env); }
int cmd_inpaint(int argc, char **argv, const sd_env *env) { return run(argc, argv, MODE_INPAINT, env); }

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
