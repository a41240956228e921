"""Mergeable activation statistics: update with batches, merge partial results, checkpoint.

Each accumulator gathers one statistic of a stream of activation rows
``x[rows, *unit_shape]`` (a token position per row; ``unit_shape`` e.g. ``(d_model,)``
or ``(n_heads, d_head)``), computed in the C core (``csrc/analysis/accumulators.c``).
Two accumulators of the same statistic over different rows ``merge`` into the
statistic of all the rows, whatever the order or split:

============================  ==========================================  ===================
accumulator                   result                                      merge
============================  ==========================================  ===================
:class:`Moments`              ``count``, ``mean``, ``var`` per unit        Chan's formula,
                              (float64 accumulation)                      float64 (rounding)
:class:`Histogram`            counts on fixed edges (int64), as            exact
                              ``np.histogram``; values outside counted
:class:`TopK`                 the ``k`` largest values per unit and the    exact
                              token position of each
:class:`AttentionEntropy`     histogram of attention-row entropies per     exact
                              head (from ``hook_pattern``)
:class:`QuantileSketch`       quantiles per unit within ``rel_err``        exact (counts)
:class:`Reservoir`            ``k`` uniformly sampled rows (seeded)        exact
============================  ==========================================  ===================

An accumulator made without data (``TopK(k=20)``) sizes itself on its first
``update``; that is how :func:`mechinterp_c.distributed.run_over_corpus` takes them
as templates. The state is a handful of NumPy arrays: :meth:`Accumulator.to_bytes`
/ :func:`from_bytes` checkpoint it.
"""
from __future__ import annotations

import io
import json
import math

import numpy as np

from . import _core

__all__ = ["Accumulator", "Moments", "Histogram", "TopK", "AttentionEntropy", "QuantileSketch",
           "Reservoir", "merge", "from_bytes"]


class Accumulator:
    """Base of the mergeable statistics: parameters, lazily sized state, merge, bytes.

    Subclasses define ``kind``, ``_params()`` (the constructor arguments),
    ``_new_state(unit_shape)``, ``_update(x2d, row_index)`` and ``_merge_into(other)``."""

    kind = ""
    _needs_index = False   # update needs the global token position of every row

    def __init__(self):
        self.unit_shape = None   # set by the first update (or a loaded state)
        self.state = {}          # name -> NumPy array

    # -- sizing and copies
    def empty(self):
        """An unsized accumulator with the same parameters (the template's copy)."""
        return type(self)(**self._params())

    def copy(self):
        """An independent copy, state included."""
        c = self.empty()
        c.unit_shape = self.unit_shape
        c.state = {k: v.copy() for k, v in self.state.items()}
        return c

    def _ensure(self, unit_shape):
        unit_shape = tuple(int(d) for d in unit_shape)
        if self.unit_shape is None:
            self.unit_shape = unit_shape
            self.state = self._new_state(unit_shape)
        elif unit_shape != self.unit_shape:
            raise ValueError(f"{type(self).__name__}: rows of shape {unit_shape} do not match the "
                             f"accumulated shape {self.unit_shape}")

    @property
    def n_units(self):
        """Units per row (the product of ``unit_shape``)."""
        return math.prod(self.unit_shape) if self.unit_shape is not None else 0

    # -- update and merge
    def update(self, x, row_index=None):
        """Add the rows of ``x[rows, *unit_shape]`` (a float array, used as float32).

        ``row_index[rows]`` (int64) is each row's global token position; :class:`TopK`
        and :class:`Reservoir` need it (it must be unique across everything merged),
        the others ignore it. Returns ``self``."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"{type(self).__name__}.update: x must be a float array, got dtype {x.dtype}")
        if x.ndim < 1:
            raise ValueError(f"{type(self).__name__}.update: x needs a row axis, got a scalar")
        self._ensure(x.shape[1:])
        x2 = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float32)
        if self._needs_index:
            if row_index is None:
                raise TypeError(f"{type(self).__name__}.update: row_index (the token position of "
                                "each row) is required")
            row_index = np.ascontiguousarray(row_index, dtype=np.int64)
            if row_index.shape != (x.shape[0],):
                raise ValueError(f"{type(self).__name__}.update: row_index has shape "
                                 f"{row_index.shape}, expected ({x.shape[0]},)")
        self._update(x2, row_index)
        return self

    def merge(self, other):
        """A new accumulator holding the statistic of both (neither is changed)."""
        return self.copy().merge_(other)

    def merge_(self, other):
        """Merge ``other`` into this accumulator in place (``other`` is not changed);
        returns ``self``. Saves the copy of :meth:`merge` for large states."""
        if type(other) is not type(self) or other._params() != self._params():
            raise ValueError(f"merge: {self!r} and {other!r} are not the same statistic")
        if other.unit_shape is None:
            return self
        if self.unit_shape is None:
            self.unit_shape = other.unit_shape
            self.state = {k: v.copy() for k, v in other.state.items()}
            return self
        if other.unit_shape != self.unit_shape:
            raise ValueError(f"merge: unit shapes differ ({self.unit_shape} and {other.unit_shape})")
        self._merge_into(other)
        return self

    def _merge_counts(self, other):
        """Merge for states that are all counts: integer addition."""
        for k in self.state:
            self.state[k] += other.state[k]

    # -- serialisation
    def to_bytes(self):
        """The state and parameters as bytes (an ``.npz`` archive, no pickle)."""
        buf = io.BytesIO()
        meta = json.dumps({"kind": self.kind, "params": self._params(),
                           "unit_shape": None if self.unit_shape is None else list(self.unit_shape)})
        np.savez(buf, __meta__=np.array(meta), **self.state)
        return buf.getvalue()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        size = "unsized" if self.unit_shape is None else f"units {self.unit_shape}"
        return f"{type(self).__name__}({args}) [{size}]"


def _kinds():
    return {c.kind: c for c in (Moments, Histogram, TopK, AttentionEntropy, QuantileSketch, Reservoir)}


def from_bytes(data):
    """The accumulator that :meth:`Accumulator.to_bytes` wrote."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        cls = _kinds().get(meta["kind"])
        if cls is None:
            raise ValueError(f"from_bytes: unknown accumulator kind {meta['kind']!r}")
        acc = cls(**meta["params"])
        if meta["unit_shape"] is not None:
            acc._ensure(meta["unit_shape"])
            for k, v in acc.state.items():
                saved = z[k]
                if saved.shape != v.shape or saved.dtype != v.dtype:
                    raise ValueError(f"from_bytes: {cls.__name__} array {k!r} has shape {saved.shape} "
                                     f"{saved.dtype}, expected {v.shape} {v.dtype}")
                acc.state[k] = saved.copy()
    return acc


def merge(a, b):
    """``a.merge(b)``: the statistic of both accumulators' rows."""
    return a.merge(b)


def _edges(edges, name):
    e = np.ascontiguousarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"{name}: edges must be a 1-D array of at least 2 values, got shape {e.shape}")
    if not np.all(np.diff(e) >= 0):
        raise ValueError(f"{name}: edges must increase monotonically (and hold no NaN)")
    return e


class Moments(Accumulator):
    """Count, mean and variance per unit, accumulated in float64.

    Each batch's mean and sum of squared deviations are taken in two passes and
    combined with the state by Chan, Golub and LeVeque's parallel formula; merging
    is the same formula, so a merged result differs from a single pass only by
    float64 rounding (about 1e-15 relative per merge)."""

    kind = "moments"

    def _params(self):
        return {}

    def _new_state(self, unit_shape):
        n = math.prod(unit_shape)
        return {"count": np.zeros(n, np.int64), "mean": np.zeros(n), "m2": np.zeros(n)}

    def _update(self, x, row_index):
        _core._acc_moments_update(self.state["count"], self.state["mean"], self.state["m2"], x)

    def _merge_into(self, o):
        s = self.state
        _core._acc_moments_merge(s["count"], s["mean"], s["m2"], o.state["count"], o.state["mean"],
                                 o.state["m2"])

    @property
    def count(self):
        """Rows seen (int)."""
        return int(self.state["count"][0]) if self.state else 0

    @property
    def mean(self):
        """Mean per unit, float64 ``[*unit_shape]``."""
        return self.state["mean"].reshape(self.unit_shape)

    def variance(self, ddof=0):
        """Variance per unit with ``ddof`` (as ``np.var``), float64 ``[*unit_shape]``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.state["m2"] / (self.state["count"] - ddof)).reshape(self.unit_shape)

    @property
    def var(self):
        """Population variance per unit (``ddof=0``)."""
        return self.variance(0)


class Histogram(Accumulator):
    """Counts per unit on fixed ``edges`` (int64), bin for bin as ``np.histogram(x, edges)``:
    bin ``i`` holds ``edges[i] <= x < edges[i+1]``, the last bin also its right edge.
    Values below, above and NaN are counted apart (``below``, ``above``, ``nan``)."""

    kind = "histogram"

    def __init__(self, edges):
        super().__init__()
        self.edges = _edges(edges, "Histogram")

    def _params(self):
        return {"edges": self.edges.tolist()}

    def _new_state(self, unit_shape):
        n = math.prod(unit_shape)
        return {"counts": np.zeros((n, self.edges.size - 1), np.int64), "outside": np.zeros((n, 3), np.int64)}

    def _update(self, x, row_index):
        _core._acc_hist_update(self.state["counts"], self.state["outside"], self.edges, x)

    _merge_into = Accumulator._merge_counts

    @property
    def counts(self):
        """``[*unit_shape, n_bins]`` int64."""
        return self.state["counts"].reshape(*self.unit_shape, -1)

    below = property(lambda self: self.state["outside"][:, 0].reshape(self.unit_shape),
                     doc="Values below ``edges[0]`` per unit.")
    above = property(lambda self: self.state["outside"][:, 1].reshape(self.unit_shape),
                     doc="Values above ``edges[-1]`` per unit.")
    nan = property(lambda self: self.state["outside"][:, 2].reshape(self.unit_shape),
                   doc="NaN values per unit.")


class AttentionEntropy(Histogram):
    """Histogram per head of the entropy (nats, float64) of every attention row.

    ``update(pattern)`` takes a ``hook_pattern`` activation ``[batch, n_heads, q, k]``;
    each row's entropy ``-sum p log p`` (terms with ``p <= 0`` left out, so causal
    zeros do not count) goes to its head's histogram on ``edges`` (default: 0 to 8
    nats in 0.1 steps; ``log(n_ctx)`` bounds every entropy). ``counts`` is
    ``[n_heads, n_bins]``."""

    kind = "attn_entropy"

    def __init__(self, edges=None):
        super().__init__(np.linspace(0.0, 8.0, 81) if edges is None else edges)

    def update(self, pattern, row_index=None):
        """Add the rows of ``pattern[batch, n_heads, q, k]``; returns ``self``."""
        p = np.asarray(pattern)
        if p.ndim != 4 or p.dtype.kind != "f":
            raise ValueError(f"AttentionEntropy.update: expected a float pattern [batch, n_heads, q, k], "
                             f"got shape {p.shape} dtype {p.dtype}")
        self._ensure(p.shape[1:2])
        _core._acc_entropy_update(self.state["counts"], self.state["outside"], self.edges,
                                  np.ascontiguousarray(p, dtype=np.float32))
        return self


class TopK(Accumulator):
    """The ``k`` largest values per unit and the token position (``row_index``) of each.

    Order: larger value first; equal values, smaller position first. That total order
    makes the result exact and independent of how the rows were split or merged. NaN
    is never kept. ``values`` ``[*unit_shape, k]`` float32 and ``index`` (int64) hold
    ``fill`` entries per unit; unused slots are NaN / -1."""

    kind = "topk"
    _needs_index = True

    def __init__(self, k=10):
        super().__init__()
        if int(k) != k or k < 1:
            raise ValueError(f"TopK: k must be a positive integer, got {k!r}")
        self.k = int(k)

    def _params(self):
        return {"k": self.k}

    def _new_state(self, unit_shape):
        n = math.prod(unit_shape)
        return {"values": np.full((n, self.k), np.nan, np.float32), "index": np.full((n, self.k), -1, np.int64),
                "fill": np.zeros(n, np.int64)}

    def _update(self, x, row_index):
        s = self.state
        _core._acc_topk_update(s["values"], s["index"], s["fill"], x, row_index)

    def _merge_into(self, o):
        s = self.state
        _core._acc_topk_merge(s["values"], s["index"], s["fill"], o.state["values"], o.state["index"],
                              o.state["fill"])

    values = property(lambda self: self.state["values"].reshape(*self.unit_shape, self.k),
                      doc="``[*unit_shape, k]`` float32, best first (NaN: unused slot).")
    index = property(lambda self: self.state["index"].reshape(*self.unit_shape, self.k),
                     doc="``[*unit_shape, k]`` int64 token positions (-1: unused slot).")
    fill = property(lambda self: self.state["fill"].reshape(self.unit_shape),
                    doc="Entries in use per unit.")


class QuantileSketch(Accumulator):
    """Quantiles per unit from logarithmic buckets (the DDSketch scheme, never collapsed).

    Error bound: for every ``q``, ``quantile(q)`` is within ``rel_err * |v|`` of
    ``v = np.quantile(x, q, method="lower")`` (the value of rank ``floor(q (n-1))``),
    whenever ``min_abs <= |v| <= max_abs``; for ``|v| < min_abs`` it returns 0
    (absolute error below ``min_abs``). Values beyond ``max_abs`` share the outermost
    bucket (``clamped`` counts them). Buckets are fixed, so merging adds counts:
    exact and order-independent. Memory: ``(2 nb + 1) * 8`` bytes per unit with
    ``nb = log(max_abs / min_abs) / log((1 + rel_err) / (1 - rel_err)) + 1``
    (about 15 KB per unit at the defaults)."""

    kind = "quantiles"

    def __init__(self, rel_err=0.01, min_abs=1e-4, max_abs=1e4):
        super().__init__()
        if not (0 < rel_err < 1) or not (0 < min_abs < max_abs < math.inf):
            raise ValueError(f"QuantileSketch: need 0 < rel_err < 1 and 0 < min_abs < max_abs, got "
                             f"rel_err={rel_err}, min_abs={min_abs}, max_abs={max_abs}")
        self.rel_err, self.min_abs, self.max_abs = float(rel_err), float(min_abs), float(max_abs)
        self.gamma = (1 + self.rel_err) / (1 - self.rel_err)
        self._log_gamma = math.log(self.gamma)
        self._first = math.ceil(math.log(self.min_abs) / self._log_gamma)
        self.nb = math.ceil(math.log(self.max_abs) / self._log_gamma) - self._first + 1

    def _params(self):
        return {"rel_err": self.rel_err, "min_abs": self.min_abs, "max_abs": self.max_abs}

    def _new_state(self, unit_shape):
        n = math.prod(unit_shape)
        return {"counts": np.zeros((n, 2 * self.nb + 1), np.int64), "nan": np.zeros(n, np.int64)}

    def _update(self, x, row_index):
        _core._acc_sketch_update(self.state["counts"], self.state["nan"], self._log_gamma, self.min_abs,
                                 self._first, x)

    _merge_into = Accumulator._merge_counts

    def _representatives(self):
        i = np.arange(self.nb) + self._first
        pos = 2.0 * self.gamma ** i / (self.gamma + 1.0)
        return np.concatenate([-pos[::-1], [0.0], pos])

    def quantile(self, q):
        """Quantile(s) ``q`` in [0, 1] per unit: ``[*unit_shape]`` for a scalar ``q``,
        ``[len(q), *unit_shape]`` for a sequence (NaN where a unit saw no values)."""
        qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if np.any((qs < 0) | (qs > 1)) or np.any(np.isnan(qs)):
            raise ValueError(f"QuantileSketch.quantile: q must lie in [0, 1], got {q!r}")
        if self.unit_shape is None:
            raise ValueError("QuantileSketch.quantile: the sketch has seen no rows")
        counts = self.state["counts"]
        cum = np.cumsum(counts, axis=1)
        n = cum[:, -1]
        rep = self._representatives()
        out = np.full((qs.size, counts.shape[0]), np.nan)
        for j, qq in enumerate(qs):
            rank = np.floor(qq * (n - 1)).astype(np.int64)
            b = np.array([np.searchsorted(cum[u], rank[u], side="right") for u in range(counts.shape[0])])
            ok = n > 0
            out[j, ok] = rep[b[ok]]
        out = out.reshape(qs.size, *self.unit_shape)
        return out[0] if np.ndim(q) == 0 else out

    @property
    def clamped(self):
        """Values per unit beyond ``max_abs`` that could sit in an outermost bucket
        (an upper bound: the outermost buckets also hold values just inside)."""
        c = self.state["counts"]
        return (c[:, 0] + c[:, -1]).reshape(self.unit_shape)

    count = property(lambda self: self.state["counts"].sum(axis=1).reshape(self.unit_shape),
                     doc="Non-NaN values per unit.")


class Reservoir(Accumulator):
    """``k`` rows sampled uniformly without replacement (e.g. for probe training).

    Every row gets a priority ``hash(seed, row_index)`` (a fixed 64-bit mix) and the
    sample is the ``k`` rows of smallest priority. A merge keeps the ``k`` smallest of
    both samples: the weighted reservoir merge rule (each side enters in proportion
    to the rows it saw), made deterministic, so the sample is exact and independent
    of order and split. ``samples`` ``[n, *unit_shape]`` float32 and ``index`` ``[n]``
    (token positions) are returned in increasing ``index`` order, ``n = min(k, rows)``."""

    kind = "reservoir"
    _needs_index = True

    def __init__(self, k=1000, seed=0):
        super().__init__()
        if int(k) != k or k < 1:
            raise ValueError(f"Reservoir: k must be a positive integer, got {k!r}")
        if int(seed) != seed or not 0 <= seed < 2 ** 64:
            raise ValueError(f"Reservoir: seed must be an integer in [0, 2**64), got {seed!r}")
        self.k, self.seed = int(k), int(seed)

    def _params(self):
        return {"k": self.k, "seed": self.seed}

    def _new_state(self, unit_shape):
        return {"samples": np.zeros((self.k, math.prod(unit_shape)), np.float32),
                "index": np.full(self.k, -1, np.int64), "key": np.zeros(self.k, np.uint64),
                "fill": np.zeros(1, np.int64)}

    def _update(self, x, row_index):
        s = self.state
        _core._acc_reservoir_update(s["samples"], s["index"], s["key"], s["fill"], self.seed, x, row_index)

    def _merge_into(self, o):
        s, t = self.state, o.state
        _core._acc_reservoir_merge(s["samples"], s["index"], s["key"], s["fill"], t["samples"], t["index"],
                                   t["key"], t["fill"])

    def _order(self):
        n = int(self.state["fill"][0])
        return np.argsort(self.state["index"][:n], kind="stable")

    @property
    def index(self):
        """Token positions of the sampled rows, increasing."""
        return self.state["index"][self._order()]

    @property
    def samples(self):
        """The sampled rows ``[n, *unit_shape]``, in the order of :attr:`index`."""
        return self.state["samples"][self._order()].reshape(-1, *self.unit_shape)
