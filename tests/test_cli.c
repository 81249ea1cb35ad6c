/*
 * tests/test_cli.c -- the `sd` command line, run as a program.
 *
 * The binary is $LDM_SD, else $LDM_BUILD/sd (tests/run.sh exports LDM_BUILD),
 * else build/sd. Checked:
 *   sd --help, sd info --help                      exit 0, usage text; --help lists
 *                                                   the environment; $LDM_BACKEND reaches
 *                                                   a subcommand through main
 *   sd info FILE                                    one line per tensor, count line
 *   sd info FILE --tensor NAME --npy OUT.npy        values equal the torch fixture;
 *                                                   no overwrite without --force
 *   sd info BAD (every safetensors bad file)        exit 1, exactly one stderr line
 *                                                   "sd: FILE: ...", no output file
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "tests/test.h"

#define DIR "tests/fixtures/io/"

static char sd[512], tmpdir[256], out_path[600], err_path[600];

// Run `sd ARGS` with stdout/stderr into files; returns the exit status, or
// 128 + signal when it died of one (a crash).
static int run(const char *args, char **out, char **err) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>'%s'", sd, args, out_path, err_path);
    int st = system(cmd);
    *out = test_read_file(out_path, NULL);
    *err = test_read_file(err_path, NULL);
    if (st == -1) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    return 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static int count_lines(const char *s) {
    int n = 0;
    for (; s && *s; s++) n += *s == '\n';
    return n;
}

static void test_help(void) {
    char *out, *err;
    int rc = run("--help", &out, &err);
    test_check(rc == 0 && out && strstr(out, "info"), "sd --help", "exit %d", rc);
    // every variable main reads is listed, and LDM_BACKEND reaches a subcommand through main
    static const char *vars[] = {"LDM_BACKEND", "LDM_DUMP", "LDM_VOCAB", "LDM_TINY_MODEL",
                                 "LDM_VAE_BUDGET_MB", "LDM_CUDA_SYNC", "LDM_CUDA_WORKSPACE_MB",
                                 "LDM_CUDA_EMU_STRICT"};
    int listed = 1;
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) listed &= out && strstr(out, vars[i]) != NULL;
    test_check(listed, "sd --help lists the environment variables", "%s", "one is missing");
    free(out), free(err);
    setenv("LDM_BACKEND", "bogus", 1);   // for the child: sd's main reads it
    rc = run("check-model tests/fixtures/pipeline/model", &out, &err);
    unsetenv("LDM_BACKEND");
    test_check(rc == 1 && err && strstr(err, "unknown backend 'bogus'"),
               "LDM_BACKEND=bogus: the subcommand names it, exit 1", "exit %d: %s", rc, err ? err : "");
    free(out), free(err);
    rc = run("info --help", &out, &err);
    test_check(rc == 0 && out && strstr(out, "usage: sd info"), "sd info --help", "exit %d", rc);
    free(out), free(err);
    rc = run("info", &out, &err);
    test_check(rc == 2 && err && strstr(err, "usage"), "sd info without FILE: usage, exit 2",
               "exit %d", rc);
    free(out), free(err);
    rc = run("info " DIR "st_f16.safetensors --bogus", &out, &err);
    test_check(rc == 2 && err && strstr(err, "--bogus"), "sd info with an unknown flag: exit 2",
               "exit %d", rc);
    free(out), free(err);
}

static void test_list(void) {
    char *out, *err;
    int rc = run("info " DIR "st_f16.safetensors", &out, &err);
    test_check(rc == 0, "sd info st_f16.safetensors exits 0", "exit %d: %s", rc, err ? err : "");
    test_check(out && strstr(out, "conv.weight  F16  [4,3,3,3]\n") &&
               strstr(out, "scalar  F16  []\n") && strstr(out, "empty  F16  [0,3]\n"),
               "tensor lines 'name  dtype  [shape]'", "output:\n%s", out ? out : "");
    test_check(out && strstr(out, "metadata  format = pt") &&
               strstr(out, "safetensors, 7 tensors, 182 values, 3 metadata entries"),
               "metadata lines and the count line", "output:\n%s", out ? out : "");
    // the listing is 7 tensor + 3 metadata lines, then the count line (a model
    // summary may follow it)
    const char *count = out ? strstr(out, "safetensors, 7 tensors") : NULL;
    int before = 0;
    for (const char *p = out; count && p < count; p++) before += *p == '\n';
    test_check(count && before == 7 + 3, "7 tensor + 3 metadata lines, then the count line",
               "%d lines before the count line", before);
    free(out), free(err);
    rc = run("info " DIR "st_bf16.safetensors --tensor special", &out, &err);
    test_check(rc == 0 && out && strstr(out, "special  BF16  [20]") && strstr(out, "min -inf"),
               "sd info --tensor NAME prints the line and min/max/mean", "exit %d:\n%s", rc,
               out ? out : "");
    free(out), free(err);
}

static void test_npy(void) {
    char args[1024], npy[600];
    char *out, *err;
    snprintf(npy, sizeof npy, "%s/conv.npy", tmpdir);
    snprintf(args, sizeof args, "info " DIR "st_bf16.safetensors --tensor conv.weight --npy '%s'",
             npy);
    int rc = run(args, &out, &err);
    test_check(rc == 0, "sd info --tensor conv.weight --npy OUT", "exit %d: %s", rc,
               err ? err : "");
    free(out), free(err);
    float *got, *exp;
    int64_t s1[8], s2[8];
    int n1, n2;
    if (ldm_npy_read_raw(&got, s1, &n1, npy) == 0) {
        if (ldm_npy_read_raw(&exp, s2, &n2, DIR "st_bf16__conv.weight.npy") == 0) {
            if (test_check(n1 == 4 && s1[0] == 4 && s1[3] == 3, "--npy shape [4,3,3,3]", "ndim %d", n1))
                test_close("--npy values = torch bf16.float()", got, exp, 108, 0, 0);
            free(exp);
        }
        free(got);
    } else {
        test_check(0, "--npy output readable", "%s", ldm_last_error());
    }
    struct stat before, after;
    stat(npy, &before);
    rc = run(args, &out, &err);
    stat(npy, &after);
    test_check(rc == 1 && err && strstr(err, "--force") && before.st_mtime == after.st_mtime &&
               before.st_ino == after.st_ino, "existing OUT.npy kept without --force",
               "exit %d: %s", rc, err ? err : "");
    free(out), free(err);
    strcat(args, " --force");
    rc = run(args, &out, &err);
    test_check(rc == 0, "--force replaces OUT.npy", "exit %d: %s", rc, err ? err : "");
    free(out), free(err);
    snprintf(npy, sizeof npy, "%s/missing.npy", tmpdir);
    snprintf(args, sizeof args, "info " DIR "st_bf16.safetensors --tensor nope --npy '%s'", npy);
    rc = run(args, &out, &err);
    test_check(rc == 1 && err && strstr(err, "'nope'") && access(npy, F_OK) != 0,
               "unknown --tensor: exit 1, names it, no file", "exit %d: %s", rc, err ? err : "");
    free(out), free(err);
}

static void test_bad(void) {
    char *man = test_read_file(DIR "bad/MANIFEST.tsv", NULL);
    if (!test_check(man != NULL, "bad/MANIFEST.tsv", "missing; run make fixtures")) return;
    int n = 0, good = 0;
    for (char *line = strtok(man, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "st\t", 3) != 0) continue;
        char *file = line + 3, *tab = strchr(file, '\t');
        if (tab) *tab = '\0';
        char args[1024], npy[600];
        snprintf(npy, sizeof npy, "%s/bad.npy", tmpdir);
        snprintf(args, sizeof args, "info '" DIR "bad/%s' --tensor a --npy '%s'", file, npy);
        char *out, *err;
        int rc = run(args, &out, &err);
        char prefix[600];
        snprintf(prefix, sizeof prefix, "sd: " DIR "bad/%s: ", file);
        int ok = rc == 1 && err && count_lines(err) == 1 && !strncmp(err, prefix, strlen(prefix)) &&
                 access(npy, F_OK) != 0;
        if (!ok) {
            char name[600];
            snprintf(name, sizeof name, "sd info bad/%s", file);
            test_check(0, name, "exit %d, stderr \"%s\"", rc, err ? err : "");
        }
        good += ok;
        n++;
        free(out), free(err);
    }
    free(man);
    char name[200];
    snprintf(name, sizeof name, "sd info on %d bad files: exit 1, one line 'sd: FILE: ...', no output", n);
    test_check(good == n && n > 0, name, "%d of %d behaved", good, n);
}

int main(void) {
    const char *env = getenv("LDM_SD"), *build = getenv("LDM_BUILD");
    if (env) snprintf(sd, sizeof sd, "%s", env);
    else snprintf(sd, sizeof sd, "%s/sd", build ? build : "build");
    if (!test_check(access(sd, X_OK) == 0, "sd binary", "%s not found (set LDM_SD)", sd))
        return test_summary();
    snprintf(tmpdir, sizeof tmpdir, "%s/ldm-test-cli-XXXXXX", P_tmpdir);
    if (!test_check(mkdtemp(tmpdir) != NULL, "temporary folder", "mkdtemp failed"))
        return test_summary();
    snprintf(out_path, sizeof out_path, "%s/stdout", tmpdir);
    snprintf(err_path, sizeof err_path, "%s/stderr", tmpdir);
    test_help();
    test_list();
    test_npy();
    test_bad();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", tmpdir);
    return test_summary();
}
