"""histogram(bins='fd'): the IQR's np.percentile(x, [75, 25]) computed in C
(csrc/analysis/quantile.c, quickselect) must equal NumPy's bit for bit, and
the edges and counts must equal np.histogram(x, bins='fd')."""
import numpy as np
import pytest

from mechinterp_c import _core, analysis as A


def _fd_bins_estimate(x):
    """NumPy's bin count for 'fd' (float64 estimate), to skip cases whose edge
    array would not fit in memory (np.histogram itself would allocate it)."""
    p75, p25 = np.percentile(x, [75, 25]).astype(np.float64)
    width = 2.0 * (p75 - p25) * x.size ** (-1.0 / 3.0)
    span = float(np.max(x)) - float(np.min(x))
    return 1 if not width else span / width


def _cases():
    rng = np.random.default_rng(1234)
    out = []
    for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 100, 1001, 4096, 32767, 32768, 32769,
              40000, 65537, 262144]:
        out.append((f"normal{n}", rng.standard_normal(n)))
        if n <= 40000:
            out.append((f"ties{n}", rng.integers(0, 3, n).astype(np.float64)))
            out.append((f"const{n}", np.full(n, -2.75)))
            out.append((f"sorted{n}", np.sort(rng.standard_normal(n))))
            out.append((f"rsorted{n}", np.sort(rng.standard_normal(n))[::-1].copy()))
            out.append((f"mag{n}", rng.standard_normal(n) * np.exp(rng.uniform(-70, 70, n))))
    n = 100000
    out.append(("ties_big", rng.integers(-2, 2, n).astype(np.float64)))
    out.append(("organ_pipe", np.concatenate([np.arange(n // 2), np.arange(n // 2)[::-1]])
                .astype(np.float64)))
    out.append(("sawtooth", (np.arange(n) % 97).astype(np.float64)))
    out.append(("few_outliers", np.concatenate([np.zeros(n - 3), [1e30, -1e30, 5.0]])))
    out.append(("tiny", rng.standard_normal(n) * 1e-40))
    out.append(("signed_zeros", np.where(rng.random(n) < 0.5, -0.0, 0.0)
                + (rng.random(n) < 0.1) * rng.standard_normal(n)))
    out.append(("huge", rng.uniform(-1, 1, n) * 1e300))
    out.append(("huge32", rng.uniform(-1, 1, n) * 3e38))
    out.append(("two_vals", np.where(rng.random(n) < 0.75, 1.0, 2.0)))
    # values the C code's systematic sample sees (every 32nd from 16 for
    # n = 262144) are all outliers: its bracket misses, the full-copy
    # quickselect fallback must give the same answer
    trap = rng.standard_normal(262144)
    trap[16::32] = 1e6
    out.append(("sample_trap", trap))
    trap2 = rng.standard_normal(262144)
    trap2[16::32] = -1e6
    out.append(("sample_trap_low", trap2))
    return out


CASES = _cases()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,x", CASES, ids=[c[0] for c in CASES])
def test_percentile_matches_numpy(name, x, dtype):
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(dtype)
        want = np.percentile(x, [75, 25])
    got = np.array(_core._percentile(x, (0.75, 0.25)))
    assert want.dtype == np.float64
    np.testing.assert_array_equal(got, want)      # -0.0 == 0.0 allowed
    x0 = x.copy()
    _core._percentile(x, (0.25, 0.5, 0.75, 0.0, 1.0, 0.1))
    np.testing.assert_array_equal(x, x0)          # input untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,x", CASES, ids=[c[0] for c in CASES])
def test_histogram_fd_matches_numpy(name, x, dtype):
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(dtype)
        if not np.all(np.isfinite(x)):   # overflowed to inf in this dtype: both refuse
            with pytest.raises(ValueError):
                np.histogram(x, bins="fd")
            with pytest.raises(ValueError):
                A.histogram(x, bins="fd")
            return
        if not _fd_bins_estimate(x) < 1e6:
            pytest.skip("numpy would allocate a huge edge array")
    try:
        want_c, want_e = np.histogram(x, bins="fd")
    except (ValueError, OverflowError, MemoryError) as e:
        with pytest.raises(type(e)):
            A.histogram(x, bins="fd")
        return
    got_c, got_e = A.histogram(x, bins="fd")
    assert got_e.dtype == want_e.dtype
    assert got_e.tobytes() == want_e.tobytes()
    np.testing.assert_array_equal(got_c, want_c)


@pytest.mark.parametrize("pct", [[0], [100], [50], [30, 90, 10], [99.9, 0.1], [33.3, 66.7]])
def test_other_quantiles(pct):
    q = tuple(float(v) for v in np.true_divide(pct, 100))   # NumPy's q, bit for bit
    rng = np.random.default_rng(5)
    for n in [1, 2, 3, 10, 50000]:
        for dt in (np.float32, np.float64):
            x = rng.standard_normal(n).astype(dt)
            np.testing.assert_array_equal(np.array(_core._percentile(x, q)),
                                          np.percentile(x, pct))


def test_percentile_nan_and_errors():
    x = np.array([1.0, np.nan, 3.0, 4.0])
    assert all(np.isnan(v) for v in _core._percentile(x, (0.75, 0.25)))
    assert all(np.isnan(v) for v in _core._percentile(x.astype(np.float32), (0.5,)))
    with pytest.raises(ValueError):
        _core._percentile(np.zeros(0), (0.5,))
    with pytest.raises(ValueError):
        _core._percentile(np.zeros(3), (1.5,))
    with pytest.raises(TypeError):
        _core._percentile(np.zeros(3, np.int64), (0.5,))
    with pytest.raises(ValueError, match="not finite"):
        A.histogram(np.array([1.0, np.nan]), bins="fd")
    with pytest.raises(ValueError, match="not finite"):
        A.histogram(np.array([1.0, np.inf], np.float32), bins="fd")


def test_fd_adversarial_random():
    rng = np.random.default_rng(99)
    for trial in range(200):
        n = int(rng.integers(1, 3000)) if trial % 4 else int(rng.integers(30000, 120000))
        dt = np.float32 if trial % 2 else np.float64
        kind = trial % 5
        if kind == 0:
            x = rng.standard_normal(n)
        elif kind == 1:
            x = rng.integers(0, 1 + trial % 7, n).astype(float)
        elif kind == 2:
            x = np.round(rng.standard_normal(n), 1)
        elif kind == 3:
            x = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30)
        else:
            x = np.repeat(rng.standard_normal(max(1, n // 50)), 50)[:n]
        x = x.astype(dt)
        np.testing.assert_array_equal(np.array(_core._percentile(x, (0.75, 0.25))),
                                      np.percentile(x, [75, 25]))
        if not _fd_bins_estimate(x) < 1e6:
            continue
        c, e = A.histogram(x, bins="fd")
        c2, e2 = np.histogram(x, bins="fd")
        assert e.tobytes() == e2.tobytes()
        np.testing.assert_array_equal(c, c2)
