"""``HookedTransformerConfig``: TransformerLens's config fields and defaults, without torch;
``GPT2Config``: Hugging Face's GPT-2 ``config.json``; and the one validator of config
fields (``config.json`` of every model family and the TransformerLens config), driven by
one table per format."""
import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from . import io as _io


@dataclass(frozen=True)
class Field:
    """What one config field may hold: ``kind`` (int, float, bool or str), the least
    value ``least`` of a number (exclusive when ``strict``), whether None/null is
    allowed, and ``special`` values allowed besides (TransformerLens's -1 = "derive")."""

    name: str
    kind: type
    least: Optional[float] = None
    strict: bool = False
    optional: bool = False
    special: tuple = ()

    def describe(self):
        """The rule in words, for messages: "a positive integer or -1"."""
        extra = [repr(v) for v in self.special] + (["null"] if self.optional else [])
        words = _RULE_WORDS[self.kind, self.least, self.strict]
        return words + (" or " + " or ".join(extra) if extra else "")


# (kind, least, strict) -> the rule in words; every Field of the tables below has a row.
_RULE_WORDS = {
    (int, None, False): "an integer",
    (int, 0, False): "a non-negative integer",
    (int, 1, False): "a positive integer",
    (float, 0, False): "a non-negative number",
    (float, 0, True): "a positive number",
    (bool, None, False): "a boolean (true/false)",
    (str, None, False): "a string",
}


def _number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def check_field(f, v, where):
    """Raise TypeError (wrong kind) or ValueError (out of range, non-integral,
    non-finite) naming ``where`` and the field unless ``v`` satisfies ``f``."""
    if (v is None and f.optional) or (f.special and _number(v) and v in f.special):
        return
    bad = f"{where}: field {f.name!r} must be {f.describe()}, got {v!r}"
    if f.kind is bool:
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{bad} ({type(v).__name__})")
        return
    if f.kind is str:
        if not isinstance(v, str):
            raise TypeError(f"{bad} ({type(v).__name__})")
        return
    if not _number(v):
        raise TypeError(f"{bad} ({type(v).__name__})")
    if not math.isfinite(v):
        raise ValueError(bad)
    if f.kind is int and not isinstance(v, numbers.Integral):
        raise ValueError(f"{bad} (not an integer)")
    if f.least is not None and (v <= f.least if f.strict else v < f.least):
        raise ValueError(bad)


def validate_fields(values, fields, where, divisible=()):
    """Check every field of ``fields`` present in the mapping ``values`` (absent ones
    take their defaults elsewhere; required ones are the loader's to demand), then
    each ``(a, b)`` of ``divisible``: ``values[a] % values[b] == 0``. ``where`` (the
    file, or the class) starts every message."""
    for f in fields:
        if f.name in values:
            check_field(f, values[f.name], where)
    for a, b in divisible:
        if values.get(a) is not None and values.get(b) not in (None, -1) and values[a] % values[b]:
            raise ValueError(f"{where}: field {a!r} ({values[a]}) must be divisible by field "
                             f"{b!r} ({values[b]})")


def _sizes(*names, least=1, **kw):
    return tuple(Field(n, int, least, **kw) for n in names)


def _flags(*names):
    return tuple(Field(n, bool) for n in names)


# Hugging Face GPT-2 config.json (the fields the C model reads).
GPT2_CONFIG_FIELDS = (
    _sizes("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")
    + _sizes("n_inner", "n_ctx", optional=True)
    + _sizes("bos_token_id", "eos_token_id", least=0, optional=True)
    + (Field("layer_norm_epsilon", float, 0, strict=True), Field("initializer_range", float, 0),
       Field("activation_function", str), Field("model_type", str))
    + _flags("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
             "tie_word_embeddings", "use_normalization_before_and_after")
)
GPT2_CONFIG_DIVISIBLE = (("n_embd", "n_head"),)

# REVE config.json.
REVE_CONFIG_FIELDS = (
    _sizes("embed_dim", "depth", "heads", "head_dim", "freqs", "patch_size")
    + (Field("patch_overlap", int, 0), Field("mlp_dim_ratio", float, 0, strict=True),
       Field("model_type", str))
    + _flags("use_geglu")
)

# HookedTransformerConfig (TransformerLens's names; -1 and None as TransformerLens derives them).
HOOKED_CONFIG_FIELDS = (
    _sizes("n_layers", "d_model", "n_ctx", "d_head", "n_devices")
    + _sizes("n_heads", "d_vocab", "d_vocab_out", special=(-1,))
    + _sizes("d_mlp", "n_key_value_heads", "rotary_dim", "window_size", optional=True)
    + _sizes("checkpoint_index", least=0, optional=True)
    + (Field("seed", int, optional=True), Field("eps", float, 0, strict=True),
       Field("attn_scale", float, 0, strict=True, special=(-1,)),
       Field("initializer_range", float, 0, special=(-1,)))
    + _flags("use_attn_result", "use_attn_scale", "use_split_qkv_input", "use_hook_mlp_in",
             "use_attn_in", "use_local_attn", "from_checkpoint", "attn_only", "init_weights",
             "scale_attn_by_inverse_layer_idx", "final_rms", "parallel_attn_mlp",
             "use_hook_tokens", "gated_mlp", "default_prepend_bos", "post_embedding_ln",
             "tie_word_embeddings", "rotary_adjacent_pairs", "use_NTK_by_parts_rope",
             "use_normalization_before_and_after")
    + _sizes("NTK_original_ctx_len")
    + tuple(Field(n, float, 0, strict=True) for n in (
        "rotary_base", "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor",
        "NTK_by_parts_factor"))
)
assert all((f.kind, f.least, f.strict) in _RULE_WORDS
           for f in GPT2_CONFIG_FIELDS + REVE_CONFIG_FIELDS + HOOKED_CONFIG_FIELDS)

SUPPORTED_ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "silu", "swish")
SUPPORTED_NORMS = ("LN", "LNPre", "RMS", "RMSPre", None)


# TransformerLens config fields of architectures the C core does not run: their
# default (the field asks for nothing) and the feature another value asks for. A
# TransformerLens config or dict that sets one is refused naming field and feature;
# at the default the field is accepted and dropped.
TL_UNSUPPORTED_FIELDS = {
    "num_experts": (None, "mixture of experts"),
    "experts_per_token": (None, "mixture of experts"),
    "norm_topk_prob": (False, "mixture of experts"),
    "use_qk_norm": (False, "q/k RMSNorms (Gemma 3, OLMo 2, Qwen3)"),
    "clip_qkv": (None, "q/k/v clipping (OLMo)"),
    "use_logn_attn": (False, "log-n query scaling (Qwen)"),
    "use_dynamic_ntk_rope": (False, "dynamic NTK rotary scaling"),
    "use_yarn_rope": (False, "YaRN rotary scaling"),
    "rotary_scaling_factor": (1.0, "linear rotary scaling"),
    "rotary_base_local": (None, "a separate rotary base for local layers (Gemma 3)"),
    "ungroup_grouped_query_attention": (False, "ungrouped key/value heads"),
    "use_attention_sinks": (False, "attention sinks"),
    "relative_attention_num_buckets": (None, "relative position buckets (T5)"),
    "relative_attention_max_distance": (None, "relative position buckets (T5)"),
    "decoder_start_token_id": (None, "encoder-decoder models (T5)"),
    "load_in_4bit": (False, "4-bit quantized weights"),
    "quantization_method": (None, "quantized weights"),
}


def refuse_unsupported_fields(values, where):
    """NotImplementedError naming every field of ``values`` (a mapping) in
    ``TL_UNSUPPORTED_FIELDS`` set away from its default, and the feature it asks for."""
    bad = [f"{k}={values[k]!r} ({feature})" for k, (default, feature) in TL_UNSUPPORTED_FIELDS.items()
           if k in values and values[k] != default]
    if bad:
        raise NotImplementedError(f"{where}: the C core does not implement " + ", ".join(bad)
                                  + " (mechinterp_c/config.py: TL_UNSUPPORTED_FIELDS)")


@dataclass
class HookedTransformerConfig:
    """Configuration of a HookedTransformer, with TransformerLens's field names and defaults.

    ``n_heads=-1`` means ``d_model // d_head``; ``d_mlp=None`` means ``4 * d_model``;
    ``d_vocab_out=-1`` means ``d_vocab``; ``initializer_range=-1`` means
    ``0.8 / sqrt(d_model)`` (GPT-2 init); ``attn_scale=-1`` means ``sqrt(d_head)``
    when ``use_attn_scale``. Fields the C core does not implement are accepted
    here and refused by ``HookedTransformer`` with a clear error.
    """

    n_layers: int
    d_model: int
    n_ctx: int
    d_head: int
    model_name: str = "custom"
    n_heads: int = -1
    d_mlp: Optional[int] = None
    act_fn: Optional[str] = None
    d_vocab: int = -1
    eps: float = 1e-5
    use_attn_result: bool = False
    use_attn_scale: bool = True
    attn_scale: float = -1.0
    use_split_qkv_input: bool = False
    use_hook_mlp_in: bool = False
    use_attn_in: bool = False
    use_local_attn: bool = False
    original_architecture: Optional[str] = None
    from_checkpoint: bool = False
    checkpoint_index: Optional[int] = None
    tokenizer_name: Optional[str] = None
    window_size: Optional[int] = None
    attn_types: Optional[List] = None
    init_mode: str = "gpt2"
    normalization_type: Optional[str] = "LN"
    device: Optional[str] = "cpu"
    n_devices: int = 1
    attention_dir: str = "causal"
    attn_only: bool = False
    seed: Optional[int] = None
    initializer_range: float = -1.0
    init_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    positional_embedding_type: str = "standard"
    final_rms: bool = False
    d_vocab_out: int = -1
    parallel_attn_mlp: bool = False
    rotary_dim: Optional[int] = None
    n_params: Optional[int] = None
    use_hook_tokens: bool = False
    gated_mlp: bool = False
    default_prepend_bos: bool = True
    dtype: Any = "float32"
    tokenizer_prepends_bos: Optional[bool] = None
    n_key_value_heads: Optional[int] = None
    post_embedding_ln: bool = False
    tie_word_embeddings: bool = False
    rotary_base: float = 10000
    rotary_adjacent_pairs: bool = False
    use_NTK_by_parts_rope: bool = False
    NTK_by_parts_low_freq_factor: float = 1.0
    NTK_by_parts_high_freq_factor: float = 4.0
    NTK_by_parts_factor: float = 8.0
    NTK_original_ctx_len: int = 8192
    use_normalization_before_and_after: bool = False
    attn_scores_soft_cap: float = -1.0
    output_logits_soft_cap: float = -1.0
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        validate_fields(vars(self), HOOKED_CONFIG_FIELDS, type(self).__name__)
        if self.n_heads == -1:
            if self.d_model % self.d_head:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by d_head "
                                 f"({self.d_head}) when n_heads is -1")
            self.n_heads = self.d_model // self.d_head
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.positional_embedding_type == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if not self.attn_only:
            if self.act_fn is None:
                raise ValueError("act_fn must be specified for non-attn-only models")
            if self.act_fn not in SUPPORTED_ACTIVATIONS + ("solu_ln", "gelu_tanh"):
                raise ValueError(f"act_fn={self.act_fn!r} must be one of {SUPPORTED_ACTIVATIONS}")
        if self.normalization_type not in SUPPORTED_NORMS:
            raise ValueError(f"normalization_type={self.normalization_type!r} must be one of "
                             f"{SUPPORTED_NORMS}")
        if self.attention_dir not in ("causal", "bidirectional"):
            raise ValueError(f"attention_dir={self.attention_dir!r} must be 'causal' or 'bidirectional'")
        if self.initializer_range < 0:
            self.initializer_range = 0.8 / math.sqrt(self.d_model) if self.init_mode == "gpt2" else 1.0
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.use_attn_scale and self.attn_scale == -1.0:
            self.attn_scale = math.sqrt(self.d_head)
        self.n_params = self.n_layers * self.d_model * self.d_head * self.n_heads * 4
        if not self.attn_only:
            self.n_params += self.n_layers * self.d_model * self.d_mlp * (2 + self.gated_mlp)

    @classmethod
    def from_dict(cls, config_dict):
        """A config from a dict of field values (unknown keys raise TypeError, as TransformerLens;
        TransformerLens fields of architectures the C core does not run raise
        NotImplementedError unless at their default)."""
        refuse_unsupported_fields(config_dict, "HookedTransformerConfig")
        return cls(**{k: v for k, v in config_dict.items() if k not in TL_UNSUPPORTED_FIELDS})

    @classmethod
    def unwrap(cls, config):
        """``config`` itself if it is a config, else ``from_dict(config)``."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        # a transformer_lens config (or any object with the same fields)
        refuse_unsupported_fields({k: getattr(config, k) for k in TL_UNSUPPORTED_FIELDS
                                   if hasattr(config, k)}, type(config).__name__)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        vals = {n: getattr(config, n) for n in names if hasattr(config, n)}
        # torch's dtype and device objects as their names ("float32", "cpu"): the model
        # refuses any it cannot honour instead of dropping them
        for n in ("dtype", "device"):
            if n in vals and vals[n] is not None:
                v = vals[n]
                vals[n] = str(getattr(v, "type", v)).replace("torch.", "")
        return cls(**vals)

    def to_dict(self):
        """The fields as a plain dict."""
        return dataclasses.asdict(self)

    def __repr__(self):
        return "HookedTransformerConfig:\n" + "\n".join(f"{k}: {v!r}" for k, v in self.to_dict().items())


class PretrainedConfig:
    """A Hugging Face ``config.json`` with attribute access: the family's defaults
    (``_DEFAULTS``) overridden by the given fields, every field the model reads checked
    once against the family's table (``_FIELDS``; TypeError/ValueError naming it)."""

    _DEFAULTS = {}
    _FIELDS = ()
    _DIVISIBLE = ()

    def __init__(self, _where=None, **kwargs):
        for k, v in self._DEFAULTS.items():
            setattr(self, k, v)
        for k, v in kwargs.items():
            setattr(self, k, v)
        validate_fields(vars(self), self._FIELDS, _where or type(self).__name__, self._DIVISIBLE)

    def to_dict(self):
        """The fields as a dict."""
        return dict(vars(self))

    def __repr__(self):
        return f"{type(self).__name__} " + json.dumps(self.to_dict(), indent=2, default=str)


class GPT2Config(PretrainedConfig):
    """GPT-2's ``config.json`` with attribute access (``config.n_layer``) and HF's defaults."""

    _DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                     n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     initializer_range=0.02, scale_attn_weights=True,
                     scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                     tie_word_embeddings=True, bos_token_id=50256, eos_token_id=50256,
                     model_type="gpt2")

    _FIELDS = GPT2_CONFIG_FIELDS
    _DIVISIBLE = GPT2_CONFIG_DIVISIBLE

    @classmethod
    def from_pretrained(cls, name_or_path, revision="main", cache_dir=None):
        """Read ``config.json`` of a local directory or a cached hub model; a field of
        the wrong type or out of range raises TypeError/ValueError naming file and field."""
        path = _io.resolve_pretrained(name_or_path, "config.json", revision=revision,
                                      cache_dir=cache_dir)
        raw = _io.load_config(path, required=("n_layer", "n_embd", "n_head"))
        return cls(_where=str(path), **raw)

    # HF's generic aliases
    hidden_size = property(lambda self: self.n_embd, doc="= n_embd")
    num_hidden_layers = property(lambda self: self.n_layer, doc="= n_layer")
    num_attention_heads = property(lambda self: self.n_head, doc="= n_head")
    max_position_embeddings = property(lambda self: self.n_positions, doc="= n_positions")


# Hugging Face decoder config.json files of the rotary families (the fields the
# converters read; the others are kept as attributes and ignored).
_DECODER_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "vocab_size")
LLAMA_CONFIG_FIELDS = (
    _sizes(*_DECODER_SIZES)
    + _sizes("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window",
             optional=True)
    + (Field("rms_norm_eps", float, 0, strict=True), Field("hidden_act", str),
       Field("model_type", str))
    + _flags("tie_word_embeddings", "attention_bias", "mlp_bias")
)
NEOX_CONFIG_FIELDS = (
    _sizes(*_DECODER_SIZES, "max_position_embeddings")
    + (Field("layer_norm_eps", float, 0, strict=True), Field("hidden_act", str),
       Field("model_type", str))
    + _flags("use_parallel_residual", "tie_word_embeddings", "attention_bias")
)


class DecoderConfig(PretrainedConfig):
    """A rotary decoder's ``config.json`` (GPT-NeoX, Llama, Mistral, Qwen2) with attribute
    access and Hugging Face's defaults; ``path`` is the file it was read from (errors
    about its fields name it)."""

    _REQUIRED = _DECODER_SIZES
    path = "config.json"

    @classmethod
    def from_pretrained(cls, name_or_path, revision="main", cache_dir=None):
        """Read and check ``config.json`` of a local directory or a cached hub model."""
        path = _io.resolve_pretrained(name_or_path, "config.json", revision=revision,
                                      cache_dir=cache_dir)
        raw = _io.load_config(path, required=cls._REQUIRED)
        cfg = cls(_where=str(path), **raw)
        cfg.path = str(path)
        return cfg


class LlamaConfig(DecoderConfig):
    """Llama's ``config.json`` (also Mistral's and Qwen2's, whose fields are a superset)."""

    _DEFAULTS = dict(num_key_value_heads=None, head_dim=None, rms_norm_eps=1e-6, hidden_act="silu",
                     tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                     max_position_embeddings=2048, model_type="llama", sliding_window=None)
    _FIELDS = LLAMA_CONFIG_FIELDS


class MistralConfig(LlamaConfig):
    """Mistral's ``config.json``."""

    _DEFAULTS = dict(LlamaConfig._DEFAULTS, model_type="mistral", max_position_embeddings=32768)


class Qwen2Config(LlamaConfig):
    """Qwen2's ``config.json`` (q/k/v projections with biases)."""

    _DEFAULTS = dict(LlamaConfig._DEFAULTS, model_type="qwen2", max_position_embeddings=32768,
                     attention_bias=True)


class GPTNeoXConfig(DecoderConfig):
    """GPT-NeoX's (Pythia's) ``config.json``."""

    _DEFAULTS = dict(layer_norm_eps=1e-5, hidden_act="gelu", use_parallel_residual=True,
                     tie_word_embeddings=False, attention_bias=True, rotary_pct=0.25,
                     rotary_emb_base=10000, max_position_embeddings=2048, model_type="gpt_neox")
    _FIELDS = NEOX_CONFIG_FIELDS


GEMMA2_CONFIG_FIELDS = (
    _sizes(*_DECODER_SIZES, "num_key_value_heads", "head_dim", "max_position_embeddings",
           "query_pre_attn_scalar")
    + _sizes("sliding_window", optional=True)
    + (Field("rms_norm_eps", float, 0, strict=True), Field("hidden_activation", str),
       Field("model_type", str))
    + _flags("tie_word_embeddings", "attention_bias")
)


class Gemma2Config(DecoderConfig):
    """Gemma 2's ``config.json`` with Hugging Face's defaults (soft-caps, the sliding
    window and its layer_types, query_pre_attn_scalar)."""

    _DEFAULTS = dict(num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
                     hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                     attention_bias=False, max_position_embeddings=8192, model_type="gemma2",
                     query_pre_attn_scalar=256, sliding_window=4096, layer_types=None,
                     final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                     use_bidirectional_attention=None)
    _FIELDS = GEMMA2_CONFIG_FIELDS
