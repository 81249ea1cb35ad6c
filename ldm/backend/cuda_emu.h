/*
 * ldm/backend/cuda_emu.h -- what nvcc gives a CUDA kernel, given to the C
 * compiler: blockIdx, threadIdx, blockDim, gridDim, the __global__ /
 * __device__ / __shared__ qualifiers and __syncthreads(). With it the kernels
 * of ldm/backend/cuda_kernels.h, written as plain CUDA, compile as C11 and
 * run on the CPU in backend `cuda-emu` (ldm/backend/ops_cuda_emu.c, whose
 * LAUNCH macro drives the loops below). nvcc never sees this file.
 *
 * How a launch <<<blocks, threads>>> runs here, one block after another:
 *   - an ordinary kernel (one thread per element, no barrier) is called once
 *     per thread of the block, with threadIdx.x set;
 *   - a block-cooperative kernel (shared memory, __syncthreads) is written in
 *     PHASES: the code between two barriers that depends on the thread sits in
 *     a `for_each_thread { ... }` block. On a GPU `for_each_thread` is empty
 *     (every thread runs the block); here it is a loop over the threads of the
 *     block. The first time the kernel enters a phase the emulator knows the
 *     kernel runs its own threads, and calls it only once for that block. A
 *     phase runs for every thread before the next begins: exactly the
 *     ordering a barrier guarantees, without threads or coroutines.
 * Why phases and not one OS thread (or coroutine) per CUDA thread: the tests
 * run ~17 000 reduction blocks of 256 threads with ~20 barriers each; at
 * 0.2 us per context switch that is ~20 s instead of a fraction of one, and
 * fibers confuse AddressSanitizer. The price is the rules below, which C's
 * scoping half-enforces (a variable declared in a phase dies at its end) and
 * the emulator checks where it can.
 *
 * Rules for a cooperative kernel -- on a GPU they are what makes
 * __syncthreads() well defined anyway; [checked] marks those the emulator
 * enforces (it aborts naming the kernel):
 *   - code that uses threadIdx is inside a for_each_thread phase;
 *   - [checked] a phase holds no __syncthreads() and is not left by return or
 *     break (every thread must reach every barrier);
 *   - [checked] __syncthreads() appears only in a kernel that has phases;
 *   - code between phases is the same for every thread (it depends on
 *     blockIdx, blockDim, the arguments and shared memory read after a
 *     barrier): here it runs once per block, on a GPU once per thread.
 *     Variables it declares are only read inside phases. Outside phases
 *     threadIdx.x holds 0xffffffff here (before the first phase: the first
 *     thread's index -- the emulator cannot know yet), so misuse indexes far
 *     out of range.
 * __shared__ variables are then ordinary locals of the once-per-block call:
 * one copy per block, shared by its threads. ops_cuda_emu.c is compiled with
 * -ftrivial-auto-var-init=pattern (Makefile), so each block's shared memory
 * starts as 0xfefefefe (-1.7e38 as a float) as a GPU's starts as garbage: a
 * read of a slot no thread wrote ruins the result instead of passing by luck.
 *
 * Blocks and threads (and the threads of a phase) can run in reverse order
 * (ldm_cuda_emu_set_reverse): a result that changes reveals threads of one
 * phase, or blocks, that depend on each other. Not emulated: warps (no kernel
 * here uses shuffles or votes), atomics, 2-D/3-D grids, dynamic shared memory.
 */
#ifndef LDM_CUDA_EMU_H
#define LDM_CUDA_EMU_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

// ---- built-in variables ----------------------------------------------------------
// CUDA's uint3 / dim3. Every kernel here is 1-D: only .x is ever set.
typedef struct { unsigned int x, y, z; } uint3;
typedef struct { unsigned int x, y, z; } dim3;
static uint3 blockIdx, threadIdx;   // this block of the grid, this thread of the block
static dim3 blockDim, gridDim;      // threads per block, blocks in the grid

// ---- qualifiers ------------------------------------------------------------------
#define __global__ static           // a kernel: called by LAUNCH (ops_cuda_emu.c)
#define __device__ static inline    // a function called by kernels
#define __shared__                  // a local of the once-per-block call (see above)

// ---- the emulator's state ----------------------------------------------------------
#define EMU_NO_THREAD 0xffffffffu   // threadIdx.x between phases
static struct {
    const char *kernel;   // name of the kernel running, for messages
    int reverse;          // 1: blocks and threads in reverse order
    unsigned block;       // blocks started so far in this launch
    unsigned thread;      // calls (ordinary kernel) or threads (phase) started so far
    int cooperative;      // the kernel entered a phase in this block
    int in_phase;         // inside a for_each_thread phase
} emu;

// A kernel broke a rule that a GPU would punish with a hang or wrong results.
static void emu_fail(const char *what) {
    fprintf(stderr, "cuda-emu: kernel %s: %s\n", emu.kernel ? emu.kernel : "?", what);
    abort();
}

// The i-th block or thread to run, of n.
static unsigned emu_at(unsigned i, unsigned n) { return emu.reverse ? n - 1 - i : i; }

// ---- barriers and phases -------------------------------------------------------------

// Between phases every thread has already finished the phase before (the
// for_each_thread loop ran them all), so the barrier itself has nothing to do.
static void emu_syncthreads(const char *file, int line) {
    if (emu.in_phase || !emu.cooperative) {
        fprintf(stderr, "%s:%d: __syncthreads() %s\n", file, line,
                emu.in_phase ? "inside a for_each_thread phase (every thread must reach "
                               "a barrier: end the phase before it)"
                             : "in a kernel without for_each_thread phases (put each "
                               "thread's code between two barriers in one)");
        emu_fail("barrier outside the phase structure");
    }
}
#define __syncthreads() emu_syncthreads(__FILE__, __LINE__)

static void emu_phase_begin(void) {
    if (emu.in_phase) emu_fail("a for_each_thread phase inside another (or left by break)");
    if (!emu.cooperative && emu.thread != 1)
        emu_fail("a for_each_thread phase entered by a later thread but not by the first");
    emu.cooperative = 1;
    emu.in_phase = 1;
    emu.thread = 0;
}
static int emu_phase_next(void) {
    if (emu.thread == blockDim.x) {
        emu.in_phase = 0;
        threadIdx.x = EMU_NO_THREAD;
        return 0;
    }
    threadIdx.x = emu_at(emu.thread++, blockDim.x);
    return 1;
}
// The code of one phase, run by every thread of the block in turn.
#define for_each_thread for (emu_phase_begin(); emu_phase_next();)

// ---- the launch loops (used by LAUNCH in ops_cuda_emu.c) -------------------------------

// <<<blocks, threads>>>: the limits CUDA enforces on a 1-D launch (0 blocks
// is an invalid configuration too).
static void emu_grid(const char *kernel, int64_t blocks, int64_t threads) {
    emu.kernel = kernel;
    if (blocks < 1 || blocks > 2147483647) emu_fail("grid of blocks outside 1 .. 2^31-1");
    if (threads < 1 || threads > 1024) emu_fail("block of threads outside 1 .. 1024");
    gridDim.x = (unsigned)blocks;
    blockDim.x = (unsigned)threads;
    gridDim.y = gridDim.z = blockDim.y = blockDim.z = 1;
    blockIdx.y = blockIdx.z = threadIdx.y = threadIdx.z = 0;
    emu.block = 0;
}
static int emu_next_block(void) {
    if (emu.block == gridDim.x) return 0;
    blockIdx.x = emu_at(emu.block++, gridDim.x);
    emu.thread = 0;
    emu.cooperative = 0;
    return 1;
}
// Before each call of the kernel for this block: 1 and threadIdx.x set if
// another call is due, 0 when the block is done -- after all its threads, or
// after the first call if the kernel ran the threads itself in its phases.
static int emu_next_thread(void) {
    if (emu.in_phase) emu_fail("returned from inside a for_each_thread phase");
    if (emu.cooperative || emu.thread == blockDim.x) return 0;
    threadIdx.x = emu_at(emu.thread++, blockDim.x);
    return 1;
}

#endif
