/*
 * tests/fuzz/fuzz_pickle.c -- libFuzzer target for the allow-list pickle
 * interpreter of ldm/io/ckpt.c, without the zip around it.
 *
 * The input is taken as the bytes of archive/data.pkl and wrapped here in a
 * stored zip that also holds four storages archive/data/0..3 of 64 bytes, so
 * every mutation reaches the interpreter (a mutated zip mostly fails in the
 * zip reader). Same checks as fuzz_ckpt.c. Seeds: tests/fuzz/seeds/fuzz_pickle/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/tensorfile.h"

static uint8_t *put16(uint8_t *p, uint32_t v) { p[0] = v & 255; p[1] = (v >> 8) & 255; return p + 2; }
static uint8_t *put32(uint8_t *p, uint32_t v) { return put16(put16(p, v & 0xffff), v >> 16); }

// A stored zip of n entries (no CRCs: the reader does not check them).
static size_t make_zip(uint8_t *out, const char *const *names, const uint8_t *const *data,
                       const size_t *sizes, int n) {
    uint8_t *p = out;
    uint32_t offs[8];
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(names[i]);
        offs[i] = (uint32_t)(p - out);
        p = put32(p, 0x04034b50u); p = put16(p, 20); p = put16(p, 0); p = put16(p, 0);
        p = put32(p, 0); p = put32(p, 0); p = put32(p, (uint32_t)sizes[i]); p = put32(p, (uint32_t)sizes[i]);
        p = put16(p, (uint32_t)nl); p = put16(p, 0);
        memcpy(p, names[i], nl); p += nl;
        memcpy(p, data[i], sizes[i]); p += sizes[i];
    }
    uint8_t *cd = p;
    for (int i = 0; i < n; i++) {
        size_t nl = strlen(names[i]);
        p = put32(p, 0x02014b50u); p = put16(p, 20); p = put16(p, 20); p = put16(p, 0); p = put16(p, 0);
        p = put32(p, 0); p = put32(p, 0); p = put32(p, (uint32_t)sizes[i]); p = put32(p, (uint32_t)sizes[i]);
        p = put16(p, (uint32_t)nl); p = put16(p, 0); p = put16(p, 0); p = put16(p, 0); p = put16(p, 0);
        p = put32(p, 0); p = put32(p, offs[i]);
        memcpy(p, names[i], nl); p += nl;
    }
    uint32_t cd_size = (uint32_t)(p - cd), cd_off = (uint32_t)(cd - out);
    p = put32(p, 0x06054b50u); p = put16(p, 0); p = put16(p, 0); p = put16(p, (uint32_t)n);
    p = put16(p, (uint32_t)n); p = put32(p, cd_size); p = put32(p, cd_off); p = put16(p, 0);
    return (size_t)(p - out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1 << 20)) return 0;
    static uint8_t storage[64];
    for (int i = 0; i < 64; i++) storage[i] = (uint8_t)(i * 37);
    const char *names[6] = {"archive/data.pkl", "archive/data/0", "archive/data/1",
                            "archive/data/2", "archive/data/3", "archive/byteorder"};
    const uint8_t *bytes[6] = {data, storage, storage, storage, storage, (const uint8_t *)"little"};
    size_t sizes[6] = {size, 64, 64, 64, 64, 6};
    uint8_t *zip = malloc(size + 1024);
    if (!zip) return 0;
    size_t n = make_zip(zip, names, bytes, sizes, 6);
    uint8_t *buf = malloc(n);  // exact size
    memcpy(buf, zip, n);
    free(zip);
    ldm_tensor_file f;
    ldm_clear_error();
    if (ldm_ckpt_parse(&f, buf, n, "fuzz.pkl") == 0) {
        for (int64_t i = 0; i < f.n_entries; i++) {
            const ldm_tensor_entry *e = &f.entries[i];
            if (e->owned ? e->data != e->owned : (e->data < buf || e->data + e->nbytes > buf + n))
                abort();   // inside the file, or a strided view's own copy
            float out[64];
            if (e->numel <= 64 && ldm_entry_to_f32(out, e) != 0) abort();
        }
        ldm_tensor_file_close(&f);
    } else if (ldm_last_error()[0] == '\0') {
        abort();
    }
    free(buf);
    return 0;
}
