/*
 * tools/cmd_check_model.c -- `sd check-model MODEL`: open a checkpoint or a
 * diffusers folder, print what was detected, then load every weight of the
 * UNet, the VAE (encoder and decoder) and the text encoder exactly as
 * generation does (fp32 on the chosen backend), reporting the time of each
 * step and the peak resident memory. A missing tensor or a wrong shape is
 * reported with its name; nothing is generated.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include "ldm/clip.h"
#include "ldm/core/error.h"
#include "ldm/model.h"
#include "ldm/backend/ops.h"
#include "ldm/unet.h"
#include "ldm/vae.h"
#include "tools/cmd.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double peak_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0;  // Linux: KiB
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: sd check-model MODEL [--config DIR] [--prediction eps|v] [--backend NAME]\n\n"
            "Detect and fully load a model (single-file .safetensors/.ckpt or diffusers folder):\n"
            "family, prediction type, parameters per component, then every weight of the\n"
            "UNet, VAE and text encoder, with load times and peak resident memory.\n\n"
            "  --config DIR        diffusers-style folder with configs for a single file of\n"
            "                      non-standard size\n"
            "  --prediction eps|v  override the detected prediction type\n");
}

int cmd_check_model(int argc, char **argv, const sd_env *defaults) {
    sd_env env = *defaults;
    const char *path = NULL, *config = NULL;
    ldm_prediction pred = LDM_PRED_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        int c = sd_common_flag(argc, argv, &i, &env);
        if (c < 0) return 2;
        if (c > 0) continue;
        if (!strcmp(a, "--config") || !strcmp(a, "--prediction")) {
            if (i + 1 >= argc) { sd_fail("%s needs a value", a); return 2; }
            const char *v = argv[++i];
            if (!strcmp(a, "--config")) config = v;
            else if (!strcmp(v, "eps") || !strcmp(v, "epsilon")) pred = LDM_PRED_EPS;
            else if (!strcmp(v, "v") || !strcmp(v, "v_prediction")) pred = LDM_PRED_V;
            else { sd_fail("--prediction: expected eps or v, got '%s'", v); return 2; }
        } else if (a[0] == '-' && a[1] == '-') {
            sd_fail("check-model: unknown flag '%s' (sd check-model --help)", a);
            return 2;
        } else if (!path) {
            path = a;
        } else {
            sd_fail("check-model: one MODEL expected");
            return 2;
        }
    }
    if (!path) { usage(stderr); return 2; }
    const struct ldm_ops *ops = sd_backend(&env);
    if (!ops) return sd_fail("%s", ldm_last_error());
    double t0 = now();
    ldm_model m;
    ldm_model_options opt = {ops, pred, config};
    if (ldm_model_open(&m, path, &opt) != 0) return sd_fail("%s", ldm_last_error());
    double t_open = now() - t0;
    ldm_model_print_summary(&m, stdout);
    printf("open+parse  %.3f s (files mapped, nothing converted yet), peak RSS %.0f MiB\n", t_open,
           peak_rss_mib());
    int rc = 0;
    if (m.has_text) {
        double t = now();
        ldm_clip clip;
        if (ldm_clip_load(&clip, &m.clip_w, &m.clip) != 0) rc = sd_fail("%s", ldm_last_error());
        else {
            printf("load text   %.3f s, %d layers, peak RSS %.0f MiB\n", now() - t, clip.n_layers,
                   peak_rss_mib());
            ldm_clip_free(&clip);
        }
    }
    if (m.has_vae && !rc) {
        double t = now();
        ldm_vae vae;
        if (ldm_vae_load(&vae, &m.vae, &m.vae_w, LDM_VAE_ENCODER | LDM_VAE_DECODER) != 0)
            rc = sd_fail("%s", ldm_last_error());
        else {
            printf("load vae    %.3f s, %.2fM parameters, peak RSS %.0f MiB\n", now() - t,
                   vae.n_params / 1e6, peak_rss_mib());
            ldm_vae_free(&vae);
        }
    }
    if (m.has_unet && !rc) {
        double t = now();
        ldm_unet unet;
        if (ldm_unet_load(&unet, &m.unet, &m.unet_w) != 0) rc = sd_fail("%s", ldm_last_error());
        else {
            printf("load unet   %.3f s, %.2fM parameters, peak RSS %.0f MiB\n", now() - t,
                   unet.n_params / 1e6, peak_rss_mib());
            ldm_unet_free(&unet);
        }
    }
    if (!rc) printf("ok: every weight loaded in %.3f s total, peak RSS %.0f MiB\n", now() - t0,
                    peak_rss_mib());
    ldm_model_close(&m);
    return rc;
}
