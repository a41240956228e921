"""Model families in the C core: rotary position embeddings (NeoX halves, GPT-J
adjacent pairs, partial rotary_dim, rotary_base, Llama-3 NTK-by-parts scaling),
grouped-query attention, parallel attention + MLP, gated MLPs with SiLU and GELU
(tanh), against TransformerLens 3.9's ``HookedTransformer(cfg)`` on the same
weights: every hook point of ``run_with_cache``, the module tree's hook order, the
training pass's gradients against torch autograd, and 1 vs 2 threads bitwise.

Tolerance: 1e-5 relative to each tensor's largest magnitude (measured: below
1.5e-6 for every activation and logit; both sides are float32 with different
summation orders, so agreement is to a few ulps of the tensor's scale, not to
the bit). Gradients: 1e-4 of each gradient's largest magnitude (measured below
2e-5: the backward sums over batch and positions in another order than torch).
"""
import warnings

import numpy as np
import pytest

import mechinterp_c as mi

torch = pytest.importorskip("torch")
tl = pytest.importorskip("transformer_lens")

BASE = dict(n_layers=2, d_model=64, n_ctx=32, d_head=16, n_heads=4, d_vocab=97, act_fn="silu",
            normalization_type="RMS", seed=0)
ROT = dict(positional_embedding_type="rotary")
CONFIGS = {
    "llama": dict(ROT, n_key_value_heads=2, gated_mlp=True, rotary_base=500000.0),
    "llama3_scaling": dict(ROT, n_key_value_heads=2, gated_mlp=True, use_NTK_by_parts_rope=True,
                           NTK_original_ctx_len=16, NTK_by_parts_factor=4.0,
                           NTK_by_parts_low_freq_factor=1.0, NTK_by_parts_high_freq_factor=2.0,
                           rotary_base=500000.0),
    "neox": dict(ROT, rotary_dim=4, parallel_attn_mlp=True, normalization_type="LN",
                 act_fn="gelu_new"),
    "gptj": dict(ROT, rotary_dim=8, rotary_adjacent_pairs=True, parallel_attn_mlp=True,
                 normalization_type="LN", act_fn="gelu_new"),
    "gemma_like_mlp": dict(ROT, gated_mlp=True, act_fn="gelu_pytorch_tanh", n_key_value_heads=1,
                           d_vocab_out=50),
    "mqa_result": dict(n_key_value_heads=1, use_attn_result=True, use_hook_mlp_in=True),
    "rotary_hooks_on": dict(ROT, use_attn_result=True, use_hook_mlp_in=True, parallel_attn_mlp=True),
    "bidirectional_rotary": dict(ROT, attention_dir="bidirectional", n_key_value_heads=2),
}
TOL = 1e-5


def _pair(cfg, perturb=True):
    """A TransformerLens model and ours with the same (randomised) weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        tm = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    sd = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()
          if not k.endswith((".mask", ".IGNORE", "rotary_sin", "rotary_cos"))}
    rng = np.random.default_rng(1)
    if perturb:   # biases and norm weights away from 0 and 1, so every term is tested
        for k in sd:
            if ".b_" in k or ".b" == k[-2:] or k.endswith(".w") or "._b_" in k:
                sd[k] = (sd[k] + rng.normal(0, 0.2, sd[k].shape)).astype(np.float32)
    tm.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=False)
    m = mi.HookedTransformer(cfg)
    m.load_state_dict(sd)
    return tm, m


def _rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    fin = np.isfinite(a)
    assert np.array_equal(fin, np.isfinite(b))
    scale = np.abs(a[fin]).max() if fin.any() else 0.0
    return np.abs(a[fin] - b[fin]).max() / scale if scale > 0 else np.abs(b[fin]).max()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_hook_point_matches_transformer_lens(name):
    cfg = dict(BASE, **CONFIGS[name])
    tm, m = _pair(cfg)
    assert list(m.hook_dict) == list(tm.hook_dict)
    toks = np.random.default_rng(2).integers(0, 97, (3, 20))
    lt, ct = tm.run_with_cache(torch.tensor(toks))
    lo, co = m.run_with_cache(toks)
    assert sorted(co.keys()) == sorted(ct.keys())
    for k in ct.keys():
        assert co[k].shape == tuple(ct[k].shape), k
        assert _rel(ct[k].numpy(), co[k]) < TOL, (k, _rel(ct[k].numpy(), co[k]))
    assert _rel(lt.detach().numpy(), lo) < TOL


@pytest.mark.parametrize("name", ["llama", "neox"])
def test_padding_positions_rotate_as_transformer_lens(name):
    """Left padding: rotary positions count kept tokens only (TransformerLens's
    offset position ids), padded keys are masked."""
    cfg = dict(BASE, **CONFIGS[name])
    tm, m = _pair(cfg)
    toks = np.random.default_rng(3).integers(0, 97, (2, 12))
    mask = np.ones_like(toks)
    mask[0, :4] = 0
    lt, ct = tm.run_with_cache(torch.tensor(toks), attention_mask=torch.tensor(mask))
    lo, co = m.run_with_cache(toks, attention_mask=mask)
    for k in ("blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k", "blocks.1.hook_resid_post"):
        assert _rel(ct[k].numpy(), co[k]) < TOL, k
    keep = mask.astype(bool)
    assert _rel(lt.detach().numpy()[keep], lo[keep]) < TOL


def test_gqa_weights_are_transformer_lens_names_and_shapes():
    cfg = dict(BASE, **CONFIGS["llama"])
    tm, m = _pair(cfg)
    sd = m.state_dict()
    assert sd["blocks.0.attn._W_K"].shape == (2, 64, 16) and "blocks.0.attn.W_K" not in sd
    np.testing.assert_array_equal(m.blocks[0].attn.W_K, tm.blocks[0].attn.W_K.detach().numpy())
    np.testing.assert_array_equal(m.W_V, tm.W_V.detach().numpy())
    np.testing.assert_array_equal(m.blocks[1].attn.b_K, tm.blocks[1].attn.b_K.detach().numpy())
    # the views are the weights: an edit changes what the core computes
    toks = np.arange(10)[None]
    before = m(toks).copy()
    m.blocks[0].attn._W_K[1] *= 2
    assert not np.array_equal(m(toks), before)


@pytest.mark.parametrize("name", ["llama", "llama3_scaling", "neox", "gptj", "mqa_result"])
def test_gradients_match_torch_autograd(name):
    cfg = dict(BASE, **CONFIGS[name])
    tm, m = _pair(cfg)
    rng = np.random.default_rng(4)
    toks = rng.integers(0, 97, (3, 16))
    targets = np.roll(toks, -1, axis=1)
    targets[:, -1] = -100
    mask = np.ones_like(toks)
    mask[1, :3] = 0
    targets[mask == 0] = -100
    m.zero_grad()
    loss = m.backward(toks, targets, attention_mask=mask)
    logits = tm(torch.tensor(toks), attention_mask=torch.tensor(mask))
    tloss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                              torch.tensor(targets).reshape(-1), ignore_index=-100)
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-5)
    ours = dict(m.named_parameters())
    for k, p in tm.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.numpy()
        if np.abs(g).max() < 1e-6:
            # b_K without rotary: softmax is shift invariant, so the gradient is 0 and
            # both sides hold rounding noise (~1e-9)
            assert np.abs(ours[k].grad).max() < 1e-6, k
            continue
        assert _rel(g, ours[k].grad) < 1e-4, (k, _rel(g, ours[k].grad))


@pytest.mark.parametrize("name", ["llama3_scaling", "neox", "gptj"])
def test_one_and_two_threads_bitwise_equal(name):
    cfg = dict(BASE, **CONFIGS[name])
    toks = np.random.default_rng(5).integers(0, 97, (4, 24))
    targets = np.roll(toks, -1, axis=1)
    old = mi.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            mi.set_num_threads(n)
            m = mi.HookedTransformer(cfg)
            _, cache = m.run_with_cache(toks)
            loss = m.backward(toks, targets)
            out.append(({k: np.array(v) for k, v in cache.items()}, loss,
                        {k: p.grad.copy() for k, p in m.named_parameters()}))
    finally:
        mi.set_num_threads(old)
    (c1, l1, g1), (c2, l2, g2) = out
    assert l1 == l2
    for k in c1:
        np.testing.assert_array_equal(c1[k], c2[k], err_msg=k)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)


def test_hooks_on_rotated_queries_change_the_pass():
    """hook_rot_q / hook_rot_k are live: zeroing the rotated keys makes every score 0
    (uniform causal pattern)."""
    m = mi.HookedTransformer(dict(BASE, **CONFIGS["llama"]))
    toks = np.arange(8)[None]

    def zero(act, hook):
        act[...] = 0
        return act

    _, cache = m.run_with_cache(toks)
    with m.hooks(fwd_hooks=[("blocks.0.attn.hook_rot_k", zero)]):
        _, hooked = m.run_with_cache(toks)
    pat = hooked["blocks.0.attn.hook_pattern"][0, 0]
    np.testing.assert_allclose(pat[3, :4], 0.25, rtol=1e-6)
    assert not np.allclose(cache["blocks.0.attn.hook_pattern"], hooked["blocks.0.attn.hook_pattern"])


@pytest.mark.parametrize("bad, match", [
    (dict(ROT, rotary_dim=6, d_head=4, n_heads=16), "rotary_dim=6"),
    (dict(ROT, rotary_dim=5), "rotary_dim=5"),
    (dict(n_key_value_heads=3), "n_key_value_heads=3"),
    (dict(n_key_value_heads=2, use_attn_in=True), "grouped-query attention with"),
    (dict(final_rms=True, normalization_type="LN", act_fn="gelu"), "final_rms"),
    (dict(positional_embedding_type="alibi"), "alibi"),
])
def test_unsupported_family_configs_are_refused(bad, match):
    with pytest.raises(NotImplementedError, match=match):
        mi.HookedTransformer(dict(BASE, **bad))
    m = mi.HookedTransformer(dict(BASE, **CONFIGS["llama"]))   # a model built afterwards works
    assert np.isfinite(m(np.arange(5)[None])).all()


def test_final_rms_with_rms_blocks_is_the_same_model():
    cfg = dict(BASE, **CONFIGS["llama"], final_rms=True)
    tm, m = _pair(cfg)
    toks = np.arange(12)[None]
    assert _rel(tm(torch.tensor(toks)).detach().numpy(), m(toks)) < TOL
