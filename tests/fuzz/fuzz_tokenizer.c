/*
 * tests/fuzz/fuzz_tokenizer.c -- libFuzzer target: arbitrary bytes through the
 * CLIP tokenizer (UTF-8 check, ftfy-equivalent cleaning, html.unescape,
 * lower(), pre-tokenizer, BPE, word cache, conditioning form). Invalid input
 * must come back as LDM_ERR with a message; nothing may crash or leak.
 *
 *   make build/fuzz/fuzz_tokenizer
 *   LDM_VOCAB=build/vocab/bpe_simple_vocab_16e6.txt.gz \
 *       build/fuzz/fuzz_tokenizer -max_total_time=60 tests/fuzz/seeds/fuzz_tokenizer
 * (LDM_VOCAB may be left out when run from the repository root.)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/clean.h"

static ldm_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *vocab = getenv("LDM_VOCAB");   // read here, once, as sd's main does
    if (ldm_tokenizer_load(&tok, vocab && *vocab ? vocab : NULL)) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", ldm_last_error());
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int *ids = NULL, n = 0;
    if (ldm_tokenizer_encode(tok, &ids, &n, (const char *)data, size) == LDM_OK) {
        int ctx[LDM_CONTEXT];
        ldm_tokenizer_context(ctx, LDM_CONTEXT, LDM_TOKEN_EOT, ids, n);
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= ldm_tokenizer_vocab_size(tok) || !ldm_tokenizer_piece(tok, ids[i])) abort();
        free(ids);
        char *p = NULL;
        if (ldm_tokenizer_pieces(tok, &p, (const char *)data, size) != LDM_OK) abort();
        free(p);
    } else if (!*ldm_last_error()) {
        abort(); // an error must say why
    }
    return 0;
}
