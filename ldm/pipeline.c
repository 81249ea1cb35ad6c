/*
 * ldm/pipeline.c -- txt2img / img2img: guidance, the sampling loop and
 * decoding (see pipeline.h for the picture; prompt weighting is ldm/prompt.c).
 *
 * Mirrors CompVis scripts/txt2img.py + img2img.py (guidance batch order,
 * strength), diffusers StableDiffusion(Img2Img)Pipeline (the numerical
 * reference of tests/test_pipeline.c) and AUTOMATIC1111's prompt syntax
 * (modules/prompt_parser.py parse_prompt_attention; modules/sd_hijack_clip.py
 * tokenize_line / process_tokens, "Original" emphasis, pad_cond_uncond).
 * Leaves out: inpainting, embeddings, prompt scheduling, hires fix.
 *
 * Order of this file: 1. loading, 2. prompt encoding, 3. the UNet callback,
 * 4. generate.
 */
#include "ldm/pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "ldm/io/dump.h"
#include "ldm/core/error.h"
#include "ldm/io/image.h"
#include "ldm/backend/ops.h"
#include "tokenizer/bpe.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int64_t ldm_peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return (int64_t)ru.ru_maxrss * 1024;   // Linux: kilobytes
}

// ---------------------------------------------------------------------------
// 1. Loading: every weight once

int ldm_pipeline_open(ldm_pipeline *p, const char *ckpt, const ldm_pipeline_options *o) {
    memset(p, 0, sizeof *p);
    double t0 = now_seconds();
    p->ops = o->ops ? o->ops : ldm_backend_default();
    if (!p->ops) return LDM_ERR;
    p->verbose = o->verbose;
    ldm_model_options mo = {p->ops, o->prediction, o->config_dir};
    if (ldm_model_open(&p->model, ckpt, &mo) != LDM_OK) return LDM_ERR;
    ldm_model *m = &p->model;
    if (!m->has_unet || !m->has_text || (!m->has_vae && !o->vae_path)) {
        ldm_error("%s: a pipeline needs a UNet, a text encoder and a VAE; found%s%s%s", ckpt,
                  m->has_unet ? " unet" : "", m->has_text ? " text_encoder" : "",
                  m->has_vae ? " vae" : "");
        ldm_model_close(m);
        return LDM_ERR;
    }
    int parts = LDM_VAE_DECODER | (o->need_encoder ? LDM_VAE_ENCODER : 0);
    const char *vocab = o->vocab ? o->vocab : m->tokenizer_dir ? m->tokenizer_dir : o->vocab_default;
    if (ldm_tokenizer_load(&p->tok, vocab) != LDM_OK) goto fail;
    if (p->verbose) fprintf(stderr, "loading text encoder\n");
    if (ldm_clip_load(&p->clip, &m->clip_w, &m->clip) != LDM_OK) goto fail;
    if (p->verbose) fprintf(stderr, "loading unet\n");
    if (ldm_unet_load(&p->unet, &m->unet, &m->unet_w) != LDM_OK) goto fail_clip;
    if (p->verbose) fprintf(stderr, "loading vae%s\n", o->vae_path ? " (--vae)" : "");
    if (o->vae_path) {
        ldm_vae_file vf;
        if (ldm_vae_file_open(&vf, o->vae_path, p->ops) != LDM_OK) goto fail_unet;
        int rc = ldm_vae_load(&p->vae, &vf.cfg, &vf.w, parts);
        ldm_vae_file_close(&vf);
        if (rc != LDM_OK) goto fail_unet;
    } else if (ldm_vae_load(&p->vae, &m->vae, &m->vae_w, parts) != LDM_OK) {
        goto fail_unet;
    }
    p->factor = 1 << (p->vae.cfg.n_levels - 1);
    p->latent_channels = p->vae.cfg.latent_channels;
    if (p->latent_channels != m->unet.in_channels || m->unet.in_channels != m->unet.out_channels) {
        ldm_error("%s: the VAE has %d latent channels but the UNet takes %d and returns %d "
                  "(inpainting/depth UNets are not supported)", ckpt, p->latent_channels,
                  m->unet.in_channels, m->unet.out_channels);
        ldm_vae_free(&p->vae);
        goto fail_unet;
    }
    if (m->clip.hidden_size != m->unet.cross_attention_dim) {
        ldm_error("%s: the text encoder width %d differs from the UNet's cross_attention_dim %d",
                  ckpt, m->clip.hidden_size, m->unet.cross_attention_dim);
        ldm_vae_free(&p->vae);
        goto fail_unet;
    }
    ldm_schedule_init_sd(&p->sched);
    p->load_seconds = now_seconds() - t0;
    return LDM_OK;
fail_unet:
    ldm_unet_free(&p->unet);
fail_clip:
    ldm_clip_free(&p->clip);
fail:
    if (p->tok) ldm_tokenizer_free(p->tok);
    p->tok = NULL;
    ldm_model_close(m);
    return LDM_ERR;
}

void ldm_pipeline_close(ldm_pipeline *p) {
    ldm_vae_free(&p->vae);
    ldm_unet_free(&p->unet);
    ldm_clip_free(&p->clip);
    if (p->tok) ldm_tokenizer_free(p->tok);
    ldm_model_close(&p->model);
    memset(p, 0, sizeof *p);
}

// ---------------------------------------------------------------------------
// 2. Prompt -> context (A1111 process_tokens, "Original" emphasis)

// host z [n_chunks,77,D] of the prompt, weighted; malloc'ed.
// Dumps go under `role`/ ("prompt/", "negative/", "empty/").
static int encode_host(float **out, int *n_chunks, ldm_pipeline *p, const char *prompt,
                       int clip_skip, const char *role) {
    int32_t *ids;
    float *mult;
    int nc;
    int pad = p->model.clip.pad_token_id;
    if (pad != 0) pad = LDM_TOKEN_EOT;   // SD1 pads with EOT; SD2 (open_clip) with 0
    if (ldm_prompt_tokenize(&ids, &mult, &nc, p->tok, prompt, pad) != LDM_OK) return LDM_ERR;
    for (int i = 0; i < nc * LDM_CONTEXT; i++)
        if (ids[i] < 0 || ids[i] >= p->model.clip.vocab_size) {
            ldm_error("prompt: token id %d is outside this text encoder's vocabulary of %d",
                      ids[i], p->model.clip.vocab_size);
            free(ids); free(mult);
            return LDM_ERR;
        }
    ldm_tensor z;
    // every chunk through the encoder as one batch [nc,77]
    ldm_dump_set_prefix(role);
    int e = ldm_clip_forward(&z, &p->clip, ids, nc, LDM_CONTEXT, clip_skip - 1);
    ldm_dump_set_prefix(NULL);
    if (e != LDM_OK) {
        free(ids); free(mult);
        return LDM_ERR;
    }
    float *h = malloc((size_t)z.numel * sizeof *h);
    if (!h) {
        ldm_tensor_free(&z); free(ids); free(mult);
        return ldm_error("prompt: out of memory");
    }
    ldm_tensor_to_host(h, &z);
    ldm_prompt_emphasis(h, mult, nc, z.shape[2]);   // A1111 "Original" emphasis
    ldm_tensor_free(&z);
    free(ids);
    free(mult);
    *out = h;
    *n_chunks = nc;
    return LDM_OK;
}

int ldm_pipeline_encode_prompt(ldm_tensor *ctx, ldm_pipeline *p, const char *prompt, int clip_skip) {
    float *h;
    int nc;
    if (encode_host(&h, &nc, p, prompt, clip_skip, "prompt/") != LDM_OK) return LDM_ERR;
    int64_t D = p->model.clip.hidden_size;
    *ctx = ldm_tensor_new(p->ops, LDM_SHAPE(1, (int64_t)nc * LDM_CONTEXT, D));
    if (!ctx->data) { free(h); return LDM_ERR; }
    ldm_tensor_from_host(ctx, h);
    free(h);
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// 3. The network behind the sampler: x_in [N,per], t [N] -> eps or v [N,per]

typedef struct run_ctx {
    ldm_pipeline *p;
    const ldm_generate_params *g;
    ldm_tensor context;     // [2B,T,D]: rows [uncond x B, cond x B] (or [B,T,D] without guidance)
    int cfg;
    int64_t B, C, h, w;
    int step;               // sampler step being computed (dump prefix)
    int n_steps;
    double t_step;          // start of the current step
    double t_start;
} run_ctx;

static int unet_fn(float *out, const float *x_in, const float *t, int64_t N, void *vctx) {
    run_ctx *r = vctx;
    ldm_pipeline *p = r->p;
    char prefix[32];
    snprintf(prefix, sizeof prefix, "step%03d/", r->step);
    ldm_dump_set_prefix(prefix);
    ldm_tensor x = ldm_tensor_new(p->ops, LDM_SHAPE(N, r->C, r->h, r->w));
    ldm_tensor y = ldm_tensor_new(p->ops, LDM_SHAPE(N, r->C, r->h, r->w));
    int rc = LDM_ERR;
    if (!x.data || !y.data) goto done;
    ldm_tensor_from_host(&x, x_in);
    ldm_dump(&x, "unet_in");
    // N == 2B: the whole context; N == B (no guidance): the context is [B,T,D] already
    if (ldm_unet_forward(&y, &p->unet, &x, t, &r->context) != LDM_OK) goto done;
    ldm_tensor_to_host(out, &y);
    ldm_dump(&y, "unet_out");
    rc = LDM_OK;
done:
    ldm_tensor_free(&x);
    ldm_tensor_free(&y);
    ldm_dump_set_prefix(NULL);
    return rc;
}

static void step_fn(void *vctx, int i, const float *x, const float *denoised) {
    run_ctx *r = vctx;
    if (ldm_dump_enabled()) {
        char name[48];
        ldm_tensor hx = {0};   // host view for the dump writer (ref backend = host memory)
        hx.data = (float *)x;
        hx.ndim = 4;
        hx.shape[0] = r->B; hx.shape[1] = r->C; hx.shape[2] = r->h; hx.shape[3] = r->w;
        hx.numel = r->B * r->C * r->h * r->w;
        hx.ops = &ldm_ops_ref;
        snprintf(name, sizeof name, "step%03d/latent", i);
        ldm_dump(&hx, "%s", name);
        if (denoised) {
            hx.data = (float *)denoised;
            snprintf(name, sizeof name, "step%03d/denoised", i);
            ldm_dump(&hx, "%s", name);
        }
    }
    double t = now_seconds();
    if (r->g->progress) r->g->progress(r->g->progress_ctx, "sample", i + 1, r->n_steps, t - r->t_step);
    r->t_step = t;
    r->step = i + 1;
}

// ---------------------------------------------------------------------------
// 4. Generate

int ldm_generate_check(const ldm_pipeline *p, const ldm_generate_params *g) {
    if (!g->prompt) return ldm_error("generate: no prompt (pass an empty string for none)");
    if (!g->sampling.sampler) return ldm_error("generate: no sampler");
    if (g->width < 8 || g->height < 8 || g->width % 8 || g->height % 8)
        return ldm_error("size %dx%d: width (--W) and height (--H) must be positive multiples of 8",
                         g->width, g->height);
    if (g->width > LDM_IMAGE_MAX_SIDE || g->height > LDM_IMAGE_MAX_SIDE)
        return ldm_error("size %dx%d: at most %d pixels a side", g->width, g->height,
                         LDM_IMAGE_MAX_SIDE);
    // the UNet halves the latent (levels-1) times; the VAE divides pixels by factor
    int64_t need = (int64_t)p->factor << (p->model.unet.n_levels - 1);
    if (g->width % need || g->height % need)
        return ldm_error("size %dx%d: this model needs width and height multiples of %lld "
                         "(VAE factor %d x UNet downsampling %d)", g->width, g->height,
                         (long long)need, p->factor, 1 << (p->model.unet.n_levels - 1));
    if (g->batch < 1 || g->batch > 64) return ldm_error("batch (--n_samples) must be 1..64, found %d", g->batch);
    if (g->sampling.steps < 1 || g->sampling.steps > 1000)
        return ldm_error("steps must be 1..1000, found %d", g->sampling.steps);
    if (!isfinite(g->cfg_scale)) return ldm_error("guidance scale must be a finite number");
    if (g->clip_skip < 1 || g->clip_skip > p->clip.n_layers)
        return ldm_error("clip skip %d: must be 1..%d for this text encoder", g->clip_skip,
                         p->clip.n_layers);
    if (!g->rng) return ldm_error("generate: no random generator");
    if (g->init_rgb) {
        if (!(g->strength >= 0.0f && g->strength <= 1.0f))
            return ldm_error("strength %g: must be in [0, 1]", g->strength);
        if (!(p->vae.parts & LDM_VAE_ENCODER))
            return ldm_error("img2img: the VAE encoder was not loaded (need_encoder)");
    }
    return LDM_OK;
}

int ldm_generate(ldm_pipeline *p, const ldm_generate_params *g, float *latent_out,
                 uint8_t *rgb_out) {
    if (ldm_generate_check(p, g) != LDM_OK) return LDM_ERR;
    const int64_t B = g->batch, C = p->latent_channels, f = p->factor;
    const int64_t h = g->height / f, w = g->width / f, per = C * h * w;
    const int64_t D = p->model.clip.hidden_size;
    const int cfg = g->cfg_scale != 1.0f;   // CompVis: unconditional only when scale != 1
    run_ctx r = {.p = p, .g = g, .cfg = cfg, .B = B, .C = C, .h = h, .w = w};
    float *zc = NULL, *zu = NULL, *ctx_h = NULL, *x = NULL, *noise = NULL, *init = NULL;
    ldm_denoiser dn = {0};
    int rc = LDM_ERR;
    r.t_start = now_seconds();

    // ---- text conditioning: c [nc*77,D], u [nu*77,D], padded to one length
    if (g->progress) g->progress(g->progress_ctx, "encode prompt", -1, 0, 0);
    int nc = 0, nu = 0;
    if (encode_host(&zc, &nc, p, g->prompt, g->clip_skip, "prompt/") != LDM_OK) goto done;
    if (cfg && encode_host(&zu, &nu, p, g->negative ? g->negative : "", g->clip_skip,
                          "negative/") != LDM_OK)
        goto done;
    int nmax = nc > nu ? nc : nu;
    int64_t T = (int64_t)nmax * LDM_CONTEXT, chunk = (int64_t)LDM_CONTEXT * D;
    if (nc != nu && cfg) {
        // A1111 pad_cond: append the empty prompt's chunk to the shorter one
        float *empty;
        int ne;
        if (encode_host(&empty, &ne, p, "", g->clip_skip, "empty/") != LDM_OK) goto done;
        float **short_one = nc < nu ? &zc : &zu;
        int have = nc < nu ? nc : nu;
        float *grown = realloc(*short_one, (size_t)(T * D) * sizeof(float));
        if (!grown) { free(empty); ldm_error("out of memory"); goto done; }
        for (int k = have; k < nmax; k++) memcpy(grown + k * chunk, empty, (size_t)chunk * sizeof(float));
        *short_one = grown;
        free(empty);
    }
    int64_t rows = cfg ? 2 * B : B;
    ctx_h = malloc((size_t)(rows * T * D) * sizeof(float));
    if (!ctx_h) { ldm_error("out of memory for the context [%lld,%lld,%lld]", (long long)rows, (long long)T, (long long)D); goto done; }
    for (int64_t b = 0; b < rows; b++) {   // rows [uncond x B, cond x B]: the CompVis order
        const float *src = (cfg && b < B) ? zu : zc;
        memcpy(ctx_h + b * T * D, src, (size_t)(T * D) * sizeof(float));
    }
    r.context = ldm_tensor_new(p->ops, LDM_SHAPE(rows, T, D));
    if (!r.context.data) goto done;
    ldm_tensor_from_host(&r.context, ctx_h);
    free(ctx_h);
    ctx_h = NULL;
    if (ldm_dump_enabled()) {
        ldm_tensor v = ldm_tensor_slice0(&r.context, cfg ? B : 0, 1);
        ldm_dump(&v, "context");
        if (cfg) {
            v = ldm_tensor_slice0(&r.context, 0, 1);
            ldm_dump(&v, "uncond_context");
        }
    }

    // ---- img2img: init latent = VAE posterior sample (CompVis/diffusers draw it first)
    x = malloc((size_t)(B * per) * sizeof(float));
    noise = malloc((size_t)(B * per) * sizeof(float));
    if (!x || !noise) { ldm_error("out of memory"); goto done; }
    int start_step = 0, run_steps = g->sampling.steps;
    if (g->init_rgb) {
        if (g->progress) g->progress(g->progress_ctx, "encode image", -1, 0, 0);
        int64_t H = g->height, W = g->width;
        float *px = malloc((size_t)(3 * H * W) * sizeof(float));
        if (!px) { ldm_error("out of memory"); goto done; }
        ldm_pixels_to_unit(px, g->init_rgb, H, W);   // 2 p/255 - 1
        ldm_tensor xi = ldm_tensor_new(p->ops, LDM_SHAPE(1, 3, H, W)), moments = {0};
        if (!xi.data) { free(px); goto done; }
        ldm_tensor_from_host(&xi, px);
        free(px);
        int e = ldm_vae_encoder_forward(&moments, &p->vae, &xi);
        ldm_tensor_free(&xi);
        if (e != LDM_OK) goto done;
        float *mh = malloc((size_t)moments.numel * sizeof(float));
        init = malloc((size_t)(B * per) * sizeof(float));
        if (!mh || !init) { free(mh); ldm_tensor_free(&moments); ldm_error("out of memory"); goto done; }
        ldm_tensor_to_host(mh, &moments);
        ldm_tensor_free(&moments);
        // posterior noise [B,C,h,w] in one draw (CompVis encodes the repeated batch)
        ldm_rng_randn_batch(g->rng, 0, noise, B, per);
        for (int64_t b = 0; b < B; b++) {
            ldm_vae_posterior(init + b * per, mh, noise + b * per, 1, C, h * w);  // LDM eq. 25
            for (int64_t i = 0; i < per; i++) init[b * per + i] *= p->vae.cfg.scaling_factor;
        }
        free(mh);
        if (ldm_dump_enabled()) {
            ldm_tensor v = {.data = init, .ndim = 4, .shape = {B, C, h, w}, .numel = B * per,
                            .ops = &ldm_ops_ref};
            ldm_dump(&v, "init_latent");
        }
        // CompVis img2img.py / diffusers: t_enc = int(strength * steps) steps are run
        // (of the schedule's count entries; CompVis "uniform" may hold more than steps)
        int count = ldm_sampler_steps(&g->sampling, &p->sched);
        if (count < 0) goto done;
        run_steps = (int)(g->strength * g->sampling.steps);
        if (run_steps > count) run_steps = count;
        start_step = count - run_steps;
    }

    // ---- noise [B,C,h,w] from the run's generator
    ldm_rng_randn_batch(g->rng, 0, noise, B, per);
    if (ldm_dump_enabled()) {
        ldm_tensor v = {.data = noise, .ndim = 4, .shape = {B, C, h, w}, .numel = B * per,
                        .ops = &ldm_ops_ref};
        ldm_dump(&v, "noise");
    }

    // ---- the sampling loop (samplers/sampler.c ldm_sample)
    dn = (ldm_denoiser){.fn = unet_fn, .ctx = &r, .prediction = p->model.prediction, .cfg = cfg,
                        .cfg_scale = g->cfg_scale, .sched = &p->sched, .B = B, .per = per};
    if (ldm_denoiser_init(&dn) != LDM_OK) goto done;
    if (run_steps > 0) {
        ldm_sample_run run = {.noise = noise, .init = init, .start_step = start_step,
                              .rng = g->rng, .callback = step_fn, .callback_ctx = &r};
        r.n_steps = run_steps;
        if (g->progress) g->progress(g->progress_ctx, "sample", 0, run_steps, 0);
        r.t_step = now_seconds();
        if (ldm_sample(x, &g->sampling, &run, &dn) != LDM_OK) goto done;
    } else {
        memcpy(x, init, (size_t)(B * per) * sizeof(float));   // strength 0: the init latent
    }
    ldm_tensor_free(&r.context);   // the UNet's inputs are no longer needed
    ldm_denoiser_free(&dn);
    free(noise);
    noise = NULL;
    if (latent_out) memcpy(latent_out, x, (size_t)(B * per) * sizeof(float));
    {
        ldm_tensor v = {.data = x, .ndim = 4, .shape = {B, C, h, w}, .numel = B * per,
                        .ops = &ldm_ops_ref};
        ldm_dump(&v, "latent");
    }

    // ---- decode one image at a time (the VAE's activations dominate memory)
    if (rgb_out) {
        if (g->progress) g->progress(g->progress_ctx, "decode", -1, 0, 0);
        int64_t H = g->height, W = g->width;
        float *px = malloc((size_t)(3 * H * W) * sizeof(float));
        if (!px) { ldm_error("out of memory"); goto done; }
        for (int64_t b = 0; b < B; b++) {
            ldm_tensor lat = ldm_tensor_new(p->ops, LDM_SHAPE(1, C, h, w)), img = {0};
            if (!lat.data) { free(px); goto done; }
            ldm_tensor_from_host(&lat, x + b * per);
            char prefix[32];
            snprintf(prefix, sizeof prefix, "image%lld/", (long long)b);
            ldm_dump_set_prefix(prefix);   // vae.decoder.* of image b
            int e = ldm_vae_decode(&img, &p->vae, &lat, &g->vae_opt);
            ldm_tensor_free(&lat);
            if (e != LDM_OK) { free(px); goto done; }
            ldm_tensor_to_host(px, &img);
            ldm_dump(&img, "image");
            ldm_dump_set_prefix(NULL);
            ldm_tensor_free(&img);
            int64_t bad = ldm_unit_to_pixels(rgb_out + b * H * W * 3, px, H, W,
                                               g->sampling.conv.truncate);
            if (bad) {
                free(px);
                ldm_error("image %lld: %lld values are NaN or infinite (the model diverged)",
                          (long long)b, (long long)bad);
                goto done;
            }
        }
        free(px);
    }
    rc = LDM_OK;
done:
    ldm_dump_set_prefix(NULL);
    ldm_tensor_free(&r.context);
    ldm_denoiser_free(&dn);
    free(zc); free(zu); free(ctx_h); free(x); free(noise); free(init);
    return rc;
}
