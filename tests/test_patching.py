"""mechinterp_c.patching against transformer_lens.patching on the same weights and tokens.

Every function of TransformerLens's module is run on both sides with a
logit-difference metric (ours: the built-in ``logit_diff`` evaluated in C on
the rows it reads, and the same metric as a plain NumPy function of the
logits), causal and bidirectional, GPT-2-style (LayerNorm, gelu_new) and a
Llama-style family (RMSNorm, gated SiLU MLP).

Tolerance: |ours - TL| <= TOL * (the largest |logit| the metric reads in the
corrupted run), TOL = 1e-5. The metric is a difference of two logits, each
computed in float32 by both libraries in different summation orders (unit
roundoff 6e-8, ~1e-6 of the logit scale through 2-3 layers of d_model 32);
the difference of two such numbers carries their absolute error, so the
error is bounded relative to the logits, not to the (possibly tiny)
difference. A wrong patch (other position, head or layer) moves a cell by
1e-2 or more of that scale.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
tl = pytest.importorskip("transformer_lens")
tlp = pytest.importorskip("transformer_lens.patching")
tlu = pytest.importorskip("transformer_lens.utils")

from mechinterp_c import _core, patching
from sweep_reference import tl_pair  # noqa: E402

TOL = 1e-5
BASE = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, act_fn="gelu_new", seed=1)
CONFIGS = {
    "gpt2": {},
    "llama_like": dict(normalization_type="RMS", act_fn="silu", gated_mlp=True, d_mlp=48),
    "bidirectional": dict(attention_dir="bidirectional"),
}
FUNCTIONS = [
    "get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out",
    "get_act_patch_mlp_out", "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos", "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_pattern_by_pos", "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos", "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every", "get_act_patch_block_every",
]
B, T, V = 3, 6, 50
ANSWER, WRONG = np.array([1, 2, 3]), np.array([4, 5, 6])


def make_pair(overrides, perturb=0.1):
    """A TransformerLens model and ours with identical, non-trivial weights."""
    return tl_pair(dict(BASE, **overrides), perturb)


def tokens_pair(seed=3):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, V, (B, T))
    corrupt = clean.copy()
    corrupt[:, 2] = (clean[:, 2] + 7) % V
    corrupt[:, 4] = (clean[:, 4] + 11) % V   # two positions differ (IOI's two names)
    return clean, corrupt


def tl_logit_diff(logits):
    ar = torch.arange(B)
    return (logits[ar, -1, torch.tensor(ANSWER)] - logits[ar, -1, torch.tensor(WRONG)]).mean()


def np_logit_diff(logits):
    return (logits[np.arange(B), -1, ANSWER] - logits[np.arange(B), -1, WRONG]).mean()


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request):
    tm, m = make_pair(CONFIGS[request.param])
    clean, corrupt = tokens_pair()
    _, cc = m.run_with_cache(clean)
    _, tcc = tm.run_with_cache(torch.tensor(clean))
    logits_c = m(corrupt)
    scale = float(np.abs(logits_c[:, -1]).max())
    return tm, m, clean, corrupt, cc, tcc, scale


def assert_cells_close(ours, ref, scale, what):
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs TransformerLens {ref.shape}"
    assert ours.dtype == np.float32
    err = np.abs(ours.astype(np.float64) - ref).max()
    assert err <= TOL * scale, f"{what}: max error {err:.3g} > {TOL} x logit scale {scale:.3g}"


# the largest grids (hundreds of TransformerLens passes) run with the slow cases
HEAVY = {"get_act_patch_attn_head_pattern_dest_src_pos", "get_act_patch_attn_head_by_pos_every"}


@pytest.mark.parametrize("fn", [pytest.param(f, marks=pytest.mark.slow) if f in HEAVY else f
                                for f in FUNCTIONS])
def test_parity_with_transformer_lens(setup, fn):
    tm, m, clean, corrupt, cc, tcc, scale = setup
    ref = getattr(tlp, fn)(tm, torch.tensor(corrupt), tcc, tl_logit_diff).numpy()
    ours = getattr(patching, fn)(m, corrupt, cc, patching.logit_diff(ANSWER, WRONG), progress=False)
    assert_cells_close(ours, ref, scale, fn + " (built-in logit_diff)")
    # a plain NumPy metric of the logits takes the full-logits path (the "every"
    # functions only call the others)
    if not fn.endswith("_every"):
        ours_np = getattr(patching, fn)(m, corrupt, cc, np_logit_diff, progress=False)
        assert_cells_close(ours_np, ref, scale, fn + " (NumPy metric)")
    assert np.ptp(ref) > 100 * TOL * scale   # the grid is not flat: a wrong cell would show


def test_builtin_metrics_match_their_numpy_form(setup):
    tm, m, clean, corrupt, cc, tcc, scale = setup
    for metric in (patching.logprob(ANSWER, pos=-2), patching.loss(corrupt),
                   patching.logit_diff(ANSWER, WRONG, pos=[5, 4, 3])):
        fast = patching.get_act_patch_resid_pre(m, corrupt, cc, metric, progress=False)
        slow = patching.get_act_patch_resid_pre(m, corrupt, cc, lambda lg: metric(lg), progress=False)
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5 * scale)
        # and against TransformerLens with the torch form of the metric
        if isinstance(metric, patching.loss):
            def tmetric(lg):
                return tlu.lm_cross_entropy_loss(lg, torch.tensor(corrupt))
            ref = tlp.get_act_patch_resid_pre(tm, torch.tensor(corrupt), tcc, tmetric).numpy()
            np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)


def test_generic_index_df_and_custom_setter(setup):
    tm, m, clean, corrupt, cc, tcc, scale = setup
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame([[1, 3, 2], [0, 0, 1], [1, 5, 0], [0, -1, -1]], columns=["layer", "pos", "head"])
    ref, rdf = tlp.generic_activation_patch(tm, torch.tensor(corrupt), tcc, tl_logit_diff,
                                            tlp.layer_pos_head_vector_patch_setter, "v", index_df=df,
                                            return_index_df=True)
    ours, odf = patching.generic_activation_patch(m, corrupt, cc, patching.logit_diff(ANSWER, WRONG),
                                                  patching.layer_pos_head_vector_patch_setter, "v",
                                                  index_df=df, return_index_df=True, progress=False)
    assert odf is df and ours.shape == (4,)
    assert_cells_close(ours, ref.numpy(), scale, "index_df")
    # TransformerLens's own setter object is recognised too; a custom one runs as a hook
    ours_tl = patching.generic_activation_patch(m, corrupt, cc, np_logit_diff,
                                                tlp.layer_pos_head_vector_patch_setter, "v", index_df=df,
                                                progress=False)
    ours_np = patching.generic_activation_patch(m, corrupt, cc, np_logit_diff,
                                                patching.layer_pos_head_vector_patch_setter, "v",
                                                index_df=df, progress=False)
    np.testing.assert_array_equal(ours_tl, ours_np)

    def my_setter(act, index, clean_act):      # returns a new array, as torch setters may
        out = act.copy()
        out[:, index[1], index[2]] = clean_act[:, index[1], index[2]]
        return out
    ours_hook = patching.generic_activation_patch(m, corrupt, cc, np_logit_diff, my_setter, "v",
                                                  index_df=df, progress=False)
    assert_cells_close(ours_hook, ref.numpy(), scale, "custom setter")
    # the full-grid index table
    _, tdf = patching.get_act_patch_resid_pre(m, corrupt, cc, np_logit_diff, return_index_df=True,
                                              progress=False)
    assert list(tdf.columns) == ["layer", "pos"] and len(tdf) == 2 * T
    assert tdf.iloc[3].tolist() == [0, 3]


def test_normalize(setup):
    tm, m, clean, corrupt, cc, tcc, scale = setup
    raw = patching.get_act_patch_resid_pre(m, corrupt, cc, np_logit_diff, progress=False)
    norm = patching.get_act_patch_resid_pre(m, corrupt, cc, patching.logit_diff(ANSWER, WRONG),
                                            normalize=True, progress=False)
    c, k = np_logit_diff(m(clean)), np_logit_diff(m(corrupt))
    np.testing.assert_allclose(norm, (raw - k) / (c - k), rtol=1e-4, atol=1e-4)
    # the whole residual stream entering layer 0 patched: the clean run, normalised to 1
    whole = patching.generic_activation_patch(m, corrupt, cc, patching.logit_diff(ANSWER, WRONG),
                                              lambda act, index, clean_act: clean_act, "resid_pre",
                                              index_df=np.array([[0]]), normalize=True, progress=False)
    np.testing.assert_allclose(whole, [1.0], rtol=1e-4)


def test_padding_mask_causal_and_bidirectional():
    for name in ("gpt2", "bidirectional"):
        tm, m = make_pair(CONFIGS[name])
        clean, corrupt = tokens_pair(5)
        mask = np.ones((B, T), np.int64)
        mask[0, :2] = 0                  # left padding of the first prompt
        mask[1, :1] = 0
        _, cc = m.run_with_cache(clean, attention_mask=mask)
        _, tcc = tm.run_with_cache(torch.tensor(clean), attention_mask=torch.tensor(mask))
        tmask = torch.tensor(mask)
        cells = [(l, p) for l in range(2) for p in range(T)]
        ref = np.zeros((2, T), np.float32)
        for l, p in cells:                # TransformerLens's loop, with the mask passed on
            def hook(act, hook, p=p, l=l):
                act[:, p] = tcc[f"blocks.{l}.hook_resid_pre"][:, p]
                return act

            def np_hook(act, hook, p=p, l=l):
                act[:, p] = cc[f"blocks.{l}.hook_resid_pre"][:, p]
            if name == "bidirectional":
                # TransformerLens ignores the mask of bidirectional attention, where
                # mechinterp_c's forward masks padded keys (documented in forward):
                # the reference is then the full forward loop with the mask
                lg = m.run_with_hooks(corrupt, attention_mask=mask,
                                      fwd_hooks=[(f"blocks.{l}.hook_resid_pre", np_hook)])
                ref[l, p] = np_logit_diff(lg)
                continue
            lg = tm.run_with_hooks(torch.tensor(corrupt), attention_mask=tmask,
                                   fwd_hooks=[(f"blocks.{l}.hook_resid_pre", hook)])
            ref[l, p] = tl_logit_diff(lg).item()
        ours = patching.get_act_patch_resid_pre(m, corrupt, cc, patching.logit_diff(ANSWER, WRONG),
                                                attention_mask=mask, progress=False)
        scale = float(np.abs(m(corrupt, attention_mask=mask)[:, -1]).max())
        assert_cells_close(ours, ref, scale, f"{name} with padding")
        if name == "bidirectional":
            continue
        # a causal model: patching a padded position changes nothing
        k = np_logit_diff(m(corrupt, attention_mask=mask))
        ours_np = patching.get_act_patch_resid_pre(m, corrupt, cc, np_logit_diff, attention_mask=mask,
                                                   progress=False)
        assert_cells_close(ours_np, ref, scale, "padding, NumPy metric")
        assert np.isfinite(k)


def test_threads_and_pass_size_do_not_change_results(setup):
    tm, m, clean, corrupt, cc, tcc, scale = setup
    metric = patching.logit_diff(ANSWER, WRONG)
    n0 = _core.get_num_threads()
    try:
        _core.set_num_threads(1)
        one = patching.get_act_patch_attn_head_out_by_pos(m, corrupt, cc, metric, progress=False)
        _core.set_num_threads(2)
        two = patching.get_act_patch_attn_head_out_by_pos(m, corrupt, cc, metric, progress=False)
        small = patching.get_act_patch_attn_head_out_by_pos(m, corrupt, cc, metric, progress=False,
                                                            pass_rows=1)
    finally:
        _core.set_num_threads(n0)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(small, two, rtol=0, atol=1e-6 * scale)


def _still_usable(m, clean):
    logits = m(clean)
    assert np.isfinite(logits).all()


def test_bad_input_clear_errors_model_usable(setup):
    tm, m, clean, corrupt, cc, tcc, scale = setup
    metric = patching.logit_diff(ANSWER, WRONG)
    short = corrupt[:, :5]
    with pytest.raises(ValueError, match="same shape"):
        patching.get_act_patch_resid_pre(m, short, cc, np_logit_diff, progress=False)
    with pytest.raises(ValueError, match="scalar"):
        patching.get_act_patch_resid_pre(m, corrupt, cc, lambda lg: lg[:, -1, 0], progress=False)

    def raising(lg):
        raise ZeroDivisionError("boom")
    with pytest.raises(RuntimeError, match="patching_metric raised ZeroDivisionError"):
        patching.get_act_patch_resid_pre(m, corrupt, cc, raising, progress=False)
    calls = []

    def raises_later(lg):                # fine on the corrupted run, fails on a patched one
        calls.append(1)
        if len(calls) > 1:
            raise KeyError("late")
        return np_logit_diff(lg)
    with pytest.raises(RuntimeError, match="patched"):
        patching.get_act_patch_resid_pre(m, corrupt, cc, raises_later, progress=False)
    with pytest.raises(KeyError, match="activation_name"):
        patching.generic_activation_patch(m, corrupt, cc, metric, patching.layer_pos_patch_setter,
                                          "no_such_activation", index_axis_names=("layer", "pos"),
                                          progress=False)
    with pytest.raises(KeyError, match="clean_cache"):
        patching.get_act_patch_resid_pre(m, corrupt, {}, metric, progress=False)
    with pytest.raises(IndexError, match="answer"):
        patching.get_act_patch_resid_pre(m, corrupt, cc, patching.logit_diff(999, 1), progress=False)
    with pytest.raises(IndexError):
        patching.generic_activation_patch(m, corrupt, cc, metric, patching.layer_pos_patch_setter,
                                          "resid_pre", index_df=np.array([[0, 99]]), progress=False)
    with pytest.raises(ValueError, match="expects indices of 2 columns"):
        patching.generic_activation_patch(m, corrupt, cc, metric, patching.layer_pos_patch_setter,
                                          "resid_pre", index_df=np.array([[0, 1, 2]]), progress=False)
    with pytest.raises(ValueError, match="not both"):
        patching.generic_activation_patch(m, corrupt, cc, metric, patching.layer_pos_patch_setter,
                                          "resid_pre", ("layer", "pos"), index_df=np.array([[0, 1]]),
                                          progress=False)
    _still_usable(m, clean)
    ours = patching.get_act_patch_resid_pre(m, corrupt, cc, metric, progress=False)
    ref = tlp.get_act_patch_resid_pre(tm, torch.tensor(corrupt), tcc, tl_logit_diff).numpy()
    assert_cells_close(ours, ref, scale, "after the errors")


def test_patch_run_binding_refuses_bad_arguments(setup):
    tm, m, clean, corrupt, cc, tcc, scale = setup
    resid = np.zeros((B, T, 32), np.float32)
    pid = m.hook_dict["blocks.0.hook_resid_pre"].point_id
    src = [(pid, np.zeros((B, T, 32), np.float32))]
    cells = np.array([[0, 1, -1, -1]], np.int64)
    with pytest.raises(ValueError, match="start layer"):
        _core.patch_run(m._core, 5, resid, src, cells, 1)
    with pytest.raises(ValueError, match="not in a block at or after"):
        _core.patch_run(m._core, 1, resid, src, cells, 1)
    with pytest.raises(IndexError, match="source"):
        _core.patch_run(m._core, 0, resid, src, np.array([[1, 0, -1, -1]]), 1)
    with pytest.raises(ValueError, match="shapes differ"):
        _core.patch_run(m._core, 0, resid, [(pid, np.zeros((B, T, 31), np.float32))], cells, 1)
    with pytest.raises(IndexError, match="out of range"):
        _core.patch_run(m._core, 0, resid, src, np.array([[0, T, -1, -1]]), 1)
    with pytest.raises(IndexError, match="token id"):
        _core.patch_run(m._core, 0, resid, src, cells, 1, None, np.array([[0, 0]]), np.array([[V]]))
    _still_usable(m, clean)


@pytest.mark.parametrize("fn", ["get_act_patch_resid_pre", "get_act_patch_resid_mid",
                                "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_k_by_pos",
                                "get_act_patch_attn_head_pattern_by_pos", "get_act_patch_attn_head_v_all_pos"])
def test_position_skipping(fn):
    """One cell per pass (pass_rows=1), so every pass starts at its cell's position
    and reads earlier positions' keys and values from the corrupted run: the same
    cells as TransformerLens and as recomputing every position, with padding too."""
    tm, m = make_pair(CONFIGS["gpt2"])
    clean, corrupt = tokens_pair()
    _, cc = m.run_with_cache(clean)
    _, tcc = tm.run_with_cache(torch.tensor(clean))
    scale = float(np.abs(m(corrupt)[:, -1]).max())
    metric = patching.logit_diff(ANSWER, WRONG)
    ref = getattr(tlp, fn)(tm, torch.tensor(corrupt), tcc, tl_logit_diff).numpy()
    ours = getattr(patching, fn)(m, corrupt, cc, metric, progress=False, pass_rows=1)
    assert_cells_close(ours, ref, scale, fn + " skipping positions")
    mask = np.ones((B, T), np.int64)
    mask[0, :2] = 0
    _, ccm = m.run_with_cache(clean, attention_mask=mask)
    skip = getattr(patching, fn)(m, corrupt, ccm, metric, progress=False, pass_rows=1, attention_mask=mask)
    full = getattr(patching, fn)(m, corrupt, ccm, metric, progress=False, pass_rows=1, attention_mask=mask,
                                 skip_positions=False)
    np.testing.assert_allclose(skip, full, rtol=0, atol=TOL * scale)
