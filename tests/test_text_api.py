"""Text in, text out: HookedTransformer's tokenizer methods and the text helpers of
``mechinterp_c.utils`` against TransformerLens 3.9 on the same weights and tokenizer
files (same values within fp32 tolerance, same strings, an error where TL raises)."""
import re

import numpy as np
import pytest

from text_reference import PROMPTS, as_np, make_checkpoint, tl_model, torch, transformers

from mechinterp_c import HookedTransformer, utils
from mechinterp_c.transformers import GPT2Tokenizer

# fp32 on both sides, different summation orders, 2 layers of width 64: ~1e-6 apart
ATOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    return make_checkpoint(d), d


@pytest.fixture(scope="module")
def pair(ckpt):
    hf, d = ckpt
    return HookedTransformer.from_pretrained_no_processing(d), tl_model(d, hf)


def _zero_dim0(act, hook):
    act[..., 0] = 0          # the same edit in NumPy and torch
    return act


def test_text_forward_cache_hooks_and_loss(pair):
    m, tl = pair
    text = PROMPTS[2]
    with torch.no_grad():
        ref_logits, ref_cache = tl.run_with_cache(text)
        ref_hooked = tl.run_with_hooks(PROMPTS, fwd_hooks=[("blocks.0.hook_resid_mid", _zero_dim0)])
        ref_loss = tl(text, return_type="loss").item()
        ref_lf = as_np(tl.loss_fn(ref_logits, tl.to_tokens(text), per_token=True))
    np.testing.assert_allclose(m(text), as_np(ref_logits), atol=ATOL, rtol=0)
    logits, cache = m.run_with_cache(text)
    np.testing.assert_allclose(logits, as_np(ref_logits), atol=ATOL, rtol=0)
    for name in ("hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "ln_final.hook_normalized"):
        np.testing.assert_allclose(cache[name], as_np(ref_cache[name]), atol=ATOL, rtol=0, err_msg=name)
    hooked = m.run_with_hooks(PROMPTS, fwd_hooks=[("blocks.0.hook_resid_mid", _zero_dim0)])
    np.testing.assert_allclose(hooked, as_np(ref_hooked), atol=ATOL, rtol=0)
    np.testing.assert_allclose(m(text, return_type="loss"), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(m.loss_fn(logits, m.to_tokens(text), per_token=True), ref_lf,
                               atol=ATOL, rtol=0)
    assert m.loss_fn(logits, m.to_tokens(text)).dtype == np.float32


def test_token_helpers_match_transformer_lens(pair):
    m, tl = pair
    text = "the cat sat on the mat and the cat"
    assert m.to_single_token(" the") == tl.to_single_token(" the")
    tid = m.to_single_token(" the")
    assert m.to_single_str_token(tid) == tl.to_single_str_token(tid) == " the"
    for mode in ("first", "last"):
        assert m.get_token_position(" the", text, mode=mode) == tl.get_token_position(" the", text, mode=mode)
        assert m.get_token_position(tid, m.to_tokens(text), mode=mode) == \
            tl.get_token_position(tid, tl.to_tokens(text), mode=mode)
    assert m.get_token_position(" the", text, prepend_bos=False) == \
        tl.get_token_position(" the", text, prepend_bos=False)
    toks = m.to_tokens(PROMPTS)
    assert m.to_str_tokens(text) == tl.to_str_tokens(text)
    assert m.to_str_tokens(text, prepend_bos=False) == tl.to_str_tokens(text, prepend_bos=False)
    assert m.to_str_tokens(PROMPTS) == tl.to_str_tokens(PROMPTS)
    assert m.to_str_tokens(toks[1]) == tl.to_str_tokens(torch.tensor(toks[1]))
    assert m.to_str_tokens(toks[1:2]) == tl.to_str_tokens(torch.tensor(toks[1:2]))
    assert m.to_str_tokens(list(toks)) == tl.to_str_tokens(list(torch.tensor(toks)))
    # a [batch, pos] array: one list per row (TransformerLens asserts on it)
    assert m.to_str_tokens(toks) == [tl.to_str_tokens(torch.tensor(r)) for r in toks]
    assert m.to_string(toks) == tl.to_string(torch.tensor(toks))
    assert m.to_string(toks[0]) == tl.to_string(torch.tensor(toks[0]))
    np.testing.assert_array_equal(m.to_tokens(text, truncate=True), tl.to_tokens(text).numpy())


def test_token_helper_errors_where_transformer_lens_raises(pair):
    m, tl = pair
    text = "the cat sat"
    cases = [
        lambda x: x.to_single_token("the cat sat"),                 # several tokens
        lambda x: x.get_token_position(" time", text),              # absent
        lambda x: x.get_token_position(" the", "the cat sat on the", mode="middle"),
        lambda x: x.get_token_position(" the", x.to_tokens(PROMPTS)),   # batch of 4
        lambda x: x.to_str_tokens(3.5),
        lambda x: x.to_single_str_token("7"),
    ]
    for i, case in enumerate(cases):
        with pytest.raises((AssertionError, ValueError)):
            case(tl)
        with pytest.raises((ValueError, TypeError), match=r"."):
            case(m)
    np.testing.assert_allclose(m(text), m(m.to_tokens(text)), atol=0, rtol=0)   # still usable


def test_set_tokenizer_and_vocab_from_tokenizer(ckpt, pair):
    hf, d = ckpt
    m, tl = pair
    cfg = dict(m.cfg.to_dict())
    cfg.pop("extra")
    bare = HookedTransformer(dict(cfg, init_weights=False))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        bare("the cat")
    bare.set_tokenizer(GPT2Tokenizer.from_pretrained(d), default_padding_side="left")
    assert bare.tokenizer.padding_side == "left"
    assert bare.tokenizer.pad_token == bare.tokenizer.eos_token == "<|endoftext|>"
    bare.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(bare("the cat"), m("the cat"))
    # (TransformerLens reloads the tokenizer with add_bos_token=True; ours prepends BOS itself)
    assert bare.cfg.tokenizer_prepends_bos is False
    # d_vocab from the tokenizer, as TransformerLens
    inferred = HookedTransformer(dict(cfg, d_vocab=-1, d_vocab_out=-1),
                                 tokenizer=GPT2Tokenizer.from_pretrained(d))
    assert inferred.cfg.d_vocab == inferred.cfg.d_vocab_out == m.cfg.d_vocab
    with pytest.raises(TypeError, match="tokenizer"):
        bare.set_tokenizer(object())


def test_tokens_to_residual_directions_and_logit_attrs(pair):
    m, tl = pair
    W = m.to_tokens(PROMPTS)
    for arg in (" the", 5, np.array(7), np.array([[3, 4], [5, 6]]), W[0]):
        targ = torch.tensor(arg) if isinstance(arg, np.ndarray) else arg
        got = m.tokens_to_residual_directions(arg)
        ref = as_np(tl.tokens_to_residual_directions(targ))
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=0, rtol=0)
    text = "the cat sat on the"
    _, cache = m.run_with_cache(text)
    with torch.no_grad():
        _, ref_cache = tl.run_with_cache(text)
        stack, labels = ref_cache.decompose_resid(return_labels=True)
        ref = as_np(ref_cache.logit_attrs(stack, " mat", " the"))
    got_stack, got_labels = cache.decompose_resid(return_labels=True)
    assert got_labels == labels
    got = cache.logit_attrs(got_stack, " mat", " the")
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


def _normalise(text):
    return " ".join(text.split())


@pytest.mark.parametrize("answer", [" mat", ["mat", " the", "time"], "mat and the"])
def test_test_prompt_prints_what_transformer_lens_prints(pair, capsys, answer):
    from transformer_lens.utilities.exploratory_utils import test_prompt as tl_test_prompt
    m, tl = pair
    with torch.no_grad():
        tl_test_prompt("the cat sat on the", answer, tl, top_k=5)
    ref = _normalise(capsys.readouterr().out)
    utils.test_prompt("the cat sat on the", answer, m, top_k=5)
    got = _normalise(capsys.readouterr().out)
    # numbers printed to 2 decimals: compare the text with them taken out, and them to 0.011
    num = r"-?\d+\.\d+%?"
    assert re.sub(num, "#", got) == re.sub(num, "#", ref)
    for g, r in zip(re.findall(num, got), re.findall(num, ref)):
        assert abs(float(g.rstrip("%")) - float(r.rstrip("%"))) <= 0.011, (g, r)


def test_sample_logits_matches_transformer_lens():
    from transformer_lens.utilities.logits_utils import sample_logits as tl_sample
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 8)).astype(np.float32) * 2
    tokens = rng.integers(0, 8, size=(2, 5))
    tl_logits, tl_tokens = torch.tensor(logits), torch.tensor(tokens)
    np.testing.assert_array_equal(utils.sample_logits(logits, temperature=0.0),
                                  tl_sample(tl_logits, temperature=0.0).numpy())
    np.testing.assert_array_equal(
        utils.sample_logits(logits, temperature=0.0, repetition_penalty=2.0, tokens=tokens),
        tl_sample(tl_logits, temperature=0.0, repetition_penalty=2.0, tokens=tl_tokens).numpy())
    n = 20000
    torch.manual_seed(0)
    for kw in (dict(), dict(top_k=3), dict(top_p=0.6, temperature=0.7), dict(top_k=100),
               dict(freq_penalty=0.5, repetition_penalty=1.3)):
        big = np.repeat(logits, n // 2, 0)
        tkw = dict(kw, tokens=torch.tensor(np.repeat(tokens, n // 2, 0))) if "freq_penalty" in kw else kw
        okw = dict(kw, tokens=np.repeat(tokens, n // 2, 0)) if "freq_penalty" in kw else kw
        ref = tl_sample(torch.tensor(big), **tkw).numpy()
        got = utils.sample_logits(big, rng=np.random.default_rng(1), **okw)
        for row in range(2):
            r = np.bincount(ref[row::2], minlength=8) / (n // 2)
            g = np.bincount(got[row::2], minlength=8) / (n // 2)
            if "top_k" in kw or "top_p" in kw:       # the same tokens filtered out
                np.testing.assert_array_equal(g > 0, r > 0, err_msg=str(kw))
            # 10000 draws per row on each side: a frequency's standard error is <= 0.005
            np.testing.assert_allclose(g, r, atol=0.025, err_msg=str(kw))
    np.random.seed(5)
    a = utils.sample_logits(logits)
    np.random.seed(5)
    np.testing.assert_array_equal(utils.sample_logits(logits), a)
    with pytest.raises(ValueError, match="top_k"):
        utils.sample_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        utils.sample_logits(logits, top_p=1.5)
    with pytest.raises(ValueError, match="freq_penalty"):
        utils.sample_logits(logits, freq_penalty=1.0)


def test_tokenize_and_concatenate_matches_transformer_lens(ckpt):
    datasets = pytest.importorskip("datasets")
    from transformer_lens.utilities.tokenize_utils import tokenize_and_concatenate as tl_tac
    hf, d = ckpt
    texts = [f"{p} number {i}" for i in range(30) for p in PROMPTS][:100] + [""]
    ds = datasets.Dataset.from_dict({"text": texts, "meta": list(range(len(texts)))})
    for kw in (dict(max_length=16), dict(max_length=9, add_bos_token=False), dict(max_length=4000)):
        ref = tl_tac(ds, transformers.AutoTokenizer.from_pretrained(str(d)), num_proc=None, **kw)
        ref = np.asarray(ref.with_format("numpy")[:]["tokens"])
        got = utils.tokenize_and_concatenate(texts, GPT2Tokenizer.from_pretrained(d), **kw)["tokens"]
        np.testing.assert_array_equal(got, ref)
        got_ds = utils.tokenize_and_concatenate(ds, GPT2Tokenizer.from_pretrained(d), **kw)
        assert got_ds.column_names == ["tokens"]
        np.testing.assert_array_equal(np.asarray(got_ds[:]["tokens"]), ref)
    with pytest.raises(KeyError, match="column"):
        utils.tokenize_and_concatenate(ds, GPT2Tokenizer.from_pretrained(d), column_name="body")
    with pytest.raises(TypeError, match="strings"):
        utils.tokenize_and_concatenate([1, 2], GPT2Tokenizer.from_pretrained(d))
