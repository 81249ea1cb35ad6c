/*
 * tests/test_png.c -- PNG read/write (ldm/io/image.c).
 *
 * 1. PNGs of every colour type and depth written by Pillow (and a minimal
 *    Python encoder for 16-bit RGB/RGBA and 2-bit gray) read as the 8-bit RGB
 *    that tools/reference/fixtures_io.py computed from the source arrays.
 * 2. tEXt, zTXt and iTXt chunks written by Pillow read back as UTF-8.
 * 3. Write -> read round-trip of pixels and text; Latin-1 values go to tEXt,
 *    others to iTXt; an existing file is not overwritten unless asked; bad
 *    keywords are refused and leave no file.
 * 4. Every PNG in tests/fixtures/io/bad/ is rejected with a message (huge
 *    declared size, bad CRC, truncation, ...) and no crash.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/image.h"
#include "ldm/io/npy.h"
#include "tests/test.h"

#define DIR "tests/fixtures/io/"

static const char *find_text(const ldm_image *img, const char *key) {
    for (int i = 0; i < img->n_text; i++)
        if (!strcmp(img->text_keys[i], key)) return img->text_values[i];
    return NULL;
}

// Does the PNG file at path contain a chunk of type `kind` (e.g. "iTXt")?
static int has_chunk(const char *path, const char *kind) {
    size_t n;
    char *b = test_read_file(path, &n);
    int found = 0;
    for (size_t p = 8; b && p + 8 <= n;) {   // walk length|type|data|crc
        uint32_t len = ((uint32_t)(uint8_t)b[p] << 24) | ((uint32_t)(uint8_t)b[p + 1] << 16) |
                       ((uint32_t)(uint8_t)b[p + 2] << 8) | (uint8_t)b[p + 3];
        if (!memcmp(b + p + 4, kind, 4)) { found = 1; break; }
        if (len > n) break;
        p += 12 + (size_t)len;
    }
    free(b);
    return found;
}

static void check_pixels(const char *name, const ldm_image *img, const char *npy) {
    float *exp;
    int64_t shape[8];
    int nd;
    if (!test_check(ldm_npy_read_raw(&exp, shape, &nd, npy) == 0, npy, "%s", ldm_last_error()))
        return;
    int ok = nd == 3 && shape[0] == img->height && shape[1] == img->width && shape[2] == 3;
    if (test_check(ok, name, "size %dx%d, expected %lldx%lld", img->width, img->height,
                   (long long)shape[1], (long long)shape[0])) {
        int64_t n = (int64_t)img->width * img->height * 3;
        float *got = malloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < n; i++) got[i] = img->rgb[i];
        char label[300];
        snprintf(label, sizeof label, "%s RGB values", name);
        test_close(label, got, exp, n, 0, 0);   // 8-bit values: exact
        free(got);
    }
    free(exp);
}

static void test_fixtures(void) {
    static const char *names[] = {"png_rgb8", "png_rgba8", "png_gray8", "png_graya8",
                                  "png_palette4", "png_palette8_trns", "png_gray1",
                                  "png_gray2", "png_gray16", "png_rgb16", "png_rgba16",
                                  "png_text"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[256], npy[256];
        snprintf(path, sizeof path, DIR "%s.png", names[i]);
        snprintf(npy, sizeof npy, DIR "%s.rgb.npy", names[i]);
        ldm_image img;
        if (!test_check(ldm_png_read(&img, path) == 0, path, "%s", ldm_last_error())) continue;
        check_pixels(names[i], &img, npy);
        ldm_image_free(&img);
    }
    // text chunks written by Pillow
    size_t n;
    char *js = test_read_file(DIR "expected.json", &n);
    cJSON *root = js ? cJSON_Parse(js) : NULL;
    cJSON *texts = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "png_text"), "png_text.png");
    ldm_image img;
    if (test_check(texts && ldm_png_read(&img, DIR "png_text.png") == 0,
                   "png_text.png (tEXt, zTXt, iTXt by Pillow)", "%s", ldm_last_error())) {
        for (cJSON *t = texts->child; t; t = t->next) {
            const char *got = find_text(&img, t->string);
            char label[200];
            snprintf(label, sizeof label, "text chunk '%s' read as UTF-8", t->string);
            test_check(got && !strcmp(got, t->valuestring), label, "got \"%s\" expected \"%s\"",
                       got ? got : "(missing)", t->valuestring);
        }
        ldm_image_free(&img);
    }
    cJSON_Delete(root);
    free(js);
}

static void test_roundtrip(const char *tmpdir) {
    ldm_image img = {.width = 33, .height = 17};
    img.rgb = malloc(33 * 17 * 3);
    uint32_t s = 12345;
    for (int i = 0; i < 33 * 17 * 3; i++) { s = s * 1664525u + 1013904223u; img.rgb[i] = (uint8_t)(s >> 24); }
    const char *keys[] = {"Title", "Prompt", "Empty", "Clé"};
    const char *vals[] = {"café au lait", "a cat 猫 🐱 on a mat", "", "latin-1 only: ÿ"};
    char path[512];
    snprintf(path, sizeof path, "%s/out.png", tmpdir);
    int rc = ldm_png_write(path, &img, 4, keys, vals, 0);
    test_check(rc == 0, "png write 33x17 with 4 text chunks", "%s", ldm_last_error());
    ldm_image back;
    if (test_check(ldm_png_read(&back, path) == 0, "png write -> read", "%s", ldm_last_error())) {
        test_check(back.width == 33 && back.height == 17 &&
                   !memcmp(back.rgb, img.rgb, 33 * 17 * 3), "round-trip pixels identical",
                   "size %dx%d", back.width, back.height);
        for (int i = 0; i < 4; i++) {
            const char *got = find_text(&back, keys[i]);
            char label[100];
            snprintf(label, sizeof label, "round-trip text '%s'", keys[i]);
            test_check(got && !strcmp(got, vals[i]), label, "got \"%s\"", got ? got : "(missing)");
        }
        ldm_image_free(&back);
    }
    test_check(has_chunk(path, "tEXt") && has_chunk(path, "iTXt"),
               "Latin-1 values as tEXt, the CJK/emoji value as iTXt", "chunks missing");
    // refuse to overwrite
    img.rgb[0] ^= 0xff;
    rc = ldm_png_write(path, &img, 0, NULL, NULL, 0);
    test_check(rc != 0 && strstr(ldm_last_error(), "exists"), "refuses to overwrite", "%s",
               ldm_last_error());
    rc = ldm_png_write(path, &img, 0, NULL, NULL, 1);
    test_check(rc == 0 && ldm_png_read(&back, path) == 0 && back.rgb[0] == img.rgb[0] &&
               back.n_text == 0, "overwrites when asked", "%s", ldm_last_error());
    ldm_image_free(&back);
    // bad keywords: not Latin-1, too long; no file left behind
    snprintf(path, sizeof path, "%s/bad.png", tmpdir);
    const char *k1[] = {"猫"}, *k2[] = {"0123456789012345678901234567890123456789"
                                       "0123456789012345678901234567890123456789"};
    const char *v1[] = {"x"}, *v2[] = {"\xff\xfe"};
    test_check(ldm_png_write(path, &img, 1, k1, v1, 0) != 0 && access(path, F_OK) != 0,
               "non-Latin-1 keyword refused, no file", "%s", ldm_last_error());
    test_check(ldm_png_write(path, &img, 1, k2, v1, 0) != 0 && access(path, F_OK) != 0,
               "80-byte keyword refused, no file", "%s", ldm_last_error());
    test_check(ldm_png_write(path, &img, 1, keys, v2, 0) != 0 && access(path, F_OK) != 0,
               "invalid UTF-8 value refused, no file", "%s", ldm_last_error());
    ldm_image empty = {0};
    test_check(ldm_png_write(path, &empty, 0, NULL, NULL, 0) != 0, "0x0 image refused", "%s",
               ldm_last_error());
    free(img.rgb);
}

static void test_bad(void) {
    size_t n;
    char *man = test_read_file(DIR "bad/MANIFEST.tsv", &n);
    if (!test_check(man != NULL, "bad/MANIFEST.tsv", "missing; run make fixtures")) return;
    int count = 0;
    for (char *line = strtok(man, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || strncmp(line, "png\t", 4) != 0) continue;
        char *file = line + 4, *sub = strchr(file, '\t');
        if (sub) *sub++ = '\0'; else sub = (char *)"";
        char path[512], name[600];
        snprintf(path, sizeof path, DIR "bad/%s", file);
        ldm_clear_error();
        ldm_image img;
        int rc = ldm_png_read(&img, path);
        snprintf(name, sizeof name, "bad/%s rejected", file);
        test_check(rc != 0 && ldm_last_error()[0] && strstr(ldm_last_error(), sub) && !img.rgb,
                   name, "rc %d, message \"%s\"", rc, ldm_last_error());
        if (rc == 0) ldm_image_free(&img);
        else printf("          -> %s\n", ldm_last_error());
        count++;
    }
    test_check(count >= 6, "bad PNG corpus size", "only %d", count);
    free(man);
}

int main(void) {
    test_fixtures();
    char tmpdir[256];
    snprintf(tmpdir, sizeof tmpdir, "%s/ldm-test-png-XXXXXX", P_tmpdir);
    if (test_check(mkdtemp(tmpdir) != NULL, "temporary folder", "mkdtemp failed")) {
        test_roundtrip(tmpdir);
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) printf("  (could not remove %s)\n", tmpdir);
    }
    test_bad();
    return test_summary();
}
