"""The bfloat16-weight GEMM (csrc/kernels/gemm_bf16.*) and the bfloat16 conversions.

Every path is compared with a float64 product of the bfloat16-rounded operands.
Each product of two bfloat16 values is exact in float32, so the only error is
float32 summation: at most K * 2^-24 * sum_k |a_k b_k| per element (gamma_K on
the exact products); the tests allow exactly that bound.
"""
import numpy as np
import pytest
import torch

from mechinterp_c import _core

PATHS = ["ref", "fp32"] + (["bf16"] if _core._bgemm_best_path() == "bf16" else [])
U = 2.0 ** -24


def bf16(x):
    return _core.from_bfloat16(_core.to_bfloat16(np.asarray(x, np.float32)))


def check(out, a, b_u16, trans_b, bias=None, c0=None):
    A = bf16(a).astype(np.float64)
    B = _core.from_bfloat16(b_u16).astype(np.float64)
    if trans_b:
        B = B.T
    exact = A @ B
    bound = A.shape[1] * U * (np.abs(A) @ np.abs(B))
    if c0 is not None:
        exact = exact + c0
        bound = bound + U * (np.abs(c0) + np.abs(exact))
    if bias is not None:
        exact = exact + bias
        bound = bound + U * (np.abs(exact) + np.abs(bias))
    err = np.abs(out - exact)
    assert (err <= bound + 1e-30).all(), f"max err {err.max():.3e}, worst ratio {(err / (bound + 1e-30)).max():.2f}"


SHAPES = [(1, 1, 1), (3, 5, 7), (12, 32, 2), (13, 33, 3), (37, 70, 129), (100, 65, 768), (25, 300, 1537),
          (130, 97, 770),
          (1, 3000, 769), (4, 70, 1537), (2, 1000, 768), (5, 300, 100),   # decode-step rows (M <= 4)
          (3, 2050, 4099)]   # decode rows: several column chunks, K not a multiple of 4 or 64


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("trans_b", [False, True])
def test_paths_match_float64(path, M, N, K, trans_b, rng):
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = _core.to_bfloat16(rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32))
    check(_core._gemm_bf16(a, b, trans_b=trans_b, path=path), a, b, trans_b)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("M,trans_b", [(50, False), (1, False), (3, True), (4, False)])
def test_bias_and_accumulate(path, M, trans_b, rng):
    N, K = 1100, 301
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = _core.to_bfloat16(rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32))
    bias = rng.standard_normal(N).astype(np.float32)
    check(_core._gemm_bf16(a, b, trans_b=trans_b, bias=bias, path=path), a, b, trans_b, bias=bias)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    out = c0.copy()
    r = _core._gemm_bf16(a, b, trans_b=trans_b, out=out, path=path)
    assert r is out
    check(out, a, b, trans_b, c0=c0)


@pytest.mark.parametrize("trans_b", [False, True])
def test_decode_rows_do_not_depend_on_the_row_count(trans_b, rng):
    """A decode step's row of C is the same bits whether it is computed alone or with
    up to three other sequences' rows (the sum order depends on K only)."""
    a = rng.standard_normal((4, 1000)).astype(np.float32)
    b = _core.to_bfloat16(rng.standard_normal((2100, 1000) if trans_b else (1000, 2100)).astype(np.float32))
    four = _core._gemm_bf16(a, b, trans_b=trans_b)
    for m in (1, 2, 3):
        part = _core._gemm_bf16(a[:m], b, trans_b=trans_b)
        assert np.array_equal(part.view(np.uint32), four[:m].view(np.uint32)), m


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("M,trans_b", [(200, False), (1, False), (3, True)])
def test_threads_bitwise(path, M, trans_b, rng):
    """Threads split output tiles only: 1 and 2 threads give the same bits."""
    a = rng.standard_normal((M, 1000)).astype(np.float32)
    b = _core.to_bfloat16(rng.standard_normal((3000, 1000) if trans_b else (1000, 3000)).astype(np.float32))
    n = _core.get_num_threads()
    try:
        _core.set_num_threads(1)
        one = _core._gemm_bf16(a, b, trans_b=trans_b, path=path)
        _core.set_num_threads(2)
        two = _core._gemm_bf16(a, b, trans_b=trans_b, path=path)
    finally:
        _core.set_num_threads(n)
    assert np.array_equal(one.view(np.uint32), two.view(np.uint32))


def test_auto_is_the_best_path(rng):
    a = rng.standard_normal((64, 256)).astype(np.float32)
    b = _core.to_bfloat16(rng.standard_normal((256, 96)).astype(np.float32))
    best = _core._bgemm_best_path()
    assert np.array_equal(_core._gemm_bf16(a, b), _core._gemm_bf16(a, b, path=best))


def test_forced_lower_isa_uses_the_fp32_path(rng):
    a = rng.standard_normal((64, 256)).astype(np.float32)
    b = _core.to_bfloat16(rng.standard_normal((256, 96)).astype(np.float32))
    prev = _core.cpu_isa()
    try:
        _core.force_isa("avx2")
        assert _core._bgemm_best_path() == "fp32"
        check(_core._gemm_bf16(a, b), a, b, False)
    finally:
        _core.force_isa(prev)


def test_conversion_matches_torch(rng):
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, -1e-45,
                                  1.00390625, 1.01171875], np.float32)]).astype(np.float32)
    ours = _core.to_bfloat16(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, theirs)
    back = _core.from_bfloat16(ours)
    assert np.array_equal(back, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    nan = _core.to_bfloat16(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(_core.from_bfloat16(nan)).all()


def test_byte_swapped_activations_are_converted(rng):
    a = rng.standard_normal((40, 64)).astype(np.float32)
    b = _core.to_bfloat16(rng.standard_normal((64, 50)).astype(np.float32))
    assert np.array_equal(_core._gemm_bf16(a.astype(">f4"), b), _core._gemm_bf16(a, b))
    assert np.array_equal(_core.to_bfloat16(a.astype(">f4")), _core.to_bfloat16(a))


def test_bad_input(rng):
    a = rng.standard_normal((4, 8)).astype(np.float32)
    b = _core.to_bfloat16(rng.standard_normal((8, 5)).astype(np.float32))
    with pytest.raises(TypeError, match="b: expected a uint16 array"):
        _core._gemm_bf16(a, b.astype(np.float32))
    with pytest.raises(TypeError, match="b: expected a uint16 array"):
        _core._gemm_bf16(a, b.astype(np.uint8))    # bit patterns are never widened
    with pytest.raises(ValueError, match="inner dimensions differ"):
        _core._gemm_bf16(a, b, trans_b=True)
    with pytest.raises(ValueError, match="path: must be"):
        _core._gemm_bf16(a, b, path="fast")
    with pytest.raises(ValueError, match=r"bias: expected shape \(5,\)"):
        _core._gemm_bf16(a, b, bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"out: expected shape \(4, 5\)"):
        _core._gemm_bf16(a, b, out=np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="out: expected a writable"):
        _core._gemm_bf16(a, b, out=np.zeros((4, 5), np.float64))
    with pytest.raises(TypeError, match="h: expected a uint16 array"):
        _core.from_bfloat16(a)
    h = _core.to_bfloat16(rng.standard_normal((6, 8)).astype(np.float32))
    assert np.array_equal(_core.from_bfloat16(h[:, ::2]), _core.from_bfloat16(h)[:, ::2])  # strided views
    check(_core._gemm_bf16(a, b), a, b, False)   # still usable


FAST_PACK = _core._bgemm_best_path() == "bf16"


@pytest.mark.skipif(not FAST_PACK, reason="the vector packers need AVX512-BF16")
@pytest.mark.parametrize("K", [1, 2, 31, 32, 33, 64, 65, 769])
def test_packers_match_their_plain_twins(K, rng):
    """The AVX-512 packings (what the bf16 path multiplies) give the same words as the
    plain loops, for every block edge: odd K, K blocks, partial row panels and columns."""
    from mechinterp_c import _testing
    a = rng.standard_normal((30, K)).astype(np.float32)
    a[0, 0] = np.nan
    KP = (K + 1) // 2
    for i0, mcur in ((0, 30), (5, 13), (29, 1)):
        for p0, kp in ((0, KP), (KP // 2, KP - KP // 2), (0, min(KP, 17))):
            ref = _testing._bgemm_pack_a(a, i0, mcur, p0, kp, False)
            fast = _testing._bgemm_pack_a(a, i0, mcur, p0, kp, True)
            assert np.array_equal(ref, fast), (i0, mcur, p0, kp)
    for trans_b in (False, True):
        b = _core.to_bfloat16(rng.standard_normal((70, K) if trans_b else (K, 70)).astype(np.float32))
        for j0, cols in ((0, 32), (32, 32), (64, 6), (3, 1)):
            for p0, kp in ((0, KP), (KP // 2, KP - KP // 2), (0, min(KP, 17))):
                ref = _testing._bgemm_pack_b(b, trans_b, p0, kp, j0, cols, False)
                fast = _testing._bgemm_pack_b(b, trans_b, p0, kp, j0, cols, True)
                assert np.array_equal(ref, fast), (trans_b, j0, cols, p0, kp)
