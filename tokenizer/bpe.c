/*
 * tokenizer/bpe.c -- CLIP's byte-level BPE: vocabulary loading, the
 * pre-tokenizer, the byte-to-unicode table, merging by rank, a word cache.
 *
 * Mirrors open_clip/tokenizer.py SimpleTokenizer (a copy of OpenAI CLIP's
 * simple_tokenizer.py): bytes_to_unicode(), bpe(), encode(), and
 * open_clip.tokenize()'s [SOT] ids [EOT] + padding. The text cleaning lives in
 * tokenizer/clean.c. Left out: decode(), open_clip's other cleaning modes
 * and its random/syntax token-reduction strategies.
 *
 * Ids: the vocabulary is 256 byte symbols, the same 256 with '</w>', one
 * entry per merge (its two halves joined), then <start_of_text> 49406 and
 * <end_of_text> 49407. Symbols are handled as ids throughout: a merge (a, b)
 * maps the id pair to its rank and to the id of the joined string.
 */
#include "tokenizer/bpe.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>
#include <zlib.h>

#include "ldm/core/error.h"
#include "tokenizer/clean.h"

// The .gz file: line 0 is "#version: 0.2", then these many merges are used
// (simple_tokenizer.py: merges[1:49152-256-2+1]).
#define CLIP_N_MERGES (49152 - 256 - 2)

// ---- hash tables ----------------------------------------------------------------------

static uint64_t hash_bytes(const char *s, size_t n) { // FNV-1a 64
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x) { // splitmix64 finaliser
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27; x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

typedef struct merge_slot {
    uint64_t key;  // (a << 32 | b) + 1; 0 = empty
    int rank;      // merge rank (lower merges first)
    int merged;    // id of the joined symbol
} merge_slot;

typedef struct cache_slot {
    uint64_t hash; // 0 = empty
    uint32_t key_off, key_len; // the piece's UTF-8 bytes in cache_keys
    uint32_t ids_off, ids_n;   // its ids in cache_ids
} cache_slot;

struct ldm_tokenizer {
    int n_vocab;
    char **vocab;          // [n_vocab] BPE string of each id (byte-table form, "a</w>")
    int *str_slots;        // [str_cap] string -> id table (-1 empty), open addressing
    int str_cap;
    merge_slot *merges;    // [merge_cap] (a, b) -> rank, merged id
    int merge_cap, n_merges;
    int byte_id[256];      // byte -> id of its symbol
    int byte_id_w[256];    // byte -> id of its symbol + '</w>'
    int sot, eot;
    int heap_ok;           // merges only ever build on earlier merges: bpe_word_heap is exact
    int fast_min;          // pieces of >= fast_min bytes use bpe_word_heap (default 32)
    // word cache: piece bytes -> ids
    cache_slot *cache;
    int cache_cap, cache_used;
    char *cache_keys;
    size_t keys_n, keys_cap;
    int *cache_ids;
    size_t ids_n, ids_cap;
};

static int str_find(const ldm_tokenizer *t, const char *s, size_t n) {
    uint64_t h = hash_bytes(s, n);
    for (int i = (int)(h & (uint64_t)(t->str_cap - 1));; i = (i + 1) & (t->str_cap - 1)) {
        int id = t->str_slots[i];
        if (id < 0) return -1;
        if (strlen(t->vocab[id]) == n && memcmp(t->vocab[id], s, n) == 0) return id;
    }
}

// Insert vocab[id]; a later duplicate string replaces the earlier id, as
// Python's dict(zip(vocab, range(len(vocab)))) does.
static void str_insert(ldm_tokenizer *t, int id) {
    const char *s = t->vocab[id];
    size_t n = strlen(s);
    uint64_t h = hash_bytes(s, n);
    for (int i = (int)(h & (uint64_t)(t->str_cap - 1));; i = (i + 1) & (t->str_cap - 1)) {
        int old = t->str_slots[i];
        if (old < 0 || strcmp(t->vocab[old], s) == 0) { t->str_slots[i] = id; return; }
    }
}

static merge_slot *merge_find(const ldm_tokenizer *t, int a, int b) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    for (int i = (int)(hash_u64(key) & (uint64_t)(t->merge_cap - 1));; i = (i + 1) & (t->merge_cap - 1)) {
        merge_slot *m = &t->merges[i];
        if (m->key == 0 || m->key == key) return m;
    }
}

// ---- the byte-to-unicode table ----------------------------------------------------------
// bytes_to_unicode(): printable bytes 33-126, 161-172, 174-255 stand for
// themselves; the other 68 (controls, space, 127-160, 173) become U+0100 +
// n in byte order, so every byte is a visible character. cs[i] is the
// character of the i-th byte in that order, which is also vocab order.
static void byte_table(int bs[256], int cs[256]) {
    int k = 0, extra = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) bs[k] = b, cs[k] = b, k++;
    for (int b = 0; b < 256; b++)
        if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)))
            bs[k] = b, cs[k] = 256 + extra++, k++;
}

// ---- building a tokenizer from vocab strings + merges ----------------------------------------

static int pow2_at_least(int n) {
    int c = 1;
    while (c < n) c *= 2;
    return c;
}

// Takes ownership of vocab[n_vocab]; merges are pairs of strings (not owned).
static int tokenizer_build(ldm_tokenizer **out, char **vocab, int n_vocab, char **ma, char **mb, int n_merges,
                           const char *what) {
    ldm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        for (int i = 0; i < n_vocab; i++) free(vocab[i]);
        free(vocab);
        return ldm_error("%s: out of memory", what);
    }
    t->vocab = vocab;
    t->n_vocab = n_vocab;
    t->str_cap = pow2_at_least(2 * n_vocab + 16);
    t->str_slots = malloc((size_t)t->str_cap * sizeof *t->str_slots);
    t->merge_cap = pow2_at_least(2 * n_merges + 16);
    t->merges = calloc((size_t)t->merge_cap, sizeof *t->merges);
    if (!t->str_slots || !t->merges) {
        ldm_tokenizer_free(t);
        return ldm_error("%s: out of memory", what);
    }
    memset(t->str_slots, 0xff, (size_t)t->str_cap * sizeof *t->str_slots);
    for (int i = 0; i < n_vocab; i++) {
        if (!vocab[i]) { ldm_tokenizer_free(t); return ldm_error("%s: no token has id %d (ids must be 0..%d)", what, i, n_vocab - 1); }
        str_insert(t, i);
    }
    // The byte symbols.
    int bs[256], cs[256];
    byte_table(bs, cs);
    for (int i = 0; i < 256; i++) {
        char s[16];
        int k = (int)utf8proc_encode_char(cs[i], (utf8proc_uint8_t *)s);
        s[k] = 0;
        int id = str_find(t, s, (size_t)k);
        memcpy(s + k, "</w>", 5);
        int idw = str_find(t, s, (size_t)k + 4);
        if (id < 0 || idw < 0) {
            ldm_tokenizer_free(t);
            return ldm_error("%s: byte symbol U+%04X%s missing from the vocabulary -- not a CLIP BPE vocabulary?",
                             what, cs[i], id < 0 ? "" : "</w>");
        }
        t->byte_id[bs[i]] = id;
        t->byte_id_w[bs[i]] = idw;
    }
    // The merges: ids of both halves and of the joined string.
    char buf[512];
    for (int r = 0; r < n_merges; r++) {
        size_t la = strlen(ma[r]), lb = strlen(mb[r]);
        int a = str_find(t, ma[r], la), b = str_find(t, mb[r], lb);
        int ab = -1;
        if (la + lb < sizeof buf) {
            memcpy(buf, ma[r], la);
            memcpy(buf + la, mb[r], lb);
            ab = str_find(t, buf, la + lb);
        }
        if (a < 0 || b < 0 || ab < 0) {
            ldm_tokenizer_free(t);
            return ldm_error("%s: merge %d '%s %s': %s not in the vocabulary -- corrupt vocabulary?", what, r + 1,
                             ma[r], mb[r], a < 0 ? "the first half" : b < 0 ? "the second half" : "the joined symbol");
        }
        merge_slot *m = merge_find(t, a, b);
        m->key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
        m->rank = r; // a repeated pair keeps the later rank, as dict(zip(merges, range)) does
        m->merged = ab;
    }
    t->n_merges = n_merges;
    // bpe_word_heap merges one pair at a time in (rank, position) order. That
    // equals bpe()'s rounds when a merge's halves come from earlier merges
    // only (a pair made by merge r then always ranks after r), true of any
    // vocabulary learned by BPE; checked here, else bpe_word is used alone.
    int *made_by = malloc((size_t)n_vocab * sizeof *made_by);
    t->heap_ok = made_by != NULL;
    if (made_by) {
        for (int i = 0; i < n_vocab; i++) made_by[i] = -1;
        for (int i = 0; i < t->merge_cap; i++) {
            merge_slot *m = &t->merges[i];
            if (!m->key) continue;
            if (made_by[m->merged] >= 0) t->heap_ok = 0; // two merges make the same symbol
            made_by[m->merged] = m->rank;
        }
        for (int i = 0; i < t->merge_cap && t->heap_ok; i++) {
            merge_slot *m = &t->merges[i];
            if (!m->key) continue;
            int a = (int)((m->key - 1) >> 32), b = (int)((m->key - 1) & 0xffffffffu);
            if (made_by[a] >= m->rank || made_by[b] >= m->rank) t->heap_ok = 0;
        }
        free(made_by);
    }
    t->fast_min = 32;
    t->sot = str_find(t, "<start_of_text>", 15);
    if (t->sot < 0) t->sot = str_find(t, "<|startoftext|>", 15);
    t->eot = str_find(t, "<end_of_text>", 13);
    if (t->eot < 0) t->eot = str_find(t, "<|endoftext|>", 13);
    if (t->sot < 0 || t->eot < 0) {
        ldm_tokenizer_free(t);
        return ldm_error("%s: the start/end tokens (<|startoftext|>, <|endoftext|>) are missing", what);
    }
    *out = t;
    return LDM_OK;
}

void ldm_tokenizer_free(ldm_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_vocab; i++) free(t->vocab[i]);
    free(t->vocab);
    free(t->str_slots);
    free(t->merges);
    free(t->cache);
    free(t->cache_keys);
    free(t->cache_ids);
    free(t);
}

// ---- loading ---------------------------------------------------------------------------

static char *read_gz(const char *path, size_t *len) {
    gzFile f = gzopen(path, "rb");
    if (!f) {
        ldm_error("vocabulary %s: cannot open it -- run `make vocab` (fetches it from the open_clip_torch "
                  "wheel), or pass --vocab FILE / set LDM_VOCAB", path);
        return NULL;
    }
    size_t cap = 1 << 22, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf) break;
        if (n == cap) {
            char *nb = cap < ((size_t)1 << 28) ? realloc(buf, 2 * cap + 1) : NULL;
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        int k = gzread(f, buf + n, (unsigned)(cap - n));
        if (k < 0) {
            int err;
            const char *msg = gzerror(f, &err);
            ldm_error("vocabulary %s: gzip error: %s -- corrupt file? delete it and run `make vocab`", path, msg);
            free(buf);
            gzclose(f);
            return NULL;
        }
        if (k == 0) break;
        n += (size_t)k;
    }
    int rc = gzclose(f);
    if (!buf) { ldm_error("vocabulary %s: out of memory or larger than 256 MiB", path); return NULL; }
    if (rc != Z_OK) {
        ldm_error("vocabulary %s: gzip stream is truncated or its checksum is wrong (zlib error %d) -- "
                  "delete it and run `make vocab`", path, rc);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n), d[n] = 0;
    return d;
}

// Split "a b" (one line, no '\n') at whitespace into exactly two fields.
static int split_merge(char *line, char **a, char **b) {
    char *save = NULL;
    *a = strtok_r(line, " \t\r\f\v", &save);
    *b = *a ? strtok_r(NULL, " \t\r\f\v", &save) : NULL;
    return *a && *b && !strtok_r(NULL, " \t\r\f\v", &save);
}

static int load_gz(ldm_tokenizer **out, const char *path) {
    size_t len;
    char *text = read_gz(path, &len);
    if (!text) return LDM_ERR;
    if (memchr(text, 0, len)) { free(text); return ldm_error("vocabulary %s: holds NUL bytes -- not a BPE merges file", path); }
    int n_vocab = 512 + CLIP_N_MERGES + 2;
    char **vocab = calloc((size_t)n_vocab, sizeof *vocab);
    char **ma = malloc(CLIP_N_MERGES * sizeof *ma), **mb = malloc(CLIP_N_MERGES * sizeof *mb);
    int rc = LDM_ERR;
    if (!vocab || !ma || !mb) { ldm_error("vocabulary %s: out of memory", path); goto done; }
    int bs[256], cs[256];
    byte_table(bs, cs);
    for (int i = 0; i < 256; i++) {
        char s[16];
        int k = (int)utf8proc_encode_char(cs[i], (utf8proc_uint8_t *)s);
        vocab[i] = dup_n(s, (size_t)k);
        memcpy(s + k, "</w>", 4);
        vocab[256 + i] = dup_n(s, (size_t)k + 4);
    }
    // Lines: split at '\n' in place.
    char *p = text, *end = text + len;
    char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) { // line 0 is a header (its text varies: '"bpe_simple_vocab_16e6.txt#version: 0.2'), skipped
        ldm_error("vocabulary %s: no line break -- not bpe_simple_vocab_16e6.txt.gz?", path);
        goto done;
    }
    p = nl + 1;
    for (int r = 0; r < CLIP_N_MERGES; r++) {
        if (p >= end) {
            ldm_error("vocabulary %s: has %d merges, expected at least %d -- truncated or corrupt file", path, r,
                      CLIP_N_MERGES);
            goto done;
        }
        nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) nl = end;
        *nl = 0;
        if (!split_merge(p, &ma[r], &mb[r])) {
            ldm_error("vocabulary %s: line %d is not a merge 'A B' -- corrupt file", path, r + 2);
            goto done;
        }
        size_t la = strlen(ma[r]), lb = strlen(mb[r]);
        vocab[512 + r] = malloc(la + lb + 1);
        if (!vocab[512 + r]) { ldm_error("vocabulary %s: out of memory", path); goto done; }
        memcpy(vocab[512 + r], ma[r], la);
        memcpy(vocab[512 + r] + la, mb[r], lb + 1);
        p = nl + 1;
    }
    vocab[n_vocab - 2] = dup_n("<start_of_text>", 15);
    vocab[n_vocab - 1] = dup_n("<end_of_text>", 13);
    for (int i = 0; i < n_vocab; i++)
        if (!vocab[i]) { ldm_error("vocabulary %s: out of memory", path); goto done; }
    rc = tokenizer_build(out, vocab, n_vocab, ma, mb, CLIP_N_MERGES, path);
    vocab = NULL; // owned by the tokenizer (or freed by it on error)
done:
    if (vocab) {
        for (int i = 0; i < n_vocab; i++) free(vocab[i]);
        free(vocab);
    }
    free(ma);
    free(mb);
    free(text);
    return rc;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { ldm_error("%s: cannot open it", path); return NULL; }
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            char *nb = cap < ((size_t)1 << 28) ? realloc(buf, 2 * cap + 1) : NULL;
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        if (k == 0) break;
        n += k;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) { free(buf); ldm_error("%s: read error or larger than 256 MiB", path); return NULL; }
    buf[n] = 0;
    *len = n;
    return buf;
}

int ldm_tokenizer_load_hf(ldm_tokenizer **out, const char *vocab_json, const char *merges_txt) {
    size_t jl, ml;
    char *json = read_file(vocab_json, &jl);
    if (!json) return LDM_ERR;
    cJSON *root = cJSON_ParseWithLength(json, jl);
    free(json);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ldm_error("%s: not a JSON object {token: id} -- corrupt vocab.json?", vocab_json);
    }
    int n_vocab = 0, count = cJSON_GetArraySize(root);
    for (cJSON *e = root->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 1e6 || e->valuedouble != (int)e->valuedouble) {
            ldm_error("%s: token '%s' has no valid id (expected an integer 0..1000000)", vocab_json,
                      e->string ? e->string : "?");
            cJSON_Delete(root);
            return LDM_ERR;
        }
        if ((int)e->valuedouble + 1 > n_vocab) n_vocab = (int)e->valuedouble + 1;
    }
    if (n_vocab != count) {
        cJSON_Delete(root);
        return ldm_error("%s: %d tokens but ids go up to %d -- ids must be 0..N-1 without gaps", vocab_json, count,
                         n_vocab - 1);
    }
    char **vocab = calloc((size_t)n_vocab + 1, sizeof *vocab);
    for (cJSON *e = root->child; vocab && e; e = e->next) {
        int id = (int)e->valuedouble;
        if (vocab[id]) {
            cJSON_Delete(root);
            for (int i = 0; i < n_vocab; i++) free(vocab[i]);
            free(vocab);
            return ldm_error("%s: id %d is used twice", vocab_json, id);
        }
        vocab[id] = strdup(e->string ? e->string : "");
    }
    cJSON_Delete(root);
    if (!vocab) return ldm_error("%s: out of memory", vocab_json);
    char *text = read_file(merges_txt, &ml);
    if (!text) {
        for (int i = 0; i < n_vocab; i++) free(vocab[i]);
        free(vocab);
        return LDM_ERR;
    }
    int cap = 1 << 16, nm = 0;
    char **ma = malloc((size_t)cap * sizeof *ma), **mb = malloc((size_t)cap * sizeof *mb);
    char *p = text, *end = text + ml;
    int line = 0, rc = LDM_ERR;
    while (p < end && ma && mb) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) nl = end;
        *nl = 0;
        line++;
        if (!(line == 1 && strncmp(p, "#version", 8) == 0) && p[strspn(p, " \t\r")] != 0) {
            if (nm == cap) {
                cap *= 2;
                char **na = realloc(ma, (size_t)cap * sizeof *ma), **nb = realloc(mb, (size_t)cap * sizeof *mb);
                if (na) ma = na;
                if (nb) mb = nb;
                if (!na || !nb) { ldm_error("%s: out of memory", merges_txt); goto done; }
            }
            if (!split_merge(p, &ma[nm], &mb[nm])) {
                ldm_error("%s: line %d is not a merge 'A B' -- corrupt merges.txt?", merges_txt, line);
                goto done;
            }
            nm++;
        }
        p = nl + 1;
    }
    if (!ma || !mb) { ldm_error("%s: out of memory", merges_txt); goto done; }
    rc = tokenizer_build(out, vocab, n_vocab, ma, mb, nm, vocab_json);
    vocab = NULL;
done:
    if (vocab) {
        for (int i = 0; i < n_vocab; i++) free(vocab[i]);
        free(vocab);
    }
    free(ma);
    free(mb);
    free(text);
    return rc;
}

const char *ldm_tokenizer_default_path(void) { return LDM_VOCAB_DEFAULT; }

int ldm_tokenizer_load(ldm_tokenizer **out, const char *path) {
    *out = NULL;
    if (!path) path = ldm_tokenizer_default_path();
    struct stat st;
    if (stat(path, &st) != 0)
        return ldm_error("vocabulary %s: not found -- run `make vocab` (fetches bpe_simple_vocab_16e6.txt.gz from the "
                         "open_clip_torch wheel), or pass --vocab FILE / set LDM_VOCAB", path);
    if (S_ISDIR(st.st_mode)) { // a diffusers model folder, or its tokenizer/ folder
        char v[4096], m[4096];
        snprintf(v, sizeof v, "%s/tokenizer/vocab.json", path);
        snprintf(m, sizeof m, "%s/tokenizer/merges.txt", path);
        if (stat(v, &st) != 0) {
            snprintf(v, sizeof v, "%s/vocab.json", path);
            snprintf(m, sizeof m, "%s/merges.txt", path);
        }
        if (stat(v, &st) != 0)
            return ldm_error("%s: a folder without tokenizer/vocab.json or vocab.json -- expected a diffusers model "
                             "folder or its tokenizer/ folder", path);
        return ldm_tokenizer_load_hf(out, v, m);
    }
    return load_gz(out, path);
}

int ldm_tokenizer_vocab_size(const ldm_tokenizer *t) { return t->n_vocab; }

const char *ldm_tokenizer_piece(const ldm_tokenizer *t, int id) {
    return id >= 0 && id < t->n_vocab ? t->vocab[id] : NULL;
}

// ---- BPE -----------------------------------------------------------------------------------

typedef struct ids_buf {
    int *v;
    size_t n, cap;
} ids_buf;

static int ids_push(ids_buf *b, int id) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        int *v = realloc(b->v, cap * sizeof *v);
        if (!v) return ldm_error("tokenizer: out of memory");
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = id;
    return LDM_OK;
}

// bpe(): one piece's bytes -> symbol ids, merged by rank. w [n] is scratch.
//   word = bytes as symbols, '</w>' on the last one
//   repeat: the adjacent pair with the lowest merge rank; join every
//   non-overlapping occurrence left to right; until no pair has a rank.
static int bpe_word(const ldm_tokenizer *t, int *w, const uint8_t *s, int n) {
    for (int i = 0; i < n; i++) w[i] = i == n - 1 ? t->byte_id_w[s[i]] : t->byte_id[s[i]];
    while (n > 1) {
        int best = -1, best_rank = 0, best_merged = 0, a = 0, b = 0;
        for (int i = 0; i + 1 < n; i++) {
            merge_slot *m = merge_find(t, w[i], w[i + 1]);
            if (m->key && (best < 0 || m->rank < best_rank)) {
                best = i, best_rank = m->rank, best_merged = m->merged, a = w[i], b = w[i + 1];
            }
        }
        if (best < 0) break;
        int k = 0;
        for (int i = 0; i < n;) {
            if (i + 1 < n && w[i] == a && w[i + 1] == b) w[k++] = best_merged, i += 2;
            else w[k++] = w[i++];
        }
        n = k;
    }
    return n;
}

// The same result in O(n log n) for long pieces (bpe_word is quadratic):
// the symbols as a linked list, every ranked adjacent pair in a min-heap
// keyed (rank, position); pop, skip entries whose pair has changed, merge,
// push the two new neighbour pairs. Returns the symbol count, -1 if out of memory.
typedef struct heap_item {
    int rank, pos; // merge rank of the pair starting at symbol pos
} heap_item;

static int heap_less(heap_item a, heap_item b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(heap_item *h, int *hn, heap_item x) {
    int i = (*hn)++;
    while (i > 0 && heap_less(x, h[(i - 1) / 2])) h[i] = h[(i - 1) / 2], i = (i - 1) / 2;
    h[i] = x;
}

static heap_item heap_pop(heap_item *h, int *hn) {
    heap_item top = h[0], x = h[--*hn];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *hn) break;
        if (c + 1 < *hn && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], x)) break;
        h[i] = h[c];
        i = c;
    }
    if (*hn > 0) h[i] = x;
    return top;
}

static void heap_push_pair(const ldm_tokenizer *t, heap_item *h, int *hn, const int *w, int i, int j) {
    merge_slot *m = merge_find(t, w[i], w[j]);
    if (m->key) heap_push(h, hn, (heap_item){m->rank, i});
}

static int bpe_word_heap(const ldm_tokenizer *t, int *w, const uint8_t *s, int n) {
    int *nx = malloc((size_t)n * sizeof *nx), *pv = malloc((size_t)n * sizeof *pv), hn = 0;
    heap_item *h = malloc((3 * (size_t)n + 3) * sizeof *h); // n-1 pairs + 2 per merge
    if (!nx || !pv || !h) { free(nx); free(pv); free(h); return -1; }
    for (int i = 0; i < n; i++) {
        w[i] = i == n - 1 ? t->byte_id_w[s[i]] : t->byte_id[s[i]];
        nx[i] = i + 1 < n ? i + 1 : -1;
        pv[i] = i - 1;
    }
    for (int i = 0; i + 1 < n; i++) heap_push_pair(t, h, &hn, w, i, i + 1);
    while (hn > 0) {
        heap_item it = heap_pop(h, &hn);
        int i = it.pos, j = w[i] >= 0 ? nx[i] : -1;
        if (j < 0) continue; // symbol merged away, or now last
        merge_slot *m = merge_find(t, w[i], w[j]);
        if (!m->key || m->rank != it.rank) continue; // the pair changed since it was pushed
        w[i] = m->merged;
        w[j] = -1;
        nx[i] = nx[j];
        if (nx[j] >= 0) pv[nx[j]] = i;
        if (pv[i] >= 0) heap_push_pair(t, h, &hn, w, pv[i], i);
        if (nx[i] >= 0) heap_push_pair(t, h, &hn, w, i, nx[i]);
    }
    int k = 0;
    for (int i = 0; i >= 0; i = nx[i]) w[k++] = w[i]; // k <= i: compacting in place is safe
    free(nx);
    free(pv);
    free(h);
    return k;
}

// Word cache: piece bytes -> ids; cleared when it fills up.
#define CACHE_MAX_WORDS (1 << 16)

static void cache_clear(ldm_tokenizer *t) {
    if (t->cache) memset(t->cache, 0, (size_t)t->cache_cap * sizeof *t->cache);
    t->cache_used = 0;
    t->keys_n = t->ids_n = 0;
}

void ldm_tokenizer_set_fast_bpe_min(ldm_tokenizer *t, int n) {
    t->fast_min = n;
    cache_clear(t);
}

static cache_slot *cache_slot_for(ldm_tokenizer *t, const char *s, size_t n, uint64_t h) {
    for (int i = (int)(h & (uint64_t)(t->cache_cap - 1));; i = (i + 1) & (t->cache_cap - 1)) {
        cache_slot *c = &t->cache[i];
        if (c->hash == 0) return c;
        if (c->hash == h && c->key_len == n && memcmp(t->cache_keys + c->key_off, s, n) == 0) return c;
    }
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return LDM_OK;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return ldm_error("tokenizer: out of memory for the word cache");
    *p = q;
    *cap = c;
    return LDM_OK;
}

// Append the ids of one piece (UTF-8 bytes) to out, through the cache.
static int encode_piece(ldm_tokenizer *t, ids_buf *out, const char *s, size_t n, int **scratch, size_t *scratch_cap) {
    if (!t->cache) {
        t->cache_cap = 2 * CACHE_MAX_WORDS;
        t->cache = calloc((size_t)t->cache_cap, sizeof *t->cache);
        if (!t->cache) return ldm_error("tokenizer: out of memory for the word cache");
    }
    uint64_t h = hash_bytes(s, n) | 1;
    cache_slot *c = cache_slot_for(t, s, n, h);
    if (c->hash) {
        for (uint32_t i = 0; i < c->ids_n; i++)
            if (ids_push(out, t->cache_ids[c->ids_off + i])) return LDM_ERR;
        return LDM_OK;
    }
    if (n > *scratch_cap) {
        int *ns = realloc(*scratch, n * sizeof *ns);
        if (!ns) return ldm_error("tokenizer: out of memory");
        *scratch = ns;
        *scratch_cap = n;
    }
    int k = t->heap_ok && n >= (size_t)(t->fast_min > 0 ? t->fast_min : 0)
                ? bpe_word_heap(t, *scratch, (const uint8_t *)s, (int)n)
                : bpe_word(t, *scratch, (const uint8_t *)s, (int)n);
    if (k < 0) return ldm_error("tokenizer: out of memory for a %zu-byte word", n);
    for (int i = 0; i < k; i++)
        if (ids_push(out, (*scratch)[i])) return LDM_ERR;
    if (n > (1u << 16)) return LDM_OK; // do not cache huge pieces
    if (t->cache_used >= CACHE_MAX_WORDS || t->keys_n + n > (1u << 30)) {
        cache_clear(t);
        c = cache_slot_for(t, s, n, h);
    }
    if (grow((void **)&t->cache_keys, &t->keys_cap, t->keys_n + n, 1) ||
        grow((void **)&t->cache_ids, &t->ids_cap, t->ids_n + (size_t)k, sizeof(int)))
        return LDM_ERR;
    memcpy(t->cache_keys + t->keys_n, s, n);
    memcpy(t->cache_ids + t->ids_n, *scratch, (size_t)k * sizeof(int));
    *c = (cache_slot){h, (uint32_t)t->keys_n, (uint32_t)n, (uint32_t)t->ids_n, (uint32_t)k};
    t->keys_n += n;
    t->ids_n += (size_t)k;
    t->cache_used++;
    return LDM_OK;
}

// ---- the pre-tokenizer -------------------------------------------------------------------------
// The pattern (regex module, IGNORECASE), tried in order at each position:
//   <start_of_text> | <end_of_text> | 's | 't | 're | 've | 'm | 'll | 'd
//   | [\p{L}]+ | [\p{N}] | [^\s\p{L}\p{N}]+
// and findall skips what matches none (whitespace, U+0345). The text is
// already lower case; IGNORECASE changes nothing else for these classes
// (checked over all code points assigned in Unicode 14).

static int is_letter(uint32_t c) {
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
        return 1;
    default:
        return 0;
    }
}

static int is_number(uint32_t c) {
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

// Matched by no alternative, so findall skips it: regex's \s (White_Space,
// i.e. Python's isspace() without U+001C..U+001F) and U+0345 COMBINING GREEK
// YPOGEGRAMMENI, which under IGNORECASE is neither [\p{L}] nor
// [^\s\p{L}\p{N}] (it case-folds to a letter, iota). Checked against the
// regex module over every code point.
static int is_skipped(uint32_t c) { return (ldm_py_isspace(c) && !(c >= 0x1C && c <= 0x1F)) || c == 0x0345; }

// Does the literal lit (lower-case ASCII) start at t[i]? IGNORECASE lets
// 's' also match U+017F LATIN SMALL LETTER LONG S (simple case folding; the
// only fold of these letters that survives lower()).
static int starts_with(const uint32_t *t, size_t n, size_t i, const char *lit, int *exact) {
    size_t k = strlen(lit);
    *exact = 1;
    if (n - i < k) return 0;
    for (size_t j = 0; j < k; j++) {
        if (t[i + j] == (uint8_t)lit[j]) continue;
        if (lit[j] == 's' && t[i + j] == 0x017F) { *exact = 0; continue; }
        return 0;
    }
    return 1;
}

// Length (in code points) of the piece starting at i; 0 = skip one character.
// *special = the special token id when the piece is one. Both spellings of
// the start/end tokens are special: OpenAI CLIP's "<|startoftext|>" /
// "<|endoftext|>" (its simple_tokenizer, and HF CLIPTokenizer, which the SD1
// pipelines use) and open_clip's "<start_of_text>" / "<end_of_text>" (SD2).
// They are matched in the cleaned, lower-cased text, as OpenAI's pattern
// does. A literal matched only case-insensitively ("<ſtart_of_text>") is one
// piece for BPE, not the special token (the cache holds only the exact strings).
static size_t next_piece(const ldm_tokenizer *t, const uint32_t *s, size_t n, size_t i, int *special) {
    int exact;
    *special = -1;
    if (starts_with(s, n, i, "<start_of_text>", &exact)) { if (exact) *special = t->sot; return 15; }
    if (starts_with(s, n, i, "<end_of_text>", &exact)) { if (exact) *special = t->eot; return 13; }
    if (starts_with(s, n, i, "<|startoftext|>", &exact)) { if (exact) *special = t->sot; return 15; }
    if (starts_with(s, n, i, "<|endoftext|>", &exact)) { if (exact) *special = t->eot; return 13; }
    if (s[i] == '\'' && i + 1 < n) {
        uint32_t c = s[i + 1];
        if (c == 's' || c == 0x017F || c == 't' || c == 'm' || c == 'd') return 2;
        if (i + 2 < n) {
            uint32_t d = s[i + 2];
            if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l')) return 3;
        }
    }
    if (is_letter(s[i])) {
        size_t j = i + 1;
        while (j < n && is_letter(s[j])) j++;
        return j - i;
    }
    if (is_number(s[i])) return 1;
    if (is_skipped(s[i])) return 0;
    size_t j = i + 1;
    while (j < n && !is_skipped(s[j]) && !is_letter(s[j]) && !is_number(s[j])) j++;
    return j - i;
}

// text -> ids: decode, clean, split into pieces, BPE each piece (cached).
static int encode(ldm_tokenizer *t, ids_buf *out, const char *text, size_t len) {
    ldm_u32str raw = {0}, clean = {0};
    int *scratch = NULL;
    size_t scratch_cap = 0;
    char *u8 = NULL;
    size_t u8cap = 0;
    int rc = LDM_ERR;
    if (ldm_utf8_decode(&raw, text, len)) goto done;
    if (ldm_text_clean(&clean, raw.v, raw.n)) goto done;
    for (size_t i = 0; i < clean.n;) {
        int special;
        size_t k = next_piece(t, clean.v, clean.n, i, &special);
        if (k == 0) { i++; continue; }
        if (special >= 0) {
            if (ids_push(out, special)) goto done;
        } else {
            // the piece's UTF-8 bytes (each byte becomes one symbol via the byte table)
            if (4 * k + 1 > u8cap) {
                char *nb = realloc(u8, 4 * k + 1);
                if (!nb) { ldm_error("tokenizer: out of memory"); goto done; }
                u8 = nb;
                u8cap = 4 * k + 1;
            }
            size_t m = 0;
            for (size_t j = 0; j < k; j++)
                m += (size_t)utf8proc_encode_char((utf8proc_int32_t)clean.v[i + j], (utf8proc_uint8_t *)u8 + m);
            if (encode_piece(t, out, u8, m, &scratch, &scratch_cap)) goto done;
        }
        i += k;
    }
    rc = LDM_OK;
done:
    ldm_u32str_free(&raw);
    ldm_u32str_free(&clean);
    free(scratch);
    free(u8);
    return rc;
}

int ldm_tokenizer_encode(ldm_tokenizer *t, int **ids, int *n, const char *text, size_t len) {
    ids_buf b = {0};
    *ids = NULL;
    *n = 0;
    if (encode(t, &b, text, len)) { free(b.v); return LDM_ERR; }
    if (b.n > (size_t)INT32_MAX / 2) { free(b.v); return ldm_error("tokenizer: text too long"); }
    if (!b.v) b.v = malloc(sizeof(int)); // a valid pointer even for zero ids
    *ids = b.v;
    *n = (int)b.n;
    return LDM_OK;
}

int ldm_tokenizer_pieces(ldm_tokenizer *t, char **out, const char *text, size_t len) {
    int *ids, n;
    *out = NULL;
    if (ldm_tokenizer_encode(t, &ids, &n, text, len)) return LDM_ERR;
    size_t total = 1;
    for (int i = 0; i < n; i++) total += strlen(t->vocab[ids[i]]) + 1;
    char *s = malloc(total), *p = s;
    if (!s) { free(ids); return ldm_error("tokenizer: out of memory"); }
    *p = 0;
    for (int i = 0; i < n; i++) {
        size_t k = strlen(t->vocab[ids[i]]);
        if (i) *p++ = ' ';
        memcpy(p, t->vocab[ids[i]], k + 1);
        p += k;
    }
    free(ids);
    *out = s;
    return LDM_OK;
}

// open_clip.tokenize: [SOT] + ids + [EOT]; longer than context -> cut to
// context and the last set to EOT; the rest padded. The same as HF's
// padding="max_length", truncation=True when pad = EOT.
void ldm_tokenizer_context(int *out, int context, int pad, const int *ids, int n) {
    if (context < 2) {
        for (int i = 0; i < context; i++) out[i] = LDM_TOKEN_EOT;
        return;
    }
    int keep = n < context - 2 ? n : context - 2;
    out[0] = LDM_TOKEN_SOT;
    for (int i = 0; i < keep; i++) out[1 + i] = ids[i];
    out[1 + keep] = LDM_TOKEN_EOT;
    for (int i = 2 + keep; i < context; i++) out[i] = pad;
}
