"""Tokenizer fixtures: a corpus of prompts with the reference CLIP BPE ids.

Writes tests/fixtures/tokenizer/corpus.jsonl, one JSON object per line:
  text  the prompt (a Python str; only a few hand-written ones hold "\n")
  cat   which part of the corpus it comes from
  ids   open_clip.tokenizer._tokenizer.encode(text): the OpenAI CLIP
        simple_tokenizer algorithm with ftfy (SD1 reference behaviour), no
        start/end token, no truncation -- with OpenAI's special literals
        "<|startoftext|>" / "<|endoftext|>" added to open_clip's own
        "<start_of_text>" / "<end_of_text>" (see special_tokenizer below)
  sd2   open_clip.tokenize(text)[0] (SD2 conditioning form, pad 0) with the
        trailing zero padding removed (the test pads back to 77)
  hf    only when HF transformers' CLIPTokenizer (padding="max_length",
        max_length=77, truncation) differs from the SD1 form
        [49406] + ids[:75] + [49407] + 49407 padding: its ids with the trailing
        49407s removed (end token included; the test pads back to 77).
        transformers >= 5 has no ftfy route (normalizer NFC + whitespace +
        lowercase only), so it differs on text that ftfy or html.unescape
        changes; the test reports how many.

Also writes tests/fixtures/tokenizer/vocab_meta.json (sizes and sha256 of the
vocabulary the ids were made with; the vocabulary itself is never committed).

Random strings come from a seeded generator over a wide Unicode range. Draws
that ftfy's mojibake repair (fix_encoding) would change are skipped and
counted: mojibake repair is out of scope for the C tokenizer.

Run with the reference venv: .venv-ref/bin/python tools/reference/fixtures_tokenizer.py
"""
import copy
import hashlib
import json
import os
import random
import sys
import unicodedata

import ftfy
import open_clip
import regex
from open_clip import tokenizer as oct

OUT = os.path.join("tests", "fixtures", "tokenizer")
SOT, EOT = 49406, 49407
NEWER_LN = regex.compile(r"[\p{L}\p{N}]")

tok = oct._tokenizer


def special_tokenizer():
    """open_clip's tokenizer that also knows OpenAI CLIP's special literals.

    OpenAI's simple_tokenizer (and HF CLIPTokenizer, which the SD1 pipelines
    use) turn "<|startoftext|>" / "<|endoftext|>" in a prompt into the start /
    end ids; open_clip knows only its own spellings "<start_of_text>" /
    "<end_of_text>". ldm.c takes both spellings as special. (open_clip's
    additional_special_tokens cannot express this: it joins the literals
    into its pattern unescaped, and '|' then splits them.)"""
    ref = copy.copy(tok)
    ref.encoder = dict(tok.encoder, **{"<|startoftext|>": SOT, "<|endoftext|>": EOT})
    ref.cache = {t: t for t in ("<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>")}
    ref.pat = regex.compile(r"<start_of_text>|<end_of_text>|<\|startoftext\|>|<\|endoftext\|>|"
                            + tok.pat.pattern.split("|", 2)[2], regex.IGNORECASE)
    return ref


def sd1_form(ids):
    return [SOT] + ids[:75] + [EOT] + [EOT] * (75 - min(len(ids), 75))


def hf_tokenizer():
    """HF CLIPTokenizer built from the same vocabulary (no download)."""
    from transformers import CLIPTokenizer
    vocab = {k.replace("<start_of_text>", "<|startoftext|>").replace("<end_of_text>", "<|endoftext|>"): v
             for k, v in tok.encoder.items()}
    ranks = sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])
    merges = [tuple(pair) for pair, _ in ranks]
    return CLIPTokenizer(vocab=vocab, merges=merges)


# ---- hand-written prompts ---------------------------------------------------
BASE = [
    "a photograph of an astronaut riding a horse",
    "A painting of a squirrel eating a burger",
    "a beautiful landscape, highly detailed, 8k, trending on artstation",
    "portrait of a woman, by greg rutkowski and alphonse mucha, oil on canvas",
    "masterpiece, best quality, (ultra-detailed:1.2), [blurry], ((sharp focus))",
    "(red car:1.3) AND (blue sky:0.8), BREAK, cinematic lighting",
    "<lora:myStyle:0.7> a cat, <hypernet:x:1>",
    "don't stop: it's what we're doing, they've gone, I'm here, we'll see, he'd go",
    "DON'T STOP IT'S WE'RE THEY'VE I'M WE'LL HE'D",
    "rock 'n' roll, 'quoted', ''double'' '' 's 'sun",
    "1234567890 3.14159 1,000,000 2024-01-31 10:30pm 1e-5 0x1F",
    "!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((())) [[[]]] {{{}}}",
    "hello,world;foo:bar|baz/qux\\quux~tilde`back`",
    "café naïve résumé façade jalapeño Ångström Øresund Łódź Škoda",
    "Ελληνικά γράμματα ΟΔΟΣ ΣΟΦΟΣ Σ σ ς, ΑΣ.",
    "Русский текст, ЁЖИК в тумане, Україна, Беларусь",
    "العربية نص عربي مع أرقام ١٢٣",
    "עברית טקסט עם ניקוד שָׁלוֹם",
    "हिन्दी पाठ देवनागरी १२३",
    "ภาษาไทย ข้อความ",
    "左に赤い丸 右に青い四角",
    "東京の夜景、ネオン、雨",
    "ひらがな カタカナ ﾊﾝｶｸｶﾀｶﾅ ｶﾞｷﾞ",
    "한국어 텍스트 서울의 밤",
    "中文提示词：一只可爱的猫，高清",
    "emoji 😀😃🎉 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇺🇸 ❤️ ✨",
    "combining: e\u0301 a\u0308 o\u0302\u0323 n\u0303 Z\u0335\u0322a\u0336l\u0337g\u0338o",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ｆｕｌｌ－ｗｉｄｔｈ １２３ ！？",
    "ﬁne ﬂower ﬀ ﬃ ﬄ ﬅ ﬆ Ĳssel ǅ ǈ ǋ",
    "\u201ccurly\u201d \u2018single\u2019 it\u2019s \u201equote\u201f \u02bcx",
    "&amp; &lt;tag&gt; &quot;q&quot; &#39; &#x27; &copy; &eacute;t&eacute; &EACUTE; &nbsp;x",
    "&amp;amp; &amp;lt; &ampx &lt3 &notit; &notin; &#0; &#1; &#128; &#x80; &#xD800; &#99999999999;",
    "a < b &amp; c",
    "tabs\tand\tnewline-free   runs   of    spaces",
    "   leading and trailing   ",
    "",
    " ",
    "\u00a0nbsp\u2003em\u3000ideographic\u2009thin\u200bzwsp\u202fnnbsp",
    "ctrl\x01\x02\x7f chars \x1b[31mred\x1b[0m \u200d\ufeffbom \ufffc obj",
    "c1 \x80 \x85 \x91quote\x92 \x9f",
    "İstanbul ISTANBUL ıi ß ẞ ǅ ﬀ Ǆ K Å Ω",
    "<start_of_text> <end_of_text> <|startoftext|> <|endoftext|>",
    "a<|startoftext|>cat x <|endoftext|>y <|ENDOFTEXT|> <|\u017ftartoftext|> <|startoftext|",
    "a" * 300,
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    # edge cases of the reference's regex / lower() / NFC
    "\u0391\u03a3\U0001f130 \u0391\u03a3\u02b0 \u0391\u03a3. \u0391\u03a3' \u039f\u03a3\u0301",
    "'\u017fun <\u017ftart_of_text> x'\u017f \u0345p x\u0345y",
    "\uc544\u11a7 \uac01 \u1100\u1161\u11a8",
    "a\rb\r c \x1b[1;31mred\x1b[0m \x1b[\u0661m x",
    # several lines (library API only; the CLI reads one prompt per line):
    # ftfy fixes line by line and stops unescaping HTML for good after a '<'
    "a &amp; b\nc &lt; d\n<e> &amp; f\ng &amp; h",
    "first &eacute;\r\nsecond\u2028third\n\n &amp;amp;",
]

STYLES = ["oil painting", "watercolor", "digital art", "photograph", "3d render", "pencil sketch",
          "anime", "pixel art", "concept art", "studio ghibli style", "unreal engine", "octane render"]
SUBJECTS = ["a cat", "an old man", "a dragon", "a castle on a hill", "a bowl of fruit", "a robot",
            "a futuristic city", "a forest at night", "a girl with a red umbrella", "the moon",
            "two dogs playing", "a spaceship", "a lighthouse in a storm", "Mount Fuji"]
MODS = ["highly detailed", "8k", "4K UHD", "sharp focus", "bokeh", "golden hour", "volumetric light",
        "HDR", "by Artgerm", "trending on ArtStation", "award-winning", "f/1.8", "35mm", "ISO-100",
        "(masterpiece:1.4)", "[[low quality]]", "{{best}}", "((detailed eyes))", "(((hyper)))"]
WORDS = {
    "latin": "élan château crème brûlée über Straße Ærø smørrebrød ñandú São Paulo coração Kraków żółw ščť đ ğ ş ı İ",
    "greek": "Αθήνα φιλοσοφία ΟΔΥΣΣΕΥΣ λόγος ψυχή Ωμέγα ΣΙΣΥΦΟΣ",
    "cyrillic": "Москва снег ЗИМА Київ Ђорђе љубав ЁЛКА",
    "arabic": "القاهرة شمس ليل مدينة ٠١٢٣٤٥٦٧٨٩ ۴۵۶",
    "hebrew": "ירושלים אור לילה",
    "devanagari": "नमस्ते भारत सूर्य चंद्रमा ०१२",
    "thai": "กรุงเทพ แมว ดวงจันทร์",
    "cjk": "猫 狗 山 水 龍 花見 桜 富士山 漢字",
    "kana": "さくら サクラ ｻｸﾗ ﾈｺ ネコ ゛゜ ｰ",
    "korean": "고양이 서울 달빛 ㄱㄴㄷ ﾡﾢ",
    "emoji": "😀 🐱 🌸 🏔️ 🚀 👩🏿‍🚀 🧑‍🎨 🇫🇷 🇩🇪 🏴󠁧󠁢󠁳󠁣󠁴󠁿 1️⃣ ☕ ♥",
    "fullwidth": "ＡＢＣ ａｂｃ ０１２ （括弧） ＃ ＠ ～ ￥ ￡ ￠",
    "symbols": "© ® ™ ° ± × ÷ µ ¶ § € £ ¥ ¢ … — – • · ← → ↑ ↓ ∞ ≈ ≠ ≤ ≥ √ ∑ ∫ ♪ ☆ ★ ■ □",
    "numbers": "½ ¼ ¾ ² ³ ¹ ⅓ Ⅳ Ⅻ ① ⑩ ٣ ๓ ໓ 𝟘 𝟙",
    "entities": "&amp; &lt; &gt; &quot; &apos; &hellip; &mdash; &ndash; &rsquo; &ldquo; &rdquo; &euro; &pound; &times; &deg; &alpha; &Omega; &#8217; &#x1F600; &SZLIG; &ntilde; &NTILDE; &nTILDE; &Jscr; &HilbertSpace;",
    "ligatures": "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ Ĳ ĳ ŉ Ǳ ǲ ǳ Ǆ ǅ ǆ Ǉ ǈ ǉ Ǌ ǋ ǌ",
    "quotes": "\u2018 \u2019 \u201a \u201b \u201c \u201d \u201e \u201f \u02bc \u2039 \u203a « »",
    "combining": "e\u0301 u\u0308 A\u030a c\u0327 \u0301 \u20dd x\u0489 \u093f \u0e31",
}
WS = [" ", "  ", "\t", " \t ", "\u00a0", "\u3000", "\u2002", "\x0b", "\x0c", "\r", "\u2028", "\u0085", "\x1c"]
PUNCT = [",", ".", "!", "?", ":", ";", "...", "!!", "?!", "--", "()", "[]", "{}", "''", '"', "'", "-", "_", "/", "|", "~"]


def sd_prompt(rng):
    parts = [rng.choice(SUBJECTS), rng.choice(STYLES)] + rng.sample(MODS, rng.randint(1, 6))
    rng.shuffle(parts)
    s = ", ".join(parts)
    r = rng.random()
    if r < 0.2:
        s = s.upper()
    elif r < 0.35:
        s = s.title()
    return s


def mixed_prompt(rng):
    n = rng.randint(1, 12)
    out = []
    for _ in range(n):
        kind = rng.choice(list(WORDS))
        w = rng.choice(WORDS[kind].split(" "))
        if rng.random() < 0.3:
            w = w + rng.choice(PUNCT)
        if rng.random() < 0.1:
            w = w.upper()
        out.append(w)
        out.append(rng.choice(WS) if rng.random() < 0.3 else " ")
    return "".join(out)


# Ranges for random code points: common scripts plus the whole space.
RANGES = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F),
          (0x1100, 0x11FF), (0x1E00, 0x1FFF), (0x2000, 0x2BFF), (0x3000, 0x30FF), (0x4E00, 0x9FFF),
          (0xAC00, 0xD7A3), (0xFB00, 0xFB4F), (0xFE00, 0xFFFD), (0x1D400, 0x1D7FF), (0x1F000, 0x1FAFF),
          (0x0, 0x10FFFF)]


def random_char(rng):
    while True:
        lo, hi = rng.choice(RANGES)
        c = rng.randint(lo, hi)
        if 0xD800 <= c <= 0xDFFF or c == 0x0A or c == 0x00:  # no line breaks; no NUL (C strings)
            continue
        # The reference mixes Unicode versions: Python's unicodedata (14.0)
        # for NFC and lower(), the regex module (16+) for \p{L} / \p{N}; the C
        # side uses utf8proc (15.0). Code points assigned after 14.0 as
        # letters or numbers are therefore left out (docs/02-tokenizer.md);
        # code points unassigned everywhere are kept, rarely.
        if unicodedata.category(chr(c)) == "Cn":
            if NEWER_LN.match(chr(c)) or rng.random() < 0.95:
                continue
        return chr(c)


def random_string(rng):
    n = rng.randint(1, 40)
    s = []
    for _ in range(n):
        r = rng.random()
        if r < 0.15:
            s.append(rng.choice(WS))
        elif r < 0.25:
            s.append(rng.choice(PUNCT))
        elif r < 0.3:
            s.append("&" + rng.choice(["amp;", "lt;", "#39;", "eacute;", "EACUTE;", "nbsp", "#x41;", "copy"]))
        else:
            s.append(random_char(rng))
    return "".join(s)


def main():
    rng = random.Random(1234)
    prompts = [("base", t) for t in BASE]
    for _ in range(600):
        prompts.append(("sd", sd_prompt(rng)))
    for _ in range(600):
        prompts.append(("mixed", mixed_prompt(rng)))
    for _ in range(60):  # long prompts, nearly all longer than 75 ids
        prompts.append(("long", ", ".join(sd_prompt(rng) for _ in range(rng.randint(4, 12)))))
    skipped = 0
    n_random = 0
    while n_random < 900:
        s = random_string(rng)
        if ftfy.fix_encoding(s) != s or ftfy.fix_text(s) != ftfy.fix_text(s, fix_encoding=False):
            skipped += 1
            continue
        prompts.append(("random", s))
        n_random += 1

    hf = hf_tokenizer()
    stok = special_tokenizer()
    os.makedirs(OUT, exist_ok=True)
    n_hf_diff = n_hf_diff_clean = 0
    with open(os.path.join(OUT, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for cat, text in prompts:
            ids = stok.encode(text)
            sd2 = open_clip.tokenize(text)[0].tolist()
            if ids != tok.encode(text):   # a special literal: open_clip.tokenize's form from ids
                sd2 = ([SOT] + ids)[:76] + [EOT]
            while sd2 and sd2[-1] == 0:
                sd2.pop()
            rec = {"cat": cat, "text": text, "ids": ids, "sd2": sd2}
            h = hf(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
            if h != sd1_form(ids):
                # HF on the text as open_clip cleaned it: does it then agree?
                hc = hf(tok.clean_fn(text), padding="max_length", max_length=77, truncation=True)["input_ids"]
                n_hf_diff_clean += hc != sd1_form(ids)
                while h and h[-1] == EOT:
                    h.pop()
                rec["hf"] = h
                n_hf_diff += 1
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    path = oct.default_bpe()
    raw = open(path, "rb").read()
    meta = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw), "vocab_size": len(tok.encoder),
            "merges": len(tok.bpe_ranks), "prompts": len(prompts), "random_skipped_mojibake": skipped,
            "hf_differs": n_hf_diff, "hf_differs_on_cleaned_text": n_hf_diff_clean,
            "ftfy": ftfy.__version__, "open_clip": open_clip.__version__, "unicodedata": unicodedata.unidata_version}
    with open(os.path.join(OUT, "vocab_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"tokenizer: {len(prompts)} prompts, {skipped} random draws skipped (mojibake), "
          f"HF differs on {n_hf_diff} ({n_hf_diff_clean} after open_clip's cleaning)", file=sys.stderr)


if __name__ == "__main__":
    main()
