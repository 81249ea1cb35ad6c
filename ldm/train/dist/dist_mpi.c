/*
 * ldm/train/dist/dist_mpi.c -- the process group over MPI (ldm/train/dist.h):
 * MPI_COMM_WORLD, every reduction one MPI collective. Compiled with mpicc by
 * `make MPI=1` in place of dist_single.c; programs run under
 * `mpirun -np N` (docs/14-backpropagation.md, "Data parallel").
 *
 * Errors come back as return codes (MPI_ERRORS_RETURN) and become an
 * ldm_error naming the call and MPI's own message.
 */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include "ldm/core/error.h"
#include "ldm/train/dist.h"

static int dist_rank = 0, dist_world = 1;

// MPI return code -> 0, or LDM_ERR with "what: MPI's message".
static int mpi_check(int rc, const char *what) {
    if (rc == MPI_SUCCESS) return 0;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return ldm_error("%s: %.*s", what, len, msg);
}

int ldm_dist_init(int *argc, char ***argv) {
    // OpenMP threads run the ops, but only the main thread calls MPI: FUNNELED.
    int provided;
    if (mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread"))
        return LDM_ERR;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &dist_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dist_world);
    return 0;
}

int ldm_dist_rank(void) { return dist_rank; }
int ldm_dist_world(void) { return dist_world; }
const char *ldm_dist_backend(void) { return "mpi"; }

// MPI counts are int: a buffer longer than INT_MAX elements goes in pieces.
#define DIST_CHUNK ((int64_t)1 << 30)

int ldm_dist_allreduce_mean(float *buf, int64_t n) {
    for (int64_t i = 0; i < n; i += DIST_CHUNK) {
        int count = (int)(n - i < DIST_CHUNK ? n - i : DIST_CHUNK);
        if (mpi_check(MPI_Allreduce(MPI_IN_PLACE, buf + i, count, MPI_FLOAT, MPI_SUM,
                                    MPI_COMM_WORLD), "gradient all-reduce (MPI_Allreduce)"))
            return LDM_ERR;
    }
    // The same sum on every rank, divided by the same number: the same mean.
    for (int64_t i = 0; i < n; i++) buf[i] /= (float)dist_world;
    return 0;
}

int ldm_dist_allreduce_sum_double(double *buf, int64_t n) {
    for (int64_t i = 0; i < n; i += DIST_CHUNK) {
        int count = (int)(n - i < DIST_CHUNK ? n - i : DIST_CHUNK);
        if (mpi_check(MPI_Allreduce(MPI_IN_PLACE, buf + i, count, MPI_DOUBLE, MPI_SUM,
                                    MPI_COMM_WORLD), "sum over ranks (MPI_Allreduce)"))
            return LDM_ERR;
    }
    return 0;
}

int ldm_dist_broadcast(float *buf, int64_t n, int root) {
    if (root < 0 || root >= dist_world)
        return ldm_error("broadcast from rank %d: the world has %d processes", root, dist_world);
    for (int64_t i = 0; i < n; i += DIST_CHUNK) {
        int count = (int)(n - i < DIST_CHUNK ? n - i : DIST_CHUNK);
        if (mpi_check(MPI_Bcast(buf + i, count, MPI_FLOAT, root, MPI_COMM_WORLD),
                      "broadcast (MPI_Bcast)"))
            return LDM_ERR;
    }
    return 0;
}

void ldm_dist_abort(int code) {
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    _Exit(code);   // MPI_Abort does not return; this keeps the noreturn promise
}

int ldm_dist_finalize(void) {
    return mpi_check(MPI_Finalize(), "MPI_Finalize");
}
