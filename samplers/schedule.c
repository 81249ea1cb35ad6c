/*
 * samplers/schedule.c -- betas, alpha-bar, sigmas, timestep spacings, Karras
 * and exponential sigma schedules, the forward process (see schedule.h).
 *
 * Precision follows the references so that tests can hold us to 1e-6:
 * torch.linspace's two-sided formula (start + i*step for the first half,
 * end - (n-1-i)*step for the second), float32 arithmetic where diffusers and
 * k-diffusion compute in float32, float64 where CompVis does.
 */
#include "schedule.h"

#include <math.h>
#include <string.h>

#include "ldm/core/error.h"

// ---------------------------------------------------------------------------
// torch.linspace, element i of n, in float64 and float32

static double linspace_f64(double a, double b, int n, int i) {
    if (n == 1) return a;
    double step = (b - a) / (double)(n - 1);
    return i < n / 2 ? a + step * (double)i : b - step * (double)(n - 1 - i);
}

static float linspace_f32(float a, float b, int n, int i) {
    if (n == 1) return a;
    float step = (b - a) / (float)(n - 1);
    return i < n / 2 ? a + step * (float)i : b - step * (float)(n - 1 - i);
}

// ---------------------------------------------------------------------------
// betas -> alphas_cumprod -> sigmas

// Nichol & Dhariwal 2021 eq. 17: abar(t) = cos^2(((t/T) + s)/(1 + s) * pi/2), s = 0.008.
static double cosine_abar(double u) {
    double c = cos((u + 0.008) / 1.008 * M_PI / 2);
    return c * c;
}

int ldm_schedule_init(ldm_schedule *s, ldm_beta_kind kind, ldm_sched_precision prec, double b0,
                      double b1, int T) {
    if (T < 2 || T > LDM_SCHEDULE_MAX_T)
        return ldm_error("schedule: num_train_timesteps must be in [2, %d], found %d",
                         LDM_SCHEDULE_MAX_T, T);
    if (kind != LDM_BETA_COSINE && !(b0 > 0 && b0 < 1 && b1 > 0 && b1 < 1))
        return ldm_error("schedule: beta_start and beta_end must be in (0,1), found %g and %g",
                         b0, b1);
    memset(s, 0, sizeof *s);
    s->T = T;
    double acc64 = 1.0;  // running product (float64 in both precisions: torch's
                         // CPU cumprod accumulates float32 in double too)
    for (int i = 0; i < T; i++) {
        double beta;
        if (kind == LDM_BETA_COSINE) {
            // betas_for_alpha_bar: computed in float64, then stored float32
            beta = fmin(1.0 - cosine_abar((double)(i + 1) / T) / cosine_abar((double)i / T), 0.999);
            if (prec == LDM_SCHED_DIFFUSERS) beta = (float)beta;
        } else if (prec == LDM_SCHED_COMPVIS) {
            double l = kind == LDM_BETA_SCALED_LINEAR ? linspace_f64(sqrt(b0), sqrt(b1), T, i)
                                                      : linspace_f64(b0, b1, T, i);
            beta = kind == LDM_BETA_SCALED_LINEAR ? l * l : l;
        } else {
            float l = kind == LDM_BETA_SCALED_LINEAR
                          ? linspace_f32((float)sqrt(b0), (float)sqrt(b1), T, i)
                          : linspace_f32((float)b0, (float)b1, T, i);
            beta = kind == LDM_BETA_SCALED_LINEAR ? (double)(l * l) : (double)l;
        }
        double alpha = prec == LDM_SCHED_DIFFUSERS ? (double)(1.0f - (float)beta) : 1.0 - beta;
        acc64 *= alpha;                                   // abar_t = prod alpha_s (DDPM eq. 4)
        if (prec == LDM_SCHED_DIFFUSERS) acc64 = (float)acc64;
        s->alphas_cumprod[i] = (float)acc64;
    }
    for (int i = 0; i < T; i++) {
        // k-diffusion DiscreteEpsDDPMDenoiser: ((1 - ac) / ac) ** 0.5 in float32
        float ac = s->alphas_cumprod[i];
        s->sigmas[i] = sqrtf((1.0f - ac) / ac);
        s->log_sigmas[i] = logf(s->sigmas[i]);
    }
    return LDM_OK;
}

void ldm_schedule_init_sd(ldm_schedule *s) {
    ldm_schedule_init(s, LDM_BETA_SCALED_LINEAR, LDM_SCHED_COMPVIS, 0.00085, 0.012, 1000);
}

int ldm_beta_kind_parse(ldm_beta_kind *kind, const char *name) {
    if (!name) name = "(null)";
    if (!strcmp(name, "scaled_linear")) *kind = LDM_BETA_SCALED_LINEAR;
    else if (!strcmp(name, "linear")) *kind = LDM_BETA_LINEAR;
    else if (!strcmp(name, "cosine") || !strcmp(name, "squaredcos_cap_v2")) *kind = LDM_BETA_COSINE;
    else
        return ldm_error("beta schedule: expected scaled_linear, linear or cosine, found \"%s\"",
                         name);
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// sigma <-> t

float ldm_sigma_to_t(const ldm_schedule *s, float sigma) {
    float log_sigma = logf(sigma);
    // low = the last training level with log_sigma[i] <= log_sigma (0 if none),
    // at most T-2 so that high = low+1 exists
    int low = 0;
    for (int i = 0; i < s->T; i++)
        if (log_sigma - s->log_sigmas[i] >= 0) low = i;
    if (low > s->T - 2) low = s->T - 2;
    int high = low + 1;
    float lo = s->log_sigmas[low], hi = s->log_sigmas[high];
    float w = (lo - log_sigma) / (lo - hi);
    if (w < 0) w = 0;
    if (w > 1) w = 1;
    return (1.0f - w) * (float)low + w * (float)high;
}

float ldm_t_to_sigma(const ldm_schedule *s, float t) {
    int low = (int)floorf(t), high = (int)ceilf(t);
    if (low < 0) low = 0;
    if (high > s->T - 1) high = s->T - 1;
    if (low > high) low = high;
    float w = t - floorf(t);
    float log_sigma = (1.0f - w) * s->log_sigmas[low] + w * s->log_sigmas[high];
    return expf(log_sigma);
}

double ldm_schedule_abar(const ldm_schedule *s, double t) {
    double sigma = ldm_t_to_sigma(s, (float)t);
    return 1.0 / (1.0 + sigma * sigma);
}

// ---------------------------------------------------------------------------
// timestep spacings

int ldm_spacing_parse(ldm_spacing *sp, const char *name) {
    if (!name) name = "(null)";
    if (!strcmp(name, "leading")) *sp = LDM_SPACING_LEADING;
    else if (!strcmp(name, "trailing")) *sp = LDM_SPACING_TRAILING;
    else if (!strcmp(name, "linspace")) *sp = LDM_SPACING_LINSPACE;
    else if (!strcmp(name, "uniform") || !strcmp(name, "compvis")) *sp = LDM_SPACING_UNIFORM;
    else if (!strcmp(name, "lcm")) *sp = LDM_SPACING_LCM;
    else
        return ldm_error("timestep spacing: expected leading, trailing, linspace, uniform or lcm, "
                         "found \"%s\"", name);
    return LDM_OK;
}

int ldm_timesteps_count(const ldm_schedule *s, ldm_spacing sp, int n) {
    if (n < 1 || n > s->T)
        return ldm_error("steps: expected 1..%d, found %d", s->T, n);
    if (sp == LDM_SPACING_LCM && (n > LDM_LCM_ORIGINAL_STEPS || s->T < LDM_LCM_ORIGINAL_STEPS))
        return ldm_error("steps: LCM / TCD sample from %d distillation timesteps, so at most %d "
                         "steps, found %d", LDM_LCM_ORIGINAL_STEPS, LDM_LCM_ORIGINAL_STEPS, n);
    if (sp == LDM_SPACING_UNIFORM) {
        int c = s->T / n;
        return (s->T + c - 1) / c;  // len(range(0, T, c)): more than n when c does not divide T
    }
    return n;
}

int ldm_timesteps(int *out, const ldm_schedule *s, ldm_spacing sp, int n, int steps_offset) {
    int count = ldm_timesteps_count(s, sp, n);
    if (count < 0) return count;
    int T = s->T;
    for (int i = 0; i < count; i++) {
        int t;
        switch (sp) {
        case LDM_SPACING_LEADING:   // (arange(n) * (T//n)).round()[::-1] + offset
            t = (count - 1 - i) * (T / n) + steps_offset;
            break;
        case LDM_SPACING_TRAILING:  // round(arange(T, 0, -T/n)) - 1
            t = (int)nearbyint((double)T - (double)i * ((double)T / n)) - 1;
            break;
        case LDM_SPACING_LINSPACE: { // round(np.linspace(0, T-1, n))[::-1]
            int j = count - 1 - i;
            double v = n == 1 ? 0.0 : (double)j * ((double)(T - 1) / (n - 1));
            if (n > 1 && j == n - 1) v = T - 1;  // numpy sets the endpoint exactly
            t = (int)nearbyint(v);
            break;
        }
        case LDM_SPACING_LCM: {     // origin k*(1..N) - 1 descending, entries floor(i N / n)
            int N = LDM_LCM_ORIGINAL_STEPS, k = T / N;
            int index = (int)floor((double)i * ((double)N / n));  // linspace(0, N, n, endpoint=False)
            t = (N - index) * k - 1;
            break;
        }
        default:                    // CompVis make_ddim_timesteps("uniform") + 1
            t = (count - 1 - i) * (T / n) + 1;
            break;
        }
        if (t < 0) t = 0;
        if (t > T - 1) t = T - 1;
        out[i] = t;
    }
    return count;
}

// ---------------------------------------------------------------------------
// sigma schedules

void ldm_sigmas_default(float *out, const ldm_schedule *s, int n) {
    for (int i = 0; i < n; i++)
        out[i] = ldm_t_to_sigma(s, linspace_f32((float)(s->T - 1), 0.0f, n, i));
    out[n] = 0;
}

void ldm_sigmas_karras(float *out, int n, double sigma_min, double sigma_max, double rho) {
    float min_inv_rho = (float)pow(sigma_min, 1.0 / rho);
    float max_inv_rho = (float)pow(sigma_max, 1.0 / rho);
    for (int i = 0; i < n; i++) {
        float ramp = linspace_f32(0.0f, 1.0f, n, i);
        float base = max_inv_rho + ramp * (min_inv_rho - max_inv_rho);  // Karras eq. 5
        out[i] = (float)pow((double)base, rho);
    }
    out[n] = 0;
}

void ldm_sigmas_exponential(float *out, int n, double sigma_min, double sigma_max) {
    for (int i = 0; i < n; i++)
        out[i] = expf(linspace_f32((float)log(sigma_max), (float)log(sigma_min), n, i));
    out[n] = 0;
}

void ldm_sigmas_sgm_uniform(float *out, const ldm_schedule *s, int n) {
    for (int i = 0; i < n; i++)  // torch.linspace(T-1, 0, n+1)[:-1] in float32
        out[i] = ldm_t_to_sigma(s, linspace_f32((float)(s->T - 1), 0.0f, n + 1, i));
    out[n] = 0;
}

void ldm_sigmas_simple(float *out, const ldm_schedule *s, int n) {
    double ss = (double)s->T / n;  // len(sigmas) / steps
    for (int i = 0; i < n; i++) out[i] = s->sigmas[s->T - 1 - (int)(i * ss)];
    out[n] = 0;
}

void ldm_sigmas_kl_optimal(float *out, int n, double sigma_min, double sigma_max) {
    // float32 as the reference: arange(n) / (n-1), then the tan of the blend
    float amin = atanf((float)sigma_min), amax = atanf((float)sigma_max);
    for (int i = 0; i < n; i++) {
        float u = n > 1 ? (float)i / (float)(n - 1) : 0.0f;
        out[i] = tanf(u * amin + (1 - u) * amax);
    }
    out[n] = 0;
}

void ldm_sigmas_ays(float *out, int n) {
    static const double ays[10] = {14.615, 6.475, 3.861, 2.697, 1.886,
                                   1.396,  0.963, 0.652, 0.399, 0.152};
    for (int i = 0; i < n; i++) {   // np.interp of log sigma at x = i/(n-1) over 10 nodes
        double x = n > 1 ? (double)i / (n - 1) * 9 : 0;
        int j = (int)x < 9 ? (int)x : 8;
        double w = x - j;
        out[i] = (float)exp((1 - w) * log(ays[j]) + w * log(ays[j + 1]));
    }
    out[n] = 0;
}

// GITS for SD 1.5 (ComfyUI's NOISE_LEVELS[1.20]): row n-2 holds the n+1
// points of the n-step schedule as indices k of the search grid
// t = linspace(T-1, 0, 101)[100 - k], i.e. t = 9.99 k: every published sigma
// is the training schedule's sigma(9.99 k) (to 3e-6; checked in
// tools/reference/fixtures_samplers_schedules.py).
static const unsigned char gits_grid[19][21] = {
    {100, 29, 0},
    {100, 49, 18, 0},
    {100, 61, 33, 11, 0},
    {100, 66, 42, 21, 6, 0},
    {100, 83, 57, 34, 15, 3, 0},
    {100, 83, 62, 42, 23, 8, 1, 0},
    {100, 83, 62, 45, 29, 15, 6, 1, 0},
    {100, 83, 66, 50, 34, 21, 11, 4, 1, 0},
    {100, 83, 66, 51, 38, 27, 17, 9, 4, 1, 0},
    {100, 83, 67, 54, 42, 30, 21, 13, 7, 3, 1, 0},
    {100, 83, 68, 56, 45, 34, 25, 17, 11, 6, 3, 1, 0},
    {100, 86, 71, 61, 49, 38, 29, 21, 15, 10, 6, 3, 1, 0},
    {100, 86, 71, 62, 50, 40, 31, 23, 17, 12, 8, 5, 3, 1, 0},
    {100, 88, 78, 68, 58, 48, 38, 30, 23, 17, 12, 8, 5, 3, 1, 0},
    {100, 88, 78, 68, 58, 48, 38, 30, 23, 17, 13, 9, 6, 4, 2, 1, 0},
    {100, 88, 78, 68, 58, 48, 38, 30, 23, 17, 13, 10, 7, 5, 3, 2, 1, 0},
    {100, 88, 78, 68, 59, 50, 41, 33, 26, 20, 15, 11, 8, 6, 4, 3, 2, 1, 0},
    {100, 88, 78, 68, 59, 50, 42, 34, 27, 21, 16, 12, 9, 7, 5, 4, 3, 2, 1, 0},
    {100, 88, 78, 68, 59, 50, 42, 34, 27, 21, 17, 13, 10, 8, 6, 5, 4, 3, 2, 1, 0},
};

void ldm_sigmas_gits(float *out, const ldm_schedule *s, int n) {
    float grid_sigma[21];   // the row's sigmas, from sigma_max down to sigma_min
    int row = n >= 2 && n <= 20 ? n - 2 : 18, len = row + 3;
    for (int j = 0; j < len; j++)
        grid_sigma[j] = ldm_t_to_sigma(s, linspace_f32((float)(s->T - 1), 0.0f, 101,
                                                       100 - gits_grid[row][j]));
    if (n >= 2 && n <= 20) {
        for (int i = 0; i < n; i++) out[i] = grid_sigma[i];
    } else {   // np.interp of log sigma at n+1 evenly spaced positions over the 21 points
        for (int i = 0; i < n; i++) {
            double x = (double)i / n * (len - 1);
            int j = (int)x < len - 2 ? (int)x : len - 2;
            double w = x - j;
            out[i] = (float)exp((1 - w) * log(grid_sigma[j]) + w * log(grid_sigma[j + 1]));
        }
    }
    out[n] = 0;   // the last point, sigma_min, becomes 0: the final step denoises fully
}

void ldm_sigmas_smoothstep(float *out, const ldm_schedule *s, int n) {
    const float t_max = (float)(s->T - 1);
    if (n == 1) {
        out[0] = ldm_t_to_sigma(s, t_max);
        out[1] = 0;
        return;
    }
    for (int i = 0; i < n; i++) {   // float32 as the reference
        float u = 1.0f - (float)i / (float)n;
        float smooth = u * u * (3.0f - 2.0f * u);   // smoothstep: 0 -> 0, 1 -> 1, flat at both
        out[i] = ldm_t_to_sigma(s, roundf(smooth * t_max));
    }
    out[n] = 0;
}

// The regularised incomplete beta function I_x(a, b), the CDF of Beta(a, b):
// its continued fraction (evaluated by the modified Lentz method), on the side
// of x where it converges fast, x < (a+1)/(a+b+2), else by I_x(a,b) = 1 - I_{1-x}(b,a).
static double beta_cdf(double x, double a, double b) {
    if (x <= 0) return 0;
    if (x >= 1) return 1;
    if (x > (a + 1) / (a + b + 2)) return 1 - beta_cdf(1 - x, b, a);
    double front = exp(lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x)) / a;
    double f = 1, c = 1, d = 0;  // f = 1 / (1 + d_1 / (1 + d_2 / (1 + ...)))
    for (int i = 0; i <= 300; i++) {
        int m = i / 2;
        double num;
        if (i == 0) num = 1;
        else if (i % 2 == 0) num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m));
        else num = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1));
        d = 1 + num * d;
        if (fabs(d) < 1e-300) d = 1e-300;
        d = 1 / d;
        c = 1 + num / c;
        if (fabs(c) < 1e-300) c = 1e-300;
        double cd = c * d;
        f *= cd;
        if (fabs(1 - cd) < 1e-15) break;
    }
    return front * (f - 1);
}

// The inverse: the x with I_x(a, b) = p, by bisection (the CDF is monotone).
static double beta_ppf(double p, double a, double b) {
    if (p <= 0) return 0;
    if (p >= 1) return 1;
    double lo = 0, hi = 1;
    for (int i = 0; i < 100; i++) {
        double mid = (lo + hi) / 2;
        if (beta_cdf(mid, a, b) < p) lo = mid;
        else hi = mid;
    }
    return (lo + hi) / 2;
}

void ldm_sigmas_beta(float *out, int n, double sigma_min, double sigma_max, double alpha,
                     double beta) {
    for (int i = 0; i < n; i++) {  // in float64 as diffusers (scipy), stored float32
        double u = 1 - (n > 1 ? (double)i / (n - 1) : 0);
        out[i] = (float)(sigma_min + beta_ppf(u, alpha, beta) * (sigma_max - sigma_min));
    }
    out[n] = 0;
}

// ---------------------------------------------------------------------------
// forward process and parametrisations

void ldm_q_sample(float *xt, const float *x0, const float *noise, const int *t, int64_t B,
                  int64_t per, const ldm_schedule *s) {
    for (int64_t b = 0; b < B; b++) {
        double abar = s->alphas_cumprod[t[b]];
        float a = (float)sqrt(abar), c = (float)sqrt(1.0 - abar);
        for (int64_t i = 0; i < per; i++)
            xt[b * per + i] = a * x0[b * per + i] + c * noise[b * per + i];  // DDPM eq. 4
    }
}

void ldm_eps_from_v(float *eps, const float *v, const float *x, double abar, int64_t n) {
    double a = sqrt(abar), c = sqrt(1.0 - abar);
    for (int64_t i = 0; i < n; i++) eps[i] = (float)(a * v[i] + c * x[i]);
}

void ldm_x0_from_eps(float *x0, const float *eps, const float *x, double abar, int64_t n) {
    double a = sqrt(abar), c = sqrt(1.0 - abar);
    for (int64_t i = 0; i < n; i++) x0[i] = (float)((x[i] - c * eps[i]) / a);
}

void ldm_v_from_eps(float *v, const float *eps, const float *x0, double abar, int64_t n) {
    double a = sqrt(abar), c = sqrt(1.0 - abar);
    for (int64_t i = 0; i < n; i++) v[i] = (float)(a * eps[i] - c * x0[i]);
}
