"""ActivationCache analysis methods against TransformerLens's own ActivationCache.

Each config builds a small random TL HookedTransformer, runs it with ``run_with_cache``
on random tokens, and wraps the same activations (as NumPy) in our ActivationCache with
a stand-in model offering what mechinterp_c's HookedTransformer offers (cfg, W_U, b_U,
W_O, b_O, W_out, b_out, ln_final_w / ln_final_b, tokens_to_residual_directions).
Every method is then called on both caches with the same arguments and compared.

Tolerance: both sides are float32 on identical activations; the differences are the
order of float32 sums (einsum vs torch) and our float64 recomputation of ln_final,
i.e. a few ulp of O(1..10) values -> rtol 2e-5, atol 2e-5.
"""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformer_lens")
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from mechinterp_c.activation_cache import ActivationCache  # noqa: E402
from mechinterp_c.utils import Slice  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOL = dict(rtol=2e-5, atol=2e-5)
BASE = dict(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=3, d_mlp=12, d_vocab=23,
            act_fn="gelu", normalization_type="LN", seed=0)
CONFIGS = {
    "ln": {},
    "ln_folded": dict(_fold=True),
    "rms": dict(normalization_type="RMS"),
    "attn_only": dict(attn_only=True, n_layers=3),
    "use_attn_result": dict(use_attn_result=True),
    "rotary_rms_gated_gqa": dict(positional_embedding_type="rotary", rotary_dim=4, n_heads=4,
                                 n_key_value_heads=2, normalization_type="RMS", gated_mlp=True,
                                 act_fn="silu"),
    "no_norm": dict(normalization_type=None),
}


class StandInModel:
    """What mechinterp_c.HookedTransformer will offer the cache, filled from a TL model."""

    def __init__(self, tl_model):
        self.cfg = tl_model.cfg
        n = lambda t: t.detach().numpy().copy()
        self.W_U, self.b_U = n(tl_model.W_U), n(tl_model.b_U)
        self.W_O, self.b_O = n(tl_model.W_O), n(tl_model.b_O)
        if not self.cfg.attn_only:
            self.W_out, self.b_out = n(tl_model.W_out), n(tl_model.b_out)
        ln = getattr(tl_model, "ln_final", None)
        self.ln_final_w = n(ln.w) if hasattr(ln, "w") else None
        self.ln_final_b = n(ln.b) if hasattr(ln, "b") else None

    def tokens_to_residual_directions(self, tokens):
        tokens = np.asarray(tokens)
        if tokens.size > 1:
            return np.moveaxis(self.W_U[:, tokens], 0, -1)
        return self.W_U[:, int(tokens.reshape(()))]


def build(name, batch=2, pos=6):
    overrides = dict(CONFIGS[name])
    fold = overrides.pop("_fold", False)
    cfg = HookedTransformerConfig(**{**BASE, **overrides})
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4 + (1.0 if pname.endswith(".w") else 0.0))
    if fold:
        model.load_and_process_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    model.requires_grad_(False)  # so TL's derived results are plain tensors
    tokens = torch.randint(0, cfg.d_vocab, (batch, pos), generator=g)
    _, tl_cache = model.run_with_cache(tokens)
    mine = ActivationCache({k: v.detach().numpy().copy() for k, v in tl_cache.items()},
                           StandInModel(model))
    return model, tl_cache, mine, tokens


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request):
    return (request.param, *build(request.param))


def to_torch(x):
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return x


def compare(tl_cache, mine, method, *args, **kwargs):
    """Call ``method`` on both caches (torch args for TL) and compare results and labels.

    Where TL raises KeyError (an activation the config lacks, e.g. ln2 of an attn-only
    model) ours must raise KeyError too; returns None then.
    """
    try:
        ref = getattr(tl_cache, method)(*[to_torch(a) for a in args],
                                        **{k: to_torch(v) for k, v in kwargs.items()})
    except KeyError:
        with pytest.raises(KeyError, match="not in the cache|not found"):
            getattr(mine, method)(*args, **kwargs)
        return None
    got = getattr(mine, method)(*args, **kwargs)
    if kwargs.get("return_labels"):
        (ref, ref_labels), (got, got_labels) = ref, got
        assert got_labels == ref_labels
    assert isinstance(got, np.ndarray)
    assert got.shape == tuple(ref.shape), (got.shape, tuple(ref.shape))
    assert got.dtype == np.float32  # float32 activations stay float32 (no silent float64)
    np.testing.assert_allclose(got, ref.detach().numpy(), **TOL)
    return got


POS_SLICES = [None, -1, (1, 4), [0, 2, 5]]


def test_getitem_and_mapping(setup):
    name, model, tl_cache, mine, _ = setup
    n_layers = model.cfg.n_layers
    for key in [("resid_pre", 0), ("resid_post", -1), ("pattern", -1), ("q", 1), "embed",
                ("scale", 0, "ln1") if model.cfg.normalization_type else ("attn_out", 0),
                f"blocks.{n_layers - 1}.hook_resid_post", "k1", "scale" if model.cfg.normalization_type else "embed", ("z", -n_layers)]:
        np.testing.assert_array_equal(mine[key], tl_cache[key].numpy())
        assert key in mine
    assert list(mine.keys()) == list(tl_cache.keys())
    assert list(mine) == list(tl_cache)
    assert len(mine) == len(tl_cache)
    assert [k for k, _ in mine.items()] == list(tl_cache.keys())
    assert all(isinstance(v, np.ndarray) for v in mine.values())
    assert repr(mine).startswith("ActivationCache with keys ['hook_embed'")
    with pytest.raises(KeyError, match=r"'blocks\.9\.hook_resid_pre' is not in the cache"):
        mine["resid_pre", 9]
    with pytest.raises(TypeError, match="cache key must be"):
        mine[3.5]


@pytest.mark.parametrize("layer", [None, 0, 1, -1, 2])
@pytest.mark.parametrize("incl_mid,mlp_input", [(False, False), (True, False), (False, True), (True, True)])
def test_accumulated_resid(setup, layer, incl_mid, mlp_input):
    name, model, tl_cache, mine, _ = setup
    n_layers = model.cfg.n_layers
    final = layer in (None, -1, n_layers)
    if model.cfg.attn_only and (incl_mid or mlp_input):
        try:  # an attn-only block has no resid_mid: both must fail alike when it is needed
            tl_cache.accumulated_resid(layer=layer, incl_mid=incl_mid, mlp_input=mlp_input)
        except KeyError:
            with pytest.raises(KeyError, match="hook_resid_mid' is not in the cache"):
                mine.accumulated_resid(layer=layer, incl_mid=incl_mid, mlp_input=mlp_input)
            return
    for apply_ln, pos_slice in itertools.product([False, True], POS_SLICES):
        if mlp_input and final:
            continue  # no resid_mid after the last block (TL KeyErrors too)
        compare(tl_cache, mine, "accumulated_resid", layer=layer, incl_mid=incl_mid, apply_ln=apply_ln,
                pos_slice=pos_slice, mlp_input=mlp_input, return_labels=True)


@pytest.mark.parametrize("layer", [None, 0, 1, 2])
@pytest.mark.parametrize("mode", ["all", "attn", "mlp"])
def test_decompose_resid(setup, layer, mode):
    name, model, tl_cache, mine, _ = setup
    n_layers = model.cfg.n_layers
    for mlp_input, apply_ln, incl_embeds, pos_slice in itertools.product(
            [False, True], [False, True], [True, False], POS_SLICES):
        if mlp_input and layer in (None, n_layers):
            continue
        if not incl_embeds and layer == 0 and not (mlp_input and mode != "mlp"):
            continue  # nothing to stack (TL errors out in torch.stack)
        if not incl_embeds and mode == "mlp" and (model.cfg.attn_only or layer == 0):
            continue
        got = compare(tl_cache, mine, "decompose_resid", layer=layer, mlp_input=mlp_input, mode=mode,
                      apply_ln=apply_ln, pos_slice=pos_slice, incl_embeds=incl_embeds, return_labels=True)
        if got is not None and mode == "all" and incl_embeds and not apply_ln and pos_slice is None and not (
                mlp_input and model.cfg.attn_only):
            # The components sum to the residual stream they decompose
            target = mine[("resid_mid", layer)] if mlp_input else (
                mine[("resid_post", n_layers - 1)] if layer in (None, n_layers) else mine[("resid_pre", layer)])
            np.testing.assert_allclose(got.sum(0), target, rtol=1e-4, atol=1e-4)


def test_compute_head_results_matches_tl(setup):
    name, model, *_ = setup
    _, tl_cache, mine, _ = build(name)
    had_result = "blocks.0.attn.hook_result" in mine.cache_dict
    if not had_result:
        tl_cache.compute_head_results()
        mine.compute_head_results()
    for l in range(model.cfg.n_layers):
        key = f"blocks.{l}.attn.hook_result"
        np.testing.assert_allclose(mine.cache_dict[key], tl_cache[key].numpy(), **TOL)
        # Heads plus b_O rebuild attn_out
        np.testing.assert_allclose(mine.cache_dict[key].sum(-2) + mine.model.b_O[l], mine[("attn_out", l)],
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer", [-1, 0, 1, 2, None])
def test_stack_head_results(setup, layer):
    name, model, tl_cache, mine, _ = setup
    for incl_remainder, pos_slice, apply_ln in itertools.product([False, True], POS_SLICES, [False, True]):
        if incl_remainder and layer == 0:
            continue  # TL's quirk (remainder of resid_post[-1]); we raise instead, tested below
        compare(tl_cache, mine, "stack_head_results", layer=layer, return_labels=True,
                incl_remainder=incl_remainder, pos_slice=pos_slice, apply_ln=apply_ln)


def test_stack_activation(setup):
    name, model, tl_cache, mine, _ = setup
    for act, layer, sub in [("pattern", -1, None), ("resid_pre", 1, None), ("z", None, "attn"),
                            ("attn_out", 2, None)]:
        ref = tl_cache.stack_activation(act, layer, sub).numpy()
        np.testing.assert_array_equal(mine.stack_activation(act, layer, sub), ref)


NEURON_SLICES = [None, 3, (2, 7), [0, 5, 11]]


def _projections(d_model, rng):
    return [None, rng.standard_normal(d_model).astype(np.float32),
            rng.standard_normal((d_model, 3)).astype(np.float32)]


def test_get_neuron_results(setup, rng):
    name, model, tl_cache, mine, _ = setup
    if model.cfg.attn_only:  # no neurons: a clear KeyError, as TL's
        with pytest.raises(KeyError, match="hook_post' is not in the cache"):
            mine.get_neuron_results(0)
        return
    for layer, ns, ps, proj in itertools.product(range(model.cfg.n_layers), NEURON_SLICES, POS_SLICES,
                                                 _projections(model.cfg.d_model, rng)):
        if isinstance(ns, int) and proj is not None:
            # TL mis-broadcasts an int neuron_slice with a projection; check the formula instead
            acts = Slice(ps).apply(mine[("post", layer)], -2)[..., ns]
            want = (acts[..., None] * mine.model.W_out[layer, ns]) @ proj
            np.testing.assert_allclose(mine.get_neuron_results(layer, ns, ps, proj), want, **TOL)
            continue
        compare(tl_cache, mine, "get_neuron_results", layer, neuron_slice=ns, pos_slice=ps,
                project_output_onto=proj)


@pytest.mark.parametrize("layer", [0, 1, 2, -1])
def test_stack_neuron_results(setup, layer, rng):
    name, model, tl_cache, mine, _ = setup
    if model.cfg.attn_only:  # no neurons: a clear KeyError (d_mlp is None before that for TL)
        if layer != 0:
            with pytest.raises((KeyError, ValueError), match="hook_post' is not in the cache|d_mlp must be set"):
                mine.stack_neuron_results(layer)
        return
    for ns, ps, remainder, apply_ln, proj in itertools.product(
            NEURON_SLICES, [None, -1, (1, 4)], [False, True], [False, True], _projections(model.cfg.d_model, rng)):
        if remainder and layer == 0:
            continue
        if apply_ln and proj is not None and model.cfg.normalization_type is None:
            # No norm to apply: ours returns the plain projection (TL raises KeyError here)
            a = mine.stack_neuron_results(layer, ps, ns, False, remainder, True, proj)
            b = mine.stack_neuron_results(layer, ps, ns, False, remainder, False, proj)
            np.testing.assert_array_equal(a, b)
            continue
        if isinstance(ns, int):
            # TL cannot label an int neuron_slice; ours treats it as [ns] (keeps the axis)
            a = mine.stack_neuron_results(layer, ps, ns, False, remainder, apply_ln, proj)
            b = mine.stack_neuron_results(layer, ps, [ns], False, remainder, apply_ln, proj)
            np.testing.assert_array_equal(a, b)
            ns = [ns]
        compare(tl_cache, mine, "stack_neuron_results", layer, pos_slice=ps, neuron_slice=ns,
                return_labels=True, incl_remainder=remainder, apply_ln=apply_ln, project_output_onto=proj)


@pytest.mark.parametrize("layer", [None, 0, 1, 2])
def test_get_full_resid_decomposition(setup, layer, rng):
    name, model, tl_cache, mine, _ = setup
    n_layers = model.cfg.n_layers
    for mlp_input, expand, apply_ln, ps, proj in itertools.product(
            [False, True], [True, False], [False, True], [None, -1, [0, 3]], _projections(model.cfg.d_model, rng)):
        if mlp_input and layer in (None, n_layers):
            continue
        if apply_ln and proj is not None and model.cfg.normalization_type is None:
            # No norm to apply: ours equals apply_ln=False (TL raises KeyError here)
            a = mine.get_full_resid_decomposition(layer, mlp_input, expand, True, ps, False, proj)
            b = mine.get_full_resid_decomposition(layer, mlp_input, expand, False, ps, False, proj)
            np.testing.assert_allclose(a, b, **TOL)  # bias projected before vs after broadcast
            continue
        if model.cfg.attn_only and expand:
            # TL's accumulated_bias asks an attn-only block for its MLP and fails; with no
            # MLPs, expand_neurons changes nothing, so ours must equal expand_neurons=False
            if apply_ln and mlp_input:  # no ln2 in an attn-only block
                with pytest.raises(KeyError, match="ln2.hook_scale"):
                    mine.get_full_resid_decomposition(layer, mlp_input, True, apply_ln, ps, True, proj)
                continue
            a = mine.get_full_resid_decomposition(layer, mlp_input, True, apply_ln, ps, True, proj)
            b = mine.get_full_resid_decomposition(layer, mlp_input, False, apply_ln, ps, True, proj)
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1] == b[1]
            continue
        got = compare(tl_cache, mine, "get_full_resid_decomposition", layer=layer, mlp_input=mlp_input,
                      expand_neurons=expand, apply_ln=apply_ln, pos_slice=ps, return_labels=True,
                      project_output_onto=proj)
        if got is not None and not apply_ln and ps is None and proj is None and not (mlp_input and model.cfg.attn_only):
            target = mine[("resid_mid", layer)] if mlp_input else (
                mine[("resid_post", n_layers - 1)] if layer in (None, n_layers) else mine[("resid_pre", layer)])
            # Every head, neuron, embedding and bias: the rows sum to the stream
            np.testing.assert_allclose(got.sum(0), target, rtol=1e-4, atol=1e-4)


def test_apply_ln_to_stack(setup, rng):
    name, model, tl_cache, mine, _ = setup
    n_layers = model.cfg.n_layers
    stack = rng.standard_normal((4, 2, 6, model.cfg.d_model)).astype(np.float32)
    for layer, mlp_input, bs in itertools.product([None, 0, 1, n_layers], [False, True], [None, 1, [1, 0]]):
        if mlp_input and layer in (None, n_layers):
            continue
        compare(tl_cache, mine, "apply_ln_to_stack", stack, layer, mlp_input=mlp_input, batch_slice=bs)
    # pos_slice applies to the scale only: the stack must already be sliced
    compare(tl_cache, mine, "apply_ln_to_stack", stack[:, :, 1:4], 1, pos_slice=(1, 4))
    compare(tl_cache, mine, "apply_ln_to_stack", stack[:, :, -1], None, pos_slice=-1)
    compare(tl_cache, mine, "apply_ln_to_stack", stack, None, recompute_ln=True)


def test_logit_attrs(setup):
    name, model, tl_cache, mine, tokens = setup
    stack, labels = mine.decompose_resid(return_labels=True)
    tok = tokens.numpy()
    cases = [
        (stack, 5, None, {}),
        (stack, 5, 7, {}),
        (stack[:, :, -1], np.array([3, 9]), None, dict(pos_slice=-1)),  # one token per prompt
        (stack, tok, np.roll(tok, 1, axis=1), {}),
        (stack[:, :, -1], tok[:, -1], None, dict(pos_slice=-1)),
        (stack[:, :, -1], tok[:, -1], tok[:, 0], dict(pos_slice=-1)),
        (stack[:, 1:, 2:5], tok[1:, 2:5], None, dict(pos_slice=(2, 5), batch_slice=(1, None))),
    ]
    for resid, t, it, kw in cases:
        compare(tl_cache, mine, "logit_attrs", resid, t, incorrect_tokens=it, **kw)
    # Without batch dim: a single prompt's stack
    one = mine.apply_slice_to_batch_dim(0)
    tl_one = tl_cache.apply_slice_to_batch_dim(0)
    s1 = one.decompose_resid()
    np.testing.assert_allclose(one.logit_attrs(s1, tok[0], has_batch_dim=False),
                               tl_one.logit_attrs(torch.from_numpy(s1), tokens[0], has_batch_dim=False).numpy(),
                               **TOL)
    with pytest.raises(ValueError, match="tokens and incorrect_tokens must have the same shape"):
        mine.logit_attrs(stack, tok, incorrect_tokens=tok[:, 0])


def test_batch_dim_helpers(setup):
    name, *_ = setup
    _, tl_cache, mine, tokens = build(name, batch=1)
    mine.remove_batch_dim()
    tl_cache.remove_batch_dim()
    assert not mine.has_batch_dim
    for k in tl_cache:
        np.testing.assert_array_equal(mine[k], tl_cache[k].numpy())
    mid = not tl_cache.model.cfg.attn_only
    got, labels = mine.accumulated_resid(apply_ln=True, return_labels=True, incl_mid=mid)
    ref, ref_labels = tl_cache.accumulated_resid(apply_ln=True, return_labels=True, incl_mid=mid)
    assert labels == ref_labels
    np.testing.assert_allclose(got, ref.numpy(), **TOL)
    got = mine.decompose_resid(layer=1, apply_ln=True, pos_slice=(1, 3))
    np.testing.assert_allclose(got, tl_cache.decompose_resid(layer=1, apply_ln=True, pos_slice=(1, 3)).numpy(),
                               **TOL)
    _, _, batched, _ = build(name, batch=2)
    with pytest.raises(ValueError, match="batch size 2"):
        batched.remove_batch_dim()
    sub = batched.apply_slice_to_batch_dim([1])
    assert sub.has_batch_dim and sub["resid_pre", 0].shape[0] == 1
    np.testing.assert_array_equal(sub["resid_pre", 0][0], batched["resid_pre", 0][1])
    assert not batched.apply_slice_to_batch_dim(1).has_batch_dim


def test_errors_are_clear(setup):
    name, model, tl_cache, mine, _ = setup
    n = model.cfg.n_layers
    with pytest.raises(ValueError, match=rf"layer=7 is out of range: expected 0\.\.{n}"):
        mine.accumulated_resid(layer=7)
    with pytest.raises(ValueError, match="layer=-3 is out of range"):
        mine.decompose_resid(layer=-3)
    with pytest.raises(ValueError, match="mode must be 'all', 'mlp' or 'attn'"):
        mine.decompose_resid(mode="heads")
    with pytest.raises(ValueError, match="incl_remainder with layer=0"):
        mine.stack_head_results(0, incl_remainder=True)
    if model.cfg.normalization_type is not None:  # without a norm the stack comes back as is
        with pytest.raises(ValueError, match="mlp_input=True needs layer < n_layers"):
            mine.apply_ln_to_stack(np.zeros((1, 2, 6, model.cfg.d_model), np.float32), None, mlp_input=True)
    with pytest.raises(ValueError, match="Invalid input_slice"):
        mine.accumulated_resid(pos_slice="last")
    if model.cfg.normalization_type is not None:
        cache = ActivationCache({k: v for k, v in mine.cache_dict.items() if k != "ln_final.hook_scale"},
                                mine.model)
        with pytest.raises(KeyError, match="Cached LN scale not found at 'ln_final.hook_scale'"):
            cache.decompose_resid(apply_ln=True)
    bare = ActivationCache(dict(mine.cache_dict), None)
    with pytest.raises(ValueError, match="has no model"):
        bare.accumulated_resid()


def test_slice_object_accepted(setup):
    name, model, tl_cache, mine, _ = setup
    got = mine.accumulated_resid(pos_slice=Slice([0, 2]), apply_ln=True)
    ref = tl_cache.accumulated_resid(pos_slice=[0, 2], apply_ln=True).numpy()
    np.testing.assert_allclose(got, ref, **TOL)


class _Vocab:
    """A two-word 'tokenizer' for string tokens in logit_attrs."""
    ids = {" road": 4, " street": 9}

    def to_single_token(self, s):
        if s not in self.ids:
            raise ValueError(f"{s!r} is not a single token")
        return self.ids[s]


def test_logit_attrs_fallbacks_and_strings():
    """Without tokens_to_residual_directions the cache uses W_U; strings go via to_single_token."""
    model, tl_cache, mine, tokens = build("ln")
    bare = type("Bare", (_Vocab,), {})()
    bare.cfg, bare.W_U = mine.model.cfg, mine.model.W_U
    cache = ActivationCache(mine.cache_dict, bare)
    stack = cache.decompose_resid()
    ref = tl_cache.logit_attrs(torch.from_numpy(stack), 4, incorrect_tokens=9).numpy()
    np.testing.assert_allclose(cache.logit_attrs(stack, " road", incorrect_tokens=" street"), ref, **TOL)
    np.testing.assert_allclose(cache.logit_attrs(stack, np.int64(4), incorrect_tokens=9), ref, **TOL)
    tok = tokens.numpy()
    np.testing.assert_allclose(cache.logit_attrs(stack, tok),
                               tl_cache.logit_attrs(torch.from_numpy(stack), tokens).numpy(), **TOL)
    with pytest.raises(ValueError, match="' lane' is not a single token"):
        cache.logit_attrs(stack, " lane")


def test_callable_ln_final_is_used():
    """A model exposing ln_final as a callable gets it used for the logit-lens recompute."""
    model, tl_cache, mine, _ = build("ln")
    calls = []

    def ln_final(x):
        calls.append(x.shape)
        return model.ln_final(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    mine.model.ln_final = ln_final
    got = mine.accumulated_resid(apply_ln=True, pos_slice=(0, 3))
    np.testing.assert_allclose(got, tl_cache.accumulated_resid(apply_ln=True, pos_slice=(0, 3)).numpy(), **TOL)
    assert len(calls) == model.cfg.n_layers + 1


def test_compute_head_results_needs_z():
    model, tl_cache, mine, _ = build("ln")
    cache = ActivationCache({k: v for k, v in mine.cache_dict.items() if not k.endswith("hook_z")}, mine.model)
    with pytest.raises(KeyError, match=r"compute_head_results needs 'blocks\.0\.attn\.hook_z'"):
        cache.stack_head_results()


def test_partial_head_results_are_completed():
    """A cache holding hook_result for some layers only gets the rest computed from hook_z."""
    model, tl_cache, mine, _ = build("use_attn_result")
    full = {k: v.copy() for k, v in mine.cache_dict.items()}
    del mine.cache_dict["blocks.1.attn.hook_result"]
    got = mine.stack_head_results()
    ref = tl_cache.stack_head_results().numpy()
    np.testing.assert_allclose(got, ref, **TOL)
    np.testing.assert_allclose(mine.cache_dict["blocks.1.attn.hook_result"], full["blocks.1.attn.hook_result"], **TOL)
