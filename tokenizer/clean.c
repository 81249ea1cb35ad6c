/*
 * tokenizer/clean.c -- text cleaning before CLIP's BPE, as Python does it.
 *
 * Mirrors open_clip/OpenAI CLIP `simple_tokenizer.py`:
 *     whitespace_clean(basic_clean(text)).lower()
 *     basic_clean = ftfy.fix_text -> html.unescape(html.unescape(.)) -> strip
 *     whitespace_clean = " ".join(text.split()).strip()
 * with ftfy 6.3.1's default fix_text, including its mojibake repair
 * (fix_encoding: UTF-8 text that was decoded with a single-byte code page,
 * "cafÃ©" -> "café"), whose code pages and character classes are generated
 * data (tokenizer/mojibake.c); docs/02-tokenizer.md says where it differs.
 *
 * Unicode data (categories, bidi classes, case mappings, NFC/NFKC) comes from
 * utf8proc; the HTML5 entity names from tokenizer/entities.c, generated from
 * Python's html.entities. Everything works on code-point arrays, like a
 * Python str, so "position" and "length" mean what they mean in Python.
 */
#include "tokenizer/clean.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "ldm/core/error.h"
#include "tokenizer/casing.h"
#include "tokenizer/entities.h"
#include "tokenizer/mojibake.h"

// ---- code-point strings -------------------------------------------------------

void ldm_u32str_free(ldm_u32str *s) {
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int u32_reserve(ldm_u32str *s, size_t extra) {
    if (s->n + extra <= s->cap) return LDM_OK;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < s->n + extra) {
        if (cap > ((size_t)1 << 40)) return ldm_error("tokenizer: text too long (%zu code points)", s->n);
        cap *= 2;
    }
    uint32_t *v = realloc(s->v, cap * sizeof *v);
    if (!v) return ldm_error("tokenizer: out of memory for %zu code points", cap);
    s->v = v;
    s->cap = cap;
    return LDM_OK;
}

static int u32_push(ldm_u32str *s, uint32_t c) {
    if (s->n == s->cap && u32_reserve(s, 1)) return LDM_ERR;
    s->v[s->n++] = c;
    return LDM_OK;
}

static int u32_append(ldm_u32str *s, const uint32_t *c, size_t n) {
    if (u32_reserve(s, n)) return LDM_ERR;
    if (n) memcpy(s->v + s->n, c, n * sizeof *c);
    s->n += n;
    return LDM_OK;
}

// Append a UTF-8 literal from the generated tables (always valid UTF-8).
static int u32_append_utf8(ldm_u32str *s, const char *u) {
    const uint8_t *p = (const uint8_t *)u;
    while (*p) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(p, -1, &c);
        if (k <= 0) return ldm_error("tokenizer: internal entity table is not UTF-8");
        if (u32_push(s, (uint32_t)c)) return LDM_ERR;
        p += k;
    }
    return LDM_OK;
}

static void u32_swap(ldm_u32str *a, ldm_u32str *b) {
    ldm_u32str t = *a;
    *a = *b;
    *b = t;
}

// ---- UTF-8 ----------------------------------------------------------------------

int ldm_utf8_decode(ldm_u32str *out, const char *text, size_t len) {
    const uint8_t *s = (const uint8_t *)text;
    out->n = 0;
    if (u32_reserve(out, len + 1)) return LDM_ERR;
    size_t i = 0;
    while (i < len) {
        uint32_t b = s[i], c, min;
        int k;
        if (b < 0x80) { out->v[out->n++] = b; i++; continue; }
        else if ((b & 0xE0) == 0xC0) { k = 1; c = b & 0x1F; min = 0x80; }
        else if ((b & 0xF0) == 0xE0) { k = 2; c = b & 0x0F; min = 0x800; }
        else if ((b & 0xF8) == 0xF0) { k = 3; c = b & 0x07; min = 0x10000; }
        else if ((b & 0xC0) == 0x80)
            return ldm_error("invalid UTF-8 at byte offset %zu: stray continuation byte 0x%02X", i, b);
        else
            return ldm_error("invalid UTF-8 at byte offset %zu: byte 0x%02X cannot start a character", i, b);
        if (len - i <= (size_t)k)
            return ldm_error("invalid UTF-8 at byte offset %zu: sequence truncated by the end of the text", i);
        for (int j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return ldm_error("invalid UTF-8 at byte offset %zu: expected a continuation byte at offset %zu, found 0x%02X",
                                 i, i + j, s[i + j]);
            c = (c << 6) | (s[i + j] & 0x3F);
        }
        if (c < min) return ldm_error("invalid UTF-8 at byte offset %zu: overlong encoding of U+%04X", i, c);
        if (c >= 0xD800 && c <= 0xDFFF)
            return ldm_error("invalid UTF-8 at byte offset %zu: encoded surrogate U+%04X", i, c);
        if (c > 0x10FFFF) return ldm_error("invalid UTF-8 at byte offset %zu: U+%X is above U+10FFFF", i, c);
        out->v[out->n++] = c;
        i += (size_t)k + 1;
    }
    return LDM_OK;
}

int ldm_utf8_encode(char **out, size_t *len, const uint32_t *cp, size_t n) {
    char *s = malloc(4 * n + 1);
    if (!s) return ldm_error("tokenizer: out of memory encoding %zu code points", n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp[i], (utf8proc_uint8_t *)s + k);
    s[k] = 0;
    *out = s;
    *len = k;
    return LDM_OK;
}

// ---- Unicode properties (utf8proc) ------------------------------------------------

// Python str.isspace(): bidirectional class WS, B or S, or category Zs.
int ldm_py_isspace(uint32_t c) {
    if (c > 0x10FFFF) return 0;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

static int is_decimal(uint32_t c) { return utf8proc_category((utf8proc_int32_t)c) == UTF8PROC_CATEGORY_ND; }

// ---- ftfy.fix_text ------------------------------------------------------------------
// ftfy/__init__.py fix_and_explain: repeat [unescape_html, (fix_encoding),
// fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes,
// fix_line_breaks, fix_surrogates, remove_terminal_escapes,
// remove_control_chars, NFC] until the text stops changing.

static int is_ascii_alnum(uint32_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int entity_cmp(const void *key, const void *elem) {
    return strcmp((const char *)key, ((const ldm_entity *)elem)->name);
}

// name (ASCII, without '&') -> replacement, or NULL.
static const char *entity_find(const ldm_entity *table, int count, const char *name) {
    const ldm_entity *e = bsearch(name, table, (size_t)count, sizeof *table, entity_cmp);
    return e ? e->utf8 : NULL;
}

// Python's html.unescape of t[0..n): see _charref / _replace_charref in
// Lib/html/__init__.py. Appends to out.
static const uint32_t html_invalid_charrefs[32] = { // 0x80..0x9F (0x00 and 0x0D handled inline)
    0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0x8D,   0x017D, 0x8F,   0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178};

static int html_invalid_codepoint(uint32_t c) {
    return (c >= 0x1 && c <= 0x8) || (c >= 0xE && c <= 0x1F) || (c >= 0x7F && c <= 0x9F) ||
           (c >= 0xFDD0 && c <= 0xFDEF) || c == 0xB || (c & 0xFFFE) == 0xFFFE;
}

// Numeric reference value -> replacement (html._replace_charref, numeric branch).
static int html_numeric(ldm_u32str *out, uint64_t num) {
    if (num == 0x00) return u32_push(out, 0xFFFD);
    if (num == 0x0D) return u32_push(out, '\r');
    if (num >= 0x80 && num <= 0x9F) return u32_push(out, html_invalid_charrefs[num - 0x80]);
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return u32_push(out, 0xFFFD);
    if (html_invalid_codepoint((uint32_t)num)) return LDM_OK; // dropped
    return u32_push(out, (uint32_t)num);
}

int ldm_html_unescape(ldm_u32str *out, const uint32_t *t, size_t n) {
    out->n = 0;
    size_t i = 0;
    while (i < n) {
        if (t[i] != '&') {
            if (u32_push(out, t[i])) return LDM_ERR;
            i++;
            continue;
        }
        size_t j = i + 1;
        if (j < n && t[j] == '#') {
            // '#[0-9]+;?' or '#[xX][0-9a-fA-F]+;?'; the value saturates past U+10FFFF.
            int hex = j + 1 < n && (t[j + 1] == 'x' || t[j + 1] == 'X');
            size_t k = j + 1 + (size_t)hex, d0 = k;
            uint64_t num = 0;
            for (; k < n; k++) {
                uint32_t c = t[k];
                int v = c >= '0' && c <= '9' ? (int)(c - '0')
                        : hex && c >= 'a' && c <= 'f' ? (int)(c - 'a' + 10)
                        : hex && c >= 'A' && c <= 'F' ? (int)(c - 'A' + 10) : -1;
                if (v < 0) break;
                num = num * (hex ? 16 : 10) + (uint64_t)v;
                if (num > 0x10FFFF) num = 0x110000;
            }
            if (k == d0) { // no digits: not a reference ('#' cannot start a name)
                if (u32_push(out, '&')) return LDM_ERR;
                i++;
                continue;
            }
            if (k < n && t[k] == ';') k++;
            if (html_numeric(out, num)) return LDM_ERR;
            i = k;
            continue;
        }
        // '[^\t\n\f <&#;]{1,32};?'
        size_t k = j;
        while (k < n && k - j < 32 && t[k] != '\t' && t[k] != '\n' && t[k] != '\f' && t[k] != ' ' &&
               t[k] != '<' && t[k] != '&' && t[k] != '#' && t[k] != ';')
            k++;
        if (k == j) {
            if (u32_push(out, '&')) return LDM_ERR;
            i++;
            continue;
        }
        if (k < n && t[k] == ';') k++;
        // s = t[j..k). Exact name, else the longest name s[:x], x = len-1 .. 2.
        size_t len = k - j, x;
        char name[40];
        const char *rep = NULL;
        for (x = len; x >= 2; x--) {
            int ascii = 1;
            for (size_t q = 0; q < x; q++) {
                if (t[j + q] >= 0x80) { ascii = 0; break; }
                name[q] = (char)t[j + q];
            }
            name[x] = 0;
            if (ascii) rep = entity_find(ldm_html5_entities, ldm_html5_entities_count, name);
            if (rep) break;
        }
        if (rep) {
            if (u32_append_utf8(out, rep) || u32_append(out, t + j + x, len - x)) return LDM_ERR;
        } else {
            if (u32_push(out, '&') || u32_append(out, t + j, len)) return LDM_ERR;
        }
        i = k;
    }
    return LDM_OK;
}

// ftfy.fixes.unescape_html: only '&#?[0-9A-Za-z]{1,24};' references; names
// from the HTML5 table (with ';') or ftfy's upper-case list; numeric ones
// through html.unescape, kept as they are if that leaves a ';'.
static int ftfy_unescape_html(ldm_u32str *out, const uint32_t *t, size_t n) {
    out->n = 0;
    ldm_u32str tmp = {0};
    size_t i = 0;
    while (i < n) {
        if (t[i] == '&') {
            size_t j = i + 1;
            int hash = j < n && t[j] == '#';
            size_t k = j + (size_t)hash;
            while (k < n && k - (j + (size_t)hash) < 24 && is_ascii_alnum(t[k])) k++;
            size_t nal = k - (j + (size_t)hash);
            int match = nal >= 1 && k < n && t[k] == ';';
            // (when '#' is present, backtracking '#?' cannot help: '#' is not alnum)
            if (match) {
                size_t end = k + 1; // past ';'
                if (hash) {
                    if (ldm_html_unescape(&tmp, t + i, end - i)) goto fail;
                    int semi = 0;
                    for (size_t q = 0; q < tmp.n; q++) semi |= tmp.v[q] == ';';
                    if (semi ? u32_append(out, t + i, end - i) : u32_append(out, tmp.v, tmp.n)) goto fail;
                } else {
                    char name[32];
                    size_t len = end - j; // alnum + ';'
                    for (size_t q = 0; q < len; q++) name[q] = (char)t[j + q];
                    name[len] = 0;
                    const char *rep = entity_find(ldm_html5_entities, ldm_html5_entities_count, name);
                    if (!rep) rep = entity_find(ldm_ftfy_upper_entities, ldm_ftfy_upper_entities_count, name);
                    if (rep ? u32_append_utf8(out, rep) : u32_append(out, t + i, end - i)) goto fail;
                }
                i = end;
                continue;
            }
        }
        if (u32_push(out, t[i])) goto fail;
        i++;
    }
    ldm_u32str_free(&tmp);
    return LDM_OK;
fail:
    ldm_u32str_free(&tmp);
    return LDM_ERR;
}

// ftfy.chardata.LIGATURES (fix_latin_ligatures): Latin ligatures and digraphs.
static const struct { uint32_t c; uint32_t to[3]; } ligatures[] = {
    {0x0132, {'I', 'J'}},   {0x0133, {'i', 'j'}},     {0x0149, {0x02BC, 'n'}}, {0x01F1, {'D', 'Z'}},
    {0x01F2, {'D', 'z'}},   {0x01F3, {'d', 'z'}},     {0x01C4, {'D', 0x017D}}, {0x01C5, {'D', 0x017E}},
    {0x01C6, {'d', 0x017E}}, {0x01C7, {'L', 'J'}},    {0x01C8, {'L', 'j'}},    {0x01C9, {'l', 'j'}},
    {0x01CA, {'N', 'J'}},   {0x01CB, {'N', 'j'}},     {0x01CC, {'n', 'j'}},    {0xFB00, {'f', 'f'}},
    {0xFB01, {'f', 'i'}},   {0xFB02, {'f', 'l'}},     {0xFB03, {'f', 'f', 'i'}}, {0xFB04, {'f', 'f', 'l'}},
    {0xFB05, {0x017F, 't'}}, {0xFB06, {'s', 't'}},
};

// NFC (compat = 0) or NFKC (compat = 1) of t[0..n) through utf8proc, appended to out.
static int normalize_append(ldm_u32str *out, const uint32_t *t, size_t n, int compat) {
    if (n == 0) return LDM_OK;
    char *u8;
    size_t u8len;
    if (ldm_utf8_encode(&u8, &u8len, t, n)) return LDM_ERR;
    utf8proc_uint8_t *res = NULL;
    utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)u8, (utf8proc_ssize_t)u8len, &res,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE | (compat ? UTF8PROC_COMPAT : 0));
    free(u8);
    if (m < 0) return ldm_error("tokenizer: Unicode normalisation failed: %s", utf8proc_errmsg(m));
    utf8proc_ssize_t off = 0;
    while (off < m) {
        utf8proc_int32_t d;
        utf8proc_ssize_t k = utf8proc_iterate(res + off, m - off, &d);
        if (k <= 0) { free(res); return ldm_error("tokenizer: normalisation produced invalid UTF-8"); }
        if (u32_push(out, (uint32_t)d)) { free(res); return LDM_ERR; }
        off += k;
    }
    free(res);
    return LDM_OK;
}

// out = NFC / NFKC of t. utf8proc 2.8 composes a Hangul LV syllable with
// U+11A7, which is not a trailing consonant (T runs U+11A8..U+11C2), so the
// text is normalised in pieces split at U+11A7: a starter that composes with
// nothing, so splitting there changes nothing else.
static int normalize(ldm_u32str *out, const uint32_t *t, size_t n, int compat) {
    out->n = 0;
    if (n == 0) return LDM_OK; // t may be NULL
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && t[i] != 0x11A7) continue;
        if (normalize_append(out, t + start, i - start, compat)) return LDM_ERR;
        if (i < n && u32_push(out, 0x11A7)) return LDM_ERR;
        start = i + 1;
    }
    return LDM_OK;
}

// fix_character_width: U+3000 -> ' ', U+FF01..U+FFEF -> their NFKC form
// (ftfy builds this map with unicodedata.normalize("NFKC", char)).
static int width_fix(ldm_u32str *out, uint32_t c) {
    if (c == 0x3000) return u32_push(out, ' ');
    return normalize(out, &c, 1, 1);
}

// uncurl_quotes: [\u02bc\u2018-\u201b] -> ', [\u201c-\u201f] -> "
static uint32_t uncurl(uint32_t c) {
    if (c == 0x02BC || (c >= 0x2018 && c <= 0x201B)) return '\'';
    if (c >= 0x201C && c <= 0x201F) return '"';
    return c;
}

// fix_character_width then uncurl_quotes on one character, appended to out.
static int width_uncurl_push(ldm_u32str *out, uint32_t c) {
    if (c != 0x3000 && !(c >= 0xFF01 && c <= 0xFFEF)) return u32_push(out, uncurl(c));
    ldm_u32str w = {0};
    int rc = width_fix(&w, c);
    for (size_t r = 0; r < w.n && rc == LDM_OK; r++) rc = u32_push(out, uncurl(w.v[r]));
    ldm_u32str_free(&w);
    return rc;
}

// One pass of the character-level fixers, in ftfy's order. The first four
// map one character at a time, so they are applied per character.
static int ftfy_char_fixes(ldm_u32str *out, const uint32_t *t, size_t n) {
    ldm_u32str a = {0};
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = t[i];
        // fix_c1_controls: U+0080..U+009F as Windows-1252 ("sloppy": undefined
        // bytes stay themselves) -- the same table html.unescape uses.
        if (c >= 0x80 && c <= 0x9F) c = html_invalid_charrefs[c - 0x80];
        // fix_latin_ligatures, then width and quotes on each resulting character.
        int lig = -1;
        for (int q = 0; q < (int)(sizeof ligatures / sizeof ligatures[0]); q++)
            if (ligatures[q].c == c) { lig = q; break; }
        int rc = LDM_OK;
        if (lig < 0) rc = width_uncurl_push(&a, c);
        else
            for (int q = 0; q < 3 && ligatures[lig].to[q] && rc == LDM_OK; q++)
                rc = width_uncurl_push(&a, ligatures[lig].to[q]);
        if (rc) goto fail;
    }
    // fix_line_breaks: \r\n, \r, U+2028, U+2029, U+0085 -> \n
    // (fix_surrogates has nothing to do: valid UTF-8 holds no surrogates)
    // remove_terminal_escapes: '\033\[(\d|;)*[a-zA-Z]' (Python \d = Unicode Nd)
    // remove_control_chars: U+00-08, 0B, 0E-1F, 7F, 206A-206F, FEFF, FFF9-FFFC
    {
        ldm_u32str b = {0};
        for (size_t i = 0; i < a.n; i++) {
            uint32_t c = a.v[i];
            if (c == '\r' && i + 1 < a.n && a.v[i + 1] == '\n') continue; // the \n follows
            if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
            if (u32_push(&b, c)) { ldm_u32str_free(&b); goto fail; }
        }
        for (size_t i = 0; i < b.n; i++) {
            uint32_t c = b.v[i];
            if (c == 0x1B && i + 1 < b.n && b.v[i + 1] == '[') {
                size_t k = i + 2;
                while (k < b.n && (b.v[k] == ';' || is_decimal(b.v[k]))) k++;
                if (k < b.n && ((b.v[k] >= 'a' && b.v[k] <= 'z') || (b.v[k] >= 'A' && b.v[k] <= 'Z'))) {
                    i = k;
                    continue;
                }
            }
            if (c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
                c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC))
                continue;
            if (u32_push(out, c)) { ldm_u32str_free(&b); goto fail; }
        }
        ldm_u32str_free(&b);
    }
    ldm_u32str_free(&a);
    return LDM_OK;
fail:
    ldm_u32str_free(&a);
    return LDM_ERR;
}

static int u32_equal(const ldm_u32str *a, const ldm_u32str *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->v, b->v, a->n * sizeof *a->v) == 0);
}

// ---- ftfy.fix_encoding: mojibake repair ---------------------------------------------
// Mojibake is UTF-8 text that was decoded with a single-byte code page
// ("café" -> "cafÃ©"). ftfy (ftfy/__init__.py _fix_encoding_one_step_and_explain,
// ftfy/badness.py, ftfy/chardata.py, ftfy/fixes.py) repairs it in steps, each
// step repeated until the text stops changing:
//   1. ASCII text, or text the badness heuristic finds nothing wrong with
//      (is_bad), is left alone -- every ordinary prompt stops here.
//   2. For each code page that can encode the whole text (latin-1,
//      sloppy-windows-1252, -1251, -1250, -1253, -1254, -1257, iso-8859-2,
//      macroman, cp437): encode it, patch the bytes (restore_byte_a0,
//      replace_lossy_sequences), and if they decode as UTF-8, that is the fix.
//   3. Otherwise fix the runs that look like UTF-8 mojibake one by one
//      (decode_inconsistent_utf8).
//   4. Otherwise read C1 control characters as Windows-1252 (fix_c1_controls).
// The code pages and ftfy's character classes are generated data
// (tokenizer/mojibake.c); the regular expressions are written out below.

#define MJ_NONE 0xFFFFFFFFu // "past the end of the text"

static int cp_range_cmp(const void *key, const void *elem) {
    uint32_t c = *(const uint32_t *)key;
    const ldm_cp_range *r = elem;
    return c < r->lo ? -1 : c > r->hi ? 1 : 0;
}

static int mj_class_cmp(const void *key, const void *elem) {
    uint32_t c = *(const uint32_t *)key, e = ((const ldm_mojibake_class *)elem)->cp;
    return c < e ? -1 : c > e ? 1 : 0;
}

// The ftfy classes (MJ_* bits) of one code point; 0 for MJ_NONE.
static uint32_t mj_class(uint32_t c) {
    if (c < LDM_MOJIBAKE_LOW) return ldm_mojibake_low[c];
    // Most scripts (and MJ_NONE) hold no class member (tokenizer/gen_mojibake.py checks it).
    if (c < 0x2000 || (c >= 0x2600 && c < 0xF800) || c > 0xFFFD) return 0;
    const ldm_mojibake_class *e = bsearch(&c, ldm_mojibake_classes, (size_t)ldm_mojibake_classes_count,
                                          sizeof *e, mj_class_cmp);
    return e ? e->mask : 0;
}

// Python re's \w and \s on str.
static int py_is_word(uint32_t c) {
    return c != MJ_NONE && bsearch(&c, ldm_word_ranges, (size_t)ldm_word_ranges_count, sizeof(ldm_cp_range),
                                   cp_range_cmp) != NULL;
}
static int py_is_space(uint32_t c) {
    if (c < 0x80) return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F);
    return c != MJ_NONE && ldm_py_isspace(c);
}
static int is_ascii_alpha(uint32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_ascii_lower(uint32_t c) { return c >= 'a' && c <= 'z'; }

static int one_of(uint32_t c, const uint32_t *set, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (set[i] == c) return 1;
    return 0;
}
#define ONE_OF(c, ...) one_of((c), (const uint32_t[]){__VA_ARGS__}, sizeof((const uint32_t[]){__VA_ARGS__}) / 4)

// The first characters of BADNESS_RE's alternatives that name characters
// (rather than classes): Â Ã Î Ð × Ø Ù à √ ≈ ‚ в В Г Р С β Β Γ Ξ Ο ā.
static int particular_lead(uint32_t c) {
    switch (c) {
    case 0xC2: case 0xC3: case 0xCE: case 0xD0: case 0xD7: case 0xD8: case 0xD9: case 0xE0: case 0x221A:
    case 0x2248: case 0x201A: case 0x432: case 0x412: case 0x413: case 0x420: case 0x421: case 0x3B2:
    case 0x392: case 0x393: case 0x39E: case 0x39F: case 0x101:
        return 1;
    default:
        return 0;
    }
}

// ftfy.badness.BADNESS_RE: does one of its alternatives match at position i?
// Each line below is one alternative, in ftfy's order except that the few
// starting with an ASCII character come before those starting with one
// particular character (only whether any matches counts); the comments
// give the regex, with the class names of MOJIBAKE_CATEGORIES.
static int badness_at(const uint32_t *t, size_t n, size_t i) {
    // Every alternative starts with a character of some class (all the
    // single characters named below have one), or with an ASCII letter,
    // . , ? ! or whitespace followed by whitespace or a non-ASCII character;
    // the only one open to other non-ASCII characters is \s[upper_acc][currency].
    // Most text is decided here.
    uint32_t m0 = mj_class(t[i]);
    if (t[i] < 0x80) {
        uint32_t a = t[i], b = i + 1 < n ? t[i + 1] : MJ_NONE;
        if (!is_ascii_alpha(a) && a != '.' && a != ',' && a != '?' && a != '!' && !py_is_space(a)) return 0;
        if (b == MJ_NONE || (b < 0x80 && !py_is_space(b))) return 0;
    } else if (m0 == 0) {
        return i + 2 < n && (mj_class(t[i + 1]) & MJ_UPPER_ACC) && (mj_class(t[i + 2]) & MJ_CURRENCY) &&
               py_is_space(t[i]);
    }
    uint32_t c[6];
    for (int k = 0; k < 6; k++) c[k] = i + (size_t)k < n ? t[i + (size_t)k] : MJ_NONE;
    uint32_t m1 = mj_class(c[1]), m2 = mj_class(c[2]);
    const uint32_t acc = MJ_LOWER_ACC | MJ_UPPER_ACC;
    const uint32_t g = acc | MJ_BOX | MJ_START | MJ_END | MJ_CURRENCY | MJ_NUMERIC | MJ_LAW;

    if (m0 & MJ_C1) return 1;                                                          // [c1]
    if ((m0 & (MJ_BAD | g)) && (m1 & MJ_BAD)) return 1;                               // [bad acc box ...][bad]
    if (is_ascii_alpha(c[0]) && (m1 & (MJ_LOWER_COMMON | MJ_UPPER_COMMON)) && (m2 & MJ_BAD)) return 1;
    if ((m0 & MJ_BAD) && (m1 & g)) return 1;                                           // [bad][acc box ...]
    if ((m0 & (MJ_LOWER_ACC | MJ_LOWER_COMMON | MJ_BOX | MJ_END | MJ_CURRENCY | MJ_NUMERIC)) && (m1 & MJ_UPPER_ACC))
        return 1;
    if ((m0 & (MJ_BOX | MJ_END | MJ_CURRENCY | MJ_NUMERIC)) && (m1 & MJ_LOWER_ACC)) return 1;
    if ((m0 & (MJ_LOWER_ACC | MJ_BOX | MJ_END)) && (m1 & MJ_CURRENCY)) return 1;
    if (py_is_space(c[0]) && (m1 & MJ_UPPER_ACC) && (m2 & MJ_CURRENCY)) return 1;      // \s[upper_acc][currency]
    if ((m0 & (MJ_UPPER_ACC | MJ_BOX)) && (m1 & (MJ_NUMERIC | MJ_LAW))) return 1;
    if ((m0 & (acc | MJ_BOX | MJ_CURRENCY | MJ_END)) && (m1 & MJ_START) && (m2 & MJ_NUMERIC)) return 1;
    if ((m0 & (acc | MJ_CURRENCY | MJ_NUMERIC | MJ_BOX | MJ_LAW)) && (m1 & MJ_END) && (m2 & MJ_START)) return 1;
    if ((m0 & (MJ_CURRENCY | MJ_NUMERIC | MJ_BOX)) && (m1 & MJ_START)) return 1;
    if (is_ascii_lower(c[0]) && (m1 & MJ_UPPER_ACC) && (m2 & (MJ_START | MJ_CURRENCY))) return 1;
    if ((m0 & MJ_BOX) && (m1 & MJ_KAOMOJI)) return 1;
    if ((m0 & (acc | MJ_CURRENCY | MJ_NUMERIC | MJ_START | MJ_END | MJ_LAW)) && (m1 & MJ_BOX)) return 1;
    if ((m0 & MJ_BOX) && (m1 & MJ_END)) return 1;
    if ((m0 & acc) && (m1 & (MJ_START | MJ_END)) && py_is_word(c[2])) return 1;        // ... \w
    if ((c[0] == 0x152 || c[0] == 0x153) && c[1] != MJ_NONE && !is_ascii_alpha(c[1])) return 1; // [Œœ][^A-Za-z]
    if ((m0 & MJ_UPPER_ACC) && c[1] == 0xB0) return 1;                                  // [upper_acc]°
    // [a-z]\s?[ÃÂ][ ]
    if (is_ascii_lower(c[0]) && ((ONE_OF(c[1], 0xC3, 0xC2) && c[2] == ' ') ||
                                 (py_is_space(c[1]) && ONE_OF(c[2], 0xC3, 0xC2) && c[3] == ' ')))
        return 1;
    if (i == 0 && ONE_OF(c[0], 0xC3, 0xC2) && c[1] == ' ') return 1; // ^[ÃÂ][ ]
    // [a-z.,?! end]Â[ start end]
    if ((is_ascii_lower(c[0]) || ONE_OF(c[0], '.', ',', '?', '!') || (m0 & MJ_END)) && c[1] == 0xC2 &&
        (c[2] == ' ' || (m2 & (MJ_START | MJ_END))))
        return 1;
    // The alternatives left start with one particular character each.
    if (!particular_lead(c[0])) return 0;
    // [ÂÃÎÐ][€œŠš¢£Ÿž\xa0\xad®©°·» start end –—´]
    if (ONE_OF(c[0], 0xC2, 0xC3, 0xCE, 0xD0) &&
        (ONE_OF(c[1], 0x20AC, 0x153, 0x160, 0x161, 0xA2, 0xA3, 0x178, 0x17E, 0xA0, 0xAD, 0xAE, 0xA9, 0xB0, 0xB7,
                0xBB, 0x2013, 0x2014, 0xB4) ||
         (m1 & (MJ_START | MJ_END))))
        return 1;
    if (c[0] == 0xD7 && (c[1] == 0xB2 || c[1] == 0xB3)) return 1; // ×[²³]
    // [ØÙ][common currency bad numeric start ŸŠ®°µ»] twice (Arabic in Windows-1252)
    {
        const uint32_t arab = MJ_COMMON | MJ_CURRENCY | MJ_BAD | MJ_NUMERIC | MJ_START;
        int ok = 1;
        for (int k = 0; k < 4 && ok; k += 2)
            ok = ONE_OF(c[k], 0xD8, 0xD9) &&
                 ((mj_class(c[k + 1]) & arab) || ONE_OF(c[k + 1], 0x178, 0x160, 0xAE, 0xB0, 0xB5, 0xBB));
        if (ok) return 1;
    }
    if (c[0] == 0xE0 && ONE_OF(c[1], 0xB2, 0xB5, 0xB9, 0xBC, 0xBD, 0xBE)) return 1; // à[²µ¹¼½¾]
    // MacRoman: √[±∂†≠®™´≤≥¥µø]  ≈[°¢]  ‚Ä[ìîïòôúùû†°¢π]  ‚[âó][àä°ê]
    if (c[0] == 0x221A &&
        ONE_OF(c[1], 0xB1, 0x2202, 0x2020, 0x2260, 0xAE, 0x2122, 0xB4, 0x2264, 0x2265, 0xA5, 0xB5, 0xF8))
        return 1;
    if (c[0] == 0x2248 && (c[1] == 0xB0 || c[1] == 0xA2)) return 1;
    if (c[0] == 0x201A && c[1] == 0xC4 &&
        ONE_OF(c[2], 0xEC, 0xEE, 0xEF, 0xF2, 0xF4, 0xFA, 0xF9, 0xFB, 0x2020, 0xB0, 0xA2, 0x3C0))
        return 1;
    if (c[0] == 0x201A && (c[1] == 0xE2 || c[1] == 0xF3) && ONE_OF(c[2], 0xE0, 0xE4, 0xB0, 0xEA)) return 1;
    // Windows-1251: вЂ  and  [ВГРС][c1 bad start end currency °µ][ВГРС]  and  ГўВЂВ.[A-Za-z ]
    if (c[0] == 0x432 && c[1] == 0x402) return 1;
    if (ONE_OF(c[0], 0x412, 0x413, 0x420, 0x421) &&
        ((m1 & (MJ_C1 | MJ_BAD | MJ_START | MJ_END | MJ_CURRENCY)) || c[1] == 0xB0 || c[1] == 0xB5) &&
        ONE_OF(c[2], 0x412, 0x413, 0x420, 0x421))
        return 1;
    if (c[0] == 0x413 && c[1] == 0x45E && c[2] == 0x412 && c[3] == 0x402 && c[4] == 0x412 && c[5] != MJ_NONE &&
        c[5] != '\n' && i + 6 < n && (is_ascii_alpha(t[i + 6]) || t[i + 6] == ' '))
        return 1;
    if (c[0] == 0xC3 && (c[1] == 0xA0 || c[1] == 0xA1)) return 1; // Ã[\xa0¡]
    // Windows-1253: β€[™\xa0Ά\xad®°]  and  [ΒΓΞΟ][c1 bad start end currency °][ΒΓΞΟ]
    if (c[0] == 0x3B2 && c[1] == 0x20AC && ONE_OF(c[2], 0x2122, 0xA0, 0x386, 0xAD, 0xAE, 0xB0)) return 1;
    if (ONE_OF(c[0], 0x392, 0x393, 0x39E, 0x39F) &&
        ((m1 & (MJ_C1 | MJ_BAD | MJ_START | MJ_END | MJ_CURRENCY)) || c[1] == 0xB0) &&
        ONE_OF(c[2], 0x392, 0x393, 0x39E, 0x39F))
        return 1;
    if (c[0] == 0x101 && c[1] == 0x20AC) return 1; // Windows-1257: ā€
    return 0;
}

// ftfy.badness.is_bad: does the text look like it holds mojibake?
int ldm_ftfy_is_bad(const uint32_t *t, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (badness_at(t, n, i)) return 1;
    return 0;
}

// ftfy.chardata.UTF8_DETECTOR_RE at position i: a run of what looks like
// UTF-8 sequences read as single bytes,
//     (?<![cont_strict]) ( [first2][cont] | [first3][cont]{2} | [first4][cont]{3} )+
// The end of the run, or i when there is none. Like Python's re, each
// repetition takes the first alternative that matches and never backs up.
static size_t utf8_detector_at(const uint32_t *t, size_t n, size_t i) {
    if (i > 0 && (mj_class(t[i - 1]) & MJ_UTF8_CONT_STRICT)) return i;
    size_t j = i;
    for (;;) {
        uint32_t lead = mj_class(t[j]);
        int k = (lead & MJ_UTF8_FIRST2) ? 1 : 0;
        if (k && !(j + 1 < n && (mj_class(t[j + 1]) & MJ_UTF8_CONT))) k = 0;
        if (!k && (lead & MJ_UTF8_FIRST3)) {
            k = 2;
            for (int q = 1; q <= 2 && k; q++)
                if (!(j + (size_t)q < n && (mj_class(t[j + (size_t)q]) & MJ_UTF8_CONT))) k = 0;
        }
        if (!k && (lead & MJ_UTF8_FIRST4)) {
            k = 3;
            for (int q = 1; q <= 3 && k; q++)
                if (!(j + (size_t)q < n && (mj_class(t[j + (size_t)q]) & MJ_UTF8_CONT))) k = 0;
        }
        if (!k) return j;
        j += (size_t)k + 1;
        if (j >= n) return j;
    }
}

// Bytes of a re-encoded text. Patching can grow them (restore_byte_a0 adds
// one byte per "\xc3 ", replace_lossy_sequences two per lone 0x1A), so
// buffers hold 3 bytes per character.
typedef struct bytes_buf {
    uint8_t *v;
    size_t n;
} bytes_buf;

// text.encode(charmap): 0 when a character is not in the code page
// (ftfy.chardata.possible_encoding is false).
static int charmap_encode(bytes_buf *out, const ldm_charmap *cm, const uint32_t *t, size_t n) {
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = t[i];
        int b = -1;
        if (c < 0x80 && cm->to_unicode[c] == c) b = (int)c; // the code pages are ASCII below 0x80
        else if (cm->sloppy && c == 0xFFFD) b = 0x1A;
        else
            for (int k = 0x80; k < 0x100 && b < 0; k++)
                if (cm->to_unicode[k] == c) b = k;
        if (b < 0) return 0;
        out->v[out->n++] = (uint8_t)b;
    }
    return 1;
}

static int in_byte_range(const uint8_t *b, size_t n, size_t i, int lo, int hi) {
    return i < n && b[i] >= lo && b[i] <= hi;
}
// [\x80-\x84\x86-\x9f\xa1-\xbf]: a continuation byte other than 0x85 and 0xA0.
static int cont_not_85_a0(const uint8_t *b, size_t n, size_t i) {
    return in_byte_range(b, n, i, 0x80, 0xBF) && b[i] != 0x85 && b[i] != 0xA0;
}

// ftfy.chardata.ALTERED_UTF8_RE at byte i: a UTF-8 sequence whose 0xA0 byte
// became a space. Returns the match length (the first alternative that
// matches), 0 for none.
static int altered_utf8_at(const uint8_t *b, size_t n, size_t i) {
    int sp1 = i + 1 < n && b[i + 1] == ' ', sp2 = i + 2 < n && b[i + 2] == ' ', sp3 = i + 3 < n && b[i + 3] == ' ';
    uint8_t c = b[i];
    if ((c == 0xC2 || c == 0xC3 || c == 0xC5 || c == 0xCE || c == 0xD0 || c == 0xD9) && sp1) return 2;
    if ((c == 0xE2 || c == 0xE3) && sp1 && cont_not_85_a0(b, n, i + 2)) return 3;
    if (c >= 0xE0 && c <= 0xE3 && cont_not_85_a0(b, n, i + 1) && sp2) return 3;
    if (c == 0xF0) {
        int c1 = in_byte_range(b, n, i + 1, 0x80, 0xBF), c2 = in_byte_range(b, n, i + 2, 0x80, 0xBF),
            c3 = in_byte_range(b, n, i + 3, 0x80, 0xBF);
        if ((sp1 && c2 && c3) || (c1 && sp2 && c3) || (c1 && c2 && sp3)) return 4;
    }
    return 0;
}

static int bytes_at(const uint8_t *b, size_t n, size_t i, const char *s) {
    size_t k = strlen(s);
    return i + k <= n && memcmp(b + i, s, k) == 0;
}

// ftfy.fixes.restore_byte_a0: "\xc3 " -> "\xc3\xa0 " unless a space or a
// Portuguese "às" / "àquele" ... follows (A_GRAVE_WORD_RE); then every
// ALTERED_UTF8_RE match gets its spaces back as 0xA0.
static void restore_byte_a0(bytes_buf *out, bytes_buf *tmp, const bytes_buf *in) {
    tmp->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        tmp->v[tmp->n++] = in->v[i];
        if (in->v[i] == 0xC3 && bytes_at(in->v, in->n, i + 1, " ") && !bytes_at(in->v, in->n, i + 2, " ") &&
            !bytes_at(in->v, in->n, i + 2, "quele") && !bytes_at(in->v, in->n, i + 2, "quela") &&
            !bytes_at(in->v, in->n, i + 2, "quilo") && !bytes_at(in->v, in->n, i + 2, "s ")) {
            tmp->v[tmp->n++] = 0xA0;
            tmp->v[tmp->n++] = ' ';
            i++;
        }
    }
    out->n = 0;
    for (size_t i = 0; i < tmp->n;) {
        int k = altered_utf8_at(tmp->v, tmp->n, i);
        if (k == 0) k = 1;
        else
            for (int q = 0; q < k; q++)
                if (tmp->v[i + (size_t)q] == ' ') tmp->v[i + (size_t)q] = 0xA0;
        memcpy(out->v + out->n, tmp->v + i, (size_t)k);
        out->n += (size_t)k;
        i += (size_t)k;
    }
}

// ftfy.chardata.LOSSY_UTF8_RE at byte i: a UTF-8 sequence with a byte lost
// to 0x1A (what U+FFFD encodes to in the sloppy code pages) or, once, to '?'.
// Returns the match length of the first alternative that matches, 0 for none.
static int lossy_utf8_at(const uint8_t *b, size_t n, size_t i) {
#define LOST(k) (i + (k) < n && (b[i + (k)] == 0x1A || b[i + (k)] == '?'))     // [\x1a?]
#define SUB(k) (i + (k) < n && b[i + (k)] == 0x1A)                               // [\x1a]
#define CONT(k) (SUB(k) || in_byte_range(b, n, i + (k), 0x80, 0xBF))            // [\x1a\x80-\xbf]
#define ANY(k) (LOST(k) || in_byte_range(b, n, i + (k), 0x80, 0xBF))            // [\x1a?\x80-\xbf]
    uint8_t c = b[i];
    int r = 0;
    if (c >= 0xC2 && c <= 0xDF && SUB(1)) r = 2;
    else if ((c == 0xC2 || c == 0xC3) && i + 1 < n && b[i + 1] == '?') r = 2;
    else if (c == 0xED && in_byte_range(b, n, i + 1, 0xA0, 0xAF) && i + 3 < n && b[i + 3] == 0xED &&
             in_byte_range(b, n, i + 4, 0xB0, 0xBF) && ((LOST(2) && ANY(5)) || (ANY(2) && LOST(5))))
        r = 6;
    else if (c >= 0xE0 && c <= 0xEF && ((LOST(1) && CONT(2)) || (CONT(1) && LOST(2)))) r = 3;
    else if (c >= 0xF0 && c <= 0xF4 &&
             ((LOST(1) && CONT(2) && CONT(3)) || (CONT(1) && LOST(2) && CONT(3)) || (CONT(1) && CONT(2) && LOST(3))))
        r = 4;
    else if (c == 0x1A) r = 1;
    return r;
#undef LOST
#undef SUB
#undef CONT
#undef ANY
}

// ftfy.fixes.replace_lossy_sequences: each LOSSY_UTF8_RE match -> the UTF-8 of U+FFFD.
static void replace_lossy_sequences(bytes_buf *out, const bytes_buf *in) {
    out->n = 0;
    for (size_t i = 0; i < in->n;) {
        int k = lossy_utf8_at(in->v, in->n, i);
        if (k) {
            memcpy(out->v + out->n, "\xEF\xBF\xBD", 3);
            out->n += 3;
            i += (size_t)k;
        } else {
            out->v[out->n++] = in->v[i++];
        }
    }
}

// bytes.decode("utf-8") -- or ftfy's "utf-8-variants" (variants = 1), which
// also reads CESU-8 surrogate pairs (ED A0-AF xx ED B0-BF xx) as one code
// point and C0 80 as U+0000. Two quirks of its regular expressions are kept:
// their '$' also matches before a final '\n', so "C0 \n" and "ED A0-AF xx ED
// B0-BF \n" at the very end decode too (the '\n' taken as the last byte).
// Returns 1 on success, 0 when the bytes are not (that kind of) UTF-8.
// out must have room for b->n code points.
static int utf8_decode_bytes(ldm_u32str *out, const bytes_buf *in, int variants) {
    const uint8_t *b = in->v;
    size_t n = in->n, i = 0;
    out->n = 0;
    while (i < n) {
        uint32_t c = b[i], min;
        int k;
        if (variants && c == 0xC0 && i + 1 < n && (b[i + 1] == 0x80 || (b[i + 1] == '\n' && i + 2 == n))) {
            out->v[out->n++] = 0;
            i += 2;
            continue;
        }
        if (variants && c == 0xED && i + 5 < n && in_byte_range(b, n, i + 1, 0xA0, 0xAF) &&
            in_byte_range(b, n, i + 2, 0x80, 0xBF) && b[i + 3] == 0xED && in_byte_range(b, n, i + 4, 0xB0, 0xBF) &&
            (in_byte_range(b, n, i + 5, 0x80, 0xBF) || (b[i + 5] == '\n' && i + 6 == n))) {
            out->v[out->n++] = (((uint32_t)b[i + 1] & 0x0F) << 16) + (((uint32_t)b[i + 2] & 0x3F) << 10) +
                               (((uint32_t)b[i + 4] & 0x0F) << 6) + ((uint32_t)b[i + 5] & 0x3F) + 0x10000;
            i += 6;
            continue;
        }
        if (c < 0x80) { out->v[out->n++] = c; i++; continue; }
        else if ((c & 0xE0) == 0xC0) { k = 1; c &= 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { k = 2; c &= 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { k = 3; c &= 0x07; min = 0x10000; }
        else return 0;
        if (n - i <= (size_t)k) return 0;
        for (int j = 1; j <= k; j++) {
            if ((b[i + (size_t)j] & 0xC0) != 0x80) return 0;
            c = (c << 6) | (b[i + (size_t)j] & 0x3F);
        }
        if (c < min || (c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) return 0;
        out->v[out->n++] = c;
        i += (size_t)k + 1;
    }
    return 1;
}

static int fix_encoding_loop(ldm_u32str *out, const uint32_t *t, size_t n);

// ftfy.fixes.decode_inconsistent_utf8: every UTF8_DETECTOR_RE run that is
// shorter than the whole text and is_bad gets fix_encoding on its own.
static int decode_inconsistent_utf8(ldm_u32str *out, const uint32_t *t, size_t n) {
    ldm_u32str fixed = {0};
    out->n = 0;
    for (size_t i = 0; i < n;) {
        size_t j = utf8_detector_at(t, n, i);
        if (j == i) {
            if (u32_push(out, t[i])) goto fail;
            i++;
            continue;
        }
        if (j - i < n && ldm_ftfy_is_bad(t + i, j - i)) {
            if (fix_encoding_loop(&fixed, t + i, j - i) || u32_append(out, fixed.v, fixed.n)) goto fail;
        } else if (u32_append(out, t + i, j - i)) {
            goto fail;
        }
        i = j;
    }
    ldm_u32str_free(&fixed);
    return LDM_OK;
fail:
    ldm_u32str_free(&fixed);
    return LDM_ERR;
}

// fix_c1_controls: U+0080..U+009F read as sloppy Windows-1252.
static uint32_t c1_as_windows_1252(uint32_t c) { return c >= 0x80 && c <= 0x9F ? html_invalid_charrefs[c - 0x80] : c; }

// 1. The fast path: ASCII, or nothing the badness heuristic flags.
static int may_be_mojibake(const uint32_t *t, size_t n) {
    int ascii = 1;
    for (size_t i = 0; i < n && ascii; i++) ascii = t[i] < 0x80;
    return !ascii && ldm_ftfy_is_bad(t, n);
}

// ftfy's _fix_encoding_one_step_and_explain: out = t with one repair applied
// (or t itself).
static int fix_encoding_step(ldm_u32str *out, const uint32_t *t, size_t n) {
    out->n = 0;
    if (!may_be_mojibake(t, n)) return u32_append(out, t, n);

    // 2. Re-encode with each code page that holds the whole text, patch, decode as UTF-8.
    int rc = LDM_ERR, done = 0;
    bytes_buf enc = {malloc(3 * n + 8), 0}, tmp = {malloc(3 * n + 8), 0}, tmp2 = {malloc(3 * n + 8), 0};
    if (!enc.v || !tmp.v || !tmp2.v || u32_reserve(out, 3 * n + 8)) {
        ldm_error("tokenizer: out of memory repairing mojibake (%zu code points)", n);
        goto done;
    }
    for (int e = 0; e < ldm_charmaps_count && !done; e++) {
        const ldm_charmap *cm = &ldm_charmaps[e];
        if (!charmap_encode(&enc, cm, t, n)) continue;
        bytes_buf *cur = &enc, *spare = &tmp;
        int altered = 0;
        for (size_t i = 0; i < cur->n && !altered; i++) altered = altered_utf8_at(cur->v, cur->n, i) > 0;
        if (altered && strcmp(cm->name, "macroman") != 0) { // an en dash + space in MacRoman is too common
            restore_byte_a0(spare, &tmp2, cur);
            bytes_buf *s = cur; cur = spare; spare = s;
        }
        if (cm->sloppy) {
            replace_lossy_sequences(spare, cur);
            bytes_buf *s = cur; cur = spare; spare = s;
        }
        int variants = memchr(cur->v, 0xED, cur->n) != NULL || memchr(cur->v, 0xC0, cur->n) != NULL;
        done = utf8_decode_bytes(out, cur, variants);
    }
    if (done) { rc = LDM_OK; goto done; }

    // 3. Runs of UTF-8 mojibake amid other text, fixed one by one.
    int any_run = 0;
    for (size_t i = 0; i < n && !any_run; i++) any_run = utf8_detector_at(t, n, i) > i;
    if (any_run) {
        if (decode_inconsistent_utf8(out, t, n)) goto done;
        if (!(out->n == n && memcmp(out->v, t, n * sizeof *t) == 0)) { rc = LDM_OK; goto done; }
    }

    // 4. C1 controls as Windows-1252. (ftfy first tries latin-1 -> strict
    // windows-1252 for the whole text; where that succeeds it gives the same
    // result as this, and where it fails this runs anyway.)
    out->n = 0;
    for (size_t i = 0; i < n; i++) out->v[out->n++] = c1_as_windows_1252(t[i]);
    rc = LDM_OK;
done:
    free(enc.v);
    free(tmp.v);
    free(tmp2.v);
    return rc;
}

// ftfy.fix_encoding: one step at a time until the text stops changing.
// (decode_inconsistent_utf8 recurses into it on strictly shorter runs.)
static int fix_encoding_loop(ldm_u32str *out, const uint32_t *t, size_t n) {
    out->n = 0;
    if (!may_be_mojibake(t, n)) return u32_append(out, t, n);
    ldm_u32str cur = {0}, next = {0};
    if (u32_append(&cur, t, n)) return LDM_ERR;
    // ftfy's loop is unbounded; every step shortens the text or keeps it,
    // so a bound is never reached in practice.
    for (int iter = 0; iter < 64; iter++) {
        if (fix_encoding_step(&next, cur.v, cur.n)) goto fail;
        int same = u32_equal(&cur, &next);
        u32_swap(&cur, &next);
        if (same) break;
    }
    ldm_u32str_free(&next);
    out->n = 0;
    int rc = u32_append(out, cur.v, cur.n);
    ldm_u32str_free(&cur);
    return rc;
fail:
    ldm_u32str_free(&cur);
    ldm_u32str_free(&next);
    return LDM_ERR;
}

int ldm_ftfy_fix_encoding(ldm_u32str *out, const uint32_t *t, size_t n) { return fix_encoding_loop(out, t, n); }

// fix_and_explain on one segment (a line with its '\n'), looping to a fixed point.
static int ftfy_segment(ldm_u32str *out, const uint32_t *t, size_t n, int unescape) {
    ldm_u32str cur = {0}, tmp = {0};
    if (u32_append(&cur, t, n)) return LDM_ERR;
    for (int iter = 0;; iter++) {
        ldm_u32str orig = {0};
        if (u32_append(&orig, cur.v, cur.n)) goto fail;
        if (unescape) {
            if (ftfy_unescape_html(&tmp, cur.v, cur.n)) { ldm_u32str_free(&orig); goto fail; }
            u32_swap(&cur, &tmp);
        }
        if (fix_encoding_loop(&tmp, cur.v, cur.n)) { ldm_u32str_free(&orig); goto fail; }
        u32_swap(&cur, &tmp);
        if (ftfy_char_fixes(&tmp, cur.v, cur.n)) { ldm_u32str_free(&orig); goto fail; }
        u32_swap(&cur, &tmp);
        if (normalize(&tmp, cur.v, cur.n, 0)) { ldm_u32str_free(&orig); goto fail; }
        u32_swap(&cur, &tmp);
        int same = u32_equal(&cur, &orig);
        ldm_u32str_free(&orig);
        // Every pass shortens the text or leaves it fixed, except NFC
        // reorderings; bound the loop anyway (ftfy's is unbounded).
        if (same || iter > 64) break;
    }
    ldm_u32str_free(&tmp);
    out->n = 0;
    int rc = u32_append(out, cur.v, cur.n);
    ldm_u32str_free(&cur);
    return rc;
fail:
    ldm_u32str_free(&cur);
    ldm_u32str_free(&tmp);
    return LDM_ERR;
}

// ftfy.fix_text: segments end after each '\n'; unescape_html="auto" turns off
// for good at the first segment holding a '<' (ftfy rebinds its config).
int ldm_ftfy_fix_text(ldm_u32str *out, const uint32_t *t, size_t n) {
    out->n = 0;
    ldm_u32str seg = {0};
    int unescape = 1;
    size_t pos = 0;
    while (pos < n) {
        size_t end = pos;
        while (end < n && t[end] != '\n') end++;
        if (end < n) end++; // include the '\n'
        for (size_t i = pos; i < end && unescape; i++)
            if (t[i] == '<') unescape = 0;
        if (ftfy_segment(&seg, t + pos, end - pos, unescape) || u32_append(out, seg.v, seg.n)) {
            ldm_u32str_free(&seg);
            return LDM_ERR;
        }
        pos = end;
    }
    ldm_u32str_free(&seg);
    return LDM_OK;
}

// ---- str.lower() ------------------------------------------------------------------

// Unicode "Cased" and "Case_Ignorable" (used by Final_Sigma): utf8proc has
// no such properties, so they come generated from Python's own database
// (tokenizer/casing.c).
static int in_ranges(const ldm_cp_range *r, int n, uint32_t c) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < r[mid].lo) hi = mid - 1;
        else if (c > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

static int is_cased(uint32_t c) { return in_ranges(ldm_cased_ranges, ldm_cased_count, c); }
static int is_case_ignorable(uint32_t c) { return in_ranges(ldm_case_ignorable_ranges, ldm_case_ignorable_count, c); }

int ldm_py_lower(ldm_u32str *out, const uint32_t *t, size_t n) {
    out->n = 0;
    if (u32_reserve(out, n + 8)) return LDM_ERR;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = t[i];
        if (c == 0x0130) { // SpecialCasing: LATIN CAPITAL LETTER I WITH DOT ABOVE -> i + U+0307
            if (u32_push(out, 'i') || u32_push(out, 0x0307)) return LDM_ERR;
            continue;
        }
        if (c == 0x03A3) { // Final_Sigma: cased (ignorable)* SIGMA !((ignorable)* cased)
            size_t j = i;
            while (j > 0 && is_case_ignorable(t[j - 1])) j--;
            int fin = j > 0 && is_cased(t[j - 1]);
            if (fin) {
                size_t k = i + 1;
                while (k < n && is_case_ignorable(t[k])) k++;
                fin = k == n || !is_cased(t[k]);
            }
            if (u32_push(out, fin ? 0x03C2 : 0x03C3)) return LDM_ERR;
            continue;
        }
        if (u32_push(out, (uint32_t)utf8proc_tolower((utf8proc_int32_t)c))) return LDM_ERR;
    }
    return LDM_OK;
}

// ---- the whole cleaning -----------------------------------------------------------

int ldm_text_clean(ldm_u32str *out, const uint32_t *text, size_t n) {
    ldm_u32str a = {0}, b = {0};
    int rc = LDM_ERR;
    if (ldm_ftfy_fix_text(&a, text, n)) goto done;     // ftfy.fix_text
    if (ldm_html_unescape(&b, a.v, a.n)) goto done;   // html.unescape
    if (ldm_html_unescape(&a, b.v, b.n)) goto done;   // html.unescape again
    // strip + " ".join(text.split()) + strip: runs of str.isspace() -> one space.
    b.n = 0;
    for (size_t i = 0; i < a.n;) {
        if (ldm_py_isspace(a.v[i])) { i++; continue; }
        if (b.n && u32_push(&b, ' ')) goto done;
        while (i < a.n && !ldm_py_isspace(a.v[i]))
            if (u32_push(&b, a.v[i++])) goto done;
    }
    rc = ldm_py_lower(out, b.v, b.n); // .lower()
done:
    ldm_u32str_free(&a);
    ldm_u32str_free(&b);
    return rc;
}
