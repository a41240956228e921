"""Rebuilding the C model (``set_use_attn_result``, ``set_use_split_qkv_input``,
``set_use_hook_mlp_in``, ``set_use_attn_in``, LayerNorm folding, a rebuild asked for by a
hook in the middle of a pass) keeps hooks removable and weight views live."""
import numpy as np
import pytest

import mechinterp_c as mi

CFG = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=40, n_ctx=10,
           act_fn="gelu", normalization_type="LN", seed=3)
TOKENS = np.random.default_rng(0).integers(0, 40, size=(2, 7))
SWITCHES = ["set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in",
            "set_use_attn_in"]


def _model():
    return mi.HookedTransformer(CFG)


def _counter(fired):
    def hook(act, hook):
        fired.append(hook.name)
    return hook


@pytest.mark.parametrize("switch", SWITCHES)
def test_hooks_removed_after_a_rebuild_stay_removed(switch):
    m = _model()
    fired = []
    with m.hooks([("blocks.0.hook_resid_pre", _counter(fired))]):
        getattr(m, switch)(True)
        m(TOKENS)
        assert fired == ["blocks.0.hook_resid_pre"]          # still registered inside
    m(TOKENS)
    assert len(fired) == 1                                   # and gone after the block
    handle = m.add_hook("blocks.1.hook_resid_post", _counter(fired))[0]
    getattr(m, switch)(False)
    handle.remove()
    m(TOKENS)
    m.add_perma_hook("hook_embed", _counter(fired))
    getattr(m, switch)(True)
    m.reset_hooks(including_permanent=True)
    m(TOKENS)
    assert len(fired) == 1
    assert not any(hp.has_hooks() for hp in m.hook_dict.values())


@pytest.mark.parametrize("switch", SWITCHES)
def test_weight_views_stay_live_across_a_rebuild(switch):
    m = _model()
    W_E, W_Q0, b_U = m.W_E, m.blocks[0].attn.W_Q, m.unembed.b_U
    sd = m.state_dict()
    param = m.get_parameter("blocks.1.mlp.W_out")
    getattr(m, switch)(True)
    assert m.W_E is W_E and m.blocks[0].attn.W_Q is W_Q0 and m.state_dict()["embed.W_E"] is W_E
    assert np.shares_memory(m._core.params()["embed.W_E"], W_E)
    ref = _model()                              # the same init, edited the same way
    getattr(ref, switch)(True)
    for w in (W_E, ref.W_E):
        w[...] = 0.5
    W_Q0[1] = 0.25
    ref.blocks[0].attn.W_Q[1] = 0.25
    sd["unembed.b_U"][3] = 2.0
    ref.unembed.b_U[3] = 2.0
    param.data[...] *= 2
    ref.blocks[1].mlp.W_out[...] *= 2
    np.testing.assert_array_equal(m(TOKENS), ref(TOKENS))
    assert b_U[3] == 2.0


def test_rebuild_requested_by_a_hook_during_a_pass():
    """The pass in flight finishes on the old C model (same logits, same cache names); the
    hooks of the `with` block are gone afterwards; the next pass has the new point."""
    m = _model()
    plain_logits, plain_cache = m.run_with_cache(TOKENS)
    fired = []

    def rebuild_hook(act, hook):
        fired.append(hook.name)
        m.set_use_attn_result(True)

    with m.hooks([("blocks.0.hook_attn_out", rebuild_hook),
                  ("blocks.1.hook_resid_post", _counter(fired))]):
        logits, cache = m.run_with_cache(TOKENS)
    assert fired == ["blocks.0.hook_attn_out", "blocks.1.hook_resid_post"]
    np.testing.assert_array_equal(logits, plain_logits)
    assert list(cache.keys()) == list(plain_cache.keys())
    for k in plain_cache.keys():
        np.testing.assert_array_equal(cache[k], plain_cache[k], err_msg=k)
    logits2, cache2 = m.run_with_cache(TOKENS)
    assert len(fired) == 2                                   # no hook fires any more
    assert "blocks.0.attn.hook_result" in cache2.keys()
    np.testing.assert_allclose(cache2["blocks.0.attn.hook_result"].sum(2) + m.blocks[0].attn.b_O,
                               cache2["blocks.0.hook_attn_out"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits2, plain_logits, atol=1e-5, rtol=0)


def test_layout_change_makes_old_views_read_only():
    """Folding LayerNorm changes the parameter layout (no ln weights): the weights move to
    the new C model and a view taken before refuses edits instead of editing nothing."""
    m = _model()
    W_E, ln_w = m.W_E, m.blocks[0].ln1.w
    sd = {k: np.array(v) for k, v in m.state_dict().items()}
    m.load_and_process_state_dict(sd, fold_ln=True, center_writing_weights=False,
                                  center_unembed=False, fold_value_biases=False)
    for stale in (W_E, ln_w, W_E.data):
        with pytest.raises(ValueError, match="read-only"):
            stale[...] = 0
    np.testing.assert_array_equal(W_E, sd["embed.W_E"])     # still readable
    m.W_E[...] = 0                              # the new view edits the model
    m.W_pos[...] = 0
    np.testing.assert_array_equal(m.run_with_cache(TOKENS)[1]["blocks.0.hook_resid_pre"], 0)
