/*
 * ldm/io/npy.c -- NumPy .npy read/write (format versions 1.0, 2.0 and 3.0).
 *
 * File layout (numpy/lib/format.py, "NEP 1"):
 *   "\x93NUMPY" major minor            8 bytes
 *   header length HLEN                 u16 LE (v1) or u32 LE (v2, v3)
 *   header                             a Python dict literal, space padded, ending '\n':
 *       {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 *   data                               prod(shape) elements, C order
 * The total 10+HLEN (12+HLEN for v2/v3) is a multiple of 64.
 *
 * Read: float32 / float64 / float16, little-endian, C order (float64 and
 * float16 are converted to float32). Fortran order and big-endian data are
 * refused with a message saying so. The data must fill the file exactly.
 * Write: float32 '<f4', C order, version 1.0 (2.0 when the header would not
 * fit 65535 bytes), to PATH.tmp then renamed, so a reader never sees a
 * partial file.
 * Leaves out: integer, complex and structured dtypes, pickled object arrays.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"

#define NPY_MAX_HEADER (1 << 20)   // a real header is < 1 KB; refuse silly sizes

// ---------------------------------------------------------------------------
// header dict parsing: only the three keys numpy writes

static const char *skip_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

// Find key 'name' (single or double quoted) in the dict text; return the
// position right after the ':' that follows it, or NULL.
static const char *find_key(const char *h, const char *name) {
    size_t n = strlen(name);
    for (const char *p = h; *p; p++) {
        if ((*p == '\'' || *p == '"') && strncmp(p + 1, name, n) == 0 && p[1 + n] == *p) {
            const char *q = skip_ws(p + 2 + n);
            if (*q == ':') return skip_ws(q + 1);
        }
    }
    return NULL;
}

// Parse the header dict into descr, fortran flag and shape. 0 / LDM_ERR.
static int parse_header(const char *path, const char *h, char descr[16], int *fortran,
                        int64_t *shape, int *ndim) {
    const char *p = find_key(h, "descr");
    if (!p || (*p != '\'' && *p != '"'))
        return ldm_error("%s: .npy header has no 'descr' string", path);
    char quote = *p++;
    size_t k = 0;
    while (*p && *p != quote && k < 15) descr[k++] = *p++;
    descr[k] = '\0';
    if (*p != quote) return ldm_error("%s: .npy header 'descr' is malformed", path);

    p = find_key(h, "fortran_order");
    if (!p) return ldm_error("%s: .npy header has no 'fortran_order'", path);
    if (strncmp(p, "False", 5) == 0) *fortran = 0;
    else if (strncmp(p, "True", 4) == 0) *fortran = 1;
    else return ldm_error("%s: .npy header 'fortran_order' is neither True nor False", path);

    p = find_key(h, "shape");
    if (!p || *p != '(') return ldm_error("%s: .npy header has no 'shape' tuple", path);
    p = skip_ws(p + 1);
    *ndim = 0;
    while (*p != ')') {
        if (*p < '0' || *p > '9')
            return ldm_error("%s: .npy header 'shape' holds something other than integers", path);
        if (*ndim >= LDM_MAX_DIMS)
            return ldm_error("%s: .npy shape has more than %d dims", path, LDM_MAX_DIMS);
        int64_t v = 0;
        while (*p >= '0' && *p <= '9') {
            if (v > (INT64_MAX - 9) / 10)
                return ldm_error("%s: .npy shape dim %d is too large", path, *ndim);
            v = v * 10 + (*p++ - '0');
        }
        if (*p == 'L') p++;   // Python 2 long suffix
        shape[(*ndim)++] = v;
        p = skip_ws(p);
        if (*p == ',') p = skip_ws(p + 1);
        else if (*p != ')') return ldm_error("%s: .npy header 'shape' tuple is malformed", path);
    }
    return 0;
}

// IEEE half -> float (exact), via the entry converter of tensorfile.c.
static void f16_to_f32_n(float *dst, const uint8_t *src, int64_t n) {
    ldm_tensor_entry e;
    memset(&e, 0, sizeof e);
    e.name = (char *)"npy";
    e.dtype = LDM_DTYPE_F16;
    e.numel = n;
    e.data = src;
    e.nbytes = (uint64_t)n * 2;
    ldm_entry_to_f32(dst, &e);
}

// ---------------------------------------------------------------------------
// read

int ldm_npy_read_raw(float **data, int64_t *shape, int *ndim, const char *path) {
    *data = NULL;
    *ndim = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return ldm_error("%s: cannot open: %s", path, strerror(errno));
    uint8_t pre[12];
    char *h = NULL;
    uint8_t *raw = NULL;
    float *out = NULL;
    if (fread(pre, 1, 10, fp) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        ldm_error("%s: not a .npy file (no \\x93NUMPY magic)", path);
        goto fail;
    }
    int major = pre[6];
    uint64_t hlen;
    long data_start;
    if (major == 1) {
        hlen = (uint64_t)pre[8] | ((uint64_t)pre[9] << 8);
        data_start = 10;
    } else if (major == 2 || major == 3) {
        if (fread(pre + 10, 1, 2, fp) != 2) { ldm_error("%s: truncated .npy preamble", path); goto fail; }
        hlen = (uint64_t)pre[8] | ((uint64_t)pre[9] << 8) | ((uint64_t)pre[10] << 16) |
               ((uint64_t)pre[11] << 24);
        data_start = 12;
    } else {
        ldm_error("%s: unsupported .npy format version %d.%d", path, major, pre[7]);
        goto fail;
    }
    if (hlen > NPY_MAX_HEADER) {
        ldm_error("%s: .npy header length %llu is implausible", path, (unsigned long long)hlen);
        goto fail;
    }
    h = malloc(hlen + 1);
    if (!h) { ldm_error("%s: out of memory", path); goto fail; }
    if (fread(h, 1, hlen, fp) != hlen) { ldm_error("%s: truncated .npy header", path); goto fail; }
    h[hlen] = '\0';
    if (strlen(h) != hlen) { ldm_error("%s: NUL byte in .npy header", path); goto fail; }
    data_start += (long)hlen;

    char descr[16];
    int fortran = 0;
    if (parse_header(path, h, descr, &fortran, shape, ndim) != 0) goto fail;
    if (fortran) {
        ldm_error("%s: Fortran-order (column-major) .npy is not supported; save a C-order array "
                  "(np.ascontiguousarray)", path);
        goto fail;
    }
    int esize;
    if (descr[0] == '>' && descr[1] == 'f') {
        ldm_error("%s: big-endian data ('%s') is not supported; save as '<%s' "
                  "(arr.astype('<%s'))", path, descr, descr + 1, descr + 1);
        goto fail;
    }
    if (strcmp(descr, "<f4") == 0) esize = 4;
    else if (strcmp(descr, "<f8") == 0) esize = 8;
    else if (strcmp(descr, "<f2") == 0) esize = 2;
    else {
        ldm_error("%s: .npy dtype '%s' is not supported (float32 '<f4', float64 '<f8' or float16 "
                  "'<f2' expected)", path, descr);
        goto fail;
    }
    int64_t numel = ldm_shape_numel(shape, *ndim);
    if (numel < 0 || (uint64_t)numel > SIZE_MAX / 8) {
        ldm_error("%s: .npy shape overflows", path);
        goto fail;
    }
    size_t nbytes = (size_t)numel * (size_t)esize;
    if (fseek(fp, 0, SEEK_END) != 0) { ldm_error("%s: cannot seek", path); goto fail; }
    long fsize = ftell(fp);
    if (fsize < data_start || (uint64_t)(fsize - data_start) != nbytes) {
        char s[160];
        ldm_error("%s: .npy data is %ld bytes but shape %s of '%s' needs %zu", path,
                  fsize - data_start, ldm_shape_str(s, sizeof s, shape, *ndim), descr, nbytes);
        goto fail;
    }
    if (fseek(fp, data_start, SEEK_SET) != 0) { ldm_error("%s: cannot seek", path); goto fail; }
    out = malloc((size_t)(numel ? numel : 1) * sizeof(float));
    raw = esize == 4 ? (uint8_t *)out : malloc(nbytes ? nbytes : 1);
    if (!out || !raw) { ldm_error("%s: out of memory for %lld values", path, (long long)numel); goto fail; }
    if (fread(raw, 1, nbytes, fp) != nbytes) { ldm_error("%s: read error", path); goto fail; }
    // Little-endian host assumed (x86-64, aarch64): '<f4' bytes are the floats.
    if (esize == 8) {
        for (int64_t i = 0; i < numel; i++) {
            double d;
            memcpy(&d, raw + 8 * i, 8);
            out[i] = (float)d;
        }
    } else if (esize == 2) {
        f16_to_f32_n(out, raw, numel);
    }
    if (raw != (uint8_t *)out) free(raw);
    free(h);
    fclose(fp);
    *data = out;
    return 0;
fail:
    if (raw && raw != (uint8_t *)out) free(raw);
    free(out);
    free(h);
    fclose(fp);
    *ndim = 0;
    return LDM_ERR;
}

int ldm_npy_read(ldm_tensor *out, const struct ldm_ops *ops, const char *path) {
    memset(out, 0, sizeof *out);
    float *data;
    int64_t shape[LDM_MAX_DIMS];
    int ndim;
    if (ldm_npy_read_raw(&data, shape, &ndim, path) != 0) return LDM_ERR;
    *out = ldm_tensor_new(ops, shape, ndim);
    if (!out->data) { free(data); return LDM_ERR; }
    ldm_tensor_from_host(out, data);
    free(data);
    return 0;
}

// ---------------------------------------------------------------------------
// write

int ldm_npy_write(const char *path, const float *data, const int64_t *shape, int ndim) {
    if (ndim < 0 || ndim > LDM_MAX_DIMS) return ldm_error("%s: cannot write %d dims", path, ndim);
    int64_t numel = ldm_shape_numel(shape, ndim);
    if (numel < 0) return ldm_error("%s: invalid shape", path);
    // numpy's own spelling of the shape tuple: (), (3,), (2, 3)
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%s), }", ndim == 1 ? "," : "");
    // pad with spaces so that 10 + hlen is a multiple of 64, ending in '\n'
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    int hlen = n + pad + 1;
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hlen & 0xff),
                       (uint8_t)(hlen >> 8)};

    size_t tlen = strlen(path) + 5;
    char *tmp = malloc(tlen);
    if (!tmp) return ldm_error("%s: out of memory", path);
    snprintf(tmp, tlen, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        int err = errno;
        free(tmp);
        return ldm_error("%s: cannot create %s.tmp: %s", path, path, strerror(err));
    }
    int bad = fwrite(pre, 1, 10, fp) != 10 || fwrite(dict, 1, (size_t)n, fp) != (size_t)n;
    for (int i = 0; i < pad && !bad; i++) bad = fputc(' ', fp) == EOF;
    if (!bad) bad = fputc('\n', fp) == EOF;
    if (!bad && numel) bad = fwrite(data, sizeof(float), (size_t)numel, fp) != (size_t)numel;
    if (fclose(fp) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        free(tmp);
        return ldm_error("%s: write failed: %s", path, strerror(err));
    }
    free(tmp);
    return 0;
}

int ldm_npy_write_tensor(const char *path, const ldm_tensor *t) {
    float *host = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (!host) return ldm_error("%s: out of memory", path);
    if (t->numel) ldm_tensor_to_host(host, t);
    int rc = ldm_npy_write(path, host, t->shape, t->ndim);
    free(host);
    return rc;
}
