"""Freezing is never silently ignored: every weight view a user reaches either honours
``requires_grad`` (the parameter's own view: ``model.pos_embed.W_pos``, ``model.W_pos``,
``state_dict()`` values, ``get_parameter(...)``) or refuses to set it (slices, copies,
the stacked ``model.W_Q``), and a short training run leaves a frozen parameter bitwise
unchanged."""
import numpy as np
import pytest

import mechinterp_c as mi

CFG = dict(n_layers=2, d_model=32, d_head=16, n_heads=2, d_mlp=64, d_vocab=50, n_ctx=12,
           act_fn="relu", normalization_type="LN", seed=0)


def _batches(n_steps, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n_steps):
        tokens = rng.integers(0, CFG["d_vocab"], size=(4, CFG["n_ctx"]))
        targets = np.full_like(tokens, -100)
        targets[:, 1:] = tokens[:, :-1]        # predict the previous token
        yield tokens, targets


def _train(model, n_steps=5):
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    opt = mi.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train_steps(list(_batches(n_steps)), opt, max_grad_norm=1.0, progress=False)
    return before


def _frozen_stays_bitwise(model, name):
    before = _train(model)
    after = model.state_dict()
    np.testing.assert_array_equal(after[name], before[name])
    moved = [k for k in before if k != name and not np.array_equal(after[k], before[k])]
    assert len(moved) >= len(before) - 4      # the rest trains (a few biases may not move)


@pytest.mark.parametrize("how", ["module_attribute", "model_property", "requires_grad_",
                                 "state_dict", "get_parameter", "parameters"])
def test_frozen_w_pos_is_bitwise_unchanged_by_training(how):
    model = mi.HookedTransformer(CFG)
    if how == "module_attribute":
        model.pos_embed.W_pos.requires_grad = False        # the no-position notebook's line
    elif how == "model_property":
        model.W_pos.requires_grad = False
    elif how == "requires_grad_":
        model.pos_embed.W_pos.requires_grad_(False)
    elif how == "state_dict":
        model.state_dict()["pos_embed.W_pos"].requires_grad = False
    elif how == "get_parameter":
        model.get_parameter("pos_embed.W_pos").requires_grad = False
    else:
        dict(model.named_parameters())["pos_embed.W_pos"].requires_grad = False
    # one flag, whichever view set it
    assert model.pos_embed.W_pos.requires_grad is False
    assert model.get_parameter("pos_embed.W_pos").requires_grad is False
    assert [p.name for p in model.parameters() if not p.requires_grad] == ["pos_embed.W_pos"]
    _frozen_stays_bitwise(model, "pos_embed.W_pos")


def test_unfreezing_and_whole_model_switch():
    model = mi.HookedTransformer(CFG)
    model.pos_embed.W_pos.requires_grad = False
    model.pos_embed.W_pos.requires_grad = True
    before = _train(model)
    assert not np.array_equal(model.W_pos, before["pos_embed.W_pos"])
    model.requires_grad_(False)
    model.blocks[1].mlp.W_out.requires_grad = True
    before = _train(model)
    after = model.state_dict()
    for k in before:
        same = np.array_equal(after[k], before[k])
        assert same != (k == "blocks.1.mlp.W_out"), k


def test_views_that_cannot_freeze_refuse():
    model = mi.HookedTransformer(CFG)
    with pytest.raises(AttributeError, match="whole parameter"):
        model.pos_embed.W_pos[:4].requires_grad = False
    with pytest.raises(AttributeError, match="whole parameter"):
        model.W_E.copy().requires_grad = False
    with pytest.raises(AttributeError):
        (model.W_E * 2).requires_grad = False   # arithmetic gives a plain ndarray
    with pytest.raises(AttributeError):
        model.W_Q.requires_grad = False         # a stacked copy [L, H, D, Dh], plain ndarray
    assert all(p.requires_grad for p in model.parameters())   # nothing was frozen
    # the frozen flag of a parameter shows on its slices (read only)
    model.W_E.requires_grad = False
    assert model.W_E[:3].requires_grad is False


@pytest.mark.parametrize("rebuild", ["set_use_attn_result", "set_use_hook_mlp_in", "fold_ln"])
def test_freeze_survives_a_rebuild(rebuild):
    model = mi.HookedTransformer(CFG)
    model.pos_embed.W_pos.requires_grad = False
    if rebuild == "fold_ln":
        model.load_and_process_state_dict({k: np.array(v) for k, v in model.state_dict().items()},
                                          fold_ln=True, center_writing_weights=False,
                                          center_unembed=False, fold_value_biases=False)
        assert model.cfg.normalization_type == "LNPre"
    else:
        getattr(model, rebuild)(True)
        getattr(model, rebuild)(False)
    assert model.pos_embed.W_pos.requires_grad is False
    _frozen_stays_bitwise(model, "pos_embed.W_pos")
