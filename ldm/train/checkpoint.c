/*
 * ldm/train/checkpoint.c -- save and resume a training run (ldm/train/checkpoint.h).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/fs.h"
#include "ldm/io/json.h"
#include "ldm/io/tensorfile.h"
#include "ldm/train/checkpoint.h"
#include "ldm/train/export.h"

#define FORMAT "ldm.c train-state 1"

int ldm_train_state_init(ldm_train_state *s, const ldm_params *p, const char *stage,
                         int with_ema, int n_loss) {
    memset(s, 0, sizeof *s);
    snprintf(s->stage, sizeof s->stage, "%s", stage);
    if (n_loss < 1 || n_loss > LDM_TRAIN_MAX_LOSSES)
        return ldm_error("train state: %d loss terms (1..%d)", n_loss, LDM_TRAIN_MAX_LOSSES);
    s->n_loss = n_loss;
    size_t n = (size_t)(p->numel ? p->numel : 1);
    s->m = calloc(n, sizeof(float));
    s->v = calloc(n, sizeof(float));
    s->ema = with_ema ? malloc(n * sizeof(float)) : NULL;
    if (!s->m || !s->v || (with_ema && !s->ema)) {
        ldm_train_state_free(s);
        return ldm_error("train state: out of memory for %lld parameters", (long long)p->numel);
    }
    if (s->ema)   // the EMA starts at the initial weights (train_tiny.py: p.detach().clone())
        for (int64_t i = 0, off = 0; i < p->n; off += p->p[i].w->numel, i++)
            memcpy(s->ema + off, p->p[i].w->data, (size_t)p->p[i].w->numel * sizeof(float));
    return 0;
}

void ldm_train_state_free(ldm_train_state *s) {
    free(s->m), free(s->v), free(s->ema), free(s->losses), free(s->settings);
    memset(s, 0, sizeof *s);
}

int ldm_train_state_log(ldm_train_state *s, const float *terms) {
    int64_t rows = s->step;   // the row of this step: called once per step, after step++
    if (rows > s->cap_losses) {
        int64_t cap = s->cap_losses ? 2 * s->cap_losses : 1024;
        while (cap < rows) cap *= 2;
        float *l = realloc(s->losses, (size_t)cap * (size_t)s->n_loss * sizeof(float));
        if (!l) return ldm_error("train state: out of memory for the loss history");
        s->losses = l, s->cap_losses = cap;
    }
    memcpy(s->losses + (rows - 1) * s->n_loss, terms, (size_t)s->n_loss * sizeof(float));
    return 0;
}

// ---- save ------------------------------------------------------------------------

static void hex_encode(char *out, const void *data, size_t n) {
    const uint8_t *b = data;
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", b[i]);
}

static int hex_decode(void *data, size_t n, const char *hex) {
    if (!hex || strlen(hex) != 2 * n) return -1;
    uint8_t *b = data;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) return -1;
        b[i] = (uint8_t)v;
    }
    return 0;
}

// A view tensor over n floats with the shape of w.
static ldm_tensor view_like(const ldm_tensor *w, float *data) {
    ldm_tensor t = *w;
    t.data = data;
    t.owns = 0;
    t.dtype = LDM_DTYPE_F32;
    return t;
}

int ldm_checkpoint_save(const char *dir, const ldm_params *p, const ldm_train_state *s) {
    if (mkdir(dir, 0777) != 0 && !(errno == EEXIST && ldm_is_dir(dir)))
        return ldm_error("%s: cannot create the folder: %s", dir, strerror(errno));
    // The previous weights file, deleted once the new state.json is in place.
    char json_path[4096], old[4096] = "", file[64], path[4096 + 64];
    snprintf(json_path, sizeof json_path, "%s/state.json", dir);
    char *prev = ldm_is_file(json_path) ? ldm_read_text(json_path, LDM_MAX_CONFIG_BYTES) : NULL;
    if (prev) {
        cJSON *o = cJSON_Parse(prev);
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "weights");
        if (cJSON_IsString(w) && !strchr(w->valuestring, '/'))
            snprintf(old, sizeof old, "%s", w->valuestring);
        cJSON_Delete(o);
        free(prev);
    }
    snprintf(file, sizeof file, "state-%06lld.safetensors", (long long)s->step);
    snprintf(path, sizeof path, "%s/%s", dir, file);

    // Tensors: param/, adam_m/, adam_v/, [ema/] per parameter, [losses].
    int per = s->ema ? 4 : 3, n = per * p->n + (s->step > 0);
    char **names = calloc((size_t)n, sizeof *names);
    ldm_tensor *ts = calloc((size_t)n, sizeof *ts);
    const ldm_tensor **tp = calloc((size_t)n, sizeof *tp);
    int rc = names && ts && tp ? 0 : ldm_error("%s: out of memory", path);
    static const char *const kind[4] = {"param", "adam_m", "adam_v", "ema"};
    int64_t off = 0;
    for (int i = 0; i < p->n && !rc; off += p->p[i].w->numel, i++) {
        float *src[4] = {p->p[i].w->data, s->m + off, s->v + off, s->ema ? s->ema + off : NULL};
        for (int k = 0; k < per && !rc; k++) {
            int j = per * i + k;
            if (asprintf(&names[j], "%s/%s", kind[k], p->p[i].name) < 0) {
                names[j] = NULL;
                rc = ldm_error("%s: out of memory", path);
            }
            ts[j] = view_like(p->p[i].w, src[k]);
            tp[j] = &ts[j];
        }
    }
    if (!rc && s->step > 0) {
        int j = n - 1;
        names[j] = strdup("losses");
        ts[j] = (ldm_tensor){.data = s->losses, .ndim = 2, .shape = {s->step, s->n_loss},
                             .numel = s->step * s->n_loss, .dtype = LDM_DTYPE_F32};
        tp[j] = &ts[j];
        if (!names[j]) rc = ldm_error("%s: out of memory", path);
    }
    if (!rc) rc = ldm_safetensors_write(path, n, (const char *const *)names, tp);
    for (int j = 0; names && j < n; j++) free(names[j]);
    free(names), free(ts), free(tp);
    if (rc) return rc;

    // state.json: names the file just written; then the old file goes.
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "format", FORMAT);
    cJSON_AddStringToObject(o, "stage", s->stage);
    cJSON_AddNumberToObject(o, "step", (double)s->step);
    cJSON_AddStringToObject(o, "weights", file);
    cJSON_AddNumberToObject(o, "n_params", (double)p->n);
    cJSON_AddNumberToObject(o, "n_loss", s->n_loss);
    cJSON_AddBoolToObject(o, "ema", s->ema != NULL);
    cJSON *settings = s->settings ? cJSON_Parse(s->settings) : NULL;
    if (settings) cJSON_AddItemToObject(o, "settings", settings);
    // The generator as its bytes (a plain struct: state vector and counters).
    char *hex = malloc(2 * sizeof s->rng + 1);
    if (hex) {
        hex_encode(hex, &s->rng, sizeof s->rng);
        cJSON_AddNumberToObject(o, "rng_bytes", (double)sizeof s->rng);
        cJSON_AddStringToObject(o, "rng", hex);
        free(hex);
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!hex || !text) { free(text); return ldm_error("%s: out of memory", json_path); }
    rc = ldm_write_text_atomic(json_path, text);
    free(text);
    if (rc) return rc;
    if (old[0] && strcmp(old, file) != 0) {
        snprintf(path, sizeof path, "%s/%s", dir, old);
        unlink(path);
    }
    return 0;
}

// ---- load ------------------------------------------------------------------------

int ldm_checkpoint_exists(const char *dir) {
    char p[4096 + 16];
    snprintf(p, sizeof p, "%s/state.json", dir);
    return ldm_is_file(p);
}

// Entry "<kind>/<name>" of f into dst, which must have w's shape.
static int load_tensor(float *dst, const ldm_tensor_file *f, const char *kind,
                       const ldm_tensor *w, const char *name) {
    char key[LDM_PARAM_NAME + 16];
    snprintf(key, sizeof key, "%s/%s", kind, name);
    const ldm_tensor_entry *e = ldm_tensor_file_find(f, key);
    if (!e) return ldm_error("%s: no tensor %s (a checkpoint of another model?)", f->path, key);
    if (e->ndim != w->ndim || memcmp(e->shape, w->shape, (size_t)w->ndim * sizeof *e->shape)) {
        char a[64], b[64];
        return ldm_error("%s: %s has shape %s, the model's is %s", f->path, key,
                         ldm_shape_str(a, sizeof a, e->shape, e->ndim),
                         ldm_shape_str(b, sizeof b, w->shape, w->ndim));
    }
    return ldm_entry_to_f32(dst, e);
}

int ldm_checkpoint_load(const char *dir, const ldm_params *p, ldm_train_state *s) {
    char json_path[4096 + 16], path[4096 + 80];
    snprintf(json_path, sizeof json_path, "%s/state.json", dir);
    char *text = ldm_read_text(json_path, LDM_MAX_CONFIG_BYTES);
    if (!text) return LDM_ERR;
    cJSON *o = ldm_json_parse_object(text, json_path);
    free(text);
    if (!o) return LDM_ERR;
    const char *format = NULL, *stage = NULL, *file = NULL, *rng = NULL;
    int step = 0, n_params = 0, n_loss = 0, ema = 0, rng_bytes = 0;
    int rc = ldm_json_string(o, "format", &format, json_path) ||
             ldm_json_string(o, "stage", &stage, json_path) ||
             ldm_json_string(o, "weights", &file, json_path) ||
             ldm_json_string(o, "rng", &rng, json_path) ||
             ldm_json_int(o, "step", -1, &step, json_path) ||
             ldm_json_int(o, "n_params", -1, &n_params, json_path) ||
             ldm_json_int(o, "n_loss", -1, &n_loss, json_path) ||
             ldm_json_int(o, "rng_bytes", -1, &rng_bytes, json_path) ||
             ldm_json_bool(o, "ema", 0, &ema, json_path) ? LDM_ERR : 0;
    if (!rc && (!format || strcmp(format, FORMAT) != 0))
        rc = ldm_error("%s: not an ldm.c training state (format \"%s\", expected \"%s\")",
                       json_path, format ? format : "", FORMAT);
    if (!rc && (!stage || strcmp(stage, s->stage) != 0))
        rc = ldm_error("%s: a state of stage %s; this run is stage %s", json_path,
                       stage ? stage : "?", s->stage);
    if (!rc && (!file || strchr(file, '/') || step < 0 || n_loss != s->n_loss ||
                n_params != p->n || ema != (s->ema != NULL)))
        rc = ldm_error("%s: does not describe this model (%d parameters, %d loss terms, ema %d; "
                       "the model has %d, %d, %d)", json_path, n_params, n_loss, ema, p->n,
                       s->n_loss, s->ema != NULL);
    if (!rc && (rng_bytes != (int)sizeof s->rng || hex_decode(&s->rng, sizeof s->rng, rng)))
        rc = ldm_error("%s: the generator state is not one this build writes (%d bytes, "
                       "expected %d)", json_path, rng_bytes, (int)sizeof s->rng);
    if (!rc && s->settings) {   // the settings of the run must be those it was started with
        cJSON *want = cJSON_Parse(s->settings);
        const cJSON *got = cJSON_GetObjectItemCaseSensitive(o, "settings");
        if (!got || !want || !cJSON_Compare(got, want, 1)) {
            char *g = got ? cJSON_PrintUnformatted(got) : NULL;
            rc = ldm_error("%s: the run was started with other settings (%s); this one has %s: "
                           "resume with the same flags", json_path, g ? g : "none", s->settings);
            free(g);
        }
        cJSON_Delete(want);
    }
    if (!rc) snprintf(path, sizeof path, "%s/%s", dir, file);
    cJSON_Delete(o);
    if (rc) return rc;

    ldm_tensor_file f;
    if (ldm_tensor_file_open(&f, path)) return LDM_ERR;
    int64_t off = 0;
    for (int i = 0; i < p->n && !rc; off += p->p[i].w->numel, i++) {
        const ldm_param *q = &p->p[i];
        rc = load_tensor(q->w->data, &f, "param", q->w, q->name) ||
             load_tensor(s->m + off, &f, "adam_m", q->w, q->name) ||
             load_tensor(s->v + off, &f, "adam_v", q->w, q->name) ||
             (s->ema && load_tensor(s->ema + off, &f, "ema", q->w, q->name)) ? LDM_ERR : 0;
    }
    s->step = step;
    if (!rc && step > 0) {
        const ldm_tensor_entry *e = ldm_tensor_file_find(&f, "losses");
        if (!e || e->ndim != 2 || e->shape[0] != step || e->shape[1] != s->n_loss)
            rc = ldm_error("%s: no loss history of %d steps", path, step);
        float *l = rc ? NULL : realloc(s->losses, (size_t)e->numel * sizeof(float));
        if (!rc && !l) rc = ldm_error("%s: out of memory", path);
        if (!rc) {
            s->losses = l, s->cap_losses = step;
            rc = ldm_entry_to_f32(l, e);
        }
    }
    ldm_tensor_file_close(&f);
    return rc;
}
