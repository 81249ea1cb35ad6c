/*
 * tools/sd.c -- `sd`, the ldm.c command line: a table of subcommands.
 *   sd --help               list them
 *   sd SUBCOMMAND --help    the flags of one
 * Each subcommand is a function in tools/cmd_<name>.c (see cmd.h).
 *
 * The environment is read here, once (sd_env_read), and handed to the
 * subcommand as defaults its flags override; no other code calls getenv.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
#include "ldm/backend/ops_cuda.h"
#include "ldm/io/dump.h"
#include "ldm/pipeline.h"
#include "tokenizer/bpe.h"
#include "tools/cmd.h"

static const sd_command commands[] = {
    {"info", cmd_info, "list the tensors and metadata of a checkpoint file; extract one as .npy"},
    {"encode-prompt", cmd_encode_prompt, "prompt -> CLIP text encoder context [1,77,D] as .npy"},
    {"check-model", cmd_check_model, "detect a model and load all its weights; times and memory"},
    {"vae-decode", cmd_vae_decode, "decode a latent .npy into a PNG with the VAE decoder"},
    {"vae-encode", cmd_vae_encode, "encode a PNG into a latent .npy with the VAE encoder"},
    {"unet", cmd_unet, "run the UNet once on .npy inputs; print its block table; time it"},
    {"compare", cmd_compare, "compare two dump folders tensor by tensor; mark the first divergence"},
    {"tokenize", cmd_tokenize, "prompts on stdin -> CLIP BPE ids (--pieces, --context 77 --pad end|zero)"},
    {"txt2img", cmd_txt2img, "text -> images (CompVis scripts/txt2img.py flags and outputs)"},
    {"img2img", cmd_img2img, "image + text -> images (CompVis scripts/img2img.py, --strength)"},
    {"inpaint", cmd_inpaint, "image + mask + text -> images (repaint the mask's white part)"},
    {"png-info", cmd_png_info, "print the generation parameters stored in a PNG"},
    {"upscale", cmd_upscale, "low-res image + text -> a 4x larger image (the SD x4 upscaler)"},
    {"train", cmd_train, "train the tiny model in C: --stage vae, then --stage unet (train_tiny.py)"},
};
static const int n_commands = (int)(sizeof commands / sizeof commands[0]);

int sd_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sd: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 1;
}

int sd_common_flag(int argc, char **argv, int *i, sd_env *env) {
    if (strcmp(argv[*i], "--backend") == 0) {
        if (*i + 1 >= argc) return sd_fail("--backend needs a value (ref|cpu|cuda|cuda-emu)"), -1;
        if (!ldm_backend(argv[*i + 1])) return sd_fail("%s", ldm_last_error()), -1;
        env->backend = argv[*i + 1];
        *i += 1;
        return 1;
    }
    return 0;
}

const struct ldm_ops *sd_backend(const sd_env *env) {
    return env->backend ? ldm_backend(env->backend) : ldm_backend_default();
}

int sd_is_overwrite_flag(const char *a) {
    return !strcmp(a, "--overwrite") || !strcmp(a, "--force");
}

int sd_check_output(const char *path, int overwrite, const char *const *inputs, int n_inputs) {
    if (!path || !*path) return sd_fail("the output file name is empty");
    struct stat st, si;
    if (stat(path, &st) != 0) return 0;
    if (S_ISDIR(st.st_mode)) return sd_fail("%s: is a folder; give a file name for the output", path);
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i] && stat(inputs[i], &si) == 0 && si.st_dev == st.st_dev && si.st_ino == st.st_ino)
            return sd_fail("%s: is also the input; give another output name", path);
    if (!overwrite)
        return sd_fail("%s: already exists; pass --overwrite (or --force) to replace it", path);
    return 0;
}

// The folder of the running binary (/proc/self/exe), or "" when unknown.
static const char *exe_dir(void) {
    static char dir[4096];
    if (dir[0]) return dir;
    ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
    if (n <= 0) return dir[0] = '\0', dir;
    dir[n] = '\0';
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    return dir;
}

// rel (a repository path such as tools/tiny-model) as seen from the cwd,
// then beside the binary: BIN/../share/ldm.c/NAME (make install), BIN/../rel
// (build/sd in a checkout). NULL when none exists.
static const char *find_data(const char *rel, const char *name) {
    static char buf[2][4096];
    static int which;
    if (access(rel, F_OK) == 0) return rel;
    const char *d = exe_dir();
    if (!*d) return NULL;
    char *b = buf[which ^= 1];
    char cand[2][4096];
    snprintf(cand[0], sizeof cand[0], "%s/../share/ldm.c/%s", d, name);
    snprintf(cand[1], sizeof cand[1], "%s/../%s", d, rel);
    for (int i = 0; i < 2; i++)
        if (access(cand[i], F_OK) == 0) return realpath(cand[i], b) ? b : strcpy(b, cand[i]);
    return NULL;
}

const char *sd_tiny_model(const sd_env *env) {
    if (env->tiny_model) return env->tiny_model;
    const char *p = find_data(LDM_TINY_MODEL_DEFAULT, "tiny-model");
    return p ? p : LDM_TINY_MODEL_DEFAULT;
}

const char *sd_default_vocab(void) { return find_data(LDM_VOCAB_DEFAULT, "vocab/bpe_simple_vocab_16e6.txt.gz"); }

// Every environment variable `sd` reads, here and nowhere else.
static sd_env sd_env_read(void) {
    sd_env env = {0};
    const char *e;
    if ((e = getenv("LDM_BACKEND")) && *e) env.backend = e;
    if ((e = getenv("LDM_DUMP")) && *e) env.dump_dir = e;
    if ((e = getenv("LDM_VOCAB")) && *e) env.vocab = e;
    if ((e = getenv("LDM_TINY_MODEL")) && *e) env.tiny_model = e;
    if ((e = getenv("LDM_VAE_BUDGET_MB")) && atoll(e) > 0) env.vae_budget_mb = atoll(e);
    if ((e = getenv("LDM_CUDA_SYNC"))) env.cuda_sync = *e == '1';
    if ((e = getenv("LDM_CUDA_WORKSPACE_MB")) && atol(e) > 0) env.cuda_workspace_mb = atol(e);
    if ((e = getenv("LDM_CUDA_EMU_STRICT"))) env.cuda_emu_strict = *e == '1';
    return env;
}

static void usage(FILE *f) {
    fprintf(f, "usage: sd SUBCOMMAND [flags]   (sd SUBCOMMAND --help for its flags)\n\n");
    fprintf(f, "ldm.c: Stable Diffusion (latent diffusion) in plain C.\n\nsubcommands:\n");
    for (int i = 0; i < n_commands; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nenvironment (defaults; flags override):\n"
               "  LDM_BACKEND=ref|cpu|cuda|cuda-emu  backend (default cpu; --backend)\n"
               "  LDM_DUMP=DIR           write every named intermediate as DIR/<name>.npy (--dump)\n"
               "  LDM_VOCAB=FILE         CLIP BPE vocabulary when the model has no tokenizer/ (--vocab)\n"
               "  LDM_TINY_MODEL=DIR     the model txt2img/img2img use without --ckpt\n"
               "                         (default " LDM_TINY_MODEL_DEFAULT ")\n"
               "  LDM_VAE_BUDGET_MB=N    VAE memory budget for automatic tiling (default 4096)\n"
               "  LDM_CUDA_SYNC=1, LDM_CUDA_WORKSPACE_MB=N, LDM_CUDA_EMU_STRICT=1\n"
               "                         CUDA backend debugging (docs/08-cuda.md)\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    sd_env env = sd_env_read();
    if (!env.vocab) env.vocab = sd_default_vocab();   // found beside an installed binary
    ldm_dump_set_dir(env.dump_dir);   // subcommands with --dump DIR set it again
    ldm_cuda_set_options(&(ldm_cuda_options){env.cuda_sync, env.cuda_workspace_mb, env.cuda_emu_strict});
    for (int i = 0; i < n_commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1, &env);
    fprintf(stderr, "sd: unknown subcommand '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
