/*
 * tests/test_lora.c -- LoRA files merged into the tiny model (ldm/lora.h),
 * against torch.
 *
 * Fixtures: tests/fixtures/lora/ (tools/reference/fixtures_lora.py): a random
 * kohya LoRA on every linear/conv layer of tools/tiny-model's UNet and text
 * encoder (LoCon convs, fp16, alpha != rank), a random PEFT LoRA on the
 * attention projections, and per run the prompt context and the final latent
 * of the diffusers pipeline with the LoRA merged in torch (kohya keys mapped by
 * diffusers' own converter):
 *   kohya  <lora:tiny_kohya:0.8> in the prompt, looked up in the fixtures folder
 *   peft   --lora tiny_peft.safetensors:1 (a spec)
 *   both   <lora:tiny_kohya:0.5> and the PEFT file at 0.7
 *   peft_alpha  PEFT with lora_alpha != r in diffusers' "lora_adapter_metadata"
 * Tags in the negative prompt are global too (merged, removed from its text):
 * <lora:tiny_kohya:0.8> as the whole negative prompt gives the kohya run, a
 * kohya tag in the prompt and a PEFT tag in the negative prompt the "both" run.
 * SD2: the tiny SD2 model of tests/fixtures/ckpt (OpenCLIP text tower with
 * fused in_proj in the CompVis single file sd2.ckpt, and its diffusers folder;
 * UNet with linear proj_in/out) with a kohya and a PEFT LoRA of its own: the
 * text encoder's output for fixed ids and one UNet call, against torch
 * (fixtures_lora.py sd2), in both layouts (no tokenizer vocabulary there).
 * Then: the weights are restored bit for bit (the same prompt gives the same
 * bytes as before any LoRA), bad files are clear errors that name the key, and
 * the CLI ($LDM_SD, else $LDM_BUILD/sd) takes --lora, --lora-dir, --embedding-dir.
 * Tolerances: those of tests/test_pipeline.c for the tiny model (context 1e-4,
 * final latent 1e-3 relative): the merge adds one fp32 sgemm per layer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <unistd.h>

#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "ldm/io/tensorfile.h"
#include "ldm/lora.h"
#include "ldm/model.h"
#include "ldm/pipeline.h"
#include "tests/test.h"

#define FIX "tests/fixtures/lora"
#define PROMPT "a red circle on the left"

static float *load(const char *name, const char *suffix, int64_t *n) {
    char path[512];
    snprintf(path, sizeof path, FIX "/%s_%s.npy", name, suffix);
    return test_load_npy(path, n);
}

static void test_spec(void) {
    const char *a = "loras/x.safetensors:0.8", *b = "x.safetensors", *c = "a:b.safetensors",
               *d = "y.pt:-1.5";
    ldm_lora_spec s = {"", 0};
    test_check(ldm_lora_spec_parse(&s, a) == 0 && !strcmp(s.path, "loras/x.safetensors") &&
               s.scale == 0.8f, "spec FILE:SCALE", "%s %g", s.path, s.scale);
    test_check(ldm_lora_spec_parse(&s, b) == 0 && !strcmp(s.path, "x.safetensors") && s.scale == 1.0f,
               "spec FILE (scale 1)", "%s %g", s.path, s.scale);
    test_check(ldm_lora_spec_parse(&s, c) == 0 && !strcmp(s.path, "a:b.safetensors") && s.scale == 1.0f,
               "spec with ':' in the file name", "%s %g", s.path, s.scale);
    test_check(ldm_lora_spec_parse(&s, d) == 0 && !strcmp(s.path, "y.pt") && s.scale == -1.5f,
               "spec negative scale", "%s %g", s.path, s.scale);
    test_check(ldm_lora_spec_parse(&s, ":0.5") != 0, "spec without a file", "accepted");
}

// prompt context [1,77,D] on the host (encoded with the pipeline's current weights)
static float *context(ldm_pipeline *p, const char *prompt, int64_t *n) {
    ldm_tensor t;
    if (ldm_pipeline_encode_prompt(&t, p, prompt, 1) != 0) return NULL;
    float *h = malloc(t.numel * sizeof *h);
    ldm_tensor_to_host(h, &t);
    *n = t.numel;
    ldm_tensor_free(&t);
    return h;
}

static int generate(ldm_pipeline *p, const char *prompt, const char *negative,
                    const ldm_lora_spec *specs, int n, float *latent) {
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    if (ldm_sampler_parse(&si, &sk, "ddim") != 0) return LDM_ERR;
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, 3);
    ldm_generate_params g = {
        .prompt = prompt, .negative = negative, .width = 64, .height = 64, .batch = 1,
        .sampling = {.sampler = si, .sigma_kind = sk, .steps = 8, .eta = 0.0f,
                     .conv = LDM_CONVENTIONS_DIFFUSERS},
        .cfg_scale = 5.0f, .clip_skip = 1, .rng = &rng,
        .lora_dir = FIX, .loras = specs, .n_loras = n,
    };
    return ldm_generate(p, &g, latent, NULL);
}

typedef struct run {
    const char *name, *prompt;
    ldm_lora_spec specs[2];
    int n_specs;
} run;

static void test_run(ldm_pipeline *p, const run *r) {
    printf("-- %s\n", r->name);
    char name[128];
    int64_t n_ctx = 0, n_unc = 0, n_lat = 0;
    float *ctx = load(r->name, "context", &n_ctx), *unc = load(r->name, "uncond", &n_unc);
    float *lat = load(r->name, "latent", &n_lat);
    if (!ctx || !unc || !lat) goto done;

    // context with the LoRA merged (text-encoder layers)
    ldm_lora_set s;
    if (test_check(ldm_lora_begin(&s, &p->unet, &p->clip, r->prompt, FIX, r->specs, r->n_specs) == 0,
                   "lora begin", "%s", ldm_last_error())) {
        test_check(!strcmp(s.prompt, PROMPT " ") || !strcmp(s.prompt, PROMPT), "tags removed",
                   "'%s'", s.prompt);
        int64_t n = 0;
        float *got = context(p, s.prompt, &n);
        snprintf(name, sizeof name, "%s context [1,77,D]", r->name);
        if (test_check(got && n == n_ctx, name, "%s", ldm_last_error()))
            test_close(name, got, ctx, n, 1e-4, 0);
        free(got);
        ldm_lora_restore(&s);
    }

    // the whole run: tags and specs through ldm_generate
    float *got = malloc(n_lat * sizeof *got);
    snprintf(name, sizeof name, "%s final latent [1,4,8,8]", r->name);
    if (test_check(generate(p, r->prompt, "", r->specs, r->n_specs, got) == 0, name, "%s", ldm_last_error()))
        test_close(name, got, lat, n_lat, 1e-3, 0);
    free(got);
done:
    free(ctx); free(unc); free(lat);
}

// <lora:...> in the negative prompt: merged for the whole model (both halves
// of guidance) and removed from the negative text, so the references of runs
// with an empty negative prompt apply.
static void test_negative_tags(ldm_pipeline *p) {
    printf("-- LoRA tags in the negative prompt\n");
    static const struct { const char *ref, *prompt, *negative; } cases[] = {
        {"kohya", PROMPT, "<lora:tiny_kohya:0.8>"},
        {"both", "<lora:tiny_kohya:0.5>" PROMPT, "<lora:tiny_peft:0.7>"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t n_lat = 0;
        float *lat = load(cases[i].ref, "latent", &n_lat), got[256];
        char name[160];
        snprintf(name, sizeof name, "negative '%s' = the %s run: final latent", cases[i].negative,
                 cases[i].ref);
        if (lat && test_check(n_lat <= 256 && generate(p, cases[i].prompt, cases[i].negative, NULL,
                                                       0, got) == 0, name, "%s", ldm_last_error()))
            test_close(name, got, lat, n_lat, 1e-3, 0);
        free(lat);
    }
    float got[256];
    test_check(generate(p, PROMPT, "ugly <lora:nothere:1>", NULL, 0, got) != 0 &&
               strstr(ldm_last_error(), "nothere.safetensors"),
               "negative prompt: a tag naming no file is an error", "%s", ldm_last_error());
}

// SD2: module calls on the tiny SD2 model (its vocabulary has 128 ids, no
// tokenizer): the text encoder on ckpt/clip_ids.npy and the UNet on sd2_x at
// t = 500 with the reference context's first row, each LoRA merged, both layouts.
static void test_sd2_layout(const char *path, const char *config_dir) {
    printf("-- SD2: %s\n", path);
    const struct ldm_ops *ops = &ldm_ops_cpu;
    ldm_model m;
    ldm_model_options mo = {ops, LDM_PRED_AUTO, config_dir};
    if (!test_check(ldm_model_open(&m, path, &mo) == 0, path, "%s", ldm_last_error())) return;
    ldm_clip clip;
    ldm_unet unet;
    if (!test_check(ldm_clip_load(&clip, &m.clip_w, &m.clip) == 0, "SD2 text encoder", "%s",
                    ldm_last_error())) {
        ldm_model_close(&m);
        return;
    }
    if (!test_check(ldm_unet_load(&unet, &m.unet, &m.unet_w) == 0, "SD2 UNet", "%s", ldm_last_error())) {
        ldm_clip_free(&clip);
        ldm_model_close(&m);
        return;
    }
    float *idf = NULL, *x = NULL, *none = NULL;
    int64_t n_ids = 0, n_x = 0, n_none = 0;
    idf = test_load_npy("tests/fixtures/ckpt/clip_ids.npy", &n_ids);
    x = test_load_npy(FIX "/sd2_x.npy", &n_x);
    none = test_load_npy(FIX "/sd2_none_unet.npy", &n_none);
    const int B = (int)(n_ids / 77);
    int32_t ids[4 * 77];
    for (int64_t i = 0; i < n_ids && i < 4 * 77; i++) ids[i] = (int32_t)idf[i];
    static const struct { const char *name, *file; float scale; } runs[] = {
        {"kohya", FIX "/sd2_kohya.safetensors", 0.8f}, {"peft", FIX "/sd2_peft.safetensors", 1.0f},
    };
    for (size_t r = 0; idf && x && none && B <= 4 && r < sizeof runs / sizeof *runs; r++) {
        char name[200];
        int64_t n_ctx = 0, n_eps = 0;
        float *ctx = load((const char *[]){"sd2_kohya", "sd2_peft"}[r], "context", &n_ctx);
        float *eps = load((const char *[]){"sd2_kohya", "sd2_peft"}[r], "unet", &n_eps);
        ldm_lora_set s;
        ldm_lora_spec spec = {"", runs[r].scale};
        snprintf(spec.path, sizeof spec.path, "%s", runs[r].file);
        snprintf(name, sizeof name, "SD2 %s: merge", runs[r].name);
        if (ctx && eps && test_check(ldm_lora_begin(&s, &unet, &clip, "", NULL, &spec, 1) == 0, name,
                                     "%s", ldm_last_error())) {
            ldm_tensor c = {0}, xt = ldm_tensor_new(ops, LDM_SHAPE(1, 4, 8, 8));
            ldm_tensor y = ldm_tensor_new(ops, LDM_SHAPE(1, 4, 8, 8));
            ldm_tensor c0 = ldm_tensor_new(ops, LDM_SHAPE(1, 77, n_ctx / (B * 77)));
            snprintf(name, sizeof name, "SD2 %s: text encoder [%d,77,D]", runs[r].name, B);
            if (test_check(ldm_clip_forward(&c, &clip, ids, B, 77, 0) == 0 && c.numel == n_ctx, name,
                           "%s", ldm_last_error())) {
                float *got = malloc((size_t)n_ctx * sizeof *got);
                ldm_tensor_to_host(got, &c);
                test_close(name, got, ctx, n_ctx, 1e-4, 0);
                free(got);
                int64_t n0 = 0;   // the same ids without a LoRA (tests/test_clip.c's reference)
                float *plain = test_load_npy("tests/fixtures/ckpt/clip_sd2_out.npy", &n0), d = 0;
                for (int64_t i = 0; plain && i < n0 && i < n_ctx; i++) d = fmaxf(d, fabsf(ctx[i] - plain[i]));
                snprintf(name, sizeof name, "SD2 %s: the LoRA changes the text encoder output", runs[r].name);
                test_check(d > 1e-2, name, "max diff %g", d);
                free(plain);
            }
            ldm_tensor_from_host(&xt, x);
            ldm_tensor_from_host(&c0, ctx);   // the reference's first row: the UNet alone
            const float t = 500.0f;
            snprintf(name, sizeof name, "SD2 %s: UNet output [1,4,8,8]", runs[r].name);
            if (test_check(ldm_unet_forward(&y, &unet, &xt, &t, &c0) == 0, name, "%s", ldm_last_error())) {
                float got[256], d = 0;
                ldm_tensor_to_host(got, &y);
                test_close(name, got, eps, n_eps, 1e-4, 0);
                for (int64_t i = 0; i < n_eps; i++) d = fmaxf(d, fabsf(eps[i] - none[i]));
                snprintf(name, sizeof name, "SD2 %s: the LoRA changes the UNet output", runs[r].name);
                test_check(d > 1e-2, name, "max diff %g", d);
            }
            ldm_tensor_free(&c); ldm_tensor_free(&c0); ldm_tensor_free(&xt); ldm_tensor_free(&y);
            ldm_lora_restore(&s);
        }
        free(ctx); free(eps);
    }
    free(idf); free(x); free(none);
    ldm_unet_free(&unet);
    ldm_clip_free(&clip);
    ldm_model_close(&m);
}

// A LoRA file with one bad key; the error names it and the weights stay as they were.
static void test_bad(ldm_pipeline *p, const char *key, int64_t rows, int64_t cols, const char *expect) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/ldm_test_lora_%d.safetensors", (int)getpid());
    ldm_tensor a = ldm_tensor_zeros(&ldm_ops_ref, LDM_SHAPE(rows, cols));
    const char *names[] = {key};
    const ldm_tensor *ts[] = {&a};
    ldm_safetensors_write(path, 1, names, ts);
    ldm_tensor_free(&a);
    ldm_lora_set s;
    ldm_lora_spec spec = {"", 1.0f};
    snprintf(spec.path, sizeof spec.path, "%s", path);
    int rc = ldm_lora_begin(&s, &p->unet, &p->clip, PROMPT, NULL, &spec, 1);
    test_check(rc != 0 && strstr(ldm_last_error(), expect), key, "rc %d: %s", rc, ldm_last_error());
    if (rc == 0) ldm_lora_restore(&s);
    remove(path);
}

// The CLI: --lora FILE:SCALE, --lora-dir with a prompt tag, --embedding-dir; errors exit non-zero.
static void test_cli(void) {
    char cmd[2048], out[256], log[300];
    snprintf(out, sizeof out, "/tmp/ldm_test_lora_cli_%d", (int)getpid());
    snprintf(log, sizeof log, "%s.log", out);
    // the binary: $LDM_SD, else $LDM_BUILD/sd (tests/run.sh), else build/sd, as tests/test_cli.c
    char base[700];
    const char *env = getenv("LDM_SD"), *build = getenv("LDM_BUILD");
    if (env) snprintf(base, sizeof base, "%s", env);
    else snprintf(base, sizeof base, "%s/sd", build ? build : "build");
    strcat(base, " txt2img --n_iter 1 --n_samples 1 --ddim_steps 2 --skip_grid");
    snprintf(cmd, sizeof cmd, "%s --outdir %s --prompt 'a circle <lora:tiny_kohya:0.8>' --lora-dir " FIX
             " --lora " FIX "/tiny_peft.safetensors:0.5 --embedding-dir tests/fixtures/embeddings "
             "--negative-prompt shapey 2>%s", base, out, log);
    int rc = system(cmd);
    char png[400];
    snprintf(png, sizeof png, "%s/samples/00000.png", out);
    test_check(rc == 0 && access(png, F_OK) == 0, "sd txt2img --lora --lora-dir --embedding-dir",
               "exit %d, %s", rc, png);
    snprintf(cmd, sizeof cmd, "%s --outdir %s --prompt 'a <lora:nothere>' --lora-dir " FIX " 2>%s",
             base, out, log);
    rc = system(cmd);
    size_t n = 0;
    char *err = test_read_file(log, &n);
    test_check(rc != 0 && err && strstr(err, "nothere.safetensors"), "sd txt2img: missing LoRA named",
               "exit %d: %s", rc, err ? err : "");
    free(err);
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", out, log);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", out);
}

int main(void) {
    test_spec();
    test_cli();
    test_sd2_layout("tests/fixtures/ckpt/sd2.ckpt", "tests/fixtures/ckpt/sd2");
    test_sd2_layout("tests/fixtures/ckpt/sd2", NULL);
    ldm_pipeline p;
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu, .prediction = LDM_PRED_EPS};
    if (!test_check(ldm_pipeline_open(&p, LDM_TINY_MODEL_DEFAULT, &po) == 0, "open tiny model",
                    "%s", ldm_last_error()))
        return test_summary();

    // before any LoRA: context and latent, to check the restore
    int64_t n0 = 0, n_none = 0, n1 = 0;
    float *ctx0 = context(&p, PROMPT, &n0), lat0[256], lat1[256];
    float *none = load("none", "context", &n_none);
    test_check(generate(&p, PROMPT, "", NULL, 0, lat0) == 0, "generate without LoRA", "%s", ldm_last_error());
    if (ctx0 && none) test_close("no LoRA: context (reference)", ctx0, none, n0, 1e-4, 0);
    ldm_tensor *probe[] = {&p.unet.blocks[0].conv_w, &p.clip.layers[0].q_w, &p.unet.time_w1};
    // raw bytes of three weights as loaded (fp16 of the tiny model, in host memory)
    void *before[3];
    for (int i = 0; i < 3; i++) {
        size_t nb = (size_t)probe[i]->numel * ldm_tensor_elem_size(probe[i]->dtype);
        before[i] = malloc(nb);
        memcpy(before[i], probe[i]->data, nb);
    }

    const run RUNS[] = {
        {"kohya", PROMPT " <lora:tiny_kohya:0.8>", {{"", 0.0f}}, 0},
        {"peft", PROMPT, {{FIX "/tiny_peft.safetensors", 1.0f}}, 1},
        {"both", "<lora:tiny_kohya:0.5>" PROMPT, {{FIX "/tiny_peft.safetensors", 0.7f}}, 1},
        {"peft_alpha", PROMPT, {{FIX "/tiny_peft_alpha.safetensors", 1.0f}}, 1},
    };
    for (size_t i = 0; i < sizeof RUNS / sizeof *RUNS; i++) test_run(&p, &RUNS[i]);
    test_negative_tags(&p);

    // the LoRA changes the output, and the originals come back bit for bit
    int64_t nk = 0;
    float *ck = load("kohya", "context", &nk);
    if (ck && none) {
        double d = 0;
        for (int64_t i = 0; i < nk; i++) d = fmax(d, fabs(ck[i] - none[i]));
        test_check(d > 1e-2, "the kohya LoRA changes the context", "max diff %g", d);
    }
    int64_t nl;
    float *lk = load("kohya", "latent", &nl);
    if (lk) {
        double d = 0;
        for (int64_t i = 0; i < nl && i < 256; i++) d = fmax(d, fabs(lk[i] - lat0[i]));
        test_check(d > 1e-1, "the kohya LoRA changes the latent", "max diff %g", d);
        free(lk);
    }
    float *ctx1 = context(&p, PROMPT, &n1);
    test_check(generate(&p, PROMPT, "", NULL, 0, lat1) == 0, "generate after LoRA", "%s", ldm_last_error());
    test_check(ctx0 && ctx1 && n0 == n1 && !memcmp(ctx0, ctx1, n0 * sizeof(float)),
               "restored: same context bytes as before any LoRA", "differs");
    test_check(!memcmp(lat0, lat1, sizeof lat0), "restored: same latent bytes as before any LoRA",
               "differs");
    for (int i = 0; i < 3; i++) {
        size_t nb = (size_t)probe[i]->numel * ldm_tensor_elem_size(probe[i]->dtype);
        test_check(!memcmp(probe[i]->data, before[i], nb), "restored: weight bytes",
                   "probe %d differs", i);
        free(before[i]);
    }

    // errors: the key at fault is named, nothing stays merged
    test_bad(&p, "lora_unet_down_blocks_9_resnets_0_conv1.lora_down.weight", 2, 4,
             "lora_unet_down_blocks_9_resnets_0_conv1.lora_down.weight names no layer");
    test_bad(&p, "lora_unet_conv_in.hada_w1_a", 2, 4, "lora_unet_conv_in.hada_w1_a is not a LoRA");
    test_bad(&p, "unet.conv_in.lora_A.weight", 2, 4, "layer conv_in has no lora up tensor");
    ldm_lora_set s;
    test_check(ldm_lora_begin(&s, &p.unet, &p.clip, "x <lora:tiny_kohya:1>", NULL, NULL, 0) != 0 &&
               strstr(ldm_last_error(), "--lora-dir"), "tag without --lora-dir", "%s", ldm_last_error());
    test_check(ldm_lora_begin(&s, &p.unet, &p.clip, "x <lora:nothere>", FIX, NULL, 0) != 0 &&
               strstr(ldm_last_error(), FIX "/nothere.safetensors"), "tag naming no file", "%s",
               ldm_last_error());
    test_check(ldm_lora_begin(&s, &p.unet, &p.clip, "x <lora:tiny_kohya:1:0.5>", FIX, NULL, 0) != 0,
               "tag with two multipliers", "%s", ldm_last_error());
    float *ctx2 = context(&p, PROMPT, &n1);
    test_check(ctx2 && !memcmp(ctx0, ctx2, n0 * sizeof(float)), "after errors: weights unchanged",
               "differs");

    free(ctx0); free(ctx1); free(ctx2); free(none); free(ck);
    ldm_pipeline_close(&p);
    return test_summary();
}
