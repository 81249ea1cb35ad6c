/*
 * samplers/dpm_solver.c -- "DPM fast" and "DPM adaptive": DPM-Solver (Lu et
 * al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
 * Sampling in Around 10 Steps", NeurIPS 2022), the noise-prediction
 * exponential integrator in t = -log sigma (their lambda = log alpha/sigma).
 *
 * With eps = (x - D(x; sigma(t))) / sigma(t), sigma(t) = e^-t and
 * h = t_next - t, one step of order 1, 2, 3 (their Algorithms 1 and 2,
 * DPM-Solver-1/2/3; r1 = 1/2 for order 2, r1 = 1/3, r2 = 2/3 for order 3):
 *   order 1:  x' = x - sigma(t_next) expm1(h) eps                        (= DDIM)
 *   order 2:  s1 = t + r1 h,  u1 = x - sigma(s1) expm1(r1 h) eps
 *             x' = x - sigma(t_next) expm1(h) eps
 *                    - sigma(t_next)/(2 r1) expm1(h) (eps(u1, s1) - eps)
 *   order 3:  u1 as above (r1 = 1/3), s2 = t + r2 h,
 *             u2 = x - sigma(s2) expm1(r2 h) eps
 *                    - sigma(s2) (r2/r1) (expm1(r2 h)/(r2 h) - 1) (eps(u1, s1) - eps)
 *             x' = x - sigma(t_next) expm1(h) eps
 *                    - sigma(t_next)/r2 (expm1(h)/h - 1) (eps(u2, s2) - eps)
 * An order-k step costs k model evaluations.
 *
 * DPM fast (their sec. 3.4, "DPM-Solver-fast"): a budget of N = c->n model
 * evaluations, K = floor(N/3) + 1 steps evenly spaced in t between
 * sigma_max = sigmas[0] and sigma_min = the last sigma > 0 (the schedule's
 * other entries are not used), orders 3,...,3,2,1 when 3 | N, else
 * 3,...,3,(N mod 3). The run ends at sigma_min, not at 0 (the sample keeps
 * sigma_min's noise, as k-diffusion's). The callback runs once per step.
 *
 * DPM adaptive (their sec. 3.4 / appendix, "DPM-Solver-12/23" with the
 * step-size control of Hairer et al.): from t = t(sigma_max) with h = 0.05,
 * each attempt takes the order-2 step (r1 = 1/3, x_low) and the order-3 step
 * (x_high), which share their first two evaluations (3 evaluations), and
 *   delta = max(atol, rtol max(|x_low|, |x_low of the last accepted step|))
 *   E = || (x_low - x_high) / delta ||_2 / sqrt(numel)    (over the whole batch)
 * atol = 0.0078, rtol = 0.05; a PID controller with only the integral term
 * (k-diffusion's defaults) scales h by f = 1 + atan((1/(E + 1e-8))^(1/3) - 1)
 * and accepts when f >= 0.81. The number of steps is decided by the error,
 * not by c->n (which only picks sigma_min); the callback runs once per
 * ACCEPTED step, and dn->nfe counts every attempt's 3 evaluations. A
 * non-finite error (a model returning NaN) stops the run with an error
 * instead of shrinking h forever.
 *
 * eta > 0 (both): the ancestral split of each step (get_ancestral_step) ends
 * the deterministic step at sigma_down and adds sigma_up n; then the
 * controller uses order 1.5. Default eta 0 (as ComfyUI's dpm_fast /
 * dpm_adaptive; A1111 runs them with eta 1).
 *
 * Mirrors k-diffusion sample_dpm_fast / sample_dpm_adaptive (DPMSolver) with
 * the ComfyUI mapping sigma_max = sigmas[0], sigma_min = last sigma > 0.
 * Noise (eta > 0): plain N(0,1) draws from the run's generator, as
 * k-diffusion's default noise sampler.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "sampler.h"

typedef struct {
    ldm_sampler_ctx *c;
    int64_t n;                    // B * per
    float *eps, *eps1, *eps2;     // [n] eps at (x, t), (u1, s1), (u2, s2)
    float *u, *denoised;          // [n] a stage's input; D at (x, t) for the callback
    int have1;                    // eps1 already holds eps(u1, s1) of this step (r1 = 1/3)
} solver;

static float sigma_of(float t) { return expf(-t); }

// out [n] <- eps(x; t) = (x - D(x; sigma(t))) / sigma(t); D also into *denoised when asked
static int eps_at(solver *s, float *out, const float *x, float t, float *denoised) {
    float sigma = sigma_of(t);
    float *D = denoised ? denoised : out;
    if (ldm_denoiser_denoised(s->c->dn, D, x, sigma) != LDM_OK) return LDM_ERR;
    for (int64_t k = 0; k < s->n; k++) out[k] = (x[k] - D[k]) / sigma;
    return LDM_OK;
}

// DPM-Solver-1: out = x - sigma(t_next) expm1(h) eps
static void step1(solver *s, float *out, const float *x, float t, float t_next) {
    float a = sigma_of(t_next) * expm1f(t_next - t);
    for (int64_t k = 0; k < s->n; k++) out[k] = x[k] - a * s->eps[k];
}

// DPM-Solver-2 with the intermediate point at r1: one more evaluation
// (none when eps1 already holds eps(u1, s1) of this step at the same r1)
static int step2(solver *s, float *out, const float *x, float t, float t_next, float r1) {
    float h = t_next - t, s1 = t + r1 * h;
    if (!s->have1) {
        float a1 = sigma_of(s1) * expm1f(r1 * h);
        for (int64_t k = 0; k < s->n; k++) s->u[k] = x[k] - a1 * s->eps[k];
        if (eps_at(s, s->eps1, s->u, s1, NULL) != LDM_OK) return LDM_ERR;
        s->have1 = 1;
    }
    float a = sigma_of(t_next) * expm1f(h), b = sigma_of(t_next) / (2 * r1) * expm1f(h);
    for (int64_t k = 0; k < s->n; k++)
        out[k] = x[k] - a * s->eps[k] - b * (s->eps1[k] - s->eps[k]);
    return LDM_OK;
}

// DPM-Solver-3 (r1 = 1/3, r2 = 2/3): two more evaluations (one when eps1 is kept)
static int step3(solver *s, float *out, const float *x, float t, float t_next) {
    const float r1 = 1.0f / 3, r2 = 2.0f / 3;
    float h = t_next - t, s1 = t + r1 * h, s2 = t + r2 * h;
    if (!s->have1) {
        float a1 = sigma_of(s1) * expm1f(r1 * h);
        for (int64_t k = 0; k < s->n; k++) s->u[k] = x[k] - a1 * s->eps[k];
        if (eps_at(s, s->eps1, s->u, s1, NULL) != LDM_OK) return LDM_ERR;
        s->have1 = 1;
    }
    float a2 = sigma_of(s2) * expm1f(r2 * h);
    float b2 = sigma_of(s2) * (r2 / r1) * (expm1f(r2 * h) / (r2 * h) - 1);
    for (int64_t k = 0; k < s->n; k++)
        s->u[k] = x[k] - a2 * s->eps[k] - b2 * (s->eps1[k] - s->eps[k]);
    if (eps_at(s, s->eps2, s->u, s2, NULL) != LDM_OK) return LDM_ERR;
    float a = sigma_of(t_next) * expm1f(h), b = sigma_of(t_next) / r2 * (expm1f(h) / h - 1);
    for (int64_t k = 0; k < s->n; k++)
        out[k] = x[k] - a * s->eps[k] - b * (s->eps2[k] - s->eps[k]);
    return LDM_OK;
}

// sigma_max, sigma_min of the run: sigmas[0] and the last sigma > 0
static void sigma_range(const ldm_sampler_ctx *c, float *smax, float *smin) {
    *smax = c->sigmas[0];
    *smin = c->sigmas[c->n] > 0 ? c->sigmas[c->n] : c->sigmas[c->n > 0 ? c->n - 1 : 0];
}

// The ancestral split of a step t -> t_next (eta > 0): the deterministic step
// ends at t_down = min(t_end, t(sigma_down)); returns the noise amplitude
// sqrt(sigma(t_next)^2 - sigma(t_down)^2).
static float ancestral(float *t_down, float t, float t_next, float t_end, float eta) {
    double sd, su;
    ldm_ancestral_step(&sd, &su, sigma_of(t), sigma_of(t_next), eta);
    *t_down = fminf(t_end, -logf((float)sd));
    float sn = sigma_of(t_next), sdn = sigma_of(*t_down);
    return sqrtf(sn * sn - sdn * sdn);
}

static int solver_init(solver *s, ldm_sampler_ctx *c, float **buf, int extra) {
    s->c = c;
    s->n = c->dn->B * c->dn->per;
    *buf = ldm_sampler_alloc(c, 5 + extra);
    if (!*buf) return LDM_ERR;
    s->eps = *buf; s->eps1 = *buf + s->n; s->eps2 = *buf + 2 * s->n;
    s->u = *buf + 3 * s->n; s->denoised = *buf + 4 * s->n;
    return LDM_OK;
}

int ldm_sample_dpm_fast(float *x, ldm_sampler_ctx *c) {
    solver s;
    float *buf;
    if (solver_init(&s, c, &buf, 2) != LDM_OK) return LDM_ERR;
    float *next = buf + 5 * s.n, *noise = buf + 6 * s.n;
    float smax, smin;
    sigma_range(c, &smax, &smin);
    const float t_start = -logf(smax), t_end = -logf(smin);
    const int nfe = c->n, m = nfe / 3 + 1;  // K steps
    int rc = LDM_OK;
    for (int i = 0; i < m; i++) {
        // the step's order: 3, ..., 3, 2, 1 (3 | N) or 3, ..., 3, N mod 3
        int order = nfe % 3 == 0 ? (i < m - 2 ? 3 : i == m - 2 ? 2 : 1)
                                 : (i < m - 1 ? 3 : nfe % 3);
        // t = linspace(t_start, t_end, K + 1)
        float t = (float)(t_start + (double)(t_end - t_start) * i / m);
        float t_next = i + 1 == m ? t_end : (float)(t_start + (double)(t_end - t_start) * (i + 1) / m);
        float t_down = t_next, amp = 0;
        if (c->eta > 0) amp = ancestral(&t_down, t, t_next, t_end, c->eta);
        s.have1 = 0;
        if ((rc = eps_at(&s, s.eps, x, t, s.denoised)) != LDM_OK) break;
        if (order == 1) step1(&s, next, x, t, t_down);
        else if (order == 2) rc = step2(&s, next, x, t, t_down, 0.5f);
        else rc = step3(&s, next, x, t, t_down);
        if (rc != LDM_OK) break;
        memcpy(x, next, (size_t)s.n * sizeof(float));
        if (c->eta > 0) {
            ldm_sampler_noise(c, noise);
            for (int64_t k = 0; k < s.n; k++) x[k] += amp * c->s_noise * noise[k];
        }
        if (c->callback) c->callback(c->callback_ctx, i, x, s.denoised);
    }
    free(buf);
    return rc;
}

// The step-size controller: k-diffusion's PIDStepSizeController with its
// defaults pcoeff = dcoeff = 0, icoeff = 1, where only the integral term is
// left: factor = limiter((1/(E + 1e-8))^(1/order)), limiter(f) = 1 + atan(f - 1).
typedef struct {
    double h;                     // the next step in t
    double exponent;              // 1/order (order 3, or 1.5 with noise)
    double accept_safety;         // accept when the factor >= this (0.81)
} step_control;

// Scales p->h by the factor for error E; 1 when the attempt is accepted.
static int propose(step_control *p, double error) {
    double factor = 1 + atan(pow(1 / (error + 1e-8), p->exponent) - 1);
    p->h *= factor;
    return factor >= p->accept_safety;
}

// A guard, not a setting: with a finite error every rejection shrinks h by
// at least 1 + atan(-1) = 0.21, so a real run accepts long before this.
#define DPM_ADAPTIVE_MAX_ATTEMPTS 100000

int ldm_sample_dpm_adaptive(float *x, ldm_sampler_ctx *c) {
    const double rtol = 0.05, atol = 0.0078, h_init = 0.05;
    const int order = 3;
    solver s;
    float *buf;
    if (solver_init(&s, c, &buf, 4) != LDM_OK) return LDM_ERR;
    float *x_low = buf + 5 * s.n, *x_high = buf + 6 * s.n, *x_prev = buf + 7 * s.n,
          *noise = buf + 8 * s.n;
    memcpy(x_prev, x, (size_t)s.n * sizeof(float));
    float smax, smin;
    sigma_range(c, &smax, &smin);
    const float t_end = -logf(smin);
    float t = -logf(smax);
    step_control pid = {.h = h_init, .exponent = 1.0 / (c->eta > 0 ? 1.5 : order),
                        .accept_safety = 0.81};
    int rc = LDM_OK, accepted = 0, attempts = 0;
    while (t < t_end - 1e-5f) {
        float t_next = fminf(t_end, (float)(t + pid.h)), t_down = t_next, amp = 0;
        if (c->eta > 0) amp = ancestral(&t_down, t, t_next, t_end, c->eta);
        s.have1 = 0;
        if ((rc = eps_at(&s, s.eps, x, t, s.denoised)) != LDM_OK) break;
        if ((rc = step2(&s, x_low, x, t, t_down, 1.0f / 3)) != LDM_OK) break;
        if ((rc = step3(&s, x_high, x, t, t_down)) != LDM_OK) break;
        double sum = 0;
        for (int64_t k = 0; k < s.n; k++) {
            double delta = fmax(atol, rtol * fmax(fabsf(x_low[k]), fabsf(x_prev[k])));
            double e = (x_low[k] - x_high[k]) / delta;
            sum += e * e;
        }
        double error = sqrt(sum) / sqrt((double)s.n);
        if (!isfinite(error) || ++attempts > DPM_ADAPTIVE_MAX_ATTEMPTS) {
            rc = ldm_error("dpm_adaptive: %s at sigma %g after %d accepted steps (the model's "
                           "output is not finite?)", isfinite(error) ? "no progress" :
                           "the error estimate is not finite", sigma_of(t), accepted);
            break;
        }
        if (!propose(&pid, error)) continue;  // rejected: the same t with a smaller h
        memcpy(x_prev, x_low, (size_t)s.n * sizeof(float));
        memcpy(x, x_high, (size_t)s.n * sizeof(float));
        if (c->eta > 0) {
            ldm_sampler_noise(c, noise);
            for (int64_t k = 0; k < s.n; k++) x[k] += amp * c->s_noise * noise[k];
        }
        t = t_next;
        if (c->callback) c->callback(c->callback_ctx, accepted, x, s.denoised);
        accepted++;
    }
    free(buf);
    return rc;
}
