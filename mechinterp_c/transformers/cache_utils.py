"""The key/value cache of the Hugging Face API (transformers' ``DynamicCache``).

``model(input_ids, use_cache=True)`` returns ``out.past_key_values``, a
``DynamicCache``; passing it back as ``past_key_values=`` runs only the new
positions, attending over the cached keys and values, and grows the cache by
them. The keys and values live in the C core (``_core.KVCache``); the cache is
bound to its batch size and model on first use, as transformers' own cache takes
its shapes from the first ``update``.
"""
import numpy as np

from .. import _core
from ..utils import to_numpy


class DynamicCache:
    """Per-layer keys and values of every position a model has run, held by the C core.

    ``get_seq_length()`` is the number of cached positions (padding included).
    ``cache[i]`` gives layer i's (keys, values), each [batch, n_kv_heads, pos, d_head]
    (copies, as transformers' legacy tuple layout). Storage grows on use up to the
    model's context (``n_positions``); a call past it is refused."""

    def __init__(self, config=None):
        self._core = None
        self._config = config

    def _bind(self, n_layers, batch, n_kv_heads, d_head, capacity):
        """The C cache for a model of these shapes (made on first use); a cache made for
        other shapes is refused by the core with a ValueError naming the difference."""
        if self._core is None:
            self._core = _core.KVCache(n_layers, batch, n_kv_heads, d_head, capacity)
        return self._core

    def get_seq_length(self, layer_idx=0):
        """Positions cached by layer ``layer_idx`` (0 for an empty cache)."""
        return 0 if self._core is None else self._core.length(layer_idx)

    def get_max_cache_shape(self, layer_idx=0):
        """None: the cache grows as positions are added (up to the model's context)."""
        return None

    def __len__(self):
        return 0 if self._core is None else self._core.n_layers

    def __getitem__(self, layer_idx):
        if self._core is None:
            raise IndexError("DynamicCache: the cache is empty")
        return self._core.keys(layer_idx), self._core.values(layer_idx)

    def __iter__(self):
        for l in range(len(self)):
            yield self[l]

    def to_legacy_cache(self):
        """((keys, values) per layer) as transformers' legacy format (copies)."""
        return tuple(self)

    @property
    def attention_mask(self):
        """The padding mask of the cached positions [batch, pos] (int64, 1 real)."""
        if self._core is None:
            return None
        return self._core.mask().astype(np.int64)

    def reset(self):
        """Forget every cached position."""
        if self._core is not None:
            self._core.reset()


def cache_inputs(past, use_cache, shape, attention_mask, position_ids, dims):
    """What a causal LM's forward hands the C pass for the cache, the positions and the
    padding mask, shared by every family's drop-in.

    ``past``: a DynamicCache or None; ``use_cache``: make one when ``past`` is None;
    ``shape``: (batch, new positions); ``dims``: (n_layers, n_kv_heads, d_head, n_ctx)
    for binding the cache. Returns ``(cache, kv, pos, mask, padded)``: the cache object
    (None without one), its C cache, positions [B, T] (int64; past..past+T-1 by
    default, Hugging Face's rule), the float32 keep-mask of the new positions (None when
    nothing is padded) and the boolean padded positions (None likewise).
    ``attention_mask`` covers cached + new positions; its cached part must be the mask
    the cache was filled with."""
    if past is not None and not isinstance(past, DynamicCache):
        raise TypeError(f"past_key_values: expected a DynamicCache (from use_cache=True), got "
                        f"{type(past).__name__}")
    B, T = shape
    cache = past if past is not None else (DynamicCache() if use_cache else None)
    kv, n_past = None, 0
    if cache is not None:
        n_layers, n_kv, d_head, n_ctx = dims
        kv = cache._bind(n_layers, B, n_kv, d_head, n_ctx)
        n_past = cache.get_seq_length()
    if position_ids is None:
        pos = np.broadcast_to(np.arange(n_past, n_past + T, dtype=np.int64), (B, T))
    else:
        pos = np.asarray(to_numpy(position_ids)).astype(np.int64)
        if pos.size not in (T, B * T):
            raise ValueError(f"position_ids: expected shape {(B, T)} like input_ids, got {pos.shape}")
        pos = np.broadcast_to(pos.reshape(-1, T), (B, T))
    pos = np.ascontiguousarray(pos)
    mask = padded = None
    if attention_mask is not None:
        m = np.asarray(to_numpy(attention_mask))
        if m.ndim == 1:
            m = m[None]
        if m.shape != (B, n_past + T):
            like = "like input_ids" if kv is None else f"(cached {n_past} + new {T} positions)"
            raise ValueError(f"attention_mask: expected shape {(B, n_past + T)} {like}, "
                             f"got {m.shape}")
        keep = m != 0
        if n_past:
            if kv.batch == B and not np.array_equal(keep[:, :n_past], kv.mask() != 0):
                raise ValueError("attention_mask: its first past positions differ from the "
                                 "mask the cache was filled with")
            keep = keep[:, n_past:]
        if not keep.all():
            mask = np.ascontiguousarray(keep, dtype=np.float32)
            padded = ~keep
    return cache, kv, pos, mask, padded
