"""Fallback checkpoints (mechinterp_c.checkpoints) and io.save_safetensors.

References: ``safetensors.numpy`` reads what we write; ``transformers.GPT2Tokenizer``
and ``transformers.GPT2LMHeadModel.from_pretrained`` load the created directories, and
their ids / logits are compared with mechinterp_c's tokenizer and C model.
"""
import json
import math

import numpy as np
import pytest

from mechinterp_c import checkpoints as ck
from mechinterp_c import io as mio
from mechinterp_c.transformers import GPT2LMHeadModel as MiGPT2, GPT2Tokenizer as MiTok

TEXTS = [
    "I saw her at the market.",
    "Be who you are and say what you feel,\n      because those who mind don't matter",
    "Zebras quizzically jumped over 1234 fences; caf\u00e9 \u00e9l\u00e8ves \u4f60\u597d!",
    "  leading spaces,\ttabs and\n\nnew lines<|endoftext|>after the special token  ",
]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    # every test gets the same private fallback cache and an empty HF cache
    root = tmp_path_factory.getbasetemp() / "fallback-cache"
    monkeypatch.setenv("MI_CHECKPOINT_DIR", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "empty-hf-cache"))
    monkeypatch.delenv("MI_NOTEBOOK_FALLBACK", raising=False)
    monkeypatch.delenv("MI_NOTEBOOK_SMALL", raising=False)


# --------------------------------------------------------------------------- safetensors
def test_save_safetensors_round_trip(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((3, 5)).astype(np.float32),
               "strided": rng.standard_normal((4, 6))[:, ::2],           # non-contiguous
               "h": rng.standard_normal(7).astype(np.float16),
               "i": np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
               "empty": np.zeros((0, 4), np.float32), "scalar": np.array(2.5, np.float32),
               "mask": np.array([True, False, True])}
    p = mio.save_safetensors(tmp_path / "t.safetensors", tensors, {"format": "pt"})
    theirs = st.load_file(str(p))
    ours = mio.load_safetensors(p)
    for k, v in tensors.items():
        np.testing.assert_array_equal(theirs[k], v)
        assert theirs[k].dtype == v.dtype
        np.testing.assert_array_equal(ours[k], v)
    assert not list(tmp_path.glob(".*tmp"))     # the temporary file was renamed away


def test_save_safetensors_errors(tmp_path):
    with pytest.raises(TypeError, match="'c'.*complex128"):
        mio.save_safetensors(tmp_path / "x.safetensors", {"c": np.zeros(2, np.complex128)})
    with pytest.raises(TypeError, match="metadata"):
        mio.save_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2)}, {"k": 1})
    with pytest.raises(ValueError, match="invalid tensor name"):
        mio.save_safetensors(tmp_path / "x.safetensors", {"": np.zeros(2)})
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- tokenizer
def test_bpe_has_gpt2_byte_order_and_thousands_of_merges():
    pytest.importorskip("transformers")
    from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_b2u
    assert ck.bytes_to_unicode() == hf_b2u()
    tokens, merges = ck._trained_bpe()
    # ids 0..255: the byte characters in code-point order, as in GPT-2's vocab.json
    assert tokens[:256] == sorted(hf_b2u().values())
    assert 2000 <= len(merges) <= ck.N_MERGES
    # every merge result is a token; the trained merges apply to their own training text
    assert set(a + b for a, b in merges) <= set(tokens)
    assert len(tokens) == len(set(tokens))


def _naive_bpe(text, n_merges, min_frequency):
    """Reference trainer: recount every pair of every word before each merge."""
    from collections import Counter
    b2u = ck.bytes_to_unicode()
    counts = Counter(ck.pretokenize(text))
    words = {w: [b2u[b] for b in w.encode("utf-8")] for w in counts}
    merges = []
    while len(merges) < n_merges:
        pc = Counter()
        for w, sym in words.items():
            for p in zip(sym, sym[1:]):
                pc[p] += counts[w]
        if not pc:
            break
        best = min(pc, key=lambda p: (-pc[p], p))      # most frequent, then string order
        if pc[best] < min_frequency:
            break
        merges.append(best)
        for w, sym in words.items():
            out, j = [], 0
            while j < len(sym):
                if j + 1 < len(sym) and (sym[j], sym[j + 1]) == best:
                    out.append(sym[j] + sym[j + 1])
                    j += 2
                else:
                    out.append(sym[j])
                    j += 1
            words[w] = out
    return merges


@pytest.mark.parametrize("min_frequency", [1, 2])
def test_incremental_bpe_equals_naive_recount(min_frequency):
    text = "\n".join(ck.english_text().split("\n")[:3]) + " aaab aaab aaab xy"
    tokens, merges = ck.train_byte_bpe(text, n_merges=400, min_frequency=min_frequency)
    assert merges == _naive_bpe(text, 400, min_frequency)
    tokens, merges = ck.train_byte_bpe("aaab aaab aaab xy", n_merges=10, min_frequency=1)
    # (a,a) x6 first; then (a,b) and (aa,a) tie at 3: string order picks (a,b)
    assert merges[:3] == [("a", "a"), ("a", "b"), ("aa", "ab")]
    assert all(a + b in tokens for a, b in merges)


@pytest.mark.parametrize("small", [True, False])
def test_tokenizer_files_match_transformers(small):
    transformers = pytest.importorskip("transformers")
    d = ck.create_checkpoint("gpt2", small=small, tokenizer_only=True)
    hf = transformers.GPT2Tokenizer.from_pretrained(str(d))
    ours = MiTok.from_pretrained(d)
    eos = hf.eos_token_id
    assert eos == ours.eos_token_id == (50256 if not small else len(ck._trained_bpe()[0]))
    for t in TEXTS:
        ids = hf.encode(t)
        assert ours.encode(t) == ids, t
        assert max(ids) <= eos
        assert hf.decode(ids) == t and ours.decode(ids) == t
    assert eos in hf.encode(TEXTS[3])
    # the notebooks' target words are single tokens
    for w in (" her", " the"):
        assert len(hf.encode(w)) == 1
    # padded batch as the seed makes it (pad = eos)
    hf.pad_token = hf.eos_token
    ours.pad_token = ours.eos_token
    a = hf(TEXTS[:3], padding=True, return_tensors="np")
    b = ours(TEXTS[:3], padding=True, return_tensors="np")
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    np.testing.assert_array_equal(a["attention_mask"], b["attention_mask"])


# --------------------------------------------------------------------------- model
def _hf_vs_ours(d, n_tokens=24):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(d)).eval()
    ours = MiGPT2.from_pretrained(d)
    tok = MiTok.from_pretrained(d)
    ids = np.array([tok.encode(TEXTS[0] + " " + TEXTS[1])[:n_tokens]])
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    got = np.asarray(ours(ids).logits)
    return hf, ref, got


def test_small_gpt2_checkpoint_loads_in_transformers_and_agrees():
    d = ck.create_checkpoint("gpt2", small=True)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["mechinterp_c_fallback"] is True
    assert (cfg["n_layer"], cfg["n_embd"], cfg["n_head"]) == (8, 128, 4)
    hf, ref, got = _hf_vs_ours(d)
    assert hf.config.vocab_size == cfg["vocab_size"] == len(ck._trained_bpe()[0]) + 1
    # float32 on both sides, 8 layers, different summation orders: logits ~0.2 in
    # size agree to ~1e-6; 1e-4 leaves slack yet catches any wrong tensor
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_initialisation_follows_gpt2_init_weights():
    cfg = ck.gpt2_config("gpt2-large", small=True)
    w = ck.init_gpt2_weights(cfg, seed=0)
    L = cfg["n_layer"]
    assert (cfg["n_layer"], cfg["n_embd"], cfg["n_head"]) == (10, 320, 20)
    assert np.all(w["transformer.h.3.ln_1.weight"] == 1) and np.all(w["transformer.h.3.ln_1.bias"] == 0)
    assert np.all(w["transformer.h.0.attn.c_attn.bias"] == 0)
    # std of ~1e5 normal samples: relative standard error ~0.3%; 3% tolerance
    assert abs(w["transformer.h.2.attn.c_attn.weight"].std() / 0.02 - 1) < 0.03
    assert abs(w["transformer.wte.weight"].std() / 0.02 - 1) < 0.03
    assert abs(w["transformer.h.2.mlp.c_proj.weight"].std() / (0.02 / math.sqrt(2 * L)) - 1) < 0.03
    # deterministic, and distinct tensors are not copies of each other
    w2 = ck.init_gpt2_weights(cfg, seed=0)
    np.testing.assert_array_equal(w["transformer.h.1.mlp.c_fc.weight"], w2["transformer.h.1.mlp.c_fc.weight"])
    assert not np.array_equal(w["transformer.h.1.mlp.c_fc.weight"][:10, :10],
                              w["transformer.h.2.mlp.c_fc.weight"][:10, :10])


def test_full_size_gpt2_checkpoint_has_the_real_architecture():
    # gpt2 (124M parameters, 500 MB of float32): the real shapes, vocab 50257, eos 50256
    d = ck.create_checkpoint("gpt2", small=False)
    hf, ref, got = _hf_vs_ours(d, n_tokens=8)
    c = hf.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_positions, c.vocab_size) == (12, 768, 12, 1024, 50257)
    assert c.eos_token_id == 50256
    assert sum(p.numel() for p in hf.parameters()) == 124_439_808    # GPT-2 small's count
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_load_or_create_prefers_the_hf_cache(tmp_path, monkeypatch, capsys):
    # a fake HF cache holding "gpt2": load_or_create must return it, silently
    snap = tmp_path / "hub" / "models--gpt2" / "snapshots" / ("a" * 40)
    ck.create_checkpoint("gpt2", directory=snap, small=True)
    (tmp_path / "hub" / "models--gpt2" / "refs").mkdir(parents=True)
    (tmp_path / "hub" / "models--gpt2" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert ck.load_or_create("gpt2") == snap
    assert capsys.readouterr().out == ""
    # MI_NOTEBOOK_FALLBACK forces the fallback, with the note
    monkeypatch.setenv("MI_NOTEBOOK_FALLBACK", "1")
    monkeypatch.setenv("MI_NOTEBOOK_SMALL", "1")
    d = ck.load_or_create("gpt2")
    assert d != snap and d.name == "gpt2-small-v1"
    assert "random-initialised gpt2-shaped checkpoint" in capsys.readouterr().out


def test_cached_model_without_safetensors_falls_back(tmp_path, monkeypatch, capsys):
    snap = tmp_path / "hub" / "models--gpt2" / "snapshots" / ("b" * 40)
    ck.create_checkpoint("gpt2", directory=snap, small=True)
    (snap / "model.safetensors").rename(snap / "pytorch_model.bin")    # an old torch-only snapshot
    (tmp_path / "hub" / "models--gpt2" / "refs").mkdir(parents=True)
    (tmp_path / "hub" / "models--gpt2" / "refs" / "main").write_text("b" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("MI_NOTEBOOK_SMALL", "1")
    d = ck.load_or_create("gpt2")
    out = capsys.readouterr().out
    assert d != snap and "is in the Hugging Face cache" in out and "model.safetensors" in out
    # its tokenizer files are complete: tokenizer_only uses the real snapshot
    assert ck.load_or_create("gpt2", tokenizer_only=True) == snap


def test_load_or_create_falls_back_with_a_visible_note(monkeypatch, capsys):
    monkeypatch.setenv("MI_NOTEBOOK_SMALL", "1")
    d = ck.load_or_create("gpt2-large")
    out = capsys.readouterr().out
    assert "gpt2-large not in the local Hugging Face cache" in out
    assert "random-initialised gpt2-large-shaped checkpoint" in out and str(d) in out
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= {p.name for p in d.iterdir()}
    # a second call reuses the files (deterministic content, nothing rewritten)
    mtime = (d / "model.safetensors").stat().st_mtime_ns
    assert ck.load_or_create("gpt2-large", quiet=True) == d
    assert (d / "model.safetensors").stat().st_mtime_ns == mtime
    t = ck.load_or_create("gpt2", tokenizer_only=True)
    assert "byte-level BPE tokenizer" in capsys.readouterr().out
    assert (t / "vocab.json").is_file() and (t / "merges.txt").is_file()
    only = ck.create_checkpoint("gpt2-medium", small=True, tokenizer_only=True)
    assert (only / "vocab.json").is_file() and not (only / "config.json").exists()


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="no fallback architecture for 'llama'.*gpt2-large"):
        ck.load_or_create("llama")
    with pytest.raises(ValueError, match="vocab_size=100 is smaller"):
        ck.write_tokenizer(ck.cache_root() / "bad", vocab_size=100)
