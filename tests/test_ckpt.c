/*
 * tests/test_ckpt.c -- checkpoint loading: the torch zip + pickle reader
 * (ldm/io/ckpt.c), the CompVis <-> diffusers key mapping (ldm/io/weights.c) and
 * model detection (ldm/model.c).
 *
 * Fixtures (tools/reference/fixtures_ckpt.py, tests/fixtures/ckpt/):
 *   - the same tiny random SD1 and SD2 models as a diffusers folder, a
 *     CompVis .safetensors and a CompVis .ckpt written by torch.save (SD1
 *     also as a diffusers folder of fp16 .bin files). Every
 *     weight the diffusers folder holds must load bit-identically through
 *     the CompVis mapping, and every CompVis key must be used exactly once
 *     (EMA copies and the SD2 text tower's unused last layer excepted).
 *   - bad/: hostile and broken archives assembled opcode by opcode. Each must
 *     be rejected with an error that names the problem, and the payloads
 *     (which would create the file ldm_pwned_by_ckpt) must never run.
 *   - truncations and byte flips of a valid .ckpt: rejected or loaded, never
 *     a crash (run under `make check` for ASan/UBSan).
 *   - views.ckpt: strided views of shared storages, equal to torch.load's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/model.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"
#include "ldm/io/weights.h"
#include "tests/test.h"

#define FIX "tests/fixtures/ckpt/"
#define SENTINEL "ldm_pwned_by_ckpt"

// ---------------------------------------------------------------------------
// strided views: torch.save keeps a transpose / step slice / expand as a view
// of a shared storage; every tensor must load as torch.load gives it
// (tools/reference/fixtures_ckpt_views.py: views_expected.safetensors holds
// torch.load's values made contiguous, under the same names).

static void test_views(void) {
    printf("-- strided views of shared storages (views.ckpt vs torch.load)\n");
    ldm_tensor_file f, ref, bad;
    if (!test_check(ldm_tensor_file_open(&ref, FIX "views_expected.safetensors") == 0,
                    "views_expected.safetensors opens", "%s", ldm_last_error()))
        return;
    int opened = test_check(ldm_tensor_file_open(&f, FIX "views.ckpt") == 0, "views.ckpt opens",
                            "%s", ldm_last_error());
    int bad_opened = test_check(ldm_tensor_file_open(&bad, FIX "bad/noncontiguous.ckpt") == 0,
                                "bad/noncontiguous.ckpt (stride (1,2)) loads", "%s", ldm_last_error());
    for (int64_t i = 0; i < ref.n_entries; i++) {
        const ldm_tensor_entry *want = &ref.entries[i];
        int is_bad = !strncmp(want->name, "bad_noncontiguous.", 18);
        if (is_bad ? !bad_opened : !opened) continue;
        const ldm_tensor_entry *got = ldm_tensor_file_find(is_bad ? &bad : &f, is_bad ? want->name + 18 : want->name);
        char name[200];
        snprintf(name, sizeof name, "%s: shape, dtype and bytes as torch.load", want->name);
        int same = got && got->ndim == want->ndim && got->dtype == want->dtype &&
                   got->nbytes == want->nbytes &&
                   !memcmp(got->shape, want->shape, sizeof got->shape[0] * (size_t)got->ndim) &&
                   !memcmp(got->data, want->data, want->nbytes);
        test_check(same, name, "%s", got ? "values differ" : "missing");
    }
    if (opened) {
        const ldm_tensor_entry *t = ldm_tensor_file_find(&f, "transpose"),
                               *c = ldm_tensor_file_find(&f, "contiguous");
        test_check(t && c && t->owned && !c->owned, "a view is gathered, a contiguous tensor "
                   "points into the mapping", "%s", "");
        ldm_tensor_file_close(&f);
    }
    if (bad_opened) ldm_tensor_file_close(&bad);
    ldm_tensor_file_close(&ref);
}

// ---------------------------------------------------------------------------
// the hostile corpus

static void test_bad_corpus(void) {
    static const struct { const char *file, *expect; } cases[] = {
        {"os_system", "'os.system' is not allowed"},
        {"builtins_eval", "'builtins.eval' is not allowed"},
        {"subprocess", "'subprocess.check_call' is not allowed"},
        {"reduce_class", "'__main__.Payload' is not allowed"},
        {"stack_global", "'os.system' is not allowed"},
        {"inst_opcode", "(INST) is not allowed"},
        {"unknown_opcode", "0xff (unknown) is not allowed"},
        {"unknown_storage_type", "'torch.EvilStorage' is not allowed"},
        {"no_stop", "no STOP"},
        {"deep_marks", "nesting deeper"},
        {"memo_huge", "memo index"},
        {"bad_storage_key", "has no zip entry"},
        {"storage_short", "its entry holds 12 bytes"},
        {"shape_past_storage", "shape disagrees with the storage"},
        {"offset_past_storage", "shape disagrees with the storage"},
        {"huge_shape", "shape overflows"},
        {"strided_past_storage", "reaches element 4 but storage '0' holds 4"},
        {"deflated", "deflate-compressed"},
        {"truncated_half", "truncated"},
        {"truncated_tail", "truncated"},
        {"entry_past_end", "runs past the end"},
        {"legacy_pickle", "legacy (pre-1.6"},
    };
    unlink(SENTINEL);
    char path[256], name[300];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(path, sizeof path, FIX "bad/%s.ckpt", cases[i].file);
        ldm_tensor_file f;
        ldm_clear_error();
        int rc = ldm_tensor_file_open(&f, path);
        if (rc == 0) ldm_tensor_file_close(&f);
        snprintf(name, sizeof name, "bad/%s.ckpt rejected: \"%s\"", cases[i].file, cases[i].expect);
        test_check(rc != 0 && strstr(ldm_last_error(), cases[i].expect) != NULL, name,
                   "rc %d, message: %s", rc, ldm_last_error());
    }
    test_check(access(SENTINEL, F_OK) != 0, "no payload ran (" SENTINEL " was not created)",
               "the file exists");
    // The control file of the corpus loads.
    ldm_tensor_file f;
    if (test_check(ldm_tensor_file_open(&f, FIX "bad/good.ckpt") == 0, "bad/good.ckpt (control) loads",
                   "%s", ldm_last_error())) {
        const ldm_tensor_entry *e = ldm_tensor_file_find(&f, "w");
        float v[4] = {0}, exp[4] = {1, 2, 3, 4};
        if (test_check(e && e->numel == 4 && ldm_entry_to_f32(v, e) == 0, "good.ckpt has w [4]", "%s", ldm_last_error()))
            test_close("good.ckpt w values", v, exp, 4, 0, 0);
        ldm_tensor_file_close(&f);
    }
}

// Around the state dict, training checkpoints hold numpy scalars and arrays,
// torch dtypes, sets, nested containers: allowed as data, never called.
static void test_lightning_extras(void) {
    ldm_tensor_file f;
    if (!test_check(ldm_tensor_file_open(&f, FIX "lightning_extras.ckpt") == 0,
                    "lightning_extras.ckpt (numpy scalar/array, dtype, set) loads", "%s",
                    ldm_last_error()))
        return;
    const ldm_tensor_entry *e = ldm_tensor_file_find(&f, "w");
    float v[4] = {0}, exp[4] = {0, 1, 2, 3};
    if (test_check(f.n_entries == 1 && e && e->numel == 4 && ldm_entry_to_f32(v, e) == 0,
                   "only the state dict's tensor is listed", "%lld entries", (long long)f.n_entries))
        test_close("lightning_extras.ckpt w values", v, exp, 4, 0, 0);
    int step = 0;
    for (int i = 0; i < f.n_meta; i++)
        step |= !strcmp(f.meta_keys[i], "global_step") && !strcmp(f.meta_values[i], "875000");
    test_check(step, "global_step 875000 kept as metadata", "%d metadata entries", f.n_meta);
    ldm_tensor_file_close(&f);
    // {ModelCheckpoint class: {...}} beside the tensors (older Lightning).
    int rc = ldm_tensor_file_open(&f, FIX "lightning_callbacks.ckpt");
    test_check(rc == 0 && f.n_entries == 1 && ldm_tensor_file_find(&f, "w"),
               "lightning_callbacks.ckpt (ModelCheckpoint class as a dict key) loads", "%s",
               ldm_last_error());
    if (rc == 0) ldm_tensor_file_close(&f);
}

// Every prefix length and single-byte corruption of a valid archive: must
// either load or fail with a message, never crash or read out of bounds.
static void test_mutations(void) {
    FILE *fp = fopen(FIX "bad/good.ckpt", "rb");
    if (!test_check(fp != NULL, "open good.ckpt for mutations", "missing")) return;
    uint8_t buf[8192];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    int rejected = 0;
    for (size_t len = 0; len < n; len++) {
        uint8_t *copy = malloc(len ? len : 1);  // exact size: ASan sees any overread
        memcpy(copy, buf, len);
        ldm_tensor_file f;
        if (ldm_ckpt_parse(&f, copy, len, "cut") == 0) ldm_tensor_file_close(&f);
        else rejected += ldm_last_error()[0] != 0;
        free(copy);
    }
    test_check(rejected == (int)n, "every truncation of good.ckpt is rejected with a message",
               "%d of %zu", rejected, n);
    uint32_t seed = 12345;
    int loaded = 0, failed = 0;
    for (int trial = 0; trial < 3000; trial++) {
        uint8_t *copy = malloc(n);
        memcpy(copy, buf, n);
        for (int k = 0; k < 1 + trial % 3; k++) {
            seed = seed * 1664525u + 1013904223u;
            size_t at = (seed >> 8) % n;
            seed = seed * 1664525u + 1013904223u;
            copy[at] = (uint8_t)(seed >> 24);
        }
        ldm_tensor_file f;
        if (ldm_ckpt_parse(&f, copy, n, "flip") == 0) {
            float tmp[64];
            for (int64_t i = 0; i < f.n_entries; i++)
                if (f.entries[i].numel <= 64) ldm_entry_to_f32(tmp, &f.entries[i]);
            ldm_tensor_file_close(&f);
            loaded++;
        } else {
            failed++;
        }
        free(copy);
    }
    test_check(loaded + failed == 3000, "3000 byte-flipped archives: no crash", "%d", loaded + failed);
    printf("          (%d still loaded, %d rejected)\n", loaded, failed);
}

// ---------------------------------------------------------------------------
// layouts: every diffusers weight loads identically through the CompVis map

static const char *strip(const char *name, const char *prefix) {
    size_t n = strlen(prefix);
    return strncmp(name, prefix, n) == 0 ? name + n : name;
}

// For every tensor of `ref` (a diffusers component, opened as model `d`),
// load it from `d` and from CompVis model `c` and compare bit for bit.
// Returns the number of distinct CompVis keys used.
static int64_t compare_component(const char *label, ldm_weights *dw, ldm_weights *cw) {
    const ldm_tensor_file *ref = dw->file;
    int64_t ok = 0, bad = 0, used = 0;
    char first_bad[600] = "";
    char **keys = calloc((size_t)ref->n_entries + 1, sizeof *keys);
    for (int64_t i = 0; i < ref->n_entries; i++) {
        const ldm_tensor_entry *e = &ref->entries[i];
        const char *name = strip(e->name, dw->prefix);
        ldm_tensor a, b;
        int ra = ldm_weights_load(&a, dw, name, e->shape, e->ndim);
        int rb = ra == 0 ? ldm_weights_load(&b, cw, name, e->shape, e->ndim) : LDM_ERR;
        if (ra == 0 && rb == 0) {
            int same = a.numel == b.numel && memcmp(a.data, b.data, (size_t)a.numel * 4) == 0;
            ok += same;
            if (!same && !bad++) snprintf(first_bad, sizeof first_bad, "%s: values differ", name);
            ldm_tensor_free(&b);
        } else if (!bad++) {
            snprintf(first_bad, sizeof first_bad, "%s", ldm_last_error());
        }
        if (ra == 0) ldm_tensor_free(&a);
        char key[512];
        if (ldm_weights_key(key, sizeof key, cw, name)) {
            int dup = 0;
            for (int64_t j = 0; j < used; j++) dup |= !strcmp(keys[j], key);
            if (!dup) keys[used++] = strdup(key);
        }
    }
    for (int64_t j = 0; j < used; j++) free(keys[j]);
    free(keys);
    char name[200];
    snprintf(name, sizeof name, "%s: %lld tensors identical through both layouts", label,
             (long long)ref->n_entries);
    test_check(bad == 0 && ok == ref->n_entries, name, "%lld bad; first: %s", (long long)bad, first_bad);
    return used;
}

static int64_t count_prefix(const ldm_tensor_file *f, const char *prefix) {
    int64_t c = 0;
    for (int64_t i = 0; i < f->n_entries; i++) c += !strncmp(f->entries[i].name, prefix, strlen(prefix));
    return c;
}

static void test_layouts(const char *folder, const char *single, int sd2) {
    const struct ldm_ops *ops = ldm_backend("ref");
    ldm_model d, c;
    ldm_model_options od = {ops, LDM_PRED_AUTO, NULL}, oc = {ops, LDM_PRED_AUTO, folder};
    char name[300];
    snprintf(name, sizeof name, "open %s", folder);
    if (!test_check(ldm_model_open(&d, folder, &od) == 0, name, "%s", ldm_last_error())) return;
    snprintf(name, sizeof name, "open %s (configs from %s)", single, folder);
    if (!test_check(ldm_model_open(&c, single, &oc) == 0, name, "%s", ldm_last_error())) {
        ldm_model_close(&d);
        return;
    }
    // Compared as fp32 values (the files differ in dtype; widening is exact).
    ldm_model_set_residency(&d, LDM_WEIGHTS_F32, 0);
    ldm_model_set_residency(&c, LDM_WEIGHTS_F32, 0);
    if (c.layout == LDM_LAYOUT_DIFFUSERS) {  // a second diffusers folder (.bin files)
        static const char *const comp[3] = {"unet", "vae", "text encoder"};
        ldm_weights *dws[3] = {&d.unet_w, &d.vae_w, &d.clip_w}, *cws[3] = {&c.unet_w, &c.vae_w, &c.clip_w};
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "%s %s", single, comp[i]);
            int64_t used = compare_component(name, dws[i], cws[i]);
            snprintf(name, sizeof name, "%s %s: same tensor count", single, comp[i]);
            test_check(used == c.files[i].n_entries, name, "%lld of %lld", (long long)used,
                       (long long)c.files[i].n_entries);
        }
        ldm_model_close(&c);
        ldm_model_close(&d);
        return;
    }
    const ldm_tensor_file *cf = &c.files[0];
    snprintf(name, sizeof name, "%s unet", single);
    int64_t u = compare_component(name, &d.unet_w, &c.unet_w);
    snprintf(name, sizeof name, "%s: every model.diffusion_model.* key used once", single);
    test_check(u == count_prefix(cf, "model.diffusion_model."), name, "%lld of %lld", (long long)u,
               (long long)count_prefix(cf, "model.diffusion_model."));
    snprintf(name, sizeof name, "%s vae", single);
    int64_t v = compare_component(name, &d.vae_w, &c.vae_w);
    snprintf(name, sizeof name, "%s: every first_stage_model.* key used once", single);
    test_check(v == count_prefix(cf, "first_stage_model."), name, "%lld of %lld", (long long)v,
               (long long)count_prefix(cf, "first_stage_model."));
    snprintf(name, sizeof name, "%s text encoder", single);
    int64_t t = compare_component(name, &d.clip_w, &c.clip_w);
    // SD2: the diffusers folder stops before the last resblock (12 keys, the
    // penultimate-layer output never needs it) and text_projection is unused.
    int64_t expect_t = count_prefix(cf, "cond_stage_model.");
    if (sd2) expect_t -= 12 + (ldm_tensor_file_find(cf, "cond_stage_model.model.text_projection") != NULL);
    snprintf(name, sizeof name, "%s: every used cond_stage_model.* key mapped once", single);
    test_check(t == expect_t, name, "%lld of %lld", (long long)t, (long long)expect_t);
    ldm_model_close(&c);
    ldm_model_close(&d);
}

// ---------------------------------------------------------------------------
// detection

static void test_detection(void) {
    const struct ldm_ops *ops = ldm_backend("ref");
    static const struct { const char *path, *cfg; ldm_family fam; ldm_prediction pred, force; } cases[] = {
        {FIX "sd1", NULL, LDM_FAMILY_SD1, LDM_PRED_EPS, LDM_PRED_AUTO},
        {FIX "sd1.ckpt", FIX "sd1", LDM_FAMILY_SD1, LDM_PRED_EPS, LDM_PRED_AUTO},
        {FIX "sd2", NULL, LDM_FAMILY_SD2, LDM_PRED_V, LDM_PRED_AUTO},
        {FIX "sd2.ckpt", FIX "sd2", LDM_FAMILY_SD2, LDM_PRED_V, LDM_PRED_AUTO},
        {FIX "sd2.ckpt", FIX "sd2", LDM_FAMILY_SD2, LDM_PRED_EPS, LDM_PRED_EPS},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ldm_model m;
        ldm_model_options o = {ops, cases[i].force, cases[i].cfg};
        char name[300];
        snprintf(name, sizeof name, "%s detected as %s %s%s", cases[i].path,
                 ldm_family_name(cases[i].fam), ldm_prediction_name(cases[i].pred),
                 cases[i].force != LDM_PRED_AUTO ? " (forced)" : "");
        if (!test_check(ldm_model_open(&m, cases[i].path, &o) == 0, name, "%s", ldm_last_error()))
            continue;
        test_check(m.family == cases[i].fam && m.prediction == cases[i].pred, name,
                   "got %s %s (%s)", ldm_family_name(m.family), ldm_prediction_name(m.prediction),
                   m.prediction_why);
        if (i == 1) {
            test_check(m.global_step == 470000, "sd1.ckpt global_step read from the pickle",
                       "%lld", (long long)m.global_step);
            test_check(m.clip.num_hidden_layers == 2 && m.clip.skip_last_layers == 0,
                       "sd1.ckpt text layers counted from the file", "%d", m.clip.num_hidden_layers);
        }
        if (i == 3)
            test_check(m.clip.num_hidden_layers == 3 && m.clip.skip_last_layers == 1,
                       "sd2.ckpt: 3 open_clip layers, penultimate", "%d/%d",
                       m.clip.num_hidden_layers, m.clip.skip_last_layers);
        ldm_model_close(&m);
    }
    // The tiny CompVis file without its configs: the SD presets do not fit.
    ldm_model m;
    ldm_model_options o = {ops, LDM_PRED_AUTO, NULL};
    int rc = ldm_model_open(&m, FIX "sd1.ckpt", &o);
    if (rc == 0) ldm_model_close(&m);
    test_check(rc != 0 && strstr(ldm_last_error(), "--config"), "tiny single file without configs: "
               "error points to --config", "%s", ldm_last_error());
}

// Unsupported architectures, from synthetic single files with their keys.
static void test_unsupported(void) {
    char dir[256];
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/ldm_test_ckpt_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!test_check(mkdtemp(dir) != NULL, "temporary folder", "mkdtemp failed")) return;
    static const struct { const char *key; int64_t shape[4]; int nd; const char *expect; } cases[] = {
        {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", {4}, 1, "SDXL"},
        {"model.diffusion_model.input_blocks.0.0.weight", {8, 5, 3, 3}, 4, "depth"},
        {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", {4}, 1, "SD3"},
        {"double_blocks.0.img_attn.qkv.weight", {4}, 1, "Flux"},
        {"some.other.weight", {4}, 1, "not a Stable Diffusion checkpoint"},
    };
    const struct ldm_ops *ops = ldm_backend("ref");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[400];
        snprintf(path, sizeof path, "%s/case%zu.safetensors", dir, i);
        ldm_tensor t = ldm_tensor_zeros(ops, cases[i].shape, cases[i].nd);
        const ldm_tensor *tp = &t;
        const char *names[1] = {cases[i].key};
        int wrc = ldm_safetensors_write(path, 1, names, &tp);
        ldm_tensor_free(&t);
        if (!test_check(wrc == 0, "write synthetic checkpoint", "%s", ldm_last_error())) continue;
        ldm_model m;
        ldm_model_options o = {ops, LDM_PRED_AUTO, NULL};
        int rc = ldm_model_open(&m, path, &o);
        if (rc == 0) ldm_model_close(&m);
        char name[200];
        snprintf(name, sizeof name, "refused, naming \"%s\"", cases[i].expect);
        test_check(rc != 0 && strstr(ldm_last_error(), cases[i].expect), name, "%s", ldm_last_error());
        unlink(path);
    }
    rmdir(dir);
}

int main(void) {
    printf("== hostile and broken .ckpt files\n");
    test_bad_corpus();
    test_lightning_extras();
    test_views();
    test_mutations();
    printf("== one model, every layout (SD1)\n");
    test_layouts(FIX "sd1", FIX "sd1.safetensors", 0);
    test_layouts(FIX "sd1", FIX "sd1.ckpt", 0);
    test_layouts(FIX "sd1", FIX "sd1_bin", 0);
    printf("== one model, every layout (SD2, open_clip text tower)\n");
    test_layouts(FIX "sd2", FIX "sd2.ckpt", 1);
    printf("== detection\n");
    test_detection();
    test_unsupported();
    return test_summary();
}
