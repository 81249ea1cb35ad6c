/*
 * ldm/io/tensorfile.h -- one view of every checkpoint file format: a list of
 * named tensors (name, dtype, shape, bytes) plus string metadata.
 *
 * Formats (detected by magic bytes, never by extension):
 *   safetensors   ldm/io/safetensors.c   (u64 header length + JSON + data)
 *   .ckpt / .bin  ldm/io/ckpt.c          (torch.save zip + allow-listed pickle)
 * The file is mmap'ed read-only; entries point into the mapping, so nothing
 * is copied until a tensor is converted to fp32 (ldm_entry_to_f32).
 * Every size and offset is validated on open (docs/09-checkpoint-files.md): a bad
 * file gives LDM_ERR and a message naming the file, the tensor and the rule.
 */
#ifndef LDM_TENSORFILE_H
#define LDM_TENSORFILE_H

#include <stddef.h>
#include <stdint.h>
#include "ldm/core/tensor.h"

// ldm_dtype (F32, F16, BF16, F64, ints, BOOL) is declared in ldm/core/tensor.h.

typedef struct ldm_tensor_entry {
    char *name;                  // checkpoint key, e.g. "model.diffusion_model.out.2.weight"
    ldm_dtype dtype;
    int ndim;
    int64_t shape[LDM_MAX_DIMS];
    int64_t numel;
    const uint8_t *data;         // numel * dtype size bytes inside the mapping (or = owned)
    uint64_t nbytes;
    uint8_t *owned;              // NULL, or a malloc'ed contiguous copy of a strided
                                 // .ckpt view (freed by ldm_tensor_file_close)
} ldm_tensor_entry;

typedef struct ldm_tensor_file {
    char *path;
    const char *format;          // "safetensors" or "ckpt"
    ldm_tensor_entry *entries;   // [n_entries]
    int64_t n_entries;
    char **meta_keys, **meta_values; // [n_meta] (safetensors __metadata__)
    int n_meta;
    void *map;                   // mmap of the whole file (or NULL)
    size_t map_size;
} ldm_tensor_file;

// Open any supported format by magic bytes. 0 / LDM_ERR.
int ldm_tensor_file_open(ldm_tensor_file *f, const char *path);
void ldm_tensor_file_close(ldm_tensor_file *f);
// Exact name lookup; NULL when absent.
const ldm_tensor_entry *ldm_tensor_file_find(const ldm_tensor_file *f, const char *name);
// Drop the mapped pages that lie wholly inside entry e's bytes (after it has
// been converted), so a loaded model does not also keep the file resident.
// Touching e->data later simply reads the file again.
void ldm_tensor_file_release(const ldm_tensor_file *f, const ldm_tensor_entry *e);
// Drop every mapped page of the file from this process's memory (low-memory
// mode: weights that point into the mapping are read again from the page
// cache or the disk when next touched; the values are the same). NULL: no-op.
// How RSS counts these pages: docs/09-checkpoint-files.md.
void ldm_tensor_file_release_all(const ldm_tensor_file *f);

// safetensors: parse a whole file already in memory (used by open and by the
// fuzzer). The entries point into buf, which must outlive f.
int ldm_safetensors_parse(ldm_tensor_file *f, const uint8_t *buf, size_t size, const char *path);
// Write host tensors (F32, F16 or BF16, each in its own dtype) as safetensors,
// through a temporary file renamed at the end (for tools, tests and training).
int ldm_safetensors_write(const char *path, int n, const char *const *names,
                          const ldm_tensor *const *tensors_host);

// .ckpt / torch zip (ldm/io/ckpt.c): same contract as ldm_safetensors_parse.
int ldm_ckpt_parse(ldm_tensor_file *f, const uint8_t *buf, size_t size, const char *path);

const char *ldm_dtype_name(ldm_dtype t);   // "F32", "F16", ...
int ldm_dtype_size(ldm_dtype t);           // bytes per element
// Convert an entry to fp32 into dst[numel] (F32/F16/BF16/F64/ints). 0 / LDM_ERR.
int ldm_entry_to_f32(float *dst, const ldm_tensor_entry *e);

#endif
