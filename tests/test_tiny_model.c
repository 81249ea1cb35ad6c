/*
 * tests/test_tiny_model.c -- does the embedded tiny model draw what it is asked?
 *
 * A semantic test of the whole C pipeline (tokenizer, CLIP, UNet, DDIM, VAE)
 * on tools/tiny-model: for every prompt of the grid colour x shape x place, in
 * English and Japanese (tests/fixtures/tiny/grid.tsv, from
 * tools/reference/fixtures_tiny.py and the training grammar), two seeds are
 * drawn at 64x64 with DDIM 20 steps, guidance 5, and judged by pixel
 * statistics alone (the judge of tools/train/evaluate.py):
 *   every pixel gets the nearest palette colour (3 backgrounds, 6 object
 *   colours); colour ok: the requested colour covers >= 12 pixels and more
 *   than any other object colour; place ok: the centroid of its pixels lies in
 *   the requested region (left x<26, right x>=38, top y<26, bottom y>=38,
 *   center 20<=x,y<44). "Both" = the requested colour dominates the requested
 *   region. Passes when both hold in >= 90% of images (the issue's bar).
 * Prints the rate per attribute value and per language.
 *
 * Then the two variants trained from it (tools/train/train_lora.py,
 * train_inpaint.py; prompts and images in tests/fixtures/tiny/extras.tsv from
 * tools/train/evaluate_extras.py and the same grammar):
 *   LoRA        tools/tiny-model/lora/bar.safetensors teaches a shape the
 *               model never saw, a horizontal bar ("a red bar on the left",
 *               "左に赤い棒"). Judge: the largest 4-connected blob of the
 *               requested colour, elongation e = sqrt(l1 / l2) of its pixel
 *               covariance (l1 >= l2 its eigenvalues); circles, squares and
 *               triangles have e ~ 1 (<= 1.15 after the VAE round trip), the
 *               bar 3.5. Bar: >= 12 pixels, e >= 2, long axis horizontal.
 *               Passes when with <lora:bar:1> >= 70% of the bar prompts draw
 *               a bar of the requested colour, without it <= 5% do, and with
 *               it the grid's circles / squares / triangles still pass the
 *               colour-and-place judge (>= 90%) and are rarely bars (<= 15%).
 *   inpainting  tools/tiny-model-inpaint (9-channel UNet): the init image
 *               holds object B of a two-object caption "A <rel> B", the mask
 *               the half where A belongs. Inside the mask A's colour must
 *               dominate (>= 12 pixels, more than any other object colour);
 *               outside, beyond one latent cell (8 px) from the mask, the
 *               mean |output - init| must stay within 6/255 of the VAE's own
 *               round trip of the init image (decode(encode(x)), measured
 *               here), i.e. only the masked region changes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
#include "ldm/io/image.h"
#include "ldm/pipeline.h"
#include "samplers/rng.h"
#include "samplers/sampler.h"
#include "tests/test.h"

#define MODEL LDM_TINY_MODEL_DEFAULT   // or $LDM_TINY_MODEL (a retrained model)
#define GRID "tests/fixtures/tiny/grid.tsv"
#define EXTRAS_DIR "tests/fixtures/tiny/"
#define EXTRAS EXTRAS_DIR "extras.tsv"
#define LORA_DIR "tools/tiny-model/lora"          // or $LDM_TINY_LORA_DIR
#define INPAINT_MODEL "tools/tiny-model-inpaint"   // or $LDM_TINY_INPAINT
#define BAR_ELONGATION 2.0
#define MAX_EXTRAS 128
#define SIDE 64
#define SEEDS 2
#define MAX_PAL 16
#define MAX_PROMPTS 256

typedef struct { char name[16]; int rgb[3]; int background; } pal_entry;
typedef struct { char colour[16], shape[16], place[16], lang[4], caption[256]; } grid_prompt;

static pal_entry pal[MAX_PAL];
static int n_pal;
static grid_prompt prompts[MAX_PROMPTS];
static int n_prompts;

static int load_grid(void) {
    char *text = test_read_file(GRID, NULL);
    if (!text) return 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *f[6] = {0};
        int n = 0;
        for (char *p = line; n < 6; n++) {
            f[n] = p;
            char *tab = strchr(p, '\t');
            if (!tab) { n++; break; }
            *tab = '\0';
            p = tab + 1;
        }
        if (!strcmp(f[0], "palette") && n == 6 && n_pal < MAX_PAL) {
            pal_entry *e = &pal[n_pal++];
            snprintf(e->name, sizeof e->name, "%s", f[1]);
            for (int k = 0; k < 3; k++) e->rgb[k] = atoi(f[2 + k]);
            e->background = atoi(f[5]);
        } else if (!strcmp(f[0], "prompt") && n == 6 && n_prompts < MAX_PROMPTS) {
            grid_prompt *g = &prompts[n_prompts++];
            snprintf(g->colour, sizeof g->colour, "%s", f[1]);
            snprintf(g->shape, sizeof g->shape, "%s", f[2]);
            snprintf(g->place, sizeof g->place, "%s", f[3]);
            snprintf(g->lang, sizeof g->lang, "%s", f[4]);
            snprintf(g->caption, sizeof g->caption, "%s", f[5]);
        }
    }
    free(text);
    return n_pal > 0 && n_prompts > 0;
}

static int in_region(const char *place, double x, double y) {
    if (!strcmp(place, "left")) return x < 26;
    if (!strcmp(place, "right")) return x >= 38;
    if (!strcmp(place, "top")) return y < 26;
    if (!strcmp(place, "bottom")) return y >= 38;
    return x >= 20 && x < 44 && y >= 20 && y < 44;   // center
}

static int palette_index(const char *name) {
    for (int k = 0; k < n_pal; k++)
        if (!strcmp(pal[k].name, name)) return k;
    return -1;
}

// The palette entry nearest to one pixel (squared RGB distance).
static int nearest_palette(const uint8_t *px) {
    int best = 0;
    long best_d = -1;
    for (int k = 0; k < n_pal; k++) {
        long d = 0;
        for (int c = 0; c < 3; c++) d += (long)(px[c] - pal[k].rgb[c]) * (px[c] - pal[k].rgb[c]);
        if (best_d < 0 || d < best_d) { best_d = d; best = k; }
    }
    return best;
}

// rgb [SIDE][SIDE][3] -> colour ok, place ok
static void judge(const uint8_t *rgb, const grid_prompt *g, int *colour_ok, int *place_ok) {
    int count[MAX_PAL] = {0}, want = palette_index(g->colour);
    double sx = 0, sy = 0;
    for (int y = 0; y < SIDE; y++)
        for (int x = 0; x < SIDE; x++) {
            int best = nearest_palette(rgb + 3 * (y * SIDE + x));
            count[best]++;
            if (best == want) { sx += x; sy += y; }
        }
    int others = 0;
    for (int k = 0; k < n_pal; k++)
        if (!pal[k].background && k != want && count[k] > others) others = count[k];
    *colour_ok = want >= 0 && count[want] >= 12 && count[want] > others;
    *place_ok = want >= 0 && count[want] > 0 && in_region(g->place, sx / count[want], sy / count[want]);
}

typedef struct { const char *key; int n, colour, place, both; } tally;

static void add(tally *t, int *nt, const char *key, int c, int p) {
    int i = 0;
    while (i < *nt && strcmp(t[i].key, key)) i++;
    if (i == *nt) { t[i] = (tally){key, 0, 0, 0, 0}; (*nt)++; }
    t[i].n++; t[i].colour += c; t[i].place += p; t[i].both += c && p;
}

// ---------------------------------------------------------------------------
// The LoRA and the inpainting variant (rows of tests/fixtures/tiny/extras.tsv)

// bar:     kind "bar",     a = place,          colour, lang, caption
// inpaint: kind "inpaint", a = init PNG, b = mask PNG, colour (A's), lang, caption
typedef struct { char kind[8], a[64], b[64], colour[16], lang[4], caption[256]; } extra_row;

static extra_row extras[MAX_EXTRAS];
static int n_extras;
static const char *lora_dir = LORA_DIR, *inpaint_model = INPAINT_MODEL;

static int load_extras(void) {
    char *text = test_read_file(EXTRAS, NULL);
    if (!text) return 0;
    for (char *line = strtok(text, "\n"); line && n_extras < MAX_EXTRAS; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char *f[6] = {0};
        int n = 0;
        for (char *q = line; q && n < 6; n++) {
            f[n] = q;
            q = strchr(q, '\t');
            if (q) *q++ = '\0';
        }
        extra_row *e = &extras[n_extras];
        if (!strcmp(f[0], "bar") && n == 5) {
            snprintf(e->a, sizeof e->a, "%s", f[2]);
            snprintf(e->colour, sizeof e->colour, "%s", f[1]);
            snprintf(e->lang, sizeof e->lang, "%s", f[3]);
            snprintf(e->caption, sizeof e->caption, "%s", f[4]);
        } else if (!strcmp(f[0], "inpaint") && n == 6) {
            snprintf(e->a, sizeof e->a, "%s", f[1]);
            snprintf(e->b, sizeof e->b, "%s", f[2]);
            snprintf(e->colour, sizeof e->colour, "%s", f[3]);
            snprintf(e->lang, sizeof e->lang, "%s", f[4]);
            snprintf(e->caption, sizeof e->caption, "%s", f[5]);
        } else {
            continue;
        }
        snprintf(e->kind, sizeof e->kind, "%s", f[0]);
        n_extras++;
    }
    free(text);
    return n_extras > 0;
}

// Elongation of the largest 4-connected blob of palette colour `want`:
// e = sqrt(l1 / l2), l1 >= l2 the eigenvalues of the covariance of its pixel
// coordinates [[vx, cxy], [cxy, vy]]; *n its pixels, *horizontal: vx > vy.
static double blob_elongation(const uint8_t *rgb, int want, int *n, int *horizontal) {
    static int lab[SIDE * SIDE], queue[SIDE * SIDE];
    int on[SIDE * SIDE];
    for (int i = 0; i < SIDE * SIDE; i++) { on[i] = nearest_palette(rgb + 3 * i) == want; lab[i] = 0; }
    int best = 0, best_n = 0, n_blobs = 0;
    for (int i0 = 0; i0 < SIDE * SIDE; i0++) {          // flood fill each blob
        if (!on[i0] || lab[i0]) continue;
        int head = 0, tail = 0;
        lab[i0] = ++n_blobs;
        queue[tail++] = i0;
        while (head < tail) {
            int i = queue[head++], x = i % SIDE, y = i / SIDE;
            int nb[4] = {x > 0 ? i - 1 : -1, x < SIDE - 1 ? i + 1 : -1, y > 0 ? i - SIDE : -1,
                         y < SIDE - 1 ? i + SIDE : -1};
            for (int k = 0; k < 4; k++)
                if (nb[k] >= 0 && on[nb[k]] && !lab[nb[k]]) { lab[nb[k]] = n_blobs; queue[tail++] = nb[k]; }
        }
        if (tail > best_n) { best_n = tail; best = n_blobs; }
    }
    *n = best_n;
    *horizontal = 0;
    if (best_n < 2) return 1.0;
    double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
    for (int i = 0; i < SIDE * SIDE; i++)
        if (lab[i] == best) {
            double x = i % SIDE, y = i / SIDE;
            sx += x; sy += y; sxx += x * x; syy += y * y; sxy += x * y;
        }
    const double m = best_n, vx = sxx / m - (sx / m) * (sx / m), vy = syy / m - (sy / m) * (sy / m);
    const double cxy = sxy / m - (sx / m) * (sy / m);
    const double half = 0.5 * (vx + vy), root = sqrt(0.25 * (vx - vy) * (vx - vy) + cxy * cxy);
    const double l1 = half + root, l2 = half - root > 1e-9 ? half - root : 1e-9;
    *horizontal = vx > vy;
    return sqrt(l1 / l2);
}

static int is_bar(const uint8_t *rgb, const char *colour, double *e) {
    int n, horizontal;
    *e = blob_elongation(rgb, palette_index(colour), &n, &horizontal);
    return n >= 12 && *e >= BAR_ELONGATION && horizontal;
}

// `batch` images of one prompt (DDIM 20 steps, guidance 5, seed); init/mask: inpainting.
static int draw(ldm_pipeline *p, const ldm_sampler_info *si, ldm_sigma_kind sk, const char *prompt,
                uint64_t seed, int batch, const uint8_t *init, const uint8_t *mask, uint8_t *rgb) {
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, seed);
    ldm_generate_params gp = {
        .prompt = prompt, .negative = "", .width = SIDE, .height = SIDE, .batch = batch,
        .sampling = {.sampler = si, .sigma_kind = sk, .steps = 20, .eta = 0.0f,
                     .conv = LDM_CONVENTIONS_DIFFUSERS},
        .cfg_scale = 5.0f, .clip_skip = 1, .rng = &rng, .lora_dir = lora_dir,
        .init_rgb = init, .mask_rgb = mask, .strength = 1.0,
    };
    if (ldm_generate(p, &gp, NULL, rgb) == 0) return 1;
    printf("  generate '%s': %s\n", prompt, ldm_last_error());
    return 0;
}

// The bar LoRA: bar prompts with and without <lora:bar:1>, then the grid's
// own prompts (one seed, every third prompt) with it.
static void lora_test(ldm_pipeline *p, const ldm_sampler_info *si, ldm_sigma_kind sk) {
    printf("== LoRA %s/bar.safetensors: a shape the tiny model never saw\n", lora_dir);
    uint8_t rgb[SEEDS * SIDE * SIDE * 3];
    char prompt[512];
    int n = 0, bars[2] = {0}, runs_ok = 1;
    double e_sum[2] = {0};
    for (int i = 0; i < n_extras; i++) {
        if (strcmp(extras[i].kind, "bar")) continue;
        for (int with = 0; with < 2; with++) {
            snprintf(prompt, sizeof prompt, "%s%s", extras[i].caption, with ? " <lora:bar:1>" : "");
            runs_ok &= draw(p, si, sk, prompt, (uint64_t)(2000 + i), SEEDS, NULL, NULL, rgb);
            for (int s = 0; s < SEEDS; s++) {
                double e;
                bars[with] += is_bar(rgb + (size_t)s * SIDE * SIDE * 3, extras[i].colour, &e);
                e_sum[with] += e;
            }
        }
        n += SEEDS;
    }
    const char *shapes[3] = {"circle", "square", "triangle"};
    int grid_n = 0, grid_both = 0, grid_bars = 0, shape_n[3] = {0}, shape_bars[3] = {0};
    for (int i = 0; i < n_prompts; i += 3) {
        snprintf(prompt, sizeof prompt, "%s <lora:bar:1>", prompts[i].caption);
        runs_ok &= draw(p, si, sk, prompt, (uint64_t)(1000 + i), 1, NULL, NULL, rgb);
        int c, pl;
        double e;
        judge(rgb, &prompts[i], &c, &pl);
        grid_both += c && pl;
        int bar = is_bar(rgb, prompts[i].colour, &e);
        grid_bars += bar;
        grid_n++;
        for (int k = 0; k < 3; k++)
            if (!strcmp(prompts[i].shape, shapes[k])) { shape_n[k]++; shape_bars[k] += bar; }
    }
    printf("  bar prompts (%d images, English and Japanese): a bar of the requested colour\n", n);
    printf("    without the LoRA %5.1f%% (mean elongation %.2f)\n", 100.0 * bars[0] / n, e_sum[0] / n);
    printf("    with <lora:bar:1> %5.1f%% (mean elongation %.2f)\n", 100.0 * bars[1] / n, e_sum[1] / n);
    printf("  grid prompts with the LoRA (%d images): colour and place %.1f%%, drawn as bars %.1f%%\n",
           grid_n, 100.0 * grid_both / grid_n, 100.0 * grid_bars / grid_n);
    for (int k = 0; k < 3; k++)
        printf("    %-8s drawn as a bar: %d of %d\n", shapes[k], shape_bars[k], shape_n[k]);
    test_check(runs_ok && n > 0, "LoRA: every prompt generated", "a generation failed or no bar rows");
    test_check(bars[1] >= 0.7 * n, "LoRA: with <lora:bar:1> >= 70% of bar prompts draw a bar",
               "%d of %d", bars[1], n);
    test_check(bars[0] <= 0.05 * n, "LoRA: without it <= 5% do (the base model has no bar)",
               "%d of %d", bars[0], n);
    test_check(grid_both >= 0.9 * grid_n && grid_bars <= 0.15 * grid_n,
               "LoRA: circles, squares, triangles still drawn (>= 90%), rarely as bars (<= 15%)",
               "%d of %d ok, %d bars", grid_both, grid_n, grid_bars);
}

// decode(encode(x)) with the posterior mean: the best the autoencoder can keep.
static int vae_round_trip(uint8_t *out, ldm_pipeline *p, const uint8_t *rgb) {
    float px[3 * SIDE * SIDE];
    ldm_pixels_to_unit(px, rgb, SIDE, SIDE);
    ldm_tensor x = ldm_tensor_new(p->ops, LDM_SHAPE(1, 3, SIDE, SIDE)), z = {0}, y = {0};
    ldm_vae_options vo = {0};
    int rc = x.data ? LDM_OK : LDM_ERR;
    if (rc == LDM_OK) ldm_tensor_from_host(&x, px);
    if (rc == LDM_OK) rc = ldm_vae_encode(&z, &p->vae, &x, NULL, &vo);
    if (rc == LDM_OK) rc = ldm_vae_decode(&y, &p->vae, &z, &vo);
    if (rc == LDM_OK) {
        ldm_tensor_to_host(px, &y);
        ldm_unit_to_pixels(out, px, SIDE, SIDE, 0);
    }
    ldm_tensor_free(&x); ldm_tensor_free(&z); ldm_tensor_free(&y);
    return rc == LDM_OK;
}

// Inside: A's colour dominates the mask. Outside: mean |out - init| over the
// pixels more than 8 px (Chebyshev) from the mask, against the round trip's.
static void inpaint_test(const ldm_sampler_info *si, ldm_sigma_kind sk) {
    printf("== inpainting model %s (9-channel UNet)\n", inpaint_model);
    ldm_pipeline p;
    ldm_pipeline_options o = {.prediction = LDM_PRED_AUTO, .need_encoder = 1};
    if (!test_check(ldm_pipeline_open(&p, inpaint_model, &o) == 0, inpaint_model, "open: %s",
                    ldm_last_error()))
        return;
    if (p.ops->set_threads) p.ops->set_threads(1);
    test_check(p.inpaint_unet == 1, "inpainting model: UNet of 9 input channels", "in_channels %d",
               (int)p.model.unet.in_channels);
    uint8_t rgb[SEEDS * SIDE * SIDE * 3], rt[SIDE * SIDE * 3];
    int n = 0, inside_ok = 0, runs_ok = 1, cases = 0;
    double worst_out = 0, worst_rt = 0, sum_out = 0, sum_rt = 0, worst_excess = -1e9;
    for (int i = 0; i < n_extras; i++) {
        const extra_row *e = &extras[i];
        if (strcmp(e->kind, "inpaint")) continue;
        ldm_image init = {0}, mask = {0};
        char path[256];
        snprintf(path, sizeof path, EXTRAS_DIR "%s", e->a);
        int ok = ldm_png_read(&init, path) == 0;
        snprintf(path, sizeof path, EXTRAS_DIR "%s", e->b);
        ok = ok && ldm_png_read(&mask, path) == 0;
        ok = ok && init.width == SIDE && init.height == SIDE && mask.width == SIDE && mask.height == SIDE;
        if (!ok) {
            test_check(0, "inpainting: read the case's images", "%s / %s: %s", e->a, e->b, ldm_last_error());
            ldm_image_free(&init); ldm_image_free(&mask);
            continue;
        }
        cases++;
        // M: 1 = repaint; far: 1 = more than 8 px from every repainted pixel
        int M[SIDE * SIDE], far[SIDE * SIDE];
        for (int k = 0; k < SIDE * SIDE; k++) M[k] = mask.rgb[3 * k] >= 128;
        for (int y = 0; y < SIDE; y++)
            for (int x = 0; x < SIDE; x++) {
                int f = 1;
                for (int yy = y - 8; yy <= y + 8 && f; yy++)
                    for (int xx = x - 8; xx <= x + 8 && f; xx++)
                        if (yy >= 0 && yy < SIDE && xx >= 0 && xx < SIDE && M[yy * SIDE + xx]) f = 0;
                far[y * SIDE + x] = f;
            }
        runs_ok &= vae_round_trip(rt, &p, init.rgb);
        runs_ok &= draw(&p, si, sk, e->caption, (uint64_t)(3000 + i), SEEDS, init.rgb, mask.rgb, rgb);
        int want = palette_index(e->colour);
        for (int s = 0; s < SEEDS; s++) {
            const uint8_t *img = rgb + (size_t)s * SIDE * SIDE * 3;
            int count[MAX_PAL] = {0}, n_far = 0;
            double err = 0, err_rt = 0;
            for (int k = 0; k < SIDE * SIDE; k++) {
                if (M[k]) count[nearest_palette(img + 3 * k)]++;
                if (!far[k]) continue;
                n_far++;
                for (int c = 0; c < 3; c++) {
                    err += abs(img[3 * k + c] - init.rgb[3 * k + c]);
                    err_rt += abs(rt[3 * k + c] - init.rgb[3 * k + c]);
                }
            }
            err /= 3.0 * n_far; err_rt /= 3.0 * n_far;
            int others = 0;
            for (int k = 0; k < n_pal; k++)
                if (!pal[k].background && k != want && count[k] > others) others = count[k];
            inside_ok += want >= 0 && count[want] >= 12 && count[want] > others;
            sum_out += err; sum_rt += err_rt;
            if (err > worst_out) worst_out = err;
            if (err_rt > worst_rt) worst_rt = err_rt;
            if (err - err_rt > worst_excess) worst_excess = err - err_rt;
            n++;
        }
        ldm_image_free(&init); ldm_image_free(&mask);
    }
    ldm_pipeline_close(&p);
    if (!test_check(n > 0 && runs_ok, "inpainting: every case generated", "%d images, %d cases", n, cases))
        return;
    printf("  %d images (%d cases x English/Japanese x %d seeds)\n", n, cases / 2, SEEDS);
    printf("  inside the mask: the prompted colour dominates in %d (%.1f%%)\n", inside_ok, 100.0 * inside_ok / n);
    printf("  outside (> 8 px from the mask), mean |out - init| per channel: mean %.2f, worst %.2f /255\n",
           sum_out / n, worst_out);
    printf("    the VAE round trip of the init image alone:               mean %.2f, worst %.2f /255\n",
           sum_rt / n, worst_rt);
    test_check(inside_ok >= 0.9 * n, "inpainting: the prompted object fills the mask in >= 90%",
               "%d of %d", inside_ok, n);
    test_check(worst_excess <= 6.0, "inpainting: outside the mask within 6/255 of the VAE round trip",
               "worst excess %.2f /255", worst_excess);
}

int main(void) {
    const char *env = getenv("LDM_TINY_MODEL");
    const char *model = env && *env ? env : MODEL;
    printf("== tiny model semantic test (%s)\n", model);
    if (!test_check(load_grid(), "read " GRID, "missing or empty")) return test_summary();
    ldm_pipeline p;
    ldm_pipeline_options o = {.prediction = LDM_PRED_AUTO};
    if (!test_check(ldm_pipeline_open(&p, model, &o) == 0, model, "open: %s", ldm_last_error()))
        return test_summary();
    // 8x8 latents: thread start-up costs more than the arithmetic (one thread:
    // 50 s for the grid, two: about 3 min of mostly spinning).
    if (p.ops->set_threads) p.ops->set_threads(1);
    const ldm_sampler_info *si;
    ldm_sigma_kind sk;
    if (!test_check(ldm_sampler_parse(&si, &sk, "ddim") == 0, "sampler ddim", "%s", ldm_last_error()))
        return test_summary();

    tally t[64];
    int nt = 0, total = 0, both = 0, failed_runs = 0;
    uint8_t *rgb = malloc((size_t)SEEDS * SIDE * SIDE * 3);
    for (int i = 0; i < n_prompts; i++) {
        const grid_prompt *g = &prompts[i];
        ldm_rng rng;
        ldm_rng_init(&rng, LDM_RNG_CPU, (uint64_t)(1000 + i));   // one seed per prompt, SEEDS images
        ldm_generate_params gp = {
            .prompt = g->caption, .negative = "", .width = SIDE, .height = SIDE, .batch = SEEDS,
            .sampling = {.sampler = si, .sigma_kind = sk, .steps = 20, .eta = 0.0f,
                         .conv = LDM_CONVENTIONS_DIFFUSERS},
            .cfg_scale = 5.0f, .clip_skip = 1, .rng = &rng,
        };
        if (ldm_generate(&p, &gp, NULL, rgb) != 0) {
            printf("  generate '%s': %s\n", g->caption, ldm_last_error());
            failed_runs++;
            continue;
        }
        for (int s = 0; s < SEEDS; s++) {
            int c, pl;
            judge(rgb + (size_t)s * SIDE * SIDE * 3, g, &c, &pl);
            add(t, &nt, g->colour, c, pl);
            add(t, &nt, g->place, c, pl);
            add(t, &nt, g->shape, c, pl);
            add(t, &nt, !strcmp(g->lang, "en") ? "English" : "Japanese", c, pl);
            total++;
            both += c && pl;
        }
    }
    free(rgb);

    printf("  %-10s %6s %8s %8s %8s\n", "attribute", "images", "colour", "place", "both");
    for (int i = 0; i < nt; i++)
        printf("  %-10s %6d %7.1f%% %7.1f%% %7.1f%%\n", t[i].key, t[i].n, 100.0 * t[i].colour / t[i].n,
               100.0 * t[i].place / t[i].n, 100.0 * t[i].both / t[i].n);
    test_check(failed_runs == 0, "every prompt generated", "%d failed", failed_runs);
    double rate = total ? (double)both / total : 0;
    // The bar: the requested colour dominates the requested region in >= 90%.
    test_check(rate >= 0.90, "colour dominates the requested region in >= 90% of images",
               "%.1f%% of %d", 100 * rate, total);
    printf("  overall: %d of %d images (%.1f%%)\n", both, total, 100 * rate);

    // The LoRA and the inpainting model were trained from the committed model:
    // a retrained one ($LDM_TINY_MODEL) is judged on the grid only.
    if (env && *env) {
        printf("  (LoRA and inpainting: skipped for $LDM_TINY_MODEL)\n");
        ldm_pipeline_close(&p);
        return test_summary();
    }
    const char *ld = getenv("LDM_TINY_LORA_DIR"), *im = getenv("LDM_TINY_INPAINT");
    if (ld && *ld) lora_dir = ld;
    if (im && *im) inpaint_model = im;
    if (test_check(load_extras(), "read " EXTRAS, "missing or empty")) lora_test(&p, si, sk);
    ldm_pipeline_close(&p);
    if (n_extras > 0) inpaint_test(si, sk);
    return test_summary();
}
