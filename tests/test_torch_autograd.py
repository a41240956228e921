"""PyTorch autograd through the C engine: in torch mode ``model(tokens)`` returns logits
whose ``grad_fn`` runs the C backward, so torch losses, ``loss.backward()`` and
``torch.optim`` train the C model. Compared with TransformerLens's autograd on the same
weights and tokens.

Gradient tolerance: each parameter's ``.grad`` within 1e-5 of the largest magnitude of
TransformerLens's gradient of that tensor (float32 both sides, sums in another order:
measured worst 1.4e-6 over the configs below, 2.4e-6 for Gemma 2). ``b_K`` is compared
absolutely (1e-6 of the largest gradient of the model): its true gradient is zero (a
key bias adds the same q . b_K to every score of a row, which the softmax cancels), so
both sides hold float32 round-off there."""
import numpy as np
import pytest
import torch

import mechinterp_c as mi
from transformer_lens import HookedTransformer as TLModel, HookedTransformerConfig as TLConfig

RECIPE = dict(n_layers=2, d_model=64, d_head=64, n_heads=1, d_mlp=256, d_vocab=300, n_ctx=50,
              act_fn="relu", normalization_type="LN", seed=0)
SMALL = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=50, n_ctx=16,
             act_fn="gelu_new", normalization_type="LN", seed=0)
CONFIGS = [
    {},
    dict(normalization_type="RMS", act_fn="silu", gated_mlp=True),
    dict(attn_only=True, attention_dir="bidirectional"),
    dict(normalization_type="LNPre", act_fn="relu", n_heads=2, d_head=16),
    dict(positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
         normalization_type="RMS", act_fn="silu", gated_mlp=True),
    dict(parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=4),
]
TOL = 1e-5


@pytest.fixture(autouse=True)
def _torch_mode():
    mi.set_array_type("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)      # the references are small; one thread keeps them deterministic
    yield
    torch.set_num_threads(n)
    mi.set_array_type("numpy")


def loss_fn(logits, tokens, per_token=False):
    """The no-position notebook's loss (predict the previous token), as written there."""
    logits = logits[:, 1:]
    tokens = tokens[:, :-1]
    log_probs = logits.log_softmax(-1)
    correct_log_probs = log_probs.gather(-1, tokens[..., None])[..., 0]
    if per_token:
        return -correct_log_probs
    return -correct_log_probs.mean()


def make_pair(cfg, perturb=True):
    """A TransformerLens model and ours with the same weights."""
    torch.manual_seed(0)
    tl = TLModel(TLConfig(**cfg))
    if perturb:
        with torch.no_grad():   # biases and norm weights away from 0 / 1
            for p in tl.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    m = mi.HookedTransformer(mi.HookedTransformerConfig(**cfg))
    m.load_state_dict({k: v.detach().numpy() for k, v in tl.state_dict().items()}, strict=False)
    return tl, m


def tokens_for(cfg, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, cfg["d_vocab"], (batch, cfg["n_ctx"]), generator=g)
    t[:, 0] = 0
    return t


def assert_grads_match(m, tl, what):
    ours = dict(m.named_parameters())
    ref = {n: p for n, p in tl.named_parameters()}
    scale = max(float(p.grad.abs().max()) for p in ref.values() if p.grad is not None)
    for name, p in ref.items():
        g = ours[name].grad
        if p.grad is None:
            assert g is None, f"{what}: {name} has a gradient, TransformerLens's has none"
            continue
        assert g is not None, f"{what}: {name} has no gradient"
        err = float((g - p.grad).abs().max())
        if name.endswith("attn.b_K"):
            assert err <= 1e-6 * scale, (what, name, err, scale)
        else:
            assert err <= TOL * float(p.grad.abs().max()), (what, name, err, float(p.grad.abs().max()))


def test_logits_have_a_c_backed_grad_fn_and_plain_tensors_otherwise():
    _, m = make_pair(SMALL)
    t = tokens_for(SMALL, 2)
    logits = m(t)
    assert type(logits.grad_fn).__name__ == "CTransformerFunctionBackward"
    assert logits.requires_grad and logits.dtype == torch.float32 and logits.shape == (2, 16, 50)
    with torch.no_grad():
        plain = m(t)
    assert plain.grad_fn is None and not plain.requires_grad
    torch.testing.assert_close(plain, logits.detach(), rtol=0, atol=0)
    m.requires_grad_(False)
    assert m(t).grad_fn is None
    m.requires_grad_(True)
    # forward hooks: their derivative is unknown to the C backward, so no graph
    m.add_hook("blocks.0.hook_resid_mid", lambda a, hook: None)
    assert m(t).grad_fn is None
    m.reset_hooks()
    assert m(t, return_type="loss").grad_fn is not None


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "LN-gelu_new")
def test_parameter_grads_match_transformer_lens(kw):
    cfg = dict(SMALL, **kw)
    tl, m = make_pair(cfg)
    t = tokens_for(cfg, 3)
    loss = loss_fn(m(t), t)
    ref = loss_fn(tl(t), t)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    ref.backward()
    assert_grads_match(m, tl, kw)


def test_return_type_loss_logit_diff_and_attention_mask():
    tl, m = make_pair(SMALL)
    t = tokens_for(SMALL, 3)
    mask = torch.ones_like(t)
    mask[1, :5] = 0                     # left padding of row 1
    loss = m(t, return_type="loss", attention_mask=mask)
    ref = tl(t, return_type="loss", attention_mask=mask)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    ref.backward()
    assert_grads_match(m, tl, "loss with attention_mask")
    m.zero_grad(), tl.zero_grad()
    for p in m.parameters():
        p.grad = None
    # a logit difference at the last position: any torch function of the logits
    lg, tlg = m(t), tl(t)
    (lg[:, -1, 3] - lg[:, -1, 7]).mean().backward()
    (tlg[:, -1, 3] - tlg[:, -1, 7]).mean().backward()
    assert_grads_match(m, tl, "logit diff")
    logits, loss = m(t, return_type="both")
    assert logits.grad_fn is not None and loss.grad_fn is not None


def test_gradient_accumulation_over_two_backwards():
    tl, m = make_pair(SMALL)
    for seed in (1, 2):
        t = tokens_for(SMALL, 2, seed)
        loss_fn(m(t), t).backward()
        loss_fn(tl(t), t).backward()
    assert_grads_match(m, tl, "two backwards")
    # retain_graph: the same graph twice doubles, as in torch
    for p in list(m.parameters()) + list(tl.parameters()):
        p.grad = None
    t = tokens_for(SMALL, 2, 3)
    loss, ref = loss_fn(m(t), t), loss_fn(tl(t), t)
    loss.backward(retain_graph=True), ref.backward(retain_graph=True)
    loss.backward(), ref.backward()
    assert_grads_match(m, tl, "retain_graph twice")


def test_frozen_parameters_get_no_grad():
    tl, m = make_pair(SMALL)
    m.pos_embed.W_pos.requires_grad = False
    m.blocks[1].attn.W_Q.requires_grad_(False)
    tl.pos_embed.W_pos.requires_grad_(False)
    tl.blocks[1].attn.W_Q.requires_grad_(False)
    t = tokens_for(SMALL, 2)
    loss_fn(m(t), t).backward()
    loss_fn(tl(t), t).backward()
    assert m.pos_embed.W_pos.grad is None and m.blocks[1].attn.W_Q.grad is None
    assert m.blocks[1].attn.W_K.grad is not None
    assert_grads_match(m, tl, "frozen")


def _pattern_hook(grad, hook):
    grad[:, 0] = 0.0                   # gradient ablation of head 0's pattern


def _scale_hook(grad, hook):
    return grad * 0.5 + 0.01


@pytest.mark.parametrize("points", [
    [("blocks.1.attn.hook_pattern", _pattern_hook)],
    [("blocks.0.hook_resid_mid", _scale_hook), ("blocks.1.mlp.hook_post", _scale_hook)],
])
def test_backward_hooks_fire_during_loss_backward_as_in_transformer_lens(points):
    tl, m = make_pair(SMALL)
    t = tokens_for(SMALL, 2)
    seen = []
    for name, fn in points:
        m.add_hook(name, fn, dir="bwd")
        tl.add_hook(name, fn, dir="bwd")
    m.add_hook("hook_embed", lambda g, hook: seen.append(g.clone()), dir="bwd")
    loss_fn(m(t), t).backward()
    loss_fn(tl(t), t).backward()
    m.reset_hooks(), tl.reset_hooks()
    assert len(seen) == 1 and isinstance(seen[0], torch.Tensor)
    assert_grads_match(m, tl, points)
    # the hooks did act: without them the gradients differ
    hooked = {n: p.grad.clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = None
    loss_fn(m(t), t).backward()
    assert not torch.allclose(hooked["embed.W_E"], m.embed.W_E.grad)


def test_bad_input_and_stale_graphs():
    tl, m = make_pair(SMALL)
    t, t2 = tokens_for(SMALL, 2, 1), tokens_for(SMALL, 2, 2)
    loss = loss_fn(m(t), t)
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()
    s = m(t).sum()
    s.backward()
    with pytest.raises(RuntimeError, match="second time"):
        s.backward()
    # a weight updated in place between the forward and the backward: a clear error
    loss = loss_fn(m(t), t)
    with torch.no_grad():
        m.blocks[0].mlp.W_in.mul_(1.01)
        tl.blocks[0].mlp.W_in.mul_(1.01)
    m(t2)                                     # another forward, with the new weights
    with pytest.raises(RuntimeError, match="blocks.0.mlp.W_in changed after the forward"):
        loss.backward()
    # writes torch does not track: .data, load_state_dict, a NumPy write to the weights
    for edit in (lambda: m.blocks[1].attn.W_O.data.mul_(1.01),
                 lambda: m.load_state_dict({"unembed.b_U": torch.ones(50)}, strict=False)):
        loss = loss_fn(m(t), t)
        edit()
        with pytest.raises(RuntimeError, match="weights changed after the forward"):
            loss.backward()
    loss = loss_fn(m(t), t)
    mi.set_array_type("numpy")
    m.blocks[0].ln1.w[3] += 1.0
    mi.set_array_type("torch")
    with pytest.raises(RuntimeError, match="weights changed after the forward"):
        loss.backward()
    tl.load_state_dict({k: v.detach().clone() for k, v in m.state_dict().items()}, strict=False)
    # another forward overwrote the kept activations: the backward recomputes, same grads
    for p in m.parameters():
        p.grad = None
    loss = loss_fn(m(t), t)
    loss2 = loss_fn(m(t2), t2)
    loss.backward()
    loss_fn(tl(t), t).backward()
    assert_grads_match(m, tl, "recomputed forward")
    for p in list(m.parameters()) + list(tl.parameters()):
        p.grad = None
    loss2.backward()                          # the workspace now holds t's forward again
    loss_fn(tl(t2), t2).backward()
    assert_grads_match(m, tl, "second graph after a recompute")
    # model.backward (the NumPy training API) shares the workspace: still correct
    for p in list(m.parameters()) + list(tl.parameters()):
        p.grad = None
    loss = loss_fn(m(t), t)
    targets = np.full(t.shape, -100)
    targets[:, 1:] = t[:, :-1].numpy()
    m.backward(t.numpy(), targets)
    loss.backward()
    loss_fn(tl(t), t).backward()
    assert_grads_match(m, tl, "after model.backward")
    # a backward hook returning the wrong shape: a clear error, the model still works
    m.add_hook("blocks.0.hook_mlp_out", lambda g, hook: g[:, :1], dir="bwd")
    with pytest.raises(ValueError, match="blocks.0.hook_mlp_out returned shape"):
        loss_fn(m(t), t).backward()
    m.reset_hooks()
    for p in list(m.parameters()) + list(tl.parameters()):
        p.grad = None
    loss_fn(m(t), t).backward()
    loss_fn(tl(t), t).backward()
    assert_grads_match(m, tl, "after a failed backward")


def test_models_the_backward_cannot_differentiate_refuse_at_backward():
    m = mi.HookedTransformer(mi.HookedTransformerConfig(**dict(SMALL, dtype="bfloat16")))
    t = tokens_for(SMALL, 2)
    logits = m(t)
    with pytest.raises(NotImplementedError, match="bfloat16"):
        loss_fn(logits, t).backward()
    with torch.no_grad():
        assert m(t).shape == (2, 16, 50)
    # a model feature the C backward does not differentiate: said at backward
    _, m = make_pair(SMALL)
    m.set_use_split_qkv_input(True)
    logits = m(t)
    with torch.no_grad():
        torch.testing.assert_close(logits.detach(), m(t), rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match="use_split_qkv_input"):
        loss_fn(logits, t).backward()
    m.set_use_split_qkv_input(False)
    loss_fn(m(t), t).backward()
    assert m.embed.W_E.grad is not None


def test_no_position_training_loop_follows_transformer_lens():
    """The seed's training loop as written (``logits = model(tokens); loss = loss_fn(logits,
    tokens); loss.backward(); clip_grad_norm_; optimizer.step(); optimizer.zero_grad();
    scheduler.step()`` with torch.optim.AdamW and LambdaLR, frozen zero W_pos) for 200
    steps on both models from the same initial weights and batches. Batch 32 instead of
    256 keeps the test short. Bound: 1e-4 on the loss at every step: both sides run the
    same torch optimiser, so the only difference is float32 rounding of the forward and
    backward sums (another order), which the 200 Adam steps carry along the trajectory;
    test_training.py measured ~3.5e-5 worst for this recipe."""
    steps, bs = 200, 32
    cfg = RECIPE
    tl, m = make_pair(cfg, perturb=False)
    init = {k: v.detach().numpy().copy() for k, v in tl.state_dict().items()}
    models = []
    for model in (m, tl):
        model.pos_embed.W_pos.data[:] = 0.0
        model.pos_embed.W_pos.requires_grad = False
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(i / 100, 1.0))
        models.append((model, opt, sched))
    torch.manual_seed(123)
    worst, ours = 0.0, []
    for step in range(steps):
        tokens = torch.randint(1, cfg["d_vocab"], (bs, cfg["n_ctx"]))
        tokens[:, 0] = 0
        losses = []
        for model, optimizer, scheduler in models:
            logits = model(tokens)
            loss = loss_fn(logits, tokens)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            losses.append(loss.item())
        worst = max(worst, abs(losses[0] - losses[1]))
        ours.append(losses[0])
        assert abs(losses[0] - losses[1]) < 1e-4, (step, losses)
    print(f"max |loss - TransformerLens loss| over {steps} steps: {worst:.2e}")
    # it learned: the comparison is not of two frozen models (ln(299) = 5.70 at the start)
    assert np.mean(ours[-10:]) < np.mean(ours[:10]) - 0.05, (ours[:10], ours[-10:])
    assert not m.pos_embed.W_pos.detach().any() and m.pos_embed.W_pos.grad is None
    # the optimiser's updates are the C weights' (a NumPy-mode view sees them) and follow
    # TransformerLens's: the change from the start, on each tensor's norm (5e-2 relative:
    # Adam moves an element whose gradient is rounding noise by ~lr per step either way;
    # b_K's gradient is all rounding noise, see the module docstring)
    mi.set_array_type("numpy")
    for name, p in tl.named_parameters():
        if not p.requires_grad or name.endswith("attn.b_K"):
            continue
        mine = np.asarray(m.get_parameter(name).data) - init[name]
        ref = p.detach().numpy() - init[name]
        assert np.linalg.norm(mine - ref) < 5e-2 * np.linalg.norm(ref), name


def test_gemma2_softcaps_post_norms_and_local_attention():
    """Gemma 2's features (post norms, attention and final logit soft-caps, sliding
    window, scaled embeddings) through torch autograd: the logits handed to torch are the
    capped ones, so the C backward takes d loss / d capped logits through the cap."""
    from test_gemma2 import GEMMA, T
    cfg = dict(GEMMA)
    tl, m = make_pair(cfg)
    t = torch.as_tensor(np.random.default_rng(1).integers(0, 50, (3, T)))
    loss, ref = loss_fn(m(t), t), loss_fn(tl(t), t)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward(), ref.backward()
    assert_grads_match(m, tl, "gemma2")
