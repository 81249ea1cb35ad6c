/*
 * ldm/io/npy.h -- NumPy .npy files (format 1.0/2.0), float32 little-endian,
 * C order: what np.save writes for a float32 array and np.load reads back.
 * Used for dumps (--dump DIR), fixtures and the CLI's .npy outputs.
 */
#ifndef LDM_NPY_H
#define LDM_NPY_H

#include <stdint.h>
#include "ldm/core/tensor.h"

// Read a float32 (or float64/float16, converted) C-order .npy into a new host
// tensor on `ops`. 0 / LDM_ERR (message names the file and the problem).
int ldm_npy_read(ldm_tensor *out, const struct ldm_ops *ops, const char *path);
// Read into a malloc'ed buffer: *data (caller frees), shape, ndim.
int ldm_npy_read_raw(float **data, int64_t *shape, int *ndim, const char *path);
// Write n-dim float32 data. Written to path.tmp then renamed: never a partial file.
int ldm_npy_write(const char *path, const float *data, const int64_t *shape, int ndim);
// Write a tensor of any backend (downloads to host first).
int ldm_npy_write_tensor(const char *path, const ldm_tensor *t);

#endif
