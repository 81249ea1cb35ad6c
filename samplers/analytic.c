/*
 * samplers/analytic.c -- the closed-form optimal denoiser of a Gaussian (or
 * mixture of Gaussians) data distribution and its exact probability-flow ODE
 * solution (see analytic.h for the formulas). Everything in double: the
 * error of a float32 sampler against it is then the sampler's own.
 *
 * Follows Karras et al. 2022 (EDM) sec. 2 and appendix B.3, where the ideal
 * denoiser of a finite data set is written the same way (a mixture of point
 * masses is K Gaussians of s_k = 0).
 */
#include "analytic.h"

#include <math.h>

#include "ldm/core/error.h"

double ldm_analytic_denoise(const ldm_analytic *a, double y, double sigma) {
    if (sigma <= 0) return y;
    double v2 = sigma * sigma;
    if (a->K == 1) return a->mu[0] + a->s[0] * a->s[0] / (a->s[0] * a->s[0] + v2) * (y - a->mu[0]);
    // responsibilities r_k in log space (max subtracted), then the posterior mean
    double logp[LDM_ANALYTIC_MAX_K], m = -INFINITY;
    for (int k = 0; k < a->K; k++) {
        double var = a->s[k] * a->s[k] + v2, d = y - a->mu[k];
        logp[k] = log(a->w[k]) - 0.5 * log(var) - 0.5 * d * d / var;
        if (logp[k] > m) m = logp[k];
    }
    double num = 0, den = 0;
    for (int k = 0; k < a->K; k++) {
        double r = exp(logp[k] - m), s2 = a->s[k] * a->s[k];
        num += r * (a->mu[k] + s2 / (s2 + v2) * (y - a->mu[k]));  // E[x0 | y, component k]
        den += r;
    }
    return num / den;
}

// One element from sigma_from to sigma_to (> 0 both) by RK4 in u = log sigma:
// dy/du = sigma dy/dsigma = y - D(y; e^u). Steps of at most 1/4000 in u.
static double flow_rk4(const ldm_analytic *a, double y, double sf, double st) {
    double u0 = log(sf), u1 = log(st);
    int m = (int)ceil(fabs(u1 - u0) * LDM_ANALYTIC_RK4_STEPS) + 1;
    double h = (u1 - u0) / m;
    for (int i = 0; i < m; i++) {
        double u = u0 + i * h;
        double k1 = y - ldm_analytic_denoise(a, y, exp(u));
        double k2 = (y + h / 2 * k1) - ldm_analytic_denoise(a, y + h / 2 * k1, exp(u + h / 2));
        double k3 = (y + h / 2 * k2) - ldm_analytic_denoise(a, y + h / 2 * k2, exp(u + h / 2));
        double k4 = (y + h * k3) - ldm_analytic_denoise(a, y + h * k3, exp(u + h));
        y += h / 6 * (k1 + 2 * k2 + 2 * k3 + k4);
    }
    return y;
}

void ldm_analytic_flow(const ldm_analytic *a, double *y_to, const double *y_from, int64_t n,
                       double sigma_from, double sigma_to) {
    for (int64_t i = 0; i < n; i++) {
        double y = y_from[i];
        if (a->K == 1) {   // exact: y - mu grows as sqrt(s^2 + sigma^2)
            double s2 = a->s[0] * a->s[0];
            y_to[i] = a->mu[0] + (y - a->mu[0]) * sqrt(s2 + sigma_to * sigma_to) /
                                     sqrt(s2 + sigma_from * sigma_from);
            continue;
        }
        // sigma = 0 is the ODE's end point; reach it from a tiny sigma, where
        // y(sigma) - y(0) = O(sigma^2): 1e-7 leaves ~1e-14.
        double sf = sigma_from > 1e-7 ? sigma_from : 1e-7, st = sigma_to > 1e-7 ? sigma_to : 1e-7;
        y_to[i] = sf == st ? y : flow_rk4(a, y, sf, st);
    }
}

void ldm_analytic_moments(const ldm_analytic *a, double *mean, double *var) {
    double m = 0, m2 = 0;
    for (int k = 0; k < a->K; k++) {
        m += a->w[k] * a->mu[k];
        m2 += a->w[k] * (a->s[k] * a->s[k] + a->mu[k] * a->mu[k]);
    }
    *mean = m;
    *var = m2 - m * m;
}

double ldm_analytic_sigma_of_t(const ldm_schedule *s, double t) {
    if (t < 0) t = 0;
    if (t > s->T - 1) t = s->T - 1;
    int lo = (int)floor(t), hi = lo + 1 < s->T ? lo + 1 : lo;
    double w = t - lo;
    double a_lo = s->alphas_cumprod[lo], a_hi = s->alphas_cumprod[hi];
    double l_lo = 0.5 * log((1 - a_lo) / a_lo), l_hi = 0.5 * log((1 - a_hi) / a_hi);
    return exp((1 - w) * l_lo + w * l_hi);
}

int ldm_analytic_model(float *out, const float *x_in, const float *t, int64_t N, void *vctx) {
    const ldm_analytic_ctx *c = vctx;
    const ldm_analytic *a = c->a;
    if (!a || !a->sched || a->K < 1 || a->K > LDM_ANALYTIC_MAX_K)
        return ldm_error("analytic model: needs a schedule and 1..%d components", LDM_ANALYTIC_MAX_K);
    for (int64_t r = 0; r < N; r++) {
        double sigma = ldm_analytic_sigma_of_t(a->sched, t[r]);
        double abar = 1 / (1 + sigma * sigma);
        double up = sqrt(1 + sigma * sigma);  // y = x_t / sqrt(abar)
        for (int64_t k = 0; k < c->per; k++) {
            double y = x_in[r * c->per + k] * up;
            double D = ldm_analytic_denoise(a, y, sigma);
            double eps = (y - D) / sigma;     // y = x0 + sigma eps
            out[r * c->per + k] = (float)(a->prediction == LDM_PRED_V
                                              ? sqrt(abar) * eps - sqrt(1 - abar) * D
                                              : eps);
        }
    }
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// one sampler run against the exact ODE

#include <stdlib.h>
#include <string.h>

#include "sampler.h"

typedef struct { float *at_last; int64_t per; int i_last; } capture_ctx;

static void capture(void *vctx, int i, float *x, const float *denoised) {
    capture_ctx *c = vctx;
    if (i == c->i_last) memcpy(c->at_last, x, (size_t)c->per * sizeof(float));
}

int ldm_analytic_sample(ldm_analytic_run *r, const ldm_analytic *a,
                        const ldm_sampler_info *info, int kind, int n, const float *noise,
                        int64_t per, float eta, uint64_t seed, ldm_analytic_cache *cache) {
    const ldm_schedule *sch = a->sched;
    if (n < 2 || n > sch->T)
        return ldm_error("analytic run: steps must be in [2, %d], found %d", sch->T, n);
    ldm_analytic_ctx mc = {a, per};
    ldm_denoiser dn = {.fn = ldm_analytic_model, .ctx = &mc, .prediction = a->prediction,
                       .sched = sch, .B = 1, .per = per};
    if (ldm_denoiser_init(&dn) != LDM_OK) return LDM_ERR;
    float *x = malloc((size_t)per * sizeof(float)), *last = malloc((size_t)per * sizeof(float));
    float *sig = malloc((size_t)(n + 1) * sizeof(float));
    int *ts = malloc((size_t)n * sizeof(int));
    double *y0 = malloc((size_t)per * sizeof(double));
    if (!x || !last || !sig || !ts || !y0) {
        free(x); free(last); free(sig); free(ts); free(y0);
        ldm_denoiser_free(&dn);
        return ldm_error("analytic run: out of memory");
    }
    ldm_rng rng;
    ldm_rng_init(&rng, LDM_RNG_CPU, seed);
    capture_ctx cc = {last, per, n - 2};
    ldm_sampler_ctx c = {.dn = &dn, .rng = &rng, .n = n, .eta = eta < 0 ? info->default_eta : eta,
                         .s_tmin = 0, .s_tmax = INFINITY, .s_noise = 1, .set_alpha_to_one = 1,
                         .callback = capture, .callback_ctx = &cc};
    double s_start, s_last, scale_last;  // sigmas of the start and the last level > 0;
                                         // scale_last: x = scale * y there
    if (info->uses_sigmas) {
        ldm_sigmas_make(sig, (ldm_sigma_kind)kind, sch, n);
        c.sigmas = sig;
        for (int64_t k = 0; k < per; k++) { x[k] = noise[k] * sig[0]; y0[k] = x[k]; }
        s_start = sig[0];
        s_last = sig[n - 1];
        scale_last = 1;
    } else {  // x_T = noise is the VP state: y = x / sqrt(abar)
        ldm_timesteps(ts, sch, LDM_SPACING_TRAILING, n, 0);
        c.timesteps = ts;
        s_start = ldm_analytic_sigma_of_t(sch, ts[0]);
        s_last = ldm_analytic_sigma_of_t(sch, ts[n - 1]);
        scale_last = 1 / sqrt(1 + s_last * s_last);
        for (int64_t k = 0; k < per; k++) {
            x[k] = noise[k];
            y0[k] = noise[k] * sqrt(1 + s_start * s_start);
        }
    }
    int rc = info->fn(x, &c);
    ldm_analytic_cache own = {0};
    if (!cache) cache = &own;
    if (rc == LDM_OK && !r->sample_only && !(cache->y_last && cache->s_start == s_start && cache->s_last == s_last)) {
        free(cache->y_last); free(cache->y_final);
        cache->y_last = malloc((size_t)per * sizeof(double));
        cache->y_final = malloc((size_t)per * sizeof(double));
        if (!cache->y_last || !cache->y_final) rc = ldm_error("analytic run: out of memory");
        else {
            ldm_analytic_flow(a, cache->y_last, y0, per, s_start, s_last);
            ldm_analytic_flow(a, cache->y_final, cache->y_last, per, s_last, 0);
            cache->s_start = s_start;
            cache->s_last = s_last;
        }
    }
    if (rc == LDM_OK) {
        double e_last = 0, e_final = 0, m = 0, m2 = 0;
        for (int64_t k = 0; k < per && !r->sample_only; k++) {
            double d = last[k] / scale_last - cache->y_last[k];
            e_last += d * d;
        }
        for (int64_t k = 0; k < per; k++) {
            double d = r->sample_only ? 0 : x[k] - cache->y_final[k];
            e_final += d * d;
            m += x[k];
            m2 += (double)x[k] * x[k];
        }
        r->err_last = sqrt(e_last / per);
        r->err_final = sqrt(e_final / per);
        r->mean = m / per;
        r->var = m2 / per - r->mean * r->mean;
        r->nfe = dn.nfe;
        if (r->x) memcpy(r->x, x, (size_t)per * sizeof(float));
    }
    free(x); free(last); free(sig); free(ts); free(y0);
    ldm_analytic_cache_free(&own);
    ldm_denoiser_free(&dn);
    return rc;
}

void ldm_analytic_cache_free(ldm_analytic_cache *c) {
    free(c->y_last); free(c->y_final);
    c->y_last = c->y_final = NULL;
}
