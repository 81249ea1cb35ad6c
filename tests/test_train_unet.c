/*
 * tests/test_train_unet.c -- the UNet trainer (ldm/train/unet_train.h) against
 * torch autograd: tools/reference/fixtures_train_unet.py writes, for two micro
 * UNet2DConditionModels, the stage-2 loss (min-SNR weighted, as
 * tools/train/train_tiny.py) and its float64 gradient with respect to every
 * parameter and to the context. Here, on `cpu` and on `ref`:
 *   - the parameter list has torch's names in torch's order
 *   - the training forward equals the inference forward (1e-6) and torch's (1e-5)
 *   - the loss within 1e-5, every gradient within 1e-4 of its tensor's max |grad|
 *   - a second backward adds the same gradients again (accumulation)
 * plus: fp16 weights viewed in a mapped file are widened by the trainer, and the
 * errors (class embedding, backend without backward ops, backward first).
 *
 * build/tests/test_train_unet DIR runs the gradient check on one fixture folder
 * (e.g. the real tiny config: fixtures_train_unet.py --tiny DIR) and prints the
 * worst relative error.
 */
#include "tests/test.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"
#include "ldm/io/weights.h"
#include "ldm/train/loss.h"
#include "ldm/train/params.h"
#include "ldm/train/unet_train.h"
#include "ldm/unet.h"
#include "samplers/schedule.h"

#define FIX "tests/fixtures/train/unet"

// ---- the fixture's weights: a formula of (name, index), as fill() in the script

static uint32_t fnv1a(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static void fill(ldm_tensor *w, const char *name) {
    uint32_t seed = fnv1a(name);
    int64_t fan_in = w->numel / w->shape[0];
    int e = 0;
    while ((int64_t)1 << (2 * e) < fan_in) e++;
    int is_weight = strlen(name) > 7 && !strcmp(name + strlen(name) - 7, ".weight");
    for (int64_t i = 0; i < w->numel; i++) {
        uint32_t x = (uint32_t)i * 2654435761u + seed;
        x ^= x >> 15;
        x *= 2246822519u;
        x ^= x >> 13;
        float u = (float)((int32_t)(x >> 16) - 32768) / 32768.0f;
        w->data[i] = w->ndim == 1 ? (is_weight ? 1 + u / 4 : u / 4) : u * ldexpf(1.0f, -e);
    }
}

static float *load(const char *dir, const char *file, int64_t *n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    return test_load_npy(p, n);
}

static ldm_tensor upload(const struct ldm_ops *ops, const float *h, const int64_t *shape, int nd) {
    ldm_tensor t = ldm_tensor_new(ops, shape, nd);
    ldm_tensor_from_host(&t, h);
    return t;
}

static int read_config(ldm_unet_config *cfg, const char *dir) {
    char p[512];
    snprintf(p, sizeof p, "%s/config.json", dir);
    char *json = test_read_file(p, NULL);
    if (!json) return ldm_error("cannot read %s", p);
    int rc = ldm_unet_config_from_json(cfg, json, p);
    free(json);
    return rc;
}

// The gradient check on one fixture folder and backend. Returns the worst
// relative gradient error over every parameter and the context (-1: not run).
static double run_fixture(const char *dir, const char *label, const struct ldm_ops *ops,
                          double tol) {
    char name[320];
    ldm_unet_config cfg;
    ldm_unet u;
    ldm_unet_trainer tr;
    ldm_params list = {0};
    snprintf(name, sizeof name, "%s [%s] trainer init", label, ops->name);
    if (!test_check(read_config(&cfg, dir) == 0 && ldm_unet_init_random(&u, &cfg, ops) == 0 &&
                        ldm_unet_trainer_init(&tr, &u) == 0 &&
                        ldm_unet_trainer_params(&tr, &list, "unet.") == 0,
                    name, "%s", ldm_last_error()))
        return -1;

    // names and order = torch's named_parameters(); then the weights by formula
    char p[512], line[LDM_PARAM_NAME];
    snprintf(p, sizeof p, "%s/names.txt", dir);
    FILE *f = fopen(p, "r");
    int i = 0, bad = -1;
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (bad < 0 && (i >= list.n || strcmp(list.p[i].name + 5, line))) bad = i;
        i++;
    }
    if (f) fclose(f);
    snprintf(name, sizeof name, "%s [%s] parameter names and order", label, ops->name);
    test_check(f && bad < 0 && i == list.n, name, "%d names in the fixture, %d here; first "
               "difference at %d (%s)", i, list.n, bad, bad >= 0 && bad < list.n ? list.p[bad].name : "");
    for (int k = 0; k < list.n; k++) fill(list.p[k].w, list.p[k].name + 5);

    int64_t nx = 0, nt = 0, nc = 0, ne = 0, no = 0, nl = 0, ndc = 0, ng = 0;
    float *x = load(dir, "x.npy", &nx), *t = load(dir, "t.npy", &nt);
    float *ctx = load(dir, "context.npy", &nc), *eps = load(dir, "eps.npy", &ne);
    float *out_ref = load(dir, "out.npy", &no), *loss_ref = load(dir, "loss.npy", &nl);
    float *dctx_ref = load(dir, "dcontext.npy", &ndc), *g_ref = load(dir, "grads.npy", &ng);
    double worst = -1;
    if (!x || !t || !ctx || !eps || !out_ref || !loss_ref || !dctx_ref || !g_ref) goto done;
    int64_t B = nt, H = 8, W = 8, C = cfg.in_channels, T = nc / (B * cfg.cross_attention_dim);
    H = W = (int64_t)sqrt((double)(nx / (B * C)));
    ldm_tensor xt = upload(ops, x, LDM_SHAPE(B, C, H, W));
    ldm_tensor ct = upload(ops, ctx, LDM_SHAPE(B, T, cfg.cross_attention_dim));
    ldm_tensor out = ldm_tensor_new(ops, LDM_SHAPE(B, cfg.out_channels, H, W));
    ldm_tensor out2 = ldm_tensor_new(ops, LDM_SHAPE(B, cfg.out_channels, H, W));
    ldm_tensor dout = ldm_tensor_zeros(ops, LDM_SHAPE(B, cfg.out_channels, H, W));
    ldm_tensor dctx = ldm_tensor_zeros(ops, LDM_SHAPE(B, T, cfg.cross_attention_dim));

    // forward: the trainer's = the inference one, and torch's
    snprintf(name, sizeof name, "%s [%s] train forward", label, ops->name);
    if (!test_check(ldm_unet_train_forward(&out, &tr, &xt, t, &ct) == 0 &&
                        ldm_unet_forward(&out2, &u, &xt, t, &ct) == 0,
                    name, "%s", ldm_last_error()))
        goto free_tensors;
    snprintf(name, sizeof name, "%s [%s] train forward = inference forward", label, ops->name);
    test_close(name, out.data, out2.data, out.numel, 1e-6, 0);
    snprintf(name, sizeof name, "%s [%s] forward vs torch", label, ops->name);
    test_close(name, out.data, out_ref, no, 1e-5, 0);

    // the stage-2 loss with min-SNR weights on the scaled-linear schedule (as diffusers)
    ldm_schedule s;
    float wt[1000], wb[16], *dpred = calloc((size_t)out.numel, sizeof(float));
    ldm_schedule_init(&s, LDM_BETA_SCALED_LINEAR, LDM_SCHED_DIFFUSERS, 0.00085, 0.012, 1000);
    ldm_min_snr_weights(wt, s.alphas_cumprod, 1000, 5.0);
    for (int64_t b = 0; b < B; b++) wb[b] = wt[(int)t[b]];
    double loss = ldm_loss_eps(dpred, NULL, out.data, eps, wb, B, out.numel / B);
    snprintf(name, sizeof name, "%s [%s] loss %.6f (torch %.6f)", label, ops->name, loss,
             loss_ref[0]);
    test_check(fabs(loss - loss_ref[0]) <= 1e-5 * fabs(loss_ref[0]), name, "relative error %.2e",
               fabs(loss - loss_ref[0]) / fabs(loss_ref[0]));
    ldm_tensor_from_host(&dout, dpred);
    free(dpred);

    // backward: every parameter's gradient and the context's
    snprintf(name, sizeof name, "%s [%s] backward", label, ops->name);
    if (!test_check(ldm_unet_train_backward(&dctx, &tr, &dout) == 0, name, "%s", ldm_last_error()))
        goto free_tensors;
    int64_t off = 0, n_bad = 0;
    const char *worst_name = "";
    worst = 0;
    float *g1 = malloc((size_t)list.numel * sizeof(float));
    for (int k = 0; k < list.n && off + list.p[k].g->numel <= ng; k++) {
        const ldm_tensor *g = list.p[k].g;
        double scale = 0, err = 0;
        for (int64_t j = 0; j < g->numel; j++) {
            scale = fmax(scale, fabs(g_ref[off + j]));
            err = fmax(err, fabs((double)g->data[j] - g_ref[off + j]));
        }
        double rel = scale > 0 ? err / scale : err;
        if (rel > worst) worst = rel, worst_name = list.p[k].name;
        if (rel > tol && n_bad++ < 10) test_close(list.p[k].name, g->data, g_ref + off, g->numel, tol, 0);
        memcpy(g1 + off, g->data, (size_t)g->numel * sizeof(float));
        off += g->numel;
    }
    snprintf(name, sizeof name, "%s [%s] %d parameter gradients (worst %s)", label, ops->name,
             list.n, worst_name);
    test_check(off == ng && n_bad == 0, name, "%lld values here, %lld in the fixture; %lld "
               "tensors off by more than %.0e (worst %.2e)", (long long)off, (long long)ng,
               (long long)n_bad, tol, worst);
    printf("          worst relative gradient error %.2e (%s)\n", worst, worst_name);
    printf("          tape: %.1f KiB kept by the forward, %.1f KiB at the backward's peak\n",
           tr.kept / 1024.0, tr.tape.peak / 1024.0);
    snprintf(name, sizeof name, "%s [%s] dcontext", label, ops->name);
    test_close(name, dctx.data, dctx_ref, ndc, tol, 0);

    // a second backward adds the same again
    ldm_unet_train_backward(NULL, &tr, &dout);
    double acc = 0, gmax = 0;
    off = 0;
    for (int k = 0; k < list.n; k++) {
        for (int64_t j = 0; j < list.p[k].g->numel; j++) {
            acc = fmax(acc, fabs(list.p[k].g->data[j] - 2.0 * g1[off + j]));
            gmax = fmax(gmax, fabs(g1[off + j]));
        }
        off += list.p[k].g->numel;
    }
    free(g1);
    snprintf(name, sizeof name, "%s [%s] a second backward accumulates (+=)", label, ops->name);
    test_check(acc <= 1e-6 * gmax, name, "max |g2 - 2 g1| = %.2e of max |g1| %.2e", acc, gmax);

free_tensors:
    ldm_tensor_free(&xt); ldm_tensor_free(&ct); ldm_tensor_free(&out);
    ldm_tensor_free(&out2); ldm_tensor_free(&dout); ldm_tensor_free(&dctx);
done:
    free(x); free(t); free(ctx); free(eps); free(out_ref); free(loss_ref); free(dctx_ref);
    free(g_ref);
    ldm_params_free(&list);
    ldm_unet_trainer_free(&tr);
    ldm_unet_free(&u);
    return worst;
}

// fp16 weights pointing into a mapped safetensors file (the inference UNet's
// fixture): the trainer makes them owned fp32, and the numbers do not change.
static void test_half_mapped_weights(void) {
    const struct ldm_ops *ops = ldm_backend("cpu");
    const char *dir = "tests/fixtures/unet/sd1";
    char p[256];
    ldm_unet_config cfg;
    ldm_tensor_file file;
    ldm_unet u;
    ldm_unet_trainer tr;
    ldm_params list = {0};
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors", dir);
    int ok = read_config(&cfg, dir) == 0 && ldm_tensor_file_open(&file, p) == 0;
    ldm_weights w = {.file = &file, .comp = LDM_COMP_UNET, .layout = LDM_LAYOUT_DIFFUSERS,
                     .prefix = "", .ops = ops, .map = 1};
    ok = ok && ldm_unet_load(&u, &cfg, &w) == 0;
    if (!test_check(ok, "sd1 fp16 mapped weights: load", "%s", ldm_last_error())) return;
    int64_t nx = 0, nt = 0, nc = 0;
    float *x = NULL, *t = NULL, *ctx = NULL;
    x = test_load_npy("tests/fixtures/unet/sd1/b2_latent.npy", &nx);
    t = test_load_npy("tests/fixtures/unet/sd1/b2_t.npy", &nt);
    ctx = test_load_npy("tests/fixtures/unet/sd1/b2_context.npy", &nc);
    if (x && t && ctx) {
        ldm_tensor xt = upload(ops, x, LDM_SHAPE(2, 4, 8, 8));
        ldm_tensor ct = upload(ops, ctx, LDM_SHAPE(2, nc / 2 / cfg.cross_attention_dim,
                                                   cfg.cross_attention_dim));
        ldm_tensor o1 = ldm_tensor_new(ops, LDM_SHAPE(2, 4, 8, 8));
        ldm_tensor o2 = ldm_tensor_new(ops, LDM_SHAPE(2, 4, 8, 8));
        int half = 0, views = 0;
        ok = ldm_unet_forward(&o1, &u, &xt, t, &ct) == 0;
        for (int k = 0; k < u.n_blocks; k++) {   // some weights are fp16 views before
            half += u.blocks[k].conv_w.data && u.blocks[k].conv_w.dtype != LDM_DTYPE_F32;
            views += u.blocks[k].conv_w.data && !u.blocks[k].conv_w.owns;
        }
        ok = ok && ldm_unet_trainer_init(&tr, &u) == 0 &&
             ldm_unet_trainer_params(&tr, &list, "unet.") == 0;
        test_check(ok && half > 0 && views > 0, "sd1 fp16 mapped weights: trainer init",
                   "%s (%d fp16, %d mapped conv weights before)", ldm_last_error(), half, views);
        int all_f32 = ok;
        for (int k = 0; ok && k < list.n; k++)
            all_f32 &= list.p[k].w->dtype == LDM_DTYPE_F32 && list.p[k].w->owns;
        test_check(all_f32 && list.numel == u.n_params, "sd1: every weight owned fp32",
                   "%lld of %lld parameters listed", (long long)list.numel, (long long)u.n_params);
        if (ok && ldm_unet_train_forward(&o2, &tr, &xt, t, &ct) == 0)
            test_close("sd1: train forward on the widened weights = fp16 forward", o2.data,
                       o1.data, o1.numel, 1e-6, 0);
        else
            test_check(0, "sd1: train forward", "%s", ldm_last_error());
        ldm_params_free(&list);
        if (ok) ldm_unet_trainer_free(&tr);
        ldm_tensor_free(&xt); ldm_tensor_free(&ct); ldm_tensor_free(&o1); ldm_tensor_free(&o2);
    }
    free(x); free(t); free(ctx);
    ldm_unet_free(&u);
    ldm_tensor_file_close(&file);
}

static void test_errors(void) {
    ldm_unet_config cfg;
    ldm_unet u;
    ldm_unet_trainer tr;
    read_config(&cfg, FIX "/conv");
    // a backend without backward ops
    const struct ldm_ops *emu = ldm_backend("cuda-emu");
    if (emu && ldm_unet_init_random(&u, &cfg, emu) == 0) {
        int rc = ldm_unet_trainer_init(&tr, &u);
        test_check(rc != 0 && strstr(ldm_last_error(), "not implemented on"),
                   "trainer on cuda-emu refused", "rc %d: %s", rc, ldm_last_error());
        ldm_unet_free(&u);
    }
    // the class embedding (x4 upscaler) is not trained
    ldm_unet_config cc = cfg;
    cc.num_class_embeds = 3;
    if (ldm_unet_init_random(&u, &cc, ldm_backend("cpu")) == 0) {
        int rc = ldm_unet_trainer_init(&tr, &u);
        test_check(rc != 0 && strstr(ldm_last_error(), "class embedding"),
                   "class embedding refused", "rc %d: %s", rc, ldm_last_error());
        ldm_unet_free(&u);
    }
    // backward before any forward; wrong context
    if (ldm_unet_init_random(&u, &cfg, ldm_backend("cpu")) == 0 &&
        ldm_unet_trainer_init(&tr, &u) == 0) {
        const struct ldm_ops *ops = u.ops;
        ldm_tensor d = ldm_tensor_zeros(ops, LDM_SHAPE(1, 4, 8, 8));
        int rc = ldm_unet_train_backward(NULL, &tr, &d);
        test_check(rc != 0 && strstr(ldm_last_error(), "without a forward"),
                   "backward before a forward refused", "rc %d: %s", rc, ldm_last_error());
        ldm_tensor x = ldm_tensor_zeros(ops, LDM_SHAPE(1, 4, 8, 8));
        ldm_tensor c = ldm_tensor_zeros(ops, LDM_SHAPE(1, 5, 7));
        float t = 10;
        rc = ldm_unet_train_forward(&d, &tr, &x, &t, &c);
        test_check(rc != 0 && strstr(ldm_last_error(), "context"), "wrong context width refused",
                   "rc %d: %s", rc, ldm_last_error());
        ldm_tensor_free(&d); ldm_tensor_free(&x); ldm_tensor_free(&c);
        ldm_unet_trainer_free(&tr);
        ldm_unet_free(&u);
    }
}

int main(int argc, char **argv) {
    if (argc > 1) {   // one folder, e.g. the real tiny config
        for (int b = 0; b < 2; b++) {
            const char *be = b ? "ref" : "cpu";
            double w = run_fixture(argv[1], argv[1], ldm_backend(be), 1e-4);
            printf("%s [%s]: worst relative gradient error %.3e\n", argv[1], be, w);
        }
        return test_summary();
    }
    const char *cases[] = {"conv", "linear"};
    for (int c = 0; c < 2; c++)
        for (int b = 0; b < 2; b++) {
            char dir[256];
            snprintf(dir, sizeof dir, FIX "/%s", cases[c]);
            run_fixture(dir, cases[c], ldm_backend(b ? "ref" : "cpu"), 1e-4);
        }
    test_half_mapped_weights();
    test_errors();
    return test_summary();
}
