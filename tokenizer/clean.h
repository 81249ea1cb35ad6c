/*
 * tokenizer/clean.h -- the text cleaning that runs before CLIP's BPE:
 * UTF-8 decoding with byte-offset errors, an ftfy-equivalent fix_text
 * (mojibake repair included), Python's html.unescape, whitespace collapse and
 * Python's str.lower(). Text is handled as arrays of Unicode code points
 * (uint32_t), the way Python's str holds it.
 */
#ifndef LDM_TOKENIZER_CLEAN_H
#define LDM_TOKENIZER_CLEAN_H

#include <stddef.h>
#include <stdint.h>

// A growable code-point string.
typedef struct ldm_u32str {
    uint32_t *v; // [n] code points
    size_t n, cap;
} ldm_u32str;

void ldm_u32str_free(ldm_u32str *s);

// Strict UTF-8 -> code points: rejects overlong forms, surrogates, code points
// above U+10FFFF, stray continuation bytes and truncated sequences, with an
// ldm_error naming the byte offset. NUL bytes are accepted (Python allows them).
int ldm_utf8_decode(ldm_u32str *out, const char *text, size_t len);
// Code points -> UTF-8 (appends a NUL, not counted in *len). Caller frees *out.
int ldm_utf8_encode(char **out, size_t *len, const uint32_t *cp, size_t n);

// The whole cleaning of open_clip's `_clean_lower` (== OpenAI CLIP's
// basic_clean + whitespace_clean + lower): ftfy.fix_text, html.unescape twice,
// strip, whitespace runs -> one space, str.lower(). out is overwritten.
int ldm_text_clean(ldm_u32str *out, const uint32_t *text, size_t n);

// The steps, exposed for tests and the docs' exercises.
// ftfy.fix_text with its default config.
int ldm_ftfy_fix_text(ldm_u32str *out, const uint32_t *text, size_t n);
// ftfy.fix_encoding: mojibake repair alone (UTF-8 read as latin-1,
// Windows-125x, iso-8859-2, MacRoman or cp437 is decoded again).
int ldm_ftfy_fix_encoding(ldm_u32str *out, const uint32_t *text, size_t n);
// ftfy.badness.is_bad: 1 when the text has a sequence typical of mojibake.
int ldm_ftfy_is_bad(const uint32_t *text, size_t n);
// Python's html.unescape (HTML5 rules, also names without ';').
int ldm_html_unescape(ldm_u32str *out, const uint32_t *text, size_t n);
// Python's str.isspace() for one code point.
int ldm_py_isspace(uint32_t c);
// Python's str.lower(): full mapping (U+0130 -> "i\u0307") and Final_Sigma.
int ldm_py_lower(ldm_u32str *out, const uint32_t *text, size_t n);

#endif
