/*
 * ldm/backend/ops_cuda.h -- knobs of the `cuda` backend (ldm/backend/ops_cuda.cu, built by
 * `make cuda`) and of its CPU emulation `cuda-emu` (ldm/backend/ops_cuda_emu.c, in
 * every build). The backends themselves are reached through ldm_backend().
 */
#ifndef LDM_OPS_CUDA_H
#define LDM_OPS_CUDA_H

#include <stdint.h>

// ---- cuda (only in a `make cuda` build) -------------------------------------
// Number of usable CUDA devices; 0 when there is no GPU or no driver (never fails).
int ldm_cuda_device_count(void);
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for the current device, or "no CUDA device".
const char *ldm_cuda_device_name(void);
// Scratch size (floats) for im2col columns and attention score blocks; ops are
// computed in chunks that fit it. Default 64 Mi floats (256 MiB), or
// $LDM_CUDA_WORKSPACE_MB.
void ldm_cuda_set_workspace_limit(int64_t nfloats);

// ---- cuda-emu (every build) ----------------------------------------------------
// Same knob for the emulation, so tests can force many small chunks.
void ldm_cuda_emu_set_workspace_limit(int64_t nfloats);
// 1: run blocks and threads in reverse order (0: forward). A result that
// changes with the order reveals threads of one phase depending on each other.
void ldm_cuda_emu_set_reverse(int reverse);
// 1: "device" memory is fenced off (PROT_NONE) except while an op of this
// backend runs, so code that touches a tensor's data directly from the host --
// a crash on a real GPU -- crashes here too. Set before allocating. Also
// $LDM_CUDA_EMU_STRICT=1. For tests: allocations are never reused.
void ldm_cuda_emu_set_strict(int strict);

#endif
