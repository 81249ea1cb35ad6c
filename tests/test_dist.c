/*
 * tests/test_dist.c -- the process group of ldm/train/dist.h.
 *
 * One binary for both builds. Run alone (make test: dist_single.c, a world
 * of 1) every reduction must leave its buffer as it is; run under
 * `mpirun -np 2` (tests/mpi.sh, the MPI build of `make MPI=1`) the same checks
 * hold against the analytic truth for any world size:
 *   - the mean all-reduce of a known buffer: exact (every value is a small
 *     multiple of 1/2, so every sum and quotient is exact in float),
 *   - the sum of doubles, the broadcast, the packing of a parameter list's
 *     gradients into one buffer and back, the broadcast of its weights,
 *   - data parallel = one process: a linear model with the stage-2 loss
 *     (ldm/train/loss.h), a global batch of 4 split into equal shards over
 *     the ranks; the all-reduced gradient and one AdamW step against the
 *     whole batch in this process, within 1e-6 (the difference is summation
 *     order only: ldm/train/dist.h), on `ref` and `cpu`; and the all-reduced
 *     gradient has the same bits on every rank.
 * Every check is agreed by all ranks (it passes only if it passed on each);
 * rank 0 prints them and the summary, the other ranks print nothing.
 */
#include "tests/test.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"
#include "ldm/train/dist.h"
#include "ldm/train/loss.h"
#include "ldm/train/optim.h"

static int rank, world;

// One check over all ranks: it passes when it passed on every rank.
static void dist_check(int ok, const char *name, const char *why) {
    double failed = !ok;
    ldm_dist_allreduce_sum_double(&failed, 1);
    char msg[256];
    snprintf(msg, sizeof msg, "%s (failed on %d of %d ranks)", why, (int)failed, world);
    test_check(failed == 0, name, "%s", msg);
}

// Every rank's value of `mine`, gathered on every rank through the sum:
// all[r] = rank r's value (the others contribute 0 to slot r). all[world].
static void gather(double *all, double mine) {
    for (int r = 0; r < world; r++) all[r] = r == rank ? mine : 0.0;
    ldm_dist_allreduce_sum_double(all, world);
}

// max |got - exp| / max |exp| over n floats
static double rel_err(const float *got, const float *exp, int64_t n) {
    double err = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        err = fmax(err, fabs((double)got[i] - exp[i]));
        scale = fmax(scale, fabs((double)exp[i]));
    }
    return scale > 0 ? err / scale : err;
}

// Deterministic pseudo-random floats in [-1, 1) (the same on every rank).
static float uniform(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(*s >> 40) / (double)(1ULL << 24) * 2.0 - 1.0);
}

static void test_allreduce_mean(void) {
    // rank r holds v_i + r with v_i = (i mod 1024) / 2; the mean over the
    // ranks is v_i + (world - 1) / 2, exactly. An odd length of more than
    // 2^20 floats (several MPI messages, a tail).
    int64_t n = (1 << 20) + 3, wrong = 0;
    float *buf = malloc((size_t)n * sizeof *buf);
    for (int64_t i = 0; i < n; i++) buf[i] = (float)(i % 1024) * 0.5f + (float)rank;
    int rc = ldm_dist_allreduce_mean(buf, n);
    for (int64_t i = 0; i < n; i++)
        wrong += buf[i] != (float)(i % 1024) * 0.5f + 0.5f * (float)(world - 1);
    char why[128];
    snprintf(why, sizeof why, "rc %d, %lld of %lld values differ from the analytic mean", rc,
             (long long)wrong, (long long)n);
    dist_check(rc == 0 && wrong == 0, "allreduce_mean: (i mod 1024)/2 + rank, exact", why);
    free(buf);
}

static void test_sum_and_broadcast(void) {
    // sum over r of (r + 1/4, 2r) = (W(W-1)/2 + W/4, W(W-1))
    double s[2] = {rank + 0.25, 2.0 * rank};
    int rc = ldm_dist_allreduce_sum_double(s, 2);
    double W = world;
    char why[128];
    snprintf(why, sizeof why, "rc %d, got (%g, %g)", rc, s[0], s[1]);
    dist_check(rc == 0 && s[0] == W * (W - 1) / 2 + W / 4 && s[1] == W * (W - 1),
               "allreduce_sum_double: sum of (rank + 1/4, 2 rank)", why);

    // the last rank's values reach every rank
    float b[5];
    for (int i = 0; i < 5; i++) b[i] = (float)(10 * rank + i);
    rc = ldm_dist_broadcast(b, 5, world - 1);
    int ok = rc == 0;
    for (int i = 0; i < 5; i++) ok &= b[i] == (float)(10 * (world - 1) + i);
    snprintf(why, sizeof why, "rc %d, b[0] %g", rc, b[0]);
    dist_check(ok, "broadcast from the last rank", why);

    // a root outside the world is refused with a message
    rc = ldm_dist_broadcast(b, 5, world);
    snprintf(why, sizeof why, "rc %d, message \"%s\"", rc, ldm_last_error());
    dist_check(rc == LDM_ERR && strstr(ldm_last_error(), "broadcast from rank"),
               "broadcast from a rank outside the world: error", why);
}

static void test_params(const struct ldm_ops *ops) {
    // Three tensors of different sizes: gradient j, element i of rank r is
    // 1000 j + i/4 + (j+1) r, mean 1000 j + i/4 + (j+1)(W-1)/2. A packing
    // that shifted a tensor by one element, or mixed two, would show.
    const int64_t sizes[3] = {7, 130, 1};
    ldm_tensor w[3], g[3];
    ldm_params l = {0};
    for (int j = 0; j < 3; j++) {
        w[j] = ldm_tensor_new(ops, LDM_SHAPE(sizes[j]));
        g[j] = ldm_tensor_new(ops, LDM_SHAPE(sizes[j]));
        for (int64_t i = 0; i < sizes[j]; i++) {
            g[j].data[i] = 1000.0f * j + 0.25f * (float)i + (float)((j + 1) * rank);
            w[j].data[i] = (float)(100 * rank + j) + 0.5f * (float)i;
        }
        ldm_params_add(&l, &w[j], &g[j], "p%d", j);
    }
    int rc = ldm_dist_allreduce_grads(&l);
    int64_t wrong = 0;
    for (int j = 0; j < 3; j++)
        for (int64_t i = 0; i < sizes[j]; i++)
            wrong += g[j].data[i] != 1000.0f * j + 0.25f * (float)i +
                                     0.5f * (float)((j + 1) * (world - 1));
    char why[128];
    snprintf(why, sizeof why, "rc %d, %lld of %lld gradients wrong", rc, (long long)wrong,
             (long long)l.numel);
    dist_check(rc == 0 && wrong == 0, "allreduce_grads: 3 tensors packed, reduced, unpacked", why);

    rc = ldm_dist_broadcast_weights(&l, 0);   // every rank gets rank 0's weights
    wrong = 0;
    for (int j = 0; j < 3; j++)
        for (int64_t i = 0; i < sizes[j]; i++) wrong += w[j].data[i] != (float)j + 0.5f * (float)i;
    snprintf(why, sizeof why, "rc %d, %lld weights differ from rank 0's", rc, (long long)wrong);
    dist_check(rc == 0 && wrong == 0, "broadcast_weights from rank 0", why);
    ldm_params_free(&l);
    for (int j = 0; j < 3; j++) ldm_tensor_free(&w[j]), ldm_tensor_free(&g[j]);
}

// Gradient of the stage-2 loss of the linear model pred = x W^T + b over the
// B samples x [B,K], eps [B,N], weights wb [B]: gW [N,K], gb [N] accumulated;
// returns the loss.
static double linear_loss_grad(ldm_tensor *gW, ldm_tensor *gb, const ldm_tensor *x,
                               const ldm_tensor *W, const ldm_tensor *b, const float *eps,
                               const float *wb) {
    const struct ldm_ops *ops = x->ops;
    int64_t B = x->shape[0], N = W->shape[0];
    ldm_tensor pred = ldm_tensor_new(ops, LDM_SHAPE(B, N));
    ldm_tensor dpred = ldm_tensor_zeros(ops, LDM_SHAPE(B, N));
    ldm_linear(&pred, x, W, b);                                               // [B,N]
    double loss = ldm_loss_eps(dpred.data, NULL, pred.data, eps, wb, B, N);   // mean over B
    ldm_linear_backward(NULL, gW, gb, &dpred, x, W);
    ldm_tensor_free(&pred), ldm_tensor_free(&dpred);
    return loss;
}

// dst <- a's floats then b's
static void concat(float *dst, const ldm_tensor *a, const ldm_tensor *b) {
    memcpy(dst, a->data, (size_t)a->numel * sizeof(float));
    memcpy(dst + a->numel, b->data, (size_t)b->numel * sizeof(float));
}

static void test_data_parallel(const char *backend) {
    const struct ldm_ops *ops = ldm_backend(backend);
    enum { B = 4, K = 48, N = 24 };
    char name[160], why[256];
    int64_t b0, Bl;                                  // this rank's shard: samples [b0, b0+Bl)
    if (ldm_dist_shard(&b0, &Bl, B) != 0) {
        printf("  skipped data parallel: %s\n", ldm_last_error());
        return;
    }

    // The same model and global batch on every rank (one seed).
    uint64_t s = 20260;
    ldm_tensor x = ldm_tensor_new(ops, LDM_SHAPE(B, K)), W = ldm_tensor_new(ops, LDM_SHAPE(N, K));
    ldm_tensor bias = ldm_tensor_new(ops, LDM_SHAPE(N));
    float eps[B * N], wb[B];
    for (int64_t i = 0; i < x.numel; i++) x.data[i] = uniform(&s);
    for (int64_t i = 0; i < W.numel; i++) W.data[i] = 0.2f * uniform(&s);
    for (int64_t i = 0; i < N; i++) bias.data[i] = 0.1f * uniform(&s);
    for (int i = 0; i < B * N; i++) eps[i] = uniform(&s);
    for (int i = 0; i < B; i++) wb[i] = 0.6f + 0.4f * uniform(&s);   // min-SNR-like weights

    // One process, the whole batch.
    ldm_tensor gW1 = ldm_tensor_zeros(ops, LDM_SHAPE(N, K)), gb1 = ldm_tensor_zeros(ops, LDM_SHAPE(N));
    double loss1 = linear_loss_grad(&gW1, &gb1, &x, &W, &bias, eps, wb);

    // Data parallel: this rank's shard, then the mean over the ranks.
    ldm_tensor gW = ldm_tensor_zeros(ops, LDM_SHAPE(N, K)), gb = ldm_tensor_zeros(ops, LDM_SHAPE(N));
    ldm_tensor xs = ldm_tensor_slice0(&x, b0, Bl);
    double loss = linear_loss_grad(&gW, &gb, &xs, &W, &bias, eps + b0 * N, wb + b0);
    ldm_params l = {0};
    ldm_params_add(&l, &W, &gW, "weight");
    ldm_params_add(&l, &bias, &gb, "bias");
    int rc = ldm_dist_allreduce_grads(&l);
    ldm_dist_allreduce_sum_double(&loss, 1);
    loss /= world;

    double eW = rel_err(gW.data, gW1.data, gW.numel), eb = rel_err(gb.data, gb1.data, N);
    double all[64];
    gather(all, fmax(eW, eb));
    double worst = 0;
    for (int r = 0; r < world; r++) worst = fmax(worst, all[r]);
    snprintf(name, sizeof name, "%s: gradient, %d samples over %d ranks = one process", backend,
             B, world);
    snprintf(why, sizeof why, "rc %d, max rel error %.3e (dW %.3e, db %.3e on rank %d)", rc, worst,
             eW, eb, rank);
    dist_check(rc == 0 && worst <= 1e-6, name, why);
    printf("          measured: max rel error %.3e over %d ranks (dW, db vs the whole batch)\n",
           worst, world);
    snprintf(name, sizeof name, "%s: mean of the shards' losses = the batch loss", backend);
    snprintf(why, sizeof why, "%.17g vs %.17g", loss, loss1);
    dist_check(fabs(loss - loss1) <= 1e-12 * fabs(loss1), name, why);

    // The all-reduced gradient has the same bits on every rank.
    int64_t n = W.numel + N;
    float *mine = malloc((size_t)n * sizeof(float)), *g0 = malloc((size_t)n * sizeof(float));
    concat(mine, &gW, &gb), concat(g0, &gW, &gb);
    ldm_dist_broadcast(g0, n, 0);
    int same = !memcmp(g0, mine, (size_t)n * sizeof(float));
    snprintf(name, sizeof name, "%s: the reduced gradient has rank 0's bits on every rank",
             backend);
    dist_check(same, name, "bits differ");
    free(mine), free(g0);

    // One AdamW step from the same weights, with either gradient.
    ldm_adamw_config c = {.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.01};
    float *p1 = malloc((size_t)n * sizeof(float)), *p = malloc((size_t)n * sizeof(float));
    float *g1 = malloc((size_t)n * sizeof(float)), *g = malloc((size_t)n * sizeof(float));
    float *m = malloc((size_t)n * sizeof(float)), *v = malloc((size_t)n * sizeof(float));
    concat(p1, &W, &bias), concat(p, &W, &bias), concat(g1, &gW1, &gb1), concat(g, &gW, &gb);
    memset(m, 0, (size_t)n * sizeof(float)), memset(v, 0, (size_t)n * sizeof(float));
    ldm_adamw_update(p1, m, v, g1, n, &c, 1e-3, 1);
    memset(m, 0, (size_t)n * sizeof(float)), memset(v, 0, (size_t)n * sizeof(float));
    ldm_adamw_update(p, m, v, g, n, &c, 1e-3, 1);
    double ep = rel_err(p, p1, n);
    gather(all, ep);
    worst = 0;
    for (int r = 0; r < world; r++) worst = fmax(worst, all[r]);
    snprintf(name, sizeof name, "%s: weights after one AdamW step = one process", backend);
    snprintf(why, sizeof why, "max rel error %.3e", worst);
    dist_check(worst <= 1e-6, name, why);
    printf("          measured: max rel error %.3e of the weights after the step\n", worst);
    free(p1), free(p), free(g1), free(g), free(m), free(v);

    ldm_params_free(&l);
    ldm_tensor_free(&x), ldm_tensor_free(&W), ldm_tensor_free(&bias);
    ldm_tensor_free(&gW1), ldm_tensor_free(&gb1), ldm_tensor_free(&gW), ldm_tensor_free(&gb);
}

// `steps` steps of a training loop on the linear model pred = x W^T + b with
// the stage-2 loss, each on a new global batch of B drawn whole by every rank
// from one generator: gradient, (all-reduce,) clipping at a norm that acts,
// warm-up, AdamW, EMA -- the order of tools/train/train_tiny.py.
// sharded 0: the whole batch in this process; 1: this rank's shard
// (ldm_dist_shard), the initial weights broadcast from rank 0 and the
// gradients all-reduced. p[N*K + N] = W then b after the last step, e[] their EMA.
static int train_linear(float *p, float *e, const struct ldm_ops *ops, int steps, int sharded) {
    enum { B = 4, K = 40, N = 12 };
    int64_t b0 = 0, Bl = B;
    if (sharded && ldm_dist_shard(&b0, &Bl, B) != 0) return LDM_ERR;
    uint64_t s = 7;
    ldm_tensor W = ldm_tensor_new(ops, LDM_SHAPE(N, K)), bias = ldm_tensor_new(ops, LDM_SHAPE(N));
    ldm_tensor gW = ldm_tensor_new(ops, LDM_SHAPE(N, K)), gb = ldm_tensor_new(ops, LDM_SHAPE(N));
    ldm_tensor x = ldm_tensor_new(ops, LDM_SHAPE(B, K));
    for (int64_t i = 0; i < W.numel; i++) W.data[i] = 0.2f * uniform(&s);
    for (int64_t i = 0; i < N; i++) bias.data[i] = 0.1f * uniform(&s);
    ldm_params l = {0};
    ldm_params_add(&l, &W, &gW, "weight");
    ldm_params_add(&l, &bias, &gb, "bias");
    if (sharded) ldm_dist_broadcast_weights(&l, 0);
    int64_t n = l.numel;
    float *m = calloc((size_t)n, sizeof(float)), *v = calloc((size_t)n, sizeof(float));
    float *ema_W = malloc((size_t)W.numel * sizeof(float)), *ema_b = malloc(N * sizeof(float));
    memcpy(ema_W, W.data, (size_t)W.numel * sizeof(float)), memcpy(ema_b, bias.data, N * sizeof(float));
    ldm_adamw_config c = {.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.01};
    float eps[B * N], wb[B];
    int rc = 0;
    for (int step = 0; step < steps && rc == 0; step++) {
        for (int64_t i = 0; i < x.numel; i++) x.data[i] = uniform(&s);   // the global batch
        for (int i = 0; i < B * N; i++) eps[i] = uniform(&s);
        for (int i = 0; i < B; i++) wb[i] = 0.6f + 0.4f * uniform(&s);
        ldm_params_zero_grad(&l);
        ldm_tensor xs = ldm_tensor_slice0(&x, b0, Bl);
        linear_loss_grad(&gW, &gb, &xs, &W, &bias, eps + b0 * N, wb + b0);
        if (sharded) rc = ldm_dist_allreduce_grads(&l);
        float *grads[2] = {gW.data, gb.data};
        int64_t sizes[2] = {W.numel, N};
        ldm_clip_grad_norm(grads, sizes, 2, 0.05);   // the norms here are 0.4-0.6: clipped
        double lr = ldm_lr_warmup(1e-2, step, 2);
        ldm_adamw_update(W.data, m, v, gW.data, W.numel, &c, lr, step + 1);
        ldm_adamw_update(bias.data, m + W.numel, v + W.numel, gb.data, N, &c, lr, step + 1);
        double decay = ldm_ema_decay(step + 1, 0.998);
        ldm_ema_update(ema_W, W.data, W.numel, decay);
        ldm_ema_update(ema_b, bias.data, N, decay);
    }
    concat(p, &W, &bias);
    memcpy(e, ema_W, (size_t)W.numel * sizeof(float)), memcpy(e + W.numel, ema_b, N * sizeof(float));
    free(m), free(v), free(ema_W), free(ema_b);
    ldm_params_free(&l);
    ldm_tensor_free(&W), ldm_tensor_free(&bias), ldm_tensor_free(&gW), ldm_tensor_free(&gb);
    ldm_tensor_free(&x);
    return rc;
}

static void test_train_steps(const char *backend) {
    const struct ldm_ops *ops = ldm_backend(backend);
    enum { steps = 3, n = 12 * 40 + 12 };
    static float p1[n], e1[n], p[n], e[n], p0[n];
    char name[160], why[256];
    int64_t b0, Bl;
    if (ldm_dist_shard(&b0, &Bl, 4) != 0) {
        printf("  skipped %d training steps: %s\n", steps, ldm_last_error());
        return;
    }
    train_linear(p1, e1, ops, steps, 0);
    int rc = train_linear(p, e, ops, steps, 1);
    double all[64], worst = 0;
    gather(all, fmax(rel_err(p, p1, n), rel_err(e, e1, n)));
    for (int r = 0; r < world; r++) worst = fmax(worst, all[r]);
    snprintf(name, sizeof name, "%s: weights and EMA after %d steps over %d ranks = one process",
             backend, steps, world);
    snprintf(why, sizeof why, "rc %d, max rel error %.3e", rc, worst);
    dist_check(rc == 0 && worst <= 1e-6, name, why);
    printf("          measured: max rel error %.3e (clipping, warm-up, AdamW, EMA)\n", worst);
    memcpy(p0, p, sizeof p0);
    ldm_dist_broadcast(p0, n, 0);
    snprintf(name, sizeof name, "%s: weights after %d steps have rank 0's bits on every rank",
             backend, steps);
    dist_check(!memcmp(p0, p, sizeof p0), name, "bits differ");
}

// `test_dist --compare A B TOL [PREFIX]` (tests/mpi.sh, one process): the
// tensors of the safetensors file B whose names start with PREFIX against
// those of A, as one vector: every one present with the same size, and
// ||A - B|| <= TOL ||B|| (2-norms over all of them). Not element by element:
// Adam divides each gradient by its running size plus eps = 1e-8, so an
// element whose gradient is near eps moves by a fraction of a learning rate
// that follows the gradient's rounding; a handful of such elements in a
// model differ by more than the rest (the max is printed). A real error (a
// missed all-reduce, a wrong slice, a wrong normalisation) moves most
// elements by a good part of a learning rate, and the norm by far more.
static int compare_files(const char *a, const char *b, double tol, const char *prefix) {
    ldm_tensor_file fa, fb;
    if (ldm_tensor_file_open(&fa, a) != 0 || ldm_tensor_file_open(&fb, b) != 0) {
        test_check(0, "compare", "%s", ldm_last_error());
        return test_summary();
    }
    double diff2 = 0, norm2 = 0, max_diff = 0, max_val = 0;
    const char *worst_name = "";
    int64_t missing = 0, n = 0;
    for (int64_t i = 0; i < fb.n_entries; i++) {
        const ldm_tensor_entry *eb = &fb.entries[i], *ea = ldm_tensor_file_find(&fa, eb->name);
        if (strncmp(eb->name, prefix, strlen(prefix)) != 0) continue;
        n++;
        if (!ea || ea->numel != eb->numel) { missing++; continue; }
        float *va = malloc((size_t)ea->numel * sizeof(float) + 1);
        float *vb = malloc((size_t)eb->numel * sizeof(float) + 1);
        if (va && vb && !ldm_entry_to_f32(va, ea) && !ldm_entry_to_f32(vb, eb)) {
            for (int64_t j = 0; j < eb->numel; j++) {
                double d = (double)va[j] - vb[j];
                diff2 += d * d, norm2 += (double)vb[j] * vb[j];
                if (fabs(d) > max_diff || isnan(d)) max_diff = fabs(d), worst_name = eb->name;
                max_val = fmax(max_val, fabs((double)vb[j]));
            }
        } else {
            missing++;
        }
        free(va), free(vb);
    }
    double rel = norm2 > 0 ? sqrt(diff2 / norm2) : sqrt(diff2);
    char name[256];
    snprintf(name, sizeof name, "%lld tensors %s* of %s = %s", (long long)n, prefix, b, a);
    test_check(missing == 0 && n > 0 && rel <= tol, name,
               "%lld missing or unreadable, ||A - B|| / ||B|| %.3e > %.0e", (long long)missing, rel,
               tol);
    printf("          measured: ||A - B|| / ||B|| %.3e; max |A - B| %.3e (in %s), max |B| %.3e\n",
           rel, max_diff, worst_name, max_val);
    ldm_tensor_file_close(&fa), ldm_tensor_file_close(&fb);
    return test_summary();
}

int main(int argc, char **argv) {
    if ((argc == 5 || argc == 6) && !strcmp(argv[1], "--compare"))
        return compare_files(argv[2], argv[3], atof(argv[4]), argc == 6 ? argv[5] : "");
    if (ldm_dist_init(&argc, &argv) != 0) {
        printf("  NOT OK  ldm_dist_init: %s\n0 passed, 1 failed\n", ldm_last_error());
        return 1;
    }
    rank = ldm_dist_rank(), world = ldm_dist_world();
    if (rank != 0 && !freopen("/dev/null", "w", stdout)) return 1;   // rank 0 reports
    printf("process group \"%s\": %d rank(s)\n", ldm_dist_backend(), world);
    if (world > 64) {
        printf("  NOT OK  this test gathers at most 64 ranks, not %d\n0 passed, 1 failed\n", world);
        ldm_dist_abort(1);
    }
    test_allreduce_mean();
    test_sum_and_broadcast();
    test_params(ldm_backend("cpu"));
    test_data_parallel("ref");
    test_data_parallel("cpu");
    test_train_steps("ref");
    test_train_steps("cpu");
    int rc = test_summary();
    ldm_dist_finalize();
    return rank == 0 ? rc : 0;
}
