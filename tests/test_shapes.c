/*
 * tests/test_shapes.c -- ldm/train/shapes.c against tools/train/dataset.py:
 * numpy's generator (PCG64 words, random(), integers()), the scenes of two
 * seeds and of the new-shape sets (bar, star), both captions byte for byte,
 * and the images (Pillow's drawing + BOX resize) byte for byte: in full for
 * the scenes stored as PNG, by CRC-32 for the others.
 *
 * Fixtures: tests/fixtures/train/shapes/ (tools/reference/fixtures_shapes.py).
 * Run from the repo root.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "ldm/core/error.h"
#include "ldm/io/image.h"
#include "ldm/train/shapes.h"
#include "tests/test.h"

#define FIX "tests/fixtures/train/shapes/"
#define IMG_BYTES (LDM_SHAPES_SIZE * LDM_SHAPES_SIZE * 3)

// "np <words> ; raw V ; integers LO HI V ; random HEX ; ..."
static void check_np_line(char *line) {
    char *save = NULL, *part = strtok_r(line + 3, ";", &save);
    uint64_t words[8];
    int n = 0, used = 0;
    char name[128] = "numpy default_rng([";
    for (char *p = part; n < 8 && sscanf(p, "%" SCNu64 "%n", &words[n], &used) == 1; p += used) {
        snprintf(name + strlen(name), sizeof name - strlen(name), "%s%" PRIu64, n ? ", " : "",
                 words[n]);
        n++;
    }
    strcat(name, "])");
    ldm_np_rng g;
    ldm_np_rng_init(&g, words, n);
    int calls = 0, bad = 0;
    while ((part = strtok_r(NULL, ";", &save))) {
        char op[16];
        if (sscanf(part, "%15s", op) != 1) continue;
        calls++;
        if (strcmp(op, "raw") == 0) {
            uint64_t v = 0;
            sscanf(part, "%*s %" SCNu64, &v);
            bad += ldm_np_rng_next64(&g) != v;
        } else if (strcmp(op, "random") == 0) {
            uint64_t bits = 0, mine;
            sscanf(part, "%*s %" SCNx64, &bits);
            double u = ldm_np_rng_random(&g);
            memcpy(&mine, &u, 8);
            bad += mine != bits;
        } else {
            int64_t lo = 0, hi = 0, v = 0;
            sscanf(part, "%*s %" SCNd64 " %" SCNd64 " %" SCNd64, &lo, &hi, &v);
            bad += ldm_np_rng_integers(&g, lo, hi) != v;
        }
    }
    test_check(bad == 0 && calls > 0, name, "%d of %d draws differ", bad, calls);
}

// the fixture's description of a scene, from ours
static void describe(char *buf, size_t n, const ldm_shapes_scene *s) {
    int k = snprintf(buf, n, "%s|%d|%d|%s|%s", ldm_shapes_bg_names[s->bg], s->say_bg, s->n_objects,
                     s->place >= 0 ? ldm_shapes_place_names[s->place] : "None",
                     s->relation >= 0 ? ldm_shapes_relation_names[s->relation] : "None");
    for (int i = 0; i < s->n_objects; i++) {
        const ldm_shapes_object *o = &s->objects[i];
        k += snprintf(buf + k, n - (size_t)k, "|%s,%s,%s,%d,%d", ldm_shapes_colour_names[o->colour],
                      ldm_shapes_shape_names[o->shape], ldm_shapes_size_names[o->size], o->x, o->y);
    }
}

typedef struct tally {
    int bad_lines, scenes, bad_scene, bad_en, bad_ja, bad_crc, pngs, png_identical, png_max_diff;
} tally;

// "scene \t kind \t seed \t index \t description \t crc32 \t en \t ja"
static void check_scene_line(char *line, tally *t) {
    char *f[8], *save = NULL;
    int nf = 0;
    for (char *p = strtok_r(line, "\t\n", &save); p && nf < 8; p = strtok_r(NULL, "\t\n", &save))
        f[nf++] = p;
    if (nf != 8) {
        t->bad_lines++;
        return;
    }
    uint64_t seed = strtoull(f[2], NULL, 10);
    int64_t index = strtoll(f[3], NULL, 10);
    ldm_shapes_scene s;
    int rc = strcmp(f[1], "base") == 0
                 ? ldm_shapes_make_scene(&s, seed, index)
                 : ldm_shapes_make_new_shape_scene(
                       &s, seed, index, strcmp(f[1], "bar") == 0 ? LDM_SHAPES_BAR : LDM_SHAPES_STAR);
    if (rc != LDM_OK) {
        t->bad_lines++;
        return;
    }
    char desc[256], en[256], ja[256];
    describe(desc, sizeof desc, &s);
    ldm_shapes_caption_en(en, sizeof en, &s);
    ldm_shapes_caption_ja(ja, sizeof ja, &s);
    uint8_t rgb[IMG_BYTES];
    ldm_shapes_render(rgb, &s);
    uint32_t crc = (uint32_t)crc32(0L, rgb, IMG_BYTES);
    t->scenes++;
    t->bad_scene += strcmp(desc, f[4]) != 0;
    t->bad_crc += crc != (uint32_t)strtoul(f[5], NULL, 16);
    t->bad_en += strcmp(en, f[6]) != 0;
    t->bad_ja += strcmp(ja, f[7]) != 0;
    if (strcmp(desc, f[4]) != 0 && t->bad_scene <= 3)
        printf("    %s seed %s index %s: ours %s, dataset.py %s\n", f[1], f[2], f[3], desc, f[4]);

    char path[256];
    snprintf(path, sizeof path, FIX "%s_s%s_%s.png", f[1], f[2], f[3]);
    FILE *probe = fopen(path, "rb");
    if (!probe) return;
    fclose(probe);
    ldm_image ref = {0};
    t->pngs++;
    if (ldm_png_read(&ref, path) != LDM_OK || ref.width != LDM_SHAPES_SIZE ||
        ref.height != LDM_SHAPES_SIZE) {
        printf("    %s: %s\n", path, ldm_last_error());
        ldm_image_free(&ref);
        return;
    }
    int max_diff = 0;
    for (int i = 0; i < IMG_BYTES; i++) {
        int d = abs((int)rgb[i] - (int)ref.rgb[i]);
        if (d > max_diff) max_diff = d;
    }
    t->png_identical += max_diff == 0;
    if (max_diff > t->png_max_diff) t->png_max_diff = max_diff;
    ldm_image_free(&ref);
}

static void test_fixture(void) {
    FILE *f = fopen(FIX "cases.txt", "r");
    if (!test_check(f != NULL, FIX "cases.txt", "missing (run `make fixtures`)")) return;
    char *line = NULL;
    size_t cap = 0;
    tally t = {0};
    while (getline(&line, &cap, f) > 0) {
        if (strncmp(line, "np ", 3) == 0) check_np_line(line);
        else if (strncmp(line, "scene\t", 6) == 0) check_scene_line(line, &t);
    }
    free(line);
    fclose(f);
    test_check(t.bad_lines == 0 && t.scenes >= 400, "shapes: fixture scenes read",
               "%d scenes, %d unreadable lines", t.scenes, t.bad_lines);
    test_check(t.bad_scene == 0, "shapes: scenes equal dataset.make_scene", "%d of %d differ",
               t.bad_scene, t.scenes);
    test_check(t.bad_en == 0, "shapes: English captions byte-equal", "%d of %d differ", t.bad_en,
               t.scenes);
    test_check(t.bad_ja == 0, "shapes: Japanese captions byte-equal", "%d of %d differ", t.bad_ja,
               t.scenes);
    test_check(t.bad_crc == 0, "shapes: images byte-identical (CRC-32)", "%d of %d differ",
               t.bad_crc, t.scenes);
    test_check(t.pngs >= 20 && t.png_identical == t.pngs, "shapes: stored images byte-identical",
               "%d of %d identical, max |diff| %d", t.png_identical, t.pngs, t.png_max_diff);
    printf("  shapes: %d scenes, %d images by CRC-32 identical, %d of %d stored images identical "
           "(max |diff| %d)\n", t.scenes, t.scenes - t.bad_crc, t.png_identical, t.pngs,
           t.png_max_diff);
}

static void test_errors(void) {
    ldm_shapes_scene s;
    test_check(ldm_shapes_make_scene(&s, 0, -1) == LDM_ERR &&
                   strstr(ldm_last_error(), "index") != NULL,
               "shapes: negative index rejected", "%s", ldm_last_error());
    test_check(ldm_shapes_make_new_shape_scene(&s, 0, 0, 99) == LDM_ERR,
               "shapes: unknown shape rejected", "%s", "accepted");
    ldm_shapes_make_scene(&s, 0, 0);
    char full[256], small[8];
    int len = ldm_shapes_caption_en(full, sizeof full, &s);
    test_check(len > 0 && (size_t)len == strlen(full), "shapes: caption length returned", "%d", len);
    test_check(ldm_shapes_caption_en(small, sizeof small, &s) == LDM_ERR && small[0] == '\0',
               "shapes: short caption buffer rejected", "%s", ldm_last_error());
    char exact[256];
    test_check(ldm_shapes_caption_en(exact, (size_t)len + 1, &s) == len && strcmp(exact, full) == 0,
               "shapes: caption fits a buffer of length + 1", "%s", exact);
    test_check(ldm_shapes_caption_ja(small, sizeof small, &s) == LDM_ERR,
               "shapes: short Japanese buffer rejected", "%s", "accepted");
}

int main(void) {
    printf("-- shapes dataset vs tools/train/dataset.py\n");
    test_fixture();
    test_errors();
    return test_summary();
}
