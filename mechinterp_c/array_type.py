"""What arrays mechinterp_c hands to user code: NumPy (the default) or torch tensors.

``set_array_type("torch")`` switches every API at once (``HookedTransformer``, its
hooks, outputs and ``ActivationCache``, the Hugging Face adapters under
``mechinterp_c.transformers``): each array the C core produces reaches the user as
``torch.from_numpy`` of the same memory, so a hook that edits its tensor in place edits
the C pass's activation, and a cached tensor is the arena itself (no copy). Weights and
parameters become ``torch.nn.Parameter`` leaves over the C weights (one per weight, kept,
so a ``requires_grad`` set on it is the parameter's flag for training).

This module imports nothing of the package and torch only when asked for, so both APIs
can import it and ``import mechinterp_c`` never loads torch.
"""
import functools
import threading
import warnings

import numpy as np

__all__ = ["get_array_type", "set_array_type", "torch_mode", "to_user", "to_user_param", "user_facing"]

_ARRAY_TYPE = ["numpy"]
# [whether torch was imported before mechinterp_c with OMP_WAIT_POLICY unset, warned yet]
_TORCH_SPINS = [False, False]


def set_array_type(kind):
    """What hooks, outputs, caches and weight views hand out: ``"numpy"`` (default: NumPy
    views of the C buffers) or ``"torch"`` (``torch.from_numpy`` of the same buffers:
    tensors sharing memory, so in-place edits still reach the C pass; weights as
    ``torch.nn.Parameter`` views). Also ``mechinterp_c.set_array_type`` and
    ``mechinterp_c.transformers.set_array_type``."""
    if kind not in ("numpy", "torch"):
        raise ValueError(f"set_array_type: expected 'numpy' or 'torch', got {kind!r}")
    if kind == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ImportError("set_array_type('torch') needs PyTorch, which is not installed") from None
        if _TORCH_SPINS[0] and not _TORCH_SPINS[1]:
            _TORCH_SPINS[1] = True
            warnings.warn("torch was imported before mechinterp_c, so torch's OpenMP threads spin "
                          "after each torch op and slow the C passes down (a torch-mode training "
                          "step measured ~3x slower); import mechinterp_c before torch or set "
                          "OMP_WAIT_POLICY=PASSIVE in the environment", RuntimeWarning, stacklevel=2)
    _ARRAY_TYPE[0] = kind


def get_array_type():
    """The current array type (``"numpy"`` or ``"torch"``)."""
    return _ARRAY_TYPE[0]


def torch_mode():
    """Whether arrays are handed out as torch tensors."""
    return _ARRAY_TYPE[0] == "torch"


def _from_numpy(a):
    """``torch.from_numpy`` of ``a`` (an ndarray or subclass) without copying; a read-only
    array (a weight view made stale by a rebuild) is shared too, as torch allows with a
    warning that says nothing the user can act on here."""
    import torch
    a = np.ndarray.view(a, np.ndarray)
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def to_user(x):
    """``x`` as handed to user code: unchanged in NumPy mode; in torch mode an ndarray
    becomes a tensor sharing its memory, a NumPy scalar a 0-d tensor, and tuples, lists
    and dicts are converted element by element (anything else is returned as is)."""
    if _ARRAY_TYPE[0] != "torch":
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiub" or any(s < 0 for s in x.strides):
            import torch
            return torch.as_tensor(np.array(x))
        return _from_numpy(x)
    if isinstance(x, np.generic) and x.dtype.kind in "fiub":
        import torch
        return torch.tensor(x.item(), dtype=getattr(torch, x.dtype.name))
    if isinstance(x, tuple) and type(x) is tuple:
        return tuple(to_user(v) for v in x)
    if isinstance(x, list) and type(x) is list:
        return [to_user(v) for v in x]
    return x


def to_user_param(w, holder=None, key=None):
    """A weight view as handed to user code: ``w`` itself in NumPy mode; in torch mode one
    ``torch.nn.Parameter`` sharing ``w``'s memory, kept (on ``w`` itself, or in the dict
    ``holder`` under ``key``) so that every access returns the same leaf and its
    ``requires_grad`` persists. Its initial ``requires_grad`` is ``w.requires_grad`` when
    ``w`` has one (a training weight view), else True."""
    if _ARRAY_TYPE[0] != "torch":
        return w
    if holder is None:
        p = w.__dict__.get("_torch_param") if hasattr(w, "__dict__") else None
    else:
        p = holder.get(key)
        if p is not None and p.data_ptr() != w.__array_interface__["data"][0]:
            p = None                       # the weights moved (materialize, a rebuild)
    if p is None:
        import torch
        p = torch.nn.Parameter(_from_numpy(w), requires_grad=bool(getattr(w, "requires_grad", True)))
        if holder is None:
            w.__dict__["_torch_param"] = p
        else:
            holder[key] = p
    return p


_DEPTH = threading.local()


def user_facing(fn):
    """Decorate a public method whose arrays the user receives: in torch mode its result
    goes through :func:`to_user` when it returns to user code, but not when another of
    the package's decorated methods called it (internal callers keep NumPy)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _ARRAY_TYPE[0] != "torch":
            return fn(*args, **kwargs)
        depth = getattr(_DEPTH, "n", 0)
        _DEPTH.n = depth + 1
        try:
            out = fn(*args, **kwargs)
        finally:
            _DEPTH.n = depth
        return to_user(out) if depth == 0 else out
    return wrapper


def in_user_code():
    """Whether no :func:`user_facing` method is running in this thread (hooks excepted:
    they always get the user's array type)."""
    return getattr(_DEPTH, "n", 0) == 0


def called_by_user():
    """Whether the running :func:`user_facing` method was called by user code (not by
    another of the package's methods): only such a call hands out torch autograd graphs."""
    return getattr(_DEPTH, "n", 0) == 1


def raw_hook(fn):
    """Mark a hook function of the package itself: it gets the NumPy view of the C buffer
    whatever the array type (it converts what it hands on to user code itself)."""
    fn._mi_raw = True
    return fn
