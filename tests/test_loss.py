"""The one next-token cross-entropy (``utils.lm_cross_entropy_loss``, which
``model.loss_fn`` and ``model(..., return_type="loss")`` use) against TransformerLens 3.9's
``utils.lm_cross_entropy_loss`` and ``HookedTransformer`` loss: mean and per token, with
and without an attention mask, and its errors."""
import numpy as np
import pytest

from text_reference import PROMPTS, as_np, make_checkpoint, tl_model, torch

from mechinterp_c import HookedTransformer, utils

tl_utils = pytest.importorskip("transformer_lens.utils")

# TransformerLens takes the log-softmax in float32, ours in float64: the two differ by
# float32 rounding of logits of magnitude ~3 over a vocabulary of 50 (~1e-6).
RTOL, ATOL = 1e-5, 1e-6
# through the model: two fp32 forwards with different summation orders (~1e-6 on the
# logits, as in test_padding), then the loss
MODEL_ATOL = 1e-4


def _case(seed=0, B=3, T=7, V=50):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (B, T, V)).astype(np.float32)
    tokens = rng.integers(0, V, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, :3] = 0          # left padding
    mask[2, 5:] = 0          # right padding
    return logits, tokens, mask


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "int", "bool"])
def test_matches_transformer_lens(per_token, mask_kind):
    logits, tokens, mask = _case()
    if mask_kind == "bool":
        mask = mask.astype(bool)
    m = None if mask_kind is None else mask
    ours = utils.lm_cross_entropy_loss(logits, tokens, m, per_token=per_token)
    ref = tl_utils.lm_cross_entropy_loss(torch.tensor(logits), torch.tensor(tokens),
                                         None if m is None else torch.tensor(m), per_token=per_token)
    assert np.shape(ours) == tuple(ref.shape)
    np.testing.assert_allclose(as_np(ours), as_np(ref), rtol=RTOL, atol=ATOL)
    if per_token and m is not None:     # masked predictions are exactly 0, as TransformerLens
        keep = mask[:, :-1].astype(bool) & mask[:, 1:].astype(bool)
        assert np.all(np.asarray(ours)[~keep] == 0)


def test_torch_inputs_and_batchless():
    logits, tokens, mask = _case(seed=1)
    ours = utils.lm_cross_entropy_loss(torch.tensor(logits), torch.tensor(tokens), torch.tensor(mask))
    ref = tl_utils.lm_cross_entropy_loss(torch.tensor(logits), torch.tensor(tokens), torch.tensor(mask))
    np.testing.assert_allclose(float(ours), float(ref), rtol=RTOL, atol=ATOL)
    one = utils.lm_cross_entropy_loss(logits[0], tokens[0], per_token=True)
    ref = tl_utils.lm_cross_entropy_loss(torch.tensor(logits[0]), torch.tensor(tokens[0]), per_token=True)
    np.testing.assert_allclose(as_np(one), as_np(ref), rtol=RTOL, atol=ATOL)


def test_errors_name_the_problem():
    logits, tokens, mask = _case(seed=2)
    with pytest.raises(ValueError, match="attention_mask"):
        utils.lm_cross_entropy_loss(logits, tokens, mask[:, 1:])
    with pytest.raises(ValueError, match="tokens shape"):
        utils.lm_cross_entropy_loss(logits, tokens[:, 1:])
    bad = tokens.copy()
    bad[0, 2] = 50
    with pytest.raises(ValueError, match="out of range"):
        utils.lm_cross_entropy_loss(logits, bad)
    with pytest.raises(TypeError, match="integers"):
        utils.lm_cross_entropy_loss(logits, tokens.astype(np.float32))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("loss")
    hf = make_checkpoint(d)
    return d, hf


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("per_token", [False, True])
def test_model_loss_matches_transformer_lens(models, side, per_token):
    d, hf = models
    ours = HookedTransformer.from_pretrained(d, default_padding_side=side)
    tl = tl_model(d, hf, default_padding_side=side)
    got = ours(PROMPTS, return_type="loss", loss_per_token=per_token)
    ref = tl(PROMPTS, return_type="loss", loss_per_token=per_token)
    assert np.shape(got) == tuple(ref.shape)
    np.testing.assert_allclose(as_np(got), as_np(ref), rtol=0, atol=MODEL_ATOL)
    # the model's loss is utils.lm_cross_entropy_loss of its logits, in float32
    tokens = ours.to_tokens(PROMPTS)
    mask = utils.get_attention_mask(ours.tokenizer, tokens, True) if side == "left" else None
    logits = ours(tokens)
    direct = utils.lm_cross_entropy_loss(logits, tokens, mask, per_token=per_token)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(direct, dtype=np.float32))
    mask = np.ones(tokens.shape, np.int64)
    mask[0, -2:] = 0
    np.testing.assert_array_equal(
        np.asarray(ours(tokens, return_type="loss", loss_per_token=per_token, attention_mask=mask)),
        np.asarray(ours.loss_fn(ours(tokens, attention_mask=mask), tokens, mask, per_token=per_token)))
