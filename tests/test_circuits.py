"""Circuit views and weight processing methods of HookedTransformer against TransformerLens.

Each test pairs a TransformerLens HookedTransformer with ours on identical,
perturbed random weights (``make_pair``) and compares ``QK``, ``OV``,
``all_composition_scores``, ``W_E_pos``, ``accumulated_bias``,
``all_head_labels``, the parameter counts and the weight processing methods.

Tolerances, relative to the largest magnitude of the reference result:
- TOL = 1e-5 (from test_hooked_transformer) for weights, sums of biases and
  processed state dicts: the same float32 arithmetic in a different order.
- SVD_TOL = 1e-4 for composition scores and refactored weights: they come from
  chains of float32 SVDs, which NumPy (LAPACK gesdd) and torch agree on to
  ~1e-5 of the largest singular value.
- logits after processing: TOL, as in the forward parity tests (processing
  changes the summation order, not the function).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
tl = pytest.importorskip("transformer_lens")

from mechinterp_c import FactoredMatrix, utils  # noqa: E402
from test_hooked_transformer import TOL, assert_scaled_close, make_pair  # noqa: E402

SVD_TOL = 1e-4
CONFIGS = {
    "ln": {},
    "attn_only": dict(attn_only=True, n_layers=3),
    "rms_gated": dict(normalization_type="RMS", act_fn="silu", gated_mlp=True),
    "lnpre_vocab_out": dict(normalization_type="LNPre", d_vocab_out=20),
}
TOKENS = np.random.default_rng(7).integers(0, 50, (2, 9))


def np_(t):
    return t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)


def tl_logits(tm):
    with torch.no_grad():
        return tm(torch.tensor(TOKENS)).numpy()


@pytest.fixture(params=list(CONFIGS))
def pair(request):
    return make_pair(CONFIGS[request.param])


def test_qk_ov_w_e_pos_labels_counts(pair):
    tm, m = pair
    for name in ("QK", "OV"):
        ours, ref = getattr(m, name), getattr(tm, name)
        assert isinstance(ours, FactoredMatrix) and ours.shape == tuple(ref.shape)
        assert ours.shape == (m.cfg.n_layers, m.cfg.n_heads, m.cfg.d_model, m.cfg.d_model)
        for o, r in zip(ours.pair, ref.pair):
            assert_scaled_close(o, np_(r), name)
        assert_scaled_close(ours.AB, np_(ref.AB), name + ".AB")
        assert_scaled_close(ours[1, 0].norm(), np_(ref[1, 0].norm()), name + "[1, 0].norm()", SVD_TOL)
    assert_scaled_close(m.W_E_pos, np_(tm.W_E_pos), "W_E_pos")
    assert m.all_head_labels() == tm.all_head_labels()
    assert m.cfg.n_params == tm.cfg.n_params
    assert m.n_params_total == tm.n_params_total


def test_all_composition_scores(pair):
    tm, m = pair
    for mode in "QKV":
        ours, ref = m.all_composition_scores(mode), np_(tm.all_composition_scores(mode))
        assert_scaled_close(ours, ref, f"all_composition_scores({mode!r})", SVD_TOL)
        L = m.cfg.n_layers
        assert not ours[np.arange(L)[:, None, None, None] >= np.arange(L)[None, None, :, None]
                        .repeat(m.cfg.n_heads, 1).repeat(m.cfg.n_heads, 3)].any()
    # the same as utils.composition_scores of one pair of heads
    one = utils.composition_scores(m.OV[0, 1], m.QK[1, 2])
    np.testing.assert_allclose(one, m.all_composition_scores("Q")[0, 1, 1, 2], rtol=1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        m.all_composition_scores("O")


def test_accumulated_bias(pair):
    tm, m = pair
    L = m.cfg.n_layers
    mlp_flags = (True,) if m.cfg.attn_only else (True, False)   # TransformerLens has no
    for layer in range(L + 1):                                    # b_out to read attn-only
        for include in mlp_flags:
            for mlp_input in ((False, True) if layer < L else (False,)):
                kw = dict(mlp_input=mlp_input, include_mlp_biases=include)
                ours = m.accumulated_bias(layer, **kw)
                if m.cfg.attn_only:   # only the attention biases exist
                    ref = sum((np_(tm.blocks[i].attn.b_O) for i in range(layer + mlp_input)),
                              np.zeros(m.cfg.d_model, np.float32))
                else:
                    ref = np_(tm.accumulated_bias(layer, **kw))
                assert_scaled_close(ours, ref, f"accumulated_bias({layer}, {kw})")
    with pytest.raises(ValueError, match="mlp_input=True needs layer < n_layers"):
        m.accumulated_bias(L, mlp_input=True)
    for bad in (-1, L + 1, 1.5):
        with pytest.raises(ValueError, match="layer must be an int"):
            m.accumulated_bias(bad)


def _ours_sd(m):
    return {k: v.copy() for k, v in m.state_dict().items()}


def _tl_sd(tm):
    return {k: v.clone() for k, v in tm.state_dict().items()}


def assert_same_sd(ours, ref, what, tol=TOL):
    ref = {k: v for k, v in ref.items() if not k.endswith((".mask", ".IGNORE"))}
    assert sorted(ours) == sorted(ref), f"{what}: keys differ: {sorted(set(ours) ^ set(ref))}"
    for k in ours:
        assert_scaled_close(np.asarray(ours[k]), np_(ref[k]), f"{what} {k}", tol)


def test_weight_processing_methods(pair):
    tm, m = pair
    norm = m.cfg.normalization_type
    if norm in ("LN", "RMS"):
        lnkw = dict(fold_biases=False, center_weights=False) if norm == "RMS" else {}
        folded = m.fold_layer_norm(_ours_sd(m), **lnkw)
        assert_same_sd(folded, tm.fold_layer_norm(_tl_sd(tm), **lnkw), "fold_layer_norm")
        # identity norms: the folded dict loads into the same model, same function
        before = np.array(m(TOKENS))
        original = _ours_sd(m)
        m.load_state_dict(folded)
        assert_scaled_close(np.asarray(m(TOKENS)), before, "logits after fold_layer_norm")
        m.load_state_dict(original)
    if norm == "LN":   # biases left in the norms (TransformerLens keeps them unchanged)
        kw = dict(fold_biases=False, center_weights=False)
        assert_same_sd(m.fold_layer_norm(_ours_sd(m), **kw), tm.fold_layer_norm(_tl_sd(tm), **kw),
                       "fold_layer_norm(fold_biases=False)")
    if norm in ("LN", "LNPre"):
        assert_same_sd(m.center_writing_weights(_ours_sd(m)), tm.center_writing_weights(_tl_sd(tm)),
                       "center_writing_weights")
    assert_same_sd(m.center_unembed(_ours_sd(m)), tm.center_unembed(_tl_sd(tm)), "center_unembed")
    assert_same_sd(m.fold_value_biases(_ours_sd(m)), tm.fold_value_biases(_tl_sd(tm)), "fold_value_biases")
    sd = _ours_sd(m)
    m.center_unembed(sd)
    np.testing.assert_array_equal(sd["unembed.W_U"], m.state_dict()["unembed.W_U"])   # input untouched


def test_refactor_factored_attn_matrices(pair):
    tm, m = pair
    ours, ref = m.refactor_factored_attn_matrices(_ours_sd(m)), tm.refactor_factored_attn_matrices(_tl_sd(tm))
    L = m.cfg.n_layers
    for l in range(L):
        p = f"blocks.{l}.attn."
        # the factors are defined up to a sign per singular direction: compare their
        # magnitudes, and the products they form exactly
        for k in ("W_Q", "W_K", "b_Q", "b_K", "W_V", "W_O"):
            assert_scaled_close(np.abs(ours[p + k]), np.abs(np_(ref[p + k])), p + k, SVD_TOL)
        for k in ("b_V", "b_O"):
            assert_scaled_close(ours[p + k], np_(ref[p + k]), p + k)
        qk = lambda sd, f: np.einsum("hdk,hek->hde", f(sd[p + "W_Q"]), f(sd[p + "W_K"]))
        assert_scaled_close(qk(ours, np.asarray), qk(ref, np_), p + "W_Q W_K^T", SVD_TOL)
        # W_Q, W_K orthogonal columns of equal norms; W_O orthonormal rows
        gram = np.einsum("hdk,hdj->hkj", ours[p + "W_O"].transpose(0, 2, 1), ours[p + "W_O"].transpose(0, 2, 1))
        np.testing.assert_allclose(gram, np.broadcast_to(np.eye(m.cfg.d_head), gram.shape), atol=1e-5)
    # same function, through both load paths
    before = np.array(m(TOKENS))
    m.load_state_dict(ours)
    assert_scaled_close(np.asarray(m(TOKENS)), before, "logits after refactoring", SVD_TOL)
    tm.process_weights_(refactor_factored_attn_matrices=True)
    m.process_weights_(refactor_factored_attn_matrices=True)
    assert_scaled_close(np.asarray(m(TOKENS)), tl_logits(tm), "process_weights_(refactor)", SVD_TOL)


@pytest.mark.parametrize("kw", [{}, dict(fold_ln=False), dict(center_writing_weights=False, center_unembed=False)])
def test_process_weights_(pair, kw):
    tm, m = pair
    tm.process_weights_(**kw)
    m.process_weights_(**kw)
    assert m.cfg.normalization_type == tm.cfg.normalization_type
    assert_same_sd(m.state_dict(), tm.state_dict(), f"process_weights_({kw})")
    assert_scaled_close(np.asarray(m(TOKENS)), tl_logits(tm), f"logits after process_weights_({kw})")


def test_refactor_refuses_missing_weights():
    _, m = make_pair({})
    sd = _ours_sd(m)
    del sd["blocks.1.attn.b_K"]
    with pytest.raises(KeyError, match=r"layer 1 .*blocks.1.attn.b_K"):
        m.refactor_factored_attn_matrices(sd)
    assert np.isfinite(np.asarray(m(TOKENS))).all()   # the model is untouched and usable
