#!/bin/sh
# tools/deps.sh check|install -- the Debian packages the ldm.c build needs.
#   check    exit 0 when every header and library is present
#   install  apt-get install them (as root, or through sudo), else print the command
# Open MPI (MPI_PKGS) is optional: `install` installs it, `check` only notes it
# missing. The default build never needs it; `make MPI=1` (data parallel over
# processes, ldm/train/dist.h) and the 2-process test of `make test` do.
PKGS="build-essential libopenblas-dev libpng-dev libcjson-dev libutf8proc-dev zlib1g-dev python3 python3-pip unzip"
MPI_PKGS="libopenmpi-dev openmpi-bin"
HEADERS="cblas.h png.h zlib.h cjson/cJSON.h utf8proc.h"

have_header() {
    echo "#include <$1>" | ${CC:-gcc} -E -x c - >/dev/null 2>&1
}

check() {
    for h in $HEADERS; do
        have_header "$h" || { echo "deps: missing header <$h>" >&2; return 1; }
    done
    python3 -m pip --version >/dev/null 2>&1 || { echo "deps: missing python3 with pip (vocabulary download)" >&2; return 1; }
    command -v unzip >/dev/null 2>&1 || { echo "deps: missing unzip" >&2; return 1; }
    if ! command -v mpicc >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1; then
        echo "deps: optional Open MPI not installed (make MPI=1 needs it; the MPI test skips):" \
             "tools/deps.sh install" >&2
    fi
    return 0
}

install() {
    if [ "$(id -u)" = 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "deps: not root and no sudo; run as root:" >&2
        echo "  apt-get update && apt-get install -y $PKGS $MPI_PKGS" >&2
        exit 1
    fi
    echo "deps: installing $PKGS $MPI_PKGS"
    $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $PKGS $MPI_PKGS
}

case "$1" in
    check) check ;;
    install) install ;;
    *) echo "usage: tools/deps.sh check|install" >&2; exit 2 ;;
esac
