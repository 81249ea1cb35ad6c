/*
 * ldm/io/tensorfile.c -- open a checkpoint file of any supported format, look
 * tensors up by name, and convert a stored tensor to fp32.
 *
 * The format is chosen by magic bytes, never by the file name:
 *   "PK\x03\x04"                       a torch.save zip (.ckpt/.bin) -> ldm_ckpt_parse (ldm/io/ckpt.c)
 *   u64 LE length, then '{' at byte 8  safetensors                   -> ldm_safetensors_parse
 * The whole file is mmap'ed read-only; the parsers only validate and point
 * into the mapping. Conversion to fp32 happens per tensor (ldm_entry_to_f32),
 * with exact IEEE half / bfloat16 widening (subnormals, inf and NaN kept).
 *
 * Leaves out: writing (see ldm_safetensors_write), lazy loading from other
 * storage than a local file.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/core/tensor.h"
#include "ldm/io/tensorfile.h"

// ---------------------------------------------------------------------------
// dtypes

const char *ldm_dtype_name(ldm_dtype t) {
    switch (t) {
    case LDM_DTYPE_F32: return "F32";
    case LDM_DTYPE_F16: return "F16";
    case LDM_DTYPE_BF16: return "BF16";
    case LDM_DTYPE_F64: return "F64";
    case LDM_DTYPE_I64: return "I64";
    case LDM_DTYPE_I32: return "I32";
    case LDM_DTYPE_I16: return "I16";
    case LDM_DTYPE_I8: return "I8";
    case LDM_DTYPE_U8: return "U8";
    case LDM_DTYPE_BOOL: return "BOOL";
    }
    return "?";
}

int ldm_dtype_size(ldm_dtype t) {
    switch (t) {
    case LDM_DTYPE_F64: case LDM_DTYPE_I64: return 8;
    case LDM_DTYPE_F32: case LDM_DTYPE_I32: return 4;
    case LDM_DTYPE_F16: case LDM_DTYPE_BF16: case LDM_DTYPE_I16: return 2;
    case LDM_DTYPE_I8: case LDM_DTYPE_U8: case LDM_DTYPE_BOOL: return 1;
    }
    return 0;
}

// ldm_f16_to_f32 (ldm/core/tensor.c) has a loop and branches; checkpoints hold hundreds of millions
// of halves, so the conversion reads a table of all 65536 results instead
// (256 KB, built once from ldm_f16_to_f32, so it is exactly as exact).
static float f16_table[65536];
static pthread_once_t f16_table_once = PTHREAD_ONCE_INIT;
static void f16_table_init(void) {
    for (uint32_t h = 0; h < 65536; h++) f16_table[h] = ldm_f16_to_f32((uint16_t)h);
}

// Little-endian loads from unaligned memory (the mapping has no alignment
// guarantee for a tensor's first byte).
static uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t load_u64(const uint8_t *p) {
    return (uint64_t)load_u32(p) | ((uint64_t)load_u32(p + 4) << 32);
}

// e->data[numel] of e->dtype -> dst[numel] fp32.
int ldm_entry_to_f32(float *dst, const ldm_tensor_entry *e) {
    const uint8_t *p = e->data;
    int64_t n = e->numel;
    if (n < 0 || (uint64_t)n * (uint64_t)ldm_dtype_size(e->dtype) != e->nbytes)
        return ldm_error("tensor '%s': %llu bytes do not hold %lld %s values", e->name,
                         (unsigned long long)e->nbytes, (long long)n, ldm_dtype_name(e->dtype));
    switch (e->dtype) {
    case LDM_DTYPE_F32:
        for (int64_t i = 0; i < n; i++) {
            uint32_t b = load_u32(p + 4 * i);
            memcpy(&dst[i], &b, 4);
        }
        return 0;
    case LDM_DTYPE_F16:
        pthread_once(&f16_table_once, f16_table_init);
        for (int64_t i = 0; i < n; i++) dst[i] = f16_table[load_u16(p + 2 * i)];
        return 0;
    case LDM_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = ldm_bf16_to_f32(load_u16(p + 2 * i));
        return 0;
    case LDM_DTYPE_F64:
        for (int64_t i = 0; i < n; i++) {
            uint64_t b = load_u64(p + 8 * i);
            double d;
            memcpy(&d, &b, 8);
            dst[i] = (float)d;
        }
        return 0;
    case LDM_DTYPE_I64:
        for (int64_t i = 0; i < n; i++) dst[i] = (float)(int64_t)load_u64(p + 8 * i);
        return 0;
    case LDM_DTYPE_I32:
        for (int64_t i = 0; i < n; i++) dst[i] = (float)(int32_t)load_u32(p + 4 * i);
        return 0;
    case LDM_DTYPE_I16:
        for (int64_t i = 0; i < n; i++) dst[i] = (float)(int16_t)load_u16(p + 2 * i);
        return 0;
    case LDM_DTYPE_I8:
        for (int64_t i = 0; i < n; i++) dst[i] = (float)(int8_t)p[i];
        return 0;
    case LDM_DTYPE_U8:
        for (int64_t i = 0; i < n; i++) dst[i] = (float)p[i];
        return 0;
    case LDM_DTYPE_BOOL:
        for (int64_t i = 0; i < n; i++) dst[i] = p[i] ? 1.0f : 0.0f;
        return 0;
    }
    return ldm_error("tensor '%s': unknown dtype %d", e->name, (int)e->dtype);
}

// ---------------------------------------------------------------------------
// open / close / find

int ldm_tensor_file_open(ldm_tensor_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ldm_error("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return ldm_error("%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ldm_error("%s: not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size == 0) {
        close(fd);
        return ldm_error("%s: empty file (0 bytes): not a safetensors or torch checkpoint", path);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (map == MAP_FAILED) return ldm_error("%s: cannot mmap %zu bytes: %s", path, size, strerror(err));
    const uint8_t *b = map;

    int rc;
    if (size >= 4 && memcmp(b, "PK\x03\x04", 4) == 0) {
        rc = ldm_ckpt_parse(f, b, size, path);   // ldm/io/ckpt.c
    } else if (size >= 9 && b[8] == '{') {
        rc = ldm_safetensors_parse(f, b, size, path);
    } else if (size >= 2 && b[0] == 0x80 && b[1] <= 5) {
        // A bare pickle (PROTO opcode): the pre-1.6 torch.save format; the
        // ckpt reader names it. Checked after safetensors, whose little-endian
        // header length may also start with 0x80.
        rc = ldm_ckpt_parse(f, b, size, path);
    } else if (size < 9) {
        rc = ldm_error("%s: file is only %zu bytes: too short for safetensors (8-byte header "
                       "length + JSON) or a zip", path, size);
    } else {
        rc = ldm_error("%s: unknown format: neither safetensors (8-byte length then '{') nor a "
                       "torch zip checkpoint (\"PK\\3\\4\"); first bytes %02x %02x %02x %02x",
                       path, b[0], b[1], b[2], b[3]);
    }
    if (rc != 0) {
        munmap(map, size);
        memset(f, 0, sizeof *f);
        return LDM_ERR;
    }
    f->map = map;
    f->map_size = size;
    return 0;
}

void ldm_tensor_file_close(ldm_tensor_file *f) {
    if (!f) return;
    for (int64_t i = 0; i < f->n_entries; i++) {
        free(f->entries[i].name);
        free(f->entries[i].owned);
    }
    free(f->entries);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const ldm_tensor_entry *ldm_tensor_file_find(const ldm_tensor_file *f, const char *name) {
    for (int64_t i = 0; i < f->n_entries; i++)
        if (strcmp(f->entries[i].name, name) == 0) return &f->entries[i];
    return NULL;
}

void ldm_tensor_file_release(const ldm_tensor_file *f, const ldm_tensor_entry *e) {
    if (!f || !f->map || !e || e->nbytes == 0) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t base = (uintptr_t)f->map, start = (uintptr_t)e->data, end = start + e->nbytes;
    if (start < base || end > base + f->map_size || end < start) return;
    start = (start + page - 1) & ~(page - 1);   // only pages no other tensor shares
    end &= ~(page - 1);
    if (end > start) madvise((void *)start, end - start, MADV_DONTNEED);
}

void ldm_tensor_file_release_all(const ldm_tensor_file *f) {
    if (f && f->map && f->map_size) madvise(f->map, f->map_size, MADV_DONTNEED);
}
