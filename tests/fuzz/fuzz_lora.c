/*
 * tests/fuzz/fuzz_lora.c -- libFuzzer target for the LoRA reader of
 * ldm/lora.c: a LoRA file's tensors -> the key mapping (kohya / PEFT /
 * older diffusers names against the table of the model's adaptable layers),
 * the shape checks, the PEFT alpha metadata, and the merge.
 *
 * The tiny model (tools/tiny-model, the one the LoRA fixtures were made for)
 * is loaded once in LLVMFuzzerInitialize. Each input is a whole LoRA file in
 * an exact-size heap copy (AddressSanitizer catches a read past its end),
 * parsed as safetensors, or as a torch zip when it starts "PK\3\4", and
 * merged into the UNet and text encoder with ldm_lora_apply_file; then
 * ldm_lora_restore. Checks: an accepted file merged at least one layer, a
 * rejected one says why, and every probed weight is the loaded tensor again
 * after the restore. Built and run by `make fuzz` (from the repository root);
 * seeds: tests/fuzz/seeds/fuzz_lora/ (tools/reference/fuzz_seeds_lora.py: a
 * few layers of each tests/fixtures/lora file).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ldm/backend/ops.h"
#include "ldm/core/error.h"
#include "ldm/io/tensorfile.h"
#include "ldm/lora.h"
#include "ldm/pipeline.h"

static ldm_pipeline model;
static ldm_tensor *probe[4];
static ldm_tensor probe_as_loaded[4];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    ldm_pipeline_options po = {.ops = &ldm_ops_cpu, .prediction = LDM_PRED_EPS};
    if (ldm_pipeline_open(&model, LDM_TINY_MODEL_DEFAULT, &po) != 0) {
        fprintf(stderr, "fuzz_lora: %s (run from the repository root)\n", ldm_last_error());
        exit(1);
    }
    probe[0] = &model.unet.blocks[0].conv_w;
    probe[1] = &model.clip.layers[0].q_w;
    probe[2] = &model.unet.time_w1;
    probe[3] = &model.clip.layers[model.clip.n_layers - 1].fc2_w;
    for (int i = 0; i < 4; i++) probe_as_loaded[i] = *probe[i];
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    ldm_tensor_file f;
    ldm_clear_error();
    int zip = size >= 4 && memcmp(buf, "PK\x03\x04", 4) == 0;
    int rc = zip ? ldm_ckpt_parse(&f, buf, size, "fuzz.ckpt")
                 : ldm_safetensors_parse(&f, buf, size, "fuzz.safetensors");
    if (rc == 0) {
        ldm_lora_set s = {0};
        ldm_clear_error();
        if (ldm_lora_apply_file(&s, &model.unet, &model.clip, &f, 0.75f) == 0) {
            if (s.n_files != 1 || s.n_layers < 1) abort();   // accepted: something merged
        } else if (ldm_last_error()[0] == '\0') {
            abort();   // a rejection must say why
        }
        ldm_lora_restore(&s);
        for (int i = 0; i < 4; i++)
            if (probe[i]->data != probe_as_loaded[i].data || probe[i]->dtype != probe_as_loaded[i].dtype)
                abort();   // the weights as loaded are back
        ldm_tensor_file_close(&f);
    } else if (ldm_last_error()[0] == '\0') {
        abort();
    }
    ldm_clear_error();
    free(buf);
    return 0;
}
