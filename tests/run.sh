#!/bin/sh
# tests/run.sh BUILD -- run every test binary in BUILD/tests, print each one's
# output, then the grand total as one line "N passed, M failed". Exits
# non-zero when any check failed or any binary crashed or printed no summary.
BUILD=${1:-build}
# Tests that run the CLI (tests/test_cli.c) find it as $LDM_BUILD/sd.
export LDM_BUILD="$BUILD"
pass=0; fail=0; bad=""
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "== $name"
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out"
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
    if [ -z "$line" ]; then
        echo "  NOT OK  $name exited $rc without a summary line"
        fail=$((fail + 1)); bad="$bad $name"; continue
    fi
    p=${line%% passed*}; f=${line#*passed, }; f=${f%% failed*}
    pass=$((pass + p)); fail=$((fail + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "  NOT OK  $name exited $rc"; fail=$((fail + 1))
    fi
    [ "$f" -ne 0 ] && bad="$bad $name"
done
[ -n "$bad" ] && echo "failing:$bad"
echo "total: $pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
