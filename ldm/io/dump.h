/*
 * ldm/io/dump.h -- named intermediates for comparison against PyTorch.
 *
 * Off until the program names a folder: ldm_dump_set_dir(DIR) (the CLI calls
 * it for --dump DIR or $LDM_DUMP, read once in main; tests and notebooks call
 * it directly). Then ldm_dump(t, name) writes DIR/<step prefix><name>.npy.
 * Names are the diffusers module paths ("unet.down_blocks.0.resnets.0"), the
 * same names tools/reference/dump_torch.py writes from forward hooks, so
 * `sd compare` can line them up. Costs nothing when dumping is off.
 *
 * The folder is one value in ldm/io/dump.c (`dump_dir`), not a handle passed
 * down: the models dump from deep inside their forwards, and in gdb
 * `p dump_dir` / `break ldm_dump_set_dir` show where dumps go and who chose.
 */
#ifndef LDM_DUMP_H
#define LDM_DUMP_H

#include <stdint.h>
#include "ldm/core/tensor.h"

// Dump into dir from now on (copied); NULL or "": off (the start-up state).
void ldm_dump_set_dir(const char *dir);
// The folder, or NULL when off.
const char *ldm_dump_dir(void);
int ldm_dump_enabled(void);
// Prefix for the following names, e.g. "step003/" (NULL or "" to clear).
void ldm_dump_set_prefix(const char *prefix);
// printf-style name; writes only when enabled. Errors are reported on stderr once.
void ldm_dump(const ldm_tensor *t, const char *name_fmt, ...) __attribute__((format(printf, 2, 3)));
// The same for a host array data [shape[0..ndim-1]] (a sampler's latent, ...):
//   ldm_dump_host(x, LDM_SHAPE(B, C, h, w), "step%03d/latent", i);
void ldm_dump_host(const float *data, const int64_t *shape, int ndim, const char *name_fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
