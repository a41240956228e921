"""The attention contract's score rule (csrc/kernels/attention.h): Gemma 2's
score soft-capping (scores = cap * tanh(raw / cap), before the mask) and the
sliding window (query at position p sees keys j with p - window < j), forward
and backward, against float64 NumPy (itself checked against torch autograd).

Tolerances (float32 kernels against float64 on the same float32 inputs), the
bounds of test_attention_contract.py with the cap's share added:
  scores  the raw score's bound ds (d_head * eps * scale * sum_d |q_d k_d|)
          passes through cap * tanh(x / cap) unchanged or smaller (its slope
          is <= 1), plus tanhf's and the two divisions' rounding: 4 eps cap;
  pattern <= 2 (that) + 8 eps;  z: <= (2 (that) + (k_len + 8) eps) max|v|;
  grads   rtol 1e-4 and an atol of 1e-5 of the gradient's scale, as there
          (the cap's factor 1 - (s / cap)^2 is formed from a float32 score).
Paths the contract says are bitwise equal (fused vs three steps, 1 vs 2
threads) are compared exactly.
"""
import numpy as np
import pytest
import torch

import mechinterp_c as mi
from mechinterp_c import _core, _testing

EPS = np.finfo(np.float32).eps
H = 4
# (q_len, k_len, offset, d_head, window): windows shorter than, equal to and
# longer than the keys; a decode step (one query at the last key); a chunk;
# more than one 64-row block with a window crossing the block boundary.
CASES = [(9, 9, 0, 16, 3), (9, 9, 0, 16, 1), (1, 20, 19, 16, 5), (6, 12, 6, 8, 4),
         (70, 70, 0, 24, 17), (12, 12, 0, 16, 12), (5, 5, 0, 16, 40)]


@pytest.fixture
def restore():
    n = mi.get_num_threads()
    yield
    mi.set_num_threads(n)
    _core.force_isa("best")


def heads_first(x, group=1):
    return np.repeat(np.asarray(x, np.float64), group, axis=2).transpose(0, 2, 1, 3)


def keep_mask(B, Tq, Tk, causal, offset, window, pad):
    pos = offset + np.arange(Tq)[:, None]
    keep = np.ones((B, 1, Tq, Tk), bool)
    if causal:
        keep &= np.arange(Tk)[None, :] <= pos
    if window:
        keep &= np.arange(Tk)[None, :] > pos - window
    if pad is not None:
        keep &= (pad != 0)[:, None, None, :]
    return keep


def reference(q, k, v, causal, offset, pad, scale, window, cap):
    """(scores, pattern, z) in float64: raw = scale q.k, capped, then masked."""
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = heads_first(q), heads_first(k, group), heads_first(v, group)
    keep = keep_mask(q.shape[0], q.shape[1], k.shape[1], causal, offset, window, pad)
    raw = qh @ kh.swapaxes(-1, -2) * scale
    capped = cap * np.tanh(raw / cap) if cap else raw
    s = np.where(keep, capped, -np.inf)
    mx = s.max(-1, keepdims=True)
    e = np.where(keep, np.exp(s - np.where(np.isfinite(mx), mx, 0.0)), 0.0)
    den = e.sum(-1, keepdims=True)
    p = np.divide(e, den, out=np.zeros_like(e), where=den > 0)
    return s, p, (p @ vh).transpose(0, 2, 1, 3)


def reference_backward(q, k, v, s, p, dz, scale, cap):
    B, Tk, Hkv, D = k.shape
    group = q.shape[2] // Hkv
    qh, kh, vh, dzh = heads_first(q), heads_first(k, group), heads_first(v, group), heads_first(dz)
    p = np.asarray(p, np.float64)
    dp = dzh @ vh.swapaxes(-1, -2)
    ds = p * (dp - (p * dp).sum(-1, keepdims=True)) * scale
    if cap:
        t = np.where(p > 0, np.asarray(s, np.float64) / cap, 0.0)
        ds = ds * (1 - t * t)
    fold = lambda x: x.transpose(0, 2, 1, 3).reshape(B, Tk, Hkv, group, D).sum(3)
    return ((ds @ kh).transpose(0, 2, 1, 3), fold(ds.swapaxes(-1, -2) @ qh),
            fold(p.swapaxes(-1, -2) @ dzh))


def test_reference_is_torch_autograd(rng):
    """The NumPy forward and backward above against torch float64 autograd of
    TransformerLens's order: scores / attn_scale, soft-cap, local causal mask."""
    B, Tq, Tk, Hkv, D, offset, window, cap = 2, 4, 9, 2, 5, 5, 3, 0.8
    q = torch.tensor(rng.standard_normal((B, Tq, H, D)), requires_grad=True)
    k, v = (torch.tensor(rng.standard_normal((B, Tk, Hkv, D)), requires_grad=True) for _ in range(2))
    dz = rng.standard_normal((B, Tq, H, D))
    scale = 1 / np.sqrt(D)
    kr, vr = (t.repeat_interleave(H // Hkv, dim=2) for t in (k, v))
    s = torch.einsum("bihd,bjhd->bhij", q, kr) * scale
    s = cap * torch.tanh(s / cap)
    keep = torch.tensor(keep_mask(B, Tq, Tk, True, offset, window, None))
    pt = torch.softmax(s.masked_fill(~keep, -torch.inf), -1)
    torch.einsum("bhij,bjhd->bihd", pt, vr).backward(torch.tensor(dz))
    s_ref, p, _ = reference(q.detach(), k.detach(), v.detach(), True, offset, None, scale, window, cap)
    np.testing.assert_allclose(p, pt.detach().numpy(), rtol=0, atol=1e-12)
    for got, want in zip(reference_backward(q.detach(), k.detach(), v.detach(), s_ref, p, dz, scale, cap),
                         (q.grad, k.grad, v.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-12)


def inputs(rng, Tq, Tk, D, group, padded, big=1.0):
    B = 2
    q = (big * rng.standard_normal((B, Tq, H, D))).astype(np.float32)
    k, v = (rng.standard_normal((B, Tk, H // group, D)).astype(np.float32) for _ in range(2))
    pad = None
    if padded:
        pad = np.ones((B, Tk), np.float32)
        pad[0, : max(1, Tk // 4)] = 0
    return q, k, v, pad


def check_forward(got, want, q, k, v, scale, cap):
    z, s, p = got
    s_ref, p_ref, z_ref = want
    group = q.shape[2] // k.shape[2]
    qh, kh = np.abs(heads_first(q)), np.abs(heads_first(k, group))
    ds = q.shape[3] * EPS * scale * (qh @ kh.swapaxes(-1, -2)).max() + (4 * EPS * cap if cap else 0)
    np.testing.assert_array_equal(np.isfinite(s), np.isfinite(s_ref))
    fin = np.isfinite(s_ref)
    np.testing.assert_allclose(s[fin], s_ref[fin], rtol=0, atol=ds)
    np.testing.assert_allclose(p, p_ref, rtol=0, atol=2 * ds + 8 * EPS)
    np.testing.assert_allclose(z, z_ref, rtol=0, atol=(2 * ds + (k.shape[1] + 8) * EPS) * np.abs(v).max())


def grad_close(got, want):
    scale = max(np.abs(want).max(), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def kernel_grads(q, k, v, p, s, dz, causal, offset, scale, window, cap):
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    _testing._attention_general_backward(q, k, v, p, dz, dq, dk, dv, causal=causal, offset=offset,
                                         scale=scale, window=window, softcap=cap,
                                         scores=s if cap else None)
    return dq, dk, dv


def test_softcap_kernel_matches_float64_tanh(restore):
    """mi_softcap on every ISA against float64 cap * tanh(x / cap): both tanh branches
    (|x / cap| below and above 0.625), values near 0, huge ones, +-inf, NaN; within
    4 eps of the cap, the tanhf reference within 2 eps."""
    cap = 3.0
    x = np.concatenate([np.linspace(-40, 40, 4001), np.linspace(-2.2, 2.2, 4001),
                        [0.0, -0.0, 1e-30, -1e-30, 1.874, 1.876, 1e30, -1e30, np.inf, -np.inf]])
    x = x.astype(np.float32)
    want = cap * np.tanh(x.astype(np.float64) / cap)
    for isa in ("scalar", "avx2", "avx512"):
        if not _isa_available(isa):
            continue
        _core.force_isa(isa)
        got = _testing._softcap(x, cap)
        np.testing.assert_allclose(got, want, rtol=0, atol=(2 if isa == "scalar" else 4) * EPS * cap,
                                   err_msg=isa)
        small = np.abs(x) < 1e-3            # no cancellation near 0: relative accuracy
        np.testing.assert_allclose(got[small], want[small], rtol=4 * EPS, atol=0, err_msg=isa)
        assert np.isnan(_testing._softcap(np.array([np.nan], np.float32), cap)).all()


@pytest.mark.parametrize("Tq,Tk,offset,D,window", CASES)
@pytest.mark.parametrize("cap", [0.0, 2.5])
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("causal,padded", [(True, False), (True, True), (False, False)])
def test_forward_and_backward_match_float64(rng, Tq, Tk, offset, D, window, cap, group, causal, padded):
    # q scaled up so that raw scores reach the cap's curved part (|raw| ~ cap)
    q, k, v, pad = inputs(rng, Tq, Tk, D, group, padded, big=3.0)
    scale = 0.7 / np.sqrt(D)
    want = reference(q, k, v, causal, offset, pad, scale, window, cap)
    kw = dict(causal=causal, offset=offset, padding_mask=pad, scale=scale, window=window, softcap=cap)
    steps = _testing._attention_general(q, k, v, mode="steps", **kw)
    check_forward(steps, want, q, k, v, scale, cap)
    fused = _testing._attention_general(q, k, v, **kw)
    z_only = _testing._attention_general(q, k, v, mode="fused_z", **kw)[0]
    for a, b in zip(fused, steps):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(z_only, steps[0])
    if cap:     # the cap bounds every kept score
        assert np.abs(steps[1][np.isfinite(steps[1])]).max() <= cap
    dz = rng.standard_normal(steps[0].shape).astype(np.float32)
    got = kernel_grads(q, k, v, steps[2], steps[1], dz, causal, offset, scale, window, cap)
    for g, r in zip(got, reference_backward(q, k, v, want[0], want[1], dz, scale, cap)):
        grad_close(g, r)


def test_window_at_least_the_keys_is_no_window(rng):
    """A window as long as every query's causal span changes no bit."""
    q, k, v, pad = inputs(rng, 12, 12, 16, 2, True)
    for a, b in zip(_testing._attention_general(q, k, v, padding_mask=pad, window=12),
                    _testing._attention_general(q, k, v, padding_mask=pad)):
        np.testing.assert_array_equal(a, b)


def _isa_available(isa):
    ok = _core.force_isa(isa) == isa
    _core.force_isa("best")
    return ok


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("Tq,Tk,offset,D,window", CASES)
def test_vector_isa_matches_portable_kernels(rng, restore, isa, Tq, Tk, offset, D, window):
    """The vector soft-cap (Cephes tanhf over simd.h) and the AVX-512 products against
    the scalar reference (tanhf, mi_sgemm), within the float64 bounds."""
    if not _isa_available(isa):
        pytest.skip(f"this CPU has no {isa}")
    q, k, v, pad = inputs(rng, Tq, Tk, D, 2, True, big=3.0)
    scale, cap = 1 / np.sqrt(D), 2.5
    dz = rng.standard_normal((2, Tq, H, D)).astype(np.float32)
    run = {}
    for isa in ("scalar", isa):
        assert _core.force_isa(isa) == isa
        z, s, p = _testing._attention_general(q, k, v, offset=offset, padding_mask=pad, window=window,
                                              softcap=cap)
        run[isa] = (z, s, p), kernel_grads(q, k, v, p, s, dz, True, offset, scale, window, cap)
    (ref, ref_grads), (fast, fast_grads) = run["scalar"], run[isa]
    check_forward(fast, (ref[1], ref[2], ref[0]), q, k, v, scale, cap)
    for f, r in zip(fast_grads, ref_grads):
        grad_close(f, r)


@pytest.mark.parametrize("isa", ["best", "scalar"])
def test_one_and_two_threads_bitwise(rng, restore, isa):
    _core.force_isa(isa)
    q, k, v, pad = inputs(rng, 70, 70, 24, 2, True, big=3.0)
    dz = rng.standard_normal((2, 70, H, 24)).astype(np.float32)
    out = []
    for n in (1, 2):
        mi.set_num_threads(n)
        fwd = [_testing._attention_general(q, k, v, padding_mask=pad, mode=m, window=9, softcap=3.0)
               for m in ("steps", "fused", "fused_z")]
        z, s, p = fwd[0]
        grads = kernel_grads(q, k, v, p, s, dz, True, 0, 1 / np.sqrt(24), 9, 3.0)
        out.append([a for f in fwd for a in f if a is not None] + list(grads))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_bad_rule_is_refused_and_the_kernels_stay_usable(rng):
    q, k, v, _ = inputs(rng, 3, 5, 4, 2, False)
    before = _testing._attention_general(q, k, v, offset=2, window=2, softcap=1.5)
    with pytest.raises(ValueError, match=r"window must be >= 0 \(0: no sliding window\), got -1"):
        _testing._attention_general(q, k, v, window=-1)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"softcap must be finite and >= 0 \(0: off\)"):
            _testing._attention_general(q, k, v, softcap=bad)
    z, s, p = before
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    with pytest.raises(ValueError, match=r"a softcap needs the forward's scores"):
        _testing._attention_general_backward(q, k, v, p, np.ones_like(z), dq, dk, dv, offset=2,
                                             window=2, softcap=1.5)
    with pytest.raises(ValueError, match=r"scores: expected shape"):
        _testing._attention_general_backward(q, k, v, p, np.ones_like(z), dq, dk, dv, offset=2,
                                             window=2, softcap=1.5, scores=s[..., :3])
    assert not dq.any() and not dk.any() and not dv.any()
    for a, b in zip(before, _testing._attention_general(q, k, v, offset=2, window=2, softcap=1.5)):
        np.testing.assert_array_equal(a, b)
