"""tokenizer.json read and run in C (csrc/io/tokenizer_json.c) against the `tokenizers` library.

Tokenizer files of each style are trained here with `tokenizers` itself and saved in its
format: byte-level BPE with the GPT-2 (GPT-NeoX), Llama 3 and Qwen2 pre-tokenizer regexes,
and SentencePiece-style BPE with byte fallback as Llama 2 (Prepend/Replace normalizer and a
Replace/ByteFallback/Fuse/Strip decoder), Gemma (Replace normalizer) and Mistral
(Metaspace) ship them. Ids and decoded text must be identical (no tolerance: integers and
strings).
"""
import json
import unicodedata

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

from mechinterp_c import _core  # noqa: E402
from mechinterp_c.transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")

CORPUS = ["Hello world! The quick brown fox jumps over the lazy dog. 12345 numbers, émigré café naïve",
          "日本語のテキスト 中文 한국어 Ελληνικά русский текст 😀 emoji 👍🏽 family 👨‍👩‍👧",
          "It's we're they'll I'd DON'T WE'VE 2024-12-02 3.14159 $100 #tag @user",
          "  tabs\tand   spaces\n\nnew lines\r\n  indented code: def f(x): return x**2",
          ] * 40

TEXTS = ["Hello world!", "  leading spaces and trailing  ", "It's WE'RE they'LL I'D", "12345678 digits 3.14",
         "émigré 日本語 😀😀 emoji 👨‍👩‍👧", "line\nbreaks\r\n\n  x", "tab\tsep\t\t end", "", " ", "   ",
         "unknown ☃ chars ∂x ∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "<s>x</s> y <s>", "<|begin_of_text|>Hi<|end_of_text|>!", "a\u0301 e\u0301",
         "multiple    runs     of      spaces", "\n\n\n", "x" * 300, "Ünïcödé ÀÉÎÕÜ ß ﬁ"] + CORPUS[:4]


def _byte_level(regex, nfc=False, ignore_merges=False, template=False):
    t = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if regex is None:
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), "isolated", False),
                                                   pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                            use_regex=False)])
    if nfc:
        t.normalizer = normalizers.NFC()
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if template:
        t.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                         special_tokens=[("<|begin_of_text|>", 0)])
    return t


def _sentencepiece(style):
    t = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if style == "llama2":
        t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                       decoders.Strip(" ", 1, 0)])
    elif style == "gemma":
        t.normalizer = normalizers.Replace(" ", "▁")
        t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    else:   # mistral: Metaspace
        t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    # byte tokens in the vocabulary but not added tokens, as Llama 2's files have them
    alphabet = [f"<0x{i:02X}>" for i in range(256)]
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", "</s>"]
                                                      + alphabet, limit_alphabet=60))
    data = json.loads(t.to_str())
    data["added_tokens"] = [a for a in data["added_tokens"] if not a["content"].startswith("<0x")]
    t = tokenizers.Tokenizer.from_str(json.dumps(data))
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return t


STYLES = {
    "neox": lambda: _byte_level(None, nfc=True),
    "llama3": lambda: _byte_level(LLAMA3, ignore_merges=True, template=True),
    "qwen2": lambda: _byte_level(QWEN2, nfc=True),
    "llama2": lambda: _sentencepiece("llama2"),
    "gemma": lambda: _sentencepiece("gemma"),
    "mistral": lambda: _sentencepiece("mistral"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokjson")
    out = {}
    for name, make in STYLES.items():
        ref = make()
        path = d / f"{name}.json"
        ref.save(str(path))
        out[name] = (ref, str(path))
    return out


@pytest.mark.parametrize("style", list(STYLES))
def test_ids_and_decode_match_tokenizers(files, style):
    ref, path = files[style]
    ours = _core.BPETokenizer.from_tokenizer_json(path)
    nfc = ours.pipeline()["nfc"]
    for text in TEXTS:
        want = ref.encode(text, add_special_tokens=False).ids
        got = ours.encode(unicodedata.normalize("NFC", text) if nfc else text)
        assert got == want, f"{style}: {text!r}"
        for skip in (False, True):
            assert ours.decode(want, skip) == ref.decode(want, skip_special_tokens=skip), f"{style}: {text!r}"
    # batches of texts (the core's threads) give the same ids as one by one
    assert ours.encode_batch(TEXTS[:12]) == [ours.encode(t) for t in TEXTS[:12]]


@pytest.mark.parametrize("style", list(STYLES))
def test_pretrained_tokenizer_front(files, style, tmp_path):
    ref, path = files[style]
    (tmp_path / "tokenizer.json").write_text(open(path).read())
    pad = "</s>" if style in ("llama2", "gemma", "mistral") else "<|end_of_text|>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                                "padding_side": "left", "pad_token": pad}))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(tok, PreTrainedTokenizerFast)
    for text in TEXTS[:10]:
        assert tok.encode(text) == ref.encode(text).ids                 # with the post-processor
        assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text, add_special_tokens=False).ids
    batch = tok(["Hello world!", "a much longer prompt than the first one"], padding=True, return_tensors="np")
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0, 0] == 0                           # padding_side "left" from the config
    assert tok.batch_decode(batch["input_ids"][:1, -3:]) == [ref.decode(list(batch["input_ids"][0, -3:]),
                                                                        skip_special_tokens=False)]


def _edit(path, tmp_path, fn):
    data = json.loads(open(path).read())
    fn(data)
    out = tmp_path / "tokenizer.json"
    out.write_text(json.dumps(data))
    return str(out)


def _set(keys, value):
    def fn(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


BAD = [
    ("llama2", lambda d: d.pop("model"), ValueError, r"no \"model\" section"),
    ("llama2", _set(["model", "type"], "WordPiece"), NotImplementedError, r"model\.type \"WordPiece\""),
    ("llama2", _set(["model", "byte_fallback"], "yes"), ValueError, r"model\.byte_fallback must be true or false"),
    ("llama2", lambda d: d["model"]["merges"].append("▁ zzzz"), ValueError,
     r"model\.merges\[\d+\]: merge of unknown token \"zzzz\""),
    ("llama2", _set(["model", "unk_token"], "<nothere>"), ValueError, r"unk_token \"<nothere>\" is not in model\.vocab"),
    ("llama2", _set(["normalizer"], {"type": "Lowercase"}), NotImplementedError, r"normalizer type \"Lowercase\""),
    ("llama3", _set(["pre_tokenizer", "pretokenizers", 0, "pattern", "Regex"], r"\w+|\s+"), NotImplementedError,
     r"Split regex .* is not one of"),
    ("llama3", lambda d: d["added_tokens"][0].update(lstrip=True), NotImplementedError, r"lstrip true"),
    ("neox", _set(["decoder"], {"type": "WordPiece", "prefix": "##"}), NotImplementedError, r"decoder \"WordPiece\""),
    ("neox", _set(["post_processor"], {"type": "BertProcessing", "sep": ["[SEP]", 1], "cls": ["[CLS]", 0]}),
     NotImplementedError, r"post_processor type \"BertProcessing\""),
    ("gemma", _set(["model", "vocab", "bad"], "x"), ValueError, r"model\.vocab: token \"bad\" has id \"x\""),
]


@pytest.mark.parametrize("style,edit,exc,msg", BAD)
def test_corrupt_or_unsupported_files_are_refused_by_name(files, tmp_path, style, edit, exc, msg):
    path = _edit(files[style][1], tmp_path, edit)
    with pytest.raises(exc, match=msg) as info:
        _core.BPETokenizer.from_tokenizer_json(path)
    assert "tokenizer.json" in str(info.value)
    # nothing is left half-loaded: the original still loads and works
    ours = _core.BPETokenizer.from_tokenizer_json(files[style][1])
    assert ours.encode("Hello world!") == files[style][0].encode("Hello world!", add_special_tokens=False).ids


def test_not_json_names_the_file(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not valid JSON"):
        _core.BPETokenizer.from_tokenizer_json(str(p))
