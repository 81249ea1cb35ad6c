/*
 * ldm/train/plot.c -- loss curves as a PNG (ldm/train/plot.h): a canvas of
 * RGB pixels, lines by Bresenham's algorithm, text in a 3x5 bitmap font.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/image.h"
#include "ldm/train/plot.h"

enum { PW = 480, PH = 320, M = 40 };   // panel width, height, margin

static const uint8_t colours[LDM_PLOT_MAX_CURVES][3] = {
    {31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}};

typedef struct canvas {
    uint8_t *rgb;
    int w, h;
} canvas;

static void pixel(canvas *c, int x, int y, const uint8_t *col) {
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    memcpy(c->rgb + ((size_t)y * c->w + x) * 3, col, 3);
}

// Bresenham's line from (x0,y0) to (x1,y1), `thick` pixels wide (square pen).
static void line(canvas *c, int x0, int y0, int x1, int y1, const uint8_t *col, int thick) {
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    for (;;) {
        for (int a = 0; a < thick; a++)
            for (int b = 0; b < thick; b++) pixel(c, x0 + a, y0 + b, col);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * err;
        if (e2 >= dy) err += dy, x0 += sx;
        if (e2 <= dx) err += dx, y0 += sy;
    }
}

// 3x5 glyphs, one row per 3 bits (left = 4), top row first: digits, capitals
// and a little punctuation (lower case is drawn as capitals).
static const char font_chars[] = "0123456789.-ABCDEFGHIJKLMNOPQRSTUVWXYZ :()/+_";
static const uint8_t font[][5] = {
    {7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7}, {5, 5, 7, 1, 1},
    {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1}, {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7},
    {0, 0, 0, 0, 2}, {0, 0, 7, 0, 0},
    {2, 5, 7, 5, 5}, {6, 5, 6, 5, 6}, {3, 4, 4, 4, 3}, {6, 5, 5, 5, 6}, {7, 4, 6, 4, 7},   // A-E
    {7, 4, 6, 4, 4}, {3, 4, 5, 5, 3}, {5, 5, 7, 5, 5}, {7, 2, 2, 2, 7}, {1, 1, 1, 5, 2},   // F-J
    {5, 5, 6, 5, 5}, {4, 4, 4, 4, 7}, {5, 7, 7, 5, 5}, {6, 5, 5, 5, 5}, {2, 5, 5, 5, 2},   // K-O
    {6, 5, 6, 4, 4}, {2, 5, 5, 6, 3}, {6, 5, 6, 5, 5}, {3, 4, 2, 1, 6}, {7, 2, 2, 2, 2},   // P-T
    {5, 5, 5, 5, 7}, {5, 5, 5, 5, 2}, {5, 5, 7, 7, 5}, {5, 5, 2, 5, 5}, {5, 5, 2, 2, 2},   // U-Y
    {7, 1, 2, 4, 7},                                                                       // Z
    {0, 0, 0, 0, 0}, {0, 2, 0, 2, 0}, {1, 2, 2, 2, 1}, {4, 2, 2, 2, 4}, {1, 1, 2, 4, 4},   // space : ( ) /
    {0, 2, 7, 2, 0}, {0, 0, 0, 0, 7}};                                                     // + _

// Text at (x, y) = its top-left corner, glyphs doubled (8 pixels a character,
// 10 high); characters outside the font are skipped.
static void text(canvas *c, int x, int y, const char *s, const uint8_t *col) {
    for (; *s; s++, x += 8) {
        char ch = *s >= 'a' && *s <= 'z' ? (char)(*s - 'a' + 'A') : *s;
        const char *k = strchr(font_chars, ch);
        if (!k || !ch) continue;
        const uint8_t *g = font[k - font_chars];
        for (int r = 0; r < 5; r++)
            for (int b = 0; b < 3; b++)
                if (g[r] & (4 >> b))
                    for (int a = 0; a < 4; a++) pixel(c, x + 2 * b + a % 2, y + 2 * r + a / 2, col);
    }
}

void ldm_plot_smooth(double *out, const float *y, int64_t n, int k) {
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        sum += y[i];
        if (i >= k) sum -= y[i - k];
        out[i] = sum / (double)(i < k ? i + 1 : k);
    }
}

static void draw_panel(canvas *c, int ox, const ldm_plot_panel *p) {
    static const uint8_t black[3] = {0, 0, 0};
    double *s[LDM_PLOT_MAX_CURVES] = {0};
    double lo = INFINITY, hi = -INFINITY;
    int64_t xmax = 1;
    for (int j = 0; j < p->n_curves; j++) {
        const ldm_plot_curve *cu = &p->curves[j];
        s[j] = malloc((size_t)(cu->n ? cu->n : 1) * sizeof(double));
        if (!s[j]) continue;
        ldm_plot_smooth(s[j], cu->y, cu->n, 25);
        for (int64_t i = 0; i < cu->n; i++) {
            s[j][i] = log10(fmax(s[j][i], 1e-8));   // log scale
            if (isfinite(s[j][i])) lo = fmin(lo, s[j][i]), hi = fmax(hi, s[j][i]);
        }
        if (cu->n > xmax) xmax = cu->n;
    }
    if (!(lo <= hi)) lo = -1, hi = 0;
    if (hi - lo < 1e-3) lo -= 0.5, hi += 0.5;
    // frame, y ticks at 1, 2, 5 x 10^e, the step count under the x axis
    int x0 = ox + M, x1 = ox + PW - 10, y0 = M, y1 = PH - M;
    line(c, x0, y0, x1, y0, black, 1), line(c, x0, y1, x1, y1, black, 1);
    line(c, x0, y0, x0, y1, black, 1), line(c, x1, y0, x1, y1, black, 1);
    if (p->title) text(c, x0, 14, p->title, black);
    for (int e = (int)floor(lo); e <= (int)ceil(hi); e++)
        for (int m = 1; m <= 5; m += m == 1 ? 1 : 3) {   // 1, 2, 5
            double v = log10((double)m) + e;
            if (v < lo || v > hi) continue;
            int yy = y1 - (int)lround((v - lo) / (hi - lo) * (y1 - y0));
            line(c, x0 - 4, yy, x0, yy, black, 1);
            char label[16];
            snprintf(label, sizeof label, "%dE%d", m, e);
            text(c, ox + 2, yy - 5, label, black);
        }
    char steps[24];
    snprintf(steps, sizeof steps, "%lld", (long long)xmax);
    text(c, x1 - 8 * (int)strlen(steps), y1 + 8, steps, black);
    for (int j = 0; j < p->n_curves; j++) {
        if (!s[j]) continue;
        int px = 0, py = 0;
        for (int64_t i = 0; i < p->curves[j].n; i++) {
            int xx = x0 + (int)lround((double)(i + 1) / xmax * (x1 - x0));
            int yy = y1 - (int)lround((s[j][i] - lo) / (hi - lo) * (y1 - y0));
            if (i > 0) line(c, px, py, xx, yy, colours[j], 2);
            px = xx, py = yy;
        }
        // legend at the top right, one row per curve: its name, then a swatch
        int ly = y0 + 8 + 14 * j;
        for (int a = 0; a < 12; a++) line(c, x1 - 30, ly + a / 4, x1 - 10, ly + a / 4, colours[j], 1);
        const char *name = p->curves[j].name ? p->curves[j].name : "";
        text(c, x1 - 36 - 8 * (int)strlen(name), ly - 3, name, black);
        free(s[j]);
    }
}

int ldm_plot_render(uint8_t **rgb, int *width, int *height, const ldm_plot_panel *panels,
                    int n_panels) {
    if (n_panels < 1) return ldm_error("loss curves: no panel to draw");
    canvas c = {malloc((size_t)n_panels * PW * PH * 3), n_panels * PW, PH};
    if (!c.rgb) return ldm_error("loss curves: out of memory");
    memset(c.rgb, 255, (size_t)c.w * c.h * 3);
    for (int k = 0; k < n_panels; k++) draw_panel(&c, k * PW, &panels[k]);
    *rgb = c.rgb, *width = c.w, *height = c.h;
    return 0;
}

int ldm_plot_loss_png(const char *path, const ldm_plot_panel *panels, int n_panels) {
    ldm_image img = {0};
    if (ldm_plot_render(&img.rgb, &img.width, &img.height, panels, n_panels)) return LDM_ERR;
    // Title: the panels' titles; Description: which colour is which curve.
    static const char *const names[LDM_PLOT_MAX_CURVES] = {"blue", "orange", "green", "red"};
    char title[512] = "", desc[1024] = "";
    for (int k = 0; k < n_panels; k++) {
        snprintf(title + strlen(title), sizeof title - strlen(title), "%s%s (panel %d)",
                 k ? "; " : "", panels[k].title, k + 1);
        snprintf(desc + strlen(desc), sizeof desc - strlen(desc), "%spanel %d:", k ? "; " : "", k + 1);
        for (int j = 0; j < panels[k].n_curves; j++)
            snprintf(desc + strlen(desc), sizeof desc - strlen(desc), " %s %s%s", names[j],
                     panels[k].curves[j].name, j + 1 < panels[k].n_curves ? "," : "");
    }
    snprintf(desc + strlen(desc), sizeof desc - strlen(desc),
             ". Moving average of 25 steps, log-scale y, x = optimizer steps.");
    const char *keys[2] = {"Title", "Description"}, *values[2] = {title, desc};
    int rc = ldm_png_write(path, &img, 2, keys, values, 1);
    free(img.rgb);
    return rc;
}
