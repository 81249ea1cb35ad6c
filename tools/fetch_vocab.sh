#!/bin/sh
# tools/fetch_vocab.sh OUT -- obtain the CLIP BPE vocabulary
# (bpe_simple_vocab_16e6.txt.gz) when it is missing. It is never committed:
# it is unzipped from the open_clip_torch wheel on the package registry and
# checked against its known sha256 (SHA below; docs/02-tokenizer.md, "Vocabulary").
# LDM_VOCAB=FILE uses a local copy instead of the registry.
set -eu
OUT=${1:-build/vocab/bpe_simple_vocab_16e6.txt.gz}
SHA=924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a
NAME=open_clip/bpe_simple_vocab_16e6.txt.gz

check() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA" ]; }

mkdir -p "$(dirname "$OUT")"
if [ -f "$OUT" ] && check "$OUT"; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${LDM_VOCAB:-}" ]; then
    cp "$LDM_VOCAB" "$tmp/vocab.gz"
else
    echo "vocab: fetching open_clip_torch wheel from the package registry"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" open_clip_torch \
        || { echo "vocab: pip download open_clip_torch failed; set LDM_VOCAB=FILE or pass --vocab" >&2; exit 1; }
    whl=$(ls "$tmp"/open_clip_torch-*.whl | head -n 1)
    unzip -p "$whl" "$NAME" > "$tmp/vocab.gz" \
        || { echo "vocab: $NAME not found in $whl" >&2; exit 1; }
fi
if ! check "$tmp/vocab.gz"; then
    echo "vocab: sha256 mismatch (expected $SHA); refusing to install it" >&2
    exit 1
fi
mv "$tmp/vocab.gz" "$OUT"
echo "vocab: $OUT ok"
