/*
 * tokenizer/bpe.h -- the CLIP byte-level BPE tokenizer (SD1 and SD2 prompts).
 *
 * Same algorithm as OpenAI CLIP's simple_tokenizer.py / open_clip's
 * SimpleTokenizer (with ftfy): clean the text (tokenizer/clean.h), split it
 * with the pre-tokenizer pattern, map each piece's UTF-8 bytes through the
 * byte-to-unicode table, merge by rank, '</w>' on the last symbol.
 *
 *   ldm_tokenizer *tok;
 *   if (ldm_tokenizer_load(&tok, NULL)) die(ldm_last_error());
 *   int *ids, n;
 *   ldm_tokenizer_encode(tok, &ids, &n, "a photo of a cat", 16);  // 320 1125 539 320 2368
 *   int ctx[77];
 *   ldm_tokenizer_context(ctx, 77, LDM_TOKEN_EOT, ids, n);         // SD1 form
 *
 * A tokenizer holds a word cache and is not safe to share between threads.
 */
#ifndef LDM_TOKENIZER_BPE_H
#define LDM_TOKENIZER_BPE_H

#include <stddef.h>

#define LDM_TOKEN_SOT 49406   // <start_of_text> (HF: <|startoftext|>)
#define LDM_TOKEN_EOT 49407   // <end_of_text>   (HF: <|endoftext|>); SD1 pad
#define LDM_TOKEN_PAD_SD2 0   // open_clip.tokenize pads with 0 (SD2)
#define LDM_CONTEXT 77        // T: CLIP's text context length
#define LDM_VOCAB_DEFAULT "build/vocab/bpe_simple_vocab_16e6.txt.gz"

typedef struct ldm_tokenizer ldm_tokenizer;

// Load bpe_simple_vocab_16e6.txt.gz (gzip; line 0 a header, then 48,894
// merges "a b"). path NULL: LDM_VOCAB_DEFAULT (relative to
// the working directory: run from the repository root). A directory is taken
// as a diffusers model folder or its tokenizer/ folder (vocab.json + merges.txt).
int ldm_tokenizer_load(ldm_tokenizer **out, const char *path);
// The diffusers / HF route: tokenizer/vocab.json + tokenizer/merges.txt.
int ldm_tokenizer_load_hf(ldm_tokenizer **out, const char *vocab_json, const char *merges_txt);
void ldm_tokenizer_free(ldm_tokenizer *tok);

// text [len bytes of UTF-8] -> *ids [*n] (malloc'd; caller frees): the BPE
// ids of the cleaned text, without start/end tokens, without truncation --
// open_clip's SimpleTokenizer.encode(). Invalid UTF-8 is an error naming
// the byte offset.
int ldm_tokenizer_encode(ldm_tokenizer *tok, int **ids, int *n, const char *text, size_t len);

// Like encode, but returns the BPE strings ("a</w>", byte-table form) as one
// malloc'd string, pieces separated by single spaces.
int ldm_tokenizer_pieces(ldm_tokenizer *tok, char **out, const char *text, size_t len);

// Conditioning form: out [context] = [SOT] + ids[:context-2] + [EOT] + pad...
// pad = LDM_TOKEN_EOT (SD1, HF padding="max_length") or 0 (SD2, open_clip).
void ldm_tokenizer_context(int *out, int context, int pad, const int *ids, int n);

// Vocabulary size (49,408) and the BPE string of one id (NULL if out of range).
int ldm_tokenizer_vocab_size(const ldm_tokenizer *tok);
const char *ldm_tokenizer_piece(const ldm_tokenizer *tok, int id);

// Pieces of at least n bytes are merged with the O(n log n) heap version of
// BPE instead of the plain quadratic loop (same result; default n = 32;
// 0 = always, INT_MAX = never). For tests and benchmarks; clears the cache.
void ldm_tokenizer_set_fast_bpe_min(ldm_tokenizer *tok, int n);

// The path ldm_tokenizer_load(NULL) uses: LDM_VOCAB_DEFAULT (the CLI's main
// reads $LDM_VOCAB and passes it as a path instead).
const char *ldm_tokenizer_default_path(void);

#endif
