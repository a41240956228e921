"""``AutoModelForCausalLM`` / ``AutoConfig``: pick the C-core model class from ``config.json``.

Only GPT-2 (``model_type: "gpt2"``, or an ``architectures`` entry naming a GPT-2
class) is mapped; anything else raises NotImplementedError naming the model type.
"""
from .. import io as _io
from .modeling_gpt2 import GPT2Config, GPT2LMHeadModel

__all__ = ["AutoConfig", "AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING"]

MODEL_FOR_CAUSAL_LM_MAPPING = {"gpt2": GPT2LMHeadModel}
_CONFIG_MAPPING = {"gpt2": GPT2Config}
_GPT2_ARCHITECTURES = {"GPT2LMHeadModel", "GPT2Model"}


def _model_type(name_or_path, revision, cache_dir):
    path = _io.resolve_pretrained(name_or_path, "config.json", revision=revision, cache_dir=cache_dir)
    raw = _io.load_config(path)
    mt = raw.get("model_type")
    if mt is None and set(raw.get("architectures") or ()) & _GPT2_ARCHITECTURES:
        mt = "gpt2"
    if mt is None:
        raise ValueError(f"{path}: config.json has no 'model_type' (nor a known 'architectures' entry)")
    return mt, path


class AutoConfig:
    """``AutoConfig.from_pretrained(name_or_path)``: the config class of the model type."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, revision="main", cache_dir=None, **kwargs):
        """Read ``config.json`` of a local directory or a cached hub model."""
        mt, path = _model_type(pretrained_model_name_or_path, revision, cache_dir)
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
        HF keywords such as ``torch_dtype`` are accepted and ignored."""
        mt, path = _model_type(pretrained_model_name_or_path, revision, cache_dir)
        cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(mt)
        if cls is None:
            raise NotImplementedError(f"{path}: model_type {mt!r} is not supported by "
                                      f"AutoModelForCausalLM (supported: "
                                      f"{', '.join(sorted(MODEL_FOR_CAUSAL_LM_MAPPING))})")
        return cls.from_pretrained(pretrained_model_name_or_path, revision=revision,
                                   cache_dir=cache_dir, **kwargs)
