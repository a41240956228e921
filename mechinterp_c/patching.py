"""Activation patching with TransformerLens's ``transformer_lens.patching`` names,
arguments and output shapes, computing only what a patch changes.

Each cell of a patching grid is one run of the corrupted tokens with one slice of
one activation replaced by the clean run's (``clean_cache``), measured by a metric
of the logits. TransformerLens runs a full forward pass per cell. Here:

* a patch at layer ``l`` leaves everything before block ``l`` as in the corrupted
  run, so the cells of layer ``l`` start at block ``l`` from the corrupted run's
  cached residual stream (``forward(..., start_at_layer=l)``);
* many cells are stacked along the batch axis of one pass, and the patch is
  written by the C core (``_core.patch_run``), not by a Python hook per cell;
* the built-in metrics (:class:`logit_diff`, :class:`logprob`, :class:`loss`)
  read only the rows (and, for a logit difference, the two unembedding columns)
  they need: the final norm and unembedding run on those rows only.

Any other metric is a function of the logits ``[batch, pos, d_vocab]`` (NumPy),
as TransformerLens users write them; it gets each cell's logits. The patch
setters of TransformerLens are recognised (ours and TransformerLens's own); any
other ``patch_setter`` runs as a Python hook on the same layer-skipping, batched
passes. The keyword ``normalize=True`` returns ``(m - corrupt) / (clean -
corrupt)``; ``attention_mask`` patches padded batches (TransformerLens's patching
functions take none: it is the mask the model's forward takes).
"""
import itertools

import numpy as np

from . import _core
from .attribution import AttributionScores, attribution_patch
from .utils import get_act_name, to_numpy

__all__ = [
    "generic_activation_patch", "make_df_from_ranges",
    "layer_pos_patch_setter", "layer_pos_head_vector_patch_setter", "layer_head_vector_patch_setter",
    "layer_head_pattern_patch_setter", "layer_head_pos_pattern_patch_setter",
    "layer_head_dest_src_pos_pattern_patch_setter",
    "get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out",
    "get_act_patch_mlp_out", "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos", "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_pattern_by_pos", "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos", "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every", "get_act_patch_block_every",
    "logit_diff", "logprob", "loss", "attribution_patch", "AttributionScores", "path_patch",
]


# ------------------------------------------------------------------ index tables
def make_df_from_ranges(column_max_ranges, column_names):
    """Every combination of ``range(m)`` for each column (last column fastest), as a
    pandas DataFrame with ``column_names`` (TransformerLens's function); pandas is
    imported here, only when it is called."""
    import pandas as pd
    rows = list(itertools.product(*[range(m) for m in column_max_ranges]))
    return pd.DataFrame(rows, columns=list(column_names))


def _index_table(ranges, names):
    """The cells of a full grid as an int64 array [n, len(names)] (last axis fastest)."""
    grids = np.meshgrid(*[np.arange(r, dtype=np.int64) for r in ranges], indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=1) if grids else np.zeros((1, 0), np.int64)


def _table_to_df(table, names):
    """The index table as TransformerLens returns it: a pandas DataFrame when pandas is
    installed, else ``{column name: int64 array}``."""
    try:
        import pandas as pd
    except ImportError:
        return {n: table[:, i].copy() for i, n in enumerate(names)}
    return pd.DataFrame(table, columns=list(names))


def _df_to_table(index_df):
    """(int64 array [n, k], column names) of an index_df: a pandas DataFrame, a dict of
    columns, or an integer array [n, k] (columns named by position)."""
    if hasattr(index_df, "columns") and hasattr(index_df, "to_numpy"):
        names = [str(c) for c in index_df.columns]
        arr = index_df.to_numpy()
    elif isinstance(index_df, dict):
        names = list(index_df)
        arr = np.stack([np.asarray(index_df[n]) for n in names], axis=1) if names else np.zeros((0, 0))
    else:
        arr = np.asarray(index_df)
        names = [str(i) for i in range(arr.shape[1])] if arr.ndim == 2 else []
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"index_df: expected a table of index columns (layer first), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"index_df: expected integer indices, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64), names


# ----------------------------------------------------------------- patch setters
# TransformerLens's setters, on NumPy arrays; the C engine writes the same slices
# (their index patterns are in _SETTER_PATTERNS).
def layer_pos_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, pos]: ``act[:, pos, ...] = clean[:, pos, ...]`` (activations
    [batch, pos, ...], everything but attention patterns)."""
    assert len(index) == 2
    layer, pos = index
    corrupted_activation[:, pos, ...] = clean_activation[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, pos, head_index] on [batch, pos, head_index, ...] (q, k, v, z, result)."""
    assert len(index) == 3
    layer, pos, head_index = index
    corrupted_activation[:, pos, head_index] = clean_activation[:, pos, head_index]
    return corrupted_activation


def layer_head_vector_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head_index] on [batch, pos, head_index, ...]: every position."""
    assert len(index) == 2
    layer, head_index = index
    corrupted_activation[:, :, head_index] = clean_activation[:, :, head_index]
    return corrupted_activation


def layer_head_pattern_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head_index] on [batch, head_index, dest_pos, src_pos] (scores, patterns)."""
    assert len(index) == 2
    layer, head_index = index
    corrupted_activation[:, head_index, :, :] = clean_activation[:, head_index, :, :]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head_index, dest_pos] on [batch, head_index, dest_pos, src_pos]."""
    assert len(index) == 3
    layer, head_index, dest_pos = index
    corrupted_activation[:, head_index, dest_pos, :] = clean_activation[:, head_index, dest_pos, :]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head_index, dest_pos, src_pos] on [batch, head_index, dest_pos, src_pos]."""
    assert len(index) == 4
    layer, head_index, dest_pos, src_pos = index
    corrupted_activation[:, head_index, dest_pos, src_pos] = clean_activation[:, head_index, dest_pos, src_pos]
    return corrupted_activation


# setter name -> for each of the activation's axes after batch (three at most), the
# column of the index (after layer) that indexes it, or None for the whole axis
_SETTER_PATTERNS = {
    "layer_pos_patch_setter": (0, None, None),
    "layer_pos_head_vector_patch_setter": (0, 1, None),
    "layer_head_vector_patch_setter": (None, 0, None),
    "layer_head_pattern_patch_setter": (0, None, None),
    "layer_head_pos_pattern_patch_setter": (0, 1, None),
    "layer_head_dest_src_pos_pattern_patch_setter": (0, 1, 2),
}
_SETTER_ARITY = {"layer_pos_patch_setter": 2, "layer_pos_head_vector_patch_setter": 3,
                 "layer_head_vector_patch_setter": 2, "layer_head_pattern_patch_setter": 2,
                 "layer_head_pos_pattern_patch_setter": 3,
                 "layer_head_dest_src_pos_pattern_patch_setter": 4}


def _setter_pattern(patch_setter):
    """The index pattern of a TransformerLens setter (this module's or
    transformer_lens.patching's), or None for any other function."""
    name = getattr(patch_setter, "__name__", None)
    module = getattr(patch_setter, "__module__", "")
    if name in _SETTER_PATTERNS and (patch_setter is globals().get(name)
                                     or module == "transformer_lens.patching"):
        return _SETTER_PATTERNS[name]
    return None


# ------------------------------------------------------------------------ metrics
class _BuiltinMetric:
    """A metric the C engine evaluates on the rows it reads; calling it on logits
    [batch, pos, d_vocab] (NumPy or torch) gives the same number in NumPy."""

    def _prepare(self, B, T, Vo):
        """(rows [R, 2], cols [R, K], lse, reduce(values [n, R, K + lse]) -> [n])."""
        raise NotImplementedError

    def __call__(self, logits):
        logits = np.asarray(to_numpy(logits), dtype=np.float32)
        if logits.ndim != 3:
            raise ValueError(f"{type(self).__name__}: expected logits [batch, pos, d_vocab], got shape "
                             f"{logits.shape}")
        B, T, Vo = logits.shape
        rows, cols, lse, reduce = self._prepare(B, T, Vo)
        x = logits[rows[:, 0], rows[:, 1]].astype(np.float64)                    # [R, Vo]
        vals = np.take_along_axis(x, cols, axis=1)
        if lse:
            mx = x.max(axis=1, keepdims=True)
            vals = np.concatenate([vals, mx + np.log(np.exp(x - mx).sum(axis=1, keepdims=True))], axis=1)
        return float(reduce(vals[None])[0])


def _per_batch(v, B, what, dtype=np.int64):
    a = np.asarray(to_numpy(v))
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected integers, got dtype {a.dtype}")
    if a.ndim == 0:
        return np.full(B, int(a), dtype=dtype)
    a = a.reshape(-1)
    if a.shape[0] != B:
        raise ValueError(f"{what}: expected one value per prompt ({B}), got {a.shape[0]}")
    return a.astype(dtype)


def _positions(pos, B, T):
    p = _per_batch(pos, B, "pos")
    if ((p < -T) | (p >= T)).any():
        raise IndexError(f"pos: {p[(p < -T) | (p >= T)][0]} is out of range for {T} positions")
    return p % T


def _tokens_in_vocab(tok, Vo, what):
    if ((tok < 0) | (tok >= Vo)).any():
        raise IndexError(f"{what}: token id {tok[(tok < 0) | (tok >= Vo)][0]} is outside "
                         f"[0, d_vocab_out={Vo})")
    return tok


class logit_diff(_BuiltinMetric):
    """Mean over prompts of ``logits[b, pos, answer] - logits[b, pos, wrong]``, the
    logit difference of indirect-object-identification patching.

    ``answer`` / ``wrong``: a token id or one per prompt; ``pos``: the position
    read (default the last), one for all or one per prompt (e.g. each prompt's
    last non-padding token). The engine reads only those two unembedding columns
    of one row per prompt.
    """

    def __init__(self, answer, wrong, pos=-1):
        self.answer, self.wrong, self.pos = answer, wrong, pos

    def _prepare(self, B, T, Vo):
        p = _positions(self.pos, B, T)
        a = _tokens_in_vocab(_per_batch(self.answer, B, "answer"), Vo, "answer")
        w = _tokens_in_vocab(_per_batch(self.wrong, B, "wrong"), Vo, "wrong")
        rows = np.stack([np.arange(B, dtype=np.int64), p], axis=1)
        return rows, np.stack([a, w], axis=1), False, lambda v: (v[..., 0] - v[..., 1]).mean(axis=1)


class logprob(_BuiltinMetric):
    """Mean over prompts of ``log_softmax(logits[b, pos])[token]``; ``token`` a token
    id or one per prompt, ``pos`` as :class:`logit_diff`'s. One row per prompt is
    unembedded (its log-sum-exp needs the whole vocabulary)."""

    def __init__(self, token, pos=-1):
        self.token, self.pos = token, pos

    def _prepare(self, B, T, Vo):
        p = _positions(self.pos, B, T)
        t = _tokens_in_vocab(_per_batch(self.token, B, "token"), Vo, "token")
        rows = np.stack([np.arange(B, dtype=np.int64), p], axis=1)
        return rows, t[:, None], True, lambda v: (v[..., 0] - v[..., 1]).mean(axis=1)


class loss(_BuiltinMetric):
    """Mean next-token cross-entropy of ``tokens`` (TransformerLens's
    ``lm_cross_entropy_loss``: position t predicts tokens[:, t + 1]); with
    ``attention_mask`` only unpadded targets count, as TransformerLens's loss
    with a mask."""

    def __init__(self, tokens, attention_mask=None):
        self.tokens = np.asarray(to_numpy(tokens))
        if self.tokens.ndim == 1:
            self.tokens = self.tokens[None]
        self.attention_mask = None if attention_mask is None else np.asarray(to_numpy(attention_mask))

    def _prepare(self, B, T, Vo):
        tk = self.tokens
        if tk.shape != (B, T):
            raise ValueError(f"loss: tokens have shape {tk.shape}, the logits' batch and positions "
                             f"are {(B, T)}")
        if T < 2:
            raise ValueError("loss: needs at least 2 positions")
        keep = np.ones((B, T - 1), bool)
        if self.attention_mask is not None:
            m = self.attention_mask.reshape(B, T) != 0
            keep = m[:, :-1] & m[:, 1:]
        b, t = np.nonzero(keep)
        rows = np.stack([b, t], axis=1).astype(np.int64)
        cols = _tokens_in_vocab(tk[b, t + 1].astype(np.int64), Vo, "tokens")[:, None]
        return rows, cols, True, lambda v: (v[..., 1] - v[..., 0]).mean(axis=1)


def _metric_value(metric, logits, what):
    """float(metric(logits)), with a clear error for a raising or non-scalar metric."""
    if isinstance(metric, _BuiltinMetric):   # its own argument errors, unwrapped
        return metric(logits)
    try:
        v = metric(logits)
    except Exception as e:
        raise RuntimeError(f"patching_metric raised {type(e).__name__} on the {what} logits: {e}") from e
    arr = to_numpy(v)
    if np.ndim(arr) != 0 and np.size(arr) != 1:
        raise ValueError(f"patching_metric must return a scalar, got shape {np.shape(arr)} on the "
                         f"{what} logits")
    try:
        return float(np.asarray(arr, dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        raise TypeError(f"patching_metric must return a number, got {type(v).__name__}") from None


# ------------------------------------------------------------------------- engine
def _hooked(model):
    ht = getattr(model, "_ht", model)
    if not (hasattr(ht, "hook_dict") and hasattr(ht, "_core") and hasattr(ht, "_point_layer")):
        raise TypeError(f"patching: model must be a mechinterp_c HookedTransformer, got "
                        f"{type(model).__name__}")
    return ht


def _progress(total, progress):
    """A tqdm bar over the cells when tqdm is installed (and progress is not False)."""
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total)


# Rows (batch x positions) of one stacked pass: large enough that the products of a
# pass run at GEMM speed, small enough that its activations stay in a few tens of MiB.
_PASS_ROWS = 2048


def generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric, patch_setter,
                             activation_name, index_axis_names=None, index_df=None,
                             return_index_df=False, *, normalize=False, attention_mask=None,
                             progress=None, pass_rows=None, skip_positions=True):
    """Patch ``activation_name`` from the clean run into the corrupted run for every
    cell of an index grid and record ``patching_metric`` of the patched logits
    (TransformerLens's ``generic_activation_patch``; the same arguments and output).

    ``index_axis_names`` (e.g. ``("layer", "pos", "head")``) gives the full grid
    and an output with one axis per name; ``index_df`` (a pandas DataFrame, a dict
    of columns or an int array [n, k]; layer first) gives the cells explicitly and
    a flat output [n]. ``patch_setter(corrupted_activation, index, clean_activation)``
    writes the patch (TransformerLens's setters run in C; any other function runs
    as a hook). ``patching_metric``: a function of the logits [batch, pos,
    d_vocab] to a scalar, or a built-in :class:`logit_diff`, :class:`logprob`,
    :class:`loss` (evaluated in C on the rows it reads).

    Keywords beyond TransformerLens's: ``normalize`` (return ``(m - corrupt) /
    (clean - corrupt)``, the clean value from the clean cache's last residual
    stream), ``attention_mask`` ([batch, pos], for padded batches: used by every
    pass as by ``forward``), ``progress`` (False: no tqdm bar), ``pass_rows``
    (batch x pos rows per stacked pass), ``skip_positions`` (default True: with
    causal attention, TransformerLens's setters and a built-in metric, a cell
    patched at position p recomputes only positions >= p, the earlier ones'
    keys and values read from the corrupted run; False recomputes every
    position). Returns float32 results (and the index table with
    ``return_index_df``).
    """
    ht = _hooked(model)
    tokens = ht._tokens(corrupted_tokens)
    B, T = tokens.shape
    L = ht.cfg.n_layers
    # ---- the cells
    if index_df is None:
        if index_axis_names is None:
            raise ValueError("generic_activation_patch: give index_axis_names or index_df")
        n_heads = ht.cfg.n_heads
        if activation_name in ("k", "v") and getattr(ht.cfg, "n_key_value_heads", None):
            n_heads = ht.cfg.n_key_value_heads
        extents = {"layer": L, "pos": T, "head_index": n_heads, "head": n_heads,
                   "src_pos": T, "dest_pos": T}
        names = list(index_axis_names)
        for n in names:
            if n not in extents:
                raise ValueError(f"index_axis_names: unknown axis {n!r} (expected one of "
                                 f"{sorted(extents)})")
        ranges = [extents[n] for n in names]
        table = _index_table(ranges, names)
        flat = False
    else:
        if index_axis_names is not None:
            raise ValueError("generic_activation_patch: give index_axis_names or index_df, not both")
        table, names = _df_to_table(index_df)
        ranges = None
        flat = True
    n_cells = table.shape[0]
    layers = table[:, 0]
    if n_cells and ((layers < -L) | (layers >= L)).any():
        raise IndexError(f"index: layer {layers[(layers < -L) | (layers >= L)][0]} is out of range "
                         f"for {L} layers")
    layers = layers % L if n_cells else layers
    act_names = {}
    for l in np.unique(layers):
        n = get_act_name(activation_name, layer=int(l))
        if n not in ht.hook_dict:
            raise KeyError(f"activation_name: {activation_name!r} names no hook point of this model "
                           f"({n!r} is not in model.hook_dict)")
        if ht.hook_dict[n].point_id is None:
            raise ValueError(f"activation_name: {n!r} never fires for this model's config")
        act_names[int(l)] = n
    # ---- the clean activations
    for n in act_names.values():
        if n not in clean_cache:
            raise KeyError(f"clean_cache: has no {n!r}; run the clean tokens with a names_filter "
                           f"that keeps it")
    # ---- the corrupted run: residual streams entering each layer, the activations'
    # shapes, the corrupted metric
    resid_names = {l: f"blocks.{l}.hook_resid_pre" for l in act_names}
    keep = set(resid_names.values()) | set(act_names.values())
    pattern = _setter_pattern(patch_setter)
    builtin = isinstance(patching_metric, _BuiltinMetric)
    # causal attention, a C setter and a row metric: passes skip the positions
    # before the patched one, reading the corrupted run's keys and values there
    skip = (skip_positions and pattern is not None and builtin and ht.cfg.attention_dir == "causal"
            and n_cells > 0)
    if skip:
        first = int(min(act_names))
        keep |= {n for l in range(first, L) for n in _past_kv_names(ht, l)}
    logits_c, cache_c = ht.run_with_cache(tokens, names_filter=lambda n: n in keep,
                                          attention_mask=attention_mask)
    clean = {}
    for l, n in act_names.items():
        c = np.asarray(to_numpy(clean_cache[n]))
        if c.shape != cache_c[n].shape:
            raise ValueError(f"clean_cache[{n!r}] has shape {c.shape} but the corrupted run's is "
                             f"{cache_c[n].shape}: the clean and corrupted tokens must have the "
                             f"same shape (corrupted tokens {tokens.shape})")
        clean[l] = np.ascontiguousarray(c, dtype=np.float32)
    key_mask = ht._mask(attention_mask, tokens)[1]
    if not builtin and not callable(patching_metric):
        raise TypeError(f"patching_metric: expected a function of the logits or a built-in metric, "
                        f"got {type(patching_metric).__name__}")
    corrupt_value = _metric_value(patching_metric, logits_c, "corrupted")
    clean_value = _clean_metric(ht, clean_cache, patching_metric, attention_mask) if normalize else None
    del logits_c
    if pattern is not None:
        arity = _SETTER_ARITY[patch_setter.__name__]
        if table.shape[1] != arity:
            raise ValueError(f"{patch_setter.__name__}: expects indices of {arity} columns (layer "
                             f"first), got {table.shape[1]} ({names})")
    elif not callable(patch_setter):
        raise TypeError(f"patch_setter: expected a function, got {type(patch_setter).__name__}")

    values = np.zeros(n_cells, dtype=np.float64)
    bar = _progress(n_cells, progress)
    rows_per_pass = int(pass_rows or _PASS_ROWS)
    try:
        for l in sorted(act_names):
            idx = np.nonzero(layers == l)[0]
            resid = np.ascontiguousarray(cache_c[resid_names[l]], dtype=np.float32)
            per_pass = max(1, rows_per_pass // (B * T))
            if skip:
                past = ([np.ascontiguousarray(cache_c[_past_kv_names(ht, i)[0]]) for i in range(l, L)],
                        [np.ascontiguousarray(cache_c[_past_kv_names(ht, i)[1]]) for i in range(l, L)])
                _run_c_skipping(ht, l, resid, act_names[l], clean[l], table[idx], pattern,
                                patching_metric, key_mask, rows_per_pass, past, values, idx, bar)
            elif pattern is not None:
                _run_c(ht, l, resid, act_names[l], clean[l], table[idx], pattern, patching_metric,
                       builtin, key_mask, per_pass, values, idx, bar)
            else:
                _run_hooks(ht, l, resid, act_names[l], clean[l], table[idx], patch_setter,
                           patching_metric, attention_mask, per_pass, values, idx, bar)
    finally:
        if bar is not None:
            bar.close()
    if normalize:
        values = (values - corrupt_value) / (clean_value - corrupt_value)
    out = values.astype(np.float32)
    if not flat:
        out = out.reshape(ranges)
    if return_index_df:
        return out, (index_df if index_df is not None else _table_to_df(table, names))
    return out


def _past_kv_names(ht, layer):
    """The hook points holding block ``layer``'s keys and values as attention reads
    them (position skipping caches them): ``hook_rot_k`` (after the rotary
    embedding) in rotary models, else ``hook_k``; ``hook_v``."""
    rot = f"blocks.{layer}.attn.hook_rot_k"
    k = rot if rot in ht.hook_dict and ht.hook_dict[rot].point_id is not None else \
        f"blocks.{layer}.attn.hook_k"
    return k, f"blocks.{layer}.attn.hook_v"


def _c_cells(table, pattern, shape):
    """int64 [n, 4] (source 0, i1, i2, i3) for patch_run: each axis after batch
    indexed by its index column (negative indices wrap as in NumPy) or whole (-1)."""
    n = table.shape[0]
    cells = np.full((n, 4), -1, dtype=np.int64)
    cells[:, 0] = 0
    for a, col in enumerate(pattern):
        if col is None:
            continue
        if a + 1 >= len(shape):
            raise ValueError(f"patch setter: the activation {shape} has no axis {a + 1} to index")
        ext = shape[a + 1]
        v = table[:, 1 + col]
        if ((v < -ext) | (v >= ext)).any():
            raise IndexError(f"index: {v[(v < -ext) | (v >= ext)][0]} is out of range for axis "
                             f"{a + 1} of the activation (extent {ext})")
        cells[:, 1 + a] = v % ext
    return cells


def _run_c(ht, l, resid, act_name, clean, table, pattern, metric, builtin, key_mask, per_pass,
           values, idx, bar):
    """The cells of layer l through the C engine."""
    B, T = resid.shape[:2]
    cells = _c_cells(table, pattern, clean.shape)
    sources = [(ht.hook_dict[act_name].point_id, clean)]
    n = cells.shape[0]
    if builtin:
        rows, cols, lse, reduce = metric._prepare(B, T, ht.cfg.d_vocab_out)
        # one call for the layer's cells (the engine stacks them per_pass at a time),
        # in chunks only when a progress bar is to move
        step = n if bar is None else per_pass * 4
        for j0 in range(0, n, step):
            j1 = min(n, j0 + step)
            v = _core.patch_run(ht._core, l, resid, sources, cells[j0:j1], per_pass, key_mask,
                                rows, cols, lse)
            values[idx[j0:j1]] = reduce(v)
            if bar is not None:
                bar.update(j1 - j0)
        return
    for j0 in range(0, n, per_pass):
        j1 = min(n, j0 + per_pass)
        logits = _core.patch_run(ht._core, l, resid, sources, cells[j0:j1], per_pass, key_mask)
        for j in range(j1 - j0):
            values[idx[j0 + j]] = _metric_value(metric, logits[j * B:(j + 1) * B], "patched")
        del logits
        if bar is not None:
            bar.update(j1 - j0)


# A pass of position-skipping cells may mix cells of different first positions
# (all then start at the smallest) while it has fewer rows than this: small
# passes read every weight for little arithmetic.
_MIN_PASS_ROWS = 512


def _run_c_skipping(ht, l, resid, act_name, clean, table, pattern, metric, key_mask, rows_per_pass,
                    past, values, idx, bar):
    """The cells of layer l through the C engine, each pass recomputing positions from
    the first one its cells patch (causal attention: earlier positions are as in the
    corrupted run)."""
    B, T = resid.shape[:2]
    cells = _c_cells(table, pattern, clean.shape)
    name = act_name.rsplit(".", 1)[-1]
    pos_axis = 2 if name in ("hook_pattern", "hook_attn_scores") else 1
    sources = [(ht.hook_dict[act_name].point_id, clean, pos_axis)]
    rows, cols, lse, reduce = metric._prepare(B, T, ht.cfg.d_vocab_out)
    first = cells[:, pos_axis]                       # -1 (whole axis): position 0
    first = np.where(first < 0, 0, first)
    first = np.minimum(first, int(rows[:, 1].min()))  # rows read must be recomputed
    order = np.argsort(first, kind="stable")
    j = 0
    n = len(order)
    while j < n:
        p0 = int(first[order[j]])
        per_row = B * (T - p0)
        k = 1
        while j + k < n and (k + 1) * per_row <= rows_per_pass and \
                (first[order[j + k]] == p0 or (k + 1) * per_row <= _MIN_PASS_ROWS):
            k += 1
        sel = order[j:j + k]
        v = _core.patch_run(ht._core, l, resid, sources, cells[sel], k, key_mask, rows, cols, lse,
                            pos0=p0, past_k=past[0], past_v=past[1])
        values[idx[sel]] = reduce(v)
        if bar is not None:
            bar.update(k)
        j += k


def _run_hooks(ht, l, resid, act_name, clean, table, patch_setter, metric, attention_mask,
               per_pass, values, idx, bar):
    """The cells of layer l with a Python patch setter: stacked passes from block l,
    the setter called on each copy's slice of the activation."""
    B, T = resid.shape[:2]
    n = table.shape[0]
    mask = None if attention_mask is None else np.asarray(to_numpy(attention_mask))
    for j0 in range(0, n, per_pass):
        rows = table[j0:j0 + per_pass]
        k = rows.shape[0]
        x = np.broadcast_to(resid[None], (k,) + resid.shape).reshape(k * B, T, -1)

        def patch(act, hook, rows=rows):
            for j, index in enumerate(rows.tolist()):
                part = act[j * B:(j + 1) * B]
                out = patch_setter(part, index, clean)
                if out is not None and out is not part:
                    part[...] = np.asarray(to_numpy(out))

        m = None if mask is None else np.tile(mask.reshape(B, T), (k, 1))
        with ht.hooks([(act_name, patch)]):
            logits = ht.forward(x, start_at_layer=l, attention_mask=m)
        for j in range(k):
            values[idx[j0 + j]] = _metric_value(metric, logits[j * B:(j + 1) * B], "patched")
        del logits
        if bar is not None:
            bar.update(k)


def _clean_metric(ht, clean_cache, metric, attention_mask):
    """The metric of the clean run, from the last residual stream the clean cache holds."""
    L = ht.cfg.n_layers
    for l in range(L, -1, -1):
        name = f"blocks.{l - 1}.hook_resid_post" if l == L else f"blocks.{l}.hook_resid_pre"
        if name in clean_cache:
            resid = np.asarray(to_numpy(clean_cache[name]), dtype=np.float32)
            logits = ht.forward(resid, start_at_layer=l, attention_mask=attention_mask)
            return _metric_value(metric, logits, "clean")
    raise ValueError("normalize=True: the clean cache holds no residual stream (hook_resid_pre / "
                     "hook_resid_post) to compute the clean metric from")


# ------------------------------------------------- TransformerLens's named grids
def _grid(setter, activation_name, axes, doc):
    def f(model, corrupted_tokens, clean_cache, patching_metric, index_axis_names=axes, index_df=None,
          return_index_df=False, **kwargs):
        if index_df is not None and index_axis_names is axes:
            index_axis_names = None
        return generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric,
                                        setter, activation_name, index_axis_names, index_df,
                                        return_index_df, **kwargs)
    f.__doc__ = doc + ("\n\n    Arguments as :func:`generic_activation_patch` (model, corrupted_tokens, "
                       "clean_cache, patching_metric; keywords normalize, attention_mask, progress).")
    return f


get_act_patch_resid_pre = _grid(layer_pos_patch_setter, "resid_pre", ("layer", "pos"),
    "Patch the residual stream entering each block, by position: [n_layers, pos].")
get_act_patch_resid_mid = _grid(layer_pos_patch_setter, "resid_mid", ("layer", "pos"),
    "Patch the residual stream between attention and MLP, by position: [n_layers, pos].")
get_act_patch_attn_out = _grid(layer_pos_patch_setter, "attn_out", ("layer", "pos"),
    "Patch each attention layer's output, by position: [n_layers, pos].")
get_act_patch_mlp_out = _grid(layer_pos_patch_setter, "mlp_out", ("layer", "pos"),
    "Patch each MLP layer's output, by position: [n_layers, pos].")
get_act_patch_attn_head_out_by_pos = _grid(layer_pos_head_vector_patch_setter, "z", ("layer", "pos", "head"),
    "Patch each head's output (hook_z), by position: [n_layers, pos, n_heads].")
get_act_patch_attn_head_q_by_pos = _grid(layer_pos_head_vector_patch_setter, "q", ("layer", "pos", "head"),
    "Patch each head's queries, by position: [n_layers, pos, n_heads].")
get_act_patch_attn_head_k_by_pos = _grid(layer_pos_head_vector_patch_setter, "k", ("layer", "pos", "head"),
    "Patch each head's keys, by position: [n_layers, pos, n_heads].")
get_act_patch_attn_head_v_by_pos = _grid(layer_pos_head_vector_patch_setter, "v", ("layer", "pos", "head"),
    "Patch each head's values, by position: [n_layers, pos, n_heads].")
get_act_patch_attn_head_pattern_by_pos = _grid(layer_head_pos_pattern_patch_setter, "pattern",
    ("layer", "head_index", "dest_pos"),
    "Patch each head's attention pattern, by destination position: [n_layers, n_heads, dest_pos].")
get_act_patch_attn_head_pattern_dest_src_pos = _grid(layer_head_dest_src_pos_pattern_patch_setter, "pattern",
    ("layer", "head_index", "dest_pos", "src_pos"),
    "Patch each (destination, source) entry of each head's pattern: [n_layers, n_heads, dest_pos, src_pos].")
get_act_patch_attn_head_out_all_pos = _grid(layer_head_vector_patch_setter, "z", ("layer", "head"),
    "Patch each head's output at every position: [n_layers, n_heads].")
get_act_patch_attn_head_q_all_pos = _grid(layer_head_vector_patch_setter, "q", ("layer", "head"),
    "Patch each head's queries at every position: [n_layers, n_heads].")
get_act_patch_attn_head_k_all_pos = _grid(layer_head_vector_patch_setter, "k", ("layer", "head"),
    "Patch each head's keys at every position: [n_layers, n_heads].")
get_act_patch_attn_head_v_all_pos = _grid(layer_head_vector_patch_setter, "v", ("layer", "head"),
    "Patch each head's values at every position: [n_layers, n_heads].")
get_act_patch_attn_head_pattern_all_pos = _grid(layer_head_pattern_patch_setter, "pattern",
    ("layer", "head_index"),
    "Patch each head's whole attention pattern: [n_layers, n_heads].")


def get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs):
    """Every head (all positions) for output, query, key, value and pattern, stacked:
    [5, n_layers, n_heads] (TransformerLens's function)."""
    res = [f(model, corrupted_tokens, clean_cache, metric, **kwargs) for f in (
        get_act_patch_attn_head_out_all_pos, get_act_patch_attn_head_q_all_pos,
        get_act_patch_attn_head_k_all_pos, get_act_patch_attn_head_v_all_pos)]
    res = [np.pad(r, ((0, 0), (0, res[0].shape[-1] - r.shape[-1]))) for r in res]
    res.append(get_act_patch_attn_head_pattern_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs))
    return np.stack(res, axis=0)


def get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs):
    """Every head by position for output, query, key, value and pattern (the pattern
    result transposed to [n_layers, pos, n_heads]), stacked: [5, n_layers, pos,
    n_heads] (TransformerLens's function)."""
    res = [f(model, corrupted_tokens, clean_cache, metric, **kwargs) for f in (
        get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_q_by_pos,
        get_act_patch_attn_head_k_by_pos, get_act_patch_attn_head_v_by_pos)]
    res = [np.pad(r, ((0, 0), (0, 0), (0, res[0].shape[-1] - r.shape[-1]))) for r in res]
    pat = get_act_patch_attn_head_pattern_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs)
    res.append(np.ascontiguousarray(pat.transpose(0, 2, 1)))
    return np.stack(res, axis=0)


def get_act_patch_block_every(model, corrupted_tokens, clean_cache, metric, **kwargs):
    """The residual stream entering each block, each attention output and each MLP
    output, by position, stacked: [3, n_layers, pos] (TransformerLens's function)."""
    return np.stack([f(model, corrupted_tokens, clean_cache, metric, **kwargs) for f in (
        get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)], axis=0)


# ------------------------------------------------------------------ path patching
_SENDER_KINDS = {"attn": "hook_attn_out", "attn_out": "hook_attn_out", "mlp": "hook_mlp_out",
                 "mlp_out": "hook_mlp_out"}
_RESID_KINDS = ("resid_pre", "resid_mid", "resid_post")


def _int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _sender_component(ht, s):
    """(hook name, head or None) of one sender: (layer, head), (layer, "attn") or
    (layer, "mlp")."""
    L, H = ht.cfg.n_layers, ht.cfg.n_heads
    if not (isinstance(s, tuple) and len(s) == 2 and _int(s[0])):
        raise ValueError(f"sender: expected (layer, head), (layer, 'attn'), (layer, 'mlp'), a list "
                         f"of those, or 'heads' / 'attn' / 'mlp' for a grid; got {s!r}")
    layer = int(s[0])
    if not -L <= layer < L:
        raise IndexError(f"sender: layer {layer} is out of range for {L} layers")
    layer %= L
    if _int(s[1]):
        if not -H <= s[1] < H:
            raise IndexError(f"sender: head {int(s[1])} is out of range for {H} heads")
        return f"blocks.{layer}.attn.hook_z", int(s[1]) % H
    if s[1] not in _SENDER_KINDS:
        raise ValueError(f"sender: unknown component {s[1]!r} (expected a head index, 'attn' or "
                         f"'mlp')")
    name = f"blocks.{layer}.{_SENDER_KINDS[s[1]]}"
    if name not in ht.hook_dict or ht.hook_dict[name].point_id is None:
        raise ValueError(f"sender: {name!r} does not fire in this model")
    return name, None


def _receiver(ht, r):
    """(hook name, head or None) of one receiver: (layer, head, 'q'|'k'|'v'), (layer,
    'resid_pre'|'resid_mid'|'resid_post') or a residual hook name."""
    L = ht.cfg.n_layers
    if isinstance(r, str):
        if r not in ht.hook_dict or r.rsplit(".", 1)[-1] not in [f"hook_{k}" for k in _RESID_KINDS]:
            raise ValueError(f"receivers: {r!r} is not a residual-stream hook point (blocks.L."
                             f"hook_resid_pre / _mid / _post) of this model")
        name, head = r, None
    elif isinstance(r, tuple) and len(r) == 3 and _int(r[0]) and _int(r[1]) and r[2] in ("q", "k", "v"):
        if not -L <= r[0] < L:
            raise IndexError(f"receivers: layer {int(r[0])} is out of range for {L} layers")
        name, head = f"blocks.{int(r[0]) % L}.attn.hook_{r[2]}", int(r[1])
    elif isinstance(r, tuple) and len(r) == 2 and _int(r[0]) and r[1] in _RESID_KINDS:
        if not -L <= r[0] < L:
            raise IndexError(f"receivers: layer {int(r[0])} is out of range for {L} layers")
        name, head = f"blocks.{int(r[0]) % L}.hook_{r[1]}", None
    else:
        raise ValueError(f"receivers: expected (layer, head, 'q'|'k'|'v'), (layer, 'resid_pre'|"
                         f"'resid_mid'|'resid_post') or a residual hook name; got {r!r}")
    if ht.hook_dict[name].point_id is None:
        raise ValueError(f"receivers: {name!r} does not fire in this model")
    if head is not None:
        n_heads = ht.cfg.n_heads
        if name.endswith(("hook_k", "hook_v")) and getattr(ht.cfg, "n_key_value_heads", None):
            n_heads = ht.cfg.n_key_value_heads
        if not -n_heads <= head < n_heads:
            raise IndexError(f"receivers: head {head} is out of range for the {n_heads} heads of "
                             f"{name}")
        head %= n_heads
    return name, head


def path_patch(model, clean_tokens, corrupted_tokens, sender, receivers, patching_metric, *,
               attention_mask=None, normalize=False, progress=None, pass_rows=None):
    """Path patching (Wang et al. 2022, the IOI paper; ARENA's recipe): the effect of a
    sender component on the logits through its direct path into some receivers.

    Definition, on the corrupted run (base) with the clean run as source:

    1. Pass A: run ``corrupted_tokens`` with the sender's activation set to its
       clean-run value (a head: ``blocks.l.attn.hook_z[:, :, head]``; ``(l, "attn")``:
       ``blocks.l.hook_attn_out``; ``(l, "mlp")``: ``blocks.l.hook_mlp_out``) and
       every attention head's output (``hook_z``, every layer, every head but the
       senders) frozen to its corrupted-run value; MLPs and norms are recomputed
       (as in the IOI paper and ARENA, where paths through MLPs count as direct).
       Record each receiver's input there.
    2. Pass B: run ``corrupted_tokens`` with each receiver's input set to what pass
       A recorded (every position), everything else computed normally, and
       return ``patching_metric`` of its logits.

    Senders: ``(layer, head)``, ``(layer, "attn")``, ``(layer, "mlp")``, or a list of
    these patched together (one number); or a grid, each component alone:
    ``"heads"`` (returns ``[n_layers, n_heads]``), ``"attn"`` / ``"mlp"``
    (``[n_layers]``). Receivers (one or a list, patched together): ``(layer, head,
    "q" | "k" | "v")`` (that head's slice of ``hook_q`` / ``hook_k`` / ``hook_v``;
    with grouped-query attention k/v index the key-value heads) or a residual
    stream point: ``(layer, "resid_pre" | "resid_mid" | "resid_post")`` or its
    hook name. A receiver that reads before the sender writes (an earlier layer,
    or the sender head's own layer's q/k/v) sees nothing of it and is left as in
    the corrupted run; a cell with no receiver after its sender is the corrupted
    metric.

    Runs on the patching engine: pass A of a sender at layer l starts at block l
    from the corrupted run's residual stream and stops after the last receiver's
    block, the cells of a grid stacked along the batch axis; pass B starts at the
    first receiver's block; built-in metrics (:class:`logit_diff`, ...) read only
    their rows. ``patching_metric``: a function of the logits [batch, pos,
    d_vocab] or a built-in metric. ``normalize``: ``(m - corrupt) / (clean -
    corrupt)``; ``attention_mask`` [batch, pos] for padded batches (both runs);
    ``progress``: False for no tqdm bar; ``pass_rows``: batch x pos rows per pass.
    """
    ht = _hooked(model)
    clean_tokens = ht._tokens(clean_tokens)
    tokens = ht._tokens(corrupted_tokens)
    if clean_tokens.shape != tokens.shape:
        raise ValueError(f"path_patch: clean tokens {clean_tokens.shape} and corrupted tokens "
                         f"{tokens.shape} must have the same shape")
    B, T = tokens.shape
    L, H = ht.cfg.n_layers, ht.cfg.n_heads
    # ---- the cells: each a list of sender components
    if isinstance(sender, str):
        if sender == "heads":
            cells = [[(f"blocks.{l}.attn.hook_z", h)] for l in range(L) for h in range(H)]
            shape = (L, H)
        elif sender in _SENDER_KINDS:
            cells = [[_sender_component(ht, (l, sender))] for l in range(L)]
            shape = (L,)
        else:
            raise ValueError(f"sender: unknown grid {sender!r} (expected 'heads', 'attn' or 'mlp')")
    elif isinstance(sender, list):
        if not sender:
            raise ValueError("sender: empty list")
        cells = [[_sender_component(ht, s) for s in sender]]
        shape = None
    else:
        cells = [[_sender_component(ht, sender)]]
        shape = None
    recv = [_receiver(ht, r) for r in (receivers if isinstance(receivers, list) else [receivers])]
    if not recv:
        raise ValueError("receivers: empty list")
    if not isinstance(patching_metric, _BuiltinMetric) and not callable(patching_metric):
        raise TypeError(f"patching_metric: expected a function of the logits or a built-in metric, "
                        f"got {type(patching_metric).__name__}")
    pid = {n: ht.hook_dict[n].point_id for n in ht.hook_dict}
    layer_of = lambda n: int(n.split(".")[1])   # noqa: E731
    z = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    senders = {n for c in cells for n, _ in c}
    keep_c = senders | {f"blocks.{l}.hook_resid_pre" for l in range(L)}
    keep_c |= set(z) | {n for n, _ in recv}
    logits_k, cache_k = ht.run_with_cache(tokens, names_filter=lambda n: n in keep_c,
                                          attention_mask=attention_mask)
    logits_c, cache_c = ht.run_with_cache(clean_tokens, names_filter=lambda n: n in senders,
                                          attention_mask=attention_mask)
    corrupt_value = _metric_value(patching_metric, logits_k, "corrupted")
    clean_value = _metric_value(patching_metric, logits_c, "clean") if normalize else None
    del logits_k, logits_c
    key_mask = ht._mask(attention_mask, tokens)[1]
    builtin = isinstance(patching_metric, _BuiltinMetric)
    per_pass = max(1, int(pass_rows or _PASS_ROWS) // (B * T))
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)   # noqa: E731

    # cells grouped by their first sender layer (one pass A start each)
    groups = {}
    for i, c in enumerate(cells):
        groups.setdefault(min(layer_of(n) for n, _ in c), []).append(i)
    values = np.full(len(cells), corrupt_value, dtype=np.float64)
    bar = _progress(len(cells), progress)
    try:
        for ls, idx in sorted(groups.items()):
            first = min(pid[n] for i in idx for n, _ in cells[i])
            kept = [(n, h) for n, h in recv if pid[n] > first]
            if not kept:          # every receiver reads before the senders write
                if bar is not None:
                    bar.update(len(idx))
                continue
            stop = max(layer_of(n) for n, _ in kept) + 1
            joint = shape is None
            # pass A: heads frozen to the corrupted run (the senders' clean values merged
            # in for a joint sender set), the grid's sender per cell, receivers captured
            srcs, cell_rows = [], np.full((len(idx), 4), -1, dtype=np.int64)
            merged = {}
            for l in range(ls, stop):
                merged[z[l]] = np.array(cache_k[z[l]], dtype=np.float32)
            if joint:
                for n, h in cells[idx[0]]:
                    if layer_of(n) >= stop:       # after every receiver: no path
                        continue
                    if h is not None:
                        merged[n][:, :, h] = cache_c[n][:, :, h]
                    else:
                        srcs.append((pid[n], f32(cache_c[n]), 0, 1))
            else:
                n0 = cells[idx[0]][0][0]
                cell_rows[:, 0] = 0
                srcs.insert(0, (pid[n0], f32(cache_c[n0])))
                for j, i in enumerate(idx):
                    h = cells[i][0][1]
                    if h is not None:
                        cell_rows[j, 2] = h
            if joint:
                cell_rows[:, 0] = -1
            srcs += [(pid[n], a, 0, 1) for n, a in merged.items()]
            captures = {}
            for n, _ in kept:
                if n not in captures:
                    captures[n] = np.empty((len(idx),) + cache_k[n].shape, dtype=np.float32)
                    srcs.append((pid[n], captures[n], 0, 4))
            resid = f32(cache_k[f"blocks.{ls}.hook_resid_pre"])
            _core.patch_capture(ht._core, ls, stop, resid, srcs, cell_rows, per_pass, key_mask)
            del merged, srcs
            # pass B: the receivers' inputs from pass A, the rest the corrupted run
            lr = min(layer_of(n) for n, _ in kept)
            srcs = []
            for n, h in kept:
                srcs.append((pid[n], captures[n], 0, 3, -1, -1 if h is None else h, -1))
            resid = f32(cache_k[f"blocks.{lr}.hook_resid_pre"])
            none = np.full((len(idx), 4), -1, dtype=np.int64)
            if builtin:
                rows, cols, lse, reduce = patching_metric._prepare(B, T, ht.cfg.d_vocab_out)
                v = _core.patch_run(ht._core, lr, resid, srcs, none, per_pass, key_mask, rows, cols, lse)
                values[idx] = reduce(v)
            else:
                lg = _core.patch_run(ht._core, lr, resid, srcs, none, per_pass, key_mask)
                for j, i in enumerate(idx):
                    values[i] = _metric_value(patching_metric, lg[j * B:(j + 1) * B], "patched")
                del lg
            del captures, srcs
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    if normalize:
        values = (values - corrupt_value) / (clean_value - corrupt_value)
    if shape is None:
        return float(values[0])
    return values.astype(np.float32).reshape(shape)
