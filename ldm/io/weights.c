/*
 * ldm/io/weights.c -- load one weight tensor by its diffusers name, whatever
 * the checkpoint layout; the one place that knows the key layouts.
 *
 *   diffusers folder file  key = prefix + name  ("down_blocks.0.resnets.0.norm1.weight")
 *   CompVis single file    key = compvis_key(component, name)
 *                          ("model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
 *                           docs/03-clip-and-checkpoints.md section 3 gives the mapping)
 * After the key is found, the stored shape must equal the expected shape,
 * except that a stored [C,C,1,1] is accepted for an expected [C,C] (the
 * CompVis VAE attention q/k/v/proj_out are 1x1 convs, diffusers has Linear).
 * Then its resident dtype is chosen (resident_dtype): a matrix stored as
 * fp16/bf16 stays so on a backend with linear_half/conv2d_half, unless the
 * caller asks for fp32; everything else is widened to fp32 (F16/BF16
 * exactly). A tensor kept as stored on a host-memory backend points into the
 * file's mapping; otherwise it is converted/copied and uploaded to w->ops, and
 * the file pages it came from are dropped.
 *
 * Leaves out: sharded diffusers weights (*.safetensors.index.json).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
#include "ldm/io/weights.h"

// ---------------------------------------------------------------------------
// CompVis layout: diffusers name -> original checkpoint key
// (docs/03-clip-and-checkpoints.md section 3). UNet under "model.diffusion_model.", VAE under
// "first_stage_model.", text encoder under
// "cond_stage_model.transformer.text_model." (SD1, same names as
// transformers) or "cond_stage_model.model." (SD2, open_clip names).
// A key may hold several diffusers tensors stacked along dim 0 (open_clip's
// attn.in_proj_weight = [q;k;v]): then *part / *nparts say which rows.

// "a.b.c" starts with `pre`: returns the rest after it, else NULL.
static const char *after(const char *name, const char *pre) {
    size_t n = strlen(pre);
    return strncmp(name, pre, n) == 0 ? name + n : NULL;
}

static const char *put(char *buf, size_t n, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const char *put(char *buf, size_t n, const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= n)
        return ldm_error("weight '%s': key longer than %zu bytes", name, n), NULL;
    return buf;
}

// Inside a UNet ResBlock: diffusers ResnetBlock2D -> CompVis ResBlock names.
static const char *unet_resnet_part(const char *rest, const char **tail) {
    static const char *const map[][2] = {
        {"norm1.", "in_layers.0."},  {"conv1.", "in_layers.2."},
        {"time_emb_proj.", "emb_layers.1."}, {"norm2.", "out_layers.0."},
        {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if ((*tail = after(rest, map[i][0]))) return map[i][1];
    return NULL;
}

// "<pre>%d.<mid>%d.<rest>" -> a, b, rest (b optional when mid == NULL).
static int parse2(const char *name, const char *pre, const char *mid, int *a, int *b,
                  const char **rest) {
    const char *p = after(name, pre);
    if (!p) return 0;
    char *e;
    long x = strtol(p, &e, 10);
    if (e == p || *e != '.' || x < 0 || x > 10000) return 0;
    *a = (int)x;
    p = e + 1;
    if (!mid) { *rest = p; return 1; }
    if (!(p = after(p, mid))) return 0;
    x = strtol(p, &e, 10);
    if (e == p || *e != '.' || x < 0 || x > 10000) return 0;
    *b = (int)x;
    *rest = e + 1;
    return 1;
}

static const char *unet_compvis_key(char *buf, size_t n, const ldm_weights *w, const char *name) {
    const char *P = "model.diffusion_model.";
    int L = w->layers_per_block > 0 ? w->layers_per_block : 2;  // resnets per down level
    static const char *const top[][2] = {
        {"conv_in.", "input_blocks.0.0."},     {"time_embedding.linear_1.", "time_embed.0."},
        {"time_embedding.linear_2.", "time_embed.2."}, {"conv_norm_out.", "out.0."},
        {"conv_out.", "out.2."},
    };
    const char *rest, *tail, *r;
    int a, b;
    for (size_t i = 0; i < sizeof top / sizeof *top; i++)
        if ((rest = after(name, top[i][0]))) return put(buf, n, name, "%s%s%s", P, top[i][1], rest);
    // input_blocks: 0 = conv_in, then per level L x (ResBlock [+ SpatialTransformer]), Downsample
    if (parse2(name, "down_blocks.", "resnets.", &a, &b, &rest) && (r = unet_resnet_part(rest, &tail)))
        return put(buf, n, name, "%sinput_blocks.%d.0.%s%s", P, 1 + a * (L + 1) + b, r, tail);
    if (parse2(name, "down_blocks.", "attentions.", &a, &b, &rest))
        return put(buf, n, name, "%sinput_blocks.%d.1.%s", P, 1 + a * (L + 1) + b, rest);
    if (parse2(name, "down_blocks.", NULL, &a, &b, &rest) && (tail = after(rest, "downsamplers.0.conv.")))
        return put(buf, n, name, "%sinput_blocks.%d.0.op.%s", P, 1 + a * (L + 1) + L, tail);
    // middle_block: ResBlock, SpatialTransformer, ResBlock
    if (parse2(name, "mid_block.resnets.", NULL, &a, &b, &rest) && (r = unet_resnet_part(rest, &tail)))
        return put(buf, n, name, "%smiddle_block.%d.%s%s", P, a == 0 ? 0 : 2, r, tail);
    if ((rest = after(name, "mid_block.attentions.0.")))
        return put(buf, n, name, "%smiddle_block.1.%s", P, rest);
    // output_blocks: per level (L+1) x (ResBlock [+ SpatialTransformer] [+ Upsample])
    if (parse2(name, "up_blocks.", "resnets.", &a, &b, &rest) && (r = unet_resnet_part(rest, &tail)))
        return put(buf, n, name, "%soutput_blocks.%d.0.%s%s", P, a * (L + 1) + b, r, tail);
    if (parse2(name, "up_blocks.", "attentions.", &a, &b, &rest))
        return put(buf, n, name, "%soutput_blocks.%d.1.%s", P, a * (L + 1) + b, rest);
    if (parse2(name, "up_blocks.", NULL, &a, &b, &rest) && (tail = after(rest, "upsamplers.0.conv."))) {
        // The Upsample is module 1 of the level's last output block, or
        // module 2 when that block also has a SpatialTransformer.
        int idx = a * (L + 1) + L;
        put(buf, n, name, "%soutput_blocks.%d.2.conv.%s", P, idx, tail);
        if (w->file && ldm_tensor_file_find(w->file, buf)) return buf;
        return put(buf, n, name, "%soutput_blocks.%d.1.conv.%s", P, idx, tail);
    }
    return ldm_error("UNet weight '%s' has no CompVis equivalent", name), NULL;
}

// VAE: CompVis Encoder/Decoder -> diffusers AutoencoderKL. The decoder's
// levels are numbered bottom-up in CompVis (up.3 runs first) and top-down in
// diffusers: up_blocks.i = up.(NL-1-i).
static const char *vae_compvis_key(char *buf, size_t n, const ldm_weights *w, const char *name) {
    const char *P = "first_stage_model.";
    int NL = w->n_levels > 0 ? w->n_levels : 4;
    const char *rest, *tail, *part = NULL, *coder;
    int a, b;
    if ((rest = after(name, "quant_conv.")) || (rest = after(name, "post_quant_conv.")))
        return put(buf, n, name, "%s%s", P, name);
    if ((rest = after(name, "encoder."))) coder = "encoder";
    else if ((rest = after(name, "decoder."))) coder = "decoder";
    else return ldm_error("VAE weight '%s' has no CompVis equivalent", name), NULL;
    const char *sub = rest;
    static const char *const res_map[][2] = {
        {"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."},
        {"conv2.", "conv2."}, {"conv_shortcut.", "nin_shortcut."},
    };
    static const char *const attn_map[][2] = {
        {"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."},
        {"to_out.0.", "proj_out."},
    };
    if ((tail = after(sub, "conv_in.")) || (tail = after(sub, "conv_out.")))
        return put(buf, n, name, "%s%s.%s", P, coder, sub);
    if ((tail = after(sub, "conv_norm_out.")))
        return put(buf, n, name, "%s%s.norm_out.%s", P, coder, tail);
    if (parse2(sub, "mid_block.resnets.", NULL, &a, &b, &rest)) {
        for (size_t i = 0; i < 5; i++)
            if ((tail = after(rest, res_map[i][0])))
                return put(buf, n, name, "%s%s.mid.block_%d.%s%s", P, coder, a + 1, res_map[i][1], tail);
    }
    if ((rest = after(sub, "mid_block.attentions.0."))) {
        for (size_t i = 0; i < 5; i++)
            if ((tail = after(rest, attn_map[i][0])))
                return put(buf, n, name, "%s%s.mid.attn_1.%s%s", P, coder, attn_map[i][1], tail);
    }
    int up = coder[0] == 'd';
    if (parse2(sub, up ? "up_blocks." : "down_blocks.", "resnets.", &a, &b, &rest)) {
        int lvl = up ? NL - 1 - a : a;
        for (size_t i = 0; i < 5; i++)
            if ((tail = after(rest, res_map[i][0])))
                return put(buf, n, name, "%s%s.%s.%d.block.%d.%s%s", P, coder, up ? "up" : "down",
                           lvl, b, res_map[i][1], tail);
    }
    if (parse2(sub, up ? "up_blocks." : "down_blocks.", NULL, &a, &b, &rest) &&
        (tail = after(rest, up ? "upsamplers.0.conv." : "downsamplers.0.conv."))) {
        part = up ? "up" : "down";
        return put(buf, n, name, "%s%s.%s.%d.%s.conv.%s", P, coder, part, up ? NL - 1 - a : a,
                   up ? "upsample" : "downsample", tail);
    }
    return ldm_error("VAE weight '%s' has no CompVis equivalent", name), NULL;
}

// Text encoders, asked for by transformers CLIPTextModel names without the
// "text_model." prefix ("encoder.layers.0.mlp.fc1.weight").
// SD1: the same names under "cond_stage_model.transformer.text_model.".
// SD2: open_clip's text tower under "cond_stage_model.model.".
static const char *text_compvis_key(char *buf, size_t n, const ldm_weights *w, const char *name,
                                    int *part, int *nparts) {
    if (w->comp == LDM_COMP_TEXT_SD1)
        return put(buf, n, name, "cond_stage_model.transformer.text_model.%s", name);
    const char *P = "cond_stage_model.model.";
    const char *rest, *tail;
    int a, b;
    if (!strcmp(name, "embeddings.token_embedding.weight"))
        return put(buf, n, name, "%stoken_embedding.weight", P);
    if (!strcmp(name, "embeddings.position_embedding.weight"))
        return put(buf, n, name, "%spositional_embedding", P);
    if ((tail = after(name, "final_layer_norm.")))
        return put(buf, n, name, "%sln_final.%s", P, tail);
    if (parse2(name, "encoder.layers.", NULL, &a, &b, &rest)) {
        static const char *const map[][2] = {
            {"layer_norm1.", "ln_1."}, {"layer_norm2.", "ln_2."}, {"mlp.fc1.", "mlp.c_fc."},
            {"mlp.fc2.", "mlp.c_proj."}, {"self_attn.out_proj.", "attn.out_proj."},
        };
        for (size_t i = 0; i < sizeof map / sizeof *map; i++)
            if ((tail = after(rest, map[i][0])))
                return put(buf, n, name, "%stransformer.resblocks.%d.%s%s", P, a, map[i][1], tail);
        // q, k, v are rows [0,D), [D,2D), [2D,3D) of the fused in_proj.
        static const char *const qkv[] = {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."};
        for (int i = 0; i < 3; i++)
            if ((tail = after(rest, qkv[i])) && (!strcmp(tail, "weight") || !strcmp(tail, "bias"))) {
                *part = i;
                *nparts = 3;
                return put(buf, n, name, "%stransformer.resblocks.%d.attn.in_proj_%s", P, a, tail);
            }
    }
    return ldm_error("text encoder weight '%s' has no CompVis (open_clip) equivalent", name), NULL;
}

// Writes the key into buf[n] and returns buf; NULL + ldm_error when the name
// has no CompVis equivalent. *part/*nparts: rows of a fused tensor (0/1 = all).
static const char *compvis_key(char *buf, size_t n, const ldm_weights *w, const char *name,
                               int *part, int *nparts) {
    *part = 0;
    *nparts = 1;
    switch (w->comp) {
    case LDM_COMP_UNET: return unet_compvis_key(buf, n, w, name);
    case LDM_COMP_VAE: return vae_compvis_key(buf, n, w, name);
    case LDM_COMP_TEXT_SD1:
    case LDM_COMP_TEXT_SD2: return text_compvis_key(buf, n, w, name, part, nparts);
    }
    return ldm_error("weight '%s': unknown component %d", name, (int)w->comp), NULL;
}

// ---------------------------------------------------------------------------

static const char *weights_key_part(char *buf, size_t n, const ldm_weights *w, const char *name,
                                    int *part, int *nparts) {
    *part = 0;
    *nparts = 1;
    switch (w->layout) {
    case LDM_LAYOUT_DIFFUSERS: {
        const char *prefix = w->prefix ? w->prefix : "";
        int len = snprintf(buf, n, "%s%s", prefix, name);
        if (len < 0 || (size_t)len >= n)
            return ldm_error("weight '%s': key longer than %zu bytes", name, n), NULL;
        return buf;
    }
    case LDM_LAYOUT_COMPVIS:
        return compvis_key(buf, n, w, name, part, nparts);
    }
    return ldm_error("weight '%s': unknown key layout %d", name, (int)w->layout), NULL;
}

const char *ldm_weights_key(char *buf, size_t n, const ldm_weights *w, const char *name) {
    int part, nparts;
    return weights_key_part(buf, n, w, name, &part, &nparts);
}

// The stored shape `got` is acceptable for the expected `want`: equal, or
// want = [C0,C1] and got = [C0,C1,1,1] (1x1 conv stored where Linear is used).
static int shape_accepts(const int64_t *want, int want_nd, const int64_t *got, int got_nd) {
    if (want_nd == got_nd) {
        for (int i = 0; i < want_nd; i++)
            if (want[i] != got[i]) return 0;
        return 1;
    }
    return want_nd == 2 && got_nd == 4 && got[0] == want[0] && got[1] == want[1] && got[2] == 1 &&
           got[3] == 1;
}

// The dtype tensor e (expected with ndim dims) has once loaded.
static ldm_dtype resident_dtype(const ldm_weights *w, const ldm_tensor_entry *e, int ndim,
                                int allow_half) {
    int half_ok = allow_half && ndim >= 2 && w->dtype != LDM_WEIGHTS_F32 &&
                  w->ops->linear_half && w->ops->conv2d_half;
    if (!half_ok) return LDM_DTYPE_F32;
    if (e->dtype == LDM_DTYPE_F16 || e->dtype == LDM_DTYPE_BF16) return e->dtype;
    if (e->dtype == LDM_DTYPE_F32 && w->dtype == LDM_WEIGHTS_F16) return LDM_DTYPE_F16;
    return LDM_DTYPE_F32;
}

// out (already shaped, dtype `dt`, on w->ops) <- entry e, converted.
static int fill(ldm_tensor *out, const ldm_tensor_entry *e, ldm_dtype dt, const char *path,
                const char *key) {
    size_t n = (size_t)(e->numel ? e->numel : 1);
    float *host = malloc(n * sizeof(float));
    if (!host) return ldm_error("%s: tensor '%s': out of memory", path, key);
    int rc = 0;
    if (dt == e->dtype) {                  // as stored: copy the bytes
        memcpy(host, e->data, (size_t)e->nbytes);
    } else if ((rc = ldm_entry_to_f32(host, e)) == 0 && dt != LDM_DTYPE_F32) {
        uint16_t *h16 = (uint16_t *)host;  // narrow in place (2-byte writes trail the reads)
        for (int64_t i = 0; i < e->numel; i++)
            h16[i] = dt == LDM_DTYPE_F16 ? ldm_f32_to_f16(host[i]) : ldm_f32_to_bf16(host[i]);
    }
    if (rc == 0 && e->numel)
        out->ops->upload(out->data, host, (size_t)e->numel * ldm_tensor_elem_size(dt));
    free(host);
    return rc;
}

// out <- the tensor `name` expected as shape[ndim], on w->ops.
static int load(ldm_tensor *out, ldm_weights *w, const char *name, const int64_t *shape,
                int ndim, int allow_half) {
    memset(out, 0, sizeof *out);
    char key[512], want[160], got[160];
    const char *path = w->file && w->file->path ? w->file->path : "<weights>";
    int part, nparts;  // rows part/nparts of a fused tensor (open_clip in_proj)
    if (!weights_key_part(key, sizeof key, w, name, &part, &nparts)) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ldm_last_error());
        return ldm_error("%s: %s", path, msg);
    }
    ldm_shape_str(want, sizeof want, shape, ndim);
    const ldm_tensor_entry *e = w->file ? ldm_tensor_file_find(w->file, key) : NULL;
    if (!e)
        return ldm_error("%s: missing tensor '%s' (expected %s) -- is this the right model "
                         "component and version (SD1/SD2)?", path, key, want);
    ldm_tensor_entry slice;
    if (nparts > 1 && e->ndim >= 1 && e->shape[0] % nparts == 0 && e->numel > 0) {
        // Rows [part*R, (part+1)*R) of a [nparts*R, ...] tensor: a view into the file.
        slice = *e;
        slice.shape[0] = e->shape[0] / nparts;
        slice.numel = e->numel / nparts;
        slice.nbytes = e->nbytes / (uint64_t)nparts;
        slice.data = e->data + (uint64_t)part * slice.nbytes;
        e = &slice;
    }
    ldm_shape_str(got, sizeof got, e->shape, e->ndim);
    if (!shape_accepts(shape, ndim, e->shape, e->ndim))
        return ldm_error("%s: tensor '%s': expected %s, found %s -- is this an SD1/SD2 %s "
                         "checkpoint of the expected size?", path, key, want, got,
                         w->comp == LDM_COMP_UNET ? "UNet"
                         : w->comp == LDM_COMP_VAE ? "VAE" : "text encoder");
    if ((uint64_t)e->numel * (uint64_t)ldm_dtype_size(e->dtype) != e->nbytes)
        return ldm_error("%s: tensor '%s': %llu bytes do not hold %lld %s values", path, key,
                         (unsigned long long)e->nbytes, (long long)e->numel,
                         ldm_dtype_name(e->dtype));
    ldm_dtype dt = resident_dtype(w, e, ndim, allow_half);
    size_t es = ldm_tensor_elem_size(dt);
    if (dt == e->dtype && w->map && w->ops->host_memory && (uintptr_t)e->data % es == 0) {
        // Kept as stored, in host memory: point into the mapping. Its pages
        // are the file's (page cache), resident only once touched.
        out->data = (float *)(uintptr_t)e->data;
        out->ndim = ndim;
        memcpy(out->shape, shape, (size_t)ndim * sizeof(int64_t));
        out->numel = e->numel;
        out->ops = w->ops;
        out->owns = 0;
        out->dtype = dt;
    } else {
        *out = ldm_tensor_new_dtype(w->ops, shape, ndim, dt);
        if (!out->data) return LDM_ERR;
        if (fill(out, e, dt, path, key)) {
            ldm_tensor_free(out);
            return LDM_ERR;
        }
        ldm_tensor_file_release(w->file, e);   // the copy is what we keep
    }
    w->n_params += e->numel;
    w->n_loaded++;
    return 0;
}

int ldm_weights_load(ldm_tensor *out, ldm_weights *w, const char *name, const int64_t *shape,
                     int ndim) {
    return load(out, w, name, shape, ndim, 1);
}

int ldm_weights_load_f32(ldm_tensor *out, ldm_weights *w, const char *name,
                         const int64_t *shape, int ndim) {
    return load(out, w, name, shape, ndim, 0);
}
