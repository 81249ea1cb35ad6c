/*
 * tests/test_embeddings.c -- textual-inversion embeddings (ldm/embeddings.h)
 * in the prompt of the tiny model, against torch.
 *
 * Fixtures: tests/fixtures/embeddings/ (tools/reference/fixtures_embeddings.py):
 * one embedding file per format (A1111 .pt through the allow-list unpickler,
 * A1111 safetensors emb_params, clip_l/clip_g per text encoder, and an SD1-width
 * file that must be skipped), and the prompt contexts of transformers'
 * CLIPTextModel with the vectors appended to its token embedding, as diffusers'
 * load_textual_inversion does. Tolerance: that of the prompt contexts in
 * tests/test_pipeline.c (1e-4 relative), the same encoder run.
 * SD2: embeddings of width 32 (.pt, emb_params, clip_h beside clip_l, and an
 * SD1-width file that is skipped) in the tiny SD2 model of tests/fixtures/ckpt,
 * both layouts (OpenCLIP token_embedding of the CompVis file, the diffusers
 * folder); that model has no tokenizer vocabulary, so the ids are built here
 * from the embeddings' placeholder ids, as fixtures_embeddings.py sd2 builds them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/clip.h"
#include "ldm/embeddings.h"
#include "ldm/io/npy.h"
#include "ldm/model.h"
#include "ldm/pipeline.h"
#include "tests/test.h"

#define FIX "tests/fixtures/embeddings"

static float *load(const char *name, const char *suffix, int64_t *n) {
    char path[512];
    snprintf(path, sizeof path, FIX "/%s_%s.npy", name, suffix);
    return test_load_npy(path, n);
}

static void check_context(ldm_pipeline *p, const char *label, const char *prompt, const char *name,
                          const char *suffix) {
    int64_t n = 0;
    float *ref = load(name, suffix, &n);
    ldm_tensor t;
    if (!ref || !test_check(ldm_pipeline_encode_prompt(&t, p, prompt, 1) == 0, label, "%s",
                            ldm_last_error())) {
        free(ref);
        return;
    }
    float *h = malloc(t.numel * sizeof *h);
    ldm_tensor_to_host(h, &t);
    if (test_check(t.numel == n, label, "%lld values, expected %lld", (long long)t.numel, (long long)n))
        test_close(label, h, ref, n, 1e-4, 0);
    free(h);
    free(ref);
    ldm_tensor_free(&t);
}

static const struct { const char *name, *prompt, *negative; } CASES[] = {
    {"plain", "a tinystyle circle on the left", "shapey"},
    {"weighted", "(tinystyle:1.3) square, wide, [shapey] triangle", "blurry wide"},
    {"break", "Tinystyle BREAK a blue square next to shapey", ""},
};

// SD2_ROWS of fixtures_embeddings.py: ids below 128, or an embedding's words
static const char *const SD2_ROWS[2][6] = {
    {"5", "sd2style", "9", "sd2shape", "17", "sd2wide"},
    {"sd2wide", "40", "41", "sd2style", "sd2shape", "60"},
};

static void test_sd2(const char *path, const char *config_dir) {
    printf("-- SD2: %s\n", path);
    ldm_model m;
    ldm_model_options mo = {&ldm_ops_cpu, LDM_PRED_AUTO, config_dir};
    if (!test_check(ldm_model_open(&m, path, &mo) == 0, path, "%s", ldm_last_error())) return;
    ldm_clip clip;
    ldm_embeddings emb = {0};
    if (!test_check(ldm_clip_load(&clip, &m.clip_w, &m.clip) == 0, "SD2 text encoder", "%s",
                    ldm_last_error())) {
        ldm_model_close(&m);
        return;
    }
    if (test_check(ldm_embeddings_load_dir(&emb, &clip, FIX "/sd2") == 0, "SD2 embeddings", "%s",
                   ldm_last_error())) {
        test_check(emb.n == 3 && emb.n_skipped == 1 && clip.cfg.vocab_size == emb.base_id + 5,
                   "SD2: 3 embeddings of width 32 (2+1+2 rows), the 768-wide one skipped",
                   "%d, %d skipped, vocab %d", emb.n, emb.n_skipped, clip.cfg.vocab_size);
        int32_t ids[2 * 77] = {0};
        for (int r = 0; r < 2; r++) {
            int k = 0;
            ids[r * 77 + k++] = 126;
            for (int j = 0; j < 6; j++) {
                const char *item = SD2_ROWS[r][j];
                const ldm_embedding_word *w = ldm_embeddings_find(&emb, item, strlen(item));
                if (w) for (int v = 0; v < w->n; v++) ids[r * 77 + k++] = w->first_id + v;
                else ids[r * 77 + k++] = atoi(item);
            }
            ids[r * 77 + k] = 127;   // then SD2's padding 0
        }
        ldm_tensor out;
        int64_t n = 0;
        float *ref = load("sd2", "context", &n);
        if (ref && test_check(ldm_clip_forward(&out, &clip, ids, 2, 77, 0) == 0 && out.numel == n,
                              "SD2: text encoder with embeddings", "%s", ldm_last_error())) {
            float *got = malloc((size_t)n * sizeof *got);
            ldm_tensor_to_host(got, &out);
            test_close("SD2: context [2,77,32] with embeddings", got, ref, n, 1e-4, 0);
            free(got);
            ldm_tensor_free(&out);
        }
        free(ref);
        ldm_embeddings_free(&emb);
    }
    ldm_clip_free(&clip);
    ldm_model_close(&m);
}

int main(void) {
    test_sd2("tests/fixtures/ckpt/sd2.ckpt", "tests/fixtures/ckpt/sd2");
    test_sd2("tests/fixtures/ckpt/sd2", NULL);
    ldm_pipeline p;
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu, .prediction = LDM_PRED_EPS, .embedding_dir = FIX};
    if (!test_check(ldm_pipeline_open(&p, LDM_TINY_MODEL_DEFAULT, &po) == 0, "open with embeddings",
                    "%s", ldm_last_error()))
        return test_summary();
    const ldm_embedding_word *w = ldm_embeddings_find(&p.emb, "TinyStyle", 9);
    test_check(p.emb.n == 3 && p.emb.n_skipped == 1, "3 embeddings, the 768-wide one skipped",
               "%d, %d skipped", p.emb.n, p.emb.n_skipped);
    test_check(w && w->n == 2 && p.clip.cfg.vocab_size == p.emb.base_id + 6 &&
               p.clip.tok_emb.shape[0] == p.emb.base_id + 6, "token table grown by 2+1+3 rows",
               "vocab %d", p.clip.cfg.vocab_size);
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) {
        char label[160];
        snprintf(label, sizeof label, "%s: prompt context", CASES[i].name);
        check_context(&p, label, CASES[i].prompt, CASES[i].name, "context");
        snprintf(label, sizeof label, "%s: negative context", CASES[i].name);
        check_context(&p, label, CASES[i].negative, CASES[i].name, "uncond");
    }
    // 74 words then a 2-vector embedding: it does not fit in the first chunk,
    // so it opens the second one whole (A1111 tokenize_line)
    char long_prompt[512] = "";
    for (int i = 0; i < 74; i++) strcat(long_prompt, "a ");
    strcat(long_prompt, "tinystyle");
    int32_t *ids = NULL;
    float *mult = NULL;
    int nc = 0;
    if (test_check(ldm_prompt_tokenize_emb(&ids, &mult, &nc, p.tok, &p.emb, long_prompt, 49407) == 0,
                   "tokenize 74 words + embedding", "%s", ldm_last_error()))
        test_check(w && nc == 2 && ids[74] < p.emb.base_id && ids[75] == 49407 && ids[77 + 1] == w->first_id &&
                   ids[77 + 2] == w->first_id + 1 && ids[77 + 3] == 49407,
                   "an embedding stays whole: it opens the next chunk", "%d chunks, ids[75] %d ids[78] %d",
                   nc, ids[75], ids[78]);
    free(ids);
    free(mult);

    // a whole run with an embedding in each prompt
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    ldm_sampler_parse(&si, &sk, "ddim");
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, 1);
    ldm_generate_params g = {
        .prompt = "a tinystyle circle", .negative = "shapey", .width = 64, .height = 64, .batch = 1,
        .sampling = {.sampler = si, .sigma_kind = sk, .steps = 2, .conv = LDM_CONVENTIONS_DIFFUSERS},
        .cfg_scale = 5.0f, .clip_skip = 1, .rng = &rng,
    };
    float lat[256];
    test_check(ldm_generate(&p, &g, lat, NULL) == 0, "generate with embeddings", "%s", ldm_last_error());
    ldm_pipeline_close(&p);

    // a folder with a file that holds no embedding: an error naming it
    char dir[128], path[256];
    snprintf(dir, sizeof dir, "/tmp/ldm_test_emb_%d", (int)getpid());
    snprintf(path, sizeof path, "%s/broken.pt", dir);
    mkdir(dir, 0700);
    FILE *f = fopen(path, "wb");
    if (f) fputs("not a torch file", f), fclose(f);
    po.embedding_dir = dir;
    test_check(ldm_pipeline_open(&p, LDM_TINY_MODEL_DEFAULT, &po) != 0 &&
               strstr(ldm_last_error(), "broken.pt"), "bad embedding file named", "%s", ldm_last_error());
    remove(path);
    rmdir(dir);
    po.embedding_dir = "/nonexistent-embeddings";
    test_check(ldm_pipeline_open(&p, LDM_TINY_MODEL_DEFAULT, &po) != 0 &&
               strstr(ldm_last_error(), "/nonexistent-embeddings"), "missing folder named", "%s",
               ldm_last_error());
    return test_summary();
}
