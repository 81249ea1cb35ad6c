/*
 * ldm/train/train.c -- the two training stages of `sd train` (ldm/train/train.h).
 *
 * Order of this file: options; the data (scenes, captions, batches); the
 * shared step machinery (optimizer step, progress, logs); stage 1; stage 2;
 * the driver (models, resume, checkpoints, export, curves).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/fs.h"
#include "ldm/model.h"
#include "ldm/train/checkpoint.h"
#include "ldm/train/clip_train.h"
#include "ldm/train/dist.h"
#include "ldm/train/export.h"
#include "ldm/train/init.h"
#include "ldm/train/loss.h"
#include "ldm/train/optim.h"
#include "ldm/train/plot.h"
#include "ldm/train/shapes.h"
#include "ldm/train/train.h"
#include "ldm/train/unet_train.h"
#include "ldm/train/vae_train.h"
#include "samplers/schedule.h"
#include "tokenizer/bpe.h"

#define CTX 77          // caption tokens (SD1: 77)
#define IMG 64          // image side of the shapes dataset
#define ENC_CHUNK 50    // images per encoder call when encoding the whole dataset

// ---- options ---------------------------------------------------------------------

void ldm_train_defaults(ldm_train_options *o, ldm_train_stage stage) {
    memset(o, 0, sizeof *o);
    o->stage = stage;
    o->seed = 0;
    o->n_images = 10000;
    o->save_every = 100;
    o->batch = 32;
    o->lr = 1e-3;
    o->vae_crop = 32;
    o->vae_full_steps = 900;
    o->kl_weight = 1e-6;
    o->obj_weight = 5.0;
    o->min_snr = 5.0;
    o->cond_drop = 0.1;
    o->ema = 0.998;
    o->steps = stage == LDM_TRAIN_VAE ? 1200 : 6000;
}

int ldm_train_stage_parse(ldm_train_stage *stage, const char *name) {
    if (name && !strcmp(name, "vae")) return *stage = LDM_TRAIN_VAE, 0;
    if (name && !strcmp(name, "unet")) return *stage = LDM_TRAIN_UNET, 0;
    return ldm_error("--stage '%s': expected vae (the autoencoder) or unet (the denoiser and "
                     "text encoder)", name ? name : "");
}

int ldm_train_check(const ldm_train_options *o) {
    if (!o->out || !*o->out) return ldm_error("--out DIR is required");
    if (o->steps < 1 || o->steps > 100000000) return ldm_error("--steps %lld: 1..1e8", (long long)o->steps);
    if (o->batch < 1 || o->batch > 4096) return ldm_error("--batch %d: 1..4096", o->batch);
    if (!(o->lr > 0 && o->lr < 1)) return ldm_error("--lr %g: in (0, 1)", o->lr);
    if (o->n_images < 1 || o->n_images > 10000000)
        return ldm_error("--n-images %lld: 1..1e7", (long long)o->n_images);
    if (o->seed < 0 || o->seed > 0xffffffffLL) return ldm_error("--seed %lld: 0..2^32-1", (long long)o->seed);
    if (o->save_every < 0) return ldm_error("--save-every %lld: >= 0", (long long)o->save_every);
    if (o->stop_at < 0) return ldm_error("--stop-at %lld: >= 0", (long long)o->stop_at);
    if (o->vae_crop < 8 || o->vae_crop > IMG || o->vae_crop % 8)
        return ldm_error("--vae-crop %d: a multiple of 8 in 8..64", o->vae_crop);
    if (o->vae_full_steps < 0) return ldm_error("--vae-full-steps %lld: >= 0", (long long)o->vae_full_steps);
    if (!(o->kl_weight >= 0) || !(o->obj_weight > 0))
        return ldm_error("--kl-weight >= 0 and --obj-weight > 0 (got %g, %g)", o->kl_weight, o->obj_weight);
    if (!(o->min_snr >= 0) || !(o->cond_drop >= 0 && o->cond_drop <= 1) || !(o->ema >= 0 && o->ema < 1))
        return ldm_error("--min-snr >= 0, --cond-drop in [0,1], --ema in [0,1) (got %g, %g, %g)",
                         o->min_snr, o->cond_drop, o->ema);
    if (o->stage == LDM_TRAIN_UNET && (!o->init || !*o->init))
        return ldm_error("--stage unet needs --init DIR: a folder with the stage-1 autoencoder "
                         "(vae/), e.g. the --out of `sd train --stage vae`");
    if (o->init) {
        char p[4096 + 16];
        snprintf(p, sizeof p, "%s/vae/config.json", o->init);
        if (!ldm_is_file(p))
            return ldm_error("--init %s: no vae/config.json there (a diffusers folder with the "
                             "autoencoder is needed)", o->init);
    }
    return 0;
}

// The settings a resumed run must share with the run it continues (JSON).
static char *settings_json(const ldm_train_options *o) {
    char *s = NULL;
    int n;
    if (o->stage == LDM_TRAIN_VAE)
        n = asprintf(&s, "{\"stage\": \"vae\", \"seed\": %lld, \"n_images\": %lld, \"batch\": %d, "
                         "\"lr\": %.17g, \"steps\": %lld, \"vae_crop\": %d, \"vae_full_steps\": %lld, "
                         "\"kl_weight\": %.17g, \"obj_weight\": %.17g, \"init\": \"%s\"}",
                     (long long)o->seed, (long long)o->n_images, o->batch, o->lr, (long long)o->steps,
                     o->vae_crop, (long long)o->vae_full_steps, o->kl_weight, o->obj_weight,
                     o->init ? o->init : "");
    else   // the lr is constant after warm-up: --steps may grow on resume
        n = asprintf(&s, "{\"stage\": \"unet\", \"seed\": %lld, \"n_images\": %lld, \"batch\": %d, "
                         "\"lr\": %.17g, \"min_snr\": %.17g, \"cond_drop\": %.17g, \"ema\": %.17g}",
                     (long long)o->seed, (long long)o->n_images, o->batch, o->lr, o->min_snr,
                     o->cond_drop, o->ema);
    return n < 0 ? NULL : s;
}

// ---- the data -------------------------------------------------------------------------

typedef struct dataset {
    int64_t n;
    uint8_t *rgb;              // [n, 64, 64, 3]
    int32_t *ids_en, *ids_ja;  // [n, 77] caption ids (stage 2)
    int32_t ids_empty[CTX];    // the empty caption
} dataset;

static void dataset_free(dataset *d) {
    free(d->rgb), free(d->ids_en), free(d->ids_ja);
    memset(d, 0, sizeof *d);
}

// SD1 conditioning ids: [SOT] + BPE ids (<= 75) + [EOT], padded with EOT.
static int tokenize(int32_t *out, ldm_tokenizer *tok, const char *text) {
    int *ids = NULL, n = 0, ctx[CTX];
    if (ldm_tokenizer_encode(tok, &ids, &n, text, strlen(text))) return LDM_ERR;
    ldm_tokenizer_context(ctx, CTX, LDM_TOKEN_EOT, ids, n);
    free(ids);
    for (int i = 0; i < CTX; i++) out[i] = ctx[i];
    return 0;
}

// The scenes of dataset.make_dataset(seed, n): pixels, and (captions) ids.
static int dataset_make(dataset *d, const ldm_train_options *o, int captions) {
    memset(d, 0, sizeof *d);
    d->n = o->n_images;
    size_t img = (size_t)IMG * IMG * 3;
    d->rgb = malloc((size_t)d->n * img);
    if (captions) {
        d->ids_en = malloc((size_t)d->n * CTX * sizeof(int32_t));
        d->ids_ja = malloc((size_t)d->n * CTX * sizeof(int32_t));
    }
    if (!d->rgb || (captions && (!d->ids_en || !d->ids_ja))) {
        dataset_free(d);
        return ldm_error("dataset: out of memory for %lld images", (long long)d->n);
    }
    ldm_tokenizer *tok = NULL;
    if (captions && ldm_tokenizer_load(&tok, o->vocab)) {
        dataset_free(d);
        return LDM_ERR;
    }
    int rc = 0;
    char buf[512];
    for (int64_t i = 0; i < d->n && !rc; i++) {
        ldm_shapes_scene s;
        rc = ldm_shapes_make_scene(&s, (uint64_t)o->seed, i);
        if (rc) break;
        ldm_shapes_render(d->rgb + (size_t)i * img, &s);
        if (!captions) continue;
        rc = ldm_shapes_caption_en(buf, sizeof buf, &s) < 0 ||
             tokenize(d->ids_en + i * CTX, tok, buf) ||
             ldm_shapes_caption_ja(buf, sizeof buf, &s) < 0 ||
             tokenize(d->ids_ja + i * CTX, tok, buf) ? LDM_ERR : 0;
    }
    if (!rc && captions) rc = tokenize(d->ids_empty, tok, "");
    if (tok) ldm_tokenizer_free(tok);
    if (rc) dataset_free(d);
    return rc;
}

// Image i as x [3, 64, 64] in [-1, 1]: p / 127.5 - 1 in float32, as the recipe.
static void image_to_x(float *x, const uint8_t *rgb) {
    for (int c = 0; c < 3; c++)
        for (int p = 0; p < IMG * IMG; p++) x[c * IMG * IMG + p] = (float)rgb[p * 3 + c] / 127.5f - 1.0f;
}

// ---- shared step machinery ------------------------------------------------------------

typedef struct run {
    const ldm_train_options *o;
    ldm_params params;
    ldm_train_state st;
    ldm_adamw_config adam;
    int64_t warmup;
    float **grads;            // [params.n] gradient arrays (clipping)
    int64_t *sizes;           // [params.n]
    FILE *log;
    const char *const *loss_names;
    int64_t first_step;       // the step this process started at (progress)
    double t0;                // wall clock at that step
} run;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int run_init_arrays(run *r) {
    r->grads = calloc((size_t)r->params.n, sizeof *r->grads);
    r->sizes = calloc((size_t)r->params.n, sizeof *r->sizes);
    if (!r->grads || !r->sizes) return ldm_error("out of memory");
    for (int i = 0; i < r->params.n; i++)
        r->grads[i] = r->params.p[i].g->data, r->sizes[i] = r->params.p[i].g->numel;
    return 0;
}

// After the backward: the mean over the processes of the gradients and of
// the losses (data parallel, ldm/train/dist.h: nothing in one process), clip
// the global gradient norm at 1, one Adam(W) step at the warmed-up lr, the
// EMA (stage 2), step++, the losses logged.
static int optimizer_step(run *r, float *terms) {
    int world = ldm_dist_world();
    if (world > 1) {
        if (ldm_dist_allreduce_grads(&r->params)) return LDM_ERR;
        double sum[LDM_TRAIN_MAX_LOSSES];
        for (int k = 0; k < r->st.n_loss; k++) sum[k] = terms[k];
        if (ldm_dist_allreduce_sum_double(sum, r->st.n_loss)) return LDM_ERR;
        for (int k = 0; k < r->st.n_loss; k++) terms[k] = (float)(sum[k] / world);
    }
    ldm_clip_grad_norm(r->grads, r->sizes, r->params.n, 1.0);
    double lr = ldm_lr_warmup(r->o->lr, r->st.step, r->warmup);
    int64_t t = r->st.step + 1, off = 0;
    for (int i = 0; i < r->params.n; off += r->sizes[i], i++)
        ldm_adamw_update(r->params.p[i].w->data, r->st.m + off, r->st.v + off, r->grads[i],
                         r->sizes[i], &r->adam, lr, t);
    if (r->st.ema) {
        double decay = ldm_ema_decay(t, r->o->ema);
        off = 0;
        for (int i = 0; i < r->params.n; off += r->sizes[i], i++)
            ldm_ema_update(r->st.ema + off, r->params.p[i].w->data, r->sizes[i], decay);
    }
    r->st.step = t;
    if (ldm_train_state_log(&r->st, terms)) return LDM_ERR;
    if (r->log) {
        fprintf(r->log, "%lld", (long long)t);
        for (int k = 0; k < r->st.n_loss; k++) fprintf(r->log, "\t%.7g", terms[k]);
        fprintf(r->log, "\n");
        fflush(r->log);
    }
    // progress at the first step, every 25 steps and at the end: means of the last 25 steps
    FILE *pf = r->o->progress;
    if (pf && (t % 25 == 0 || t == r->o->steps || t == r->first_step + 1)) {
        double el = now() - r->t0, sps = el / (double)(t - r->first_step);
        double eta = sps * (double)(r->o->steps - t);
        fprintf(pf, "%s step %lld/%lld", r->st.stage, (long long)t, (long long)r->o->steps);
        int64_t k0 = t > 25 ? t - 25 : 0;
        for (int k = 0; k < r->st.n_loss; k++) {
            double s = 0;
            for (int64_t j = k0; j < t; j++) s += r->st.losses[j * r->st.n_loss + k];
            fprintf(pf, "  %s %.5g", r->loss_names[k], s / (double)(t - k0));
        }
        fprintf(pf, "  %.2f s/step  ETA %dm%02ds\n", sps, (int)(eta / 60), (int)fmod(eta, 60));
        fflush(pf);
    }
    return 0;
}

// ---- stage 1: the autoencoder -------------------------------------------------------------

typedef struct vae_run {
    run r;
    ldm_vae vae;
    ldm_vae_trainer tr;
    const dataset *data;
} vae_run;

// Data parallel, stage 1: the reconstruction term is normalised by the sum
// of the loss weights w over the batch, not a mean of per-image terms, so a
// slice's gradient (normalised by the slice's sum) is rescaled by
// world * (slice's sum of w) / (batch's sum of w): then the mean over the
// processes is the batch's gradient (ldm/train/dist.h). dy[n] in place.
static void rec_grad_to_batch(float *dy, int64_t n, const float *w, int64_t b0, int64_t Bl,
                              int64_t B, int64_t S) {
    double slice = 0, batch = 0;
    for (int64_t i = 0; i < B * S; i++) {
        batch += w[i];
        if (i >= b0 * S && i < (b0 + Bl) * S) slice += w[i];
    }
    float f = (float)(ldm_dist_world() * slice / batch);
    for (int64_t i = 0; i < n; i++) dy[i] *= f;
}

static int vae_step(vae_run *v) {
    const ldm_train_options *o = v->r.o;
    const struct ldm_ops *ops = v->vae.ops;
    ldm_rng *g = &v->r.st.rng;
    int full = v->r.st.step >= o->steps - o->vae_full_steps;
    int crop = full ? IMG : o->vae_crop, B = full ? (o->batch / 4 > 0 ? o->batch / 4 : 1) : o->batch;
    int64_t f = (int64_t)1 << (v->vae.cfg.n_levels - 1);   // the VAE's downsampling factor
    int64_t S = (int64_t)crop * crop, h = crop / f, Z = v->vae.cfg.latent_channels;
    int64_t idx[4096], oy[4096], ox[4096];
    // Every process draws the whole batch (the generator stays the same on
    // all) and computes on its slice [b0, b0 + Bl): all of it in one process.
    int64_t b0, Bl;
    if (ldm_dist_shard(&b0, &Bl, B)) return LDM_ERR;
    if (ldm_rng_randint(g, idx, B, 0, v->data->n)) return LDM_ERR;
    // x [B,3,64,64], the loss weights m [B,1,64,64], then the crops
    float *full_x = malloc((size_t)B * 3 * IMG * IMG * sizeof(float));
    float *xb = malloc((size_t)B * 3 * S * sizeof(float)), *wb = malloc((size_t)B * S * sizeof(float));
    float *noise = malloc((size_t)B * Z * h * h * sizeof(float));
    float *zb = malloc((size_t)B * Z * h * h * sizeof(float));
    ldm_tensor x = {0}, moments = {0}, z = {0}, y = {0}, dy = {0}, dz = {0}, dm = {0};
    int rc = full_x && xb && wb && noise && zb ? 0 : ldm_error("vae step: out of memory");
    if (!rc && crop < IMG) {
        int64_t n = (IMG - crop) / 8 + 1;
        rc = ldm_rng_randint(g, oy, B, 0, n) || ldm_rng_randint(g, ox, B, 0, n) ? LDM_ERR : 0;
    }
    for (int b = 0; b < B && !rc; b++) {
        float *xi = full_x + (size_t)b * 3 * IMG * IMG;
        image_to_x(xi, v->data->rgb + (size_t)idx[b] * IMG * IMG * 3);
        int y0 = crop < IMG ? (int)oy[b] * 8 : 0, x0 = crop < IMG ? (int)ox[b] * 8 : 0;
        for (int yy = 0; yy < crop; yy++)
            for (int xx = 0; xx < crop; xx++) {
                int p = (y0 + yy) * IMG + (x0 + xx);
                // a shape pixel differs from the corner colour by more than 0.1 in some channel
                float d = 0;
                for (int c = 0; c < 3; c++) {
                    float e = fabsf(xi[c * IMG * IMG + p] - xi[c * IMG * IMG]);
                    if (e > d) d = e;
                    xb[((size_t)b * 3 + c) * S + yy * crop + xx] = xi[c * IMG * IMG + p];
                }
                float obj = d > 0.1f ? 1.0f : 0.0f;
                wb[(size_t)b * S + yy * crop + xx] = 1.0f + ((float)o->obj_weight - 1.0f) * obj;
            }
    }
    if (!rc) {
        x = ldm_tensor_new(ops, LDM_SHAPE(Bl, 3, crop, crop));
        rc = x.data ? 0 : LDM_ERR;
    }
    if (!rc) {
        ldm_tensor_from_host(&x, xb + b0 * 3 * S);
        rc = ldm_vae_train_encode(&moments, &v->tr, &x);
    }
    float terms[3];
    if (!rc) {
        ldm_rng_randn(g, noise, B * Z * h * h);
        ldm_vae_posterior(zb, moments.data, noise + b0 * Z * h * h, Bl, Z, h * h);   // z = mean + std * noise
        z = ldm_tensor_new(ops, LDM_SHAPE(Bl, Z, h, h));
        rc = z.data ? 0 : LDM_ERR;
    }
    if (!rc) {
        ldm_tensor_from_host(&z, zb);
        rc = ldm_vae_train_decode(&y, &v->tr, &z);
    }
    if (!rc) {
        dy = ldm_tensor_zeros(ops, y.shape, y.ndim);
        dz = ldm_tensor_zeros(ops, z.shape, z.ndim);
        dm = ldm_tensor_zeros(ops, moments.shape, moments.ndim);
        rc = dy.data && dz.data && dm.data ? 0 : LDM_ERR;
    }
    if (!rc) {
        double l1, l2;
        ldm_loss_vae_rec(dy.data, &l1, &l2, y.data, xb + b0 * 3 * S, wb + b0 * S, Bl, 3, S);
        if (Bl < B) rec_grad_to_batch(dy.data, dy.numel, wb, b0, Bl, B, S);
        double kl = ldm_loss_vae_kl(dm.data, moments.data, o->kl_weight, Bl, Z, h * h);
        terms[0] = (float)l1, terms[1] = (float)l2, terms[2] = (float)kl;
        ldm_params_zero_grad(&v->r.params);
        rc = ldm_vae_train_backward_decode(&dz, &v->tr, &dy);
    }
    if (!rc) {
        ldm_vae_posterior_backward(dm.data, dz.data, moments.data, noise + b0 * Z * h * h, Bl, Z, h * h);
        rc = ldm_vae_train_backward_encode(&v->tr, &dm);
    }
    if (!rc) rc = optimizer_step(&v->r, terms);
    ldm_tensor *ts[] = {&x, &moments, &z, &y, &dy, &dz, &dm};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ldm_tensor_free(ts[i]);
    free(full_x), free(xb), free(wb), free(noise), free(zb);
    return rc;
}

// Posterior mean and std of every image: mean, std [n, per = Z*h*w] (malloc'ed).
static int encode_all(float **mean, float **std, int64_t *per_out, ldm_vae_trainer *tr,
                      const dataset *d) {
    const struct ldm_ops *ops = tr->model->ops;
    int64_t Z = tr->model->cfg.latent_channels, f = 1;
    for (int i = 1; i < tr->model->cfg.n_levels; i++) f *= 2;
    int64_t S = (IMG / f) * (IMG / f), per = Z * S;
    *per_out = per;
    *mean = malloc((size_t)(d->n * per) * sizeof(float));
    *std = malloc((size_t)(d->n * per) * sizeof(float));
    float *xb = malloc((size_t)ENC_CHUNK * 3 * IMG * IMG * sizeof(float));
    int rc = *mean && *std && xb ? 0 : ldm_error("latents: out of memory");
    for (int64_t i0 = 0; i0 < d->n && !rc; i0 += ENC_CHUNK) {
        int64_t B = d->n - i0 < ENC_CHUNK ? d->n - i0 : ENC_CHUNK;
        for (int64_t b = 0; b < B; b++)
            image_to_x(xb + b * 3 * IMG * IMG, d->rgb + (size_t)(i0 + b) * IMG * IMG * 3);
        ldm_tensor x = ldm_tensor_new(ops, LDM_SHAPE(B, 3, IMG, IMG)), m = {0};
        rc = x.data ? 0 : LDM_ERR;
        if (!rc) {
            ldm_tensor_from_host(&x, xb);
            rc = ldm_vae_train_encode(&m, tr, &x);
        }
        for (int64_t b = 0; b < B && !rc; b++)
            for (int64_t j = 0; j < per; j++) {   // diffusers: std = exp(0.5 clamp(logvar, -30, 20))
                float lv = fminf(fmaxf(m.data[b * 2 * per + per + j], -30.0f), 20.0f);
                (*mean)[(i0 + b) * per + j] = m.data[b * 2 * per + j];
                (*std)[(i0 + b) * per + j] = expf(0.5f * lv);
            }
        ldm_tensor_free(&x), ldm_tensor_free(&m);
    }
    free(xb);
    if (rc) free(*mean), free(*std), *mean = *std = NULL;
    return rc;
}

// scale = 1 / std(z), z = mean + std * noise over every image (LDM sec. 4.3.2).
static int latent_scale(float *scale, vae_run *v) {
    float *mean, *std;
    int64_t per;
    if (encode_all(&mean, &std, &per, &v->tr, v->data)) return LDM_ERR;
    int64_t n = v->data->n * per;
    float *noise = malloc((size_t)n * sizeof(float));
    if (!noise) { free(mean), free(std); return ldm_error("latents: out of memory"); }
    ldm_rng g;
    ldm_rng_init(&g, LDM_RNG_CPU, (uint64_t)v->r.o->seed);
    ldm_rng_randn(&g, noise, n);
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double z = (double)mean[i] + (double)std[i] * noise[i];
        s += z, s2 += z * z;
    }
    double m = s / (double)n, var = s2 / (double)n - m * m;
    *scale = (float)(1.0 / sqrt(var > 0 ? var : 1.0));
    free(mean), free(std), free(noise);
    return 0;
}

// ---- stage 2: the denoiser and the text encoder -------------------------------------------

typedef struct unet_run {
    run r;
    ldm_unet unet;
    ldm_clip clip;
    ldm_unet_trainer tu;
    ldm_clip_trainer tc;
    const dataset *data;
    float *mean, *std;        // [n, per] posterior of every image
    int64_t per, h;           // Z*h*h, latent side
    float scale;
    float abar[1000], wt[1000];
} unet_run;

static int unet_step(unet_run *u) {
    const ldm_train_options *o = u->r.o;
    const struct ldm_ops *ops = u->unet.ops;
    ldm_rng *g = &u->r.st.rng;
    int B = o->batch;
    int64_t per = u->per, Z = u->unet.cfg.in_channels, D = u->clip.cfg.hidden_size;
    int64_t idx[4096], t[4096];
    float ja[4096], drop[4096], tf[4096], wb[4096];
    // Every process draws the whole batch (the generator stays the same on
    // all) and computes on its slice [b0, b0 + Bl): all of it in one process.
    int64_t b0, Bl;
    if (ldm_dist_shard(&b0, &Bl, B)) return LDM_ERR;
    float *zb = malloc((size_t)(B * per) * sizeof(float)), *eps = malloc((size_t)(B * per) * sizeof(float));
    float *zt = malloc((size_t)(B * per) * sizeof(float));
    int32_t *ids = malloc((size_t)B * CTX * sizeof(int32_t));
    ldm_tensor x = {0}, ctx = {0}, pred = {0}, dpred = {0}, dctx = {0};
    int rc = zb && eps && zt && ids ? 0 : ldm_error("unet step: out of memory");
    // the draws, in train_tiny.py's order
    if (!rc) rc = ldm_rng_randint(g, idx, B, 0, u->data->n);
    if (!rc) {
        ldm_rng_randn(g, zb, B * per);
        for (int b = 0; b < B; b++)
            for (int64_t j = 0; j < per; j++) {
                float *zj = &zb[b * per + j];
                float a = u->std[idx[b] * per + j] * *zj;
                *zj = (u->mean[idx[b] * per + j] + a) * u->scale;
            }
        rc = ldm_rng_rand(g, ja, B) || ldm_rng_rand(g, drop, B) ||
             ldm_rng_randint(g, t, B, 0, 1000) ? LDM_ERR : 0;
    }
    if (!rc) {
        ldm_rng_randn(g, eps, B * per);
        for (int b = 0; b < B; b++) {
            const int32_t *src = drop[b] < (float)o->cond_drop ? u->data->ids_empty
                                 : ja[b] < 0.5f ? u->data->ids_ja + idx[b] * CTX
                                                : u->data->ids_en + idx[b] * CTX;
            memcpy(ids + b * CTX, src, CTX * sizeof(int32_t));
            // z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps  (DDPM eq. 4, float32 as diffusers add_noise)
            float a = sqrtf(u->abar[t[b]]), c = sqrtf(1.0f - u->abar[t[b]]);
            for (int64_t j = 0; j < per; j++) {
                float az = a * zb[b * per + j], ce = c * eps[b * per + j];
                zt[b * per + j] = az + ce;
            }
            tf[b] = (float)t[b];
            wb[b] = u->wt[t[b]];
        }
        rc = ldm_clip_train_forward(&ctx, &u->tc, ids + b0 * CTX, (int)Bl, CTX);   // tau_theta(y) [Bl,77,D]
    }
    if (!rc) {
        int64_t h = u->h;
        x = ldm_tensor_new(ops, LDM_SHAPE(Bl, Z, h, h));
        pred = ldm_tensor_new(ops, LDM_SHAPE(Bl, Z, h, h));
        rc = x.data && pred.data ? 0 : LDM_ERR;
        if (!rc) {
            ldm_tensor_from_host(&x, zt + b0 * per);
            rc = ldm_unet_train_forward(&pred, &u->tu, &x, tf + b0, &ctx);   // eps_theta(z_t, t, tau)
        }
    }
    float terms[2];
    if (!rc) {
        dpred = ldm_tensor_zeros(ops, pred.shape, pred.ndim);
        dctx = ldm_tensor_zeros(ops, LDM_SHAPE(Bl, CTX, D));
        rc = dpred.data && dctx.data ? 0 : LDM_ERR;
    }
    if (!rc) {
        double mse;
        double loss = ldm_loss_eps(dpred.data, &mse, pred.data, eps + b0 * per, wb + b0, Bl, per);   // LDM eq. 2
        terms[0] = (float)mse, terms[1] = (float)loss;
        ldm_params_zero_grad(&u->r.params);
        rc = ldm_unet_train_backward(&dctx, &u->tu, &dpred);
    }
    if (!rc) rc = ldm_clip_train_backward(&u->tc, &dctx);
    if (!rc) rc = optimizer_step(&u->r, terms);
    ldm_tensor *ts[] = {&x, &ctx, &pred, &dpred, &dctx};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) ldm_tensor_free(ts[i]);
    free(zb), free(eps), free(zt), free(ids);
    return rc;
}

// ---- the driver ---------------------------------------------------------------------------

// mkdir -p
static int make_dir(const char *path) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return ldm_error("%s: path too long", path);
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s) continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && !(errno == EEXIST && ldm_is_dir(p)))
            return ldm_error("%s: cannot create the folder: %s", p, strerror(errno));
        if (!(*s = c)) break;
    }
    return 0;
}

// The loss history as OUT/losses-<stage>.tsv (step, terms).
static int write_losses(const char *path, const ldm_train_state *st, const char *const *names) {
    char tmp[4096 + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return ldm_error("%s: cannot create: %s", tmp, strerror(errno));
    fprintf(f, "step");
    for (int k = 0; k < st->n_loss; k++) fprintf(f, "\t%s", names[k]);
    fprintf(f, "\n");
    for (int64_t i = 0; i < st->step; i++) {
        fprintf(f, "%lld", (long long)(i + 1));
        for (int k = 0; k < st->n_loss; k++) fprintf(f, "\t%.7g", st->losses[i * st->n_loss + k]);
        fprintf(f, "\n");
    }
    int bad = fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) return ldm_error("%s: write failed", path);
    return 0;
}

// Column k (1-based, after the step) of a losses TSV: *n values (malloc'ed), or NULL.
static float *read_column(const char *path, int k, int64_t *n) {
    char *text = ldm_is_file(path) ? ldm_read_text(path, 1 << 28) : NULL;
    if (!text) return NULL;
    int64_t cap = 1024;
    float *v = malloc((size_t)cap * sizeof(float));
    *n = 0;
    char *line = strchr(text, '\n');   // skip the header
    while (v && line && *++line) {
        char *p = line;
        for (int c = 0; c < k && p; c++) p = strchr(p, '\t'), p = p ? p + 1 : NULL;
        if (!p) break;
        if (*n == cap) {
            float *nv = realloc(v, (size_t)(cap *= 2) * sizeof(float));
            if (!nv) { free(v); v = NULL; break; }
            v = nv;
        }
        v[(*n)++] = strtof(p, NULL);
        line = strchr(line, '\n');
    }
    free(text);
    return v;
}

// OUT/loss_curves.png: stage 1's panel (OUT/losses-vae.tsv) and stage 2's
// (OUT/losses-unet.tsv), whichever exist.
static int plot_curves(const char *out) {
    char p[2][4096 + 32], png[4096 + 32];
    snprintf(p[0], sizeof p[0], "%s/losses-vae.tsv", out);
    snprintf(p[1], sizeof p[1], "%s/losses-unet.tsv", out);
    snprintf(png, sizeof png, "%s/loss_curves.png", out);
    ldm_plot_panel panels[2];
    float *cols[4] = {0};
    int np = 0;
    int64_t n;
    if ((cols[0] = read_column(p[0], 1, &n)) && (cols[1] = read_column(p[0], 2, &n)))
        panels[np++] = (ldm_plot_panel){"stage 1: autoencoder", {{"L1", cols[0], n}, {"MSE", cols[1], n}}, 2};
    if ((cols[2] = read_column(p[1], 1, &n)) && (cols[3] = read_column(p[1], 2, &n)))
        panels[np++] = (ldm_plot_panel){"stage 2: UNet (noise prediction)",
                                        {{"eps MSE", cols[2], n}, {"min-SNR weighted", cols[3], n}}, 2};
    int rc = np ? ldm_plot_loss_png(png, panels, np) : 0;
    for (int i = 0; i < 4; i++) free(cols[i]);
    return rc;
}

static const char *const vae_loss_names[3] = {"l1", "l2", "kl"};
static const char *const unet_loss_names[2] = {"mse", "weighted"};

// Open --log: rewritten from the history (a resumed run continues it).
// Process 0 writes every output (ldm/train/dist.h).
static int open_log(run *r) {
    if (!r->o->log || ldm_dist_rank() != 0) return 0;
    if (write_losses(r->o->log, &r->st, r->loss_names)) return LDM_ERR;
    r->log = fopen(r->o->log, "a");
    return r->log ? 0 : ldm_error("%s: cannot append: %s", r->o->log, strerror(errno));
}

// Resume (when asked and there is a state), then the loop with checkpoints.
// Several processes (ldm/train/dist.h): they start from process 0's weights,
// each resumes from the train-state (which they must all see, e.g. on a
// shared file system: they check that they agree on the step), and process 0
// writes the checkpoints and the log.
static int loop(run *r, const char *state_dir, int (*step)(void *), void *ctx) {
    const ldm_train_options *o = r->o;
    int writer = ldm_dist_rank() == 0;
    if (ldm_dist_broadcast_weights(&r->params, 0)) return LDM_ERR;
    if (o->resume && ldm_checkpoint_exists(state_dir)) {
        if (ldm_checkpoint_load(state_dir, &r->params, &r->st)) return LDM_ERR;
        if (o->progress) fprintf(o->progress, "%s: resumed at step %lld\n", r->st.stage, (long long)r->st.step);
    } else if (o->resume && o->progress) {
        fprintf(o->progress, "%s: no checkpoint in %s yet: starting at step 0\n", r->st.stage, state_dir);
    }
    double steps = (double)r->st.step;
    if (ldm_dist_allreduce_sum_double(&steps, 1)) return LDM_ERR;
    if (steps != (double)r->st.step * ldm_dist_world())
        return ldm_error("process %d starts at step %lld, not every process does: --resume needs "
                         "%s readable by every process", ldm_dist_rank(), (long long)r->st.step,
                         state_dir);
    if (open_log(r)) return LDM_ERR;
    r->first_step = r->st.step;
    r->t0 = now();
    int rc = 0;
    while (r->st.step < o->steps && !(o->stop_at && r->st.step >= o->stop_at) && !rc) {
        rc = step(ctx);
        if (!rc && writer && (r->st.step == o->steps || r->st.step == o->stop_at ||
                    (o->save_every && r->st.step % o->save_every == 0)))
            rc = ldm_checkpoint_save(state_dir, &r->params, &r->st);
    }
    if (r->log) fclose(r->log), r->log = NULL;
    if (!rc && r->st.step < o->steps) {   // --stop-at: the state is saved, no export
        if (o->progress) fprintf(o->progress, "%s: stopped at step %lld of %lld (checkpoint in %s; "
                                 "--resume continues)\n", r->st.stage, (long long)r->st.step,
                                 (long long)o->steps, state_dir);
        return 1;
    }
    return rc;
}

static int vae_step_cb(void *v) { return vae_step(v); }
static int unet_step_cb(void *u) { return unet_step(u); }

static void run_free(run *r) {
    ldm_params_free(&r->params);
    ldm_train_state_free(&r->st);
    free(r->grads), free(r->sizes);
    if (r->log) fclose(r->log);
}

static int train_vae(const ldm_train_options *o, const struct ldm_ops *ops, const char *state_dir) {
    vae_run v;
    memset(&v, 0, sizeof v);
    v.r.o = o;
    v.r.warmup = 50;
    v.r.adam = (ldm_adamw_config){0.9, 0.99, 1e-8, 0.0};   // torch.optim.Adam
    v.r.loss_names = vae_loss_names;
    dataset d;
    if (dataset_make(&d, o, 0)) return LDM_ERR;
    v.data = &d;
    ldm_vae_config cfg;
    ldm_rng g;
    ldm_rng_init(&g, LDM_RNG_CPU, (uint64_t)o->seed);   // train_tiny: torch.manual_seed(seed)
    int rc = 0, loaded = 0, trainer = 0;
    if (o->init) {   // starting weights from a folder
        ldm_vae_file vf;
        rc = ldm_vae_file_open(&vf, o->init, ops);
        if (!rc) {
            cfg = vf.cfg;
            rc = ldm_vae_load(&v.vae, &cfg, &vf.w, LDM_VAE_ENCODER | LDM_VAE_DECODER);
            ldm_vae_file_close(&vf);
        }
    } else {
        rc = ldm_train_tiny_configs(NULL, &cfg, NULL) || ldm_vae_init_torch(&v.vae, &cfg, &g, ops);
    }
    loaded = rc == 0;
    if (!rc) rc = ldm_vae_trainer_init(&v.tr, &v.vae);
    trainer = rc == 0 && loaded;
    if (!rc) rc = ldm_vae_trainer_params(&v.tr, &v.r.params, "vae.");
    if (!rc) rc = ldm_train_state_init(&v.r.st, &v.r.params, "vae", 0, 3);
    if (!rc) {
        v.r.st.settings = settings_json(o);
        ldm_rng_init(&v.r.st.rng, LDM_RNG_CPU, (uint64_t)o->seed * 1000 + 100);
        rc = run_init_arrays(&v.r);
    }
    if (!rc) rc = loop(&v.r, state_dir, vae_step_cb, &v);
    int stopped = rc == 1;   // --stop-at: no export
    if (stopped) rc = 0;
    if (ldm_dist_rank() != 0) stopped = 1;   // process 0 exports
    float scale = 0;
    if (!rc && !stopped) rc = latent_scale(&scale, &v);
    char path[4096 + 32];
    if (!rc && !stopped) {
        cfg.scaling_factor = scale;
        if (o->progress) fprintf(o->progress, "vae: scaling_factor 1/std(z) = %.5f\n", scale);
        ldm_export_spec spec = {.params = &v.r.params, .vae = &cfg};
        rc = ldm_export_model(o->out, &spec);
    }
    if (!rc && !stopped) {
        snprintf(path, sizeof path, "%s/losses-vae.tsv", o->out);
        rc = write_losses(path, &v.r.st, vae_loss_names) || plot_curves(o->out) ? LDM_ERR : 0;
    }
    run_free(&v.r);
    if (trainer) ldm_vae_trainer_free(&v.tr);
    if (loaded) ldm_vae_free(&v.vae);
    dataset_free(&d);
    return rc ? LDM_ERR : 0;
}

static int train_unet(const ldm_train_options *o, const struct ldm_ops *ops, const char *state_dir) {
    unet_run u;
    memset(&u, 0, sizeof u);
    u.r.o = o;
    u.r.warmup = 200;
    u.r.adam = (ldm_adamw_config){0.9, 0.99, 1e-8, 0.0};   // AdamW, weight decay 0
    u.r.loss_names = unet_loss_names;
    dataset d;
    if (dataset_make(&d, o, 1)) return LDM_ERR;
    u.data = &d;
    // the latents: posterior of every image under the stage-1 VAE, its scaling_factor
    ldm_vae_file vf;
    ldm_vae vae;
    ldm_vae_trainer tv;
    int rc = ldm_vae_file_open(&vf, o->init, ops);
    if (rc) { dataset_free(&d); return LDM_ERR; }
    rc = ldm_vae_load(&vae, &vf.cfg, &vf.w, LDM_VAE_ENCODER | LDM_VAE_DECODER);
    u.scale = vf.cfg.scaling_factor;
    ldm_vae_file_close(&vf);
    if (!rc) {
        if (o->progress) fprintf(o->progress, "unet: encoding %lld images with %s/vae\n",
                                 (long long)d.n, o->init);
        rc = ldm_vae_trainer_init(&tv, &vae);
        if (!rc) {
            rc = encode_all(&u.mean, &u.std, &u.per, &tv, &d);
            ldm_vae_trainer_free(&tv);
        }
        ldm_vae_free(&vae);
    }
    u.h = (int64_t)sqrt((double)(u.per / 4));   // the latent side (4 channels)
    // the models from scratch: torch.manual_seed(seed + 1), UNet then text encoder
    ldm_unet_config ucfg;
    ldm_clip_config ccfg;
    ldm_rng g;
    ldm_rng_init(&g, LDM_RNG_CPU, (uint64_t)o->seed + 1);
    int have_u = 0, have_c = 0, have_tu = 0, have_tc = 0;
    char p1[4096 + 32], p2[4096 + 32];
    snprintf(p1, sizeof p1, "%s/unet/config.json", o->init);
    snprintf(p2, sizeof p2, "%s/text_encoder/config.json", o->init);
    if (!rc && ldm_is_file(p1) && ldm_is_file(p2)) {   // starting weights from --init
        ldm_model m;
        rc = ldm_model_open(&m, o->init, &(ldm_model_options){.ops = ops});
        if (!rc) {
            ldm_model_set_residency(&m, LDM_WEIGHTS_F32, 0);
            m.unet_w.map = m.clip_w.map = 0;   // copies: the file closes below
            ucfg = m.unet, ccfg = m.clip;
            if (!rc) have_u = (rc = ldm_unet_load(&u.unet, &ucfg, &m.unet_w)) == 0;
            if (!rc) have_c = (rc = ldm_clip_load(&u.clip, &m.clip_w, &ccfg)) == 0;
            ldm_model_close(&m);
        }
    } else if (!rc) {
        rc = ldm_train_tiny_configs(&ucfg, NULL, &ccfg);
        if (!rc) have_u = (rc = ldm_unet_init_torch(&u.unet, &ucfg, &g, ops)) == 0;
        if (!rc) have_c = (rc = ldm_clip_init_torch(&u.clip, &ccfg, &g, ops)) == 0;
    }
    if (!rc) have_tu = (rc = ldm_unet_trainer_init(&u.tu, &u.unet)) == 0;
    if (!rc) have_tc = (rc = ldm_clip_trainer_init(&u.tc, &u.clip)) == 0;
    if (!rc) rc = ldm_unet_trainer_params(&u.tu, &u.r.params, "unet.");
    if (!rc) rc = ldm_clip_trainer_params(&u.tc, &u.r.params, "text_encoder.");
    if (!rc) rc = ldm_train_state_init(&u.r.st, &u.r.params, "unet", 1, 2);
    if (!rc) {
        // SD's scaled-linear schedule in float32 (diffusers DDPMScheduler) and the min-SNR weights
        ldm_schedule s;
        ldm_schedule_init(&s, LDM_BETA_SCALED_LINEAR, LDM_SCHED_DIFFUSERS, 0.00085, 0.012, 1000);
        memcpy(u.abar, s.alphas_cumprod, sizeof u.abar);
        ldm_min_snr_weights(u.wt, u.abar, 1000, o->min_snr);
        u.r.st.settings = settings_json(o);
        ldm_rng_init(&u.r.st.rng, LDM_RNG_CPU, (uint64_t)o->seed * 1000 + 200);
        rc = run_init_arrays(&u.r);
    }
    if (!rc) rc = loop(&u.r, state_dir, unet_step_cb, &u);
    int stopped = rc == 1;   // --stop-at: no export
    if (stopped) rc = 0;
    if (ldm_dist_rank() != 0) stopped = 1;   // process 0 exports
    char path[4096 + 32], src[4096 + 32];
    if (!rc && !stopped) {   // the EMA weights, with the stage-1 VAE beside them
        ldm_export_spec spec = {.params = &u.r.params, .values = u.r.st.ema, .unet = &ucfg,
                                .clip = &ccfg, .vae_from = o->init};
        rc = ldm_export_model(o->out, &spec);
    }
    if (!rc && !stopped) {
        snprintf(path, sizeof path, "%s/losses-unet.tsv", o->out);
        rc = write_losses(path, &u.r.st, unet_loss_names);
        // stage 1's curves travel with its VAE, so the plot shows both stages
        snprintf(src, sizeof src, "%s/losses-vae.tsv", o->init);
        snprintf(path, sizeof path, "%s/losses-vae.tsv", o->out);
        if (!rc && ldm_is_file(src) && strcmp(src, path) != 0) {
            char *t = ldm_read_text(src, 1 << 28);
            if (t) rc = ldm_write_text_atomic(path, t);
            free(t);
        }
        if (!rc) rc = plot_curves(o->out);
    }
    run_free(&u.r);
    if (have_tc) ldm_clip_trainer_free(&u.tc);
    if (have_tu) ldm_unet_trainer_free(&u.tu);
    if (have_c) ldm_clip_free(&u.clip);
    if (have_u) ldm_unet_free(&u.unet);
    free(u.mean), free(u.std);
    dataset_free(&d);
    return rc ? LDM_ERR : 0;
}

int ldm_train_run(const ldm_train_options *o) {
    if (ldm_train_check(o)) return LDM_ERR;
    const struct ldm_ops *ops = o->ops ? o->ops : ldm_backend_default();
    if (!ldm_backend_can_train(ops)) return LDM_ERR;
    // data parallel: every step's batch (stage 1: also the --batch/4 of its
    // whole-image steps) splits into equal slices over the processes
    int64_t b0, Bl, full_batch = o->batch / 4 > 0 ? o->batch / 4 : 1;
    if (ldm_dist_shard(&b0, &Bl, o->batch) || (o->stage == LDM_TRAIN_VAE && o->vae_full_steps > 0 &&
                                               ldm_dist_shard(&b0, &Bl, full_batch))) {
        char why[256];
        snprintf(why, sizeof why, "%s", ldm_last_error());
        return ldm_error("--batch %d over %d processes: %s", o->batch, ldm_dist_world(), why);
    }
    char state_dir[4096 + 16];
    snprintf(state_dir, sizeof state_dir, "%s/train-state", o->out);
    if (ldm_dist_rank() == 0 && make_dir(o->out)) return LDM_ERR;
    return o->stage == LDM_TRAIN_VAE ? train_vae(o, ops, state_dir) : train_unet(o, ops, state_dir);
}
