/* kde_scalar.c - the KDE window sum, portable build: libm exp, input order.
 *
 * sum_{i in [lo, hi)} w_i * (exp(-(s_i - t)^2 / 2) * norm), w NULL: weight wu. */
#include <math.h>

#include "analysis/kde.h"

double mi_kde_window_sum_scalar(const double *s, const double *w, double wu, int64_t lo,
                                int64_t hi, double t, double norm)
{
    double acc = 0;
    for (int64_t i = lo; i < hi; i++) {
        double r = s[i] - t;
        acc += (w ? w[i] : wu) * (exp(-(r * r) / 2.0) * norm);
    }
    return acc;
}
