"""Padded batches are never silently wrong: TransformerLens's padding rules (padding side,
attention mask built from the tokens, positions that skip the pads) against
TransformerLens 3.9, and the Hugging Face API against transformers, on one checkpoint."""
import numpy as np
import pytest

from text_reference import PROMPTS, as_np, make_checkpoint, tl_model, torch, transformers

import mechinterp_c as mi
from mechinterp_c import HookedTransformer, utils
from mechinterp_c.transformers import GPT2LMHeadModel, GPT2Tokenizer

# fp32 on both sides, different summation orders, 2 layers of width 64: ~1e-6 apart.
# A padding mistake (pads attended, or positions shifted) moves logits by ~0.1-1.
ATOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("padding")
    return make_checkpoint(d), d


@pytest.fixture(scope="module")
def tl_left(ckpt):
    hf, d = ckpt
    return tl_model(d, hf, default_padding_side="left")


def _lengths(m):
    return [len(m.to_tokens(p)[0]) for p in PROMPTS]


def _real_positions(side, n, T):
    return range(T - n, T) if side == "left" else range(n)


def _assert_each_prompt_as_alone(m, logits, side):
    T = logits.shape[1]
    for i, (p, n) in enumerate(zip(PROMPTS, _lengths(m))):
        alone = m(p)[0]
        pos = list(_real_positions(side, n, T))
        np.testing.assert_allclose(logits[i, pos], alone, atol=ATOL, rtol=0, err_msg=f"{side} {p!r}")
        np.testing.assert_allclose(logits[i, pos[-1]], alone[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("how", ["from_pretrained", "constructor", "tokenizer_attribute"])
def test_padded_batch_gives_each_prompts_logits(ckpt, side, how):
    """to_tokens + forward with no mask: every prompt's real tokens (its last one above all)
    get the logits of the prompt run alone, and the tokens are TransformerLens's."""
    hf, d = ckpt
    if how == "from_pretrained":
        m = HookedTransformer.from_pretrained_no_processing(d, default_padding_side=side)
    elif how == "constructor":
        src = HookedTransformer.from_pretrained_no_processing(d)
        m = HookedTransformer(src.cfg, tokenizer=GPT2Tokenizer.from_pretrained(d),
                              default_padding_side=side)
        m.load_state_dict(src.state_dict())
    else:
        m = HookedTransformer.from_pretrained_no_processing(d)
        m.tokenizer.padding_side = side
    assert m.tokenizer.padding_side == side
    tokens = m.to_tokens(PROMPTS)
    tl = tl_model(d, hf, default_padding_side=side)
    np.testing.assert_array_equal(tokens, tl.to_tokens(PROMPTS).numpy())
    pad_end = tokens[:, 0] if side == "left" else tokens[:, -1]
    assert (pad_end == m.tokenizer.pad_token_id).sum() >= 2        # really padded
    logits = m(tokens)
    _assert_each_prompt_as_alone(m, logits, side)
    ref = as_np(tl(torch.tensor(tokens)))
    T = tokens.shape[1]
    for i, n in enumerate(_lengths(m)):
        pos = list(_real_positions(side, n, T))
        np.testing.assert_allclose(logits[i, pos], ref[i, pos], atol=ATOL, rtol=0)


def test_padding_side_argument_text_input_and_cache(ckpt, tl_left):
    """padding_side= on the call overrides the tokenizer's, for text given to forward,
    run_with_cache and run_with_hooks, as in TransformerLens."""
    hf, d = ckpt
    m = HookedTransformer.from_pretrained_no_processing(d)           # tokenizer pads right
    logits = m(PROMPTS, padding_side="left")
    _assert_each_prompt_as_alone(m, logits, "left")
    tl = tl_model(d, hf)
    with torch.no_grad():
        ref_logits, ref_cache = tl.run_with_cache(PROMPTS, padding_side="left")
    got_logits, cache = m.run_with_cache(PROMPTS, padding_side="left")
    np.testing.assert_allclose(got_logits, logits, atol=0, rtol=0)
    n_pad = m.to_tokens(PROMPTS, padding_side="left")[:, 0] == m.tokenizer.pad_token_id
    real = m.to_tokens(PROMPTS, padding_side="left") != m.tokenizer.pad_token_id
    real[:, 0] |= ~n_pad         # TransformerLens's BOS == pad rule: the BOS is real
    for name in ("hook_pos_embed", "blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern"):
        g, r = cache[name], as_np(ref_cache[name])
        if name.endswith("pattern"):
            g, r = g.transpose(0, 2, 1, 3)[real], r.transpose(0, 2, 1, 3)[real]
        else:
            g, r = g[real], r[real]
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=0, err_msg=name)
    seen = []
    m.run_with_hooks(PROMPTS, padding_side="left",
                     fwd_hooks=[("hook_pos_embed", lambda a, hook: seen.append(a.copy()))])
    np.testing.assert_array_equal(seen[0], cache["hook_pos_embed"])
    # the tokenizer's own side is restored afterwards
    assert m.tokenizer.padding_side == "right"


def test_loss_of_left_padded_batch_matches_transformer_lens(ckpt, tl_left):
    hf, d = ckpt
    m = HookedTransformer.from_pretrained_no_processing(d, default_padding_side="left")
    tokens = m.to_tokens(PROMPTS)
    with torch.no_grad():
        ref = tl_left(torch.tensor(tokens), return_type="loss").item()
        ref_tok = as_np(tl_left(torch.tensor(tokens), return_type="loss", loss_per_token=True))
    # float64 log-softmax here, float32 in TransformerLens: 1e-5 relative
    np.testing.assert_allclose(m(tokens, return_type="loss"), ref, rtol=1e-5)
    np.testing.assert_allclose(m(tokens, return_type="loss", loss_per_token=True), ref_tok,
                               atol=ATOL, rtol=0)
    np.testing.assert_allclose(m(PROMPTS, return_type="loss"), ref, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("distinct_pad", [False, True])
def test_get_attention_mask_matches_transformer_lens(ckpt, side, prepend_bos, distinct_pad):
    from transformer_lens.utilities.tokenize_utils import get_attention_mask as tl_mask
    hf, d = ckpt
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    tok.padding_side = side
    if distinct_pad:
        tok.add_special_tokens({"pad_token": "<pad>"})
    else:
        tok.pad_token = tok.eos_token                               # BOS == pad, as GPT-2
    ours = GPT2Tokenizer.from_pretrained(d, padding_side=side)
    if distinct_pad:
        ours.add_special_tokens({"pad_token": "<pad>"})
    else:
        ours.pad_token = ours.eos_token
    assert ours.pad_token_id == tok.pad_token_id
    bos, pad = tok.bos_token_id, tok.pad_token_id
    rows = [[pad, pad, bos, 5, 6], [bos, 5, pad, 6, 7], [5, 6, 7, pad, pad], [pad, 5, bos, pad, pad],
            [bos, bos, bos, bos, bos]]
    tokens = np.array(rows, dtype=np.int64)
    ref = tl_mask(tok, torch.tensor(tokens), prepend_bos).numpy()
    got = utils.get_attention_mask(ours, tokens, prepend_bos)
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(utils.get_attention_mask(ours, torch.tensor(tokens), prepend_bos), ref)
    np.testing.assert_array_equal(utils.get_attention_mask(None, tokens, prepend_bos), np.ones_like(tokens))


@pytest.mark.parametrize("side", ["left", "right"])
def test_hf_api_padding_matches_transformers(ckpt, side):
    """GPT2Tokenizer with padding_side + GPT2LMHeadModel(**batch): the ids, mask and logits
    of transformers on the same files. transformers keeps positions 0..T-1 under left
    padding (so a left-padded prompt's logits are not those of the prompt alone there,
    in both libraries); with position_ids counted from the mask they are."""
    hf, d = ckpt
    tok_ref = transformers.AutoTokenizer.from_pretrained(str(d), padding_side=side)
    tok_ref.pad_token = tok_ref.eos_token
    tok = GPT2Tokenizer.from_pretrained(d, padding_side=side)
    tok.pad_token = tok.eos_token
    ref_batch = tok_ref(PROMPTS, padding=True, return_tensors="pt")
    batch = tok(PROMPTS, padding=True, return_tensors="np")
    np.testing.assert_array_equal(batch["input_ids"], ref_batch["input_ids"].numpy())
    np.testing.assert_array_equal(batch["attention_mask"], ref_batch["attention_mask"].numpy())
    m = GPT2LMHeadModel.from_pretrained(d)
    with torch.no_grad():
        ref = as_np(hf(**ref_batch).logits)
    got = m(**batch).logits
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(got[real], ref[real], atol=ATOL, rtol=0)
    pos = np.maximum(np.cumsum(real, 1) - 1, 0)
    by_mask = m(**batch, position_ids=pos).logits
    for i, p in enumerate(PROMPTS):
        alone = m(tok(p, return_tensors="np")["input_ids"]).logits[0]
        np.testing.assert_allclose(by_mask[i][real[i]], alone, atol=ATOL, rtol=0)
        if side == "right":
            np.testing.assert_allclose(got[i][real[i]], alone, atol=ATOL, rtol=0)


def test_bad_padding_arguments(ckpt):
    hf, d = ckpt
    with pytest.raises(ValueError, match="default_padding_side"):
        HookedTransformer.from_pretrained_no_processing(d, default_padding_side="middle")
    m = HookedTransformer.from_pretrained_no_processing(d)
    with pytest.raises(ValueError, match="padding_side"):
        m(PROMPTS, padding_side="middle")
    with pytest.raises(ValueError, match="padding_side"):
        m.to_tokens(PROMPTS, padding_side="up")
    with pytest.raises(ValueError, match="prepend_bos"):
        m("x", prepend_bos="yes")
    cfg = dict(m.cfg.to_dict())
    cfg.pop("extra")
    with pytest.warns(UserWarning, match="default_padding_side"):
        HookedTransformer(cfg, default_padding_side="left")
    np.testing.assert_allclose(m(PROMPTS[0]), m(m.to_tokens(PROMPTS[0])), atol=0, rtol=0)
    assert mi.utils.get_attention_mask is utils.get_attention_mask
