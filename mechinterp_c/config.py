"""``HookedTransformerConfig``: TransformerLens's config fields and defaults, without torch."""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

SUPPORTED_ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "silu", "swish")
SUPPORTED_NORMS = ("LN", "LNPre", "RMS", "RMSPre", None)


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
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.n_heads == -1:
            if self.d_model % self.d_head:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by d_head "
                                 f"({self.d_head}) when n_heads is -1")
            self.n_heads = self.d_model // self.d_head
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
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
        """A config from a dict of field values (unknown keys raise TypeError, as TransformerLens)."""
        return cls(**config_dict)

    @classmethod
    def unwrap(cls, config):
        """``config`` itself if it is a config, else ``from_dict(config)``."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        # a transformer_lens config (or any object with the same fields)
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
