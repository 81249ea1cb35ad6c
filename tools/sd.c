/*
 * tools/sd.c -- `sd`, the ldm.c command line: a table of subcommands.
 *   sd --help               list them
 *   sd SUBCOMMAND --help    the flags of one
 * Each subcommand is a function in tools/cmd_<name>.c (see cmd.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
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
    {"png-info", cmd_png_info, "print the generation parameters stored in a PNG"},
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

int sd_common_flag(int argc, char **argv, int *i) {
    if (strcmp(argv[*i], "--backend") == 0) {
        if (*i + 1 >= argc) return sd_fail("--backend needs a value (ref|cpu|cuda)"), -1;
        if (!ldm_backend(argv[*i + 1])) return sd_fail("%s", ldm_last_error()), -1;
        setenv("LDM_BACKEND", argv[*i + 1], 1);
        *i += 1;
        return 1;
    }
    return 0;
}

static void usage(FILE *f) {
    fprintf(f, "usage: sd SUBCOMMAND [flags]   (sd SUBCOMMAND --help for its flags)\n\n");
    fprintf(f, "ldm.c: Stable Diffusion (latent diffusion) in plain C.\n\nsubcommands:\n");
    for (int i = 0; i < n_commands; i++)
        fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nenvironment: LDM_BACKEND=ref|cpu|cuda (default cpu), LDM_VOCAB=FILE (CLIP BPE),\n"
               "             LDM_TINY_MODEL=DIR (the model txt2img/img2img use without --ckpt;\n"
               "             default tools/tiny-model), LDM_DUMP=DIR (as --dump)\n");
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (int i = 0; i < n_commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "sd: unknown subcommand '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
