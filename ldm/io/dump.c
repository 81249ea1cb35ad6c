/*
 * ldm/io/dump.c -- write named intermediates as DIR/<prefix><name>.npy once
 * the program has named DIR with ldm_dump_set_dir (see dump.h). The same
 * names come out of tools/reference/dump_torch.py, so the two dumps can be
 * compared tensor by tensor (`sd compare`).
 *
 * A name may contain '/' (the prefix "step003/" does): the folders are
 * created on the way. Leaves out: any format other than float32 .npy.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "ldm/io/dump.h"
#include "ldm/core/error.h"
#include "ldm/io/npy.h"

static char dump_dir[4096];      // "" = off; set by the program (ldm_dump_set_dir)
static char dump_prefix[256];    // "stepNNN/", "imageK/", "prompt/", ...
static int dump_error_reported;

void ldm_dump_set_dir(const char *dir) {
    snprintf(dump_dir, sizeof dump_dir, "%s", dir ? dir : "");
}

const char *ldm_dump_dir(void) { return dump_dir[0] ? dump_dir : NULL; }

int ldm_dump_enabled(void) { return dump_dir[0] != '\0'; }

void ldm_dump_set_prefix(const char *prefix) {
    snprintf(dump_prefix, sizeof dump_prefix, "%s", prefix ? prefix : "");
}

// mkdir -p for every folder in path before its last '/'. 0 / -1.
static int make_parents(char *path) {
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        int rc = mkdir(path, 0777);
        int err = errno;
        *p = '/';
        if (rc != 0 && err != EEXIST) {
            errno = err;
            return -1;
        }
    }
    return 0;
}

// The one writer: a tensor t (any backend), or else host data [shape], to
// DIR/<prefix><name>.npy.
static void dump_write(const ldm_tensor *t, const float *data, const int64_t *shape, int ndim,
                       const char *name_fmt, va_list ap) {
    char name[512], path[8192];
    vsnprintf(name, sizeof name, name_fmt, ap);
    int n = snprintf(path, sizeof path, "%s/%s%s.npy", dump_dir, dump_prefix, name);
    const char *why = NULL;
    char msg[1200];
    if (n < 0 || (size_t)n >= sizeof path) {
        why = "path too long";
    } else if (make_parents(path) != 0) {
        snprintf(msg, sizeof msg, "cannot create folders for %.900s: %s", path, strerror(errno));
        why = msg;
    } else if ((t ? ldm_npy_write_tensor(path, t) : ldm_npy_write(path, data, shape, ndim)) != 0) {
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        why = msg;
    }
    if (why && !dump_error_reported) {
        dump_error_reported = 1;
        fprintf(stderr, "ldm: dump of '%s%s' failed (further dump errors not shown): %s\n",
                dump_prefix, name, why);
    }
}

void ldm_dump(const ldm_tensor *t, const char *name_fmt, ...) {
    if (!ldm_dump_enabled()) return;
    va_list ap;
    va_start(ap, name_fmt);
    dump_write(t, NULL, NULL, 0, name_fmt, ap);
    va_end(ap);
}

void ldm_dump_host(const float *data, const int64_t *shape, int ndim, const char *name_fmt, ...) {
    if (!ldm_dump_enabled()) return;
    va_list ap;
    va_start(ap, name_fmt);
    dump_write(NULL, data, shape, ndim, name_fmt, ap);
    va_end(ap);
}
