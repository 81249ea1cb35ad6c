#!/usr/bin/env python3
"""
docs/exercises/splice.py -- put a student's version of one function into a copy
of the project file that holds it.

    splice.py REAL_FILE FUNCTION STUDENT_FILE > OUT

The function is found in REAL_FILE as the first line at column 0 that names
`FUNCTION(` and is not a prototype (no ';' before the body), through the next
line that is exactly "}" (the project's style closes every function at column
0). Those lines are replaced by STUDENT_FILE's text; everything else in the
file -- helpers, includes, the op table -- stays the project's own.
"""
import re
import sys


def splice(real, func, student):
    lines = real.splitlines(keepends=True)
    pat = re.compile(r"^[A-Za-z_].*\b" + re.escape(func) + r"\(")
    start = None
    for i, ln in enumerate(lines):
        if pat.match(ln):
            # a definition: the signature continues until a line ending in '{'
            j = i
            while j < len(lines) and not lines[j].rstrip().endswith("{") and ";" not in lines[j]:
                j += 1
            if j < len(lines) and lines[j].rstrip().endswith("{"):
                start = i
                break
    if start is None:
        sys.exit(f"splice: no definition of {func}() found")
    end = start
    while end < len(lines) and lines[end].rstrip("\n") != "}":
        end += 1
    if end == len(lines):
        sys.exit(f"splice: end of {func}() (a line '}}') not found")
    marker = f"// ---- {func}: the student's version (docs/exercises) ----\n"
    return "".join(lines[:start]) + marker + student + ("" if student.endswith("\n") else "\n") + \
        "".join(lines[end + 1:])


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    real = open(sys.argv[1], encoding="utf-8").read()
    student = open(sys.argv[3], encoding="utf-8").read()
    sys.stdout.write(splice(real, sys.argv[2], student))
