/*
 * tokenizer/casing.h -- Cased and Case_Ignorable code-point ranges, generated
 * (tokenizer/casing.c, made by tokenizer/gen_casing.py from Python's Unicode
 * database) for the Final_Sigma rule of Python's str.lower().
 */
#ifndef LDM_TOKENIZER_CASING_H
#define LDM_TOKENIZER_CASING_H

#include <stdint.h>

typedef struct ldm_cp_range {
    uint32_t lo, hi; // inclusive
} ldm_cp_range;

extern const ldm_cp_range ldm_cased_ranges[];
extern const int ldm_cased_count;
extern const ldm_cp_range ldm_case_ignorable_ranges[];
extern const int ldm_case_ignorable_count;

#endif
