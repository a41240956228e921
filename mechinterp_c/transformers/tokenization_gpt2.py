"""GPT-2 byte-level BPE tokenizer with the Hugging Face ``GPT2Tokenizer`` interface.

The work (special-token splitting, GPT-2 pre-tokenisation, BPE merges, decoding) runs in C
(``mechinterp_c._core.BPETokenizer``, csrc/io/bpe_tokenizer.c); this module reads the files
of a checkpoint directory and provides the calling conventions of ``transformers``:
``tokenizer(texts, padding=True, return_tensors="pt")``, ``encode``, ``decode``,
``pad_token = eos_token``, ``batch_decode`` and so on.
"""
from __future__ import annotations

import gc
import glob
import json
import os
import warnings

import numpy as np

from mechinterp_c import _core

__all__ = ["GPT2Tokenizer", "GPT2TokenizerFast", "BatchEncoding"]

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
_HUGE = int(1e30)        # transformers' "no limit" model_max_length
_PAD_ERROR = ("Asking to pad but the tokenizer does not have a padding token. Please select a token "
              "to use as `pad_token` `(tokenizer.pad_token = tokenizer.eos_token e.g.)` or add a new "
              "pad token via `tokenizer.add_special_tokens({'pad_token': '[PAD]'})`.")


class BatchEncoding(dict):
    """The result of calling a tokenizer: a dict (``input_ids``, ``attention_mask``) whose
    keys are also attributes, so ``batch.input_ids``, ``batch["input_ids"]`` and
    ``model(**batch)`` all work."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no key {name!r} (keys: {list(self)})") from None

    def to(self, device):
        """Move torch tensors to ``device`` (as ``transformers.BatchEncoding.to``); other
        values are kept as they are. Returns self."""
        for k, v in list(self.items()):
            if hasattr(v, "to") and not isinstance(v, np.ndarray):
                self[k] = v.to(device)
        return self

    def __getstate__(self):
        return dict(self)

    def __setstate__(self, state):
        self.update(state)


def _hf_cache_snapshot(repo_id, revision="main", cache_dir=None):
    """The snapshot directory of a hub id in the Hugging Face cache, or None (the fallback
    until ``mechinterp_c.io.resolve_pretrained`` is present)."""
    home = cache_dir or os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not home:
        base = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
        home = os.path.join(base, "hub")
    repo = os.path.join(os.path.expanduser(home), "models--" + repo_id.replace("/", "--"))
    ref = os.path.join(repo, "refs", revision)
    if os.path.isfile(ref):
        with open(ref) as f:
            snap = os.path.join(repo, "snapshots", f.read().strip())
        if os.path.isdir(snap):
            return snap
    snap = os.path.join(repo, "snapshots", revision)       # a commit hash given directly
    return snap if os.path.isdir(snap) and ".." not in revision else None


def _resolve(name_or_path, revision="main", cache_dir=None):
    """A local directory for ``from_pretrained``: the path itself, or the cached hub snapshot."""
    if os.path.isdir(name_or_path):
        return name_or_path
    try:                                        # the shared resolver of mechinterp_c.io
        from mechinterp_c.io import resolve_pretrained  # type: ignore
    except ImportError:
        resolve_pretrained = None
    if resolve_pretrained is not None:
        return resolve_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    snap = _hf_cache_snapshot(str(name_or_path), revision, cache_dir)
    if snap is None:
        raise OSError(f"model {name_or_path!r} is neither a local directory nor in the Hugging Face "
                      f"cache (revision {revision!r}); this machine has no hub access: pass a local directory")
    return snap


def _token_text(value):
    """A special token from a config file: a str or an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path):
    """A tokenizer JSON file through the C reader: regular files only (a FIFO or a
    symlink loop is refused by name, never waited on), ValueError ``FILE:LINE:COL``
    for bad JSON, invalid UTF-8 or a NUL in a string."""
    return _core.parse_json_file(path)


class GPT2Tokenizer:
    """GPT-2 byte-level BPE tokenizer, a drop-in for ``transformers.GPT2Tokenizer``.

    Build it with ``GPT2Tokenizer.from_pretrained(directory_or_hub_id)`` or
    ``GPT2Tokenizer(vocab_file, merges_file)``. Ids match Hugging Face's tokenizer exactly.
    """

    _warned_cleanup = False
    is_fast = True              # as transformers 5's GPT2Tokenizer (a compiled backend)
    vocab_files_names = {"vocab_file": "vocab.json", "merges_file": "merges.txt"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file=None, merges_file=None, errors="replace", unk_token="<|endoftext|>",
                 bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token=None,
                 add_prefix_space=False, add_bos_token=False, model_max_length=_HUGE,
                 padding_side="right", truncation_side="right", clean_up_tokenization_spaces=False,
                 added_tokens=None, _core_tokenizer=None, **kwargs):
        if errors != "replace":
            raise ValueError(f"GPT2Tokenizer: only errors='replace' is supported, got {errors!r}")
        if _core_tokenizer is not None:
            self._tok = _core_tokenizer
        else:
            if vocab_file is None or merges_file is None:
                raise ValueError("GPT2Tokenizer: give vocab_file and merges_file, or use from_pretrained(dir)")
            self._tok = _core.BPETokenizer(os.fspath(vocab_file), os.fspath(merges_file))
        self._base_vocab_size = self._tok.vocab_size
        self.add_prefix_space = bool(add_prefix_space)
        self.add_bos_token = bool(add_bos_token)
        self.model_max_length = int(model_max_length) if model_max_length is not None else _HUGE
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.name_or_path = kwargs.pop("name_or_path", "")
        if kwargs:
            raise TypeError(f"GPT2Tokenizer: unexpected keyword argument(s) {sorted(kwargs)}")
        self._added = {}                       # text -> id of added (special) tokens
        for text, idx in (added_tokens or {}).items():
            self._add_special(text, idx)
        self._special = {}
        for name, value in (("bos_token", bos_token), ("eos_token", eos_token),
                            ("unk_token", unk_token), ("pad_token", pad_token)):
            text = _token_text(value)
            if text is not None and text not in self._added:
                self._add_special(text)          # given at construction: a special token
            setattr(self, name, text)

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a directory holding ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``)
        and optionally ``tokenizer_config.json``, ``special_tokens_map.json``,
        ``added_tokens.json``; a hub id is looked up in the local Hugging Face cache."""
        d = _resolve(os.fspath(pretrained_model_name_or_path), kwargs.pop("revision", None) or "main",
                     kwargs.pop("cache_dir", None))
        for ignored in ("local_files_only", "use_fast", "trust_remote_code", "force_download", "token"):
            kwargs.pop(ignored, None)
        # lexists, not isfile: a FIFO or a symlink loop is refused by the reader with its
        # reason, never waited on, skipped, or reported as missing
        cfg = {}
        path = os.path.join(d, "tokenizer_config.json")
        if os.path.lexists(path):
            cfg.update(_read_json(path))
        path = os.path.join(d, "special_tokens_map.json")
        if os.path.lexists(path):
            cfg.update({k: v for k, v in _read_json(path).items() if k in _SPECIAL_NAMES})
        added = {}
        for idx, entry in (cfg.pop("added_tokens_decoder", None) or {}).items():
            added[_token_text(entry)] = int(idx)
        path = os.path.join(d, "added_tokens.json")
        if os.path.lexists(path):
            added.update({k: int(v) for k, v in _read_json(path).items()})

        vocab, merges = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
        core = None
        if not (os.path.lexists(vocab) and os.path.lexists(merges)):
            tj = os.path.join(d, "tokenizer.json")
            if not os.path.lexists(tj):
                raise OSError(f"{d}: no vocab.json + merges.txt and no tokenizer.json; not a GPT-2 tokenizer directory")
            core, tj_added, tj_prefix = cls._core_from_tokenizer_json(tj)
            for text, idx in tj_added.items():
                added.setdefault(text, idx)
            cfg.setdefault("add_prefix_space", tj_prefix)
        init = {k: v for k, v in cfg.items() if k in (
            "bos_token", "eos_token", "unk_token", "pad_token", "add_prefix_space", "add_bos_token",
            "model_max_length", "padding_side", "truncation_side", "errors", "clean_up_tokenization_spaces")}
        init.update(kwargs)
        if init.get("model_max_length") is None:
            init.pop("model_max_length", None)
        init.setdefault("name_or_path", os.fspath(pretrained_model_name_or_path))
        # every named special token is split out of the text, like the added tokens
        for name in _SPECIAL_NAMES:
            text = _token_text(init.get(name))
            if text is not None and text not in added:
                added[text] = None
        return cls(vocab if core is None else None, merges if core is None else None,
                   added_tokens=added, _core_tokenizer=core, **init)

    @staticmethod
    def _core_from_tokenizer_json(path):
        """The C tokenizer of a tokenizer.json (its whole pipeline read in C), its added
        tokens {text: id} and ByteLevel's add_prefix_space (applied in C already: False)."""
        core = _core.BPETokenizer.from_tokenizer_json(path)
        added = {a["content"]: int(a["id"]) for a in _read_json(path).get("added_tokens") or []}
        return core, added, False

    def _add_special(self, text, idx=None):
        """Register text as a special (added) token; a new token gets the next free id."""
        if idx is None:
            idx = self._tok.token_to_id(text)
            if idx is None:
                idx = self._added.get(text, max(self._tok.vocab_size, len(self)))
        self._tok.add_special(text, int(idx))
        self._added[text] = int(idx)
        return int(idx)

    # ---------------------------------------------------------------- special tokens

    def _special_id(self, name):
        text = self._special.get(name)
        return None if text is None else self.convert_tokens_to_ids(text)

    def __getattr__(self, name):
        # bos_token / eos_token / unk_token / pad_token and their *_id
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _SPECIAL_NAMES:
            return self.__dict__.get("_special", {}).get(name)
        if name.endswith("_id") and name[:-3] in _SPECIAL_NAMES:
            return self._special_id(name[:-3])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in _SPECIAL_NAMES:
            text = _token_text(value)
            if text is not None and not isinstance(text, str):
                raise TypeError(f"{name} must be a str, got {type(text).__name__}")
            # as in transformers, naming a token does not add it to the vocabulary (an unknown
            # one then has the unk id); add_special_tokens() adds it
            self.__dict__.setdefault("_special", {})[name] = text
            return
        if name.endswith("_id") and name[:-3] in _SPECIAL_NAMES:
            setattr(self, name[:-3], None if value is None else self.convert_ids_to_tokens(int(value)))
            return
        object.__setattr__(self, name, value)

    @property
    def all_special_tokens(self):
        """The named special tokens (bos, eos, unk, pad) and the added ones, without repeats."""
        out = [t for t in (self._special.get(n) for n in _SPECIAL_NAMES) if t is not None]
        return list(dict.fromkeys(out + list(self._added)))

    @property
    def all_special_ids(self):
        """Ids of ``all_special_tokens``."""
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    @property
    def special_tokens_map(self):
        """{"bos_token": ..., "eos_token": ...} for the tokens that are set."""
        return {n: t for n, t in self._special.items() if t is not None}

    def add_special_tokens(self, special_tokens_dict):
        """Set named special tokens (``{"pad_token": "[PAD]"}``), adding new ones to the
        vocabulary; ``additional_special_tokens`` may list more. Returns how many were new."""
        before = len(self)
        for name, value in special_tokens_dict.items():
            if name == "additional_special_tokens":
                for t in value:
                    self._add_special(_token_text(t))
            elif name in _SPECIAL_NAMES:
                text = _token_text(value)
                if text not in self._added:
                    self._add_special(text)
                setattr(self, name, text)
            else:
                raise ValueError(f"add_special_tokens: unknown key {name!r}; expected one of "
                                 f"{list(_SPECIAL_NAMES) + ['additional_special_tokens']}")
        return len(self) - before

    def add_tokens(self, new_tokens, special_tokens=False):
        """Add tokens (str or list of str) that are split out of the text whole. Returns how many were new."""
        if isinstance(new_tokens, str):
            new_tokens = [new_tokens]
        before = len(self)
        for t in new_tokens:
            t = _token_text(t)
            if t not in self._added and self._tok.token_to_id(t) is None:
                self._add_special(t)
        return len(self) - before

    # ---------------------------------------------------------------- vocabulary

    @property
    def vocab_size(self):
        """Size of the base vocabulary (vocab.json), without added tokens."""
        return self._base_vocab_size

    def __len__(self):
        """Vocabulary size including added tokens."""
        return self._tok.vocab_size

    def get_vocab(self):
        """{token: id} for every token, added ones included."""
        out = {}
        for i in range(self._tok.vocab_size):
            t = self._tok.id_to_token(i)
            if t is not None:
                out.setdefault(t, i)
        return out

    def convert_tokens_to_ids(self, tokens):
        """Id of a token string (vocab.json form), or a list of ids for a list; unknown
        tokens give ``unk_token_id``."""
        if isinstance(tokens, str):
            idx = self._tok.token_to_id(tokens)
            if idx is None:
                unk = self._special.get("unk_token")
                return None if unk is None else self._tok.token_to_id(unk)
            return idx
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        """Token string (vocab.json form, e.g. ``"Ġworld"``) of an id, or a list for a list;
        unknown ids give None."""
        if _is_int(ids):
            return self._tok.id_to_token(int(ids))
        ids = _as_id_list(ids)
        return [self._tok.id_to_token(i) for i in ids
                if not (skip_special_tokens and self._tok.is_special(i))]

    def convert_tokens_to_string(self, tokens):
        """Text of a list of token strings."""
        return self.decode(self.convert_tokens_to_ids(list(tokens)))

    # ---------------------------------------------------------------- encoding

    def _encode_texts(self, texts, add_special_tokens):
        """Ids of each text: BPE in C (several texts over the core's threads), then BOS
        when ``add_bos_token`` asks for it."""
        prefix = self.add_prefix_space
        if len(texts) > 1:
            batch = self._tok.encode_batch(texts, add_prefix_space=prefix)
        else:
            batch = [self._tok.encode(t, add_prefix_space=prefix) for t in texts]
        if self.add_bos_token and add_special_tokens and self.bos_token_id is not None:
            batch = [[self.bos_token_id] + ids for ids in batch]
        return batch

    def tokenize(self, text, **kwargs):
        """Token strings of a text (``["hello", "Ġworld"]``); no BOS is added, as in transformers."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return [self._tok.id_to_token(i) for i in self._encode_texts([text], False)[0]]

    def encode(self, text, add_special_tokens=True, padding=False, truncation=False,
               max_length=None, return_tensors=None, **kwargs):
        """Ids of one text (a list of int; ``return_tensors="pt"``/``"np"`` gives shape [1, n])."""
        enc = self(text, padding=padding, truncation=truncation, max_length=max_length,
                   return_tensors=return_tensors, return_attention_mask=False, **kwargs)
        return enc["input_ids"]

    def __call__(self, text=None, text_pair=None, add_special_tokens=True, padding=False,
                 truncation=None, max_length=None, return_tensors=None, return_attention_mask=None,
                 padding_side=None, pad_to_multiple_of=None, **kwargs):
        """Tokenize a str or a list of str into a ``BatchEncoding`` with ``input_ids`` and
        ``attention_mask``, padded / truncated / converted to arrays as in transformers.

        padding: False | True | "longest" | "max_length" | "do_not_pad".
        truncation: False | True | "longest_first" | "only_first" (cut to max_length).
        return_tensors: None (lists) | "np" | "pt" (torch, if installed).
        """
        kwargs.pop("verbose", None)                     # transformers' logging switch
        return_offsets = bool(kwargs.pop("return_offsets_mapping", False))
        if kwargs.pop("return_token_type_ids", None):  # GPT-2 has none: only False/None
            raise NotImplementedError("tokenizer: return_token_type_ids=True is not supported")
        if kwargs:
            raise NotImplementedError(f"tokenizer: unsupported argument(s) {sorted(kwargs)} "
                                      f"(they would change the output; nothing is ignored)")
        gc_was_enabled = gc.isenabled()
        gc.disable()              # building many small lists: spare the cyclic GC the rescans
        try:
            return self._call(text, text_pair, add_special_tokens, padding, truncation, max_length,
                              return_tensors, return_attention_mask, padding_side, pad_to_multiple_of,
                              return_offsets)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _offsets(self, text, ids):
        """``(start, end)`` character offsets in ``text`` of each token of ``ids`` (as the
        fast tokenizer of transformers gives them: a token's span includes the space its
        byte-level form starts with; one that holds part of a character spans the whole
        character; an added BOS gets (0, 0))."""
        raw = text.encode("utf-8")
        char_of = np.zeros(len(raw) + 1, dtype=np.int64)   # byte -> index of its character
        b = 0
        for ci, ch in enumerate(text):
            n = len(ch.encode("utf-8"))
            char_of[b:b + n] = ci
            b += n
        char_of[len(raw)] = len(text)
        pos = -1 if self.add_prefix_space and not text.startswith(" ") else 0
        out = []
        bos = self.add_bos_token and ids and ids[0] == self.bos_token_id and \
            not text.startswith(self.bos_token or "\0")
        for k, i in enumerate(ids):
            if k == 0 and bos:
                out.append((0, 0))
                continue
            tok = self._tok.id_to_token(i)
            n = sum(1 if c in _BYTE_OF else len(c.encode("utf-8")) for c in tok)
            b0, b1 = max(pos, 0), max(pos + n, 0)
            pos += n
            if b1 <= b0:
                out.append((int(char_of[b0]), int(char_of[b0])))
            else:
                out.append((int(char_of[b0]), int(char_of[min(b1, len(raw)) - 1]) + 1))
        return out

    def _call(self, text, text_pair, add_special_tokens, padding, truncation, max_length,
              return_tensors, return_attention_mask, padding_side, pad_to_multiple_of,
              return_offsets=False):
        if text is None:
            raise ValueError("tokenizer: give a str or a list of str to tokenize")
        if text_pair is not None:
            raise NotImplementedError("tokenizer: text pairs are not supported by GPT-2")
        single = isinstance(text, str)
        if not single:
            if not isinstance(text, (list, tuple)) or not all(isinstance(t, str) for t in text):
                raise TypeError("tokenizer: text must be a str or a list/tuple of str, got "
                                f"{type(text).__name__}")
        texts = [text] if single else list(text)
        if max_length is not None:
            # transformers fails here too (OverflowError from its Rust core); a negative
            # limit would otherwise cut from the end ("ids[:-1]") and drop a token
            if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)):
                raise TypeError(f"tokenizer: max_length must be an int, got {max_length!r}")
            if max_length < 0:
                raise ValueError(f"tokenizer: max_length must be >= 0, got {max_length}")
        if pad_to_multiple_of is not None and (
                isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, (int, np.integer))
                or pad_to_multiple_of <= 0):
            raise ValueError(f"tokenizer: pad_to_multiple_of must be a positive int, got "
                             f"{pad_to_multiple_of!r}")
        batch = self._encode_texts(texts, add_special_tokens)
        offs = [self._offsets(t, ids) for t, ids in zip(texts, batch)] if return_offsets else None

        # truncation
        if truncation in (True, "longest_first", "only_first"):
            limit = max_length if max_length is not None else self.model_max_length
            side = self.truncation_side
            def cut(ids):
                return ids[:limit] if side == "right" else ids[len(ids) - limit:] if len(ids) > limit else ids
            batch = [cut(ids) for ids in batch]
            if offs is not None:
                offs = [cut(o) for o in offs]
        elif truncation not in (None, False, "do_not_truncate"):
            raise ValueError(f"tokenizer: truncation must be True/False/'longest_first'/'only_first', got {truncation!r}")

        # padding
        if padding is True or padding == "longest":
            target = max((len(ids) for ids in batch), default=0)
        elif padding == "max_length":
            target = max_length if max_length is not None else self.model_max_length
            if target >= _HUGE:
                raise ValueError("tokenizer: padding='max_length' needs max_length (the model has no limit)")
        elif padding in (False, None, "do_not_pad"):
            target = None
        else:
            raise ValueError(f"tokenizer: padding must be True/False/'longest'/'max_length'/'do_not_pad', got {padding!r}")
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        masks = [[1] * len(ids) for ids in batch]
        if target is not None and any(len(ids) < target for ids in batch):
            pad_id = self.pad_token_id
            if pad_id is None:
                raise ValueError(_PAD_ERROR)
            side = padding_side or self.padding_side
            if side not in ("right", "left"):
                raise ValueError(f"tokenizer: padding_side must be 'right' or 'left', got {side!r}")
            for i, ids in enumerate(batch):
                k = target - len(ids)
                if k > 0:
                    if side == "right":
                        batch[i] = ids + [pad_id] * k
                        masks[i] = masks[i] + [0] * k
                        if offs is not None:
                            offs[i] = offs[i] + [(0, 0)] * k
                    else:
                        batch[i] = [pad_id] * k + ids
                        masks[i] = [0] * k + masks[i]
                        if offs is not None:
                            offs[i] = [(0, 0)] * k + offs[i]

        out = BatchEncoding()
        out["input_ids"] = batch[0] if single else batch
        if return_attention_mask is None or return_attention_mask:
            out["attention_mask"] = masks[0] if single else masks
        if offs is not None:
            out["offset_mapping"] = offs[0] if single else offs
        if return_tensors is not None:
            for k in list(out):
                out[k] = _to_tensor([out[k]] if single else out[k], return_tensors)
        return out

    # ---------------------------------------------------------------- decoding

    def decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        """Text of a sequence of ids (list, NumPy array, torch tensor, or one int). Bytes that
        are not valid UTF-8 become U+FFFD (errors="replace"). An unknown id raises IndexError."""
        ids = [int(token_ids)] if _is_int(token_ids) else _as_id_list(token_ids)
        text = self._tok.decode(ids, skip_special_tokens)
        clean = clean_up_tokenization_spaces if clean_up_tokenization_spaces is not None \
            else self.clean_up_tokenization_spaces
        if clean:
            # as transformers 5: the clean-up is meant for WordPiece and corrupts BPE text, so it
            # is skipped unless explicitly forced
            if self.__dict__.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"):
                text = _clean_up_tokenization(text)
            elif not GPT2Tokenizer._warned_cleanup:
                GPT2Tokenizer._warned_cleanup = True
                warnings.warn("Ignoring clean_up_tokenization_spaces=True for the BPE tokenizer "
                              "GPT2Tokenizer (it would strip spaces before punctuation), as transformers does.")
        return text

    def batch_decode(self, sequences, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        """``decode`` of every sequence in a batch (list of lists, 2-D array or tensor)."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens,
                            clean_up_tokenization_spaces=clean_up_tokenization_spaces) for s in sequences]

    def __repr__(self):
        return (f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"len={len(self)}, special_tokens={self.special_tokens_map})")


def _bytes_to_unicode():
    """GPT-2's byte-level alphabet: byte -> the character standing for it in tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# a token's character -> the byte it stands for
_BYTE_OF = {c: b for b, c in _bytes_to_unicode().items()}


def _clean_up_tokenization(s):
    """transformers' clean_up_tokenization (only used when asked for)."""
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


def _is_int(x):
    if isinstance(x, (int, np.integer)):
        return True
    return getattr(x, "ndim", None) == 0 or (hasattr(x, "dim") and callable(x.dim) and x.dim() == 0)


def _as_id_list(ids):
    """A flat list/tuple of ids (the C side checks every element)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    if not isinstance(ids, (list, tuple)):
        ids = list(ids)
    if ids and isinstance(ids[0], (list, tuple)):
        raise TypeError("decode: expected a flat sequence of ids, got a sequence of sequences "
                        "(use batch_decode for a batch)")
    return ids


def _to_tensor(rows, kind):
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise ValueError("Unable to create tensor: the sequences have different lengths "
                         f"({sorted(lengths)}); use padding=True (and truncation=True) to get a rectangular batch")
    n = lengths.pop() if lengths else 0
    arr = np.array(rows, dtype=np.int64)
    # ids and masks are [batch, n]; offset mappings [batch, n, 2]
    arr = arr.reshape((len(rows), n) + (arr.shape[2:] if arr.ndim > 2 else ()))
    if kind == "np":
        return arr
    if kind == "pt":
        try:
            import torch
        except ImportError:
            raise ImportError("return_tensors='pt' needs torch, which is not installed; use return_tensors='np'") from None
        return torch.from_numpy(arr)
    raise ValueError(f"return_tensors must be None, 'np' or 'pt', got {kind!r}")


# transformers 5 has one GPT-2 tokenizer class under both names; so do we (the C one is fast)
GPT2TokenizerFast = GPT2Tokenizer
