#!/bin/sh
# tools/bench/bench_vae.sh -- peak resident memory and wall time of one VAE
# decode (`sd vae-decode`) on the full-size random SD VAE, untiled and tiled.
#
#   tools/bench/bench_vae.sh [SIZES] [MODES]
#   SIZES  image sides in pixels (default "512 1024")
#   MODES  untiled, tiled (default both); tiled = --vae-tiling with the
#          default 512 px tiles (64 latent pixels, overlap 16), which at
#          512x512 is a single tile, so 512 is also run with 256 px tiles.
# Env: SD (default build/sd), REF_PY (default .venv-ref/bin/python),
#      LDM_BACKEND, OMP_NUM_THREADS as usual.
#
# The model is generated (and cached) by tools/reference/test_reference_vae.py
# under build/reference/vae/. Numbers are printed, never asserted: one line per
# run with peak RSS (GNU time -v "Maximum resident set size") and seconds.
set -eu
SD=${SD:-build/sd}
REF_PY=${REF_PY:-.venv-ref/bin/python}
SIZES=${1:-"512 1024"}
MODES=${2:-"untiled tiled"}
DIR=build/reference/vae
MODEL=$DIR/diffusers
OUT=$DIR/bench
mkdir -p "$OUT"
if [ ! -f "$MODEL/vae/diffusion_pytorch_model.safetensors" ]; then
    "$REF_PY" -c "import sys; sys.path.insert(0, 'tools/reference'); import test_reference_vae as t; t.make_models()"
fi
[ -x /usr/bin/time ] || { echo "bench_vae: needs GNU time (/usr/bin/time)"; exit 1; }

run() {  # size label flags...
    size=$1; label=$2; shift 2
    lat=$OUT/latent_$size.npy
    if [ ! -f "$lat" ]; then
        "$REF_PY" -c "import numpy as np; np.save('$lat', np.random.default_rng(0).standard_normal((1,4,$size//8,$size//8)).astype(np.float32))"
    fi
    /usr/bin/time -v "$SD" vae-decode --ckpt "$MODEL" --overwrite -v "$@" "$lat" "$OUT/out_${size}_$label.png" \
        >"$OUT/log_${size}_$label.txt" 2>&1 || { echo "  $size $label: FAILED (see $OUT/log_${size}_$label.txt)"; return 0; }
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$OUT/log_${size}_$label.txt")
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$OUT/log_${size}_$label.txt")
    user=$(sed -n 's/.*User time (seconds): //p' "$OUT/log_${size}_$label.txt")
    how=$(grep '^vae:' "$OUT/log_${size}_$label.txt" | tr '\n' ' ')
    printf '  %5spx %-12s peak RSS %6.0f MiB  wall %8s  user %7ss  %s\n' "$size" "$label" \
        "$(awk "BEGIN{print $rss/1024}")" "$wall" "$user" "$how"
}

echo "bench_vae: sd vae-decode on the full-size random SD VAE ($(nproc) cores, backend ${LDM_BACKEND:-cpu})"
for s in $SIZES; do
    for m in $MODES; do
        case $m in
        untiled) run "$s" untiled --no-vae-tiling ;;
        tiled)
            if [ "$s" -le 512 ]; then run "$s" tiled-256px --vae-tiling --vae-tile 32
            else run "$s" tiled-512px --vae-tiling; fi ;;
        esac
    done
done
