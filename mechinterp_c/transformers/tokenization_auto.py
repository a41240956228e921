"""``AutoTokenizer``: the tokenizer class a checkpoint directory calls for."""
import os

from mechinterp_c.transformers.tokenization_gpt2 import GPT2Tokenizer, _read_json, _resolve
from mechinterp_c.transformers.tokenization_utils_fast import PreTrainedTokenizerFast

__all__ = ["AutoTokenizer"]

_GPT2_CLASSES = ("GPT2Tokenizer", "GPT2TokenizerFast")


class AutoTokenizer:
    """``AutoTokenizer.from_pretrained(dir_or_id)``: ``GPT2Tokenizer`` for GPT-2's files
    (vocab.json + merges.txt, or a tokenizer.json whose config names a GPT-2 tokenizer),
    ``PreTrainedTokenizerFast`` for any other ``tokenizer.json`` (GPT-NeoX, Llama, Mistral,
    Qwen2, Gemma). A directory with neither is an OSError naming what is missing."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load the tokenizer of a directory or cached hub id."""
        d = _resolve(os.fspath(pretrained_model_name_or_path), kwargs.pop("revision", None) or "main",
                     kwargs.pop("cache_dir", None))
        cfg_path = os.path.join(d, "tokenizer_config.json")
        klass = _read_json(cfg_path).get("tokenizer_class") if os.path.lexists(cfg_path) else None
        kwargs.setdefault("name_or_path", os.fspath(pretrained_model_name_or_path))
        has_json = os.path.lexists(os.path.join(d, "tokenizer.json"))
        has_gpt2 = all(os.path.lexists(os.path.join(d, f)) for f in ("vocab.json", "merges.txt"))
        if klass in _GPT2_CLASSES or (klass is None and has_gpt2):
            return GPT2Tokenizer.from_pretrained(d, **kwargs)
        if has_json:
            return PreTrainedTokenizerFast.from_pretrained(d, **kwargs)
        raise OSError(f"AutoTokenizer: {d} has no tokenizer.json"
                      + (f" for its {klass}" if klass else " and no vocab.json + merges.txt"))
