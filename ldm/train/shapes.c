/*
 * ldm/train/shapes.c -- the procedural shapes dataset (see shapes.h).
 *
 * Mirrors, by algorithm (not code): tools/train/dataset.py; numpy's
 * SeedSequence + PCG64 + Generator (choice, random, integers); Pillow's
 * ImageDraw fills (ellipse by a Bresenham-style walk on a doubled grid,
 * rectangle, polygon by scanlines) and Image.resize(BOX) in fixed point.
 */
#include "shapes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "samplers/brownian.h"   // ldm_seed_sequence (numpy's SeedSequence)

// ---------------------------------------------------------------------------
// The tables of dataset.py, in its order (the draws index into them)

const char *const ldm_shapes_bg_names[LDM_SHAPES_N_BG] = {"white", "black", "gray"};
static const uint8_t bg_rgb[LDM_SHAPES_N_BG][3] = {{255, 255, 255}, {0, 0, 0}, {128, 128, 128}};
static const double bg_prob[LDM_SHAPES_N_BG] = {0.6, 0.2, 0.2};
static const char *const bg_ja[LDM_SHAPES_N_BG] = {"白", "黒", "灰色"};

const char *const ldm_shapes_colour_names[LDM_SHAPES_N_COLOURS] = {
    "red", "green", "blue", "yellow", "purple", "orange"};
static const uint8_t colour_rgb[LDM_SHAPES_N_COLOURS][3] = {
    {220, 40, 40}, {40, 170, 60}, {40, 80, 220}, {240, 210, 40}, {150, 60, 190}, {245, 140, 30}};
static const char *const colour_ja[LDM_SHAPES_N_COLOURS] = {
    "赤い", "緑の", "青い", "黄色い", "紫の", "オレンジの"};

const char *const ldm_shapes_shape_names[LDM_SHAPES_N_SHAPES] = {
    "circle", "square", "triangle", "bar", "star"};
static const char *const shape_ja[LDM_SHAPES_N_SHAPES] = {"丸", "四角", "三角", "棒", "星"};
#define N_BASE_SHAPES 3            // circle, square, triangle: what make_scene draws from
#define BAR_HALF_LENGTH 1.4        // the bar: half length, half thickness (x r)
#define BAR_HALF_THICKNESS 0.4
#define STAR_OUTER 1.25            // the star: outer radius (x r), inner / outer
#define STAR_INNER 0.45

const char *const ldm_shapes_size_names[LDM_SHAPES_N_SIZES] = {"small", "medium", "big"};
static const int size_radius[LDM_SHAPES_N_SIZES] = {7, 10, 14};   // pixels at 64x64
static const char *const size_ja[LDM_SHAPES_N_SIZES] = {"小さい", "", "大きい"};

const char *const ldm_shapes_place_names[LDM_SHAPES_N_PLACES] = {
    "left", "right", "top", "bottom", "center"};
static const int place_xy[LDM_SHAPES_N_PLACES][2] = {{16, 32}, {48, 32}, {32, 16}, {32, 48},
                                                     {32, 32}};
static const char *const place_en[LDM_SHAPES_N_PLACES] = {
    "on the left", "on the right", "at the top", "at the bottom", "in the center"};
static const char *const place_ja[LDM_SHAPES_N_PLACES] = {"左", "右", "上", "下", "真ん中"};

const char *const ldm_shapes_relation_names[LDM_SHAPES_N_RELATIONS] = {
    "above", "below", "left of", "right of"};
static const int relation_dir[LDM_SHAPES_N_RELATIONS][2] = {{0, -1}, {0, 1}, {-1, 0}, {1, 0}};
static const char *const relation_en[LDM_SHAPES_N_RELATIONS] = {
    "above", "below", "to the left of", "to the right of"};
static const char *const relation_ja[LDM_SHAPES_N_RELATIONS] = {"上", "下", "左", "右"};

#define JITTER 3                   // +-pixels around a place or a relation's position
#define SAY_WHITE 0.3              // how often a white background is named
#define TWO_OBJECTS 0.4            // how often a scene has two objects

// ---------------------------------------------------------------------------
// numpy's generator: PCG64 seeded by SeedSequence, and the Generator methods
// dataset.py calls. PCG64 is a 128-bit LCG  s <- s M + inc  whose output is
// the two 64-bit halves xor'ed and rotated right by the top 6 bits of s.

__extension__ typedef unsigned __int128 u128;   // GCC / Clang 128-bit integers

static const u128 PCG_MULT = ((u128)0x2360ed051fc65da4ull << 64) | 0x4385df649fccf645ull;

static u128 u128_of(const uint64_t v[2]) { return ((u128)v[0] << 64) | v[1]; }
static void u128_store(uint64_t v[2], u128 x) { v[0] = (uint64_t)(x >> 64); v[1] = (uint64_t)x; }

static void pcg_step(ldm_np_rng *g) {
    u128_store(g->state, u128_of(g->state) * PCG_MULT + u128_of(g->inc));
}

void ldm_np_rng_init(ldm_np_rng *g, const uint64_t *seed_words, int n) {
    // SeedSequence reads each integer as little-endian 32-bit words (0 as one word)
    uint32_t entropy[64];
    int ne = 0;
    for (int i = 0; i < n && ne < 62; i++) {
        uint64_t v = seed_words[i];
        do { entropy[ne++] = (uint32_t)v; v >>= 32; } while (v);
    }
    // generate_state(4, uint64): 8 words, pairs read little-endian
    uint32_t w[8];
    ldm_seed_sequence(w, 8, entropy, ne, NULL, 0, 4);
    uint64_t v[4];
    for (int i = 0; i < 4; i++) v[i] = (uint64_t)w[2 * i] | (uint64_t)w[2 * i + 1] << 32;
    // PCG's seeding: inc = 2 v[2:4] + 1 (odd), s = 0; step; s += v[0:2]; step
    u128_store(g->inc, (u128_of(v + 2) << 1) | 1u);
    g->state[0] = g->state[1] = 0;
    pcg_step(g);
    u128_store(g->state, u128_of(g->state) + u128_of(v));
    pcg_step(g);
    g->has_half = 0;
    g->half = 0;
}

uint64_t ldm_np_rng_next64(ldm_np_rng *g) {
    pcg_step(g);
    uint64_t hi = g->state[0], lo = g->state[1];
    unsigned rot = (unsigned)(hi >> 58);                  // top 6 bits of the state
    uint64_t x = hi ^ lo;
    return (x >> rot) | (x << ((64 - rot) & 63));
}

// 32-bit draws use a 64-bit draw twice: the low half now, the high half next time
static uint32_t np_next32(ldm_np_rng *g) {
    if (g->has_half) {
        g->has_half = 0;
        return g->half;
    }
    uint64_t v = ldm_np_rng_next64(g);
    g->has_half = 1;
    g->half = (uint32_t)(v >> 32);
    return (uint32_t)v;
}

double ldm_np_rng_random(ldm_np_rng *g) {
    return (double)(ldm_np_rng_next64(g) >> 11) * (1.0 / 9007199254740992.0);  // 53 bits / 2^53
}

// Lemire's nearly divisionless method: the high word of draw * (rng + 1) is
// uniform in [0, rng] once the draws whose low word falls below
// 2^w mod (rng + 1) are rejected.
static uint32_t lemire32(ldm_np_rng *g, uint32_t rng) {
    uint32_t excl = rng + 1;
    uint64_t m = (uint64_t)np_next32(g) * excl;
    if ((uint32_t)m < excl) {
        uint32_t threshold = (UINT32_MAX - rng) % excl;
        while ((uint32_t)m < threshold) m = (uint64_t)np_next32(g) * excl;
    }
    return (uint32_t)(m >> 32);
}

static uint64_t lemire64(ldm_np_rng *g, uint64_t rng) {
    uint64_t excl = rng + 1;
    u128 m = (u128)ldm_np_rng_next64(g) * excl;
    if ((uint64_t)m < excl) {
        uint64_t threshold = (UINT64_MAX - rng) % excl;
        while ((uint64_t)m < threshold) m = (u128)ldm_np_rng_next64(g) * excl;
    }
    return (uint64_t)(m >> 64);
}

int64_t ldm_np_rng_integers(ldm_np_rng *g, int64_t low, int64_t high) {
    uint64_t rng = (uint64_t)high - (uint64_t)low - 1;    // the closed range [low, high - 1]
    uint64_t off;
    if (high <= low || rng == 0) off = 0;                 // one value: no draw
    else if (rng == UINT32_MAX) off = np_next32(g);
    else if (rng < UINT32_MAX) off = lemire32(g, (uint32_t)rng);
    else if (rng == UINT64_MAX) off = ldm_np_rng_next64(g);
    else off = lemire64(g, rng);
    return (int64_t)((uint64_t)low + off);
}

// Generator.choice(len(p), p=p): the index of the first cumulative probability
// (cumsum, normalised by its last value) above one uniform double.
static int np_choice(ldm_np_rng *g, const double *p, int n) {
    double cdf[8], sum = 0.0;
    for (int i = 0; i < n; i++) cdf[i] = sum += p[i];
    double u = ldm_np_rng_random(g);
    int k = 0;
    while (k < n - 1 && cdf[k] / sum <= u) k++;
    return k;
}

// _pick(rng, names): one of n, uniformly
static int pick(ldm_np_rng *g, int n) { return (int)ldm_np_rng_integers(g, 0, n); }

static int jitter(ldm_np_rng *g) { return (int)ldm_np_rng_integers(g, -JITTER, JITTER + 1); }

// ---------------------------------------------------------------------------
// Scenes (make_scene, make_new_shape_scene)

// background and whether the caption names it: the first draws of both kinds
static void draw_background(ldm_shapes_scene *s, ldm_np_rng *g) {
    s->bg = np_choice(g, bg_prob, LDM_SHAPES_N_BG);
    s->say_bg = s->bg != LDM_SHAPES_WHITE || ldm_np_rng_random(g) < SAY_WHITE;
}

// one object at a place: place, jitter x, jitter y (colour, shape, size: the caller)
static void draw_place(ldm_shapes_scene *s, ldm_np_rng *g) {
    s->place = pick(g, LDM_SHAPES_N_PLACES);
    s->relation = -1;
    s->n_objects = 1;
    s->objects[0].x = place_xy[s->place][0] + jitter(g);
    s->objects[0].y = place_xy[s->place][1] + jitter(g);
}

int ldm_shapes_make_scene(ldm_shapes_scene *s, uint64_t seed, int64_t index) {
    if (index < 0) return ldm_error("shapes: scene index must be >= 0, found %lld", (long long)index);
    memset(s, 0, sizeof *s);
    ldm_np_rng g;
    uint64_t key[2] = {seed, (uint64_t)index};
    ldm_np_rng_init(&g, key, 2);
    draw_background(s, &g);
    int two = ldm_np_rng_random(&g) < TWO_OBJECTS;
    if (!two) {
        draw_place(s, &g);
        ldm_shapes_object *o = &s->objects[0];
        o->colour = pick(&g, LDM_SHAPES_N_COLOURS);
        o->shape = pick(&g, N_BASE_SHAPES);
        o->size = pick(&g, LDM_SHAPES_N_SIZES);
        return LDM_OK;
    }
    s->place = -1;
    s->relation = pick(&g, LDM_SHAPES_N_RELATIONS);
    s->n_objects = 2;
    int dx = relation_dir[s->relation][0], dy = relation_dir[s->relation][1];
    int shared = 32 + jitter(&g);                 // the coordinate A and B share
    int near = 18 + jitter(&g), far = 46 + jitter(&g);
    int first = dx + dy < 0 ? near : far;         // A's coordinate: near for above / left of
    int second = dx + dy < 0 ? far : near;
    ldm_shapes_object *a = &s->objects[0], *b = &s->objects[1];
    do {                                          // two small-or-medium objects that differ
        a->colour = pick(&g, LDM_SHAPES_N_COLOURS);
        a->shape = pick(&g, N_BASE_SHAPES);
        a->size = pick(&g, 2);
        b->colour = pick(&g, LDM_SHAPES_N_COLOURS);
        b->shape = pick(&g, N_BASE_SHAPES);
        b->size = pick(&g, 2);
    } while (a->colour == b->colour && a->shape == b->shape);
    if (dx != 0) {
        a->x = first; a->y = shared;
        b->x = second; b->y = shared;
    } else {
        a->x = shared; a->y = first;
        b->x = shared; b->y = second;
    }
    return LDM_OK;
}

int ldm_shapes_make_new_shape_scene(ldm_shapes_scene *s, uint64_t seed, int64_t index, int shape) {
    if (index < 0) return ldm_error("shapes: scene index must be >= 0, found %lld", (long long)index);
    if (shape < 0 || shape >= LDM_SHAPES_N_SHAPES)
        return ldm_error("shapes: unknown shape %d", shape);
    memset(s, 0, sizeof *s);
    ldm_np_rng g;
    uint64_t key[3] = {seed, (uint64_t)index, 1};    // its own stream: never a base scene's
    ldm_np_rng_init(&g, key, 3);
    draw_background(s, &g);
    draw_place(s, &g);
    ldm_shapes_object *o = &s->objects[0];
    o->colour = pick(&g, LDM_SHAPES_N_COLOURS);
    o->shape = shape;
    o->size = pick(&g, LDM_SHAPES_N_SIZES);
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// Captions

typedef struct text { char *buf; size_t cap, len; int overflow; } text;

static void put(text *t, const char *str) {
    size_t n = strlen(str);
    if (t->len + n + 1 > t->cap) {
        t->overflow = 1;
        return;
    }
    memcpy(t->buf + t->len, str, n + 1);
    t->len += n;
}

static int finish(text *t) {
    if (t->overflow) {
        if (t->cap) t->buf[0] = '\0';
        return ldm_error("shapes: caption longer than its buffer of %zu bytes", t->cap);
    }
    return (int)t->len;
}

// "a small red circle", "an orange square" (medium is never said)
static void object_en(text *t, const ldm_shapes_object *o) {
    const char *first = o->size == LDM_SHAPES_MEDIUM ? ldm_shapes_colour_names[o->colour]
                                                     : ldm_shapes_size_names[o->size];
    put(t, strchr("aeiou", first[0]) ? "an " : "a ");
    if (o->size != LDM_SHAPES_MEDIUM) {
        put(t, ldm_shapes_size_names[o->size]);
        put(t, " ");
    }
    put(t, ldm_shapes_colour_names[o->colour]);
    put(t, " ");
    put(t, ldm_shapes_shape_names[o->shape]);
}

// "小さい赤い丸"
static void object_ja(text *t, const ldm_shapes_object *o) {
    put(t, size_ja[o->size]);
    put(t, colour_ja[o->colour]);
    put(t, shape_ja[o->shape]);
}

int ldm_shapes_caption_en(char *buf, size_t n, const ldm_shapes_scene *s) {
    text t = {buf, n, 0, n == 0};
    if (n) buf[0] = '\0';
    object_en(&t, &s->objects[0]);
    put(&t, " ");
    if (s->n_objects == 1) {
        put(&t, place_en[s->place]);
    } else {
        put(&t, relation_en[s->relation]);
        put(&t, " ");
        object_en(&t, &s->objects[1]);
    }
    if (s->say_bg) {
        put(&t, ", on a ");
        put(&t, ldm_shapes_bg_names[s->bg]);
        put(&t, " background");
    }
    return finish(&t);
}

// the place or relation first: "左に赤い丸", "<B>の<rel>に<A>" (= "A rel B")
int ldm_shapes_caption_ja(char *buf, size_t n, const ldm_shapes_scene *s) {
    text t = {buf, n, 0, n == 0};
    if (n) buf[0] = '\0';
    if (s->n_objects == 1) {
        put(&t, place_ja[s->place]);
        put(&t, "に");
        object_ja(&t, &s->objects[0]);
    } else {
        object_ja(&t, &s->objects[1]);
        put(&t, "の");
        put(&t, relation_ja[s->relation]);
        put(&t, "に");
        object_ja(&t, &s->objects[0]);
    }
    if (s->say_bg) {
        put(&t, "、背景は");
        put(&t, bg_ja[s->bg]);
    }
    return finish(&t);
}

// ---------------------------------------------------------------------------
// Drawing at 4x. The 256x256 picture is never held whole: each output row
// averages 4 source rows, so the scene is drawn once per output row into a
// band of those 4 rows (3 KB), every span outside the band dropped. A shape is
// a few hundred spans; drawing it 64 times costs less than the memory would.

#define BIG (LDM_SHAPES_SIZE * LDM_SHAPES_SS)   // 256: the supersampled side

typedef struct band {
    int y0;                                     // first source row of the band
    uint8_t px[LDM_SHAPES_SS][BIG][3];          // [4, 256, 3]
    const uint8_t *ink;                         // the colour being drawn
} band;

// Pillow's horizontal span: pixels x0..x1 of row y, clipped to the picture
static void hline(band *c, int x0, int y, int x1) {
    if (y < 0 || y >= BIG || y < c->y0 || y >= c->y0 + LDM_SHAPES_SS) return;
    if (x0 < 0) x0 = 0;
    else if (x0 >= BIG) return;
    if (x1 < 0) return;
    if (x1 >= BIG) x1 = BIG - 1;
    for (int x = x0; x <= x1; x++) memcpy(c->px[y - c->y0][x], c->ink, 3);
}

// Filled ellipse in the box [x0, x1] x [y0, y1] (corners included), as Pillow
// draws it: with a = x1 - x0, b = y1 - y0, walk the quarter ellipse
// a^2 Y^2 + b^2 X^2 = a^2 b^2 on the doubled grid (X = a, a-2, ..; Y = b mod 2,
// .. , b), from (a, b mod 2) to (a mod 2, b), each step the one of
// up / up-left / left whose point misses the curve least (the earlier on a
// tie, which the dataset's sizes never meet; no left step once X <= 1). The
// first X reached at each height Y is that row's half-width: pixels
// x0 + (a - X)/2 .. x0 + (a + X)/2 on rows y0 + (b -+ Y)/2.
static int64_t ellipse_miss(int64_t a2, int64_t b2, int64_t x, int64_t y) {
    return llabs(a2 * y * y + b2 * x * x - a2 * b2);
}

static void fill_ellipse(band *c, int x0, int y0, int x1, int y1) {
    int a = x1 - x0, b = y1 - y0;
    if (a < 0 || b < 0) return;
    int64_t a2 = (int64_t)a * a, b2 = (int64_t)b * b;
    int X = a, Y = b % 2, row_y = -1;
    for (;;) {
        if (Y != row_y) {                       // first point at this height: a row pair
            row_y = Y;
            int left = x0 + (a - X) / 2, right = x0 + (a + X) / 2;
            hline(c, left, y0 + (b + Y) / 2, right);
            if (Y > 0) hline(c, left, y0 + (b - Y) / 2, right);
        }
        if (X == a % 2 && Y == b) break;
        int nx = X, ny = Y + 2;                 // up
        int64_t best = ellipse_miss(a2, b2, nx, ny);
        if (X > 1) {
            int64_t diag = ellipse_miss(a2, b2, X - 2, Y + 2), side = ellipse_miss(a2, b2, X - 2, Y);
            if (best > diag) { nx = X - 2; ny = Y + 2; best = diag; }
            if (best > side) { nx = X - 2; ny = Y; }
        }
        X = nx;
        Y = ny;
    }
}

// Filled rectangle, corners included (Pillow clips the rows to [0, 256]).
static void fill_rectangle(band *c, int x0, int y0, int x1, int y1) {
    if (y0 > y1) { int t = y0; y0 = y1; y1 = t; }
    if (y0 < 0) y0 = 0;
    else if (y0 >= BIG) return;
    if (y1 < 0) return;
    if (y1 > BIG) y1 = BIG;
    for (int y = y0; y <= y1; y++) hline(c, x0, y, x1);
}

// ---- polygons: Pillow's scanline fill over the edges between integer vertices

#define MAX_VERTS 16

typedef struct edge {
    int x0, y0;                   // the first vertex
    int xmin, ymin, xmax, ymax;   // bounding box
    float dx;                     // x step per row (0 for a horizontal edge)
} edge;

static void edge_init(edge *e, int x0, int y0, int x1, int y1) {
    e->xmin = x0 < x1 ? x0 : x1;
    e->xmax = x0 < x1 ? x1 : x0;
    e->ymin = y0 < y1 ? y0 : y1;
    e->ymax = y0 < y1 ? y1 : y0;
    e->dx = y0 == y1 ? 0.0f : (float)(x1 - x0) / (float)(y1 - y0);
    e->x0 = x0;
    e->y0 = y0;
}

// where the edge crosses row y, in float32 as Pillow computes it
static float edge_x(const edge *e, int y) { return (float)(y - e->y0) * e->dx + (float)e->x0; }

// a crossing's first and last pixel: half away from zero / half toward zero
static int round_half_up(float f) {
    return f >= 0.0f ? (int)floor((double)(f + 0.5f)) : -(int)floor(fabs((double)f) + 0.5);
}
static int round_half_down(float f) {
    return f >= 0.0f ? (int)ceil((double)(f - 0.5f)) : -(int)ceil(fabs((double)f) - 0.5);
}

// A crossing at the end of an edge that meets another edge there (a corner)
// is moved next to the crossings of the two edges on the adjacent row when it
// lies more than a pixel outside both, so that sharp corners stay joined.
// (The dataset's triangles and stars never need the move; it is kept so that
// the fill is Pillow's for any polygon.)
static void join_corner(float *x, const edge *const *table, int i, int y) {
    const edge *cur = table[i];
    for (int k = 0; k < i; k++) {
        const edge *other = table[k];
        if ((y != other->ymin && y != other->ymax) || other->dx == 0) continue;
        if (roundf(*x) != roundf(edge_x(other, y))) continue;
        int off = y == cur->ymax ? -1 : 1;          // the row beyond the corner
        float adj = edge_x(cur, y + off);
        if (y + off < other->ymin || y + off > other->ymax) continue;
        float adj_other = edge_x(other, y + off);
        if (*x > adj + 1 && *x > adj_other + 1) *x = roundf(fmax(adj, adj_other)) + 1;
        else if (*x < adj - 1 && *x < adj_other - 1) *x = roundf(fmin(adj, adj_other)) - 1;
        return;
    }
}

// Filled polygon (even-odd): horizontal edges are drawn as spans; every other
// row y fills between sorted pairs of edge crossings. An edge that ends on y
// above the lowest row counts twice there, so the pairs stay paired at a vertex.
static void fill_polygon(band *c, const int *xy, int count) {
    edge e[MAX_VERTS];
    int n = 0, i;
    for (i = 0; i < count - 1; i++) {
        int x0 = xy[2 * i], y0 = xy[2 * i + 1], x1 = xy[2 * i + 2], y1 = xy[2 * i + 3];
        if (y0 == y1 && i != 0 && y0 == xy[2 * i - 1]) {   // horizontal after horizontal:
            int xp = xy[2 * i - 2];                          // extend it if it goes on
            if (x1 > x0 && x0 > xp) { e[n - 1].xmax = x1; continue; }
            if (x1 < x0 && x0 < xp) { e[n - 1].xmin = x1; continue; }
        }
        edge_init(&e[n++], x0, y0, x1, y1);
    }
    if (xy[2 * i] != xy[0] || xy[2 * i + 1] != xy[1])       // close the outline
        edge_init(&e[n++], xy[2 * i], xy[2 * i + 1], xy[0], xy[1]);

    const edge *table[MAX_VERTS];
    int m = 0, ymin = BIG - 1, ymax = 0;
    for (i = 0; i < n; i++) {
        if (e[i].ymin < ymin) ymin = e[i].ymin;
        if (e[i].ymax > ymax) ymax = e[i].ymax;
        if (e[i].ymin == e[i].ymax) hline(c, e[i].xmin, e[i].ymin, e[i].xmax);
        else table[m++] = &e[i];
    }
    if (ymin < 0) ymin = 0;
    if (ymax > BIG) ymax = BIG;
    for (int y = ymin; y <= ymax; y++) {
        if (y < c->y0 || y >= c->y0 + LDM_SHAPES_SS) continue;   // outside the band
        float xs[2 * MAX_VERTS];
        int j = 0;
        for (i = 0; i < m; i++) {
            const edge *cur = table[i];
            if (y < cur->ymin || y > cur->ymax) continue;
            xs[j++] = edge_x(cur, y);
            if (y == cur->ymax && y < ymax) {                      // counted twice
                xs[j] = xs[j - 1];
                j++;
            } else if ((y == cur->ymin || y == cur->ymax) && cur->dx != 0) {
                join_corner(&xs[j - 1], table, i, y);
            }
        }
        for (int p = 1; p < j; p++)                                // sort (insertion)
            for (int q = p; q > 0 && xs[q - 1] > xs[q]; q--) {
                float t = xs[q]; xs[q] = xs[q - 1]; xs[q - 1] = t;
            }
        for (i = 1; i < j; i += 2) hline(c, round_half_up(xs[i - 1]), y, round_half_down(xs[i]));
    }
}

// ---- one object, as dataset._draw_object does at 4x. Pillow takes integer
// corners: Python's float coordinates are truncated toward zero.

static void draw_object(band *c, const ldm_shapes_object *o) {
    int r = size_radius[o->size] * LDM_SHAPES_SS;
    int cx = o->x * LDM_SHAPES_SS, cy = o->y * LDM_SHAPES_SS;
    c->ink = colour_rgb[o->colour];
    switch (o->shape) {
    case LDM_SHAPES_CIRCLE:
        fill_ellipse(c, cx - r, cy - r, cx + r, cy + r);
        break;
    case LDM_SHAPES_SQUARE: {
        int h = (int)nearbyint(0.9 * r);                  // Python round(): half to even
        fill_rectangle(c, cx - h, cy - h, cx + h, cy + h);
        break;
    }
    case LDM_SHAPES_TRIANGLE: {                           // pointing up, centroid at (cx, cy)
        int xy[6] = {cx, (int)(cy - 1.15 * r), (int)(cx - 1.15 * r), (int)(cy + 0.85 * r),
                     (int)(cx + 1.15 * r), (int)(cy + 0.85 * r)};
        fill_polygon(c, xy, 3);
        break;
    }
    case LDM_SHAPES_BAR: {                                // horizontal, 3.5 : 1
        double hx = BAR_HALF_LENGTH * r, hy = BAR_HALF_THICKNESS * r;
        fill_rectangle(c, (int)(cx - hx), (int)(cy - hy), (int)(cx + hx), (int)(cy + hy));
        break;
    }
    default: {                                            // star: five points, one up
        double outer = STAR_OUTER * r;
        int xy[20];
        for (int k = 0; k < 10; k++) {
            double rad = k % 2 == 0 ? outer : STAR_INNER * outer;
            double ang = M_PI * k / 5;
            xy[2 * k] = (int)(cx + rad * sin(ang));
            xy[2 * k + 1] = (int)(cy - rad * cos(ang));
        }
        fill_polygon(c, xy, 10);
        break;
    }
    }
}

// Image.resize((64, 64), BOX) of the 4x picture: each output pixel is the
// mean of a 4x4 block, taken in two passes (rows, then columns) that each
// round to uint8. Pillow's weights, 1/4 in 22-bit fixed point, make each pass
// (sum + 2) >> 2.
void ldm_shapes_render(uint8_t *rgb, const ldm_shapes_scene *s) {
    band c;
    for (int oy = 0; oy < LDM_SHAPES_SIZE; oy++) {
        c.y0 = oy * LDM_SHAPES_SS;
        for (int r = 0; r < LDM_SHAPES_SS; r++)
            for (int x = 0; x < BIG; x++) memcpy(c.px[r][x], bg_rgb[s->bg], 3);
        for (int k = 0; k < s->n_objects; k++) draw_object(&c, &s->objects[k]);
        for (int ox = 0; ox < LDM_SHAPES_SIZE; ox++)
            for (int ch = 0; ch < 3; ch++) {
                int col = 0;
                for (int r = 0; r < LDM_SHAPES_SS; r++) {
                    int row = 0;                           // horizontal pass
                    for (int k = 0; k < LDM_SHAPES_SS; k++) row += c.px[r][ox * LDM_SHAPES_SS + k][ch];
                    col += (row + 2) >> 2;
                }
                rgb[((size_t)oy * LDM_SHAPES_SIZE + ox) * 3 + ch] = (uint8_t)((col + 2) >> 2);  // vertical
            }
    }
}
