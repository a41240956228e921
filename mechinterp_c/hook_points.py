"""``HookPoint``: a named place in the forward pass where hooks run (TransformerLens names),
and ``HookedRootMixin``: the model-level hook API of TransformerLens's ``HookedRootModule``.

The C forward pass calls back into Python only at hook points that have hooks
(or are cached); a hook is ``fn(activation, hook)`` where ``activation`` is a
writable NumPy view of the C buffer and ``hook`` this HookPoint. A hook edits
the activation in place, or returns an array of the same shape whose values
replace it; returning None keeps the (possibly edited) activation.

Levels, as TransformerLens: every ``model.hooks(...)`` context (and so every
``run_with_hooks`` / ``run_with_cache``) adds its hooks at a new context level
and on exit removes the non-permanent hooks of that level only; hooks added by
hand have level None unless given one, and ``reset_hooks(level=k)`` /
``remove_all_hook_fns(level=k)`` remove those of level k. ``hook.ctx`` is a dict
a hook may keep state in across calls; ``reset_hooks()`` empties it
(``clear_contexts=False`` keeps it).
"""
import contextlib
import logging

import numpy as np

from .activation_cache import check_cpu_device
from .array_type import to_user, torch_mode
from .utils import Slice, to_numpy

_DIRECTIONS = ("fwd", "bwd", "both")


def names_filter_fn(names_filter):
    """TransformerLens's ``names_filter`` (None: every name; a name; a list of names; a
    function of the name) as a function of the name."""
    if names_filter is None:
        return lambda n: True
    if isinstance(names_filter, str):
        return lambda n: n == names_filter
    if isinstance(names_filter, (list, tuple, set)):
        names = set(names_filter)
        return lambda n: n in names
    if callable(names_filter):
        return names_filter
    raise TypeError(f"names_filter must be None, a name, a list of names or a function, "
                    f"got {type(names_filter).__name__}")


def _check_dir(dir):
    if dir not in _DIRECTIONS:
        raise ValueError(f"Invalid direction {dir!r}: expected 'fwd', 'bwd' or 'both'")


class LensHandle:
    """Handle to one registered hook; ``remove()`` takes it off its HookPoint.

    ``transient`` (the hook's own ``transient`` attribute, default False) says the
    hook keeps nothing of the activation past its call (it copies what it needs),
    so the C pass gives the point no arena slot of its own."""

    def __init__(self, hook_point, fn, is_permanent, context_level=None):
        self.hook_point = hook_point
        self.fn = fn
        self.is_permanent = is_permanent
        self.context_level = context_level
        self.transient = bool(getattr(fn, "transient", False))
        # the package's own hooks read NumPy whatever the array type handed to users
        self.raw = bool(getattr(fn, "_mi_raw", False))

    @property
    def user_hook(self):
        """The hook function as registered (TransformerLens's name)."""
        return self.fn

    def remove(self):
        """Unregister this hook (no error if already removed)."""
        handles = self.hook_point._handles
        if self in handles:
            handles.remove(self)


class HookPoint:
    """A hook point: ``name`` as in TransformerLens, hooks run in registration order.
    ``ctx`` is a dict for the hooks' own state, kept across calls."""

    def __init__(self, name, point_id):
        self.name = name
        self.point_id = point_id
        self._handles = []
        self.ctx = {}

    def add_hook(self, hook, dir="fwd", is_permanent=False, level=None, prepend=False):
        """Register ``hook(activation, hook=self)`` at context ``level`` (None: no level);
        only forward hooks exist in the C core."""
        if dir != "fwd":
            raise NotImplementedError(f"{self.name}: only forward hooks are supported (got dir={dir!r})")
        if not callable(hook):
            raise TypeError(f"{self.name}: hook must be callable, got {type(hook).__name__}")
        handle = LensHandle(self, hook, is_permanent, level)
        if prepend:
            self._handles.insert(0, handle)
        else:
            self._handles.append(handle)
        return handle

    def add_perma_hook(self, hook, dir="fwd"):
        """``add_hook`` with is_permanent=True."""
        return self.add_hook(hook, dir=dir, is_permanent=True)

    def remove_hooks(self, dir="fwd", including_permanent=False, level=None):
        """Remove the non-permanent hooks of context ``level`` (None: of every level); with
        including_permanent, every hook whatever its level."""
        _check_dir(dir)
        if dir == "bwd":
            return   # there are no backward hooks to remove
        # in place: handles and a rebuilt model may share the list
        self._handles[:] = [h for h in self._handles if not including_permanent and (
            h.is_permanent or (level is not None and h.context_level != level))]

    def clear_context(self):
        """Empty ``ctx``."""
        self.ctx = {}

    @property
    def fwd_hooks(self):
        """The registered handles, in calling order."""
        return list(self._handles)

    @property
    def bwd_hooks(self):
        """Always empty: the C core has forward hooks only."""
        return []

    def has_hooks(self, dir="both", including_permanent=True, level=None):
        """Whether a hook is registered (of context ``level`` when given; permanent ones
        count unless including_permanent=False)."""
        _check_dir(dir)
        return dir != "bwd" and any((including_permanent or not h.is_permanent) and
                                    (level is None or h.context_level == level)
                                    for h in self._handles)

    def layer(self):
        """The block index in the name (``blocks.3.attn.hook_q`` -> 3); ValueError without one."""
        parts = self.name.split(".")
        if len(parts) < 2 or parts[0] != "blocks":
            raise ValueError(f"{self.name} is not inside a block and has no layer")
        return int(parts[1])

    def run(self, act):
        """Run the hooks on ``act`` (a view of the C buffer), writing returned values into it.

        After ``set_array_type("torch")`` a user's hook gets ``torch.from_numpy(act)``, the
        same memory, so in-place tensor edits are edits of the activation; a returned
        tensor is copied in like an array. The package's own hooks (``_mi_raw``) always
        get the NumPy view."""
        shown = None
        for h in list(self._handles):
            if h.raw or not torch_mode():
                arg = act
            else:
                if shown is None:
                    shown = to_user(act)
                arg = shown
            ret = h.fn(arg, hook=self)
            if ret is None or ret is act or ret is arg:
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
            if ret.__array_interface__["data"][0] == act.__array_interface__["data"][0] \
                    and ret.strides == act.strides:
                continue          # the activation itself (a tensor view of it returned)
            np.copyto(act, ret, casting="same_kind")

    def __repr__(self):
        return f"HookPoint({self.name!r}, {len(self._handles)} hooks)"


def _position_axis(name):
    """The position axis of an activation with its batch axis: the query axis (2) of
    [batch, head, query, key] attention scores and patterns, else axis 1."""
    return 2 if name.endswith(("hook_attn_scores", "hook_pattern")) else 1


class _CacheHook:
    """A hook that stores each activation it sees in ``cache`` under the hook's name.

    Without a position slice it stores the activation itself (a zero-copy view whose
    arena slot the pass keeps). With one it stores a copy of the selected positions
    only, and is ``transient``: the pass gives the point no slot of its own, so the
    memory held is that of the slice."""

    _mi_raw = True   # stores NumPy views: the cache converts when read

    def __init__(self, cache, remove_batch_dim, pos_slice):
        self.cache = cache
        self.remove_batch_dim = remove_batch_dim
        self.pos_slice = Slice.unwrap(pos_slice)
        self.transient = self.pos_slice.mode != "identity"

    def __call__(self, act, hook):
        if self.transient:
            try:
                act = self.pos_slice.apply(act, dim=_position_axis(hook.name))
            except IndexError as e:
                raise IndexError(f"pos_slice at {hook.name}: {e}") from None
            act = act.clone() if hasattr(act, "clone") else act.copy()
        self.cache[hook.name] = act[0] if self.remove_batch_dim else act


class HookedRootMixin:
    """TransformerLens's ``HookedRootModule`` hook API for a model with ``hook_dict``
    (name -> HookPoint): adding and removing hooks by name or filter, context levels,
    ``hook.ctx``, and caching through hooks."""

    context_level = 0   # depth of nested ``hooks()`` contexts
    is_caching = False  # whether caching hooks were added (reset by ``reset_hooks``)

    def hook_points(self):
        """Every HookPoint, in module order."""
        return self.hook_dict.values()

    def _points_matching(self, name):
        if isinstance(name, str):
            if name not in self.hook_dict:
                raise KeyError(f"unknown hook point {name!r} (this model has {len(self.hook_dict)}; "
                               f"see model.hook_dict)")
            return [self.hook_dict[name]]
        if callable(name):
            return [hp for n, hp in self.hook_dict.items() if name(n)]
        raise TypeError(f"hook name must be a string or a filter function, got {type(name).__name__}")

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False):
        """Register ``hook(activation, hook)`` at the point ``name`` (or every point a filter
        function accepts) at context ``level``. Returns the handles."""
        return [hp.add_hook(hook, dir=dir, is_permanent=is_permanent, prepend=prepend, level=level)
                for hp in self._points_matching(name)]

    def add_perma_hook(self, name, hook, dir="fwd"):
        """``add_hook`` with is_permanent=True (survives ``reset_hooks()``)."""
        return self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(self, direction="both", including_permanent=False, level=None):
        """Remove the non-permanent hooks (of context ``level`` only, when given; every hook
        with including_permanent) from every point."""
        for hp in self.hook_points():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self):
        """Empty every hook point's ``ctx``."""
        for hp in self.hook_points():
            hp.clear_context()

    def reset_hooks(self, clear_contexts=True, direction="both", including_permanent=False, level=None):
        """Remove hooks as ``remove_all_hook_fns`` and, with clear_contexts, empty every ``ctx``."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)
        self.is_caching = False

    @contextlib.contextmanager
    def hooks(self, fwd_hooks=(), bwd_hooks=(), reset_hooks_end=True, clear_contexts=False):
        """Context manager: the given ``[(name_or_filter, fn)]`` hooks are active inside it,
        at a new context level; on exit (with reset_hooks_end) the non-permanent hooks of
        that level are removed and, with clear_contexts, every ``ctx`` emptied."""
        if bwd_hooks:
            raise NotImplementedError("backward hooks are not supported")
        self.context_level += 1
        try:
            for name, fn in fwd_hooks:
                self.add_hook(name, fn, level=self.context_level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=self.context_level)
            self.context_level -= 1

    def get_caching_hooks(self, names_filter=None, incl_bwd=False, device=None, remove_batch_dim=False,
                          cache=None, pos_slice=None):
        """``(cache, fwd_hooks, bwd_hooks)``: hooks that store the activations of the points
        ``names_filter`` accepts in the dict ``cache`` (a new one by default), not yet added.

        ``pos_slice`` (a ``utils.Slice`` input) keeps only those positions, as a copy: the
        position axis is axis 1, the query axis for attention scores and patterns. One
        deliberate difference: TransformerLens slices axis -2 of the per-head inputs
        (``hook_attn_in``, ``hook_q/k/v_input``, ln1's points with them on), their head
        axis; here their positions are sliced."""
        if incl_bwd:
            raise NotImplementedError("incl_bwd: backward hooks are not supported")
        check_cpu_device(device)
        keep = names_filter_fn(names_filter)
        cache = {} if cache is None else cache
        self.is_caching = True
        save = _CacheHook(cache, remove_batch_dim, pos_slice)
        return cache, [(name, save) for name in self.hook_dict if keep(name)], []

    def add_caching_hooks(self, names_filter=None, incl_bwd=False, device=None, remove_batch_dim=False,
                          cache=None):
        """Add hooks that store the activations of every later forward pass in ``cache`` (a
        new dict by default), which is returned; ``reset_hooks()`` removes them. The stored
        arrays are views of each pass's arena (no copies)."""
        cache, fwd, _ = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache)
        for name, fn in fwd:
            self.add_hook(name, fn)
        return cache

    def cache_all(self, cache, incl_bwd=False, device=None, remove_batch_dim=False):
        """Deprecated (as in TransformerLens): ``add_caching_hooks`` of every point into ``cache``."""
        logging.warning("cache_all is deprecated and will eventually be removed, use "
                        "add_caching_hooks or run_with_cache")
        self.add_caching_hooks(None, incl_bwd, device, remove_batch_dim, cache)

    def cache_some(self, cache, names, incl_bwd=False, device=None, remove_batch_dim=False):
        """Deprecated (as in TransformerLens): ``add_caching_hooks`` of the points ``names``
        (a filter function or names) into ``cache``."""
        logging.warning("cache_some is deprecated and will eventually be removed, use "
                        "add_caching_hooks or run_with_cache")
        self.add_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache)

    def _run_with_caching_hooks(self, model_args, model_kwargs, names_filter, remove_batch_dim,
                                pos_slice, reset_hooks_end, clear_contexts):
        """(output, cache dict) of ``forward(*model_args, **model_kwargs)`` with caching
        hooks active (``run_with_cache`` through hooks, as TransformerLens)."""
        cache, fwd, _ = self.get_caching_hooks(names_filter, remove_batch_dim=remove_batch_dim,
                                               pos_slice=pos_slice)
        with self.hooks(fwd, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            out = self.forward(*model_args, **model_kwargs)
        return out, cache
