/*
 * tools/cmd_train.c -- `sd train`: train the tiny latent diffusion model in C,
 * one stage at a time, as tools/train/train_tiny.py does in PyTorch (with one
 * worker), on the procedural shapes dataset (ldm/train/train.h).
 *
 *   sd train --stage vae  --out build/tiny-c/vae                    # stage 1
 *   sd train --stage unet --init build/tiny-c/vae --out build/tiny-c/model
 *   sd txt2img --ckpt build/tiny-c/model --prompt "a red circle on the left"
 *
 * Defaults are train_tiny.py's recipe for the stage. The output folder gets
 * the exported model (a diffusers folder: `--stage unet` writes the whole
 * pipeline, `--stage vae` the vae/ that `--stage unet --init` reads),
 * losses-<stage>.tsv, loss_curves.png, and train-state/, the checkpoint
 * (every --save-every steps and at the end) that --resume continues bit for
 * bit (--stop-at N stops a run there on purpose). An --out that already holds a model or a training state is never
 * replaced silently: --resume continues it, --overwrite starts over there.
 * Progress (step, losses, s/step, ETA) goes to stderr.
 * Exit codes: 0 done, 1 the run failed, 2 the command line is wrong.
 *
 * Data parallel over processes (ldm/train/dist.h; a build with `make MPI=1`):
 *   mpirun -np 4 build/mpi/sd train --stage unet --init ... --out ... --batch 32
 * runs 4 processes, each on 8 of every 32 images, with the gradients averaged
 * over them: the same run as one process, to summation order. Process 0
 * writes every output and prints the progress.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/fs.h"
#include "ldm/train/dist.h"
#include "ldm/train/train.h"
#include "tools/cmd.h"

enum { F_STR, F_BOOL };
typedef struct flag {
    const char *name;
    int kind;
    const char *help;
} flag;

static const flag FLAGS[] = {
    {"--stage", F_STR, "vae (stage 1, the autoencoder) | unet (stage 2, UNet + text encoder)"},
    {"--init", F_STR, "unet: the folder with the stage-1 vae/ (required); vae: starting weights"},
    {"--out", F_STR, "output folder: the model, losses, loss_curves.png, train-state/"},
    {"--steps", F_STR, "optimizer steps (vae 1200, unet 6000)"},
    {"--seed", F_STR, "seed of the data, the weights and every draw (0)"},
    {"--batch", F_STR, "images per step (32)"},
    {"--lr", F_STR, "learning rate after the warm-up (1e-3)"},
    {"--n-images", F_STR, "dataset size: scenes 0..N-1 of the shapes dataset (10000)"},
    {"--log", F_STR, "write the losses of every step to this TSV file as they come"},
    {"--resume", F_BOOL, "continue the run in --out (its train-state/) with the same flags"},
    {"--overwrite", F_BOOL, "start over in an --out that holds a model or a run (alias --force)"},
    {"--save-every", F_STR, "checkpoint every N steps (100; 0: only at the end)"},
    {"--stop-at", F_STR, "stop at step N with a checkpoint (no export); --resume continues"},
    {"--vae-crop", F_STR, "vae: crop side of the first steps (32)"},
    {"--vae-full-steps", F_STR, "vae: the last N steps on whole 64x64 images, batch/4 (900)"},
    {"--kl-weight", F_STR, "vae: weight of the KL term (1e-6)"},
    {"--obj-weight", F_STR, "vae: loss weight of shape pixels against background (5)"},
    {"--min-snr", F_STR, "unet: gamma of the min-SNR weighting; 0 = plain LDM loss (5)"},
    {"--cond-drop", F_STR, "unet: fraction of empty captions, for guidance (0.1)"},
    {"--ema", F_STR, "unet: EMA decay of the exported weights (0.998)"},
    {"--vocab", F_STR, "unet: CLIP BPE vocabulary (default $LDM_VOCAB or build/vocab)"},
    {"--backend", F_STR, "ref | cpu (default $LDM_BACKEND or cpu; training needs the host backends)"},
    {"--quiet", F_BOOL, "no progress on stderr"},
    {"--help", F_BOOL, "this text"},
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))

static void usage(FILE *f) {
    fprintf(f, "usage: sd train --stage vae|unet [--init DIR] --out DIR [--steps N] [--seed S]\n"
               "                [--log losses.tsv] [--resume | --overwrite] [--batch B] [--lr LR] ...\n\n"
               "Train the tiny text-to-image model (tools/train/train_tiny.py's recipe) in C:\n"
               "  sd train --stage vae --out build/tiny-c/vae\n"
               "  sd train --stage unet --init build/tiny-c/vae --out build/tiny-c/model\n\n");
    for (int i = 0; i < N_FLAGS; i++) fprintf(f, "  %-18s %s\n", FLAGS[i].name, FLAGS[i].help);
}

static int find(const char *name) {
    for (int k = 0; k < N_FLAGS; k++)
        if (!strcmp(FLAGS[k].name, name)) return k;
    if (!strcmp(name, "--force")) return find("--overwrite");
    if (!strcmp(name, "-h")) return find("--help");
    return -1;
}

// argv -> val[N_FLAGS] (NULL: absent; "1" for booleans). 0, or 2 after printing why.
static int parse_flags(const char **val, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char name[64];
        const char *a = argv[i], *eq = strchr(a, '='), *value = eq ? eq + 1 : NULL;
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        snprintf(name, sizeof name, "%.*s", (int)(n < sizeof name ? n : sizeof name - 1), a);
        int k = find(name);
        if (k < 0) {
            if (a[0] != '-') return sd_fail("train: unexpected argument '%s'", a), 2;
            return sd_fail("train: unknown flag '%s' (sd train --help)", name), 2;
        }
        if (FLAGS[k].kind == F_BOOL) {
            if (value) return sd_fail("train: %s takes no value", FLAGS[k].name), 2;
            val[k] = "1";
            continue;
        }
        if (!value) {
            if (i + 1 >= argc) return sd_fail("train: %s needs a value", FLAGS[k].name), 2;
            value = argv[++i];
        }
        val[k] = value;
    }
    return 0;
}

static const char *get(const char **val, const char *name) { return val[find(name)]; }

// An integer / number flag into *out when given. 0, or 2 after printing why.
static int get_int(const char **val, const char *name, int64_t *out) {
    const char *s = get(val, name);
    if (!s) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno) return sd_fail("train: %s '%s' is not an integer", name, s), 2;
    *out = v;
    return 0;
}

static int get_num(const char **val, const char *name, double *out) {
    const char *s = get(val, name);
    if (!s) return 0;
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || v != v) return sd_fail("train: %s '%s' is not a number", name, s), 2;
    *out = v;
    return 0;
}

// 1 when dir already holds what a run writes (a model or a training state).
static int holds_run(const char *dir) {
    static const char *const marks[] = {"train-state", "model_index.json", "vae", "unet"};
    char p[4096 + 32];
    for (size_t i = 0; i < sizeof marks / sizeof *marks; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, marks[i]);
        struct stat st;
        if (stat(p, &st) == 0) return 1;
    }
    return 0;
}

static int run(const ldm_train_options *opts, ldm_train_stage stage, int overwrite);

int cmd_train(int argc, char **argv, const sd_env *env_in) {
    sd_env env = *env_in;
    const char *val[N_FLAGS] = {0};
    if (parse_flags(val, argc, argv)) return SD_EXIT_USAGE;
    if (get(val, "--help")) { usage(stdout); return SD_EXIT_OK; }

    // ---- flags (usage errors, exit 2)
    ldm_train_stage stage;
    if (!get(val, "--stage"))
        return sd_fail("train: --stage vae|unet is required (sd train --help)"), SD_EXIT_USAGE;
    if (ldm_train_stage_parse(&stage, get(val, "--stage")))
        return sd_fail("train: %s", ldm_last_error()), SD_EXIT_USAGE;
    ldm_train_options o;
    ldm_train_defaults(&o, stage);
    int64_t batch = o.batch;
    int64_t crop = o.vae_crop;
    if (get_int(val, "--steps", &o.steps) || get_int(val, "--seed", &o.seed) ||
        get_int(val, "--batch", &batch) || get_int(val, "--n-images", &o.n_images) ||
        get_int(val, "--save-every", &o.save_every) || get_int(val, "--vae-crop", &crop) ||
        get_int(val, "--stop-at", &o.stop_at) ||
        get_int(val, "--vae-full-steps", &o.vae_full_steps) || get_num(val, "--lr", &o.lr) ||
        get_num(val, "--kl-weight", &o.kl_weight) || get_num(val, "--obj-weight", &o.obj_weight) ||
        get_num(val, "--min-snr", &o.min_snr) || get_num(val, "--cond-drop", &o.cond_drop) ||
        get_num(val, "--ema", &o.ema))
        return SD_EXIT_USAGE;
    o.batch = batch < 1 || batch > 4096 ? 0 : (int)batch;
    o.vae_crop = crop < 0 || crop > 4096 ? 0 : (int)crop;
    o.init = get(val, "--init");
    o.out = get(val, "--out");
    o.log = get(val, "--log");
    o.resume = get(val, "--resume") != NULL;
    int overwrite = get(val, "--overwrite") != NULL;
    o.vocab = get(val, "--vocab") ? get(val, "--vocab") : env.vocab;
    o.progress = get(val, "--quiet") ? NULL : stderr;
    if (get(val, "--backend")) {
        int i = 0;
        char *bargv[2] = {"--backend", (char *)get(val, "--backend")};
        if (sd_common_flag(2, bargv, &i, &env) < 0) return SD_EXIT_USAGE;
    }
    if (o.resume && overwrite)
        return sd_fail("train: --resume continues the run in --out, --overwrite starts it over: "
                       "give one"), SD_EXIT_USAGE;
    if (ldm_train_check(&o)) return sd_fail("train: %s", ldm_last_error()), SD_EXIT_USAGE;
    o.ops = sd_backend(&env);
    if (!o.ops) return sd_fail("train: %s", ldm_last_error()), SD_EXIT_USAGE;
    if (!ldm_backend_can_train(o.ops))
        return sd_fail("train: %s (use --backend cpu or ref)", ldm_last_error()), SD_EXIT_USAGE;

    // ---- the process group (one process, or those mpirun started), then the run
    if (ldm_dist_init(NULL, NULL)) return sd_fail("train: %s", ldm_last_error());
    if (ldm_dist_rank() != 0) o.progress = NULL;   // process 0 reports
    int rc = run(&o, stage, overwrite);
    // a process that failed stops the others, which would wait for it forever
    if (rc != SD_EXIT_OK && ldm_dist_world() > 1) ldm_dist_abort(rc);
    ldm_dist_finalize();
    return rc;
}

// The outputs, before any work (runtime errors, exit 1; process 0 writes),
// then the run.
static int run(const ldm_train_options *opts, ldm_train_stage stage, int overwrite) {
    ldm_train_options o = *opts;
    int writer = ldm_dist_rank() == 0;
    struct stat st;
    if (stat(o.out, &st) == 0 && !S_ISDIR(st.st_mode))
        return sd_fail("train: --out %s is a file; give a folder", o.out);
    if (!o.resume && !overwrite && holds_run(o.out))
        return sd_fail("train: %s already holds a model or a training run; pass --resume to "
                       "continue it or --overwrite to start over", o.out);
    if (writer && o.log && !o.resume && sd_check_output(o.log, overwrite, NULL, 0)) return SD_EXIT_FAIL;
    if (writer && overwrite) {   // start over: the old state must not be resumed by accident later
        char p[4096 + 32];
        snprintf(p, sizeof p, "%s/train-state/state.json", o.out);
        if (ldm_is_file(p) && remove(p) != 0)
            return sd_fail("train: cannot remove %s: %s", p, strerror(errno));
    }
    if (ldm_train_run(&o)) return sd_fail("train: %s", ldm_last_error());
    if (o.stop_at && o.stop_at < o.steps) return SD_EXIT_OK;   // stopped: nothing exported yet
    if (o.progress)
        fprintf(stderr, "train: wrote %s%s\n", o.out,
                stage == LDM_TRAIN_UNET ? " (sd txt2img --ckpt it)" : " (sd train --stage unet --init it)");
    return SD_EXIT_OK;
}
