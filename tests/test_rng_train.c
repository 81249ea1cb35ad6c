/*
 * tests/test_rng_train.c -- the draws of a training step on one torch CPU
 * generator: torch.randint, torch.rand and torch.randn interleaved in
 * tools/train/train_tiny.py's order (samplers/rng.h), bit for bit.
 *
 * Fixture: tests/fixtures/train/rng_train_cases.txt, written by
 * tools/reference/fixtures_rng_train.py from torch (both builds of torch's
 * normal: AVX2 and the C library's). Each case seeds one generator, then
 * replays its calls in order: a value that differs, or a call that drew a
 * different number of words, shows in that call and every later one.
 * Run from the repo root.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "samplers/rng.h"
#include "tests/test.h"

#define FIX "tests/fixtures/train/rng_train_cases.txt"

// Next whitespace-separated token of *p (advanced), or NULL at the end.
static char *next_token(char **p) {
    char *s = *p + strspn(*p, " \t\r\n");
    if (!*s) return NULL;
    char *e = s + strcspn(s, " \t\r\n");
    if (*e) *e++ = '\0';
    *p = e;
    return s;
}

static void test_cases(void) {
    FILE *f = fopen(FIX, "r");
    if (!test_check(f != NULL, FIX, "missing (run `make fixtures`)")) return;
    char *line = NULL, *p;
    size_t cap = 0;
    ldm_rng r;
    char name[160] = "";
    int have_case = 0, calls = 0, bad_calls = 0;
    int64_t values = 0, exact = 0;
    while (getline(&line, &cap, f) > 0) {
        p = line;
        char *op = next_token(&p);
        if (!op) continue;
        if (strcmp(op, "case") == 0) {
            if (have_case) test_check(bad_calls == 0, name, "%d of %d calls differ", bad_calls, calls);
            char *case_name = next_token(&p), *variant = next_token(&p), *seed = next_token(&p);
            snprintf(name, sizeof name, "rng train %s (%s)", case_name, variant);
            ldm_rng_init(&r, LDM_RNG_CPU, strtoull(seed, NULL, 10));
            r.cpu_math = strcmp(variant, "avx2") == 0 ? LDM_CPU_MATH_AVX2 : LDM_CPU_MATH_SCALAR;
            have_case = 1;
            calls = bad_calls = 0;
            continue;
        }
        int is_randint = strcmp(op, "randint") == 0;
        int64_t low = 0, high = 0;
        if (is_randint) {
            low = strtoll(next_token(&p), NULL, 10);
            high = strtoll(next_token(&p), NULL, 10);
        }
        int64_t n = strtoll(next_token(&p), NULL, 10);
        int64_t *got_i = malloc((size_t)(n + 1) * sizeof *got_i);
        float *got_f = malloc((size_t)(n + 1) * sizeof *got_f);
        int rc = LDM_OK;
        if (is_randint) rc = ldm_rng_randint(&r, got_i, n, low, high);
        else if (strcmp(op, "rand") == 0) rc = ldm_rng_rand(&r, got_f, n);
        else ldm_rng_randn(&r, got_f, n);
        int same = rc == LDM_OK;
        for (int64_t i = 0; i < n; i++) {
            char *tok = next_token(&p);
            if (!tok) { same = 0; break; }
            int ok;
            if (is_randint) {
                ok = got_i[i] == strtoll(tok, NULL, 10);
            } else {
                uint32_t bits = (uint32_t)strtoul(tok, NULL, 16), mine;
                memcpy(&mine, &got_f[i], 4);
                ok = mine == bits;
            }
            exact += ok;
            same &= ok;
        }
        values += n;
        calls++;
        bad_calls += !same;
        free(got_i);
        free(got_f);
    }
    if (have_case) test_check(bad_calls == 0, name, "%d of %d calls differ", bad_calls, calls);
    free(line);
    fclose(f);
    printf("  rng train: %" PRId64 " of %" PRId64 " values identical to torch\n", exact, values);
}

static void test_errors(void) {
    ldm_rng r;
    int64_t v[2];
    float u[2];
    ldm_rng_init(&r, LDM_RNG_CPU, 1);
    test_check(ldm_rng_randint(&r, v, 2, 5, 5) == LDM_ERR &&
                   strstr(ldm_last_error(), "low < high") != NULL,
               "randint empty range rejected", "%s", ldm_last_error());
    ldm_rng_init(&r, LDM_RNG_CUDA, 1);
    test_check(ldm_rng_randint(&r, v, 2, 0, 5) == LDM_ERR, "randint on cuda generator rejected",
               "%s", "accepted");
    test_check(ldm_rng_rand(&r, u, 2) == LDM_ERR, "rand on cuda generator rejected", "%s",
               "accepted");
}

int main(void) {
    printf("-- rng: torch.randint / rand / randn interleaved\n");
    test_cases();
    test_errors();
    return test_summary();
}
