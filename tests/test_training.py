"""The no-position training recipe: trajectory parity against TransformerLens +
torch.optim.AdamW + LambdaLR + clip_grad_norm_, from the same weights and batches."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mechinterp_c as mi
from transformer_lens import HookedTransformer as TLModel, HookedTransformerConfig as TLConfig

CFG = dict(n_layers=2, d_model=64, d_head=64, n_heads=1, d_mlp=256, d_vocab=300, n_ctx=50,
           act_fn="relu", normalization_type="LN", seed=0)


def batch(rng, n):
    tokens = rng.integers(1, CFG["d_vocab"], size=(n, CFG["n_ctx"]))
    tokens[:, 0] = 0
    targets = np.full_like(tokens, -100)
    targets[:, 1:] = tokens[:, :-1]          # predict the previous token
    return tokens, targets


def test_recipe_trajectory_matches_torch():
    """200 steps of the issue's recipe exactly as written (lr 1e-4, betas (0.9, 0.95),
    weight decay 0.1, LambdaLR warm-up min(i/100, 1), clip 1.0, frozen zero W_pos,
    rng(123) batches with previous-token targets) except the batch: 16 sequences
    instead of 256, so both sides run in seconds. Measured: the worst step differs by
    3.5e-5 at batch 32 (and C vs torch float64 differs about as much as torch float32
    does: this is float32's floor for the recipe; batch 16 is noisier and came within
    5% of the bound). torch runs on one thread so its reference trajectory does not
    depend on the machine's core count."""
    steps, bs = 200, 32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _recipe_trajectory(steps, bs)
    finally:
        torch.set_num_threads(threads)


def _recipe_trajectory(steps, bs):
    model = mi.HookedTransformer(mi.HookedTransformerConfig(**CFG))
    model.pos_embed.W_pos[:] = 0.0
    model.get_parameter("pos_embed.W_pos").requires_grad = False
    torch.manual_seed(0)
    tl = TLModel(TLConfig(**CFG))
    tl.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in model.state_dict().items()},
                       strict=False)
    tl.pos_embed.W_pos.requires_grad_(False)
    init = {k: np.array(v) for k, v in model.state_dict().items()}
    opt = mi.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sched = mi.optim.LambdaLR(opt, lambda i: min(i / 100, 1.0))
    tparams = [p for p in tl.parameters() if p.requires_grad]
    topt = torch.optim.AdamW(tparams, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda i: min(i / 100, 1.0))
    rng = np.random.default_rng(123)
    params = list(model.parameters())
    losses, tlosses, worst = [], [], 0.0
    for step in range(steps):
        tokens, targets = batch(rng, bs)
        loss = model.backward(tokens, targets)
        norm = mi.optim.clip_grad_norm_(params, 1.0)
        opt.step(); opt.zero_grad(); sched.step()

        logits = tl(torch.tensor(tokens))
        tloss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(targets).reshape(-1),
                                ignore_index=-100)
        tloss.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(tparams, 1.0)
        topt.step(); topt.zero_grad(); tsched.step()
        losses.append(loss); tlosses.append(tloss.item())
        worst = max(worst, abs(loss - tloss.item()))
        # the bound: 1e-4 absolute on the loss at every step (float32 rounding
        # differences between the two implementations grow slowly along the trajectory)
        assert abs(loss - tloss.item()) < 1e-4, (step, loss, tloss.item())
        # gradient norms: this zero-position recipe is ill-conditioned in float32 (even
        # torch float32 vs float64 gradients differ ~1e-3 on some batches), so 1e-2
        assert norm == pytest.approx(tnorm.item(), rel=1e-2), step
    print(f"max |loss - torch loss| over {steps} steps: {worst:.2e}")
    # it learned: the comparison is not of two frozen models (ln(299) = 5.70 at the start)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.05, (losses[:10], losses[-10:])
    assert not model.pos_embed.W_pos.any()   # frozen and zero
    for name, p in tl.named_parameters():
        if not p.requires_grad or name.endswith("attn.b_K"):
            continue   # b_K: its gradient is exactly 0 up to rounding, so Adam moves it by noise
        # Adam normalises each element's step to ~lr whatever the gradient's size, so an
        # element whose gradient is rounding noise can move ~lr differently per step:
        # compare the change from the start on the tensor's norm (5e-2 relative)
        start = init[name]
        mine, ref = model.get_parameter(name).data - start, p.detach().numpy() - start
        assert np.linalg.norm(mine - ref) < 5e-2 * np.linalg.norm(ref), name


def test_train_steps_helper_and_state_dict(capsys):
    model = mi.HookedTransformer(mi.HookedTransformerConfig(**dict(CFG, n_layers=1, d_vocab=40)))
    opt = mi.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    data = []
    for _ in range(3):
        t = rng.integers(0, 40, size=(4, 50))
        data.append((t, np.roll(t, 1, axis=1)))
    losses = model.train_steps(data, opt, max_grad_norm=1.0, progress=False)
    assert len(losses) == 3 and all(np.isfinite(losses))
    sd = {k: v.copy() for k, v in model.state_dict().items()}
    model2 = mi.HookedTransformer(mi.HookedTransformerConfig(**dict(CFG, n_layers=1, d_vocab=40, seed=9)))
    model2.load_state_dict(sd)
    t, y = data[0]
    assert model2.backward(t, y) == model.backward(t, y)   # same weights, same kernels: bitwise


def test_step_bitwise_identical_for_any_thread_count():
    """Loss, every gradient and the AdamW update are bitwise identical with 1, 2 and 3
    threads (no reduction is split between threads; the sizes cross every kernel's
    parallel threshold)."""
    rng = np.random.default_rng(5)
    tokens, targets = batch(rng, 24)
    mask = np.ones_like(tokens)
    mask[3, :7] = 0
    targets[mask == 0] = -100
    results = []
    old = mi.get_num_threads()
    try:
        for n in (1, 2, 3):
            mi.set_num_threads(n)
            model = mi.HookedTransformer(mi.HookedTransformerConfig(**CFG))
            opt = mi.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
            loss = model.backward(tokens, targets, attention_mask=mask)
            norm = mi.optim.clip_grad_norm_(model.parameters(), 0.5)
            grads = {k: p.grad.copy() for k, p in model.named_parameters()}
            opt.step()
            results.append((loss, norm, grads, {k: p.data.copy() for k, p in model.named_parameters()}))
    finally:
        mi.set_num_threads(old)
    for loss, norm, grads, data in results[1:]:
        assert loss == results[0][0] and norm == results[0][1]
        for k in grads:
            np.testing.assert_array_equal(grads[k], results[0][2][k], err_msg=k)
            np.testing.assert_array_equal(data[k], results[0][3][k], err_msg=k)


def test_gradients_follow_the_core_parameter_table():
    """Each Parameter.grad is its parameter's place in the gradient buffer as the C core's
    table lays out the blob (name, offset, shape): W_Q/W_K/W_V are strided views of the
    fused W_qkv gradient, and the table's rows tile the blob without overlap."""
    cfg = dict(CFG, n_heads=4, d_head=16)
    model = mi.HookedTransformer(cfg)
    table = model._core.param_table()
    raw = model._core.params()
    assert [name for name, _, _ in table] == list(raw)
    assert all(tuple(raw[name].shape) == shape for name, _, shape in table)
    ends = [(off, off + int(np.prod(shape))) for _, off, shape in sorted(table, key=lambda r: r[1])]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
    grads = model._training_state().grads
    assert ends[-1][1] <= grads.size
    off, shape = {name: (o, s) for name, o, s in table}["blocks.1.attn.W_qkv"]
    fused = grads[off:off + int(np.prod(shape))].reshape(shape)      # [D, 3, H, Dh]
    rng = np.random.default_rng(0)
    model.zero_grad()
    model.backward(*batch(rng, 2))
    for i, c in enumerate("QKV"):
        g = model.get_parameter(f"blocks.1.attn.W_{c}").grad
        assert g.shape == (4, 64, 16) and np.shares_memory(g, grads)
        np.testing.assert_array_equal(g, fused[:, i].transpose(1, 0, 2))
    assert np.abs(fused).sum() > 0
    for name, o, s in table:
        if name in dict(model.named_parameters()):
            p = model.get_parameter(name)
            np.testing.assert_array_equal(p.grad, grads[o:o + int(np.prod(s))].reshape(s))
