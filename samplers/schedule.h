/*
 * samplers/schedule.h -- the noise schedule and the forward process.
 *
 * DDPM (Ho et al. 2020) trains on T = 1000 noise levels. With betas b_t:
 *   alpha_t = 1 - b_t,   abar_t = prod_{s<=t} alpha_s           (DDPM eq. 4)
 *   q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)          (DDPM eq. 4)
 *   sigma_t = sqrt((1 - abar_t) / abar_t)   -- the same noise level in the
 *   "variance exploding" view of k-diffusion (Karras et al. 2022), where
 *   x_t / sqrt(abar_t) = x_0 + sigma_t * eps.
 *   SNR_t = abar_t / (1 - abar_t) = 1 / sigma_t^2.
 *
 * Mirrors: CompVis ldm DDPM.register_schedule / make_beta_schedule (betas in
 * float64, stored float32), diffusers DDPMScheduler betas (float32),
 * diffusers set_timesteps spacings, CompVis make_ddim_timesteps("uniform"),
 * k-diffusion DiscreteSchedule (sigma <-> t) and get_sigmas_karras /
 * get_sigmas_exponential.
 * Leaves out: trained (explicit) betas, rescale-to-zero-terminal-SNR,
 * quantized sigma_to_t, polyexponential and VP sigma schedules.
 */
#ifndef LDM_SCHEDULE_H
#define LDM_SCHEDULE_H

#include <stdint.h>

#define LDM_SCHEDULE_MAX_T 1000

typedef enum {
    LDM_BETA_SCALED_LINEAR = 0, // betas = linspace(sqrt(b0), sqrt(b1), T)^2 (SD; CompVis calls it "linear")
    LDM_BETA_LINEAR = 1,        // betas = linspace(b0, b1, T)               (DDPM paper)
    LDM_BETA_COSINE = 2,        // "squaredcos_cap_v2": Nichol & Dhariwal 2021 eq. 17, beta <= 0.999
} ldm_beta_kind;

typedef enum {
    LDM_SCHED_COMPVIS = 0,   // betas and cumprod in float64, abar stored float32 (CompVis, k-diffusion)
    LDM_SCHED_DIFFUSERS = 1, // betas in float32 as diffusers computes them (~2e-6 rel drift at t=999)
} ldm_sched_precision;

typedef struct ldm_schedule {
    int T;                                        // training timesteps (1000)
    float alphas_cumprod[LDM_SCHEDULE_MAX_T];     // [T] abar_t
    float sigmas[LDM_SCHEDULE_MAX_T];             // [T] sqrt((1-abar)/abar), increasing in t
    float log_sigmas[LDM_SCHEDULE_MAX_T];         // [T] log(sigmas), for sigma <-> t
} ldm_schedule;

// Fill the schedule. SD 1.x/2.x: SCALED_LINEAR, b0 = 0.00085, b1 = 0.012, T = 1000.
// 0 / LDM_ERR (T out of range, b0/b1 not in (0,1)).
int ldm_schedule_init(ldm_schedule *s, ldm_beta_kind kind, ldm_sched_precision prec, double b0,
                      double b1, int T);
// The SD default: scaled-linear 0.00085..0.012, T = 1000, CompVis precision.
void ldm_schedule_init_sd(ldm_schedule *s);
// Parse "scaled_linear" / "linear" / "cosine" (or "squaredcos_cap_v2").
int ldm_beta_kind_parse(ldm_beta_kind *kind, const char *name);

// abar at a fractional t (log-sigma interpolation, as the k-diffusion
// samplers see the model): abar = 1 / (1 + sigma(t)^2).
double ldm_schedule_abar(const ldm_schedule *s, double t);

// ---- sigma <-> t (k-diffusion DiscreteSchedule, float32 arithmetic as there)
// Fractional t of a sigma by linear interpolation of log sigma between the two
// neighbouring training levels (clamped to [0, T-1]).
float ldm_sigma_to_t(const ldm_schedule *s, float sigma);
// sigma of a fractional t: exp((1-w) log_sigma[floor t] + w log_sigma[ceil t]).
float ldm_t_to_sigma(const ldm_schedule *s, float t);

// ---- discrete timesteps for DDPM / DDIM / PLMS, in sampling order (descending)
typedef enum {
    LDM_SPACING_LEADING = 0,  // arange(n) * (T//n) + offset             (SD default, offset 1)
    LDM_SPACING_TRAILING = 1, // round(arange(T, 0, -T/n)) - 1
    LDM_SPACING_LINSPACE = 2, // round(linspace(0, T-1, n))
    LDM_SPACING_UNIFORM = 3,  // CompVis "uniform": range(0, T, T//n) + 1; may give MORE than n
    LDM_SPACING_LCM = 4,      // LCM / TCD: n of the 50 distillation timesteps (below)
} ldm_spacing;
int ldm_spacing_parse(ldm_spacing *sp, const char *name);
// Number of timesteps ldm_timesteps will write for n requested steps
// (n for the diffusers spacings, ceil(T / (T//n)) for CompVis uniform), or
// LDM_ERR when n is out of [1, T] (LCM: [1, LDM_LCM_ORIGINAL_STEPS]). Callers outside the schedule count through
// ldm_sampler_steps (samplers/sampler.h), which asks this for DDPM/DDIM/PLMS.
int ldm_timesteps_count(const ldm_schedule *s, ldm_spacing sp, int n);
// out[count] <- timesteps, descending. Returns count or LDM_ERR.
int ldm_timesteps(int *out, const ldm_schedule *s, ldm_spacing sp, int n, int steps_offset);
// The timesteps LCM and TCD distil on and sample from (Luo et al. 2023, sec. 4.2
// "skipping-step" k; diffusers LCMScheduler / TCDScheduler.set_timesteps with
// original_inference_steps N = 50): k = T/N, the N-point grid k*(1..N) - 1
// descending [999, 979, ..., 19], and of it the entries at indices
// floor(j N/n), j = 0..n-1. n in [1, N].
#define LDM_LCM_ORIGINAL_STEPS 50

// ---- sigma schedules for the k-diffusion samplers: out[n+1], last = 0
// k-diffusion get_sigmas(n): t = linspace(T-1, 0, n), sigma = t_to_sigma(t).
void ldm_sigmas_default(float *out, const ldm_schedule *s, int n);
// Karras et al. 2022 eq. 5: (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho.
void ldm_sigmas_karras(float *out, int n, double sigma_min, double sigma_max, double rho);
// exp(linspace(log smax, log smin, n)).
void ldm_sigmas_exponential(float *out, int n, double sigma_min, double sigma_max);
// ComfyUI "sgm_uniform": t = linspace(T-1, 0, n+1) without its last entry,
// sigma = t_to_sigma(t) (the default schedule stops at t = 0; this one one
// step of (T-1)/n above it).
void ldm_sigmas_sgm_uniform(float *out, const ldm_schedule *s, int n);
// ComfyUI "simple": the training sigmas at "trailing" timesteps,
// sigma[T-1 - floor(i T/n)].
void ldm_sigmas_simple(float *out, const ldm_schedule *s, int n);
// ComfyUI "kl_optimal" (Align Your Steps, Sabour et al. 2024, eq. for the
// KL-optimal schedule): tan((1-u) atan(smax) + u atan(smin)), u = i/(n-1).
void ldm_sigmas_kl_optimal(float *out, int n, double sigma_min, double sigma_max);
// "ays": Align Your Steps' 10-step list for SD 1.5 (diffusers
// AysSchedules["StableDiffusionSigmas"]); other n by log-linear interpolation
// of its 10 nonzero sigmas at n evenly spaced positions (ComfyUI's
// loglinear_interp), then 0. n = 10 is the published list.
void ldm_sigmas_ays(float *out, int n);
// "beta" (Lee et al. 2024, "Beta Sampling is All You Need"; diffusers
// use_beta_sigmas): smin + ppf(1 - i/(n-1)) (smax - smin), ppf the inverse
// CDF of the Beta(alpha, beta) distribution (diffusers: alpha = beta = 0.6).
void ldm_sigmas_beta(float *out, int n, double sigma_min, double sigma_max, double alpha,
                     double beta);
// "gits" (Chen et al. 2024, "On the Trajectory Regularity of ODE-based
// Diffusion Sampling", GITS): the paper's dynamic-programming search run on
// SD 1.5 for 2..20 steps, as ComfyUI's GITSScheduler carries it at its
// default coefficient 1.20: n+1 points of the grid t = linspace(T-1, 0, 101)
// from sigma_max to sigma_min, sigma = t_to_sigma(t), the last replaced by 0.
// Other n (1, > 20): the 20-step list interpolated log-linearly to n+1
// points (np.interp of log sigma, ComfyUI's loglinear_interp), the last
// replaced by 0.
void ldm_sigmas_gits(float *out, const ldm_schedule *s, int n);
// "smoothstep" (stable-diffusion.cpp's SmoothStepScheduler): for i < n,
// u = 1 - i/n, t = round(999 u^2 (3 - 2u)) (round half away from zero, in
// float32), sigma = t_to_sigma(t); n = 1: [sigma(T-1), 0]. The smoothstep
// u^2 (3 - 2u) is flat at both ends, so steps bunch near sigma_max and near
// sigma_min; large n repeats training levels there (steps of zero length).
void ldm_sigmas_smoothstep(float *out, const ldm_schedule *s, int n);

// ---- the forward process and the parametrisations
// x_t [B,per] = sqrt(abar_t[b]) x0 + sqrt(1 - abar_t[b]) noise        (DDPM eq. 4)
// t [B] integer timesteps in [0, T).
void ldm_q_sample(float *xt, const float *x0, const float *noise, const int *t, int64_t B,
                  int64_t per, const ldm_schedule *s);
// eps from a v-prediction: eps = sqrt(abar) v + sqrt(1-abar) x   (Salimans & Ho 2022, sec. 4)
void ldm_eps_from_v(float *eps, const float *v, const float *x, double abar, int64_t n);
// x0 from eps: (x - sqrt(1-abar) eps) / sqrt(abar)                 (DDIM eq. 12, "predicted x_0")
void ldm_x0_from_eps(float *x0, const float *eps, const float *x, double abar, int64_t n);
// v target: v = sqrt(abar) eps - sqrt(1-abar) x0                   (diffusers get_velocity)
void ldm_v_from_eps(float *v, const float *eps, const float *x0, double abar, int64_t n);

#endif
