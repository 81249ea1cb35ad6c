"""
notebooks/make_notebooks.py -- writes the course notebooks notebooks/NN-*.ipynb.

The notebooks are generated from the cell texts below, so they are plain and
reviewable; they are committed with their outputs, which `make notebooks-render`
writes (it runs this file's cells and saves each executed notebook in place):

    make notebooks-render      (after editing this file: regenerate + execute + save)
    make notebooks             (the check: cells match this file, every notebook runs)

Each notebook follows one chapter of docs/ and runs top to bottom on the tiny
model the project trained (tools/tiny-model: 64x64 coloured shapes from English
or Japanese captions, docs/10-tiny-model.md); the comparison notebook uses the
random-weight test models under tests/fixtures/, whose PyTorch dumps are
committed. The variable MODEL at the top of each notebook (or $LDM_MODEL)
points it at a real checkpoint.
"""
import copy
import os
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))


def md(s):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(s).strip())


def code(s):
    return nbformat.v4.new_code_cell(textwrap.dedent(s).strip())


SETUP = code('''
    # Setup: the ctypes bindings to build/libldm.so (notebooks/ldm_py.py; run `make` first).
    import os, sys
    ROOT = os.path.abspath("")
    while not os.path.exists(os.path.join(ROOT, "notebooks", "ldm_py.py")):
        ROOT = os.path.dirname(ROOT)
    sys.path.insert(0, os.path.join(ROOT, "notebooks"))
    os.chdir(ROOT)  # the tokenizer finds build/vocab/ relative to the repository root
    import numpy as np
    import matplotlib.pyplot as plt
    import ldm_py as L
    L.load()

    # MODEL: the tiny model the project trained (L.TINY_MODEL: tools/tiny-model; 64x64
    # coloured shapes, English or Japanese captions). Point MODEL at a real checkpoint
    # (.safetensors / .ckpt file or a diffusers folder) for Stable Diffusion's pictures;
    # CONFIG_DIR only for single files of non-standard size.
    MODEL = os.environ.get("LDM_MODEL", L.TINY_MODEL)
    CONFIG_DIR = None
    # PROMPT: one the tiny model was trained to draw, or a classic one for a real SD model.
    PROMPT = ("a red circle on the left" if os.path.abspath(MODEL) == os.path.abspath(L.TINY_MODEL)
              else "a photograph of an astronaut riding a horse")
''')

TINY_NOTE = md('''
    > **About the pictures.** The default `MODEL` is the tiny model the project trained
    > (`tools/tiny-model`, [docs/10-tiny-model.md](../docs/10-tiny-model.md)): SD1 layout,
    > a 64-wide CLIP text encoder, a UNet of 32–64 channels, 64×64 pixels, trained on
    > coloured circles, squares and triangles captioned in English and Japanese — so it
    > draws `PROMPT` ("a red circle on the left") and little else. The shapes, the data
    > flow and every number's *meaning* are those of Stable Diffusion; set `MODEL` to a
    > real SD1/SD2 checkpoint for its pictures.
''')

NOTEBOOKS = {}

# ---------------------------------------------------------------------------
NOTEBOOKS["01-tensors-and-ops"] = [
    md('''
    # 01 — Tensors and ops: group norm and attention, in C, beside NumPy

    Chapter: [docs/01-tensors-and-ops.md](../docs/01-tensors-and-ops.md) · exercises
    [1 (group norm)](../docs/exercises/01-group-norm/README.md),
    [4 (attention, causal mask)](../docs/exercises/04-causal-attention/README.md).

    Every model file calls the op table (`ldm/backend/ops.h`); `ref` is plain loops, `cpu` is
    OpenBLAS + OpenMP. Here two ops run through the bindings and are checked against
    a NumPy one-liner of their definition.
    '''),
    SETUP,
    md('''
    ## Group normalisation (Wu & He 2018, eq. 1–2)
    `x [B,C,H,W]` in `G` groups of `C/G` channels; each group is normalised by its own
    mean and (biased) variance, then scaled per channel. The UNet uses 32 groups.
    '''),
    code('''
    rng = np.random.default_rng(0)
    B, Cc, H, W, G = 2, 8, 6, 6, 4
    x = (rng.standard_normal((B, Cc, H, W)) * np.arange(1, Cc + 1)[None, :, None, None]
         + 3 * np.arange(Cc)[None, :, None, None]).astype(np.float32)
    gamma = np.ones(Cc, np.float32); beta = np.zeros(Cc, np.float32)
    got = {be: L.group_norm(x, gamma, beta, G, 1e-5, backend_name=be) for be in ("ref", "cpu")}
    xg = x.reshape(B, G, -1)
    want = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    for be, y in got.items():
        print(f"{be}: max |C - NumPy| = {np.abs(y - want).max():.2e}")
    fig, ax = plt.subplots(1, 2, figsize=(10, 3))
    for a, arr, title in ((ax[0], x, "input x"), (ax[1], got["cpu"], "group_norm(x), G=4")):
        a.boxplot([arr[0, c].ravel() for c in range(Cc)])
        a.set_title(title); a.set_xlabel("channel (groups of 2)")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## Attention and the causal mask (LDM sec. 3.3)
    `softmax(QKᵀ/√d)·V`, per head. CLIP's text encoder adds a causal mask: token *i*
    sees tokens *0..i* only. The matrix of probabilities below is what the mask does.
    '''),
    code('''
    T, D, NH = 12, 16, 2
    q, k, v = (rng.standard_normal((1, T, D)).astype(np.float32) for _ in range(3))
    hs = D // NH

    def attention_numpy(q, k, v, causal):
        qh = q.reshape(1, -1, NH, hs).transpose(0, 2, 1, 3)
        kh = k.reshape(1, -1, NH, hs).transpose(0, 2, 1, 3)
        vh = v.reshape(1, -1, NH, hs).transpose(0, 2, 1, 3)
        s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(hs)
        if causal:
            s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
        return (p @ vh).transpose(0, 2, 1, 3).reshape(1, T, D), p

    fig, ax = plt.subplots(1, 2, figsize=(9, 4))
    for a, causal in zip(ax, (False, True)):
        want, p = attention_numpy(q, k, v, causal)
        got = L.attention(q, k, v, NH, causal=causal)
        print(f"causal={causal}: max |C - NumPy| = {np.abs(got - want).max():.2e}")
        im = a.imshow(p[0, 0], cmap="viridis"); a.set_title(f"head 0 probabilities, causal={causal}")
        a.set_xlabel("key j"); a.set_ylabel("query i"); plt.colorbar(im, ax=a)
    plt.tight_layout(); plt.show()
    '''),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["02-tokenizer"] = [
    md('''
    # 02 — The CLIP tokenizer: byte-level BPE, merge by merge

    Chapter: [docs/02-tokenizer.md](../docs/02-tokenizer.md) · exercise
    [2 (BPE merges)](../docs/exercises/02-bpe-merges/README.md) · paper: LDM sec. 4.3.1
    (τ_θ is a transformer over the *tokenized* prompt); Sennrich et al. 2016 (BPE).

    `tokenizer/bpe.c` does, for every piece of the prompt: UTF-8 bytes → the
    byte-to-unicode table → one symbol per byte (`</w>` on the last) → repeatedly merge
    the adjacent pair of lowest rank. Below the same loop in 30 lines of Python, run on
    the same vocabulary, shows each merge, and is checked against the C tokenizer.
    '''),
    SETUP,
    code('''
    tok = L.Tokenizer()          # build/vocab/bpe_simple_vocab_16e6.txt.gz (make vocab)
    for p in ["a photo of a cat", "An astronaut riding a horse, 4k", "diffusion123"]:
        print(f"{p!r:40s} -> {tok.encode(p)}")
        print(" " * 44, tok.pieces(p))
    '''),
    md('''
    ## The merges, step by step
    The vocabulary file lists 48,894 merges in rank order (line 1 = rank 0). The
    byte-to-unicode table maps each of the 256 bytes to a printable character so that
    merges can be written as text.
    '''),
    code('''
    import gzip
    vocab_path = os.path.join(ROOT, "build", "vocab", "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(vocab_path, "rt", encoding="utf-8").read().split("\\n")
    merges = [tuple(l.split()) for l in lines[1:49152 - 256 - 2 + 1]]
    rank = {m: i for i, m in enumerate(merges)}

    def bytes_to_unicode():
        bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b); cs.append(256 + n); n += 1
        return dict(zip(bs, map(chr, cs)))
    b2u = bytes_to_unicode()

    def bpe_steps(word):
        """-> list of symbol lists, one per merge (the first: bytes)."""
        w = [b2u[b] for b in word.encode("utf-8")]
        w[-1] += "</w>"
        steps = [list(w)]
        while len(w) > 1:
            pairs = [(rank.get((a, b), 1 << 30), a, b) for a, b in zip(w, w[1:])]
            r, a, b = min(pairs)
            if r == 1 << 30:
                break
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b); i += 2
                else:
                    out.append(w[i]); i += 1
            w = out
            steps.append(list(w))
        return steps

    def draw_steps(word, ax):
        steps = bpe_steps(word)
        for row, syms in enumerate(steps):
            xpos = 0
            for s in syms:
                wdt = len(s.replace("</w>", "_"))
                ax.add_patch(plt.Rectangle((xpos, -row), wdt - 0.1, 0.8, color=plt.cm.tab20(sum(map(ord, s)) % 20)))
                ax.text(xpos + wdt / 2, -row + 0.4, s.replace("</w>", "·"), ha="center", va="center", fontsize=9)
                xpos += wdt
        ax.set_xlim(-0.2, max(len(word) + 1, 4)); ax.set_ylim(-len(steps) + 0.5, 1)
        ax.set_title(f"{word!r}: {len(steps) - 1} merges"); ax.axis("off")

    words = ["photograph", "diffusion", "unbelievably", "astronaut"]
    fig, axes = plt.subplots(1, len(words), figsize=(16, 4.5))
    for w, a in zip(words, axes):
        draw_steps(w, a)
    plt.suptitle("each row: the word after one more merge (· marks </w>)"); plt.tight_layout(); plt.show()
    '''),
    code('''
    # The Python loop and the C tokenizer agree (lower-case words, no cleaning needed).
    test_words = "a photograph of an astronaut riding a horse in photorealistic detail trending on artstation unbelievably diffusion".split()
    for w in test_words:
        assert bpe_steps(w)[-1] == tok.pieces(w), (w, bpe_steps(w)[-1], tok.pieces(w))
    print(f"{len(test_words)} words: Python BPE == C BPE")
    '''),
    md('''
    ## The 77 ids CLIP sees
    `[SOT] + ids[:75] + [EOT] + padding` — SD1 pads with EOT (49407), SD2 with 0.
    '''),
    code('''
    ids = tok.context(tok.encode("a photograph of an astronaut riding a horse"))
    fig, ax = plt.subplots(figsize=(14, 1.6))
    kind = np.array([0 if i == tok.SOT else 2 if i == tok.EOT else 1 for i in ids])
    ax.imshow(kind[None], cmap="Set2", aspect="auto")
    for j, i in enumerate(ids[:12]):
        ax.text(j, 0, tok.piece(i).replace("</w>", "") if i < 49406 else ("SOT" if i == tok.SOT else "EOT"),
                ha="center", va="center", fontsize=7, rotation=90)
    ax.set_yticks([]); ax.set_xlabel("position (0..76): SOT, tokens, EOT, padding (EOT)")
    plt.show()
    '''),
    code('''
    # How often does a word become one token? Merge ranks used by a sentence.
    text = ("a beautiful painting of a lighthouse on a rocky coast at sunset, dramatic clouds, "
            "oil on canvas, highly detailed, by a famous impressionist painter")
    ranks = []
    for w in text.replace(",", " ,").split():
        st = bpe_steps(w)
        for a, b in zip(st, st[1:]):
            ranks += [rank[(x, y)] for x, y in zip(a, a[1:]) if x + y in b and (x, y) in rank][:1]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3))
    ax[0].hist(ranks, bins=30); ax[0].set_xlabel("merge rank"); ax[0].set_title("ranks of the merges used")
    lens = [len(tok.encode(w)) for w in text.replace(",", " ").split()]
    ax[1].hist(lens, bins=np.arange(0.5, max(lens) + 1.5)); ax[1].set_xlabel("tokens per word")
    ax[1].set_title("most English words are one token")
    plt.tight_layout(); plt.show()
    '''),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["03-clip"] = [
    md('''
    # 03 — CLIP text encoder: attention patterns and embedding similarity

    Chapter: [docs/03-clip-and-checkpoints.md](../docs/03-clip-and-checkpoints.md) ·
    paper: LDM sec. 3.3 and 4.3.1 — the context `τ_θ(y)` [77, D] that the UNet's
    cross-attention reads. Exercises [3](../docs/exercises/03-clip-layer/README.md) and [4](../docs/exercises/04-causal-attention/README.md)
    write a CLIP layer and the causal attention used here.

    The attention probabilities are not kept by `ldm/clip.c` (the op is fused). They are
    recomputed here in NumPy from the layer inputs the C code dumps (`LDM_DUMP`) and the
    weights it loaded — and the NumPy layer is checked against the C layer's output.
    '''),
    SETUP, TINY_NOTE,
    code('''
    m = L.Model(MODEL, CONFIG_DIR, vae=False)
    tok = L.Tokenizer()
    cfg = m.m.clip
    print(f"{m.family}, D={cfg.hidden_size}, layers={m.clip.n_layers}, heads={cfg.num_attention_heads}, vocab={cfg.vocab_size}")
    prompt = PROMPT
    ids = np.array([m.context_ids(tok, prompt)])
    ctx, d = L.dumps(m.encode_ids, ids)
    print("context", ctx.shape, "dumped:", sorted(d)[:3], "...")
    '''),
    code('''
    T_ = L.to_numpy
    def ln(x, w, b, eps): mu = x.mean(-1, keepdims=True); return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b
    import math
    erf = np.vectorize(math.erf)
    act = (lambda x: x / (1 + np.exp(-1.702 * x))) if cfg.hidden_act == 0 else (lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))))

    def clip_layer(x, ly, NH):
        """One CLIPEncoderLayer in NumPy -> (output, attention probabilities [NH,T,T])."""
        Tn, D = x.shape[-2:]; hs = D // NH
        h = ln(x, T_(ly.ln1_w), T_(ly.ln1_b), cfg.layer_norm_eps)
        q, k, v = (h @ T_(getattr(ly, n + "_w")).T + T_(getattr(ly, n + "_b")) for n in "qkv")
        split = lambda a: a.reshape(Tn, NH, hs).transpose(1, 0, 2)
        s = split(q) @ split(k).transpose(0, 2, 1) / np.sqrt(hs)
        s = np.where(np.tril(np.ones((Tn, Tn), bool)), s, -np.inf)          # the causal mask
        p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
        a = (p @ split(v)).transpose(1, 0, 2).reshape(Tn, D)
        x = x + a @ T_(ly.o_w).T + T_(ly.o_b)
        h = ln(x, T_(ly.ln2_w), T_(ly.ln2_b), cfg.layer_norm_eps)
        x = x + act(h @ T_(ly.fc1_w).T + T_(ly.fc1_b)) @ T_(ly.fc2_w).T + T_(ly.fc2_b)
        return x, p

    x = d["text_model.embeddings"][0]
    probs = []
    for i in range(m.clip.n_layers):
        x_np, p = clip_layer(x, m.clip.layers[i], cfg.num_attention_heads)
        x_c = d[f"text_model.encoder.layers.{i}"][0]
        print(f"layer {i:2d}: max |NumPy - C| = {np.abs(x_np - x_c).max():.2e}")
        assert np.abs(x_np - x_c).max() <= 1e-3 * max(1.0, np.abs(x_c).max())
        probs.append(p)
        x = x_c
    '''),
    code('''
    n_tok = len(tok.encode(prompt)) + 2   # SOT ... EOT
    labels = ["SOT"] + [tok.piece(i).replace("</w>", "") for i in tok.encode(prompt)] + ["EOT"]
    layers = sorted(set([0, len(probs) // 2, len(probs) - 1]))
    NH = cfg.num_attention_heads
    heads = list(range(min(NH, 4)))
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(3.2 * len(heads), 3.2 * len(layers)), squeeze=False)
    for r, li in enumerate(layers):
        for c, h in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(probs[li][h, :n_tok, :n_tok], cmap="magma", vmin=0, vmax=1)
            ax.set_title(f"layer {li}, head {h}", fontsize=9)
            ax.set_xticks(range(n_tok)); ax.set_xticklabels(labels, rotation=90, fontsize=7)
            ax.set_yticks(range(n_tok)); ax.set_yticklabels(labels, fontsize=7)
    plt.suptitle("CLIP self-attention (query rows, key columns): lower-triangular by the causal mask")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## Embedding similarity
    Cosine similarity between prompts, using the context row at the EOT token, and
    between the tokens of one prompt.

    Two things to keep in mind with the tiny model. Its text encoder was trained from
    scratch, *jointly with the UNet* and only through the denoising loss
    ([docs/11](../docs/11-train-your-own.md)): there is no contrastive image–text loss
    as in CLIP, so no row is trained to be "the" sentence embedding. The EOT row is
    used here because, under the causal mask, it is the first position that has read
    the whole prompt. And it only ever saw captions of its grammar
    (`tools/train/dataset.py`: colour, shape, size, place, background, in English and
    Japanese). A prompt like "a photo of a cat" is made of tokens whose embeddings were
    never updated from their random start, so comparing such prompts would measure
    nothing the model learned; the prompts below are all from its domain, chosen so
    that pairs differ in one thing (the colour, the shape, the place) or not at all
    (the same scene in English and Japanese).
    '''),
    code('''
    tiny = os.path.abspath(MODEL) == os.path.abspath(L.TINY_MODEL)
    prompts = (["a red circle on the left", "左に赤い丸", "a blue circle on the left",
                "a red square on the left", "a red circle on the right",
                "a red circle on the left, on a black background",
                "a blue square above a yellow triangle", "黄色い三角の上に青い四角"] if tiny else
               ["a photo of a cat", "a photo of a dog", "a painting of a cat",
                "a red sports car", "a blue sports car", "an empty room"])
    rows = []
    for p in prompts:
        c = m.encode_prompt(tok, p)[0]
        rows.append(c[len(tok.encode(p)) + 1])          # the EOT position
    E = np.array(rows); E /= np.linalg.norm(E, axis=1, keepdims=True)
    sim = E @ E.T
    tokc = ctx[0, :n_tok] / np.linalg.norm(ctx[0, :n_tok], axis=1, keepdims=True)
    fig, ax = plt.subplots(1, 2, figsize=(13, 5))
    im = ax[0].imshow(sim, cmap="coolwarm", vmin=-1, vmax=1)
    ax[0].set_xticks(range(len(prompts))); ax[0].set_xticklabels(range(len(prompts)))
    # matplotlib's default font has no Japanese glyphs: those prompts are named by number
    names = [p if p.isascii() else "(" + p + ")" for p in prompts]
    ticks = [f"{i}: {p}" if p.isascii() else f"{i}: the same in Japanese" for i, p in enumerate(prompts)]
    for i, p in enumerate(names):
        print(f"{i}: {p}")
    ax[0].set_yticks(range(len(prompts))); ax[0].set_yticklabels(ticks, fontsize=8)
    for i in range(len(prompts)):
        for j in range(len(prompts)):
            ax[0].text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6)
    ax[0].set_title("prompt vs prompt (EOT row)"); plt.colorbar(im, ax=ax[0])
    im = ax[1].imshow(tokc @ tokc.T, cmap="coolwarm", vmin=-1, vmax=1)
    ax[1].set_xticks(range(n_tok)); ax[1].set_xticklabels(labels, rotation=90, fontsize=8)
    ax[1].set_yticks(range(n_tok)); ax[1].set_yticklabels(labels, fontsize=8)
    ax[1].set_title("token vs token in one prompt"); plt.colorbar(im, ax=ax[1])
    plt.tight_layout(); plt.show()
    if tiny:
        print(f"same scene, English vs Japanese:      {sim[0, 1]:.2f}  (prompts 0, 1)")
        print(f"one word changed (colour/shape/place): {sim[0, 2]:.2f} {sim[0, 3]:.2f} {sim[0, 4]:.2f}  (0 vs 2, 3, 4)")
        print(f"two-object scene, English vs Japanese: {sim[6, 7]:.2f}  (prompts 6, 7)")
    '''),
    md('''
    What the printout shows for the tiny model (change the prompts and rerun to probe
    further): the same one-object scene in English and in Japanese gives nearly the same
    EOT row; changing the *colour* moves it the most, the shape less, the place hardly
    at all — so the place must travel in the other rows of the context, which the UNet's
    cross-attention reads as well (notebook 05 shows where each token is read). The
    two-object scene in its two languages is far apart: Japanese names the objects in
    the opposite order, and the EOT row of a causal encoder is a function of the order
    it read the words in.
    '''),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["04-vae"] = [
    md('''
    # 04 — The autoencoder: latent channels and the round trip

    Chapter: [docs/04-vae.md](../docs/04-vae.md) · exercises
    [5 (posterior)](../docs/exercises/05-vae-posterior/README.md),
    [6 (KL)](../docs/exercises/06-vae-kl/README.md) · paper: LDM sec. 3.1 "Perceptual Image
    Compression" — `z = E(x)`, `x̃ = D(z)`, downsampling factor f (8 for SD; 2 for the
    tiny test VAE), KL-regularised latent (App. G).
    '''),
    SETUP, TINY_NOTE,
    code('''
    m = L.Model(MODEL, CONFIG_DIR)
    vc = m.m.vae
    tiny = os.path.abspath(MODEL) == os.path.abspath(L.TINY_MODEL)
    side = 64 if tiny else 32 * m.factor    # 64 px for the tiny VAE, 256 px for SD
    # The input: for the tiny VAE a scene of its own training domain (flat shapes drawn by
    # tools/train/dataset.py), for a real SD VAE a photograph.
    x, caption = L.shape_scene("blue", "square", "right") if tiny else (L.test_image(side), "a photograph")
    print(f"input: {caption!r}")            # [1,3,side,side] in [-1,1]
    moments = m.vae_moments(x)              # [1, 2Z, h, w] = (mean, logvar)
    Z = vc.latent_channels
    mean, logvar = moments[:, :Z], moments[:, Z:]
    z = m.vae_encode(x)                     # mean * scaling_factor
    print(f"image {x.shape} -> moments {moments.shape} -> latent {z.shape}, f = {m.factor}, scaling_factor {vc.scaling_factor}")
    kl = 0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar)
    print(f"KL(q(z|x) || N(0,I)) = {kl:.1f} nats")
    '''),
    code('''
    fig, ax = plt.subplots(1, Z + 1, figsize=(3 * (Z + 1), 3))
    ax[0].imshow(L.to_rgb(x[0])); ax[0].set_title(f"input {side}x{side}")
    for c in range(Z):
        ax[c + 1].imshow(z[0, c], cmap="RdBu_r"); ax[c + 1].set_title(f"latent channel {c}")
    for a in ax: a.axis("off")
    plt.tight_layout(); plt.show()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3))
    for c in range(Z):
        ax[0].hist(z[0, c].ravel(), bins=40, histtype="step", label=f"channel {c}")
    ax[0].legend(); ax[0].set_title("scaled latent values (SD aims at ~unit variance)")
    ax[1].hist(np.exp(0.5 * logvar).ravel(), bins=40); ax[1].set_title("posterior std exp(logvar/2)")
    plt.tight_layout(); plt.show()
    '''),
    code('''
    rec = m.vae_decode(z)
    err = np.abs(rec - x)
    psnr = 10 * np.log10(4 / np.mean((rec - x) ** 2))
    fig, ax = plt.subplots(1, 3, figsize=(10, 3.5))
    ax[0].imshow(L.to_rgb(x[0])); ax[0].set_title("x")
    ax[1].imshow(L.to_rgb(rec[0])); ax[1].set_title("D(E(x))")
    im = ax[2].imshow(err[0].mean(0), cmap="inferno"); ax[2].set_title(f"|error|, PSNR {psnr:.1f} dB")
    plt.colorbar(im, ax=ax[2])
    for a in ax: a.axis("off")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## In and out of the training domain
    An autoencoder reconstructs what looks like its training data. The tiny VAE saw only
    flat shapes on plain backgrounds: scenes of the training set come back with the right
    shapes, colours and places, though with soft edges and rounded corners (about
    22–25 dB PSNR: under a million parameters, and no perceptual or adversarial loss,
    [docs/11](../docs/11-train-your-own.md)). A photograph (matplotlib's sample picture,
    shrunk to 64×64) is *outside* its domain and comes back as a few colour blobs
    (about 11 dB): the latent has no room for what the VAE never had to encode. (SD's
    VAE, trained on photographs, reconstructs both.)
    '''),
    code('''
    def round_trip(img):
        r = m.vae_decode(m.vae_encode(img))
        return r, 10 * np.log10(4 / np.mean((r - img) ** 2))
    cases = [L.dataset_scene(i) for i in (0, 4, 8)] + [(L.test_image(side), "a photograph (out of domain)")]
    fig, ax = plt.subplots(2, len(cases), figsize=(3.2 * len(cases), 6.6))
    for j, (img, cap) in enumerate(cases):
        r, p = round_trip(img)
        ax[0, j].imshow(L.to_rgb(img[0])); ax[0, j].set_title(cap.replace(", on", ",\\non"), fontsize=8)
        ax[1, j].imshow(L.to_rgb(r[0])); ax[1, j].set_title(f"D(E(x)): PSNR {p:.1f} dB", fontsize=9)
        print(f"{p:5.1f} dB  {cap}")
    for a in ax.ravel(): a.axis("off")
    plt.tight_layout(); plt.show()
    '''),
    code('''
    # Shapes through the encoder and decoder, from the C dumps (LDM_DUMP).
    _, de = L.dumps(m.vae_encode, x)
    _, dd = L.dumps(m.vae_decode, z)
    fig, ax = plt.subplots(1, 2, figsize=(14, 4))
    for a, dump, title in ((ax[0], de, "encoder"), (ax[1], dd, "decoder")):
        names = [n for n in dump if dump[n].ndim == 4]
        a.bar(range(len(names)), [dump[n].shape[1] for n in names], color="tab:blue", label="channels")
        a2 = a.twinx(); a2.plot(range(len(names)), [dump[n].shape[-1] for n in names], "o-r", label="side (px)")
        a.set_xticks(range(len(names))); a.set_xticklabels([n.replace("vae.", "") for n in names], rotation=80, fontsize=7)
        a.set_ylabel("channels"); a2.set_ylabel("side"); a.set_title(title + ", blocks in execution order")
    plt.tight_layout(); plt.show()
    '''),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["05-unet"] = [
    md('''
    # 05 — The UNet: shapes per block and cross-attention maps

    Chapter: [docs/05-unet.md](../docs/05-unet.md) · exercises
    [7](../docs/exercises/07-timestep-embedding/README.md),
    [8](../docs/exercises/08-cross-attention/README.md),
    [9](../docs/exercises/09-unet-resblock/README.md) · paper: LDM sec. 3.3 (attention; eq. 3 is the conditional objective) —
    cross-attention `softmax(QKᵀ/√d)·V` with Q from the UNet's features and K, V from
    the prompt context.

    `ldm/unet.c` builds the network as a table of blocks; the bindings read that table
    and receive every block's output through the UNet's hook. The cross-attention maps
    are recomputed in NumPy from the block's input and the loaded weights, and the
    NumPy transformer block is checked against the C block's output.
    '''),
    SETUP, TINY_NOTE,
    code('''
    m = L.Model(MODEL, CONFIG_DIR, vae=False)
    tok = L.Tokenizer()
    uc = m.u.cfg
    h = uc.sample_size
    prompt = PROMPT
    ctx = m.encode_prompt(tok, prompt)
    x = L.randn(0, (1, uc.in_channels, h, h))
    outs = {}
    eps = m.unet(x, 500.0, ctx, hook=lambda name, a: outs.__setitem__(name, a))
    rows = m.blocks()
    print(f"{len(rows)} blocks, latent {x.shape} -> eps {eps.shape}; {m.u.n_params:,} parameters, {m.u.flops / 1e9:.3f} GFLOP")
    '''),
    code('''
    kinds = ["conv_in", "res", "attn", "down", "up", "out"]
    colors = dict(zip(kinds, plt.cm.tab10.colors))
    sides = [outs["unet." + r["name"]].shape[-1] if "unet." + r["name"] in outs else np.nan for r in rows]
    fig, ax = plt.subplots(3, 1, figsize=(14, 9), sharex=True)
    ax[0].bar(range(len(rows)), [r["cout"] for r in rows], color=[colors[r["kind"]] for r in rows])
    ax[0].set_ylabel("channels out")
    ax[1].plot(range(len(rows)), sides, "o-"); ax[1].set_ylabel("latent side"); ax[1].invert_yaxis()
    ax[1].set_title("the U: resolution per block (down, mid, up)")
    ax[2].bar(range(len(rows)), [r["flops"] / 1e6 for r in rows], color=[colors[r["kind"]] for r in rows])
    ax[2].set_ylabel("MFLOP")
    ax[2].set_xticks(range(len(rows))); ax[2].set_xticklabels([r["name"] for r in rows], rotation=90, fontsize=7)
    for k in kinds: ax[0].bar([0], [0], color=colors[k], label=k)
    ax[0].legend(ncol=6, fontsize=8)
    plt.tight_layout(); plt.show()
    '''),
    code('''
    # The timestep embedding the ResBlocks receive (sinusoidal, [cos | sin]).
    ts = np.arange(0, 1000, 5, dtype=np.float32)
    emb = m.timestep_embedding(ts)
    plt.figure(figsize=(10, 3)); plt.imshow(emb.T, aspect="auto", cmap="RdBu_r", extent=[0, 1000, emb.shape[1], 0])
    plt.xlabel("timestep t"); plt.ylabel("dimension"); plt.title("timestep embedding"); plt.colorbar(); plt.show()
    '''),
    md('''
    ## Cross-attention maps along a real sampling run
    For a transformer block (`Transformer2DModel`): GroupNorm → proj_in → [self-attention,
    **cross-attention**, GEGLU feed-forward] → proj_out, plus the residual. The
    cross-attention probabilities `softmax(QKᵀ/√d)` say, for every latent pixel (query),
    how much it reads each of the 77 context rows (keys) — one map per prompt token.

    The maps below come from an actual generation: the C Euler sampler, 20 steps,
    guidance 5, the prompt above. The network callback the sampler calls runs the C UNet
    with a hook that keeps every block's output for the conditional row. Afterwards the
    probabilities of each transformer block are recomputed in NumPy from the block's
    input (the output of the row before it in the table) and the loaded weights — `ldm/unet.c`
    does not keep them, the op is fused — and the NumPy block is checked against the
    C block's output at every step used.
    '''),
    code('''
    import math
    T_ = L.to_numpy
    erf = np.vectorize(math.erf)
    def ln(x, w, b, eps=1e-5): mu = x.mean(-1, keepdims=True); return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b
    def gn(x, G, eps, w, b):
        xg = x.reshape(x.shape[0], G, -1)
        y = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + eps)).reshape(x.shape)
        return y * w[None, :, None, None] + b[None, :, None, None]
    def mha(xq, xkv, a, NH):
        q, k, v = xq @ T_(a.q_w).T, xkv @ T_(a.k_w).T, xkv @ T_(a.v_w).T
        B_, Tq, D = q.shape; hs = D // NH
        sp = lambda t: t.reshape(B_, -1, NH, hs).transpose(0, 2, 1, 3)
        s = sp(q) @ sp(k).transpose(0, 1, 3, 2) / np.sqrt(hs)
        p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
        o = (p @ sp(v)).transpose(0, 2, 1, 3).reshape(B_, Tq, D)
        return o @ T_(a.out_w).T + T_(a.out_b), p

    def transformer_numpy(blk, x, ctx):
        \"\"\"Transformer2DModel in NumPy: x [B,C,H,W] -> (out, [cross-attention probs per depth]).\"\"\"
        tr = blk.tr; B_, Cc, H, W = x.shape
        hdn = gn(x, uc.norm_num_groups, 1e-6, T_(tr.norm_w), T_(tr.norm_b)).reshape(B_, Cc, H * W).transpose(0, 2, 1)
        hdn = hdn @ T_(tr.proj_in_w).reshape(tr.d, Cc).T + T_(tr.proj_in_b)
        maps = []
        for k in range(tr.depth):
            tb = tr.blocks[k]
            n = ln(hdn, T_(tb.norm1_w), T_(tb.norm1_b)); hdn = hdn + mha(n, n, tb.attn1, tr.heads)[0]
            n = ln(hdn, T_(tb.norm2_w), T_(tb.norm2_b)); o, p = mha(n, ctx, tb.attn2, tr.heads); hdn = hdn + o
            maps.append(p)
            n = ln(hdn, T_(tb.norm3_w), T_(tb.norm3_b)); f = n @ T_(tb.ff1_w).T + T_(tb.ff1_b)
            a_, g = np.split(f, 2, axis=-1)
            hdn = hdn + (a_ * 0.5 * g * (1 + erf(g / np.sqrt(2)))) @ T_(tb.ff2_w).T + T_(tb.ff2_b)
        o = hdn @ T_(tr.proj_out_w).reshape(Cc, tr.d).T + T_(tr.proj_out_b)
        return o.transpose(0, 2, 1).reshape(B_, Cc, H, W) + x, maps
    '''),
    code('''
    vae_m = L.Model(MODEL, CONFIG_DIR)                # the whole model, VAE included, to see the picture
    uncond = vae_m.encode_prompt(tok, "")
    lat_noise = L.randn(11, (1, uc.in_channels, h, h))
    record = []          # one entry per UNet call: (t, {block name: output for the conditional row})

    def unet_recording(x, t):
        \"\"\"The sampler's network (rows [uncond, cond]) that also keeps the block outputs.\"\"\"
        outs = {}
        eps = vae_m.unet(x, t, np.concatenate([uncond, ctx]),
                         hook=lambda name, a: outs.__setitem__(name, a[1:]))
        record.append((float(t[1]), outs))
        return eps

    STEPS, SCALE = 20, 5.0
    lat, nfe = L.sample("euler", lat_noise, unet_recording, steps=STEPS, cfg_scale=SCALE)
    image = L.to_rgb(vae_m.vae_decode(lat)[0])
    print(f"Euler, {STEPS} steps, guidance {SCALE}: {nfe} UNet calls of 2 rows, {len(record)} recorded")

    def cross_maps(outs):
        \"\"\"{attn block: head-averaged probabilities [H, W, 77]} for one UNet call.\"\"\"
        res = {}
        for i, r in enumerate(rows):
            if r["kind"] != "attn":
                continue
            out_np, maps = transformer_numpy(vae_m.block(r["name"]), outs["unet." + rows[i - 1]["name"]], ctx)
            out_c = outs["unet." + r["name"]]
            err = np.abs(out_np - out_c).max() / max(1e-6, np.abs(out_c).max())
            assert err < 1e-3, (r["name"], err)
            H, W = out_c.shape[-2:]
            res[r["name"]] = maps[0][0].mean(0).reshape(H, W, -1)
        return res

    show_steps = [0, 5, 10, STEPS - 1]
    step_maps = {k: cross_maps(record[k][1]) for k in show_steps}
    print(f"{len(step_maps[0])} transformer blocks x {len(show_steps)} steps recomputed in NumPy, "
          "all within 1e-3 of the C output")
    '''),
    code('''
    words = ["SOT"] + [tok.piece(i).replace("</w>", "") for i in tok.encode(prompt)] + ["EOT"]
    side = image.shape[0]
    def at_full_res(mp):
        \"\"\"Head-averaged maps of the blocks at the latent's full resolution, averaged.\"\"\"
        full = [v for v in mp.values() if v.shape[0] == h]
        return np.mean(full, 0)                        # [h, h, 77]
    pick = [w for w in ("red", "circle", "left") if w in words] or words[1:3]
    fig, axes = plt.subplots(len(show_steps), len(pick) + 1, figsize=(2.2 * (len(pick) + 1), 2.2 * len(show_steps)))
    for r_, k in enumerate(show_steps):
        t_k = record[k][0]
        m_k = at_full_res(step_maps[k])
        axes[r_, 0].imshow(image); axes[r_, 0].set_ylabel(f"step {k}\\nt = {t_k:.0f}", fontsize=9)
        for c_, w in enumerate(pick):
            a = axes[r_, c_ + 1]
            mp = m_k[:, :, words.index(w)]
            a.imshow(image)
            a.imshow(mp / mp.max(), cmap="inferno", alpha=0.6, vmin=0, vmax=1,
                     extent=(-0.5, side - 0.5, side - 0.5, -0.5), interpolation="bilinear")
            if r_ == 0: a.set_title(f"'{w}'", fontsize=10)
        axes[0, 0].set_title("generated image", fontsize=10)
    for a in axes.ravel(): a.set_xticks([]); a.set_yticks([])
    plt.suptitle(f"cross-attention at the {h}x{h} blocks (heads, blocks averaged)\\nover the output of {prompt!r}",
                 fontsize=10)
    plt.tight_layout(); plt.show()
    '''),
    code('''
    # Where is the object? The generated image's pixels that differ from its background,
    # at the latent's resolution; and how the map of each token lines up with it, per step.
    bg = np.median(np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]), 0)
    mask = (np.abs(image - bg).sum(-1) > 0.3).reshape(h, side // h, h, side // h).mean((1, 3))
    print(f"object covers {mask.mean():.0%} of the latent pixels")
    print("correlation of each token's map with the object mask, per step:")
    print("step    t   " + " ".join(f"{w:>7s}" for w in words))
    for k in show_steps:
        m_k = at_full_res(step_maps[k])
        cor = [np.corrcoef(m_k[:, :, j].ravel(), mask.ravel())[0, 1] for j in range(len(words))]
        print(f"{k:4d} {record[k][0]:5.0f}   " + " ".join(f"{c:7.2f}" for c in cor))
    mass = at_full_res(step_maps[STEPS - 1]).reshape(-1, 77).mean(0)
    print("share of the attention per key at the last step: " +
          ", ".join(f"{w} {mass[j]:.0%}" for j, w in enumerate(words)) +
          f", the {77 - len(words)} padding rows {mass[len(words):].sum():.0%}")
    '''),
    md('''
    What this run of the tiny model shows (the numbers above): the map of "red" lines up
    with the object already at the first step, t = 999, while the latent is still almost
    pure noise (correlation about 0.7) — where the circle goes is settled at the start —
    and sharpens to about 0.98 by the end. The maps of "circle", "on", "the", "left" look
    much like the map of "red": in a causal text encoder every row after "red" has read
    it (notebook 03's token-by-token similarity is close to 1 from "red" on), so this small
    model can take its prompt from any of those rows. And most of each pixel's attention
    goes to the padding rows (EOT repeated up to 77), which have read the whole prompt
    too. A map shows where a row of the context is *read*; with a causal encoder that is
    not the same as where one word is drawn.
    '''),
    code('''
    # Every token, every transformer block, at the last step (heads averaged; each map
    # scaled to its own maximum).
    mp = step_maps[STEPS - 1]
    names = list(mp)
    fig, axes = plt.subplots(len(names), len(words), figsize=(1.5 * len(words), 1.6 * len(names)), squeeze=False)
    for r_, name in enumerate(names):
        for j, w in enumerate(words):
            ax = axes[r_][j]; ax.imshow(mp[name][:, :, j], cmap="viridis"); ax.set_xticks([]); ax.set_yticks([])
            if r_ == 0: ax.set_title(w, fontsize=9)
            if j == 0: ax.set_ylabel(name.replace("_blocks", "").replace(".attentions", ""), fontsize=6)
    plt.suptitle(f"cross-attention per block at step {STEPS - 1}: where each prompt token is read"); plt.tight_layout(); plt.show()
    '''),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["06a-forward-process"] = [
    md('''
    # 06a — The forward process q(x_t | x_0) and the noise schedule

    Chapter: [docs/06-samplers.md](../docs/06-samplers.md) · exercise
    [10 (q_sample)](../docs/exercises/10-forward-process/README.md) · papers: DDPM (Ho et
    al. 2020) eq. 4, `q(x_t|x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I)`; LDM sec. 3.2 runs it on latents.
    '''),
    SETUP,
    code('''
    S = L.Schedule()                    # SD: scaled linear 0.00085..0.012, T = 1000 (samplers/schedule.c)
    t = np.arange(S.T)
    ab = S.alphas_cumprod
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.5))
    ax[0].plot(t, ab, label="ᾱ_t"); ax[0].plot(t, np.sqrt(ab), label="√ᾱ_t (signal)")
    ax[0].plot(t, np.sqrt(1 - ab), label="√(1−ᾱ_t) (noise)"); ax[0].legend(); ax[0].set_xlabel("t")
    ax[1].plot(t, 10 * np.log10(ab / (1 - ab))); ax[1].axhline(0, color="gray", lw=0.5)
    ax[1].set_ylabel("SNR (dB)"); ax[1].set_xlabel("t"); ax[1].set_title("SNR_t = ᾱ/(1−ᾱ) = 1/σ²")
    for kind in ("scaled_linear", "linear", "cosine"):
        b0, b1 = (0.00085, 0.012) if kind != "linear" else (1e-4, 0.02)
        ax[2].plot(t, L.Schedule(kind, b0, b1).alphas_cumprod, label=kind)
    ax[2].legend(); ax[2].set_title("ᾱ_t of three schedules"); ax[2].set_xlabel("t")
    plt.tight_layout(); plt.show()
    print(f"sigma range {S.sigmas[0]:.4f} .. {S.sigmas[-1]:.2f}; SNR at t=999: {ab[-1] / (1 - ab[-1]):.5f}")
    '''),
    code('''
    x0 = L.test_image(128)
    noise = L.randn(42, x0.shape)
    steps = [0, 50, 100, 200, 400, 600, 800, 999]
    xs = np.concatenate([S.q_sample(x0, noise, tt) for tt in steps])    # C: ldm_q_sample
    # the same by the formula, in NumPy
    want = np.stack([np.sqrt(ab[tt]) * x0[0] + np.sqrt(1 - ab[tt]) * noise[0] for tt in steps])
    print(f"max |C - NumPy| = {np.abs(xs - want).max():.2e}")
    fig, ax = plt.subplots(1, len(steps), figsize=(2.2 * len(steps), 2.6))
    for a, tt, img in zip(ax, steps, xs):
        a.imshow(L.to_rgb(img)); a.set_title(f"t={tt}\\nSNR {10*np.log10(ab[tt]/(1-ab[tt])):.0f} dB", fontsize=9); a.axis("off")
    plt.suptitle("q(x_t | x_0) in pixel space (SD does this to the VAE latent)"); plt.tight_layout(); plt.show()
    '''),
    code('''
    # Where the structure disappears: correlation of x_t with x_0, per t.
    corr = [np.corrcoef(S.q_sample(x0, noise, tt).ravel(), x0.ravel())[0, 1] for tt in t[::10]]
    plt.figure(figsize=(6, 3)); plt.plot(t[::10], corr); plt.plot(t, np.sqrt(ab) / np.sqrt(ab * x0.var() + (1 - ab)) * np.sqrt(x0.var()), "--")
    plt.xlabel("t"); plt.ylabel("corr(x_t, x_0)"); plt.title("measured (solid) vs predicted (dashed)"); plt.show()
    '''),
]

# ---------------------------------------------------------------------------
TOY = code('''
    # A toy data distribution whose exact denoiser is known: a mixture of Gaussians
    # in 2-D (8 modes on a ring, two classes). E[x_0 | x_sigma] in closed form.
    K = 8
    ang = 2 * np.pi * np.arange(K) / K
    MUS = 1.5 * np.stack([np.cos(ang), np.sin(ang)], 1)
    CLS = np.arange(K) % 2                       # class of each mode
    S2 = 0.1 ** 2                                # variance of each mode
    S = L.Schedule()

    def gmm_denoise(x, sigma, modes):
        var = S2 + sigma ** 2                    # [N,1]
        d2 = ((x[:, None, :] - MUS[None, modes]) ** 2).sum(-1)
        logr = -d2 / (2 * var)
        r = np.exp(logr - logr.max(1, keepdims=True)); r /= r.sum(1, keepdims=True)
        post = MUS[None, modes] + (S2 / var)[..., None] * (x[:, None, :] - MUS[None, modes])
        return (r[..., None] * post).sum(1)

    def toy_eps(x_in, t, modes=np.arange(K)):
        """The network of the samplers' interface: x_in = c_in x, fractional t -> eps."""
        sigma = np.array([S.t_to_sigma(float(tt)) for tt in t])[:, None]
        x = x_in * np.sqrt(sigma ** 2 + 1)       # c_in = 1/sqrt(sigma^2+1) = sqrt(abar)
        return (x - gmm_denoise(x, sigma, modes)) / sigma

    def toy_eps_cfg(x_in, t):
        """Rows [uncond..., cond...]: unconditional = all modes, conditional = class 1."""
        n = len(x_in) // 2
        return np.concatenate([toy_eps(x_in[:n], t[:n]), toy_eps(x_in[n:], t[n:], np.where(CLS == 1)[0])])

    def show_modes(ax):
        ax.scatter(*MUS.T, c=["tab:red" if c else "tab:blue" for c in CLS], marker="x", s=80, zorder=5)
        ax.set_aspect("equal"); ax.set_xlim(-2.5, 2.5); ax.set_ylim(-2.5, 2.5)
''')

NOTEBOOKS["06b-samplers"] = [
    md('''
    # 06b — Samplers: trajectories, predicted x₀, and equal-cost comparisons

    Chapter: [docs/06-samplers.md](../docs/06-samplers.md) · exercise
    [13 (DDIM update)](../docs/exercises/13-ddim-update/README.md) · papers: DDIM (Song et
    al. 2021) eq. 12/16; Karras et al. 2022 (Euler, Heun, σ schedules); DPM-Solver++
    (Lu et al. 2022).

    Every sampler here is the C code of `samplers/` called through `ldm_sample`; the
    network is a Python callback (`ctypes.CFUNCTYPE`). First a closed-form stand-in
    denoiser on 2-D data, where the right answer is known; then the tiny UNet.
    '''),
    SETUP, TOY,
    code('''
    print([s[0] for s in L.samplers()])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind in ("default", "karras", "exponential"):
        ax.semilogy(S.sigmas_for(20, kind)[:-1], "o-", label=kind)
    ax.set_xlabel("step"); ax.set_ylabel("σ"); ax.legend(); ax.set_title("20-step σ schedules")
    plt.show()
    '''),
    code('''
    B = 300
    noise = L.randn(1, (B, 2))
    traj, den = [], []
    x, nfe = L.sample("euler", noise, toy_eps, steps=25,
                      callback=lambda i, xi, di: (traj.append(xi), den.append(di)))
    sig = S.sigmas_for(25)
    traj = np.array([noise * sig[0]] + traj); den = np.array(den)
    fig, ax = plt.subplots(1, 2, figsize=(12, 6))
    for b in range(0, B, 3):
        ax[0].plot(*traj[:, b].T, lw=0.4, color="gray")
    ax[0].scatter(*x.T, s=6, zorder=4); show_modes(ax[0]); ax[0].set_xlim(-6, 6); ax[0].set_ylim(-6, 6)
    ax[0].set_title(f"Euler, 25 steps ({nfe} model calls): trajectories from σ={sig[0]:.1f}")
    for b in range(0, 12):
        ax[1].plot(*den[:, b].T, "-o", ms=2, lw=0.8)
    show_modes(ax[1]); ax[1].set_title("predicted x₀ (denoised) per step, 12 particles")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## Euler vs Heun vs DPM++ 2M vs LMS at equal model evaluations
    Heun costs two network calls per step; the fair axis is the number of calls (NFE).
    The error is against a 1000-step Heun solution from the same noise (the ODE's answer).
    With the default σ schedule (uniform in t) the last step, σ_min ≈ 0.03 → 0, holds
    every sampler to first order (the lines run about parallel, Euler's lowest); with
    the Karras schedule (more steps at low σ) the higher-order solvers show their order
    (Heun's and DPM++ 2M's lines fall faster).
    '''),
    code('''
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, sk in zip(axes, ("", " Karras")):
        ref, _ = L.sample("heun" + sk, noise, toy_eps, steps=1000)
        for name in ("euler", "heun", "dpmpp_2m", "lms"):
            pts = []
            for n in (4, 8, 16, 32, 48):
                xn, nfe = L.sample(name + sk, noise, toy_eps, steps=n)
                pts.append((nfe, np.sqrt(np.mean((xn - ref) ** 2))))
            pts = np.array(pts); ax.loglog(pts[:, 0], pts[:, 1], "o-", label=name)
        ax.set_xlabel("model evaluations (NFE)"); ax.set_title(("default" if not sk else "Karras") + " σ schedule")
        ax.legend(); ax.grid(True, which="both", lw=0.3)
    axes[0].set_ylabel("RMS distance to the ODE solution"); plt.tight_layout(); plt.show()
    '''),
    code('''
    # One step in isolation: ldm_sample_* with n = 1 from sigma 2.0 to 1.0.
    x_s = noise[:50] * 2.0
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, c in (("euler", "tab:blue"), ("heun", "tab:orange"), ("dpmpp_2m", "tab:green")):
        xn, d0 = L.sampler_step(name, x_s, 2.0, 1.0, toy_eps)
        ax.quiver(*x_s.T, *(xn - x_s).T, color=c, angles="xy", scale_units="xy", scale=1, width=0.004, label=name)
    show_modes(ax); ax.set_xlim(-6, 6); ax.set_ylim(-6, 6); ax.legend(); ax.set_title("one step σ 2 → 1")
    plt.show()
    '''),
    md('''
    ## DDIM η sweep
    η = 0 is the deterministic DDIM; η = 1 is DDPM's posterior variance (eq. 16). Same
    noise, same 50 steps.
    '''),
    code('''
    etas = [0.0, 0.5, 1.0]
    fig, ax = plt.subplots(1, len(etas) + 1, figsize=(16, 4))
    for a, eta in zip(ax, etas):
        xe, _ = L.sample("ddim", noise, toy_eps, steps=50, eta=eta, seed=7)
        a.scatter(*xe.T, s=5); show_modes(a); a.set_title(f"DDIM η={eta}")
        dist = np.sqrt(((xe[:, None] - MUS[None]) ** 2).sum(-1)).min(1)
        ax[-1].hist(dist, bins=np.linspace(0, 0.3, 30), histtype="step", label=f"η={eta}")
    ax[-1].set_xlabel("distance to the nearest mode"); ax[-1].legend()
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## The same loop with the tiny UNet
    Predicted x₀ per step, decoded by the VAE.
    '''),
    TINY_NOTE,
    code('''
    m = L.Model(MODEL, CONFIG_DIR)
    tok = L.Tokenizer()
    ctx = m.encode_prompt(tok, PROMPT)
    h = m.u.cfg.sample_size
    lat_noise = L.randn(3, (1, m.u.cfg.in_channels, h, h))
    pred = "v" if m.prediction.startswith("v") else "eps"
    den = []
    lat, nfe = L.sample("euler", lat_noise, m.model_fn(ctx), steps=8, prediction=pred,
                        callback=lambda i, xi, di: den.append(di))
    imgs = [m.vae_decode(d)[0] for d in den]
    fig, ax = plt.subplots(1, len(imgs), figsize=(2 * len(imgs), 2.4))
    for i, (a, im) in enumerate(zip(ax, imgs)):
        a.imshow(L.to_rgb(im)); a.set_title(f"step {i}: D(x)", fontsize=9); a.axis("off")
    plt.suptitle(f"Euler, 8 steps, {nfe} UNet calls: the predicted x₀ decoded"); plt.tight_layout(); plt.show()
    '''),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["07-guidance-and-img2img"] = [
    md('''
    # 07 — Classifier-free guidance and img2img strength

    Chapter: [docs/07-pipeline.md](../docs/07-pipeline.md) and
    [docs/06-samplers.md](../docs/06-samplers.md) (the model wrapper) · papers: Ho & Salimans 2022 (classifier-free guidance,
    `ε̃ = ε(∅) + s·(ε(c) − ε(∅))`); SDEdit (Meng et al. 2022) for img2img.

    Both are composed here from the modules (UNet, samplers, VAE) through the bindings,
    exactly as `ldm/pipeline.c` composes them: guidance is the sampler's model wrapper
    (`ldm_denoiser`, rows `[uncond..., cond...]`), img2img starts `ldm_sample` part-way
    down the schedule from the noised latent of an image.
    '''),
    SETUP, TOY,
    code('''
    # Guidance on the toy: unconditional = all 8 modes, condition = the red class.
    noise = L.randn(5, (300, 2))
    scales = [0.0, 1.0, 3.0, 8.0]
    fig, ax = plt.subplots(1, len(scales), figsize=(16, 4))
    for a, s in zip(ax, scales):
        xs, nfe = L.sample("euler", noise, toy_eps_cfg, steps=30, cfg_scale=s)
        a.scatter(*xs.T, s=5); show_modes(a); a.set_title(f"scale s={s} ({nfe} calls of 2 rows)")
    plt.suptitle("s=0: unconditional; s=1: the conditional model; s>1: pushed beyond it"); plt.tight_layout(); plt.show()
    '''),
    code('''
    # img2img on the toy: start from blue-class points, noised to `strength`, sample back.
    init = MUS[np.zeros(300, int)] + 0.03 * L.randn(6, (300, 2))
    fig, ax = plt.subplots(1, 4, figsize=(16, 4))
    n = 20
    for a, st in zip(ax, (0.2, 0.5, 0.8, 1.0)):
        xs, _ = L.sample("euler", noise, toy_eps, steps=n, init=init, start_step=n - int(st * n))
        a.scatter(*xs.T, s=5); show_modes(a); a.set_title(f"strength {st}: {int(st * n)} of {n} steps")
    plt.suptitle("img2img: the higher the strength, the further from the init"); plt.tight_layout(); plt.show()
    '''),
    TINY_NOTE,
    code('''
    m = L.Model(MODEL, CONFIG_DIR)
    tok = L.Tokenizer()
    pred = "v" if m.prediction.startswith("v") else "eps"
    prompt = PROMPT
    c, u = m.encode_prompt(tok, prompt), m.encode_prompt(tok, "")
    h = m.u.cfg.sample_size
    lat_noise = L.randn(11, (1, m.u.cfg.in_channels, h, h))
    scales = [1.0, 3.0, 7.5, 12.0]
    fig, ax = plt.subplots(1, len(scales), figsize=(3 * len(scales), 3.3))
    for a, s in zip(ax, scales):
        lat, nfe = L.sample("dpmpp_2m", lat_noise, m.model_fn(c, u), steps=10, cfg_scale=s, prediction=pred)
        a.imshow(L.to_rgb(m.vae_decode(lat)[0])); a.set_title(f"guidance {s}"); a.axis("off")
    plt.suptitle(f"classifier-free guidance sweep, same seed: {prompt!r}"); plt.tight_layout(); plt.show()
    '''),
    code('''
    side = h * m.factor
    # The init image: for the tiny model a scene of its own domain (tools/train/dataset.py)
    # that the prompt does not describe; for a real SD model a photograph.
    tiny = os.path.abspath(MODEL) == os.path.abspath(L.TINY_MODEL)
    img, init_caption = L.shape_scene("blue", "square", "right") if tiny else (L.test_image(side), "a photograph")
    print(f"init image: {init_caption!r}; prompt: {prompt!r}")
    init_lat = m.vae_encode(img)
    strengths = [0.2, 0.4, 0.6, 0.8, 1.0]
    n = 10
    fig, ax = plt.subplots(1, len(strengths) + 1, figsize=(3 * (len(strengths) + 1), 3.3))
    ax[0].imshow(L.to_rgb(img[0])); ax[0].set_title("init image"); ax[0].axis("off")
    for a, st in zip(ax[1:], strengths):
        lat, nfe = L.sample("euler", lat_noise, m.model_fn(c, u), steps=n, cfg_scale=7.5, prediction=pred,
                            init=init_lat, start_step=n - int(st * n))
        a.imshow(L.to_rgb(m.vae_decode(lat)[0])); a.set_title(f"strength {st} ({nfe} calls)"); a.axis("off")
    plt.suptitle(f"img2img strength sweep: init {init_caption!r}, prompt {prompt!r}"); plt.tight_layout(); plt.show()
    '''),
    md('''
    ## The same through `ldm/pipeline.c`
    `ldm_generate` is what `sd txt2img` / `sd img2img` run: A1111 prompt syntax and
    75-token chunks, guidance, the sampler loop, the VAE. For a plain prompt it must
    give exactly the loop composed above, to the bit.
    '''),
    code('''
    pl = L.Pipeline(MODEL, CONFIG_DIR)
    W_ = H_ = h * m.factor
    rgb, lat_p = pl.generate(prompt, "", W_, H_, sampler="euler", steps=10, cfg_scale=7.5, seed=11, eta=0.0)
    lat_c, _ = L.sample("euler", lat_noise, m.model_fn(c, u), steps=10, cfg_scale=7.5, prediction=pred)
    print(f"pipeline vs composed latent: max |diff| = {np.abs(lat_p - lat_c).max():.2e}")
    assert np.allclose(lat_p, lat_c, rtol=1e-5, atol=1e-5 * np.abs(lat_c).max())

    fig, ax = plt.subplots(2, 5, figsize=(15, 6.5))
    for a, s in zip(ax[0], [1.0, 2.0, 4.0, 7.5, 12.0]):
        im, _ = pl.generate(prompt, "", W_, H_, sampler="DPM++ 2M Karras", steps=12, cfg_scale=s, seed=11)
        a.imshow(im[0]); a.set_title(f"ldm_generate, guidance {s}", fontsize=9); a.axis("off")
    init_u8 = np.round(L.to_rgb(img[0]) * 255).astype(np.uint8)
    for a, st in zip(ax[1], [0.0, 0.25, 0.5, 0.75, 1.0]):
        im, _ = pl.generate(prompt, "", W_, H_, sampler="ddim", steps=20, cfg_scale=7.5, seed=11,
                            init=init_u8, strength=st)
        a.imshow(im[0]); a.set_title(f"img2img (DDIM), strength {st}", fontsize=9); a.axis("off")
    plt.tight_layout(); plt.show()
    pl.close()
    '''),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["10-compare-with-pytorch"] = [
    md('''
    # 10 — Comparing against PyTorch dumps, block by block

    How correctness is established ([docs/00-overview.md](../docs/00-overview.md)): every
    named intermediate is dumped by the C code (`LDM_DUMP=DIR` / `sd --dump DIR`) under
    the diffusers module path, and PyTorch forward hooks write the same names. Here the
    committed PyTorch dumps of the tiny test models (`tests/fixtures/unet/sd1/blocks`,
    `tests/fixtures/vae/tiny2/dump`, written by `tools/reference/fixtures_*.py`) are
    loaded beside the C ones and the error is plotted per block, in execution order.
    '''),
    SETUP,
    code('''
    # The PyTorch side: the committed dumps (`make fixtures` regenerates them with the
    # reference venv, `make reference-env`); nothing here needs torch.

    def compare(ref, got, order):
        rows = []
        for name in order:
            if name not in ref or name not in got:
                continue
            a, b = got[name].astype(np.float64), ref[name].astype(np.float64)
            if a.shape != b.shape:
                print(f"{name}: shape C {a.shape} vs PyTorch {b.shape}"); continue
            d = np.abs(a - b).max()
            cos = (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)
            rows.append((name, d, d / max(np.abs(b).max(), 1e-30), cos))
        return rows

    def plot_rows(rows, title):
        fig, ax = plt.subplots(figsize=(14, 4))
        ax.semilogy(range(len(rows)), [r[1] for r in rows], "o-", label="max |C − PyTorch|")
        ax.semilogy(range(len(rows)), [r[2] for r in rows], "s-", label="relative (÷ max |PyTorch|)")
        ax.axhline(1e-4, color="gray", ls="--", lw=0.8, label="block tolerance 1e-4")
        ax.set_xticks(range(len(rows))); ax.set_xticklabels([r[0] for r in rows], rotation=90, fontsize=7)
        ax.legend(); ax.set_title(title); plt.tight_layout(); plt.show()
        worst = max(rows, key=lambda r: r[2])
        print(f"{len(rows)} tensors; worst relative error {worst[2]:.2e} at {worst[0]}; min cosine {min(r[3] for r in rows):.8f}")
    '''),
    code('''
    fx = os.path.join(ROOT, "tests", "fixtures", "unet", "sd1")
    unet = L.UNetFolder(fx)
    x, t, c = (np.load(os.path.join(fx, f"b2_{n}.npy")) for n in ("latent", "t", "context"))
    got = {}
    out = unet.unet(x, t, c, hook=lambda name, a: got.__setitem__(name, a))
    ref = L.read_dump_dir(os.path.join(fx, "blocks"))
    exec_order = [n for n in got if n in ref]          # the order the C forward ran them
    rows = compare(ref, got, exec_order)
    rows.append(("output", *compare({"o": np.load(os.path.join(fx, "b2_out.npy"))}, {"o": out}, ["o"])[0][1:]))
    plot_rows(rows, "UNet (tiny SD1 layout, batch 2) vs diffusers UNet2DConditionModel")
    '''),
    code('''
    fv = os.path.join(ROOT, "tests", "fixtures", "vae", "tiny2")
    vae = L.VaeFolder(fv)
    xv = np.load(os.path.join(fv, "x.npy"))[:1]
    zin = np.load(os.path.join(fv, "latent_in.npy"))[:1] / vae.vf.cfg.scaling_factor
    _, got_e = L.dumps(vae.encoder_forward, xv)
    _, got_d = L.dumps(vae.decoder_forward, zin)
    ref = L.read_dump_dir(os.path.join(fv, "dump"))
    got = {**got_e, **got_d}
    order = [n for n in got if n in ref]               # execution order (files as written)
    plot_rows(compare(ref, got, order), "VAE (tiny2) encoder + decoder vs diffusers AutoencoderKL")
    '''),
]

# ---------------------------------------------------------------------------
NOTEBOOKS["11-toy-training"] = [
    md('''
    # 11 — Train a denoiser yourself: a toy lab in NumPy, sampled by the C samplers

    Chapter: [docs/11-train-your-own.md](../docs/11-train-your-own.md) · papers: DDPM (Ho
    et al. 2020) eq. 4 and 14; LDM (Rombach et al. 2022) eq. 1–2, the same objective on
    latents; min-SNR-γ weighting (Hang et al. 2023).

    `make train-tiny` needs PyTorch and hours. The objective it minimises fits in a few
    lines, though, and so does a network small enough to train on a laptop in seconds.
    Here: a 2-D data set (two moons), a small MLP `ε_θ(x_t, t)` with its backward pass
    written out in NumPy, trained twice — with the plain ε loss and with min-SNR-γ
    weighting (γ = 5) — and then sampled by the project's own C samplers
    (`samplers/`, called through `ldm_sample` with the MLP as the network callback),
    with a check that the samples land on the data.
    '''),
    code('''
    # One BLAS thread for NumPy (set before NumPy is loaded): this lab's matrices are
    # small (256 x 128), and on them starting threads costs more than it saves.
    import os
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    '''),
    SETUP,
    md('''
    ## The data
    Two interleaved half circles with a little Gaussian noise, scaled to about unit
    variance per axis — the scale the SD noise schedule was designed for (SD's latents
    are scaled by the VAE's `scaling_factor` for the same reason).
    '''),
    code('''
    def two_moons(n, rng, noise=0.06):
        a = rng.uniform(0, np.pi, n)
        upper = rng.integers(0, 2, n) == 0
        x = np.where(upper, np.cos(a), 1 - np.cos(a))
        y = np.where(upper, np.sin(a), 0.5 - np.sin(a))
        pts = np.stack([x, y], 1) + noise * rng.standard_normal((n, 2))
        return ((pts - [0.5, 0.25]) / [0.87, 0.5]).astype(np.float32)

    data = two_moons(4000, np.random.default_rng(123))       # the reference set for the checks
    print(f"mean {data.mean(0).round(3)}, std {data.std(0).round(3)}")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(*data.T, s=2, alpha=0.5); ax.set_aspect("equal"); ax.set_title("two moons, 4000 points")
    plt.show()
    '''),
    md('''
    ## The forward process and the objective
    The schedule is SD's (`samplers/schedule.c`: scaled-linear β, T = 1000). For a data
    point `x₀`, a step `t` and noise `ε ~ N(0, I)`:

    `x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε` (DDPM eq. 4), and the loss is
    `L = E_{x₀, ε, t} ‖ε − ε_θ(x_t, t)‖²` (DDPM eq. 14, "L_simple"; LDM eq. 1, and eq. 2
    with `x` replaced by the latent `z`).

    This `x_t` is exactly what the C samplers hand the network: they keep
    `x = x₀ + σ ε` and call it with `c_in·x`, `c_in = 1/√(σ² + 1) = √ᾱ`, and a
    (fractional) `t` — so a network trained on this loss plugs into every sampler unchanged.

    **min-SNR-γ** (Hang et al. 2023): `SNR(t) = ᾱ_t / (1 − ᾱ_t)`. Written as an error on
    `x₀`, the ε loss is `‖ε − ε_θ‖² = SNR(t)·‖x₀ − x̂₀‖²` — it puts large weights on
    the nearly clean steps. Min-SNR caps the `x₀` weight at γ: for ε-prediction the
    per-sample weight is `w(t) = min(SNR(t), γ) / SNR(t)`, 1 where SNR ≤ γ and below 1
    on the low-noise steps. γ = 5 is the paper's choice (and `--min-snr 5` in
    `tools/train/train_tiny.py`).
    '''),
    code('''
    S = L.Schedule()                                   # the C schedule
    ab = S.alphas_cumprod.astype(np.float32)
    snr = ab / (1 - ab)
    GAMMA = 5.0
    w_minsnr = np.minimum(snr, GAMMA) / snr

    x0 = data[:6]
    eps0 = L.randn(3, x0.shape)
    ts = [0, 100, 300, 600, 999]
    xt_c = np.stack([S.q_sample(x0, eps0, t) for t in ts])          # C: ldm_q_sample
    xt_np = np.stack([np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps0 for t in ts])
    print(f"q_sample, C vs the formula in NumPy: max |diff| = {np.abs(xt_c - xt_np).max():.1e}")

    fig, ax = plt.subplots(1, len(ts), figsize=(2.8 * len(ts), 2.9))
    for a, t in zip(ax, ts):
        xt = S.q_sample(data[:800], L.randn(4, (800, 2)), t)
        a.scatter(*xt.T, s=1); a.set_aspect("equal"); a.set_xlim(-3.5, 3.5); a.set_ylim(-3.5, 3.5)
        a.set_title(f"x_t, t = {t}  (SNR {snr[t]:.3g})", fontsize=9)
    plt.tight_layout(); plt.show()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.2))
    ax[0].semilogy(snr); ax[0].axhline(GAMMA, color="gray", ls="--", lw=0.8)
    ax[0].set_xlabel("t"); ax[0].set_title(f"SNR(t); dashed: γ = {GAMMA:g}")
    ax[1].plot(w_minsnr); ax[1].set_xlabel("t"); ax[1].set_ylim(0, 1.05)
    ax[1].set_title(f"min-SNR weight of the ε loss (1 from t = {np.argmax(snr <= GAMMA)} on)")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## The network, forward and backward
    `ε_θ(x_t, t)`: the 2 coordinates and a sinusoidal embedding of `t` (8 frequencies,
    sin and cos — the UNet's timestep embedding in miniature) go through three hidden
    layers of 128 SiLU units to 2 outputs. The backward pass is the chain rule, layer by
    layer; a finite-difference check on a few weights confirms it before any training.
    '''),
    code('''
    HID, NF = 128, 8
    FREQS = np.exp(np.linspace(0, np.log(200), NF)).astype(np.float32)

    def temb(t):
        a = (t / 1000.0)[:, None] * FREQS[None]
        return np.concatenate([np.sin(a), np.cos(a)], 1)

    def init_params(rng):
        sizes = [2 + 2 * NF, HID, HID, HID, 2]
        P = []
        for a, b in zip(sizes, sizes[1:]):
            P += [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), np.zeros(b, np.float32)]
        P[-2] *= 0.1                                   # start near eps = 0
        return P

    def forward(P, x, t, keep=False):
        h = np.concatenate([x, temb(t).astype(x.dtype)], 1)
        cache, n = [h], len(P) // 2
        for i in range(n):
            z = h @ P[2 * i] + P[2 * i + 1]
            if i < n - 1:
                s = 1 / (1 + np.exp(-z)); h = z * s        # SiLU
                cache += [(z, s), h]
            else:
                h = z
        return (h, cache) if keep else h

    def backward(P, cache, dy):
        # dL/dP from dL/dy
        G, g, n = [None] * len(P), dy, len(P) // 2
        for i in reversed(range(n)):
            G[2 * i], G[2 * i + 1] = cache[2 * i].T @ g, g.sum(0)
            if i > 0:
                z, s = cache[2 * i - 1]
                g = (g @ P[2 * i].T) * s * (1 + z * (1 - s))   # SiLU' = s (1 + z (1 - s))
        return G

    # finite-difference check in float64
    rng = np.random.default_rng(0)
    P64 = [p.astype(np.float64) for p in init_params(rng)]
    P64[-2] *= 10
    xc, tc, ec = rng.standard_normal((16, 2)), rng.uniform(0, 999, 16), rng.standard_normal((16, 2))
    loss_of = lambda P: ((forward(P, xc, tc) - ec) ** 2).mean()
    y, cache = forward(P64, xc, tc, keep=True)
    G = backward(P64, cache, 2 * (y - ec) / y.size)
    worst = 0.0
    for k, idx in [(0, (3, 5)), (2, (7, 1)), (4, (0, 9)), (6, (11, 1)), (5, (4,))]:
        Pp = [p.copy() for p in P64]; Pp[k][idx] += 1e-6
        Pm = [p.copy() for p in P64]; Pm[k][idx] -= 1e-6
        fd = (loss_of(Pp) - loss_of(Pm)) / 2e-6
        worst = max(worst, abs(fd - G[k][idx]) / max(abs(fd), 1e-8))
    print(f"backward vs finite differences: worst relative error {worst:.1e}")
    assert worst < 1e-5
    '''),
    md('''
    ## Training, twice
    Adam, batch 256, 4000 steps, the learning rate decayed on a cosine from 2·10⁻³;
    a fresh batch of moons, steps `t` (uniform over 0..999) and noise every step. The two
    runs differ only in the per-sample weight: 1, or `min(SNR, 5)/SNR`. A few seconds each.
    '''),
    code('''
    def train(weight, steps=4000, B=256, lr=2e-3, seed=1):
        rng = np.random.default_rng(seed)
        P = init_params(rng)
        m1 = [np.zeros_like(p) for p in P]; m2 = [np.zeros_like(p) for p in P]
        curve = []
        for k in range(steps):
            x0 = two_moons(B, rng)
            t = rng.integers(0, 1000, B)
            eps = rng.standard_normal((B, 2), dtype=np.float32)
            xt = np.sqrt(ab[t])[:, None] * x0 + np.sqrt(1 - ab[t])[:, None] * eps       # DDPM eq. 4
            y, cache = forward(P, xt, t.astype(np.float32), keep=True)
            w = weight[t]
            per = ((y - eps) ** 2).mean(1)                                           # ||eps - eps_theta||^2 / 2
            curve.append(((w * per).mean(), per.mean()))
            G = backward(P, cache, (2 / y.size) * w[:, None] * (y - eps))
            lr_k = lr * 0.5 * (1 + np.cos(np.pi * k / steps))
            for i in range(len(P)):                                                  # Adam
                m1[i] = 0.9 * m1[i] + 0.1 * G[i]; m2[i] = 0.999 * m2[i] + 0.001 * G[i] ** 2
                P[i] -= lr_k * (m1[i] / (1 - 0.9 ** (k + 1))) / (np.sqrt(m2[i] / (1 - 0.999 ** (k + 1))) + 1e-8)
        return P, np.array(curve)

    runs = {"plain ε loss": train(np.ones_like(snr)),
            f"min-SNR, γ={GAMMA:g}": train(w_minsnr.astype(np.float32))}
    for name, (P, curve) in runs.items():
        print(f"{name:16s} final loss (mean of the last 200 steps): weighted {curve[-200:, 0].mean():.4f}, "
              f"plain ε-MSE {curve[-200:, 1].mean():.4f}")
    '''),
    md('''
    ## Loss against t
    The trained networks evaluated on fresh samples at fixed `t` (no weighting): the ε
    error, and the same error expressed on `x₀` (`‖x₀ − x̂₀‖² = ‖ε − ε_θ‖² / SNR`).
    '''),
    code('''
    rng = np.random.default_rng(77)
    t_grid = np.arange(0, 1000, 20)
    x0e, epe = two_moons(2000, rng), rng.standard_normal((2000, 2), dtype=np.float32)
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    k = 50
    for name, (P, curve) in runs.items():
        ax[0].semilogy(np.convolve(curve[:, 0], np.ones(k) / k, "valid"), label=name + " (as trained)")
        mse = []
        for t in t_grid:
            xt = np.sqrt(ab[t]) * x0e + np.sqrt(1 - ab[t]) * epe
            mse.append(((forward(P, xt, np.full(len(xt), t, np.float32)) - epe) ** 2).mean())
        mse = np.array(mse)
        ax[1].semilogy(t_grid, mse, label=name)
        ax[2].semilogy(t_grid, mse / snr[t_grid], label=name)
        runs[name] = (P, curve, mse)
    ax[0].set_xlabel("training step"); ax[0].set_title(f"training loss ({k}-step mean)"); ax[0].legend(fontsize=8)
    ax[1].set_xlabel("t"); ax[1].set_title("ε error ‖ε − ε_θ‖²/2 at fixed t"); ax[1].legend(fontsize=8)
    ax[2].set_xlabel("t"); ax[2].set_title("the same on x₀: ‖x₀ − x̂₀‖²/2"); ax[2].legend(fontsize=8)
    a2 = ax[1].twinx(); a2.plot(w_minsnr, color="gray", ls=":", lw=1); a2.set_ylim(0, 1.05)
    a2.set_ylabel("min-SNR weight (dotted)", color="gray")
    plt.tight_layout(); plt.show()
    lo = t_grid < 100
    for name, (P, curve, mse) in runs.items():
        print(f"{name:16s} mean ε error for t < 100: {mse[lo].mean():.3f}; for t >= 100: {mse[~lo].mean():.3f}")
    '''),
    md('''
    ## Sampling with the project's C samplers
    `L.sample` runs `ldm_sample` (samplers/sampler.c) — the loop `sd txt2img` runs — with
    the MLP as the network: a Python function behind a `ctypes.CFUNCTYPE` callback of type
    `ldm_model_fn`, called with `(c_in·x, t)` and returning ε. Same noise for both models
    and all samplers.
    '''),
    code('''
    noise = L.randn(0, (2000, 2))
    samplers_used = [("euler", 50), ("dpmpp_2m", 20), ("ddim", 50)]
    samples = {}
    fig, ax = plt.subplots(len(runs), len(samplers_used), figsize=(4.2 * len(samplers_used), 4 * len(runs)))
    for r, (name, (P, _, _)) in enumerate(runs.items()):
        net = lambda x, t, P=P: forward(P, x, t.astype(np.float32))
        for c, (sampler, n) in enumerate(samplers_used):
            xs, nfe = L.sample(sampler, noise, net, steps=n)
            samples[name, sampler] = xs
            a = ax[r, c]
            a.scatter(*data.T, s=1, color="lightgray", label="data")
            a.scatter(*xs.T, s=1, color="tab:red" if r else "tab:blue", label="samples")
            a.set_aspect("equal"); a.set_xlim(-2.6, 2.6); a.set_ylim(-2.6, 2.6)
            a.set_title(f"{name}: {sampler}, {nfe} calls", fontsize=9)
    ax[0, 0].legend(markerscale=6, fontsize=8)
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## The check
    Mean and covariance of the samples against the data's, and — since a Gaussian with
    the data's mean and covariance would pass those — the distance from each sample to
    its nearest data point, against the same for such a Gaussian. The cell fails (and
    `make notebooks` with it) if any sampler's samples miss. (The mean of 2000 samples
    moves by a few hundredths with the noise seed alone: the ODE samplers map the
    noise's own sample mean along.)
    '''),
    code('''
    def nn_dist(x):
        d2 = (x ** 2).sum(1)[:, None] - 2 * x @ data.T + (data ** 2).sum(1)[None]
        return np.sqrt(np.maximum(d2.min(1), 0))

    mu, cov = data.mean(0), np.cov(data.T)
    gauss = np.random.default_rng(5).multivariate_normal(mu, cov, 2000).astype(np.float32)
    base = np.median(nn_dist(gauss))
    print(f"{'':34s}  |Δmean|  max|Δcov|  median distance to the data")
    print(f"{'a Gaussian with the same mean/cov':34s}  {'-':>6s}  {'-':>9s}  {base:.3f}")
    for (name, sampler), xs in samples.items():
        dm = np.abs(xs.mean(0) - mu).max()
        dc = np.abs(np.cov(xs.T) - cov).max()
        dn = np.median(nn_dist(xs))
        print(f"{name + ', ' + sampler:34s}  {dm:6.3f}  {dc:9.3f}  {dn:.3f}")
        assert dm < 0.1 and dc < 0.15 and dn < base / 3, (name, sampler, dm, dc, dn)
    print("all samples on the data distribution")
    '''),
    md('''
    ## What the lab shows
    - The ε objective of LDM eq. 1–2 is a regression on noise; a 35-thousand-parameter MLP
      learns it for a 2-D distribution in a few thousand steps, and the C samplers turn it
      into samples on the two moons — the same code path that draws the tiny model's
      pictures, with a different network behind the callback. Not perfectly: a few
      points land between the moons and the inner tips are thinner than in the data;
      more training steps or a wider network narrow the gap (try it).
    - The ε error is largest at small `t`: there the noise is a tiny part of `x_t` and
      predicting it means knowing `x₀` to within the noise level. On `x₀` the picture
      reverses — small `t` is easy. The plain ε loss gives those steps full weight;
      min-SNR-γ (dotted curve) gives them less, so that run's ε error at small `t` ends
      higher (printout above), with little change elsewhere.
    - On this toy that shows in the samples: the plain run's points sit a little closer to
      the moons (the median distances above). Min-SNR-γ was proposed to speed up the
      convergence of large image models, whose timesteps compete for one network's
      capacity; a lab this size can show the mechanism, not that benefit.

    Exercises: change `GAMMA`; train on `x₀`-prediction (the loss `SNR·‖x₀ − x̂₀‖²`) and
    compare (docs/11 exercise 6); sample with `"euler_a"` or fewer steps and watch the
    check; replace the moons by your own 2-D data.
    '''),
]


def build(name):
    """The notebook `name` from its cells (no outputs): what make_notebooks.py writes,
    and what run_notebooks.py compares a committed notebook's cells with."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [copy.deepcopy(c) for c in NOTEBOOKS[name]]   # shared cells (SETUP) get their own ids
    for i, c in enumerate(nb.cells):   # stable ids: regenerating gives the same file
        c["id"] = f"c{i:02d}"
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    return nb


# ---------------------------------------------------------------------------
NOTEBOOKS["13-concat-conditioning"] = [
    md('''
    # 13 — Conditioning by concatenation: inpainting and the x4 upscaler

    Chapter: [docs/13-concat-conditioning.md](../docs/13-concat-conditioning.md) · paper: LDM
    (Rombach et al. 2022) Sec. 3.3 (conditioning by concatenation), 4.4 (super-resolution),
    4.5 (inpainting); Ho et al. 2021 (noise conditioning augmentation).

    Two models take their image condition as extra UNet *input channels*:
    the inpainting UNet sees `[x_t (4) | m (1) | E(x ⊙ (1 − M)) (4)]` = 9 channels, the
    x4 upscaler `[z_t (4) | x_n (3)]` = 7 channels plus the noise level n as a class label.
    This notebook runs `sd inpaint` and `sd upscale` with `--dump`, reads the tensors the C
    pipeline built, and checks each against the equation computed here in NumPy.

    > **About the pictures.** Both models here are the *random-weight* test models of
    > `tests/fixtures/inpaint/model` (9-channel UNet) and `tests/fixtures/upscale/model`
    > (7-channel UNet, f=4 VAE), made only to check the code against diffusers. Their
    > outputs are **not meaningful images**: what is meaningful is how the inputs are
    > assembled — the mask, the masked image, their latents, the noised low-res image —
    > and that the C tensors equal the equations. Point `INPAINT_MODEL` / `UPSCALE_MODEL`
    > at real diffusers folders (SD inpainting, stable-diffusion-x4-upscaler) for pictures.
    '''),
    code('''
    # Setup: ldm_py for the dumps and the schedules; build/sd for the two pipelines (run `make` first).
    import os, sys, subprocess, tempfile
    ROOT = os.path.abspath("")
    while not os.path.exists(os.path.join(ROOT, "notebooks", "ldm_py.py")):
        ROOT = os.path.dirname(ROOT)
    sys.path.insert(0, os.path.join(ROOT, "notebooks"))
    os.chdir(ROOT)
    import numpy as np
    import matplotlib.pyplot as plt
    import ldm_py as L
    L.load()
    SD = os.environ.get("LDM_SD", os.path.join(ROOT, "build", "sd"))
    assert os.path.exists(SD), f"{SD}: build it first (make)"
    INPAINT_MODEL = os.environ.get("LDM_INPAINT_MODEL", "tests/fixtures/inpaint/model")
    UPSCALE_MODEL = os.environ.get("LDM_UPSCALE_MODEL", "tests/fixtures/upscale/model")
    WORK = tempfile.mkdtemp(prefix="ldm-nb13-")

    def sd(*args, dump):
        """Run `sd ARGS --dump DIR`; {name: array} of every intermediate it dumped."""
        d = os.path.join(WORK, dump)
        subprocess.run([SD, *args, "--dump", d], check=True, capture_output=True)
        return L.read_dump_dir(d)
    '''),
    md('''
    ## 1. Inpainting: the mask, the masked image, their latents

    `sd inpaint` on the 9-channel model, 2 DDIM steps, strength 1. The dumps hold the latent
    mask `m` [1,1,h,w], the masked-image latent [1,4,h,w], the start noise, and per step the
    UNet input `unet_in` [2B,9,h,w] (guidance rows: unconditional, conditional).
    '''),
    code('''
    init_png, mask_png = "tests/fixtures/pipeline/init.png", "tests/fixtures/inpaint/mask.png"
    d9 = sd("inpaint", "--ckpt", INPAINT_MODEL, "--init-img", init_png, "--mask", mask_png,
            "--prompt", "a red apple", "--ddim_steps", "2", "--n_samples", "1", "--seed", "3",
            "--outdir", os.path.join(WORK, "inpaint-out"), dump="inpaint9")
    for k in ("mask", "masked_latent", "noise", "step000/unet_in"):
        print(f"{k:18s} {d9[k].shape}")
    '''),
    md('''
    The mask as the pipeline reads it: gray L = (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16,
    M = [L/255 ≥ 0.5] at full size (1 = repaint), m[i,j] = M[8i, 8j] at latent size. The
    masked image sets the repainted pixels to 0 (mid-gray in [−1, 1]).
    '''),
    code('''
    img = plt.imread(init_png)[..., :3]                    # [64,64,3] in [0,1]
    rgb = np.round(plt.imread(mask_png)[..., :3] * 255).astype(np.uint32)
    Lum = (19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2] + 2**15) >> 16
    M = (Lum / 255.0 >= 0.5).astype(np.float32)            # [H,W], 1 = repaint
    m = M[::8, ::8]                                        # [h,w]: nearest at factor 8
    print("the C latent mask equals M[8i, 8j]:", np.array_equal(d9["mask"][0, 0], m))
    x = 2 * img - 1
    masked = x * (1 - M)[..., None]                        # x ⊙ (1 − M)
    fig, ax = plt.subplots(1, 4, figsize=(13, 3.4))
    ax[0].imshow(img); ax[0].set_title("init image x")
    ax[1].imshow(M, cmap="gray"); ax[1].set_title("mask M (white = repaint)")
    ax[2].imshow(masked / 2 + 0.5); ax[2].set_title("x ⊙ (1 − M)")
    ax[3].imshow(d9["mask"][0, 0], cmap="gray"); ax[3].set_title("m: latent mask [8,8]")
    for a in ax: a.axis("off")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## 2. The 9-channel UNet input

    `unet_in` row by row is the concatenation of the sampler's latent (scaled by c_in; DDIM's
    c_in is 1, and at strength 1 step 0's latent is the start noise), the latent mask and the
    masked-image latent — the same mask and masked latent for both guidance rows. The
    channel images below are random-model tensors: look at *where* the mask sits, not at
    what the latents "show".
    '''),
    code('''
    u = d9["step000/unet_in"]                              # [2B,9,h,w]: rows [uncond, cond]
    print("channels 0-3 = x_t (strength 1: the start noise):", np.array_equal(u[1, :4], d9["noise"][0]))
    print("channel 4    = m:", np.array_equal(u[1, 4], m))
    print("channels 5-8 = E(x ⊙ (1 − M)) · scaling_factor:", np.array_equal(u[1, 5:], d9["masked_latent"][0]))
    print("both guidance rows carry the same m and masked latent:", np.array_equal(u[0, 4:], u[1, 4:]))
    names = ["x_t 0", "x_t 1", "x_t 2", "x_t 3", "m", "E(masked) 0", "E(masked) 1", "E(masked) 2", "E(masked) 3"]
    fig, ax = plt.subplots(1, 9, figsize=(18, 2.4))
    for c in range(9):
        ax[c].imshow(u[1, c], cmap="gray" if c == 4 else "RdBu_r")
        ax[c].set_title(names[c], fontsize=9); ax[c].axis("off")
    plt.suptitle("inpainting UNet input at step 0, conditional row: [x_t | m | E(x ⊙ (1 − M))]")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## 3. An ordinary model: blending the known region back

    A 4-channel model (here the random tiny model of `tests/fixtures/pipeline`) knows nothing
    of the mask; after each sampler step the kept region (m = 0) is replaced by the init
    latent z₀ noised to the level the next step starts at, with the run's start noise n:
    x ← (1 − m)·(√ᾱ z₀ + √(1 − ᾱ) n) + m·x. DDIM with 4 steps walks t = 751, 501, 251, 1
    (leading spacing, offset 1), so after step i the level is t[i+1]; after the last, z₀ itself.
    '''),
    code('''
    d4 = sd("inpaint", "--ckpt", "tests/fixtures/pipeline/model", "--init-img", init_png, "--mask", mask_png,
            "--prompt", "a red apple", "--ddim_steps", "4", "--n_samples", "1", "--seed", "3",
            "--outdir", os.path.join(WORK, "blend-out"), dump="blend4")
    S = L.Schedule()
    ts = S.timesteps(4, "leading", 1)
    z0, n, m4 = d4["init_latent"][0], d4["noise"][0], d4["mask"][0, 0]
    for i in range(3):
        ab = S.alphas_cumprod[ts[i + 1]]
        known = np.sqrt(ab) * z0 + np.sqrt(1 - ab) * n
        err = np.abs((d4[f"step{i:03d}/latent"][0] - known) * (1 - m4)).max()
        print(f"after step {i}: kept region vs q(z0, n; t={ts[i + 1]}): max |diff| = {err:.1e}")
    print("final latent, kept region = z0 exactly:", np.array_equal(d4["latent"][0] * (1 - m4), z0 * (1 - m4)))
    '''),
    md('''
    ## 4. The upscaler: the noise-augmented low-res input

    `sd upscale` (1 DDIM step is enough to see the inputs) at several `--noise_level`s n.
    Its first generator draw is ε [1,3,h,w]; the low-res image x in [−1, 1] becomes
    x_n = √ᾱ_n x + √(1 − ᾱ_n) ε with the low-res schedule (scaled linear 1e-4 … 0.02, its own
    `low_res_scheduler/`). Recomputed here from `L.randn` (the same CPU generator) and
    compared with the C dump `low_res_noisy`. Note n = 0 still adds noise of std
    √(1 − ᾱ₀) = √β₀ = 0.01.
    '''),
    code('''
    low_png = "tests/fixtures/upscale/low_ddim.png"
    low = plt.imread(low_png)[..., :3]                     # [16,16,3]
    levels = [0, 20, 100, 200, 350]
    runs = {lv: sd("upscale", "--ckpt", UPSCALE_MODEL, "--init-img", low_png, "--steps", "1",
                   "--noise_level", str(lv), "--seed", "42", "--out", os.path.join(WORK, f"up{lv}.png"),
                   dump=f"up{lv}") for lv in levels}
    lowres = L.Schedule("scaled_linear", 1e-4, 0.02)
    x = (2 * low - 1).transpose(2, 0, 1)[None]             # [1,3,16,16]
    e = L.randn(42, (1, 3, 16, 16))                        # the generator's first draw
    for lv in levels:
        ab = lowres.alphas_cumprod[lv]
        ref = np.sqrt(ab) * x + np.sqrt(1 - ab) * e
        err = np.abs(runs[lv]["low_res_noisy"] - ref).max()
        print(f"n={lv:3d}: √ᾱ={np.sqrt(ab):.3f}  √(1−ᾱ)={np.sqrt(1 - ab):.3f}  max |C − NumPy| = {err:.1e}")
    fig, ax = plt.subplots(1, len(levels) + 1, figsize=(3 * (len(levels) + 1), 3.3))
    ax[0].imshow(low); ax[0].set_title("low-res x (16×16)")
    for a, lv in zip(ax[1:], levels):
        a.imshow(np.clip(runs[lv]["low_res_noisy"][0].transpose(1, 2, 0) / 2 + 0.5, 0, 1))
        a.set_title(f"x_n, noise level {lv}")
    for a in ax: a.axis("off")
    plt.suptitle("noise conditioning augmentation q(x_n | x) = N(√ᾱ_n x, (1 − ᾱ_n) I)")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## 5. The 7-channel input and the noise level as a class label

    `unet_in` is `[z_t (4) | x_n (3)]`; the same x_n for every step and row. The UNet is
    told n through its class embedding: row n of a [1000, Temb] table, added to the time
    embedding (dump `unet.class_embedding`, one row per batch row). With random weights the
    rows are random vectors, so their distances below say only that each level gets its own
    row; a trained upscaler's table is what makes "n = 20" mean "trust the input".
    '''),
    code('''
    u7 = runs[20]["step000/unet_in"]                       # [2B,7,h,w]
    print("unet_in", u7.shape, "= [z_t (4) | x_n (3)]")
    print("channels 4-6 = x_n:", np.array_equal(u7[1, 4:], runs[20]["low_res_noisy"][0]))
    print("channels 0-3 = z_T · c_in (DDIM: 1):", np.array_equal(u7[1, :4], runs[20]["noise"][0]))
    cemb = {lv: runs[lv]["step000/unet.class_embedding"][0] for lv in levels}   # [Temb]
    dist = np.array([[np.linalg.norm(cemb[a] - cemb[b]) for b in levels] for a in levels])
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    ax[0].plot(lowres.alphas_cumprod[:351] ** 0.5, label="√ᾱ_n (signal)")
    ax[0].plot((1 - lowres.alphas_cumprod[:351]) ** 0.5, label="√(1 − ᾱ_n) (noise)")
    ax[0].set_xlabel("noise level n"); ax[0].legend(); ax[0].set_title("low-res schedule up to max_noise_level 350")
    im = ax[1].imshow(dist)
    ax[1].set_xticks(range(len(levels)), levels); ax[1].set_yticks(range(len(levels)), levels)
    ax[1].set_title("‖E[a] − E[b]‖, class-embedding rows (random table)"); plt.colorbar(im, ax=ax[1])
    plt.tight_layout(); plt.show()
    '''),
]


NOTEBOOKS["12-lora-and-embeddings"] = [
    md('''
    # 12 — What users bring: a LoRA file and a textual-inversion embedding

    Chapter: [docs/12-lora-and-embeddings.md](../docs/12-lora-and-embeddings.md) · papers:
    LoRA (Hu et al. 2021, eq. 3); textual inversion (Gal et al. 2022).

    A LoRA adds a low-rank update to frozen weight matrices: W' = W + scale · (α / r) · up · down.
    This notebook opens the LoRA the project trained for the tiny model
    (`tools/tiny-model/lora/bar.safetensors`, [docs/10-tiny-model.md](../docs/10-tiny-model.md):
    it teaches a fourth shape, a horizontal **bar**, "棒" in Japanese), reads its keys with
    NumPy straight from the file bytes, builds one layer's update and its rank, and draws with
    and without it through the `sd` CLI.

    > **About the pictures.** The tiny model draws flat coloured circles, squares and
    > triangles at 64×64 pixels and nothing else; the LoRA adds bars. The pictures are
    > small and simple on purpose: what they show is whether the word "bar" is drawn as a
    > bar, not image quality.
    '''),
    code('''
    # Setup: NumPy for the files, build/sd for the images (run `make` first).
    import os, sys, json, struct, subprocess, tempfile
    ROOT = os.path.abspath("")
    while not os.path.exists(os.path.join(ROOT, "notebooks", "ldm_py.py")):
        ROOT = os.path.dirname(ROOT)
    os.chdir(ROOT)
    import numpy as np
    import matplotlib.pyplot as plt
    SD = os.environ.get("LDM_SD", os.path.join(ROOT, "build", "sd"))
    assert os.path.exists(SD), f"{SD}: build it first (make)"
    MODEL, LORA_DIR = "tools/tiny-model", "tools/tiny-model/lora"
    WORK = tempfile.mkdtemp(prefix="ldm-nb12-")

    def read_safetensors(path):
        """{name: array}, __metadata__: a u64 header length, a JSON header, raw little-endian bytes."""
        b = open(path, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        header, data = json.loads(b[8:8 + n]), b[8 + n:]
        dtypes = {"F16": np.float16, "F32": np.float32, "BF16": None}
        out = {"__metadata__": header.pop("__metadata__", {})}
        for name, e in header.items():
            lo, hi = e["data_offsets"]
            out[name] = np.frombuffer(data[lo:hi], dtypes[e["dtype"]]).reshape(e["shape"])
        return out
    '''),
    md('''
    ## 1. The file: keys, ranks, α

    Kohya names: `lora_unet_<module path with _>` or `lora_te_<...>`, each with
    `.lora_down.weight [r,in]`, `.lora_up.weight [out,r]` and a scalar `.alpha`
    (the chapter's section 1 shows how the names find their layers).
    '''),
    code('''
    lora = read_safetensors(f"{LORA_DIR}/bar.safetensors")
    print("metadata:", lora.pop("__metadata__"))
    layers = sorted({k.split(".")[0] for k in lora})
    print(len(lora), "tensors,", len(layers), "layers:",
          sum(l.startswith("lora_unet_") for l in layers), "UNet,",
          sum(l.startswith("lora_te_") for l in layers), "text encoder")
    for l in layers[:2] + layers[-2:]:
        d, u, a = lora[l + ".lora_down.weight"], lora[l + ".lora_up.weight"], lora[l + ".alpha"]
        print(f"{l:78s} down {d.shape} up {u.shape} alpha {float(a)} ({d.dtype})")
    print("ranks:", sorted({lora[l + ".lora_down.weight"].shape[0] for l in layers}),
          " alphas:", sorted({float(lora[l + ".alpha"]) for l in layers}),
          " parameters:", sum(v.size for k, v in lora.items() if not k.endswith(".alpha")))
    '''),
    md('''
    ## 2. One layer's update: ΔW = scale · (α / r) · up · down

    The value projection of a cross-attention layer in the UNet's up path: W [32,64] maps
    the 64-wide text context to 32 channels. ΔW is a product through r = 4, so its rank is
    at most 4: the SVD shows 4 nonzero singular values and zeros after them (to float32
    round-off). The update stores r·(in + out) numbers instead of in·out.
    '''),
    code('''
    name = "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_v"
    down = lora[name + ".lora_down.weight"].astype(np.float32)   # [r,in]
    up = lora[name + ".lora_up.weight"].astype(np.float32)       # [out,r]
    alpha, r, scale = float(lora[name + ".alpha"]), down.shape[0], 1.0
    dW = scale * (alpha / r) * up @ down                          # [out,in]
    unet = read_safetensors(f"{MODEL}/unet/diffusion_pytorch_model.safetensors")
    W = unet["up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v.weight"].astype(np.float32)
    s = np.linalg.svd(dW, compute_uv=False)
    print("W", W.shape, " ΔW", dW.shape, " r =", r, " α =", alpha)
    print("singular values of ΔW:", np.array2string(s[:8], precision=4), "...")
    print("numerical rank:", int((s > s[0] * 1e-5).sum()))
    print(f"numbers: W {W.size}, down + up {down.size + up.size}"
          f" ({(down.size + up.size) / W.size:.0%} of W)")
    print(f"|ΔW| / |W| (Frobenius) = {np.linalg.norm(dW) / np.linalg.norm(W):.3f}")
    fig, ax = plt.subplots(1, 3, figsize=(12, 3))
    for a, m, t in zip(ax, (W, dW, W + dW), ("W (frozen)", "ΔW = (α/r)·up·down", "W' = W + ΔW")):
        v = np.abs(W).max()
        a.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v); a.set_title(t); a.set_xlabel("in"); a.set_ylabel("out")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## 3. Pictures: the bar prompt without and with `<lora:bar:1>`

    `sd txt2img` with `--lora-dir`: a `<lora:NAME:SCALE>` tag in the prompt merges
    `NAME.safetensors` at that scale for the run (the tag itself is removed from the text).
    Four seeds (`--n_samples 4` gives seeds s, s+1, ...), 64×64, DDIM 20 steps, guidance 5.
    Without the LoRA the tiny model has never seen the word "bar" / "棒": it keeps the
    colour and the place it knows and draws a shape it knows (here a square for the English
    prompt, a rounder blob for the Japanese one). With the LoRA both prompts give a horizontal
    red bar on the left; some seeds also leave a faint stray patch below it.
    '''),
    code('''
    def txt2img(prompt, tag, seed=0, n=4):
        """Run `sd txt2img` on the tiny model; the n images as uint8 [n,64,64,3]."""
        out = os.path.join(WORK, tag)
        subprocess.run([SD, "txt2img", "--ckpt", MODEL, "--lora-dir", LORA_DIR, "--prompt", prompt,
                        "--H", "64", "--W", "64", "--ddim_steps", "20", "--scale", "5",
                        "--n_samples", str(n), "--n_iter", "1", "--seed", str(seed), "--outdir", out],
                       check=True, capture_output=True)
        return np.stack([plt.imread(os.path.join(out, "samples", f"{i:05d}.png"))[..., :3]
                         for i in range(n)])

    def show_rows(rows, labels, title):
        fig, ax = plt.subplots(len(rows), len(rows[0]), figsize=(1.6 * len(rows[0]) + 1.5, 1.7 * len(rows)))
        for i, (imgs, lab) in enumerate(zip(rows, labels)):
            for j, im in enumerate(imgs):
                ax[i, j].imshow(im, interpolation="nearest"); ax[i, j].set_xticks([]); ax[i, j].set_yticks([])
            ax[i, 0].set_ylabel(lab, rotation=0, ha="right", va="center")
        fig.suptitle(title); plt.tight_layout(); plt.show()

    EN, JA = "a red bar on the left", "左に赤い棒"
    rows = [txt2img(EN, "en0"), txt2img("<lora:bar:1> " + EN, "en1"),
            txt2img(JA, "ja0"), txt2img("<lora:bar:1> " + JA, "ja1")]
    print(f"EN = {EN!r}, JA = {JA!r} (棒 = bar)")   # the figure's font has no Japanese glyphs
    show_rows(rows, ["EN, no LoRA", "EN, <lora:bar:1>", "JA, no LoRA", "JA, <lora:bar:1>"],
              "EN / JA bar prompt without and with the LoRA, seeds 0-3")
    '''),
    md('''
    ## 4. The scale sweep

    The scale multiplies ΔW, so 0 is the base model exactly and 1 what was trained;
    0.5 is half the update, 1.5 extrapolates past it. Same seeds, English prompt. On these
    seeds 0.5 gives rounded, dome-like shapes (not yet a bar), and 1.5
    overshoots: bent bars and a second blob. A LoRA is trained at one scale; far from it
    the merged weights are ones the model never saw.
    '''),
    code('''
    scales = [0, 0.5, 1, 1.5]
    rows = [rows[1] if s == 1 else txt2img(f"<lora:bar:{s}> " + EN, f"scale{s}") for s in scales]
    show_rows(rows, [f"scale {s}" for s in scales], f'"{EN}" with <lora:bar:SCALE>, seeds 0–3')
    '''),
    md('''
    ## 5. Textual-inversion embeddings: a vector per token

    An embedding is `n` rows of width D, the width of CLIP's token-embedding table [V,D].
    A prompt word equal to the file's name becomes n placeholder tokens whose input vectors
    are those rows instead of the rows of its BPE pieces; nothing else in the model changes.
    Training one (Gal et al. 2022) optimises only those vectors, so the concept has to be
    expressible as "a word" the frozen model already knows how to use.

    No embedding was trained for the tiny model; the test fixture
    `tests/fixtures/embeddings/shapey.safetensors` (A1111 format, key `emb_params`) is a
    random vector of the tiny text encoder's width, made only to check the loading code
    against diffusers, so it has a shape but no meaning. Here is its shape beside the table
    it extends.
    '''),
    code('''
    emb = read_safetensors("tests/fixtures/embeddings/shapey.safetensors")
    emb.pop("__metadata__")
    te = read_safetensors(f"{MODEL}/text_encoder/model.safetensors")
    table = te["embeddings.token_embedding.weight"]      # [V,D]
    for k, v in emb.items():
        print(f"shapey.safetensors: {k} {v.shape} {v.dtype}  -> {v.shape[0]} token(s) of width {v.shape[1]}")
    print("tiny CLIP token table:", table.shape, "-> with the embedding:",
          (table.shape[0] + emb["emb_params"].shape[0], table.shape[1]))
    norms = np.linalg.norm(table.astype(np.float32), axis=1)
    print(f"row norms of the table: median {np.median(norms):.3f};"
          f" the fixture's vector: {np.linalg.norm(emb['emb_params'].astype(np.float32)):.3f}")
    '''),
    md('''
    ## Try

    - Put the LoRA on one tower only: copy `bar.safetensors` keeping only the `lora_unet_`
      keys (or only `lora_te_`) and compare the pictures — which part carries the word?
    - Truncate the rank: replace `up`, `down` by the top-k singular vectors of ΔW (k = 1, 2)
      and write a new file; how many directions does "bar" need?
    - Negative scales: `<lora:bar:-1>` on a square prompt.
    '''),
]

NOTEBOOKS["14-training-in-c"] = [
    md('''
    # 14 — Training in C: a few hundred steps of `sd train`, beside PyTorch

    Chapter: [docs/14-backpropagation.md](../docs/14-backpropagation.md) (the optimizer:
    [AdamW, clipping, warm-up, EMA](../docs/14-backpropagation.md#adamw-clipping-warm-up-ema);
    the loop: [The training loop and `sd train`](../docs/14-backpropagation.md#the-training-loop-and-sd-train))
    · papers: LDM (Rombach et al. 2022) eq. 2; min-SNR-γ (Hang et al. 2023);
    AdamW (Loshchilov & Hutter 2019).

    `build/sd train --stage unet` trains a UNet and a text encoder with gradients written
    out by hand in C, no autograd. This notebook runs it for 400 steps on a *micro* model
    (the same model classes as the tiny model, a few channels wide, so it runs in seconds),
    and plots its loss at every step next to the loss PyTorch computed for the same run:
    the same initial weights, the same batches, the same noise. The PyTorch losses are a
    committed fixture (`tests/fixtures/train/curve/losses.npy`, written by
    `tools/reference/fixtures_train_steps.py --steps 400 --losses-only ...`); this
    notebook needs only NumPy, matplotlib and the C build.
    '''),
    code('''
    # Setup: build/sd for training, NumPy for the files (run `make` first).
    import os, sys, json, struct, shutil, subprocess, tempfile, time
    ROOT = os.path.abspath("")
    while not os.path.exists(os.path.join(ROOT, "notebooks", "ldm_py.py")):
        ROOT = os.path.dirname(ROOT)
    sys.path.insert(0, os.path.join(ROOT, "notebooks"))
    os.chdir(ROOT)  # sd train finds the BPE vocabulary in build/vocab/
    import numpy as np
    import matplotlib.pyplot as plt
    import ldm_py as L
    SD = os.environ.get("LDM_SD", os.path.join(ROOT, "build", "sd"))
    assert os.path.exists(SD), f"{SD}: build it first (make)"
    FIX = "tests/fixtures/train/steps"          # the micro model's initial weights, the recipe
    CURVE = "tests/fixtures/train/curve/losses.npy"   # PyTorch's losses of the 400-step run
    WORK = tempfile.mkdtemp(prefix="ldm-nb14-")
    STEPS = 400
    '''),
    md('''
    ## 1. One training step

    Stage 2 of the LDM paper trains ε_θ to find the noise in a noised latent. One step of
    `sd train --stage unet` ([`unet_step`](../ldm/train/train.c), docs/14 "One step of
    stage 2"):

    1. **Draw a batch** from one generator (torch's mt19937, so PyTorch draws the same
       numbers): B latents z of the training images (a sample of the VAE's posterior, times
       the VAE's scaling factor), a caption per image (English or Japanese; 10 % empty, for
       guidance), a timestep t ~ U{0..999} and noise ε ~ N(0, I) per image;
       z_t = √ᾱ_t z + √(1 − ᾱ_t) ε.
    2. **Forward**: the text encoder gives the context c = τ_θ(y) [B,77,D], the UNet
       ε̂ = ε_θ(z_t, t, c). The trainers keep each block's input for the backward.
    3. **Loss** (LDM eq. 2, weighted by min-SNR-γ with γ = 5):
       L = (1/B) Σ_b w(t_b) · mean((ε̂_b − ε_b)²), w(t) = min(SNR(t), γ) / SNR(t),
       SNR(t) = ᾱ_t / (1 − ᾱ_t).
    4. **Backward**: ∂L/∂ε̂_b = 2 w(t_b) (ε̂_b − ε_b) / (B · n), n = 4·h·w the size of one
       latent, then through the UNet block by block in reverse (each block's internals
       recomputed from its saved input); the UNet also returns ∂L/∂c, which goes back
       through the text encoder: the text encoder learns only through cross-attention.
    5. **Clip** the gradient: one norm over all parameters, scaled down to 1 if larger.
    6. **AdamW** at the learning rate of the warm-up (linear over 200 steps to 1e-3).
    7. **EMA**: e ← d·e + (1 − d)·p; the exported model is the average e.

    `sd train --log FILE` writes, per step, the unweighted ε-MSE and the weighted loss L.
    The weights w(t), from the C schedule. Measured in x₀, the ε-loss is the x₀-loss times
    SNR(t) ([exercise 19](../docs/exercises/19-min-snr-weight/README.md)), a factor in the
    thousands for the nearly clean timesteps; w caps that factor at γ = 5, so those
    timesteps do not dominate the gradient.
    '''),
    code('''
    abar = L.Schedule().alphas_cumprod.astype(np.float64)   # the SD schedule, in C
    snr = abar / (1 - abar)
    w = np.minimum(snr, 5.0) / snr
    print(f"w(t) < 1 for t < {int(np.argmax(w >= 1))}; w(0) = {w[0]:.4f}, w(999) = {w[999]:.1f}")
    print(f"mean w over t ~ U{{0..999}}: {w.mean():.3f}  (so the weighted loss sits below the MSE)")
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.semilogy(snr, label="SNR(t) = ᾱ/(1−ᾱ)"); ax.semilogy(w, label="w(t) = min(SNR, 5)/SNR")
    ax.axhline(5, color="gray", lw=0.5); ax.set_xlabel("t"); ax.legend(); ax.set_title("min-SNR-5 loss weights")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    ## 2. The initial weights and the run

    The fixture holds the initial weights PyTorch started from: a micro
    `UNet2DConditionModel` (channels 8, 16; cross-attention width 16) and a micro
    `CLIPTextModel` (width 16, 2 layers), both fp32 safetensors. Its token-embedding table
    [49408, 16] would be most of the fixture, and only the rows of tokens that occur in the
    captions are nonzero and ever get a gradient (AdamW leaves a parameter with zero
    gradient, zero moments and no weight decay where it is), so the fixture stores those
    rows and their ids; here they go back in place. The autoencoder is the shipped tiny
    model's (`tools/tiny-model/vae`): stage 2 only encodes the images with it.

    A safetensors file is an 8-byte little-endian header length, a JSON header
    (name → dtype, shape, byte range), then the raw bytes.
    '''),
    code('''
    def read_safetensors(path):
        b = open(path, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        header, data = json.loads(b[8:8 + n]), b[8 + n:]
        header.pop("__metadata__", None)
        return {k: np.frombuffer(data[e["data_offsets"][0]:e["data_offsets"][1]], np.float32).reshape(e["shape"])
                for k, e in header.items()}

    def write_safetensors(path, tensors):
        header, off = {}, 0
        for k, v in tensors.items():
            header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + v.nbytes]}
            off += v.nbytes
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)                       # the data starts 8-byte aligned
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + b"".join(np.ascontiguousarray(v, np.float32).tobytes()
                                                             for v in tensors.values()))

    INIT = os.path.join(WORK, "init")
    for d in ("unet", "text_encoder", "vae"):
        os.makedirs(os.path.join(INIT, d))
    for f in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json"):
        shutil.copy(os.path.join(FIX, "init", f), os.path.join(INIT, f))
    for f in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(os.path.join("tools/tiny-model/vae", f), os.path.join(INIT, "vae", f))
    te = read_safetensors(os.path.join(FIX, "init/text_encoder/model.safetensors"))
    rows, emb = np.load(os.path.join(FIX, "token_rows.npy")), np.load(os.path.join(FIX, "token_embedding.npy"))
    table = np.zeros((49408, emb.shape[1]), np.float32)   # [V,D]
    table[rows] = emb
    te = {"embeddings.token_embedding.weight": table, **te}
    write_safetensors(os.path.join(INIT, "text_encoder/model.safetensors"), te)
    unet = read_safetensors(os.path.join(INIT, "unet/diffusion_pytorch_model.safetensors"))
    recipe = json.load(open(os.path.join(FIX, "recipe.json")))
    print(f"UNet: {len(unet)} tensors, {sum(v.size for v in unet.values()):,} parameters")
    print(f"text encoder: {len(te)} tensors, {sum(v.size for v in te.values()):,} parameters "
          f"({len(rows)} of {table.shape[0]} token rows used)")
    print({k: recipe[k] for k in ("seed", "n_images", "batch", "lr", "warmup", "betas", "clip", "min_snr",
                                  "cond_drop", "ema")})
    '''),
    md('''
    The run: the recipe's seed, 64 images, batch 8, 400 steps, checkpoint only at the end,
    `--log` for the losses of every step (`--quiet`: no progress bar in the notebook).
    '''),
    code('''
    OUT, LOG = os.path.join(WORK, "run"), os.path.join(WORK, "losses.tsv")
    t0 = time.time()
    subprocess.run([SD, "train", "--stage", "unet", "--init", INIT, "--out", OUT, "--steps", str(STEPS),
                    "--n-images", "64", "--batch", "8", "--seed", "0", "--save-every", "0",
                    "--log", LOG, "--quiet"], check=True)
    dt = time.time() - t0
    print(f"{STEPS} steps in {dt:.1f} s ({dt / STEPS * 1000:.0f} ms per step, with loading and export)")
    print(open(LOG).read().splitlines()[:3])
    print("written:", sorted(os.listdir(OUT)))
    '''),
    md('''
    ## 3. The loss, step by step, beside PyTorch

    Both curves are noisy: every step draws other images and other timesteps, and the
    loss of an image depends strongly on its t. A moving average over 25 steps shows the
    trend: the loss falls during the warm-up (the first 200 steps) and keeps falling.
    The two runs are the same computation in float32 with the operations in other orders
    (other summation orders in the matrix products, the norms, the softmax), so they
    differ by rounding at step 1, and each step starts from weights that differ by the
    rounding of all earlier steps. The right panel shows how far apart that lets them drift.
    '''),
    code('''
    c_log = np.loadtxt(LOG, skiprows=1)                 # step, mse, weighted
    c_mse, c_loss = c_log[:, 1], c_log[:, 2]
    ref = np.load(CURVE)                                # [steps, 2]: mse, weighted (PyTorch)
    n = min(STEPS, len(ref))                            # the fixture has 400 steps
    assert np.array_equal(c_log[:, 0], np.arange(1, STEPS + 1))
    c_mse, c_loss, ref = c_mse[:n], c_loss[:n], ref[:n]
    rel = np.abs(c_log[:n, 1:3] - ref) / np.abs(ref)    # [steps, 2]
    print(f"max relative difference over the {n} steps: ε-MSE {rel[:, 0].max():.1e}, "
          f"weighted loss {rel[:, 1].max():.1e} (step {rel[:, 1].argmax() + 1})")
    for s in [s for s in (1, 50, 100, 200, 300, 400) if s <= n]:
        print(f"step {s:3d}: C {c_loss[s - 1]:.6f}  PyTorch {ref[s - 1, 1]:.6f}  "
              f"max relative difference up to here {rel[:s].max():.1e}")
    assert rel.max() < 1e-3, "sd train and PyTorch drifted apart: a bug, not rounding"

    def smooth(y, k=25):
        return np.convolve(y, np.ones(k) / k, mode="valid")

    steps = np.arange(1, n + 1)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    ax[0].plot(steps, ref[:, 1], color="C1", lw=0.6, alpha=0.5, label="PyTorch, per step")
    ax[0].plot(steps, c_loss, color="C0", lw=0.6, ls="--", alpha=0.5, label="C, per step")
    ax[0].plot(steps[24:], smooth(ref[:, 1]), color="C1", lw=2.5, label="PyTorch, mean of 25")
    ax[0].plot(steps[24:], smooth(c_loss), color="k", lw=1, ls="--", label="C, mean of 25")
    ax[0].axvline(recipe["warmup"], color="gray", lw=0.5)
    ax[0].set_xlabel("step"); ax[0].set_ylabel("weighted loss (eq. 2, min-SNR-5)"); ax[0].legend()
    ax[0].set_title("sd train --stage unet vs PyTorch (the same run)")
    ax[1].semilogy(steps, rel[:, 0], lw=0.8, label="ε-MSE")
    ax[1].semilogy(steps, rel[:, 1], lw=0.8, label="weighted loss")
    ax[1].semilogy(steps, np.maximum.accumulate(rel.max(1)), color="k", label="running max")
    ax[1].axhline(np.finfo(np.float32).eps, color="gray", lw=0.5, ls=":", label="float32 ε")
    ax[1].set_xlabel("step"); ax[1].set_ylabel("|C − PyTorch| / |PyTorch|"); ax[1].legend()
    ax[1].set_title("relative difference per step")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    The curves lie on top of each other: the differences stay orders of magnitude below
    the step-to-step noise of the loss. `make test` checks the first 50 steps of this run,
    and five weight tensors after them, against PyTorch (tests/test_train_loop.c, the
    fixture in `tests/fixtures/train/steps/`).

    ## 4. A look at one gradient

    `sd train` does not write gradients, but its checkpoint holds AdamW's moments, and
    after **one** step they are the gradient itself: m₁ = (1 − β₁) g and
    v₁ = (1 − β₂) g², where g is the gradient after clipping. So a run of one step gives
    g = m₁ / (1 − β₁), and √(v₁ / (1 − β₂)) = |g| checks it. The norm of g per block
    shows where the loss is most sensitive at the start.
    '''),
    code('''
    OUT1 = os.path.join(WORK, "one-step")
    subprocess.run([SD, "train", "--stage", "unet", "--init", INIT, "--out", OUT1, "--steps", "1",
                    "--n-images", "64", "--batch", "8", "--seed", "0", "--save-every", "0", "--quiet"], check=True)
    state = json.load(open(os.path.join(OUT1, "train-state", "state.json")))
    st = read_safetensors(os.path.join(OUT1, "train-state", state["weights"]))
    b1, b2 = recipe["betas"]
    names = [k[len("adam_m/"):] for k in st if k.startswith("adam_m/")]   # named_parameters() order
    g = {n: st["adam_m/" + n].astype(np.float64) / (1 - b1) for n in names}
    err = max(np.abs(np.abs(g[n]) - np.sqrt(st["adam_v/" + n] / (1 - b2))).max() for n in names)
    total = np.sqrt(sum((v ** 2).sum() for v in g.values()))
    print(f"{len(names)} parameters; max | |m/(1-β1)| - sqrt(v/(1-β2)) | = {err:.1e}")
    print(f"global norm of g: {total:.4f}", "(clipped to 1)" if total > 1 - 1e-5 else "(< 1: not clipped)")

    def block(n):
        """unet.down_blocks.0.resnets.0.conv1.weight -> unet.down_blocks.0,
        text_encoder.encoder.layers.1.mlp.fc1.weight -> text_encoder.encoder.layers.1"""
        p = n.split(".")
        return ".".join(p[:{"down_blocks": 3, "up_blocks": 3, "encoder": 4}.get(p[1], 2)])

    blocks = list(dict.fromkeys(block(n) for n in names))
    norm = np.array([np.sqrt(sum((g[n] ** 2).sum() for n in names if block(n) == b)) for b in blocks])
    size = np.array([sum(g[n].size for n in names if block(n) == b) for b in blocks])
    for b, v, s in zip(blocks, norm, size):
        print(f"{b:34s} {s:7d} parameters  ‖g‖ = {v:.3f}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.barh(range(len(blocks)), norm, color=["C0" if b.startswith("unet.") else "C2" for b in blocks])
    ax.set_yticks(range(len(blocks)), blocks); ax.invert_yaxis()
    ax.set_xlabel("‖∂L/∂θ‖ of the block (after clipping)"); ax.set_title("the gradient of step 1, per block")
    plt.tight_layout(); plt.show()
    '''),
    md('''
    The size of g does not set the size of the first step, though. With the bias
    corrections, Adam's first update is lr₁ · m̂₁ / (√v̂₁ + ε) = lr₁ · g / (|g| + ε)
    ≈ lr₁ · sign(g): every parameter with a gradient moves by the same amount, the
    warm-up's first learning rate lr₁ = 1e-3 · 1/200. Later steps divide by a running
    average of g² per parameter (its square root), so no block needs its own learning rate. From the
    weights before and after step 1:
    '''),
    code('''
    init = {"unet." + k: v for k, v in unet.items()} | {"text_encoder." + k: v for k, v in te.items()}
    lr1 = recipe["lr"] * 1 / recipe["warmup"]
    moved = np.concatenate([((init[n] - st["param/" + n]) / lr1).ravel() for n in names])   # in units of lr1
    gg = np.concatenate([g[n].ravel() for n in names])
    has_g = gg != 0
    print(f"lr1 = {lr1:g}; {has_g.sum():,} parameters with a gradient, {(~has_g).sum():,} without "
          "(the token rows of unused ids: they do not move)")
    print(f"(before − after) / lr1 = g / (|g| + 1e-8) within {np.abs(moved - gg / (np.abs(gg) + 1e-8)).max():.1e}")
    print(f"= sign(g) within 1 %: {(np.abs(moved - np.sign(gg)) < 0.01)[has_g].mean():.2%} of those with a "
          f"gradient (the rest have |g| near ε); |g| spans {np.abs(gg[has_g]).min():.0e} … {np.abs(gg).max():.0e}")
    '''),
    md('''
    ## Try

    - Run longer (`STEPS = 2000`, about a minute here): where does the curve flatten?
      PyTorch's fixture stops at 400 steps, so the comparison covers only those.
    - Add `--min-snr 0` (the plain ε loss of eq. 2): the two columns of the log become
      equal. The run is then another run than PyTorch's, so compare only the shapes.
    - The gradient of step 1 is largest in the last up block and `conv_out`, nearest the
      output. Run 10 steps and look at √(v / (1 − β₂¹⁰)), the root mean square of g per
      parameter over the 10 steps: which blocks' gradients grow, which shrink?
    - `--backend ref` runs the same training on the readable loops of `ops_ref.c`
      (far slower): the losses of the first steps agree with the `cpu` run to the
      printed digits.
    '''),
]


def main():
    for name in NOTEBOOKS:
        path = os.path.join(HERE, name + ".ipynb")
        nbformat.write(build(name), path)
        print("wrote", os.path.relpath(path), "(no outputs: `make notebooks-render` adds them)")


if __name__ == "__main__":
    main()
