/*
 * tests/test_analytic.c -- every sampler against an independent ground truth:
 * the analytic model of samplers/analytic.h (data a Gaussian or a mixture of
 * Gaussians per element; its optimal denoiser and probability-flow ODE are
 * closed form). No PyTorch fixture is involved: the reference is mathematics.
 *
 *   1. the analytic model itself: the RK4 flow equals the closed form, and the
 *      denoiser seen through ldm_denoiser (c_in, sigma -> t -> sigma) is D;
 *   2. a point mass (s = 0): the ODE solution is linear in sigma, every
 *      deterministic sampler is exact at 5 steps;
 *   3. DDIM (eta 0) is Euler in sigma on the same noise levels (Karras et al.
 *      2022 sec. 3 / Song et al. 2021 sec. 4.3);
 *   4. the measured order of convergence of every deterministic sampler;
 *   5. the ancestral / SDE samplers: the distribution of their samples;
 *   6. model evaluations per step (the NFE table of docs/06-samplers.md);
 *   7. ER-SDE's distribution, DPM-Solver fast / adaptive against the exact ODE
 *      at sigma_min, CFG++ as a CFG step of another scale.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "samplers/analytic.h"
#include "samplers/rng.h"
#include "samplers/sampler.h"
#include "samplers/schedule.h"
#include "tests/test.h"

static ldm_schedule SCHED;

// The data of the order and distribution tests (and of the lab,
// docs/figures/sampler_study.c): two separated modes of different widths.
static ldm_analytic mixture(void) {
    ldm_analytic a = {.K = 2, .w = {0.3, 0.7}, .mu = {-1.0, 1.5}, .s = {0.3, 0.5},
                      .sched = &SCHED, .prediction = LDM_PRED_EPS};
    return a;
}

static const ldm_sampler_info *sampler(const char *name) {
    const ldm_sampler_info *info = NULL;
    ldm_sigma_kind k;
    if (ldm_sampler_parse(&info, &k, name) != LDM_OK) return NULL;
    return info;
}

static float *randn(int64_t n, uint64_t seed) {
    float *x = malloc((size_t)n * sizeof(float));
    ldm_rng r;
    ldm_rng_init(&r, LDM_RNG_CPU, seed);
    ldm_rng_randn(&r, x, n);
    return x;
}

// ---------------------------------------------------------------------------
// 1. the model

static void test_model(void) {
    // RK4 against the closed form: two identical components are one Gaussian,
    // but take the integrator's path. Tolerance 1e-9: RK4 at 100 steps per unit
    // of log sigma has a global error ~1e-11 on this smooth flow.
    ldm_analytic two = {.K = 2, .w = {0.5, 0.5}, .mu = {0.4, 0.4}, .s = {0.6, 0.6}};
    ldm_analytic one = {.K = 1, .w = {1}, .mu = {0.4}, .s = {0.6}};
    double y0[5] = {-30, -3, 0.1, 2, 40}, a[5], b[5], worst = 0;
    ldm_analytic_flow(&two, a, y0, 5, 14.6, 0.03);
    ldm_analytic_flow(&one, b, y0, 5, 14.6, 0.03);
    for (int i = 0; i < 5; i++) worst = fmax(worst, fabs(a[i] - b[i]));
    test_check(worst < 1e-9, "RK4 flow equals the closed form (one Gaussian)", "max diff %.3e", worst);

    // The denoiser through ldm_denoiser: c_in x -> the model -> D = x - sigma eps.
    // Float32 inputs and sigma -> t -> sigma in float32: 1e-5 relative to |x|.
    ldm_analytic m = mixture();
    ldm_analytic_ctx mc = {&m, 64};
    ldm_denoiser dn = {.fn = ldm_analytic_model, .ctx = &mc, .sched = &SCHED, .B = 1, .per = 64};
    ldm_denoiser_init(&dn);
    float *x = randn(64, 3), D[64], Dexp[64];
    const float sigmas[3] = {0.05f, 1.0f, 12.0f};
    for (int j = 0; j < 3; j++) {
        for (int k = 0; k < 64; k++) x[k] = 1.0f + x[k] * sigmas[j];
        ldm_denoiser_denoised(&dn, D, x, sigmas[j]);
        for (int k = 0; k < 64; k++) Dexp[k] = (float)ldm_analytic_denoise(&m, x[k], sigmas[j]);
        char name[80];
        snprintf(name, sizeof name, "denoiser through ldm_denoiser, sigma %g", sigmas[j]);
        double scale = 0;
        for (int k = 0; k < 64; k++) scale = fmax(scale, fabs(x[k]));
        test_close(name, D, Dexp, 64, 0, 1e-5 * scale);
    }
    ldm_denoiser_free(&dn);
    free(x);
}

// ---------------------------------------------------------------------------
// 2. a point mass: every deterministic sampler exact

static const char *DETERMINISTIC[] = {"ddim", "plms", "euler", "heun", "dpm2", "lms", "dpmpp_2m",
                                      "dpmpp_3m", "res_multistep", "euler_cfgpp",
                                      "dpmpp_2m_cfgpp", "unipc", "unipc_bh1", "deis", "ipndm",
                                      "ipndm_v", "ddim_trailing"};
#define N_DET (int)(sizeof DETERMINISTIC / sizeof DETERMINISTIC[0])

// Data = the single point mu (s = 0): D = mu for every input, the ODE slope
// (y - mu)/sigma is constant along the solution y = mu + (y0 - mu) sigma/sigma0,
// so a method exact for a constant slope (all of these) is exact at any step
// count. Tolerance: float32 rounding of |y| ~ 40 over a few steps, 1e-5.
static void test_point_mass(void) {
    ldm_analytic a = {.K = 1, .w = {1}, .mu = {0.5}, .s = {0}, .sched = &SCHED};
    const int64_t per = 256;
    float *noise = randn(per, 0);
    for (int i = 0; i < N_DET; i++) {
        ldm_analytic_run r = {0};
        int rc = ldm_analytic_sample(&r, &a, sampler(DETERMINISTIC[i]), LDM_SIGMAS_KARRAS, 5,
                                     noise, per, -1, 1, NULL);
        char name[96];
        snprintf(name, sizeof name, "point mass: %s exact at 5 steps", DETERMINISTIC[i]);
        test_check(rc == LDM_OK && r.err_last < 1e-5 && r.err_final < 1e-5, name,
                   "rc %d, RMS error %.3e at sigma_min, %.3e at 0", rc, r.err_last, r.err_final);
    }
    free(noise);
}

// ---------------------------------------------------------------------------
// 3. DDIM is Euler in sigma

// DDIM (eq. 12, eta 0) in y = x/sqrt(abar), sigma = sqrt((1-abar)/abar):
//   y_prev = x0_hat + sigma_prev eps = y + (sigma_prev - sigma) eps,
// and eps = (y - D)/sigma is Euler's slope: the same step. Both runs here go
// through the same noise levels (DDIM's 20 trailing timesteps, then 0);
// they differ by float rounding and sigma -> t -> sigma (1e-5 relative).
static void test_ddim_is_euler(void) {
    ldm_analytic a = mixture();
    const int64_t per = 256;
    const int n = 20;
    float *noise = randn(per, 0), *x[2];
    int ts[20];
    float sig[21];
    ldm_timesteps(ts, &SCHED, LDM_SPACING_TRAILING, n, 0);
    for (int i = 0; i < n; i++) sig[i] = (float)ldm_analytic_sigma_of_t(&SCHED, ts[i]);
    sig[n] = 0;
    for (int k = 0; k < 2; k++) {
        ldm_analytic_ctx mc = {&a, per};
        ldm_denoiser dn = {.fn = ldm_analytic_model, .ctx = &mc, .sched = &SCHED, .B = 1, .per = per};
        ldm_denoiser_init(&dn);
        ldm_rng rng;
        ldm_rng_init(&rng, LDM_RNG_CPU, 1);
        x[k] = malloc((size_t)per * sizeof(float));
        ldm_sampler_ctx c = {.dn = &dn, .rng = &rng, .n = n, .timesteps = ts, .sigmas = sig,
                             .s_tmax = INFINITY, .s_noise = 1, .set_alpha_to_one = 1};
        for (int64_t j = 0; j < per; j++)  // DDIM starts at x_T (VP), Euler at y = x_T / sqrt(abar)
            x[k][j] = k == 0 ? noise[j] : noise[j] * sqrtf(1 + sig[0] * sig[0]);
        if (k == 0) ldm_sample_ddim(x[k], &c);
        else ldm_sample_euler(x[k], &c);
        ldm_denoiser_free(&dn);
    }
    test_close("DDIM (eta 0) equals Euler in sigma, 20 steps", x[0], x[1], per, 1e-5, 0);
    free(x[0]); free(x[1]); free(noise);
}

// ---------------------------------------------------------------------------
// 4. orders of convergence

// The order p of a method: error ~ C n^-p. Measured as the least-squares
// slope of log(error) against log(steps) over a range where the error is
// asymptotic: above the float32 floor (~1e-6) and past the first few steps,
// where the error is not yet a power of the step size. The error is the RMS
// difference to the exact ODE solution at the last noise level > 0
// (sigma_min): the final step to sigma = 0 of every sampler is one denoising
// step, a fixed error ~ (sigma_min/s)^2/2 that does not shrink with n (the
// lab, docs/06-samplers.md, shows it), so it is left out of the order.
typedef struct {
    const char *sampler;
    int kind;            // sigma schedule (k-diffusion samplers)
    double order;        // theoretical
    double tol;          // allowed |measured - order|, reason in `why`
    int steps[8];        // the fit range, 0-terminated
    const char *why;
} order_case;

static const order_case ORDERS[] = {
    {"euler", LDM_SIGMAS_KARRAS, 1, 0.15, {100, 150, 200, 300, 500, 1000},
     "first order; pre-asymptotic curvature leaves 0.9..1.0"},
    {"ddim", 0, 1, 0.2, {100, 125, 200, 250, 500, 1000},
     "Euler in sigma (test 3); trailing integer timesteps give uneven sigma steps, 0.85..1.0"},
    {"heun", LDM_SIGMAS_KARRAS, 2, 0.15, {20, 30, 50, 100, 200, 500},
     "second order (trapezoidal predictor-corrector)"},
    {"dpm2", LDM_SIGMAS_KARRAS, 2, 0.15, {20, 30, 50, 100, 200, 500},
     "second order (midpoint in log sigma)"},
    {"dpmpp_2m", LDM_SIGMAS_KARRAS, 2, 0.15, {20, 30, 50, 100, 200, 500},
     "second order multistep; its first step is first order (local error O(h^2), global O(h^2))"},
    {"lms", LDM_SIGMAS_KARRAS, 4, 0.6, {40, 50, 70, 100, 0},
     "4th-order Adams-Bashforth on the actual sigmas, but the first three steps use orders "
     "1..3 and the float32 floor (~1e-6) is reached by 150 steps: the fit sees ~3.6"},
    {"dpmpp_3m", LDM_SIGMAS_KARRAS, 3, 0.4, {15, 20, 30, 40, 0},
     "third order multistep, but its first step is first order: that step's local error "
     "O(h^2) is small (the ODE is nearly linear at sigma_max) yet it is global O(h^2), and "
     "past ~150 steps it dominates (measured slope 2.1 over 150..300)"},
    {"res_multistep", LDM_SIGMAS_KARRAS, 2, 0.15, {20, 30, 50, 100, 200, 500},
     "second order multistep with the exact phi_2 weight; first step first order, as DPM++ 2M"},
    {"dpmpp_2m_cfgpp", LDM_SIGMAS_KARRAS, 2, 0.15, {20, 30, 50, 100, 200, 500},
     "without guidance DPM++ 2M itself (test 7)"},
    {"plms", 0, 2, 0.5, {10, 20, 25, 40, 50, 100, 0},
     "4-step Adams-Bashforth weights for EQUAL steps applied to DDIM's uneven sigma steps "
     "(eps times the sigma increment, not eps times dsigma/dt at each node): consistent to "
     "second order only; step counts dividing 1000 keep the timesteps evenly spaced in t"},
    {"ddim_trailing", 0, 1, 0.2, {100, 125, 200, 250, 500, 1000},
     "DDIM on trailing timesteps, as ddim above"},
    {"ipndm", LDM_SIGMAS_KARRAS, 2, 0.15, {50, 70, 100, 150, 200, 300, 0},
     "the 4-step Adams-Bashforth weights of EQUAL steps on Karras' uneven sigma steps: "
     "consistent to second order only, as plms (on even steps it is 4th order: test below)"},
    {"ipndm_v", LDM_SIGMAS_KARRAS, 4, 0.6, {40, 50, 70, 100, 0},
     "variable-step 4th-order Adams-Bashforth, the same integrator as lms (test below): ~3.6"},
};

static double fit_slope(const double *logn, const double *loge, int m) {
    double mx = 0, my = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < m; i++) { mx += logn[i]; my += loge[i]; }
    mx /= m; my /= m;
    for (int i = 0; i < m; i++) {
        sxx += (logn[i] - mx) * (logn[i] - mx);
        sxy += (logn[i] - mx) * (loge[i] - my);
    }
    return -sxy / sxx;
}

static void test_orders(void) {
    ldm_analytic a = mixture();
    const int64_t per = 256;
    float *noise = randn(per, 0);
    for (size_t c = 0; c < sizeof ORDERS / sizeof ORDERS[0]; c++) {
        const order_case *oc = &ORDERS[c];
        double logn[8], loge[8];
        int m = 0, rc = LDM_OK;
        ldm_analytic_cache cache = {0};
        for (; m < 8 && oc->steps[m]; m++) {
            ldm_analytic_run r = {0};
            rc = ldm_analytic_sample(&r, &a, sampler(oc->sampler), oc->kind, oc->steps[m], noise,
                                     per, -1, 1, &cache);
            if (rc != LDM_OK) break;
            logn[m] = log(oc->steps[m]);
            loge[m] = log(r.err_last);
        }
        ldm_analytic_cache_free(&cache);
        double p = rc == LDM_OK ? fit_slope(logn, loge, m) : NAN;
        char name[128];
        snprintf(name, sizeof name, "order of %s: %.2f over %d..%d steps (theory %g +- %g)",
                 oc->sampler, p, oc->steps[0], oc->steps[m - 1], oc->order, oc->tol);
        test_check(fabs(p - oc->order) <= oc->tol, name, "%s", oc->why);
    }
    free(noise);
}

// The multistep samplers on grids that refine evenly. ldm_analytic_sample
// walks "trailing" integer timesteps to the last one, round(1000/n) - 1: near
// t = 0 the SD schedule has sigma ~ 0.029 sqrt(t + 1), so its last few
// integer steps are ~0.3 in log sigma at ANY n, and they cap every discrete
// sampler near first order there. Here the timesteps are 999, 999 - k, ...,
// 199 (evenly spaced in t where the schedule is smooth) and the error is
// taken at t = 199 against the exact flow; the k-diffusion samplers get
// sigmas evenly spaced from sigma_max to 0.5. x_at [per] <- x after step n-2
// (the last level > 0) of `name` from noise [per].
typedef struct { float *at; int64_t per; int i; } capture;

static void capture_step(void *vctx, int i, float *x, const float *denoised) {
    capture *c = vctx;
    if (i == c->i) memcpy(c->at, x, (size_t)c->per * sizeof(float));
}

static int run_grid(float *x_at, const char *name, const ldm_analytic *a, const int *ts,
                    const float *sig, int n, const float *noise, int64_t per) {
    ldm_analytic_ctx mc = {a, per};
    ldm_denoiser dn = {.fn = ldm_analytic_model, .ctx = &mc, .sched = &SCHED, .B = 1, .per = per};
    ldm_denoiser_init(&dn);
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, 1);
    capture cc = {x_at, per, n - 2};
    ldm_sampler_ctx c = {.dn = &dn, .rng = &rng, .n = n, .timesteps = ts, .sigmas = sig,
                         .s_tmax = INFINITY, .s_noise = 1, .set_alpha_to_one = 1,
                         .callback = capture_step, .callback_ctx = &cc};
    float *x = malloc((size_t)per * sizeof(float));
    for (int64_t k = 0; k < per; k++) x[k] = ts ? noise[k] : noise[k] * sig[0];
    int rc = sampler(name)->fn(x, &c);
    free(x);
    ldm_denoiser_free(&dn);
    return rc;
}

static void test_orders_even_grids(void) {
    static const struct { const char *name; double order, tol; int lo, hi; const char *why; } cases[] = {
        {"unipc", 3, 0.2, 20, 160, "UniP-2 + UniC-2: order 2 + 1 (Zhao et al. 2023, Theorem 3.1); "
         "past 200 steps the float32 floor (~5e-7) is reached"},
        {"unipc_bh1", 3, 0.2, 20, 160, "the same with B(h) = h"},
        {"deis", 2, 0.15, 20, 800, "second-order polynomial extrapolation of eps in log rho"},
        {"ipndm", 4, 0.6, 200, 800, "4-step Adams-Bashforth, exact weights on even steps; "
         "even sigma steps are coarse near sigma = 0.5 where the flow bends, so the slope is "
         "still rising (3.1 over 100..200, 3.6 over 400..800)"},
    };
    static const int counts[] = {10, 20, 40, 50, 80, 100, 160, 200, 400, 800};
    ldm_analytic a = mixture();
    const int64_t per = 256;
    float *noise = randn(per, 0), *x = malloc((size_t)per * sizeof(float));
    double *y0 = malloc((size_t)per * sizeof(double)), *y = malloc((size_t)per * sizeof(double));
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int discrete = !sampler(cases[c].name)->uses_sigmas;
        double s0 = discrete ? ldm_analytic_sigma_of_t(&SCHED, 999) : SCHED.sigmas[999];
        double s1 = discrete ? ldm_analytic_sigma_of_t(&SCHED, 199) : 0.5;
        for (int64_t k = 0; k < per; k++) y0[k] = noise[k] * (discrete ? sqrt(1 + s0 * s0) : s0);
        ldm_analytic_flow(&a, y, y0, per, s0, s1);
        double logn[10], loge[10];
        int m = 0, rc = LDM_OK;
        for (size_t j = 0; j < sizeof counts / sizeof counts[0]; j++) {
            int steps = counts[j], n = steps + 1;   // n - 1 steps from the first level to the last > 0
            if (steps < cases[c].lo || steps > cases[c].hi) continue;
            int *ts = malloc((size_t)n * sizeof(int));
            float *sig = malloc((size_t)(n + 1) * sizeof(float));
            for (int i = 0; i < n; i++) {
                ts[i] = 999 - i * (800 / steps);
                sig[i] = (float)(s0 + (s1 - s0) * i / steps);
            }
            sig[n] = 0;
            rc = run_grid(x, cases[c].name, &a, discrete ? ts : NULL, discrete ? NULL : sig, n,
                          noise, per);
            free(ts); free(sig);
            if (rc != LDM_OK) break;
            double e = 0, scale = discrete ? sqrt(1 + s1 * s1) : 1;   // x = y / scale
            for (int64_t k = 0; k < per; k++) e += (x[k] * scale - y[k]) * (x[k] * scale - y[k]);
            logn[m] = log(steps);
            loge[m++] = log(sqrt(e / per));
        }
        double p = rc == LDM_OK ? fit_slope(logn, loge, m) : NAN;
        char name[160];
        snprintf(name, sizeof name, "order of %s on even %s: %.2f over %d..%d steps (theory %g +- %g)",
                 cases[c].name, discrete ? "timesteps 999..199" : "sigmas 14.6..0.5", p,
                 cases[c].lo, cases[c].hi, cases[c].order, cases[c].tol);
        test_check(fabs(p - cases[c].order) <= cases[c].tol, name, "%s", cases[c].why);
    }
    free(noise); free(x); free(y0); free(y);
}

// ipndm_v's weights are the Lagrange integrals of lms (k-diffusion's LMS,
// tested against it in tests/test_samplers.c): on Karras sigmas the two
// trajectories agree up to the last level > 0 (they differ only in the final
// step to 0: lms extrapolates, ipndm_v returns D). On evenly spaced sigmas
// ipndm_v's weights are ipndm's fixed ones. Tolerance 1e-5 of max |x|: the
// same arithmetic in a different order (~1e-7 a step).
static void test_ipndm_v_is_lms(void) {
    ldm_analytic a = mixture();
    const int64_t per = 256;
    const int n = 30;
    float *noise = randn(per, 0), *x[4], sig[n + 1];
    ldm_sigmas_karras(sig, n, SCHED.sigmas[0], SCHED.sigmas[999], 7.0);
    static const char *names[4] = {"ipndm_v", "lms", "ipndm_v", "ipndm"};
    for (int k = 0; k < 4; k++) {
        if (k == 2)
            for (int i = 0; i < n; i++) sig[i] = (float)(SCHED.sigmas[999] + (0.5 - SCHED.sigmas[999]) * i / (n - 1));
        x[k] = malloc((size_t)per * sizeof(float));
        run_grid(x[k], names[k], &a, NULL, sig, n, noise, per);
    }
    double scale = 0;
    for (int64_t j = 0; j < per; j++) scale = fmax(scale, fabs(x[1][j]));
    test_close("ipndm_v equals lms on 30 Karras sigmas (up to the last level > 0)", x[0], x[1],
               per, 0, 1e-5 * scale);
    test_close("ipndm_v equals ipndm on 30 evenly spaced sigmas", x[2], x[3], per, 0, 1e-5 * scale);
    for (int k = 0; k < 4; k++) free(x[k]);
    free(noise);
}

// ---------------------------------------------------------------------------
// 5. the ancestral / SDE samplers: the distribution

// These do not follow the ODE; they sample. Every element is an independent
// draw, so one run of N = 20000 elements is N samples of the 1-D mixture
// (mean 0.75, variance 1.5145, mass 0.3043 below 0.25, between the modes).
// Tolerances: 4 standard errors of each statistic for N samples (mean
// 4 sqrt(var/N) = 0.035; variance 4 sqrt((m4 - var^2)/N) ~ 0.06 for this
// mixture's kurtosis; mass 4 sqrt(p(1-p)/N) = 0.013) plus 0.02 for the
// 200-step discretisation bias (first-order ancestral samplers lose ~5% of the
// variance at 50 steps, ~1% at 200: the lab shows it).
static void test_distribution(void) {
    static const char *names[] = {"ddpm", "euler_a", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde",
                                  "dpmpp_2m_sde", "dpmpp_3m_sde"};
    ldm_analytic a = mixture();
    const int64_t per = 20000;
    double mean, var;
    ldm_analytic_moments(&a, &mean, &var);
    float *noise = randn(per, 0), *x = malloc((size_t)per * sizeof(float));
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        ldm_analytic_run r = {.x = x, .sample_only = 1};
        int rc = ldm_analytic_sample(&r, &a, sampler(names[i]), LDM_SIGMAS_KARRAS, 200, noise, per,
                                     -1, 7, NULL);
        int64_t below = 0;
        for (int64_t k = 0; k < per; k++) below += x[k] < 0.25f;
        double mass = (double)below / per;
        char name[160];
        snprintf(name, sizeof name, "%s, 200 steps: mean %.3f (%.3f) var %.3f (%.3f) mass %.4f (%.4f)",
                 names[i], r.mean, mean, r.var, var, mass, 0.3043);
        test_check(rc == LDM_OK && fabs(r.mean - mean) < 0.055 && fabs(r.var - var) < 0.08 &&
                       fabs(mass - 0.3043) < 0.033, name, "outside 4 standard errors + 0.02");
    }
    free(noise); free(x);
}

// ---------------------------------------------------------------------------
// 6. model evaluations per step (docs/06-samplers.md, "What costs")

static void test_nfe(void) {
    static const struct { const char *name; int nfe10; } want[] = {
        {"ddpm", 10}, {"ddim", 10}, {"plms", 11}, {"euler", 10}, {"euler_a", 10},
        {"heun", 19}, {"dpm2", 19}, {"dpm2_a", 19}, {"lms", 10}, {"dpmpp_2s_a", 19},
        {"dpmpp_2m", 10}, {"dpmpp_sde", 19}, {"dpmpp_2m_sde", 10}, {"dpmpp_3m_sde", 10},
        {"dpmpp_3m", 10}, {"dpm_fast", 10}, {"res_multistep", 10}, {"er_sde", 10},
        {"euler_cfgpp", 10}, {"dpmpp_2m_cfgpp", 10}, {"unipc", 10}, {"unipc_bh1", 10},
        {"deis", 10}, {"ipndm", 10}, {"ipndm_v", 10}, {"ddim_trailing", 10},
        // dpm_adaptive: as many as its error control asks (test 8)
    };
    ldm_analytic a = mixture();
    float *noise = randn(16, 0);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        ldm_analytic_run r = {.sample_only = 1};
        ldm_analytic_sample(&r, &a, sampler(want[i].name), LDM_SIGMAS_KARRAS, 10, noise, 16, -1,
                            1, NULL);
        char name[96];
        snprintf(name, sizeof name, "%s: %d model evaluations for 10 steps", want[i].name,
                 want[i].nfe10);
        test_check(r.nfe == want[i].nfe10, name, "counted %lld", (long long)r.nfe);
    }
    free(noise);
}


// ---------------------------------------------------------------------------
// 7. DPM-Solver (dpm_fast, dpm_adaptive), ER-SDE, CFG++ (docs/06-samplers.md,
//    "More samplers")

// One run of `name` on `a` (eps, no guidance, one sample of `per` elements)
// through n Karras sigmas; x [per] <- the result. Returns the model evaluations.
static int64_t run_direct(float *x, const ldm_analytic *a, const char *name, int n,
                          const float *start, int64_t per, float eta, uint64_t seed) {
    ldm_analytic_ctx mc = {a, per};
    ldm_denoiser dn = {.fn = ldm_analytic_model, .ctx = &mc, .sched = &SCHED, .B = 1, .per = per};
    ldm_denoiser_init(&dn);
    float *sig = malloc((size_t)(n + 1) * sizeof(float));
    ldm_sigmas_make(sig, LDM_SIGMAS_KARRAS, &SCHED, n);
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, seed);
    ldm_sampler_ctx c = {.dn = &dn, .rng = &rng, .n = n, .sigmas = sig, .eta = eta,
                         .s_tmax = INFINITY, .s_noise = 1};
    for (int64_t k = 0; k < per; k++) x[k] = start[k] * sig[0];
    int rc = sampler(name)->fn(x, &c);
    int64_t nfe = rc == LDM_OK ? dn.nfe : -1;
    free(sig);
    ldm_denoiser_free(&dn);
    return nfe;
}

// ctx: the int64_t floats per row
static int nan_model(float *out, const float *x_in, const float *t, int64_t N, void *ctx) {
    (void)x_in; (void)t;
    for (int64_t k = 0; k < N * *(const int64_t *)ctx; k++) out[k] = NAN;
    return LDM_OK;
}

// DPM fast and DPM adaptive end at sigma_min (sigmas[n-1]), not at 0: their
// error is the RMS difference to the exact ODE solution there. DPM fast with
// N evaluations takes ~N/3 third-order steps, so error ~ N^-3. DPM adaptive
// picks its own steps from the difference of its 2nd- and 3rd-order results,
// kept near rtol 0.05 / atol 0.0078 per step: a loose target, which leaves
// ~1e-2 from the exact ODE on this model (measured 1.3e-2 with 33
// evaluations). Bound: 4 atol.
static void test_dpm_solver(void) {
    ldm_analytic a = mixture();
    const int64_t per = 256;
    float *noise = randn(per, 0), *x = malloc((size_t)per * sizeof(float));
    double *y = malloc((size_t)per * sizeof(double));
    const double smax = SCHED.sigmas[SCHED.T - 1], smin = SCHED.sigmas[0];
    for (int64_t k = 0; k < per; k++) y[k] = (double)noise[k] * (float)smax;
    ldm_analytic_flow(&a, y, y, per, (float)smax, (float)smin);
    static const int N[] = {15, 21, 30, 45, 60};
    double logn[5], loge[5];
    int ok = 1;
    for (int j = 0; j < 5; j++) {
        int64_t nfe = run_direct(x, &a, "dpm_fast", N[j], noise, per, 0, 1);
        double e = 0;
        for (int64_t k = 0; k < per; k++) e += (x[k] - y[k]) * (x[k] - y[k]);
        ok &= nfe == N[j];
        logn[j] = log(N[j]);
        loge[j] = log(sqrt(e / per));
    }
    double p = fit_slope(logn, loge, 5);
    char name[160];
    snprintf(name, sizeof name, "order of dpm_fast: %.2f over 15..60 evaluations (theory 3 +- 0.4), "
             "error %.2e at 15, %.2e at 60", p, exp(loge[0]), exp(loge[4]));
    test_check(ok && fabs(p - 3) <= 0.4, name, "third-order steps (DPM-Solver-3), ~N/3 of them");

    int64_t nfe = run_direct(x, &a, "dpm_adaptive", 10, noise, per, 0, 1);
    double e = 0;
    for (int64_t k = 0; k < per; k++) e += (x[k] - y[k]) * (x[k] - y[k]);
    e = sqrt(e / per);
    snprintf(name, sizeof name, "dpm_adaptive: RMS error %.2e at sigma_min with %lld evaluations",
             e, (long long)nfe);
    test_check(nfe > 0 && nfe % 3 == 0 && e < 4 * 0.0078, name, "error control rtol 0.05, atol 0.0078");
    // a model that returns NaN: an error, not an endless search for a step
    ldm_denoiser dn = {.fn = nan_model, .ctx = (void *)&per, .sched = &SCHED, .B = 1, .per = per};
    ldm_denoiser_init(&dn);
    float sig[11];
    ldm_sigmas_make(sig, LDM_SIGMAS_KARRAS, &SCHED, 10);
    ldm_sampler_ctx c = {.dn = &dn, .n = 10, .sigmas = sig, .s_tmax = INFINITY, .s_noise = 1};
    for (int64_t k = 0; k < per; k++) x[k] = noise[k] * sig[0];
    ldm_clear_error();
    int rc = ldm_sample_dpm_adaptive(x, &c);
    test_check(rc == LDM_ERR && strstr(ldm_last_error(), "not finite"),
               "dpm_adaptive stops with an error on a NaN model", "rc %d, \"%s\"", rc, ldm_last_error());
    ldm_denoiser_free(&dn);
    free(noise); free(x); free(y);
}

// ER-SDE's samples: as test 5, but started from the right moments of
// p(x; sigma_max) (mean and variance var + sigma_max^2) instead of
// N(0, sigma_max^2): ER-SDE's noise scale function keeps it close to the ODE,
// which carries the start's mean error (0.75 at sigma_max, scaled by
// ~s/sigma_max: -0.05 at the end, measured on Euler too) to the sample.
static void test_er_sde(void) {
    ldm_analytic a = mixture();
    const int64_t per = 20000;
    double mean, var;
    ldm_analytic_moments(&a, &mean, &var);
    const double smax = SCHED.sigmas[SCHED.T - 1];
    float *noise = randn(per, 0), *x = malloc((size_t)per * sizeof(float));
    for (int64_t k = 0; k < per; k++)
        noise[k] = (float)((mean + noise[k] * sqrt(var + smax * smax)) / smax);
    run_direct(x, &a, "er_sde", 200, noise, per, 1, 7);
    double m = 0, m2 = 0;
    int64_t below = 0;
    for (int64_t k = 0; k < per; k++) { m += x[k]; m2 += (double)x[k] * x[k]; below += x[k] < 0.25f; }
    m /= per;
    double v = m2 / per - m * m, mass = (double)below / per;
    char name[160];
    snprintf(name, sizeof name, "er_sde, 200 steps: mean %.3f (%.3f) var %.3f (%.3f) mass %.4f (%.4f)",
             m, mean, v, var, mass, 0.3043);
    test_check(fabs(m - mean) < 0.055 && fabs(v - var) < 0.08 && fabs(mass - 0.3043) < 0.033, name,
               "outside 4 standard errors + 0.02");
    free(noise); free(x);
}

// CFG++ with a conditional model: rows [uncond, cond] are two different
// analytic models (the mixture and one Gaussian). One CFG++ step of scale l
// from sigma to sigma' denoises with D_l and renoises with eps_u; it equals a
// CFG step (Euler, renoising with the guided eps) of scale w = l / (1 - sigma'/sigma):
// D_u + l dD + sigma'/sigma (x - D_u) = (1 - sigma'/sigma)(D_u + w dD) + sigma'/sigma x.
// DPM++ 2M CFG++'s first step is the same step. And with l = w it is not
// CFG (the renoising differs). Tolerance 1e-5 of |x|: float32 steps.
typedef struct { ldm_analytic_ctx u, c; } two_models;

static int two_model_fn(float *out, const float *x_in, const float *t, int64_t N, void *vctx) {
    two_models *m = vctx;
    if (N == 1) return ldm_analytic_model(out, x_in, t, 1, &m->c);
    if (ldm_analytic_model(out, x_in, t, 1, &m->u) != LDM_OK) return LDM_ERR;
    return ldm_analytic_model(out + m->c.per, x_in + m->c.per, t + 1, 1, &m->c);
}

static void cfg_step(float *x, const char *name, float scale, two_models *m, const float *start,
                     const float sig[2]) {
    int64_t per = m->u.per;
    ldm_denoiser dn = {.fn = two_model_fn, .ctx = m, .cfg = 1, .cfg_scale = scale,
                       .sched = &SCHED, .B = 1, .per = per};
    ldm_denoiser_init(&dn);
    ldm_rng rng;  // Euler draws (unused) churn noise every step
    ldm_rng_init(&rng, LDM_RNG_CPU, 1);
    ldm_sampler_ctx c = {.dn = &dn, .rng = &rng, .n = 1, .sigmas = sig, .s_tmax = INFINITY,
                         .s_noise = 1};
    memcpy(x, start, (size_t)per * sizeof(float));
    sampler(name)->fn(x, &c);
    ldm_denoiser_free(&dn);
}

static void test_cfgpp(void) {
    ldm_analytic mix = mixture();
    ldm_analytic one = {.K = 1, .w = {1}, .mu = {0.8}, .s = {0.4}, .sched = &SCHED};
    const int64_t per = 256;
    two_models m = {{&mix, per}, {&one, per}};
    const float sig[2] = {2.0f, 1.5f}, l = 0.5f, w = l / (1 - sig[1] / sig[0]);  // w = 2
    float *start = randn(per, 4), *a = malloc((size_t)per * sizeof(float)),
          *b = malloc((size_t)per * sizeof(float)), *cc = malloc((size_t)per * sizeof(float));
    for (int64_t k = 0; k < per; k++) start[k] = 1 + start[k] * sig[0];
    cfg_step(b, "euler", w, &m, start, sig);
    double scale = 0;
    for (int64_t k = 0; k < per; k++) scale = fmax(scale, fabs(start[k]));
    cfg_step(a, "euler_cfgpp", l, &m, start, sig);
    test_close("euler_cfgpp scale 0.5 = euler CFG scale 0.5/(1 - 1.5/2) = 2, one step", a, b, per,
               0, 1e-5 * scale);
    cfg_step(cc, "dpmpp_2m_cfgpp", l, &m, start, sig);
    test_close("dpmpp_2m_cfgpp first step = euler_cfgpp step", cc, a, per, 0, 1e-5 * scale);
    cfg_step(b, "euler", l, &m, start, sig);
    double d = 0;
    for (int64_t k = 0; k < per; k++) d = fmax(d, fabs(a[k] - b[k]));
    test_check(d > 1e-2, "euler_cfgpp scale 0.5 differs from euler CFG scale 0.5",
               "max diff only %.3e", d);
    // without guidance both are their plain samplers (the same step written
    // differently: float rounding, 1e-5 of the largest |x| = sigma_max |noise|)
    static const char *pairs[2][2] = {{"euler_cfgpp", "euler"}, {"dpmpp_2m_cfgpp", "dpmpp_2m"}};
    float *noise = randn(per, 0);
    for (int i = 0; i < 2; i++) {
        float *x[2] = {a, b};
        for (int j = 0; j < 2; j++) run_direct(x[j], &mix, pairs[i][j], 20, noise, per, 0, 1);
        char name[96];
        snprintf(name, sizeof name, "%s without guidance = %s (20 steps)", pairs[i][0], pairs[i][1]);
        double big = 0;
        for (int64_t k = 0; k < per; k++) big = fmax(big, fabs(noise[k]) * SCHED.sigmas[SCHED.T - 1]);
        test_close(name, a, b, per, 0, 1e-5 * big);
    }
    free(start); free(a); free(b); free(cc); free(noise);
}

int main(void) {
    ldm_schedule_init_sd(&SCHED);
    printf("-- the analytic model\n");
    test_model();
    printf("-- exact cases\n");
    test_point_mass();
    test_ddim_is_euler();
    printf("-- orders of convergence\n");
    test_orders();
    test_orders_even_grids();
    test_ipndm_v_is_lms();
    printf("-- distributions (ancestral / SDE samplers)\n");
    test_distribution();
    printf("-- model evaluations\n");
    test_nfe();
    printf("-- DPM-Solver, ER-SDE, CFG++\n");
    test_dpm_solver();
    test_er_sde();
    test_cfgpp();
    return test_summary();
}
