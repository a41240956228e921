"""weight_processing.process_weights against TransformerLens's load_and_process_state_dict.

Each case builds a small random TL HookedTransformer, takes its state dict as NumPy,
processes it with ours, loads the same state dict into a fresh TL model with
``load_and_process_state_dict`` and compares every parameter. Weights are random
(norm weights around 1, everything else N(0, 0.25)) so every fold and centring is
exercised with non-trivial values.
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tl = pytest.importorskip("transformer_lens")
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from mechinterp_c import weight_processing as wp  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BASE = dict(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_mlp=32, d_vocab=20,
            act_fn="gelu", normalization_type="LN", seed=0)

# Both sides compute in float32 from the same inputs with sums over <= 32 terms of O(1)
# values; the order of summation differs (einsum vs torch broadcast-sum), giving a few ulp.
ATOL, RTOL = 2e-5, 1e-5


def random_model(**overrides):
    cfg = HookedTransformerConfig(**{**BASE, **overrides})
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if name.endswith(".w") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + offset)
    return model


def tl_processed(model, **flags):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = HookedTransformer(HookedTransformerConfig(**model.cfg.to_dict()))
    fresh.load_and_process_state_dict(sd, **flags)
    return fresh, {k: v.detach().numpy() for k, v in fresh.named_parameters()}


def ours(model, **flags):
    sd = {k: v.detach().numpy() for k, v in model.named_parameters()}
    return wp.process_weights(sd, model.cfg, **flags)


def assert_same(mine, ref):
    assert set(mine) == set(ref), (sorted(set(mine) ^ set(ref)))
    for k in ref:
        np.testing.assert_allclose(mine[k], ref[k], rtol=RTOL, atol=ATOL, err_msg=k)
        assert mine[k].dtype == ref[k].dtype, k


CONFIGS = {
    "ln": {},
    "rms": dict(normalization_type="RMS"),
    "gated_rms_silu": dict(normalization_type="RMS", gated_mlp=True, act_fn="silu"),
    "gated_ln": dict(gated_mlp=True),
    "attn_only": dict(attn_only=True),
    "rotary": dict(positional_embedding_type="rotary", rotary_dim=4),
    "solu_ln": dict(act_fn="solu_ln"),
    "parallel": dict(parallel_attn_mlp=True),
    "d_vocab_out": dict(d_vocab_out=11),
    "no_norm": dict(normalization_type=None),
    "gqa_ln": dict(n_key_value_heads=2),
    "gqa_rms": dict(n_key_value_heads=2, normalization_type="RMS", positional_embedding_type="rotary",
                    rotary_dim=4),
    "shortformer": dict(positional_embedding_type="shortformer"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_all_flags_match_transformer_lens(name):
    model = random_model(**CONFIGS[name])
    _, ref = tl_processed(model)
    assert_same(ours(model), ref)


FLAG_SETS = [
    dict(fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
    dict(fold_ln=False, center_writing_weights=True, center_unembed=False, fold_value_biases=False),
    dict(fold_ln=False, center_writing_weights=False, center_unembed=True, fold_value_biases=False),
    dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=True),
    dict(fold_ln=False, center_writing_weights=True, center_unembed=False, fold_value_biases=True),
    dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
]


@pytest.mark.parametrize("norm", ["LN", "RMS"])
@pytest.mark.parametrize("flags", FLAG_SETS, ids=lambda f: "+".join(k for k, v in f.items() if v) or "none")
def test_each_flag_alone_matches_transformer_lens(norm, flags):
    model = random_model(normalization_type=norm)
    _, ref = tl_processed(model, **flags)
    assert_same(ours(model, **flags), ref)


def test_processed_weights_give_same_logits_as_tl():
    """The processed dict loaded into a LNPre model gives TL's processed logits."""
    model = random_model()
    fresh, _ = tl_processed(model)
    mine = ours(model)
    cfg = HookedTransformerConfig(**{**model.cfg.to_dict(),
                                     "normalization_type": wp.processed_normalization_type(model.cfg)})
    check = HookedTransformer(cfg)
    check.load_state_dict({k: torch.from_numpy(v) for k, v in mine.items()}, strict=False)
    tokens = torch.tensor([[1, 5, 7, 2, 19, 0]])
    # Same float32 forward over differently rounded weights: logits agree to ~1e-5.
    np.testing.assert_allclose(check(tokens).detach().numpy(), fresh(tokens).detach().numpy(),
                               rtol=1e-4, atol=1e-4)
    # And log-probs equal the unprocessed model's (processing must not change the function).
    lp = lambda m: torch.log_softmax(m(tokens), -1).detach().numpy()
    np.testing.assert_allclose(lp(check), lp(model), rtol=1e-4, atol=1e-4)


def test_processed_normalization_type():
    cfg = HookedTransformerConfig(**BASE)
    assert wp.processed_normalization_type(cfg) == "LNPre"
    assert wp.processed_normalization_type(cfg, fold_ln=False) == "LN"
    cfg = HookedTransformerConfig(**{**BASE, "normalization_type": "RMS"})
    assert wp.processed_normalization_type(cfg) == "RMSPre"
    cfg = HookedTransformerConfig(**{**BASE, "normalization_type": None})
    assert wp.processed_normalization_type(cfg) is None


def test_input_not_modified_and_half_dtype_kept():
    model = random_model()
    sd = {k: v.detach().numpy().astype(np.float16) for k, v in model.named_parameters()}
    before = {k: v.copy() for k, v in sd.items()}
    out = wp.process_weights(sd, model.cfg)
    for k in before:
        np.testing.assert_array_equal(sd[k], before[k])
    assert all(v.dtype == np.float16 for v in out.values())


def test_errors_name_the_tensor():
    model = random_model()
    sd = {k: v.detach().numpy() for k, v in model.named_parameters()}
    bad = dict(sd)
    del bad["blocks.1.attn.W_K"]
    with pytest.raises(KeyError, match=r"blocks\.1\.attn\.W_K"):
        wp.process_weights(bad, model.cfg)
    bad = dict(sd)
    bad["blocks.0.attn.W_Q"] = bad["blocks.0.attn.W_Q"][:, :8]
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.W_Q.*\(4, 8, 4\)"):
        wp.process_weights(bad, model.cfg)
    bad = dict(sd)
    del bad["embed.W_E"]
    with pytest.raises(KeyError, match="embed.W_E"):
        wp.process_weights(bad, model.cfg, fold_ln=False)
    bad = dict(sd)
    bad["blocks.0.attn.b_V"] = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.b_V"):
        wp.process_weights(bad, model.cfg, fold_ln=False)


def test_ln_weights_into_lnpre_config_with_buffers():
    """The seed notebook's pattern: an LN model's full state dict (buffers included) processed
    for a model whose cfg already says LNPre (TL still folds the LN weights it finds)."""
    model = random_model(n_heads=1, d_head=16, act_fn="relu")
    pre_cfg = HookedTransformerConfig(**{**model.cfg.to_dict(), "normalization_type": "LNPre"})
    ref_model = HookedTransformer(pre_cfg)
    ref_model.load_and_process_state_dict({k: v.clone() for k, v in model.state_dict().items()},
                                          fold_ln=True, center_writing_weights=True, center_unembed=True)
    ref = {k: v.detach().numpy() for k, v in ref_model.named_parameters()}
    full = {k: v.detach().numpy() for k, v in model.state_dict().items()}  # has attn.mask / IGNORE
    mine = wp.process_weights(full, pre_cfg)
    buffers = {k for k in full if k.endswith((".mask", ".IGNORE"))}
    assert buffers and buffers <= set(mine)
    for k in buffers:  # non-float buffers pass through unchanged
        np.testing.assert_array_equal(mine[k], full[k])
    assert_same({k: v for k, v in mine.items() if k not in buffers}, ref)
