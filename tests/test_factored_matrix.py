"""mechinterp_c.FactoredMatrix against transformer_lens.FactoredMatrix on the same factors.

Every operation is run on both with identical float32 factors (with and without
leading dims, tall and wide, broadcast) and compared in shape and value.

Tolerances (relative to the largest magnitude of the reference result):
- products, norms, corners, indexing: TOL = 1e-5. Both sides multiply float32
  factors with <= 16-term dot products in different summation orders (unit
  roundoff 6e-8), so the observed error is ~1e-7; a wrong transpose or factor
  is O(1).
- SVD-derived results (S, U/V up to sign, make_even, collapse_*, composition
  scores): SVD_TOL = 1e-4. Three float32 SVDs in a row (LAPACK gesdd in NumPy,
  torch's own driver) agree to ~1e-5 of the largest singular value.
- eigenvalues: EIG_TOL = 1e-4 of the largest |eigenvalue|, compared as sorted
  multisets (the two libraries may order them differently); the random
  non-symmetric cores here are well conditioned.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
tl_fm = pytest.importorskip("transformer_lens.FactoredMatrix")
tl_utils = pytest.importorskip("transformer_lens.utils")

from mechinterp_c import FactoredMatrix, utils

TOL, SVD_TOL, EIG_TOL = 1e-5, 1e-4, 1e-4
TLFactoredMatrix = tl_fm.FactoredMatrix


def arr(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def both(A, B):
    """Our FactoredMatrix and TransformerLens's on the same factors."""
    return FactoredMatrix(A, B), TLFactoredMatrix(torch.tensor(A), torch.tensor(B))


def close(ours, ref, tol=TOL, what=""):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs TransformerLens {ref.shape}"
    scale = max(np.abs(ref).max(initial=0.0), 1e-30)
    err = np.abs(ours - ref).max(initial=0.0)
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} x scale {scale:.3g}"


def close_fm(ours, ref, tol=TOL, what=""):
    """Same class, same shape and dims, same factors and product."""
    assert isinstance(ours, FactoredMatrix), f"{what}: got {type(ours).__name__}"
    assert ours.shape == tuple(ref.shape), f"{what}: shape {ours.shape} vs {tuple(ref.shape)}"
    assert (ours.ldim, ours.mdim, ours.rdim) == (ref.ldim, ref.mdim, ref.rdim), what
    close(ours.A, ref.A, tol, what + " A")
    close(ours.B, ref.B, tol, what + " B")
    close(ours.AB, ref.AB, tol, what + " AB")


# (A shape, B shape): plain, wide middle, tall, leading dims, broadcast leading dims
SHAPES = {
    "plain": ((6, 3), (3, 5)),
    "square_low_rank": ((8, 3), (3, 8)),
    "mdim_gt_ldim": ((4, 7), (7, 5)),
    "leading": ((2, 3, 8, 4), (2, 3, 4, 8)),
    "broadcast": ((3, 1, 6, 2), (4, 2, 6)),
}


@pytest.fixture(params=list(SHAPES))
def pair(request):
    rng = np.random.default_rng(list(SHAPES).index(request.param))
    a_shape, b_shape = SHAPES[request.param]
    return both(arr(rng, *a_shape), arr(rng, *b_shape))


def test_construction_and_dims(pair):
    ours, ref = pair
    assert ours.shape == tuple(ref.shape) and ours.ndim == ref.ndim
    assert (ours.ldim, ours.mdim, ours.rdim) == (ref.ldim, ref.mdim, ref.rdim)
    assert ours.has_leading_dims == ref.has_leading_dims
    assert repr(ours).startswith("FactoredMatrix: Shape(")
    close(ours.AB, ref.AB, what="AB")
    close_fm(ours.T, ref.T, what="T")
    for o, r in zip(ours.pair, ref.pair):
        close(o, r, what="pair")
    if ours.ldim == ours.rdim:
        close(ours.BA, ref.BA, what="BA")
    else:
        with pytest.raises(ValueError, match="ldim==rdim"):
            ours.BA


def test_matmul_with_arrays_both_sides(pair):
    ours, ref = pair
    rng = np.random.default_rng(5)
    for new in (2, 9):   # re-factored on either side depending on rdim vs mdim
        right = arr(rng, ours.rdim, new)
        close_fm(ours @ right, ref @ torch.tensor(right), what=f"fm @ [{ours.rdim},{new}]")
        left = arr(rng, new, ours.ldim)
        close_fm(left @ ours, torch.tensor(left) @ ref, what=f"[{new},{ours.ldim}] @ fm")
    v = arr(rng, ours.rdim)
    close(ours @ v, ref @ torch.tensor(v), what="fm @ vector")
    u = arr(rng, ours.ldim)
    close(u @ ours, torch.tensor(u) @ ref, what="vector @ fm")
    # torch tensors as operands give the same as NumPy ones
    close_fm(ours @ torch.tensor(right := arr(rng, ours.rdim, 3)), ref @ torch.tensor(right), what="fm @ tensor")
    close_fm(torch.tensor(left := arr(rng, 3, ours.ldim)) @ ours, torch.tensor(left) @ ref, what="tensor @ fm")


def test_matmul_factored_both_sides(pair):
    ours, ref = pair
    rng = np.random.default_rng(6)
    C, D = arr(rng, ours.rdim, 2), arr(rng, 2, 4)
    o2, r2 = both(C, D)
    close_fm(ours @ o2, ref @ r2, what="fm @ fm")
    E, F = arr(rng, 5, 3), arr(rng, 3, ours.ldim)
    o3, r3 = both(E, F)
    close_fm(o3 @ ours, r3 @ ref, what="fm' @ fm")


def test_scalar_multiplication(pair):
    ours, ref = pair
    close_fm(ours * 2.5, ref * 2.5, what="fm * 2.5")
    close_fm(3 * ours, 3 * ref, what="3 * fm")
    close_fm(ours * np.float32(0.5), ref * torch.tensor(0.5), what="fm * 0-d")
    assert (ours * 2.5).A.dtype == np.float32
    with pytest.raises(ValueError, match="scalar"):
        ours * np.ones(3, np.float32)


def test_svd_norm_and_derived(pair):
    ours, ref = pair
    U, S, V = ours.svd()
    Ur, Sr, Vr = ref.svd()
    close(S, Sr, SVD_TOL, "S")
    assert U.shape == tuple(Ur.shape) and V.shape == tuple(Vr.shape)
    # singular vectors agree up to a sign per column
    for o, r, what in ((U, Ur.numpy(), "U"), (V, Vr.numpy(), "V")):
        cos = np.abs((o * r).sum(-2))
        live = Sr.numpy() > 1e-3 * Sr.numpy().max()
        np.testing.assert_allclose(cos[live], 1.0, atol=SVD_TOL, err_msg=what)
    close(U @ (S[..., :, None] * np.swapaxes(V, -1, -2)), ref.AB, SVD_TOL, "U S V^T")
    assert ours.U is U and ours.S is S and ours.V is V        # computed once
    with pytest.warns(DeprecationWarning, match="Vh"):
        assert ours.Vh is V
    close(ours.norm(), ref.norm(), SVD_TOL, "norm")
    close(ours.norm(), np.sqrt((ours.AB.astype(np.float64) ** 2).sum((-2, -1))), SVD_TOL, "norm = Frobenius")
    even, even_ref = ours.make_even(), ref.make_even()
    close(even.AB, even_ref.AB, SVD_TOL, "make_even AB")
    close(np.abs(even.A), np.abs(even_ref.A.numpy()), SVD_TOL, "make_even |A|")
    # collapse_l = S V^T and collapse_r = U S; compare up to the same per-column signs
    close(np.abs(ours.collapse_l()), np.abs(ref.collapse_l().numpy()), SVD_TOL, "collapse_l")
    close(np.abs(ours.collapse_r()), np.abs(ref.collapse_r().numpy()), SVD_TOL, "collapse_r")
    close(ours.collapse_r() @ (ours.collapse_l() / S[..., :, None]), ref.AB, SVD_TOL, "U S S^-1 S V^T")


def test_eigenvalues(pair):
    ours, ref = pair
    if ours.ldim != ours.rdim:
        with pytest.raises(ValueError, match="ldim==rdim"):
            ours.eigenvalues
        return
    ev, evr = ours.eigenvalues, ref.eigenvalues.numpy()
    assert ev.shape == evr.shape and np.iscomplexobj(ev)
    assert ev.dtype == evr.dtype    # complex64 even when every eigenvalue is real
    # the same multiset: each eigenvalue of one side is near one of the other's
    gap = np.abs(ev[..., :, None] - evr[..., None, :])
    tol = EIG_TOL * np.abs(evr).max()
    assert gap.min(-1).max() <= tol and gap.min(-2).max() <= tol


def test_indexing_corner_unsqueeze(pair):
    ours, ref = pair
    lead = ours.ndim - 2
    indices = [(0,), (slice(0, 2),), (-1,)]
    if lead:
        indices += [(0,) * lead + (1,), (0,) * lead + (slice(1, 3), -1), (0,) * lead + (-1, 2)]
    else:
        indices = [(1,), (-1,), (slice(1, 3), 0), (-1, 2), (slice(None), -1)]
    for idx in indices:
        close_fm(ours[idx], ref[idx], what=f"[{idx}]")
    with pytest.raises(ValueError, match="too long an index"):
        ours[(0,) * (ours.ndim + 1)]
    for k in (1, 2, 3):
        close(ours.get_corner(k), ref.get_corner(k), what=f"get_corner({k})")
    close(utils.get_matrix_corner(ours, 2), tl_utils.get_matrix_corner(ref, 2), what="get_matrix_corner")
    for k in (0, -3):
        close_fm(ours.unsqueeze(k), ref.unsqueeze(k), what=f"unsqueeze({k})")


def test_composition_scores():
    rng = np.random.default_rng(3)
    left = both(arr(rng, 2, 3, 8, 2), arr(rng, 2, 3, 2, 8))
    right = both(arr(rng, 4, 8, 2), arr(rng, 4, 2, 8))
    for bd in (True, False):
        if not bd:
            right = both(arr(rng, 2, 3, 8, 2), arr(rng, 2, 3, 2, 8))
        ours = utils.composition_scores(left[0], right[0], broadcast_dims=bd)
        ref = tl_utils.composition_scores(left[1], right[1], broadcast_dims=bd)
        close(ours, ref, SVD_TOL, f"composition_scores broadcast_dims={bd}")
    bad = FactoredMatrix(arr(rng, 5, 2), arr(rng, 2, 5))
    with pytest.raises(ValueError, match="left.rdim==right.ldim"):
        utils.composition_scores(left[0], bad)


def test_bad_factors_raise_clearly():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="inner dimension"):
        FactoredMatrix(arr(rng, 4, 3), arr(rng, 2, 4))
    with pytest.raises(ValueError, match="leading dimensions"):
        FactoredMatrix(arr(rng, 2, 4, 3), arr(rng, 3, 3, 4))
    with pytest.raises(ValueError, match="at least 2 dims"):
        FactoredMatrix(arr(rng, 4), arr(rng, 4, 4))
    fm = FactoredMatrix(arr(rng, 4, 3), arr(rng, 3, 5))
    with pytest.raises(ValueError, match="inner dimension"):
        fm @ arr(rng, 4, 2)
    with pytest.raises(ValueError, match="inner dimension"):
        arr(rng, 2, 5) @ fm
    with pytest.raises(ValueError, match="rdim"):
        fm @ arr(rng, 4)
    # still usable afterwards
    close(fm @ np.ones(5, np.float32), fm.AB @ np.ones(5, np.float32), what="after errors")


def test_eigenvalues_complex_even_when_all_real():
    # BA = X^T X is symmetric: every eigenvalue is real, and both still give complex64
    X = arr(np.random.default_rng(8), 7, 3)
    ours, ref = both(X, X.T.copy())
    ev, evr = ours.eigenvalues, ref.eigenvalues.numpy()
    assert ev.dtype == evr.dtype == np.complex64
    np.testing.assert_allclose(np.sort(ev.real), np.sort(evr.real), rtol=EIG_TOL)
    assert not ev.imag.any()
