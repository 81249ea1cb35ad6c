/*
 * tools/cmd.h -- the subcommands of the `sd` CLI. Each lives in its own
 * tools/cmd_<name>.c and is listed once in the table in tools/sd.c.
 * A subcommand gets argv from its own name on (argv[0] = "info"), returns
 * the process exit code, and prints its own --help.
 */
#ifndef LDM_TOOLS_CMD_H
#define LDM_TOOLS_CMD_H

typedef struct sd_command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary; // one line for `sd --help`
} sd_command;

int cmd_info(int argc, char **argv);
int cmd_compare(int argc, char **argv);      // tools/cmd_compare.c
// tools/info_model.c: the detected model (family, prediction, components) of
// a checkpoint or diffusers folder; required=0 prints why it is not one.
int sd_info_model(const char *path, int required);
int cmd_encode_prompt(int argc, char **argv);   // tools/cmd_encode_prompt.c
int cmd_check_model(int argc, char **argv);     // tools/cmd_check_model.c
int cmd_vae_decode(int argc, char **argv);   // tools/cmd_vae.c
int cmd_vae_encode(int argc, char **argv);
int cmd_unet(int argc, char **argv);         // tools/cmd_unet.c
int cmd_tokenize(int argc, char **argv);     // tools/cmd_tokenize.c
int cmd_txt2img(int argc, char **argv);      // tools/cmd_txt2img.c
int cmd_img2img(int argc, char **argv);
int cmd_png_info(int argc, char **argv);

// Shared by subcommands: print "sd: <message>" to stderr, return 1 (exit code).
int sd_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// Common flag handled by every subcommand: --backend NAME (else $LDM_BACKEND, else cpu).
// Returns 1 when argv[*i] was consumed (advances *i), 0 if not this flag, -1 on error.
int sd_common_flag(int argc, char **argv, int *i);

#endif
