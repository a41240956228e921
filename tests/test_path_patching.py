"""mechinterp_c.patching.path_patch against the path-patching recipe written with
TransformerLens hooks on the same weights and tokens.

The reference (``tl_path_patch``) is the two-pass recipe of the IOI paper and
ARENA: cache the clean and corrupted runs; pass A runs the corrupted tokens with
every head's ``hook_z`` frozen to the corrupted run, the senders patched to the
clean run, and records the receivers' inputs; pass B runs the corrupted tokens
with the receivers' inputs set to the recorded ones; the metric of its logits.

Tolerance: |ours - TL| <= 1e-5 x max(|TL|, logit scale), the logit scale being
the largest |logit| the metric reads in the corrupted run: both sides compute the
same float32 passes in different summation orders (~1e-7 relative per logit
through 3 layers of d_model 32), and the metric is a difference of two logits,
so its absolute error is bounded by the logits' size, not by the (possibly
small) difference. A wrong path (other head, no freezing, other receiver) moves
the metric by 1e-2 or more of that scale (checked: the grids are not flat, and
not equal to plain activation patching).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
tl = pytest.importorskip("transformer_lens")

from mechinterp_c import patching
from sweep_reference import tl_pair  # noqa: E402

TOL = 1e-5
L, NH = 3, 4
BASE = dict(n_layers=L, d_model=32, n_ctx=16, d_head=8, n_heads=NH, d_vocab=50, act_fn="gelu_new",
            seed=1)
B, T, V = 3, 6, 50
ANSWER, WRONG = np.array([1, 2, 3]), np.array([4, 5, 6])


def make_pair(overrides, perturb=0.3):
    """A TransformerLens model and ours with identical, non-trivial weights."""
    return tl_pair(dict(BASE, **overrides), perturb)


def tokens_pair(seed=3):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, V, (B, T))
    corrupt = clean.copy()
    corrupt[:, 1] = (clean[:, 1] + 7) % V
    corrupt[:, 3] = (clean[:, 3] + 11) % V
    return clean, corrupt


def tl_logit_diff(logits):
    ar = torch.arange(B)
    return (logits[ar, -1, torch.tensor(ANSWER)] - logits[ar, -1, torch.tensor(WRONG)]).mean().item()


def np_logit_diff(logits):
    return (logits[np.arange(B), -1, ANSWER] - logits[np.arange(B), -1, WRONG]).mean()


def _name_head(x):
    """The recipe's (hook name, head or None) of a sender or receiver spec."""
    if isinstance(x, str):
        return x, None
    if len(x) == 3:
        return f"blocks.{x[0]}.attn.hook_{x[2]}", x[1]
    if isinstance(x[1], str):
        if x[1].startswith("resid"):
            return f"blocks.{x[0]}.hook_{x[1]}", None
        return f"blocks.{x[0]}.hook_{x[1]}_out", None
    return f"blocks.{x[0]}.attn.hook_z", x[1]


def tl_path_patch(tm, clean, corrupt, senders, receivers, mask=None):
    """The two-pass recipe with TransformerLens hooks."""
    kw = {} if mask is None else {"attention_mask": torch.tensor(mask)}
    tclean, tcorrupt = torch.tensor(clean), torch.tensor(corrupt)
    with torch.no_grad():
        _, ck = tm.run_with_cache(tcorrupt, **kw)
        _, cc = tm.run_with_cache(tclean, **kw)
        hooks = []
        for l in range(tm.cfg.n_layers):          # freeze every head
            def freeze(z, hook, l=l):
                z[...] = ck[f"blocks.{l}.attn.hook_z"]
                return z
            hooks.append((f"blocks.{l}.attn.hook_z", freeze))
        for name, h in map(_name_head, senders):  # then the senders' clean values
            def put(a, hook, name=name, h=h):
                if h is None:
                    a[...] = cc[name]
                else:
                    a[:, :, h] = cc[name][:, :, h]
                return a
            hooks.append((name, put))
        rec = {}
        recv = [_name_head(r) for r in receivers]
        for name in {n for n, _ in recv}:
            def grab(a, hook, name=name):
                rec[name] = a.clone()
            hooks.append((name, grab))
        tm.run_with_hooks(tcorrupt, fwd_hooks=hooks, **kw)
        hooks = []
        for name, h in recv:
            def put_r(a, hook, name=name, h=h):
                if h is None:
                    a[...] = rec[name]
                else:
                    a[:, :, h] = rec[name][:, :, h]
                return a
            hooks.append((name, put_r))
        return tl_logit_diff(tm.run_with_hooks(tcorrupt, fwd_hooks=hooks, **kw))


@pytest.fixture(scope="module")
def pair():
    tm, m = make_pair({})
    clean, corrupt = tokens_pair()
    scale = float(np.abs(m(corrupt)[:, -1]).max())
    return tm, m, clean, corrupt, scale


def close(ours, ref, scale, what):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, what
    bound = TOL * np.maximum(np.abs(ref), scale)
    err = np.abs(ours - ref)
    assert (err <= bound).all(), f"{what}: max error {err.max():.3g} (bound {bound.min():.3g})"


RECEIVERS = [(2, 1, "q"), (2, 3, "v"), (1, 0, "k")]


def test_head_grid_to_head_inputs(pair):
    tm, m, clean, corrupt, scale = pair
    metric = patching.logit_diff(ANSWER, WRONG)
    ours = patching.path_patch(m, clean, corrupt, "heads", RECEIVERS, metric, progress=False)
    ours_np = patching.path_patch(m, clean, corrupt, "heads", RECEIVERS, np_logit_diff, progress=False)
    assert ours.shape == (L, NH) and ours.dtype == np.float32
    ref = np.array([[tl_path_patch(tm, clean, corrupt, [(l, h)], RECEIVERS) for h in range(NH)]
                    for l in range(L)])
    close(ours, ref, scale, "heads -> q/k/v (built-in metric)")
    close(ours_np, ref, scale, "heads -> q/k/v (NumPy metric)")
    base = np_logit_diff(m(corrupt))
    # layer 2's heads write after every receiver reads: exactly the corrupted metric
    np.testing.assert_allclose(ours[2], base, rtol=0, atol=1e-6 * scale)
    assert np.ptp(ref[:2]) > 100 * TOL * scale      # not flat: a wrong cell would show
    # path patching is not activation patching of the sender (the heads in between
    # are frozen, only the receivers see the sender)
    act = patching.get_act_patch_attn_head_out_all_pos(m, corrupt, m.run_with_cache(clean)[1], metric,
                                                       progress=False)
    assert np.abs(act[0] - ours[0]).max() > 100 * TOL * scale


def test_layer_grids_and_resid_receivers(pair):
    tm, m, clean, corrupt, scale = pair
    metric = patching.logit_diff(ANSWER, WRONG)
    for kind, recv in (("mlp", [(2, "resid_pre")]), ("attn", ["blocks.2.hook_resid_post"]),
                       ("mlp", [(1, "resid_mid"), (2, 2, "q")])):
        ours = patching.path_patch(m, clean, corrupt, kind, recv, metric, progress=False)
        ref = np.array([tl_path_patch(tm, clean, corrupt, [(l, kind)], recv) for l in range(L)])
        close(ours, ref, scale, f"{kind} -> {recv}")
        assert ours.shape == (L,)


def test_joint_senders_single_sender_and_normalize(pair):
    tm, m, clean, corrupt, scale = pair
    metric = patching.logit_diff(ANSWER, WRONG)
    senders = [(0, 1), (1, 2), (0, "mlp")]
    recv = [(2, 0, "q"), (2, "resid_mid")]
    ours = patching.path_patch(m, clean, corrupt, senders, recv, metric, progress=False)
    ref = tl_path_patch(tm, clean, corrupt, senders, recv)
    assert isinstance(ours, float)
    close(ours, ref, scale, "joint senders")
    one = patching.path_patch(m, clean, corrupt, (0, 3), (2, 3, "k"), np_logit_diff, progress=False)
    close(one, tl_path_patch(tm, clean, corrupt, [(0, 3)], [(2, 3, "k")]), scale, "one sender")
    c, k = np_logit_diff(m(clean)), np_logit_diff(m(corrupt))
    norm = patching.path_patch(m, clean, corrupt, senders, recv, metric, normalize=True, progress=False)
    np.testing.assert_allclose(norm, (ref - k) / (c - k), rtol=1e-4, atol=1e-4)
    # every head and MLP as senders into the final residual stream: the clean run
    everything = [(l, h) for l in range(L) for h in range(NH)] + [(l, "mlp") for l in range(L)]
    full = patching.path_patch(m, clean, corrupt, everything, "blocks.2.hook_resid_post", metric,
                               normalize=True, progress=False)
    np.testing.assert_allclose(full, 1.0, rtol=1e-4)


def test_padding_mask_and_pass_size(pair):
    tm, m, clean, corrupt, scale = pair
    mask = np.ones((B, T), np.int64)
    mask[0, :2] = 0
    mask[2, :1] = 0
    metric = patching.logit_diff(ANSWER, WRONG)
    ours = patching.path_patch(m, clean, corrupt, "heads", RECEIVERS[:2], metric, attention_mask=mask,
                               progress=False)
    one_per_pass = patching.path_patch(m, clean, corrupt, "heads", RECEIVERS[:2], metric,
                                       attention_mask=mask, progress=False, pass_rows=1)
    np.testing.assert_allclose(ours, one_per_pass, rtol=0, atol=1e-6 * scale)
    ref = np.array([[tl_path_patch(tm, clean, corrupt, [(l, h)], RECEIVERS[:2], mask=mask)
                     for h in range(NH)] for l in range(2)])
    close(ours[:2], ref, scale, "with padding")


def test_bad_input_clear_errors_model_usable(pair):
    tm, m, clean, corrupt, scale = pair
    metric = patching.logit_diff(ANSWER, WRONG)
    with pytest.raises(ValueError, match="same shape"):
        patching.path_patch(m, clean[:, :5], corrupt, (0, 1), (2, 0, "q"), metric)
    with pytest.raises(IndexError, match="head 9"):
        patching.path_patch(m, clean, corrupt, (0, 9), (2, 0, "q"), metric)
    with pytest.raises(ValueError, match="unknown grid"):
        patching.path_patch(m, clean, corrupt, "neurons", (2, 0, "q"), metric)
    with pytest.raises(ValueError, match="receivers"):
        patching.path_patch(m, clean, corrupt, (0, 1), (2, 0, "z"), metric)
    with pytest.raises(ValueError, match="residual-stream hook point"):
        patching.path_patch(m, clean, corrupt, (0, 1), "blocks.2.attn.hook_z", metric)
    with pytest.raises(ValueError, match="scalar"):
        patching.path_patch(m, clean, corrupt, (0, 1), (2, 0, "q"), lambda lg: lg[:, -1, 0])
    with pytest.raises(RuntimeError, match="patching_metric raised"):
        patching.path_patch(m, clean, corrupt, (0, 1), (2, 0, "q"), lambda lg: 1 / 0)
    assert np.isfinite(m(clean)).all()
    ours = patching.path_patch(m, clean, corrupt, (0, 1), (2, 0, "q"), metric)
    close(ours, tl_path_patch(tm, clean, corrupt, [(0, 1)], [(2, 0, "q")]), scale, "after the errors")


def test_engine_bindings_refuse_bad_sources(pair):
    tm, m, clean, corrupt, scale = pair
    from mechinterp_c import _core
    resid = np.zeros((B, T, 32), np.float32)
    pz = m.hook_dict["blocks.1.attn.hook_z"].point_id
    pq = m.hook_dict["blocks.1.attn.hook_q"].point_id
    z = np.zeros((B, T, NH, 8), np.float32)
    cells = np.array([[0, -1, 1, -1], [-1, -1, -1, -1]], np.int64)
    cap = np.zeros((2, B, T, NH, 8), np.float32)
    with pytest.raises(ValueError, match="unknown mode bits"):
        _core.patch_capture(m._core, 0, 2, resid, [(pz, z, 0, 16)], cells, 1)
    with pytest.raises(ValueError, match="stop layer"):
        _core.patch_capture(m._core, 1, 1, resid, [(pz, z), (pq, cap, 0, 4)], cells, 1)
    with pytest.raises(ValueError, match="past the last block"):
        _core.patch_capture(m._core, 0, 1, resid, [(pz, z), (pq, cap, 0, 4)], cells, 1)
    with pytest.raises(ValueError, match="without a capture source"):
        _core.patch_capture(m._core, 0, 2, resid, [(pz, z)], cells, 1)
    with pytest.raises(ValueError, match="captured activation has"):
        _core.patch_capture(m._core, 0, 2, resid, [(pz, z), (pq, cap[:1], 0, 4)], cells, 1)
    with pytest.raises(ValueError, match="batch-shared"):
        _core.patch_capture(m._core, 0, 2, resid, [(pz, z[0], 0, 8 | 2), (pq, cap, 0, 4)], cells, 1)
    with pytest.raises(ValueError, match="every position"):
        _core.patch_run(m._core, 0, resid, [(pz, z), (pq, cap, 0, 4)], cells, 1, None,
                        np.array([[0, T - 1]]), np.array([[1]]), False, pos0=2,
                        past_k=[z] * 3, past_v=[z] * 3)
    with pytest.raises(IndexError, match="source"):
        _core.patch_capture(m._core, 0, 2, resid, [(pz, z), (pq, cap, 0, 4)],
                            np.array([[-2, -1, -1, -1]]), 1)
    # a capture of the unpatched cell is the corrupted run's activation there
    _, ck = m.run_with_cache(corrupt)
    r = np.ascontiguousarray(ck["blocks.0.hook_resid_pre"])
    pz0 = m.hook_dict["blocks.0.attn.hook_z"].point_id
    _core.patch_capture(m._core, 0, 2, r, [(pz0, z), (pq, cap, 0, 4)], cells, 1)
    np.testing.assert_allclose(cap[1], ck["blocks.1.attn.hook_q"], rtol=0, atol=1e-6 * scale)
    assert np.abs(cap[0] - cap[1]).max() > 1e-3       # head 1 of layer 0 zeroed: layer 1's q moves
    assert np.isfinite(m(clean)).all()
