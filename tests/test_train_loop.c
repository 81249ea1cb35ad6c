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
 * 4. `sd train` usage errors (exit 2, nothing written) and output protection.
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
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd)) {}
    return test_summary();
}
