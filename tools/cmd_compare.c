/*
 * tools/cmd_compare.c -- `sd compare A B`: line up two dump folders (ours from
 * --dump / LDM_DUMP, PyTorch's from tools/reference/dump_torch.py) and print,
 * per tensor: max-abs error, relative error (max-abs / max|B|) and cosine
 * similarity, marking the first tensor, in execution order, whose relative
 * error exceeds --tol. That first divergence is where to look.
 *
 * Execution order is the order the tensors were written in A (file
 * modification time, then name): both dumpers write each tensor as the
 * forward pass produces it.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "ldm/io/fs.h"
#include "tools/cmd.h"

typedef struct dump_file {
    char *rel;             // path relative to the folder, e.g. "step000/unet.conv_out.npy"
    struct timespec mtime;
} dump_file;

typedef struct dump_list {
    dump_file *v;
    int n, cap;
} dump_list;

// Collect every *.npy under root/sub (recursively). 0 / LDM_ERR.
static int list_npy(dump_list *out, const char *root, const char *sub, int depth) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s%s%s", root, *sub ? "/" : "", sub);
    DIR *d = opendir(dir);
    if (!d) return ldm_error("%s: cannot open folder", dir);
    struct dirent *e;
    int rc = LDM_OK;
    while (rc == LDM_OK && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char rel[4096], full[8192];
        snprintf(rel, sizeof rel, "%s%s%s", sub, *sub ? "/" : "", e->d_name);
        snprintf(full, sizeof full, "%s/%s", root, rel);
        struct stat st;
        if (stat(full, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < 8) rc = list_npy(out, root, rel, depth + 1);
            continue;
        }
        size_t len = strlen(rel);
        if (len < 4 || strcmp(rel + len - 4, ".npy") != 0) continue;
        if (out->n == out->cap) {
            out->cap = out->cap ? 2 * out->cap : 256;
            dump_file *nv = realloc(out->v, (size_t)out->cap * sizeof *nv);
            if (!nv) { rc = ldm_error("out of memory"); break; }
            out->v = nv;
        }
        out->v[out->n].rel = strdup(rel);
        out->v[out->n].mtime = st.st_mtim;
        out->n++;
    }
    closedir(d);
    return rc;
}

static int by_time_then_name(const void *pa, const void *pb) {
    const dump_file *a = pa, *b = pb;
    if (a->mtime.tv_sec != b->mtime.tv_sec) return a->mtime.tv_sec < b->mtime.tv_sec ? -1 : 1;
    if (a->mtime.tv_nsec != b->mtime.tv_nsec) return a->mtime.tv_nsec < b->mtime.tv_nsec ? -1 : 1;
    return strcmp(a->rel, b->rel);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: sd compare A B [--tol R]\n\n"
            "Compare two dump folders tensor by tensor (names relative to each folder).\n"
            "Prints max-abs, relative (max-abs / max|B|) error and cosine similarity,\n"
            "in the order tensors were written to A, and marks the first tensor whose\n"
            "relative error exceeds R (default 1e-3). B is the reference.\n"
            "  --tol R   divergence threshold (relative error)\n"
            "Exit status: 0 when every common tensor is within --tol, 1 otherwise.\n");
}

int cmd_compare(int argc, char **argv, const sd_env *env) {
    const char *a_dir = NULL, *b_dir = NULL;
    double tol = 1e-3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
        if (!strcmp(argv[i], "--tol")) {
            char *end = NULL;
            if (i + 1 >= argc) return sd_fail("--tol needs a value"), 2;
            tol = strtod(argv[++i], &end);
            if (!end || *end || !(tol >= 0)) return sd_fail("--tol: '%s' is not a number >= 0", argv[i]), 2;
        } else if (argv[i][0] == '-') {
            usage(stderr);
            return sd_fail("compare: unknown flag '%s' (sd compare --help)", argv[i]), 2;
        } else if (!a_dir) a_dir = argv[i];
        else if (!b_dir) b_dir = argv[i];
        else return sd_fail("compare: too many arguments ('%s')", argv[i]), 2;
    }
    if (!a_dir || !b_dir) { usage(stderr); return 2; }
    if (!ldm_is_dir(b_dir)) return sd_fail("compare: %s: not a folder (want two dump folders)", b_dir);

    dump_list list = {0};
    if (list_npy(&list, a_dir, "", 0) != LDM_OK) return sd_fail("%s", ldm_last_error());
    if (list.n == 0) {
        free(list.v);
        return sd_fail("compare: no .npy files in %s (is it a dump folder? sd txt2img --dump DIR)", a_dir);
    }
    qsort(list.v, (size_t)list.n, sizeof *list.v, by_time_then_name);

    int compared = 0, missing = 0, over = 0, first_bad = -1;
    printf("%-56s %12s %12s %10s\n", "tensor", "max_abs", "rel", "cosine");
    for (int i = 0; i < list.n; i++) {
        char pa[8192], pb[8192];
        snprintf(pa, sizeof pa, "%s/%s", a_dir, list.v[i].rel);
        snprintf(pb, sizeof pb, "%s/%s", b_dir, list.v[i].rel);
        float *x = NULL, *y = NULL;
        int64_t sx[LDM_MAX_DIMS], sy[LDM_MAX_DIMS];
        int nx = 0, ny = 0;
        struct stat st;
        if (stat(pb, &st) != 0) { missing++; continue; }
        if (ldm_npy_read_raw(&x, sx, &nx, pa) != LDM_OK || ldm_npy_read_raw(&y, sy, &ny, pb) != LDM_OK) {
            printf("%-56s  unreadable: %s\n", list.v[i].rel, ldm_last_error());
            free(x); free(y);
            over++;
            continue;
        }
        int64_t n = ldm_shape_numel(sx, nx);
        if (nx != ny || n != ldm_shape_numel(sy, ny) || memcmp(sx, sy, (size_t)nx * sizeof *sx)) {
            char s1[128], s2[128];
            printf("%-56s  SHAPE %s vs %s\n", list.v[i].rel, ldm_shape_str(s1, sizeof s1, sx, nx),
                   ldm_shape_str(s2, sizeof s2, sy, ny));
            if (first_bad < 0) first_bad = i;
            over++;
            free(x); free(y);
            continue;
        }
        double max_abs = 0, max_ref = 0, dot = 0, nxx = 0, nyy = 0;
        for (int64_t j = 0; j < n; j++) {
            double d = fabs((double)x[j] - y[j]);
            if (d > max_abs || isnan(d)) max_abs = isnan(d) ? INFINITY : d;
            if (fabs(y[j]) > max_ref) max_ref = fabs(y[j]);
            dot += (double)x[j] * y[j];
            nxx += (double)x[j] * x[j];
            nyy += (double)y[j] * y[j];
        }
        double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
        double cosine = (nxx > 0 && nyy > 0) ? dot / sqrt(nxx * nyy) : (nxx == nyy ? 1.0 : 0.0);
        int bad = !(rel <= tol);
        const char *mark = "";
        if (bad && first_bad < 0) { first_bad = i; mark = "  <-- first divergence"; }
        else if (bad) mark = "  *";
        printf("%-56s %12.4e %12.4e %10.7f%s\n", list.v[i].rel, max_abs, rel, cosine, mark);
        compared++;
        over += bad;
        free(x);
        free(y);
    }
    printf("%d compared, %d over tol %.1e, %d only in %s\n", compared, over, tol, missing, a_dir);
    if (first_bad >= 0) printf("first divergence: %s\n", list.v[first_bad].rel);
    for (int i = 0; i < list.n; i++) free(list.v[i].rel);
    free(list.v);
    if (compared == 0) return sd_fail("compare: no tensor names in common between %s and %s", a_dir, b_dir);
    return over ? 1 : 0;
}
