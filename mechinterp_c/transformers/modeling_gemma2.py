"""``Gemma2ForCausalLM``: Hugging Face's Gemma 2 as a drop-in on the C transformer,
built as :mod:`~mechinterp_c.transformers.modeling_llama`'s models are (converted
once at load, Hugging Face's module tree, hooks served by the C hook points;
``generate``, ``use_cache``, ``labels`` and ``save_pretrained`` as Llama's):

=================================  ===================================  =================================
module                             forward hook ``output``              pre-hook ``input[0]``
=================================  ===================================  =================================
model.embed_tokens                 token embedding [B,T,D] (view)       (ids, not hookable)
model.layers[i]                    residual stream after the layer      residual stream before it
input_layernorm                    RMSNorm output (*)                   residual stream (read only copy)
self_attn.q_proj/k_proj/v_proj     q / k / v before rotary (view)       input_layernorm output (*, ro)
self_attn.o_proj, self_attn        attention output before              z, heads concatenated (view) /
                                   post_attention_layernorm (**)        input_layernorm output (*)
post_attention_layernorm           its RMSNorm output (view)            (not hookable: hook o_proj)
pre_feedforward_layernorm          RMSNorm output (*)                   resid_mid (read only copy)
mlp.gate_proj / mlp.up_proj        gate / up projection (view)          pre_feedforward output (*, ro)
mlp.down_proj, mlp                 MLP output before                    act(gate) * up (view) /
                                   post_feedforward_layernorm (**)      pre_feedforward output (*)
post_feedforward_layernorm         its RMSNorm output (view)            (not hookable: hook down_proj)
model.norm                         final RMSNorm output (*)             residual stream (read only copy)
lm_head                            logits before the soft-cap (view)    model.norm output (*)
=================================  ===================================  =================================

(*) the C core keeps ``x / rms(x)``; the hook gets it times ``1 + weight`` (Gemma's
scale) and edits are mapped back. (**) the C core keeps the post-norm's
``x / rms(x)`` and ``rms(x)``: the hook gets their product, and an edited output is
normalized again into the C buffer (what the post-norm then does to it).
``embed_tokens``: its output is scaled by sqrt(hidden_size) (Gemma's scaled embedding;
the C embedding is stored pre-scaled), its ``weight`` is Hugging Face's unscaled one.
The weights Gemma stores shifted or scaled (the embedding, every norm's ``weight``) are read-only copies
in Hugging Face's values; the projections' are writable views. ``out.logits`` are
soft-capped (``final_logit_softcapping``) as Hugging Face's.
"""
from __future__ import annotations

import numpy as np

from ..array_type import raw_hook
from ..config import Gemma2Config
from ..loading_from_pretrained import convert_gemma2_config
from ..utils import to_numpy
from .modeling_llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel, Linear, RMSNorm
from .modeling_utils import HFArray, Module, ModuleList, RemovableHandle, _AffineSite, _same

__all__ = ["Gemma2ForCausalLM"]


class _PostNormInput:
    """The input of a post-norm (o_proj's / down_proj's output): ``normalized * scale``
    from the C buffer ``normalized`` and the scale its hook point stashed (``state``);
    an edit is normalized again (``x / sqrt(mean(x^2) + eps)``) into the buffer."""

    def __init__(self, state, eps, where):
        self.state, self.eps, self.where = state, eps, where

    def expose(self, y):
        return np.ndarray.view(y * self.state["scale"], HFArray)

    def absorb(self, y, shown, ret):
        new = shown
        if ret is not None:
            r = ret[0] if isinstance(ret, tuple) else ret
            if r is not None:
                new = np.asarray(to_numpy(r), dtype=np.float32)
                if new.size != y.size:
                    raise ValueError(f"{self.where}: hook returned shape {new.shape}; "
                                     f"expected {y.shape}")
                new = new.reshape(y.shape)
        if new is shown and np.array_equal(shown, y * self.state["scale"]):
            return
        x = np.asarray(new, dtype=np.float64)
        scale = np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps)
        y[...] = x / scale
        self.state["scale"][...] = scale


class _PostNormInputModule(Module):
    """o_proj / down_proj / self_attn / mlp: their output is a post-norm's input; a forward
    hook also stashes the post-norm's scale, which the C pass computes just before."""

    def __init__(self, model, name, scale_point, norm_point, eps, pre):
        self._state = {}
        super().__init__(model, name, (norm_point, _same, _PostNormInput(self._state, eps, name)), pre)
        self._scale_point = scale_point

    def register_forward_hook(self, hook, **kwargs):
        """As every module's; the post-norm's scale is read first (see the module doc)."""
        state = self._state

        @raw_hook
        def stash(act, hook):
            state["scale"] = act

        lens = self._core_ht.add_hook(self._scale_point, stash)
        h = Module.register_forward_hook(self, hook, **kwargs)
        return RemovableHandle(list(lens) + h._lens)


class Gemma2Attention(_PostNormInputModule):
    """``self_attn``: q/k/v/o projections; forward hook output is ``(attn_output, None)``."""

    _grad_input_empty = True   # Hugging Face calls it with keywords: torch's grad_input is ()

    def _wrap_output(self, out):
        return (out, None)


class Gemma2MLP(_PostNormInputModule):
    """``mlp``: ``gate_proj``, ``up_proj``, ``down_proj``; its output is the post-norm's input."""


class Gemma2ForCausalLM(LlamaForCausalLM):
    """Hugging Face's ``Gemma2ForCausalLM`` on the C transformer (see the module doc)."""

    config_class = Gemma2Config
    _convert = staticmethod(convert_gemma2_config)
    _maps_bf16 = False     # converted once (its layout is not Llama's)

    def _build_tree(self):
        cfg, raw = self.config, self._ht._raw
        D, H, kv, Dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        eps = float(cfg.rms_norm_eps)
        zero = np.zeros(D, np.float32)
        one = np.float32(1.0)

        def flat(a):
            return a.reshape(a.shape[0], a.shape[1], -1)

        def linear(name, fwd, pre, weight):
            m = Linear(self, name, fwd, pre)
            m.weight = weight
            return m

        def norm(cls, name, fwd, pre, w):
            m = cls(self, name, fwd, pre)
            m.weight = w - one        # Gemma's stored weight: the C norm multiplies by 1 + w
            m._np("weight").flags.writeable = False
            return m

        model = LlamaModel(self, "model")
        s = np.float32(D ** 0.5)
        model.embed_tokens = Module(self, "model.embed_tokens", ("hook_embed", _same, None))
        model.embed_tokens.weight = raw["embed.W_E"] / s
        model.embed_tokens._np("weight").flags.writeable = False
        # its output is the unscaled embedding; the C pass holds the scaled one: no backward hooks
        model.embed_tokens._bwd_spec = (None, None)
        model.layers = ModuleList()
        for l in range(cfg.num_hidden_layers):
            p, n = f"blocks.{l}.", f"model.layers.{l}."
            ln1 = _AffineSite(raw[p + "ln1.w"], zero, n + "input_layernorm")
            ln2 = _AffineSite(raw[p + "ln2.w"], zero, n + "pre_feedforward_layernorm")
            ln1_pre = (p + "ln1.hook_normalized", _same, ln1, False)
            ln2_pre = (p + "ln2.hook_normalized", _same, ln2, False)
            ln1_ro, ln2_ro = ln1_pre[:3] + (True,), ln2_pre[:3] + (True,)
            layer = LlamaDecoderLayer(self, n[:-1], (p + "hook_resid_post", _same, None),
                                      (p + "hook_resid_pre", _same, None, False))
            layer.input_layernorm = norm(RMSNorm, n + "input_layernorm", (p + "ln1.hook_normalized", _same, ln1),
                                         (p + "hook_resid_pre", _same, None, True), raw[p + "ln1.w"])
            attn = Gemma2Attention(self, n + "self_attn", p + "ln1_post.hook_scale",
                                   p + "ln1_post.hook_normalized", eps, ln1_pre)
            qkv = raw[p + "attn.W_qkv"].reshape(D, H + 2 * kv, Dh)
            for proj, point, a, b in (("q_proj", "attn.hook_q", 0, H), ("k_proj", "attn.hook_k", H, H + kv),
                                      ("v_proj", "attn.hook_v", H + kv, H + 2 * kv)):
                setattr(attn, proj, linear(n + "self_attn." + proj, (p + point, flat, None), ln1_ro,
                                           qkv[:, a:b].reshape(D, (b - a) * Dh).T))
            attn.o_proj = _PostNormInputModule(self, n + "self_attn.o_proj", p + "ln1_post.hook_scale",
                                               p + "ln1_post.hook_normalized", eps,
                                               (p + "attn.hook_z", flat, None, False))
            attn.o_proj.weight = raw[p + "attn.W_O"].reshape(H * Dh, D).T
            attn.num_heads, attn.num_key_value_heads, attn.head_dim = H, kv, Dh
            layer.self_attn = attn
            layer.post_attention_layernorm = norm(
                RMSNorm, n + "post_attention_layernorm", (p + "hook_attn_out", _same, None),
                None, raw[p + "ln1_post.w"])
            layer.pre_feedforward_layernorm = norm(
                RMSNorm, n + "pre_feedforward_layernorm", (p + "ln2.hook_normalized", _same, ln2),
                (p + "hook_resid_mid", _same, None, True), raw[p + "ln2.w"])
            mlp = Gemma2MLP(self, n + "mlp", p + "ln2_post.hook_scale",
                                       p + "ln2_post.hook_normalized", eps, ln2_pre)
            mlp.gate_proj = linear(n + "mlp.gate_proj", (p + "mlp.hook_pre", _same, None), ln2_ro,
                                   raw[p + "mlp.W_gate"].T)
            mlp.up_proj = linear(n + "mlp.up_proj", (p + "mlp.hook_pre_linear", _same, None), ln2_ro,
                                 raw[p + "mlp.W_in"].T)
            mlp.down_proj = _PostNormInputModule(self, n + "mlp.down_proj", p + "ln2_post.hook_scale",
                                                 p + "ln2_post.hook_normalized", eps,
                                                 (p + "mlp.hook_post", _same, None, False))
            mlp.down_proj.weight = raw[p + "mlp.W_out"].T
            layer.mlp = mlp
            layer.post_feedforward_layernorm = norm(
                RMSNorm, n + "post_feedforward_layernorm", (p + "hook_mlp_out", _same, None),
                None, raw[p + "ln2_post.w"])
            model.layers.append(layer)
            model._children[f"layers.{l}"] = layer
        lnf = _AffineSite(raw["ln_final.w"], zero, "model.norm")
        model.norm = norm(RMSNorm, "model.norm", ("ln_final.hook_normalized", _same, lnf),
                          (f"blocks.{cfg.num_hidden_layers - 1}.hook_resid_post", _same, None, True),
                          raw["ln_final.w"])
        self.model = model
        self.lm_head = linear("lm_head", ("unembed.hook_out", _same, None),
                              ("ln_final.hook_normalized", _same, lnf, False), raw["unembed.W_U"].T)

    def _final_norm(self, normalized):
        return normalized * self._ht._raw["ln_final.w"]

    def _hf_tensors(self):
        """As Llama's, with the embedding and the norm weights re-read from the C weights
        in Hugging Face's values (unscaled, ``weight = c_weight - 1``)."""
        tensors = LlamaForCausalLM._hf_tensors(self)
        raw, D = self._ht._raw, self.config.hidden_size
        tensors["model.embed_tokens.weight"] = raw["embed.W_E"] / np.float32(D ** 0.5)
        names = (("ln1.w", "input_layernorm"), ("ln1_post.w", "post_attention_layernorm"),
                 ("ln2.w", "pre_feedforward_layernorm"), ("ln2_post.w", "post_feedforward_layernorm"))
        for l in range(self.config.num_hidden_layers):
            for c, h in names:
                tensors[f"model.layers.{l}.{h}.weight"] = raw[f"blocks.{l}.{c}"] - np.float32(1.0)
        tensors["model.norm.weight"] = raw["ln_final.w"] - np.float32(1.0)
        return tensors
