/*
 * tests/cuda/test_cuda.c -- the `cuda` backend on a real GPU: every op of
 * struct ldm_ops against `ref` (tests/cuda/op_cases.h, normalised MSE
 * <= 1e-7 in fp32, TF32 off), including the chunked im2col and attention
 * paths with a shrunken workspace. Built and run by `make test-cuda`
 * (linked with the CUDA build of the library, build/cuda).
 *
 * On a machine without a GPU (or without a driver) it prints
 * "no CUDA device: skipped" and "0 passed, 0 failed" and exits 0: the
 * kernels' arithmetic is still covered there by tests/test_cuda_emu.c.
 */
#include <stdio.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/backend/ops.h"
#include "ldm/backend/ops_cuda.h"
#include "tests/test.h"
#include "tests/cuda/op_cases.h"
#include "tests/cuda/model_cases.h"

int main(void) {
    if (ldm_cuda_device_count() == 0) {
        printf("no CUDA device: skipped (the kernels are tested on the CPU by test_cuda_emu)\n");
        return test_summary();
    }
    printf("-- cuda on %s\n", ldm_cuda_device_name());
    const struct ldm_ops *cuda = ldm_backend("cuda");
    test_check(cuda != NULL && strcmp(cuda->name, "cuda") == 0, "ldm_backend(\"cuda\")", "%s",
               ldm_last_error());
    if (!cuda) return test_summary();
    oc_run_all(cuda, ldm_cuda_set_workspace_limit, (int64_t)64 << 20);
    printf("-- whole tiny models on cuda\n");
    mc_run_all(cuda);
    return test_summary();
}
