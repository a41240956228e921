"""Per-model and per-call state of the C model: the backward pass holds the
same in-use guard as the forward (weights cannot be replaced under it, and it
is let go afterwards, also after an error), each model keeps its own released
activation arena, and MI_PROFILE timing is per pass (passes on two threads
at once neither crash nor change results).

Results are compared bitwise with a single-threaded rerun on the same model:
the passes are deterministic, so any difference would be a race."""
import os
import threading

import numpy as np
import pytest

from mechinterp_c import _core
from mechinterp_c.config import HookedTransformerConfig
from mechinterp_c.hooked_transformer import HookedTransformer


def _model(seed=3, d_model=16):
    cfg = HookedTransformerConfig(n_layers=2, d_model=d_model, n_ctx=8, d_head=4,
                                  n_heads=d_model // 4, d_vocab=20, act_fn="gelu_new", seed=seed)
    return HookedTransformer(cfg)


def test_backward_releases_the_in_use_guard():
    m = _model()
    core = m._core
    tokens = np.arange(12).reshape(2, 6) % 20
    grads = _core.grad_blob(core)
    loss = _core.loss_backward(core, tokens, tokens, grads)
    assert np.isfinite(loss)
    name = "blocks.0.mlp.b_out"
    w = core.params()[name].copy()
    core.set_param(name, w)                 # not refused: no pass is running any more
    assert core.materialize() == 1
    with pytest.raises(IndexError):         # a target outside the vocabulary
        _core.loss_backward(core, tokens, tokens + 100, grads)
    core.set_param(name, w)                 # the failed call let the guard go too
    assert core.materialize() == 1
    assert _core.loss_backward(core, tokens, tokens, _core.grad_blob(core)) == loss


def test_each_model_keeps_its_own_arena():
    a, b = _model(seed=1), _model(seed=2, d_model=32)
    tokens = np.arange(12).reshape(2, 6) % 20
    want_a, want_b = a(tokens).copy(), b(tokens).copy()
    for _ in range(3):                      # released arenas are reused per model
        np.testing.assert_array_equal(a(tokens), want_a)
        np.testing.assert_array_equal(b(tokens), want_b)
    kept = a(tokens)                        # a live view keeps its arena from reuse
    np.testing.assert_array_equal(a(tokens), want_a)
    np.testing.assert_array_equal(kept, want_a)
    del a                                   # arenas outliving their model stay valid
    np.testing.assert_array_equal(kept, want_a)


def test_profiled_passes_on_two_threads(monkeypatch, capfd):
    monkeypatch.setenv("MI_PROFILE", "1")
    models = [_model(seed=s) for s in (1, 2)]
    tokens = np.arange(16).reshape(2, 8) % 20
    want = [m(tokens).copy() for m in models]
    got, errors = [None, None], []

    def run(i):
        try:
            for _ in range(20):
                got[i] = models[i](tokens).copy()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    err = capfd.readouterr().err
    assert err.count("MI_PROFILE forward") == 42
    assert os.environ["MI_PROFILE"] == "1"
