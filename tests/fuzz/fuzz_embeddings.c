/*
 * tests/fuzz/fuzz_embeddings.c -- libFuzzer target for the textual-inversion
 * reader of ldm/embeddings.c: an A1111 .pt through the allow-list unpickler
 * (ldm/io/ckpt.c), or a .safetensors embedding, -> the tensor that holds the
 * vectors (ldm_embedding_pick) -> fp32 rows; and, for a file that holds one,
 * the whole folder loader (ldm_embeddings_load_dir) growing a token-embedding
 * table.
 *
 * Each input is a whole file in an exact-size heap copy (AddressSanitizer
 * catches a read past its end), parsed by its magic bytes as
 * ldm_tensor_file_open does (zip or bare pickle -> ckpt, else safetensors),
 * then picked at the two widths of the fixtures (64: the tiny SD1 model, 32:
 * the tiny SD2 one). Checks: a picked tensor is [n,D] or [D] with
 * 1 <= n <= 75 and converts; a rejection says why; the loader appends exactly
 * n rows. Built and run by `make fuzz`; seeds: tests/fuzz/seeds/fuzz_embeddings/
 * (tools/reference/fuzz_seeds_lora.py: the files of tests/fixtures/embeddings).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ldm/backend/ops.h"
#include "ldm/clip.h"
#include "ldm/core/error.h"
#include "ldm/embeddings.h"
#include "ldm/io/tensorfile.h"

#define V 16   // rows of the token-embedding table before loading

static char dir[64], file[96];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    snprintf(dir, sizeof dir, "/tmp/ldm_fuzz_embeddings_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("fuzz_embeddings: mkdtemp");
        exit(1);
    }
    snprintf(file, sizeof file, "%s/word.safetensors", dir);   // any candidate extension
    return 0;
}

// The folder loader on a folder holding only this file: n rows appended.
static void load_dir(const uint8_t *buf, size_t size, int64_t D, int64_t n) {
    FILE *fp = fopen(file, "wb");
    if (!fp) return;
    size_t wrote = fwrite(buf, 1, size, fp);
    if (fclose(fp) != 0 || wrote != size) { remove(file); return; }
    ldm_clip clip;
    memset(&clip, 0, sizeof clip);
    clip.ops = &ldm_ops_cpu;
    clip.tok_emb = ldm_tensor_zeros(&ldm_ops_cpu, LDM_SHAPE(V, D));
    clip.cfg.vocab_size = V;
    ldm_embeddings emb;
    if (ldm_embeddings_load_dir(&emb, &clip, dir) != 0) abort();   // pick accepted it
    if (emb.n != 1 || emb.e[0].n != n || emb.e[0].first_id != V || strcmp(emb.e[0].name, "word") ||
        clip.tok_emb.shape[0] != V + n || clip.cfg.vocab_size != V + n ||
        ldm_embeddings_span(&emb, V) != n || !ldm_embeddings_find(&emb, "WORD", 4))
        abort();
    ldm_embeddings_free(&emb);
    ldm_tensor_free(&clip.tok_emb);
    remove(file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > (1 << 20)) return 0;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    ldm_tensor_file f;
    ldm_clear_error();
    int pickle = (size >= 4 && memcmp(buf, "PK\x03\x04", 4) == 0) ||
                 (size >= 2 && buf[0] == 0x80 && buf[1] <= 5 && !(size >= 9 && buf[8] == '{'));
    int rc = pickle ? ldm_ckpt_parse(&f, buf, size, "fuzz.pt")
                    : ldm_safetensors_parse(&f, buf, size, "fuzz.safetensors");
    if (rc == 0) {
        static const int64_t WIDTHS[2] = {64, 32};
        for (int w = 0; w < 2; w++) {
            const int64_t D = WIDTHS[w];
            const ldm_tensor_entry *e = NULL;
            ldm_clear_error();
            if (ldm_embedding_pick(&e, &f, D) != 0) {
                if (e || ldm_last_error()[0] == '\0') abort();   // a rejection says why
                continue;
            }
            if (!e) continue;   // another width only: skipped
            int64_t n = e->numel / D;
            if (e->shape[e->ndim - 1] != D || e->ndim > 2 || n < 1 || n > 75) abort();
            float rows[75 * 64];
            if (ldm_entry_to_f32(rows, e) != 0) abort();
            load_dir(buf, size, D, n);
        }
        ldm_tensor_file_close(&f);
    } else if (ldm_last_error()[0] == '\0') {
        abort();
    }
    ldm_clear_error();
    free(buf);
    return 0;
}
