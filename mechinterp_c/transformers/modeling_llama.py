"""``LlamaForCausalLM`` (also ``MistralForCausalLM``, ``Qwen2ForCausalLM``): Hugging
Face's Llama-family models as drop-ins on the C transformer: forward with hooks,
``labels`` -> ``loss``, ``use_cache`` / ``past_key_values`` on the C key/value cache,
``generate`` (:mod:`~mechinterp_c.transformers.generation_utils`) and
``save_pretrained``, shared with GPT-2's and with the NeoX / Gemma 2 drop-ins built on
this class.

``from_pretrained(dir_or_hub_id)`` converts the checkpoint with
``loading_from_pretrained`` (no weight processing) into a C model; the module tree
has Hugging Face's names (``model.layers[i].self_attn.q_proj``, ``.mlp.gate_proj``,
...), ``.weight`` attributes are writable views of the C weights in Hugging Face's
layout ([out, in]), and forward hooks / pre-hooks are served by the C hook points:

=============================  ===================================  ===============================
module                         forward hook ``output``               pre-hook ``input[0]``
=============================  ===================================  ===============================
model.embed_tokens             token embedding [B,T,D]              (ids, not hookable)
model.layers[i]                residual stream after the layer      residual stream before it
layers[i].input_layernorm      RMSNorm output [B,T,D] (*)           residual stream (read only copy)
self_attn.q_proj/k_proj/v_proj q / k / v before rotary (view)       input_layernorm output (*, ro)
self_attn.o_proj               attention output [B,T,D] (view)      z, heads concatenated (view)
self_attn                      (attention output, None)             input_layernorm output (*)
post_attention_layernorm       RMSNorm output (*)                   resid_mid (read only copy)
mlp.gate_proj / mlp.up_proj    gate / up projection [B,T,M] (view)  post_attention_layernorm (*, ro)
mlp.down_proj, mlp             MLP output [B,T,D] (view)            act(gate) * up (view) / (*)
model.norm                     final RMSNorm output (*)             residual stream (read only copy)
lm_head                        logits [B,T,V] (view)                model.norm output (*)
=============================  ===================================  ===============================

"(view)": the C buffer itself (edits change the rest of the pass); "(*)": the C
core keeps ``x / rms(x)``, the hook gets it times the weight and edits are mapped
back through the weight. "ro": a read-only copy (edits are ignored): the
projections share that input, so an edit for one would reach the others (hook
``self_attn`` or ``mlp`` to edit their common input). Positions are 0..T-1 unless ``position_ids`` are given
(Hugging Face's rule, padding included); ``attention_mask`` masks padded keys.

Backward hooks (``register_full_backward_hook`` / ``register_full_backward_pre_hook``,
torch's contract) run in ``out.backward(metric=...)`` on the C gradient pass:
:mod:`~mechinterp_c.transformers.backward_hooks` lists the gradient each module sees (the
norms inside the layers refuse them; ``self_attn``'s ``grad_input`` is ``()`` as in torch,
which calls it with keywords).
"""
from __future__ import annotations

import weakref

import numpy as np

from .. import _core
from ..config import LlamaConfig, MistralConfig, Qwen2Config
from .. import io as _io
from ..loading_from_pretrained import (convert_llama_config, convert_mistral_config,
                                       convert_qwen2_config, get_pretrained_state_dict,
                                       map_llama_weights)
from ..utils import to_numpy
from ..array_type import to_user
from .backward_hooks import BackwardMixin, run_backward
from .cache_utils import cache_inputs
from .generation_utils import GenerationMixin
from .modeling_gpt2 import CausalLMOutput, _CoreModel, causal_lm_loss
from .modeling_utils import (Module, ModuleList, _AffineSite, _hf, _same, check_model_args,
                             write_pretrained)

__all__ = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"]

# config fields whose None means "derived from the others" (head_dim = hidden / heads, ...)
_DERIVED = ("head_dim", "num_key_value_heads", "layer_types")


class Linear(Module):
    """``nn.Linear``: ``.weight`` [out, in] (a view of the C weight) and ``.bias`` when the
    projection has one."""


class RMSNorm(Module):
    """An RMSNorm: ``.weight`` [D]."""


class LlamaAttention(Module):
    """``self_attn``: q/k/v/o projections; forward hook output is ``(attn_output, None)``."""

    _grad_input_empty = True   # Hugging Face calls it with keywords: torch's grad_input is ()

    def _wrap_output(self, out):
        return (out, None)


class LlamaMLP(Module):
    """``mlp``: ``gate_proj``, ``up_proj``, ``down_proj``."""


class LlamaDecoderLayer(Module):
    """``model.layers[i]``."""


class LlamaModel(Module):
    """``model.model``: ``embed_tokens``, ``layers``, ``norm``."""


class LlamaForCausalLM(Module, GenerationMixin, BackwardMixin):
    """Hugging Face's ``LlamaForCausalLM`` on the C transformer (see the module doc)."""

    config_class = LlamaConfig
    _convert = staticmethod(convert_llama_config)
    #: bfloat16 loads read the checkpoint in place (``map_llama_weights``): the
    #: Llama layout (Mistral, Qwen2); the families built on this class convert
    _maps_bf16 = True

    def __init__(self, config, state_dict, _bf16=False, _checkpoint=None):
        super().__init__(None, "model")
        self._model_ref = weakref.ref(self)
        self.config = config
        tl_cfg = type(self)._convert(config)
        if _bf16:
            tl_cfg["dtype"] = "bfloat16"
        self._ht = _CoreModel(tl_cfg)
        if _checkpoint is not None:
            map_llama_weights(self._ht, _checkpoint[0], config, _checkpoint[1])
        else:
            self._ht.load_state_dict(state_dict)
        self._build_tree()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, revision="main",
                        cache_dir=None, **kwargs):
        """Load ``config.json`` and the safetensors weights (one file or shards) of a local
        directory or a model in the Hugging Face cache (no network); the weights are
        converted once into the C model's layout. ``torch_dtype`` / ``dtype`` bfloat16
        stores the projections and the embeddings as bfloat16 (their ``.weight`` is then
        the uint16 bfloat16 bit patterns, ``ops.from_bfloat16`` gives float32;
        activations stay float32, no training): Llama, Mistral and Qwen2 read a BF16
        checkpoint in place (mmap: the embedding, ``o_proj``, the MLP and ``lm_head``,
        see ``loading_from_pretrained.map_llama_weights``; q/k/v and the norms are
        converted once), so the file must not be overwritten in place while the model
        lives (as ``GPT2LMHeadModel.from_pretrained``); the other families convert
        once. Other dtypes, devices and unknown keywords are refused as
        ``GPT2LMHeadModel.from_pretrained`` refuses them."""
        bf16 = check_model_args(model_args, kwargs, f"{cls.__name__}.from_pretrained",
                                allow_bf16=True)
        cfg = cls.config_class.from_pretrained(pretrained_model_name_or_path, revision=revision,
                                               cache_dir=cache_dir)
        if bf16 and cls._maps_bf16:
            files = _io.open_checkpoint(pretrained_model_name_or_path, revision=revision,
                                        cache_dir=cache_dir)
            where = str(_io.resolve_pretrained(pretrained_model_name_or_path, revision=revision,
                                               cache_dir=cache_dir))
            return cls(cfg, None, _bf16=True, _checkpoint=(files, where))
        sd = get_pretrained_state_dict(pretrained_model_name_or_path, cfg, revision, cache_dir)
        return cls(cfg, sd, _bf16=bf16)

    def _build_tree(self):
        cfg = self.config
        D, H = cfg.hidden_size, cfg.num_attention_heads
        Dh = cfg.head_dim or D // H
        kv = cfg.num_key_value_heads or H
        raw = self._ht._raw

        def flat(a):             # [B,T,heads,Dh] -> [B,T,heads*Dh] (a view)
            return a.reshape(a.shape[0], a.shape[1], -1)

        def linear(name, fwd, pre, weight, bias=None):
            m = Linear(self, name, fwd, pre)
            m.weight = weight
            if bias is not None:   # bias-free projections have none (named_parameters)
                m.bias = bias
            return m

        zero = np.zeros(D, np.float32)
        model = LlamaModel(self, "model")
        model.embed_tokens = Module(self, "model.embed_tokens", ("hook_embed", _same, None))
        model.embed_tokens.weight = raw["embed.W_E"]
        model.layers = ModuleList()
        for l in range(cfg.num_hidden_layers):
            p, n = f"blocks.{l}.", f"model.layers.{l}."
            qkv = raw[p + "attn.W_qkv"].reshape(D, H + 2 * kv, Dh)
            bqkv = raw[p + "attn.b_qkv"].reshape(H + 2 * kv, Dh)
            ln1 = _AffineSite(raw[p + "ln1.w"], zero, n + "input_layernorm")
            ln2 = _AffineSite(raw[p + "ln2.w"], zero, n + "post_attention_layernorm")
            ln1_pre = (p + "ln1.hook_normalized", _same, ln1, False)
            ln2_pre = (p + "ln2.hook_normalized", _same, ln2, False)
            # q/k/v (and gate/up) read one shared norm output: their pre-hooks see a
            # read-only copy, since an edit for one projection would reach its siblings
            ln1_ro, ln2_ro = ln1_pre[:3] + (True,), ln2_pre[:3] + (True,)
            layer = LlamaDecoderLayer(self, n[:-1], (p + "hook_resid_post", _same, None),
                                      (p + "hook_resid_pre", _same, None, False))
            layer.input_layernorm = RMSNorm(self, n + "input_layernorm",
                                            (p + "ln1.hook_normalized", _same, ln1),
                                            (p + "hook_resid_pre", _same, None, True))
            layer.input_layernorm.weight = raw[p + "ln1.w"]
            attn = LlamaAttention(self, n + "self_attn", (p + "hook_attn_out", _same, None), ln1_pre)
            bias = bool(getattr(cfg, "attention_bias", False))
            for proj, point, a, b in (("q_proj", "attn.hook_q", 0, H), ("k_proj", "attn.hook_k", H, H + kv),
                                      ("v_proj", "attn.hook_v", H + kv, H + 2 * kv)):
                w = qkv[:, a:b].reshape(D, (b - a) * Dh).T
                setattr(attn, proj, linear(n + "self_attn." + proj, (p + point, flat, None), ln1_ro,
                                           w, bqkv[a:b].reshape(-1) if bias else None))
            attn.o_proj = linear(n + "self_attn.o_proj", (p + "hook_attn_out", _same, None),
                                 (p + "attn.hook_z", flat, None, False),
                                 raw[p + "attn.W_O"].reshape(H * Dh, D).T)
            attn.num_heads, attn.num_key_value_heads, attn.head_dim = H, kv, Dh
            layer.self_attn = attn
            layer.post_attention_layernorm = RMSNorm(self, n + "post_attention_layernorm",
                                                     (p + "ln2.hook_normalized", _same, ln2),
                                                     (p + "hook_resid_mid", _same, None, True))
            layer.post_attention_layernorm.weight = raw[p + "ln2.w"]
            mlp = LlamaMLP(self, n + "mlp", (p + "hook_mlp_out", _same, None), ln2_pre)
            mlp.gate_proj = linear(n + "mlp.gate_proj", (p + "mlp.hook_pre", _same, None), ln2_ro,
                                   raw[p + "mlp.W_gate"].T)
            mlp.up_proj = linear(n + "mlp.up_proj", (p + "mlp.hook_pre_linear", _same, None), ln2_ro,
                                 raw[p + "mlp.W_in"].T)
            mlp.down_proj = linear(n + "mlp.down_proj", (p + "hook_mlp_out", _same, None),
                                   (p + "mlp.hook_post", _same, None, False), raw[p + "mlp.W_out"].T)
            layer.mlp = mlp
            model.layers.append(layer)
            model._children[f"layers.{l}"] = layer
        lnf = _AffineSite(raw["ln_final.w"], zero, "model.norm")
        model.norm = RMSNorm(self, "model.norm", ("ln_final.hook_normalized", _same, lnf),
                             (f"blocks.{cfg.num_hidden_layers - 1}.hook_resid_post", _same, None, True))
        model.norm.weight = raw["ln_final.w"]
        self.model = model
        self.lm_head = linear("lm_head", ("unembed.hook_out", _same, None),
                              ("ln_final.hook_normalized", _same, lnf, False), raw["unembed.W_U"].T)

    def _final_norm(self, normalized):
        """The final norm's output from the C core's normalized residual stream."""
        return normalized * self.model.norm._np("weight")

    def get_input_embeddings(self):
        """``model.embed_tokens``."""
        return self.model.embed_tokens

    def get_output_embeddings(self):
        """``lm_head``."""
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, return_dict=True,
                **kwargs):
        """Logits of ``input_ids`` [batch, pos] as ``out.logits``; ``attention_mask`` masks
        padded keys, positions are past..past+T-1 unless ``position_ids`` are given (as
        Hugging Face); ``output_hidden_states`` / ``output_attentions`` as
        ``GPT2LMHeadModel``'s. ``labels`` adds ``out.loss`` (Hugging Face's shift, -100
        ignored); ``use_cache=True`` / ``past_key_values=`` run on the C key/value cache
        (rotated keys per kv head) exactly as ``GPT2LMHeadModel.forward`` describes.
        Other arguments raise NotImplementedError."""
        labels = kwargs.pop("labels", None)
        output_attentions = bool(kwargs.pop("output_attentions", False))
        output_hidden_states = bool(kwargs.pop("output_hidden_states", False))
        use_cache = kwargs.pop("use_cache", None)
        past = kwargs.pop("past_key_values", None)
        if kwargs:
            raise NotImplementedError(f"{type(self).__name__}: unsupported argument(s) {sorted(kwargs)}")
        if input_ids is None:
            raise TypeError(f"{type(self).__name__}: input_ids is required")
        ht = self._ht
        tokens = ht._tokens(input_ids)
        c = ht.cfg
        cache_obj, kv, pos, mask, _ = cache_inputs(
            past, use_cache, tokens.shape, attention_mask, position_ids,
            (c.n_layers, c.n_key_value_heads or c.n_heads, c.d_head, c.n_ctx))
        flags = bytearray(ht._n_points)
        L, hd, want = self.config.num_hidden_layers, ht.hook_dict, []
        if output_hidden_states:
            want += [f"blocks.{l}.hook_resid_pre" for l in range(L)] + ["ln_final.hook_normalized"]
        if output_attentions:
            want += [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
        for n in want:
            flags[hd[n].point_id] |= _core.HOOK_CACHE
        any_cb = False
        for hp in hd.values():
            if hp._handles and hp.point_id is not None:
                flags[hp.point_id] |= _core.HOOK_CALLBACK
                any_cb = True
        points = ht._points

        def dispatch(pid, act):
            points[pid].run(act)

        logits, cache = ht._core.forward(tokens, bytes(flags), dispatch if any_cb else None,
                                         pos, mask, -1, kv_cache=kv)
        out = CausalLMOutput(logits=_hf(logits))
        if labels is not None:
            out = CausalLMOutput(loss=to_user(causal_lm_loss(logits, labels)), logits=out["logits"])
        if kv is None:
            out.__dict__["_backward"] = lambda metric, lab: run_backward(
                self, tokens, pos, mask, labels if lab is None else lab, metric)
        if cache_obj is not None:
            out["past_key_values"] = cache_obj
        if output_hidden_states:
            hs = [cache[hd[f"blocks.{l}.hook_resid_pre"].point_id] for l in range(L)]
            hs.append(self._final_norm(cache[hd["ln_final.hook_normalized"].point_id]))
            out["hidden_states"] = tuple(_hf(h) for h in hs)
        if output_attentions:
            out["attentions"] = tuple(_hf(cache[hd[f"blocks.{l}.attn.hook_pattern"].point_id])
                                      for l in range(L))
        return out if return_dict else tuple(out.values())   # HF's order: loss, logits, cache, ...

    __call__ = forward

    def _hf_tensors(self):
        """HF name -> the model's current weight in HF's layout, as transformers writes
        the checkpoint (``lm_head.weight`` left out when tied to the embedding)."""
        tensors = {}
        for name, mod in self.named_modules():
            for attr in ("weight", "bias"):
                w = mod._np(attr)
                if w is not None:
                    tensors[f"{name}.{attr}" if name else attr] = w
        if getattr(self.config, "tie_word_embeddings", False):
            tensors.pop("lm_head.weight", None)
        return tensors

    def save_pretrained(self, save_directory, safe_serialization=True, is_main_process=True,
                        state_dict=None, **kwargs):
        """Write ``config.json`` and ``model.safetensors`` (Hugging Face's names and
        layouts, the model's current weights; ``state_dict`` overrides them by name) into
        ``save_directory``: ``transformers``' ``from_pretrained`` of the same class loads
        it. Only safetensors is written (``safe_serialization=False`` raises)."""
        # None for a derived size means "derive it" here; transformers reads a written
        # null as the value itself, so those are left out
        cfg = {k: v for k, v in self.config.to_dict().items()
               if not k.startswith("_") and k != "path" and not (k in _DERIVED and v is None)}
        cfg["architectures"] = [type(self).__name__]
        write_pretrained(save_directory, self._hf_tensors(), cfg, safe_serialization,
                         is_main_process, state_dict, kwargs)


class MistralForCausalLM(LlamaForCausalLM):
    """Hugging Face's ``MistralForCausalLM`` (Llama's tree; a sliding window shorter than
    the context makes every layer local, as Hugging Face's)."""

    config_class = MistralConfig
    _convert = staticmethod(convert_mistral_config)


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Hugging Face's ``Qwen2ForCausalLM`` (Llama's tree with q/k/v biases)."""

    config_class = Qwen2Config
    _convert = staticmethod(convert_qwen2_config)
