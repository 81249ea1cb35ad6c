/*
 * tests/test.h -- the tiny test harness every C test uses.
 *
 * Each tests/test_*.c is one binary. It records checks with the functions
 * below and ends `return test_summary();`, which prints the one line
 *     N passed, M failed
 * and returns non-zero when anything failed. tests/run.sh runs every binary
 * and prints the grand total the same way.
 *
 * Tensor comparisons print, per tensor: max-abs error, max-rel error (relative
 * to the largest |expected| value, so near-zero elements do not blow it up),
 * the worst index, and OK / NOT OK.
 */
#ifndef LDM_TEST_H
#define LDM_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/core/tensor.h"
#include "ldm/io/npy.h"

static int test_passed_count, test_failed_count;

// Record one check: prints "  ok   name" or "  FAIL name: why" lines.
static inline int test_check(int ok, const char *name, const char *fmt_why, ...)
    __attribute__((format(printf, 3, 4), unused));
#include <stdarg.h>
static inline int test_check(int ok, const char *name, const char *fmt_why, ...) {
    if (ok) {
        test_passed_count++;
        printf("  ok      %s\n", name);
    } else {
        test_failed_count++;
        printf("  NOT OK  %s", name);
        if (fmt_why && *fmt_why) {
            va_list ap;
            va_start(ap, fmt_why);
            printf(": ");
            vprintf(fmt_why, ap);
            va_end(ap);
        }
        printf("\n");
    }
    fflush(stdout);
    return ok;
}

// Compare n floats. Passes when max|got-exp| <= rtol * max(max|exp|, 1e-30)
// + atol. Prints max-abs, max-rel, worst index.
static inline __attribute__((unused)) int test_close(const char *name, const float *got,
                                                     const float *exp, int64_t n, double rtol,
                                                     double atol) {
    double max_abs = 0, scale = 0;
    int64_t worst = 0, nonfinite = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)exp[i]);
        if (e > scale) scale = e;
        double d = fabs((double)got[i] - (double)exp[i]);
        if (!isfinite(got[i]) && isfinite(exp[i])) nonfinite++;
        if (d > max_abs || (isnan(d) && !isnan(max_abs))) { max_abs = d; worst = i; }
    }
    double rel = scale > 0 ? max_abs / scale : max_abs;
    int ok = nonfinite == 0 && !isnan(max_abs) && max_abs <= rtol * scale + atol;
    test_passed_count += ok;
    test_failed_count += !ok;
    printf("  %-7s %-48s max_abs %.3e  max_rel %.3e  worst [%lld] got %.7g exp %.7g  (tol %.0e)\n",
           ok ? "ok" : "NOT OK", name, max_abs, rel, (long long)worst, n ? got[worst] : 0.0,
           n ? exp[worst] : 0.0, rtol);
    fflush(stdout);
    return ok;
}

// Read a whole file into a NUL-terminated malloc'ed buffer (*size = bytes,
// if size != NULL). NULL when it cannot be read.
static inline __attribute__((unused)) char *test_read_file(const char *path, size_t *size) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) { free(buf); buf = NULL; }
    if (buf) buf[n] = '\0';
    fclose(fp);
    if (size) *size = buf ? (size_t)n : 0;
    return buf;
}

// A committed fixture .npy as floats (malloc'ed), *n = its element count.
// NULL, and a failed check naming the file, when it cannot be read.
static inline __attribute__((unused)) float *test_load_npy(const char *path, int64_t *n) {
    float *d;
    int64_t shape[8];
    int nd;
    if (ldm_npy_read_raw(&d, shape, &nd, path) != 0) {
        test_check(0, path, "%s", ldm_last_error());
        return NULL;
    }
    *n = 1;
    for (int i = 0; i < nd; i++) *n *= shape[i];
    return d;
}

// `SD ARGS` through the shell (from the repository root), stdout into
// out_path, stderr into err_path and *err (its first 16 KiB, a static buffer).
// The exit status, or 128 + signal when it died of one (a crash).
static inline __attribute__((unused)) int test_run_cli(const char *sd, const char *args,
                                                       const char *out_path,
                                                       const char *err_path, char **err) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' %s >'%s' 2>'%s'", sd, args, out_path, err_path);
    int st = system(cmd);
    FILE *f = fopen(err_path, "rb");
    static char buf[16384];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    buf[n] = 0;
    if (f) fclose(f);
    *err = buf;
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// The CLI tests' setup: sd[512] <- the binary ($LDM_SD, else $LDM_BUILD/sd,
// else build/sd), tmp[256] <- a new folder /tmp/ldm_<name>_XXXXXX, out_path and
// err_path[600] <- the files test_run_cli redirects into. 1, or 0 after a
// failed check (no binary, no folder).
static inline __attribute__((unused)) int test_cli_setup(char *sd, char *tmp, char *out_path,
                                                         char *err_path, const char *name) {
    const char *b = getenv("LDM_SD");
    if (b) snprintf(sd, 512, "%s", b);
    else snprintf(sd, 512, "%s/sd", getenv("LDM_BUILD") ? getenv("LDM_BUILD") : "build");
    if (!test_check(access(sd, X_OK) == 0, "sd binary present", "%s not found (make first)", sd))
        return 0;
    snprintf(tmp, 256, "/tmp/ldm_%s_XXXXXX", name);
    if (!mkdtemp(tmp)) return test_check(0, "mkdtemp", "%s", tmp);
    snprintf(out_path, 600, "%s/stdout", tmp);
    snprintf(err_path, 600, "%s/stderr", tmp);
    return 1;
}

// A tensor on `ops` holding a copy of the host tensor's values (exits on failure).
static inline __attribute__((unused)) ldm_tensor test_tensor_on(const struct ldm_ops *ops,
                                                                const ldm_tensor *host) {
    ldm_tensor t = ldm_tensor_new(ops, host->shape, host->ndim);
    if (!t.data) { fprintf(stderr, "%s\n", ldm_last_error()); exit(2); }
    ldm_tensor_from_host(&t, host->data);
    return t;
}

// Zeros on `ops` with the shape of `shape_of` (exits on failure).
static inline __attribute__((unused)) ldm_tensor test_tensor_zeros_like(const struct ldm_ops *ops,
                                                                       const ldm_tensor *shape_of) {
    ldm_tensor t = ldm_tensor_zeros(ops, shape_of->shape, shape_of->ndim);
    if (!t.data) { fprintf(stderr, "%s\n", ldm_last_error()); exit(2); }
    return t;
}

// A malloc'ed host copy of a tensor of any backend (caller frees; exits on failure).
static inline __attribute__((unused)) float *test_tensor_host(const ldm_tensor *t) {
    float *h = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (!h) exit(2);
    ldm_tensor_to_host(h, t);
    return h;
}

static inline __attribute__((unused)) int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed_count, test_failed_count);
    return test_failed_count ? 1 : 0;
}

#endif
