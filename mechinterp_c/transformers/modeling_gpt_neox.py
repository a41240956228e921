"""``GPTNeoXForCausalLM`` (Pythia): Hugging Face's GPT-NeoX as a drop-in on the C
transformer (inference), built as :mod:`~mechinterp_c.transformers.modeling_llama`'s
models are (converted once at load; module tree with Hugging Face's names;
hooks served by the C hook points):

=====================================  ====================================  ==============================
module                                 forward hook ``output``                pre-hook ``input[0]``
=====================================  ====================================  ==============================
gpt_neox.embed_in                      token embedding [B,T,D]               (ids, not hookable)
gpt_neox.layers[i]                     residual stream after the layer       residual stream before it
layers[i].input_layernorm              LayerNorm output (*)                  residual stream (read only copy)
layers[i].post_attention_layernorm     LayerNorm output (*)                  its input (read only copy) (1)
attention.query_key_value              fused q|k|v [B,T,3D] in NeoX's        input_layernorm output (*)
                                       (head, q/k/v, d_head) order (2)
attention.dense                        attention output [B,T,D] (view)       z, heads concatenated (view)
attention                              (attention output, None)              input_layernorm output (*)
mlp.dense_h_to_4h                      MLP pre-activation (view)             post_attention_layernorm (*)
mlp.act                                MLP post-activation (view)            MLP pre-activation (view)
mlp.dense_4h_to_h, mlp                 MLP output (view)                     post-activation (view) / (*)
gpt_neox.final_layer_norm              final LayerNorm output (*)            residual stream (read only copy)
lm_head                                logits [B,T,V] (view)                 final_layer_norm output (*)
=====================================  ====================================  ==============================

(*) as for GPT-2: the C core keeps the normalized input, the hook gets it times the
weight plus the bias, edits are mapped back. (1) the layer's input with
``use_parallel_residual`` (Pythia), resid_mid without. (2) the C core keeps q, k and
v apart ([B,T,3,H,Dh]); the hook gets NeoX's interleaved order as a new array and
its edits are written back into the C buffer; ``query_key_value.weight``/``.bias``
are read-only copies in NeoX's order (every other ``.weight`` is a writable view).
"""
from __future__ import annotations

import numpy as np

from ..config import GPTNeoXConfig
from ..loading_from_pretrained import convert_neox_config
from ..utils import to_numpy
from .modeling_llama import (LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP,
                             LlamaModel, Linear)
from .modeling_utils import HFArray, Module, ModuleList, _AffineSite, _same

__all__ = ["GPTNeoXForCausalLM"]


class _NeoXQKVSite:
    """query_key_value's output: NeoX orders the fused projection (head, q/k/v, d_head);
    the C buffer is (q/k/v, head, d_head). The hook sees a permuted copy and its edits
    are permuted back."""

    permutes_only = True   # the gradient of the output permutes alike (backward hooks)

    def __init__(self, H, Dh, where):
        self.H, self.Dh, self.where = H, Dh, where

    def expose(self, y):            # y: [B, T, 3, H, Dh] view of the C buffer
        B, T = y.shape[:2]
        return np.ascontiguousarray(y.transpose(0, 1, 3, 2, 4)).reshape(B, T, -1).view(HFArray)

    def absorb(self, y, shown, ret):
        new = shown
        if ret is not None:
            r = ret[0] if isinstance(ret, tuple) else ret
            if r is not None:
                new = np.asarray(to_numpy(r))
                if new.size != y.size:
                    raise ValueError(f"{self.where}: hook returned shape {new.shape}; expected "
                                     f"{(y.shape[0], y.shape[1], y[0, 0].size)}")
        B, T = y.shape[:2]
        y[...] = np.asarray(new, dtype=np.float32).reshape(B, T, self.H, 3, self.Dh).transpose(0, 1, 3, 2, 4)


class GPTNeoXForCausalLM(LlamaForCausalLM):
    """Hugging Face's ``GPTNeoXForCausalLM`` on the C transformer (see the module doc)."""

    config_class = GPTNeoXConfig
    _convert = staticmethod(convert_neox_config)
    _maps_bf16 = False     # converted once (its layout is not Llama's)

    def _build_tree(self):
        cfg, raw = self.config, self._ht._raw
        D, H = cfg.hidden_size, cfg.num_attention_heads
        Dh = D // H
        parallel = bool(cfg.use_parallel_residual)

        def flat(a):
            return a.reshape(a.shape[0], a.shape[1], -1)

        def fused(q):            # hook_q's view [B,T,H,Dh] -> the whole [B,T,3,H,Dh] buffer
            B, T = q.shape[:2]
            it = q.itemsize
            return np.lib.stride_tricks.as_strided(q, (B, T, 3, H, Dh),
                                                   (q.strides[0], q.strides[1], H * Dh * it, Dh * it, it))

        def linear(name, fwd, pre, weight, bias):
            m = Linear(self, name, fwd, pre)
            m.weight, m.bias = weight, bias
            return m

        neox = LlamaModel(self, "gpt_neox")
        neox.embed_in = Module(self, "gpt_neox.embed_in", ("hook_embed", _same, None))
        neox.embed_in.weight = raw["embed.W_E"]
        neox.layers = ModuleList()
        for l in range(cfg.num_hidden_layers):
            p, n = f"blocks.{l}.", f"gpt_neox.layers.{l}."
            ln1 = _AffineSite(raw[p + "ln1.w"], raw[p + "ln1.b"], n + "input_layernorm")
            ln2 = _AffineSite(raw[p + "ln2.w"], raw[p + "ln2.b"], n + "post_attention_layernorm")
            ln1_pre = (p + "ln1.hook_normalized", _same, ln1, False)
            ln2_pre = (p + "ln2.hook_normalized", _same, ln2, False)
            layer = LlamaDecoderLayer(self, n[:-1], (p + "hook_resid_post", _same, None),
                                      (p + "hook_resid_pre", _same, None, False))
            layer.input_layernorm = Module(self, n + "input_layernorm", (p + "ln1.hook_normalized", _same, ln1),
                                           (p + "hook_resid_pre", _same, None, True))
            layer.input_layernorm.weight, layer.input_layernorm.bias = raw[p + "ln1.w"], raw[p + "ln1.b"]
            layer.post_attention_layernorm = Module(
                self, n + "post_attention_layernorm", (p + "ln2.hook_normalized", _same, ln2),
                (p + ("hook_resid_pre" if parallel else "hook_resid_mid"), _same, None, True))
            layer.post_attention_layernorm.weight = raw[p + "ln2.w"]
            layer.post_attention_layernorm.bias = raw[p + "ln2.b"]
            attn = LlamaAttention(self, n + "attention", (p + "hook_attn_out", _same, None), ln1_pre)
            attn._grad_input_empty = False   # NeoX passes hidden states positionally
            # HF's [3D, D] rows are (head, q/k/v, d_head): not a view of W_qkv [D,3,H,Dh]
            W = raw[p + "attn.W_qkv"]
            attn.query_key_value = linear(
                n + "attention.query_key_value",
                (p + "attn.hook_q", fused, _NeoXQKVSite(H, Dh, n + "attention.query_key_value")),
                ln1_pre, np.ascontiguousarray(W.transpose(2, 1, 3, 0).reshape(3 * D, D)),
                np.ascontiguousarray(raw[p + "attn.b_qkv"].transpose(1, 0, 2).reshape(3 * D)))
            for w in (attn.query_key_value._np("weight"), attn.query_key_value._np("bias")):
                w.flags.writeable = False   # a permuted copy: an edit would not reach the core
            attn.dense = linear(n + "attention.dense", (p + "hook_attn_out", _same, None),
                                (p + "attn.hook_z", flat, None, False),
                                raw[p + "attn.W_O"].reshape(D, D).T, raw[p + "attn.b_O"])
            layer.attention = attn
            mlp = LlamaMLP(self, n + "mlp", (p + "hook_mlp_out", _same, None), ln2_pre)
            mlp.dense_h_to_4h = linear(n + "mlp.dense_h_to_4h", (p + "mlp.hook_pre", _same, None), ln2_pre,
                                       raw[p + "mlp.W_in"].T, raw[p + "mlp.b_in"])
            mlp.act = Module(self, n + "mlp.act", (p + "mlp.hook_post", _same, None),
                             (p + "mlp.hook_pre", _same, None, False))
            mlp.dense_4h_to_h = linear(n + "mlp.dense_4h_to_h", (p + "hook_mlp_out", _same, None),
                                       (p + "mlp.hook_post", _same, None, False),
                                       raw[p + "mlp.W_out"].T, raw[p + "mlp.b_out"])
            layer.mlp = mlp
            neox.layers.append(layer)
            neox._children[f"layers.{l}"] = layer
        lnf = _AffineSite(raw["ln_final.w"], raw["ln_final.b"], "gpt_neox.final_layer_norm")
        neox.final_layer_norm = Module(self, "gpt_neox.final_layer_norm",
                                       ("ln_final.hook_normalized", _same, lnf),
                                       (f"blocks.{cfg.num_hidden_layers - 1}.hook_resid_post", _same, None, True))
        neox.final_layer_norm.weight, neox.final_layer_norm.bias = raw["ln_final.w"], raw["ln_final.b"]
        self.gpt_neox = neox
        self.lm_head = Linear(self, "lm_head", ("unembed.hook_out", _same, None),
                              ("ln_final.hook_normalized", _same, lnf, False))
        self.lm_head.weight = raw["unembed.W_U"].T

    def _final_norm(self, normalized):
        lnf = self.gpt_neox.final_layer_norm
        return normalized * lnf._np("weight") + lnf._np("bias")

    def get_input_embeddings(self):
        """``gpt_neox.embed_in``."""
        return self.gpt_neox.embed_in

    def _hf_tensors(self):
        """As Llama's, with ``query_key_value`` re-read from the C weights in NeoX's
        (head, q/k/v, d_head) order (its ``.weight`` is a copy made at load)."""
        tensors = LlamaForCausalLM._hf_tensors(self)
        raw, D = self._ht._raw, self.config.hidden_size
        for l in range(self.config.num_hidden_layers):
            p, n = f"blocks.{l}.", f"gpt_neox.layers.{l}.attention.query_key_value."
            tensors[n + "weight"] = raw[p + "attn.W_qkv"].transpose(2, 1, 3, 0).reshape(3 * D, D)
            tensors[n + "bias"] = raw[p + "attn.b_qkv"].transpose(1, 0, 2).reshape(3 * D)
        return tensors
