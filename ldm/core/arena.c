/*
 * ldm/core/arena.c -- the per-forward activation arena (see arena.h).
 *
 * Positions are byte counts through the chunks in order: position p is in
 * the first chunk i with p < size_0 + ... + size_i. An allocation that does
 * not fit in the rest of its chunk starts at the next chunk (allocated when
 * missing, at least as large as all the chunks before it together), and the
 * skipped tail counts as used until released. A mark is such a position, so
 * releasing is one assignment.
 */
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/ops.h"
#include "ldm/core/arena.h"
#include "ldm/core/error.h"

void ldm_arena_init(ldm_arena *a, const struct ldm_ops *ops, const char *name) {
    memset(a, 0, sizeof *a);
    a->ops = ops;
    a->name = name;
}

static void free_chunks(ldm_arena *a) {
    for (int i = 0; i < a->n_chunks; i++) a->ops->free(a->chunks[i].raw);
    free(a->chunks);
    a->chunks = NULL;
    a->n_chunks = 0;
}

void ldm_arena_free(ldm_arena *a) {
    if (a->ops) free_chunks(a);
    a->used = a->peak = a->peak_ever = 0;
}

// Appends a chunk of at least `size` usable bytes. 0 / LDM_ERR (no message).
static int add_chunk(ldm_arena *a, size_t size) {
    if (size > SIZE_MAX - LDM_ARENA_ALIGN) return LDM_ERR;
    ldm_arena_chunk *c = realloc(a->chunks, (size_t)(a->n_chunks + 1) * sizeof *c);
    if (!c) return LDM_ERR;
    a->chunks = c;
    void *raw = a->ops->alloc(size + LDM_ARENA_ALIGN);
    if (!raw) return LDM_ERR;
    a->n_allocs++;
    uintptr_t p = ((uintptr_t)raw + LDM_ARENA_ALIGN - 1) & ~(uintptr_t)(LDM_ARENA_ALIGN - 1);
    c[a->n_chunks++] = (ldm_arena_chunk){raw, (char *)p, size};
    return 0;
}

void ldm_arena_reset(ldm_arena *a) {
    if (a->peak > a->peak_ever) a->peak_ever = a->peak;
    if (a->n_chunks > 1) {   // merge: the next forward fits in one chunk
        free_chunks(a);
        add_chunk(a, a->peak_ever);
    }
    a->used = a->peak = 0;
}

size_t ldm_arena_mark(const ldm_arena *a) { return a->used; }

void ldm_arena_release(ldm_arena *a, size_t mark) {
    LDM_ASSERT(mark <= a->used, "release to a mark at or before the top", NULL);
    a->used = mark;
}

// Reserves n bytes (a multiple of LDM_ARENA_ALIGN) at the first fit from
// position `from`; returns their address and sets a->used past them, or NULL.
static char *bump(ldm_arena *a, size_t from, size_t n) {
    size_t start = 0;   // position of chunk i
    for (int i = 0;; i++) {
        if (i == a->n_chunks) {
            // a new chunk: as large as all before it (doubling), and >= n
            size_t size = start > n ? start : n;
            if (size < LDM_ARENA_MIN_CHUNK) size = LDM_ARENA_MIN_CHUNK;
            if (add_chunk(a, size)) return NULL;
        }
        ldm_arena_chunk *c = &a->chunks[i];
        if (from < start + c->size && n <= start + c->size - (from > start ? from : start)) {
            size_t pos = from > start ? from : start;
            a->used = pos + n;
            if (a->used > a->peak) a->peak = a->used;
            return c->base + (pos - start);
        }
        start += c->size;
    }
}

// Bytes an n-float tensor takes: whole aligned units, at least one.
static size_t tensor_bytes(int64_t numel) {
    size_t n = ((size_t)numel * sizeof(float) + LDM_ARENA_ALIGN - 1) &
               ~(size_t)(LDM_ARENA_ALIGN - 1);
    return n ? n : LDM_ARENA_ALIGN;
}

int ldm_arena_tensor(ldm_arena *a, ldm_tensor *t, const int64_t *shape, int ndim) {
    char s[128];
    memset(t, 0, sizeof *t);
    int64_t numel = ldm_shape_numel(shape, ndim < 0 ? 0 : ndim);
    if (ndim < 0 || ndim > LDM_MAX_DIMS || numel < 0 ||
        (uint64_t)numel > (SIZE_MAX - LDM_ARENA_ALIGN) / sizeof(float))
        return ldm_error("%s: invalid activation shape %s", a->name,
                         ldm_shape_str(s, sizeof s, shape, ndim < 0 ? 0 : ndim));
    char *p = bump(a, a->used, tensor_bytes(numel));   // a zero-size tensor: one unit
    if (!p)
        return ldm_error("%s: out of memory for a %s activation (%.1f MiB) on backend %s, "
                         "with %.1f MiB of activations already held -- try a smaller image "
                         "or batch", a->name, ldm_shape_str(s, sizeof s, shape, ndim),
                         numel * 4.0 / (1 << 20), a->ops->name, a->used / 1048576.0);
    t->data = (float *)p;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));
    t->numel = numel;
    t->ops = a->ops;
    t->owns = 0;
    return 0;
}

// Position of address p (inside a chunk), and that chunk's index in *chunk.
static size_t position_of(const ldm_arena *a, const char *p, int *chunk) {
    size_t start = 0;
    for (int i = 0; i < a->n_chunks; i++) {
        const ldm_arena_chunk *c = &a->chunks[i];
        if ((uintptr_t)p >= (uintptr_t)c->base && (uintptr_t)p < (uintptr_t)c->base + c->size) {
            *chunk = i;
            return start + (size_t)(p - c->base);
        }
        start += c->size;
    }
    LDM_ASSERT(0, "tensor made from this arena", NULL);
    return 0;
}

void ldm_arena_release_keep(ldm_arena *a, size_t mark, ldm_tensor *t) {
    size_t n = tensor_bytes(t->numel), bytes = (size_t)t->numel * sizeof(float);
    int cs = 0, cd = 0;
    char *src = (char *)t->data;
    size_t at = position_of(a, src, &cs);
    LDM_ASSERT(mark <= at && at + n <= a->used, "keep a tensor made after the mark", t);
    char *dst = bump(a, mark, n);   // first fit from the mark: at or before t, no new chunk
    size_t to = position_of(a, dst, &cd);
    if (to == at) return;
    size_t gap = cd == cs ? (size_t)(src - dst) : bytes;   // other chunk: no overlap
    if (gap < n / 16) {   // the move would save little: t stays, the rest is released
        a->used = at + n;
        return;
    }
    size_t step = gap < bytes ? gap : bytes;   // pieces that never overlap, front to back
    for (size_t off = 0; off < bytes; off += step)
        a->ops->copy(dst + off, src + off, bytes - off < step ? bytes - off : step);
    t->data = (float *)dst;
}
