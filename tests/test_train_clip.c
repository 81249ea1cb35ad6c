/*
 * tests/test_train_clip.c -- training the CLIP text encoder
 * (ldm/train/clip_train.h) against torch autograd.
 *
 * Fixtures (tools/reference/fixtures_train_clip.py), one folder per case in
 * tests/fixtures/train/clip/: a micro transformers CLIPTextModel as a
 * diffusers folder (text_encoder/), grads.safetensors with the ids [B,T]
 * (EOT padding, a repeated token), a fixed random upstream gradient dout
 * (L = sum(out * dout)), torch's output and loss, and dL/dW of every
 * parameter from float64 autograd; params.txt = named_parameters() in order.
 *   quick  quick_gelu, vocab 1000, T 77, fp32 weights
 *   gelu   exact GELU, vocab 300, 4 heads, T 20, fp16 weights (widened by init)
 * On `ref` and `cpu`, per case:
 *   - the parameter list: the names and order of named_parameters()
 *   - the trainer's forward: the same bytes as ldm_clip_forward, and torch's
 *     output within 1e-4; the loss within 1e-5
 *   - every gradient within 1e-4 of max |gradient| of that tensor (floored at
 *     1e-2 of the model's largest gradient: the key bias's true gradient is
 *     exactly 0, softmax being shift-invariant along a row, so its scale is
 *     rounding noise of the order of the other gradients)
 *   - accumulation: a second backward doubles every gradient
 *   - errors: a backward before any forward, a dout of the wrong shape, a
 *     token id outside the vocabulary
 *
 *   build/tests/test_train_clip DIR [BACKEND]   runs one case folder DIR on
 *       BACKEND (default cpu) and prints the worst relative error (the real
 *       tiny model: written by fixtures_train_clip.py --tiny DIR, not committed).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/ops.h"
#include "ldm/clip.h"
#include "ldm/core/error.h"
#include "ldm/io/tensorfile.h"
#include "ldm/model.h"
#include "ldm/train/clip_train.h"
#include "ldm/train/params.h"
#include "tests/test.h"

#define FIX "tests/fixtures/train/clip/"
#define RTOL 1e-4          // gradients and the output, of the tensor's max |value|
#define LOSS_RTOL 1e-5
#define ZERO_FLOOR 1e-2    // a tensor's scale is at least this fraction of the model's max |grad|

// Entry `name` of f as host floats (malloc'ed; *n its element count), or NULL
// after a failed check.
static float *entry(const ldm_tensor_file *f, const char *name, int64_t *n) {
    const ldm_tensor_entry *e = ldm_tensor_file_find(f, name);
    if (!e) {
        test_check(0, name, "not in %s", f->path);
        return NULL;
    }
    float *d = malloc((size_t)(e->numel ? e->numel : 1) * sizeof *d);
    if (!d || ldm_entry_to_f32(d, e) != 0) {
        free(d);
        test_check(0, name, "%s", ldm_last_error());
        return NULL;
    }
    if (n) *n = e->numel;
    return d;
}

// Like test_close, with scale = max(max |exp|, floor); returns the relative error.
static double close_scaled(const char *name, const float *got, const float *exp, int64_t n,
                           double floor) {
    double max_abs = 0, scale = floor;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; i++) {
        if (fabs(exp[i]) > scale) scale = fabs(exp[i]);
        double d = fabs((double)got[i] - exp[i]);
        if (!(d <= max_abs)) max_abs = d, worst = i;   // NaN counts as worst
    }
    double rel = max_abs / scale;
    char label[1200];
    snprintf(label, sizeof label, "%-72s max_rel %.3e", name, rel);
    test_check(rel <= RTOL, label, "max_abs %.3e (tol %.0e), worst [%lld] got %.7g exp %.7g",
               max_abs, RTOL, (long long)worst, got[worst], exp[worst]);
    return isnan(rel) ? INFINITY : rel;
}

// One case folder on one backend; *worst = the largest relative gradient error.
static void run_case(const char *dir, const char *backend, double *worst) {
    char path[600], name[1024];
    const struct ldm_ops *ops = ldm_backend(backend);
    ldm_model_options opt = {ops, LDM_PRED_AUTO, NULL};
    ldm_model m;
    snprintf(name, sizeof name, "%s: open [%s]", dir, backend);
    if (!test_check(ldm_model_open(&m, dir, &opt) == 0, name, "%s", ldm_last_error())) return;
    ldm_clip clip;
    snprintf(name, sizeof name, "%s: load [%s]", dir, backend);
    if (!test_check(ldm_clip_load(&clip, &m.clip_w, &m.clip) == 0, name, "%s", ldm_last_error())) {
        ldm_model_close(&m);
        return;
    }
    ldm_tensor_file fx;
    snprintf(path, sizeof path, "%s/grads.safetensors", dir);
    if (!test_check(ldm_tensor_file_open(&fx, path) == 0, path, "%s", ldm_last_error())) {
        ldm_clip_free(&clip);
        ldm_model_close(&m);
        return;
    }
    const ldm_tensor_entry *ide = ldm_tensor_file_find(&fx, "ids");
    int64_t n_ids, n_out, n_loss;
    float *idf = entry(&fx, "ids", &n_ids), *dout_h = entry(&fx, "dout", &n_out);
    float *out_ref = entry(&fx, "out", NULL), *loss_ref = entry(&fx, "loss", &n_loss);
    ldm_clip_trainer tr;
    ldm_params list = {0};
    int have_tr = 0;
    if (!ide || !idf || !dout_h || !out_ref || !loss_ref) goto done;
    int B = (int)ide->shape[0], T = (int)ide->shape[1];
    int64_t D = m.clip.hidden_size;
    int32_t *ids = malloc((size_t)n_ids * sizeof *ids);
    for (int64_t i = 0; i < n_ids; i++) ids[i] = (int32_t)idf[i];

    // --- init and the parameter list
    snprintf(name, sizeof name, "%s: trainer init [%s]", dir, backend);
    have_tr = test_check(ldm_clip_trainer_init(&tr, &clip) == 0, name, "%s", ldm_last_error());
    if (!have_tr) goto done_ids;
    snprintf(name, sizeof name, "%s: parameter list [%s]", dir, backend);
    test_check(ldm_clip_trainer_params(&tr, &list, "text_encoder.") == 0, name, "%s",
               ldm_last_error());
    snprintf(path, sizeof path, "%s/params.txt", dir);
    char *names = test_read_file(path, NULL);
    int idx = 0, order_ok = names != NULL;
    char why[1024] = "";
    if (!names) snprintf(why, sizeof why, "cannot read %s", path);
    for (char *line = names ? strtok(names, "\n") : NULL; line && order_ok;
         line = strtok(NULL, "\n"), idx++) {
        char want[LDM_PARAM_NAME + 20];
        snprintf(want, sizeof want, "text_encoder.%s", line);
        if (idx >= list.n || strcmp(list.p[idx].name, want)) {
            snprintf(why, sizeof why, "parameter %d is %s, torch's is %s", idx,
                     idx < list.n ? list.p[idx].name : "(none)", want);
            order_ok = 0;
        }
    }
    if (order_ok && idx != list.n) {
        snprintf(why, sizeof why, "%d parameters, torch has %d", list.n, idx);
        order_ok = 0;
    }
    snprintf(name, sizeof name, "%s: names and order = named_parameters() [%s]", dir, backend);
    test_check(order_ok, name, "%s", why);
    free(names);
    int all_f32 = 1;
    for (int i = 0; i < list.n; i++)
        all_f32 &= list.p[i].w->dtype == LDM_DTYPE_F32 && list.p[i].w->owns;
    snprintf(name, sizeof name, "%s: every weight owned fp32 after init [%s]", dir, backend);
    test_check(all_f32, name, "a weight is still 16-bit or a view");

    // --- errors before any forward
    ldm_tensor dout = ldm_tensor_new(ops, LDM_SHAPE(B, T, D));
    ldm_tensor_from_host(&dout, dout_h);
    snprintf(name, sizeof name, "%s: backward before a forward is an error [%s]", dir, backend);
    test_check(ldm_clip_train_backward(&tr, &dout) != 0 && strstr(ldm_last_error(), "no forward"),
               name, "%s", ldm_last_error());

    // --- forward: torch's output, the inference forward's bytes, the loss
    ldm_tensor out, out_inf;
    snprintf(name, sizeof name, "%s: trainer forward [%s]", dir, backend);
    if (!test_check(ldm_clip_train_forward(&out, &tr, ids, B, T) == 0, name, "%s",
                    ldm_last_error()))
        goto done_dout;
    float *out_h = test_tensor_host(&out);
    snprintf(name, sizeof name, "%s: forward vs torch [%s]", dir, backend);
    test_close(name, out_h, out_ref, n_out, RTOL, 0);
    if (ldm_clip_forward(&out_inf, &clip, ids, B, T, 0) == 0) {
        float *inf_h = test_tensor_host(&out_inf);
        snprintf(name, sizeof name, "%s: forward = ldm_clip_forward, same bytes [%s]", dir,
                 backend);
        test_check(memcmp(inf_h, out_h, (size_t)n_out * sizeof(float)) == 0, name,
                   "the trainer's forward differs from the model's");
        free(inf_h);
        ldm_tensor_free(&out_inf);
    }
    double loss = 0;
    for (int64_t i = 0; i < n_out; i++) loss += (double)out_h[i] * dout_h[i];
    snprintf(name, sizeof name, "%s: loss sum(out * dout) [%s]", dir, backend);
    test_check(fabs(loss - loss_ref[0]) <= LOSS_RTOL * fabs(loss_ref[0]), name,
               "%.8g, torch %.8g", loss, loss_ref[0]);
    free(out_h);
    ldm_tensor_free(&out);

    // --- a dout of the wrong shape is an error
    ldm_tensor dbad = ldm_tensor_view(&dout, LDM_SHAPE(B * T, D));
    snprintf(name, sizeof name, "%s: dout of another shape is an error [%s]", dir, backend);
    test_check(ldm_clip_train_backward(&tr, &dbad) != 0 && strstr(ldm_last_error(), "dout"),
               name, "%s", ldm_last_error());

    // --- backward: every gradient against torch's float64 one
    ldm_params_zero_grad(&list);
    snprintf(name, sizeof name, "%s: backward [%s]", dir, backend);
    if (!test_check(ldm_clip_train_backward(&tr, &dout) == 0, name, "%s", ldm_last_error()))
        goto done_dout;
    float **ref = calloc((size_t)list.n, sizeof *ref);
    double gmax = 0;
    for (int i = 0; i < list.n; i++) {
        char key[LDM_PARAM_NAME + 8];
        int64_t n = 0;
        snprintf(key, sizeof key, "grad.%s", list.p[i].name + strlen("text_encoder."));
        ref[i] = entry(&fx, key, &n);
        if (ref[i] && n != list.p[i].g->numel) {
            test_check(0, key, "torch has %lld values, ours %lld", (long long)n,
                       (long long)list.p[i].g->numel);
            free(ref[i]);
            ref[i] = NULL;
        }
        for (int64_t j = 0; ref[i] && j < n; j++) gmax = fmax(gmax, fabs(ref[i][j]));
    }
    for (int i = 0; i < list.n; i++) {
        if (!ref[i]) continue;
        float *g = test_tensor_host(list.p[i].g);
        snprintf(name, sizeof name, "%s: d %s [%s]", dir, list.p[i].name, backend);
        double rel = close_scaled(name, g, ref[i], list.p[i].g->numel, ZERO_FLOOR * gmax);
        if (rel > *worst) *worst = rel;
        free(g);
    }
    // --- accumulation: one more backward of the same forward doubles everything
    ldm_clip_train_backward(&tr, &dout);
    double acc_worst = 0;
    for (int i = 0; i < list.n; i++) {
        if (!ref[i]) continue;
        float *g = test_tensor_host(list.p[i].g);
        double mx = ZERO_FLOOR * gmax, err = 0;
        for (int64_t j = 0; j < list.p[i].g->numel; j++) {
            mx = fmax(mx, fabs(2.0 * ref[i][j]));
            err = fmax(err, fabs(g[j] - 2.0 * ref[i][j]));
        }
        acc_worst = fmax(acc_worst, err / mx);
        free(g);
    }
    snprintf(name, sizeof name, "%s: a second backward adds (2x every gradient) [%s]", dir,
             backend);
    test_check(acc_worst <= RTOL, name, "worst relative error %.3e", acc_worst);
    for (int i = 0; i < list.n; i++) free(ref[i]);
    free(ref);

    // --- a token id outside the vocabulary is an error (user input)
    int32_t bad[2] = {0, m.clip.vocab_size};
    ldm_tensor o2;
    snprintf(name, sizeof name, "%s: id outside the vocabulary is an error [%s]", dir, backend);
    test_check(ldm_clip_train_forward(&o2, &tr, bad, 1, 2) != 0 &&
                   strstr(ldm_last_error(), "vocabulary"),
               name, "%s", ldm_last_error());
done_dout:
    ldm_tensor_free(&dout);
done_ids:
    free(ids);
done:
    free(idf);
    free(dout_h);
    free(out_ref);
    free(loss_ref);
    ldm_params_free(&list);
    if (have_tr) ldm_clip_trainer_free(&tr);
    ldm_tensor_file_close(&fx);
    ldm_clip_free(&clip);
    ldm_model_close(&m);
}

int main(int argc, char **argv) {
    double worst = 0;
    if (argc > 1) {   // one case folder (the real tiny model), on cpu or the named backend
        const char *be = argc > 2 ? argv[2] : "cpu";
        if (!ldm_backend(be)) return fprintf(stderr, "%s\n", ldm_last_error()), 2;
        run_case(argv[1], be, &worst);
        printf("worst relative gradient error on %s [%s]: %.3e\n", argv[1], be, worst);
        return test_summary();
    }
    const char *cases[] = {FIX "quick", FIX "gelu"};
    const char *backends[] = {"ref", "cpu"};
    for (int c = 0; c < 2; c++)
        for (int b = 0; b < 2; b++) {
            printf("== %s [%s]\n", cases[c], backends[b]);
            run_case(cases[c], backends[b], &worst);
        }
    printf("worst relative gradient error, every case and backend: %.3e\n", worst);

    // A backend without backward ops refuses to train, by name.
    const struct ldm_ops *cuda = ldm_backend("cuda-emu");
    if (cuda && !ldm_backend_can_train(cuda)) {
        ldm_model m;
        ldm_model_options opt = {cuda, LDM_PRED_AUTO, NULL};
        if (ldm_model_open(&m, FIX "quick", &opt) == 0) {
            ldm_clip clip;
            if (ldm_clip_load(&clip, &m.clip_w, &m.clip) == 0) {
                ldm_clip_trainer tr;
                test_check(ldm_clip_trainer_init(&tr, &clip) != 0 &&
                               strstr(ldm_last_error(), "not implemented"),
                           "a backend without backward ops cannot train", "%s", ldm_last_error());
                ldm_clip_free(&clip);
            }
            ldm_model_close(&m);
        }
    }
    return test_summary();
}
