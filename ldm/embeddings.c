/*
 * ldm/embeddings.c -- textual-inversion embeddings (ldm/embeddings.h).
 *
 * In teaching order:
 *   1. one file -> its vectors [n,D] (which tensor of which format)
 *   2. a folder -> every embedding, appended to the CLIP token-embedding table
 *   3. lookups used by the prompt tokenizer (name -> placeholder ids)
 *
 * Mirrors AUTOMATIC1111 modules/textual_inversion (EmbeddingDatabase: file
 * name = word, vectors of another width skipped) and diffusers'
 * load_textual_inversion (new rows at the end of the token embedding).
 * Leaves out embeddings stored in PNG images and A1111's hash-named variants.
 */
#include "ldm/embeddings.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ldm/clip.h"
#include "ldm/core/error.h"
#include "ldm/io/fs.h"
#include "ldm/io/tensorfile.h"

// ---------------------------------------------------------------------------
// 1. One file -> vectors

// The tensor holding the vectors of width D, or NULL (*other_width set when
// an embedding tensor of another width is there).
static const ldm_tensor_entry *pick(const ldm_tensor_file *f, int64_t D, int *other_width) {
    // "*": A1111 .pt (string_to_param["*"]); emb_params: A1111 safetensors;
    // clip_l/clip_h/clip_g: one vector set per text encoder
    static const char *NAMES[] = {"*", "emb_params", "clip_l", "clip_h", "clip_g"};
    const ldm_tensor_entry *only = f->n_entries == 1 ? &f->entries[0] : NULL;
    for (int64_t i = 0; i < f->n_entries; i++) {
        const ldm_tensor_entry *e = &f->entries[i];
        int known = e == only;
        for (size_t k = 0; k < sizeof NAMES / sizeof *NAMES; k++) known |= !strcmp(e->name, NAMES[k]);
        if (!known || e->ndim < 1 || e->ndim > 2) continue;
        if (e->shape[e->ndim - 1] == D) return e;
        *other_width = 1;
    }
    return NULL;
}

int ldm_embedding_pick(const ldm_tensor_entry **e, const ldm_tensor_file *f, int64_t D) {
    int other = 0;
    *e = pick(f, D, &other);
    int64_t n = *e ? (*e)->numel / D : 0;
    if (!*e && other) return LDM_OK;   // another model family's embedding: skipped
    if (!*e || n < 1 || n > 75) {
        *e = NULL;
        return ldm_error("%s: no textual-inversion embedding of width %lld (expected a tensor "
                         "\"emb_params\", \"clip_l\"/\"clip_h\", A1111's string_to_param \"*\" or a "
                         "single tensor, [n,%lld] with 1 <= n <= 75)", f->path ? f->path : "embedding",
                         (long long)D, (long long)D);
    }
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// 2. A folder -> the grown token-embedding table

static int candidate(const char *name) {
    const char *dot = strrchr(name, '.');
    return name[0] != '.' && dot && dot != name &&
           (!strcmp(dot, ".pt") || !strcmp(dot, ".bin") || !strcmp(dot, ".safetensors"));
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int longest_first(const void *a, const void *b) {
    const ldm_embedding_word *x = a, *y = b;
    size_t lx = strlen(x->name), ly = strlen(y->name);
    return lx != ly ? (lx < ly ? 1 : -1) : strcmp(x->name, y->name);
}

int ldm_embeddings_load_dir(ldm_embeddings *emb, ldm_clip *clip, const char *dir) {
    memset(emb, 0, sizeof *emb);
    const int64_t V = clip->tok_emb.shape[0], D = clip->tok_emb.shape[1];
    emb->base_id = (int32_t)V;
    DIR *d = opendir(dir);
    if (!d) return ldm_error("--embedding-dir %s: cannot open the folder", dir);
    char **files = NULL;
    int nf = 0, rc = LDM_OK;
    for (struct dirent *de; (de = readdir(d)) != NULL && rc == LDM_OK;) {
        if (!candidate(de->d_name)) continue;
        char **p = realloc(files, (size_t)(nf + 1) * sizeof *p);
        if (!p || !(p[nf] = strdup(de->d_name))) rc = ldm_error("embeddings: out of memory");
        if (p) files = p, nf += rc == LDM_OK;
    }
    closedir(d);
    if (nf) qsort(files, (size_t)nf, sizeof *files, by_name);   // ids do not depend on readdir order

    // vectors of every file, in file-name order, into rows [N,D] on the host
    float *rows = NULL;
    int64_t N = 0;
    for (int i = 0; i < nf && rc == LDM_OK; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (!ldm_is_file(path)) continue;
        ldm_tensor_file f;
        if (ldm_tensor_file_open(&f, path) != LDM_OK) { rc = LDM_ERR; break; }
        const ldm_tensor_entry *e = NULL;
        rc = ldm_embedding_pick(&e, &f, D);
        int64_t n = e ? e->numel / D : 0;
        if (rc == LDM_OK && !e) {
            emb->n_skipped++;
        } else if (rc == LDM_OK) {
            float *r = realloc(rows, (size_t)((N + n) * D) * sizeof *r);
            ldm_embedding_word *ne = realloc(emb->e, (size_t)(emb->n + 1) * sizeof *ne);
            if (r) rows = r;
            if (ne) emb->e = ne;
            if (!r || !ne) rc = ldm_error("embeddings: out of memory");
            else rc = ldm_entry_to_f32(rows + N * D, e);
            if (rc == LDM_OK) {
                ldm_embedding_word *x = &emb->e[emb->n++];
                x->name = strndup(files[i], strrchr(files[i], '.') - files[i]);
                x->first_id = (int32_t)(V + N);
                x->n = (int)n;
                N += n;
                if (!x->name) rc = ldm_error("embeddings: out of memory");
            }
        }
        ldm_tensor_file_close(&f);
    }
    for (int i = 0; i < nf; i++) free(files[i]);
    free(files);

    // the token-embedding table [V,D] -> [V+N,D]: old rows, then the vectors
    if (rc == LDM_OK && N > 0) {
        ldm_tensor t = ldm_tensor_new(clip->ops, LDM_SHAPE(V + N, D));
        float *h = t.data ? malloc((size_t)((V + N) * D) * sizeof *h) : NULL;
        if (!h) {
            rc = ldm_error("embeddings: out of memory growing the token embedding to %lld rows",
                           (long long)(V + N));
        } else {
            ldm_tensor_to_host(h, &clip->tok_emb);
            memcpy(h + V * D, rows, (size_t)(N * D) * sizeof *h);
            ldm_tensor_from_host(&t, h);
            ldm_tensor_free(&clip->tok_emb);
            clip->tok_emb = t;
            clip->cfg.vocab_size = (int)(V + N);
        }
        free(h);
        if (rc != LDM_OK) ldm_tensor_free(&t);
    }
    free(rows);
    if (rc != LDM_OK) {
        ldm_embeddings_free(emb);
        return LDM_ERR;
    }
    if (emb->n) qsort(emb->e, (size_t)emb->n, sizeof *emb->e, longest_first);
    return LDM_OK;
}

void ldm_embeddings_free(ldm_embeddings *emb) {
    for (int i = 0; i < emb->n; i++) free(emb->e[i].name);
    free(emb->e);
    memset(emb, 0, sizeof *emb);
}

// ---------------------------------------------------------------------------
// 3. Lookups for the tokenizer

const ldm_embedding_word *ldm_embeddings_find(const ldm_embeddings *emb, const char *s, size_t len) {
    for (int i = 0; emb && i < emb->n; i++)
        if (strlen(emb->e[i].name) == len && !strncasecmp(emb->e[i].name, s, len)) return &emb->e[i];
    return NULL;
}

int ldm_embeddings_span(const ldm_embeddings *emb, int32_t id) {
    for (int i = 0; emb && i < emb->n; i++)
        if (emb->e[i].first_id == id) return emb->e[i].n;
    return 0;
}
