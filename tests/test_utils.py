"""utils: get_act_name, Slice, lm_cross_entropy_loss, lm_accuracy against transformer_lens.utils."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tlu = pytest.importorskip("transformer_lens.utils")

from mechinterp_c import utils  # noqa: E402

ACT_NAME_CASES = [
    ("embed",), ("pos_embed",), ("hook_embed",), ("blocks.0.attn.hook_z",), ("scale",),
    ("normalized",), ("resid_pre", 0), ("resid_mid", 3), ("resid_post", 11), ("attn_out", 2),
    ("mlp_out", 1), ("q", 0), ("k", 1), ("v", 2), ("z", 3), ("result", 4), ("pattern", 5),
    ("attn", 6), ("attn_scores", 7), ("attn_logits", 7), ("key", 1), ("query", 1), ("value", 1),
    ("rot_q", 2), ("rot_k", 2), ("pre", 0), ("post", 0), ("mid", 0), ("pre_linear", 0),
    ("mlp_pre", 1), ("mlp_post", 1), ("mlp_mid", 1), ("scale", 0, "ln1"), ("scale", 2, "ln2"),
    ("normalized", 27, "ln2"), ("k", 6, "a"), ("resid_pre", 1, "b"), ("resid_pre", 1, "block"),
    ("mlp_out", 1, "m"), ("z", 1, "attention"), ("k6",), ("scale4ln1",), ("pre5",), ("resid_pre10",),
    ("attn_out0",), ("scale", 3), ("q", "2"),
]


@pytest.mark.parametrize("args", ACT_NAME_CASES, ids=lambda a: "-".join(map(str, a)))
def test_get_act_name_matches_tl(args):
    assert utils.get_act_name(*args) == tlu.get_act_name(*args)


SLICES = [None, 0, -1, 2, (2,), (1, 4), (0, 5, 2), slice(1, None), [0, 2, 3], np.array([4, 1]),
          torch.tensor([3, 0]), np.array([True, False, True, False, True, False]), (-3, None)]


@pytest.mark.parametrize("s", SLICES, ids=repr)
@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_slice_matches_tl(s, dim):
    x = np.arange(6 * 6 * 6).reshape(6, 6, 6)
    mine = utils.Slice(s).apply(x, dim=dim)
    ref = tlu.Slice(s).apply(torch.from_numpy(x), dim=dim).numpy()
    np.testing.assert_array_equal(mine, ref)
    assert utils.Slice(s).mode == tlu.Slice(s).mode


@pytest.mark.parametrize("s", [3, (1, 5), [0, 4], slice(None, None, 2), None])
def test_slice_indices_and_unwrap(s):
    np.testing.assert_array_equal(utils.Slice(s).indices(7), tlu.Slice(s).indices(7))
    x = np.arange(7)
    np.testing.assert_array_equal(utils.Slice.unwrap(s).apply(x),
                                  tlu.Slice.unwrap(s).apply(torch.from_numpy(x)).numpy())


def test_slice_errors():
    with pytest.raises(ValueError, match="Invalid input_slice"):
        utils.Slice("abc")
    with pytest.raises(ValueError, match="integers or booleans"):
        utils.Slice([0.5, 1.5])
    with pytest.raises(IndexError, match=r"does not fit axis 1 of an array of shape \(2, 3\)"):
        utils.Slice(5).apply(np.zeros((2, 3)), dim=1)
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        utils.Slice(0).apply(np.zeros((2, 3)), dim=2)
    with pytest.raises(ValueError, match="max_ctx must be specified"):
        utils.Slice((1, 3)).indices()


def _lm_inputs(rng, batch=3, pos=7, vocab=50, scale=4.0):
    logits = (rng.standard_normal((batch, pos, vocab)) * scale).astype(np.float32)
    tokens = rng.integers(0, vocab, size=(batch, pos))
    return logits, tokens


# TL computes log_softmax in float32; ours is float64, so the difference is float32
# rounding of O(10)-sized log-probs: ~1e-6 relative.
LOSS_TOL = dict(rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("per_token", [False, True])
def test_lm_cross_entropy_loss_matches_tl(rng, per_token):
    logits, tokens = _lm_inputs(rng)
    mine = utils.lm_cross_entropy_loss(logits, tokens, per_token=per_token)
    ref = tlu.lm_cross_entropy_loss(torch.from_numpy(logits), torch.from_numpy(tokens), per_token=per_token)
    np.testing.assert_allclose(mine, ref.numpy(), **LOSS_TOL)
    assert np.shape(mine) == tuple(ref.shape)


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("mask_dtype", [bool, np.int64])
def test_lm_cross_entropy_loss_with_mask_matches_tl(rng, per_token, mask_dtype):
    logits, tokens = _lm_inputs(rng)
    mask = np.ones(tokens.shape, dtype=mask_dtype)
    mask[0, 5:] = 0  # right padding
    mask[2, :2] = 0  # left padding
    mine = utils.lm_cross_entropy_loss(logits, tokens, attention_mask=mask, per_token=per_token)
    ref = tlu.lm_cross_entropy_loss(torch.from_numpy(logits), torch.from_numpy(tokens),
                                    attention_mask=torch.from_numpy(mask), per_token=per_token)
    np.testing.assert_allclose(mine, ref.numpy(), **LOSS_TOL)


def test_lm_cross_entropy_loss_extreme_logits_stay_finite():
    # Logits of 1e4 overflow a naive exp; logsumexp with a max shift does not.
    logits = np.zeros((1, 3, 4), np.float32)
    logits[0, :, 1] = 1e4
    tokens = np.array([[0, 1, 2]])
    per_tok = utils.lm_cross_entropy_loss(logits, tokens, per_token=True)
    np.testing.assert_allclose(per_tok, [[0.0, 1e4]], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_token", [False, True])
def test_lm_accuracy_matches_tl(rng, per_token):
    logits, tokens = _lm_inputs(rng, vocab=5)  # small vocab so some predictions are right
    tokens[:, 1:] = np.where(rng.random(tokens[:, 1:].shape) < 0.5,
                             logits.argmax(-1)[:, :-1], tokens[:, 1:])
    mine = utils.lm_accuracy(logits, tokens, per_token=per_token)
    ref = tlu.lm_accuracy(torch.from_numpy(logits), torch.from_numpy(tokens), per_token=per_token)
    np.testing.assert_allclose(np.asarray(mine, dtype=np.float64), ref.numpy().astype(np.float64),
                               rtol=1e-7)
    assert 0 < float(np.mean(mine)) < 1


def test_lm_errors(rng):
    logits, tokens = _lm_inputs(rng)
    with pytest.raises(ValueError, match=r"tokens shape \(3, 6\) does not match logits shape"):
        utils.lm_cross_entropy_loss(logits, tokens[:, :6])
    with pytest.raises(ValueError, match="token 50 is out of range for d_vocab=50"):
        bad = tokens.copy()
        bad[1, 3] = 50
        utils.lm_cross_entropy_loss(logits, bad)
    with pytest.raises(TypeError, match="tokens must be integers"):
        utils.lm_accuracy(logits, tokens.astype(np.float32))
    with pytest.raises(ValueError, match="attention_mask must have the same shape as tokens"):
        utils.lm_cross_entropy_loss(logits, tokens, attention_mask=np.ones((3, 6)))


def test_to_numpy():
    t = torch.arange(6.0, requires_grad=True).reshape(2, 3)
    np.testing.assert_array_equal(utils.to_numpy(t), np.arange(6.0).reshape(2, 3))
    a = np.ones(3)
    assert utils.to_numpy(a) is a
    np.testing.assert_array_equal(utils.to_numpy([1, 2]), np.array([1, 2]))
    assert utils.to_numpy(3.5).shape == ()
