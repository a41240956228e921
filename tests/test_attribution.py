"""Attribution patching against the ARENA / Neel Nanda recipe on TransformerLens:
forward and backward caching hooks, ``metric.backward()`` on the corrupted run, then
``einops.reduce(corrupted_grad * (clean - corrupted), ...)`` per layer, position and
head, on an IOI-style prompt set built from the test's own tokens."""
import einops
import numpy as np
import pytest
import torch
from transformer_lens import ActivationCache as TLCache

from mechinterp_c import metrics
from mechinterp_c.attribution import attribution_patch
from test_backward import make_pair

# IOI-style prompts from a 50-token vocabulary: "BOS When A and B went to the X , B gave
# a Y to" -> A (indirect object), wrong B (subject); the corrupted prompt names a
# third person C in place of the first A (the ABC corruption).
NAMES = [5, 6, 7, 8, 9, 10, 11, 12]


def ioi_prompts(n=6, seed=0):
    rng = np.random.default_rng(seed)
    clean, corrupt, ans, wrong = [], [], [], []
    for _ in range(n):
        a, b, c = rng.choice(NAMES, 3, replace=False)
        x, y = rng.integers(20, 50, 2)
        tmpl = [0, 13, a, 14, b, 15, 16, 17, x, 18, b, 19, 20, y, 16]
        clean.append(tmpl)
        corrupt.append([c if (i == 2) else t for i, t in enumerate(tmpl)])
        ans.append(a)
        wrong.append(b)
    return np.array(clean), np.array(corrupt), np.array(ans), np.array(wrong)


def get_cache_fwd_and_bwd(model, tokens, metric):
    """The notebook's helper: activations and gradients of every point, by hooks."""
    model.reset_hooks()
    cache, grad_cache = {}, {}

    def forward_cache_hook(act, hook):
        cache[hook.name] = act.detach()

    def backward_cache_hook(act, hook):
        grad_cache[hook.name] = act.detach()

    # the notebook's filter_not_qkv_input, and the points this TransformerLens refuses
    # with their flags off
    keep = lambda n: not n.endswith(("_input", "hook_result", "hook_mlp_in", "hook_attn_in"))
    model.add_hook(keep, forward_cache_hook, "fwd")
    model.add_hook(keep, backward_cache_hook, "bwd")
    value = metric(model(torch.tensor(tokens)))
    value.backward()
    model.reset_hooks()
    return value.item(), TLCache(cache, model), TLCache(grad_cache, model)


@pytest.mark.parametrize("kw", [dict(n_ctx=16), dict(n_ctx=16, normalization_type="RMS", act_fn="gelu_new")])
def test_attribution_patch_matches_notebook_recipe(kw):
    tl, m = make_pair(**kw)
    clean, corrupt, ans, wrong = ioi_prompts()

    def ioi_metric(logits):
        b = torch.arange(len(ans))
        return (logits[b, -1, torch.tensor(ans)] - logits[b, -1, torch.tensor(wrong)]).mean()
    clean_value, clean_cache, _ = get_cache_fwd_and_bwd(tl, clean, ioi_metric)
    corrupted_value, corrupted_cache, corrupted_grad_cache = get_cache_fwd_and_bwd(tl, corrupt, ioi_metric)

    scores = attribution_patch(m, clean, corrupt, metrics.logit_diff(ans, wrong))
    assert scores.clean_value == pytest.approx(clean_value, rel=1e-5, abs=1e-6)
    assert scores.corrupt_value == pytest.approx(corrupted_value, rel=1e-5, abs=1e-6)

    def check(mine, ref, what):
        ref = ref.detach().numpy().astype(np.float64)
        # float32 activations and gradients on both sides, products summed in float64
        # here and float32 there: 1e-4 of the largest score
        assert mine.shape == ref.shape, (what, mine.shape, ref.shape)
        assert np.abs(mine - ref).max() <= 1e-4 * max(np.abs(ref).max(), 1e-12), what

    # per layer and position: the residual stream and the layer outputs
    for act in ("resid_pre", "resid_mid", "attn_out", "mlp_out"):
        diff = clean_cache.stack_activation(act) - corrupted_cache.stack_activation(act)
        ref = einops.reduce(corrupted_grad_cache.stack_activation(act) * diff,
                            "layer batch pos d_model -> layer pos", "sum")
        check(scores.stack(f"hook_{act}"), ref, act)
    # per layer, position and head: the head vectors
    for act in ("q", "k", "v", "z"):
        diff = clean_cache.stack_activation(act) - corrupted_cache.stack_activation(act)
        ref = einops.reduce(corrupted_grad_cache.stack_activation(act) * diff,
                            "layer batch pos head_index d_head -> layer pos head_index", "sum")
        check(scores.stack(f"attn.hook_{act}"), ref, act)
    # per layer, head, destination and source: the attention pattern
    diff = clean_cache.stack_activation("pattern") - corrupted_cache.stack_activation("pattern")
    ref = einops.reduce(corrupted_grad_cache.stack_activation("pattern") * diff,
                        "layer batch head_index dest src -> layer head_index dest src", "sum")
    check(scores.stack("attn.hook_pattern"), ref, "pattern")


def test_attribution_patch_names_and_bad_input():
    _, m = make_pair(n_ctx=16)
    clean, corrupt, ans, wrong = ioi_prompts(3)
    scores = attribution_patch(m, clean, corrupt, metrics.logit_diff(ans, wrong), names=lambda n: n.endswith("hook_z"))
    assert sorted(scores) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert scores.stack("attn.hook_z").shape == (2, clean.shape[1], 4)
    with pytest.raises(ValueError, match="same shape"):
        attribution_patch(m, clean, corrupt[:, :-1], metrics.logit_diff(ans, wrong))
    with pytest.raises(KeyError, match="no scores"):
        scores.stack("hook_resid_pre")
