"""mechinterp_c.optim against torch.optim.AdamW, LambdaLR and clip_grad_norm_."""
import numpy as np
import pytest
import torch

import mechinterp_c as mi
from mechinterp_c import _testing, optim
from mechinterp_c.training import Parameter


def make_params(rng, shapes, strided=False):
    ps = []
    for i, shp in enumerate(shapes):
        data = rng.normal(size=shp).astype(np.float32)
        grad = np.zeros(shp, np.float32)
        if strided and len(shp) == 3:   # a W_Q-like strided view of a fused [D,3,H,Dh] blob
            H, D, Dh = shp
            fused_d = np.zeros((D, 3, H, Dh), np.float32); fused_g = np.zeros_like(fused_d)
            data = fused_d[:, 1].transpose(1, 0, 2); grad = fused_g[:, 1].transpose(1, 0, 2)
            data[...] = rng.normal(size=shp)
        ps.append(Parameter(f"p{i}", data, grad))
    return ps


@pytest.mark.parametrize("strided", [False, True])
def test_adamw_matches_torch(strided):
    rng = np.random.default_rng(0)
    ps = make_params(rng, [(4, 8, 5), (7,), (3, 6)], strided=strided)
    tps = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in ps]
    opt = optim.AdamW(ps, lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    topt = torch.optim.AdamW(tps, lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    sched = optim.LambdaLR(opt, lambda i: min((i + 1) / 5, 1.0))
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda i: min((i + 1) / 5, 1.0))
    for step in range(20):
        for p, tp in zip(ps, tps):
            g = rng.normal(size=p.data.shape).astype(np.float32)
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step(); topt.step(); sched.step(); tsched.step()
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12)
        for p, tp in zip(ps, tps):
            # same float32 formula as torch's single-tensor path; the foreach path
            # groups operations a little differently: a few ulps after 20 steps
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_frozen_parameters_are_skipped():
    """A requires_grad=False parameter given to AdamW is not updated at all (no weight
    decay either), as torch skips parameters whose grad is None."""
    rng = np.random.default_rng(1)
    ps = make_params(rng, [(5,), (5,)])
    ps[1].requires_grad = False
    ps[1].grad[...] = 1.0
    before = ps[1].data.copy()
    opt = optim.AdamW(ps, lr=0.1, weight_decay=0.5)
    ps[0].grad[...] = 1.0
    opt.step()
    np.testing.assert_array_equal(ps[1].data, before)
    assert 1 not in opt.state and opt.state[0]["step"] == 1


def test_clip_grad_norm_matches_torch():
    rng = np.random.default_rng(2)
    ps = make_params(rng, [(30, 20), (20,), (4, 8, 5)], strided=True)
    tps = []
    for p in ps:
        g = rng.normal(size=p.data.shape).astype(np.float32) * 3
        p.grad[...] = g
        tp = torch.nn.Parameter(torch.tensor(p.data.copy())); tp.grad = torch.tensor(g); tps.append(tp)
    total = optim.clip_grad_norm_(ps, 1.0)
    ttotal = torch.nn.utils.clip_grad_norm_(tps, 1.0)
    # float64 sum of squares vs torch's float32 norms: agree within 1e-6 relative
    assert total == pytest.approx(ttotal.item(), rel=1e-6)
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-6, atol=1e-9)
    # below the threshold nothing changes
    before = [p.grad.copy() for p in ps]
    optim.clip_grad_norm_(ps, 1e6)
    for p, b in zip(ps, before):
        np.testing.assert_array_equal(p.grad, b)


def test_clip_skips_frozen():
    rng = np.random.default_rng(3)
    ps = make_params(rng, [(4,), (4,)])
    ps[0].grad[...] = [3, 4, 0, 0]
    ps[1].grad[...] = 100.0
    ps[1].requires_grad = False
    assert optim.clip_grad_norm_(ps, 10.0) == pytest.approx(5.0)


def test_state_dict_roundtrip():
    rng = np.random.default_rng(4)
    ps = make_params(rng, [(6,), (2, 3)])
    opt = optim.AdamW(ps, lr=1e-2)
    sched = optim.LambdaLR(opt, lambda i: 0.5 ** i)
    for _ in range(3):
        for p in ps:
            p.grad[...] = rng.normal(size=p.data.shape)
        opt.step(); sched.step()
    sd, ssd = opt.state_dict(), sched.state_dict()
    data = [p.data.copy() for p in ps]
    grads = [rng.normal(size=p.data.shape).astype(np.float32) for p in ps]
    for p, g in zip(ps, grads):
        p.grad[...] = g
    opt.step()
    after = [p.data.copy() for p in ps]
    # restore weights and optimiser state into fresh objects: the same step again
    ps2 = make_params(rng, [(6,), (2, 3)])
    for p2, d, g in zip(ps2, data, grads):
        p2.data[...] = d; p2.grad[...] = g
    # torch's order: build optimiser and scheduler, then load their states (the
    # optimiser's state carries the current lr)
    opt2 = optim.AdamW(ps2, lr=1.0)
    sched2 = optim.LambdaLR(opt2, lambda i: 0.5 ** i)
    opt2.load_state_dict(sd)
    sched2.load_state_dict(ssd)
    assert sched2.last_epoch == 3
    opt2.step()
    for p2, a in zip(ps2, after):
        np.testing.assert_array_equal(p2.data, a)
    with pytest.raises(ValueError, match="different number of parameters"):
        optim.AdamW(ps2[:1]).load_state_dict(sd)


def test_errors():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([])
    with pytest.raises(TypeError, match="expected Parameter objects"):
        optim.AdamW([np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="invalid learning rate"):
        optim.AdamW(make_params(np.random.default_rng(0), [(2,)]), lr=-1)
    with pytest.raises(TypeError, match="p must be a writable float32"):
        mi._core.adamw_step(np.zeros(3), np.zeros(3, np.float32), np.zeros(3, np.float32),
                            np.zeros(3, np.float32), 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.1, 0.001)


@pytest.mark.parametrize("shape", [(37,), (5, 300), (3, 4, 70), (2, 3, 4, 129)])
def test_adamw_kernel_matches_reference(shape):
    """The parallel strided AdamW kernel against the plain scalar reference: the same
    float32 arithmetic per element, so bitwise equal; sizes cross the kernel's
    parallel threshold (32768), strided p/g views included."""
    rng = np.random.default_rng(9)
    n = int(np.prod(shape))
    # p, g: views strided over the first axis (the last must be contiguous), as W_Q
    # is a view of the fused QKV blob; a 1-D one is an offset slice
    big = rng.normal(size=(2 * shape[0] + 1,) + shape[1:]).astype(np.float32)
    gbig = rng.normal(size=big.shape).astype(np.float32)
    gbig.reshape(-1)[::7] = 0.0                      # zero gradients: m, v decay only
    gbig.reshape(-1)[::11] *= 1e4                     # large ones
    sel = slice(1, 1 + shape[0]) if len(shape) == 1 else slice(1, None, 2)
    p, g = big[sel], gbig[sel]
    start = p.copy()
    m = (rng.normal(size=shape) * 0.1).astype(np.float32)
    v = np.abs(rng.normal(size=shape) * 0.01).astype(np.float32)
    ref = [np.ascontiguousarray(a).copy() for a in (p, g, m, v)]
    for step in (1, 2, 50):
        args = (3e-3, 0.9, 0.95, 1e-8, 0.1, 1 - 0.9 ** step, 1 - 0.95 ** step)
        mi._core.adamw_step(p, g, m, v, *args)
        _testing._adamw_step_ref(*ref, *args)
        np.testing.assert_array_equal(p, ref[0].reshape(shape))
        np.testing.assert_array_equal(m, ref[2].reshape(shape))
        np.testing.assert_array_equal(v, ref[3].reshape(shape))
    assert n == ref[0].size and not np.array_equal(p, start)   # it moved
    with pytest.raises(ValueError, match="same size"):
        _testing._adamw_step_ref(ref[0], ref[1][:-1].copy(), ref[2], ref[3], *args)
    # and the reference itself is torch's AdamW on one step (float32 formula)
    tp = torch.nn.Parameter(torch.tensor(start))
    tp.grad = torch.tensor(np.ascontiguousarray(g))
    torch.optim.AdamW([tp], lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, foreach=False).step()
    mine = start.copy()
    _testing._adamw_step_ref(mine, np.ascontiguousarray(g).copy(), np.zeros(shape, np.float32),
                             np.zeros(shape, np.float32), 3e-3, 0.9, 0.95, 1e-8, 0.1, 0.1, 0.05)
    # torch's single-tensor path in float32: the same operations; a few ulps at most
    np.testing.assert_allclose(mine, tp.detach().numpy(), rtol=1e-6, atol=1e-9)


def test_one_call_helpers_errors_and_nan():
    """The one-call C paths behind AdamW.step / zero_grad / clip_grad_norm_: NaN
    gradients, error_if_nonfinite (as torch: RuntimeError, nothing scaled), and clear
    errors for mismatched lists."""
    rng = np.random.default_rng(11)
    ps = make_params(rng, [(4, 8, 5), (7,)], strided=True)
    ps[0].grad[...] = 1.0
    ps[1].grad[...] = np.nan
    tps = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in ps]
    for p, tp in zip(ps, tps):
        tp.grad = torch.tensor(p.grad.copy())
    with pytest.raises(RuntimeError, match="total norm of the gradients is nan"):
        optim.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        torch.nn.utils.clip_grad_norm_(tps, 1.0, error_if_nonfinite=True)
    assert (ps[0].grad == 1.0).all()                       # nothing scaled
    assert np.isnan(optim.clip_grad_norm_(ps, 1.0))        # torch: nan norm, grads * nan
    assert np.isnan(torch.nn.utils.clip_grad_norm_(tps, 1.0).item())
    opt = optim.AdamW(ps, lr=1e-2)
    opt.zero_grad()                                         # NaN gradients become 0 too
    assert all(not p.grad.any() for p in ps)
    with pytest.raises(ValueError, match="exp_avgs has 1 arrays, expected 2"):
        mi._core.adamw_step_many([p.data for p in ps], [p.grad for p in ps], [np.zeros(160, np.float32)],
                                 [], [1, 1], 1e-3, 0.9, 0.999, 1e-8, 0.0)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] must be a writable C-contiguous float32"):
        mi._core.adamw_step_many([ps[0].data], [ps[0].grad], [ps[0].data], [np.zeros(160, np.float32)],
                                 [1], 1e-3, 0.9, 0.999, 1e-8, 0.0)
    with pytest.raises(ValueError, match=r"steps\[0\] = 0 must be >= 1"):
        mi._core.adamw_step_many([ps[1].data], [ps[1].grad], [np.zeros(7, np.float32)],
                                 [np.zeros(7, np.float32)], [0], 1e-3, 0.9, 0.999, 1e-8, 0.0)
    with pytest.raises(ValueError, match=r"params\[0\] and grads\[0\] must have the same shape"):
        mi._core.adamw_step_many([ps[1].data], [np.zeros(6, np.float32)], [np.zeros(7, np.float32)],
                                 [np.zeros(7, np.float32)], [1], 1e-3, 0.9, 0.999, 1e-8, 0.0)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a writable float32"):
        mi._core.clip_grads([np.zeros(3)], 1.0)
