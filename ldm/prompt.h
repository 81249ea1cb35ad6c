/*
 * ldm/prompt.h -- prompt weighting and chunking: AUTOMATIC1111's attention
 * syntax and its 75-token chunks, independent of any model.
 *
 *   "a (red:1.2) [car] BREAK x" --ldm_prompt_parse--> pieces (text, weight)
 *       --ldm_prompt_tokenize--> ids [k*77], mult [k*77]   (k chunks of 77)
 *   CLIP(ids) = z [k,77,D] --ldm_prompt_emphasis--> z weighted ("Original")
 *
 * The pipeline (ldm/pipeline.c, stage "condition") runs the three in that
 * order for the prompt and the negative prompt.
 *
 * Mirrors AUTOMATIC1111 modules/prompt_parser.py parse_prompt_attention and
 * modules/sd_hijack_clip.py (tokenize_line, process_tokens, "Original"
 * emphasis, embeddings kept whole in a chunk). Leaves out: prompt editing
 * `[from:to:when]`, alternation `[a|b]` (A1111 scheduling syntax).
 */
#ifndef LDM_PROMPT_H
#define LDM_PROMPT_H

#include <stdint.h>
#include "ldm/embeddings.h"

struct ldm_tokenizer;

// One piece of a parsed prompt: text and its attention multiplier.
// weight < 0 marks a BREAK (start a new 75-token chunk).
typedef struct ldm_prompt_piece {
    char *text;
    float weight;
} ldm_prompt_piece;

// "a (red:1.2) [car]" -> pieces ("a ", 1), ("red", 1.2), (" ", 1), ("car", 1/1.1).
// ( ) multiply by 1.1, [ ] by 1/1.1, (text:w) by w, nesting multiplies,
// \( \) \[ \] \\ are literal, unclosed brackets apply to the rest, BREAK
// (a word, upper case) starts a new chunk. Adjacent pieces of equal weight
// are merged. Empty prompt -> one piece ("", 1). 0 / LDM_ERR (out of memory).
int ldm_prompt_parse(ldm_prompt_piece **pieces, int *n, const char *prompt);
void ldm_prompt_pieces_free(ldm_prompt_piece *pieces, int n);

// Tokenize parsed pieces into chunks of 77: chunk k = [SOT, 75 tokens or
// padding, EOT]; padding is EOT then `pad` (SD1 49407, SD2 0) after the first
// EOT, as A1111. A chunk that fills up within 20 tokens after a comma is split
// after the comma (A1111 comma_padding_backtrack 20).
//   ids [n_chunks*77] (malloc'ed), mult [n_chunks*77] (malloc'ed; 1 for
//   SOT/EOT/padding). 0 / LDM_ERR.
int ldm_prompt_tokenize(int32_t **ids, float **mult, int *n_chunks,
                        struct ldm_tokenizer *tok, const char *prompt, int pad);
// The same with textual-inversion embeddings (ldm/embeddings.h; NULL: none): a
// word equal to an embedding's name becomes its n placeholder ids, kept in one chunk.
int ldm_prompt_tokenize_emb(int32_t **ids, float **mult, int *n_chunks,
                            struct ldm_tokenizer *tok, const ldm_embeddings *emb,
                            const char *prompt, int pad);

// A1111 "Original" emphasis, in place, chunk by chunk: z [n_chunks,77,D]
// (the text encoder's output), mult [n_chunks*77]:
//   m = mean(z); z *= mult (per token); z *= m / mean(z).
// A chunk whose multipliers are all 1 is left exactly as it is.
void ldm_prompt_emphasis(float *z, const float *mult, int n_chunks, int64_t D);

#endif
