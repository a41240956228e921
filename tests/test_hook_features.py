"""TransformerLens's hook API beyond add/remove, against TransformerLens on the same model.

hook.ctx and clear_contexts, context levels (add_hook(level=...), hooks(),
reset_hooks(level=...), remove_all_hook_fns), run_with_cache(pos_slice=...)
(values and the memory it holds), return_cache_object=False, add_caching_hooks,
cache_all, cache_some, get_caching_hooks, hook_points(), ActivationCache.to and
toggle_autodiff. Values are compared with TOL = 1e-5 of each tensor's scale, the
forward parity tolerance (same float32 forward pass, see test_hooked_transformer).
"""
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
tl = pytest.importorskip("transformer_lens")

from mechinterp_c import _core  # noqa: E402
from mechinterp_c.hooked_transformer import _CACHE, _TRANSIENT  # noqa: E402
from test_hooked_transformer import assert_scaled_close, make_pair  # noqa: E402

TOKENS = np.random.default_rng(11).integers(0, 50, (2, 12))


def tl_run_with_cache(tm, **kw):
    with torch.no_grad():
        return tm.run_with_cache(torch.tensor(TOKENS), **kw)


def assert_same_cache(ours, ref, what):
    assert list(ours.keys()) == list(ref.keys()), f"{what}: keys differ"
    for k in ref.keys():
        assert_scaled_close(np.asarray(ours[k]), ref[k].numpy(), f"{what} {k}")


def hook_counts(model):
    return {n: len(hp.fwd_hooks) for n, hp in model.hook_dict.items() if hp.fwd_hooks}


def counter(act, hook):
    """Counts its calls in hook.ctx."""
    hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1


def contexts(model):
    return {n: dict(hp.ctx) for n, hp in model.hook_dict.items() if hp.ctx}


def test_hook_points_and_ctx_like_transformer_lens():
    tm, m = make_pair({})
    assert [hp.name for hp in m.hook_points()] == [hp.name for hp in tm.hook_points()]
    steps = [
        lambda x: x.run_with_hooks(TOKENS_OF[x], fwd_hooks=[("blocks.0.hook_resid_pre", counter)]),
        lambda x: x.run_with_hooks(TOKENS_OF[x], fwd_hooks=[(lambda n: n.endswith("hook_q"), counter)]),
        lambda x: x.run_with_hooks(TOKENS_OF[x], fwd_hooks=[("blocks.0.hook_resid_pre", counter)],
                                   clear_contexts=True),
        lambda x: x.run_with_hooks(TOKENS_OF[x], fwd_hooks=[("hook_embed", counter)]),
        lambda x: x.reset_hooks(clear_contexts=False),
        lambda x: x.reset_hooks(),
    ]
    TOKENS_OF = {m: TOKENS, tm: torch.tensor(TOKENS)}
    for i, step in enumerate(steps):
        step(m)
        with torch.no_grad():
            step(tm)
        assert contexts(m) == contexts(tm), f"after step {i}"
    assert contexts(m) == {}
    m.hook_dict["hook_embed"].ctx["x"] = 1
    m.clear_contexts()
    assert contexts(m) == {}


def test_levels_like_transformer_lens():
    tm, m = make_pair({})
    noop = lambda act, hook: None   # noqa: E731
    q = "blocks.0.attn.hook_q"

    def script(x):
        x.add_hook(q, noop)                              # level None
        x.add_hook(q, noop, level=1)
        x.add_hook(q, noop, is_permanent=True)
        yield "added"
        with x.hooks(fwd_hooks=[(q, noop), ("hook_embed", noop)]):      # level 1
            yield "level 1"
            x.add_hook("hook_embed", noop, level=2)
            with x.hooks(fwd_hooks=[(q, noop)]):                        # level 2
                yield "level 2"
            yield "left level 2"
            with x.hooks(fwd_hooks=[(q, noop)], reset_hooks_end=False):  # level 2, kept
                pass
            yield "kept level 2"
            x.reset_hooks(level=2)
            yield "reset level 2"
        yield "left level 1"
        x.remove_all_hook_fns(level=7)
        yield "removed level 7"
        x.remove_all_hook_fns(direction="bwd")
        yield "removed bwd"
        x.remove_all_hook_fns()
        yield "removed all non-permanent"
        x.remove_all_hook_fns(including_permanent=True)
        yield "removed all"

    for step, tl_step in zip(script(m), script(tm)):
        assert step == tl_step
        assert hook_counts(m) == hook_counts(tm), step
        assert m.context_level == tm.context_level, step
    assert hook_counts(m) == {} and m.context_level == 0
    assert m.hook_dict[q].has_hooks() is False
    m.add_hook(q, noop, level=3)
    assert m.hook_dict[q].has_hooks(level=3) and not m.hook_dict[q].has_hooks(level=1)
    m.hook_dict[q].add_hook(noop, "fwd", False, 4)    # TransformerLens's positional order
    assert m.hook_dict[q].has_hooks(level=4)
    with pytest.raises(ValueError, match="Invalid direction"):
        m.remove_all_hook_fns(direction="up")
    m.reset_hooks()


@pytest.mark.parametrize("pos_slice", [-1, 3, (2, 7), (1, None, 3), [0, 5, 11], slice(4, None)])
@pytest.mark.parametrize("overrides", [{}, dict(use_attn_result=True, normalization_type="RMS", act_fn="silu")])
def test_run_with_cache_pos_slice(pos_slice, overrides):
    tm, m = make_pair(overrides)
    out, cache = m.run_with_cache(TOKENS, pos_slice=pos_slice)
    tout, tcache = tl_run_with_cache(tm, pos_slice=pos_slice)
    assert_same_cache(cache, tcache, f"pos_slice={pos_slice}")
    assert_scaled_close(np.asarray(out), tout.numpy(), "logits")
    assert not any(hp.has_hooks() for hp in m.hook_points())
    # remove_batch_dim and a names filter together with it
    one = TOKENS[:1]
    _, c1 = m.run_with_cache(one, pos_slice=pos_slice, remove_batch_dim=True,
                             names_filter=lambda n: n.endswith(("hook_pattern", "hook_z", "resid_post")))
    with torch.no_grad():
        _, t1 = tm.run_with_cache(torch.tensor(one), pos_slice=pos_slice, remove_batch_dim=True,
                                  names_filter=lambda n: n.endswith(("hook_pattern", "hook_z", "resid_post")))
    assert_same_cache(c1, t1, "remove_batch_dim")


def test_pos_slice_per_head_inputs_slice_positions():
    # the one deliberate difference: TransformerLens slices axis -2 of the per-head inputs
    # [batch, pos, head, d_model], their head axis; here their positions
    tm, m = make_pair(dict(use_split_qkv_input=True, use_attn_in=True))
    _, cache = m.run_with_cache(TOKENS, pos_slice=(3, 8))
    _, full = tl_run_with_cache(tm)
    _, tcache = tl_run_with_cache(tm, pos_slice=(3, 8))
    per_head = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "ln1.hook_scale",
                "ln1.hook_normalized")
    assert list(cache.keys()) == list(tcache.keys())
    for k in tcache.keys():
        ref = full[k].numpy()[:, 3:8] if k.endswith(per_head) else tcache[k].numpy()
        assert_scaled_close(cache[k], ref, k)


def held_bytes(*arrays):
    """Bytes the given arrays keep alive: each distinct arena (a C Buffer) or owned array once."""
    owners = {}
    for a in arrays:
        base = a
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        owners[id(base)] = base.nbytes
    return sum(owners.values())


def test_pos_slice_holds_only_the_slice():
    _, m = make_pair(dict(n_ctx=64, n_layers=4))
    tokens = np.random.default_rng(3).integers(0, 50, (4, 64))
    out, full = m.run_with_cache(tokens)
    out_s, sliced = m.run_with_cache(tokens, pos_slice=-1)
    assert isinstance(full["hook_embed"].base, _core.Buffer)        # views of the arena
    assert all(v.base is None for v in sliced.values())              # copies of the slice
    held_full = held_bytes(out, *full.values())
    held_sliced = held_bytes(out_s, *sliced.values())
    n = m._core.n_points
    # the sliced run's arena has no slots for the cached points: the logits' arena is the
    # lean one a pass with look-only (transient) hooks gets
    assert held_bytes(out_s) == m._core.arena_bytes(4, 64, bytes([_TRANSIENT] * n))
    assert held_full >= m._core.arena_bytes(4, 64, bytes([_CACHE] * n))
    assert held_sliced == held_bytes(out_s) + sum(v.nbytes for v in sliced.values())
    assert sum(v.nbytes for v in sliced.values()) * 60 < sum(v.nbytes for v in full.values())
    assert held_sliced < held_full / 3, (held_sliced, held_full)
    for k in full.keys():
        axis = 2 if k.endswith(("hook_pattern", "hook_attn_scores")) else 1
        np.testing.assert_array_equal(sliced[k], np.take(full[k], [-1], axis=axis), err_msg=k)


def test_return_cache_object_false_and_device():
    tm, m = make_pair({})
    out, cache = m.run_with_cache(TOKENS, return_cache_object=False, names_filter="blocks.1.hook_resid_post")
    with torch.no_grad():
        _, tcache = tm.run_with_cache(torch.tensor(TOKENS), return_cache_object=False,
                                      names_filter="blocks.1.hook_resid_post")
    assert type(cache) is dict and type(tcache) is dict
    assert_same_cache(cache, tcache, "dict cache")
    _, c = m.run_with_cache(TOKENS, device="cpu", pos_slice=0, return_cache_object=False)
    assert type(c) is dict and c["hook_embed"].shape == (2, 1, 32)
    for bad in ("cuda", "cuda:0", "mps"):
        with pytest.raises(ValueError, match=f"device='{bad}'.*CPU memory only"):
            m.run_with_cache(TOKENS, device=bad)
    np.testing.assert_array_equal(m.run_with_cache(TOKENS)[0], out)   # still usable


@pytest.mark.parametrize("names_filter", [None, "blocks.0.attn.hook_pattern",
                                          ["hook_embed", "blocks.1.mlp.hook_post"],
                                          lambda n: "resid" in n])
@pytest.mark.parametrize("remove_batch_dim", [False, True])
def test_add_caching_hooks(names_filter, remove_batch_dim):
    tm, m = make_pair({})
    tokens = TOKENS[:1]
    cache = m.add_caching_hooks(names_filter, remove_batch_dim=remove_batch_dim)
    tcache = tm.add_caching_hooks(names_filter, remove_batch_dim=remove_batch_dim)
    assert m.is_caching
    m(tokens)
    with torch.no_grad():
        tm(torch.tensor(tokens))
    assert cache.keys() and type(cache) is dict
    assert_same_cache(cache, tcache, "add_caching_hooks")
    # zero copy: views of the pass's arena, and they stay valid after reset_hooks
    assert all(isinstance(v.base.base if remove_batch_dim else v.base, _core.Buffer) for v in cache.values())
    m.reset_hooks()
    assert not m.is_caching and hook_counts(m) == {}
    kept = {k: v.copy() for k, v in cache.items()}
    m(tokens + 1)
    for k in kept:
        np.testing.assert_array_equal(cache[k], kept[k])


def test_cache_all_cache_some_get_caching_hooks(caplog):
    tm, m = make_pair({})
    for x, t in ((m, TOKENS), (tm, torch.tensor(TOKENS))):
        x.ours_all, x.ours_some = {}, {}
        with caplog.at_level(logging.WARNING):
            x.cache_all(x.ours_all)
            x.cache_some(x.ours_some, lambda n: n.endswith("hook_v"))
        with torch.no_grad():
            x(t)
        x.reset_hooks()
    assert "cache_all is deprecated" in caplog.text and "cache_some is deprecated" in caplog.text
    assert_same_cache(m.ours_all, tm.ours_all, "cache_all")
    assert_same_cache(m.ours_some, tm.ours_some, "cache_some")
    assert list(m.ours_some) == ["blocks.0.attn.hook_v", "blocks.1.attn.hook_v"]

    cache, fwd, bwd = m.get_caching_hooks(lambda n: "ln" in n, pos_slice=(0, 4))
    tcache, tfwd, tbwd = tm.get_caching_hooks(lambda n: "ln" in n, pos_slice=(0, 4))
    assert [n for n, _ in fwd] == [n for n, _ in tfwd] and bwd == tbwd == []
    assert cache == {} and hook_counts(m) == {}                 # not added yet
    with m.hooks(fwd_hooks=fwd):
        m(TOKENS)
    with tm.hooks(fwd_hooks=tfwd), torch.no_grad():
        tm(torch.tensor(TOKENS))
    assert_same_cache(cache, tcache, "get_caching_hooks")
    with pytest.raises((NotImplementedError, ValueError)):
        m.get_caching_hooks(device="cuda")
    # incl_bwd: backward caching hooks on the same names, as TransformerLens
    _, fwd, bwd = m.get_caching_hooks(lambda n: "ln" in n, incl_bwd=True)
    _, tfwd, tbwd = tm.get_caching_hooks(lambda n: "ln" in n, incl_bwd=True)
    assert [n for n, _ in bwd] == [n for n, _ in tbwd] == [n for n, _ in fwd]
    assert hook_counts(m) == {}


def test_activation_cache_to_and_toggle_autodiff():
    _, m = make_pair({})
    _, cache = m.run_with_cache(TOKENS)
    before = {k: v for k, v in cache.items()}
    assert cache.to("cpu") is cache and cache.to(torch.device("cpu")) is cache and cache.to(None) is cache
    assert all(cache[k] is before[k] for k in before)       # nothing moved or copied
    with pytest.raises(ValueError, match="device='cuda'"):
        cache.to("cuda")
    assert cache.toggle_autodiff() is None and cache.toggle_autodiff(True) is None
    with pytest.raises(TypeError, match="mode must be a bool"):
        cache.toggle_autodiff("yes")
    assert all(cache[k] is before[k] for k in before)


def test_bad_pos_slice_raises_and_model_stays_usable():
    _, m = make_pair({})
    ref, _ = m.run_with_cache(TOKENS)
    ref = np.array(ref)
    with pytest.raises(ValueError, match="Invalid input_slice"):
        m.run_with_cache(TOKENS, pos_slice="last")
    with pytest.raises(IndexError, match=r"pos_slice at hook_embed: Slice array\(\[99\]\) does not fit axis 1"):
        m.run_with_cache(TOKENS, pos_slice=[99])
    assert hook_counts(m) == {} and m.context_level == 0
    out, cache = m.run_with_cache(TOKENS, pos_slice=-1)
    np.testing.assert_array_equal(out, ref)
    assert cache["blocks.1.hook_resid_post"].shape == (2, 1, 32)
