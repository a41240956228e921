"""GPT-2 as a Hugging Face drop-in (mechinterp_c.transformers.modeling_gpt2) vs transformers.

Reference: random-initialised ``transformers.GPT2LMHeadModel``s saved with
``save_pretrained`` (safetensors) into tmp dirs, run in float32 by torch.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mechinterp_c.transformers import modeling_gpt2 as mg  # noqa: E402
from mechinterp_c.transformers.modeling_gpt2 import GPT2LMHeadModel  # noqa: E402
from mechinterp_c.hooked_transformer import HookedTransformer  # noqa: E402

# fp32 on both sides, different summation orders (blocked GEMM vs MKL/oneDNN):
# per-layer rounding ~1e-7 relative, grown over a few layers -> abs 2e-4 on
# O(1) activations is several hundred ulps of slack yet catches any real error.
ATOL = 2e-4


def _save(tmp_path_factory, name, qkv_scale=8.0, **kw):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(bos_token_id=0, eos_token_id=0, **kw)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    # larger-than-init weights so that attention patterns are not uniform
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("c_attn.weight"):
                p.mul_(qkv_scale)
            if "ln_" in n:
                p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp(name)
    hf.save_pretrained(d)
    return hf, d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _save(tmp_path_factory, "tiny", n_layer=3, n_embd=64, n_head=4, vocab_size=120,
                 n_positions=40)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """GPT-2-small's real shapes: 12 layers x 768, 12 heads, vocab 50257, 1024 positions."""
    # 2x the init scale of c_attn: attention far from uniform, yet not so sharp that
    # 12 layers of fp32 reordering noise are amplified past the tolerance
    return _save(tmp_path_factory, "small", qkv_scale=2.0, n_layer=12, n_embd=768, n_head=12,
                 vocab_size=50257, n_positions=1024)


def _ids(vocab, shape, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def _hf_logits(hf, ids, mask=None):
    with torch.no_grad():
        kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
        return hf(torch.tensor(ids), **kw).logits.numpy()


def test_tiny_logits_and_output_object(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(str(d))
    assert m.eval() is m
    assert (m.config.n_layer, m.config.n_embd, m.config.n_head) == (3, 64, 4)
    ids = _ids(120, (2, 11))
    out = m(ids)
    assert out.logits.shape == (2, 11, 120)
    assert out["logits"] is out.logits or np.array_equal(out["logits"], out.logits)
    np.testing.assert_allclose(out.logits, _hf_logits(hf, ids), atol=ATOL, rtol=0)
    # model(**batch) and a 1-D input
    out2 = m(**{"input_ids": ids, "attention_mask": np.ones_like(ids)})
    np.testing.assert_allclose(out2.logits, out.logits, atol=1e-6, rtol=0)
    np.testing.assert_allclose(m(ids[0]).logits[0], out.logits[0], atol=1e-6, rtol=0)
    # a tokenizer's BatchEncoding of torch tensors, as the seeds pass it
    out3 = m(**{"input_ids": torch.tensor(ids), "attention_mask": torch.ones(2, 11, dtype=torch.long)})
    np.testing.assert_allclose(out3.logits, out.logits, atol=1e-6, rtol=0)


def test_weights_are_hf_layout_views(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    for l in range(3):
        h = m.transformer.h[l]
        for name, arr in [("attn.c_attn.weight", h.attn.c_attn.weight), ("attn.c_attn.bias", h.attn.c_attn.bias),
                          ("attn.c_proj.weight", h.attn.c_proj.weight), ("mlp.c_fc.weight", h.mlp.c_fc.weight),
                          ("mlp.c_proj.weight", h.mlp.c_proj.weight), ("ln_1.weight", h.ln_1.weight),
                          ("ln_2.bias", h.ln_2.bias)]:
            np.testing.assert_array_equal(arr, sd[f"transformer.h.{l}.{name}"])
    np.testing.assert_array_equal(m.lm_head.weight, sd["lm_head.weight"])
    np.testing.assert_array_equal(m.transformer.wpe.weight, sd["transformer.wpe.weight"])
    # a write through the view changes what the C core computes
    ids = _ids(120, (1, 6))
    before = m(ids).logits.copy()
    m.transformer.h[1].attn.c_attn.bias[:] += 0.5
    with torch.no_grad():
        hf.transformer.h[1].attn.c_attn.bias += 0.5
    try:
        after = m(ids).logits
        assert np.abs(after - before).max() > 1e-3
        np.testing.assert_allclose(after, _hf_logits(hf, ids), atol=ATOL, rtol=0)
    finally:
        with torch.no_grad():
            hf.transformer.h[1].attn.c_attn.bias -= 0.5


def _collect_hf(hf, ids, mask=None):
    """c_attn outputs, c_proj inputs, c_fc outputs, mlp.c_proj inputs, ln_1 outputs of HF."""
    got, hs = {}, []
    for l, blk in enumerate(hf.transformer.h):
        hs.append(blk.attn.c_attn.register_forward_hook(
            lambda mod, i, o, l=l: got.__setitem__(("c_attn", l), (o.numpy().copy(), i[0].numpy().copy()))))
        hs.append(blk.attn.c_proj.register_forward_pre_hook(
            lambda mod, i, l=l: got.__setitem__(("c_proj_in", l), i[0].numpy().copy())))
        hs.append(blk.mlp.c_fc.register_forward_hook(
            lambda mod, i, o, l=l: got.__setitem__(("c_fc", l), o.numpy().copy())))
        hs.append(blk.mlp.c_proj.register_forward_pre_hook(
            lambda mod, i, l=l: got.__setitem__(("mlp_c_proj_in", l), i[0].numpy().copy())))
        hs.append(blk.ln_2.register_forward_hook(
            lambda mod, i, o, l=l: got.__setitem__(("ln_2", l), o.numpy().copy())))
    logits = _hf_logits(hf, ids, mask)
    for h in hs:
        h.remove()
    return got, logits


def _collect_mi(m, ids, mask=None):
    got, hs = {}, []
    for l, blk in enumerate(m.transformer.h):
        # the seed's call chain: output.detach().numpy()
        hs.append(blk.attn.c_attn.register_forward_hook(
            lambda mod, i, o, l=l: got.__setitem__(("c_attn", l), (o.detach().numpy(), i[0]))))
        hs.append(blk.attn.c_proj.register_forward_pre_hook(
            lambda mod, i, l=l: got.__setitem__(("c_proj_in", l), i[0].cpu().numpy())))
        hs.append(blk.mlp.c_fc.register_forward_hook(
            lambda mod, i, o, l=l: got.__setitem__(("c_fc", l), o)))
        hs.append(blk.mlp.c_proj.register_forward_pre_hook(
            lambda mod, i, l=l: got.__setitem__(("mlp_c_proj_in", l), i[0])))
        hs.append(blk.ln_2.register_forward_hook(
            lambda mod, i, o, l=l: got.__setitem__(("ln_2", l), o)))
    logits = m(ids, attention_mask=mask).logits
    for h in hs:
        h.remove()
    return got, logits


def test_hooks_every_layer_match_hf(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(120, (2, 9), seed=3)
    ref, ref_logits = _collect_hf(hf, ids)
    got, logits = _collect_mi(m, ids)
    assert set(got) == set(ref)
    for k in ref:
        if k[0] == "c_attn":
            assert got[k][0].shape == (2, 9, 192)
            np.testing.assert_allclose(got[k][0], ref[k][0], atol=ATOL, rtol=0, err_msg=str(k))
            np.testing.assert_allclose(got[k][1], ref[k][1], atol=ATOL, rtol=0, err_msg=str(k))
        else:
            np.testing.assert_allclose(got[k], ref[k], atol=ATOL, rtol=0, err_msg=str(k))
    # hooks removed: a later pass calls nothing and gives the same logits
    np.testing.assert_allclose(m(ids).logits, logits, atol=0, rtol=0)
    # arrays kept from the hooks are still valid after later calls (arena views)
    np.testing.assert_allclose(got[("c_attn", 2)][0], ref[("c_attn", 2)][0], atol=ATOL, rtol=0)


def _ablate_hook(n_tokens, n_heads, head_dim, n_embd):
    """The seed's hook2ablate, verbatim apart from the names."""
    def hook2ablate(module, input):
        head_tensor = input[0].view(1, n_tokens, n_heads, head_dim)
        head_tensor[:, -2, 4 % n_heads, :] = 0
        head_tensor = head_tensor.view(1, n_tokens, n_embd)
        return tuple(head_tensor, *input[1:])
    return hook2ablate


def test_seed_head_ablation_matches_hf(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(120, (1, 8), seed=5)
    T, H, D = 8, 4, 64
    clean = m(ids).logits.copy()
    for layer in range(3):
        h1 = hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(_ablate_hook(T, H, D // H, D))
        ref = _hf_logits(hf, ids)
        h1.remove()
        h2 = m.transformer.h[layer].attn.c_proj.register_forward_pre_hook(_ablate_hook(T, H, D // H, D))
        got = m(ids).logits
        h2.remove()
        assert np.abs(got - clean).max() > 1e-4    # the ablation does something
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0, err_msg=f"layer {layer}")


def test_ln_and_lm_head_hooks_edit_like_hf(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(120, (1, 7), seed=8)

    def double_ln(mod, inp, out):      # LayerNorm output edited in place
        out[:, 2] *= 2.0

    def shift_pre(mod, inp):           # c_fc input replaced by a returned array
        return (inp[0] + 0.25,)

    hs = [hf.transformer.h[1].ln_1.register_forward_hook(lambda mo, i, o: double_ln(mo, i, o)),
          hf.transformer.h[0].mlp.c_fc.register_forward_pre_hook(shift_pre)]
    ref = _hf_logits(hf, ids)
    for h in hs:
        h.remove()
    hs = [m.transformer.h[1].ln_1.register_forward_hook(double_ln),
          m.transformer.h[0].mlp.c_fc.register_forward_pre_hook(shift_pre)]
    got = m(ids).logits
    for h in hs:
        h.remove()
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    # lm_head forward hook sees the logits
    seen = {}
    h = m.lm_head.register_forward_hook(lambda mo, i, o: seen.setdefault("x", o.copy()))
    out = m(ids).logits
    h.remove()
    np.testing.assert_array_equal(seen["x"], out)


def test_padded_batches_match_hf_at_every_position(tiny):
    """Right padding (the seeds' pad_token = eos_token batches): every position, padded
    query rows included, matches HF, since a padded row still attends to the real
    tokens before it and HF adds wpe there too (the model puts back the position
    embedding the C core zeroes at padded tokens). Left padding: the leading padded
    rows attend to nothing; HF's default (SDPA) attention gives them a zero attention
    output and so does the C core, so they match too (HF's "eager" attention instead
    spreads them uniformly over every key, future ones included: not compared)."""
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(120, (3, 10), seed=11)
    lengths = [10, 6, 3]
    mask = np.zeros((3, 10), np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0       # pad_token = eos_token
    ref_acts, ref = _collect_hf(hf, ids, mask)
    got_acts, got = _collect_mi(m, ids, mask)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    for key in ref_acts:
        r, g = ref_acts[key], got_acts[key]
        r, g = (r[0], g[0]) if isinstance(r, tuple) else (r, g)
        np.testing.assert_allclose(g, r, atol=ATOL, rtol=0, err_msg=str(key))
    # the padded rows do depend on the padding (not a copy of the unpadded run)
    assert np.abs(got[2, 3:] - m(ids).logits[2, 3:]).max() > 1e-3
    # left padding, every position
    left = np.zeros((3, 10), np.int64)
    for b, n in enumerate(lengths):
        left[b, 10 - n:] = 1
    assert hf.config._attn_implementation == "sdpa"
    np.testing.assert_allclose(m(ids, attention_mask=left).logits, _hf_logits(hf, ids, left),
                               atol=ATOL, rtol=0)
    # a forward hook on wpe sees HF's position embedding at every position
    seen = []
    h = m.transformer.wpe.register_forward_hook(lambda mod, inp, out: seen.append(np.array(out)))
    m(ids, attention_mask=mask)
    h.remove()
    np.testing.assert_array_equal(seen[0], np.broadcast_to(hf.transformer.wpe.weight[:10].detach().numpy(),
                                                           (3, 10, 64)))


def test_gpt2_small_shapes_logits_and_hooks(small):
    hf, d = small
    m = GPT2LMHeadModel.from_pretrained(d)
    assert m.config.vocab_size == 50257 and m.config.n_layer == 12
    ids = _ids(50257, (1, 5), seed=2)
    ref_acts, ref = _collect_hf(hf, ids)
    got_acts, got = _collect_mi(m, ids)
    # 12 layers of width 768 and a 50257-way unembedding: fp32 sums of 768-3072
    # terms in a different order; 1e-3 abs on logits of magnitude ~1-10.
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=0)
    for l in range(12):
        np.testing.assert_allclose(got_acts[("c_attn", l)][0], ref_acts[("c_attn", l)][0], atol=1e-3, rtol=0)
        np.testing.assert_allclose(got_acts[("c_proj_in", l)], ref_acts[("c_proj_in", l)], atol=1e-3, rtol=0)


def _rss_anon_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no RssAnon in /proc/self/status")


def test_gpt2_small_load_copies_no_weights(small):
    """Zero-copy load: the 475 MiB of GPT-2-small weights are read in place from the
    file mapping (page cache, not anonymous memory). A loader that copied them (or a
    separate W_U = wte^T, 147 MiB) would add that much anonymous memory."""
    import gc
    hf, d = small
    gc.collect()
    before = _rss_anon_mib()
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(50257, (1, 4), seed=3)
    logits = m(ids).logits
    grown = _rss_anon_mib() - before
    # the pass's arena for [1, 4] and Python objects: a few MiB
    assert grown < 64, f"anonymous memory grew by {grown:.0f} MiB"
    np.testing.assert_allclose(logits, _hf_logits(hf, ids), atol=1e-3, rtol=0)
    assert m._ht._core.n_external == 2 + 12 * 12 + 2 and m._ht._core.tied_unembed


def test_hooked_transformer_from_pretrained_log_probs(tiny):
    hf, d = tiny
    ids = _ids(120, (2, 9), seed=13)
    ref = torch.log_softmax(torch.tensor(_hf_logits(hf, ids), dtype=torch.float64), -1).numpy()
    for processing in (True, False):
        ht = HookedTransformer.from_pretrained(
            str(d), fold_ln=processing, center_writing_weights=processing,
            center_unembed=processing, fold_value_biases=processing)
        if processing:
            assert ht.cfg.normalization_type == "LNPre"
        lg = np.asarray(ht(ids), dtype=np.float64)
        lp = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1, keepdims=True)
        # processing only re-associates fp32 sums: log-probs agree to fp32 noise
        np.testing.assert_allclose(lp, ref, atol=5e-4, rtol=0)
    # TL's hook_q/k/v are the split heads of HF's c_attn output
    ht = HookedTransformer.from_pretrained(str(d), fold_ln=False, center_writing_weights=False,
                                          center_unembed=False, fold_value_biases=False)
    _, cache = ht.run_with_cache(ids)
    ref_acts, _ = _collect_hf(hf, ids)
    q = np.asarray(cache["blocks.1.attn.hook_q"]).reshape(2, 9, 64)
    np.testing.assert_allclose(q, ref_acts[("c_attn", 1)][0][..., :64], atol=ATOL, rtol=0)


def test_errors(tiny, tmp_path):
    hf, d = tiny
    with pytest.raises(FileNotFoundError, match="not found"):
        GPT2LMHeadModel.from_pretrained(str(tmp_path / "nope"))
    m = GPT2LMHeadModel.from_pretrained(d)
    with pytest.raises(ValueError, match="attention_mask"):
        m(_ids(120, (2, 5)), attention_mask=np.ones((2, 4)))
    with pytest.raises(Exception, match="outside"):
        m(np.array([[1, 2, 500]]))
    h = m.transformer.h[0].attn.c_attn.register_forward_hook(lambda mo, i, o: np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"c_attn.*expected \(1, 4, 192\)"):
        m(_ids(120, (1, 4)))
    h.remove()
    np.testing.assert_allclose(m(_ids(120, (1, 4))).logits, _hf_logits(hf, _ids(120, (1, 4))), atol=ATOL, rtol=0)
    with pytest.raises(TypeError, match="callable"):
        m.lm_head.register_forward_hook(3)
    # a hook that raises: the error propagates and the model stays usable
    def boom(mod, inp):
        raise RuntimeError("boom in hook")
    h = m.transformer.h[1].mlp.c_proj.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom in hook"):
        m(_ids(120, (1, 4)))
    h.remove()
    np.testing.assert_allclose(m(_ids(120, (1, 4))).logits, _hf_logits(hf, _ids(120, (1, 4))), atol=ATOL, rtol=0)
    # a checkpoint whose tensor disagrees with its config
    bad = tmp_path / "bad"
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(bad)
    import json
    c = json.loads((bad / "config.json").read_text())
    c["n_embd"] = 64
    (bad / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match=r"wte.weight.*shape"):
        GPT2LMHeadModel.from_pretrained(bad)


def test_auto_model_and_hooked_transformer_classmethods(tiny, tmp_path):
    from mechinterp_c.transformers.modeling_auto import AutoConfig, AutoModelForCausalLM
    hf, d = tiny
    m = AutoModelForCausalLM.from_pretrained(str(d))
    assert isinstance(m, GPT2LMHeadModel)
    assert AutoConfig.from_pretrained(d).n_head == 4
    ids = _ids(120, (1, 6), seed=21)
    np.testing.assert_allclose(m(ids).logits, _hf_logits(hf, ids), atol=ATOL, rtol=0)
    ref = torch.log_softmax(torch.tensor(_hf_logits(hf, ids), dtype=torch.float64), -1).numpy()
    for ht in (HookedTransformer.from_pretrained(str(d)),
               HookedTransformer.from_pretrained_no_processing(str(d))):
        assert isinstance(ht, HookedTransformer)
        lg = np.asarray(ht(ids), np.float64)
        lp = lg - lg.max(-1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
        np.testing.assert_allclose(lp, ref, atol=5e-4, rtol=0)   # as in the test above
    assert HookedTransformer.from_pretrained_no_processing(str(d)).cfg.normalization_type == "LN"
    # a model type that is not GPT-2
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "falcon"}')
    with pytest.raises(NotImplementedError, match="falcon"):
        AutoModelForCausalLM.from_pretrained(other)


def test_to_tokens_to_string(tmp_path_factory):
    """TL's tokenizer front on a byte-level BPE trained here, against the tokenizer itself."""
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    text = ["the cat sat on the mat", "a dog ran after the cat", "hello world, hello there"] * 20
    bpe.train_from_iterator(text, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer,
                                               bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    V = len(tok)
    hf, d = _save(tmp_path_factory, "tokmodel", n_layer=1, n_embd=32, n_head=4, vocab_size=V,
                  n_positions=32)
    ht = HookedTransformer.from_pretrained(str(d), tokenizer=tok)
    toks = ht.to_tokens(["the cat sat", "hello"])
    enc = [tok.encode(s, add_special_tokens=False) for s in ["the cat sat", "hello"]]
    assert toks.shape == (2, 1 + max(map(len, enc)))
    assert list(toks[0, :1 + len(enc[0])]) == [tok.bos_token_id] + enc[0]
    assert list(toks[1, :1 + len(enc[1])]) == [tok.bos_token_id] + enc[1]
    assert ht.to_string(toks[0, 1:1 + len(enc[0])]) == "the cat sat"
    assert "".join(ht.to_str_tokens("the cat", prepend_bos=False)) == "the cat"
    # logits of the tokens match HF
    np.testing.assert_allclose(torch.log_softmax(torch.tensor(ht(toks[:1])), -1).numpy(),
                               torch.log_softmax(torch.tensor(_hf_logits(hf, toks[:1])), -1).numpy(),
                               atol=5e-4, rtol=0)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        HookedTransformer.from_pretrained(str(d)).to_tokens("x")


def test_hfarray_torch_style_calls(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    out = m(_ids(120, (1, 4))).logits
    assert out.detach() is out and out.cpu() is out
    plain = out.numpy()
    assert type(plain) is np.ndarray and np.shares_memory(plain, out)
    v = out.view(4, 120)
    assert v.shape == (4, 120) and np.shares_memory(v, out)
    assert out.view(np.float32).dtype == np.float32
    c = out.clone()
    assert not np.shares_memory(c, out)
    with pytest.raises(ValueError, match="without a copy"):
        out[:, :, :60].view(240)


def test_array_type_torch_runs_the_seed_unchanged(tiny):
    """set_array_type('torch'): hooks and outputs are tensors sharing the C buffers, so the
    seed's torch code (F.log_softmax, .view on hook inputs) runs as written."""
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(120, (1, 8), seed=5)
    T, H, D = 8, 4, 64
    h1 = hf.transformer.h[1].attn.c_proj.register_forward_pre_hook(_ablate_hook(T, H, D // H, D))
    ref = torch.log_softmax(torch.tensor(_hf_logits(hf, ids)[0, -2]), -1)
    h1.remove()
    mg.set_array_type("torch")
    try:
        kept = {}
        hc = m.transformer.h[0].attn.c_attn.register_forward_hook(
            lambda mo, i, o: kept.__setitem__("qkv", o.detach()))
        h2 = m.transformer.h[1].attn.c_proj.register_forward_pre_hook(_ablate_hook(T, H, D // H, D))
        out = m(torch.tensor(ids))
        h2.remove()
        hc.remove()
        assert isinstance(out.logits, torch.Tensor) and isinstance(kept["qkv"], torch.Tensor)
        got = torch.nn.functional.log_softmax(out.logits[0, -2, :], dim=-1)
        np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=ATOL, rtol=0)
        assert kept["qkv"].shape == (1, 8, 192)
    finally:
        mg.set_array_type("numpy")
    assert isinstance(m(ids).logits, np.ndarray)
    with pytest.raises(ValueError, match="numpy.*torch"):
        mg.set_array_type("jax")


def test_block_attn_mlp_module_hooks_and_state_dict(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(120, (2, 7), seed=17)
    names = ["h.{l}", "h.{l}.attn", "h.{l}.mlp", "h.{l}.mlp.act", "h.{l}.ln_1"]

    def get(root, dotted):
        for part in dotted.split("."):
            root = root[int(part)] if part.isdigit() else getattr(root, part)
        return root

    def run(model, convert):
        got, hs = {}, []
        for l in range(3):
            for n in names:
                key = n.format(l=l)
                hs.append(get(model.transformer, key).register_forward_hook(
                    lambda mo, i, o, key=key: got.__setitem__(key, convert(o[0] if isinstance(o, tuple) else o))))
        hs.append(get(model.transformer, "ln_f").register_forward_hook(
            lambda mo, i, o: got.__setitem__("ln_f", convert(o))))
        hs.append(model.lm_head.register_forward_pre_hook(
            lambda mo, i: got.__setitem__("lm_head_in", convert(i[0]))))
        model(ids if convert is np.array else torch.tensor(ids))
        for h in hs:
            h.remove()
        return got

    with torch.no_grad():
        ref = run(hf, lambda t: t.numpy().copy())
    got = run(m, np.array)
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=ATOL, rtol=0, err_msg=k)
    sd = m.state_dict()
    ref_sd = hf.state_dict()
    assert set(sd) == {k for k in ref_sd if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    for k, v in sd.items():
        np.testing.assert_array_equal(v, ref_sd[k].numpy(), err_msg=k)
    assert m.to("cpu") is m


def test_hidden_states_attentions_and_tie_weights(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(120, (2, 6), seed=19)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), output_hidden_states=True, output_attentions=True)
    out = m(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 4 and len(out.attentions) == 3
    for a, b in zip(out.hidden_states, ref.hidden_states):
        np.testing.assert_allclose(a, b.numpy(), atol=ATOL, rtol=0)
    for a, b in zip(out.attentions, ref.attentions):
        np.testing.assert_allclose(a, b.numpy(), atol=ATOL, rtol=0)
    # tie_weights: an edit of wte reaches the unembedding, as in HF's tied model
    m.transformer.wte.weight[5] += 1.0
    m.tie_weights()
    with torch.no_grad():
        hf.transformer.wte.weight[5] += 1.0
    try:
        np.testing.assert_allclose(m(ids).logits, _hf_logits(hf, ids), atol=ATOL, rtol=0)
    finally:
        with torch.no_grad():
            hf.transformer.wte.weight[5] -= 1.0


def test_left_padding_sharded_checkpoint_and_hf_cache(tiny, tmp_path):
    import shutil
    hf, d = tiny
    # sharded save: model.safetensors.index.json + shards
    sh = tmp_path / "sharded"
    hf.save_pretrained(sh, max_shard_size="100KB")
    assert (sh / "model.safetensors.index.json").is_file()
    m = GPT2LMHeadModel.from_pretrained(sh)
    # the HF hub cache layout, found by hub id
    snap = tmp_path / "hub" / "models--org--tiny-gpt2" / "snapshots" / ("a" * 40)
    shutil.copytree(d, snap)
    (tmp_path / "hub" / "models--org--tiny-gpt2" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny-gpt2" / "refs" / "main").write_text("a" * 40)
    mc = GPT2LMHeadModel.from_pretrained("org/tiny-gpt2", cache_dir=tmp_path / "hub")
    # left padding: HF keeps positions 0..T-1 and masks the padded keys; real tokens agree
    ids = _ids(120, (2, 8), seed=23)
    mask = np.ones((2, 8), np.int64)
    mask[1, :3] = 0
    ref = _hf_logits(hf, ids, mask)
    for model in (m, mc):
        got = model(ids, attention_mask=mask).logits
        np.testing.assert_allclose(got[0], ref[0], atol=ATOL, rtol=0)
        np.testing.assert_allclose(got[1, 3:], ref[1, 3:], atol=ATOL, rtol=0)


def test_block_pre_hook_and_embedding_hook_edits(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(120, (1, 6), seed=29)

    def add_pre(mod, inp):
        inp[0][:, 1] += 0.3           # in place, as torch code does

    def scale_emb(mod, inp, out):
        return out * 1.5               # a returned replacement

    def attach(model):
        return [model.transformer.h[2].register_forward_pre_hook(add_pre),
                model.transformer.wte.register_forward_hook(scale_emb)]

    hs = attach(hf)
    ref = _hf_logits(hf, ids)
    for h in hs:
        h.remove()
    hs = attach(m)
    got = m(ids).logits
    for h in hs:
        h.remove()
    assert np.abs(got - m(ids).logits).max() > 1e-3
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


def test_transformer_call_last_hidden_state(tiny):
    hf, d = tiny
    m = GPT2LMHeadModel.from_pretrained(d)
    ids = _ids(120, (2, 5), seed=31)
    with torch.no_grad():
        ref = hf.transformer(torch.tensor(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(m.transformer(ids).last_hidden_state, ref, atol=ATOL, rtol=0)
