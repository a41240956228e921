"""The bridge between Hugging Face-style module trees and the C core's hook points,
shared by every model family under ``mechinterp_c.transformers``.

A :class:`Module` is a node of the HF tree (``model.transformer.h[3].attn``); it names
the C hook point that holds its output (``_fwd``) and the one that holds its input
(``_pre``), and turns torch's ``register_forward_hook`` / ``register_forward_pre_hook``
into hooks on those points: the hook sees the C buffer (or, for a LayerNorm, the affine
of it, :class:`_AffineSite`), and what it edits or returns is written back
(:func:`_write_back`) before the pass goes on.

Arrays handed to user code are :class:`HFArray` views of the C buffers, or torch
tensors sharing the same memory after ``set_array_type("torch")`` (:func:`_hf`).
"""
import sys
import weakref

import numpy as np

from .. import _core
from ..array_type import get_array_type, raw_hook, set_array_type, to_user, to_user_param, torch_mode
from ..devices import CPUFloat32, check_cpu_device, check_dtype, is_bfloat16
from ..utils import to_numpy

__all__ = ["HFArray", "Module", "ModuleList", "RemovableHandle", "check_model_args",
           "get_array_type", "set_array_type"]


class HFArray(np.ndarray):
    """A NumPy array that also accepts the torch-tensor calls of HF notebooks.

    ``detach()``, ``cpu()``, ``contiguous()`` and ``to(...)`` return the array
    itself; ``numpy()`` returns it as a plain ndarray (no copy); ``clone()`` a
    copy; ``view(*shape)`` with integer sizes is torch's ``view`` (a reshape
    that never copies; NumPy's ``view(dtype)`` still works); ``size(dim)`` with
    an argument is torch's ``size``; ``dim()`` the number of dimensions.
    """

    def detach(self):
        """The array itself (there is no autograd)."""
        return self

    def cpu(self):
        """The array itself (it is already in host memory)."""
        return self

    def contiguous(self):
        """The array if C-contiguous, else a contiguous copy."""
        return self if self.flags.c_contiguous else np.ascontiguousarray(self).view(HFArray)

    def to(self, *args, **kwargs):
        """The array itself (device moves are no-ops on the CPU)."""
        return self

    def numpy(self):
        """The same memory as a plain ``numpy.ndarray``."""
        return self.view(np.ndarray)

    def clone(self):
        """A copy."""
        return self.copy()

    def dim(self):
        """Number of dimensions (torch's ``dim()``)."""
        return self.ndim

    def softmax(self, dim=-1, dtype=None):
        """torch's ``softmax(dim)`` (float32, max-subtracted)."""
        x = np.asarray(self, dtype=np.float32 if dtype is None else dtype)
        e = np.exp(x - x.max(axis=dim, keepdims=True))
        return np.ndarray.view(e / e.sum(axis=dim, keepdims=True), HFArray)

    def log_softmax(self, dim=-1, dtype=None):
        """torch's ``log_softmax(dim)`` (float32)."""
        x = np.asarray(self, dtype=np.float32 if dtype is None else dtype)
        x = x - x.max(axis=dim, keepdims=True)
        return np.ndarray.view(x - np.log(np.exp(x).sum(axis=dim, keepdims=True)), HFArray)

    def argmax(self, dim=None, keepdim=False, axis=None, out=None, **kwargs):
        """torch's ``argmax(dim, keepdim)`` (int64); NumPy's ``argmax(axis)`` too."""
        ax = dim if dim is not None else axis
        r = np.argmax(np.asarray(self), axis=ax, keepdims=bool(keepdim) and ax is not None)
        return r if np.ndim(r) == 0 else np.ndarray.view(r, HFArray)

    def numel(self):
        """Number of elements (torch's ``numel()``)."""
        return int(np.prod(self.shape))

    def __getattr__(self, name):
        # the torch methods HFArray does not have: say what to do instead of a bare
        # AttributeError on an ndarray
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"HFArray (a NumPy array) has no method {name!r}: call "
                             f"mechinterp_c.set_array_type('torch') to get torch tensors sharing "
                             f"the same memory, or use the NumPy equivalent")

    def view(self, *args, **kwargs):
        """torch-style ``view(*shape)`` when given integer sizes (never copies:
        ValueError if the layout does not allow it); otherwise NumPy's ``view``."""
        if args and all(isinstance(a, (int, np.integer)) for a in args) or (
                len(args) == 1 and isinstance(args[0], (tuple, list))):
            shape = tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            out = np.ndarray.view(self)
            try:
                out.shape = shape   # raises instead of copying
            except (ValueError, AttributeError) as e:
                raise ValueError(f"view{shape}: cannot view an array of shape {self.shape} "
                                 f"that way without a copy ({e})") from None
            return out
        return np.ndarray.view(self, *args, **kwargs)


def _hf(a):
    """A C buffer (or a NumPy array) as handed to user code: HFArray, or a torch tensor
    sharing its memory after ``set_array_type("torch")``."""
    if a is None:
        return a
    if torch_mode():
        return to_user(np.ndarray.view(a, np.ndarray))
    return np.ndarray.view(a, HFArray)


# ----------------------------------------------------------------- hooks
class RemovableHandle:
    """Handle of a hook registered on a module; ``remove()`` unregisters it."""

    def __init__(self, lens_handles):
        self._lens = lens_handles

    def remove(self):
        """Unregister the hook (no error when already removed)."""
        for h in self._lens:
            h.remove()
        self._lens = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _write_back(target, ret, where):
    """Copy a hook's returned value into the C buffer ``target``."""
    if isinstance(ret, tuple):
        if not ret:
            raise ValueError(f"{where}: hook returned an empty tuple")
        ret = ret[0]
    if ret is None:
        return
    ret = np.asarray(to_numpy(ret))
    if ret.size != target.size:
        raise ValueError(f"{where}: hook returned shape {ret.shape}; expected {target.shape}")
    if ret.dtype.kind != "f":
        raise TypeError(f"{where}: hook returned dtype {ret.dtype}; expected floats")
    if np.shares_memory(ret, target) and ret.shape == target.shape:
        if ret.__array_interface__["data"][0] == target.__array_interface__["data"][0] \
                and ret.strides == target.strides:
            return
    # torch broadcasts a [T, D] returned for batch 1; accept any same-size layout
    np.copyto(target, np.array(ret).reshape(target.shape), casting="same_kind")


class _AffineSite:
    """A LayerNorm output: the C core holds ``y = normalized``; the module's output
    is ``y * w + b``. Edits are mapped back into ``y``."""

    def __init__(self, w, b, where):
        self.w, self.b, self.where = w, b, where

    def expose(self, y):
        return np.ndarray.view(y * self.w + self.b, HFArray)

    def absorb(self, y, shown, ret):
        new = shown
        if ret is not None:
            r = ret[0] if isinstance(ret, tuple) else ret
            if r is not None:
                new = np.asarray(to_numpy(r))
                if new.size != y.size:
                    raise ValueError(f"{self.where}: hook returned shape {new.shape}; "
                                     f"expected {y.shape}")
                new = new.reshape(y.shape)
        if new is shown and np.array_equal(shown, y * self.w + self.b):
            return
        if np.any(self.w == 0):
            raise ValueError(f"{self.where}: cannot apply an edited LayerNorm output: the "
                             f"LayerNorm weight has zeros, so the edit cannot be mapped back")
        y[...] = (new - self.b) / self.w


_PARAM_ATTRS = ("weight", "bias")


def _with_kwargs_fwd(hook):
    """torch's ``register_forward_hook(with_kwargs=True)`` contract,
    ``hook(module, args, kwargs, output)``, for a module the C pass calls: its keyword
    arguments are none (``{}``)."""
    def call(module, args, output):
        return hook(module, args, {}, output)
    return call


def _with_kwargs_pre(hook):
    """torch's ``register_forward_pre_hook(with_kwargs=True)`` contract,
    ``hook(module, args, kwargs)`` returning None or ``(args, kwargs)``."""
    def call(module, args):
        ret = hook(module, args, {})
        if ret is None:
            return None
        if not (isinstance(ret, tuple) and len(ret) == 2):
            raise TypeError("a forward pre-hook with with_kwargs=True must return None or a "
                            "tuple (args, kwargs)")
        if ret[1]:
            raise ValueError(f"a forward pre-hook returned keyword arguments {sorted(ret[1])}: "
                             f"this module is called by the C pass with none")
        return ret[0]
    return call


def _view_key(w):
    """Where a view's elements are: (address, shape, strides)."""
    return (w.__array_interface__["data"][0], w.shape, w.strides)


class Module(CPUFloat32):
    """A node of the HF module tree, with torch-style hook registration.

    Subclasses describe where their input and output live in the C pass."""

    def __init__(self, model, name, fwd=None, pre=None):
        self._model_ref = weakref.ref(model) if model is not None else None
        self._name = name
        self._children = {}
        self._fwd, self._pre = fwd, pre

    # torch.nn.Module-ish tree helpers
    def __setattr__(self, key, value):
        if key in _PARAM_ATTRS and (value is None or isinstance(value, np.ndarray)):
            # parameters are read through __getattr__, which hands out torch views of
            # them in torch mode; the package reads them with _np
            self.__dict__.setdefault("_pw", {})[key] = value
            return
        if isinstance(value, Module) and not key.startswith("_"):
            self._children[key] = value
        object.__setattr__(self, key, value)

    def __getattr__(self, key):
        pw = self.__dict__.get("_pw")
        if pw is not None and key in pw:
            w = pw[key]
            if w is None or not torch_mode():
                return w
            return to_user_param(w, self._torch_param_cache(), _view_key(w))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def _np(self, key):
        """The parameter ``key`` (``"weight"``, ``"bias"``) as the NumPy view the C core
        reads, whatever the array type."""
        return self.__dict__.get("_pw", {}).get(key)

    def _torch_param_cache(self):
        """The root model's torch views of its weights, one per (memory, shape, strides), so
        that tied weights (``lm_head.weight`` and ``wte.weight``) are one Parameter."""
        ref = self.__dict__.get("_model_ref")
        root = ref() if ref is not None else None
        holder = root if root is not None else self
        return holder.__dict__.setdefault("_torch_params", {})

    def named_modules(self, prefix=""):
        """Yield ``(name, module)`` for this module and all below it."""
        yield prefix, self
        for k, m in self._children.items():
            yield from m.named_modules(f"{prefix}.{k}" if prefix else k)

    def modules(self):
        """All modules below and including this one."""
        return [m for _, m in self.named_modules()]

    def children(self):
        """The direct sub-modules."""
        return list(self._children.values())

    def eval(self):
        """No-op (no dropout in inference); returns self."""
        return self

    @property
    def device(self):
        """The CPU: ``torch.device("cpu")`` when torch is loaded, else ``"cpu"`` (either
        works in ``tensor.to(model.device)``)."""
        torch = sys.modules.get("torch")
        return torch.device("cpu") if torch is not None else "cpu"

    @property
    def dtype(self):
        """float32: ``torch.float32`` when torch is loaded, else ``numpy.float32``."""
        torch = sys.modules.get("torch")
        return torch.float32 if torch is not None else np.float32

    def get_submodule(self, target):
        """The module at the dotted path ``target`` (``"transformer.h.0.attn"``; ``""`` is
        this module), as torch's ``get_submodule``; AttributeError naming the path otherwise."""
        if target == "":
            return self
        mods = dict(self.named_modules())
        if target not in mods:
            raise AttributeError(f"{type(self).__name__} has no submodule {target!r}")
        return mods[target]

    def __call__(self, *args, **kwargs):
        """Apply the module to arrays or tensors, computed in the C kernels from its weights
        (``h[0](x)``, ``attn.c_attn(x)``); the result is in the array type of
        ``set_array_type``. A direct call is not a pass of the model: hooks registered on
        modules fire in the model's forward pass only."""
        fn = getattr(self, "_forward_np", None)
        if fn is None:
            raise NotImplementedError(f"{self._name}: this module cannot be called on its own")
        out = fn(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(_hf(o) if isinstance(o, np.ndarray) else o for o in out)
        return _hf(out)

    def forward(self, *args, **kwargs):
        """Same as calling the module."""
        return Module.__call__(self, *args, **kwargs)

    def requires_grad_(self, requires_grad=True):
        """No-op (no autograd); returns self."""
        return self

    def named_parameters(self, prefix=""):
        """Yield ``(HF name, array view)`` for every parameter at and below this module."""
        for name, mod in self.named_modules(prefix):
            for attr in _PARAM_ATTRS:
                if mod._np(attr) is not None:
                    yield (f"{name}.{attr}" if name else attr), getattr(mod, attr)

    def parameters(self):
        """The parameter views (HF layout)."""
        return [p for _, p in self.named_parameters()]

    def state_dict(self):
        """HF-named parameter views (writable; lm_head.weight is the C unembedding)."""
        return dict(self.named_parameters())

    def train(self, mode=True):
        """Training mode is not supported (the C forward has no dropout)."""
        if mode:
            raise NotImplementedError("train(): this model is inference-only (no dropout)")
        return self

    def __repr__(self):
        return f"<{type(self).__name__} {self._name}>"

    def _weights_bf16(self):
        ref = self._model_ref() if self._model_ref is not None else None
        return ref is not None and ref._ht._bf16

    @property
    def _core_ht(self):
        model = self._model_ref()
        if model is None:
            raise RuntimeError(f"{self._name}: its model no longer exists")
        return model._ht

    # where the module's output and input live in the C pass:
    #   _fwd: (point, view_fn, affine_site_or_None) or None
    #   _pre: (point, view_fn, affine_site_or_None, read_only) or None

    def _site(self, kind):
        s = self._fwd if kind == "fwd" else self._pre
        if s is None:
            raise NotImplementedError(f"{self._name}: {kind} hooks are not supported on this module")
        return s

    def register_forward_hook(self, hook, *, prepend=False, with_kwargs=False, always_call=False):
        """Register ``hook(module, input, output)``; it runs when the C pass has
        produced the module's output. Returning a value replaces the output.
        Returns a handle with ``.remove()``."""
        if not callable(hook):
            raise TypeError(f"{self._name}: hook must be callable, got {type(hook).__name__}")
        user = _with_kwargs_fwd(hook) if with_kwargs else hook
        point, view, affine = self._site("fwd")
        ht, module, where = self._core_ht, self, f"forward hook on {self._name}"
        inp_state = {}
        handles = []
        pre = self._pre
        if pre is not None:
            # remember the input as it reaches the module (a later point in the pass
            # runs the hook); the C buffer stays valid for the whole call.
            @raw_hook
            def stash(act, hook):
                inp_state["x"] = act
            handles += ht.add_hook(pre[0], stash)

        @raw_hook

        def fire(act, hook):
            if pre is not None and "x" in inp_state:
                x = inp_state["x"]
                pview, paff = pre[1], pre[2]
                inp = paff.expose(pview(x)) if paff is not None else pview(x)
                inp = _hf(np.array(inp) if pre[3] else inp)
            else:
                inp = None
            out = view(act)
            if affine is not None:
                shown = affine.expose(out)
                ret = user(module, (inp,), self._wrap_output(_hf(shown)))
                affine.absorb(out, shown, self._unwrap_return(ret))
                return None
            shown = _hf(out)
            ret = self._unwrap_return(user(module, (inp,), self._wrap_output(shown)))
            if ret is not None:
                _write_back(out, ret, where)
            return None

        handles += ht.add_hook(point, fire, prepend=prepend)
        return RemovableHandle(handles)

    def register_full_backward_hook(self, hook, *, prepend=False):
        """Register ``hook(module, grad_input, grad_output)`` (torch's contract): it runs in
        ``out.backward(metric=...)`` on a model output when the gradient of the module's
        input is complete; a returned tuple replaces ``grad_input`` upstream. Which
        gradients each module sees: ``mechinterp_c.transformers.backward_hooks``.
        Returns a handle with ``.remove()``."""
        return self._backward_root()._register_backward_hook(self, hook, False, prepend)

    def register_full_backward_pre_hook(self, hook, *, prepend=False):
        """Register ``hook(module, grad_output)`` (torch's contract): it runs in
        ``out.backward(metric=...)`` when the gradient of the module's output is complete;
        a returned tuple replaces ``grad_output`` before it flows into the module.
        Returns a handle with ``.remove()``."""
        return self._backward_root()._register_backward_hook(self, hook, True, prepend)

    def _backward_root(self):
        ref = self.__dict__.get("_model_ref")
        root = ref() if ref is not None else None
        if root is None or not hasattr(type(root), "_register_backward_hook"):
            raise NotImplementedError(f"{self._name}: backward hooks need a model with logits to "
                                      f"differentiate (the causal LM drop-ins)")
        return root

    def _wrap_output(self, out):
        """The module's output as its forward hooks see it (the C buffer by default)."""
        return out

    def _unwrap_return(self, ret):
        """The array a forward hook's return value replaces the output with."""
        return ret

    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        """Register ``hook(module, input)``; ``input`` is a 1-tuple. The hook may
        edit ``input[0]`` in place or return a new tuple / array. Returns a handle."""
        if not callable(hook):
            raise TypeError(f"{self._name}: hook must be callable, got {type(hook).__name__}")
        user = _with_kwargs_pre(hook) if with_kwargs else hook
        point, view, affine, read_only = self._site("pre")
        module, where = self, f"forward pre-hook on {self._name}"

        @raw_hook

        def fire(act, hook):
            x = view(act)
            if affine is not None:
                shown = affine.expose(x)
                ret = user(module, (_hf(shown),))
                if not read_only:
                    affine.absorb(x, shown, ret)
                return None
            if read_only:
                user(module, (_hf(np.array(x)),))
                return None
            ret = user(module, (_hf(x),))
            if ret is not None:
                _write_back(x, ret, where)
            return None

        return RemovableHandle(self._core_ht.add_hook(point, fire, prepend=prepend))


def _same(a):
    """The buffer as is: the view of a site whose module sees the C buffer itself."""
    return a


class ModuleList(list):
    """``nn.ModuleList``: a list of modules (``transformer.h``, ``transformer.layers``)."""

    def __repr__(self):
        inner = "\n".join(f"  ({i}): " + repr(m).replace("\n", "\n  ") for i, m in enumerate(self))
        return f"ModuleList(\n{inner}\n)"


# ------------------------------------------------------ from_pretrained
# from_pretrained keywords that change nothing here: no network, no remote code, and the
# weights are always mapped (no memory to save), from safetensors
_NO_OP_LOADING_KWARGS = ("local_files_only", "trust_remote_code", "token", "low_cpu_mem_usage",
                         "force_download")


def check_model_args(model_args, kwargs, where, allow_bf16=False):
    """Refuse what a Hugging Face ``from_pretrained`` call asks for that the C model cannot
    honour: extra positional arguments, a dtype other than float32 (and bfloat16 with
    ``allow_bf16``), a device other than the CPU, ``use_safetensors=False``, unknown
    keywords (consumed from ``kwargs``). Returns whether bfloat16 weights were asked for
    (``torch_dtype`` / ``dtype``)."""
    if model_args:
        raise TypeError(f"{where}: unexpected positional argument(s) {model_args!r}")
    dtypes = (kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None))
    for dt in dtypes:
        check_dtype(dt, where, allow_auto=True, allow_bf16=allow_bf16)
    check_cpu_device(kwargs.pop("device_map", None), where)
    if kwargs.pop("use_safetensors", True) is False:
        raise NotImplementedError(f"{where}: use_safetensors=False: only safetensors weights are read")
    for k in _NO_OP_LOADING_KWARGS:
        kwargs.pop(k, None)
    if kwargs:
        raise TypeError(f"{where}: unexpected keyword argument(s) {sorted(kwargs)}")
    return any(is_bfloat16(dt) for dt in dtypes)


# ------------------------------------------------------ save_pretrained
def write_pretrained(save_directory, tensors, config, safe_serialization=True,
                     is_main_process=True, state_dict=None, kwargs=None):
    """Write ``model.safetensors`` (``tensors``: HF name -> array, float32 or bfloat16 bit
    patterns (uint16), written as float32) and
    ``config.json`` (the dict ``config``) into ``save_directory`` as
    ``save_pretrained`` does; ``state_dict`` (HF names, arrays or tensors) replaces
    tensors by name (an unknown name raises KeyError). Only safetensors is written."""
    import json
    import os

    from .. import io as _io
    if not safe_serialization:
        raise NotImplementedError("save_pretrained: only safetensors is written "
                                  "(safe_serialization=False is not supported)")
    if kwargs:
        raise TypeError(f"save_pretrained: unexpected keyword argument(s) {sorted(kwargs)}")
    if os.path.isfile(save_directory):
        raise ValueError(f"save_pretrained: {save_directory!r} is a file, not a directory")
    tensors = dict(tensors)
    if state_dict is not None:
        for k, v in state_dict.items():
            if k not in tensors:
                raise KeyError(f"save_pretrained: state_dict has unknown tensor {k!r}")
            tensors[k] = np.asarray(to_numpy(v), dtype=np.float32).reshape(tensors[k].shape)
    if not is_main_process:
        return
    os.makedirs(save_directory, exist_ok=True)
    # a bfloat16 weight (uint16 bit patterns) is written as its float32 values, exactly
    tensors = {k: _core.from_bfloat16(np.ascontiguousarray(v)) if v.dtype == np.uint16
               else np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    _io.save_safetensors(os.path.join(save_directory, "model.safetensors"), tensors,
                         metadata={"format": "pt"})
    tmp = os.path.join(save_directory, "config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(save_directory, "config.json"))
