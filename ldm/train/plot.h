/*
 * ldm/train/plot.h -- loss curves as a PNG (the loss_curves.png of a trained
 * model folder), drawn in C: one panel per training stage side by side, each
 * with its curves smoothed by a trailing moving average of 25 steps (as
 * tools/train/train_tiny.py plots them) on a log-scale y axis.
 *
 * A panel is 480 x 320 pixels: its title above a frame, y ticks at 1, 2, 5 x
 * 10^e labelled "2E-3", the number of steps under the x axis, curves in the
 * matplotlib colours (blue, orange, green, red) with a legend of their names
 * at the top right. Text is a 3x5 bitmap font of digits and capitals,
 * doubled; the titles and the legend also go into the PNG's text chunks
 * ("Title", "Description").
 */
#ifndef LDM_TRAIN_PLOT_H
#define LDM_TRAIN_PLOT_H

#include <stdint.h>

#define LDM_PLOT_MAX_CURVES 4

typedef struct ldm_plot_curve {
    const char *name;        // legend, e.g. "eps MSE"
    const float *y;          // [n] one value per step; y[i] belongs to step i + 1
    int64_t n;
} ldm_plot_curve;

typedef struct ldm_plot_panel {
    const char *title;       // e.g. "stage 2: UNet (noise prediction)"
    ldm_plot_curve curves[LDM_PLOT_MAX_CURVES];
    int n_curves;
} ldm_plot_panel;

// Trailing moving average: out[i] = mean(y[max(0, i-k+1) .. i]).
void ldm_plot_smooth(double *out, const float *y, int64_t n, int k);

// Draw the panels side by side into an RGB image [H][n_panels*W][3]
// (malloc'ed into *rgb; free()). 0 / LDM_ERR.
int ldm_plot_render(uint8_t **rgb, int *width, int *height, const ldm_plot_panel *panels,
                    int n_panels);

// Render and write a PNG (replaces an existing file). 0 / LDM_ERR.
int ldm_plot_loss_png(const char *path, const ldm_plot_panel *panels, int n_panels);

#endif
