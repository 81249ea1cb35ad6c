/*
 * ldm/lora.c -- LoRA files merged into the loaded weights (ldm/lora.h).
 *
 * In teaching order:
 *   1. the table of adaptable layers: every linear/conv weight of the loaded
 *      UNet and text encoder, under its diffusers module path
 *   2. reading a LoRA file: each key split into <module><suffix>, the module
 *      matched against the table (kohya: with '_' for '.'), the suffix telling
 *      down, up or alpha
 *   3. merging: W += scale * alpha/r * up @ down (one sgemm per layer), after
 *      keeping the original values for ldm_lora_restore
 *   4. the prompt syntax <lora:NAME:SCALE> and the --lora FILE:SCALE specs
 *
 * Mirrors the merge of kohya sd-scripts networks/lora.py (LoRAModule.merge_to)
 * and of PEFT's LoraLayer (delta = B @ A * lora_alpha / r), and the prompt
 * handling of AUTOMATIC1111's extra networks. Leaves out LoHa/LoKr/DoRA,
 * separate text-encoder and UNet multipliers, and CompVis-named kohya keys
 * ("lora_unet_input_blocks_1_1_...").
 */
#include "ldm/lora.h"

#include <cblas.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/fs.h"
#include "ldm/io/json.h"
#include "ldm/io/tensorfile.h"

// ---------------------------------------------------------------------------
// 1. The table of adaptable layers

typedef struct target {
    char name[112];       // diffusers module path, "down_blocks.0.resnets.1.conv1"
    int te;               // 0: UNet, 1: text encoder
    ldm_tensor *w;        // the weight in backend memory: [out,in] or [out,in,kh,kw]
    const ldm_tensor_entry *down, *up, *alpha;   // filled while reading one file
} target;

typedef struct table { target *t; int n, cap; } table;

static int add(table *tb, int te, ldm_tensor *w, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int add(table *tb, int te, ldm_tensor *w, const char *fmt, ...) {
    if (!w->data) return LDM_OK;   // absent layer (a conv_shortcut when Cin == Cout)
    if (tb->n == tb->cap) {
        int cap = tb->cap ? 2 * tb->cap : 256;
        target *t = realloc(tb->t, (size_t)cap * sizeof *t);
        if (!t) return ldm_error("lora: out of memory");
        tb->t = t, tb->cap = cap;
    }
    target *t = &tb->t[tb->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->te = te, t->w = w;
    return LDM_OK;
}

static void add_attn(table *tb, ldm_unet_attn *a, const char *p) {
    add(tb, 0, &a->q_w, "%s.to_q", p);
    add(tb, 0, &a->k_w, "%s.to_k", p);
    add(tb, 0, &a->v_w, "%s.to_v", p);
    add(tb, 0, &a->out_w, "%s.to_out.0", p);
}

static void add_unet(table *tb, ldm_unet *u) {
    add(tb, 0, &u->time_w1, "time_embedding.linear_1");
    add(tb, 0, &u->time_w2, "time_embedding.linear_2");
    for (int i = 0; i < u->n_blocks; i++) {
        ldm_unet_block *b = &u->blocks[i];
        const char *n = b->name;
        switch (b->kind) {
        case LDM_UNET_CONV_IN: case LDM_UNET_OUT:     // "conv_in", "conv_out"
            add(tb, 0, &b->conv_w, "%s", n);
            break;
        case LDM_UNET_DOWN: case LDM_UNET_UP:         // "down_blocks.0.downsamplers.0"
            add(tb, 0, &b->conv_w, "%s.conv", n);
            break;
        case LDM_UNET_RES:
            add(tb, 0, &b->res.conv1_w, "%s.conv1", n);
            add(tb, 0, &b->res.temb_w, "%s.time_emb_proj", n);
            add(tb, 0, &b->res.conv2_w, "%s.conv2", n);
            add(tb, 0, &b->res.short_w, "%s.conv_shortcut", n);
            break;
        case LDM_UNET_ATTN:
            add(tb, 0, &b->tr.proj_in_w, "%s.proj_in", n);
            for (int k = 0; k < b->tr.depth; k++) {
                ldm_unet_tblock *t = &b->tr.blocks[k];
                char p[96];
                snprintf(p, sizeof p, "%s.transformer_blocks.%d.attn1", n, k);
                add_attn(tb, &t->attn1, p);
                snprintf(p, sizeof p, "%s.transformer_blocks.%d.attn2", n, k);
                add_attn(tb, &t->attn2, p);
                add(tb, 0, &t->ff1_w, "%s.transformer_blocks.%d.ff.net.0.proj", n, k);
                add(tb, 0, &t->ff2_w, "%s.transformer_blocks.%d.ff.net.2", n, k);
            }
            add(tb, 0, &b->tr.proj_out_w, "%s.proj_out", n);
            break;
        }
    }
}

static void add_clip(table *tb, ldm_clip *c) {
    for (int l = 0; l < c->n_layers; l++) {
        ldm_clip_layer *L = &c->layers[l];
        const char *p = "text_model.encoder.layers";
        add(tb, 1, &L->q_w, "%s.%d.self_attn.q_proj", p, l);
        add(tb, 1, &L->k_w, "%s.%d.self_attn.k_proj", p, l);
        add(tb, 1, &L->v_w, "%s.%d.self_attn.v_proj", p, l);
        add(tb, 1, &L->o_w, "%s.%d.self_attn.out_proj", p, l);
        add(tb, 1, &L->fc1_w, "%s.%d.mlp.fc1", p, l);
        add(tb, 1, &L->fc2_w, "%s.%d.mlp.fc2", p, l);
    }
}

// ---------------------------------------------------------------------------
// 2. Reading a LoRA file: key -> (layer, role)

enum role { DOWN, UP, ALPHA };
static const struct { const char *suffix; enum role role; } SUFFIXES[] = {
    {".lora_down.weight", DOWN}, {".lora_up.weight", UP},      // kohya
    {".lora_A.weight", DOWN},    {".lora_B.weight", UP},       // PEFT
    {".lora.down.weight", DOWN}, {".lora.up.weight", UP},      // older diffusers
    {".alpha", ALPHA},
};

// Does kohya name k ("down_blocks_0_attentions_0_proj_in") equal diffusers path p with '.' -> '_'?
static int kohya_eq(const char *k, const char *p) {
    for (; *k && *p; k++, p++)
        if (*k != (*p == '.' ? '_' : *p)) return 0;
    return *k == *p;
}

// The layer a module name (the key without its suffix) names, or NULL.
static target *find(table *tb, const char *module, size_t len) {
    static const struct { const char *prefix; int te, kohya; } PREFIXES[] = {
        {"lora_unet_", 0, 1}, {"lora_te_", 1, 1}, {"unet.", 0, 0}, {"text_encoder.", 1, 0},
    };
    char m[256];
    if (len >= sizeof m) return NULL;
    memcpy(m, module, len);
    m[len] = 0;
    for (size_t i = 0; i < sizeof PREFIXES / sizeof *PREFIXES; i++) {
        size_t pl = strlen(PREFIXES[i].prefix);
        if (strncmp(m, PREFIXES[i].prefix, pl) != 0) continue;
        const char *rest = m + pl;
        if (strncmp(rest, "base_model.model.", 17) == 0) rest += 17;   // a PEFT model's own prefix
        for (int j = 0; j < tb->n; j++) {
            target *t = &tb->t[j];
            if (t->te != PREFIXES[i].te) continue;
            if (PREFIXES[i].kohya ? kohya_eq(rest, t->name) : strcmp(rest, t->name) == 0) return t;
        }
        return NULL;
    }
    return NULL;
}

// ---------------------------------------------------------------------------
// 3. Merging

// Keep the original of w (once) in s and give w an fp32 copy of its own to
// merge into: a half weight, or one pointing into the read-only mapped file
// (ldm/io/weights.c), cannot be written in place. ldm_lora_restore frees the
// copy and puts the original tensor back, bytes untouched. 0 / LDM_ERR.
static int save(ldm_lora_set *s, ldm_tensor *w) {
    for (int i = 0; i < s->n; i++)
        if (s->saved[i].w == w) return LDM_OK;
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        void *p = realloc(s->saved, (size_t)cap * sizeof *s->saved);
        if (!p) return ldm_error("lora: out of memory");
        s->saved = p, s->cap = cap;
    }
    ldm_tensor f = ldm_tensor_new(w->ops, w->shape, w->ndim);
    if (!f.data) return LDM_ERR;
    if (w->dtype == LDM_DTYPE_F32) {
        ldm_copy(&f, w);
    } else {   // half weights live in host memory only (the loader widens for devices)
        const uint16_t *h = (const uint16_t *)w->data;
        for (int64_t i = 0; i < w->numel; i++)
            f.data[i] = w->dtype == LDM_DTYPE_F16 ? ldm_f16_to_f32(h[i]) : ldm_bf16_to_f32(h[i]);
    }
    s->saved[s->n].w = w, s->saved[s->n].orig = *w;
    s->n++;
    *w = f;
    return LDM_OK;
}

// diffusers' save_lora_weights may store the PEFT config in the safetensors
// metadata: "lora_adapter_metadata" = {"unet.lora_alpha": 8, "unet.r": 4, ...}.
// Its lora_alpha is alpha for that component's layers without an .alpha tensor.
// alpha[te] = 0 when absent. 0 / LDM_ERR (options that change the scaling
// per layer or to alpha/sqrt(r) are named as unsupported).
static int peft_alpha(float alpha[2], const ldm_tensor_file *f, const char *path) {
    alpha[0] = alpha[1] = 0;
    const char *json = NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], "lora_adapter_metadata")) json = f->meta_values[i];
    if (!json) return LDM_OK;
    cJSON *o = ldm_json_parse_object(json, path);
    if (!o) return LDM_ERR;
    int rc = LDM_OK;
    static const char *COMP[2] = {"unet", "text_encoder"};
    for (int te = 0; te < 2 && rc == LDM_OK; te++) {
        char key[64];
        int rslora = 0;
        snprintf(key, sizeof key, "%s.lora_alpha", COMP[te]);
        rc = ldm_json_float(o, key, 0, &alpha[te], path);
        snprintf(key, sizeof key, "%s.use_rslora", COMP[te]);
        if (rc == LDM_OK) rc = ldm_json_bool(o, key, 0, &rslora, path);
        if (rc == LDM_OK && rslora) rc = ldm_error("%s: %s: rank-stabilised LoRA is not supported", path, key);
        for (int k = 0; k < 2 && rc == LDM_OK; k++) {
            snprintf(key, sizeof key, "%s.%s", COMP[te], k ? "rank_pattern" : "alpha_pattern");
            const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, key);
            if (pat && cJSON_GetArraySize(pat) > 0)
                rc = ldm_error("%s: %s: per-layer ranks/alphas are not supported", path, key);
        }
    }
    cJSON_Delete(o);
    return rc;
}

// W += scale * alpha/r * up [out,r] @ down [r,K]   (K = in*kh*kw). alpha: the
// layer's .alpha tensor, else alpha_default (PEFT metadata), else r. 0 / LDM_ERR.
static int merge(ldm_lora_set *s, const target *t, float scale, float alpha_default,
                 const char *path) {
    const ldm_tensor_entry *d = t->down, *u = t->up;
    char sw[64], sd[64], su[64];
    ldm_shape_str(sw, sizeof sw, t->w->shape, t->w->ndim);
    ldm_shape_str(sd, sizeof sd, d->shape, d->ndim);
    ldm_shape_str(su, sizeof su, u->shape, u->ndim);
    int64_t r = d->ndim >= 2 ? d->shape[0] : 0, out = t->w->shape[0];
    int64_t K = r > 0 ? d->numel / r : 0;
    // up is [out,r] or [out,r,1,1]; down [r,in] or [r,in,kh,kw] with in*kh*kw = W's row
    int up_ok = (u->ndim == 2 || (u->ndim == 4 && u->shape[2] == 1 && u->shape[3] == 1)) &&
                u->shape[0] == out && u->shape[1] == r;
    if (r < 1 || r > 4096 || !up_ok || K * out != t->w->numel ||
        (d->ndim == 4 && t->w->ndim == 4 && (d->shape[2] != t->w->shape[2] || d->shape[3] != t->w->shape[3])))
        return ldm_error("%s: layer %s: lora down %s and up %s do not fit the weight %s "
                         "(expected down [r,in(,kh,kw)] and up [out,r(,1,1)]) -- is this LoRA for "
                         "another model family?", path, t->name, sd, su, sw);
    float alpha = alpha_default > 0 ? alpha_default : (float)r;
    if (t->alpha) {
        if (t->alpha->numel != 1 || ldm_entry_to_f32(&alpha, t->alpha) != LDM_OK)
            return ldm_error("%s: %s.alpha: expected one number", path, t->name);
    }
    float *down = malloc((size_t)d->numel * sizeof *down), *up = malloc((size_t)u->numel * sizeof *up);
    float *w = malloc((size_t)t->w->numel * sizeof *w);
    int rc = down && up && w ? LDM_OK : ldm_error("lora: out of memory (layer %s)", t->name);
    if (rc == LDM_OK) rc = ldm_entry_to_f32(down, d);
    if (rc == LDM_OK) rc = ldm_entry_to_f32(up, u);
    if (rc == LDM_OK) rc = save(s, t->w);
    if (rc == LDM_OK) {
        ldm_tensor_to_host(w, t->w);   // the current weights (another LoRA may be merged already)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)K, (int)r,
                    scale * alpha / (float)r, up, (int)r, down, (int)K, 1.0f, w, (int)K);
        ldm_tensor_from_host(t->w, w);
        s->n_layers++;
    }
    free(down); free(up); free(w);
    return rc;
}

int ldm_lora_apply(ldm_lora_set *s, ldm_unet *u, ldm_clip *c, const char *path, float scale) {
    ldm_tensor_file f;
    if (ldm_tensor_file_open(&f, path) != LDM_OK) return LDM_ERR;
    table tb = {0};
    float alpha[2];
    if (peft_alpha(alpha, &f, path) != LDM_OK) {
        ldm_tensor_file_close(&f);
        return LDM_ERR;
    }
    if (u) add_unet(&tb, u);
    if (c) add_clip(&tb, c);
    int rc = LDM_OK;
    for (int64_t i = 0; i < f.n_entries && rc == LDM_OK; i++) {
        const ldm_tensor_entry *e = &f.entries[i];
        size_t len = strlen(e->name);
        int role = -1;
        size_t mlen = 0;
        for (size_t k = 0; k < sizeof SUFFIXES / sizeof *SUFFIXES && role < 0; k++) {
            size_t sl = strlen(SUFFIXES[k].suffix);
            if (len > sl && strcmp(e->name + len - sl, SUFFIXES[k].suffix) == 0)
                role = SUFFIXES[k].role, mlen = len - sl;
        }
        if (role < 0) {
            rc = ldm_error("%s: tensor %s is not a LoRA down, up or alpha tensor (expected "
                           "names ending .lora_down.weight, .lora_up.weight, .alpha, .lora_A.weight "
                           "or .lora_B.weight; LoHa, LoKr and DoRA are not supported)", path, e->name);
            break;
        }
        target *t = find(&tb, e->name, mlen);
        if (!t) {
            rc = ldm_error("%s: tensor %s names no layer of this model's %s (expected "
                           "lora_unet_*, lora_te_*, unet.* or text_encoder.* with the diffusers "
                           "module path of a linear or conv layer) -- is this LoRA for another model "
                           "family?", path, e->name,
                           !u ? "text encoder" : !c ? "UNet" : "UNet or text encoder");
            break;
        }
        const ldm_tensor_entry **slot = role == DOWN ? &t->down : role == UP ? &t->up : &t->alpha;
        if (*slot) rc = ldm_error("%s: layer %s appears twice (%s and %s)", path, t->name,
                                  (*slot)->name, e->name);
        *slot = e;
    }
    int n = 0;
    for (int j = 0; j < tb.n && rc == LDM_OK; j++) {
        target *t = &tb.t[j];
        if (!t->down && !t->up && !t->alpha) continue;
        if (!t->down || !t->up)
            rc = ldm_error("%s: layer %s has no lora %s tensor", path, t->name,
                           t->down ? "up" : "down");
        else
            rc = merge(s, t, scale, alpha[t->te], path), n++;
    }
    if (rc == LDM_OK && n == 0) rc = ldm_error("%s: no LoRA tensors in this file", path);
    if (rc == LDM_OK) s->n_files++;
    free(tb.t);
    ldm_tensor_file_close(&f);
    return rc;
}

void ldm_lora_restore(ldm_lora_set *s) {
    for (int i = 0; i < s->n; i++) {
        ldm_tensor_free(s->saved[i].w);        // the merged fp32 copy
        *s->saved[i].w = s->saved[i].orig;     // the weight as loaded
    }
    free(s->saved);
    free(s->prompt);
    memset(s, 0, sizeof *s);
}

// ---------------------------------------------------------------------------
// 4. --lora FILE:SCALE and <lora:NAME:SCALE>

// s is a whole decimal number ("0.8", "-1", "1e-1")?
static int number(const char *s, float *v) {
    if (!*s) return 0;
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (*end || errno || d != d || d > 1e6 || d < -1e6) return 0;
    *v = (float)d;
    return 1;
}

int ldm_lora_spec_parse(ldm_lora_spec *spec, const char *s) {
    const char *colon = strrchr(s, ':');
    size_t n = strlen(s);
    spec->scale = 1.0f;
    if (colon && number(colon + 1, &spec->scale)) n = (size_t)(colon - s);
    if (n == 0 || n >= sizeof spec->path)
        return ldm_error("--lora '%s': expected FILE or FILE:SCALE (a path under %zu characters)",
                         s, sizeof spec->path);
    memcpy(spec->path, s, n);
    spec->path[n] = 0;
    return LDM_OK;
}

// "<lora:NAME:SCALE>" at tag (text between '<' and '>', len chars): merge it.
static int from_tag(ldm_lora_set *s, ldm_unet *u, ldm_clip *c, const char *tag, size_t len,
                    const char *dir) {
    char buf[512], path[1200];
    if (len >= sizeof buf) return ldm_error("prompt: <lora:...> tag longer than %zu characters", sizeof buf);
    memcpy(buf, tag, len);
    buf[len] = 0;
    char *name = buf + 5, *colon = strchr(name, ':');
    float scale = 1.0f;
    if (colon) {
        *colon = 0;
        if (!number(colon + 1, &scale))
            return ldm_error("prompt: <lora:%s:%s>: expected <lora:NAME:SCALE> with one number "
                             "(separate text-encoder/UNet multipliers are not supported)", name,
                             colon + 1);
    }
    if (!*name || strstr(name, ".."))
        return ldm_error("prompt: <lora:%s>: expected a file name (no '..')", name);
    if (!dir)
        return ldm_error("prompt: <lora:%s>: no LoRA folder given (--lora-dir DIR)", name);
    static const char *EXT[] = {".safetensors", ".ckpt", ".pt"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s%s", dir, name, EXT[i]);
        if (ldm_is_file(path)) return ldm_lora_apply(s, u, c, path, scale);
    }
    return ldm_error("prompt: <lora:%s>: no %s/%s.safetensors (nor .ckpt, .pt)", name, dir, name);
}

// Copy text to out (room for strlen(text) + 1) without its <lora:...> tags,
// merging each tag's file into u / c as it goes. 0 / LDM_ERR.
static int take_tags(char *out, ldm_lora_set *s, ldm_unet *u, ldm_clip *c, const char *text,
                     const char *lora_dir) {
    const char *p = text;
    int rc = LDM_OK;
    while (*p && rc == LDM_OK) {
        const char *end;
        if (strncmp(p, "<lora:", 6) == 0 && (end = strchr(p, '>')) != NULL) {
            rc = from_tag(s, u, c, p + 1, (size_t)(end - p - 1), lora_dir);
            p = end + 1;
        } else {
            *out++ = *p++;
        }
    }
    *out = 0;
    return rc;
}

int ldm_lora_take_tags(char **cleaned, ldm_lora_set *s, ldm_unet *u, ldm_clip *c,
                       const char *text, const char *lora_dir) {
    const char *t = text ? text : "";
    *cleaned = malloc(strlen(t) + 1);
    if (!*cleaned) return ldm_error("lora: out of memory");
    return take_tags(*cleaned, s, u, c, t, lora_dir);
}

int ldm_lora_begin(ldm_lora_set *s, ldm_unet *u, ldm_clip *c, const char *prompt,
                   const char *lora_dir, const ldm_lora_spec *specs, int n) {
    memset(s, 0, sizeof *s);
    int rc = ldm_lora_take_tags(&s->prompt, s, u, c, prompt, lora_dir);
    for (int i = 0; i < n && rc == LDM_OK; i++)
        rc = ldm_lora_apply(s, u, c, specs[i].path, specs[i].scale);
    if (rc != LDM_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        ldm_lora_restore(s);
        return ldm_error("%s", msg);
    }
    return LDM_OK;
}
