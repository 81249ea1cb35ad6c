/*
 * ldm/io/safetensors.c -- the safetensors format: a validating reader over a
 * buffer already in memory (the mmap of ldm_tensor_file_open, or the
 * fuzzer's input) and a writer for fp32 tensors.
 *
 * Layout (the format of the `safetensors` package; docs/09-checkpoint-files.md):
 *   [0,8)        N, u64 little-endian: the header length
 *   [8,8+N)      UTF-8 JSON object, possibly padded with trailing spaces:
 *                  {"__metadata__": {"k": "v", ...},           (optional)
 *                   "name": {"dtype": "F16", "shape": [320,4,3,3],
 *                            "data_offsets": [b, e]}, ...}
 *   [8+N, size)  the byte buffer; a tensor's bytes are buffer[b, e)
 *
 * Every rule the reader enforces (a file breaking one is rejected with a
 * message naming the file, the tensor and the rule):
 *   R1  the file holds at least the 8 length bytes
 *   R2  N <= 1e8 (100 MB) and 8 + N <= file size
 *   R3  the header is valid UTF-8 with no NUL byte, and one JSON object
 *       followed only by whitespace (padding)
 *   R4  no duplicate keys (cJSON keeps duplicates, so they are checked here),
 *       in the top object and in every tensor object
 *   R5  __metadata__, if present, is an object of strings
 *   R6  each tensor: dtype one of F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL;
 *       shape an array of at most LDM_MAX_DIMS non-negative integers;
 *       data_offsets two non-negative integers b <= e
 *   R7  numel * dtype size computed with overflow checks in 64 bits, and
 *       equal to e - b
 *   R8  every span inside the buffer (e <= size - 8 - N)
 *   R9  sorted by offset, the tensors tile the buffer exactly: the first
 *       starts at 0, each starts where the previous ends (no gap, no
 *       overlap), the last ends at the end of the file (no trailing bytes)
 *
 * Leaves out: dtypes ldm.c never needs (F8_*, U16/U32/U64, complex) are
 * rejected as unsupported rather than skipped.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/tensorfile.h"

#define ST_MAX_HEADER 100000000ull      // R2: 1e8 bytes
#define ST_MAX_INT 9007199254740992.0   // 2^53: larger JSON numbers are not exact doubles

// ---------------------------------------------------------------------------
// helpers

// R3: strict UTF-8 (no overlong forms, no surrogates, <= U+10FFFF) and no NUL.
// Returns the offset of the first bad byte, or n when all is well.
static size_t utf8_bad_offset(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == 0) return i;
        if (c < 0x80) { i++; continue; }
        int len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
        else return i;
        if (n - i < (size_t)len) return i;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += (size_t)len;
    }
    return n;
}

static int parse_dtype(const char *s, ldm_dtype *out) {
    static const struct { const char *name; ldm_dtype t; } table[] = {
        {"F32", LDM_DTYPE_F32}, {"F16", LDM_DTYPE_F16}, {"BF16", LDM_DTYPE_BF16},
        {"F64", LDM_DTYPE_F64}, {"I64", LDM_DTYPE_I64}, {"I32", LDM_DTYPE_I32},
        {"I16", LDM_DTYPE_I16}, {"I8", LDM_DTYPE_I8},   {"U8", LDM_DTYPE_U8},
        {"BOOL", LDM_DTYPE_BOOL},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(s, table[i].name) == 0) { *out = table[i].t; return 0; }
    return -1;
}

// A JSON number that is an exact non-negative integer (< 2^53).
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d >= ST_MAX_INT || d != floor(d)) return -1;
    *out = (uint64_t)d;
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// R4: the first key of `obj` that appears twice, or NULL. Out of memory
// counts as a failure too (returned as the placeholder name below), so a
// duplicate can never slip through.
static const char dup_oom[] = "(out of memory while checking keys)";
static const char *duplicate_key(const cJSON *obj) {
    int n = cJSON_GetArraySize(obj);
    if (n < 2) return NULL;
    const char **keys = malloc((size_t)n * sizeof *keys);
    if (!keys) return dup_oom;
    int i = 0;
    for (const cJSON *c = obj->child; c && i < n; c = c->next) keys[i++] = c->string ? c->string : "";
    qsort(keys, (size_t)i, sizeof *keys, cmp_str_ptr);
    const char *dup = NULL;
    for (int k = 1; k < i && !dup; k++)
        if (strcmp(keys[k - 1], keys[k]) == 0) dup = keys[k];
    free(keys);
    return dup;
}

// Entries in offset order, for R9.
typedef struct { uint64_t begin, end; int64_t index; } span;
static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

// ---------------------------------------------------------------------------
// reader, one step per group of rules:
//   check_header_span (R1, R2) -> parse_header_json (R3) -> duplicate_key on
//   the top object (R4) -> for each key: read_metadata (R4, R5) or
//   read_entry (R4, R6, R7, R8) -> check_tiling (R9)

static int out_of_memory(const char *path) {
    return ldm_error("%s: out of memory while reading the safetensors header", path);
}

// R1, R2: the 8 length bytes are there, and the header they announce is not
// absurdly large and lies inside the file. -> *n_header.
static int check_header_span(const uint8_t *buf, size_t size, const char *path,
                             uint64_t *n_header) {
    if (size < 8)
        return ldm_error("%s: file is %zu bytes, too short for the 8-byte safetensors header length",
                         path, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    if (n > ST_MAX_HEADER)
        return ldm_error("%s: header length %llu is over the 100 MB (1e8 bytes) limit: corrupt or "
                         "not a safetensors file", path, (unsigned long long)n);
    if (n > size - 8)
        return ldm_error("%s: header length %llu runs past the end of the file (%zu bytes; at most "
                         "%zu available): truncated file?", path, (unsigned long long)n,
                         size, size - 8);
    if (n < 2)
        return ldm_error("%s: header length %llu is too short for a JSON object", path,
                         (unsigned long long)n);
    *n_header = n;
    return 0;
}

// R3: the header is strict UTF-8 without NUL, one JSON object, then only
// whitespace padding. Returns the parsed object (cJSON_Delete it) or NULL.
static cJSON *parse_header_json(const uint8_t *header, uint64_t n_header, const char *path) {
    size_t bad = utf8_bad_offset(header, (size_t)n_header);
    if (bad != n_header) {
        ldm_error("%s: header byte %zu (0x%02x) is %s: the header must be UTF-8 JSON", path,
                  bad, header[bad], header[bad] ? "not valid UTF-8" : "a NUL byte");
        return NULL;
    }
    const char *text = (const char *)header, *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, (size_t)n_header, &end, 0);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= text && at <= text + n_header ? (size_t)(at - text) : 0;
        ldm_error("%s: header is not valid JSON (error near header byte %zu)", path, off);
        return NULL;
    }
    for (const char *p = end; p && p < text + n_header; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            ldm_error("%s: header has bytes after the JSON object at header byte %zu "
                      "(only space padding is allowed)", path, (size_t)(p - text));
            return NULL;
        }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        ldm_error("%s: header is JSON but not an object {...}", path);
        return NULL;
    }
    return root;
}

// R4, R5: "__metadata__" is an object of strings with no duplicate key;
// copied into f->meta_keys / f->meta_values.
static int read_metadata(ldm_tensor_file *f, const cJSON *item, const char *path) {
    const char *dup;
    if (!cJSON_IsObject(item))
        return ldm_error("%s: __metadata__ must be an object of strings", path);
    if ((dup = duplicate_key(item)))
        return ldm_error("%s: __metadata__: duplicate key '%s'", path, dup);
    int nm = cJSON_GetArraySize(item);
    f->meta_keys = calloc((size_t)(nm ? nm : 1), sizeof(char *));
    f->meta_values = calloc((size_t)(nm ? nm : 1), sizeof(char *));
    if (!f->meta_keys || !f->meta_values) return out_of_memory(path);
    for (const cJSON *m = item->child; m; m = m->next) {
        if (!cJSON_IsString(m))
            return ldm_error("%s: __metadata__ value of '%s' is not a string", path,
                             m->string ? m->string : "");
        f->meta_keys[f->n_meta] = strdup(m->string ? m->string : "");
        f->meta_values[f->n_meta] = strdup(m->valuestring);
        f->n_meta++;
        if (!f->meta_keys[f->n_meta - 1] || !f->meta_values[f->n_meta - 1])
            return out_of_memory(path);
    }
    return 0;
}

// One tensor's header entry -> *e (its bytes point into data):
//   R4  no duplicate field in the entry
//   R6  dtype known; shape at most LDM_MAX_DIMS non-negative integers;
//       data_offsets two non-negative integers b <= e
//   R7  numel * dtype size, overflow-checked, equals e - b
//   R8  the span lies inside the data buffer
// e->name is set last, so a failed entry owns nothing.
static int read_entry(ldm_tensor_entry *e, const cJSON *item, const char *name,
                      const uint8_t *data, uint64_t data_size, const char *path) {
    const char *dup;
    if (!cJSON_IsObject(item))
        return ldm_error("%s: tensor '%s': header entry is not an object "
                         "{dtype, shape, data_offsets}", path, name);
    if ((dup = duplicate_key(item)))
        return ldm_error("%s: tensor '%s': duplicate field '%s'", path, name, dup);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo))
        return ldm_error("%s: tensor '%s': needs \"dtype\" (string), \"shape\" (array) and "
                         "\"data_offsets\" (array)%s%s%s", path, name,
                         cJSON_IsString(jd) ? "" : "; dtype missing or not a string",
                         cJSON_IsArray(js) ? "" : "; shape missing or not an array",
                         cJSON_IsArray(jo) ? "" : "; data_offsets missing or not an array");
    // R6
    if (parse_dtype(jd->valuestring, &e->dtype) != 0)
        return ldm_error("%s: tensor '%s': unknown or unsupported dtype \"%.32s\" (expected F32, "
                         "F16, BF16, F64, I64, I32, I16, I8, U8 or BOOL)", path, name,
                         jd->valuestring);
    int ndim = cJSON_GetArraySize(js);
    if (ndim > LDM_MAX_DIMS)
        return ldm_error("%s: tensor '%s': shape has %d dims, more than the %d supported", path,
                         name, ndim, LDM_MAX_DIMS);
    e->ndim = ndim;
    int d = 0;
    for (const cJSON *jdim = js->child; jdim; jdim = jdim->next, d++) {
        uint64_t v;
        if (json_uint(jdim, &v) != 0)
            return ldm_error("%s: tensor '%s': shape dim %d is not a non-negative integer "
                             "(below 2^53)", path, name, d);
        e->shape[d] = (int64_t)v;
    }
    uint64_t off[2];
    if (cJSON_GetArraySize(jo) != 2 || json_uint(jo->child, &off[0]) != 0 ||
        json_uint(jo->child->next, &off[1]) != 0)
        return ldm_error("%s: tensor '%s': data_offsets must be two non-negative integers "
                         "[begin, end]", path, name);
    char shp[160];
    ldm_shape_str(shp, sizeof shp, e->shape, e->ndim);
    if (off[0] > off[1])
        return ldm_error("%s: tensor '%s': data_offsets [%llu,%llu) end before they begin", path,
                         name, (unsigned long long)off[0], (unsigned long long)off[1]);
    // R7
    int64_t numel = ldm_shape_numel(e->shape, e->ndim);
    uint64_t esize = (uint64_t)ldm_dtype_size(e->dtype);
    if (numel < 0 || (uint64_t)numel > UINT64_MAX / esize)
        return ldm_error("%s: tensor '%s': %s %s has more elements than 64-bit sizes can hold",
                         path, name, ldm_dtype_name(e->dtype), shp);
    uint64_t need = (uint64_t)numel * esize;
    if (off[1] - off[0] != need)
        return ldm_error("%s: tensor '%s': data_offsets [%llu,%llu) hold %llu bytes but %s %s "
                         "needs %llu", path, name, (unsigned long long)off[0],
                         (unsigned long long)off[1], (unsigned long long)(off[1] - off[0]),
                         ldm_dtype_name(e->dtype), shp, (unsigned long long)need);
    // R8
    if (off[1] > data_size)
        return ldm_error("%s: tensor '%s': data_offsets [%llu,%llu) run past the end of the data "
                         "buffer (%llu bytes after the header): truncated file?", path, name,
                         (unsigned long long)off[0], (unsigned long long)off[1],
                         (unsigned long long)data_size);
    e->numel = numel;
    e->data = data + off[0];
    e->nbytes = need;
    e->name = strdup(name);
    if (!e->name) return out_of_memory(path);
    return 0;
}

// R9: sorted by offset, the tensors tile the data buffer exactly: the first
// starts at 0, each starts where the previous one ends (no gap, no overlap),
// and the last ends at the end of the file (no trailing bytes).
static int check_tiling(const ldm_tensor_file *f, const uint8_t *data, uint64_t data_size,
                        const char *path) {
    int64_t n = f->n_entries;
    span *sp = malloc((size_t)(n ? n : 1) * sizeof *sp);
    if (!sp) return out_of_memory(path);
    for (int64_t i = 0; i < n; i++) {
        sp[i].begin = (uint64_t)(f->entries[i].data - data);
        sp[i].end = sp[i].begin + f->entries[i].nbytes;
        sp[i].index = i;
    }
    qsort(sp, (size_t)n, sizeof *sp, cmp_span);
    uint64_t pos = 0;
    const char *prev = NULL;
    int rc = 0;
    for (int64_t k = 0; k < n && !rc; k++) {
        const char *name = f->entries[sp[k].index].name;
        if (sp[k].begin > pos && prev)
            rc = ldm_error("%s: tensor '%s': data_offsets [%llu,%llu) leave a gap of %llu bytes "
                           "after tensor '%s' (ends at %llu); tensors must be contiguous",
                           path, name, (unsigned long long)sp[k].begin,
                           (unsigned long long)sp[k].end,
                           (unsigned long long)(sp[k].begin - pos), prev,
                           (unsigned long long)pos);
        else if (sp[k].begin > pos)
            rc = ldm_error("%s: tensor '%s': data_offsets [%llu,%llu) leave a gap of %llu bytes "
                           "at the start of the data buffer (the first tensor must start at 0)",
                           path, name, (unsigned long long)sp[k].begin,
                           (unsigned long long)sp[k].end, (unsigned long long)sp[k].begin);
        else if (sp[k].begin < pos)
            rc = ldm_error("%s: tensor '%s': data_offsets [%llu,%llu) overlap tensor '%s' "
                           "(which ends at %llu)", path, name, (unsigned long long)sp[k].begin,
                           (unsigned long long)sp[k].end, prev ? prev : "?",
                           (unsigned long long)pos);
        pos = sp[k].end;
        prev = name;
    }
    free(sp);
    if (rc) return rc;
    if (pos != data_size) {
        if (prev)
            return ldm_error("%s: %llu trailing bytes after the last tensor ('%s' ends at %llu, "
                             "the data buffer holds %llu bytes)", path,
                             (unsigned long long)(data_size - pos), prev, (unsigned long long)pos,
                             (unsigned long long)data_size);
        return ldm_error("%s: %llu trailing bytes after the header, but the header lists no "
                         "tensors", path, (unsigned long long)data_size);
    }
    return 0;
}

int ldm_safetensors_parse(ldm_tensor_file *f, const uint8_t *buf, size_t size, const char *path) {
    memset(f, 0, sizeof *f);
    if (!path) path = "<buffer>";
    uint64_t n_header = 0;
    if (check_header_span(buf, size, path, &n_header)) return LDM_ERR;    // R1, R2
    const uint8_t *header = buf + 8;
    const uint8_t *data = buf + 8 + n_header;
    uint64_t data_size = size - 8 - n_header;
    cJSON *root = parse_header_json(header, n_header, path);               // R3
    if (!root) return LDM_ERR;
    const char *dup = duplicate_key(root);                                 // R4 (top level)
    if (dup) {
        ldm_error("%s: duplicate key '%s' in the header (each tensor name must appear once)",
                  path, dup);
        cJSON_Delete(root);
        return LDM_ERR;
    }
    int n_items = cJSON_GetArraySize(root);
    f->path = strdup(path);
    f->format = "safetensors";
    f->entries = calloc((size_t)(n_items ? n_items : 1), sizeof *f->entries);
    int rc = !f->path || !f->entries ? out_of_memory(path) : 0;
    for (const cJSON *item = root->child; item && !rc; item = item->next) {
        const char *name = item->string ? item->string : "";
        if (strcmp(name, "__metadata__") == 0) {
            rc = read_metadata(f, item, path);                             // R5
        } else {
            rc = read_entry(&f->entries[f->n_entries], item, name, data, data_size, path);
            if (!rc) f->n_entries++;                                       // R6, R7, R8
        }
    }
    if (!rc) rc = check_tiling(f, data, data_size, path);                  // R9
    cJSON_Delete(root);
    if (rc) {
        // ldm_tensor_file_close frees names/meta/path; the map is NULL here.
        ldm_tensor_file_close(f);
        return LDM_ERR;
    }
    return 0;
}

// ---------------------------------------------------------------------------
// writer

static int write_all(FILE *fp, const void *p, size_t n) { return fwrite(p, 1, n, fp) == n ? 0 : -1; }

// names[n], tensors_host[n] (fp32 in host memory) -> path, written to
// path.tmp and renamed. Header keys in the given order; padded to 8 bytes.
int ldm_safetensors_write(const char *path, int n, const char *const *names,
                          const ldm_tensor *const *tensors_host) {
    if (n < 0) return ldm_error("%s: negative tensor count %d", path, n);
    for (int i = 0; i < n; i++) {
        if (!names[i] || !tensors_host[i]) return ldm_error("%s: tensor %d has no name or data", path, i);
        ldm_dtype dt = tensors_host[i]->dtype;
        if (dt != LDM_DTYPE_F32 && dt != LDM_DTYPE_F16 && dt != LDM_DTYPE_BF16)
            return ldm_error("%s: tensor '%s' is %s; F32, F16 or BF16 can be written", path,
                             names[i], ldm_dtype_name(dt));
        if (strcmp(names[i], "__metadata__") == 0)
            return ldm_error("%s: '__metadata__' is reserved and cannot name a tensor", path);
        for (int k = 0; k < i; k++)
            if (strcmp(names[k], names[i]) == 0)
                return ldm_error("%s: tensor '%s' given twice", path, names[i]);
        if (utf8_bad_offset((const uint8_t *)names[i], strlen(names[i])) != strlen(names[i]))
            return ldm_error("%s: tensor name '%s' is not valid UTF-8", path, names[i]);
    }
    cJSON *root = cJSON_CreateObject();
    if (!root) return ldm_error("%s: out of memory", path);
    uint64_t pos = 0;
    char num[32];
    for (int i = 0; i < n; i++) {
        const ldm_tensor *t = tensors_host[i];
        cJSON *obj = cJSON_AddObjectToObject(root, names[i]);
        cJSON *shape = obj ? cJSON_AddArrayToObject(obj, "shape") : NULL;
        cJSON *offs = NULL;
        if (obj) cJSON_AddStringToObject(obj, "dtype", ldm_dtype_name(t->dtype));
        if (shape) {
            for (int d = 0; d < t->ndim; d++) {
                snprintf(num, sizeof num, "%lld", (long long)t->shape[d]);
                cJSON_AddItemToArray(shape, cJSON_CreateRaw(num));
            }
            offs = cJSON_AddArrayToObject(obj, "data_offsets");
        }
        if (!offs) { cJSON_Delete(root); return ldm_error("%s: out of memory", path); }
        uint64_t nb = (uint64_t)t->numel * ldm_tensor_elem_size(t->dtype);
        snprintf(num, sizeof num, "%llu", (unsigned long long)pos);
        cJSON_AddItemToArray(offs, cJSON_CreateRaw(num));
        snprintf(num, sizeof num, "%llu", (unsigned long long)(pos + nb));
        cJSON_AddItemToArray(offs, cJSON_CreateRaw(num));
        pos += nb;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) return ldm_error("%s: out of memory", path);
    size_t len = strlen(json);
    size_t padded = (len + 7) / 8 * 8;

    size_t tlen = strlen(path) + 5;
    char *tmp = malloc(tlen);
    if (!tmp) { free(json); return ldm_error("%s: out of memory", path); }
    snprintf(tmp, tlen, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        int err = errno;
        free(json);
        free(tmp);
        return ldm_error("%s: cannot create %s.tmp: %s", path, path, strerror(err));
    }
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int bad = write_all(fp, lenb, 8) || write_all(fp, json, len);
    for (size_t i = len; i < padded && !bad; i++) bad = fputc(' ', fp) == EOF;
    free(json);
    for (int i = 0; i < n && !bad; i++) {
        // little-endian: byte-swap on a big-endian host (none supported today).
        const ldm_tensor *t = tensors_host[i];
        if (t->numel) bad = write_all(fp, t->data, (size_t)t->numel * ldm_tensor_elem_size(t->dtype));
    }
    if (fclose(fp) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        free(tmp);
        return ldm_error("%s: write failed: %s", path, strerror(err));
    }
    free(tmp);
    return 0;
}
