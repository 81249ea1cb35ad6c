/*
 * tests/test_vae.c -- ldm/vae.c against diffusers' AutoencoderKL.
 *
 * Fixtures (tools/reference/fixtures_vae.py, tests/fixtures/vae/): two tiny
 * random AutoencoderKL models in diffusers layout -- tiny2 (2 levels, fp32
 * weights, batch 2) and tiny3 (3 levels, fp16 weights, scaling_factor 0.5,
 * non-square image) -- with diffusers' encoder moments, posterior mean and
 * sample, and decoder output. On the `ref` and `cpu` backends:
 *   encoder moments, latent mean, latent sample, decode     rel. max err <= 1e-4
 *   (the project's tolerance for a block, docs/00-overview.md; whole tiny
 *   models are a few blocks deep)
 *   tiled decode / encode vs the same tile plan and blend run with diffusers'
 *   decoder per tile (fixtures' run_tiled)                   <= 1e-4
 *   tiled vs untiled (reported; GroupNorm statistics and the mid attention
 *   are per tile, so they differ by design)                  mean |d| <= 0.15 * max|ref|
 *   pixel conversions vs numpy/torch (round and truncate)    exact
 * plus rejection of bad configs, missing tensors and non-finite pixels.
 */
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <unistd.h>
#include <string.h>
#include "ldm/core/error.h"
#include "ldm/io/dump.h"
#include "ldm/io/npy.h"
#include "ldm/backend/ops.h"
#include "ldm/io/tensorfile.h"
#include "ldm/vae.h"
#include "ldm/io/weights.h"
#include "tests/test.h"

#define FIX "tests/fixtures/vae/"

// A loaded fixture model (through ldm_vae_file_open: a diffusers vae folder).
typedef struct fixture {
    ldm_vae_file src;
    ldm_vae vae;
} fixture;

static int fixture_open(fixture *fx, const char *dir, const struct ldm_ops *ops) {
    char path[512];
    memset(fx, 0, sizeof *fx);
    snprintf(path, sizeof path, FIX "%s", dir);
    if (ldm_vae_file_open(&fx->src, path, ops)) return LDM_ERR;
    return ldm_vae_load(&fx->vae, &fx->src.cfg, &fx->src.w, LDM_VAE_ENCODER | LDM_VAE_DECODER);
}

static void fixture_close(fixture *fx) {
    ldm_vae_free(&fx->vae);
    ldm_vae_file_close(&fx->src);
}

static ldm_tensor load_npy(const struct ldm_ops *ops, const char *dir, const char *name) {
    char path[512];
    ldm_tensor t = {0};
    snprintf(path, sizeof path, FIX "%s/%s", dir, name);
    if (ldm_npy_read(&t, ops, path)) printf("  cannot read %s: %s\n", path, ldm_last_error());
    return t;
}

// Compare tensor got (any backend) with the .npy `name` in dir.
static void check(const char *label, const ldm_tensor *got, const char *dir, const char *name,
                  double rtol) {
    ldm_tensor exp = load_npy(&ldm_ops_ref, dir, name);
    if (!exp.data || !got->data || exp.numel != got->numel) {
        test_check(0, label, "missing output or size mismatch (%lld vs %lld)",
                   (long long)got->numel, (long long)exp.numel);
        ldm_tensor_free(&exp);
        return;
    }
    float *g = malloc((size_t)got->numel * sizeof(float));
    ldm_tensor_to_host(g, got);
    test_close(label, g, exp.data, exp.numel, rtol, 0);
    free(g);
    ldm_tensor_free(&exp);
}

static void test_model(const char *dir, const struct ldm_ops *ops) {
    char label[128];
    fixture fx;
    printf("-- %s on %s\n", dir, ops->name);
    if (fixture_open(&fx, dir, ops)) {
        test_check(0, dir, "%s", ldm_last_error());
        fixture_close(&fx);
        return;
    }
    ldm_tensor x = load_npy(ops, dir, "x.npy"), z = load_npy(ops, dir, "latent_in.npy");
    ldm_tensor noise = load_npy(ops, dir, "noise.npy"), out = {0};
    ldm_vae_options opt = {.tiling = LDM_VAE_TILE_OFF};

    // 1e-4: a few blocks of fp32 convolutions summed in a different order.
    snprintf(label, sizeof label, "%s/%s encoder moments", dir, ops->name);
    if (ldm_vae_encoder_forward(&out, &fx.vae, &x) == 0) check(label, &out, dir, "moments.npy", 1e-4);
    else test_check(0, label, "%s", ldm_last_error());
    ldm_tensor_free(&out);

    // Exercise (docs/04-vae.md): the KL term, from diffusers' moments.
    snprintf(label, sizeof label, "%s/%s posterior KL (exercise)", dir, ops->name);
    ldm_tensor m = load_npy(&ldm_ops_ref, dir, "moments.npy"), klr = load_npy(&ldm_ops_ref, dir, "kl.npy");
    if (m.data && klr.data) {
        float kl[8];
        int64_t B = m.shape[0], Z = m.shape[1] / 2, S = m.shape[2] * m.shape[3];
        ldm_vae_kl(kl, m.data, B, Z, S);
        test_close(label, kl, klr.data, B, 1e-5, 0);   // a sum of B*Z*S terms in double
    } else {
        test_check(0, label, "%s", "missing moments.npy / kl.npy");
    }
    ldm_tensor_free(&m);
    ldm_tensor_free(&klr);

    snprintf(label, sizeof label, "%s/%s encode mean * scale", dir, ops->name);
    if (ldm_vae_encode(&out, &fx.vae, &x, NULL, &opt) == 0) check(label, &out, dir, "latent_mean.npy", 1e-4);
    else test_check(0, label, "%s", ldm_last_error());
    ldm_tensor_free(&out);

    snprintf(label, sizeof label, "%s/%s encode sample * scale", dir, ops->name);
    if (ldm_vae_encode(&out, &fx.vae, &x, &noise, &opt) == 0) check(label, &out, dir, "latent_sample.npy", 1e-4);
    else test_check(0, label, "%s", ldm_last_error());
    ldm_tensor_free(&out);

    snprintf(label, sizeof label, "%s/%s decode", dir, ops->name);
    if (ldm_vae_decode(&out, &fx.vae, &z, &opt) == 0) check(label, &out, dir, "decoded.npy", 1e-4);
    else test_check(0, label, "%s", ldm_last_error());
    ldm_tensor_free(&out);

    ldm_tensor_free(&x);
    ldm_tensor_free(&z);
    ldm_tensor_free(&noise);
    fixture_close(&fx);
}

// Mean |a-b| relative to max|b| (tiled vs untiled: a smooth, not exact, match).
static double mean_rel(const ldm_tensor *a, const ldm_tensor *b) {
    float *ha = malloc((size_t)a->numel * sizeof(float)), *hb = malloc((size_t)b->numel * sizeof(float));
    ldm_tensor_to_host(ha, a);
    ldm_tensor_to_host(hb, b);
    double s = 0, m = 0;
    for (int64_t i = 0; i < a->numel; i++) {
        s += fabs((double)ha[i] - hb[i]);
        if (fabs(hb[i]) > m) m = fabs(hb[i]);
    }
    free(ha), free(hb);
    return s / (double)a->numel / (m > 0 ? m : 1);
}

static void test_tiled(const struct ldm_ops *ops) {
    const char *dir = "tiny2/tiled";
    fixture fx;
    char label[128];
    printf("-- tiling (tiny2) on %s\n", ops->name);
    if (fixture_open(&fx, "tiny2", ops)) {
        test_check(0, "tiny2 tiled", "%s", ldm_last_error());
        fixture_close(&fx);
        return;
    }
    ldm_tensor z = load_npy(ops, dir, "latent_in.npy"), x = load_npy(ops, dir, "x.npy");
    ldm_tensor out = {0}, ref = {0};
    // plan.json: tile 8, overlap 2 latent pixels (fixtures_vae.py)
    ldm_vae_options on = {.tiling = LDM_VAE_TILE_ON, .tile_latent = 8, .overlap_latent = 2};
    ldm_vae_options off = {.tiling = LDM_VAE_TILE_OFF};
    // AUTO with a budget below the untiled estimate must choose the same tiles.
    ldm_vae_options autob = {.tiling = LDM_VAE_TILE_AUTO, .budget_mb = 1, .tile_latent = 8,
                             .overlap_latent = 2};
    int64_t est = ldm_vae_decode_bytes(&fx.vae.cfg, 1, z.shape[2], z.shape[3]);
    test_check(est > 0 && ldm_vae_decode_bytes(&fx.vae.cfg, 1, 128, 128) > est, "estimate grows",
               "%lld", (long long)est);

    snprintf(label, sizeof label, "tiled decode vs diffusers tiles (%s)", ops->name);
    if (ldm_vae_decode(&out, &fx.vae, &z, &on) == 0) check(label, &out, dir, "decoded_tiled.npy", 1e-4);
    else test_check(0, label, "%s", ldm_last_error());
    ldm_tensor_free(&out);

    snprintf(label, sizeof label, "auto-tiled decode, 1 MiB budget (%s)", ops->name);
    if (ldm_vae_decode(&out, &fx.vae, &z, &autob) == 0) check(label, &out, dir, "decoded_tiled.npy", 1e-4);
    else test_check(0, label, "%s", ldm_last_error());
    // tiled vs untiled: per-tile GroupNorm statistics, attention and zero
    // padding at tile borders make them differ by design, and 8-pixel tiles on
    // a 2-level random model are the worst case. Bound: mean |d| <= 15% of
    // max|ref| (measured 0.039 decode, 0.064 encode). The exact check of the
    // tiling arithmetic is the comparison with diffusers' tiles above.
    if (ldm_vae_decode(&ref, &fx.vae, &z, &off) == 0 && out.data) {
        check("untiled decode (larger latent)", &ref, dir, "decoded_untiled.npy", 1e-4);
        double e = mean_rel(&out, &ref);
        test_check(e <= 0.15, "tiled vs untiled decode (mean |d| / max|ref| <= 0.15)", "%.4f", e);
        printf("          tiled vs untiled decode: mean |d| / max |ref| = %.4f\n", e);
    }
    ldm_tensor_free(&out);
    ldm_tensor_free(&ref);

    snprintf(label, sizeof label, "tiled encode vs diffusers tiles (%s)", ops->name);
    if (ldm_vae_encode(&out, &fx.vae, &x, NULL, &on) == 0) check(label, &out, dir, "latent_mean_tiled.npy", 1e-4);
    else test_check(0, label, "%s", ldm_last_error());
    if (ldm_vae_encode(&ref, &fx.vae, &x, NULL, &off) == 0 && out.data) {
        check("untiled encode (larger image)", &ref, dir, "latent_mean_untiled.npy", 1e-4);
        double e = mean_rel(&out, &ref);
        test_check(e <= 0.15, "tiled vs untiled encode (mean |d| / max|ref| <= 0.15)", "%.4f", e);
        printf("          tiled vs untiled encode: mean |d| / max |ref| = %.4f\n", e);
    }
    ldm_tensor_free(&out);
    ldm_tensor_free(&ref);
    ldm_tensor_free(&z);
    ldm_tensor_free(&x);
    fixture_close(&fx);
}

// Every block's output, dumped (ldm_dump_set_dir) under diffusers module names,
// against the forward-hook dumps of fixtures_vae.py (tiny2/dump/): the names
// line up and each block matches, so a future divergence is located at once.
static void test_dumps(void) {
    const char *names[] = {
        "vae.encoder.conv_in", "vae.encoder.down_blocks.0.resnets.0",
        "vae.encoder.down_blocks.0.downsamplers.0", "vae.encoder.down_blocks.1",
        "vae.encoder.mid_block.resnets.0", "vae.encoder.mid_block.attentions.0",
        "vae.encoder.mid_block", "vae.encoder", "vae.quant_conv", "vae.post_quant_conv",
        "vae.decoder.conv_in", "vae.decoder.mid_block.attentions.0", "vae.decoder.mid_block",
        "vae.decoder.up_blocks.0.resnets.1", "vae.decoder.up_blocks.0.upsamplers.0",
        "vae.decoder.up_blocks.1.resnets.0", "vae.decoder.up_blocks.1", "vae.decoder",
    };
    printf("-- per-block dumps (tiny2, cpu)\n");
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "%s/ldm_test_vae_XXXXXX", P_tmpdir);
    fixture fx;
    if (!mkdtemp(tmpl) || fixture_open(&fx, "tiny2", &ldm_ops_cpu)) {
        test_check(0, "dumps", "%s", ldm_last_error());
        return;
    }
    ldm_tensor x = load_npy(&ldm_ops_cpu, "tiny2", "x.npy"), z = load_npy(&ldm_ops_cpu, "tiny2", "latent_in.npy");
    ldm_tensor x1 = ldm_tensor_slice0(&x, 0, 1), z1 = ldm_tensor_slice0(&z, 0, 1), out = {0};
    ldm_vae_options off = {.tiling = LDM_VAE_TILE_OFF};
    ldm_dump_set_dir(tmpl);
    ldm_vae_encode(&out, &fx.vae, &x1, NULL, &off);
    ldm_tensor_free(&out);
    ldm_vae_decode(&out, &fx.vae, &z1, &off);
    ldm_tensor_free(&out);
    ldm_dump_set_dir(NULL);
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char path[512], label[160];
        snprintf(path, sizeof path, "%s/%s.npy", tmpl, names[i]);
        snprintf(label, sizeof label, "dump %s", names[i]);
        ldm_tensor got = {0}, exp = {0};
        char rel[256];
        snprintf(rel, sizeof rel, "dump/%s.npy", names[i]);
        exp = load_npy(&ldm_ops_ref, "tiny2", rel);
        if (ldm_npy_read(&got, &ldm_ops_ref, path) || !exp.data || got.numel != exp.numel)
            test_check(0, label, "missing or wrong size (%s)", path);
        else
            test_close(label, got.data, exp.data, exp.numel, 1e-4, 0);
        ldm_tensor_free(&got);
        ldm_tensor_free(&exp);
        remove(path);
    }
    // the remaining files of the run (a flat folder), then the folder
    DIR *d = opendir(tmpl);
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[600];
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", tmpl, e->d_name);
        remove(path);
    }
    if (d) closedir(d);
    rmdir(tmpl);
    ldm_tensor_free(&x);
    ldm_tensor_free(&z);
    fixture_close(&fx);
}

static void test_pixels(void) {
    printf("-- pixel conversions\n");
    const char *dir = "pixels";
    ldm_tensor u = load_npy(&ldm_ops_ref, dir, "unit.npy");
    ldm_tensor r = load_npy(&ldm_ops_ref, dir, "rgb_round.npy");
    ldm_tensor t = load_npy(&ldm_ops_ref, dir, "rgb_trunc.npy");
    ldm_tensor pin = load_npy(&ldm_ops_ref, dir, "rgb_in.npy");
    ldm_tensor uin = load_npy(&ldm_ops_ref, dir, "unit_in.npy");
    if (!u.data || !r.data || !t.data || !pin.data || !uin.data) {
        test_check(0, "pixel fixtures", "missing");
        return;
    }
    const int64_t H = u.shape[1], W = u.shape[2], n = 3 * H * W;
    uint8_t *rgb = malloc((size_t)n);
    float *f = malloc((size_t)n * sizeof(float));
    test_check(ldm_unit_to_pixels(rgb, u.data, H, W, 0) == 0, "round: all finite", "%s", "failed");
    for (int64_t i = 0; i < n; i++) f[i] = rgb[i];
    test_close("[-1,1] -> uint8, diffusers round", f, r.data, n, 0, 0);
    ldm_unit_to_pixels(rgb, u.data, H, W, 1);
    for (int64_t i = 0; i < n; i++) f[i] = rgb[i];
    test_close("[-1,1] -> uint8, CompVis truncation", f, t.data, n, 0, 0);
    for (int64_t i = 0; i < n; i++) rgb[i] = (uint8_t)pin.data[i];
    ldm_pixels_to_unit(f, rgb, H, W);
    test_close("uint8 -> [-1,1]", f, uin.data, n, 0, 0);
    // non-finite values are counted, never silently written
    u.data[5] = NAN;
    u.data[7] = INFINITY;
    test_check(ldm_unit_to_pixels(rgb, u.data, H, W, 0) == 2, "NaN/Inf counted", "%s", "failed");
    free(rgb), free(f);
    ldm_tensor_free(&u), ldm_tensor_free(&r), ldm_tensor_free(&t);
    ldm_tensor_free(&pin), ldm_tensor_free(&uin);
}

static void test_errors(void) {
    printf("-- errors\n");
    // A broken weight (as an overflowed fp16 VAE has) gives NaN pixels, which
    // the conversion counts (the CLI then refuses to write the PNG).
    fixture fx;
    if (fixture_open(&fx, "tiny2", &ldm_ops_cpu) == 0) {
        float b[3];
        ldm_tensor_to_host(b, &fx.vae.dec.conv_out_b);
        b[1] = INFINITY;
        ldm_tensor_from_host(&fx.vae.dec.conv_out_b, b);
        ldm_tensor z = load_npy(&ldm_ops_cpu, "tiny2", "latent_in.npy"), img = {0};
        ldm_vae_options off = {.tiling = LDM_VAE_TILE_OFF};
        if (z.data && ldm_vae_decode(&img, &fx.vae, &z, &off) == 0) {
            int64_t H = img.shape[2], W = img.shape[3];
            float *x = malloc((size_t)img.numel * sizeof(float));
            uint8_t *rgb = malloc((size_t)(3 * H * W));
            ldm_tensor_to_host(x, &img);
            int64_t bad = ldm_unit_to_pixels(rgb, x, H, W, 0);
            test_check(bad == H * W, "Inf weight -> every green pixel non-finite, counted",
                       "%lld of %lld", (long long)bad, (long long)(H * W));
            free(x), free(rgb);
        } else {
            test_check(0, "decode with an Inf weight", "%s", ldm_last_error());
        }
        ldm_tensor_free(&z), ldm_tensor_free(&img);
    }
    fixture_close(&fx);
    ldm_vae_config c;
    test_check(ldm_vae_config_parse(&c, "{\"block_out_channels\":[30,64],\"norm_num_groups\":32}",
                                        "bad.json") == LDM_ERR, "groups must divide channels", "%s", "failed");
    printf("          message: %s\n", ldm_last_error());
    test_check(ldm_vae_config_parse(&c, "[1,2]", "bad.json") == LDM_ERR, "config not an object", "%s", "failed");
    ldm_vae_config_sd(&c);
    c.layers_per_block = LDM_VAE_MAX_LAYERS;   // decoder would need LDM_VAE_MAX_LAYERS + 1
    test_check(ldm_vae_config_check(&c) == LDM_ERR, "too many layers refused", "%s", "failed");
    ldm_vae_config_sd(&c);
    test_check(ldm_vae_config_check(&c) == LDM_OK, "SD preset accepted", "%s", ldm_last_error());
    test_check(ldm_vae_config_parse(&c, "{\"block_out_channels\":[]}", "bad.json") == LDM_ERR,
               "empty block_out_channels refused", "%s", "failed");
    // A model whose config asks for more channels than the file holds.
    ldm_tensor_file f;
    if (ldm_tensor_file_open(&f, FIX "tiny2/diffusion_pytorch_model.safetensors") == 0) {
        ldm_vae_config_parse(&c, "{\"block_out_channels\":[16,64],\"norm_num_groups\":8}", "x");
        ldm_weights w = {.file = &f, .comp = LDM_COMP_VAE, .layout = LDM_LAYOUT_DIFFUSERS,
                         .prefix = "", .ops = &ldm_ops_ref};
        ldm_vae v;
        test_check(ldm_vae_load(&v, &c, &w, LDM_VAE_DECODER) == LDM_ERR, "wrong shape refused", "%s", "failed");
        printf("          message: %s\n", ldm_last_error());
        ldm_tensor_file_close(&f);
    } else {
        test_check(0, "open tiny2", "%s", ldm_last_error());
    }
}

int main(void) {
    test_pixels();
    test_errors();
    const struct ldm_ops *backends[2] = {&ldm_ops_ref, &ldm_ops_cpu};
    for (int b = 0; b < 2; b++) {
        test_model("tiny2", backends[b]);
        test_model("tiny3", backends[b]);
    }
    test_tiled(&ldm_ops_cpu);
    test_dumps();
    return test_summary();
}
