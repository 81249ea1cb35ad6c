/*
 * tests/test_cuda_emu.c -- the CUDA backend's kernels and host logic, run on
 * the CPU by the `cuda-emu` backend (ldm/backend/ops_cuda_emu.c), against `ref`.
 *
 * cuda-emu executes the kernels of ldm/backend/cuda_kernels.h for every block
 * and thread, phase by phase between barriers, and the launches and op sequences of
 * ldm/backend/cuda_host.h with cuBLAS replaced by a column-major loop that checks
 * cuBLAS's argument rules. So this test covers, without a GPU: every
 * kernel's index arithmetic, the reductions' barrier structure, every GEMM's
 * transposes / leading dimensions / batch strides, im2col chunking and the
 * attention query blocks. The cases (tests/cuda/op_cases.h) run twice: blocks
 * and threads in launch order, then in reverse order -- a kernel whose threads
 * depended on each other within a phase would give different results.
 * Then the tiny UNets and VAE decoder of the fixtures run whole on cuda-emu
 * in strict mode (its memory unreadable from the host outside its ops, like
 * device memory), against PyTorch and against the cpu backend.
 * What it cannot cover is listed in docs/08-cuda.md.
 */
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
#include "ldm/backend/ops_cuda.h"
#include "tests/test.h"
#include "tests/cuda/op_cases.h"
#include "tests/cuda/model_cases.h"

int main(void) {
    const struct ldm_ops *emu = ldm_backend("cuda-emu");
    test_check(emu != NULL && strcmp(emu->name, "cuda-emu") == 0, "ldm_backend(\"cuda-emu\")",
               "%s", ldm_last_error());
    if (!emu) return test_summary();

    // A build without `make cuda` must say how to get the backend.
    const struct ldm_ops *cuda = ldm_backend("cuda");
    if (!cuda)
        test_check(strstr(ldm_last_error(), "make cuda") != NULL,
                   "ldm_backend(\"cuda\") without CUDA names `make cuda`", "got: %s",
                   ldm_last_error());

    printf("-- cuda-emu, launch order\n");
    ldm_cuda_emu_set_reverse(0);
    oc_run_all(emu, ldm_cuda_emu_set_workspace_limit, (int64_t)64 << 20);

    printf("-- cuda-emu, blocks and threads in reverse order\n");
    ldm_cuda_emu_set_reverse(1);
    oc_run_all(emu, ldm_cuda_emu_set_workspace_limit, (int64_t)64 << 20);
    ldm_cuda_emu_set_reverse(0);

    // Strict: cuda-emu memory is unreadable from the host outside its ops, as
    // device memory is; model code that touched tensor data directly would
    // crash here (SIGSEGV at the line) instead of on the first GPU run.
    printf("-- whole tiny models on cuda-emu, memory fenced off from the host\n");
    ldm_cuda_options strict = {0};
    strict.emu_strict = 1;
    ldm_cuda_set_options(&strict);
    mc_run_all(emu);
    return test_summary();
}
