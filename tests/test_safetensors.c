/*
 * tests/test_safetensors.c -- the checkpoint file reader (ldm/io/tensorfile.c,
 * ldm/io/safetensors.c) and weight loading by name (ldm/io/weights.c).
 *
 * 1. Files written by the Python `safetensors` package (F32/F16/BF16 and the
 *    integer dtypes, with __metadata__) list the tensors, shapes and metadata
 *    of tests/fixtures/io/expected.json, and every tensor converts to the
 *    float32 values torch gives (tensor.float()), bit for bit (NaN as NaN).
 * 2. F16 -> F32 for all 65536 bit patterns equals the compiler's _Float16
 *    conversion (an independent implementation), bit for bit.
 * 3. ldm_safetensors_write -> read round-trip.
 * 4. Every safetensors file in tests/fixtures/io/bad/ (MANIFEST.tsv) is
 *    rejected with a message containing the expected rule, both through
 *    ldm_tensor_file_open (mmap) and ldm_safetensors_parse on an exact-size
 *    heap copy (so ASan sees any read past the end).
 * 5. ldm_weights_load: diffusers names, prefix, [C,C,1,1] for [C,C], missing
 *    tensor and wrong shape reported with the name and both shapes.
 * Fixtures: tools/reference/fixtures_io.py.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"
#include "ldm/io/weights.h"
#include "tests/test.h"

#define DIR "tests/fixtures/io/"

// Bit-exact comparison of n floats (NaN matches NaN). Prints mismatches count.
static int bits_equal(const char *name, const float *got, const float *exp, int64_t n) {
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &got[i], 4);
        memcpy(&b, &exp[i], 4);
        int same = (isnan(got[i]) && isnan(exp[i])) || a == b;
        if (!same) { bad++; if (first < 0) first = i; }
    }
    return test_check(bad == 0, name, "%lld of %lld values differ, first [%lld] got %.9g exp %.9g",
                      (long long)bad, (long long)n, (long long)first,
                      first >= 0 ? got[first] : 0.0, first >= 0 ? exp[first] : 0.0);
}

// ---------------------------------------------------------------------------
static void test_valid_files(cJSON *expected) {
    cJSON *files = cJSON_GetObjectItem(expected, "safetensors");
    for (cJSON *fj = files ? files->child : NULL; fj; fj = fj->next) {
        char path[512], name[600];
        snprintf(path, sizeof path, DIR "%s", fj->string);
        ldm_tensor_file f;
        int rc = ldm_tensor_file_open(&f, path);
        snprintf(name, sizeof name, "%s opens", fj->string);
        if (!test_check(rc == 0, name, "%s", ldm_last_error())) continue;
        cJSON *tensors = cJSON_GetObjectItem(fj, "tensors");
        snprintf(name, sizeof name, "%s: tensor count", fj->string);
        test_check(f.n_entries == cJSON_GetArraySize(tensors), name, "got %lld expected %d",
                   (long long)f.n_entries, cJSON_GetArraySize(tensors));
        for (cJSON *tj = tensors->child; tj; tj = tj->next) {
            const char *tname = cJSON_GetObjectItem(tj, "name")->valuestring;
            const ldm_tensor_entry *e = ldm_tensor_file_find(&f, tname);
            snprintf(name, sizeof name, "%s: '%s' dtype/shape", fj->string, tname);
            cJSON *shape = cJSON_GetObjectItem(tj, "shape");
            int ok = e && !strcmp(ldm_dtype_name(e->dtype),
                                  cJSON_GetObjectItem(tj, "dtype")->valuestring) &&
                     e->ndim == cJSON_GetArraySize(shape);
            for (int d = 0; ok && d < e->ndim; d++)
                ok = e->shape[d] == (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
            if (!test_check(ok, name, "%s", e ? "dtype or shape differ" : "not found")) continue;

            float *exp;
            int64_t eshape[LDM_MAX_DIMS];
            int endim;
            char npy[600];
            snprintf(npy, sizeof npy, DIR "%s", cJSON_GetObjectItem(tj, "npy")->valuestring);
            if (!test_check(ldm_npy_read_raw(&exp, eshape, &endim, npy) == 0, npy, "%s",
                            ldm_last_error()))
                continue;
            float *got = malloc((size_t)(e->numel ? e->numel : 1) * sizeof(float));
            snprintf(name, sizeof name, "%s: '%s' to f32 (%s)", fj->string, tname,
                     ldm_dtype_name(e->dtype));
            if (test_check(ldm_entry_to_f32(got, e) == 0, name, "%s", ldm_last_error())) {
                // finite values first (prints max-abs), then bit-exactness of all
                float *gf = malloc((size_t)(e->numel ? e->numel : 1) * sizeof(float));
                float *ef = malloc((size_t)(e->numel ? e->numel : 1) * sizeof(float));
                int64_t nf = 0;
                for (int64_t i = 0; i < e->numel; i++)
                    if (isfinite(exp[i])) { gf[nf] = got[i]; ef[nf] = exp[i]; nf++; }
                test_close(name, gf, ef, nf, 0.0, 0.0);
                strcat(name, " bit-exact");
                bits_equal(name, got, exp, e->numel);
                free(gf);
                free(ef);
            }
            free(got);
            free(exp);
        }
        // metadata
        cJSON *meta = cJSON_GetObjectItem(fj, "metadata");
        int ok = f.n_meta == cJSON_GetArraySize(meta);
        for (int i = 0; ok && i < f.n_meta; i++) {
            cJSON *v = cJSON_GetObjectItem(meta, f.meta_keys[i]);
            ok = v && !strcmp(v->valuestring, f.meta_values[i]);
        }
        snprintf(name, sizeof name, "%s: __metadata__ (%d entries)", fj->string, f.n_meta);
        test_check(ok, name, "metadata differs from expected.json");
        snprintf(name, sizeof name, "%s: find of an absent name is NULL", fj->string);
        test_check(ldm_tensor_file_find(&f, "no.such.tensor") == NULL, name, "found something");
        ldm_tensor_file_close(&f);
    }
}

// ---------------------------------------------------------------------------
static void test_f16_exhaustive(void) {
    static uint8_t raw[65536 * 2];
    static float got[65536], exp[65536];
    for (int i = 0; i < 65536; i++) {
        raw[2 * i] = (uint8_t)(i & 0xff);
        raw[2 * i + 1] = (uint8_t)(i >> 8);
        _Float16 h;
        uint16_t b = (uint16_t)i;
        memcpy(&h, &b, 2);
        exp[i] = (float)h;   // the compiler's conversion: an independent implementation
    }
    ldm_tensor_entry e = {.name = (char *)"all_f16", .dtype = LDM_DTYPE_F16, .ndim = 1,
                          .shape = {65536}, .numel = 65536, .data = raw, .nbytes = sizeof raw};
    ldm_entry_to_f32(got, &e);
    bits_equal("F16 -> F32, all 65536 bit patterns vs _Float16", got, exp, 65536);
}

// ---------------------------------------------------------------------------
static void test_write_roundtrip(const char *tmpdir) {
    const struct ldm_ops *ops = &ldm_ops_ref;
    float a[6] = {1, -2, 3.5f, INFINITY, -0.0f, 1e-40f}, s = 0.25f, b[8];
    for (int i = 0; i < 8; i++) b[i] = (float)i / 7.0f;
    ldm_tensor ta = {.data = a, .ndim = 2, .shape = {2, 3}, .numel = 6, .ops = ops};
    ldm_tensor ts = {.data = &s, .ndim = 0, .numel = 1, .ops = ops};
    ldm_tensor tz = {.data = NULL, .ndim = 2, .shape = {0, 4}, .numel = 0, .ops = ops};
    ldm_tensor tb = {.data = b, .ndim = 4, .shape = {2, 2, 2, 1}, .numel = 8, .ops = ops};
    const char *names[] = {"a.weight", "scalar", "zero\"size\\name", "bé.漢字"};
    const ldm_tensor *ts_[] = {&ta, &ts, &tz, &tb};
    char path[512];
    snprintf(path, sizeof path, "%s/rt.safetensors", tmpdir);
    int rc = ldm_safetensors_write(path, 4, names, ts_);
    test_check(rc == 0, "safetensors write", "%s", ldm_last_error());
    ldm_tensor_file f;
    rc = ldm_tensor_file_open(&f, path);
    if (!test_check(rc == 0, "safetensors write -> read", "%s", ldm_last_error())) return;
    test_check(f.n_entries == 4, "round-trip: 4 tensors", "got %lld", (long long)f.n_entries);
    for (int i = 0; i < 4; i++) {
        const ldm_tensor_entry *e = ldm_tensor_file_find(&f, names[i]);
        char name[128];
        snprintf(name, sizeof name, "round-trip '%s'", names[i]);
        int ok = e && e->dtype == LDM_DTYPE_F32 && e->ndim == ts_[i]->ndim &&
                 e->numel == ts_[i]->numel;
        for (int d = 0; ok && d < e->ndim; d++) ok = e->shape[d] == ts_[i]->shape[d];
        if (!test_check(ok, name, "missing or shape differs")) continue;
        float out[8];
        ldm_entry_to_f32(out, e);
        bits_equal(name, out, ts_[i]->data ? ts_[i]->data : out, e->numel);
    }
    ldm_tensor_file_close(&f);
    // rejected inputs
    const char *dup[] = {"x", "x"};
    const ldm_tensor *dupt[] = {&ta, &ta};
    snprintf(path, sizeof path, "%s/dup.safetensors", tmpdir);
    rc = ldm_safetensors_write(path, 2, dup, dupt);
    test_check(rc != 0 && access(path, F_OK) != 0, "write refuses duplicate names, no file left",
               "rc %d", rc);
}

// ---------------------------------------------------------------------------
static void test_bad_files(void) {
    size_t n;
    char *man = test_read_file(DIR "bad/MANIFEST.tsv", &n);
    if (!test_check(man != NULL, "bad/MANIFEST.tsv", "missing; run make fixtures")) return;
    int count = 0;
    for (char *line = strtok(man, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char *kind = line, *file = strchr(kind, '\t');
        if (!file) continue;
        *file++ = '\0';
        char *sub = strchr(file, '\t');
        if (sub) *sub++ = '\0'; else sub = (char *)"";
        if (strcmp(kind, "st") != 0) continue;
        char path[512], name[600];
        snprintf(path, sizeof path, DIR "bad/%s", file);

        ldm_clear_error();
        ldm_tensor_file f;
        int rc = ldm_tensor_file_open(&f, path);
        const char *msg = ldm_last_error();
        snprintf(name, sizeof name, "bad/%s rejected (open)", file);
        test_check(rc != 0 && msg[0] && strstr(msg, sub) && f.entries == NULL && f.map == NULL,
                   name, "rc %d, message \"%s\", expected to contain \"%s\"", rc, msg, sub);
        if (rc == 0) ldm_tensor_file_close(&f);
        if (rc != 0) printf("          -> %s\n", msg);

        // the parser alone, on an exact-size heap copy (ASan catches over-reads)
        size_t size;
        char *buf = test_read_file(path, &size);
        if (buf && size >= 9 && memcmp(buf, "PK\3\4", 4) != 0 && buf[8] == '{') {
            uint8_t *exact = malloc(size);
            memcpy(exact, buf, size);
            ldm_clear_error();
            rc = ldm_safetensors_parse(&f, exact, size, file);
            snprintf(name, sizeof name, "bad/%s rejected (parse)", file);
            test_check(rc != 0 && ldm_last_error()[0] && strstr(ldm_last_error(), sub), name,
                       "rc %d, message \"%s\"", rc, ldm_last_error());
            if (rc == 0) ldm_tensor_file_close(&f);
            free(exact);
        }
        free(buf);
        count++;
    }
    test_check(count >= 30, "bad safetensors corpus size", "only %d files", count);
    free(man);
    // not a file at all
    ldm_tensor_file f;
    int rc = ldm_tensor_file_open(&f, DIR "does-not-exist.safetensors");
    test_check(rc != 0 && strstr(ldm_last_error(), "does-not-exist"), "missing file rejected",
               "%s", ldm_last_error());
    rc = ldm_tensor_file_open(&f, DIR);
    test_check(rc != 0 && ldm_last_error()[0], "a folder is rejected", "%s", ldm_last_error());
}

// ---------------------------------------------------------------------------
static void test_weights(void) {
    ldm_tensor_file f;
    if (!test_check(ldm_tensor_file_open(&f, DIR "st_f16.safetensors") == 0, "weights: open",
                    "%s", ldm_last_error()))
        return;
    // .dtype F32: these checks are about the exact F16 -> F32 widening (kept
    // as stored, the weights would stay F16: tests/test_f16.c checks that).
    ldm_weights w = {.file = &f, .comp = LDM_COMP_VAE, .layout = LDM_LAYOUT_DIFFUSERS,
                     .prefix = "", .ops = &ldm_ops_ref, .dtype = LDM_WEIGHTS_F32};
    float *exp;
    int64_t es[LDM_MAX_DIMS];
    int end;
    ldm_tensor t;
    int rc = ldm_weights_load(&t, &w, "conv.weight", LDM_SHAPE(4, 3, 3, 3));
    if (test_check(rc == 0, "weights: load conv.weight [4,3,3,3]", "%s", ldm_last_error()) &&
        ldm_npy_read_raw(&exp, es, &end, DIR "st_f16__conv.weight.npy") == 0) {
        test_close("weights: conv.weight values (F16 -> F32)", t.data, exp, t.numel, 0, 0);
        free(exp);
    }
    ldm_tensor_free(&t);
    // [6,6,1,1] stored, [6,6] expected; through a prefix
    w.prefix = "attn.";
    rc = ldm_weights_load(&t, &w, "to_q.weight", LDM_SHAPE(6, 6));
    test_check(rc == 0 && t.ndim == 2 && t.shape[0] == 6 && t.shape[1] == 6,
               "weights: prefix + [C,C,1,1] accepted as [C,C]", "%s", ldm_last_error());
    if (rc == 0 && ldm_npy_read_raw(&exp, es, &end, DIR "st_f16__attn.to_q.weight.npy") == 0) {
        test_close("weights: attn.to_q.weight values", t.data, exp, t.numel, 0, 0);
        free(exp);
    }
    ldm_tensor_free(&t);
    char key[256];
    test_check(ldm_weights_key(key, sizeof key, &w, "to_q.weight") &&
               !strcmp(key, "attn.to_q.weight"), "weights: key = prefix + name", "%s", key);
    w.prefix = "";
    rc = ldm_weights_load(&t, &w, "conv.weight", LDM_SHAPE(4, 3, 3, 1));
    test_check(rc != 0 && strstr(ldm_last_error(), "conv.weight") &&
               strstr(ldm_last_error(), "[4,3,3,1]") && strstr(ldm_last_error(), "[4,3,3,3]"),
               "weights: wrong shape names tensor, expected and found", "%s", ldm_last_error());
    printf("          -> %s\n", ldm_last_error());
    rc = ldm_weights_load(&t, &w, "mid_block.missing.weight", LDM_SHAPE(3));
    test_check(rc != 0 && strstr(ldm_last_error(), "mid_block.missing.weight") &&
               strstr(ldm_last_error(), "missing"), "weights: missing tensor named", "%s",
               ldm_last_error());
    printf("          -> %s\n", ldm_last_error());
    test_check(w.n_loaded == 2 && w.n_params == 108 + 36, "weights: n_loaded / n_params",
               "%lld / %lld", (long long)w.n_loaded, (long long)w.n_params);
    ldm_tensor_file_close(&f);
}

int main(void) {
    size_t n;
    char *js = test_read_file(DIR "expected.json", &n);
    cJSON *expected = js ? cJSON_Parse(js) : NULL;
    if (test_check(expected != NULL, "expected.json", "missing or invalid; run make fixtures")) {
        test_valid_files(expected);
        cJSON_Delete(expected);
    }
    free(js);
    test_f16_exhaustive();
    char tmpdir[256];
    snprintf(tmpdir, sizeof tmpdir, "%s/ldm-test-st-XXXXXX", P_tmpdir);
    if (test_check(mkdtemp(tmpdir) != NULL, "temporary folder", "mkdtemp failed")) {
        test_write_roundtrip(tmpdir);
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) printf("  (could not remove %s)\n", tmpdir);
    }
    test_bad_files();
    test_weights();
    return test_summary();
}
