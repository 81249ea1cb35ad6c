/*
 * ldm/train/dist/dist_single.c -- the process group of the default build: one
 * process, rank 0 of a world of 1 (ldm/train/dist.h). The mean, the sum and
 * the broadcast over one rank leave every buffer as it is, so a training loop
 * written for many ranks runs unchanged in one. `make MPI=1` links
 * dist_mpi.c in its place.
 */
#include <stdio.h>
#include <stdlib.h>
#include "ldm/core/error.h"
#include "ldm/train/dist.h"

int ldm_dist_init(int *argc, char ***argv) { return 0; }
int ldm_dist_rank(void) { return 0; }
int ldm_dist_world(void) { return 1; }
const char *ldm_dist_backend(void) { return "single"; }

int ldm_dist_allreduce_mean(float *buf, int64_t n) { return 0; }
int ldm_dist_allreduce_sum_double(double *buf, int64_t n) { return 0; }

int ldm_dist_broadcast(float *buf, int64_t n, int root) {
    if (root != 0) return ldm_error("broadcast from rank %d: the world has 1 process", root);
    return 0;
}

void ldm_dist_abort(int code) {
    fflush(stdout);
    exit(code);
}

int ldm_dist_finalize(void) { return 0; }
