/*
 * ldm/train/dist.h -- data-parallel training over processes: every process
 * (a "rank") holds the whole model, takes its own slice of each global batch,
 * runs forward and backward on it, and then the ranks average their
 * gradients, so every rank applies the same optimizer step to the same
 * weights (llm.c's train_gpt2.cu pattern, with MPI_Allreduce in place of
 * NCCL). Inside one process the ops already use every core (OpenMP in
 * ldm/backend/ops_cpu.c); processes are for more machines, or for more
 * sockets than one shared memory serves well.
 *
 * Why the average is the full-batch gradient: the stage-2 loss is a mean over
 * the batch (ldm/train/loss.h), L = 1/B sum_b l_b. Split the global batch of B
 * samples into W equal shards S_r of B/W samples; rank r's loss is
 * L_r = W/B sum_{b in S_r} l_b, and
 *     1/W sum_r dL_r/dθ = 1/W sum_r W/B sum_{b in S_r} dl_b/dθ = dL/dθ.
 * The shards must be equal: with unequal shards the plain mean of the ranks'
 * gradients over-weights the small shard.
 *
 * Two implementations, chosen by the Makefile (never by #ifdef):
 *   ldm/train/dist/dist_single.c  a world of one process; every reduction is
 *                                 the identity (the default build)
 *   ldm/train/dist/dist_mpi.c     MPI (Open MPI's mpicc; `make MPI=1`, programs
 *                                 started by `mpirun -np N`)
 * and the helpers over a parameter list in ldm/train/dist.c, shared by both.
 *
 * Determinism. MPI_Allreduce gives every rank the same bits (in Open MPI's
 * algorithms a partial sum is either formed once and sent on, or formed on
 * both sides of an exchange from the same two operands, and a + b == b + a
 * exactly in floating point), so the ranks never drift apart; the test checks
 * it bit for bit. Against ONE process with the
 * same global batch the mean gradient differs only by summation order: the
 * batch sum inside the backward's sgemm is split into W partial sums added by
 * the all-reduce, ((g1+g2)+g3)+g4 becomes (g1+g2)+(g3+g4), a few float
 * roundings (tests/test_dist.c measures it); the 1/B of the loss becomes
 * W/B then 1/W, exact when W is a power of two.
 */
#ifndef LDM_TRAIN_DIST_H
#define LDM_TRAIN_DIST_H

#include <stdint.h>
#include "ldm/train/params.h"

// Start the process group. argc/argv as main got them (MPI may take its own
// flags out of them), or both NULL. Call once, before any other ldm_dist_*.
// 0 / LDM_ERR.
int ldm_dist_init(int *argc, char ***argv);
// This process's rank in 0 .. world-1 (0 before init).
int ldm_dist_rank(void);
// The number of processes (1 before init and in the single build).
int ldm_dist_world(void);
// The name of the implementation: "single" or "mpi".
const char *ldm_dist_backend(void);

// buf[n] <- (sum over ranks of buf[n]) / world, in place; the same bits on
// every rank. 0 / LDM_ERR.
int ldm_dist_allreduce_mean(float *buf, int64_t n);
// buf[n] <- sum over ranks of buf[n], in place (losses and counts for logging).
int ldm_dist_allreduce_sum_double(double *buf, int64_t n);
// buf[n] <- root's buf[n] on every rank. 0 / LDM_ERR.
int ldm_dist_broadcast(float *buf, int64_t n, int root);
// Stop every rank with exit status `code` (an error on one rank would
// otherwise leave the others waiting in the next all-reduce forever).
void ldm_dist_abort(int code) __attribute__((noreturn));
// End the process group (once, at the end; 0 / LDM_ERR).
int ldm_dist_finalize(void);

// ---- helpers shared by every implementation (ldm/train/dist.c) ----------------
// This rank's slice of a global batch of B samples: [*start, *start + *count).
// Every rank draws the whole global batch from the same generator and keeps
// its slice, so the run follows the one-process run whatever the world size.
// B must be a multiple of the world size (equal shards: above); LDM_ERR
// naming both otherwise.
int ldm_dist_shard(int64_t *start, int64_t *count, int64_t B);

// Every gradient of l <- its mean over the ranks: the gradients are packed
// into one buffer of l->numel floats (in list order), all-reduced in one call
// (one message per step, not one per tensor), and unpacked. World 1: nothing.
int ldm_dist_allreduce_grads(const ldm_params *l);
// Every weight of l <- root's (the ranks start from the same initial weights
// whatever each drew or loaded). World 1: nothing.
int ldm_dist_broadcast_weights(const ldm_params *l, int root);

#endif
