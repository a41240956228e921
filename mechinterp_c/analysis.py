"""Analyses of cached activations, computed in the C core.

Every function names the NumPy / SciPy / scikit-learn call it reproduces and
how closely:

=============================  =======================================================  =========================
function                       reference                                                agreement
=============================  =======================================================  =========================
``histogram``                  ``np.histogram``                                         identical counts and edges
``batched_histogram``          ``np.histogram`` per row, common edges                   identical counts
``describe``                   ``np.mean/np.var/np.std/np.min/np.max``                  float64 accumulation
``cosine_similarity``          ``sklearn.metrics.pairwise.cosine_similarity``           float32 (~1e-6)
``corrcoef``                   ``np.corrcoef``                                          float32 (~1e-6)
``column_cosine_similarity``   the notebook's ``A/‖A‖_col; A.T @ A``                    float32 (~1e-6)
``upper_triangle``             ``S[np.triu_indices(n, k)]``                             identical values
``qk_scores``                  ``Q_h1 @ K_h2.T / sqrt(d)`` + ``softmax``                float32 GEMM
``gaussian_kde``               ``scipy.stats.gaussian_kde``                             ~1e-13 relative
``kde_entropy``                the notebook's KDE entropy recipe                        ~1e-12
``entropy``                    ``scipy.stats.entropy``                                  ~1e-15
``mean_ablation_sweep``        the no-position notebook's ``run_with_hooks`` loop       same forward, ~1e-6
``head_ablation_sweep``        the GPT-2 attention notebook's ``c_proj`` pre-hook loop  same forward, ~1e-6
=============================  =======================================================  =========================

The sweeps live in ``mechinterp_c.ablation`` and are re-exported here.

The heavy loops run in C with the GIL released and OpenMP threads over
independent outputs, so results do not depend on the thread count.
"""
from collections import namedtuple
import math

import numpy as np
try:  # NumPy 2 moved the histogram internals
    from numpy.lib import _histograms_impl as _np_hist
except ImportError:  # NumPy 1.x
    from numpy.lib import histograms as _np_hist

from . import _core
from .ablation import HeadAblationSweep, MeanAblationSweep, head_ablation_sweep, mean_ablation_sweep

__all__ = ["histogram", "batched_histogram", "describe", "Describe", "cosine_similarity",
           "corrcoef", "column_cosine_similarity", "upper_triangle", "block_pairs", "qk_scores", "QKScores", "head_pairs",
           "gaussian_kde", "kde_entropy", "entropy", "mean_ablation_sweep", "MeanAblationSweep",
           "head_ablation_sweep", "HeadAblationSweep"]


# --------------------------------------------------------------------------- histograms

def _as_float_data(a, name):
    """a as float32/float64 (other real dtypes -> float64); TypeError for the rest."""
    a = np.asarray(a)
    if a.dtype.kind == "c" or a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {a.dtype}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a


def _bins_spec(a, bins, range, weights):
    """NumPy's own edges for (bins, range) and the spec the C kernel needs to
    reproduce numpy.histogram's per-value bin choice.

    Returns (spec, bin_edges, work_dtype). The edges come from NumPy's
    histogram machinery itself, so they are NumPy's bit for bit; the spec
    records the dtypes NumPy computes the bin index in (see histogram.h).
    """
    fd = isinstance(bins, str) and bins == "fd" and weights is None
    if range is None and a.size and a.flags.c_contiguous and a.dtype in (np.float32, np.float64) \
            and (fd or (np.ndim(bins) == 0 and not isinstance(bins, str)
                        and isinstance(bins, (int, np.integer)) and bins >= 1)):
        # int bins or 'fd', auto range: NumPy's _get_outer_edges with min/max in one C pass
        lo, hi = _core._minmax(a)
        first, last = a.dtype.type(lo), a.dtype.type(hi)
        if not (np.isfinite(first) and np.isfinite(last)):
            raise ValueError(f"autodetected range of [{first}, {last}] is not finite")
        if first == last:
            first, last = first - 0.5, last + 0.5
        if fd:
            # numpy's _get_bin_edges + _hist_bin_fd, with np.percentile(a, [75, 25])
            # computed exactly in C (quickselect; quantile.h): same float64 values
            p75, p25 = _core._percentile(a, (0.75, 0.25))
            iqr = np.subtract(np.float64(p75), np.float64(p25))
            width = 2.0 * iqr * a.size ** (-1.0 / 3.0)
            if width:
                delta = np.subtract(last, first, dtype=np.result_type(last, first))
                bins = int(np.ceil(delta / width))
            else:
                bins = 1
        bin_type = np.result_type(first, last, a)
        bin_edges = np.linspace(first, last, int(bins) + 1, endpoint=True, dtype=bin_type)
        if np.any(bin_edges[:-1] >= bin_edges[1:]):
            raise ValueError(f"Too many bins for data range. Cannot create {int(bins)} "
                             f"finite-sized bins.")
        uniform = (first, last, int(bins))
    else:
        bin_edges, uniform = _np_hist._get_bin_edges(a, bins, range, weights)
    if uniform is None:
        edges = np.asarray(bin_edges)
        if edges.dtype.kind not in "biuf":
            raise TypeError(f"bins: expected numbers, got dtype {edges.dtype}")
        if edges.size < 2:
            raise ValueError(f"bins: an array of edges needs at least 2 edges, got {edges.size}")
        e64 = np.ascontiguousarray(edges, dtype=np.float64)
        if not np.array_equal(e64, edges):
            raise ValueError("bins: edges are not exactly representable as float64")
        return (e64, False, 0.0, 0.0, 1.0, True), bin_edges, a.dtype
    first, last, n_bins = uniform
    work = bin_edges.dtype
    if work not in (np.float32, np.float64):
        work = np.dtype(np.float64)
    denom_dtype = np.result_type(last, first)
    if denom_dtype.kind == "f":
        denom = float(np.subtract(last, first, dtype=denom_dtype))
    else:  # integer edges: NumPy subtracts unsigned, exact here
        denom = float(int(last) - int(first))
        denom_dtype = np.dtype(np.float64)
    div_f64 = np.result_type(work, denom_dtype) != np.float32
    wt = work.type
    spec = (np.ascontiguousarray(bin_edges, dtype=np.float64), True, float(wt(first)),
            float(wt(last)), denom, bool(div_f64))
    return spec, bin_edges, work


def _weights_arg(weights, a):
    w = np.asarray(weights)
    if w.shape != a.shape:
        raise ValueError(f"weights should have the same shape as a: weights {w.shape}, "
                         f"a {a.shape}")
    if w.dtype.kind not in "biuf":
        raise TypeError(f"weights: expected real numbers, got dtype {w.dtype}")
    return w


def _finish(counts, wdtype, bin_edges, density):
    """Cast weighted sums to the weights' dtype and apply density as NumPy does."""
    if wdtype is not None and counts.dtype != wdtype:
        counts = counts.astype(wdtype)
    if density:
        db = np.array(np.diff(bin_edges), float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return counts / db / counts.sum(axis=-1, keepdims=True)
    return counts


def histogram(x, bins=10, range=None, density=False, weights=None, axis=None):
    """Histogram of ``x``, as ``numpy.histogram(x, bins, range, density, weights)``.

    ``bins`` is an int, an array of edges, or one of NumPy's rules ('auto',
    'fd', 'doane', 'scott', 'stone', 'rice', 'sturges', 'sqrt'). Edges are
    NumPy's own, and every value lands in the bin NumPy puts it in (same
    arithmetic, same edge corrections; the last bin is closed), so counts are
    identical to ``np.histogram`` for float32 and float64 input, including
    values exactly on edges. Returns ``(counts, edges)``: int64 counts, or the
    weights' dtype with ``weights``, or float64 densities with ``density``.
    NaN/inf with ``range=None`` raise ``ValueError`` as NumPy does; with a
    range, NaN is ignored.

    ``axis``: None flattens ``x`` (NumPy). An int gives one histogram per
    index along that axis, all with the same edges (computed from all of
    ``x``): counts ``[x.shape[axis], n_bins]`` - see ``batched_histogram``.
    """
    if axis is not None:
        a = np.asarray(x)
        if a.ndim == 0:
            raise ValueError("histogram: axis given but x is a scalar")
        return batched_histogram(np.moveaxis(a, axis, 0), bins, range, density,
                                 None if weights is None else np.moveaxis(
                                     _weights_arg(weights, a), axis, 0))
    a = _as_float_data(x, "x").ravel()
    w = None
    if weights is not None:
        w = _weights_arg(weights, np.asarray(x)).ravel()
    spec, bin_edges, work = _bins_spec(a, bins, range, w)
    counts = _run_histogram(a, spec, work, w)[0]
    return _finish(counts, None if w is None else w.dtype, bin_edges, density), bin_edges


def _run_histogram(a2, spec, work, w):
    """Counts [rows, n_bins] of a2 (1-D: one row) in the C kernel."""
    a2 = np.ascontiguousarray(a2, dtype=work)
    a2 = a2.reshape(1, -1) if a2.ndim == 1 else a2.reshape(a2.shape[0], -1)
    w64 = None
    ntype_f32 = False
    if w is not None:
        ntype_f32 = w.dtype == np.float32
        w64 = np.ascontiguousarray(w, dtype=np.float64).reshape(a2.shape)
    return _core._histogram(a2, spec, w64, ntype_f32)


def batched_histogram(x, bins=10, range=None, density=False, weights=None, per_row=False):
    """One histogram per leading index: ``counts[i] = np.histogram(x[i], edges)[0]``.

    ``x`` is ``[rows, ...]`` (each row flattened). By default all rows share
    one set of edges, the edges ``np.histogram(x.ravel(), bins, range)``
    would use (so an int ``bins`` with ``range=None`` spans the global
    min..max); counts are then identical to NumPy's per-row histograms with
    those edges. Returns ``(counts [rows, n_bins], edges [n_bins + 1])``.

    ``per_row=True`` (int or string ``bins``): each row gets its own edges,
    as ``np.histogram(x[i], bins, range)``; returns a list of counts arrays
    and a list of edge arrays (string rules may give rows different bin counts).
    Rows run in parallel in C (one thread per row).
    """
    a = _as_float_data(x, "x")
    if a.ndim < 1:
        raise ValueError("batched_histogram: x needs a leading (row) axis, got a scalar")
    rows = a.shape[0]
    w = None
    if weights is not None:
        w = _weights_arg(weights, a)
    if per_row:
        counts, edges = [], []
        for i in np.arange(rows):
            c, e = histogram(a[i], bins, range, density, None if w is None else w[i])
            counts.append(c)
            edges.append(e)
        return counts, edges
    spec, bin_edges, work = _bins_spec(a.ravel(), bins, range,
                                       None if w is None else w.ravel())
    a2 = np.ascontiguousarray(a, dtype=work).reshape(rows, -1)
    w2 = None if w is None else w.reshape(rows, -1)
    counts = _run_histogram(a2, spec, work, w2)
    return _finish(counts, None if w is None else w.dtype, bin_edges, density), bin_edges


# --------------------------------------------------------------------------- moments

Describe = namedtuple("Describe", "mean abs_mean var std min max count")
Describe.__doc__ = ("Descriptive statistics: mean, abs_mean (mean of |x|, the L1 mean), "
                    "var, std (with ddof), min, max, count (values per statistic).")


def describe(x, axis=None, ddof=0):
    """Descriptive statistics of ``x`` along ``axis`` in float64 accumulation.

    Matches ``np.mean(x, axis, dtype=np.float64)``, ``np.mean(np.abs(x), ...)``,
    ``np.var(x, axis, ddof=ddof, dtype=np.float64)``, ``np.std``, ``np.min``,
    ``np.max`` (NaN propagates as in NumPy). ``axis`` is None (all values,
    scalars returned), an int, or a tuple of ints. Returns a ``Describe``
    namedtuple; ``count`` is the number of values each statistic covers.
    """
    a = _as_float_data(x, "x")
    if axis is None:
        a = np.ascontiguousarray(a).reshape(-1)
        outer, n, inner = 1, a.size, 1
        out_shape = None
    else:
        axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
        try:
            axes = tuple(_norm_axis(ax, a.ndim) for ax in axes)
        except TypeError:
            raise TypeError(f"describe: axis must be None, an int or a tuple of ints, got {axis!r}")
        if len(set(axes)) != len(axes):
            raise ValueError(f"describe: repeated axis in {axis!r}")
        if len(axes) == 1:
            ax = axes[0]
            a = np.ascontiguousarray(a)
            outer = int(np.prod(a.shape[:ax], dtype=np.int64))
            n = a.shape[ax]
            inner = int(np.prod(a.shape[ax + 1:], dtype=np.int64))
            out_shape = a.shape[:ax] + a.shape[ax + 1:]
        else:
            keep = [i for i in np.arange(a.ndim) if i not in axes]
            a = np.ascontiguousarray(np.transpose(a, keep + list(axes)))
            out_shape = a.shape[:len(keep)]
            n = int(np.prod(a.shape[len(keep):], dtype=np.int64))
            outer, inner = int(np.prod(out_shape, dtype=np.int64)), 1
    if n == 0:
        nan = np.full(out_shape if out_shape is not None else (), np.nan)
        return Describe(*(nan if out_shape is not None else float("nan") for _ in np.arange(6)), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = _core._moments(a, outer, n, inner, float(ddof))
    if out_shape is None:
        return Describe(*(float(r[0]) for r in res), n)
    return Describe(*(r.reshape(out_shape) for r in res), n)


def _norm_axis(ax, ndim):
    ax = int(ax) if isinstance(ax, (int, np.integer)) else None
    if ax is None:
        raise TypeError("axis")
    if not -ndim <= ax < ndim:
        raise np.exceptions.AxisError(f"axis {ax} is out of bounds for array of dimension {ndim}")
    return ax % ndim


# --------------------------------------------------------------------------- similarity

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def _matrix(X, name):
    """X as a C-contiguous float32/float64 2-D array (no copy when it already is one)."""
    if type(X) is np.ndarray and X.ndim == 2 and (X.dtype == _F64 or X.dtype == _F32) \
            and X.flags.c_contiguous and X.flags.aligned:
        return X                                       # the common case: no conversion at all
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [samples, features], got shape {X.shape}")
    return np.ascontiguousarray(X, dtype=X.dtype if X.dtype in (_F32, _F64) else _F64)


def cosine_similarity(X, Y=None):
    """Cosine similarity of the rows of X with the rows of Y (default X).

    As ``sklearn.metrics.pairwise.cosine_similarity``: rows are L2-normalised
    (norms in float64; an all-zero row gives similarity 0), then
    ``Xn @ Yn.T`` in float32 through the core GEMM. X ``[n_x, d]``, Y
    ``[n_y, d]`` -> ``[n_x, n_y]`` float32 (agreement ~1e-6 absolute).
    One C call reads float32 or float64 input in place; with ``Y`` None or
    ``Y is X`` only the upper triangle is multiplied and mirrored (exactly
    symmetric, half the work). NaN/inf or an empty X/Y raise ValueError, as
    sklearn's input validation does.
    """
    Xf = _matrix(X, "X")
    Yf = None if Y is None or Y is X else _matrix(Y, "Y")
    for name, a in (("X", Xf), ("Y", Yf)):
        if a is not None and 0 in a.shape:   # sklearn's check_array minimums
            raise ValueError(f"{name}: found array with shape {a.shape}: cosine_similarity needs "
                             f"at least 1 sample and 1 feature (as sklearn)")
    return _core._similarity(Xf, Yf, 1, False, 0.0, False, True)


def column_cosine_similarity(A, center=False):
    """Cosine similarity of the COLUMNS of A, the notebook's recipe.

    ``An = A / np.linalg.norm(A, axis=0, keepdims=True); An.T @ An`` (with
    ``center=True`` the columns are centred first: the notebook's correlation
    variant, = ``np.corrcoef(A, rowvar=False)``, clipped to [-1, 1] as NumPy
    clips). A ``[samples, features]`` -> ``[features, features]`` float32. A
    zero column gives NaN as in the notebook's NumPy code (0/0), and NaN/inf
    propagate to their column's row and column as in NumPy. Norms in float64,
    product in float32 on the upper triangle only (one C call).
    """
    return _core._similarity(_matrix(A, "A"), None, 0, bool(center), np.nan, bool(center))


def corrcoef(X, rowvar=True):
    """Pearson correlation matrix, as ``np.corrcoef(X, rowvar=rowvar)``.

    Variables are rows (``rowvar=True``) or columns; each is centred and
    normalised (float64), the product is a float32 GEMM on the upper
    triangle, and the result is clipped to [-1, 1] as NumPy does. A constant
    variable gives NaN (NumPy gives NaN there too), NaN/inf propagate, no
    observations give all NaN (NumPy also warns). Returns float32
    ``[n_vars, n_vars]``; 1-D X is one variable.
    """
    if not (type(X) is np.ndarray and X.ndim == 2):
        X = np.asarray(X)
        if X.ndim == 1:
            X = X.reshape(1, -1) if rowvar else X.reshape(-1, 1)
    return _core._similarity(_matrix(X, "X"), None, 1 if rowvar else 0, True, np.nan, True)


def upper_triangle(S, k=1):
    """The values of a square matrix above diagonal ``k``, row-major:
    ``S[np.triu_indices(n, k)]`` (the notebook's ``S[np.nonzero(np.triu(S, 1))]``
    for a similarity matrix without exact zeros), copied row slice by row slice
    instead of through an index array."""
    S = np.asarray(S)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"upper_triangle: expected a square matrix, got shape {S.shape}")
    if not isinstance(k, (int, np.integer)):
        raise TypeError(f"upper_triangle: k must be an int, got {type(k).__name__}")
    n = S.shape[0]
    rows = range(max(0, -k), n) if k < 0 else range(n)
    parts = [S[i, max(0, i + k):] for i in rows]
    if k < 0:   # rows above -k start at column 0 and are full
        parts = [S[i] for i in range(min(n, -k))] + parts
    return np.concatenate(parts) if parts else np.zeros(0, S.dtype)


def block_pairs(S, sizes, names=None):
    """Within- and across-block values of a square similarity matrix, as the notebook's mask.

    ``S`` is ``[sum(sizes), sum(sizes)]`` (e.g. the 2304x2304 Q/K/V unit
    similarity matrix, ``sizes=(768, 768, 768)``, ``names="QKV"``). Returns a
    dict: for each block ``a``, ``names[a]*2`` -> the strict upper triangle
    of ``S[a, a]`` in row-major order; for each pair ``a < b``,
    ``names[a] + names[b]`` -> all of ``S[a, b]`` row-major. This is the
    notebook's ``cossim[matrixMask == qLoc * kLoc]`` selection (upper triangle,
    row-major), as views/copies of S without building the mask.
    """
    S = np.asarray(S)
    sizes = [int(n) for n in sizes]
    total = sum(sizes)
    if S.ndim != 2 or S.shape != (total, total):
        raise ValueError(f"block_pairs: S has shape {S.shape}, sizes {sizes} need "
                         f"({total}, {total})")
    if names is None:
        names = [str(i) for i in np.arange(len(sizes))]
    if len(names) != len(sizes):
        raise ValueError(f"block_pairs: {len(names)} names for {len(sizes)} blocks")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    out = {}
    for a in np.arange(len(sizes)):
        blk = S[starts[a]:starts[a + 1], starts[a]:starts[a + 1]]
        out[names[a] * 2] = upper_triangle(blk, 1)
    for a in np.arange(len(sizes)):
        for b in np.arange(a + 1, len(sizes)):
            out[names[a] + names[b]] = S[starts[a]:starts[a + 1], starts[b]:starts[b + 1]].ravel()
    return out


# --------------------------------------------------------------------------- QK^T scores

QKScores = namedtuple("QKScores", "scores pattern pairs hist edges softmax_hist softmax_edges")
QKScores.__doc__ = (
    "Result of qk_scores: scores [n_pairs, (batch,) q_pos, k_pos] float32 or None; "
    "pattern (softmax over keys) of the same shape or None; pairs [n_pairs, 2] "
    "(query head, key head); hist [n_pairs, n_bins] int64 counts of the raw scores "
    "and their edges; softmax_hist / softmax_edges the same for the softmax values.")


def head_pairs(n_heads, pairs="within"):
    """Head pairs (query head, key head) as an int32 ``[n_pairs, 2]`` array.

    'within': (h, h); 'across': (h1, h2), h1 != h2; 'all': every (h1, h2);
    in the notebooks' loop order (query head outer, key head inner). A sequence
    of pairs is taken as given.
    """
    if isinstance(pairs, str):
        if pairs == "within":
            p = [(h, h) for h in np.arange(n_heads)]
        elif pairs == "across":
            p = [(a, b) for a in np.arange(n_heads) for b in np.arange(n_heads) if a != b]
        elif pairs == "all":
            p = [(a, b) for a in np.arange(n_heads) for b in np.arange(n_heads)]
        else:
            raise ValueError(f"pairs: expected 'within', 'across', 'all' or a list of "
                             f"(query head, key head), got {pairs!r}")
        return np.array(p, dtype=np.int32).reshape(-1, 2)
    p = np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] != 2 or p.dtype.kind not in "iu":
        raise ValueError(f"pairs: expected integer pairs of shape (n_pairs, 2), got {p.shape}")
    if p.size and (p.min() < 0 or p.max() >= n_heads):
        raise IndexError(f"pairs: head index out of range for {n_heads} heads")
    return np.ascontiguousarray(p, dtype=np.int32)


def _heads_view(x, name, n_heads):
    x = np.asarray(x)
    if x.dtype != np.float32:
        if x.dtype.kind != "f":
            raise TypeError(f"{name}: expected a float array, got dtype {x.dtype}")
        x = x.astype(np.float32)
    if x.ndim == 2:
        if n_heads is None:
            raise ValueError(f"{name}: a [pos, d_model] array needs n_heads")
        pos, dm = x.shape
        if n_heads < 1 or dm % n_heads:
            raise ValueError(f"{name}: d_model {dm} is not divisible by n_heads={n_heads}")
        x = x.reshape(1, pos, n_heads, dm // n_heads)
    elif x.ndim == 3:
        x = x[None]
    elif x.ndim != 4:
        raise ValueError(f"{name}: expected [pos, d_model], [pos, head, d_head] or "
                         f"[batch, pos, head, d_head], got shape {x.shape}")
    if n_heads is not None and x.shape[2] != n_heads:
        raise ValueError(f"{name}: has {x.shape[2]} heads, n_heads={n_heads}")
    if x.strides[3] != 4 and x.shape[3] > 1 or any(s % 4 for s in x.strides) \
            or not x.flags.aligned:
        x = np.ascontiguousarray(x)
    return x


def _score_bins(spec, name):
    if spec is None:
        return None, None
    try:
        bins, rng = spec
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected (bins, range) with bins an int or an array of edges")
    if np.ndim(bins) == 0:
        if isinstance(bins, str):
            raise ValueError(f"{name}: string bin rules need all values; give an int or edges")
        if rng is None:
            raise ValueError(f"{name}: an int bins needs a range (lo, hi): the scores are "
                             f"never stored, so their min/max are unknown")
    # float32 probe: the dtype the scores have, so the spec matches np.histogram on them
    probe = np.zeros(0, np.float32)
    spec_c, edges, _ = _bins_spec(probe, bins, rng, None)
    return spec_c, edges


def qk_scores(q, k, n_heads=None, scale=None, mask=None, pairs="within", softmax=False,
              histogram=None, softmax_histogram=None, return_scores=None):
    """Attention scores ``Q_h1 @ K_h2.T / sqrt(d_head)`` for pairs of heads.

    q, k: ``[pos, d_model]`` (with ``n_heads``), ``[pos, n_heads, d_head]`` or
    ``[batch, pos, n_heads, d_head]`` (TransformerLens ``hook_q``/``hook_k``;
    strided views are read in place). ``scale``: None divides by
    ``sqrt(d_head)`` in float32 as the notebooks and Hugging Face GPT-2 do; a
    number multiplies instead. ``mask``: None, 'causal', or a boolean keep-mask
    ``[q_pos, k_pos]`` / ``[batch, q_pos, k_pos]`` (False -> -inf).
    ``pairs``: 'within' (h, h), 'across' (h1 != h2), 'all', or explicit pairs
    (see ``head_pairs``). ``softmax=True`` also returns the softmax over keys
    (``torch.softmax(scores, -1)``; masked -> 0, a fully masked row -> 0).

    ``histogram=(bins, range)`` counts the unmasked raw scores of each pair
    into ``np.histogram`` bins (identical bin rules) without storing the
    scores (``bins`` an int with ``range``, or an array of edges);
    ``softmax_histogram=(bins, range)`` does the same for the softmax values.
    Scores are then only returned with ``return_scores=True``.
    Summing ``hist`` over the pairs gives ``np.histogram`` of the concatenated
    values, e.g. the notebook's within-/across-head distributions.

    Returns ``QKScores(scores, pattern, pairs, hist, edges, softmax_hist,
    softmax_edges)``; scores/pattern are ``[n_pairs, batch, q_pos, k_pos]``
    (no batch axis when q had none), float32 from the core GEMM.
    """
    q_in = np.asarray(q)
    batched = q_in.ndim == 4
    qv = _heads_view(q, "q", n_heads)
    kv = _heads_view(k, "k", n_heads)
    if qv.shape[0] != kv.shape[0] or qv.shape[2:] != kv.shape[2:]:
        raise ValueError(f"qk_scores: q {qv.shape} and k {kv.shape} differ in batch, heads "
                         f"or d_head")
    B, P, H, D = qv.shape
    K = kv.shape[1]
    pr = head_pairs(H, pairs)
    causal = False
    m = None
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"mask: expected None, 'causal' or a boolean array, got {mask!r}")
        causal = True
    elif mask is not None:
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise TypeError(f"mask: expected a boolean keep-mask, got dtype {m.dtype}")
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3:
            raise ValueError(f"mask: expected [q_pos, k_pos] or [batch, q_pos, k_pos], got "
                             f"shape {np.shape(mask)}")
        m = np.ascontiguousarray(m)
    hs, edges = _score_bins(histogram, "histogram")
    hp, sedges = _score_bins(softmax_histogram, "softmax_histogram")
    if return_scores is None:
        return_scores = hs is None and hp is None
    want_pattern = bool(softmax) and (return_scores or hp is None)
    if hp is not None and not softmax:
        want_pattern = False
    divide = scale is None
    sc = 1.0 if scale is None else float(scale)
    scores, pattern, h1, h2 = _core._qk_scores(qv, kv, pr, divide, sc, m, causal,
                                               bool(return_scores), bool(want_pattern),
                                               hs, hp)
    if not batched:
        scores = None if scores is None else scores[:, 0]
        pattern = None if pattern is None else pattern[:, 0]
    return QKScores(scores, pattern, pr, h1, edges, h2, sedges)


# --------------------------------------------------------------------------- KDE, entropy

class gaussian_kde:
    """Gaussian kernel density estimate, as ``scipy.stats.gaussian_kde``.

    ``gaussian_kde(dataset, bw_method=None, weights=None)`` with ``dataset``
    ``[n]`` or ``[d, n]``; ``bw_method`` 'scott' (default), 'silverman', a
    number, or a callable taking this object. Attributes as SciPy's:
    ``dataset``, ``d``, ``n``, ``weights``, ``neff``, ``factor``,
    ``covariance``. ``evaluate(points)`` / ``__call__`` / ``pdf`` return the
    density at ``points`` (``[m]`` or ``[d, m]``) within ~1e-13 relative of
    SciPy; 1-D evaluation sums, for each point, only the samples whose term
    is not exactly 0 in double (sorted samples, a window found by binary
    search), in C with threads.
    """

    def __init__(self, dataset, bw_method=None, weights=None):
        ds = np.atleast_2d(np.asarray(dataset))
        if ds.dtype.kind not in "biuf":
            raise TypeError(f"dataset: expected real numbers, got dtype {ds.dtype}")
        self.dataset = ds.astype(np.float64)
        if not self.dataset.size > 1:
            raise ValueError("`dataset` input should have multiple elements.")
        if not np.all(np.isfinite(self.dataset)):
            raise ValueError("dataset: contains NaN or inf")
        self.d, self.n = self.dataset.shape
        if weights is not None:
            w = np.atleast_1d(np.asarray(weights)).astype(float)
            if w.ndim != 1:
                raise ValueError("`weights` input should be one-dimensional.")
            if len(w) != self.n:
                raise ValueError("`weights` input should be of length n")
            if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
                raise ValueError("weights: expected finite non-negative weights with a "
                                 "positive sum")
            self._weights = w / np.sum(w)
            self._neff = 1 / np.vecdot(self._weights, self._weights)
        else:
            self._weights = None
            u = np.ones(self.n) / self.n
            self._neff = 1 / np.vecdot(u, u)   # as SciPy (~n, rounded the same way)
        if self.d > self.n:
            raise ValueError(f"Number of dimensions is greater than number of samples. "
                             f"This results in a singular data covariance matrix, which "
                             f"cannot be treated using the algorithms implemented in "
                             f"`gaussian_kde`. Note that `gaussian_kde` interprets each "
                             f"*column* of `dataset` to be a point; consider transposing "
                             f"the input to `dataset`.")
        self.set_bandwidth(bw_method)

    @property
    def weights(self):
        """Normalised sample weights (uniform 1/n without weights)."""
        if self._weights is None:
            return np.ones(self.n) / self.n
        return self._weights

    @property
    def neff(self):
        """Effective number of samples, 1 / sum(w^2)."""
        return self._neff

    def scotts_factor(self):
        """Scott's rule: neff ** (-1 / (d + 4))."""
        return np.power(self.neff, -1. / (self.d + 4))

    def silverman_factor(self):
        """Silverman's rule: (neff * (d + 2) / 4) ** (-1 / (d + 4))."""
        return np.power(self.neff * (self.d + 2.0) / 4.0, -1. / (self.d + 4))

    covariance_factor = scotts_factor

    def set_bandwidth(self, bw_method=None):
        """Set the bandwidth rule as SciPy: None (keep), 'scott', 'silverman', a number,
        or a callable of this object."""
        if bw_method is None:
            pass
        elif isinstance(bw_method, str):
            if bw_method == "scott":
                self.covariance_factor = self.scotts_factor
            elif bw_method == "silverman":
                self.covariance_factor = self.silverman_factor
            else:
                raise ValueError("`bw_method` should be 'scott', 'silverman', a scalar "
                                 "or a callable.")
        elif np.isscalar(bw_method):
            self.covariance_factor = lambda: bw_method
        elif callable(bw_method):
            fn = bw_method
            self.covariance_factor = lambda: fn(self)
        else:
            raise ValueError("`bw_method` should be 'scott', 'silverman', a scalar "
                             "or a callable.")
        self._compute_covariance()

    def _compute_covariance(self):
        self.factor = self.covariance_factor()
        if not hasattr(self, "_data_cho_cov"):
            self._data_covariance = np.atleast_2d(
                np.cov(self.dataset, rowvar=1, bias=False, aweights=self.weights))
            try:
                self._data_cho_cov = np.linalg.cholesky(self._data_covariance)
            except np.linalg.LinAlgError:
                raise np.linalg.LinAlgError(
                    "gaussian_kde: the data covariance matrix is singular (constant data?)")
            if not np.all(np.diag(self._data_cho_cov) > 0):
                raise np.linalg.LinAlgError(
                    "gaussian_kde: the data covariance matrix is singular (constant data?)")
        self.covariance = self._data_covariance * self.factor ** 2
        self.cho_cov = (self._data_cho_cov * self.factor).astype(np.float64)
        self._sorted = None

    def _prepared_1d(self):
        """Whitened samples sorted ascending (weights permuted alike), once."""
        if self._sorted is None:
            c = self.cho_cov[0, 0]
            s = self.dataset[0] / c
            order = np.argsort(s, kind="stable")
            w = None if self._weights is None else np.ascontiguousarray(self._weights[order])
            self._sorted = (np.ascontiguousarray(s[order]), w)
        return self._sorted

    def evaluate(self, points):
        """The density at ``points`` (``[m]`` for 1-D data, ``[d, m]``)."""
        points = np.atleast_2d(np.asarray(points))
        if points.dtype.kind not in "biuf":
            raise TypeError(f"points: expected real numbers, got dtype {points.dtype}")
        points = points.astype(np.float64)
        if not np.all(np.isfinite(points)):
            raise ValueError("points: array must not contain infs or NaNs (as SciPy)")
        d, m = points.shape
        if d != self.d:
            if d == 1 and m == self.d:
                points = np.reshape(points, (self.d, 1))
                m = 1
            else:
                raise ValueError(f"points have dimension {d}, dataset has dimension {self.d}")
        norm = math.pow(2 * math.pi, -self.d / 2.)
        for i in np.arange(self.d):
            norm /= self.cho_cov[i, i]
        if self.d == 1:
            s, w = self._prepared_1d()
            t = np.ascontiguousarray(points[0] / self.cho_cov[0, 0])
            return _core._kde_1d(s[None], None if w is None else w[None], t[None],
                                 np.array([norm]))[0]
        L = self.cho_cov
        s = np.ascontiguousarray(np.linalg.solve(L, self.dataset).T)
        t = np.ascontiguousarray(np.linalg.solve(L, points).T)
        return _core._kde_nd(s, np.ascontiguousarray(self.weights), t, norm)

    __call__ = evaluate
    pdf = evaluate

    def logpdf(self, x):
        """log of ``evaluate(x)``."""
        with np.errstate(divide="ignore"):
            return np.log(self.evaluate(x))


def kde_entropy(samples, grid, bw_method="scott", eps=0.0, base=2.0):
    """Entropy of a KDE on a grid: the notebook's attention-entropy recipe, batched.

    For each row of ``samples`` (``[n]`` or ``[..., n]``, e.g. ``[n_heads, n]``):
    ``p = gaussian_kde(row, bw_method)(grid); p /= p.sum()``, then
    ``-sum p log_base p`` over ``p > 0`` (``eps=0``) or ``-sum p log(p + eps)``
    (the notebook writes ``eps=1e-10``). One C call evaluates every row. Returns
    an array of the leading shape (a float for 1-D samples).
    """
    x = np.asarray(samples)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"samples: expected real numbers, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("samples: expected at least one axis of samples")
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"grid: expected a non-empty 1-D array of points, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("grid: must not contain infs or NaNs")
    S, T, N = [], [], []
    for r in rows:
        kde = gaussian_kde(r, bw_method)
        s, _ = kde._prepared_1d()
        c = kde.cho_cov[0, 0]
        S.append(s)
        T.append(g / c)
        N.append(math.pow(2 * math.pi, -0.5) / c)
    dens = _core._kde_1d(np.ascontiguousarray(S), None, np.ascontiguousarray(T), np.array(N))
    p = dens / dens.sum(axis=-1, keepdims=True)
    lb = math.log(base)
    if eps == 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        h = -terms.sum(axis=-1) / lb
    else:
        h = -np.sum(p * np.log(p + eps), axis=-1) / lb
    return float(h[0]) if not lead else h.reshape(lead)


def entropy(pk, base=2, axis=-1):
    """Shannon entropy, as ``scipy.stats.entropy(pk, base=base, axis=axis)``.

    ``pk`` is normalised to sum 1 along ``axis``; zero entries add 0, a
    negative entry gives -inf (``scipy.special.entr``). Default ``base=2``
    (bits; SciPy's default is e: pass ``base=None`` for nats). float64 result.
    """
    p = np.asarray(pk)
    if p.dtype.kind not in "biuf":
        raise TypeError(f"pk: expected real numbers, got dtype {p.dtype}")
    p = np.ascontiguousarray(p, dtype=np.float64)
    if p.ndim == 0:
        p = p.reshape(1)
    ax = _norm_axis(axis, p.ndim)
    outer = int(np.prod(p.shape[:ax], dtype=np.int64))
    inner = int(np.prod(p.shape[ax + 1:], dtype=np.int64))
    lb = 0.0 if base is None else math.log(base)
    if base is not None and not (base > 0 and base != 1):
        raise ValueError(f"entropy: base must be positive and not 1, got {base}")
    with np.errstate(all="ignore"):
        out = _core._entropy(p, outer, p.shape[ax], inner, lb)
    shape = p.shape[:ax] + p.shape[ax + 1:]
    return float(out[0]) if shape == () else out.reshape(shape)
