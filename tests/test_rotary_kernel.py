"""The rotary kernel (csrc/kernels/rotary.h) against its plain reference twin
(bitwise), against TransformerLens's ``calculate_sin_cos_rotary`` tables and
rotation (float32, stated tolerance), and its backward as the exact transpose."""
import numpy as np
import pytest

import mechinterp_c as mi
from mechinterp_c import _testing as T

CASES = [dict(rotary_dim=16, adjacent=False), dict(rotary_dim=8, adjacent=False),
         dict(rotary_dim=16, adjacent=True), dict(rotary_dim=6, adjacent=True, base=500000.0),
         dict(rotary_dim=16, ntk=(8.0, 1.0, 4.0, 32.0), base=500000.0)]


def _x(rows=37, heads=3, dh=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, heads, dh)).astype(np.float32), \
        rng.integers(0, 300, rows).astype(np.int64)


@pytest.mark.parametrize("case", CASES)
def test_kernel_equals_reference_twin_bitwise_for_any_thread_count(case):
    x, pos = _x()
    old = mi.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            mi.set_num_threads(n)
            for inverse in (False, True):
                y, c, s = T._rotary(x, pos, inverse=inverse, **case)
                yr, cr, sr = T._rotary(x, pos, inverse=inverse, ref=True, **case)
                np.testing.assert_array_equal(y, yr)
                outs.append((inverse, y, c, s))
    finally:
        mi.set_num_threads(old)
    for inv, y, c, s in outs[2:]:
        ref = outs[int(inv)]
        np.testing.assert_array_equal(y, ref[1])
        np.testing.assert_array_equal(c, ref[2])


@pytest.mark.parametrize("case", CASES)
def test_tables_and_rotation_match_transformer_lens(case):
    torch = pytest.importorskip("torch")
    tl = pytest.importorskip("transformer_lens")
    import warnings
    rd = case["rotary_dim"]
    cfg = dict(n_layers=1, d_model=48, n_ctx=512, d_head=16, n_heads=3, act_fn="relu",
               positional_embedding_type="rotary", rotary_dim=rd, d_vocab=10,
               rotary_adjacent_pairs=case.get("adjacent", False),
               rotary_base=case.get("base", 10000.0))
    if "ntk" in case:
        f, lo, hi, ctx = case["ntk"]
        cfg.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=f, NTK_by_parts_low_freq_factor=lo,
                   NTK_by_parts_high_freq_factor=hi, NTK_original_ctx_len=int(ctx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attn = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg)).blocks[0].attn
    x, pos = _x()
    y, c, s = T._rotary(x, pos, **case)
    n = c.shape[0]
    tc, ts = attn.rotary_cos[:n].numpy(), attn.rotary_sin[:n].numpy()
    # float32 sin/cos of the same float32 angles (up to 300 rad): libm vs torch's
    # vectorised sin/cos differ by an ulp or two of the angle's reduction
    np.testing.assert_allclose(c, tc, atol=2e-6)
    np.testing.assert_allclose(s, ts, atol=2e-6)
    # the rotation itself on TransformerLens's tables: the same formula
    xt = torch.tensor(x)[None]                     # [1, rows, heads, dh] as "pos"
    rot = attn.rotate_every_two(xt[..., :rd]).numpy()[0]
    expect = x.copy()
    expect[..., :rd] = x[..., :rd] * c[pos][:, None] + rot * s[pos][:, None]
    np.testing.assert_array_equal(y, expect)


@pytest.mark.parametrize("case", CASES)
def test_inverse_is_the_transpose(case):
    """<R x, g> == <x, R^T g> in float64: the backward rotates the gradient back."""
    x, pos = _x(seed=1)
    g, _ = _x(seed=2)
    y = T._rotary(x, pos, **case)[0].astype(np.float64)
    gt = T._rotary(g, pos, inverse=True, **case)[0].astype(np.float64)
    assert np.sum(y * g) == pytest.approx(np.sum(x.astype(np.float64) * gt), rel=1e-5)
    # and rotating back undoes the rotation
    back = T._rotary(T._rotary(x, pos, **case)[0], pos, inverse=True, **case)[0]
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_bad_rotary_dim_is_refused():
    x, pos = _x()
    for rd in (0, 5, 18):
        with pytest.raises(ValueError, match=f"rotary_dim={rd}"):
            T._rotary(x, pos, rotary_dim=rd)
