/*
 * tools/cmd_tokenize.c -- `sd tokenize`: prompts on stdin -> CLIP BPE ids.
 *
 * One prompt per input line (the '\n' is not part of it). Prints, per line,
 * the ids of open_clip's SimpleTokenizer.encode() (no start/end token, no
 * truncation), or with --pieces the BPE strings, or with --context N the
 * conditioning form [SOT] + ids[:N-2] + [EOT] + padding (--pad end: 49407 as
 * SD1 / HF; --pad zero: 0 as SD2 / open_clip.tokenize). See tokenizer/bpe.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "tokenizer/bpe.h"
#include "tools/cmd.h"

static void tokenize_usage(FILE *f) {
    fprintf(f,
            "usage: sd tokenize [--vocab FILE] [--pieces] [--context N] [--pad end|zero] < prompts.txt\n\n"
            "Reads prompts from standard input, one per line, and prints for each line the\n"
            "space-separated CLIP BPE ids (without start/end tokens, not truncated).\n\n"
            "  --vocab FILE    bpe_simple_vocab_16e6.txt.gz, or a diffusers model folder\n"
            "                  (or its tokenizer/ folder) with vocab.json + merges.txt\n"
            "                  (default: $LDM_VOCAB, else %s)\n"
            "  --pieces        print the BPE strings (\"a</w>\") instead of ids\n"
            "  --context N     print the conditioning form: start token, the first N-2 ids,\n"
            "                  end token, padding to N (77 for Stable Diffusion)\n"
            "  --pad end|zero  padding of --context: end = 49407 (SD1, HF CLIPTokenizer),\n"
            "                  zero = 0 (SD2, open_clip.tokenize); default end\n"
            "Invalid UTF-8 stops with an error naming the line and byte offset.\n",
            LDM_VOCAB_DEFAULT);
}

int cmd_tokenize(int argc, char **argv, const sd_env *defaults) {
    sd_env env = *defaults;
    const char *vocab = env.vocab;
    int pieces = 0, context = 0, pad = LDM_TOKEN_EOT, pad_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = sd_common_flag(argc, argv, &i, &env);
        if (c < 0) return 2;
        if (c > 0) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            tokenize_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--pieces")) {
            pieces = 1;
        } else if (!strcmp(a, "--vocab") || !strcmp(a, "--context") || !strcmp(a, "--pad")) {
            if (i + 1 >= argc) return sd_fail("tokenize: %s needs a value (see sd tokenize --help)", a), 2;
            const char *v = argv[++i];
            if (!strcmp(a, "--vocab")) {
                vocab = v;
            } else if (!strcmp(a, "--context")) {
                char *end;
                long n = strtol(v, &end, 10);
                if (*end || n < 2 || n > 1000000)
                    return sd_fail("tokenize: --context expects an integer 2..1000000, found '%s'", v), 2;
                context = (int)n;
            } else {
                if (!strcmp(v, "end")) pad = LDM_TOKEN_EOT;
                else if (!strcmp(v, "zero")) pad = LDM_TOKEN_PAD_SD2;
                else return sd_fail("tokenize: --pad expects end or zero, found '%s'", v), 2;
                pad_set = 1;
            }
        } else {
            return sd_fail("tokenize: unknown argument '%s' (sd tokenize --help)", a), 2;
        }
    }
    if (pad_set && !context) context = LDM_CONTEXT;

    ldm_tokenizer *tok;
    if (ldm_tokenizer_load(&tok, vocab)) return sd_fail("%s", ldm_last_error());
    int *ctx = context ? malloc((size_t)context * sizeof *ctx) : NULL;
    if (context && !ctx) return ldm_tokenizer_free(tok), sd_fail("tokenize: out of memory");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int rc = 0;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n') len--;
        int *ids, n;
        if (ldm_tokenizer_encode(tok, &ids, &n, line, (size_t)len)) {
            rc = sd_fail("tokenize: line %ld: %s", lineno, ldm_last_error());
            break;
        }
        const int *out = ids;
        int m = n;
        if (context) {
            ldm_tokenizer_context(ctx, context, pad, ids, n);
            out = ctx;
            m = context;
        }
        for (int i = 0; i < m; i++) {
            if (i) putchar(' ');
            if (pieces) fputs(ldm_tokenizer_piece(tok, out[i]), stdout);
            else printf("%d", out[i]);
        }
        putchar('\n');
        free(ids);
    }
    free(line);
    free(ctx);
    ldm_tokenizer_free(tok);
    if (fflush(stdout) != 0) return sd_fail("tokenize: cannot write the output");
    return rc;
}
