#!/bin/sh
# tools/bench/peers.sh -- one SD1 UNet evaluation (the classifier-free-guidance
# step: batch 2, 512x512 = latent 64x64, random weights, fp32, N threads) in
# ldm.c and in its peers, in one run on this machine, and the ratios.
#
#   tools/bench/peers.sh [SIZE] [THREADS]      (defaults 64x64 and 2)
#
# ldm.c: `sd unet --random sd1 --time` (cpu backend). PyTorch (diffusers) from
# .venv-ref (make reference-env); OpenVINO when `pip install openvino` has been
# run in .venv-ref. Each peer runs in its own process after the previous one
# ended (no overlap); each reports the best of 2 evaluations after a warm-up.
# Numbers are printed, never asserted; run it on an otherwise idle machine.
# Env: SD (default build/sd), REF_PY (default .venv-ref/bin/python).
set -eu
SIZE=${1:-64x64}
THREADS=${2:-2}
SD=${SD:-build/sd}
REF_PY=${REF_PY:-.venv-ref/bin/python}
here=$(dirname "$0")
[ -x "$SD" ] || { echo "peers: $SD not built (make)"; exit 1; }

ldm_best=""
for r in 1 2; do
    s=$("$SD" unet --random sd1 --size "$SIZE" --batch 2 --threads "$THREADS" --time 2>&1 |
        sed -n 's/.*: \([0-9.]*\) s, .*/\1/p' | head -n 1)
    [ -n "$s" ] || { echo "peers: sd unet printed no time"; exit 1; }
    if [ -z "$ldm_best" ] || awk "BEGIN{exit !($s < $ldm_best)}"; then ldm_best=$s; fi
done
echo "ldm.c (cpu backend)      $ldm_best s per evaluation"

peer() {  # name
    out=$("$REF_PY" "$here/peers_unet.py" "$1" --threads "$THREADS" --size "$SIZE" 2>/dev/null |
          sed -n 's/^PEER //p')
    [ -n "$out" ] || { echo "$1: not available (see tools/bench/peers_unet.py)"; return 0; }
    set -- $out
    printf '%-24s %s s per evaluation   ldm.c / %s = %s\n' "$1" "$2" "$1" \
        "$(awk "BEGIN{printf \"%.2f\", $ldm_best / $2}")"
}
if [ -x "$REF_PY" ]; then
    peer torch
    if "$REF_PY" -c "import openvino" 2>/dev/null; then peer openvino
    else echo "openvino: not installed in .venv-ref (.venv-ref/bin/pip install openvino)"; fi
else
    echo "peers: no $REF_PY (make reference-env): PyTorch and OpenVINO not run"
fi
