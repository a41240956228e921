"""Attribution patching: the linear approximation of activation patching from one
forward and backward pass (Neel Nanda's attribution patching notebook, ARENA's
formulation).

For each hook point the score of patching the clean activation into the corrupted
run is approximated by ``(clean_act - corrupt_act) * d metric / d act`` evaluated on
the corrupted run, summed over the batch and over the activation's feature axis
(d_model, d_head, d_mlp): per position for the residual stream and layer outputs
([pos]), per position and head for ``hook_q/k/v/z/result`` ([pos, head]), per head,
destination and source for ``hook_pattern`` / ``hook_attn_scores`` ([head, dest, src]).

Example (IOI: how much each head's output explains the logit difference)::

    from mechinterp_c import metrics
    from mechinterp_c.attribution import attribution_patch
    scores = attribution_patch(model, clean_tokens, corrupt_tokens,
                               metrics.logit_diff(answers, wrong), names=lambda n: n.endswith("hook_z"))
    scores["blocks.3.attn.hook_z"]        # [pos, n_heads]
    scores.stack("attn.hook_z")           # [n_layers, pos, n_heads]
"""
import numpy as np

from .hook_points import names_filter_fn

_NO_FEATURE_AXIS = ("hook_pattern", "hook_attn_scores")


class AttributionScores(dict):
    """Hook name -> attribution scores, with the metric on the clean and corrupted
    inputs (``clean_value``, ``corrupt_value``)."""

    def __init__(self, scores, clean_value, corrupt_value):
        super().__init__(scores)
        self.clean_value = clean_value
        self.corrupt_value = corrupt_value

    def stack(self, point):
        """The scores of ``blocks.{l}.{point}`` for every layer that has them, stacked
        along a new first axis (``stack("hook_resid_pre")`` -> [n_layers, pos])."""
        keys = sorted((k for k in self if k.startswith("blocks.") and k.split(".", 2)[2] == point),
                      key=lambda k: int(k.split(".")[1]))
        if not keys:
            raise KeyError(f"no scores for blocks.*.{point} (have {sorted(self)[:6]}...)")
        return np.stack([self[k] for k in keys])


def reduce_scores(name, clean_act, corrupt_act, grad):
    """``(clean_act - corrupt_act) * grad`` summed over the batch and the feature axis
    (none for attention patterns and scores), in float64."""
    prod = (np.asarray(clean_act, np.float64) - np.asarray(corrupt_act, np.float64)) * np.asarray(grad, np.float64)
    if np.isnan(prod).any() and name.endswith(_NO_FEATURE_AXIS):
        # masked scores are -inf on both runs: (-inf) - (-inf) is NaN where nothing flows
        prod = np.nan_to_num(prod, nan=0.0)
    axes = (0,) if name.endswith(_NO_FEATURE_AXIS) else (0, prod.ndim - 1)
    return prod.sum(axis=axes)


def attribution_patch(model, clean, corrupt, metric, names=None, attention_mask=None):
    """Attribution scores of the hook points ``names`` accepts (a name, a list, a filter
    function; None: every point) for patching ``clean`` into ``corrupt`` (token arrays
    [batch, pos] of the same shape), with ``metric`` as in ``mechinterp_c.metrics``
    ('loss', ``metrics.logit_diff``, ``metrics.logprob`` or a function logits ->
    (value, dvalue_dlogits)). The gradient is taken on the corrupted run. Returns an
    :class:`AttributionScores` dict: hook name -> scores (see the module docstring)."""
    keep = names_filter_fn(names)
    if np.shape(clean) != np.shape(corrupt):
        raise ValueError(f"attribution_patch: clean and corrupt inputs must have the same shape, got "
                         f"{np.shape(clean)} and {np.shape(corrupt)}")
    # one pass each (the clean run's backward gives its metric value; its gradients
    # are not used)
    clean_value, clean_cache = model.run_with_cache(clean, incl_bwd=True, metric=metric, names_filter=keep,
                                                    attention_mask=attention_mask, return_cache_object=False)
    corrupt_value, cache = model.run_with_cache(corrupt, incl_bwd=True, metric=metric, names_filter=keep,
                                                attention_mask=attention_mask, return_cache_object=False)
    scores = {n: reduce_scores(n, clean_cache[n], cache[n], cache[n + "_grad"])
              for n in cache if not n.endswith("_grad") and n + "_grad" in cache}
    return AttributionScores(scores, clean_value, corrupt_value)
