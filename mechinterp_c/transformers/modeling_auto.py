"""``AutoModelForCausalLM`` / ``AutoConfig`` / ``AutoModel``: pick the C-core model class
from ``config.json``.

``AutoModelForCausalLM`` maps GPT-2 (``model_type: "gpt2"``, or an ``architectures``
entry naming a GPT-2 class), the Llama family (``llama``, ``mistral``, ``qwen2``:
:mod:`~mechinterp_c.transformers.modeling_llama`) and GPT-NeoX (``gpt_neox``). ``AutoModel`` maps REVE (``model_type: "reve"``) to
:class:`~mechinterp_c.transformers.modeling_reve.ReveModel` and a REVE position-bank
repository (``positions.json``) to its :class:`~mechinterp_c.reve.PositionBank`.
Anything else raises NotImplementedError naming the model type.
"""
from .. import io as _io
from ..loading_from_pretrained import model_type_of
from ..config import GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config
from .modeling_gpt2 import GPT2Config, GPT2LMHeadModel
from .modeling_gpt_neox import GPTNeoXForCausalLM
from .modeling_llama import LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

__all__ = ["AutoConfig", "AutoModel", "AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING"]

MODEL_FOR_CAUSAL_LM_MAPPING = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM,
                               "mistral": MistralForCausalLM, "qwen2": Qwen2ForCausalLM,
                               "gpt_neox": GPTNeoXForCausalLM}
_CONFIG_MAPPING = {"gpt2": GPT2Config, "llama": LlamaConfig, "mistral": MistralConfig,
                   "qwen2": Qwen2Config, "gpt_neox": GPTNeoXConfig}


class AutoConfig:
    """``AutoConfig.from_pretrained(name_or_path)``: the config class of the model type."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, revision="main", cache_dir=None, **kwargs):
        """Read ``config.json`` of a local directory or a cached hub model."""
        mt, path = model_type_of(pretrained_model_name_or_path, revision, cache_dir)
        if mt not in _CONFIG_MAPPING:
            raise NotImplementedError(f"{path}: model_type {mt!r} is not supported (supported: "
                                      f"{', '.join(sorted(_CONFIG_MAPPING))})")
        return _CONFIG_MAPPING[mt].from_pretrained(pretrained_model_name_or_path, revision=revision,
                                                   cache_dir=cache_dir)


class AutoModelForCausalLM:
    """``AutoModelForCausalLM.from_pretrained(name_or_path)``: the C-core causal LM
    for the checkpoint's ``model_type`` (GPT-2: :class:`GPT2LMHeadModel`)."""

    def __init__(self, *args, **kwargs):
        raise TypeError("AutoModelForCausalLM is not instantiated directly: use "
                        "AutoModelForCausalLM.from_pretrained(name_or_path)")

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, *model_args, revision="main",
                        cache_dir=None, **kwargs):
        """Load the model of a local directory or a cached hub model (no network).
        Keywords go to the model class's ``from_pretrained``, which refuses a dtype, device or
        keyword it cannot honour."""
        mt, path = model_type_of(pretrained_model_name_or_path, revision, cache_dir)
        cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(mt)
        if cls is None:
            raise NotImplementedError(f"{path}: model_type {mt!r} is not supported by "
                                      f"AutoModelForCausalLM (supported: "
                                      f"{', '.join(sorted(MODEL_FOR_CAUSAL_LM_MAPPING))})")
        return cls.from_pretrained(pretrained_model_name_or_path, *model_args, revision=revision,
                                   cache_dir=cache_dir, **kwargs)


class AutoModel:
    """``AutoModel.from_pretrained(name_or_path, trust_remote_code=True)``, as the REVE
    notebook calls it: ``brain-bzh/reve-base`` (a REVE ``config.json`` + safetensors) gives
    a :class:`~mechinterp_c.transformers.modeling_reve.ReveModel`;
    ``brain-bzh/reve-positions`` (a ``positions.json`` mapping electrode names to
    [x, y, z]) gives its position bank. ``trust_remote_code`` is accepted (the REVE
    code is built in, nothing remote runs); no network is used."""

    def __init__(self, *args, **kwargs):
        raise TypeError("AutoModel is not instantiated directly: use "
                        "AutoModel.from_pretrained(name_or_path)")

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, *model_args, revision="main",
                        cache_dir=None, trust_remote_code=None, **kwargs):
        """Load a local directory or a model in the Hugging Face cache (see the class doc).
        FileNotFoundError lists every place looked when the name is not found."""
        from . import modeling_reve as _reve
        base = _io.resolve_pretrained(pretrained_model_name_or_path, revision=revision,
                                      cache_dir=cache_dir)
        cfg_path = base / "config.json"
        raw = _io.load_config(cfg_path) if cfg_path.is_file() else {}
        mt = str(raw.get("model_type", "")).lower()
        if raw and _reve.is_reve_config(raw):
            return _reve.ReveModel.from_pretrained(pretrained_model_name_or_path,
                                                   revision=revision, cache_dir=cache_dir)
        if _reve.is_position_bank_dir(base):
            return _reve.load_position_bank(pretrained_model_name_or_path, revision=revision,
                                            cache_dir=cache_dir)
        if mt in MODEL_FOR_CAUSAL_LM_MAPPING:
            raise NotImplementedError(f"{base}: model_type {mt!r}: use AutoModelForCausalLM "
                                      f"(AutoModel maps REVE and its position bank)")
        if not raw:
            present = sorted(p.name for p in base.iterdir())
            raise FileNotFoundError(f"{base}: neither config.json nor positions.json (it has: "
                                    f"{', '.join(present) if present else 'nothing'})")
        raise NotImplementedError(f"{cfg_path}: model_type {mt or None!r} is not supported by "
                                  f"AutoModel (supported: reve, REVE position banks)")
