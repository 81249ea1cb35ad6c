/*
 * tests/test_pipeline.c -- txt2img / img2img end to end against PyTorch.
 *
 * Fixtures: tests/fixtures/pipeline/ (tools/reference/fixtures_pipeline.py):
 * a tiny random SD1-layout model (diffusers folder) and, per case, the
 * weighted prompt embeddings, the final latent and the decoded uint8 image of
 *   ddim             diffusers StableDiffusionPipeline + DDIMScheduler, B=2
 *   euler_long       k-diffusion sample_euler, 2-chunk weighted prompt, clip skip 2
 *   euler_a_v        k-diffusion sample_euler_ancestral, v-prediction, BREAK
 *   dpmpp_2m_karras  k-diffusion sample_dpmpp_2m on Karras sigmas
 *   img2img          diffusers StableDiffusionImg2ImgPipeline + DDIM, strength 0.75
 *   plms             diffusers StableDiffusionPipeline + PNDMScheduler(skip_prk_steps)
 * and, from tools/reference/fixtures_pipeline_tiny.py, the trained tiny model
 * tools/tiny-model (the one `make demo` and `sd txt2img` without --ckpt use):
 *   tiny_ddim_en     diffusers DDIM, make demo's English prompt, B=2, 20 steps
 *   tiny_ddim_ja     the same with make demo's Japanese prompt
 *   tiny_euler_a     k-diffusion sample_euler_ancestral with a negative prompt
 * The case parameters below repeat the scripts' CASES.
 *
 * Tolerances (docs/00-overview.md, "How correctness is established"): context 1e-4 relative (one CLIP forward), final
 * latent 1e-3 relative (whole pipeline), pixels: >= 99.9% identical, the rest
 * off by at most 1. The CLI writes pixels by truncation (CompVis) where the
 * reference rounds (diffusers), so CLI images are checked within 1 everywhere.
 *
 * Then the CLI ($LDM_BUILD/sd): same image as the library, output names that
 * count up and never overwrite, sizes not multiple of 8 rejected, bad init
 * images rejected with no output, unknown flags exit 2.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/dump.h"
#include "ldm/io/image.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/pipeline.h"
#include "tests/test.h"

#define FIX "tests/fixtures/pipeline/"
#define TINY LDM_TINY_MODEL_DEFAULT

typedef struct pcase {
    const char *name, *prompt, *negative, *sampler;
    int B, steps, seed, clip_skip;
    float scale;
    double strength;
    ldm_prediction pred;
    const char *model;      // NULL: the random model FIX "model"
} pcase;

static const pcase CASES[] = {
    {"ddim", "a photograph of an astronaut riding a horse", "blurry, low quality", "ddim", 2, 5,
     42, 1, 7.5f, 0, LDM_PRED_EPS, NULL},
    {"euler_long",
     "a (very beautiful:1.3) painting of a [quiet] lake at dawn, mist over the water, "
     "((tall pine trees)), distant mountains, soft light, \\(detailed\\) reflections, "
     "a small wooden boat, birds in the sky, golden hour, highly detailed, "
     "oil on canvas, by an old master, museum quality, dramatic clouds, "
     "warm colors, cinematic composition, [[muted greens]], (glowing horizon:0.8), "
     "calm, serene, peaceful, morning",
     "ugly", "euler", 1, 6, 7, 2, 5.0f, 0, LDM_PRED_EPS, NULL},
    {"euler_a_v", "a red (cube:1.5) on a table BREAK studio light", "", "euler_a", 1, 5, 3, 1, 4.0f,
     0, LDM_PRED_V, NULL},
    {"dpmpp_2m_karras", "a cat wearing a hat", "dog", "DPM++ 2M Karras", 1, 6, 11, 1, 7.5f, 0,
     LDM_PRED_EPS, NULL},
    {"img2img", "a watercolor landscape", "", "ddim", 1, 8, 5, 1, 7.5f, 0.75f, LDM_PRED_EPS, NULL},
    {"plms", "a bowl of fruit, still life", "", "plms", 1, 5, 9, 1, 7.5f, 0, LDM_PRED_EPS, NULL},
    // the trained tiny model (tools/reference/fixtures_pipeline_tiny.py)
    {"tiny_ddim_en", "a red circle on the left", "", "ddim", 2, 20, 1, 1, 5.0f, 0, LDM_PRED_EPS,
     TINY},
    {"tiny_ddim_ja", "右に青い四角", "", "ddim", 2, 20, 1, 1, 5.0f, 0, LDM_PRED_EPS, TINY},
    {"tiny_euler_a", "a small blue square above a yellow triangle", "green", "euler_a", 1, 15, 4,
     1, 5.0f, 0, LDM_PRED_EPS, TINY},
};

static float *load(const char *name, const char *suffix, int64_t *n) {
    char path[512];
    snprintf(path, sizeof path, FIX "%s_%s.npy", name, suffix);
    return test_load_npy(path, n);
}

// >= 99.9% identical, the rest within 1
static void check_pixels(const char *name, const uint8_t *got, const float *exp, int64_t n, int max_off) {
    int64_t same = 0, worst = 0;
    for (int64_t i = 0; i < n; i++) {
        int d = abs((int)got[i] - (int)exp[i]);
        same += d == 0;
        if (d > worst) worst = d;
    }
    double frac = (double)same / n;
    char label[128];
    snprintf(label, sizeof label, "%s pixels", name);
    int ok = max_off ? worst <= max_off : (frac >= 0.999 && worst <= 1);
    test_check(ok, label, "%.4f%% identical, max off %lld", 100 * frac, (long long)worst);
    printf("          %s: %.4f%% identical, max off %lld\n", label, 100 * frac, (long long)worst);
}

static void test_parse(void) {
    ldm_prompt_piece *p;
    int n;
    int ok = ldm_prompt_parse(&p, &n, "a (red:1.2) [car] \\(x\\) ((b)) BREAK c") == 0;
    // expected from the syntax's definition: 1.2, 1/1.1, literal brackets, 1.1^2, BREAK
    // pieces: "a " | red 1.2 | " " | car 1/1.1 | " (x) " | b 1.21 | "" | BREAK | c
    ok = ok && n == 9 && !strcmp(p[0].text, "a ") && fabsf(p[1].weight - 1.2f) < 1e-6f &&
         !strcmp(p[1].text, "red") && fabsf(p[3].weight - 1 / 1.1f) < 1e-6f &&
         !strcmp(p[4].text, " (x) ") && fabsf(p[5].weight - 1.21f) < 1e-6f &&
         !strcmp(p[6].text, "") && p[7].weight < 0 && !strcmp(p[8].text, "c");
    test_check(ok, "prompt parse: (w:1.2) [w] \\( ((w)) BREAK", "n=%d", n);
    if (n >= 0) ldm_prompt_pieces_free(p, n);
    ok = ldm_prompt_parse(&p, &n, "") == 0 && n == 1 && p[0].text[0] == 0 && p[0].weight == 1;
    test_check(ok, "prompt parse: empty prompt is one empty piece", "%s", "");
    ldm_prompt_pieces_free(p, n);
    ok = ldm_prompt_parse(&p, &n, "(open [unclosed") == 0 && n == 2 &&
         fabsf(p[0].weight - 1.1f) < 1e-6f && fabsf(p[1].weight - 1.0f) < 1e-6f;
    test_check(ok, "prompt parse: unclosed brackets apply to the rest", "%s", "");
    ldm_prompt_pieces_free(p, n);
}

static void test_case(const pcase *c) {
    printf("-- %s\n", c->name);
    ldm_pipeline p;
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu, .prediction = c->pred,
                               .need_encoder = c->strength > 0};
    const char *model = c->model ? c->model : FIX "model";
    if (!test_check(ldm_pipeline_open(&p, model, &po) == 0, model, "open: %s", ldm_last_error()))
        return;
    char name[128];
    int64_t n_ctx = 0, n_unc = 0, n_lat = 0, n_img = 0;
    float *ctx = load(c->name, "context", &n_ctx), *unc = load(c->name, "uncond", &n_unc);
    float *lat = load(c->name, "latent", &n_lat), *img = load(c->name, "image", &n_img);
    if (!ctx || !unc || !lat || !img) goto done;

    // prompt weighting + chunks: our context vs the Python A1111 implementation
    ldm_tensor t;
    if (ldm_pipeline_encode_prompt(&t, &p, c->prompt, c->clip_skip) == 0) {
        float *h = malloc(t.numel * sizeof *h);
        ldm_tensor_to_host(h, &t);
        snprintf(name, sizeof name, "%s context [1,%lld,%lld]", c->name, (long long)t.shape[1],
                 (long long)t.shape[2]);
        if (test_check(t.numel == n_ctx, name, "%lld values, expected %lld", (long long)t.numel, (long long)n_ctx))
            test_close(name, h, ctx, n_ctx, 1e-4, 0);
        free(h);
        ldm_tensor_free(&t);
    } else {
        test_check(0, "encode prompt", "%s", ldm_last_error());
    }
    if (ldm_pipeline_encode_prompt(&t, &p, c->negative, c->clip_skip) == 0) {
        float *h = malloc(t.numel * sizeof *h);
        ldm_tensor_to_host(h, &t);
        snprintf(name, sizeof name, "%s negative context", c->name);
        if (test_check(t.numel <= n_unc, name, "longer than the reference"))
            test_close(name, h, unc, t.numel, 1e-4, 0);
        free(h);
        ldm_tensor_free(&t);
    }

    // the whole run
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    if (!test_check(ldm_sampler_parse(&si, &sk, c->sampler) == 0, c->sampler, "%s", ldm_last_error()))
        goto done;
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, (uint64_t)c->seed);
    ldm_image init = {0};
    if (c->strength > 0 && ldm_png_read(&init, FIX "init.png") != 0) {
        test_check(0, "read init.png", "%s", ldm_last_error());
        goto done;
    }
    ldm_generate_params g = {
        .prompt = c->prompt, .negative = c->negative, .width = 64, .height = 64, .batch = c->B,
        .sampling = {.sampler = si, .sigma_kind = sk, .steps = c->steps,
                     .eta = si->uses_sigmas ? -1.0f : 0.0f, .conv = LDM_CONVENTIONS_DIFFUSERS},
        .cfg_scale = c->scale, .clip_skip = c->clip_skip, .rng = &rng,
        .init_rgb = c->strength > 0 ? init.rgb : NULL, .strength = c->strength,
    };
    float *got = malloc(n_lat * sizeof *got);
    uint8_t *rgb = malloc(n_img);
    if (test_check(ldm_generate(&p, &g, got, rgb) == 0, "generate", "%s", ldm_last_error())) {
        snprintf(name, sizeof name, "%s final latent [%d,4,8,8]", c->name, c->B);
        test_close(name, got, lat, n_lat, 1e-3, 0);
        check_pixels(c->name, rgb, img, n_img, 0);
    }
    free(got);
    free(rgb);
    ldm_image_free(&init);
done:
    free(ctx); free(unc); free(lat); free(img);
    ldm_pipeline_close(&p);
}

// ---------------------------------------------------------------------------
// the CLI

static char sd[512], tmp[256], out_path[600], err_path[600];

static int run(const char *args, char **err) {
    return test_run_cli(sd, args, out_path, err_path, err);
}

static int exists(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static int count(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

static void check_png(const char *label, const char *path, const float *ref, int64_t n) {
    ldm_image im = {0};
    if (!test_check(ldm_png_read(&im, path) == 0, label, "%s", ldm_last_error())) return;
    if (test_check((int64_t)im.width * im.height * 3 == n, label, "size %dx%d", im.width, im.height))
        check_pixels(label, im.rgb, ref, n, 1);
    int has = 0;
    for (int i = 0; i < im.n_text; i++)
        has |= !strcmp(im.text_keys[i], "parameters") && strstr(im.text_values[i], "Steps: ") &&
               strstr(im.text_values[i], "Seed: ") && strstr(im.text_values[i], "Sampler: ");
    test_check(has, "PNG has an A1111 'parameters' chunk", "%s", "");
    ldm_image_free(&im);
}

static void test_compare_finds_bug(void);

static void test_cli(void) {
    printf("-- CLI\n");
    if (!test_cli_setup(sd, tmp, out_path, err_path, "test_pipeline")) return;
    char args[4096], outdir[512], samples[600], *err;
    snprintf(outdir, sizeof outdir, "%s/out", tmp);
    snprintf(samples, sizeof samples, "%s/samples", outdir);
    const char *common = "--ckpt " FIX "model --backend cpu --rng cpu --H 64 --W 64";

    // 1. the ddim case through the CLI (abbreviated --n_sample as argparse allows)
    snprintf(args, sizeof args, "txt2img %s --prompt '%s' --negative-prompt '%s' --n_sample 2 "
             "--n_iter 1 --ddim_steps 5 --seed 42 --scale 7.5 --outdir %s",
             common, CASES[0].prompt, CASES[0].negative, outdir);
    int rc = run(args, &err);
    if (test_check(rc == 0, "sd txt2img (ddim case)", "exit %d: %s", rc, err)) {
        int64_t n;
        float *ref = load("ddim", "image", &n);
        char p[1024];
        for (int i = 0; ref && i < 2; i++) {
            snprintf(p, sizeof p, "%s/%05d.png", samples, i);
            check_png(i ? "CLI sample 00001.png vs diffusers (within 1: truncation)"
                        : "CLI sample 00000.png vs diffusers (within 1: truncation)", p, ref + i * n / 2, n / 2);
        }
        free(ref);
        test_check(exists(outdir, "grid-0000.png"), "grid-0000.png written", "%s", "");
    }
    // 2. numbering continues and never overwrites: a stray 00004.png is kept
    char stray[700];
    snprintf(stray, sizeof stray, "%s/00004.png", samples);
    FILE *f = fopen(stray, "w");
    if (f) { fputs("not a png", f); fclose(f); }
    snprintf(args, sizeof args, "txt2img %s --prompt cat --n_samples 1 --n_iter=2 --ddim_steps 1 "
             "--outdir %s", common, outdir);
    rc = run(args, &err);
    test_check(rc == 0, "sd txt2img second run", "exit %d: %s", rc, err);
    // 3 files (00000, 00001, 00004) -> starts at 3: 00003, then 00004 is taken -> 00005
    test_check(exists(samples, "00003.png") && exists(samples, "00005.png") &&
               exists(outdir, "grid-0001.png") && count(samples) == 5,
               "next free names: 00003.png, 00005.png, grid-0001.png", "%d files", count(samples));
    char buf[16] = "";
    f = fopen(stray, "r");
    if (f) { if (!fgets(buf, sizeof buf, f)) buf[0] = 0; fclose(f); }
    test_check(!strcmp(buf, "not a png"), "existing file not overwritten", "%s", "");

    // 3. user errors: non-zero exit, one clear message, no new file
    int before = count(samples);
    struct { const char *args, *expect; int code; } bad[] = {
        {"txt2img --ckpt " FIX "model --H 60 --W 64 --outdir %s", "multiples of 8", 2},
        {"txt2img --ckpt " FIX "model --H 64 --W 64 --bogus 1 --outdir %s", "unknown flag", 2},
        {"txt2img --ckpt " FIX "model --H 64 --W 64 --sampler nope --outdir %s", "sampler", 2},
        {"txt2img --ckpt " FIX "model --H 64 --W 64 --ddim_steps 0 --outdir %s", "ddim_steps", 2},
        {"img2img --ckpt " FIX "model --init-img " FIX "model/model_index.json --outdir %s", "init-img", 1},
        {"img2img --ckpt " FIX "model --init-img /nonexistent.png --outdir %s", "init-img", 1},
        {"img2img --ckpt " FIX "model --init-img tests/fixtures/io/png_rgb8.png --outdir %s", "multiples of 8", 1},
        {"img2img --ckpt " FIX "model --init-img " FIX "init.png --strength 1.5 --outdir %s", "strength", 2},
        {"txt2img --ckpt /nonexistent.safetensors --H 64 --W 64 --outdir %s", "nonexistent", 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char a[2048];
        snprintf(a, sizeof a, bad[i].args, outdir);
        rc = run(a, &err);
        char label[160];
        snprintf(label, sizeof label, "rejects: %.100s", a + 8);
        test_check(rc == bad[i].code && strstr(err, bad[i].expect) && count(samples) == before,
                   label, "exit %d (want %d), stderr: %s", rc, bad[i].code, err);
    }

    // 4. no --ckpt: the tiny model, said on stderr, drawn at 64x64; without it
    //    (LDM_TINY_MODEL naming a missing folder) a clear error and no file
    char out3[600];
    snprintf(out3, sizeof out3, "%s/tiny", tmp);
    snprintf(args, sizeof args, "txt2img --prompt 'a red circle on the left' --backend cpu "
             "--n_samples 1 --n_iter 1 --ddim_steps 2 --skip_grid --outdir %s", out3);
    rc = run(args, &err);
    if (test_check(rc == 0 && strstr(err, "no --ckpt given: using the tiny model in " TINY),
                   "no --ckpt: uses the tiny model and says so", "exit %d: %s", rc, err)) {
        ldm_image im = {0};
        char p[1024];
        snprintf(p, sizeof p, "%s/samples/00000.png", out3);
        int ok = ldm_png_read(&im, p) == 0 && im.width == 64 && im.height == 64;
        test_check(ok, "no --ckpt: a 64x64 sample", "%dx%d", im.width, im.height);
        ldm_image_free(&im);
    }
    setenv("LDM_TINY_MODEL", "/nonexistent-tiny-model", 1);
    char tiny_samples[700];
    snprintf(tiny_samples, sizeof tiny_samples, "%s/samples", out3);
    snprintf(args, sizeof args, "txt2img --prompt cat --outdir %s", out3);
    rc = run(args, &err);
    unsetenv("LDM_TINY_MODEL");
    test_check(rc == 2 && strstr(err, "tiny model folder /nonexistent-tiny-model is not here") &&
               count(out3) == 1 && count(tiny_samples) == 1,
               "no --ckpt and no tiny model: clear error, no file", "exit %d: %s", rc, err);

    // 5. img2img case through the CLI
    char out2[600];
    snprintf(out2, sizeof out2, "%s/img", tmp);
    snprintf(args, sizeof args, "img2img --ckpt " FIX "model --backend cpu --rng cpu --init-img "
             FIX "init.png --strength 0.75 --ddim_steps 8 --n_samples 1 --scale 7.5 --seed 5 "
             "--prompt '%s' --outdir %s --skip_grid", CASES[4].prompt, out2);
    rc = run(args, &err);
    if (test_check(rc == 0, "sd img2img (img2img case)", "exit %d: %s", rc, err)) {
        int64_t n;
        float *ref = load("img2img", "image", &n);
        char p[1024];
        snprintf(p, sizeof p, "%s/samples/00000.png", out2);
        if (ref) check_png("CLI img2img 00000.png vs diffusers (within 1)", p, ref, n);
        free(ref);
        test_check(!exists(out2, "grid-0000.png"), "--skip_grid writes no grid", "%s", "");
    }
    test_compare_finds_bug();
    snprintf(args, sizeof args, "rm -rf '%s'", tmp);
    if (system(args) != 0) printf("  (could not remove %s)\n", tmp);
}

// `sd compare` names an injected bug first: dump a run, change one bias of the
// UNet's mid-block attention (proj_out) by +0.1, dump again, compare.
static void test_compare_finds_bug(void) {
    printf("-- sd compare finds an injected bug\n");
    char a[700], b[700], args[2048], *err;
    snprintf(a, sizeof a, "%s/dump_good", tmp);
    snprintf(b, sizeof b, "%s/dump_bad", tmp);
    ldm_pipeline p;
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu, .prediction = LDM_PRED_EPS};
    if (!test_check(ldm_pipeline_open(&p, FIX "model", &po) == 0, "open", "%s", ldm_last_error())) return;
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    ldm_sampler_parse(&si, &sk, "ddim");
    ldm_rng rng;
    ldm_generate_params g = {.prompt = "a cat", .negative = "", .width = 64, .height = 64, .batch = 1,
                             .sampling = {.sampler = si, .steps = 2, .eta = 0,
                                          .conv = LDM_CONVENTIONS_DIFFUSERS},
                             .cfg_scale = 7.5f, .clip_skip = 1, .rng = &rng};
    ldm_unet_block *blk = NULL;
    for (int i = 0; i < p.unet.n_blocks; i++)
        if (!strcmp(p.unet.blocks[i].name, "mid_block.attentions.0")) blk = &p.unet.blocks[i];
    if (!test_check(blk != NULL, "find mid_block.attentions.0", "%s", "")) goto done;
    for (int pass = 0; pass < 2; pass++) {
        ldm_dump_set_dir(pass ? b : a);
        ldm_rng_init(&rng, LDM_RNG_CPU, 1);
        if (!test_check(ldm_generate(&p, &g, NULL, NULL) == 0, pass ? "generate (bug injected)" : "generate (dump)",
                        "%s", ldm_last_error()))
            goto done;
        if (pass == 0) {   // the bug: proj_out bias + 0.1
            ldm_tensor *bias = &blk->tr.proj_out_b;
            float *h = malloc(bias->numel * sizeof *h);
            ldm_tensor_to_host(h, bias);
            for (int64_t i = 0; i < bias->numel; i++) h[i] += 0.1f;
            ldm_tensor_from_host(bias, h);
            free(h);
        }
    }
    ldm_dump_set_dir(NULL);
    snprintf(args, sizeof args, "compare '%s' '%s'", b, a);
    run(args, &err);
    FILE *f = fopen(out_path, "rb");
    static char out[1 << 16];
    size_t n = f ? fread(out, 1, sizeof out - 1, f) : 0;
    out[n] = 0;
    if (f) fclose(f);
    const char *line = strstr(out, "first divergence: ");
    test_check(line && !strncmp(line + 18, "step000/unet.mid_block.attentions.0.npy", 39),
               "compare names step000/unet.mid_block.attentions.0 first", "got: %.120s",
               line ? line : "(no first divergence line)");
done:
    ldm_dump_set_dir(NULL);
    ldm_pipeline_close(&p);
}

int main(void) {
    test_parse();
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) test_case(&CASES[i]);
    test_cli();
    return test_summary();
}
