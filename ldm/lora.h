/*
 * ldm/lora.h -- LoRA files merged into a loaded UNet and text encoder, and
 * taken out again after the generation that asked for them.
 *
 * A LoRA ("Low-Rank Adaptation", Hu et al. 2021, eq. 3) stores, for some
 * linear or conv layers W [out,in(,kh,kw)], two small matrices
 *   down A [r,in(,kh,kw)] and up B [out,r(,1,1)]
 * and the layer becomes W' = W + scale * (alpha / r) * (B @ A)   (merged here,
 * once per generation: the readable way, no extra op in the forward pass).
 *
 * Formats (any tensor file, detected by magic bytes):
 *   kohya / A1111   "lora_unet_<path with '.' -> '_'>.lora_down.weight",
 *                   ".lora_up.weight", ".alpha" (a scalar; absent: alpha = r);
 *                   "lora_te_<path>..." for the text encoder. LoCon: the same
 *                   keys on conv layers (down [r,in,3,3], up [out,r,1,1]).
 *   diffusers/PEFT  "unet.<path>.lora_A.weight" / ".lora_B.weight",
 *                   "text_encoder.<path>..." (also the older
 *                   "<path>.lora.down.weight" / ".lora.up.weight"); alpha = r
 *                   unless an ".alpha" tensor is present or the safetensors
 *                   metadata "lora_adapter_metadata" (diffusers'
 *                   save_lora_weights) gives "unet.lora_alpha" /
 *                   "text_encoder.lora_alpha".
 * <path> is the diffusers module path of the layer: "down_blocks.0.attentions.0.
 * transformer_blocks.0.attn1.to_q", "text_model.encoder.layers.3.mlp.fc1". The
 * kohya names are matched against the table of every adaptable layer of the
 * loaded model, written with '_', so the mapping is exact whatever the
 * underscores in a path. SD2's text encoder (OpenCLIP) is stored split into
 * q/k/v by ldm/io/weights.c, so its LoRA keys (the transformers names kohya
 * writes for SD2 too) map the same way. A key that names no layer of the model,
 * or a tensor that is neither down, up nor alpha (LoHa, LoKr, DoRA), is an
 * error naming it.
 *
 * Restore: the first time a weight is touched its tensor is set aside and the
 * layer gets an fp32 copy of its own to merge into (a weight may be fp16, or
 * point into the read-only mapped file); ldm_lora_restore frees the copies and
 * puts the set-aside tensors back, so the next prompt sees the original weights
 * bit for bit (subtracting the delta would leave fp32 rounding behind).
 */
#ifndef LDM_LORA_H
#define LDM_LORA_H

#include "ldm/clip.h"
#include "ldm/unet.h"

// One LoRA asked for: a file and its multiplier (--lora FILE:SCALE, <lora:NAME:SCALE>).
typedef struct ldm_lora_spec {
    char path[1024];
    float scale;
} ldm_lora_spec;
#define LDM_LORA_MAX_SPECS 16   // --lora flags of one command line

// Weights currently changed, with their original values.
typedef struct ldm_lora_set {
    struct ldm_lora_saved { ldm_tensor *w; ldm_tensor orig; } *saved;   // [n] w's own tensors
    int n, cap;
    int n_files;        // LoRA files merged so far
    int n_layers;       // layer deltas merged so far (all files)
    char *prompt;       // the prompt with its <lora:...> tags removed (ldm_lora_begin)
} ldm_lora_set;

// "FILE:SCALE" or "FILE" (scale 1) -> spec: the path is the part before the
// last ':' when a number follows it, else all of s. 0 / LDM_ERR.
int ldm_lora_spec_parse(ldm_lora_spec *spec, const char *s);

// Merge one LoRA file into u and/or c (either may be NULL when the file has
// no keys for it): W += scale * alpha/r * up @ down for every layer it names.
// Originals are kept in s. 0 / LDM_ERR (the key or tensor at fault named; the
// layers already merged stay merged until ldm_lora_restore).
int ldm_lora_apply(ldm_lora_set *s, ldm_unet *u, ldm_clip *c, const char *path, float scale);

// Put every touched weight back to its original bytes and empty s (also frees s->prompt).
void ldm_lora_restore(ldm_lora_set *s);

// A1111 / stable-diffusion.cpp prompt syntax: every "<lora:NAME:SCALE>" (or
// "<lora:NAME>", scale 1) is removed from `prompt` and DIR/NAME.safetensors
// (else NAME.ckpt, NAME.pt) is merged; then the `n` specs of the command line.
// s->prompt receives the cleaned prompt. A tag without lora_dir is an error.
// 0 / LDM_ERR (on error the weights are already restored).
int ldm_lora_begin(ldm_lora_set *s, ldm_unet *u, ldm_clip *c, const char *prompt,
                   const char *lora_dir, const ldm_lora_spec *specs, int n);

// The same for more text once s has begun (the negative prompt: a tag is
// global, it changes the model for both halves of guidance, as A1111 treats
// extra networks): *cleaned (malloc'ed, the caller frees it) <- text without
// its tags, each tag's file merged into s. 0 / LDM_ERR (*cleaned may be set;
// the layers merged stay merged until ldm_lora_restore).
int ldm_lora_take_tags(char **cleaned, ldm_lora_set *s, ldm_unet *u, ldm_clip *c,
                       const char *text, const char *lora_dir);

#endif
