/*
 * samplers/analytic.h -- an analytic "model" for testing the samplers: data
 * whose optimal denoiser and probability-flow ODE are known in closed form.
 *
 * Data: every dimension of x0 is drawn independently from the same 1-D
 * mixture of Gaussians  p(x0) = sum_k w_k N(mu_k, s_k^2)  (K = 1: one Gaussian).
 * Noised (variance-exploding view, Karras et al. 2022 sec. 2): y = x0 + sigma n.
 * The optimal denoiser (the minimiser of the training loss, Karras eq. 3) is
 * the posterior mean, per element:
 *   D(y; sigma) = E[x0 | y] = sum_k r_k(y) (mu_k + s_k^2/(s_k^2+sigma^2) (y - mu_k))
 *   r_k(y) = w_k N(y; mu_k, s_k^2 + sigma^2) / sum_j w_j N(y; mu_j, s_j^2 + sigma^2)
 * and the probability-flow ODE (Karras eq. 4, sigma(t) = t)
 *   dy/dsigma = (y - D(y; sigma)) / sigma
 * has, for one Gaussian, the exact solution
 *   y(sigma) = mu + (y(sigma0) - mu) sqrt(s^2+sigma^2) / sqrt(s^2+sigma0^2).
 * For a mixture ldm_analytic_flow integrates the ODE in double with classic
 * Runge-Kutta 4 on u = log sigma (dy/du = y - D), fine enough to be exact to
 * ~1e-12 for the samplers' purposes.
 *
 * ldm_analytic_model is an ldm_model_fn: it plays the UNet behind an
 * ldm_denoiser, so every sampler runs unchanged on it. It receives what the
 * UNet receives, the variance-preserving x_t = sqrt(abar) y and a (fractional)
 * timestep t, recovers sigma(t) from the schedule in double (log-sigma
 * interpolation, as ldm_t_to_sigma) and returns eps = (y - D)/sigma or
 * v = sqrt(abar) eps - sqrt(1-abar) D, as the denoiser's prediction says.
 * The same formulas are in tools/reference/analytic.py.
 */
#ifndef LDM_ANALYTIC_H
#define LDM_ANALYTIC_H

#include <stdint.h>

#include "ldm/core/prediction.h"
#include "schedule.h"

#define LDM_ANALYTIC_MAX_K 8
// RK4 steps per unit of log sigma in ldm_analytic_flow (mixtures)
#define LDM_ANALYTIC_RK4_STEPS 100

typedef struct ldm_analytic {
    int K;                             // mixture components, 1..LDM_ANALYTIC_MAX_K
    double w[LDM_ANALYTIC_MAX_K];      // [K] weights, sum 1
    double mu[LDM_ANALYTIC_MAX_K];     // [K] means
    double s[LDM_ANALYTIC_MAX_K];      // [K] standard deviations (0: a point mass)
    const ldm_schedule *sched;         // t -> sigma for the model callback
    ldm_prediction prediction;         // what ldm_analytic_model returns: eps or v
} ldm_analytic;

// D(y; sigma) for one element (sigma >= 0; sigma = 0 returns y).
double ldm_analytic_denoise(const ldm_analytic *a, double y, double sigma);
// y [n] <- the ODE solution at sigma_to started from y [n] at sigma_from
// (both >= 0; in place allowed). Closed form for K = 1, RK4 otherwise.
void ldm_analytic_flow(const ldm_analytic *a, double *y_to, const double *y_from, int64_t n,
                       double sigma_from, double sigma_to);
// Mean and variance of the data distribution (per element).
void ldm_analytic_moments(const ldm_analytic *a, double *mean, double *var);
// sigma of a fractional timestep, in double (log-sigma interpolation).
double ldm_analytic_sigma_of_t(const ldm_schedule *s, double t);

// The ldm_model_fn: out [N,per] <- eps or v for x_in [N,per] at timesteps t [N].
// ctx: an ldm_analytic whose `per` is given by the denoiser: pass the struct
// ldm_analytic_ctx below.
typedef struct ldm_analytic_ctx {
    const ldm_analytic *a;
    int64_t per;                       // floats per row
} ldm_analytic_ctx;
int ldm_analytic_model(float *out, const float *x_in, const float *t, int64_t N, void *ctx);

// ---------------------------------------------------------------------------
// One sampler run on the analytic model, measured against the exact ODE

struct ldm_sampler_info;

typedef struct ldm_analytic_run {
    double err_last;    // RMS over elements of x - exact at the last noise level > 0
                        // (sigmas[n-1], or timesteps[n-1]): the ODE solve alone
    double err_final;   // RMS of the final x - the exact ODE end point y(0)
    double mean, var;   // of the final x over its elements (distribution tests)
    int64_t nfe;        // model evaluations the run took
    float *x;           // [per] NULL, or set by the caller to receive the final sample
    int sample_only;    // set by the caller: 1 skips the exact ODE (err_* stay 0), for
                        // the stochastic samplers, whose samples are not the ODE's
} ldm_analytic_run;

// The exact end points of one start (the ODE solve costs far more than a
// sampler run): kept by the caller between runs from the same noise; zero it
// before the first run, ldm_analytic_cache_free after the last.
typedef struct ldm_analytic_cache {
    double s_start, s_last;          // the key: sigmas of the start and of the last level > 0
    double *y_last, *y_final;        // [per] exact y at s_last and at 0
} ldm_analytic_cache;
void ldm_analytic_cache_free(ldm_analytic_cache *c);

// Runs `info` for n steps on `a` (eps prediction, no guidance) with one
// sample of `per` elements started from noise [per]: k-diffusion samplers on
// the sigma schedule `kind` (an ldm_sigma_kind) of a->sched,
// DDPM/DDIM/PLMS on "trailing" timesteps with abar = 1 after the last step
// (so every sampler ends at sigma = 0). eta < 0: the sampler's default;
// `seed` seeds the run's noise draws. cache: NULL, or the exact end points
// of this noise kept between calls. 0 / LDM_ERR.
int ldm_analytic_sample(ldm_analytic_run *r, const ldm_analytic *a,
                        const struct ldm_sampler_info *info, int kind, int n, const float *noise,
                        int64_t per, float eta, uint64_t seed, ldm_analytic_cache *cache);

#endif
