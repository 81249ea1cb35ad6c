/*
 * ldm/core/error.c -- the per-thread last-error message (see error.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include "ldm/core/error.h"

static _Thread_local char last_error[1024];

int ldm_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return LDM_ERR;
}

const char *ldm_last_error(void) { return last_error; }

void ldm_clear_error(void) { last_error[0] = '\0'; }
