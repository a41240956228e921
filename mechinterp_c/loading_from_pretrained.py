"""Hugging Face checkpoints as TransformerLens models: config and weight conversion, one
converter per model family (as TransformerLens's ``loading_from_pretrained`` and
``pretrained/weight_conversions``).

A family is one row of ``_FAMILIES``: its ``model_type`` (``config.json``), the class
that reads its ``config.json``, and two functions: HF config -> HookedTransformerConfig
fields, and HF state dict -> TransformerLens state dict (``blocks.0.attn.W_Q``
[n_heads, d_model, d_head], ...). Adding a family (GPT-NeoX, Llama, Gemma) is one
such pair of functions and one row.

Nothing here builds a model: ``HookedTransformer.from_pretrained`` does, from what
:func:`get_pretrained_model_config` and :func:`get_pretrained_state_dict` return.
"""
import numpy as np

from . import io as _io
from .config import GPT2Config
from .utils import to_numpy

__all__ = ["convert_gpt2_config", "convert_gpt2_weights", "get_pretrained_model_config",
           "get_pretrained_state_dict", "get_pretrained_tokenizer", "model_type_of"]

# architectures that identify a GPT-2 config.json written without a model_type
_GPT2_ARCHITECTURES = {"GPT2LMHeadModel", "GPT2Model"}


def model_type_of(name_or_path, revision="main", cache_dir=None, default=None):
    """``(model_type, path of config.json)`` of a local directory or cached hub model;
    ``default`` when config.json names neither a model_type nor a known architecture
    (None: that is a ValueError)."""
    path = _io.resolve_pretrained(name_or_path, "config.json", revision=revision, cache_dir=cache_dir)
    raw = _io.load_config(path)
    mt = raw.get("model_type")
    if mt is None and set(raw.get("architectures") or ()) & _GPT2_ARCHITECTURES:
        mt = "gpt2"
    if mt is None:
        mt = default
    if mt is None:
        raise ValueError(f"{path}: config.json has no 'model_type' (nor a known 'architectures' entry)")
    return mt, path


# ------------------------------------------------------------------ GPT-2
def convert_gpt2_config(cfg):
    """The HookedTransformerConfig fields of a GPT-2 ``config.json`` (a :class:`GPT2Config`)."""
    act = cfg.activation_function
    if act not in ("gelu_new", "gelu", "relu", "gelu_pytorch_tanh", "gelu_fast", "silu", "swish"):
        raise NotImplementedError(f"GPT-2 activation_function={act!r} is not supported")
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        raise NotImplementedError("scale_attn_by_inverse_layer_idx=True is not supported")
    if not getattr(cfg, "scale_attn_weights", True):
        raise NotImplementedError("scale_attn_weights=False is not supported")
    d_head, rem = divmod(cfg.n_embd, cfg.n_head)
    if rem:
        raise ValueError(f"config: n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}")
    return dict(n_layers=cfg.n_layer, d_model=cfg.n_embd, n_ctx=cfg.n_positions, d_head=d_head,
                n_heads=cfg.n_head, d_mlp=cfg.n_inner or 4 * cfg.n_embd, act_fn=act,
                d_vocab=cfg.vocab_size, eps=float(cfg.layer_norm_epsilon), normalization_type="LN",
                original_architecture="GPT2LMHeadModel", init_weights=False,
                model_name=getattr(cfg, "_name_or_path", "gpt2"))


def convert_gpt2_weights(sd, cfg):
    """HF GPT-2 weights (``transformer.`` prefix optional) -> TransformerLens names and
    shapes (``blocks.0.attn.W_Q`` [H, D, Dh], ...), as TransformerLens's GPT-2 converter."""
    sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): np.asarray(to_numpy(v), dtype=np.float32)
          for k, v in sd.items()}
    D, H, L = cfg.n_embd, cfg.n_head, cfg.n_layer
    Dh = D // H
    out = {"embed.W_E": sd["wte.weight"], "pos_embed.W_pos": sd["wpe.weight"]}
    for l in range(L):
        h, b = f"h.{l}.", f"blocks.{l}."
        out[b + "ln1.w"], out[b + "ln1.b"] = sd[h + "ln_1.weight"], sd[h + "ln_1.bias"]
        W = sd[h + "attn.c_attn.weight"].reshape(D, 3, H, Dh)
        bq = sd[h + "attn.c_attn.bias"].reshape(3, H, Dh)
        for i, c in enumerate("QKV"):
            out[b + f"attn.W_{c}"] = np.ascontiguousarray(W[:, i].transpose(1, 0, 2))
            out[b + f"attn.b_{c}"] = np.ascontiguousarray(bq[i])
        out[b + "attn.W_O"] = sd[h + "attn.c_proj.weight"].reshape(H, Dh, D)
        out[b + "attn.b_O"] = sd[h + "attn.c_proj.bias"]
        out[b + "ln2.w"], out[b + "ln2.b"] = sd[h + "ln_2.weight"], sd[h + "ln_2.bias"]
        out[b + "mlp.W_in"], out[b + "mlp.b_in"] = sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_fc.bias"]
        out[b + "mlp.W_out"], out[b + "mlp.b_out"] = sd[h + "mlp.c_proj.weight"], sd[h + "mlp.c_proj.bias"]
    out["ln_final.w"], out["ln_final.b"] = sd["ln_f.weight"], sd["ln_f.bias"]
    out["unembed.W_U"] = np.ascontiguousarray(sd.get("lm_head.weight", sd["wte.weight"]).T)
    out["unembed.b_U"] = np.zeros(cfg.vocab_size, np.float32)
    return out


# model_type -> (config class, HF config -> TL config fields, HF -> TL state dict)
_FAMILIES = {
    "gpt2": (GPT2Config, convert_gpt2_config, convert_gpt2_weights),
}


def _family(name_or_path, revision, cache_dir):
    # GPT-2 when config.json does not say, as Hugging Face's GPT2Config defaults
    mt, _ = model_type_of(name_or_path, revision, cache_dir, default="gpt2")
    if mt not in _FAMILIES:
        raise NotImplementedError(f"{name_or_path}: model_type={mt!r}; only "
                                  f"{', '.join(sorted(_FAMILIES))} checkpoints are converted")
    return _FAMILIES[mt]


def get_pretrained_model_config(name_or_path, revision="main", cache_dir=None):
    """``(hf_config, tl_config_fields)`` of a checkpoint: its ``config.json`` read and
    checked (TypeError/ValueError naming file and field), and the HookedTransformerConfig
    fields it converts to (``model_name`` the path given, BOS prepended by default)."""
    config_cls, convert_config, _ = _family(name_or_path, revision, cache_dir)
    hf_cfg = config_cls.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    tl_cfg = convert_config(hf_cfg)
    tl_cfg["model_name"] = str(name_or_path)
    tl_cfg["default_prepend_bos"] = True
    return hf_cfg, tl_cfg


def get_pretrained_state_dict(name_or_path, hf_cfg, revision="main", cache_dir=None):
    """The checkpoint's weights as a TransformerLens state dict of float32 arrays."""
    convert_weights = _FAMILIES[hf_cfg.model_type][2]
    sd = _io.load_weights(name_or_path, float32=True, revision=revision, cache_dir=cache_dir)
    return convert_weights(sd, hf_cfg)


def get_pretrained_tokenizer(name_or_path, revision="main", cache_dir=None):
    """The checkpoint's GPT-2 tokenizer, or None when it has none."""
    # imported when called: the ``transformers`` package's __init__ loads the Hugging
    # Face models, which are built on HookedTransformer, which loads this module
    from .transformers.tokenization_gpt2 import GPT2Tokenizer
    try:
        return GPT2Tokenizer.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
