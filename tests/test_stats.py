"""Mergeable accumulators (mechinterp_c.stats) against NumPy, under random splits and merge orders.

Tolerances: counts, histograms, top-k and reservoir samples are exact (integer state or
a total order on (value, position)); mean and variance are float64 with Chan's merge,
so a split differs from one pass by rounding only: 1e-12 relative (observed ~1e-15).
"""
import numpy as np
import pytest

import mechinterp_c as mi
from mechinterp_c import stats as S

RNG = np.random.default_rng(1234)
X = (RNG.standard_normal((2000, 3, 4)) * np.array([1e-3, 1.0, 300.0])[None, :, None]).astype(np.float32)
X[5, 0, 0] = np.nan
X[7:40, 1, 2] = 0.5          # ties for top-k
IDX = np.arange(X.shape[0], dtype=np.int64) * 3 + 11    # any unique token positions
EDGES = np.array([-1000, -1, -0.1, 0, 0.001, 0.1, 0.5, 1, 10, 100])
X[9, 2, 3] = 0.5             # exactly on an edge


def _templates():
    return [S.Moments(), S.Histogram(EDGES), S.TopK(5), S.QuantileSketch(), S.Reservoir(37, seed=9)]


def _random_splits(n, k):
    cuts = np.sort(RNG.choice(np.arange(1, n), size=k - 1, replace=False))
    return np.split(np.arange(n), cuts)


def _reduce(parts, order):
    """Merge accumulators in a random tree shape: repeatedly merge two neighbours."""
    parts = [parts[i] for i in order]
    while len(parts) > 1:
        i = int(RNG.integers(len(parts) - 1))
        parts[i:i + 2] = [parts[i].merge(parts[i + 1])]
    return parts[0]


def _assert_same(a, b, rtol=1e-12):
    assert a.unit_shape == b.unit_shape
    for k in a.state:
        if a.state[k].dtype.kind == "f" and isinstance(a, S.Moments):
            np.testing.assert_allclose(a.state[k], b.state[k], rtol=rtol, atol=0, equal_nan=True)
        else:
            np.testing.assert_array_equal(a.state[k], b.state[k], err_msg=f"{a!r} {k}")


def _canonical(acc):
    """Reservoir slots are unordered: compare through the sorted views."""
    if isinstance(acc, S.Reservoir):
        return acc.index, acc.samples
    return None


@pytest.mark.parametrize("n_parts", [2, 7, 31])
def test_merge_is_split_and_order_independent(n_parts):
    for tmpl in _templates():
        whole = tmpl.empty().update(X, IDX)
        parts = [tmpl.empty().update(X[s], IDX[s]) for s in _random_splits(len(X), n_parts)]
        merged = _reduce(parts, RNG.permutation(n_parts))
        if isinstance(tmpl, S.Reservoir):
            for u, v in zip(_canonical(whole), _canonical(merged)):
                np.testing.assert_array_equal(u, v)
        else:
            _assert_same(whole, merged)


def test_merge_in_place_equals_merge():
    for tmpl in _templates():
        a, b = tmpl.empty().update(X[:900], IDX[:900]), tmpl.empty().update(X[900:], IDX[900:])
        before = {k: v.copy() for k, v in b.state.items()}
        m = a.merge(b)
        assert a.merge_(b) is a
        _assert_same(a, m, rtol=0)
        _assert_same(b, type(b)(**b._params()).merge_(b), rtol=0)   # an empty one takes a copy
        assert all(np.array_equal(v, before[k]) for k, v in b.state.items())


def test_moments_against_numpy():
    m = S.Moments().update(X[:1000]).merge(S.Moments().update(X[1000:]))
    ok = ~np.isnan(X).any(axis=0)
    x64 = X.astype(np.float64)
    np.testing.assert_allclose(m.mean[ok], x64.mean(0)[ok], rtol=1e-12)
    np.testing.assert_allclose(m.var[ok], x64.var(0)[ok], rtol=1e-12)
    np.testing.assert_allclose(m.variance(1)[ok], x64.var(0, ddof=1)[ok], rtol=1e-12)
    assert np.isnan(m.mean[0, 0]) and m.count == len(X)


def test_histogram_matches_np_histogram():
    h = S.Histogram(EDGES).update(X)
    flat = X.reshape(len(X), -1)
    for u in range(flat.shape[1]):
        col = flat[:, u]
        np.testing.assert_array_equal(h.counts.reshape(-1, len(EDGES) - 1)[u], np.histogram(col, EDGES)[0])
        assert h.below.ravel()[u] == np.sum(col < EDGES[0])
        assert h.above.ravel()[u] == np.sum(col > EDGES[-1])
        assert h.nan.ravel()[u] == np.isnan(col).sum()


def test_topk_matches_sort_with_tie_rule():
    t = S.TopK(6).update(X, IDX)
    flat = X.reshape(len(X), -1)
    for u in range(flat.shape[1]):
        col = flat[:, u]
        keep = ~np.isnan(col)
        order = np.lexsort((IDX[keep], -col[keep]))[:6]   # value descending, position ascending
        np.testing.assert_array_equal(t.values.reshape(-1, 6)[u], col[keep][order])
        np.testing.assert_array_equal(t.index.reshape(-1, 6)[u], IDX[keep][order])
    # the tied unit keeps the earliest positions of the tie
    assert list(t.index[1, 2][t.values[1, 2] == 0.5]) == list(IDX[7:7 + int((t.values[1, 2] == 0.5).sum())])


def test_topk_fewer_rows_than_k():
    t = S.TopK(10).update(X[:3], IDX[:3])
    assert (t.fill == 3).all() and np.isnan(t.values[..., 3:]).all() and (t.index[..., 3:] == -1).all()


def test_quantile_sketch_error_bound():
    qs = [0.0, 0.01, 0.25, 0.5, 0.9, 0.999, 1.0]
    for rel in (0.01, 0.05):
        sk = S.QuantileSketch(rel_err=rel, min_abs=1e-6, max_abs=1e5)
        x = X.reshape(len(X), -1)
        x = x[:, ~np.isnan(x).any(0)]
        sk.update(x)
        est = sk.quantile(qs)
        ref = np.quantile(x.astype(np.float64), qs, axis=0, method="lower")
        assert np.all(np.abs(est - ref) <= rel * np.abs(ref) * (1 + 1e-12) + 1e-6)
    assert S.QuantileSketch().update(X).quantile(0.5).shape == (3, 4)
    with pytest.raises(ValueError, match="no rows"):
        S.QuantileSketch().quantile(0.5)


def test_attention_entropy_histogram():
    p = RNG.random((3, 2, 6, 6)).astype(np.float32)
    p *= np.tril(np.ones((6, 6), np.float32))     # causal zeros are left out
    p /= p.sum(-1, keepdims=True)
    edges = np.linspace(0, 2, 21)
    e = S.AttentionEntropy(edges).update(p[:1]).merge(S.AttentionEntropy(edges).update(p[1:]))
    p64 = p.astype(np.float64)
    terms = np.where(p64 > 0, p64 * np.log(np.where(p64 > 0, p64, 1)), 0.0)
    ent = -np.cumsum(terms, axis=-1)[..., -1]     # in key order, as the kernel sums
    for h in range(2):
        np.testing.assert_array_equal(e.counts[h], np.histogram(ent[:, h].ravel(), edges)[0])


def test_non_finite_values():
    x = np.array([[np.inf], [-np.inf], [np.nan], [1.0], [0.0]], np.float32)
    idx = np.arange(5, dtype=np.int64)
    sk = S.QuantileSketch().update(x)
    assert sk.state["counts"][0, 0] == 1 and sk.state["counts"][0, -1] == 1 and sk.state["nan"][0] == 1
    assert sk.count[0] == 4 and sk.clamped[0] == 2
    h = S.Histogram([0.0, 1.0, 2.0]).update(x)
    assert list(h.counts[0]) == [1, 1] and (h.below[0], h.above[0], h.nan[0]) == (1, 1, 1)
    t = S.TopK(2).update(x, idx)
    assert list(t.index[0]) == [0, 3]   # inf first, NaN never kept
    p = np.full((1, 1, 1, 3), 1 / 3, np.float32)
    p[0, 0, 0, 1] = np.nan
    e = S.AttentionEntropy().update(p)
    assert e.nan[0] == 1 and e.counts.sum() == 0


def test_reservoir_is_uniform_and_seeded():
    x = np.arange(20000, dtype=np.float32)[:, None]
    idx = np.arange(20000, dtype=np.int64)
    a = S.Reservoir(500, seed=1).update(x, idx)
    b = S.Reservoir(500, seed=2).update(x, idx)
    assert len(a.index) == 500 and len(set(a.index) & set(b.index)) < 100   # seeds differ
    np.testing.assert_array_equal(a.samples[:, 0], a.index.astype(np.float32))
    # uniform: each quarter of the stream holds about a quarter of the sample (binomial, 5 sigma)
    counts = np.histogram(a.index, 4, range=(0, 20000))[0]
    assert np.all(np.abs(counts - 125) < 5 * np.sqrt(500 * 0.25 * 0.75))


def test_bytes_round_trip_and_resume():
    for tmpl in _templates():
        a = tmpl.empty().update(X[:700], IDX[:700])
        b = S.from_bytes(a.to_bytes())
        _assert_same(a, b, rtol=0)
        b.update(X[700:], IDX[700:])
        whole = tmpl.empty().update(X, IDX)
        if isinstance(tmpl, S.Reservoir):
            np.testing.assert_array_equal(b.index, whole.index)
        else:
            _assert_same(b, whole)
    assert S.from_bytes(S.TopK(3).to_bytes()).unit_shape is None


def test_threads_bitwise_identical():
    before = mi._core.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            mi._core.set_num_threads(n)
            out.append([t.empty().update(X.reshape(len(X), -1).repeat(40, axis=1), IDX) for t in _templates()])
        for a, b in zip(*out):
            _assert_same(a, b, rtol=0) if not isinstance(a, S.Reservoir) else \
                np.testing.assert_array_equal(a.samples, b.samples)
    finally:
        mi._core.set_num_threads(before)


def test_bad_input_raises_and_state_survives():
    m = S.Moments().update(X)
    before = m.mean.copy()
    with pytest.raises(ValueError, match="do not match"):
        m.update(X[:, :2])
    with pytest.raises(TypeError, match="float array"):
        m.update(np.zeros((2, 3, 4), np.int32))
    np.testing.assert_array_equal(m.mean, before)
    with pytest.raises(TypeError, match="row_index"):
        S.TopK(3).update(X)
    with pytest.raises(ValueError, match="row_index has shape"):
        S.TopK(3).update(X, IDX[:5])
    with pytest.raises(ValueError, match="not the same statistic"):
        S.TopK(3).merge(S.TopK(4))
    with pytest.raises(ValueError, match="edges must increase"):
        S.Histogram([0, 2, 1])
    with pytest.raises(ValueError, match="q must lie"):
        S.QuantileSketch().update(X).quantile(1.5)
    with pytest.raises(TypeError, match="values"):   # the binding checks what it is given
        mi._core._acc_topk_update(np.zeros((2, 3)), np.zeros((2, 3), np.int64), np.zeros(2, np.int64),
                                  np.zeros((1, 2), np.float32), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="fill"):
        mi._core._acc_topk_update(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64),
                                  np.array([0, 9]), np.zeros((1, 2), np.float32), np.zeros(1, np.int64))
