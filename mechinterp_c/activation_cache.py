"""``ActivationCache``: the activations of one forward pass, by hook name.

The arrays are zero-copy NumPy views into the forward pass's activation arena;
they stay valid after later calls and after the model is deleted.
"""
from .utils import get_act_name


class ActivationCache:
    """A mapping from hook names to activations, as TransformerLens's ``ActivationCache``.

    ``cache_dict`` maps full hook names to arrays; ``model`` is the model that
    produced them (used by the analysis methods for its config and weights).
    Keys may be full names or TransformerLens short keys: ``cache["pattern", 0]``,
    ``cache["embed"]``, ``cache["scale", 0, "ln1"]``, ``cache["resid_pre", -1]``.
    """

    def __init__(self, cache_dict, model, has_batch_dim=True):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    def _full_name(self, key):
        if isinstance(key, str):
            return key if key in self.cache_dict else get_act_name(key)
        if isinstance(key, tuple):
            if len(key) > 1 and key[1] is not None and key[1] < 0:
                key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])
            return get_act_name(*key)
        raise TypeError(f"cache key must be a hook name or a (name, layer[, layer_type]) tuple, got {key!r}")

    def __getitem__(self, key):
        name = self._full_name(key)
        try:
            return self.cache_dict[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in the cache (it holds {len(self.cache_dict)} "
                           f"activations; see cache.keys())") from None

    def __contains__(self, key):
        return self._full_name(key) in self.cache_dict

    def __len__(self):
        return len(self.cache_dict)

    def __iter__(self):
        return iter(self.cache_dict)

    def keys(self):
        """Hook names in forward order."""
        return self.cache_dict.keys()

    def values(self):
        """Activations in forward order."""
        return self.cache_dict.values()

    def items(self):
        """(hook name, activation) pairs in forward order."""
        return self.cache_dict.items()

    def __repr__(self):
        return f"ActivationCache with keys {list(self.cache_dict)}"
