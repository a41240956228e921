"""mechinterp_c.analysis against NumPy / SciPy / scikit-learn / torch.

Tolerances, and why:
- histogram counts and edges: EXACT (the C kernel repeats NumPy's arithmetic).
- weighted / density histograms: rtol 1e-12 (NumPy's explicit-edge path sums
  weights by cumsum differences, a different float order).
- describe: rtol 1e-12 (float64 accumulation in a different summation order
  than NumPy's pairwise sums).
- cosine / correlation: atol 2e-6 (float32 unit vectors and a float32 GEMM
  with K <= 100: a few float32 ulps of 1).
- qk scores: atol 1e-5 on scores of size ~10 (float32 GEMM vs torch's
  float32 GEMM, different summation order), 1e-6 on softmax probabilities.
- gaussian_kde: rtol 1e-10 (same terms as SciPy in a different order; the
  vectorised exp is accurate to ~1e-16).
- entropy: atol 1e-12 (float64, different summation order).
"""
import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

import mechinterp_c
from mechinterp_c import _core, analysis as A


# --------------------------------------------------------------------------- histogram

BIN_RULES = [10, 1, 100, "auto", "fd", "sturges", "sqrt", "scott", "rice", "doane", "stone"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bins", BIN_RULES)
def test_histogram_rules_identical(rng, dtype, bins):
    x = (rng.standard_normal(20001) * 3 + 1).astype(dtype)
    c, e = A.histogram(x, bins)
    c2, e2 = np.histogram(x, bins)
    assert c.dtype == c2.dtype == np.int64
    np.testing.assert_array_equal(c, c2)
    np.testing.assert_array_equal(e, e2)
    assert e.dtype == e2.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histogram_values_on_edges(dtype):
    # every edge, and its neighbours one ulp away, for int bins with and
    # without range and for explicit edge arrays of both float widths
    for lo, hi, nb in [(-1.0, 1.0, 10), (-5.0, 5.0, 100), (0.0, 1.0, 100), (-0.3, 0.7, 7),
                       (-15.0, 15.0, 100)]:
        e = np.linspace(lo, hi, nb + 1).astype(dtype)
        x = np.concatenate([e, np.nextafter(e, np.inf), np.nextafter(e, -np.inf),
                            np.linspace(lo, hi, 1001)]).astype(dtype)
        for bins, rng_ in [(nb, (lo, hi)), (nb, None), (np.linspace(lo, hi, nb + 1), None),
                           (np.linspace(lo, hi, nb + 1).astype(np.float32), None), ("fd", None),
                           ("auto", (lo, hi))]:
            c, ed = A.histogram(x, bins, rng_)
            c2, ed2 = np.histogram(x, bins, rng_)
            np.testing.assert_array_equal(c, c2, err_msg=f"{dtype} {lo} {hi} {nb} {bins} {rng_}")
            np.testing.assert_array_equal(ed, ed2)


def test_histogram_float32_range_rounding():
    # range given as Python floats is rounded to float32 for float32 data (NEP 50)
    x = np.array([0.1, 0.9, np.nextafter(np.float32(0.1), 0), 0.5], np.float32)
    for r in [(0.1, 0.9), (np.float64(0.1), np.float64(0.9))]:
        np.testing.assert_array_equal(A.histogram(x, 4, r)[0], np.histogram(x, 4, r)[0])
        np.testing.assert_array_equal(A.histogram(x, 4, r)[1], np.histogram(x, 4, r)[1])


def test_histogram_adversarial(rng):
    # empty
    for x in [np.zeros(0, np.float32), np.zeros(0)]:
        c, e = A.histogram(x, 5)
        np.testing.assert_array_equal(c, np.histogram(x, 5)[0])
        np.testing.assert_array_equal(e, np.histogram(x, 5)[1])
    # constant (range expands by 0.5 each side)
    x = np.full(1000, 3.25, np.float32)
    for b in [10, "fd", "auto"]:
        np.testing.assert_array_equal(A.histogram(x, b)[0], np.histogram(x, b)[0])
    # NaN and inf with a range: ignored / out of range as NumPy
    x = np.array([np.nan, np.inf, -np.inf, 0.5, 1.0, 0.0, -0.0], np.float32)
    np.testing.assert_array_equal(A.histogram(x, 4, (0.0, 1.0))[0],
                                  np.histogram(x, 4, (0.0, 1.0))[0])
    np.testing.assert_array_equal(A.histogram(x, np.array([0, 0.5, 1.0]))[0],
                                  np.histogram(x, np.array([0, 0.5, 1.0]))[0])
    # huge counts in one bin (> 2^24, exceeds float32 integer range)
    x = np.zeros(1 << 25, np.float32)
    c = A.histogram(x, 3, (-1.0, 1.0))[0]
    assert c[1] == 1 << 25
    # tiny and huge magnitudes
    x = np.concatenate([rng.standard_normal(1000) * 1e-30, rng.standard_normal(1000) * 1e30])
    for b in [7, "sturges"]:
        np.testing.assert_array_equal(A.histogram(x, b)[0], np.histogram(x, b)[0])
    # integer input (converted to float64; exact for |x| < 2^53)
    xi = rng.integers(-50, 50, 1000)
    np.testing.assert_array_equal(A.histogram(xi, 13)[0], np.histogram(xi, 13)[0])


def test_histogram_weights_and_density(rng):
    x = rng.standard_normal(200001).astype(np.float32)
    for w in [rng.random(x.size), rng.random(x.size).astype(np.float32)]:
        for bins, r in [(50, None), (100, (-2.0, 2.0)), (np.linspace(-3, 3, 31), None)]:
            c, _ = A.histogram(x, bins, r, weights=w)
            c2, _ = np.histogram(x, bins, r, weights=w)
            assert c.dtype == c2.dtype
            if w.dtype == np.float32:
                # NumPy's explicit-edge path takes a float32 cumsum (error ~1e-4);
                # ours sums in double and rounds per 65536-block: compare with
                # the float64 answer at float32 precision
                c64, _ = np.histogram(x, bins, r, weights=w.astype(np.float64))
                np.testing.assert_allclose(c, c64, rtol=1e-6)
            else:
                np.testing.assert_allclose(c, c2, rtol=1e-12)
            if not isinstance(bins, np.ndarray):
                # uniform path: same block-wise bincount order as NumPy -> identical
                np.testing.assert_array_equal(c, c2)
    for bins in [20, np.linspace(-1, 1, 101), "fd"]:
        d, _ = A.histogram(x, bins, density=True)
        d2, _ = np.histogram(x, bins, density=True)
        np.testing.assert_allclose(d, d2, rtol=1e-12)


def test_histogram_errors(rng):
    x = np.array([1.0, np.nan, 2.0], np.float32)
    with pytest.raises(ValueError, match="autodetected range of .*nan.* is not finite"):
        A.histogram(x, 10)
    with pytest.raises(ValueError, match="not finite"):
        A.histogram(np.array([1.0, np.inf]), "fd")
    with pytest.raises(ValueError, match="increase monotonically"):
        A.histogram(np.ones(3), [0, 2, 1])
    with pytest.raises(ValueError, match="must be positive"):
        A.histogram(np.ones(3), 0)
    with pytest.raises(ValueError, match="max must be larger than min"):
        A.histogram(np.ones(3), 3, (1.0, 0.0))
    with pytest.raises(ValueError, match="weights should have the same shape"):
        A.histogram(np.ones(3), 3, weights=np.ones(4))
    with pytest.raises(TypeError, match="dtype complex"):
        A.histogram(np.ones(3, complex), 3)
    with pytest.raises(ValueError, match="not a valid estimator|bin"):
        A.histogram(np.ones(3), "nope")
    # the C binding checks what it is given, too
    with pytest.raises(TypeError, match="C-contiguous float64"):
        _core._histogram(np.ones((1, 3), np.float32), (np.ones(3, np.float32), True, 0.0, 1.0,
                                                       1.0, True), None, False)


def test_batched_histogram(rng):
    x = rng.standard_normal((22, 3, 1000)).astype(np.float32)
    c, e = A.batched_histogram(x, 100, (-5.0, 5.0))
    assert c.shape == (22, 100)
    for i in range(22):
        np.testing.assert_array_equal(c[i], np.histogram(x[i], 100, (-5.0, 5.0))[0])
    # shared auto edges from all rows
    c, e = A.batched_histogram(x, 40)
    np.testing.assert_array_equal(e, np.histogram(x, 40)[1])
    for i in range(22):
        np.testing.assert_array_equal(c[i], np.histogram(x[i], e)[0])
    # density per row, as the seed's per-layer heat maps
    edges = np.linspace(-5, 5, 101)
    d, _ = A.batched_histogram(x, edges, density=True)
    for i in range(22):
        np.testing.assert_allclose(d[i], np.histogram(x[i], edges, density=True)[0], rtol=1e-12)
    # per-row edges
    cs, es = A.batched_histogram(x, "fd", per_row=True)
    for i in (0, 21):
        np.testing.assert_array_equal(cs[i], np.histogram(x[i], "fd")[0])
        np.testing.assert_array_equal(es[i], np.histogram(x[i], "fd")[1])
    # histogram(axis=...) = one histogram per index of that axis
    c, e = A.histogram(x, 30, (-3.0, 3.0), axis=1)
    assert c.shape == (3, 30)
    for j in range(3):
        np.testing.assert_array_equal(c[j], np.histogram(x[:, j], 30, (-3.0, 3.0))[0])


def test_histogram_threads_identical(rng):
    x = rng.standard_normal(300001).astype(np.float32)
    n = mechinterp_c.get_num_threads()
    try:
        mechinterp_c.set_num_threads(1)
        c1 = A.histogram(x, 77)[0]
        mechinterp_c.set_num_threads(3)
        c3 = A.histogram(x, 77)[0]
    finally:
        mechinterp_c.set_num_threads(n)
    np.testing.assert_array_equal(c1, c3)
    np.testing.assert_array_equal(c1, np.histogram(x, 77)[0])


def test_histogram_all_isas_identical(rng):
    # the vectorised uniform-path index kernels must give NumPy's bins exactly
    x = np.concatenate([rng.standard_normal(50001).astype(np.float32),
                        np.linspace(-1, 1, 101).astype(np.float32)])
    try:
        for isa in ["scalar", "avx2", "avx512"]:
            _core.force_isa(isa)
            for bins, r in [(100, None), (100, (-1.0, 1.0)), (7, (-0.3, 0.7)), ("fd", None)]:
                np.testing.assert_array_equal(A.histogram(x, bins, r)[0],
                                              np.histogram(x, bins, r)[0], err_msg=isa)
    finally:
        _core.force_isa("best")


# --------------------------------------------------------------------------- describe

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_describe(rng, dtype):
    x = (rng.standard_normal((4, 3000, 5)) * 2 + 0.5).astype(dtype)
    for axis in [None, 0, 1, 2, -1, (0, 2), (1, 2)]:
        for ddof in [0, 1]:
            d = A.describe(x, axis=axis, ddof=ddof)
            np.testing.assert_allclose(d.mean, np.mean(x, axis=axis, dtype=np.float64), rtol=1e-12,
                                       atol=1e-15)
            np.testing.assert_allclose(d.abs_mean, np.mean(np.abs(x), axis=axis, dtype=np.float64),
                                       rtol=1e-12)
            np.testing.assert_allclose(d.var, np.var(x, axis=axis, ddof=ddof, dtype=np.float64),
                                       rtol=1e-12)
            np.testing.assert_allclose(d.std, np.std(x, axis=axis, ddof=ddof, dtype=np.float64),
                                       rtol=1e-12)
            np.testing.assert_array_equal(d.min, np.min(x, axis=axis))
            np.testing.assert_array_equal(d.max, np.max(x, axis=axis))
    assert A.describe(x).count == x.size
    assert A.describe(x, axis=1).count == 3000


def test_describe_adversarial(rng):
    x = np.array([1.0, np.nan, 3.0], np.float32)
    d = A.describe(x)
    assert np.isnan(d.mean) and np.isnan(d.min) and np.isnan(d.max) and np.isnan(d.var)
    d = A.describe(np.full(1000, 7.5, np.float32))
    assert d.mean == 7.5 and d.var == 0.0 and d.min == d.max == 7.5
    d = A.describe(np.zeros(0))
    assert np.isnan(d.mean) and d.count == 0
    # big offset: two-pass variance keeps precision, as np.var
    x = (1e6 + rng.standard_normal(100000)).astype(np.float64)
    np.testing.assert_allclose(A.describe(x).var, np.var(x), rtol=1e-9)
    with pytest.raises(np.exceptions.AxisError, match="out of bounds"):
        A.describe(np.ones((2, 2)), axis=2)
    with pytest.raises(TypeError, match="axis"):
        A.describe(np.ones((2, 2)), axis="x")


# --------------------------------------------------------------------------- similarity

def test_cosine_similarity(rng):
    X = rng.standard_normal((54, 300)).astype(np.float32)
    Y = rng.standard_normal((20, 300))
    X[3] = 0   # zero row -> 0 similarity (sklearn)
    np.testing.assert_allclose(A.cosine_similarity(X), sk_cosine(X), atol=2e-6)
    np.testing.assert_allclose(A.cosine_similarity(X, Y), sk_cosine(X, Y), atol=2e-6)
    assert np.all(A.cosine_similarity(X)[3] == 0)
    with pytest.raises(ValueError, match="feature dimensions 300 and 7 differ"):
        A.cosine_similarity(X, np.ones((2, 7)))
    with pytest.raises(ValueError, match="expected a 2-D array"):
        A.cosine_similarity(np.ones(5))


def test_column_cosine_and_corrcoef_seed_recipe(rng):
    acts = rng.standard_normal((54, 3 * 768)).astype(np.float64)
    acts[:, :768] += 0.3 * rng.standard_normal((54, 1))   # correlated Q block
    # the seed: normalise columns, A^T A
    An = acts / np.linalg.norm(acts, axis=0, keepdims=True)
    np.testing.assert_allclose(A.column_cosine_similarity(acts), An.T @ An, atol=2e-6)
    # the seed's correlation variant = np.corrcoef over columns
    Ac = acts - acts.mean(axis=0, keepdims=True)
    Ac /= np.linalg.norm(Ac, axis=0, keepdims=True)
    np.testing.assert_allclose(A.column_cosine_similarity(acts, center=True), Ac.T @ Ac, atol=2e-6)
    np.testing.assert_allclose(A.corrcoef(acts, rowvar=False), np.corrcoef(acts, rowvar=False),
                               atol=2e-6)
    X = rng.standard_normal((30, 40))
    np.testing.assert_allclose(A.corrcoef(X), np.corrcoef(X), atol=2e-6)
    c = A.corrcoef(X)
    assert c.max() <= 1.0 and c.min() >= -1.0
    # constant variable: NaN as NumPy; zero column in the seed recipe: NaN
    X[2] = 5.0
    with np.errstate(all="ignore"):
        ref = np.corrcoef(X)
    got = A.corrcoef(X)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    acts[:, 7] = 0
    assert np.all(np.isnan(A.column_cosine_similarity(acts)[7]))


def test_block_pairs_matches_seed_mask(rng):
    nEmb = 20
    acts = rng.standard_normal((15, 3 * nEmb))
    cossim = A.column_cosine_similarity(acts)
    vectorMask = np.concatenate((np.full(nEmb, 1), np.full(nEmb, 2), np.full(nEmb, 3)))
    matrixMask = np.triu(vectorMask[:, None] @ vectorMask[None, :], 1)
    got = A.block_pairs(cossim, (nEmb, nEmb, nEmb), "QKV")
    for key, code in [("QQ", 1), ("KK", 4), ("VV", 9), ("QK", 2), ("QV", 3), ("KV", 6)]:
        np.testing.assert_array_equal(got[key], cossim[matrixMask == code])
    with pytest.raises(ValueError, match=r"S has shape \(60, 60\), sizes \[20, 20\] need \(40, 40\)"):
        A.block_pairs(cossim, (nEmb, nEmb))


# --------------------------------------------------------------------------- QK^T

def _torch_pairs(q, k, pairs):
    Qh = torch.from_numpy(q).permute(0, 2, 1, 3)
    Kh = torch.from_numpy(k).permute(0, 2, 1, 3)
    out = []
    for a, b in pairs:
        out.append((Qh[:, a] @ Kh[:, b].transpose(-2, -1)) / np.sqrt(q.shape[-1]))
    return out


def test_qk_scores_pairs(rng):
    q = rng.standard_normal((3, 20, 4, 16)).astype(np.float32)
    k = rng.standard_normal((3, 20, 4, 16)).astype(np.float32)
    for which, n in [("within", 4), ("across", 12), ("all", 16)]:
        r = A.qk_scores(q, k, pairs=which, softmax=True)
        assert r.scores.shape == (n, 3, 20, 20) and r.pairs.shape == (n, 2)
        for i, dp in enumerate(_torch_pairs(q, k, r.pairs)):
            np.testing.assert_allclose(r.scores[i], dp.numpy(), atol=1e-5)
            np.testing.assert_allclose(r.pattern[i], torch.softmax(dp, -1).numpy(), atol=1e-6)
    assert [tuple(p) for p in A.head_pairs(3, "across")] == [(0, 1), (0, 2), (1, 0), (1, 2),
                                                             (2, 0), (2, 1)]


def test_qk_scores_layouts_and_masks(rng):
    # [pos, d_model] with n_heads, a strided column slice of a fused qkv buffer
    qkv = rng.standard_normal((30, 3 * 64)).astype(np.float32)
    q, k = qkv[:, :64], qkv[:, 64:128]
    r = A.qk_scores(q, k, n_heads=4, pairs="all")
    assert r.scores.shape == (16, 30, 30)
    qh = q.reshape(30, 4, 16)
    kh = k.reshape(30, 4, 16)
    for i, (a, b) in enumerate(r.pairs):
        np.testing.assert_allclose(r.scores[i], qh[:, a] @ kh[:, b].T / 4.0, atol=1e-5)
    # custom scale, causal mask as TransformerLens (masked -> -inf, pattern 0)
    r = A.qk_scores(qh, kh, scale=0.5, mask="causal", softmax=True)
    ref = np.einsum("qd,kd->qk", qh[:, 1], kh[:, 1]) * 0.5
    ref[np.triu_indices(30, 1)] = -np.inf
    np.testing.assert_allclose(r.scores[1], ref, atol=1e-5)
    np.testing.assert_allclose(r.pattern[1], torch.softmax(torch.from_numpy(ref), -1).numpy(),
                               atol=1e-6)
    # boolean padding mask [batch, q, k]
    q4 = rng.standard_normal((2, 5, 2, 8)).astype(np.float32)
    m = np.ones((2, 5, 5), bool)
    m[1, :, 3:] = False
    r = A.qk_scores(q4, q4, mask=m, softmax=True)
    assert np.all(np.isneginf(r.scores[:, 1, :, 3:])) and np.all(r.pattern[:, 1, :, 3:] == 0)
    np.testing.assert_allclose(r.pattern.sum(-1), 1.0, atol=1e-6)


def test_qk_scores_histogram_without_scores(rng):
    # the REVE seed's sizes: 10 x 100 tokens, 8 heads, d_head 64
    q = rng.standard_normal((10, 100, 8, 64)).astype(np.float32) * 0.8
    k = rng.standard_normal((10, 100, 8, 64)).astype(np.float32) * 0.8
    edges = np.linspace(-15, 15, 101)
    full = A.qk_scores(q, k, pairs="all", softmax=True)
    h = A.qk_scores(q, k, pairs="all", histogram=(edges, None), softmax=True,
                    softmax_histogram=(100, (0.0, 1.0)))
    assert h.scores is None and h.pattern is None and h.hist.shape == (64, 100)
    within = h.pairs[:, 0] == h.pairs[:, 1]
    # identical to np.histogram of the materialised scores (same C scores)
    np.testing.assert_array_equal(h.hist[within].sum(0),
                                  np.histogram(full.scores[within], edges)[0])
    np.testing.assert_array_equal(h.hist[~within].sum(0),
                                  np.histogram(full.scores[~within], edges)[0])
    np.testing.assert_array_equal(h.softmax_hist[within].sum(0),
                                  np.histogram(full.pattern[within], 100, (0.0, 1.0))[0])
    # and vs the seed's torch code: only values within float32 rounding of an
    # edge can move bins, a handful out of 640k
    dps = _torch_pairs(q, k, h.pairs)
    seed_within = np.concatenate([d.flatten().numpy() for d, w in zip(dps, within) if w])
    diff = np.abs(h.hist[within].sum(0) - np.histogram(seed_within.astype(np.float64), edges)[0])
    assert diff.sum() <= 10
    # int bins with a range: np.histogram(float32 scores, bins, range) rules
    h2 = A.qk_scores(q, k, pairs="within", histogram=(37, (-3.0, 3.0)))
    np.testing.assert_array_equal(h2.hist.sum(0),
                                  np.histogram(full.scores[within], 37, (-3.0, 3.0))[0])


def test_qk_scores_empty(rng):
    q = np.zeros((2, 0, 3, 4), np.float32)
    r = A.qk_scores(q, q, pairs="all", softmax=True)
    assert r.scores.shape == (9, 2, 0, 0) and r.pattern.shape == (9, 2, 0, 0)
    r = A.qk_scores(q, q, histogram=(5, (0.0, 1.0)))
    assert r.hist.shape == (3, 5) and r.hist.sum() == 0


def test_qk_scores_errors(rng):
    q = rng.standard_normal((5, 2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="needs n_heads"):
        A.qk_scores(q[:, 0], q[:, 0])
    with pytest.raises(ValueError, match="not divisible by n_heads=3"):
        A.qk_scores(q[:, 0], q[:, 0], n_heads=3)
    with pytest.raises(ValueError, match="differ in batch, heads or d_head"):
        A.qk_scores(q, q[:, :, :4])
    with pytest.raises(ValueError, match="pairs: expected 'within'"):
        A.qk_scores(q, q, pairs="diagonal")
    with pytest.raises(IndexError, match="out of range for 2 heads"):
        A.qk_scores(q, q, pairs=[(0, 2)])
    with pytest.raises(ValueError, match="needs a range"):
        A.qk_scores(q, q, histogram=(10, None))
    with pytest.raises(ValueError, match="mask: shape .* does not broadcast"):
        A.qk_scores(q, q, mask=np.ones((4, 4), bool))
    with pytest.raises(TypeError, match="boolean keep-mask"):
        A.qk_scores(q, q, mask=np.ones((5, 5)))
    with pytest.raises(TypeError, match="expected a float array"):
        A.qk_scores(q.astype(int), q)


# --------------------------------------------------------------------------- KDE and entropy

def test_gaussian_kde_matches_scipy(rng):
    g = np.linspace(0, 1, 100)
    cases = [rng.random(20000) ** 3,                          # softmax-like, skewed
             rng.standard_normal(5000),
             np.concatenate([rng.standard_normal(3000) * 1e-3, [50.0, -50.0]])]  # far outliers
    for s in cases:
        for bw in ["scott", "silverman", 0.3, lambda k: 0.05]:
            ours, ref = A.gaussian_kde(s, bw), scipy.stats.gaussian_kde(s, bw)
            assert ours.factor == ref.factor
            pts = np.concatenate([g, [s.min() - 1, s.max() + 1, 100.0]])
            np.testing.assert_allclose(ours(pts), ref(pts), rtol=1e-10, atol=1e-300)
    w = rng.random(2000)
    s = rng.standard_normal(2000)
    ours, ref = A.gaussian_kde(s, weights=w), scipy.stats.gaussian_kde(s, weights=w)
    assert ours.neff == pytest.approx(ref.neff, rel=1e-14)
    np.testing.assert_allclose(ours(g), ref(g), rtol=1e-10)
    # 2-D
    d2 = rng.standard_normal((2, 800))
    d2[1] += d2[0]
    pts = rng.standard_normal((2, 50))
    np.testing.assert_allclose(A.gaussian_kde(d2)(pts), scipy.stats.gaussian_kde(d2)(pts),
                               rtol=1e-10)


def test_kde_fast_path_matches_reference_all_isas(rng):
    s = np.sort(rng.random(5000) ** 2)
    t = np.linspace(-0.5, 1.5, 64) / 0.01
    S = (s / 0.01)[None]
    ref = _core._kde_1d(S, None, t[None], np.array([1.0]), True)
    try:
        for isa in ["scalar", "avx2", "avx512"]:
            _core.force_isa(isa)
            np.testing.assert_allclose(_core._kde_1d(S, None, t[None], np.array([1.0])), ref,
                                       rtol=1e-12, atol=1e-300)
    finally:
        _core.force_isa("best")


def test_kde_entropy_seed_recipe(rng):
    # the REVE seed: softmax of QK^T per head, KDE on linspace(0, 1, 100)
    q = rng.standard_normal((4, 30, 3, 16)).astype(np.float32)
    k = rng.standard_normal((4, 30, 3, 16)).astype(np.float32)
    sm = A.qk_scores(q, k, softmax=True).pattern.reshape(3, -1)
    grid = np.linspace(0, 1, 100)
    got = A.kde_entropy(sm, grid, eps=1e-10)
    got0 = A.kde_entropy(sm, grid)
    for h in range(3):
        kde_y = scipy.stats.gaussian_kde(sm[h])(grid)
        kde_y /= kde_y.sum()
        np.testing.assert_allclose(got[h], -np.sum(kde_y * np.log2(kde_y + 1e-10)), rtol=1e-10)
        p = kde_y[kde_y > 0]
        np.testing.assert_allclose(got0[h], -np.sum(p * np.log2(p)), rtol=1e-10)
    assert isinstance(A.kde_entropy(sm[0], grid), float)


def test_kde_errors():
    with pytest.raises(ValueError, match="multiple elements"):
        A.gaussian_kde([1.0])
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        A.gaussian_kde(np.ones(10))
    with pytest.raises(ValueError, match="NaN or inf"):
        A.gaussian_kde([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="bw_method"):
        A.gaussian_kde([1.0, 2.0, 4.0], bw_method="nope")
    with pytest.raises(ValueError, match="points have dimension 3, dataset has dimension 2"):
        A.gaussian_kde(np.random.default_rng(0).standard_normal((2, 10)))(np.ones((3, 4)))
    kde = A.gaussian_kde([1.0, 2.0, 4.0])
    for bad in [np.nan, np.inf]:
        with pytest.raises(ValueError, match="must not contain infs or NaNs"):
            kde([0.5, bad])
        with pytest.raises(ValueError, match="must not contain infs or NaNs"):
            scipy.stats.gaussian_kde([1.0, 2.0, 4.0])([0.5, bad])
    with pytest.raises(ValueError, match="grid"):
        A.kde_entropy(np.arange(10.0), [])
    with pytest.raises(ValueError, match="grid: must not contain"):
        A.kde_entropy(np.arange(10.0), [0.0, np.nan])


def test_entropy(rng):
    P = rng.random((5, 7, 3))
    P[0, :, 0] = 0
    P[1, 2, 1] = 0
    for axis in [0, 1, 2, -1]:
        for base in [2, None, 10]:
            np.testing.assert_allclose(A.entropy(P, base=base, axis=axis),
                                       scipy.stats.entropy(P, base=base, axis=axis), atol=1e-12)
    assert A.entropy([0.5, 0.5]) == pytest.approx(1.0, abs=1e-15)
    assert A.entropy([1, 0, 0]) == 0.0
    assert A.entropy([0.5, -0.1, 0.6]) == -np.inf == scipy.stats.entropy([0.5, -0.1, 0.6])
    with pytest.raises(ValueError, match="base must be positive and not 1"):
        A.entropy([0.5, 0.5], base=1)


def test_results_independent_of_thread_count(rng):
    x = rng.standard_normal((3, 70001)).astype(np.float32)
    q = rng.standard_normal((4, 30, 4, 16)).astype(np.float32)
    s = rng.random(30000) ** 3

    def run():
        return (A.describe(x), A.describe(x, axis=1), A.describe(x, axis=0),
                A.column_cosine_similarity(x[:, :500].T), A.batched_histogram(x, 50)[0],
                A.qk_scores(q, q, pairs="all", softmax=True, histogram=(20, (-5.0, 5.0))),
                A.gaussian_kde(s)(np.linspace(0, 1, 50)))

    n = mechinterp_c.get_num_threads()
    try:
        mechinterp_c.set_num_threads(1)
        one = run()
        mechinterp_c.set_num_threads(4)
        four = run()
    finally:
        mechinterp_c.set_num_threads(n)
    for a, b in zip(one, four):
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            if u is None:
                assert v is None
            else:
                np.testing.assert_array_equal(u, v)


def test_histogram_bin_count_paths_identical(rng):
    # <= 1024 uniform bins count through sub-histograms with float32 edges, more bins
    # through the plain loop: both give np.histogram's counts, edges and neighbours
    # one ulp away included
    for nb in (1, 2, 1023, 1024, 1025, 3000):
        e = np.linspace(-2, 2, nb + 1).astype(np.float32)
        x = np.concatenate([rng.standard_normal(20000).astype(np.float32), e,
                            np.nextafter(e, np.float32(np.inf)), np.nextafter(e, np.float32(-np.inf)),
                            np.array([np.nan, np.inf, -np.inf], np.float32)])
        for r in ((-2.0, 2.0), (-1.5, 1.7)):
            np.testing.assert_array_equal(A.histogram(x, nb, r)[0], np.histogram(x, nb, r)[0],
                                          err_msg=f"{nb} {r}")
        finite = x[np.isfinite(x)]
        np.testing.assert_array_equal(A.histogram(finite, nb)[0], np.histogram(finite, nb)[0])
