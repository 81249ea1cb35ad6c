/*
 * samplers/sampler.c -- the shared model wrapper (CFG, eps / v prediction,
 * CompVisDenoiser / CompVisVDenoiser scalings), the helpers every sampler
 * file uses, the sampler table with its name parser, the CompVis and
 * diffusers conventions, and ldm_sample().
 *
 * Mirrors: k-diffusion external.DiscreteEpsDDPMDenoiser / DiscreteVDDPMDenoiser
 * (get_scalings, forward), CompVis DDIMSampler.p_sample_ddim's guidance
 * (e_u + s (e_c - e_u)) and predict_eps_from_z_and_v.
 */
#include "sampler.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"

// ---------------------------------------------------------------------------
// the model wrapper

int ldm_denoiser_init(ldm_denoiser *d) {
    if (!d->fn || !d->sched || d->B < 1 || d->per < 1)
        return ldm_error("denoiser: needs a model callback, a schedule, B >= 1 and per >= 1 "
                         "(found B=%lld per=%lld)", (long long)d->B, (long long)d->per);
    int64_t N = d->B * 2;  // room for guidance either way
    d->x_in = malloc((size_t)(N * d->per) * sizeof(float));
    d->out = malloc((size_t)(N * d->per) * sizeof(float));
    d->t = malloc((size_t)N * sizeof(float));
    d->uncond = malloc((size_t)(d->B * d->per) * sizeof(float));
    d->nfe = 0;
    if (!d->x_in || !d->out || !d->t || !d->uncond) {
        ldm_denoiser_free(d);
        return ldm_error("denoiser: out of memory for %lld x %lld floats", (long long)N,
                         (long long)d->per);
    }
    return LDM_OK;
}

void ldm_denoiser_free(ldm_denoiser *d) {
    free(d->x_in); free(d->out); free(d->t); free(d->uncond);
    d->x_in = d->out = d->t = d->uncond = NULL;
}

// The model on x_in/t (the caller writes the first B rows of x_in) with
// guidance: returns the guided output [B,per] (the cond rows of d->out,
// overwritten), and leaves the unconditional rows' raw output at d->out
// (the same pointer without guidance). NULL on a model failure.
static const float *run_model(ldm_denoiser *d, float tval) {
    int64_t B = d->B, per = d->per, N = d->cfg ? 2 * B : B;
    if (d->cfg) memcpy(d->x_in + B * per, d->x_in, (size_t)(B * per) * sizeof(float));
    for (int64_t k = 0; k < N; k++) d->t[k] = tval;
    d->nfe++;
    if (d->fn(d->out, d->x_in, d->t, N, d->ctx) != LDM_OK) return NULL;
    float *guided = d->out;
    if (d->cfg) {  // rows [uncond, cond]: out = u + s (c - u)   (Ho & Salimans 2022 eq. 6)
        float s = d->cfg_scale;
        guided = d->out + B * per;  // the cond rows become the guided ones
        for (int64_t i = 0; i < B * per; i++) guided[i] = d->out[i] + s * (guided[i] - d->out[i]);
    }
    return guided;
}

// eps [n] <- the network output `out` read as eps (v converted at timestep t)
static void out_to_eps(float *eps, const ldm_denoiser *d, const float *out, const float *x,
                       float t, int64_t n) {
    if (d->prediction == LDM_PRED_V) {
        int ti = (int)t;
        if (ti < 0) ti = 0;
        if (ti > d->sched->T - 1) ti = d->sched->T - 1;
        ldm_eps_from_v(eps, out, x, d->sched->alphas_cumprod[ti], n);
    } else {
        memcpy(eps, out, (size_t)n * sizeof(float));
    }
}

int ldm_denoiser_eps(ldm_denoiser *d, float *eps, const float *x, float t) {
    int64_t n = d->B * d->per;
    memcpy(d->x_in, x, (size_t)n * sizeof(float));
    const float *guided = run_model(d, t);
    if (!guided) return LDM_ERR;
    out_to_eps(eps, d, guided, x, t, n);
    if (d->cfg) out_to_eps(d->uncond, d, d->out, x, t, n);
    else memcpy(d->uncond, eps, (size_t)n * sizeof(float));
    return LDM_OK;
}

// denoised [n] <- the network output `out` at sigma through the
// CompVisDenoiser / CompVisVDenoiser scalings, float32 as k-diffusion
static void out_to_denoised(float *denoised, const ldm_denoiser *d, const float *out,
                            const float *x, float sigma, int64_t n) {
    if (d->prediction == LDM_PRED_V) {
        float c_skip = 1.0f / (sigma * sigma + 1.0f);
        float c_out = -sigma / sqrtf(sigma * sigma + 1.0f);
        for (int64_t i = 0; i < n; i++) denoised[i] = out[i] * c_out + x[i] * c_skip;
    } else {
        float c_out = -sigma;
        for (int64_t i = 0; i < n; i++) denoised[i] = x[i] + out[i] * c_out;
    }
}

int ldm_denoiser_denoised(ldm_denoiser *d, float *denoised, const float *x, float sigma) {
    int64_t n = d->B * d->per;
    float c_in = 1.0f / sqrtf(sigma * sigma + 1.0f);  // get_scalings
    for (int64_t i = 0; i < n; i++) d->x_in[i] = x[i] * c_in;
    const float *guided = run_model(d, ldm_sigma_to_t(d->sched, sigma));
    if (!guided) return LDM_ERR;
    out_to_denoised(denoised, d, guided, x, sigma, n);
    if (d->cfg) out_to_denoised(d->uncond, d, d->out, x, sigma, n);
    else memcpy(d->uncond, denoised, (size_t)n * sizeof(float));
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// helpers

void ldm_sampler_noise(ldm_sampler_ctx *c, float *noise) {
    ldm_rng_randn_batch(c->rng, c->per_sample_noise, noise, c->dn->B, c->dn->per);
}

void ldm_sampler_noise_sde(ldm_sampler_ctx *c, float *noise, float sigma, float sigma_next) {
    if (c->brownian) ldm_brownian_noise(c->brownian, noise, sigma, sigma_next);
    else ldm_sampler_noise(c, noise);
}

int ldm_sde_noise_parse(ldm_sde_noise *kind, const char *name) {
    if (name && (!strcmp(name, "per-step") || !strcmp(name, "per_step"))) *kind = LDM_SDE_NOISE_PER_STEP;
    else if (name && !strcmp(name, "brownian")) *kind = LDM_SDE_NOISE_BROWNIAN;
    else return ldm_error("SDE noise \"%s\": expected per-step or brownian", name ? name : "(null)");
    return LDM_OK;
}

float ldm_sampler_churn(ldm_sampler_ctx *c, int i, float *x, float *eps) {
    const float *sig = c->sigmas;
    int64_t n = c->dn->B * c->dn->per;
    float gamma = (c->s_tmin <= sig[i] && sig[i] <= c->s_tmax)
                      ? fminf(c->s_churn / c->n, (float)(M_SQRT2 - 1)) : 0.0f;
    ldm_sampler_noise(c, eps);  // drawn every step, as k-diffusion does
    float sigma_hat = sig[i] * (gamma + 1);
    if (gamma > 0) {
        float add = sqrtf(sigma_hat * sigma_hat - sig[i] * sig[i]);
        for (int64_t k = 0; k < n; k++) x[k] += eps[k] * c->s_noise * add;
    }
    return sigma_hat;
}

float *ldm_sampler_alloc(const ldm_sampler_ctx *c, int count) {
    size_t n = (size_t)count * (size_t)(c->dn->B * c->dn->per);
    float *p = malloc(n * sizeof(float));
    if (!p) ldm_error("sampler: out of memory for %zu floats", n);
    return p;
}

void ldm_ancestral_step(double *sigma_down, double *sigma_up, double from, double to, double eta) {
    if (eta == 0) { *sigma_down = to; *sigma_up = 0; return; }
    double up = eta * sqrt(to * to * (from * from - to * to) / (from * from));
    if (up > to) up = to;
    *sigma_up = up;
    *sigma_down = sqrt(to * to - up * up);
}

// ---------------------------------------------------------------------------
// the table

const ldm_sampler_info ldm_samplers[] = {
    {"ddpm", "DDPM", ldm_sample_ddpm, 0, 1.0f},
    {"ddim", "DDIM", ldm_sample_ddim, 0, 0.0f},
    {"plms", "PLMS", ldm_sample_plms, 0, 0.0f},
    {"lcm", "LCM", ldm_sample_lcm, 0, 0.0f},
    {"tcd", "TCD", ldm_sample_tcd, 0, 0.3f},
    {"euler", "Euler", ldm_sample_euler, 1, 0.0f},
    {"euler_a", "Euler a", ldm_sample_euler_a, 1, 1.0f},
    {"heun", "Heun", ldm_sample_heun, 1, 0.0f},
    {"dpm2", "DPM2", ldm_sample_dpm2, 1, 0.0f},
    {"dpm2_a", "DPM2 a", ldm_sample_dpm2_a, 1, 1.0f},
    {"lms", "LMS", ldm_sample_lms, 1, 0.0f},
    {"dpmpp_2s_a", "DPM++ 2S a", ldm_sample_dpmpp_2s_a, 1, 1.0f},
    {"dpmpp_2m", "DPM++ 2M", ldm_sample_dpmpp_2m, 1, 0.0f},
    {"dpmpp_sde", "DPM++ SDE", ldm_sample_dpmpp_sde, 1, 1.0f},
    {"dpmpp_2m_sde", "DPM++ 2M SDE", ldm_sample_dpmpp_2m_sde, 1, 1.0f},
    {"dpmpp_3m_sde", "DPM++ 3M SDE", ldm_sample_dpmpp_3m_sde, 1, 1.0f},
    {"dpmpp_3m", "DPM++ 3M", ldm_sample_dpmpp_3m_sde, 1, 0.0f},
    {"unipc", "UniPC", ldm_sample_unipc, 0, 0.0f},
    {"unipc_bh1", "UniPC BH1", ldm_sample_unipc_bh1, 0, 0.0f},
    {"deis", "DEIS", ldm_sample_deis, 0, 0.0f},
    {"ipndm", "iPNDM", ldm_sample_ipndm, 1, 0.0f},
    {"ipndm_v", "iPNDM V", ldm_sample_ipndm_v, 1, 0.0f},
    {"ddim_trailing", "DDIM Trailing", ldm_sample_ddim, 0, 0.0f},   // DDIM on "trailing" timesteps
    // DPM-Solver, RES, ER-SDE, CFG++ (docs/06-samplers.md, "More samplers")
    {"dpm_fast", "DPM fast", ldm_sample_dpm_fast, 1, 0.0f},
    {"dpm_adaptive", "DPM adaptive", ldm_sample_dpm_adaptive, 1, 0.0f},
    {"res_multistep", "RES multistep", ldm_sample_res_multistep, 1, 0.0f},
    {"er_sde", "ER-SDE", ldm_sample_er_sde, 1, 1.0f},
    {"euler_cfgpp", "Euler CFG++", ldm_sample_euler_cfgpp, 1, 0.0f},
    {"dpmpp_2m_cfgpp", "DPM++ 2M CFG++", ldm_sample_dpmpp_2m_cfgpp, 1, 0.0f},
};
const int ldm_sampler_count = (int)(sizeof ldm_samplers / sizeof ldm_samplers[0]);

// lower case, ' ' and '-' -> '_', "++" -> "pp", into out (size n)
static void normalise_name(char *out, size_t n, const char *in) {
    size_t k = 0;
    for (size_t i = 0; in[i] && k + 3 < n; i++) {
        char ch = in[i];
        if (ch == '+' && in[i + 1] == '+') { out[k++] = 'p'; out[k++] = 'p'; i++; continue; }
        if (ch == ' ' || ch == '-') ch = '_';
        out[k++] = (char)tolower((unsigned char)ch);
    }
    out[k] = 0;
}

static int ends_with(char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    if (a < b || strcmp(s + a - b, suffix) != 0) return 0;
    s[a - b] = 0;  // strip it
    return 1;
}

int ldm_sampler_parse(const ldm_sampler_info **info, ldm_sigma_kind *sigmas, const char *name) {
    char s[64];
    normalise_name(s, sizeof s, name ? name : "");
    *sigmas = LDM_SIGMAS_DEFAULT;
    if (ends_with(s, "_karras")) *sigmas = LDM_SIGMAS_KARRAS;
    else if (ends_with(s, "_exponential")) *sigmas = LDM_SIGMAS_EXPONENTIAL;
    else if (ends_with(s, "_sgm_uniform")) *sigmas = LDM_SIGMAS_SGM_UNIFORM;
    else if (ends_with(s, "_simple")) *sigmas = LDM_SIGMAS_SIMPLE;
    else if (ends_with(s, "_kl_optimal")) *sigmas = LDM_SIGMAS_KL_OPTIMAL;
    else if (ends_with(s, "_align_your_steps") || ends_with(s, "_ays")) *sigmas = LDM_SIGMAS_AYS;
    else if (ends_with(s, "_beta")) *sigmas = LDM_SIGMAS_BETA;
    else if (ends_with(s, "_gits")) *sigmas = LDM_SIGMAS_GITS;
    else if (ends_with(s, "_smoothstep")) *sigmas = LDM_SIGMAS_SMOOTHSTEP;
    else if (ends_with(s, "_normal")) *sigmas = LDM_SIGMAS_DEFAULT;
    const char *key = s;
    if (!strncmp(key, "k_", 2)) key += 2;  // "k_euler_a", "k_lms" (older CLI names)
    static const struct { const char *alias, *name; } aliases[] = {
        {"euler_ancestral", "euler_a"}, {"dpm_2", "dpm2"}, {"dpm_2_a", "dpm2_a"},
        {"dpm_2_ancestral", "dpm2_a"}, {"dpm2_ancestral", "dpm2_a"},
        {"dpmpp_2s_ancestral", "dpmpp_2s_a"}, {"pndm", "plms"},
        // ComfyUI's *_gpu variants draw their Brownian-tree noise on the GPU
        // (with --sde-noise brownian: --rng cuda draws the tree's normals so)
        {"dpmpp_sde_gpu", "dpmpp_sde"}, {"dpmpp_2m_sde_gpu", "dpmpp_2m_sde"},
        {"dpmpp_3m_sde_gpu", "dpmpp_3m_sde"},
        // ComfyUI's uni_pc is the bh1 variant, uni_pc_bh2 the bh2 one
        {"uni_pc", "unipc_bh1"}, {"uni_pc_bh2", "unipc"}, {"unipc_bh2", "unipc"},
        // A1111 "k_dpm_ad"; ComfyUI's CFG++ names
        {"dpm_ad", "dpm_adaptive"}, {"euler_cfg_pp", "euler_cfgpp"},
        {"dpmpp_2m_cfg_pp", "dpmpp_2m_cfgpp"},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcmp(key, aliases[i].alias)) key = aliases[i].name;
    for (int i = 0; i < ldm_sampler_count; i++) {
        if (strcmp(key, ldm_samplers[i].name) != 0) continue;
        if (*sigmas != LDM_SIGMAS_DEFAULT && !ldm_samplers[i].uses_sigmas)
            return ldm_error("sampler \"%s\": sigma schedules (Karras, exponential, AYS, ...) "
                             "apply only to the k-diffusion samplers (euler, heun, dpmpp_2m, ...), "
                             "not to %s",
                             name, ldm_samplers[i].label);
        *info = &ldm_samplers[i];
        return LDM_OK;
    }
    char list[512] = "";
    for (int i = 0; i < ldm_sampler_count; i++) {
        strncat(list, ldm_samplers[i].name, sizeof list - strlen(list) - 1);
        strncat(list, i + 1 < ldm_sampler_count ? ", " : "", sizeof list - strlen(list) - 1);
    }
    return ldm_error("unknown sampler \"%s\": expected one of %s (optionally with a sigma "
                     "schedule suffix: \" Karras\", \" Exponential\", \" SGM Uniform\", \" Simple\", "
                     "\" KL Optimal\", \" AYS\", \" Beta\", \" GITS\", \" Smoothstep\")",
                     name ? name : "(null)", list);
}

int ldm_sigma_kind_parse(ldm_sigma_kind *kind, const char *name) {
    static const struct { const char *name; ldm_sigma_kind kind; } names[] = {
        {"default", LDM_SIGMAS_DEFAULT}, {"normal", LDM_SIGMAS_DEFAULT},
        {"karras", LDM_SIGMAS_KARRAS}, {"exponential", LDM_SIGMAS_EXPONENTIAL},
        {"sgm_uniform", LDM_SIGMAS_SGM_UNIFORM}, {"simple", LDM_SIGMAS_SIMPLE},
        {"kl_optimal", LDM_SIGMAS_KL_OPTIMAL}, {"ays", LDM_SIGMAS_AYS},
        {"align_your_steps", LDM_SIGMAS_AYS}, {"beta", LDM_SIGMAS_BETA},
        {"gits", LDM_SIGMAS_GITS}, {"smoothstep", LDM_SIGMAS_SMOOTHSTEP},
    };
    char s[64];
    normalise_name(s, sizeof s, name ? name : "");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name)) { *kind = names[i].kind; return LDM_OK; }
    return ldm_error("sigma schedule \"%s\": expected default, normal, karras, exponential, "
                     "sgm_uniform, simple, kl_optimal, ays, beta, gits or smoothstep",
                     name ? name : "(null)");
}

static const char *const sigma_names[LDM_SIGMAS_COUNT][2] = {
    {"default", ""}, {"karras", " Karras"}, {"exponential", " Exponential"},
    {"sgm_uniform", " SGM Uniform"}, {"simple", " Simple"}, {"kl_optimal", " KL Optimal"},
    {"ays", " AYS"}, {"beta", " Beta"}, {"gits", " GITS"}, {"smoothstep", " Smoothstep"},
};
const char *ldm_sigma_kind_name(ldm_sigma_kind kind) {
    return kind >= 0 && kind < LDM_SIGMAS_COUNT ? sigma_names[kind][0] : "?";
}
const char *ldm_sigma_kind_label(ldm_sigma_kind kind) {
    return kind >= 0 && kind < LDM_SIGMAS_COUNT ? sigma_names[kind][1] : "";
}

void ldm_sigmas_make(float *sig, ldm_sigma_kind kind, const ldm_schedule *sch, int n) {
    double smin = sch->sigmas[0], smax = sch->sigmas[sch->T - 1];
    switch (kind) {
    case LDM_SIGMAS_KARRAS: ldm_sigmas_karras(sig, n, smin, smax, 7.0); break;
    case LDM_SIGMAS_EXPONENTIAL: ldm_sigmas_exponential(sig, n, smin, smax); break;
    case LDM_SIGMAS_SGM_UNIFORM: ldm_sigmas_sgm_uniform(sig, sch, n); break;
    case LDM_SIGMAS_SIMPLE: ldm_sigmas_simple(sig, sch, n); break;
    case LDM_SIGMAS_KL_OPTIMAL: ldm_sigmas_kl_optimal(sig, n, smin, smax); break;
    case LDM_SIGMAS_AYS: ldm_sigmas_ays(sig, n); break;
    case LDM_SIGMAS_BETA: ldm_sigmas_beta(sig, n, smin, smax, 0.6, 0.6); break;
    case LDM_SIGMAS_GITS: ldm_sigmas_gits(sig, sch, n); break;
    case LDM_SIGMAS_SMOOTHSTEP: ldm_sigmas_smoothstep(sig, sch, n); break;
    default: ldm_sigmas_default(sig, sch, n); break;
    }
}

// ---------------------------------------------------------------------------
// the conventions

const ldm_conventions LDM_CONVENTIONS_COMPVIS = {
    .spacing = LDM_SPACING_UNIFORM,  // make_ddim_timesteps("uniform"): range(0, T, T//n) + 1
    .steps_offset = 1,               // (only "leading" uses it)
    .noise_every_step = 1,           // p_sample_ddim: noise_like(x) * sigma_t, even sigma_t = 0
    .truncate = 1,                   // Image.fromarray(x.astype(np.uint8))
};
const ldm_conventions LDM_CONVENTIONS_DIFFUSERS = {
    .spacing = LDM_SPACING_LEADING,  // timestep_spacing "leading" + steps_offset 1 (SD config)
    .steps_offset = 1,
    .noise_every_step = 0,           // DDIMScheduler.step draws only when eta > 0
    .truncate = 0,                   // numpy_to_pil: (x * 255).round()
};

// ---------------------------------------------------------------------------
// the whole run

// The timestep spacing a discrete sampler walks: the conventions' one, except
// for ddim_trailing, whose name fixes it, and LCM and TCD, which sample from
// the 50 timesteps they were distilled on.
static ldm_spacing spacing_of(const ldm_sampler_settings *s) {
    if (s->sampler->fn == ldm_sample_lcm || s->sampler->fn == ldm_sample_tcd) return LDM_SPACING_LCM;
    if (!strcmp(s->sampler->name, "ddim_trailing")) return LDM_SPACING_TRAILING;
    return s->conv.spacing;
}

int ldm_sampler_steps(const ldm_sampler_settings *s, const ldm_schedule *sched) {
    int count = s->sampler->uses_sigmas ? s->steps
                                        : ldm_timesteps_count(sched, spacing_of(s), s->steps);
    if (count < 1 && !s->sampler->uses_sigmas) return LDM_ERR;   // the spacing said why
    if (count < 1)
        return ldm_error("sampler %s: steps must be >= 1, found %d", s->sampler->label, s->steps);
    return count;
}

int ldm_sample(float *x, const ldm_sampler_settings *s, const ldm_sample_run *run,
               ldm_denoiser *dn) {
    const ldm_schedule *sch = dn->sched;
    const ldm_sampler_info *info = s->sampler;
    const float *noise = run->noise, *init = run->init;
    const int64_t n = dn->B * dn->per;
    const int count = ldm_sampler_steps(s, sch), start = run->start_step;
    if (count < 0) return LDM_ERR;
    if (start < 0 || start >= count)
        return ldm_error("sampler %s: start step must be in [0, %d), found %d", info->label,
                         count, start);
    ldm_sampler_ctx c = {
        .dn = dn, .rng = run->rng, .per_sample_noise = run->per_sample_noise,
        .n = count - start, .eta = s->eta < 0 ? info->default_eta : s->eta,
        .s_churn = s->s_churn, .s_tmin = 0, .s_tmax = INFINITY, .s_noise = 1,
        .compvis = s->conv.noise_every_step,
        .callback = run->callback, .callback_ctx = run->callback_ctx, .steps = s->steps,
    };
    float *sig = NULL;
    int *ts = NULL;
    ldm_brownian bt = {0};
    if (info->uses_sigmas) {   // k-diffusion: sigmas [count+1], descending, last 0
        sig = malloc((size_t)(count + 1) * sizeof(float));
        if (!sig) return ldm_error("sampler: out of memory");
        ldm_sigmas_make(sig, s->sigma_kind, sch, count);
        for (int i = 0; i + 1 < count; i++)   // a zero-length step: multistep updates divide by it
            if (!(sig[i + 1] < sig[i])) {
                float at = sig[i];
                free(sig);
                return ldm_error("sampler %s: the %s sigma schedule repeats sigma %g at %d steps "
                                 "(steps %d and %d): a step of zero length; use fewer steps",
                                 info->label, ldm_sigma_kind_name(s->sigma_kind), at, count, i,
                                 i + 1);
            }
        c.sigmas = sig + start;
        if (s->sde_noise == LDM_SDE_NOISE_BROWNIAN) {
            // k-diffusion: the tree spans the run's sigmas, sigmas[sigmas > 0].min() to .max()
            float lo = sig[start], hi = sig[start];
            for (int i = start; i <= count; i++)
                if (sig[i] > 0) lo = sig[i] < lo ? sig[i] : lo, hi = sig[i] > hi ? sig[i] : hi;
            if (ldm_brownian_init(&bt, run->rng, run->per_sample_noise, dn->B, dn->per, lo,
                                  hi) != LDM_OK) {
                free(sig);
                return LDM_ERR;
            }
            c.brownian = &bt;
        }
        for (int64_t i = 0; i < n; i++)   // x = x0 + sigma n (txt2img: x0 = 0)
            x[i] = (init ? init[i] : 0.0f) + noise[i] * sig[start];
    } else {                   // DDPM/DDIM/PLMS: timesteps [count], descending
        ts = malloc((size_t)count * sizeof(int));
        int *tb = malloc((size_t)dn->B * sizeof(int));
        if (!ts || !tb) { free(ts); free(tb); return ldm_error("sampler: out of memory"); }
        ldm_timesteps(ts, sch, spacing_of(s), s->steps, s->conv.steps_offset);
        c.timesteps = ts + start;
        for (int64_t b = 0; b < dn->B; b++) tb[b] = ts[start];
        if (init) ldm_q_sample(x, init, noise, tb, dn->B, dn->per, sch);  // DDPM eq. 4
        else memcpy(x, noise, (size_t)n * sizeof(float));                // x_T = noise
        free(tb);
    }
    int rc = info->fn(x, &c);
    if (c.brownian) ldm_brownian_free(&bt);
    free(sig);
    free(ts);
    return rc;
}
