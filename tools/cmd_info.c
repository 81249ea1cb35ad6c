/*
 * tools/cmd_info.c -- `sd info FILE`: what is inside a checkpoint file.
 *
 *   sd info FILE                              one line per tensor: name  dtype  [shape],
 *                                             then the metadata and a count line
 *   sd info FILE --tensor NAME                that tensor's line and min/max/mean
 *   sd info FILE --tensor NAME --npy OUT.npy  that tensor as float32 .npy
 *   sd info DIR                               a diffusers folder: the model summary
 * After the listing, the detected model (family, prediction type, parameters
 * per component: tools/info_model.c) when FILE is a Stable Diffusion checkpoint.
 *
 * The format is found by magic bytes (ldm/io/tensorfile.c). A bad file gives
 * one line "sd: FILE: <what is wrong>" on stderr and exit status 1. The .npy
 * is written to a temporary file and renamed (never a partial file), and an
 * existing OUT.npy is not replaced unless --overwrite (or --force) is given.
 */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ldm/core/error.h"
#include "ldm/io/fs.h"
#include "ldm/io/npy.h"
#include "ldm/io/tensorfile.h"
#include "tools/cmd.h"

static void info_usage(FILE *f) {
    fprintf(f,
            "usage: sd info FILE|DIR [--tensor NAME [--npy OUT.npy [--overwrite]]]\n\n"
            "List the tensors (name, dtype, shape) and metadata of a checkpoint file,\n"
            "then the detected model (family, prediction type, parameters per component);\n"
            "for a diffusers model folder DIR, only the model summary.\n"
            "The format is detected from the file's first bytes: safetensors, or a torch\n"
            "zip (.ckpt/.bin, read without executing its pickle).\n\n"
            "  --tensor NAME   show only tensor NAME, with min/max/mean of its values\n"
            "  --npy OUT.npy   write tensor NAME as a float32 .npy (F16/BF16 widened exactly)\n"
            "  --overwrite     replace OUT.npy if it exists (refused otherwise; synonym --force)\n"
            "  --help          this text\n\n"
            "Exit status 0 on success, 1 on a bad file or a failed write, 2 on bad flags.\n");
}

// Print s with control characters escaped, so one metadata entry stays one line.
static void print_escaped(const char *s, size_t max) {
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++) {
        if (n == max) { fputs("...", stdout); break; }
        if (*p == '\n') fputs("\\n", stdout);
        else if (*p == '\t') fputs("\\t", stdout);
        else if (*p < 0x20 || *p == 0x7f) printf("\\x%02x", *p);
        else putchar(*p);
    }
}

static void print_entry(const ldm_tensor_entry *e) {
    char s[200];
    print_escaped(e->name, 4096);
    printf("  %s  %s\n", ldm_dtype_name(e->dtype), ldm_shape_str(s, sizeof s, e->shape, e->ndim));
}

int cmd_info(int argc, char **argv, const sd_env *defaults) {
    sd_env env = *defaults;
    const char *file = NULL, *tensor = NULL, *npy = NULL;
    int force = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { info_usage(stdout); return 0; }
        int c = sd_common_flag(argc, argv, &i, &env);
        if (c < 0) return 2;
        if (c > 0) continue;
        if (!strcmp(a, "--tensor") || !strcmp(a, "--npy")) {
            if (i + 1 >= argc) { sd_fail("%s needs a value", a); return 2; }
            if (!strcmp(a, "--tensor")) tensor = argv[++i];
            else npy = argv[++i];
        } else if (sd_is_overwrite_flag(a)) {
            force = 1;
        } else if (a[0] == '-' && a[1]) {
            sd_fail("info: unknown flag '%s' (sd info --help)", a);
            return 2;
        } else if (!file) {
            file = a;
        } else {
            sd_fail("info: more than one FILE ('%s' and '%s')", file, a);
            return 2;
        }
    }
    if (!file) { info_usage(stderr); return 2; }
    if (ldm_is_dir(file)) return sd_info_model(file, 1);  // a diffusers folder
    if (npy && !tensor) { sd_fail("info: --npy needs --tensor NAME"); return 2; }
    const char *inputs[] = {file};
    if (npy && sd_check_output(npy, force, inputs, 1)) return 1;

    ldm_tensor_file f;
    if (ldm_tensor_file_open(&f, file) != 0) return sd_fail("%s", ldm_last_error());

    if (tensor) {
        const ldm_tensor_entry *e = ldm_tensor_file_find(&f, tensor);
        if (!e) {
            sd_fail("%s: no tensor named '%s' (%lld tensors; `sd info %s` lists them)", file,
                    tensor, (long long)f.n_entries, file);
            ldm_tensor_file_close(&f);
            return 1;
        }
        float *v = malloc((size_t)(e->numel ? e->numel : 1) * sizeof(float));
        if (!v || ldm_entry_to_f32(v, e) != 0) {
            if (!v) sd_fail("%s: out of memory for tensor '%s'", file, tensor);
            else sd_fail("%s: %s", file, ldm_last_error());
            free(v);
            ldm_tensor_file_close(&f);
            return 1;
        }
        int rc = 0;
        if (npy) {
            if (ldm_npy_write(npy, v, e->shape, e->ndim) != 0) rc = sd_fail("%s", ldm_last_error());
            else printf("wrote %s (float32, %lld values)\n", npy, (long long)e->numel);
        } else {
            print_entry(e);
            double mn = e->numel ? v[0] : 0, mx = mn, sum = 0;
            for (int64_t i = 0; i < e->numel; i++) {
                if (v[i] < mn) mn = v[i];
                if (v[i] > mx) mx = v[i];
                sum += v[i];
            }
            printf("  min %.6g  max %.6g  mean %.6g\n", mn, mx, e->numel ? sum / e->numel : 0.0);
        }
        free(v);
        ldm_tensor_file_close(&f);
        return rc;
    }

    int64_t total = 0;
    for (int64_t i = 0; i < f.n_entries; i++) {
        print_entry(&f.entries[i]);
        total += f.entries[i].numel;
    }
    for (int i = 0; i < f.n_meta; i++) {
        printf("metadata  ");
        print_escaped(f.meta_keys[i], 256);
        printf(" = ");
        print_escaped(f.meta_values[i], 400);
        printf("\n");
    }
    printf("%s: %s, %lld tensors, %lld values, %d metadata entries\n", file, f.format,
           (long long)f.n_entries, (long long)total, f.n_meta);
    ldm_tensor_file_close(&f);
    return sd_info_model(file, 0);  // detected model summary (tools/info_model.c)
}
