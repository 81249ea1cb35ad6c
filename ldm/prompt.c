/*
 * ldm/prompt.c -- AUTOMATIC1111's prompt attention syntax, its 75-token
 * chunks and the "Original" emphasis (see prompt.h for the picture).
 *
 * Mirrors modules/prompt_parser.py parse_prompt_attention (the regex, by
 * hand), modules/sd_hijack_clip.py tokenize_line (chunks, comma backtrack)
 * and process_tokens ("Original" emphasis). Leaves out: prompt scheduling,
 * embeddings.
 *
 * Order of this file: 1. the attention syntax, 2. chunks of 75 tokens,
 * 3. emphasis.
 */
#include "ldm/prompt.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "ldm/core/error.h"
#include "tokenizer/bpe.h"

// ---------------------------------------------------------------------------
// 1. Attention syntax (A1111 parse_prompt_attention)
//
// The upstream function scans the prompt with one regex whose alternatives
// are, in order: \( \) \[ \] \\ (escapes), \ , ( , [ , ":" number ")" , ) , ] ,
// a run of ordinary text, ":". Here the same alternatives, by hand.

typedef struct piece_list {
    ldm_prompt_piece *p;
    double *w;          // weights in double while parsing (Python floats upstream)
    int n, cap;
} piece_list;

static int pl_push(piece_list *l, const char *text, size_t len, double w) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        ldm_prompt_piece *p = realloc(l->p, (size_t)cap * sizeof *p);
        if (!p) return ldm_error("prompt: out of memory");
        l->p = p;
        double *ww = realloc(l->w, (size_t)cap * sizeof *ww);
        if (!ww) return ldm_error("prompt: out of memory");
        l->w = ww;
        l->cap = cap;
    }
    char *s = malloc(len + 1);
    if (!s) return ldm_error("prompt: out of memory");
    memcpy(s, text, len);
    s[len] = '\0';
    l->p[l->n].text = s;
    l->w[l->n] = w;
    l->n++;
    return LDM_OK;
}

static int is_word(int c) { return isalnum(c) || c == '_' || c >= 0x80; }

// Ordinary text: split at the word BREAK (regex \s*\bBREAK\b\s*), pushing
// a piece of weight -1 between the parts.
static int push_text(piece_list *l, const char *s, size_t len) {
    size_t start = 0;
    for (size_t i = 0; i + 5 <= len; i++) {
        if (memcmp(s + i, "BREAK", 5) != 0) continue;
        if ((i > 0 && is_word((unsigned char)s[i - 1])) ||
            (i + 5 < len && is_word((unsigned char)s[i + 5])))
            continue;
        size_t a = i, b = i + 5;
        while (a > start && isspace((unsigned char)s[a - 1])) a--;
        while (b < len && isspace((unsigned char)s[b])) b++;
        if (pl_push(l, s + start, a - start, 1.0) || pl_push(l, "BREAK", 5, -1.0)) return LDM_ERR;
        start = b;
        i = b - 1;
    }
    return pl_push(l, s + start, len - start, 1.0);
}

static void multiply_range(piece_list *l, int from, double m) {
    for (int i = from; i < l->n; i++) l->w[i] *= m;
}

// At s: ":" spaces [+-]?[.0-9]+ spaces ")" -> its length and the number; 0 if no match.
static size_t match_weight(const char *s, double *w) {
    const char *p = s + 1;
    while (isspace((unsigned char)*p)) p++;
    const char *num = p;
    if (*p == '+' || *p == '-') p++;
    const char *digits = p;
    while (*p == '.' || isdigit((unsigned char)*p)) p++;
    if (p == digits) return 0;
    const char *num_end = p;
    while (isspace((unsigned char)*p)) p++;
    if (*p != ')') return 0;
    char buf[64];
    size_t n = (size_t)(num_end - num);
    if (n >= sizeof buf) return 0;
    memcpy(buf, num, n);
    buf[n] = '\0';
    char *e;
    *w = strtod(buf, &e);
    if (*e) return 0;   // "1.2.3": upstream float() would raise; we keep it as text
    return (size_t)(p + 1 - s);
}

int ldm_prompt_parse(ldm_prompt_piece **pieces, int *n, const char *prompt) {
    piece_list l = {0};
    int round[256], square[256], nr = 0, ns = 0;
    const double up = 1.1, down = 1 / 1.1;
    const char *s = prompt ? prompt : "";
    size_t len = strlen(s), i = 0;
    while (i < len) {
        char c = s[i];
        double w;
        size_t m;
        if (c == '\\') {   // \( \) \[ \] \\ -> the character; a lone \ -> nothing
            char d = s[i + 1];
            if (d == '(' || d == ')' || d == '[' || d == ']' || d == '\\') {
                if (pl_push(&l, s + i + 1, 1, 1.0)) goto fail;
                i += 2;
            } else {
                if (pl_push(&l, "", 0, 1.0)) goto fail;
                i += 1;
            }
        } else if (c == '(') {
            if (nr < 256) round[nr++] = l.n;
            i++;
        } else if (c == '[') {
            if (ns < 256) square[ns++] = l.n;
            i++;
        } else if (c == ':' && nr > 0 && (m = match_weight(s + i, &w)) > 0) {
            multiply_range(&l, round[--nr], w);   // (text:w)
            i += m;
        } else if (c == ')' && nr > 0) {
            multiply_range(&l, round[--nr], up);  // (text) = 1.1
            i++;
        } else if (c == ']' && ns > 0) {
            multiply_range(&l, square[--ns], down);   // [text] = 1/1.1
            i++;
        } else if (c == ':' || c == ')' || c == ']') {
            // ":" alone, or an unmatched closing bracket: upstream's regex takes
            // ":1.2)" / ")" / "]" as text when no bracket is open.
            size_t e = i + 1;
            if (c == ':' && (m = match_weight(s + i, &w)) > 0) e = i + m;
            if (push_text(&l, s + i, e - i)) goto fail;
            i = e;
        } else {   // a run of ordinary text: [^\\()\[\]:]+
            size_t e = i;
            while (e < len && !strchr("\\()[]:", s[e])) e++;
            if (push_text(&l, s + i, e - i)) goto fail;
            i = e;
        }
    }
    while (nr > 0) multiply_range(&l, round[--nr], up);     // unclosed: apply to the rest
    while (ns > 0) multiply_range(&l, square[--ns], down);
    if (l.n == 0 && pl_push(&l, "", 0, 1.0)) goto fail;
    // merge neighbours of equal weight (never BREAKs)
    int k = 0;
    for (int j = 0; j < l.n; j++) {
        if (k > 0 && l.w[k - 1] == l.w[j] && l.w[j] >= 0) {
            size_t a = strlen(l.p[k - 1].text), b = strlen(l.p[j].text);
            char *t = realloc(l.p[k - 1].text, a + b + 1);
            if (!t) goto fail;
            memcpy(t + a, l.p[j].text, b + 1);
            l.p[k - 1].text = t;
            free(l.p[j].text);
        } else {
            l.p[k] = l.p[j];
            l.w[k] = l.w[j];
            k++;
        }
    }
    l.n = k;
    for (int j = 0; j < l.n; j++) l.p[j].weight = (float)l.w[j];
    free(l.w);
    *pieces = l.p;
    *n = l.n;
    return LDM_OK;
fail:
    for (int j = 0; j < l.n; j++) free(l.p[j].text);
    free(l.p);
    free(l.w);
    return ldm_error("prompt: out of memory while parsing");
}

void ldm_prompt_pieces_free(ldm_prompt_piece *pieces, int n) {
    for (int i = 0; pieces && i < n; i++) free(pieces[i].text);
    free(pieces);
}

// ---------------------------------------------------------------------------
// 2. Chunks of 75 tokens (A1111 tokenize_line)

#define CHUNK 75            // tokens per chunk between SOT and EOT
#define BACKTRACK 20        // comma_padding_backtrack

typedef struct chunker {
    int32_t *ids;           // [n_chunks*77]
    float *mult;            // [n_chunks*77]
    int n_chunks, cap;
    int32_t cur[CHUNK];     // the chunk being filled
    float cur_m[CHUNK];
    int n_cur;
    int last_comma;         // index in cur after which a comma sits, -1: none
    int pad;
} chunker;

// Close the current chunk: [SOT] tokens [EOT] EOT... then pad after the first EOT.
static int next_chunk(chunker *c) {
    if (c->n_chunks == c->cap) {
        int cap = c->cap ? 2 * c->cap : 4;
        int32_t *ids = realloc(c->ids, (size_t)cap * LDM_CONTEXT * sizeof *ids);
        if (!ids) return ldm_error("prompt: out of memory");
        c->ids = ids;
        float *m = realloc(c->mult, (size_t)cap * LDM_CONTEXT * sizeof *m);
        if (!m) return ldm_error("prompt: out of memory");
        c->mult = m;
        c->cap = cap;
    }
    int32_t *ids = c->ids + (size_t)c->n_chunks * LDM_CONTEXT;
    float *m = c->mult + (size_t)c->n_chunks * LDM_CONTEXT;
    ids[0] = LDM_TOKEN_SOT;
    m[0] = 1.0f;
    for (int i = 0; i < CHUNK; i++) {
        ids[1 + i] = i < c->n_cur ? c->cur[i] : (i == c->n_cur ? LDM_TOKEN_EOT : c->pad);
        m[1 + i] = i < c->n_cur ? c->cur_m[i] : 1.0f;
    }
    ids[LDM_CONTEXT - 1] = c->n_cur < CHUNK ? c->pad : LDM_TOKEN_EOT;
    m[LDM_CONTEXT - 1] = 1.0f;
    c->n_chunks++;
    c->n_cur = 0;
    c->last_comma = -1;
    return LDM_OK;
}

// A piece's ids: the BPE of its text, with every embedding name that stands
// as a word (ldm/embeddings.h) replaced by the embedding's placeholder ids.
static int encode_piece(int **ids, int *n, struct ldm_tokenizer *tok, const ldm_embeddings *emb,
                        const char *s) {
    size_t len = strlen(s), start = 0;
    int *out = NULL, nout = 0;
    for (size_t i = 0; i <= len; i++) {
        const ldm_embedding_word *e = NULL;
        for (int k = 0; emb && i < len && !e && k < emb->n; k++) {   // longest name first
            size_t l = strlen(emb->e[k].name);
            if ((i == 0 || !is_word((unsigned char)s[i - 1])) && i + l <= len &&
                (i + l == len || !is_word((unsigned char)s[i + l])) &&
                ldm_embeddings_find(emb, s + i, l) == &emb->e[k])
                e = &emb->e[k];
        }
        if (!e && i < len) continue;
        int *t = NULL, nt = 0;
        if (i > start && ldm_tokenizer_encode(tok, &t, &nt, s + start, i - start) != LDM_OK) {
            free(out);
            return LDM_ERR;
        }
        int add = nt + (e ? e->n : 0);
        int *o = add ? realloc(out, (size_t)(nout + add) * sizeof *o) : out;
        if (add && !o) { free(t); free(out); return ldm_error("prompt: out of memory"); }
        out = o;
        for (int j = 0; j < nt; j++) out[nout++] = t[j];
        for (int j = 0; e && j < e->n; j++) out[nout++] = e->first_id + j;
        free(t);
        if (e) start = i + strlen(e->name), i = start - 1;
    }
    *ids = out;
    *n = nout;
    return LDM_OK;
}

int ldm_prompt_tokenize(int32_t **ids_out, float **mult_out, int *n_chunks,
                        struct ldm_tokenizer *tok, const char *prompt, int pad) {
    return ldm_prompt_tokenize_emb(ids_out, mult_out, n_chunks, tok, NULL, prompt, pad);
}

int ldm_prompt_tokenize_emb(int32_t **ids_out, float **mult_out, int *n_chunks,
                            struct ldm_tokenizer *tok, const ldm_embeddings *emb,
                            const char *prompt, int pad) {
    ldm_prompt_piece *pieces;
    int np;
    if (ldm_prompt_parse(&pieces, &np, prompt) != LDM_OK) return LDM_ERR;
    chunker c = {.last_comma = -1, .pad = pad};
    int *comma = NULL, nc = 0, rc = LDM_ERR;
    if (ldm_tokenizer_encode(tok, &comma, &nc, ",", 1) != LDM_OK) goto done;
    int comma_id = nc == 1 ? comma[0] : -1;
    for (int p = 0; p < np; p++) {
        if (pieces[p].weight < 0) {   // BREAK
            if (next_chunk(&c)) goto done;
            continue;
        }
        int *t = NULL, nt = 0;
        if (pieces[p].text[0] && encode_piece(&t, &nt, tok, emb, pieces[p].text) != LDM_OK)
            goto done;
        for (int k = 0; k < nt; k++) {
            if (t[k] == comma_id) {
                c.last_comma = c.n_cur;
            } else if (c.n_cur == CHUNK && c.last_comma != -1 &&
                       c.n_cur - c.last_comma <= BACKTRACK) {
                // move the tokens after the last comma to the next chunk
                int at = c.last_comma + 1, nm = c.n_cur - at;
                int32_t mv[CHUNK];
                float mvm[CHUNK];
                memcpy(mv, c.cur + at, (size_t)nm * sizeof *mv);
                memcpy(mvm, c.cur_m + at, (size_t)nm * sizeof *mvm);
                c.n_cur = at;
                if (next_chunk(&c)) { free(t); goto done; }
                memcpy(c.cur, mv, (size_t)nm * sizeof *mv);
                memcpy(c.cur_m, mvm, (size_t)nm * sizeof *mvm);
                c.n_cur = nm;
            }
            // an embedding's vectors stay in one chunk (A1111 tokenize_line)
            int span = ldm_embeddings_span(emb, t[k]);
            if (span && c.n_cur > 0 && c.n_cur + span > CHUNK && next_chunk(&c)) { free(t); goto done; }
            if (c.n_cur == CHUNK && next_chunk(&c)) { free(t); goto done; }
            c.cur[c.n_cur] = t[k];
            c.cur_m[c.n_cur] = pieces[p].weight;
            c.n_cur++;
        }
        free(t);
    }
    if ((c.n_cur > 0 || c.n_chunks == 0) && next_chunk(&c)) goto done;
    rc = LDM_OK;
done:
    free(comma);
    ldm_prompt_pieces_free(pieces, np);
    if (rc != LDM_OK) {
        free(c.ids);
        free(c.mult);
        return LDM_ERR;
    }
    *ids_out = c.ids;
    *mult_out = c.mult;
    *n_chunks = c.n_chunks;
    return LDM_OK;
}

// ---------------------------------------------------------------------------
// 3. Emphasis (A1111 process_tokens, "Original")

void ldm_prompt_emphasis(float *z, const float *mult, int n_chunks, int64_t D) {
    const int64_t per = (int64_t)LDM_CONTEXT * D;
    for (int c = 0; c < n_chunks; c++) {
        float *zc = z + c * per;
        const float *mc = mult + c * LDM_CONTEXT;
        int weighted = 0;
        for (int t = 0; t < LDM_CONTEXT; t++) weighted |= mc[t] != 1.0f;
        if (!weighted) continue;   // all ones: the rescale below is exactly 1
        double before = 0, after = 0;
        for (int64_t i = 0; i < per; i++) before += zc[i];
        for (int t = 0; t < LDM_CONTEXT; t++)
            for (int64_t d = 0; d < D; d++) zc[t * D + d] *= mc[t];   // z *= multipliers
        for (int64_t i = 0; i < per; i++) after += zc[i];
        float r = (float)(before / per) / (float)(after / per);     // z *= mean_before / mean_after
        for (int64_t i = 0; i < per; i++) zc[i] *= r;
    }
}
