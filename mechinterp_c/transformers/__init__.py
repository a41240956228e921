"""Hugging Face-compatible API of mechinterp_c (``from mechinterp_c.transformers import ...``).

Models: ``AutoModel`` (REVE and its position bank), ``AutoModelForCausalLM``, ``GPT2LMHeadModel``, ``GPT2Config``, ``AutoConfig`` (GPT-2 on
the C transformer, module tree with forward hooks served by the C core's hook points),
``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``, ``GPTNeoXForCausalLM`` (the same
for the Llama family and GPT-NeoX).
Tokenizers: ``GPT2Tokenizer``, ``GPT2TokenizerFast`` (GPT-2 byte-level BPE implemented in C),
``PreTrainedTokenizerFast`` (any BPE ``tokenizer.json``: GPT-NeoX, Llama, Mistral, Qwen2, Gemma;
read and run in C), ``AutoTokenizer``, ``BatchEncoding``.
"""
from mechinterp_c.transformers.cache_utils import DynamicCache
from mechinterp_c.transformers.modeling_auto import AutoConfig, AutoModel, AutoModelForCausalLM
from mechinterp_c.transformers.modeling_gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model
from mechinterp_c.transformers.modeling_gpt_neox import GPTNeoXForCausalLM
from mechinterp_c.transformers.modeling_llama import (LlamaForCausalLM, MistralForCausalLM,
                                                      Qwen2ForCausalLM)
from mechinterp_c.transformers.modeling_utils import get_array_type, set_array_type
from mechinterp_c.transformers.tokenization_auto import AutoTokenizer
from mechinterp_c.transformers.tokenization_gpt2 import BatchEncoding, GPT2Tokenizer, GPT2TokenizerFast
from mechinterp_c.transformers.tokenization_utils_fast import (GemmaTokenizerFast, GPTNeoXTokenizerFast,
                                                               LlamaTokenizerFast, PreTrainedTokenizerFast,
                                                               Qwen2TokenizerFast)

__all__ = ["DynamicCache", "AutoConfig", "AutoModel", "AutoModelForCausalLM", "GPT2Config", "GPT2LMHeadModel",
           "GPT2Model", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPTNeoXForCausalLM",
           "AutoTokenizer", "BatchEncoding", "GPT2Tokenizer", "GPT2TokenizerFast", "PreTrainedTokenizerFast",
           "LlamaTokenizerFast", "GemmaTokenizerFast", "GPTNeoXTokenizerFast", "Qwen2TokenizerFast",
           "set_array_type", "get_array_type"]
