"""Gradients of a metric at every hook point (``run_with_cache(incl_bwd=True, metric=...)``)
and backward hooks, against TransformerLens's autograd on the same weights and tokens;
a finite-difference check; bad input.

Tolerance: every ``*_grad`` entry within 1e-5 of the reference tensor's largest
magnitude (float32 on both sides, sums in a different order: the measured worst is
about 2e-6)."""
import numpy as np
import pytest
import torch

import mechinterp_c as mi
from mechinterp_c import metrics
from test_backward import CONFIGS, make_pair

TOL = 1e-5
RNG = np.random.default_rng(1)
TOKENS = RNG.integers(0, 50, size=(3, 12))
ANS, WRONG = RNG.integers(0, 50, 3), RNG.integers(0, 50, 3)


def tl_run(tl, tokens, metric_fn, attention_mask=None, fwd_hooks=(), bwd_hooks=()):
    """TransformerLens's recipe: caching hooks in both directions on every point it has,
    the forward, metric.backward(). Returns (value, cache)."""
    cache = {}

    def save(t, hook):
        cache[hook.name] = t.detach().clone()

    def save_grad(t, hook):
        cache[hook.name + "_grad"] = t.detach().clone()

    tl.reset_hooks()
    for name, fn in fwd_hooks:
        tl.add_hook(name, fn, "fwd")
    for name, fn in bwd_hooks:
        tl.add_hook(name, fn, "bwd")
    for n in tl.hook_dict:
        try:
            tl.add_hook(n, save, "fwd")
            tl.add_hook(n, save_grad, "bwd")
        except AssertionError:   # points TransformerLens refuses for this config (hook_result off)
            pass
    mask = None if attention_mask is None else torch.tensor(attention_mask)
    logits = tl(torch.tensor(tokens), attention_mask=mask)
    value = metric_fn(logits)
    value.backward()
    tl.reset_hooks()
    return value.item(), cache


def tl_logit_diff(ans, wrong, pos=-1):
    def f(logits):
        b = torch.arange(logits.shape[0])
        p = torch.as_tensor(pos).expand(logits.shape[0]) if np.ndim(pos) == 0 else torch.as_tensor(pos)
        return (logits[b, p, torch.as_tensor(ans)] - logits[b, p, torch.as_tensor(wrong)]).mean()
    return f


def tl_loss(tokens, attention_mask=None):
    from transformer_lens.utils import lm_cross_entropy_loss

    def f(logits):
        mask = None if attention_mask is None else torch.tensor(attention_mask)
        return lm_cross_entropy_loss(logits, torch.tensor(tokens), attention_mask=mask)
    return f


def assert_grads_match(cache, ref, what=""):
    names = [k for k in ref if k.endswith("_grad")]
    assert names, "the reference cached no gradient"
    mine_names = {k for k in cache if k.endswith("_grad")}
    assert mine_names == set(names), (what, mine_names ^ set(names))
    for k in names:
        r, m = ref[k].numpy(), np.asarray(cache[k])
        assert m.shape == r.shape, (what, k, m.shape, r.shape)
        if k.endswith("hook_attn_scores_grad") and np.isnan(r).any():
            # a query whose keys are all padding: TransformerLens's softmax of an all -inf
            # row is NaN (zeroed after), and autograd's gradient there NaN; no gradient
            # flows from it (everything upstream is finite on both sides), ours is 0
            nan = np.isnan(r)
            assert np.all(nan.all(-1) == nan.any(-1)), (what, k, "NaN beyond whole rows")
            assert np.all(m[nan] == 0), (what, k)
            r, m = np.where(nan, 0, r), np.where(nan, 0, m)
        scale = max(np.abs(r).max(), 1e-30)
        err = np.abs(m - r).max() / scale
        assert err < TOL, (what, k, err)


IDS = lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "LN-relu"


FAMILY_CONFIGS = [
    dict(positional_embedding_type="rotary", rotary_dim=8, normalization_type="RMS", act_fn="silu",
         gated_mlp=True),
    dict(n_key_value_heads=2),
    dict(positional_embedding_type="rotary", rotary_dim=4, n_key_value_heads=1, act_fn="gelu_new"),
    dict(positional_embedding_type="rotary", rotary_dim=6, parallel_attn_mlp=True, act_fn="gelu_new"),
    dict(parallel_attn_mlp=True, use_hook_mlp_in=True, use_attn_result=True),
]


@pytest.mark.parametrize("kw", CONFIGS + FAMILY_CONFIGS, ids=IDS)
def test_every_gradient_matches_transformer_lens(kw):
    tl, m = make_pair(**kw)
    value, cache = m.run_with_cache(TOKENS, incl_bwd=True, metric=metrics.logit_diff(ANS, WRONG))
    ref_value, ref = tl_run(tl, TOKENS, tl_logit_diff(ANS, WRONG))
    assert abs(value - ref_value) < 1e-5 * max(1.0, abs(ref_value))
    assert_grads_match(cache, ref, "logit_diff")
    # the activations in the same cache are the forward's
    for k in ref:
        if not k.endswith("_grad"):
            np.testing.assert_allclose(np.asarray(cache[k]), ref[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("kw", [{}, dict(normalization_type="RMS", act_fn="silu", gated_mlp=True),
                                dict(attn_only=True, attention_dir="bidirectional")], ids=IDS)
def test_loss_metric_matches_transformer_lens(kw):
    tl, m = make_pair(**kw)
    value, cache = m.run_with_cache(TOKENS, incl_bwd=True, metric="loss")
    ref_value, ref = tl_run(tl, TOKENS, tl_loss(TOKENS))
    assert abs(value - ref_value) < 2e-6 * abs(ref_value)
    assert_grads_match(cache, ref, "loss")
    # TransformerLens's form: return_type="loss" with incl_bwd is loss.backward()
    value2, cache2 = m.run_with_cache(TOKENS, incl_bwd=True, return_type="loss")
    assert value2 == value
    np.testing.assert_array_equal(cache2["blocks.0.hook_resid_pre_grad"], cache["blocks.0.hook_resid_pre_grad"])


@pytest.mark.parametrize("kw", [{}, dict(normalization_type="RMS", act_fn="gelu_new"),
                                dict(attention_dir="bidirectional"),
                                dict(positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2)],
                         ids=IDS)
def test_padding_mask_gradients_match_transformer_lens(kw):
    tl, m = make_pair(**kw)
    mask = np.ones(TOKENS.shape, dtype=np.int64)
    mask[0, :3] = 0     # left padding
    mask[2, 9:] = 0     # right padding
    pos = np.array([11, 11, 8])
    metric = metrics.logit_diff(ANS, WRONG, pos=pos)
    value, cache = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric, attention_mask=mask)
    ref_value, ref = tl_run(tl, TOKENS, tl_logit_diff(ANS, WRONG, pos), attention_mask=mask)
    if kw.get("attention_dir") == "bidirectional":
        # TransformerLens ignores the mask in bidirectional attention (documented
        # difference, HookedTransformer.forward): only check the gradients are finite
        assert all(np.isfinite(np.asarray(v)).all() for k, v in cache.items() if k.endswith("_grad"))
        return
    assert abs(value - ref_value) < 1e-5 * max(1.0, abs(ref_value))
    assert_grads_match(cache, ref, "padding")


def test_logprob_and_function_metrics():
    tl, m = make_pair()
    toks, pos = np.array([3, 7, 11]), np.array([5, -1, 0])
    value, cache = m.run_with_cache(TOKENS, incl_bwd=True, metric=metrics.logprob(toks, pos))

    def ref_metric(logits):
        lp = logits.log_softmax(-1)
        b = torch.arange(3)
        return lp[b, torch.tensor(pos % 12), torch.tensor(toks)].mean()
    ref_value, ref = tl_run(tl, TOKENS, ref_metric)
    assert abs(value - ref_value) < 1e-5 * abs(ref_value)
    assert_grads_match(cache, ref, "logprob")

    # the same metric as a NumPy function of the logits with its gradient
    def np_logprob(logits):
        x = logits.astype(np.float64)
        lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) + x.max(-1, keepdims=True)
        b, p = np.arange(3), pos % 12
        value = (x - lse)[b, p, toks].mean()
        grad = np.zeros_like(x)
        grad[b, p] = -np.exp(x - lse)[b, p] / 3
        grad[b, p, toks] += 1 / 3
        return value, grad
    value2, cache2 = m.run_with_cache(TOKENS, incl_bwd=True, metric=np_logprob)
    assert abs(value2 - value) < 1e-6 * abs(value)
    for k in cache:
        if k.endswith("_grad"):
            r = np.asarray(cache[k])
            assert np.abs(np.asarray(cache2[k]) - r).max() <= TOL * max(np.abs(r).max(), 1e-30), k


def test_names_filter_applies_to_both_and_return_types():
    _, m = make_pair()
    metric = metrics.logit_diff(ANS, WRONG)
    value, cache = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric,
                                    names_filter=lambda n: n.endswith("hook_resid_pre"))
    assert sorted(cache.keys()) == sorted(["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre",
                                           "blocks.0.hook_resid_pre_grad", "blocks.1.hook_resid_pre_grad"])
    _, full = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
    np.testing.assert_array_equal(cache["blocks.0.hook_resid_pre_grad"], full["blocks.0.hook_resid_pre_grad"])
    # gradients nobody keeps share one slot per kind: the filtered pass holds less (one
    # block holds a pass's activations, gradients and scratch; the activations are the
    # same, the backward reads them all)
    held = lambda c: c["blocks.0.hook_resid_pre_grad"].base.nbytes
    grad_bytes = sum(np.asarray(full[k]).nbytes for k in full.keys() if k.endswith("_grad"))
    assert held(full) - held(cache) > 0.3 * grad_bytes
    logits, c2 = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric, return_type="logits",
                                  names_filter="hook_embed", return_cache_object=False)
    np.testing.assert_array_equal(logits, m(TOKENS))
    assert set(c2) == {"hook_embed", "hook_embed_grad"}
    (logits2, v2), _ = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric, return_type="both")
    assert v2 == value
    # the gradient of the embedding is that of resid_pre 0 (resid_pre = embed + pos_embed)
    np.testing.assert_array_equal(full["hook_embed_grad"], full["blocks.0.hook_resid_pre_grad"])


def _ablate(grad, hook):
    grad[:] = 0


def _scale_pos(grad, hook):
    grad[:, 3] *= 2.5


def _replace(grad, hook):
    return grad * 0.5 + 0.01


def tl_hook(fn):
    """TransformerLens's form of one of our backward hooks (fn(array, hook) -> None to keep
    its in-place edits, or a replacement)."""
    def hook(t, hook):
        a = t.detach().numpy().copy()
        ret = fn(a, hook)
        return torch.tensor(a if ret is None else ret)
    return hook


@pytest.mark.parametrize("points", [
    [("blocks.1.hook_attn_out", _ablate)],
    [("blocks.1.mlp.hook_post", _scale_pos), ("blocks.0.attn.hook_pattern", _replace)],
    [("blocks.1.attn.hook_attn_scores", _replace), ("blocks.0.ln2.hook_scale", _replace),
     ("blocks.0.attn.hook_v", _ablate), ("blocks.1.ln1.hook_normalized", _scale_pos)],
    [("ln_final.hook_scale", _replace), ("blocks.1.attn.hook_q", _replace), ("blocks.0.hook_resid_mid", _ablate)],
])
def test_backward_hooks_change_upstream_gradients_as_in_transformer_lens(points):
    tl, m = make_pair()

    metric = metrics.logit_diff(ANS, WRONG)
    with m.hooks(bwd_hooks=points):
        value, cache = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
    ref_value, ref = tl_run(tl, TOKENS, tl_logit_diff(ANS, WRONG),
                            bwd_hooks=[(n, tl_hook(f)) for n, f in points])
    _, plain = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
    assert not np.allclose(cache["hook_embed_grad"], plain["hook_embed_grad"])   # the hooks did act
    # cached gradients downstream of a hook are the hook's input in TransformerLens
    # (its caching hook ran first); compare what flows upstream
    hooked = {n for n, _ in points}
    upstream = {k: v for k, v in ref.items() if k.endswith("_grad") and k[:-5] not in hooked}
    assert_grads_match({k: cache[k] for k in upstream}, upstream, "bwd hooks")


def test_run_with_hooks_backward_hooks_and_permanent_hooks():
    _, m = make_pair()
    seen = []
    metric = metrics.logit_diff(ANS, WRONG)
    value = m.run_with_hooks(TOKENS, bwd_hooks=[("blocks.0.hook_mlp_out", lambda g, hook: seen.append(g.copy()))],
                             metric=metric)
    _, cache = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
    assert value == pytest.approx(cache_value := value) and len(seen) == 1
    np.testing.assert_array_equal(seen[0], cache["blocks.0.hook_mlp_out_grad"])
    assert not m.hook_dict["blocks.0.hook_mlp_out"].has_hooks()       # removed on exit
    # dir="bwd" by hand, with a filter; reset_hooks removes it
    m.add_hook(lambda n: n.endswith("hook_resid_post"), _ablate, dir="bwd")
    assert m.hook_dict["blocks.1.hook_resid_post"].has_hooks(dir="bwd")
    assert not m.hook_dict["blocks.1.hook_resid_post"].has_hooks(dir="fwd")
    _, c = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
    assert np.all(np.asarray(c["hook_embed_grad"]) == 0)
    m.reset_hooks()
    assert not m.hook_dict["blocks.1.hook_resid_post"].has_hooks()
    # TransformerLens's add_caching_hooks(incl_bwd=True) fills *_grad in a metric pass
    store = m.add_caching_hooks(lambda n: n == "blocks.1.hook_resid_mid", incl_bwd=True)
    m.run_with_hooks(TOKENS, metric=metric)
    np.testing.assert_array_equal(store["blocks.1.hook_resid_mid_grad"], cache["blocks.1.hook_resid_mid_grad"])
    m.reset_hooks()
    assert cache_value == value


def test_finite_differences_tiny_model():
    """d metric / d activation against central differences of the metric in float64
    (the perturbation enters through a forward hook; float32 forward: eps 1e-2 and a
    5e-3 relative tolerance on the directional derivative)."""
    _, m = make_pair(n_layers=1, d_model=16, d_head=4, n_heads=4, d_mlp=32, act_fn="gelu_new")
    toks = TOKENS[:2, :6]
    metric = metrics.logprob(np.array([4, 9]), np.array([-1, 2]))
    _, cache = m.run_with_cache(toks, incl_bwd=True, metric=metric)
    rng = np.random.default_rng(5)

    def value_at(name, direction, eps):
        def hook(act, hook):
            act += (eps * direction).astype(np.float32)
        logits = m.run_with_hooks(toks, fwd_hooks=[(name, hook)]).astype(np.float64)
        lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        return (lp[0, -1, 4] + lp[1, 2, 9]) / 2

    # (not ln1's points: TransformerLens runs ln1 once per q, k and v input and its
    # cached gradient is the q path's, while a forward hook here perturbs all three)
    for name in ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_pattern", "blocks.0.ln2.hook_scale",
                 "blocks.0.attn.hook_q", "blocks.0.mlp.hook_pre", "ln_final.hook_normalized"]:
        g = np.asarray(cache[name + "_grad"], dtype=np.float64)
        d = rng.standard_normal(g.shape)
        eps = 1e-2
        fd = (value_at(name, d, eps) - value_at(name, d, -eps)) / (2 * eps)
        an = float((g * d).sum())
        assert abs(fd - an) <= 5e-3 * max(abs(an), 1e-3), (name, fd, an)


def test_bad_input_clear_errors_model_usable():
    _, m = make_pair()
    metric = metrics.logit_diff(ANS, WRONG)
    v0, c0 = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
    g0 = np.asarray(c0["blocks.0.hook_resid_pre_grad"]).copy()
    shape = TOKENS.shape + (50,)
    with pytest.raises(ValueError, match="gradient has shape"):
        m.run_with_cache(TOKENS, incl_bwd=True, metric=lambda lg: (1.0, np.zeros((3, 12))))
    with pytest.raises(TypeError, match="floating-point"):
        m.run_with_cache(TOKENS, incl_bwd=True, metric=lambda lg: (1.0, np.zeros(shape, dtype=np.int64)))
    with pytest.raises(TypeError, match=r"must return \(value, dvalue_dlogits\)"):
        m.run_with_cache(TOKENS, incl_bwd=True, metric=lambda lg: lg.sum())

    def raising(logits):
        raise RuntimeError("metric exploded")
    with pytest.raises(RuntimeError, match="metric exploded"):
        m.run_with_cache(TOKENS, incl_bwd=True, metric=raising)
    with pytest.raises(ValueError, match="backward hook on blocks.0.hook_mlp_out returned shape"):
        m.run_with_hooks(TOKENS, bwd_hooks=[("blocks.0.hook_mlp_out", lambda g, hook: g[:, :3])], metric=metric)
    with pytest.raises(ValueError, match="metric=..."):
        m.run_with_hooks(TOKENS, bwd_hooks=[("blocks.0.hook_mlp_out", _ablate)])
    with pytest.raises(ValueError, match="incl_bwd=True needs metric"):
        m.run_with_cache(TOKENS, incl_bwd=True)
    with pytest.raises(IndexError, match="answer_tokens"):
        m.run_with_cache(TOKENS, incl_bwd=True, metric=metrics.logit_diff(np.array([1, 2, 99]), WRONG))
    with pytest.raises(IndexError, match="pos"):
        m.run_with_cache(TOKENS, incl_bwd=True, metric=metrics.logit_diff(ANS, WRONG, pos=12))
    with pytest.raises(ValueError, match="batch"):
        m.run_with_cache(TOKENS, incl_bwd=True, metric=metrics.logit_diff(ANS[:2], WRONG[:2]))
    with pytest.raises(ValueError, match="named metric"):
        m.run_with_cache(TOKENS, incl_bwd=True, metric="logit_diff")
    with pytest.raises(NotImplementedError, match="stop_at_layer"):
        m.run_with_cache(TOKENS, incl_bwd=True, metric=metric, stop_at_layer=1)
    # no hooks left behind, same results
    assert not any(hp.has_hooks() for hp in m.hook_dict.values())
    v1, c1 = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
    assert v1 == v0
    np.testing.assert_array_equal(c1["blocks.0.hook_resid_pre_grad"], g0)


def test_thread_count_does_not_change_bits():
    _, m = make_pair(use_attn_result=True)
    metric = metrics.logit_diff(ANS, WRONG)
    runs = []
    before = mi.get_num_threads()
    for n in (1, 2):
        mi.set_num_threads(n)
        try:
            _, c = m.run_with_cache(TOKENS, incl_bwd=True, metric=metric)
        finally:
            mi.set_num_threads(before)
        runs.append(c)
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)


def assert_param_grads_equal_training(m, tokens, label=""):
    """The hooked pass's parameter gradients for the loss against the training backward's
    (float32 sums in another order: 1e-5 of each tensor's norm). b_K's gradient is 0 up to
    rounding on both sides (softmax ignores a bias shared by every key): not compared."""
    targets = np.full(tokens.shape, -100)
    targets[:, :-1] = tokens[:, 1:]
    m.zero_grad()
    loss = m.backward(tokens, targets)
    ref = m._training_state().grads.copy()
    grads = mi._core.grad_blob(m._core)
    value, *_ = m._run_grad(tokens, "loss", grads=grads)
    assert abs(value - loss) < 1e-6 * abs(loss)
    hd = m.cfg.n_heads * m.cfg.d_head
    kd = (m.cfg.n_key_value_heads or m.cfg.n_heads) * m.cfg.d_head
    for name, off, shape in m._core.param_table():
        r, g = ref[off:off + int(np.prod(shape))], grads[off:off + int(np.prod(shape))]
        if name.endswith("b_qkv"):
            keep = np.r_[0:hd, hd + kd:hd + 2 * kd]
            r, g = r[keep], g[keep]
        assert np.linalg.norm(g - r) <= 1e-5 * max(np.linalg.norm(r), 1e-12), (label, name)


@pytest.mark.parametrize("kw", [{}, dict(gated_mlp=True, act_fn="silu", normalization_type="RMS"),
                                dict(use_attn_result=True, attn_only=True)], ids=IDS)
def test_parameter_gradients_of_the_hooked_pass_equal_training_backward(kw):
    """Asked for, the same pass also gives the parameter gradients: those of the training
    backward for the loss (float32 sums in another order: 1e-5 of each tensor's norm)."""
    _, m = make_pair(**kw)
    assert_param_grads_equal_training(m, TOKENS)
