"""Fallback checkpoints for the notebooks: GPT-2-shaped models made on the spot, without torch.

This machine (and CI) has no model hub. When ``gpt2`` / ``gpt2-large`` is not in the
local Hugging Face cache, :func:`load_or_create` prints a visible note and returns a
directory holding a random-initialised checkpoint of the same architecture, in
Hugging Face's own format, so that ``transformers.GPT2LMHeadModel.from_pretrained``
and ``GPT2Tokenizer.from_pretrained`` load it exactly like the real one:

- ``config.json``: HF GPT-2 config (``model_type: "gpt2"``) with the real model's
  layers / width / heads / positions (``MI_NOTEBOOK_SMALL=1``: fewer layers, narrower,
  same structure, see :data:`SMALL`), plus ``"mechinterp_c_fallback": true``;
- ``model.safetensors``: ``transformer.*`` tensors (lm_head tied to wte, as HF saves
  it), initialised as ``GPT2PreTrainedModel._init_weights`` does: N(0, 0.02) weights,
  ``c_proj`` weights N(0, 0.02 / sqrt(2 n_layer)), zero biases, unit LayerNorm gains;
- ``vocab.json`` + ``merges.txt`` (+ ``tokenizer_config.json``): a byte-level BPE
  trained here in pure Python (:func:`train_byte_bpe`) on the built-in English text
  (``data/english_text.json``): the 256 byte tokens in GPT-2's order, a few thousand
  merges and ``<|endoftext|>``. Full size keeps GPT-2's vocabulary size 50257 with
  ``<|endoftext|>`` at id 50256 (ids the BPE does not use are never produced); small
  size uses a dense vocabulary (``<|endoftext|>`` last).

Everything is deterministic (fixed seeds), cached under ``$MI_CHECKPOINT_DIR`` or
``~/.cache/mechinterp_c/fallback/``, and each file is written atomically (temporary
name + rename), so concurrent notebooks do not see partial files.
"""
from __future__ import annotations

import heapq
import json
import math
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from . import io as _io

__all__ = ["ARCHITECTURES", "SMALL", "EOS_TOKEN", "is_small", "cache_root", "english_text",
           "bytes_to_unicode", "pretokenize", "train_byte_bpe", "gpt2_config", "init_gpt2_weights",
           "write_tokenizer", "create_checkpoint", "load_or_create"]

#: The real architectures (Hugging Face config fields).
ARCHITECTURES = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257),
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20, n_positions=1024, vocab_size=50257),
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25, n_positions=1024, vocab_size=50257),
}
#: ``MI_NOTEBOOK_SMALL=1`` shapes: same structure (heads, pre-LN blocks, gelu_new, tied
#: unembedding), fewer layers and narrower; enough layers for the notebooks' layer indices
#: (layer 6, layer 9) and gpt2-large's 20 heads (the notebook ablates head 4 and plots a 4x5 grid).
#: ``vocab_size=None``: the dense BPE vocabulary.
SMALL = {
    "gpt2": dict(n_layer=8, n_embd=128, n_head=4, n_positions=128, vocab_size=None),
    "gpt2-medium": dict(n_layer=8, n_embd=192, n_head=6, n_positions=128, vocab_size=None),
    "gpt2-large": dict(n_layer=10, n_embd=320, n_head=20, n_positions=128, vocab_size=None),
    "gpt2-xl": dict(n_layer=10, n_embd=400, n_head=25, n_positions=128, vocab_size=None),
}
EOS_TOKEN = "<|endoftext|>"
#: merges of the fallback BPE ("a few thousand"; fewer if the text runs out of pairs)
N_MERGES = 2500
_VERSION = "v1"      # bump when the files' content changes: a new cache directory


def is_small():
    """True when ``MI_NOTEBOOK_SMALL`` is set to something other than '', '0' or 'false'."""
    return os.environ.get("MI_NOTEBOOK_SMALL", "").strip().lower() not in ("", "0", "false", "no")


def cache_root():
    """Where fallback checkpoints live: ``$MI_CHECKPOINT_DIR``, else
    ``$XDG_CACHE_HOME/mechinterp_c/fallback``, else ``~/.cache/mechinterp_c/fallback``."""
    if os.environ.get("MI_CHECKPOINT_DIR"):
        return Path(os.environ["MI_CHECKPOINT_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "mechinterp_c" / "fallback"


def english_text():
    """The built-in English text (original prose, public domain) as one string."""
    path = Path(__file__).with_name("data") / "english_text.json"
    with open(path, encoding="utf-8") as f:
        return "\n".join(json.load(f)["paragraphs"]) + "\n"


# --------------------------------------------------------------------------- BPE
def bytes_to_unicode():
    """GPT-2's byte -> printable character table (``openai/gpt-2`` ``encoder.py``):
    printable Latin-1 bytes map to themselves, the others to chr(256 + n)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# without the third-party `regex` module: the same rule with ASCII letters/digits
# (identical on ASCII text; only used to choose the merges, never to apply them)
_ASCII_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""


def pretokenize(text):
    """GPT-2's pre-tokenizer: split ``text`` into words with their leading space."""
    try:
        import regex
        return regex.findall(_GPT2_SPLIT, text)
    except ImportError:
        import re
        return re.findall(_ASCII_SPLIT, text)


def train_byte_bpe(text, n_merges=N_MERGES, min_frequency=2):
    """Train a byte-level BPE on ``text`` (pure Python).

    Words come from :func:`pretokenize`, as byte characters of :func:`bytes_to_unicode`.
    Each step merges the most frequent adjacent pair (ties: the smallest pair in
    string order, so the result is deterministic), until ``n_merges`` merges or no
    pair occurs ``min_frequency`` times. Pair counts are updated incrementally (a
    heap with stale entries skipped), so a few thousand merges take about a second.
    Returns ``(tokens, merges)``: the token strings (256 byte tokens in GPT-2's id
    order, then each new merge result once) and the list of merged pairs.
    """
    b2u = bytes_to_unicode()
    word_counts = Counter(pretokenize(text))
    words = [[b2u[b] for b in w.encode("utf-8")] for w in word_counts]
    freqs = list(word_counts.values())
    pair_count = Counter()
    where = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_count[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    tokens = sorted(b2u.values())          # GPT-2's ids 0..255 are the byte chars by code point
    known = set(tokens)
    merges = []
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue                        # stale heap entry
        if -neg < min_frequency:
            break
        merges.append(pair)
        new = pair[0] + pair[1]
        if new not in known:
            known.add(new)
            tokens.append(new)
        touched = set()
        for i in where.pop(pair):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):
                pair_count[p] -= f
                touched.add(p)
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == pair[0] and w[j + 1] == pair[1]:
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pair_count[p] += f
                where[p].add(i)
                touched.add(p)
        pair_count.pop(pair, None)
        touched.discard(pair)
        for p in touched:
            c = pair_count[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_count.pop(p, None)
    return tokens, merges


_BPE_CACHE = {}


def _trained_bpe():
    if "bpe" not in _BPE_CACHE:
        _BPE_CACHE["bpe"] = train_byte_bpe(english_text(), N_MERGES, min_frequency=1)
    return _BPE_CACHE["bpe"]


def _atomic_write_text(path, text):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_tokenizer(directory, vocab_size=None, model_max_length=1024):
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` of the fallback BPE.

    ``vocab_size=None``: dense ids, ``<|endoftext|>`` last; an int: ``<|endoftext|>``
    gets id ``vocab_size - 1`` (GPT-2's 50256 for 50257) and the ids in between are
    unused. Returns the id of ``<|endoftext|>``.
    """
    tokens, merges = _trained_bpe()
    eos_id = len(tokens) if vocab_size is None else int(vocab_size) - 1
    if eos_id < len(tokens):
        raise ValueError(f"write_tokenizer: vocab_size={vocab_size} is smaller than the "
                         f"{len(tokens) + 1} tokens of the fallback BPE")
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab[EOS_TOKEN] = eos_id
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(d / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    _atomic_write_text(d / "merges.txt",
                       "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    _atomic_write_text(d / "tokenizer_config.json", json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": int(model_max_length),
        "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN,
        "add_prefix_space": False, "add_bos_token": False}, indent=1))
    return eos_id


# --------------------------------------------------------------------------- model
def gpt2_config(name="gpt2", small=None):
    """The HF ``config.json`` dict of the fallback for ``name`` (full or small size)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"no fallback architecture for {name!r} (known: "
                         f"{', '.join(ARCHITECTURES)})")
    small = is_small() if small is None else bool(small)
    shape = dict((SMALL if small else ARCHITECTURES)[name])
    if shape["vocab_size"] is None:
        shape["vocab_size"] = len(_trained_bpe()[0]) + 1
    eos = shape["vocab_size"] - 1
    return {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1, "bos_token_id": eos, "eos_token_id": eos, "embd_pdrop": 0.1,
        "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
        "n_ctx": shape["n_positions"], "n_embd": shape["n_embd"], "n_head": shape["n_head"],
        "n_inner": None, "n_layer": shape["n_layer"], "n_positions": shape["n_positions"],
        "reorder_and_upcast_attn": False, "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
        "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
        "summary_type": "cls_index", "summary_use_proj": True, "tie_word_embeddings": True,
        "use_cache": True, "vocab_size": shape["vocab_size"],
        "mechinterp_c_fallback": True,
        "mechinterp_c_note": f"random-initialised {name}-shaped checkpoint"
                             f"{' (small)' if small else ''} made by mechinterp_c.checkpoints",
    }


def _weight_specs(cfg):
    """(HF name, shape, kind) of every GPT-2 tensor, in save_pretrained's order."""
    D, L, V, P = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    M = cfg.get("n_inner") or 4 * D
    specs = [("transformer.wte.weight", (V, D), "w"), ("transformer.wpe.weight", (P, D), "w")]
    for l in range(L):
        h = f"transformer.h.{l}."
        specs += [(h + "ln_1.weight", (D,), "one"), (h + "ln_1.bias", (D,), "zero"),
                  (h + "attn.c_attn.weight", (D, 3 * D), "w"), (h + "attn.c_attn.bias", (3 * D,), "zero"),
                  (h + "attn.c_proj.weight", (D, D), "proj"), (h + "attn.c_proj.bias", (D,), "zero"),
                  (h + "ln_2.weight", (D,), "one"), (h + "ln_2.bias", (D,), "zero"),
                  (h + "mlp.c_fc.weight", (D, M), "w"), (h + "mlp.c_fc.bias", (M,), "zero"),
                  (h + "mlp.c_proj.weight", (M, D), "proj"), (h + "mlp.c_proj.bias", (D,), "zero")]
    specs += [("transformer.ln_f.weight", (D,), "one"), ("transformer.ln_f.bias", (D,), "zero")]
    return specs


def _make_tensor(cfg, name, shape, kind, seed):
    std = cfg["initializer_range"]
    if kind == "one":
        return np.ones(shape, np.float32)
    if kind == "zero":
        return np.zeros(shape, np.float32)
    if kind == "proj":      # GPT-2's scaled init of the residual projections
        std = std / math.sqrt(2 * cfg["n_layer"])
    # one generator per tensor (seeded by its name): reproducible tensor by tensor
    rng = np.random.default_rng([seed, *name.encode("utf-8")])
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)


def init_gpt2_weights(cfg, seed=0):
    """All tensors of a random-initialised GPT-2 (HF names, float32), as
    ``GPT2PreTrainedModel._init_weights`` distributes them (see the module docstring)."""
    return {n: _make_tensor(cfg, n, s, k, seed) for n, s, k in _weight_specs(cfg)}


def _dir_for(name, small):
    return cache_root() / f"{name}{'-small' if small else ''}-{_VERSION}"


def create_checkpoint(name="gpt2", directory=None, small=None, seed=0, tokenizer_only=False):
    """Create (or complete) the fallback checkpoint of ``name`` and return its directory.

    ``directory`` defaults to ``cache_root()/NAME[-small]-v1``. Files already there are
    kept (they are deterministic); missing ones are written atomically. With
    ``tokenizer_only=True`` only the tokenizer files are written. Weights are produced
    and written one tensor at a time (gpt2-large full size never needs 3 GB at once).
    """
    small = is_small() if small is None else bool(small)
    cfg = gpt2_config(name, small)
    d = Path(directory) if directory is not None else _dir_for(name, small)
    d.mkdir(parents=True, exist_ok=True)
    if not ((d / "vocab.json").is_file() and (d / "merges.txt").is_file()):
        write_tokenizer(d, None if small else cfg["vocab_size"], cfg["n_positions"])
    if tokenizer_only:
        return d
    if not (d / _io.SAFETENSORS_NAME).is_file():
        entries = [(n, np.float32, s, (lambda n=n, s=s, k=k: _make_tensor(cfg, n, s, k, seed)))
                   for n, s, k in _weight_specs(cfg)]
        _io._write_safetensors(d / _io.SAFETENSORS_NAME, entries, {"format": "pt"})
    if not (d / "config.json").is_file():   # written last: its presence marks a complete dir
        _atomic_write_text(d / "config.json", json.dumps(cfg, indent=2))
    return d


def load_or_create(name="gpt2", small=None, tokenizer_only=False, cache_dir=None, quiet=False):
    """The directory of model ``name``: the real one when the Hugging Face cache has it
    (``mechinterp_c.io.resolve_pretrained``), else a fallback made by
    :func:`create_checkpoint`, announced by a printed note.

    A cached model without safetensors weights (only ``pytorch_model.bin``, which needs
    torch) also falls back, and the note says why.
    ``small`` defaults to ``MI_NOTEBOOK_SMALL``; with ``MI_NOTEBOOK_FALLBACK=1`` the
    fallback is used even when the real model is cached (to reproduce CI runs).
    ``tokenizer_only=True`` needs only ``vocab.json`` + ``merges.txt``.
    """
    force = os.environ.get("MI_NOTEBOOK_FALLBACK", "").strip().lower() not in ("", "0", "false", "no")
    incomplete = ""
    if not force:
        try:
            d = Path(_io.resolve_pretrained(name, cache_dir=cache_dir))
            if tokenizer_only:
                missing = [f for f in ("vocab.json", "merges.txt") if not (d / f).is_file()]
            else:
                missing = [f for f in ("config.json",) if not (d / f).is_file()]
                if not ((d / _io.SAFETENSORS_NAME).is_file() or (d / _io.SAFETENSORS_INDEX_NAME).is_file()):
                    missing.append(f"{_io.SAFETENSORS_NAME} (PyTorch .bin weights need torch to read)")
            if not missing:
                return d
            incomplete = f"{name} is in the Hugging Face cache ({d}) without {', '.join(missing)}"
        except FileNotFoundError:
            pass
    small = is_small() if small is None else bool(small)
    d = create_checkpoint(name, small=small, tokenizer_only=tokenizer_only)
    if not quiet:
        cfg = gpt2_config(name, small)
        reason = ("MI_NOTEBOOK_FALLBACK is set" if force else incomplete
                  or f"{name} not in the local Hugging Face cache ({_io.hf_cache_dir()})")
        if tokenizer_only:
            what = (f"byte-level BPE tokenizer ({len(_trained_bpe()[1])} merges trained on the "
                    f"built-in English text, <|endoftext|> = {cfg['vocab_size'] - 1})")
        else:
            what = (f"random-initialised {name}-shaped checkpoint ({cfg['n_layer']} layers, "
                    f"d_model {cfg['n_embd']}, {cfg['n_head']} heads, vocab {cfg['vocab_size']}"
                    f"{', small: MI_NOTEBOOK_SMALL=1' if small else ''})")
        print(f"NOTE: {reason}: using a {what} in {d}. Numbers and figures below describe "
              f"that stand-in, not {name}.",
              flush=True)
    return d
