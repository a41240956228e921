"""Hugging Face-compatible module tree of mechinterp_c (``from mechinterp_c.transformers import ...``).

Tokenizers: ``GPT2Tokenizer``, ``GPT2TokenizerFast`` and ``AutoTokenizer`` (GPT-2 byte-level
BPE implemented in C), ``BatchEncoding``.
"""
from mechinterp_c.transformers.tokenization_gpt2 import (AutoTokenizer, BatchEncoding, GPT2Tokenizer,
                                                         GPT2TokenizerFast)

__all__ = ["AutoTokenizer", "BatchEncoding", "GPT2Tokenizer", "GPT2TokenizerFast"]
