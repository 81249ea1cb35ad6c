/*
 * ldm/io/json.c -- strict config.json field readers (see json.h for the rules).
 */
#include <math.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/json.h"

cJSON *ldm_json_parse_object(const char *text, const char *path) {
    const char *end = NULL;
    // require_null_terminated: nothing but whitespace may follow the value.
    cJSON *root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        ldm_error("%s: not valid JSON (near \"%.20s\")", path, at ? at : "");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        ldm_error("%s: not a JSON object", path);
        return NULL;
    }
    return root;
}

// The value of key, or NULL when it is absent or null (both mean "default").
static const cJSON *field(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

// A JSON number that is an integer small enough for an int (no UB on the cast).
static int is_small_int(const cJSON *v) {
    return cJSON_IsNumber(v) && v->valuedouble >= -1e9 && v->valuedouble <= 1e9 &&
           v->valuedouble == floor(v->valuedouble);
}

int ldm_json_int(const cJSON *o, const char *key, int def, int *out, const char *path) {
    const cJSON *v = field(o, key);
    if (!v) { *out = def; return 0; }
    if (!is_small_int(v)) return ldm_error("%s: \"%s\" must be an integer", path, key);
    *out = (int)v->valuedouble;
    return 0;
}

int ldm_json_bool(const cJSON *o, const char *key, int def, int *out, const char *path) {
    const cJSON *v = field(o, key);
    if (!v) { *out = def; return 0; }
    if (!cJSON_IsBool(v)) return ldm_error("%s: \"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

int ldm_json_float(const cJSON *o, const char *key, float def, float *out, const char *path) {
    const cJSON *v = field(o, key);
    if (!v) { *out = def; return 0; }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return ldm_error("%s: \"%s\" must be a number", path, key);
    *out = (float)v->valuedouble;
    return 0;
}

int ldm_json_string(const cJSON *o, const char *key, const char **out, const char *path) {
    const cJSON *v = field(o, key);
    *out = NULL;
    if (!v) return 0;
    if (!cJSON_IsString(v)) return ldm_error("%s: \"%s\" must be a string", path, key);
    *out = v->valuestring;
    return 0;
}

int ldm_json_string_is(const cJSON *o, const char *key, const char *want, int absent_ok,
                       const char *path) {
    const cJSON *v = field(o, key);
    if (!v) {
        if (absent_ok) return 0;
        return ldm_error("%s: \"%s\" is null; this model needs \"%s\"", path, key, want);
    }
    if (!cJSON_IsString(v) || strcmp(v->valuestring, want) != 0)
        return ldm_error("%s: \"%s\" = %s is not supported (expected \"%s\")", path, key,
                         cJSON_IsString(v) ? v->valuestring : "(not a string)", want);
    return 0;
}

int ldm_json_int_list(const cJSON *o, const char *key, int max, int *out, int *n,
                      const char *path) {
    const cJSON *v = field(o, key);
    int len = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 0;
    if (len < 1 || len > max)
        return ldm_error("%s: \"%s\" must be a list of 1..%d integers", path, key, max);
    for (int i = 0; i < len; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!is_small_int(e)) return ldm_error("%s: \"%s\"[%d] must be an integer", path, key, i);
        out[i] = (int)e->valuedouble;
    }
    *n = len;
    return 0;
}

int ldm_json_int_or_list(const cJSON *o, const char *key, int def, int n, int *out,
                         const char *path) {
    const cJSON *v = field(o, key);
    if (v && cJSON_IsArray(v)) {
        if (cJSON_GetArraySize(v) != n)
            return ldm_error("%s: \"%s\" has %d entries, expected %d (one per block)", path, key,
                             cJSON_GetArraySize(v), n);
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(v, i);
            if (!is_small_int(e))
                return ldm_error("%s: \"%s\"[%d] must be an integer", path, key, i);
            out[i] = (int)e->valuedouble;
        }
        return 0;
    }
    int x = 0;
    if (ldm_json_int(o, key, def, &x, path)) return LDM_ERR;
    for (int i = 0; i < n; i++) out[i] = x;
    return 0;
}

int ldm_json_uniform(const cJSON *o, const char *key, int def, int n, int *out,
                     const char *path) {
    int v[64];
    if (n < 1 || n > 64) return ldm_error("%s: \"%s\": %d blocks, expected 1..64", path, key, n);
    if (ldm_json_int_or_list(o, key, def, n, v, path)) return LDM_ERR;
    for (int i = 1; i < n; i++)
        if (v[i] != v[0])
            return ldm_error("%s: \"%s\" differs between blocks; only one value for every "
                             "block is supported", path, key);
    *out = v[0];
    return 0;
}
