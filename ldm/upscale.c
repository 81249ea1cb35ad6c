/*
 * ldm/upscale.c -- the x4 upscaler (see upscale.h): loading a
 * StableDiffusionUpscalePipeline folder, then one upscale as the stages of
 * the text-to-image pipeline with the low-res image added:
 *
 *   1. condition      prompt, negative -> context [2B,77,D] (ldm/pipeline.h)
 *   2. low-res image  x [1,3,h,w] in [-1,1], noised to noise_level by the
 *                     low-res schedule (the generator's first draw)
 *   3. sample         z_T [B,4,h,w] (second draw) -> z_0, the UNet seeing
 *                     cat(z_t, x_n) [N,7,h,w] and the class label noise_level
 *   4. decode         D(z_0 / 0.08333) -> [B,3,4h,4w] -> uint8 RGB
 *
 * Order of this file: 1. configs beside the components (schedules, the
 * noise-level limit), 2. loading, 3. the UNet behind the sampler, 4. upscale.
 */
#include "ldm/upscale.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/dump.h"
#include "ldm/io/fs.h"
#include "ldm/io/image.h"
#include "ldm/io/json.h"
#include "tokenizer/bpe.h"

// ---------------------------------------------------------------------------
// 1. The configs beside the components

// <dir>/<file> as a JSON object (NULL: absent -> *absent = 1, or an error).
static cJSON *read_json(const char *dir, const char *file, char *path, size_t size, int *absent) {
    snprintf(path, size, "%s/%s", dir, file);
    *absent = !ldm_is_file(path);
    if (*absent) return NULL;
    char *text = ldm_read_text(path, LDM_MAX_CONFIG_BYTES);
    if (!text) return NULL;
    cJSON *o = ldm_json_parse_object(text, path);
    free(text);
    return o;
}

// A diffusers scheduler_config.json -> the betas of its training schedule
// (beta_schedule, beta_start, beta_end, num_train_timesteps), with the given
// defaults when the file or a field is absent. float32 betas, as diffusers.
static int read_schedule(ldm_schedule *s, const char *dir, const char *file, const char *kind_def,
                         float b0_def, float b1_def) {
    char path[4096 + 64];
    int absent;
    cJSON *o = read_json(dir, file, path, sizeof path, &absent);
    if (!o && !absent) return LDM_ERR;
    const char *kind_name = NULL;
    float b0 = b0_def, b1 = b1_def;
    int T = 1000, rc = LDM_ERR;
    ldm_beta_kind kind;
    if (o && (ldm_json_string(o, "beta_schedule", &kind_name, path) ||
              ldm_json_float(o, "beta_start", b0_def, &b0, path) ||
              ldm_json_float(o, "beta_end", b1_def, &b1, path) ||
              ldm_json_int(o, "num_train_timesteps", 1000, &T, path)))
        goto done;
    if (ldm_beta_kind_parse(&kind, kind_name ? kind_name : kind_def) != LDM_OK ||
        ldm_schedule_init(s, kind, LDM_SCHED_DIFFUSERS, b0, b1, T) != LDM_OK) {
        ldm_error("%s: %s", absent ? file : path, ldm_last_error());
        goto done;
    }
    rc = LDM_OK;
done:
    cJSON_Delete(o);
    return rc;
}

// The upscaler's configs: scheduler/ (the sampler's schedule; diffusers'
// DDIM defaults), low_res_scheduler/ (the low-res image's; the x4 model's
// values when absent: CompVis "linear" 1e-4..0.02 = scaled_linear) and
// model_index.json's max_noise_level (350).
static int read_configs(ldm_upscaler *u, const char *dir) {
    if (read_schedule(&u->p.sched, dir, "scheduler/scheduler_config.json", "linear", 0.0001f,
                      0.02f) ||
        read_schedule(&u->low_res_sched, dir, "low_res_scheduler/scheduler_config.json",
                      "scaled_linear", 0.0001f, 0.02f))
        return LDM_ERR;
    char path[4096 + 64];
    int absent;
    cJSON *o = read_json(dir, "model_index.json", path, sizeof path, &absent);
    if (!o && !absent) return LDM_ERR;
    u->max_noise_level = 350;
    int rc = o ? ldm_json_int(o, "max_noise_level", 350, &u->max_noise_level, path) : LDM_OK;
    cJSON_Delete(o);
    if (rc == LDM_OK && (u->max_noise_level < 0 || u->max_noise_level >= u->low_res_sched.T))
        rc = ldm_error("%s: max_noise_level %d outside the low-res schedule's [0, %d)", path,
                       u->max_noise_level, u->low_res_sched.T);
    return rc;
}

// ---------------------------------------------------------------------------
// 2. Loading

// Is this an upscaler? Its UNet takes the latent plus the image channels and
// knows the noise level through a class embedding. 0 / LDM_ERR naming what it is.
static int check_upscaler(ldm_upscaler *u, const char *dir) {
    const ldm_model *m = &u->p.model;
    if (!m->has_unet || !m->has_text || !m->has_vae)
        return ldm_error("%s: the upscaler needs a UNet, a text encoder and a VAE; found%s%s%s",
                         dir, m->has_unet ? " unet" : "", m->has_text ? " text_encoder" : "",
                         m->has_vae ? " vae" : "");
    const int Z = m->vae.latent_channels, cin = m->unet.in_channels;
    if (m->layout != LDM_LAYOUT_DIFFUSERS || cin == Z || m->unet.num_class_embeds < 1)
        return ldm_error("%s: not an x4 upscaler (its UNet takes %d channels%s): this is a "
                         "text-to-image model -- use `sd txt2img` / `sd img2img`", dir, cin,
                         m->unet.num_class_embeds < 1 ? " and has no noise-level class embedding"
                                                      : "");
    if (cin != Z + 3 || m->unet.out_channels != Z)
        return ldm_error("%s: the UNet takes %d and returns %d channels: the x4 upscaler takes "
                         "%d latent + 3 image channels and returns %d", dir, cin,
                         m->unet.out_channels, Z, Z);
    if (m->clip.hidden_size != m->unet.cross_attention_dim)
        return ldm_error("%s: the text encoder width %d differs from the UNet's "
                         "cross_attention_dim %d", dir, m->clip.hidden_size,
                         m->unet.cross_attention_dim);
    u->image_channels = cin - Z;
    return LDM_OK;
}

int ldm_upscaler_open(ldm_upscaler *u, const char *dir, const ldm_pipeline_options *o) {
    memset(u, 0, sizeof *u);
    ldm_pipeline *p = &u->p;
    p->ops = o->ops ? o->ops : ldm_backend_default();
    if (!p->ops) return LDM_ERR;
    p->verbose = o->verbose;
    ldm_model_options mo = {p->ops, o->prediction, NULL};
    if (!ldm_is_dir(dir))
        return ldm_error("%s: the x4 upscaler is read from a diffusers folder "
                         "(StableDiffusionUpscalePipeline: unet/, vae/, text_encoder/, "
                         "scheduler/, low_res_scheduler/)", dir);
    if (ldm_model_open(&p->model, dir, &mo) != LDM_OK) return LDM_ERR;
    ldm_model_set_residency(&p->model, o->weights, o->low_memory);
    ldm_model *m = &p->model;
    if (check_upscaler(u, dir) || read_configs(u, dir)) goto fail;
    const char *vocab = o->vocab ? o->vocab : m->tokenizer_dir ? m->tokenizer_dir : o->vocab_default;
    if (ldm_tokenizer_load(&p->tok, vocab) != LDM_OK) goto fail;
    if (p->verbose) fprintf(stderr, "loading text encoder, unet, vae\n");
    if (ldm_clip_load(&p->clip, &m->clip_w, &m->clip) != LDM_OK) goto fail;
    if (ldm_unet_load(&p->unet, &m->unet, &m->unet_w) != LDM_OK) goto fail;
    if (ldm_vae_load(&p->vae, &m->vae, &m->vae_w, LDM_VAE_DECODER) != LDM_OK) goto fail;
    p->factor = 1 << (p->vae.cfg.n_levels - 1);   // 4: three VAE levels
    p->latent_channels = p->vae.cfg.latent_channels;
    return LDM_OK;
fail:
    ldm_upscaler_close(u);   // frees what was loaded (zeroed parts are no-ops)
    return LDM_ERR;
}

void ldm_upscaler_close(ldm_upscaler *u) {
    ldm_pipeline_close(&u->p);
    memset(u, 0, sizeof *u);
}

// ---------------------------------------------------------------------------
// 3. What one upscale holds, and the UNet behind the sampler

typedef struct upscale_run {
    ldm_upscaler *u;
    const ldm_upscale_params *g;
    int64_t B, C, Ci, h, w, per;  // latent [B,C,h,w], per = C*h*w; Ci image channels
    int cfg;                      // guidance: context rows [u x B, c x B]
    ldm_tensor context;           // [N,77,D]
    float *low;                   // the noised low-res image x_n [Ci,h,w]
    float *noise, *z;             // z_T and the sampled z_0 [B,per]
    int step, run_steps;
} upscale_run;

// x_in [N,per] latents -> UNet(cat(x_in, x_n), t, noise_level, context) [N,per].
static int unet_fn(float *out, const float *x_in, const float *t, int64_t N, void *vctx) {
    upscale_run *r = vctx;
    ldm_pipeline *p = &r->u->p;
    const int64_t hw = r->h * r->w, cin = r->C + r->Ci;
    char prefix[32];
    snprintf(prefix, sizeof prefix, "step%03d/", r->step);
    ldm_dump_set_prefix(prefix);
    ldm_tensor x = ldm_tensor_new(p->ops, LDM_SHAPE(N, cin, r->h, r->w));
    ldm_tensor y = ldm_tensor_new(p->ops, LDM_SHAPE(N, r->C, r->h, r->w));
    float *host = malloc((size_t)(N * cin * hw) * sizeof *host);
    int *labels = malloc((size_t)N * sizeof *labels);
    int rc = LDM_ERR;
    if (!x.data || !y.data || !host || !labels) {
        ldm_error("upscale: out of memory");
        goto done;
    }
    for (int64_t n = 0; n < N; n++) {   // row n: [z_t (C channels) | x_n (Ci channels)]
        memcpy(host + n * cin * hw, x_in + n * r->per, (size_t)r->per * sizeof *host);
        memcpy(host + n * cin * hw + r->per, r->low, (size_t)(r->Ci * hw) * sizeof *host);
        labels[n] = r->g->noise_level;
    }
    ldm_tensor_from_host(&x, host);
    ldm_dump(&x, "unet_in");
    if (ldm_unet_forward_class(&y, &p->unet, &x, t, labels, &r->context) != LDM_OK) goto done;
    ldm_tensor_to_host(out, &y);
    ldm_dump(&y, "unet_out");
    rc = LDM_OK;
done:
    ldm_tensor_free(&x);
    ldm_tensor_free(&y);
    free(host);
    free(labels);
    ldm_dump_set_prefix(NULL);
    return rc;
}

static void step_fn(void *vctx, int i, float *x, const float *denoised) {
    upscale_run *r = vctx;
    ldm_dump_host(x, LDM_SHAPE(r->B, r->C, r->h, r->w), "step%03d/latent", i);
    if (r->g->progress) r->g->progress(r->g->progress_ctx, "sample", i + 1, r->run_steps, 0);
    r->step = i + 1;
}

// ---------------------------------------------------------------------------
// 4. Upscale

// The first 77 rows of a context [1,77k,D] -> dst [77,D] on the host. 0 / LDM_ERR.
static int first_chunk(float *dst, const ldm_tensor *ctx) {
    float *all = malloc((size_t)ctx->numel * sizeof *all);
    if (!all) return ldm_error("upscale: out of memory");
    ldm_tensor_to_host(all, ctx);
    memcpy(dst, all, (size_t)(LDM_CONTEXT * ctx->shape[2]) * sizeof *dst);
    free(all);
    return LDM_OK;
}

// Stage 1: context rows [u x B, c x B] (or [c x B]), each the first 77-token
// chunk of its prompt (diffusers truncates the prompt to 77 tokens).
static int condition(upscale_run *r) {
    ldm_pipeline *p = &r->u->p;
    const ldm_upscale_params *g = r->g;
    const int64_t T = LDM_CONTEXT, D = p->model.clip.hidden_size, N = r->cfg ? 2 * r->B : r->B;
    ldm_tensor c = {0}, un = {0};
    float *zc = malloc((size_t)(T * D) * sizeof *zc), *zu = malloc((size_t)(T * D) * sizeof *zu);
    float *rows = malloc((size_t)(N * T * D) * sizeof *rows);
    int rc = LDM_ERR;
    if (!zc || !zu || !rows) { ldm_error("upscale: out of memory"); goto done; }
    if (g->progress) g->progress(g->progress_ctx, "encode prompt", -1, 0, 0);
    if (ldm_pipeline_encode_prompt(&c, p, g->prompt, 1) != LDM_OK || first_chunk(zc, &c))
        goto done;
    if (r->cfg && (ldm_pipeline_encode_prompt(&un, p, g->negative ? g->negative : "", 1) != LDM_OK ||
                   first_chunk(zu, &un)))
        goto done;
    if (c.shape[1] > T || (r->cfg && un.shape[1] > T))
        fprintf(stderr, "upscale: a prompt longer than 75 tokens: only its first 75 are used\n");
    for (int64_t n = 0; n < N; n++)
        memcpy(rows + n * T * D, r->cfg && n < r->B ? zu : zc, (size_t)(T * D) * sizeof *rows);
    r->context = ldm_tensor_new(p->ops, LDM_SHAPE(N, T, D));
    if (!r->context.data) goto done;
    ldm_tensor_from_host(&r->context, rows);
    ldm_dump_host(zc, LDM_SHAPE(1, T, D), "context");
    if (r->cfg) ldm_dump_host(zu, LDM_SHAPE(1, T, D), "uncond_context");
    ldm_model_release_pages(&p->model);   // the text encoder's mapped weights leave memory
    rc = LDM_OK;
done:
    ldm_tensor_free(&c);
    ldm_tensor_free(&un);
    free(zc);
    free(zu);
    free(rows);
    return rc;
}

// Stage 2: the low-res image in [-1,1], noised to noise_level by the low-res
// schedule: x_n = sqrt(abar_n) x + sqrt(1 - abar_n) e, e the generator's
// first draw [1,3,h,w] (DDPM eq. 4); then z_T [B,4,h,w], its second draw.
static int low_res_and_noise(upscale_run *r) {
    const ldm_upscale_params *g = r->g;
    const int64_t n_img = r->Ci * r->h * r->w;
    float *x = malloc((size_t)n_img * sizeof *x), *e = malloc((size_t)n_img * sizeof *e);
    r->low = malloc((size_t)n_img * sizeof *r->low);
    r->noise = malloc((size_t)(r->B * r->per) * sizeof *r->noise);
    r->z = malloc((size_t)(r->B * r->per) * sizeof *r->z);
    int rc = LDM_ERR;
    if (!x || !e || !r->low || !r->noise || !r->z) { ldm_error("upscale: out of memory"); goto done; }
    ldm_pixels_to_unit(x, g->low_rgb, r->h, r->w);   // 2 p/255 - 1
    ldm_rng_randn_batch(g->rng, 0, e, 1, n_img);
    const int level = g->noise_level;
    ldm_q_sample(r->low, x, e, &level, 1, n_img, &r->u->low_res_sched);
    ldm_dump_host(r->low, LDM_SHAPE(1, r->Ci, r->h, r->w), "low_res_noisy");
    ldm_rng_randn_batch(g->rng, 0, r->noise, r->B, r->per);
    ldm_dump_host(r->noise, LDM_SHAPE(r->B, r->C, r->h, r->w), "noise");
    rc = LDM_OK;
done:
    free(x);
    free(e);
    return rc;
}

// Stage 3: the reverse process z_T -> z_0, as the text-to-image pipeline.
static int sample(upscale_run *r) {
    ldm_upscaler *u = r->u;
    const ldm_upscale_params *g = r->g;
    ldm_denoiser dn = {.fn = unet_fn, .ctx = r, .prediction = u->p.model.prediction,
                       .cfg = r->cfg, .cfg_scale = g->cfg_scale, .sched = &u->p.sched, .B = r->B,
                       .per = r->per};
    if (ldm_denoiser_init(&dn) != LDM_OK) return LDM_ERR;
    ldm_sample_run run = {.noise = r->noise, .rng = g->rng, .callback = step_fn,
                          .callback_ctx = r};
    if (g->progress) g->progress(g->progress_ctx, "sample", 0, r->run_steps, 0);
    int rc = ldm_sample(r->z, &g->sampling, &run, &dn);
    ldm_denoiser_free(&dn);
    ldm_tensor_free(&r->context);
    ldm_model_release_pages(&u->p.model);
    if (rc == LDM_OK) ldm_dump_host(r->z, LDM_SHAPE(r->B, r->C, r->h, r->w), "latent");
    return rc;
}

// Stage 4: D(z_0) one image at a time -> uint8 RGB [B][4h][4w][3].
static int decode(upscale_run *r, uint8_t *rgb_out) {
    ldm_pipeline *p = &r->u->p;
    const int64_t H = r->h * p->factor, W = r->w * p->factor;
    if (r->g->progress) r->g->progress(r->g->progress_ctx, "decode", -1, 0, 0);
    float *px = malloc((size_t)(3 * H * W) * sizeof *px);
    if (!px) return ldm_error("upscale: out of memory");
    int rc = LDM_OK;
    for (int64_t b = 0; b < r->B && rc == LDM_OK; b++) {
        ldm_tensor z = ldm_tensor_new(p->ops, LDM_SHAPE(1, r->C, r->h, r->w)), img = {0};
        if (!z.data) { rc = LDM_ERR; break; }
        ldm_tensor_from_host(&z, r->z + b * r->per);
        char prefix[32];
        snprintf(prefix, sizeof prefix, "image%lld/", (long long)b);
        ldm_dump_set_prefix(prefix);
        rc = ldm_vae_decode(&img, &p->vae, &z, &r->g->vae_opt);   // divides by scaling_factor
        if (rc == LDM_OK) {
            ldm_tensor_to_host(px, &img);
            ldm_dump(&img, "image");
            int64_t bad = ldm_unit_to_pixels(rgb_out + b * H * W * 3, px, H, W,
                                              r->g->sampling.conv.truncate);
            if (bad)
                rc = ldm_error("image %lld: %lld values are NaN or infinite (the model diverged)",
                               (long long)b, (long long)bad);
        }
        ldm_dump_set_prefix(NULL);
        ldm_tensor_free(&z);
        ldm_tensor_free(&img);
    }
    free(px);
    return rc;
}

int ldm_upscale_check(const ldm_upscaler *u, const ldm_upscale_params *g) {
    const ldm_pipeline *p = &u->p;
    const ldm_sampler_settings *s = &g->sampling;
    if (!g->prompt) return ldm_error("upscale: no prompt (pass an empty string for none)");
    if (!g->low_rgb) return ldm_error("upscale: no low-resolution image");
    if (!s->sampler) return ldm_error("upscale: no sampler");
    const int need = 1 << (p->model.unet.n_levels - 1);   // the UNet halves the latent n-1 times
    if (g->width < need || g->height < need || g->width % need || g->height % need)
        return ldm_error("input image %dx%d: width and height must be positive multiples of %d "
                         "for this upscaler (its UNet downsamples %d times)", g->width, g->height,
                         need, p->model.unet.n_levels - 1);
    if ((int64_t)g->width * p->factor > LDM_IMAGE_MAX_SIDE ||
        (int64_t)g->height * p->factor > LDM_IMAGE_MAX_SIDE)
        return ldm_error("input image %dx%d: the %dx larger output would exceed %d pixels a side",
                         g->width, g->height, p->factor, LDM_IMAGE_MAX_SIDE);
    if (g->noise_level < 0 || g->noise_level > u->max_noise_level)
        return ldm_error("noise level %d: must be 0..%d (max_noise_level of this model)",
                         g->noise_level, u->max_noise_level);
    if (g->batch < 1 || g->batch > 64) return ldm_error("batch must be 1..64, found %d", g->batch);
    if (s->steps < 1 || s->steps > 1000) return ldm_error("steps must be 1..1000, found %d", s->steps);
    if (!isfinite(g->cfg_scale)) return ldm_error("guidance scale must be a finite number");
    if (!g->rng) return ldm_error("upscale: no random generator");
    return LDM_OK;
}

int ldm_upscale(ldm_upscaler *u, const ldm_upscale_params *g, float *latent_out,
                uint8_t *rgb_out) {
    if (ldm_upscale_check(u, g) != LDM_OK) return LDM_ERR;
    upscale_run r = {.u = u, .g = g, .B = g->batch, .C = u->p.latent_channels,
                     .Ci = u->image_channels, .h = g->height, .w = g->width,
                     .cfg = g->cfg_scale > 1.0f};   // diffusers: guidance only when s > 1
    r.per = r.C * r.h * r.w;
    r.run_steps = ldm_sampler_steps(&g->sampling, &u->p.sched);
    int rc = r.run_steps < 0 ? LDM_ERR : condition(&r);      // prompt -> context
    if (rc == LDM_OK) rc = low_res_and_noise(&r);            // x_n, z_T
    if (rc == LDM_OK) rc = sample(&r);                       // z_T -> z_0
    if (rc == LDM_OK && latent_out) memcpy(latent_out, r.z, (size_t)(r.B * r.per) * sizeof(float));
    if (rc == LDM_OK && rgb_out) rc = decode(&r, rgb_out);   // D(z_0) -> pixels
    ldm_dump_set_prefix(NULL);
    ldm_tensor_free(&r.context);
    free(r.low);
    free(r.noise);
    free(r.z);
    return rc;
}
