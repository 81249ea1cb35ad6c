/*
 * samplers/unipc.c -- UniPC, the unified predictor-corrector of Zhao et al.
 * 2023 ("UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
 * of Diffusion Models"), data-prediction form (the paper's x_0 model,
 * diffusers' predict_x0 = True), order 2 (diffusers' solver_order default).
 *
 * In lambda = log(alpha/s) (alpha = sqrt(abar), s = sqrt(1 - abar); the
 * k-diffusion sigma is s/alpha, so lambda = -log sigma), with m_i the x_0
 * prediction at level i, h = lambda_next - lambda_i and
 *   phi_1 = expm1(-h),  B(h) = -h ("bh1") or expm1(-h) ("bh2", eq. 8 / sec. 3.3):
 *
 * UniP-p, the predictor (the paper's Algorithm 2 with p = 1 or 2), from x_i to x_next:
 *   x_next = (s_next/s_i) x_i - alpha_next phi_1 m_i - alpha_next B(h) a_1 D_1
 *   D_1 = (m_{i-1} - m_i)/r_1,  r_1 = (lambda_{i-1} - lambda_i)/h,  a_1 = 1/2
 *   (p = 1: no D_1 term, the first step and the last one)
 * UniC-p, the corrector (Algorithm 1), run when the model has been evaluated
 * at the predicted x_next, reusing that evaluation m_next:
 *   x_next^c = (s_next/s_i) x_i - alpha_next phi_1 m_i
 *              - alpha_next B(h) (sum_k c_k D_k + c_p (m_next - m_i))
 *   p = 1: c_1 = 1/2;  p = 2: [1 1; r_1 1] (c_1, c_2) = (g_1, g_2),
 *   g_k = k! phi_{k+1}(h)/B(h), phi_2 = phi_1/(-h) - 1, phi_3 = phi_2/(-h) - 1/2
 * The corrector's order is the previous predictor's; the corrected x_next is
 * the start of the next predictor step. The model sees the uncorrected
 * x_next, so one model evaluation a step: n for n steps.
 * The last step goes to sigma = 0 with p = 1, which is x = m_i (the limit of
 * the formula; diffusers' bh1 returns NaN there: B(h) = -inf times 0).
 *
 * Mirrors diffusers UniPCMultistepScheduler (solver_order 2, predict_x0,
 * lower_order_final, final_sigmas_type "zero") on the timesteps it is given:
 * with "trailing" spacing those are diffusers' own. The callback receives the
 * predictor's x_next, diffusers' prev_sample. (Its "leading" and "linspace"
 * spacings for the multistep schedulers differ from DDIM's, which we use.)
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "sampler.h"

// One noise level: alpha = sqrt(abar), s = sqrt(1 - abar), lambda = log(alpha/s),
// from the float32 sigma = sqrt((1 - abar)/abar) as diffusers computes it.
typedef struct { double alpha, s, lambda; } level;

static level level_of(double abar) {
    if (abar >= 1) return (level){1, 0, INFINITY};  // sigma = 0: the end
    float sigma = (float)sqrt((1 - abar) / abar);
    double alpha = 1 / sqrt((double)sigma * sigma + 1);
    return (level){alpha, sigma * alpha, -log(sigma)};
}

// x_next [n] <- (s_next/s_i) x_i - alpha_next phi_1 m_i - alpha_next B(h) res, the
// shared form of UniP and UniC (res: the weighted differences, NULL for none).
static void unipc_update(float *x_next, const float *x_i, const float *m_i, const float *res,
                         level li, level ln, double B_h, int64_t n) {
    double h = ln.lambda - li.lambda;
    double phi_1 = expm1(-h);
    double cx = ln.s / li.s, cm = -ln.alpha * phi_1, cr = -ln.alpha * B_h;
    for (int64_t k = 0; k < n; k++) {
        double v = cx * x_i[k] + cm * m_i[k];
        if (res) v += cr * res[k];
        x_next[k] = (float)v;
    }
}

// B(h) of the variant (h = lambda_next - lambda_i > 0; in the data-prediction
// form the paper's h enters as -h)
static double b_of_h(int bh2, double h) { return bh2 ? expm1(-h) : -h; }

static int unipc(float *x, ldm_sampler_ctx *c, int bh2) {
    int64_t n = c->dn->B * c->dn->per;
    float *buf = ldm_sampler_alloc(c, 5);
    if (!buf) return LDM_ERR;
    float *eps = buf, *m = buf + n, *m_1 = buf + 2 * n, *m_2 = buf + 3 * n,  // m_i, m_{i-1}, m_{i-2}
          *res = buf + 4 * n;
    float *x_last = malloc((size_t)n * sizeof(float));  // x_i the last predictor started from
    if (!x_last) { free(buf); return ldm_error("unipc: out of memory"); }
    const float *abar = c->dn->sched->alphas_cumprod;
    level lv[3] = {{0}};          // levels i-2, i-1, i (the current one last)
    int p_last = 0;               // order of the last predictor step (0: none yet)
    int rc = LDM_OK;
    for (int i = 0; i < c->n; i++) {
        int t = c->timesteps[i];
        lv[0] = lv[1]; lv[1] = lv[2]; lv[2] = level_of(abar[t]);
        level li = lv[2];
        level ln = i + 1 < c->n ? level_of(abar[c->timesteps[i + 1]]) : level_of(1.0);
        if ((rc = ldm_denoiser_eps(c->dn, eps, x, (float)t)) != LDM_OK) break;
        float *tmp = m_2;              // history: m_2 <- m_1 <- m <- the new x_0
        m_2 = m_1; m_1 = m; m = tmp;
        for (int64_t k = 0; k < n; k++) m[k] = (float)((x[k] - li.s * eps[k]) / li.alpha);
        if (p_last > 0) {              // UniC: correct x (at level i) from x_last (level i-1)
            level lp = lv[1];
            double h = li.lambda - lp.lambda, B_h = b_of_h(bh2, h);
            if (p_last == 1) {
                for (int64_t k = 0; k < n; k++) res[k] = 0.5f * (m[k] - m_1[k]);
            } else {
                double r1 = (lv[0].lambda - lp.lambda) / h;
                double phi_2 = expm1(-h) / -h - 1, phi_3 = phi_2 / -h - 0.5;
                double g1 = phi_2 / B_h, g2 = 2 * phi_3 / B_h;
                double c1 = (g1 - g2) / (1 - r1), c2 = g1 - c1;   // [1 1; r1 1] c = g
                for (int64_t k = 0; k < n; k++)
                    res[k] = (float)(c1 * (m_2[k] - m_1[k]) / r1 + c2 * (m[k] - m_1[k]));
            }
            unipc_update(x, x_last, m_1, res, lp, li, B_h, n);
        }
        // UniP: order 2 once a previous m exists, 1 on the first and the last step
        int p = (i == 0 || i + 1 == c->n) ? 1 : 2;
        memcpy(x_last, x, (size_t)n * sizeof(float));
        if (p == 1) {
            unipc_update(x, x_last, m, NULL, li, ln, 0, n);
        } else {
            double h = ln.lambda - li.lambda, r1 = (lv[1].lambda - li.lambda) / h;
            for (int64_t k = 0; k < n; k++) res[k] = (float)(0.5 * (m_1[k] - m[k]) / r1);
            unipc_update(x, x_last, m, res, li, ln, b_of_h(bh2, h), n);
        }
        p_last = p;
        if (c->callback) c->callback(c->callback_ctx, i, x, m);
    }
    free(buf);
    free(x_last);
    return rc;
}

int ldm_sample_unipc(float *x, ldm_sampler_ctx *c) { return unipc(x, c, 1); }
int ldm_sample_unipc_bh1(float *x, ldm_sampler_ctx *c) { return unipc(x, c, 0); }
