/*
 * tools/cmd.h -- the subcommands of the `sd` CLI. Each lives in its own
 * tools/cmd_<name>.c and is listed once in the table in tools/sd.c.
 * A subcommand gets argv from its own name on (argv[0] = "info") and the
 * environment main read, returns the process exit code, and prints its own
 * --help.
 */
#ifndef LDM_TOOLS_CMD_H
#define LDM_TOOLS_CMD_H

#include <stdint.h>

struct ldm_ops;

// The environment, read once in main (tools/sd.c sd_env_read) and handed to
// every subcommand as defaults; a subcommand's flags override them in its own
// copy. Nothing else in the program calls getenv. NULL / 0: not set.
typedef struct sd_env {
    const char *backend;        // $LDM_BACKEND: ref | cpu | cuda | cuda-emu (NULL: cpu); --backend
    const char *dump_dir;       // $LDM_DUMP: write every named intermediate under DIR; --dump
    const char *vocab;          // $LDM_VOCAB: CLIP BPE vocabulary when the model brings none; --vocab
    const char *tiny_model;     // $LDM_TINY_MODEL: txt2img/img2img without --ckpt
                                // (NULL: LDM_TINY_MODEL_DEFAULT)
    int64_t vae_budget_mb;      // $LDM_VAE_BUDGET_MB: VAE automatic tiling budget (0: 4096);
                                // --vae-budget-mb
    // CUDA backend debugging, in the order of ldm_cuda_options (ldm/backend/ops_cuda.h)
    int cuda_sync;              // $LDM_CUDA_SYNC=1: synchronise after every kernel launch
    int64_t cuda_workspace_mb;  // $LDM_CUDA_WORKSPACE_MB: workspace limit (0: 256)
    int cuda_emu_strict;        // $LDM_CUDA_EMU_STRICT=1: cuda-emu never reuses allocations
} sd_env;

typedef struct sd_command {
    const char *name;
    int (*run)(int argc, char **argv, const sd_env *env);
    const char *summary; // one line for `sd --help`
} sd_command;

int cmd_info(int argc, char **argv, const sd_env *env);
int cmd_compare(int argc, char **argv, const sd_env *env);        // tools/cmd_compare.c
// tools/info_model.c: the detected model (family, prediction, components) of
// a checkpoint or diffusers folder; required=0 prints why it is not one.
int sd_info_model(const char *path, int required);
int cmd_encode_prompt(int argc, char **argv, const sd_env *env);  // tools/cmd_encode_prompt.c
int cmd_check_model(int argc, char **argv, const sd_env *env);    // tools/cmd_check_model.c
int cmd_vae_decode(int argc, char **argv, const sd_env *env);     // tools/cmd_vae.c
int cmd_vae_encode(int argc, char **argv, const sd_env *env);
int cmd_unet(int argc, char **argv, const sd_env *env);           // tools/cmd_unet.c
int cmd_tokenize(int argc, char **argv, const sd_env *env);       // tools/cmd_tokenize.c
int cmd_txt2img(int argc, char **argv, const sd_env *env);        // tools/cmd_txt2img.c
int cmd_img2img(int argc, char **argv, const sd_env *env);
int cmd_inpaint(int argc, char **argv, const sd_env *env);
int cmd_png_info(int argc, char **argv, const sd_env *env);
int cmd_upscale(int argc, char **argv, const sd_env *env);        // tools/cmd_upscale.c
int cmd_train(int argc, char **argv, const sd_env *env);          // tools/cmd_train.c

// Shared by subcommands: print "sd: <message>" to stderr, return 1 (exit code).
int sd_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Common flag handled by every subcommand: --backend NAME (checked) sets
// env->backend. Returns 1 when argv[*i] was consumed (advances *i), 0 if not
// this flag, -1 on error.
int sd_common_flag(int argc, char **argv, int *i, sd_env *env);
// The backend env names (NULL: cpu). NULL + ldm_error when unknown or not built.
const struct ldm_ops *sd_backend(const sd_env *env);
// Exit codes, one convention for every subcommand: 0 done, 1 the run failed
// (a file, the model, memory), 2 the command line is wrong (usage error).
enum { SD_EXIT_OK = 0, SD_EXIT_FAIL = 1, SD_EXIT_USAGE = 2 };
// The one flag that lets a subcommand replace an existing output file:
// --overwrite, or its synonym --force. 1 when a is it.
int sd_is_overwrite_flag(const char *a);
// An output path a subcommand is about to write: refused (1, printed) when it
// is empty, a folder, one of the inputs, or exists and overwrite == 0.
int sd_check_output(const char *path, int overwrite, const char *const *inputs, int n_inputs);
// The model when --ckpt is absent: $LDM_TINY_MODEL, else the tiny model found
// beside the binary (installed: PREFIX/share/ldm.c/tiny-model) or in the
// repository (tools/tiny-model). Never NULL.
const char *sd_tiny_model(const sd_env *env);
// The CLIP vocabulary default when neither --vocab nor $LDM_VOCAB is given:
// found beside the binary, as the tiny model; NULL: the library's default.
const char *sd_default_vocab(void);

#endif
