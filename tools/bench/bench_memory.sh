#!/bin/sh
# tools/bench/bench_memory.sh -- peak resident memory and time of one whole
# `sd txt2img` (1 DDIM step, 1 sample) on the full-size random SD1 model.
#
#   tools/bench/bench_memory.sh SIZE [sd flags...]
#   SIZE   HxW in pixels, e.g. 512x512 or 512x1024
#   flags  passed to `sd txt2img` as they are (e.g. the weight-residency
#          flags of the CLI: fp32-resident weights, low-memory mode)
# Env: SD (default build/sd), REF_PY (default .venv-ref/bin/python).
#
# The model (a diffusers folder of fp16 safetensors) is generated and cached
# by tools/reference/test_reference_pipeline.py under build/reference/pipeline/sd1.
# Numbers are printed, never asserted: peak RSS is GNU time -v's "Maximum
# resident set size" (file-backed pages of the mapped checkpoint included:
# docs/09-checkpoint-files.md), user+system CPU seconds (steadier than wall
# time on a shared machine), wall seconds. The PNG's sha256 lets two runs be
# compared byte for byte.
set -eu
SD=${SD:-build/sd}
REF_PY=${REF_PY:-.venv-ref/bin/python}
SIZE=${1:-512x512}
[ $# -gt 0 ] && shift
H=${SIZE%x*}
W=${SIZE#*x}
MODEL=build/reference/pipeline/sd1
if [ ! -f "$MODEL/unet/diffusion_pytorch_model.safetensors" ]; then
    "$REF_PY" -c "import sys; sys.path.insert(0, 'tools/reference'); import test_reference_pipeline as t; t.generate('sd1', '$MODEL', False)"
fi
[ -x /usr/bin/time ] || { echo "bench_memory: needs GNU time (/usr/bin/time)"; exit 1; }
OUT=$(mktemp -d)
/usr/bin/time -v "$SD" txt2img --ckpt "$MODEL" --prompt "a lighthouse" --ddim_steps 1 \
    --n_samples 1 --n_iter 1 --H "$H" --W "$W" --outdir "$OUT" --skip_grid "$@" \
    > "$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
awk -v size="$SIZE" -v flags="$*" '
    /Maximum resident set size/ { rss = $NF }
    /User time/ { cpu += $NF }
    /System time/ { cpu += $NF }
    /Elapsed \(wall clock\)/ { wall = $NF }
    END { printf "%s %s: peak RSS %.2f GiB, CPU %.1f s, wall %s\n", size, flags, rss / 1048576, cpu, wall }
' "$OUT/log"
sha256sum "$OUT"/samples/*.png | sed "s|$OUT/||"
rm -rf "$OUT"
