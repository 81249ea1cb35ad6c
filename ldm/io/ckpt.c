/*
 * ldm/io/ckpt.c -- read a torch.save checkpoint (.ckpt / pytorch_model.bin)
 * without executing it.
 *
 * A torch.save file (torch >= 1.6) is a zip archive of STORED entries:
 *   <dir>/data.pkl       a pickle (protocol 2) describing the object tree
 *   <dir>/data/<key>     raw little-endian bytes of one storage each
 *   <dir>/byteorder, <dir>/version, ...
 * The pickle names its tensors as calls
 *   torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
 * with `storage` a persistent id ('storage', torch.HalfStorage, key, 'cpu', numel).
 *
 * Python's unpickler would import and CALL any global the pickle names
 * (os.system, builtins.eval, ...): loading an untrusted .ckpt with torch.load
 * runs arbitrary code. Here a small interpreter runs the pickle opcodes over
 * plain data values (ints, strings, tuples, lists, dicts) and knows an
 * allow-list of globals (allowed_globals below; docs/03-clip-and-checkpoints.md
 * section 5 tells why). A global outside the list, or an opcode outside the
 * list, stops the load with an error naming it.
 * Allowed globals are never resolved or called either: _rebuild_tensor_v2
 * becomes a tensor record (storage, offset, shape, stride) that points into
 * the mapped file, OrderedDict becomes a dict, and a few harmless data
 * constructors found in training checkpoints (numpy scalars, the
 * pytorch_lightning ModelCheckpoint key) become opaque placeholders.
 *
 * Limits: every length and offset is bounds-checked in 64 bits; the value
 * stack, mark stack and memo are bounded by the pickle size; tensor rank
 * <= LDM_MAX_DIMS; every element a tensor's (offset, shape, stride) reaches
 * must lie inside its storage; each storage entry must have exactly
 * numel*itemsize bytes. A tensor that is a strided view (a transpose, a
 * slice with a step, an expand: torch.save keeps the view and its shared
 * storage) is gathered into a contiguous copy, as torch.load would give it;
 * contiguous tensors point into the mapping.
 *
 * Leaves out: deflate-compressed zips (torch never writes them: error),
 * the legacy pre-1.6 non-zip format (error), big-endian archives (error),
 * TorchScript archives (constants.pkl / code/: error "no data.pkl").
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/tensorfile.h"

// ---------------------------------------------------------------------------
// little-endian loads (the mapping has no alignment guarantee)

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

// ---------------------------------------------------------------------------
// Part 1: the zip reader (end of central directory -> central directory ->
// local headers). Only what a torch.save archive uses: stored entries, zip64.

typedef struct zip_entry {
    const char *name;      // NOT terminated: name[0..nlen)
    size_t nlen;
    const uint8_t *data;   // size bytes inside the buffer
    uint64_t size;
} zip_entry;

typedef struct zip_archive {
    zip_entry *e;          // sorted by name
    int64_t n;
} zip_archive;

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u

static int zip_name_cmp(const void *a, const void *b) {
    const zip_entry *x = a, *y = b;
    size_t n = x->nlen < y->nlen ? x->nlen : y->nlen;
    int c = memcmp(x->name, y->name, n);
    if (c) return c;
    return x->nlen < y->nlen ? -1 : x->nlen > y->nlen;
}

static const zip_entry *zip_find(const zip_archive *z, const char *name, size_t nlen) {
    zip_entry key = {name, nlen, NULL, 0};
    return bsearch(&key, z->e, (size_t)z->n, sizeof *z->e, zip_name_cmp);
}

// The steps of zip_open, in file order from the end:
//   find_end_record -> read_directory_span (zip64 aware) -> read_central_entry
//   for each entry -> sort and refuse duplicate names.

// The end-of-central-directory record (22 bytes + comment) is at the end of
// the file: scan back over at most a 65535-byte comment for its signature
// with a comment length that reaches exactly the end. -> *eocd.
static int find_end_record(const uint8_t *buf, uint64_t size, const char *path, uint64_t *eocd) {
    if (size < 22) return ldm_error("%s: truncated zip: %llu bytes, smaller than the 22-byte end "
                                    "record", path, (unsigned long long)size);
    uint64_t lo = size > 22 + 65535 ? size - 22 - 65535 : 0;
    for (uint64_t pos = size - 22 + 1; pos-- > lo;) {
        if (rd32(buf + pos) == SIG_EOCD && pos + 22 + rd16(buf + pos + 20) == size) {
            *eocd = pos;
            return 0;
        }
    }
    return ldm_error("%s: truncated or corrupt zip: no end-of-central-directory record in the "
                     "last 64 KiB (was the file cut short while copying?)", path);
}

// Where the central directory is and how many entries it holds, from the end
// record, or from the zip64 end record when a zip64 locator precedes it (a
// 0xffff / 0xffffffff field without one is an error). One disk only; the
// directory must lie inside the file, and the count must fit its size (46
// bytes per entry at least), so no allocation is sized by a lie.
static int read_directory_span(const uint8_t *buf, uint64_t size, uint64_t eocd,
                               const char *path, uint64_t *n_entries, uint64_t *cd_off,
                               uint64_t *cd_size) {
    const uint8_t *r = buf + eocd;
    uint64_t n = rd16(r + 10), len = rd32(r + 12), off = rd32(r + 16);
    if (rd16(r + 4) != 0 || rd16(r + 6) != 0)
        return ldm_error("%s: multi-disk zip archives are not supported", path);
    if (eocd >= 20 && rd32(buf + eocd - 20) == SIG_LOC64) {
        uint64_t off64 = rd64(buf + eocd - 20 + 8);
        if (off64 > eocd - 20 || eocd - 20 - off64 < 56 || rd32(buf + off64) != SIG_EOCD64)
            return ldm_error("%s: corrupt zip64 end record (offset %llu)", path,
                             (unsigned long long)off64);
        const uint8_t *r64 = buf + off64;
        n = rd64(r64 + 32);
        len = rd64(r64 + 40);
        off = rd64(r64 + 48);
    } else if (n == 0xffff || len == 0xffffffffu || off == 0xffffffffu) {
        return ldm_error("%s: zip needs a zip64 end record but has none: corrupt or truncated",
                         path);
    }
    if (off > size || len > size - off)
        return ldm_error("%s: truncated zip: central directory [%llu, +%llu) lies past the end of "
                         "the file (%llu bytes)", path, (unsigned long long)off,
                         (unsigned long long)len, (unsigned long long)size);
    if (n > len / 46)
        return ldm_error("%s: corrupt zip: %llu entries cannot fit a %llu-byte central directory",
                         path, (unsigned long long)n, (unsigned long long)len);
    *n_entries = n, *cd_off = off, *cd_size = len;
    return 0;
}

// Central directory entry i at buf[*p..cd_end) -> *out, and *p moves past it.
// Rules: a whole, signed entry; sizes and local-header offset taken from the
// zip64 extra field where they are 0xffffffff; not encrypted; stored (method
// 0, compressed size = size: torch.save never deflates); its local header
// and its data inside the file.
static int read_central_entry(const uint8_t *buf, uint64_t size, uint64_t *p, uint64_t cd_end,
                              uint64_t i, const char *path, zip_entry *out) {
    if (cd_end - *p < 46 || rd32(buf + *p) != SIG_CENTRAL)
        return ldm_error("%s: corrupt zip: central directory entry %llu is malformed", path,
                         (unsigned long long)i);
    const uint8_t *c = buf + *p;
    uint16_t flags = rd16(c + 8), method = rd16(c + 10);
    uint64_t csize = rd32(c + 20), usize = rd32(c + 24), lho = rd32(c + 42);
    uint64_t nlen = rd16(c + 28), xlen = rd16(c + 30), klen = rd16(c + 32);
    if (cd_end - *p - 46 < nlen + xlen + klen)
        return ldm_error("%s: corrupt zip: central directory entry %llu runs past the directory",
                         path, (unsigned long long)i);
    const char *name = (const char *)c + 46;
    int ni = (int)(nlen > 200 ? 200 : nlen);
    // zip64 extended information: the 0xffffffff fields, in this order.
    const uint8_t *x = c + 46 + nlen, *xe = x + xlen;
    while (xe - x >= 4) {
        uint16_t id = rd16(x), len = rd16(x + 2);
        if ((uint64_t)(xe - x - 4) < len) break;
        if (id == 0x0001) {
            const uint8_t *f = x + 4, *fe = x + 4 + len;
            if (usize == 0xffffffffu && fe - f >= 8) { usize = rd64(f); f += 8; }
            if (csize == 0xffffffffu && fe - f >= 8) { csize = rd64(f); f += 8; }
            if (lho == 0xffffffffu && fe - f >= 8) { lho = rd64(f); f += 8; }
        }
        x += 4 + len;
    }
    if (flags & 1) return ldm_error("%s: zip entry '%.*s' is encrypted", path, ni, name);
    if (method != 0)
        return ldm_error("%s: zip entry '%.*s' is %s (method %u); torch.save writes stored "
                         "(uncompressed) entries -- re-save it with torch.save or convert it to "
                         "safetensors", path, ni, name,
                         method == 8 ? "deflate-compressed" : "compressed", method);
    if (csize != usize)
        return ldm_error("%s: zip entry '%.*s' is stored but its sizes differ (%llu vs %llu)",
                         path, ni, name, (unsigned long long)csize, (unsigned long long)usize);
    if (lho > size || size - lho < 30 || rd32(buf + lho) != SIG_LOCAL)
        return ldm_error("%s: truncated or corrupt zip: local header of '%.*s' at %llu is missing",
                         path, ni, name, (unsigned long long)lho);
    uint64_t data = lho + 30 + (uint64_t)rd16(buf + lho + 26) + rd16(buf + lho + 28);
    if (data > size || usize > size - data)
        return ldm_error("%s: truncated zip: entry '%.*s' (%llu bytes at %llu) runs past the end "
                         "of the file (%llu bytes)", path, ni, name, (unsigned long long)usize,
                         (unsigned long long)data, (unsigned long long)size);
    *out = (zip_entry){name, (size_t)nlen, buf + data, usize};
    *p += 46 + nlen + xlen + klen;
    return 0;
}

// Parse buf[0..size) as a zip; entries point into buf, sorted by name, each
// name once. 0 / LDM_ERR.
static int zip_open(zip_archive *z, const uint8_t *buf, uint64_t size, const char *path) {
    memset(z, 0, sizeof *z);
    uint64_t eocd = 0, n_entries = 0, cd_off = 0, cd_size = 0;
    if (find_end_record(buf, size, path, &eocd) ||
        read_directory_span(buf, size, eocd, path, &n_entries, &cd_off, &cd_size))
        return LDM_ERR;
    z->e = calloc(n_entries ? n_entries : 1, sizeof *z->e);
    if (!z->e) return ldm_error("%s: out of memory for %llu zip entries", path,
                                (unsigned long long)n_entries);
    uint64_t p = cd_off;
    for (uint64_t i = 0; i < n_entries; i++)
        if (read_central_entry(buf, size, &p, cd_off + cd_size, i, path, &z->e[i])) goto fail;
    z->n = (int64_t)n_entries;
    qsort(z->e, (size_t)z->n, sizeof *z->e, zip_name_cmp);
    for (int64_t i = 1; i < z->n; i++)
        if (zip_name_cmp(&z->e[i - 1], &z->e[i]) == 0) {
            ldm_error("%s: corrupt zip: duplicate entry '%.*s'", path,
                      (int)(z->e[i].nlen > 200 ? 200 : z->e[i].nlen), z->e[i].name);
            goto fail;
        }
    return 0;
fail:
    free(z->e);
    memset(z, 0, sizeof *z);
    return LDM_ERR;
}

// ---------------------------------------------------------------------------
// Part 2: pickle values. Everything lives in one arena freed at the end, so
// shared references (memo) and partial results need no ownership rules.

typedef enum pv_kind {
    PV_NONE, PV_BOOL, PV_INT, PV_FLOAT, PV_STR, PV_BYTES, PV_TUPLE, PV_LIST, PV_DICT,
    PV_GLOBAL, PV_STORAGE, PV_TENSOR, PV_OPAQUE,
} pv_kind;

static const char *pv_kind_name[] = {
    "None", "bool", "int", "float", "str", "bytes", "tuple", "list", "dict",
    "global", "storage", "tensor", "object",
};

// The allow-list. Tensor-building globals are interpreted; OPAQUE ones only
// produce placeholders (never resolved, never called).
typedef enum g_kind { G_REBUILD_TENSOR, G_REBUILD_PARAM, G_ORDERED_DICT, G_STORAGE, G_OPAQUE } g_kind;
typedef struct allowed_global {
    const char *module, *name;
    g_kind kind;
    ldm_dtype dtype;  // G_STORAGE
} allowed_global;

static const allowed_global allowed_globals[] = {
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR, 0},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAM, 0},
    {"collections", "OrderedDict", G_ORDERED_DICT, 0},
    {"torch", "FloatStorage", G_STORAGE, LDM_DTYPE_F32},
    {"torch", "HalfStorage", G_STORAGE, LDM_DTYPE_F16},
    {"torch", "BFloat16Storage", G_STORAGE, LDM_DTYPE_BF16},
    {"torch", "DoubleStorage", G_STORAGE, LDM_DTYPE_F64},
    {"torch", "LongStorage", G_STORAGE, LDM_DTYPE_I64},
    {"torch", "IntStorage", G_STORAGE, LDM_DTYPE_I32},
    {"torch", "ShortStorage", G_STORAGE, LDM_DTYPE_I16},
    {"torch", "CharStorage", G_STORAGE, LDM_DTYPE_I8},
    {"torch", "ByteStorage", G_STORAGE, LDM_DTYPE_U8},
    {"torch", "BoolStorage", G_STORAGE, LDM_DTYPE_BOOL},
    // Data found outside the state dict of training checkpoints
    // (pytorch_lightning callbacks state, numpy scores): placeholders.
    {"numpy.core.multiarray", "scalar", G_OPAQUE, 0},
    {"numpy.core.multiarray", "_reconstruct", G_OPAQUE, 0},
    {"numpy._core.multiarray", "scalar", G_OPAQUE, 0},
    {"numpy._core.multiarray", "_reconstruct", G_OPAQUE, 0},
    {"numpy", "dtype", G_OPAQUE, 0},
    {"numpy", "ndarray", G_OPAQUE, 0},
    {"_codecs", "encode", G_OPAQUE, 0},
    {"__builtin__", "set", G_OPAQUE, 0},
    {"builtins", "set", G_OPAQUE, 0},
    {"torch", "float32", G_OPAQUE, 0},
    {"torch", "float16", G_OPAQUE, 0},
    {"torch", "bfloat16", G_OPAQUE, 0},
    {"pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", G_OPAQUE, 0},
};

typedef struct pv pv;
struct pv {
    pv_kind kind;
    int64_t i;                 // INT, BOOL; TENSOR: storage offset (elements)
    double f;                  // FLOAT
    const char *s;             // STR/BYTES (arena copy, NUL-terminated), STORAGE: key
    size_t slen;
    pv **items;                // TUPLE/LIST: items[n]; DICT: k0,v0,k1,v1,... (n = 2*pairs)
    int64_t n, cap;
    const allowed_global *g;   // GLOBAL; STORAGE/TENSOR: dtype source
    // STORAGE
    ldm_dtype dtype;
    int64_t numel;             // storage numel (elements)
    const uint8_t *data;       // storage bytes in the mapping
    // TENSOR
    pv *storage;
    int ndim;
    int64_t shape[LDM_MAX_DIMS], stride[LDM_MAX_DIMS];
};

typedef struct arena_block { struct arena_block *next; size_t used, cap; } arena_block;
static pv pv_none = {.kind = PV_NONE}, pv_true = {.kind = PV_BOOL, .i = 1},
          pv_false = {.kind = PV_BOOL, .i = 0};  // shared immutable constants

typedef struct pk {
    const uint8_t *start, *p, *end;   // the pickle bytes
    const char *path;
    const zip_archive *zip;
    const char *dir;                  // "<dir>/" prefix of data.pkl
    size_t dirlen;
    arena_block *arena;
    size_t arena_total;               // bytes allocated by the arena so far
    pv **stack;  int64_t sp, scap;
    int64_t *marks; int64_t nmarks, mcap;
    pv **memo;   int64_t memo_cap;
    int64_t memo_len;                 // slots set (Python's len(memo), for MEMOIZE)
    int64_t op_off;                   // offset of the current opcode (messages)
} pk;

#define PK_MAX_MARKS 4096          // nesting depth of MARK ... TUPLE/SETITEMS
#define PK_MAX_STR (1u << 20)      // longest string/bytes value (1 MiB)
#define PK_MEMO_SLACK 4096         // memo indices may run this far ahead of len(memo)
#define PK_MAX_ARENA ((size_t)512 << 20)  // all values of one pickle: 512 MiB
                                   // (an SD checkpoint's pickle needs ~20 MiB)

static void *arena_alloc(pk *k, size_t n) {
    n = (n + 15) & ~(size_t)15;
    arena_block *b = k->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > (1u << 16) ? n : (1u << 16);
        if (k->arena_total + cap > PK_MAX_ARENA) return NULL;
        k->arena_total += cap;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = k->arena;
        b->used = 0;
        b->cap = cap;
        k->arena = b;
    }
    void *p = (uint8_t *)(b + 1) + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

static void pk_free(pk *k) {
    for (arena_block *b = k->arena, *nx; b; b = nx) { nx = b->next; free(b); }
    free(k->stack);
    free(k->marks);
    free(k->memo);
}

static int pk_err(pk *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int pk_err(pk *k, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ldm_error("%s: data.pkl byte %lld: %s", k->path, (long long)k->op_off, msg);
}

static pv *pv_new(pk *k, pv_kind kind) {
    pv *v = arena_alloc(k, sizeof *v);
    if (v) v->kind = kind;
    else pk_err(k, "out of memory (or the pickle builds more than %zu MiB of values)",
                PK_MAX_ARENA >> 20);
    return v;
}

static int pv_append(pk *k, pv *c, pv *item) {
    if (c->n == c->cap) {
        int64_t cap = c->cap ? c->cap * 2 : 8;
        pv **it = arena_alloc(k, (size_t)cap * sizeof *it);
        if (!it) return pk_err(k, "out of memory");
        if (c->n) memcpy(it, c->items, (size_t)c->n * sizeof *it);
        c->items = it;
        c->cap = cap;
    }
    c->items[c->n++] = item;
    return 0;
}

// push(k, NULL) fails quietly: NULL comes from a constructor that has
// already set the error message.
static int push(pk *k, pv *v) {
    if (!v) return LDM_ERR;
    if (k->sp == k->scap) {
        int64_t cap = k->scap ? k->scap * 2 : 256;
        pv **s = realloc(k->stack, (size_t)cap * sizeof *s);
        if (!s) return pk_err(k, "out of memory");
        k->stack = s;
        k->scap = cap;
    }
    k->stack[k->sp++] = v;
    return 0;
}

static pv *pop(pk *k) {
    int64_t floor = k->nmarks ? k->marks[k->nmarks - 1] : 0;
    if (k->sp <= floor) { pk_err(k, "stack underflow (malformed pickle)"); return NULL; }
    return k->stack[--k->sp];
}

static pv *top(pk *k) {
    int64_t floor = k->nmarks ? k->marks[k->nmarks - 1] : 0;
    if (k->sp <= floor) { pk_err(k, "stack underflow (malformed pickle)"); return NULL; }
    return k->stack[k->sp - 1];
}

// Items above the last MARK: stack[*first .. sp), and pop the mark.
static int pop_mark(pk *k, int64_t *first) {
    if (!k->nmarks) return pk_err(k, "no MARK on the stack (malformed pickle)");
    *first = k->marks[--k->nmarks];
    return 0;
}

static int need(pk *k, uint64_t n) {
    if ((uint64_t)(k->end - k->p) < n)
        return pk_err(k, "truncated pickle: need %llu more bytes, %lld left",
                      (unsigned long long)n, (long long)(k->end - k->p));
    return 0;
}

static pv *make_str(pk *k, pv_kind kind, uint64_t len) {
    if (need(k, len)) return NULL;
    if (len > PK_MAX_STR) { pk_err(k, "string of %llu bytes is over the 1 MiB limit",
                                   (unsigned long long)len); return NULL; }
    pv *v = pv_new(k, kind);
    char *s = v ? arena_alloc(k, (size_t)len + 1) : NULL;
    if (!s) { pk_err(k, "out of memory"); return NULL; }
    memcpy(s, k->p, (size_t)len);
    s[len] = 0;
    v->s = s;
    v->slen = (size_t)len;
    k->p += len;
    return v;
}

static int memo_put(pk *k, uint64_t idx) {
    // A pickler numbers memo slots 0,1,2,... in order, so a new index is at
    // most a little past the number of slots set: that bounds the memo array
    // by the number of PUT opcodes (at least 2 bytes each) in the pickle.
    if (idx > (uint64_t)k->memo_len + PK_MEMO_SLACK)
        return pk_err(k, "memo index %llu out of range (%lld slots set so far)",
                      (unsigned long long)idx, (long long)k->memo_len);
    pv *v = top(k);
    if (!v) return LDM_ERR;
    if ((int64_t)idx >= k->memo_cap) {
        int64_t cap = k->memo_cap ? k->memo_cap : 64;
        while (cap <= (int64_t)idx) cap *= 2;
        pv **m = realloc(k->memo, (size_t)cap * sizeof *m);
        if (!m) return pk_err(k, "out of memory");
        memset(m + k->memo_cap, 0, (size_t)(cap - k->memo_cap) * sizeof *m);
        k->memo = m;
        k->memo_cap = cap;
    }
    if (!k->memo[idx]) k->memo_len++;
    k->memo[idx] = v;
    return 0;
}

static int memo_get(pk *k, uint64_t idx) {
    if ((int64_t)idx >= k->memo_cap || !k->memo[idx])
        return pk_err(k, "memo index %llu was never stored", (unsigned long long)idx);
    return push(k, k->memo[idx]);
}

// GLOBAL module\nname\n: look it up in the allow-list, or refuse.
static int do_global(pk *k, const char *mod, const char *name) {
    for (size_t i = 0; i < sizeof allowed_globals / sizeof *allowed_globals; i++)
        if (!strcmp(allowed_globals[i].module, mod) && !strcmp(allowed_globals[i].name, name)) {
            pv *v = pv_new(k, PV_GLOBAL);
            if (v) v->g = &allowed_globals[i];
            return push(k, v);
        }
    return pk_err(k, "pickle global '%s.%s' is not allowed: this loader only rebuilds tensors "
                  "and never runs code from a checkpoint (the file may be malicious, or needs a "
                  "newer loader)", mod, name);
}

static int read_line(pk *k, char *out, size_t cap) {
    size_t n = 0;
    while (k->p < k->end && *k->p != '\n') {
        if (n + 1 >= cap) return pk_err(k, "GLOBAL name longer than %zu bytes", cap - 1);
        out[n++] = (char)*k->p++;
    }
    if (k->p >= k->end) return pk_err(k, "truncated pickle inside a GLOBAL");
    k->p++;
    out[n] = 0;
    return 0;
}

static int as_int(pk *k, const pv *v, const char *what, int64_t *out) {
    if (!v || (v->kind != PV_INT && v->kind != PV_BOOL))
        return pk_err(k, "%s: expected an int, found %s", what, v ? pv_kind_name[v->kind] : "nothing");
    *out = v->i;
    return 0;
}

// _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
static pv *rebuild_tensor(pk *k, const pv *args) {
    if (args->kind != PV_TUPLE || args->n < 4 || args->n > 7) {
        pk_err(k, "_rebuild_tensor_v2: expected 6 arguments, found %s of %lld",
               pv_kind_name[args->kind], (long long)args->n);
        return NULL;
    }
    const pv *st = args->items[0], *size = args->items[2], *stride = args->items[3];
    if (st->kind != PV_STORAGE) {
        pk_err(k, "_rebuild_tensor_v2: first argument is a %s, not a storage", pv_kind_name[st->kind]);
        return NULL;
    }
    if (size->kind != PV_TUPLE || stride->kind != PV_TUPLE || size->n != stride->n) {
        pk_err(k, "_rebuild_tensor_v2: size and stride must be tuples of equal length");
        return NULL;
    }
    if (size->n > LDM_MAX_DIMS) {
        pk_err(k, "tensor of rank %lld (at most %d supported)", (long long)size->n, LDM_MAX_DIMS);
        return NULL;
    }
    pv *t = pv_new(k, PV_TENSOR);
    if (!t) { pk_err(k, "out of memory"); return NULL; }
    t->storage = (pv *)st;
    t->dtype = st->dtype;
    if (as_int(k, args->items[1], "storage offset", &t->i)) return NULL;
    t->ndim = (int)size->n;
    for (int d = 0; d < t->ndim; d++) {
        if (as_int(k, size->items[d], "tensor size", &t->shape[d]) ||
            as_int(k, stride->items[d], "tensor stride", &t->stride[d]))
            return NULL;
        if (t->shape[d] < 0 || t->stride[d] < 0) {
            pk_err(k, "negative tensor size or stride");
            return NULL;
        }
    }
    if (t->i < 0) { pk_err(k, "negative storage offset"); return NULL; }
    return t;
}

// BINPERSID: ('storage', torch.<Type>Storage, key, location, numel)
static pv *persistent_load(pk *k, const pv *pid) {
    if (pid->kind != PV_TUPLE || pid->n != 5 || pid->items[0]->kind != PV_STR ||
        strcmp(pid->items[0]->s, "storage") != 0) {
        pk_err(k, "persistent id is not a ('storage', type, key, location, numel) tuple");
        return NULL;
    }
    const pv *ty = pid->items[1], *key = pid->items[2];
    if (ty->kind != PV_GLOBAL || ty->g->kind != G_STORAGE) {
        pk_err(k, "persistent id: storage type is not one of torch.*Storage");
        return NULL;
    }
    if (key->kind != PV_STR || key->slen == 0 || key->slen > 256) {
        pk_err(k, "persistent id: bad storage key");
        return NULL;
    }
    int64_t numel = 0;
    if (as_int(k, pid->items[4], "storage numel", &numel)) return NULL;
    int es = ldm_dtype_size(ty->g->dtype);
    if (numel < 0 || (uint64_t)numel > UINT64_MAX / (uint64_t)es) {
        pk_err(k, "storage '%s': impossible size %lld", key->s, (long long)numel);
        return NULL;
    }
    // The bytes live in the zip entry <dir>/data/<key>.
    char name[512];
    int nl = snprintf(name, sizeof name, "%.*sdata/%s", (int)k->dirlen, k->dir, key->s);
    if (nl < 0 || (size_t)nl >= sizeof name) { pk_err(k, "storage key too long"); return NULL; }
    const zip_entry *e = zip_find(k->zip, name, (size_t)nl);
    if (!e) {
        pk_err(k, "storage key '%s' has no zip entry '%s' (truncated or corrupt archive)", key->s,
               name);
        return NULL;
    }
    if (e->size != (uint64_t)numel * (uint64_t)es) {
        pk_err(k, "storage '%s' declares %lld %s elements (%llu bytes) but its entry holds %llu "
               "bytes", key->s, (long long)numel, ldm_dtype_name(ty->g->dtype),
               (unsigned long long)numel * es, (unsigned long long)e->size);
        return NULL;
    }
    pv *s = pv_new(k, PV_STORAGE);
    if (!s) { pk_err(k, "out of memory"); return NULL; }
    s->s = key->s;
    s->slen = key->slen;
    s->dtype = ty->g->dtype;
    s->numel = numel;
    s->data = e->data;
    return s;
}

static const char *opcode_name(uint8_t op) {
    switch (op) {
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 'P': return "PERSID";
    case 0x82: case 0x83: case 0x84: return "EXT";
    case 'I': return "INT";
    case 'L': return "LONG";
    case 0x8b: return "LONG4";
    case 'S': return "STRING";
    case 'V': return "UNICODE";
    case 'F': return "FLOAT";
    case 'g': return "GET";
    case 'p': return "PUT";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return "unknown";
    }
}

// Run the pickle to its STOP; *result is the top-level object.
static int pk_run(pk *k, pv **result) {
    char mod[256], name[256];
    while (k->p < k->end) {
        k->op_off = k->p - k->start;
        uint8_t op = *k->p++;
        pv *v, *a, *b;
        int64_t first = 0;
        switch (op) {
        case 0x80:  // PROTO
            if (need(k, 1)) return LDM_ERR;
            if (*k->p > 5) return pk_err(k, "pickle protocol %u is unknown", *k->p);
            k->p++;
            break;
        case 0x95:  // FRAME (protocol 4): a length hint only
            if (need(k, 8)) return LDM_ERR;
            k->p += 8;
            break;
        case '.':   // STOP
            if (!(v = pop(k))) return LDM_ERR;
            *result = v;
            return 0;
        case 'N': if (push(k, &pv_none)) return LDM_ERR; break;
        case 0x88: case 0x89:  // NEWTRUE NEWFALSE
            if (push(k, op == 0x88 ? &pv_true : &pv_false)) return LDM_ERR;
            break;
        case 'K': case 'M': case 'J': {  // BININT1 BININT2 BININT
            int n = op == 'K' ? 1 : op == 'M' ? 2 : 4;
            if (need(k, (uint64_t)n) || !(v = pv_new(k, PV_INT))) return LDM_ERR;
            v->i = n == 1 ? k->p[0] : n == 2 ? rd16(k->p) : (int32_t)rd32(k->p);
            k->p += n;
            if (push(k, v)) return LDM_ERR;
            break;
        }
        case 0x8a: {  // LONG1: n-byte little-endian two's complement
            if (need(k, 1)) return LDM_ERR;
            int n = *k->p++;
            if (n > 8) return pk_err(k, "LONG1 integer of %d bytes is too large", n);
            if (need(k, (uint64_t)n) || !(v = pv_new(k, PV_INT))) return LDM_ERR;
            uint64_t u = 0;
            for (int j = n - 1; j >= 0; j--) u = (u << 8) | k->p[j];
            if (n > 0 && n < 8 && (k->p[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);
            v->i = (int64_t)u;
            k->p += n;
            if (push(k, v)) return LDM_ERR;
            break;
        }
        case 'G': {  // BINFLOAT: big-endian double
            if (need(k, 8) || !(v = pv_new(k, PV_FLOAT))) return LDM_ERR;
            uint64_t u = 0;
            for (int j = 0; j < 8; j++) u = (u << 8) | k->p[j];
            memcpy(&v->f, &u, 8);
            k->p += 8;
            if (push(k, v)) return LDM_ERR;
            break;
        }
        case 'X': case 0x8c: case 0x8d: case 'B': case 'C': {  // strings and bytes
            uint64_t len;
            int n = (op == 0x8c || op == 'C') ? 1 : op == 0x8d ? 8 : 4;
            if (need(k, (uint64_t)n)) return LDM_ERR;
            len = n == 1 ? k->p[0] : n == 4 ? rd32(k->p) : rd64(k->p);
            k->p += n;
            if (push(k, make_str(k, (op == 'B' || op == 'C') ? PV_BYTES : PV_STR, len)))
                return LDM_ERR;
            break;
        }
        case ')': if (push(k, pv_new(k, PV_TUPLE))) return LDM_ERR; break;
        case ']': if (push(k, pv_new(k, PV_LIST))) return LDM_ERR; break;
        case '}': if (push(k, pv_new(k, PV_DICT))) return LDM_ERR; break;
        case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
            int n = op - 0x84;
            if (!(v = pv_new(k, PV_TUPLE))) return pk_err(k, "out of memory");
            pv *it[3];
            for (int j = n - 1; j >= 0; j--)
                if (!(it[j] = pop(k))) return LDM_ERR;
            for (int j = 0; j < n; j++)
                if (pv_append(k, v, it[j])) return LDM_ERR;
            if (push(k, v)) return LDM_ERR;
            break;
        }
        case '(':  // MARK
            if (k->nmarks >= PK_MAX_MARKS)
                return pk_err(k, "nesting deeper than %d MARKs", PK_MAX_MARKS);
            if (k->nmarks == k->mcap) {
                int64_t cap = k->mcap ? k->mcap * 2 : 32;
                int64_t *m = realloc(k->marks, (size_t)cap * sizeof *m);
                if (!m) return pk_err(k, "out of memory");
                k->marks = m;
                k->mcap = cap;
            }
            k->marks[k->nmarks++] = k->sp;
            break;
        case 't': case 'l': case 'd':  // TUPLE LIST DICT from the mark
            if (pop_mark(k, &first)) return LDM_ERR;
            if (!(v = pv_new(k, op == 't' ? PV_TUPLE : op == 'l' ? PV_LIST : PV_DICT)))
                return pk_err(k, "out of memory");
            if (op == 'd' && (k->sp - first) % 2) return pk_err(k, "DICT with an odd item count");
            for (int64_t j = first; j < k->sp; j++)
                if (pv_append(k, v, k->stack[j])) return LDM_ERR;
            k->sp = first;
            if (push(k, v)) return LDM_ERR;
            break;
        case '0':  // POP
            if (k->nmarks && k->marks[k->nmarks - 1] == k->sp) { k->nmarks--; break; }
            if (!pop(k)) return LDM_ERR;
            break;
        case '1':  // POP_MARK
            if (pop_mark(k, &first)) return LDM_ERR;
            k->sp = first;
            break;
        case 'a':  // APPEND
            if (!(b = pop(k)) || !(a = top(k))) return LDM_ERR;
            if (a->kind == PV_LIST) { if (pv_append(k, a, b)) return LDM_ERR; }
            else if (a->kind != PV_OPAQUE) return pk_err(k, "APPEND to a %s", pv_kind_name[a->kind]);
            break;
        case 'e': case 's': case 'u': {  // APPENDS SETITEM SETITEMS
            // The items are stack[lo..sp); the container sits just below them.
            int64_t lo;
            if (op == 's') {
                lo = k->sp - 2;
            } else {
                if (pop_mark(k, &first)) return LDM_ERR;
                lo = first;
            }
            int64_t floor = k->nmarks ? k->marks[k->nmarks - 1] : 0;
            if (lo - 1 < floor) return pk_err(k, "stack underflow (malformed pickle)");
            a = k->stack[lo - 1];
            if (op == 'e') {
                if (a->kind == PV_LIST) {
                    for (int64_t j = lo; j < k->sp; j++)
                        if (pv_append(k, a, k->stack[j])) return LDM_ERR;
                } else if (a->kind != PV_OPAQUE) {
                    return pk_err(k, "APPENDS to a %s", pv_kind_name[a->kind]);
                }
            } else {
                if ((k->sp - lo) % 2) return pk_err(k, "SETITEMS with an odd item count");
                if (a->kind == PV_DICT) {
                    for (int64_t j = lo; j < k->sp; j++)
                        if (pv_append(k, a, k->stack[j])) return LDM_ERR;
                } else if (a->kind != PV_OPAQUE) {
                    return pk_err(k, "SETITEM on a %s", pv_kind_name[a->kind]);
                }
            }
            k->sp = lo;
            break;
        }
        case 'q': case 'r': case 0x94: {  // BINPUT LONG_BINPUT MEMOIZE
            uint64_t idx;
            if (op == 0x94) {
                idx = (uint64_t)k->memo_len;
            } else {
                int n = op == 'q' ? 1 : 4;
                if (need(k, (uint64_t)n)) return LDM_ERR;
                idx = n == 1 ? k->p[0] : rd32(k->p);
                k->p += n;
            }
            if (memo_put(k, idx)) return LDM_ERR;
            break;
        }
        case 'h': case 'j': {  // BINGET LONG_BINGET
            int n = op == 'h' ? 1 : 4;
            if (need(k, (uint64_t)n)) return LDM_ERR;
            uint64_t idx = n == 1 ? k->p[0] : rd32(k->p);
            k->p += n;
            if (memo_get(k, idx)) return LDM_ERR;
            break;
        }
        case 'c':  // GLOBAL module\nname\n
            if (read_line(k, mod, sizeof mod) || read_line(k, name, sizeof name)) return LDM_ERR;
            if (do_global(k, mod, name)) return LDM_ERR;
            break;
        case 0x93:  // STACK_GLOBAL (protocol 4)
            if (!(b = pop(k)) || !(a = pop(k))) return LDM_ERR;
            if (a->kind != PV_STR || b->kind != PV_STR)
                return pk_err(k, "STACK_GLOBAL needs two strings");
            if (do_global(k, a->s, b->s)) return LDM_ERR;
            break;
        case 'Q':  // BINPERSID
            if (!(a = pop(k))) return LDM_ERR;
            if (push(k, persistent_load(k, a))) return LDM_ERR;
            break;
        case 'R': {  // REDUCE: callable(*args) -- interpreted, never called
            if (!(b = pop(k)) || !(a = pop(k))) return LDM_ERR;
            if (a->kind != PV_GLOBAL)
                return pk_err(k, "REDUCE on a %s, not an allowed global", pv_kind_name[a->kind]);
            if (b->kind != PV_TUPLE) return pk_err(k, "REDUCE arguments are not a tuple");
            switch (a->g->kind) {
            case G_REBUILD_TENSOR: v = rebuild_tensor(k, b); if (!v) return LDM_ERR; break;
            case G_REBUILD_PARAM:  // (tensor, requires_grad, hooks): the tensor itself
                if (b->n < 1 || b->items[0]->kind != PV_TENSOR)
                    return pk_err(k, "_rebuild_parameter without a tensor");
                v = b->items[0];
                break;
            case G_ORDERED_DICT:
                if (b->n != 0) return pk_err(k, "OrderedDict(...) with arguments is not supported");
                v = pv_new(k, PV_DICT);
                break;
            case G_OPAQUE: v = pv_new(k, PV_OPAQUE); break;
            default:
                return pk_err(k, "%s.%s cannot be called", a->g->module, a->g->name);
            }
            if (push(k, v)) return LDM_ERR;
            break;
        }
        case 'b':  // BUILD: obj.__setstate__(state) -- state is dropped
            // (an OrderedDict state dict's _metadata, numpy array payloads)
            if (!(b = pop(k)) || !(a = top(k))) return LDM_ERR;
            if (a->kind != PV_DICT && a->kind != PV_OPAQUE && a->kind != PV_TENSOR)
                return pk_err(k, "BUILD on a %s", pv_kind_name[a->kind]);
            break;
        default:
            return pk_err(k, "pickle opcode 0x%02x (%s) is not allowed: this loader only rebuilds "
                          "tensors and never runs code from a checkpoint", op, opcode_name(op));
        }
    }
    return pk_err(k, "truncated pickle: no STOP opcode");
}

// ---------------------------------------------------------------------------
// Part 3: from the pickled object to the tensor list.

static const pv *dict_get(const pv *d, const char *key) {
    for (int64_t j = 0; j < d->n / 2; j++) {
        const pv *kk = d->items[2 * j];
        if (kk->kind == PV_STR && !strcmp(kk->s, key)) return d->items[2 * j + 1];
    }
    return NULL;
}

static int entry_name_cmp(const void *a, const void *b) {
    return strcmp(((const ldm_tensor_entry *)a)->name, ((const ldm_tensor_entry *)b)->name);
}

// dst [numel] <- the strided view (offset, shape, stride) of storage src,
// row-major: element (i_0..i_{n-1}) is src[offset + sum_d i_d stride_d].
static void gather_view(uint8_t *dst, const uint8_t *src, const pv *t, int es) {
    int64_t idx[LDM_MAX_DIMS] = {0}, at = t->i;   // the multi-index and its storage element
    for (int64_t k = 0;; k++) {
        memcpy(dst + k * es, src + at * es, (size_t)es);
        int d = t->ndim - 1;  // odometer: bump the last index, carry leftwards
        while (d >= 0 && ++idx[d] == t->shape[d]) {
            at -= (t->shape[d] - 1) * t->stride[d];
            idx[d--] = 0;
        }
        if (d < 0) return;
        at += t->stride[d];
    }
}

// One tensor record -> a file entry pointing into the storage bytes (a
// contiguous copy for a strided view).
static int tensor_entry(ldm_tensor_entry *e, const pv *t, const char *name, const char *path) {
    const pv *st = t->storage;
    int64_t numel = 1, expect = 1, reach = t->i;   // reach: the furthest element touched
    int contiguous = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 0 && numel > INT64_MAX / t->shape[d])
            return ldm_error("%s: tensor '%s': shape overflows", path, name);
        numel *= t->shape[d];
    }
    // Contiguous (row-major) strides; size-1 dims may carry any stride.
    for (int d = t->ndim - 1; d >= 0 && numel > 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != expect) contiguous = 0;
        expect *= t->shape[d];
        int64_t span = t->shape[d] - 1;
        if (span > 0 && t->stride[d] > (INT64_MAX - reach) / span)
            return ldm_error("%s: tensor '%s': strides overflow", path, name);
        reach += span * t->stride[d];
    }
    if (numel > 0 && reach >= st->numel) {
        char s1[128], s2[128];
        return ldm_error("%s: tensor '%s' %s (stride %s) at offset %lld reaches element %lld but "
                         "storage '%s' holds %lld: shape disagrees with the storage", path, name,
                         ldm_shape_str(s1, sizeof s1, t->shape, t->ndim),
                         ldm_shape_str(s2, sizeof s2, t->stride, t->ndim), (long long)t->i,
                         (long long)reach, st->s, (long long)st->numel);
    }
    int es = ldm_dtype_size(st->dtype);
    // A view may repeat storage elements (stride 0: torch's expand), so its
    // copy can outgrow the file. Bounded: one with more elements than its
    // storage and over 256 MiB is refused, so that a few bytes of pickle
    // cannot ask for gigabytes.
    const uint64_t copy_bytes = (uint64_t)numel * (uint64_t)es;
    if (!contiguous && numel > st->numel && copy_bytes > ((uint64_t)256 << 20)) {
        char s1[128], s2[128];
        return ldm_error("%s: tensor '%s' %s (stride %s) repeats the %lld elements of storage '%s' "
                         "into %lld: its copy would take %.0f MiB (an expanded view over 256 MiB "
                         "is refused)", path, name, ldm_shape_str(s1, sizeof s1, t->shape, t->ndim),
                         ldm_shape_str(s2, sizeof s2, t->stride, t->ndim), (long long)st->numel,
                         st->s, (long long)numel, copy_bytes / 1048576.0);
    }
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    if (!e->name) return ldm_error("%s: out of memory", path);
    e->dtype = st->dtype;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof e->shape);
    e->numel = numel;
    e->nbytes = (uint64_t)numel * (uint64_t)es;
    if (contiguous || numel == 0) {
        e->data = st->data + (numel > 0 ? (uint64_t)t->i * (uint64_t)es : 0);
        return 0;
    }
    e->owned = malloc(e->nbytes);
    if (!e->owned) return ldm_error("%s: tensor '%s': out of memory for its contiguous copy", path, name);
    gather_view(e->owned, st->data, t, es);
    e->data = e->owned;
    return 0;
}

static int add_meta(ldm_tensor_file *f, const char *key, const char *value) {
    char **k = realloc(f->meta_keys, (size_t)(f->n_meta + 1) * sizeof *k);
    if (!k) return -1;
    f->meta_keys = k;
    char **v = realloc(f->meta_values, (size_t)(f->n_meta + 1) * sizeof *v);
    if (!v) return -1;
    f->meta_values = v;
    f->meta_keys[f->n_meta] = strdup(key);
    f->meta_values[f->n_meta] = strdup(value);
    f->n_meta++;
    return f->meta_keys[f->n_meta - 1] && f->meta_values[f->n_meta - 1] ? 0 : -1;
}

static int collect(ldm_tensor_file *f, const pv *root, const char *path) {
    if (root->kind != PV_DICT)
        return ldm_error("%s: the pickled object is a %s, not a dict of tensors", path,
                         pv_kind_name[root->kind]);
    // Lightning checkpoints: {"state_dict": {...}, "global_step": N, ...};
    // a plain state dict (diffusers pytorch_model.bin) is the dict itself.
    const pv *sd = dict_get(root, "state_dict");
    if (!sd || sd->kind != PV_DICT) sd = dict_get(root, "string_to_param");   // A1111 embedding
    if (!sd || sd->kind != PV_DICT) sd = root;
    for (int64_t j = 0; j < root->n / 2; j++) {
        const pv *kk = root->items[2 * j], *vv = root->items[2 * j + 1];
        char buf[64];
        if (kk->kind != PV_STR || root == sd) continue;
        if (vv->kind == PV_INT) snprintf(buf, sizeof buf, "%lld", (long long)vv->i);
        else if (vv->kind == PV_STR && vv->slen < 64) snprintf(buf, sizeof buf, "%s", vv->s);
        else continue;
        if (add_meta(f, kk->s, buf)) return ldm_error("%s: out of memory", path);
    }
    int64_t n = 0;
    for (int64_t j = 0; j < sd->n / 2; j++) n += sd->items[2 * j + 1]->kind == PV_TENSOR;
    f->entries = calloc((size_t)(n ? n : 1), sizeof *f->entries);
    if (!f->entries) return ldm_error("%s: out of memory", path);
    for (int64_t j = 0; j < sd->n / 2; j++) {
        const pv *kk = sd->items[2 * j], *vv = sd->items[2 * j + 1];
        if (vv->kind != PV_TENSOR) continue;
        if (kk->kind != PV_STR) return ldm_error("%s: a tensor's key is a %s, not a string", path,
                                                 pv_kind_name[kk->kind]);
        if (tensor_entry(&f->entries[f->n_entries], vv, kk->s, path)) return LDM_ERR;
        f->n_entries++;
    }
    // Names are unique (a pickle could repeat a key; Python would keep the last).
    ldm_tensor_entry *sorted = malloc((size_t)(n ? n : 1) * sizeof *sorted);
    if (!sorted) return ldm_error("%s: out of memory", path);
    memcpy(sorted, f->entries, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, entry_name_cmp);
    for (int64_t j = 1; j < n; j++)
        if (!strcmp(sorted[j - 1].name, sorted[j].name)) {
            ldm_error("%s: duplicate tensor name '%s'", path, sorted[j].name);
            free(sorted);
            return LDM_ERR;
        }
    free(sorted);
    return 0;
}

// ---------------------------------------------------------------------------
// Entry point (tensorfile.h)

// The pickle of a torch.save archive: exactly one "<dir>/data.pkl" entry with
// one directory level (TorchScript and other archives have none). NULL + error.
static const zip_entry *find_pickle(const zip_archive *z, const char *path) {
    const zip_entry *pkl = NULL;
    for (int64_t i = 0; i < z->n; i++) {
        const zip_entry *e = &z->e[i];
        const char *slash = memchr(e->name, '/', e->nlen);
        if (e->nlen > 9 && slash && (size_t)(slash - e->name) == e->nlen - 9 &&
            !memcmp(e->name + e->nlen - 8, "data.pkl", 8)) {
            if (pkl) {
                ldm_error("%s: zip holds more than one <dir>/data.pkl", path);
                return NULL;
            }
            pkl = e;
        }
    }
    if (!pkl)
        ldm_error("%s: zip has no <dir>/data.pkl entry: not a torch.save checkpoint "
                  "(a TorchScript or other archive?)", path);
    return pkl;
}

// "<dir>/byteorder", when present, must say "little": storages are read as
// little-endian bytes.
static int check_byteorder(const zip_archive *z, const char *dir, size_t dirlen,
                           const char *path) {
    char bo[600];
    int bl = snprintf(bo, sizeof bo, "%.*sbyteorder", (int)dirlen, dir);
    const zip_entry *byteorder =
        bl > 0 && (size_t)bl < sizeof bo ? zip_find(z, bo, (size_t)bl) : NULL;
    if (byteorder && !(byteorder->size == 6 && !memcmp(byteorder->data, "little", 6)))
        return ldm_error("%s: archive byteorder is not 'little': big-endian checkpoints are not "
                         "supported", path);
    return 0;
}

// zip (Part 1) -> the pickle and its byte order -> run it (Part 2) ->
// collect the state dict (Part 3).
int ldm_ckpt_parse(ldm_tensor_file *f, const uint8_t *buf, size_t size, const char *path) {
    memset(f, 0, sizeof *f);
    if (!path) path = "<buffer>";
    if (size >= 2 && buf[0] == 0x80 && buf[1] <= 5)
        return ldm_error("%s: legacy (pre-1.6, non-zip) torch.save format is not supported: "
                         "re-save it with a recent torch or convert it to safetensors", path);
    if (size < 4 || rd32(buf) != SIG_LOCAL)
        return ldm_error("%s: not a zip archive (torch .ckpt/.bin files start with \"PK\\3\\4\")",
                         path);
    zip_archive z;
    if (zip_open(&z, buf, size, path)) return LDM_ERR;
    const zip_entry *pkl = find_pickle(&z, path);
    size_t dirlen = pkl ? pkl->nlen - 8 : 0;  // "<dir>/"
    if (!pkl || check_byteorder(&z, pkl->name, dirlen, path)) {
        free(z.e);
        return LDM_ERR;
    }

    pk k;
    memset(&k, 0, sizeof k);
    k.start = k.p = pkl->data;
    k.end = pkl->data + pkl->size;
    k.path = path;
    k.zip = &z;
    k.dir = pkl->name;
    k.dirlen = dirlen;
    pv *root = NULL;
    int rc = pk_run(&k, &root);
    f->path = strdup(path);
    f->format = "ckpt";
    if (rc == 0 && !f->path) rc = ldm_error("%s: out of memory", path);
    if (rc == 0) rc = collect(f, root, path);
    pk_free(&k);
    free(z.e);
    if (rc != 0) {
        ldm_tensor_file_close(f);  // map is not set yet: frees only what was built
        return LDM_ERR;
    }
    return 0;
}
