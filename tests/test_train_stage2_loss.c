/*
 * tests/test_train_stage2_loss.c -- the stage-2 objective of ldm/train/loss.h
 * (LDM eq. 2 with the min-SNR weights) against tools/train/train_tiny.py's
 * torch code (fixtures: tools/reference/fixtures_train_stage2_loss.py):
 *   - ldm_min_snr_weights on diffusers' scaled-linear alphas_cumprod, gamma 5
 *     (the recipe) and 1, within 1e-6 relative of torch's float32 weights;
 *     gamma <= 0 gives all ones (the plain LDM objective)
 *   - ldm_loss_eps with the weights w(t_b): the loss and the unweighted MSE
 *     within 1e-6, dL/dpred within 1e-6 of max |dL/dpred| of float64
 *     autograd, and a second call adds to dpred (gradient accumulation)
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "tests/test.h"
#include "ldm/train/loss.h"

#define FIX "tests/fixtures/train/stage2_loss/"
#define RTOL 1e-6

int main(void) {
    int64_t nT, nw5, nw1, np, ne, nt, nl, nm, nd;
    float *abar = test_load_npy(FIX "abar.npy", &nT);
    float *w5 = test_load_npy(FIX "w_g5.npy", &nw5), *w1 = test_load_npy(FIX "w_g1.npy", &nw1);
    float *pred = test_load_npy(FIX "pred.npy", &np), *eps = test_load_npy(FIX "eps.npy", &ne);
    float *tf = test_load_npy(FIX "t.npy", &nt), *loss_ref = test_load_npy(FIX "loss.npy", &nl);
    float *mse_ref = test_load_npy(FIX "mse.npy", &nm), *dref = test_load_npy(FIX "dpred.npy", &nd);
    if (!abar || !w5 || !w1 || !pred || !eps || !tf || !loss_ref || !mse_ref || !dref)
        return test_summary();
    int T = (int)nT;

    // --- the min-SNR weights w(t) = min(SNR(t), gamma) / SNR(t)
    float *w = malloc((size_t)T * sizeof *w);
    for (int t = 0; t < T; t++) w[t] = NAN;   // every weight must be written
    ldm_min_snr_weights(w, abar, T, 5.0);
    test_close("min-SNR weights, gamma 5 (train_tiny.py's)", w, w5, T, RTOL, 0);
    for (int t = 0; t < T; t++) w[t] = NAN;
    ldm_min_snr_weights(w, abar, T, 1.0);
    test_close("min-SNR weights, gamma 1", w, w1, T, RTOL, 0);
    int ones = 1;
    for (double g = 0; g >= -1; g -= 1) {
        for (int t = 0; t < T; t++) w[t] = -7;
        ldm_min_snr_weights(w, abar, T, g);
        for (int t = 0; t < T; t++) ones &= w[t] == 1.0f;
    }
    test_check(ones, "min-SNR weights, gamma <= 0: all 1 (plain LDM eq. 2)", "a weight is not 1");

    // --- the weighted loss and its gradient, batch of B samples of n values each
    int64_t B = nt, n = np / nt;
    float *wb = malloc((size_t)B * sizeof *wb);
    for (int64_t b = 0; b < B; b++) wb[b] = w5[(int)tf[b]];
    float *dpred = calloc((size_t)np, sizeof *dpred);
    double mse = 0;
    double loss = ldm_loss_eps(dpred, &mse, pred, eps, wb, B, n);
    test_check(fabs(loss - loss_ref[0]) <= RTOL * fabs(loss_ref[0]),
               "loss = mean_b w(t_b) mean_i (pred - eps)^2", "%.9g, torch %.9g", loss,
               loss_ref[0]);
    test_check(fabs(mse - mse_ref[0]) <= RTOL * fabs(mse_ref[0]), "unweighted mse",
               "%.9g, torch %.9g", mse, mse_ref[0]);
    test_close("dL/dpred vs float64 autograd", dpred, dref, np, RTOL, 0);
    ldm_loss_eps(dpred, NULL, pred, eps, wb, B, n);
    for (int64_t i = 0; i < np; i++) dpred[i] *= 0.5f;
    test_close("a second call adds to dpred", dpred, dref, np, RTOL, 0);
    double plain = ldm_loss_eps(NULL, NULL, pred, eps, NULL, B, n);
    test_check(fabs(plain - mse_ref[0]) <= RTOL * fabs(mse_ref[0]),
               "no weights: the loss is the mse", "%.9g, mse %.9g", plain, mse_ref[0]);

    free(abar); free(w5); free(w1); free(pred); free(eps); free(tf); free(loss_ref);
    free(mse_ref); free(dref); free(w); free(wb); free(dpred);
    return test_summary();
}
