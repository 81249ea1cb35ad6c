/*
 * ldm/pipeline.c -- txt2img / img2img: prompt weighting, guidance, the
 * sampling loop and decoding (see pipeline.h for the picture).
 *
 * Mirrors CompVis scripts/txt2img.py + img2img.py (guidance batch order,
 * strength), diffusers StableDiffusion(Img2Img)Pipeline (the numerical
 * reference of tests/test_pipeline.c) and AUTOMATIC1111's prompt syntax
 * (modules/prompt_parser.py parse_prompt_attention; modules/sd_hijack_clip.py
 * tokenize_line / process_tokens, "Original" emphasis, pad_cond_uncond).
 * Leaves out: inpainting, embeddings, prompt scheduling, hires fix.
 *
 * Order of this file: 1. prompt parsing, 2. chunking, 3. loading,
 * 4. prompt encoding, 5. the UNet callback, 6. generate.
 */
#include "ldm/pipeline.h"

#include <ctype.h>
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
// 1. Prompt attention syntax (A1111 parse_prompt_attention)
//
// The upstream function scans the prompt with one regex whose alternatives
// are, in order: \( \) \[ \] \\ (escapes), \ , ( , [ , ":" number ")" , ) , ] ,
// a run of ordinary text, ":". Here the same alternatives, by hand.

typedef struct piece_list {
    ldm_prompt_piece *p;
    double *w;          // weights in double while parsing (Python floats upstream)
    int n, cap;
} piece_list;

static int pl_push(piece_list *l, const char *text, size_t len, double w) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        ldm_prompt_piece *p = realloc(l->p, (size_t)cap * sizeof *p);
        if (!p) return ldm_error("prompt: out of memory");
        l->p = p;
        double *ww = realloc(l->w, (size_t)cap * sizeof *ww);
        if (!ww) return ldm_error("prompt: out of memory");
        l->w = ww;
        l->cap = cap;
    }
    char *s = malloc(len + 1);
    if (!s) return ldm_error("prompt: out of memory");
    memcpy(s, text, len);
    s[len] = '\0';
    l->p[l->n].text = s;
    l->w[l->n] = w;
    l->n++;
    return LDM_OK;
}

static int is_word(int c) { return isalnum(c) || c == '_' || c >= 0x80; }

// Ordinary text: split at the word BREAK (regex \s*\bBREAK\b\s*), pushing
// a piece of weight -1 between the parts.
static int push_text(piece_list *l, const char *s, size_t len) {
    size_t start = 0;
    for (size_t i = 0; i + 5 <= len; i++) {
        if (memcmp(s + i, "BREAK", 5) != 0) continue;
        if ((i > 0 && is_word((unsigned char)s[i - 1])) ||
            (i + 5 < len && is_word((unsigned char)s[i + 5])))
            continue;
        size_t a = i, b = i + 5;
        while (a > start && isspace((unsigned char)s[a - 1])) a--;
        while (b < len && isspace((unsigned char)s[b])) b++;
        if (pl_push(l, s + start, a - start, 1.0) || pl_push(l, "BREAK", 5, -1.0)) return LDM_ERR;
        start = b;
        i = b - 1;
    }
    return pl_push(l, s + start, len - start, 1.0);
}

static void multiply_range(piece_list *l, int from, double m) {
    for (int i = from; i < l->n; i++) l->w[i] *= m;
}

// At s: ":" spaces [+-]?[.0-9]+ spaces ")" -> its length and the number; 0 if no match.
static size_t match_weight(const char *s, double *w) {
    const char *p = s + 1;
    while (isspace((unsigned char)*p)) p++;
    const char *num = p;
    if (*p == '+' || *p == '-') p++;
    const char *digits = p;
    while (*p == '.' || isdigit((unsigned char)*p)) p++;
    if (p == digits) return 0;
    const char *num_end = p;
    while (isspace((unsigned char)*p)) p++;
    if (*p != ')') return 0;
    char buf[64];
    size_t n = (size_t)(num_end - num);
    if (n >= sizeof buf) return 0;
    memcpy(buf, num, n);
    buf[n] = '\0';
    char *e;
    *w = strtod(buf, &e);
    if (*e) return 0;   // "1.2.3": upstream float() would raise; we keep it as text
    return (size_t)(p + 1 - s);
}

int ldm_prompt_parse(ldm_prompt_piece **pieces, int *n, const char *prompt) {
    piece_list l = {0};
    int round[256], square[256], nr = 0, ns = 0;
    const double up = 1.1, down = 1 / 1.1;
    const char *s = prompt ? prompt : "";
    size_t len = strlen(s), i = 0;
    while (i < len) {
        char c = s[i];
        double w;
        size_t m;
        if (c == '\\') {   // \( \) \[ \] \\ -> the character; a lone \ -> nothing
            char d = s[i + 1];
            if (d == '(' || d == ')' || d == '[' || d == ']' || d == '\\') {
                if (pl_push(&l, s + i + 1, 1, 1.0)) goto fail;
                i += 2;
            } else {
                if (pl_push(&l, "", 0, 1.0)) goto fail;
                i += 1;
            }
        } else if (c == '(') {
            if (nr < 256) round[nr++] = l.n;
            i++;
        } else if (c == '[') {
            if (ns < 256) square[ns++] = l.n;
            i++;
        } else if (c == ':' && nr > 0 && (m = match_weight(s + i, &w)) > 0) {
            multiply_range(&l, round[--nr], w);   // (text:w)
            i += m;
        } else if (c == ')' && nr > 0) {
            multiply_range(&l, round[--nr], up);  // (text) = 1.1
            i++;
        } else if (c == ']' && ns > 0) {
            multiply_range(&l, square[--ns], down);   // [text] = 1/1.1
            i++;
        } else if (c == ':' || c == ')' || c == ']') {
            // ":" alone, or an unmatched closing bracket: upstream's regex takes
            // ":1.2)" / ")" / "]" as text when no bracket is open.
            size_t e = i + 1;
            if (c == ':' && (m = match_weight(s + i, &w)) > 0) e = i + m;
            if (push_text(&l, s + i, e - i)) goto fail;
            i = e;
        } else {   // a run of ordinary text: [^\\()\[\]:]+
            size_t e = i;
            while (e < len && !strchr("\\()[]:", s[e])) e++;
            if (push_text(&l, s + i, e - i)) goto fail;
            i = e;
        }
    }
    while (nr > 0) multiply_range(&l, round[--nr], up);     // unclosed: apply to the rest
    while (ns > 0) multiply_range(&l, square[--ns], down);
    if (l.n == 0 && pl_push(&l, "", 0, 1.0)) goto fail;
    // merge neighbours of equal weight (never BREAKs)
    int k = 0;
    for (int j = 0; j < l.n; j++) {
        if (k > 0 && l.w[k - 1] == l.w[j] && l.w[j] >= 0) {
            size_t a = strlen(l.p[k - 1].text), b = strlen(l.p[j].text);
            char *t = realloc(l.p[k - 1].text, a + b + 1);
            if (!t) goto fail;
            memcpy(t + a, l.p[j].text, b + 1);
            l.p[k - 1].text = t;
            free(l.p[j].text);
        } else {
            l.p[k] = l.p[j];
            l.w[k] = l.w[j];
            k++;
        }
    }
    l.n = k;
    for (int j = 0; j < l.n; j++) l.p[j].weight = (float)l.w[j];
    free(l.w);
    *pieces = l.p;
    *n = l.n;
    return LDM_OK;
fail:
    for (int j = 0; j < l.n; j++) free(l.p[j].text);
    free(l.p);
    free(l.w);
    return ldm_error("prompt: out of memory while parsing");
}

void ldm_prompt_pieces_free(ldm_prompt_piece *pieces, int n) {
    for (int i = 0; pieces && i < n; i++) free(pieces[i].text);
    free(pieces);
}

// ---------------------------------------------------------------------------
// 2. Chunks of 75 tokens (A1111 tokenize_line)

#define CHUNK 75            // tokens per chunk between SOT and EOT
#define BACKTRACK 20        // comma_padding_backtrack

typedef struct chunker {
    int32_t *ids;           // [n_chunks*77]
    float *mult;            // [n_chunks*77]
    int n_chunks, cap;
    int32_t cur[CHUNK];     // the chunk being filled
    float cur_m[CHUNK];
    int n_cur;
    int last_comma;         // index in cur after which a comma sits, -1: none
    int pad;
} chunker;

// Close the current chunk: [SOT] tokens [EOT] EOT... then pad after the first EOT.
static int next_chunk(chunker *c) {
    if (c->n_chunks == c->cap) {
        int cap = c->cap ? 2 * c->cap : 4;
        int32_t *ids = realloc(c->ids, (size_t)cap * LDM_CONTEXT * sizeof *ids);
        if (!ids) return ldm_error("prompt: out of memory");
        c->ids = ids;
        float *m = realloc(c->mult, (size_t)cap * LDM_CONTEXT * sizeof *m);
        if (!m) return ldm_error("prompt: out of memory");
        c->mult = m;
        c->cap = cap;
    }
    int32_t *ids = c->ids + (size_t)c->n_chunks * LDM_CONTEXT;
    float *m = c->mult + (size_t)c->n_chunks * LDM_CONTEXT;
    ids[0] = LDM_TOKEN_SOT;
    m[0] = 1.0f;
    for (int i = 0; i < CHUNK; i++) {
        ids[1 + i] = i < c->n_cur ? c->cur[i] : (i == c->n_cur ? LDM_TOKEN_EOT : c->pad);
        m[1 + i] = i < c->n_cur ? c->cur_m[i] : 1.0f;
    }
    ids[LDM_CONTEXT - 1] = c->n_cur < CHUNK ? c->pad : LDM_TOKEN_EOT;
    m[LDM_CONTEXT - 1] = 1.0f;
    c->n_chunks++;
    c->n_cur = 0;
    c->last_comma = -1;
    return LDM_OK;
}

int ldm_prompt_tokenize(int32_t **ids_out, float **mult_out, int *n_chunks,
                        struct ldm_tokenizer *tok, const char *prompt, int pad) {
    ldm_prompt_piece *pieces;
    int np;
    if (ldm_prompt_parse(&pieces, &np, prompt) != LDM_OK) return LDM_ERR;
    chunker c = {.last_comma = -1, .pad = pad};
    int *comma = NULL, nc = 0, rc = LDM_ERR;
    if (ldm_tokenizer_encode(tok, &comma, &nc, ",", 1) != LDM_OK) goto done;
    int comma_id = nc == 1 ? comma[0] : -1;
    for (int p = 0; p < np; p++) {
        if (pieces[p].weight < 0) {   // BREAK
            if (next_chunk(&c)) goto done;
            continue;
        }
        int *t = NULL, nt = 0;
        if (pieces[p].text[0] &&
            ldm_tokenizer_encode(tok, &t, &nt, pieces[p].text, strlen(pieces[p].text)) != LDM_OK)
            goto done;
        for (int k = 0; k < nt; k++) {
            if (t[k] == comma_id) {
                c.last_comma = c.n_cur;
            } else if (c.n_cur == CHUNK && c.last_comma != -1 &&
                       c.n_cur - c.last_comma <= BACKTRACK) {
                // move the tokens after the last comma to the next chunk
                int at = c.last_comma + 1, nm = c.n_cur - at;
                int32_t mv[CHUNK];
                float mvm[CHUNK];
                memcpy(mv, c.cur + at, (size_t)nm * sizeof *mv);
                memcpy(mvm, c.cur_m + at, (size_t)nm * sizeof *mvm);
                c.n_cur = at;
                if (next_chunk(&c)) { free(t); goto done; }
                memcpy(c.cur, mv, (size_t)nm * sizeof *mv);
                memcpy(c.cur_m, mvm, (size_t)nm * sizeof *mvm);
                c.n_cur = nm;
            }
            if (c.n_cur == CHUNK && next_chunk(&c)) { free(t); goto done; }
            c.cur[c.n_cur] = t[k];
            c.cur_m[c.n_cur] = pieces[p].weight;
            c.n_cur++;
        }
        free(t);
    }
    if ((c.n_cur > 0 || c.n_chunks == 0) && next_chunk(&c)) goto done;
    rc = LDM_OK;
done:
    free(comma);
    ldm_prompt_pieces_free(pieces, np);
    if (rc != LDM_OK) {
        free(c.ids);
        free(c.mult);
        return LDM_ERR;
    }
    *ids_out = c.ids;
    *mult_out = c.mult;
    *n_chunks = c.n_chunks;
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// 3. Loading: every weight once

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
    if (ldm_tokenizer_load(&p->tok, o->vocab ? o->vocab : m->tokenizer_dir) != LDM_OK) goto fail;
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
// 4. Prompt -> context (A1111 process_tokens, "Original" emphasis)

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
    int64_t D = z.shape[2], per = (int64_t)LDM_CONTEXT * D;
    float *h = malloc((size_t)z.numel * sizeof *h);
    if (!h) {
        ldm_tensor_free(&z); free(ids); free(mult);
        return ldm_error("prompt: out of memory");
    }
    ldm_tensor_to_host(h, &z);
    ldm_tensor_free(&z);
    for (int c = 0; c < nc; c++) {
        float *zc = h + c * per, *mc = mult + c * LDM_CONTEXT;
        int weighted = 0;
        for (int t = 0; t < LDM_CONTEXT; t++) weighted |= mc[t] != 1.0f;
        if (!weighted) continue;   // all ones: the rescale below is exactly 1
        double before = 0, after = 0;
        for (int64_t i = 0; i < per; i++) before += zc[i];
        for (int t = 0; t < LDM_CONTEXT; t++)
            for (int64_t d = 0; d < D; d++) zc[t * D + d] *= mc[t];   // z *= multipliers
        for (int64_t i = 0; i < per; i++) after += zc[i];
        float r = (float)(before / per) / (float)(after / per);     // z *= mean_before / mean_after
        for (int64_t i = 0; i < per; i++) zc[i] *= r;
    }
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
// 5. The network behind the sampler: x_in [N,per], t [N] -> eps or v [N,per]

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
// 6. Generate

int ldm_generate_check(const ldm_pipeline *p, const ldm_generate_params *g) {
    if (!g->prompt) return ldm_error("generate: no prompt (pass an empty string for none)");
    if (!g->sampler) return ldm_error("generate: no sampler");
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
    if (g->steps < 1 || g->steps > 1000) return ldm_error("steps must be 1..1000, found %d", g->steps);
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
    ldm_model_release_pages(&p->model);   // the text encoder's mapped weights leave memory
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
    int start_step = 0, run_steps = g->steps;
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
        int count = g->sampler->uses_sigmas ? g->steps
                                            : ldm_timesteps_count(&p->sched, g->spacing, g->steps);
        if (count < 1) goto done;
        run_steps = (int)(g->strength * g->steps);
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
        ldm_sample_opts so = {
            .sampler = g->sampler, .sigma_kind = g->sigma_kind, .steps = g->steps, .eta = g->eta,
            .spacing = g->spacing, .steps_offset = g->steps_offset, .compvis = g->compvis,
            .start_step = start_step, .init = init, .callback = step_fn, .callback_ctx = &r,
        };
        r.n_steps = run_steps;
        if (g->progress) g->progress(g->progress_ctx, "sample", 0, run_steps, 0);
        r.t_step = now_seconds();
        if (ldm_sample(x, noise, &so, &dn, g->rng, 0) != LDM_OK) goto done;
    } else {
        memcpy(x, init, (size_t)(B * per) * sizeof(float));   // strength 0: the init latent
    }
    ldm_tensor_free(&r.context);   // the UNet's inputs are no longer needed
    ldm_model_release_pages(&p->model);   // and its mapped weights, before the VAE's peak
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
            int64_t bad = ldm_unit_to_pixels(rgb_out + b * H * W * 3, px, H, W, g->truncate);
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
