/*
 * tests/test_npy.c -- .npy read/write (ldm/io/npy.c) and named dumps (ldm/io/dump.c).
 *
 * 1. Files written by numpy's np.save (float32, float64, float16, 0-d) read
 *    as the float32 values numpy itself converts to (astype(float32)).
 * 2. Write -> read round-trip for 0-d, 1-d, 3-d and zero-size arrays; the
 *    header is numpy's spelling and the preamble a multiple of 64 bytes.
 * 3. Every .npy in tests/fixtures/io/bad/ is rejected with the expected
 *    message (Fortran order, big-endian, int dtype, truncated, trailing bytes,
 *    bad magic, empty).
 * 4. ldm_dump_set_dir(DIR) + prefix "step003/" writes DIR/step003/<name>.npy,
 *    creating the folder; nothing is written when no folder is set;
 *    ldm_dump_host writes a host array the same way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ldm/io/dump.h"
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "tests/test.h"

#define DIR "tests/fixtures/io/"

static void test_numpy_files(void) {
    static const char *kinds[] = {"f32", "f64", "f16"};
    for (int k = 0; k < 3; k++) {
        char path[256], exp_path[256], name[300];
        snprintf(path, sizeof path, DIR "np_%s.npy", kinds[k]);
        snprintf(exp_path, sizeof exp_path, DIR "np_expected_%s.npy", kinds[k]);
        float *got, *exp;
        int64_t gs[8], es[8];
        int gn, en;
        if (!test_check(ldm_npy_read_raw(&got, gs, &gn, path) == 0, path, "%s", ldm_last_error()))
            continue;
        if (ldm_npy_read_raw(&exp, es, &en, exp_path) == 0) {
            snprintf(name, sizeof name, "np.save %s [3,4,5] -> float32", kinds[k]);
            int ok = gn == 3 && gs[0] == 3 && gs[1] == 4 && gs[2] == 5;
            if (test_check(ok, name, "shape differs (ndim %d)", gn))
                test_close(name, got, exp, 60, 0, 0);   // conversions are exact
            free(exp);
        }
        free(got);
    }
    // 0-d array into a tensor on the ref backend
    ldm_tensor t;
    int rc = ldm_npy_read(&t, &ldm_ops_ref, DIR "np_scalar.npy");
    test_check(rc == 0 && t.ndim == 0 && t.numel == 1 && t.data[0] == 2.5f,
               "np.save 0-d float32 -> tensor", "%s", ldm_last_error());
    ldm_tensor_free(&t);
}

static void test_roundtrip(const char *tmpdir) {
    float d[24];
    for (int i = 0; i < 24; i++) d[i] = (float)i * 0.37f - 3.0f;
    struct { int ndim; int64_t shape[3]; } cases[] = {{0, {0}}, {1, {7}}, {3, {2, 3, 4}},
                                                      {2, {0, 5}}};
    for (int c = 0; c < 4; c++) {
        char path[512], name[128];
        snprintf(path, sizeof path, "%s/rt%d.npy", tmpdir, c);
        int rc = ldm_npy_write(path, d, cases[c].shape, cases[c].ndim);
        float *back;
        int64_t s[8];
        int nd;
        snprintf(name, sizeof name, "npy round-trip, %d dims", cases[c].ndim);
        if (!test_check(rc == 0 && ldm_npy_read_raw(&back, s, &nd, path) == 0, name, "%s",
                        ldm_last_error()))
            continue;
        int64_t n = 1;
        int ok = nd == cases[c].ndim;
        for (int i = 0; ok && i < nd; i++) { ok = s[i] == cases[c].shape[i]; n *= s[i]; }
        if (test_check(ok, name, "shape differs")) test_close(name, back, d, n, 0, 0);
        free(back);
        size_t size;
        char *raw = test_read_file(path, &size);
        unsigned hlen = raw ? (uint8_t)raw[8] | ((uint8_t)raw[9] << 8) : 0;
        snprintf(name, sizeof name, "npy header of %d dims: v1.0, 64-byte aligned, ends '\\n'",
                 cases[c].ndim);
        test_check(raw && raw[6] == 1 && (10 + hlen) % 64 == 0 && raw[10 + hlen - 1] == '\n' &&
                   size == 10 + hlen + (size_t)n * 4, name, "hlen %u size %zu", hlen, size);
        free(raw);
    }
    // a tensor on the ref backend
    ldm_tensor t = ldm_tensor_new(&ldm_ops_ref, LDM_SHAPE(2, 2));
    for (int i = 0; i < 4; i++) t.data[i] = (float)i;
    char path[512];
    snprintf(path, sizeof path, "%s/tensor.npy", tmpdir);
    float *back;
    int64_t s[8];
    int nd;
    int rc = ldm_npy_write_tensor(path, &t);
    test_check(rc == 0 && ldm_npy_read_raw(&back, s, &nd, path) == 0 && nd == 2 &&
               back[3] == 3.0f, "npy write_tensor", "%s", ldm_last_error());
    if (rc == 0) free(back);
    ldm_tensor_free(&t);
    snprintf(path, sizeof path, "%s/no/such/folder/x.npy", tmpdir);
    test_check(ldm_npy_write(path, d, LDM_SHAPE(2)) != 0 && ldm_last_error()[0],
               "npy write into a missing folder fails with a message", "%s", ldm_last_error());
}

static void test_bad(void) {
    size_t n;
    char *man = test_read_file(DIR "bad/MANIFEST.tsv", &n);
    if (!test_check(man != NULL, "bad/MANIFEST.tsv", "missing; run make fixtures")) return;
    for (char *line = strtok(man, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "npy\t", 4) != 0) continue;
        char *file = line + 4, *sub = strchr(file, '\t');
        if (sub) *sub++ = '\0'; else sub = (char *)"";
        char path[512], name[600];
        snprintf(path, sizeof path, DIR "bad/%s", file);
        float *data = (float *)1;
        int64_t s[8];
        int nd;
        ldm_clear_error();
        int rc = ldm_npy_read_raw(&data, s, &nd, path);
        snprintf(name, sizeof name, "bad/%s rejected", file);
        test_check(rc != 0 && data == NULL && strstr(ldm_last_error(), sub), name,
                   "rc %d, message \"%s\", expected \"%s\"", rc, ldm_last_error(), sub);
        if (rc == 0) free(data);
        else printf("          -> %s\n", ldm_last_error());
    }
    free(man);
}

static void test_dump(const char *tmpdir) {
    ldm_tensor t = ldm_tensor_new(&ldm_ops_ref, LDM_SHAPE(1, 2, 3));
    for (int i = 0; i < 6; i++) t.data[i] = (float)i;
    char dir[512], path[700];
    snprintf(dir, sizeof dir, "%s/dump", tmpdir);
    ldm_dump_set_dir(NULL);
    ldm_dump(&t, "off.%d", 1);
    snprintf(path, sizeof path, "%s/off.1.npy", dir);
    test_check(!ldm_dump_enabled() && access(path, F_OK) != 0, "no dump without a dump folder", "%s", "a file was written");
    ldm_dump_set_dir(dir);
    ldm_dump_set_prefix("step003/");
    ldm_dump(&t, "unet.down_blocks.%d.resnets.%d", 0, 1);
    ldm_dump_set_prefix(NULL);
    ldm_dump(&t, "vae.decoder");
    float *back;
    int64_t s[8];
    int nd;
    snprintf(path, sizeof path, "%s/step003/unet.down_blocks.0.resnets.1.npy", dir);
    int rc = ldm_npy_read_raw(&back, s, &nd, path);
    test_check(ldm_dump_enabled() && rc == 0 && nd == 3 && s[2] == 3 && back[5] == 5.0f,
               "dump with prefix step003/ creates the folder", "%s", ldm_last_error());
    if (rc == 0) free(back);
    snprintf(path, sizeof path, "%s/vae.decoder.npy", dir);
    test_check(access(path, F_OK) == 0, "dump after clearing the prefix", "%s missing", path);
    const float host[4] = {1, 2, 3, 4};   // a host array, e.g. a sampler's latent
    ldm_dump_host(host, LDM_SHAPE(1, 2, 2), "step%03d/latent", 7);
    snprintf(path, sizeof path, "%s/step007/latent.npy", dir);
    rc = ldm_npy_read_raw(&back, s, &nd, path);
    test_check(rc == 0 && nd == 3 && s[0] == 1 && s[1] == 2 && s[2] == 2 && back[3] == 4.0f,
               "ldm_dump_host writes a host array [1,2,2]", "%s", ldm_last_error());
    if (rc == 0) free(back);
    ldm_dump_set_dir(NULL);
    ldm_tensor_free(&t);
}

int main(void) {
    test_numpy_files();
    char tmpdir[256];
    snprintf(tmpdir, sizeof tmpdir, "%s/ldm-test-npy-XXXXXX", P_tmpdir);
    if (test_check(mkdtemp(tmpdir) != NULL, "temporary folder", "mkdtemp failed")) {
        test_roundtrip(tmpdir);
        test_dump(tmpdir);
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) printf("  (could not remove %s)\n", tmpdir);
    }
    test_bad();
    return test_summary();
}
