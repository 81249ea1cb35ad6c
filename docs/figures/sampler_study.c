/*
 * docs/figures/sampler_study.c -- the convergence lab of docs/06-samplers.md:
 * every sampler on the analytic model (samplers/analytic.h: data a mixture
 * of two Gaussians per element, exact optimal denoiser, exact ODE), for a
 * range of step counts and the default / Karras / exponential sigmas (Euler
 * and DPM++ 2M: every sigma schedule); prints one tab-separated row
 * per run: sampler, schedule, steps, model evaluations (NFE), RMS error at
 * the last noise level > 0 (the ODE solve), RMS error of the final sample
 * against the exact ODE end point, and the final sample's mean and variance.
 *
 * `make sampler-study` builds and runs it, then draws
 * docs/figures/sampler-study.png with plot_sampler_study.py.
 * Usage: sampler_study [out.tsv]   (stdout without an argument)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "samplers/analytic.h"
#include "samplers/rng.h"
#include "samplers/sampler.h"

// The data of the lab (and of tests/test_analytic.c): two well separated
// modes of different widths, so the denoiser is strongly non-linear.
static const ldm_analytic MIXTURE = {.K = 2, .w = {0.3, 0.7}, .mu = {-1.0, 1.5}, .s = {0.3, 0.5}};

int main(int argc, char **argv) {
    FILE *out = argc > 1 ? fopen(argv[1], "w") : stdout;
    if (!out) { fprintf(stderr, "sampler_study: cannot write %s\n", argv[1]); return 1; }
    ldm_schedule sch;
    ldm_schedule_init_sd(&sch);
    ldm_analytic a = MIXTURE;
    a.sched = &sch;
    a.prediction = LDM_PRED_EPS;
    const int64_t per = 1024;  // 1024 independent samples of the 1-D data
    float *noise = malloc((size_t)per * sizeof(float));
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, 0);
    ldm_rng_randn(&rng, noise, per);
    static const int steps[] = {3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 70, 100, 150, 200, 300, 500, 1000};
    // ldm_sigma_kind order; every sampler runs on the first three, Euler and
    // DPM++ 2M on all (the schedule comparison of the lab)
    static const char *kinds[LDM_SIGMAS_COUNT] = {"default", "karras", "exponential",
                                                  "sgm_uniform", "simple", "kl_optimal", "ays",
                                                  "beta", "gits", "smoothstep"};
    fprintf(out, "sampler\tschedule\tsteps\tnfe\terr_last\terr_final\tmean\tvar\n");
    double mean, var;
    ldm_analytic_moments(&a, &mean, &var);
    fprintf(out, "data\t-\t0\t0\t0\t0\t%.6g\t%.6g\n", mean, var);
    for (int s = 0; s < ldm_sampler_count; s++) {
        const ldm_sampler_info *info = &ldm_samplers[s];
        // DPM fast / adaptive end at sigma_min, not 0, and pick their own steps:
        // tests/test_analytic.c measures them against the ODE there
        if (!strcmp(info->name, "dpm_fast") || !strcmp(info->name, "dpm_adaptive")) continue;
        int all = !strcmp(info->name, "euler") || !strcmp(info->name, "dpmpp_2m");
        for (int k = 0; k < (info->uses_sigmas ? (all ? LDM_SIGMAS_COUNT : 3) : 1); k++) {
            ldm_analytic_cache cache = {0};
            for (size_t j = 0; j < sizeof steps / sizeof steps[0]; j++) {
                ldm_analytic_run r = {0};
                if (ldm_analytic_sample(&r, &a, info, k, steps[j], noise, per, -1, 1,
                                        &cache) != LDM_OK) {
                    // a schedule that cannot hold so many steps (smoothstep repeats a
                    // timestep from 78 on; LCM/TCD stop at 50): no row, said on stderr
                    fprintf(stderr, "sampler_study: %s (%s) at %d steps: %s (skipped)\n",
                            info->name, info->uses_sigmas ? kinds[k] : "trailing", steps[j],
                            ldm_last_error());
                    continue;
                }
                fprintf(out, "%s\t%s\t%d\t%lld\t%.6e\t%.6e\t%.6g\t%.6g\n", info->name,
                        info->uses_sigmas ? kinds[k] : "trailing", steps[j], (long long)r.nfe,
                        r.err_last, r.err_final, r.mean, r.var);
            }
            ldm_analytic_cache_free(&cache);
        }
    }
    if (out != stdout) fclose(out);
    free(noise);
    return 0;
}
