"""Gemma 2's architecture in the C transformer against TransformerLens 3.9 on the
same weights: post-attention and post-MLP RMSNorms (ln1_post, ln2_post),
attention-score and final-logit soft-capping, alternating sliding-window /
global layers with the window shorter than the sequence, an attention scale
other than sqrt(d_head) (Gemma 2's query_pre_attn_scalar), a gated
gelu_pytorch_tanh MLP. Learned positions ("standard") stand in for rotary.

Tolerance: every cached activation within 1e-5 of the tensor's largest
magnitude, gradients within 1e-5 relative in norm. Both sides are float32
with sums in different orders (GEMM blocking, the softmax, tanh) compounded
over four layers and three norms per layer; the measured worst is ~2e-6.
"""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mechinterp_c as mi
from mechinterp_c import _core

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transformer_lens import HookedTransformer as TLModel, HookedTransformerConfig as TLConfig

GEMMA = dict(n_layers=4, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50, n_ctx=16,
             act_fn="gelu_pytorch_tanh", normalization_type="RMS", gated_mlp=True,
             use_normalization_before_and_after=True, attn_scores_soft_cap=1.5,
             output_logits_soft_cap=2.0, use_local_attn=True, window_size=3,
             attn_types=["local", "global"] * 2, positional_embedding_type="standard",
             attn_scale=3.0, final_rms=True, eps=1e-6, seed=0)
T = 10   # > window_size: the local layers' window cuts keys off


def make_pair(noise=0.3, **kw):
    cfg = dict(GEMMA, **kw)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl = TLModel(TLConfig(**cfg))
    with torch.no_grad():   # norm weights away from 1, biases away from 0, scores near the cap
        for p in tl.parameters():
            p.add_(torch.randn_like(p) * noise)
    m = mi.HookedTransformer(cfg)
    m.load_state_dict({k: v.detach().numpy() for k, v in tl.state_dict().items()}, strict=False)
    return tl, m


def tokens(seed=0, batch=2):
    return np.random.default_rng(seed).integers(0, 50, (batch, T))


def close(got, want, what):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    got = np.asarray(got)
    assert got.shape == want.shape, what
    fin = np.isfinite(want)     # masked scores are -inf on both sides
    np.testing.assert_array_equal(got[~fin], want[~fin], err_msg=what)
    err = np.abs(got[fin] - want[fin]).max() / max(np.abs(want[fin]).max(), 1e-30)
    assert err < 1e-5, (what, err)


@pytest.mark.parametrize("kw", [{}, dict(normalization_type="RMSPre"),
                                dict(attn_scores_soft_cap=-1.0, output_logits_soft_cap=-1.0),
                                dict(use_local_attn=False, attn_types=None, window_size=None),
                                dict(attn_only=True),
                                dict(positional_embedding_type="rotary", rotary_dim=8,
                                     n_key_value_heads=2),
                                # no norm anywhere: small weights keep the stream O(1), so that
                                # the scores are not far into the cap's flat part
                                dict(normalization_type=None, noise=0.02)],
                         ids=["gemma2", "RMSPre", "no-caps", "global-only", "attn-only",
                              "rotary-gqa", "no-norm"])
def test_every_cache_entry_matches_transformer_lens(kw):
    tl, m = make_pair(**kw)
    toks = tokens()
    ref_logits, ref = tl.run_with_cache(torch.tensor(toks))
    logits, cache = m.run_with_cache(toks)
    assert list(m.hook_dict) == list(tl.hook_dict)
    assert set(cache.keys()) == set(ref.keys())
    for name in ref.keys():
        close(cache[name], ref[name], name)
    close(logits, ref_logits, "logits")
    assert set(m.state_dict()) == {k for k in tl.state_dict()
                                   if not k.endswith(("mask", "IGNORE", "rotary_sin", "rotary_cos"))}


def test_the_features_bite():
    """The window, the caps and the post norms change the numbers (so the parity above
    covers them): local layers' patterns are 0 before the window, every kept score and
    every output logit lies within its cap while unembed.hook_out (before the cap, as
    TransformerLens) does not, hook_attn_out is ln1_post's output."""
    _, m = make_pair()
    logits, cache = m.run_with_cache(tokens())
    i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    for l, kind in enumerate(GEMMA["attn_types"]):
        p = cache[f"blocks.{l}.attn.hook_pattern"]
        outside = j <= i - GEMMA["window_size"]
        assert (p[..., outside] == 0).all() == (kind == "local"), l
        s = cache[f"blocks.{l}.attn.hook_attn_scores"]
        assert np.abs(s[np.isfinite(s)]).max() <= 1.5
    assert np.abs(logits).max() <= 2.0 < np.abs(cache["unembed.hook_out"]).max()
    np.testing.assert_allclose(logits, 2.0 * np.tanh(cache["unembed.hook_out"] / 2.0), rtol=1e-6, atol=1e-6)
    w = m.blocks[1].ln1_post.w
    np.testing.assert_allclose(cache["blocks.1.hook_attn_out"], cache["blocks.1.ln1_post.hook_normalized"] * w,
                               rtol=1e-6, atol=1e-6)


def test_hooks_on_the_new_points_match_transformer_lens():
    tl, m = make_pair()
    toks = tokens(1)

    def double(x, hook):
        return x * 2

    hooks = [("blocks.1.ln1_post.hook_normalized", double), ("blocks.2.ln2_post.hook_scale", double),
             ("unembed.hook_out", double)]
    ref = tl.run_with_hooks(torch.tensor(toks), fwd_hooks=hooks)
    got = m.run_with_hooks(toks, fwd_hooks=hooks)
    close(got, ref, "logits with hooks")
    close(m(toks, stop_at_layer=3), tl(torch.tensor(toks), stop_at_layer=3), "stop_at_layer")


@pytest.mark.parametrize("kw", [{}, dict(attn_only=True), dict(normalization_type="RMSPre"),
                                dict(positional_embedding_type="rotary", rotary_dim=8,
                                     n_key_value_heads=2)],
                         ids=["gemma2", "attn-only", "RMSPre", "rotary-gqa"])
def test_gradients_match_torch(kw):
    tl, m = make_pair(**kw)
    rng = np.random.default_rng(1)
    toks, targets = rng.integers(0, 50, (3, T)), rng.integers(0, 50, (3, T))
    targets[0, :3] = -100
    loss = m.backward(toks, targets)
    logits = tl(torch.tensor(toks))
    ref = F.cross_entropy(logits.reshape(-1, 50), torch.tensor(targets).reshape(-1), ignore_index=-100)
    ref.backward()
    assert abs(loss - ref.item()) < 2e-6 * abs(ref.item())
    grads = dict(tl.named_parameters())
    assert {n for n, _ in m.named_parameters()} == set(grads)
    for name, p in grads.items():
        g, mine = p.grad.numpy(), m.get_parameter(name).grad
        err = np.linalg.norm(mine - g) / np.linalg.norm(g)
        assert err < 1e-5, (name, err)


def test_one_and_two_threads_bitwise():
    _, m = make_pair()
    toks = tokens(2)
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 50, toks.shape)
    n = mi.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            mi.set_num_threads(threads)
            logits, cache = m.run_with_cache(toks)
            m.zero_grad()
            m.backward(toks, targets)
            out.append([logits] + [np.array(cache[k]) for k in cache.keys()]
                       + [m.get_parameter(k).grad.copy() for k, _ in m.named_parameters()])
    finally:
        mi.set_num_threads(n)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_bad_configs_are_refused_and_name_the_problem():
    with pytest.raises(NotImplementedError, match=r"use_normalization_before_and_after with "
                       r"normalization_type='LN' \(post norms are RMSNorm\)"):
        mi.HookedTransformer(dict(GEMMA, normalization_type="LN"))
    with pytest.raises(ValueError, match=r"use_local_attn needs an integer window_size and attn_types"):
        mi.HookedTransformer(dict(GEMMA, attn_types=["local"]))
    with pytest.raises(ValueError, match=r"use_local_attn needs"):
        mi.HookedTransformer(dict(GEMMA, window_size=None))
    base = dict(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=10, d_vocab_out=10,
                n_ctx=8, norm=3, eps=1e-5, act=2)
    with pytest.raises(ValueError, match=r"local layers need a window >= 1, got 0"):
        _core.Model(**base, local_layers=[1])
    with pytest.raises(ValueError, match=r"local_layers names layer 2, past n_layers=2"):
        _core.Model(**base, window=3, local_layers=[2])
    with pytest.raises(ValueError, match=r"local_layers: layer -1 is outside \[0, 256\)"):
        _core.Model(**base, window=3, local_layers=[-1])
    with pytest.raises(ValueError, match=r"attn_softcap and logit_softcap must be finite and >= 0"):
        _core.Model(**base, attn_softcap=float("inf"))
    with pytest.raises(ValueError, match=r"post_norms need eps > 0"):
        _core.Model(**dict(base, norm=0, eps=0.0), post_norms=True)
    # the model stays usable after a refused call
    _, m = make_pair()
    before = m(tokens())
    with pytest.raises(IndexError):
        m(np.full((1, 3), 99))
    np.testing.assert_array_equal(m(tokens()), before)
