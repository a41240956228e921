"""Config validation: every field of a bad ``config.json`` (GPT-2, REVE) or
``HookedTransformerConfig`` is refused with TypeError (wrong kind) or ValueError
(zero, negative, non-integral, non-finite) naming the field and the file, never
a ZeroDivisionError, "math domain error" or a model built from nonsense; and a
model built before stays usable. No numeric reference: the checks are exact.
"""
import json
import math

import numpy as np
import pytest

from mechinterp_c import HookedTransformer, HookedTransformerConfig
from mechinterp_c.config import GPT2_CONFIG_FIELDS, HOOKED_CONFIG_FIELDS, REVE_CONFIG_FIELDS
from mechinterp_c.transformers.modeling_gpt2 import GPT2Config
from mechinterp_c.transformers.modeling_reve import ReveConfig

GPT2_BASE = dict(n_layer=2, n_embd=16, n_head=2, vocab_size=20, n_positions=8, n_inner=None,
                 layer_norm_epsilon=1e-5, initializer_range=0.02, activation_function="gelu_new",
                 bos_token_id=0, eos_token_id=0, tie_word_embeddings=True, model_type="gpt2")
REVE_BASE = dict(embed_dim=16, depth=1, heads=2, head_dim=8, mlp_dim_ratio=2.0, use_geglu=True,
                 freqs=2, patch_size=10, patch_overlap=2, model_type="reve")
HOOKED_BASE = dict(n_layers=1, d_model=16, n_ctx=8, d_head=8, n_heads=2, d_vocab=20,
                   act_fn="gelu_new", d_mlp=32, eps=1e-5)


def _bad_values(field, in_json=False):
    """(value, exception) cases for one field: wrong kind, zero, negative, non-integral,
    non-finite, as far as each applies to the field's kind and range. JSON has no NaN
    or Infinity: there 1e400 (read as inf) stands for them."""
    if field.kind is bool:
        return [("true", TypeError), (1, TypeError), (None, TypeError)]
    if field.kind is str:
        return [(3, TypeError), (["a"], TypeError)]
    cases = [("8", TypeError), ([8], TypeError), (True, TypeError), ({"v": 1}, TypeError)]
    cases += [("1e400", ValueError)] if in_json else [(math.inf, ValueError), (math.nan, ValueError)]
    if not field.optional:
        cases.append((None, TypeError))
    if field.least is not None:
        cases.append((-5, ValueError))
        if field.least > 0 or field.strict:
            cases.append((0, ValueError))
    if field.kind is int:
        cases.append((4.5, ValueError))
        cases.append((8.0, ValueError))        # a float where JSON should say 8
    return cases


def _cases(fields, in_json=False):
    return [pytest.param(f.name, v, exc, id=f"{f.name}={v!r}")
            for f in fields for v, exc in _bad_values(f, in_json)]


def _write(path, cfg):
    """config.json text; the string "1e400" becomes the bare number 1e400 (inf)."""
    path.write_text(json.dumps(cfg).replace('"1e400"', "1e400"))


@pytest.fixture(scope="module")
def model():
    """A model built before the bad configs: it must keep working."""
    m = HookedTransformer(HookedTransformerConfig(**HOOKED_BASE, seed=0))
    tokens = np.array([[1, 2, 3, 4]])
    return m, tokens, np.array(m(tokens))


def _still_usable(model):
    m, tokens, want = model
    np.testing.assert_array_equal(np.array(m(tokens)), want)


@pytest.mark.parametrize("name, value, exc", _cases(GPT2_CONFIG_FIELDS, in_json=True))
def test_gpt2_config_json_field(tmp_path, model, name, value, exc):
    path = tmp_path / "config.json"
    _write(path, {**GPT2_BASE, name: value})
    with pytest.raises(exc, match=rf"^{path}: field '{name}' must be "):
        GPT2Config.from_pretrained(tmp_path)
    _still_usable(model)


@pytest.mark.parametrize("name, value, exc", _cases(REVE_CONFIG_FIELDS, in_json=True))
def test_reve_config_json_field(tmp_path, model, name, value, exc):
    path = tmp_path / "config.json"
    _write(path, {**REVE_BASE, name: value})
    with pytest.raises(exc, match=rf"^{path}: field '{name}' must be "):
        ReveConfig.from_pretrained(tmp_path)
    _still_usable(model)


@pytest.mark.parametrize("name, value, exc", _cases(HOOKED_CONFIG_FIELDS))
def test_hooked_transformer_config_field(model, name, value, exc):
    with pytest.raises(exc, match=rf"^HookedTransformerConfig: field '{name}' must be "):
        HookedTransformerConfig(**{**HOOKED_BASE, name: value})
    _still_usable(model)


def test_messages_and_cross_field_rules(tmp_path, model):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**GPT2_BASE, "n_embd": 15, "n_head": 2}))
    with pytest.raises(ValueError, match=rf"^{path}: field 'n_embd' \(15\) must be divisible by "
                                         rf"field 'n_head' \(2\)$"):
        GPT2Config.from_pretrained(tmp_path)
    path.write_text(json.dumps({**GPT2_BASE, "n_head": 0}))
    with pytest.raises(ValueError, match=rf"^{path}: field 'n_head' must be a positive integer, "
                                         rf"got 0$"):
        GPT2Config.from_pretrained(tmp_path)
    path.write_text(json.dumps({**REVE_BASE, "patch_overlap": 10}))
    with pytest.raises(ValueError, match=rf"^{path}: field 'patch_overlap' must be in "
                                         rf"\[0, patch_size=10\), got 10$"):
        ReveConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"field 'n_heads' must be a positive integer or -1, "
                                         r"got -2$"):
        HookedTransformerConfig(**{**HOOKED_BASE, "n_heads": -2})
    # missing required fields: KeyError naming the file and the field
    path.write_text(json.dumps({k: v for k, v in GPT2_BASE.items() if k != "n_embd"}))
    with pytest.raises(KeyError, match=rf"{path}: missing required field\(s\) 'n_embd'"):
        GPT2Config.from_pretrained(tmp_path)
    path.write_text(json.dumps({k: v for k, v in REVE_BASE.items() if k != "heads"}))
    with pytest.raises(KeyError, match=rf"{path}: REVE config.json lacks \['heads'\]"):
        ReveConfig.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"missing 1 required positional argument: 'd_head'"):
        HookedTransformerConfig(**{k: v for k, v in HOOKED_BASE.items() if k != "d_head"})
    # valid configs still build (NumPy integers and the -1 / None sentinels included)
    cfg = HookedTransformerConfig(**{**HOOKED_BASE, "n_heads": -1, "d_mlp": None,
                                     "d_model": np.int64(16)})
    assert (cfg.n_heads, cfg.d_mlp) == (2, 64)
    path.write_text(json.dumps(GPT2_BASE))
    assert GPT2Config.from_pretrained(tmp_path).n_embd == 16
    _still_usable(model)
