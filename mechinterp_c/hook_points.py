"""``HookPoint``: a named place in the forward pass where hooks run (TransformerLens names).

The C forward pass calls back into Python only at hook points that have hooks
(or are cached); a hook is ``fn(activation, hook)`` where ``activation`` is a
writable NumPy view of the C buffer and ``hook`` this HookPoint. A hook edits
the activation in place, or returns an array of the same shape whose values
replace it; returning None keeps the (possibly edited) activation.
"""
import numpy as np

from .utils import to_numpy


class LensHandle:
    """Handle to one registered hook; ``remove()`` takes it off its HookPoint."""

    def __init__(self, hook_point, fn, is_permanent):
        self.hook_point = hook_point
        self.fn = fn
        self.is_permanent = is_permanent

    def remove(self):
        """Unregister this hook (no error if already removed)."""
        self.hook_point._handles = [h for h in self.hook_point._handles if h is not self]


class HookPoint:
    """A hook point: ``name`` as in TransformerLens, hooks run in registration order."""

    def __init__(self, name, point_id):
        self.name = name
        self.point_id = point_id
        self._handles = []

    def add_hook(self, hook, dir="fwd", is_permanent=False, prepend=False, level=None):
        """Register ``hook(activation, hook=self)``; only forward hooks exist in the C core."""
        if dir != "fwd":
            raise NotImplementedError(f"{self.name}: only forward hooks are supported (got dir={dir!r})")
        if not callable(hook):
            raise TypeError(f"{self.name}: hook must be callable, got {type(hook).__name__}")
        handle = LensHandle(self, hook, is_permanent)
        if prepend:
            self._handles.insert(0, handle)
        else:
            self._handles.append(handle)
        return handle

    def remove_hooks(self, dir="fwd", including_permanent=False, level=None):
        """Remove the hooks (permanent ones too with including_permanent=True)."""
        self._handles = [h for h in self._handles if h.is_permanent and not including_permanent]

    @property
    def fwd_hooks(self):
        """The registered handles, in calling order."""
        return list(self._handles)

    def has_hooks(self):
        """True when a hook is registered."""
        return bool(self._handles)

    def layer(self):
        """The block index in the name (``blocks.3.attn.hook_q`` -> 3); ValueError without one."""
        parts = self.name.split(".")
        if len(parts) < 2 or parts[0] != "blocks":
            raise ValueError(f"{self.name} is not inside a block and has no layer")
        return int(parts[1])

    def run(self, act):
        """Run the hooks on ``act`` (a view of the C buffer), writing returned values into it."""
        for h in list(self._handles):
            ret = h.fn(act, hook=self)
            if ret is None or ret is act:
                continue
            if not isinstance(ret, np.ndarray):
                if hasattr(ret, "detach") or isinstance(ret, (list, tuple)):
                    ret = to_numpy(ret)
                else:
                    raise TypeError(f"hook on {self.name} returned {type(ret).__name__}; a hook must "
                                    f"return None or an array of shape {act.shape}")
            if ret.shape != act.shape:
                raise ValueError(f"hook on {self.name} returned shape {ret.shape}; expected "
                                 f"{act.shape} (or None to keep in-place edits)")
            if ret.dtype.kind != "f":
                raise TypeError(f"hook on {self.name} returned dtype {ret.dtype}; expected a "
                                f"floating-point array of shape {act.shape}")
            np.copyto(act, ret, casting="same_kind")

    def __repr__(self):
        return f"HookPoint({self.name!r}, {len(self._handles)} hooks)"
