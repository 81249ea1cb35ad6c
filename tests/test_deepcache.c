/*
 * tests/test_deepcache.c -- DeepCache (Ma, Fang, Wang, CVPR 2024): the cached
 * forward of ldm/unet.c (section 4b), its schedule in ldm/pipeline.c and
 * `sd txt2img --deepcache N [--deepcache-branch K]`, on the tiny model
 * (tools/tiny-model, or $LDM_TINY_MODEL; 4 skip branches, 0..3).
 *
 * DeepCache is an approximation: there is no reference image to match. What
 * is checked instead:
 *   UNet     a cached forward with the same x, t and context as the full one
 *            that kept the feature gives the full output (the skipped rows
 *            would have computed exactly the kept feature); its FLOPs are
 *            those of the rows the method names for branches 0 and 1 (conv_in,
 *            the shallow down rows, the last up rows, conv_out), below a
 *            quarter and a half of a full step's; a new latent size runs in
 *            full; a missing branch fails
 *   pipeline --deepcache 1 (or 0) gives the exact image byte for byte; N
 *            keeps ceil(calls / N) full forwards (counted by the mid block's
 *            output), for DDIM and for Heun (two model calls per step); N = 2
 *            differs from the exact image but stays close to it: PSNR above
 *            the bound below on every case
 *   CLI      N < 1 and a branch the model lacks are usage errors (exit 2, no
 *            output folder); the PNG parameters record the setting and
 *            --from-png reruns the same image
 *
 * The PSNR bound. Measured on these six cases (3 prompts x 2 seeds, DDIM 20
 * steps, CFG 7.5, branch 0, the CPU backend): N = 2 gives 33.5 dB at worst,
 * 44.5 dB on average (N = 3: 27.9 / 38.2, N = 5: 16.9 / 23.4, measured with
 * the CLI). The test asks N = 2 for >= 30 dB on each case and >= 38 dB on
 * average: margins of 3.5 and 6.5 dB for another CPU's rounding. Broken
 * caches fall below both: one that hands the up path zeros instead of the
 * kept feature gives 22.7 / 26.2 dB, one that keeps the first full step's
 * feature for the whole image (never refreshed) 15.9 / 26.3 dB, and Heun
 * 19.2 and 28.2 dB (39.2 dB when right); the zeros also fail the same-inputs
 * check (0.42 max-abs).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "ldm/backend/ops.h"
#include "ldm/io/image.h"
#include "ldm/pipeline.h"
#include "tests/test.h"

#define MODEL "tools/tiny-model"
#define SIDE 64
#define MIN_PSNR_N2 30.0
#define MEAN_PSNR_N2 38.0

static const char *const PROMPTS[] = {"a red circle", "a blue square on a yellow background",
                                      "a green triangle and a purple star"};
#define N_PROMPTS 3
#define N_SEEDS 2
#define N_CASES (N_PROMPTS * N_SEEDS)

// ---- the UNet alone ------------------------------------------------------------

// Row names that run at a cached step of branch 0 or 1 on the tiny model (2
// levels, 1 layer per block). Branch 0 is conv_in's skip, popped by the last
// up ResBlock; branch 1 the skip of down_blocks.0's ResBlock + transformer,
// popped by the ResBlock before it (the whole last up block then runs).
static int runs_at(int branch, const char *name) {
    if (!strcmp(name, "conv_in") || !strcmp(name, "conv_out") ||
        !strcmp(name, "up_blocks.1.resnets.1") || !strcmp(name, "up_blocks.1.attentions.1"))
        return 1;
    return branch == 1 && (!strcmp(name, "down_blocks.0.resnets.0") ||
                           !strcmp(name, "down_blocks.0.attentions.0") ||
                           !strncmp(name, "up_blocks.1.", 12));
}

static void fill(ldm_tensor *t, uint64_t seed) {
    float *h = malloc((size_t)t->numel * sizeof(float));
    for (int64_t i = 0; i < t->numel; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        h[i] = (float)((double)(seed >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    ldm_tensor_from_host(t, h);
    free(h);
}

static int mid_block_calls;   // full forwards: the only ones that emit the middle block
static void count_mid(void *ctx, const char *name, const ldm_tensor *t) {
    (void)ctx, (void)t;
    if (!strcmp(name, "unet.mid_block")) mid_block_calls++;
}

static void unet_tests(ldm_unet *u) {
    const struct ldm_ops *ops = u->ops;
    const ldm_unet_config *c = &u->cfg;
    test_check(ldm_unet_deepcache_branches(u) == 4, "tiny UNet: 4 skip branches", "%d",
               ldm_unet_deepcache_branches(u));
    test_check(ldm_unet_deepcache_on(u, 4) != 0 && strstr(ldm_last_error(), "0..3"),
               "branch 4 rejected, naming 0..3", "%s", ldm_last_error());
    test_check(ldm_unet_deepcache_on(u, -1) != 0, "branch -1 rejected", "%s", "accepted");

    const int64_t B = 2, S = 8;
    ldm_tensor x = ldm_tensor_new(ops, LDM_SHAPE(B, c->in_channels, S, S));
    ldm_tensor ctx = ldm_tensor_new(ops, LDM_SHAPE(B, 77, c->cross_attention_dim));
    ldm_tensor y_full = ldm_tensor_new(ops, LDM_SHAPE(B, c->out_channels, S, S));
    ldm_tensor y_cached = ldm_tensor_new(ops, LDM_SHAPE(B, c->out_channels, S, S));
    fill(&x, 1), fill(&ctx, 2);
    float t[2] = {801.0f, 801.0f};

    static const double below[2] = {0.25, 0.5};   // measured 0.141 and 0.411
    for (int m = 0; m <= 1; m++) {
        char name[128];
        snprintf(name, sizeof name, "branch %d accepted", m);
        test_check(ldm_unet_deepcache_on(u, m) == 0, name, "%s", ldm_last_error());
        int ok = ldm_unet_forward(&y_full, u, &x, t, &ctx) == 0;
        double full = u->flops, rows = 0, named = 0;
        for (int k = 0; k < u->n_blocks; k++) {
            rows += u->blocks[k].flops;
            if (runs_at(m, u->blocks[k].name)) named += u->blocks[k].flops;
        }
        int full_was_cached = u->deepcache.was_cached;
        u->deepcache.reuse = 1;
        ok &= ldm_unet_forward(&y_cached, u, &x, t, &ctx) == 0;
        double cached = u->flops, expect = full - rows + named;   // + the time embedding
        snprintf(name, sizeof name, "branch %d: full then cached forward ran", m);
        test_check(ok && !full_was_cached && u->deepcache.was_cached, name, "%s",
                   ok ? "was_cached flags wrong" : ldm_last_error());
        float *a = test_tensor_host(&y_cached), *b = test_tensor_host(&y_full);
        snprintf(name, sizeof name, "branch %d: cached forward, same inputs == full", m);
        test_close(name, a, b, y_full.numel, 1e-6, 0);
        free(a), free(b);
        snprintf(name, sizeof name, "branch %d: cached FLOPs = those of the rows it names", m);
        test_check(fabs(cached - expect) <= 1e-9 * full, name, "%.6g vs %.6g", cached, expect);
        printf("  FLOPs: full %.4g, cached %.4g (%.3f of full)\n", full, cached, cached / full);
        snprintf(name, sizeof name, "branch %d: cached step below %.2f of a full step's FLOPs", m,
                 below[m]);
        test_check(cached < below[m] * full, name, "%.3f", cached / full);
    }

    // another latent size: the kept feature does not fit, the forward runs in full
    ldm_tensor x2 = ldm_tensor_new(ops, LDM_SHAPE(B, c->in_channels, 2 * S, 2 * S));
    ldm_tensor y2 = ldm_tensor_new(ops, LDM_SHAPE(B, c->out_channels, 2 * S, 2 * S));
    ldm_tensor y2_exact = ldm_tensor_new(ops, LDM_SHAPE(B, c->out_channels, 2 * S, 2 * S));
    fill(&x2, 3);
    u->deepcache.reuse = 1;
    int ok = ldm_unet_forward(&y2, u, &x2, t, &ctx) == 0;
    test_check(ok && !u->deepcache.was_cached, "new latent size: runs in full", "%s",
               ok ? "cached" : ldm_last_error());
    ldm_unet_deepcache_off(u);
    ok &= ldm_unet_forward(&y2_exact, u, &x2, t, &ctx) == 0;
    float *a = test_tensor_host(&y2), *b = test_tensor_host(&y2_exact);
    test_close("new latent size: the exact output", a, b, y2.numel, 0, 0);
    free(a), free(b);
    ldm_tensor *all[] = {&x, &ctx, &y_full, &y_cached, &x2, &y2, &y2_exact};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) ldm_tensor_free(all[i]);
}

// ---- the pipeline ------------------------------------------------------------------

static double psnr(const uint8_t *a, const uint8_t *b, int64_t n, int *max_diff) {
    double se = 0;
    *max_diff = 0;
    for (int64_t i = 0; i < n; i++) {
        int d = abs((int)a[i] - (int)b[i]);
        se += (double)d * d;
        if (d > *max_diff) *max_diff = d;
    }
    return se == 0 ? INFINITY : 10.0 * log10(255.0 * 255.0 / (se / (double)n));
}

// One image of case i (prompt i / N_SEEDS, seed 1 + i % N_SEEDS) with DeepCache
// interval N (0: off) on `sampler`.
static int generate(uint8_t *rgb, ldm_pipeline *p, const char *sampler, int i, int N, int steps) {
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    if (ldm_sampler_parse(&si, &sk, sampler)) return LDM_ERR;
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CUDA, (uint64_t)(1 + i % N_SEEDS));
    ldm_generate_params g = {
        .prompt = PROMPTS[i / N_SEEDS], .negative = "", .width = SIDE, .height = SIDE, .batch = 1,
        .sampling = {.sampler = si, .sigma_kind = sk, .steps = steps, .eta = 0.0f,
                     .conv = LDM_CONVENTIONS_COMPVIS},
        .cfg_scale = 7.5f, .clip_skip = 1, .rng = &rng, .deepcache = N,
    };
    return ldm_generate(p, &g, NULL, rgb);
}

static void pipeline_tests(ldm_pipeline *p) {
    const int64_t n = SIDE * SIDE * 3;
    uint8_t *exact = malloc((size_t)n), *img = malloc((size_t)n);
    int same_n1 = 1, runs = 1, all_differ = 1, max_diff = 0, md;
    double min_psnr = INFINITY, sum_psnr = 0;
    for (int i = 0; i < N_CASES; i++) {
        mid_block_calls = 0;
        runs &= generate(exact, p, "ddim", i, 0, 20) == 0;
        if (mid_block_calls != 20) runs = 0, printf("  off: %d full forwards of 20\n", mid_block_calls);
        if (i % 3 == 0) {   // two cases: N = 1 is the exact run
            runs &= generate(img, p, "ddim", i, 1, 20) == 0;
            same_n1 &= !memcmp(img, exact, (size_t)n);
        }
        mid_block_calls = 0;
        runs &= generate(img, p, "ddim", i, 2, 20) == 0;
        if (mid_block_calls != 10) runs = 0, printf("  N=2: %d full forwards of 20\n", mid_block_calls);
        double db = psnr(img, exact, n, &md);
        all_differ &= md > 0;
        if (db < min_psnr) min_psnr = db;
        sum_psnr += db;
        if (md > max_diff) max_diff = md;
    }
    for (int N = 3; N <= 5; N += 2) {   // the schedule: ceil(20 / N) full forwards
        mid_block_calls = 0;
        runs &= generate(img, p, "ddim", 0, N, 20) == 0;
        if (mid_block_calls != (20 + N - 1) / N)
            runs = 0, printf("  N=%d: %d full forwards of 20\n", N, mid_block_calls);
    }
    test_check(runs, "every run generated; off: 20 full forwards, N = 2, 3, 5: ceil(20/N)",
               "%s", ldm_last_error());
    test_check(same_n1, "--deepcache 1 == no DeepCache, byte for byte", "%s", "differs");
    printf("  tiny model, DDIM 20 steps, branch 0, N=2, %d cases vs exact: PSNR min %.2f dB, "
           "mean %.2f dB, max diff %d\n", N_CASES, min_psnr, sum_psnr / N_CASES, max_diff);
    test_check(all_differ, "N=2 differs from the exact image (every case)", "%s", "identical");
    test_check(min_psnr >= MIN_PSNR_N2, "N=2: PSNR >= 30 dB on every case", "min %.2f dB",
               min_psnr);
    test_check(sum_psnr / N_CASES >= MEAN_PSNR_N2, "N=2: mean PSNR >= 38 dB", "%.2f dB",
               sum_psnr / N_CASES);

    // Heun: two model calls per step (the last step one): 19 calls for 10 steps,
    // N = 2 -> calls 0, 2, ..., 18 full = 10
    mid_block_calls = 0;
    int ok = generate(exact, p, "heun", 2, 0, 10) == 0;
    int exact_calls = mid_block_calls;
    mid_block_calls = 0;
    ok &= generate(img, p, "heun", 2, 2, 10) == 0;
    double db = psnr(img, exact, n, &md);
    test_check(ok && exact_calls == 19 && mid_block_calls == 10,
               "Heun, 10 steps, N=2: 10 of its 19 calls full", "%d of %d", mid_block_calls,
               exact_calls);
    printf("  Heun, N=2: PSNR %.2f dB, max diff %d\n", db, md);
    test_check(md > 0 && db >= MIN_PSNR_N2, "Heun, N=2: differs, PSNR >= 30 dB",
               "%.2f dB, max diff %d", db, md);
    free(exact), free(img);
}

// ---- the command line ------------------------------------------------------------

static void cli_tests(const char *model) {
    char sd[512], tmp[256], out_path[600], err_path[600], args[4096], *err;
    if (!test_cli_setup(sd, tmp, out_path, err_path, "deepcache")) return;
    const char *common = "--prompt 'a red circle' --ddim_steps 6 --n_samples 1 --n_iter 1 --skip_grid";
    static const struct { const char *flags, *says; } bad[] = {
        {"--deepcache 0", "--deepcache"},
        {"--deepcache -2", "--deepcache"},
        {"--deepcache 2 --deepcache-branch -1", "--deepcache-branch"},
        {"--deepcache 2 --deepcache-branch 4", "0..3"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(args, sizeof args, "txt2img --ckpt %s %s %s --outdir %s/bad%zu", model, common,
                 bad[i].flags, tmp, i);
        int rc = test_run_cli(sd, args, out_path, err_path, &err);
        char dir[600];
        snprintf(dir, sizeof dir, "%s/bad%zu", tmp, i);
        struct stat st;
        char name[128];
        snprintf(name, sizeof name, "%s: exit 2, names %s, no output", bad[i].flags, bad[i].says);
        test_check(rc == 2 && strstr(err, bad[i].says) && stat(dir, &st) != 0, name,
                   "exit %d: %s", rc, err);
    }
    snprintf(args, sizeof args, "txt2img --ckpt %s %s --deepcache 2 --deepcache-branch 2 --outdir %s/a",
             model, common, tmp);
    int rc = test_run_cli(sd, args, out_path, err_path, &err);
    char path[700], path2[700];
    snprintf(path, sizeof path, "%s/a/samples/00000.png", tmp);
    ldm_image a = {0}, b = {0};
    const char *params = NULL;
    if (rc == 0 && ldm_png_read(&a, path) == 0)
        for (int i = 0; i < a.n_text; i++)
            if (!strcmp(a.text_keys[i], "parameters")) params = a.text_values[i];
    test_check(params && strstr(params, ", DeepCache: 2, DeepCache branch: 2,"),
               "PNG parameters record DeepCache: 2, DeepCache branch: 2", "exit %d: %s", rc,
               params ? params : err);
    snprintf(args, sizeof args, "txt2img --ckpt %s --from-png %s --outdir %s/b", model, path, tmp);
    rc = test_run_cli(sd, args, out_path, err_path, &err);
    snprintf(path2, sizeof path2, "%s/b/samples/00000.png", tmp);
    int same = rc == 0 && ldm_png_read(&b, path2) == 0 && a.rgb && a.width == b.width &&
               a.height == b.height && !memcmp(a.rgb, b.rgb, (size_t)a.width * a.height * 3);
    test_check(same, "--from-png reruns the DeepCache image exactly", "exit %d: %s", rc, err);
    ldm_image_free(&a), ldm_image_free(&b);
    snprintf(args, sizeof args, "rm -rf '%s'", tmp);
    if (system(args)) printf("  (could not remove %s)\n", tmp);
}

int main(void) {
    const char *env = getenv("LDM_TINY_MODEL");
    const char *model = env && *env ? env : MODEL;
    printf("== DeepCache on the tiny model (%s)\n", model);
    ldm_pipeline p;
    ldm_pipeline_options o = {.prediction = LDM_PRED_AUTO};
    if (!test_check(ldm_pipeline_open(&p, model, &o) == 0, model, "open: %s", ldm_last_error()))
        return test_summary();
    if (p.ops->set_threads) p.ops->set_threads(1);   // 8x8 latents: threads cost more than they give
    unet_tests(&p.unet);
    p.unet.hook = count_mid;
    pipeline_tests(&p);
    p.unet.hook = NULL;
    ldm_pipeline_close(&p);
    cli_tests(model);
    return test_summary();
}
