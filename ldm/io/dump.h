/*
 * ldm/io/dump.h -- named intermediates for comparison against PyTorch.
 *
 * When LDM_DUMP=DIR is set (the CLI's --dump DIR sets it), ldm_dump(name, t)
 * writes DIR/<step prefix><name>.npy. Names are the diffusers module paths
 * ("unet.down_blocks.0.resnets.0"), the same names tools/reference/dump_torch.py
 * writes from forward hooks, so `sd compare` can line them up.
 * Costs nothing when dumping is off.
 */
#ifndef LDM_DUMP_H
#define LDM_DUMP_H

#include "ldm/core/tensor.h"

int ldm_dump_enabled(void);
// Prefix for the following names, e.g. "step003/" (NULL or "" to clear).
void ldm_dump_set_prefix(const char *prefix);
// printf-style name; writes only when enabled. Errors are reported on stderr once.
void ldm_dump(const ldm_tensor *t, const char *name_fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
