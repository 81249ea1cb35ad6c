/*
 * tests/test_train_loop.c -- the training infrastructure of `sd train`:
 *
 * 1. initial weights (ldm/train/init.c) against PyTorch's freshly constructed
 *    tiny models (tests/fixtures/train/init/, tools/reference/
 *    fixtures_train_init.py): the names, shapes and order of
 *    named_parameters(), and per tensor the distribution (constants exactly;
 *    the spread of random tensors within sampling error; uniform vs normal);
 * 2. export round trip: a random tiny model written as a diffusers folder
 *    (ldm/train/export.c) and opened by the model loaders gives back the same
 *    weights rounded to fp16;
 * 3. checkpoint round trip: parameters, AdamW moments, EMA, generator, loss
 *    history and settings saved and loaded bit for bit; other settings refused;
 * 4. `sd train` usage errors (exit 2, nothing written) and output protection;
 * 5. resume: both stages run 6 steps at once and as 3 + 3 (or 4 + 2) with
 *    --stop-at / --resume give the same exported bytes and the same losses;
 * 6. both stages against PyTorch: stage 1, 30 steps of train_tiny.py's
 *    train_vae on a micro autoencoder (tests/fixtures/train/steps_vae); stage 2, 50 steps of train_tiny.py's loop on a micro
 *    UNet + text encoder from the same initial weights (tests/fixtures/train/
 *    steps, tools/reference/fixtures_train_steps.py): every step's losses and
 *    a few final weights.
 */
#include <sys/stat.h>
#include "tests/test.h"
#include "ldm/backend/ops.h"
#include "ldm/io/fs.h"
#include "ldm/model.h"
#include "ldm/train/checkpoint.h"
#include "ldm/train/export.h"
#include "ldm/train/init.h"

#define FIX "tests/fixtures/train/init/"

// ---- 1. initial weights vs torch ------------------------------------------------------

static void check_init(const char *what, const ldm_tensor_file *sd) {
    char path[256];
    snprintf(path, sizeof path, FIX "%s.tsv", what);
    char *text = test_read_file(path, NULL);
    if (!test_check(text != NULL, path, "cannot read (tools/reference/fixtures_train_init.py)"))
        return;
    int64_t k = 0, order_bad = 0, dist_bad = 0, const_bad = 0;
    char first_bad[400] = "";
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), k++) {
        char name[200], shape[64];
        double mean, std, maxabs;
        if (sscanf(line, "%199s %63s %lf %lf %lf", name, shape, &mean, &std, &maxabs) != 5) break;
        if (k >= sd->n_entries) { order_bad++; continue; }
        const ldm_tensor_entry *e = &sd->entries[k];
        char ours[64] = "";
        for (int d = 0; d < e->ndim; d++)
            snprintf(ours + strlen(ours), sizeof ours - strlen(ours), "%s%lld", d ? "," : "",
                     (long long)e->shape[d]);
        if (strcmp(e->name, name) || strcmp(ours, shape)) {
            if (!order_bad++) snprintf(first_bad, sizeof first_bad, "#%lld: %s [%s] vs torch %s [%s]",
                                       (long long)k, e->name, ours, name, shape);
            continue;
        }
        const float *x = (const float *)e->data;
        double s = 0, s2 = 0, mx = 0;
        for (int64_t i = 0; i < e->numel; i++) {
            s += x[i];
            s2 += (double)x[i] * x[i];
            if (fabs(x[i]) > mx) mx = fabs(x[i]);
        }
        double n = (double)e->numel, m = s / n;
        double sd_ = n > 1 ? sqrt(fmax(0, (s2 - n * m * m) / (n - 1))) : 0;
        if (std == 0) {   // a constant: GroupNorm/LayerNorm gamma 1, beta 0, zero biases
            for (int64_t i = 0; i < e->numel; i++) const_bad += x[i] != (float)mean;
            continue;
        }
        // spread: both samples are random, so the tolerance follows 1/sqrt(n)
        int ok = fabs(sd_ / std - 1) < 4.0 / sqrt(n) + 0.02;
        // uniform (max|x| <= sqrt(3) std) or normal (max|x| ~ 3+ std) like torch's
        if (n >= 1000) ok &= (mx / sd_ > 2.2) == (maxabs / std > 2.2);
        if (!ok && !dist_bad++)
            snprintf(first_bad, sizeof first_bad, "%s: std %.5f max %.5f, torch std %.5f max %.5f",
                     name, sd_, mx, std, maxabs);
    }
    free(text);
    char label[96];
    snprintf(label, sizeof label, "init %s: names, shapes, order = torch", what);
    test_check(order_bad == 0 && k == sd->n_entries, label, "%lld differ (%lld vs %lld tensors) %s",
               (long long)order_bad, (long long)sd->n_entries, (long long)k, first_bad);
    snprintf(label, sizeof label, "init %s: distributions = torch", what);
    test_check(dist_bad == 0 && const_bad == 0, label, "%lld spreads, %lld constants off; %s",
               (long long)dist_bad, (long long)const_bad, first_bad);
}

// ---- helpers: a parameter list over state dicts ------------------------------------

typedef struct model_params {
    ldm_tensor_file sd[3];   // unet, vae, text_encoder
    ldm_tensor *w, *g;
    ldm_params list;
} model_params;

static void params_from_states(model_params *mp, const struct ldm_ops *ops) {
    static const char *const prefix[3] = {"unet", "vae", "text_encoder"};
    int64_t n = mp->sd[0].n_entries + mp->sd[1].n_entries + mp->sd[2].n_entries, k = 0;
    mp->w = calloc((size_t)n, sizeof *mp->w);
    mp->g = calloc((size_t)n, sizeof *mp->g);
    memset(&mp->list, 0, sizeof mp->list);
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < mp->sd[c].n_entries; i++, k++) {
            const ldm_tensor_entry *e = &mp->sd[c].entries[i];
            mp->w[k] = (ldm_tensor){.data = (float *)e->data, .ndim = e->ndim, .numel = e->numel,
                                    .ops = ops, .dtype = LDM_DTYPE_F32};
            memcpy(mp->w[k].shape, e->shape, sizeof e->shape);
            mp->g[k] = ldm_tensor_zeros(ops, e->shape, e->ndim);
            ldm_params_add(&mp->list, &mp->w[k], &mp->g[k], "%s.%s", prefix[c], e->name);
        }
}

static void params_free(model_params *mp) {
    for (int i = 0; i < mp->list.n; i++) ldm_tensor_free(&mp->g[i]);
    ldm_params_free(&mp->list);
    for (int c = 0; c < 3; c++) ldm_tensor_file_close(&mp->sd[c]);
    free(mp->w), free(mp->g);
}

// ---- 2. export round trip -------------------------------------------------------------

static void test_export(const model_params *mp, const ldm_unet_config *uc,
                        const ldm_vae_config *vc, const ldm_clip_config *cc, const char *tmp) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/model", tmp);
    ldm_vae_config vc2 = *vc;
    vc2.scaling_factor = 0.4093127f;   // written rounded to 5 decimals, as train_tiny.py
    ldm_export_spec spec = {.params = &mp->list, .unet = uc, .clip = cc, .vae = &vc2};
    if (!test_check(ldm_export_model(dir, &spec) == 0, "export: diffusers folder written", "%s",
                    ldm_last_error()))
        return;
    const struct ldm_ops *ops = ldm_backend("cpu");
    ldm_model m;
    if (!test_check(ldm_model_open(&m, dir, &(ldm_model_options){.ops = ops}) == 0,
                    "export: ldm_model_open reads it", "%s", ldm_last_error()))
        return;
    test_check(m.has_unet && m.has_vae && m.has_text && m.prediction == LDM_PRED_EPS &&
                   m.family == LDM_FAMILY_SD1,
               "export: unet, vae, text encoder; SD1, epsilon", NULL);
    test_check(fabsf(m.vae.scaling_factor - 0.40931f) < 1e-7f && m.unet.n_levels == uc->n_levels &&
                   m.unet.cross_attention_dim == uc->cross_attention_dim &&
                   m.unet.num_heads[0] == uc->num_heads[0] &&
                   m.clip.hidden_size == cc->hidden_size && m.vae.n_levels == vc->n_levels,
               "export: configs read back (scaling_factor rounded to 5 decimals)", NULL);
    // every weight, through each component's name mapping, = the fp16 rounding of ours
    ldm_weights *ws[3] = {&m.unet_w, &m.vae_w, &m.clip_w};
    int64_t bad = 0, count = 0;
    char first[256] = "";
    for (int c = 0; c < 3; c++)
        for (int64_t i = 0; i < mp->sd[c].n_entries; i++, count++) {
            const ldm_tensor_entry *e = &mp->sd[c].entries[i];
            ldm_tensor t = {0};
            if (ldm_weights_load_f32(&t, ws[c], e->name, e->shape, e->ndim)) {
                if (!bad++) snprintf(first, sizeof first, "%s", ldm_last_error());
                continue;
            }
            const float *x = (const float *)e->data;
            for (int64_t j = 0; j < e->numel; j++)
                if (t.data[j] != ldm_f16_to_f32(ldm_f32_to_f16(x[j]))) {
                    if (!bad++) snprintf(first, sizeof first, "%s[%lld]: %g vs %g", e->name,
                                         (long long)j, t.data[j], x[j]);
                    break;
                }
            ldm_tensor_free(&t);
        }
    test_check(bad == 0 && count == mp->list.n, "export: every weight = fp16(ours)", "%lld bad: %s",
               (long long)bad, first);
    // and the model loaders take the whole folder
    ldm_unet u;
    ldm_vae v;
    ldm_clip cl;
    int ok_u = ldm_unet_load(&u, &m.unet, &m.unet_w) == 0;
    if (ok_u) ldm_unet_free(&u);
    int ok_v = ldm_vae_load(&v, &m.vae, &m.vae_w, LDM_VAE_ENCODER | LDM_VAE_DECODER) == 0;
    if (ok_v) ldm_vae_free(&v);
    int ok_c = ldm_clip_load(&cl, &m.clip_w, &m.clip) == 0;
    if (ok_c) ldm_clip_free(&cl);
    test_check(ok_u && ok_v && ok_c, "export: ldm_unet_load, ldm_vae_load, ldm_clip_load", "%s",
               ldm_last_error());
    ldm_model_close(&m);
}

// ---- 3. checkpoint round trip ------------------------------------------------------------

static void test_checkpoint(model_params *mp, const char *tmp) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/train-state", tmp);
    const ldm_params *p = &mp->list;
    ldm_train_state s;
    if (!test_check(ldm_train_state_init(&s, p, "unet", 1, 2) == 0, "checkpoint: state init", "%s",
                    ldm_last_error()))
        return;
    ldm_rng_init(&s.rng, LDM_RNG_CPU, 200);
    float junk[5];
    ldm_rng_randn(&s.rng, junk, 5);   // mid-stream: a cached normal, an advanced index
    for (int64_t i = 0; i < p->numel; i++) s.m[i] = 1e-3f * (float)(i % 97), s.v[i] = 1e-6f * (float)(i % 13);
    s.ema[7] = 42.0f;
    for (int st = 0; st < 3; st++) {
        s.step++;
        float terms[2] = {0.5f / (float)s.step, 0.25f / (float)s.step};
        ldm_train_state_log(&s, terms);
    }
    s.settings = strdup("{\"batch\": 8, \"lr\": 0.001}");
    int rc = ldm_checkpoint_save(dir, p, &s);
    s.step++;   // a second save replaces the first
    float t4[2] = {0.1f, 0.05f};
    ldm_train_state_log(&s, t4);
    rc |= ldm_checkpoint_save(dir, p, &s);
    if (!test_check(rc == 0, "checkpoint: saved twice", "%s", ldm_last_error())) return;
    char f3[600], f4[600];
    snprintf(f3, sizeof f3, "%s/state-000003.safetensors", dir);
    snprintf(f4, sizeof f4, "%s/state-000004.safetensors", dir);
    test_check(!ldm_is_file(f3) && ldm_is_file(f4), "checkpoint: the older weights file removed", NULL);

    // load into a state of the same shape, after scrambling the weights
    float *w0 = malloc((size_t)p->numel * sizeof(float));
    for (int64_t i = 0, off = 0; i < p->n; off += p->p[i].w->numel, i++) {
        memcpy(w0 + off, p->p[i].w->data, (size_t)p->p[i].w->numel * sizeof(float));
        memset(p->p[i].w->data, 0, (size_t)p->p[i].w->numel * sizeof(float));
    }
    ldm_train_state r;
    ldm_train_state_init(&r, p, "unet", 1, 2);
    r.settings = strdup(s.settings);
    rc = ldm_checkpoint_load(dir, p, &r);
    test_check(rc == 0, "checkpoint: loaded", "%s", ldm_last_error());
    int64_t wbad = 0;
    for (int64_t i = 0, off = 0; i < p->n; off += p->p[i].w->numel, i++)
        wbad += memcmp(w0 + off, p->p[i].w->data, (size_t)p->p[i].w->numel * sizeof(float)) != 0;
    size_t nb = (size_t)p->numel * sizeof(float);
    test_check(wbad == 0 && !memcmp(r.m, s.m, nb) && !memcmp(r.v, s.v, nb) &&
                   !memcmp(r.ema, s.ema, nb),
               "checkpoint: parameters, AdamW m and v, EMA bit for bit", "%lld tensors differ",
               (long long)wbad);
    test_check(r.step == 4 && !memcmp(r.losses, s.losses, 4 * 2 * sizeof(float)),
               "checkpoint: step and loss history", "step %lld", (long long)r.step);
    float a[40], b[40];
    ldm_rng_randn(&s.rng, a, 3), ldm_rng_randn(&r.rng, b, 3);        // the cached normal
    ldm_rng_randn(&s.rng, a + 3, 37), ldm_rng_randn(&r.rng, b + 3, 37);
    test_check(!memcmp(a, b, sizeof a), "checkpoint: the generator continues the same stream", NULL);
    ldm_train_state_free(&r);

    // other settings, another stage: refused with a message naming the problem
    ldm_train_state_init(&r, p, "unet", 1, 2);
    r.settings = strdup("{\"batch\": 16, \"lr\": 0.001}");
    rc = ldm_checkpoint_load(dir, p, &r);
    test_check(rc != 0 && strstr(ldm_last_error(), "other settings"),
               "checkpoint: other settings refused", "%s", ldm_last_error());
    ldm_train_state_free(&r);
    ldm_train_state_init(&r, p, "vae", 1, 2);
    rc = ldm_checkpoint_load(dir, p, &r);
    test_check(rc != 0 && strstr(ldm_last_error(), "stage"), "checkpoint: another stage refused",
               "%s", ldm_last_error());
    ldm_train_state_free(&r);
    ldm_train_state_free(&s);
    free(w0);
}

// ---- 4. usage errors and output protection -----------------------------------------------

static int file_same(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = test_read_file(a, &na), *y = test_read_file(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x), free(y);
    return same;
}

static void test_cli(const char *sd, const char *tmp, const char *out, const char *err_path) {
    static const struct { const char *args, *want; } bad[] = {
        {"train --out X", "--stage"},
        {"train --stage gan --out X", "expected vae"},
        {"train --stage vae", "--out DIR is required"},
        {"train --stage vae --out X --steps 0", "--steps 0"},
        {"train --stage vae --out X --steps ten", "not an integer"},
        {"train --stage vae --out X --batch 0", "--batch"},
        {"train --stage vae --out X --lr -1", "--lr"},
        {"train --stage vae --out X --vae-crop 20", "multiple of 8"},
        {"train --stage vae --out X --resume --overwrite", "give one"},
        {"train --stage unet --out X", "needs --init"},
        {"train --stage unet --out X --init /nonexistent", "no vae/config.json"},
        {"train --stage vae --out X --frobnicate", "unknown flag"},
        {"train --stage vae --out X --steps", "needs a value"},
    };
    char *err, xdir[600];
    snprintf(xdir, sizeof xdir, "%s/X", tmp);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char a[400];
        snprintf(a, sizeof a, "%s", bad[i].args);
        char *x = strstr(a, " X");   // the output folder inside tmp
        if (x) {
            char rest[400];
            snprintf(rest, sizeof rest, "%s", x + 2);
            snprintf(x, sizeof a - (size_t)(x - a), " '%s'%s", xdir, rest);
        }
        int rc = test_run_cli(sd, a, out, err_path, &err);
        char name[200];
        snprintf(name, sizeof name, "usage error exit 2: sd %.60s", bad[i].args);
        test_check(rc == 2 && strstr(err, bad[i].want) && !ldm_is_dir(xdir), name,
                   "exit %d, stderr: %.200s", rc, err);
    }
}

// After test_resume: an --out that holds a run is neither replaced nor resumed
// without being asked; an existing --log file is not replaced either.
static void test_protect(const char *sd, const char *tmp, const char *out, const char *err_path) {
    char args[1200], *err, before[700];
    snprintf(args, sizeof args, "train --stage vae --out '%s/a' --steps 1 --n-images 4 --batch 1", tmp);
    snprintf(before, sizeof before, "%s/a/vae/diffusion_pytorch_model.safetensors", tmp);
    size_t n0 = 0, n1 = 0;
    char *w0 = test_read_file(before, &n0);
    int rc = test_run_cli(sd, args, out, err_path, &err);
    char *w1 = test_read_file(before, &n1);
    test_check(rc == 1 && strstr(err, "--resume") && strstr(err, "--overwrite") && w0 && w1 &&
                   n0 == n1 && !memcmp(w0, w1, n0),
               "an existing --out is refused (untouched) without --resume / --overwrite",
               "exit %d: %.200s", rc, err);
    free(w0), free(w1);
    snprintf(args, sizeof args, "train --stage vae --out '%s/e' --steps 1 --n-images 4 --batch 1 "
             "--log '%s/a.tsv'", tmp, tmp);
    rc = test_run_cli(sd, args, out, err_path, &err);
    test_check(rc == 1 && strstr(err, "already exists"), "an existing --log file is refused",
               "exit %d: %.200s", rc, err);
}

// ---- 5. resume = one uninterrupted run -------------------------------------------------------

static void test_resume(const char *sd, const char *tmp, const char *out, const char *err_path) {
    const char *common = "--n-images 16 --batch 2 --steps 6 --quiet";
    const char *vae = "--vae-crop 16 --vae-full-steps 2";
    char args[2000], *err, p[2][700], q[2][700];
    // stage 1: a = 6 steps; b = 3 steps, stopped, then resumed to 6 (with --log both times)
    snprintf(args, sizeof args, "train --stage vae --out '%s/a' %s %s --log '%s/a.tsv'", tmp, common,
             vae, tmp);
    int rc = test_run_cli(sd, args, out, err_path, &err);
    if (!test_check(rc == 0, "stage vae: 6 steps", "exit %d: %.300s", rc, err)) return;
    snprintf(args, sizeof args, "train --stage vae --out '%s/b' %s %s --stop-at 3 --log '%s/b.tsv'",
             tmp, common, vae, tmp);
    rc = test_run_cli(sd, args, out, err_path, &err);
    snprintf(p[0], sizeof p[0], "%s/b/vae", tmp);
    test_check(rc == 0 && !ldm_is_dir(p[0]), "stage vae: --stop-at 3 checkpoints, exports nothing",
               "exit %d: %.300s", rc, err);
    snprintf(args, sizeof args, "train --stage vae --out '%s/b' %s %s --resume --log '%s/b.tsv'",
             tmp, common, vae, tmp);
    rc = test_run_cli(sd, args, out, err_path, &err);
    test_check(rc == 0, "stage vae: --resume to 6", "exit %d: %.300s", rc, err);
    snprintf(p[0], sizeof p[0], "%s/a/vae/diffusion_pytorch_model.safetensors", tmp);
    snprintf(p[1], sizeof p[1], "%s/b/vae/diffusion_pytorch_model.safetensors", tmp);
    snprintf(q[0], sizeof q[0], "%s/a.tsv", tmp);
    snprintf(q[1], sizeof q[1], "%s/b.tsv", tmp);
    test_check(file_same(p[0], p[1]) && file_same(q[0], q[1]),
               "stage vae: stopped + resumed = uninterrupted (weights, --log)", NULL);
    snprintf(p[0], sizeof p[0], "%s/a/vae/config.json", tmp);
    snprintf(p[1], sizeof p[1], "%s/a/loss_curves.png", tmp);
    char *cfg = test_read_file(p[0], NULL);
    test_check(cfg && strstr(cfg, "\"scaling_factor\"") && ldm_is_file(p[1]),
               "stage vae: vae/config.json with the scaling factor, loss_curves.png", NULL);
    free(cfg);
    // a resume with other settings is refused
    snprintf(args, sizeof args, "train --stage vae --out '%s/b' %s %s --resume --lr 0.01", tmp,
             common, vae);
    rc = test_run_cli(sd, args, out, err_path, &err);
    test_check(rc == 1 && strstr(err, "other settings"), "stage vae: --resume with another --lr refused",
               "exit %d: %.300s", rc, err);

    // stage 2 on a's VAE: c = 6 steps; d = 4 + 2
    snprintf(args, sizeof args, "train --stage unet --init '%s/a' --out '%s/c' %s", tmp, tmp, common);
    rc = test_run_cli(sd, args, out, err_path, &err);
    if (!test_check(rc == 0, "stage unet: 6 steps", "exit %d: %.300s", rc, err)) return;
    snprintf(args, sizeof args, "train --stage unet --init '%s/a' --out '%s/d' %s --stop-at 4", tmp,
             tmp, common);
    rc = test_run_cli(sd, args, out, err_path, &err);
    snprintf(args, sizeof args, "train --stage unet --init '%s/a' --out '%s/d' %s --resume", tmp, tmp,
             common);
    rc |= test_run_cli(sd, args, out, err_path, &err);
    test_check(rc == 0, "stage unet: --stop-at 4, --resume to 6", "exit %d: %.300s", rc, err);
    static const char *const files[] = {"unet/diffusion_pytorch_model.safetensors",
                                        "text_encoder/model.safetensors", "losses-unet.tsv"};
    int same = 1;
    for (int i = 0; i < 3; i++) {
        snprintf(p[0], sizeof p[0], "%s/c/%s", tmp, files[i]);
        snprintf(p[1], sizeof p[1], "%s/d/%s", tmp, files[i]);
        same &= file_same(p[0], p[1]);
    }
    test_check(same, "stage unet: stopped + resumed = uninterrupted (EMA weights, losses)", NULL);
    // the result is a model txt2img runs
    snprintf(args, sizeof args, "txt2img --ckpt '%s/c' --prompt 'a red circle' --outdir '%s/img' "
             "--n_samples 1 --n_iter 1 --ddim_steps 2", tmp, tmp);
    rc = test_run_cli(sd, args, out, err_path, &err);
    snprintf(p[0], sizeof p[0], "%s/img/grid-0000.png", tmp);
    test_check(rc == 0 && ldm_is_file(p[0]), "stage unet: the exported model runs in sd txt2img",
               "exit %d: %.300s", rc, err);
}

// ---- 6. stage 2 against PyTorch, step by step --------------------------------------------

#define STEPS "tests/fixtures/train/steps/"

static int copy(const char *dst, const char *src) {
    size_t n = 0;
    char *b = test_read_file(src, &n);
    FILE *f = b ? fopen(dst, "wb") : NULL;
    int ok = f && fwrite(b, 1, n, f) == n;
    if (f) ok &= fclose(f) == 0;
    free(b);
    return test_check(ok, src, "cannot copy to %s", dst);
}

static void test_steps(const char *sd, const char *tmp, const char *out, const char *err_path) {
    // the initial folder: the fixture's micro UNet and text encoder (token
    // embedding rows put back in place), the shipped tiny model's VAE
    char p[700], q[700], args[2000], *err;
    static const char *const dirs[] = {"init", "init/unet", "init/text_encoder", "init/vae"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", tmp, dirs[i]);
        mkdir(p, 0777);
    }
    static const char *const files[][2] = {
        {"init/unet/config.json", STEPS "init/unet/config.json"},
        {"init/unet/diffusion_pytorch_model.safetensors", STEPS "init/unet/diffusion_pytorch_model.safetensors"},
        {"init/text_encoder/config.json", STEPS "init/text_encoder/config.json"},
        {"init/vae/config.json", "tools/tiny-model/vae/config.json"},
        {"init/vae/diffusion_pytorch_model.safetensors", "tools/tiny-model/vae/diffusion_pytorch_model.safetensors"}};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", tmp, files[i][0]);
        if (!copy(p, files[i][1])) return;
    }
    ldm_tensor_file tf;
    if (!test_check(ldm_tensor_file_open(&tf, STEPS "init/text_encoder/model.safetensors") == 0,
                    "steps: fixture text encoder", "%s", ldm_last_error()))
        return;
    // token_rows.npy: int64 ids (.npy version 1: 10-byte preamble, header, data)
    size_t nbytes = 0;
    char *rb = test_read_file(STEPS "token_rows.npy", &nbytes);
    size_t off = rb && nbytes > 10 ? 10 + (uint8_t)rb[8] + 256 * (uint8_t)rb[9] : 0;
    int64_t nrows = off && nbytes > off && memmem(rb, off, "'<i8'", 5) ? (int64_t)(nbytes - off) / 8 : 0, nemb;
    int64_t *rows = malloc((size_t)(nrows ? nrows : 1) * sizeof *rows);
    if (nrows) memcpy(rows, rb + off, (size_t)nrows * 8);
    free(rb);
    float *emb = test_load_npy(STEPS "token_embedding.npy", &nemb);
    if (!test_check(nrows > 0 && emb, "steps: token rows", NULL)) return;
    int64_t D = nemb / nrows, V = 49408;
    int n = (int)tf.n_entries + 1;
    const char **names = calloc((size_t)n, sizeof *names);
    ldm_tensor *ts = calloc((size_t)n, sizeof *ts);
    const ldm_tensor **tp = calloc((size_t)n, sizeof *tp);
    for (int i = 0; i < n - 1; i++) {
        const ldm_tensor_entry *e = &tf.entries[i];
        ts[i] = (ldm_tensor){.ndim = e->ndim, .numel = e->numel, .dtype = LDM_DTYPE_F32};
        memcpy(ts[i].shape, e->shape, sizeof e->shape);
        ts[i].data = malloc((size_t)e->numel * sizeof(float));
        ldm_entry_to_f32(ts[i].data, e);
        names[i] = e->name, tp[i] = &ts[i];
    }
    ts[n - 1] = (ldm_tensor){.ndim = 2, .shape = {V, D}, .numel = V * D, .dtype = LDM_DTYPE_F32};
    ts[n - 1].data = calloc((size_t)(V * D), sizeof(float));
    for (int64_t r = 0; r < nrows; r++)
        memcpy(ts[n - 1].data + rows[r] * D, emb + r * D, (size_t)D * sizeof(float));
    names[n - 1] = "embeddings.token_embedding.weight", tp[n - 1] = &ts[n - 1];
    snprintf(p, sizeof p, "%s/init/text_encoder/model.safetensors", tmp);
    int rc = ldm_safetensors_write(p, n, names, tp);
    for (int i = 0; i < n; i++) free(ts[i].data);
    free(names), free(ts), free(tp), free(rows), free(emb);
    ldm_tensor_file_close(&tf);
    if (!test_check(rc == 0, "steps: initial folder", "%s", ldm_last_error())) return;

    // 50 steps as the recipe (seed 0, 64 images, batch 8)
    snprintf(args, sizeof args, "train --stage unet --init '%s/init' --out '%s/steps' --steps 50 "
             "--n-images 64 --batch 8 --seed 0 --save-every 0 --quiet", tmp, tmp);
    rc = test_run_cli(sd, args, out, err_path, &err);
    if (!test_check(rc == 0, "steps: sd train --stage unet, 50 steps", "exit %d: %.300s", rc, err))
        return;
    int64_t nl;
    float *want = test_load_npy(STEPS "losses.npy", &nl);   // [50, 2] mse, weighted
    snprintf(p, sizeof p, "%s/steps/losses-unet.tsv", tmp);
    char *text = test_read_file(p, NULL);
    if (!want || !text) return;
    float *got = calloc((size_t)nl, sizeof(float));
    int64_t k = 0;
    for (char *line = strtok(strchr(text, '\n') + 1, "\n"); line && k + 1 < nl; line = strtok(NULL, "\n")) {
        int step;
        if (sscanf(line, "%d %f %f", &step, &got[k], &got[k + 1]) == 3) k += 2;
    }
    test_check(k == nl, "steps: 50 lines of losses", "%lld values", (long long)k);
    // float32 both sides, the same ops in other orders: rounding-level agreement
    // (measured 2.4e-6 relative after 50 steps)
    test_close("steps: losses of the 50 steps = torch", got, want, nl, 2e-5, 0);
    free(want), free(got), free(text);
    // final weights (train-state holds them in fp32)
    snprintf(q, sizeof q, "%s/steps/train-state/state-000050.safetensors", tmp);
    static const char *const fin[][2] = {
        {"param/unet.conv_in.weight", STEPS "final_unet.conv_in.weight.npy"},
        {"param/unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
         STEPS "final_unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight.npy"},
        {"param/unet.conv_out.bias", STEPS "final_unet.conv_out.bias.npy"},
        {"param/text_encoder.encoder.layers.0.self_attn.q_proj.weight",
         STEPS "final_text_encoder.encoder.layers.0.self_attn.q_proj.weight.npy"},
        {"param/text_encoder.final_layer_norm.weight", STEPS "final_text_encoder.final_layer_norm.weight.npy"}};
    if (!test_check(ldm_tensor_file_open(&tf, q) == 0, "steps: train-state", "%s", ldm_last_error()))
        return;
    for (int i = 0; i < 5; i++) {
        const ldm_tensor_entry *e = ldm_tensor_file_find(&tf, fin[i][0]);
        int64_t nw;
        float *w = test_load_npy(fin[i][1], &nw);
        if (!test_check(e && w && e->numel == nw, fin[i][0], "missing or another size")) {
            free(w);
            continue;
        }
        float *g = malloc((size_t)nw * sizeof(float));
        ldm_entry_to_f32(g, e);
        test_close(fin[i][0], g, w, nw, 2e-5, 0);   // measured <= 1.5e-6
        free(g), free(w);
    }
    ldm_tensor_file_close(&tf);
}

// Stage 1 against PyTorch: 30 steps of train_tiny.py's train_vae on a micro
// AutoencoderKL from the same initial weights (tests/fixtures/train/steps_vae,
// tools/reference/fixtures_train_steps_vae.py): 20 steps on 32x32 crops, 10 on
// whole images; every step's L1, MSE, KL and a few final weights.
#define STEPS_VAE "tests/fixtures/train/steps_vae/"

static void test_steps_vae(const char *sd, const char *tmp, const char *out, const char *err_path) {
    char args[1200], p[700], *err;
    snprintf(args, sizeof args, "train --stage vae --init " STEPS_VAE "init --out '%s/steps_vae' "
             "--steps 30 --vae-full-steps 10 --n-images 32 --batch 4 --seed 0 --save-every 0 --quiet", tmp);
    int rc = test_run_cli(sd, args, out, err_path, &err);
    if (!test_check(rc == 0, "stage vae vs torch: 30 steps", "exit %d: %.300s", rc, err)) return;
    int64_t nl;
    float *want = test_load_npy(STEPS_VAE "losses.npy", &nl);   // [30, 3] l1, l2, kl
    snprintf(p, sizeof p, "%s/steps_vae/losses-vae.tsv", tmp);
    char *text = test_read_file(p, NULL);
    if (!want || !text || nl != 90) { free(want), free(text); return; }
    float got[3][30], exp[3][30];
    int k = 0;
    for (char *line = strtok(strchr(text, '\n') + 1, "\n"); line && k < 30; line = strtok(NULL, "\n")) {
        int step;
        if (sscanf(line, "%d %f %f %f", &step, &got[0][k], &got[1][k], &got[2][k]) == 4) k++;
    }
    for (int i = 0; i < 30; i++)
        for (int c = 0; c < 3; c++) exp[c][i] = want[i * 3 + c];
    // measured: L1 2.4e-6, MSE 3.4e-6, KL 4.0e-5 relative after 30 steps
    test_check(k == 30, "stage vae vs torch: 30 lines of losses", "%d", k);
    test_close("stage vae vs torch: L1 of every step", got[0], exp[0], 30, 2e-5, 0);
    test_close("stage vae vs torch: MSE of every step", got[1], exp[1], 30, 2e-5, 0);
    test_close("stage vae vs torch: KL of every step", got[2], exp[2], 30, 2e-4, 0);
    free(want), free(text);
    static const char *const fin[][2] = {
        {"param/vae.encoder.conv_in.weight", STEPS_VAE "final_vae.encoder.conv_in.weight.npy"},
        {"param/vae.encoder.mid_block.attentions.0.to_q.weight",
         STEPS_VAE "final_vae.encoder.mid_block.attentions.0.to_q.weight.npy"},
        {"param/vae.decoder.up_blocks.3.resnets.1.conv2.weight",
         STEPS_VAE "final_vae.decoder.up_blocks.3.resnets.1.conv2.weight.npy"},
        {"param/vae.quant_conv.bias", STEPS_VAE "final_vae.quant_conv.bias.npy"}};
    ldm_tensor_file tf;
    snprintf(p, sizeof p, "%s/steps_vae/train-state/state-000030.safetensors", tmp);
    if (!test_check(ldm_tensor_file_open(&tf, p) == 0, "stage vae vs torch: train-state", "%s",
                    ldm_last_error()))
        return;
    for (int i = 0; i < 4; i++) {
        const ldm_tensor_entry *e = ldm_tensor_file_find(&tf, fin[i][0]);
        int64_t nw;
        float *w = test_load_npy(fin[i][1], &nw);
        if (!test_check(e && w && e->numel == nw, fin[i][0], "missing or another size")) {
            free(w);
            continue;
        }
        float *g = malloc((size_t)nw * sizeof(float));
        ldm_entry_to_f32(g, e);
        test_close(fin[i][0], g, w, nw, 1e-4, 0);
        free(g), free(w);
    }
    ldm_tensor_file_close(&tf);
}

int main(void) {
    ldm_unet_config uc;
    ldm_vae_config vc;
    ldm_clip_config cc;
    if (!test_check(ldm_train_tiny_configs(&uc, &vc, &cc) == 0, "tiny configs parse", "%s",
                    ldm_last_error()))
        return test_summary();
    model_params mp;
    ldm_rng g;
    ldm_rng_init(&g, LDM_RNG_CPU, 1);
    int rc = ldm_init_unet_state(&mp.sd[0], &uc, &g) || ldm_init_vae_state(&mp.sd[1], &vc, &g) ||
             ldm_init_clip_state(&mp.sd[2], &cc, &g);
    if (!test_check(rc == 0, "initial state dicts", "%s", ldm_last_error())) return test_summary();
    check_init("unet", &mp.sd[0]);
    check_init("vae", &mp.sd[1]);
    check_init("text_encoder", &mp.sd[2]);
    params_from_states(&mp, ldm_backend("cpu"));

    char tmp[] = "/tmp/ldm_train_loop_XXXXXX";
    if (!test_check(mkdtemp(tmp) != NULL, "temporary folder", NULL)) return test_summary();
    test_export(&mp, &uc, &vc, &cc, tmp);
    test_checkpoint(&mp, tmp);
    params_free(&mp);

    char sd[512], clitmp[256], out[600], err[600];
    if (test_cli_setup(sd, clitmp, out, err, "train_cli")) {
        test_cli(sd, clitmp, out, err);
        test_resume(sd, clitmp, out, err);
        test_protect(sd, clitmp, out, err);
        test_steps(sd, clitmp, out, err);
        test_steps_vae(sd, clitmp, out, err);
        char cmd2[400];
        snprintf(cmd2, sizeof cmd2, "rm -rf '%s'", clitmp);
        if (system(cmd2)) {}
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd)) {}
    return test_summary();
}
