"""Mojibake fixtures: ftfy 6.3.1's encoding repair on realistic broken prompts.

Writes tests/fixtures/tokenizer/mojibake.jsonl, one JSON object per line:
  cat    which part of the corpus it comes from (below)
  text   the (usually broken) prompt, a Python str
  fixed  ftfy.fix_text(text)            (what the reference tokenizer cleans)
  enc    ftfy.fix_encoding(text)        (the mojibake repair alone; left out
                                         when it equals text)
  ids    the reference CLIP BPE ids of text (open_clip's SimpleTokenizer with
         OpenAI CLIP's special literals, as in fixtures_tokenizer.py)
and, for cat "is_bad", only text and bad = ftfy.badness.is_bad(text).

Categories. Realistic ones (the target is exact agreement):
  moji-<codec>   a prompt with non-ASCII characters, encoded as UTF-8 and
                 decoded with one of the code pages ftfy knows (latin-1,
                 sloppy-windows-1252/-1251/-1250/-1253/-1254/-1257,
                 iso-8859-2, macroman, cp437) -- the classic "cafÃ©"
  double         broken twice (UTF-8 -> windows-1252 -> UTF-8 -> windows-1252)
  partial        a broken fragment between intact text
  nbsp           windows-1252 mojibake whose U+00A0 became a space ("Ã la")
  lossy          windows-1252 decoding that replaced undefined bytes with U+FFFD
                 ("â€œquotesâ€�")
  c1             C1 control characters (latin-1 read of windows-1252 text)
  legit          text ftfy must leave alone: real accented words, prices,
                 degrees, kaomoji, "Ã" used on purpose, Greek / Cyrillic
  prompts        the tokenizer corpus's kinds of prompts (BASE, SD prompts,
                 mixed scripts), intact
Stress (reported, not required to agree):
  random-moji    random strings over the characters mojibake is made of
  is_bad         random short strings of those characters: the heuristic alone

Run with the reference venv: .venv-ref/bin/python tools/reference/fixtures_mojibake.py
"""
import json
import os
import random
import sys

import ftfy
import ftfy.badness
import open_clip

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixtures_tokenizer as ft  # noqa: E402  (BASE, sd_prompt, mixed_prompt, WORDS, special_tokenizer)

OUT = os.path.join("tests", "fixtures", "tokenizer", "mojibake.jsonl")

CODECS = ["latin-1", "sloppy-windows-1252", "sloppy-windows-1251", "sloppy-windows-1250", "sloppy-windows-1253",
          "sloppy-windows-1254", "sloppy-windows-1257", "iso-8859-2", "macroman", "cp437"]

# Prompts with the characters mojibake usually hits: accents, quotes, dashes,
# symbols, other scripts, emoji.
NONASCII = [
    "café au lait, crème brûlée, soft light",
    "a naïve portrait of a girl in a café, résumé style",
    "Pokémon trainer in São Paulo, golden hour",
    "\u201cThe Starry Night\u201d by Van Gogh \u2014 oil on canvas",
    "it\u2019s a beautiful day \u2013 sunny, 25\u00b0C, no clouds\u2026",
    "\u2018quoted\u2019 words and \u201cdouble quotes\u201d everywhere",
    "smørrebrød on a table, Ærø island, Øresund bridge",
    "Straße in München, Fußgängerzone, Gemütlichkeit",
    "jalapeño, piñata, señorita dancing, España",
    "Kraków old town, żółw, źdźbło, Łódź at night",
    "Škoda car, čaj, šťastný, Dvořák",
    "İstanbul, çay bahçesi, ağaç, şehir",
    "Москва зимой, снег, красная площадь",
    "Київ, Україна, золоті куполи",
    "Αθήνα, Ακρόπολη, ηλιοβασίλεμα",
    "東京の夜景、ネオン、雨",
    "中文提示词：一只可爱的猫，高清",
    "한국어 텍스트 서울의 밤",
    "emoji 😀 🐱 🌸 🚀 ✨ ❤️ 👍🏽",
    "price: €50, £40, ¥500, ©2024 ACME™, ® registered",
    "±5%, 10×10 grid, ½ cup, ¾ view, µm scale, 90° angle",
    "• bullet one • bullet two … and more",
    "façade of the Musée d'Orsay, Île-de-France",
    "a smiling señor with a sombrero, México",
    "Björk on stage, Reykjavík, Þingvellir",
    "Zürich, Genève, Neuchâtel, Graubünden",
    "coração, ação, não, pão de queijo",
    "à la carte, déjà vu, voilà, fiancée",
    "Ångström units, Åland islands, Ålesund",
    "naïveté, coöperate, Noël, Zoë",
]

# Text ftfy leaves alone although it holds the characters of mojibake.
LEGIT = [
    "naïve café", "Ã", "Ã is a letter in Portuguese", "SÃO PAULO", "ÃO", "Â", "ã and à", "São Paulo",
    "£5 or €6", "25°C and 77°F", "2×3=6", "x² + y³", "(╯°□°)╯︵ ┻━┻", "¯\\_(ツ)_/¯", "ಠ_ಠ", "(ó﹏ò｡)",
    "Ωmega, µ-law, Σigma", "ÉCOLE NORMALE SUPÉRIEURE", "ÀÉÎÕÜ àéîõü", "ÅÄÖ åäö", "©™®", "¡Hola! ¿Qué tal?",
    "«guillemets» and ‹single›", "Ñandú", "Øystein", "Œuvre, cœur, bœuf", "Þór", "ßharp", "§ 12 ¶ 3",
    "¼ ½ ¾", "¢ cents", "№ 5", "…", "– — ―", "·middle·dot·", "Ελληνικά γράμματα", "Русский текст",
    "Ölgemälde eines Bären", "Ça va?", "Ýmir", "Ðorđe", "Ē Ī Ō Ū", "Ź Ż Ž", "ø ü ö", "â€ alone",
    "mañana à la mode", "Ãngulo", "Âme", "ÂÂÂ", "ÃÃÃ", "Ã‰", "ÃƒÂ", "a Ã b", "A\u00a0B", "vis-à-vis",
]


def moji(s, codec):
    return s.encode("utf-8").decode(codec)


def random_moji_string(rng, alphabet):
    n = rng.randint(1, 16)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.2:
            out.append(rng.choice(" aeiouxyzAB.,"))
        else:
            out.append(rng.choice(alphabet))
    return "".join(out)


def main():
    rng = random.Random(20240601)
    ft_rng = random.Random(4321)
    recs = []

    sources = list(NONASCII)
    for _ in range(40):
        sources.append(ft.mixed_prompt(ft_rng))
    sources = [s for s in sources if any(ord(c) >= 0x80 for c in s)]

    # moji-<codec>: every codec on a sample of the sources.
    for codec in CODECS:
        for s in rng.sample(sources, 18):
            recs.append(("moji-" + codec, moji(s, codec)))
    # double
    for s in rng.sample(sources, 30):
        once = moji(s, "sloppy-windows-1252")
        recs.append(("double", moji(once, rng.choice(["sloppy-windows-1252", "latin-1"]))))
    # partial: a broken fragment amid intact text
    for _ in range(45):
        a, b, c = rng.choice(sources), rng.choice(NONASCII), rng.choice(ft.BASE[:12] + NONASCII)
        recs.append(("partial", a + ", " + moji(b, rng.choice(["sloppy-windows-1252", "latin-1"])) + ", " + c))
    # nbsp: U+00A0 of the mojibake turned into a space
    for s in ["voilà le travail", "à la mode", "déjà vu à Paris", "às vezes", "fácil à noite",
              "crème à la vanille", "Ñandú", "pražský hrad", "Ãrvore", "ŠKODA", "Πάρος", "Россия"] + \
            rng.sample(NONASCII, 12):
        recs.append(("nbsp", moji(s, "sloppy-windows-1252").replace("\u00a0", " ")))
    # lossy: strict windows-1252 with replacement
    for s in ["\u201cquotes\u201d", "\u201c like this \u201d", "it\u2019s a \u201ctest\u201d", "Ğ and Ş",
              "Ѐ Ё Ђ", "ǂ ǃ", "\u2116 5"] + rng.sample(NONASCII, 16):
        recs.append(("lossy", s.encode("utf-8").decode("windows-1252", errors="replace")))
    # c1: latin-1 read of windows-1252 text
    for s in ["\u201cquote\u201d", "it\u2019s", "\u2026and more", "\u20ac5", "\u2013 dash \u2014", "\u2122 mark",
              "Š š Ž ž Œ œ Ÿ"]:
        recs.append(("c1", s.encode("windows-1252").decode("latin-1")))
    # legit
    for s in LEGIT:
        recs.append(("legit", s))
    for s in NONASCII:
        recs.append(("legit", s))
    # prompts: intact prompts of the tokenizer corpus's kinds
    for s in ft.BASE:
        recs.append(("prompts", s))
    for _ in range(40):
        recs.append(("prompts", ft.sd_prompt(ft_rng)))
    for _ in range(40):
        recs.append(("prompts", ft.mixed_prompt(ft_rng)))

    # random-moji and is_bad: over the characters of ftfy's classes
    alphabet = sorted({c for body in ftfy.badness.MOJIBAKE_CATEGORIES.values()
                       for c in _expand(body)} | {chr(b) for b in range(0xA0, 0x100)})
    for _ in range(200):
        recs.append(("random-moji", random_moji_string(rng, alphabet)))
    bad_recs = []
    for _ in range(1200):
        s = random_moji_string(rng, alphabet)[:rng.randint(2, 5)]
        bad_recs.append({"cat": "is_bad", "text": s, "bad": bool(ftfy.badness.is_bad(s))})

    stok = ft.special_tokenizer()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    changed = 0
    with open(OUT, "w", encoding="utf-8") as f:
        for cat, text in recs:
            text = text.replace("\x00", "")  # C strings
            fixed = ftfy.fix_text(text)
            enc = ftfy.fix_encoding(text)
            changed += enc != text
            rec = {"cat": cat, "text": text, "fixed": fixed, "ids": stok.encode(text)}
            if enc != text:
                rec["enc"] = enc
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        for rec in bad_recs:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    n_bad = sum(r["bad"] for r in bad_recs)
    print(f"mojibake: {len(recs)} texts ({changed} changed by fix_encoding), {len(bad_recs)} is_bad probes "
          f"({n_bad} bad); ftfy {ftfy.__version__}, open_clip {open_clip.__version__}", file=sys.stderr)


def _expand(body):
    """The characters of a regex class body like "a-cxy" (ftfy's category strings)."""
    out, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            out.extend(chr(c) for c in range(ord(body[i]), ord(body[i + 2]) + 1))
            i += 3
        else:
            out.append(body[i])
            i += 1
    return out


if __name__ == "__main__":
    main()
