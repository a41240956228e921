"""``GPT2LMHeadModel``: Hugging Face's GPT-2 as a drop-in, running on the C transformer.

``GPT2LMHeadModel.from_pretrained(dir_or_hub_id)`` reads ``config.json`` and the
safetensors weights (mmap) and builds the C core's transformer with GPT-2's spec
(LayerNorm eps, gelu_new, biases, causal attention, learned positions, lm_head
tied to wte). The module tree has Hugging Face's names
(``model.transformer.h[3].attn.c_attn``) and every module supports
``register_forward_hook(fn(module, input, output))`` and
``register_forward_pre_hook(fn(module, input))``. Hooks are served by the C
core's hook points, not by re-running anything in Python:

====================  =====================================  ======================================
module                forward hook ``output``                 pre-hook ``input[0]``
====================  =====================================  ======================================
wte / wpe             token / position embedding [B,T,D]      (token / position ids, read only)
h[i]                  residual stream after the block         residual stream before the block
h[i].ln_1 / ln_2      LayerNorm output [B,T,D] (*)            residual stream (read only copy)
h[i].attn.c_attn      fused q|k|v buffer [B,T,3D] (view)      ln_1 output (*)
h[i].attn.c_proj      attention output [B,T,D] (view)         z, heads concatenated [B,T,D] (view)
h[i].attn             (attention output, None)                ln_1 output (*)
h[i].mlp.c_fc         MLP pre-activation [B,T,4D] (view)      ln_2 output (*)
h[i].mlp.act          MLP post-activation [B,T,4D] (view)     MLP pre-activation (view)
h[i].mlp.c_proj       MLP output [B,T,D] (view)               MLP post-activation (view)
h[i].mlp              MLP output [B,T,D] (view)               ln_2 output (*)
ln_f                  final LayerNorm output (*)              residual stream (read only copy)
lm_head               logits [B,T,V] (view)                   ln_f output (*)
====================  =====================================  ======================================

"(view)": the array is the C buffer itself; edits in place, or an array of the
same shape returned by the hook, change the rest of the pass. "(*)": the C core
keeps the LayerNorm output before its affine weights; the hook gets
``normalized * weight + bias`` as a new array, and edits to it (in place or
returned) are mapped back through the affine (so a LayerNorm weight with a zero
raises ValueError). "read only copy": edits are ignored.

Differences from torch worth knowing: hooks on modules served by the same C
point (``ln_1`` forward and ``c_attn`` pre-hook, ``attn.c_proj`` and ``attn``
forward, ...) run in registration order, not module order; ``wpe``'s output is
[B,T,D] (HF: [1,T,D], the same rows).

Backward hooks: ``register_full_backward_hook(fn(module, grad_input, grad_output))`` and
``register_full_backward_pre_hook(fn(module, grad_output))`` with torch's contract run in
``out.backward(metric="loss")`` on an output of the model (the C gradient pass; see
:mod:`~mechinterp_c.transformers.backward_hooks` for the gradient each module sees and
which ones a hook may replace). ``ln_1`` / ``ln_2`` refuse them (their gradients are
no hook point's).

Loading is zero-copy: ``from_pretrained`` maps the safetensors file(s)
copy-on-write and the C core reads every float32 weight in place (HF's layouts
are the C core's: ``c_attn.weight`` [D, 3D] is ``W_qkv`` [D,3,H,Dh]). The
``.weight``/``.bias`` views are writable: an edit touches this process's private
copy of that page, never the file. ``lm_head`` is tied to ``wte`` as in HF (the
unembedding reads ``wte.weight`` transposed in place; ``lm_head.weight is``
``wte.weight``), so an edit of one is an edit of both. F16/BF16 checkpoints are
converted to float32 once at load. The C backward does not read mapped weights:
training the underlying model needs :meth:`GPT2LMHeadModel.materialize` first
(a clear error says so otherwise).

bfloat16: ``from_pretrained(..., torch_dtype=torch.bfloat16)`` (or ``dtype="bfloat16"``)
stores ``wte``, ``c_attn``, ``c_proj``, ``c_fc`` weights (and an untied ``lm_head``) as
bfloat16: a BF16 checkpoint is mapped and read in place, an F32 one converted once;
biases, LayerNorms and ``wpe`` stay float32 with bfloat16-rounded values. Their
``.weight`` is then the stored bfloat16 bit patterns, a uint16 view (NumPy has no
bfloat16): ``mechinterp_c.ops.from_bfloat16(w)`` gives float32, and an edit must write
``ops.to_bfloat16(x)``. Activations, hooks and outputs stay float32; training is refused.

Arrays handed to hooks and outputs are :class:`HFArray`, a NumPy ndarray subclass
that also answers the torch-style calls notebooks make (``.detach()``,
``.cpu()``, ``.numpy()``, ``.view(*shape)``, ``.clone()``). They are views of the
per-call arena and stay valid after later calls.
"""
from __future__ import annotations

import weakref

import numpy as np

from .. import _core, ops
from .. import io as _io
from ..config import GPT2Config
from ..hooked_transformer import HookedTransformer
from ..loading_from_pretrained import convert_gpt2_config
from ..utils import to_numpy
from .backward_hooks import BackwardMixin, run_backward
from .cache_utils import cache_inputs
from .generation_utils import GenerationMixin
from ..array_type import to_user
from .modeling_utils import (HFArray, Module, ModuleList, RemovableHandle, _AffineSite, _hf, _same,
                             check_model_args, get_array_type, set_array_type, write_pretrained)

__all__ = ["GPT2Config", "GPT2LMHeadModel", "GPT2Model", "HFArray", "CausalLMOutput",
           "set_array_type", "get_array_type"]


def causal_lm_loss(logits, labels):
    """Hugging Face's causal-LM loss: mean cross-entropy of ``logits[:, :-1]`` [B, T-1, V]
    against ``labels[:, 1:]`` over the labels other than -100 (NaN when there are none,
    as HF). Log-softmax in float64 one sequence at a time; the result is float32."""
    B, T, V = logits.shape
    lab = np.asarray(to_numpy(labels))
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels: expected integer ids, got dtype {lab.dtype}")
    if lab.size != B * T:
        raise ValueError(f"labels: expected shape {(B, T)} like input_ids, got {lab.shape}")
    tgt = lab.reshape(B, T)[:, 1:].astype(np.int64)
    keep = tgt != -100
    bad = keep & ((tgt < 0) | (tgt >= V))
    if bad.any():
        raise ValueError(f"labels: ids must be in [0, {V}) or -100 (ignored), got "
                         f"{int(tgt[bad][0])}")
    total, n = 0.0, int(keep.sum())
    for b in range(B):
        rows = np.nonzero(keep[b])[0]
        if rows.size == 0:
            continue
        x = logits[b, rows].astype(np.float64)
        m = x.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(x - m).sum(axis=-1)) + m[:, 0]
        total += float((lse - x[np.arange(rows.size), tgt[b, rows]]).sum())
    return np.float32(total / n) if n else np.float32(np.nan)


class _ListEntryHandle:
    """Removes one entry from a list of Python-level hooks."""

    def __init__(self, lst, entry):
        self._lst, self._entry = lst, entry

    def remove(self):
        if self._entry in self._lst:
            self._lst.remove(self._entry)


def _run_pre_hook(module, fn, with_kwargs, args, kwargs):
    """Run one Python-level pre-hook; returns the (possibly replaced) args and kwargs."""
    if with_kwargs:
        ret = fn(module, args, kwargs)
        if ret is None:
            return args, kwargs
        if not (isinstance(ret, tuple) and len(ret) == 2):
            raise TypeError("a forward pre-hook with with_kwargs=True must return None or a "
                            "tuple (args, kwargs)")
        return tuple(ret[0]), dict(ret[1])
    ret = fn(module, args)
    if ret is None:
        return args, kwargs
    return (ret if isinstance(ret, tuple) else (ret,)), kwargs


class CausalLMOutput(dict):
    """HF's ``CausalLMOutputWithCrossAttentions``: ``out.logits`` and ``out["logits"]``.

    ``out.backward(metric="loss")`` differentiates a metric of the logits of the call that
    made ``out`` and runs the modules' backward hooks (``register_full_backward_hook`` /
    ``register_full_backward_pre_hook``; see ``mechinterp_c.transformers.backward_hooks``).
    """

    def backward(self, metric="loss", labels=None):
        """Run the backward pass of ``metric`` for the call that made this output, calling
        the registered backward hooks; returns the metric's value (a float).

        There is no autograd graph on these arrays: the C core recomputes the forward of
        the same input ids, mask and positions (forward hooks run again) and computes the
        gradients at every point a backward hook needs. ``metric``: ``"loss"`` is Hugging
        Face's causal-LM loss (``labels`` of the call, or given here, defaulting to the
        input ids: ``logits[:, :-1]`` against ``labels[:, 1:]``, -100 ignored); a
        ``mechinterp_c.metrics`` built-in (``metrics.logit_diff(answer, wrong, pos)``,
        ``metrics.logprob(tokens, pos)``); or a function ``logits -> (value,
        dvalue_dlogits)`` of NumPy arrays (float32 gradient of the logits' shape)::

            out = model(input_ids)
            model.transformer.h[3].register_full_backward_hook(
                lambda mod, grad_input, grad_output: print(grad_output[0].shape))
            loss = out.backward(metric="loss")
        """
        run = self.__dict__.get("_backward")
        if run is None:
            raise RuntimeError("backward(): this output has no pass to differentiate (outputs of "
                               "calls with past_key_values / use_cache, or built by a hook, have none)")
        return run(metric, labels)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.values())[key]
        return dict.__getitem__(self, key)


class _Param:
    """Holder of HF-layout parameter views (set in ``_bind_params``)."""


def _x(x, where):
    """A float32 NumPy array of an array, HFArray or tensor given to a module call."""
    a = np.asarray(to_numpy(x))
    if a.dtype.kind != "f":
        raise TypeError(f"{where}: expected a float array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


class Embedding(Module):
    """``wte`` / ``wpe``: ``.weight`` [num, D]; forward hook output is the embedding.
    Called on ids it returns their rows of ``weight``."""

    def __init__(self, model, name, point):
        super().__init__(model, name, (point, _same, None))

    def _forward_np(self, ids):
        ids = np.asarray(to_numpy(ids))
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{self._name}: expected integer ids, got dtype {ids.dtype}")
        w = self._np("weight")
        if ids.size and (ids.min() < 0 or ids.max() >= w.shape[0]):
            raise IndexError(f"{self._name}: ids must be in [0, {w.shape[0]}), got "
                             f"[{ids.min()}, {ids.max()}]")
        return w[ids]


class LayerNorm(Module):
    """``ln_1`` / ``ln_2`` / ``ln_f``: ``.weight``, ``.bias`` [D]."""

    def __init__(self, model, name, norm_point, in_point, affine, eps=1e-5):
        super().__init__(model, name, (norm_point, _same, affine),
                         (in_point, _same, None, True) if in_point else None)
        self.eps = eps

    def _forward_np(self, x):
        return ops.layer_norm(_x(x, self._name), self._np("weight"), self._np("bias"), self.eps)


class Conv1D(Module):
    """HF's Conv1D (``y = x @ weight + bias``, weight [in, out])."""

    def _forward_np(self, x):
        return ops.matmul(_x(x, self._name), self._np("weight"), self._np("bias"))


class Linear(Module):
    """``lm_head``: ``nn.Linear`` without bias (``y = x @ weight.T``, weight [V, D])."""

    def _forward_np(self, x):
        return ops.matmul(_x(x, self._name), np.ascontiguousarray(self._np("weight").T))


class Activation(Module):
    """``mlp.act`` (gelu_new)."""

    def _forward_np(self, x):
        return ops.gelu(_x(x, self._name), approximate="tanh")


class GPT2Attention(Module):
    """``h[i].attn``: ``c_attn``, ``c_proj``; forward hook output is ``(attn_output, None)``.
    Called on hidden states [B, T, D] it returns ``(attn_output, None)`` as HF's (causal
    attention; ``attention_mask`` [B, T] of 1 keep / 0 pad masks padded keys)."""

    def _wrap_output(self, out):
        return (out, None)

    def _forward_np(self, hidden_states, attention_mask=None):
        x = _x(hidden_states, self._name)
        squeeze = x.ndim == 2
        if squeeze:
            x = x[None]
        B, T, D = x.shape
        H = self.num_heads
        qkv = self.c_attn._forward_np(x).reshape(B, T, 3, H, D // H)
        mask = None
        if attention_mask is not None:
            mask = np.ascontiguousarray(np.asarray(to_numpy(attention_mask)).reshape(B, T) != 0,
                                        dtype=np.float32)
        z = ops.attention(qkv, None, None, causal=True, padding_mask=mask)
        out = self.c_proj._forward_np(z.reshape(B, T, D))
        return (out[0] if squeeze else out), None


class GPT2MLP(Module):
    """``h[i].mlp``: ``c_fc``, ``act``, ``c_proj``."""

    def _forward_np(self, x):
        return self.c_proj._forward_np(self.act._forward_np(self.c_fc._forward_np(x)))


class GPT2Block(Module):
    """``h[i]``: ``ln_1``, ``attn``, ``ln_2``, ``mlp``. Called on hidden states it returns
    the block's output hidden states (HF 5's ``GPT2Block`` returns the tensor)."""

    _grad_input_extra = 3   # torch's grad_input: (hidden states, then 3 non-tensor arguments)

    def _forward_np(self, hidden_states, attention_mask=None):
        x = _x(hidden_states, self._name)
        x = x + self.attn._forward_np(self.ln_1._forward_np(x), attention_mask)[0]
        return x + self.mlp._forward_np(self.ln_2._forward_np(x))


class _CoreModel(HookedTransformer):
    """The HookedTransformer behind a :class:`GPT2LMHeadModel`. Its TransformerLens
    module tree (``blocks[i].attn``, ``mod_dict``, ...), which the HF model never
    uses, is built on first access only: that keeps ``from_pretrained`` cheap."""

    def _make_modules(self):
        self.__dict__["_modules_pending"] = True

    def __getattr__(self, name):
        d = self.__dict__
        if d.get("_modules_pending"):
            d["_modules_pending"] = False
            HookedTransformer._make_modules(self)
            return getattr(self, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def materialize(self):
        """Copy weights read in place from a checkpoint into the model's own memory and
        untie the unembedding (what training through the C core needs)."""
        self._core.materialize()
        self._rebind()


class GPT2Model(Module):
    """``model.transformer``: ``wte``, ``wpe``, ``h``, ``ln_f``. Calling it returns HF's
    ``BaseModelOutput``-like object with ``last_hidden_state`` (after ln_f) [B,T,D]
    (the pass still runs the unembedding: it is one C forward). Its forward hooks see
    that object; one returning another (or an array, or a tuple whose first item is one)
    replaces ``last_hidden_state`` and so the logits. Its pre-hooks see ``(input_ids,)``
    and run before the pass (after the root model's pre-hooks, as in HF)."""

    def _wrap_output(self, out):
        return CausalLMOutput(last_hidden_state=out)

    def _unwrap_return(self, ret):
        if isinstance(ret, dict):
            return ret["last_hidden_state"]
        return ret

    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        """Register ``hook(module, (input_ids,))`` (``with_kwargs``: ``hook(module, args,
        kwargs)``); a returned tuple (or ids) replaces the input ids. Returns a handle."""
        return self._model_ref()._add_py_hook("tr_pre", self, hook, with_kwargs, prepend)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        """``.last_hidden_state`` (and ``.hidden_states`` when asked) of ``input_ids``."""
        want_hs = kwargs.pop("output_hidden_states", False)
        out = self._model_ref()(input_ids, attention_mask=attention_mask,
                                output_hidden_states=True, **kwargs)
        res = CausalLMOutput(last_hidden_state=out["hidden_states"][-1])
        if want_hs:
            res["hidden_states"] = out["hidden_states"]
        if "attentions" in out:
            res["attentions"] = out["attentions"]
        return res

    __call__ = forward


# --------------------------------------------------------------------- model
def _open_checkpoint(name_or_path, revision, cache_dir, copy=False):
    """``{HF tensor name without "transformer.": (full name, SafeTensors)}`` of a
    checkpoint (one file or shards), mapped but not read (``copy``: read into memory)."""
    return {(k[len("transformer."):] if k.startswith("transformer.") else k): (k, st)
            for k, st in _io.open_checkpoint(name_or_path, revision=revision,
                                             cache_dir=cache_dir, copy=copy).items()}


def _copy_transposed(dst, src):
    """``dst[...] = src.T`` for a [V, D] -> [D, V] copy, blocked over V (2x faster
    than one strided copy); a uint16 (bfloat16) ``dst`` gets float ``src`` rounded."""
    for i in range(0, src.shape[0], 2048):
        _assign(dst[:, i:i + 2048], src[i:i + 2048].T)


def _assign(dst, src):
    """``dst[...] = src`` where ``dst`` is float32 or bfloat16 bit patterns (uint16)."""
    if dst.dtype == np.uint16 and src.dtype != np.uint16:
        src = _core.to_bfloat16(src)
    elif dst.dtype != np.uint16 and src.dtype == np.uint16:
        src = _core.from_bfloat16(src)
    dst[...] = src


def _need(sd, key, shape, where):
    if key not in sd:
        raise KeyError(f"{where}: checkpoint has no tensor {key!r}")
    a = sd[key]
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{where}: tensor {key!r} has shape {tuple(a.shape)}, the config "
                         f"implies {tuple(shape)}")
    return a



def _hf_tensor_map(cfg):
    """(C blob name, HF GPT-2 tensor name, HF shape) for every weight but lm_head. HF's
    Conv1D layouts are the blob's: c_attn [D, 3D] is W_qkv [D, 3, H, Dh], c_proj [D, D]
    is W_O [H, Dh, D]."""
    D, L = cfg.n_embd, cfg.n_layer
    M = cfg.n_inner or 4 * D
    yield "embed.W_E", "wte.weight", (cfg.vocab_size, D)
    yield "pos_embed.W_pos", "wpe.weight", (cfg.n_positions, D)
    for l in range(L):
        h, b = f"h.{l}.", f"blocks.{l}."
        yield b + "ln1.w", h + "ln_1.weight", (D,)
        yield b + "ln1.b", h + "ln_1.bias", (D,)
        yield b + "attn.W_qkv", h + "attn.c_attn.weight", (D, 3 * D)
        yield b + "attn.b_qkv", h + "attn.c_attn.bias", (3 * D,)
        yield b + "attn.W_O", h + "attn.c_proj.weight", (D, D)
        yield b + "attn.b_O", h + "attn.c_proj.bias", (D,)
        yield b + "ln2.w", h + "ln_2.weight", (D,)
        yield b + "ln2.b", h + "ln_2.bias", (D,)
        yield b + "mlp.W_in", h + "mlp.c_fc.weight", (D, M)
        yield b + "mlp.b_in", h + "mlp.c_fc.bias", (M,)
        yield b + "mlp.W_out", h + "mlp.c_proj.weight", (M, D)
        yield b + "mlp.b_out", h + "mlp.c_proj.bias", (D,)
    yield "ln_final.w", "ln_f.weight", (D,)
    yield "ln_final.b", "ln_f.bias", (D,)


class GPT2LMHeadModel(Module, GenerationMixin, BackwardMixin):
    """Hugging Face's ``GPT2LMHeadModel`` on the C transformer (inference only).

    Build with :meth:`from_pretrained`. ``model(input_ids, attention_mask=None)``
    returns an output with ``.logits`` [batch, pos, vocab] (NumPy, an arena view).
    ``model.transformer.h[i].attn.c_attn`` etc. carry ``.weight``/``.bias`` as
    writable views of the C parameters in HF layout and take forward hooks and
    pre-hooks (see the module docstring for what each hook sees).
    """

    def __init__(self, config, _checkpoint=None, _bf16=False):
        super().__init__(None, "model")
        self._model_ref = weakref.ref(self)
        self.config = config if isinstance(config, GPT2Config) else GPT2Config(**dict(config))
        tl_cfg = convert_gpt2_config(self.config)
        if _bf16:
            tl_cfg["dtype"] = "bfloat16"
        self._ht = _CoreModel(tl_cfg)
        # HF ties lm_head to wte: the C unembedding reads W_E transposed in place, and
        # the TransformerLens views (W_U: a view of W_E^T) are re-read to match
        self._ht._core.tied_unembed = bool(getattr(self.config, "tie_word_embeddings", True))
        self._ht._rebind()
        self._ht._pos_pid = self._ht.hook_dict["hook_pos_embed"].point_id
        if _checkpoint is not None:
            self._map_checkpoint(*_checkpoint)
        self._build_tree()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, revision="main",
                        cache_dir=None, copy=False, **kwargs):
        """Load ``config.json`` and the safetensors weights of a local directory or of a
        model in the Hugging Face cache (no network). The weights are not copied: the
        file is mapped copy-on-write and the C core reads them in place (see the module
        docstring), so it must not be truncated or written over in place while the model
        lives (each forward checks, and raises OSError naming the file if it was).
        ``copy=True`` reads the files into private memory once instead (same model, tied
        weights included; the files may then change).

        ``torch_dtype`` / ``dtype``: float32 or "auto" (F16/BF16 checkpoints are
        converted to float32 once), or bfloat16 (weights stored as bfloat16, a BF16
        checkpoint read in place; see the module docstring); ``device_map``: None or "cpu". HF keywords about
        fetching or trust (``local_files_only``, ``trust_remote_code``, ``token``,
        ``low_cpu_mem_usage``, ``use_safetensors=True``) are accepted: nothing is
        fetched and the weights are always mapped from safetensors. Anything else raises,
        naming it (another dtype: NotImplementedError; another device: ValueError; an
        unknown keyword: TypeError)."""
        bf16 = check_model_args(model_args, kwargs, "GPT2LMHeadModel.from_pretrained",
                                allow_bf16=True)
        cfg = GPT2Config.from_pretrained(pretrained_model_name_or_path, revision=revision,
                                         cache_dir=cache_dir)
        cfg._name_or_path = str(pretrained_model_name_or_path)
        files = _open_checkpoint(pretrained_model_name_or_path, revision, cache_dir, copy=copy)
        return cls(cfg, _checkpoint=(files, str(pretrained_model_name_or_path)), _bf16=bf16)

    def _map_checkpoint(self, files, where):
        """Point every C parameter at its tensor in the mapped checkpoint ``files``
        (from :func:`_open_checkpoint`); shapes are checked against the config first."""
        cfg, core, raw = self.config, self._ht._core, self._ht._raw
        D, V = cfg.n_embd, cfg.vocab_size
        used = set()

        def put(dst, key, shape):
            if key not in files:
                raise KeyError(f"{where}: checkpoint has no tensor {key!r}")
            full, st = files[key]
            got = st.shape(full)
            if got != tuple(shape):
                raise ValueError(f"{where}: tensor {key!r} has shape {got}, the config "
                                 f"implies {tuple(shape)}")
            if raw[dst].dtype == np.uint16:     # bfloat16: in place from a BF16 file
                core.set_param(dst, st.get_bfloat16(full, writable=True))
            elif core.bf16:                     # float32 holding bfloat16-rounded values
                core.set_param(dst, _core.from_bfloat16(st.get_bfloat16(full)))
            else:
                core.set_param(dst, st.get_float32(full, writable=True))
            used.add(key)

        for dst, key, shape in _hf_tensor_map(cfg):
            put(dst, key, shape)
        used.update(f"h.{l}.attn.{buf}" for l in range(cfg.n_layer) for buf in ("bias", "masked_bias"))
        if "lm_head.weight" in files:
            full, st = files["lm_head.weight"]
            if st.shape(full) != (V, D):
                raise ValueError(f"{where}: tensor 'lm_head.weight' has shape "
                                 f"{st.shape(full)}, expected {(V, D)}")
            if not core.tied_unembed:          # untied checkpoints: W_U = lm_head^T, a copy
                src = st.get_bfloat16(full) if core.bf16 else st.get_float32(full)
                _copy_transposed(self._ht._raw["unembed.W_U"], src)
            used.add("lm_head.weight")
        elif not core.tied_unembed:
            raise KeyError(f"{where}: tie_word_embeddings is false but the checkpoint has no "
                           f"'lm_head.weight'")
        extra = sorted(set(files) - used)
        if extra:
            raise KeyError(f"{where}: unexpected tensor(s) {extra[:5]} in the GPT-2 checkpoint")
        self._ht._rebind()

    def load_state_dict(self, state_dict, strict=True, where="load_state_dict"):
        """Copy HF-named GPT-2 weights (``transformer.`` prefix optional, arrays or
        tensors) into the C model. ``attn.bias``/``attn.masked_bias`` buffers are skipped."""
        cfg = self.config
        D, V = cfg.n_embd, cfg.vocab_size
        sd = {}
        for k, v in state_dict.items():
            sd[k[len("transformer."):] if k.startswith("transformer.") else k] = \
                np.asarray(to_numpy(v))
        raw = self._ht._raw
        used = set()

        def put(dst, key, shape):
            src = _need(sd, key, shape, where).reshape(raw[dst].shape)
            if self._ht._bf16 and src.dtype != np.uint16 and raw[dst].dtype != np.uint16:
                src = _core.from_bfloat16(_core.to_bfloat16(src))   # bfloat16-rounded values
            _assign(raw[dst], src)
            used.add(key)

        for dst, key, shape in _hf_tensor_map(cfg):
            put(dst, key, shape)
        used.update(f"h.{l}.attn.{buf}" for l in range(cfg.n_layer) for buf in ("bias", "masked_bias"))
        # lm_head: tied to wte (the C unembedding reads W_E in place), else a transposed copy
        head = sd.get("lm_head.weight", sd["wte.weight"])
        if head.shape != (V, D):
            raise ValueError(f"{where}: tensor 'lm_head.weight' has shape {head.shape}, "
                             f"expected {(V, D)}")
        if not self._ht._core.tied_unembed:
            _copy_transposed(raw["unembed.W_U"], head)
        raw["unembed.b_U"][...] = 0.0
        used.add("lm_head.weight")
        extra = sorted(set(sd) - used)
        if strict and extra:
            raise KeyError(f"{where}: unexpected tensor(s) {extra[:5]} in the GPT-2 checkpoint")

    def _build_tree(self):
        cfg, raw = self.config, self._ht._raw
        D, H = cfg.n_embd, cfg.n_head

        def flat(a):            # [B,T,H,Dh] or [B,T,M] -> [B,T,-1] (views: contiguous)
            return a.reshape(a.shape[0], a.shape[1], -1)

        def fused_qkv(q):       # q view [B,T,H,Dh] at the start of the fused buffer
            B, T = q.shape[:2]
            return np.lib.stride_tricks.as_strided(q, (B, T, 3 * D),
                                                   (q.strides[0], q.strides[1], q.itemsize))

        eps = float(getattr(cfg, "layer_norm_epsilon", 1e-5))
        tr = GPT2Model(self, "transformer")
        tr.wte = Embedding(self, "transformer.wte", "hook_embed")
        tr.wte.weight = raw["embed.W_E"]
        tr.wpe = Embedding(self, "transformer.wpe", "hook_pos_embed")
        tr.wpe.weight = raw["pos_embed.W_pos"]
        tr.h = ModuleList()
        for l in range(cfg.n_layer):
            p, n = f"blocks.{l}.", f"transformer.h.{l}."
            ln1 = _AffineSite(raw[p + "ln1.w"], raw[p + "ln1.b"], n + "ln_1")
            ln2 = _AffineSite(raw[p + "ln2.w"], raw[p + "ln2.b"], n + "ln_2")
            ln1_pre = (p + "ln1.hook_normalized", _same, ln1, False)
            ln2_pre = (p + "ln2.hook_normalized", _same, ln2, False)
            blk = GPT2Block(self, n[:-1], (p + "hook_resid_post", _same, None),
                            (p + "hook_resid_pre", _same, None, False))
            blk.ln_1 = LayerNorm(self, n + "ln_1", p + "ln1.hook_normalized", p + "hook_resid_pre", ln1, eps)
            blk.ln_1.weight, blk.ln_1.bias = raw[p + "ln1.w"], raw[p + "ln1.b"]
            attn = GPT2Attention(self, n + "attn", (p + "hook_attn_out", _same, None), ln1_pre)
            attn.c_attn = Conv1D(self, n + "attn.c_attn", (p + "attn.hook_q", fused_qkv, None), ln1_pre)
            attn.c_attn.weight = raw[p + "attn.W_qkv"].reshape(D, 3 * D)
            attn.c_attn.bias = raw[p + "attn.b_qkv"].reshape(3 * D)
            attn.c_proj = Conv1D(self, n + "attn.c_proj", (p + "hook_attn_out", _same, None),
                                 (p + "attn.hook_z", flat, None, False))
            attn.c_proj.weight = raw[p + "attn.W_O"].reshape(D, D)
            attn.c_proj.bias = raw[p + "attn.b_O"]
            attn.num_heads, attn.head_dim, attn.embed_dim = H, D // H, D
            blk.attn = attn
            blk.ln_2 = LayerNorm(self, n + "ln_2", p + "ln2.hook_normalized", p + "hook_resid_mid", ln2, eps)
            blk.ln_2.weight, blk.ln_2.bias = raw[p + "ln2.w"], raw[p + "ln2.b"]
            mlp = GPT2MLP(self, n + "mlp", (p + "hook_mlp_out", _same, None), ln2_pre)
            mlp.c_fc = Conv1D(self, n + "mlp.c_fc", (p + "mlp.hook_pre", _same, None), ln2_pre)
            mlp.c_fc.weight, mlp.c_fc.bias = raw[p + "mlp.W_in"], raw[p + "mlp.b_in"]
            mlp.act = Activation(self, n + "mlp.act", (p + "mlp.hook_post", _same, None),
                                 (p + "mlp.hook_pre", _same, None, False))
            mlp.c_proj = Conv1D(self, n + "mlp.c_proj", (p + "hook_mlp_out", _same, None),
                                (p + "mlp.hook_post", _same, None, False))
            mlp.c_proj.weight, mlp.c_proj.bias = raw[p + "mlp.W_out"], raw[p + "mlp.b_out"]
            blk.mlp = mlp
            tr.h.append(blk)
            tr._children[f"h.{l}"] = blk
        lnf = _AffineSite(raw["ln_final.w"], raw["ln_final.b"], "transformer.ln_f")
        tr.ln_f = LayerNorm(self, "transformer.ln_f", "ln_final.hook_normalized",
                            f"blocks.{cfg.n_layer - 1}.hook_resid_post", lnf, eps)
        tr._fwd = ("ln_final.hook_normalized", _same, lnf)
        tr.ln_f.weight, tr.ln_f.bias = raw["ln_final.w"], raw["ln_final.b"]
        self.transformer = tr
        self.lm_head = Linear(self, "lm_head", ("unembed.hook_out", _same, None),
                              ("ln_final.hook_normalized", _same, lnf, False))
        # HF's lm_head.weight [V, D]: tied, it is wte.weight itself; else a view of W_U
        self.lm_head.weight = tr.wte._np("weight") if self._ht._core.tied_unembed else raw["unembed.W_U"].T

    # ---------------------------------------------------------------- calls
    def tie_weights(self):
        """HF's ``tie_weights``: afterwards ``lm_head`` computes with ``wte.weight``. With
        ``tie_word_embeddings`` (GPT-2's default) they already share memory and this
        does nothing; otherwise ``wte.weight`` is copied into the unembedding."""
        if self._ht._core.tied_unembed:
            return
        _copy_transposed(self._ht._raw["unembed.W_U"], self.transformer.wte._np("weight"))

    def materialize(self):
        """Copy every weight read in place from the mapped checkpoint into the model's own
        memory (and untie ``lm_head`` into its own copy of ``wte``'s transpose). The
        logits do not change; afterwards the underlying C model can be trained. The
        ``.weight``/``.bias`` views are rebuilt (take them again from the modules);
        registered hooks stay."""
        self._ht.materialize()
        self._build_tree()

    def get_input_embeddings(self):
        """``transformer.wte``."""
        return self.transformer.wte

    def get_output_embeddings(self):
        """``lm_head``."""
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, return_dict=True,
                **kwargs):
        """Logits of ``input_ids`` [batch, pos] (or [pos]) as ``out.logits``.

        ``attention_mask`` [batch, pos] (1 real, 0 padding) masks padded keys as HF
        does, with positions 0..T-1 unless ``position_ids`` are given (HF's rule).
        Every row matches HF, padded ones included: a right-padded token attends to
        the real tokens before it; a left-padded one attends to nothing and gets a
        zero attention output, as HF's default SDPA attention gives it.
        ``output_hidden_states`` / ``output_attentions`` add ``out.hidden_states``
        (L+1 arrays [B,T,D], the last after ln_f, as HF) and ``out.attentions``
        (L patterns [B,H,T,T]), zero-copy views of the pass's arena.
        ``labels`` [batch, pos] adds ``out.loss`` (first, as HF): the mean next-token
        cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]`` over labels other
        than -100 (HF's shift and ignore index; float64 log-softmax, float32 result).
        ``token_type_ids`` (from tokenizers) is accepted when all zero; other HF
        arguments raise NotImplementedError.

        ``use_cache=True`` returns ``out.past_key_values``, a ``DynamicCache`` (keys and
        values in the C core); ``past_key_values=cache`` runs ``input_ids`` as the
        positions after the cached ones, attending over the cached keys too, and grows the
        cache. ``attention_mask`` then covers cached + new positions [batch, past + pos]
        (its cached part must be the mask the cache was filled with); positions default
        to past..past+pos-1 (HF's rule; ``generate`` passes them from the mask). Unlike
        HF, whose config turns ``use_cache`` on by default, a cache is only made when
        asked for.
        """
        labels = kwargs.pop("labels", None)
        tt = kwargs.pop("token_type_ids", None)
        if tt is not None and np.any(np.asarray(to_numpy(tt)) != 0):
            raise NotImplementedError("token_type_ids other than 0 are not supported")
        output_attentions = bool(kwargs.pop("output_attentions", False))
        output_hidden_states = bool(kwargs.pop("output_hidden_states", False))
        use_cache = kwargs.pop("use_cache", None)
        past = kwargs.pop("past_key_values", None)
        if kwargs:
            raise NotImplementedError(f"GPT2LMHeadModel: unsupported argument(s) {sorted(kwargs)}")
        if input_ids is None:
            raise TypeError("GPT2LMHeadModel: input_ids is required")
        ht = self._ht
        tokens = ht._tokens(input_ids)
        c = self.config
        cache_obj, kv, pos, mask, padded = cache_inputs(
            past, use_cache, tokens.shape, attention_mask, position_ids,
            (c.n_layer, c.n_head, c.n_embd // c.n_head, c.n_positions))
        flags = bytearray(ht._n_points)
        L = self.config.n_layer
        hd, want = ht.hook_dict, []
        if output_hidden_states:
            want += [f"blocks.{l}.hook_resid_pre" for l in range(L)] + ["ln_final.hook_normalized"]
        if output_attentions:
            want += [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
        for n in want:
            flags[hd[n].point_id] |= _core.HOOK_CACHE
        any_cb = False
        for hp in ht.hook_dict.values():
            if hp._handles:
                flags[hp.point_id] |= _core.HOOK_CALLBACK
                any_cb = True
        points = ht._points
        pos_pid = ht._pos_pid
        if padded is not None:
            # The C core zeroes the position embedding of padded tokens (TransformerLens's
            # rule); HF adds wpe at every position, so put those rows back: then padded
            # query rows match HF too, not only the real tokens.
            flags[pos_pid] |= _core.HOOK_CALLBACK
            any_cb = True
            W_pos = self.transformer.wpe._np("weight")

        def dispatch(pid, act):
            if pid == pos_pid and padded is not None:
                act[padded] = W_pos[pos[padded]]
            points[pid].run(act)

        logits, cache = ht._core.forward(tokens, bytes(flags), dispatch if any_cb else None,
                                         pos, mask, -1, kv_cache=kv)
        out = CausalLMOutput(logits=_hf(logits))
        if labels is not None:
            out = CausalLMOutput(loss=to_user(causal_lm_loss(logits, labels)), logits=out["logits"])
        if kv is None:
            out.__dict__["_backward"] = lambda metric, lab: run_backward(
                self, tokens, pos, mask, labels if lab is None else lab, metric,
                dispatch, [pos_pid] if padded is not None else [])
        if cache_obj is not None:
            out["past_key_values"] = cache_obj
        if output_hidden_states:
            # HF: the embeddings, each block's input, and the last one after ln_f
            hs = [cache[hd[f"blocks.{l}.hook_resid_pre"].point_id] for l in range(L)]
            lnf = self.transformer.ln_f
            hs.append(cache[hd["ln_final.hook_normalized"].point_id] * lnf._np("weight") + lnf._np("bias"))
            out["hidden_states"] = tuple(_hf(h) for h in hs)
        if output_attentions:
            out["attentions"] = tuple(_hf(cache[hd[f"blocks.{l}.attn.hook_pattern"].point_id])
                                      for l in range(L))
        return out if return_dict else tuple(out.values())   # HF's order: loss, logits, cache, ...

    def __call__(self, *args, **kwargs):
        """``forward`` with the hooks registered on this root module and the pre-hooks of
        ``model.transformer`` around it (torch's ``Module.__call__`` order: the root's
        pre-hooks, the transformer's pre-hooks, the pass, the root's forward hooks)."""
        hooks = self.__dict__.get("_py_hooks")
        if not hooks or not any(hooks.values()):
            return self.forward(*args, **kwargs)
        for mod, fn, wk in list(hooks["pre"]):
            args, kwargs = _run_pre_hook(mod, fn, wk, args, kwargs)
        if hooks["tr_pre"]:
            ids = args[0] if args else kwargs.pop("input_ids", None)
            rest = args[1:]
            tr_args, tr_kwargs = (ids,), {}
            for mod, fn, wk in list(hooks["tr_pre"]):
                tr_args, tr_kwargs = _run_pre_hook(mod, fn, wk, tr_args, tr_kwargs)
            if tr_kwargs:
                raise ValueError(f"a pre-hook on transformer returned keyword arguments "
                                 f"{sorted(tr_kwargs)}; only the input ids can be replaced")
            args = (tr_args[0],) + rest
        out = self.forward(*args, **kwargs)
        for mod, fn, wk in list(hooks["fwd"]):
            ret = fn(mod, args, kwargs, out) if wk else fn(mod, args, out)
            if ret is not None:
                out = ret
        return out

    def _add_py_hook(self, kind, module, hook, with_kwargs, prepend):
        """Keep a hook that runs in Python around the pass (see ``__call__``)."""
        if not callable(hook):
            raise TypeError(f"{module._name}: hook must be callable, got {type(hook).__name__}")
        lst = self.__dict__.setdefault("_py_hooks", {"pre": [], "tr_pre": [], "fwd": []})[kind]
        entry = (module, hook, bool(with_kwargs))
        lst.insert(0, entry) if prepend else lst.append(entry)
        return RemovableHandle([_ListEntryHandle(lst, entry)])

    def register_forward_hook(self, hook, *, prepend=False, with_kwargs=False, always_call=False):
        """Register ``hook(model, args, output)`` (``with_kwargs``: ``hook(model, args,
        kwargs, output)``) on the whole model: it sees the output object (``.logits``,
        ``.loss``, ...) and a non-None return replaces it. Returns a handle."""
        return self._add_py_hook("fwd", self, hook, with_kwargs, prepend)

    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        """Register ``hook(model, args)`` (``with_kwargs``: ``hook(model, args, kwargs)``
        returning None or ``(args, kwargs)``); a returned tuple replaces the positional
        arguments of the call. Returns a handle."""
        return self._add_py_hook("pre", self, hook, with_kwargs, prepend)

    def save_pretrained(self, save_directory, safe_serialization=True, is_main_process=True,
                        state_dict=None, **kwargs):
        """Write ``config.json`` and ``model.safetensors`` (HF's names, ``transformer.``
        prefix; ``lm_head.weight`` only when untied, as HF writes it) into
        ``save_directory``: ``transformers.GPT2LMHeadModel.from_pretrained`` loads it.
        Only safetensors is written (``safe_serialization=False`` raises); the weights
        are the model's current ones (``state_dict`` overrides them by HF name)."""
        tied = bool(self._ht._core.tied_unembed)
        tensors = {}
        for _, key, shape in _hf_tensor_map(self.config):
            mod, attr = key.rsplit(".", 1)
            tensors["transformer." + key] = self.get_submodule("transformer." + mod)._np(attr)
        if not tied:
            tensors["lm_head.weight"] = self.lm_head._np("weight")
        if state_dict is not None:   # the transformer. prefix is optional there
            state_dict = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v
                          for k, v in state_dict.items()}
        cfg = {k: v for k, v in self.config.to_dict().items() if not k.startswith("_")}
        cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2", tie_word_embeddings=tied)
        write_pretrained(save_directory, tensors, cfg, safe_serialization, is_main_process,
                         state_dict, kwargs)

    def num_parameters(self):
        """Number of parameters (lm_head counted once, as HF's tied model)."""
        c = self.config
        D, M = c.n_embd, c.n_inner or 4 * c.n_embd
        per = 4 * D + 3 * D * D + 3 * D + D * D + D + 2 * D * M + M + D
        return c.vocab_size * D + c.n_positions * D + c.n_layer * per + 2 * D


