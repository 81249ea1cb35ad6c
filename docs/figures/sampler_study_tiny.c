/*
 * docs/figures/sampler_study_tiny.c -- the convergence lab of
 * docs/06-samplers.md on a real network: the trained tiny model
 * (tools/tiny-model), two prompts of its domain, one seed, guidance 7.5.
 *
 * The reference is the probability-flow ODE solved with DPM++ 2M on 1000
 * Karras steps (a second-order solver at 1000 steps: its own error is far
 * below anything measured here). Every sampler of the table then runs at
 * 3..200 steps (the k-diffusion family on the Karras sigmas, DDPM/DDIM/PLMS on
 * diffusers' "leading" timesteps; not CFG++, whose guidance scale means
 * something else) from the same starting noise, and one row
 * per run is printed: sampler, schedule, stochastic (1: ancestral / SDE,
 * eta > 0 by default), steps, model evaluations (NFE), the RMS
 * distance of its final latent to the reference latent, and of its decoded
 * pixels (0..255) to the reference image. NFE is what the run spent
 * (ldm_generate_params.nfe), so DPM adaptive's rows show its own choice. Ancestral / SDE samplers are rows
 * like the others; the plot shows them apart.
 *
 * Also printed, as the "check" rows: Euler and DDIM at 1000 steps against
 * the reference, the blog's claim that every ODE sampler lands on the same
 * image when given enough steps.
 *
 * `make sampler-study-tiny` builds and runs it, then draws
 * docs/figures/sampler-study-tiny.png with plot_sampler_study_tiny.py.
 * Usage: sampler_study_tiny [out.tsv] [model]   (stdout; tools/tiny-model)
 * A few minutes of CPU.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/pipeline.h"
#include "samplers/sampler.h"

enum { B = 2, SIDE = 64 };
static const char *PROMPTS[B] = {"a red circle on the left", "a blue square on the right"};

// One image pair: latent [B,4,8,8] and pixels [B][64][64][3] of one sampler run.
typedef struct { float lat[B * 4 * 8 * 8]; uint8_t rgb[B * SIDE * SIDE * 3]; } result;

static int generate(result *r, int64_t *nfe, ldm_pipeline *p, const ldm_sampler_info *info,
                    ldm_sigma_kind kind, int steps) {
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, 7);
    ldm_generate_params g = {
        .prompt = PROMPTS[0], .prompts = PROMPTS, .negative = "", .width = SIDE, .height = SIDE,
        .batch = B, .cfg_scale = 7.5f, .clip_skip = 1, .rng = &rng, .nfe = nfe,
        .sampling = {.sampler = info, .sigma_kind = kind, .steps = steps, .eta = -1.0f,
                     .conv = LDM_CONVENTIONS_DIFFUSERS},
    };
    return ldm_generate(p, &g, r->lat, r->rgb);
}

static double rms_latent(const result *a, const result *b) {
    double s = 0;
    int n = (int)(sizeof a->lat / sizeof a->lat[0]);
    for (int k = 0; k < n; k++) s += ((double)a->lat[k] - b->lat[k]) * ((double)a->lat[k] - b->lat[k]);
    return sqrt(s / n);
}

static double rms_pixels(const result *a, const result *b) {
    double s = 0;
    int n = (int)sizeof a->rgb;
    for (int k = 0; k < n; k++) s += ((double)a->rgb[k] - b->rgb[k]) * ((double)a->rgb[k] - b->rgb[k]);
    return sqrt(s / n);
}

int main(int argc, char **argv) {
    FILE *out = argc > 1 ? fopen(argv[1], "w") : stdout;
    if (!out) { fprintf(stderr, "sampler_study_tiny: cannot write %s\n", argv[1]); return 1; }
    const char *model = argc > 2 ? argv[2] : LDM_TINY_MODEL_DEFAULT;
    ldm_pipeline p;
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu};
    if (ldm_pipeline_open(&p, model, &po) != LDM_OK) {
        fprintf(stderr, "sampler_study_tiny: %s\n", ldm_last_error());
        return 1;
    }
    static result ref, run;
    const ldm_sampler_info *info;
    ldm_sigma_kind kind;
    if (ldm_sampler_parse(&info, &kind, "dpmpp_2m") != LDM_OK ||
        generate(&ref, NULL, &p, info, LDM_SIGMAS_KARRAS, 1000) != LDM_OK) {
        fprintf(stderr, "sampler_study_tiny: reference: %s\n", ldm_last_error());
        return 1;
    }
    fprintf(out, "sampler\tschedule\tstochastic\tsteps\tnfe\tlatent_rms\tpixel_rms\n");
    // the check rows: other ODE samplers at 1000 steps land on the reference
    static const char *check[] = {"euler", "ddim"};
    for (int c = 0; c < 2; c++) {
        ldm_sampler_parse(&info, &kind, check[c]);
        int64_t nfe = 0;
        if (generate(&run, &nfe, &p, info, LDM_SIGMAS_KARRAS, 1000) != LDM_OK) {
            fprintf(stderr, "sampler_study_tiny: %s: %s\n", check[c], ldm_last_error());
            return 1;
        }
        fprintf(out, "check_%s\t%s\t0\t1000\t%lld\t%.6e\t%.6e\n", check[c],
                info->uses_sigmas ? "karras" : "leading", (long long)nfe,
                rms_latent(&run, &ref), rms_pixels(&run, &ref));
    }
    static const int steps[] = {3, 5, 8, 10, 15, 20, 30, 50, 100, 200};
    for (int s = 0; s < ldm_sampler_count; s++) {
        info = &ldm_samplers[s];
        // CFG++ reads the guidance scale as a 0..1 interpolation (docs/06): at
        // 7.5 it solves another equation, so it has no place beside this reference
        if (strstr(info->name, "cfgpp")) continue;
        for (size_t j = 0; j < sizeof steps / sizeof steps[0]; j++) {
            int64_t nfe = 0;
            if (generate(&run, &nfe, &p, info, LDM_SIGMAS_KARRAS, steps[j]) != LDM_OK) {
                // a sampler that cannot take so few steps (multistep warm-up): skip the row
                fprintf(stderr, "sampler_study_tiny: %s at %d steps: %s (skipped)\n", info->name,
                        steps[j], ldm_last_error());
                continue;
            }
            fprintf(out, "%s\t%s\t%d\t%d\t%lld\t%.6e\t%.6e\n", info->name,
                    info->uses_sigmas ? "karras" : "leading", info->default_eta > 0, steps[j],
                    (long long)nfe, rms_latent(&run, &ref),
                    rms_pixels(&run, &ref));
            fflush(out);
        }
    }
    ldm_pipeline_close(&p);
    if (out != stdout) fclose(out);
    return 0;
}
