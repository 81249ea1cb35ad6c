/*
 * ldm/io/json.h -- strict readers for the fields of a config.json (diffusers
 * unet/, vae/, scheduler/, model_index.json; transformers text_encoder/), over
 * cJSON. One set, used by every config parser (ldm/model.c, ldm/unet.c).
 *
 * The rules, the same for every field:
 *   - absent or null: the default (diffusers writes null for "not used");
 *   - present with the wrong type (a string where an integer belongs, a
 *     fractional number for an integer, ...): an error naming the file and the
 *     key, e.g. `vae/config.json: "layers_per_block" must be an integer`;
 *   - keys nobody asks for are ignored (real configs carry many).
 * Every function returns 0 / LDM_ERR (ldm/core/error.h); `path` is only used
 * in messages.
 */
#ifndef LDM_JSON_H
#define LDM_JSON_H

#include <cjson/cJSON.h>

// Parse text that must be exactly one JSON object (whitespace around it is
// allowed). The caller frees the result with cJSON_Delete. NULL + error when
// it is not valid JSON, or valid JSON but not an object.
cJSON *ldm_json_parse_object(const char *text, const char *path);

// An integer (a JSON number with no fractional part, |x| <= 1e9).
int ldm_json_int(const cJSON *o, const char *key, int def, int *out, const char *path);
// true / false -> 1 / 0.
int ldm_json_bool(const cJSON *o, const char *key, int def, int *out, const char *path);
// Any finite JSON number, as a float.
int ldm_json_float(const cJSON *o, const char *key, float def, float *out, const char *path);
// A string; *out points into o (valid until cJSON_Delete); absent/null: NULL.
int ldm_json_string(const cJSON *o, const char *key, const char **out, const char *path);
// A string field that must equal `want`. Absent/null: accepted when
// absent_ok, else an error naming what is needed.
int ldm_json_string_is(const cJSON *o, const char *key, const char *want, int absent_ok,
                       const char *path);
// A required list of 1..max integers -> out[0..*n).
int ldm_json_int_list(const cJSON *o, const char *key, int max, int *out, int *n,
                      const char *path);
// One integer for every block, or a list of exactly n (one per block) -> out[n].
int ldm_json_int_or_list(const cJSON *o, const char *key, int def, int n, int *out,
                         const char *path);
// Like ldm_json_int_or_list, for fields supported only with the same value in
// every block: a list whose entries differ is an error. -> *out.
int ldm_json_uniform(const cJSON *o, const char *key, int def, int n, int *out,
                     const char *path);

#endif
