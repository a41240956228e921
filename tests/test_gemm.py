"""SGEMM: every ISA's packed kernels and the reference against float64 NumPy.

Tolerance (used everywhere below unless stated): an fp32 product of K terms
accumulated one term at a time has a rounding error of at most about
K * eps * (|op(A)| @ |op(B)|) elementwise, and in practice (random signs) a few
times eps * (|op(A)| @ |op(B)|). We allow

    tol = 2 * sqrt(K) * eps32 * (|op(A)| @ |op(B)| + |beta * C0| + |bias|)

which is far above the observed error for correct code, yet a dropped, doubled
or misplaced term (an error of order |a_ik * b_kj|, about the size of one
summand) exceeds it by orders of magnitude for every K tested here.
"""
import numpy as np
import pytest

from mechinterp_c import _core, _testing, ops

EPS32 = float(np.finfo(np.float32).eps)
ISAS = ["scalar", "avx2", "avx512"]


@pytest.fixture(params=ISAS)
def isa(request):
    """Force one instruction set for the test, restore the best one after."""
    got = _core.force_isa(request.param)
    if got != request.param:
        _core.force_isa("best")
        pytest.skip(f"this CPU has no {request.param} (best: {got})")
    yield got
    _core.force_isa("best")


@pytest.fixture
def threads():
    """Restore the thread count a test changes."""
    n = _core.get_num_threads()
    yield
    _core.set_num_threads(n)


def op_shape(rows, cols, trans):
    """Stored shape of an operand whose op() is [rows, cols]."""
    return (cols, rows) if trans else (rows, cols)


def padded(rng, shape, ld, fill=np.nan):
    """A random [r, c] matrix stored with leading dim ld >= c, padding = fill.

    Returns (flat float32 buffer, the [r, c] float32 view of its values)."""
    r, c = shape
    buf = np.full((max(r, 1), ld), fill, np.float32)
    vals = rng.standard_normal((r, c)).astype(np.float32)
    buf[:r, :c] = vals
    return buf.ravel(), vals


def run_sgemm(rng, M, N, K, trans_a=False, trans_b=False, pad=(0, 0, 0), bias=False,
              beta=0.0, ref=False, nan_pad=True):
    """One _sgemm call on random operands; returns (C values, float64 expectation, tol)."""
    sa, sb = op_shape(M, K, trans_a), op_shape(K, N, trans_b)
    fill = np.nan if nan_pad else 0.0
    lda, ldb, ldc = sa[1] + pad[0], sb[1] + pad[1], N + pad[2]
    a_buf, a = padded(rng, sa, max(lda, 1), fill)
    b_buf, b = padded(rng, sb, max(ldb, 1), fill)
    c_buf, c0 = padded(rng, (M, N), max(ldc, 1), fill)
    bias_v = rng.standard_normal(N).astype(np.float32) if bias else None
    if beta == 0.0:     # C need not be initialised: garbage (NaN) must not leak through
        c_buf.reshape(-1, max(ldc, 1))[:M, :N] = np.nan
    _testing._sgemm(a_buf, b_buf, c_buf, M, N, K, max(lda, 1), max(ldb, 1), max(ldc, 1),
                 trans_a=trans_a, trans_b=trans_b, bias=bias_v, beta=beta, ref=ref)
    opa = (a.T if trans_a else a).astype(np.float64)
    opb = (b.T if trans_b else b).astype(np.float64)
    want = opa @ opb
    scale = np.abs(opa) @ np.abs(opb)
    if beta:
        want += c0
        scale += np.abs(c0)
    if bias:
        want += bias_v
        scale += np.abs(bias_v)
    tol = 2.0 * np.sqrt(max(K, 1)) * EPS32 * scale + 1e-30
    got = c_buf.reshape(-1, max(ldc, 1))[:M, :N].copy()
    if pad[2] and M:    # the padding columns of C must be untouched
        assert np.isnan(c_buf.reshape(-1, ldc)[:M, N:]).all() == nan_pad
    return got, want, tol


def assert_close(got, want, tol):
    err = np.abs(got.astype(np.float64) - want)
    assert np.isfinite(got).all(), "non-finite output"
    bad = err > tol
    assert not bad.any(), f"{bad.sum()} elements out of tolerance, worst err {err.max():.3g}"


# Shapes: tiny (direct path), edge tiles of every micro-kernel (mr 4/6/12,
# nr 8/16/32), several K blocks (kc 256, 768 on AVX-512; 1700 gives 3 equal blocks
# there), N beyond one nc block (1024, 2048, 4096),
# M or N = 1, M <= 8 (the few-rows path).
SHAPES = [(8, 300, 200), (5, 1030, 77), (6, 2304, 64), (1, 1, 1), (7, 13, 33), (13, 7, 1), (33, 33, 33), (1, 300, 200), (300, 1, 200),
          (37, 45, 29), (13, 33, 257), (100, 77, 300), (130, 200, 513), (25, 2100, 40),
          (64, 64, 64), (96, 128, 600), (3, 700, 50), (4, 33, 1000), (13, 4200, 40),
          (40, 70, 1700)]


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sgemm_vs_float64(isa, shape, trans_a, trans_b):
    rng = np.random.default_rng(hash((shape, trans_a, trans_b)) % 2**32)
    got, want, tol = run_sgemm(rng, *shape, trans_a=trans_a, trans_b=trans_b)
    assert_close(got, want, tol)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_few_rows_each_row_as_alone(isa, threads, trans_b, rng):
    """M <= 8 (a decode step of up to 8 sequences) streams B once for all rows: each row
    of C is bitwise the row a 1-row product gives, and 1 and 2 threads agree bitwise."""
    M, N, K = 8, 1100, 300
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    outs = []
    for nt in (1, 2):
        _core.set_num_threads(nt)
        outs.append(np.array(_core.matmul(a, b, bias=bias, trans_b=bool(trans_b))))
    np.testing.assert_array_equal(outs[0], outs[1])
    for i in range(M):
        np.testing.assert_array_equal(np.array(_core.matmul(a[i:i + 1], b, bias=bias,
                                                            trans_b=bool(trans_b)))[0], outs[0][i])


@pytest.mark.parametrize("M", [1, 3, 8])
def test_few_rows_transposed_b_same_bits_on_every_isa(M, rng):
    """A decode step against B stored [N, K] (a tied unembedding) sums each dot product in
    one order on every instruction set: the vectorised kernels give the plain loop's bits."""
    a = rng.standard_normal((M, 301)).astype(np.float32)
    b = rng.standard_normal((700, 301)).astype(np.float32)
    outs = {}
    try:
        for isa in ISAS:
            if _core.force_isa(isa) == isa:
                outs[isa] = np.array(_core.matmul(a, b, trans_b=True))
    finally:
        _core.force_isa("best")
    assert len(outs) >= 2
    for isa, out in outs.items():
        np.testing.assert_array_equal(out, outs["scalar"], err_msg=isa)


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 1)])
@pytest.mark.parametrize("shape", [(7, 13, 33), (37, 45, 29), (100, 77, 300), (25, 70, 600)],
                         ids=lambda s: "x".join(map(str, s)))
def test_bias_beta_leading_dims(isa, shape, trans_a, trans_b, rng):
    """bias, beta=1 and leading dims wider than the rows; padding is never read
    (it holds NaN) nor written."""
    for beta in (0.0, 1.0):
        got, want, tol = run_sgemm(rng, *shape, trans_a=trans_a, trans_b=trans_b,
                                   pad=(3, 5, 7), bias=True, beta=beta)
        assert_close(got, want, tol)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_several_packed_b_groups(isa, threads, trans_b):
    """N = 4200 (> nc on every ISA) and K = 2500 (4 K blocks or more): the packed B
    block is refilled several times; 1 and 2 threads agree bitwise."""
    res = []
    for n in (1, 2):
        _core.set_num_threads(n)
        got, want, tol = run_sgemm(np.random.default_rng(11), 13, 4200, 2500, trans_b=trans_b,
                                   bias=True, beta=1.0, pad=(1, 2, 3))
        assert_close(got, want, tol)
        res.append(got)
    np.testing.assert_array_equal(res[0], res[1])


@pytest.mark.parametrize("shape", [(5, 6, 0), (0, 5, 7), (5, 0, 7)])
def test_empty_dims(isa, shape, rng):
    """K = 0 gives beta*C + bias; M or N = 0 touches nothing."""
    for beta in (0.0, 1.0):
        got, want, tol = run_sgemm(rng, *shape, bias=True, beta=beta, pad=(1, 1, 1))
        assert got.shape == shape[:2]
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_reference_kernel_matches_float64(rng):
    """mi_sgemm_ref itself, against float64."""
    for ta in (0, 1):
        for tb in (0, 1):
            got, want, tol = run_sgemm(rng, 37, 45, 300, ta, tb, pad=(2, 3, 4), bias=True,
                                       beta=1.0, ref=True)
            assert_close(got, want, tol)


@pytest.mark.parametrize("shape", [(37, 45, 29), (130, 200, 513), (25, 2100, 40)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fast_vs_reference(isa, shape):
    """The packed kernel against mi_sgemm_ref on identical inputs: both are
    within tol of float64, so they differ by at most 2 * tol."""
    M, N, K = shape
    res = []
    for ref in (False, True):
        got, want, tol = run_sgemm(np.random.default_rng(7), M, N, K, trans_b=True, bias=True,
                                   beta=1.0, ref=ref)
        res.append(got)
    err = np.abs(res[0].astype(np.float64) - res[1])
    assert (err <= 2 * tol).all(), err.max()


@pytest.mark.parametrize("shape", [(130, 200, 513), (25, 2100, 40), (300, 77, 600), (12, 5, 700),
                                   (2, 3000, 100)],
                         ids=lambda s: "x".join(map(str, s)))
def test_threads_bitwise_identical(isa, threads, shape, rng):
    """1 and 2 threads give the same bits (K is never split across threads)."""
    M, N, K = shape
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((N, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    out = []
    for n in (1, 2):
        _core.set_num_threads(n)
        out.append(ops.matmul(a, b, bias=bias, trans_b=True))
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("extra", [1, 4, 5, 8, 9, 11])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 1)])
def test_partial_row_panel_same_bits(isa, extra, trans_a, trans_b, rng):
    """The rows of a partial last row panel (M = 24 + extra: AVX-512 runs its
    4- or 8-row kernel, the others a padded copy) get the same bits as when the
    same rows sit in full panels (M = 36), with bias and beta = 1."""
    N, K = 70, 300
    a = rng.standard_normal((36, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    c0 = rng.standard_normal((36, N)).astype(np.float32)
    out = []
    for M in (36, 24 + extra):
        a_op = np.ascontiguousarray(a[:M].T) if trans_a else a[:M]
        c = c0[:M].copy()
        _testing._sgemm(a_op, b, c, M, N, K, M if trans_a else K, K if trans_b else N, N,
                     trans_a=bool(trans_a), trans_b=bool(trans_b), bias=bias, beta=1.0)
        out.append(c)
    np.testing.assert_array_equal(out[1], out[0][:24 + extra])


def test_batched(isa, threads, rng):
    """mi_sgemm_strided_batched, including a broadcast operand (stride 0),
    for 1 and 2 threads (batch < threads and batch > threads)."""
    M, N, K = 33, 70, 130
    for batch in (1, 3):
        a = rng.standard_normal((batch, M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)     # shared: stride_b = 0
        bias = rng.standard_normal(N).astype(np.float32)
        want = a.astype(np.float64) @ b.astype(np.float64) + bias
        scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)) + np.abs(bias)
        tol = 2.0 * np.sqrt(K) * EPS32 * scale
        res = []
        for n in (1, 2):
            _core.set_num_threads(n)
            c = np.full((batch, M, N), np.nan, np.float32)
            _testing._sgemm(a, b, c, M, N, K, K, N, N, bias=bias, batch=batch,
                         stride_a=M * K, stride_b=0, stride_c=M * N)
            assert (np.abs(c - want) <= tol).all()
            res.append(c)
        np.testing.assert_array_equal(res[0], res[1])


def test_nan_propagates(isa, rng):
    """A NaN in A poisons its row of C only; a NaN in B its column only."""
    M, N, K = 40, 70, 300
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    a[5, 17] = np.nan
    b[200, 33] = np.nan
    c = ops.matmul(a, b)
    nan = np.isnan(c)
    expect = np.zeros((M, N), bool)
    expect[5, :] = True
    expect[:, 33] = True
    np.testing.assert_array_equal(nan, expect)


# ---- ops.matmul (the public wrapper) --------------------------------------

def matmul_tol(a, b, bias=None):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    scale = np.abs(a64) @ np.abs(b64) + (0 if bias is None else np.abs(bias))
    return 2.0 * np.sqrt(a.shape[-1]) * EPS32 * scale


def test_matmul_shapes(isa, rng):
    """2-D, N-D @ 2-D, batched N-D @ N-D, trans_b, bias and out= against NumPy."""
    a = rng.standard_normal((2, 3, 50, 70)).astype(np.float32)
    w = rng.standard_normal((70, 90)).astype(np.float32)
    bias = rng.standard_normal(90).astype(np.float32)
    c = ops.matmul(a, w, bias=bias)
    assert c.shape == (2, 3, 50, 90) and c.dtype == np.float32
    assert (np.abs(c - (a.astype(np.float64) @ w + bias)) <= matmul_tol(a, w, bias)).all()
    c2 = ops.matmul(a, np.ascontiguousarray(w.T), bias=bias, trans_b=True)
    np.testing.assert_array_equal(c, c2)    # same packed values, same sums
    bb = rng.standard_normal((2, 3, 70, 20)).astype(np.float32)
    c3 = ops.matmul(a, bb)
    assert (np.abs(c3 - a.astype(np.float64) @ bb) <= matmul_tol(a, bb)).all()
    out = np.empty((2, 3, 50, 90), np.float32)
    r = ops.matmul(a, w, bias=bias, out=out)
    assert r is out
    np.testing.assert_array_equal(out, c)
    # float64 input is converted once; 1-D a is one row
    v = rng.standard_normal(70)
    cv = ops.matmul(v, w)
    assert cv.shape == (90,)
    assert (np.abs(cv - v.astype(np.float32).astype(np.float64) @ w)
            <= matmul_tol(v.astype(np.float32)[None], w)[0]).all()


def test_matmul_gpt2_shape_vs_numpy(rng):
    """A GPT-2 small MLP-in product through the public wrapper, against float64."""
    a = rng.standard_normal((128, 768)).astype(np.float32)
    w = (rng.standard_normal((768, 3072)) * 0.02).astype(np.float32)
    bias = rng.standard_normal(3072).astype(np.float32)
    c = ops.matmul(a, w, bias=bias)
    assert (np.abs(c - (a.astype(np.float64) @ w + bias)) <= matmul_tol(a, w, bias)).all()


def test_matmul_empty(rng):
    """Zero-size dims give what NumPy gives."""
    z = ops.matmul(np.zeros((0, 5), np.float32), np.ones((5, 3), np.float32))
    assert z.shape == (0, 3)
    k0 = ops.matmul(np.zeros((4, 0), np.float32), np.ones((0, 3), np.float32),
                    bias=np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(k0, np.tile(np.arange(3, dtype=np.float32), (4, 1)))


def test_matmul_errors():
    """Bad input raises with a message naming the argument and the shapes."""
    a = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"inner dimensions 5 and 6 differ"):
        ops.matmul(a, np.ones((6, 3), np.float32))
    with pytest.raises(ValueError, match=r"b \(trans_b\) has shape \(3, 6\)"):
        ops.matmul(a, np.ones((3, 6), np.float32), trans_b=True)
    with pytest.raises(ValueError, match=r"b: expected 2 to 32 dimensions, got shape \(5,\)"):
        ops.matmul(a, np.ones(5, np.float32))
    with pytest.raises(TypeError, match=r"a: expected a floating-point array, got dtype int64"):
        ops.matmul(np.ones((4, 5), np.int64), np.ones((5, 3), np.float32))
    with pytest.raises(TypeError, match=r"b: expected a floating-point array, got dtype object"):
        ops.matmul(a, np.array([[1.0, None]] * 5, dtype=object))
    with pytest.raises(TypeError, match=r"a: expected a float array, got None"):
        ops.matmul(None, a)
    with pytest.raises(ValueError, match=r"bias: expected shape \(3,\), got \(4,\)"):
        ops.matmul(a, np.ones((5, 3), np.float32), bias=np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"batch dims differ"):
        ops.matmul(np.ones((2, 4, 5), np.float32), np.ones((3, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"needs a with the same batch dims"):
        ops.matmul(a, np.ones((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"out: has shape \(4, 4\)"):
        ops.matmul(a, np.ones((5, 3), np.float32), out=np.empty((4, 4), np.float32))
    with pytest.raises(TypeError, match=r"out: expected a writable C-contiguous float32"):
        ops.matmul(a, np.ones((5, 3), np.float32), out=np.empty((4, 3), np.float64))


def test_sgemm_entry_checks_buffers():
    """The raw test entry refuses leading dims and buffers that do not fit."""
    a = np.ones(20, np.float32)
    c = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match=r"a: leading dimension 3 is smaller than the row width 5"):
        _testing._sgemm(a, a, c, 4, 3, 5, 3, 3, 3)
    with pytest.raises(ValueError, match=r"b: needs 25 elements"):
        _testing._sgemm(a, a, c, 4, 5, 5, 5, 5, 5)
    with pytest.raises(ValueError, match=r"beta must be 0 or 1"):
        _testing._sgemm(a, a, c, 2, 2, 2, 2, 2, 2, beta=0.5)
    with pytest.raises(TypeError, match=r"c: expected a writable C-contiguous float32"):
        _testing._sgemm(a, a, c.astype(np.float64), 2, 2, 2, 2, 2, 2)


def test_fma_peak_is_plausible():
    """The probe returns a positive rate below a generous physical ceiling
    (64 flops/cycle/core at 6 GHz on every thread)."""
    g = _testing._fma_peak()
    assert 0.5 < g < 64 * 6.0 * max(1, _core.get_num_threads()) * 2


def test_concurrent_python_threads(rng):
    """Products from several Python threads at once (GIL released, per-thread
    packing buffers) give the same bits as one at a time."""
    import threading
    a = rng.standard_normal((4, 150, 300)).astype(np.float32)
    b = rng.standard_normal((300, 200)).astype(np.float32)
    want = [ops.matmul(x, b) for x in a]
    got = [None] * len(a)

    def work(i):
        for _ in range(3):
            got[i] = ops.matmul(a[i], b)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(a))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
