/*
 * ldm/train/optim.c -- AdamW, gradient clipping, warm-up and EMA (equations in
 * ldm/train/optim.h). Each element is updated in double and stored as float:
 * torch updates float32 tensors in float32, so the two agree to about one
 * float rounding per operation (tests/test_backward.c checks 1e-6).
 */
#include <math.h>
#include "ldm/train/optim.h"

void ldm_adamw_update(float *p, float *m, float *v, const float *g, int64_t n,
                      const ldm_adamw_config *c, double lr, int64_t t) {
    double decay = 1.0 - lr * c->weight_decay;        // decoupled weight decay
    double bc1 = 1.0 - pow(c->beta1, (double)t);       // bias corrections
    double bc2_sqrt = sqrt(1.0 - pow(c->beta2, (double)t));
    double step_size = lr / bc1;
    for (int64_t i = 0; i < n; i++) {
        double gi = g[i];
        double mi = c->beta1 * m[i] + (1.0 - c->beta1) * gi;       // first moment
        double vi = c->beta2 * v[i] + (1.0 - c->beta2) * gi * gi;  // second moment
        m[i] = (float)mi;
        v[i] = (float)vi;
        double pi = p[i] * decay;
        double denom = sqrt((double)v[i]) / bc2_sqrt + c->eps;
        p[i] = (float)(pi - step_size * (double)m[i] / denom);
    }
}

double ldm_clip_grad_norm(float *const *grads, const int64_t *n, int count, double max_norm) {
    double sum = 0;
    for (int k = 0; k < count; k++)
        for (int64_t i = 0; i < n[k]; i++) sum += (double)grads[k][i] * grads[k][i];
    double norm = sqrt(sum);
    double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0)
        for (int k = 0; k < count; k++)
            for (int64_t i = 0; i < n[k]; i++) grads[k][i] = (float)(grads[k][i] * coef);
    return norm;
}

double ldm_lr_warmup(double lr, int64_t step, int64_t warmup) {
    double f = warmup > 0 ? (double)(step + 1) / (double)warmup : 1.0;
    return lr * (f < 1.0 ? f : 1.0);
}

double ldm_ema_decay(int64_t step, double max_decay) {
    double d = (1.0 + (double)step) / (10.0 + (double)step);
    return d < max_decay ? d : max_decay;
}

void ldm_ema_update(float *e, const float *p, int64_t n, double decay) {
    for (int64_t i = 0; i < n; i++) e[i] = (float)(decay * e[i] + (1.0 - decay) * p[i]);
}
