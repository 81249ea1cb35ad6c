/*
 * tests/test_train_vae.c -- one stage-1 training step of the autoencoder
 * (ldm/train/vae_train.h + the stage-1 loss of ldm/train/loss.h) against
 * torch autograd through diffusers' AutoencoderKL.
 *
 * Fixtures (tools/reference/fixtures_train_vae.py, tests/fixtures/train/vae/):
 *   micro  (8,12) channels, 1 resnet per level, mid attention, quant convs,
 *          batch 2, 16x16, one log-variance channel partly below the -30 clamp
 *   plain  (4,4), 2 resnets per level, no attention, no quant convs, batch 1
 * with the inputs, the loss pieces and every gradient, computed in float64
 * (the exact values at the fp16 weights, rounded once). On `ref` and `cpu`:
 *   forward of the trainer vs the model's forward        same values (<= 1e-6)
 *   moments, image vs diffusers                          rel. max err <= 1e-4
 *   loss, err, kl, l1, l2                                |d| <= 1e-5 * max(1, |L|)
 *   dL/dimage, dL/dz, dL/dmoments                        <= 1e-4
 *   dL/dparameter, every tensor by torch name            <= 1e-4 of its max |grad|
 *   parameter names and order = named_parameters()
 *   a second step without zeroing doubles every gradient (accumulation)
 *   misuse (backward without forward, wrong shapes) fails with a message
 * "Relative" is max |error| over the largest |reference| of that tensor. A
 * tensor whose exact gradient is zero -- the attention's to_k bias (adding a
 * constant to every key shifts each row of scores by one constant, which
 * softmax ignores), or a conv bias feeding a GroupNorm of one channel per
 * group (the norm subtracts it again) -- must stay below 1e-7 of the largest
 * gradient of the model.
 *
 *   build/tests/test_train_vae          the committed fixtures
 *   build/tests/test_train_vae DIR [BACKEND]   one folder written by
 *       fixtures_train_vae.py --tiny DIR (the real tiny config), on cpu or BACKEND
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "ldm/io/tensorfile.h"
#include "ldm/model.h"
#include "ldm/train/loss.h"
#include "ldm/train/params.h"
#include "ldm/train/vae_train.h"
#include "ldm/vae.h"
#include "tests/test.h"

#define FIX "tests/fixtures/train/vae/"

static ldm_tensor load(const struct ldm_ops *ops, const char *dir, const char *name) {
    char path[600];
    ldm_tensor t = {0};
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (ldm_npy_read(&t, ops, path)) printf("  cannot read %s: %s\n", path, ldm_last_error());
    return t;
}

// max |got - exp| / max(max |exp|, floor)
static double rel_err(const float *got, const float *exp, int64_t n, double floor) {
    double err = 0, scale = floor;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - exp[i]);
        if (!(d <= err)) err = d;   // NaN wins
        if (fabs(exp[i]) > scale) scale = fabs(exp[i]);
    }
    return err / scale;
}

static void check_npy(const char *label, const ldm_tensor *got, const char *dir, const char *name,
                      double rtol) {
    ldm_tensor exp = load(&ldm_ops_ref, dir, name);
    if (!exp.data || exp.numel != got->numel) {
        test_check(0, label, "missing %s or size mismatch", name);
    } else {
        float *g = test_tensor_host(got);
        test_close(label, g, exp.data, exp.numel, rtol, 0);
        free(g);
    }
    ldm_tensor_free(&exp);
}

// Every gradient of `list` against grads.safetensors (times `times`): returns the
// worst relative error of the tensors whose exact gradient is not zero, prints
// the tensors above tolerance. A tensor whose exact gradient is zero (its
// reference below 1e-9 of the largest gradient: float64 rounding) passes when
// every |got| <= 1e-7 of the largest gradient (float32 rounding of the sums).
static double check_grads(const ldm_params *list, const ldm_tensor_file *ref, double times,
                          double rtol, const char *label) {
    float *r = NULL;
    double gmax = 0, worst = 0, worst_zero = 0;
    const char *worst_name = "";
    int missing = 0, bad = 0, n_zero = 0;
    for (int pass = 0; pass < 2; pass++)   // pass 0: the largest gradient of the model
        for (int i = 0; i < list->n; i++) {
            const ldm_param *p = &list->p[i];
            const ldm_tensor_entry *e = ldm_tensor_file_find(ref, p->name + 4);   // no "vae."
            if (!e || e->numel != p->g->numel) {
                missing += pass == 0;
                continue;
            }
            r = realloc(r, (size_t)e->numel * sizeof(float));
            ldm_entry_to_f32(r, e);
            double rmax = 0;
            for (int64_t k = 0; k < e->numel; k++) {
                r[k] *= (float)times;
                rmax = fmax(rmax, fabs(r[k]));
            }
            if (pass == 0) {
                gmax = fmax(gmax, rmax);
                continue;
            }
            if (rmax <= 1e-9 * gmax) {   // exactly zero: rounding noise only
                double a = 0;
                for (int64_t k = 0; k < e->numel; k++) a = fmax(a, fabs(p->g->data[k]));
                n_zero++;
                worst_zero = fmax(worst_zero, a / gmax);
                if (!(a <= 1e-7 * gmax)) printf("    %s: |grad| %.3e, exact 0\n", p->name, a), bad++;
                continue;
            }
            double err = rel_err(p->g->data, r, e->numel, 0);
            if (!(err <= rtol)) printf("    %s: rel err %.3e\n", p->name, err), bad++;
            if (!(err <= worst)) worst = err, worst_name = p->name;
        }
    free(r);
    test_check(!missing && !bad, label, "%d missing, %d off; worst %.3e at %s", missing, bad,
               worst, worst_name);
    printf("          worst %.3e (%s); %d tensors of exact gradient 0, at most %.1e of the "
           "largest |grad| %.3e\n", worst, worst_name, n_zero, worst_zero, gmax);
    return worst;
}

// The parameter names against names.txt (torch's named_parameters order).
static void check_names(const ldm_params *list, const char *dir, const char *label) {
    char path[600], line[256];
    snprintf(path, sizeof path, "%s/names.txt", dir);
    FILE *f = fopen(path, "r");
    int i = 0, bad = 0;
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (i >= list->n || strncmp(list->p[i].name, "vae.", 4) || strcmp(list->p[i].name + 4, line)) {
            if (!bad) printf("    first difference at %d: %s vs vae.%s\n", i,
                             i < list->n ? list->p[i].name : "(none)", line);
            bad = 1;
        }
        i++;
    }
    if (f) fclose(f);
    test_check(f && !bad && i == list->n, label, "%d names in the file, %d parameters", i, list->n);
}

// One step: encode, posterior sample, decode, loss, backward. Returns 0 / LDM_ERR.
// vals: loss, err, kl, l1, l2. moments/image/dimage/dz/dmoments: new tensors.
typedef struct step_out {
    ldm_tensor moments, image, z, dimage, dz, dmoments;
    double vals[5];
} step_out;

static void step_free(step_out *s) {
    ldm_tensor *t[] = {&s->moments, &s->image, &s->z, &s->dimage, &s->dz, &s->dmoments};
    for (int i = 0; i < 6; i++) ldm_tensor_free(t[i]);
}

static int train_step(step_out *s, ldm_vae_trainer *tr, const ldm_tensor *x, const ldm_tensor *w,
                      const ldm_tensor *noise, double kl_weight) {
    const struct ldm_ops *ops = tr->model->ops;
    memset(s, 0, sizeof *s);
    if (ldm_vae_train_encode(&s->moments, tr, x)) return LDM_ERR;
    const int64_t B = s->moments.shape[0], Z = s->moments.shape[1] / 2;
    const int64_t S = s->moments.shape[2] * s->moments.shape[3];
    const int64_t C = x->shape[1], P = x->shape[2] * x->shape[3];
    s->z = ldm_tensor_new(ops, noise->shape, noise->ndim);
    ldm_vae_posterior(s->z.data, s->moments.data, noise->data, B, Z, S);
    if (ldm_vae_train_decode(&s->image, tr, &s->z)) return LDM_ERR;
    s->dimage = test_tensor_zeros_like(ops, &s->image);
    s->dz = test_tensor_zeros_like(ops, &s->z);
    s->dmoments = test_tensor_zeros_like(ops, &s->moments);
    double err = ldm_loss_vae_rec(s->dimage.data, &s->vals[3], &s->vals[4], s->image.data,
                                  x->data, w->data, B, C, P);
    if (ldm_vae_train_backward_decode(&s->dz, tr, &s->dimage)) return LDM_ERR;
    double kl = ldm_loss_vae_kl(s->dmoments.data, s->moments.data, kl_weight, B, Z, S);
    ldm_vae_posterior_backward(s->dmoments.data, s->dz.data, s->moments.data, noise->data, B, Z, S);
    if (ldm_vae_train_backward_encode(tr, &s->dmoments)) return LDM_ERR;
    s->vals[0] = err + kl_weight * kl;
    s->vals[1] = err;
    s->vals[2] = kl;
    return LDM_OK;
}

// max |a - b| / max |b| of two tensors
static double tensor_diff(const ldm_tensor *a, const ldm_tensor *b) {
    float *ha = test_tensor_host(a), *hb = test_tensor_host(b);
    double e = rel_err(ha, hb, a->numel, 0);
    free(ha), free(hb);
    return e;
}

// The most an arena has held (the last forward's peak or an earlier one).
static double peak_mib(const ldm_arena *a) {
    return (a->peak > a->peak_ever ? a->peak : a->peak_ever) / 1048576.0;
}

static double run(const char *dir, const struct ldm_ops *ops, int quick) {
    char label[256];
    double worst = -1;
    printf("-- %s on %s\n", dir, ops->name);
    ldm_vae_file src;
    ldm_vae vae;
    ldm_vae_trainer tr;
    ldm_params list = {0};
    ldm_tensor_file ref = {0};
    char path[600];
    snprintf(path, sizeof path, "%s/grads.safetensors", dir);
    if (!test_check(ldm_vae_file_open(&src, dir, ops) == 0 &&
                        ldm_vae_load(&vae, &src.cfg, &src.w, LDM_VAE_ENCODER | LDM_VAE_DECODER) == 0 &&
                        ldm_vae_trainer_init(&tr, &vae) == 0 &&
                        ldm_vae_trainer_params(&tr, &list, "vae.") == 0 &&
                        ldm_tensor_file_open(&ref, path) == 0,
                    "load the model and the reference", "%s", ldm_last_error()))
        exit(test_summary());
    ldm_vae_file_close(&src);   // the trainer owns copies of every weight now
    snprintf(label, sizeof label, "%s/%s parameter names and order", dir, ops->name);
    check_names(&list, dir, label);

    ldm_tensor x = load(ops, dir, "x.npy"), w = load(ops, dir, "w.npy");
    ldm_tensor noise = load(ops, dir, "noise.npy"), lref = load(&ldm_ops_ref, dir, "loss.npy");
    step_out s;
    snprintf(label, sizeof label, "%s/%s one step", dir, ops->name);
    if (!test_check(x.data && w.data && noise.data && lref.data &&
                        train_step(&s, &tr, &x, &w, &noise, lref.data[5]) == 0,
                    label, "%s", ldm_last_error()))
        exit(test_summary());

    // the trainer's forward is the model's forward
    ldm_tensor m2, y2;
    snprintf(label, sizeof label, "%s/%s train encode = ldm_vae_encoder_forward", dir, ops->name);
    if (ldm_vae_encoder_forward(&m2, &vae, &x) == 0) {
        double e = tensor_diff(&s.moments, &m2);
        test_check(e <= 1e-6, label, "rel %.3e", e);
        printf("          rel diff %.3e\n", e);
    } else {
        test_check(0, label, "%s", ldm_last_error());
    }
    snprintf(label, sizeof label, "%s/%s train decode = ldm_vae_decoder_forward", dir, ops->name);
    if (ldm_vae_decoder_forward(&y2, &vae, &s.z) == 0) {
        double e = tensor_diff(&s.image, &y2);
        test_check(e <= 1e-6, label, "rel %.3e", e);
        printf("          rel diff %.3e\n", e);
    } else {
        test_check(0, label, "%s", ldm_last_error());
    }
    ldm_tensor_free(&m2);
    ldm_tensor_free(&y2);

    // against torch
    const char *nm[5] = {"loss", "err", "kl", "l1", "l2"};
    for (int i = 0; i < 5; i++) {
        double d = fabs(s.vals[i] - lref.data[i]), tol = 1e-5 * fmax(1.0, fabs(lref.data[i]));
        snprintf(label, sizeof label, "%s/%s %s", dir, ops->name, nm[i]);
        test_check(d <= tol, label, "%.9g vs %.9g", s.vals[i], (double)lref.data[i]);
        printf("          %.9g vs torch %.9g (|d| %.2e)\n", s.vals[i], (double)lref.data[i], d);
    }
    snprintf(label, sizeof label, "%s/%s moments", dir, ops->name);
    check_npy(label, &s.moments, dir, "moments.npy", 1e-4);
    snprintf(label, sizeof label, "%s/%s image", dir, ops->name);
    check_npy(label, &s.image, dir, "image.npy", 1e-4);
    snprintf(label, sizeof label, "%s/%s dL/dimage", dir, ops->name);
    check_npy(label, &s.dimage, dir, "dimage.npy", 1e-4);
    snprintf(label, sizeof label, "%s/%s dL/dz", dir, ops->name);
    check_npy(label, &s.dz, dir, "dz.npy", 1e-4);
    snprintf(label, sizeof label, "%s/%s dL/dmoments", dir, ops->name);
    check_npy(label, &s.dmoments, dir, "dmoments.npy", 1e-4);
    snprintf(label, sizeof label, "%s/%s dL/dparameter (%d tensors)", dir, ops->name, list.n);
    worst = check_grads(&list, &ref, 1.0, 1e-4, label);
    step_free(&s);
    printf("          memory: encoder tape %.2f MiB, decoder tape %.2f MiB, work (recomputed "
           "block + running gradients) %.2f MiB\n", peak_mib(&tr.enc.arena),
           peak_mib(&tr.dec.arena), peak_mib(&tr.work));

    if (!quick) {
        // a second step without zeroing: every gradient doubles
        snprintf(label, sizeof label, "%s/%s a second step accumulates (2x)", dir, ops->name);
        if (test_check(train_step(&s, &tr, &x, &w, &noise, lref.data[5]) == 0, "second step",
                       "%s", ldm_last_error()))
            check_grads(&list, &ref, 2.0, 1e-4, label);
        step_free(&s);

        // misuse: each tape is backpropagated once; shapes are checked
        ldm_tensor dm = ldm_tensor_zeros(ops, LDM_SHAPE(1, 1, 1, 1));
        snprintf(label, sizeof label, "%s/%s backward without a forward fails", dir, ops->name);
        int rc1 = ldm_vae_train_backward_encode(&tr, &dm);
        test_check(rc1 != 0 && strstr(ldm_last_error(), "without an encode"), label, "%s",
                   ldm_last_error());
        ldm_tensor mo;
        snprintf(label, sizeof label, "%s/%s wrong dmoments shape fails", dir, ops->name);
        int rc2 = ldm_vae_train_encode(&mo, &tr, &x) ? 0 : ldm_vae_train_backward_encode(&tr, &dm);
        test_check(rc2 != 0 && strstr(ldm_last_error(), "shape of the moments"), label, "%s",
                   ldm_last_error());
        ldm_tensor_free(&mo);
        snprintf(label, sizeof label, "%s/%s encode of a wrong image shape fails", dir, ops->name);
        test_check(ldm_vae_train_encode(&mo, &tr, &dm) != 0 && !mo.data, label, "%s",
                   ldm_last_error());
        ldm_tensor_free(&dm);
    }

    ldm_tensor_free(&x), ldm_tensor_free(&w), ldm_tensor_free(&noise), ldm_tensor_free(&lref);
    ldm_tensor_file_close(&ref);
    ldm_params_free(&list);
    ldm_vae_trainer_free(&tr);
    ldm_vae_free(&vae);
    return worst;
}

int main(int argc, char **argv) {
    if (argc > 1) {   // one folder (the real tiny config): the step only
        const struct ldm_ops *ops = ldm_backend(argc > 2 ? argv[2] : "cpu");
        if (!ops) return fprintf(stderr, "%s\n", ldm_last_error()), 2;
        double worst = run(argv[1], ops, 1);
        printf("worst relative gradient error on %s: %.3e\n", argv[1], worst);
        return test_summary();
    }
    const struct ldm_ops *backends[2] = {&ldm_ops_ref, &ldm_ops_cpu};
    for (int b = 0; b < 2; b++) {
        run(FIX "micro", backends[b], 0);
        run(FIX "plain", backends[b], 0);
    }
    return test_summary();
}
