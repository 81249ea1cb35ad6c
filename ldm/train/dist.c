/*
 * ldm/train/dist.c -- the data-parallel helpers over a parameter list
 * (ldm/train/dist.h), the same for every implementation of the process group
 * (ldm/train/dist/dist_single.c, dist_mpi.c): they call only the flat-buffer
 * reductions of dist.h.
 */
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/train/dist.h"

int ldm_dist_shard(int64_t *start, int64_t *count, int64_t B) {
    int world = ldm_dist_world();
    if (B <= 0 || B % world != 0)
        return ldm_error("global batch %lld does not split into %d equal shards: make it a "
                         "multiple of the number of processes", (long long)B, world);
    *count = B / world;
    *start = (int64_t)ldm_dist_rank() * *count;
    return 0;
}

int ldm_dist_allreduce_grads(const ldm_params *l) {
    if (ldm_dist_world() == 1) return 0;   // the mean over one rank is the gradient itself
    // One flat buffer [numel]: every gradient in list order, so one all-reduce
    // per step moves them all (a message per tensor would pay the latency of
    // the network hundreds of times).
    float *flat = malloc((size_t)l->numel * sizeof *flat);
    if (!flat && l->numel > 0)
        return ldm_error("gradient all-reduce: out of memory for %lld floats", (long long)l->numel);
    int64_t off = 0;
    for (int i = 0; i < l->n; i++) {                     // pack
        memcpy(flat + off, l->p[i].g->data, (size_t)l->p[i].g->numel * sizeof *flat);
        off += l->p[i].g->numel;
    }
    int rc = ldm_dist_allreduce_mean(flat, l->numel);
    off = 0;
    for (int i = 0; rc == 0 && i < l->n; i++) {          // unpack
        memcpy(l->p[i].g->data, flat + off, (size_t)l->p[i].g->numel * sizeof *flat);
        off += l->p[i].g->numel;
    }
    free(flat);
    return rc;
}

int ldm_dist_broadcast_weights(const ldm_params *l, int root) {
    if (ldm_dist_world() == 1) return 0;
    // Once, at the start: one broadcast per tensor, no packing.
    for (int i = 0; i < l->n; i++)
        if (ldm_dist_broadcast(l->p[i].w->data, l->p[i].w->numel, root) != 0) return LDM_ERR;
    return 0;
}
