"""Gradient parity of ``HookedTransformer.backward`` against PyTorch autograd through
TransformerLens (same weights, tokens and targets), a finite-difference check, and
bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mechinterp_c as mi
from transformer_lens import HookedTransformer as TLModel, HookedTransformerConfig as TLConfig

BASE = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=50, n_ctx=12,
            act_fn="relu", normalization_type="LN", seed=0)

CONFIGS = [
    {},
    dict(normalization_type="RMS", act_fn="gelu"),
    dict(normalization_type=None, act_fn="silu", attention_dir="bidirectional"),
    dict(normalization_type="LNPre", act_fn="gelu_new"),
    dict(normalization_type="RMSPre", act_fn="gelu", attention_dir="bidirectional"),
    dict(attn_only=True),
    dict(gated_mlp=True, act_fn="silu", normalization_type="RMS"),
    dict(gated_mlp=True, act_fn="gelu", normalization_type="LN"),
    dict(n_heads=1, d_head=32),
    dict(use_attn_result=True, use_hook_mlp_in=True),
]


def make_pair(**kw):
    cfg = dict(BASE, **kw)
    torch.manual_seed(0)
    tl = TLModel(TLConfig(**cfg))
    with torch.no_grad():   # perturb so biases and norm weights are not trivially 0 / 1
        for p in tl.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    m = mi.HookedTransformer(mi.HookedTransformerConfig(**cfg))
    m.load_state_dict({k: v.detach().numpy() for k, v in tl.state_dict().items()}, strict=False)
    return tl, m


def tl_loss(tl, tokens, targets):
    logits = tl(torch.tensor(tokens))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                           torch.tensor(targets).reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "LN-relu")
def test_gradients_match_torch(kw):
    tl, m = make_pair(**kw)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 50, size=(3, 12))
    targets = rng.integers(0, 50, size=(3, 12))
    targets[0, :4] = -100
    targets[2, 7] = -100
    loss = m.backward(tokens, targets)
    ref = tl_loss(tl, tokens, targets)
    ref.backward()
    # loss: float32 logsumexp over 50 classes, ~1e-7 relative
    assert abs(loss - ref.item()) < 2e-6 * abs(ref.item())
    grads = dict(tl.named_parameters())
    names = {n for n, _ in m.named_parameters()}
    assert names == set(grads), names ^ set(grads)
    for name, p in grads.items():
        g, mine = p.grad.numpy(), m.get_parameter(name).grad
        assert mine.shape == g.shape, name
        if name.endswith("attn.b_K"):
            # d loss / d b_K is exactly 0 (softmax is shift-invariant per query row): both
            # sides are float32 rounding noise, so check they are tiny next to b_Q's gradient
            scale = np.linalg.norm(grads[name.replace("b_K", "b_Q")].grad.numpy())
            assert np.linalg.norm(mine) < 1e-5 * scale, name
            continue
        # float32 sums in a different order than torch: 1e-5 relative on the tensor norm
        err = np.linalg.norm(mine - g) / np.linalg.norm(g)
        assert err < 1e-5, (name, err)


def test_gradients_accumulate():
    _, m = make_pair()
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 50, size=(2, 12))
    targets = rng.integers(0, 50, size=(2, 12))
    m.backward(tokens, targets)
    once = {n: p.grad.copy() for n, p in m.named_parameters()}
    m.backward(tokens, targets)
    for n, p in m.named_parameters():
        # the same computation twice: 2x up to float rounding (GEMM with beta=1 adds
        # its K-sum into the stored gradient, so the rounding differs a little):
        # 1e-6 of the tensor's largest entry
        np.testing.assert_allclose(p.grad, 2 * once[n], rtol=0,
                                   atol=1e-6 * np.abs(once[n]).max() + 1e-30, err_msg=n)
    m.zero_grad()
    assert all(not p.grad.any() for p in m.parameters())


def test_finite_differences():
    """Directional derivatives by central differences in float32 (no float64 path):
    eps = 1e-2 gives truncation ~eps^2 and round-off ~1e-7*loss/eps ~ 4e-5 relative
    to a derivative of order 1, so 1e-2 relative is a safe but still meaningful bound."""
    cfg = dict(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16, d_vocab=11, n_ctx=5,
               act_fn="gelu", normalization_type="LN", seed=3)
    m = mi.HookedTransformer(mi.HookedTransformerConfig(**cfg))
    rng = np.random.default_rng(4)
    for p in m.parameters():
        p.data[...] += rng.normal(0, 0.3, size=p.data.shape)
    tokens = rng.integers(0, 11, size=(2, 5))
    targets = rng.integers(0, 11, size=(2, 5))
    m.zero_grad()
    m.backward(tokens, targets)
    grads = {n: p.grad.copy() for n, p in m.named_parameters()}
    eps = 1e-2
    for n, p in m.named_parameters():
        if n.endswith("attn.b_K"):
            continue   # derivative exactly 0
        d = rng.normal(size=p.data.shape).astype(np.float32)
        d /= np.linalg.norm(d)
        orig = p.data.copy()
        p.data[...] = orig + eps * d
        lp = m.backward(tokens, targets)
        p.data[...] = orig - eps * d
        lm = m.backward(tokens, targets)
        p.data[...] = orig
        fd = (lp - lm) / (2 * eps)
        an = float(np.sum(grads[n] * d))
        assert abs(fd - an) <= 1e-2 * max(abs(an), 1e-2), (n, fd, an)
    m.zero_grad()


def test_bad_input():
    _, m = make_pair()
    tokens = np.zeros((2, 12), np.int64)
    with pytest.raises(ValueError, match=r"targets: expected shape \(2, 12\) like tokens, got \(2, 11\)"):
        m.backward(tokens, np.zeros((2, 11), np.int64))
    bad = np.zeros((2, 12), np.int64)
    bad[1, 3] = 50
    with pytest.raises(IndexError, match=r"targets: id 50 at \[1, 3\] is outside \[0, d_vocab_out=50\)"):
        m.backward(tokens, bad)
    bad[1, 3] = -5
    with pytest.raises(IndexError, match=r"targets: id -5 at \[1, 3\]"):
        m.backward(tokens, bad)
    with pytest.raises(IndexError, match=r"tokens: id 99 at \[0, 0\]"):
        t = tokens.copy(); t[0, 0] = 99
        m.backward(t, np.zeros_like(t))
    with pytest.raises(ValueError, match="every position is -100"):
        m.backward(tokens, np.full_like(tokens, -100))
    with pytest.raises(TypeError, match="targets must be integer ids"):
        m.backward(tokens, np.zeros((2, 12), np.float32))
    with pytest.raises(ValueError, match="exceed n_ctx=12"):
        m.backward(np.zeros((1, 13), np.int64), np.zeros((1, 13), np.int64))
    solu = mi.HookedTransformer(mi.HookedTransformerConfig(**dict(BASE, act_fn="solu_ln")))
    with pytest.raises(ValueError, match="act_fn 'solu_ln' has no backward pass"):
        solu.backward(tokens, np.zeros_like(tokens))
    for flag in ("use_split_qkv_input", "use_attn_in"):
        split = mi.HookedTransformer(mi.HookedTransformerConfig(**dict(BASE, **{flag: True})))
        with pytest.raises(ValueError, match="use_split_qkv_input or use_attn_in cannot be trained"):
            split.backward(tokens, np.zeros_like(tokens))
    with pytest.raises(KeyError, match="no parameter 'blocks.9.attn.W_Q'"):
        m.get_parameter("blocks.9.attn.W_Q")
    # NaN weights: a clear error and gradients left unchanged
    m.zero_grad()
    m.get_parameter("unembed.b_U").data[3] = np.nan
    with pytest.raises(ValueError, match="the loss is nan"):
        m.backward(tokens, np.zeros_like(tokens))
    assert all(not p.grad.any() for p in m.parameters())
    # the model stays usable
    m.get_parameter("unembed.b_U").data[3] = 0.0
    assert np.isfinite(m.backward(tokens, np.zeros_like(tokens)))


def test_frozen_parameter_grad_untouched():
    _, m = make_pair()
    p = m.get_parameter("pos_embed.W_pos")
    p.requires_grad = False
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 50, size=(2, 12))
    m.backward(tokens, tokens)
    assert not p.grad.any()
    assert m.get_parameter("embed.W_E").grad.any()


def test_workspace_reused_across_shapes():
    """The kept workspace is re-made when the batch shape changes; results do not
    depend on what an earlier call left in it (bitwise: same kernels, same inputs)."""
    _, m = make_pair()
    rng = np.random.default_rng(6)
    a = rng.integers(0, 50, size=(2, 12)), rng.integers(0, 50, size=(2, 12))
    b = rng.integers(0, 50, size=(3, 7)), rng.integers(0, 50, size=(3, 7))
    first = m.backward(*a)
    g_first = m.get_parameter("blocks.0.attn.W_Q").grad.copy()
    m.zero_grad()
    m.backward(*b)
    m.zero_grad()
    assert m.backward(*a) == first
    np.testing.assert_array_equal(m.get_parameter("blocks.0.attn.W_Q").grad, g_first)
    with pytest.raises(TypeError, match="workspace: expected a writable contiguous float32"):
        mi._core.loss_backward(m._core, a[0], a[1], m._train_state.grads, np.zeros(10))
    # a too-small workspace is not used (the call allocates its own)
    m.zero_grad()
    assert mi._core.loss_backward(m._core, a[0], a[1], m._train_state.grads,
                                  np.zeros(10, np.float32)) == first


# causal only: TransformerLens's bidirectional attention does not mask padding keys
# (its forward differs from ours there, whatever the backward does)
@pytest.mark.parametrize("kw", [{}, dict(normalization_type="RMS", act_fn="gelu", n_heads=1, d_head=32)],
                         ids=["LN-relu", "RMS-gelu-1head"])
def test_attention_mask_gradients_match_torch(kw):
    """backward(..., attention_mask=) gives the gradients of TransformerLens's masked
    forward: left and right padding, shifted positions, padding targets ignored."""
    tl, m = make_pair(**kw)
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 50, size=(3, 12))
    mask = np.ones((3, 12), np.int64)
    mask[0, :4] = 0          # left padding: positions count from the first kept token
    mask[1, 9:] = 0          # right padding
    targets = rng.integers(0, 50, size=(3, 12))
    targets[mask == 0] = -100
    loss = m.backward(tokens, targets, attention_mask=mask)
    logits = tl(torch.tensor(tokens), attention_mask=torch.tensor(mask))
    ref = F.cross_entropy(logits.reshape(-1, 50), torch.tensor(targets).reshape(-1), ignore_index=-100)
    ref.backward()
    # the same tolerances as the unmasked parity test (float32, other summation order)
    assert abs(loss - ref.item()) < 2e-6 * abs(ref.item())
    for name, p in tl.named_parameters():
        if name.endswith("attn.b_K"):
            continue   # exactly 0 up to rounding (see test_gradients_match_torch)
        g, mine = p.grad.numpy(), m.get_parameter(name).grad
        err = np.linalg.norm(mine - g) / max(np.linalg.norm(g), 1e-30)
        assert err < 1e-5, (name, err)
    # the mask matters: without it the loss differs (the test is not vacuous)
    m.zero_grad()
    assert abs(m.backward(tokens, targets) - loss) > 1e-3
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(3, 12\) like tokens, got \(3, 11\)"):
        m.backward(tokens, targets, attention_mask=mask[:, :11])
