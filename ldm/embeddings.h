/*
 * ldm/embeddings.h -- textual-inversion embeddings: learned word vectors
 * used by name in the prompt (Gal et al. 2022, "An Image is Worth One Word").
 *
 * A folder (--embedding-dir) holds one embedding per file; the file name
 * without extension is the word ("my-style.pt" -> my-style). Each holds n
 * vectors [n,D] of the text encoder's token-embedding width D. Formats
 * (by magic bytes; candidates are the .pt, .bin and .safetensors files):
 *   AUTOMATIC1111 .pt   {"string_to_param": {"*": [n,D]}, "name", "step", ...}
 *                       (read by the allow-list unpickler, ldm/io/ckpt.c)
 *   A1111 .safetensors  "emb_params" [n,D]
 *   SD2 / SDXL-style    "clip_h" / "clip_l" / "clip_g": the one of width D
 *   diffusers .bin      one tensor {"<token>": [D] or [n,D]}
 * A file whose vectors have another width (an SD1 embedding beside an SD2
 * model) is skipped, as A1111 does (counted in n_skipped).
 *
 * How the vectors reach the text encoder (the way diffusers'
 * load_textual_inversion does it): the token-embedding table [V,D] of the
 * loaded CLIP grows to [V+N,D] with the N vectors of every embedding appended,
 * and an embedding of n vectors owns the placeholder ids V+k .. V+k+n-1.
 * ldm_prompt_tokenize_emb (ldm/prompt.h) emits those ids where the prompt has
 * the word; the CLIP forward pass is unchanged (its lookup reads the new rows).
 */
#ifndef LDM_EMBEDDINGS_H
#define LDM_EMBEDDINGS_H

#include <stddef.h>
#include <stdint.h>

struct ldm_clip;

typedef struct ldm_embedding_word {
    char *name;          // the word: the file name without extension
    int32_t first_id;    // placeholder ids first_id .. first_id+n-1
    int n;               // vectors
} ldm_embedding_word;

typedef struct ldm_embeddings {
    ldm_embedding_word *e;    // [n], sorted longest name first (a longer name wins)
    int n;
    int n_skipped;       // files of another width
    int32_t base_id;     // the vocabulary size before: first placeholder id
} ldm_embeddings;

// Load every embedding in dir and append its vectors to clip's token
// embedding (clip->tok_emb grows, clip->cfg.vocab_size with it). 0 / LDM_ERR
// (a candidate file that is unreadable or holds no embedding is named).
int ldm_embeddings_load_dir(ldm_embeddings *emb, struct ldm_clip *clip, const char *dir);
void ldm_embeddings_free(ldm_embeddings *emb);

// The tensor of one embedding file already open or parsed (ldm/io/tensorfile.h)
// that holds its vectors of width D: *e = [n,D] or [D] (1 <= n <= 75), or
// *e = NULL when the file holds vectors of another width only (skipped).
// 0 / LDM_ERR (no embedding in the file; its path named). The step
// ldm_embeddings_load_dir runs per file; the entry point of tests/fuzz/fuzz_embeddings.c.
struct ldm_tensor_file;
struct ldm_tensor_entry;
int ldm_embedding_pick(const struct ldm_tensor_entry **e, const struct ldm_tensor_file *f, int64_t D);

// The embedding named exactly s[0..len) (ASCII case-insensitive), or NULL.
const ldm_embedding_word *ldm_embeddings_find(const ldm_embeddings *emb, const char *s, size_t len);

// n when id is the first placeholder id of an embedding of n vectors, else 0.
int ldm_embeddings_span(const ldm_embeddings *emb, int32_t id);

#endif
