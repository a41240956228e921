"""The Llama-family and GPT-NeoX drop-ins generate, cache and train like GPT-2's:
``generate`` against transformers' ``generate`` (its KV cache on) on tiny random
checkpoints saved by transformers (GQA ratio 2, q/k/v biases for Qwen2, a sliding
window shorter than the sequence for Mistral, partial rotary and the parallel
residual for NeoX, soft-caps and alternating windows for Gemma 2), every cached step's logits against the full recomputation,
``labels`` -> ``loss`` and ``save_pretrained`` loaded back by transformers.

Greedy runs are compared token for token: logits agree with transformers' to ~1e-6
relative (test_families_hf.py) and the perturbed random weights give top-logit gaps
far above that. Cached-step logits are compared at 1e-5 relative to the largest
logit: the cached pass sums the same products over the same keys, in a different
blocking only (fp32 rounding).
"""
import warnings

import numpy as np
import pytest

from mechinterp_c import transformers as mt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V = 97
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=V,
             max_position_embeddings=64, intermediate_size=96, bos_token_id=1, eos_token_id=2,
             pad_token_id=0)
KINDS = {
    "llama": lambda: transformers.LlamaConfig(num_key_value_heads=2, **SMALL),
    "mistral": lambda: transformers.MistralConfig(num_key_value_heads=2, sliding_window=6, **SMALL),
    "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, **SMALL),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(rotary_pct=0.5, use_parallel_residual=True, **SMALL),
    "gemma2": lambda: transformers.Gemma2Config(num_key_value_heads=2, head_dim=16, sliding_window=6,
                                                query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
                                                final_logit_softcapping=3.0, **SMALL),
}
LAST_LAYER = {"gpt_neox": "gpt_neox.layers.1"}


@pytest.fixture(scope="module", params=sorted(KINDS))
def pair(request, tmp_path_factory):
    kind = request.param
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_config(KINDS[kind]()).eval()
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if "norm" in n or n.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.2)
                elif p.dim() == 2:
                    p.mul_(4.0)    # sharper logits: no near-ties in greedy choices
        d = tmp_path_factory.mktemp(kind)
        hf.save_pretrained(d)
    return kind, hf, mt.AutoModelForCausalLM.from_pretrained(str(d))


def _hf_generate(hf, ids, mask=None, **kw):
    extra = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hf.generate(torch.tensor(ids), **extra, **kw).numpy()


def _left_padded():
    rng = np.random.default_rng(1)
    lens = [9, 4, 7]
    ids = np.zeros((3, 9), np.int64)
    mask = np.zeros((3, 9), np.int64)
    for i, n in enumerate(lens):
        ids[i, 9 - n:] = rng.integers(3, V, n)
        mask[i, 9 - n:] = 1
    return ids, mask


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_matches_transformers(pair, use_cache):
    kind, hf, m = pair
    kw = dict(max_new_tokens=10, do_sample=False, eos_token_id=None)
    ids = np.random.default_rng(0).integers(3, V, (1, 8))
    np.testing.assert_array_equal(m.generate(ids, use_cache=use_cache, **kw), _hf_generate(hf, ids, **kw))
    ids, mask = _left_padded()
    ours = m.generate(ids, attention_mask=mask, use_cache=use_cache, **kw)
    np.testing.assert_array_equal(ours, _hf_generate(hf, ids, mask, **kw))
    if kind not in ("mistral", "gemma2"):   # a window counts padded slots too (HF's rule)
        for i in range(3):  # positions from the mask: each row continues as its prompt alone
            alone = m.generate(ids[i:i + 1, mask[i] == 1], use_cache=use_cache, **kw)
            np.testing.assert_array_equal(ours[i, -10:], alone[0, -10:])


def test_eos_pad_and_sampling(pair):
    kind, hf, m = pair
    ids = np.random.default_rng(2).integers(3, V, (2, 6))
    base = m.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    eos = int(base[0, -5])
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=5)
    np.testing.assert_array_equal(m.generate(ids, **kw), _hf_generate(hf, ids, **kw))
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, repetition_penalty=1.8)
    np.testing.assert_array_equal(m.generate(ids, **kw), _hf_generate(hf, ids, **kw))
    k1 = m.generate(ids, max_new_tokens=8, do_sample=True, top_k=1, seed=3, eos_token_id=None)
    np.testing.assert_array_equal(k1, base)
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.95, num_return_sequences=3,
              eos_token_id=None)
    a = m.generate(ids, seed=9, **kw)
    assert a.shape == (6, 6 + 8)
    np.testing.assert_array_equal(a, m.generate(ids, seed=9, **kw))
    assert len({tuple(r) for r in a[:3]}) > 1, "three samples all equal"


def test_cached_steps_match_full_recomputation(pair):
    kind, hf, m = pair
    ids, mask = _left_padded()
    pos = np.cumsum(mask, 1) - 1
    pos[mask == 0] = 0
    out = m(ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = out.past_key_values
    assert cache.get_seq_length() == 9
    seq = ids
    rng = np.random.default_rng(3)
    for step in range(6):
        nxt = rng.integers(3, V, (3, 1))
        seq = np.concatenate([seq, nxt], 1)
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], 1)
        pos = np.cumsum(mask, 1) - 1
        pos[mask == 0] = 0
        step_logits = np.array(m(nxt, attention_mask=mask, position_ids=pos[:, -1:],
                                 past_key_values=cache).logits[:, -1])
        full = np.array(m(seq, attention_mask=mask, position_ids=pos).logits[:, -1])
        scale = np.abs(full).max()
        assert np.abs(step_logits - full).max() / scale < 1e-5, (kind, step)
        with torch.no_grad():
            ref = hf(torch.tensor(seq), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(pos)).logits[:, -1].numpy()
        assert np.abs(step_logits - ref).max() / scale < 1e-5, (kind, step)
    assert cache.get_seq_length() == 15
    k, v = cache[0]
    kv_heads = hf.config.num_key_value_heads if kind != "gpt_neox" else hf.config.num_attention_heads
    assert k.shape == v.shape == (3, kv_heads, 15, 16)


def test_module_hooks_fire_on_every_step(pair):
    kind, hf, m = pair
    name = LAST_LAYER.get(kind, "model.layers.1")
    ids = np.random.default_rng(4).integers(3, V, (1, 5))
    seen, ref_seen = [], []
    h = m.get_submodule(name).register_forward_hook(lambda mod, a, o: seen.append(np.array(o).shape))
    r = hf.get_submodule(name).register_forward_hook(lambda mod, a, o: ref_seen.append(1))
    try:
        m.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
        _hf_generate(hf, ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    finally:
        h.remove()
        r.remove()
    assert len(seen) == 5 == len(ref_seen)
    assert seen[0][1] == 5 and all(s[1] == 1 for s in seen[1:])   # the prompt, then one token
    # steering through a module hook changes what is generated, every step
    d = m.get_submodule(name)
    base = m.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    h = d.register_forward_hook(lambda mod, a, o: o * -3.0)
    try:
        steered = m.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    finally:
        h.remove()
    r = hf.get_submodule(name).register_forward_hook(
        lambda mod, a, o: (o[0] * -3.0,) + tuple(o[1:]) if isinstance(o, tuple) else o * -3.0)
    try:
        ref = _hf_generate(hf, ids, max_new_tokens=5, do_sample=False, eos_token_id=None)
    finally:
        r.remove()
    np.testing.assert_array_equal(steered, ref)
    assert not np.array_equal(steered, base)


def test_labels_give_transformers_loss(pair):
    kind, hf, m = pair
    ids = np.random.default_rng(5).integers(3, V, (2, 10))
    labels = ids.copy()
    labels[0, :3] = -100
    labels[1, 7] = -100
    out = m(ids, labels=labels)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), labels=torch.tensor(labels))
    assert list(out.keys())[:2] == ["loss", "logits"]
    assert abs(float(out.loss) - float(ref.loss)) < 1e-5 * float(ref.loss)
    tup = m(ids, labels=labels, return_dict=False)        # HF's tuple order: loss, logits
    assert len(tup) == 2 and float(tup[0]) == float(out.loss)
    with pytest.raises(ValueError, match="labels"):
        m(ids, labels=ids[:, :3])
    np.testing.assert_array_equal(np.array(m(ids).logits), np.array(out.logits))


def test_save_pretrained_loads_in_transformers(pair, tmp_path):
    kind, hf, m = pair
    m.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(back).__name__ == type(hf).__name__
    sd = dict(back.named_parameters())
    # exact, but for Gemma 2, whose embedding (x sqrt(D)) and norm weights (+ 1) the C model
    # stores transformed: written back, they are off by float32 rounding of that step
    atol = 1e-6 if kind == "gemma2" else 0.0
    for n, p in hf.named_parameters():
        np.testing.assert_allclose(sd[n].detach().numpy(), p.detach().numpy(), rtol=0, atol=atol, err_msg=n)
    # an edited weight is what gets written
    w = m.get_submodule(LAST_LAYER.get(kind, "model.layers.1") + ".mlp").children()[-1]._np("weight")
    old = w.copy()
    try:
        w *= 0.5
        m.save_pretrained(tmp_path / "edited")
        ours = mt.AutoModelForCausalLM.from_pretrained(str(tmp_path / "edited"))
        ids = np.random.default_rng(6).integers(3, V, (1, 7))
        np.testing.assert_allclose(np.array(ours(ids).logits), np.array(m(ids).logits), rtol=0, atol=1e-5)
    finally:
        w[...] = old
    with pytest.raises(NotImplementedError, match="safetensors"):
        m.save_pretrained(tmp_path / "x", safe_serialization=False)


def test_bad_cache_and_input_clear_errors(pair):
    kind, hf, m = pair
    ids = np.random.default_rng(7).integers(3, V, (2, 5))
    before = np.array(m(ids).logits)
    cache = m(ids, use_cache=True).past_key_values
    with pytest.raises(ValueError):
        m(ids[:1, :1], past_key_values=cache)            # another batch size
    with pytest.raises(TypeError, match="DynamicCache"):
        m(ids, past_key_values=((1, 2),))
    with pytest.raises(ValueError, match="attention_mask"):
        m(ids[:, :1], attention_mask=np.ones((2, 3)), past_key_values=cache)
    with pytest.raises(ValueError, match="exceeds the context"):
        m.generate(ids, max_new_tokens=10 ** 6)
    with pytest.raises(NotImplementedError, match="unsupported"):
        m(ids, inputs_embeds=1)
    np.testing.assert_array_equal(np.array(m(ids).logits), before)
