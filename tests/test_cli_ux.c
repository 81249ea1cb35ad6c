/*
 * tests/test_cli_ux.c -- what a new user of `sd` meets, run as a program
 * ($LDM_SD, else $LDM_BUILD/sd, else build/sd) on the tiny model:
 *   limits      a grid too tall for one PNG wraps into more columns; limits
 *               known before sampling fail before the model runs; a failed
 *               run leaves no empty output folder
 *   overwrite   no subcommand replaces an existing file without --overwrite
 *               (or --force); an output that is also the input is refused
 *   bad input   sd compare on two empty folders, --outdir "": clean errors
 *   progress    "step k/n" counts the steps that run, ETA never negative; on a
 *               terminal (a pseudo-terminal here) one bar redrawn in place that
 *               stays on screen, full, when the stage ends
 *   batches     --from-file batches n_samples lines (CompVis), --per-line,
 *               batch k seeded seed + k, --shard I/N = one run byte for byte,
 *               --from-png reruns one image alone with the same bytes (txt2img
 *               and img2img), warns when the model is not the one it names
 *   small       -h, messages said once, one exit code convention, Model: name,
 *               --dump per batch, CompVis flags, an installed sd finds its data
 *   threads     the same bytes on 1, 2 and 3 threads
 *   schedules   --schedule takes every sigma schedule (listed by --help), a
 *               conflicting one is a usage error; lcm / tcd run; NFE in the
 *               progress and the PNG parameters, which still rerun (--from-png)
 *   (the long list of bad invocations is tests/bad_inputs.sh)
 */
#define _XOPEN_SOURCE 700   // posix_openpt, grantpt, unlockpt, ptsname
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/image.h"
#include "samplers/sampler.h"
#include "tests/test.h"

static char sd[512], tmp[256], out_path[600], err_path[600];

// `sd ARGS` (run from the repository root) with stderr into *err; the exit
// status, or 128 + signal.
static int run(const char *args, char **err) {
    return test_run_cli(sd, args, out_path, err_path, err);
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

// A PNG's width and height from its IHDR (no decoding).
static int png_size(const char *path, int *w, int *h) {
    unsigned char b[24];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(b, 1, sizeof b, f) : 0;
    if (f) fclose(f);
    if (n != 24) return -1;
    *w = b[16] << 24 | b[17] << 16 | b[18] << 8 | b[19];
    *h = b[20] << 24 | b[21] << 16 | b[22] << 8 | b[23];
    return 0;
}

static void copy_file(const char *from, const char *to) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    if (system(cmd) != 0) printf("  (cp %s failed)\n", from);
}

// ---------------------------------------------------------------------------

static void test_limits(void) {
    printf("-- limits before compute\n");
    char args[2048], dir[600], p[700], *err;
    // 960 images of 16x16 in one column: 17282 px tall, more than a PNG may be;
    // the grid wraps into two columns instead of failing after sampling
    snprintf(dir, sizeof dir, "%s/tall", tmp);
    snprintf(args, sizeof args, "txt2img --prompt 'a red circle' --n_samples 64 --n_iter 15 "
             "--n_rows 1 --H 16 --W 16 --ddim_steps 1 --skip_save --outdir %s", dir);
    int rc = run(args, &err), w = 0, h = 0;
    snprintf(p, sizeof p, "%s/grid-0000.png", dir);
    test_check(rc == 0 && png_size(p, &w, &h) == 0 && h <= LDM_IMAGE_MAX_SIDE && w == 2 * 18 + 2,
               "a grid too tall for one PNG wraps into more columns", "exit %d, %dx%d: %.300s", rc,
               w, h, err);
    // too large for a PNG: refused before the model loads (usage error)
    snprintf(dir, sizeof dir, "%s/huge", tmp);
    snprintf(args, sizeof args, "txt2img --H 16392 --W 64 --outdir %s", dir);
    rc = run(args, &err);
    test_check(rc == 2 && strstr(err, "at most 16384") && !strstr(err, "load model") && !exists(dir),
               "--H beyond a PNG side: refused before loading, no folder", "exit %d: %.300s", rc, err);
    // a run that fails at the model leaves no output folder behind
    snprintf(dir, sizeof dir, "%s/failed/deeper", tmp);
    snprintf(args, sizeof args, "txt2img --ckpt /nonexistent.safetensors --outdir %s", dir);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/failed", tmp);
    test_check(rc == 1 && !exists(p), "a failed run leaves no empty output folder", "exit %d, %s %s",
               rc, p, exists(p) ? "exists" : "absent");
    // --outdir "": a clean error (it read before the string)
    rc = run("txt2img --outdir '' --ddim_steps 1 --n_iter 1 --n_samples 1", &err);
    test_check(rc != 0 && rc < 128 && strstr(err, "empty"), "--outdir \"\": clean error",
               "exit %d: %.300s", rc, err);
}

static void test_overwrite(void) {
    printf("-- no silent overwrite\n");
    char args[2048], png[600], npy[600], txt[600], *err;
    snprintf(png, sizeof png, "%s/x.png", tmp);
    snprintf(npy, sizeof npy, "%s/x.npy", tmp);
    snprintf(txt, sizeof txt, "%s/existing.txt", tmp);
    copy_file("tests/fixtures/pipeline/init.png", png);
    long png_bytes = file_size(png);
    // vae-encode x.png x.png: the output is the input
    snprintf(args, sizeof args, "vae-encode --ckpt tools/tiny-model %s %s", png, png);
    int rc = run(args, &err);
    test_check(rc == 1 && file_size(png) == png_bytes, "vae-encode IN.png IN.png refused, PNG kept",
               "exit %d, %ld bytes: %.300s", rc, file_size(png), err);
    // vae-encode without --ckpt: the tiny model; then again: refused; --force: replaced
    snprintf(args, sizeof args, "vae-encode %s %s", png, npy);
    rc = run(args, &err);
    test_check(rc == 0 && exists(npy), "vae-encode without --ckpt uses the tiny model",
               "exit %d: %.300s", rc, err);
    rc = run(args, &err);
    test_check(rc == 1 && strstr(err, "--overwrite"), "vae-encode: existing .npy kept",
               "exit %d: %.300s", rc, err);
    snprintf(args, sizeof args, "vae-encode --force %s %s", png, npy);
    rc = run(args, &err);
    test_check(rc == 0, "vae-encode --force replaces it", "exit %d: %.300s", rc, err);
    // vae-decode onto an existing PNG: refused; --overwrite replaces
    snprintf(args, sizeof args, "vae-decode %s %s", npy, png);
    rc = run(args, &err);
    test_check(rc == 1 && file_size(png) == png_bytes, "vae-decode: existing PNG kept",
               "exit %d: %.300s", rc, err);
    // encode-prompt --out existing.txt
    FILE *f = fopen(txt, "w");
    if (f) { fputs("keep me\n", f); fclose(f); }
    snprintf(args, sizeof args, "encode-prompt --out %s 'a red circle'", txt);
    rc = run(args, &err);
    test_check(rc == 1 && file_size(txt) == 8, "encode-prompt --out EXISTING refused, file kept",
               "exit %d, %ld bytes: %.300s", rc, file_size(txt), err);
    snprintf(args, sizeof args, "encode-prompt --overwrite --out %s 'a red circle'", txt);
    rc = run(args, &err);
    test_check(rc == 0 && file_size(txt) > 8, "encode-prompt --overwrite replaces it",
               "exit %d: %.300s", rc, err);
}

static void test_progress(void) {
    printf("-- progress counts the steps that run\n");
    char args[2048], *err;
    // CompVis "uniform" spacing with 3 steps runs 4 (999, 666, 333, 0 -> 1, 334, 667 + 1)
    snprintf(args, sizeof args, "txt2img --ddim_steps 3 --progress --n_iter 1 --n_samples 1 "
             "--skip_grid --skip_save --outdir %s/progress", tmp);
    int rc = run(args, &err);
    test_check(rc == 0 && strstr(err, "step 4/4") && !strstr(err, "/3 ") && !strstr(err, "ETA -"),
               "--ddim_steps 3 --progress: step 4/4, no overshoot, no negative ETA",
               "exit %d: %.400s", rc, err);
}

// `sd ARGS` with stderr on a pseudo-terminal, as a user at a terminal sees
// it (isatty(2) is true in sd); stdout to /dev/null. Everything written to the
// terminal into buf (NUL-terminated); the exit status, or -1.
static int run_on_tty(const char *args, char *buf, size_t size) {
    buf[0] = 0;
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) return -1;
    const char *slave_name = ptsname(master);
    pid_t pid = slave_name ? fork() : -1;
    if (pid < 0) { close(master); return -1; }
    if (pid == 0) {
        setsid();
        int slave = open(slave_name, O_RDWR);
        int null = open("/dev/null", O_WRONLY);
        if (slave < 0 || null < 0) _exit(127);
        dup2(null, 1);
        dup2(slave, 2);
        close(master);
        char cmd[4096];
        snprintf(cmd, sizeof cmd, "exec '%s' %s", sd, args);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    size_t n = 0;
    for (;;) {   // until the child closes the terminal (EIO on Linux)
        ssize_t r = read(master, buf + n, size - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        if (n + 1 >= size) n = 0;   // keep the tail only: the end is what matters
    }
    buf[n] = 0;
    close(master);
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_progress_tty(void) {
    printf("-- progress on a terminal: one bar, redrawn, left on screen\n");
    char args[1024];
    static char out[65536];
    snprintf(args, sizeof args, "txt2img --ddim_steps 3 --n_iter 1 --n_samples 1 --skip_grid "
             "--skip_save --outdir %s/progress_tty", tmp);
    int rc = run_on_tty(args, out, sizeof out);
    // the terminal turns "\n" into "\r\n"; the bar is redrawn with "\r ESC[K"
    const char *full = strstr(out, "[####################] step 4/4");
    int redraws = 0;
    for (const char *c = out; (c = strstr(c, "\r\033[K")); c++) redraws++;
    const char *after = full ? full + strcspn(full, "\r\n") : NULL;
    test_check(rc == 0 && full && redraws >= 4 && strstr(out, "step 1/4") &&
               !strstr(out, "ETA -"), "bar redrawn in place up to [####################] step 4/4",
               "exit %d, %d redraws: %.600s", rc, redraws, out);
    // "stays visible": the full bar's line ends with a newline, and nothing
    // erases it afterwards (no "\r ESC[K" before that newline)
    test_check(after && (!strncmp(after, "\r\n", 2) || after[0] == '\n'),
               "the finished bar ends its line (stays on screen)", "%.200s",
               after ? after : "(no full bar)");
}

// The "parameters" text of a PNG ("" when none), into buf.
static void png_params(const char *path, char *buf, size_t size) {
    ldm_image im = {0};
    buf[0] = 0;
    if (ldm_png_read(&im, path) != 0) return;
    for (int i = 0; i < im.n_text; i++)
        if (!strcmp(im.text_keys[i], "parameters")) snprintf(buf, size, "%s", im.text_values[i]);
    ldm_image_free(&im);
}

static int same_bytes(const char *a, const char *b) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

static void test_batches(void) {
    printf("-- --from-file batches, seeds, --shard, --from-png\n");
    char args[2048], prompts[600], one[300], p[700], q[300], params[4096], *err;
    snprintf(prompts, sizeof prompts, "%s/prompts.txt", tmp);
    FILE *f = fopen(prompts, "w");
    if (f) { fputs("a red circle\na blue square\na green triangle\n", f); fclose(f); }
    const char *common = "--n_samples 2 --n_iter 2 --ddim_steps 3 --skip_grid";
    // CompVis: 2 consecutive lines per batch -> batches [red, blue], [green] per iteration
    snprintf(one, sizeof one, "%s/one", tmp);
    snprintf(args, sizeof args, "txt2img --from-file %s %s --outdir %s", prompts, common, one);
    int rc = run(args, &err);
    snprintf(p, sizeof p, "%s/samples", one);
    test_check(rc == 0 && count_files(p) == 6, "--from-file: n_samples lines per batch (3 lines x "
               "2 iterations = 6 images)", "exit %d, %d files: %.300s", rc, count_files(p), err);
    snprintf(p, sizeof p, "%s/samples/00001.png", one);
    png_params(p, params, sizeof params);
    test_check(!strncmp(params, "a blue square\n", 14) && strstr(params, "Seed: 42,") &&
               strstr(params, "Batch pos: 1"), "image 1: its own prompt, batch 0's seed 42, pos 1",
               "%s", params);
    snprintf(p, sizeof p, "%s/samples/00005.png", one);
    png_params(p, params, sizeof params);
    test_check(!strncmp(params, "a green triangle\n", 17) && strstr(params, "Seed: 45,") &&
               strstr(params, "Batch size: 1"), "image 5: batch 3 has seed 42 + 3, size 1", "%s", params);
    snprintf(args, sizeof args, "txt2img --from-file %s --n_samples 2 --n_iter 1 --ddim_steps 1 "
             "--skip_save --outdir %s/grid", prompts, tmp);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/grid/grid-0000.png", tmp);
    png_params(p, params, sizeof params);
    test_check(rc == 0 && strstr(params, "a red circle | a blue square | a green triangle\n"),
               "the grid's parameters name every prompt", "%s", params);
    // --per-line: each line its own batch of n_samples
    snprintf(q, sizeof q, "%s/perline", tmp);
    snprintf(args, sizeof args, "txt2img --from-file %s %s --n_iter 1 --per-line --outdir %s",
             prompts, common, q);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/samples", q);
    test_check(rc == 0 && count_files(p) == 6, "--per-line: n_samples images per line",
               "exit %d, %d files", rc, count_files(p));
    // three shards into one folder: exactly the files of the single run
    snprintf(q, sizeof q, "%s/shards", tmp);
    rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++) {
        snprintf(args, sizeof args, "txt2img --from-file %s %s --shard %d/3 --outdir %s", prompts,
                 common, i, q);
        rc = run(args, &err);
    }
    int same = 1;
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s/samples/%05d.png", one, i);
        char r[700];
        snprintf(r, sizeof r, "%s/samples/%05d.png", q, i);
        same &= same_bytes(p, r);
    }
    snprintf(p, sizeof p, "%s/samples", q);
    test_check(rc == 0 && same && count_files(p) == 6, "--shard 0/3, 1/3, 2/3 = the single run, "
               "same names and bytes", "exit %d, same %d, %d files: %.300s", rc, same,
               count_files(p), err);
    // --from-png: an image of the second batch, alone, same bytes
    snprintf(p, sizeof p, "%s/samples/00004.png", one);
    snprintf(q, sizeof q, "%s/rerun", tmp);
    snprintf(args, sizeof args, "txt2img --from-png %s --outdir %s", p, q);
    rc = run(args, &err);
    char r[700];
    snprintf(r, sizeof r, "%s/samples/00000.png", q);
    test_check(rc == 0 && same_bytes(p, r), "--from-png reruns image 4 alone: same bytes",
               "exit %d: %.300s", rc, err);
    // everything that changes pixels is recorded: spacing, eta, --fixed_code
    snprintf(q, sizeof q, "%s/trailing", tmp);
    snprintf(args, sizeof args, "txt2img --schedule trailing --ddim_eta 0.5 --fixed_code "
             "--n_samples 2 --n_iter 2 --ddim_steps 3 --skip_grid --outdir %s", q);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/samples/00003.png", q);
    png_params(p, params, sizeof params);
    test_check(rc == 0 && strstr(params, "Schedule type: trailing") && strstr(params, "Eta: 0.5") &&
               strstr(params, "Seed: 42,"), "spacing, eta and the fixed code's seed recorded", "%s",
               params);
    snprintf(args, sizeof args, "txt2img --from-png %s --outdir %s/rerun2", p, tmp);
    rc = run(args, &err);
    snprintf(r, sizeof r, "%s/rerun2/samples/00000.png", tmp);
    test_check(rc == 0 && same_bytes(p, r), "--from-png (trailing, eta 0.5, fixed code): same bytes",
               "exit %d: %.300s", rc, err);
    // --from-png with another model: a warning naming both hashes, still the run
    char fake[700], text[4096];
    snprintf(fake, sizeof fake, "%s/other_model.png", tmp);
    ldm_image im = {0};
    if (ldm_png_read(&im, p) == 0) {
        char *h = strstr(params, "Model hash: ");
        snprintf(text, sizeof text, "%s", params);
        if (h) memcpy(text + (h - params) + 12, "0badc0de", 8);
        const char *keys[] = {"parameters"}, *vals[] = {text};
        ldm_png_write(fake, &im, 1, keys, vals, 0);
        ldm_image_free(&im);
    }
    snprintf(args, sizeof args, "txt2img --from-png %s --outdir %s/rerun3", fake, tmp);
    rc = run(args, &err);
    snprintf(r, sizeof r, "%s/rerun3/samples/00000.png", tmp);
    test_check(rc == 0 && strstr(err, "warning") && strstr(err, "0badc0de") && exists(r),
               "--from-png made with another model hash: a warning naming it, then the image",
               "exit %d: %.300s", rc, err);
    snprintf(args, sizeof args, "txt2img --from-png %s --outdir %s/rerun4", p, tmp);
    rc = run(args, &err);
    test_check(rc == 0 && !strstr(err, "warning"), "--from-png with its own model: no warning",
               "exit %d: %.300s", rc, err);
    // img2img --from-png: the same init image gives the same bytes; another
    // command's PNG or another init size is a usage error, before any output
    char init[700], i2i[300];
    snprintf(init, sizeof init, "%s/samples/00000.png", one);
    snprintf(i2i, sizeof i2i, "%s/i2i", tmp);
    snprintf(args, sizeof args, "img2img --init-img %s --ddim_steps 4 --strength 0.6 --skip_grid "
             "--outdir %s", init, i2i);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/samples/00001.png", i2i);
    png_params(p, params, sizeof params);
    snprintf(args, sizeof args, "img2img --from-png %s --init-img %s --outdir %s/i2i_rerun", p,
             init, tmp);
    int rc2 = run(args, &err);
    snprintf(r, sizeof r, "%s/i2i_rerun/samples/00000.png", tmp);
    test_check(rc == 0 && rc2 == 0 && strstr(params, "Denoising strength: 0.6") && same_bytes(p, r),
               "img2img --from-png reruns image 1 alone: same bytes", "exit %d/%d: %.300s", rc,
               rc2, err);
    snprintf(args, sizeof args, "txt2img --from-png %s --outdir %s/wrong_cmd", p, tmp);
    rc = run(args, &err);
    snprintf(r, sizeof r, "%s/wrong_cmd", tmp);
    test_check(rc == 2 && strstr(err, "made by img2img") && !exists(r),
               "txt2img --from-png of an img2img image: usage error naming img2img",
               "exit %d: %.300s", rc, err);
    char wide[700];
    snprintf(wide, sizeof wide, "%s/wide.png", tmp);
    static uint8_t grey[128 * 64 * 3];
    memset(grey, 128, sizeof grey);
    ldm_image wide_im = {.width = 128, .height = 64, .rgb = grey};
    ldm_png_write(wide, &wide_im, 0, NULL, NULL, 0);
    snprintf(args, sizeof args, "img2img --from-png %s --init-img %s --outdir %s/wrong_size", p,
             wide, tmp);
    rc = run(args, &err);
    snprintf(r, sizeof r, "%s/wrong_size", tmp);
    test_check(rc == 2 && strstr(err, "64x64") && !exists(r),
               "img2img --from-png with an init image of another size: usage error",
               "exit %d: %.300s", rc, err);
    // a sampler name with its schedule and a different --schedule: an error
    rc = run("txt2img --sampler 'DPM++ 2M Karras' --schedule exponential --outdir /nonexistent/x", &err);
    test_check(rc == 2 && strstr(err, "conflicts"), "\"DPM++ 2M Karras\" --schedule exponential: "
               "usage error", "exit %d: %.300s", rc, err);
}

static void test_small(void) {
    printf("-- small ones\n");
    char args[2048], p[700], params[4096], *err;
    int rc = run("txt2img -h", &err);
    test_check(rc == 0, "txt2img -h: the usage, exit 0", "exit %d", rc);
    rc = run("img2img --init-img tests --outdir /nonexistent/x", &err);
    const char *line = strstr(err, "sd: "), *first = line ? strstr(line, "tests") : NULL;
    test_check(rc == 1 && strstr(err, "is a folder") && first && !strstr(first + 5, "tests"),
               "--init-img FOLDER: 'is a folder', the path once", "exit %d: %.300s", rc, err);
    rc = run("txt2img --rng foo", &err);
    test_check(rc == 2 && !strstr(err, "--rng: --rng"), "--rng foo: said once", "%.300s", err);
    rc = run("compare a b --bogus", &err);
    test_check(rc == 2, "compare --bogus: usage error, exit 2", "exit %d", rc);
    rc = run("txt2img --backend nope", &err);
    char *e2 = strdup(err);
    run("txt2img --help", &err);
    FILE *f = fopen(out_path, "rb");
    char help[16384] = "";
    size_t n = f ? fread(help, 1, sizeof help - 1, f) : 0;
    help[n] = 0;
    if (f) fclose(f);
    test_check(rc == 2 && strstr(e2, "cuda-emu") && strstr(help, "cuda-emu"),
               "the backends the error lists are the ones --help lists", "%.300s", e2);
    free(e2);
    rc = run("info tools/tiny-model", &err);
    f = fopen(out_path, "rb");
    int c = f ? fgetc(f) : EOF;
    if (f) fclose(f);
    test_check(rc == 0 && c != '\n' && c != EOF, "sd info DIR: no leading blank line", "exit %d", rc);
    // Model: the folder's name without its trailing slash
    snprintf(args, sizeof args, "txt2img --ckpt tools/tiny-model/ --H 64 --W 64 --n_iter 1 "
             "--n_samples 1 --ddim_steps 1 --skip_grid --outdir %s/slash", tmp);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/slash/samples/00000.png", tmp);
    png_params(p, params, sizeof params);
    test_check(rc == 0 && strstr(params, "Model: tiny-model,"), "--ckpt DIR/: Model: tiny-model",
               "%.300s", params);
    // --dump with two batches: one folder per batch, none overwritten
    snprintf(args, sizeof args, "txt2img --n_iter 2 --n_samples 1 --ddim_steps 1 --skip_grid "
             "--dump %s/dump --outdir %s/dumped", tmp, tmp);
    rc = run(args, &err);
    char q[700];
    snprintf(p, sizeof p, "%s/dump/batch000/noise.npy", tmp);
    snprintf(q, sizeof q, "%s/dump/batch001/noise.npy", tmp);
    test_check(rc == 0 && exists(p) && exists(q), "--dump with --n_iter 2: batch000/, batch001/",
               "exit %d: %.300s", rc, err);
    // CompVis flags
    snprintf(args, sizeof args, "txt2img --dpm_solver --laion400m --n_iter 1 --n_samples 1 "
             "--ddim_steps 2 --skip_grid --outdir %s/dpm", tmp);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/dpm/samples/00000.png", tmp);
    png_params(p, params, sizeof params);
    test_check(rc == 0 && strstr(params, "Sampler: DPM++ 2M,"), "--dpm_solver = DPM++ 2M; "
               "--laion400m accepted", "exit %d: %.300s", rc, err);
    // installed: the binary finds the tiny model and the vocabulary beside itself
    char cmd[4096], cwd[1024];
    if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
    snprintf(cmd, sizeof cmd, "mkdir -p %s/inst/bin %s/inst/share/ldm.c && cp '%s' %s/inst/bin/sd && "
             "ln -s '%s/tools/tiny-model' %s/inst/share/ldm.c/tiny-model && "
             "ln -s '%s/build/vocab' %s/inst/share/ldm.c/vocab && cd / && "
             "%s/inst/bin/sd txt2img --n_iter 1 --n_samples 1 --ddim_steps 1 --skip_grid "
             "--outdir %s/inst/out >/dev/null 2>&1", tmp, tmp, sd, tmp, cwd, tmp, cwd, tmp, tmp, tmp);
    rc = system(cmd);
    snprintf(p, sizeof p, "%s/inst/out/samples/00000.png", tmp);
    test_check(rc == 0 && exists(p), "installed sd run from / finds its tiny model and vocabulary",
               "status %d", rc);
}

// The cpu backend splits GEMMs into blocks that depend on the matrix, not on
// the thread count: the same bytes on 1, 2 and 3 threads. 256x256 so that the
// VAE decoder's convolutions are large enough to run on several threads.
static void test_threads(void) {
    printf("-- results independent of --threads\n");
    char args[2048], p[700], first[700], *err;
    int rc = 0, same = 1;
    for (int t = 1; t <= 3 && rc == 0; t++) {
        snprintf(args, sizeof args, "txt2img --threads %d --H 256 --W 256 --n_iter 1 --n_samples 1 "
                 "--ddim_steps 2 --skip_grid --outdir %s/threads%d", t, tmp, t);
        rc = run(args, &err);
        snprintf(p, sizeof p, "%s/threads%d/samples/00000.png", tmp, t);
        if (t == 1) snprintf(first, sizeof first, "%s", p);
        else same &= same_bytes(first, p);
    }
    test_check(rc == 0 && same, "--threads 1, 2, 3: the same image bytes", "exit %d, same %d: %.300s",
               rc, same, err);
}

// Weight residency changes memory, not pixels: the tiny model (fp16) as
// stored, widened to fp32, and in low-memory mode give the same bytes; an
// unknown --weights value is a usage error.
static void test_weights(void) {
    printf("-- --weights and --low-memory: the same image bytes\n");
    static const char *modes[] = {"", "--weights f32", "--low-memory", "--weights auto --low-memory"};
    char args[2048], p[700], first[700], *err = "";
    int rc = 0, same = 1;
    for (int m = 0; m < 4 && rc == 0; m++) {
        snprintf(args, sizeof args, "txt2img %s --n_iter 1 --n_samples 1 --ddim_steps 3 --skip_grid "
                 "--outdir %s/weights%d", modes[m], tmp, m);
        rc = run(args, &err);
        snprintf(p, sizeof p, "%s/weights%d/samples/00000.png", tmp, m);
        if (m == 0) snprintf(first, sizeof first, "%s", p);
        else same &= same_bytes(first, p);
    }
    test_check(rc == 0 && same, "as stored, --weights f32, --low-memory: the same bytes",
               "exit %d, same %d: %.300s", rc, same, err);
    snprintf(args, sizeof args, "txt2img --weights f8 --outdir %s/weights_bad", tmp);
    rc = run(args, &err);
    test_check(rc == 2 && strstr(err, "--weights 'f8'"), "--weights f8: usage error naming it",
               "exit %d: %.300s", rc, err);
}

static void test_compare_empty(void) {
    printf("-- sd compare on empty folders\n");
    char args[2048], a[600], b[600], *err;
    snprintf(a, sizeof a, "%s/empty_a", tmp);
    snprintf(b, sizeof b, "%s/empty_b", tmp);
    mkdir(a, 0777);
    mkdir(b, 0777);
    snprintf(args, sizeof args, "compare %s %s", a, b);
    int rc = run(args, &err);
    test_check(rc == 1 && strstr(err, "no .npy files") && !strstr(err, "runtime error"),
               "compare EMPTY EMPTY: one clean error", "exit %d: %.300s", rc, err);
}

static void test_schedules_nfe(void) {
    printf("-- --schedule takes every sigma schedule; NFE reported\n");
    char args[2048], p[700], q[700], params[4096], *err;
    const char *common = "--n_iter 1 --n_samples 1 --ddim_steps 3 --skip_grid";
    int rc = run("txt2img --help", &err);
    char *help = test_read_file(out_path, NULL);
    int listed = help != NULL;
    for (int k = 0; k < LDM_SIGMAS_COUNT && help; k++)
        listed &= strstr(help, ldm_sigma_kind_name((ldm_sigma_kind)k)) != NULL;
    test_check(rc == 0 && listed, "txt2img --help lists every sigma schedule", "exit %d: %.600s",
               rc, help ? help : "(no output)");
    free(help);
    int all = 1;
    for (int k = 0; k < LDM_SIGMAS_COUNT; k++) {
        const char *name = ldm_sigma_kind_name((ldm_sigma_kind)k);
        snprintf(args, sizeof args, "txt2img --sampler euler --schedule %s %s --outdir %s/sched_%s",
                 name, common, tmp, name);
        rc = run(args, &err);
        snprintf(p, sizeof p, "%s/sched_%s/samples/00000.png", tmp, name);
        png_params(p, params, sizeof params);
        char want[96];
        snprintf(want, sizeof want, "Sampler: Euler%s,", ldm_sigma_kind_label((ldm_sigma_kind)k));
        if (rc != 0 || !strstr(params, want)) {
            all = 0;
            printf("  --schedule %s: exit %d, parameters %.200s: %.200s\n", name, rc, params, err);
        }
    }
    test_check(all, "--sampler euler --schedule NAME runs for every sigma schedule and records it",
               "%s", "see above");
    // the recorded label reruns: gits through --from-png, same bytes
    snprintf(p, sizeof p, "%s/sched_gits/samples/00000.png", tmp);
    snprintf(args, sizeof args, "txt2img --from-png %s --outdir %s/sched_rerun", p, tmp);
    rc = run(args, &err);
    snprintf(q, sizeof q, "%s/sched_rerun/samples/00000.png", tmp);
    test_check(rc == 0 && same_bytes(p, q), "--from-png of a GITS image: same bytes",
               "exit %d: %.300s", rc, err);
    // conflicts and mismatches: usage errors naming the problem
    static const struct { const char *args, *says; } bad[] = {
        {"--sampler 'Euler Karras' --schedule gits", "conflicts"},
        {"--sampler euler_smoothstep --schedule sgm_uniform", "conflicts"},
        {"--sampler ddim --schedule karras", "timestep spacing"},
        {"--sampler euler --schedule trailing", "sigma schedule"},
        {"--sampler lcm --schedule trailing", "takes no --schedule"},
        {"--sampler lcm --ddim_steps 51", "at most 50"},
        {"--sampler tcd --ddim_eta 1.5", "gamma"},
        {"--schedule sideways", "expected a sigma schedule"},
        {"--sampler dpmpp_sde --sde-noise tree", "per-step or brownian"},
        {"--sampler dpmpp_2m --schedule smoothstep --ddim_steps 100", "repeats a sigma"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "txt2img %s --outdir %s/never", bad[i].args, tmp);
        rc = run(args, &err);
        char name[160];
        snprintf(name, sizeof name, "%s: usage error (\"%s\")", bad[i].args, bad[i].says);
        test_check(rc == 2 && strstr(err, bad[i].says), name, "exit %d: %.300s", rc, err);
    }
    snprintf(p, sizeof p, "%s/never", tmp);
    test_check(!exists(p), "no output folder after the usage errors", "%s exists", p);
    // NFE: Heun takes two evaluations a step except the last (to sigma 0): 3 steps = 5
    snprintf(args, sizeof args, "txt2img --sampler heun %s --progress --outdir %s/heun", common, tmp);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/heun/samples/00000.png", tmp);
    png_params(p, params, sizeof params);
    test_check(rc == 0 && strstr(params, "Steps: 3, NFE: 5, Sampler: Heun,") &&
                   strstr(err, "step 3/3  NFE 5"),
               "Heun 3 steps: NFE 5 in the parameters and the progress", "exit %d: %.200s | %.300s",
               rc, params, err);
    snprintf(args, sizeof args, "txt2img --from-png %s --outdir %s/heun_rerun", p, tmp);
    rc = run(args, &err);
    snprintf(q, sizeof q, "%s/heun_rerun/samples/00000.png", tmp);
    test_check(rc == 0 && same_bytes(p, q), "--from-png with an NFE field: same bytes",
               "exit %d: %.300s", rc, err);
    // lcm and tcd from the command line; TCD's gamma recorded when not its default
    snprintf(args, sizeof args, "txt2img --sampler lcm --scale 1.5 %s --outdir %s/lcm", common, tmp);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/lcm/samples/00000.png", tmp);
    png_params(p, params, sizeof params);
    test_check(rc == 0 && strstr(params, "Steps: 3, NFE: 3, Sampler: LCM,"),
               "--sampler lcm: 3 steps, 3 evaluations", "exit %d: %.200s | %.300s", rc, params, err);
    snprintf(args, sizeof args, "txt2img --sampler tcd --ddim_eta 0 %s --outdir %s/tcd", common, tmp);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/tcd/samples/00000.png", tmp);
    png_params(p, params, sizeof params);
    int tcd_ok = rc == 0 && strstr(params, "Sampler: TCD,") && strstr(params, "Eta: 0,");
    snprintf(args, sizeof args, "txt2img --from-png %s --outdir %s/tcd_rerun", p, tmp);
    rc = run(args, &err);
    snprintf(q, sizeof q, "%s/tcd_rerun/samples/00000.png", tmp);
    test_check(tcd_ok && rc == 0 && same_bytes(p, q),
               "--sampler tcd --ddim_eta 0: gamma recorded, --from-png same bytes",
               "exit %d: %.200s | %.300s", rc, params, err);
    // --sde-noise brownian: recorded, reruns, and not the per-step image
    snprintf(args, sizeof args, "txt2img --sampler dpmpp_2m_sde --sde-noise brownian %s "
             "--outdir %s/brownian", common, tmp);
    rc = run(args, &err);
    snprintf(p, sizeof p, "%s/brownian/samples/00000.png", tmp);
    png_params(p, params, sizeof params);
    int br_ok = rc == 0 && strstr(params, "SDE noise: brownian");
    snprintf(args, sizeof args, "txt2img --from-png %s --outdir %s/brownian_rerun", p, tmp);
    rc = run(args, &err);
    snprintf(q, sizeof q, "%s/brownian_rerun/samples/00000.png", tmp);
    br_ok &= rc == 0 && same_bytes(p, q);
    snprintf(args, sizeof args, "txt2img --sampler dpmpp_2m_sde %s --outdir %s/perstep", common, tmp);
    rc = run(args, &err);
    snprintf(q, sizeof q, "%s/perstep/samples/00000.png", tmp);
    test_check(br_ok && rc == 0 && !same_bytes(p, q),
               "--sde-noise brownian: recorded, --from-png same bytes, differs from per-step",
               "exit %d: %.200s | %.300s", rc, params, err);
}

int main(void) {
    if (!test_cli_setup(sd, tmp, out_path, err_path, "test_cli_ux")) return test_summary();
    test_limits();
    test_overwrite();
    test_compare_empty();
    test_progress();
    test_progress_tty();
    test_batches();
    test_small();
    test_threads();
    test_weights();
    test_schedules_nfe();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", tmp);
    return test_summary();
}
