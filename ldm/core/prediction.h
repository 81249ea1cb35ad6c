/*
 * ldm/core/prediction.h -- what the denoiser network predicts. Shared by the model
 * loader (ldm/model.h, which detects it) and the samplers (samplers/sampler.h,
 * which convert it): epsilon (SD1, SD2-base) or v (SD2 768-v, Salimans & Ho
 * 2022: v = sqrt(abar) eps - sqrt(1-abar) x0).
 */
#ifndef LDM_PREDICTION_H
#define LDM_PREDICTION_H

typedef enum ldm_prediction {
    LDM_PRED_AUTO = -1,  // loader only: decide from the checkpoint
    LDM_PRED_EPS = 0,
    LDM_PRED_V = 1,
} ldm_prediction;

#endif
