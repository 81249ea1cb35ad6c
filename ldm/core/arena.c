/*
 * ldm/core/arena.c -- the per-forward activation arena (see arena.h).
 *
 * A position is a byte count from the start of the chunk; the tensor at
 * position p with n bytes lives at base + p when p + n <= size, else in a
 * block of its own (blocks[], kept in position order, so releasing frees
 * the blocks from the end). `peak` is what one chunk needs for the forward.
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

static char *align_up(void *p) {
    return (char *)(((uintptr_t)p + LDM_ARENA_ALIGN - 1) & ~(uintptr_t)(LDM_ARENA_ALIGN - 1));
}

// Frees the blocks at positions >= mark (the last ones).
static void free_blocks_from(ldm_arena *a, size_t mark) {
    while (a->n_blocks > 0 && a->blocks[a->n_blocks - 1].pos >= mark)
        a->ops->free(a->blocks[--a->n_blocks].raw);
}

void ldm_arena_free(ldm_arena *a) {
    if (a->ops) {
        free_blocks_from(a, 0);
        if (a->raw) a->ops->free(a->raw);
    }
    free(a->blocks);
    a->blocks = NULL;
    a->raw = a->base = NULL;
    a->size = a->used = a->peak = a->peak_ever = 0;
    a->n_blocks = a->cap_blocks = 0;
}

void ldm_arena_reset(ldm_arena *a) {
    free_blocks_from(a, 0);
    if (a->peak > a->peak_ever) a->peak_ever = a->peak;
    if (a->size < a->peak_ever) {   // blocks were needed: one chunk for all next time
        if (a->raw) a->ops->free(a->raw);
        a->raw = a->ops->alloc(a->peak_ever + LDM_ARENA_ALIGN);
        a->base = a->raw ? align_up(a->raw) : NULL;
        a->size = a->raw ? a->peak_ever : 0;
        if (a->raw) a->n_allocs++;
    }
    a->used = a->peak = 0;
}

size_t ldm_arena_mark(const ldm_arena *a) { return a->used; }

void ldm_arena_release(ldm_arena *a, size_t mark) {
    LDM_ASSERT(mark <= a->used, "release to a mark at or before the top", NULL);
    free_blocks_from(a, mark);
    a->used = mark;
}

// Bytes an n-float tensor takes: whole aligned units, at least one.
static size_t tensor_bytes(int64_t numel) {
    size_t n = ((size_t)numel * sizeof(float) + LDM_ARENA_ALIGN - 1) &
               ~(size_t)(LDM_ARENA_ALIGN - 1);
    return n ? n : LDM_ARENA_ALIGN;
}

// Reserves n bytes at position a->used: in the chunk, or in a block of its
// own past its end. Returns their address, or NULL (out of memory).
static char *bump(ldm_arena *a, size_t n) {
    char *p;
    if (a->used + n <= a->size) {
        p = a->base + a->used;
    } else {
        if (a->n_blocks == a->cap_blocks) {
            int cap = a->cap_blocks ? 2 * a->cap_blocks : 16;
            ldm_arena_block *b = realloc(a->blocks, (size_t)cap * sizeof *b);
            if (!b) return NULL;
            a->blocks = b;
            a->cap_blocks = cap;
        }
        void *raw = a->ops->alloc(n + LDM_ARENA_ALIGN);
        if (!raw) return NULL;
        a->n_allocs++;
        a->blocks[a->n_blocks++] = (ldm_arena_block){raw, a->used};
        p = align_up(raw);
    }
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
    if (ndim > 0) memcpy(t->shape, shape, (size_t)ndim * sizeof(int64_t));   // NULL: a scalar
    t->numel = numel;
    t->ops = a->ops;
    t->owns = 0;
    return 0;
}

void ldm_arena_release_keep(ldm_arena *a, size_t mark, ldm_tensor *t) {
    size_t n = tensor_bytes(t->numel), bytes = (size_t)t->numel * sizeof(float);
    char *src = (char *)t->data;
    // where t is: its position, and its block (-1: in the chunk)
    int blk = a->n_blocks - 1;
    while (blk >= 0 && align_up(a->blocks[blk].raw) != src) blk--;
    size_t at = blk >= 0 ? a->blocks[blk].pos : (size_t)(src - a->base);
    LDM_ASSERT(mark <= at && at + n <= a->used, "keep a tensor made after the mark", t);
    if (at == mark) {   // already there
        ldm_arena_release(a, at + n);
        return;
    }
    if (blk < 0) {   // in the chunk, moving down: dst < src, in pieces of at most the gap
        size_t gap = at - mark;
        ldm_arena_release(a, at + n);
        if (gap < n / 16) return;   // the move would save little: t stays
        char *dst = a->base + mark;
        size_t step = gap < bytes ? gap : bytes;
        for (size_t off = 0; off < bytes; off += step)
            a->ops->copy(dst + off, src + off, bytes - off < step ? bytes - off : step);
        t->data = (float *)dst;
        a->used = mark + n;
        return;
    }
    // in a block of its own: take it out of the list, release the rest
    ldm_arena_block b = a->blocks[blk];
    memmove(&a->blocks[blk], &a->blocks[blk + 1], (size_t)(a->n_blocks - blk - 1) * sizeof b);
    a->n_blocks--;
    ldm_arena_release(a, mark);
    if (mark + n <= a->size) {   // it fits in the chunk now: copy it in, free the block
        a->ops->copy(a->base + mark, src, bytes);
        a->ops->free(b.raw);
        t->data = (float *)(a->base + mark);
    } else {                     // still past the end: the block just takes position mark
        b.pos = mark;
        a->blocks[a->n_blocks++] = b;   // room: it was in the list a moment ago
    }
    a->used = mark + n;
}
