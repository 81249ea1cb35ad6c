/*
 * ldm/train/optim.h -- the optimizer side of training: AdamW, gradient
 * clipping by global norm, the learning-rate warm-up and the EMA of the
 * weights, as tools/train/train_tiny.py trains the tiny model with PyTorch.
 * Plain host loops over fp32 arrays (parameters, gradients and optimizer
 * state of the `ref` / `cpu` backends are host memory).
 *
 * AdamW -- Loshchilov & Hutter, "Decoupled Weight Decay Regularization"
 * (ICLR 2019), Algorithm 2, in torch.optim.AdamW's exact formulation. Step
 * t = 1, 2, ... with gradient g, learning rate lr, weight decay wd:
 *     p   <- p * (1 - lr * wd)                 decoupled weight decay (line 12:
 *                                               not added to g, so not rescaled by Adam)
 *     m   <- beta1 m + (1 - beta1) g           first moment  (Kingma & Ba 2015, Alg. 1)
 *     v   <- beta2 v + (1 - beta2) g^2         second moment
 *     p   <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * The bias corrections 1 - beta^t undo the zero start of m and v (Kingma & Ba
 * sec. 3); eps is added after the correction of sqrt(v), as torch does.
 * torch.optim.Adam (the VAE stage) is the same update with wd = 0.
 *
 * Gradient clipping -- torch.nn.utils.clip_grad_norm_(params, max_norm):
 *     total = sqrt(sum over every gradient element g^2)   (one norm over all tensors)
 *     g    <- g * min(1, max_norm / (total + 1e-6))
 *
 * Warm-up -- lr_t = lr * min(1, (step + 1) / warmup), step = 0, 1, ... the
 * optimizer steps taken before this one (train_tiny.py's lr_at; constant after).
 *
 * EMA of the weights -- after optimizer step number `step` (1, 2, ...):
 *     decay = min(max_decay, (1 + step) / (10 + step))
 *     e     <- decay e + (1 - decay) p
 * (train_tiny.py; diffusers' EMAModel without warm-up uses the same
 * (1 + step) / (10 + step) ramp, so early averages do not drag the initial
 * random weights along.) train_tiny.py: max_decay 0.998.
 *
 * The recipe of tools/train/train_tiny.py, stage 2: AdamW lr 1e-3, betas
 * (0.9, 0.99), eps 1e-8, weight decay 0, warm-up 200 steps, clipping at 1.0,
 * EMA 0.998; stage 1 (VAE): Adam lr 1e-3, betas (0.9, 0.99), warm-up 50,
 * clipping at 1.0, no EMA.
 */
#ifndef LDM_TRAIN_OPTIM_H
#define LDM_TRAIN_OPTIM_H

#include <stdint.h>

typedef struct ldm_adamw_config {
    double beta1, beta2;   // moment decays (torch default 0.9, 0.999; the recipe 0.9, 0.99)
    double eps;            // 1e-8
    double weight_decay;   // decoupled, multiplied by lr (torch.optim.AdamW default 0.01)
} ldm_adamw_config;

// One AdamW step t (t >= 1: the steps taken so far, this one included) on n
// parameters: p, m, v updated in place from the gradient g at learning rate lr.
// m and v start at zero (step 1).
void ldm_adamw_update(float *p, float *m, float *v, const float *g, int64_t n,
                      const ldm_adamw_config *c, double lr, int64_t t);

// Global L2 norm over `count` gradient arrays (grads[i] with n[i] floats),
// then every gradient scaled by min(1, max_norm / (norm + 1e-6)).
// Returns the norm before clipping (what torch returns).
double ldm_clip_grad_norm(float *const *grads, const int64_t *n, int count, double max_norm);

// lr * min(1, (step + 1) / warmup), step = optimizer steps taken so far (0 first)
double ldm_lr_warmup(double lr, int64_t step, int64_t warmup);

// EMA decay after optimizer step `step` (1 first): min(max_decay, (1+step)/(10+step))
double ldm_ema_decay(int64_t step, double max_decay);
// e <- decay e + (1 - decay) p, n floats
void ldm_ema_update(float *e, const float *p, int64_t n, double decay);

#endif
