"""generate / generate_stream against TransformerLens 3.9 and transformers 5.x on the same weights.

Greedy generation is compared token for token: both sides take the argmax of fp32
logits that agree to ~1e-5 (see test_gpt2.py / test_hooked_transformer.py), and the
tiny random models here have no near-ties at that scale among their top logits, so
any difference is a real error (mask, positions, padding, end-token handling).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tl = pytest.importorskip("transformer_lens")
tokenizers = pytest.importorskip("tokenizers")

import mechinterp_c  # noqa: E402
from mechinterp_c import HookedTransformer, HookedTransformerConfig  # noqa: E402
from mechinterp_c.transformers.modeling_gpt2 import GPT2LMHeadModel  # noqa: E402

PROMPTS = ["the cat sat on", "hello", "a dog ran after the cat and"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A byte-level BPE trained here (no hub), GPT-2's special token as BOS, EOS and pad,
    saved and reloaded (TransformerLens re-opens a tokenizer by its path)."""
    bpe = tokenizers.ByteLevelBPETokenizer()
    text = ["the cat sat on the mat", "a dog ran after the cat", "hello world, hello there"] * 20
    bpe.train_from_iterator(text, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    t = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer,
                                             bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                             pad_token="<|endoftext|>")
    d = tmp_path_factory.mktemp("gen_tok")
    t.save_pretrained(d)
    return transformers.AutoTokenizer.from_pretrained(str(d))


@pytest.fixture(scope="module")
def tl_pair(tok):
    """TransformerLens and ours with identical perturbed weights and the same tokenizer."""
    cfg = dict(n_layers=2, d_model=64, n_ctx=48, d_head=16, n_heads=4, d_mlp=256, d_vocab=len(tok),
               act_fn="gelu_new", normalization_type="LN", seed=0)
    tm = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg), tokenizer=tok)
    rng = np.random.default_rng(0)
    sd = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
    for k, v in sd.items():
        if v.dtype == np.float32 and k.split(".")[-1] not in ("mask", "IGNORE"):
            sd[k] = (v + 0.3 * rng.standard_normal(v.shape)).astype(np.float32)
    tm.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    m = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tok)
    m.load_state_dict(sd)
    return tm, m


@pytest.fixture(scope="module")
def hf_pair(tok, tmp_path_factory):
    """A random transformers GPT-2 saved as safetensors and ours loaded from it."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tok), n_positions=48,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("c_attn.weight"):
                p.mul_(6.0)
            if "ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("gen_hf")
    hf.save_pretrained(d)
    return hf, GPT2LMHeadModel.from_pretrained(str(d))


def _tl_generate(tm, inp, **kw):
    torch.manual_seed(0)
    out = tm.generate(inp, verbose=False, **kw)
    return out.numpy() if isinstance(out, torch.Tensor) else out


# ------------------------------------------------------------ TransformerLens
@pytest.mark.parametrize("use_kv", [True, False])
def test_tl_greedy_batch1_string_and_tokens(tl_pair, use_kv):
    tm, m = tl_pair
    kw = dict(max_new_tokens=12, do_sample=False, stop_at_eos=False, use_past_kv_cache=use_kv)
    assert m.generate(PROMPTS[0], verbose=False, **kw) == _tl_generate(tm, PROMPTS[0], **kw)
    toks = m.to_tokens(PROMPTS[2])
    ours = m.generate(toks, verbose=False, **kw)
    np.testing.assert_array_equal(ours, _tl_generate(tm, torch.tensor(toks), **kw))
    assert ours.shape == (1, toks.shape[1] + 12) and ours.dtype == np.int64


@pytest.mark.parametrize("use_kv", [True, False])
def test_tl_greedy_left_padded_batch(tl_pair, use_kv):
    """A list of prompts of different lengths: left-padded, masked, positions skip the padding."""
    tm, m = tl_pair
    kw = dict(max_new_tokens=10, do_sample=False, stop_at_eos=False, use_past_kv_cache=use_kv)
    assert m.generate(PROMPTS, verbose=False, **kw) == _tl_generate(tm, PROMPTS, **kw)
    ours = m.generate(PROMPTS, verbose=False, return_type="tokens", **kw)
    ref = _tl_generate(tm, PROMPTS, return_type="tokens", **kw)
    np.testing.assert_array_equal(ours, ref)
    # each row continues as its prompt alone does
    for i, p in enumerate(PROMPTS):
        alone = m.generate(p, verbose=False, return_type="tokens", **kw)
        np.testing.assert_array_equal(ours[i, -10:], alone[0, -10:])


def test_tl_stop_at_eos_pads_finished_rows(tl_pair):
    """An end token that the model does produce: rows stop, are padded with it, as TL."""
    tm, m = tl_pair
    base = m.generate(PROMPTS, max_new_tokens=6, do_sample=False, stop_at_eos=False,
                      return_type="tokens", verbose=False)
    eos = int(base[1, -4])      # a token row 1 produces mid-way: that row finishes early
    kw = dict(max_new_tokens=6, do_sample=False, stop_at_eos=True, eos_token_id=eos,
              return_type="tokens")
    ours = m.generate(PROMPTS, verbose=False, **kw)
    np.testing.assert_array_equal(ours, _tl_generate(tm, PROMPTS, **kw))


def test_tl_steering_hook_matches(tl_pair):
    """Adding a vector to blocks.1.hook_resid_pre on every step steers both models alike."""
    tm, m = tl_pair
    vec = np.random.default_rng(3).standard_normal(64).astype(np.float32) * 4

    def ours_hook(x, hook):
        x += vec
        return x

    def tl_hook(x, hook):
        return x + torch.tensor(vec)

    kw = dict(max_new_tokens=10, do_sample=False, stop_at_eos=False, return_type="tokens")
    with m.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", ours_hook)]):
        ours = m.generate(PROMPTS, verbose=False, **kw)
    with tm.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", tl_hook)]):
        ref = _tl_generate(tm, PROMPTS, **kw)
    np.testing.assert_array_equal(ours, ref)
    plain = m.generate(PROMPTS, verbose=False, **kw)
    assert not np.array_equal(plain, ours), "the steering vector changed nothing"
    # add_hook: fires on every step too, and the hook is gone after reset_hooks
    # (with the KV cache, TransformerLens's default, a step after the first runs one position)
    calls = []
    m.add_hook("blocks.0.hook_resid_pre", lambda x, hook: calls.append(x.shape[1]))
    m.generate(PROMPTS[0], max_new_tokens=4, do_sample=False, stop_at_eos=False, verbose=False)
    m.generate(PROMPTS[0], max_new_tokens=4, do_sample=False, stop_at_eos=False, verbose=False,
               use_past_kv_cache=False)
    m.reset_hooks()
    n0 = m.to_tokens(PROMPTS[0]).shape[1]
    assert calls == [n0, 1, 1, 1] + [n0, n0 + 1, n0 + 2, n0 + 3]
    m.generate(PROMPTS[0], max_new_tokens=2, do_sample=False, stop_at_eos=False, verbose=False)
    assert len(calls) == 8


def test_tl_sampling_seeded_and_top_k1_is_greedy(tl_pair):
    tm, m = tl_pair
    greedy = m.generate(PROMPTS, max_new_tokens=8, do_sample=False, stop_at_eos=False,
                        return_type="tokens", verbose=False)
    k1 = m.generate(PROMPTS, max_new_tokens=8, do_sample=True, top_k=1, stop_at_eos=False,
                    return_type="tokens", verbose=False, seed=5)
    np.testing.assert_array_equal(k1, greedy)
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, freq_penalty=0.5,
              stop_at_eos=False, return_type="tokens", verbose=False)
    a, b = m.generate(PROMPTS, seed=11, **kw), m.generate(PROMPTS, seed=11, **kw)
    np.testing.assert_array_equal(a, b)
    c = m.generate(PROMPTS, seed=12, **kw)
    assert not np.array_equal(a, c)
    n = mechinterp_c.get_num_threads()
    try:
        mechinterp_c.set_num_threads(1)
        one = m.generate(PROMPTS, seed=11, **kw)
        mechinterp_c.set_num_threads(2)
        two = m.generate(PROMPTS, seed=11, **kw)
    finally:
        mechinterp_c.set_num_threads(n)
    np.testing.assert_array_equal(one, a)
    np.testing.assert_array_equal(two, a)


def test_tl_generate_stream(tl_pair):
    tm, m = tl_pair
    kw = dict(max_new_tokens=9, do_sample=False, stop_at_eos=False, verbose=False)
    full = m.generate(PROMPTS, return_type="tokens", **kw)
    chunks = list(m.generate_stream(PROMPTS, max_tokens_per_yield=4, **kw))
    T = full.shape[1] - 9
    # TL counts the prompt in the first chunk: it comes out as soon as one token is added
    assert [c.shape[1] for c in chunks] == [T + 1, 4, 4]
    np.testing.assert_array_equal(np.concatenate(chunks, 1), full)


def test_tl_bad_input_clear_errors_model_usable(tl_pair):
    tm, m = tl_pair
    before = m.generate(PROMPTS[0], max_new_tokens=3, do_sample=False, stop_at_eos=False,
                        verbose=False)
    with pytest.raises(ValueError, match="exceeds the context of 48"):
        m.generate(PROMPTS[0], max_new_tokens=48, verbose=False)
    with pytest.raises(ValueError, match="prompt is empty"):
        m.generate("", prepend_bos=False, max_new_tokens=2, verbose=False)
    with pytest.raises(ValueError, match="prompt is empty"):
        m.generate(np.zeros((1, 0), np.int64), max_new_tokens=2, verbose=False)
    with pytest.raises(ValueError, match=r"token id 100000 at \[0, 1\] is outside the vocabulary"):
        m.generate(np.array([[1, 100000]]), max_new_tokens=2, verbose=False)
    with pytest.raises(ValueError, match="list of prompts is empty"):
        m.generate([], verbose=False)
    with pytest.raises(TypeError, match="only strings"):
        m.generate(["a", 3], verbose=False)
    with pytest.raises(ValueError, match="top_k"):
        m.generate(PROMPTS[0], top_k=0, verbose=False)
    with pytest.raises(ValueError, match="top_p"):
        m.generate(PROMPTS[0], top_p=1.5, verbose=False)
    with pytest.raises(ValueError, match="return_type"):
        m.generate(PROMPTS[0], return_type="embeds", verbose=False)
    with pytest.raises(TypeError, match="input embeddings are not supported"):
        m.generate(np.zeros((1, 3, 64), np.float32), verbose=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(PROMPTS[0], max_new_tokens=-1, verbose=False)
    after = m.generate(PROMPTS[0], max_new_tokens=3, do_sample=False, stop_at_eos=False,
                       verbose=False)
    assert after == before


def test_tl_no_tokenizer_tokens_only():
    """No tokenizer: token input works with an explicit eos_token_id, strings are refused."""
    m = HookedTransformer(dict(n_layers=1, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64,
                               d_vocab=50, act_fn="gelu_new", normalization_type="LN"))
    out = m.generate(np.array([[1, 2, 3]]), max_new_tokens=4, do_sample=False, eos_token_id=0,
                     verbose=False)
    assert out.shape[0] == 1 and 4 <= out.shape[1] <= 7
    with pytest.raises(ValueError, match="needs eos_token_id"):
        m.generate(np.array([[1, 2, 3]]), max_new_tokens=2, verbose=False)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        m.generate("hello", verbose=False)


def test_tl_verbose_progress_bar(tl_pair, capsys):
    pytest.importorskip("tqdm")
    tm, m = tl_pair
    m.generate(PROMPTS[0], max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=True)
    assert "3/3" in capsys.readouterr().err


# -------------------------------------------------------------- Hugging Face
def _hf_generate(hf, ids, mask=None, **kw):
    with torch.no_grad():
        extra = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return hf.generate(torch.tensor(ids), **extra, **kw).numpy()


@pytest.mark.parametrize("use_cache", [True, False])
def test_hf_greedy_batch1_and_left_padded(hf_pair, tok, use_cache):
    """transformers generates with its KV cache on (its default) in both cases."""
    hf, m = hf_pair
    kw = dict(max_new_tokens=12, do_sample=False)
    ids = np.array([tok.encode(PROMPTS[2])])
    np.testing.assert_array_equal(m.generate(ids, use_cache=use_cache, **kw), _hf_generate(hf, ids, **kw))
    tok.padding_side = "left"
    try:
        enc = tok(PROMPTS, padding=True, return_tensors="np")
    finally:
        tok.padding_side = "right"
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any()
    ours = m.generate(ids, attention_mask=mask, use_cache=use_cache, **kw)
    np.testing.assert_array_equal(ours, _hf_generate(hf, ids, mask, **kw))
    # positions from the mask: each padded row continues as its prompt alone
    for i, p in enumerate(PROMPTS):
        alone = m.generate(np.array([tok.encode(p)]), use_cache=use_cache, **kw)
        np.testing.assert_array_equal(ours[i, -12:], alone[0, -12:])


def test_hf_eos_pad_and_repetition_penalty(hf_pair, tok):
    hf, m = hf_pair
    ids = np.array([tok.encode(PROMPTS[0]), tok.encode("the dog ran on")])
    assert ids.shape[1] == len(tok.encode(PROMPTS[0]))
    base = m.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    eos = int(base[0, -5])
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=7)
    np.testing.assert_array_equal(m.generate(ids, **kw), _hf_generate(hf, ids, **kw))
    kw = dict(max_new_tokens=8, do_sample=False, repetition_penalty=1.8)
    ours = m.generate(ids, **kw)
    np.testing.assert_array_equal(ours, _hf_generate(hf, ids, **kw))
    assert not np.array_equal(ours, base)


def test_hf_sampling_seeded_topk1_num_return_sequences(hf_pair, tok):
    hf, m = hf_pair
    ids = np.array([tok.encode(PROMPTS[0])])
    greedy = m.generate(ids, max_new_tokens=8, do_sample=False)
    k1 = m.generate(ids, max_new_tokens=8, do_sample=True, top_k=1, seed=3)
    np.testing.assert_array_equal(k1, greedy)
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.3, top_p=0.95, num_return_sequences=3)
    a = m.generate(ids, seed=9, **kw)
    assert a.shape == (3, ids.shape[1] + 8)
    np.testing.assert_array_equal(a, m.generate(ids, seed=9, **kw))
    np.testing.assert_array_equal(m.generate(ids, generator=np.random.default_rng(1), **kw),
                                  m.generate(ids, generator=np.random.default_rng(1), **kw))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    np.testing.assert_array_equal(m.generate(ids, generator=g1, **kw), m.generate(ids, generator=g2, **kw))
    assert len({tuple(r) for r in a}) > 1, "three samples all equal"


def test_hf_module_hook_fires_every_step(hf_pair, tok):
    hf, m = hf_pair
    ids = np.array([tok.encode(PROMPTS[0])])
    seen, ref_seen = [], []
    h = m.transformer.h[1].register_forward_hook(lambda mod, args, out: seen.append(1))
    r = hf.transformer.h[1].register_forward_hook(lambda mod, args, out: ref_seen.append(1))
    try:
        m.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
        _hf_generate(hf, ids, max_new_tokens=5, do_sample=False)
    finally:
        h.remove()
        r.remove()
    assert len(seen) == 5 == len(ref_seen)


def test_hf_bad_input_clear_errors_model_usable(hf_pair, tok):
    hf, m = hf_pair
    ids = np.array([tok.encode(PROMPTS[0])])
    before = m.generate(ids, max_new_tokens=3)
    with pytest.raises(ValueError, match="exceeds the context of 48"):
        m.generate(ids, max_new_tokens=48)
    with pytest.raises(ValueError, match="prompt is empty"):
        m.generate(np.zeros((1, 0), np.int64), max_new_tokens=3)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.generate(np.array([[5, len(tok) + 3]]), max_new_tokens=3)
    with pytest.raises(ValueError, match="attention_mask"):
        m.generate(ids, attention_mask=np.ones((1, 2)), max_new_tokens=3)
    with pytest.raises(ValueError, match="temperature"):
        m.generate(ids, do_sample=True, temperature=0.0, max_new_tokens=3)
    with pytest.raises(ValueError, match="num_return_sequences"):
        m.generate(ids, num_return_sequences=2, max_new_tokens=3)
    with pytest.raises(ValueError, match="seed= or generator="):
        m.generate(ids, do_sample=True, seed=1, generator=torch.Generator(), max_new_tokens=3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        m.generate(ids, num_beams=4)
    np.testing.assert_array_equal(m.generate(ids, max_new_tokens=3), before)


def test_hf_torch_array_type_returns_tensor(hf_pair, tok):
    """Under set_array_type('torch') the sequences come back as a torch tensor, same ids."""
    hf, m = hf_pair
    ids = np.array([tok.encode(PROMPTS[0])])
    plain = m.generate(ids, max_new_tokens=4)
    mechinterp_c.set_array_type("torch")
    try:
        t = m.generate(torch.tensor(ids), max_new_tokens=4)
    finally:
        mechinterp_c.set_array_type("numpy")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    np.testing.assert_array_equal(t.numpy(), plain)
