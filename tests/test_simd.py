"""The vector kernels of every ISA present (AVX2+FMA, AVX-512) against the scalar reference.

Activations, norms, softmax and cross-entropy are written once over
csrc/kernels/simd.h and compiled per ISA; the plain scalar kernels
(force_isa('scalar')) are the reference. Each test forces one vector ISA and
skips, with the reason, where the CPU (or MI_FORCE_ISA) lacks it.

Tolerances, and why:
- relu, forward and backward: bitwise (a select, no rounding).
- other activations: rtol 1e-6 / atol 1e-7 forward (vector exp / erf
  polynomials within a few ulp of libm); backward rtol 1e-5 / atol
  2e-6 * max|dy| (the scalar gelu_tanh loses that much where 1 + tanh and
  1 - t^2 cancel; the vector path uses sigmoid forms that do not).
- softmax: rtol 2e-6 / atol 1e-8 (float exps ~2 ulp, double row sums).
- norms: scale rtol 2e-7 and outputs rtol/atol 1e-6 (double sums in another
  order may move the mean or scale by one float bit).
- cross-entropy: loss atol 1e-6 (float exps summed in double vs exps in
  double), gradient rtol 1e-5.
- AVX2 against AVX-512: bitwise for every elementwise kernel (simd.h's
  contract: one rounding per operation, and the AVX2 exp reproduces scalef).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import mechinterp_c as mi
from mechinterp_c import _core, _testing, ops

VECTOR_ISAS = ["avx2", "avx512"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def force(name):
    """Force ISA `name`, or skip the test where it is not available."""
    got = _core.force_isa(name)
    if got != name:
        _core.force_isa("best")
        pytest.skip(f"{name} is not available here (CPU or MI_FORCE_ISA allows {got!r} at most)")


@pytest.fixture(params=VECTOR_ISAS)
def isa(request):
    """Each vector ISA in turn (skipped where absent); the best ISA restored after."""
    force(request.param)
    _core.force_isa("best")
    yield request.param
    _core.force_isa("best")


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    n = mi.get_num_threads()
    yield
    mi.set_num_threads(n)


def at(isa_name, fn):
    """fn() run at ISA isa_name, results copied (they may be views of one buffer)."""
    _core.force_isa(isa_name)
    try:
        out = fn()
    finally:
        _core.force_isa("best")
    if isinstance(out, tuple):
        return tuple(None if o is None else np.array(o, copy=True) for o in out)
    return np.array(out, copy=True)


def vs_reference(isa_name, fn):
    """(vector result, scalar reference result) of fn."""
    return at(isa_name, fn), at("scalar", fn)


def edge_input(rng, n):
    """Random values with the edges of exp / erf / tanh in front: signed zeros,
    tiny values, the underflow of exp(-x) to denormals and 0, overflow, inf, NaN."""
    x = (rng.standard_normal(n) * 5).astype(np.float32)
    edge = np.array([0.0, -0.0, 1e-30, -1e-30, 0.35, -0.35, 5.5, -5.5, 15, -15, 40, -40,
                     87, -87, 88.7, -88.7, 100, -100, 103, -103, 104, -104, 150, -150,
                     np.inf, -np.inf, np.nan], np.float32)
    x[: min(n, len(edge))] = edge[: min(n, len(edge))]
    return x


ACTS = {
    "relu": ops.relu,
    "gelu": lambda x: ops.gelu(x),
    "gelu_tanh": lambda x: ops.gelu(x, approximate="tanh"),
    "silu": ops.silu,
}


# ---- activations -------------------------------------------------------------

@pytest.mark.parametrize("name", list(ACTS))
@pytest.mark.parametrize("n", [1, 7, 8, 9, 17, 4099])
def test_activation_forward(rng, isa, name, n):
    x = edge_input(rng, n)
    fast, ref = vs_reference(isa, lambda: ACTS[name](x))
    if name == "relu":
        assert np.array_equal(fast.view(np.uint32), ref.view(np.uint32))
    else:
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(ACTS))
@pytest.mark.parametrize("n", [1, 9, 4099])
def test_activation_backward(rng, isa, name, n):
    x = edge_input(rng, n)
    x[np.isinf(x)] = 0.0   # act'(inf) is inf * 0 in the forward formulas: NaN on both paths
    dy = rng.standard_normal(n).astype(np.float32)
    acc = rng.standard_normal(n).astype(np.float32)
    fast, ref = vs_reference(isa, lambda: _testing._activation_backward(name, x, dy, dx=acc.copy()))
    assert np.array_equal(np.isnan(fast), np.isnan(ref))
    if name == "relu":
        assert np.array_equal(fast.view(np.uint32), ref.view(np.uint32))
    else:
        np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=2e-6 * np.abs(dy).max())


def test_gelu_and_silu_ulp_accuracy(isa):
    from scipy.special import erfc
    x = np.linspace(-20, 20, 200001).astype(np.float32)
    xd = x.astype(np.float64)
    spacing = lambda w: np.spacing(np.abs(w).astype(np.float32)).astype(np.float64)
    gelu_want = 0.5 * xd * erfc(-xd / np.sqrt(2))        # no cancellation in the tail
    with np.errstate(over="ignore"):
        silu_want = xd / (1 + np.exp(-xd))
    gelu, silu = at(isa, lambda: ops.gelu(x)), at(isa, lambda: ops.silu(x))
    # measured: gelu 7.2 ulp at worst (erf / erfc polynomials), silu 2-3 ulp;
    # ulps of denormals are meaningless
    m = np.abs(gelu_want) > 1e-30
    assert (np.abs(gelu - gelu_want) / spacing(gelu_want))[m].max() <= 8
    m = np.abs(silu_want) > 1e-30
    assert (np.abs(silu - silu_want) / spacing(silu_want))[m].max() <= 4


# ---- softmax -----------------------------------------------------------------

@pytest.mark.parametrize("cols", [1, 7, 8, 9, 15, 16, 17, 64, 1000])
def test_softmax_forward(rng, isa, cols):
    x = (rng.standard_normal((9, cols)) * 8).astype(np.float32)
    x[0, 0] = -120.0                      # exp underflows to a denormal or 0
    m = rng.random((9, cols)) > 0.3
    m[1] = False                          # an all-masked row: zeros
    x[2, -1] = np.nan                     # a NaN row...
    m[3, -1] = False
    x[3, -1] = np.nan                     # ...and a NaN under the mask, which does not count
    for args in ({}, {"mask": m}):
        fast, ref = vs_reference(isa, lambda: ops.softmax(x, **args))
        assert np.array_equal(np.isnan(fast), np.isnan(ref))
        np.testing.assert_allclose(fast, ref, rtol=2e-6, atol=1e-8)
    assert np.array_equal(at(isa, lambda: ops.softmax(x, mask=m))[1], np.zeros(cols))


@pytest.mark.parametrize("shape", [(1, 1), (5, 9), (4, 100), (2, 1025)])
def test_softmax_backward(rng, isa, shape):
    y = ops.softmax(rng.standard_normal(shape).astype(np.float32) * 3)
    dy = rng.standard_normal(shape).astype(np.float32)
    acc = rng.standard_normal(shape).astype(np.float32)
    fast, ref = vs_reference(isa, lambda: _testing._softmax_backward(y, dy, dx=acc.copy()))
    # the double dot product in another order: its float value may move one bit
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-7 * np.abs(acc).max())


# ---- norms -------------------------------------------------------------------

NORM_SHAPES = [(1, 1), (1, 7), (3, 8), (7, 13), (5, 17), (4, 768), (2, 1025)]


@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_norm_forward(rng, isa, shape):
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    w, b = (rng.standard_normal(shape[-1]).astype(np.float32) for _ in range(2))
    calls = [lambda: ops.layer_norm(x, w, b, return_scale=True),
             lambda: ops.layer_norm(x, return_scale=True),
             lambda: ops.rms_norm(x, w, return_scale=True),
             lambda: ops.rms_norm(x, return_scale=True)]
    for call in calls:
        (y1, s1), (y0, s0) = vs_reference(isa, call)
        np.testing.assert_allclose(s1, s0, rtol=2e-7)
        np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", NORM_SHAPES)
@pytest.mark.parametrize("centre", [True, False])
def test_tl_norm_fused_split_and_reference(rng, isa, shape, centre):
    """TransformerLens's norm step: the fused and the split (hooked) paths agree
    bitwise at one ISA, and both match the scalar reference rows."""
    x, x_add = ((rng.standard_normal(shape) * 3 + 1).astype(np.float32) for _ in range(2))
    w, b = (rng.standard_normal(shape[-1]).astype(np.float32) for _ in range(2))
    fused = at(isa, lambda: _testing._tl_norm(x, w, b, centre=centre, mode="fused"))
    split = at(isa, lambda: _testing._tl_norm(x, w, b, centre=centre, mode="split"))
    for f, s in zip(fused, split):
        assert (f is None) == (s is None) and (f is None or np.array_equal(f, s))
    with_add = at(isa, lambda: _testing._tl_norm(x, w, b, centre=centre, x_add=x_add, mode="fused"))
    ref = _testing._tl_norm(x, w, b, centre=centre, x_add=x_add, mode="ref")
    assert np.array_equal(with_add[3], ref[3])              # x + x_add: one rounding
    np.testing.assert_allclose(with_add[2], ref[2], rtol=2e-7)
    for got, want in zip(with_add[:2], ref[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows,d", [(1, 1), (3, 7), (70, 13), (5, 64), (3, 257)])
def test_norm_backward(rng, isa, rows, d):
    x = (rng.standard_normal((rows, d)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal((rows, d)).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    _, s_ln = ops.layer_norm(x, return_scale=True)
    _, s_rms = ops.rms_norm(x, return_scale=True)
    s_ln, s_rms = s_ln.reshape(-1), s_rms.reshape(-1)
    cases = [lambda: _testing._layer_norm_backward(dy, x, s_ln, w, bias=True),
             lambda: _testing._layer_norm_backward(dy, x, s_ln),
             lambda: _testing._rms_norm_backward(dy, x, s_rms, w),
             lambda: _testing._rms_norm_backward(dy, x, s_rms)]
    for call in cases:
        fast, ref = vs_reference(isa, call)
        for f, r in zip(fast, ref):
            assert (f is None) == (r is None)
            if f is not None:
                # dx is a difference of terms of size |dy w| / scale: ~1e-6 of that
                np.testing.assert_allclose(f, r, rtol=1e-5, atol=1e-6 * np.abs(r).max() + 1e-30)


def test_norm_backward_threads_bitwise(rng, isa, threads):
    x = rng.standard_normal((300, 257)).astype(np.float32)
    dy = rng.standard_normal((300, 257)).astype(np.float32)
    w = rng.standard_normal(257).astype(np.float32)
    s = ops.layer_norm(x, return_scale=True)[1].reshape(-1)
    mi.set_num_threads(1)
    one = at(isa, lambda: _testing._layer_norm_backward(dy, x, s, w, bias=True))
    mi.set_num_threads(2)
    two = at(isa, lambda: _testing._layer_norm_backward(dy, x, s, w, bias=True))
    assert all(np.array_equal(a, b) for a, b in zip(one, two))


# ---- cross-entropy -----------------------------------------------------------

@pytest.mark.parametrize("vocab", [1, 7, 9, 1000, 50257])
def test_cross_entropy(rng, isa, vocab):
    logits = (rng.standard_normal((6, vocab)) * 3).astype(np.float32)
    t = rng.integers(0, vocab, 6)
    logits[0, t[0]] = 30.0               # a confident row: p_t - 1 must not cancel
    t[3] = -100                          # an ignored row
    fast, ref = vs_reference(isa, lambda: _testing._cross_entropy(logits, t))
    np.testing.assert_allclose(fast[0], ref[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast[1], ref[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast[2], ref[2], rtol=1e-5, atol=1e-12)


def test_cross_entropy_nan_row(rng, isa):
    logits = rng.standard_normal((3, 40)).astype(np.float32)
    logits[1, 5] = np.nan
    mean, losses, d = at(isa, lambda: _testing._cross_entropy(logits, np.array([1, 2, 3])))
    assert np.isnan(mean) and np.isnan(losses[1]) and np.isfinite(losses[[0, 2]]).all()
    assert np.isnan(d[1]).all() and np.isfinite(d[[0, 2]]).all()


# ---- AVX2 and AVX-512: the same lanes ----------------------------------------

def test_avx2_and_avx512_elementwise_bitwise(rng):
    """simd.h's contract: every lane operation rounds once, so the two mappings
    give bitwise the same elementwise results (exp, erf and tanh forms included)."""
    for name in VECTOR_ISAS:
        force(name)
    _core.force_isa("best")
    x = edge_input(rng, 40011)
    dy = rng.standard_normal(40011).astype(np.float32)
    for act, fn in ACTS.items():
        a2, a5 = at("avx2", lambda: fn(x)), at("avx512", lambda: fn(x))
        assert np.array_equal(a2.view(np.uint32), a5.view(np.uint32)), act
        g2 = at("avx2", lambda: _testing._activation_backward(act, x, dy))
        g5 = at("avx512", lambda: _testing._activation_backward(act, x, dy))
        assert np.array_equal(g2.view(np.uint32), g5.view(np.uint32)), act


# ---- MI_FORCE_ISA --------------------------------------------------------------

def run_python(code, forced):
    env = dict(os.environ, MI_FORCE_ISA=forced, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_force_isa_env_caps_every_level():
    r = run_python("import mechinterp_c as mi; from mechinterp_c import _core; "
                   "print(mi.cpu_isa(), _core.force_isa('best'), _core.force_isa('avx512'))",
                   "scalar")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["scalar"] * 3


def test_force_isa_env_rejects_unknown_names():
    r = run_python("import mechinterp_c", "avx3")
    assert r.returncode != 0
    assert "ImportError: MI_FORCE_ISA='avx3': expected 'scalar', 'avx2' or 'avx512'" in r.stderr
