/*
 * ldm/core/arena.c -- the per-forward activation arena (see arena.h).
 *
 * Positions count bytes as if the arena were one contiguous chunk: a mark
 * is a position, releasing is one assignment, and `peak` is exactly what one
 * chunk would need. The chunks map positions to memory: chunks[0..cur] are in
 * use, chunk i holding the positions from chunks[i].start on at its base.
 * An allocation that does not fit in the rest of chunk `cur` starts at the
 * base of the next chunk (allocated when missing, at least as large as all
 * the chunks before it together); the tail it skips is not counted, and the
 * next reset merges the chunks into one of peak_ever bytes, so from the
 * second forward on every position is simply base + position.
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
    a->n_chunks = a->cur = 0;
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
    c[a->n_chunks++] = (ldm_arena_chunk){raw, (char *)p, size, 0};
    return 0;
}

void ldm_arena_reset(ldm_arena *a) {
    if (a->peak > a->peak_ever) a->peak_ever = a->peak;
    if (a->n_chunks > 1) {   // merge: the next forward fits in one chunk
        free_chunks(a);
        add_chunk(a, a->peak_ever);
    }
    a->used = a->peak = 0;
    a->cur = 0;
}

size_t ldm_arena_mark(const ldm_arena *a) { return a->used; }

void ldm_arena_release(ldm_arena *a, size_t mark) {
    LDM_ASSERT(mark <= a->used, "release to a mark at or before the top", NULL);
    a->used = mark;
    while (a->cur > 0 && a->chunks[a->cur].start > mark) a->cur--;
}

// Bytes an n-float tensor takes: whole aligned units, at least one.
static size_t tensor_bytes(int64_t numel) {
    size_t n = ((size_t)numel * sizeof(float) + LDM_ARENA_ALIGN - 1) &
               ~(size_t)(LDM_ARENA_ALIGN - 1);
    return n ? n : LDM_ARENA_ALIGN;
}

// Reserves n bytes (a multiple of LDM_ARENA_ALIGN) at position a->used;
// returns their address, or NULL when the backend has no memory for a chunk.
static char *bump(ldm_arena *a, size_t n) {
    if (a->n_chunks == 0 || a->used - a->chunks[a->cur].start + n > a->chunks[a->cur].size) {
        // the rest of chunk cur is too small: go on at the base of the next one
        if (a->n_chunks > 0) a->cur++;
        if (a->cur == a->n_chunks) {
            size_t total = 0;
            for (int i = 0; i < a->n_chunks; i++) total += a->chunks[i].size;
            size_t size = total > n ? total : n;   // doubling, and room for n
            if (size < LDM_ARENA_MIN_CHUNK) size = LDM_ARENA_MIN_CHUNK;
            if (add_chunk(a, size)) {
                if (a->cur > 0) a->cur--;
                return NULL;
            }
        }
        if (n > a->chunks[a->cur].size) {   // a chunk from earlier, too small: skip it too
            a->chunks[a->cur].start = a->used;
            return bump(a, n);
        }
        a->chunks[a->cur].start = a->used;
    }
    ldm_arena_chunk *c = &a->chunks[a->cur];
    char *p = c->base + (a->used - c->start);
    a->used += n;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

int ldm_arena_tensor(ldm_arena *a, ldm_tensor *t, const int64_t *shape, int ndim) {
    char s[128];
    memset(t, 0, sizeof *t);
    int64_t numel = ldm_shape_numel(shape, ndim < 0 ? 0 : ndim);
    if (ndim < 0 || ndim > LDM_MAX_DIMS || numel < 0 ||
        (uint64_t)numel > (SIZE_MAX / 2 - LDM_ARENA_ALIGN) / sizeof(float))
        return ldm_error("%s: invalid activation shape %s", a->name,
                         ldm_shape_str(s, sizeof s, shape, ndim < 0 ? 0 : ndim));
    char *p = bump(a, tensor_bytes(numel));   // a zero-size tensor: one unit of its own
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

void ldm_arena_release_keep(ldm_arena *a, size_t mark, ldm_tensor *t) {
    size_t n = tensor_bytes(t->numel), bytes = (size_t)t->numel * sizeof(float);
    char *src = (char *)t->data;
    // t's chunk and position
    int j = a->cur;
    while (j > 0 && ((uintptr_t)src < (uintptr_t)a->chunks[j].base ||
                     (uintptr_t)src >= (uintptr_t)a->chunks[j].base + a->chunks[j].size))
        j--;
    size_t at = a->chunks[j].start + (size_t)(src - a->chunks[j].base);
    LDM_ASSERT(mark <= at && at + n <= a->used, "keep a tensor made after the mark", t);
    size_t start_j = a->chunks[j].start;
    ldm_arena_release(a, mark);
    char *dst = bump(a, n);   // where t would be made now: at or before src, no new chunk
    if (dst == src) return;
    size_t gap = a->cur == j ? (size_t)(src - dst) : bytes;   // other chunk: no overlap
    if (gap < n / 16) {   // the move would save little: t stays, what follows it is released
        a->chunks[j].start = start_j;
        a->cur = j;
        a->used = at + n;
        return;
    }
    size_t step = gap < bytes ? gap : bytes;   // pieces that never overlap, front to back
    for (size_t off = 0; off < bytes; off += step)
        a->ops->copy(dst + off, src + off, bytes - off < step ? bytes - off : step);
    t->data = (float *)dst;
}
