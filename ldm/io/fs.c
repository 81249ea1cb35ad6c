/*
 * ldm/io/fs.c -- folder / file tests and reading a small text file (see fs.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "ldm/core/error.h"
#include "ldm/io/fs.h"

int ldm_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int ldm_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

char *ldm_read_text(const char *path, size_t max_bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        ldm_error("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    // Read up to one byte past the limit: a full buffer means "too large".
    char *buf = malloc(max_bytes + 2);
    size_t n = buf ? fread(buf, 1, max_bytes + 1, f) : 0;
    int failed = buf && ferror(f);
    fclose(f);
    if (!buf) {
        ldm_error("%s: out of memory", path);
        return NULL;
    }
    if (failed || n > max_bytes) {
        free(buf);
        if (failed) ldm_error("%s: read error", path);
        else ldm_error("%s: larger than %zu bytes: not a config file", path, max_bytes);
        return NULL;
    }
    buf[n] = 0;
    return buf;
}
