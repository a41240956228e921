"""REVE (``brain-bzh/reve-base``): the EEG encoder as a drop-in, on the C core.

``AutoModel.from_pretrained("brain-bzh/reve-base", trust_remote_code=True)``
returns a :class:`ReveModel` whose module tree has the published PyTorch names::

    model.to_patch_embedding[0]            Linear(patch_size, D) (+ bias)
    model.fourier4d                        FourierEmb4D; .add_time_patch(pos, P)
    model.mlp4d                            Linear(4, D, no bias) -> GELU -> LayerNorm
    model.ln                               LayerNorm(D)
    model.transformer.layers[i][0]         Attention: .norm (RMSNorm), .to_qkv, .to_out
    model.transformer.layers[i][1].net     RMSNorm, Linear(D, 2M), GEGLU, Linear(M, D)

``model(eeg [B, C, T], pos [B or 1, C, 3])`` runs the C front end
(csrc/model/reve_frontend.c) and then the shared C transformer (RMSNorm eps
1e-6, bias-free fused QKV and output, bidirectional attention, GEGLU as
TransformerLens's gated MLP with exact GELU, no final norm, no unembedding)
and returns ``[B, C, P, D]``; ``return_output=True`` returns the residual
stream entering the first block and after every block (depth + 1 arrays
``[B, C*P, D]``), as the published model.

Every module is callable on NumPy arrays (or torch tensors) and takes
``register_forward_hook(fn(module, input, output))``; during ``model(...)`` the
hooks of the transformer's modules are served by the C core's hook points:

===========================  ==========================================  ===============================
module                       forward hook ``output``                     ``input[0]``
===========================  ==========================================  ===============================
layers[i][0] (Attention)     attention output [B,N,D]                    residual stream before it
layers[i][0].norm            RMSNorm output (*)                          residual stream
layers[i][0].to_qkv          fused q|k|v [B,N,3*H*Dh]                    RMSNorm output (*)
layers[i][0].to_out          attention output [B,N,D]                    z, heads concatenated
layers[i][1], .net           feed-forward output [B,N,D]                 resid_mid: residual before it
.net[0]                      RMSNorm output (*)                          resid_mid
.net[1]                      value|gate [B,N,2M]                         RMSNorm output (*)
.net[2] (GEGLU)              value * gelu(gate) [B,N,M]                  value|gate
.net[3]                      feed-forward output [B,N,D]                 GEGLU output
===========================  ==========================================  ===============================

Hooks get copies of the C buffers (so what a hook stores stays valid, while the
C pass needs no arena slot of its own for hooked points: MI_HOOK_TRANSIENT);
edits to the output in place, or an array of the same shape returned by the
hook, are written back before the pass goes on. (*): the C core keeps the
RMSNorm output before its weight; the hook gets ``normalized * weight`` and
edits are mapped back. value and gate live in two C buffers; net[1]'s output
is their concatenation and edits are copied back into both.

Inside a feed-forward hook (``layers[i][1]`` or ``.net``), calling ``net[0]``
on the hook's ``input[0]``, then ``net[1]`` on that result, ... (the notebook's
``module[0](I)`` ... ``module[3](X3)``) returns what the C pass computed for
that step (a copy) when the array is the one handed out and unchanged (checked
element by element), instead of computing the MLP a second time; any other
argument is computed.

Front-end modules (``to_patch_embedding``, ``mlp4d``, ``fourier4d``, ``ln``)
run step by step in their own modules when one of them has a hook.

The same model speaks TransformerLens: ``model.run_with_cache(eeg, pos)`` and
``model.run_with_hooks(eeg, pos, fwd_hooks=[("blocks.3.attn.hook_q", fn)])``
with the usual names (``blocks.{i}.attn.hook_q/k/v/attn_scores/pattern/z``,
``ln1/ln2.hook_scale/normalized``, ``mlp.hook_pre`` (gate),
``mlp.hook_pre_linear`` (value), ``mlp.hook_post``, ``hook_resid_pre/mid/post``...)
plus ``hook_embed`` (patch embeddings) and ``hook_pos_embed`` (4-D position
embeddings) for the front end. ``model.hooked`` is that :class:`HookedReve`.
Hooks registered either way are served by the same C hook points.

Weights: ``.weight`` attributes are writable views of the C parameters, except
``net[1].weight`` (value and gate live in two C tensors): a read-only
concatenation; change it with ``load_state_dict``. Biases of the published
model do not exist; the C core holds zero biases (as TransformerLens does for
bias-free models), so results are identical.
"""
from __future__ import annotations

import weakref

import numpy as np

from .. import _core, ops
from .. import io as _io
from ..activation_cache import ActivationCache
from ..array_type import raw_hook, to_user, torch_mode
from ..config import REVE_CONFIG_FIELDS, PretrainedConfig
from ..hooked_transformer import HookedTransformer, names_filter_fn
from ..reve import PositionBank, ReveFrontEnd
from ..utils import to_numpy
from .modeling_utils import HFArray, Module, ModuleList, RemovableHandle, _AffineSite, _hf, _same, _write_back

__all__ = ["ReveConfig", "ReveModel", "HookedReve", "ReveArray", "load_position_bank",
           "is_reve_config", "is_position_bank_dir", "RevePositionBank"]


# --------------------------------------------------------------------- arrays
class ReveArray(HFArray):
    """:class:`HFArray` plus ``unsqueeze(dim)`` (what the notebook calls on ``pos_bank(...)``)."""

    def unsqueeze(self, dim):
        """torch's ``unsqueeze``: a new axis of size 1 at ``dim`` (a view)."""
        return np.expand_dims(self, dim)


def _out(a):
    """An array handed to user code (ReveArray, or a torch tensor with set_array_type)."""
    a = _hf(a)
    return np.ndarray.view(a, ReveArray) if isinstance(a, np.ndarray) else a


def _w(a):
    """A parameter as handed out: a ReveArray view of the same memory (so ``.detach()``,
    ``.numpy()``, ``.T`` work as on torch parameters and writes reach the C core)."""
    return None if a is None else np.ndarray.view(a, ReveArray)


def _in(x, name):
    """A float32 NumPy array of x (torch tensors, HFArrays, lists accepted)."""
    if x is None:
        raise TypeError(f"{name}: expected a float array, got None")
    arr = np.asarray(to_numpy(x))
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


# --------------------------------------------------------------------- config
class ReveConfig(PretrainedConfig):
    """REVE's ``config.json`` with attribute access and the published defaults
    (reve-base: embed_dim 512, depth 22, heads 8, head_dim 64, mlp_dim_ratio 2.66,
    use_geglu, freqs 4, patch_size 200, patch_overlap 20)."""

    _DEFAULTS = dict(model_type="reve", embed_dim=512, depth=22, heads=8, head_dim=64,
                     mlp_dim_ratio=2.66, use_geglu=True, freqs=4, patch_size=200,
                     patch_overlap=20)
    _INTS = ("embed_dim", "depth", "heads", "head_dim", "freqs", "patch_size", "patch_overlap")

    _FIELDS = REVE_CONFIG_FIELDS

    def __init__(self, _where="ReveConfig", **kwargs):
        super().__init__(_where, **kwargs)
        for k in self._INTS:
            setattr(self, k, int(getattr(self, k)))
        if not self.use_geglu:
            raise NotImplementedError(f"{_where}: use_geglu=False (plain GELU feed-forward) is "
                                      f"not supported; every published REVE uses GEGLU")
        if not self.patch_overlap < self.patch_size:
            raise ValueError(f"{_where}: field 'patch_overlap' must be in [0, patch_size="
                             f"{self.patch_size}), got {self.patch_overlap}")

    @property
    def mlp_dim(self):
        """Feed-forward width M = int(embed_dim * mlp_dim_ratio), as the published code."""
        return int(self.embed_dim * self.mlp_dim_ratio)

    @classmethod
    def from_pretrained(cls, name_or_path, revision="main", cache_dir=None):
        """Read ``config.json`` of a local directory or a cached hub model."""
        path = _io.resolve_pretrained(name_or_path, "config.json", revision=revision,
                                      cache_dir=cache_dir)
        raw = _io.load_config(path)
        missing = [k for k in ("embed_dim", "depth", "heads", "head_dim", "patch_size",
                               "patch_overlap", "freqs", "mlp_dim_ratio") if k not in raw]
        if missing:
            raise KeyError(f"{path}: REVE config.json lacks {missing}")
        return cls(_where=str(path), **raw)


def is_reve_config(raw):
    """Whether a parsed config.json describes a REVE encoder."""
    mt = str(raw.get("model_type", "")).lower()
    archs = [str(a).lower() for a in raw.get("architectures") or ()]
    return mt == "reve" or any(a.startswith("reve") and "position" not in a for a in archs) or (
        not mt and {"embed_dim", "patch_size", "patch_overlap"} <= set(raw))


def is_position_bank_dir(path):
    """Whether a model directory is a REVE position bank (``positions.json``)."""
    return (path / "positions.json").is_file()


def load_position_bank(name_or_path, revision="main", cache_dir=None):
    """The :class:`~mechinterp_c.reve.PositionBank` of a position-bank repository
    (``brain-bzh/reve-positions``: ``positions.json`` mapping names to [x, y, z],
    parsed with cJSON), whose calls return :class:`ReveArray` ([n, 3])."""
    base = _io.resolve_pretrained(name_or_path, revision=revision, cache_dir=cache_dir)
    path = base / "positions.json"
    if not path.is_file():
        present = sorted(p.name for p in base.iterdir())
        raise FileNotFoundError(f"{name_or_path!r}: no positions.json in {base} (it has: "
                                f"{', '.join(present) if present else 'nothing'})")
    return RevePositionBank(path)


class RevePositionBank(PositionBank):
    """A :class:`~mechinterp_c.reve.PositionBank` named and answering as the published
    ``RevePositionBank``: lookups are :class:`ReveArray` (torch-style ``unsqueeze``).
    ``RevePositionBank()`` is the bundled 10-10 bank; ``RevePositionBank(path)`` a JSON file."""

    def __call__(self, names):
        return _out(super().__call__(names))

    def eval(self):
        """No-op; returns self (the notebook may call it)."""
        return self

    def get_all_positions(self):
        """Every electrode name (as the published bank)."""
        return self.names


# --------------------------------------------------------------------- modules
class ReveModule(Module):
    """A node of REVE's module tree: callable on arrays (NumPy or torch) like the
    PyTorch module, with forward hooks that run on direct calls and, during
    ``model(...)``, at the C core's hook points (``_fwd``/``_pre`` sites)."""

    def __init__(self, model, name, fwd=None, pre=None):
        super().__init__(model, name, fwd, pre)
        self._direct = []

    def forward(self, *args):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        raise NotImplementedError(f"{self._name}: not callable")

    def __call__(self, *args, **kwargs):
        args = tuple(_in(a, f"{self._name} input") if i == 0 else a for i, a in enumerate(args))
        model = self._model_ref() if self._model_ref is not None else None
        memo = model._memo.pop(id(self), None) if model is not None and model._memo else None
        out = memo.lookup(args[0]) if memo is not None and len(args) == 1 and not kwargs else None
        if out is None:
            out = self.forward(*args, **kwargs)
        for hook in list(self._direct):
            shown_in = tuple(_out(a) if isinstance(a, np.ndarray) else a for a in args)
            ret = hook(self, shown_in, _out(out) if isinstance(out, np.ndarray) else out)
            if ret is not None:
                out = np.asarray(to_numpy(ret[0] if isinstance(ret, tuple) else ret))
        if memo is not None and memo.next is not None and isinstance(out, np.ndarray):
            memo.next.key = out
            model._memo[id(memo.next_module)] = memo.next
        return _out(out) if isinstance(out, np.ndarray) else out

    def register_forward_hook(self, hook, *, prepend=False, with_kwargs=False, always_call=False):
        """Register ``hook(module, input, output)`` for direct calls and for the C pass
        of ``model(...)``; returning a value replaces the output. Returns a handle."""
        if not callable(hook):
            raise TypeError(f"{self._name}: hook must be callable, got {type(hook).__name__}")
        if with_kwargs:
            raise NotImplementedError("register_forward_hook(with_kwargs=True) is not supported")
        c_handle = self._register_c_hook(hook, prepend) if self._fwd is not None else None
        if prepend:
            self._direct.insert(0, hook)
        else:
            self._direct.append(hook)
        return _Handle(self, hook, c_handle)

    def _register_c_hook(self, user, prepend):
        """Serve ``user`` during the C pass: its input is stashed when the pass reaches
        it (transient: no arena slot), the output buffer is shown as a copy whose
        edits (or the returned value) are written back before the pass goes on."""
        ht, pre, where = self._core_ht, self._pre, f"forward hook on {self._name}"
        point, view, affine = self._fwd
        state, handles = {}, []
        memo_points = self._memo_points()
        if pre is not None:
            @raw_hook
            def stash(act, hook):
                state["x"] = act
            handles += _transient(ht.add_hook(pre[0], stash, prepend=prepend))
        for name in memo_points:
            @raw_hook
            def stash_memo(act, hook, name=name):
                state[name] = act
            handles += _transient(ht.add_hook(name, stash_memo, prepend=prepend))

        @raw_hook

        def fire(act, hook):
            inp = None
            if "x" in state:
                v = pre[1](state["x"])
                inp = pre[2].expose(v) if pre[2] is not None else np.array(v)
            out = view(act)
            shown = affine.expose(out) if affine is not None else np.array(out)
            model = self._model_ref()
            if memo_points and inp is not None:
                model._memo = self._make_memo(state, state["x"], inp, out)
            try:
                ret = user(self, (None if inp is None else _out(inp),),
                           self._wrap_output(_out(shown)))
            finally:
                model._memo = {}
                state.clear()
            if affine is not None:
                affine.absorb(out, shown, ret)
            elif ret is not None:
                _write_back(out, ret, where)
            else:
                np.copyto(out, shown)      # in-place edits of the copy reach the pass

        handles += _transient(ht.add_hook(point, fire, prepend=prepend))
        return RemovableHandle(handles)

    def _memo_points(self):
        return ()

    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        """Pre-hooks are served for the C pass only (see the module table)."""
        if self._pre is None:
            raise NotImplementedError(f"{self._name}: forward pre-hooks are not supported here")
        return Module.register_forward_pre_hook(self, hook, prepend=prepend, with_kwargs=with_kwargs)

    def extra_repr(self):
        """The arguments shown in repr (as torch's extra_repr)."""
        return ""

    def __repr__(self):
        inner = [f"  ({k}): " + repr(m).replace("\n", "\n  ") for k, m in self._children.items()]
        head = f"{getattr(self, '_repr_name', type(self).__name__)}({self.extra_repr()}"
        return head + ("\n" + "\n".join(inner) + "\n)" if inner else ")")


def _transient(handles):
    """Mark module-tree hook handles as only looking during the call (MI_HOOK_TRANSIENT)."""
    for h in handles:
        h.transient = True
    return handles


class _Memo:
    """While a feed-forward hook runs, ``net[j](x)`` with ``x`` the very array the hook
    got (input, or the previous step's result), unchanged, returns what the C pass
    computed for that step (a copy) instead of computing it again: the notebook's hook
    re-runs net[0..3] on its input, which doubles the MLP's work otherwise."""

    def __init__(self, same, result, next_module=None, next_memo=None, key=None):
        self.same, self.result, self.key = same, result, key
        self.next_module, self.next = next_module, next_memo

    def lookup(self, x):
        """The pass's value for x if x is the memoised array, unchanged; else None."""
        k = self.key
        if k is None or not isinstance(x, np.ndarray) or x.dtype != np.float32 \
                or x.shape != k.shape or x.ctypes.data != k.ctypes.data or x.strides != k.strides:
            return None
        return self.result() if self.same(x) else None


class _Handle(RemovableHandle):
    """Handle of a REVE module hook (direct-call list and C hook point)."""

    def __init__(self, module, hook, c_handle):
        super().__init__([])
        self._module, self._hook, self._c = module, hook, c_handle

    def remove(self):
        """Unregister the hook (no error when already removed)."""
        if self._module is not None:
            self._module._direct = [h for h in self._module._direct if h is not self._hook]
            if self._c is not None:
                self._c.remove()
        self._module = None


class Sequential(ReveModule):
    """``nn.Sequential``: indexable; calling it calls each module in turn."""

    def __init__(self, model, name, modules, fwd=None, pre=None):
        super().__init__(model, name, fwd, pre)
        self._mods = list(modules)
        for i, m in enumerate(self._mods):
            self._children[str(i)] = m

    def __getitem__(self, i):
        return self._mods[i]

    def __len__(self):
        return len(self._mods)

    def __iter__(self):
        return iter(self._mods)

    def forward(self, x):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        for m in self._mods:
            x = np.asarray(to_numpy(m(x)))
        return x


class Linear(ReveModule):
    """``nn.Linear``: ``y = x @ weight.T (+ bias)``. The C parameters are held as
    ``[in, out]`` (``_w_io``); ``weight`` is the ``[out, in]`` view of them."""

    def __init__(self, model, name, w_io, bias=None, fwd=None, pre=None):
        super().__init__(model, name, fwd, pre)
        self._w_io = w_io
        self.weight = _w(w_io.T)
        self.bias = _w(bias)

    @property
    def in_features(self):
        """Input width."""
        return self._w_io.shape[0]

    @property
    def out_features(self):
        """Output width."""
        return self._w_io.shape[1]

    def forward(self, x):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        return ops.matmul(x, self._w_io, self._np("bias"))

    def extra_repr(self):
        """The arguments shown in repr (as torch's extra_repr)."""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class GegluIn(ReveModule):
    """``net[1]``: ``Linear(D, 2M, bias=False)`` whose output is (value | gate). The C
    core holds value (``mlp.W_in``) and gate (``mlp.W_gate``) as two ``[D, M]`` tensors."""

    def __init__(self, model, name, W_in, W_gate, point_pre, point_pre_linear, pre):
        super().__init__(model, name, fwd=(point_pre_linear, _same, None), pre=pre)
        self._W_in, self._W_gate = W_in, W_gate
        self._p_gate, self._p_value = point_pre, point_pre_linear

    @property
    def weight(self):
        """``[2M, D]`` = cat(value rows, gate rows): a read-only copy (value and gate are
        two C tensors); write weights with ``ReveModel.load_state_dict``."""
        w = np.concatenate([self._W_in.T, self._W_gate.T], axis=0)
        if torch_mode():          # a tensor of the copy (edits of it reach nothing either)
            return to_user(w)
        w.flags.writeable = False
        return _w(w)

    bias = None
    _repr_name = "Linear"
    in_features = property(lambda self: self._W_in.shape[0], doc="Input width D.")
    out_features = property(lambda self: 2 * self._W_in.shape[1], doc="Output width 2M.")

    def forward(self, x):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        M = self._W_in.shape[1]
        y = np.empty(x.shape[:-1] + (2 * M,), np.float32)
        y[..., :M] = ops.matmul(x, self._W_in)
        y[..., M:] = ops.matmul(x, self._W_gate)
        return y

    def _register_c_hook(self, hook, prepend):
        return _concat_site_hook(self, hook, prepend, output_is_concat=True)

    def extra_repr(self):
        """The arguments shown in repr (as torch's extra_repr)."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


def _concat_site_hook(module, user, prepend, output_is_concat):
    """A C-pass hook on net[1] (output = value|gate) or net[2] (input = value|gate):
    stash the gate (mlp.hook_pre), then at mlp.hook_pre_linear (value) build the
    concatenation. net[1]'s hook sees it as its output (edits are copied back into
    the two C buffers); net[2]'s hook sees a copy of it as input at mlp.hook_post."""
    ht, state = module._core_ht, {}
    where = f"forward hook on {module._name}"

    @raw_hook

    def stash_gate(act, hook):
        state["gate"] = act

    @raw_hook

    def stash_in(act, hook):
        state["in"] = act

    @raw_hook

    def fire_concat(value, hook):
        gate = state["gate"]
        cat = np.concatenate([value, gate], axis=-1)
        if not output_is_concat:
            state["cat"] = cat
            return
        inp = state.get("in")
        if inp is not None:
            aff = module._pre[2]
            inp = aff.expose(inp) if aff is not None else np.array(inp)
        ret = user(module, (None if inp is None else _out(inp),), _out(cat))
        new = cat if ret is None else np.asarray(to_numpy(ret[0] if isinstance(ret, tuple) else ret))
        if new.size != cat.size:
            raise ValueError(f"{where}: hook returned shape {new.shape}; expected {cat.shape}")
        new = new.reshape(cat.shape)
        M = value.shape[-1]
        value[...] = new[..., :M]
        gate[...] = new[..., M:]

    @raw_hook

    def fire_post(act, hook):
        shown = np.array(act)
        ret = user(module, (_out(state["cat"]),), _out(shown))
        if ret is not None:
            _write_back(act, ret, where)
        else:
            np.copyto(act, shown)

    handles = []
    if output_is_concat and module._pre is not None:
        handles += ht.add_hook(module._pre[0], stash_in, prepend=prepend)
    handles += ht.add_hook(module._p_gate, stash_gate, prepend=prepend)
    handles += ht.add_hook(module._p_value, fire_concat, prepend=prepend)
    if not output_is_concat:
        handles += ht.add_hook(module._p_post, fire_post, prepend=prepend)
    return RemovableHandle(_transient(handles))


class GEGLU(ReveModule):
    """``net[2]``: split the last axis into (value, gate); ``value * gelu(gate)`` (exact GELU)."""

    def __init__(self, model, name, point_pre=None, point_pre_linear=None, point_post=None):
        super().__init__(model, name, fwd=(point_post, _same, None) if point_post else None)
        self._p_gate, self._p_value, self._p_post = point_pre, point_pre_linear, point_post

    def forward(self, x):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        n = x.shape[-1]
        if n % 2:
            raise ValueError(f"{self._name}: GEGLU needs an even last axis to split into "
                             f"(value, gate), got shape {x.shape}")
        value, gate = x[..., :n // 2], x[..., n // 2:]
        return value * ops.gelu(np.ascontiguousarray(gate))

    def _register_c_hook(self, hook, prepend):
        return _concat_site_hook(self, hook, prepend, output_is_concat=False)


class GELU(ReveModule):
    """``nn.GELU()`` (exact erf form)."""

    def forward(self, x):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        return ops.gelu(x)

    def extra_repr(self):
        """The arguments shown in repr (as torch's extra_repr)."""
        return "approximate='none'"


class RMSNorm(ReveModule):
    """REVE's RMSNorm: ``x * rsqrt(mean(x^2) + eps) * weight``, eps 1e-6."""

    def __init__(self, model, name, weight, eps=1e-6, fwd=None, pre=None):
        super().__init__(model, name, fwd, pre)
        self.weight = _w(weight)
        self.eps = eps

    def forward(self, x):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        return ops.rms_norm(x, self._np("weight"), eps=self.eps)

    def extra_repr(self):
        """The arguments shown in repr (as torch's extra_repr)."""
        return f"({self.weight.shape[0]},), eps={self.eps}"


class LayerNorm(ReveModule):
    """``nn.LayerNorm(D)`` with affine weight and bias, eps 1e-5."""

    def __init__(self, model, name, weight, bias, eps=1e-5):
        super().__init__(model, name)
        self.weight, self.bias, self.eps = _w(weight), _w(bias), eps

    def forward(self, x):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        return ops.layer_norm(x, self._np("weight"), self._np("bias"), self.eps)

    def extra_repr(self):
        """The arguments shown in repr (as torch's extra_repr)."""
        return f"({self.weight.shape[0]},), eps={self.eps}, elementwise_affine=True"


class FourierEmb4D(ReveModule):
    """REVE's 4-D Fourier position features ``[..., 4] -> [..., D]`` (C kernel)."""

    def __init__(self, model, name, dimension, freqs, increment_time=0.1, margin=0.4):
        super().__init__(model, name)
        self.dimension, self.freqs = int(dimension), int(freqs)
        self.increment_time, self.margin = float(increment_time), float(margin)

    def forward(self, pos4):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        return _core.reve_fourier4d(pos4, self.dimension, self.freqs, self.increment_time,
                                    self.margin)

    @staticmethod
    def add_time_patch(pos, num_patches):
        """``[B, C, 3] -> [B, C*num_patches, 4]``: each channel's (x, y, z) with t = 0..P-1."""
        return _out(_core.reve_add_time_patch(_in(pos, "pos"), int(num_patches)))

    def extra_repr(self):
        """The arguments shown in repr (as torch's extra_repr)."""
        return f"dimension={self.dimension}, freqs={self.freqs}"


class Attention(ReveModule):
    """``layers[i][0]``: RMSNorm -> to_qkv -> bidirectional softmax attention -> to_out."""

    def __init__(self, model, name, heads, dim_head, fwd, pre):
        super().__init__(model, name, fwd, pre)
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head ** -0.5

    def forward(self, x):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        lead = x.shape[:-1]
        x3 = x.reshape((-1,) + x.shape[-2:]) if x.ndim >= 3 else x[None]
        B, T = x3.shape[:2]
        xn = np.asarray(to_numpy(self.norm(x3)))
        qkv = np.ascontiguousarray(np.asarray(to_numpy(self.to_qkv(xn))))
        z = _core.attention(qkv.reshape(B, T, 3, self.heads, self.dim_head), causal=False,
                            scale=self.scale)
        out = np.asarray(to_numpy(self.to_out(z.reshape(B, T, self.heads * self.dim_head))))
        return out.reshape(lead + (out.shape[-1],))

    def extra_repr(self):
        """The arguments shown in repr (as torch's extra_repr)."""
        return f"heads={self.heads}, dim_head={self.dim_head}"


class _FFMemo:
    """Feed-forward hooks (``layers[i][1]`` and ``.net``) also stash the C pass's MLP
    steps (transient), so the notebook's ``module[0..3]`` calls in the hook are served by
    :class:`_Memo` from them."""

    def _memo_points(self):
        p = f"blocks.{self._layer}."
        return (p + "ln2.hook_normalized", p + "mlp.hook_pre", p + "mlp.hook_pre_linear",
                p + "mlp.hook_post")

    def _make_memo(self, state, resid_mid, inp, mlp_out):
        p = f"blocks.{self._layer}."
        y, gate, value, post = (state[p + "ln2.hook_normalized"], state[p + "mlp.hook_pre"],
                                state[p + "mlp.hook_pre_linear"], state[p + "mlp.hook_post"])
        net = self.net if isinstance(self, FeedForward) else self
        w = net[0]._np("weight")
        M = value.shape[-1]
        m3 = _Memo(lambda x: np.array_equal(x, post), lambda: np.array(mlp_out))
        m2 = _Memo(lambda x: np.array_equal(x[..., :M], value) and np.array_equal(x[..., M:], gate),
                   lambda: np.array(post), net[3], m3)
        m1 = _Memo(lambda x: np.array_equal(x, y * w),
                   lambda: np.concatenate([value, gate], axis=-1), net[2], m2)
        m0 = _Memo(lambda x: np.array_equal(x, resid_mid), lambda: y * w, net[1], m1, key=inp)
        return {id(net[0]): m0}


class FeedForward(_FFMemo, ReveModule):
    """``layers[i][1]``: ``net`` = RMSNorm, Linear(D, 2M), GEGLU, Linear(M, D)."""

    def forward(self, x):
        """The module's computation on a float32 array (no hooks; see __call__)."""
        return np.asarray(to_numpy(self.net(x)))


class _Net(_FFMemo, Sequential):
    """``layers[i][1].net``: ``nn.Sequential(RMSNorm, Linear, GEGLU, Linear)``."""

    _repr_name = "Sequential"


class TransformerBackbone(ReveModule):
    """``model.transformer``: ``layers``; calling it on a residual stream [B, N, D] runs
    the C blocks (module hooks served by the C hook points). With
    ``return_out_layers=True`` returns the input and every block's output."""

    def __init__(self, model, name):
        super().__init__(model, name)

    def __call__(self, x, return_out_layers=False):
        return self._model_ref()._run_blocks(_in(x, "transformer input"), return_out_layers)

    def __repr__(self):
        inner = "\n".join(f"    ({i}): ModuleList(\n      (0): " + repr(a).replace("\n", "\n      ")
                          + "\n      (1): " + repr(f).replace("\n", "\n      ") + "\n    )"
                          for i, (a, f) in enumerate(self.layers))
        return f"TransformerBackbone(\n  (layers): ModuleList(\n{inner}\n  )\n)"

    def register_forward_hook(self, hook, **kw):
        """Not supported on the backbone (hook its layers, or use run_with_hooks)."""
        raise NotImplementedError(f"{self._name}: register hooks on its layers instead")


# --------------------------------------------------------------------- TL idiom
class HookedReve(HookedTransformer):
    """REVE through the TransformerLens API: the shared C transformer with REVE's
    spec (RMS eps 1e-6, gated exact-GELU MLP, bidirectional, no positional table, no
    final norm, no unembedding) behind the C front end.

    ``forward(eeg, pos)`` returns ``[B, C, P, D]``; ``run_with_cache(eeg, pos,
    names_filter=...)`` and ``run_with_hooks(eeg, pos, fwd_hooks=[...])`` take
    TransformerLens names; ``hook_embed`` is the patch embedding and
    ``hook_pos_embed`` the position embedding (both [B, C*P, D], run in Python
    around the C front end when hooked or cached). ``stop_at_layer=k`` returns
    the residual stream entering block k, [B, C*P, D].
    """

    _CORE_SPEC = {"pos_embed": False, "no_head": True}

    def __init__(self, config, frontend=None):
        self.reve_config = config if isinstance(config, ReveConfig) else ReveConfig(**dict(config))
        c = self.reve_config
        super().__init__(dict(
            n_layers=c.depth, d_model=c.embed_dim, n_ctx=2 ** 31 - 1, d_head=c.head_dim,
            n_heads=c.heads, d_mlp=c.mlp_dim, act_fn="gelu", d_vocab=1, d_vocab_out=1, eps=1e-6,
            normalization_type="RMS", attention_dir="bidirectional", gated_mlp=True,
            init_weights=False, model_name="reve", original_architecture="Reve"))
        self.frontend = frontend or ReveFrontEnd(c.embed_dim, c.patch_size, c.patch_overlap,
                                                 c.freqs)

    @classmethod
    def from_pretrained(cls, model_name, **kwargs):
        """The TransformerLens view of a REVE checkpoint (local directory or Hugging Face
        cache): ``ReveModel.from_pretrained(model_name).hooked``. TransformerLens's weight
        processing (fold_ln, centring) does not apply to an encoder without unembedding:
        those keywords are accepted only as False/absent."""
        for k in ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"):
            if kwargs.pop(k, False):
                raise NotImplementedError(f"HookedReve.from_pretrained: {k}=True is not supported "
                                          f"(REVE is loaded without weight processing)")
        for k in ("device", "dtype", "torch_dtype", "move_to_device", "trust_remote_code"):
            kwargs.pop(k, None)
        return ReveModel.from_pretrained(model_name, **kwargs).hooked

    @classmethod
    def from_pretrained_no_processing(cls, model_name, **kwargs):
        """Same as :meth:`from_pretrained` (REVE weights are never processed)."""
        return cls.from_pretrained(model_name, **kwargs)

    def _embed(self, eeg, pos, cache=None):
        """Residual stream input [B, N, D] of the front end and (B, C, P); runs the
        hook_embed / hook_pos_embed hooks and caches them in ``cache`` when asked."""
        eeg, pos = _in(eeg, "eeg"), _in(pos, "pos")
        he, hp = self.hook_dict["hook_embed"], self.hook_dict["hook_pos_embed"]
        want = cache is not None and ("hook_embed" in cache or "hook_pos_embed" in cache)
        if he._handles or hp._handles or want:
            d = self.frontend(eeg, pos, intermediates=True)
            emb, pe = d["patch_emb"], np.ascontiguousarray(np.broadcast_to(d["pos_embed"], d["x"].shape))
            he.run(emb)
            hp.run(pe)
            if cache is not None:
                for name, arr in (("hook_embed", emb), ("hook_pos_embed", pe)):
                    if name in cache:
                        cache[name] = arr
            x = emb + pe
            P = d["patches"].shape[2]
        else:
            x = self.frontend(eeg, pos)
            P = self.frontend.n_patches(eeg.shape[2])
        return x, (eeg.shape[0], eeg.shape[1], P)

    def forward(self, eeg, pos, stop_at_layer=None, return_type=None):
        """``[B, C, P, D]`` (or the residual stream entering block ``stop_at_layer``)."""
        x, (B, C, P) = self._embed(eeg, pos)
        out, _ = self._forward(x, "logits", False, None, stop_at_layer, (), start_at_layer=0)
        return out if stop_at_layer is not None else out.reshape(B, C, P, -1)

    __call__ = forward

    def run_with_hooks(self, eeg, pos, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True,
                       clear_contexts=False, **kwargs):
        """Forward pass with temporary hooks ``fwd_hooks=[(name_or_filter, fn)]``."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self.forward(eeg, pos, **kwargs)

    def run_with_cache(self, eeg, pos, names_filter=None, remove_batch_dim=False,
                       stop_at_layer=None, **kwargs):
        """``(output, ActivationCache)``: every hook point ``names_filter`` accepts (None:
        all; a name; a list; a function), as zero-copy views of the pass's arena."""
        if kwargs.pop("incl_bwd", False):
            raise NotImplementedError("incl_bwd: backward caching is not supported")
        for k in ("device", "reset_hooks_end", "clear_contexts", "return_type"):
            kwargs.pop(k, None)
        if kwargs:
            raise TypeError(f"run_with_cache: unsupported arguments {sorted(kwargs)}")
        keep = names_filter_fn(names_filter)
        fe = {n: None for n in ("hook_embed", "hook_pos_embed") if keep(n)}
        x, (B, C, P) = self._embed(eeg, pos, fe)
        ids = [hp.point_id for n, hp in self.hook_dict.items() if hp.point_id is not None
               and n not in ("hook_embed", "hook_pos_embed") and keep(n)]
        out, raw = self._forward(x, "logits", False, None, stop_at_layer, ids, start_at_layer=0)
        cache = dict(fe)
        by_name = {self._points[pid].name: v for pid, v in raw.items()}
        cache.update((n, by_name[n]) for n in self._fire_order if n in by_name)
        if remove_batch_dim:
            cache = {n: v[0] for n, v in cache.items()}
        if stop_at_layer is None:
            out = out.reshape(B, C, P, -1)
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def __repr__(self):
        c = self.reve_config
        return (f"HookedReve(depth={c.depth}, embed_dim={c.embed_dim}, heads={c.heads}, "
                f"head_dim={c.head_dim}, mlp_dim={c.mlp_dim}, patch_size={c.patch_size}, "
                f"patch_overlap={c.patch_overlap})")


# --------------------------------------------------------------------- HF idiom
class ReveModel(ReveModule):
    """The REVE encoder (``brain-bzh/reve-base``) on the C core; see the module docstring.

    Build with :meth:`from_pretrained` (or ``ReveModel(ReveConfig(...))`` for zero
    weights, then :meth:`load_state_dict`). ``model(eeg, pos)`` -> ``[B, C, P, D]``.
    """

    def __init__(self, config):
        super().__init__(None, "model")
        self._model_ref = weakref.ref(self)
        self._memo = {}
        self.config = config if isinstance(config, ReveConfig) else ReveConfig(**dict(config))
        self._ht = HookedReve(self.config)
        self._build_tree()

    @property
    def hooked(self):
        """The same model as a :class:`HookedReve` (TransformerLens API)."""
        return self._ht

    # ------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, revision="main",
                        cache_dir=None, trust_remote_code=None, **kwargs):
        """``config.json`` + safetensors weights (published PyTorch names, an optional
        common prefix such as ``model.`` is stripped) of a local directory or the
        Hugging Face cache. HF keywords such as ``torch_dtype`` are accepted and ignored."""
        cfg = ReveConfig.from_pretrained(pretrained_model_name_or_path, revision=revision,
                                         cache_dir=cache_dir)
        model = cls(cfg)
        sd = _io.load_weights(pretrained_model_name_or_path, float32=True, revision=revision,
                              cache_dir=cache_dir)
        model.load_state_dict(sd, where=str(pretrained_model_name_or_path))
        return model

    def _expected(self):
        c = self.config
        D, S, HD, M = c.embed_dim, c.patch_size, c.heads * c.head_dim, c.mlp_dim
        shapes = {"to_patch_embedding.0.weight": (D, S), "to_patch_embedding.0.bias": (D,),
                  "mlp4d.0.weight": (D, 4), "mlp4d.2.weight": (D,), "mlp4d.2.bias": (D,),
                  "ln.weight": (D,), "ln.bias": (D,)}
        for l in range(c.depth):
            p = f"transformer.layers.{l}."
            shapes.update({p + "0.norm.weight": (D,), p + "0.to_qkv.weight": (3 * HD, D),
                           p + "0.to_out.weight": (D, HD), p + "1.net.0.weight": (D,),
                           p + "1.net.1.weight": (2 * M, D), p + "1.net.3.weight": (D, M)})
        return shapes

    def load_state_dict(self, state_dict, strict=True, where="load_state_dict"):
        """Copy published-name REVE weights (arrays or tensors) into the C model.
        Missing tensors or wrong shapes raise naming the tensor; with ``strict``,
        unknown tensors too (the published head, ``final_layer.*`` and
        ``cls_query_token``, is ignored: this is the encoder)."""
        shapes = self._expected()
        keys = list(state_dict)
        prefix = ""
        if keys and "ln.weight" not in state_dict:
            hits = [k for k in keys if k.endswith(".ln.weight")]
            if len(hits) == 1:
                prefix = hits[0][:-len("ln.weight")]
        sd = {}
        for k, v in state_dict.items():
            if prefix and k.startswith(prefix):
                k = k[len(prefix):]
            sd[k] = v
        missing = [k for k in shapes if k not in sd]
        if missing:
            raise KeyError(f"{where}: checkpoint lacks REVE tensor(s) {missing[:5]}"
                           + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
        ignored = ("final_layer.", "cls_query_token")
        extra = [k for k in sd if k not in shapes and not k.startswith(ignored)]
        if strict and extra:
            raise KeyError(f"{where}: unexpected tensor(s) {sorted(extra)[:5]} in the REVE checkpoint")
        arrs = {}
        for k, shape in shapes.items():
            a = np.asarray(to_numpy(sd[k]))
            if a.dtype.kind != "f":
                raise TypeError(f"{where}: tensor {k!r} has dtype {a.dtype}, expected floats")
            if tuple(a.shape) != shape:
                raise ValueError(f"{where}: tensor {k!r} has shape {tuple(a.shape)}, the config "
                                 f"implies {shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{where}: tensor {k!r} has non-finite values")
            arrs[k] = a
        fe = self._ht.frontend
        for k, dst in fe.state_dict().items():
            dst[...] = arrs[k]
        c, raw = self.config, self._ht._raw
        D, M = c.embed_dim, c.mlp_dim
        for l in range(c.depth):
            p, b = f"transformer.layers.{l}.", f"blocks.{l}."
            raw[b + "ln1.w"][...] = arrs[p + "0.norm.weight"]
            raw[b + "attn.W_qkv"][...] = arrs[p + "0.to_qkv.weight"].T.reshape(raw[b + "attn.W_qkv"].shape)
            raw[b + "attn.W_O"][...] = arrs[p + "0.to_out.weight"].T.reshape(raw[b + "attn.W_O"].shape)
            raw[b + "ln2.w"][...] = arrs[p + "1.net.0.weight"]
            w1 = arrs[p + "1.net.1.weight"]
            raw[b + "mlp.W_in"][...] = w1[:M].T       # value half
            raw[b + "mlp.W_gate"][...] = w1[M:].T     # gate half
            raw[b + "mlp.W_out"][...] = arrs[p + "1.net.3.weight"].T
        self._unused_keys = sorted(extra)

    def state_dict(self):
        """Published-name weights: views of the C parameters, except
        ``net.1.weight`` (a copy: value and gate are two C tensors)."""
        out = dict(self._ht.frontend.state_dict())
        for l, (attn, ff) in enumerate(self.transformer.layers):
            p = f"transformer.layers.{l}."
            out[p + "0.norm.weight"] = attn.norm.weight
            out[p + "0.to_qkv.weight"] = attn.to_qkv.weight
            out[p + "0.to_out.weight"] = attn.to_out.weight
            out[p + "1.net.0.weight"] = ff.net[0].weight
            out[p + "1.net.1.weight"] = ff.net[1].weight
            out[p + "1.net.3.weight"] = ff.net[3].weight
        return out

    def named_parameters(self, prefix=""):
        """``(name, array)`` for every weight (published names)."""
        for k, v in self.state_dict().items():
            yield (f"{prefix}.{k}" if prefix else k), v

    def parameters(self):
        """The weight arrays."""
        return [v for _, v in self.named_parameters()]

    def num_parameters(self):
        """Number of parameters of the encoder."""
        return int(sum(v.size for v in self.state_dict().values()))

    # ------------------------------------------------------------- tree
    def _build_tree(self):
        c, raw, fe = self.config, self._ht._raw, self._ht.frontend
        D, H, Dh, M = c.embed_dim, c.heads, c.head_dim, c.mlp_dim
        HD = H * Dh

        def flat(a):            # [B,N,H,Dh] -> [B,N,H*Dh] (a view: contiguous)
            return a.reshape(a.shape[0], a.shape[1], -1)

        def fused_qkv(q):       # q view [B,N,H,Dh] at the start of the fused buffer
            B, T = q.shape[:2]
            return np.lib.stride_tricks.as_strided(q, (B, T, 3 * HD),
                                                   (q.strides[0], q.strides[1], q.itemsize))

        sd = fe.state_dict()
        self.to_patch_embedding = Sequential(self, "to_patch_embedding", [
            Linear(self, "to_patch_embedding.0", sd["to_patch_embedding.0.weight"].T,
                   sd["to_patch_embedding.0.bias"])])
        self.fourier4d = FourierEmb4D(self, "fourier4d", D, c.freqs)
        self.mlp4d = Sequential(self, "mlp4d", [
            Linear(self, "mlp4d.0", sd["mlp4d.0.weight"].T), GELU(self, "mlp4d.1"),
            LayerNorm(self, "mlp4d.2", sd["mlp4d.2.weight"], sd["mlp4d.2.bias"])])
        self.ln = LayerNorm(self, "ln", sd["ln.weight"], sd["ln.bias"])
        tr = TransformerBackbone(self, "transformer")
        tr.layers = ModuleList()
        for l in range(c.depth):
            p, n = f"blocks.{l}.", f"transformer.layers.{l}."
            ln1 = _AffineSite(raw[p + "ln1.w"], 0.0, n + "0.norm")
            ln2 = _AffineSite(raw[p + "ln2.w"], 0.0, n + "1.net.0")
            ln1_out = (p + "ln1.hook_normalized", _same, ln1, False)
            ln2_out = (p + "ln2.hook_normalized", _same, ln2, False)
            attn = Attention(self, n + "0", H, Dh, (p + "hook_attn_out", _same, None),
                             (p + "hook_resid_pre", _same, None, False))
            attn.norm = RMSNorm(self, n + "0.norm", raw[p + "ln1.w"],
                                fwd=(p + "ln1.hook_normalized", _same, ln1),
                                pre=(p + "hook_resid_pre", _same, None, True))
            attn.to_qkv = Linear(self, n + "0.to_qkv", raw[p + "attn.W_qkv"].reshape(D, 3 * HD),
                                 fwd=(p + "attn.hook_q", fused_qkv, None), pre=ln1_out)
            attn.to_out = Linear(self, n + "0.to_out", raw[p + "attn.W_O"].reshape(HD, D),
                                 fwd=(p + "hook_attn_out", _same, None),
                                 pre=(p + "attn.hook_z", flat, None, False))
            net1 = GegluIn(self, n + "1.net.1", raw[p + "mlp.W_in"], raw[p + "mlp.W_gate"],
                           p + "mlp.hook_pre", p + "mlp.hook_pre_linear", ln2_out)
            net = _Net(self, n + "1.net", [
                RMSNorm(self, n + "1.net.0", raw[p + "ln2.w"],
                        fwd=(p + "ln2.hook_normalized", _same, ln2),
                        pre=(p + "hook_resid_mid", _same, None, True)),
                net1,
                GEGLU(self, n + "1.net.2", p + "mlp.hook_pre", p + "mlp.hook_pre_linear",
                      p + "mlp.hook_post"),
                Linear(self, n + "1.net.3", raw[p + "mlp.W_out"],
                       fwd=(p + "hook_mlp_out", _same, None),
                       pre=(p + "mlp.hook_post", _same, None, False))],
                fwd=(p + "hook_mlp_out", _same, None), pre=(p + "hook_resid_mid", _same, None, False))
            ff = FeedForward(self, n + "1", (p + "hook_mlp_out", _same, None),
                             (p + "hook_resid_mid", _same, None, False))
            ff.net = net
            ff._layer = net._layer = l
            layer = ModuleList([attn, ff])
            tr.layers.append(layer)
            tr._children[f"layers.{l}.0"] = attn
            tr._children[f"layers.{l}.1"] = ff
        self.transformer = tr

    # ------------------------------------------------------------- calls
    def _front_hooked(self):
        return any(m._direct for m in (self.to_patch_embedding, self.fourier4d, self.mlp4d,
                                       self.ln, *self.to_patch_embedding, *self.mlp4d))

    def _embed(self, eeg, pos):
        """Residual stream input [B, N, D] and (B, C, P): one C call, or the notebook's
        steps through the front-end modules when one of them has a hook."""
        eeg, pos = _in(eeg, "eeg"), _in(pos, "pos")
        x = self._ht.frontend(eeg, pos)       # validates shapes and values in C
        P = self._ht.frontend.n_patches(eeg.shape[2])
        if self._front_hooked():
            c = self.config
            patches = _core.reve_unfold(eeg, c.patch_size, c.patch_overlap)
            B, C = patches.shape[:2]
            emb = np.asarray(to_numpy(self.to_patch_embedding(patches))).reshape(B, C * P, -1)
            pos4 = np.asarray(self.fourier4d.add_time_patch(pos, P))
            pos_embed = np.asarray(to_numpy(self.ln(
                np.asarray(to_numpy(self.mlp4d(pos4))) + np.asarray(to_numpy(self.fourier4d(pos4))))))
            x = np.ascontiguousarray(emb + pos_embed, dtype=np.float32)
        return x, (eeg.shape[0], eeg.shape[1], P)

    def _run_blocks(self, x, return_out_layers=False):
        ht = self._ht
        if x.ndim != 3 or x.shape[-1] != self.config.embed_dim:
            raise ValueError(f"transformer input: expected [batch, tokens, embed_dim="
                             f"{self.config.embed_dim}], got shape {x.shape}")
        ids = ([ht.hook_dict[f"blocks.{l}.hook_resid_pre"].point_id for l in range(self.config.depth)]
               if return_out_layers else [])
        out, cache = ht._run(x, ids, None, None, 0)
        if not return_out_layers:
            return _out(out)
        return [_out(cache[i]) for i in ids] + [_out(out)]

    def forward(self, eeg, pos, return_output=False):
        """``[B, C, P, D]`` for ``eeg [B, C, T]`` and ``pos [B or 1, C, 3]``; with
        ``return_output=True`` the list of depth + 1 residual streams [B, C*P, D] (the
        input of the first block, then every block's output), as the published model."""
        x, (B, C, P) = self._embed(eeg, pos)
        out = self._run_blocks(x, return_output)
        if return_output:
            return out
        return _out(np.asarray(to_numpy(out)).reshape(B, C, P, self.config.embed_dim))

    def __call__(self, eeg, pos, return_output=False):
        out = self.forward(eeg, pos, return_output=return_output)
        for hook in list(self._direct):
            ret = hook(self, (eeg, pos), out)
            if ret is not None:
                out = ret
        return out

    def _register_c_hook(self, hook, prepend):
        return None

    # TransformerLens idiom on the same C model
    def run_with_cache(self, eeg, pos, **kwargs):
        """:meth:`HookedReve.run_with_cache` of this model (TransformerLens names)."""
        return self._ht.run_with_cache(eeg, pos, **kwargs)

    def run_with_hooks(self, eeg, pos, fwd_hooks=(), **kwargs):
        """:meth:`HookedReve.run_with_hooks` of this model (TransformerLens names)."""
        return self._ht.run_with_hooks(eeg, pos, fwd_hooks=fwd_hooks, **kwargs)

    @property
    def hook_dict(self):
        """TransformerLens hook points of this model (name -> HookPoint)."""
        return self._ht.hook_dict

    def add_hook(self, name, hook, **kwargs):
        """TransformerLens ``add_hook`` on this model's hook points."""
        return self._ht.add_hook(name, hook, **kwargs)

    def reset_hooks(self, including_permanent=False):
        """Remove TransformerLens-style hooks (module hooks are removed by their handles)."""
        self._ht.reset_hooks(including_permanent=including_permanent)

    def extra_repr(self):
        """The arguments shown in repr (as torch's extra_repr)."""
        c = self.config
        return f"embed_dim={c.embed_dim}, depth={c.depth}, heads={c.heads}, head_dim={c.head_dim}"
