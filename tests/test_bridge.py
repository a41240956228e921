"""The Python bridge: import, threads, zero-copy ownership, error texts."""
import gc
import sys

import numpy as np
import pytest

import mechinterp_c as mi


def test_threads_round_trip():
    n = mi.get_num_threads()
    mi.set_num_threads(1)
    assert mi.get_num_threads() == 1
    mi.set_num_threads(n)
    assert mi.get_num_threads() == n
    with pytest.raises(ValueError, match="n must be >= 1"):
        mi.set_num_threads(0)


def test_cpu_isa_is_known():
    assert mi.cpu_isa() in ("avx512", "avx2", "scalar")


def test_result_owned_by_buffer_and_survives(rng):
    a = rng.standard_normal((4, 5), dtype=np.float32)
    y = mi.ops.relu(a)
    assert type(y.base).__name__ == "Buffer"
    assert y.base.nbytes == 4 * 5 * 4
    view = y[1:3]
    del y
    gc.collect()
    np.testing.assert_array_equal(view, np.maximum(a[1:3], 0))


def test_integer_and_object_input_rejected():
    with pytest.raises(TypeError, match="x: expected a floating-point array, got dtype int64"):
        mi.ops.relu(np.arange(4))
    with pytest.raises(TypeError, match="x: expected a floating-point array, got dtype object"):
        mi.ops.relu(np.array([object()]))
    with pytest.raises(TypeError, match="x: expected a float array, got None"):
        mi.ops.relu(None)


def test_float64_input_converted_once(rng):
    a = rng.standard_normal(10)
    np.testing.assert_allclose(mi.ops.relu(a), np.maximum(a, 0).astype(np.float32))


def test_no_reference_leak(rng):
    a = rng.standard_normal((8, 8), dtype=np.float32)
    before = sys.getrefcount(a)
    for _ in range(100):
        mi.ops.matmul(a, a)
    assert sys.getrefcount(a) == before
