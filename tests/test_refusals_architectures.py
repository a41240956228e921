"""Architectures the C core does not run are refused, never ignored: a TransformerLens
config (object or dict) or a HookedTransformerConfig asking for ALiBi, mixture of
experts, q/k norms, YaRN or other rotary scalings, multimodal inputs, ... raises
NotImplementedError naming the field and the feature; at their defaults those fields
are accepted and the model builds. (Checkpoints: config.json refusals naming the file
and field are tested with the loaders.)"""
import warnings

import numpy as np
import pytest

import mechinterp_c as mi
from mechinterp_c.config import TL_UNSUPPORTED_FIELDS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import transformer_lens as tl

CFG = dict(n_layers=1, d_model=16, d_head=8, n_heads=2, d_mlp=32, d_vocab=30, n_ctx=8,
           act_fn="relu", seed=0)

# field -> a value that asks for the feature
ASKS = {"num_experts": 4, "experts_per_token": 2, "norm_topk_prob": True, "use_qk_norm": True,
        "clip_qkv": 8.0, "use_logn_attn": True, "use_dynamic_ntk_rope": True, "use_yarn_rope": True,
        "rotary_scaling_factor": 2.0, "rotary_base_local": 10000.0,
        "ungroup_grouped_query_attention": True, "use_attention_sinks": True,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "decoder_start_token_id": 0, "load_in_4bit": True, "quantization_method": "gptq"}


def test_every_refused_field_has_a_case():
    assert set(ASKS) == set(TL_UNSUPPORTED_FIELDS)


@pytest.mark.parametrize("field", sorted(ASKS))
def test_dict_config_field_refused_naming_field_and_feature(field):
    feature = TL_UNSUPPORTED_FIELDS[field][1]
    with pytest.raises(NotImplementedError, match=rf"{field}=.*\({__import__('re').escape(feature)}\)"):
        mi.HookedTransformer(dict(CFG, **{field: ASKS[field]}))
    # at its default the field asks for nothing: accepted, and the model runs
    m = mi.HookedTransformer(dict(CFG, **{field: TL_UNSUPPORTED_FIELDS[field][0]}))
    assert m(np.array([[1, 2, 3]])).shape == (1, 3, 30)


@pytest.mark.parametrize("field,value", [("num_experts", 4), ("use_qk_norm", True),
                                         ("use_yarn_rope", True)])
def test_transformer_lens_config_field_refused(field, value):
    kw = dict(CFG, **{field: value})
    if field == "num_experts":
        kw["experts_per_token"] = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = tl.HookedTransformerConfig(**kw)
    with pytest.raises(NotImplementedError, match=rf"HookedTransformerConfig: .*{field}="):
        mi.HookedTransformer(cfg)


@pytest.mark.parametrize("kind,feature", [("alibi", "ALiBi position biases"),
                                          ("shortformer", "Shortformer position embeddings"),
                                          ("relative_positional_bias", "relative position buckets")])
def test_position_schemes_refused_by_name(kind, feature):
    with pytest.raises(NotImplementedError, match=rf"positional_embedding_type='{kind}' \({feature}"):
        mi.HookedTransformer(dict(CFG, positional_embedding_type=kind))


def test_multimodal_architecture_refused():
    with pytest.raises(NotImplementedError, match=r"original_architecture='Gemma3ForConditionalGeneration' "
                                                  r"\(multimodal inputs\)"):
        mi.HookedTransformer(dict(CFG, original_architecture="Gemma3ForConditionalGeneration"))
