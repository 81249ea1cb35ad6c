#!/usr/bin/env python3
"""tools/docs_links.py -- keep the docs' links into the code true as the code moves.

The chapters link to code lines: [`ldm_q_sample`](../samplers/schedule.c#L217
"ldm_q_sample"). Typed line numbers drift with every edit, so every link that
points at a line carries, as its Markdown title (the quoted text after the
path, shown as a tooltip), what it points at:

  "NAME"            the line where NAME is defined: a function, struct/enum
                    typedef, #define, or a table/variable definition
  "NAME: TEXT"      the first line at or after NAME's definition that contains
                    TEXT (a statement inside a function)
  "= TEXT"          the one line of the file that contains TEXT

`make docs-links` (this script with --fix) recomputes every #L anchor (a range
#L52-L57 keeps its length) and a link text of the form `file.c:NN` from the
titles. `--check` (part of `make test`) fails when a titled link does not land
on its target, when a target cannot be found, when a link points at a file
that does not exist or past the end of its file, or when a line link has no
title. It also fails on a link that leaves the repository (`../../` above its
root), and on a mention of a Markdown file (a `*.md` name or path) in the
docs or in the code's comments that is not a file of the repository: the
course must be readable from the repository alone. Prints "N passed, M failed"
and exits non-zero on any failure.

Only the Python standard library: it runs in CI without the reference venv.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Markdown files whose links are checked.
def doc_files():
    out = [os.path.join(ROOT, "README.md")]
    for base in ("docs", "notebooks"):
        for d, _, fs in os.walk(os.path.join(ROOT, base)):
            out += [os.path.join(d, f) for f in sorted(fs) if f.endswith(".md")]
    return sorted(out)

# [text](target "title") or [text](target); text may hold one level of `code`.
LINK = re.compile(r'\[(?P<text>[^\[\]\n]*)\]\((?P<target>[^)\s]+)(?:\s+"(?P<title>[^"]*)")?\)')
ANCHOR = re.compile(r'^(?P<path>[^#]+)#L(?P<a>\d+)(?:-L?(?P<b>\d+))?$')

IDENT = r'[A-Za-z_]\w*'

def definition_names(line):
    """Identifiers a line of C/CUDA/Python defines (empty if none)."""
    s = line.rstrip("\n")
    names = []
    m = re.match(r'\s*#\s*define\s+(' + IDENT + ')', s)
    if m:
        names.append(m.group(1))
    m = re.match(r'\s*(?:typedef\s+)?(?:struct|enum|union)\s+(' + IDENT + r')\s*\{', s)
    if m:
        names.append(m.group(1))
    m = re.match(r'\s*\}\s*(' + IDENT + r')\s*;', s)
    if m:
        names.append(m.group(1))
    m = re.match(r'\s*(?:def|class)\s+(' + IDENT + ')', s)   # Python
    if m:
        names.append(m.group(1))
    # a function (definition or prototype) or a file-scope variable: starts in
    # column 0 with a type, the name followed by '(' or '[' or '='
    if s and not s[0].isspace() and not s.startswith(("#", "//", "/*", "*", "}", "{")):
        m = re.match(r'^[A-Za-z_][\w\s\*,]*?[\s\*](' + IDENT + r')\s*(\(|\[|=)', s)
        if m and m.group(1) not in ("if", "for", "while", "switch", "return", "sizeof"):
            names.append(m.group(1))
        m = re.match(r'^(?:__global__\s+)?(?:static\s+)?(?:inline\s+)?\w[\w\s\*]*?\b(' + IDENT +
                     r')\s*\(', s)
        if m and m.group(1) not in names and m.group(1) not in ("if", "for", "while"):
            names.append(m.group(1))
    return names


def find_definition(lines, name):
    """1-based line defining name: a definition (not ending in ';') first."""
    hits = [i for i, l in enumerate(lines) if name in definition_names(l)]
    if not hits:
        return None
    for i in hits:
        if not lines[i].rstrip().endswith(";"):
            return i + 1
    return hits[0] + 1


def resolve(lines, title):
    """Line (1-based) a title points at, or (None, why)."""
    if title.startswith("= "):
        text = title[2:]
        hits = [i + 1 for i, l in enumerate(lines) if text in l]
        if len(hits) != 1:
            return None, "%d lines contain %r (need exactly one)" % (len(hits), text)
        return hits[0], None
    name, _, text = title.partition(": ")
    if not re.fullmatch(IDENT, name):
        return None, "title %r is not NAME, 'NAME: TEXT' or '= TEXT'" % title
    d = find_definition(lines, name)
    if d is None:
        return None, "no definition of %s" % name
    if not text:
        return d, None
    for i in range(d - 1, len(lines)):
        if text in lines[i]:
            return i + 1, None
    return None, "no line containing %r after %s" % (text, name)


# Files whose mentions of *.md files are checked: the docs, the notebooks and
# the code's comments (a mention anywhere in such a file counts).
MENTION_DIRS = ("docs", "notebooks", "ldm", "tokenizer", "samplers", "tools", "tests")
MENTION_EXT = (".md", ".c", ".h", ".cu", ".py", ".sh", ".ipynb")
# a relative path ending in .md, not part of a longer path or pattern
# (docs/exercises/NN-*/README.md is a pattern, not a mention)
MD_NAME = re.compile(r'(?<![\w./*<>{}$%-])([\w][\w.-]*(?:/[\w.-]+)*\.md)(?![\w-]|\.\w|/)')
URL = re.compile(r'[a-z]+://\S+')

def mention_files():
    out = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "Makefile")]
    for base in MENTION_DIRS:
        for d, dirs, fs in os.walk(os.path.join(ROOT, base)):
            dirs[:] = sorted(x for x in dirs if x not in ("tiny-model", "fixtures", "__pycache__"))
            out += [os.path.join(d, f) for f in sorted(fs) if f.endswith(MENTION_EXT)]
    return sorted(out)

def repo_basenames():
    names = set()
    for d, dirs, fs in os.walk(ROOT):
        dirs[:] = [x for x in dirs if x not in (".git", "build")]
        names.update(fs)
    return names

def check_mentions():
    """(passed, failed) over every *.md named in mention_files()."""
    passed = failed = 0
    names = repo_basenames()
    for path in mention_files():
        rel = os.path.relpath(path, ROOT)
        for lineno, line in enumerate(read_lines(path), 1):
            for m in MD_NAME.finditer(URL.sub(" ", line)):
                name = m.group(1)
                cands = [os.path.normpath(os.path.join(os.path.dirname(path), name)),
                         os.path.normpath(os.path.join(ROOT, name))]
                inside = [c for c in cands if c == ROOT or c.startswith(ROOT + os.sep)]
                ok = any(os.path.isfile(c) for c in inside) or ("/" not in name and name in names)
                if ok:
                    passed += 1
                else:
                    print("  NOT OK  %s:%d: mentions %s, which is not a file of the repository"
                          % (rel, lineno, name))
                    failed += 1
    return passed, failed


def read_lines(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readlines()



def git_lines(rev, rel):
    """Lines of ROOT/rel at git revision rev (or of a file it was moved from:
    ldm/KIND/x.c was ldm/x.c), None if absent."""
    import subprocess
    for cand in (rel, re.sub(r'^ldm/(core|backend|io)/', 'ldm/', rel)):
        r = subprocess.run(["git", "-C", ROOT, "show", "%s:%s" % (rev, cand)],
                           capture_output=True)
        if r.returncode == 0:
            return r.stdout.decode("utf-8", "replace").splitlines(keepends=True)
    return None


def bind_title(lines, a, text):
    """A title for a link that points at line a of lines (the file as the
    link's author saw it)."""
    if a < 1 or a > len(lines):
        return None
    line = lines[a - 1]
    sym = re.findall(r'`(' + IDENT + r')', text)
    names = definition_names(line)
    if sym and find_definition(lines, sym[0]):   # [`name`](...): the name's definition
        return sym[0]
    if names:
        return names[0]
    s = line.strip()
    if not s or s == "}" or s.startswith(("//", "/*", "*")):
        # a blank line, brace or comment: the definition it introduces, if any
        for j in range(a, min(a + 15, len(lines))):
            t = lines[j].strip()
            if not t or t.startswith(("//", "/*", "*")):
                continue
            if definition_names(lines[j]):
                return definition_names(lines[j])[0]
            break
    for i in range(a - 2, -1, -1):                # a statement: its enclosing definition
        n = definition_names(lines[i])
        if n and not lines[i][0].isspace():
            return "%s: %s" % (n[0], snippet(line)) if snippet(line) not in ("", "}") else n[0]
    return "= " + snippet(line)


def snippet(line):
    """The longest run of a line without double quotes (a title cannot hold
    them), at most 40 characters."""
    part = max(line.strip().split('"'), key=len).strip()
    return part[:40].strip()


def link_key(text, target):
    am = ANCHOR.match(target)
    return (text, os.path.basename(am.group("path")) if am else target, am.group("a") if am else "")


def main(argv):
    fix = "--fix" in argv
    bind_rev = argv[argv.index("--bind") + 1] if "--bind" in argv else None
    passed = failed = 0
    for doc in doc_files():
        src = open(doc, encoding="utf-8").read()
        rel_doc = os.path.relpath(doc, ROOT)
        old_links = set()
        if bind_rev:
            old_doc = git_lines(bind_rev, rel_doc) or []
            old_links = {link_key(m.group("text"), m.group("target"))
                         for m in LINK.finditer("".join(old_doc))}
        out, pos = [], 0
        for m in LINK.finditer(src):
            target = m.group("target")
            if re.match(r'^[a-z]+:', target) or target.startswith("#"):
                continue   # a URL or an anchor within the page
            am = ANCHOR.match(target)
            path = am.group("path") if am else target.split("#")[0]
            full = os.path.normpath(os.path.join(os.path.dirname(doc), path))
            lineno = src.count("\n", 0, m.start()) + 1
            where = "%s:%d" % (rel_doc, lineno)
            if not (full == ROOT or full.startswith(ROOT + os.sep)):
                print("  NOT OK  %s: %s leaves the repository" % (where, path))
                failed += 1
                continue
            if not os.path.exists(full):
                print("  NOT OK  %s: %s does not exist" % (where, path))
                failed += 1
                continue
            if not am:
                passed += 1
                continue
            lines = read_lines(full)
            a = int(am.group("a"))
            b = int(am.group("b")) if am.group("b") else None
            title = m.group("title")
            if title is None and bind_rev:
                # links that existed at bind_rev are bound to what they pointed at then
                seen = link_key(m.group("text"), target) in old_links
                rel = os.path.relpath(full, ROOT)
                src_lines = (git_lines(bind_rev, rel) if seen else None) or lines
                title = bind_title(src_lines, a, m.group("text"))
            if title is None:
                print("  NOT OK  %s: [%s](%s) has no title naming what it points at"
                      % (where, m.group("text"), target))
                failed += 1
                continue
            want, why = resolve(lines, title)
            if want is None:
                print("  NOT OK  %s: %s: %s" % (where, path, why))
                failed += 1
                continue
            span = (b - a) if b is not None else None
            end = want + (span or 0)
            if want == a and end <= len(lines) and m.group("title") is not None:
                passed += 1
                continue
            if not (fix or bind_rev):
                print("  NOT OK  %s: %s#L%d should be #L%d (%s) -- run make docs-links"
                      % (where, path, a, want, title))
                failed += 1
                continue
            # rewrite the anchor, and a trailing ":NN" or ":NN-MM" of the link text
            new_target = "%s#L%d" % (path, want) + ("-L%d" % end if span is not None else "")
            text = re.sub(r':(\d+)(?:-(\d+))?(`?)$', lambda t: ":%d" % want + (
                "-%d" % (want + int(t.group(2)) - int(t.group(1))) if t.group(2) else "") +
                t.group(3), m.group("text"))
            out.append(src[pos:m.start()])
            out.append('[%s](%s "%s")' % (text, new_target, title))
            pos = m.end()
            passed += 1
        if out:
            out.append(src[pos:])
            new = "".join(out)
            if new != src:
                with open(doc, "w", encoding="utf-8") as f:
                    f.write(new)
                print("docs-links: updated %s" % rel_doc)
    p, f = check_mentions()
    passed += p
    failed += f
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
