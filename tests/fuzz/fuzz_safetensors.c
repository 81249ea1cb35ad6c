/*
 * tests/fuzz/fuzz_safetensors.c -- libFuzzer target for the safetensors
 * reader (ldm_safetensors_parse, ldm/io/safetensors.c).
 *
 * Each input is a whole file in memory, in an exact-size heap copy so that
 * AddressSanitizer catches any read past its end. When the parser accepts
 * it, every tensor is looked up by name and converted to fp32 (bounded size),
 * which touches every byte the header claims. Built and run by `make fuzz`;
 * seeds: tests/fuzz/seeds/fuzz_safetensors/ (written by
 * tools/reference/fixtures_io.py: small valid files and the bad corpus).
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
    if (ldm_safetensors_parse(&f, buf, size, "fuzz.safetensors") == 0) {
        for (int64_t i = 0; i < f.n_entries; i++) {
            const ldm_tensor_entry *e = ldm_tensor_file_find(&f, f.entries[i].name);
            if (e != &f.entries[i] && (!e || strcmp(e->name, f.entries[i].name) != 0)) abort();
            if (e->numel > (1 << 20)) continue;
            float *out = malloc((size_t)(e->numel ? e->numel : 1) * sizeof(float));
            if (out && ldm_entry_to_f32(out, e) != 0) abort();   // a parsed entry must convert
            free(out);
        }
        ldm_tensor_file_close(&f);
    } else if (ldm_last_error()[0] == '\0') {
        abort();   // a rejection must say why
    }
    ldm_clear_error();
    free(buf);
    return 0;
}
