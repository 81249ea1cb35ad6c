/*
 * ldm/pipeline.c -- txt2img / img2img: loading, then one generation as the
 * four stages of the LDM paper's Fig. 3 (see pipeline.h for the picture):
 * condition, initial latent, sample, decode.
 *
 * Mirrors CompVis scripts/txt2img.py + img2img.py (guidance batch order,
 * strength), diffusers StableDiffusion(Img2Img|Inpaint)Pipeline (the numerical
 * reference of tests/test_pipeline.c and tests/test_inpaint.c) and
 * AUTOMATIC1111's "pad prompt/negative prompt to the same length"
 * (sd_hijack_clip pad_cond; the prompt syntax itself is ldm/prompt.c).
 * Leaves out: prompt scheduling, hires fix.
 *
 * Order of this file: 1. loading, 2. prompt -> context, 3. what a generation
 * holds and the UNet behind the sampler, 4. the four stages, 5. generate.
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
    ldm_model_set_residency(&p->model, o->weights, o->low_memory);
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
    if (o->embedding_dir && ldm_embeddings_load_dir(&p->emb, &p->clip, o->embedding_dir)) goto fail_clip;
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
    // an inpainting UNet takes [z, mask, E(masked image)]: 2C+1 channels, returns C
    p->inpaint_unet = m->unet.in_channels == 2 * p->latent_channels + 1;
    if (m->unet.in_channels == p->latent_channels + 3 && m->unet.num_class_embeds > 0) {
        // the latent and the low-res RGB image, a noise-level class embedding
        ldm_error("%s: an x4 upscaler (its UNet takes the latent and a low-res image, %d + 3 "
                  "channels, and a noise level): use `sd upscale --ckpt %s --init-img LOW.png`",
                  ckpt, p->latent_channels, ckpt);
        ldm_vae_free(&p->vae);
        goto fail_unet;
    }
    if ((p->latent_channels != m->unet.in_channels && !p->inpaint_unet) ||
        m->unet.out_channels != p->latent_channels) {
        ldm_error("%s: the VAE has %d latent channels but the UNet takes %d and returns %d "
                  "(expected %d or, inpainting, %d in; depth UNets are not supported)", ckpt,
                  p->latent_channels, m->unet.in_channels, m->unet.out_channels,
                  p->latent_channels, 2 * p->latent_channels + 1);
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
    ldm_embeddings_free(&p->emb);
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
    ldm_embeddings_free(&p->emb);
    if (p->tok) ldm_tokenizer_free(p->tok);
    ldm_model_close(&p->model);
    memset(p, 0, sizeof *p);
}

// ---------------------------------------------------------------------------
// 2. Prompt -> context

// host z [n_chunks,77,D] of the prompt, weighted (ldm/prompt.h); malloc'ed.
// Dumps go under `role`/ ("prompt/", "negative/", "empty/").
static int encode_host(float **out, int *n_chunks, ldm_pipeline *p, const char *prompt,
                       int clip_skip, const char *role) {
    int32_t *ids;
    float *mult;
    int nc;
    int pad = p->model.clip.pad_token_id;
    if (pad != 0) pad = LDM_TOKEN_EOT;   // SD1 pads with EOT; SD2 (open_clip) with 0
    if (ldm_prompt_tokenize_emb(&ids, &mult, &nc, p->tok, &p->emb, prompt, pad) != LDM_OK) return LDM_ERR;
    for (int i = 0; i < nc * LDM_CONTEXT; i++)   // p->clip's vocabulary includes the embeddings
        if (ids[i] < 0 || ids[i] >= p->clip.cfg.vocab_size) {
            ldm_error("prompt: token id %d is outside this text encoder's vocabulary of %d",
                      ids[i], p->clip.cfg.vocab_size);
            free(ids); free(mult);
            return LDM_ERR;
        }
    ldm_tensor z;
    // every chunk through the encoder as one batch [nc,77]
    ldm_dump_set_prefix(role);
    int e = ldm_clip_forward(&z, &p->clip, ids, nc, LDM_CONTEXT, clip_skip - 1);
    ldm_dump_set_prefix(NULL);
    free(ids);
    if (e != LDM_OK) {
        free(mult);
        return LDM_ERR;
    }
    float *h = malloc((size_t)z.numel * sizeof *h);
    if (!h) {
        ldm_tensor_free(&z); free(mult);
        return ldm_error("prompt: out of memory");
    }
    ldm_tensor_to_host(h, &z);
    ldm_prompt_emphasis(h, mult, nc, z.shape[2]);
    ldm_tensor_free(&z);
    free(mult);
    *out = h;
    *n_chunks = nc;
    return LDM_OK;
}

// A1111 pad_cond: grow z [have*77,D] to [want*77,D] with copies of the empty
// prompt's chunk, so that prompt and negative prompt have the same length.
static int pad_with_empty(float **z, int have, int want, ldm_pipeline *p, int clip_skip) {
    float *empty;
    int ne;
    if (encode_host(&empty, &ne, p, "", clip_skip, "empty/") != LDM_OK) return LDM_ERR;
    const int64_t chunk = (int64_t)LDM_CONTEXT * p->model.clip.hidden_size;
    float *grown = realloc(*z, (size_t)(want * chunk) * sizeof(float));
    if (!grown) { free(empty); return ldm_error("out of memory"); }
    for (int k = have; k < want; k++) memcpy(grown + k * chunk, empty, (size_t)chunk * sizeof(float));
    *z = grown;
    free(empty);
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
// 3. What one generation holds between its stages, and the UNet behind the sampler

typedef struct generation {
    ldm_pipeline *p;
    const ldm_generate_params *g;
    int64_t B, C, h, w, per;  // the latent [B,C,h,w]; per = C*h*w floats per image
    int cfg;                  // classifier-free guidance: context rows [uncond x B, cond x B]
    ldm_tensor context;       // 1. condition: [2B,T,D] ([B,T,D] without guidance), on p->ops
    float *noise;             // 2. initial latent: z_T ~ N(0,I) [B,per]
    float *init;              //    img2img: z_0 = E(x) [B,per]; NULL for txt2img
    int start_step;           //    img2img: first schedule entry run; txt2img 0
    int run_steps;            //    sampler steps that run (0: strength 0 keeps the init latent)
    int count;                //    schedule entries of the whole run (ldm_sampler_steps)
    // inpainting (g->mask_rgb), docs/07-pipeline.md "Inpainting"
    float *mask;              //    m [h*w] at latent size, 1 = repaint (inpaint_mask)
    float *masked;            //    inpainting UNet: E(x * (1 - M)) [B,per], the kept pixels' latent
    float *unet_in;           //    inpainting UNet: its input [N, 2C+1, h, w] (unet_fn)
    float *sigmas;            //    4-channel blending: the run's sigmas [count+1] (k samplers)
    int *timesteps;           //    ... or timesteps [count] (DDPM/DDIM/PLMS)
    float *z;                 // 3. sample: the latent z_0 [B,per], then 4. decoded
    int step;                 // sampler step being computed (dump prefix "stepNNN/")
    const ldm_denoiser *dn;   // during sampling: its nfe counts the model evaluations
    int64_t unet_calls;       // UNet calls of this generation so far (the DeepCache schedule)
    double t_step;            // start of the current step (progress)
} generation;

// The network behind the sampler: x_in [N,per], t [N] -> eps or v [N,per].
// N == 2B: the whole context; N == B (no guidance): the context is [B,T,D] already.
static int unet_fn(float *out, const float *x_in, const float *t, int64_t N, void *vctx) {
    generation *r = vctx;
    ldm_pipeline *p = r->p;
    char prefix[32];
    snprintf(prefix, sizeof prefix, "step%03d/", r->step);
    ldm_dump_set_prefix(prefix);
    const int64_t cin = p->model.unet.in_channels;   // C, or 2C+1 for an inpainting UNet
    ldm_tensor x = ldm_tensor_new(p->ops, LDM_SHAPE(N, cin, r->h, r->w));
    ldm_tensor y = ldm_tensor_new(p->ops, LDM_SHAPE(N, r->C, r->h, r->w));
    int rc = LDM_ERR;
    if (!x.data || !y.data) goto done;
    if (p->inpaint_unet) {   // row n: [x_in[n] (C), m (1), E(masked)[image of row n] (C)]
        const int64_t hw = r->h * r->w, row = cin * hw;
        for (int64_t n = 0; n < N; n++) {
            float *dst = r->unet_in + n * row;
            memcpy(dst, x_in + n * r->per, (size_t)r->per * sizeof(float));
            memcpy(dst + r->per, r->mask, (size_t)hw * sizeof(float));
            memcpy(dst + r->per + hw, r->masked + (n % r->B) * r->per, (size_t)r->per * sizeof(float));
        }
        x_in = r->unet_in;
    }
    ldm_tensor_from_host(&x, x_in);
    ldm_dump(&x, "unet_in");
    // DeepCache, uniform interval N: calls 0, N, 2N, ... run in full, the others are
    // cached steps. Calls, not sampler steps, are counted, so a sampler with two
    // model evaluations per step (Heun, DPM2, ...) alternates within its steps.
    const int interval = r->g->deepcache;
    p->unet.deepcache.reuse = interval > 1 && r->unet_calls % interval != 0;
    r->unet_calls++;
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

// Inpainting with an ordinary (C-channel) UNet, after sampler step i: the
// kept region (m = 0) goes back to the init latent noised to the level the
// sampler has reached, the repainted one (m = 1) keeps the sample:
//   x = (1 - m) q(z_0, n; level i+1) + m x      (the last step: q = z_0 itself)
// q is the sampler's own forward process with the start noise n: z_0 + sigma n
// (k-diffusion samplers), sqrt(abar_t) z_0 + sqrt(1 - abar_t) n (DDPM eq. 4).
static void blend_known(generation *r, int i, float *x) {
    const int next = r->start_step + i + 1;   // the schedule entry the next step starts at
    const int64_t hw = r->h * r->w;
    for (int64_t b = 0; b < r->B; b++) {
        const float *z0 = r->init + b * r->per, *n = r->noise + b * r->per;
        double sa = 1, sb = 0;                // z_t = sa z_0 + sb n
        if (next < r->count && r->sigmas) {
            sb = r->sigmas[next];
        } else if (next < r->count) {
            double abar = r->p->sched.alphas_cumprod[r->timesteps[next]];
            sa = sqrt(abar), sb = sqrt(1 - abar);
        }
        for (int64_t k = 0; k < r->per; k++) {
            float m = r->mask[k % hw];
            float known = (float)(sa * z0[k] + sb * n[k]);
            x[b * r->per + k] = (1 - m) * known + m * x[b * r->per + k];
        }
    }
}

// After sampler step i: x and the step's prediction of x_0 [B,per], dumped
// (after inpainting's blend); progress.
static void step_fn(void *vctx, int i, float *x, const float *denoised) {
    generation *r = vctx;
    if (r->mask && !r->p->inpaint_unet) blend_known(r, i, x);
    ldm_dump_host(x, LDM_SHAPE(r->B, r->C, r->h, r->w), "step%03d/latent", i);
    if (denoised) ldm_dump_host(denoised, LDM_SHAPE(r->B, r->C, r->h, r->w), "step%03d/denoised", i);
    double t = now_seconds();
    if (r->g->nfe) *r->g->nfe = r->dn->nfe;
    if (r->g->progress)
        r->g->progress(r->g->progress_ctx, "sample", i + 1, r->run_steps, t - r->t_step);
    r->t_step = t;
    r->step = i + 1;
}

// ---------------------------------------------------------------------------
// 4. The four stages (LDM Fig. 3)

// Stage 1, condition: tau_theta(y). c = the prompt's context (one per image
// when g->prompts gives each image its own), u = the negative prompt's (with
// guidance), [k*77,D] each, padded to one length; the context rows are
// [u x B, c_0 .. c_{B-1}] (the CompVis order: torch.cat([uc, c])).
static int condition(generation *r) {
    ldm_pipeline *p = r->p;
    const ldm_generate_params *g = r->g;
    const int64_t D = p->model.clip.hidden_size, B = r->B;
    const int per_image = g->prompts != NULL;
    const int64_t n_c = per_image ? B : 1;   // distinct condition rows
    float **zc = calloc((size_t)n_c, sizeof *zc), *zu = NULL, *rows = NULL;
    int *nc = calloc((size_t)n_c, sizeof *nc), nu = 0, rc = LDM_ERR, nmax = 0;
    if (!zc || !nc) { ldm_error("out of memory"); goto done; }
    if (g->progress) g->progress(g->progress_ctx, "encode prompt", -1, 0, 0);
    for (int64_t b = 0; b < n_c; b++) {
        if (encode_host(&zc[b], &nc[b], p, per_image ? g->prompts[b] : g->prompt, g->clip_skip,
                        "prompt/") != LDM_OK)
            goto done;
        if (nc[b] > nmax) nmax = nc[b];
    }
    if (r->cfg) {
        if (encode_host(&zu, &nu, p, g->negative ? g->negative : "", g->clip_skip,
                        "negative/") != LDM_OK)
            goto done;
        if (nu > nmax) nmax = nu;
        if (nu < nmax && pad_with_empty(&zu, nu, nmax, p, g->clip_skip) != LDM_OK) goto done;
    }
    for (int64_t b = 0; b < n_c; b++)
        if (nc[b] < nmax && pad_with_empty(&zc[b], nc[b], nmax, p, g->clip_skip) != LDM_OK) goto done;
    const int64_t T = (int64_t)nmax * LDM_CONTEXT, N = r->cfg ? 2 * B : B;
    rows = malloc((size_t)(N * T * D) * sizeof(float));
    if (!rows) {
        ldm_error("out of memory for the context [%lld,%lld,%lld]", (long long)N, (long long)T,
                  (long long)D);
        goto done;
    }
    for (int64_t b = 0; b < N; b++) {
        int64_t i = r->cfg ? b - B : b;   // image of a condition row (< 0: unconditional)
        const float *src = i < 0 ? zu : zc[per_image ? i : 0];
        memcpy(rows + b * T * D, src, (size_t)(T * D) * sizeof(float));
    }
    r->context = ldm_tensor_new(p->ops, LDM_SHAPE(N, T, D));
    if (!r->context.data) goto done;
    ldm_tensor_from_host(&r->context, rows);
    ldm_model_release_pages(&p->model);   // the text encoder's mapped weights leave memory
    ldm_dump_host(zc[0], LDM_SHAPE(1, T, D), "context");
    if (r->cfg) ldm_dump_host(zu, LDM_SHAPE(1, T, D), "uncond_context");
    rc = LDM_OK;
done:
    for (int64_t b = 0; zc && b < n_c; b++) free(zc[b]);
    free(zc); free(nc); free(zu); free(rows);
    return rc;
}

// z0 [B,per] <- E(px) * scaling_factor for pixels px [3,H,W] in [-1,1]: the
// VAE posterior sampled (LDM eq. 25) with `draws` rows of noise from the run's
// generator, B (CompVis img2img encodes the repeated batch) or 1 (diffusers'
// inpainting encodes one image and repeats its latent). `noise` [B,per] is
// scratch for the draw.
static int encode_pixels(float *z0, generation *r, const float *px, int64_t draws, float *noise) {
    ldm_pipeline *p = r->p;
    const int64_t H = r->g->height, W = r->g->width;
    ldm_tensor x = ldm_tensor_new(p->ops, LDM_SHAPE(1, 3, H, W)), moments = {0};
    float *m = NULL;
    int rc = LDM_ERR;
    if (!x.data) goto done;
    ldm_tensor_from_host(&x, px);
    if (ldm_vae_encoder_forward(&moments, &p->vae, &x) != LDM_OK) goto done;
    m = malloc((size_t)moments.numel * sizeof(float));
    if (!m) { ldm_error("out of memory"); goto done; }
    ldm_tensor_to_host(m, &moments);
    ldm_rng_randn_batch(r->g->rng, 0, noise, draws, r->per);
    for (int64_t b = 0; b < r->B; b++) {
        float *z = z0 + b * r->per;
        ldm_vae_posterior(z, m, noise + (b % draws) * r->per, 1, r->C, r->h * r->w);   // LDM eq. 25
        for (int64_t i = 0; i < r->per; i++) z[i] *= p->vae.cfg.scaling_factor;
    }
    rc = LDM_OK;
done:
    ldm_tensor_free(&x);
    ldm_tensor_free(&moments);
    free(m);
    return rc;
}

// img2img and inpainting: z_0 [B,per] = E(x) * scaling_factor of the init image
// (encode_pixels with `draws` rows of noise).
static int encode_image(generation *r, int64_t draws, float *noise) {
    const int64_t H = r->g->height, W = r->g->width;
    float *px = malloc((size_t)(3 * H * W) * sizeof(float));
    r->init = malloc((size_t)(r->B * r->per) * sizeof(float));
    if (!px || !r->init) { free(px); return ldm_error("out of memory"); }
    ldm_pixels_to_unit(px, r->g->init_rgb, H, W);   // 2 p/255 - 1
    int rc = encode_pixels(r->init, r, px, draws, noise);
    free(px);
    if (rc == LDM_OK) ldm_dump_host(r->init, LDM_SHAPE(r->B, r->C, r->h, r->w), "init_latent");
    return rc;
}

// Inpainting's mask, as diffusers prepares it (VaeImageProcessor with
// do_convert_grayscale and do_binarize, then the pipeline's nearest resize):
// gray L = (19595 R + 38470 G + 7471 B + 2^15) >> 16 (PIL's ITU-R 601 luma),
// M = [L/255 >= 0.5] at full size [H,W] (1 = repaint), m [h,w] = M[f i, f j]
// (nearest to the latent size). M [H*W] and r->mask are malloc'ed.
static int inpaint_mask(float **M, generation *r) {
    const int64_t H = r->g->height, W = r->g->width, f = r->p->factor;
    *M = malloc((size_t)(H * W) * sizeof(float));
    r->mask = malloc((size_t)(r->h * r->w) * sizeof(float));
    if (!*M || !r->mask) return ldm_error("out of memory");
    for (int64_t i = 0; i < H * W; i++) {
        const uint8_t *c = r->g->mask_rgb + 3 * i;
        uint32_t L = (19595u * c[0] + 38470u * c[1] + 7471u * c[2] + 0x8000u) >> 16;
        (*M)[i] = L / 255.0f >= 0.5f ? 1.0f : 0.0f;
    }
    for (int64_t i = 0; i < r->h; i++)
        for (int64_t j = 0; j < r->w; j++) r->mask[i * r->w + j] = (*M)[(f * i) * W + f * j];
    ldm_dump_host(r->mask, LDM_SHAPE(1, 1, r->h, r->w), "mask");
    return LDM_OK;
}

// Inpainting's conditioning, after the start noise (the generator's next draw):
// the masked image x * (M < 0.5) (repainted pixels set to 0, mid-gray) encoded
// once, E(.) * scaling_factor -> r->masked [B,per] for an inpainting UNet. An
// ordinary UNet does not use it; its draw is still taken, so that the sampler's
// noise is the same as diffusers'.
static int masked_image_latent(generation *r, const float *M, float *noise) {
    const int64_t H = r->g->height, W = r->g->width;
    if (!r->p->inpaint_unet) {
        ldm_rng_randn_batch(r->g->rng, 0, noise, 1, r->per);
        return LDM_OK;
    }
    float *px = malloc((size_t)(3 * H * W) * sizeof(float));
    r->masked = malloc((size_t)(r->B * r->per) * sizeof(float));
    const int64_t rows = (r->cfg ? 2 : 1) * r->B, cin = r->p->model.unet.in_channels;
    r->unet_in = malloc((size_t)(rows * cin * r->h * r->w) * sizeof(float));
    if (!px || !r->masked || !r->unet_in) { free(px); return ldm_error("out of memory"); }
    ldm_pixels_to_unit(px, r->g->init_rgb, H, W);
    for (int64_t c = 0; c < 3; c++)
        for (int64_t i = 0; i < H * W; i++) px[c * H * W + i] *= M[i] < 0.5f ? 1.0f : 0.0f;
    int rc = encode_pixels(r->masked, r, px, 1, noise);
    free(px);
    if (rc == LDM_OK) ldm_dump_host(r->masked, LDM_SHAPE(r->B, r->C, r->h, r->w), "masked_latent");
    return rc;
}

// 4-channel inpainting: the run's schedule, for blend_known's noise levels
// (the same sigmas / timesteps ldm_sample walks).
static int blend_schedule(generation *r) {
    const ldm_sampler_settings *s = &r->g->sampling;
    if (s->sampler->uses_sigmas) {
        r->sigmas = malloc((size_t)(r->count + 1) * sizeof(float));
        if (!r->sigmas) return ldm_error("out of memory");
        ldm_sigmas_make(r->sigmas, s->sigma_kind, &r->p->sched, r->count);
        return LDM_OK;
    }
    r->timesteps = malloc((size_t)r->count * sizeof(int));
    if (!r->timesteps) return ldm_error("out of memory");
    return ldm_timesteps(r->timesteps, &r->p->sched, s->conv.spacing, s->steps,
                         s->conv.steps_offset) < 0 ? LDM_ERR : LDM_OK;
}

// Stage 2, initial latent: z_T ~ N(0,I) [B,per] from the run's generator.
// img2img first encodes the image (the generator's first draw, as CompVis and
// diffusers) and starts int(strength * steps) entries before the end of the
// schedule (CompVis img2img.py t_enc); the sampler noises z_0 to that level.
// Inpainting (diffusers StableDiffusionInpaintPipeline): the image is encoded
// first when it is needed (strength < 1, or an ordinary UNet that blends it
// back), then the noise, then the masked image (masked_image_latent); at
// strength 1 the start is pure noise.
static int initial_latent(generation *r) {
    const ldm_generate_params *g = r->g;
    r->noise = malloc((size_t)(r->B * r->per) * sizeof(float));
    r->z = malloc((size_t)(r->B * r->per) * sizeof(float));
    if (!r->noise || !r->z) return ldm_error("out of memory");
    r->start_step = 0;
    // the steps that really run (CompVis "uniform" spacing may hold more than asked)
    int count = ldm_sampler_steps(&g->sampling, &r->p->sched);
    if (count < 0) return LDM_ERR;
    r->run_steps = r->count = count;
    const int inpaint = g->mask_rgb != NULL;
    if (g->init_rgb) {
        r->run_steps = (int)(g->strength * g->sampling.steps);
        if (r->run_steps > count) r->run_steps = count;
        r->start_step = count - r->run_steps;
    }
    if (g->init_rgb && (!inpaint || !r->p->inpaint_unet || g->strength < 1)) {
        if (g->progress) g->progress(g->progress_ctx, "encode image", -1, 0, 0);
        if (encode_image(r, inpaint ? 1 : r->B, r->noise) != LDM_OK) return LDM_ERR;
    }
    ldm_rng_randn_batch(g->rng, 0, r->noise, r->B, r->per);
    ldm_dump_host(r->noise, LDM_SHAPE(r->B, r->C, r->h, r->w), "noise");
    if (!inpaint) return LDM_OK;
    float *M = NULL, *scratch = malloc((size_t)(r->B * r->per) * sizeof(float));
    int rc = scratch ? inpaint_mask(&M, r) : ldm_error("out of memory");
    if (rc == LDM_OK) rc = masked_image_latent(r, M, scratch);
    if (rc == LDM_OK && !r->p->inpaint_unet) rc = blend_schedule(r);
    free(M);
    free(scratch);
    return rc;
}

// Stage 3, sample: the reverse process z_T -> z_0 (samplers/sampler.c
// ldm_sample) with the UNet behind the guided denoiser. Frees the context
// and the noise after it: the decoder needs the memory.
static int sample(generation *r) {
    ldm_pipeline *p = r->p;
    const ldm_generate_params *g = r->g;
    ldm_denoiser dn = {.fn = unet_fn, .ctx = r, .prediction = p->model.prediction, .cfg = r->cfg,
                       .cfg_scale = g->cfg_scale, .sched = &p->sched, .B = r->B, .per = r->per};
    if (ldm_denoiser_init(&dn) != LDM_OK) return LDM_ERR;
    r->dn = &dn;
    if (g->nfe) *g->nfe = 0;
    int rc = LDM_OK;
    if (r->run_steps > 0) {
        // inpainting at strength 1 starts from pure noise (diffusers is_strength_max)
        const int pure_noise = g->mask_rgb && g->strength >= 1;
        ldm_sample_run run = {.noise = r->noise, .init = pure_noise ? NULL : r->init,
                              .start_step = r->start_step, .rng = g->rng, .callback = step_fn,
                              .callback_ctx = r};
        if (g->progress) g->progress(g->progress_ctx, "sample", 0, r->run_steps, 0);
        r->t_step = now_seconds();
        rc = ldm_sample(r->z, &g->sampling, &run, &dn);
    } else {
        memcpy(r->z, r->init, (size_t)(r->B * r->per) * sizeof(float));   // strength 0
    }
    if (g->nfe) *g->nfe = dn.nfe;
    r->dn = NULL;
    ldm_denoiser_free(&dn);
    ldm_tensor_free(&r->context);           // the UNet's inputs are no longer needed,
    ldm_model_release_pages(&p->model);   // nor its mapped weights, before the VAE's peak
    free(r->noise);
    r->noise = NULL;
    if (rc == LDM_OK) ldm_dump_host(r->z, LDM_SHAPE(r->B, r->C, r->h, r->w), "latent");
    return rc;
}

// Image b: px [3,H,W] <- D(z_0[b]), the decoder's blocks dumped under "imageK/".
static int decode_one(generation *r, int64_t b, float *px) {
    ldm_pipeline *p = r->p;
    ldm_tensor z = ldm_tensor_new(p->ops, LDM_SHAPE(1, r->C, r->h, r->w)), img = {0};
    if (!z.data) return LDM_ERR;
    ldm_tensor_from_host(&z, r->z + b * r->per);
    char prefix[32];
    snprintf(prefix, sizeof prefix, "image%lld/", (long long)b);
    ldm_dump_set_prefix(prefix);
    int rc = ldm_vae_decode(&img, &p->vae, &z, &r->g->vae_opt);   // divides by scaling_factor
    if (rc == LDM_OK) {
        ldm_tensor_to_host(px, &img);
        ldm_dump(&img, "image");
    }
    ldm_dump_set_prefix(NULL);
    ldm_tensor_free(&z);
    ldm_tensor_free(&img);
    return rc;
}

// Stage 4, decode: D(z_0) one image at a time (the VAE's activations dominate
// memory), then to uint8 RGB by truncation or rounding (the conventions).
static int decode(generation *r, uint8_t *rgb_out) {
    const ldm_generate_params *g = r->g;
    const int64_t H = g->height, W = g->width;
    if (g->progress) g->progress(g->progress_ctx, "decode", -1, 0, 0);
    float *px = malloc((size_t)(3 * H * W) * sizeof(float));
    if (!px) return ldm_error("out of memory");
    int rc = LDM_OK;
    for (int64_t b = 0; b < r->B && rc == LDM_OK; b++) {
        rc = decode_one(r, b, px);
        int64_t bad = rc == LDM_OK ? ldm_unit_to_pixels(rgb_out + b * H * W * 3, px, H, W,
                                                        g->sampling.conv.truncate) : 0;
        if (bad)
            rc = ldm_error("image %lld: %lld values are NaN or infinite (the model diverged)",
                           (long long)b, (long long)bad);
    }
    free(px);
    return rc;
}

// ---------------------------------------------------------------------------
// 5. Generate

int ldm_generate_check(const ldm_pipeline *p, const ldm_generate_params *g) {
    const ldm_sampler_settings *s = &g->sampling;
    if (!g->prompt && !g->prompts) return ldm_error("generate: no prompt (pass an empty string for none)");
    for (int b = 0; g->prompts && b < g->batch; b++)
        if (!g->prompts[b]) return ldm_error("generate: prompts[%d] is NULL", b);
    if (!s->sampler) return ldm_error("generate: no sampler");
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
    if (s->steps < 1 || s->steps > 1000) return ldm_error("steps must be 1..1000, found %d", s->steps);
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
    if (g->mask_rgb && !g->init_rgb) return ldm_error("inpainting: a mask needs an init image");
    if (p->inpaint_unet && !g->mask_rgb)
        return ldm_error("this is an inpainting model (its UNet takes %d channels): it needs an "
                         "image and a mask (sd inpaint)", p->model.unet.in_channels);
    if (g->deepcache < 0) return ldm_error("deepcache interval %d: must be >= 1", g->deepcache);
    int branches = ldm_unet_deepcache_branches(&p->unet);
    if (g->deepcache_branch < 0 || g->deepcache_branch >= branches)
        return ldm_error("deepcache branch %d: this UNet has skip branches 0..%d (0 = the "
                         "shallowest)", g->deepcache_branch, branches - 1);
    return LDM_OK;
}

int ldm_generate(ldm_pipeline *p, const ldm_generate_params *g, float *latent_out,
                 uint8_t *rgb_out) {
    if (ldm_generate_check(p, g) != LDM_OK) return LDM_ERR;
    // LoRA: tags leave the prompt, the files are merged into the weights until the end of this call
    ldm_lora_set lora;
    ldm_generate_params gl = *g;
    if (ldm_lora_begin(&lora, &p->unet, &p->clip, g->prompt, g->lora_dir, g->loras, g->n_loras))
        return LDM_ERR;
    char *negative = NULL;   // tags in the negative prompt are merged too: they are global
    if (ldm_lora_take_tags(&negative, &lora, &p->unet, &p->clip, g->negative, g->lora_dir)) {
        free(negative);
        ldm_lora_restore(&lora);
        return LDM_ERR;
    }
    gl.prompt = lora.prompt, gl.negative = negative, g = &gl;
    const int64_t f = p->factor, C = p->latent_channels;
    generation r = {.p = p, .g = g, .B = g->batch, .C = C, .h = g->height / f, .w = g->width / f,
                    .cfg = g->cfg_scale != 1.0f};   // CompVis: unconditional only when s != 1
    r.per = r.C * r.h * r.w;
    // DeepCache on for this call only, with nothing kept from an earlier one
    int rc = g->deepcache > 1 ? ldm_unet_deepcache_on(&p->unet, g->deepcache_branch) : LDM_OK;
    if (rc == LDM_OK) rc = condition(&r);                    // tau_theta(y) -> context
    if (rc == LDM_OK) rc = initial_latent(&r);               // z_T, or z_0 = E(x) for img2img
    if (rc == LDM_OK) rc = sample(&r);                       // z_T -> z_0
    if (rc == LDM_OK && latent_out) memcpy(latent_out, r.z, (size_t)(r.B * r.per) * sizeof(float));
    if (rc == LDM_OK && rgb_out) rc = decode(&r, rgb_out);   // D(z_0) -> pixels
    ldm_dump_set_prefix(NULL);
    ldm_tensor_free(&r.context);
    free(r.noise); free(r.init); free(r.z);
    free(r.mask); free(r.masked); free(r.unet_in); free(r.sigmas); free(r.timesteps);
    ldm_lora_restore(&lora);   // the original weights, bit for bit
    ldm_unet_deepcache_off(&p->unet);   // the UNet exact again, its kept feature freed
    free(negative);
    return rc;
}
