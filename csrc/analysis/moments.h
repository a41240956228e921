/* moments.h - descriptive statistics along one axis, float64 accumulation.
 *
 * Shapes: x viewed as [outer, n, inner] (C-contiguous, float32 or float64);
 * the statistic reduces n. Each output array is [outer, inner] double.
 *   mean     = sum(x) / n                     np.mean(x, dtype=float64)
 *   abs_mean = sum(|x|) / n                   np.mean(np.abs(x), dtype=float64)
 *   var      = sum((x - mean)^2) / (n - ddof) np.var(x, ddof=ddof, dtype=float64)
 *   std      = sqrt(var)
 *   min, max = NaN if any NaN (as np.min / np.max)
 * Two passes (mean, then squared deviations), as NumPy. Sums are taken in
 * fixed chunks combined in a fixed order, so results do not depend on the
 * thread count. n == 0 gives NaN everywhere.
 */
#ifndef MI_MOMENTS_H
#define MI_MOMENTS_H

#include <stdint.h>

typedef struct {
    double *mean, *abs_mean, *var, *std, *min, *max;   /* each [outer * inner] */
} mi_moments_out;

void mi_moments(const void *x, int x_f64, int64_t outer, int64_t n, int64_t inner,
                double ddof, const mi_moments_out *out);

/* min and max of x[0:n] (float32 or float64); NaN anywhere gives NaN for
 * both, as np.min / np.max. Exact, so split across threads freely. n >= 1. */
void mi_minmax(const void *x, int x_f64, int64_t n, double *mn, double *mx);

#endif
