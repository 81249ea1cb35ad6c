/*
 * tests/cuda/model_cases.h -- whole models on a backend under test: the tiny
 * random UNets (SD1- and SD2-style), the tiny VAE decoder and the tiny CLIP
 * text encoders (SD1 transformers / SD2 open_clip style) of the committed
 * fixtures, run on `be` and compared
 *   - with PyTorch's output, at the tolerance each model's own test uses for
 *     cpu and ref (UNet 1e-3 of max |value|, CLIP and VAE 1e-4), and
 *   - with the same model on the `cpu` backend (1e-4: two fp32 backends
 *     summing in different orders: the project's per-block tolerance).
 * This puts every op together in the order the models use them (views,
 * in-place calls, workspace reuse across ops) rather than one at a time.
 * (The whole txt2img pipeline is not run here: its tiny test model needs
 * its own tokenizer; the pipeline's test can select `cuda-emu` directly.)
 *
 * Used by tests/test_cuda_emu.c and tests/cuda/test_cuda.c.
 */
#ifndef LDM_TEST_MODEL_CASES_H
#define LDM_TEST_MODEL_CASES_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/clip.h"
#include "ldm/core/error.h"
#include "ldm/model.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"
#include "ldm/unet.h"
#include "ldm/vae.h"
#include "ldm/io/weights.h"
#include "tests/test.h"

static char *mc_read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = (char *)malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

// Host copy of a tensor (any backend).
static float *mc_host(const ldm_tensor *t) {
    float *h = (float *)malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    ldm_tensor_to_host(h, t);
    return h;
}

// UNet of tests/fixtures/unet/<cfg> on ops, case b2 (batch 2, 8x8 latent).
// Returns the host output (NULL + a failed check on error); *n its size.
static float *mc_unet_run(const char *cfg, const struct ldm_ops *ops, int64_t *n) {
    char dir[128], path[256], label[128];
    snprintf(dir, sizeof dir, "tests/fixtures/unet/%s", cfg);
    snprintf(label, sizeof label, "unet %s on %s: load + forward", cfg, ops->name);
    float *host = NULL, *t = NULL;
    ldm_unet u;
    ldm_unet_config c;
    ldm_tensor_file f;
    ldm_tensor x = {0}, ctx = {0}, out = {0};
    int64_t tshape[LDM_MAX_DIMS];
    int tnd, loaded = 0, opened = 0;

    snprintf(path, sizeof path, "%s/config.json", dir);
    char *json = mc_read_text(path);
    if (!json || ldm_unet_config_parse(&c, json, path)) {
        free(json);
        test_check(0, label, "config %s: %s", path, ldm_last_error());
        return NULL;
    }
    free(json);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    if (ldm_tensor_file_open(&f, path)) goto fail;
    opened = 1;
    ldm_weights w;
    memset(&w, 0, sizeof w);
    w.file = &f; w.comp = LDM_COMP_UNET; w.layout = LDM_LAYOUT_DIFFUSERS; w.prefix = ""; w.ops = ops;
    if (ldm_unet_load(&u, &c, &w)) goto fail;
    loaded = 1;
    snprintf(path, sizeof path, "%s/b2_latent.npy", dir);
    if (ldm_npy_read(&x, ops, path)) goto fail;
    snprintf(path, sizeof path, "%s/b2_t.npy", dir);
    if (ldm_npy_read_raw(&t, tshape, &tnd, path)) goto fail;
    snprintf(path, sizeof path, "%s/b2_context.npy", dir);
    if (ldm_npy_read(&ctx, ops, path)) goto fail;
    out = ldm_tensor_new(ops, x.shape, x.ndim);
    if (!out.data || ldm_unet_forward(&out, &u, &x, t, &ctx)) goto fail;
    host = mc_host(&out);
    *n = out.numel;
    goto done;
fail:
    test_check(0, label, "%s", ldm_last_error());
done:
    ldm_tensor_free(&x); ldm_tensor_free(&ctx); ldm_tensor_free(&out);
    free(t);
    if (loaded) ldm_unet_free(&u);
    if (opened) ldm_tensor_file_close(&f);
    return host;
}

// VAE decoder of tests/fixtures/vae/<dir> on ops: latent_in.npy -> image.
static float *mc_vae_run(const char *name, const struct ldm_ops *ops, int64_t *n) {
    char dir[128], path[256], label[128];
    snprintf(dir, sizeof dir, "tests/fixtures/vae/%s", name);
    snprintf(label, sizeof label, "vae %s decode on %s", name, ops->name);
    float *host = NULL;
    ldm_vae vae;
    ldm_vae_config c;
    ldm_tensor_file f;
    ldm_tensor z = {0}, out = {0};
    int loaded = 0, opened = 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *json = mc_read_text(path);
    if (!json || ldm_vae_config_parse(&c, json, path)) {
        free(json);
        test_check(0, label, "config %s: %s", path, ldm_last_error());
        return NULL;
    }
    free(json);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    if (ldm_tensor_file_open(&f, path)) goto fail;
    opened = 1;
    ldm_weights w;
    memset(&w, 0, sizeof w);
    w.file = &f; w.comp = LDM_COMP_VAE; w.layout = LDM_LAYOUT_DIFFUSERS; w.prefix = ""; w.ops = ops;
    if (ldm_vae_load(&vae, &c, &w, LDM_VAE_DECODER)) goto fail;
    loaded = 1;
    snprintf(path, sizeof path, "%s/latent_in.npy", dir);
    if (ldm_npy_read(&z, ops, path)) goto fail;
    ldm_vae_options opt;
    memset(&opt, 0, sizeof opt);
    opt.tiling = LDM_VAE_TILE_OFF;
    if (ldm_vae_decode(&out, &vae, &z, &opt)) goto fail;
    host = mc_host(&out);
    *n = out.numel;
    goto done;
fail:
    test_check(0, label, "%s", ldm_last_error());
done:
    ldm_tensor_free(&z); ldm_tensor_free(&out);
    if (loaded) ldm_vae_free(&vae);
    if (opened) ldm_tensor_file_close(&f);
    return host;
}

// Text encoder of the diffusers folder tests/fixtures/ckpt/<name> on ops, for
// the id rows of clip_ids.npy (causal attention, embedding, quick_gelu/gelu).
static float *mc_clip_run(const char *name, const struct ldm_ops *ops, int64_t *n) {
    char path[256], label[128];
    snprintf(label, sizeof label, "clip %s on %s: open + forward", name, ops->name);
    float *idf = NULL, *host = NULL;
    int32_t *ids = NULL;
    int64_t shape[LDM_MAX_DIMS];
    int nd, opened = 0, loaded = 0;
    ldm_model m;
    ldm_clip clip;
    ldm_tensor out = {0};
    ldm_model_options opt;
    memset(&opt, 0, sizeof opt);
    opt.ops = ops;
    opt.prediction = LDM_PRED_AUTO;
    if (ldm_npy_read_raw(&idf, shape, &nd, "tests/fixtures/ckpt/clip_ids.npy") || nd != 2) goto fail;
    int B = (int)shape[0], T = (int)shape[1];
    ids = (int32_t *)malloc((size_t)B * T * sizeof *ids);
    for (int i = 0; i < B * T; i++) ids[i] = (int32_t)idf[i];
    snprintf(path, sizeof path, "tests/fixtures/ckpt/%s", name);
    if (ldm_model_open(&m, path, &opt)) goto fail;
    opened = 1;
    if (ldm_clip_load(&clip, &m.clip_w, &m.clip)) goto fail;
    loaded = 1;
    if (ldm_clip_forward(&out, &clip, ids, B, T, 0)) goto fail;
    host = mc_host(&out);
    *n = out.numel;
    goto done;
fail:
    test_check(0, label, "%s", ldm_last_error());
done:
    ldm_tensor_free(&out);
    if (loaded) ldm_clip_free(&clip);
    if (opened) ldm_model_close(&m);
    free(idf);
    free(ids);
    return host;
}

// got (size n) vs the PyTorch .npy (torch_rtol: the tolerance the model's own
// test uses against PyTorch) and vs cpu (1e-4); frees got and cpu.
static void mc_compare(const char *what, const char *be_name, float *got, float *cpu, int64_t n,
                       const char *torch_npy, double torch_rtol) {
    char label[160];
    float *exp = NULL;
    int64_t shape[LDM_MAX_DIMS];
    int nd;
    if (got && !ldm_npy_read_raw(&exp, shape, &nd, torch_npy) && ldm_shape_numel(shape, nd) == n) {
        snprintf(label, sizeof label, "%s on %s vs PyTorch", what, be_name);
        test_close(label, got, exp, n, torch_rtol, 0);
    } else if (got) {
        test_check(0, what, "reference %s: %s", torch_npy, ldm_last_error());
    }
    if (got && cpu) {
        snprintf(label, sizeof label, "%s on %s vs cpu backend", what, be_name);
        test_close(label, got, cpu, n, 1e-4, 0);
    }
    free(exp);
    free(got);
    free(cpu);
}

static void mc_run_all(const struct ldm_ops *be) {
    const char *cfgs[2] = {"sd1", "sd2"};
    char npy[160], what[64];
    for (int i = 0; i < 2; i++) {
        int64_t n = 0, m = 0;
        float *got = mc_clip_run(cfgs[i], be, &n);
        float *cpu = mc_clip_run(cfgs[i], &ldm_ops_cpu, &m);
        snprintf(npy, sizeof npy, "tests/fixtures/ckpt/clip_%s_out.npy", cfgs[i]);
        snprintf(what, sizeof what, "clip %s text encoder", cfgs[i]);
        mc_compare(what, be->name, got, n == m ? cpu : NULL, n, npy, 1e-4);   // as test_clip
        if (n != m) free(cpu);
    }
    for (int i = 0; i < 2; i++) {
        int64_t n = 0, m = 0;
        float *got = mc_unet_run(cfgs[i], be, &n);
        float *cpu = mc_unet_run(cfgs[i], &ldm_ops_cpu, &m);
        snprintf(npy, sizeof npy, "tests/fixtures/unet/%s/b2_out.npy", cfgs[i]);
        snprintf(what, sizeof what, "unet %s b2 output", cfgs[i]);
        mc_compare(what, be->name, got, n == m ? cpu : NULL, n, npy, 1e-3);   // as test_unet
        if (n != m) free(cpu);
    }
    int64_t n = 0, m = 0;
    float *got = mc_vae_run("tiny2", be, &n);
    float *cpu = mc_vae_run("tiny2", &ldm_ops_cpu, &m);
    mc_compare("vae tiny2 decode", be->name, got, n == m ? cpu : NULL, n,
               "tests/fixtures/vae/tiny2/decoded.npy", 1e-4);   // as test_vae
    if (n != m) free(cpu);
}

#endif
