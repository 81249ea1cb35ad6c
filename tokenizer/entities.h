/*
 * tokenizer/entities.h -- the HTML5 named character references, as generated
 * data (tokenizer/entities.c, made by tokenizer/gen_entities.py from Python's
 * html.entities.html5). Used by the text cleaning in tokenizer/clean.c.
 */
#ifndef LDM_TOKENIZER_ENTITIES_H
#define LDM_TOKENIZER_ENTITIES_H

typedef struct ldm_entity {
    const char *name; // without '&'; may end in ';' ("amp;", "amp", "eacute;")
    const char *utf8; // the replacement text, UTF-8 (one or two code points)
} ldm_entity;

// Sorted by strcmp on name (byte order).
extern const ldm_entity ldm_html5_entities[];
extern const int ldm_html5_entities_count;
// ftfy's extra upper-case names ("EACUTE;" -> "É"), sorted the same way.
extern const ldm_entity ldm_ftfy_upper_entities[];
extern const int ldm_ftfy_upper_entities_count;

#endif
