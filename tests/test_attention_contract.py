"""The general attention contract (csrc/kernels/attention.h) against float64 NumPy.

Cases the model's self-attention never reaches: query length != key length
with a causal offset (a decode step: one query at the end of the keys; a chunk
whose last queries see every key; queries past the last key), grouped-query
heads (n_heads / n_kv_heads = 1, 2, 4, 8), and q, k, v read in place through
strides: views into one fused projection buffer, and keys/values in a
[batch, kv_head, capacity, d_head] cache whose unused slots hold NaN (never
read) and, for the gradients, must stay 0 (never written).

Tolerances (float32 kernels against float64 on the same float32 inputs):
  scores  one d_head-term sum each: |err| <= d_head * eps * scale * sum_d |q_d k_d|
          (a worst-case bound, computed per case as `ds`);
  pattern p (s - sum p s) propagates that: <= 2 ds, plus a few eps of the
          softmax's own rounding;
  z       a k_len-term sum of p v: <= (2 ds + (k_len + 8) eps) max|v|;
  grads   sums of up to max(k_len, group * q_len) float32 products (with
          double row sums inside), from the float32 pattern: rtol 1e-4 and an
          atol of 1e-5 of the gradient's scale (the longest sums here have
          ~1000 terms of ~6e-8 relative rounding each).
The fast (AVX-512) kernels against the portable ones (mi_sgemm products, run
at the scalar ISA) use the same bounds. Paths the contract says are bitwise
equal (fused vs three steps, 1 vs 2 threads) are compared exactly.
"""
import numpy as np
import pytest
import torch

import mechinterp_c as mi
from mechinterp_c import _core, _testing, ops

EPS = np.finfo(np.float32).eps
H = 8                                    # query heads; n_kv_heads = H // group
# (q_len, k_len, offset, d_head): self-attention; decode steps (one query at
# the last key); a chunk whose last query sees every key; queries placed past
# the last key (they see all keys); offset 0 with keys no causal query sees;
# more than one 64-row block; d_head past the 16-lane and 64-column tiles.
CASES = [(5, 5, 0, 16), (1, 9, 8, 16), (1, 70, 69, 80), (4, 10, 6, 16), (3, 10, 9, 8),
         (7, 12, 0, 16), (70, 70, 0, 24), (65, 130, 65, 80)]


@pytest.fixture
def restore():
    """Restore the thread count and the ISA after a test that changes them."""
    n = mi.get_num_threads()
    yield
    mi.set_num_threads(n)
    _core.force_isa("best")


# ---- float64 reference ---------------------------------------------------------

def heads_first(x, group=1):
    """[B, T, heads, D] -> float64 [B, heads * group, T, D], each head repeated
    `group` times (query head h reads kv head h // group)."""
    return np.repeat(np.asarray(x, np.float64), group, axis=2).transpose(0, 2, 1, 3)


def reference(q, k, v, causal, offset, pad, scale):
    """(scores, pattern, z) in float64; query head h reads kv head h // group;
    query i sees keys j <= offset + i when causal; rows with no key -> 0."""
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = heads_first(q), heads_first(k, group), heads_first(v, group)
    Tq, Tk = q.shape[1], k.shape[1]
    keep = np.ones((q.shape[0], 1, Tq, Tk), bool)
    if causal:
        keep &= np.arange(Tk)[None, :] <= offset + np.arange(Tq)[:, None]
    if pad is not None:
        keep &= (pad != 0)[:, None, None, :]
    s = np.where(keep, qh @ kh.swapaxes(-1, -2) * scale, -np.inf)
    mx = s.max(-1, keepdims=True)
    e = np.where(keep, np.exp(s - np.where(np.isfinite(mx), mx, 0.0)), 0.0)
    den = e.sum(-1, keepdims=True)
    p = np.divide(e, den, out=np.zeros_like(e), where=den > 0)
    return s, p, (p @ vh).transpose(0, 2, 1, 3)


def reference_backward(q, k, v, p, dz, scale):
    """(dq, dk, dv) in float64 through scores -> softmax -> apply; a kv head's
    dk, dv sum over the query heads that read it."""
    B, Tk, Hkv, D = k.shape
    group = q.shape[2] // Hkv
    qh, kh, vh, dzh = heads_first(q), heads_first(k, group), heads_first(v, group), heads_first(dz)
    p = np.asarray(p, np.float64)
    dp = dzh @ vh.swapaxes(-1, -2)
    ds = p * (dp - (p * dp).sum(-1, keepdims=True)) * scale
    fold = lambda x: x.transpose(0, 2, 1, 3).reshape(B, Tk, Hkv, group, D).sum(3)
    return ((ds @ kh).transpose(0, 2, 1, 3), fold(ds.swapaxes(-1, -2) @ qh),
            fold(p.swapaxes(-1, -2) @ dzh))


def test_reference_backward_is_torch_autograd(rng):
    """The NumPy backward above is the derivative of the NumPy forward (torch float64 autograd)."""
    B, Tq, Tk, Hkv, D, offset = 2, 3, 7, 2, 5, 4
    q = torch.tensor(rng.standard_normal((B, Tq, H, D)), requires_grad=True)
    k, v = (torch.tensor(rng.standard_normal((B, Tk, Hkv, D)), requires_grad=True) for _ in range(2))
    dz = rng.standard_normal((B, Tq, H, D))
    pad = np.ones((B, Tk))
    pad[1, :2] = 0
    scale = 1 / np.sqrt(D)
    kr, vr = (t.repeat_interleave(H // Hkv, dim=2) for t in (k, v))
    keep = (torch.arange(Tk)[None, :] <= offset + torch.arange(Tq)[:, None]) & \
        torch.tensor(pad != 0)[:, None, None, :]
    s = torch.einsum("bihd,bjhd->bhij", q, kr) * scale
    pt = torch.softmax(s.masked_fill(~keep, -torch.inf), -1)
    torch.einsum("bhij,bjhd->bihd", pt, vr).backward(torch.tensor(dz))
    _, p, z = reference(q.detach(), k.detach(), v.detach(), True, offset, pad, scale)
    np.testing.assert_allclose(p, pt.detach().numpy(), rtol=0, atol=1e-12)
    for got, want in zip(reference_backward(q.detach(), k.detach(), v.detach(), p, dz, scale),
                         (q.grad, k.grad, v.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-12)


# ---- inputs --------------------------------------------------------------------

def views(layout, B, Tq, Tk, Hkv, D, fill, spare):
    """q [B,Tq,H,D], k, v [B,Tk,Hkv,D] laid out as `layout`, and the buffers
    they view. fill(shape) makes a buffer; cache slots past k_len hold `spare`.
      separate: three C-contiguous arrays;
      fused:    one projection output [B, Tk, H + 2 Hkv, D] (q heads, then k,
                then v, as a fused QKV with grouped kv heads), the queries
                being its last Tq positions;
      cache:    k, v in [B, Hkv, Tk + 5, D] caches (position stride D, head
                stride capacity * D), q head-major [B, H, Tq, D]."""
    if layout == "separate":
        bufs = [fill((B, Tq, H, D)), fill((B, Tk, Hkv, D)), fill((B, Tk, Hkv, D))]
        return (*bufs, bufs)
    if layout == "fused":
        buf = fill((B, Tk, H + 2 * Hkv, D))
        return buf[:, Tk - Tq:, :H], buf[:, :, H:H + Hkv], buf[:, :, H + Hkv:], [buf]
    qh, kc, vc = fill((B, H, Tq, D)), fill((B, Hkv, Tk + 5, D)), fill((B, Hkv, Tk + 5, D))
    kc[:, :, Tk:] = spare
    vc[:, :, Tk:] = spare
    t = lambda a: a.transpose(0, 2, 1, 3)
    return t(qh), t(kc[:, :, :Tk]), t(vc[:, :, :Tk]), [qh, kc, vc]


def inputs(rng, layout, Tq, Tk, D, group, padded):
    B = 2
    normal = lambda shape: rng.standard_normal(shape).astype(np.float32)
    q, k, v, _ = views(layout, B, Tq, Tk, H // group, D, normal, np.nan)
    pad = None
    if padded:                   # left padding on item 0, right padding on item 1
        pad = np.ones((B, Tk), np.float32)
        pad[0, : max(1, Tk // 3)] = 0
        pad[1, Tk - 2:] = 0
    return q, k, v, pad


def scores_bound(q, k, scale):
    """Worst-case float32 error of one score: d_head * eps * scale * sum_d |q_d k_d|."""
    qh, kh = np.abs(heads_first(q)), np.abs(heads_first(k, q.shape[2] // k.shape[2]))
    return q.shape[3] * EPS * scale * (qh @ kh.swapaxes(-1, -2)).max()


def check_forward(got, want, q, k, v, scale):
    z, s, p = got
    s_ref, p_ref, z_ref = want
    ds = scores_bound(q, k, scale)
    np.testing.assert_array_equal(np.isfinite(s), np.isfinite(s_ref))
    fin = np.isfinite(s_ref)
    np.testing.assert_allclose(s[fin], s_ref[fin], rtol=0, atol=ds)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=2 * ds + 8 * EPS)
    vmax = np.abs(v).max()
    np.testing.assert_allclose(z, z_ref, rtol=0, atol=(2 * ds + (k.shape[1] + 8) * EPS) * vmax)


def gradients(layout, q, k, v, p, dz, causal, offset, scale):
    """(dq, dk, dv) from the kernel, accumulated into zeroed views shaped and strided
    like q, k, v; the buffers behind them (to check nothing else was written)."""
    B, Tq, _, D = q.shape
    zeros = lambda shape: np.zeros(shape, np.float32)
    dq, dk, dv, bufs = views(layout, B, Tq, k.shape[1], k.shape[2], D, zeros, 0.0)
    _testing._attention_general_backward(q, k, v, p, dz, dq, dk, dv, causal=causal, offset=offset,
                                      scale=scale)
    return (dq, dk, dv), bufs


def grad_close(got, want):
    scale = max(np.abs(want).max(), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


# ---- against float64 -----------------------------------------------------------

@pytest.mark.parametrize("Tq,Tk,offset,D", CASES)
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("layout,padded", [("separate", False), ("fused", True), ("cache", False),
                                           ("cache", True)])
def test_forward_and_backward_match_float64(rng, Tq, Tk, offset, D, group, causal, padded, layout):
    q, k, v, pad = inputs(rng, layout, Tq, Tk, D, group, padded)
    scale = 0.7 / np.sqrt(D)         # not the default 1/sqrt(d_head): the argument is used
    want = reference(q, k, v, causal, offset, pad, scale)
    steps = _testing._attention_general(q, k, v, causal=causal, offset=offset, padding_mask=pad,
                                     scale=scale, mode="steps")
    check_forward(steps, want, q, k, v, scale)
    # the fused pass runs the very same products and softmax: bitwise the three steps
    fused = _testing._attention_general(q, k, v, causal=causal, offset=offset, padding_mask=pad,
                                     scale=scale)
    z_only, none1, none2 = _testing._attention_general(q, k, v, causal=causal, offset=offset,
                                                    padding_mask=pad, scale=scale, mode="fused_z")
    assert none1 is None and none2 is None
    for a, b in zip(fused, steps):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(z_only, steps[0])

    dz = rng.standard_normal(steps[0].shape).astype(np.float32)
    (dq, dk, dv), bufs = gradients(layout, q, k, v, steps[2], dz, causal, offset, scale)
    for got, ref in zip((dq, dk, dv), reference_backward(q, k, v, want[1], dz, scale)):
        grad_close(got, ref)
    if layout == "cache":        # the slots past k_len are neither read (NaN) nor written
        assert not bufs[1][:, :, Tk:].any() and not bufs[2][:, :, Tk:].any()
    if layout == "fused" and Tq < Tk:    # no query gradient lands on positions without a query
        assert not bufs[0][:, : Tk - Tq, :H].any()


def test_self_attention_is_the_special_case(rng):
    """The model's call (ops.attention: q_len == k_len, offset 0, n_kv_heads == n_heads,
    the fused QKV layout) and the general call agree bitwise."""
    qkv = rng.standard_normal((2, 37, 3, 4, 16)).astype(np.float32)
    pad = np.ones((2, 37), np.float32)
    pad[1, :5] = 0
    for causal in (True, False):
        z, p = ops.attention(qkv, causal=causal, padding_mask=pad, return_pattern=True)
        zg, _, pg = _testing._attention_general(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                             causal=causal, padding_mask=pad)
        np.testing.assert_array_equal(z, zg)
        np.testing.assert_array_equal(p, pg)
        dz = rng.standard_normal(z.shape).astype(np.float32)
        (dqkv,) = _testing._attention_backward(qkv, None, None, p, dz, causal=causal)
        d = np.zeros_like(qkv)
        _testing._attention_general_backward(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], p, dz,
                                          d[:, :, 0], d[:, :, 1], d[:, :, 2], causal=causal)
        np.testing.assert_array_equal(d, dqkv)


def test_decode_step_is_the_last_row_of_the_full_pass(rng):
    """A KV-cache decode step (q_len 1, offset k_len - 1) gives the last query row of
    the causal pass over all positions: same products, same softmax, bitwise."""
    T, D, Hkv = 20, 16, 2
    q = rng.standard_normal((2, T, H, D)).astype(np.float32)
    k, v = (rng.standard_normal((2, T, Hkv, D)).astype(np.float32) for _ in range(2))
    z, s, p = _testing._attention_general(q, k, v)
    z1, s1, p1 = _testing._attention_general(q[:, T - 1:], k, v, offset=T - 1)
    np.testing.assert_array_equal(z1, z[:, T - 1:])
    np.testing.assert_array_equal(p1, p[:, :, T - 1:])


# ---- fast kernels against the portable ones, threads -------------------------------

def best_isa_is_avx512():
    return _core.force_isa("best") == "avx512"


@pytest.mark.skipif(not best_isa_is_avx512(), reason="this CPU has no AVX-512: one code path only")
@pytest.mark.parametrize("Tq,Tk,offset,D", CASES)
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("layout", ["fused", "cache"])
def test_avx512_matches_portable_kernels(rng, restore, Tq, Tk, offset, D, group, causal, layout):
    q, k, v, pad = inputs(rng, layout, Tq, Tk, D, group, True)
    scale = 1 / np.sqrt(D)
    dz = rng.standard_normal((2, Tq, H, D)).astype(np.float32)
    run = {}
    for isa in ("scalar", "avx512"):
        assert _core.force_isa(isa) == isa
        fwd = _testing._attention_general(q, k, v, causal=causal, offset=offset, padding_mask=pad)
        run[isa] = fwd, gradients(layout, q, k, v, fwd[2], dz, causal, offset, scale)[0]
    (ref, ref_grads), (fast, fast_grads) = run["scalar"], run["avx512"]
    check_forward(fast, (ref[1], ref[2], ref[0]), q, k, v, scale)
    for f, r in zip(fast_grads, ref_grads):
        grad_close(f, r)


@pytest.mark.parametrize("isa", ["best", "scalar"])
@pytest.mark.parametrize("Tq,Tk,offset,group", [(70, 70, 0, 4), (1, 130, 129, 8), (65, 130, 65, 2)])
def test_one_and_two_threads_bitwise(rng, restore, isa, Tq, Tk, offset, group):
    """Each head's sums run on one thread, and a kv head's dk, dv sum its query heads
    in a fixed order: the thread count changes no bit."""
    _core.force_isa(isa)
    q, k, v, pad = inputs(rng, "cache", Tq, Tk, 24, group, True)
    dz = rng.standard_normal((2, Tq, H, 24)).astype(np.float32)
    out = []
    for n in (1, 2):
        mi.set_num_threads(n)
        fwd = [_testing._attention_general(q, k, v, offset=offset, padding_mask=pad, mode=m)
               for m in ("steps", "fused", "fused_z")]
        grads = gradients("cache", q, k, v, fwd[0][2], dz, True, offset, 1 / np.sqrt(24))[0]
        out.append([a for f in fwd for a in f if a is not None] + list(grads))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


# ---- bad input -------------------------------------------------------------------

def test_errors_name_the_problem_and_the_kernels_stay_usable(rng):
    q = rng.standard_normal((1, 3, 6, 4)).astype(np.float32)
    k = rng.standard_normal((1, 5, 4, 4)).astype(np.float32)
    good = rng.standard_normal((1, 5, 2, 4)).astype(np.float32)
    before = _testing._attention_general(q, good, good, offset=2)
    with pytest.raises(ValueError, match=r"n_kv_heads must be >= 1 and divide n_heads \(6\), got 4"):
        _testing._attention_general(q, k, k)
    with pytest.raises(ValueError, match=r"offset must be >= 0, got -1"):
        _testing._attention_general(q, good, good, offset=-1)
    with pytest.raises(ValueError, match=r"k_len must be >= 1 for 3 queries, got 0"):
        _testing._attention_general(q, good[:, :0], good[:, :0])
    with pytest.raises(ValueError, match=r"k, v: expected \[batch, k_len, n_kv_heads, d_head\]"):
        _testing._attention_general(q, good, good[:, :4])
    with pytest.raises(ValueError, match=r"k: the last axis of k must be contiguous"):
        _testing._attention_general(q, good[..., ::2], good[..., ::2])
    with pytest.raises(TypeError, match=r"v: expected float32, got dtype float64"):
        _testing._attention_general(q, good, good.astype(np.float64))
    with pytest.raises(ValueError, match=r"padding_mask: expected shape \(1, 5\) \(\[batch, k_len\] like k\)"):
        _testing._attention_general(q, good, good, padding_mask=np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"mode: expected 'steps', 'fused' or 'fused_z', got 'x'"):
        _testing._attention_general(q, good, good, mode="x")
    z, _, p = before
    dz = np.ones_like(z)
    dq, dk = np.zeros_like(q), np.zeros_like(good)
    with pytest.raises(ValueError, match=r"dv: expected the shape and strides of v"):
        _testing._attention_general_backward(q, good, good, p, dz, dq, dk, np.zeros((1, 5, 2, 8), np.float32)[..., :4])
    ro = np.zeros_like(good)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match=r"dk: expected a writable float32 array, got read-only"):
        _testing._attention_general_backward(q, good, good, p, dz, dq, ro, np.zeros_like(good))
    with pytest.raises(ValueError, match=r"pattern"):
        _testing._attention_general_backward(q, good, good, p[..., :4], dz, dq, dk, np.zeros_like(good))
    assert not dq.any() and not dk.any()       # nothing written by a refused call
    for a, b in zip(before, _testing._attention_general(q, good, good, offset=2)):
        np.testing.assert_array_equal(a, b)
