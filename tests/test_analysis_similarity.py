"""The one-call similarity path (normalise in C, symmetric blocked product):
cosine_similarity / column_cosine_similarity / corrcoef against the plain C
reference (double throughout), sklearn and NumPy, on random and adversarial
inputs.

Tolerances: atol 2e-6 (as test_analysis). The fast path rounds the normalised
variables to float32 (relative 6e-8 each) and sums k float32 products in a
blocked order: for unit vectors the dot product's error is bounded by about
k * 6e-8 * |x||y| in the worst case and ~sqrt(k) * 6e-8 typically, i.e.
< 1e-6 for the k <= 600 used here; a wrong norm, mean or block offset gives
errors >= 1e-2.
"""
import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity as sk_cosine

import mechinterp_c
from mechinterp_c import _core
from mechinterp_c import analysis as A

ATOL = 2e-6


def _ref(x, y, axis, center, fill, clip):
    return _core._similarity(x, y, axis, center, fill, clip, False, True)


# shapes: n_vars not a multiple of the 192 block (ragged last block), one block only,
# small k (the seed's 54 tokens) and large k (REVE's 512-wide weight rows)
@pytest.mark.parametrize("rows,cols", [(54, 450), (7, 200), (450, 40), (30, 600)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_matches_reference(rng, rows, cols, dtype):
    x = (rng.standard_normal((rows, cols)) + 0.3).astype(dtype)
    for axis in (0, 1):
        for center, fill, clip in ((False, 0.0, False), (True, np.nan, True), (False, np.nan, False)):
            got = _core._similarity(x, None, axis, center, fill, clip)
            ref = _ref(x, None, axis, center, fill, clip)
            n = cols if axis == 0 else rows
            assert got.shape == (n, n) and got.dtype == np.float32
            np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
            np.testing.assert_array_equal(got, got.T)          # mirrored: exactly symmetric
    y = rng.standard_normal((rows + 3, cols)).astype(dtype)
    np.testing.assert_allclose(_core._similarity(x, y, 1, False, 0.0, False),
                               _ref(x, y, 1, False, 0.0, False), atol=ATOL, rtol=0)


def test_against_numpy_and_sklearn_at_seed_sizes(rng):
    # gpt2_qkv_token_similarities: 54 target tokens x 3*768 Q/K/V units (float64)
    acts = rng.standard_normal((54, 3 * 768))
    acts[:, :768] += 0.5 * rng.standard_normal((54, 1))
    An = acts / np.linalg.norm(acts, axis=0, keepdims=True)
    np.testing.assert_allclose(A.column_cosine_similarity(acts), An.T @ An, atol=ATOL)
    np.testing.assert_allclose(A.corrcoef(acts, rowvar=False), np.corrcoef(acts, rowvar=False),
                               atol=ATOL)
    # the seed's shuffled baseline goes through the same call
    shuffled = acts.flatten()[rng.permutation(acts.size)].reshape(acts.shape)
    Sn = shuffled / np.linalg.norm(shuffled, axis=0, keepdims=True)
    np.testing.assert_allclose(A.column_cosine_similarity(shuffled), Sn.T @ Sn, atol=ATOL)
    # reve_eeg_exploration: cosine_similarity(expand, expand) of a [2*1361, 512] weight
    # (a 600-row slice keeps the test short; same k, several blocks)
    W = (0.05 * rng.standard_normal((600, 512))).astype(np.float32)
    np.testing.assert_allclose(A.cosine_similarity(W, W), sk_cosine(W, W), atol=ATOL)
    np.testing.assert_allclose(A.cosine_similarity(W), sk_cosine(W), atol=ATOL)
    # Y given separately (a copy, not X itself): the general product, same numbers
    np.testing.assert_allclose(A.cosine_similarity(W, W.copy()), A.cosine_similarity(W), atol=1e-6)


def test_thread_count_does_not_change_bits(rng):
    x = rng.standard_normal((40, 700)).astype(np.float32)
    n0 = mechinterp_c.get_num_threads()
    try:
        mechinterp_c.set_num_threads(1)
        one = A.column_cosine_similarity(x, center=True)
        mechinterp_c.set_num_threads(2)
        two = A.column_cosine_similarity(x, center=True)
    finally:
        mechinterp_c.set_num_threads(n0)
    np.testing.assert_array_equal(one, two)


def test_inputs_read_in_place_and_converted(rng):
    x64 = rng.standard_normal((20, 30))
    ref = np.corrcoef(x64)
    for x in (x64, x64.astype(np.float32), np.asfortranarray(x64), x64.tolist(), x64[:, ::-1][:, ::-1]):
        np.testing.assert_allclose(A.corrcoef(x), ref, atol=ATOL)
    xi = np.round(x64 * 1000).astype(np.int64)
    np.testing.assert_allclose(A.corrcoef(xi), np.corrcoef(xi), atol=ATOL)
    ints = rng.integers(-5, 5, (10, 25))
    np.testing.assert_allclose(A.cosine_similarity(ints), sk_cosine(ints), atol=ATOL)
    np.testing.assert_allclose(A.corrcoef(x64[0]), np.corrcoef(x64[0]), atol=ATOL)   # 1-D
    with pytest.raises(TypeError, match="X: expected a real numeric array, got dtype complex"):
        A.cosine_similarity(np.ones((2, 2), complex))


def test_adversarial_constant_zero_nan_inf(rng):
    acts = rng.standard_normal((12, 300))
    acts[:, 5] = 3.0                   # constant: cosine fine, correlation NaN (0/0)
    acts[:, 7] = 0.0                   # zero: NaN in the seed recipe (0/0)
    acts[:, 250] = np.nan
    acts[4, 260] = np.inf
    with np.errstate(all="ignore"):
        An = acts / np.linalg.norm(acts, axis=0, keepdims=True)
        ref_cos = An.T @ An
        ref_corr = np.corrcoef(acts, rowvar=False)
    got_cos = A.column_cosine_similarity(acts)
    got_corr = A.corrcoef(acts, rowvar=False)
    for got, ref in ((got_cos, ref_cos), (got_corr, ref_corr)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(got[fin], ref[fin], atol=ATOL)
    assert np.isnan(got_cos[7]).all() and np.isnan(got_corr[5]).all()
    assert np.isnan(got_cos[250]).all() and np.isnan(got_cos[:, 260]).all()
    assert np.abs(got_cos[5, 6]) <= 1   # the constant column has a cosine
    # cosine_similarity (sklearn) rejects NaN/inf, naming the row
    X = rng.standard_normal((5, 8))
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"X: contains NaN or infinity \(row 3\)"):
        A.cosine_similarity(X)
    with pytest.raises(ValueError, match=r"Y: contains NaN or infinity \(row 1\)"):
        A.cosine_similarity(np.ones((2, 8)), np.array([np.ones(8), np.full(8, -np.inf)]))
    # huge finite values are not "non-finite" (float64 sum of squares of float32 max)
    big = np.full((2, 4), np.finfo(np.float32).max, np.float32)
    np.testing.assert_allclose(A.cosine_similarity(big), np.ones((2, 2)), atol=ATOL)
    # zero rows: 0 as sklearn
    Z = np.zeros((3, 4))
    np.testing.assert_array_equal(A.cosine_similarity(Z), sk_cosine(Z))


def test_empty_inputs():
    with pytest.raises(ValueError, match=r"X: found array with shape \(0, 5\)"):
        A.cosine_similarity(np.zeros((0, 5)))
    with pytest.raises(ValueError, match=r"Y: found array with shape \(3, 0\)"):
        A.cosine_similarity(np.ones((2, 4)), np.zeros((3, 0)))
    # no observations: NaN like np.corrcoef; no variables: an empty matrix
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.corrcoef(np.zeros((3, 0)))
    got = A.corrcoef(np.zeros((3, 0)))
    assert got.shape == ref.shape == (3, 3) and np.isnan(got).all() and np.isnan(ref).all()
    assert np.isnan(A.column_cosine_similarity(np.zeros((0, 4)))).all()
    assert A.column_cosine_similarity(np.zeros((5, 0))).shape == (0, 0)
    assert A.corrcoef(np.zeros((0, 6))).shape == (0, 0)


def test_large_outputs_reuse_only_released_memory(rng):
    # >= 4 MiB results get huge-page memory and one released buffer is recycled:
    # live results must never share it
    xs = [rng.standard_normal((8, n)) for n in (1100, 1100, 1050, 1200)]
    refs = [np.corrcoef(x, rowvar=False) for x in xs]
    r0 = A.corrcoef(xs[0], rowvar=False)
    r1 = A.corrcoef(xs[1], rowvar=False)
    keep1 = r1.copy()
    del r0                                        # its buffer becomes the spare
    r2 = A.corrcoef(xs[2], rowvar=False)          # smaller: reuses it
    r3 = A.corrcoef(xs[3], rowvar=False)          # larger: fresh memory
    assert r1.nbytes >= 4 << 20
    np.testing.assert_array_equal(r1, keep1)
    for r, ref in ((r1, refs[1]), (r2, refs[2]), (r3, refs[3])):
        np.testing.assert_allclose(r, ref, atol=ATOL)
    assert len({r1.ctypes.data, r2.ctypes.data, r3.ctypes.data}) == 3
    assert r1.ctypes.data % (2 << 20) == 0          # 2 MiB aligned for huge pages


def test_upper_triangle_matches_triu_indices(rng):
    for n in (0, 1, 6, 301):
        S = rng.standard_normal((n, n)).astype(np.float32)
        for k in (-2, 0, 1, 3, n + 1):
            got = A.upper_triangle(S, k)
            ref = S[np.triu_indices(n, k)]
            assert got.dtype == ref.dtype
            np.testing.assert_array_equal(got, ref)
    # the seed's selection on a similarity matrix (no exact zeros)
    cs = A.column_cosine_similarity(rng.standard_normal((20, 50)))
    np.testing.assert_array_equal(A.upper_triangle(cs), cs[np.nonzero(np.triu(cs, 1))])
    with pytest.raises(ValueError, match=r"square matrix, got shape \(2, 3\)"):
        A.upper_triangle(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="k must be an int"):
        A.upper_triangle(np.zeros((2, 2)), 1.5)
