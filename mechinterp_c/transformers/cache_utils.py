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
