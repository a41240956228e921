"""Byte-swapped float input (dtype '>f4' on a little-endian machine, '<f4' on a
big-endian one) is converted to native order once, as NumPy would, never read
as if it were native.

Each entry point is called twice on the same values, once with native float32
and once with the byte-swapped copy; the results must be bitwise equal (the
conversion is exact and the kernels see the same floats, so no tolerance).
Arrays the C core writes into (``out=``, gradient accumulators, parameters
read in place) cannot be converted: a byte-swapped one is refused with a
TypeError naming the argument, and the model stays usable.
"""
import numpy as np
import pytest

import mechinterp_c as mi
from mechinterp_c import _core
from mechinterp_c.config import HookedTransformerConfig
from mechinterp_c.hooked_transformer import HookedTransformer

SWAPPED = np.dtype(np.float32).newbyteorder("S")


def swapped(x):
    """x (float32) as the same values in the non-native byte order."""
    y = np.asarray(x, dtype=np.float32).astype(SWAPPED)
    assert y.dtype.byteorder != "=" and not y.dtype.isnative
    assert np.array_equal(y, x)
    return y


@pytest.fixture
def x(rng):
    """A [2, 3, 8] float32 array with negative and positive values."""
    return rng.standard_normal((2, 3, 8)).astype(np.float32)


@pytest.mark.parametrize("fn", ["relu", "gelu", "silu"])
def test_elementwise(fn, x):
    f = getattr(mi.ops, fn)
    np.testing.assert_array_equal(f(swapped(x)), f(x))


def test_gelu_tanh(x):
    np.testing.assert_array_equal(mi.ops.gelu(swapped(x), approximate="tanh"),
                                  mi.ops.gelu(x, approximate="tanh"))


def test_matmul(rng, x):
    w = rng.standard_normal((8, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    want = mi.ops.matmul(x, w, b)
    np.testing.assert_array_equal(mi.ops.matmul(swapped(x), swapped(w), swapped(b)), want)
    np.testing.assert_array_equal(mi.ops.matmul(swapped(x), w.T.copy(), trans_b=True), mi.ops.matmul(x, w))


def test_softmax(x):
    mask = x > -0.5
    np.testing.assert_array_equal(mi.ops.softmax(swapped(x)), mi.ops.softmax(x))
    np.testing.assert_array_equal(mi.ops.softmax(swapped(x), mask=mask), mi.ops.softmax(x, mask=mask))
    np.testing.assert_array_equal(mi.ops.softmax(swapped(x), axis=1), mi.ops.softmax(x, axis=1))


def test_norms(rng, x):
    w = rng.standard_normal(8).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    for got, want in [
        (mi.ops.layer_norm(swapped(x), swapped(w), swapped(b), return_scale=True),
         mi.ops.layer_norm(x, w, b, return_scale=True)),
        (mi.ops.layer_norm(swapped(x)), mi.ops.layer_norm(x)),
        (mi.ops.rms_norm(swapped(x), swapped(w), return_scale=True),
         mi.ops.rms_norm(x, w, return_scale=True)),
    ]:
        for g, wnt in zip(got if isinstance(got, tuple) else (got,),
                          want if isinstance(want, tuple) else (want,)):
            np.testing.assert_array_equal(g, wnt)


def test_attention(rng):
    q, k, v = (rng.standard_normal((2, 5, 3, 4)).astype(np.float32) for _ in range(3))
    pm = np.ones((2, 5), np.float32)
    pm[1, :2] = 0
    want = mi.ops.attention(q, k, v, padding_mask=pm, return_pattern=True)
    got = mi.ops.attention(swapped(q), swapped(k), swapped(v), padding_mask=swapped(pm),
                           return_pattern=True)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    qkv = np.stack([q, k, v], axis=2)
    np.testing.assert_array_equal(mi.ops.attention(swapped(qkv)), mi.ops.attention(qkv))


def test_out_argument_must_be_native(rng, x):
    w = rng.standard_normal((8, 5)).astype(np.float32)
    out = np.empty((2, 3, 5), SWAPPED)
    with pytest.raises(TypeError, match="out: .*native byte order"):
        mi.ops.matmul(x, w, out=out)
    out = np.empty((2, 3, 5), np.float32)
    mi.ops.matmul(x, w, out=out)
    np.testing.assert_array_equal(out, mi.ops.matmul(x, w))


def _model():
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4,
                                  d_vocab=20, act_fn="gelu_new", seed=3)
    return HookedTransformer(cfg)


def test_residual_stream_with_start_at_layer(rng):
    m = _model()
    resid = rng.standard_normal((2, 6, 16)).astype(np.float32)
    for start in (0, 1):
        np.testing.assert_array_equal(m(swapped(resid), start_at_layer=start),
                                      m(resid, start_at_layer=start))
    logits, cache = m.run_with_cache(swapped(resid), start_at_layer=1)
    want, want_cache = m.run_with_cache(resid, start_at_layer=1)
    np.testing.assert_array_equal(logits, want)
    for k in want_cache.keys():
        np.testing.assert_array_equal(cache[k], want_cache[k])


def test_swapped_parameter_is_refused_and_model_stays_usable():
    m = _model()
    tokens = np.arange(12).reshape(2, 6) % 20
    want = m(tokens)
    name = "blocks.0.mlp.b_out"
    bad = swapped(np.zeros(m._core.params()[name].shape, np.float32))
    with pytest.raises(TypeError, match=rf"set_param\({name}\): .*native byte order"):
        m._core.set_param(name, bad)
    np.testing.assert_array_equal(m(tokens), want)


def test_reve_unfold(rng):
    eeg = rng.standard_normal((2, 3, 40)).astype(np.float32)
    np.testing.assert_array_equal(mi.reve.unfold(swapped(eeg), 10, 4), mi.reve.unfold(eeg, 10, 4))


def test_reve_fourier4d_and_time_patch(rng):
    pos = rng.standard_normal((2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(_core.reve_add_time_patch(swapped(pos), 4),
                                  _core.reve_add_time_patch(pos, 4))
    pos4 = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(_core.reve_fourier4d(swapped(pos4), 16, 4),
                                  _core.reve_fourier4d(pos4, 16, 4))


def test_swapped_integer_tokens_and_targets():
    m = _model()
    tokens = np.arange(12).reshape(2, 6) % 20
    swapped_tokens = tokens.astype(np.dtype(np.int64).newbyteorder("S"))
    np.testing.assert_array_equal(m(swapped_tokens), m(tokens))
    grads = _core.grad_blob(m._core)
    want = _core.loss_backward(m._core, tokens, tokens, grads)
    assert _core.loss_backward(m._core, swapped_tokens, swapped_tokens, _core.grad_blob(m._core)) == want


def test_accumulator_state_and_inputs_refuse_swapped_arrays():
    """The accumulators update their state in place and read x in place: a
    byte-swapped array is refused by name, nothing is written, and the same
    call with native arrays still works."""
    x = np.ones((3, 4), np.float32)
    count, mean, m2 = np.zeros(4, np.int64), np.zeros(4), np.zeros(4)
    with pytest.raises(TypeError, match="x: expected an array in native byte order"):
        _core._acc_moments_update(count, mean, m2, x.astype(">f4"))
    with pytest.raises(TypeError, match="mean: expected an array in native byte order"):
        _core._acc_moments_update(count, mean.astype(">f8"), m2, x)
    assert not count.any()
    _core._acc_moments_update(count, mean, m2, x)
    np.testing.assert_array_equal(count, 3)
    np.testing.assert_array_equal(mean, 1.0)
