"""Backward kernels against torch float64 autograd.

Each kernel receives float32 inputs; the reference runs the same forward in
float64 torch and differentiates it. Gradients are sums of O(d) or O(T)
float32 products (with double row sums inside the kernels), so we compare at
rtol 1e-4 and an atol of 1e-5 relative to the gradient's scale: float32 has
~6e-8 relative rounding and the longest sums here have ~1000 terms.
"""
import numpy as np
import pytest
import torch

import mechinterp_c as mi
from mechinterp_c import _core, _testing, ops
from attention_reference import attention_torch


def t64(a, grad=True):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def close(got, want, rtol=1e-4, atol_rel=1e-5, atol=None):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    scale = max(np.abs(want).max(), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_rel * scale if atol is None else atol)


def norm_atol(dy, w, scale):
    """Absolute error scale of a norm's input gradient: dx is a difference of
    terms of size |dy w| / scale, so float32 cancellation leaves ~1e-6 of that
    (d = 1 rows have a true gradient of ~eps, far below it)."""
    g = np.abs(dy).max() * (np.abs(w).max() if w is not None else 1.0)
    return 1e-6 * g / scale.min()


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    n = mi.get_num_threads()
    yield
    mi.set_num_threads(n)


def both_threads(fn):
    """fn's results with 1 and with 2 threads (copied)."""
    mi.set_num_threads(1)
    a = [np.array(r, copy=True) for r in fn() if r is not None]
    mi.set_num_threads(2)
    b = [np.array(r, copy=True) for r in fn() if r is not None]
    return a, b


# ---- norms ------------------------------------------------------------------

@pytest.mark.parametrize("rows,d", [(1, 1), (1, 7), (7, 13), (5, 64), (3, 257)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_backward(rng, rows, d, affine):
    x = (rng.standard_normal((rows, d)) * 2 + 0.5).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32) if affine else None
    b = rng.standard_normal(d).astype(np.float32) if affine else None
    dy = rng.standard_normal((rows, d)).astype(np.float32)
    _, scale = ops.layer_norm(x, w, b, eps=1e-5, return_scale=True)
    dx, dw, db = _testing._layer_norm_backward(dy, x, scale, w, bias=affine)
    xt = t64(x)
    wt, bt = (t64(w), t64(b)) if affine else (None, None)
    y = torch.nn.functional.layer_norm(xt, (d,), wt, bt, eps=1e-5)
    y.backward(t64(dy, False))
    close(dx, xt.grad, atol=norm_atol(dy, w, scale))
    if affine:   # sums over rows of |dy| * O(1) terms
        close(dw, wt.grad, atol=1e-6 * np.abs(dy).sum(0).max())
        close(db, bt.grad, atol=1e-6 * np.abs(dy).sum(0).max())
    else:
        assert dw is None and db is None


def test_layer_norm_backward_accumulates(rng):
    x = rng.standard_normal((4, 9)).astype(np.float32)
    w = rng.standard_normal(9).astype(np.float32)
    dy = rng.standard_normal((4, 9)).astype(np.float32)
    _, scale = ops.layer_norm(x, w, w, return_scale=True)
    dx1, dw1, db1 = _testing._layer_norm_backward(dy, x, scale, w, bias=True)
    acc = [np.full((4, 9), 1.5, np.float32), np.full(9, -2.0, np.float32), np.ones(9, np.float32)]
    dx2, dw2, db2 = _testing._layer_norm_backward(dy, x, scale, w, bias=True, dx=acc[0], dw=acc[1],
                                               db=acc[2])
    assert dx2 is acc[0] and dw2 is acc[1]
    np.testing.assert_allclose(dx2, dx1 + 1.5, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dw2, dw1 - 2.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(db2, db1 + 1.0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows,d", [(1, 1), (7, 13), (5, 64), (3, 257)])
@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm_backward(rng, rows, d, weighted):
    x = (rng.standard_normal((rows, d)) * 2).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32) if weighted else None
    dy = rng.standard_normal((rows, d)).astype(np.float32)
    _, scale = ops.rms_norm(x, w, eps=1e-6, return_scale=True)
    dx, dw = _testing._rms_norm_backward(dy, x, scale, w)
    xt = t64(x)
    wt = t64(w) if weighted else None
    s = torch.sqrt((xt ** 2).mean(-1, keepdim=True) + 1e-6)
    y = xt / s * (wt if weighted else 1.0)
    y.backward(t64(dy, False))
    close(dx, xt.grad, atol=norm_atol(dy, w, scale))
    if weighted:
        close(dw, wt.grad, atol=1e-6 * np.abs(dy).sum(0).max())
    else:
        assert dw is None


def test_norm_backward_threads_bitwise(rng, threads):
    x = rng.standard_normal((300, 129)).astype(np.float32)
    w = rng.standard_normal(129).astype(np.float32)
    dy = rng.standard_normal((300, 129)).astype(np.float32)
    _, s = ops.layer_norm(x, w, w, return_scale=True)
    a, b = both_threads(lambda: _testing._layer_norm_backward(dy, x, s, w, bias=True))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    _, s = ops.rms_norm(x, w, return_scale=True)
    a, b = both_threads(lambda: _testing._rms_norm_backward(dy, x, s, w))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_norm_backward_errors(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    s = np.ones((3, 1), np.float32)
    with pytest.raises(ValueError, match=r"dy: expected shape \(3, 4\), got \(3, 5\)"):
        _testing._layer_norm_backward(np.ones((3, 5), np.float32), x, s)
    with pytest.raises(ValueError, match=r"scale: expected 3 elements \(one per row of x\), got shape \(2,\)"):
        _testing._rms_norm_backward(x, x, np.ones(2, np.float32))
    with pytest.raises(TypeError, match="dx: expected a writable C-contiguous float32 array"):
        _testing._layer_norm_backward(x, x, s, dx=np.zeros((3, 4)))


# ---- activations -------------------------------------------------------------

TORCH_ACT = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
    "silu": torch.nn.functional.silu,
}


@pytest.mark.parametrize("name", list(TORCH_ACT))
@pytest.mark.parametrize("n", [1, 7, 17, 1000])
def test_activation_backward(rng, name, n):
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    edge = np.array([0.5, -0.5, 12, -12, 40, -40, 100, -100, 1000, -1000], np.float32)
    x[: min(n, 10)] = edge[: min(n, 10)]
    dy = rng.standard_normal(n).astype(np.float32)
    dx = _testing._activation_backward(name, x, dy)
    xt = t64(x)
    TORCH_ACT[name](xt).backward(t64(dy, False))
    # derivative formulas evaluated in float32: ~1e-6 relative, atol for tiny tails
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_activation_backward_accumulates_and_nan(rng):
    x = np.array([np.nan, 1.0, -1.0], np.float32)
    dy = np.ones(3, np.float32)
    acc = np.full(3, 10.0, np.float32)
    for name in TORCH_ACT:
        out = _testing._activation_backward(name, x, dy, dx=acc.copy())
        assert np.isnan(out[0])
        xt = t64(x[1:])
        TORCH_ACT[name](xt).backward(t64(dy[1:], False))
        np.testing.assert_allclose(out[1:], 10.0 + xt.grad.numpy(), rtol=1e-6)


def test_activation_backward_threads_and_errors(rng, threads):
    x = rng.standard_normal(200001).astype(np.float32)
    a, b = both_threads(lambda: [_testing._activation_backward("gelu", x, x)])
    assert np.array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="name: expected 'relu', 'gelu', 'gelu_tanh' or 'silu', got 'tanh'"):
        _testing._activation_backward("tanh", x, x)


# ---- softmax -------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 17), (2, 3, 64)])
def test_softmax_backward(rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x[..., 0] = -np.inf                       # a masked key: no gradient
    if shape[-1] == 1:
        x[...] = rng.standard_normal(shape)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = ops.softmax(x)
    dx = _testing._softmax_backward(y, dy)
    xt = t64(np.where(np.isinf(x), -1e300, x.astype(np.float64)))
    torch.softmax(xt, -1).backward(t64(dy, False))
    close(dx, xt.grad)


def test_softmax_backward_all_masked_row_is_zero(rng):
    y = ops.softmax(np.full((2, 5), -np.inf, np.float32))
    dx = _testing._softmax_backward(y, rng.standard_normal((2, 5)).astype(np.float32))
    assert np.array_equal(dx, np.zeros((2, 5), np.float32))


# ---- attention -------------------------------------------------------------------

@pytest.mark.parametrize("B,T,H,D", [(1, 1, 1, 1), (2, 7, 3, 5), (1, 17, 2, 16), (2, 33, 1, 8)])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_backward(rng, B, T, H, D, causal):
    q, k, v, dz = (rng.standard_normal((B, T, H, D)).astype(np.float32) for _ in range(4))
    pad = None
    if B == 2:
        pad = np.ones((B, T), np.int64)
        pad[1, :2] = 0
    _, pattern = ops.attention(q, k, v, causal=causal, padding_mask=pad, return_pattern=True)
    dq, dk, dv = _testing._attention_backward(q, k, v, pattern, dz, causal=causal)
    qt, kt, vt = t64(q), t64(k), t64(v)
    attention_torch(qt, kt, vt, causal, pad)[0].backward(t64(dz, False))
    close(dq, qt.grad)
    close(dk, kt.grad)
    close(dv, vt.grad)


def test_attention_backward_fused_layout_and_accumulate(rng):
    B, T, H, D = 2, 9, 3, 4
    qkv = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    dz = rng.standard_normal((B, T, H, D)).astype(np.float32)
    q, k, v = (np.ascontiguousarray(qkv[:, :, i]) for i in range(3))
    _, pattern = ops.attention(q, k, v, causal=True, return_pattern=True)
    dq, dk, dv = _testing._attention_backward(q, k, v, pattern, dz)
    acc = np.full(qkv.shape, 0.25, np.float32)
    (dqkv,) = _testing._attention_backward(qkv, None, None, pattern, dz, dq=acc)
    assert dqkv is acc
    # same arithmetic in the same order: only the +0.25 start differs
    np.testing.assert_allclose(dqkv, np.stack([dq, dk, dv], axis=2) + 0.25, rtol=1e-6, atol=1e-6)


def test_attention_backward_threads_bitwise(rng, threads):
    q, k, v, dz = (rng.standard_normal((2, 30, 3, 8)).astype(np.float32) for _ in range(4))
    _, p = ops.attention(q, k, v, causal=False, return_pattern=True)
    a, b = both_threads(lambda: _testing._attention_backward(q, k, v, p, dz, causal=False))
    assert all(np.array_equal(u, w) for u, w in zip(a, b))


def test_attention_backward_errors(rng):
    q = rng.standard_normal((1, 4, 2, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"pattern: expected shape \(1, 2, 4, 4\), got \(1, 2, 4, 3\)"):
        _testing._attention_backward(q, q, q, np.zeros((1, 2, 4, 3), np.float32), q)
    with pytest.raises(ValueError, match=r"q: fused qkv must be \[batch, pos, 3, head, d_head\]"):
        _testing._attention_backward(np.zeros((1, 4, 2, 2, 3), np.float32), None, None,
                                  np.zeros((1, 2, 4, 4), np.float32), q)


# ---- cross-entropy ---------------------------------------------------------------

@pytest.mark.parametrize("rows,vocab", [(1, 1), (1, 7), (9, 13), (16, 300), (5, 1025)])
def test_cross_entropy(rng, rows, vocab):
    logits = (rng.standard_normal((rows, vocab)) * 4).astype(np.float32)
    targets = rng.integers(0, vocab, rows)
    if rows > 2:
        targets[[0, 2]] = -100
    mean, losses, dlogits = _testing._cross_entropy(logits, targets)
    lt = t64(logits)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(targets), ignore_index=-100)
    ref.backward()
    ref_rows = torch.nn.functional.cross_entropy(lt.detach(), torch.tensor(targets),
                                                 ignore_index=-100, reduction="none")
    # logsumexp in double, results rounded to float32
    np.testing.assert_allclose(mean, ref.item(), rtol=1e-6)
    np.testing.assert_allclose(losses, ref_rows.numpy(), rtol=1e-6, atol=1e-6)
    close(dlogits, lt.grad, rtol=1e-5, atol_rel=1e-6)


def test_cross_entropy_all_ignored_and_accumulate(rng):
    logits = rng.standard_normal((3, 5)).astype(np.float32)
    mean, losses, d = _testing._cross_entropy(logits, np.full(3, -100))
    assert np.isnan(mean) and np.array_equal(losses, np.zeros(3)) and not d.any()
    acc = np.ones((3, 5), np.float32)
    t = np.array([1, 2, 3])
    _, _, d1 = _testing._cross_entropy(logits, t)
    _, _, d2 = _testing._cross_entropy(logits, t, dlogits=acc)
    assert d2 is acc
    np.testing.assert_allclose(d2, d1 + 1, rtol=1e-6)


def test_cross_entropy_threads_and_errors(rng, threads):
    logits = rng.standard_normal((40, 1000)).astype(np.float32)
    t = rng.integers(0, 1000, 40)
    a, b = both_threads(lambda: _testing._cross_entropy(logits, t)[1:])
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    with pytest.raises(IndexError, match=r"targets\[1\] = 7 is outside \[0, 5\) and is not ignore_index \(-100\)"):
        _testing._cross_entropy(np.zeros((2, 5), np.float32), np.array([0, 7]))
    with pytest.raises(TypeError, match="targets: expected an integer array, got dtype float64"):
        _testing._cross_entropy(np.zeros((2, 5), np.float32), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"targets: expected shape \(2,\) to match logits"):
        _testing._cross_entropy(np.zeros((2, 5), np.float32), np.array([0, 1, 2]))


# ---- embedding ---------------------------------------------------------------------

@pytest.mark.parametrize("vocab,d", [(1, 1), (7, 13), (300, 64), (50, 33)])
def test_embedding_forward_backward(rng, vocab, d):
    W = rng.standard_normal((vocab, d)).astype(np.float32)
    tokens = rng.integers(0, vocab, (3, 11))
    tokens[0, :4] = 0                             # repeated ids sum
    np.testing.assert_array_equal(_testing._embedding(W, tokens), W[tokens])
    dout = rng.standard_normal((3, 11, d)).astype(np.float32)
    dW = _testing._embedding_backward(dout, tokens, vocab)
    Wt = t64(W)
    torch.nn.functional.embedding(torch.tensor(tokens), Wt).backward(t64(dout, False))
    # at most 33 float32 additions per entry
    close(dW, Wt.grad, rtol=1e-5, atol_rel=1e-6)


def test_embedding_backward_threads_accumulate_errors(rng, threads):
    tokens = rng.integers(0, 20, 5000)
    dout = rng.standard_normal((5000, 48)).astype(np.float32)
    a, b = both_threads(lambda: [_testing._embedding_backward(dout, tokens, 20)])
    assert np.array_equal(a[0], b[0])
    acc = np.ones((20, 48), np.float32)
    assert _testing._embedding_backward(dout[:3], tokens[:3], 20, dW=acc) is acc
    with pytest.raises(IndexError, match=r"embedding backward: token id 20 at position 2 is outside \[0, 20\)"):
        _testing._embedding_backward(dout[:3], np.array([1, 2, 20]), 20)
    with pytest.raises(IndexError, match=r"embedding: token id -1 at position 0 is outside \[0, 20\)"):
        _testing._embedding(np.zeros((20, 4), np.float32), np.array([-1]))
    with pytest.raises(ValueError, match=r"dout: expected shape tokens.shape \+ \(d,\)"):
        _testing._embedding_backward(dout[:3], tokens[:4], 20)


def test_cross_entropy_fast_matches_reference(rng):
    logits = (rng.standard_normal((7, 50257)) * 3).astype(np.float32)   # GPT-2 vocab
    logits[0, 123] = 30.0                                                 # a confident row
    t = rng.integers(0, 50257, 7)
    t[0] = 123
    t[3] = -100
    try:
        _core.force_isa("scalar")
        ref = _testing._cross_entropy(logits, t)
    finally:
        _core.force_isa("best")
    fast = _testing._cross_entropy(logits, t)
    # float exps (~2 ulp) summed in double: loss within ~1e-7 absolute
    np.testing.assert_allclose(fast[0], ref[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast[1], ref[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast[2], ref[2], rtol=1e-5, atol=1e-12)
    lt = t64(logits)
    torch.nn.functional.cross_entropy(lt, torch.tensor(t), ignore_index=-100).backward()
    close(fast[2], lt.grad, rtol=1e-5, atol_rel=1e-6)


def test_cross_entropy_nan_row(rng):
    logits = rng.standard_normal((3, 40)).astype(np.float32)
    logits[1, 5] = np.nan
    mean, losses, d = _testing._cross_entropy(logits, np.array([1, 2, 3]))
    assert np.isnan(mean) and np.isnan(losses[1]) and np.isfinite(losses[[0, 2]]).all()
    assert np.isnan(d[1]).all() and np.isfinite(d[[0, 2]]).all()


@pytest.mark.parametrize("name", list(TORCH_ACT))
def test_activation_backward_fast_matches_reference(rng, name):
    x = (rng.standard_normal(4099) * 5).astype(np.float32)
    x[:8] = [0.0, 1e-20, -1e-20, 12, -12, 40, -40, np.nan]
    dy = rng.standard_normal(4099).astype(np.float32)
    try:
        _core.force_isa("scalar")
        ref = _testing._activation_backward(name, x, dy)
    finally:
        _core.force_isa("best")
    fast = _testing._activation_backward(name, x, dy)
    assert np.isnan(fast[7]) and np.isnan(ref[7])
    # both are within ~6e-7 * |dy| of the float64 derivative (checked against torch in
    # test_activation_backward); the scalar gelu_tanh loses that much where 1 + tanh
    # and 1 - t^2 cancel, the vector path uses sigmoid forms that do not
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=2e-6 * np.abs(dy).max())


@pytest.mark.parametrize("T,D", [(1, 1), (7, 5), (50, 64), (70, 80), (33, 130)])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_backward_fast_matches_reference(rng, T, D, causal):
    """The AVX-512 per-head loops (attention_backward_avx512.c) against the portable
    path (four mi_sgemm products per head, run at the scalar ISA), with key padding:
    sizes cover the 16-lane tails, more than 64 keys and d_head past 64 and 128."""
    B, H = 2, 2
    q, k, v, dz = (rng.standard_normal((B, T, H, D)).astype(np.float32) for _ in range(4))
    pad = np.ones((B, T), np.int64)
    pad[1, : T // 3] = 0
    _, p = ops.attention(q, k, v, causal=causal, padding_mask=pad, return_pattern=True)
    acc = [np.full(q.shape, 0.5, np.float32) for _ in range(3)]
    try:
        _core.force_isa("scalar")
        ref = _testing._attention_backward(q, k, v, p, dz, causal=causal)
    finally:
        _core.force_isa("best")
    fast = _testing._attention_backward(q, k, v, p, dz, causal=causal)
    accd = _testing._attention_backward(q, k, v, p, dz, causal=causal, dq=acc[0], dk=acc[1], dv=acc[2])
    for f, r, a in zip(fast, ref, accd):
        # float32 sums in another order: ~1e-6 of the gradient's scale
        np.testing.assert_allclose(f, r, rtol=1e-5, atol=1e-5 * np.abs(r).max() + 1e-30)
        np.testing.assert_allclose(a, r + 0.5, rtol=1e-5, atol=1e-5 * np.abs(r).max() + 1e-6)


@pytest.mark.parametrize("rows,cols", [(1, 1), (63, 5), (65, 256), (1000, 300)])
def test_relu_backward_bias_matches_reference(rng, rows, cols, threads):
    """The MLP's fused relu step (dpre and the b_in gradient in one pass) against the
    plain kernels it replaces: mi_activation_backward into zeros (bitwise: the same
    select per element) and a float64 column sum (1e-6 relative: double partials)."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[0, 0] = np.nan
    if cols > 1:
        x[0, 1] = 0.0                       # relu'(0) = 0, as torch
    dy = rng.standard_normal((rows, cols)).astype(np.float32)
    want = _testing._activation_backward("relu", x, dy)
    db = np.full(cols, 0.25, np.float32)

    def run():
        g, d = dy.copy(), db.copy()
        _testing._relu_backward_bias(x, g, d)
        return g, d
    both = both_threads(run)
    got, dbg = both[0]
    np.testing.assert_array_equal(got, want)                      # NaN where x is NaN
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(both[0], both[1]))   # any thread count
    ref = 0.25 + np.nansum(np.where(np.isnan(x), np.nan, want.astype(np.float64)), axis=0)
    ref[0] = np.nan                                               # the NaN column stays NaN
    np.testing.assert_allclose(dbg, ref, rtol=1e-6, atol=1e-6)
