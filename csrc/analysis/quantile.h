/* quantile.h - np.percentile(x, q) (method "linear", axis=None), bit for bit.
 *
 * Contract: x[n] float32 or float64 (n >= 1), q[nq] the quantiles as NumPy
 * holds them after np.true_divide(percent, 100) (float64 in [0, 1]).
 * out[nq] receives the float64 results NumPy returns, computed the way
 * numpy/lib/_function_base_impl.py does it:
 *   vi = (n - 1) * q (float64); lo = floor(vi), hi = lo + 1, both clamped to
 *   n - 1 when vi >= n - 1; a, b = the sorted values at lo, hi (in x's dtype);
 *   t = vi - lo (float64; when clamped, NumPy's lo index is -1, so t = vi + 1);
 *   diff = b - a in x's dtype (float32 subtraction for float32 x);
 *   out = t >= 0.5 ? b - diff * (1 - t) : a + diff * t, in float64.
 * The order statistics come from a quickselect (O(n)) on a scratch copy; x is
 * not modified. Any NaN in x gives NaN for every quantile (NumPy: NaN sorts
 * last and the result is taken from there). A zero's sign may differ from
 * NumPy's when x holds both -0.0 and +0.0 (equal values, either may be
 * selected); the values compare equal.
 * Runs on the calling thread, no Python; safe without the GIL.
 */
#ifndef MI_QUANTILE_H
#define MI_QUANTILE_H

#include <stdint.h>

#include "common/status.h"

mi_status mi_percentile_linear(const void *x, int x_f64, int64_t n,
                               const double *q, int nq, double *out);

#endif
