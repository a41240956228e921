"""The C sampler (_core.sampling_logits / sample / argmax_rows) against the real processors.

References: TransformerLens 3.9's ``utils.sample_logits`` (its filtered logits captured
where it builds the Categorical) and transformers' logits processors
(RepetitionPenalty, Temperature, TopK, TopP) run on the same logits.
"""
import numpy as np
import pytest

import mechinterp_c
from mechinterp_c import _core

torch = pytest.importorskip("torch")


def _logits(B=4, V=64, seed=0, ties=True):
    x = np.random.default_rng(seed).standard_normal((B, V)).astype(np.float32) * 2
    if ties:   # exact ties, at the top and in the middle, to pin the ordering rules
        x[:, 5] = x[:, 9] = x[:, 13] = x.max(1) + 0.5
        x[:, 20] = x[:, 21] = np.sort(x, 1)[:, V // 2]
    return x


def _hist(B=4, V=64, T=12, seed=1):
    return np.random.default_rng(seed).integers(0, V, (B, T))


def _tl_filtered(logits, monkeypatch, **kw):
    """The logits TransformerLens's sample_logits hands to Categorical."""
    from transformer_lens.utilities import logits_utils
    seen = {}

    class Capture:
        def __init__(self, logits):
            seen["logits"] = logits.clone()

        def sample(self):
            return seen["logits"].argmax(-1)

    monkeypatch.setattr(torch.distributions.categorical, "Categorical", Capture)
    logits_utils.sample_logits(torch.tensor(logits), **kw)
    return seen["logits"].numpy()


def _assert_filtered_equal(ours, ref, tol):
    """Same -inf pattern exactly; finite entries within tol (fp32 ops in the same order,
    so they are expected to be equal bitwise; tol is stated per call)."""
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(ours[fin], ref[fin], rtol=tol, atol=0)


@pytest.mark.parametrize("kw", [
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=5),
    dict(temperature=1.0, top_k=3),      # the tie of three at the top: all kept
    dict(temperature=0.8, top_k=33),     # the k-th value is tied: both kept
    dict(temperature=0.9, top_p=0.6),
    dict(temperature=1.1, top_p=0.95),
    dict(temperature=1.0, top_k=4, top_p=0.3),   # TL: top-k only
    dict(temperature=0.6, freq_penalty=0.7, top_p=0.9),
    dict(temperature=1.2, repetition_penalty=1.5, top_k=10),
    dict(temperature=1.0, top_k=1000),   # clamped to the vocabulary
])
def test_filters_match_transformer_lens(kw, monkeypatch):
    pytest.importorskip("transformer_lens")
    x, h = _logits(), _hist()
    ref = _tl_filtered(x, monkeypatch, tokens=torch.tensor(h), **kw)
    ours = _core.sampling_logits(x, h, rules="tl", top_k=kw.get("top_k", 0),
                                 top_p=kw.get("top_p", 1.0), temperature=kw["temperature"],
                                 freq_penalty=kw.get("freq_penalty", 0.0),
                                 repetition_penalty=kw.get("repetition_penalty", 1.0))
    # identical fp32 operations (division, product, subtraction) in the same order
    _assert_filtered_equal(ours, ref, 0)


@pytest.mark.parametrize("kw", [
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=5),
    dict(top_k=3),
    dict(temperature=0.8, top_k=33),
    dict(temperature=0.9, top_p=0.6),
    dict(top_p=0.95),
    dict(top_k=10, top_p=0.5),           # HF: both, top-k first
    dict(repetition_penalty=1.7, temperature=0.9, top_k=20, top_p=0.8),
    dict(repetition_penalty=0.6),
])
def test_filters_match_transformers_processors(kw):
    gen = pytest.importorskip("transformers.generation.logits_process")
    x, h = _logits(), _hist()
    procs = []
    if "repetition_penalty" in kw:
        procs.append(gen.RepetitionPenaltyLogitsProcessor(kw["repetition_penalty"]))
    if "temperature" in kw:
        procs.append(gen.TemperatureLogitsWarper(kw["temperature"]))
    if "top_k" in kw:
        procs.append(gen.TopKLogitsWarper(kw["top_k"]))
    if "top_p" in kw:
        procs.append(gen.TopPLogitsWarper(kw["top_p"]))
    ref = torch.tensor(x)
    for p in procs:
        ref = p(torch.tensor(h), ref)
    ours = _core.sampling_logits(x, h, rules="hf", **kw)
    _assert_filtered_equal(ours, ref.numpy(), 0)


def test_top_p_boundary_rules_differ_as_the_libraries_do():
    """p = [0.5, 0.3, 0.2], top_p = 0.8: TL keeps the token that crosses 0.8 (mass before it
    0.5 <= 0.8 -> keep the 2nd, 0.8 <= 0.8 -> keep the 3rd too); HF drops the tail whose
    cumulative mass from below is <= 0.2 (the 3rd, 0.2 <= 0.2 up to rounding)."""
    x = np.log(np.array([[0.5, 0.3, 0.2]], np.float64)).astype(np.float32)
    tl_keep = np.isfinite(_core.sampling_logits(x, top_p=0.81, rules="tl"))
    hf_keep = np.isfinite(_core.sampling_logits(x, top_p=0.79, rules="hf"))
    np.testing.assert_array_equal(tl_keep, [[True, True, True]])
    np.testing.assert_array_equal(hf_keep, [[True, True, False]])


@pytest.mark.parametrize("T,top_k,top_p,rules", [
    (0.7, 0, 1.0, "tl"), (1.0, 6, 1.0, "tl"), (1.4, 0, 0.7, "tl"), (0.8, 10, 0.6, "hf"),
])
def test_empirical_distribution_chi_square(T, top_k, top_p, rules):
    """Many draws from one logit vector follow softmax(filtered logits / T).

    N = 40000 draws (each its own row: one stream per row), fixed seeds, so the test is
    deterministic; with correct sampling the chi-square p-value is uniform, and the
    threshold 1e-3 is the significance (a wrong distribution of this size gives p ~ 0)."""
    stats = pytest.importorskip("scipy.stats")
    V, N = 24, 40000
    x = np.random.default_rng(7).standard_normal(V).astype(np.float32) * 1.5
    filt = _core.sampling_logits(x[None], temperature=T, top_k=top_k, top_p=top_p, rules=rules)[0]
    p = np.exp(filt.astype(np.float64) - filt.max())
    p /= p.sum()
    draws = _core.sample(np.tile(x, (N, 1)), temperature=T, top_k=top_k, top_p=top_p, rules=rules,
                         seed=12345)
    counts = np.bincount(draws, minlength=V)
    assert counts[p == 0].sum() == 0, "a filtered-out token was drawn"
    keep = p > 0
    assert keep.sum() >= 3
    assert stats.chisquare(counts[keep], N * p[keep]).pvalue > 1e-3
    # successive calls (counter) of one row follow it too
    row = np.array([_core.sample(x, temperature=T, top_k=top_k, top_p=top_p, rules=rules,
                                 seed=99, counter=c)[0] for c in range(4000)])
    c2 = np.bincount(row, minlength=V)
    assert stats.chisquare(c2[keep], 4000 * p[keep]).pvalue > 1e-3


def test_generator_uniform_and_streams_independent():
    stats = pytest.importorskip("scipy.stats")
    u = np.array([_core.sampling_uniform(1, s, c) for s in range(50) for c in range(200)])
    assert 0 <= u.min() and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # neighbouring streams and counters are uncorrelated
    a = np.array([_core.sampling_uniform(1, s, 0) for s in range(2000)])
    b = np.array([_core.sampling_uniform(1, s, 1) for s in range(2000)])
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.1
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.1


def test_same_seed_same_tokens_any_thread_count():
    x, h = _logits(B=64, V=500, seed=3), _hist(B=64, V=500, T=30)
    kw = dict(temperature=0.9, top_p=0.9, freq_penalty=0.3, repetition_penalty=1.2, seed=42)
    n = mechinterp_c.get_num_threads()
    try:
        mechinterp_c.set_num_threads(1)
        one = _core.sample(x, h, **kw)
        mechinterp_c.set_num_threads(2)
        two = _core.sample(x, h, **kw)
    finally:
        mechinterp_c.set_num_threads(n)
    np.testing.assert_array_equal(one, two)
    # a row's draw depends on its own logits and stream only, not on the other rows
    x2 = x.copy()
    x2[:5] = np.random.default_rng(9).standard_normal((5, 500))
    np.testing.assert_array_equal(_core.sample(x2, h, **kw)[5:], one[5:])
    assert not np.array_equal(_core.sample(x, h, **{**kw, "seed": 43}), one)


def test_argmax_first_max_and_nan_as_torch():
    x = _logits(B=6, V=40)
    x[2] = 1.0                         # all equal: index 0
    x[3, [4, 30]] = 50.0               # tie: first
    x[4, 17] = np.nan                  # NaN wins, as torch.argmax
    x[5] = -np.inf
    np.testing.assert_array_equal(_core.argmax_rows(x), torch.tensor(x).argmax(-1).numpy())


def test_top_k1_is_greedy():
    """Without ties at the top (with them top_k=1 keeps every tied token, as both libraries)."""
    x = _logits(B=16, V=80, seed=5, ties=False)
    g = _core.argmax_rows(x)
    np.testing.assert_array_equal(_core.sample(x, top_k=1, seed=1), g)


def test_bad_input_clear_errors():
    x, h = _logits(), _hist()
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        _core.sample(x, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        _core.sample(x, temperature=float("nan"))
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        _core.sampling_logits(x, top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        _core.sampling_logits(x, top_k=-2)
    with pytest.raises(ValueError, match="repetition_penalty"):
        _core.sampling_logits(x, h, repetition_penalty=0.0)
    with pytest.raises(IndexError, match=r"tokens\[1, 3\] = 64 is outside the vocabulary \[0, 64\)"):
        bad = h.copy()
        bad[1, 3] = 64
        _core.sampling_logits(x, bad, freq_penalty=1.0)
    with pytest.raises(ValueError, match="tokens has 2 rows but logits has 4"):
        _core.sampling_logits(x, h[:2])
    with pytest.raises(ValueError, match="rules must be"):
        _core.sampling_logits(x, rules="llama")
    with pytest.raises(TypeError, match="logits"):
        _core.sample(np.zeros((2, 3), np.int64))
    y = x.copy()
    y[2] = -np.inf
    with pytest.raises(ValueError, match="logits row 2 has no finite logit"):
        _core.sample(y)
    y = x.copy()
    y[1, 7] = np.nan
    with pytest.raises(ValueError, match="logits row 1 holds NaN"):
        _core.sample(y)
    with pytest.raises(ValueError, match=r"logits must be \[batch >= 1, vocab >= 1\]"):
        _core.sample(np.zeros((0, 5), np.float32))
    # still usable, same answers
    np.testing.assert_array_equal(_core.sample(x, seed=1), _core.sample(x, seed=1))
