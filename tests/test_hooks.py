"""Hooks on mechinterp_c.HookedTransformer against TransformerLens doing the same edit.

Each edit is made in place and/or by returning a new array on our side and the
same way with torch on TransformerLens's side; every cached activation must
then agree within TOL of its scale (see test_hooked_transformer.py for why 1e-5).
Error tests check the exception text and that the model is still correct after.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")

from test_hooked_transformer import TOL, _reaches_buffer, assert_scaled_close, make_pair  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _np(x):
    return x.numpy() if hasattr(x, "numpy") else x


# (hook name, our hook, TransformerLens hook): each pair makes the same edit.
def _zero_head_inplace(act, hook):
    act[:, :, 1] = 0.0


def _double_q_head0(act, hook):
    act[:, :, 0, :] *= 2.0


def _scale_by_return(act, hook):
    return act * 1.5


def _pattern_uniform_return(act, hook):
    n = act.shape[-1]
    lib = np if isinstance(act, np.ndarray) else torch
    causal = lib.tril(lib.ones((n, n))) if lib is torch else np.tril(np.ones((n, n), np.float32))
    uniform = causal / causal.sum(-1, keepdims=True) if lib is np else causal / causal.sum(-1, keepdim=True)
    return act * 0 + uniform      # same shape as act: a new array, not an in-place edit


def _zero_neurons(act, hook):
    act[..., :10] = 0.0


def _shift_resid_float64(act, hook):
    ramp = np.linspace(0.0, 1.0, act.shape[-1])    # not a constant: LayerNorm would remove that
    if isinstance(act, np.ndarray):
        return act.astype(np.float64) + ramp     # float64 is accepted and cast
    return act + torch.tensor(ramp, dtype=act.dtype)


def _mask_first_key(act, hook):
    act[..., 1:, 0] = -1e4


EDITS = [
    ("blocks.0.attn.hook_z", _zero_head_inplace),
    ("blocks.1.attn.hook_q", _double_q_head0),
    ("blocks.0.attn.hook_v", _scale_by_return),
    ("blocks.1.attn.hook_pattern", _pattern_uniform_return),
    ("blocks.0.attn.hook_attn_scores", _mask_first_key),
    ("blocks.0.mlp.hook_post", _zero_neurons),
    ("blocks.0.hook_resid_post", _shift_resid_float64),
    ("blocks.1.ln1.hook_scale", _scale_by_return),
    ("blocks.0.ln2.hook_normalized", _scale_by_return),
    ("ln_final.hook_scale", _scale_by_return),
    ("hook_embed", _scale_by_return),
    ("unembed.hook_in", _scale_by_return),
]
SOLU_EDITS = [("blocks.0.mlp.hook_mid", _zero_neurons), ("blocks.1.mlp.ln.hook_scale", _scale_by_return),
              ("blocks.0.mlp.ln.hook_normalized", _scale_by_return)]


@pytest.mark.parametrize("name,fn", EDITS + SOLU_EDITS,
                         ids=[e[0] + ":" + e[1].__name__ for e in EDITS + SOLU_EDITS])
def test_hook_edit_matches_transformer_lens(name, fn):
    tm, m = make_pair(dict(act_fn="solu_ln") if (name, fn) in SOLU_EDITS else {})
    tokens = np.random.default_rng(1).integers(0, 50, (2, 9))
    with m.hooks(fwd_hooks=[(name, fn)]):
        logits, cache = m.run_with_cache(tokens)
    with tm.hooks(fwd_hooks=[(name, fn)]), torch.no_grad():
        tlogits, tcache = tm.run_with_cache(torch.tensor(tokens))
    assert list(cache.keys()) == list(tcache.keys())
    for k in tcache.keys():
        assert_scaled_close(cache[k], tcache[k].numpy(), k)
    assert_scaled_close(logits, tlogits.numpy(), "logits")
    # the edit changed something (the test can fail)
    plain = m(tokens)
    assert np.abs(plain - logits).max() > 1e-4
    assert not any(hp.has_hooks() for hp in m.hook_dict.values())


def test_run_with_hooks_filter_and_several_hooks_chain():
    tm, m = make_pair({})
    tokens = np.random.default_rng(2).integers(0, 50, (2, 7))
    seen = []

    def record(act, hook):
        seen.append((hook.name, hook.layer(), act.shape))

    hooks = [(lambda n: n.endswith("hook_q"), record), ("blocks.1.hook_mlp_out", _scale_by_return),
             ("blocks.1.hook_mlp_out", _scale_by_return)]   # chained: the second sees the first's output
    out = m.run_with_hooks(tokens, fwd_hooks=hooks)
    ours_seen = list(seen)
    with torch.no_grad():
        tout = tm.run_with_hooks(torch.tensor(tokens), fwd_hooks=hooks)
    assert_scaled_close(out, tout.detach().numpy(), "logits")
    assert ours_seen == [("blocks.0.attn.hook_q", 0, (2, 7, 4, 8)), ("blocks.1.attn.hook_q", 1, (2, 7, 4, 8))]
    assert [(n, l, tuple(s)) for n, l, s in seen[2:]] == ours_seen     # TransformerLens fired the same
    assert len(m.hook_dict) > 0 and all(not hp.has_hooks() for hp in m.hook_dict.values())


def test_add_hook_reset_and_permanent():
    _, m = make_pair({})
    tokens = np.random.default_rng(3).integers(0, 50, (1, 5))
    ref = m(tokens).copy()
    m.add_hook("blocks.0.hook_attn_out", _zero_neurons)
    changed = m(tokens).copy()
    assert np.abs(changed - ref).max() > 1e-4
    m.reset_hooks()
    np.testing.assert_array_equal(m(tokens), ref)
    m.add_hook("blocks.0.hook_attn_out", _zero_neurons, is_permanent=True)
    m.reset_hooks()
    np.testing.assert_array_equal(m(tokens), changed)
    m.reset_hooks(including_permanent=True)
    np.testing.assert_array_equal(m(tokens), ref)
    m.blocks[0].attn.hook_pattern.add_hook(_scale_by_return)   # through the module tree
    assert m.hook_dict["blocks.0.attn.hook_pattern"].has_hooks()
    m.reset_hooks()
    with pytest.raises(ValueError, match="hook_embed is not inside a block"):
        m.hook_dict["hook_embed"].layer()


@pytest.mark.parametrize("overrides", [{}, dict(use_split_qkv_input=True, use_attn_in=True)])
def test_hook_views_are_arena_views_and_stay_valid(overrides):
    # also: a hook that changes nothing changes no bit (fused and hooked paths agree)
    _, m = make_pair(overrides)
    tokens = np.random.default_rng(4).integers(0, 50, (2, 6))
    kept = {}

    def keep(act, hook):
        kept[hook.name] = act

    _, cache = m.run_with_cache(tokens)
    m.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, keep)])
    m(tokens[:, ::-1].copy())
    assert set(kept) == set(cache.keys())
    for k, v in kept.items():
        assert _reaches_buffer(v), k
        np.testing.assert_array_equal(v, cache[k], err_msg=k)


def test_hook_errors_are_clear_and_leave_model_usable():
    _, m = make_pair({})
    tokens = np.random.default_rng(5).integers(0, 50, (2, 6))
    ref = m(tokens).copy()

    def boom(act, hook):
        raise RuntimeError(f"boom at {hook.name}")

    with pytest.raises(RuntimeError, match="boom at blocks.1.attn.hook_k"):
        m.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_k", boom)])
    with pytest.raises(ValueError, match=r"hook on blocks.0.hook_resid_mid returned shape \(2, 6, 31\); "
                                         r"expected \(2, 6, 32\)"):
        m.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", lambda a, hook: a[..., :31])])
    with pytest.raises(TypeError, match="returned dtype int64"):
        m.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_pre", lambda a, hook: a.astype(np.int64))])
    with pytest.raises(TypeError, match="returned str"):
        m.run_with_hooks(tokens, fwd_hooks=[("hook_pos_embed", lambda a, hook: "x")])
    with pytest.raises(KeyError, match="unknown hook point 'blocks.0.attn.hook_nope'"):
        m.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_nope", boom)])
    with pytest.raises(RuntimeError, match="boom"):
        with m.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", boom)]):
            m.run_with_cache(tokens)
    assert not any(hp.has_hooks() for hp in m.hook_dict.values())
    np.testing.assert_array_equal(m(tokens), ref)


@pytest.mark.parametrize("overrides", [{}, dict(attn_only=True), dict(normalization_type=None, use_attn_result=True),
                                       dict(gated_mlp=True, normalization_type="RMSPre"), dict(use_hook_mlp_in=True),
                                       dict(act_fn="solu_ln")])
def test_hook_dict_matches_tl(overrides):
    tm, m = make_pair(overrides)
    assert list(m.hook_dict) == list(tm.hook_dict)      # every HookPoint, TL's module order
    assert all(n in m.mod_dict for n in m.hook_dict)
    assert "blocks.0.attn" in m.mod_dict
    # a point this config never fires accepts a hook that never runs, as in TransformerLens
    calls = []
    m.add_hook("blocks.0.hook_attn_in", lambda a, hook: calls.append(1))
    m(np.array([[1, 2, 3]]))
    m.reset_hooks()
    assert calls == []


def test_set_use_attn_result_and_hook_mlp_in_keep_weights_and_hooks():
    tm, m = make_pair({})
    tokens = np.random.default_rng(6).integers(0, 50, (2, 6))
    m.add_hook("blocks.1.attn.hook_z", _zero_head_inplace)
    tm.add_hook("blocks.1.attn.hook_z", _zero_head_inplace)
    m.set_use_attn_result(True)
    m.set_use_hook_mlp_in(True)
    tm.set_use_attn_result(True)
    tm.set_use_hook_mlp_in(True)
    with torch.no_grad():
        logits, cache = m.run_with_cache(tokens)
        tlogits, tcache = tm.run_with_cache(torch.tensor(tokens))
    assert "blocks.0.attn.hook_result" in cache and "blocks.0.hook_mlp_in" in cache
    assert list(cache.keys()) == list(tcache.keys())
    for k in tcache.keys():
        assert_scaled_close(cache[k], tcache[k].numpy(), k)
    assert_scaled_close(logits, tlogits.numpy(), "logits")
    # the per-head attention inputs, switched on with hooks attached: still TL's numbers
    m.set_use_split_qkv_input(True)
    m.set_use_attn_in(True)
    tm.set_use_split_qkv_input(True)
    tm.set_use_attn_in(True)
    with torch.no_grad():
        logits, cache = m.run_with_cache(tokens)
        tlogits, tcache = tm.run_with_cache(torch.tensor(tokens))
    assert "blocks.1.hook_q_input" in cache and "blocks.0.hook_attn_in" in cache
    assert list(cache.keys()) == list(tcache.keys())
    for k in tcache.keys():
        assert_scaled_close(cache[k], tcache[k].numpy(), k)
    assert_scaled_close(logits, tlogits.numpy(), "logits")
    with pytest.raises(ValueError, match="use_split_qkv_input or use_attn_in"):
        m.backward(tokens, tokens)


def _zero_head1_input(act, hook):
    act[:, :, 1] = 0.0       # [batch, pos, head, d_model]: head 1 reads zeros


def _ramp_head0_return(act, hook):
    ramp = np.linspace(-1.0, 1.0, act.shape[-1]).astype(np.float32)
    if not isinstance(act, np.ndarray):
        ramp = torch.tensor(ramp)
    out = act * 1.0
    out[:, :, 0] = out[:, :, 0] + ramp
    return out


def _third_call_only(factor):
    """A hook that edits only on its 3rd, 6th, ... call: ln1 runs on the q, k and v inputs
    in turn, so this touches only the run on the value input."""
    calls = []

    def fn(act, hook):
        calls.append(hook.name)
        if len(calls) % 3 == 0:
            return act * factor
    return fn


SPLIT_EDITS = [
    ("blocks.0.hook_q_input", lambda: _zero_head1_input),
    ("blocks.1.hook_k_input", lambda: _ramp_head0_return),
    ("blocks.0.hook_v_input", lambda: _ramp_head0_return),   # (a plain scale would be normalised away)
    ("blocks.1.ln1.hook_scale", lambda: _third_call_only(1.7)),
    ("blocks.0.ln1.hook_normalized", lambda: _ramp_head0_return),
    ("blocks.1.hook_attn_in", lambda: _zero_head1_input),
]


@pytest.mark.parametrize("name,make", SPLIT_EDITS, ids=[e[0] for e in SPLIT_EDITS])
def test_split_qkv_and_attn_in_hook_edits_match_transformer_lens(name, make):
    cfg = dict(use_attn_in=True) if "attn_in" in name else dict(use_split_qkv_input=True)
    tm, m = make_pair(cfg)
    tokens = np.random.default_rng(8).integers(0, 50, (2, 7))
    with m.hooks(fwd_hooks=[(name, make())]):
        logits, cache = m.run_with_cache(tokens)
    with tm.hooks(fwd_hooks=[(name, make())]), torch.no_grad():
        tlogits, tcache = tm.run_with_cache(torch.tensor(tokens))
    assert list(cache.keys()) == list(tcache.keys())
    for k in tcache.keys():
        assert_scaled_close(cache[k], tcache[k].numpy(), k)
    assert_scaled_close(logits, tlogits.numpy(), "logits")
    assert np.abs(m(tokens) - logits).max() > 1e-4       # the edit changed something


def test_split_qkv_ln1_fires_three_times_with_tl_shapes():
    tm, m = make_pair(dict(use_split_qkv_input=True, use_attn_in=True))
    tokens = np.random.default_rng(9).integers(0, 50, (2, 5))
    seen, kept = [], {}

    def record(act, hook):
        seen.append((hook.name, tuple(act.shape)))
        kept.setdefault(hook.name, []).append(act)

    assert list(m.hook_dict) == list(tm.hook_dict)
    flt = lambda n: n.startswith("blocks.0.")
    m.run_with_hooks(tokens, fwd_hooks=[(flt, record)])
    ours = [(n, s) for n, s in seen]
    seen.clear()
    with torch.no_grad():
        tm.run_with_hooks(torch.tensor(tokens), fwd_hooks=[(flt, record)])
    assert ours == [(n, tuple(s)) for n, s in seen]       # same points, order, shapes, counts
    assert [n for n, _ in ours].count("blocks.0.ln1.hook_scale") == 3
    assert ("blocks.0.ln1.hook_normalized", (2, 5, 4, 32)) in ours
    # the three ln1 runs each keep their own (valid) buffer
    runs = kept["blocks.0.ln1.hook_normalized"][:3]
    assert all(isinstance(a, np.ndarray) and _reaches_buffer(a) for a in runs)
    assert len({a.__array_interface__["data"][0] for a in runs}) == 3
