/*
 * ldm/train/shapes.h -- the procedural "shapes" dataset the tiny model is
 * trained on, in C: the same scenes, captions and pixels as
 * tools/train/dataset.py, so training needs no Python.
 *
 * A scene is a pure function of (seed, index): one or two flat-coloured
 * shapes on a plain background, drawn from numpy's generator
 * default_rng([seed, index]):
 *   SeedSequence([seed, index]) -> PCG64 (O'Neill, "PCG: A Family of Simple
 *   Fast Space-Efficient Statistically Good Algorithms for Random Number
 *   Generation", 2014; 128-bit LCG, XSL-RR output), then numpy's
 *   Generator.choice(p=...) (inverse CDF of one double), random() (53 bits),
 *   and integers(lo, hi) (Lemire, "Fast Random Integer Generation in an
 *   Interval", 2019, on 32-bit halves of the 64-bit draws).
 * The draws, in dataset.py's order (make_scene):
 *   background  white 60% | black 20% | gray 20%           choice
 *   say_bg      always for black / gray; white: random() < 0.3
 *   two         random() < 0.4
 *   one object  place (5), x jitter, y jitter (-3..3), colour (6), shape (3),
 *               size (3)
 *   two objects relation (4), shared coordinate, A's and B's coordinate along
 *               the axis (each +-3), then colour, shape, size (small|medium)
 *               of A and of B, drawn again until A and B differ in colour or
 *               shape.
 * Captions (English, Japanese) name exactly what was drawn; see
 * tools/train/dataset.py for the grammar.
 *
 * The image: 64x64 RGB, drawn at 4x (256x256) with Pillow's rasterisers
 * (ImageDraw ellipse / rectangle / polygon: integer corners, no
 * anti-aliasing), then averaged 4x4 as Pillow's Image.resize(BOX) does it:
 * rows first, each pass rounding to uint8 ((sum + 2) >> 2), which is what
 * anti-aliases the edges.
 */
#ifndef LDM_TRAIN_SHAPES_H
#define LDM_TRAIN_SHAPES_H

#include <stddef.h>
#include <stdint.h>

#define LDM_SHAPES_SIZE 64   // image side, pixels
#define LDM_SHAPES_SS 4      // supersampling factor of the drawing

enum { LDM_SHAPES_WHITE, LDM_SHAPES_BLACK, LDM_SHAPES_GRAY, LDM_SHAPES_N_BG };
enum { LDM_SHAPES_RED, LDM_SHAPES_GREEN, LDM_SHAPES_BLUE, LDM_SHAPES_YELLOW, LDM_SHAPES_PURPLE,
       LDM_SHAPES_ORANGE, LDM_SHAPES_N_COLOURS };
// circle, square, triangle: the base set; bar, star: only in new-shape scenes
enum { LDM_SHAPES_CIRCLE, LDM_SHAPES_SQUARE, LDM_SHAPES_TRIANGLE, LDM_SHAPES_BAR,
       LDM_SHAPES_STAR, LDM_SHAPES_N_SHAPES };
enum { LDM_SHAPES_SMALL, LDM_SHAPES_MEDIUM, LDM_SHAPES_BIG, LDM_SHAPES_N_SIZES };
enum { LDM_SHAPES_LEFT, LDM_SHAPES_RIGHT, LDM_SHAPES_TOP, LDM_SHAPES_BOTTOM, LDM_SHAPES_CENTER,
       LDM_SHAPES_N_PLACES };
// "A <relation> B"
enum { LDM_SHAPES_ABOVE, LDM_SHAPES_BELOW, LDM_SHAPES_LEFT_OF, LDM_SHAPES_RIGHT_OF,
       LDM_SHAPES_N_RELATIONS };

// dataset.py's names (the keys of its tables), for printing and tests
extern const char *const ldm_shapes_bg_names[LDM_SHAPES_N_BG];            // "white" ...
extern const char *const ldm_shapes_colour_names[LDM_SHAPES_N_COLOURS];   // "red" ...
extern const char *const ldm_shapes_shape_names[LDM_SHAPES_N_SHAPES];     // "circle" ...
extern const char *const ldm_shapes_size_names[LDM_SHAPES_N_SIZES];       // "small" ...
extern const char *const ldm_shapes_place_names[LDM_SHAPES_N_PLACES];     // "left" ...
extern const char *const ldm_shapes_relation_names[LDM_SHAPES_N_RELATIONS];  // "above", "left of"

typedef struct ldm_shapes_object {
    int colour, shape, size;     // LDM_SHAPES_RED.., LDM_SHAPES_CIRCLE.., LDM_SHAPES_SMALL..
    int x, y;                    // centre in pixels of the 64x64 image
} ldm_shapes_object;

typedef struct ldm_shapes_scene {
    int bg;                      // LDM_SHAPES_WHITE..
    int say_bg;                  // the caption names the background
    int place;                   // one object: LDM_SHAPES_LEFT..; -1 with two
    int relation;                // two objects: LDM_SHAPES_ABOVE..; -1 with one
    int n_objects;               // 1 or 2
    ldm_shapes_object objects[2];  // drawn in order; with two, [0] is A and [1] is B
} ldm_shapes_scene;

// Scene `index` of dataset `seed` (dataset.make_scene). 0 / LDM_ERR (index < 0).
int ldm_shapes_make_scene(ldm_shapes_scene *s, uint64_t seed, int64_t index);
// Scene `index` of the new-shape set `seed` (dataset.make_new_shape_scene): one
// object of `shape` (LDM_SHAPES_BAR or LDM_SHAPES_STAR; any shape is accepted)
// from the stream default_rng([seed, index, 1]). 0 / LDM_ERR.
int ldm_shapes_make_new_shape_scene(ldm_shapes_scene *s, uint64_t seed, int64_t index, int shape);

// rgb [64, 64, 3] (HWC, uint8) <- the scene drawn (dataset.render).
void ldm_shapes_render(uint8_t *rgb, const ldm_shapes_scene *s);

// The captions (dataset.caption_en / caption_ja, UTF-8) into buf[n]: the length
// in bytes (without the terminating NUL), or LDM_ERR when n is too small.
int ldm_shapes_caption_en(char *buf, size_t n, const ldm_shapes_scene *s);
int ldm_shapes_caption_ja(char *buf, size_t n, const ldm_shapes_scene *s);

// ---- numpy's generator, exposed for tests
typedef struct ldm_np_rng {
    uint64_t state[2], inc[2];   // PCG64's 128-bit state and increment, [high, low]
    int has_half;                // a 32-bit half of the last 64-bit draw is waiting
    uint32_t half;               //   ... its value (the high half)
} ldm_np_rng;

// numpy.random.default_rng(list of n <= 31 non-negative integers), e.g. {seed, index}.
void ldm_np_rng_init(ldm_np_rng *g, const uint64_t *seed_words, int n);
uint64_t ldm_np_rng_next64(ldm_np_rng *g);                 // bit_generator.random_raw()
double ldm_np_rng_random(ldm_np_rng *g);                   // Generator.random()
int64_t ldm_np_rng_integers(ldm_np_rng *g, int64_t low, int64_t high);  // integers(low, high)

#endif
