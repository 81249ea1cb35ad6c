/*
 * tokenizer/mojibake.h -- the data of ftfy's mojibake repair, as generated
 * tables (tokenizer/mojibake.c, made by tokenizer/gen_mojibake.py from
 * Python's codecs and ftfy 6.3.1's character classes). Used by
 * fix_encoding in tokenizer/clean.c.
 */
#ifndef LDM_TOKENIZER_MOJIBAKE_H
#define LDM_TOKENIZER_MOJIBAKE_H

#include <stdint.h>

#include "tokenizer/casing.h"

// A single-byte code page: byte -> code point. "sloppy" ones (ftfy's
// sloppy-windows-125x) map their undefined bytes to the code point of the
// same number and byte 0x1A to U+FFFD.
typedef struct ldm_charmap {
    const char *name; // ftfy's name: "latin-1", "sloppy-windows-1252", ...
    int sloppy;
    uint32_t to_unicode[256];
} ldm_charmap;

// ftfy.chardata.CHARMAP_ENCODINGS, in the order ftfy tries them.
extern const ldm_charmap ldm_charmaps[];
extern const int ldm_charmaps_count;

// Character classes (bits of ldm_mojibake_class.mask).
// ftfy.badness.MOJIBAKE_CATEGORIES:
#define MJ_C1 (1u << 0)            // U+0080..U+009F
#define MJ_BAD (1u << 1)           // nearly always mojibake: ¦ ¤ ¨ ¬ ¯ ¸ ƒ ...
#define MJ_LAW (1u << 2)           // ¶ §
#define MJ_CURRENCY (1u << 3)      // ¢ £ ¥ ₧ €
#define MJ_START (1u << 4)         // opening punctuation: ¡ « ¿ © ‘ “ • ...
#define MJ_END (1u << 5)           // closing punctuation: ® » ” › ™ ...
#define MJ_NUMERIC (1u << 6)       // ² ³ ± ½ × µ ÷ ∞ ≈ № ...
#define MJ_KAOMOJI (1u << 7)       // letters that appear in emoticons: Ò-Ö ò-ö ° ...
#define MJ_UPPER_ACC (1u << 8)     // upper-case accented Latin: À-Ñ Ø Ü Ý Ă ...
#define MJ_LOWER_ACC (1u << 9)     // lower-case accented Latin: ß à-ñ ă ą ...
#define MJ_UPPER_COMMON (1u << 10) // Þ, upper-case Greek and Cyrillic
#define MJ_LOWER_COMMON (1u << 11) // lower-case Greek and Cyrillic
#define MJ_BOX (1u << 12)          // box drawing and block elements
#define MJ_COMMON (1u << 13)       // U+00A0 ­ · ´ – — ― … ’
// ftfy.chardata.UTF8_CLUES:
#define MJ_UTF8_FIRST2 (1u << 14)      // what bytes C2..DF decode to in one of the code pages
#define MJ_UTF8_FIRST3 (1u << 15)      // ... bytes E0..EF
#define MJ_UTF8_FIRST4 (1u << 16)      // ... bytes F0, F3
#define MJ_UTF8_CONT (1u << 17)        // ... bytes 80..BF, and the space (for U+00A0)
#define MJ_UTF8_CONT_STRICT (1u << 18) // MJ_UTF8_CONT less space, dashes, quotes, bullet, ellipsis

// The masks of U+0000..U+052F (Latin, Greek, Cyrillic), indexed directly.
#define LDM_MOJIBAKE_LOW 0x530
extern const uint32_t ldm_mojibake_low[LDM_MOJIBAKE_LOW];

typedef struct ldm_mojibake_class {
    uint32_t cp, mask;
} ldm_mojibake_class;

// Every code point from U+0530 up with a non-zero mask, sorted by cp.
extern const ldm_mojibake_class ldm_mojibake_classes[];
extern const int ldm_mojibake_classes_count;

// Python's re \w on str: code points that are alphanumeric, and '_'.
extern const ldm_cp_range ldm_word_ranges[];
extern const int ldm_word_ranges_count;

#endif
