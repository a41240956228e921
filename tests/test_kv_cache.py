"""The key/value cache (csrc/model/kv_cache.c) through both APIs.

- Every step of a cached run (the prompt, then one token at a time) gives the logits of
  the full recomputation of the sequence so far, batch 1 and a left-padded batch.
  Tolerance: 2e-5 absolute on logits of magnitude ~5: the cached pass multiplies one
  row at a time (the GEMV path) where the full pass runs the blocked GEMM, so the sums
  are the same terms in another order (fp32, d_model 64 / d_mlp 256 terms).
- TransformerLens's forward(past_kv_cache=) on the same weights: the logits of each
  step, the cached keys/values and the cached attention mask (1e-4: TransformerLens's
  own fp32 parity with the C core, see test_hooked_transformer.py).
- transformers' forward(use_cache=True, past_key_values=) on the same checkpoint.
- freeze()/unfreeze(), run_with_cache over a cache, a pass entering a later block
  (start_at_layer) over cached positions, 1 and 2 threads bitwise equal.
- Bad input (capacity, batch size, another model, ids outside the vocabulary, wrong
  types, a mask that contradicts the cache): a clear exception, the cache unchanged and
  the model still right afterwards.
"""
import numpy as np
import pytest

import mechinterp_c
from mechinterp_c import HookedTransformer, HookedTransformerConfig, HookedTransformerKeyValueCache

CFG = dict(n_layers=2, d_model=64, n_ctx=40, d_head=16, n_heads=4, d_mlp=256, d_vocab=97,
           act_fn="gelu_new", normalization_type="LN", seed=0)
ATOL_STEP = 2e-5   # cached vs full recomputation (module docstring)
ATOL_REF = 1e-4    # against TransformerLens / transformers


def _weights():
    """A state dict far from initialisation (sharp attention, large logits)."""
    m = HookedTransformer(HookedTransformerConfig(**CFG))
    rng = np.random.default_rng(0)
    return {k: (np.asarray(v) + 0.3 * rng.standard_normal(np.shape(v))).astype(np.float32)
            for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def sd():
    return _weights()


@pytest.fixture(scope="module")
def model(sd):
    m = HookedTransformer(HookedTransformerConfig(**CFG))
    m.load_state_dict(sd)
    return m


def _batch(B, T=9, pads=(0, 3, 5)):
    """Token ids [B, T] and a left-padding mask (row i padded by pads[i])."""
    toks = np.random.default_rng(B).integers(1, CFG["d_vocab"], (B, T)).astype(np.int64)
    mask = np.ones((B, T), np.int64)
    for i in range(B):
        mask[i, :pads[i % len(pads)]] = 0
    return toks, mask


def _cached_run(m, toks, mask, new, cache=None):
    """Logits of the prompt then of `new` [B, n] one column at a time, over a cache."""
    B = toks.shape[0]
    cache = cache or HookedTransformerKeyValueCache.init_cache(m.cfg, batch_size=B)
    out = [np.array(m(toks, attention_mask=mask, past_kv_cache=cache))]
    for j in range(new.shape[1]):
        out.append(np.array(m(new[:, j:j + 1], attention_mask=np.ones((B, 1), np.int64),
                              past_kv_cache=cache)))
    return out, cache


@pytest.mark.parametrize("B", [1, 3])
def test_every_step_matches_full_recomputation(model, B):
    toks, mask = _batch(B)
    if B == 1:
        mask[:] = 1
    new = np.random.default_rng(7).integers(0, CFG["d_vocab"], (B, 6))
    steps, cache = _cached_run(model, toks, mask, new)
    T = toks.shape[1]
    assert cache.get_seq_length() == T + 6
    np.testing.assert_array_equal(cache.previous_attention_mask,
                                  np.concatenate([mask, np.ones((B, 6), np.int64)], 1))
    full_mask = np.concatenate([mask, np.ones((B, 6), np.int64)], 1)
    full = np.array(model(np.concatenate([toks, new], 1), attention_mask=full_mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(steps[0][real], full[:, :T][real], atol=ATOL_STEP, rtol=0)
    for j in range(6):
        np.testing.assert_allclose(steps[j + 1][:, 0], full[:, T + j], atol=ATOL_STEP, rtol=0)
    assert np.abs(full).max() > 2.0   # the tolerance is small against the logits' scale


def test_padded_rows_continue_as_alone(model):
    """Positions skip the padding: a left-padded row gives what its prompt alone gives."""
    toks, mask = _batch(3)
    new = np.random.default_rng(8).integers(0, CFG["d_vocab"], (3, 4))
    steps, _ = _cached_run(model, toks, mask, new)
    for i in range(3):
        p = int((mask[i] == 0).sum())
        alone, _ = _cached_run(model, toks[i:i + 1, p:], np.ones((1, 9 - p), np.int64), new[i:i + 1])
        for a, b in zip(alone[1:], steps[1:]):
            np.testing.assert_allclose(a[0], b[i], atol=ATOL_STEP, rtol=0)


def test_transformer_lens_past_kv_cache_parity(sd):
    torch = pytest.importorskip("torch")
    tl = pytest.importorskip("transformer_lens")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tm = tl.HookedTransformer(tl.HookedTransformerConfig(**CFG))
    tm.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=False)
    m = HookedTransformer(HookedTransformerConfig(**CFG))
    m.load_state_dict(sd)
    toks, mask = _batch(3)
    new = np.random.default_rng(9).integers(0, CFG["d_vocab"], (3, 4))
    ours, cache = _cached_run(m, toks, mask, new)
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    ref_cache = TransformerLensKeyValueCache.init_cache(tm.cfg, "cpu", 3)
    with torch.no_grad():
        ref = [tm(torch.tensor(toks), attention_mask=torch.tensor(mask), past_kv_cache=ref_cache).numpy()]
        for j in range(4):
            ref.append(tm(torch.tensor(new[:, j:j + 1]), attention_mask=torch.ones(3, 1, dtype=torch.int64),
                          past_kv_cache=ref_cache).numpy())
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[0][real], ref[0][real], atol=ATOL_REF, rtol=0)
    for a, b in zip(ours[1:], ref[1:]):
        np.testing.assert_allclose(a, b, atol=ATOL_REF, rtol=0)
    np.testing.assert_array_equal(cache.previous_attention_mask, ref_cache.previous_attention_mask.numpy())
    for l in range(CFG["n_layers"]):
        for got, want in ((cache[l].past_keys, ref_cache[l].past_keys),
                          (cache[l].past_values, ref_cache[l].past_values)):
            assert got.shape == tuple(want.shape) == (3, 13, 4, 16)
            np.testing.assert_allclose(got, want.numpy(), atol=ATOL_REF, rtol=0)


def test_freeze_reads_without_growing(model):
    toks, mask = _batch(2)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=2)
    model(toks, attention_mask=mask, past_kv_cache=cache)
    one = np.ones((2, 1), np.int64)
    cache.freeze()
    assert cache.frozen and cache[0].frozen
    a = np.array(model(np.array([[5], [6]]), attention_mask=one, past_kv_cache=cache))
    b = np.array(model(np.array([[5], [6]]), attention_mask=one, past_kv_cache=cache))
    assert cache.get_seq_length() == 9 and cache.previous_attention_mask.shape == (2, 9)
    np.testing.assert_array_equal(a, b)
    cache.unfreeze()
    c = np.array(model(np.array([[5], [6]]), attention_mask=one, past_kv_cache=cache))
    np.testing.assert_array_equal(a, c)
    assert cache.get_seq_length() == 10


def test_run_with_cache_over_the_cache(model):
    toks, mask = _batch(2)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=2)
    model(toks, attention_mask=mask, past_kv_cache=cache)
    logits, act = model.run_with_cache(np.array([[5], [6]]), attention_mask=np.ones((2, 1)),
                                       past_kv_cache=cache)
    assert logits.shape == (2, 1, CFG["d_vocab"])
    pat = act["blocks.1.attn.hook_pattern"]
    assert pat.shape == (2, 4, 1, 10) and act["blocks.0.attn.hook_attn_scores"].shape == (2, 4, 1, 10)
    np.testing.assert_allclose(pat.sum(-1), 1.0, atol=1e-5)
    assert (pat[1, :, :, :3] == 0).all() and (pat[1, :, :, 3:] > 0).all()   # row 1's padding
    assert act["blocks.0.attn.hook_k"].shape == (2, 1, 4, 16)               # the new position
    assert cache.get_seq_length() == 10


def test_start_at_layer_over_cached_positions(model):
    """A residual entering block 1 for the later positions, the earlier ones cached:
    exactly what a patch of a late position recomputes."""
    toks, _ = _batch(2)
    _, act = model.run_with_cache(toks)
    full = np.array(model(toks))
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=2)
    model(toks[:, :6], past_kv_cache=cache)
    resid = np.ascontiguousarray(act["blocks.1.hook_resid_pre"][:, 6:])
    out = np.array(model(resid, start_at_layer=1, past_kv_cache=cache))
    np.testing.assert_allclose(out, full[:, 6:], atol=ATOL_STEP, rtol=0)
    assert cache.get_seq_length(0) == 6 and cache.get_seq_length(1) == 9
    with pytest.raises(ValueError, match="layer 1 caches 9 positions but layer 0 caches 6"):
        model(toks[:, 6:7], past_kv_cache=cache)


def test_threads_bitwise_equal(model):
    toks, mask = _batch(3)
    new = np.random.default_rng(4).integers(0, CFG["d_vocab"], (3, 3))
    n = mechinterp_c.get_num_threads()
    try:
        mechinterp_c.set_num_threads(1)
        one, _ = _cached_run(model, toks, mask, new)
        mechinterp_c.set_num_threads(2)
        two, _ = _cached_run(model, toks, mask, new)
    finally:
        mechinterp_c.set_num_threads(n)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_bad_input_clear_errors_cache_and_model_usable(model, sd):
    toks, mask = _batch(2)
    new = np.array([[5], [6]])
    one = np.ones((2, 1), np.int64)
    ref, _ = _cached_run(model, toks, mask, new)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=2)
    model(toks, attention_mask=mask, past_kv_cache=cache)
    with pytest.raises(IndexError, match=r"id 97 at \[1, 0\] is outside \[0, d_vocab=97\)"):
        model(np.array([[5], [97]]), attention_mask=one, past_kv_cache=cache)
    with pytest.raises(ValueError, match="cache holds a batch of 2, the input has batch 1"):
        model(np.array([[5]]), attention_mask=np.ones((1, 1)), past_kv_cache=cache)
    other = HookedTransformer(HookedTransformerConfig(**CFG))
    with pytest.raises(ValueError, match="keys and values of another model"):
        other(new, attention_mask=one, past_kv_cache=cache)
    small = HookedTransformer(dict(CFG, n_layers=1))
    with pytest.raises(ValueError, match="made for another model"):
        small(new, attention_mask=one, past_kv_cache=cache)
    with pytest.raises(TypeError, match="past_kv_cache: expected a HookedTransformerKeyValueCache"):
        model(new, past_kv_cache=object())

    def bad_hook(x, hook):
        raise RuntimeError("hook failed")
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", bad_hook)]):
        with pytest.raises(RuntimeError, match="hook failed"):
            model(new, attention_mask=one, past_kv_cache=cache)
    assert cache.get_seq_length(0) == cache.get_seq_length(1) == 9   # nothing committed
    got = np.array(model(new, attention_mask=one, past_kv_cache=cache))
    np.testing.assert_array_equal(got, ref[1])
    # capacity
    tiny = HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=2, capacity=10)
    model(toks, attention_mask=mask, past_kv_cache=tiny)
    model(new, attention_mask=one, past_kv_cache=tiny)
    with pytest.raises(ValueError, match="10 cached \\+ 1 new positions exceed the cache's capacity of 10"):
        model(new, attention_mask=one, past_kv_cache=tiny)
    with pytest.raises(ValueError, match="batch_size"):
        HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=0)
    with pytest.raises(ValueError, match="only the CPU"):
        HookedTransformerKeyValueCache.init_cache(model.cfg, "cuda", 1)
    # the default capacity is the context
    full = HookedTransformerKeyValueCache.init_cache(model.cfg, batch_size=1)
    model(np.zeros((1, 40), np.int64), past_kv_cache=full)
    with pytest.raises(ValueError, match="capacity of 40"):
        model(np.zeros((1, 1), np.int64), past_kv_cache=full)
    np.testing.assert_array_equal(_cached_run(model, toks, mask, new)[0][1], ref[1])


# -------------------------------------------------------------- Hugging Face
@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=40)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith("c_attn.weight"):
                p.mul_(6.0)
    d = tmp_path_factory.mktemp("kv_hf")
    hf.save_pretrained(d)
    from mechinterp_c.transformers import GPT2LMHeadModel
    return hf, GPT2LMHeadModel.from_pretrained(str(d))


def test_hf_use_cache_past_key_values_parity(hf_pair):
    import torch
    from mechinterp_c.transformers import DynamicCache
    hf, m = hf_pair
    toks, mask = _batch(3)
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    out = m(toks, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = out.past_key_values
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 9
    with torch.no_grad():
        ref = hf(torch.tensor(toks), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos),
                 use_cache=True)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[real], ref.logits.numpy()[real], atol=ATOL_REF, rtol=0)
    ref_cache = ref.past_key_values
    last = pos[:, -1:]
    for j in range(4):
        nxt = np.array([[3 + j], [40 + j], [90 - j]])
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], 1)
        last = last + 1
        o = m(nxt, attention_mask=mask, position_ids=last, past_key_values=cache)
        assert o.past_key_values is cache
        with torch.no_grad():
            r = hf(torch.tensor(nxt), attention_mask=torch.tensor(mask), position_ids=torch.tensor(last),
                   past_key_values=ref_cache, use_cache=True)
        np.testing.assert_allclose(np.asarray(o.logits), r.logits.numpy(), atol=ATOL_REF, rtol=0)
        assert cache.get_seq_length() == ref_cache.get_seq_length() == 10 + j
    k, v = cache[1]
    assert k.shape == v.shape == (3, 4, 13, 16)
    # no position_ids: HF's past..past+T-1
    c2 = m(toks[:1], use_cache=True).past_key_values
    a = np.asarray(m(np.array([[7]]), past_key_values=c2).logits)
    b = np.asarray(m(np.concatenate([toks[:1], [[7]]], 1)).logits)[:, -1:]
    np.testing.assert_allclose(a, b, atol=ATOL_STEP, rtol=0)


def test_hf_cache_bad_input(hf_pair):
    hf, m = hf_pair
    toks, mask = _batch(2)
    cache = m(toks, attention_mask=mask, use_cache=True).past_key_values
    with pytest.raises(TypeError, match="past_key_values: expected a DynamicCache"):
        m(toks[:, :1], past_key_values=((1, 2),))
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(2, 10\)"):
        m(toks[:, :1], attention_mask=np.ones((2, 1)), past_key_values=cache)
    with pytest.raises(ValueError, match="differ from the mask the cache was filled with"):
        m(toks[:, :1], attention_mask=np.ones((2, 10)), past_key_values=cache)
    with pytest.raises(ValueError, match="batch of 2"):
        m(toks[:1, :1], past_key_values=cache)
    assert cache.get_seq_length() == 9
    good = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
    m(toks[:, :1], attention_mask=good, past_key_values=cache)
    assert cache.get_seq_length() == 10


@pytest.mark.parametrize("extra", [
    dict(positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
         normalization_type="RMS", gated_mlp=True, act_fn="silu"),
    dict(positional_embedding_type="rotary", rotary_dim=16, parallel_attn_mlp=True),
], ids=["llama-like", "neox-like"])
def test_rotary_gqa_steps_match_full_recomputation(extra):
    """Rotary keys are cached rotated at their own (padding-skipping) positions; grouped
    key/value heads are cached once per kv head."""
    cfg = dict(CFG, **extra)
    m = HookedTransformer(HookedTransformerConfig(**cfg))
    toks, mask = _batch(3)
    new = np.random.default_rng(5).integers(0, CFG["d_vocab"], (3, 4))
    steps, cache = _cached_run(m, toks, mask, new)
    assert cache[0].past_keys.shape == (3, 13, cfg.get("n_key_value_heads") or 4, 16)
    full_mask = np.concatenate([mask, np.ones((3, 4), np.int64)], 1)
    full = np.array(m(np.concatenate([toks, new], 1), attention_mask=full_mask))
    for j in range(4):
        np.testing.assert_allclose(steps[j + 1][:, 0], full[:, 9 + j], atol=ATOL_STEP, rtol=0)
