"""Per-model and per-call state of the C model: the backward pass holds the
same in-use guard as the forward (weights cannot be replaced under it, and it
is let go afterwards, also after an error), each model keeps its own released
activation arena, and MI_PROFILE timing is per pass (passes on two threads
at once neither crash nor change results).

Results are compared bitwise with a single-threaded rerun on the same model:
the passes are deterministic, so any difference would be a race."""
import gc
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


_REUSE_CONFIGS = {
    "gpt2_like": dict(act_fn="gelu_new", use_attn_result=True, use_split_qkv_input=True,
                      use_hook_mlp_in=True),
    "llama_like": dict(act_fn="silu", normalization_type="RMS", gated_mlp=True,
                       positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2),
}


@pytest.mark.parametrize("kind", sorted(_REUSE_CONFIGS))
def test_a_kept_arena_is_never_read_before_written(kind):
    """A model keeps its last released arena for the next call and hands the pages
    past a bound back to the kernel lazily (MADV_FREE): reused, they hold whatever
    the last pass left, or zeros where the kernel reclaimed them. Neither may show:
    every activation of the next pass is written before it is read. The bound is
    set to 0 so a small arena takes the lazy path; the kept block is then filled
    with NaN bytes, or reclaimed, before the call that reuses it."""
    from mechinterp_c import _testing
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_ctx=32, d_head=8, n_heads=8,
                                  d_vocab=300, seed=5, **_REUSE_CONFIGS[kind])
    m = HookedTransformer(cfg)
    tokens = np.arange(64).reshape(2, 32) * 7 % 300
    logits, cache = m.run_with_cache(tokens)
    want_logits = logits.copy()
    want = {k: v.copy() for k, v in cache.items()}
    assert len(want) > 20
    for spoil in ("fill", "reclaim"):
        address, nbytes = _testing._spare_keep_warm(logits.base, 0)
        del logits, cache
        gc.collect()                        # the arena goes back to the model, lazily released
        if spoil == "fill":
            _testing._fill_kept(address, nbytes, 0xFF)    # every float32 a NaN
        elif not _testing._reclaim_kept(address, nbytes):
            pytest.skip("the kernel has no MADV_PAGEOUT")
        logits, cache = m.run_with_cache(tokens)
        assert _testing._spare_keep_warm(logits.base, 0) == (address, nbytes)   # reused
        np.testing.assert_array_equal(logits, want_logits)
        assert set(cache.keys()) == set(want)
        for k, v in want.items():
            np.testing.assert_array_equal(cache[k], v, err_msg=f"{kind} {spoil}: {k}")


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
