/*
 * samplers/sampler.h -- the one interface every sampler implements, the
 * shared model wrapper (classifier-free guidance, eps / v prediction,
 * k-diffusion's CompVisDenoiser / CompVisVDenoiser scalings) and the table
 * of samplers by the names users know.
 *
 * All the arithmetic here is on host float arrays: a latent is [B,C,h,w]
 * (B samples of `per` = C*h*w floats, small). The network sits behind one
 * callback, ldm_model_fn, that the pipeline implements with the UNet:
 *
 *     x [B,per] --sampler--> x_in [N,per], t [N] --model_fn--> out [N,per]
 *     N = B without guidance, N = 2B with it: rows [uncond_0..B-1, cond_0..B-1]
 *     (the CompVis order: torch.cat([x] * 2), torch.cat([uc, c])).
 *
 * The sampling loop (one file per sampler, mirroring k-diffusion's sample_*
 * functions, diffusers' DDPM/DDIM schedulers and CompVis' DDIM/PLMS):
 *
 *     x = noise * sigmas[0]            (k-diffusion family; DDPM/DDIM/PLMS: x = noise)
 *     for i in 0..n-1:
 *         D  = denoiser(x, sigmas[i])  or  eps = denoiser(x, timesteps[i])
 *         x  = update(x, D / eps, noise from the rng)
 *         callback(i, x, D)
 *
 * Leaves out: img2img start-at-step helpers (pass a suffix of sigmas /
 * timesteps instead), learned variances, dynamic thresholding.
 */
#ifndef LDM_SAMPLER_H
#define LDM_SAMPLER_H

#include <stdint.h>

#include "brownian.h"
#include "rng.h"
#include "schedule.h"

// ---------------------------------------------------------------------------
// The model callback (implemented by the pipeline with the UNet)
//   out  [N,per]  the network's raw output: eps or v
//   x_in [N,per]  the network's input (already scaled by c_in where needed)
//   t    [N]      timestep per row (fractional for the k-diffusion family)
//   N             B, or 2B with guidance (rows [uncond..., cond...])
// Returns 0, or LDM_ERR after ldm_error() (the sampler stops and returns it).
typedef int (*ldm_model_fn)(float *out, const float *x_in, const float *t, int64_t N,
                            void *ctx);

#include "ldm/core/prediction.h"   // ldm_prediction: LDM_PRED_EPS | LDM_PRED_V

// The shared model wrapper. Fill the public fields, then ldm_denoiser_init.
typedef struct ldm_denoiser {
    ldm_model_fn fn;              // the network
    void *ctx;                    // passed to fn
    ldm_prediction prediction;    // what fn returns (SD1: eps, SD2 768-v: v)
    int cfg;                      // 1: call fn on 2B rows and combine u + s (c - u)
    float cfg_scale;              // s (7.5 SD1 default)
    const ldm_schedule *sched;    // abar and sigma <-> t
    int64_t B, per;               // batch, floats per sample (C*h*w)
    // scratch, owned (ldm_denoiser_init / ldm_denoiser_free)
    float *x_in;                  // [N,per]
    float *out;                   // [N,per]
    float *t;                     // [N]
    float *uncond;                // [B,per] the unconditional prediction of the last call, in
                                  // the form that call returned (eps or denoised); a copy of
                                  // the result when cfg is off. CFG++ renoises with it.
    int64_t nfe;                  // model evaluations so far (one per fn call)
} ldm_denoiser;

int ldm_denoiser_init(ldm_denoiser *d);   // allocates scratch; 0 / LDM_ERR
void ldm_denoiser_free(ldm_denoiser *d);

// eps [B,per] = the (guided) noise prediction at integer-valued timestep t
// for x [B,per] (DDPM / DDIM / PLMS view; the input is not scaled).
// v is converted: eps = sqrt(abar_t) v + sqrt(1 - abar_t) x.
int ldm_denoiser_eps(ldm_denoiser *d, float *eps, const float *x, float t);

// denoised [B,per] = D(x; sigma) (k-diffusion view, x = x0 + sigma n):
//   c_in = 1/sqrt(sigma^2+1), t = sigma_to_t(sigma), out = fn(c_in x, t)
//   eps: D = x - sigma out                              (CompVisDenoiser)
//   v:   D = x/(sigma^2+1) - sigma/sqrt(sigma^2+1) out  (CompVisVDenoiser)
int ldm_denoiser_denoised(ldm_denoiser *d, float *denoised, const float *x, float sigma);

// ---------------------------------------------------------------------------
// One sampler run

// Called after step i with x [B,per] after the step and the step's
// prediction of x_0 (denoised / pred_x0) [B,per]. The callback may change x:
// the next step starts from it (inpainting blends the kept region back in).
typedef void (*ldm_step_fn)(void *ctx, int i, float *x, const float *denoised);

// What a sampler file sees: the values of one run, resolved by ldm_sample
// from the settings (eta's default applied, the steps turned into sigmas or
// timesteps from the start step on).
typedef struct ldm_sampler_ctx {
    ldm_denoiser *dn;             // the model wrapper (gives B and per)
    ldm_rng *rng;                 // noise: rng[0], or rng[0..B-1] when per_sample_noise
    int per_sample_noise;         // 1: sample b draws from rng[b] (diffusers generator list)
    int n;                        // number of steps
    const float *sigmas;          // [n+1] k-diffusion family, descending, last 0
    const int *timesteps;         // [n] DDPM / DDIM / PLMS, descending
    float eta;                    // ancestral / DDIM noise amount (DDIM 0, ancestral 1)
    float s_churn, s_tmin, s_tmax, s_noise; // Karras churn (Euler, Heun, DPM2), default 0,0,inf,1
    int compvis;                  // DDIM/PLMS: CompVis noise draws (every step, even at eta 0):
                                  // ldm_conventions.noise_every_step
    int set_alpha_to_one;         // DDIM/PLMS: abar before t=0 is 1 (else abar_0, the SD default)
    ldm_step_fn callback;         // optional
    void *callback_ctx;
    int steps;                    // the steps asked for (ldm_sampler_settings.steps; 0: unknown):
                                  // diffusers' DDIM steps from t to t - T/steps (ddim.c)
    ldm_brownian *brownian;       // SDE samplers' noise: a Brownian path (--sde-noise brownian),
                                  // NULL: per-step draws from rng (ldm_sampler_noise_sde)
} ldm_sampler_ctx;

// Every sampler: x [B,per] in: the start (k-diffusion: noise * sigmas[0];
// DDPM/DDIM/PLMS: noise), out: the final latent. 0 / LDM_ERR.
typedef int (*ldm_sampler_fn)(float *x, ldm_sampler_ctx *c);

int ldm_sample_ddpm(float *x, ldm_sampler_ctx *c);         // samplers/ddpm.c
int ldm_sample_ddim(float *x, ldm_sampler_ctx *c);         // samplers/ddim.c
int ldm_sample_plms(float *x, ldm_sampler_ctx *c);         // samplers/plms.c
int ldm_sample_lcm(float *x, ldm_sampler_ctx *c);          // samplers/lcm.c (timesteps: LDM_SPACING_LCM)
int ldm_sample_tcd(float *x, ldm_sampler_ctx *c);          // samplers/tcd.c (eta = TCD's gamma)
int ldm_sample_euler(float *x, ldm_sampler_ctx *c);        // samplers/euler.c
int ldm_sample_euler_a(float *x, ldm_sampler_ctx *c);      // samplers/euler_a.c
int ldm_sample_heun(float *x, ldm_sampler_ctx *c);         // samplers/heun.c
int ldm_sample_dpm2(float *x, ldm_sampler_ctx *c);         // samplers/dpm2.c
int ldm_sample_dpm2_a(float *x, ldm_sampler_ctx *c);       // samplers/dpm2_a.c
int ldm_sample_lms(float *x, ldm_sampler_ctx *c);          // samplers/lms.c
int ldm_sample_dpmpp_2s_a(float *x, ldm_sampler_ctx *c);   // samplers/dpmpp_2s_a.c
int ldm_sample_dpmpp_2m(float *x, ldm_sampler_ctx *c);     // samplers/dpmpp_2m.c
int ldm_sample_dpmpp_sde(float *x, ldm_sampler_ctx *c);    // samplers/dpmpp_sde.c
int ldm_sample_dpmpp_2m_sde(float *x, ldm_sampler_ctx *c); // samplers/dpmpp_2m_sde.c
int ldm_sample_dpmpp_3m_sde(float *x, ldm_sampler_ctx *c); // samplers/dpmpp_3m_sde.c (eta 0: DPM++ 3M)
int ldm_sample_unipc(float *x, ldm_sampler_ctx *c);        // samplers/unipc.c (B(h) = "bh2")
int ldm_sample_unipc_bh1(float *x, ldm_sampler_ctx *c);    // samplers/unipc.c (B(h) = "bh1")
int ldm_sample_deis(float *x, ldm_sampler_ctx *c);         // samplers/deis.c
int ldm_sample_ipndm(float *x, ldm_sampler_ctx *c);        // samplers/ipndm.c
int ldm_sample_ipndm_v(float *x, ldm_sampler_ctx *c);      // samplers/ipndm.c (variable step)
int ldm_sample_dpm_fast(float *x, ldm_sampler_ctx *c);     // samplers/dpm_solver.c (n = model evaluations)
int ldm_sample_dpm_adaptive(float *x, ldm_sampler_ctx *c); // samplers/dpm_solver.c (steps: error control)
int ldm_sample_res_multistep(float *x, ldm_sampler_ctx *c); // samplers/res_multistep.c
int ldm_sample_er_sde(float *x, ldm_sampler_ctx *c);       // samplers/er_sde.c
int ldm_sample_euler_cfgpp(float *x, ldm_sampler_ctx *c);  // samplers/euler_cfgpp.c (guidance 0..1)
int ldm_sample_dpmpp_2m_cfgpp(float *x, ldm_sampler_ctx *c); // samplers/dpmpp_2m_cfgpp.c (guidance 0..1)

// ---------------------------------------------------------------------------
// Helpers the sampler files share (samplers/sampler.c)

// noise [B,per] <- the next draw, as torch.randn_like(x) on the run's generator(s).
void ldm_sampler_noise(ldm_sampler_ctx *c, float *noise);
// noise [B,per] <- the SDE samplers' noise for a step from sigma to sigma_next:
// the Brownian increment (W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma|
// of c->brownian (k-diffusion's BrownianTreeNoiseSampler: brownian.h), or,
// without one, the next draw (ldm_sampler_noise).
void ldm_sampler_noise_sde(ldm_sampler_ctx *c, float *noise, float sigma, float sigma_next);
// Karras et al. 2022 Algorithm 2 "churn" at step i (Euler, Heun, DPM2):
// gamma = min(s_churn/n, sqrt2 - 1) inside [s_tmin, s_tmax]; draws noise [B,per]
// into eps every step (as k-diffusion does, even when gamma = 0), adds
// eps * s_noise * sqrt(sigma_hat^2 - sigma_i^2) to x, returns sigma_hat =
// sigma_i (gamma + 1).
float ldm_sampler_churn(ldm_sampler_ctx *c, int i, float *x, float *eps);
// malloc'ed [count*B*per] floats (NULL + ldm_error on failure)
float *ldm_sampler_alloc(const ldm_sampler_ctx *c, int count);
// Ancestral step split (k-diffusion get_ancestral_step): sigma_up =
// min(to, eta sqrt(to^2 (from^2 - to^2) / from^2)), sigma_down = sqrt(to^2 - up^2).
void ldm_ancestral_step(double *sigma_down, double *sigma_up, double from, double to, double eta);

// ---------------------------------------------------------------------------
// The table: names as users know them

// The sigma schedules of the k-diffusion family (samplers/schedule.h has each
// formula); docs/06-samplers.md says which tool each follows.
typedef enum {
    LDM_SIGMAS_DEFAULT = 0,      // k-diffusion get_sigmas: linspace(T-1, 0, n) in t ("normal")
    LDM_SIGMAS_KARRAS = 1,       // Karras et al. 2022 eq. 5, rho 7
    LDM_SIGMAS_EXPONENTIAL = 2,  // even in log sigma
    LDM_SIGMAS_SGM_UNIFORM = 3,  // linspace(T-1, 0, n+1)[:-1] in t
    LDM_SIGMAS_SIMPLE = 4,       // training sigmas at trailing timesteps
    LDM_SIGMAS_KL_OPTIMAL = 5,   // even in atan(sigma)
    LDM_SIGMAS_AYS = 6,          // Align Your Steps SD 1.5, log-linear to n
    LDM_SIGMAS_BETA = 7,         // Beta(0.6, 0.6) quantiles between sigma_max and sigma_min
    LDM_SIGMAS_GITS = 8,         // GITS SD 1.5 (Chen et al. 2024), log-linear to n
    LDM_SIGMAS_SMOOTHSTEP = 9,   // t = round(999 smoothstep(1 - i/n)) (stable-diffusion.cpp)
} ldm_sigma_kind;
#define LDM_SIGMAS_COUNT 10      // kinds 0 .. LDM_SIGMAS_COUNT-1

// sigmas [n+1] <- the schedule `kind` for n steps on s (last 0).
void ldm_sigmas_make(float *sigmas, ldm_sigma_kind kind, const ldm_schedule *s, int n);
// "karras", "exponential", "default" / "normal", "sgm_uniform", "simple",
// "kl_optimal", "ays" / "align_your_steps", "beta", "gits", "smoothstep"
// (case-insensitive; ' ', '-', '_' alike). 0 / LDM_ERR.
int ldm_sigma_kind_parse(ldm_sigma_kind *kind, const char *name);
// The name of a kind as ldm_sigma_kind_parse reads it ("karras"), and as
// the sampler-name suffix A1111 labels use (" Karras"; "" for the default).
const char *ldm_sigma_kind_name(ldm_sigma_kind kind);
const char *ldm_sigma_kind_label(ldm_sigma_kind kind);

typedef struct ldm_sampler_info {
    const char *name;      // "euler_a"
    const char *label;     // "Euler a"
    ldm_sampler_fn fn;
    int uses_sigmas;       // 1: k-diffusion family (sigmas); 0: discrete timesteps
    float default_eta;     // 1 for the ancestral / SDE samplers, 0 otherwise
} ldm_sampler_info;

extern const ldm_sampler_info ldm_samplers[];
extern const int ldm_sampler_count;

// Parse a user's sampler name: "euler_a", "Euler a", "k_euler_ancestral",
// "dpmpp_2m", "DPM++ 2M Karras", "dpmpp_2m_karras", "DPM++ SDE Exponential".
// Case-insensitive; spaces, '-' and '_' are equivalent. A suffix selects the
// sigma schedule: " Karras", " Exponential", " SGM Uniform", " Simple",
// " KL Optimal", " AYS" / " Align Your Steps", " Beta", " GITS", " Smoothstep",
// " Normal". 0 / LDM_ERR (lists names).
int ldm_sampler_parse(const ldm_sampler_info **info, ldm_sigma_kind *sigmas, const char *name);

// ---------------------------------------------------------------------------
// Conventions: CompVis (the paper's scripts) and diffusers run the same method
// with a few different small choices. Each changes the pixels, not the method;
// one preset sets them all, and a caller may still change a field afterwards
// (`sd txt2img --schedule leading` changes the spacing of the CompVis preset).

typedef struct ldm_conventions {
    ldm_spacing spacing;          // DDPM/DDIM/PLMS timesteps: CompVis "uniform", diffusers "leading"
    int steps_offset;             // added to "leading" timesteps (SD's scheduler config: 1)
    int noise_every_step;         // DDIM/PLMS draw noise every step even at eta 0 (CompVis):
                                  // the same image alone, but it moves the generator
    int truncate;                 // pixels to uint8 by truncation (CompVis) or rounding
                                  // (diffusers); used by the pipeline's decode
} ldm_conventions;

extern const ldm_conventions LDM_CONVENTIONS_COMPVIS;    // uniform, offset 1, draws, truncate
extern const ldm_conventions LDM_CONVENTIONS_DIFFUSERS;  // leading, offset 1, no draws, round

// ---------------------------------------------------------------------------
// The whole run in one call (what the pipeline uses)

// The noise of the SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde):
typedef enum {
    LDM_SDE_NOISE_PER_STEP = 0,   // a fresh draw from the run's generator per step (default)
    LDM_SDE_NOISE_BROWNIAN = 1,   // increments of one Brownian path per seed (brownian.h): k-diffusion's
                                  // BrownianTreeNoiseSampler (torchsde), seeded with the run's seed
} ldm_sde_noise;
// "per-step" / "brownian". 0 / LDM_ERR.
int ldm_sde_noise_parse(ldm_sde_noise *kind, const char *name);

// What the user chose: the one settings struct, from the command line to
// ldm_sample (the pipeline holds it in ldm_generate_params.sampling).
typedef struct ldm_sampler_settings {
    const ldm_sampler_info *sampler;  // the update rule (the table above)
    ldm_sigma_kind sigma_kind;        // k-diffusion family: default / Karras / exponential sigmas
    int steps;                        // requested steps (ldm_sampler_steps: how many the schedule holds)
    float eta;                        // noise amount; < 0: the sampler's default_eta
    float s_churn;                    // Euler/Heun/DPM2 churn (Karras Algorithm 2), 0 = off
    ldm_conventions conv;             // spacing, steps_offset, CompVis noise draws, uint8 rounding
    ldm_sde_noise sde_noise;          // the SDE samplers' noise: per-step draws or a Brownian path
} ldm_sampler_settings;

// The number of schedule entries the sampler walks for s->steps: s->steps for
// the k-diffusion family (sigmas), ldm_timesteps_count() for DDPM/DDIM/PLMS
// (CompVis "uniform" may hold more than asked). The one place steps are
// counted: ldm_sample and img2img's strength both use it. >= 1, or LDM_ERR.
int ldm_sampler_steps(const ldm_sampler_settings *s, const ldm_schedule *sched);

// One call's inputs besides the settings: where it starts and who watches.
typedef struct ldm_sample_run {
    const float *noise;           // [B,per] ~ N(0,I), drawn by the caller (ldm_rng_randn_batch)
    const float *init;            // img2img: the clean latent x0 [B,per]; NULL: txt2img
    int start_step;               // img2img: first schedule entry to run; txt2img: 0
    ldm_rng *rng;                 // the sampler's draws: rng[0], or rng[0..B-1] when per_sample_noise
    int per_sample_noise;         // 1: sample b draws from rng[b] (diffusers generator list)
    ldm_step_fn callback;         // optional, after every step
    void *callback_ctx;
} ldm_sample_run;

// x [B,per] out <- the sampled latent. txt2img: start_step 0, init NULL, the
// start is noise * sigmas[0] (k-diffusion) or noise (DDPM/DDIM/PLMS).
// img2img (strength s of n steps): start_step = count - int(s n); the start is
// init + noise * sigmas[start] (k-diffusion) or q_sample(init, noise,
// timesteps[start]) (DDPM eq. 4), and the run takes the remaining steps, as
// diffusers' img2img pipelines do. 0 / LDM_ERR.
int ldm_sample(float *x, const ldm_sampler_settings *s, const ldm_sample_run *run,
               ldm_denoiser *dn);

#endif
