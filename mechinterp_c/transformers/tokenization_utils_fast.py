"""Tokenizers described by a Hugging Face ``tokenizer.json``, read and run in C.

``PreTrainedTokenizerFast.from_pretrained(dir_or_id)`` covers the BPE files of the model
families mechinterp_c loads: byte-level BPE (GPT-NeoX / Pythia, Llama 3, Qwen2) and
SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Gemma). The whole
pipeline of the file (added tokens, normalizer, pre-tokenizer, BPE, decoder,
post-processor) runs in ``mechinterp_c._core.BPETokenizer`` (csrc/io/tokenizer_json.c);
an option the C reader does not implement is refused with NotImplementedError naming
the field, never ignored. The NFC normalizer is applied here with ``unicodedata``.
The calling conventions (``tokenizer(texts, padding=True, return_tensors="np")``,
``encode``, ``decode``, special tokens, padding side) are those of ``GPT2Tokenizer``.
"""
import os
import unicodedata

from mechinterp_c import _core
from mechinterp_c.transformers.tokenization_gpt2 import (_SPECIAL_NAMES, GPT2Tokenizer, _read_json,
                                                         _resolve, _token_text)

__all__ = ["PreTrainedTokenizerFast", "LlamaTokenizerFast", "GemmaTokenizerFast", "GPTNeoXTokenizerFast",
           "Qwen2TokenizerFast"]

# tokenizer_config.json keys the constructor takes
_CONFIG_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length", "padding_side",
                "truncation_side", "clean_up_tokenization_spaces")


class PreTrainedTokenizerFast(GPT2Tokenizer):
    """A ``tokenizer.json`` BPE tokenizer with the ``transformers`` interface.

    ``add_special_tokens=True`` (the default of ``__call__`` and ``encode``) adds the ids of
    the file's post-processor (``TemplateProcessing``: Llama's BOS, for instance), as
    ``transformers`` does. Special tokens are the file's ``added_tokens`` marked special
    plus the named ones (bos, eos, unk, pad) from ``tokenizer_config.json``.
    """

    vocab_files_names = {"tokenizer_file": "tokenizer.json"}

    def __init__(self, tokenizer_file=None, bos_token=None, eos_token=None, unk_token=None,
                 pad_token=None, **kwargs):
        if tokenizer_file is None:
            raise ValueError(f"{type(self).__name__}: give tokenizer_file (a tokenizer.json) or use "
                             "from_pretrained(dir)")
        path = os.fspath(tokenizer_file)
        core = _core.BPETokenizer.from_tokenizer_json(path)
        pipeline = core.pipeline()
        added = {a["content"]: int(a["id"]) for a in _read_json(path).get("added_tokens") or []
                 if a.get("special")}
        self._nfc = pipeline["nfc"]
        self._template = (pipeline["prefix"], pipeline["suffix"])
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token,
                         pad_token=pad_token, added_tokens=added, _core_tokenizer=core, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load ``tokenizer.json`` (and ``tokenizer_config.json``, ``special_tokens_map.json``
        when present) from a directory or a hub id in the local Hugging Face cache."""
        d = _resolve(os.fspath(pretrained_model_name_or_path), kwargs.pop("revision", None) or "main",
                     kwargs.pop("cache_dir", None))
        for ignored in ("local_files_only", "use_fast", "trust_remote_code", "force_download", "token"):
            kwargs.pop(ignored, None)
        path = os.path.join(d, "tokenizer.json")
        if not os.path.lexists(path):
            raise OSError(f"{d}: no tokenizer.json")
        cfg = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            p = os.path.join(d, name)
            if os.path.lexists(p):
                cfg.update({k: v for k, v in _read_json(p).items()
                            if name == "tokenizer_config.json" or k in _SPECIAL_NAMES})
        init = {k: (_token_text(v) if k in _SPECIAL_NAMES else v) for k, v in cfg.items() if k in _CONFIG_KEYS}
        if init.get("model_max_length") is None:
            init.pop("model_max_length", None)
        init.update(kwargs)
        init.setdefault("name_or_path", os.fspath(pretrained_model_name_or_path))
        return cls(path, **init)

    def _encode_texts(self, texts, add_special_tokens):
        """Ids of each text: NFC when the file asks for it, the C pipeline, then the
        post-processor's ids around each sequence."""
        if self._nfc:
            texts = [unicodedata.normalize("NFC", t) for t in texts]
        batch = self._tok.encode_batch(texts) if len(texts) > 1 else [self._tok.encode(t) for t in texts]
        prefix, suffix = self._template
        if add_special_tokens and (prefix or suffix):
            batch = [prefix + ids + suffix for ids in batch]
        return batch


# the class names transformers gives these families' tokenizers (one implementation)
LlamaTokenizerFast = GemmaTokenizerFast = GPTNeoXTokenizerFast = Qwen2TokenizerFast = PreTrainedTokenizerFast
