/*
 * ldm/io/dump.c -- write named intermediates as DIR/<prefix><name>.npy when
 * LDM_DUMP=DIR is set (see dump.h). The same names come out of
 * tools/reference/dump_torch.py, so the two dumps can be compared tensor by
 * tensor (`sd compare`).
 *
 * A name may contain '/' (the prefix "step003/" does): the folders are
 * created on the way. The environment is read on every call, so setting
 * LDM_DUMP after start-up (the CLI's --dump) works. Leaves out: any format
 * other than float32 .npy.
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

static char dump_prefix[256];
static int dump_error_reported;

int ldm_dump_enabled(void) {
    const char *d = getenv("LDM_DUMP");
    return d && *d;
}

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

// t (any backend) -> $LDM_DUMP/<prefix><name>.npy
void ldm_dump(const ldm_tensor *t, const char *name_fmt, ...) {
    const char *dir = getenv("LDM_DUMP");
    if (!dir || !*dir) return;
    char name[512], path[2048];
    va_list ap;
    va_start(ap, name_fmt);
    vsnprintf(name, sizeof name, name_fmt, ap);
    va_end(ap);
    int n = snprintf(path, sizeof path, "%s/%s%s.npy", dir, dump_prefix, name);
    const char *why = NULL;
    char msg[1200];
    if (n < 0 || (size_t)n >= sizeof path) {
        why = "path too long";
    } else if (make_parents(path) != 0) {
        snprintf(msg, sizeof msg, "cannot create folders for %.900s: %s", path, strerror(errno));
        why = msg;
    } else if (ldm_npy_write_tensor(path, t) != 0) {
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        why = msg;
    }
    if (why && !dump_error_reported) {
        dump_error_reported = 1;
        fprintf(stderr, "ldm: dump of '%s%s' failed (further dump errors not shown): %s\n",
                dump_prefix, name, why);
    }
}
