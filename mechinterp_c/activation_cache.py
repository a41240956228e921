"""``ActivationCache``: the activations of one forward pass, by hook name.

The arrays are zero-copy NumPy views into the forward pass's activation arena;
they stay valid after later calls and after the model is deleted.

The analysis methods follow TransformerLens's ``ActivationCache`` (3.x) exactly
(same arguments, defaults, labels, shapes and numbers) but work on NumPy arrays.

Shape legend: L = layers covered, B = batch, P = positions, H = heads,
D = d_model, Dh = d_head, M = d_mlp, V = d_vocab_out, C = stacked components.

What the analysis methods need from ``model`` (TransformerLens names):
  cfg                 n_layers, d_model, n_heads, d_mlp, attn_only, normalization_type, eps
  W_O [L, H, Dh, D]   for ``compute_head_results`` when ``hook_result`` was not cached
  b_O [L, D]          for the ``bias`` row of ``get_full_resid_decomposition``
  W_out [L, M, D], b_out [L, D]   for neuron results (MLP models)
  W_U [D, V]          for ``logit_attrs`` (or ``tokens_to_residual_directions``)
  ln_final            optional callable; otherwise ``ln_final_w`` / ``ln_final_b`` arrays
                      (absent for LNPre / RMSPre) are used to recompute the final norm
  to_single_token     only when ``logit_attrs`` is given strings
"""
import logging
from collections import Counter

import numpy as np

from .array_type import to_user, torch_mode, user_facing
from .devices import check_cpu_device  # noqa: F401 (also imported from here by hook_points)
from .utils import Slice, get_act_name, to_numpy

_NORM_TYPES = ("LN", "LNPre", "RMS", "RMSPre")


def _as_slice(s):
    return s if isinstance(s, Slice) else Slice(s)


def _normalize_projection_to_2d(project):
    """(project as [D, n_outs] or None, whether to squeeze the last axis at the end)."""
    if project is None:
        return None, False
    project = to_numpy(project)
    if project.ndim == 1:
        return project[:, None], True
    if project.ndim != 2:
        raise ValueError(f"project_output_onto must be [d_model] or [d_model, num_outputs], "
                         f"got shape {project.shape}")
    return project, False


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

    # ------------------------------------------------------------------ mapping

    @property
    def has_embed(self):
        """Whether ``hook_embed`` is in the cache."""
        return "hook_embed" in self.cache_dict

    @property
    def has_pos_embed(self):
        """Whether ``hook_pos_embed`` is in the cache."""
        return "hook_pos_embed" in self.cache_dict

    @property
    def _cfg(self):
        if self.model is None or getattr(self.model, "cfg", None) is None:
            raise ValueError("this ActivationCache has no model (or the model has no cfg); "
                             "the analysis methods need one")
        return self.model.cfg

    def _full_name(self, key):
        if isinstance(key, str):
            return key if key in self.cache_dict else get_act_name(key)
        if isinstance(key, tuple):
            if len(key) > 1 and key[1] is not None and key[1] < 0:
                key = (key[0], self._cfg.n_layers + key[1], *key[2:])
            return get_act_name(*key)
        raise TypeError(f"cache key must be a hook name or a (name, layer[, layer_type]) tuple, got {key!r}")

    def _get(self, key):
        """The activation under ``key`` as stored (NumPy), whatever the array type."""
        name = self._full_name(key)
        try:
            return self.cache_dict[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in the cache (it holds {len(self.cache_dict)} "
                           f"activations; see cache.keys())") from None

    def __getitem__(self, key):
        """The activation under a full hook name or a TransformerLens short key (a torch
        tensor sharing its memory after ``set_array_type("torch")``)."""
        return to_user(self._get(key))

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
        """Activations in forward order (tensors in torch mode, as ``__getitem__``)."""
        if torch_mode():
            return [to_user(v) for v in self.cache_dict.values()]
        return self.cache_dict.values()

    def items(self):
        """(hook name, activation) pairs in forward order (tensors in torch mode)."""
        if torch_mode():
            return [(k, to_user(v)) for k, v in self.cache_dict.items()]
        return self.cache_dict.items()

    def __repr__(self):
        return f"ActivationCache with keys {list(self.cache_dict)}"

    def to(self, device):
        """No-op returning self: the activations are already in CPU memory, where they stay.
        ``device`` must be None or a CPU device (another device is a ValueError)."""
        check_cpu_device(device)
        return self

    def toggle_autodiff(self, mode=False):
        """No-op: these activations never record an autodiff graph (gradients come from
        ``model.backward``), so there is no global gradient state to switch either way,
        and nothing else changes (TransformerLens sets ``torch.set_grad_enabled(mode)``)."""
        if not isinstance(mode, bool):
            raise TypeError(f"toggle_autodiff: mode must be a bool, got {type(mode).__name__}")

    # ------------------------------------------------------------ batch helpers

    def _batch_size(self):
        """The most common leading size across entries (TransformerLens's rule)."""
        counts = Counter(np.shape(v)[0] for v in self.cache_dict.values() if np.ndim(v) > 0)
        return counts.most_common(1)[0][0] if counts else 1

    def remove_batch_dim(self):
        """Drop the batch axis of every entry (the batch must have size 1); returns self."""
        if self.has_batch_dim:
            batch_size = self._batch_size()
            if batch_size != 1:
                raise ValueError(f"Cannot remove batch dimension from cache with batch size {batch_size}")
            for key, value in self.cache_dict.items():
                if np.ndim(value) > 0 and np.shape(value)[0] == 1:
                    self.cache_dict[key] = value[0]
            self.has_batch_dim = False
        else:
            logging.warning("Tried removing batch dimension after already having removed it.")
        return self

    def apply_slice_to_batch_dim(self, batch_slice):
        """A new cache with ``batch_slice`` (a ``Slice`` input) applied to every batched entry."""
        batch_slice = _as_slice(batch_slice)
        if not (self.has_batch_dim or batch_slice.mode == "identity"):
            raise ValueError("Cannot index into a cache without a batch dim")
        still_has_batch_dim = batch_slice.mode != "int" and self.has_batch_dim
        batch_size = self._batch_size()
        new = {name: (batch_slice.apply(v, dim=0) if np.ndim(v) > 0 and np.shape(v)[0] == batch_size else v)
               for name, v in self.cache_dict.items()}
        return ActivationCache(new, self.model, has_batch_dim=still_has_batch_dim)

    # --------------------------------------------------------------- internals

    def _layer_arg(self, layer, name="layer"):
        """TransformerLens's layer convention: None or -1 mean n_layers; else in [0, n_layers]."""
        n_layers = self._cfg.n_layers
        if layer is None or layer == -1:
            return n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"{name} must be an int or None, got {layer!r}")
        if not 0 <= layer <= n_layers:
            raise ValueError(f"{name}={layer} is out of range: expected 0..{n_layers} "
                             f"(n_layers), -1 or None")
        return int(layer)

    def _model_array(self, attr):
        value = getattr(self.model, attr, None)
        if value is None:
            raise AttributeError(f"the model has no {attr!r}; this analysis needs it")
        return to_numpy(value)

    def _ln_final(self, x):
        """The model's final norm with freshly computed statistics, applied to x [..., D]."""
        fn = getattr(self.model, "ln_final", None)
        if callable(fn):
            return to_numpy(fn(x))
        norm = self._cfg.normalization_type
        eps = getattr(self._cfg, "eps", 1e-5)
        x64 = np.asarray(x, dtype=np.float64)
        if norm in ("LN", "LNPre"):
            x64 = x64 - x64.mean(axis=-1, keepdims=True)
            out = x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)
        else:  # RMS / RMSPre
            out = x64 / np.sqrt((x64 * x64).mean(axis=-1, keepdims=True) + eps)
        if norm in ("LN", "RMS"):
            w = getattr(self.model, "ln_final_w", None)
            b = getattr(self.model, "ln_final_b", None)
            if w is not None:
                out = out * to_numpy(w)
            if b is not None:
                out = out + to_numpy(b)
        return out.astype(np.result_type(x.dtype, np.float32), copy=False)

    def _get_cached_ln_scale(self, layer, mlp_input, pos_slice, batch_slice=None):
        """The cached norm scale [B, P, 1] for the input of ``layer`` (n_layers = ln_final)."""
        if layer is None or layer == self._cfg.n_layers:
            key = "ln_final.hook_scale"
        else:
            key = f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        if key not in self.cache_dict:
            raise KeyError(f"Cached LN scale not found at '{key}'. apply_ln operations require the "
                           f"model to have cached this hook.")
        scale = pos_slice.apply(self.cache_dict[key], dim=-2)
        if batch_slice is not None and self.has_batch_dim:
            scale = batch_slice.apply(scale)
        return scale

    def _empty_stack(self, pos_slice, last_dim=None):
        src = pos_slice.apply(self._get("hook_embed"), dim=-2)
        shape = src.shape if last_dim is None else src.shape[:-1] + (last_dim,)
        return np.zeros((0, *shape), dtype=src.dtype)

    # ---------------------------------------------------------------- analyses

    def accumulated_resid(self, layer=None, incl_mid=False, apply_ln=False, pos_slice=None,
                          mlp_input=False, return_labels=False):
        """The residual stream accumulated up to the input of ``layer`` [C, ..., D] (logit lens).

        Stacks ``resid_pre`` of every layer < ``layer`` (plus ``resid_mid`` with
        ``incl_mid``, plus the current ``resid_mid`` with ``mlp_input``) and, when
        ``layer`` is n_layers / -1 / None, the final ``resid_post``. ``apply_ln`` at the
        final layer recomputes ln_final per component (logit lens); at an inner layer it
        uses the cached scale. Labels: ``"0_pre"``, ``"0_mid"``, ..., ``"final_post"``.
        """
        pos_slice = _as_slice(pos_slice)
        layer = self._layer_arg(layer)
        n_layers = self._cfg.n_layers
        labels, parts = [], []
        for l in range(layer + 1):
            if l == n_layers:
                parts.append(self._get(("resid_post", n_layers - 1)))
                labels.append("final_post")
                continue
            parts.append(self._get(("resid_pre", l)))
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self._get(("resid_mid", l)))
                labels.append(f"{l}_mid")
        components = np.stack([pos_slice.apply(c, dim=-2) for c in parts], axis=0)
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice,
                                                mlp_input=mlp_input, has_batch_dim=self.has_batch_dim,
                                                recompute_ln=layer == n_layers)
        return (components, labels) if return_labels else components

    def _residual_directions(self, tokens):
        fn = getattr(self.model, "tokens_to_residual_directions", None)
        if callable(fn):
            return to_numpy(fn(tokens))
        W_U = self._model_array("W_U")
        if isinstance(tokens, str):
            tokens = self.model.to_single_token(tokens)
        tokens = to_numpy(tokens)
        if tokens.size > 1:
            return np.moveaxis(W_U[:, tokens], 0, -1)
        return W_U[:, int(tokens.reshape(()))]

    def _token_shape(self, tokens):
        if isinstance(tokens, str):
            return np.shape(self.model.to_single_token(tokens))
        return np.shape(to_numpy(tokens))

    def logit_attrs(self, residual_stack, tokens, incorrect_tokens=None, pos_slice=None,
                    batch_slice=None, has_batch_dim=True):
        """Each component's direct contribution to the logit of ``tokens`` [C, ...].

        Applies the final norm's cached scale to ``residual_stack`` [C, ..., D] and dots it
        with the unembedding direction of ``tokens`` (str, int or int array; minus that of
        ``incorrect_tokens`` when given, which must have the same shape).
        """
        pos_slice = _as_slice(pos_slice)
        batch_slice = _as_slice(batch_slice)
        directions = self._residual_directions(tokens)
        if incorrect_tokens is not None:
            shape_a, shape_b = self._token_shape(tokens), self._token_shape(incorrect_tokens)
            if shape_a != shape_b:
                raise ValueError(f"tokens and incorrect_tokens must have the same shape! "
                                 f"(tokens.shape={shape_a}, incorrect_tokens.shape={shape_b})")
            directions = directions - self._residual_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(to_numpy(residual_stack), layer=-1, pos_slice=pos_slice,
                                        batch_slice=batch_slice, has_batch_dim=has_batch_dim)
        return (scaled * directions).sum(axis=-1)

    def decompose_resid(self, layer=None, mlp_input=False, mode="all", apply_ln=False,
                        pos_slice=None, incl_embeds=True, return_labels=False):
        """The residual stream input to ``layer`` split into its writers [C, ..., D].

        Components: ``embed``, ``pos_embed`` (with ``incl_embeds``), then each earlier
        layer's ``attn_out`` and ``mlp_out`` (``mode`` "all", "attn" or "mlp"), plus the
        current layer's ``attn_out`` with ``mlp_input``. Labels as TransformerLens:
        ``"embed"``, ``"pos_embed"``, ``"0_attn_out"``, ``"0_mlp_out"``, ...
        """
        if mode not in ("all", "mlp", "attn"):
            raise ValueError(f"mode must be 'all', 'mlp' or 'attn', got {mode!r}")
        pos_slice = _as_slice(pos_slice)
        layer = self._layer_arg(layer)
        incl_attn = mode != "mlp"
        incl_mlp = mode != "attn" and not getattr(self._cfg, "attn_only", False)
        parts, labels = [], []
        if incl_embeds:
            if self.has_embed:
                parts.append(self._get("hook_embed"))
                labels.append("embed")
            if self.has_pos_embed:
                parts.append(self._get("hook_pos_embed"))
                labels.append("pos_embed")
        for l in range(layer):
            if incl_attn:
                parts.append(self._get(("attn_out", l)))
                labels.append(f"{l}_attn_out")
            if incl_mlp:
                parts.append(self._get(("mlp_out", l)))
                labels.append(f"{l}_mlp_out")
        if mlp_input and incl_attn:
            if layer >= self._cfg.n_layers:
                raise ValueError("mlp_input=True needs layer < n_layers (there is no attention "
                                 "layer after the last block)")
            parts.append(self._get(("attn_out", layer)))
            labels.append(f"{layer}_attn_out")
        if not parts:
            raise ValueError("decompose_resid: no components selected (incl_embeds=False, "
                             "layer=0 and nothing else to include)")
        components = np.stack([pos_slice.apply(c, dim=-2) for c in parts], axis=0)
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice,
                                                mlp_input=mlp_input)
        return (components, labels) if return_labels else components

    def compute_head_results(self):
        """Cache each head's residual-stream write ``blocks.{l}.attn.hook_result`` [B, P, H, D].

        Computed from ``hook_z`` [B, P, H, Dh] and ``model.W_O`` [L, H, Dh, D] (no b_O), as
        TransformerLens does, for every layer whose result is not cached yet; a no-op (with a
        warning) if all are.
        """
        head_ndim = 3 + self.has_batch_dim  # [B,] P, H, D
        missing = [l for l in range(self._cfg.n_layers)
                   if np.ndim(self.cache_dict.get(f"blocks.{l}.attn.hook_result")) < head_ndim]
        if not missing:
            logging.warning("Tried to compute head results when they were already cached")
            return
        W_O = self._model_array("W_O")
        for layer in missing:  # only the layers a partial cache lacks
            z_key = f"blocks.{layer}.attn.hook_z"
            if z_key not in self.cache_dict:
                raise KeyError(f"compute_head_results needs {z_key!r} (or hook_result) in the cache; "
                               f"run the model with hook_z cached")
            z = self.cache_dict[z_key]
            # Sum over d_head, one matmul per head: [..., P, Dh] @ [Dh, D]
            result = np.einsum("...hd,hdm->...hm", z, W_O[layer], optimize=True)
            self.cache_dict[f"blocks.{layer}.attn.hook_result"] = result.astype(z.dtype, copy=False)

    def stack_head_results(self, layer=-1, return_labels=False, incl_remainder=False,
                           pos_slice=None, apply_ln=False):
        """Every head's result for layers < ``layer``, stacked [L*H (+1), ..., D].

        Labels ``"L{l}H{h}"``; with ``incl_remainder`` a last ``"remainder"`` row holds
        ``resid_post[layer - 1]`` minus the sum of the heads. Head results are computed
        from ``hook_z`` and ``W_O`` when ``hook_result`` was not cached.
        """
        pos_slice = _as_slice(pos_slice)
        layer = self._layer_arg(layer)
        n_heads = self._cfg.n_heads
        if any(f"blocks.{l}.attn.hook_result" not in self.cache_dict for l in range(layer)):
            self.compute_head_results()
        parts, labels = [], []
        for l in range(layer):
            # [..., P, H, D] -> pos slice on the position axis (-3)
            parts.append(pos_slice.apply(self._get(("result", l, "attn")), dim=-3))
            labels.extend(f"L{l}H{h}" for h in range(n_heads))
        if parts:
            components = np.moveaxis(np.concatenate(parts, axis=-2), -2, 0)
            if incl_remainder:
                remainder = pos_slice.apply(self._get(("resid_post", layer - 1)), dim=-2) - components.sum(axis=0)
                components = np.concatenate([components, remainder[None]], axis=0)
                labels.append("remainder")
        elif incl_remainder:
            raise ValueError("stack_head_results: incl_remainder with layer=0 has no resid_post "
                             "to take the remainder of")
        else:
            components = self._empty_stack(pos_slice)
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice)
        return (components, labels) if return_labels else components

    def stack_activation(self, activation_name, layer=-1, sublayer_type=None):
        """``activation_name`` of every layer < ``layer``, stacked on a new first axis."""
        layer = self._layer_arg(layer)
        if layer == 0:
            raise ValueError("stack_activation: layer=0 stacks nothing")
        return np.stack([self._get((activation_name, l, sublayer_type)) for l in range(layer)], axis=0)

    def get_neuron_results(self, layer, neuron_slice=None, pos_slice=None, project_output_onto=None):
        """Each neuron's residual-stream write in ``layer``: post[..., n] * W_out[n] [..., M, D].

        ``project_output_onto`` ([D] or [D, n_outs]) is contracted with W_out first, giving
        [..., M] or [..., M, n_outs] without the [..., M, D] intermediate.
        """
        neuron_slice = _as_slice(neuron_slice)
        pos_slice = _as_slice(pos_slice)
        if not 0 <= layer < self._cfg.n_layers:
            raise ValueError(f"layer={layer} is out of range: expected 0..{self._cfg.n_layers - 1}")
        neuron_acts = self._get(("post", layer, "mlp"))
        W_out = self._model_array("W_out")[layer]
        # Position first, while the position axis is still -2
        neuron_acts = pos_slice.apply(neuron_acts, dim=-2)
        neuron_acts = neuron_slice.apply(neuron_acts, dim=-1)
        W_out = neuron_slice.apply(W_out, dim=0)
        if project_output_onto is None:
            return neuron_acts[..., None] * W_out
        project = to_numpy(project_output_onto)
        projected = W_out @ project
        # Decide by the projection's rank, not the product's: an int neuron_slice drops
        # the neuron axis (TransformerLens gets that case wrong).
        if project.ndim == 1:
            return neuron_acts * projected
        return neuron_acts[..., None] * projected

    def _stack_neuron_results_apply_ln_projected(self, layer, pos_slice, neuron_slice, project_2d):
        """LN(a_n W_out_n) @ p = (a_n / s) (W_out_n @ p - mean(W_out_n) sum(p)) per neuron."""
        scale = self._get_cached_ln_scale(layer, False, pos_slice)
        centering = self._cfg.normalization_type in ("LN", "LNPre")
        sum_p = project_2d.sum(axis=0)
        W_out_all = self._model_array("W_out")
        parts = []
        for l in range(layer):
            W_l = neuron_slice.apply(W_out_all[l], dim=0)
            lin_form = W_l @ project_2d
            if centering:
                lin_form = lin_form - W_l.mean(axis=-1)[:, None] * sum_p[None, :]
            a = neuron_slice.apply(pos_slice.apply(self._get(("post", l, "mlp")), dim=-2), dim=-1)
            parts.append((a / scale)[..., None] * lin_form)
        if not parts:
            return self._empty_stack(pos_slice, project_2d.shape[-1])
        return np.moveaxis(np.concatenate(parts, axis=-2), -2, 0)

    def stack_neuron_results(self, layer, pos_slice=None, neuron_slice=None, return_labels=False,
                             incl_remainder=False, apply_ln=False, project_output_onto=None):
        """Every neuron's result for layers < ``layer``, stacked [L*M (+1), ..., D or n_outs].

        Labels ``"L{l}N{n}"``; ``incl_remainder`` adds ``resid_post[layer - 1]`` minus the sum.
        ``project_output_onto`` ([D] or [D, n_outs]) projects each row without materialising
        the [..., M, D] intermediate (folded into the cached-scale LN when ``apply_ln``).
        """
        layer = self._layer_arg(layer)
        # An int keeps its axis here (one row per layer), where TransformerLens fails
        neuron_slice = Slice.unwrap(neuron_slice)
        pos_slice = _as_slice(pos_slice)
        project_2d, squeeze = _normalize_projection_to_2d(project_output_onto)
        d_mlp = self._cfg.d_mlp
        if d_mlp is None:
            raise ValueError("model.cfg.d_mlp must be set")
        neuron_labels = neuron_slice.apply(np.arange(d_mlp), dim=0)
        neuron_labels = np.atleast_1d(neuron_labels)
        labels = [f"L{l}N{h}" for l in range(layer) for h in neuron_labels]
        if incl_remainder and layer == 0:
            raise ValueError("stack_neuron_results: incl_remainder with layer=0 has no resid_post "
                             "to take the remainder of")
        if apply_ln and self._cfg.normalization_type not in _NORM_TYPES:
            apply_ln = False  # nothing to apply (TransformerLens raises KeyError on this path)
        if apply_ln and project_2d is not None:
            components = self._stack_neuron_results_apply_ln_projected(layer, pos_slice, neuron_slice,
                                                                       project_2d)
            if incl_remainder:
                resid_post = pos_slice.apply(self._get(("resid_post", layer - 1)), dim=-2)
                remainder = self.apply_ln_to_stack(resid_post[None], layer, pos_slice=pos_slice)[0] @ project_2d
                if components.shape[0] > 0:
                    remainder = remainder - components.sum(axis=0)
                components = np.concatenate([components, remainder[None]], axis=0)
                labels.append("remainder")
        else:
            parts = [self.get_neuron_results(l, pos_slice=pos_slice, neuron_slice=neuron_slice,
                                             project_output_onto=project_2d) for l in range(layer)]
            if parts:
                components = np.moveaxis(np.concatenate(parts, axis=-2), -2, 0)
                if incl_remainder:
                    full = pos_slice.apply(self._get(("resid_post", layer - 1)), dim=-2)
                    if project_2d is not None:
                        full = full @ project_2d
                    components = np.concatenate([components, (full - components.sum(axis=0))[None]], axis=0)
                    labels.append("remainder")
            else:
                components = self._empty_stack(pos_slice, None if project_2d is None else project_2d.shape[-1])
            if apply_ln:
                components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice)
        if squeeze:
            components = components[..., 0]
        return (components, labels) if return_labels else components

    def apply_ln_to_stack(self, residual_stack, layer=None, mlp_input=False, pos_slice=None,
                          batch_slice=None, has_batch_dim=True, recompute_ln=False):
        """Treat each row of ``residual_stack`` [C, ..., D] as input to ``layer`` and normalise it.

        Centres each row (LN / LNPre) and divides by the cached scale of that layer's ln1
        (ln2 with ``mlp_input``; ln_final for layer n_layers / -1 / None), so the rows still
        sum to the normalised stream. ``pos_slice`` is applied to the scale only (the stack is
        assumed already sliced); ``batch_slice`` to both. With ``recompute_ln`` at the final
        layer each row goes through ln_final with its own statistics (logit lens).
        Models without LN / RMS norm get the stack back unchanged.
        """
        residual_stack = to_numpy(residual_stack)
        if self._cfg.normalization_type not in _NORM_TYPES:
            return residual_stack
        pos_slice = _as_slice(pos_slice)
        batch_slice = _as_slice(batch_slice)
        layer = self._layer_arg(layer)
        if mlp_input and layer == self._cfg.n_layers:
            raise ValueError("mlp_input=True needs layer < n_layers (the final norm is ln_final)")
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if recompute_ln and layer == self._cfg.n_layers:
            return np.stack([self._ln_final(residual_stack[i]) for i in range(residual_stack.shape[0])],
                            axis=0) if residual_stack.shape[0] else residual_stack
        if self._cfg.normalization_type in ("LN", "LNPre"):
            residual_stack = residual_stack - residual_stack.mean(axis=-1, keepdims=True)
        scale = self._get_cached_ln_scale(layer, mlp_input, pos_slice, batch_slice)
        return residual_stack / scale

    def _accumulated_bias(self, layer, mlp_input, include_mlp_biases):
        fn = getattr(self.model, "accumulated_bias", None)
        if callable(fn):
            return to_numpy(fn(layer, mlp_input, include_mlp_biases=include_mlp_biases))
        cfg = self._cfg
        b_O = self._model_array("b_O")
        bias = np.zeros(cfg.d_model, dtype=b_O.dtype)
        with_mlp = include_mlp_biases and not getattr(cfg, "attn_only", False)
        b_out = self._model_array("b_out") if with_mlp else None
        for i in range(layer):
            bias = bias + b_O[i]
            if with_mlp:
                bias = bias + b_out[i]
        if mlp_input:
            bias = bias + b_O[layer]
        return bias

    def get_full_resid_decomposition(self, layer=None, mlp_input=False, expand_neurons=True,
                                     apply_ln=False, pos_slice=None, return_labels=False,
                                     project_output_onto=None):
        """The residual stream input to ``layer`` split into every head, neuron, embedding and bias.

        Rows in order: head results ``"L{l}H{h}"``, neuron results ``"L{l}N{n}"`` (or
        ``"{l}_mlp_out"`` with ``expand_neurons=False``), ``"embed"``, ``"pos_embed"``,
        ``"bias"`` (the accumulated b_O / b_out). The rows sum to the stream [..., D].
        """
        layer = self._layer_arg(layer)
        pos_slice = _as_slice(pos_slice)
        project_2d, squeeze = _normalize_projection_to_2d(project_output_onto)
        ln_folded = apply_ln and project_2d is not None

        def ln_then_project(stack):
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
            return stack @ project_2d if project_2d is not None else stack

        def project(stack):
            if ln_folded:
                return ln_then_project(stack)
            return stack @ project_2d if project_2d is not None else stack

        head_stack, labels = self.stack_head_results(layer + (1 if mlp_input else 0),
                                                     pos_slice=pos_slice, return_labels=True)
        components = [project(head_stack)]
        if not getattr(self._cfg, "attn_only", False) and layer > 0:
            if expand_neurons:
                neuron_stack, neuron_labels = self.stack_neuron_results(
                    layer, pos_slice=pos_slice, return_labels=True, apply_ln=ln_folded,
                    project_output_onto=project_2d)
                labels.extend(neuron_labels)
                components.append(neuron_stack)
            else:
                mlp_stack, mlp_labels = self.decompose_resid(layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                                             incl_embeds=False, mode="mlp", return_labels=True)
                labels.extend(mlp_labels)
                components.append(project(mlp_stack))
        if self.has_embed:
            labels.append("embed")
            components.append(project(pos_slice.apply(self._get("embed"), -2)[None]))
        if self.has_pos_embed:
            labels.append("pos_embed")
            components.append(project(pos_slice.apply(self._get("pos_embed"), -2)[None]))
        bias_full = self._accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)
        if ln_folded:
            bias = ln_then_project(np.broadcast_to(bias_full, (1,) + head_stack.shape[1:-1] + bias_full.shape))
        else:
            if project_2d is not None:
                bias_full = bias_full @ project_2d
            bias = np.broadcast_to(bias_full, (1,) + head_stack.shape[1:-1] + bias_full.shape)
        labels.append("bias")
        components.append(bias.astype(head_stack.dtype, copy=False))
        residual_stack = np.concatenate(components, axis=0)
        if apply_ln and not ln_folded:
            residual_stack = self.apply_ln_to_stack(residual_stack, layer, pos_slice=pos_slice,
                                                    mlp_input=mlp_input)
        if squeeze:
            residual_stack = residual_stack[..., 0]
        return (residual_stack, labels) if return_labels else residual_stack


# the analysis methods' results reach the user in the array type chosen (internal calls
# between them keep NumPy)
for _name in ("accumulated_resid", "logit_attrs", "decompose_resid", "stack_head_results",
              "stack_activation", "get_neuron_results", "stack_neuron_results", "apply_ln_to_stack",
              "get_full_resid_decomposition"):
    setattr(ActivationCache, _name, user_facing(getattr(ActivationCache, _name)))
