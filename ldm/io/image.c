/*
 * ldm/io/image.c -- PNG read and write with libpng (see image.h).
 *
 * Read: any PNG colour type and bit depth becomes 8-bit RGB [H][W][3]:
 *   palette          -> RGB via the PLTE table (tRNS transparency dropped)
 *   gray 1/2/4 bit   -> 8 bit by bit replication (1 -> 255, 2-bit v -> 85v, 4-bit v -> 17v)
 *   16 bit           -> 8 bit by png_set_strip_16: the high byte, v >> 8
 *                       (truncation, not rounding v/257; differs by at most 1;
 *                       tested by png_gray16, png_rgb16, png_rgba16)
 *   gray, gray+alpha -> R = G = B = gray
 *   any alpha        -> dropped, the colour values are kept as stored
 *                       (not composited over a background)
 * Before any pixel memory is allocated, libpng's user limits cap width and
 * height at LDM_IMAGE_MAX_SIDE and ancillary chunk allocations at
 * PNG_CHUNK_MAX, so a 100000x100000 IHDR or a huge zTXt fails cleanly.
 * libpng reports errors by longjmp: every libpng call sits under setjmp, and
 * the error text is kept for the message.
 * Text chunks: tEXt and zTXt are Latin-1 and are converted to UTF-8; iTXt is
 * UTF-8 already. All are returned in img->text_keys/values.
 *
 * Write: 8-bit RGB, one tEXt chunk per value that Latin-1 can spell
 * (converted from UTF-8), an iTXt chunk otherwise; written to PATH.tmp and
 * renamed; an existing PATH is kept unless overwrite != 0.
 * Leaves out: colour management (gAMA, iCCP, sRGB are ignored), APNG frames.
 */
#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/image.h"

#define PNG_CHUNK_MAX (8u << 20)   // largest ancillary chunk (text, ICC profile) accepted

// libpng error/warning callbacks: keep the message, jump back to setjmp.
// Warnings (e.g. "Image width exceeds user limit in IHDR") often say why the
// error that follows ("Invalid IHDR data") happened: the first one is kept.
typedef struct png_err { char msg[256], warning[256]; } png_err;

static void on_png_error(png_structp png, png_const_charp msg) {
    png_err *e = png_get_error_ptr(png);
    // libpng's stdio reader says only "Read Error" when fread comes up short.
    if (e) snprintf(e->msg, sizeof e->msg, "%s", strcmp(msg, "Read Error") == 0
                                                    ? "the file ends early (truncated?)" : msg);
    png_longjmp(png, 1);
}
static void on_png_warning(png_structp png, png_const_charp msg) {
    png_err *e = png_get_error_ptr(png);
    if (e && !e->warning[0]) snprintf(e->warning, sizeof e->warning, "%s", msg);
}

// Latin-1 bytes -> new UTF-8 string (every byte >= 0x80 becomes two bytes).
static char *latin1_to_utf8(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(2 * n + 1), *o = out;
    if (!out) return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x80) *o++ = (char)*p;
        else { *o++ = (char)(0xc0 | (*p >> 6)); *o++ = (char)(0x80 | (*p & 0x3f)); }
    }
    *o = '\0';
    return out;
}

// UTF-8 -> Latin-1 into a new string. Returns NULL and sets *status:
// 1 when a code point above U+00FF occurs (needs iTXt), 2 when not valid UTF-8.
static char *utf8_to_latin1(const char *s, int *status) {
    *status = 0;
    char *out = malloc(strlen(s) + 1), *o = out;
    if (!out) { *status = 2; return NULL; }
    const unsigned char *p = (const unsigned char *)s;
    int above = 0;
    while (*p) {
        uint32_t cp;
        int len;
        if (*p < 0x80) { cp = *p; len = 1; }
        else if (*p >= 0xc2 && *p <= 0xdf) { cp = *p & 0x1f; len = 2; }
        else if (*p >= 0xe0 && *p <= 0xef) { cp = *p & 0x0f; len = 3; }
        else if (*p >= 0xf0 && *p <= 0xf4) { cp = *p & 0x07; len = 4; }
        else { *status = 2; free(out); return NULL; }
        for (int k = 1; k < len; k++) {
            if ((p[k] & 0xc0) != 0x80) { *status = 2; free(out); return NULL; }
            cp = (cp << 6) | (p[k] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff)) {
            *status = 2; free(out); return NULL;
        }
        if (cp > 0xff) above = 1;
        else *o++ = (char)cp;
        p += len;
    }
    *o = '\0';
    if (above) { *status = 1; free(out); return NULL; }
    return out;
}

// ---------------------------------------------------------------------------
// read

void ldm_image_free(ldm_image *img) {
    if (!img) return;
    free(img->rgb);
    for (int i = 0; i < img->n_text; i++) {
        free(img->text_keys[i]);
        free(img->text_values[i]);
    }
    free(img->text_keys);
    free(img->text_values);
    memset(img, 0, sizeof *img);
}

// Copy the text chunks libpng collected into img (UTF-8). 0 / -1 (out of memory).
static int collect_text(ldm_image *img, png_structp png, png_infop info) {
    png_textp text = NULL;
    int n = 0;
    png_get_text(png, info, &text, &n);
    if (n <= 0) return 0;
    img->text_keys = calloc((size_t)n, sizeof(char *));
    img->text_values = calloc((size_t)n, sizeof(char *));
    if (!img->text_keys || !img->text_values) return -1;
    for (int i = 0; i < n; i++) {
        int itxt = text[i].compression == PNG_ITXT_COMPRESSION_NONE ||
                   text[i].compression == PNG_ITXT_COMPRESSION_zTXt;
        img->text_keys[i] = latin1_to_utf8(text[i].key);   // keywords are always Latin-1
        img->text_values[i] = itxt ? strdup(text[i].text ? text[i].text : "")
                                   : latin1_to_utf8(text[i].text ? text[i].text : "");
        img->n_text = i + 1;
        if (!img->text_keys[i] || !img->text_values[i]) return -1;
    }
    return 0;
}

int ldm_png_read(ldm_image *img, const char *path) {
    memset(img, 0, sizeof *img);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return ldm_error("%s: is a folder, not a PNG file", path);
    FILE *fp = fopen(path, "rb");
    if (!fp) return ldm_error("%s: cannot open: %s", path, strerror(errno));
    uint8_t sig[8];
    size_t got = fread(sig, 1, 8, fp);
    if (got < 8 || png_sig_cmp(sig, 0, 8) != 0) {
        fclose(fp);
        return ldm_error("%s: not a PNG file (%s)", path,
                         got < 8 ? "shorter than the 8-byte PNG signature"
                                 : "the first 8 bytes are not the PNG signature");
    }
    png_err err = {"", ""};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error,
                                             on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        fclose(fp);
        return ldm_error("%s: out of memory starting libpng", path);
    }
    // Changed between setjmp and longjmp, hence volatile.
    uint8_t *volatile rgb = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(rows);
        free(rgb);
        ldm_image_free(img);
        fclose(fp);
        return ldm_error("%s: bad or unsupported PNG: %s%s%s%s", path,
                         err.msg[0] ? err.msg : "libpng error", err.warning[0] ? " (" : "",
                         err.warning, err.warning[0] ? ")" : "");
    }
    // Limits before anything is allocated from the file's numbers.
    png_set_user_limits(png, LDM_IMAGE_MAX_SIDE, LDM_IMAGE_MAX_SIDE);
    png_set_chunk_malloc_max(png, PNG_CHUNK_MAX);
    png_set_chunk_cache_max(png, 1000);
    png_init_io(png, fp);
    png_set_sig_bytes(png, 8);
    png_read_info(png, info);

    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int depth = png_get_bit_depth(png, info), ct = png_get_color_type(png, info);
    // Every input type -> 8-bit RGB (table in the charter comment).
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if ((ct & PNG_COLOR_MASK_COLOR) == 0 && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_strip_16(png);
    // tRNS (palette transparency): expanded to an alpha channel, then dropped.
    int trns = png_get_valid(png, info, PNG_INFO_tRNS) != 0;
    if (trns) png_set_tRNS_to_alpha(png);
    if ((ct & PNG_COLOR_MASK_ALPHA) || trns) png_set_strip_alpha(png);
    if ((ct & PNG_COLOR_MASK_COLOR) == 0) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8 ||
        png_get_rowbytes(png, info) != (size_t)w * 3) {
        snprintf(err.msg, sizeof err.msg, "colour type %d depth %d did not convert to 8-bit RGB",
                 ct, depth);
        png_longjmp(png, 1);
    }
    rgb = malloc((size_t)w * h * 3);
    rows = malloc((size_t)h * sizeof(png_bytep));
    if (!rgb || !rows) {
        snprintf(err.msg, sizeof err.msg, "out of memory for %ux%u pixels", (unsigned)w, (unsigned)h);
        png_longjmp(png, 1);
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = rgb + (size_t)y * w * 3;
    png_read_image(png, rows);
    png_read_end(png, info);   // text chunks after the image data land in `info` too
    if (collect_text(img, png, info) != 0) {
        snprintf(err.msg, sizeof err.msg, "out of memory for text chunks");
        png_longjmp(png, 1);
    }
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    fclose(fp);
    img->width = (int)w;
    img->height = (int)h;
    img->rgb = rgb;
    return 0;
}

// ---------------------------------------------------------------------------
// write

int ldm_png_write(const char *path, const ldm_image *img, int n_text, const char *const *keys,
                  const char *const *values, int overwrite) {
    if (img->width <= 0 || img->height <= 0 || img->width > LDM_IMAGE_MAX_SIDE ||
        img->height > LDM_IMAGE_MAX_SIDE || !img->rgb)
        return ldm_error("%s: cannot write a %dx%d image (sides 1..%d)", path, img->width,
                         img->height, LDM_IMAGE_MAX_SIDE);
    if (!overwrite && access(path, F_OK) == 0)
        return ldm_error("%s: already exists; not overwriting it", path);

    // Text chunks: keyword Latin-1 (1..79 bytes); value Latin-1 -> tEXt, else iTXt.
    png_text *text = calloc((size_t)(n_text > 0 ? n_text : 1), sizeof *text);
    char **owned = calloc((size_t)(n_text > 0 ? 2 * n_text : 1), sizeof(char *));
    int rc = 0;
    if (!text || !owned) { rc = ldm_error("%s: out of memory", path); goto done_text; }
    for (int i = 0; i < n_text; i++) {
        int st;
        char *key = utf8_to_latin1(keys[i], &st);
        owned[2 * i] = key;
        size_t kl = key ? strlen(key) : 0;
        if (!key || kl < 1 || kl > 79) {
            rc = ldm_error("%s: text keyword '%s' must be 1-79 Latin-1 characters", path, keys[i]);
            goto done_text;
        }
        char *val = utf8_to_latin1(values[i], &st);
        if (st == 2) {
            rc = ldm_error("%s: text value of '%s' is not valid UTF-8", path, keys[i]);
            goto done_text;
        }
        text[i].key = key;
        if (val) {   // Latin-1 representable: tEXt
            owned[2 * i + 1] = val;
            text[i].compression = PNG_TEXT_COMPRESSION_NONE;
            text[i].text = val;
            text[i].text_length = strlen(val);
        } else {     // needs Unicode: iTXt (UTF-8, uncompressed)
            text[i].compression = PNG_ITXT_COMPRESSION_NONE;
            text[i].text = (char *)values[i];
            text[i].itxt_length = strlen(values[i]);
            text[i].lang = NULL;
            text[i].lang_key = NULL;
        }
    }

    size_t tlen = strlen(path) + 5;
    char *tmp = malloc(tlen);
    if (!tmp) { rc = ldm_error("%s: out of memory", path); goto done_text; }
    snprintf(tmp, tlen, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        rc = ldm_error("%s: cannot create %s: %s", path, tmp, strerror(errno));
        free(tmp);
        goto done_text;
    }
    png_err err = {"", ""};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error,
                                              on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_bytep *volatile rows = NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(rows);
        fclose(fp);
        unlink(tmp);
        free(tmp);
        rc = ldm_error("%s: PNG write failed: %s", path, err.msg[0] ? err.msg : "out of memory");
        goto done_text;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
                 PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (n_text > 0) png_set_text(png, info, text, n_text);
    png_write_info(png, info);
    rows = malloc((size_t)img->height * sizeof(png_bytep));
    if (!rows) {
        snprintf(err.msg, sizeof err.msg, "out of memory");
        png_longjmp(png, 1);
    }
    for (int y = 0; y < img->height; y++) rows[y] = img->rgb + (size_t)y * img->width * 3;
    png_write_image(png, rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(rows);
    int bad = fclose(fp) != 0;
    if (bad || rename(tmp, path) != 0) {
        rc = ldm_error("%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);

done_text:
    if (owned)
        for (int i = 0; i < 2 * n_text; i++) free(owned[i]);
    free(owned);
    free(text);
    return rc;
}
