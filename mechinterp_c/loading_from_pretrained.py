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

from . import _core
from . import io as _io
from .config import Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config
from .utils import to_numpy

__all__ = ["convert_gpt2_config", "convert_gpt2_weights", "convert_neox_config",
           "convert_neox_weights", "convert_llama_config", "convert_llama_weights",
           "convert_mistral_config", "convert_qwen2_config", "convert_gemma2_config",
           "convert_gemma2_weights", "get_pretrained_model_config",
           "get_pretrained_state_dict", "get_pretrained_tokenizer", "model_type_of",
           "map_llama_weights", "stream_llama_weights_processed", "OFFICIAL_MODEL_NAMES"]

# TransformerLens's short names of checkpoints these converters read -> hub ids
# (looked up in the Hugging Face cache; there is no hub access).
OFFICIAL_MODEL_NAMES = {
    **{f"pythia-{s}": f"EleutherAI/pythia-{s}" for s in (
        "14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")},
    **{f"pythia-{s}-deduped": f"EleutherAI/pythia-{s}-deduped" for s in (
        "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")},
    "llama-7b-hf": "meta-llama/Llama-2-7b-hf", "Llama-2-7b-hf": "meta-llama/Llama-2-7b-hf",
    "Llama-3.2-1B": "meta-llama/Llama-3.2-1B", "Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "Meta-Llama-3-8B": "meta-llama/Meta-Llama-3-8B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "qwen2-0.5b": "Qwen/Qwen2-0.5B", "qwen2-1.5b": "Qwen/Qwen2-1.5B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "tiny-stories-1M": "roneneldan/TinyStories-1M",
    "gemma-2-2b": "google/gemma-2-2b", "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-27b": "google/gemma-2-27b", "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b-it": "google/gemma-2-9b-it", "gemma-2-27b-it": "google/gemma-2-27b-it",
}

# config.json fields that name architectures the C core does not run: the feature, for
# the NotImplementedError
_REFUSED_FIELDS = {
    "alibi": "ALiBi position biases", "use_alibi": "ALiBi position biases",
    "num_local_experts": "mixture of experts", "num_experts": "mixture of experts",
    "moe_num_experts": "mixture of experts", "vision_config": "multimodal (vision) inputs",
    "audio_config": "multimodal (audio) inputs",
}
_REFUSED_TYPES = {"bloom": "ALiBi position biases", "mpt": "ALiBi position biases",
                  "mixtral": "mixture of experts", "qwen2_moe": "mixture of experts",
                  "llava": "multimodal (vision) inputs", "qwen2_vl": "multimodal (vision) inputs"}

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
    if mt in _REFUSED_TYPES:
        raise NotImplementedError(f"{path}: model_type={mt!r} uses {_REFUSED_TYPES[mt]}, which "
                                  "the C core does not implement")
    for field, feature in _REFUSED_FIELDS.items():
        if raw.get(field):
            raise NotImplementedError(f"{path}: field {field!r} asks for {feature}, which the "
                                      "C core does not implement")
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


# ----------------------------------------------------- rotary families
def _rope(cfg):
    """(rope_theta, scaling fields) of a config.json: ``rope_parameters`` (transformers
    5) or ``rope_scaling`` / ``rope_theta`` (older files). Types other than the plain
    rotation and Llama 3's are refused naming the file and field."""
    params = getattr(cfg, "rope_parameters", None) or {}
    scaling = getattr(cfg, "rope_scaling", None) or {}
    for field, d in (("rope_parameters", params), ("rope_scaling", scaling)):
        if not isinstance(d, dict):
            raise TypeError(f"{cfg.path}: field {field!r} must be an object, got {d!r}")
    theta = getattr(cfg, "rope_theta", None) or params.get("rope_theta") \
        or getattr(cfg, "rotary_emb_base", None) or 10000.0
    rope = dict(params, **scaling)
    field = "rope_scaling" if scaling else "rope_parameters"
    kind = rope.get("rope_type", rope.get("type", "default"))
    out = {"rotary_base": float(theta)}
    if kind in (None, "default"):
        return out
    if kind == "llama3":
        try:
            out.update(use_NTK_by_parts_rope=True,
                       NTK_original_ctx_len=int(rope.get("original_max_position_embeddings",
                                                         cfg.max_position_embeddings)),
                       NTK_by_parts_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                       NTK_by_parts_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                       NTK_by_parts_factor=float(rope.get("factor", 1.0)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{cfg.path}: field {field!r}: llama3 scaling needs numbers ({e})") from None
        return out
    if kind in ("linear", "dynamic", "yarn", "longrope"):
        raise NotImplementedError(f"{cfg.path}: field {field!r}: rope_type={kind!r} is not "
                                  "supported (the plain rotation and 'llama3' are)")
    raise ValueError(f"{cfg.path}: field {field!r}: unknown rope_type {kind!r} (known: "
                     "'default', 'llama3')")


def _act(cfg, field="hidden_act"):
    act = getattr(cfg, field)
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish"):
        raise NotImplementedError(f"{cfg.path}: field {field!r}: activation {act!r} is not supported")
    return act


def convert_neox_config(cfg):
    """The HookedTransformerConfig fields of a GPT-NeoX (Pythia) ``config.json``, as
    TransformerLens's (partial rotary: rotary_dim = round(rotary_pct * d_head))."""
    H = cfg.num_attention_heads
    d_head, rem = divmod(cfg.hidden_size, H)
    if rem:
        raise ValueError(f"{cfg.path}: hidden_size={cfg.hidden_size} is not divisible by "
                         f"num_attention_heads={H}")
    params = getattr(cfg, "rope_parameters", None) or {}
    pct = params.get("partial_rotary_factor", getattr(cfg, "rotary_pct", 0.25))
    rotary_dim = round(pct * d_head)
    if not 0 < rotary_dim <= d_head or rotary_dim % 2:
        raise ValueError(f"{cfg.path}: rotary_pct={pct} gives rotary_dim={rotary_dim}, which must "
                         f"be even and in (0, d_head={d_head}]")
    return dict(n_layers=cfg.num_hidden_layers, d_model=cfg.hidden_size, n_ctx=cfg.max_position_embeddings,
                d_head=d_head, n_heads=H, d_mlp=cfg.intermediate_size, act_fn=_act(cfg),
                d_vocab=cfg.vocab_size, eps=float(cfg.layer_norm_eps), normalization_type="LN",
                parallel_attn_mlp=bool(cfg.use_parallel_residual), positional_embedding_type="rotary",
                rotary_dim=rotary_dim, rotary_adjacent_pairs=False, **_rope(cfg),
                original_architecture="GPTNeoXForCausalLM", init_weights=False,
                default_prepend_bos=False)


def _sliding_layers(cfg, n_ctx):
    """The local-attention fields of a Mistral / Qwen2 config.json whose sliding window is
    shorter than the context (else none): which layers slide from ``layer_types``, else
    Qwen2's ``max_window_layers`` (layers from it on), else every layer (Mistral), as
    Hugging Face's configs derive them. A sliding layer's query at position p sees keys
    p - window < j <= p, Hugging Face's and TransformerLens's window alike."""
    window = getattr(cfg, "sliding_window", None)
    if window is None or not getattr(cfg, "use_sliding_window", True) or window >= n_ctx:
        return {}
    L = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None)
    if types is None:
        first = getattr(cfg, "max_window_layers", None) or 0
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(L)]
    kinds = {"sliding_attention": "local", "full_attention": "global"}
    if not isinstance(types, list) or len(types) != L or any(t not in kinds for t in types):
        raise ValueError(f"{cfg.path}: field 'layer_types' must list 'sliding_attention' or "
                         f"'full_attention' once per layer ({L}), got {types!r}")
    if "sliding_attention" not in types:
        return {}
    return dict(use_local_attn=True, window_size=int(window), attn_types=[kinds[t] for t in types])


def convert_llama_config(cfg, architecture="LlamaForCausalLM", n_ctx=None):
    """The HookedTransformerConfig fields of a Llama ``config.json`` (Mistral and Qwen2
    share it), as TransformerLens's: gated SiLU MLP, RMS norms, rotary on every head
    dimension, grouped-query attention when num_key_value_heads < num_attention_heads."""
    H = cfg.num_attention_heads
    d_head = cfg.head_dim or cfg.hidden_size // H
    if not cfg.head_dim and cfg.hidden_size % H:
        raise ValueError(f"{cfg.path}: hidden_size={cfg.hidden_size} is not divisible by "
                         f"num_attention_heads={H}")
    kv = cfg.num_key_value_heads or H
    if H % kv:
        raise ValueError(f"{cfg.path}: num_key_value_heads={kv} does not divide "
                         f"num_attention_heads={H}")
    if getattr(cfg, "mlp_bias", False):
        raise NotImplementedError(f"{cfg.path}: field 'mlp_bias': MLP biases are not supported")
    n_ctx = n_ctx or cfg.max_position_embeddings
    local = _sliding_layers(cfg, n_ctx)
    return dict(n_layers=cfg.num_hidden_layers, d_model=cfg.hidden_size, n_ctx=n_ctx, d_head=d_head,
                n_heads=H, n_key_value_heads=kv if kv != H else None, d_mlp=cfg.intermediate_size,
                act_fn=_act(cfg), d_vocab=cfg.vocab_size, eps=float(cfg.rms_norm_eps),
                normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=d_head,
                rotary_adjacent_pairs=False, **_rope(cfg), final_rms=True, gated_mlp=True,
                original_architecture=architecture, init_weights=False, **local)


def convert_mistral_config(cfg):
    """Mistral's ``config.json``: Llama's fields with TransformerLens's context of 2048."""
    return convert_llama_config(cfg, "MistralForCausalLM", n_ctx=2048)


def convert_qwen2_config(cfg):
    """Qwen2's ``config.json``: Llama's fields (q/k/v biases come with the weights);
    TransformerLens does not prepend BOS for Qwen2."""
    out = convert_llama_config(cfg, "Qwen2ForCausalLM")
    out.update(default_prepend_bos=False, tokenizer_prepends_bos=True)
    return out


class _Checkpoint:
    """A checkpoint's tensors by name, each fetched once with its shape checked: a
    missing tensor is a KeyError, a wrong shape a ValueError, both naming the file."""

    def __init__(self, sd, where):
        self._sd, self._where = sd, where

    def __call__(self, name, shape):
        if name not in self._sd:
            raise KeyError(f"{self._where}: the checkpoint has no tensor {name!r}")
        a = np.asarray(to_numpy(self._sd[name]), dtype=np.float32)
        if a.shape != tuple(shape):
            raise ValueError(f"{self._where}: tensor {name!r} has shape {a.shape}, the config "
                             f"asks for {tuple(shape)}")
        return a

    def get(self, name, shape):
        """The tensor, or None when the checkpoint does not have it."""
        return self(name, shape) if name in self._sd else None


def convert_neox_weights(sd, cfg, where="checkpoint"):
    """HF GPT-NeoX weights -> TransformerLens names and shapes, as TransformerLens's
    ``convert_neox_weights`` (query_key_value rows are (head, q/k/v, d_head))."""
    t = _Checkpoint(sd, where)
    D, H, L, M, V = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, \
        cfg.intermediate_size, cfg.vocab_size
    Dh = D // H
    out = {"embed.W_E": t("gpt_neox.embed_in.weight", (V, D))}
    for l in range(L):
        h, b = f"gpt_neox.layers.{l}.", f"blocks.{l}."
        out[b + "ln1.w"] = t(h + "input_layernorm.weight", (D,))
        out[b + "ln1.b"] = t(h + "input_layernorm.bias", (D,))
        W = t(h + "attention.query_key_value.weight", (3 * D, D)).reshape(H, 3, Dh, D)
        bias = t(h + "attention.query_key_value.bias", (3 * D,)).reshape(H, 3, Dh)
        for i, c in enumerate("QKV"):
            out[b + f"attn.W_{c}"] = np.ascontiguousarray(W[:, i].transpose(0, 2, 1))
            out[b + f"attn.b_{c}"] = np.ascontiguousarray(bias[:, i])
        out[b + "attn.W_O"] = np.ascontiguousarray(t(h + "attention.dense.weight", (D, D)).T.reshape(H, Dh, D))
        out[b + "attn.b_O"] = t(h + "attention.dense.bias", (D,))
        out[b + "ln2.w"] = t(h + "post_attention_layernorm.weight", (D,))
        out[b + "ln2.b"] = t(h + "post_attention_layernorm.bias", (D,))
        out[b + "mlp.W_in"] = np.ascontiguousarray(t(h + "mlp.dense_h_to_4h.weight", (M, D)).T)
        out[b + "mlp.b_in"] = t(h + "mlp.dense_h_to_4h.bias", (M,))
        out[b + "mlp.W_out"] = np.ascontiguousarray(t(h + "mlp.dense_4h_to_h.weight", (D, M)).T)
        out[b + "mlp.b_out"] = t(h + "mlp.dense_4h_to_h.bias", (D,))
    out["ln_final.w"] = t("gpt_neox.final_layer_norm.weight", (D,))
    out["ln_final.b"] = t("gpt_neox.final_layer_norm.bias", (D,))
    # transformers >= 5.14 names the unembedding lm_head, earlier files embed_out
    name = "lm_head.weight" if "lm_head.weight" in sd or "embed_out.weight" not in sd else "embed_out.weight"
    if cfg.tie_word_embeddings and name not in sd:
        name = "gpt_neox.embed_in.weight"
    out["unembed.W_U"] = np.ascontiguousarray(t(name, (V, D)).T)
    out["unembed.b_U"] = np.zeros(V, np.float32)
    return out


def _self_attn_weights(t, h, b, D, H, kv, Dh):
    """TransformerLens's attention weights of layer prefix ``b`` from Hugging Face's
    ``self_attn.{q,k,v,o}_proj`` under prefix ``h`` (Llama, Mistral, Qwen2, Gemma 2): per-head
    ``W_Q/K/V`` [n, D, Dh] (``_W_K``/``_W_V`` of the kv heads with grouped-query attention),
    absent biases as zeros."""
    out = {}
    pre = "_" if kv != H else ""
    for c, n, proj in (("Q", H, "q_proj"), ("K", kv, "k_proj"), ("V", kv, "v_proj")):
        p = pre if c != "Q" else ""
        W = t(h + f"self_attn.{proj}.weight", (n * Dh, D)).reshape(n, Dh, D)
        out[b + f"attn.{p}W_{c}"] = np.ascontiguousarray(W.transpose(0, 2, 1))
        bias = t.get(h + f"self_attn.{proj}.bias", (n * Dh,))
        out[b + f"attn.{p}b_{c}"] = (bias.reshape(n, Dh) if bias is not None
                                     else np.zeros((n, Dh), np.float32))
    out[b + "attn.W_O"] = np.ascontiguousarray(t(h + "self_attn.o_proj.weight", (D, H * Dh)).T.reshape(H, Dh, D))
    bo = t.get(h + "self_attn.o_proj.bias", (D,))
    out[b + "attn.b_O"] = bo if bo is not None else np.zeros(D, np.float32)
    return out


def convert_llama_weights(sd, cfg, where="checkpoint"):
    """HF Llama / Mistral / Qwen2 weights -> TransformerLens names and shapes, as
    TransformerLens's ``convert_llama_weights`` / ``convert_qwen2_weights``: W_Q [H, D, Dh],
    with grouped-query attention _W_K/_W_V [Hkv, D, Dh]; absent biases are zeros."""
    t = _Checkpoint(sd, where)
    D, H, L, M, V = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, \
        cfg.intermediate_size, cfg.vocab_size
    Dh = cfg.head_dim or D // H
    kv = cfg.num_key_value_heads or H
    out = {"embed.W_E": t("model.embed_tokens.weight", (V, D))}
    for l in range(L):
        h, b = f"model.layers.{l}.", f"blocks.{l}."
        out[b + "ln1.w"] = t(h + "input_layernorm.weight", (D,))
        out.update(_self_attn_weights(t, h, b, D, H, kv, Dh))
        out[b + "ln2.w"] = t(h + "post_attention_layernorm.weight", (D,))
        out[b + "mlp.W_in"] = np.ascontiguousarray(t(h + "mlp.up_proj.weight", (M, D)).T)
        out[b + "mlp.W_gate"] = np.ascontiguousarray(t(h + "mlp.gate_proj.weight", (M, D)).T)
        out[b + "mlp.b_in"] = np.zeros(M, np.float32)
        out[b + "mlp.W_out"] = np.ascontiguousarray(t(h + "mlp.down_proj.weight", (D, M)).T)
        out[b + "mlp.b_out"] = np.zeros(D, np.float32)
    out["ln_final.w"] = t("model.norm.weight", (D,))
    name = "lm_head.weight" if "lm_head.weight" in sd or not cfg.tie_word_embeddings \
        else "model.embed_tokens.weight"
    out["unembed.W_U"] = np.ascontiguousarray(t(name, (V, D)).T)
    out["unembed.b_U"] = np.zeros(V, np.float32)
    return out


def _transposed(a):
    """``np.ascontiguousarray(a.T)`` of a 2-D array, copied 64 rows at a time (the same
    values; about 3x faster on large weights than one strided copy, cache-wise)."""
    out = np.empty(a.shape[::-1], a.dtype)
    for i in range(0, a.shape[0], 64):
        out[:, i:i + 64] = a[i:i + 64].T
    return out


def _file_bfloat16(st, name):
    """Tensor ``name`` of SafeTensors ``st`` as bfloat16 bit patterns read from the file
    with ordinary reads when it is stored as BF16 (the mapped pages are not touched, so
    they never count in the process's resident memory), else converted."""
    if st.dtype(name) != "BF16":
        return st.get_bfloat16(name)
    path = str(st.path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = _io.parse_json(f.read(n).decode("utf-8"))
        begin, end = (int(x) for x in header[name]["data_offsets"])
        f.seek(8 + n + begin)
        out = np.fromfile(f, dtype="<u2", count=(end - begin) // 2)
    return out.reshape(st.shape(name))


def map_llama_weights(model, files, cfg, where="checkpoint"):
    """Give a bfloat16 Llama / Mistral / Qwen2 model (HookedTransformer of
    ``convert_llama_config(cfg)`` with ``dtype="bfloat16"``, weights not processed) the
    weights of the opened checkpoint ``files`` (``io.open_checkpoint``), read in place
    where the layout allows:

    - mapped, not copied (a BF16 checkpoint; other dtypes are converted once to
      bfloat16): ``embed_tokens`` (W_E's layout), and read transposed in place (HF's
      ``[out, in]`` Linear weights are the transposes of the C core's ``[in, out]``):
      ``o_proj`` (W_O), ``up_proj`` (W_in), ``gate_proj`` (W_gate), ``down_proj``
      (W_out) and an untied ``lm_head`` (W_U); a tied one is W_E read transposed;
    - converted once into the model's own memory: ``q_proj``/``k_proj``/``v_proj`` (the
      C core multiplies by one fused ``[D, H + 2 Hkv, Dh]`` matrix; three separate
      tensors of the file cannot be that matrix; read with file reads, one tensor at a
      time, so their mapped pages never become resident) and the float32 vectors
      (norm weights, Qwen2's q/k/v biases) as bfloat16-rounded float32.

    Shapes are checked against ``cfg`` (KeyError / ValueError naming the file and the
    tensor); a tensor the family does not have is an error too. Returns ``model``."""
    core, raw = model._core, model._raw
    D, H, L, M, V = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, \
        cfg.intermediate_size, cfg.vocab_size
    Dh = cfg.head_dim or D // H
    kv = cfg.num_key_value_heads or H
    used = set()

    def st_of(name, shape):
        if name not in files:
            raise KeyError(f"{where}: the checkpoint has no tensor {name!r}")
        st = files[name]
        if tuple(st.shape(name)) != tuple(shape):
            raise ValueError(f"{where}: tensor {name!r} has shape {tuple(st.shape(name))}, the "
                             f"config asks for {tuple(shape)}")
        used.add(name)
        return st

    def mapped(dst, name, shape, transposed=False):
        st = st_of(name, shape)
        core.set_param(dst, st.get_bfloat16(name, writable=True), transposed=transposed)

    def vector(dst, name, shape):
        raw[dst][...] = _core.from_bfloat16(st_of(name, shape).get_bfloat16(name)).reshape(raw[dst].shape)

    mapped("embed.W_E", "model.embed_tokens.weight", (V, D))
    for l in range(L):
        h, b = f"model.layers.{l}.", f"blocks.{l}."
        vector(b + "ln1.w", h + "input_layernorm.weight", (D,))
        vector(b + "ln2.w", h + "post_attention_layernorm.weight", (D,))
        W = raw[b + "attn.W_qkv"].reshape(D, (H + 2 * kv) * Dh)
        bias = raw[b + "attn.b_qkv"].reshape(-1)
        col = 0
        for proj, n in (("q_proj", H), ("k_proj", kv), ("v_proj", kv)):
            name = h + f"self_attn.{proj}.weight"
            src = _file_bfloat16(st_of(name, (n * Dh, D)), name)
            for i in range(0, n * Dh, 512):          # blocked transpose into the blob
                W[:, col + i:col + min(i + 512, n * Dh)] = src[i:i + 512].T
            bname = h + f"self_attn.{proj}.bias"
            if bname in files:
                vector_src = _core.from_bfloat16(st_of(bname, (n * Dh,)).get_bfloat16(bname))
                bias[col:col + n * Dh] = vector_src
            else:
                bias[col:col + n * Dh] = 0.0
            col += n * Dh
        mapped(b + "attn.W_O", h + "self_attn.o_proj.weight", (D, H * Dh), transposed=True)
        raw[b + "attn.b_O"][...] = 0.0
        mapped(b + "mlp.W_in", h + "mlp.up_proj.weight", (M, D), transposed=True)
        mapped(b + "mlp.W_gate", h + "mlp.gate_proj.weight", (M, D), transposed=True)
        mapped(b + "mlp.W_out", h + "mlp.down_proj.weight", (D, M), transposed=True)
        raw[b + "mlp.b_in"][...] = 0.0
        raw[b + "mlp.b_out"][...] = 0.0
    vector("ln_final.w", "model.norm.weight", (D,))
    if "lm_head.weight" in files:
        core.tied_unembed = False
        mapped("unembed.W_U", "lm_head.weight", (V, D), transposed=True)
    elif cfg.tie_word_embeddings:
        core.tied_unembed = True          # the unembedding reads W_E transposed in place
    else:
        raise KeyError(f"{where}: tie_word_embeddings is false but the checkpoint has no "
                       f"'lm_head.weight'")
    raw["unembed.b_U"][...] = 0.0
    extra = sorted(n for n in set(files) - used if not n.endswith("rotary_emb.inv_freq"))
    if extra:
        raise KeyError(f"{where}: unexpected tensor(s) {extra[:5]} in the {cfg.model_type} checkpoint")
    model._rebind()
    return model


class _FileTensors:
    """A checkpoint's tensors (``io.open_checkpoint``) as a mapping that reads each one
    when asked, as float32: BF16 ones through file reads (:func:`_file_bfloat16`, the
    mapped pages stay untouched), others converted from the mapping."""

    def __init__(self, files):
        self._files = files

    def __contains__(self, name):
        return name in self._files

    def __getitem__(self, name):
        st = self._files[name]
        if st.dtype(name) == "BF16":
            return _core.from_bfloat16(_file_bfloat16(st, name))
        return st.get_float32(name)


def stream_llama_weights_processed(model, files, cfg, where="checkpoint", fold_ln=True,
                                   center_writing_weights=True, center_unembed=True,
                                   fold_value_biases=True):
    """Load a Llama / Mistral / Qwen2 checkpoint into a bfloat16 model with TransformerLens's
    processing, one layer at a time: each layer's tensors are read (file reads) as float32,
    converted as :func:`convert_llama_weights` converts them, processed by
    ``weight_processing.process_weights`` (the same steps and arithmetic as processing the
    whole state dict) and rounded into the model's bfloat16 weights, so the float32 model
    never exists (a 7B model needs its bfloat16 bytes plus one float32 layer). The
    embedding, which RMS processing leaves unchanged, is read in place (mapped). ``model``
    is built with the processed config (``RMSPre`` when ``fold_ln``). Returns ``model``."""
    import copy

    from . import weight_processing
    t = _Checkpoint(_FileTensors(files), where)
    D, H, L, M, V = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, \
        cfg.intermediate_size, cfg.vocab_size
    Dh = cfg.head_dim or D // H
    kv = cfg.num_key_value_heads or H
    steps = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                 fold_value_biases=fold_value_biases)
    raw_cfg = copy.copy(model.cfg)                  # the unprocessed model's config
    raw_cfg.normalization_type = "RMS"

    def one_layer_cfg(n):
        c = copy.copy(raw_cfg)
        c.n_layers = n
        return c

    cfg1, cfg0 = one_layer_cfg(1), one_layer_cfg(0)
    for l in range(L):
        h, b = f"model.layers.{l}.", "blocks.0."
        sd = {b + "ln1.w": t(h + "input_layernorm.weight", (D,)),
              b + "ln2.w": t(h + "post_attention_layernorm.weight", (D,))}
        sd.update(_self_attn_weights(t, h, b, D, H, kv, Dh))
        sd[b + "mlp.W_in"] = _transposed(t(h + "mlp.up_proj.weight", (M, D)))
        sd[b + "mlp.W_gate"] = _transposed(t(h + "mlp.gate_proj.weight", (M, D)))
        sd[b + "mlp.b_in"] = np.zeros(M, np.float32)
        sd[b + "mlp.W_out"] = _transposed(t(h + "mlp.down_proj.weight", (D, M)))
        sd[b + "mlp.b_out"] = np.zeros(D, np.float32)
        sd = weight_processing.process_weights(sd, cfg1, center_unembed=False, **steps)
        model.load_state_dict({f"blocks.{l}." + k[len(b):]: v for k, v in sd.items()}, strict=False)
        del sd
    name = "lm_head.weight" if "lm_head.weight" in files or not cfg.tie_word_embeddings \
        else "model.embed_tokens.weight"
    g = {"unembed.W_U": _transposed(t(name, (V, D))),
         "unembed.b_U": np.zeros(V, np.float32), "ln_final.w": t("model.norm.weight", (D,))}
    g = weight_processing.process_weights(g, cfg0, center_unembed=center_unembed, **steps)
    model.load_state_dict(g, strict=False)
    st = files.get("model.embed_tokens.weight")
    if st is None:
        raise KeyError(f"{where}: the checkpoint has no tensor 'model.embed_tokens.weight'")
    if tuple(st.shape("model.embed_tokens.weight")) != (V, D):
        raise ValueError(f"{where}: tensor 'model.embed_tokens.weight' has shape "
                         f"{tuple(st.shape('model.embed_tokens.weight'))}, the config asks for {(V, D)}")
    model._core.set_param("embed.W_E", st.get_bfloat16("model.embed_tokens.weight", writable=True))
    model._rebind()
    return model


# ---------------------------------------------------------------- Gemma 2
_GEMMA2_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def convert_gemma2_config(cfg):
    """The HookedTransformerConfig fields of a Gemma 2 ``config.json``, as
    TransformerLens's Gemma 2 configs: RMS norms before and after attention and MLP,
    gated gelu_pytorch_tanh MLP, rotary on every head dimension, grouped-query
    attention, attention scale sqrt(query_pre_attn_scalar), score and logit soft-caps,
    sliding-window ("local") layers where ``layer_types`` says ``sliding_attention``."""
    H, L = cfg.num_attention_heads, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads
    if H % kv:
        raise ValueError(f"{cfg.path}: num_key_value_heads={kv} does not divide "
                         f"num_attention_heads={H}")
    if getattr(cfg, "use_bidirectional_attention", None):
        raise NotImplementedError(f"{cfg.path}: field 'use_bidirectional_attention': Gemma's "
                                  "bidirectional variant is not supported")
    types = cfg.layer_types
    if types is None:      # Hugging Face's default: even layers slide
        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(L)]
    if not isinstance(types, list) or len(types) != L or any(t not in _GEMMA2_LAYER_TYPES for t in types):
        raise ValueError(f"{cfg.path}: field 'layer_types' must list 'sliding_attention' or "
                         f"'full_attention' once per layer ({L}), got {types!r}")
    window = cfg.sliding_window
    local = window is not None and "sliding_attention" in types
    caps = {}
    for field, tl_field in (("attn_logit_softcapping", "attn_scores_soft_cap"),
                            ("final_logit_softcapping", "output_logits_soft_cap")):
        c = getattr(cfg, field, None)
        if c is not None and not (isinstance(c, (int, float)) and not isinstance(c, bool) and c >= 0):
            raise ValueError(f"{cfg.path}: field {field!r} must be a number >= 0 or null, got {c!r}")
        caps[tl_field] = float(c) if c else -1.0
    act = _act(cfg, "hidden_activation")
    return dict(n_layers=L, d_model=cfg.hidden_size, n_ctx=cfg.max_position_embeddings,
                d_head=cfg.head_dim, n_heads=H, n_key_value_heads=kv if kv != H else None,
                d_mlp=cfg.intermediate_size, act_fn=act, d_vocab=cfg.vocab_size,
                eps=float(cfg.rms_norm_eps), normalization_type="RMS",
                positional_embedding_type="rotary", rotary_dim=cfg.head_dim,
                rotary_adjacent_pairs=False, **_rope(cfg), use_attn_scale=True,
                attn_scale=float(cfg.query_pre_attn_scalar) ** 0.5,
                use_local_attn=local, window_size=window if local else None,
                attn_types=[_GEMMA2_LAYER_TYPES[t] for t in types] if local else None,
                **caps, gated_mlp=True, final_rms=True, use_normalization_before_and_after=True,
                original_architecture="Gemma2ForCausalLM", init_weights=False)


def convert_gemma2_weights(sd, cfg, where="checkpoint"):
    """HF Gemma 2 weights -> TransformerLens names and shapes, as TransformerLens's
    ``convert_gemma_weights``: the embedding scaled by sqrt(d_model) (Gemma scales the
    embedding output), every RMSNorm weight + 1 (Gemma's norms multiply by 1 + w), the
    unembedding the unscaled lm_head (or tied embedding), zero biases."""
    t = _Checkpoint(sd, where)
    D, H, L, M, V = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, \
        cfg.intermediate_size, cfg.vocab_size
    Dh, kv = cfg.head_dim, cfg.num_key_value_heads
    E = t("model.embed_tokens.weight", (V, D))
    # the scale rounded to float32 first, as TransformerLens multiplies by a float32 tensor
    out = {"embed.W_E": E * np.float32(D ** 0.5)}
    norm = lambda name: t(name, (D,)) + np.float32(1.0)
    for l in range(L):
        h, b = f"model.layers.{l}.", f"blocks.{l}."
        out[b + "ln1.w"] = norm(h + "input_layernorm.weight")
        out[b + "ln1_post.w"] = norm(h + "post_attention_layernorm.weight")
        out.update(_self_attn_weights(t, h, b, D, H, kv, Dh))
        out[b + "ln2.w"] = norm(h + "pre_feedforward_layernorm.weight")
        out[b + "ln2_post.w"] = norm(h + "post_feedforward_layernorm.weight")
        out[b + "mlp.W_in"] = np.ascontiguousarray(t(h + "mlp.up_proj.weight", (M, D)).T)
        out[b + "mlp.W_gate"] = np.ascontiguousarray(t(h + "mlp.gate_proj.weight", (M, D)).T)
        out[b + "mlp.b_in"] = np.zeros(M, np.float32)
        out[b + "mlp.W_out"] = np.ascontiguousarray(t(h + "mlp.down_proj.weight", (D, M)).T)
        out[b + "mlp.b_out"] = np.zeros(D, np.float32)
    out["ln_final.w"] = norm("model.norm.weight")
    U = t("lm_head.weight", (V, D)) if "lm_head.weight" in sd or not cfg.tie_word_embeddings else E
    out["unembed.W_U"] = np.ascontiguousarray(U.T)
    out["unembed.b_U"] = np.zeros(V, np.float32)
    return out


# model_type -> (config class, HF config -> TL config fields, HF -> TL state dict)
_FAMILIES = {
    "gpt2": (GPT2Config, convert_gpt2_config, convert_gpt2_weights),
    "gpt_neox": (GPTNeoXConfig, convert_neox_config, convert_neox_weights),
    "llama": (LlamaConfig, convert_llama_config, convert_llama_weights),
    "mistral": (MistralConfig, convert_mistral_config, convert_llama_weights),
    "qwen2": (Qwen2Config, convert_qwen2_config, convert_llama_weights),
    "gemma2": (Gemma2Config, convert_gemma2_config, convert_gemma2_weights),
}


def resolve_official_name(name):
    """The hub id of a TransformerLens short name ("pythia-70m" -> "EleutherAI/pythia-70m");
    any other name unchanged."""
    return OFFICIAL_MODEL_NAMES.get(str(name), name)


def _family(name_or_path, revision, cache_dir):
    name_or_path = resolve_official_name(name_or_path)
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
    hf_cfg = config_cls.from_pretrained(resolve_official_name(name_or_path), revision=revision,
                                        cache_dir=cache_dir)
    tl_cfg = convert_config(hf_cfg)
    tl_cfg["model_name"] = str(name_or_path)
    tl_cfg.setdefault("default_prepend_bos", True)
    return hf_cfg, tl_cfg


def get_pretrained_state_dict(name_or_path, hf_cfg, revision="main", cache_dir=None):
    """The checkpoint's weights as a TransformerLens state dict of float32 arrays."""
    convert_weights = _FAMILIES[hf_cfg.model_type][2]
    name_or_path = resolve_official_name(name_or_path)
    sd = _io.load_weights(name_or_path, float32=True, revision=revision, cache_dir=cache_dir)
    if hf_cfg.model_type == "gpt2":
        return convert_weights(sd, hf_cfg)
    where = _io.resolve_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    return convert_weights(sd, hf_cfg, where=str(where))


def get_pretrained_tokenizer(name_or_path, revision="main", cache_dir=None):
    """The checkpoint's tokenizer (GPT-2's files, or the ``tokenizer.json`` of the other
    families), or None when it has none."""
    # imported when called: the ``transformers`` package's __init__ loads the Hugging
    # Face models, which are built on HookedTransformer, which loads this module
    from .transformers.tokenization_auto import AutoTokenizer
    from .transformers.tokenization_gpt2 import GPT2Tokenizer
    name_or_path = resolve_official_name(name_or_path)
    try:
        mt, _ = model_type_of(name_or_path, revision, cache_dir, default="gpt2")
    except (OSError, ValueError, NotImplementedError):
        mt = "gpt2"
    try:
        if mt == "gpt2":
            return GPT2Tokenizer.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
        return AutoTokenizer.from_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
