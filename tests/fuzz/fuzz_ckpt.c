/*
 * tests/fuzz/fuzz_ckpt.c -- libFuzzer target for the torch .ckpt reader
 * (ldm_ckpt_parse, ldm/io/ckpt.c): the zip reader and, behind it, the pickle
 * interpreter.
 *
 * Each input is a whole file in an exact-size heap copy, so AddressSanitizer
 * catches any read past its end. An accepted file must have every tensor
 * convertible to fp32 (bounded size); a rejected one must say why. Seeds:
 * tests/fuzz/seeds/fuzz_ckpt/ (the bad/ corpus and a valid archive, written
 * by tools/reference/fixtures_ckpt.py). tests/fuzz/fuzz_pickle.c fuzzes the
 * pickle alone.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/tensorfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    ldm_tensor_file f;
    ldm_clear_error();
    if (ldm_ckpt_parse(&f, buf, size, "fuzz.ckpt") == 0) {
        for (int64_t i = 0; i < f.n_entries; i++) {
            const ldm_tensor_entry *e = &f.entries[i];
            // inside the file, or a strided view's own contiguous copy
            if (e->owned ? e->data != e->owned : (e->data < buf || e->data + e->nbytes > buf + size))
                abort();
            if (e->numel > (1 << 20)) continue;
            float *out = malloc((size_t)(e->numel ? e->numel : 1) * sizeof(float));
            if (out && ldm_entry_to_f32(out, e) != 0) abort();
            free(out);
        }
        ldm_tensor_file_close(&f);
    } else if (ldm_last_error()[0] == '\0') {
        abort();  // a rejection must say why
    }
    free(buf);
    return 0;
}
