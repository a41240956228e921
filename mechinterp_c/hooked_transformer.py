"""``HookedTransformer``: TransformerLens's HookedTransformer on the C core.

Same names, shapes and semantics as ``transformer_lens.HookedTransformer``, with
NumPy arrays where TransformerLens gives tensors. Parameters are writable views
of the C model's one parameter blob (``model.blocks[0].attn.W_Q[...] = x``
changes what the C core computes); activations are zero-copy views of the
per-call arena, valid after later calls and after the model is deleted.

bfloat16 weights: ``HookedTransformer(dict(cfg, dtype="bfloat16"))`` or
``from_pretrained(name, dtype="bfloat16")`` stores the matrices (``W_Q``, ``W_K``,
``W_V``, ``W_O``, ``W_in``, ``W_gate``, ``W_out``, ``W_U``) and the token embedding
``W_E`` as bfloat16, half the memory; every other weight holds bfloat16-rounded values in
float32. Activations, hooks, caches and sums stay float32; only a product's
activation operand is rounded to bfloat16 (the CPU's AVX512-BF16 products, or a
slower float32 fallback with a warning). NumPy has no bfloat16, so what the model
hands out for a bfloat16 weight (``state_dict()``, ``model.W_Q``,
``model.blocks[0].attn.W_Q``) is a read-only float32 copy; :meth:`bf16_weight` gives
the stored bit patterns as a writable uint16 view, and ``load_state_dict`` rounds what
it is given. Gradients with respect to activations (``incl_bwd``, backward hooks,
attribution patching) work, the gradient operand of each product with a weight rounded to
bfloat16 as the activations are; training a bfloat16 model and its parameter gradients
are refused (NotImplementedError).
"""
import warnings

import numpy as np

from . import _core, metrics, utils
from . import io as _io
from . import loading_from_pretrained as loading
from .activation_cache import ActivationCache
from .array_type import called_by_user, to_user, to_user_param, torch_mode, user_facing
from .circuits import CircuitsMixin
from .config import HookedTransformerConfig
from .devices import CPUFloat32, check_cpu_device, check_dtype, is_bfloat16, warn_bf16_path
from .generation import GenerationMixin
from .hook_points import HookedRootMixin, HookPoint, names_filter_fn  # noqa: F401 (names_filter_fn: re-export)
from .hooked_text import TextMixin, check_padding_side
from .training import TrainingMixin, _Weight
from .utils import to_numpy

_NORM_CODE = {None: 0, "LN": 1, "LNPre": 2, "RMS": 3, "RMSPre": 4}
_ACT_CODE = {"relu": 0, "gelu": 1, "gelu_new": 2, "gelu_tanh": 2, "gelu_pytorch_tanh": 2,
             "gelu_fast": 2, "silu": 3, "swish": 3, "solu_ln": 100}
_CACHE, _CALLBACK, _TRANSIENT = _core.HOOK_CACHE, _core.HOOK_CALLBACK, _core.HOOK_TRANSIENT
# model.W_E etc.: the model-level weights' names, and the per-layer ones stacked over layers
_MODEL_WEIGHTS = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U", "b_U": "unembed.b_U"}
_STACKED_WEIGHTS = {f"{w}_{c}": f"attn.{w}_{c}" for w in "Wb" for c in "QKVO"}
_STACKED_WEIGHTS.update({w: f"mlp.{w}" for w in ("W_in", "W_gate", "W_out", "b_in", "b_out")})
# TransformerLens buffers that are in its state_dict but are not parameters.
_TL_BUFFER_SUFFIXES = (".attn.mask", ".attn.IGNORE", ".attn.rotary_sin", ".attn.rotary_cos")


class _Module:
    """A node of the module tree (``model.blocks[0].attn``): parameters and hook points.

    Its parameters (``W_Q``, ``b_O``, ``w``, ...) are kept in ``_p`` and read through
    attribute access, so that after ``set_array_type("torch")`` they come out as the
    weights' ``torch.nn.Parameter`` views (:func:`array_type.to_user_param`)."""

    def __init__(self, name):
        self._name = name
        self._p = {}
        self._lazy = {}      # attribute -> (model, parameter name): bfloat16 weights

    def __getattr__(self, attr):
        p = self.__dict__.get("_p")
        if p is not None and attr in p:
            return to_user_param(p[attr])
        # a bfloat16 weight: a float32 copy made when asked for, not kept
        lazy = self.__dict__.get("_lazy") or {}
        if attr in lazy:
            model, name = lazy[attr]
            return to_user_param(model._weight(name))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    def __repr__(self):
        return f"<{type(self).__name__} {self._name or 'model'}>"


class _Norm(_Module):
    """A norm module (ln1, ln2, ln_final, mlp.ln): ``.w``/``.b`` views and hook points;
    calling it applies the norm to an array in NumPy (float64 math, float32 out), as
    calling TransformerLens's module does (used by ActivationCache's apply_ln)."""

    def __init__(self, name, norm_type, eps):
        super().__init__(name)
        self._norm_type = norm_type
        self._eps = eps

    def __call__(self, x):
        """The norm of x [..., d] with freshly computed statistics."""
        x = np.asarray(to_numpy(x), dtype=np.float64)
        if self._norm_type is None:
            return x.astype(np.float32)
        if self._norm_type in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdims=True)
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + self._eps)
        if self._p.get("w") is not None:
            y = y * self._p["w"]
        if self._p.get("b") is not None:
            y = y + self._p["b"]
        return y.astype(np.float32)


class _GroupedQueryAttention(_Module):
    """``blocks[i].attn`` with grouped-query attention: ``_W_K``/``_W_V``/``_b_K``/``_b_V``
    are the weight views ([n_key_value_heads, ...]); ``W_K``/``W_V``/``b_K``/``b_V``
    repeat each key/value head for its query heads (copies, as TransformerLens)."""

    def _repeated(self, name):
        w = self._p[name]
        return to_user(np.repeat(w, self._p["W_Q"].shape[0] // w.shape[0], axis=0))

    W_K = property(lambda self: self._repeated("_W_K"), doc="[n_heads, d_model, d_head] (copy).")
    W_V = property(lambda self: self._repeated("_W_V"), doc="[n_heads, d_model, d_head] (copy).")
    b_K = property(lambda self: self._repeated("_b_K"), doc="[n_heads, d_head] (copy).")
    b_V = property(lambda self: self._repeated("_b_V"), doc="[n_heads, d_head] (copy).")


class _Block(_Module):
    """``model.blocks[i]``: ln1, attn, ln2, mlp and the block's residual hook points."""


def _param_view(params, name):
    return params[name]


def _bf16_round(x):
    """float32 values rounded to the nearest bfloat16 (as float32)."""
    return _core.from_bfloat16(_core.to_bfloat16(np.asarray(x, dtype=np.float32)))


# TransformerLens's position schemes the C core does not run, by the feature they are
_POSITION_FEATURES = {"alibi": "ALiBi position biases", "shortformer": "Shortformer position "
                      "embeddings", "relative_positional_bias": "relative position buckets (T5)"}
# TransformerLens architectures whose models take images or audio besides tokens
_MULTIMODAL_ARCHITECTURES = {"LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                             "LlavaOnevisionForConditionalGeneration",
                             "Gemma3ForConditionalGeneration", "Qwen2VLForConditionalGeneration",
                             "HubertModel", "HubertForCTC"}


def _check_unsupported(cfg):
    check_dtype(cfg.dtype, "HookedTransformerConfig", allow_bf16=True)
    check_cpu_device(cfg.device, "HookedTransformerConfig")
    bad = []
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        feature = _POSITION_FEATURES.get(cfg.positional_embedding_type, "an unknown position scheme")
        bad.append(f"positional_embedding_type={cfg.positional_embedding_type!r} ({feature})")
    if cfg.original_architecture in _MULTIMODAL_ARCHITECTURES:
        bad.append(f"original_architecture={cfg.original_architecture!r} (multimodal inputs)")
    for f in ("scale_attn_by_inverse_layer_idx", "post_embedding_ln",
              "use_hook_tokens"):
        if getattr(cfg, f):
            bad.append(f"{f}=True")
    if cfg.final_rms and cfg.normalization_type in ("LN", "LNPre"):
        # with RMS blocks (or none) final_rms changes nothing
        bad.append(f"final_rms=True with normalization_type={cfg.normalization_type!r}")
    if cfg.parallel_attn_mlp and cfg.attn_only:
        bad.append("parallel_attn_mlp=True with attn_only=True")
    kv = cfg.n_key_value_heads
    if kv is not None and kv != cfg.n_heads:
        if cfg.n_heads % kv:
            bad.append(f"n_key_value_heads={kv} that does not divide n_heads={cfg.n_heads}")
        if cfg.use_split_qkv_input or cfg.use_attn_in:
            bad.append("grouped-query attention with use_split_qkv_input or use_attn_in")
    if cfg.positional_embedding_type == "rotary" and (cfg.rotary_dim % 2 or cfg.rotary_dim > cfg.d_head):
        bad.append(f"rotary_dim={cfg.rotary_dim} (must be even and at most d_head={cfg.d_head})")
    if cfg.use_normalization_before_and_after and cfg.normalization_type in ("LN", "LNPre"):
        # TransformerLens builds its post norms only for RMS (and the identity for None)
        bad.append(f"use_normalization_before_and_after with normalization_type="
                   f"{cfg.normalization_type!r} (post norms are RMSNorm)")
    if cfg.use_local_attn:
        types = cfg.attn_types
        if not isinstance(cfg.window_size, int) or types is None or len(types) != cfg.n_layers \
                or any(t not in ("local", "global") for t in types):
            raise ValueError("use_local_attn needs an integer window_size and attn_types with one "
                             f"'local' or 'global' per layer (n_layers={cfg.n_layers}), got "
                             f"window_size={cfg.window_size!r}, attn_types={types!r}")
    if not cfg.attn_only and cfg.act_fn not in _ACT_CODE:
        bad.append(f"act_fn={cfg.act_fn!r}")
    if cfg.d_vocab <= 0:
        bad.append(f"d_vocab={cfg.d_vocab} (no tokenizer: give d_vocab)")
    if bad:
        raise NotImplementedError("HookedTransformer (C core) does not support: " + ", ".join(bad))


def _gemma2_spec(cfg):
    """The C spec's Gemma 2 fields from TransformerLens's config: post norms (RMS ones,
    TransformerLens's identity for normalization_type None), soft-caps (> 0: on, as
    TransformerLens's ``softcap_enabled``), the sliding window and its local layers."""
    cap = lambda c: float(c) if c is not None and c > 0 else 0.0
    local = cfg.use_local_attn
    return dict(
        post_norms=bool(cfg.use_normalization_before_and_after)
        and (cfg.normalization_type or "").startswith("RMS"),
        attn_softcap=cap(cfg.attn_scores_soft_cap), logit_softcap=cap(cfg.output_logits_soft_cap),
        window=cfg.window_size if local else 0,
        local_layers=[l for l, t in enumerate(cfg.attn_types) if t == "local"] if local else None)


class HookedTransformer(HookedRootMixin, CircuitsMixin, TextMixin, TrainingMixin, CPUFloat32,
                        GenerationMixin):
    """A transformer with TransformerLens hook points, running on the C core.

    ``HookedTransformer(cfg)`` with a ``HookedTransformerConfig`` (or a dict of its
    fields) builds a seeded, GPT-2-initialised model (weights N(0, initializer_range),
    biases 0, norm weights 1). Load TransformerLens weights with
    ``load_state_dict({k: v.numpy() for k, v in tl_model.state_dict().items()})``.
    With a ``tokenizer`` the model takes text (see :mod:`mechinterp_c.hooked_text`);
    ``default_padding_side`` ("left" / "right") becomes the tokenizer's padding side.
    """

    # C spec flags beyond the config (REVE's subclass: no positional table, no head)
    _CORE_SPEC = {"pos_embed": True}

    def __init__(self, cfg, tokenizer=None, move_to_device=True, default_padding_side=None):
        self.cfg = HookedTransformerConfig.unwrap(cfg)
        self.tokenizer = None
        check_padding_side(default_padding_side, "default_padding_side")
        if tokenizer is not None:
            self.set_tokenizer(tokenizer, default_padding_side=default_padding_side)
        elif default_padding_side is not None:
            # TransformerLens logs the same warning and also goes on without a tokenizer
            warnings.warn("default_padding_side is given but ignored because the model has no "
                          "tokenizer (pass tokenizer=... or call set_tokenizer(tok, "
                          "default_padding_side=...))", stacklevel=2)
        _check_unsupported(self.cfg)
        if self._bf16:
            warn_bf16_path("HookedTransformer(dtype='bfloat16')")
        self._build()
        if self.cfg.init_weights:
            self.init_weights()

    # ---------------------------------------------------------- pretrained
    @classmethod
    def from_pretrained(cls, model_name, fold_ln=True, center_writing_weights=True,
                        center_unembed=True, fold_value_biases=True, revision="main",
                        cache_dir=None, tokenizer=None, default_padding_side=None, **kwargs):
        """A Hugging Face checkpoint (local directory or Hugging Face cache; GPT-2 today)
        converted to TransformerLens weights (``loading_from_pretrained``) and processed
        as TransformerLens does by default (fold_ln, center_writing_weights,
        center_unembed, fold_value_biases). The checkpoint's tokenizer is attached when
        it has one and ``tokenizer`` is not given. ``dtype`` (or ``torch_dtype``)
        "bfloat16" stores the weights as bfloat16 (converted once, after processing; see
        the module docstring). A bfloat16 Llama / Mistral / Qwen2 checkpoint never has a
        float32 copy of the whole model: processed, it is read and processed one layer at
        a time (``loading_from_pretrained.stream_llama_weights_processed``: the bfloat16
        weights plus one float32 layer in memory); without processing
        (``from_pretrained_no_processing``) it is read in place (mmap: embedding, W_O,
        the MLP and the unembedding; q/k/v converted once; see
        ``loading_from_pretrained.map_llama_weights``), the way to open a model larger
        than the free memory minus its size. Another dtype than float32 or bfloat16, a device other
        than the CPU, or any other keyword is refused."""
        dtype = kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        check_dtype(dtype, "from_pretrained", allow_bf16=True)
        check_dtype(torch_dtype, "from_pretrained", allow_bf16=True)
        check_cpu_device(kwargs.pop("device", None), "from_pretrained")
        kwargs.pop("move_to_device", None)      # nothing to move: the model is on the CPU
        if kwargs:
            raise NotImplementedError(f"from_pretrained: unsupported argument(s) {sorted(kwargs)}")
        hf_cfg, tl_cfg = loading.get_pretrained_model_config(model_name, revision, cache_dir)
        if tokenizer is None:
            tokenizer = loading.get_pretrained_tokenizer(model_name, revision, cache_dir)
        if is_bfloat16(dtype) or is_bfloat16(torch_dtype):
            tl_cfg["dtype"] = "bfloat16"
        # a bfloat16 Llama-family model is loaded from the file without a float32 copy of
        # the model: read in place when unprocessed, else processed layer by layer
        stream = tl_cfg.get("dtype") == "bfloat16" and hf_cfg.model_type in ("llama", "mistral", "qwen2")
        processed = fold_ln or center_writing_weights or center_unembed or fold_value_biases
        if stream and fold_ln and tl_cfg.get("normalization_type") == "RMS":
            tl_cfg["normalization_type"] = "RMSPre"
        model = cls(tl_cfg, tokenizer=tokenizer, default_padding_side=default_padding_side)
        if center_unembed and (model.cfg.output_logits_soft_cap or 0) > 0:
            # as TransformerLens: a soft-capped logit is not invariant to a constant shift
            warnings.warn("center_unembed=True is not possible with a logit soft-cap "
                          f"(output_logits_soft_cap={model.cfg.output_logits_soft_cap}); "
                          "setting center_unembed=False", stacklevel=2)
            center_unembed = False
        if stream:
            files = _io.open_checkpoint(loading.resolve_official_name(model_name), revision=revision,
                                        cache_dir=cache_dir)
            where = str(_io.resolve_pretrained(loading.resolve_official_name(model_name),
                                               revision=revision, cache_dir=cache_dir))
            if not processed:       # the checkpoint's own weights: read in place where the layout allows
                return loading.map_llama_weights(model, files, hf_cfg, where)
            return loading.stream_llama_weights_processed(
                model, files, hf_cfg, where, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                center_unembed=center_unembed, fold_value_biases=fold_value_biases)
        model.load_and_process_state_dict(
            loading.get_pretrained_state_dict(model_name, hf_cfg, revision, cache_dir),
            fold_ln=fold_ln, center_writing_weights=center_writing_weights,
            center_unembed=center_unembed, fold_value_biases=fold_value_biases)
        return model

    @classmethod
    def from_pretrained_no_processing(cls, model_name, **kwargs):
        """``from_pretrained`` with every weight processing step off."""
        return cls.from_pretrained(model_name, fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False, **kwargs)

    # ------------------------------------------------------------ structure
    def _build(self, params_from=None):
        """(Re)create the C model and the module tree from ``self.cfg``. With ``params_from``
        (the previous C model) the new one reads that model's weights in place when the
        parameter layout is unchanged, and the existing weight views (``self._params``)
        are kept; returns whether it does. Existing HookPoints are kept (with their
        hooks, so handles taken earlier still remove them); only their ids change."""
        cfg = self.cfg
        spec = dict(self._CORE_SPEC)
        if cfg.positional_embedding_type == "rotary":
            spec.update(pos_embed=False, rotary=True, rotary_dim=cfg.rotary_dim,
                        rotary_adjacent_pairs=cfg.rotary_adjacent_pairs,
                        rotary_base=float(cfg.rotary_base),
                        use_NTK_by_parts_rope=cfg.use_NTK_by_parts_rope,
                        NTK_by_parts_factor=float(cfg.NTK_by_parts_factor),
                        NTK_by_parts_low_freq_factor=float(cfg.NTK_by_parts_low_freq_factor),
                        NTK_by_parts_high_freq_factor=float(cfg.NTK_by_parts_high_freq_factor),
                        NTK_original_ctx_len=float(cfg.NTK_original_ctx_len))
        core = _core.Model(
            n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head,
            d_mlp=cfg.d_mlp if not cfg.attn_only else 0, d_vocab=cfg.d_vocab,
            d_vocab_out=cfg.d_vocab_out, n_ctx=cfg.n_ctx, norm=_NORM_CODE[cfg.normalization_type],
            eps=cfg.eps, act=_ACT_CODE.get(cfg.act_fn, 0) if not cfg.attn_only else 0,
            gated_mlp=cfg.gated_mlp, attn_only=cfg.attn_only,
            causal=cfg.attention_dir == "causal", use_attn_result=cfg.use_attn_result,
            use_hook_mlp_in=cfg.use_hook_mlp_in, **spec,
            attn_scale=cfg.attn_scale if cfg.use_attn_scale else 1.0,
            use_split_qkv_input=cfg.use_split_qkv_input, use_attn_in=cfg.use_attn_in,
            n_key_value_heads=cfg.n_key_value_heads or 0,
            parallel_attn_mlp=cfg.parallel_attn_mlp and not cfg.attn_only,
            **_gemma2_spec(cfg), bf16=self._bf16)
        shared = params_from is not None and core.share_params(params_from)
        self._core = core
        self._raw = core.params()
        self._n_points = self._core.n_points
        self._points = [None] * self._n_points
        self._point_layer = {}
        old = self.__dict__.get("hook_dict", {})
        # hook_dict: every HookPoint TransformerLens's module tree has, in its module
        # order (the C core's hook point table); points this config never fires
        # (hook_result without use_attn_result, hook_attn_in, ...) have no point id and
        # accept hooks that never run, as in TransformerLens.
        self.hook_dict = {}
        for name, pid, layer, fires in self._core.hook_points():
            hp = old.get(name) or HookPoint(name, None)
            hp.point_id = pid if fires else None
            self.hook_dict[name] = hp
            if fires:
                self._points[pid] = hp
                self._point_layer[pid] = layer
        # point ids are in forward (firing) order
        self._fire_order = [hp.name for hp in self._points if hp is not None]
        if not shared:
            self._params = self._tl_params()
        self._make_modules()
        return shared

    def _rebind(self):
        """Re-read the parameter views after the C model's weights moved (set_param:
        weights read in place from a checkpoint, or materialized)."""
        self._raw = self._core.params()
        self._params = self._tl_params()
        if "embed" in self.__dict__:
            HookedTransformer._make_modules(self)

    @property
    def _bf16(self):
        """Whether the weights are stored as bfloat16 (``cfg.dtype``)."""
        return is_bfloat16(self.cfg.dtype)

    def _weights_bf16(self):
        return self._bf16

    def _weight(self, name):
        """Parameter ``name`` as float32: the writable view itself, or (a bfloat16
        weight) a read-only float32 copy."""
        v = self._params[name]
        if v.dtype != np.uint16:
            return v
        out = _core.from_bfloat16(v)
        out.flags.writeable = False
        return out

    def bf16_weight(self, name):
        """The stored bfloat16 bit patterns of weight ``name`` (TransformerLens name) as a
        writable uint16 view (``mechinterp_c.ops.from_bfloat16`` makes float32 of it,
        ``ops.to_bfloat16`` the patterns of float32 values). KeyError for a name that is
        not a weight, ValueError for one stored as float32."""
        v = self._params[name]
        if v.dtype != np.uint16:
            raise ValueError(f"bf16_weight: {name} is stored as float32 (only the matrices and "
                             f"W_E of a dtype='bfloat16' model are bfloat16)")
        return v.view(np.ndarray)

    def _tl_params(self):
        """TransformerLens-named, -shaped writable views of the blob."""
        params = {k: v.view(_Weight) for k, v in self._tl_views(self._raw).items()}
        for k, v in params.items():
            v._param_name = k
        return params

    def _tl_views(self, raw):
        """TransformerLens names and shapes over ``raw`` (internal name -> array in the
        internal layout: the weights, or a gradient buffer laid out as the blob)."""
        cfg, out = self.cfg, {}
        out["embed.W_E"] = raw["embed.W_E"]
        if "pos_embed.W_pos" in raw:
            out["pos_embed.W_pos"] = raw["pos_embed.W_pos"]
        for l in range(cfg.n_layers):
            p = f"blocks.{l}."
            for ln in ("ln1", "ln2"):
                for w in ("w", "b"):
                    if p + f"{ln}.{w}" in raw:
                        out[p + f"{ln}.{w}"] = raw[p + f"{ln}.{w}"]
            for ln in ("ln1_post", "ln2_post"):
                if p + f"{ln}.w" in raw:
                    out[p + f"{ln}.w"] = raw[p + f"{ln}.w"]
            qkv, bqkv = raw[p + "attn.W_qkv"], raw[p + "attn.b_qkv"]
            if qkv.ndim == 4:
                for i, c in enumerate("QKV"):
                    out[p + f"attn.W_{c}"] = qkv[:, i].transpose(1, 0, 2)   # [H, D, Dh]
                    out[p + f"attn.b_{c}"] = bqkv[i]                        # [H, Dh]
            else:
                # grouped-query attention: [D, H + 2 Hkv, Dh], TransformerLens's
                # unrepeated _W_K/_W_V [Hkv, D, Dh] as in its state_dict
                H, kv = cfg.n_heads, cfg.n_key_value_heads
                for c, a, b in (("W_Q", 0, H), ("_W_K", H, H + kv), ("_W_V", H + kv, H + 2 * kv)):
                    out[p + f"attn.{c}"] = qkv[:, a:b].transpose(1, 0, 2)
                    out[p + f"attn.{c.replace('W', 'b')}"] = bqkv[a:b]
            out[p + "attn.W_O"] = raw[p + "attn.W_O"]
            out[p + "attn.b_O"] = raw[p + "attn.b_O"]
            for w in ("W_in", "b_in", "W_gate", "ln.w", "ln.b", "W_out", "b_out"):
                if p + f"mlp.{w}" in raw:
                    out[p + f"mlp.{w}"] = raw[p + f"mlp.{w}"]
        for w in ("ln_final.w", "ln_final.b", "unembed.W_U", "unembed.b_U"):
            if w in raw:
                out[w] = raw[w]
        return out

    def _make_modules(self):
        cfg, P = self.cfg, self._params
        self.mod_dict = {}

        def module(name, cls=_Module):
            m = _Norm(name, cfg.normalization_type, cfg.eps) if cls is _Norm else cls(name)
            if name:
                self.mod_dict[name] = m
            return m

        def attach(mod, prefix):
            for key, arr in P.items():
                if key.startswith(prefix) and "." not in key[len(prefix):]:
                    if arr.dtype == np.uint16:     # float32 copies on access (_Module)
                        mod._lazy[key[len(prefix):]] = (self, key)
                    else:
                        mod._p[key[len(prefix):]] = arr
            for hname, hp in self.hook_dict.items():
                if hname.startswith(prefix) and "." not in hname[len(prefix):]:
                    setattr(mod, hname[len(prefix):], hp)

        self.embed = module("embed")
        attach(self.embed, "embed.")
        self.pos_embed = module("pos_embed")
        attach(self.pos_embed, "pos_embed.")
        attach(self, "")
        self.blocks = []
        for l in range(cfg.n_layers):
            b = module(f"blocks.{l}", _Block)
            attach(b, f"blocks.{l}.")
            for sub in ("ln1", "attn", "ln2", "mlp"):
                gqa = sub == "attn" and (cfg.n_key_value_heads or cfg.n_heads) != cfg.n_heads
                m = module(f"blocks.{l}.{sub}", _Norm if sub.startswith("ln") else
                           _GroupedQueryAttention if gqa else _Module)
                attach(m, f"blocks.{l}.{sub}.")
                setattr(b, sub, m)
            for sub in ("ln1_post", "ln2_post"):
                if f"blocks.{l}.{sub}.w" in P:      # post norms: RMSNorm with weights
                    m = _Norm(f"blocks.{l}.{sub}", "RMS", cfg.eps)
                    self.mod_dict[m._name] = m
                    attach(m, f"blocks.{l}.{sub}.")
                    setattr(b, sub, m)
            if cfg.act_fn == "solu_ln" and not cfg.attn_only:
                b.mlp.ln = _Norm(f"blocks.{l}.mlp.ln", "LN" if cfg.normalization_type == "LN" else "LNPre",
                                 cfg.eps)
                self.mod_dict[b.mlp.ln._name] = b.mlp.ln
                attach(b.mlp.ln, f"blocks.{l}.mlp.ln.")
            self.blocks.append(b)
        self.ln_final = module("ln_final", _Norm)
        attach(self.ln_final, "ln_final.")
        self.unembed = module("unembed")
        attach(self.unembed, "unembed.")
        self.mod_dict.update(self.hook_dict)

    def init_weights(self):
        """GPT-2 init as TransformerLens's ``_init_weights_gpt2``: every ``W_*`` ~ N(0,
        initializer_range), biases 0, norm weights 1; seeded by ``cfg.seed``."""
        rng = np.random.default_rng(self.cfg.seed)
        std = self.cfg.initializer_range
        for name, arr in self._raw.items():
            leaf = name.rsplit(".", 1)[1]
            if leaf.startswith("W_"):
                w = rng.normal(0.0, std, size=arr.shape).astype(np.float32)
                arr[...] = _core.to_bfloat16(w) if arr.dtype == np.uint16 else (
                    _bf16_round(w) if self._bf16 else w)
            elif leaf == "w":
                arr[...] = 1.0
            else:
                arr[...] = 0.0

    # --------------------------------------------------------------- state
    def state_dict(self):
        """TransformerLens parameter names -> writable views of the model's weights
        (``torch.nn.Parameter`` views after ``set_array_type("torch")``; for a bfloat16
        weight a read-only float32 copy, see :meth:`bf16_weight`)."""
        if torch_mode():
            return {k: to_user_param(self._weight(k)) for k in self._params}
        return {k: self._weight(k) for k in self._params}

    def load_state_dict(self, state_dict, strict=True):
        """Copy TransformerLens-named weights in (shapes checked, errors name the key).

        Torch tensors are accepted; TransformerLens buffers (``attn.mask``, ``attn.IGNORE``)
        are skipped. With ``strict``, missing and unknown keys raise KeyError. A
        bfloat16 model rounds every weight to bfloat16 (round to nearest even).
        """
        unknown = [k for k in state_dict if k not in self._params and not k.endswith(_TL_BUFFER_SUFFIXES)]
        missing = [k for k in self._params if k not in state_dict]
        if strict and (unknown or missing):
            raise KeyError(f"load_state_dict: unknown keys {unknown[:5]}, missing keys {missing[:5]}"
                           + (f" (normalization_type={self.cfg.normalization_type!r})"))
        for k, v in state_dict.items():
            if k not in self._params:
                continue
            arr = np.asarray(to_numpy(v))
            dst = self._params[k]
            if arr.shape != dst.shape:
                raise ValueError(f"load_state_dict: {k} has shape {arr.shape}, the model expects "
                                 f"{dst.shape}")
            if arr.dtype.kind != "f":
                raise TypeError(f"load_state_dict: {k} has dtype {arr.dtype}, expected floats")
            if dst.dtype == np.uint16:
                dst[...] = _core.to_bfloat16(arr)
            else:
                dst[...] = _bf16_round(arr) if self._bf16 else arr

    def load_and_process_state_dict(self, state_dict, fold_ln=True, center_writing_weights=True,
                                    center_unembed=True, fold_value_biases=True,
                                    refactor_factored_attn_matrices=False):
        """Process TransformerLens weights (fold LayerNorm, centre writing weights and the
        unembedding, fold value biases, optionally refactor the attention circuits) with
        ``weight_processing.process_weights`` and load them; with fold_ln, LN becomes LNPre
        and RMS becomes RMSPre, as TransformerLens."""
        from . import weight_processing
        sd = {k: np.asarray(to_numpy(v), dtype=np.float32) for k, v in state_dict.items()
              if not k.endswith(_TL_BUFFER_SUFFIXES)}
        sd = weight_processing.process_weights(sd, self.cfg, fold_ln=fold_ln,
                                               center_writing_weights=center_writing_weights,
                                               center_unembed=center_unembed,
                                               fold_value_biases=fold_value_biases,
                                               refactor_factored_attn_matrices=refactor_factored_attn_matrices)
        if fold_ln and self.cfg.normalization_type in ("LN", "RMS"):
            self.cfg.normalization_type = "LNPre" if self.cfg.normalization_type == "LN" else "RMSPre"
            self._rebuild()
        self.load_state_dict(sd, strict=False)

    def _rebuild(self):
        """Recreate the C model after a cfg change (also from a hook, mid-pass: that pass
        finishes on the old C model). Hooks stay (same HookPoints, same handles). The
        weights stay: with an unchanged parameter layout (every ``set_use_*`` switch) the
        new C model reads the same memory, so weight views taken before (``W =
        model.W_E``) still read and edit the model. When the layout changes (LayerNorm
        folded into LNPre) the weights are copied over with their ``requires_grad`` and
        the old views become read-only, so a stale edit fails loudly."""
        old_core, old_params = self._core, self._params
        if self._build(params_from=old_core):
            return
        for k, v in old_params.items():       # the stored values, bits as they are
            if k in self._params:
                self._params[k][...] = v
        for k, v in old_params.items():
            if k in self._params:
                self._params[k].requires_grad = v.requires_grad
            v.flags.writeable = False

    def set_use_attn_result(self, use_attn_result):
        """Turn ``attn.hook_result`` (per-head outputs [batch, pos, head, d_model]) on or off."""
        self.cfg.use_attn_result = bool(use_attn_result)
        self._rebuild()

    def set_use_hook_mlp_in(self, use_hook_mlp_in):
        """Turn ``hook_mlp_in`` (a copy of resid_mid that feeds ln2) on or off."""
        if self.cfg.attn_only and use_hook_mlp_in:
            raise ValueError("can't use hook_mlp_in with an attn_only model")
        self.cfg.use_hook_mlp_in = bool(use_hook_mlp_in)
        self._rebuild()

    def set_use_split_qkv_input(self, use_split_qkv_input):
        """Turn ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` (the residual stream
        repeated per head, [batch, pos, head, d_model], one copy each for queries, keys and
        values) on or off. With it ln1 runs three times per block, on the q, k and v inputs,
        and its hooks fire each time, as in TransformerLens. No training with it on."""
        self.cfg.use_split_qkv_input = bool(use_split_qkv_input)
        self._rebuild()

    def set_use_attn_in(self, use_attn_in):
        """Turn ``hook_attn_in`` (the residual stream repeated per head, [batch, pos, head,
        d_model], feeding queries, keys and values) on or off. No training with it on."""
        if use_attn_in and self.cfg.n_key_value_heads is not None:
            raise ValueError("use_attn_in is not supported with grouped-query attention")
        self.cfg.use_attn_in = bool(use_attn_in)
        self._rebuild()

    def eval(self):
        """No-op (no dropout); returns self."""
        return self

    def train(self, mode=True):
        """No-op (no dropout); returns self."""
        return self

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` of every parameter (torch's ``Module.requires_grad_``)."""
        for w in self._params.values():
            w.requires_grad = requires_grad
        return self

    # stacked parameters (copies, as TransformerLens's torch.stack)
    def _stack(self, key):
        return np.stack([self._layer_param(l, key) for l in range(self.cfg.n_layers)])

    def _layer_param(self, l, key):
        """Layer l's ``key`` ("attn.W_K"): the view, or with grouped-query attention
        the key/value heads repeated per query head (a copy, as TransformerLens's
        W_K property)."""
        name = f"blocks.{l}.{key}"
        if name in self._params:
            return np.asarray(self._weight(name))
        mod, leaf = name.rsplit(".", 1)
        g = self.cfg.n_heads // self.cfg.n_key_value_heads
        return np.repeat(np.asarray(self._weight(f"{mod}._{leaf}")), g, axis=0)

    def _np_weight(self, attr):
        """The weight ``attr`` (``W_E``, ``W_Q``, ...) as NumPy whatever the array type:
        a view for the model-level ones, a stacked copy for the per-layer ones."""
        if attr in _MODEL_WEIGHTS:
            return self._weight(_MODEL_WEIGHTS[attr])
        return self._stack(_STACKED_WEIGHTS[attr])

    W_E = property(lambda self: to_user_param(self._weight("embed.W_E")), doc="Token embedding "
                   "[d_vocab, d_model] (view; a read-only float32 copy in a bfloat16 model).")
    W_pos = property(lambda self: to_user_param(self._params["pos_embed.W_pos"]), doc="Positional embedding [n_ctx, d_model] (view).")
    W_U = property(lambda self: to_user_param(self._weight("unembed.W_U")), doc="Unembedding "
                   "[d_model, d_vocab_out] (view; a read-only float32 copy in a bfloat16 model).")
    b_U = property(lambda self: to_user_param(self._params["unembed.b_U"]), doc="Unembedding bias [d_vocab_out] (view).")
    W_Q = property(lambda self: to_user(self._stack("attn.W_Q")), doc="[n_layers, n_heads, d_model, d_head] (copy).")
    W_K = property(lambda self: to_user(self._stack("attn.W_K")), doc="[n_layers, n_heads, d_model, d_head] (copy).")
    W_V = property(lambda self: to_user(self._stack("attn.W_V")), doc="[n_layers, n_heads, d_model, d_head] (copy).")
    W_O = property(lambda self: to_user(self._stack("attn.W_O")), doc="[n_layers, n_heads, d_head, d_model] (copy).")
    b_Q = property(lambda self: to_user(self._stack("attn.b_Q")), doc="[n_layers, n_heads, d_head] (copy).")
    b_K = property(lambda self: to_user(self._stack("attn.b_K")), doc="[n_layers, n_heads, d_head] (copy).")
    b_V = property(lambda self: to_user(self._stack("attn.b_V")), doc="[n_layers, n_heads, d_head] (copy).")
    b_O = property(lambda self: to_user(self._stack("attn.b_O")), doc="[n_layers, d_model] (copy).")
    W_in = property(lambda self: to_user(self._stack("mlp.W_in")), doc="[n_layers, d_model, d_mlp] (copy).")
    W_gate = property(lambda self: to_user(self._stack("mlp.W_gate")), doc="[n_layers, d_model, d_mlp] (copy).")
    W_out = property(lambda self: to_user(self._stack("mlp.W_out")), doc="[n_layers, d_mlp, d_model] (copy).")
    b_in = property(lambda self: to_user(self._stack("mlp.b_in")), doc="[n_layers, d_mlp] (copy).")
    b_out = property(lambda self: to_user(self._stack("mlp.b_out")), doc="[n_layers, d_model] (copy).")

    # ---------------------------------------------------------------- hooks
    def run_with_hooks(self, *model_args, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True,
                       clear_contexts=False, metric=None, **model_kwargs):
        """Forward pass with temporary hooks ``fwd_hooks=[(name_or_filter, fn)]``.

        With ``metric`` (see ``mechinterp_c.metrics``: ``"loss"``, ``metrics.logit_diff``,
        ``metrics.logprob`` or a function ``logits -> (value, dvalue_dlogits)``) the pass
        continues backward from the metric's gradient, running the backward hooks
        ``bwd_hooks=[(name_or_filter, fn)]`` (and any added with ``dir="bwd"``) on the
        gradient at each point, and returns the metric's value (``return_type="logits"``:
        the logits; ``"both"``: ``(logits, value)``)."""
        if metric is None and (bwd_hooks or self._has_bwd_hooks()):
            raise ValueError("backward hooks run in a backward pass: pass metric=... ('loss', "
                             "metrics.logit_diff(...), metrics.logprob(...) or a function logits -> "
                             "(value, dvalue_dlogits)); there is no autograd on NumPy outputs")
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            if metric is None:
                return self.forward(*model_args, **model_kwargs)
            out, _ = self._grad_call("run_with_hooks", model_args, model_kwargs, metric, None, None)
            return out

    def _has_bwd_hooks(self):
        return any(hp._bwd_handles for hp in self.hook_dict.values())

    def _grad_call(self, who, model_args, model_kwargs, metric, keep, remove_batch_dim):
        """The metric's backward pass for run_with_hooks / run_with_cache: (output, cache
        dict with ``*_grad`` entries of the names ``keep`` accepts, None: no cache)."""
        return_type = model_kwargs.pop("return_type", None)
        attention_mask = model_kwargs.pop("attention_mask", None)
        prepend_bos = model_kwargs.pop("prepend_bos", None)
        padding_side = model_kwargs.pop("padding_side", None)
        for k in ("stop_at_layer", "start_at_layer", "past_kv_cache", "shortformer_pos_embed"):
            if model_kwargs.get(k) is not None:
                raise NotImplementedError(f"{who}: {k} with a metric's backward pass is not supported")
            model_kwargs.pop(k, None)
        model_kwargs.pop("loss_per_token", None)
        if len(model_args) > 1:
            raise TypeError(f"{who}: pass return_type etc. as keywords")
        tokens = model_args[0] if model_args else model_kwargs.pop("input", model_kwargs.pop("tokens", None))
        if model_kwargs:
            raise TypeError(f"{who}: unsupported arguments {sorted(model_kwargs)}")
        if return_type not in (None, "loss", "logits", "both"):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        tokens, attention_mask = self._input_tokens(tokens, prepend_bos, padding_side, attention_mask)
        value, logits, raw, graw = self._run_grad(tokens, metric, attention_mask, keep)
        out = logits if return_type == "logits" else (logits, value) if return_type == "both" else value
        if keep is None:
            return out, None
        points, fire_order = self._points, self._fire_order
        fwd = {points[pid].name: v for pid, v in raw.items()}
        bwd = {points[pid].name: v for pid, v in graw.items()}
        cache = {n: fwd[n] for n in fire_order if n in fwd}
        cache.update((n + "_grad", bwd[n]) for n in reversed(fire_order) if n in bwd)
        if remove_batch_dim:
            cache = {n: v[0] for n, v in cache.items()}
        return out, cache

    def _run_grad(self, tokens, metric, attention_mask=None, keep=None, grads=None):
        """One C pass forward, metric and backward: (value, logits, {point_id: activation},
        {point_id: gradient}) for the points ``keep`` accepts (None: none), with the
        registered forward and backward hooks running; parameter gradients accumulate
        into ``grads`` (a grad blob) when given."""
        tokens = self._tokens(tokens)
        pos_ids, key_mask = self._mask(attention_mask, tokens)
        n = self._n_points
        flags, bflags = bytearray(n), bytearray(n)
        any_fwd = any_bwd = False
        for name, hp in self.hook_dict.items():
            pid = hp.point_id
            if pid is None:
                continue
            if keep is not None and keep(name):
                flags[pid] |= _CACHE
                bflags[pid] |= _CACHE
            if hp._handles:
                flags[pid] |= _CALLBACK
                any_fwd = True
            if hp._bwd_handles:
                bflags[pid] |= _CALLBACK
                any_bwd = True
        points = self._points
        spec = metrics.resolve(metric, tokens, None if key_mask is None else key_mask,
                               tokens.shape + (self.cfg.d_vocab_out,))
        return _core.grad(self._core, tokens, bytes(flags), bytes(bflags), spec,
                          (lambda pid, act: points[pid].run(act)) if any_fwd else None,
                          (lambda pid, g: points[pid].run(g, "bwd")) if any_bwd else None,
                          pos_ids, key_mask, grads)

    # -------------------------------------------------------------- forward
    def _tokens(self, tokens):
        if isinstance(tokens, (str, list)) and tokens and isinstance(tokens[0] if isinstance(tokens, list) else tokens, str):
            raise TypeError("string input needs a tokenizer; pass token ids (int array [batch, pos])")
        arr = np.asarray(to_numpy(tokens))
        if arr.dtype.kind not in "iu":
            raise TypeError(f"tokens: expected an integer array, got dtype {arr.dtype}")
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise ValueError(f"tokens: expected shape [batch, pos] or [pos], got {arr.shape}")
        if arr.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"tokens: sequence length {arr.shape[1]} exceeds n_ctx {self.cfg.n_ctx}")
        return np.ascontiguousarray(arr, dtype=np.int64)

    def _mask(self, attention_mask, tokens):
        if attention_mask is None:
            return None, None
        m = np.asarray(to_numpy(attention_mask))
        if m.ndim == 1:
            m = m[None]
        if m.shape != tokens.shape:
            raise ValueError(f"attention_mask: expected shape {tokens.shape} like tokens, got {m.shape}")
        keep = (m != 0)
        pos_ids = np.maximum(np.cumsum(keep, axis=1) - 1, 0).astype(np.int64)
        return pos_ids, keep.astype(np.float32)

    def _run(self, tokens, cache_ids=(), stop_layer=None, attention_mask=None, start_layer=None,
             past_kv_cache=None):
        """One C pass; returns (output view, {point_id: view}). With start_layer, ``tokens``
        is the residual stream [batch, pos, d_model] entering that block. With
        ``past_kv_cache`` the input holds the positions after the cached ones and
        ``attention_mask`` only theirs; the core derives positions from the cache's mask."""
        kv = None
        if past_kv_cache is not None:
            kv = getattr(past_kv_cache, "_core", None)
            if not isinstance(kv, _core.KVCache):
                raise TypeError(f"past_kv_cache: expected a HookedTransformerKeyValueCache, got "
                                f"{type(past_kv_cache).__name__}")
        resid = None
        if start_layer is not None:
            resid = np.asarray(to_numpy(tokens))
            if resid.dtype.kind != "f":
                raise TypeError(f"input: with start_at_layer the input is the residual stream "
                                f"(floats), got dtype {resid.dtype}")
            if resid.ndim == 2:
                resid = resid[None]
            if resid.ndim != 3 or resid.shape[-1] != self.cfg.d_model:
                raise ValueError(f"input: expected a residual stream [batch, pos, d_model="
                                 f"{self.cfg.d_model}], got shape {resid.shape}")
            if resid.shape[1] > self.cfg.n_ctx:
                raise ValueError(f"input: sequence length {resid.shape[1]} exceeds n_ctx {self.cfg.n_ctx}")
            tokens = np.zeros(resid.shape[:2], dtype=np.int64)   # shape carrier for the mask
        else:
            tokens = self._tokens(tokens)
        pos_ids, key_mask = self._mask(attention_mask, tokens)
        flags = bytearray(self._n_points)
        for pid in cache_ids:
            flags[pid] |= _CACHE
        any_cb = False
        for hp in self.hook_dict.values():
            if hp._handles and hp.point_id is not None:
                # handles marked transient (module-tree internals) only look during the call
                transient = all(getattr(h, "transient", False) for h in hp._handles)
                flags[hp.point_id] |= _TRANSIENT if transient else _CALLBACK
                any_cb = True
        points = self._points

        def dispatch(pid, act):
            points[pid].run(act)

        stop = -1 if stop_layer is None else stop_layer
        if kv is not None:
            pos_ids = None
        if resid is not None:
            return self._core.forward(None, bytes(flags), dispatch if any_cb else None, pos_ids,
                                      key_mask, stop, resid, start_layer, kv_cache=kv)
        return self._core.forward(tokens, bytes(flags), dispatch if any_cb else None,
                                  pos_ids, key_mask, stop, kv_cache=kv)

    def loss_fn(self, logits, tokens, attention_mask=None, per_token=False):
        """Next-token cross-entropy, ``utils.lm_cross_entropy_loss`` in float32 (as
        TransformerLens's ``loss_fn``): the mean, or [batch, pos - 1] with per_token."""
        loss = utils.lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)
        return loss.astype(np.float32) if per_token else np.float32(loss)

    def _loss(self, logits, tokens, attention_mask, per_token):
        tokens = self._tokens(tokens)
        if attention_mask is not None:
            attention_mask = np.asarray(to_numpy(attention_mask)).reshape(tokens.shape)
        return self.loss_fn(logits, tokens, attention_mask, per_token)

    def forward(self, input, return_type="logits", loss_per_token=False, prepend_bos=None,
                padding_side=None, start_at_layer=None, tokens=None, shortformer_pos_embed=None,
                attention_mask=None, stop_at_layer=None, past_kv_cache=None):
        """Run the model on ``input``: token ids ([batch, pos] or [pos] ints), a string or a
        list of strings (tokenized by ``to_tokens`` with ``prepend_bos`` and ``padding_side``).

        Left padding (``padding_side``, else the tokenizer's) without an
        ``attention_mask`` gets the mask ``utils.get_attention_mask`` builds from the
        tokens, as TransformerLens. return_type "logits" ([batch, pos, d_vocab_out]), "loss" (mean next-token
        cross-entropy; per position [batch, pos-1] with loss_per_token), "both"
        ((logits, loss)) or None. ``attention_mask`` [batch, pos] (1 keep, 0 pad) masks
        padded keys and shifts positions as TransformerLens (one deliberate difference:
        with attention_dir="bidirectional" padded keys are masked too, where
        TransformerLens ignores the mask). ``stop_at_layer=k`` returns
        the residual stream entering block k; ``start_at_layer=k`` takes ``input`` as the
        residual stream [batch, pos, d_model] entering block k (pass ``tokens`` for a loss).
        ``past_kv_cache`` (a ``HookedTransformerKeyValueCache``): ``input`` holds the
        positions after the cached ones; the pass attends over cached + new keys, returns
        the new positions' logits and grows the cache by them (unless frozen).
        ``attention_mask`` then covers the new positions only (as TransformerLens's
        forward; the cache keeps the earlier mask); without one it is built from the pad
        tokens when the model has a tokenizer (TransformerLens), else every token is real.

        In torch mode (``set_array_type("torch")``) with grad mode on and a parameter
        requiring grad, the logits (and a "loss") carry a ``grad_fn`` backed by the C
        backward pass: ``loss.backward()`` fills the parameters' ``.grad`` and
        ``torch.optim`` trains the model (see :mod:`mechinterp_c.autograd`).
        """
        if shortformer_pos_embed is not None:
            raise NotImplementedError("shortformer_pos_embed is not supported")
        if start_at_layer is None:
            input, attention_mask = self._input_tokens(input, prepend_bos, padding_side, attention_mask)
            if past_kv_cache is not None and attention_mask is None and self.tokenizer is not None:
                if prepend_bos is None:
                    prepend_bos = self.cfg.default_prepend_bos
                attention_mask = utils.get_attention_mask(self.tokenizer, input, prepend_bos)
        if torch_mode() and called_by_user():
            from . import autograd
            if autograd.wants_graph(self, return_type, start_at_layer, stop_at_layer, past_kv_cache):
                return autograd.forward_with_graph(self, input, return_type, loss_per_token, attention_mask)
        return self._forward(input, return_type, loss_per_token, attention_mask, stop_at_layer, (),
                             start_at_layer=start_at_layer, loss_tokens=tokens,
                             past_kv_cache=past_kv_cache)[0]

    __call__ = forward

    def _forward(self, input, return_type, loss_per_token, attention_mask, stop_at_layer, cache_ids,
                 stop_layer=None, start_at_layer=None, loss_tokens=None, past_kv_cache=None):
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")
        if stop_at_layer is not None:
            L = self.cfg.n_layers
            stop = stop_at_layer + L if stop_at_layer < 0 else stop_at_layer
            if not 0 <= stop <= L:
                raise ValueError(f"stop_at_layer={stop_at_layer} is outside [-{L}, {L}]")
            stop_layer = stop
        start = None
        if start_at_layer is not None:
            L = self.cfg.n_layers
            start = start_at_layer + L if start_at_layer < 0 else start_at_layer
            if not 0 <= start <= L:
                raise ValueError(f"start_at_layer={start_at_layer} is outside [-{L}, {L}]")
            if return_type in ("loss", "both") and loss_tokens is None and stop_at_layer is None:
                raise ValueError("a loss with start_at_layer needs tokens=... for the targets")
        if stop_at_layer is not None and stop_layer == self.cfg.n_layers > 0 \
                and not self._CORE_SPEC.get("no_head"):
            # TransformerLens returns the residual stream after the last block here,
            # not logits: keep that point for the pass (the head still runs)
            pid = self.hook_dict[f"blocks.{stop_layer - 1}.hook_resid_post"].point_id
            extra = pid not in cache_ids
            _, cache = self._run(input, list(cache_ids) + [pid] * extra, stop_layer,
                                 attention_mask, start, past_kv_cache)
            return (cache.pop(pid) if extra else cache[pid]), cache
        out, cache = self._run(input, cache_ids, stop_layer, attention_mask, start, past_kv_cache)
        if stop_at_layer is not None:
            return out, cache
        if return_type is None:
            return None, cache
        if return_type == "logits":
            return out, cache
        loss = self._loss(out, input if start is None else loss_tokens, attention_mask, loss_per_token)
        if return_type == "loss":
            return loss, cache
        return (out, loss), cache

    def run_with_cache(self, *model_args, names_filter=None, device=None, remove_batch_dim=False,
                       incl_bwd=False, reset_hooks_end=True, clear_contexts=False, pos_slice=None,
                       return_cache_object=True, **model_kwargs):
        """Forward pass that also returns an ``ActivationCache`` (a dict with
        return_cache_object=False) of every hook point ``names_filter`` accepts (None: all;
        a name; a list of names; a function of the name).

        Cached arrays are views into the pass's arena (no copies). With ``pos_slice``
        only those positions are kept, copied by caching hooks during the pass (see
        ``get_caching_hooks``), so the cache holds the slice, not whole activations.

        ``incl_bwd=True`` with ``metric`` (see ``mechinterp_c.metrics``: ``"loss"``,
        ``metrics.logit_diff(answer_tokens, wrong_tokens, pos=-1)``,
        ``metrics.logprob(tokens, pos)``, or a function ``logits -> (value,
        dvalue_dlogits)``) also runs the backward pass from the metric and caches the
        gradient at each point as ``name + "_grad"`` (``blocks.0.hook_resid_pre_grad``),
        zero-copy views like the activations; ``names_filter`` applies to both, and
        backward hooks run. It returns ``(value, cache)`` (``return_type="logits"``:
        the logits; ``"both"``: ``(logits, value)``). Without ``metric``,
        ``return_type="loss"`` takes the loss as the metric, as TransformerLens's
        ``loss.backward()``."""
        metric = model_kwargs.pop("metric", None)
        if incl_bwd or metric is not None:
            check_cpu_device(device)
            if metric is None:
                if model_kwargs.get("return_type") != "loss":
                    raise ValueError("incl_bwd=True needs metric=... ('loss', metrics.logit_diff(...), "
                                     "metrics.logprob(...) or a function logits -> (value, "
                                     "dvalue_dlogits)), or return_type='loss'")
                metric = "loss"
            if not incl_bwd:
                raise ValueError("run_with_cache: metric=... is for incl_bwd=True")
            if pos_slice is not None:
                raise NotImplementedError("run_with_cache: pos_slice with incl_bwd=True is not supported")
            with self.hooks((), (), reset_hooks_end, clear_contexts):
                out, cache = self._grad_call("run_with_cache", model_args, dict(model_kwargs), metric,
                                             names_filter_fn(names_filter), remove_batch_dim)
            return out, self._wrap_cache(cache, remove_batch_dim, return_cache_object)
        check_cpu_device(device)
        if pos_slice is not None:
            out, cache = self._run_with_caching_hooks(model_args, model_kwargs, names_filter,
                                                      remove_batch_dim, pos_slice, reset_hooks_end,
                                                      clear_contexts)
            return out, self._wrap_cache(cache, remove_batch_dim, return_cache_object)
        keep = names_filter_fn(names_filter)
        ids = [hp.point_id for n, hp in self.hook_dict.items() if hp.point_id is not None and keep(n)]
        if len(model_args) > 1:
            raise TypeError("run_with_cache: pass return_type etc. as keywords")
        return_type = model_kwargs.pop("return_type", "logits")
        loss_per_token = model_kwargs.pop("loss_per_token", False)
        attention_mask = model_kwargs.pop("attention_mask", None)
        stop_at_layer = model_kwargs.pop("stop_at_layer", None)
        start_at_layer = model_kwargs.pop("start_at_layer", None)
        prepend_bos = model_kwargs.pop("prepend_bos", None)
        padding_side = model_kwargs.pop("padding_side", None)
        loss_tokens = model_kwargs.pop("tokens", None) if start_at_layer is not None else None
        past_kv_cache = model_kwargs.pop("past_kv_cache", None)
        tokens = model_args[0] if model_args else model_kwargs.pop("input", model_kwargs.pop("tokens", None))
        if model_kwargs:
            raise TypeError(f"run_with_cache: unsupported arguments {sorted(model_kwargs)}")
        if start_at_layer is None:
            tokens, attention_mask = self._input_tokens(tokens, prepend_bos, padding_side, attention_mask)
        points, fire_order = self._points, self._fire_order   # a hook may rebuild the model
        # nothing needed past the last cached layer when no output is wanted: stop there
        stop_layer = None
        if return_type is None and stop_at_layer is None and start_at_layer is None and not any(
                hp._handles for hp in self.hook_dict.values()):
            layers = [self._point_layer[i] for i in ids]
            if ids and all(self._point_layer[i] >= 0 or self._points[i].name in ("hook_embed", "hook_pos_embed")
                           for i in ids):
                stop_layer = max([l for l in layers if l >= 0], default=-1) + 1
        if start_at_layer is None and past_kv_cache is not None and attention_mask is None \
                and self.tokenizer is not None:
            bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
            attention_mask = utils.get_attention_mask(self.tokenizer, tokens, bos)
        if past_kv_cache is not None:
            stop_layer = None   # the cache's layers must all see the new positions
        out, raw = self._forward(tokens, return_type, loss_per_token, attention_mask, stop_at_layer,
                                 ids, stop_layer, start_at_layer, loss_tokens, past_kv_cache)
        cache = {points[pid].name: v for pid, v in raw.items()}
        cache = {n: cache[n] for n in fire_order if n in cache}   # forward order
        if remove_batch_dim:
            cache = {n: v[0] for n, v in cache.items()}
        if reset_hooks_end and clear_contexts:
            self.clear_contexts()
        return out, self._wrap_cache(cache, remove_batch_dim, return_cache_object)

    def _wrap_cache(self, cache, remove_batch_dim, return_cache_object):
        if not return_cache_object:
            return cache
        return ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def __repr__(self):
        c = self.cfg
        return (f"HookedTransformer(n_layers={c.n_layers}, d_model={c.d_model}, n_heads={c.n_heads}, "
                f"d_head={c.d_head}, d_mlp={c.d_mlp}, d_vocab={c.d_vocab}, n_ctx={c.n_ctx})")


# what these methods return reaches the user in the array type chosen (set_array_type);
# called from inside the package they return NumPy
for _name in ("forward", "run_with_cache", "run_with_hooks", "loss_fn", "generate", "to_tokens",
              "to_string", "to_str_tokens", "get_token_position", "tokens_to_residual_directions",
              "accumulated_bias"):
    setattr(HookedTransformer, _name, user_facing(getattr(HookedTransformer, _name)))
HookedTransformer.__call__ = HookedTransformer.forward
