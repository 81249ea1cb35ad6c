/*
 * ldm/io/image.h -- PNG in and out (libpng), and the pixel <-> [-1,1] tensor
 * conversions of the pipelines.
 *
 * Input of any PNG colour type and depth (gray, gray+alpha, palette, RGB,
 * RGBA, 16-bit) becomes 8-bit RGB; alpha is dropped (composited on nothing).
 * Size limits are set in libpng before any allocation. Output is 8-bit RGB
 * with text chunks (tEXt when the value is Latin-1, iTXt otherwise), written
 * to a temporary file and renamed, so a failure never leaves a partial PNG.
 */
#ifndef LDM_IMAGE_H
#define LDM_IMAGE_H

#include <stdint.h>

#define LDM_IMAGE_MAX_SIDE 16384  // refuse wider/taller images before allocating

typedef struct ldm_image {
    int width, height;      // pixels
    uint8_t *rgb;           // [height][width][3]
    int n_text;
    char **text_keys, **text_values;   // UTF-8
} ldm_image;

int ldm_png_read(ldm_image *img, const char *path);   // 0 / LDM_ERR
// Write img->rgb with the given text chunks. Refuses to overwrite an existing
// file unless overwrite != 0.
int ldm_png_write(const char *path, const ldm_image *img, int n_text, const char *const *keys,
                  const char *const *values, int overwrite);
void ldm_image_free(ldm_image *img);

#endif
