/*
 * tests/test_clip.c -- the CLIP text encoder (ldm/clip.c) against PyTorch.
 *
 * Fixtures (tools/reference/fixtures_ckpt.py): tiny random text encoders and
 * the reference outputs for three id rows (tests/fixtures/ckpt/clip_ids.npy):
 *   SD1 style: transformers CLIPTextModel (quick_gelu), last_hidden_state.
 *   SD2 style: open_clip TextTransformer, resblocks 0..L-2 then ln_final
 *              (the "penultimate" path of SD2's FrozenOpenCLIPEmbedder).
 * Each model is read from every layout it was saved in (diffusers folder
 * .safetensors and .bin, CompVis .safetensors and .ckpt, fp32 and fp16: the
 * weights are fp16-exact, so all must agree to the last bit) and run on the
 * ref and cpu backends.
 * Tolerance: 1e-4 relative max error (a whole-encoder forward in fp32 differs
 * from PyTorch only by summation order, ~1e-6 here).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/clip.h"
#include "ldm/core/error.h"
#include "ldm/model.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "tests/test.h"

#define FIX "tests/fixtures/ckpt/"

static float *last_sd1, *last_sd2;  // first output per family (layout equality)

static void run_case(const char *label, const char *path, const char *config_dir,
                     const char *ref_npy, const char *backend, const int32_t *ids, int B, int T) {
    char name[200];
    const struct ldm_ops *ops = ldm_backend(backend);
    if (!ops) { test_check(0, label, "backend %s: %s", backend, ldm_last_error()); return; }
    ldm_model_options opt = {ops, LDM_PRED_AUTO, config_dir};
    ldm_model m;
    snprintf(name, sizeof name, "%s open [%s]", label, backend);
    if (!test_check(ldm_model_open(&m, path, &opt) == 0, name, "%s", ldm_last_error())) return;
    ldm_clip clip;
    snprintf(name, sizeof name, "%s load [%s]", label, backend);
    if (!test_check(ldm_clip_load(&clip, &m.clip_w, &m.clip) == 0, name, "%s", ldm_last_error())) {
        ldm_model_close(&m);
        return;
    }
    ldm_tensor out;
    snprintf(name, sizeof name, "%s forward [%s]", label, backend);
    if (test_check(ldm_clip_forward(&out, &clip, ids, B, T, 0) == 0, name, "%s", ldm_last_error())) {
        float *got = malloc((size_t)out.numel * sizeof(float));
        ldm_tensor_to_host(got, &out);
        float *exp;
        int64_t shape[8];
        int nd;
        if (ldm_npy_read_raw(&exp, shape, &nd, ref_npy) == 0) {
            int64_t n = shape[0] * shape[1] * shape[2];
            snprintf(name, sizeof name, "%s output shape [%s]", label, backend);
            if (test_check(n == out.numel, name, "reference has %lld values, got %lld",
                           (long long)n, (long long)out.numel)) {
                snprintf(name, sizeof name, "%s vs PyTorch [%s]", label, backend);
                test_close(name, got, exp, n, 1e-4, 0);
            }
            // Every layout of the same weights: identical to the bit.
            float **first = m.family == LDM_FAMILY_SD2 ? &last_sd2 : &last_sd1;
            if (!*first) {
                *first = malloc((size_t)n * sizeof(float));
                memcpy(*first, got, (size_t)n * sizeof(float));
            } else if (!strcmp(backend, "ref")) {
                snprintf(name, sizeof name, "%s identical to the first layout [%s]", label, backend);
                test_close(name, got, *first, n, 0, 0);
            }
            free(exp);
        } else {
            test_check(0, ref_npy, "%s", ldm_last_error());
        }
        free(got);
        ldm_tensor_free(&out);
    }
    ldm_clip_free(&clip);
    ldm_model_close(&m);
}

int main(void) {
    float *idf;
    int64_t shape[8];
    int nd;
    if (ldm_npy_read_raw(&idf, shape, &nd, FIX "clip_ids.npy") != 0) {
        test_check(0, "clip_ids.npy", "%s (run `make fixtures`)", ldm_last_error());
        return test_summary();
    }
    int B = (int)shape[0], T = (int)shape[1];
    int32_t *ids = malloc((size_t)B * T * sizeof *ids);
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)idf[i];
    free(idf);

    const char *backends[] = {"ref", "cpu"};
    for (int b = 0; b < 2; b++) {
        const char *be = backends[b];
        printf("== SD1-style text encoder (transformers CLIPTextModel) [%s]\n", be);
        run_case("sd1 diffusers fp32 .safetensors", FIX "sd1", NULL, FIX "clip_sd1_out.npy", be, ids, B, T);
        run_case("sd1 diffusers fp16 .bin", FIX "sd1_bin", NULL, FIX "clip_sd1_out.npy", be, ids, B, T);
        run_case("sd1 CompVis fp32 .safetensors", FIX "sd1.safetensors", FIX "sd1", FIX "clip_sd1_out.npy", be, ids, B, T);
        run_case("sd1 CompVis fp16 .ckpt", FIX "sd1.ckpt", FIX "sd1", FIX "clip_sd1_out.npy", be, ids, B, T);
        printf("== SD2-style text encoder (open_clip, penultimate + ln_final) [%s]\n", be);
        run_case("sd2 diffusers fp32 .safetensors", FIX "sd2", NULL, FIX "clip_sd2_out.npy", be, ids, B, T);
        run_case("sd2 CompVis fp16 .ckpt (in_proj split)", FIX "sd2.ckpt", FIX "sd2", FIX "clip_sd2_out.npy", be, ids, B, T);
    }

    // User input errors: ids outside the vocabulary, too many tokens, bad skip.
    ldm_model m;
    ldm_model_options opt = {ldm_backend("ref"), LDM_PRED_AUTO, NULL};
    if (ldm_model_open(&m, FIX "sd1", &opt) == 0) {
        ldm_clip clip;
        if (ldm_clip_load(&clip, &m.clip_w, &m.clip) == 0) {
            ldm_tensor out;
            int32_t bad[2] = {0, m.clip.vocab_size};
            test_check(ldm_clip_forward(&out, &clip, bad, 1, 2, 0) != 0 &&
                           strstr(ldm_last_error(), "vocabulary"),
                       "id outside the vocabulary is an error", "%s", ldm_last_error());
            test_check(ldm_clip_forward(&out, &clip, ids, 1, 78, 0) != 0,
                       "78 tokens is an error", "%s", ldm_last_error());
            test_check(ldm_clip_forward(&out, &clip, ids, 1, T, clip.n_layers) != 0,
                       "clip skip past the first layer is an error", "%s", ldm_last_error());
            ldm_clip_free(&clip);
        }
        ldm_model_close(&m);
    }
    free(ids);
    free(last_sd1);
    free(last_sd2);
    return test_summary();
}
