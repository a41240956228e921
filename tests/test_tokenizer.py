"""GPT-2 byte-level BPE tokenizer (C core + HF-compatible front) against transformers.

Reference: a byte-level BPE trained here with the `tokenizers` library on a corpus this file
writes, saved as vocab.json/merges.txt, loaded by both transformers.GPT2Tokenizer and ours.
Token ids are integers: every comparison is exact (no tolerance).
"""
import json
import os

import numpy as np
import pytest

from mechinterp_c import _core
from mechinterp_c.checkpoints import bytes_to_unicode
from mechinterp_c.transformers import AutoTokenizer, BatchEncoding, GPT2Tokenizer, GPT2TokenizerFast

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CORPUS_LINES = [
    "It's a test. They're here, we've seen it, I'm sure you'll agree, he'd know.",
    "IT'S LOUD. THEY'RE HERE. Don't stop. Can't won't shouldn't. O'Neil's dog's bone.",
    "The year 2023 had 365 days; pi is 3.14159 and 1,000,000 is a million. Call 555-0100.",
    "def f(x):\n    return x ** 2 + 1  # square it\n\nfor i in range(10):\n\tprint(f(i))\n",
    "if (a != b && c >= d) { x += y; } else { z = arr[i][j] -> next; }",
    "Wow!!! What??? Hmm... (really) [yes] {no} <tag attr=\"v\"/> --- *** ___ ~~~ ### @@@",
    "Lots   of   spaces    here     and\ttabs\t\tand\n\nnewlines\n\n\n   indented\n",
    "Café, naïve, résumé, façade, jalapeño, Zürich, Ångström, smørrebrød, Łódź.",
    "Ελληνικά: Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "Русский: Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "日本語のテキストと中文文本，还有한국어 텍스트도 있습니다。",
    "العربية: نص عربي للاختبار مع أرقام ٣٤٥ وعلامات ترقيم؟",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷 and combining e\u0301 a\u0308 n\u0303.",
    "Math: ∑ x² ≤ ∞, α+β=γ, √2 ≈ 1.414, ½ ¾ ⅓, Ⅻ, ²³, ① ② ③.",
    "Mixed scripts: helloМир世界مرحبا123abc٣٤٥ end.",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "<|endoftext|> separates documents.<|endoftext|>Another one begins.",
]

ADVERSARIAL = [
    "", " ", "  ", "\n", "\n\n", "  \n\n  ", "\t", " \t ", "a ", "a  ", "a   ", " a", "  a", "   a",
    "hello world", "hello  world", "hello   world  ", "trailing spaces   ", "\ttabs\tand\t\tmore\t",
    "'s 't 're 've 'm 'll 'd", "it's they're we've I'm you'll he'd can't", "IT'S THEY'RE 'S 'T 'RE 'VE 'M 'LL 'D",
    "'", "''", "'''s", "x'sy", "'s's's", "' s", "''s", "'re've'll", "!'s", "?'ll",
    "<|endoftext|>", "a<|endoftext|>b", " <|endoftext|> ", "<|endoftext|><|endoftext|>",
    "text<|endoftext|>", "<|endoftext|>text", "<|endoftext", "<|endoftext|", "<<|endoftext|>>",
    "3.14", "1,000", "1,000,000.50", "-42", "+7e10", "0x1F", "2023-11-23", "٣٤٥", "²³", "Ⅻ", "①②",
    "Ελληνικά κείμενο", "кириллица Текст", "日本語", "中文文本", "한국어", "مرحبا بالعالم",
    "😀", "👨‍👩‍👧‍👦", "👍🏽", "🏳️‍🌈", "❤️", "🇫🇷", "a😀b", " 😀 ", "e\u0301", "a\u0308\u0301", " \u0301",
    "naïve café", "Zürich", "\u00a0nbsp\u00a0", "\u3000ideographic\u3000space", "\u2028line\u2029para",
    "\x0b\x0c\r\n", "\r\n\r\n", "\x1c\x1d\x1e\x1f", "\x85next", "\u200bzero\u200cwidth\u200d",
    "\ufeffbom", "\x00nul\x00", "\x7fdel", "\ufffd", "\U0010ffff", "\ue000private",
    "def f(x):\n    return x\n", "    indented\n        more", "a\n \nb", "a \n b", "a\t \tb",
    "!!!", "...", "?!?", "--", " --- ", "@@ -1,2 +1,2 @@", "C++ & C# | F#", "<tag/>", "a/b\\c",
    "mixed123abc", "abc123", "123abc", "1a2b3c", "x²", "Ⅻx", "$100.00", "50%", "#hashtag", "@user",
    "   leading and trailing   ", "\n\n\nparagraph\n\n\n", " \n", "\n ", " \n ", "a\u00a0b", "a \u00a0b",
    "The quick brown fox jumps over the lazy dog. " * 20,
    "unseenwordszzqx qqqqqq xyzzy plugh", "a , b . c 's don 't ? ! n't 'm", " ' ", "ÀÉÎÕÜ àéîõü", "ǅ ǈ ǋ", "ﬁ ﬂ", "ß ẞ", "İstanbul ıi",
]


SYLLABLES = {
    "latin": ["ka", "the", "re", "ing", "tion", "an", "ver", "com", "pro", "ist", "ed", "er", "sta", "mo", "lu"],
    "accent": ["é", "è", "ü", "ñ", "ø", "å", "ç", "ł", "ő", "ž"],
    "greek": ["κα", "λο", "με", "τη", "ση", "νο", "πρ", "ου", "αι", "ερ"],
    "cyrillic": ["ка", "ро", "ст", "ни", "ть", "во", "пр", "ие", "ла", "же"],
    "cjk": ["日", "本", "語", "中", "文", "人", "大", "学", "生", "東", "京", "の", "は", "で", "す"],
    "arabic": ["ال", "مر", "حب", "كت", "اب", "سل", "ام", "عل", "ين", "ون"],
}


def corpus_text(n_lines=3000, seed=0):
    """A deterministic multi-script corpus: words built from syllables, contractions, numbers,
    code, punctuation runs, whitespace runs and emoji, plus the fixed lines above."""
    rng = np.random.default_rng(seed)
    lines = list(CORPUS_LINES)
    emoji = ["😀", "👍🏽", "👨‍👩‍👧", "❤️", "🇫🇷", "🎉"]
    punct = [".", ",", "!", "?", "...", "!!", ";", ":", " -", " (", ")", " \"", "'s", "'ll", "'re", "n't"]
    for _ in range(n_lines):
        script = list(SYLLABLES)[rng.integers(len(SYLLABLES))]
        words = []
        for _ in range(rng.integers(3, 14)):
            r = rng.random()
            if r < 0.08:
                words.append(str(rng.integers(0, 10 ** rng.integers(1, 7))))
            elif r < 0.12:
                words.append(f"{rng.integers(0, 100)}.{rng.integers(0, 1000)}")
            elif r < 0.15:
                words.append(emoji[rng.integers(len(emoji))])
            else:
                syl = SYLLABLES[script] + (SYLLABLES["accent"] if script == "latin" else [])
                w = "".join(syl[rng.integers(len(syl))] for _ in range(rng.integers(1, 4)))
                words.append(w.capitalize() if rng.random() < 0.2 else w)
            if rng.random() < 0.15:
                words[-1] += punct[rng.integers(len(punct))]
        sep = "  " if rng.random() < 0.1 else " "
        line = sep.join(words)
        if rng.random() < 0.1:
            line = "    " + line.replace(" ", "_") + "(x, y) {\n\treturn x;\n}"
        lines.append(line)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """Train a byte-level BPE (vocab ~3000) on the corpus and save vocab.json/merges.txt."""
    from tokenizers import ByteLevelBPETokenizer
    d = tmp_path_factory.mktemp("gpt2tok")
    corpus = d / "corpus.txt"
    corpus.write_text(corpus_text(), encoding="utf-8")
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(corpus)], vocab_size=3000, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(d))
    return d


@pytest.fixture
def hf(tok_dir):
    from transformers import GPT2Tokenizer as HFGPT2Tokenizer
    return HFGPT2Tokenizer.from_pretrained(str(tok_dir))


@pytest.fixture
def ours(tok_dir):
    return GPT2Tokenizer.from_pretrained(str(tok_dir))


def all_texts():
    return ADVERSARIAL + CORPUS_LINES


# ---------------------------------------------------------------- ids and round trips

def test_vocab_is_real(hf, ours):
    assert ours.vocab_size == hf.vocab_size and len(ours) == len(hf)
    assert ours.vocab_size > 1000          # the merges actually got used
    assert ours.eos_token == hf.eos_token and ours.eos_token_id == hf.eos_token_id
    assert ours.bos_token_id == hf.bos_token_id and ours.unk_token_id == hf.unk_token_id
    assert ours.pad_token is None and ours.pad_token_id is None


@pytest.mark.parametrize("text", all_texts())
def test_ids_identical(hf, ours, text):
    expected = hf.encode(text)
    got = ours.encode(text)
    assert got == expected, f"{text!r}: {got} != {expected}"
    assert ours.tokenize(text) == hf.tokenize(text)
    # decode round trip, with and without special tokens
    assert ours.decode(got) == hf.decode(expected) == text
    assert ours.decode(got, skip_special_tokens=True) == hf.decode(expected, skip_special_tokens=True)


def test_random_texts_identical(hf, ours):
    """Random strings drawn from the tricky characters: catches split rules no list names."""
    rng = np.random.default_rng(0)
    alphabet = list(" \t\n'sStTrevmld.,!?0123456789aéΩЖ日ع😀\u0301\u00a0\u3000-_<|>") + ["<|endoftext|>", "'s", "  "]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(1, 40))) for _ in range(400)]
    got = ours(texts)["input_ids"]
    expected = hf(texts)["input_ids"]
    for t, g, e in zip(texts, got, expected):
        assert g == e, f"{t!r}: {g} != {e}"
        assert ours.decode(g) == t


def test_long_text_and_cache(hf, ours):
    """A long document (cache reuse, long runs of spaces / symbols / letters)."""
    text = "\n".join(CORPUS_LINES * 30) + " " * 5000 + "x" + "!" * 3000 + "ab" * 2000
    assert ours.encode(text) == hf.encode(text)
    assert ours.encode(text) == ours.encode(text)    # warm cache gives the same ids


def test_partial_utf8_decode_replace(hf, ours):
    """Decoding half of a multi-byte character: bytes -> UTF-8 with errors='replace', as HF."""
    for text in ["😀", "日本", "é", "👨‍👩‍👧"]:
        ids = ours.encode(text)
        for k in range(len(ids) + 1):
            assert ours.decode(ids[:k]) == hf.decode(ids[:k])
            assert ours.decode(ids[k:]) == hf.decode(ids[k:])


# ---------------------------------------------------------------- batch API

BATCH = ["Hello world, it's me.", "A", "Ελληνικά και русский 日本語 😀", "x <|endoftext|> y"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_identical(hf, ours, side):
    hf.pad_token = hf.eos_token
    ours.pad_token = ours.eos_token
    assert ours.pad_token_id == hf.pad_token_id
    for kw in [dict(padding=True), dict(padding="longest"), dict(padding="max_length", max_length=40),
               dict(padding=True, truncation=True, max_length=5), dict(truncation=True, max_length=3)]:
        e = hf(BATCH, padding_side=side, **kw)
        g = ours(BATCH, padding_side=side, **kw)
        assert g["input_ids"] == e["input_ids"], kw
        assert g["attention_mask"] == e["attention_mask"], kw
    e = hf(BATCH, padding=True, return_tensors="np", padding_side=side)
    g = ours(BATCH, padding=True, return_tensors="np", padding_side=side)
    np.testing.assert_array_equal(g.input_ids, e["input_ids"])
    np.testing.assert_array_equal(g.attention_mask, e["attention_mask"])
    assert g.input_ids.dtype == np.int64 and g.input_ids.shape == (len(BATCH), e["input_ids"].shape[1])


def test_return_tensors_pt(hf, ours):
    torch = pytest.importorskip("torch")
    ours.pad_token = ours.eos_token
    hf.pad_token = hf.eos_token
    g = ours(BATCH, padding=True, return_tensors="pt")
    e = hf(BATCH, padding=True, return_tensors="pt")
    assert isinstance(g["input_ids"], torch.Tensor) and g["input_ids"].dtype == torch.int64
    assert torch.equal(g["input_ids"], e["input_ids"]) and torch.equal(g["attention_mask"], e["attention_mask"])
    t = ours.encode("hello world", return_tensors="pt")
    assert t.shape == (1, len(ours.encode("hello world")))
    assert ours.decode(t[0, -1]) == hf.decode(t[0, -1])       # a 0-d tensor, as in the notebooks
    assert ours.batch_decode(g["input_ids"]) == hf.batch_decode(e["input_ids"])
    assert ours.batch_decode(g["input_ids"], skip_special_tokens=True) == \
        hf.batch_decode(e["input_ids"], skip_special_tokens=True)

    def model(input_ids, attention_mask):          # **batch unpacks as for a HF model
        return input_ids.shape, attention_mask.shape
    assert model(**g) == (g.input_ids.shape, g.attention_mask.shape)


def test_single_text_call(hf, ours):
    g, e = ours("hello world"), hf("hello world")
    assert isinstance(g, BatchEncoding) and dict(g) == dict(e)
    assert g.input_ids == e["input_ids"]
    g = ours("hello world", return_tensors="np")
    assert g["input_ids"].shape == (1, len(e["input_ids"]))
    assert "attention_mask" not in ours("hi", return_attention_mask=False)


def test_padding_without_pad_token(hf, ours):
    with pytest.raises(ValueError) as e_hf:
        hf(BATCH, padding=True)
    with pytest.raises(ValueError, match="does not have a padding token") as e_ours:
        ours(BATCH, padding=True)
    assert str(e_ours.value) == str(e_hf.value)


def test_ragged_tensors_error(ours):
    with pytest.raises(ValueError, match="different lengths"):
        ours(BATCH, return_tensors="np")


def test_conversions(hf, ours):
    ids = list(range(0, 300, 7)) + [len(hf) - 1]
    assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(5) == hf.convert_ids_to_tokens(5)
    toks = hf.convert_ids_to_tokens(ids) + ["surely-not-a-token"]
    assert ours.convert_tokens_to_ids(toks) == hf.convert_tokens_to_ids(toks)
    assert ours.convert_tokens_to_ids("Ġthe") == hf.convert_tokens_to_ids("Ġthe")
    assert ours.get_vocab() == hf.get_vocab()
    assert ours.batch_decode([[5, 6], [7]]) == hf.batch_decode([[5, 6], [7]])
    assert ours.decode(np.array(ours.encode("abc def"))) == "abc def"
    assert GPT2TokenizerFast is not None and isinstance(AutoTokenizer.from_pretrained(ours.name_or_path), GPT2Tokenizer)


def test_add_special_tokens(hf, ours):
    assert ours.add_special_tokens({"pad_token": "[PAD]"}) == hf.add_special_tokens({"pad_token": "[PAD]"}) == 1
    assert ours.pad_token_id == hf.pad_token_id and len(ours) == len(hf)
    for text in ["x[PAD]y", "[PAD]", "a [PAD] <|endoftext|>"]:
        assert ours.encode(text) == hf.encode(text)
        assert ours.decode(ours.encode(text)) == hf.decode(hf.encode(text))
        assert ours.decode(ours.encode(text), skip_special_tokens=True) == \
            hf.decode(hf.encode(text), skip_special_tokens=True)


def test_save_pretrained_tokenizer_json(hf, tmp_path):
    """A directory written by transformers 5 holds only tokenizer.json + tokenizer_config.json."""
    hf.pad_token = hf.eos_token
    hf.save_pretrained(str(tmp_path))
    ours = AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.pad_token == hf.pad_token
    for text in ADVERSARIAL[:60]:
        assert ours.encode(text) == hf.encode(text), text
    # a corrupt tokenizer.json names the file
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["merges"].append("Ġ zzzzunknown")
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer\.json model\.merges\[\d+\]: merge of unknown token \"zzzzunknown\""):
        AutoTokenizer.from_pretrained(str(tmp_path))


def test_hf_cache_layout(tok_dir, tmp_path, monkeypatch):
    """A hub id resolves to models--NAME/snapshots/REV in the HF cache."""
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in ("vocab.json", "merges.txt"):
        (snap / f).write_bytes((tok_dir / f).read_bytes())
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    tok = GPT2Tokenizer.from_pretrained("org/tiny")
    assert tok.encode("hello world") == GPT2Tokenizer.from_pretrained(str(tok_dir)).encode("hello world")


def test_threads_give_same_ids(ours):
    import mechinterp_c
    texts = all_texts() * 3
    n = mechinterp_c.get_num_threads()
    try:
        mechinterp_c.set_num_threads(1)
        one = ours(texts)["input_ids"]
        mechinterp_c.set_num_threads(2)
        two = ours(texts)["input_ids"]
    finally:
        mechinterp_c.set_num_threads(n)
    assert one == two == [ours.encode(t) for t in texts]


# ---------------------------------------------------------------- errors

def write(d, vocab, merges):
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(vocab, encoding="utf-8")
    (d / "merges.txt").write_text(merges, encoding="utf-8")
    return d


GOOD_VOCAB = {"a": 0, "b": 1, "ab": 2, "Ġ": 3}


@pytest.mark.parametrize("vocab,merges,exc,pattern", [
    ("{not json", "#version: 0.2\na b\n", ValueError, r"vocab\.json: not valid JSON"),
    ("[1, 2]", "a b\n", ValueError, r"vocab\.json: expected a JSON object"),
    (json.dumps({"a": 0, "b": "one"}), "", ValueError, r"vocab\.json: token \"b\" has id \"one\", expected a non-negative integer"),
    (json.dumps({"a": 0, "b": 1.5}), "", ValueError, r"token \"b\" has id 1\.5"),
    (json.dumps({"a": -1}), "", ValueError, r"token \"a\" has id -1"),
    (json.dumps({"a": 0, "b": 2000000000}), "", ValueError, r"token \"b\" has id 2000000000, far past the 2 entries"),
    (json.dumps(GOOD_VOCAB), "#version: 0.2\nab\n", ValueError, r"merges\.txt line 2: expected two tokens separated by one space, got \"ab\""),
    (json.dumps(GOOD_VOCAB), "a b\na  b\n", ValueError, r"merges\.txt line 2: expected two tokens"),
    (json.dumps(GOOD_VOCAB), "a b\na zz\n", ValueError, r"merges\.txt line 2: merge of unknown token \"zz\""),
    (json.dumps(GOOD_VOCAB), "b a\n", ValueError, r"merges\.txt line 1: merged token \"ba\" is not in the vocabulary"),
])
def test_corrupt_files(tmp_path, vocab, merges, exc, pattern):
    d = write(tmp_path / "tok", vocab, merges)
    with pytest.raises(exc, match=pattern):
        GPT2Tokenizer.from_pretrained(str(d))
    with pytest.raises(exc, match=pattern.replace(r"vocab\.json", "vocab_json").replace(r"merges\.txt", "merges")):
        _core.BPETokenizer.from_strings(vocab, merges)


def test_missing_files(tmp_path):
    with pytest.raises(OSError, match="not a GPT-2 tokenizer directory"):
        GPT2Tokenizer.from_pretrained(str(tmp_path))
    with pytest.raises(OSError, match=r"nope\.json: cannot open"):
        _core.BPETokenizer(str(tmp_path / "nope.json"), str(tmp_path / "merges.txt"))
    with pytest.raises(OSError, match="no-such-org/no-such-model-xyz"):
        GPT2Tokenizer.from_pretrained("no-such-org/no-such-model-xyz")


def test_decode_errors(ours):
    with pytest.raises(IndexError, match=r"token id 99999 \(position 1\) is not in the vocabulary"):
        ours.decode([5, 99999])
    with pytest.raises(IndexError, match=r"token id -3 \(position 0\)"):
        ours.decode([-3])
    with pytest.raises(TypeError, match=r"ids\[1\] is not an integer"):
        ours.decode([1, "x"])
    with pytest.raises(TypeError, match="use batch_decode"):
        ours.decode([[1, 2], [3]])
    with pytest.raises(TypeError, match="text must be a str"):
        ours(b"bytes")


def test_missing_byte_token(tmp_path):
    """A vocabulary without a byte's token cannot encode text with that byte: clear error."""
    tok = _core.BPETokenizer.from_strings(json.dumps(GOOD_VOCAB), "a b\n")
    assert tok.encode("ab") == [2] and tok.encode(" a") == [3, 0]
    with pytest.raises(KeyError, match=r"byte 0x63 has no token"):
        tok.encode("abc")
    with pytest.raises(KeyError, match=r"byte 0x63 has no token"):
        tok.encode_batch(["ab", "abc", "a"])


# ---------------------------------------------------------------- the pre-tokeniser over all of Unicode

def test_pretokenizer_all_code_points():
    """Every code point (shuffled, mixed with spaces, newlines, digits, apostrophes) splits
    exactly as the reference ByteLevel pre-tokeniser (Oniguruma running the GPT-2 pattern):
    this checks the generated letter/number/space table code point by code point."""
    from tokenizers import pre_tokenizers
    ref = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = _core.BPETokenizer.from_strings(json.dumps(GOOD_VOCAB), "")
    b2u = bytes_to_unicode()
    rng = np.random.default_rng(7)
    cps = np.array([c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF])
    rng.shuffle(cps)
    glue = [" ", " ", "\n", "  ", "'s", "'", "1", "a", ".", "\t", "\u3000"]
    pieces = []
    for i, c in enumerate(cps):
        pieces.append(chr(c))
        if rng.random() < 0.5:
            pieces.append(glue[rng.integers(len(glue))])
    text = "".join(pieces)
    for start in range(0, len(text), 200_000):     # chunks keep the pieces' lists small
        chunk = text[start:start + 200_000]
        # byte-level pieces hold one character per byte: equal lengths in order = equal splits
        # (both sides concatenate to the chunk)
        expected_pieces = [p for p, _ in ref.pre_tokenize_str(chunk)]
        got_pieces = tok.pretokenize(chunk)
        assert b"".join(got_pieces) == chunk.encode()
        if list(map(len, got_pieces)) == list(map(len, expected_pieces)):
            continue
        expected = expected_pieces
        got = ["".join(b2u[b] for b in piece) for piece in got_pieces]
        if got != expected:
            k = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e) if len(got) == len(expected) \
                else next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), min(len(got), len(expected)))
            raise AssertionError(f"split differs at piece {k}: ours {got[k:k + 3]} vs reference {expected[k:k + 3]}")


def test_python_threads_share_a_tokenizer(ours):
    """Several Python threads encoding/decoding through one tokenizer (GIL released in C)."""
    from concurrent.futures import ThreadPoolExecutor
    texts = all_texts()
    expected = [ours.encode(t) for t in texts]

    def work(k):
        return [ours.decode(ours.encode(t)) == t and ours.encode(t) == e for t, e in zip(texts, expected)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(8)))
    assert all(all(r) for r in results)


@pytest.mark.parametrize("option", [dict(add_prefix_space=True), dict(add_bos_token=True)])
def test_config_options(tok_dir, option):
    """add_prefix_space (per stretch between special tokens, only when it does not start
    with ' ') and add_bos_token, as transformers applies them."""
    from transformers import GPT2Tokenizer as HFGPT2Tokenizer
    hf = HFGPT2Tokenizer.from_pretrained(str(tok_dir), **option)
    ours = GPT2Tokenizer.from_pretrained(str(tok_dir), **option)
    for text in ADVERSARIAL:
        assert ours.encode(text) == hf.encode(text), text
        assert ours.tokenize(text) == hf.tokenize(text), text
    assert ours(BATCH)["input_ids"] == hf(BATCH)["input_ids"]


def test_naming_special_tokens(hf, ours):
    """Setting pad_token to an unknown string does not add it (its id is the unk id);
    setting *_token_id names the token of that id; None clears."""
    hf.pad_token = ours.pad_token = "[MYPAD]"
    assert len(ours) == len(hf) and ours.pad_token_id == hf.pad_token_id
    assert ours.encode("x[MYPAD]") == hf.encode("x[MYPAD]")
    hf.pad_token_id = ours.pad_token_id = 5
    assert ours.pad_token == hf.pad_token and ours.pad_token_id == hf.pad_token_id == 5
    hf.eos_token = ours.eos_token = None
    assert ours.eos_token_id is None and hf.eos_token_id is None
    assert ours.special_tokens_map == hf.special_tokens_map
    assert sorted(ours.all_special_ids) == sorted(hf.all_special_ids)


def test_lone_surrogate_is_a_clear_error(ours):
    """A str with a lone surrogate has no UTF-8 form: UnicodeEncodeError, not a crash."""
    with pytest.raises(UnicodeEncodeError, match="surrogate"):
        ours.encode("abc\ud800def")
    with pytest.raises(UnicodeEncodeError, match="surrogate"):
        ours(["fine", "x\udfffy"])


def test_clean_up_tokenization_spaces(hf, ours):
    """transformers 5 skips the WordPiece clean-up for BPE tokenizers (with a warning)."""
    text = "a , b . c 's don 't ? !"
    ids = ours.encode(text)
    assert ours.decode(ids, clean_up_tokenization_spaces=False) == hf.decode(ids, clean_up_tokenization_spaces=False)
    GPT2Tokenizer._warned_cleanup = False
    with pytest.warns(UserWarning, match="Ignoring clean_up_tokenization_spaces"):
        got = ours.decode(ids, clean_up_tokenization_spaces=True)
    assert got == hf.decode(ids, clean_up_tokenization_spaces=True) == text


def test_fast_merge_matches_reference_loop(ours):
    """The heap-ordered merge with the word cache equals GPT-2's plain O(n^2) merge loop
    (no cache) on every test text, a long document included."""
    core = ours._tok
    texts = all_texts() + ["\n".join(CORPUS_LINES * 5) + " " * 300 + "ab" * 500]
    for text in texts:
        assert core.encode(text) == core.encode(text, reference=True), text
