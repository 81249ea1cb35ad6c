/*
 * tests/test_mojibake.c -- ftfy's mojibake repair (fix_encoding) against ftfy.
 *
 * tests/fixtures/tokenizer/mojibake.jsonl (tools/reference/fixtures_mojibake.py)
 * holds prompts broken the usual ways (UTF-8 read as latin-1, Windows-125x,
 * iso-8859-2, MacRoman, cp437; broken twice; partly broken; U+00A0 turned
 * into a space; undefined bytes replaced by U+FFFD; C1 controls), text ftfy
 * must leave alone, and random strings of mojibake characters, each with
 * ftfy 6.3.1's fix_text and fix_encoding output and the reference CLIP ids;
 * plus short random strings with ftfy's is_bad verdict.
 * Checks, per category: fix_text, fix_encoding and the token ids exact on
 * every line; is_bad exact on every probe. Prints the agreement table and
 * the time the cleaning takes on intact prompts with and without the repair's
 * fast path (not asserted).
 * Needs the vocabulary: build/vocab/bpe_simple_vocab_16e6.txt.gz (`make vocab`)
 * or $LDM_VOCAB; run from the repository root.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ldm/core/error.h"
#include "tests/test.h"
#include "tokenizer/bpe.h"
#include "tokenizer/clean.h"

#define FIXTURE "tests/fixtures/tokenizer/mojibake.jsonl"
#define MAX_CATS 32

typedef struct category {
    char name[32];
    int n, fixed_ok, enc_ok, ids_ok, all_ok;
} category;

static category cats[MAX_CATS];
static int n_cats;

static category *cat_get(const char *name) {
    for (int i = 0; i < n_cats; i++)
        if (strcmp(cats[i].name, name) == 0) return &cats[i];
    if (n_cats == MAX_CATS) return &cats[MAX_CATS - 1];
    category *c = &cats[n_cats++];
    snprintf(c->name, sizeof c->name, "%s", name);
    return c;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// UTF-8 in -> f(code points) -> UTF-8 out (malloc'd), or NULL on error.
static char *apply_utf8(int (*f)(ldm_u32str *, const uint32_t *, size_t), const char *s) {
    ldm_u32str in = {0}, out = {0};
    char *r = NULL;
    size_t len;
    if (ldm_utf8_decode(&in, s, strlen(s)) == LDM_OK && f(&out, in.v, in.n) == LDM_OK)
        if (ldm_utf8_encode(&r, &len, out.v, out.n) != LDM_OK) r = NULL;
    ldm_u32str_free(&in);
    ldm_u32str_free(&out);
    return r;
}

static int ids_equal(const cJSON *want, const int *got, int n) {
    if (cJSON_GetArraySize(want) != n) return 0;
    int i = 0;
    for (const cJSON *e = want->child; e; e = e->next, i++)
        if ((int)e->valuedouble != got[i]) return 0;
    return 1;
}

static void show(const char *label, const char *s) {
    printf("      %s \"", label);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20) printf("\\x%02x", *p);
        else putchar(*p);
    printf("\"\n");
}

int main(int argc, char **argv) {
    const char *fixture = argc > 1 ? argv[1] : FIXTURE; // another corpus of the same form
    const char *env = getenv("LDM_VOCAB");
    ldm_tokenizer *tok;
    if (ldm_tokenizer_load(&tok, env && *env ? env : ldm_tokenizer_default_path())) {
        test_check(0, "load the vocabulary", "%s", ldm_last_error());
        return test_summary();
    }
    FILE *f = fopen(fixture, "rb");
    if (!f) {
        test_check(0, "open the fixture", "%s missing; run tools/reference/fixtures_mojibake.py", fixture);
        ldm_tokenizer_free(tok);
        return test_summary();
    }
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    int lines = 0, printed = 0, bad_n = 0, bad_ok = 0;
    // Intact prompts, kept to time the cleaning on them.
    char *intact[512];
    int n_intact = 0;
    while ((len = getline(&line, &lcap, f)) > 0) {
        cJSON *o = cJSON_ParseWithLength(line, (size_t)len);
        lines++;
        const cJSON *jt = o ? cJSON_GetObjectItem(o, "text") : NULL, *jc = o ? cJSON_GetObjectItem(o, "cat") : NULL;
        if (!cJSON_IsString(jt) || !cJSON_IsString(jc)) {
            test_check(0, "fixture line parses", "line %d", lines);
            cJSON_Delete(o);
            continue;
        }
        const char *text = jt->valuestring, *cat = jc->valuestring;
        if (strcmp(cat, "is_bad") == 0) {
            ldm_u32str u = {0};
            int want = cJSON_IsTrue(cJSON_GetObjectItem(o, "bad"));
            int got = ldm_utf8_decode(&u, text, strlen(text)) == LDM_OK ? ldm_ftfy_is_bad(u.v, u.n) : -1;
            bad_n++;
            bad_ok += got == want;
            if (got != want && printed++ < 10) {
                printf("    is_bad line %d: expected %d, got %d\n", lines, want, got);
                show("text", text);
            }
            ldm_u32str_free(&u);
            cJSON_Delete(o);
            continue;
        }
        const cJSON *jf = cJSON_GetObjectItem(o, "fixed"), *je = cJSON_GetObjectItem(o, "enc"),
                    *ji = cJSON_GetObjectItem(o, "ids");
        const char *want_enc = cJSON_IsString(je) ? je->valuestring : text; // left out when unchanged
        category *c = cat_get(cat);
        c->n++;
        char *fixed = apply_utf8(ldm_ftfy_fix_text, text), *enc = apply_utf8(ldm_ftfy_fix_encoding, text);
        int ok_fixed = fixed && cJSON_IsString(jf) && strcmp(fixed, jf->valuestring) == 0;
        int ok_enc = enc && strcmp(enc, want_enc) == 0;
        int *ids = NULL, n = 0;
        int ok_ids = ldm_tokenizer_encode(tok, &ids, &n, text, strlen(text)) == LDM_OK && ids_equal(ji, ids, n);
        c->fixed_ok += ok_fixed;
        c->enc_ok += ok_enc;
        c->ids_ok += ok_ids;
        c->all_ok += ok_fixed && ok_enc && ok_ids;
        if (!(ok_fixed && ok_enc && ok_ids) && printed++ < 10) {
            printf("    line %d (%s): fix_text %s, fix_encoding %s, ids %s\n", lines, cat, ok_fixed ? "ok" : "DIFFERS",
                   ok_enc ? "ok" : "DIFFERS", ok_ids ? "ok" : "DIFFER");
            show("text    ", text);
            if (!ok_enc) show("ftfy enc", want_enc), show("ours    ", enc ? enc : "(error)");
            if (!ok_fixed) {
                show("ftfy fix", cJSON_IsString(jf) ? jf->valuestring : "");
                show("ours    ", fixed ? fixed : "(error)");
            }
        }
        if (strcmp(cat, "prompts") == 0 && n_intact < 512) intact[n_intact++] = strdup(text);
        free(fixed);
        free(enc);
        free(ids);
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);

    printf("  info    agreement with ftfy 6.3.1 (fix_text / fix_encoding / CLIP ids):\n");
    int total = 0, total_ok = 0;
    for (int i = 0; i < n_cats; i++) {
        category *c = &cats[i];
        int all = c->all_ok;
        printf("  info      %-24s %4d lines  %4d / %4d / %4d  (%.1f%%)\n", c->name, c->n, c->fixed_ok, c->enc_ok,
               c->ids_ok, 100.0 * all / c->n);
        total += c->n;
        total_ok += all;
        char name[128];
        snprintf(name, sizeof name, "%.31s: fix_text, fix_encoding and ids exact on %d lines", c->name, c->n);
        test_check(c->fixed_ok == c->n && c->enc_ok == c->n && c->ids_ok == c->n, name, "%d / %d / %d agree",
                   c->fixed_ok, c->enc_ok, c->ids_ok);
    }
    printf("  info      %-24s %4d lines  %.1f%% agree; is_bad on %d probes: %.1f%%\n", "all", total,
           total ? 100.0 * total_ok / total : 0.0, bad_n, bad_n ? 100.0 * bad_ok / bad_n : 0.0);
    test_check(total >= 600 && bad_n >= 1000, "fixture holds >= 600 texts and >= 1000 is_bad probes", "%d, %d", total,
               bad_n);
    test_check(bad_ok == bad_n, "is_bad (ftfy.badness) exact on every probe", "%d of %d agree", bad_ok, bad_n);

    // The fast path: intact prompts, full cleaning vs fix_encoding alone (ASCII / not bad -> nothing to do).
    if (n_intact > 0) {
        ldm_u32str u = {0}, out = {0};
        int reps = 200;
        double t_clean = 0, t_enc = 0;
        for (int r = 0; r < reps; r++)
            for (int i = 0; i < n_intact; i++) {
                ldm_utf8_decode(&u, intact[i], strlen(intact[i]));
                double t0 = now();
                ldm_text_clean(&out, u.v, u.n);
                double t1 = now();
                ldm_ftfy_fix_encoding(&out, u.v, u.n);
                t_clean += t1 - t0;
                t_enc += now() - t1;
            }
        printf("  info    intact prompts: whole cleaning %.2f us/prompt; fix_encoding alone (its fast path) "
               "%.2f us/prompt\n",
               1e6 * t_clean / (reps * n_intact), 1e6 * t_enc / (reps * n_intact));
        ldm_u32str_free(&u);
        ldm_u32str_free(&out);
    }
    for (int i = 0; i < n_intact; i++) free(intact[i]);
    ldm_tokenizer_free(tok);
    return test_summary();
}
