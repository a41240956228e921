"""Forward kernels (norms, activations, softmax, attention) against float64 references.

Tolerances: every kernel computes in float32 with row sums in double, so the
error against a float64 reference is a few float32 ulps of the output scale:
we use rtol 1e-5 / atol 1e-6 for elementwise maps (libm-grade float32 exp/erf/
tanh are within ~2 ulp = 2.4e-7 relative) and atol 2e-5 for normalised
outputs of O(1) magnitude built from O(d) float32 operations.
"""
import numpy as np
import pytest
import torch

import mechinterp_c as mi
from mechinterp_c import _core, ops
from attention_reference import attention_torch

ODD_SHAPES = [(1, 1), (1, 7), (7, 13), (3, 16), (5, 17), (2, 3, 33), (4, 768)]


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    n = mi.get_num_threads()
    yield
    mi.set_num_threads(n)


@pytest.fixture
def isa():
    """Restore the best ISA after a test that forces a lower one."""
    yield
    _core.force_isa("best")


def run_threads(fn, n):
    mi.set_num_threads(n)
    return np.array(fn(), copy=True)


# ---- norms ----------------------------------------------------------------

def ln_ref(x, w=None, b=None, eps=1e-5):
    x = x.astype(np.float64)
    xc = x - x.mean(-1, keepdims=True)
    scale = np.sqrt((xc ** 2).mean(-1, keepdims=True) + eps)
    y = xc / scale
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y, scale


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_float64(rng, shape, affine):
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    d = shape[-1]
    w = rng.standard_normal(d).astype(np.float32) if affine else None
    b = rng.standard_normal(d).astype(np.float32) if affine else None
    y, scale = ops.layer_norm(x, w, b, eps=1e-5, return_scale=True)
    y_ref, s_ref = ln_ref(x, w, b)
    assert y.shape == x.shape and scale.shape == x.shape[:-1] + (1,)
    # |w| up to ~3 multiplies the O(1) normalised error
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-5 * (3 if affine else 1))
    np.testing.assert_allclose(scale, s_ref, rtol=1e-6)


def test_layer_norm_matches_torch_and_transformer_lens_scale(rng):
    x = rng.standard_normal((6, 64)).astype(np.float32) * 5
    w = rng.standard_normal(64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    ref = torch.nn.functional.layer_norm(torch.tensor(x, dtype=torch.float64), (64,),
                                         torch.tensor(w, dtype=torch.float64),
                                         torch.tensor(b, dtype=torch.float64), eps=1e-5)
    np.testing.assert_allclose(ops.layer_norm(x, w, b), ref.numpy(), rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm_matches_float64(rng, shape, weighted):
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32) if weighted else None
    y, scale = ops.rms_norm(x, w, eps=1e-6, return_scale=True)
    xd = x.astype(np.float64)
    s_ref = np.sqrt((xd ** 2).mean(-1, keepdims=True) + 1e-6)
    y_ref = xd / s_ref * (w if weighted else 1.0)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-5 * (3 if weighted else 1))
    np.testing.assert_allclose(scale, s_ref, rtol=1e-6)


def test_norm_nan_row_stays_local(rng):
    x = rng.standard_normal((3, 9)).astype(np.float32)
    x[1, 4] = np.nan
    y = ops.layer_norm(x)
    assert np.isnan(y[1]).all()
    assert np.isfinite(y[[0, 2]]).all()
    y = ops.rms_norm(x)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()


def test_norm_threads_bitwise(rng, threads):
    x = rng.standard_normal((300, 257)).astype(np.float32)   # > parallel threshold
    w = rng.standard_normal(257).astype(np.float32)
    for fn in (lambda: ops.layer_norm(x, w, w), lambda: ops.rms_norm(x, w)):
        assert np.array_equal(run_threads(fn, 1), run_threads(fn, 2))


def test_norm_errors(rng):
    x = rng.standard_normal((2, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"w: expected shape \(5,\) to match x's last dim, got \(4,\)"):
        ops.layer_norm(x, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="x: expected a floating-point array, got dtype int64"):
        ops.rms_norm(np.ones((2, 3), np.int64))


# ---- activations ------------------------------------------------------------

ACTS = {
    "gelu": (lambda x: ops.gelu(x), lambda t: torch.nn.functional.gelu(t)),
    "gelu_tanh": (lambda x: ops.gelu(x, approximate="tanh"),
                  lambda t: torch.nn.functional.gelu(t, approximate="tanh")),
    "relu": (ops.relu, torch.relu),
    "silu": (ops.silu, torch.nn.functional.silu),
}


def act_input(rng, n):
    x = rng.standard_normal(n).astype(np.float32) * 4
    edge = np.array([0.0, -0.0, 1e-30, -1e-30, 5.5, -5.5, 10, -10, 20, -20, 80, -80, 100, -100],
                    np.float32)
    x[: min(n, len(edge))] = edge[: min(n, len(edge))]
    return x


@pytest.mark.parametrize("name", list(ACTS))
@pytest.mark.parametrize("n", [1, 7, 16, 17, 1000, 70001])
def test_activation_matches_torch_float64(rng, name, n):
    ours, ref = ACTS[name]
    x = act_input(rng, n)
    want = ref(torch.tensor(x, dtype=torch.float64)).numpy()
    # 1e-6 relative covers float32 rounding of erf/tanh/exp (~2 ulp); atol for
    # values near 0 where relative error is meaningless (gelu(-5.5) ~ 1e-7)
    np.testing.assert_allclose(ops_call(ours, x), want, rtol=2e-6, atol=1e-7)


def ops_call(fn, x):
    y = fn(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    return y


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_nan_and_inf(name):
    ours, ref = ACTS[name]
    x = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    y = ours(x)
    want = ref(torch.tensor(x, dtype=torch.float64)).numpy()
    assert np.isnan(y[0])
    np.testing.assert_allclose(y[1:], want[1:], rtol=1e-6)


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_fast_matches_reference(rng, name, isa):
    ours, _ = ACTS[name]
    x = act_input(rng, 4099)
    _core.force_isa("scalar")
    ref = ours(x)
    _core.force_isa("best")
    # the vectorised polynomials are within a few ulp of libm
    np.testing.assert_allclose(ours(x), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(ACTS))
def test_activation_threads_bitwise(rng, name, threads):
    ours, _ = ACTS[name]
    x = act_input(rng, 200003)
    assert np.array_equal(run_threads(lambda: ours(x), 1), run_threads(lambda: ours(x), 2))


def test_activation_errors():
    with pytest.raises(ValueError, match="gelu: approximate must be 'none' or 'tanh', got 'erf'"):
        ops.gelu(np.ones(3, np.float32), approximate="erf")
    with pytest.raises(TypeError, match="x: expected a floating-point array, got dtype bool"):
        ops.silu(np.ones(3, bool))


# ---- softmax ---------------------------------------------------------------

def softmax_ref(x, mask=None, axis=-1):
    x = np.array(x, np.float64)
    if mask is not None:
        x = np.where(mask, x, -np.inf)
    mx = np.max(x, axis=axis, keepdims=True)
    allmasked = np.isneginf(mx)
    e = np.exp(x - np.where(allmasked, 0, mx))
    s = e.sum(axis=axis, keepdims=True)
    return np.where(allmasked, 0.0, e / np.where(s == 0, 1, s))


@pytest.mark.parametrize("shape", ODD_SHAPES + [(3, 1025)])
def test_softmax_matches_float64(rng, shape):
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    # probabilities in [0, 1]: absolute error ~ a few float32 ulps of 1
    np.testing.assert_allclose(ops.softmax(x), softmax_ref(x), rtol=1e-5, atol=1e-7)


def test_softmax_matches_torch_on_axis(rng):
    x = rng.standard_normal((4, 6, 5)).astype(np.float32)
    for axis in (0, 1, -1, -2):
        want = torch.softmax(torch.tensor(x, dtype=torch.float64), dim=axis).numpy()
        got = ops.softmax(x, axis=axis)
        assert got.shape == x.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_softmax_mask_broadcast_and_all_masked_rows(rng):
    x = rng.standard_normal((2, 5, 5)).astype(np.float32)
    causal = np.tril(np.ones((5, 5), bool))
    np.testing.assert_allclose(ops.softmax(x, mask=causal), softmax_ref(x, causal),
                               rtol=1e-5, atol=1e-7)
    mask = np.ones((2, 1, 5), bool)
    mask[1, 0, :] = False            # every key of batch 1 masked -> zeros
    y = ops.softmax(x, mask=mask)
    assert np.array_equal(y[1], np.zeros((5, 5), np.float32))
    np.testing.assert_allclose(y[0], softmax_ref(x[0]), rtol=1e-5, atol=1e-7)
    # -inf entries (TransformerLens's masked scores) behave like the mask
    xi = np.where(causal, x, -np.inf).astype(np.float32)
    np.testing.assert_array_equal(ops.softmax(xi), ops.softmax(x, mask=causal))
    assert np.array_equal(ops.softmax(np.full((2, 3), -np.inf, np.float32)), np.zeros((2, 3)))


def test_softmax_mask_on_other_axis(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    m = np.array([True, False, True, True])[:, None]
    np.testing.assert_allclose(ops.softmax(x, axis=0, mask=m), softmax_ref(x, m, axis=0),
                               rtol=1e-5, atol=1e-7)


def test_softmax_nan_row(rng):
    x = rng.standard_normal((3, 20)).astype(np.float32)
    x[1, 17] = np.nan
    y = ops.softmax(x)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()
    # a NaN under the mask does not count
    m = np.ones((3, 20), bool)
    m[1, 17] = False
    assert np.isfinite(ops.softmax(x, mask=m)).all()


@pytest.mark.parametrize("cols", [1, 7, 16, 17, 64, 1000])
def test_softmax_fast_matches_reference(rng, cols, isa):
    x = (rng.standard_normal((9, cols)) * 8).astype(np.float32)
    m = rng.random((9, cols)) > 0.3
    _core.force_isa("scalar")
    ref, ref_m = ops.softmax(x), ops.softmax(x, mask=m)
    _core.force_isa("best")
    np.testing.assert_allclose(ops.softmax(x), ref, rtol=2e-6, atol=1e-8)
    np.testing.assert_allclose(ops.softmax(x, mask=m), ref_m, rtol=2e-6, atol=1e-8)


def test_softmax_threads_bitwise(rng, threads):
    x = rng.standard_normal((300, 301)).astype(np.float32)
    assert np.array_equal(run_threads(lambda: ops.softmax(x), 1),
                          run_threads(lambda: ops.softmax(x), 2))


def test_softmax_errors(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="mask: expected a boolean array"):
        ops.softmax(x, mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"mask: shape \(4,\) does not broadcast to x's shape \(2, 3\)"):
        ops.softmax(x, mask=np.ones(4, bool))
    with pytest.raises(ValueError, match=r"axis: 2 is out of range for x of shape \(2, 3\)"):
        ops.softmax(x, axis=2)
    with pytest.raises(TypeError, match="x: expected a floating-point array, got dtype int64"):
        ops.softmax(np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"mask: has shape \(3,\), expected x's shape \(2, 3\)"):
        _core.softmax(x, np.ones(3, bool))


# ---- attention -------------------------------------------------------------

def attention_ref(q, k, v, causal, pad=None):
    """float64 torch, as TransformerLens: scores/sqrt(d), -inf masks, softmax, nan -> 0."""
    z, pattern = attention_torch(*(torch.tensor(a, dtype=torch.float64) for a in (q, k, v)),
                                 causal, pad)
    return z.numpy(), pattern.numpy()


@pytest.mark.parametrize("B,T,H,D", [(1, 1, 1, 1), (2, 7, 3, 5), (1, 17, 2, 16), (3, 33, 4, 8)])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_torch_float64(rng, B, T, H, D, causal):
    q, k, v = (rng.standard_normal((B, T, H, D)).astype(np.float32) for _ in range(3))
    z, pattern = ops.attention(q, k, v, causal=causal, return_pattern=True)
    z_ref, p_ref = attention_ref(q, k, v, causal)
    assert z.shape == (B, T, H, D) and pattern.shape == (B, H, T, T)
    # D-term float32 dot products scaled into softmax: a few ulp of O(1)
    np.testing.assert_allclose(pattern, p_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=5e-6)
    if causal:
        assert (pattern[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0).all()


@pytest.mark.parametrize("causal", [True, False])
def test_attention_padding_mask(rng, causal):
    B, T, H, D = 3, 6, 2, 4
    q, k, v = (rng.standard_normal((B, T, H, D)).astype(np.float32) for _ in range(3))
    pad = np.ones((B, T), np.int64)
    pad[0, :2] = 0      # left padding: causal queries 0,1 see no key -> zero rows
    pad[1, 4:] = 0      # right padding
    z, pattern = ops.attention(q, k, v, causal=causal, padding_mask=pad, return_pattern=True)
    z_ref, p_ref = attention_ref(q, k, v, causal, pad)
    np.testing.assert_allclose(pattern, p_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=5e-6)
    assert (pattern[0, :, :, :2] == 0).all()
    if causal:
        assert (pattern[0, :, :2, :] == 0).all() and (z[0, :2] == 0).all()
    # bool mask gives the same
    z2 = ops.attention(q, k, v, causal=causal, padding_mask=pad.astype(bool))
    np.testing.assert_array_equal(z, z2)


def test_attention_nan_passes_through(rng):
    q, k, v = (rng.standard_normal((1, 4, 1, 3)).astype(np.float32) for _ in range(3))
    v[0, 2, 0, 1] = np.nan
    z = ops.attention(q, k, v, causal=True)
    z_ref, _ = attention_ref(q, k, v, True)
    # as torch's pattern @ v, 0 * NaN = NaN reaches every query through column 1
    np.testing.assert_array_equal(np.isnan(z), np.isnan(z_ref))
    assert np.isnan(z[0, 2:, 0, 1]).all() and np.isfinite(z[0, :, 0, [0, 2]]).all()


def test_attention_threads_bitwise(rng, threads):
    q, k, v = (rng.standard_normal((2, 40, 3, 16)).astype(np.float32) for _ in range(3))
    f = lambda: ops.attention(q, k, v, causal=True, return_pattern=True)[0]
    assert np.array_equal(run_threads(f, 1), run_threads(f, 2))


def test_attention_errors(rng):
    q = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"k: expected shape \(2, 5, 3, 4\), got \(2, 5, 3, 3\)"):
        ops.attention(q, q[..., :3], q)
    with pytest.raises(ValueError, match=r"q: expected 4 dimensions, got shape \(5, 3, 4\)"):
        ops.attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match=r"padding_mask: expected shape \(2, 5\) .*got \(2, 4\)"):
        ops.attention(q, q, q, padding_mask=np.ones((2, 4)))
    with pytest.raises(TypeError, match="padding_mask: expected a bool, integer or float array"):
        ops.attention(q, q, q, padding_mask=np.array([["a"] * 5] * 2))


def ulp_error(got, want):
    """|got - want| in float32 ulps of want (want in float64)."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


@pytest.mark.parametrize("isa_name", ["best"])
def test_fast_gelu_and_silu_ulp_accuracy(isa_name, isa):
    from scipy.special import erfc
    _core.force_isa(isa_name)
    x = np.linspace(-20, 20, 200001).astype(np.float32)
    xd = x.astype(np.float64)
    gelu_want = 0.5 * xd * erfc(-xd / np.sqrt(2))        # no cancellation in the tail
    m = np.abs(gelu_want) > 1e-30                         # ulps of denormals are meaningless
    # the AVX-512 erf/erfc polynomials measured 7.2 ulp at worst; the scalar erff
    # path is only accurate in absolute terms in the negative tail (1 + erf cancels)
    if _core.cpu_isa() == "avx512":
        assert ulp_error(ops.gelu(x), gelu_want)[m].max() <= 8
    with np.errstate(over="ignore"):
        silu_want = xd / (1 + np.exp(-xd))
    assert ulp_error(ops.silu(x), silu_want)[np.abs(silu_want) > 1e-30].max() <= 4


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_norm_fast_matches_reference(rng, shape, isa):
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    _core.force_isa("scalar")
    ref = [ops.layer_norm(x, w, w, return_scale=True), ops.layer_norm(x, return_scale=True),
           ops.rms_norm(x, w, return_scale=True)]
    _core.force_isa("best")
    fast = [ops.layer_norm(x, w, w, return_scale=True), ops.layer_norm(x, return_scale=True),
            ops.rms_norm(x, w, return_scale=True)]
    # double sums in another order: the mean/scale may differ in the last float bit
    for (y0, s0), (y1, s1) in zip(ref, fast):
        np.testing.assert_allclose(s1, s0, rtol=2e-7)
        np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_fused_qkv_layout(rng, causal):
    """The fused [batch, pos, 3, head, d_head] buffer (HF c_attn output) is read in place."""
    B, T, H, D = 2, 9, 3, 5
    c_attn = rng.standard_normal((B, T, 3 * H * D)).astype(np.float32)
    qkv = c_attn.reshape(B, T, 3, H, D)
    pad = np.ones((B, T))
    pad[1, :3] = 0
    z, p = ops.attention(qkv, causal=causal, padding_mask=pad, return_pattern=True)
    q, k, v = (np.ascontiguousarray(qkv[:, :, i]) for i in range(3))
    z2, p2 = ops.attention(q, k, v, causal=causal, padding_mask=pad, return_pattern=True)
    # same arithmetic on the same numbers, only read through other strides
    np.testing.assert_array_equal(z, z2)
    np.testing.assert_array_equal(p, p2)
    z_ref, _ = attention_ref(q, k, v, causal, pad)
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=5e-6)


def test_attention_fused_errors(rng):
    q = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="k, v: give both"):
        ops.attention(q, q)
    with pytest.raises(ValueError, match=r"q: with k and v None, q must be the fused qkv"):
        ops.attention(q)
    with pytest.raises(ValueError, match=r"q: fused qkv must be \[batch, pos, 3, head, d_head\], got \(2, 5, 2, 3, 4\)"):
        ops.attention(np.zeros((2, 5, 2, 3, 4), np.float32))
