/*
 * tools/cmd_encode_prompt.c -- `sd encode-prompt`: prompt -> CLIP context.
 *
 *   sd encode-prompt --ckpt MODEL [--out FILE.npy] "a photo of a cat"
 *
 * Tokenizes the prompt (tokenizer/bpe.h; the model folder's tokenizer/ when it
 * has one, else the BPE vocabulary file), forms the 77-token context
 * ([SOT] ids [EOT] pad; pad 49407 for SD1, 0 for SD2), runs the text encoder
 * (ldm/clip.c) and writes the [1,77,D] context as float32 .npy (default
 * context.npy): the tensor the UNet cross-attends to. --ids FILE.npy takes ids instead of text
 * (any [B,T] array), which is how the tests bypass the tokenizer.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/clip.h"
#include "ldm/core/error.h"
#include "ldm/model.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/pipeline.h"
#include "tokenizer/bpe.h"
#include "tools/cmd.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: sd encode-prompt [--ckpt MODEL] [flags] \"PROMPT\"\n\n"
            "Encode PROMPT with the model's CLIP text encoder; write the [1,77,D] context.\n\n"
            "  --ckpt MODEL        single-file checkpoint (.safetensors/.ckpt) or diffusers folder\n"
            "                      (default: the tiny model, " LDM_TINY_MODEL_DEFAULT ")\n"
            "  --config DIR        diffusers-style folder with the configs of a single file\n"
            "                      of non-standard size\n"
            "  --vocab PATH        BPE vocabulary (default $LDM_VOCAB or %s;\n"
            "                      a diffusers folder's tokenizer/ is used when present)\n"
            "  --ids FILE.npy      token ids [B,T] instead of PROMPT (no tokenizer)\n"
            "  --clip-skip N       stop N-1 layers earlier than the model does (default 1)\n"
            "  --out FILE.npy      where to write the context (default context.npy)\n"
            "  --overwrite         replace FILE.npy if it exists (synonym --force)\n"
            "  --backend NAME      ref | cpu | cuda | cuda-emu\n"
            "  --help              this text\n",
            LDM_VOCAB_DEFAULT);
}

int cmd_encode_prompt(int argc, char **argv, const sd_env *defaults) {
    sd_env env = *defaults;
    const char *ckpt = NULL, *config = NULL, *vocab = NULL, *ids_npy = NULL,
               *out_path = "context.npy", *prompt = NULL;
    int clip_skip = 1, overwrite = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        int c = sd_common_flag(argc, argv, &i, &env);
        if (c < 0) return 2;
        if (c > 0) continue;
        if (sd_is_overwrite_flag(a)) { overwrite = 1; continue; }
        const char **dst = !strcmp(a, "--ckpt") ? &ckpt : !strcmp(a, "--config") ? &config
                         : !strcmp(a, "--vocab") ? &vocab : !strcmp(a, "--ids") ? &ids_npy
                         : !strcmp(a, "--out") ? &out_path : NULL;
        if (dst || !strcmp(a, "--clip-skip")) {
            if (i + 1 >= argc) { sd_fail("%s needs a value", a); return 2; }
            if (dst) *dst = argv[++i];
            else {
                char *e;
                long v = strtol(argv[++i], &e, 10);
                if (*e || v < 1 || v > 100) { sd_fail("--clip-skip: expected 1..100, got '%s'", argv[i]); return 2; }
                clip_skip = (int)v;
            }
        } else if (a[0] == '-' && a[1] == '-') {
            sd_fail("encode-prompt: unknown flag '%s' (sd encode-prompt --help)", a);
            return 2;
        } else if (!prompt) {
            prompt = a;
        } else {
            sd_fail("encode-prompt: one PROMPT expected; quote it (\"%s\" and \"%s\")", prompt, a);
            return 2;
        }
    }
    if (!prompt && !ids_npy) { usage(stderr); return 2; }
    if (prompt && ids_npy) { sd_fail("encode-prompt: give PROMPT or --ids, not both"); return 2; }
    const char *inputs[] = {ids_npy};
    if (sd_check_output(out_path, overwrite, inputs, 1)) return 1;
    if (!ckpt) {
        ckpt = sd_tiny_model(&env);
        fprintf(stderr, "encode-prompt: no --ckpt given: using the tiny model in %s\n", ckpt);
    }

    const struct ldm_ops *ops = sd_backend(&env);
    if (!ops) return sd_fail("%s", ldm_last_error());
    ldm_model m;
    ldm_model_options opt = {ops, LDM_PRED_AUTO, config};
    if (ldm_model_open(&m, ckpt, &opt) != 0) return sd_fail("%s", ldm_last_error());
    if (!m.has_text) {
        ldm_model_close(&m);
        return sd_fail("%s: no text encoder in this model", ckpt);
    }

    // ---- token ids [B,T]
    int B = 1, T = LDM_CONTEXT;
    int32_t *ids = NULL;
    int rc = 0;
    if (ids_npy) {
        float *v;
        int64_t shape[8];
        int nd;
        if (ldm_npy_read_raw(&v, shape, &nd, ids_npy) != 0) { rc = sd_fail("%s", ldm_last_error()); goto done; }
        if (nd != 2 || shape[0] < 1 || shape[1] < 1 || shape[0] > 4096 || shape[1] > 4096) {
            free(v);
            rc = sd_fail("%s: expected ids of shape [B,T]", ids_npy);
            goto done;
        }
        B = (int)shape[0];
        T = (int)shape[1];
        ids = malloc((size_t)B * T * sizeof *ids);
        for (int64_t i = 0; ids && i < (int64_t)B * T; i++) ids[i] = (int32_t)v[i];
        free(v);
    } else {
        ldm_tokenizer *tok;
        if (ldm_tokenizer_load(&tok, vocab ? vocab : m.tokenizer_dir ? m.tokenizer_dir : env.vocab) != 0) {
            rc = sd_fail("%s", ldm_last_error());
            goto done;
        }
        int *bpe, n, ctx[LDM_CONTEXT];
        if (ldm_tokenizer_encode(tok, &bpe, &n, prompt, strlen(prompt)) != 0) {
            ldm_tokenizer_free(tok);
            rc = sd_fail("%s", ldm_last_error());
            goto done;
        }
        if (n > LDM_CONTEXT - 2)
            fprintf(stderr, "sd: prompt is %d tokens; only the first %d are used\n", n, LDM_CONTEXT - 2);
        ldm_tokenizer_context(ctx, LDM_CONTEXT, m.clip.pad_token_id, bpe, n);
        free(bpe);
        ldm_tokenizer_free(tok);
        ids = malloc(LDM_CONTEXT * sizeof *ids);
        for (int i = 0; ids && i < LDM_CONTEXT; i++) ids[i] = ctx[i];
    }
    if (!ids) { rc = sd_fail("out of memory"); goto done; }

    // ---- encode
    ldm_clip clip;
    if (ldm_clip_load(&clip, &m.clip_w, &m.clip) != 0) { rc = sd_fail("%s", ldm_last_error()); goto done; }
    ldm_tensor ctxt;
    if (ldm_clip_forward(&ctxt, &clip, ids, B, T, clip_skip - 1) != 0) {
        rc = sd_fail("%s", ldm_last_error());
    } else {
        float *h = malloc((size_t)ctxt.numel * sizeof *h);
        if (h) {
            ldm_tensor_to_host(h, &ctxt);
            double s = 0, s2 = 0;
            for (int64_t i = 0; i < ctxt.numel; i++) s += h[i], s2 += (double)h[i] * h[i];
            printf("context [%d,%d,%lld]  mean %.6f  rms %.6f  first %.6f %.6f %.6f  (%s, %s)\n", B,
                   T, (long long)ctxt.shape[2], s / ctxt.numel, sqrt(s2 / ctxt.numel), h[0], h[1],
                   h[2], ldm_family_name(m.family), ops->name);
            free(h);
        }
        if (ldm_npy_write_tensor(out_path, &ctxt) != 0) rc = sd_fail("%s", ldm_last_error());
        else printf("wrote %s\n", out_path);
        ldm_tensor_free(&ctxt);
    }
    ldm_clip_free(&clip);
done:
    free(ids);
    ldm_model_close(&m);
    return rc;
}
