#!/bin/sh
# docs/exercises/run.sh -- build the project with an exercise's file in place of
# the project's function and run the project's own test of that module.
#
#   docs/exercises/run.sh N              the student's file  (make exercise-N)
#   docs/exercises/run.sh N --solution   the project's own code (the solution)
#   docs/exercises/run.sh --check-all    every exercise: the starting point must
#                                        FAIL and the solution must PASS
#
# Each exercise folder docs/exercises/NN-name/ holds README.md (the task), the
# starting point the student edits (one function) and `exercise.conf`:
#   FILE=ldm/backend/ops_ref.c  FUNC=ref_group_norm  START=group_norm.c  TEST=test_ops
# The build happens in build/exercises/NN/: a tree of symbolic links to the
# repository in which FILE alone is a real file, the project's FILE with FUNC
# replaced (docs/exercises/splice.py). The repository itself is never touched.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 2
MAKE=${MAKE:-make}

run_one() {  # $1 = number, $2 = "student" | "solution"; exit status of the test
    case "$1" in ''|*[!0-9]*) echo "exercise: '$1' is not a number"; return 2;; esac
    # "08" is not octal here: drop leading zeros before printf reads it
    n=$(printf '%02d' "$(echo "$1" | sed 's/^0*\([0-9]\)/\1/')")
    dir=$(ls -d docs/exercises/"$n"-*/ 2>/dev/null | head -n 1)
    [ -n "$dir" ] || { echo "exercise $1: no folder docs/exercises/$n-*"; return 2; }
    FILE= FUNC= START= TEST=
    . "$dir/exercise.conf"
    tree="build/exercises/$n"
    mkdir -p "$tree"
    # fresh links each run (files added or removed in the repository follow);
    # the objects in $tree/build stay, so only the spliced file recompiles
    for d in ldm tokenizer samplers tools tests; do rm -rf "${tree:?}/$d"; cp -as "$ROOT/$d" "$tree/"; done
    ln -sf "$ROOT/Makefile" "$tree/Makefile"
    mkdir -p "$tree/build"
    [ -e "$tree/build/vocab" ] || ln -s "$ROOT/build/vocab" "$tree/build/vocab"
    rm -f "$tree/$FILE"
    if [ "$2" = solution ]; then
        cp "$FILE" "$tree/$FILE"
    else
        python3 docs/exercises/splice.py "$FILE" "$FUNC" "$dir$START" > "$tree/$FILE" || return 2
    fi
    src="$dir$START"; [ "$2" = solution ] && src="the project's own code"
    echo "== exercise $n ($2): $FUNC() in $FILE from $src; test $TEST"
    # -O2: quicker to build; the tests' tolerances do not depend on it.
    if ! $MAKE --no-print-directory -s -C "$tree" BUILD=build OPT=-O2 "build/tests/$TEST" >"$tree/build.log" 2>&1; then
        echo "exercise $n: the build failed (compiler messages below; full log $tree/build.log)"
        grep -E 'error|warning' "$tree/build.log" | head -n 20
        return 1
    fi
    (cd "$tree" && "build/tests/$TEST") >"$tree/test.log" 2>&1
    rc=$?
    grep -E 'NOT OK' "$tree/test.log" | head -n 8
    tail -n 1 "$tree/test.log"
    return $rc
}

if [ "${1:-}" = --check-all ]; then
    bad=0
    for d in docs/exercises/[0-9][0-9]-*/; do
        n=$(basename "$d" | cut -c1-2)
        if run_one "$n" student >/dev/null 2>&1; then
            echo "exercise $n: the starting point PASSES its test (it must fail)"; bad=1
        else
            echo "exercise $n: starting point fails its test (as it must)"
        fi
        if run_one "$n" solution >/dev/null 2>&1; then
            echo "exercise $n: the solution passes"
        else
            echo "exercise $n: the solution FAILS its test"; bad=1
        fi
    done
    [ $bad = 0 ] && echo "exercises: all starting points fail, all solutions pass"
    exit $bad
fi
[ $# -ge 1 ] || { sed -n '2,14p' "$0"; exit 2; }
run_one "$1" "$([ "${2:-}" = --solution ] && echo solution || echo student)"
