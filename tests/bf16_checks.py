"""Checks shared by the bfloat16 model tests."""
import numpy as np

U = 2.0 ** -8     # bfloat16's unit roundoff (8 significant bits)


def check_activation_grads(b, r, t, metric, n_products):
    """Every *_grad entry of b's run_with_cache(incl_bwd=True) against r's (the float32
    model of the same bfloat16 weights). The bf16 pass rounds to bfloat16 (u = 2^-8
    relative) the activation operand of each forward product and the gradient operand
    of each backward product with a weight, P = n_products roundings in all; each moves
    what it feeds by at most u of its own scale, so to first order a gradient moves by
    at most P * u of the largest value of its tensor (measured: 0.04 of it at worst
    against P * u = 0.15 for three Llama blocks). The direction is held tighter: a
    cosine of at least 1 - 1e-3 per tensor (measured: 1 - 1.4e-4 at worst)."""
    vb, cb = b.run_with_cache(t, incl_bwd=True, metric=metric)
    vr, cr = r.run_with_cache(t, incl_bwd=True, metric=metric)
    grads = [k for k in cr.keys() if k.endswith("_grad")]
    assert sorted(grads) == sorted(k for k in cb.keys() if k.endswith("_grad"))
    assert len(grads) > 20
    P = n_products
    worst = 0.0
    for k in grads:
        gb, gr = np.asarray(cb[k], np.float64), np.asarray(cr[k], np.float64)
        scale = np.abs(gr).max()
        if scale == 0.0:
            assert np.abs(gb).max() == 0.0, k
            continue
        err = np.abs(gb - gr).max() / scale
        worst = max(worst, err)
        assert err <= P * U, (k, err)
        cos = (gb * gr).sum() / np.sqrt((gb * gb).sum() * (gr * gr).sum())
        assert cos >= 1 - 1e-3, (k, cos)
    if metric == "loss":
        assert abs(float(vb) - float(vr)) <= 0.01 * float(vr)
    return worst
