/*
 * ldm/core/arena.h -- where the activations of a forward pass live.
 *
 * Every model (ldm_clip, ldm_unet, ldm_vae) owns one arena. A forward starts
 * by releasing it to empty, takes every intermediate tensor from it, and
 * gives memory back by position, not tensor by tensor (the activation block
 * of llm.c, a ggml context):
 *
 *   ldm_arena_reset(A);                          // the forward begins: all free
 *   size_t m = ldm_arena_mark(A);                // a block begins
 *   if (ldm_arena_tensor(A, &q, LDM_SHAPE(B, T, D))) return LDM_ERR;
 *   ...                                          // use q
 *   ldm_arena_release(A, m);                     // q and all after it are free
 *
 * A failed allocation sets ldm_error (naming the shape and the arena) and the
 * caller just returns LDM_ERR: nothing is freed on the way out, the next
 * ldm_arena_reset releases it all. So a block has no cleanup code.
 *
 * Memory: a bump allocator over one chunk of the backend's memory (ops->alloc:
 * host memory on ref/cpu, device memory on cuda; the arena never touches the
 * bytes itself). A position counts bytes from the start of the chunk; an
 * allocation past its end gets a block of its own from ops->alloc, freed
 * when released (so a first forward, with no chunk yet, holds exactly what is
 * live). ldm_arena_reset then replaces the chunk by one of the largest peak
 * seen: from the second forward of the same size on (the UNet runs 20-50
 * times per image), a forward allocates nothing. Every tensor starts on a
 * LDM_ARENA_ALIGN byte boundary; `peak` is the high-water mark of the last
 * forward, the activation memory it needed (alignment included).
 *
 * Tensors from an arena are views (owns = 0): ldm_tensor_free does nothing
 * on them, and they are valid until released past or the arena is reset.
 */
#ifndef LDM_ARENA_H
#define LDM_ARENA_H

#include <stddef.h>
#include <stdint.h>
#include "ldm/core/tensor.h"

#define LDM_ARENA_ALIGN 64          // bytes; a cache line, and enough for any SIMD load

struct ldm_ops;

// A tensor past the end of the chunk, in a block of its own.
typedef struct ldm_arena_block {
    void *raw;                 // as returned by ops->alloc (freed with ops->free)
    size_t pos;                // its position
} ldm_arena_block;

typedef struct ldm_arena {
    const char *name;          // "unet", "vae", "clip": named in error messages
    const struct ldm_ops *ops; // the backend whose memory the chunk and blocks are
    void *raw;                 // the chunk, as returned by ops->alloc (NULL: none yet)
    char *base;                // raw rounded up to LDM_ARENA_ALIGN: position 0
    size_t size;               // usable bytes of the chunk
    ldm_arena_block *blocks;   // [n_blocks] (host array, capacity cap_blocks), by position
    int n_blocks, cap_blocks;
    size_t used;               // position of the next allocation
    size_t peak;               // high-water mark of `used` since the last reset
    size_t peak_ever;          // largest peak of any forward (the size of the next chunk)
    int64_t n_allocs;          // ops->alloc calls made so far (tests check reuse)
} ldm_arena;

// An empty arena on backend ops; allocates nothing yet. name must outlive it.
void ldm_arena_init(ldm_arena *a, const struct ldm_ops *ops, const char *name);
// Frees every chunk; the arena is then empty and may be used again.
void ldm_arena_free(ldm_arena *a);

// Release everything (start of a forward) and zero `peak`. When the last
// forward needed blocks past the chunk, the chunk is replaced by one of
// peak_ever bytes (if that allocation fails the arena goes on without a
// chunk, and ldm_arena_tensor reports any real shortage).
void ldm_arena_reset(ldm_arena *a);

// A position to come back to: the tensors made after it are released together.
size_t ldm_arena_mark(const ldm_arena *a);
void ldm_arena_release(ldm_arena *a, size_t mark);

// *t = a new uninitialised tensor of this shape from the arena (a view:
// owns = 0). Zero-size shapes get a valid pointer of their own.
// 0 / LDM_ERR (bad shape, or the backend is out of memory: the message names
// the shape, its size, the arena and how much it already holds).
//   if (ldm_arena_tensor(A, &h, LDM_SHAPE(B, C, H, W))) return LDM_ERR;
int ldm_arena_tensor(ldm_arena *a, ldm_tensor *t, const int64_t *shape, int ndim);

// Release everything after `mark` except *t, which moves down to start at
// mark (the "x = f(x)" of PyTorch code: f's output replaces its input).
// t must have been made from this arena after mark, and nothing else made
// after mark may still be needed. The bytes move through ops->copy, in
// pieces that never overlap (a block of its own just changes position);
// when the move would save less than 1/16 of t, t stays where it is.
// Updates t->data.
void ldm_arena_release_keep(ldm_arena *a, size_t mark, ldm_tensor *t);

#endif
