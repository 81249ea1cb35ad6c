/*
 * tests/test_unet.c -- ldm/unet.c against diffusers' UNet2DConditionModel.
 *
 * Fixtures (tools/reference/fixtures_unet.py): two tiny random UNets in the
 * diffusers layout, an SD1-style one (1x1-conv projections, one head count
 * for all levels) and an SD2-style one (linear projections, a head count per
 * level), each run by PyTorch on
 *   b2: batch 2 (as classifier-free guidance's [uncond, cond]), 8x8 latent,
 *       two different fractional timesteps, per-block outputs saved too;
 *   ns: batch 1, non-square 8x12 latent.
 * Checks: the output on the `cpu` and `ref` backends (tolerance 1e-3 of the
 * largest |value|: the project's whole-model budget for fp32 vs fp32; measured
 * errors are ~1e-6), that every block the C code names matches the PyTorch
 * module of that name (printed per block when the output fails), the
 * diffusers head-count quirk, that bad inputs and configs are errors,
 * not crashes, and the config readers (ldm/io/json.h: a field of the wrong
 * type names the file and the key) with the SD presets they read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/json.h"
#include "ldm/model.h"
#include "ldm/vae.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"
#include "ldm/unet.h"
#include "ldm/io/weights.h"
#include "tests/test.h"

#define FIX "tests/fixtures/unet/"
#define MAX_BLOCKS 128

// Per-block comparison, filled by the hook during the b2 forward.
typedef struct {
    const char *dir;
    int n;
    char name[MAX_BLOCKS][96];
    double rel[MAX_BLOCKS];   // max-abs error / max |expected|; -1 = no reference; -2 = shape
} block_log;

static void on_block(void *ctx, const char *name, const ldm_tensor *t) {
    block_log *L = ctx;
    if (L->n >= MAX_BLOCKS) return;
    int i = L->n++;
    snprintf(L->name[i], sizeof L->name[i], "%s", name);
    char path[256];
    snprintf(path, sizeof path, "%s/blocks/%s.npy", L->dir, name);
    float *exp = NULL;
    int64_t shape[LDM_MAX_DIMS];
    int nd;
    L->rel[i] = -1;
    if (ldm_npy_read_raw(&exp, shape, &nd, path)) { ldm_clear_error(); return; }
    if (ldm_shape_numel(shape, nd) != t->numel) { L->rel[i] = -2; free(exp); return; }
    float *got = malloc((size_t)t->numel * sizeof(float));
    ldm_tensor_to_host(got, t);
    double mx = 0, sc = 0;
    for (int64_t k = 0; k < t->numel; k++) {
        double d = fabs((double)got[k] - exp[k]);
        if (d > mx || isnan(d)) mx = d;
        if (fabs(exp[k]) > sc) sc = fabs(exp[k]);
    }
    L->rel[i] = sc > 0 ? mx / sc : mx;
    free(got);
    free(exp);
}

static void print_blocks(const block_log *L) {
    printf("    per-block max-rel error vs PyTorch (first divergence marks the bug):\n");
    for (int i = 0; i < L->n; i++) {
        if (L->rel[i] == -1) printf("      %-44s (no reference)\n", L->name[i]);
        else if (L->rel[i] == -2) printf("      %-44s SHAPE MISMATCH\n", L->name[i]);
        else printf("      %-44s %.3e%s\n", L->name[i], L->rel[i], L->rel[i] > 1e-4 ? "  <--" : "");
    }
}

// Count the names in blocks/order.txt (every module PyTorch hooked) and check
// the C side emitted each of them with a matching value.
static void check_block_names(const char *cfgname, const block_log *L) {
    char path[256], *txt;
    snprintf(path, sizeof path, "%s/blocks/order.txt", L->dir);
    txt = test_read_file(path, NULL);
    if (!test_check(txt != NULL, "blocks/order.txt readable", "%s", path)) return;
    int want = 0, found = 0, worst_i = -1;
    double worst = 0;
    for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
        want++;
        for (int i = 0; i < L->n; i++)
            if (strcmp(L->name[i], line) == 0) {
                found++;
                if (L->rel[i] > worst) worst = L->rel[i], worst_i = i;
                break;
            }
    }
    free(txt);
    char name[96];
    snprintf(name, sizeof name, "%s: dump names = diffusers module paths", cfgname);
    test_check(found == want, name, "%d of %d PyTorch module names emitted", found, want);
    snprintf(name, sizeof name, "%s: every block within 1e-4", cfgname);
    test_check(worst <= 1e-4, name, "worst %s %.3e", worst_i >= 0 ? L->name[worst_i] : "-", worst);
    if (worst > 1e-4) print_blocks(L);
    printf("    worst block: %s %.3e\n", worst_i >= 0 ? L->name[worst_i] : "-", worst);
}

// ldm_model_open (the pipeline) reads unet/config.json through
// ldm_unet_config_parse (ldm/model.h): it must give every field the UNet uses
// as ldm_unet_config_from_json does.
static void check_parsers_agree(const char *cfgname, const char *json, const ldm_unet_config *a) {
    ldm_unet_config b;
    char name[96];
    snprintf(name, sizeof name, "%s: model.c's config parser agrees", cfgname);
    if (ldm_unet_config_parse(&b, json, cfgname)) {
        test_check(0, name, "ldm_unet_config_parse: %s", ldm_last_error());
        return;
    }
    const char *diff = NULL;
    if (a->n_levels != b.n_levels) diff = "n_levels";
    for (int i = 0; !diff && i < a->n_levels; i++) {
        if (a->block_out_channels[i] != b.block_out_channels[i]) diff = "block_out_channels";
        if (a->down_attn[i] != b.down_attn[i] || a->up_attn[i] != b.up_attn[i]) diff = "block types";
        if (a->num_heads[i] != b.num_heads[i]) diff = "num_heads";
    }
    if (!diff) {
        struct { const char *n; double x, y; } f[] = {
            {"in_channels", a->in_channels, b.in_channels},
            {"out_channels", a->out_channels, b.out_channels},
            {"layers_per_block", a->layers_per_block, b.layers_per_block},
            {"mid_attn", a->mid_attn, b.mid_attn},
            {"transformer_layers_per_block", a->transformer_layers_per_block, b.transformer_layers_per_block},
            {"cross_attention_dim", a->cross_attention_dim, b.cross_attention_dim},
            {"use_linear_projection", a->use_linear_projection, b.use_linear_projection},
            {"norm_num_groups", a->norm_num_groups, b.norm_num_groups},
            {"norm_eps", a->norm_eps, b.norm_eps},
            {"flip_sin_to_cos", a->flip_sin_to_cos, b.flip_sin_to_cos},
            {"freq_shift", a->freq_shift, b.freq_shift},
            {"time_embed_dim", a->time_embed_dim, b.time_embed_dim}};
        for (size_t i = 0; !diff && i < sizeof f / sizeof *f; i++)
            if (f[i].x != f[i].y) diff = f[i].n;
    }
    test_check(!diff, name, "field %s differs", diff ? diff : "");
}

static int load_unet(ldm_unet *u, ldm_tensor_file *f, const char *dir, const struct ldm_ops *ops,
                     int check_parsers) {
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *json = test_read_file(path, NULL);
    if (!json) return ldm_error("cannot read %s", path);
    ldm_unet_config cfg;
    int rc = ldm_unet_config_from_json(&cfg, json, path);
    if (rc == 0 && check_parsers) check_parsers_agree(dir, json, &cfg);
    free(json);
    if (rc) return rc;
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    if (ldm_tensor_file_open(f, path)) return LDM_ERR;
    ldm_weights w = {.file = f, .comp = LDM_COMP_UNET, .layout = LDM_LAYOUT_DIFFUSERS,
                     .prefix = "", .ops = ops};
    if (ldm_unet_load(u, &cfg, &w)) { ldm_tensor_file_close(f); return LDM_ERR; }
    return 0;
}

static void run_case(ldm_unet *u, const char *cfgname, const char *dir, const char *cs,
                     block_log *L) {
    const struct ldm_ops *ops = u->ops;
    char p[4][256];
    const char *what[4] = {"latent", "t", "context", "out"};
    for (int i = 0; i < 4; i++) snprintf(p[i], sizeof p[i], "%s/%s_%s.npy", dir, cs, what[i]);
    ldm_tensor x = {0}, ctx = {0}, ref = {0}, out = {0};
    float *t = NULL;
    int64_t tshape[LDM_MAX_DIMS];
    int tnd;
    char name[96];
    snprintf(name, sizeof name, "%s/%s [%s] output", cfgname, cs, ops->name);
    if (ldm_npy_read(&x, ops, p[0]) || ldm_npy_read_raw(&t, tshape, &tnd, p[1]) ||
        ldm_npy_read(&ctx, ops, p[2]) || ldm_npy_read(&ref, ops, p[3])) {
        test_check(0, name, "fixture: %s", ldm_last_error());
        goto done;
    }
    out = ldm_tensor_new(ops, ref.shape, ref.ndim);
    if (L) { L->n = 0; L->dir = dir; u->hook = on_block; u->hook_ctx = L; }
    int rc = ldm_unet_forward(&out, u, &x, t, &ctx);
    u->hook = NULL;
    if (rc != 0) { test_check(0, name, "forward failed: %s", ldm_last_error()); goto done; }
    float *got = malloc((size_t)out.numel * sizeof(float));
    float *exp = malloc((size_t)ref.numel * sizeof(float));
    ldm_tensor_to_host(got, &out);
    ldm_tensor_to_host(exp, &ref);
    // 1e-3: the project's budget for a whole fp32 model vs fp32 PyTorch.
    int ok = test_close(name, got, exp, out.numel, 1e-3, 0);
    printf("    %.3f GFLOP, activation peak %.2f MB\n", u->flops / 1e9, u->arena.peak / 1e6);
    if (!ok && L) print_blocks(L);
    free(got);
    free(exp);
done:
    ldm_tensor_free(&x); ldm_tensor_free(&ctx); ldm_tensor_free(&ref); ldm_tensor_free(&out);
    free(t);
}

static void test_config(const char *cfgname, const struct ldm_ops *ops) {
    char dir[128];
    snprintf(dir, sizeof dir, FIX "%s", cfgname);
    ldm_unet u;
    ldm_tensor_file f;
    char name[96];
    snprintf(name, sizeof name, "%s [%s]: load config.json + safetensors", cfgname, ops->name);
    if (!test_check(load_unet(&u, &f, dir, ops, ops == &ldm_ops_cpu) == 0, name, "%s", ldm_last_error())) return;
    printf("    %d blocks, %lld parameters\n", u.n_blocks, (long long)u.n_params);
    static block_log L;
    run_case(&u, cfgname, dir, "b2", &L);
    if (ops == &ldm_ops_cpu) check_block_names(cfgname, &L);
    run_case(&u, cfgname, dir, "ns", NULL);
    if (ops == &ldm_ops_cpu && strcmp(cfgname, "sd1") == 0) ldm_unet_print_table(&u, stdout);
    ldm_unet_free(&u);
    ldm_tensor_file_close(&f);
}

// Exercise of docs/05-unet.md: the prompt enters only through cross-attention,
// per batch element. Changing the context of element 1 of the CFG batch must
// change element 1's output and leave element 0's untouched (no cross-talk
// between the [uncond, cond] halves).
static void test_batch_independence(void) {
    const struct ldm_ops *ops = &ldm_ops_cpu;
    ldm_unet u;
    ldm_tensor_file f;
    if (!test_check(load_unet(&u, &f, FIX "sd1", ops, 0) == 0, "sd1 load (batch independence)", "%s",
                    ldm_last_error()))
        return;
    ldm_tensor x = {0}, ctx = {0}, o1 = {0}, o2 = {0};
    float t[2] = {981.0f, 981.0f};
    if (ldm_npy_read(&x, ops, FIX "sd1/b2_latent.npy") ||
        ldm_npy_read(&ctx, ops, FIX "sd1/b2_context.npy")) {
        test_check(0, "batch independence", "fixture: %s", ldm_last_error());
        goto done;
    }
    o1 = ldm_tensor_new(ops, x.shape, x.ndim);
    o2 = ldm_tensor_new(ops, x.shape, x.ndim);
    int64_t half = ctx.numel / 2, per = x.numel / 2;
    float *c = malloc((size_t)ctx.numel * sizeof(float));
    float *a = malloc((size_t)x.numel * sizeof(float)), *b = malloc((size_t)x.numel * sizeof(float));
    int rc = ldm_unet_forward(&o1, &u, &x, t, &ctx);
    ldm_tensor_to_host(c, &ctx);
    for (int64_t i = half; i < ctx.numel; i++) c[i] = -c[i];   // another prompt for element 1
    ldm_tensor_from_host(&ctx, c);
    rc |= ldm_unet_forward(&o2, &u, &x, t, &ctx);
    ldm_tensor_to_host(a, &o1);
    ldm_tensor_to_host(b, &o2);
    if (test_check(rc == 0, "batch independence forward", "%s", ldm_last_error())) {
        test_close("element 0 unchanged when element 1's context changes", b, a, per, 1e-6, 0);
        double d = 0;
        for (int64_t i = per; i < x.numel; i++) d = fmax(d, fabs((double)a[i] - b[i]));
        test_check(d > 1e-3, "element 1 follows its own context",
                   "max change %.3e: the context had no effect", d);
    }
    free(c); free(a); free(b);
done:
    ldm_tensor_free(&x); ldm_tensor_free(&ctx); ldm_tensor_free(&o1); ldm_tensor_free(&o2);
    ldm_unet_free(&u);
    ldm_tensor_file_close(&f);
}

// diffusers' "attention_head_dim" is the number of heads (when num_attention_heads is absent).
static void test_head_quirk(void) {
    const char *cfg1 = "{\"block_out_channels\":[320,640,1280,1280],\"attention_head_dim\":8,"
        "\"cross_attention_dim\":768,\"down_block_types\":[\"CrossAttnDownBlock2D\","
        "\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],\"up_block_types\":"
        "[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}";
    ldm_unet_config c;
    ldm_unet u;
    int ok = ldm_unet_config_from_json(&c, cfg1, "sd1") == 0 && ldm_unet_build(&u, &c) == 0;
    int heads_ok = 0, n_attn = 0, n_rows = ok ? u.n_blocks : 0;
    if (ok) {
        heads_ok = 1;
        for (int k = 0; k < u.n_blocks; k++)
            if (u.blocks[k].kind == LDM_UNET_ATTN) {
                n_attn++;
                int hs = u.blocks[k].tr.d / u.blocks[k].heads;
                int want = u.blocks[k].cout / 8;   // SD1: 8 heads of 40/80/160
                if (u.blocks[k].heads != 8 || hs != want) heads_ok = 0;
            }
        ldm_unet_free(&u);
    }
    // SD1 table: conv_in, 12 down rows + 3 downsamplers... = the SD UNet of docs/05-unet.md:
    // 6 down ResBlocks+ST, 2 ResBlocks, 3 Down, mid 3, 12 up ResBlocks (9 with ST), 3 Up, out.
    test_check(ok && heads_ok && n_attn == 16 && n_rows == 1 + 8 + 6 + 3 + 3 + 12 + 9 + 3 + 1,
               "SD1 config: 8 heads at every level, 16 transformers, 46 rows",
               "ok %d heads_ok %d transformers %d rows %d (%s)", ok, heads_ok, n_attn, n_rows,
               ldm_last_error());
    const char *cfg2 = "{\"block_out_channels\":[320,640,1280,1280],\"attention_head_dim\":"
        "[5,10,20,20],\"cross_attention_dim\":1024,\"use_linear_projection\":true,"
        "\"down_block_types\":[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\","
        "\"CrossAttnDownBlock2D\",\"DownBlock2D\"],\"up_block_types\":[\"UpBlock2D\","
        "\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}";
    ok = ldm_unet_config_from_json(&c, cfg2, "sd2") == 0 && ldm_unet_build(&u, &c) == 0;
    heads_ok = ok;
    if (ok) {
        for (int k = 0; k < u.n_blocks; k++)
            if (u.blocks[k].kind == LDM_UNET_ATTN &&
                u.blocks[k].tr.d / u.blocks[k].heads != 64)
                heads_ok = 0;
        ldm_unet_free(&u);
    }
    test_check(ok && heads_ok, "SD2 config: [5,10,20,20] heads -> head size 64 everywhere",
               "%s", ldm_last_error());
}

// Bad configs and inputs are errors with a message, never a crash.
static void test_errors(void) {
    ldm_unet_config c;
    const char *sdxl = "{\"block_out_channels\":[320,640],\"down_block_types\":["
        "\"DownBlock2D\",\"CrossAttnDownBlock2D\"],\"up_block_types\":[\"CrossAttnUpBlock2D\","
        "\"UpBlock2D\"],\"addition_embed_type\":\"text_time\"}";
    int rc = ldm_unet_config_from_json(&c, sdxl, "sdxl.json");
    test_check(rc != 0 && strstr(ldm_last_error(), "addition_embed_type"),
               "config with addition_embed_type (SDXL) rejected, field named", "%s",
               ldm_last_error());
    rc = ldm_unet_config_from_json(&c, "{\"block_out_channels\":[32,64]", "trunc.json");
    test_check(rc != 0, "truncated JSON rejected", "%s", "accepted");
    const char *badtype = "{\"block_out_channels\":[32],\"down_block_types\":[\"Foo\"],"
                          "\"up_block_types\":[\"UpBlock2D\"]}";
    rc = ldm_unet_config_from_json(&c, badtype, "bad.json");
    test_check(rc != 0 && strstr(ldm_last_error(), "Foo"), "unknown block type rejected", "%s",
               ldm_last_error());
    const char *badgroups = "{\"block_out_channels\":[30],\"norm_num_groups\":32,"
        "\"down_block_types\":[\"DownBlock2D\"],\"up_block_types\":[\"UpBlock2D\"]}";
    rc = ldm_unet_config_from_json(&c, badgroups, "groups.json");
    test_check(rc != 0, "channels not divisible by groups rejected", "%s", ldm_last_error());

    // Inputs of the wrong shape for a loaded model.
    const struct ldm_ops *ops = &ldm_ops_cpu;
    ldm_unet u;
    ldm_tensor_file f;
    if (!test_check(load_unet(&u, &f, FIX "sd1", ops, 0) == 0, "sd1 reload", "%s", ldm_last_error()))
        return;
    float t[2] = {1, 2};
    ldm_tensor x = ldm_tensor_zeros(ops, LDM_SHAPE(2, 4, 7, 8));
    ldm_tensor out = ldm_tensor_zeros(ops, LDM_SHAPE(2, 4, 7, 8));
    ldm_tensor ctx = ldm_tensor_zeros(ops, LDM_SHAPE(2, 77, 32));
    rc = ldm_unet_forward(&out, &u, &x, t, &ctx);
    test_check(rc != 0 && strstr(ldm_last_error(), "multiple"), "odd latent side rejected", "%s",
               ldm_last_error());
    ldm_tensor x2 = ldm_tensor_zeros(ops, LDM_SHAPE(2, 4, 8, 8));
    ldm_tensor out2 = ldm_tensor_zeros(ops, LDM_SHAPE(2, 4, 8, 8));
    ldm_tensor ctx2 = ldm_tensor_zeros(ops, LDM_SHAPE(2, 77, 768));
    rc = ldm_unet_forward(&out2, &u, &x2, t, &ctx2);
    test_check(rc != 0 && strstr(ldm_last_error(), "context"), "context width mismatch rejected",
               "%s", ldm_last_error());
    ldm_tensor ctx3 = ldm_tensor_zeros(ops, LDM_SHAPE(1, 77, 32));
    rc = ldm_unet_forward(&out2, &u, &x2, t, &ctx3);
    test_check(rc != 0, "context batch mismatch rejected", "%s", ldm_last_error());
    ldm_tensor *ts[] = {&x, &out, &ctx, &x2, &out2, &ctx2, &ctx3};
    for (int i = 0; i < 7; i++) ldm_tensor_free(ts[i]);
    ldm_unet_free(&u);
    ldm_tensor_file_close(&f);

    // A weight of the wrong shape names the tensor: the SD1 weights under the SD2 config.
    char *json = test_read_file(FIX "sd2/config.json", NULL);
    ldm_tensor_file f1;
    if (json && ldm_unet_config_from_json(&c, json, "sd2") == 0 &&
        ldm_tensor_file_open(&f1, FIX "sd1/diffusion_pytorch_model.safetensors") == 0) {
        ldm_weights w = {.file = &f1, .comp = LDM_COMP_UNET, .layout = LDM_LAYOUT_DIFFUSERS,
                         .prefix = "", .ops = ops};
        rc = ldm_unet_load(&u, &c, &w);
        test_check(rc != 0 && strstr(ldm_last_error(), "down_blocks."),
                   "weights of another config rejected, tensor named", "%s", ldm_last_error());
        ldm_tensor_file_close(&f1);
    } else {
        test_check(0, "weights of another config rejected", "setup: %s", ldm_last_error());
    }
    free(json);
}

// The config story: one strict set of field readers (ldm/io/json.h) behind
// every config parser, and the SD presets read through them.
static void test_config_json(void) {
    // The readers themselves: absent/null -> default, wrong type -> key named.
    cJSON *o = ldm_json_parse_object("{\"a\": 3, \"b\": null, \"c\": \"x\", \"d\": 2.5, "
                                     "\"e\": true, \"f\": [1, 2]}", "t.json");
    int v = -1, list[4] = {0}, n = 0;
    float x = 0;
    const char *str = NULL;
    test_check(o && ldm_json_int(o, "a", 0, &v, "t.json") == 0 && v == 3 &&
                   ldm_json_int(o, "b", 7, &v, "t.json") == 0 && v == 7 &&
                   ldm_json_int(o, "zz", 9, &v, "t.json") == 0 && v == 9 &&
                   ldm_json_float(o, "d", 0, &x, "t.json") == 0 && x == 2.5f &&
                   ldm_json_bool(o, "e", 0, &v, "t.json") == 0 && v == 1 &&
                   ldm_json_string(o, "c", &str, "t.json") == 0 && str && !strcmp(str, "x") &&
                   ldm_json_int_list(o, "f", 4, list, &n, "t.json") == 0 && n == 2 &&
                   list[1] == 2 && ldm_json_int_or_list(o, "a", 0, 3, list, "t.json") == 0 &&
                   list[2] == 3,
               "json readers: values, null and absent give the default", "%s", ldm_last_error());
    static const struct { const char *key; int kind; } wrong[] = {
        {"c", 0}, {"d", 0}, {"e", 0}, {"f", 0},   // not an integer
        {"a", 1}, {"c", 1},                       // not true/false
        {"c", 2}, {"f", 2},                       // not a number
        {"a", 3},                                 // not a string
    };
    for (size_t i = 0; o && i < sizeof wrong / sizeof *wrong; i++) {
        int rc = wrong[i].kind == 0 ? ldm_json_int(o, wrong[i].key, 0, &v, "t.json")
               : wrong[i].kind == 1 ? ldm_json_bool(o, wrong[i].key, 0, &v, "t.json")
               : wrong[i].kind == 2 ? ldm_json_float(o, wrong[i].key, 0, &x, "t.json")
                                    : ldm_json_string(o, wrong[i].key, &str, "t.json");
        char want[16], name[96];
        snprintf(want, sizeof want, "\"%s\"", wrong[i].key);
        snprintf(name, sizeof name, "json reader %d: wrong type of \"%s\" rejected, key named",
                 wrong[i].kind, wrong[i].key);
        test_check(rc == LDM_ERR && strstr(ldm_last_error(), want) &&
                       strstr(ldm_last_error(), "t.json"), name, "%s", ldm_last_error());
    }
    cJSON_Delete(o);
    test_check(ldm_json_parse_object("[1]", "l.json") == NULL && strstr(ldm_last_error(), "l.json"),
               "json: a list is not a config object", "%s", ldm_last_error());
    test_check(ldm_json_parse_object("{} x", "g.json") == NULL, "json: trailing garbage rejected",
               "%s", "accepted");

    // Each config parser: a field of the wrong type is an error naming file and key.
    ldm_unet_config u;
    ldm_vae_config va;
    ldm_clip_config cl;
    const char *unet_bad = "{\"block_out_channels\":[32],\"down_block_types\":[\"DownBlock2D\"],"
                           "\"up_block_types\":[\"UpBlock2D\"],\"sample_size\":\"64\"}";
    int rc = ldm_unet_config_parse(&u, unet_bad, "unet/config.json");
    test_check(rc == LDM_ERR && strstr(ldm_last_error(), "\"sample_size\"") &&
                   strstr(ldm_last_error(), "unet/config.json"),
               "unet config: string sample_size rejected, key named", "%s", ldm_last_error());
    rc = ldm_vae_config_parse(&va, "{\"block_out_channels\":[32,64],\"layers_per_block\":\"2\"}",
                              "vae/config.json");
    test_check(rc == LDM_ERR && strstr(ldm_last_error(), "\"layers_per_block\"") &&
                   strstr(ldm_last_error(), "vae/config.json"),
               "vae config: string layers_per_block rejected, key named", "%s", ldm_last_error());
    rc = ldm_vae_config_parse(&va, "{\"block_out_channels\":[32,64],\"use_quant_conv\":1}",
                              "vae/config.json");
    test_check(rc == LDM_ERR && strstr(ldm_last_error(), "\"use_quant_conv\""),
               "vae config: use_quant_conv must be true/false", "%s", ldm_last_error());
    rc = ldm_clip_config_parse(&cl, "{\"hidden_size\":7.5}", "text_encoder/config.json");
    test_check(rc == LDM_ERR && strstr(ldm_last_error(), "\"hidden_size\"") &&
                   strstr(ldm_last_error(), "text_encoder/config.json"),
               "text encoder config: fractional hidden_size rejected, key named", "%s",
               ldm_last_error());
    // What diffusers writes: nulls for unused features, keys nobody reads.
    rc = ldm_vae_config_parse(&va, "{\"_class_name\":\"AutoencoderKL\",\"block_out_channels\":"
                              "[32,64],\"shift_factor\":null,\"latents_mean\":null,"
                              "\"scaling_factor\":null,\"force_upcast\":true,\"foo\":[1]}", "v");
    test_check(rc == 0 && va.n_levels == 2 && va.scaling_factor == 0.18215f,
               "vae config: nulls and unknown keys accepted, null -> default", "%s",
               ldm_last_error());

    // The presets: the SD1.5/SD2.1 config.json texts, through the same parsers.
    ldm_unet_config s1, s2, p1;
    ldm_clip_config c1, c2;
    int ok = ldm_unet_config_sd(&s1, LDM_FAMILY_SD1) == 0 &&
             ldm_unet_config_sd(&s2, LDM_FAMILY_SD2) == 0 &&
             ldm_unet_config_preset(&p1, "sd1") == 0 && ldm_vae_config_sd(&va) == 0 &&
             ldm_clip_config_sd(&c1, LDM_FAMILY_SD1) == 0 &&
             ldm_clip_config_sd(&c2, LDM_FAMILY_SD2) == 0;
    test_check(ok && !memcmp(&s1, &p1, sizeof s1) && s1.cross_attention_dim == 768 &&
                   s1.num_heads[0] == 8 && !s1.use_linear_projection && s1.sample_size == 64 &&
                   s2.cross_attention_dim == 1024 && s2.num_heads[0] == 5 &&
                   s2.num_heads[3] == 20 && s2.use_linear_projection && s2.upcast_attention &&
                   s2.sample_size == 96 && s1.time_embed_dim == 1280,
               "UNet presets: SD1 8 heads / 768 context, SD2 [5,10,20,20] / 1024 linear", "%s",
               ldm_last_error());
    test_check(ok && va.n_levels == 4 && va.block_out_channels[3] == 512 &&
                   va.scaling_factor == 0.18215f && va.norm_eps == 1e-6f &&
                   va.use_quant_conv && ldm_vae_config_check(&va) == 0,
               "VAE preset: [128,256,512,512], scale 0.18215", "%s", ldm_last_error());
    test_check(ok && c1.num_hidden_layers == 12 && c1.skip_last_layers == 0 &&
                   c1.pad_token_id == 49407 && c1.hidden_act == LDM_ACT_QUICK_GELU &&
                   c2.num_hidden_layers == 24 && c2.skip_last_layers == 1 &&
                   c2.pad_token_id == 0 && c2.hidden_act == LDM_ACT_GELU && c2.hidden_size == 1024,
               "text encoder presets: SD1 12 layers, SD2 24 in the file (penultimate used)", "%s",
               ldm_last_error());
    rc = ldm_unet_config_preset(&p1, "sdxl");
    test_check(rc == LDM_ERR && strstr(ldm_last_error(), "sdxl"), "unknown preset name rejected",
               "%s", ldm_last_error());
}

int main(void) {
    printf("== UNet vs diffusers UNet2DConditionModel (tiny random configs)\n");
    test_config("sd1", &ldm_ops_cpu);
    test_config("sd2", &ldm_ops_cpu);
    test_config("sd1", &ldm_ops_ref);
    test_config("sd2", &ldm_ops_ref);
    test_batch_independence();
    test_head_quirk();
    test_errors();
    test_config_json();
    return test_summary();
}
