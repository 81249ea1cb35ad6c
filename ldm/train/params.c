/*
 * ldm/train/params.c -- the list of trainable parameters (ldm/train/params.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/train/params.h"

int ldm_params_add(ldm_params *l, ldm_tensor *w, ldm_tensor *g, const char *fmt, ...) {
    char name[LDM_PARAM_NAME];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (len < 0 || len >= (int)sizeof name)
        return ldm_error("parameter name too long: %.60s...", name);
    if (!w || !g || !w->data || !g->data || w->dtype != LDM_DTYPE_F32 ||
        g->dtype != LDM_DTYPE_F32 || w->numel != g->numel)
        return ldm_error("parameter %s: weight and gradient must be fp32 tensors of one shape",
                         name);
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        ldm_param *p = realloc(l->p, (size_t)cap * sizeof *p);
        if (!p) return ldm_error("parameter list: out of memory");
        l->p = p, l->cap = cap;
    }
    ldm_param *p = &l->p[l->n++];
    memcpy(p->name, name, (size_t)len + 1);
    p->w = w, p->g = g;
    l->numel += w->numel;
    return 0;
}

void ldm_params_zero_grad(const ldm_params *l) {
    for (int i = 0; i < l->n; i++)
        memset(l->p[i].g->data, 0, (size_t)l->p[i].g->numel * sizeof(float));
}

ldm_param *ldm_params_find(const ldm_params *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->p[i].name, name)) return &l->p[i];
    return NULL;
}

void ldm_params_free(ldm_params *l) {
    free(l->p);
    memset(l, 0, sizeof *l);
}
