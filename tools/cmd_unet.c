/*
 * tools/cmd_unet.c -- `sd unet`: one UNet evaluation from .npy inputs, the
 * block table, or a timing of one evaluation.
 *
 *   sd unet --model M --latent x.npy --t 981[,17.5] --context c.npy --out eps.npy
 *   sd unet --model M --table                 the block table (ldm/unet.h)
 *   sd unet --random sd1 --size 64x64 --batch 2 --time    time one evaluation
 *
 * M is a diffusers model folder (M/unet/config.json or M/config.json, with
 * diffusion_pytorch_model.safetensors or .bin next to it) or a CompVis single
 * file (.safetensors / .ckpt: SD1 or SD2 preset chosen from the context width
 * of its first cross-attention). Used by tools/reference/test_reference_unet.py
 * to compare against diffusers at full size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <omp.h>
#include "ldm/io/dump.h"
#include "ldm/io/fs.h"
#include "ldm/core/error.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"
#include "ldm/unet.h"
#include "ldm/io/weights.h"
#include "tools/cmd.h"

static void unet_usage(FILE *f) {
    fprintf(f,
            "usage: sd unet (--model M | --random sd1|sd2) [flags]\n\n"
            "Run the UNet eps = UNet(x, t, context) once.\n\n"
            "  --model M          diffusers folder (M/unet or M itself with config.json) or a\n"
            "                     CompVis single file (.safetensors/.ckpt)\n"
            "  --random sd1|sd2   full-size preset with random weights (no file; for timing)\n"
            "  --latent x.npy     latent [B,4,h,w]          (or --size HxW --batch B: zeros+noise)\n"
            "  --t T[,T...]       timestep(s): one, or one per batch element; fractional allowed\n"
            "  --context c.npy    text context [B,77,D]     (random if absent)\n"
            "  --out eps.npy      write the output [B,4,h,w]\n"
            "  --overwrite        replace eps.npy if it exists (synonym --force)\n"
            "  --dump DIR         write every block's output as DIR/unet.<module>.npy\n"
            "  --table            print the block table (after the run: with GFLOP per block)\n"
            "  --time             print seconds, GFLOP, GFLOPS and peak memory of the run\n"
            "  --threads N        cpu backend threads (default: all cores)\n"
            "  --backend B        ref | cpu | cuda | cuda-emu (default $LDM_BACKEND or cpu)\n");
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *s = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && n < (1 << 24) && fseek(f, 0, SEEK_SET) == 0 && (s = malloc((size_t)n + 1))) {
            if (fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
            else s[n] = 0;
        }
    }
    fclose(f);
    return s;
}

// Open M as a diffusers folder or a CompVis file: config + weights. 0 / LDM_ERR.
static int open_model(const char *m, ldm_unet_config *cfg, ldm_tensor_file *f, ldm_weights *w,
                      const struct ldm_ops *ops) {
    char dir[4096], path[4200];
    memset(w, 0, sizeof *w);
    w->comp = LDM_COMP_UNET;
    w->ops = ops;
    w->prefix = "";
    w->file = f;
    if (ldm_is_dir(m)) {
        snprintf(dir, sizeof dir, "%s/unet", m);
        if (!ldm_is_dir(dir)) snprintf(dir, sizeof dir, "%s", m);
        snprintf(path, sizeof path, "%s/config.json", dir);
        char *json = slurp(path);
        if (!json) return ldm_error("%s: cannot read (expected a diffusers UNet folder)", path);
        int rc = ldm_unet_config_from_json(cfg, json, path);
        free(json);
        if (rc) return rc;
        snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
        if (!ldm_is_file(path)) snprintf(path, sizeof path, "%s/diffusion_pytorch_model.bin", dir);
        w->layout = LDM_LAYOUT_DIFFUSERS;
        return ldm_tensor_file_open(f, path);
    }
    if (ldm_tensor_file_open(f, m)) return LDM_ERR;
    const char *probe = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
    const ldm_tensor_entry *e = ldm_tensor_file_find(f, probe);
    if (!e || e->ndim != 2) {
        ldm_tensor_file_close(f);
        return ldm_error("%s: no tensor %s -- not a CompVis SD1/SD2 checkpoint", m, probe);
    }
    const char *preset = e->shape[1] == 768 ? "sd1" : e->shape[1] == 1024 ? "sd2" : NULL;
    if (!preset) {
        ldm_tensor_file_close(f);
        return ldm_error("%s: context width %lld, expected 768 (SD1) or 1024 (SD2)", m,
                         (long long)e->shape[1]);
    }
    w->layout = LDM_LAYOUT_COMPVIS;
    return ldm_unet_config_preset(cfg, preset);
}

// Deterministic N(0,1)-ish fill (sum of uniforms) for inputs not given.
static void fill_noise(float *p, int64_t n, uint64_t seed) {
    for (int64_t i = 0; i < n; i++) {
        double s = 0;
        for (int k = 0; k < 4; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            s += (double)(seed >> 11) / 9007199254740992.0;
        }
        p[i] = (float)((s - 2.0) * 1.7320508);
    }
}

static int host_tensor(ldm_tensor *t, const struct ldm_ops *ops, const int64_t *shape, int nd,
                       uint64_t seed) {
    *t = ldm_tensor_new(ops, shape, nd);
    float *h = t->data ? malloc((size_t)t->numel * sizeof(float)) : NULL;
    if (!h) return ldm_error("out of memory");
    fill_noise(h, t->numel, seed);
    ldm_tensor_from_host(t, h);
    free(h);
    return 0;
}

int cmd_unet(int argc, char **argv, const sd_env *defaults) {
    sd_env env = *defaults;
    const char *model = NULL, *random = NULL, *latent = NULL, *tlist = NULL, *context = NULL;
    const char *outp = NULL, *dump = NULL;
    int table = 0, timing = 0, threads = 0, batch = 1, overwrite = 0;
    long sh = 64, sw = 64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { unet_usage(stdout); return 0; }
        int c = sd_common_flag(argc, argv, &i, &env);
        if (c < 0) return 2;
        if (c > 0) continue;
        if (!strcmp(a, "--table")) { table = 1; continue; }
        if (!strcmp(a, "--time")) { timing = 1; continue; }
        if (sd_is_overwrite_flag(a)) { overwrite = 1; continue; }
        if (i + 1 >= argc) { sd_fail("unet: %s needs a value (sd unet --help)", a); return 2; }
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--random")) random = v;
        else if (!strcmp(a, "--latent")) latent = v;
        else if (!strcmp(a, "--t")) tlist = v;
        else if (!strcmp(a, "--context")) context = v;
        else if (!strcmp(a, "--out")) outp = v;
        else if (!strcmp(a, "--dump")) dump = v;
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--batch")) batch = atoi(v);
        else if (!strcmp(a, "--size")) {
            if (sscanf(v, "%ldx%ld", &sh, &sw) != 2 || sh < 1 || sw < 1 || sh > 4096 || sw > 4096) {
                sd_fail("unet: --size wants HxW latent sides, e.g. 64x64, got '%s'", v);
                return 2;
            }
        } else { sd_fail("unet: unknown flag '%s' (sd unet --help)", a); return 2; }
    }
    if (!!model == !!random) { unet_usage(stderr); return 2; }
    if (random && strcmp(random, "sd1") && strcmp(random, "sd2"))
        return sd_fail("unet: --random '%s': expected sd1 or sd2", random), 2;
    if (batch < 1 || batch > 64) { sd_fail("unet: --batch must be 1..64"); return 2; }
    const char *inputs[] = {model, latent, context};
    if (outp && sd_check_output(outp, overwrite, inputs, 3)) return 1;
    const struct ldm_ops *ops = sd_backend(&env);
    if (!ops) return sd_fail("%s", ldm_last_error());
    if (ops->set_threads && threads > 0) ops->set_threads(threads);
    if (dump) ldm_dump_set_dir(dump);

    ldm_unet_config cfg;
    ldm_unet u;
    ldm_tensor_file f = {0};
    ldm_weights w;
    int have_file = 0, rc = 1;
    if (model) {
        if (open_model(model, &cfg, &f, &w, ops)) return sd_fail("%s", ldm_last_error());
        have_file = 1;
        if (ldm_unet_load(&u, &cfg, &w)) {
            ldm_tensor_file_close(&f);
            return sd_fail("%s", ldm_last_error());
        }
    } else {
        if (ldm_unet_config_preset(&cfg, random) || ldm_unet_init_random(&u, &cfg, ops))
            return sd_fail("%s", ldm_last_error());
    }
    if (table && !latent && !timing && !outp) {   // table only
        ldm_unet_print_table(&u, stdout);
        printf("%lld parameters\n", (long long)u.n_params);
        rc = 0;
        goto done_model;
    }

    ldm_tensor x = {0}, ctx = {0}, out = {0};
    float *t = NULL;
    if (latent) {
        if (ldm_npy_read(&x, ops, latent)) { sd_fail("%s", ldm_last_error()); goto done; }
    } else if (host_tensor(&x, ops, LDM_SHAPE(batch, cfg.in_channels, sh, sw), 1)) {
        sd_fail("%s", ldm_last_error()); goto done;
    }
    if (x.ndim != 4) { sd_fail("unet: latent must be [B,C,h,w]"); goto done; }
    int64_t B = x.shape[0];
    if (context) {
        if (ldm_npy_read(&ctx, ops, context)) { sd_fail("%s", ldm_last_error()); goto done; }
    } else if (host_tensor(&ctx, ops, LDM_SHAPE(B, 77, cfg.cross_attention_dim), 2)) {
        sd_fail("%s", ldm_last_error()); goto done;
    }
    t = malloc((size_t)B * sizeof(float));
    if (!t) { sd_fail("out of memory"); goto done; }
    {
        const char *p = tlist ? tlist : "981";
        int n = 0;
        while (*p && n < B) {
            char *e;
            t[n++] = strtof(p, &e);
            if (e == p) { sd_fail("unet: --t wants numbers separated by commas, got '%s'", tlist); goto done; }
            p = *e == ',' ? e + 1 : e;
        }
        if (*p) { sd_fail("unet: more timesteps than the batch of %lld", (long long)B); goto done; }
        if (n == 1) for (int i = 1; i < B; i++) t[i] = t[0];
        else if (n != B) { sd_fail("unet: %d timesteps for a batch of %lld", n, (long long)B); goto done; }
    }
    out = ldm_tensor_new(ops, LDM_SHAPE(B, cfg.out_channels, x.shape[2], x.shape[3]));
    if (!out.data) { sd_fail("%s", ldm_last_error()); goto done; }
    double t0 = omp_get_wtime();
    if (ldm_unet_forward(&out, &u, &x, t, &ctx)) { sd_fail("%s", ldm_last_error()); goto done; }
    double secs = omp_get_wtime() - t0;
    if (outp && ldm_npy_write_tensor(outp, &out)) { sd_fail("%s", ldm_last_error()); goto done; }
    if (table) ldm_unet_print_table(&u, stdout);
    if (timing) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("unet [%s] batch %lld latent %lldx%lld: %.2f s, %.1f GFLOP, %.1f GFLOPS, "
               "activations peak %.0f MB, weights %.0f MB, process peak RSS %.0f MB\n",
               ops->name, (long long)B, (long long)x.shape[2], (long long)x.shape[3], secs,
               u.flops / 1e9, u.flops / secs / 1e9, u.arena.peak / 1e6,
               u.n_params * 4.0 / 1e6, ru.ru_maxrss / 1024.0);
    }
    rc = 0;
done:
    ldm_tensor_free(&x); ldm_tensor_free(&ctx); ldm_tensor_free(&out);
    free(t);
done_model:
    ldm_unet_free(&u);
    if (have_file) ldm_tensor_file_close(&f);
    return rc;
}
