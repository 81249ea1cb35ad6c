/*
 * ldm/backend/ops_cuda.h -- options and knobs of the `cuda` backend
 * (ldm/backend/ops_cuda.cu, built by `make cuda`) and of its CPU emulation
 * `cuda-emu` (ldm/backend/ops_cuda_emu.c, in every build). The backends
 * themselves are reached through ldm_backend().
 *
 * The library reads no environment variable: a program sets the options once,
 * from its main (the `sd` CLI from its flags and environment), before the
 * first op.
 */
#ifndef LDM_OPS_CUDA_H
#define LDM_OPS_CUDA_H

#include <stdint.h>

// ---- options of both backends (every build) -----------------------------------------
//   sync          1: cudaDeviceSynchronize after every kernel launch, so a fault is
//                 reported at the kernel that caused it (cuda-emu is always synchronous)
//   workspace_mb  scratch for im2col columns and attention score blocks; ops are
//                 computed in chunks that fit it (default 256 MiB)
//   emu_strict    1: cuda-emu memory is fenced off (PROT_NONE) except while one of its
//                 ops runs, so host code that touches a tensor's data directly -- a
//                 crash on a real GPU -- crashes here too. Set before allocating; for
//                 tests (allocations are never reused)
typedef struct ldm_cuda_options { int sync; int64_t workspace_mb; int emu_strict; } ldm_cuda_options; // 0 = default
void ldm_cuda_set_options(const ldm_cuda_options *o);   // defined in ops_cuda_emu.c (built in every build)
// NULL restores every default.

// The options in force, read by both backends; set them with ldm_cuda_set_options.
extern ldm_cuda_options ldm_cuda_opts;

// ---- cuda (only in a `make cuda` build) -------------------------------------
// Number of usable CUDA devices; 0 when there is no GPU or no driver (never fails).
int ldm_cuda_device_count(void);
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for the current device, or "no CUDA device".
const char *ldm_cuda_device_name(void);
// For tests: the workspace in floats, overriding workspace_mb, so that small
// cases run in many chunks.
void ldm_cuda_set_workspace_limit(int64_t nfloats);

// ---- cuda-emu (every build) ----------------------------------------------------
// Same knob for the emulation.
void ldm_cuda_emu_set_workspace_limit(int64_t nfloats);
// 1: run blocks and threads in reverse order (0: forward). A result that
// changes with the order reveals threads of one phase depending on each other.
void ldm_cuda_emu_set_reverse(int reverse);

#endif
