/*
 * ldm/train/checkpoint.h -- the whole state of a training run, saved so that a
 * run stopped after step k and resumed equals, bit for bit, one run that never
 * stopped (same build, same machine, same settings).
 *
 * What a step depends on, so what is saved:
 *   the parameters                      (fp32, exactly)
 *   AdamW's moments m, v                (fp32; the step count t = step)
 *   the EMA of the parameters (stage 2)
 *   the data generator                  (every random draw of a step comes from it)
 *   the step number and the loss history (logs and the curves)
 *   the settings of the run             (a resume with other settings is refused)
 * The learning rate is a function of the step (warm-up, then constant), so
 * there is no scheduler state.
 *
 * On disk, in a folder (sd train: --out/train-state/):
 *   state.json                 {"format", "stage", "step", "weights": FILE,
 *                               "settings": {...}, "rng": "<hex bytes>", ...}
 *   state-<step>.safetensors   "param/<name>", "adam_m/<name>", "adam_v/<name>",
 *                              ["ema/<name>"], ["losses" [step, n_loss]]
 * A save writes the new safetensors file (temporary name + rename), then
 * replaces state.json (temporary + rename), then deletes the previous
 * safetensors file: whenever the process dies, state.json names a complete
 * file of its own step.
 */
#ifndef LDM_TRAIN_CHECKPOINT_H
#define LDM_TRAIN_CHECKPOINT_H

#include <stdint.h>
#include "ldm/train/params.h"
#include "samplers/rng.h"

#define LDM_TRAIN_MAX_LOSSES 4

typedef struct ldm_train_state {
    char stage[8];            // "vae" | "unet"
    int64_t step;             // optimizer steps taken
    ldm_rng rng;              // the data generator after `step` steps
    float *m, *v;             // AdamW moments, params->numel floats each, in list order
    float *ema;               // EMA of the parameters (same layout), or NULL (no EMA)
    int n_loss;               // logged loss terms per step (<= LDM_TRAIN_MAX_LOSSES)
    float *losses;            // [step, n_loss], cap_losses rows allocated
    int64_t cap_losses;
    char *settings;           // JSON object text of the run's settings (malloc'ed)
} ldm_train_state;

// Allocate m, v (zero), ema (a copy of the weights) when with_ema, for the
// parameters p. 0 / LDM_ERR.
int ldm_train_state_init(ldm_train_state *s, const ldm_params *p, const char *stage,
                         int with_ema, int n_loss);
void ldm_train_state_free(ldm_train_state *s);
// Append one step's loss terms (n_loss floats). 0 / LDM_ERR.
int ldm_train_state_log(ldm_train_state *s, const float *terms);

// Save to folder dir (created if absent). 0 / LDM_ERR.
int ldm_checkpoint_save(const char *dir, const ldm_params *p, const ldm_train_state *s);
// Load from dir into the parameters' weights and s (initialised by
// ldm_train_state_init for the same parameters). The stage, every parameter
// name and shape, and the settings must match: a mismatch is an error naming
// it. 0 / LDM_ERR.
int ldm_checkpoint_load(const char *dir, const ldm_params *p, ldm_train_state *s);
// 1 when dir holds a state.json.
int ldm_checkpoint_exists(const char *dir);

#endif
