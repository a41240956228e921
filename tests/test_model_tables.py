"""The C core's model description tables (csrc/model/model_tables.h) and the sizes
derived from them.

- The exported hook point table (``_core.HOOK_POINT_TABLE``) names the axes of
  every activation the core hands out: checked against the cached arrays of
  every config family.
- ``hook_dict`` is built from the core's table: checked against TransformerLens's
  module tree for a config that turns every optional point on.
- Sizes that would wrap (a 2**49-wide model, a huge batch) raise ValueError or
  MemoryError naming the tensor and its axes; nothing crashes and a model built
  afterwards computes exactly what an identical model computed before.
"""
import numpy as np
import pytest

from mechinterp_c import HookedTransformer, _core

BASE = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, act_fn="gelu_new",
            seed=1)
CONFIGS = [{}, dict(attn_only=True), dict(normalization_type=None, use_attn_result=True),
           dict(gated_mlp=True, normalization_type="RMSPre", act_fn="silu"),
           dict(use_hook_mlp_in=True), dict(act_fn="solu_ln"),
           dict(use_split_qkv_input=True, use_attn_in=True, use_attn_result=True)]


def _rows():
    return {name: (scope, axes) for name, scope, axes in _core.HOOK_POINT_TABLE}


def test_table_rows_are_unique_and_scoped():
    names = [r[0] for r in _core.HOOK_POINT_TABLE]
    assert len(names) == len(set(names))
    assert {r[1] for r in _core.HOOK_POINT_TABLE} == {"start", "layer", "final"}
    assert _core.HOOK_CACHE & _core.HOOK_CALLBACK == 0 and _core.HOOK_TRANSIENT not in (
        _core.HOOK_CACHE, _core.HOOK_CALLBACK)


@pytest.mark.parametrize("overrides", CONFIGS)
def test_every_cached_activation_has_its_table_axes(overrides):
    cfg = dict(BASE, **overrides)
    m = HookedTransformer(cfg)
    B, T = 3, 5
    _, cache = m.run_with_cache(np.random.default_rng(0).integers(0, 50, (B, T)))
    c = m.cfg
    head_in = c.use_split_qkv_input or c.use_attn_in
    extent = {"batch": B, "pos": T, "key_pos": T, "d_model": c.d_model, "n_heads": c.n_heads, "d_head": c.d_head,
              "d_mlp": c.d_mlp, "d_vocab_out": c.d_vocab_out, "1": 1, "n_heads?": c.n_heads,
              "n_key_value_heads": c.n_key_value_heads or c.n_heads}
    rows = _rows()
    fired = [n for n, hp in m.hook_dict.items() if hp.point_id is not None]
    assert sorted(cache.keys()) == sorted(fired)
    for name, act in cache.items():
        key = name.split(".", 2)[2] if name.startswith("blocks.") else name
        scope, axes = rows[key]
        assert scope == ("layer" if name.startswith("blocks.") else scope)
        axes = [a for a in axes if a != "n_heads?" or head_in]
        assert act.shape == tuple(extent[a] for a in axes), name


def test_hook_dict_follows_transformer_lens_with_every_optional_point():
    pytest.importorskip("torch")
    tl = pytest.importorskip("transformer_lens")
    cfg = dict(BASE, gated_mlp=True, normalization_type="RMS", act_fn="silu", use_attn_result=True,
               use_hook_mlp_in=True, use_split_qkv_input=True, use_attn_in=True)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tm = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    m = HookedTransformer(cfg)
    assert list(m.hook_dict) == list(tm.hook_dict)
    fired = [n for n, hp in m.hook_dict.items() if hp.point_id is not None]
    assert len(fired) == len(m.hook_dict)          # every point fires with every flag on
    ids = [m.hook_dict[n].point_id for n in m._fire_order]
    assert ids == sorted(ids)                       # point ids are in firing order


def _small_output():
    m = HookedTransformer(BASE)
    return m(np.array([[1, 2, 3, 4]]))


@pytest.mark.parametrize("overrides, exc, match", [
    # W_in [d_model, d_mlp] = 2**64 floats: wrapped to 0 without the check
    (dict(d_model=2**49, d_mlp=2**15, n_heads=1, d_head=8), ValueError,
     r"blocks\.0\.mlp\.W_in: d_model \* d_mlp \(562949953421312 \* 32768\) overflows"),
    (dict(d_model=2**49, n_heads=1, d_head=2**49), ValueError,
     r"attn\.W_qkv: d_model \* 3 \* n_heads \* d_head .* overflows"),
    (dict(d_vocab=2**62), ValueError, r"embed\.W_E: d_vocab \* d_model .* overflows"),
    (dict(n_ctx=2**62), ValueError, r"pos_embed\.W_pos: n_ctx \* d_model .* overflows"),
    (dict(n_layers=2**40), ValueError, r"n_layers=1099511627776 is too large"),
    # no product wraps, but 2**57 bytes cannot be mapped
    (dict(d_model=2**49, n_heads=1, d_head=8, d_mlp=8), MemoryError, r"parameter blob \(n_params="),
])
def test_oversized_model_raises_naming_the_field(overrides, exc, match):
    before = _small_output()
    with pytest.raises(exc, match=match):
        HookedTransformer(dict(BASE, init_weights=False, **overrides))
    np.testing.assert_array_equal(_small_output(), before)   # a model built afterwards works


def test_oversized_arena_raises_and_the_model_stays_usable():
    m = HookedTransformer(BASE)
    tokens = np.array([[5, 6, 7]])
    before = m(tokens).copy()
    flags = bytes(m._core.n_points)
    with pytest.raises(ValueError, match=r"activation buffer resid: batch \* pos \* d_model "
                                         r"\(4611686018427387904 \* 2 \* 32\) overflows"):
        m._core.arena_bytes(2**62, 2, flags)
    with pytest.raises(MemoryError, match=r"activation arena of a \[562949953421312, 16\] call"):
        m._core.arena_bytes(2**49, 16, flags)          # each buffer fits, their sum does not
    np.testing.assert_array_equal(m(tokens), before)
    # long positions, narrow model: only the attention scores overflow
    tall = HookedTransformer(dict(n_layers=1, d_model=8, n_heads=1, d_head=1, n_ctx=2**16, d_vocab=50,
                                  attn_only=True))
    with pytest.raises(ValueError, match=r"activation buffer SCORES: "
                                         r"batch \* n_heads \* pos \* key_pos \(1073741824 \* 1 \* 65536 "
                                         r"\* 65536\) overflows"):
        tall._core.arena_bytes(2**30, 2**16, bytes(tall._core.n_points))
    assert tall(tokens).shape == (1, 3, 50)


def test_failed_core_model_refuses_use():
    spec = dict(n_layers=1, d_model=2**49, n_heads=1, d_head=8, d_mlp=2**15, d_vocab=50,
                d_vocab_out=50, n_ctx=8, norm=1, eps=1e-5, act=1)
    m = _core.Model.__new__(_core.Model)
    with pytest.raises(ValueError, match=r"d_model \* d_mlp"):
        m.__init__(**spec)
    with pytest.raises(RuntimeError, match="not initialised"):
        m.params()
