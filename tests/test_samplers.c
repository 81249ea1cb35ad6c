/*
 * tests/test_samplers.c -- samplers/ against PyTorch: the RNGs (torch.randn on
 * CPU, torch CUDA Philox known values), the schedule (diffusers, CompVis,
 * k-diffusion), timestep spacings, Karras / exponential sigmas, the forward
 * process, and every sampler's whole trajectory under a deterministic
 * stand-in denoiser defined identically in tools/reference/fixtures_samplers.py.
 *
 * Fixtures: tests/fixtures/samplers/ (make fixtures). Run from the repo root.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "samplers/analytic.h"
#include "samplers/rng.h"
#include "samplers/sampler.h"
#include "samplers/schedule.h"
#include "tests/test.h"

#define FIX "tests/fixtures/samplers/"

// Load a fixture (float32 .npy) into a malloc'ed buffer; *n = numel.
static float *load(const char *name, int64_t *n) {
    char path[512];
    snprintf(path, sizeof path, FIX "%s", name);
    float *data = NULL;
    int64_t shape[8];
    int ndim = 0;
    if (ldm_npy_read_raw(&data, shape, &ndim, path) != LDM_OK) {
        test_check(0, name, "cannot read fixture: %s (run `make fixtures`)", ldm_last_error());
        return NULL;
    }
    int64_t k = 1;
    for (int i = 0; i < ndim; i++) k *= shape[i];
    if (n) *n = k;
    return data;
}

// ---------------------------------------------------------------------------
// RNG

// The cpu generator is bit-exact: same mt19937 words, same masking, and the
// same float32 operations as each torch build (AVX2 polynomials with fused
// multiply-adds, or the C library's logf/sinf/cosf). Tolerance 0.
#define RNG_CPU_ATOL 0.0

static void test_rng_cpu(void) {
    FILE *f = fopen(FIX "rng_cases.txt", "r");
    if (!test_check(f != NULL, "rng_cases.txt", "missing (run `make fixtures`)")) return;
    char line[512];
    int64_t total = 0, exact = 0;
    while (fgets(line, sizeof line, f)) {
        char file[128], kind[16];
        unsigned long long seed;
        int per_sample, k, off = 0;
        if (sscanf(line, "%127s %15s %llu %d %d%n", file, kind, &seed, &per_sample, &k, &off) != 5)
            continue;
        int64_t numel[16], sum = 0;
        char *p = line + off;
        for (int i = 0; i < k && i < 16; i++) {
            int used = 0;
            long long v;
            sscanf(p, "%lld%n", &v, &used);
            p += used;
            numel[i] = v;
            sum += v;
        }
        ldm_cpu_math math = strcmp(kind, "avx2") ? LDM_CPU_MATH_SCALAR : LDM_CPU_MATH_AVX2;
        int64_t n;
        float *exp = load(file, &n);
        if (!exp) continue;
        float *got = malloc((size_t)sum * sizeof(float));
        if (per_sample) {  // generator i seeded seed + i, one call each
            ldm_rng rngs[16];
            for (int i = 0; i < k; i++) {
                ldm_rng_init(&rngs[i], LDM_RNG_CPU, seed + (uint64_t)i);
                rngs[i].cpu_math = math;
            }
            ldm_rng_randn_batch(rngs, 1, got, k, numel[0]);
        } else {           // consecutive calls on one generator
            ldm_rng r;
            ldm_rng_init(&r, LDM_RNG_CPU, seed);
            r.cpu_math = math;
            int64_t at = 0;
            for (int i = 0; i < k; i++) {
                ldm_rng_randn(&r, got + at, numel[i]);
                at += numel[i];
            }
        }
        char name[200];
        snprintf(name, sizeof name, "rng cpu %s", file);
        test_close(name, got, exp, n == sum ? n : 0, 0, RNG_CPU_ATOL);
        if (n != sum) test_check(0, name, "fixture has %lld values, expected %lld", (long long)n,
                                 (long long)sum);
        for (int64_t i = 0; i < n && i < sum; i++) exact += memcmp(&got[i], &exp[i], 4) == 0;
        total += n;
        free(got);
        free(exp);
    }
    fclose(f);
    printf("  rng cpu: %lld of %lld values bit-identical to torch.randn\n", (long long)exact,
           (long long)total);
}

static void test_rng_cuda(void) {
    // Philox4x32-10 known-answer vectors (Random123 kat_vectors, documented constants).
    static const uint32_t ctr[3][4] = {{0, 0, 0, 0},
                                       {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
                                       {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}};
    static const uint32_t key[3][2] = {{0, 0}, {0xffffffffu, 0xffffffffu},
                                       {0xa4093822u, 0x299f31d0u}};
    static const uint32_t want[3][4] = {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
                                        {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu},
                                        {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}};
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        ldm_philox4x32_10(out, ctr[i], key[i]);
        char name[64];
        snprintf(name, sizeof name, "philox4x32-10 known-answer vector %d", i);
        test_check(!memcmp(out, want[i], sizeof out), name, "got %08x %08x %08x %08x", out[0],
                   out[1], out[2], out[3]);
    }
    // torch.randn(3, 4, device="cuda") after manual_seed(0): published values
    // (all 12 in the docstring of AUTOMATIC1111's rng_philox.py, a public port checked
    // against torch on a GPU). Tolerance 1e-6: the GPU takes sin/cos from the
    // __sincosf approximation and the port computes u, v in float64; we
    // follow curand's float32 u, v and use libm. Measured max 6e-7.
    ldm_rng r;
    ldm_rng_init(&r, LDM_RNG_CUDA, 0);
    float got[4 * 8 * 8];
    ldm_rng_randn(&r, got, 4 * 8 * 8);
    const float exp[12] = {-0.92466259f, -0.42534414f, -2.64384580f, 0.14518388f,
                           -0.12086648f, -0.57972562f, -0.62285119f, -0.32838708f,
                           -1.07454228f, -0.36314407f, -1.67105067f, 2.26550508f};
    test_close("rng cuda seed 0, 12 published values", got, exp, 12, 0, 1e-6);
    // the generator offset advances by 4 per small call (torch's counter_offset)
    test_check(r.philox_offset == 4, "rng cuda offset after one call", "offset %llu, expected 4",
               (unsigned long long)r.philox_offset);
    // element i of a small tensor does not depend on the tensor's size (thread i, value .x)
    ldm_rng r2;
    ldm_rng_init(&r2, LDM_RNG_CUDA, 0);
    float small[12];
    ldm_rng_randn(&r2, small, 12);
    test_close("rng cuda prefix independent of numel", small, got, 12, 0, 0);
}

// ---------------------------------------------------------------------------
// schedule

// alphas_cumprod and sigmas: float32 values computed by the same formulas;
// differences come from rounding order only (cumprod over 1000 factors).
#define SCHED_RTOL 1e-6

static void test_schedule(void) {
    ldm_schedule s;
    int64_t n;
    float *e;
    ldm_schedule_init(&s, LDM_BETA_SCALED_LINEAR, LDM_SCHED_COMPVIS, 0.00085, 0.012, 1000);
    if ((e = load("sched_ac_compvis.npy", &n)))
        test_close("alphas_cumprod CompVis (float64 betas)", s.alphas_cumprod, e, 1000, SCHED_RTOL, 0);
    free(e);
    if ((e = load("sched_sigmas.npy", &n)))
        test_close("sigmas (k-diffusion CompVisDenoiser)", s.sigmas, e, 1000, SCHED_RTOL, 0);
    free(e);
    // the schedule's constants as docs/06-samplers.md section 1 prints them (5-7 digits)
    float kv[4] = {s.alphas_cumprod[0], s.alphas_cumprod[999], s.sigmas[0], s.sigmas[999]};
    float kc[4] = {0.99915f, 0.0046601f, 0.0291672f, 14.61464f};
    // Tolerances: the printed digits (5e-6 relative), except sigma_min:
    // k-diffusion computes 1 - abar_0 in float32, where abar_0 = 0.99915 has
    // an ulp of 6e-8, i.e. 7e-5 of 1 - abar_0; sqrt halves that. So its
    // float32 sigma_min is 0.0291675, 1.1e-5 above the exact 0.0291672.
    static const double tol[4] = {5e-6, 5e-6, 4e-5, 5e-6};
    for (int i = 0; i < 4; i++) {
        static const char *nm[4] = {"abar_0 = 0.99915", "abar_999 = 0.0046601",
                                    "sigma_min = 0.0291672", "sigma_max = 14.61464"};
        test_close(nm[i], &kv[i], &kc[i], 1, tol[i], 0);
    }
    ldm_schedule_init(&s, LDM_BETA_SCALED_LINEAR, LDM_SCHED_DIFFUSERS, 0.00085, 0.012, 1000);
    if ((e = load("sched_ac_diffusers.npy", &n)))
        test_close("alphas_cumprod diffusers (float32 betas)", s.alphas_cumprod, e, 1000, SCHED_RTOL, 0);
    free(e);
    ldm_schedule_init(&s, LDM_BETA_LINEAR, LDM_SCHED_DIFFUSERS, 1e-4, 0.02, 1000);
    if ((e = load("sched_ac_linear.npy", &n)))
        test_close("alphas_cumprod linear 1e-4..0.02", s.alphas_cumprod, e, 1000, SCHED_RTOL, 0);
    free(e);
    ldm_schedule_init(&s, LDM_BETA_COSINE, LDM_SCHED_DIFFUSERS, 0, 0, 1000);
    if ((e = load("sched_ac_cosine.npy", &n)))
        test_close("alphas_cumprod squaredcos_cap_v2", s.alphas_cumprod, e, 1000, SCHED_RTOL, 0);
    free(e);
    test_check(ldm_schedule_init(&s, LDM_BETA_LINEAR, LDM_SCHED_COMPVIS, 0.1, 2.0, 1000) == LDM_ERR,
               "schedule rejects beta_end 2.0", "accepted");

    ldm_schedule_init_sd(&s);
    float sig[51];
    char name[128];
    for (int k = 0; k < 3; k++) {
        int steps = (int[]){10, 20, 50}[k];
        snprintf(name, sizeof name, "sched_sigmas_default_%d.npy", steps);
        ldm_sigmas_default(sig, &s, steps);
        if ((e = load(name, &n))) test_close(name, sig, e, steps + 1, SCHED_RTOL, 0);
        free(e);
        snprintf(name, sizeof name, "sched_sigmas_karras_%d.npy", steps);
        ldm_sigmas_karras(sig, steps, s.sigmas[0], s.sigmas[999], 7.0);
        if ((e = load(name, &n))) test_close(name, sig, e, steps + 1, SCHED_RTOL, 0);
        free(e);
        snprintf(name, sizeof name, "sched_sigmas_exponential_%d.npy", steps);
        ldm_sigmas_exponential(sig, steps, s.sigmas[0], s.sigmas[999]);
        if ((e = load(name, &n))) test_close(name, sig, e, steps + 1, SCHED_RTOL, 0);
        free(e);
    }
    // sigma <-> t (fractional t: absolute 1e-4 of a timestep, float32 log interpolation)
    int64_t np_, ne;
    float *probe = load("sched_sigma_probe.npy", &np_), *want = load("sched_sigma_to_t.npy", &ne);
    if (probe && want) {
        float *got = malloc((size_t)np_ * sizeof(float));
        for (int64_t i = 0; i < np_; i++) got[i] = ldm_sigma_to_t(&s, probe[i]);
        test_close("sigma_to_t (log-sigma interpolation)", got, want, np_, 0, 2e-4);
        free(got);
    }
    free(probe); free(want);
    probe = load("sched_t_probe.npy", &np_);
    want = load("sched_t_to_sigma.npy", &ne);
    if (probe && want) {
        float *got = malloc((size_t)np_ * sizeof(float));
        for (int64_t i = 0; i < np_; i++) got[i] = ldm_t_to_sigma(&s, probe[i]);
        test_close("t_to_sigma", got, want, np_, SCHED_RTOL, 0);
        free(got);
    }
    free(probe); free(want);
}

static void test_spacings(void) {
    ldm_schedule s;
    ldm_schedule_init_sd(&s);
    FILE *f = fopen(FIX "ts_cases.txt", "r");
    if (!test_check(f != NULL, "ts_cases.txt", "missing")) return;
    char line[256], file[128], spacing[32];
    int steps, offset, bad = 0, cases = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%127s %31s %d %d", file, spacing, &steps, &offset) != 4) continue;
        ldm_spacing sp;
        int64_t n;
        float *e = load(file, &n);
        if (!e || ldm_spacing_parse(&sp, spacing) != LDM_OK) { bad++; free(e); continue; }
        int ts[1000];
        int count = ldm_timesteps(ts, &s, sp, steps, offset);
        int ok = count == n;
        for (int i = 0; ok && i < count; i++) ok = ts[i] == (int)e[i];
        if (!ok) {
            bad++;
            printf("  timesteps %s: got count %d, first %d; expected count %lld, first %g\n", file,
                   count, count > 0 ? ts[0] : -1, (long long)n, n ? e[0] : -1.0f);
        }
        cases++;
        free(e);
    }
    fclose(f);
    test_check(bad == 0 && cases > 0, "timestep spacings leading/trailing/linspace/uniform (exact)",
               "%d of %d cases differ", bad, cases);
}

// LCM / TCD timesteps for every step count 1..50 against diffusers'
// LCMScheduler.set_timesteps (lcm_timesteps.txt, fixtures_samplers_lcm.py);
// 51 steps must be refused (the model knows 50 timesteps).
static void test_lcm_timesteps(void) {
    ldm_schedule s;
    ldm_schedule_init_sd(&s);
    FILE *f = fopen(FIX "lcm_timesteps.txt", "r");
    if (!test_check(f != NULL, "lcm_timesteps.txt", "missing (run `make fixtures`)")) return;
    char line[1024];
    int bad = 0, cases = 0;
    while (fgets(line, sizeof line, f)) {
        int n, off = 0, ts[64];
        if (line[0] == '#' || sscanf(line, "%d%n", &n, &off) != 1 || n < 1 || n > 50) continue;
        int count = ldm_timesteps(ts, &s, LDM_SPACING_LCM, n, 0), ok = count == n;
        char *p = line + off;
        for (int i = 0; ok && i < n; i++) {
            int used = 0, want;
            ok = sscanf(p, "%d%n", &want, &used) == 1 && ts[i] == want;
            p += used;
        }
        if (!ok) printf("  lcm timesteps n=%d differ (first %d)\n", n, count > 0 ? ts[0] : -1);
        bad += !ok;
        cases++;
    }
    fclose(f);
    test_check(bad == 0 && cases == 50, "LCM/TCD timesteps n = 1..50 (exact)", "%d of %d differ",
               bad, cases);
    int ts[64];
    test_check(ldm_timesteps(ts, &s, LDM_SPACING_LCM, 51, 0) == LDM_ERR &&
                   strstr(ldm_last_error(), "at most 50"),
               "LCM timesteps: 51 steps refused", "%s", ldm_last_error());
}

static void test_forward(void) {
    ldm_schedule s;
    ldm_schedule_init(&s, LDM_BETA_SCALED_LINEAR, LDM_SCHED_DIFFUSERS, 0.00085, 0.012, 1000);
    int64_t n;
    float *x0 = load("q_x0.npy", &n), *nz = load("q_noise.npy", &n), *xt = load("q_xt.npy", &n),
          *v = load("q_v.npy", &n);
    if (!x0 || !nz || !xt || !v) return;
    int t[2] = {999, 3};
    int64_t per = n / 2;
    float *got = malloc((size_t)n * sizeof(float)), *back = malloc((size_t)n * sizeof(float));
    ldm_q_sample(got, x0, nz, t, 2, per, &s);
    test_close("q_sample (diffusers add_noise)", got, xt, n, 1e-6, 0);
    for (int b = 0; b < 2; b++)
        ldm_v_from_eps(got + b * per, nz + b * per, x0 + b * per, s.alphas_cumprod[t[b]], per);
    test_close("v = sqrt(abar) eps - sqrt(1-abar) x0 (get_velocity)", got, v, n, 1e-6, 0);
    // eps from (v, x_t) must give back the noise; x0 from (eps, x_t) the x0
    for (int b = 0; b < 2; b++) {
        ldm_eps_from_v(back + b * per, v + b * per, xt + b * per, s.alphas_cumprod[t[b]], per);
    }
    test_close("eps_from_v(v, x_t) = noise", back, nz, n, 1e-5, 0);
    for (int b = 0; b < 2; b++)
        ldm_x0_from_eps(back + b * per, nz + b * per, xt + b * per, s.alphas_cumprod[t[b]], per);
    // at t = 999 x0 = (x_t - 0.998 eps) / 0.068: float32 cancellation, so 1e-4
    test_close("x0_from_eps(noise, x_t) = x0", back, x0, n, 1e-4, 0);
    free(got); free(back); free(x0); free(nz); free(xt); free(v);
}

// ---------------------------------------------------------------------------
// samplers

// The stand-in denoiser (same formula as fixtures_samplers.py):
//   eps(x, t, c) = tanh(0.5 x) (t/1000) + 0.1 sin(x + t/100) + 0.05 c cos(x)
// rows [uncond (c=0) | cond (c = 1 + 0.5 b)] with guidance, [cond] without.
typedef struct { int64_t B, per; int cfg; int fail_after; } standin_ctx;

static int standin(float *out, const float *x_in, const float *t, int64_t N, void *vctx) {
    standin_ctx *s = vctx;
    if (s->fail_after == 0) return ldm_error("stand-in model: injected failure");
    if (s->fail_after > 0) s->fail_after--;
    for (int64_t r = 0; r < N; r++) {
        int64_t b = r % s->B;
        float c = (s->cfg && r < s->B) ? 0.0f : 1.0f + 0.5f * (float)b;
        float tt = t[r];
        for (int64_t k = 0; k < s->per; k++) {
            float x = x_in[r * s->per + k];
            out[r * s->per + k] = tanhf(0.5f * x) * (tt / 1000.0f) +
                                  0.1f * sinf(x + tt / 100.0f) + 0.05f * c * cosf(x);
        }
    }
    return LDM_OK;
}

typedef struct { float *traj; int64_t n; int steps; } traj_ctx;

static void record(void *vctx, int i, float *x, const float *denoised) {
    traj_ctx *c = vctx;
    if (i < c->steps) memcpy(c->traj + (int64_t)i * c->n, x, (size_t)c->n * sizeof(float));
}

// Trajectories: every intermediate x within 1e-5 of the largest |x| of that
// step. Reason: our arithmetic is float32 like the reference, but a few
// operations round differently (coefficients in double, libm vs torch's
// vectorised tanh/sin/log/exp, CFG applied to eps instead of to D), each
// ~1e-7 relative; over 50 steps (100 model calls for Heun/DPM2) these stay
// below ~3e-6 relative with this contractive stand-in. The largest |x| is
// sigma_max * |noise| ~ 50 at the start, so 1e-5 relative is ~5e-4 there.
#define TRAJ_RTOL 1e-5

// manifest: sampler_cases.txt (fixtures_samplers.py) or sampler_cases_3m.txt
// (fixtures_samplers_3m.py), one run per line.
static void test_sampler_cases(const char *manifest) {
    char mpath[256];
    snprintf(mpath, sizeof mpath, FIX "%s", manifest);
    FILE *f = fopen(mpath, "r");
    if (!test_check(f != NULL, manifest, "missing")) return;
    int64_t nn;
    float *noise = load("x_T.npy", &nn);
    if (!noise) { fclose(f); return; }
    const int64_t B = 2, per = nn / 2;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char file[128], sampler[32], sched[32], pred[8], prec[16], extra[64] = "-";
        int steps, cfg, compvis, start = 0;
        float eta;
        unsigned long long seed;
        if (line[0] == '#' ||
            sscanf(line, "%127s %31s %31s %d %f %d %7s %d %15s %llu %63s", file, sampler, sched,
                   &steps, &eta, &cfg, pred, &compvis, prec, &seed, extra) < 10)
            continue;
        float churn = 0, scale = 5.0f;
        int traj_len = 0;
        long long want_nfe = -1;
        double rtol = TRAJ_RTOL;
        int T = 1000;
        sscanf(extra, "T=%d", &T);          // training timesteps (LCM cases: 100)
        sscanf(extra, "start=%d", &start);  // img2img: start step, init from init.npy
        sscanf(extra, "churn=%f", &churn);  // Karras churn for Euler/Heun/DPM2
        const char *kv;  // sampler_cases_kx.txt: steps the run reports, model calls, guidance
        if ((kv = strstr(extra, "traj="))) traj_len = atoi(kv + 5);
        if ((kv = strstr(extra, "nfe="))) want_nfe = atoll(kv + 4);
        if ((kv = strstr(extra, "scale="))) scale = strtof(kv + 6, NULL);
        if ((kv = strstr(extra, "rtol="))) rtol = atof(kv + 5);  // the manifest says why
        int64_t n;
        float *exp = load(file, &n);
        if (!exp) continue;
        ldm_schedule s;
        ldm_schedule_init(&s, LDM_BETA_SCALED_LINEAR,
                          strcmp(prec, "diffusers") ? LDM_SCHED_COMPVIS : LDM_SCHED_DIFFUSERS,
                          0.00085, 0.012, T);
        standin_ctx sc = {B, per, cfg, -1};
        ldm_denoiser dn = {.fn = standin, .ctx = &sc, .prediction = strcmp(pred, "v") ? LDM_PRED_EPS : LDM_PRED_V,
                           .cfg = cfg, .cfg_scale = scale, .sched = &s, .B = B, .per = per};
        ldm_denoiser_init(&dn);
        const ldm_sampler_info *info;
        ldm_sigma_kind sk;
        ldm_sampler_parse(&info, &sk, sampler);
        ldm_sampler_settings o = {.sampler = info, .steps = steps, .eta = eta, .s_churn = churn,
                                  .conv = LDM_CONVENTIONS_DIFFUSERS};
        o.conv.noise_every_step = compvis;
        if (!strcmp(sched, "karras")) o.sigma_kind = LDM_SIGMAS_KARRAS;
        if (!strcmp(sched, "exponential")) o.sigma_kind = LDM_SIGMAS_EXPONENTIAL;
        if (!strcmp(sched, "uniform")) o.conv.spacing = LDM_SPACING_UNIFORM;
        if (!strcmp(sched, "trailing")) o.conv.spacing = LDM_SPACING_TRAILING;
        int64_t ni;
        float *init = start ? load("init.npy", &ni) : NULL;
        int count = traj_len ? traj_len : ldm_sampler_steps(&o, &s) - start;
        traj_ctx tc = {malloc((size_t)(count * B * per) * sizeof(float)), B * per, count};
        // sampler_cases_brownian.txt: the SDE noise from the Brownian tree (one over the
        // batch seeded `seed`, or with "persample" one per sample seeded seed + b)
        if (strstr(extra, "brownian")) o.sde_noise = LDM_SDE_NOISE_BROWNIAN;
        int per_sample = strstr(extra, "persample") != NULL;
        ldm_rng rng[2];
        for (int b = 0; b < 2; b++) ldm_rng_init(&rng[b], LDM_RNG_CPU, seed + (uint64_t)b);
        ldm_sample_run run = {.noise = noise, .init = init, .start_step = start, .rng = rng,
                              .per_sample_noise = per_sample, .callback = record,
                              .callback_ctx = &tc};
        float *x = malloc((size_t)(B * per) * sizeof(float));
        int rc = ldm_sample(x, &o, &run, &dn);
        char name[200];
        snprintf(name, sizeof name, "%s (%lld model calls)", file, (long long)dn.nfe);
        if (strstr(extra, "final") && rc == LDM_OK && n == B * per) {
            // the fixture holds only the final x: compare that
            memmove(tc.traj, tc.traj + (int64_t)(count - 1) * B * per,
                    (size_t)(B * per) * sizeof(float));
            count = 1;
        }
        if (rc != LDM_OK || n != (int64_t)count * B * per) {
            test_check(0, name, "rc %d, %s, fixture %lld values vs %lld", rc, ldm_last_error(),
                       (long long)n, (long long)count * B * per);
        } else {
            double worst = 0, worst_abs = 0;
            int worst_step = 0;
            for (int i = 0; i < count; i++) {
                const float *g = tc.traj + (int64_t)i * B * per, *e = exp + (int64_t)i * B * per;
                double ma = 0, sc2 = 0;
                for (int64_t k = 0; k < B * per; k++) {
                    double d = fabs((double)g[k] - e[k]);
                    if (!(d <= ma)) ma = d;  // NaN-propagating max
                    if (fabs(e[k]) > sc2) sc2 = fabs(e[k]);
                }
                double rel = ma / (sc2 > 0 ? sc2 : 1);
                if (!(rel <= worst)) { worst = rel; worst_abs = ma; worst_step = i; }
            }
            int final_ok = !memcmp(x, tc.traj + (int64_t)(count - 1) * B * per,
                                   (size_t)(B * per) * sizeof(float));
            int ok = worst <= rtol && final_ok && (want_nfe < 0 || dn.nfe == want_nfe);
            test_passed_count += ok;
            test_failed_count += !ok;
            printf("  %-7s %-48s %2d steps  worst step %2d: max_abs %.3e max_rel %.3e  (tol %.0e)\n",
                   ok ? "ok" : "NOT OK", name, count, worst_step, worst_abs, worst, rtol);
        }
        free(x); free(tc.traj); free(exp); free(init);
        ldm_denoiser_free(&dn);
    }
    fclose(f);
    free(noise);
}

static void test_names_and_errors(void) {
    const ldm_sampler_info *info = NULL;
    ldm_sigma_kind sk;
    int ok = ldm_sampler_parse(&info, &sk, "DPM++ 2M Karras") == LDM_OK &&
             !strcmp(info->name, "dpmpp_2m") && sk == LDM_SIGMAS_KARRAS;
    test_check(ok, "parse \"DPM++ 2M Karras\"", "got %s", info ? info->name : "-");
    ok = ldm_sampler_parse(&info, &sk, "Euler a") == LDM_OK && !strcmp(info->name, "euler_a") &&
         sk == LDM_SIGMAS_DEFAULT;
    test_check(ok, "parse \"Euler a\"", "got %s", info ? info->name : "-");
    ok = ldm_sampler_parse(&info, &sk, "k_lms") == LDM_OK && !strcmp(info->name, "lms");
    test_check(ok, "parse \"k_lms\"", "%s", "check failed");
    ok = ldm_sampler_parse(&info, &sk, "dpmpp_sde_exponential") == LDM_OK &&
         !strcmp(info->name, "dpmpp_sde") && sk == LDM_SIGMAS_EXPONENTIAL;
    test_check(ok, "parse \"dpmpp_sde_exponential\"", "%s", "check failed");
    for (int i = 0; i < ldm_sampler_count; i++) {
        ok = ldm_sampler_parse(&info, &sk, ldm_samplers[i].label) == LDM_OK &&
             info == &ldm_samplers[i];
        if (!ok) test_check(0, "parse every label", "%s", ldm_samplers[i].label);
    }
    test_check(ldm_sampler_parse(&info, &sk, "euler_b") == LDM_ERR &&
                   strstr(ldm_last_error(), "dpmpp_2m") != NULL,
               "unknown sampler rejected with the list of names", "%s", ldm_last_error());
    test_check(ldm_sampler_parse(&info, &sk, "DDIM Karras") == LDM_ERR,
               "Karras on a discrete sampler rejected", "%s", "check failed");
    ldm_spacing sp;
    test_check(ldm_spacing_parse(&sp, "sideways") == LDM_ERR, "unknown spacing rejected", "%s", "check failed");
    ldm_rng_kind rk;
    test_check(ldm_rng_parse(&rk, "gpu") == LDM_ERR, "unknown rng rejected", "%s", "check failed");

    // a failing model call stops every sampler with its error
    ldm_schedule s;
    ldm_schedule_init_sd(&s);
    float noise[2 * 16] = {0}, x[2 * 16];
    int all = 1;
    for (int i = 0; i < ldm_sampler_count; i++) {
        standin_ctx sc = {2, 16, 1, 3};
        ldm_denoiser dn = {.fn = standin, .ctx = &sc, .cfg = 1, .cfg_scale = 7.5f, .sched = &s,
                           .B = 2, .per = 16};
        ldm_denoiser_init(&dn);
        ldm_sampler_settings o = {.sampler = &ldm_samplers[i], .steps = 10, .eta = -1,
                                  .conv = LDM_CONVENTIONS_DIFFUSERS};
        ldm_rng rng;
        ldm_rng_init(&rng, LDM_RNG_CPU, 1);
        ldm_sample_run run = {.noise = noise, .rng = &rng};
        ldm_clear_error();
        int rc = ldm_sample(x, &o, &run, &dn);
        if (rc != LDM_ERR || !strstr(ldm_last_error(), "injected")) {
            all = 0;
            printf("  %s: rc %d after a model failure\n", ldm_samplers[i].name, rc);
        }
        ldm_denoiser_free(&dn);
    }
    test_check(all, "model failure propagates out of every sampler", "%s", "check failed");
    float noise2[16] = {0};
    ldm_denoiser dn = {.fn = standin, .sched = &s, .B = 1, .per = 16};
    ldm_denoiser_init(&dn);
    ldm_sampler_settings o = {.sampler = &ldm_samplers[1], .steps = 0, .eta = -1};
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, 1);
    ldm_sample_run run = {.noise = noise2, .rng = &rng};
    test_check(ldm_sample(noise2, &o, &run, &dn) == LDM_ERR, "steps = 0 rejected", "%s", "check failed");
    ldm_denoiser_free(&dn);
}

// docs/06-samplers.md exercise 1: DDIM with eta = 1 is DDPM's ancestral step
// (DDIM sec. 4.1). With abar_prev = 1 after the last step (set_alpha_to_one)
// and the same generator, the two trajectories agree to float rounding.
static void test_ddim_eta1_is_ddpm(void) {
    ldm_schedule s;
    ldm_schedule_init_sd(&s);
    int64_t nn;
    float *noise = load("x_T.npy", &nn);
    if (!noise) return;
    int64_t B = 2, per = nn / 2;
    int ts[20];
    ldm_timesteps(ts, &s, LDM_SPACING_LEADING, 20, 1);
    float *x[2];
    for (int k = 0; k < 2; k++) {
        standin_ctx sc = {B, per, 1, -1};
        ldm_denoiser dn = {.fn = standin, .ctx = &sc, .cfg = 1, .cfg_scale = 5.0f, .sched = &s,
                           .B = B, .per = per};
        ldm_denoiser_init(&dn);
        ldm_rng rng;
        ldm_rng_init(&rng, LDM_RNG_CPU, 5);
        ldm_sampler_ctx c = {.dn = &dn, .rng = &rng, .n = 20, .timesteps = ts, .eta = 1.0f,
                             .set_alpha_to_one = 1};
        x[k] = malloc((size_t)nn * sizeof(float));
        memcpy(x[k], noise, (size_t)nn * sizeof(float));
        if (k == 0) ldm_sample_ddim(x[k], &c);
        else ldm_sample_ddpm(x[k], &c);
        ldm_denoiser_free(&dn);
    }
    test_close("DDIM eta=1 equals DDPM (exercise 1)", x[0], x[1], nn, 1e-5, 0);
    free(x[0]); free(x[1]); free(noise);
}

// The extra sigma schedules (sgm_uniform, simple, kl_optimal, ays, beta, gits, smoothstep) against
// tools/reference/fixtures_samplers_schedules.py (beta: on diffusers' float32
// schedule, as its fixture comes from diffusers' EulerDiscreteScheduler). Tolerance 1e-6 relative to
// sigma_max, as the Karras / exponential schedules above: the same float32
// formulas, libm's tanf/atanf/expf vs torch's differing by an ulp or so.
static void test_sigmas_extra(void) {
    FILE *f = fopen(FIX "sigmas_extra.txt", "r");
    if (!test_check(f != NULL, "sigmas_extra.txt", "missing (run `make fixtures`)")) return;
    ldm_schedule s, sd;
    ldm_schedule_init_sd(&s);
    ldm_schedule_init(&sd, LDM_BETA_SCALED_LINEAR, LDM_SCHED_DIFFUSERS, 0.00085, 0.012, 1000);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        char kind[32];
        int n, off = 0;
        if (line[0] == '#' || sscanf(line, "%31s %d%n", kind, &n, &off) != 2 || n < 1 || n > 100)
            continue;
        float exp[101], got[101];
        char *p = line + off;
        for (int i = 0; i <= n; i++) {
            int used = 0;
            sscanf(p, "%f%n", &exp[i], &used);
            p += used;
        }
        ldm_sigma_kind k;
        char name[64];
        snprintf(name, sizeof name, "sigmas %s, %d steps", kind, n);
        if (!test_check(ldm_sigma_kind_parse(&k, kind) == LDM_OK, name, "%s", ldm_last_error()))
            continue;
        ldm_sigmas_make(got, k, k == LDM_SIGMAS_BETA ? &sd : &s, n);
        test_close(name, got, exp, n + 1, 1e-6, 0);
    }
    fclose(f);
    // every schedule at n = 1..100 and every 45th up to 1000: positive, finite,
    // non-increasing (1e-6 slack for float rounding), and the final 0
    for (int k = 0; k < LDM_SIGMAS_COUNT; k++) {
        int bad = 0, bad_n = 0;
        static float sig[1001];
        for (int n2 = 1; n2 <= 1000; n2 += n2 < 100 ? 1 : 45) {
            ldm_sigmas_make(sig, (ldm_sigma_kind)k, &s, n2);
            int ok = sig[n2] == 0;
            for (int i = 0; i < n2; i++)
                ok &= sig[i] > 0 && isfinite(sig[i]) && (i == 0 || sig[i] <= sig[i - 1] + 1e-6f);
            if (!ok && !bad++) bad_n = n2;
        }
        char name[80];
        snprintf(name, sizeof name, "sigma schedule %d: descending, > 0, final 0 for n = 1..1000", k);
        test_check(bad == 0, name, "%d step counts fail, the first n = %d", bad, bad_n);
    }
    // smoothstep repeats timesteps at many steps (t = 999 twice from n = 78): ldm_sample
    // refuses a zero-length step instead of dividing by it (DPM++ 2M would give NaN)
    {
        standin_ctx sc = {1, 16, 0, -1};
        ldm_denoiser dn = {.fn = standin, .ctx = &sc, .sched = &s, .B = 1, .per = 16};
        ldm_denoiser_init(&dn);
        const ldm_sampler_info *info;
        ldm_sigma_kind sk;
        ldm_sampler_parse(&info, &sk, "dpmpp_2m");
        float noise[16] = {0}, x[16];
        ldm_rng rng;
        ldm_rng_init(&rng, LDM_RNG_CPU, 1);
        ldm_sample_run run = {.noise = noise, .rng = &rng};
        ldm_sampler_settings o = {.sampler = info, .sigma_kind = LDM_SIGMAS_SMOOTHSTEP, .steps = 100,
                                  .eta = -1, .conv = LDM_CONVENTIONS_DIFFUSERS};
        test_check(ldm_sample(x, &o, &run, &dn) == LDM_ERR && strstr(ldm_last_error(), "repeats"),
                   "smoothstep at 100 steps: a repeated sigma refused", "%s", ldm_last_error());
        o.steps = 77;
        int ok = ldm_sample(x, &o, &run, &dn) == LDM_OK;
        for (int i = 0; i < 16; i++) ok &= isfinite(x[i]);
        test_check(ok, "smoothstep at 77 steps runs DPM++ 2M (finite)", "%s", ldm_last_error());
        ldm_denoiser_free(&dn);
    }
    // the names users type select them, as " Karras" does
    static const struct { const char *name; ldm_sigma_kind kind; } names[] = {
        {"DPM++ 2M SGM Uniform", LDM_SIGMAS_SGM_UNIFORM}, {"euler_simple", LDM_SIGMAS_SIMPLE},
        {"DPM++ 2M KL Optimal", LDM_SIGMAS_KL_OPTIMAL}, {"Euler AYS", LDM_SIGMAS_AYS},
        {"dpmpp_2m_align_your_steps", LDM_SIGMAS_AYS}, {"Euler Normal", LDM_SIGMAS_DEFAULT},
        {"DPM++ 2M Beta", LDM_SIGMAS_BETA},
        {"DPM++ 3M SDE Karras", LDM_SIGMAS_KARRAS}, {"dpmpp_3m_sde_gpu_exponential", LDM_SIGMAS_EXPONENTIAL},
        {"Euler GITS", LDM_SIGMAS_GITS}, {"dpmpp_2m_smoothstep", LDM_SIGMAS_SMOOTHSTEP},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const ldm_sampler_info *info;
        ldm_sigma_kind k = LDM_SIGMAS_KARRAS;
        char name[96];
        snprintf(name, sizeof name, "parse \"%s\"", names[i].name);
        test_check(ldm_sampler_parse(&info, &k, names[i].name) == LDM_OK && k == names[i].kind,
                   name, "kind %d, %s", (int)k, ldm_last_error());
    }
    // every kind's name parses back to it (the CLI's --schedule and --help use them)
    for (int k = 0; k < LDM_SIGMAS_COUNT; k++) {
        ldm_sigma_kind got = (ldm_sigma_kind)-1;
        test_check(ldm_sigma_kind_parse(&got, ldm_sigma_kind_name((ldm_sigma_kind)k)) == LDM_OK &&
                       got == (ldm_sigma_kind)k,
                   "sigma kind name round trip", "kind %d (%s)", k, ldm_sigma_kind_name((ldm_sigma_kind)k));
    }
}

// --sde-noise brownian (samplers/brownian.h): k-diffusion's Brownian tree.
// (a) numpy's SeedSequence, word for word, for entropies of one to seven
// words, spawn keys and pool sizes (brownian_seedseq.txt, from numpy).
static void test_seed_sequence(void) {
    FILE *f = fopen(FIX "brownian_seedseq.txt", "r");
    if (!test_check(f != NULL, "brownian_seedseq.txt", "missing (run `make fixtures`)")) return;
    char line[1024];
    int cases = 0, bad = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        uint32_t ent[16], spawn[16], want[64], got[64];
        int pool, ne, ns, no, at = 0, used = 0, ok = 1;
        const char *p = line;
        ok &= sscanf(p, "%d %d%n", &pool, &ne, &used) == 2 && ne <= 16, p += used;
        for (int i = 0; ok && i < ne; i++) ok &= sscanf(p, "%u%n", &ent[i], &used) == 1, p += used;
        ok &= sscanf(p, "%d%n", &ns, &used) == 1 && ns <= 16, p += used;
        for (int i = 0; ok && i < ns; i++) ok &= sscanf(p, "%u%n", &spawn[i], &used) == 1, p += used;
        ok &= sscanf(p, "%d%n", &no, &used) == 1 && no <= 64, p += used;
        for (int i = 0; ok && i < no; i++) ok &= sscanf(p, "%u%n", &want[i], &used) == 1, p += used;
        if (!ok) { bad++; continue; }
        ldm_seed_sequence(got, no, ent, ne, spawn, ns, pool);
        for (int i = 0; i < no; i++) at += got[i] != want[i];
        bad += at != 0;
        cases++;
    }
    fclose(f);
    printf("  SeedSequence: %d cases, %d differ from numpy\n", cases, bad);
    test_check(cases > 100 && bad == 0, "SeedSequence(entropy, spawn_key, pool).generate_state "
               "= numpy's", "%d of %d cases differ", bad, cases);
    // the grid: Python's round(x, 6) (ties of the exact binary value to even)
    static const double xs[][2] = {{0.0078125, 0.007812}, {0.0234375, 0.023438},
                                   {1.0000005, 1.000001}, {14.614643096923828, 14.614643},
                                   {0.0291675366461277, 0.029168}, {2.5e-7, 0.0}};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++)
        test_check(ldm_round6(xs[i][0]) == xs[i][1], "round(x, 6) as Python", "%.17g -> %.17g",
                   xs[i][0], ldm_round6(xs[i][0]));
}

// (b) W(ta, tb) against torchsde.BrownianTree (and k-diffusion's
// BatchedBrownianTree with a list of seeds), query sequences as the samplers
// ask them, both builds of torch's CPU normal (brownian_cases.txt).
// Tolerance 1e-6: the same float32 operations in the same order; measured
// bit-identical.
static void test_brownian_torchsde(void) {
    FILE *f = fopen(FIX "brownian_cases.txt", "r");
    if (!test_check(f != NULL, "brownian_cases.txt", "missing (run `make fixtures`)")) return;
    static char line[16384];
    int64_t total = 0, exact = 0;
    while (fgets(line, sizeof line, f)) {
        char file[160], math[16];
        int per_sample, nq, used = 0;
        double t0, t1;
        unsigned long long seed;
        if (line[0] == '#' || sscanf(line, "%159s %15s %d %lf %lf %llu %d%n", file, math,
                                     &per_sample, &t0, &t1, &seed, &nq, &used) != 7)
            continue;
        int64_t n;
        float *want = load(file, &n);
        if (!want) continue;
        const int64_t B = 2, per = 64;
        ldm_rng rngs[2];
        for (int b = 0; b < 2; b++) {
            ldm_rng_init(&rngs[b], LDM_RNG_CPU, seed + (uint64_t)b);
            rngs[b].cpu_math = strcmp(math, "avx2") ? LDM_CPU_MATH_SCALAR : LDM_CPU_MATH_AVX2;
        }
        ldm_brownian bt;
        char name[220];
        snprintf(name, sizeof name, "brownian W %s (%d queries)", file, nq);
        if (!test_check(n == nq * B * per && ldm_brownian_init(&bt, rngs, per_sample, B, per,
                                                              (float)t0, (float)t1) == LDM_OK,
                        name, "fixture %lld values, %s", (long long)n, ldm_last_error())) {
            free(want);
            continue;
        }
        float *got = malloc((size_t)n * sizeof(float));
        const char *p = line + used;
        for (int q = 0; q < nq; q++) {
            double ta = 0, tb = 0;
            int k = 0;
            sscanf(p, "%lf %lf%n", &ta, &tb, &k);
            p += k;
            ldm_brownian_increment(&bt, got + q * B * per, ta, tb);
        }
        test_close(name, got, want, n, 0, 1e-6);
        for (int64_t i = 0; i < n; i++) exact += memcmp(&got[i], &want[i], 4) == 0;
        total += n;
        free(got);
        free(want);
        ldm_brownian_free(&bt);
    }
    fclose(f);
    printf("  brownian: %lld of %lld W values bit-identical to torchsde\n", (long long)exact,
           (long long)total);
}

// The theory the path must satisfy, on many more paths than the fixtures: every
// element of every seed's tree is its own path, 8 seeds x 4096 elements =
// 32768 independent paths on [sigma_min, sigma_max] of SD. Increments over
// disjoint intervals (long, short, 3e-6 long) must be N(0, length) and
// uncorrelated: mean within 5 standard errors, variance within 5 standard
// errors (sqrt(2/N) relative), correlations within 5/sqrt(N).
static void test_brownian_theory(void) {
    enum { SEEDS = 8, PER = 4096, N = SEEDS * PER, IV = 5 };
    static const double iv[IV][2] = {{0.0291675, 0.3}, {0.3, 1.7}, {1.7, 5.2},
                                     {5.2, 5.200003}, {9.0, 14.6146}};
    ldm_rng rngs[SEEDS];
    for (int b = 0; b < SEEDS; b++) ldm_rng_init(&rngs[b], LDM_RNG_CPU, 1000 + (uint64_t)b);
    ldm_brownian bt;
    if (!test_check(ldm_brownian_init(&bt, rngs, 1, SEEDS, PER, 0.0291675f, 14.614643f) == LDM_OK,
                    "brownian init", "%s", ldm_last_error()))
        return;
    float *inc[IV];
    for (int j = 0; j < IV; j++) {
        inc[j] = malloc(sizeof(float) * N);
        ldm_brownian_increment(&bt, inc[j], iv[j][0], iv[j][1]);
    }
    int ok_mean = 1, ok_var = 1, ok_corr = 1;
    double worst_var = 0, worst_corr = 0;
    for (int j = 0; j < IV; j++) {
        // the tree's times are on the 1e-6 grid (and the first clamped to sigma_min)
        double a = ldm_round6(iv[j][0] < 0.0291675 ? 0.0291675 : iv[j][0]), b = ldm_round6(iv[j][1]);
        double L = b - a, m = 0, v = 0;
        for (int e = 0; e < N; e++) m += inc[j][e];
        m /= N;
        for (int e = 0; e < N; e++) v += (inc[j][e] - m) * (inc[j][e] - m);
        v /= N - 1;
        ok_mean &= fabs(m) < 5 * sqrt(L / N);
        double rel = fabs(v / L - 1);
        if (rel > worst_var) worst_var = rel;
        ok_var &= rel < 5 * sqrt(2.0 / N);
        for (int k = j + 1; k < IV; k++) {
            double c = 0, vk = 0, vj = 0;
            for (int e = 0; e < N; e++)
                c += inc[j][e] * inc[k][e], vj += inc[j][e] * inc[j][e], vk += inc[k][e] * inc[k][e];
            double r = c / sqrt(vj * vk);
            if (fabs(r) > worst_corr) worst_corr = fabs(r);
            ok_corr &= fabs(r) < 5 / sqrt((double)N);
        }
    }
    printf("  brownian: %d paths, variance/length within %.1e, |correlation| of disjoint "
           "increments <= %.1e (5 sigma: %.1e, %.1e)\n", N, worst_var, worst_corr,
           5 * sqrt(2.0 / N), 5 / sqrt((double)N));
    test_check(ok_mean, "brownian increments: mean 0", "%s", "a mean is off by > 5 standard errors");
    test_check(ok_var, "brownian increments: variance = interval length", "worst %.3e", worst_var);
    test_check(ok_corr, "brownian increments over disjoint intervals uncorrelated", "worst %.3e",
               worst_corr);
    // the normalised noise of a step is N(0, 1), the same whenever asked (after
    // other queries), and additive: W(a, c) = W(a, b) + W(b, c) to float rounding
    float *n1 = malloc(sizeof(float) * N), *n2 = malloc(sizeof(float) * N);
    ldm_brownian_noise(&bt, n1, 3.3f, 2.1f);
    double v = 0;
    for (int e = 0; e < N; e++) v += (double)n1[e] * n1[e];
    v /= N;
    ldm_brownian_noise(&bt, n2, 14.0f, 0.5f);
    ldm_brownian_noise(&bt, n2, 3.3f, 2.1f);
    test_check(fabs(v - 1) < 5 * sqrt(2.0 / N) && !memcmp(n1, n2, sizeof(float) * N),
               "brownian step noise: N(0,1), the same whenever asked", "variance %.4f", v);
    float *w_ab = malloc(sizeof(float) * N), *w_bc = malloc(sizeof(float) * N);
    ldm_brownian_increment(&bt, n2, 0.7, 9.1);
    ldm_brownian_increment(&bt, w_ab, 0.7, 2.345678);
    ldm_brownian_increment(&bt, w_bc, 2.345678, 9.1);
    double worst_add = 0;
    for (int e = 0; e < N; e++) worst_add = fmax(worst_add, fabs(w_ab[e] + w_bc[e] - n2[e]));
    test_check(worst_add < 1e-5, "brownian: W(a, c) = W(a, b) + W(b, c)", "max %.3e", worst_add);
    free(w_ab); free(w_bc);
    // a sample's path depends on its own seed only: batch of 8 vs batch of 1
    ldm_brownian one;
    ldm_brownian_init(&one, rngs + 1, 1, 1, PER, 0.0291675f, 14.614643f);
    ldm_brownian_noise(&one, n2, 3.3f, 2.1f);
    test_check(!memcmp(n1 + PER, n2, sizeof(float) * PER),
               "brownian: sample 1's noise is the same alone (per-sample seeds)", "%s", "differs");
    ldm_brownian_free(&one);
    free(n1); free(n2);
    for (int j = 0; j < IV; j++) free(inc[j]);
    ldm_brownian_free(&bt);
}

// What the Brownian path is for: an SDE sampler at 20 and at 40 steps sees
// the same noise path, so its two results are close; with per-step draws
// they are two unrelated samples. DPM++ 2M SDE (eta 1), DPM++ SDE and
// DPM++ 3M SDE on the analytic mixture model (samplers/analytic.h), 4 seeds:
// RMS(x_20 - x_40) with the Brownian path must be under a third of the
// per-step one.
static void test_brownian_step_counts(void) {
    ldm_schedule s;
    ldm_schedule_init_sd(&s);
    ldm_analytic a = {.K = 2, .w = {0.5, 0.5}, .mu = {-1.0, 1.0}, .s = {0.3, 0.3}, .sched = &s};
    enum { PER = 512 };
    ldm_analytic_ctx mc = {&a, PER};
    static const char *names[] = {"dpmpp_2m_sde", "dpmpp_sde", "dpmpp_3m_sde"};
    for (int si = 0; si < 3; si++) {
        const ldm_sampler_info *info;
        ldm_sigma_kind sk;
        ldm_sampler_parse(&info, &sk, names[si]);
        double dist[2] = {0, 0};   // [per-step, brownian]
        for (int seed = 0; seed < 4; seed++) {
            float noise[PER], x[2][PER];
            ldm_rng nr;
            ldm_rng_init(&nr, LDM_RNG_CPU, 500 + (uint64_t)seed);
            ldm_rng_randn(&nr, noise, PER);
            for (int kind = 0; kind < 2; kind++) {
                for (int r = 0; r < 2; r++) {
                    ldm_denoiser dn = {.fn = ldm_analytic_model, .ctx = &mc, .sched = &s, .B = 1,
                                       .per = PER};
                    ldm_denoiser_init(&dn);
                    ldm_sampler_settings o = {.sampler = info, .sigma_kind = LDM_SIGMAS_KARRAS,
                                              .steps = r ? 40 : 20, .eta = -1,
                                              .conv = LDM_CONVENTIONS_DIFFUSERS,
                                              .sde_noise = kind ? LDM_SDE_NOISE_BROWNIAN
                                                                : LDM_SDE_NOISE_PER_STEP};
                    ldm_rng rng;
                    ldm_rng_init(&rng, LDM_RNG_CPU, 900 + (uint64_t)seed);
                    ldm_sample_run run = {.noise = noise, .rng = &rng};
                    ldm_sample(x[r], &o, &run, &dn);
                    ldm_denoiser_free(&dn);
                }
                double d = 0;
                for (int e = 0; e < PER; e++) d += (x[0][e] - x[1][e]) * (x[0][e] - x[1][e]);
                dist[kind] += sqrt(d / PER) / 4;
            }
        }
        char name[128];
        snprintf(name, sizeof name, "%s: 20 vs 40 steps closer with the Brownian path", names[si]);
        printf("  %s: RMS(x_20 - x_40) per-step %.4f, brownian %.4f\n", names[si], dist[0], dist[1]);
        test_check(dist[1] < dist[0] / 3, name, "per-step %.4f, brownian %.4f", dist[0], dist[1]);
    }
}

int main(void) {
    printf("-- rng\n");
    test_rng_cpu();
    test_rng_cuda();
    printf("-- schedule\n");
    test_schedule();
    test_spacings();
    test_lcm_timesteps();
    test_sigmas_extra();
    test_forward();
    printf("-- samplers\n");
    test_sampler_cases("sampler_cases.txt");
    test_sampler_cases("sampler_cases_3m.txt");
    test_sampler_cases("sampler_cases_kx.txt");
    test_sampler_cases("sampler_cases_multistep.txt");
    test_sampler_cases("sampler_cases_lcm.txt");
    test_sampler_cases("sampler_cases_brownian.txt");
    test_names_and_errors();
    test_ddim_eta1_is_ddpm();
    printf("-- brownian noise\n");
    test_seed_sequence();
    test_brownian_torchsde();
    test_brownian_theory();
    test_brownian_step_counts();
    return test_summary();
}
