#!/bin/sh
# tests/bad_inputs.sh SD -- bad invocations of the `sd` binary SD, one a line
# below: unknown flags, bad sizes and numbers, missing files, folders given
# as files, empty strings, invalid UTF-8, a truncated PNG. Each must exit 1
# (runtime) or 2 (usage), say why in one line "sd: ..." (or print the usage),
# write no output file, and neither crash nor print a sanitizer report (run
# by `make check` against the ASan+UBSan build, by `make test` against the
# release one). Run from the repository root; prints one line per case and
# "N passed, M failed".
SD=${1:-build/sd}
T=$(mktemp -d /tmp/ldm_bad_inputs_XXXXXX) || exit 1
trap 'rm -rf "$T"' EXIT
mkdir "$T/empty_a" "$T/empty_b" "$T/out"
: > "$T/empty.txt"
head -c 100 tests/fixtures/pipeline/init.png > "$T/truncated.png"
printf 'a\377\376 circle\n' > "$T/bad_utf8.txt"
BADU=$(printf 'a red \377\376 circle')
O="--outdir $T/out"
pass=0; fail=0

# case EXPECTED_EXIT ARGS...: run "$SD" ARGS from the repository root
case_() {
    want=$1; shift
    "$SD" "$@" > "$T/stdout" 2> "$T/stderr" < /dev/null
    rc=$?
    why=""
    [ "$rc" -eq "$want" ] || why="exit $rc, want $want"
    if grep -qE 'Sanitizer|runtime error|Segmentation|Aborted|core dumped' "$T/stderr"; then
        why="$why; sanitizer/crash report"
    fi
    n=$(grep -c '^sd: ' "$T/stderr")
    if [ "$n" -ne 1 ] && ! head -n 1 "$T/stderr" | grep -q '^usage: '; then
        why="$why; $n 'sd: ' lines"
    fi
    files=$(find "$T/out" -type f | wc -l)
    [ "$files" -eq 0 ] || why="$why; $files output file(s)"
    find "$T/out" -mindepth 1 -delete 2>/dev/null
    if [ -z "$why" ]; then
        pass=$((pass + 1)); echo "  ok      sd $*"
    else
        fail=$((fail + 1)); echo "  NOT OK  sd $*: $why"; sed 's/^/          | /' "$T/stderr" | head -n 5
    fi
}

# ---- txt2img / img2img: flags (usage errors, exit 2, nothing loaded)
case_ 2 txt2img --bogus $O
case_ 2 txt2img --H 60 $O
case_ 2 txt2img --H 0 $O
case_ 2 txt2img --W -8 $O
case_ 2 txt2img --H 99999999999999999999 $O
case_ 2 txt2img --H 16400 $O
case_ 2 txt2img --n_samples 0 $O
case_ 2 txt2img --n_samples 65 $O
case_ 2 txt2img --n_iter -1 $O
case_ 2 txt2img --ddim_steps 0 $O
case_ 2 txt2img --ddim_steps 100000 $O
case_ 2 txt2img --scale nan $O
case_ 2 txt2img --scale 1e308 $O
case_ 2 txt2img --scale '' $O
case_ 2 txt2img --seed -1 $O
case_ 2 txt2img --seed 99999999999999999999999 $O
case_ 2 txt2img --sampler nope $O
case_ 2 txt2img --schedule nope $O
case_ 2 txt2img --rng foo $O
case_ 2 txt2img --plms --sampler euler $O
case_ 2 txt2img --plms --ddim_eta 0.5 $O
case_ 2 txt2img --prediction x $O
case_ 2 txt2img --backend nope $O
case_ 2 txt2img --threads -1 $O
case_ 2 txt2img --clip-skip 0 $O
case_ 2 txt2img --n_rows -1 $O
case_ 2 txt2img 'a red circle' $O
case_ 2 txt2img $O --prompt
case_ 2 txt2img --skip_grid=1 $O
case_ 2 img2img $O
case_ 2 img2img --init-img tests/fixtures/pipeline/init.png --strength 2 $O
# ---- txt2img / img2img: files (runtime errors, exit 1)
case_ 1 txt2img --ckpt /nonexistent.safetensors $O
case_ 1 txt2img --ckpt tests $O
case_ 1 txt2img --ckpt README.md $O
case_ 1 txt2img --from-file /nonexistent.txt $O
case_ 1 txt2img --from-file tests $O
case_ 1 txt2img --from-file "$T/empty.txt" $O
case_ 1 txt2img --from-file "$T/bad_utf8.txt" $O
case_ 1 txt2img --prompt "$BADU" $O
case_ 1 txt2img --outdir README.md
case_ 1 txt2img --outdir ''
case_ 1 txt2img --vae /nonexistent.safetensors $O
case_ 1 txt2img --vocab /nonexistent.txt.gz $O
case_ 1 txt2img --C 3 --ddim_steps 1 $O
case_ 1 img2img --init-img /nonexistent.png $O
case_ 1 img2img --init-img tests $O
case_ 1 img2img --init-img "$T/truncated.png" $O
case_ 1 img2img --init-img README.md $O
case_ 1 img2img --init-img tests/fixtures/io/png_rgb8.png $O
# ---- upscale: flags (exit 2), then files, the model and its limits (exit 1)
UM=tests/fixtures/upscale/model
UL=tests/fixtures/upscale/low_ddim.png
case_ 2 upscale --ckpt $UM $O
case_ 2 upscale --init-img $UL $O
case_ 2 upscale --ckpt $UM --init-img $UL --bogus $O
case_ 2 upscale --ckpt $UM --init-img $UL --noise_level -1 $O
case_ 2 upscale --ckpt $UM --init-img $UL --noise_level x $O
case_ 2 upscale --ckpt $UM --init-img $UL --steps 0 $O
case_ 2 upscale --ckpt $UM --init-img $UL --scale nan $O
case_ 2 upscale --ckpt $UM --init-img $UL --sampler nope $O
case_ 2 upscale --ckpt $UM --init-img $UL --n_samples 2 --out "$T/out/x.png"
case_ 2 upscale --ckpt $UM --init-img $UL 'a cat' $O
case_ 1 upscale --ckpt $UM --init-img /nonexistent.png $O
case_ 1 upscale --ckpt $UM --init-img tests $O
case_ 1 upscale --ckpt $UM --init-img "$T/truncated.png" $O
case_ 1 upscale --ckpt $UM --init-img README.md $O
case_ 1 upscale --ckpt $UM --init-img tests/fixtures/io/png_rgb8.png $O
case_ 1 upscale --ckpt $UM --init-img $UL --out "$T/out"
case_ 1 upscale --ckpt $UM --init-img $UL --outdir README.md
case_ 1 upscale --ckpt /nonexistent --init-img $UL $O
case_ 1 upscale --ckpt README.md --init-img $UL $O
case_ 1 upscale --ckpt tests/fixtures/pipeline/model --init-img $UL $O
case_ 1 upscale --ckpt $UM --init-img $UL --noise_level 351 --steps 1 $O
# ---- inpaint: the mask (missing: usage, exit 2; unreadable or of another size: exit 1)
M="--init-img tests/fixtures/pipeline/init.png"
case_ 2 inpaint $M $O
case_ 2 inpaint --mask tests/fixtures/inpaint/mask.png $O
case_ 2 inpaint $M --mask tests/fixtures/inpaint/mask.png --strength -0.5 $O
case_ 2 txt2img --mask tests/fixtures/inpaint/mask.png $O
case_ 1 inpaint $M --mask /nonexistent.png $O
case_ 1 inpaint $M --mask tests $O
case_ 1 inpaint $M --mask "$T/truncated.png" $O
case_ 1 inpaint $M --mask README.md $O
case_ 1 inpaint $M --mask tests/fixtures/io/png_rgb8.png $O
case_ 1 inpaint --init-img /nonexistent.png --mask tests/fixtures/inpaint/mask.png $O
# ---- the other subcommands
case_ 2 vae-encode
case_ 1 vae-encode /nonexistent.png "$T/out/x.npy"
case_ 1 vae-encode "$T/truncated.png" "$T/out/x.npy"
case_ 1 vae-encode tests "$T/out/x.npy"
case_ 1 vae-encode tests/fixtures/pipeline/init.png "$T/out"
case_ 1 vae-decode README.md "$T/out/x.png"
case_ 1 vae-decode /nonexistent.npy "$T/out/x.png"
case_ 2 vae-decode --vae-tile 1 a.npy "$T/out/x.png"
case_ 2 encode-prompt --out "$T/out/c.npy"
case_ 2 encode-prompt --clip-skip 0 --out "$T/out/c.npy" hi
case_ 1 encode-prompt --ckpt /nonexistent --out "$T/out/c.npy" hi
case_ 1 encode-prompt --out "$T/out/c.npy" "$BADU"
case_ 1 compare "$T/empty_a" "$T/empty_b"
case_ 1 compare /nonexistent /nonexistent
case_ 1 compare README.md README.md
case_ 2 compare "$T/empty_a"
case_ 1 info /nonexistent
case_ 1 info README.md
case_ 1 info tests
case_ 2 info README.md --bogus
case_ 1 png-info /nonexistent.png
case_ 1 png-info "$T/truncated.png"
case_ 1 png-info tests
case_ 2 unet
case_ 2 unet --random sd3
case_ 2 tokenize --bogus
case_ 1 check-model /nonexistent
case_ 2 bogus-subcommand
case_ 2 ''

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
