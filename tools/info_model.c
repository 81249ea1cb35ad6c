/*
 * tools/info_model.c -- the model part of `sd info`: for a Stable Diffusion
 * checkpoint (single file) or a diffusers folder, print what was detected:
 * family (SD1/SD2), prediction type and why, layout, and per component the
 * parameter count, dtypes and configuration (ldm/model.c does the work).
 */
#include <stdio.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/model.h"
#include "ldm/backend/ops.h"
#include "tools/cmd.h"

int sd_info_model(const char *path, int required) {
    ldm_model m;
    ldm_model_options opt = {ldm_backend("ref"), LDM_PRED_AUTO, NULL};
    if (ldm_model_open(&m, path, &opt) != 0) {
        if (required) return sd_fail("%s", ldm_last_error());
        printf("\nmodel: not loadable as a Stable Diffusion model: %s\n", ldm_last_error());
        return 0;
    }
    if (!required) printf("\n");   // after the tensor list; a folder's summary comes first
    ldm_model_print_summary(&m, stdout);
    ldm_model_close(&m);
    return 0;
}
