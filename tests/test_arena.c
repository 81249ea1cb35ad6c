/*
 * tests/test_arena.c -- the activation arena (ldm/core/arena.c): mark and
 * release, alignment, the high-water mark, reuse of its memory across
 * forwards (blocks in the first, one chunk after), release_keep (overlapping,
 * from a block, in place), zero-size tensors, and the out-of-memory path
 * through an op table whose alloc fails on demand.
 */
#include <stdint.h>
#include <string.h>
#include "ldm/backend/ops.h"
#include "ldm/core/arena.h"
#include "ldm/core/error.h"
#include "tests/test.h"

// ldm_ops_cpu with an alloc that fails once `fail_after` more calls were made
// (-1: never) and counts live allocations.
static struct ldm_ops failing_ops;
static int fail_after = -1, live_allocs;
static void *failing_alloc(size_t n) {
    if (fail_after == 0) return NULL;
    if (fail_after > 0) fail_after--;
    live_allocs++;
    return ldm_ops_cpu.alloc(n);
}
static void failing_free(void *p) {
    live_allocs--;
    ldm_ops_cpu.free(p);
}

static int aligned(const ldm_tensor *t) { return (uintptr_t)t->data % LDM_ARENA_ALIGN == 0; }

// An arena whose chunk has `bytes` (a first forward of that size, then a reset).
static void warm(ldm_arena *A, size_t bytes) {
    ldm_tensor t;
    ldm_arena_tensor(A, &t, LDM_SHAPE((int64_t)(bytes / 4)));
    ldm_arena_reset(A);
}

static void test_mark_release(void) {
    ldm_arena A;
    ldm_arena_init(&A, &ldm_ops_ref, "test");   // ref: malloc, only 16-byte aligned itself
    ldm_tensor a, b, c, d;
    // first forward, no chunk yet: a block per tensor, aligned all the same
    int rc = ldm_arena_tensor(&A, &a, LDM_SHAPE(3, 5)) | ldm_arena_tensor(&A, &b, LDM_SHAPE(7));
    test_check(rc == 0 && A.n_blocks == 2 && aligned(&a) && aligned(&b) && A.peak == 128,
               "without a chunk: aligned blocks", "%d blocks, peak %zu", A.n_blocks, A.peak);
    ldm_arena_release(&A, 64);
    test_check(A.n_blocks == 1 && ldm_arena_mark(&A) == 64, "release frees the blocks after the mark",
               "%d blocks", A.n_blocks);
    ldm_arena_reset(&A);
    test_check(A.n_blocks == 0 && A.size == 128 && A.raw && A.peak == 0, "reset: one chunk of the peak",
               "size %zu", A.size);
    warm(&A, 4096);
    rc = ldm_arena_tensor(&A, &a, LDM_SHAPE(3, 5));              // 60 bytes -> one unit
    size_t m = ldm_arena_mark(&A);
    rc |= ldm_arena_tensor(&A, &b, LDM_SHAPE(2, 3, 7));          // 168 bytes -> 192
    rc |= ldm_arena_tensor(&A, &c, LDM_SHAPE(1));
    test_check(rc == 0 && a.data && b.data && c.data, "three tensors", "%s", ldm_last_error());
    test_check(aligned(&a) && aligned(&b) && aligned(&c), "64-byte aligned", "%p %p %p",
               (void *)a.data, (void *)b.data, (void *)c.data);
    test_check(a.owns == 0 && b.ndim == 3 && b.shape[2] == 7 && b.numel == 42 && b.ops == &ldm_ops_ref,
               "a view with the shape asked for", "owns %d ndim %d numel %lld", b.owns, b.ndim,
               (long long)b.numel);
    test_check((char *)b.data - (char *)a.data == 64 && (char *)c.data - (char *)b.data == 192,
               "packed one after the other", "%td %td", (char *)b.data - (char *)a.data,
               (char *)c.data - (char *)b.data);
    test_check(ldm_arena_mark(&A) == 64 + 192 + 64 && A.peak == 320, "used and peak", "%zu %zu",
               ldm_arena_mark(&A), A.peak);
    ldm_arena_release(&A, m);
    rc = ldm_arena_tensor(&A, &d, LDM_SHAPE(4));
    test_check(rc == 0 && d.data == b.data, "release gives the memory back", "%p vs %p",
               (void *)d.data, (void *)b.data);
    test_check(A.peak == 320 && ldm_arena_mark(&A) == 128, "peak stays the high-water mark",
               "%zu", A.peak);
    // ldm_tensor_free on a view does nothing (the arena still owns the memory)
    ldm_tensor_free(&d);
    ldm_arena_reset(&A);
    test_check(A.peak == 0 && ldm_arena_mark(&A) == 0 && A.peak_ever == 4096 && A.size == 4096,
               "reset keeps the chunk",
               "peak %zu peak_ever %zu", A.peak, A.peak_ever);
    ldm_arena_free(&A);
}

static void test_zero_size(void) {
    ldm_arena A;
    ldm_arena_init(&A, &ldm_ops_cpu, "test");
    ldm_tensor z0, z1, s;
    int rc = ldm_arena_tensor(&A, &z0, LDM_SHAPE(0, 4)) | ldm_arena_tensor(&A, &z1, LDM_SHAPE(2, 0)) |
             ldm_arena_tensor(&A, &s, NULL, 0);   // a scalar: one element
    test_check(rc == 0 && z0.data && z1.data && z0.data != z1.data && z0.numel == 0 && s.numel == 1,
               "zero-size tensors get their own address", "%s", ldm_last_error());
    ldm_tensor bad;
    test_check(ldm_arena_tensor(&A, &bad, LDM_SHAPE(-1, 3)) != 0 && !bad.data &&
                   strstr(ldm_last_error(), "[-1,3]"),
               "negative dimension refused, named", "%s", ldm_last_error());
    ldm_arena_free(&A);
}

// A "forward": the same allocation pattern each call.
static int fake_forward(ldm_arena *A, int64_t scale) {
    ldm_tensor x, y;
    ldm_arena_reset(A);
    for (int k = 0; k < 4; k++) {
        size_t m = ldm_arena_mark(A);
        if (ldm_arena_tensor(A, &x, LDM_SHAPE(3, scale, 100 * (k + 1)))) return LDM_ERR;
        if (ldm_arena_tensor(A, &y, LDM_SHAPE(600, scale))) return LDM_ERR;
        ldm_arena_release(A, m);
    }
    return ldm_arena_tensor(A, &x, LDM_SHAPE(2, scale, 1000));
}

static void test_reuse(void) {
    ldm_arena A;
    fail_after = -1;
    live_allocs = 0;
    ldm_arena_init(&A, &failing_ops, "test");
    int rc = fake_forward(&A, 1000);
    int64_t first = A.n_allocs;
    size_t peak1 = A.peak;
    // the largest moment: the final [2,1000,1000] (8 MB) > block k = 3 (4.8 + 2.4 MB)
    test_check(rc == 0 && first == 9 && live_allocs == 1 && peak1 == (size_t)2 * 1000 * 1000 * 4,
               "first forward: a block per tensor, freed on release, exact peak",
               "rc %d, %lld allocations, %d live, peak %zu", rc, (long long)first, live_allocs, peak1);
    rc = fake_forward(&A, 1000);
    int64_t second = A.n_allocs;
    test_check(rc == 0 && A.raw && A.n_blocks == 0 && second == first + 1 && A.peak == peak1,
               "second forward: one chunk", "%d blocks, %lld allocations", A.n_blocks,
               (long long)(second - first));
    for (int i = 0; i < 5; i++) rc |= fake_forward(&A, 1000);
    test_check(rc == 0 && A.n_allocs == second && A.n_blocks == 0 && live_allocs == 1,
               "later forwards allocate nothing", "%lld new allocations",
               (long long)(A.n_allocs - second));
    rc = fake_forward(&A, 1500);   // a larger forward: blocks past the chunk, then a larger chunk
    int64_t third = A.n_allocs;
    rc |= fake_forward(&A, 1500) | fake_forward(&A, 1000);
    test_check(rc == 0 && third > second && A.n_allocs == third + 1 && A.size == (size_t)12000000,
               "a larger forward grows the chunk once", "%lld, %lld, size %zu",
               (long long)(third - second), (long long)(A.n_allocs - third), A.size);
    ldm_arena_free(&A);
    test_check(live_allocs == 0 && A.raw == NULL, "free returns all memory", "%d live",
               live_allocs);
}

static void test_out_of_memory(void) {
    ldm_arena A;
    live_allocs = 0;
    ldm_arena_init(&A, &failing_ops, "unet");
    ldm_tensor a, b;
    warm(&A, 4096);
    fail_after = 0;   // from now on the backend has no memory
    int rc = ldm_arena_tensor(&A, &a, LDM_SHAPE(1000));
    test_check(rc == 0, "inside the chunk: no allocation", "%s", ldm_last_error());
    ldm_clear_error();
    rc = ldm_arena_tensor(&A, &b, LDM_SHAPE(2, 320, 64, 64));   // 10 MiB: past the chunk
    const char *msg = ldm_last_error();
    test_check(rc != 0 && b.data == NULL && strstr(msg, "unet") && strstr(msg, "[2,320,64,64]") &&
                   strstr(msg, "out of memory"),
               "allocation failure names the arena and the shape", "rc %d: %s", rc, msg);
    // the arena is still usable: what fits in the chunk is still given out
    rc = ldm_arena_tensor(&A, &b, LDM_SHAPE(16));
    test_check(rc == 0 && b.data != NULL, "usable after a failure", "%s", ldm_last_error());
    // and once memory is back, a later forward succeeds
    fail_after = -1;
    ldm_arena_reset(&A);
    rc = ldm_arena_tensor(&A, &b, LDM_SHAPE(2, 320, 64, 64));
    test_check(rc == 0 && b.data != NULL, "reset, then the large tensor fits", "%s",
               ldm_last_error());
    ldm_arena_free(&A);
    test_check(live_allocs == 0, "no chunk leaked", "%d live", live_allocs);
}

static void fill(ldm_tensor *t, float base) {
    float *h = malloc((size_t)t->numel * sizeof(float));
    for (int64_t i = 0; i < t->numel; i++) h[i] = base + (float)i;
    ldm_tensor_from_host(t, h);
    free(h);
}
static int holds(const ldm_tensor *t, float base) {
    float *h = malloc((size_t)t->numel * sizeof(float));
    ldm_tensor_to_host(h, t);
    int ok = 1;
    for (int64_t i = 0; i < t->numel; i++) ok &= h[i] == base + (float)i;
    free(h);
    return ok;
}

static void test_keep(void) {
    ldm_arena A;
    ldm_arena_init(&A, &ldm_ops_ref, "test");
    warm(&A, 1 << 20);
    ldm_tensor keep0, x, y, up, tmp;
    ldm_arena_tensor(&A, &keep0, LDM_SHAPE(100));
    fill(&keep0, 7);
    // x = f(x) with a larger output: y [4096] over x [1024] overlaps (moved in pieces)
    size_t m = ldm_arena_mark(&A);
    ldm_arena_tensor(&A, &x, LDM_SHAPE(1024));
    ldm_arena_tensor(&A, &y, LDM_SHAPE(4096));
    fill(&y, 1000);
    ldm_arena_release_keep(&A, m, &y);
    test_check((char *)y.data == (char *)keep0.data + 448 && holds(&y, 1000) && holds(&keep0, 7) &&
                   ldm_arena_mark(&A) == 448 + 4096 * 4,
               "keep moves an overlapping tensor down intact", "at %td", (char *)y.data - (char *)keep0.data);
    // the same with temporaries after it, released with it; no overlap this time
    m = ldm_arena_mark(&A);
    ldm_arena_tensor(&A, &up, LDM_SHAPE(8192));
    ldm_arena_tensor(&A, &x, LDM_SHAPE(1000));
    fill(&x, -5);
    ldm_arena_tensor(&A, &tmp, LDM_SHAPE(8192));
    ldm_arena_release_keep(&A, m, &x);
    test_check((char *)x.data == (char *)up.data && holds(&x, -5) && holds(&y, 1000) &&
                   ldm_arena_mark(&A) == m + 4032,
               "keep releases what lies after the kept tensor", "used %zu", ldm_arena_mark(&A));
    // already in place: nothing moves
    m = ldm_arena_mark(&A);
    ldm_arena_tensor(&A, &x, LDM_SHAPE(10));
    float *before = x.data;
    ldm_arena_tensor(&A, &tmp, LDM_SHAPE(10));
    ldm_arena_release_keep(&A, m, &x);
    test_check(x.data == before && ldm_arena_mark(&A) == m + 64, "keep in place", "%zu",
               ldm_arena_mark(&A));
    // a small gap is not worth a move of a large tensor: it stays, the rest is released
    m = ldm_arena_mark(&A);
    ldm_arena_tensor(&A, &tmp, LDM_SHAPE(16));
    ldm_arena_tensor(&A, &x, LDM_SHAPE(100000));
    before = x.data;
    ldm_arena_tensor(&A, &up, LDM_SHAPE(16));
    ldm_arena_release_keep(&A, m, &x);
    test_check(x.data == before && ldm_arena_mark(&A) == m + 64 + 400000, "keep skips a tiny saving",
               "%zu", ldm_arena_mark(&A));
    // from a block of its own (past the chunk): copied into the chunk, or repositioned
    ldm_arena_reset(&A);
    ldm_arena_tensor(&A, &keep0, LDM_SHAPE(100));
    m = ldm_arena_mark(&A);
    ldm_arena_tensor(&A, &up, LDM_SHAPE(200000));      // 800 KB
    ldm_arena_tensor(&A, &x, LDM_SHAPE(100000));       // past the 1 MiB chunk: a block
    fill(&x, 3);
    int in_block = A.n_blocks == 1;
    ldm_arena_release_keep(&A, m, &x);
    test_check(in_block && A.n_blocks == 0 && x.data == up.data && holds(&x, 3),
               "keep copies a block's tensor into the chunk", "%d blocks", A.n_blocks);
    ldm_arena_release(&A, m);
    ldm_arena_tensor(&A, &up, LDM_SHAPE(200000));
    ldm_arena_tensor(&A, &x, LDM_SHAPE(300000));       // 1.2 MB: never fits the chunk
    fill(&x, 9);
    before = x.data;
    ldm_arena_release_keep(&A, m, &x);
    test_check(A.n_blocks == 1 && A.blocks[0].pos == m && x.data == before && holds(&x, 9) &&
                   ldm_arena_mark(&A) == m + 1200000,
               "keep repositions a block too large for the chunk", "%d blocks", A.n_blocks);
    ldm_arena_free(&A);
}

int main(void) {
    failing_ops = ldm_ops_cpu;
    failing_ops.name = "failing-cpu";
    failing_ops.alloc = failing_alloc;
    failing_ops.free = failing_free;
    test_mark_release();
    test_zero_size();
    test_reuse();
    test_out_of_memory();
    test_keep();
    return test_summary();
}
