/*
 * tests/test_plot.c -- the loss-curve PNG of `sd train` (ldm/train/plot.h):
 * the moving average against its definition, and the drawing: the panel's
 * size, its title and legend drawn as text where they belong (ink there,
 * paper beside them), each curve in its colour inside the frame, and the
 * PNG written with its Title and Description chunks.
 * Run from the repo root.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ldm/core/error.h"
#include "ldm/train/plot.h"
#include "tests/test.h"

enum { PW = 480, PH = 320, M = 40 };   // ldm/train/plot.c's panel

// Pixels of colour (r, g, b) in the rectangle [x0, x1) x [y0, y1) of an RGB image.
static int count(const uint8_t *rgb, int w, int x0, int y0, int x1, int y1, int r, int g, int b) {
    int n = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            const uint8_t *p = rgb + ((size_t)y * w + x) * 3;
            n += p[0] == r && p[1] == g && p[2] == b;
        }
    return n;
}

static void test_smooth(void) {
    float y[40];
    for (int i = 0; i < 40; i++) y[i] = (float)((i * 37) % 11) - 3.5f;
    double s[40];
    ldm_plot_smooth(s, y, 40, 7);
    double worst = 0;
    for (int i = 0; i < 40; i++) {   // mean of y[max(0, i-6) .. i], summed afresh
        int lo = i >= 6 ? i - 6 : 0;
        double sum = 0;
        for (int j = lo; j <= i; j++) sum += y[j];
        worst = fmax(worst, fabs(s[i] - sum / (i - lo + 1)));
    }
    test_check(worst < 1e-12, "moving average of 7 = the mean of the last 7 (fewer at the start)",
               "worst difference %g", worst);
}

static void test_render(void) {
    float a[300], b[300];
    for (int i = 0; i < 300; i++) a[i] = 1.0f / (1 + i), b[i] = 0.5f / (1 + i);
    ldm_plot_panel p[2] = {
        {"L", {{"LL", a, 300}, {"I", b, 300}}, 2},
        {NULL, {{NULL, a, 300}}, 1},
    };
    uint8_t *rgb = NULL;
    int w = 0, h = 0;
    if (!test_check(ldm_plot_render(&rgb, &w, &h, p, 2) == 0, "render two panels", "%s",
                    ldm_last_error()))
        return;
    test_check(w == 2 * PW && h == PH, "two panels side by side: 960 x 320", "%d x %d", w, h);
    // The title "L" at (M, 14), doubled 3x5: the left column (2 pixels wide,
    // 10 high) and the bottom row (6 wide, 2 high) inked, the rest of the cell paper.
    int stem = count(rgb, w, M, 14, M + 2, 24, 0, 0, 0), foot = count(rgb, w, M, 22, M + 6, 24, 0, 0, 0);
    int inside = count(rgb, w, M + 2, 14, M + 6, 22, 255, 255, 255);
    test_check(stem == 20 && foot == 12 && inside == 32, "title 'L' drawn as the glyph L above the frame",
               "stem %d/20, foot %d/12, paper inside %d/32", stem, foot, inside);
    test_check(count(rgb, w, PW + M, 10, 2 * PW, 30, 0, 0, 0) == 0, "no title: nothing drawn above panel 2",
               "ink found");
    // Legend: row j at y0 + 8 + 14 j, a swatch from x1-30 to x1-10, the name
    // right-aligned to end 4 pixels before the swatch (x1 = PW - 10).
    int x1 = PW - 10, ly0 = M + 8, ly1 = M + 8 + 14;
    int sw0 = count(rgb, w, x1 - 30, ly0, x1 - 10, ly0 + 3, 31, 119, 180);
    int sw1 = count(rgb, w, x1 - 30, ly1, x1 - 10, ly1 + 3, 255, 127, 14);
    test_check(sw0 > 40 && sw1 > 40, "legend swatches in blue and orange", "%d, %d pixels", sw0, sw1);
    int n0 = count(rgb, w, x1 - 36 - 16, ly0 - 3, x1 - 36, ly0 + 7, 0, 0, 0);
    int n1 = count(rgb, w, x1 - 36 - 8, ly1 - 3, x1 - 36, ly1 + 7, 0, 0, 0);
    int n1_left = count(rgb, w, x1 - 36 - 24, ly1 - 3, x1 - 36 - 8, ly1 + 7, 0, 0, 0);
    test_check(n0 == 2 * (20 + 8) && n1 > 0 && n1_left == 0,
               "legend names beside their swatches ('LL' two glyphs, 'I' one)",
               "LL %d pixels (expected 56), I %d, left of I %d", n0, n1, n1_left);
    // Curves inside the frame, in their colours; the second panel has one curve.
    int c0 = count(rgb, w, M + 1, M + 1, x1 - 40, PH - M, 31, 119, 180);
    int c1 = count(rgb, w, M + 1, M + 1, x1 - 40, PH - M, 255, 127, 14);
    int c2 = count(rgb, w, PW + M + 1, M + 1, PW + x1 - 40, PH - M, 255, 127, 14);
    test_check(c0 > 300 && c1 > 300 && c2 == 0, "curves drawn in the frame in their colours",
               "blue %d, orange %d, orange in panel 2 %d", c0, c1, c2);
    free(rgb);

    char path[] = "/tmp/ldm_plot_XXXXXX";
    int fd = mkstemp(path);
    if (!test_check(fd >= 0, "temporary file", "mkstemp failed")) return;
    close(fd);
    test_check(ldm_plot_loss_png(path, p, 1) == 0, "loss_curves.png written", "%s", ldm_last_error());
    size_t n = 0;
    char *png = test_read_file(path, &n);
    int has = png && memmem(png, n, "Title", 5) && memmem(png, n, "Description", 11) &&
              memmem(png, n, "blue LL", 7);
    test_check(has, "PNG text chunks: Title and Description name the curves", "missing");
    free(png);
    remove(path);
    test_check(ldm_plot_render(&rgb, &w, &h, p, 0) == LDM_ERR, "no panel: an error", "accepted");
}

int main(void) {
    printf("-- loss curves (ldm/train/plot.c)\n");
    test_smooth();
    test_render();
    return test_summary();
}
